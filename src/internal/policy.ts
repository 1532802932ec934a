/**
 * The composed policy: retry (with its budget) → token bucket → concurrency permit → circuit
 * breaker, around an effect, a stream or an HTTP response whose body is read later.
 *
 * @internal
 */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientError from "@effect/platform/HttpClientError"
import type * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as FiberRef from "effect/FiberRef"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as ApiError from "../ApiError.js"
import type { Classifier } from "../ApiError.js"
import type * as CircuitBreaker from "../CircuitBreaker.js"
import type * as ConcurrencyLimiter from "../ConcurrencyLimiter.js"
import type { ApplyOptions, Refusal, Service } from "../Policy.js"
import * as RetryBudget from "../RetryBudget.js"
import type * as RetryPolicy from "../RetryPolicy.js"
import type * as Telemetry from "../Telemetry.js"
import type * as TokenBucket from "../TokenBucket.js"
import * as ScopeFinalizer from "./scopeFinalizer.js"
import * as StreamPull from "./streamPull.js"
import * as AttemptRecords from "./attemptRecords.js"
import * as ToldAttempts from "./toldAttempts.js"
import * as Unpaced from "./unpaced.js"

/** The parts of a policy, each optional, and what reads their errors. */
export interface Parts {
  readonly classify: Classifier
  readonly retry: RetryPolicy.Service | undefined
  readonly budget: RetryBudget.Service | undefined
  readonly bucket: TokenBucket.Service | undefined
  readonly limiter: ConcurrencyLimiter.Service | undefined
  readonly breaker: CircuitBreaker.Service | undefined
  readonly telemetry: Telemetry.Service | undefined
  /** How long a retry the budget refuses waits for room; by default the retry policy's `maxRetryAfter`. */
  readonly budgetWait: Duration.Duration | undefined
  /** Whether a limiter that backs off on a cap's 429s gates every attempt (`Policy.Parts.capRetriesPaced`). */
  readonly capRetriesPaced: boolean
}

// -----------------------------------------------------------------------------
// Metrics
// -----------------------------------------------------------------------------

export const callsCounter = Metric.counter("weatherproof_calls", {
  description: "Calls made through a policy (not attempts)",
  incremental: true
})

export const attemptFailuresCounter = Metric.counter("weatherproof_attempt_failures", {
  description: "Attempts that failed, tagged with the error's _tag as `error`",
  incremental: true
})

export const retriesCounter = Metric.counter("weatherproof_retries", {
  description: "Retries a policy scheduled",
  incremental: true
})

/** Seconds, the bucket bounds a call to an LLM API spans (50 ms to 10 minutes). */
export const secondsBoundaries = MetricBoundaries.fromIterable([0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600])

export const callDuration = Metric.histogram(
  "weatherproof_call_duration_seconds",
  secondsBoundaries,
  "Duration of whole calls through a policy (retries included), in seconds"
)

// -----------------------------------------------------------------------------
// Pieces
// -----------------------------------------------------------------------------

/** A permit that reports to nobody: what a call sees when the policy has no limiter. */
const freePermit: ConcurrencyLimiter.Permit = {
  complete: () => Effect.void,
  accepted: Effect.void,
  recordQueueDelay: () => Effect.void,
  settle: () => Effect.void
}

const noCost: TokenBucket.Cost = {}

/**
 * Read right after the schedule decided on a retry: what that retry gives back to the retry
 * budget once its attempt succeeds, or `undefined` when the budget did not charge it.
 */
type OwedRefund = Effect.Effect<Effect.Effect<void> | undefined>

/**
 * `Effect.retry(attempt, schedule)` with `onFailure` told each failure, but the schedule's
 * driver is made only once an attempt has failed: most calls succeed at once, and a driver per
 * call (refs, a clock read, a context update per attempt) costs more than all the policies
 * together. `onFailure` runs in the same handler, so a call that succeeds pays for no error tap.
 * `attemptOf(true)` is a retry's attempt: it keeps its place ahead of the calls not yet sent.
 */
