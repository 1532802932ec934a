/**
 * The account pool's permits shared through Redis: the same `Lanes` the in-memory `Dispatcher`
 * is, with each permit a lease on the server and each waiting call a ticket queued on the lanes
 * that may serve it (the state and its script: `redisLanesScript.ts`).
 *
 * - `enter` always queues: the grant comes from the server, answered by the script that queued the
 *   ticket when there is room, later on this process's channel. A grant for a ticket no one waits
 *   for any more is handed back at once.
 * - One heartbeat per process every third of its presence (`leaseTtl`, at most `maxPresence`)
 *   refreshes that presence, grants on its lanes (a dead process's leases expire) and reads their
 *   limits and in-flight counts. Every third of `leaseTtl` it also refreshes every lease it holds
 *   (re-adding the missing ones: the calls are really in flight), releases its leases on the
 *   server that it neither holds nor waits for (a lost release, a snapshot), and asks the state of its
 *   tickets (so a lost message costs one such beat, and a grant whose lease lapsed meanwhile is
 *   placed again, not taken); the beats between refresh only the leases
 *   granted since the last. A lease granted to a waiting ticket lasts the presence until a beat
 *   refreshes it, so a process killed while its tickets wait holds the permits granted them a few
 *   seconds only.
 * - An adaptive lane's limit is one `Aimd` state on the server, learnt together: each process
 *   queues its permits' events and a flush per lane applies them to the latest state, compared and
 *   set by version (re-read and re-applied on a conflict). A 429 also lowers the limit on the
 *   server at once, before its permit is released; the requests accepted and not ended are the
 *   server's set of their leases (a commit adds those still held, a release takes its lease off).
 *
 * Placement (which accounts may serve a call) stays here: the server only counts and orders.
 *
 * @internal
 */
import { randomUUID } from "node:crypto"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as FiberSet from "effect/FiberSet"
import * as Metric from "effect/Metric"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import type * as Scope from "effect/Scope"
import type { Outcome, Priority } from "../ConcurrencyLimiter.js"
import type { Script, Service as RedisService } from "../Redis.js"
import {
  type Acceptance,
  Aimd,
  type AimdConfig,
  type AimdState,
  fixedPolicy,
  type Grant,
  type Policy
} from "./concurrencyLimiter.js"
import {
  type AccountSlot,
  capacityOf,
  Dispatcher,
  type Entry,
  Lane,
  type LaneGrant,
  type Lanes,
  mayServe,
  type Waiter
} from "./dispatcher.js"
import { RedisError } from "./redis.js"
import { script } from "./redisLanesScript.js"

/** How a lane is named and limited on the server. */
export interface LaneSpec {
  /** The lane's key (processes naming it alike share it). */
  readonly key: string
  /** The key of its account's leases under `accountConcurrency`, when the account has one. */
  readonly account: { readonly key: string; readonly cap: number } | undefined
  /** A fixed limit, or the adaptive limit's configuration. */
  readonly limit: number | AimdConfig
}

export interface Settings {
  readonly leaseTtl: Duration.Duration
}

/** What the coordinator tells its owner besides its grants. */
export interface Hooks {
  /** A lane was made (on its model's first call). */
  readonly opened: (lane: Lane) => void
  readonly changed: (lane: Lane) => void
  readonly roomMayHaveGrown: () => void
}

export const localModeCounter = Metric.counter("weatherproof_redis_lanes_local_mode", {
  description: "Times a process's shared concurrency limits went to local mode because Redis failed",
  incremental: true
})

export const localGauge = Metric.gauge("weatherproof_redis_lanes_local", {
  description: "Pools and limiters on Redis in this process that count their shared limits alone now, Redis away (0: all shared)"
})

/** The coordinators of this process in local mode now: what `localGauge` shows. */
let coordinatorsLocal = 0

const noteLocal = (change: 1 | -1 | 0): void => {
  coordinatorsLocal += change
  localGauge.unsafeUpdate(coordinatorsLocal, [])
}

/** How long a lease outlives its holder's last heartbeat, unless told otherwise. */
export const defaultLeaseTtl = Duration.seconds(30)

