/**
 * `ConcurrencyLimiter.makeRedis` on a real redis-server: limiters of one name over their own
 * connections share one limit, one queue order and the leases of a process that dies. Real time,
 * short and bounded.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as ConcurrencyLimiter from "../src/ConcurrencyLimiter.js"
import * as LimiterInternal from "../src/internal/concurrencyLimiter.js"
import * as LanesScript from "../src/internal/redisLanesScript.js"
import * as Redis from "../src/Redis.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { redisServer, redisServerPresent, type RedisServer, skipMessage, until } from "./support/redisServer.js"

/** A limiter over its own connection to `server`. */
const limiterOn = (server: RedisServer, options: ConcurrencyLimiter.RedisOptions) =>
  Effect.flatMap(Redis.make({ url: server.url }), (redis) =>
    Effect.provideService(ConcurrencyLimiter.makeRedis(options), Redis.Redis, redis))

/** The lanes' script called directly (operation first) on a fresh server, for the lane of limiter `name`. */
const laneScript = (name: string) =>
  Effect.gen(function*() {
    const server = yield* redisServer
    const redis = yield* Redis.make({ url: server.url })
    const base = redis.key("lanes")
    const run = redis.script(LanesScript.script)
    const call = (...args: ReadonlyArray<string | number>) => run([base], [args[0]!, base, 60_000, ...args.slice(1)])
    return { redis, lane: redis.key("limiter", name), call }
  })

/**
 * Two limiters of one name and a limit of 1, its permit held by `a`: `queue` places a caller's
 * ticket (on the server before it answers), `release` lets the permit go and answers the order
 * the callers were served in.
 */
const heldLimiters = (name: string) =>
  Effect.gen(function*() {
    const server = yield* redisServer
    const a = yield* limiterOn(server, { name, permits: 1 })
    const b = yield* limiterOn(server, { name, permits: 1 })
    const holding = yield* Deferred.make<void>()
    const holder = yield* Effect.fork(a.withPermit(() => Effect.zipRight(Deferred.succeed(holding, undefined), Effect.never)))
    yield* Deferred.await(holding)
    const served: Array<string> = []
    const waiters: Array<Fiber.RuntimeFiber<void, ConcurrencyLimiter.QueueFull>> = []
    const queued = Effect.zipWith(a.snapshot, b.snapshot, (x, y) => x.queued + y.queued)
    const queue = (limiter: ConcurrencyLimiter.Service, label: string, priority: ConcurrencyLimiter.Priority, returning = false) =>
      Effect.gen(function*() {
        const before = yield* queued
        waiters.push(yield* Effect.fork(limiter.withPermit(() => Effect.sync(() => void served.push(label)), { priority, returning })))
        // Its ticket is on the server before the next one arrives.
        yield* until(queued, (n) => n > before)
        yield* Effect.sleep("20 millis")
      })
    const release = Effect.zipRight(
      Fiber.interrupt(holder),
      Effect.as(Effect.forEach(waiters, Fiber.join), served)
    )
    return { a, b, queue, release }
  })

/** The one process the lanes know on `redis`. */
const onlyProcess = (redis: Redis.Service) =>
  Effect.map(
    until(redis.command("ZRANGE", [redis.key("lanes", "processes"), 0, -1]), (owners) => (owners as Array<string>).length === 1),
    (owners) => (owners as Array<string>)[0]!
  )

describe("the adaptive limit's shared state", () => {
  it("toState holds every field of the controller but its process's own slots, and fromState gives it back", () => {
    const config = LimiterInternal.adaptiveConfig({})
    const aimd = new LimiterInternal.Aimd(config)
    aimd.accepted(0)
    aimd.record(0, { _tag: "Dropped" }, 8, { timing: "ahead", grew: false }, 0)
    const state = aimd.toState()
    // The slots this process's permits took or left are not the other processes' to apply.
    const perProcess = new Set(["config", "vacated", "refilling"])
    const fields = Object.keys(aimd).filter((field) => !perProcess.has(field))
    expect(Object.keys(state).sort()).toEqual(fields.sort())
    const back = LimiterInternal.Aimd.fromState(config, JSON.parse(JSON.stringify(state)))
    expect(back.toState()).toEqual(state)
    expect(back.limit).toBe(aimd.limit)
  })
})

