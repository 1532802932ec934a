import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as TestClock from "effect/TestClock"
import * as KeyPool from "../src/KeyPool.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { processClock } from "./support/processClock.js"

const keys = ["sk-aaaa1111", "sk-bbbb2222", "sk-cccc3333"].map(Redacted.make)

describe("KeyPool", () => {
  it.effect("rotates keys round robin", () =>
    Effect.gen(function*() {
      const pool = yield* KeyPool.make(keys)
      const ids = yield* Effect.replicateEffect(pool.acquire, 4)
      expect(ids.map((c) => c.id)).toEqual(["key#1", "key#2", "key#3", "key#1"])
    }))

  it.effect("names a key by where it came from, when told: the environment variable it was read from", () =>
    Effect.gen(function*() {
      const pool = yield* KeyPool.make(keys, { sources: [undefined, "DEEPSEEK_KEYS", "DEEPSEEK_KEYS"] })
      const ids = yield* Effect.replicateEffect(pool.acquire, 3)
      expect(ids.map((c) => c.id)).toEqual(["key#1", "key#2 from DEEPSEEK_KEYS", "key#3 from DEEPSEEK_KEYS"])
    }))

  it.effect("dies, saying so, on a list of no keys: every call would fail NoUsableKey", () =>
    Effect.gen(function*() {
      const defect = yield* Effect.exit(KeyPool.make([])).pipe(Effect.map((exit) => exit._tag === "Failure" && Cause.squash(exit.cause)))
      expect(defect).toMatchObject({ _tag: "IllegalArgumentException", message: "KeyPool: keys must hold at least one key" })
    }))

  it.effect("dies on a cooldown not above zero, said as written: a negative one decodes to 0", () =>
    Effect.gen(function*() {
      const defectOf = (cooldown: Duration.DurationInput) =>
        Effect.exit(KeyPool.make(keys, { cooldown })).pipe(Effect.map((exit) => exit._tag === "Failure" && Cause.squash(exit.cause)))
      expect(yield* defectOf("-1 seconds")).toMatchObject({
        _tag: "IllegalArgumentException",
        message: 'KeyPool: cooldown must be a positive duration, got "-1 seconds"'
      })
      expect(yield* defectOf(Duration.zero)).toMatchObject({ message: "KeyPool: cooldown must be a positive duration, got 0" })
    }))

  it.effect("drops a rejected key and fails fast once none is left", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const pool = yield* KeyPool.make(keys.slice(0, 2))
      const first = yield* pool.acquire
      yield* pool.reject(first)
      yield* pool.reject(first)
      expect(yield* pool.available).toBe(1)
      const second = yield* pool.acquire
      expect(second.id).toBe("key#2")
      yield* pool.reject(second)
      yield* TestClock.adjust("1 minute")
      const error = yield* Effect.flip(pool.acquire)
      expect(error._tag).toBe("NoUsableKey")
      expect(error.rejected).toBe(2)
      // When the first key is back, for a caller to wait rather than fail.
      expect(error.retryAfter).toEqual(Option.some(Duration.minutes(14)))
      expect(error.message).toBe("no usable API key: 2 rejected; the first is back in 14m")
      // Each key set aside is told once, never the key: a revoked key did not go unnoticed.
      expect(logs.map(({ level, message }) => `${level} ${message}`)).toEqual([
        "WARN KeyPool: the upstream rejected its key#1 (401); it rests 15m, 1 of 2 keys usable",
        "WARN KeyPool: the upstream rejected its key#2 (401); it rests 15m, 0 of 2 keys usable"
      ])
    }).pipe(capturingLogs(logs))
  })

  it.effect("a rejected key rests for the cooldown on the Clock, then comes back", () =>
    Effect.gen(function*() {
      const pool = yield* KeyPool.make(keys, { cooldown: "5 minutes" })
      const first = yield* pool.acquire
      yield* pool.reject(first)
      expect(yield* pool.cooldownEnd).toEqual(Option.some(5 * 60_000))
      expect(yield* pool.resting).toEqual(["key#1"])
      yield* TestClock.adjust("4 minutes")
      yield* pool.reject(first) // again while it rests: the rest is not extended
      const ids = (yield* Effect.replicateEffect(pool.acquire, 4)).map((c) => c.id)
      expect([...ids].sort()).toEqual(["key#2", "key#2", "key#3", "key#3"])
      yield* TestClock.adjust("1 minute")
      expect(yield* pool.available).toBe(3)
      expect(yield* pool.cooldownEnd).toEqual(Option.none())
      expect(yield* pool.resting).toEqual([])
    }))

  it.effect("a step of the system clock back does not lengthen a rest", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(86_400_000)
      const { clock, stepWall } = yield* processClock
      const pool = yield* KeyPool.make(keys, { cooldown: "5 minutes" })
      yield* Effect.withClock(Effect.flatMap(pool.acquire, pool.reject), clock)
      stepWall(-3_600_000)
      yield* TestClock.adjust("5 minutes")
      expect(yield* Effect.withClock(pool.available, clock)).toBe(3)
    }))

  it.effect.prop(
    "never hands out a resting key, and fails exactly while every key rests",
    [
      FastCheck.array(
        FastCheck.oneof(
          FastCheck.constant({ _tag: "Acquire" as const }),
          FastCheck.record({ _tag: FastCheck.constant("Reject" as const), key: FastCheck.nat(2) }),
          FastCheck.record({ _tag: FastCheck.constant("Wait" as const), minutes: FastCheck.nat(20) })
        ),
        { maxLength: 40 }
      )
    ],
    ([steps]) =>
      Effect.gen(function*() {
        const cooldown = 15 * 60_000
        const pool = yield* KeyPool.make(keys)
        const credentials = yield* Effect.replicateEffect(pool.acquire, keys.length)
        const restingUntil = new Map<string, number>()
        const resting = (id: string, now: number) => (restingUntil.get(id) ?? 0) > now
        for (const step of steps) {
          const now = yield* Clock.currentTimeMillis
          const usable = credentials.filter((c) => !resting(c.id, now)).length
          expect(yield* pool.available).toBe(usable)
          if (step._tag === "Wait") yield* TestClock.adjust(step.minutes * 60_000)
          else if (step._tag === "Reject") {
            const { id } = credentials[step.key]!
            if (!resting(id, now)) restingUntil.set(id, now + cooldown)
            yield* pool.reject(credentials[step.key]!)
          } else {
            const acquired = yield* Effect.either(pool.acquire)
            expect(acquired._tag).toBe(usable === 0 ? "Left" : "Right")
            if (acquired._tag === "Right") expect(resting(acquired.right.id, now)).toBe(false)
          }
        }
      })
  )

  it.effect("reads comma-separated keys from DEEPSEEK_API_KEY as redacted values", () =>
    Effect.gen(function*() {
      const parsed = yield* KeyPool.keysConfig
      expect(parsed.map(Redacted.value)).toEqual(["sk-one", "sk-two"])
      expect(String(parsed[0])).not.toContain("sk-one")
    }).pipe(
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DEEPSEEK_API_KEY", " sk-one , ,sk-two "]])))
    ))

  it.effect("refuses a key DEEPSEEK_API_KEY lists twice, naming it by its place, as the accounts file does", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(KeyPool.keysConfig)
      expect(String(error)).toContain("key#3 is key#1 again: list each key once")
      expect(String(error)).not.toContain("sk-one")
    }).pipe(
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DEEPSEEK_API_KEY", "sk-one,sk-two,sk-one"]])))
    ))
})
