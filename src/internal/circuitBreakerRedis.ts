/**
 * A circuit breaker's machine shared on Redis, and the local mirror a service runs on.
 *
 * State, under the breaker's name: `{prefix}:breaker:<name>`, a hash of the machine as plain data
 * (`machine`, JSON of `Saved`) and its `version`, bumped by each write. A change is a cycle: read
 * the machine and the server's `TIME`, apply the transition to a copy at that time, and write it
 * back only if the version is still the one read (else read again and re-apply). So the open
 * period and the half-open admission are decided on the server's clock, and canary admissions are
 * atomic across processes. A write that changes more than the window's counts is published on
 * `{prefix}:breaker:<name>:changes`; every service re-reads on a message, on a reconnection, every
 * second while half-open (a lost message must not keep a waiter), and at a third of the key's TTL,
 * which each read refreshes (so a live breaker's state never expires, and a forgotten one does).
 *
 * The mirror answers the hot path (a closed circuit admits without a round trip; an open one
 * refuses without one); outcomes of calls are queued and written by one fiber, in batches.
 *
 * @internal
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import type * as Scope from "effect/Scope"
import type { State } from "../CircuitBreaker.js"
import type * as RedisModule from "../Redis.js"
import { type Admission, type Core, Machine, type Outcome, type Saved, type Settings } from "./circuitBreaker.js"
import { monotonicMillis } from "./monotonic.js"
import { RedisError } from "./redis.js"
import * as Fallback from "./redisFallback.js"

/** KEYS: the machine. ARGV: TTL ms. Answers `{seconds, microseconds, version, machine}` ("0", "" when none). */
const readScript = `
local time = redis.call("TIME")
local stored = redis.call("HMGET", KEYS[1], "version", "machine")
if stored[1] then redis.call("PEXPIRE", KEYS[1], ARGV[1]) end
return { time[1], time[2], stored[1] or "0", stored[2] or "" }
`

/**
 * KEYS: the machine, the channel. ARGV: the version read, the machine, TTL ms, "1" to publish.
 * Answers the new version, or 0 when another write came first.
 */
const writeScript = `
local version = redis.call("HGET", KEYS[1], "version") or "0"
if version ~= ARGV[1] then return 0 end
local next = tonumber(version) + 1
redis.call("HSET", KEYS[1], "version", next, "machine", ARGV[2])
redis.call("PEXPIRE", KEYS[1], ARGV[3])
if ARGV[4] == "1" then redis.call("PUBLISH", KEYS[2], next) end
return next
`

interface Read {
  /** Server epoch millis. */
  readonly now: number
  readonly version: string
  readonly raw: string
}

/** How strongly a state holds calls off: a rejoin keeps the stronger side. */
const strength = (state: State): number => state._tag === "Isolated" ? 2 : state._tag === "Open" ? 1 : 0

/**
 * The machine after a time apart: an Open or Isolated state on either side wins (of two open
 * ones, the later end); otherwise the shared one. The generation moves past both, voiding every
 * ticket issued apart, so no canary in flight can settle any more: their slots are freed (kept,
 * a half-open state would wait for them for good).
 */
export const merge = (local: Saved, shared: Saved | undefined): Saved => {
  if (shared === undefined) return local
  const stronger = strength(local.state) > strength(shared.state) ||
      (local.state._tag === "Open" && shared.state._tag === "Open" && local.state.until > shared.state.until)
    ? local
    : shared
  return { ...stronger, generation: Math.max(local.generation, shared.generation) + 1, canariesInFlight: 0 }
}

/** A write needs to be published when it changes more than the window's counts or a canary's lease. */
const publishable = (before: Saved | undefined, after: Saved): boolean =>
  before === undefined ||
  JSON.stringify({ ...before, window: 0, canaryLeaseUntil: 0 }) !== JSON.stringify({ ...after, window: 0, canaryLeaseUntil: 0 })

/**
 * How often the mirror re-reads while half-open (waiters wait on canaries of other processes),
 * and renews the lease of the canaries it holds.
 */
const halfOpenRefreshMillis = 1_000

/**
 * How long a canary's slot is kept without a renewal: a process that died holding one frees it
 * after this (the next caller becomes the canary); a live holder renews it every second.
 */
const canaryLeaseMillis = 3 * halfOpenRefreshMillis

/**
 * The core of a breaker shared as `name` on `redis`. `onTransition` hears every change of state,
 * whoever made it; `tripped` counts the trips this service made.
 */
