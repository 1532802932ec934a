/**
 * The account pool's lanes shared through a real redis-server: several pools over their own
 * connections, in one test process, on one account of the loopback Simulator. Real time, short.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as AccountPool from "../src/AccountPool.js"
import type { Account } from "../src/Accounts.js"
import * as Batch from "../src/Batch.js"
import * as CostLedger from "../src/CostLedger.js"
import { AccountSlot, type Lanes } from "../src/internal/dispatcher.js"
import * as RedisLanes from "../src/internal/redisDispatcher.js"
import * as Redis from "../src/Redis.js"
import * as Router from "../src/Router.js"
import * as Simulator from "../src/Simulator.js"
import * as Transport from "../src/Transport.js"
import { flatPricing } from "./support/pricing.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { awaitReady, keysWithTtl, redisServer, redisServerPresent, type RedisServer, skipMessage, until } from "./support/redisServer.js"

const flash = "deepseek-v4-flash"

const account = (baseUrl: string, concurrency?: Account["concurrency"]): Account => ({
  name: "shared",
  provider: "deepseek",
  baseUrl,
  keys: [Redacted.make(Simulator.defaultKey)],
  fallback: false,
  models: {},
  ...(concurrency === undefined ? {} : { concurrency })
})

/** A pool over its own connection to `server`. */
const poolOn = (server: RedisServer, accounts: ReadonlyArray<Account>, options: AccountPool.RedisOptions = {}) =>
  Effect.gen(function*() {
    const redis = yield* Redis.make({ url: server.url })
    return yield* AccountPool.makeRedis(accounts, { preflight: false, warmUp: 0, ...options }).pipe(
      Effect.provideService(Redis.Redis, redis)
    )
  })

/** What the pools need besides Redis: one HTTP client and one ledger for the test. */
const services = Layer.merge(Transport.nodeHttpClient(), CostLedger.layer({ pricing: flatPricing }))

const ask = (pool: AccountPool.Service, i: number) =>
  pool.create({ model: flash, messages: [{ role: "user", content: `question ${i}` }] })

/** `count` calls on each pool, `concurrency` at a time per pool; answers how many failed. */
const load = (pools: ReadonlyArray<AccountPool.Service>, count: number, concurrency: number) =>
  Effect.map(
    Effect.all(
      pools.map((pool) =>
        Effect.forEach(Array.from({ length: count }, (_, i) => i), (i) => Effect.either(ask(pool, i)), { concurrency })
      ),
      { concurrency: "unbounded" }
    ),
    (results) => results.flat().filter((result) => result._tag === "Left").length
  )

/**
 * A batch of `count` lines named `name` in `dir`, through its own pool and connection to the Redis
 * at `redisUrl`, against `baseUrl`; with a way to count the lines answered so far.
 */
const batchOn = (baseUrl: string, redisUrl: string, dir: string, name: string, count: number) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const lines = Array.from({ length: count }, (_, i) =>
      JSON.stringify({
        custom_id: `${name}-${i}`,
        method: "POST",
        url: "/v1/chat/completions",
        body: { model: flash, messages: [{ role: "user", content: `${i}` }] }
      }))
    yield* fs.writeFileString(`${dir}/${name}.jsonl`, lines.map((l) => `${l}\n`).join(""))
    const client = Batch.layerAccounts([account(baseUrl)], {
      pool: { preflight: false, warmUp: 0 },
      ledger: CostLedger.layer({ pricing: flatPricing }),
      router: Router.layerDefault,
      redis: Redis.layer({ url: redisUrl })
    })
    const output = `${dir}/${name}.out.jsonl`
    const answered = Effect.map(Effect.orElseSucceed(fs.readFileString(output), () => ""), (text) => text.split("\n").length - 1)
    return { run: Batch.run({ input: `${dir}/${name}.jsonl`, output }).pipe(Effect.provide(client)), answered }
  })

