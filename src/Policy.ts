/**
 * A resilience policy as a value you wrap around any effect, stream or `HttpClient`: retry with a
 * retry budget, a token bucket, a concurrency limit and a circuit breaker, composed in one
 * order and reading errors through one classifier.
 *
 * ## Order, outermost first
 *
 * 1. **Retry** (`RetryPolicy`, guarded by a shared `RetryBudget`). Outermost, so each attempt
 *    passes every gate below again, and a call that is backing off holds nothing. The budget caps
 *    retries at a share of recent traffic, so an incident cannot become a retry storm; a retry it
 *    refuses waits for room, up to the retry policy's `maxRetryAfter`, before its error surfaces.
 *    It does not charge the retry of a refusal of the gates below (an empty bucket, an open
 *    circuit): that attempt reached no upstream, and its gate paces the retry.
 * 2. **Token bucket** (`TokenBucket`). A call waiting for rate capacity holds no permit.
 * 3. **Concurrency limiter** (`ConcurrencyLimiter`, adaptive by default). The permit is held
 *    until the call ends: the whole stream, or the whole response body.
 * 4. **Circuit breaker** (`CircuitBreaker`). Innermost, so its verdict depends only on what the
 *    upstream did: local refusals (a full queue, an empty bucket) never reach it, and its
 *    half-open canaries are still bounded by the limiter.
 *
 * ## One classification
 *
 * Every part reads errors through the same `ApiError.Classifier` (default `ApiError.classify`,
 * which knows this package's errors and `@effect/platform`'s `HttpClientError`, and reads any
 * other error as an outage): load shed is retried and lowers the adaptive limit, outages are
 * retried and trip the breaker, account and caller errors are final, refusals of our own gates
 * are retried only when they say so. Give `classify` to teach it your own errors
 * (`ApiError.classifyWith`).
 *
 * ## Streams
 *
 * `applyStream` holds the permit and the breaker's admission for the whole stream, judges the
 * stream by how it ends, and retries only until its first element reached the caller: after
 * that a retry would show the same output twice, so the error is the answer.
 *
 * ## `HttpClient`
 *
 * `wrapHttpClient` applies the policy to every request of an `@effect/platform` `HttpClient`
 * (built on `HttpClient.transform`): a status other than 2xx fails with `ResponseError` (as
 * `HttpClient.filterStatusOk` does) so the classifier can read it, and the permit and the
 * breaker's admission are held until the response body has been read (or the caller's `Scope`,
 * when there is one, closes: read or discard the body of every response). Refusals of the gates
 * surface as `RequestError`s with `reason: "Transport"` whose `cause` is the refusal, so the
 * client keeps its error type (`ApiError.classify` reads them back as refusals).
 *
 * Calls, failed attempts, retries and call durations are `Metric`s (below). A `Telemetry` in the
 * context is told each failed attempt and retry; without one nothing is reported.
 *
 * @since 0.1.0
 */

import type * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import * as ApiError from "./ApiError.js"
import * as CircuitBreakerModule from "./CircuitBreaker.js"
import type { CircuitBreaker, CircuitOpen } from "./CircuitBreaker.js"
import * as Limiter from "./ConcurrencyLimiter.js"
import type { ConcurrencyLimiter, Permit, Priority, QueueFull } from "./ConcurrencyLimiter.js"
import * as internal from "./internal/policy.js"
import * as RetryBudgetModule from "./RetryBudget.js"
import type { RetryBudget } from "./RetryBudget.js"
import * as RetryPolicyModule from "./RetryPolicy.js"
import type { RetryPolicy } from "./RetryPolicy.js"
import * as TelemetryModule from "./Telemetry.js"
import * as TokenBucketModule from "./TokenBucket.js"
import type { RateLimitExceeded, TokenBucket } from "./TokenBucket.js"

/**
 * The refusals of the policy's own gates: a full queue, an open circuit, an empty bucket.
 *
 * @since 0.1.0
 * @category models
 */
export type Refusal = QueueFull | CircuitOpen | RateLimitExceeded

