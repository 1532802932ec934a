/**
 * The account pool's permits: one lane per (account, model), each with its own limit (adaptive or
 * fixed), an optional account-wide cap on top, and calls waiting at the pool, per model in the
 * order of `WaitQueues` (interactive first, a retry ahead of the calls not yet sent), until an
 * account that may serve them has room. A call is placed when a permit is free, on the least
 * loaded account that can take its model, not queued behind the account it would have picked
 * first: a backlog goes wherever room opens, and back to the primaries as soon as they serve
 * again.
 *
 * Every method is synchronous, so each grant, release and change of state is atomic on the
 * JavaScript thread.
 *
 * `Lanes` is what the pool asks of whatever grants its permits: this in-memory `Dispatcher`, or the
 * coordinator that shares the lanes through Redis (`redisDispatcher.ts`).
 *
 * @internal
 */
import * as Deferred from "effect/Deferred"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import type { Priority } from "../ConcurrencyLimiter.js"
import type { Grant, Ledger, Policy } from "./concurrencyLimiter.js"
import { WaitQueues } from "./waitQueues.js"

const servesEvery = () => true
const asAsked = (model: string) => model

/** One account as the dispatcher sees it. */
export class AccountSlot {
  /** Whether it may take calls now (breaker not open, funded, a usable key): set by the pool. */
  available = true
  /**
   * Whether it is about to serve (its balance is being checked at start): a fallback does not
   * take over from a primary that is only pending.
   */
  pending = false
  /** Permits held on the account, every model together. */
  inFlight = 0
  /**
   * Permits it may grant while its breaker is half-open: its breaker's canaries (set by the
   * pool). A call placed beyond them would wait for their verdict, so it waits at the pool
   * instead, where another account that may serve it can take it.
   */
  canaries = Infinity
  private halfOpen = false
  /** Its half-open periods so far: a permit granted in one is counted as a canary of that one only. */
  private trial = 0
  /** Permits granted in the current half-open period and not yet released. */
  private probes = 0
  /** Its lanes by their names (`laneKey`). */
  readonly lanes = new Map<string, Lane>()
  /** Its lanes by the model of the calls each serves. */
  private readonly byModel = new Map<string, Lane>()
  /** What `cap` is while it is not lowered to this process's share (the Redis coordinator's local mode). */
  readonly configuredCap: number

  constructor(
    readonly index: number,
    readonly fallback: boolean,
    /** Permits the account may hold in all, every model together; `Infinity` for none. */
    public cap: number,
    /** Whether it serves the calls of a model (its lane's name): it has lanes only for those. */
    readonly serves: (model: string) => boolean = servesEvery,
    /**
     * The name of the lane that serves the calls of a model: the model it sends them as. Models
     * it sends as one share a lane, and its limit: the upstream caps the model it runs.
     */
    readonly laneKey: (model: string) => string = asAsked
  ) {
    this.configuredCap = cap
  }

  /** Permits a new call may take on it now, whatever the model: within its cap, and its canaries while half-open. */
  get room(): number {
    const room = this.cap - this.inFlight
    return this.halfOpen ? Math.min(room, this.canaries - this.probes) : room
  }

  /** Whether its breaker is half-open (`setProbing`). */
  get probing(): boolean {
    return this.halfOpen
  }

  /** Reads its breaker's state: each time it half-opens, its canaries are counted anew. */
  setProbing(probing: boolean): void {
    if (probing && !this.halfOpen) {
      this.trial++
      this.probes = 0
    }
    this.halfOpen = probing
  }

  /** Counts a permit granted now; the half-open period it is a canary of, if any. */
  take(): number | undefined {
    this.inFlight++
    if (!this.halfOpen) return undefined
    this.probes++
    return this.trial
  }

  /** Counts a permit released, granted in the half-open period `trial` if any. */
  give(trial: number | undefined): void {
    this.inFlight--
    if (trial === this.trial && this.halfOpen) this.probes--
  }

  /** The lane of the calls of `model`: its lane named `laneKey(model)`, made by `make` on first use. */
  laneFor(model: string, make: (key: string) => Lane): Lane {
    let lane = this.byModel.get(model)
    if (lane === undefined) {
      const key = this.laneKey(model)
      lane = this.lanes.get(key)
      if (lane === undefined) {
        lane = make(key)
        this.lanes.set(key, lane)
      }
      lane.models.push(model)
      this.byModel.set(model, lane)
    }
    return lane
  }
}

