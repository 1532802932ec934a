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
 * Only a complete answer is stored: every choice finished with `stop`, `length`, `tool_calls` or
 * `function_call`. A failed call, an empty `choices`, a `content_filter` cut or an unfinished
 * choice is never stored (`insufficient_system_resource` is a failure already: the transport turns it
 * into `InsufficientResource`), nor an answer an `AccountPool` got from another model than the one
 * asked for (an account whose `models` map sent it under another name, a fallback provider's): the
 * request would get that model's answer as long as it lived, the model asked for back or not. A
 * hit returns the stored completion unchanged, with the `id` and `usage` of the call that paid for
 * it.
 *
 * ## The key
 *
 * `key(request)` is the hex SHA-256 of `"weatherproof/ResponseCache/v2\n"` followed by the
 * request's canonical JSON: the request without `stream` and `stream_options` (the transport sets
 * them; a completion is the same either way), with the keys of every object sorted at every depth
 * and `undefined` members left out, but for the `properties` of the JSON Schemas in `tools` and
 * `response_format`, which keep their order: a model follows it (a structured answer comes back
 * in that order). Everything else counts, unknown passthrough fields included:
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
 * completion, whether or not it was stored. If it fails, each waiter makes its own call: a
 * failure belongs to the call that made it (its deadlines, its key), not to callers that merely
 * asked the same question. If it stops before its answer (interrupted: its client left, say; or a
 * stream its reader left), the waiters take turns again: one calls, the others wait for it.
 *
 * Single flight is per process, also on a shared store: two processes that miss the same key at
 * once each call upstream (and the second write wins). Extending it across processes (an
 * in-flight marker with `SET NX PX`, waiters woken by pub/sub) was left out: the cache does not
 * know how long the call it wraps may take (DeepSeek may queue a request for ten minutes), so a
 * marker's expiry would either lapse under a slow call, making the duplicate anyway, or hold
 * waiters behind a crashed process; and every miss would pay two more round trips for a case a
 * shared store already shrinks to one call per process.
 *
 * ## Streams
 *
 * `cachedStream` does the same for a streamed answer, on the same entries (the key leaves `stream`
 * out): a hit replays the stored completion as chunks (`ChatStream.chunksOf`: one per choice, then
 * the usage), all at once; a miss passes the live chunks through and stores what they add up to
 * when the stream ends whole (one cut, failed or left before its upstream ended stores nothing).
 * A miss reads its upstream at the upstream's pace, whatever its reader's: the chunks the reader
 * has not taken yet are held, so the identical calls waiting for it never wait on a slow reader.
 * A stream that finds an identical call in flight waits for it and replays its completion, so it
 * gets the whole answer at once when that call ends instead of streaming its own. A stream's
 * `logprobs` are stored with its answer and replayed with it.
 *
 * ## Stores
 *
 * `ResponseCache` runs on a `CacheStore` (`get`, `set` with a time to live): in memory
 * (`layerMemory`) or on Redis (`layerRedis`, shared by every process on the same prefix). A
 * store that fails never fails a call: a failed read is a miss, a failed write stores nothing,
 * so a Redis server that goes away mid-run only costs upstream calls until it is back (nothing to
 * rejoin: each call tries the store again). The first failure is logged (one warning with its
 * reason), then the store's first answer after it; the failures between are not. The memory store is an LRU
 * bounded by `capacity` with expiry read from Effect's `Clock`. Effect's `Cache` was not used: it
 * computes values through a lookup fixed at construction, with no per-entry time to live on
 * `set` and no eviction count.
 *
 * @since 0.1.0
 */

import { createHash } from "node:crypto"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { ChatCompletion, type ChatCompletionChunk, type ChatCompletionRequest } from "./ChatSchema.js"
import * as ChatStream from "./ChatStream.js"
import { madeAtFirstCall } from "./internal/firstCall.js"
import { currentMonotonicMillis } from "./internal/monotonic.js"
import * as internal from "./internal/responseCache.js"
import { assertValid, positiveInteger } from "./internal/options.js"
import { isSubstitute } from "./internal/substitutes.js"
import * as Redis from "./Redis.js"

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
  /**
   * The chunks of `request`'s answer: replayed from the cache when it holds a completion
   * (`ChatStream.chunksOf`), else `stream` (which should stream exactly `request`) passed through,
   * and what its chunks add up to stored when it ends whole.
   */
  readonly cachedStream: <E, R>(
    request: ChatCompletionRequest,
    stream: Stream.Stream<ChatCompletionChunk, E, R>,
    options?: CachedOptions
  ) => Stream.Stream<ChatCompletionChunk, E, R>
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

