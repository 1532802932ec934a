/**
 * The synchronous core of the circuit breaker: a bucketed rolling window and the state machine.
 *
 * Every method runs to completion without yielding. JavaScript runs one fiber at a time and a
 * fiber only switches at an Effect boundary, so each admission, verdict and transition is atomic
 * however many fibers call the breaker, without a lock on the hot path.
 *
 * @internal
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import type { HalfOpenPolicy, Snapshot, State } from "../CircuitBreaker.js"
import { RollingWindow, type SavedWindow } from "./rollingWindow.js"

/** Resolved, validated options, in milliseconds. */
export interface Settings {
  readonly windowMillis: number
  readonly buckets: number
  readonly failureRatio: number
  readonly minimumThroughput: number
  readonly openForMillis: number
  readonly maxOpenForMillis: number
  readonly canaries: number
  readonly halfOpenPolicy: HalfOpenPolicy
}

/** How a protected call ended, as far as the breaker is concerned. */
export type Outcome = "success" | "failure" | "ignored"

/** Why a call is refused, and until when. */
export interface Rejection {
  readonly reason: "open" | "half_open" | "isolated"
  /** Epoch millis; `Infinity` while isolated. */
  readonly until: number
  readonly trips: number
}

/**
 * What `admit` answers: a ticket (the generation the call was admitted in) to hand back to
 * `settle`, a rejection, or a signal to await before asking again.
 */
export type Admission = number | Rejection | Deferred.Deferred<void>

export const closed: State = { _tag: "Closed" }

/** The machine as plain data (no signal, no callback): what a breaker shared between processes stores. */
export interface Saved {
  readonly state: State
  readonly generation: number
  readonly consecutiveTrips: number
  readonly totalTrips: number
  readonly canariesInFlight: number
  readonly canariesSucceeded: number
  /** Until when the canaries in flight are known to be held by live callers (0: no lease). */
  readonly canaryLeaseUntil: number
  readonly window: SavedWindow<"calls" | "failures">
}

/**
 * How long the `trips`-th consecutive trip keeps the circuit open: `openFor` doubled on each
 * trip, capped at `maxOpenFor` (and never shorter than `openFor`).
 */
const openPeriodMillis = (settings: Settings, trips: number): number =>
  Math.min(Math.max(settings.openForMillis, settings.maxOpenForMillis), settings.openForMillis * 2 ** (trips - 1))

/**
 * The state machine. Each transition bumps `generation`, which voids the tickets of calls
 * admitted before it (their verdict is about a state that is gone), and completes `signal`, which
 * wakes the callers waiting in half-open.
 */
export class Machine {
  state: State = closed
  /** Trips since the make, for the snapshot. */
  totalTrips = 0
  /** Completed (and replaced) on every transition and whenever a canary slot frees up. */
  signal: Deferred.Deferred<void> = Deferred.unsafeMake(FiberId.none)
  /** Bumped by each transition; a ticket is the generation its call was admitted in. Read-only outside. */
  generation = 0
  /** Trips since the circuit last closed; sets the length of the next open period. */
  private consecutiveTrips = 0
  private canariesInFlight = 0
  private canariesSucceeded = 0
  private canaryLeaseUntil = 0
  private readonly window: RollingWindow<"calls" | "failures">
  /**
   * Calls admitted while closed, in this generation, that have not settled: in this process only
   * (not saved). They have not failed yet, so the failure ratio counts them: a call that fails
   * fast (a 503, a refused connection) settles long before one that succeeds, and a window that
   * judged settled calls alone would see only failures for the first seconds after closing (or
   * starting), and trip at once whatever the share of failures.
   */
  private pending = 0

  /**
   * `canaryLeaseMillis`: how long a canary's slot is held without `renewCanaries`. In one process
   * a canary always settles (Infinity); a machine shared between processes must not wait for
   * good on the canary of a process that died.
   */
  constructor(
    private readonly settings: Settings,
    now: number,
    private readonly onTransition: (state: State) => void,
    private readonly canaryLeaseMillis = Infinity
  ) {
    this.window = new RollingWindow(["calls", "failures"], settings.buckets, settings.windowMillis / settings.buckets, now)
  }

  admit(now: number): Admission {
    this.poll(now)
    const state = this.state
    switch (state._tag) {
      case "Closed":
        return this.admitClosed()!
      case "HalfOpen":
        if (this.canariesInFlight + this.canariesSucceeded < this.settings.canaries) {
          this.canariesInFlight++
          this.renewCanaries(now)
          return this.generation
        }
        return this.settings.halfOpenPolicy === "wait"
          ? this.signal
          : { reason: "half_open", until: now, trips: state.trips }
      case "Open":
      case "Isolated":
        return this.refusal(now)!
    }
  }

