/**
 * When and how long to wait before retrying a failed call, as Effect `Schedule`s that users
 * compose with their own.
 *
 * The default: exponential backoff with full jitter (`U(0,1) · min(cap, base · 2^n)`, AWS's
 * formula, which spreads a burst of failures instead of retrying them in lock-step), a maximum
 * number of retries, only for errors whose verdict is retryable (`ApiError.classify`, or the
 * classifier you give), and never sooner than a server's `Retry-After`. `jitter: "decorrelated"`
 * takes Polly's decorrelated jitter instead: as spread out, with a first delay around `base` (its
 * median is 0.9 × `base`) and a total wait that grows smoothly, retry by retry. A `Retry-After`
 * longer than `maxRetryAfter` ends the retries instead of being cut short: retrying sooner than
 * asked only draws another 429.
 *
 * @since 0.1.0
 */

import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Random from "effect/Random"
import * as Schedule from "effect/Schedule"
import * as ScheduleDecision from "effect/ScheduleDecision"
import * as ScheduleInterval from "effect/ScheduleInterval"
import * as ApiError from "./ApiError.js"
import * as DurationTexts from "./internal/durationText.js"
import { assertValid, oneOf, positiveDuration } from "./internal/options.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** First backoff step. Default 500 ms. */
  readonly base?: Duration.DurationInput | undefined
  /** Largest backoff step before jitter. Default 30 s. */
  readonly cap?: Duration.DurationInput | undefined
  /** Retries after the first attempt. Default 5. */
  readonly maxRetries?: number | undefined
  /** A server-requested wait longer than this ends the retries. Default 60 s. */
  readonly maxRetryAfter?: Duration.DurationInput | undefined
  /** `exponentialFullJitter` or `decorrelatedJitter`. Default "full". */
  readonly jitter?: "full" | "decorrelated" | undefined
  /**
   * A schedule of your own whose delays replace the jittered backoff (`base`, `cap` and `jitter`
   * then go unused); its input is the failed attempt's error. The policy's rules still hold: only
   * retryable verdicts, at most `maxRetries`, never sooner than `Retry-After`. (A schedule given
   * as a `Service` by hand is followed as it is, without them.)
   */
  readonly backoff?: Schedule.Schedule<unknown, unknown> | undefined
  /** What each failure means: only retryable verdicts are retried. Default `ApiError.classify`. */
  readonly classify?: ApiError.Classifier | undefined
}

/**
 * @since 0.1.0
 */
export const defaults = {
  base: Duration.millis(500),
  cap: Duration.seconds(30),
  maxRetries: 5,
  maxRetryAfter: Duration.seconds(60)
} as const

/**
 * Exponential backoff from `base`, capped at `cap`, with full jitter drawn from Effect's
 * `Random` (so tests can seed it). Recurs forever: bound it with `Schedule.recurs`.
 *
 * @since 0.1.0
 * @category schedules
 */
export const exponentialFullJitter = (
  base: Duration.DurationInput,
  cap: Duration.DurationInput
): Schedule.Schedule<Duration.Duration> =>
  Schedule.exponential(base).pipe(
    Schedule.modifyDelayEffect((_, delay) =>
      Effect.map(Random.next, (u) => Duration.times(Duration.min(delay, cap), u))
    )
  )

/**
 * Polly's decorrelated jitter (V2): at retry `n`, with `t = n + U(0,1)` and
 * `f(t) = 2^t · tanh(√(4t))`, the delay is `(f(t) − f(t_prev)) / 1.4 · base`, capped at `cap`.
 * The delays telescope: the total wait after `n` retries is `f(t) / 1.4 · base` for its last `t`,
 * between `f(n − 1)` and `f(n)` of that, so it grows exponentially without lock-step; the first
 * delay is around `base` (median 0.9 × `base`, as Polly's `medianFirstRetryDelay`). The draws
 * come from Effect's `Random`. Recurs forever: bound it with `Schedule.recurs`.
 *
 * @since 0.1.0
 * @category schedules
 */