const retryAfterFailure = <A, E, R, R2>(
  attemptOf: (returning: boolean) => Effect.Effect<A, E, R>,
  onFailure: (error: E) => Effect.Effect<void>,
  schedule: Schedule.Schedule<unknown, E, R2> | undefined,
  owedRefund: OwedRefund
): Effect.Effect<A, E, R | R2> =>
  Effect.catchAll(attemptOf(false), (first) =>
    schedule === undefined ? Effect.zipRight(onFailure(first), Effect.fail(first)) : Effect.zipRight(
      onFailure(first),
      Effect.flatMap(Schedule.driver(schedule), (driver) => {
        const again = attemptOf(true)
        const retried = Effect.flatMap(owedRefund, (refund) => refund === undefined ? again : Effect.tap(again, () => refund))
        const retryFrom = (error: E): Effect.Effect<A, E, R | R2> =>
          Effect.matchEffect(driver.next(error), {
            onFailure: () => Effect.fail(error),
            onSuccess: () => {
              AttemptRecords.discard(error)
              return Effect.catchAll(retried, (next) => Effect.zipRight(onFailure(next), retryFrom(next)))
            }
          })
        return retryFrom(first)
      })
    ))

/**
 * `retryAfterFailure` for a stream, retried only until its first element reached the caller:
 * after that a retry would show the same output twice, so the error is the answer. The schedule's
 * driver is made only once an attempt failed (`Stream.retry` makes one, and a channel around the
 * stream, for every stream). Each attempt has a scope of its own, closed before the backoff
 * (`StreamPull.recovering`, which also notes the delivery). A retried stream succeeds, for the
 * budget's refund, once it delivers: its opening may succeed before the upstream was even asked.
 */
const retryStreamAfterFailure = <A, E, R, R2>(
  attemptOf: (returning: boolean) => StreamPull.Opening<A, E, R>,
  onFailure: (error: E) => Effect.Effect<void>,
  schedule: Schedule.Schedule<unknown, E, R2> | undefined,
  owedRefund: OwedRefund
): StreamPull.Opening<A, E, R | R2> =>
  Effect.suspend(() => {
    let driver: Schedule.ScheduleDriver<unknown, E, R2> | undefined
    const driverOf = (schedule: Schedule.Schedule<unknown, E, R2>) =>
      driver === undefined ? Effect.tap(Schedule.driver(schedule), (made) => (driver = made)) : Effect.succeed(driver)
    const retried = Effect.map(owedRefund, (refund) => {
      const again = attemptOf(true)
      return refund === undefined ? again : StreamPull.onDelivery(again, refund)
    })
    /** The next attempt after a failure, or the failure as the answer. */
    const after = (error: E, delivered: boolean): Effect.Effect<StreamPull.Opening<A, E, R>, E, R2> =>
      schedule === undefined || delivered
        ? Effect.fail(error)
        : Effect.flatMap(driverOf(schedule), (made) =>
          Effect.zipRight(
            Effect.mapError(made.next(error), () => error),
            Effect.suspend(() => {
              AttemptRecords.discard(error)
              return retried
            })
          ))
    return StreamPull.recovering(attemptOf(false), (error, delivered) => Effect.zipRight(onFailure(error), after(error, delivered)))
  })

/**
 * `Metric.trackDuration(callDuration)` in one synchronous step each side (same clock, same
 * metric labels): on the hot path, its effect chain costs more than a policy.
 */
