import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Supervisor from "effect/Supervisor"
import * as TestClock from "effect/TestClock"
import { InvalidRequest, ServerError } from "../src/ApiError.js"
import type { ApiError } from "../src/ApiError.js"
import * as RetryBudget from "../src/RetryBudget.js"
import { processClock } from "./support/processClock.js"
import * as RetryPolicy from "../src/RetryPolicy.js"

/** Lets the fibers a step woke run until they wait again. */
const settle = TestClock.adjust(0)

const overloaded = new ServerError({ status: 503, message: "overloaded", retryAfter: Option.none() })

/** Asks for `n` retries; answers how many the budget allowed. */
const askRetries = (budget: RetryBudget.Service, n: number) =>
  Effect.map(Effect.replicateEffect(budget.tryRetry, n), (answers) => answers.filter(Boolean).length)

const recordRequests = (budget: RetryBudget.Service, n: number) =>
  Effect.replicateEffect(budget.recordRequest, n, { discard: true })

/**
 * `calls` concurrent calls that each fail with `error` on every attempt, counted once by the
 * budget and retried by `RetryPolicy.schedule` guarded by it. Answers the total attempts.
 */
const storm = (budget: RetryBudget.Service, calls: number, error: ApiError, policy: RetryPolicy.Options = {}) =>
  Effect.gen(function*() {
    const attempts = yield* Ref.make(0)
    const call = Effect.zipRight(Ref.update(attempts, (n) => n + 1), Effect.fail(error))
    const schedule = RetryBudget.guard(budget)(RetryPolicy.schedule({ base: "10 millis", cap: "100 millis", ...policy }))
    const fiber = yield* Effect.fork(
      Effect.forEach(
        Array.from({ length: calls }),
        () => Effect.zipRight(budget.recordRequest, Effect.flip(Effect.retry(call, schedule))),
        { concurrency: "unbounded" }
      )
    )
    yield* TestClock.adjust("5 seconds")
    const errors = yield* Fiber.join(fiber)
    expect(errors.every((e) => e._tag === error._tag)).toBe(true)
    return yield* Ref.get(attempts)
  })

