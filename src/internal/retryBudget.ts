/**
 * The retry budget's state: calls, retries and refusals counted over a rolling window, and who
 * waits for room.
 *
 * @internal
 */
import * as Deferred from "effect/Deferred"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import type { Snapshot } from "../RetryBudget.js"
import { RollingWindow } from "./rollingWindow.js"

/** Resolved, validated options. */
export interface Settings {
  readonly bucketMillis: number
  readonly buckets: number
  readonly ratio: number
  /** Retries the window allows with no traffic at all: `minRetriesPerSecond` × the window. */
  readonly reserve: number
}

type Field = "requests" | "retries" | "refused"

export class Budget {
  private readonly window: RollingWindow<Field>
  /** Completed at the next recorded call, for retries waiting for room; made only when one waits. */
  private deposit: Deferred.Deferred<void> | undefined

  constructor(private readonly settings: Settings, now: number) {
    this.window = new RollingWindow(["requests", "retries", "refused"], settings.buckets, settings.bucketMillis, now)
  }

  recordRequest(now: number): void {
    this.window.add(now, "requests")
    if (this.deposit === undefined) return
    Deferred.unsafeDone(this.deposit, Exit.void)
    this.deposit = undefined
  }

  /** Withdraws one retry if the window allows it; counts a refusal otherwise. */
  tryRetry(now: number): boolean {
    this.window.advance(now)
    const allowed = this.available(this.window.totals) >= 1
    this.window.add(now, allowed ? "retries" : "refused")
    return allowed
  }

  snapshot(now: number): Snapshot {
    this.window.advance(now)
    const { refused, requests, retries } = this.window.totals
    return { requests, retries, refused, available: this.available(this.window.totals) }
  }

  /**
   * Millis until buckets leaving the window alone make room for a retry (0 when there is room
   * now): the retries they hold stop counting, and so do the calls that funded them. `undefined`
   * when even an empty window has no room (a reserve below one retry).
   */
  roomIn(now: number): number | undefined {
    const left = { ...this.window.totals }
    if (this.available(left) >= 1) return 0
    for (const { at, counts } of this.window.expiries(now)) {
      left.requests -= counts.requests
      left.retries -= counts.retries
      if (this.available(left) >= 1) return at - now
    }
    return undefined
  }

  /** Completed at the next recorded call. */
  nextDeposit(): Deferred.Deferred<void> {
    return (this.deposit ??= Deferred.unsafeMake<void>(FiberId.none))
  }

  /** Retries still allowed: `ratio` of the calls plus the reserve, less the retries already made. */
  private available(totals: Readonly<Record<Field, number>>): number {
    return Math.max(0, Math.floor(this.settings.ratio * totals.requests + this.settings.reserve) - totals.retries)
  }
}
