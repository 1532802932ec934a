import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import {
  DeadlineExceeded,
  emptyPartial,
  InsufficientBalance,
  InsufficientResource,
  InvalidRequest,
  KeyRejected,
  MalformedResponse,
  NoUsableKey,
  RateLimited,
  ServerError,
  StreamTruncated,
  TransportError,
  UnexpectedStatus,
  UpstreamError
} from "../src/ApiError.js"
import * as ApiError from "../src/ApiError.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as ConcurrencyLimiter from "../src/ConcurrencyLimiter.js"
import { processClock } from "./support/processClock.js"

const serverError = (message = "overloaded") => new ServerError({ status: 503, message, retryAfter: Option.none() })
const badRequest = (status = 400) => new InvalidRequest({ status, message: "bad request" })

const fail = (breaker: CircuitBreaker.Service, n: number, error: unknown = serverError()) =>
  Effect.replicateEffect(Effect.exit(breaker.protect(Effect.fail(error))), n, { discard: true })

const succeed = (breaker: CircuitBreaker.Service, n: number) =>
  Effect.replicateEffect(breaker.protect(Effect.void), n, { discard: true })

/** Trips a breaker with default thresholds at the current instant. */
const trip = (breaker: CircuitBreaker.Service) => fail(breaker, 20)

/** Fails with the `CircuitOpen` that `protect` returned, or dies if the call was admitted. */
const rejection = <A, E>(breaker: CircuitBreaker.Service, effect: Effect.Effect<A, E> = Effect.never) =>
  Effect.flatMap(Effect.exit(breaker.protect(effect)), (exit) => {
    const failure = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()
    return Option.isSome(failure) && failure.value instanceof CircuitBreaker.CircuitOpen
      ? Effect.succeed(failure.value)
      : Effect.dieMessage(`expected CircuitOpen, got ${String(exit)}`)
  })

/** A call that signals when it starts, then runs `rest`. */
const started = <A, E>(rest: Effect.Effect<A, E>) =>
  Effect.map(Deferred.make<void>(), (latch) => ({
    latch,
    call: Effect.zipRight(Deferred.succeed(latch, undefined), rest)
  }))

/** Forks a protected call of `rest` and waits until it runs (so it has been admitted). */
const forkStarted = <A, E>(breaker: CircuitBreaker.Service, release: Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const { call, latch } = yield* started(release)
    const fiber = yield* Effect.fork(breaker.protect(call))
    yield* Deferred.await(latch)
    return fiber
  })

const gaugeOf = (name: string) =>
  Effect.map(Metric.value(Metric.tagged(CircuitBreaker.stateGauge, "circuit_breaker", name)), (s) => s.value)
const tripsOf = (name: string) =>
  Effect.map(Metric.value(Metric.tagged(CircuitBreaker.tripsCounter, "circuit_breaker", name)), (s) => s.count)

