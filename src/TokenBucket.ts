/**
 * A client-side rate limit in front of the upstream: requests per interval and tokens per
 * interval, each a token bucket that holds up to `burst` units and refills continuously at its
 * limit's rate. A call draws its cost from both buckets at once: one request and its token
 * estimate (`costOf`). When a bucket is short the call either waits (`onExhausted: "wait"`, the
 * default) or fails at once with `RateLimitExceeded`, which says when there will be room
 * (`"fail"`). `knownLimit` with `utilization` holds the rates to a share of a provider's
 * published limit.
 *
 * Waiting callers are served in arrival order: each draws its cost at once, taking the bucket
 * into debt, and sleeps on Effect's `Clock` (so `TestClock` drives it) until the debt is repaid.
 * A refused call draws nothing; a waiter interrupted before its turn (or giving up at its
 * `abandonWhen`) gives its cost back when it is the last in line. With waiters after it, its turn
 * goes unused: they sleep until the turns their draws were given, and its cost given back would
 * let a newcomer go beside the last of them, over the burst, and ahead of the others.
 *
 * Effect's own limiters were checked first and are not used:
 * - `effect/RateLimiter` only waits (no fail-fast, no `retryAfter`), ties the burst to the limit,
 *   rounds the time per unit up to a whole millisecond (1M tokens a minute would become 60k) and
 *   waits forever for a cost above its limit.
 * - `@effect/experimental/RateLimiter` has a fail mode and memory and Redis stores, but refills
 *   in whole units, so waits and `retryAfter` come up to one unit late (a second at 60 requests a
 *   minute); it draws one key at a time, so a call refused for tokens would keep the request it
 *   drew; and its `consume` has no capacity separate from the limit and no refund.
 *
 * ## Shared on Redis
 *
 * `makeRedis` / `layerRedis` keep the balances on Redis, so every process (and every service)
 * with the same `name` and prefix draws from one bucket, with the same options and semantics as
 * in memory: one Lua script refills and draws both dimensions at once, timed by the Redis
 * server's `TIME` (so the processes' clocks never matter), and the wait it answers is slept on
 * Effect's `Clock`. Waiters of every process are served in the order their draws reached the
 * server. State: a hash `{prefix}:bucket:<name>` that expires when the bucket would be full again
 * (plus a second), and a sorted set `{prefix}:bucket:<name>:processes` of the services that drew
 * in the last minute; nothing else, nothing that grows.
 *
 * `@effect/experimental`'s Redis `RateLimiterStore` was read and does not fit, beyond the reasons
 * above: its token bucket is timed by the caller's clock (`now` is passed in, so processes with
 * skewed clocks refill the bucket differently), its keys never expire, and it opens its own
 * connection instead of sharing the program's `Redis`.
 *
 * When a draw fails on Redis mid-run (`RedisError`), the service falls back to a bucket in memory
 * holding its share of the limit: each rate and burst divided by the number of processes the last
 * draw counted (1 when no draw has succeeded yet), full at the start. It logs a warning naming the
 * server's URL once, and returns to Redis on the first draw after the connection is ready again,
 * logging that once too (a restarted server without persistence starts the bucket full). A call
 * draws from one place only: a draw that failed on Redis draws locally instead; one whose reply
 * was lost may have been counted on the server as well, which only slows callers down. A
 * waiter's refund that Redis cannot take is dropped, with the same effect. While on the share, a
 * cost above the divided burst waits for its debt (`"wait"`) or is refused as oversized
 * (`"fail"`).
 *
 * @since 0.1.0
 */

import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import type { ChatCompletionRequest, Message } from "./ChatSchema.js"
import { currentMonotonicMillis } from "./internal/monotonic.js"
import * as internal from "./internal/tokenBucket.js"
import * as internalRedis from "./internal/tokenBucketRedis.js"
import { TaggedError } from "./internal/sdkError.js"
import * as Redis from "./Redis.js"

