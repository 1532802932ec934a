/**
 * How far a batch reads ahead: whether one more line may start, given the lines read and not yet
 * answered (in flight, waiting for a permit or backing off), is asked again each time a line
 * asks to start. A reader waiting for room looks again when a line ends and when `signal` says
 * there may be more room. Every step is synchronous, so each count is atomic on the JavaScript
 * thread.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"

export interface ReadAhead {
  /** Waits until there is room, then counts a line in. */
  readonly enter: Effect.Effect<void>
  /** A line ended. */
  readonly leave: () => void
  /** The bound may have grown: a waiting reader looks again. */
  readonly signal: () => void
  /** Completes once no line is counted in. */
  readonly idle: Effect.Effect<void>
}

/**
 * A read-ahead that starts a line when `mayStart(running)` says so. Each check first lets the
 * lines already started run to their first wait, so a room they are about to take is not counted
 * twice.
 */
export const make = (mayStart: (running: number) => Effect.Effect<boolean>): ReadAhead => {
  let running = 0
  // The latch of the next change, made when a waiter first asks for it (at its check, so a
  // signal after the check is never missed): a line that ends with nobody waiting allocates nothing.
  let changed: Deferred.Deferred<void> | undefined

  const signal = (): void => {
    const waiting = changed
    changed = undefined
    if (waiting !== undefined) Deferred.unsafeDone(waiting, Exit.void)
  }

  const nextChange = (): Effect.Effect<void> => Deferred.await(changed ??= Deferred.unsafeMake<void>(FiberId.none))

  /** Counts a line in once `mayStart` says so, looking again at each change. */
  const startWhenRoom: Effect.Effect<void> = Effect.flatMap(Effect.suspend(() => mayStart(running)), (start) => {
    if (start) {
      running++
      return Effect.void
    }
    return Effect.zipRight(nextChange(), startWhenRoom)
  })

  // A wait for a change lets the lines started before it run too: only the first check yields.
  const enter: Effect.Effect<void> = Effect.zipRight(Effect.yieldNow(), startWhenRoom)

  const idle: Effect.Effect<void> = Effect.suspend(() => running === 0 ? Effect.void : Effect.zipRight(nextChange(), idle))

  return {
    enter,
    leave: () => {
      running--
      signal()
    },
    signal,
    idle
  }
}
