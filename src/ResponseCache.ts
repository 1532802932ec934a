/**
 * Caches completions of deterministic requests, so asking the same question twice costs one
 * upstream call.
 *
 * ## What is cached
 *
 * A request is looked up and stored when it is *deterministic*: `temperature === 0` and not in
 * thinking mode (DeepSeek ignores `temperature` when thinking, so the answer varies whatever it
 * says). The per-call option `cache` overrides this: `"force"` caches any request, `"bypass"`
 * neither looks up nor stores. Thinking mode is read from the request alone (`thinking.type` is
 * `"enabled"`, or `reasoning_effort` is set without `thinking: {type: "disabled"}`): a model that
 * thinks by default without saying so in the request is not detected, so pass `"bypass"` for it.
 *
 * Only a complete answer is stored: every choice finished with `stop`, `length` or
 * `tool_calls`. A failed call, an empty `choices`, a `content_filter` cut or an unfinished choice
 * is never stored (`insufficient_system_resource` is a failure already: the transport turns it
 * into `InsufficientResource`). A hit returns the stored completion unchanged, with the `id` and
 * `usage` of the call that paid for it.
 *
 * ## The key
 *
 * `key(request)` is the hex SHA-256 of `"weatherproof/ResponseCache/v1\n"` followed by the
 * request's canonical JSON: the request without `stream` and `stream_options` (the transport sets
 * them; a completion is the same either way), with the keys of every object sorted at every depth
 * and `undefined` members left out. Everything else counts, unknown passthrough fields included:
 * any field the server reads may change the answer. `user_id` counts too: it does not change the
 * answer, but DeepSeek uses it to isolate caching per end user, and a shared cache must not hand
 * one user's answer (or the fact that a prompt was asked) to another. Values are not normalised
 * beyond that (`stop: "x"` and `stop: ["x"]` are different keys). The version prefix changes
 * whenever this canonicalisation does, so a persistent store never serves an entry keyed the old
 * way.
 *
 * ## Identical concurrent misses
 *
 * Calls for the same key while one is in flight wait for it instead of calling too (single
 * flight): ten identical concurrent requests make one upstream call. The waiters take its
 * completion, whether or not it was stored. If it fails or is interrupted, each waiter makes its
 * own call: a failure belongs to the call that made it (its deadlines, its key), not to callers
 * that merely asked the same question.
 *
 * ## Stores
 *
 * `ResponseCache` runs on a `CacheStore` (`get`, `set` with a time to live), so a shared store
 * such as Redis can replace the in-memory one. A store that fails never fails a call: a failed
 * read is a miss, a failed write stores nothing, and both are logged. The memory store is an LRU
 * bounded by `capacity` with expiry read from Effect's `Clock`. Effect's `Cache` was not used: it
 * computes values through a lookup fixed at construction, with no per-entry time to live on
 * `set` and no eviction count.
 *
 * @since 0.1.0
 */

import { createHash } from "node:crypto"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import type { ChatCompletion, ChatCompletionRequest } from "./ChatSchema.js"
import * as internal from "./internal/responseCache.js"
import { assertValid, positiveInteger } from "./internal/options.js"

/**
 * A store failed (a shared store's connection, say). `ResponseCache` treats it as a miss or as
 * nothing stored.
 *
 * @since 0.1.0
 * @category errors
 */
export class CacheStoreError extends Data.TaggedError("CacheStoreError")<{
  readonly operation: "get" | "set"
  readonly message: string
  readonly cause?: unknown
}> {}

/**
 * Where completions are kept, by key. Store-agnostic, so Redis or another shared store can
 * implement it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Store {
  /** The live completion stored under `key`, if any. */
  readonly get: (key: string) => Effect.Effect<Option.Option<ChatCompletion>, CacheStoreError>
  /** Stores `value` under `key` for `timeToLive`, replacing what was there. */
  readonly set: (key: string, value: ChatCompletion, timeToLive: Duration.Duration) => Effect.Effect<void, CacheStoreError>
  /** Live entries dropped to make room so far; 0 for a store that cannot tell. */
  readonly evictions: Effect.Effect<number>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class CacheStore extends Context.Tag("weatherproof/CacheStore")<CacheStore, Store>() {}

/**
 * `"auto"` caches deterministic requests only, `"force"` caches any request, `"bypass"` skips
 * the cache.
 *
 * @since 0.1.0
 * @category models
 */
export type CacheMode = "auto" | "force" | "bypass"

/**
 * @since 0.1.0
 * @category models
 */
