import * as Cause from "effect/Cause"
import type * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as ApiError from "../ApiError.js"
import type { Classifier } from "../ApiError.js"
import { monotonicMillis } from "./monotonic.js"
import { above, assertValid, atLeast, positiveInteger, ratio } from "./options.js"
import * as ScopeFinalizer from "./scopeFinalizer.js"
import * as Unpaced from "./unpaced.js"
import { TaggedError } from "./sdkError.js"
import { WaitQueues } from "./waitQueues.js"
import type {
  AcquireOptions,
  AdaptiveOptions,
  LimiterOptions,
  Outcome,
  Permit,
  Priority,
  Service,
  Snapshot
} from "../ConcurrencyLimiter.js"

// -----------------------------------------------------------------------------
// Errors, metrics, outcomes
// -----------------------------------------------------------------------------

export class QueueFull extends TaggedError("QueueFull")<{
  readonly queued: number
  readonly abandoned?: boolean | undefined
}> {
  override get message(): string {
    return this.abandoned === true
      ? `gave up waiting for a concurrency permit (its maxWait ran out, or its abandonWhen completed), ${this.queued} others waiting`
      : `concurrency limiter queue full (${this.queued} waiting)`
  }
}

export const limitGauge = Metric.gauge("weatherproof_concurrency_limit", {
  description: "Permits the concurrency limiter currently grants"
})

export const inFlightGauge = Metric.gauge("weatherproof_concurrency_in_flight", {
  description: "Calls holding a concurrency permit"
})

export const queuedGauge = Metric.gauge("weatherproof_concurrency_queued", {
  description: "Callers waiting for a concurrency permit"
})

export const droppedCounter = Metric.counter("weatherproof_concurrency_dropped", {
  description: "Calls the upstream shed for load (429, 503, a blank 200, work cut by insufficient_system_resource)",
  incremental: true
})

const success: Outcome = { _tag: "Success" }
const overCap: Outcome = { _tag: "Dropped", signal: "cap" }
const overloaded: Outcome = { _tag: "Dropped", signal: "overload" }
const ignored: Outcome = { _tag: "Ignored" }

export const outcomeOf = (exit: Exit.Exit<unknown, unknown>, classify: Classifier = ApiError.classify): Outcome => {
  if (Exit.isSuccess(exit)) return success
  const failure = Cause.failureOption(exit.cause)
  if (Option.isNone(failure)) return ignored
  const verdict = classify(failure.value)
  return verdict._tag !== "LoadShed" ? ignored : verdict.signal === "overload" ? overloaded : overCap
}

// -----------------------------------------------------------------------------
// Gate: the permit ledger with its two FIFO lanes
// -----------------------------------------------------------------------------

/** A caller waiting in a lane. `stamp` is set when it is granted. */
export interface Waiter {
  readonly wake: Deferred.Deferred<void>
  granted: boolean
  stamp: number
}

/** A granted permit's mark: the policy's stamp. */
export interface Grant {
  readonly stamp: number
}

/** What `Gate.enter` decided. */
export type Entry =
  | { readonly _tag: "Granted" } & Grant
  | { readonly _tag: "Queued"; readonly waiter: Waiter }
  | { readonly _tag: "Full" }

/**
 * Counts permits in flight against a movable limit and hands freed permits to waiters in the
 * order of `WaitQueues`: interactive first, arrival order within a priority, where a caller back
 * for another attempt waits ahead of those not yet sent. Every method is synchronous, so each one
 * is atomic on the JavaScript thread. Lowering the limit below what is in flight revokes nothing:
 * new grants wait until enough permits come back (as `Semaphore.resize` does).
 *
 * `stamp` is read at each grant so the policy can tell which permits were sent under which limit.
 */
export class Gate {
  inFlight = 0
  private readonly waiting = new WaitQueues<Waiter>()

  constructor(
    private limit: number,
    private readonly maxQueued: number,
    private readonly stamp: () => number
  ) {}

  get queued(): number {
    return this.waiting.size
  }

  get permits(): number {
    return this.limit
  }

  enter(priority: Priority, returning = false): Entry {
    if (this.inFlight < this.limit && this.queued === 0) {
      this.inFlight++
      return { _tag: "Granted", stamp: this.stamp() }
    }
    if (this.queued >= this.maxQueued) return { _tag: "Full" }
    // Only a caller that waits needs a Deferred: the common, uncontended grant allocates none.
    const waiter: Waiter = { wake: Deferred.unsafeMake<void>(FiberId.none), granted: false, stamp: 0 }
    this.waiting.add(waiter, priority, returning)
    return { _tag: "Queued", waiter }
  }

  /** The waiter gave up (interrupted): leave its lane, or hand back a permit granted meanwhile. */
  cancel(waiter: Waiter): void {
    if (waiter.granted) this.release()
    else this.waiting.delete(waiter)
  }

  release(): void {
    this.inFlight--
    this.dispatch()
  }

  resize(limit: number): void {
    this.limit = limit
    this.dispatch()
  }

  /**
   * Sets the limit for the next grants without granting now: for a permit that has ended
   * upstream but is still counted until its release, which then grants under the new limit.
   */
  relimit(limit: number): void {
    this.limit = limit
  }

  private dispatch(): void {
    while (this.inFlight < this.limit) {
      const next = this.waiting.shift()
      if (next === undefined) return
      this.inFlight++
      next.granted = true
      next.stamp = this.stamp()
      Deferred.unsafeDone(next.wake, Exit.void)
    }
  }
}

// -----------------------------------------------------------------------------
// Policies: how outcomes move the limit
// -----------------------------------------------------------------------------

/**
 * How a permit's acceptance went: not reported, reported nearer the send than the response
 * (`ahead`), or with the response. `grew`: reporting it grew the limit.
 */
export interface Acceptance {
  readonly timing: "unreported" | "ahead" | "withResponse"
  readonly grew: boolean
}

