import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientError from "@effect/platform/HttpClientError"
import { describe, expect, it } from "@effect/vitest"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as ApiError from "../src/ApiError.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as ConcurrencyLimiter from "../src/ConcurrencyLimiter.js"
import * as MockUpstream from "../src/MockUpstream.js"
import * as Policy from "../src/Policy.js"
import * as RetryBudget from "../src/RetryBudget.js"
import * as RetryPolicy from "../src/RetryPolicy.js"
import * as Telemetry from "../src/Telemetry.js"
import * as TokenBucket from "../src/TokenBucket.js"
import * as Transport from "../src/Transport.js"
import { destroySocket, rawServer, reply } from "./support/rawServer.js"

class DbBusy extends Data.TaggedError("DbBusy")<{}> {}
class DbOverloaded extends Data.TaggedError("DbOverloaded")<{}> {}
class DbDown extends Data.TaggedError("DbDown")<{}> {}
class DbConstraint extends Data.TaggedError("DbConstraint")<{}> {}

const classifyDb = ApiError.classifyWith((error) =>
  error instanceof DbBusy
    ? ApiError.loadShed()
    : error instanceof DbOverloaded
    ? ApiError.loadShed(undefined, "overload")
    : error instanceof DbDown
    ? ApiError.outage()
    : error instanceof DbConstraint
    ? ApiError.caller
    : undefined
)

/** A call that fails with `errors` in turn, then answers; counts its attempts. */
const scripted = <E>(errors: ReadonlyArray<E>) =>
  Effect.map(Ref.make(0), (attempts) => ({
    attempts: Ref.get(attempts),
    call: Effect.flatMap(Ref.getAndUpdate(attempts, (n) => n + 1), (n) =>
      n < errors.length ? Effect.fail(errors[n]!) : Effect.succeed(`answer after ${n}`))
  }))

const fast = { base: "10 millis", cap: "10 millis", maxRetries: 5 } as const

/** Another call of `policy`, holding a permit for 100 ms: a 429 met meanwhile is not met alone. */
const anotherCall = (policy: Policy.Service) => Effect.tap(Effect.fork(policy.apply(Effect.sleep("100 millis"))), () => Effect.yieldNow())

