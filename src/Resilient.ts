/**
 * The resilient client: the transport wrapped in the resilience policies. This is what an
 * application calls.
 *
 * ## Order of the policies, outermost first
 *
 * 1. **Retry** (`RetryPolicy`, guarded by the shared `RetryBudget`). It is outermost, so each
 *    attempt passes every gate below again, and a call that is backing off holds nothing. The
 *    budget caps retries at a share of recent traffic, so an incident cannot become a retry storm.
 *    A retry the budget refuses waits for room, up to the policy's `maxRetryAfter` (the longest
 *    wait it honours anyway), before its error surfaces, so a burst of failures is paced at the
 *    budget's rate instead of losing the work.
 * 2. **Token bucket** (`TokenBucket`). A call waiting for rate capacity holds no concurrency
 *    permit.
 * 3. **Concurrency limiter** (`ConcurrencyLimiter`, adaptive by default). A permit is held from
 *    send until the response completes, as DeepSeek counts it. The limiter learns from each
 *    attempt's outcome and from the queue delay the transport measured.
 * 4. **Circuit breaker** (`CircuitBreaker`). It is innermost around the transport, so its
 *    verdict depends only on what the upstream did: local refusals (a full queue, an exhausted
 *    bucket) never reach it. Its half-open canaries are still bounded by the limiter.
 * 5. **Transport**: one HTTP call, keep-alive parsing, deadlines.
 *
 * When the context holds a `ResponseCache`, `create` asks it first, outside everything above: a
 * hit costs no permit, no token and no retry budget. Only deterministic requests are cached
 * (temperature 0, or `cache: "force"`); streams are never cached.
 *
 * A stream is retried only until its first chunk reaches the caller. After that, a retry would
 * show the caller the same content twice, so the error, with its partial output, is the answer.
 *
 * Every part is its own Layer: `layer` takes them all from the context, so a test or an app can
 * swap any one of them.
 *
 * ## Telemetry
 *
 * Calls, failed attempts, retries and call durations are `Metric`s (below); the limiter and the
 * breaker publish their own gauges. Each call runs in a span, `weatherproof.Resilient.create` or
 * `weatherproof.Resilient.stream` with the model as an attribute, the parent of the transport's
 * spans. `create` makes its span only when a tracer is installed (`Layer.setTracer`, or an
 * OpenTelemetry layer): Effect's built-in tracer sends spans nowhere, and making and parenting one
 * costs more than every policy of a call together.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import type { ApiError } from "./ApiError.js"
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from "./ChatSchema.js"
import * as CircuitBreakerModule from "./CircuitBreaker.js"
import { CircuitBreaker, type CircuitOpen } from "./CircuitBreaker.js"
import * as Limiter from "./ConcurrencyLimiter.js"
import { ConcurrencyLimiter, type QueueFull } from "./ConcurrencyLimiter.js"
import * as KeyPool from "./KeyPool.js"
import * as RetryBudgetModule from "./RetryBudget.js"
import { RetryBudget } from "./RetryBudget.js"
import * as RetryPolicyModule from "./RetryPolicy.js"
import { RetryPolicy } from "./RetryPolicy.js"
import { Telemetry } from "./Telemetry.js"
import * as TokenBucketModule from "./TokenBucket.js"
import { type RateLimitExceeded, TokenBucket } from "./TokenBucket.js"
import * as TransportModule from "./Transport.js"
import * as ResponseCacheModule from "./ResponseCache.js"
import { type Deadlines, Transport } from "./Transport.js"
import { withSpanWhenTraced } from "./internal/tracing.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface CallOptions extends Pick<TransportModule.CallOptions, "deadlines" | "priority"> {
  /** How a `ResponseCache` in the context treats this call. Default "auto" (deterministic requests only). */
  readonly cache?: ResponseCacheModule.CacheMode | undefined
}

/**
 * Every failure a resilient call can end in: the upstream's, and the local refusals of the
 * policies.
 *
 * @since 0.1.0
 * @category models
 */
