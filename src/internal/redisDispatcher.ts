/**
 * The account pool's permits shared through Redis: the same `Lanes` the in-memory `Dispatcher`
 * is, with each permit a lease on the server and each waiting call a ticket queued on the lanes
 * that may serve it (the state and its script: `redisLanesScript.ts`).
 *
 * - `enter` always queues: the grant comes from the server, answered by the script that queued the
 *   ticket when there is room, later on this process's channel. A grant for a ticket no one waits
 *   for any more is handed back at once.
 * - One heartbeat per process every `leaseTtl / 3` refreshes its presence and every lease it holds
 *   (re-adding the missing ones: the calls are really in flight), asks the state of its tickets
 *   (so a lost message costs one heartbeat), grants on its lanes (a dead process's leases expire)
 *   and reads their limits and in-flight counts.
 * - An adaptive lane's limit is one `Aimd` state on the server, learnt together: each process
 *   queues its permits' events and a flush per lane applies them to the latest state, compared and
 *   set by version (re-read and re-applied on a conflict).
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
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type { Outcome, Priority } from "../ConcurrencyLimiter.js"
import type { Script, Service as RedisService } from "../Redis.js"
import { type Acceptance, Aimd, type AimdConfig, type AimdState, fixedPolicy, type Policy } from "./concurrencyLimiter.js"
import { type AccountSlot, capacityOf, type Entry, Lane, type LaneGrant, type Lanes, mayServe, type Waiter } from "./dispatcher.js"
import type { RedisError } from "./redis.js"
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
  readonly changed: (lane: Lane) => void
  readonly roomMayHaveGrown: () => void
}

/** How long a lease outlives its holder's last heartbeat, unless told otherwise. */
export const defaultLeaseTtl = Duration.seconds(30)

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

type Event =
  | { readonly _tag: "Accepted"; readonly stamp: number; readonly level: number }
  | { readonly _tag: "Recorded"; readonly stamp: number; readonly outcome: Outcome; readonly acceptance: Acceptance }

/**
 * An adaptive limit learnt with the other processes: its permits' events wait here for the lane's
 * flush, which applies them to the shared state; between flushes the limit and stamp are the last
 * ones read. `accepted` answers false (the growth, if any, is the flush's).
 */
class SharedAimd implements Policy {
  limit: number
  stamp = 0
  readonly pending: Array<Event> = []
  /** The last state read or written: what seeds the server if it lost the lane's. */
  state: AimdState

  constructor(readonly config: AimdConfig, private readonly eventAdded: () => void) {
    const aimd = new Aimd(config)
    this.limit = aimd.limit
    this.state = aimd.toState()
  }

  accepted(stamp: number, level: number): boolean {
    this.pending.push({ _tag: "Accepted", stamp, level })
    this.eventAdded()
    return false
  }

  record(stamp: number, outcome: Outcome, _inFlight: number, acceptance: Acceptance): void {
    this.pending.push({ _tag: "Recorded", stamp, outcome, acceptance })
    this.eventAdded()
  }

  /** `events` applied to `state` (the server's, or the last known), outcomes at the global `inFlight`. */
  apply(state: AimdState | undefined, events: ReadonlyArray<Event>, inFlight: number): Aimd {
    const aimd = Aimd.fromState(this.config, state ?? this.state)
    for (const event of events) {
      if (event._tag === "Accepted") aimd.accepted(event.stamp, event.level)
      else aimd.record(event.stamp, event.outcome, inFlight, event.acceptance)
    }
    return aimd
  }
}

/** One lane as this process knows it. */
interface LaneEntry {
  readonly lane: Lane
  readonly spec: LaneSpec
  readonly shared: SharedAimd | undefined
  flushing: boolean
}

/**
 * The coordinator over `slots` on `redis`; `specOf` names and limits each lane. Its heartbeat and
 * flushes run in the scope.
 */