const connectionClosed = new RedisError({ operation: "connection", reason: "the connection closed" })

/**
 * How long a process counts as alive after its last heartbeat or placement, at most: after it
 * died, its waiting tickets are granted for this long (each such lease lasting this long too).
 */
const maxPresence = Duration.seconds(5)

/** Shared state and queues idle this long expire. */
const idleMillis = 60 * 60 * 1000

/** A permit of this process: its lease on the server. */
interface LeaseGrant extends LaneGrant {
  readonly lease: string
}

/** A waiting call of this process. */
interface Ticket {
  id: string
  readonly waiter: Waiter
  readonly priority: Priority
  lanes: ReadonlyArray<Lane>
}

/** The server's queue a ticket waits in (the script's `queues`): as `WaitQueues` orders a process's. */
const queueOf = ({ priority, waiter }: Ticket): string => waiter.returning ? `${priority}:returning` : priority

/** A permit's acceptance or outcome, waiting for the lane's flush. */
type Event =
  /** `lease`: its permit's, for the server's set of accepted leases (none without a grant). */
  | { readonly _tag: "Accepted"; readonly stamp: number; readonly lease: string | undefined }
  | {
    readonly _tag: "Recorded"
    readonly stamp: number
    readonly outcome: Outcome
    readonly acceptance: Acceptance
    /** In flight when it ended, as this process saw the lane then. */
    readonly inFlight: number
    /** From its grant to its end. */
    readonly elapsedMillis: number
    /** Its permit's lease when its acceptance was reported: the server's set may hold it still. */
    readonly lease: string | undefined
  }

/**
 * A lane's limit as this process applies it: the shared one (between flushes the last read), or
 * in local mode (Redis away) a `local` policy bounded by this process's share of it.
 *
 * An adaptive limit is learnt with the other processes: its permits' events wait here for the
 * lane's flush, which applies them to the shared state; `accepted` answers false (the growth, if
 * any, is the flush's). A fixed one (`config` undefined) is the lane's limit on the server.
 */
class SharedLimit implements Policy {
  sharedLimit: number
  sharedStamp = 0
  /** The policy of local mode. */
  local: Policy | undefined
  readonly pending: Array<Event> = []
  /** The last state read or written: what seeds the server if it lost the lane's. */
  state: AimdState | undefined

  constructor(
    readonly config: AimdConfig | undefined,
    readonly permits: number,
    private readonly eventAdded: (event: Event) => void
  ) {
    const aimd = config === undefined ? undefined : new Aimd(config)
    this.sharedLimit = aimd?.limit ?? permits
    this.state = aimd?.toState()
  }

  get limit(): number {
    return this.local?.limit ?? this.sharedLimit
  }

  get stamp(): number {
    return this.local?.stamp ?? this.sharedStamp
  }

  accepted(stamp: number, refill?: boolean, grant?: Grant): boolean {
    if (this.local !== undefined) return this.local.accepted(stamp, refill)
    if (this.config === undefined) return false
    const event: Event = { _tag: "Accepted", stamp, lease: (grant as LeaseGrant | undefined)?.lease }
    this.pending.push(event)
    this.eventAdded(event)
    return false
  }

  /**
   * Slots refilled count in local mode only: shared, the slot an ended request leaves may go to
   * any process, so slow start there waits for every request to be accepted.
   */
  refill(): boolean {
    return this.local?.refill?.() ?? false
  }

  record(...report: Parameters<Policy["record"]>): void {
    if (this.local !== undefined) return this.local.record(...report)
    if (this.config === undefined) return
    const [stamp, outcome, inFlight, acceptance, elapsedMillis, , grant] = report
    const lease = acceptance.timing === "unreported" ? undefined : (grant as LeaseGrant | undefined)?.lease
    const event: Event = { _tag: "Recorded", stamp, outcome, acceptance, inFlight, elapsedMillis, lease }
    this.pending.push(event)
    this.eventAdded(event)
  }

  /**
   * `events` applied to `state` (the server's, or the last known), each outcome at the higher of
   * the in-flight its process saw when it ended and the global `inFlight` now.
   */
  apply(state: AimdState | undefined, events: ReadonlyArray<Event>, inFlight: number): Aimd {
    const aimd = Aimd.fromState(this.config!, state ?? this.state!)
    applyEvents(aimd, events, inFlight)
    return aimd
  }