export const decorrelatedJitter = (
  base: Duration.DurationInput,
  cap: Duration.DurationInput
): Schedule.Schedule<Duration.Duration> => {
  const baseMillis = Duration.toMillis(base)
  const capMillis = Duration.toMillis(cap)
  const curve = (t: number) => Math.pow(2, t) * Math.tanh(Math.sqrt(4 * t))
  return Schedule.makeWithState({ retry: 0, previous: 0 }, (now, _: unknown, state) =>
    Effect.map(Random.next, (u) => {
      const next = curve(state.retry + u)
      const millis = ((next - state.previous) / 1.4) * baseMillis
      // Far out, both curve values overflow to Infinity: the cap is what is left.
      const delay = Duration.millis(Number.isFinite(millis) ? Math.min(millis, capMillis) : capMillis)
      return [{ retry: state.retry + 1, previous: next }, delay, ScheduleDecision.continueWith(ScheduleInterval.after(now))] as const
    })).pipe(Schedule.addDelay((delay) => delay))
}

/**
 * Keeps a schedule's delay at least as long as the wait the error's verdict asks for
 * (`Retry-After`), and stops when that is longer than `max`. The schedule's input must be the
 * error.
 *
 * @since 0.1.0
 * @category combinators
 */
export const honoringRetryAfter = (max: Duration.DurationInput, classify: ApiError.Classifier = ApiError.classify) =>
<Out, E, R>(self: Schedule.Schedule<Out, E, R>): Schedule.Schedule<Out, E, R> => {
  const notRetried = notRetriedWarning(Duration.decode(max))
  return Schedule.recurWhile(([wait]: readonly [Duration.Duration, E]) => Duration.lessThanOrEqualTo(wait, max)).pipe(
    // The error is the upstream's own (a 429's "Rate Limit Reached"): this says why no retry follows.
    Schedule.tapInput(([wait, error]: readonly [Duration.Duration, E]) =>
      Duration.lessThanOrEqualTo(wait, max) || !ApiError.isRetryable(classify(error)) ? Effect.void : notRetried(wait)
    ),
    Schedule.intersect(Schedule.mapInput(self, ([, error]: readonly [Duration.Duration, E]) => error)),
    Schedule.modifyDelay(([[wait]], delay) => Duration.max(delay, wait)),
    Schedule.map(([, out]) => out),
    Schedule.mapInput((error: E) => [ApiError.retryAfterOf(classify(error)), error] as const)
  )
}

/** How often a schedule says it gave up calls for a wait longer than its maximum. */
const notRetriedWarningInterval = 60_000

/**
 * Says that a call is not retried for a `Retry-After` longer than `max`: at most once a minute for
 * a schedule (a 429 storm that asks to wait gives up thousands of calls a minute), with how many
 * calls it gave up since it last said so. Timed on the `Clock`.
 */
const notRetriedWarning = (max: Duration.Duration) => {
  let toldAt: number | undefined
  let since = 0
  return (wait: Duration.Duration): Effect.Effect<void> =>
    Effect.flatMap(Clock.currentTimeMillis, (now) => {
      if (toldAt !== undefined && now - toldAt < notRetriedWarningInterval) {
        since++
        return Effect.void
      }
      const more = since === 0 ? "" : ` (${since} more ${since === 1 ? "call" : "calls"} given up since it last said so)`
      toldAt = now
      since = 0
      return Effect.logWarning(
        `RetryPolicy: not retried: the upstream asked to wait ${DurationTexts.format(wait)} (Retry-After), longer than maxRetryAfter (${
          DurationTexts.format(max)
        })${more}`
      )
    })
}

