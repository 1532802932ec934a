/**
 * Calls waiting for a permit, in the order they are served: interactive before batch, and within
 * each the calls back for another attempt (their first was sent, and met a 429 or failed over)
 * before those not yet sent, so that a retry keeps its place ahead of the calls that came after
 * it; arrival order within each queue. Shared by the limiter's `Gate` and the account pool's
 * `Dispatcher`, so both serve in one order.
 *
 * @internal
 */
import type { Priority } from "../ConcurrencyLimiter.js"

export class WaitQueues<W> {
  /** In the order they are served: interactive returning, interactive, batch returning, batch. */
  private readonly queues = [new Set<W>(), new Set<W>(), new Set<W>(), new Set<W>()] as const

  get size(): number {
    return this.queues[0].size + this.queues[1].size + this.queues[2].size + this.queues[3].size
  }

  /** Queues `waiter` behind those already in its queue. */
  add(waiter: W, priority: Priority, returning: boolean): void {
    this.queues[priority === "batch" ? (returning ? 2 : 3) : (returning ? 0 : 1)].add(waiter)
  }

  /** Takes `waiter` out of its queue: false when it was in none. */
  delete(waiter: W): boolean {
    for (const queue of this.queues) if (queue.delete(waiter)) return true
    return false
  }

  /** Takes out the waiter served next, if any. */
  shift(): W | undefined {
    for (const queue of this.queues) {
      for (const waiter of queue) {
        queue.delete(waiter)
        return waiter
      }
    }
    return undefined
  }

  /**
   * Visits the waiters in the order they are served until `visit` answers false; `visit` may
   * delete the waiter it is given.
   */
  forEach(visit: (waiter: W) => boolean): void {
    for (const queue of this.queues) for (const waiter of queue) if (!visit(waiter)) return
  }

  /** Takes out every waiter, in the order they are served, each with its priority. */
  takeAll(): Array<{ readonly waiter: W; readonly priority: Priority }> {
    const taken: Array<{ readonly waiter: W; readonly priority: Priority }> = []
    this.queues.forEach((queue, index) => {
      const priority: Priority = index < 2 ? "interactive" : "batch"
      for (const waiter of queue) taken.push({ waiter, priority })
      queue.clear()
    })
    return taken
  }
}