const unreported: Acceptance = { timing: "unreported", grew: false }
const unrefilled: Slot = { refill: false, refilled: false }

/**
 * Moves the limit from outcomes. `stamp` marks a permit at grant; `accepted` gets it back when
 * the upstream took the request, before it ends, and says whether that grew the limit; `record`
 * gets it when the request ends, with how its acceptance went.
 */
export interface Policy {
  readonly limit: number
  readonly stamp: number
  /**
   * Asked as a permit is made: whether it takes a slot upstream that an accepted request's end
   * left to a waiting call (`Slot.refilled`). Absent: no permit does.
   */
  readonly refill?: () => boolean
  /** `grant`: the permit's, for a policy that follows each acceptance to its permit's release. */
  readonly accepted: (stamp: number, refill?: boolean, grant?: Grant) => boolean
  /** `elapsedMillis`: from the grant to the end; `grant`, as for `accepted`. */
  readonly record: (
    stamp: number,
    outcome: Outcome,
    inFlight: number,
    acceptance: Acceptance,
    elapsedMillis: number,
    slot?: Slot,
    grant?: Grant
  ) => void
}

/**
 * What became of a permit's slot upstream: `refill`, it took the slot of an accepted request that
 * ended; `refilled`, its own release lets in a call that waits for it.
 */
export interface Slot {
  readonly refill: boolean
  readonly refilled: boolean
}

export const fixedPolicy = (permits: number): Policy => ({
  limit: permits,
  stamp: 0,
  accepted: () => false,
  record: () => {}
})

/** `AdaptiveOptions` with every default filled in (queue delay floor in milliseconds). */
export interface AimdConfig {
  readonly initial: number
  readonly min: number
  readonly max: number
  readonly backoff: number
  readonly fallBackoff: number
  readonly holdRounds: number
  readonly holdRequests: number
  readonly fallHoldShare: number
  readonly holdGrowth: number
  readonly queueDelayRise: number
  readonly queueDelayWindows: number
  readonly queueDelayFloorMillis: number
  readonly latencyRise: number
  readonly overloadShare: number
  readonly overloadFloor: number
}

/** `ConcurrencyLimiter.defaults`: the adaptive limiter's options when left out. */
export const adaptiveDefaults = {
  initial: 8,
  min: 1,
  /** Above DeepSeek's published caps (2,500 concurrent requests per account for flash). */
  max: 10_000,
  backoff: 0.9,
  fallBackoff: 0.25,
  holdRounds: 6,
  holdRequests: 48,
  fallHoldShare: 0.125,
  holdGrowth: 1.5,
  queueDelayRise: 2,
  queueDelayWindows: 3,
  latencyRise: 4,
  overloadShare: 0.5,
  overloadFloor: 0.5,
  queueDelayFloor: Duration.millis(250)
} as const

const aimdConfig = (options: AdaptiveOptions = {}): AimdConfig => {
  const d = adaptiveDefaults
  const min = Math.floor(options.min ?? d.min)
  const max = options.max === undefined ? Math.max(min, d.max) : Math.floor(options.max)
  return {
    min,
    max,
    initial: clamp(Math.floor(options.initial ?? d.initial), min, max),
    backoff: options.backoff ?? d.backoff,
    fallBackoff: options.fallBackoff ?? d.fallBackoff,
    holdRounds: options.holdRounds ?? d.holdRounds,
    holdRequests: options.holdRequests ?? d.holdRequests,
    fallHoldShare: options.fallHoldShare ?? d.fallHoldShare,
    holdGrowth: options.holdGrowth ?? d.holdGrowth,
    queueDelayRise: options.queueDelayRise ?? d.queueDelayRise,
    queueDelayWindows: options.queueDelayWindows ?? d.queueDelayWindows,
    queueDelayFloorMillis: Duration.toMillis(options.queueDelayFloor ?? d.queueDelayFloor),
    latencyRise: options.latencyRise ?? d.latencyRise,
    overloadShare: options.overloadShare ?? d.overloadShare,
    overloadFloor: options.overloadFloor ?? d.overloadFloor
  }
}

const clamp = (n: number, min: number, max: number): number => Math.min(max, Math.max(min, n))

/**
 * How far an acceptance at the top of the limit lets it grow in slow start: one request while
 * the limit is small, so a small cap costs a single 429 to find. Above that, before any cap was
 * measured (no ceiling), an eighth of the level: 8 → 2,500 in about 60 round trips, at the price
 * of at most an eighth of the cap in 429s, once, when it is found; above a measured ceiling,
 * where a cap that has not moved is the likely finding, 1/32 of it from 64 on.
 */
const slowStartStep = (level: number, ceiling: number): number =>
  Number.isFinite(ceiling) ? (level < 64 ? 1 : Math.floor(level / 32)) : (level < 32 ? 1 : Math.floor(level / 8))

/** The share of acceptances ahead of their responses above which acceptances clock slow start. */
const aheadMajority = 0.5

/** Where the controller is in its cycle; see the module doc of `ConcurrencyLimiter`. */
type Phase = "slowStart" | "recover" | "hold"

/**
 * Every field of an `Aimd` but the slots of one process's permits (`vacated`, `refilling`), as
 * plain data that survives JSON (`ceiling` is `null` when there is none): what processes sharing
 * one limit keep on Redis and apply their outcomes to.
 */
export interface AimdState {
  readonly phase: Phase
  readonly ceiling: number | null
  readonly value: number
  readonly epoch: number
  readonly succeededSinceDecrease: boolean
  readonly acceptanceClocked: boolean
  readonly aheadShare: number
  readonly confirmed: number
  readonly acceptedOutstanding: number
  readonly acceptedPeak: number
  readonly acceptedOutstandingPeak: number
  readonly roundSize: number
  readonly roundSuccesses: number
  readonly roundOverloads: number
  readonly peak: number
  readonly holdLeft: number
  readonly holdProved: boolean
  readonly holdShare: number
  readonly delaySum: number
  readonly delayCount: number
  readonly windowMeans: ReadonlyArray<number>
  readonly congestedWindows: number
  readonly roundFastest: number | null
  readonly roundTimed: number
  readonly fastestBaseline: number | null
}