const keyVersion = "weatherproof/ResponseCache/v2\n"

/** The request's fields holding JSON Schemas, whose `properties` keep their order in the key. */
const schemaFields: ReadonlySet<string> = new Set(["tools", "response_format"])

/**
 * The cache key of `request`: hex SHA-256 of its canonical JSON (see the module's documentation
 * for exactly what counts). Pure.
 *
 * @since 0.1.0
 * @category keys
 */
export const key = (request: ChatCompletionRequest): string => {
  const { stream: _stream, stream_options: _streamOptions, ...answerFields } = request
  return createHash("sha256").update(keyVersion + internal.canonicalJson(answerFields, schemaFields), "utf8").digest("hex")
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
  (request.thinking?.type !== "disabled" && request.reasoning_effort != null)

/**
 * Whether `"auto"` caches `request`: `temperature === 0` outside thinking mode.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isDeterministic = (request: ChatCompletionRequest): boolean =>
  request.temperature === 0 && !isThinking(request)

const completeReasons: ReadonlySet<string | null> = new Set(["stop", "length", "tool_calls", "function_call"])

/**
 * Whether `completion` is a complete answer worth storing: at least one choice, each finished
 * with `stop`, `length`, `tool_calls` or `function_call`.
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
      get: (key) => Effect.map(currentMonotonicMillis, (now) => Option.fromNullable(lru.get(key, now))),
      set: (key, value, timeToLive) =>
        Effect.flatMap(currentMonotonicMillis, (now) =>
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

const decodeStored = madeAtFirstCall(() => Schema.decodeUnknownOption(Schema.parseJson(ChatCompletion)))

/**
 * A store on Redis, shared by every process on the same prefix: each entry is the completion's
 * JSON under `{prefix}:cache:<key>` (the key is the request's SHA-256, never its text), written
 * with `SET … PX <time to live>`, so Redis expires it. A value that does not decode as a
 * completion is a miss: it is deleted (only if it is still that value) and logged by the process
 * that deleted it, so once however many processes read it. An infinite time to live is refused
 * (`CacheStoreError`, so nothing is stored): every key expires. `evictions` is always 0: Redis
 * counts evicted keys for the whole server (`INFO stats`), not for this store.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Redis, ResponseCache } from "weatherproof"
 *
 * const store = ResponseCache.makeRedisStore.pipe(Effect.provide(Redis.layer({ url: "redis://127.0.0.1:6379" })))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeRedisStore: Effect.Effect<Store, never, Redis.Redis> = Effect.gen(function*() {
  const redis = yield* Redis.Redis
  const deleteIfUnchanged = redis.script(internal.deleteIfUnchanged)
  const entryKey = (key: string) => redis.key("cache", key)
  const storeError = (operation: CacheStoreError["operation"]) => (error: Redis.RedisError) =>
    new CacheStoreError({ operation, message: error.message, cause: error })

  const discard = (key: string, stored: string) =>
    deleteIfUnchanged([entryKey(key)], [stored]).pipe(
      Effect.flatMap((deleted) =>
        deleted === 1
          ? Effect.logWarning(`response cache: deleted entry ${key}, which does not decode as a completion`)
          : Effect.void
      ),
      // Still there: the next read tries again.
      Effect.ignore
    )

  return CacheStore.of({
    get: (key) =>
      redis.command("GET", [entryKey(key)]).pipe(
        Effect.mapError(storeError("get")),
        Effect.flatMap((stored) => {
          if (typeof stored !== "string") return Effect.succeedNone
          const completion = decodeStored(stored)
          return Option.isSome(completion) ? Effect.succeed(completion) : Effect.as(discard(key, stored), Option.none())
        })
      ),
    set: (key, value, timeToLive) =>
      Duration.isFinite(timeToLive)
        ? redis.command("SET", [entryKey(key), JSON.stringify(value), "PX", Math.max(1, Math.ceil(Duration.toMillis(timeToLive)))])
          .pipe(Effect.asVoid, Effect.mapError(storeError("set")))
        : Effect.fail(new CacheStoreError({ operation: "set", message: "an infinite time to live: every Redis key expires" })),
    evictions: Effect.succeed(0)
  })
})

/**
 * `makeRedisStore` as a layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRedisStore: Layer.Layer<CacheStore, never, Redis.Redis> = Layer.effect(CacheStore, makeRedisStore)

const emptyCounts = { hits: 0, misses: 0, coalesced: 0, stores: 0 }

/**
 * How a leader's call ended, for its waiters: its completion; failed (each waiter calls for
 * itself); or stopped before its answer, interrupted or left by its reader (they take turns again).
 */
type Led = ChatCompletion | "failed" | "stopped"

/** A caller's turn at a key: it leads the calls for it, or waits for the leader's completion. */
type Turn =
  | { readonly _tag: "Lead"; readonly settle: (led: Led) => Effect.Effect<void> }
  | { readonly _tag: "Wait"; readonly leader: Deferred.Deferred<Led> }


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
    // From the start, at 0: a series shows only from its first update.
    yield* Effect.sync(() => {
      for (const counter of [hitsCounter, missesCounter, coalescedCounter]) counter.unsafeUpdate(0, [])
    })
    const counts = yield* Ref.make(emptyCounts)
    /** Calls in flight by key; each waiter learns how its leader's call ended (`Led`). */
    const inFlight = new Map<string, Deferred.Deferred<Led>>()

    const count = (name: keyof typeof emptyCounts, metric?: Metric.Metric.Counter<number>) =>
      Effect.zipRight(
        Ref.update(counts, (c) => ({ ...c, [name]: c[name] + 1 })),
        metric === undefined ? Effect.void : Metric.increment(metric)
      )

    /**
     * A store that fails fails every call while it is down (a Redis server gone): the first
     * failure is logged, then the store's first answer, and nothing between.
     */
    let storeDown = false
    const storeFailed = (error: CacheStoreError) =>
      Effect.suspend(() => {
        if (storeDown) return Effect.void
        storeDown = true
        return Effect.logWarning(
          `response cache: its store failed to ${error.operation} (${error.message}); calls go upstream and nothing is stored until it answers`
        )
      })
    const storeAnswered = Effect.suspend(() => {
      if (!storeDown) return Effect.void
      storeDown = false
      return Effect.logInfo("response cache: its store answers again")
    })

    const lookup = (key: string) =>
      store.get(key).pipe(
        Effect.tap(() => storeAnswered),
        Effect.catchAll((error) => Effect.as(storeFailed(error), Option.none<ChatCompletion>()))
      )

    const save = (key: string, completion: ChatCompletion, timeToLive: Duration.Duration) => {
      if (!isStorable(completion) || isSubstitute(completion) || Duration.toMillis(timeToLive) <= 0) return Effect.void
      return store.set(key, completion, timeToLive).pipe(
        Effect.zipRight(Effect.zipRight(storeAnswered, count("stores"))),
        Effect.catchAll(storeFailed)
      )
    }

    const callAndSave = <E, R>(key: string, call: Effect.Effect<ChatCompletion, E, R>, timeToLive: Duration.Duration) =>
      count("misses", missesCounter).pipe(
        Effect.zipRight(call),
        Effect.tap((completion) => save(key, completion, timeToLive))
      )

    /** The live stream, counted as a miss; what it adds up to is stored, and `whole` told, when it ends whole. */
    const streamAndSave = <E, R>(
      key: string,
      live: Stream.Stream<ChatCompletionChunk, E, R>,
      timeToLive: Duration.Duration,
      whole: (completion: ChatCompletion) => Effect.Effect<void> = () => Effect.void
    ) =>
      Stream.unwrap(Effect.as(
        count("misses", missesCounter),
        Stream.suspend(() => {
          let state = ChatStream.empty
          let substitute = false
          const folding = Stream.mapChunks(live, (chunks) => {
            for (const chunk of chunks) {
              state = ChatStream.step(state, chunk)
              substitute ||= isSubstitute(chunk)
            }
            return chunks
          })
          return Stream.concat(
            folding,
            Stream.execute(Effect.suspend(() => {
              const completion = ChatStream.toCompletion(state)
              return Effect.zipRight(substitute ? Effect.void : save(key, completion, timeToLive), whole(completion))
            }))
          )
        })
      ))

    const replay = (completion: ChatCompletion) => Stream.fromIterable(ChatStream.chunksOf(completion))

    /**
     * The first caller of a key leads until its scope closes: it looks up and calls, and tells the
     * waiters its completion with `settle` (as its scope closes without one: `failed` when it
     * failed, else `stopped`). A later caller waits for the leader. Registering and releasing
     * cannot be interrupted apart, so a key is never left in flight.
     */
    const turnFor = (key: string): Effect.Effect<Turn, never, Scope.Scope> =>
      Effect.acquireRelease(
        Effect.sync((): Turn => {
          const leader = inFlight.get(key)
          if (leader !== undefined) return { _tag: "Wait", leader }
          const mine = Deferred.unsafeMake<Led>(FiberId.none)
          inFlight.set(key, mine)
          const settle = (led: Led) =>
            Effect.suspend(() => {
              if (inFlight.get(key) === mine) inFlight.delete(key)
              return Deferred.succeed(mine, led)
            })
          return { _tag: "Lead", settle }
        }),
        (turn, exit) =>
          turn._tag === "Wait"
            ? Effect.void
            : turn.settle(Exit.isFailure(exit) && !Cause.isInterruptedOnly(exit.cause) ? "failed" : "stopped")
      )

    const singleFlight = <E, R>(
      key: string,
      call: Effect.Effect<ChatCompletion, E, R>,
      timeToLive: Duration.Duration
    ): Effect.Effect<ChatCompletion, E, R> =>
      Effect.scoped(Effect.flatMap(turnFor(key), (turn) =>
        turn._tag === "Wait"
          ? Effect.flatMap(Deferred.await(turn.leader), (led): Effect.Effect<ChatCompletion, E, R> =>
            led === "failed"
              ? callAndSave(key, call, timeToLive)
              : led === "stopped"
              ? singleFlight(key, call, timeToLive)
              : Effect.as(count("coalesced", coalescedCounter), led))
          : Effect.flatMap(lookup(key), Option.match({
            onNone: () => callAndSave(key, call, timeToLive),
            onSome: (completion) => Effect.as(count("hits", hitsCounter), completion)
          })).pipe(Effect.tap((completion) => turn.settle(completion)))))

    const singleFlightStream = <E, R>(
      key: string,
      live: Stream.Stream<ChatCompletionChunk, E, R>,
      timeToLive: Duration.Duration
    ): Stream.Stream<ChatCompletionChunk, E, R> =>
      Stream.unwrapScoped(Effect.flatMap(turnFor(key), (turn) =>
        turn._tag === "Wait"
          ? Effect.map(Deferred.await(turn.leader), (led) =>
            led === "failed"
              ? streamAndSave(key, live, timeToLive)
              : led === "stopped"
              ? singleFlightStream(key, live, timeToLive)
              : Stream.unwrap(Effect.as(count("coalesced", coalescedCounter), replay(led))))
          : Effect.flatMap(lookup(key), Option.match({
            // Read from the upstream at its pace, not the reader's (a slow client, a zip): the
            // calls waiting for this one wait for the upstream only. What the reader has not
            // taken yet is held (an answer is bounded by its `max_tokens`).
            onNone: () =>
              Effect.succeed(Stream.buffer(
                streamAndSave(key, live, timeToLive, turn.settle),
                { capacity: "unbounded" }
              )),
            onSome: (completion) =>
              Effect.as(Effect.zipRight(count("hits", hitsCounter), turn.settle(completion)), replay(completion))
          }))))

    /** The call's time to live, or `undefined` when it neither looks up nor stores. */
    const eligible = (request: ChatCompletionRequest, callOptions: CachedOptions | undefined) => {
      const mode = callOptions?.cache ?? "auto"
      if (mode === "bypass" || (mode === "auto" && !isDeterministic(request))) return undefined
      return callOptions?.timeToLive === undefined ? defaultTimeToLive : Duration.decode(callOptions.timeToLive)
    }

    return ResponseCache.of({
      cached: (request, call, callOptions) => {
        const timeToLive = eligible(request, callOptions)
        return timeToLive === undefined ? call : singleFlight(key(request), call, timeToLive)
      },
      cachedStream: (request, live, callOptions) => {
        const timeToLive = eligible(request, callOptions)
        return timeToLive === undefined ? live : singleFlightStream(key(request), live, timeToLive)
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
 * A response cache on Redis (`layerRedisStore`), shared by every process on the same prefix;
 * entries live `timeToLive` (default 1 hour).
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { Redis, ResponseCache } from "weatherproof"
 *
 * const cache = ResponseCache.layerRedis({ timeToLive: "1 day" }).pipe(Layer.provide(Redis.layerConfig))
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRedis = (options?: Options): Layer.Layer<ResponseCache, never, Redis.Redis> =>
  layer(options).pipe(Layer.provide(layerRedisStore))

/**
 * The cache that caches nothing: every call goes upstream and nothing is counted.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ResponseCache } from "weatherproof"
 *
 * declare const program: Effect.Effect<void, never, ResponseCache.ResponseCache>
 *
 * const uncached = Effect.provideService(program, ResponseCache.ResponseCache, ResponseCache.disabled)
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const disabled: Service = {
  cached: (_request, call) => call,
  cachedStream: (_request, stream) => stream,
  stats: Effect.succeed({ ...emptyCounts, evictions: 0 })
}

/**
 * Caches nothing (`disabled`).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDisabled: Layer.Layer<ResponseCache> = Layer.succeed(ResponseCache, disabled)