export const make = (
  redis: RedisService,
  slots: ReadonlyArray<AccountSlot>,
  specOf: (slot: AccountSlot, model: string) => LaneSpec,
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
    const fork = yield* FiberSet.makeRuntime<never>()

    const tickets = new Map<string, Ticket>()
    const ticketOf = new Map<Waiter, Ticket>()
    const queuedByModel = new Map<string, number>()
    const held = new Map<string, LeaseGrant>()
    const lanes = new Map<string, LaneEntry>()
    const entryOf = new Map<Lane, LaneEntry>()
    let ticketSeq = 0
    let warned = false

    /** A failed script: logged once per outage; the heartbeat learns again what it missed. */
    const failed = (error: RedisError) =>
      Effect.suspend(() => {
        if (warned) return Effect.void
        warned = true
        return Effect.logWarning(`AccountPool: Redis at ${redis.url} failed (${error.reason}); leases wait for it`)
      })
    const send = (effect: Effect.Effect<unknown, RedisError>) => fork(Effect.catchAll(effect, failed))

    // -- lanes and their shared limits ---------------------------------------------------------

    const laneOf = (account: AccountSlot, model: string): Lane => {
      let lane = account.lanes.get(model)
      if (lane !== undefined) return lane
      const spec = specOf(account, model)
      const shared = typeof spec.limit === "number" ? undefined : new SharedAimd(spec.limit, () => flush(entry))
      const policy = shared ?? fixedPolicy(spec.limit as number)
      lane = new Lane(account, model, policy, () => hooks.roomMayHaveGrown())
      const entry: LaneEntry = { lane, spec, shared, flushing: false }
      account.lanes.set(model, lane)
      lanes.set(spec.key, entry)
      entryOf.set(lane, entry)
      hooks.roomMayHaveGrown()
      return lane
    }

    /** What the server says of a lane: its limit (-1: unknown), stamp and in-flight count. */
    const observe = (entry: LaneEntry, limit: number, epoch: number, inFlight: number) => {
      entry.lane.inFlight = inFlight
      if (entry.shared !== undefined && limit >= 0) {
        entry.shared.limit = limit
        entry.shared.stamp = epoch
        entry.lane.resize(limit)
      }
      hooks.changed(entry.lane)
    }

    /** Applies the lane's pending events to the shared state, one flush at a time per lane. */
    const flush = (entry: LaneEntry) => {
      if (entry.flushing) return
      entry.flushing = true
      send(Effect.ensuring(
        Effect.whileLoop({
          while: () => entry.shared!.pending.length > 0,
          body: () => commit(entry, entry.shared!.pending.splice(0)),
          step: () => {}
        }),
        Effect.sync(() => (entry.flushing = false))
      ))
    }

    const commit = (entry: LaneEntry, events: ReadonlyArray<Event>): Effect.Effect<void, RedisError> =>
      Effect.gen(function*() {
        const shared = entry.shared!
        while (true) {
          const [version, stored, , , inFlight] = (yield* call("read", [entry.spec.key])) as [
            number,
            string | null,
            number,
            number,
            number
          ]
          const aimd = shared.apply(stored === null ? undefined : JSON.parse(stored) as AimdState, events, inFlight)
          const state = aimd.toState()
          const done = yield* call("commit", [entry.spec.key, version, JSON.stringify(state), aimd.limit, aimd.stamp])
          if (done !== 1) continue
          shared.state = state
          return observe(entry, aimd.limit, aimd.stamp, inFlight)
        }
      })

    // -- tickets and grants --------------------------------------------------------------------

    const count = (model: string, by: number) => queuedByModel.set(model, (queuedByModel.get(model) ?? 0) + by)

    const candidates = (model: string, excluded: ReadonlySet<number>): ReadonlyArray<Lane> =>
      slots.filter((slot) => mayServe(slots, slot, excluded)).map((slot) => laneOf(slot, model))

    const laneArgs = (lane: Lane) => {
      const { spec } = entryOf.get(lane)!
      const limit = typeof spec.limit === "number" ? spec.limit : lane.limit
      return [spec.key, spec.account?.key ?? "", spec.account?.cap ?? -1, limit, typeof spec.limit === "number" ? 1 : 0]
    }

    /** Queues `ticket` on its lanes (keeping its arrival order if it waits already); a grant answered at once is taken. */
    const place = (ticket: Ticket) => {
      if (ticket.lanes.length === 0) return
      send(Effect.flatMap(
        call("place", [owner, ticket.id, ticket.priority, ttl, ...ticket.lanes.flatMap(laneArgs)]),
        (answer) => Effect.sync(() => typeof answer === "string" && granted(answer))
      ))
    }

    const forget = (ticket: Ticket) => {
      tickets.delete(ticket.id)
      ticketOf.delete(ticket.waiter)
      count(ticket.waiter.model, -1)
    }

    const open = (waiter: Waiter, priority: Priority) => {
      const ticket: Ticket = {
        id: `${owner}.${++ticketSeq}`,
        waiter,
        priority,
        lanes: candidates(waiter.model, waiter.excluded)
      }
      tickets.set(ticket.id, ticket)
      ticketOf.set(waiter, ticket)
      count(waiter.model, 1)
      place(ticket)
    }

    const releaseLease = (laneKey: string, lease: string) => send(call("release", [laneKey, lease]))

    const release = (grant: LaneGrant) => {
      const { lane, lease } = grant as LeaseGrant
      held.delete(lease)
      lane.inFlight = Math.max(0, lane.inFlight - 1)
      lane.account.inFlight = Math.max(0, lane.account.inFlight - 1)
      releaseLease(entryOf.get(lane)!.spec.key, lease)
    }

    /** A grant message: `<ticket> <lane> <level> <epoch>`. */
    const granted = (message: string) => {
      const [id, laneKey, level, epoch] = message.split(" ") as [string, string, string, string]
      if (held.has(id)) return
      const ticket = tickets.get(id)
      const entry = lanes.get(laneKey)
      if (ticket === undefined || entry === undefined) return releaseLease(laneKey, id)
      forget(ticket)
      const { lane } = entry
      if (!mayServe(slots, lane.account, ticket.waiter.excluded)) {
        // Its account went out meanwhile: the call waits on, as a new ticket.
        releaseLease(laneKey, id)
        return open(ticket.waiter, ticket.priority)
      }
      const grant: LeaseGrant = { lane, stamp: Number(epoch), level: Number(level), lease: id }
      held.set(id, grant)
      lane.inFlight = Math.max(lane.inFlight + 1, grant.level)
      lane.account.inFlight++
      lane.granted++
      ticket.waiter.grant = grant
      Deferred.unsafeDone(ticket.waiter.wake, Exit.void)
    }

    /** Moves every ticket to the lanes that may serve it now, keeping its arrival order. */
    const retarget = () => {
      for (const ticket of tickets.values()) {
        const now = candidates(ticket.waiter.model, ticket.waiter.excluded)
        if (now.length === ticket.lanes.length && now.every((lane, i) => lane === ticket.lanes[i])) continue
        ticket.lanes = now
        place(ticket)
      }
    }

    // -- the heartbeat -------------------------------------------------------------------------

    const heartbeat = Effect.suspend(() => {
      const leases = [...held.values()]
      const waiting = [...tickets.keys()]
      const used = [...lanes.values()]
      return Effect.flatMap(
        call("heartbeat", [
          owner,
          ttl,
          ttl,
          leases.length,
          ...leases.flatMap((grant) => [entryOf.get(grant.lane)!.spec.key, grant.lease]),
          waiting.length,
          ...waiting,
          used.length,
          ...used.map((entry) => entry.spec.key)
        ]),
        (reply) =>
          Effect.sync(() => {
            const [, states, laneStates] = reply as [number, ReadonlyArray<string>, ReadonlyArray<ReadonlyArray<number>>]
            warned = false
            waiting.forEach((id, i) => {
              const state = states[i]
              const ticket = tickets.get(id)
              if (state === "w" || ticket === undefined) return
              if (state === "" || state === undefined) place(ticket)
              else granted(state)
            })
            used.forEach((entry, i) => {
              const [limit, epoch, inFlight, accountInFlight] = laneStates[i] as [number, number, number, number]
              if (entry.spec.account !== undefined) entry.lane.account.inFlight = accountInFlight
              observe(entry, limit, epoch, inFlight)
              // The server lost the lane's state (a restart): the next flush seeds it with ours.
              if (limit < 0 && entry.shared !== undefined) flush(entry)
            })
            hooks.roomMayHaveGrown()
          })
      )
    })

    yield* Effect.catchAll(heartbeat, failed)
    yield* redis.subscribe(redis.key("lanes", "grants", owner), granted).pipe(Effect.catchAll(failed))
    yield* Effect.forkScoped(
      Effect.repeat(Effect.catchAll(heartbeat, failed), Schedule.spaced(Duration.millis(Math.max(1, Math.floor(ttl / 3)))))
    )

    return {
      queued: (model) => {
        if (model !== undefined) return queuedByModel.get(model) ?? 0
        return tickets.size
      },
      capacity: () => capacityOf(slots, (model) => queuedByModel.get(model) ?? 0),
      enter: (model, priority, excluded): Entry => {
        const waiter: Waiter = { model, excluded, wake: Deferred.unsafeMake<void>(FiberId.none), grant: undefined }
        open(waiter, priority)
        return { _tag: "Queued", waiter }
      },
      cancel: (waiter) => {
        if (waiter.grant !== undefined) return release(waiter.grant)
        const ticket = ticketOf.get(waiter)
        if (ticket === undefined) return
        forget(ticket)
        send(call("cancel", [ticket.id]))
      },
      release,
      refuse: (hopeless) => {
        for (const ticket of [...tickets.values()]) {
          if (!hopeless(ticket.waiter)) continue
          forget(ticket)
          send(call("cancel", [ticket.id]))
          Deferred.unsafeDone(ticket.waiter.wake, Exit.void)
        }
        retarget()
      },
      dispatchAll: retarget,
      laneOf
    } satisfies Lanes
  })
