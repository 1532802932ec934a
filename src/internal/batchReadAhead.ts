/**
 * How far a batch reads ahead: whether one more line may start, given the lines read and not yet
 * answered (in flight, waiting for a permit or backing off), is asked again each time a line
 * asks to start. A reader waiting for room looks again when a line ends and when `signal` says
 * there may be more room. Every step is synchronous, so each count is atomic on the JavaScript
 * thread.
 */
import * as Effect from "effect/Effect"
import { Signal } from "./signal.js"

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
  const changes = new Signal()

  /** Counts a line in once `mayStart` says so, looking again at each change after its look. */
  const startWhenRoom: Effect.Effect<void> = Effect.suspend(() => {
    const seen = changes.notified
    return Effect.flatMap(mayStart(running), (start) => {
      if (start) {
        running++
        return Effect.void
      }
      return Effect.zipRight(changes.since(seen), startWhenRoom)
    })
  })

  // A wait for a change lets the lines started before it run too: only the first check yields.
  const enter: Effect.Effect<void> = Effect.zipRight(Effect.yieldNow(), startWhenRoom)

  const idle: Effect.Effect<void> = Effect.suspend(() =>
    running === 0 ? Effect.void : Effect.zipRight(changes.since(changes.notified), idle)
  )

  return {
    enter,
    leave: () => {
      running--
      changes.notify()
    },
    signal: () => changes.notify(),
    idle
  }
}