/**
 * One (account, model the account runs): its policy and the permits it holds. `model` is its name
 * (the account's `laneKey`), `models` the models whose calls it serves: one, or several the
 * account sends as one.
 */
export class Lane implements Ledger {
  readonly models: Array<string> = []
  inFlight = 0
  /** Permits granted so far: ties between equally loaded lanes go to the one used least. */
  granted = 0
  private current: number

  constructor(
    readonly account: AccountSlot,
    readonly model: string,
    readonly policy: Policy,
    private readonly onGrew: (lane: Lane) => void
  ) {
    this.current = policy.limit
  }

  get limit(): number {
    return this.current
  }

  get hasRoom(): boolean {
    return this.inFlight < this.current && this.account.room > 0
  }

  /** Share of its limit in use: lower is less loaded. */
  get load(): number {
    return this.inFlight / this.current
  }

  resize(limit: number): void {
    const grew = limit > this.current
    this.current = limit
    if (grew) this.onGrew(this)
  }

  relimit(limit: number): void {
    this.current = limit
  }
}

/** What a waiting call was granted: the lane, with the policy's stamp. */
export interface LaneGrant extends Grant {
  readonly lane: Lane
  /** The half-open period of its account it is a canary of (`AccountSlot.take`). */
  readonly trial?: number | undefined
}

/** A call waiting for a permit of `model` on any account not in `excluded`; woken with a grant, or refused without one. */
export interface Waiter {
  readonly model: string
  readonly excluded: ReadonlySet<number>
  /** A call back for another attempt (a retry, a fail-over): it waits ahead of those that have not been sent. */
  readonly returning: boolean
  readonly wake: Deferred.Deferred<void>
  grant: LaneGrant | undefined
}

/** What `enter` decided. */
export type Entry =
  | { readonly _tag: "Granted"; readonly grant: LaneGrant }
  | { readonly _tag: "Queued"; readonly waiter: Waiter }

/** What the pool asks of the permits' coordinator; each method is synchronous. */
export interface Lanes {
  /** Calls waiting for `model` in this process (every model when none is given). */
  queued(model?: string): number
  /**
   * Permits the accounts that may serve could hold at once, and how many a new call could take
   * now (see `Dispatcher.capacity`).
   */
  capacity(): Room
  /** A permit now on the best lane for `model`, or a place in the queue (ahead of the calls not yet sent when `returning`). */
  enter(model: string, priority: Priority, excluded: ReadonlySet<number>, returning?: boolean): Entry
  /** The waiter gave up: it leaves its queue, or hands back a permit granted meanwhile. */
  cancel(waiter: Waiter): void
  release(grant: LaneGrant): void
  /** Wakes without a permit the waiters `hopeless` says no account will ever take. */
  refuse(hopeless: (waiter: Waiter) => boolean): void
  /** Serves every queue: after an account became available, or its cap or a limit grew. */
  dispatchAll(): void
  /** The lane of `account` for `model`, made on first use. */
  laneOf(account: AccountSlot, model: string): Lane
}

const noneExcluded: ReadonlySet<number> = new Set()

/**
 * Whether `account` may serve a call to `model` that leaves out `excluded`: it serves the model
 * and is available, and it is a primary, or no primary it may use for the model is available or
 * about to be (fallbacks serve only when no primary can).
 */
export const mayServe = (
  accounts: ReadonlyArray<AccountSlot>,
  account: AccountSlot,
  model: string,
  excluded: ReadonlySet<number>
): boolean => {
  if (!account.available || excluded.has(account.index) || !account.serves(model)) return false
  return !account.fallback ||
    !accounts.some((other) =>
      !other.fallback && (other.available || other.pending) && !excluded.has(other.index) && other.serves(model)
    )
}

/** What the pool could hold in flight now (see `AccountPool.Capacity`). */
export interface Room {
  readonly permits: number
  readonly free: number
  readonly stalled: boolean
  readonly unserved: number
}

/**
 * Permits the accounts that may serve could hold at once (the limits of their lanes, each
 * account's within its cap), how many a new call could take now (per model, the free permits
 * less the calls waiting for one: a model whose calls wait takes none from another's), and
 * whether no account may serve nor is about to (its balance being checked), and the calls of
 * `waiting` (the models calls wait for) that wait for a model no account may serve nor is about
 * to. A lane's free permits are at least `share(lane)`: what is left of this process's share when
 * others hold the lane.
 */
