/**
 * A retry budget shared by every call, so an incident cannot turn into a retry storm: over a
 * rolling window, retries may not exceed `ratio` of the calls made plus a small reserve
 * (`minRetriesPerSecond` × the window) that lets low traffic still retry; a retry that succeeded
 * and was `refund`ed no longer counts.
 *
 * This is Finagle's budget (and the idea behind gRPC's retry throttling) on a bucketed window
 * advanced by Effect's `Clock`: each call deposits `ratio` of a retry, each retry withdraws one,
 * and deposits and withdrawals both expire with the window. With the defaults (20 %, 1 retry a
 * second, 10 s) a burst of 100 failing calls gets at most 20 + 10 retries in the window, where
 * a per-call policy of 5 retries would send 500 more requests to an upstream already in trouble.
 *
 * A retry that succeeds gives its room back (`refund`, as AWS SDKs' standard retry mode refunds
 * a successful retry's cost), so the budget bounds the retries that fail, not the work. Without
 * it, a batch whose every slot holds a call that failed in a short outage cannot recover: no
 * slot is free for a new call, so nothing funds a retry but the reserve, and the calls finish at
 * the reserve's pace, minutes after the upstream came back. With it, each retry that succeeds
 * lets the next waiting one go at once.
 *
 * Count each call once with `recordRequest` (not each attempt, or retries would fund more
 * retries), and let `guard` ask the budget before each retry a schedule decides on: when the
 * budget refuses, the schedule stops and the call fails with its last error, or, with
 * `waitFor`, the retry waits in line for room. Retries wait first come first served: each call
 * recorded, each refund, and each bucket leaving the window (a time the budget computes
 * exactly, kept by one timer), withdraws a retry for as many of the earliest waiters as it makes
 * room for, and wakes only those. Decisions and refunds are counted by `retriesAllowed`,
 * `retriesRefused` and `retriesRefunded`, and in `snapshot`; refusals are reported to `guard`'s
 * `onRefused`. `Policy` refunds each retry it was allowed whose attempt succeeds.
 *
 * Effect has no retry budget, so this module is written from scratch.
 *
 * @since 0.1.0
 */

import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Schedule from "effect/Schedule"
import { currentMonotonicMillis } from "./internal/monotonic.js"
import { assertValid, atLeast, positiveDuration, positiveInteger } from "./internal/options.js"
import * as internal from "./internal/retryBudget.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Retries allowed per call in the window, ≥ 0. Default 0.2. */
  readonly ratio?: number | undefined
  /** Retries allowed per second of window even with no calls, ≥ 0. Default 1. */
  readonly minRetriesPerSecond?: number | undefined
  /** How far back calls and retries count. Default 10 seconds. */
  readonly window?: Duration.DurationInput | undefined
  /** The window moves in `window / buckets` steps. Default 10. */
  readonly buckets?: number | undefined
}

/**
 * @since 0.1.0
 */
export const defaults = {
  ratio: 0.2,
  minRetriesPerSecond: 1,
  window: Duration.seconds(10),
  buckets: 10
} as const

/**
 * The window's counts.
 *
 * @since 0.1.0
 * @category models
 */