export const core = (
  redis: RedisModule.Service,
  name: string,
  settings: Settings,
  onTransition: (state: State) => void,
  tripped: (trips: number) => void
): Effect.Effect<Core, never, Scope.Scope> =>
  Effect.gen(function*() {
    const clock = yield* Effect.clock
    const localNow = () => monotonicMillis(clock)
    // Server time minus local time, as of the last read: the mirror's times are the server's.
    let offset = 0
    const now = () => localNow() + offset
    const key = redis.key("breaker", name)
    const channel = redis.key("breaker", name, "changes")
    // Whole milliseconds: PEXPIRE refuses a fraction ("1500.5 millis" configured).
    const ttlMillis = Math.ceil(2 * Math.max(settings.windowMillis, settings.maxOpenForMillis))
    const runRead = redis.script(readScript)
    const runWrite = redis.script(writeScript)
    const fallback = Fallback.make(redis, `CircuitBreaker "${name}"`, "going on from its last known state")
    const lock = yield* Effect.makeSemaphore(1)
    const machineAt = (at: number, announce: (state: State) => void = () => {}) =>
      new Machine(settings, at, announce, canaryLeaseMillis)
    const mirror = machineAt(now(), onTransition)
    let loaded = ""

    const read: Effect.Effect<Read, RedisError> = Effect.suspend(() => {
      const sent = localNow()
      return Effect.flatMap(runRead([key], [ttlMillis]), (reply) => {
        if (!Array.isArray(reply) || reply.length !== 4) {
          return Effect.fail(new RedisError({ operation: "EVALSHA", reason: "the breaker's read script answered an unexpected reply" }))
        }
        const [seconds, micros, version, raw] = reply as [string, string, string, string]
        const serverNow = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000)
        offset = serverNow - (sent + localNow()) / 2
        return Effect.succeed({ now: serverNow, version, raw })
      })
    })

    const write = (version: string, saved: Saved, publish: boolean) =>
      Effect.map(runWrite([key, channel], [version, JSON.stringify(saved), ttlMillis, publish ? "1" : "0"]), Number)

    const savedOf = (raw: string): Saved | undefined => raw === "" ? undefined : JSON.parse(raw) as Saved

    /** Takes `raw` as the mirror's state (announcing a change of state, waking waiters) if it is new. */
    const adopt = (raw: string) => {
      if (raw === loaded) return
      loaded = raw
      const saved = savedOf(raw)
      mirror.load(saved ?? machineAt(now()).save())
    }

    /** Applies `f` to the shared machine at the server's time, re-applying it after a conflict. */
    const cycle = <A>(f: (machine: Machine, now: number) => A): Effect.Effect<A, RedisError> =>
      Effect.flatMap(read, (current) => {
        const before = savedOf(current.raw)
        const machine = machineAt(current.now)
        if (before !== undefined) machine.load(before)
        const unchanged = JSON.stringify(machine.save())
        const answer = f(machine, current.now)
        const after = machine.save()
        const raw = JSON.stringify(after)
        if (raw === unchanged) {
          return Effect.sync(() => {
            adopt(current.raw)
            return answer
          })
        }
        return Effect.flatMap(write(current.version, after, publishable(before, after)), (version) => {
          if (version === 0) return cycle(f)
          adopt(raw)
          const trips = after.totalTrips - (before?.totalTrips ?? 0)
          if (trips > 0) tripped(trips)
          return Effect.succeed(answer)
        })
      })

    /** `f` applied to the mirror alone, while Redis is away. */
    const applyLocally = <A>(f: (machine: Machine, now: number) => A): Effect.Effect<A> =>
      Effect.sync(() => {
        const trips = mirror.totalTrips
        const answer = f(mirror, now())
        if (mirror.totalTrips > trips) tripped(mirror.totalTrips - trips)
        return answer
      })

    const change = <A>(f: (machine: Machine, now: number) => A): Effect.Effect<A> =>
      fallback.run(lock.withPermits(1)(cycle(f)), applyLocally(f))

    const refresh = fallback.run(lock.withPermits(1)(Effect.map(read, (current) => adopt(current.raw))), Effect.void)

    /**
     * A shared machine that lived on is read; one that was lost (an empty server), or one apart
     * from which this service went on, is merged with the mirror and written back. Another
     * process's write in between is no failure of Redis: it is read (and merged with) again.
     */
    const rejoin: Effect.Effect<void, RedisError> = Effect.suspend(() =>
      Effect.flatMap(read, (current) => {
        if (!fallback.isLocal() && current.version !== "0") return Effect.sync(() => adopt(current.raw))
        const merged = merge(mirror.save(), savedOf(current.raw))
        return Effect.flatMap(write(current.version, merged, true), (version) =>
          version === 0 ? rejoin : Effect.sync(() => adopt(JSON.stringify(merged))))
      })
    )

    /** After a reconnection, or while local with the connection ready. */
    const resync = lock.withPermits(1)(Effect.zipRight(rejoin, fallback.back)).pipe(
      Effect.catchAll((error) => fallback.fail(error))
    )

    /** An open period that ended, or canaries whose holder is gone, move the shared machine on. */
    const pollIfDue: Effect.Effect<void> = Effect.suspend(() => {
      const state = mirror.state
      const due = (state._tag === "Open" && now() >= state.until) || mirror.canariesLapsed(now())
      return due ? change((machine, at) => machine.poll(at)) : Effect.void
    })

    // -- outcomes, written by one fiber -------------------------------------------------------

    let pending: Array<readonly [number, Outcome]> = []
    /**
     * The canaries this service admitted and that have not settled, in the one generation whose
     * canaries can still settle (a lapsed lease's new generation voided the others): it renews
     * their lease.
     */
    const held = { generation: -1, canaries: 0 }
    let wake = Deferred.unsafeMake<void>(FiberId.none)
    const nudge = () => Deferred.unsafeDone(wake, Exit.void)

    /** Applies `outcomes`, and renews the lease of the canaries this service still holds (`renew`). */
    const flushed = (outcomes: ReadonlyArray<readonly [number, Outcome]>, renew: boolean) => (machine: Machine, at: number) => {
      // Released by `settle`: judged with the calls this process still has in flight.
      machine.adoptPending(mirror)
      for (const [ticket, outcome] of outcomes) machine.record(ticket, outcome, at)
      if (renew) machine.renewCanaries(at)
    }

    const flushOnce = Effect.suspend(() => {
      wake = Deferred.unsafeMake<void>(FiberId.none)
      const outcomes = pending
      pending = []
      const renew = held.canaries > 0 && held.generation === mirror.generation && mirror.state._tag === "HalfOpen"
      return outcomes.length > 0 || renew ? change(flushed(outcomes, renew)) : Effect.zipRight(refresh, pollIfDue)
    })

    const idleMillis = () => mirror.state._tag === "HalfOpen" ? halfOpenRefreshMillis : ttlMillis / 3
    const flusher = Effect.suspend(() =>
      Effect.race(Deferred.await(wake), Effect.sleep(Duration.millis(idleMillis())))
    ).pipe(Effect.zipRight(flushOnce), Effect.forever)

    yield* Effect.catchAll(redis.subscribe(channel, nudge), (error) => fallback.fail(error))
    yield* refresh
    yield* Effect.forkScoped(flusher)
    yield* fallback.watch(resync)

    /**
     * An admission, whether it made the caller a canary, and whether it was admitted closed on
     * the shared machine (not on the mirror, with Redis away): the shared copy's count of calls in
     * flight is this process's to keep, in the mirror.
     */
    const admitShared = (machine: Machine, at: number) => {
      const admission = machine.admit(at)
      const admitted = typeof admission === "number"
      return [
        admission,
        admitted && machine.state._tag === "HalfOpen",
        admitted && machine !== mirror && machine.state._tag === "Closed"
      ] as const
    }

    return {
      machine: mirror,
      now,
      admit: Effect.suspend((): Effect.Effect<Admission> => {
        const refusal = mirror.refusal(now())
        if (refusal !== undefined) return Effect.succeed(refusal)
        const ticket = mirror.admitClosed()
        if (ticket !== undefined) return Effect.succeed(ticket)
        // A wait is on the mirror's signal: every read that changes it wakes the waiters.
        return Effect.map(change(admitShared), ([admission, canary, closedOnShared]) => {
          if (typeof admission !== "number") return "reason" in admission ? admission : mirror.signal
          // The mirror, stale when this admission began, now holds the shared machine: the call is
          // in flight in its generation (unless that moved on meanwhile).
          if (closedOnShared && mirror.generation === admission) mirror.admitClosed()
          if (canary) {
            if (admission !== held.generation) {
              held.generation = admission
              held.canaries = 0
            }
            held.canaries++
          }
          return admission
        })
      }),
      settle: (ticket, outcome) => {
        mirror.release(ticket)
        if (ticket === held.generation && held.canaries > 0) held.canaries--
        if (outcome === "ignored" && mirror.state._tag === "Closed") return
        pending.push([ticket, outcome])
        nudge()
      },
      poll: pollIfDue,
      state: Effect.zipRight(pollIfDue, Effect.sync(() => mirror.state)),
      halfOpen: change((machine, at) => machine.halfOpen(at)),
      isolate: change((machine, at) => machine.isolate(at)),
      reset: change((machine) => machine.close()),
      snapshot: Effect.zipRight(pollIfDue, Effect.sync(() => mirror.report(now())))
    } satisfies Core
  })