describe("Policy around any effect", () => {
  it.scoped("retries a user's load-shed and outage errors, not its caller errors, through its own classifier", () =>
    Effect.gen(function*() {
      const policy = yield* Policy.make({ classify: classifyDb, retry: fast })
      const retried = yield* scripted([new DbBusy(), new DbDown()])
      const fiber = yield* Effect.fork(policy.apply(retried.call))
      yield* TestClock.adjust("1 second")
      expect(yield* Fiber.join(fiber)).toBe("answer after 2")

      const final = yield* scripted([new DbConstraint()])
      const error = yield* Effect.flip(policy.apply(final.call))
      expect(error).toBeInstanceOf(DbConstraint)
      expect(yield* final.attempts).toBe(1)
    }))

  it.scoped("a retry keeps its place at the limiter: it waits ahead of the calls that came after it", () =>
    Effect.gen(function*() {
      const policy = yield* Policy.make({ classify: classifyDb, retry: fast, retryBudget: false, concurrency: 1, breaker: false })
      const order: Array<string> = []
      let failed = false
      const first = Effect.suspend(() => {
        order.push("first")
        if (failed) return Effect.sleep("1 second")
        failed = true
        return Effect.fail(new DbDown())
      })
      const other = (name: string) => Effect.zipRight(Effect.sync(() => order.push(name)), Effect.sleep("1 second"))
      const calls = [yield* Effect.fork(policy.apply(first))]
      yield* TestClock.adjust(0) // "first" failed, and backs off 10 ms
      calls.push(yield* Effect.fork(policy.apply(other("second"))))
      yield* TestClock.adjust(0)
      calls.push(yield* Effect.fork(policy.apply(other("third"))))
      yield* TestClock.adjust(0)
      for (let second = 0; second < 4; second++) yield* TestClock.adjust("1 second")
      yield* Fiber.joinAll(calls)
      expect(order).toEqual(["first", "second", "first", "third"])
    }))

  it.scoped("load shed lowers the adaptive limit; outages open the breaker; the limiter ignores outages", () =>
    Effect.gen(function*() {
      const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 10, classify: classifyDb })
      const breaker = yield* CircuitBreaker.make({ classify: classifyDb, countLoadShed: false, minimumThroughput: 4 })
      const policy = yield* Policy.fromParts({ classify: classifyDb, limiter, breaker })
      const outage = yield* scripted(Array.from({ length: 4 }, () => new DbDown()))
      yield* Effect.forEach(Array.from({ length: 4 }), () => Effect.either(policy.apply(outage.call)))
      expect((yield* limiter.snapshot).limit).toBe(10)
      expect((yield* breaker.state)._tag).toBe("Open")

      yield* breaker.reset
      const busy = yield* scripted(Array.from({ length: 4 }, () => new DbBusy()))
      yield* Effect.forEach(Array.from({ length: 4 }), () => Effect.either(policy.apply(busy.call)))
      expect((yield* limiter.snapshot).limit).toBeLessThan(10)
      expect((yield* breaker.state)._tag).toBe("Closed")
    }))

  it.scoped("a number is a ceiling: 429-like refusals lower it and leave the breaker closed; outages and overload open it", () =>
    Effect.gen(function*() {
      const policy = yield* Policy.make({
        classify: classifyDb,
        retry: false,
        retryBudget: false,
        concurrency: 4,
        breaker: { minimumThroughput: 2, failureRatio: 0.25 }
      })
      for (const _ of [1, 2, 3, 4]) expect((yield* Effect.flip(policy.apply(Effect.fail(new DbBusy()))))._tag).toBe("DbBusy")
      expect(yield* policy.apply(Effect.succeed("through"))).toBe("through")

      // Fewer than 4 calls now run at once.
      let running = 0
      const release = yield* Deferred.make<void>()
      const held = policy.apply(Effect.zipRight(Effect.sync(() => running++), Deferred.await(release)))
      const calls = yield* Effect.fork(Effect.all([held, held, held, held], { concurrency: "unbounded" }))
      yield* TestClock.adjust(0)
      expect(running).toBeGreaterThan(0)
      expect(running).toBeLessThan(4)
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(calls)

      for (const _ of [1, 2]) yield* Effect.flip(policy.apply(Effect.fail(new DbDown())))
      const refused = yield* Effect.flip(policy.apply(Effect.succeed("never")))
      expect(refused).toMatchObject({ _tag: "CircuitOpen" })
    }))

  it.scoped("behind an adaptive limiter a cap's 429 is retried without the retry budget's leave; overload and outages are not, nor a 429 with no limiter or a fixed one, nor one met alone", () =>
    Effect.gen(function*() {
      // A spent budget, which refuses at once.
      const options = { classify: classifyDb, retry: fast, retryBudget: { ratio: 0, minRetriesPerSecond: 0 }, budgetWait: 0 } as const
      const paced = yield* Policy.make(options)
      const unpaced = yield* Policy.make({ ...options, concurrency: false })
      const outcome = (policy: Policy.Service, error: DbBusy | DbOverloaded | DbDown) =>
        Effect.gen(function*() {
          const { call } = yield* scripted([error])
          const fiber = yield* Effect.fork(Effect.either(policy.apply(call)))
          yield* TestClock.adjust("1 second")
          return Either.match(yield* Fiber.join(fiber), { onLeft: (e) => e._tag, onRight: (answer) => answer })
        })
      // Beside another call in flight, the lowered limit paces it.
      yield* anotherCall(paced)
      expect(yield* outcome(paced, new DbBusy())).toBe("answer after 1")
      // Met alone, nothing but the budget would pace the retry: the upstream refuses even one.
      expect(yield* outcome(yield* Policy.make(options), new DbBusy())).toBe("DbBusy")
      expect(yield* outcome(paced, new DbOverloaded())).toBe("DbOverloaded")
      expect(yield* outcome(paced, new DbDown())).toBe("DbDown")
      expect(yield* outcome(unpaced, new DbBusy())).toBe("DbBusy")
      // An account pool's outer policy has no limiter but says its attempts are paced.
      const pooled = yield* Policy.make({ ...options, concurrency: false, capRetriesPaced: true })
      expect(yield* outcome(pooled, new DbBusy())).toBe("answer after 1")
      // A limiter given as a part may not back off (a fixed one): the budget paces its retries.
      const fixed = yield* Policy.fromParts({
        classify: classifyDb,
        retry: RetryPolicy.make({ ...fast, classify: classifyDb }),
        budget: yield* RetryBudget.make({ ratio: 0, minRetriesPerSecond: 0 }),
        limiter: yield* ConcurrencyLimiter.makeFixed(4),
        budgetWait: 0
      })
      expect(yield* outcome(fixed, new DbBusy())).toBe("DbBusy")
    }))

  it.scoped("an upstream that refuses every request with a 429 (an account-wide rate limit): the retry budget bounds the retries once the limit is at its floor", () =>
    Effect.gen(function*() {
      const policy = yield* Policy.make({})
      let attempts = 0
      const refused = Effect.suspend(() => {
        attempts++
        return Effect.zipRight(Effect.sleep("50 millis"), Effect.fail(new ApiError.RateLimited({ message: "rpm", retryAfter: Option.none() })))
      })
      yield* Effect.forkScoped(Effect.forEach(Array.from({ length: 100 }), () => Effect.exit(policy.apply(refused)), { concurrency: "unbounded" }))
      for (let step = 0; step < 200; step++) yield* TestClock.adjust("50 millis")
      // The budget's defaults: 20 % of the 100 calls and a reserve of 10 in its 10 s window; and
      // the first 429s, met beside others while the limit fell from its initial 8, paced by it.
      // Without the budget, each call would be retried 5 times (208 attempts in the 10 s).
      expect(attempts).toBeLessThanOrEqual(130 + 8)
    }))

  it.scoped("retries of its own bucket's refusals are not charged to the retry budget: they reached no upstream, and the bucket paces them", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make()
      const bucket = yield* TokenBucket.make({ requests: { limit: 10, interval: "1 second" }, onExhausted: "fail" })
      const policy = yield* Policy.fromParts({ retry: RetryPolicy.make({ base: "100 millis", cap: "1 second", maxRetries: 10 }), budget, bucket })
      // A burst of 30 calls: 20 are refused by the bucket, and retried as it refills.
      const burst = yield* Effect.fork(Effect.forEach(Array.from({ length: 30 }), () => policy.apply(Effect.void), { concurrency: "unbounded" }))
      for (let step = 0; step < 100 && burst.unsafePoll() === null; step++) yield* TestClock.adjust("100 millis")
      expect(burst.unsafePoll()).toMatchObject({ _tag: "Success" })
      // Charged, they would have spent the room (20 % of 30 calls, and the reserve of 10) a real failure's retry needs.
      expect(yield* budget.snapshot).toMatchObject({ retries: 0 })
      // The retries' jitter from one seed: the same delays on every run (an unseeded run failed its burst once in CI).
    }).pipe(Effect.withRandom(Random.make(7))))

  /** A policy of quick retries guarded by `budget`, whose retries wait up to a minute for it. */
  const budgeted = (budget: RetryBudget.Service, parts: Partial<Policy.Parts> = {}) =>
    Policy.fromParts({
      classify: classifyDb,
      retry: RetryPolicy.make({ ...fast, classify: classifyDb }),
      budget,
      budgetWait: "1 minute",
      ...parts
    })

  it.scoped("after an outage, retries waiting for the budget go as the retries before them succeed, not when the window rolls on", () =>
    Effect.gen(function*() {
      // 40 calls fund 0.2 · 40 + 10 retries: 18 go, and each that succeeds lets a waiting one go.
      const budget = yield* RetryBudget.make()
      const policy = yield* budgeted(budget)
      const calls = yield* Effect.forEach(Array.from({ length: 40 }), () => scripted([new DbDown()]))
      const fiber = yield* Effect.fork(Effect.forEach(calls, ({ call }) => policy.apply(call), { concurrency: "unbounded" }))
      yield* TestClock.adjust("1 second")
      expect(fiber.unsafePoll()).not.toBeNull()
      expect(yield* Fiber.join(fiber)).toEqual(calls.map(() => "answer after 1"))
      expect(yield* budget.snapshot).toMatchObject({ requests: 40, retries: 0, refunded: 40, refused: 0 })
    }))

  it.scoped("gives back only the retry that succeeded: not one that failed, nor one the budget did not charge", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make()
      const policy = yield* budgeted(budget)
      const twice = yield* scripted([new DbDown(), new DbDown()])
      const fiber = yield* Effect.fork(policy.apply(twice.call))
      yield* TestClock.adjust("1 second")
      expect(yield* Fiber.join(fiber)).toBe("answer after 2")
      expect(yield* budget.snapshot).toMatchObject({ retries: 1, refunded: 1 })
      // A cap's 429 behind the adaptive limiter is paced by it: its retry is neither charged nor refunded.
      const paced = yield* budgeted(budget, {
        limiter: yield* ConcurrencyLimiter.makeAdaptive({ classify: classifyDb }),
        capRetriesPaced: true
      })
      const busyThenDown = yield* scripted([new DbBusy(), new DbDown()])
      yield* anotherCall(paced)
      const pacedFiber = yield* Effect.fork(paced.apply(busyThenDown.call))
      yield* TestClock.adjust("1 second")
      expect(yield* Fiber.join(pacedFiber)).toBe("answer after 2")
      expect(yield* budget.snapshot).toMatchObject({ retries: 1, refunded: 2 })
    }))

  it.scoped("from the context's parts, paces a cap's retries by its adaptive limiter when told to: the budget is not asked", () =>
    Effect.gen(function*() {
      const parts = Layer.mergeAll(
        RetryPolicy.layer({ ...fast, classify: classifyDb }),
        // A spent budget, which refuses at once.
        RetryBudget.layer({ ratio: 0, minRetriesPerSecond: 0 }),
        TokenBucket.layerUnlimited,
        ConcurrencyLimiter.layerAdaptive({ classify: classifyDb }),
        CircuitBreaker.layerNoop
      )
      const outcome = (layer: Layer.Layer<Policy.Policy, never, Layer.Layer.Success<typeof parts>>) =>
        Effect.gen(function*() {
          const policy = yield* Effect.provide(Policy.Policy, Layer.provide(layer, parts))
          const { call } = yield* scripted([new DbBusy()])
          yield* anotherCall(policy)
          const fiber = yield* Effect.fork(Effect.either(policy.apply(call)))
          yield* TestClock.adjust("1 second")
          return Either.match(yield* Fiber.join(fiber), { onLeft: (e) => e._tag, onRight: (answer) => answer })
        })
      const options = { classify: classifyDb, budgetWait: 0 } as const
      expect(yield* outcome(Policy.layerFromContextWith({ ...options, capRetriesPaced: true }))).toBe("answer after 1")
      expect(yield* outcome(Policy.layerFromContextWith(options))).toBe("DbBusy")
    }))

  it.scoped("behind the adaptive limiter the breaker opens on a storm of overload (503s), not of 429s (countLoadShed: undefined is left out)", () =>
    Effect.forEach([{}, { countLoadShed: undefined }], (unset) =>
      Effect.gen(function*() {
        const policy = yield* Policy.make({
          classify: classifyDb,
          retry: false,
          retryBudget: false,
          breaker: { minimumThroughput: 4, failureRatio: 0.5, ...unset }
        })
        const failWith = (error: DbBusy | DbOverloaded) =>
          Effect.forEach([1, 2, 3, 4], () => Effect.flip(policy.apply(Effect.fail(error))))
        expect((yield* failWith(new DbBusy())).map((e) => e._tag)).toEqual(["DbBusy", "DbBusy", "DbBusy", "DbBusy"])
        expect(yield* policy.apply(Effect.succeed("served"))).toBe("served")
        yield* failWith(new DbOverloaded())
        expect(yield* Effect.flip(policy.apply(Effect.succeed("never")))).toMatchObject({ _tag: "CircuitOpen" })
      })))

  it.scoped("a caller waits for the token bucket no longer than its abandonWhen, and is not retried", () =>
    Effect.gen(function*() {
      const policy = yield* Policy.make({ rate: { requests: { limit: 1, interval: "1 minute" } }, retry: fast })
      yield* policy.apply(Effect.void)
      const waited = yield* Effect.fork(Effect.flip(policy.apply(Effect.succeed("sent"), { abandonWhen: Effect.sleep("5 seconds") })))
      yield* TestClock.adjust("5 seconds")
      expect(yield* Fiber.join(waited)).toMatchObject({ _tag: "RateLimitExceeded", gaveUp: true })
    }))

  it.scoped("while a canary runs in half-open, callers wait for its verdict holding no permit, and no longer than their abandonWhen", () =>
    Effect.gen(function*() {
      const breaker = yield* CircuitBreaker.make({ classify: classifyDb, minimumThroughput: 1, openFor: "1 second" })
      const limiter = yield* ConcurrencyLimiter.makeFixed(2)
      const policy = yield* Policy.fromParts({ classify: classifyDb, breaker, limiter })
      yield* Effect.exit(policy.apply(Effect.fail(new DbDown())))
      yield* TestClock.adjust("2 seconds")
      // The canary: an LLM call of minutes.
      const canary = yield* Effect.fork(policy.apply(Effect.as(Effect.sleep("10 minutes"), "canary")))
      yield* TestClock.adjust("1 millis")
      const waiting = (name: string) =>
        Effect.fork(Effect.either(policy.apply(Effect.succeed(name), { abandonWhen: Effect.sleep("1 second") })))
      const [first, second] = [yield* waiting("first"), yield* waiting("second")]
      yield* TestClock.adjust("1 millis")
      expect((yield* limiter.snapshot).inFlight).toBe(1)
      yield* TestClock.adjust("1 second")
      for (const waiter of [first, second]) {
        expect(yield* Fiber.join(waiter)).toMatchObject({ _tag: "Left", left: { _tag: "CircuitOpen", reason: "half_open" } })
      }
      // One that waits without a deadline goes once the canary closed the circuit.
      const patient = yield* Effect.fork(policy.apply(Effect.succeed("patient")))
      yield* TestClock.adjust("10 minutes")
      expect([yield* Fiber.join(canary), yield* Fiber.join(patient)]).toEqual(["canary", "patient"])
    }))

  it.scoped("an error its classifier does not know is an outage: retried and counted by the breaker, never a success", () =>
    Effect.gen(function*() {
      const breaker = yield* CircuitBreaker.make({ minimumThroughput: 5 })
      const policy = yield* Policy.fromParts({ retry: RetryPolicy.make(fast), breaker })
      const unknown = yield* scripted([new Error("?"), new Error("?")])
      const fiber = yield* Effect.fork(policy.apply(unknown.call))
      yield* TestClock.adjust("1 second")
      expect(yield* Fiber.join(fiber)).toBe("answer after 2")
      expect(yield* breaker.snapshot).toMatchObject({ calls: 3, failures: 2 })
    }))

  it.scoped("refusals of its own gates are not retried unless they say so, and not reported as the upstream's", () =>
    Effect.gen(function*() {
      const { counts, telemetry } = yield* Telemetry.makeCounters
      const limiter = yield* ConcurrencyLimiter.makeFixed(1, { maxQueued: 0 })
      const policy = yield* Policy.fromParts({ retry: RetryPolicy.make(fast), limiter, telemetry })
      const latch = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(policy.apply(Deferred.await(latch)))
      yield* TestClock.adjust(0)
      const refused = yield* Effect.flip(policy.apply(Effect.void))
      expect(refused).toBeInstanceOf(ConcurrencyLimiter.QueueFull)
      expect(yield* counts).toMatchObject({ failedAttempts: 0, retries: 0 })
      yield* Deferred.succeed(latch, undefined)
      yield* Fiber.join(holder)
    }))

  it.effect("needs no Telemetry: without one nothing is reported; with one, failed attempts and retries are", () =>
    Effect.gen(function*() {
      const { counts, telemetry } = yield* Telemetry.makeCounters
      const run = (layer: Layer.Layer<Policy.Policy>) =>
        Effect.gen(function*() {
          const { call } = yield* scripted([new DbBusy()])
          const fiber = yield* Effect.fork(Effect.flatMap(Policy.Policy, (policy) => policy.apply(call)).pipe(Effect.provide(layer)))
          yield* TestClock.adjust("1 second")
          return yield* Fiber.join(fiber)
        })
      const policy = Policy.layer({ classify: classifyDb, retry: fast })
      yield* run(policy)
      expect(yield* counts).toMatchObject({ failedAttempts: 0, retries: 0 })
      yield* run(policy.pipe(Layer.provide(Layer.succeed(Telemetry.Telemetry, telemetry))))
      expect(yield* counts).toMatchObject({ failedAttempts: 1, retries: 1, byTag: { DbBusy: 1 } })
    }))
})

