/**
 * The retry budget: calls, retries and refusals counted over a rolling window, and the retries
 * that wait for room, in line.
 *
 * Waiting costs O(1) per event: a recorded call, a refund, or the window moving on, withdraws a
 * retry for each of the earliest waiters the room allows and wakes only those, and one timer (not
 * one per waiter) wakes the line when buckets leaving the window make room by themselves.
 *
 * @internal
 */
import type * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as MutableList from "effect/MutableList"
import type { Service, Snapshot } from "../RetryBudget.js"
import { monotonicMillis } from "./monotonic.js"
import { RollingWindow } from "./rollingWindow.js"

/** Resolved, validated options. */
export interface Settings {
  readonly bucketMillis: number
  readonly buckets: number
  readonly ratio: number
  /** Retries the window allows with no traffic at all: `minRetriesPerSecond` × the window. */
  readonly reserve: number
}

type Field = "requests" | "retries" | "refused" | "refunded"

/** What the budget counts as it happens: a retry allowed, refused, or refunded. */
export type Event = "allowed" | "refused" | "refunded"

/** A retry waiting in line. */
interface Waiter {
  /** `granted` once a retry was withdrawn for it; `gone` once it left the line without one. */
  state: "waiting" | "granted" | "gone"
  readonly granted: Deferred.Deferred<void>
}

export class Budget implements Service {
  private readonly window: RollingWindow<Field>
  /** Retries waiting for room, first come first served. Its head is always `waiting`. */
  private readonly line = MutableList.empty<Waiter>()
  /** The line's waiters still `waiting` (those gone stay in it until they reach its head). */
  private waiting = 0
  /** The one timer: sleeps until the window alone makes room (`wakeAt`), while retries wait. */
  private sleeper: Fiber.RuntimeFiber<void> | undefined
  private wakeAt = Infinity
  /** Bumped with each new timer: a timer of an older generation changes nothing. */
  private generation = 0

  constructor(
    private readonly settings: Settings,
    private readonly clock: Clock.Clock,
    /** Told each retry withdrawn, refused, or given back. */
    private readonly counted: (event: Event) => void
  ) {
    this.window = new RollingWindow(["requests", "retries", "refused", "refunded"], settings.buckets, settings.bucketMillis, this.now())
  }

  readonly recordRequest: Effect.Effect<void> = Effect.suspend(() => {
    const now = this.now()
    this.window.add(now, "requests")
    return this.madeRoom(now)
  })

  readonly refund = (allowedAt: number): Effect.Effect<void> =>
    Effect.suspend(() => {
      const now = this.now()
      if (!this.window.takeBack(now, "retries", allowedAt)) return Effect.void
      this.window.add(now, "refunded")
      this.counted("refunded")
      return this.madeRoom(now)
    })

  /**
   * Serves the line from the room a deposit or a refund made, and brings forward the time the
   * window makes room for the rest of it.
   */
  private madeRoom(now: number): Effect.Effect<void> {
    this.serve(now)
    return this.waiting === 0 ? Effect.void : this.rearm
  }

  // Uninterruptible: `arm` moves the wake-up time at once and starts its timer after, so an
  // interruption in between would leave the line waiting on a timer that never started.
  private readonly rearm: Effect.Effect<void> = Effect.uninterruptible(Effect.suspend(() => this.arm(this.now())))

  readonly tryRetry: Effect.Effect<boolean> = Effect.sync(() => {
    const now = this.now()
    return this.take(now) || this.refuse(now)
  })

  readonly awaitRetry = (maxWait: Duration.DurationInput): Effect.Effect<boolean> => {
    const wait = Duration.decode(maxWait)
    return Effect.uninterruptibleMask((restore) =>
      Effect.suspend(() => {
        const now = this.now()
        if (this.take(now)) return Effect.succeed(true)
        if (Duration.isZero(wait)) return Effect.succeed(this.refuse(now))
        const waiter = this.join()
        return this.arm(now).pipe(
          Effect.zipRight(restore(Effect.timeoutOption(Deferred.await(waiter.granted), wait))),
          Effect.onInterrupt(() => Effect.sync(() => this.leave(waiter))),
          Effect.zipRight(Effect.sync(() => this.settle(waiter)))
        )
      })
    )
  }

