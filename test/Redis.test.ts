import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Redis from "../src/Redis.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import { failureReason } from "../src/internal/redis.js"
import { awaitReady, redisServer, redisServerPresent, skipMessage } from "./support/redisServer.js"

describe("Redis config", () => {
  it.effect("WEATHERPROOF_REDIS_URL empty (an env file's blank entry) is none, as unset is", () =>
    Effect.gen(function*() {
      const urlOf = (env: ReadonlyArray<readonly [string, string]>) =>
        Config.option(Redis.urlConfig).pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map(env))))
      expect(yield* urlOf([["WEATHERPROOF_REDIS_URL", ""]])).toEqual(Option.none())
      expect(yield* urlOf([])).toEqual(Option.none())
      const given = yield* urlOf([["WEATHERPROOF_REDIS_URL", "redis://127.0.0.1:6379"]])
      expect(Option.map(given, Redacted.value)).toEqual(Option.some("redis://127.0.0.1:6379"))
    }))

  it.effect("WEATHERPROOF_REDIS_URL required and unset says so (Config.redacted would hide even that as <redacted>)", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Redis.urlConfig.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map()))))
      expect(String(error)).toContain("Expected WEATHERPROOF_REDIS_URL to exist")
      const layer = Effect.flip(Layer.build(Redis.layerConfig).pipe(Effect.scoped, Effect.withConfigProvider(ConfigProvider.fromMap(new Map()))))
      expect(String(yield* layer)).toContain("Expected WEATHERPROOF_REDIS_URL to exist")
    }))

  it.effect("a URL of another scheme (http://, valkey://), or no URL (a typo, empty), is refused for it, never quoted: no socket path, no localhost", () =>
    Effect.gen(function*() {
      const reasonOf = (url: string) => Effect.map(Effect.flip(Effect.scoped(Redis.make({ url }))), (error) => error.message)
      const expected = "expected a redis:// or rediss:// URL (redis://[user:password@]host:port[/db])"
      expect(yield* reasonOf("http://127.0.0.1:6379")).toBe(`Redis at http://127.0.0.1:6379/ is unavailable: ${expected}, not http://`)
      expect(yield* reasonOf("valkey://:pw@cache:6379")).toBe(`Redis at valkey://cache:6379 is unavailable: ${expected}, not valkey://`)
      for (const typo of ["redis:/:Hunter2SecretPw@127.0.0.1:6379", "redis//:Hunter2SecretPw@127.0.0.1:6379", "sk-abcdefghijklmnop0123456789", ""]) {
        const reason = yield* reasonOf(typo)
        expect(reason, typo).toContain(`is unavailable: not a URL: ${expected}`)
        expect(reason, typo).not.toMatch(/Hunter2|sk-abc/)
      }
      expect(yield* reasonOf("redis://")).toContain(`is unavailable: no host: ${expected}`)
      // A port out of range is said as such, not as no URL at all.
      const farPort = yield* reasonOf("redis://:Hunter2SecretPw@127.0.0.1:99999")
      expect(farPort).toBe(`Redis at (an unparsable URL) is unavailable: its port 99999 is above 65535: ${expected}`)
      // A path that is no database number (ioredis selected NaN, or 3 for `/3/x`), never quoted: it may be a misplaced password.
      for (const path of ["/Hunter2pw", "/3/x", "/-1", "/?db=Hunter2pw", "?db="]) {
        const reason = yield* reasonOf(`redis://127.0.0.1:6379${path}`)
        expect(reason.endsWith(`is unavailable: its path or \`db\` is not a database number: ${expected}`), reason).toBe(true)
        expect(reason).not.toContain("Hunter2")
      }
      // A password with a malformed escape is no defect: the connection's own failure is told.
      expect(yield* reasonOf("redis://:%zzHunter2@127.0.0.1:1")).toMatch(/^Redis at redis:\/\/127\.0\.0\.1:1 is unavailable: /)
    }))

  it.scopedLive("a server that is not Redis (an HTTP server at the port) is said to be one, not as a protocol error to report", () =>
    Effect.gen(function*() {
      const server = yield* Effect.acquireRelease(
        Effect.async<Http.Server>((resume) => {
          const http = Http.createServer((_, response) => response.end("not redis"))
          http.listen(0, "127.0.0.1", () => void resume(Effect.succeed(http)))
        }),
        (http) =>
          Effect.async<void>((resume) => {
            http.close(() => resume(Effect.void))
          })
      )
      const { port } = server.address() as AddressInfo
      const error = yield* Effect.flip(Redis.make({ url: `redis://127.0.0.1:${port}`, connectTimeout: "2 seconds" }))
      expect(error.message).toBe(
        `Redis at redis://127.0.0.1:${port} is unavailable: the server does not speak Redis's protocol (its reply began with "H": an HTTP server?)`
      )
    }))
})

