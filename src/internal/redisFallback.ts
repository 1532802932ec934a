/**
 * How a service that shares its state on Redis goes on without it: the first command that fails
 * puts it on its local state (one warning naming the server, never its credentials), and it
 * rejoins once the connection is back (one note). The service says how it resyncs; that runs
 * after each reconnection, and every second while the service is local and the connection is
 * ready (a command may time out without the connection dropping).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { RedisError, Service } from "../Redis.js"

export interface Fallback {
  /** Whether the service is on its local state. */
  readonly isLocal: () => boolean
  /** Puts the service on its local state after `error`; the first failure of each outage logs. */
  readonly fail: (error: RedisError) => Effect.Effect<void>
  /** Puts the service back on Redis, with a note. */
  readonly back: Effect.Effect<void>
  /** `shared` while on Redis; `local` while local, or once `shared` failed. */
  readonly run: <A>(shared: Effect.Effect<A, RedisError>, local: Effect.Effect<A>) => Effect.Effect<A>
  /** Runs `resync` after each reconnection, and every second while local and connected, in the scope. */
  readonly watch: (resync: Effect.Effect<void>) => Effect.Effect<void, never, Scope.Scope>
}

/** How often a local service whose connection is ready tries to rejoin. */
const retryEvery = "1 second"

/**
 * `label` names the service in the log lines; `whileAway` says what it does without Redis
 * ("limiting locally …").
 */
export const make = (redis: Service, label: string, whileAway: string): Fallback => {
  let local = false
  const fail = (error: RedisError) =>
    Effect.suspend(() => {
      if (local) return Effect.void
      local = true
      return Effect.logWarning(`${label}: Redis at ${redis.url} failed (${error.reason}); ${whileAway} until it is back`)
    })
  return {
    isLocal: () => local,
    fail,
    back: Effect.suspend(() => {
      if (!local) return Effect.void
      local = false
      return Effect.logInfo(`${label}: back on Redis at ${redis.url}`)
    }),
    run: (shared, fallback) =>
      Effect.suspend(() => local ? fallback : Effect.catchAll(shared, (error) => Effect.zipRight(fail(error), fallback))),
    watch: (resync) =>
      Effect.all([
        redis.readiness.pipe(
          Stream.changes,
          Stream.drop(1),
          Stream.filter((ready) => ready),
          Stream.runForEach(() => resync),
          Effect.forkScoped
        ),
        Effect.whenEffect(resync, Effect.map(redis.isReady, (ready) => ready && local)).pipe(
          Effect.repeat(Schedule.spaced(retryEvery)),
          Effect.forkScoped
        )
      ], { discard: true })
  }
}
