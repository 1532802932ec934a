/**
 * Observes what the resilient pipeline does on the way to a result: failed attempts (with their
 * typed error) and the retries it schedules. The batch CLI counts them for its summary; an app
 * can forward them anywhere. Effect `Metric`s are updated by the pipeline regardless.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import type { ApiError } from "./ApiError.js"
import type { Classified } from "./RetryPolicy.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** An attempt failed with `error` (whether or not it will be retried). */
  readonly attemptFailed: (error: ApiError) => Effect.Effect<void>
  /** A retry was scheduled after `delay`. */
  readonly retrying: (error: Classified, delay: Duration.Duration) => Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Telemetry extends Context.Tag("weatherproof/Telemetry")<Telemetry, Service>() {}

/**
 * Ignores every event.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerNoop: Layer.Layer<Telemetry> = Layer.succeed(Telemetry, {
  attemptFailed: () => Effect.void,
  retrying: () => Effect.void
})

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

/**
 * A telemetry that counts events, and a way to read the counts.
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
            rateLimited: c.rateLimited + (error._tag === "RateLimited" ? 1 : 0),
            byTag: { ...c.byTag, [error._tag]: (c.byTag[error._tag] ?? 0) + 1 }
          })),
        retrying: () => Ref.update(ref, (c) => ({ ...c, retries: c.retries + 1 }))
      },
      counts: Ref.get(ref)
    })
  )
