import { describe, expect, it } from "@effect/vitest"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Redis from "../src/Redis.js"
import * as TokenBucket from "../src/TokenBucket.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { awaitReady, keysWithTtl, redisServer, redisServerPresent, type RedisServer, skipMessage } from "./support/redisServer.js"

const connect = (server: RedisServer) => Redis.make({ url: server.url })

const bucketOn = (redis: Redis.Service, options: TokenBucket.RedisOptions) =>
  Effect.provideService(TokenBucket.makeRedis(options), Redis.Redis, redis)

const retryAfterMillis = (error: TokenBucket.RateLimitExceeded) =>
  Option.getOrThrow(Option.map(error.retryAfter, Duration.toMillis))

/** `effect` repeated until `done` holds of its result, every 10 ms for at most 5 s. */
const until = <A, E>(effect: Effect.Effect<A, E>, done: (a: A) => boolean) =>
  effect.pipe(Effect.filterOrFail(done), Effect.retry(Schedule.spaced("10 millis")), Effect.timeout("5 seconds"))

/** A bucket's units of `dimension` as stored on the server. */
const storedUnits = (redis: Redis.Service, name: string, dimension: TokenBucket.Dimension) =>
  Effect.map(redis.command("HGET", [redis.key("bucket", name), dimension]), Number)

const fortyPerSecond = { requests: { limit: 40, interval: "1 second" }, burst: { requests: 4 } } as const