export interface CachedOptions {
  /** Default `"auto"`. */
  readonly cache?: CacheMode | undefined
  /** How long a completion this call stores lives. Default: the cache's `timeToLive`. Zero stores nothing. */
  readonly timeToLive?: Duration.DurationInput | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** How long a stored completion lives. Default 1 hour. Zero stores nothing. */
  readonly timeToLive?: Duration.DurationInput | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface MemoryOptions extends Options {
  /** Most completions kept; beyond it the least recently used is evicted. Default 1000. */
  readonly capacity?: number | undefined
}

/**
 * @since 0.1.0
 */
export const defaults = {
  timeToLive: Duration.hours(1),
  capacity: 1000
} as const

/**
 * Counts since the cache was made. A call that is not eligible (`"bypass"`, or not
 * deterministic under `"auto"`) counts nowhere.
 *
 * @since 0.1.0
 * @category models
 */
export interface Stats {
  /** Answered from the store. */
  readonly hits: number
  /** Found nothing and called upstream (a waiter whose in-flight call failed included). */
  readonly misses: number
  /** Answered by an identical call in flight, without calling. */
  readonly coalesced: number
  /** Completions written to the store. */
  readonly stores: number
  /** Live entries the store dropped to make room. */
  readonly evictions: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * The completion of `request`: from the cache when it holds one, else from `call` (which should
   * send exactly `request`), stored when eligible.
   */
  readonly cached: <E, R>(
    request: ChatCompletionRequest,
    call: Effect.Effect<ChatCompletion, E, R>,
    options?: CachedOptions
  ) => Effect.Effect<ChatCompletion, E, R>
  readonly stats: Effect.Effect<Stats>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class ResponseCache extends Context.Tag("weatherproof/ResponseCache")<ResponseCache, Service>() {}

/**
 * Calls answered from the store.
 *
 * @since 0.1.0
 * @category metrics
 */
export const hitsCounter: Metric.Metric.Counter<number> = Metric.counter("weatherproof_response_cache_hits", {
  description: "Completions answered from the response cache",
  incremental: true
})

/**
 * Eligible calls that found nothing and called upstream.
 *
 * @since 0.1.0
 * @category metrics
 */
export const missesCounter: Metric.Metric.Counter<number> = Metric.counter("weatherproof_response_cache_misses", {
  description: "Cacheable calls the response cache could not answer",
  incremental: true
})

/**
 * Calls answered by an identical call in flight.
 *
 * @since 0.1.0
 * @category metrics
 */
export const coalescedCounter: Metric.Metric.Counter<number> = Metric.counter(
  "weatherproof_response_cache_coalesced",
  { description: "Calls that waited for an identical call in flight instead of calling", incremental: true }
)

const keyVersion = "weatherproof/ResponseCache/v1\n"

/**
 * The cache key of `request`: hex SHA-256 of its canonical JSON (see the module's documentation
 * for exactly what counts). Pure.
 *
 * @since 0.1.0
 * @category keys
 */
export const key = (request: ChatCompletionRequest): string => {
  const { stream: _stream, stream_options: _streamOptions, ...answerFields } = request
  return createHash("sha256").update(keyVersion + internal.canonicalJson(answerFields), "utf8").digest("hex")
}

/**
 * Whether DeepSeek thinks on `request`: `thinking.type` is `"enabled"`, or `reasoning_effort` is
 * set and thinking is not explicitly disabled.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isThinking = (request: ChatCompletionRequest): boolean =>
  request.thinking?.type === "enabled" ||
  (request.thinking?.type !== "disabled" && request.reasoning_effort !== undefined)

/**
 * Whether `"auto"` caches `request`: `temperature === 0` outside thinking mode.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isDeterministic = (request: ChatCompletionRequest): boolean =>
  request.temperature === 0 && !isThinking(request)

const completeReasons: ReadonlySet<string | null> = new Set(["stop", "length", "tool_calls"])

/**
 * Whether `completion` is a complete answer worth storing: at least one choice, each finished
 * with `stop`, `length` or `tool_calls`.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isStorable = (completion: ChatCompletion): boolean =>
  completion.choices.length > 0 && completion.choices.every((choice) => completeReasons.has(choice.finish_reason))

/**
 * An in-memory LRU store of at most `capacity` entries (default 1000), expiring entries by
 * Effect's `Clock`. Dies with `IllegalArgumentException` when `capacity` is not a positive
 * integer.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ResponseCache } from "weatherproof"
 *
 * const cache = ResponseCache.make({ timeToLive: "10 minutes" }).pipe(
 *   Effect.provideServiceEffect(ResponseCache.CacheStore, ResponseCache.makeMemoryStore(10_000))
 * )
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemoryStore = (capacity: number = defaults.capacity): Effect.Effect<Store> =>
  Effect.gen(function*() {
    const lru = yield* Effect.sync(() => {
      assertValid("ResponseCache", [positiveInteger("capacity", capacity)])
      return new internal.Lru<ChatCompletion>(capacity)
    })
    const evictions = yield* Ref.make(0)
    return CacheStore.of({
      get: (key) => Effect.map(Clock.currentTimeMillis, (now) => Option.fromNullable(lru.get(key, now))),
      set: (key, value, timeToLive) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Ref.update(evictions, (n) => n + lru.set(key, value, now + Duration.toMillis(timeToLive), now))),
      evictions: Ref.get(evictions)
    })
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layerMemoryStore = (capacity?: number): Layer.Layer<CacheStore> =>
  Layer.effect(CacheStore, makeMemoryStore(capacity))

const emptyCounts = { hits: 0, misses: 0, coalesced: 0, stores: 0 }


/**
 * A response cache on the `CacheStore` in context.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ChatSchema, ResponseCache, Transport } from "weatherproof"
 *
 * declare const sharedStore: ResponseCache.Store // e.g. on Redis
 * declare const request: ChatSchema.ChatCompletionRequest
 *
 * const answer = Effect.gen(function*() {
 *   const cache = yield* ResponseCache.make({ timeToLive: "1 day" })
 *   const transport = yield* Transport.Transport
 *   return yield* cache.cached(request, transport.create(request))
 * }).pipe(Effect.provideService(ResponseCache.CacheStore, sharedStore))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service, never, CacheStore> =>
  Effect.gen(function*() {
    const store = yield* CacheStore
    const defaultTimeToLive = Duration.decode(options.timeToLive ?? defaults.timeToLive)
    const counts = yield* Ref.make(emptyCounts)
    /** Calls in flight by key; each waiter learns the completion, or `None` if the call failed. */
    const inFlight = new Map<string, Deferred.Deferred<Option.Option<ChatCompletion>>>()

