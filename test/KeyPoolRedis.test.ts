import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as KeyPool from "../src/KeyPool.js"
import * as Redis from "../src/Redis.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { awaitReady, keysWithTtl, redisServer, redisServerPresent, type RedisServer, skipMessage, until } from "./support/redisServer.js"

const secrets = ["sk-first-0123456789abcdef0123456789", "sk-second-abcdef0123456789abcdef0123"]
const keys = secrets.map(Redacted.make)

const poolOn = (redis: Redis.Service, cooldown: Duration.DurationInput = "400 millis") =>
  Effect.provideService(KeyPool.makeRedis(keys, { account: "main", cooldown }), Redis.Redis, redis)

const twoPools = (server: RedisServer) =>
  Effect.gen(function*() {
    const mine = yield* Redis.make({ url: server.url })
    const theirs = yield* Redis.make({ url: server.url })
    return { mine, theirs, a: yield* poolOn(mine), b: yield* poolOn(theirs) }
  })

describe.skipIf(!redisServerPresent)(skipMessage("KeyPool on Redis"), () => {
  it.scopedLive("a key rejected in one rests in both, comes back after the cooldown; its fingerprint is its only trace", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const { a, b, mine } = yield* twoPools(server)
      const first = yield* a.acquire
      expect(first.id).toBe("key#1")
      yield* a.reject(first)
      yield* until(b.available, (n) => n === 1)
      expect((yield* b.acquire).id).toBe("key#2")
      expect((yield* b.acquire).id).toBe("key#2")
      expect(yield* b.resting).toEqual(["key#1"])

      const stored = yield* keysWithTtl(mine)
      expect(stored.map(({ key }) => key)).toEqual([mine.key("keys", "main", KeyPool.fingerprintOf(keys[0]!))])
      expect(stored[0]!.ttl).toBeGreaterThan(0)
      expect(stored[0]!.ttl).toBeLessThanOrEqual(400)
      const everything = JSON.stringify(stored) + String(yield* mine.command("GET", [stored[0]!.key]))
      for (const secret of secrets) expect(everything).not.toContain(secret)

      yield* until(b.available, (n) => n === 2)
      yield* until(a.available, (n) => n === 2)
      expect(yield* keysWithTtl(mine)).toEqual([])
    }))

  it.scopedLive("as layers (layerRedis), two pools of one account share a rejection", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const poolLayer = KeyPool.layerRedis(keys, { account: "main", cooldown: "1 minute" }).pipe(
        Layer.provide(Redis.layer({ url: server.url }))
      )
      const [a, b] = [yield* Layer.build(poolLayer), yield* Layer.build(poolLayer)].map((context) => Context.get(context, KeyPool.KeyPool))
      yield* a!.reject(yield* a!.acquire)
      yield* until(b!.available, (n) => n === 1)
      expect((yield* b!.acquire).id).toBe("key#2")
    }))

  it.scopedLive("a cooldown of a fraction of a millisecond (\"400.5 millis\") is shared, not refused by the server", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const [mine, theirs] = [yield* Redis.make({ url: server.url }), yield* Redis.make({ url: server.url })]
      const [a, b] = [yield* poolOn(mine, "400.5 millis"), yield* poolOn(theirs, "400.5 millis")]
      yield* a.reject(yield* a.acquire)
      yield* until(b.available, (n) => n === 1)
      // The process that saw the 401 tells it; the one that learnt it from Redis does not again.
      expect(logs.filter((log) => log.level === "WARN").map((log) => log.message)).toEqual([
        "KeyPool: the upstream rejected its key#1 (401); it rests 400.5ms, 1 of 2 keys usable"
      ])
    }).pipe(capturingLogs(logs))
  })

  /** The warnings about Redis, not the keys the upstream rejected. */
  const redisWarnings = (logs: ReadonlyArray<Logged>) => logs.filter((log) => log.level === "WARN" && !log.message.includes("rejected its"))

  it.scopedLive("Redis lost: cooldowns are local, one warning each; back: a rejection is shared again, one note each", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const { a, b, mine, theirs } = yield* twoPools(server)
      yield* server.stop
      yield* awaitReady(mine, false)
      const first = yield* a.acquire
      yield* a.reject(first)
      yield* b.reject(first)
      expect(yield* a.available).toBe(1)
      expect(yield* b.available).toBe(1)
      expect(redisWarnings(logs)).toHaveLength(2)

      yield* server.start
      yield* awaitReady(mine, true)
      yield* awaitReady(theirs, true)
      yield* until(Effect.sync(() => logs.filter((log) => log.message.includes("back on Redis")).length), (n) => n === 2)
      yield* until(a.available, (n) => n === 2)
      const second = yield* a.acquire
      yield* a.reject(second)
      yield* until(b.available, (n) => n === 1)
      expect(redisWarnings(logs)).toHaveLength(2)
    }).pipe(capturingLogs(logs))
  })
})