/** Keeps a round of fractional steps that sum to a whole from rounding down. */
const epsilon = 1e-9

/** How many past window means the queue-delay baseline (their minimum) looks back on. */
const baselineWindows = 10

/** The successes a round's fastest is taken over: fewer say too little. */
const latencySamples = 8
/** Below this (milliseconds) a baseline is noise: a round-trip on loopback, a scheduler hop. */
const latencyFloorMillis = 5
/**
 * How much the latency baseline may rise per round without a faster round: an upstream that
 * became slower for good becomes the baseline within some 700 rounds.
 */
const latencyDrift = 1.001

/**
 * Loss-based AIMD: slow start, a decrease per round of drops, a return to the last accepted level,
 * a hold there, slow-start probes above it, and a queue-delay brake (the module doc of
 * `ConcurrencyLimiter` gives the reasons). The limit is a real number, grown in fractions per
 * success so in-flight rises one request at a time; the gate uses its floor.
 */
export class Aimd implements Policy {
  private phase: Phase = "slowStart"
  /** The highest concurrency known to have been accepted at the last drop. */
  private ceiling = Infinity
  private value: number
  private epoch = 0
  /**
   * Whether a permit granted since the last decrease has been accepted or has succeeded (false:
   * the cap is falling).
   */
  private succeededSinceDecrease = true
  /** Whether the transport reports acceptances: then probes start with one request. */
  private acceptanceClocked = false
  /**
   * The recent share of acceptances that came ahead of their responses (an average over about
   * ten): while most do, acceptances clock slow start and successes do not grow it as well,
   * since two clocks would put several requests at a time above what was accepted. Where they
   * come with the response, successes clock it (classic slow start).
   */
  private aheadShare = 1
  /** The highest level accepted since the last decrease (`acceptedOutstanding` at an acceptance), under the limit. */
  private confirmed = 0
  /** Requests accepted upstream and not ended: the concurrency the upstream is known to hold. */
  private acceptedOutstanding = 0
  /**
   * The most requests the upstream is known to have held at once since the last decrease (the
   * level at each acceptance, from the level held at the decrease). A 429 while recovering above
   * it is no fall: the ceiling recovery climbs to is taken from in-flight, which counts requests
   * on their way, and where this process reads the overshoot's 429s late (starved of CPU) none
   * has lowered it yet, so it can sit above the cap.
   */
  private acceptedPeak = 0
  /**
   * The most requests accepted and not ended at once since the last decrease: `acceptedPeak`
   * without the replacements on their way, which it counts as held though another request may
   * take the slot one was sent for (a late one of the first burst, say), so only what the upstream
   * was seen to hold. Whether a 429 is above every level held is judged on it.
   */
  private acceptedOutstandingPeak = 0
  /** Slots accepted requests left on ending to a call that waits: the next permits made take them. */
  private vacated = 0
  /**
   * Permits that took a vacated slot, not yet accepted or ended: each request takes a slot the
   * upstream held a round trip ago, so the level held counts them. Without them a limit whose
   * requests end one after another, each replaced a round trip before the upstream sees it,
   * never has all of them accepted at once, and slow start stalls far below the cap (at 23
   * under a cap of 100, with 3 s answers and 100 ms each way). A controller made from a shared
   * state starts with none, so a permit made before may find none to take off.
   */
  private refilling = 0
  private roundSize: number
  private roundSuccesses = 0
  /** Overload drops (503) of the round's permits. */
  private roundOverloads = 0
  /** The highest limit held since the cap was last measured: overload steps stop at a share of it. */
  private peak: number
  private holdLeft = 0
  /**
   * Whether a whole round has ended in this hold. Until then its level may be one the upstream
   * never held: the in-flight a ceiling is taken from counts requests on their way, and with the
   * upstream a round trip away (or this process slow to read its answers) that set it above the
   * cap, where a 429 read as a fall cost a second slow start's overshoot.
   */
  private holdProved = false
  /**
   * The share of a full hold the next holds last: `fallHoldShare` after the cap fell (a cap that
   * moves may well come back), grown `holdGrowth` times by each probe that finds it where it was,
   * up to 1.
   */
  private holdShare = 1
  private delaySum = 0
  private delayCount = 0
  private readonly windowMeans: Array<number> = []
  private congestedWindows = 0
  /** The fastest success of the round (milliseconds from grant to end), and how many were timed. */
  private roundFastest = Infinity
  private roundTimed = 0
  /** The lowest round fastest seen, let rise `latencyDrift` a round. */
  private fastestBaseline = Infinity

  constructor(private readonly config: AimdConfig) {
    this.value = config.initial
    this.peak = config.initial
    this.roundSize = config.initial
  }

  /**
   * A controller of `config` in `state`, its limit brought within `config`'s bounds and the level
   * proved under it (a state merged from several processes, or a limit lowered on the server, can
   * hold one at or above it, which would keep slow start from ever growing).
   */
  static fromState(config: AimdConfig, state: AimdState): Aimd {
    const aimd: Aimd = Object.assign(new Aimd(config), state, {
      ceiling: state.ceiling ?? Infinity,
      value: clamp(state.value, config.min, config.max),
      windowMeans: [...state.windowMeans],
      roundFastest: state.roundFastest ?? Infinity,
      fastestBaseline: state.fastestBaseline ?? Infinity
    })
    aimd.confirmed = Math.min(aimd.confirmed, aimd.limit - 1)
    return aimd
  }