    const count = (name: keyof typeof emptyCounts, metric?: Metric.Metric.Counter<number>) =>
      Effect.zipRight(
        Ref.update(counts, (c) => ({ ...c, [name]: c[name] + 1 })),
        metric === undefined ? Effect.void : Metric.increment(metric)
      )

    const lookup = (key: string) =>
      Effect.catchAll(store.get(key), (error) =>
        Effect.as(Effect.logWarning("response cache read failed", error), Option.none<ChatCompletion>()))

    const save = (key: string, completion: ChatCompletion, timeToLive: Duration.Duration) => {
      if (!isStorable(completion) || Duration.toMillis(timeToLive) <= 0) return Effect.void
      return store.set(key, completion, timeToLive).pipe(
        Effect.zipRight(count("stores")),
        Effect.catchAll((error) => Effect.logWarning("response cache write failed", error))
      )
    }

    const callAndSave = <E, R>(key: string, call: Effect.Effect<ChatCompletion, E, R>, timeToLive: Duration.Duration) =>
      count("misses", missesCounter).pipe(
        Effect.zipRight(call),
        Effect.tap((completion) => save(key, completion, timeToLive))
      )

    const lookupOrCall = <E, R>(key: string, call: Effect.Effect<ChatCompletion, E, R>, timeToLive: Duration.Duration) =>
      Effect.flatMap(lookup(key), Option.match({
        onNone: () => callAndSave(key, call, timeToLive),
        onSome: (completion) => Effect.as(count("hits", hitsCounter), completion)
      }))

    /**
     * The first caller of a key leads: it looks up and calls. Later callers wait for its result,
     * and call themselves only if it has none. Registering and cleaning up cannot be interrupted
     * apart, so a key is never left in flight.
     */
    const singleFlight = <E, R>(key: string, call: Effect.Effect<ChatCompletion, E, R>, timeToLive: Duration.Duration) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(Deferred.make<Option.Option<ChatCompletion>>(), (mine) =>
          Effect.suspend(() => {
            const leader = inFlight.get(key)
            if (leader !== undefined) {
              return Effect.flatMap(restore(Deferred.await(leader)), Option.match({
                onNone: () => restore(callAndSave(key, call, timeToLive)),
                onSome: (completion) => Effect.as(count("coalesced", coalescedCounter), completion)
              }))
            }
            inFlight.set(key, mine)
            return restore(lookupOrCall(key, call, timeToLive)).pipe(
              Effect.onExit((exit) =>
                Effect.suspend(() => {
                  inFlight.delete(key)
                  return Deferred.succeed(mine, Exit.isSuccess(exit) ? Option.some(exit.value) : Option.none())
                })
              )
            )
          })))

    return ResponseCache.of({
      cached: (request, call, callOptions) => {
        const mode = callOptions?.cache ?? "auto"
        if (mode === "bypass" || (mode === "auto" && !isDeterministic(request))) return call
        const timeToLive = callOptions?.timeToLive === undefined
          ? defaultTimeToLive
          : Duration.decode(callOptions.timeToLive)
        return singleFlight(key(request), call, timeToLive)
      },
      stats: Effect.zipWith(Ref.get(counts), store.evictions, (c, evictions) => ({ ...c, evictions }))
    })
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<ResponseCache, never, CacheStore> =>
  Layer.effect(ResponseCache, make(options))

/**
 * A response cache in memory: an LRU of `capacity` entries (default 1000) living `timeToLive`
 * (default 1 hour).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (options: MemoryOptions = {}): Layer.Layer<ResponseCache> =>
  layer(options).pipe(Layer.provide(layerMemoryStore(options.capacity)))

/**
 * Caches nothing: every call goes upstream and nothing is counted.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDisabled: Layer.Layer<ResponseCache> = Layer.succeed(ResponseCache, {
  cached: (_request, call) => call,
  stats: Effect.succeed({ ...emptyCounts, evictions: 0 })
})