describe("Policy around a stream", () => {
  it.scoped("holds the permit and the breaker's admission for the whole stream, judged by how it ends", () =>
    Effect.gen(function*() {
      const limiter = yield* ConcurrencyLimiter.makeFixed(2)
      const breaker = yield* CircuitBreaker.make({ minimumThroughput: 2, failureRatio: 0.5 })
      const policy = yield* Policy.fromParts({ limiter, breaker })
      const gate = yield* Deferred.make<void>()
      const stream = Stream.concat(Stream.make(1, 2), Stream.fromEffect(Effect.as(Deferred.await(gate), 3)))
      const fiber = yield* Effect.fork(Stream.runCollect(policy.applyStream(stream)))
      yield* TestClock.adjust(0)
      expect((yield* limiter.snapshot).inFlight).toBe(1)
      yield* Deferred.succeed(gate, undefined)
      expect(Array.from(yield* Fiber.join(fiber))).toEqual([1, 2, 3])
      expect((yield* limiter.snapshot).inFlight).toBe(0)
      expect(yield* breaker.snapshot).toMatchObject({ calls: 1, failures: 0 })

      // A stream that fails after its first elements counts once, as a failure, and is not retried.
      const cut = Stream.concat(Stream.make(1), Stream.fail(new ApiError.StreamTruncated({ partial: ApiError.emptyPartial })))
      const result = yield* Effect.either(Stream.runCollect(policy.applyStream(cut)))
      expect(Either.isLeft(result)).toBe(true)
      expect((yield* breaker.state)._tag).toBe("Open")
      expect((yield* limiter.snapshot).inFlight).toBe(0)
    }))

  it.scoped("times a stream's call from its opening to its end in callDuration, as a completion's", () =>
    Effect.gen(function*() {
      const policy = yield* Policy.make()
      const slow = Stream.concat(Stream.make(1), Stream.fromEffect(Effect.as(Effect.sleep("2 seconds"), 2)))
      const fiber = yield* Effect.fork(Stream.runCollect(policy.applyStream(slow)).pipe(Effect.tagMetrics("test", "timed-stream")))
      yield* TestClock.adjust("2 seconds")
      yield* Fiber.join(fiber)
      const timed = yield* Metric.value(Metric.tagged(Policy.callDuration, "test", "timed-stream"))
      expect({ count: timed.count, sum: timed.sum }).toEqual({ count: 1, sum: 2 })
    }))

  it.scoped("retries a stream only until its first element reached the caller", () =>
    Effect.gen(function*() {
      const policy = yield* Policy.make({ retry: fast })
      const attempts = yield* Ref.make(0)
      const flaky = (failFirst: boolean) =>
        Stream.unwrap(Effect.map(Ref.getAndUpdate(attempts, (n) => n + 1), (n) =>
          n === 0
            ? failFirst
              ? Stream.fail(new DbDown())
              : Stream.concat(Stream.make("a"), Stream.fail(new DbDown()))
            : Stream.make("b")))
      const before = yield* Effect.fork(Stream.runCollect(policy.applyStream(flaky(true))))
      yield* TestClock.adjust("1 second")
      expect(Array.from(yield* Fiber.join(before))).toEqual(["b"])
      yield* Ref.set(attempts, 0)
      const after = yield* Effect.fork(Effect.either(Stream.runCollect(policy.applyStream(flaky(false)))))
      yield* TestClock.adjust("1 second")
      expect(Either.isLeft(yield* Fiber.join(after))).toBe(true)
      expect(yield* Ref.get(attempts)).toBe(1)
    }))
  it.scoped("a stream's retry gives its budget back once it delivers, not when it opens", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make()
      const policy = yield* Policy.fromParts({ classify: classifyDb, retry: RetryPolicy.make({ ...fast, classify: classifyDb }), budget })
      const attempts = yield* Ref.make(0)
      // Every attempt opens; the first two fail at their first pull, the third ends with no element.
      const flaky = (last: Stream.Stream<string>) =>
        Stream.unwrap(Effect.map(Ref.getAndUpdate(attempts, (n) => n + 1), (n) => n < 2 ? Stream.fail(new DbDown()) : last))
      const fiber = yield* Effect.fork(Stream.runCollect(policy.applyStream(flaky(Stream.make("b")))))
      yield* TestClock.adjust("1 second")
      expect(Array.from(yield* Fiber.join(fiber))).toEqual(["b"])
      expect(yield* budget.snapshot).toMatchObject({ retries: 1, refunded: 1 })
      yield* Ref.set(attempts, 0)
      const empty = yield* Effect.fork(Stream.runCollect(policy.applyStream(flaky(Stream.empty))))
      yield* TestClock.adjust("1 second")
      expect(Array.from(yield* Fiber.join(empty))).toEqual([])
      expect(yield* budget.snapshot).toMatchObject({ retries: 2, refunded: 2 })
    }))

  it.scoped("releases a failed attempt's permit before the retry's backoff: a stream's retry waits holding nothing", () =>
    Effect.gen(function*() {
      const limiter = yield* ConcurrencyLimiter.makeFixed(1)
      const policy = yield* Policy.fromParts({ limiter, retry: RetryPolicy.make({ base: "1 second", cap: "1 second", maxRetries: 1 }) })
      const attempts = yield* Ref.make(0)
      const flaky = Stream.unwrap(Effect.map(
        Ref.getAndUpdate(attempts, (n) => n + 1),
        (n) => n === 0 ? Stream.fail(new ApiError.ServerError({ status: 503, message: "busy", retryAfter: Option.none() })) : Stream.make("b")
      ))
      const fiber = yield* Effect.fork(Stream.runCollect(policy.applyStream(flaky)))
      // The first attempt failed; the retry waits for the clock.
      yield* TestClock.adjust(0)
      expect(yield* Ref.get(attempts)).toBe(1)
      expect((yield* limiter.snapshot).inFlight).toBe(0)
      yield* TestClock.adjust("1 second")
      expect(Array.from(yield* Fiber.join(fiber))).toEqual(["b"])
      expect((yield* limiter.snapshot).inFlight).toBe(0)
    }))
})