  toState(): AimdState {
    return {
      phase: this.phase,
      ceiling: Number.isFinite(this.ceiling) ? this.ceiling : null,
      value: this.value,
      epoch: this.epoch,
      succeededSinceDecrease: this.succeededSinceDecrease,
      acceptanceClocked: this.acceptanceClocked,
      aheadShare: this.aheadShare,
      confirmed: this.confirmed,
      acceptedOutstanding: this.acceptedOutstanding,
      acceptedPeak: this.acceptedPeak,
      acceptedOutstandingPeak: this.acceptedOutstandingPeak,
      roundSize: this.roundSize,
      roundSuccesses: this.roundSuccesses,
      roundOverloads: this.roundOverloads,
      peak: this.peak,
      holdLeft: this.holdLeft,
      holdProved: this.holdProved,
      holdShare: this.holdShare,
      delaySum: this.delaySum,
      delayCount: this.delayCount,
      windowMeans: [...this.windowMeans],
      congestedWindows: this.congestedWindows,
      roundFastest: Number.isFinite(this.roundFastest) ? this.roundFastest : null,
      roundTimed: this.roundTimed,
      fastestBaseline: Number.isFinite(this.fastestBaseline) ? this.fastestBaseline : null
    }
  }

  get limit(): number {
    return Math.floor(this.value + epsilon)
  }

  get stamp(): number {
    return this.epoch
  }

  refill(): boolean {
    if (this.vacated === 0) return false
    this.vacated--
    this.refilling++
    return true
  }

  /**
   * A request accepted upstream proves the level the upstream holds: the requests accepted and
   * not ended, with it, and the replacements of ended ones on their way (`refilling`). Above a
   * ceiling only a replacement's acceptance counts them: a request sent into a new slot there (a
   * probe) may have taken the slot a replacement on its way was sent for, which then draws a 429,
   * and counting it stepped the probe twice, two requests above an unchanged cap. Not its
   * grant's level, which counts requests still on their way (waiting for a connection, say): on
   * a fast upstream they would let the limit outrun what was accepted by far. In slow start, the
   * acceptance that brings that level to the top of the limit lets more requests go above it at
   * once (`slowStartStep`): growth clocked by round trips, not by responses, with few requests
   * at a time in untried territory, so an overshoot costs one 429 at small limits and at most an
   * eighth of the cap at large ones.
   */
  accepted(stamp: number, refill = false): boolean {
    this.acceptanceClocked = true
    this.acceptedOutstanding++
    if (refill) this.refilling = Math.max(0, this.refilling - 1)
    const held = this.acceptedOutstanding + this.refilling
    this.acceptedPeak = Math.max(this.acceptedPeak, held)
    this.acceptedOutstandingPeak = Math.max(this.acceptedOutstandingPeak, this.acceptedOutstanding)
    if (stamp !== this.epoch) return false
    const level = refill || !Number.isFinite(this.ceiling) ? held : this.acceptedOutstanding
    this.succeededSinceDecrease = true
    if (this.phase === "recover" && this.acceptedAhead && this.congestedWindows === 0) {
      this.grow()
      return true
    }
    if (level <= this.confirmed) return false
    this.confirmed = level
    if (this.phase !== "slowStart" || this.congestedWindows > 0 || level < this.limit) return false
    this.setValue(level + slowStartStep(level, this.ceiling))
    return true
  }

  record(
    stamp: number,
    outcome: Outcome,
    inFlight: number,
    acceptance: Acceptance,
    elapsedMillis: number,
    slot: Slot = unrefilled
  ): void {
    if (acceptance.timing !== "unreported") {
      this.acceptedOutstanding--
      if (slot.refilled) this.vacated++
      this.aheadShare += 0.1 * ((acceptance.timing === "ahead" ? 1 : 0) - this.aheadShare)
    } else if (slot.refill) this.refilling = Math.max(0, this.refilling - 1)
    const overload = outcome._tag === "Dropped" && outcome.signal === "overload"
    if (stamp !== this.epoch) {
      // Sent before the last decrease, at the old limit: it must not decrease again, but a drop
      // sent alongside the one that did means fewer requests were accepted at that level.
      if (outcome._tag === "Dropped" && !overload && stamp === this.epoch - 1) this.lowerCeiling(inFlight - 1)
      return
    }
    if (overload) this.overloaded(inFlight)
    else if (outcome._tag === "Dropped") this.decrease(inFlight)
    else if (outcome._tag === "Success") {
      const clocked = acceptance.grew || (acceptance.timing !== "unreported" && this.aheadShare >= aheadMajority)
      this.succeeded(inFlight, outcome.queueDelay, clocked, elapsedMillis)
    }
  }

  private succeeded(
    inFlight: number,
    queueDelay: Duration.Duration | undefined,
    clockedByAcceptance: boolean,
    elapsedMillis: number
  ): void {
    this.succeededSinceDecrease = true
    if (queueDelay !== undefined) {
      this.delaySum += Duration.toMillis(queueDelay)
      this.delayCount++
    }
    this.roundFastest = Math.min(this.roundFastest, elapsedMillis)
    this.roundTimed++
    // An unused limit proves nothing about the upstream: neither grow it nor count the round.
    if (inFlight < this.value / 2) return
    if (this.congestedWindows === 0 && !this.clockedOtherwise(clockedByAcceptance)) this.grow()
    this.roundSuccesses++
    this.countTowardsRound()
  }

  /**
   * Whether slow start grows by acceptances rather than by this success: while they come ahead of
   * their responses, and always when probing above a ceiling with acceptances reported ahead (a
   * success per request there would double the probe each round, and above an unchanged cap each
   * extra request draws a 429). Acceptances that come with their responses never reach the top of
   * the limit: successes clock it then (a request a round above a ceiling), or nothing would.
   */
  private clockedOtherwise(clockedByAcceptance: boolean): boolean {
    switch (this.phase) {
      case "slowStart":
        return clockedByAcceptance || (this.acceptanceClocked && !this.acceptedWithResponses && Number.isFinite(this.ceiling))
      case "recover":
        return clockedByAcceptance
      case "hold":
        return false
    }
  }