/**
 * What a bucket counts.
 *
 * @since 0.1.0
 * @category models
 */
export type Dimension = "requests" | "tokens"

/**
 * `limit` units per `interval`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Rate {
  readonly limit: number
  readonly interval: Duration.DurationInput
}

/**
 * A provider's published limits, e.g. `{ requests: 500, tokens: 2_000_000, interval: "1 minute" }`.
 *
 * @since 0.1.0
 * @category models
 */
export interface KnownLimit {
  readonly requests?: number | undefined
  readonly tokens?: number | undefined
  readonly interval: Duration.DurationInput
}

/**
 * What one call draws from the buckets.
 *
 * @since 0.1.0
 * @category models
 */
export interface Cost {
  /** Default 1. */
  readonly requests?: number | undefined
  /** Default 0. */
  readonly tokens?: number | undefined
}

/**
 * A dimension with neither a rate nor a known limit is unlimited.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Requests per interval. */
  readonly requests?: Rate | undefined
  /** Tokens per interval; a call costs its estimate (`costOf`). */
  readonly tokens?: Rate | undefined
  /**
   * The provider's limits. Each dimension is held to `utilization` of it, or to its own rate
   * when that is stricter.
   */
  readonly knownLimit?: KnownLimit | undefined
  /** Share of `knownLimit` to use, in (0, 1]. Default 0.8: headroom for other clients of the account. */
  readonly utilization?: number | undefined
  /** Bucket capacities: how much may go at once after a quiet spell. Default one interval's limit. */
  readonly burst?: { readonly requests?: number | undefined; readonly tokens?: number | undefined } | undefined
  /**
   * `"wait"` (the default) sleeps until there is room; a cost above the burst goes once the
   * debt it leaves is repaid. `"fail"` fails at once with `RateLimitExceeded`.
   */
  readonly onExhausted?: "wait" | "fail" | undefined
}

/**
 * @since 0.1.0
 */
export const defaults = {
  utilization: 0.8,
  onExhausted: "wait",
  name: "default"
} as const

/**
 * A bucket is short and `onExhausted` is `"fail"`. Retryable when waiting can help: then
 * `retryAfter` is when the buckets will hold the cost, if no one else draws first. `None` means
 * the cost exceeds the burst of `dimension`, so it never fits.
 *
 * @since 0.1.0
 * @category errors
 */