/**
 * The full policy as a schedule whose input and output are the error being retried: only errors
 * whose verdict is retryable (`ApiError.isRetryable`), jittered backoff, at most `maxRetries`,
 * honouring `Retry-After`. It accepts any error type: `classify` says what each one means.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { RetryPolicy } from "weatherproof"
 *
 * declare const call: Effect.Effect<string, Error>
 * const retried = Effect.retry(call, RetryPolicy.schedule({ maxRetries: 3 }))
 * ```
 *
 * @since 0.1.0
 * @category schedules
 */
export const schedule = <E = unknown>(options: Options = {}): Schedule.Schedule<E, E> => {
  const classify = options.classify ?? ApiError.classify
  const maxRetries = options.maxRetries ?? defaults.maxRetries
  assertValid("RetryPolicy", [
    Number.isInteger(maxRetries) && maxRetries >= 0 ? undefined : `maxRetries must be an integer ≥ 0, got ${maxRetries}`,
    positiveDuration("base", options.base ?? defaults.base),
    positiveDuration("cap", options.cap ?? defaults.cap),
    oneOf("jitter", options.jitter ?? "full", ["full", "decorrelated"])
  ])
  const base = Duration.decode(options.base ?? defaults.base)
  const cap = Duration.decode(options.cap ?? defaults.cap)
  const backoff = options.backoff ?? (options.jitter === "decorrelated" ? decorrelatedJitter : exponentialFullJitter)(base, cap)
  return backoff.pipe(
    Schedule.intersect(Schedule.recurs(maxRetries)),
    Schedule.intersect(Schedule.identity<E>()),
    Schedule.whileInput((error: E) => ApiError.isRetryable(classify(error))),
    honoringRetryAfter(options.maxRetryAfter ?? defaults.maxRetryAfter, classify),
    Schedule.map(([, error]) => error)
  )
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * The schedule retries follow, as it is; its input and output are the failed attempt's error.
   * `make` builds one that keeps the policy's rules (only retryable verdicts, `Retry-After`), a
   * backoff of your own too (`Options.backoff`); one written here by hand keeps only its own. A policy
   * retries any error the call may fail with (its own refusals, a transport's) so the schedule
   * takes `unknown`: a schedule of your own that reads one error type narrows inside, as
   * `schedule({ classify })` does (`RetryPolicy.schedule<DbBusy>(…)` is a
   * `Schedule<DbBusy, DbBusy>`, which takes no other error, and so is no `Service`'s).
   */
  readonly schedule: Schedule.Schedule<unknown, unknown>
  /**
   * The longest wait the policy honours before a retry (`Options.maxRetryAfter`): a retry that
   * `Resilient`'s retry budget refuses waits as long for room.
   */
  readonly maxRetryAfter: Duration.Duration
}

/**
 * @since 0.1.0
 * @category tags
 */
export class RetryPolicy extends Context.Tag("weatherproof/RetryPolicy")<RetryPolicy, Service>() {}

/**
 * The policy as a service.
 *
 * @example
 * ```ts
 * import { RetryPolicy } from "weatherproof"
 *
 * const retry = RetryPolicy.make({ base: "1 second", maxRetries: 4, jitter: "decorrelated" })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Service => ({
  schedule: schedule(options),
  maxRetryAfter: Duration.decode(options.maxRetryAfter ?? defaults.maxRetryAfter)
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<RetryPolicy> => Layer.succeed(RetryPolicy, make(options))

/**
 * Never retries: for tests and for callers that retry themselves.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerNone: Layer.Layer<RetryPolicy> = Layer.succeed(RetryPolicy, {
  schedule: Schedule.stop,
  maxRetryAfter: Duration.zero
})

/**
 * Reports every retry the schedule decides on, with the delay it will wait, to `onRetry`.
 *
 * @since 0.1.0
 * @category combinators
 */
export const tapRetries = <E, R2>(onRetry: (error: E, delay: Duration.Duration) => Effect.Effect<void, never, R2>) =>
<R>(self: Schedule.Schedule<E, E, R>): Schedule.Schedule<E, E, R | R2> =>
  Schedule.modifyDelayEffect(self, (error, delay) => Effect.as(onRetry(error, delay), delay))