export interface Snapshot {
  /** Calls recorded. */
  readonly requests: number
  /** Retries allowed, less those refunded. */
  readonly retries: number
  /** Retries refused (at once, or when their wait for room ran out). */
  readonly refused: number
  /** Retries refunded because they succeeded (no longer in `retries`). */
  readonly refunded: number
  /** Retries the budget would allow now. */
  readonly available: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Counts one call (once per call, not per attempt). */
  readonly recordRequest: Effect.Effect<void>
  /**
   * Withdraws one retry if the budget allows it now (retries waiting for room come first);
   * `false`, a refusal, means do not retry.
   */
  readonly tryRetry: Effect.Effect<boolean>
  /**
   * Withdraws one retry, waiting in line up to `maxWait` while the budget has no room: the
   * earliest waiters get the room first, and a retry is withdrawn for a waiter as it is woken.
   * `false`, a refusal, when the wait runs out. Interrupted while it waits, it leaves the line
   * and takes nothing; interrupted after a retry was withdrawn for it, before it resumed, that
   * retry stays spent (the budget errs on the side of fewer retries).
   */
  readonly awaitRetry: (maxWait: Duration.DurationInput) => Effect.Effect<boolean>
  /**
   * A retry this budget allowed succeeded: gives its room back. `allowedAt` is the time the budget
   * allowed it (epoch millis on the `Clock`'s monotonic time, `currentTimeNanos`), read right after
   * (`guard`'s `onAllowed` is told it). The budget takes back a retry it counted then, or nothing
   * once that time left the window, so a refund never gives back room that no longer counts.
   * Refund each retry at most once, and only one the budget allowed (not one `guard` exempted).
   */
  readonly refund: (allowedAt: number) => Effect.Effect<void>
  readonly snapshot: Effect.Effect<Snapshot>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class RetryBudget extends Context.Tag("weatherproof/RetryBudget")<RetryBudget, Service>() {}

/**
 * Retries a budget allowed.
 *
 * @since 0.1.0
 * @category metrics
 */
export const retriesAllowed: Metric.Metric.Counter<number> = Metric.counter("weatherproof_retry_budget_allowed", {
  description: "Retries the retry budget allowed",
  incremental: true
})

/**
 * Retries a budget refused: at once, or when their wait for room ran out.
 *
 * @since 0.1.0
 * @category metrics
 */
export const retriesRefused: Metric.Metric.Counter<number> = Metric.counter("weatherproof_retry_budget_refused", {
  description: "Retries the retry budget refused",
  incremental: true
})

/**
 * Retries a budget was given back because they succeeded.
 *
 * @since 0.1.0
 * @category metrics
 */
export const retriesRefunded: Metric.Metric.Counter<number> = Metric.counter("weatherproof_retry_budget_refunded", {
  description: "Retries that succeeded and gave their room in the retry budget back",
  incremental: true
})

const counters: Record<internal.Event, Metric.Metric.Counter<number>> = {
  allowed: retriesAllowed,
  refused: retriesRefused,
  refunded: retriesRefunded
}

const count = (event: internal.Event): void => counters[event].unsafeUpdate(1, [])

const settingsOf = (options: Options): internal.Settings => {
  const window = options.window ?? defaults.window
  const buckets = options.buckets ?? defaults.buckets
  const ratio = options.ratio ?? defaults.ratio
  const minRetriesPerSecond = options.minRetriesPerSecond ?? defaults.minRetriesPerSecond
  assertValid("RetryBudget", [
    positiveDuration("window", window),
    positiveInteger("buckets", buckets),
    atLeast("ratio", ratio, 0),
    atLeast("minRetriesPerSecond", minRetriesPerSecond, 0)
  ])
  const windowMillis = Duration.toMillis(window)
  return {
    bucketMillis: windowMillis / buckets,
    buckets,
    ratio,
    reserve: minRetriesPerSecond * windowMillis / 1000
  }
}

/**
 * A budget in memory. Dies with `IllegalArgumentException` on invalid options.
 *
 * @example
 * ```ts
 * import { RetryBudget } from "weatherproof"
 *
 * const budget = RetryBudget.make({ ratio: 0.1, window: "30 seconds" })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service> =>
  Effect.clockWith((clock) =>
    Effect.sync(() => {
      // From the start, at 0: a series shows only from its first update.
      for (const counter of Object.values(counters)) counter.unsafeUpdate(0, [])
      return new internal.Budget(settingsOf(options), clock, count)
    })
  )

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<RetryBudget> => Layer.effect(RetryBudget, make(options))

/**
 * Allows every retry and counts nothing: for tests and for callers that bound retries otherwise.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerUnlimited: Layer.Layer<RetryBudget> = Layer.succeed(RetryBudget, {
  recordRequest: Effect.void,
  tryRetry: Effect.succeed(true),
  awaitRetry: () => Effect.succeed(true),
  refund: () => Effect.void,
  snapshot: Effect.succeed({ requests: 0, retries: 0, refused: 0, refunded: 0, available: Infinity })
})

/**
 * @since 0.1.0
 * @category models
 */
export interface GuardOptions<E, R> {
  /** Told the error that will surface because the budget refused its retry. */
  readonly onRefused?: ((error: E) => Effect.Effect<void, never, R>) | undefined
  /**
   * Told the error whose retry the budget allowed, and the time it did: what `refund` takes once
   * that retry succeeds. Not told of an exempt retry, which the budget did not charge.
   */
  readonly onAllowed?: ((error: E, allowedAt: number) => Effect.Effect<void, never, R>) | undefined
  /**
   * How long a refused retry waits for the budget to allow it before the error surfaces. Waiting
   * paces retries at the budget's rate instead of dropping the work; the total stays within the
   * budget either way. Default 0: refuse at once.
   */
  readonly waitFor?: Duration.DurationInput | undefined
  /**
   * A retry of an error this holds for is not charged to the budget, nor held back by it: one
   * that something else paces (a cap's 429 behind a concurrency limiter). Default: none.
   */
  readonly exempt?: ((error: E) => boolean) | undefined
}

/**
 * Asks `budget` before each retry `self` decides on, and stops the schedule when it refuses, so
 * the error surfaces instead of being retried. The budget is asked only when `self` would
 * retry, so apply `guard` last: a condition checked after it would waste the withdrawn retry.
 * `Effect.retry` cannot tell the schedule that a retry succeeded: to give a successful retry's
 * room back, keep the time `onAllowed` is told and `refund` it (`Policy` does).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { RetryBudget, RetryPolicy } from "weatherproof"
 *
 * declare const call: Effect.Effect<string, Error>
 * const guarded = Effect.flatMap(RetryBudget.make(), (budget) =>
 *   Effect.retry(call, RetryPolicy.schedule<Error>().pipe(RetryBudget.guard(budget))))
 * ```
 *
 * @since 0.1.0
 * @category combinators
 */
export const guard = <E = unknown, R2 = never>(budget: Service, options: GuardOptions<E, R2> = {}) =>
<Out, In extends E, R>(self: Schedule.Schedule<Out, In, R>): Schedule.Schedule<Out, In, R | R2> =>
  Schedule.checkEffect(self, (error: In) =>
    options.exempt?.(error) === true ? Effect.succeed(true) : Effect.tap(
      budget.awaitRetry(options.waitFor ?? 0),
      (allowed) => allowed ? told(options.onAllowed, error) : options.onRefused?.(error) ?? Effect.void
    ))

/** `onAllowed` told of `error`'s retry, allowed now. */
const told = <E, R>(onAllowed: GuardOptions<E, R>["onAllowed"], error: E): Effect.Effect<void, never, R> =>
  onAllowed === undefined ? Effect.void : Effect.flatMap(currentMonotonicMillis, (now) => onAllowed(error, now))
