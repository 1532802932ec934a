/**
 * The gateway's status samples: when the page's throttling banner stands. An adaptive limit that
 * holds at a cap draws a probe's 429 every few rounds; the banner is for an upstream refusing a
 * share of the attempts, not for that.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as TestClock from "effect/TestClock"
import * as Status from "../app/gateway/status.js"
import { Traffic } from "../app/gateway/traffic.js"
import * as AccountPool from "../src/AccountPool.js"
import * as CostLedger from "../src/CostLedger.js"
import * as MockUpstream from "../src/MockUpstream.js"
import { processClock } from "./support/processClock.js"

const counts = (name: string, succeeded: number, rateLimited: number): Status.AttemptCounts => ({
  name,
  succeeded,
  failed: rateLimited,
  rateLimited
})

describe("throttled", () => {
  it("names an account of which at least the share of the attempts since the window's start drew a 429", () => {
    const before = [counts("a", 100, 1), counts("b", 100, 1)]
    // a: 4 429s in 40 attempts since (10 %); b: 1 in 100 (a probe's).
    const now = [counts("a", 136, 5), counts("b", 199, 2)]
    expect(Status.throttled(before, now, 0.05)).toEqual(["a"])
    expect(Status.throttled(before, now, 0.2)).toEqual([])
  })

  it("counts an account missing from the window's start from zero, and none with no 429 since", () => {
    expect(Status.throttled([], [counts("a", 3, 1)], 0.05)).toEqual(["a"])
    expect(Status.throttled([counts("a", 0, 20)], [counts("a", 1, 20)], 0.05)).toEqual([])
  })
})

describe("windowStart", () => {
  const samples = [{ t: 0 }, { t: 1_000 }, { t: 2_000 }, { t: 3_000 }]
  it("is the newest sample at least the window old, else the oldest kept", () => {
    expect(Status.windowStart(samples, 3_500, 2_000)).toEqual({ t: 1_000 })
    expect(Status.windowStart(samples, 3_000, 2_000)).toEqual({ t: 1_000 })
    expect(Status.windowStart(samples, 1_500, 2_000)).toEqual({ t: 0 })
    expect(Status.windowStart([], 1_500, 2_000)).toBeUndefined()
  })
})

describe("the throttling banner", () => {
  /** One account whose upstream answers a chat request with a 429 while `refusing`, else a completion. */
  const upstream = { refusing: false }
  const layer = AccountPool.layer([{
    name: "a",
    provider: "deepseek",
    baseUrl: "https://a.test",
    keys: [Redacted.make("sk-a")],
    fallback: false,
    models: {}
  }], { preflight: false }).pipe(
    Layer.provideMerge(Layer.merge(
      MockUpstream.layer(() =>
        upstream.refusing
          ? MockUpstream.status(429, { body: { error: { message: "busy", type: "rate_limit" } } })
          : MockUpstream.completion({ id: "c", model: "deepseek-v4-flash", content: "ok", usage: MockUpstream.usage({ promptTokens: 10, completionTokens: 5 }) })
      ),
      CostLedger.layer()
    ))
  )
  const calls = (n: number) =>
    Effect.flatMap(AccountPool.AccountPool, (pool) =>
      Effect.forEach(
        Array.from({ length: n }),
        () => Effect.either(pool.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "hi" }] })),
        { discard: true }
      ))
  const refused = (n: number) =>
    Effect.acquireUseRelease(Effect.sync(() => (upstream.refusing = true)), () => calls(n), () => Effect.sync(() => (upstream.refusing = false)))

  it.scoped("stays down for a probe's lone 429 among many answers, stands (naming the account) while a share is refused, and falls once the window holds none", () =>
    Effect.gen(function*() {
      const monitor = yield* Status.make(new Traffic(), {
        interval: Duration.seconds(1),
        keep: 60,
        throttleWindow: Duration.seconds(10),
        throttleShare: 0.05
      })
      const banner = Effect.map(monitor.latest, (sample) => sample.banner.throttling)
      const second = TestClock.adjust("1 second")

      yield* calls(99)
      yield* refused(1)
      yield* second
      expect(yield* banner).toEqual([])

      yield* calls(30)
      yield* refused(10)
      yield* second
      expect(yield* banner).toEqual(["a"])

      // Answers since: the window still holds the refusals, then no longer.
      for (let s = 0; s < 9; s++) {
        yield* calls(10)
        yield* second
      }
      expect(yield* banner).toEqual(["a"])
      yield* calls(10)
      yield* TestClock.adjust("2 seconds")
      expect(yield* banner).toEqual([])
    }).pipe(Effect.provide(layer)))

  it.scoped("counts 429s a second by the time that passed, whatever step the system clock made", () =>
    Effect.gen(function*() {
      const { clock, stepWall } = yield* processClock
      const monitor = yield* Effect.withClock(
        Status.make(new Traffic(), { interval: Duration.seconds(1), keep: 60, throttleWindow: Duration.seconds(10), throttleShare: 0.05 }),
        clock
      )
      yield* TestClock.adjust("1 second")
      stepWall(-3_600_000)
      yield* refused(10)
      yield* TestClock.adjust("1 second")
      expect((yield* monitor.latest).accounts.map((account) => account.rateLimitedPerSecond)).toEqual([10])
    }).pipe(Effect.provide(layer)))
})