const timed = <A, E, R>(call: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.withFiberRuntime((fiber) => Effect.onExit(call, timer(fiber)))

/** The time from now to the call's end, as a synchronous step that records it in `callDuration`. */
const timer = (fiber: Fiber.RuntimeFiber<unknown, unknown>) => {
  const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
  const start = clock.unsafeCurrentTimeNanos()
  return () =>
    Effect.sync(() => {
      const seconds = Number(clock.unsafeCurrentTimeNanos() - start) / 1e9
      callDuration.unsafeUpdate(seconds, fiber.getFiberRef(FiberRef.currentMetricLabels))
    })
}

/** A stream's call timed from its opening to its end, however it ends (its scope closes then). */
const timedStream = <A, E, R>(opening: StreamPull.Opening<A, E, R>): StreamPull.Opening<A, E, R> =>
  Effect.withFiberRuntime((fiber) => Effect.zipRight(ScopeFinalizer.addFinalizer(Effect.suspend(timer(fiber))), opening))

type UsePermit<A> = (permit: ConcurrencyLimiter.Permit) => A

/** An effect given as it is, or as a function of the permit. */
const effectUse = <A, E, R>(
  self: Effect.Effect<A, E, R> | UsePermit<Effect.Effect<A, E, R>>
): UsePermit<Effect.Effect<A, E, R>> => Effect.isEffect(self) ? () => self : self

/** A stream given as it is, or as a function of the permit. */
const streamUse = <A, E, R>(
  self: Stream.Stream<A, E, R> | UsePermit<Stream.Stream<A, E, R>>
): UsePermit<Stream.Stream<A, E, R>> => Predicate.hasProperty(self, Stream.StreamTypeId) ? () => self : self

// -----------------------------------------------------------------------------
// The policy
// -----------------------------------------------------------------------------

export const make = (parts: Parts): Service => {
  const { breaker, budget, bucket, classify, limiter, retry, telemetry } = parts
  // From the start, at 0: a series shows only from its first update.
  callsCounter.unsafeUpdate(0, [])
  retriesCounter.unsafeUpdate(0, [])

  const onRetry = (error: unknown, delay: Duration.Duration) =>
    Effect.zipRight(Metric.increment(retriesCounter), telemetry?.retrying(error, delay) ?? Effect.void)

  /**
   * A retry the budget lets go without its leave: a refusal of the policy's own gates (an
   * exhausted bucket, an open circuit), which reached no upstream and whose gate paces its retry
   * (charged, a burst of them would spend the room a real failure's retry needs); and a cap's 429
   * when a limiter paces it (`Parts.capRetriesPaced`), unless a request alone on its lane met it,
   * which no lower limit would stop (`Unpaced`).
   */
  const exempt = (error: unknown): boolean => {
    const verdict = classify(error)
    return verdict._tag === "Refused" ||
      (parts.capRetriesPaced && verdict._tag === "LoadShed" && verdict.signal === "cap" && !Unpaced.wasUnpaced(error))
  }

  /**
   * When the budget allowed the retry the schedule is deciding on, in this fiber, until read.
   * The schedule is built once for every call; its driver runs in the call's fiber.
   */
  const allowedAt = FiberRef.unsafeMake<number | undefined>(undefined)

  /** The retry schedule as a call sees it: budget-guarded (a paced cap's 429 aside), every retry reported. */
  const retries = (schedule: Schedule.Schedule<unknown, unknown>): Schedule.Schedule<unknown, unknown> => {
    const guarded = budget === undefined ? schedule : schedule.pipe(RetryBudget.guard(budget, {
      waitFor: parts.budgetWait ?? retry?.maxRetryAfter ?? Duration.zero,
      exempt,
      onAllowed: (_, at) => FiberRef.set(allowedAt, at)
    }))
    return Schedule.modifyDelayEffect(guarded, (error, delay) => Effect.as(onRetry(error, delay), delay))
  }
  // Built once: every call of `apply` and `applyStream` follows the same schedule.
  const effectRetries = retry === undefined ? undefined : retries(retry.schedule)

  /** A retry the budget charged gives its room back once its attempt succeeds. */
  const owedRefund: OwedRefund = budget === undefined
    ? Effect.succeed(undefined)
    : Effect.map(FiberRef.getAndSet(allowedAt, undefined), (at) => at === undefined ? undefined : budget.refund(at))

  const onFailure = (error: unknown): Effect.Effect<void> =>
    classify(error)._tag === "Refused"
      ? Effect.void
      : Effect.zipRight(
        ToldAttempts.wasCounted(error)
          ? Effect.void
          : Metric.increment(Metric.tagged(attemptFailuresCounter, "error", ApiError.tagOf(error) ?? "unknown")),
        telemetry === undefined || ToldAttempts.wasTold(error) ? Effect.void : telemetry.attemptFailed(error)
      )

  // `Metric.increment` in one synchronous step, with the fiber's metric labels as it would.
  const started = Effect.withFiberRuntime<void>((fiber) => {
    callsCounter.unsafeUpdate(1, fiber.getFiberRef(FiberRef.currentMetricLabels))
    return budget?.recordRequest ?? Effect.void
  })

  // A caller's `maxWait` bounds its wait for the bucket too.
  const takeRate = (options: ApplyOptions | undefined) =>
    bucket === undefined ? Effect.void : bucket.take(options?.cost ?? noCost, options)

  const acquireOptions = (options: ApplyOptions | undefined, returning: boolean): ConcurrencyLimiter.AcquireOptions => ({
    priority: options?.priority,
    abandonWhen: options?.abandonWhen,
    returning
  })

  /**
   * A half-open verdict is waited for before a permit is taken (holding one, a caller would keep
   * it from others while a canary runs), for no longer than the caller's `abandonWhen`.
   */
  const awaitVerdict = (options: ApplyOptions | undefined) =>
    breaker === undefined ? Effect.void : breaker.awaitVerdict(options?.abandonWhen)

  // One attempt passes the gates in order: the bucket, the breaker's verdict, a permit (no scope
  // on the hot path: `withPermit` releases it and completes it from the attempt's exit), then the
  // breaker's admission.
  const attempt = <A, E, R>(
    use: (permit: ConcurrencyLimiter.Permit) => Effect.Effect<A, E, R>,
    options: ApplyOptions | undefined,
    returning: boolean
  ): Effect.Effect<A, E | Refusal, R> => {
    const guarded = (permit: ConcurrencyLimiter.Permit) =>
      breaker === undefined ? use(permit) : breaker.protect(use(permit))
    const permitted = limiter === undefined ? guarded(freePermit) : limiter.withPermit(guarded, acquireOptions(options, returning))
    const cleared = breaker === undefined ? permitted : Effect.zipRight(awaitVerdict(options), permitted)
    return bucket === undefined ? cleared : Effect.zipRight(takeRate(options), cleared)
  }

  /**
   * The gates of one attempt whose end is known later (a stream, a response body): the bucket, a
   * permit and the breaker's admission, held in the scope; `settle` reports how it ended to both.
   */
  const gate = (options: ApplyOptions | undefined, returning: boolean) =>
    Effect.gen(function*() {
      yield* takeRate(options)
      yield* awaitVerdict(options)
      const permit = limiter === undefined ? freePermit : yield* limiter.acquire(acquireOptions(options, returning))
      const admitted = breaker === undefined ? undefined : yield* breaker.admit
      const settle = (exit: Exit.Exit<unknown, unknown>) =>
        admitted === undefined ? permit.settle(exit) : Effect.zipRight(permit.settle(exit), admitted(exit))
      return { permit, settle }
    })

  const apply: Service["apply"] = (self, options) => {
    const use = effectUse(self)
    return timed(Effect.zipRight(started, retryAfterFailure((returning) => attempt(use, options, returning), onFailure, effectRetries, owedRefund)))
  }

  /**
   * One attempt of a stream through the gates, opened in the attempt's scope. Settled as the
   * stream ends or fails (opening or later), before the scope's finalizers: a stream its consumer
   * abandons is settled by the scope closing, as interrupted. With no gate, the stream as it is (a
   * gate-less policy is the outer one of an account pool, whose own gates hold each attempt).
   */
  const gatedStream = <A, E, R>(
    use: UsePermit<Stream.Stream<A, E, R>>,
    options: ApplyOptions | undefined,
    returning: boolean
  ): StreamPull.Opening<A, E | Refusal, R> =>
    bucket === undefined && limiter === undefined && breaker === undefined
      ? StreamPull.openingOf(use(freePermit))
      : Effect.flatMap(gate(options, returning), ({ permit, settle }) =>
        Effect.matchCauseEffect(StreamPull.openingOf(use(permit)), {
          onFailure: (cause) => Effect.zipRight(settle(Exit.failCause(cause)), Effect.failCause(cause)),
          onSuccess: (pull) =>
            Effect.succeed(Effect.catchAllCause(pull, (cause) =>
              Effect.zipRight(
                Option.match(StreamPull.failureOf(cause), {
                  onNone: () => settle(Exit.void),
                  onSome: (failure) => settle(Exit.failCause(failure))
                }),
                Effect.failCause(cause)
              )))
        }))

  const applyStream: Service["applyStream"] = (self, options) => {
    const use = streamUse(self)
    return StreamPull.fromOpening(timedStream(
      Effect.zipRight(started, retryStreamAfterFailure((returning) => gatedStream(use, options, returning), onFailure, effectRetries, owedRefund))
    ))
  }

  /**
   * One request through the gates, its permit and the breaker's admission held until the body
   * has been read (or the caller's scope, when it has one, closes). A status other than 2xx is
   * a failure, read by the classifier like any other.
   */
  const respond = <E, R>(
    effect: Effect.Effect<HttpClientResponse.HttpClientResponse, E, R>,
    options: ApplyOptions | undefined,
    returning: boolean
  ): Effect.Effect<HttpClientResponse.HttpClientResponse, E | HttpClientError.ResponseError | Refusal, R> =>
    Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        // A child of the caller's scope, when it has one: closed as the body is read, it leaves
        // that scope (a finalizer added there instead stayed for good, one per request, in a
        // worker's long-lived scope); the caller's scope closing first ends it as interrupted.
        const scope = yield* Option.match(yield* Effect.serviceOption(Scope.Scope), {
          onNone: () => Scope.make(),
          onSome: (outer) => Scope.fork(outer, ExecutionStrategy.sequential)
        })
        const close = (exit: Exit.Exit<unknown, unknown>) => Scope.close(scope, exit)
        const { settle } = yield* restore(Scope.extend(gate(options, returning), scope)).pipe(
          Effect.onError((cause) => close(Exit.failCause(cause)))
        )
        const settleOnce = firstExitOnly(settle)
        yield* Scope.addFinalizer(scope, settleOnce(Exit.interrupt(FiberId.none)))
        const finish = (exit: Exit.Exit<unknown, unknown>) => Effect.zipRight(settleOnce(exit), close(exit))
        const response = yield* restore(Effect.flatMap(effect, HttpClientResponse.filterStatusOk)).pipe(
          Effect.onError((cause) => Effect.zipRight(readRefusedBody(cause), finish(Exit.failCause(cause))))
        )
        return holdUntilRead(response, finish)
      })
    )

  const isRefusal = (error: unknown): error is Refusal =>
    !HttpClientError.isHttpClientError(error) && classify(error)._tag === "Refused"

  /** A refusal of the gates, as the transport error an `HttpClient`'s callers expect. */
  const refusedRequest = (request: HttpClientRequest.HttpClientRequest, refusal: Refusal) =>
    new HttpClientError.RequestError({
      request,
      reason: "Transport",
      cause: refusal,
      description: `refused by the policy: ${refusal.message}`
    })

  const wrapHttpClient: Service["wrapHttpClient"] = (options) => (client) =>
    HttpClient.transform(client, (effect, request) =>
      timed(Effect.zipRight(started, retryAfterFailure((returning) => respond(effect, options, returning), onFailure, effectRetries, owedRefund))).pipe(
        Effect.catchIf(isRefusal, (refusal) => Effect.fail(refusedRequest(request, refusal)))
      ))

  return { apply, applyStream, wrapHttpClient }
}

