import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as TestClock from "effect/TestClock"
import { InvalidRequest, RateLimited, ServerError } from "../src/ApiError.js"
import type { ApiError } from "../src/ApiError.js"
import * as RetryPolicy from "../src/RetryPolicy.js"
import { capturingLogs, type Logged } from "./support/logs.js"

const rateLimited = (retryAfter?: Duration.DurationInput) =>
  new RateLimited({
    message: "busy",
    retryAfter: retryAfter === undefined ? Option.none() : Option.some(Duration.decode(retryAfter))
  })

/** Runs a call that fails with `errors` in turn (then succeeds), retried by `schedule`; counts attempts. */
const flaky = (errors: ReadonlyArray<ApiError>, schedule: Schedule.Schedule<unknown, ApiError>) =>
  Effect.gen(function*() {
    const attempts = yield* Ref.make(0)
    const call = Ref.getAndUpdate(attempts, (n) => n + 1).pipe(
      Effect.flatMap((n) => (n < errors.length ? Effect.fail(errors[n]!) : Effect.succeed("ok")))
    )
    const fiber = yield* Effect.fork(Effect.either(Effect.retry(call, schedule)))
    return { attempts, fiber }
  })

describe("RetryPolicy", () => {
  it.effect("retries retryable errors until success", () =>
    Effect.gen(function*() {
      const { attempts, fiber } = yield* flaky(
        [rateLimited(), new ServerError({ status: 503, message: "overloaded", retryAfter: Option.none() })],
        RetryPolicy.schedule({ base: "100 millis", cap: "1 second" })
      )
      yield* TestClock.adjust("10 seconds")
      const result = yield* Fiber.join(fiber)
      expect(result._tag).toBe("Right")
      expect(yield* Ref.get(attempts)).toBe(3)
    }))

  it.effect("gives up after maxRetries with the last error", () =>
    Effect.gen(function*() {
      const errors = Array.from({ length: 10 }, () => rateLimited())
      const { attempts, fiber } = yield* flaky(errors, RetryPolicy.schedule({ maxRetries: 2, base: "10 millis" }))
      yield* TestClock.adjust("1 minute")
      const result = yield* Fiber.join(fiber)
      expect(result._tag).toBe("Left")
      expect(yield* Ref.get(attempts)).toBe(3)
    }))

  it.effect("never retries errors that are not retryable", () =>
    Effect.gen(function*() {
      const { attempts, fiber } = yield* flaky(
        [new InvalidRequest({ status: 400, message: "bad" })],
        RetryPolicy.schedule()
      )
      yield* TestClock.adjust("1 minute")
      const result = yield* Fiber.join(fiber)
      expect(result._tag === "Left" && result.left._tag).toBe("InvalidRequest")
      expect(yield* Ref.get(attempts)).toBe(1)
    }))

  it.effect("waits at least the server's Retry-After, never sooner", () =>
    Effect.gen(function*() {
      const { attempts, fiber } = yield* flaky(
        [rateLimited("5 seconds")],
        RetryPolicy.schedule({ base: "10 millis", cap: "20 millis" })
      )
      yield* TestClock.adjust("4999 millis")
      expect(yield* Ref.get(attempts)).toBe(1)
      yield* TestClock.adjust("1 millis")
      expect((yield* Fiber.join(fiber))._tag).toBe("Right")
      expect(yield* Ref.get(attempts)).toBe(2)
    }))

  it.effect("stops instead of retrying early when Retry-After exceeds maxRetryAfter, saying why", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const { attempts, fiber } = yield* flaky(
        [rateLimited("10 minutes")],
        RetryPolicy.schedule({ maxRetryAfter: "1 minute" })
      )
      const result = yield* Fiber.join(fiber)
      expect(result._tag).toBe("Left")
      expect(yield* Ref.get(attempts)).toBe(1)
      // The error is the upstream's own ("busy"): without this, nothing said why no retry came.
      expect(logs.map(({ level, message }) => `${level} ${message}`)).toEqual([
        "WARN RetryPolicy: not retried: the upstream asked to wait 10m (Retry-After), longer than maxRetryAfter (1m)"
      ])
    }).pipe(capturingLogs(logs))
  })

  it.effect("says so at most once a minute for a policy, with how many calls it gave up meanwhile: a 429 storm gives up thousands", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const schedule = RetryPolicy.schedule({ maxRetryAfter: "1 minute" })
      const givenUp = Effect.flatMap(flaky([rateLimited("10 minutes")], schedule), ({ fiber }) => Fiber.join(fiber))
      yield* Effect.replicateEffect(givenUp, 3)
      yield* TestClock.adjust("59 seconds")
      yield* givenUp
      expect(logs).toHaveLength(1)
      yield* TestClock.adjust("1 second")
      yield* givenUp
      expect(logs.map(({ message }) => message)).toEqual([
        "RetryPolicy: not retried: the upstream asked to wait 10m (Retry-After), longer than maxRetryAfter (1m)",
        "RetryPolicy: not retried: the upstream asked to wait 10m (Retry-After), longer than maxRetryAfter (1m) (3 more calls given up since it last said so)"
      ])
    }).pipe(capturingLogs(logs))
  })

  it.effect("a backoff of your own keeps the policy's rules: its delays, never sooner than Retry-After, only retryable errors, at most maxRetries", () =>
    Effect.gen(function*() {
      const backoff = Schedule.spaced("45 seconds")
      const busy = yield* flaky([rateLimited("50 seconds"), rateLimited()], RetryPolicy.schedule({ backoff }))
      yield* TestClock.adjust("49999 millis")
      expect(yield* Ref.get(busy.attempts)).toBe(1)
      yield* TestClock.adjust("1 millis")
      expect(yield* Ref.get(busy.attempts)).toBe(2)
      yield* TestClock.adjust("44999 millis")
      expect(yield* Ref.get(busy.attempts)).toBe(2)
      yield* TestClock.adjust("1 millis")
      expect((yield* Fiber.join(busy.fiber))._tag).toBe("Right")

      const refused = yield* flaky([new InvalidRequest({ status: 400, message: "bad" })], RetryPolicy.schedule({ backoff }))
      yield* TestClock.adjust("1 minute")
      expect(yield* Ref.get(refused.attempts)).toBe(1)

      const always = yield* flaky(Array.from({ length: 10 }, () => rateLimited()), RetryPolicy.schedule({ backoff, maxRetries: 2 }))
      yield* TestClock.adjust("10 minutes")
      expect(yield* Ref.get(always.attempts)).toBe(3)
    }))

  it("refuses options no policy can follow, naming each", () => {
    expect(() => RetryPolicy.make({ maxRetries: -1 })).toThrow("RetryPolicy: maxRetries must be an integer ≥ 0, got -1")
    expect(() => RetryPolicy.make({ maxRetries: 1.5, base: "0 millis" })).toThrow(
      'RetryPolicy: maxRetries must be an integer ≥ 0, got 1.5; base must be a positive duration, got "0 millis"'
    )
    expect(() => RetryPolicy.schedule({ cap: "0 millis" })).toThrow('RetryPolicy: cap must be a positive duration, got "0 millis"')
    // What TypeScript refuses, from JavaScript or JSON: said as written, not as what it decodes to.
    expect(() => RetryPolicy.schedule({ base: "-1 seconds", cap: -5 })).toThrow(
      'RetryPolicy: base must be a positive duration, got "-1 seconds"; cap must be a positive duration, got -5'
    )
    expect(() => RetryPolicy.schedule({ base: "5 secs" as never })).toThrow('RetryPolicy: base must be a positive duration, got "5 secs"')
    expect(() => RetryPolicy.schedule({ jitter: "decorelated" as never })).toThrow(
      'RetryPolicy: jitter must be one of "full", "decorrelated", got "decorelated"'
    )
    expect(RetryPolicy.make({ maxRetries: 0 }).maxRetryAfter).toEqual(Duration.minutes(1))
  })

  it.effect("full jitter keeps each delay within [0, min(cap, base·2^n)] and spreads them", () =>
    Effect.gen(function*() {
      const delays = yield* RetryPolicy.exponentialFullJitter("100 millis", "2 seconds").pipe(
        Schedule.delays,
        Schedule.run(0, Array.from({ length: 12 }, (_, i) => i))
      ).pipe(Effect.map(Chunk.toReadonlyArray))
      expect(delays.length).toBe(12)
      delays.forEach((delay, n) => {
        const ceiling = Math.min(2000, 100 * 2 ** n)
        expect(Duration.toMillis(delay)).toBeGreaterThanOrEqual(0)
        expect(Duration.toMillis(delay)).toBeLessThanOrEqual(ceiling)
      })
      expect(new Set(delays.map(Duration.toMillis)).size).toBeGreaterThan(1)
    }))

  it.effect("decorrelated jitter: a total wait between f(n − 1) and f(n), capped, a first delay around base", () =>
    Effect.gen(function*() {
      const delaysOf = (schedule: Schedule.Schedule<Duration.Duration>, n: number) =>
        schedule.pipe(Schedule.delays, Schedule.run(0, Array.from({ length: n }, (_, i) => i)))
          .pipe(Effect.map((delays) => Chunk.toReadonlyArray(delays).map(Duration.toMillis)))
      const f = (t: number) => Math.pow(2, t) * Math.tanh(Math.sqrt(4 * t))
      const uncapped = yield* delaysOf(RetryPolicy.decorrelatedJitter("100 millis", "1 hour"), 10)
      let total = 0
      for (const [n, ms] of uncapped.entries()) {
        total += ms
        expect(total).toBeGreaterThanOrEqual((f(n) / 1.4) * 100 - 1e-6)
        expect(total).toBeLessThanOrEqual((f(n + 1) / 1.4) * 100 + 1e-6)
      }
      const delays = yield* delaysOf(RetryPolicy.decorrelatedJitter("100 millis", "2 seconds"), 2000)
      expect(delays.every((ms) => ms >= 0 && ms <= 2000)).toBe(true)
      expect(delays.slice(1100)).toEqual(Array(900).fill(2000)) // far out, the curve overflows: the cap
      // Over many independent first retries, the median is 0.9 × base: f(u) < 1.4 for u < 0.61.
      const firsts = yield* Effect.forEach(
        Array.from({ length: 1000 }, () => delaysOf(RetryPolicy.decorrelatedJitter("100 millis", "2 seconds"), 1)),
        (first) => Effect.map(first, ([ms]) => ms!)
      )
      const shorter = firsts.filter((ms) => ms < 100).length / firsts.length
      expect(shorter).toBeGreaterThan(0.55)
      expect(shorter).toBeLessThan(0.67)
    }).pipe(Effect.withRandom(Random.make("decorrelated jitter"))))

  it.effect("schedule with jitter: decorrelated retries with those delays", () =>
    Effect.gen(function*() {
      const { attempts, fiber } = yield* flaky(
        [rateLimited(), rateLimited()],
        RetryPolicy.schedule({ jitter: "decorrelated", base: "1 second", cap: "10 seconds" })
      )
      yield* TestClock.adjust("1 minute")
      expect(yield* Fiber.join(fiber)).toMatchObject({ _tag: "Right", right: "ok" })
      expect(yield* Ref.get(attempts)).toBe(3)
    }))

  it.effect("tapRetries reports each retry with the delay it waits", () =>
    Effect.gen(function*() {
      const seen = yield* Ref.make<ReadonlyArray<[string, number]>>([])
      const schedule = RetryPolicy.schedule<ApiError>({ base: "10 millis", cap: "10 millis" }).pipe(
        RetryPolicy.tapRetries((error, delay) =>
          Ref.update(seen, (xs) => [...xs, [error._tag, Duration.toMillis(delay)] as [string, number]])
        )
      )
      const { fiber } = yield* flaky([rateLimited("3 seconds"), rateLimited()], schedule)
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(fiber)
      const events = yield* Ref.get(seen)
      expect(events.map(([tag]) => tag)).toEqual(["RateLimited", "RateLimited"])
      expect(events[0]![1]).toBe(3000)
      expect(events[1]![1]).toBeLessThanOrEqual(20)
    }))

  it.effect("layerNone never retries", () =>
    Effect.gen(function*() {
      const policy = yield* RetryPolicy.RetryPolicy
      const { attempts, fiber } = yield* flaky([rateLimited()], policy.schedule)
      yield* Fiber.join(fiber)
      expect(yield* Ref.get(attempts)).toBe(1)
    }).pipe(Effect.provide(RetryPolicy.layerNone)))
})