export const capacityOf = (
  accounts: ReadonlyArray<AccountSlot>,
  queued: (model: string) => number,
  waiting: Iterable<string>,
  share: (lane: Lane) => number = noShare
): Room => {
  let permits = 0
  let stalled = true
  // Free permits per model, summed over the accounts: a few models, so arrays searched in turn
  // (reused across calls: this runs for every line a batch reads).
  const models = scratchModels
  const lanesOf = scratchLanes
  const rooms = scratchRooms
  models.length = 0
  lanesOf.length = 0
  rooms.length = 0
  for (const account of accounts) {
    if (account.pending || account.available) stalled = false
    let limits = 0
    const accountRoom = Math.max(0, account.room)
    for (const lane of account.lanes.values()) {
      if (!servesAny(accounts, lane)) continue
      limits += lane.limit
      const room = Math.max(Math.min(Math.max(0, lane.limit - lane.inFlight), accountRoom), share(lane))
      // A lane several models share counts under the first, less the calls of them all (`queuedOn`).
      const at = models.indexOf(lane.models[0]!)
      if (at < 0) {
        models.push(lane.models[0]!)
        lanesOf.push(lane)
        rooms.push(room)
      } else {
        rooms[at] = rooms[at]! + room
      }
    }
    permits += Math.min(limits, account.cap)
  }
  let free = 0
  for (let at = 0; at < models.length; at++) free += Math.max(0, rooms[at]! - queuedOn(lanesOf[at]!, queued))
  let unserved = 0
  for (const model of waiting) {
    const calls = queued(model)
    if (calls > 0 && !maySoonServe(accounts, model)) unserved += calls
  }
  return { permits, free, stalled, unserved }
}

/** Whether an account may serve a call to `model` now, or is about to (its balance being checked). */
export const maySoonServe = (accounts: ReadonlyArray<AccountSlot>, model: string): boolean =>
  accounts.some((account) => mayServe(accounts, account, model, noneExcluded) || (account.pending && account.serves(model)))

/** Whether its account may serve a call of any model `lane` serves. */
const servesAny = (accounts: ReadonlyArray<AccountSlot>, lane: Lane): boolean => {
  for (const model of lane.models) if (mayServe(accounts, lane.account, model, noneExcluded)) return true
  return false
}

const noShare = (): number => 0

const scratchModels: Array<string> = []
const scratchLanes: Array<Lane> = []
const scratchRooms: Array<number> = []

/** Calls waiting for a permit `lane` may grant: those of each model it serves. */
export const queuedOn = (lane: Lane, queued: (model: string) => number): number => {
  let total = 0
  for (const model of lane.models) total += queued(model)
  return total
}

export class Dispatcher implements Lanes {
  private readonly waiting = new Map<string, WaitQueues<Waiter>>()

  constructor(
    readonly accounts: ReadonlyArray<AccountSlot>,
    /** Makes an account's lane named `key` (see `AccountSlot.laneKey`) at its first call. */
    private readonly makeLane: (account: AccountSlot, key: string) => Lane
  ) {}

  /** Calls waiting for `model` (every model when none is given). */
  queued(model?: string): number {
    if (model !== undefined) return this.waiting.get(model)?.size ?? 0
    let total = 0
    for (const queues of this.waiting.values()) total += queues.size
    return total
  }

  capacity(): Room {
    return capacityOf(this.accounts, (model) => this.queued(model), this.waiting.keys())
  }

  /**
   * A permit now on the best lane for `model`, or a place in the queue. Behind calls already
   * waiting, it is served in their order: they may wait for accounts they may use while one they
   * left out (a fail-over) has room that this call may take.
   */
  enter(model: string, priority: Priority, excluded: ReadonlySet<number>, returning = false): Entry {
    const queues = this.queuesOf(model)
    const waitingBefore = queues.size > 0
    if (!waitingBefore) {
      const lane = this.bestLane(model, excluded)
      if (lane !== undefined) return { _tag: "Granted", grant: this.take(lane) }
    }
    const waiter: Waiter = { model, excluded, returning, wake: Deferred.unsafeMake<void>(FiberId.none), grant: undefined }
    queues.add(waiter, priority, returning)
    if (waitingBefore) this.dispatch(model)
    return waiter.grant === undefined ? { _tag: "Queued", waiter } : { _tag: "Granted", grant: waiter.grant }
  }