  /**
   * What a call would wait on before its admission (the half-open verdict: every canary slot
   * taken, and callers wait); `undefined` when it would not wait. Takes nothing.
   */
  verdictAwaited(now: number): Deferred.Deferred<void> | undefined {
    this.poll(now)
    return this.state._tag === "HalfOpen" && this.settings.halfOpenPolicy === "wait" &&
        this.canariesInFlight + this.canariesSucceeded >= this.settings.canaries
      ? this.signal
      : undefined
  }

  /** The refusal of an isolated circuit, or of an open one before its period ends: no transition. */
  refusal(now: number): Rejection | undefined {
    const state = this.state
    if (state._tag === "Open" && now < state.until) return { reason: "open", until: state.until, trips: state.trips }
    if (state._tag === "Isolated") return { reason: "isolated", until: Infinity, trips: this.consecutiveTrips }
    return undefined
  }

  /** The ticket of a call admitted while closed (no transition, no wait), or `undefined` when not closed. */
  admitClosed(): number | undefined {
    if (this.state._tag !== "Closed") return undefined
    this.pending++
    return this.generation
  }

  /** The call admitted with `ticket` settled: it is no longer pending. */
  release(ticket: number): void {
    if (ticket === this.generation && this.pending > 0) this.pending--
  }

  /** Takes the pending calls of `other`, a machine of this process, when it is in this one's generation. */
  adoptPending(other: Machine): void {
    this.pending = other.generation === this.generation ? other.pending : 0
  }

  /** Takes the verdict of a call admitted with `ticket`, which settled. */
  settle(ticket: number, outcome: Outcome, now: number): void {
    this.release(ticket)
    this.record(ticket, outcome, now)
  }

  /** Takes the verdict of a call admitted with `ticket`, already `release`d. */
  record(ticket: number, outcome: Outcome, now: number): void {
    if (ticket !== this.generation) return
    switch (this.state._tag) {
      case "Closed":
        return this.recordClosed(outcome, now)
      case "HalfOpen":
        return this.settleCanary(outcome, now)
    }
  }

  /**
   * Moves an open circuit whose period is over to half-open, and frees the slots of canaries
   * whose lease lapsed: a new generation voids their tickets (the verdicts already in stand).
   */
  poll(now: number): void {
    const state = this.state
    if (state._tag === "Open" && now >= state.until) {
      this.halfOpen(now)
    } else if (this.canariesLapsed(now)) {
      this.canariesInFlight = 0
      this.enter(state)
    }
  }

  /** Whether half-open canaries are in flight past their lease: their callers are gone. */
  canariesLapsed(now: number): boolean {
    return this.state._tag === "HalfOpen" && this.canariesInFlight > 0 && now >= this.canaryLeaseUntil
  }

  /** The canaries in flight are still held: their lease runs `canaryLeaseMillis` from `now`. */
  renewCanaries(now: number): void {
    if (this.canariesInFlight > 0) this.canaryLeaseUntil = now + this.canaryLeaseMillis
  }

  /**
   * Ends an open period now: the circuit half-opens and its canaries test the upstream. Its trips
   * are kept, so a canary that fails opens it for the next, longer period. Only an open circuit moves.
   */
  halfOpen(now: number): void {
    const state = this.state
    if (state._tag !== "Open") return
    this.canariesInFlight = 0
    this.canariesSucceeded = 0
    this.enter({ _tag: "HalfOpen", since: now, trips: state.trips })
  }

  isolate(now: number): void {
    if (this.state._tag !== "Isolated") this.enter({ _tag: "Isolated", since: now })
  }

  /** Closes the circuit with an empty window and forgets past trips. */
  close(): void {
    this.consecutiveTrips = 0
    this.window.clear()
    this.enter(closed)
  }

  snapshot(now: number): Snapshot {
    this.poll(now)
    return this.report(now)
  }

  /** The snapshot of the state as it is, without moving an open circuit whose period ended. */
  report(now: number): Snapshot {
    this.window.advance(now)
    return {
      state: this.state,
      calls: this.window.totals.calls,
      failures: this.window.totals.failures,
      trips: this.totalTrips,
      canariesInFlight: this.state._tag === "HalfOpen" ? this.canariesInFlight : 0,
      inFlight: this.pending
    }
  }

