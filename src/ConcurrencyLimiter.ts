/**
 * Bounds how many calls are in flight at once. DeepSeek limits concurrency per account and
 * answers 429 the moment a request is over it, so bounding fan-out on the client is the first
 * cure for 429 storms.
 *
 * A permit is held from send until the response completes (queue wait at the server included,
 * as DeepSeek counts it), and is released between retries so a call that backs off does not
 * hold capacity. Each permit reports its outcome so an adaptive implementation can move the
 * limit.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import type { ApiError } from "./ApiError.js"

/**
 * Interactive calls are served before batch calls when both wait.
 *
 * @since 0.1.0
 * @category models
 */
export type Priority = "interactive" | "batch"

/**
 * What the call made under a permit taught us about the upstream's capacity:
 * - `Dropped`: the upstream refused for load (429, 503);
 * - `Success`: it answered; `queueDelay` is the time from response headers to the first
 *   content event, i.e. DeepSeek's own queueing, when it was measured;
 * - `Ignored`: nothing about capacity (a 400, an interruption, a client-side error).
 *
 * @since 0.1.0
 * @category models
 */
export type Outcome =
  | { readonly _tag: "Success"; readonly queueDelay?: Duration.Duration | undefined }
  | { readonly _tag: "Dropped" }
  | { readonly _tag: "Ignored" }

/**
 * A held permit. It is released when its scope closes; `complete` records the outcome first
 * (a permit released without one counts as `Ignored`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Permit {
  readonly complete: (outcome: Outcome) => Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Snapshot {
  readonly limit: number
  readonly inFlight: number
  readonly queued: number
}

/**
 * The wait queue is full: the call was rejected without waiting.
 *
 * @since 0.1.0
 * @category errors
 */
export class QueueFull extends Data.TaggedError("QueueFull")<{ readonly queued: number }> {
  /** @since 0.1.0 */
  readonly retryable = false
  /** @since 0.1.0 */
  override get message(): string {
    return `concurrency limiter queue full (${this.queued} waiting)`
  }
}

/**
 * @since 0.1.0
 * @category models
 */
export interface AcquireOptions {
  readonly priority?: Priority | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Waits for a permit that is released when the scope closes. */
  readonly acquire: (options?: AcquireOptions) => Effect.Effect<Permit, QueueFull, Scope.Scope>
  readonly snapshot: Effect.Effect<Snapshot>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class ConcurrencyLimiter extends Context.Tag("weatherproof/ConcurrencyLimiter")<
  ConcurrencyLimiter,
  Service
>() {}

/**
 * Classifies a call's exit for the limiter: 429 and 503 are load drops, a success is a success,
 * anything else says nothing about capacity.
 *
 * @since 0.1.0
 */
export const outcomeOf = (exit: Exit.Exit<unknown, unknown>): Outcome => {
  if (Exit.isSuccess(exit)) return { _tag: "Success" }
  const failure = exit.cause._tag === "Fail" ? (exit.cause.error as Partial<ApiError>) : undefined
  return failure?._tag === "RateLimited" || (failure?._tag === "ServerError" && failure.status === 503)
    ? { _tag: "Dropped" }
    : { _tag: "Ignored" }
}

/**
 * Runs `effect` under a permit of `limiter`, reporting its outcome.
 *
 * @since 0.1.0
 */
export const withPermit = (limiter: Service, options?: AcquireOptions) =>
<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | QueueFull, R> =>
  Effect.scoped(
    Effect.flatMap(limiter.acquire(options), (permit) =>
      Effect.onExit(effect, (exit) => permit.complete(outcomeOf(exit))))
  )

/**
 * A fixed bound of `permits` calls in flight, on `Effect.makeSemaphore`. Waiters queue without
 * bound and in arrival order.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeFixed = (permits: number): Effect.Effect<Service> =>
  Effect.gen(function*() {
    const semaphore = yield* Effect.makeSemaphore(permits)
    let inFlight = 0
    let queued = 0
    const permit: Permit = { complete: () => Effect.void }
    const acquire = () =>
      Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          queued++
          yield* restore(semaphore.take(1)).pipe(Effect.ensuring(Effect.sync(() => queued--)))
          inFlight++
          yield* Effect.addFinalizer(() => Effect.zipRight(Effect.sync(() => inFlight--), semaphore.release(1)))
          return permit
        })
      )
    return {
      acquire,
      snapshot: Effect.sync(() => ({ limit: permits, inFlight, queued }))
    }
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layerFixed = (permits: number): Layer.Layer<ConcurrencyLimiter> =>
  Layer.effect(ConcurrencyLimiter, makeFixed(permits))
