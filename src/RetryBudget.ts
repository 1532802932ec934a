/**
 * A retry budget shared by every call, so an incident cannot turn into a retry storm: over a
 * rolling window, retries may not exceed `ratio` of the calls made plus a small reserve
 * (`minRetriesPerSecond` × the window) that lets low traffic still retry.
 *
 * This is Finagle's budget (and the idea behind gRPC's retry throttling) on a bucketed window
 * advanced by Effect's `Clock`: each call deposits `ratio` of a retry, each retry withdraws one,
 * and deposits and withdrawals both expire with the window. With the defaults (20 %, 1 retry a
 * second, 10 s) a burst of 100 failing calls gets at most 20 + 10 retries in the window, where
 * a per-call policy of 5 retries would send 500 more requests to an upstream already in trouble.
 *
 * Count each call once with `recordRequest` (not each attempt, or retries would fund more
 * retries), and let `guard` ask the budget before each retry a schedule decides on: when the
 * budget refuses, the schedule stops and the call fails with its last error. Refusals are counted
 * by `retriesRefused`, in `snapshot`, and reported to `guard`'s `onRefused`.
 *
 * Effect has no retry budget, so this module is written from scratch.
 *
 * @since 0.1.0
 */

import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
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
  /** Retries allowed. */
  readonly retries: number
  /** Retries refused. */
  readonly refused: number
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
  /** Withdraws one retry if the budget allows it; `false` means do not retry. */
  readonly tryRetry: Effect.Effect<boolean>
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
 * Retries a budget refused: each refused ask (a retry that waits for room asks again every poll).
 *
 * @since 0.1.0
 * @category metrics
 */
export const retriesRefused: Metric.Metric.Counter<number> = Metric.counter("weatherproof_retry_budget_refused", {
  description: "Retries the retry budget refused",
  incremental: true
})

const illegal = (message: string): never => {
  throw new Cause.IllegalArgumentException(`RetryBudget: ${message}`)
}

const settingsOf = (options: Options): internal.Settings => {
  const windowMillis = Duration.toMillis(options.window ?? defaults.window)
  const buckets = options.buckets ?? defaults.buckets
  const ratio = options.ratio ?? defaults.ratio
  const minRetriesPerSecond = options.minRetriesPerSecond ?? defaults.minRetriesPerSecond
  if (!(windowMillis > 0)) illegal("window must be positive")
  if (!Number.isInteger(buckets) || buckets < 1) illegal("buckets must be a positive integer")
  if (!(ratio >= 0)) illegal("ratio must be at least 0")
  if (!(minRetriesPerSecond >= 0)) illegal("minRetriesPerSecond must be at least 0")
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
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service> =>
  Effect.gen(function*() {
    const settings = yield* Effect.sync(() => settingsOf(options))
    const window = yield* Ref.make(internal.empty)
    const modifyNow = <A>(f: (window: internal.Window, now: number) => readonly [A, internal.Window]) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => Ref.modify(window, (current) => f(current, now)))

    return RetryBudget.of({
      recordRequest: modifyNow((current, now) => [undefined, internal.recordRequest(settings, current, now)]),
      tryRetry: modifyNow((current, now) => internal.tryRetry(settings, current, now)).pipe(
        Effect.tap((allowed) => Metric.increment(allowed ? retriesAllowed : retriesRefused))
      ),
      snapshot: Effect.flatMap(Clock.currentTimeMillis, (now) =>
        Effect.map(Ref.get(window), (current) => {
          const sums = internal.totals(settings, current, now)
          return { ...sums, available: internal.available(settings, sums) }
        }))
    })
  })

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
  snapshot: Effect.succeed({ requests: 0, retries: 0, refused: 0, available: Infinity })
})

/**
 * @since 0.1.0
 * @category models
 */
export interface GuardOptions<E, R> {
  /** Told the error that will surface because the budget refused its retry. */
  readonly onRefused?: ((error: E) => Effect.Effect<void, never, R>) | undefined
  /**
   * How long a refused retry waits for the budget to allow it before the error surfaces. Waiting
   * paces retries at the budget's rate instead of dropping the work; the total stays within the
   * budget either way. Default 0: refuse at once.
   */
  readonly waitFor?: Duration.DurationInput | undefined
  /** How often a waiting retry asks the budget again. Default 1 second. */
  readonly poll?: Duration.DurationInput | undefined
}

/**
 * Withdraws a retry from `budget`, asking again every `poll` while it refuses, until `waitFor`
 * has passed. Each refused ask counts as a refusal in the snapshot and the metric.
 */
const withdraw = (budget: Service, waitFor: Duration.Duration, poll: Duration.Duration): Effect.Effect<boolean> =>
  Effect.flatMap(budget.tryRetry, (allowed) =>
    allowed || Duration.lessThan(waitFor, poll)
      ? Effect.succeed(allowed)
      : Effect.zipRight(Effect.sleep(poll), withdraw(budget, Duration.subtract(waitFor, poll), poll)))

/**
 * Asks `budget` before each retry `self` decides on, and stops the schedule when it refuses, so
 * the error surfaces instead of being retried. The budget is asked only when `self` would
 * retry, so apply `guard` last: a condition checked after it would waste the withdrawn retry.
 *
 * @example
 * ```ts
 * Effect.retry(call, RetryBudget.guard(budget)(RetryPolicy.schedule()))
 * ```
 *
 * @since 0.1.0
 * @category combinators
 */
export const guard = <E = unknown, R2 = never>(budget: Service, options: GuardOptions<E, R2> = {}) =>
<Out, In extends E, R>(self: Schedule.Schedule<Out, In, R>): Schedule.Schedule<Out, In, R | R2> =>
  Schedule.checkEffect(self, (error: In) =>
    Effect.tap(
      withdraw(budget, Duration.decode(options.waitFor ?? 0), Duration.decode(options.poll ?? Duration.seconds(1))),
      (allowed) => allowed || options.onRefused === undefined ? Effect.void : options.onRefused(error)
    ))