describe.skipIf(!redisServerPresent)(skipMessage("AccountPool on Redis"), () => {
  it.scopedLive("three pools with a ceiling of 12 each share one account's 12: no 429", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const simulator = yield* Simulator.make({ limit: { [flash]: 12 }, queueDelay: { min: "20 millis", max: "60 millis" } })
      const accounts = [account(simulator.baseUrl, 12)]
      const pools = [yield* poolOn(server, accounts), yield* poolOn(server, accounts), yield* poolOn(server, accounts)]
      const failed = yield* load(pools, 40, 20)
      const stats = (yield* simulator.stats).accounts["default"]!.byModel[flash]!
      expect(failed).toBe(0)
      expect(stats.completed).toBe(120)
      expect(stats.rateLimited).toBe(0)
      expect(stats.maxInFlight).toBe(12)
    }).pipe(Effect.provide(services)))

  it.scopedLive("a fixed limit holds the lane while its pool runs, an adaptive pool beside it included", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const simulator = yield* Simulator.make({ limit: { [flash]: 8 }, queueDelay: { min: "20 millis", max: "40 millis" } })
      // A short lease: the run outlasts several, so the ceiling is renewed as it goes.
      const fixed = yield* poolOn(server, [account(simulator.baseUrl, 2)], { leaseTtl: "500 millis" })
      const adaptive = yield* poolOn(server, [account(simulator.baseUrl)], { leaseTtl: "500 millis" })
      expect(yield* load([fixed, adaptive], 60, 8)).toBe(0)
      const stats = (yield* simulator.stats).accounts["default"]!.byModel[flash]!
      expect(stats.completed).toBe(120)
      expect(stats.maxInFlight).toBe(2)
    }).pipe(Effect.provide(services)))

  it.scopedLive("three adaptive pools learn one limit together: near the cap, few 429s", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const simulator = yield* Simulator.make({
        limit: { [flash]: 12 },
        queueDelay: { min: "40 millis", max: "80 millis" },
        keepAliveInterval: "20 millis"
      })
      const accounts = [account(simulator.baseUrl)]
      // A short lease TTL: a heartbeat every 500 ms tells each pool the last limit.
      const options = { leaseTtl: "1500 millis" } as const
      const pools = [yield* poolOn(server, accounts, options), yield* poolOn(server, accounts, options), yield* poolOn(server, accounts, options)]
      const count = 100
      // The lane's set of accepted leases, sampled while the calls run.
      const redis = yield* Redis.make({ url: server.url })
      const accepted = redis.command("ZCARD", [`${redis.key("pool", "lane", "shared", flash)}:accepted`])
      let mostAccepted = 0
      const sampling = yield* Effect.fork(
        Effect.repeat(Effect.map(accepted, (n) => (mostAccepted = Math.max(mostAccepted, n as number))), Schedule.spaced("20 millis"))
      )
      const failed = yield* load(pools, count, 20)
      yield* Fiber.interrupt(sampling)
      const stats = (yield* simulator.stats).accounts["default"]!.byModel[flash]!
      // The pool does not retry: its 429s are its only failures.
      expect(failed).toBe(stats.rateLimited)
      expect(stats.completed).toBe(3 * count - failed)
      expect(stats.maxInFlight).toBeGreaterThanOrEqual(10)
      // Typically 2–3 % (one run in five about 9 %, a cap fall misread while flushes lag).
      expect(stats.rateLimited / (3 * count)).toBeLessThanOrEqual(0.1)
      // Every pool sees the one shared limit (by its next heartbeat at the latest).
      const limitsSeen = Effect.forEach(pools, (pool) => Effect.map(pool.snapshot, ([only]) => only!.models[0]!.limit))
      const limits = yield* until(limitsSeen, (limits) => new Set(limits).size === 1)
      expect(limits[0]).toBeGreaterThanOrEqual(9)
      expect(limits[0]).toBeLessThanOrEqual(14)
      // The set held the acceptances in flight, and is empty once every call ended: each accepted
      // lease left it with its release.
      expect(mostAccepted).toBeGreaterThan(0)
      expect(yield* until(accepted, (n) => n === 0).pipe(Effect.orElse(() => accepted))).toBe(0)
    }).pipe(Effect.provide(services)))

  it.scopedLive("the shared limit follows a cap that falls and rises again: 12, then 3, then 12", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const simulator = yield* Simulator.make({
        limit: { [flash]: [{ atMs: 0, limit: 12 }, { atMs: 1_000, limit: 3 }, { atMs: 2_500, limit: 12 }] },
        queueDelay: { min: "40 millis", max: "80 millis" },
        keepAliveInterval: "20 millis"
      })
      const accounts = [account(simulator.baseUrl)]
      const options = { leaseTtl: "1500 millis" } as const
      const pools = [yield* poolOn(server, accounts, options), yield* poolOn(server, accounts, options), yield* poolOn(server, accounts, options)]
      yield* load(pools, 150, 20)
      const timeline = (yield* simulator.stats).accounts["default"]!.byModel[flash]!.timeline
      // Found again after the fall: the last phase holds near 12, not what the fall left.
      const risen = timeline.filter((sample) => sample.t >= 3_500).map((sample) => sample.inFlight)
      expect(Math.max(...risen)).toBeGreaterThanOrEqual(10)
    }).pipe(Effect.provide(services)))

  it.scopedLive("a batch that joins one filling the account answers as fast as it from its first round of calls, not at what the first left it", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const simulator = yield* Simulator.make({ limit: { [flash]: 24 }, queueDelay: { min: "150 millis", max: "250 millis" } })
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "fair-share-" })
      const count = 600
      const batches = {
        first: yield* batchOn(simulator.baseUrl, server.url, dir, "first", count),
        second: yield* batchOn(simulator.baseUrl, server.url, dir, "second", count)
      }
      const answered = (name: keyof typeof batches) => batches[name].answered
      const inFlight = Effect.map(simulator.stats, (stats) => stats.accounts["default"]!.byModel[flash]?.inFlight ?? 0)
      const first = yield* Effect.fork(batches.first.run)
      yield* until(inFlight, (n) => n >= 20)
      const second = yield* Effect.fork(batches.second.run)
      // Once the second answers (its start, slower on a busy machine, is not what is measured),
      // the two answer about as fast as each other: they halve the account from the second's
      // first round on. The second's pace against the first's over 1.5 s: 1.00-1.04 (3 runs),
      // 0.73-1.07 with three such tests at once on 2 cores; without shares 0.37-0.49.
      yield* until(answered("second"), (lines) => lines >= 24)
      const before = [yield* answered("first"), yield* answered("second")] as const
      yield* Effect.sleep("1500 millis")
      const after = [yield* answered("first"), yield* answered("second")] as const
      expect((after[1] - before[1]) / (after[0] - before[0])).toBeGreaterThanOrEqual(0.6)
      for (const run of [first, second]) expect((yield* Fiber.join(run)).succeeded).toBe(count)
      // The adaptive limit's learning costs a few; the calls queued for shares none.
      expect((yield* simulator.stats).accounts["default"]!.byModel[flash]!.rateLimited).toBeLessThanOrEqual(2 * count * 0.02)
    }).pipe(Effect.provide(NodeContext.layer)), { timeout: 60_000 })

  it.scopedLive("a coordinator counts what is left of its share of a lane others fill as free (shared by the processes using it), but not while its account is half-open", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const hooks: RedisLanes.Hooks = { opened: () => {}, changed: () => {}, roomMayHaveGrown: () => {} }
      // Three processes' coordinators of one account whose lane is limited to 4: `a` holds all 4,
      // another is idle, and `b` comes.
      const coordinator = (slot: AccountSlot) =>
        Effect.gen(function*() {
          const redis = yield* Redis.make({ url: server.url })
          const spec = (): RedisLanes.LaneSpec => ({ key: redis.key("pool", "lane", "acct", "x"), account: undefined, limit: 4 })
          return yield* RedisLanes.make(redis, [slot], spec, hooks, { leaseTtl: Duration.seconds(3) })
        })
      const a = yield* coordinator(new AccountSlot(0, false, Infinity))
      // A third process, alive but idle: it uses no lane, so it takes no share.
      yield* coordinator(new AccountSlot(0, false, Infinity))
      for (let i = 0; i < 4; i++) {
        const entry = a.enter("x", "batch", new Set())
        if (entry._tag === "Queued") yield* Deferred.await(entry.waiter.wake)
      }
      const slot = new AccountSlot(0, false, Infinity)
      const b = yield* coordinator(slot)
      const lane = b.laneOf(slot, "x")
      // Once its heartbeat says the other holds all 4: no permit is free, but half of them are its
      // share (a third until it knows which processes use the lane). It counts itself in before
      // it uses the lane: coming back to a lane, it does not take the other's share for its own.
      yield* until(Effect.sync(() => lane.inFlight), (n) => n === 4)
      expect(yield* until(Effect.sync(() => b.capacity().free), (free) => free === 2)).toBe(2)
      const queued = b.enter("x", "batch", new Set())
      expect(queued._tag).toBe("Queued")
      expect(b.capacity().free).toBe(1)
      // A process of an earlier version, which does not say which lanes it uses, counts as using them all.
      const watcher = yield* Redis.make({ url: server.url })
      yield* watcher.command("ZADD", [watcher.key("lanes", "processes"), Number.MAX_SAFE_INTEGER, "an-earlier-version"])
      expect(yield* until(Effect.sync(() => b.capacity().free), (free) => free === 0)).toBe(0)
      yield* watcher.command("ZREM", [watcher.key("lanes", "processes"), "an-earlier-version"])
      expect(yield* until(Effect.sync(() => b.capacity().free), (free) => free === 1)).toBe(1)
      // Half-open, its room is its canaries'.
      slot.canaries = 1
      slot.setProbing(true)
      expect(b.capacity().free).toBe(0)
    }), { timeout: 20_000 })

  it.scopedLive("every key it leaves has a TTL", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const simulator = yield* Simulator.make({ limit: { [flash]: 4 }, queueDelay: { min: "10 millis", max: "20 millis" } })
      const accounts = [{ ...account(simulator.baseUrl), accountConcurrency: 3 }]
      const pools = [yield* poolOn(server, accounts), yield* poolOn(server, accounts)]
      expect(yield* load(pools, 20, 6)).toBe(0)
      const keys = yield* keysWithTtl(yield* Redis.make({ url: server.url }))
      expect(keys.length).toBeGreaterThan(0)
      expect(keys.filter((key) => key.ttl < 0)).toEqual([])
    }).pipe(Effect.provide(services)))

  it.scopedLive("Redis stopped mid-run: calls go on at each pool's share, every one answered once; back empty, the pools rejoin", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const simulator = yield* Simulator.make({ limit: { [flash]: 12 }, queueDelay: { min: "20 millis", max: "40 millis" } })
      const accounts = [account(simulator.baseUrl, 12)]
      const pools = [yield* poolOn(server, accounts), yield* poolOn(server, accounts)]
      const watcher = yield* Redis.make({ url: server.url })
      // A call refused with 429 is sent again: at the switch, a pool above its share keeps its permits.
      const askUntilAnswered = (pool: AccountPool.Service, i: number) =>
        ask(pool, i).pipe(Effect.retry({ while: (error) => error._tag === "RateLimited", schedule: Schedule.spaced("20 millis") }))
      const run = (from: number) =>
        Effect.all(pools.map((pool, p) =>
          Effect.forEach(Array.from({ length: 40 }, (_, i) => from + 1000 * p + i), (i) => askUntilAnswered(pool, i), {
            concurrency: 16
          })
        ), { concurrency: "unbounded" })
      yield* run(0)
      const localModeBefore = (yield* Metric.value(AccountPool.redisLocalModeCounter)).count
      const localNow = Effect.map(Metric.value(AccountPool.redisLocalGauge), (state) => state.value)
      const localBefore = yield* localNow
      yield* server.stop
      yield* awaitReady(watcher, false)
      yield* run(100)
      const down = (yield* simulator.stats).accounts["default"]!.byModel[flash]!
      // One warning per pool from its lanes (its breakers, keys and balance say so on their own).
      const lanesDown = logs.filter((log) => log.level === "WARN" && log.message.includes("shared concurrency limit"))
      expect(lanesDown).toHaveLength(2)
      expect(lanesDown[0]?.message).toContain(`Redis at ${watcher.url}`)
      expect((yield* Metric.value(AccountPool.redisLocalModeCounter)).count - localModeBefore).toBe(2)
      // Both pools count alone now.
      expect((yield* localNow) - localBefore).toBe(2)
      // Each pool at its share of 12: 6.
      const shares = yield* Effect.forEach(pools, (pool) => Effect.map(pool.snapshot, ([only]) => only!.models[0]!.limit))
      expect(shares).toEqual([6, 6])
      yield* server.start
      yield* awaitReady(watcher, true)
      const rejoined = Effect.sync(() =>
        logs.filter((log) => log.level === "INFO" && log.message.includes("concurrency limits are shared again")).length
      )
      yield* Effect.repeat(rejoined, { until: (n) => n === 2, schedule: Schedule.spaced("20 millis") }).pipe(Effect.timeout("10 seconds"))
      expect(yield* localNow).toBe(localBefore)
      yield* run(200)
      // The shared lane, seeded by a pool's share, climbed back to the ceiling under the load.
      const limits = yield* Effect.forEach(pools, (pool) => Effect.map(pool.snapshot, ([only]) => only!.models[0]!.limit))
      expect(limits).toEqual([12, 12])
      const stats = (yield* simulator.stats).accounts["default"]!.byModel[flash]!
      // Every call answered once; refusals only while the permits held at the switch came back.
      expect(stats.completed).toBe(3 * 80)
      expect(down.completed).toBe(2 * 80)
      expect(stats.rateLimited).toBeLessThanOrEqual(6)
      expect(stats.rateLimited).toBe(down.rateLimited)
    }).pipe(capturingLogs(logs), Effect.provide(services))
  }, { timeout: 60_000 })

  it.scopedLive("a batch whose Redis stopped mid-run answers every line and says in its summary that it went on without it", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const simulator = yield* Simulator.make({ limit: { [flash]: 8 }, queueDelay: { min: "20 millis", max: "40 millis" } })
      const dir = yield* Effect.flatMap(FileSystem.FileSystem, (fs) => fs.makeTempDirectoryScoped({ prefix: "redis-lost-" }))
      const count = 200
      const batch = yield* batchOn(simulator.baseUrl, server.url, dir, "lost", count)
      const run = yield* Effect.fork(batch.run)
      yield* until(batch.answered, (n) => n >= 20)
      yield* server.stop
      const summary = yield* Fiber.join(run)
      expect(summary).toMatchObject({ succeeded: count, failed: 0, redisLocalMode: 1, redisAwayAtEnd: true })
      expect(Batch.toJson(summary)).toMatchObject({ redis_local_mode: 1, redis_away_at_end: true })
      expect(Batch.formatSummary(summary)).toContain(
        "redis:     lost once: this process counted the shared limits alone, at its share, to the end: Redis did not come back"
      )
    }).pipe(capturingLogs([]), Effect.provide(NodeContext.layer)), { timeout: 60_000 })

  it.scopedLive("a Redis restarted empty counts the calls held on a lane against their account's cap again, though no call is placed on that lane", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const hooks: RedisLanes.Hooks = { opened: () => {}, changed: () => {}, roomMayHaveGrown: () => {} }
      // Two processes' coordinators of one account capped at 2 over its models, each model's lane at 5.
      const coordinator = Effect.gen(function*() {
        const redis = yield* Redis.make({ url: server.url })
        const spec = (_: AccountSlot, model: string): RedisLanes.LaneSpec => ({
          key: redis.key("pool", "lane", "acct", model),
          account: { key: redis.key("pool", "account", "acct"), cap: 2 },
          limit: 5
        })
        return yield* RedisLanes.make(redis, [new AccountSlot(0, false, 2)], spec, hooks, { leaseTtl: Duration.seconds(30) })
      })
      const a = yield* coordinator
      /** Whether a call on `model` is granted within `within`; one that is not leaves the queue. */
      const granted = (lanes: Lanes, model: string, within: Duration.DurationInput) => {
        const entry = lanes.enter(model, "interactive", new Set())
        if (entry._tag === "Granted") return Effect.succeed(true)
        return Deferred.await(entry.waiter.wake).pipe(
          Effect.timeout(within),
          Effect.as(true),
          Effect.orElse(() => Effect.sync(() => lanes.cancel(entry.waiter)).pipe(Effect.as(false)))
        )
      }
      expect([yield* granted(a, "x", "5 seconds"), yield* granted(a, "x", "5 seconds")]).toEqual([true, true])
      const watcher = yield* Redis.make({ url: server.url })
      const accountLeases = watcher.command("ZCARD", [watcher.key("pool", "account", "acct") + ":leases"])
      yield* server.restart
      yield* awaitReady(watcher, true)
      // The holder's heartbeat adds its two leases back, to the account's count too.
      yield* until(accountLeases, (held) => held === 2)
      // Another process's first call, on another model, finds the account's cap taken.
      expect(yield* granted(yield* coordinator, "y", "500 millis")).toBe(false)
    }), { timeout: 20_000 })

  it.scopedLive("a lease refresh that fails (the server stopped during a long call) crashes nothing: the call ends", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const simulator = yield* Simulator.make({ limit: { [flash]: 4 }, queueDelay: { min: "1500 millis", max: "1500 millis" } })
      const pool = yield* poolOn(server, [account(simulator.baseUrl, 4)], { leaseTtl: "600 millis" })
      const call = yield* Effect.fork(ask(pool, 1))
      yield* Effect.sleep("300 millis")
      yield* server.stop
      const answer = yield* Fiber.join(call)
      expect(answer.choices[0]?.message.content).toBe("echo:question 1")
    }).pipe(Effect.provide(services)))
})