export class RateLimitExceeded extends TaggedError("RateLimitExceeded")<{
  readonly dimension: Dimension
  readonly retryAfter: Option.Option<Duration.Duration>
  /** A waiter that gave up (its `abandonWhen` completed: a `maxWait` that ran out). */
  readonly gaveUp?: boolean | undefined
}> {
  /** @since 0.1.0 */
  override get message(): string {
    if (this.gaveUp === true) {
      return `gave up waiting for the client-side ${this.dimension} rate limit (its maxWait ran out, or its abandonWhen completed)`
    }
    return Option.match(this.retryAfter, {
      onNone: () => `the call's ${this.dimension} cost exceeds the client-side burst`,
      onSome: (wait) => `client-side ${this.dimension} rate limit reached; room in ${Duration.format(wait)}`
    })
  }
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * Draws `cost` (default one request), waiting or failing per `onExhausted`. Dies with
   * `IllegalArgumentException` on a count that is no finite number >= 0.
   */
  readonly take: (cost?: Cost, options?: TakeOptions) => Effect.Effect<void, RateLimitExceeded>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface TakeOptions {
  /**
   * In `"wait"` mode, the waiter gives up once this completes (a `maxWait` that ran out), as an
   * interrupted one does, and fails with `RateLimitExceeded`, `gaveUp: true`, which is not retried.
   */
  readonly abandonWhen?: Effect.Effect<void> | undefined
}

/**
 * @since 0.1.0
 * @category tags
 */
export class TokenBucket extends Context.Tag("weatherproof/TokenBucket")<TokenBucket, Service>() {}

const charsPerToken = 4

const contentChars = (content: Message["content"]): number =>
  content == null
    ? 0
    : typeof content === "string"
    ? content.length
    : content.reduce((chars, part) => chars + (part.text?.length ?? 0), 0)

const messageChars = (message: Message): number =>
  contentChars(message.content) + (message.role === "assistant"
    ? (message.reasoning_content?.length ?? 0) +
      (message.tool_calls ?? []).reduce(
        (chars, call) => chars + call.function.name.length + call.function.arguments.length,
        0
      )
    : 0)

/**
 * A cheap estimate of the tokens a request counts against a tokens-per-interval limit: the text
 * it sends (message contents, reasoning sent back, tool calls, tool definitions as JSON) at
 * about 4 characters per token, plus `max_tokens` when given (providers reserve it up front).
 * English runs close to 4 characters per token; Chinese text runs nearer 1-2, so the estimate is
 * low for it: pass your own `Cost` when that matters.
 *
 * @since 0.1.0
 */
export const estimateTokens = (request: ChatCompletionRequest): number => {
  const chars = request.messages.reduce((total, message) => total + messageChars(message), 0) +
    (request.tools == null ? 0 : JSON.stringify(request.tools).length)
  return Math.ceil(chars / charsPerToken) + (request.max_tokens ?? 0)
}

/**
 * One request and its token estimate.
 *
 * @since 0.1.0
 */
export const costOf = (request: ChatCompletionRequest): Cost => ({ requests: 1, tokens: estimateTokens(request) })

const exceeded = (dimension: Dimension, retryAfter: Option.Option<Duration.Duration>) =>
  new RateLimitExceeded({ dimension, retryAfter })

/**
 * A bucket in memory, full at the start. Dies with `IllegalArgumentException` on a non-positive
 * limit, interval or burst, or a utilization outside (0, 1].
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ChatSchema, TokenBucket } from "weatherproof"
 *
 * declare const request: ChatSchema.ChatCompletionRequest
 *
 * const program = Effect.gen(function*() {
 *   // 80% of the provider's published limits; a call that does not fit fails instead of waiting.
 *   const bucket = yield* TokenBucket.make({
 *     knownLimit: { requests: 500, tokens: 2_000_000, interval: "1 minute" },
 *     onExhausted: "fail"
 *   })
 *   yield* bucket.take(TokenBucket.costOf(request)) // RateLimitExceeded says when there will be room
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options): Effect.Effect<Service> =>
  Effect.flatMap(
    Effect.sync(() => internal.bucketsOf(options, defaults.utilization)),
    (buckets) => makeOf(buckets, options.onExhausted ?? defaults.onExhausted)
  )

/** A bucket in memory over resolved buckets, full at the start. */
const makeOf = (buckets: ReadonlyArray<internal.Bucket>, onExhausted: OnExhausted): Effect.Effect<Service> =>
  Effect.gen(function*() {
    const balances = yield* Ref.make(internal.full(buckets, yield* currentMonotonicMillis))
    const modifyNow = <A>(
      f: (current: ReadonlyArray<internal.Balance>, now: number) => readonly [A, ReadonlyArray<internal.Balance>]
    ) => Effect.flatMap(currentMonotonicMillis, (now) => Ref.modify(balances, (current) => f(current, now)))
    // The last waiting draw: only it may give its cost back (see `internal.Wait.ticket`).
    let last: internal.Wait | undefined
    const take = taker(buckets, onExhausted, {
      draw: (mode, cost) =>
        modifyNow((current, now) => {
          const drawn = internal.draw(current, cost, now, mode)
          if (mode === "wait" && drawn[0] !== undefined) last = drawn[0]
          return drawn
        }),
      refund: (cost, wait) =>
        wait === last ? modifyNow((current, now) => [undefined, internal.refund(current, cost, now)]) : Effect.void
    })
    return TokenBucket.of({ take: (cost = {}, options) => take(cost, options) })
  })

type OnExhausted = NonNullable<Options["onExhausted"]>

/** Where balances live: in memory, or on Redis. */
interface Ledger<E> {
  /**
   * Draws `cost` from every bucket at once and answers how long its caller must wait. `"wait"`
   * draws into debt; `"fail"` draws nothing when a bucket is short.
   */
  readonly draw: (mode: OnExhausted, cost: Cost) => Effect.Effect<internal.Wait | undefined, E>
  /** Gives back what a waiter that gave up had drawn (its draw's `wait`), when it is still the last in line. */
  readonly refund: (cost: Cost, wait: internal.Wait) => Effect.Effect<void>
}

/**
 * How long until the buckets hold the cost, in whole milliseconds rounded up: the time they are
 * read in (`monotonic.ts`). A retry at a fraction's `retryAfter` (333.33 ms for 3 a second) read
 * the clock at 333 ms, found the bucket a thousandth short and was refused again.
 */
const roomIn = (wait: internal.Wait): Duration.Duration => Duration.millis(Math.ceil(wait.millis))

/** The failure of a waiter whose `abandonWhen` completed. */
const gaveUp = (wait: internal.Wait) =>
  Effect.fail(new RateLimitExceeded({ dimension: wait.dimension, retryAfter: Option.none(), gaveUp: true }))

/**
 * `take` on a ledger: waits out its debt (until its `abandonWhen`, if any; interrupted or giving
 * up, its cost goes back to the ledger, which takes it when the waiter is last in line) or fails
 * when short. A cost that is no cost dies with `IllegalArgumentException`.
 */
const taker = <E>(buckets: ReadonlyArray<internal.Bucket>, onExhausted: OnExhausted, ledger: Ledger<E>) => {
  const waitForRoom = (cost: Cost, abandonWhen: Effect.Effect<void> | undefined): Effect.Effect<void, RateLimitExceeded | E> =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(ledger.draw("wait", cost), (wait) => {
        if (wait === undefined) return Effect.void
        const slept = Effect.sleep(roomIn(wait))
        const waited = abandonWhen === undefined ? slept : Effect.raceFirst(slept, Effect.zipRight(abandonWhen, gaveUp(wait)))
        return restore(waited).pipe(Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : ledger.refund(cost, wait)))
      })
    )
  const failWhenShort = (cost: Cost): Effect.Effect<void, RateLimitExceeded | E> => {
    const oversized = internal.oversized(buckets, cost)
    if (oversized !== undefined) return Effect.fail(exceeded(oversized, Option.none()))
    return Effect.flatMap(ledger.draw("fail", cost), (wait) =>
      wait === undefined ? Effect.void : Effect.fail(exceeded(wait.dimension, Option.some(roomIn(wait)))))
  }
  return (cost: Cost, options?: TakeOptions): Effect.Effect<void, RateLimitExceeded | E> => {
    const invalid = internal.invalidCost(cost)
    if (invalid !== undefined) return Effect.die(invalid)
    return onExhausted === "wait" ? waitForRoom(cost, options?.abandonWhen) : failWhenShort(cost)
  }
}

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<TokenBucket> => Layer.effect(TokenBucket, make(options))

