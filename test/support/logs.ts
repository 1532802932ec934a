/**
 * The messages an effect logs, with their levels, instead of printing them.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"

export interface Logged {
  readonly level: string
  readonly message: string
  /** The cause logged with it, rendered, if there is one. */
  readonly cause?: string
}

/** Runs `effect` with a logger that appends each message to `into`. */
export const capturingLogs = (into: Array<Logged>) => <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.provide(
    effect,
    Logger.replace(
      Logger.defaultLogger,
      Logger.make(({ cause, logLevel, message }) => {
        into.push({
          level: logLevel.label,
          message: (Array.isArray(message) ? message : [message]).map(String).join(" "),
          ...(Cause.isEmpty(cause) ? {} : { cause: Cause.pretty(cause) })
        })
      })
    )
  )