describe("RetryBudget", () => {
  it.effect("under a failure storm allows ratio · requests + the reserve, then refuses", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make()
      yield* recordRequests(budget, 100)
      // 0.2 · 100 + 1/s · 10 s
      expect(yield* askRetries(budget, 100)).toBe(30)
      expect(yield* budget.snapshot).toEqual({ requests: 100, retries: 30, refused: 70, refunded: 0, available: 0 })
    }))

  it.effect("the reserve lets low traffic retry; without it no traffic means no retries", () =>
    Effect.gen(function*() {
      const quiet = yield* RetryBudget.make({ minRetriesPerSecond: 0.5, window: "4 seconds" })
      expect(yield* askRetries(quiet, 5)).toBe(2)
      const strict = yield* RetryBudget.make({ minRetriesPerSecond: 0 })
      expect(yield* askRetries(strict, 5)).toBe(0)
      yield* recordRequests(strict, 10)
      expect(yield* askRetries(strict, 5)).toBe(2)
    }))

  it.effect("refills as the window rolls: calls and retries both age out", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make()
      yield* recordRequests(budget, 100)
      yield* TestClock.adjust("5 seconds")
      expect(yield* askRetries(budget, 40)).toBe(30)
      // The calls of t=0 leave the window at 10 s; the retries of t=5 s still count.
      yield* TestClock.adjust("4999 millis")
      expect((yield* budget.snapshot).requests).toBe(100)
      yield* TestClock.adjust("1 millis")
      expect(yield* budget.snapshot).toMatchObject({ requests: 0, retries: 30, available: 0 })
      yield* recordRequests(budget, 100)
      expect(yield* askRetries(budget, 1)).toBe(0)
      // At 15 s the retries leave too: the new calls fund 20 retries plus the reserve.
      yield* TestClock.adjust("5 seconds")
      expect(yield* budget.snapshot).toMatchObject({ requests: 100, retries: 0, available: 30 })
      expect(yield* askRetries(budget, 40)).toBe(30)
    }))

  it.effect("a step of the system clock back does not hold calls and retries in the window", () =>
    Effect.gen(function*() {
      const { clock, stepWall } = yield* processClock
      const budget = yield* Effect.withClock(RetryBudget.make(), clock)
      yield* recordRequests(budget, 100)
      expect(yield* askRetries(budget, 40)).toBe(30)
      stepWall(-3_600_000)
      yield* TestClock.adjust("10 seconds")
      expect(yield* budget.snapshot).toMatchObject({ requests: 0, retries: 0 })
    }))

  it.effect("guarding RetryPolicy.schedule: 100 failing calls make only the budget's retries", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make()
      expect(yield* storm(budget, 100, overloaded)).toBe(100 + 30)
      const snapshot = yield* budget.snapshot
      expect(snapshot.retries).toBe(30)
      expect(snapshot.refused).toBeGreaterThan(0)
    }))

  it.effect("with waitFor, a refused retry waits for the window to free room instead of failing", () =>
    Effect.gen(function*() {
      // One retry per 10 s window: the second call's retry must wait for the first to age out.
      const budget = yield* RetryBudget.make({ ratio: 0, minRetriesPerSecond: 0.1 })
      const attempts = yield* Ref.make(0)
      const call = Ref.updateAndGet(attempts, (n) => n + 1).pipe(
        Effect.flatMap((n) => (n <= 2 ? Effect.fail(overloaded) : Effect.succeed(n)))
      )
      const schedule = RetryBudget.guard(budget, { waitFor: "30 seconds" })(
        RetryPolicy.schedule({ base: "1 millis", cap: "1 millis" })
      )
      const calls = yield* Effect.fork(Effect.all([Effect.retry(call, schedule), Effect.retry(call, schedule)], {
        concurrency: "unbounded"
      }))
      yield* TestClock.adjust("1 second")
      expect(yield* Ref.get(attempts)).toBe(3)
      yield* TestClock.adjust("8 seconds")
      expect(yield* Ref.get(attempts)).toBe(3)
      yield* TestClock.adjust("2 seconds")
      expect(yield* Ref.get(attempts)).toBe(4)
      expect((yield* Fiber.join(calls)).length).toBe(2)
    }))

  // With 7 buckets, 10,000 / (10,000 / 7) floors to 6: the first bucket must still leave at 10 s.
  it.effect.each([10, 7])("a waiting retry goes the moment the bucket holding the last retry leaves the window, not a poll later (%i buckets)", (buckets) =>
    Effect.gen(function*() {
      // One retry per 10 s window: the retry taken at 0.5 s, in the first bucket, counts until 10 s.
      const budget = yield* RetryBudget.make({ ratio: 0, minRetriesPerSecond: 0.1, buckets })
      yield* TestClock.adjust("500 millis")
      expect(yield* budget.tryRetry).toBe(true)
      const waiting = yield* Effect.fork(budget.awaitRetry("1 minute"))
      yield* TestClock.adjust(9_499)
      expect(waiting.unsafePoll()).toBeNull()
      yield* TestClock.adjust(1)
      expect(yield* Fiber.join(waiting)).toBe(true)
    }))

  it.effect("a waiting retry is woken by the next call recorded, whose deposit makes room", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make({ ratio: 1, minRetriesPerSecond: 0 })
      expect(yield* budget.tryRetry).toBe(false)
      const waiting = yield* Effect.fork(budget.awaitRetry("1 hour"))
      yield* TestClock.adjust("1 minute")
      expect(waiting.unsafePoll()).toBeNull()
      yield* budget.recordRequest
      expect(yield* Fiber.join(waiting)).toBe(true)
    }))

  /** `n` retries waiting for room, forked in order. */
  const waitInLine = (budget: RetryBudget.Service, n: number, maxWait: Duration.DurationInput = "1 hour") =>
    Effect.forEach(Array.from({ length: n }), () => Effect.fork(budget.awaitRetry(maxWait)))

  /** Which of `fibers` are done. */
  const doneOf = (fibers: ReadonlyArray<Fiber.RuntimeFiber<unknown>>) => fibers.map((fiber) => fiber.unsafePoll() !== null)

  it.effect("waiting retries are served first come first served, and a new retry does not jump the line", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make({ ratio: 1, minRetriesPerSecond: 0 })
      const line = yield* waitInLine(budget, 4)
      yield* settle
      for (let served = 1; served <= 4; served++) {
        expect(yield* budget.tryRetry).toBe(false)
        yield* budget.recordRequest
        yield* settle
        expect(doneOf(line)).toEqual([0, 1, 2, 3].map((i) => i < served))
      }
      expect(yield* Fiber.join(Fiber.all(line))).toEqual([true, true, true, true])
      expect(yield* budget.snapshot).toEqual({ requests: 4, retries: 4, refused: 4, refunded: 0, available: 0 })
    }))

  it.effect("one deposit wakes exactly as many waiters as it makes room for, each with its retry withdrawn", () =>
    Effect.gen(function*() {
      const allowedBefore = (yield* Metric.value(RetryBudget.retriesAllowed)).count
      const refusedBefore = (yield* Metric.value(RetryBudget.retriesRefused)).count
      // Each call funds three retries.
      const budget = yield* RetryBudget.make({ ratio: 3, minRetriesPerSecond: 0 })
      const line = yield* waitInLine(budget, 10)
      yield* settle
      yield* budget.recordRequest
      yield* settle
      expect(doneOf(line)).toEqual([true, true, true, false, false, false, false, false, false, false])
      expect(yield* Fiber.join(Fiber.all(line.slice(0, 3)))).toEqual([true, true, true])
      expect(yield* budget.snapshot).toEqual({ requests: 1, retries: 3, refused: 0, refunded: 0, available: 0 })
      // The woken were not refused first and the others were not asked again.
      expect((yield* Metric.value(RetryBudget.retriesAllowed)).count - allowedBefore).toBe(3)
      expect((yield* Metric.value(RetryBudget.retriesRefused)).count - refusedBefore).toBe(0)
    }))

  it.effect("the line waits on one timer, set for when buckets leaving the window make room", () =>
    Effect.gen(function*() {
      // One retry per 10 s window, in 1 s buckets.
      const budget = yield* RetryBudget.make({ ratio: 0, minRetriesPerSecond: 0.1 })
      yield* TestClock.adjust(500)
      expect(yield* budget.tryRetry).toBe(true)
      const line = yield* waitInLine(budget, 50, "1 minute")
      yield* settle
      const deadline = 500 + 60_000
      const timers = Effect.map(TestClock.sleeps(), (sleeps) => Chunk.toArray(sleeps).filter((at) => at !== deadline))
      expect(yield* timers).toEqual([10_000])
      yield* TestClock.adjust(9_500)
      expect(doneOf(line).filter(Boolean).length).toBe(1)
      expect(line[0]!.unsafePoll()).not.toBeNull()
      expect(yield* timers).toEqual([20_000])
    }))

  it.effect("a retry whose wait ends as the window makes room gets the retry", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make({ ratio: 0, minRetriesPerSecond: 0.1 })
      expect(yield* budget.tryRetry).toBe(true)
      const waiting = yield* Effect.fork(budget.awaitRetry("10 seconds"))
      yield* TestClock.adjust("10 seconds")
      expect(yield* Fiber.join(waiting)).toBe(true)
      expect(yield* budget.snapshot).toMatchObject({ retries: 1, refused: 0 })
    }))

  it.effect("a retry whose wait runs out is refused once and takes nothing", () =>
    Effect.gen(function*() {
      const refusedBefore = (yield* Metric.value(RetryBudget.retriesRefused)).count
      const budget = yield* RetryBudget.make({ ratio: 1, minRetriesPerSecond: 0 })
      const waiting = yield* Effect.fork(budget.awaitRetry("2 seconds"))
      yield* TestClock.adjust("2 seconds")
      expect(yield* Fiber.join(waiting)).toBe(false)
      yield* budget.recordRequest
      expect(yield* budget.snapshot).toEqual({ requests: 1, retries: 0, refused: 1, refunded: 0, available: 1 })
      expect((yield* Metric.value(RetryBudget.retriesRefused)).count - refusedBefore).toBe(1)
    }))

  it.effect("an interrupted waiter leaves the line, takes nothing, and leaves no fiber behind", () =>
    Effect.gen(function*() {
      // The reserve allows one retry per window, and each call funds one more.
      const budget = yield* RetryBudget.make({ ratio: 1, minRetriesPerSecond: 0.1 })
      expect(yield* budget.tryRetry).toBe(true)
      const fibers = yield* Supervisor.track
      const line = yield* Effect.supervised(waitInLine(budget, 3), fibers)
      yield* settle
      // The waiters, their timeouts, and the timer set for when the reserve's retry leaves the window.
      expect((yield* fibers.value).length).toBeGreaterThan(3)
      yield* Fiber.interrupt(line[1]!)
      yield* budget.recordRequest
      yield* settle
      expect(yield* Fiber.join(line[0]!)).toBe(true)
      expect(line[2]!.unsafePoll()).toBeNull()
      yield* Fiber.interrupt(line[2]!)
      yield* settle
      expect(yield* fibers.value).toEqual([])
      yield* budget.recordRequest
      expect(yield* budget.snapshot).toEqual({ requests: 2, retries: 2, refused: 0, refunded: 0, available: 1 })
    }))

  it.effect("a refund gives a retry that succeeded its room back, and the next retry in line goes at once", () =>
    Effect.gen(function*() {
      const refundedBefore = (yield* Metric.value(RetryBudget.retriesRefunded)).count
      // One retry per 10 s window.
      const budget = yield* RetryBudget.make({ ratio: 0, minRetriesPerSecond: 0.1 })
      yield* TestClock.adjust("2 seconds")
      expect(yield* budget.tryRetry).toBe(true)
      const allowedAt = yield* Clock.currentTimeMillis
      const waiting = yield* Effect.fork(budget.awaitRetry("1 minute"))
      yield* TestClock.adjust("3 seconds")
      expect(waiting.unsafePoll()).toBeNull()
      yield* budget.refund(allowedAt)
      expect(yield* Fiber.join(waiting)).toBe(true)
      expect(yield* budget.snapshot).toEqual({ requests: 0, retries: 1, refused: 0, refunded: 1, available: 0 })
      expect((yield* Metric.value(RetryBudget.retriesRefunded)).count - refundedBefore).toBe(1)
    }))

  it.effect("a refund never gives back room that does not count: none for a retry that left the window, none for a time none was allowed", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make({ ratio: 0, minRetriesPerSecond: 0.1 })
      yield* budget.refund(0)
      expect(yield* budget.snapshot).toMatchObject({ retries: 0, refunded: 0, available: 1 })
      expect(yield* budget.tryRetry).toBe(true)
      yield* TestClock.adjust("10 seconds")
      yield* budget.refund(0)
      expect(yield* budget.snapshot).toMatchObject({ retries: 0, refunded: 0, available: 1 })
      // The retry allowed at 10 s is not one allowed at 11 s.
      expect(yield* budget.tryRetry).toBe(true)
      yield* TestClock.adjust("1 second")
      yield* budget.refund(11_000)
      // Nor is the one of 0 s, whose bucket the one of 10 s now reuses.
      yield* budget.refund(0)
      expect(yield* budget.snapshot).toMatchObject({ retries: 1, refunded: 0, available: 0 })
      yield* budget.refund(10_000)
      expect(yield* budget.snapshot).toMatchObject({ retries: 0, refunded: 1, available: 1 })
      // Nor a time that is no number (a lookup of a retry never allowed).
      expect(yield* budget.tryRetry).toBe(true)
      yield* budget.refund(Number.NaN)
      expect(yield* budget.snapshot).toMatchObject({ retries: 1, refunded: 1, available: 0 })
    }))

  it.effect("with waitFor, the error surfaces once the wait is over", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make({ ratio: 0, minRetriesPerSecond: 0 })
      const attempts = yield* Ref.make(0)
      const call = Effect.zipRight(Ref.update(attempts, (n) => n + 1), Effect.fail(overloaded))
      const schedule = RetryBudget.guard(budget, { waitFor: "5 seconds" })(RetryPolicy.schedule())
      const fiber = yield* Effect.fork(Effect.flip(Effect.retry(call, schedule)))
      yield* TestClock.adjust("4 seconds")
      expect(fiber.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(fiber))._tag).toBe("ServerError")
      expect(yield* Ref.get(attempts)).toBe(1)
    }))

  it.effect("the same storm without a budget retries every call to maxRetries", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.RetryBudget
      expect(yield* storm(budget, 30, overloaded)).toBe(30 * 6)
    }).pipe(Effect.provide(RetryBudget.layerUnlimited)))

  it.effect("is asked only for retries the policy decides on", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make()
      yield* recordRequests(budget, 100)
      yield* storm(budget, 1, new InvalidRequest({ status: 400, message: "bad" }))
      expect(yield* budget.snapshot).toMatchObject({ retries: 0, refused: 0 })
      yield* storm(budget, 1, overloaded, { maxRetries: 2 })
      expect(yield* budget.snapshot).toMatchObject({ retries: 2, refused: 0 })
    }))

  it.effect("reports a refusal to onRefused with the error that surfaces, and to the metrics", () =>
    Effect.gen(function*() {
      const refusedBefore = (yield* Metric.value(RetryBudget.retriesRefused)).count
      const allowedBefore = (yield* Metric.value(RetryBudget.retriesAllowed)).count
      const budget = yield* RetryBudget.make({ minRetriesPerSecond: 0 })
      yield* recordRequests(budget, 5)
      const refusals = yield* Ref.make<ReadonlyArray<string>>([])
      const schedule = RetryBudget.guard(budget, {
        onRefused: (error: ApiError) => Ref.update(refusals, (tags) => [...tags, error._tag])
      })(RetryPolicy.schedule({ base: "10 millis" }))
      const fiber = yield* Effect.fork(Effect.flip(Effect.retry(Effect.fail(overloaded), schedule)))
      yield* TestClock.adjust("1 minute")
      expect((yield* Fiber.join(fiber))._tag).toBe("ServerError")
      expect(yield* Ref.get(refusals)).toEqual(["ServerError"])
      expect((yield* Metric.value(RetryBudget.retriesAllowed)).count - allowedBefore).toBe(1)
      expect((yield* Metric.value(RetryBudget.retriesRefused)).count - refusedBefore).toBe(1)
    }))

  it.effect("layerUnlimited allows every retry", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.RetryBudget
      expect(yield* askRetries(budget, 1000)).toBe(1000)
    }).pipe(Effect.provide(RetryBudget.layerUnlimited)))

  it.effect("rejects invalid options with a defect", () =>
    Effect.gen(function*() {
      const invalid: ReadonlyArray<RetryBudget.Options> = [
        { ratio: -0.1 },
        { minRetriesPerSecond: -1 },
        { window: 0 },
        { buckets: 0 },
        { buckets: 2.5 }
      ]
      for (const options of invalid) {
        const exit = yield* Effect.exit(RetryBudget.make(options))
        expect(exit._tag === "Failure" && exit.cause._tag).toBe("Die")
      }
    }))

  /** The bucket `at` falls in: the last to start, at `index × bucketMillis`, by then (not `at / bucketMillis` floored: 10,000 / (10,000 / 7) is 6.999…). */
  const bucketOf = (at: number, bucketMillis: number) => {
    let index = Math.floor(at / bucketMillis)
    while (index * bucketMillis > at) index--
    while ((index + 1) * bucketMillis <= at) index++
    return index
  }

  const budgetOptions = {
    ratio: FastCheck.constantFrom(0, 0.1, 0.2, 0.25, 0.5, 1),
    minRetriesPerSecond: FastCheck.constantFrom(0, 0.1, 0.5, 1),
    buckets: FastCheck.integer({ min: 1, max: 10 })
  }

  /**
   * A budget over a 10 s window, and a model of it: the calls recorded and the retries granted,
   * and the room they leave as the window counts them.
   */
  const modelled = ({ buckets, minRetriesPerSecond, ratio }: { ratio: number; minRetriesPerSecond: number; buckets: number }) =>
    Effect.map(RetryBudget.make({ ratio, minRetriesPerSecond, window: 10_000, buckets }), (budget) => {
      const bucketMillis = 10_000 / buckets
      const requests: Array<number> = []
      const grants: Array<number> = []
      // The window the budget measures: the buckets that end after now − window.
      const countAt = (times: ReadonlyArray<number>, now: number) => {
        const oldest = bucketOf(now, bucketMillis) - buckets + 1
        return times.filter((at) => at <= now && bucketOf(at, bucketMillis) >= oldest).length
      }
      /** Retries the window allows at `now`: ratio · requests + reserve, less the retries granted. */
      const room = (now: number) => ratio * countAt(requests, now) + minRetriesPerSecond * 10 - countAt(grants, now)
      /** Records a call in the budget and the model. */
      const request = Effect.flatMap(Clock.currentTimeMillis, (now) => {
        requests.push(now)
        return budget.recordRequest
      })
      /** Asks for a retry, exactly when the model has room for one; the time it was allowed, if it was. */
      const retry = Effect.flatMap(Clock.currentTimeMillis, (now) =>
        Effect.map(budget.tryRetry, (allowed) => {
          expect(allowed).toBe(room(now) >= 1)
          return allowed ? now : undefined
        }))
      return { budget, requests, grants, room, countAt, request, retry }
    })

  const request = FastCheck.constant({ _tag: "request" } as const)
  const retry = FastCheck.constant({ _tag: "retry" } as const)
  const timed = <Tag extends string>(_tag: Tag, max: number) =>
    FastCheck.record({ _tag: FastCheck.constant(_tag), millis: FastCheck.integer({ min: 0, max }) })

  // Dense enough that windows fill up and decisions often sit at the budget's edge.
  const operation = FastCheck.oneof(
    { arbitrary: request, weight: 3 },
    { arbitrary: retry, weight: 3 },
    // A retry allowed before succeeds: which one.
    { arbitrary: FastCheck.record({ _tag: FastCheck.constant("refund" as const), which: FastCheck.nat() }), weight: 3 },
    { arbitrary: timed("advance", 3000), weight: 1 }
  )

  it.effect.prop(
    "allows a retry exactly when the window's retries that did not succeed (were not refunded) stay within ratio · requests + reserve",
    { operations: FastCheck.array(operation, { maxLength: 120, size: "max" }), ...budgetOptions },
    ({ operations, ...options }) =>
      Effect.gen(function*() {
        const { budget, countAt, grants, requests, ...model } = yield* modelled(options)
        /** Each retry allowed, when, and whether it succeeded. */
        const allowed: Array<{ readonly at: number; succeeded: boolean }> = []
        for (const op of operations) {
          switch (op._tag) {
            case "request":
              yield* model.request
              break
            case "retry": {
              const at = yield* model.retry
              if (at !== undefined) allowed.push({ at, succeeded: false })
              break
            }
            case "refund": {
              const open = allowed.filter((retry) => !retry.succeeded)
              if (open.length === 0) break
              const retry = open[op.which % open.length]!
              retry.succeeded = true
              yield* budget.refund(retry.at)
              break
            }
            case "advance":
              yield* TestClock.adjust(op.millis)
          }
          grants.splice(0, grants.length, ...allowed.filter((retry) => !retry.succeeded).map((retry) => retry.at))
          const at = yield* Clock.currentTimeMillis
          const allowance = Math.floor(options.ratio * countAt(requests, at) + options.minRetriesPerSecond * 10)
          expect((yield* budget.snapshot).available).toBe(Math.max(0, allowance - countAt(grants, at)))
        }
      }),
    { fastCheck: { numRuns: 60 } }
  )

  const lineOperation = FastCheck.oneof(
    { arbitrary: request, weight: 3 },
    { arbitrary: retry, weight: 2 },
    { arbitrary: timed("wait", 15_000), weight: 3 },
    {
      arbitrary: FastCheck.record({ _tag: FastCheck.constant("interrupt" as const), which: FastCheck.nat() }),
      weight: 1
    },
    { arbitrary: timed("advance", 4000), weight: 2 }
  )

  it.effect.prop(
    "with retries waiting in line: every retry granted fits ratio · requests + reserve, first come first served, and none waits while there is room",
    { operations: FastCheck.array(lineOperation, { maxLength: 60, size: "max" }), ...budgetOptions },
    ({ operations, ...options }) =>
      Effect.gen(function*() {
        const { budget, grants, room, ...model } = yield* modelled(options)
        /** Waiters still waiting, in the order they joined the line. */
        let line: Array<Fiber.RuntimeFiber<number | undefined>> = []
        /** Takes in the waiters that finished, checking each grant, then that none waits while there is room. */
        const check = Effect.gen(function*() {
          yield* settle
          const now = yield* Clock.currentTimeMillis
          const stillWaiting = line.filter((fiber) => fiber.unsafePoll() === null)
          for (const [joined, fiber] of line.entries()) {
            const exit = fiber.unsafePoll()
            if (exit === null || !Exit.isSuccess(exit) || exit.value === undefined) continue
            // First come first served: nobody who joined earlier still waits.
            expect(stillWaiting.some((waiting) => line.indexOf(waiting) < joined)).toBe(false)
            grants.push(exit.value)
            expect(room(exit.value)).toBeGreaterThanOrEqual(0)
          }
          line = stillWaiting
          if (line.length > 0) expect(room(now)).toBeLessThan(1)
        })
        for (const op of operations) {
          switch (op._tag) {
            case "request":
              yield* model.request
              break
            case "retry": {
              // Exactly the model's room: an interrupted or timed-out waiter took nothing.
              const allowedAt = yield* model.retry
              if (allowedAt !== undefined) grants.push(allowedAt)
              break
            }
            case "wait":
              line.push(
                yield* Effect.fork(
                  Effect.flatMap(
                    budget.awaitRetry(op.millis),
                    (allowed) => allowed ? Clock.currentTimeMillis : Effect.succeed(undefined)
                  )
                )
              )
              break
            case "interrupt":
              if (line.length > 0) yield* Fiber.interrupt(line[op.which % line.length]!)
              break
            case "advance":
              yield* TestClock.adjust(op.millis)
          }
          yield* check
        }
        yield* Fiber.interruptAll(line)
      }),
    { fastCheck: { numRuns: 40 } }
  )
})