/**
 * Reads the body of a response failed for its status, so that its connection goes back to the
 * pool: left unread, a large one (a proxy's error page) kept its socket out, and each retry opened
 * another. The read is cached: the error's `response.text` still answers it. A body that does not
 * come within 5 s is left.
 */
const readRefusedBody = (cause: Cause.Cause<unknown>): Effect.Effect<void> =>
  Option.match(Cause.failureOption(cause), {
    onNone: () => Effect.void,
    onSome: (error) =>
      HttpClientError.isHttpClientError(error) && error._tag === "ResponseError" && error.reason === "StatusCode"
        ? Effect.ignore(Effect.timeout(error.response.text, "5 seconds"))
        : Effect.void
  })

/** `report`, told only the first exit it is given. */
const firstExitOnly = (report: (exit: Exit.Exit<unknown, unknown>) => Effect.Effect<void>) => {
  let told = false
  return (exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (told) return Effect.void
      told = true
      return report(exit)
    })
}

/**
 * The response, whose body reads report their exit to `done` once (the first read to end).
 * Getters of the original are reached through the prototype, so its lazy caches still work.
 */
const holdUntilRead = (
  response: HttpClientResponse.HttpClientResponse,
  done: (exit: Exit.Exit<unknown, unknown>) => Effect.Effect<void>
): HttpClientResponse.HttpClientResponse => {
  const once = firstExitOnly(done)
  const read = <A, E>(body: () => Effect.Effect<A, E>) => ({ get: () => Effect.onExit(body(), once) })
  return Object.create(response, {
    text: read(() => response.text),
    json: read(() => response.json),
    arrayBuffer: read(() => response.arrayBuffer),
    formData: read(() => response.formData),
    urlParamsBody: read(() => response.urlParamsBody),
    stream: { get: () => Stream.ensuringWith(response.stream, once) }
  }) as HttpClientResponse.HttpClientResponse
}