describe("Redis failures", () => {
  const offlineRefusal = new Error("Stream isn't writeable and enableOfflineQueue options is false")
  const client = (status: string, writable: boolean) => ({ status, stream: { writable } }) as unknown as Parameters<typeof failureReason>[0]

  it("a command refused once the socket ended is told as the connection down, though the status still says ready", () => {
    // The socket ends a few ticks before ioredis's close handler changes its status.
    expect(failureReason(client("ready", false), offlineRefusal)).toBe("the connection is down")
    expect(failureReason(client("reconnecting", false), offlineRefusal)).toBe("the connection is down")
  })

  it("a command that failed on a live connection is told in the server's words", () => {
    expect(failureReason(client("ready", true), new Error("NOSCRIPT No matching script."))).toBe("NOSCRIPT No matching script.")
  })
})

describe.skipIf(!redisServerPresent)(skipMessage("Redis"), () => {
  it.scopedLive("keys are namespaced under a hash tag, with their parts escaped", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url, prefix: "tenant-a" })
      expect(redis.key("lane", "main account", "deepseek-v4-flash")).toBe("{tenant-a}:lane:main%20account:deepseek-v4-flash")
      expect(redis.key("a:b{c}")).toBe("{tenant-a}:a%3Ab%7Bc%7D")
      yield* redis.command("SET", [redis.key("hello"), "world"])
      expect(yield* redis.command("GET", [redis.key("hello")])).toBe("world")
    }))

  it.scopedLive("an unreachable server fails with RedisUnavailable naming the URL without its credentials", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      yield* server.stop
      const url = `redis://admin:s3cret-password@127.0.0.1:${server.port}/2`
      const exit = yield* Effect.exit(Redis.make({ url: Redacted.make(url), connectTimeout: "1 second" }))
      expect(Exit.isFailure(exit)).toBe(true)
      const error = Exit.isFailure(exit) ? exit.cause : undefined
      const text = JSON.stringify(error) + String(error)
      expect(text).not.toContain("s3cret")
      expect(text).not.toContain("admin")
      expect(text).toContain(`RedisUnavailable`)
      expect(Exit.isFailure(exit) && Cause.squash(exit.cause)).toMatchObject({
        message: `Redis at redis://127.0.0.1:${server.port}/2 is unavailable: connect ECONNREFUSED 127.0.0.1:${server.port}`
      })
    }))

  it.scopedLive("a server that refuses the credentials says so: NOAUTH without a password, WRONGPASS with a wrong one", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const admin = yield* Redis.make({ url: server.url })
      yield* admin.command("CONFIG", ["SET", "requirepass", "right-password"])
      const reasonWith = (url: string) =>
        Effect.map(Effect.flip(Redis.make({ url: Redacted.make(url), connectTimeout: "1 second" })), (error) => error.message)
      const shown = `redis://127.0.0.1:${server.port}`
      expect(yield* reasonWith(shown)).toBe(`Redis at ${shown} is unavailable: NOAUTH Authentication required.`)
      expect(yield* reasonWith(`redis://:wrong-password@127.0.0.1:${server.port}`))
        .toBe(`Redis at ${shown} is unavailable: WRONGPASS invalid username-password pair or user is disabled.`)
      expect(yield* Effect.map(Redis.make({ url: `redis://:right-password@127.0.0.1:${server.port}` }), () => "connected"))
        .toBe("connected")
    }))

  it.scopedLive("credentials refused as it reconnects (a password rotated) are said, once until it is back, not only that the connection is down", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const admin = yield* Redis.make({ url: server.url })
      const logs: Array<Logged> = []
      const client = yield* capturingLogs(logs)(Redis.make({ url: server.url, prefix: "rotated" }))
      yield* admin.command("CONFIG", ["SET", "requirepass", "rotated-password"])
      yield* admin.command("CLIENT", ["KILL", "TYPE", "normal", "SKIPME", "yes"])
      const warnings = () => logs.filter((log) => log.level === "WARN").map((log) => log.message)
      yield* Effect.sync(warnings).pipe(
        Effect.filterOrFail((found) => found.length > 0),
        Effect.retry({ schedule: Schedule.spaced("50 millis"), times: 100 })
      )
      // Several reconnections fail meanwhile: one warning.
      yield* Effect.sleep("500 millis")
      expect(warnings()).toEqual([
        `Redis at ${server.url} refuses this process's credentials as it reconnects (NOAUTH Authentication required.): ` +
        "is its password or user changed? Calls go on without Redis meanwhile"
      ])
      expect(yield* client.isReady).toBe(false)
    }))

  it.scopedLive("a database the server does not have fails the connection, rather than working in database 0", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const admin = yield* Redis.make({ url: server.url })
      const url = `redis://127.0.0.1:${server.port}/99`
      expect(yield* Effect.map(Effect.flip(Redis.make({ url, connectTimeout: "1 second" })), (error) => error.message))
        .toBe(`Redis at ${url} is unavailable: it has no database 99 (ERR DB index is out of range)`)
      const chosen = yield* Redis.make({ url: `redis://127.0.0.1:${server.port}/3` })
      yield* chosen.command("SET", [chosen.key("where"), "3"])
      expect(yield* admin.command("GET", [admin.key("where")])).toBe(null)
      expect(yield* admin.command("DBSIZE", [])).toBe(0)
    }))

  it.scopedLive("a script survives a restart of the server, which forgets every script", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      const incr = redis.script(`return redis.call("INCRBY", KEYS[1], ARGV[1])`)
      expect(yield* incr([redis.key("n")], [2])).toBe(2)
      expect(yield* incr([redis.key("n")], [3])).toBe(5)
      yield* server.restart
      yield* awaitReady(redis, true)
      // NOSCRIPT: the client sends the script in full and goes on by its SHA-1.
      expect(yield* Effect.retry(incr([redis.key("n")], [4]), { times: 50 })).toBe(4)
    }))

  it.scopedLive("commands fail at once while the server is down, and work again once it is back", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      yield* server.stop
      yield* awaitReady(redis, false)
      const failed = yield* Effect.flip(redis.command("GET", [redis.key("x")]))
      expect(failed._tag).toBe("RedisError")
      expect(failed.operation).toBe("GET")
      // Said as an operator reads it, not as ioredis words its offline queue's refusal.
      expect(failed.reason).toBe("the connection is down")
      expect(failed.message).toBe("Redis GET failed: the connection is down")
      yield* server.start
      yield* awaitReady(redis, true)
      expect(yield* redis.command("GET", [redis.key("x")])).toBe(null)
    }))

  it.scopedLive("a connection the server closes: every command failing before the client noticed is told as the connection down", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      const admin = yield* Redis.make({ url: server.url })
      const reasons = new Set<string>()
      // The socket ends a few ticks before the client's status says so; over rounds, some command
      // is refused in between (3 of 20 when measured).
      for (let round = 0; round < 20; round++) {
        // Once the client reconnected (its first try is 100 ms after the close).
        const id = yield* Effect.retry(redis.command("CLIENT", ["ID"]), { schedule: Schedule.spaced("20 millis"), times: 250 })
        yield* admin.command("CLIENT", ["KILL", "ID", String(id)])
        let failed: Redis.RedisError | undefined
        for (let sent = 0; sent < 10_000 && failed === undefined; sent++) {
          failed = yield* redis.command("GET", [redis.key("x")]).pipe(Effect.flip, Effect.option, Effect.map(Option.getOrUndefined))
        }
        if (failed !== undefined) reasons.add(failed.reason)
      }
      expect([...reasons]).toEqual(["the connection is down"])
    }))

  it.scopedLive("a subscription whose SUBSCRIBE failed (the server down) is made once the server is back", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      const channel = redis.key("wake")
      const received = yield* Deferred.make<string>()
      yield* server.stop
      yield* awaitReady(redis, false)
      const failed = yield* Effect.flip(redis.subscribe(channel, (message) => Deferred.unsafeDone(received, Exit.succeed(message))))
      expect(failed).toMatchObject({ _tag: "RedisError", operation: "SUBSCRIBE" })
      yield* server.start
      yield* awaitReady(redis, true)
      // The subscriber reconnects on its own schedule: publish until a message gets through (bounded).
      yield* redis.publish(channel, "back").pipe(
        Effect.zipRight(Deferred.await(received).pipe(Effect.timeout("100 millis"))),
        Effect.retry({ times: 50 })
      )
      expect(yield* Deferred.await(received)).toBe("back")
    }))

  it.scopedLive("subscriptions deliver messages, and are renewed after the server restarts", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      const received: Array<string> = []
      let next = yield* Deferred.make<void>()
      const channel = redis.key("wake")
      yield* redis.subscribe(channel, (message) => {
        received.push(message)
        Deferred.unsafeDone(next, Exit.void)
      })
      yield* redis.publish(channel, "one")
      yield* Deferred.await(next).pipe(Effect.timeout("5 seconds"))
      yield* server.restart
      yield* awaitReady(redis, true)
      next = yield* Deferred.make<void>()
      // The subscriber reconnects on its own schedule: publish until a message gets through (bounded).
      yield* redis.publish(channel, "two").pipe(
        Effect.zipRight(Deferred.await(next).pipe(Effect.timeout("100 millis"))),
        Effect.retry({ times: 50 })
      )
      expect(received[0]).toBe("one")
      expect(received.at(-1)).toBe("two")
    }))
})