describe("Policy around an HttpClient (loopback)", () => {
  const client = HttpClient.HttpClient
  const withPolicy = (options: Policy.Options) =>
    Effect.gen(function*() {
      const limiter = yield* ConcurrencyLimiter.makeFixed(4)
      const policy = yield* Policy.make({ ...options, concurrency: false })
      const limited = yield* Policy.fromParts({ limiter })
      return { limiter, wrap: (c: HttpClient.HttpClient) => c.pipe(policy.wrapHttpClient(), limited.wrapHttpClient()) }
    })

  it.scopedLive("retries a 429 no sooner than its Retry-After, and a 503, then reads the body", () =>
    Effect.gen(function*() {
      const server = yield* rawServer([
        reply(429, "{}", { "retry-after-ms": "120" }),
        reply(503, "{}"),
        reply(200, "{\"ok\":true}")
      ])
      const { wrap } = yield* withPolicy({ retry: fast })
      const http = wrap(yield* client)
      const started = Date.now()
      const response = yield* http.get(`${server.url}/x`)
      expect(yield* response.json).toEqual({ ok: true })
      expect(Date.now() - started).toBeGreaterThanOrEqual(120)
      expect(server.received()).toHaveLength(3)
    }).pipe(Effect.provide(Transport.nodeHttpClient())))

  it.scopedLive("reads a failed response's body before the retry, so its connection is reused (a proxy's large error page kept it checked out)", () =>
    Effect.gen(function*() {
      const page = "<html>" + "x".repeat(100_000) + "</html>"
      const server = yield* rawServer(Array.from({ length: 20 }, (_, i) => i % 4 === 3 ? reply(200, "{\"ok\":true}") : reply(503, page)))
      const { wrap } = yield* withPolicy({ retry: fast })
      const http = wrap(yield* client)
      for (let call = 0; call < 5; call++) expect(yield* Effect.flatMap(http.get(`${server.url}/x`), (r) => r.json)).toEqual({ ok: true })
      // Sequential calls, so one connection, but that a 200's socket may not be back in the pool
      // when the next call starts (16 connections for the 20 requests before).
      expect(new Set(server.received().map((request) => request.connection)).size).toBeLessThanOrEqual(2)
    }).pipe(Effect.provide(Transport.nodeHttpClient())))

  it.scopedLive("retries a dropped connection as an outage; a 400 is final and fails with its ResponseError", () =>
    Effect.gen(function*() {
      const server = yield* rawServer([destroySocket, destroySocket, reply(200, "fine"), reply(400, "{\"error\":{}}")])
      const { wrap } = yield* withPolicy({ retry: fast })
      const http = wrap(yield* client)
      expect(yield* Effect.flatMap(http.get(`${server.url}/a`), (r) => r.text)).toBe("fine")
      const error = yield* Effect.flip(http.get(`${server.url}/b`))
      expect(error).toMatchObject({ _tag: "ResponseError", reason: "StatusCode" })
      expect(server.received()).toHaveLength(4)
    }).pipe(Effect.provide(Transport.nodeHttpClient())))

  it.scopedLive("holds the permit until the response body has been read", () =>
    Effect.gen(function*() {
      const server = yield* rawServer([reply(200, "{\"n\":1}")])
      const { limiter, wrap } = yield* withPolicy({ retry: false })
      const http = wrap(yield* client)
      const response = yield* http.get(`${server.url}/x`)
      expect((yield* limiter.snapshot).inFlight).toBe(1)
      yield* response.json
      expect((yield* limiter.snapshot).inFlight).toBe(0)
    }).pipe(Effect.provide(Transport.nodeHttpClient())))

  it.scopedLive("a caller's Scope releases the permit of a response whose body is never read", () =>
    Effect.gen(function*() {
      const server = yield* rawServer([reply(200, "unread")])
      const { limiter, wrap } = yield* withPolicy({ retry: false })
      const http = wrap(yield* client)
      yield* Effect.scoped(http.get(`${server.url}/x`))
      expect((yield* limiter.snapshot).inFlight).toBe(0)
    }).pipe(Effect.provide(Transport.nodeHttpClient())))

  it.scoped("a response read in a long-lived scope leaves nothing in it (100 requests add no finalizer there); one not read is settled as it closes", () =>
    Effect.gen(function*() {
      const limiter = yield* ConcurrencyLimiter.makeFixed(4)
      const policy = yield* Policy.fromParts({ limiter })
      const http = (yield* HttpClient.HttpClient).pipe(policy.wrapHttpClient())
      const worker = yield* Scope.make()
      // Effect keeps a scope's finalizers in `state.finalizers` (a Map) while it is open.
      const finalizers = () => (worker as unknown as { state: { finalizers: Map<unknown, unknown> } }).state.finalizers.size
      const before = finalizers()
      yield* Scope.extend(Effect.repeatN(Effect.flatMap(http.get("https://upstream.test/items"), (response) => response.json), 99), worker)
      expect(finalizers()).toBe(before)
      // One whose body is not read yet is held by the worker's scope, and settled as it closes.
      yield* Scope.extend(http.get("https://upstream.test/items"), worker)
      expect((yield* limiter.snapshot).inFlight).toBe(1)
      yield* Scope.close(worker, Exit.void)
      expect((yield* limiter.snapshot).inFlight).toBe(0)
    }).pipe(Effect.provide(MockUpstream.layer(() => MockUpstream.json({ ok: true })))))

  it.scopedLive("a refusal of its gates keeps the client's error type: a transport RequestError caused by the refusal", () =>
    Effect.gen(function*() {
      const server = yield* rawServer([reply(200, "slow")])
      const limiter = yield* ConcurrencyLimiter.makeFixed(1, { maxQueued: 0 })
      const policy = yield* Policy.fromParts({ limiter })
      const http = (yield* client).pipe(policy.wrapHttpClient())
      const held = yield* http.get(`${server.url}/x`)
      const error = yield* Effect.flip(http.get(`${server.url}/y`))
      expect(HttpClientError.isHttpClientError(error)).toBe(true)
      expect(error).toMatchObject({ _tag: "RequestError", reason: "Transport" })
      expect((error as HttpClientError.RequestError).cause).toBeInstanceOf(ConcurrencyLimiter.QueueFull)
      expect(ApiError.classify(error)).toEqual(ApiError.refused(false))
      yield* held.text
    }).pipe(Effect.provide(Transport.nodeHttpClient())))
})