  /** An overload drop counts towards its round; whether the round steps down is judged at its end. */
  private overloaded(inFlight: number): void {
    if (inFlight < this.value / 2) return
    this.roundOverloads++
    this.countTowardsRound()
  }

  private countTowardsRound(): void {
    if (this.roundSuccesses + this.roundOverloads >= this.roundSize) this.endRound()
  }

  /** One success's share of the round's growth, so in-flight climbs one request at a time. */
  private grow(): void {
    switch (this.phase) {
      case "slowStart":
        // Above a ceiling, with acceptances that come with their responses (none reaches the
        // top), a request a round: a success each would double the probe every round.
        this.setValue(this.value + (this.acceptedWithResponses && Number.isFinite(this.ceiling) ? 1 / this.roundSize : 1))
        return
      case "recover": {
        // The gap at the round's start, in equal steps: back at the ceiling within the round.
        const next = this.value + Math.max(1, this.ceiling - this.roundSize) / this.roundSize
        if (next < this.ceiling - epsilon) return this.setValue(next)
        this.setValue(this.ceiling)
        return this.startHold()
      }
      case "hold":
        return
    }
  }

  private endRound(): void {
    this.judgeQueueDelay()
    const slowedTo = this.judgeLatency()
    if (this.roundOverloads >= this.config.overloadShare * (this.roundOverloads + this.roundSuccesses)) this.stepDownForOverload()
    else if (this.congestedWindows >= this.config.queueDelayWindows) this.easeOff()
    else if (slowedTo !== undefined) this.slowedDown(slowedTo)
    else if (this.congestedWindows === 0) this.advancePhase()
    this.startRound()
  }

  /**
   * Overload dominated the round: the server as a whole is shedding load, so step back gently,
   * never below `overloadFloor` of the highest limit held since the cap was measured, and grow back
   * (to the ceiling, or by slow start) once it stops dominating. The ceiling is kept: overload says
   * nothing about the account's cap.
   */
  private stepDownForOverload(): void {
    const floor = Math.max(this.config.min, this.peak * this.config.overloadFloor)
    this.setValue(Math.max(floor, this.value * this.config.backoff))
    if (this.phase === "hold") this.phase = "recover"
  }

  private advancePhase(): void {
    // Probing is slow start: in-flight climbs one request at a time above the ceiling, so an
    // unchanged cap costs a single 429 while a risen one is found at full speed. Clocked by
    // acceptances, it starts with the one request that probes.
    if (this.phase !== "hold") return
    this.holdProved = true
    if (--this.holdLeft > 0) return
    this.phase = "slowStart"
    if (this.acceptanceClocked) this.setValue(this.value + 1)
  }

  /** Closes the round's queue-delay window and counts consecutive congested windows. */
  private judgeQueueDelay(): void {
    if (this.delayCount === 0) return
    const mean = this.delaySum / this.delayCount
    this.delaySum = 0
    this.delayCount = 0
    if (this.windowMeans.length > 0) {
      const baseline = Math.max(Math.min(...this.windowMeans), this.config.queueDelayFloorMillis)
      this.congestedWindows = mean >= this.config.queueDelayRise * baseline ? this.congestedWindows + 1 : 0
    }
    this.windowMeans.push(mean)
    if (this.windowMeans.length > baselineWindows) this.windowMeans.shift()
  }

  /**
   * Closes the round's latency window once it timed `latencySamples` successes. In slow start
   * clocked by successes (where acceptances come ahead they already show what the upstream holds,
   * and the queue-delay brake its queueing), a round whose fastest success took `latencyRise`
   * times the baseline says where the level should have stopped: the level its requests were
   * granted at (slow start doubles the limit a round, so about half the round's starting level)
   * scaled down to that threshold. `undefined` otherwise.
   */
  private judgeLatency(): number | undefined {
    if (this.roundTimed < latencySamples) return undefined
    const fastest = this.roundFastest
    const baseline = this.fastestBaseline
    this.roundFastest = Infinity
    this.roundTimed = 0
    this.fastestBaseline = Math.min(fastest, baseline * latencyDrift)
    if (this.phase !== "slowStart" || this.acceptedAhead || !Number.isFinite(baseline)) return undefined
    const threshold = this.config.latencyRise * Math.max(baseline, latencyFloorMillis)
    return fastest >= threshold ? (this.roundSize / 2) * threshold / fastest : undefined
  }

  /**
   * Slow start slowed responses down: requests wait somewhere (upstream, or in this process),
   * and more of them at once would only wait longer. A probe above a measured level goes back
   * to it; a first climb stops at `level` (at most `backoff` of the limit). Either holds there.
   */
  private slowedDown(level: number): void {
    if (Number.isFinite(this.ceiling)) this.setValue(Math.min(this.value, this.ceiling))
    else {
      this.setValue(Math.min(this.value * this.config.backoff, level))
      this.ceiling = this.value
    }
    this.startHold()
  }

  /** Queue delay stayed high: the upstream is queueing us, so step back gently before it drops. */
  private easeOff(): void {
    this.setValue(this.value * this.config.backoff)
    this.ceiling = this.value
    this.congestedWindows = 0
    this.startHold()
  }

