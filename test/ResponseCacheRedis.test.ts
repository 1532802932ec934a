import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import type { ChatCompletion, ChatCompletionRequest } from "../src/ChatSchema.js"
import * as Redis from "../src/Redis.js"
import * as ResponseCache from "../src/ResponseCache.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { awaitReady, keysWithTtl, redisServer, redisServerPresent, type RedisServer, skipMessage } from "./support/redisServer.js"

const prompt = "Which river runs through Lyon? (asked by sk-user-secret-42)"

const request: ChatCompletionRequest = {
  model: "deepseek-v4-flash",
  messages: [{ role: "user", content: prompt }],
  temperature: 0
}

const completion = (content: string): ChatCompletion => ({
  id: `cmpl-${content}`,
  object: "chat.completion",
  created: 1,
  model: "deepseek-v4-flash",
  choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
  usage: { prompt_tokens: 12, completion_tokens: 1, total_tokens: 13 }
})

/** An upstream double answering `content`, counting its calls. */
const upstream = (content: string) =>
  Effect.map(Ref.make(0), (calls) => ({
    calls: Ref.get(calls),
    call: Effect.as(Ref.update(calls, (n) => n + 1), completion(content))
  }))

/** A connection of its own and a cache over it: one process's view. */
const processOn = (server: RedisServer, options?: ResponseCache.Options) =>
  Effect.gen(function*() {
    const redis = yield* Redis.make({ url: server.url })
    const store = yield* Effect.provideService(ResponseCache.makeRedisStore, Redis.Redis, redis)
    const cache = yield* Effect.provideService(ResponseCache.make(options), ResponseCache.CacheStore, store)
    return { redis, store, cache, entry: redis.key("cache", ResponseCache.key(request)) }
  })

describe.skipIf(!redisServerPresent)(skipMessage("ResponseCache on Redis"), () => {
  it.scopedLive("what one process stores, another hits", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const [one, two] = [yield* processOn(server), yield* processOn(server)]
      const first = yield* upstream("the Rhône")
      const second = yield* upstream("never asked")
      expect(yield* one.cache.cached(request, first.call)).toEqual(completion("the Rhône"))
      expect(yield* two.cache.cached(request, second.call)).toEqual(completion("the Rhône"))
      expect([yield* first.calls, yield* second.calls]).toEqual([1, 0])
      expect(yield* one.cache.stats).toMatchObject({ misses: 1, stores: 1, hits: 0 })
      expect(yield* two.cache.stats).toMatchObject({ misses: 0, stores: 0, hits: 1, evictions: 0 })
    }))

  it.scopedLive("an entry lives its time to live, set on the server", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const [one, two] = [yield* processOn(server, { timeToLive: "300 millis" }), yield* processOn(server)]
      const { call, calls } = yield* upstream("the Saône")
      yield* one.cache.cached(request, call)
      const ttl = (yield* one.redis.command("PTTL", [one.entry])) as number
      expect(ttl).toBeGreaterThan(0)
      expect(ttl).toBeLessThanOrEqual(300)
      yield* Effect.sleep("400 millis")
      yield* two.cache.cached(request, call)
      expect(yield* calls).toBe(2)
      expect(yield* two.cache.stats).toMatchObject({ hits: 0, misses: 1 })
    }))

  it.scopedLive("a value that does not decode is a miss, deleted, and logged once", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const [one, two] = [yield* processOn(server), yield* processOn(server)]
      const key = ResponseCache.key(request)
      for (const bad of ["not json", JSON.stringify({ id: 1, choices: "none" })]) {
        yield* one.redis.command("SET", [one.entry, bad, "PX", 60_000])
        // Both read it; the one whose delete removed it logs.
        const read = yield* Effect.all([one.store.get(key), two.store.get(key)], { concurrency: 2 })
        expect(read).toEqual([Option.none(), Option.none()])
        expect(yield* one.redis.command("EXISTS", [one.entry])).toBe(0)
      }
      expect(logs.filter((log) => log.level === "WARN" && log.message.includes(key))).toHaveLength(2)
      // Through the cache: a miss that calls upstream and stores a good value in its place.
      yield* one.redis.command("SET", [one.entry, "{", "PX", 60_000])
      const { call, calls } = yield* upstream("the Rhône")
      expect(yield* one.cache.cached(request, call)).toEqual(completion("the Rhône"))
      expect(yield* calls).toBe(1)
      expect(yield* two.store.get(key)).toEqual(Option.some(completion("the Rhône")))
    }).pipe(capturingLogs(logs))
  })

  it.scopedLive("with the server gone, calls are still answered upstream; once it is back the cache works again", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const server = yield* redisServer
      const one = yield* processOn(server)
      const { call, calls } = yield* upstream("the Rhône")
      yield* server.stop
      yield* awaitReady(one.redis, false)
      expect(yield* one.cache.cached(request, call)).toEqual(completion("the Rhône"))
      expect(yield* one.cache.cached(request, call)).toEqual(completion("the Rhône"))
      expect(yield* calls).toBe(2)
      expect(yield* one.cache.stats).toMatchObject({ misses: 2, stores: 0 })
      // One warning for the outage (not one per call), naming why, and one note when it is back.
      const outage = (log: Logged) => log.message.startsWith("response cache: its store")
      expect(logs.filter(outage).map((log) => log.level)).toEqual(["WARN"])
      expect(logs.find(outage)?.message).toMatch(/^response cache: its store failed to get \(.+\); calls go upstream/)
      yield* server.start
      yield* awaitReady(one.redis, true)
      yield* one.cache.cached(request, call)
      yield* one.cache.cached(request, call)
      expect(yield* calls).toBe(3)
      expect(yield* one.cache.stats).toMatchObject({ hits: 1, stores: 1 })
      expect(logs.filter(outage).map((log) => log.level)).toEqual(["WARN", "INFO"])
    }).pipe(capturingLogs(logs))
  })

  it.scopedLive("every key carries a TTL, and no key name holds prompt text", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const one = yield* processOn(server)
      yield* one.cache.cached(request, (yield* upstream("the Rhône")).call)
      yield* one.cache.cached({ ...request, messages: [{ role: "user", content: "And through Paris?" }] }, (yield* upstream("the Seine")).call)
      const keys = yield* keysWithTtl(one.redis)
      expect(keys).toHaveLength(2)
      for (const { key, ttl } of keys) {
        expect(key).toMatch(/^\{weatherproof\}:cache:[0-9a-f]{64}$/)
        expect(ttl).toBeGreaterThan(0)
        expect(ttl).toBeLessThanOrEqual(Duration.toMillis(ResponseCache.defaults.timeToLive))
      }
      expect(keys.map(({ key }) => key)).toContain(one.entry)
    }))

  it.scopedLive("an infinite time to live stores nothing: every key expires", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const one = yield* processOn(server)
      const error = yield* Effect.flip(one.store.set("k", completion("x"), Duration.infinity))
      expect(error).toMatchObject({ _tag: "CacheStoreError", operation: "set" })
      expect(yield* keysWithTtl(one.redis)).toEqual([])
    }))
})