describe.skipIf(!redisServerPresent)(skipMessage("ConcurrencyLimiter on Redis"), () => {
  it.scopedLive("two limiters of one name never hold more than its permits together", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const limiters = [
        yield* limiterOn(server, { name: "shared", permits: 3 }),
        yield* limiterOn(server, { name: "shared", permits: 3 })
      ]
      let inFlight = 0
      let most = 0
      let done = 0
      const work = Effect.acquireUseRelease(
        Effect.sync(() => (most = Math.max(most, ++inFlight))),
        () => Effect.sleep("15 millis"),
        () => Effect.sync(() => (inFlight--, done++))
      )
      yield* Effect.forEach(limiters, (limiter) =>
        Effect.forEach(Array.from({ length: 20 }), () => limiter.withPermit(() => work), { concurrency: "unbounded" }), {
        concurrency: "unbounded"
      })
      expect(done).toBe(40)
      expect(most).toBe(3)
      expect((yield* limiters[0]!.snapshot).limit).toBe(3)
    }))

  it.scopedLive("a fixed limit holds its lane while its limiter runs, an adaptive limiter of the same name beside it included", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const fixed = yield* limiterOn(server, { name: "mixed", permits: 2 })
      const adaptive = yield* limiterOn(server, { name: "mixed", initial: 6 })
      let inFlight = 0
      let most = 0
      const work = Effect.acquireUseRelease(
        Effect.sync(() => (most = Math.max(most, ++inFlight))),
        () => Effect.sleep("10 millis"),
        () => Effect.sync(() => inFlight--)
      )
      yield* Effect.forEach([fixed, adaptive], (limiter) =>
        Effect.forEach(Array.from({ length: 40 }), () => limiter.withPermit(() => work), { concurrency: "unbounded" }), {
        concurrency: "unbounded"
      })
      expect(most).toBe(2)
      expect((yield* adaptive.snapshot).limit).toBe(2)
    }))

  it.scopedLive("callers are served across limiters as in one: interactive first, a returning caller ahead of those not yet sent, arrival order otherwise", () =>
    Effect.gen(function*() {
      const { a, b, queue, release } = yield* heldLimiters("order")
      yield* queue(a, "a1", "batch")
      yield* queue(b, "b1", "batch")
      yield* queue(a, "a2", "interactive")
      yield* queue(b, "b2", "batch")
      yield* queue(b, "b3", "interactive")
      // Back for another attempt: each waits ahead of the calls of its priority not yet sent.
      yield* queue(a, "a3", "batch", true)
      yield* queue(b, "b4", "interactive", true)
      expect(yield* release).toEqual(["b4", "a2", "b3", "a3", "a1", "b1", "b2"])
    }))

  it.scopedLive("processes take turns: one that queued many while the limit was held holds back another's calls by a round each, not by all of its own", () =>
    Effect.gen(function*() {
      const { a, b, queue, release } = yield* heldLimiters("turns")
      for (const label of ["a1", "a2", "a3", "a4"]) yield* queue(a, label, "batch")
      yield* queue(b, "b1", "batch")
      yield* queue(b, "b2", "batch")
      yield* queue(a, "a5", "interactive")
      expect(yield* release).toEqual(["a5", "a1", "b1", "a2", "b2", "a3", "a4"])
    }))

  it.scopedLive("two limiters with equal demand on a small limit get shares within 20 % of each other", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const limiters = [
        yield* limiterOn(server, { name: "fair", permits: 4 }),
        yield* limiterOn(server, { name: "fair", permits: 4 })
      ]
      const served = [0, 0]
      const stop = Date.now() + 1500
      const worker = (i: number) =>
        Effect.whileLoop({
          while: () => Date.now() < stop,
          body: () => limiters[i]!.withPermit(() => Effect.zipRight(Effect.sleep("10 millis"), Effect.sync(() => served[i]!++))),
          step: () => {}
        })
      yield* Effect.all([0, 1].flatMap((i) => Array.from({ length: 8 }, () => worker(i))), { concurrency: "unbounded" })
      const [x, y] = served as [number, number]
      expect(x + y).toBeGreaterThan(100)
      expect(Math.abs(x - y) / Math.max(x, y)).toBeLessThanOrEqual(0.2)
    }))

  it.scopedLive("the leases of a process killed with SIGKILL come back within their TTL", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const child: ChildProcess = yield* Effect.acquireRelease(
        Effect.sync(() =>
          spawn("node_modules/.bin/vite-node", ["test/support/leaseHolder.ts", "--", server.url, "crash", "4", "2000", "3"], {
            stdio: ["ignore", "pipe", "inherit"]
          })
        ),
        (child) => Effect.sync(() => child.exitCode === null && child.kill("SIGKILL"))
      )
      const holding = yield* Deferred.make<void>()
      child.stdout?.on("data", (data: Buffer) => {
        if (data.toString().includes("holding 3")) Effect.runSync(Deferred.succeed(holding, undefined))
      })
      yield* Deferred.await(holding).pipe(Effect.timeout("30 seconds"))
      const limiter = yield* limiterOn(server, { name: "crash", permits: 4, leaseTtl: "2 seconds" })
      // One permit is free while the child lives.
      yield* Effect.scoped(limiter.acquire())
      child.kill("SIGKILL")
      const killedAt = Date.now()
      // Then all four, once the child's leases expired (and a heartbeat or a release granted them).
      yield* Effect.scoped(Effect.forEach(Array.from({ length: 4 }), () => limiter.acquire(), { concurrency: "unbounded" })).pipe(
        Effect.timeout("4 seconds")
      )
      expect(Date.now() - killedAt).toBeLessThanOrEqual(2000 + 2000 / 3 + 500)
    }), { timeout: 60_000 })

  it.scopedLive("a process killed with SIGKILL while its tickets wait holds what they are granted for its presence (5 s), not for a lease TTL", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      // The default lease TTL, 30 s, on both sides.
      const limiter = yield* limiterOn(server, { name: "killed-waiting", permits: 1 })
      const held = yield* Scope.make()
      yield* Scope.extend(limiter.acquire(), held)
      const child: ChildProcess = yield* Effect.acquireRelease(
        Effect.sync(() =>
          spawn("node_modules/.bin/vite-node", ["test/support/leaseHolder.ts", "--", server.url, "killed-waiting", "1", "30000", "3"], {
            stdio: ["ignore", "ignore", "inherit"]
          })
        ),
        (child) => Effect.sync(() => child.exitCode === null && child.kill("SIGKILL"))
      )
      // Its three tickets wait behind the permit held here.
      const queue = `${redis.key("limiter", "killed-waiting")}:q:interactive`
      yield* redis.command("ZCARD", [queue]).pipe(
        Effect.repeat({ until: (n) => n === 3, schedule: Schedule.spaced("50 millis") }),
        Effect.timeout("30 seconds")
      )
      child.kill("SIGKILL")
      const killedAt = Date.now()
      // The permit goes to the dead process's first ticket: its lease lapses with the process's
      // presence, which drops the other two; a heartbeat here then grants the next caller.
      yield* Scope.close(held, Exit.void)
      yield* Effect.scoped(limiter.acquire()).pipe(Effect.timeout("15 seconds"))
      expect(Date.now() - killedAt).toBeLessThanOrEqual(5000 + 5000 / 3 + 1500)
    }), { timeout: 60_000 })

  it.scopedLive("a 429 seen by one limiter lowers the limit the others grant by", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const a = yield* limiterOn(server, { name: "learn", initial: 8 })
      const b = yield* limiterOn(server, { name: "learn", initial: 8 })
      // Eight in flight (four each), one refused: the ceiling becomes 7, the limit min(7, 8 × 0.9).
      yield* Effect.scoped(Effect.gen(function*() {
        const permits = yield* Effect.forEach(Array.from({ length: 4 }), () => a.acquire())
        yield* Effect.forEach(Array.from({ length: 4 }), () => b.acquire())
        yield* permits[0]!.complete({ _tag: "Dropped" })
        yield* until(a.snapshot, (snapshot) => snapshot.limit < 8)
      }))
      const lowered = (yield* a.snapshot).limit
      expect(lowered).toBe(7)
      // b learns it with its next grant.
      yield* Effect.scoped(b.acquire())
      expect((yield* b.snapshot).limit).toBe(lowered)
    }))

  it.scopedLive("a Redis restarted empty while no script ran: one warning, and at once back with the lease held and the next caller granted", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      const leases = redis.command("ZCARD", [`${redis.key("limiter", "restarted")}:leases`])
      // Heartbeats come every 5/3 s: the restart, far shorter, is told by the connection's close.
      const limiter = yield* Effect.provideService(ConcurrencyLimiter.makeRedis({ name: "restarted", permits: 2 }), Redis.Redis, redis)
      const held = yield* Scope.make()
      yield* Scope.extend(limiter.acquire(), held)
      yield* until(leases, (n) => n === 1)
      yield* server.restart
      yield* until(leases, (n) => n === 1)
      yield* Effect.scoped(limiter.acquire()).pipe(Effect.timeout("3 seconds"))
      yield* Scope.close(held, Exit.void)
      yield* until(leases, (n) => n === 0)
      expect(logs.map((log) => log.level)).toEqual(["WARN", "INFO"])
      expect(logs[0]!.message).toContain(`Redis at redis://127.0.0.1:${server.port} failed (the connection closed)`)
    }).pipe(capturingLogs(logs))
  }, { timeout: 30_000 })

  it.scopedLive("a Redis back from an older snapshot holds no lease its process released since: the rejoin releases it, and the next caller is granted at once, not after a lease TTL (30 s)", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      const limiter = yield* limiterOn(server, { name: "phantom", permits: 1 })
      const leases = redis.command("ZCARD", [`${redis.key("limiter", "phantom")}:leases`])
      const held = yield* Scope.make()
      yield* Scope.extend(limiter.acquire(), held)
      yield* until(leases, (n) => n === 1)
      yield* redis.command("SAVE", [])
      yield* Scope.close(held, Exit.void)
      yield* until(leases, (n) => n === 0)
      yield* Effect.zipRight(server.restart, logsSaid(logs, "shared again"))
      yield* Effect.scoped(limiter.acquire()).pipe(Effect.timeout("3 seconds"))
      expect(yield* until(leases, (n) => n === 0)).toBe(0)
    }).pipe(capturingLogs(logs))
  }, { timeout: 30_000 })

  it.scopedLive("a full heartbeat releases its owner's leases it neither holds nor waits for, and keeps a lease granted to a ticket it waits on, one placed after its lists were taken, and another owner's", () =>
    Effect.gen(function*() {
      const { call, lane, redis } = yield* laneScript("unlisted")
      const place = (owner: string, id: string) =>
        call("place", owner, id, "interactive", 30_000, 5_000, lane, "", -1, 4, 1, -1)
      // All granted at once: o.1 while its owner waits for the answer, o.2 since released but
      // back (a lost release, an older snapshot), o.3 placed after the heartbeat's lists were
      // taken (they hold ids up to o.2), p.1 another owner's.
      for (const [owner, id] of [["o", "o.1"], ["o", "o.2"], ["o", "o.3"], ["p", "p.1"]] as const) yield* place(owner, id)
      // By id (the set orders them by expiry, which the heartbeat moves for the grant it hands over).
      const leases = Effect.map(redis.command("ZRANGE", [`${lane}:leases`, 0, -1]), (ids) => [...(ids as Array<string>)].sort())
      expect(yield* leases).toEqual(["o.1", "o.2", "o.3", "p.1"])
      // Not full: nothing released.
      yield* call("heartbeat", "o", 30_000, 5_000, 0, 0, 0, 1, lane, "", -1, 4, 1, -1, 0)
      expect(yield* leases).toEqual(["o.1", "o.2", "o.3", "p.1"])
      // Full, up to o.2: o holds nothing and waits on o.1.
      yield* call("heartbeat", "o", 30_000, 5_000, 2, 0, 1, "o.1", 1, lane, "", -1, 4, 1, -1, 1, 1)
      expect(yield* leases).toEqual(["o.1", "o.3", "p.1"])
    }))

  it.scopedLive("a heartbeat asking after a grant whose message was lost hands it over with a lease TTL, or, its lease lapsed (the slot maybe another's), drops the ticket to be placed again", () =>
    Effect.gen(function*() {
      const { call, lane, redis } = yield* laneScript("lapsed")
      // A limit of 1; a ticket's lease lasts its owner's presence (200 ms) until the owner takes it.
      const place = (owner: string, id: string) => call("place", owner, id, "interactive", 30_000, 200, lane, "", -1, 1, 1, -1)
      const states = (owner: string, id: string) =>
        Effect.map(call("heartbeat", owner, 30_000, 200, 0, 0, 1, id, 1, lane, "", -1, 1, 1, -1, 1, 1), (reply) => (reply as [number, ReadonlyArray<string>])[1])
      const leases = redis.command("ZRANGE", [`${lane}:leases`, 0, -1])

      yield* place("p", "p.1")
      yield* place("o", "o.1")
      // p.1's release grants o.1, whose message no one hears.
      yield* call("release", lane, "p.1")
      expect(yield* leases).toEqual(["o.1"])
      const [live] = yield* states("o", "o.1")
      expect(live).toMatch(/^o\.1 /)
      // Handed over: its lease lasts a TTL, past the owner's presence.
      yield* Effect.sleep("300 millis")
      yield* place("q", "q.1")
      expect(yield* leases).toEqual(["o.1"])

      yield* call("release", lane, "o.1")
      expect(yield* leases).toEqual(["q.1"])
      yield* place("o", "o.2")
      yield* call("release", lane, "q.1")
      expect(yield* leases).toEqual(["o.2"])
      // Unasked for longer than its presence: the slot goes to the next ticket, and the owner's
      // late question finds the grant gone, not a permit another call holds.
      yield* Effect.sleep("300 millis")
      yield* place("r", "r.1")
      expect(yield* leases).toEqual(["r.1"])
      const [lapsed] = yield* states("o", "o.2")
      expect(lapsed).toBe("")
      expect(yield* leases).toEqual(["r.1"])
    }))

  it.scopedLive("an end applied in a flush after its release reached the server is taken off the accepted count once, not twice", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      const name = "ended-while-flushing"
      const limiter = yield* limiterOn(server, { name, initial: 4 })
      const acceptedOnceAt = acceptedCount(redis, name)
      const first = yield* Scope.make()
      const rest = yield* Scope.make()
      const p1 = yield* Scope.extend(limiter.acquire(), first)
      const [p2, p3, p4] = yield* Effect.all([1, 2, 3].map(() => Scope.extend(limiter.acquire(), rest)))
      yield* p1.accepted
      expect(yield* acceptedOnceAt(1)).toBe(1)
      yield* p2!.accepted
      expect(yield* acceptedOnceAt(2)).toBe(2)
      // Scripts wait: the flush p3's acceptance starts holds its read while p1 ends and is released
      // (the release sent after that read) and p4 is accepted, so the next flush applies p1's end
      // and p4's acceptance together, after the server's set lost p1.
      yield* redis.command("CLIENT", ["PAUSE", "300", "WRITE"])
      yield* p3!.accepted
      yield* p1.complete({ _tag: "Success" })
      yield* Scope.close(first, Exit.void)
      yield* p4!.accepted
      expect(yield* acceptedOnceAt(3)).toBe(3)
      const state = Effect.map(
        redis.command("HGET", [`${redis.key("limiter", name)}:state`, "aimd"]),
        (stored) => JSON.parse(stored as string) as LimiterInternal.AimdState
      )
      // p2, p3 and p4: the count the flush left (p1's end taken off twice left 2).
      expect((yield* until(state, (read) => read.acceptedOutstanding === 3).pipe(Effect.orElse(() => state))).acceptedOutstanding).toBe(3)
      yield* Scope.close(rest, Exit.void)
    }), { timeout: 30_000 })

  it.scopedLive("a lane state lost to FLUSHALL counts only its own acceptances: ends of earlier ones are not taken off, slow start grows again", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      yield* lostLaneState("flushed", server, redis, redis.command("FLUSHALL", []), { limitAfter: 5 })
    }), { timeout: 30_000 })

  it.scopedLive("a Redis restarted empty counts only its own acceptances: ends of the old server's are not taken off, slow start grows again", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      yield* lostLaneState("restarted", server, redis, Effect.zipRight(server.restart, logsSaid(logs, "concurrency limits are shared again")), {
        limitAfter: 5
      })
    }).pipe(capturingLogs(logs))
  }, { timeout: 30_000 })

  it.scopedLive("a Redis restarted from an older snapshot: ends of the acceptances it lost take nothing off, the count is the truth again once they end, slow start grows", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      // Back from the snapshot of two acceptances (and the limit they left, 4), with the four in flight.
      yield* lostLaneState("snapshot", server, redis, Effect.gen(function*() {
        yield* Effect.zipRight(server.restart, logsSaid(logs, "shared again"))
        expect(yield* acceptedCount(redis, "snapshot")(2)).toBe(2)
      }), { midway: redis.command("SAVE", []), limitAfter: 4 })
    }).pipe(capturingLogs(logs))
  }, { timeout: 30_000 })

  it.scopedLive("an acceptance whose commit conflicted while its request ended, then failed twice (local mode, back, local again): the count stays the requests accepted and not ended, slow start grows", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      const name = "drift"
      const stateKey = `${redis.key("limiter", name)}:state`
      const acceptedOnceAt = acceptedCount(redis, name)
      // Armed, the next commit meets another process's commit (a conflict) and answers only once
      // `resume` is done. While `down`, every script fails as on a closed connection.
      const conflicted = yield* Deferred.make<void>()
      const resume = yield* Deferred.make<void>()
      let armed = false
      let down = false
      // As ioredis refuses a command on a closed connection: a promise rejected.
      const closed = Effect.tryPromise({
        try: () => Promise.reject(new Error("Connection is closed.")),
        catch: () => new Redis.RedisError({ operation: "EVALSHA", reason: "Connection is closed." })
      })
      const flaky: Redis.Service = {
        ...redis,
        script: (lua) => {
          const run = redis.script(lua)
          return (keys, args) => {
            if (down) return closed
            if (args[0] !== "commit" || !armed) return run(keys, args)
            armed = false
            return redis.command("HINCRBY", [stateKey, "version", 1]).pipe(
              Effect.zipRight(run(keys, args)),
              Effect.tap(() => Deferred.succeed(conflicted, undefined)),
              Effect.tap(() => Deferred.await(resume))
            )
          }
        }
      }
      // Heartbeats every second.
      const limiter = yield* Effect.provideService(
        ConcurrencyLimiter.makeRedis({ name, initial: 2, leaseTtl: "3 seconds" }),
        Redis.Redis,
        flaky
      )
      const first = yield* Scope.make()
      const one = yield* acceptOne(limiter, first)
      expect(yield* acceptedOnceAt(1)).toBe(1)
      armed = true
      const second = yield* Scope.make()
      const two = yield* acceptOne(limiter, second)
      yield* Deferred.await(conflicted)
      // Its permit is released while the commit that conflicted is on its way: it never counts.
      yield* two.complete({ _tag: "Success" })
      yield* Scope.close(second, Exit.void)
      expect(yield* acceptedOnceAt(1)).toBe(1)
      // The retry fails: its events wait for a flush after the rejoin...
      down = true
      yield* Deferred.succeed(resume, undefined)
      yield* logsSaid(logs, "counted in this process", 1)
      down = false
      yield* logsSaid(logs, "shared again", 1)
      // ...but Redis fails again first (the next heartbeat): they are applied locally.
      down = true
      yield* logsSaid(logs, "counted in this process", 2)
      down = false
      yield* logsSaid(logs, "shared again", 2)

      const leases = redis.command("ZCARD", [`${redis.key("limiter", name)}:leases`])
      // A permit never accepted takes nothing off: the first is outstanding.
      yield* Effect.scoped(limiter.acquire())
      yield* until(leases, (n) => n === 1)
      expect(yield* acceptedOnceAt(1)).toBe(1)
      yield* one.complete({ _tag: "Success" })
      yield* Scope.close(first, Exit.void)
      yield* until(leases, (n) => n === 0)
      expect(yield* acceptedOnceAt(0)).toBe(0)
      const third = yield* Scope.make()
      for (let i = 1; i <= 2; i++) {
        yield* acceptOne(limiter, third)
        expect(yield* acceptedOnceAt(i)).toBe(i)
      }
      // The second acceptance, at the top of the limit, grows it in slow start.
      const grown = until(limiter.snapshot, (snapshot) => snapshot.limit === 3).pipe(Effect.orElse(() => limiter.snapshot))
      expect((yield* grown).limit).toBe(3)
      yield* Scope.close(third, Exit.void)
    }).pipe(capturingLogs(logs))
  }, { timeout: 30_000 })

  it.scopedLive("a ticket placed while the server has lost its process's presence is granted at once, not taken for a dead process's", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      const limiter = yield* Effect.provideService(ConcurrencyLimiter.makeRedis({ name: "absent", permits: 2 }), Redis.Redis, redis)
      yield* Effect.scoped(limiter.acquire())
      // As after a restart, or a heartbeat (the next one up to 5/3 s away) late past its TTL.
      yield* redis.command("DEL", [redis.key("lanes", "process", (yield* onlyProcess(redis)))])
      yield* Effect.scoped(limiter.acquire()).pipe(Effect.timeout("3 seconds"))
    }), { timeout: 30_000 })

  it.scopedLive("a waiting ticket dropped while its owner's presence had lapsed is placed again by the owner's heartbeat", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const options = { name: "lapsed", permits: 1, leaseTtl: "3 seconds" } as const
      const a = yield* limiterOn(server, options)
      const b = yield* limiterOn(server, options)
      const redis = yield* Redis.make({ url: server.url })
      const holding = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(a.withPermit(() => Effect.zipRight(Deferred.succeed(holding, undefined), Deferred.await(release))))
      yield* Deferred.await(holding)
      const waiter = yield* Effect.fork(b.withPermit(() => Effect.void))
      yield* until(b.snapshot, (snapshot) => snapshot.queued === 1)
      const queue = `${redis.key("limiter", options.name)}:q:interactive`
      const [ticket] = (yield* until(redis.command("ZRANGE", [queue, 0, -1]), (ids) => (ids as Array<string>).length === 1)) as [string]
      // b's presence lapses (a heartbeat late past its TTL) just as a's permit comes back.
      const owner = ticket.slice(0, ticket.lastIndexOf("."))
      yield* redis.command("DEL", [redis.key("lanes", "process", owner)])
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      // b's next heartbeat (within a second) finds its ticket gone and queues it again.
      yield* Fiber.join(waiter).pipe(Effect.timeout("3 seconds"))
    }), { timeout: 30_000 })

  it.scopedLive("property: random acquires, releases and cancels on two limiters never exceed the limit, grant no one twice, leave no one waiting", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const connections = [yield* Redis.make({ url: server.url }), yield* Redis.make({ url: server.url })]
      const step = FastCheck.record({
        op: FastCheck.constantFrom("acquire", "acquire", "release", "cancel"),
        who: FastCheck.integer({ min: 0, max: 1 }),
        pick: FastCheck.nat(),
        // Every one of a lane's four queues.
        priority: FastCheck.constantFrom<ConcurrencyLimiter.Priority>("interactive", "batch"),
        returning: FastCheck.boolean()
      })
      let run = 0
      yield* Effect.promise(() =>
        FastCheck.assert(
          FastCheck.asyncProperty(FastCheck.integer({ min: 1, max: 3 }), FastCheck.array(step, { maxLength: 24 }), (permits, steps) =>
            Effect.runPromise(Effect.scoped(scenario(connections, `property-${run++}`, permits, steps)))),
          { numRuns: 25 }
        )
      )
    }), { timeout: 60_000 })
})