  private decrease(inFlight: number): void {
    const level = Math.min(this.value, inFlight)
    // Never where that would leave less than a fall does: where next to nothing was seen held
    // (other clients fill the account, or a state written before `acceptedOutstandingPeak` reads
    // 0), a fall keeps more, and slow start climbs back from it.
    const unprovedHold = this.phase === "hold" && !this.holdProved
    const aboveAccepted = (this.phase === "recover" || unprovedHold) && this.acceptanceClocked &&
      level > this.acceptedOutstandingPeak && this.acceptedOutstandingPeak >= level * this.config.fallBackoff
    const unproved = this.phase === "slowStart" || this.acceptedWithResponses || unprovedHold
    if ((this.succeededSinceDecrease && unproved) || aboveAccepted) {
      // An ordinary overshoot: everything but the dropped request was accepted. So is a drop at
      // or under the ceiling where acceptances come with responses: the level held counts
      // requests on their way to and from the upstream, which its cap does not, so it is no
      // proof of what the upstream held; a second drop before a success still reads as a fall.
      // So is one in a hold's first round, at a level not yet held for a round. And one while
      // recovering or in a hold's first round above every level accepted since the last
      // decrease, even before anything sent since was accepted: the ceiling was set too high (by
      // requests on their way, or by the drops of a burst read one at a time), and the most the
      // upstream was seen to hold is the new one.
      // Not in-flight alone: after a brake lowered the limit, requests granted above it are
      // still in flight, and a drop among them must not raise the ceiling to where it braked.
      const ceiling = Math.max(this.config.min, aboveAccepted ? Math.min(this.acceptedPeak, level - 1) : level - 1)
      if (Number.isFinite(this.ceiling) && ceiling <= this.ceiling) this.holdShare = Math.min(1, this.holdShare * this.config.holdGrowth)
      this.ceiling = ceiling
      this.setValue(Math.min(this.ceiling, level * this.config.backoff))
      if (this.value < this.ceiling) this.phase = "recover"
      else this.startHold()
    } else {
      // Dropped at or under a level already accepted (holding or recovering), or again before
      // anything sent at the lowered limit succeeded: the cap itself fell.
      this.ceiling = Infinity
      this.setValue(level * this.config.fallBackoff)
      this.phase = "slowStart"
      this.holdShare = this.config.fallHoldShare
    }
    this.epoch++
    this.succeededSinceDecrease = false
    this.confirmed = 0
    this.acceptedPeak = this.acceptedOutstanding + this.refilling
    this.acceptedOutstandingPeak = this.acceptedOutstanding
    // The upstream is full: slots left for waiting calls may not be there any more.
    this.vacated = 0
    // The cap was just measured: overload steps are bounded by it from here.
    this.peak = Number.isFinite(this.ceiling) ? this.ceiling : this.value
    this.startRound()
  }

  /** Whether acceptances are reported but come with their responses, not ahead of them. */
  private get acceptedWithResponses(): boolean {
    return this.acceptanceClocked && this.aheadShare < aheadMajority
  }

  /** Whether acceptances are reported, most of them ahead of their responses. */
  private get acceptedAhead(): boolean {
    return this.acceptanceClocked && this.aheadShare >= aheadMajority
  }

  private lowerCeiling(accepted: number): void {
    if (accepted >= this.ceiling) return
    this.ceiling = Math.max(this.config.min, accepted)
    this.setValue(Math.min(this.value, this.ceiling))
  }

  /**
   * Holds from a fresh round, for `holdRounds` rounds and at least `holdRequests` successes (their
   * `holdShare` after a fall), and at least one round.
   */
  private startHold(): void {
    this.phase = "hold"
    this.holdProved = false
    const { holdRequests, holdRounds } = this.config
    this.holdLeft = Math.max(1, Math.ceil(this.holdShare * Math.max(holdRounds, holdRequests / this.limit)))
    this.startRound()
  }

  private startRound(): void {
    this.roundSize = this.limit
    this.roundSuccesses = 0
    this.roundOverloads = 0
  }

  private setValue(value: number): void {
    this.value = clamp(value, this.config.min, this.config.max)
    this.peak = Math.max(this.peak, this.value)
    // A level proved at or above a lowered limit would keep slow start from growing by the
    // acceptances at its new top.
    this.confirmed = Math.min(this.confirmed, this.limit - 1)
  }
}

// -----------------------------------------------------------------------------
// Permits
// -----------------------------------------------------------------------------

/** What a permit reports to: the permits held, and how a new limit applies. */
export interface Ledger {
  readonly inFlight: number
  /** Applies `limit` now (granting to waiters if it grew). */
  resize(limit: number): void
  /**
   * Applies `limit` to the next grants without granting now: for a permit that has ended
   * upstream but is still counted until its release, which then grants under the new limit.
   */
  relimit(limit: number): void
}

/** What a permit tells its owner besides the ledger: reading errors, and changes to publish. */
export interface PermitHooks {
  readonly classify: Classifier | undefined
  /** Whether releasing a permit now grants it to a waiting call (the slot it held upstream is refilled). */
  readonly refills: () => boolean
  readonly changed: () => void
  readonly dropped: () => void
}

/**
 * Marks a cap's 429 with no `Retry-After` that a request alone on its ledger met (`Unpaced`): a
 * lower limit would not pace its retry (the upstream refuses even one, as under an account-wide
 * rate limit), so the retry budget must.
 */
const noteUnpaced = (exit: Exit.Exit<unknown, unknown>, classify: Classifier = ApiError.classify): void => {
  if (Exit.isSuccess(exit)) return
  const failure = Cause.failureOption(exit.cause)
  if (Option.isNone(failure)) return
  const verdict = classify(failure.value)
  if (verdict._tag === "LoadShed" && verdict.signal === "cap" && Option.isNone(verdict.retryAfter)) {
    Unpaced.markUnpaced(failure.value)
  }
}

/**
 * The permit granted with `grant`, and `settle` to report an exit synchronously: the first
 * report counts. A success reported without a queue delay takes the one the holder recorded.
 * An acceptance is ahead of its response when it came nearer the send than the end.
 */
