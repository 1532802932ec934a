/**
 * Observes what a `Policy` does on the way to a result: failed attempts (with their typed error;
 * our own gates' refusals are not the upstream's doing and are not reported) and the retries it
 * schedules. The batch CLI counts them for its summary; an app can forward them anywhere.
 *
 * Optional: a policy reports to the `Telemetry` in its context when there is one, and to nobody
 * otherwise. An `AccountPool` reports the same way each attempt it fails over to another account
 * (a 401, a 402 …), which the policy around it never sees. Effect `Metric`s are updated regardless.
 *
 * @since 0.1.0
 */

import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import * as ApiError from "./ApiError.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** An attempt failed with `error` (whether or not it will be retried). */
  readonly attemptFailed: (error: unknown) => Effect.Effect<void>
  /** A retry of `error` was scheduled after `delay`. */
  readonly retrying: (error: unknown, delay: Duration.Duration) => Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Telemetry extends Context.Tag("weatherproof/Telemetry")<Telemetry, Service>() {}

/**
 * Ignores every event.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Policy, RetryPolicy, Telemetry } from "weatherproof"
 *
 * declare const call: Effect.Effect<string, Error>
 *
 * const program = Effect.gen(function*() {
 *   // This policy reports to nobody, whatever `Telemetry` the app provides.
 *   const policy = yield* Policy.fromParts({ retry: RetryPolicy.make({ maxRetries: 2 }), telemetry: Telemetry.noop })
 *   return yield* policy.apply(call)
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const noop: Service = {
  attemptFailed: () => Effect.void,
  retrying: () => Effect.void
}

/**
 * Ignores every event.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerNoop: Layer.Layer<Telemetry> = Layer.succeed(Telemetry, noop)

/**
 * Totals counted by `makeCounters`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Counts {
  readonly failedAttempts: number
  readonly rateLimited: number
  readonly retries: number
  /** Failed attempts by error tag. */
  readonly byTag: Readonly<Record<string, number>>
}

/** An error's `_tag`, or `"unknown"` for an untagged one. */
const tagOf = (error: unknown): string => ApiError.tagOf(error) ?? "unknown"

/**
 * A telemetry that counts events, and a way to read the counts.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Policy, Telemetry } from "weatherproof"
 *
 * declare const calls: ReadonlyArray<Effect.Effect<string, Error>>
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const { counts, telemetry } = yield* Telemetry.makeCounters
 *   const policy = yield* Policy.make().pipe(Effect.provideService(Telemetry.Telemetry, telemetry))
 *   yield* Effect.forEach(calls, (call) => Effect.either(policy.apply(call)), { concurrency: 8 })
 *   return yield* counts // failedAttempts, rateLimited, retries, byTag
 * }))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeCounters: Effect.Effect<{ readonly telemetry: Service; readonly counts: Effect.Effect<Counts> }> =
  Effect.map(
    Ref.make<Counts>({ failedAttempts: 0, rateLimited: 0, retries: 0, byTag: {} }),
    (ref) => ({
      telemetry: {
        attemptFailed: (error) =>
          Ref.update(ref, (c) => ({
            ...c,
            failedAttempts: c.failedAttempts + 1,
            rateLimited: c.rateLimited + (tagOf(error) === "RateLimited" ? 1 : 0),
            byTag: { ...c.byTag, [tagOf(error)]: (c.byTag[tagOf(error)] ?? 0) + 1 }
          })),
        retrying: () => Ref.update(ref, (c) => ({ ...c, retries: c.retries + 1 }))
      },
      counts: Ref.get(ref)
    })
  )