/**
 * @since 0.1.0
 * @category models
 */
export interface ApplyOptions {
  /** Interactive calls get permits before batch calls. Default `"interactive"`. */
  readonly priority?: Priority | undefined
  /** What each attempt draws from the token bucket. Default one request. */
  readonly cost?: TokenBucketModule.Cost | undefined
  /**
   * While an attempt waits for a permit, completing this gives its place up (an `abandoned`
   * `QueueFull`); so it does while it waits for the token bucket (a `gaveUp` `RateLimitExceeded`,
   * its cost given back when it was the last in line) and for a half-open breaker's verdict.
   */
  readonly abandonWhen?: Effect.Effect<void> | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * Runs `self` under the policy. Give a function of the permit to report what only the call
   * knows: `permit.accepted` when the upstream took the request, `permit.recordQueueDelay`.
   */
  readonly apply: <A, E, R>(
    self: Effect.Effect<A, E, R> | ((permit: Permit) => Effect.Effect<A, E, R>),
    options?: ApplyOptions
  ) => Effect.Effect<A, E | Refusal, R>
  /** Runs `self` under the policy, holding its permit and breaker admission until it ends. */
  readonly applyStream: <A, E, R>(
    self: Stream.Stream<A, E, R> | ((permit: Permit) => Stream.Stream<A, E, R>),
    options?: ApplyOptions
  ) => Stream.Stream<A, E | Refusal, R>
  /** The policy around every request of an `HttpClient`; see the module doc. */
  readonly wrapHttpClient: (
    options?: ApplyOptions
  ) => <E, R>(client: HttpClient.HttpClient.With<E, R>) => HttpClient.HttpClient.With<E | HttpClientError.HttpClientError, R>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Policy extends Context.Tag("weatherproof/Policy")<Policy, Service>() {}

/**
 * Built services to compose; a part left out is not applied.
 *
 * @since 0.1.0
 * @category models
 */
export interface Parts {
  /** What each error means. Give each part the same one. Default `ApiError.classify`. */
  readonly classify?: ApiError.Classifier | undefined
  readonly retry?: RetryPolicyModule.Service | undefined
  readonly budget?: RetryBudgetModule.Service | undefined
  readonly bucket?: TokenBucketModule.Service | undefined
  readonly limiter?: Limiter.Service | undefined
  readonly breaker?: CircuitBreakerModule.Service | undefined
  /** Told failed attempts and retries. Default: the `Telemetry` in the context, if any. */
  readonly telemetry?: TelemetryModule.Service | undefined
  /**
   * How long a retry the budget refuses waits for room before its error surfaces. Default the
   * retry policy's `maxRetryAfter` (60 s). Batch work, which would rather wait than fail, sets it
   * to as long as a call may take.
   */
  readonly budgetWait?: Duration.DurationInput | undefined
  /**
   * Whether a concurrency limiter that backs off on a cap's 429s gates every attempt: `limiter`,
   * or those of what the policy wraps (an `AccountPool`'s, one per account and model). A retry of
   * such a 429 is then not charged to the retry budget: it waits for a permit of a limit already
   * lowered, so retries cannot outrun what the upstream admits, where the budget would starve
   * them (a cap that drops under a full limit turns most calls in flight into 429s at once, and
   * they would wait for a refill that only new calls bring). The 429s no limit paces (no
   * `Retry-After`, met by a request alone on its limiter or an `AccountPool`'s lane: the upstream
   * refuses even one, as under an account-wide rate limit) have their retries charged again.
   * Default `false`: a `limiter` given here may be one that does not back off (`makeFixed`), whose
   * retries the budget must pace.
   */
  readonly capRetriesPaced?: boolean | undefined
}

/**
 * Options of `make` and `layer`: each part's options, or `false` to leave it out. Every part is
 * given `classify`, so they agree by construction.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** What each error means. Default `ApiError.classify`. */
  readonly classify?: ApiError.Classifier | undefined
  /** Default `RetryPolicy.defaults`. */
  readonly retry?: Omit<RetryPolicyModule.Options, "classify"> | false | undefined
  /** Default `RetryBudget.defaults`. */
  readonly retryBudget?: RetryBudgetModule.Options | false | undefined
  /** How long a retry the budget refuses waits for room (see `Parts.budgetWait`). Default `retry.maxRetryAfter` (60 s). */
  readonly budgetWait?: Duration.DurationInput | undefined
  /** See `Parts.capRetriesPaced`. Default: whether `concurrency` is on (its limiter backs off on 429s). */
  readonly capRetriesPaced?: boolean | undefined
  /** A client-side rate limit. Default none. */
  readonly rate?: TokenBucketModule.Options | false | undefined
  /**
   * The adaptive limiter's options, or a number N: a ceiling (`ConcurrencyLimiter.ceiling`) that
   * starts at N and backs off on 429s. Default adaptive.
   */
  readonly concurrency?: number | Omit<Limiter.AdaptiveOptions, "classify"> | false | undefined
  /**
   * Default `CircuitBreaker.defaults`; behind a concurrency limiter, which backs off on load shed,
   * the breaker counts only the server's overload (`countLoadShed: "overload"`: 503s and work cut
   * for lack of resources, not the 429s of a cap), as an `AccountPool`'s do, unless set here.
   */
  readonly breaker?: Omit<CircuitBreakerModule.Options, "classify"> | false | undefined
}