/** A permit of `limiter` taken into `scope` and reported accepted upstream. */
const acceptOne = (limiter: ConcurrencyLimiter.Service, scope: Scope.Scope) =>
  Effect.flatMap(Scope.extend(limiter.acquire(), scope), (permit) => Effect.as(permit.accepted, permit))

/**
 * The requests the lane of limiter `name` counts accepted on the server (its set of their leases):
 * once it is `expected`, or as it is 5 s later.
 */
const acceptedCount = (redis: Redis.Service, name: string) => {
  const count = Effect.map(redis.command("ZCARD", [`${redis.key("limiter", name)}:accepted`]), Number)
  return (expected: number) => until(count, (n) => n === expected).pipe(Effect.orElse(() => count))
}

/**
 * Four permits of an adaptive limiter (initial limit 4) accepted, counted on the server (`midway`
 * run after the second), then the lane's state lost (`lose`) and the four ended: the server counts
 * none of them, then the new acceptances one by one, and the limit the lane came back with
 * (`limitAfter`) grows when they reach it.
 */
const lostLaneState = (
  name: string,
  server: RedisServer,
  redis: Redis.Service,
  lose: Effect.Effect<unknown, unknown>,
  { limitAfter, midway = Effect.void }: { readonly limitAfter: number; readonly midway?: Effect.Effect<unknown, unknown> }
) =>
  Effect.gen(function*() {
    const limiter = yield* limiterOn(server, { name, initial: 4 })
    const acceptedOnceAt = acceptedCount(redis, name)

    const before = yield* Scope.make()
    const earlier: Array<ConcurrencyLimiter.Permit> = []
    for (let i = 1; i <= 4; i++) {
      earlier.push(yield* acceptOne(limiter, before))
      expect(yield* acceptedOnceAt(i)).toBe(i)
      if (i === 2) yield* midway
    }
    // The fourth acceptance, at the top of the limit, grew it in slow start.
    yield* until(limiter.snapshot, (snapshot) => snapshot.limit === 5)
    yield* lose
    yield* Effect.forEach(earlier, (permit) => permit.complete({ _tag: "Success" }))
    yield* Scope.close(before, Exit.void)
    expect(yield* acceptedOnceAt(0)).toBe(0)

    const after = yield* Scope.make()
    yield* until(limiter.snapshot, (snapshot) => snapshot.limit === limitAfter)
    for (let i = 1; i <= limitAfter; i++) {
      yield* acceptOne(limiter, after)
      expect(yield* acceptedOnceAt(i)).toBe(i)
    }
    // The acceptance at the top of the limit grows it in slow start.
    const grown = until(limiter.snapshot, (snapshot) => snapshot.limit > limitAfter).pipe(Effect.orElse(() => limiter.snapshot))
    expect((yield* grown).limit).toBe(limitAfter + 1)
    yield* Scope.close(after, Exit.void)
    expect(yield* acceptedOnceAt(0)).toBe(0)
  })