/**
 * @since 0.1.0
 * @category models
 */
export interface RedisOptions extends Options {
  /**
   * The bucket's name: every service of this name on the same Redis prefix, in any process,
   * draws from one bucket. They must be given the same rates. Default `"default"`.
   */
  readonly name?: string | undefined
}

/** Where a Redis bucket draws: on Redis, or, while Redis fails, from its local share. */
type Route = { readonly _tag: "Redis" } | { readonly _tag: "Local"; readonly bucket: Service }

const onRedis: Route = { _tag: "Redis" }

/**
 * A bucket on Redis, shared by every service of the same `name` (see the module's documentation
 * for the state it keeps, and what happens when Redis fails). Same options and semantics as
 * `make`. Dies with `IllegalArgumentException` on the options `make` refuses.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Redis, TokenBucket } from "weatherproof"
 *
 * // Every replica holds the account to 80% of its published limits, together.
 * const program = Effect.gen(function*() {
 *   const bucket = yield* TokenBucket.makeRedis({
 *     name: "deepseek-main",
 *     knownLimit: { requests: 500, tokens: 2_000_000, interval: "1 minute" }
 *   })
 *   yield* bucket.take({ requests: 1, tokens: 1_200 })
 * }).pipe(Effect.provide(Redis.layer({ url: "redis://127.0.0.1:6379" })))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeRedis = (options: RedisOptions): Effect.Effect<Service, never, Redis.Redis> =>
  Effect.gen(function*() {
    const redis = yield* Redis.Redis
    const buckets = yield* Effect.sync(() => internal.bucketsOf(options, defaults.utilization))
    if (buckets.length === 0) return unlimited
    const name = options.name ?? defaults.name
    const onExhausted = options.onExhausted ?? defaults.onExhausted
    const run = internalRedis.shared(redis, name, buckets)
    const processes = yield* Ref.make(1)
    const route = yield* SynchronizedRef.make<Route>(onRedis)

    const toLocal = (error: Redis.RedisError) =>
      SynchronizedRef.modifyEffect(route, (current) =>
        current._tag === "Local" ? Effect.succeed([current.bucket, current] as const) : Effect.gen(function*() {
          const sharing = yield* Ref.get(processes)
          const bucket = yield* makeOf(internal.share(buckets, sharing), onExhausted)
          yield* Effect.logWarning(
            `TokenBucket "${name}": Redis at ${redis.url} failed (${error.reason}); ` +
              `limiting locally to 1/${sharing} of the rate until it is back`
          )
          return [bucket, { _tag: "Local", bucket }] as const
        }))

    const rejoin = SynchronizedRef.updateEffect(route, (current) =>
      current._tag === "Redis"
        ? Effect.succeed(current)
        : Effect.as(Effect.logInfo(`TokenBucket "${name}": back on Redis at ${redis.url}`), onRedis))
    const isLocal = Effect.map(SynchronizedRef.get(route), (current) => current._tag === "Local")

    const takeShared = taker(buckets, onExhausted, {
      // Uninterruptible: a draw the server may have made is always known (and given back if need be).
      draw: (mode, cost) =>
        Effect.uninterruptible(run(mode, cost)).pipe(
          Effect.tap((reply) => Ref.set(processes, reply.processes)),
          Effect.tap(() => Effect.whenEffect(rejoin, isLocal)),
          Effect.map((reply) => reply.wait)
        ),
      // A refund Redis did not take leaves the cost drawn: fewer calls, never more.
      refund: (cost, wait) => Effect.ignore(run("refund", cost, wait.ticket ?? 0))
    })
    const takeOnRedis = (cost: Cost, options: TakeOptions | undefined) =>
      Effect.catchTag(takeShared(cost, options), "RedisError", (error) => Effect.flatMap(toLocal(error), (bucket) => bucket.take(cost, options)))

    return TokenBucket.of({
      take: (cost = {}, options) =>
        Effect.flatMap(SynchronizedRef.get(route), (current) =>
          current._tag === "Redis"
            ? takeOnRedis(cost, options)
            : Effect.flatMap(redis.isReady, (ready) => ready ? takeOnRedis(cost, options) : current.bucket.take(cost, options)))
    })
  })

/**
 * `makeRedis` as a layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRedis = (options: RedisOptions): Layer.Layer<TokenBucket, never, Redis.Redis> =>
  Layer.effect(TokenBucket, makeRedis(options))

const unlimited: Service = { take: () => Effect.void }

/**
 * Never limits: for tests and for callers that limit elsewhere.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerUnlimited: Layer.Layer<TokenBucket> = Layer.succeed(TokenBucket, unlimited)