  readonly snapshot: Effect.Effect<Snapshot> = Effect.sync(() => {
    this.serve(this.now())
    const { refunded, refused, requests, retries } = this.window.totals
    return { requests, retries, refused, refunded, available: this.room() }
  })

  private now(): number {
    return monotonicMillis(this.clock)
  }

  /** Withdraws one retry if there is room now, once those waiting were served. */
  private take(now: number): boolean {
    this.serve(now)
    if (this.room() < 1) return false
    this.withdraw(now)
    return true
  }

  private withdraw(now: number): void {
    this.window.add(now, "retries")
    this.counted("allowed")
  }

  private refuse(now: number): false {
    this.window.add(now, "refused")
    this.counted("refused")
    return false
  }

  private join(): Waiter {
    const waiter: Waiter = { state: "waiting", granted: Deferred.unsafeMake<void>(FiberId.none) }
    MutableList.append(this.line, waiter)
    this.waiting++
    return waiter
  }

  /** Withdraws a retry for each of the earliest waiters the window has room for now, and wakes them. */
  private serve(now: number): void {
    this.window.advance(now)
    for (let room = this.room(); room >= 1 && this.waiting > 0; room--) {
      const waiter = MutableList.shift(this.line)!
      waiter.state = "granted"
      this.withdraw(now)
      Deferred.unsafeDone(waiter.granted, Exit.void)
      this.left()
    }
  }

  /** The wait of `waiter` is over: granted, unless it is still in line, which it leaves refused. */
  private settle(waiter: Waiter): boolean {
    const now = this.now()
    this.serve(now)
    if (waiter.state === "granted") return true
    this.leave(waiter)
    return this.refuse(now)
  }

  /** `waiter` leaves the line without a retry, if it is still in it. */
  private leave(waiter: Waiter): void {
    if (waiter.state !== "waiting") return
    waiter.state = "gone"
    this.left()
  }

  /** One waiter fewer: drops those gone from the line's head, and the timer with the last waiter. */
  private left(): void {
    this.waiting--
    while (MutableList.head(this.line)?.state === "gone") MutableList.shift(this.line)
    if (this.waiting === 0) this.disarm()
  }

  /** Makes sure the timer wakes the line by the time buckets leaving the window make room. */
  private arm(now: number): Effect.Effect<void> {
    const at = this.waiting === 0 ? Infinity : now + this.roomIn(now)
    if (at >= this.wakeAt) return Effect.void
    this.disarm()
    this.wakeAt = at
    const generation = this.generation
    // Interruptible whatever the mask of the fiber that starts it (a waiter joining the line).
    // Whole millis: a sleep of a fraction of a millisecond may not move the clock at all.
    const timer = Effect.zipRight(
      this.clock.sleep(Duration.millis(Math.ceil(at - now))),
      Effect.suspend(() => this.ring(generation))
    )
    return Effect.asVoid(Effect.tap(Effect.forkDaemon(Effect.interruptible(timer)), (fiber) => {
      if (generation === this.generation) this.sleeper = fiber
      else fiber.unsafeInterruptAsFork(FiberId.none)
    }))
  }

  private ring(generation: number): Effect.Effect<void> {
    if (generation !== this.generation) return Effect.void
    this.sleeper = undefined
    this.wakeAt = Infinity
    const now = this.now()
    this.serve(now)
    return this.arm(now)
  }

  private disarm(): void {
    this.generation++
    this.sleeper?.unsafeInterruptAsFork(FiberId.none)
    this.sleeper = undefined
    this.wakeAt = Infinity
  }

  /**
   * Millis until buckets leaving the window alone make room for a retry (0 when there is room
   * now): the retries they hold stop counting, and so do the calls that funded them. Infinity
   * when even an empty window has no room (a reserve below one retry).
   */
  private roomIn(now: number): number {
    const left = { ...this.window.totals }
    if (this.available(left) >= 1) return 0
    for (const { at, counts } of this.window.expiries(now)) {
      left.requests -= counts.requests
      left.retries -= counts.retries
      if (this.available(left) >= 1) return at - now
    }
    return Infinity
  }

  private room(): number {
    return this.available(this.window.totals)
  }

  /** Retries still allowed: `ratio` of the calls plus the reserve, less the retries already made. */
  private available(totals: Readonly<Record<Field, number>>): number {
    return Math.max(0, Math.floor(this.settings.ratio * totals.requests + this.settings.reserve) - totals.retries)
  }
}