export const makePermit = (policy: Policy, ledger: Ledger, grant: Grant, clock: Clock.Clock, hooks: PermitHooks) => {
  const { stamp } = grant
  const grantedAt = monotonicMillis(clock)
  const refill = policy.refill?.() ?? false
  let completed = false
  let acceptedAt: number | undefined
  let grewOnAcceptance = false
  let queueDelay: Duration.Duration | undefined
  const acceptance = (): Acceptance =>
    acceptedAt === undefined ? unreported : {
      timing: monotonicMillis(clock) - acceptedAt > acceptedAt - grantedAt ? "ahead" : "withResponse",
      grew: grewOnAcceptance
    }
  const report = (outcome: Outcome): void => {
    if (completed) return
    completed = true
    const observed = outcome._tag === "Success" && outcome.queueDelay === undefined && queueDelay !== undefined
      ? { _tag: "Success" as const, queueDelay }
      : outcome
    const elapsed = monotonicMillis(clock) - grantedAt
    policy.record(stamp, observed, ledger.inFlight, acceptance(), elapsed, { refill, refilled: hooks.refills() }, grant)
    // The request no longer holds a slot upstream, but its permit is counted until released:
    // granting now would place the next request one level too high.
    ledger.relimit(policy.limit)
    if (outcome._tag === "Dropped") hooks.dropped()
    hooks.changed()
  }
  const settle = (exit: Exit.Exit<unknown, unknown>): void => {
    if (ledger.inFlight <= 1) noteUnpaced(exit, hooks.classify)
    report(outcomeOf(exit, hooks.classify))
  }
  const permit: Permit = {
    complete: (outcome) => Effect.sync(() => report(outcome)),
    settle: (exit) => Effect.sync(() => settle(exit)),
    accepted: Effect.sync(() => {
      if (completed || acceptedAt !== undefined) return
      acceptedAt = monotonicMillis(clock)
      grewOnAcceptance = policy.accepted(stamp, refill, grant)
      ledger.resize(policy.limit)
      hooks.changed()
    }),
    recordQueueDelay: (delay) => Effect.sync(() => (queueDelay = delay))
  }
  return { permit, settle }
}

// -----------------------------------------------------------------------------
// The service
// -----------------------------------------------------------------------------

/**
 * Waits for `wake`, or gives the place up once `abandonWhen` completes, failing with an
 * `abandoned` `QueueFull` that counts the callers still `queued`; interrupted or abandoned, it
 * `leave`s (the queue, or a permit granted meanwhile). `publish` after either.
 */
export const awaitWake = (
  wake: Deferred.Deferred<void>,
  restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>,
  abandonWhen: Effect.Effect<void> | undefined,
  queued: () => number,
  leave: () => void,
  publish: () => void
): Effect.Effect<void, QueueFull> => {
  const leaving = Effect.sync(() => {
    leave()
    publish()
  })
  const woken = Effect.as(Deferred.await(wake), true)
  const turn = abandonWhen === undefined ? woken : Effect.raceFirst(woken, Effect.as(abandonWhen, false))
  return restore(turn).pipe(
    Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : leaving),
    Effect.flatMap((wokenUp) =>
      wokenUp
        ? Effect.sync(publish)
        : Effect.zipRight(leaving, Effect.suspend(() => Effect.fail(new QueueFull({ queued: queued(), abandoned: true }))))
    )
  )
}

/** How a permit released unsettled is settled: as ignored. */
export const interrupted: Exit.Exit<never> = Exit.interrupt(FiberId.none)

/**
 * Settles a permit with `exit` (one released unsettled, as ignored: the first report stands), then
 * `release`s it however settling ends (a classifier that throws).
 */
export const settleThenRelease = (
  settle: (exit: Exit.Exit<unknown, unknown>) => void,
  release: () => void,
  exit: Exit.Exit<unknown, unknown> = interrupted
): void => {
  try {
    settle(exit)
  } finally {
    release()
  }
}

/** `use(permit)`, a throw while it builds its effect a defect of that effect (run with the permit held). */
export const effectOf = <P, A, E, R>(use: (permit: P) => Effect.Effect<A, E, R>, permit: P): Effect.Effect<A, E, R> => {
  try {
    return use(permit)
  } catch (defect) {
    return Effect.die(defect)
  }
}

/** A queue's bound: a whole number ≥ 0 (0: none waits), or Infinity. */
const maxQueuedProblem = (maxQueued: number | undefined) =>
  maxQueued === undefined || maxQueued === Infinity || (Number.isInteger(maxQueued) && maxQueued >= 0)
    ? undefined
    : `maxQueued must be a whole number ≥ 0 (0: none waits) or Infinity, got ${maxQueued}`