/** Once `logs` hold a message with `text` `times` times (bounded, as `until`). */
const logsSaid = (logs: ReadonlyArray<Logged>, text: string, times = 1) =>
  until(Effect.sync(() => logs.filter((log) => log.message.includes(text)).length), (n) => n === times)

interface Caller {
  readonly fiber: Fiber.RuntimeFiber<void, ConcurrencyLimiter.QueueFull>
  readonly done: Deferred.Deferred<void>
  grants: number
}

/** Plays `steps` on two limiters of `name`; fails on a broken invariant. */
const scenario = (
  connections: ReadonlyArray<Redis.Service>,
  name: string,
  permits: number,
  steps: ReadonlyArray<
    {
      readonly op: string
      readonly who: number
      readonly pick: number
      readonly priority: ConcurrencyLimiter.Priority
      readonly returning: boolean
    }
  >
) =>
  Effect.gen(function*() {
    const limiters = yield* Effect.forEach(connections, (redis) =>
      Effect.provideService(ConcurrencyLimiter.makeRedis({ name, permits }), Redis.Redis, redis))
    let inFlight = 0
    let most = 0
    const callers: Array<Caller> = []
    for (const { op, pick, priority, returning, who } of steps) {
      const granted = callers.filter((caller) => caller.grants > 0 && caller.fiber.unsafePoll() === null)
      const waiting = callers.filter((caller) => caller.grants === 0 && caller.fiber.unsafePoll() === null)
      if (op === "acquire") {
        const done = yield* Deferred.make<void>()
        const caller: Caller = { done, grants: 0, fiber: undefined as never }
        const use = Effect.acquireUseRelease(
          Effect.sync(() => {
            caller.grants++
            most = Math.max(most, ++inFlight)
          }),
          () => Deferred.await(done),
          () => Effect.sync(() => inFlight--)
        )
        callers.push(Object.assign(caller, { fiber: yield* Effect.fork(limiters[who]!.withPermit(() => use, { priority, returning })) }))
      } else if (op === "release" && granted.length > 0) {
        yield* Deferred.succeed(granted[pick % granted.length]!.done, undefined)
      } else if (op === "cancel" && waiting.length > 0) {
        yield* Fiber.interrupt(waiting[pick % waiting.length]!.fiber)
      }
      yield* Effect.sleep("2 millis")
    }
    // Every caller still waiting is granted in turn once the others release.
    yield* Effect.forEach(callers, (caller) => Deferred.succeed(caller.done, undefined))
    yield* Effect.forEach(callers, (caller) => Fiber.await(caller.fiber)).pipe(Effect.timeout("5 seconds"))
    expect(most).toBeLessThanOrEqual(permits)
    for (const caller of callers) expect(caller.grants).toBeLessThanOrEqual(1)
    expect(inFlight).toBe(0)
    // Every lease handed back on the server too.
    const redis = connections[0]!
    yield* until(redis.command("ZCARD", [`${redis.key("limiter", name)}:leases`]), (leases) => leases === 0)
  })