export type ResilientError = ApiError | QueueFull | CircuitOpen | RateLimitExceeded

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly create: (
    request: ChatCompletionRequest,
    options?: CallOptions
  ) => Effect.Effect<ChatCompletion, ResilientError>
  readonly stream: (
    request: ChatCompletionRequest,
    options?: CallOptions
  ) => Stream.Stream<ChatCompletionChunk, ResilientError>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Resilient extends Context.Tag("weatherproof/Resilient")<Resilient, Service>() {}

/**
 * Calls started (not attempts).
 *
 * @since 0.1.0
 * @category metrics
 */
export const callsCounter = Metric.counter("weatherproof_calls", { incremental: true })

/**
 * Failed attempts, tagged with the error's `_tag` as `error`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const attemptFailuresCounter = Metric.counter("weatherproof_attempt_failures", { incremental: true })

/**
 * Retries scheduled.
 *
 * @since 0.1.0
 * @category metrics
 */
export const retriesCounter = Metric.counter("weatherproof_retries", { incremental: true })

/**
 * Duration of whole calls (retries included), in milliseconds.
 *
 * @since 0.1.0
 * @category metrics
 */
export const callDuration = Metric.timerWithBoundaries(
  "weatherproof_call_duration",
  [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000]
)

/**
 * The parts the client is built from.
 *
 * @since 0.1.0
 * @category models
 */
export type Parts =
  | Transport
  | ConcurrencyLimiter
  | RetryPolicy
  | RetryBudget
  | TokenBucket
  | CircuitBreaker
  | Telemetry

/**
 * Builds the client from its parts, in the order the module doc explains.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<Service, never, Parts> = Effect.gen(function*() {
  const transport = yield* Transport
  const limiter = yield* ConcurrencyLimiter
  const { maxRetryAfter, schedule } = yield* RetryPolicy
  const budget = yield* RetryBudget
  const bucket = yield* TokenBucket
  const breaker = yield* CircuitBreaker
  const telemetry = yield* Telemetry
  const cache = yield* Effect.serviceOption(ResponseCacheModule.ResponseCache)

  const onRetry = (error: RetryPolicyModule.Classified, delay: Duration.Duration) =>
    Effect.zipRight(Metric.increment(retriesCounter), telemetry.retrying(error, delay))
  /** The retry schedule as a call sees it: budget-guarded, and every retry reported. */
  const retries = <R>(self: Schedule.Schedule<RetryPolicyModule.Classified, RetryPolicyModule.Classified, R>) =>
    self.pipe(RetryBudgetModule.guard(budget, { waitFor: maxRetryAfter }), RetryPolicyModule.tapRetries(onRetry))
  // Built once: `create` needs the same schedule for every call.
  const createRetries = retries(schedule)
  const onFailure = (error: ResilientError) =>
    isLocalRefusal(error)
      ? Effect.void
      : Effect.zipRight(
        Metric.increment(Metric.tagged(attemptFailuresCounter, "error", error._tag)),
        telemetry.attemptFailed(error)
      )

  // Every attempt passes the gates in the module doc's order: the bucket, then a permit (held to
  // the end of the response), then the breaker around the transport.
  const takeRate = (request: ChatCompletionRequest) => bucket.take(TokenBucketModule.costOf(request))

  // No `Effect.scoped` on the hot path: `withPermit` releases the permit without a scope, and
  // completes it with the attempt's outcome and the queue delay the transport recorded on it.
  const attempt = (request: ChatCompletionRequest, options: CallOptions | undefined) =>
    Effect.zipRight(
      takeRate(request),
      limiter.withPermit(
        (permit) => breaker.protect(transport.create(request, transportOptions(options, permit))),
        { priority: options?.priority }
      )
    )

  // A stream holds its permit until it ends, so the permit lives in the stream's scope.
  const streamAttempt = (request: ChatCompletionRequest, options: CallOptions | undefined) =>
    Stream.unwrapScoped(Effect.zipRight(
      takeRate(request),
      Effect.map(limiter.acquire({ priority: options?.priority }), (permit) => {
        const chunks = transport.stream(request, transportOptions(options, permit)).pipe(
          Stream.onError((cause) => permit.complete(Limiter.outcomeOf(Exit.failCause(cause)))),
          Stream.onDone(() => permit.complete(Limiter.outcomeOf(Exit.void)))
        )
        return protectStream(breaker, chunks)
      })
    )).pipe(Stream.tapError(onFailure))

  // `Metric.increment` in one synchronous step, with the fiber's metric labels as it would.
  const started = Effect.withFiberRuntime<void>((fiber) => {
    callsCounter.unsafeUpdate(1, fiber.getFiberRef(FiberRef.currentMetricLabels))
    return budget.recordRequest
  })

  /** Answers from the `ResponseCache` when the context has one and the request is cacheable. */
  const cached = <E>(
    request: ChatCompletionRequest,
    options: CallOptions | undefined,
    call: Effect.Effect<ChatCompletion, E>
  ): Effect.Effect<ChatCompletion, E> =>
    Option.match(cache, {
      onNone: () => call,
      onSome: (responses) => responses.cached(request, call, { cache: options?.cache })
    })

  return Resilient.of({
    create: (request, options) =>
      withSpanWhenTraced(
        timed(cached(request, options, Effect.zipRight(started, retryAfterFailure(attempt(request, options), onFailure, createRetries)))),
        "weatherproof.Resilient.create",
        { model: request.model }
      ),
    stream: (request, options) =>
      Stream.unwrap(Effect.map(started, () => {
        let delivered = false
        return streamAttempt(request, options).pipe(
          Stream.tap(() => Effect.sync(() => (delivered = true))),
          Stream.retry(retries(Schedule.whileInput(schedule, () => !delivered)))
        )
      })).pipe(Stream.withSpan("weatherproof.Resilient.stream", { attributes: { model: request.model } }))
  })
})