  save(): Saved {
    return {
      state: this.state,
      generation: this.generation,
      consecutiveTrips: this.consecutiveTrips,
      totalTrips: this.totalTrips,
      canariesInFlight: this.canariesInFlight,
      canariesSucceeded: this.canariesSucceeded,
      canaryLeaseUntil: this.canaryLeaseUntil,
      window: this.window.save()
    }
  }

  /** Takes `saved` as its state, announcing a change of state and waking the callers that wait. */
  load(saved: Saved): void {
    const previous = this.state
    // A renewed lease or new window counts change nothing a waiting caller waits for.
    const moved = saved.generation !== this.generation || saved.canariesInFlight !== this.canariesInFlight ||
      saved.canariesSucceeded !== this.canariesSucceeded
    if (saved.generation !== this.generation) this.pending = 0
    this.state = saved.state
    this.generation = saved.generation
    this.consecutiveTrips = saved.consecutiveTrips
    this.totalTrips = saved.totalTrips
    this.canariesInFlight = saved.canariesInFlight
    this.canariesSucceeded = saved.canariesSucceeded
    // Saved without a lease (an older version): its canaries count as lapsed.
    this.canaryLeaseUntil = saved.canaryLeaseUntil ?? 0
    this.window.load(saved.window)
    if (saved.state._tag !== previous._tag) this.onTransition(saved.state)
    if (moved) this.wake()
  }

  private recordClosed(outcome: Outcome, now: number): void {
    if (outcome === "ignored") return
    this.window.add(now, "calls")
    if (outcome === "success") return
    this.window.add(now, "failures")
    if (this.overThreshold()) this.trip(now)
  }

  private overThreshold(): boolean {
    const { calls, failures } = this.window.totals
    return calls >= this.settings.minimumThroughput && failures / (calls + this.pending) >= this.settings.failureRatio
  }

  private settleCanary(outcome: Outcome, now: number): void {
    this.canariesInFlight--
    switch (outcome) {
      case "failure":
        return this.trip(now)
      case "success":
        if (++this.canariesSucceeded === this.settings.canaries) this.close()
        return
      case "ignored":
        // An interrupted canary proved nothing: its slot goes to a waiting caller.
        return this.wake()
    }
  }

  private trip(now: number): void {
    this.consecutiveTrips++
    this.totalTrips++
    this.enter({
      _tag: "Open",
      since: now,
      until: now + openPeriodMillis(this.settings, this.consecutiveTrips),
      trips: this.consecutiveTrips
    })
  }

  private enter(next: State): void {
    const previous = this.state
    this.state = next
    this.generation++
    this.pending = 0
    // A reset of a closed circuit only clears its window: nothing to announce.
    if (next._tag !== previous._tag) this.onTransition(next)
    this.wake()
  }

  private wake(): void {
    const signal = this.signal
    this.signal = Deferred.unsafeMake(FiberId.none)
    Deferred.unsafeDone(signal, Exit.void)
  }
}

/**
 * What a breaker service runs on: its machine, in memory, or the local mirror of a machine shared
 * on Redis, whose changes go through Redis. Callers read `machine` (its state, its ticket while
 * closed, its signal) and change it only through the rest.
 */
export interface Core {
  readonly machine: Machine
  /** Epoch millis as the machine counts them. */
  readonly now: () => number
  /** Admits a call whatever the state (outside Closed, with side effects). */
  readonly admit: Effect.Effect<Admission>
  /** Reports the outcome of a call admitted with `ticket`. */
  readonly settle: (ticket: number, outcome: Outcome) => void
  /** Moves an open circuit whose period ended to half-open. */
  readonly poll: Effect.Effect<void>
  readonly state: Effect.Effect<State>
  readonly halfOpen: Effect.Effect<void>
  readonly isolate: Effect.Effect<void>
  readonly reset: Effect.Effect<void>
  readonly snapshot: Effect.Effect<Snapshot>
}

/** The core of a breaker in memory: every change applied to `machine` at once. */
export const localCore = (machine: Machine, now: () => number): Core => ({
  machine,
  now,
  admit: Effect.sync(() => machine.admit(now())),
  settle: (ticket, outcome) => machine.settle(ticket, outcome, now()),
  poll: Effect.sync(() => machine.poll(now())),
  state: Effect.sync(() => {
    machine.poll(now())
    return machine.state
  }),
  halfOpen: Effect.sync(() => machine.halfOpen(now())),
  isolate: Effect.sync(() => machine.isolate(now())),
  reset: Effect.sync(() => machine.close()),
  snapshot: Effect.sync(() => machine.snapshot(now()))
})