  /**
   * The limit a 429 of `state`'s epoch would lead to at most (at any in-flight): what the server
   * lowers the limit to at once when one comes.
   */
  afterDrop(state: AimdState): number {
    const aimd = Aimd.fromState(this.config!, state)
    aimd.record(state.epoch, capDrop, Number.MAX_SAFE_INTEGER, unreported, 0)
    return aimd.limit
  }

  /**
   * Local mode: the last shared limit's `share`, as a maximum the local adaptation stays below
   * (with the events not yet flushed applied), or as the fixed limit.
   */
  goLocal(share: (limit: number) => number, inFlight: number): void {
    if (this.config === undefined) {
      this.local = fixedPolicy(share(this.permits))
      return
    }
    const max = share(this.sharedLimit)
    const aimd = Aimd.fromState({ ...this.config, max, initial: Math.min(this.config.initial, max) }, this.state!)
    const events = this.pending.splice(0)
    applyEvents(aimd, events, inFlight)
    this.local = aimd
  }

  /** Back to the shared limit; the local state is kept, to seed a server that lost the lane's. */
  rejoin(): void {
    if (this.local instanceof Aimd) this.state = this.local.toState()
    this.local = undefined
  }
}

const capDrop: Outcome = { _tag: "Dropped", signal: "cap" }
const unreported: Acceptance = { timing: "unreported", grew: false }

const applyEvents = (aimd: Aimd, events: ReadonlyArray<Event>, inFlight: number): void => {
  for (const event of events) {
    if (event._tag === "Accepted") aimd.accepted(event.stamp)
    // Not the count at the flush alone: by then the permits of a drop's round may have ended, and
    // a ceiling taken that low makes every later probe look like a rise (short holds, many 429s).
    else aimd.record(event.stamp, event.outcome, Math.max(event.inFlight, inFlight), event.acceptance, event.elapsedMillis)
  }
}

const acceptedLeases = (events: ReadonlyArray<Event>): ReadonlyArray<string> =>
  events.flatMap((event) => event._tag === "Accepted" && event.lease !== undefined ? [event.lease] : [])

/**
 * The leases of `events`' ends whose acceptances came in an earlier batch: the server's set held
 * them once committed, and may not any more (a release sent while this batch waited for the flush
 * before it), while applying the end takes one off the count again. The read counts those it no
 * longer holds, so each is taken off once.
 */
const endedLeases = (events: ReadonlyArray<Event>): ReadonlyArray<string> => {
  const acceptedHere = new Set(acceptedLeases(events))
  return events.flatMap((event) =>
    event._tag === "Recorded" && event.lease !== undefined && !acceptedHere.has(event.lease) ? [event.lease] : []
  )
}

const isCapDrop = (event: Event): event is Extract<Event, { _tag: "Recorded" }> =>
  event._tag === "Recorded" && event.outcome._tag === "Dropped" && event.outcome.signal !== "overload"

/** In local mode, the in-memory dispatcher that notes each grant and release (leases to re-add on rejoin). */
class LocalDispatcher extends Dispatcher {
  constructor(
    accounts: ReadonlyArray<AccountSlot>,
    makeLane: (account: AccountSlot, key: string) => Lane,
    private readonly granted: (grant: LaneGrant) => LaneGrant,
    private readonly released: (grant: LaneGrant) => void
  ) {
    super(accounts, makeLane)
  }

  protected override take(lane: Lane): LaneGrant {
    return this.granted(super.take(lane))
  }

  override release(grant: LaneGrant): void {
    this.released(grant)
    super.release(grant)
  }
}

/** One lane as this process knows it. */
interface LaneEntry {
  readonly lane: Lane
  readonly spec: LaneSpec
  readonly shared: SharedLimit
  flushing: boolean
}