/**
 * `Effect.retry` of `Effect.tapError(attempt, onFailure)`, but the schedule's driver is made only
 * once an attempt has failed: most calls succeed at once, and a driver per call (refs, a clock
 * read, a context update per attempt) costs more than all the policies together. `onFailure` runs
 * in the same handler, so a call that succeeds pays for no error tap either.
 */
const retryAfterFailure = <A, E, R, R2>(
  attempt: Effect.Effect<A, E, R>,
  onFailure: (error: E) => Effect.Effect<void>,
  schedule: Schedule.Schedule<unknown, E, R2>
): Effect.Effect<A, E, R | R2> =>
  Effect.catchAll(attempt, (first) =>
    Effect.zipRight(
      onFailure(first),
      Effect.flatMap(Schedule.driver(schedule), (driver) => {
        const retryFrom = (error: E): Effect.Effect<A, E, R | R2> =>
          Effect.matchEffect(driver.next(error), {
            onFailure: () => Effect.fail(error),
            onSuccess: () => Effect.catchAll(attempt, (next) => Effect.zipRight(onFailure(next), retryFrom(next)))
          })
        return retryFrom(first)
      })
    ))

/**
 * `Metric.trackDuration(callDuration)` in one synchronous step each side (same clock, same
 * metric labels): on the hot path, its effect chain costs more than a policy.
 */