  /** The waiter gave up: it leaves its queue, or hands back a permit granted meanwhile. */
  cancel(waiter: Waiter): void {
    if (waiter.grant !== undefined) return this.release(waiter.grant)
    this.waiting.get(waiter.model)?.delete(waiter)
  }

  release(grant: LaneGrant): void {
    const lane = grant.lane
    lane.inFlight--
    lane.account.give(grant.trial)
    // Under an account-wide cap the freed permit may serve any of the account's models.
    if (Number.isFinite(lane.account.cap)) this.dispatchAll()
    else this.dispatchLane(lane)
  }

  /**
   * Wakes without a permit the waiters `hopeless` says no account will ever take (they find no
   * grant, and give up): after an account went out for good.
   */
  refuse(hopeless: (waiter: Waiter) => boolean): void {
    for (const queues of this.waiting.values()) {
      queues.forEach((waiter) => {
        if (hopeless(waiter)) {
          queues.delete(waiter)
          Deferred.unsafeDone(waiter.wake, Exit.void)
        }
        return true
      })
    }
  }

  /** Queues a waiter made elsewhere, behind those already waiting in its queue, and serves its model. */
  requeue(waiter: Waiter, priority: Priority): void {
    this.queuesOf(waiter.model).add(waiter, priority, waiter.returning)
    this.dispatch(waiter.model)
  }

  /** Takes every waiter out of the queues, in the order they would have been served within each model. */
  takeWaiting(): Array<{ readonly waiter: Waiter; readonly priority: Priority }> {
    return Array.from(this.waiting.values()).flatMap((queues) => queues.takeAll())
  }

  /** Serves every queue: after an account became available, or its cap or a limit grew. */
  dispatchAll(): void {
    for (const model of this.waiting.keys()) this.dispatch(model)
  }

  /** Grants free permits of `model` to its waiters, in the order they are served (`WaitQueues`). */
  dispatch(model: string): void {
    const queues = this.waiting.get(model)
    queues?.forEach((waiter) => {
      if (!this.anyRoom(model)) return false
      const lane = this.bestLane(model, waiter.excluded)
      if (lane === undefined) return true
      queues.delete(waiter)
      waiter.grant = this.take(lane)
      Deferred.unsafeDone(waiter.wake, Exit.void)
      return true
    })
  }

  /**
   * Grants `lane`'s free permits to the calls of its models; when it serves several, starting with
   * another each time it grants, so that none waits behind another's queue for good.
   */
  dispatchLane(lane: Lane): void {
    const { models } = lane
    const first = lane.granted % models.length
    for (let i = 0; i < models.length; i++) this.dispatch(models[(first + i) % models.length]!)
  }

  /** The lane of `account` for `model`, made on first use. */
  laneOf(account: AccountSlot, model: string): Lane {
    return account.laneFor(model, (key) => this.makeLane(account, key))
  }

  /** The queues of `model`; a model seen for the first time gets a lane on every account. */
  private queuesOf(model: string): WaitQueues<Waiter> {
    let queues = this.waiting.get(model)
    if (queues === undefined) {
      queues = new WaitQueues()
      this.waiting.set(model, queues)
      for (const account of this.accounts) if (account.serves(model)) this.laneOf(account, model)
    }
    return queues
  }

  private anyRoom(model: string): boolean {
    return this.accounts.some((account) => account.available && account.serves(model) && this.laneOf(account, model).hasRoom)
  }

  /** The least loaded lane with room that may serve; ties to the lane used least, then the first account. */
  private bestLane(model: string, excluded: ReadonlySet<number>): Lane | undefined {
    let best: Lane | undefined
    for (const account of this.accounts) {
      if (!mayServe(this.accounts, account, model, excluded)) continue
      const lane = this.laneOf(account, model)
      if (!lane.hasRoom) continue
      if (best === undefined || lane.load < best.load || (lane.load === best.load && lane.granted < best.granted)) {
        best = lane
      }
    }
    return best
  }

  /** Counts a permit of `lane`; a subclass may note each grant. */
  protected take(lane: Lane): LaneGrant {
    lane.inFlight++
    lane.granted++
    const trial = lane.account.take()
    return trial === undefined ? { lane, stamp: lane.policy.stamp } : { lane, stamp: lane.policy.stamp, trial }
  }
}