/**
 * The coordinator over `slots` on `redis`; `specOf` names and limits each lane. Its heartbeat and
 * flushes run in the scope.
 *
 * When a script fails (`RedisError`) or the connection closes, it goes to local mode: an in-memory `Dispatcher` over the
 * same lanes, each limited to this process's share of the last shared limit (divided by the
 * processes alive at the last heartbeat), the calls in flight keeping their permits and the
 * tickets waiting on as local waiters in their order. The first heartbeat that succeeds again
 * rejoins: the leases of the calls in flight are re-added (by that heartbeat), those released
 * meanwhile handed back, the local waiters queued again as tickets, and a lane whose state the
 * server lost is seeded with the local one.
 */
export const make = (
  redis: RedisService,
  slots: ReadonlyArray<AccountSlot>,
  specOf: (slot: AccountSlot, key: string) => LaneSpec,
  hooks: Hooks,
  settings: Settings
): Effect.Effect<Lanes, never, Scope.Scope> =>
  Effect.gen(function*() {
    const owner = randomUUID()
    const base = redis.key("lanes")
    const run: Script = redis.script(script)
    const call = (operation: string, args: ReadonlyArray<string | number>) =>
      run([base], [operation, base, idleMillis, ...args])
    const ttl = Math.max(1, Math.round(Duration.toMillis(settings.leaseTtl)))
    const presence = Math.min(ttl, Duration.toMillis(maxPresence))
    const fork = yield* FiberSet.makeRuntime<never>()

    const tickets = new Map<string, Ticket>()
    const ticketOf = new Map<Waiter, Ticket>()
    const queuedByModel = new Map<string, number>()
    const held = new Map<string, LeaseGrant>()
    /** Of `held`, the permits on each lane. */
    const heldOn = new Map<Lane, number>()
    /** Leases granted since the last heartbeat: one granted to a waiting ticket lasts the presence until one refreshes it. */
    const fresh = new Set<LeaseGrant>()
    const lanes = new Map<string, LaneEntry>()
    const entryOf = new Map<Lane, LaneEntry>()
    let idSeq = 0
    const nextId = () => `${owner}.${++idSeq}`
    /** The processes alive at the last heartbeat. */
    let processes = 1
    /** The other processes that may use each lane, at the last heartbeat (see `othersOn` in the script). */
    const othersOn = new Map<Lane, number>()
    /** The dispatcher of local mode, while Redis is away. */
    let local: LocalDispatcher | undefined
    /** Leases released in local mode (lease → lane key), handed back on rejoin. */
    const releasedLocally = new Map<string, string>()

    const failed = (error: RedisError) => Effect.suspend(() => local === undefined ? goLocal(error) : Effect.void)
    const send = (effect: Effect.Effect<unknown, RedisError>) => fork(Effect.catchAll(effect, failed))

    const hold = (grant: LeaseGrant) => {
      held.set(grant.lease, grant)
      heldOn.set(grant.lane, (heldOn.get(grant.lane) ?? 0) + 1)
    }

    const unhold = (lease: string) => {
      const grant = held.get(lease)
      if (grant === undefined) return
      held.delete(lease)
      heldOn.set(grant.lane, heldOn.get(grant.lane)! - 1)
    }

    /**
     * What is left of this process's share of `lane` (its limit, within its account's cap, divided
     * by this process and the others that hold or wait on it, or until a heartbeat says which, by
     * the processes alive): a process that holds less may queue calls for the rest, though other
     * processes hold those permits. Served in arrival order, its calls then take the permits the
     * others release until the lane is split evenly, where without them the split would stay near
     * what it found when it came (each release goes to whichever process starts its next call
     * first, most often the one that released it). This process counts whether it uses the lane
     * yet or not: coming back to a lane it left, it does not take the others' shares for its own.
     * Not while the account is half-open: its canaries are its room.
     */
    const shareLeft = (lane: Lane): number =>
      lane.account.probing
        ? 0
        : Math.floor(Math.min(lane.limit, lane.account.cap) / (1 + (othersOn.get(lane) ?? processes - 1))) -
          (heldOn.get(lane) ?? 0)

    // -- lanes and their shared limits ---------------------------------------------------------

    const shareOf = (limit: number) => Math.max(1, Math.floor(limit / Math.max(1, processes)))

    const laneOf = (account: AccountSlot, model: string): Lane => account.laneFor(model, (key) => makeLane(account, key))

    const makeLane = (account: AccountSlot, key: string): Lane => {
      const spec = specOf(account, key)
      const shared = typeof spec.limit === "number"
        ? new SharedLimit(undefined, spec.limit, () => flush(entry))
        : new SharedLimit(spec.limit, 0, (event) => {
          if (isCapDrop(event)) lower(entry, event)
          flush(entry)
        })
      const lane = new Lane(account, key, shared, (grew) => {
        local?.dispatchLane(grew)
        hooks.roomMayHaveGrown()
      })
      const entry: LaneEntry = { lane, spec, shared, flushing: false }
      lanes.set(spec.key, entry)
      entryOf.set(lane, entry)
      if (local !== undefined) {
        shared.goLocal(shareOf, 0)
        lane.relimit(shared.limit)
      }
      hooks.opened(lane)
      hooks.roomMayHaveGrown()
      return lane
    }

    /** What the server says of a lane: its limit (-1: unknown) and stamp. */
    const observeLimit = (entry: LaneEntry, limit: number, epoch: number) => {
      if (local !== undefined || limit < 0) return
      entry.shared.sharedLimit = limit
      entry.shared.sharedStamp = epoch
      entry.lane.resize(limit)
    }

    /** What the server says of a lane: its limit, stamp and in-flight count. */
    const observe = (entry: LaneEntry, limit: number, epoch: number, inFlight: number) => {
      if (local !== undefined) return
      entry.lane.inFlight = inFlight
      observeLimit(entry, limit, epoch)
      hooks.changed(entry.lane)
    }

    /**
     * Applies an adaptive lane's pending events to the shared state (at least once: with none, it
     * seeds a server that lost the state), one flush at a time per lane.
     */
    const flush = (entry: LaneEntry) => {
      if (entry.flushing || local !== undefined || entry.shared.config === undefined) return
      entry.flushing = true
      const once = Effect.suspend(() => commit(entry, entry.shared.pending.splice(0)))
      send(Effect.ensuring(
        Effect.zipRight(
          once,
          Effect.whileLoop({ while: () => local === undefined && entry.shared.pending.length > 0, body: () => once, step: () => {} })
        ),
        Effect.sync(() => {
          entry.flushing = false
          if (entry.shared.pending.length > 0) flush(entry)
        })
      ))
    }

    /**
     * A 429 lowers the lane's limit on the server at once (under the level it was drawn at, and to
     * where the last commit says a 429 leads), unless a decrease since its grant did already. Sent
     * before its permit's release, so that neither that release nor any other process grants at the
     * old limit while the flush that applies the 429 is on its way.
     */
    const lower = (entry: LaneEntry, drop: Extract<Event, { _tag: "Recorded" }>) =>
      send(Effect.flatMap(
        call("lower", [entry.spec.key, drop.stamp, drop.inFlight, entry.shared.config!.min, ttl]),
        (reply) =>
          Effect.sync(() => {
            const [limit, epoch] = reply as [number, number]
            observeLimit(entry, limit, epoch)
          })
      ))

    const commit = (entry: LaneEntry, events: ReadonlyArray<Event>): Effect.Effect<void, RedisError> =>
      Effect.gen(function*() {
        const { shared } = entry
        const ended = endedLeases(events)
        while (true) {
          const [version, stored, , , inFlight, accepted] = (yield* call("read", [entry.spec.key, ...ended])) as [
            number,
            string | null,
            number,
            number,
            number,
            number
          ]
          // The accepted count is the server's: every process's acceptances of leases still held.
          const read = stored === null ? undefined : { ...JSON.parse(stored) as AimdState, acceptedOutstanding: accepted }
          const aimd = shared.apply(read, events, inFlight)
          const state = aimd.toState()
          const limit = (yield* call("commit", [
            entry.spec.key,
            version,
            JSON.stringify(state),
            aimd.limit,
            aimd.stamp,
            shared.afterDrop(state),
            ...acceptedLeases(events)
          ])) as number
          if (limit < 0) continue
          shared.state = state
          return observe(entry, limit, aimd.stamp, inFlight)
        }
      }).pipe(
        // Unapplied, they are local mode's to apply.
        Effect.tapError(() => Effect.sync(() => entry.shared.pending.unshift(...events)))
      )

    // -- tickets and grants --------------------------------------------------------------------

    const count = (model: string, by: number) => queuedByModel.set(model, (queuedByModel.get(model) ?? 0) + by)

    const candidates = (model: string, excluded: ReadonlySet<number>): ReadonlyArray<Lane> =>
      slots.filter((slot) => mayServe(slots, slot, model, excluded)).map((slot) => laneOf(slot, model))

    const laneArgs = (lane: Lane) => {
      const { shared, spec } = entryOf.get(lane)!
      const { config } = shared
      const highest = config === undefined || !Number.isFinite(config.max) ? -1 : config.max
      return [spec.key, spec.account?.key ?? "", spec.account?.cap ?? -1, config === undefined ? shared.permits : lane.limit, config === undefined ? 1 : 0, highest]
    }

    /** Queues `ticket` on its lanes (keeping its place where it waits already); a grant answered at once is taken. */
    const place = (ticket: Ticket) => {
      if (ticket.lanes.length === 0) return
      send(Effect.flatMap(
        call("place", [owner, ticket.id, queueOf(ticket), ttl, presence, ...ticket.lanes.flatMap(laneArgs)]),
        (reply) =>
          Effect.sync(() => {
            const [answer, alive] = reply as [string | null, number]
            processes = alive
            if (answer !== null) granted(answer)
          })
      ))
    }

    const forget = (ticket: Ticket) => {
      tickets.delete(ticket.id)
      ticketOf.delete(ticket.waiter)
      count(ticket.waiter.model, -1)
    }

    const open = (waiter: Waiter, priority: Priority) => {
      if (local !== undefined) return local.requeue(waiter, priority)
      const ticket: Ticket = { id: nextId(), waiter, priority, lanes: candidates(waiter.model, waiter.excluded) }
      tickets.set(ticket.id, ticket)
      ticketOf.set(waiter, ticket)
      count(waiter.model, 1)
      place(ticket)
    }

    const releaseLease = (laneKey: string, lease: string) => {
      if (local !== undefined) return void releasedLocally.set(lease, laneKey)
      send(call("release", [laneKey, lease]))
    }

    const release = (grant: LaneGrant) => {
      if (local !== undefined) return local.release(grant)
      const { lane, lease } = grant as LeaseGrant
      unhold(lease)
      lane.inFlight = Math.max(0, lane.inFlight - 1)
      lane.account.inFlight = Math.max(0, lane.account.inFlight - 1)
      releaseLease(entryOf.get(lane)!.spec.key, lease)
    }

    /** A grant message: `<ticket> <lane> <in-flight> <epoch> <limit>`. */
    const granted = (message: string) => {
      const [id, laneKey, inFlight, epoch, limit] = message.split(" ") as [string, string, string, string, string]
      if (held.has(id)) return
      const ticket = tickets.get(id)
      const entry = lanes.get(laneKey)
      if (ticket === undefined || entry === undefined) return releaseLease(laneKey, id)
      forget(ticket)
      const { lane } = entry
      observeLimit(entry, Number(limit), Number(epoch))
      if (!mayServe(slots, lane.account, ticket.waiter.model, ticket.waiter.excluded)) {
        // Its account went out meanwhile: the call waits on, as a new ticket.
        releaseLease(laneKey, id)
        return open(ticket.waiter, ticket.priority)
      }
      const grant: LeaseGrant = { lane, stamp: Number(epoch), lease: id }
      hold(grant)
      fresh.add(grant)
      // The server's count at the grant: fresher than this process's view (room it did not know of).
      const known = lane.inFlight
      lane.inFlight = Number(inFlight)
      if (lane.inFlight < known + 1) hooks.roomMayHaveGrown()
      lane.account.inFlight++
      lane.granted++
      ticket.waiter.grant = grant
      Deferred.unsafeDone(ticket.waiter.wake, Exit.void)
    }

    /** Moves every ticket to the lanes that may serve it now, keeping its place on those it waits on already. */
    const retarget = () => {
      for (const ticket of tickets.values()) {
        const now = candidates(ticket.waiter.model, ticket.waiter.excluded)
        if (now.length === ticket.lanes.length && now.every((lane, i) => lane === ticket.lanes[i])) continue
        ticket.lanes = now
        place(ticket)
      }
    }

    // -- local mode ----------------------------------------------------------------------------

    const goLocal = (error: RedisError) =>
      Effect.suspend(() => {
        local = new LocalDispatcher(slots, makeLane, (grant) => {
          const leased: LeaseGrant = { ...grant, lease: nextId() }
          hold(leased)
          // A grant made while the beat that rejoins is on its way is not in its lists: the next
          // beat re-adds it, not the next full one (up to a third of the lease TTL later).
          fresh.add(leased)
          return leased
        }, (grant) => {
          const { lane, lease } = grant as LeaseGrant
          unhold(lease)
          releasedLocally.set(lease, entryOf.get(lane)!.spec.key)
        })
        // The calls in flight keep their permits, counted here.
        for (const slot of slots) {
          slot.inFlight = 0
          slot.cap = Number.isFinite(slot.configuredCap) ? shareOf(slot.configuredCap) : slot.configuredCap
        }
        for (const entry of lanes.values()) entry.lane.inFlight = 0
        for (const grant of held.values()) {
          grant.lane.inFlight++
          grant.lane.account.inFlight++
        }
        for (const entry of lanes.values()) {
          entry.shared.goLocal(shareOf, entry.lane.inFlight)
          entry.lane.relimit(entry.shared.limit)
          hooks.changed(entry.lane)
        }
        const waiting = [...tickets.values()]
        tickets.clear()
        ticketOf.clear()
        queuedByModel.clear()
        for (const ticket of waiting) local.requeue(ticket.waiter, ticket.priority)
        hooks.roomMayHaveGrown()
        localModeCounter.unsafeUpdate(1, [])
        noteLocal(1)
        return Effect.logWarning(
          `Redis at ${redis.url} failed (${error.reason}): each shared concurrency limit is counted in this process, ` +
            `at its share (1/${Math.max(1, processes)}), until Redis is back`
        )
      })

    /** After a heartbeat succeeded in local mode (it re-added the leases held). */
    const rejoin = () => {
      const dispatcher = local!
      local = undefined
      for (const slot of slots) slot.cap = slot.configuredCap
      for (const entry of lanes.values()) {
        entry.shared.rejoin()
        entry.lane.resize(entry.shared.limit)
      }
      for (const [lease, laneKey] of releasedLocally) releaseLease(laneKey, lease)
      releasedLocally.clear()
      for (const { priority, waiter } of dispatcher.takeWaiting()) open(waiter, priority)
      noteLocal(-1)
      return Effect.logInfo(`Redis at ${redis.url} is back: concurrency limits are shared again`)
    }

    // -- the heartbeat -------------------------------------------------------------------------

    /** The lanes this process holds a permit on or waits on. */
    const busyLanes = (): ReadonlySet<Lane> => {
      const busy = new Set<Lane>()
      for (const [lane, count] of heldOn) if (count > 0) busy.add(lane)
      for (const ticket of tickets.values()) for (const lane of ticket.lanes) busy.add(lane)
      return busy
    }

    // Every lease and ticket is refreshed (and every ticket's state asked) at the lease TTL's
    // rhythm, and on a rejoin; the beats between refresh the presence and the leases granted
    // since the last beat only: a beat's cost follows the grants, not the leases held.
    // Rounded down: every lease is refreshed at least every third of the TTL.
    const fullEvery = Math.max(1, Math.floor(ttl / presence))
    let beats = 0
    const heartbeat = Effect.suspend(() => {
      const full = local !== undefined || beats % fullEvery === 0
      beats++
      const leases = full ? [...held.values()] : [...fresh].filter((grant) => held.has(grant.lease))
      fresh.clear()
      const waiting = full ? [...tickets.keys()] : []
      const used = [...lanes.values()]
      const busy = busyLanes()
      // Each lane it holds or waits on, by its place in `used` (from 1).
      const busyIndices = used.flatMap((entry, i) => busy.has(entry.lane) ? [i + 1] : [])
      return Effect.flatMap(
        call("heartbeat", [
          owner,
          ttl,
          presence,
          // Full: the last id its lists may hold; a ticket placed after them has a later one.
          full ? idSeq : 0,
          leases.length,
          ...leases.flatMap((grant) => [entryOf.get(grant.lane)!.spec.key, grant.lease]),
          waiting.length,
          ...waiting,
          used.length,
          ...used.flatMap((entry) => laneArgs(entry.lane)),
          busyIndices.length,
          ...busyIndices
        ]),
        (reply) =>
          Effect.suspend(() => {
            const [alive, states, laneStates] = reply as [number, ReadonlyArray<string>, ReadonlyArray<ReadonlyArray<number>>]
            processes = alive
            const rejoined = local === undefined ? Effect.void : rejoin()
            waiting.forEach((id, i) => {
              const state = states[i]
              const ticket = tickets.get(id)
              if (state === "w" || ticket === undefined) return
              if (state === "" || state === undefined) place(ticket)
              else granted(state)
            })
            used.forEach((entry, i) => {
              const [limit, epoch, inFlight, accountInFlight, others] = laneStates[i] as [number, number, number, number, number]
              if (entry.spec.account !== undefined) entry.lane.account.inFlight = accountInFlight
              othersOn.set(entry.lane, others)
              observe(entry, limit, epoch, inFlight)
              // The server lost the lane's state (a restart): seeded with ours.
              if (limit < 0) flush(entry)
            })
            hooks.roomMayHaveGrown()
            return rejoined
          })
      )
    })
    const beat = Effect.catchAll(heartbeat, failed)

    // The gauge's series from the start, and this coordinator off it when it ends in local mode.
    noteLocal(0)
    yield* Effect.addFinalizer(() => Effect.sync(() => local === undefined ? undefined : noteLocal(-1)))
    yield* beat
    yield* redis.subscribe(redis.key("lanes", "grants", owner), granted).pipe(Effect.catchAll(failed))
    yield* Effect.forkScoped(Effect.repeat(beat, Schedule.spaced(Duration.millis(Math.max(1, Math.floor(presence / 3))))))
    // A connection that closed is Redis lost, whether or not a script failed meanwhile: a server
    // back empty forgot this process's leases, tickets and presence, which the rejoin restores.
    // A connection back is tried at once, not at the next heartbeat.
    yield* Effect.forkScoped(
      Stream.runForEach(redis.readiness, (ready) => ready ? (local === undefined ? Effect.void : beat) : failed(connectionClosed))
    )

    return {
      queued: (model) => {
        if (local !== undefined) return local.queued(model)
        return model === undefined ? tickets.size : queuedByModel.get(model) ?? 0
      },
      capacity: () => local?.capacity() ?? capacityOf(slots, (model) => queuedByModel.get(model) ?? 0, queuedByModel.keys(), shareLeft),
      enter: (model, priority, excluded, returning = false): Entry => {
        if (local !== undefined) return local.enter(model, priority, excluded, returning)
        const waiter: Waiter = { model, excluded, returning, wake: Deferred.unsafeMake<void>(FiberId.none), grant: undefined }
        open(waiter, priority)
        return { _tag: "Queued", waiter }
      },
      cancel: (waiter) => {
        if (local !== undefined) return local.cancel(waiter)
        if (waiter.grant !== undefined) return release(waiter.grant)
        const ticket = ticketOf.get(waiter)
        if (ticket === undefined) return
        forget(ticket)
        send(call("cancel", [ticket.id]))
      },
      release,
      refuse: (hopeless) => {
        if (local !== undefined) return local.refuse(hopeless)
        for (const ticket of [...tickets.values()]) {
          if (!hopeless(ticket.waiter)) continue
          forget(ticket)
          send(call("cancel", [ticket.id]))
          Deferred.unsafeDone(ticket.waiter.wake, Exit.void)
        }
        retarget()
      },
      dispatchAll: () => (local === undefined ? retarget() : local.dispatchAll()),
      laneOf
    } satisfies Lanes
  })