export const make = (policy: Policy, options: LimiterOptions = {}): Effect.Effect<Service> =>
  Effect.clockWith((clock) => Effect.sync(() => {
    assertValid("ConcurrencyLimiter", [maxQueuedProblem(options.maxQueued)])
    const gate = new Gate(policy.limit, options.maxQueued ?? Infinity, () => policy.stamp)
    const tag = <Type, In, Out>(metric: Metric.Metric<Type, In, Out>) =>
      options.name === undefined ? metric : Metric.tagged(metric, "limiter", options.name)
    const gauges = { limit: tag(limitGauge), inFlight: tag(inFlightGauge), queued: tag(queuedGauge) }
    const droppedCount = tag(droppedCounter)

    const snapshot = Effect.sync((): Snapshot => ({ limit: gate.permits, inFlight: gate.inFlight, queued: gate.queued }))
    // Gauges are set in the same synchronous step as the ledger changes: on the hot path, three
    // `Metric.set` effects per change cost more than the rest of the limiter.
    const publish = (): void => {
      gauges.limit.unsafeUpdate(gate.permits, [])
      gauges.inFlight.unsafeUpdate(gate.inFlight, [])
      gauges.queued.unsafeUpdate(gate.queued, [])
    }
    const hooks: PermitHooks = {
      classify: options.classify,
      refills: () => gate.queued > 0 && gate.inFlight <= gate.permits,
      changed: publish,
      dropped: () => droppedCount.unsafeUpdate(1, [])
    }
    const permitFor = (grant: Grant) => makePermit(policy, gate, grant, clock, hooks)
    // Its series from the start: a series shows only from its first update.
    publish()
    droppedCount.unsafeUpdate(0, [])

    /** Waits in its lane for the permit `entry` queued for; what it was granted with. */
    const awaitTurn = (
      entry: Exclude<Entry, { readonly _tag: "Granted" }>,
      restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>,
      abandonWhen: Effect.Effect<void> | undefined
    ): Effect.Effect<Grant, QueueFull> => {
      if (entry._tag === "Full") return Effect.fail(new QueueFull({ queued: gate.queued }))
      const { waiter } = entry
      const queued = () => gate.queued
      return Effect.as(awaitWake(waiter.wake, restore, abandonWhen, queued, () => gate.cancel(waiter), publish), waiter)
    }

    /**
     * Takes a permit, waiting in its lane if needed, then runs `use` with what it was granted with.
     * Run uninterruptibly. An uncontended grant is decided in the same synchronous step.
     */
    const enter = <A, E, R>(
      acquireOptions: AcquireOptions | undefined,
      restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>,
      use: (grant: Grant) => Effect.Effect<A, E, R>
    ): Effect.Effect<A, E | QueueFull, R> =>
      Effect.suspend(() => {
        const entry = gate.enter(acquireOptions?.priority ?? "interactive", acquireOptions?.returning)
        publish()
        return entry._tag === "Granted"
          ? use(entry)
          : Effect.flatMap(awaitTurn(entry, restore, acquireOptions?.abandonWhen), use)
      })

    const release = () => {
      gate.release()
      publish()
    }

    // Releasing is one synchronous step: it needs none of the fiber refs `Effect.addFinalizer`
    // diffs and restores around it. A permit released unsettled (a stream its consumer stopped)
    // is settled as ignored, so that the policy no longer counts it accepted.
    const acquire = (acquireOptions?: AcquireOptions): Effect.Effect<Permit, QueueFull, Scope.Scope> =>
      Effect.uninterruptibleMask((restore) =>
        enter(acquireOptions, restore, (grant) => {
          const { permit, settle } = permitFor(grant)
          return Effect.as(ScopeFinalizer.addFinalizer(Effect.sync(() => settleThenRelease(settle, release))), permit)
        })
      )

    // Already uninterruptible, so `Effect.exit` then settling and releasing is `Effect.onExit`
    // without the second mask and the extra steps it takes.
    const withPermit: Service["withPermit"] = (use, acquireOptions) =>
      Effect.uninterruptibleMask((restore) =>
        enter(acquireOptions, restore, (grant) => {
          const { permit, settle } = permitFor(grant)
          return Effect.flatMap(Effect.exit(restore(effectOf(use, permit))), (exit) => {
            settleThenRelease(settle, release, exit)
            return exit
          })
        })
      )

    publish()
    return { acquire, withPermit, snapshot }
  }))

/**
 * Ratios that would not move the limit sensibly are refused, and so are a `min` or `max` under one
 * or a `max` under `min` (which of the two was meant?), as given; `initial` is brought within them,
 * and refused when it is no number (NaN: a limit of NaN grants nothing).
 */
const validateAdaptive = (options: AdaptiveOptions, config: AimdConfig): void =>
  assertValid("ConcurrencyLimiter", [
    atLeast("min", options.min ?? config.min, 1),
    atLeast("max", options.max ?? config.max, 1),
    options.max === undefined || options.max < 1 || options.max >= config.min
      ? undefined
      : `max must be at least min (${config.min}), got ${options.max}`,
    Number.isNaN(config.initial) ? "initial must be a number, got NaN" : undefined,
    ratio("backoff", config.backoff, true),
    ratio("fallBackoff", config.fallBackoff, true),
    ratio("fallHoldShare", config.fallHoldShare),
    above("holdGrowth", config.holdGrowth, 1),
    above("queueDelayRise", config.queueDelayRise, 1),
    atLeast("queueDelayWindows", config.queueDelayWindows, 1),
    above("latencyRise", config.latencyRise, 1),
    ratio("overloadShare", config.overloadShare),
    ratio("overloadFloor", config.overloadFloor)
  ])

/** See `ConcurrencyLimiter.ceiling`: no latency or queue-delay brake, so only refusals move it. */
export const ceilingOptions = (permits: number): AdaptiveOptions => {
  // A ceiling below one would be raised to one: every call one at a time, where `false` (no limit) was likely meant.
  assertValid("ConcurrencyLimiter", [
    permits >= 1 ? undefined : `ceiling must be at least 1, got ${permits} (for no limit, leave the limiter out: Policy's concurrency: false)`
  ])
  return { initial: permits, max: permits, latencyRise: Infinity, queueDelayRise: Infinity }
}

/** `options` with every default filled in; throws `IllegalArgumentException` on options that cannot work. */
export const adaptiveConfig = (options: AdaptiveOptions): AimdConfig => {
  const config = aimdConfig(options)
  validateAdaptive(options, config)
  return config
}

/** The adaptive policy of `options`; throws `IllegalArgumentException` on options that cannot work. */
export const adaptivePolicy = (options: AdaptiveOptions): Policy => new Aimd(adaptiveConfig(options))

/** A fixed limit of `permits`; dies with `IllegalArgumentException` unless it is a whole number, at least 1. */
export const makeFixed = (permits: number, options?: LimiterOptions): Effect.Effect<Service> =>
  Effect.flatMap(Effect.sync(() => {
    assertValid("ConcurrencyLimiter", [positiveInteger("permits", permits)])
    return fixedPolicy(permits)
  }), (policy) => make(policy, options))

export const makeAdaptive = (options: AdaptiveOptions = {}): Effect.Effect<Service> =>
  Effect.flatMap(Effect.sync(() => adaptivePolicy(options)), (policy) => make(policy, options))
