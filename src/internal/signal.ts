/**
 * A wake-up for waiters that are cheap to abandon. `since(seen)` waits for a `notify` after the
 * `seen`-th (`notified` counts them), at once if there was one: a waiter reads `notified` before
 * it looks at what a notify announces, so a change in between is never missed. Unlike
 * `Deferred.await`, a wait carries no interruption handler (a mask and a finalizer each): an
 * interrupted waiter's callback stays until the next `notify`, which then resumes nothing (a fiber
 * ignores a resumption after its interruption). For latches notified about once a request, such
 * as a batch's read-ahead and a pool's room, where a `Deferred` per wait cost a tenth of a
 * request's runtime steps.
 *
 * @internal
 */
import * as Effect from "effect/Effect"

export class Signal {
  /** How many times it was notified. */
  notified = 0
  private waiters: Array<(resumed: Effect.Effect<void>) => void> = []

  /** Waits for a notify after the `seen`-th; the check and the wait are one step. */
  since(seen: number): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      if (this.notified !== seen) resume(Effect.void)
      else this.waiters.push(resume)
    })
  }

  /** Resumes every waiter. */
  notify(): void {
    this.notified++
    if (this.waiters.length === 0) return
    const waiters = this.waiters
    this.waiters = []
    for (const resume of waiters) resume(Effect.void)
  }
}