/**
 * Composes built parts.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { CircuitBreaker, ConcurrencyLimiter, Policy, RetryPolicy } from "weatherproof"
 *
 * declare const call: Effect.Effect<string, Error>
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   // No retry budget and no rate limit: the parts left out are not applied.
 *   const policy = yield* Policy.fromParts({
 *     retry: RetryPolicy.make({ maxRetries: 2 }),
 *     limiter: yield* ConcurrencyLimiter.makeFixed(8),
 *     breaker: yield* CircuitBreaker.make()
 *   })
 *   return yield* policy.apply(call)
 * }))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromParts = (parts: Parts): Effect.Effect<Service> =>
  Effect.map(Effect.serviceOption(TelemetryModule.Telemetry), (telemetry) =>
    internal.make({
      classify: parts.classify ?? ApiError.classify,
      retry: parts.retry,
      budget: parts.budget,
      bucket: parts.bucket,
      limiter: parts.limiter,
      breaker: parts.breaker,
      telemetry: parts.telemetry ?? Option.getOrUndefined(telemetry),
      budgetWait: parts.budgetWait === undefined ? undefined : Duration.decode(parts.budgetWait),
      capRetriesPaced: parts.capRetriesPaced ?? false
    }))

const unlessFalse = <O, A, R>(
  options: O | false | undefined,
  build: (options: O | undefined) => Effect.Effect<A, never, R>
): Effect.Effect<A | undefined, never, R> => options === false ? Effect.succeed(undefined) : build(options)

/**
 * Builds every part from its options with one classifier, and composes them. The breaker's
 * timer runs in the scope.
 *
 * @example
 * ```ts
 * import { Data, Effect } from "effect"
 * import { ApiError, Policy } from "weatherproof"
 *
 * class DbBusy extends Data.TaggedError("DbBusy")<{}> {}
 * declare const query: Effect.Effect<number, DbBusy>
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const policy = yield* Policy.make({
 *     classify: ApiError.classifyWith((error) => error instanceof DbBusy ? ApiError.loadShed() : undefined),
 *     retry: { maxRetries: 3 },
 *     concurrency: 16
 *   })
 *   return yield* policy.apply(query)
 * }))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    const classify = options.classify ?? ApiError.classify
    const { concurrency } = options
    return yield* fromParts({
      classify,
      retry: options.retry === false ? undefined : RetryPolicyModule.make({ ...options.retry, classify }),
      budget: yield* unlessFalse(options.retryBudget, RetryBudgetModule.make),
      bucket: yield* unlessFalse(options.rate, (rate) => rate === undefined ? Effect.succeed(undefined) : TokenBucketModule.make(rate)),
      limiter: yield* unlessFalse(concurrency, (limit) =>
        Limiter.makeAdaptive({ ...(typeof limit === "number" ? Limiter.ceiling(limit) : limit), classify })),
      breaker: yield* unlessFalse(options.breaker, (breaker) =>
        CircuitBreakerModule.make({
          ...breaker,
          countLoadShed: breaker?.countLoadShed ?? (concurrency === false || "overload"),
          classify
        })),
      budgetWait: options.budgetWait,
      capRetriesPaced: options.capRetriesPaced ?? concurrency !== false
    })
  })

/**
 * `make` as a Layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<Policy> => Layer.scoped(Policy, make(options))

/**
 * What `layerFromContextWith` takes besides the parts: the classifier the policy reads errors
 * with, how long a retry the budget refuses waits for room, and whether the limiter in the
 * context (an adaptive one, which backs off on 429s) paces a cap's retries. Defaults as
 * `fromParts`'s.
 *
 * @since 0.1.0
 * @category models
 */
