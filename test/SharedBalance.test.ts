import { describe, expect, it } from "@effect/vitest"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Redis from "../src/Redis.js"
import * as SharedBalance from "../src/internal/sharedBalance.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { awaitReady, keysWithTtl, redisServer, redisServerPresent, type RedisServer, skipMessage, until } from "./support/redisServer.js"

const options = { leaseMillis: 300, verdictMillis: 200 }

const twoProcesses = (server: RedisServer) =>
  Effect.gen(function*() {
    const mine = yield* Redis.make({ url: server.url })
    const theirs = yield* Redis.make({ url: server.url })
    return {
      mine,
      theirs,
      a: yield* SharedBalance.onRedis(mine, "main", options),
      b: yield* SharedBalance.onRedis(theirs, "main", options)
    }
  })

/** A probe that counts its runs and answers `verdict` after 100 ms. */
const countingProbe = (verdict: SharedBalance.Verdict) => {
  const runs = { count: 0 }
  return { runs, probe: Effect.zipRight(Effect.sync(() => runs.count++), Effect.as(Effect.sleep("100 millis"), verdict)) }
}

describe.skipIf(!redisServerPresent)(skipMessage("Balance state on Redis"), () => {
  it.scopedLive("out in one is out in the other, and back in both; the marks carry TTLs", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const { a, b, mine } = yield* twoProcesses(server)
      const seen = yield* Effect.forkScoped(Stream.runCollect(Stream.take(b.changes, 2)))
      yield* a.markOut(60_000)
      expect(yield* b.isOut).toBe(true)
      const keys = yield* keysWithTtl(mine)
      expect(keys.map(({ key }) => key)).toEqual([mine.key("balance", "main")])
      expect(keys[0]!.ttl).toBeGreaterThan(60_000)
      expect(keys[0]!.ttl).toBeLessThanOrEqual(120_000)
      yield* a.markOk
      expect(yield* b.isOut).toBe(false)
      expect(Array.from(yield* Fiber.join(seen))).toEqual(["out", "ok"])
    }))

  it.scopedLive("one probe for both: the other takes its verdict", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const { a, b, mine } = yield* twoProcesses(server)
      const { probe, runs } = countingProbe("unavailable")
      const verdicts = yield* Effect.all([a.check(probe), b.check(probe)], { concurrency: 2 })
      expect(verdicts).toEqual(["unavailable", "unavailable"])
      expect(runs.count).toBe(1)
      for (const { ttl } of yield* keysWithTtl(mine)) {
        expect(ttl).toBeGreaterThan(0)
        expect(ttl).toBeLessThanOrEqual(300)
      }
      // Once the verdict has expired, a check probes again.
      yield* Effect.sleep("250 millis")
      expect(yield* b.check(probe)).toBe("unavailable")
      expect(runs.count).toBe(2)
    }))

  it.scopedLive("the prober dies holding the lease: the other probes once the lease's TTL is over", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const theirs = yield* Redis.make({ url: server.url })
      const b = yield* SharedBalance.onRedis(theirs, "main", options)
      const prober = yield* Scope.make()
      const a = yield* Effect.provideService(
        Effect.flatMap(Redis.make({ url: server.url }), (redis) => SharedBalance.onRedis(redis, "main", options)),
        Scope.Scope,
        prober
      )
      const started = yield* Clock.currentTimeMillis
      yield* Effect.forkIn(a.check(Effect.never), prober)
      yield* until(theirs.command("EXISTS", [theirs.key("balance", "main", "lease")]), (n) => n === 1)
      yield* Scope.close(prober, Exit.void)
      const { probe, runs } = countingProbe("available")
      expect(yield* b.check(probe)).toBe("available")
      expect(runs.count).toBe(1)
      expect((yield* Clock.currentTimeMillis) - started).toBeGreaterThanOrEqual(300)
    }))

  it.scopedLive("Redis lost: each probes for itself, one warning each; back: one note each", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const { a, b, mine, theirs } = yield* twoProcesses(server)
      yield* server.stop
      yield* awaitReady(mine, false)
      yield* awaitReady(theirs, false)
      const { probe, runs } = countingProbe("available")
      yield* Effect.all([a.check(probe), b.check(probe), a.markOut(1_000)], { concurrency: 3 })
      expect(runs.count).toBe(2)
      const warnings = logs.filter((log) => log.level === "WARN")
      expect(warnings).toHaveLength(2)
      for (const warning of warnings) expect(warning.message).toContain(`Redis at redis://127.0.0.1:${server.port}`)
      yield* server.start
      yield* until(Effect.sync(() => logs.filter((log) => log.message.includes("back on Redis")).length), (n) => n === 2)
      yield* a.markOut(60_000)
      expect(yield* b.isOut).toBe(true)
    }).pipe(capturingLogs(logs))
  })
})