describe("CircuitBreaker", () => {
  describe("closed", () => {
    it.scoped("stays closed below the minimum throughput, even at 100% failures", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* fail(breaker, 19)
        expect(yield* breaker.state).toEqual({ _tag: "Closed" })
        expect(yield* breaker.snapshot).toMatchObject({ calls: 19, failures: 19, trips: 0 })
        yield* fail(breaker, 1)
        expect(yield* breaker.state).toEqual({ _tag: "Open", since: 0, until: 30_000, trips: 1 })
      }))

    it.scoped("opens exactly when the failure ratio reaches 25%", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* succeed(breaker, 16)
        yield* fail(breaker, 5)
        expect((yield* breaker.state)._tag).toBe("Closed") // 5/21
        yield* fail(breaker, 1)
        expect((yield* breaker.state)._tag).toBe("Open") // 6/22
      }))

    it.scoped("opens at a ratio of exactly 25% once the minimum throughput is met", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* succeed(breaker, 15)
        yield* fail(breaker, 4)
        expect((yield* breaker.state)._tag).toBe("Closed")
        yield* fail(breaker, 1) // 5/20
        expect((yield* breaker.state)._tag).toBe("Open")
      }))

    /** `fast` calls that fail at once and `slow` that succeed after a second, all admitted together. */
    const mixed = (breaker: CircuitBreaker.Service, fast: number, slow: number, slowError?: unknown) =>
      Effect.forEach(
        [
          ...Array.from({ length: slow }, () => Effect.delay(slowError === undefined ? Effect.void : Effect.fail(slowError), "1 second")),
          ...Array.from({ length: fast }, () => Effect.fail(serverError()))
        ],
        (call) => Effect.either(breaker.protect(call)),
        { concurrency: "unbounded" }
      ).pipe(Effect.fork)

    it.scoped("counts the calls in flight as not failed: fast failures that settle first do not trip it", () =>
      Effect.gen(function*() {
        // 30 of 200 calls (15%) fail at once; the others answer a second later.
        const breaker = yield* CircuitBreaker.make()
        const fiber = yield* mixed(breaker, 30, 170)
        yield* TestClock.adjust(0)
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "Closed" }, calls: 30, failures: 30, inFlight: 170 })
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(fiber)
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "Closed" }, calls: 200, failures: 30, inFlight: 0 })
      }))

    it.scoped("an outage trips it with calls in flight: fast, once failures reach the ratio of the calls settled and in flight", () =>
      Effect.gen(function*() {
        // 50 fast failures and 150 calls in flight: 25%.
        const fast = yield* CircuitBreaker.make()
        yield* mixed(fast, 50, 150)
        yield* TestClock.adjust(0)
        expect(yield* fast.snapshot).toMatchObject({ state: { _tag: "Open" }, calls: 50, failures: 50 })
        // Every call failing after a second: judged as they settle.
        const slow = yield* CircuitBreaker.make()
        yield* mixed(slow, 0, 200, serverError())
        yield* TestClock.adjust("1 second")
        expect(yield* slow.snapshot).toMatchObject({ state: { _tag: "Open" }, calls: 50, failures: 50 })
      }))

    it.scoped("counts 400, 401, 402 and 422 as successes and passes them through", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        const callerErrors = [
          badRequest(400),
          new KeyRejected({ message: "no", keyId: "key#1" }),
          new InsufficientBalance({ message: "pay" }),
          badRequest(422)
        ]
        for (const error of callerErrors) {
          const exit = yield* Effect.exit(breaker.protect(Effect.fail(error)))
          expect(exit).toEqual(Exit.fail(error))
          yield* fail(breaker, 4, error)
        }
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "Closed" }, calls: 20, failures: 0 })
        yield* fail(breaker, 6)
        expect((yield* breaker.state)._tag).toBe("Closed") // 6/26
        yield* fail(breaker, 1)
        expect((yield* breaker.state)._tag).toBe("Open") // 7/27
      }))

    it.scoped("ignores interruptions and defects", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        const fibers = yield* Effect.forEach(Array.from({ length: 20 }), () => forkStarted(breaker, Effect.never))
        expect((yield* breaker.snapshot).inFlight).toBe(20)
        yield* Fiber.interruptAll(fibers)
        expect((yield* breaker.snapshot).inFlight).toBe(0)
        yield* Effect.replicateEffect(Effect.exit(breaker.protect(Effect.dieMessage("bug"))), 20)
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "Closed" }, calls: 0, failures: 0 })
        yield* trip(breaker)
        expect((yield* breaker.state)._tag).toBe("Open")
      }))

    it.scoped("uses a custom classifier", () =>
      Effect.gen(function*() {
        const classify = (error: unknown) => error === "boom" ? ApiError.outage() : ApiError.caller
        const breaker = yield* CircuitBreaker.make({ minimumThroughput: 2, classify })
        yield* fail(breaker, 10, serverError())
        expect((yield* breaker.state)._tag).toBe("Closed")
        yield* fail(breaker, 10, "boom")
        expect((yield* breaker.state)._tag).toBe("Open")
      }))

    it.scoped("forgets failures once they roll out of the window", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* fail(breaker, 10)
        yield* TestClock.adjust("60 seconds") // the bucket of t=0 has expired
        yield* fail(breaker, 10)
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "Closed" }, calls: 10, failures: 10 })
      }))

    it.scoped("keeps failures until their bucket leaves the window", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* fail(breaker, 10)
        yield* TestClock.adjust(59_999)
        yield* fail(breaker, 10)
        expect(yield* breaker.state).toEqual({ _tag: "Open", since: 59_999, until: 89_999, trips: 1 })
      }))

    it.scoped("rolls the window one bucket at a time", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make({ window: "10 seconds", buckets: 5 })
        yield* fail(breaker, 3) // bucket [0, 2 s)
        yield* TestClock.adjust("3 seconds")
        yield* fail(breaker, 4) // bucket [2 s, 4 s)
        yield* TestClock.adjust("7 seconds") // t = 10 s: the first bucket expired
        expect(yield* breaker.snapshot).toMatchObject({ calls: 4, failures: 4 })
        yield* TestClock.adjust("2 seconds") // t = 12 s: so did the second
        expect(yield* breaker.snapshot).toMatchObject({ calls: 0, failures: 0 })
      }))
  })

  describe("what counts as a failure", () => {
    type Counted = "failure" | "success" | "ignored"
    const cases: ReadonlyArray<readonly [error: unknown, counted: Counted, loadShed: boolean]> = [
      [new RateLimited({ message: "busy", retryAfter: Option.none() }), "failure", true],
      [serverError(), "failure", true],
      [new InsufficientResource({ partial: emptyPartial }), "failure", true],
      [new ServerError({ status: 500, message: "boom", retryAfter: Option.none() }), "failure", false],
      [new TransportError({ reason: "connect", message: "refused", partial: emptyPartial }), "failure", false],
      [new DeadlineExceeded({ reason: "idle", after: Duration.seconds(120), partial: emptyPartial }), "failure", false],
      [new StreamTruncated({ partial: emptyPartial }), "failure", true],
      [new StreamTruncated({ partial: { ...emptyPartial, events: 1 } }), "failure", false],
      [new UpstreamError({ message: "oops", partial: emptyPartial }), "failure", false],
      [new MalformedResponse({ reason: "cut", message: "cut" }), "failure", false],
      [new MalformedResponse({ reason: "blank", message: "blank" }), "failure", true],
      [new UnexpectedStatus({ status: 409, message: "conflict" }), "failure", false],
      // Errors it does not know are outages: never silently a success.
      [new Error("plain"), "failure", false],
      ["RateLimited", "failure", false],
      [null, "failure", false],
      [new MalformedResponse({ reason: "schema", message: "shape" }), "success", false],
      [badRequest(400), "success", false],
      [badRequest(422), "success", false],
      [new KeyRejected({ message: "no", keyId: "key#1" }), "success", false],
      [new InsufficientBalance({ message: "pay" }), "success", false],
      [new UnexpectedStatus({ status: 404, message: "missing" }), "success", false],
      [new NoUsableKey({ rejected: 2, retryAfter: Option.none() }), "success", false],
      [new ConcurrencyLimiter.QueueFull({ queued: 3 }), "ignored", false]
    ]
    const countedBy = (options: CircuitBreaker.Options, error: unknown) =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make(options)
        yield* fail(breaker, 1, error)
        const { calls, failures } = yield* breaker.snapshot
        return calls === 0 ? "ignored" : failures === 1 ? "failure" : "success"
      })
    it.scoped("reads each error through ApiError.classify: outages and load shed fail, account and caller errors succeed", () =>
      Effect.forEach(cases, ([error, counted]) =>
        Effect.map(countedBy({}, error), (actual) => expect(actual, String(error)).toBe(counted))))
    it.scoped("with countLoadShed false (behind an adaptive limiter) load shed is ignored, outages still fail", () =>
      Effect.forEach(cases, ([error, counted, loadShed]) =>
        Effect.map(countedBy({ countLoadShed: false }, error), (actual) =>
          expect(actual, String(error)).toBe(loadShed ? "ignored" : counted))))
  })

  describe("open", () => {
    it.scoped("rejects without running the call, saying when calls resume", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make({ name: "deepseek" })
        yield* trip(breaker)
        yield* TestClock.adjust("10 seconds")
        let ran = false
        const error = yield* rejection(breaker, Effect.sync(() => (ran = true)))
        expect(ran).toBe(false)
        expect(error).toMatchObject({ reason: "open", until: 30_000, trips: 1, name: "deepseek" })
        expect(error.retryAfter).toEqual(Option.some(Duration.seconds(20)))
        // A retry waits for it.
        expect(ApiError.classify(error)).toEqual(ApiError.refused(true, Option.some(Duration.seconds(20))))
        expect(error.message).toBe("circuit breaker deepseek is open (trip 1): calls resume in 20s")
      }))

    it.scoped("turns half-open when the open period ends", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* trip(breaker)
        yield* TestClock.adjust(29_999)
        expect((yield* breaker.state)._tag).toBe("Open")
        yield* TestClock.adjust(1)
        expect(yield* breaker.state).toEqual({ _tag: "HalfOpen", since: 30_000, trips: 1 })
      }))

    it.scoped("a step of the system clock back does not lengthen the open period", () =>
      Effect.gen(function*() {
        const { clock, stepWall } = yield* processClock
        const breaker = yield* Effect.withClock(CircuitBreaker.make(), clock)
        yield* trip(breaker)
        yield* TestClock.adjust("10 seconds")
        stepWall(-3_600_000)
        yield* TestClock.adjust("20 seconds")
        expect(yield* breaker.state).toEqual({ _tag: "HalfOpen", since: 30_000, trips: 1 })
      }))

    it.scoped("halfOpen ends the open period now, keeping its trips: a failed canary opens it for the next, longer period", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make({ name: "early" })
        yield* trip(breaker)
        yield* TestClock.adjust("5 seconds")
        yield* breaker.halfOpen
        expect(yield* breaker.state).toEqual({ _tag: "HalfOpen", since: 5_000, trips: 1 })
        expect(yield* gaugeOf("early")).toBe(1)
        yield* fail(breaker, 1)
        expect(yield* breaker.state).toEqual({ _tag: "Open", since: 5_000, until: 65_000, trips: 2 })
        yield* breaker.halfOpen
        expect(yield* breaker.protect(Effect.succeed("canary"))).toBe("canary")
        expect((yield* breaker.state)._tag).toBe("Closed")
        // The timer of the period that was cut short changes nothing when it ends.
        yield* TestClock.adjust("2 minutes")
        expect((yield* breaker.state)._tag).toBe("Closed")
      }))

    it.scoped("halfOpen moves only an open circuit: closed, half-open and isolated stay", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* breaker.halfOpen
        expect(yield* breaker.state).toEqual({ _tag: "Closed" })
        yield* trip(breaker)
        yield* TestClock.adjust("30 seconds")
        yield* TestClock.adjust("1 second")
        yield* breaker.halfOpen
        expect(yield* breaker.state).toEqual({ _tag: "HalfOpen", since: 30_000, trips: 1 })
        yield* breaker.isolate
        yield* breaker.halfOpen
        expect((yield* breaker.state)._tag).toBe("Isolated")
      }))

    it.scoped("moves to half-open on its own when no call arrives", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make({ name: "timer" })
        yield* trip(breaker)
        expect(yield* gaugeOf("timer")).toBe(2)
        yield* TestClock.adjust("30 seconds")
        expect(yield* gaugeOf("timer")).toBe(1) // set by the timer: nothing polled the state
      }))
  })

  describe("half-open", () => {
    it.scoped("closes when the canary succeeds, and the next trip opens for the base period", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* trip(breaker)
        yield* TestClock.adjust("30 seconds")
        expect(yield* breaker.protect(Effect.succeed("canary"))).toBe("canary")
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "Closed" }, calls: 0, failures: 0, trips: 1 })
        yield* trip(breaker)
        expect(yield* breaker.state).toEqual({ _tag: "Open", since: 30_000, until: 60_000, trips: 1 })
      }))

    it.scoped("re-opens for twice as long when the canary fails, up to maxOpenFor", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* trip(breaker)
        const expected = [
          { since: 30_000, until: 90_000, trips: 2 },
          { since: 90_000, until: 210_000, trips: 3 },
          { since: 210_000, until: 330_000, trips: 4 }
        ]
        for (const open of expected) {
          const state = yield* breaker.state
          if (state._tag !== "Open") return expect.fail(`expected Open, got ${state._tag}`)
          yield* TestClock.adjust(state.until - state.since)
          const canary = serverError("still down")
          expect(yield* Effect.exit(breaker.protect(Effect.fail(canary)))).toEqual(Exit.fail(canary))
          expect(yield* breaker.state).toEqual({ _tag: "Open", ...open })
        }
      }))

    it.scoped("makes other callers wait for the canary, then lets them through", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* trip(breaker)
        yield* TestClock.adjust("30 seconds")
        const canary = yield* forkStarted(breaker, Effect.as(Effect.sleep("5 seconds"), "canary"))
        let ran = 0
        const waiters = yield* Effect.forEach(
          [1, 2, 3],
          (n) => Effect.fork(breaker.protect(Effect.sync(() => (ran++, n))))
        )
        yield* TestClock.adjust("4 seconds")
        expect(ran).toBe(0)
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "HalfOpen" }, canariesInFlight: 1 })
        yield* TestClock.adjust("1 second")
        expect(yield* Fiber.join(canary)).toBe("canary")
        expect(yield* Fiber.joinAll(waiters)).toEqual([1, 2, 3])
        expect((yield* breaker.state)._tag).toBe("Closed")
      }))

    it.scoped("rejects waiting callers with the new open period when the canary fails", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* trip(breaker)
        yield* TestClock.adjust("30 seconds")
        yield* forkStarted(breaker, Effect.zipRight(Effect.sleep("5 seconds"), Effect.fail(serverError())))
        const waiter = yield* Effect.fork(rejection(breaker, Effect.succeed("never runs")))
        yield* TestClock.adjust("5 seconds")
        const error = yield* Fiber.join(waiter)
        expect(error).toMatchObject({ reason: "open", until: 95_000, trips: 2 })
        expect(error.retryAfter).toEqual(Option.some(Duration.seconds(60)))
      }))

    it.scoped("rejects other callers at once under the reject policy", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make({ halfOpenPolicy: "reject" })
        yield* trip(breaker)
        yield* TestClock.adjust("30 seconds")
        const canary = yield* forkStarted(breaker, Effect.as(Effect.sleep("5 seconds"), "canary"))
        const error = yield* rejection(breaker, Effect.succeed("never runs"))
        expect(error).toMatchObject({ reason: "half_open", until: 30_000, trips: 1 })
        expect(ApiError.isRetryable(ApiError.classify(error))).toBe(true)
        expect(error.retryAfter).toEqual(Option.none())
        yield* TestClock.adjust("5 seconds")
        expect(yield* Fiber.join(canary)).toBe("canary")
        expect(yield* breaker.protect(Effect.succeed("after"))).toBe("after")
      }))

    it.scoped("a classifier that throws: the call dies with its throw, and its slot is freed (a canary's, a closed call's)", () =>
      Effect.gen(function*() {
        const classify = (error: unknown) => {
          if (error === "unreadable") throw new Error("the classifier's bug")
          return ApiError.classify(error)
        }
        const breaker = yield* CircuitBreaker.make({ classify, halfOpenPolicy: "reject" })
        const dies = (call: Effect.Effect<unknown, unknown>) =>
          Effect.map(Effect.exit(call), (exit) => Exit.isFailure(exit) && Cause.isDie(exit.cause) && String(Cause.squash(exit.cause)))
        expect(yield* dies(breaker.protect(Effect.fail("unreadable")))).toBe("Error: the classifier's bug")
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "Closed" }, inFlight: 0 })
        const settle = yield* breaker.admit
        expect(yield* dies(settle(Exit.fail("unreadable")))).toBe("Error: the classifier's bug")
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "Closed" }, inFlight: 0 })
        yield* trip(breaker)
        yield* TestClock.adjust("30 seconds")
        expect(yield* dies(breaker.protect(Effect.fail("unreadable")))).toBe("Error: the classifier's bug")
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "HalfOpen" }, canariesInFlight: 0 })
        expect(yield* breaker.protect(Effect.succeed("after"))).toBe("after")
        expect(yield* breaker.state).toMatchObject({ _tag: "Closed" })
      }))

    it.scoped("admits `canaries` calls and closes only when all of them succeed", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make({ canaries: 2, halfOpenPolicy: "reject" })
        yield* trip(breaker)
        yield* TestClock.adjust("30 seconds")
        const first = yield* Deferred.make<string>()
        const second = yield* Deferred.make<string>()
        const canaries = [yield* forkStarted(breaker, Deferred.await(first)), yield* forkStarted(breaker, Deferred.await(second))]
        expect((yield* rejection(breaker)).reason).toBe("half_open")
        yield* Deferred.succeed(first, "one")
        expect(yield* Fiber.join(canaries[0]!)).toBe("one")
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "HalfOpen" }, canariesInFlight: 1 })
        expect((yield* rejection(breaker)).reason).toBe("half_open") // the succeeded canary's slot stays used
        yield* Deferred.succeed(second, "two")
        expect(yield* Fiber.join(canaries[1]!)).toBe("two")
        expect((yield* breaker.state)._tag).toBe("Closed")
      }))

    it.scoped("hands an interrupted canary's slot to a waiting caller", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* trip(breaker)
        yield* TestClock.adjust("30 seconds")
        const canary = yield* forkStarted(breaker, Effect.never)
        const waiter = yield* Effect.fork(breaker.protect(Effect.as(Effect.sleep("1 second"), "waiter")))
        yield* TestClock.adjust("1 second")
        expect(yield* Fiber.poll(waiter)).toEqual(Option.none())
        yield* Fiber.interrupt(canary)
        yield* TestClock.adjust(0) // let the waiter take the slot
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "HalfOpen" }, canariesInFlight: 1 })
        yield* TestClock.adjust("1 second")
        expect(yield* Fiber.join(waiter)).toBe("waiter")
        expect((yield* breaker.state)._tag).toBe("Closed")
      }))
  })

  describe("isolate and reset", () => {
    it.scoped("isolate holds the circuit open until reset", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* trip(breaker)
        yield* breaker.isolate
        yield* TestClock.adjust("10 minutes")
        expect(yield* breaker.state).toEqual({ _tag: "Isolated", since: 0 })
        const error = yield* rejection(breaker)
        expect(error).toMatchObject({ reason: "isolated", until: Infinity })
        expect(ApiError.isRetryable(ApiError.classify(error))).toBe(false)
        expect(error.retryAfter).toEqual(Option.none())
        yield* breaker.reset
        expect(yield* breaker.protect(Effect.succeed("ok"))).toBe("ok")
        yield* trip(breaker)
        expect(yield* breaker.state).toEqual({ _tag: "Open", since: 600_000, until: 630_000, trips: 1 })
      }))

    it.scoped("isolate turns away callers waiting in half-open", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* trip(breaker)
        yield* TestClock.adjust("30 seconds")
        const canary = yield* forkStarted(breaker, Effect.as(Effect.sleep("5 seconds"), "canary"))
        const waiter = yield* Effect.fork(rejection(breaker, Effect.succeed("never runs")))
        yield* TestClock.adjust("1 second")
        yield* breaker.isolate
        expect((yield* Fiber.join(waiter)).reason).toBe("isolated")
        yield* TestClock.adjust("4 seconds")
        expect(yield* Fiber.join(canary)).toBe("canary") // finishes, but proves nothing
        expect((yield* breaker.state)._tag).toBe("Isolated")
      }))

    it.scoped("reset closes an open circuit with a clean window", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* trip(breaker)
        yield* breaker.reset
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "Closed" }, calls: 0, failures: 0 })
        yield* fail(breaker, 19)
        expect((yield* breaker.state)._tag).toBe("Closed")
      }))

    it.scoped("ignores the outcomes of calls admitted before a reset", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make({ minimumThroughput: 2 })
        const inFlight = yield* forkStarted(breaker, Effect.delay(Effect.fail(serverError()), "1 second"))
        yield* breaker.reset
        yield* TestClock.adjust("1 second")
        yield* Fiber.await(inFlight)
        yield* fail(breaker, 1)
        // Had the in-flight failure counted, two failures out of two would have tripped.
        expect(yield* breaker.snapshot).toMatchObject({ state: { _tag: "Closed" }, calls: 1, failures: 1 })
      }))
  })

  describe("observability", () => {
    it.scoped("changes starts with the current state and emits every transition in order", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        const subscribed = yield* Deferred.make<void>()
        const collected = yield* Effect.fork(
          breaker.changes.pipe(
            Stream.tap(() => Deferred.succeed(subscribed, undefined)),
            Stream.take(8),
            Stream.runCollect
          )
        )
        yield* Deferred.await(subscribed)
        yield* trip(breaker)
        yield* TestClock.adjust("30 seconds")
        yield* fail(breaker, 1)
        yield* TestClock.adjust("60 seconds")
        yield* succeed(breaker, 1)
        yield* breaker.isolate
        yield* breaker.reset
        expect(Chunk.toReadonlyArray(yield* Fiber.join(collected))).toEqual([
          { _tag: "Closed" },
          { _tag: "Open", since: 0, until: 30_000, trips: 1 },
          { _tag: "HalfOpen", since: 30_000, trips: 1 },
          { _tag: "Open", since: 30_000, until: 90_000, trips: 2 },
          { _tag: "HalfOpen", since: 90_000, trips: 2 },
          { _tag: "Closed" },
          { _tag: "Isolated", since: 90_000 },
          { _tag: "Closed" }
        ])
      }))

    it.scoped("a late subscriber starts from the current state", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make()
        yield* trip(breaker)
        const first = yield* Stream.runHead(breaker.changes)
        expect(first).toEqual(Option.some({ _tag: "Open", since: 0, until: 30_000, trips: 1 }))
      }))

    it.scoped("reports the state gauge and trips counter under its name", () =>
      Effect.gen(function*() {
        const breaker = yield* CircuitBreaker.make({ name: "metrics" })
        const observe = Effect.all([gaugeOf("metrics"), tripsOf("metrics")])
        expect(yield* observe).toEqual([0, 0])
        yield* trip(breaker)
        expect(yield* observe).toEqual([2, 1])
        yield* TestClock.adjust("30 seconds")
        expect(yield* observe).toEqual([1, 1])
        yield* fail(breaker, 1)
        expect(yield* observe).toEqual([2, 2])
        yield* TestClock.adjust("60 seconds")
        yield* succeed(breaker, 1)
        expect(yield* observe).toEqual([0, 2])
        yield* breaker.isolate
        expect(yield* observe).toEqual([2, 2])
      }))
  })

  describe("construction", () => {
    it.effect("layer provides the service and layerNoop passes every call through", () =>
      Effect.gen(function*() {
        const viaLayer = CircuitBreaker.CircuitBreaker.pipe(
          Effect.flatMap((breaker) => Effect.zipRight(fail(breaker, 2), breaker.state)),
          Effect.provide(CircuitBreaker.layer({ minimumThroughput: 2 }))
        )
        expect((yield* viaLayer)._tag).toBe("Open")
        const viaNoop = CircuitBreaker.CircuitBreaker.pipe(
          Effect.flatMap((breaker) => Effect.zipRight(trip(breaker), breaker.snapshot)),
          Effect.provide(CircuitBreaker.layerNoop)
        )
        expect(yield* viaNoop).toMatchObject({ state: { _tag: "Closed" }, trips: 0 })
      }))

    it.scoped("dies on invalid options", () =>
      Effect.gen(function*() {
        const invalid: ReadonlyArray<CircuitBreaker.Options> = [
          { canaries: 0 },
          { canaries: 1.5 },
          { failureRatio: 0 },
          { failureRatio: 1.5 },
          { buckets: 0 },
          { window: 0 },
          { openFor: 0 },
          { openFor: "-30 seconds" },
          { minimumThroughput: 0 },
          // What TypeScript refuses, from JavaScript or JSON: a typo must not change what trips it.
          { halfOpenPolicy: "nope" as never },
          { countLoadShed: "x" as never }
        ]
        for (const options of invalid) {
          const exit = yield* Effect.exit(CircuitBreaker.make(options))
          expect(Exit.isFailure(exit) && Cause.isDie(exit.cause), JSON.stringify(options)).toBe(true)
        }
        const negative = yield* Effect.exit(CircuitBreaker.make({ window: "-1 minutes", openFor: "5 sec" as never }))
        expect(Exit.isFailure(negative) && Cause.squash(negative.cause)).toMatchObject({
          message: 'CircuitBreaker: window must be a positive duration, got "-1 minutes"; openFor must be a positive duration, got "5 sec"'
        })
      }))
  })

  describe("properties", () => {
    type Outcome = "success" | "failure" | "invalid"
    interface Call {
      readonly arriveAt: number
      readonly duration: number
      readonly outcome: Outcome
      readonly interruptAfter: number | undefined
    }
    const call: FastCheck.Arbitrary<Call> = FastCheck.record({
      // Coarse times so that many calls arrive and finish at the same instant.
      arriveAt: FastCheck.integer({ min: 0, max: 40 }).map((n) => n * 500),
      duration: FastCheck.integer({ min: 0, max: 20 }).map((n) => n * 250),
      outcome: FastCheck.constantFrom<Outcome>("success", "failure", "failure", "invalid"),
      interruptAfter: FastCheck.option(FastCheck.integer({ min: 0, max: 24 }).map((n) => n * 250), { nil: undefined })
    })

    it.scoped.prop(
      "half-open never runs more than `canaries` calls at once, and every call ends",
      {
        canaries: FastCheck.integer({ min: 1, max: 3 }),
        policy: FastCheck.constantFrom<CircuitBreaker.HalfOpenPolicy>("wait", "reject"),
        calls: FastCheck.array(call, { minLength: 1, maxLength: 20 })
      },
      ({ calls, canaries, policy }) =>
        Effect.gen(function*() {
          const breaker = yield* CircuitBreaker.make({
            window: "10 seconds",
            buckets: 5,
            failureRatio: 0.5,
            minimumThroughput: 2,
            openFor: "1 second",
            maxOpenFor: "4 seconds",
            canaries,
            halfOpenPolicy: policy
          })
          yield* fail(breaker, 2) // start open
          // Per half-open episode (keyed by its `since`): canaries running now, and verdicts given.
          const running = new Map<number, number>()
          const verdicts = new Map<number, number>()
          const violations: Array<string> = []
          const bump = (counts: Map<number, number>, key: number, by: number) => {
            const count = (counts.get(key) ?? 0) + by
            counts.set(key, count)
            return count
          }
          const errors = calls.map((c, i) => (c.outcome === "failure" ? serverError(`call ${i}`) : badRequest()))
          const work = (c: Call, i: number) =>
            Effect.zipRight(
              Effect.sleep(c.duration),
              c.outcome === "success" ? Effect.succeed(i) : Effect.fail(errors[i]!)
            )
          const body = (c: Call, i: number) =>
            Effect.flatMap(breaker.state, (state) => {
              if (state._tag !== "HalfOpen") return work(c, i)
              if (bump(running, state.since, 1) > canaries) violations.push(`episode ${state.since} over ${canaries}`)
              return work(c, i).pipe(
                Effect.onExit((exit) =>
                  Effect.sync(() => {
                    bump(running, state.since, -1)
                    const interrupted = Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause)
                    if (!interrupted && bump(verdicts, state.since, 1) > canaries) {
                      violations.push(`episode ${state.since} gave more than ${canaries} verdicts`)
                    }
                  })
                )
              )
            })
          const fibers = yield* Effect.forEach(calls, (c, i) =>
            Effect.fork(Effect.zipRight(Effect.sleep(c.arriveAt), breaker.protect(body(c, i)))))
          yield* Effect.forEach(calls, (c, i) =>
            c.interruptAfter === undefined
              ? Effect.void
              : Effect.fork(Effect.zipRight(Effect.sleep(c.arriveAt + c.interruptAfter), Fiber.interrupt(fibers[i]!))))
          // Long enough for every call to end, however many waiters become canaries in turn.
          yield* TestClock.adjust("10 minutes")

          expect(violations).toEqual([])
          for (const [i, fiber] of fibers.entries()) {
            const c = calls[i]!
            const exit = yield* Fiber.poll(fiber)
            if (Option.isNone(exit)) return expect.fail(`call ${i} never ended`)
            if (Exit.isSuccess(exit.value)) {
              expect(exit.value.value).toBe(i)
              expect(c.outcome).toBe("success")
            } else if (Cause.isInterruptedOnly(exit.value.cause)) {
              expect(c.interruptAfter).toBeDefined()
            } else {
              const error = Cause.failureOption(exit.value.cause).pipe(Option.getOrThrow)
              if (error instanceof CircuitBreaker.CircuitOpen) {
                expect(error.reason === "open" || (error.reason === "half_open" && policy === "reject")).toBe(true)
              } else {
                expect(error).toBe(errors[i])
              }
            }
          }
          // Every call settled, interrupted ones included: none is left in flight.
          expect((yield* breaker.snapshot).inFlight).toBe(0)
        }).pipe(
          // No cooperative yields: a call reads the state in the same step it was admitted in,
          // so a canary knows its episode for sure.
          Effect.withMaxOpsBeforeYield(Number.MAX_SAFE_INTEGER)
        ),
      { fastCheck: { numRuns: 50 } }
    )
  })
})