export type FromContextOptions = Pick<Parts, "classify" | "budgetWait" | "capRetriesPaced">

/**
 * Composes the parts in the context, each its own Layer (so a test or an app can swap any of
 * them): `RetryPolicy`, `RetryBudget`, `TokenBucket`, `ConcurrencyLimiter`, `CircuitBreaker`;
 * with `options` for what is not a part.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { CircuitBreaker, ConcurrencyLimiter, Policy, RetryBudget, RetryPolicy, TokenBucket } from "weatherproof"
 *
 * // The adaptive limiter backs off on a cap's 429s: their retries need not wait for budget, and
 * // the breaker counts only overload among load shed (as `make` sets it behind a limiter): a
 * // cap's 429s tripping it would stop every call for its open period.
 * const policy = Policy.layerFromContextWith({ capRetriesPaced: true }).pipe(
 *   Layer.provide([
 *     RetryPolicy.layer(),
 *     RetryBudget.layer(),
 *     TokenBucket.layerUnlimited,
 *     ConcurrencyLimiter.layerAdaptive(),
 *     CircuitBreaker.layer({ countLoadShed: "overload" })
 *   ])
 * )
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerFromContextWith = (options: FromContextOptions): Layer.Layer<
  Policy,
  never,
  RetryPolicy | RetryBudget | TokenBucket | ConcurrencyLimiter | CircuitBreaker
> =>
  Layer.effect(
    Policy,
    Effect.gen(function*() {
      return yield* fromParts({
        ...options,
        retry: yield* RetryPolicyModule.RetryPolicy,
        budget: yield* RetryBudgetModule.RetryBudget,
        bucket: yield* TokenBucketModule.TokenBucket,
        limiter: yield* Limiter.ConcurrencyLimiter,
        breaker: yield* CircuitBreakerModule.CircuitBreaker
      })
    })
  )

/**
 * `layerFromContextWith` with the defaults.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerFromContext: Layer.Layer<
  Policy,
  never,
  RetryPolicy | RetryBudget | TokenBucket | ConcurrencyLimiter | CircuitBreaker
> = layerFromContextWith({})

/**
 * Calls made through a policy (not attempts).
 *
 * @since 0.1.0
 * @category metrics
 */
export const callsCounter: Metric.Metric.Counter<number> = internal.callsCounter

/**
 * Failed attempts (our own gates' refusals excepted), tagged with the error's `_tag` as `error`:
 * those a policy saw, and those an `AccountPool` under it failed over from.
 *
 * @since 0.1.0
 * @category metrics
 */
export const attemptFailuresCounter: Metric.Metric.Counter<number> = internal.attemptFailuresCounter

/**
 * Retries scheduled.
 *
 * @since 0.1.0
 * @category metrics
 */
export const retriesCounter: Metric.Metric.Counter<number> = internal.retriesCounter

/**
 * Duration of whole calls (retries included), in seconds.
 *
 * @since 0.1.0
 * @category metrics
 */
export const callDuration: Metric.Metric.Histogram<number> = internal.callDuration