const timed = <A, E, R>(call: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.withFiberRuntime((fiber) => {
    const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
    const start = clock.unsafeCurrentTimeNanos()
    return Effect.tap(call, () => {
      const elapsed = Duration.nanos(clock.unsafeCurrentTimeNanos() - start)
      callDuration.unsafeUpdate(elapsed, fiber.getFiberRef(FiberRef.currentMetricLabels))
    })
  })

/** Refusals by our own policies: not the upstream's doing, so not counted as its failures. */
const isLocalRefusal = (error: ResilientError): error is QueueFull | RateLimitExceeded | CircuitOpen =>
  error._tag === "QueueFull" || error._tag === "RateLimitExceeded" || error._tag === "CircuitOpen"

/**
 * A stream under the breaker: admitted before it opens, judged by how it ends, so a stream that
 * runs for minutes counts once. No chunk flows before admission (a half-open breaker may hold it
 * back until its canaries have answered).
 */
const protectStream = <A, E>(
  breaker: CircuitBreaker["Type"],
  chunks: Stream.Stream<A, E>
): Stream.Stream<A, E | CircuitOpen> =>
  Stream.unwrapScoped(Effect.gen(function*() {
    const admitted = yield* Deferred.make<void>()
    const ended = yield* Deferred.make<void, E>()
    const judged = yield* breaker.protect(Effect.zipRight(Deferred.succeed(admitted, undefined), Deferred.await(ended)))
      .pipe(Effect.forkScoped)
    // Admission wins the race, or the breaker's rejection (CircuitOpen) fails the stream.
    yield* Effect.raceFirst(Deferred.await(admitted), Fiber.join(judged))
    return chunks.pipe(
      Stream.onError((cause) => Deferred.failCause(ended, cause)),
      Stream.onDone(() => Deferred.succeed(ended, undefined))
    )
  }))

const transportOptions = (options: CallOptions | undefined, permit: Limiter.Permit): TransportModule.CallOptions => ({
  deadlines: options?.deadlines,
  priority: options?.priority,
  onAccepted: permit.accepted,
  onFirstContent: permit.recordQueueDelay
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Resilient, never, Parts> = Layer.effect(Resilient, make)

/**
 * @since 0.1.0
 * @category models
 */
export interface DefaultOptions {
  /** Default `https://api.deepseek.com`. */
  readonly baseUrl?: string | undefined
  readonly keys: ReadonlyArray<Redacted.Redacted<string>>
  /** A fixed in-flight bound, or the adaptive limiter's options. Default: adaptive, starting at 8. */
  readonly concurrency?: number | Limiter.AdaptiveOptions | undefined
  readonly retry?: RetryPolicyModule.Options | undefined
  readonly retryBudget?: RetryBudgetModule.Options | undefined
  /** A client-side rate limit. Default: none (the limiter bounds concurrency). */
  readonly rate?: TokenBucketModule.Options | undefined
  readonly breaker?: CircuitBreakerModule.Options | undefined
  readonly deadlines?: Partial<Deadlines> | undefined
}

/**
 * The policies with DeepSeek-sensible defaults, for a given limiter, around whatever
 * `Transport` the context has.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerPolicies = (
  options: Omit<DefaultOptions, "keys" | "baseUrl" | "deadlines"> = {}
): Layer.Layer<Resilient, never, Transport | Telemetry> =>
  layer.pipe(
    Layer.provide([
      typeof options.concurrency === "number"
        ? Limiter.layerFixed(options.concurrency)
        : Limiter.layerAdaptive(options.concurrency),
      RetryPolicyModule.layer(options.retry),
      RetryBudgetModule.layer(options.retryBudget),
      options.rate === undefined ? TokenBucketModule.layerUnlimited : TokenBucketModule.layer(options.rate),
      CircuitBreakerModule.layer(breakerOptions(options.concurrency, options.breaker))
    ])
  )

/**
 * The breaker's options for a given limiter: behind the adaptive limiter, which owns the 429
 * signal, the breaker opens for outages only (`CircuitBreaker.isOutage`). Explicit options win.
 *
 * @since 0.1.0
 */
export const breakerOptions = (
  concurrency: number | Limiter.AdaptiveOptions | undefined,
  options: CircuitBreakerModule.Options | undefined
): CircuitBreakerModule.Options =>
  typeof concurrency === "number" ? { ...options } : { isFailure: CircuitBreakerModule.isOutage, ...options }

/**
 * The whole pipeline over Node's HTTP client. Telemetry is left to the caller
 * (`Telemetry.layerNoop` when nothing listens).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDefault = (options: DefaultOptions): Layer.Layer<Resilient, never, Telemetry> =>
  layerPolicies(options).pipe(
    Layer.provide(
      TransportModule.layer({ baseUrl: options.baseUrl, deadlines: options.deadlines }).pipe(
        Layer.provide([TransportModule.nodeHttpClient(), KeyPool.layer(options.keys)])
      )
    )
  )

/**
 * The settings `layerConfig` reads: `DEEPSEEK_API_KEY` (one key or several separated by commas)
 * and `DEEPSEEK_BASE_URL` (default `https://api.deepseek.com`).
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<DefaultOptions> = Config.all({
  keys: KeyPool.keysConfig,
  baseUrl: Config.string("DEEPSEEK_BASE_URL").pipe(Config.withDefault(TransportModule.defaultBaseUrl))
})

/**
 * `layerDefault` configured from the environment (see `config`).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig: Layer.Layer<Resilient, ConfigError.ConfigError, Telemetry> = Layer.unwrapEffect(
  Effect.map(config, layerDefault)
)