describe.skipIf(!redisServerPresent)(skipMessage("TokenBucket on Redis"), () => {
  it.scopedLive("two services on two connections together stay within burst + rate", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const buckets = [yield* bucketOn(yield* connect(server), fortyPerSecond), yield* bucketOn(yield* connect(server), fortyPerSecond)]
      const start = yield* Clock.currentTimeMillis
      const cutOff = start + 500
      let granted = 0
      // Four callers per service; a take that ends after the cut-off is not counted.
      const caller = (bucket: TokenBucket.Service) =>
        Effect.gen(function*() {
          while (true) {
            yield* bucket.take()
            if ((yield* Clock.currentTimeMillis) > cutOff) return
            granted++
          }
        })
      yield* Effect.all(buckets.flatMap((bucket) => [1, 2, 3, 4].map(() => caller(bucket))), { concurrency: "unbounded" })
      // 4 at once, then one every 25 ms: 24 in 500 ms at most (one more for a timer firing early).
      expect(granted).toBeLessThanOrEqual(4 + 40 * 0.5 + 1)
      expect(granted).toBeGreaterThanOrEqual(15)
    }))

  it.scopedLive("fail mode's retryAfter is exact, by the server's clock", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const bucket = yield* bucketOn(yield* connect(server), {
        requests: { limit: 1, interval: "200 millis" },
        burst: { requests: 1 },
        onExhausted: "fail"
      })
      const before = yield* Clock.currentTimeMillis
      yield* bucket.take()
      const refused = yield* Effect.flip(bucket.take())
      const elapsed = (yield* Clock.currentTimeMillis) - before
      expect(refused.dimension).toBe("requests")
      // Empty at the first draw, so room 200 ms after it: less whatever passed between the draws.
      expect(retryAfterMillis(refused)).toBeLessThanOrEqual(200)
      expect(retryAfterMillis(refused)).toBeGreaterThanOrEqual(200 - elapsed)
      // Node's timers may fire up to a millisecond early.
      yield* Effect.sleep(Duration.millis(retryAfterMillis(refused) + 2))
      yield* bucket.take()
    }))

  it.scopedLive("a refused draw takes nothing from either dimension", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const bucket = yield* bucketOn(yield* connect(server), {
        requests: { limit: 10, interval: "10 seconds" },
        tokens: { limit: 100, interval: "10 seconds" },
        onExhausted: "fail"
      })
      yield* bucket.take({ requests: 1, tokens: 100 })
      const refused = yield* Effect.flip(bucket.take({ requests: 1, tokens: 50 }))
      expect(refused.dimension).toBe("tokens")
      expect(retryAfterMillis(refused)).toBeGreaterThan(4_900)
      // The refused call's request is still there: nine go.
      yield* bucket.take({ requests: 9 })
      // And its tokens were never drawn: one token is ~100 ms away, not 5.1 s.
      const next = yield* Effect.flip(bucket.take({ requests: 0, tokens: 1 }))
      expect(next.dimension).toBe("tokens")
      expect(retryAfterMillis(next)).toBeLessThanOrEqual(100)
    }))

  it.scopedLive("an interrupted waiter gives its cost back", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* connect(server)
      const rate = { requests: { limit: 1, interval: "10 seconds" }, name: "interrupted" } as const
      const waiting = yield* bucketOn(redis, rate)
      const probe = yield* bucketOn(yield* connect(server), { ...rate, onExhausted: "fail" })
      yield* waiting.take()
      const waiter = yield* Effect.fork(waiting.take())
      expect(yield* until(storedUnits(redis, "interrupted", "requests"), (units) => units < -0.9)).toBeLessThan(-0.9)
      yield* Fiber.interrupt(waiter)
      expect(yield* storedUnits(redis, "interrupted", "requests")).toBeGreaterThan(-0.1)
      // Room for the next request in under 10 s (the bucket is at 0), not 20 s (at -1).
      const refused = yield* Effect.flip(probe.take())
      expect(retryAfterMillis(refused)).toBeGreaterThan(9_000)
      expect(retryAfterMillis(refused)).toBeLessThanOrEqual(10_000)
    }))

  it.scopedLive("a waiter that gives up with another after it gives nothing back, in any process: the balance keeps the later one's turn", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* connect(server)
      const rate = { requests: { limit: 1, interval: "10 seconds" }, name: "middle" } as const
      const mine = yield* bucketOn(redis, rate)
      const theirs = yield* bucketOn(yield* connect(server), rate)
      yield* mine.take()
      const first = yield* Effect.fork(mine.take())
      expect(yield* until(storedUnits(redis, "middle", "requests"), (units) => units < -0.9)).toBeLessThan(-0.9)
      const second = yield* Effect.fork(theirs.take())
      expect(yield* until(storedUnits(redis, "middle", "requests"), (units) => units < -1.9)).toBeLessThan(-1.9)
      yield* Fiber.interrupt(first)
      // Still two in debt: the second waiter sleeps until its own turn, which nobody else may take.
      expect(yield* storedUnits(redis, "middle", "requests")).toBeLessThan(-1.8)
      yield* Fiber.interrupt(second)
      // The last in line gives its cost back.
      expect(yield* storedUnits(redis, "middle", "requests")).toBeGreaterThan(-1.1)
    }))

  it.scopedLive("Redis lost mid-run: the process's share locally, one warning; back on Redis once it returns", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* connect(server)
      const options = { ...fortyPerSecond, name: "shared", onExhausted: "fail" } as const
      const mine = yield* bucketOn(redis, options)
      const theirs = yield* bucketOn(yield* connect(server), options)
      // Both draw, so each has seen two processes.
      yield* mine.take()
      yield* theirs.take()
      yield* mine.take()

      yield* server.stop
      yield* awaitReady(redis, false)
      // Half of 40/s with a burst of 4: two at once, then one every 50 ms.
      yield* mine.take()
      yield* mine.take()
      const refused = yield* Effect.flip(mine.take())
      expect(retryAfterMillis(refused)).toBeGreaterThan(40)
      expect(retryAfterMillis(refused)).toBeLessThanOrEqual(50)
      const warnings = logs.filter((log) => log.level === "WARN")
      expect(warnings).toHaveLength(1)
      expect(warnings[0]?.message).toContain(`Redis at redis://127.0.0.1:${server.port}`)
      expect(warnings[0]?.message).toContain("1/2 of the rate")

      yield* server.start
      yield* awaitReady(redis, true)
      // The restarted server is empty: the next draw creates the bucket there again.
      yield* mine.take()
      expect(yield* redis.command("EXISTS", [redis.key("bucket", "shared")])).toBe(1)
      yield* mine.take()
      expect(logs.filter((log) => log.message.includes("back on Redis"))).toHaveLength(1)
      expect(logs.filter((log) => log.level === "WARN")).toHaveLength(1)
    }).pipe(capturingLogs(logs))
  })

  it.scopedLive("every key carries a TTL: the balances expire once the bucket would be full again", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* connect(server)
      const bucket = yield* bucketOn(redis, { ...fortyPerSecond, tokens: { limit: 1000, interval: "1 second" } })
      yield* bucket.take({ requests: 4, tokens: 500 })
      const keys = yield* keysWithTtl(redis)
      expect(keys.map(({ key }) => key).sort()).toEqual([redis.key("bucket", "default"), redis.key("bucket", "default", "processes")])
      for (const { ttl } of keys) {
        expect(ttl).toBeGreaterThan(0)
        expect(ttl).toBeLessThanOrEqual(60_000)
      }
      // Full again once the slower refill is done (500 tokens at one a millisecond; the 4 requests
      // take 100 ms), plus the margin of a second.
      const balances = (yield* redis.command("PTTL", [redis.key("bucket", "default")])) as number
      expect(balances).toBeGreaterThan(1_400)
      expect(balances).toBeLessThanOrEqual(1_500)
    }))
})
