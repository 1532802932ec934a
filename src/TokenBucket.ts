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
 * A refused call draws nothing; a waiter interrupted before its turn gives its cost back.
 *
 * Effect's own limiters were checked first and are not used:
 * - `effect/RateLimiter` only waits (no fail-fast, no `retryAfter`), ties the burst to the limit,
 *   rounds the time per unit up to a whole millisecond (1M tokens a minute would become 60k) and
 *   waits forever for a cost above its limit.
 * - `@effect/experimental/RateLimiter` has a fail mode and memory and Redis stores, but refills
 *   in whole units, so waits and `retryAfter` come up to one unit late (a second at 60 requests a
 *   minute); it draws one key at a time, so a call refused for tokens would keep the request it
 *   drew; and its `consume` has no capacity separate from the limit and no refund. Its
 *   `RateLimiterStore` is the way to share a limit between processes when that is needed.
 *
 * @since 0.1.0
 */

import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import type { ChatCompletionRequest, Message } from "./ChatSchema.js"
import * as internal from "./internal/tokenBucket.js"

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
  onExhausted: "wait"
} as const

/**
 * A bucket is short and `onExhausted` is `"fail"`. Retryable when waiting can help: then
 * `retryAfter` is when the buckets will hold the cost, if no one else draws first. `None` means
 * the cost exceeds the burst of `dimension`, so it never fits.
 *
 * @since 0.1.0
 * @category errors
 */
export class RateLimitExceeded extends Data.TaggedError("RateLimitExceeded")<{
  readonly dimension: Dimension
  readonly retryAfter: Option.Option<Duration.Duration>
}> {
  /** @since 0.1.0 */
  override get message(): string {
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
  /** Draws `cost` (default one request), waiting or failing per `onExhausted`. */
  readonly take: (cost?: Cost) => Effect.Effect<void, RateLimitExceeded>
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
    (request.tools === undefined ? 0 : JSON.stringify(request.tools).length)
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
  Effect.gen(function*() {
    const buckets = yield* Effect.sync(() => internal.bucketsOf(options, defaults.utilization))
    const balances = yield* Ref.make(internal.full(buckets, yield* Clock.currentTimeMillis))
    const modifyNow = <A>(
      f: (current: ReadonlyArray<internal.Balance>, now: number) => readonly [A, ReadonlyArray<internal.Balance>]
    ) => Effect.flatMap(Clock.currentTimeMillis, (now) => Ref.modify(balances, (current) => f(current, now)))

    const waitForRoom = (cost: Cost) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(modifyNow((current, now) => internal.draw(current, cost, now)), (wait) =>
          wait === undefined ? Effect.void : restore(Effect.sleep(Duration.millis(wait.millis))).pipe(
            Effect.onInterrupt(() => modifyNow((current, now) => [undefined, internal.refund(current, cost, now)]))
          ))
      )

    const failWhenShort = (cost: Cost) =>
      Effect.flatten(modifyNow((current, now): readonly [Effect.Effect<void, RateLimitExceeded>, typeof current] => {
        const oversized = internal.oversized(current, cost)
        if (oversized !== undefined) return [Effect.fail(exceeded(oversized, Option.none())), current]
        const [wait, drawn] = internal.draw(current, cost, now)
        return wait === undefined
          ? [Effect.void, drawn]
          : [Effect.fail(exceeded(wait.dimension, Option.some(Duration.millis(wait.millis)))), current]
      }))

    const take = (options.onExhausted ?? defaults.onExhausted) === "wait" ? waitForRoom : failWhenShort
    return TokenBucket.of({ take: (cost = {}) => take(cost) })
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<TokenBucket> => Layer.effect(TokenBucket, make(options))

/**
 * Never limits: for tests and for callers that limit elsewhere.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerUnlimited: Layer.Layer<TokenBucket> = Layer.succeed(TokenBucket, { take: () => Effect.void })
