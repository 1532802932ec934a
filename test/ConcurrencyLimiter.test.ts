import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as ApiError from "../src/ApiError.js"
import { RateLimited, ServerError } from "../src/ApiError.js"
import * as ConcurrencyLimiter from "../src/ConcurrencyLimiter.js"
import { adaptiveConfig, Aimd, type AimdState, Gate, type Waiter } from "../src/internal/concurrencyLimiter.js"

type Service = ConcurrencyLimiter.Service
type Outcome = ConcurrencyLimiter.Outcome

const success: Outcome = { _tag: "Success" }
const dropped: Outcome = { _tag: "Dropped" }
const withQueueDelay = (millis: number): Outcome => ({ _tag: "Success", queueDelay: Duration.millis(millis) })

/** Lets forked fibers run until each is done or waiting, without moving the clock. */
const settle = TestClock.adjust(0)

const limitOf = (limiter: Service) => Effect.map(limiter.snapshot, (s) => s.limit)

/** A controller of the adaptive limiter of `options`, in its first state but for `state`. */
const aimdIn = (options: ConcurrencyLimiter.AdaptiveOptions, state: Partial<AimdState>): Aimd => {
  const config = adaptiveConfig(options)
  return Aimd.fromState(config, { ...new Aimd(config).toState(), ...state })
}

interface Held {
  readonly permit: ConcurrencyLimiter.Permit
  readonly scope: Scope.CloseableScope
}

/** Takes `n` permits, each in its own scope so the test decides when each comes back. */
const hold = (limiter: Service, n: number, options?: ConcurrencyLimiter.AcquireOptions) =>
  Effect.replicateEffect(
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const permit = yield* Scope.extend(limiter.acquire(options), scope)
      return { permit, scope } satisfies Held
    }),
    n
  )

const release = (held: ReadonlyArray<Held>) => Effect.forEach(held, (h) => Scope.close(h.scope, Exit.void))

/** One full round: `limit` permits, all completed with `outcome` while held, then released. */
const round = (limiter: Service, outcome: Outcome = success) =>
  Effect.gen(function*() {
    const held = yield* hold(limiter, yield* limitOf(limiter))
    yield* Effect.forEach(held, (h) => h.permit.complete(outcome))
    yield* release(held)
    return yield* limitOf(limiter)
  })

const rounds = (limiter: Service, n: number, outcome: Outcome = success) =>
  Effect.replicateEffect(round(limiter, outcome), n)

describe("ConcurrencyLimiter", () => {
  describe("makeFixed", () => {
    it.effect("never has more than `permits` in flight, and waiters run as permits come back", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeFixed(3)
        let peak = 0
        const call = ConcurrencyLimiter.withPermit(limiter)(
          Effect.flatMap(limiter.snapshot, (s) => {
            peak = Math.max(peak, s.inFlight)
            return Effect.sleep("1 second")
          })
        )
        const fiber = yield* Effect.fork(Effect.all(Array.from({ length: 10 }, () => call), { concurrency: "unbounded" }))
        yield* settle
        expect(yield* limiter.snapshot).toEqual({ limit: 3, inFlight: 3, queued: 7 })
        yield* TestClock.adjust("1 second")
        expect(yield* limiter.snapshot).toEqual({ limit: 3, inFlight: 3, queued: 4 })
        yield* TestClock.adjust("3 seconds")
        expect(Exit.isSuccess(yield* Fiber.await(fiber))).toBe(true)
        expect(peak).toBe(3)
        expect(yield* limiter.snapshot).toEqual({ limit: 3, inFlight: 0, queued: 0 })
      }))

    it.effect("fails with QueueFull when `maxQueued` callers already wait", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeFixed(1, { maxQueued: 2 })
        const held = yield* hold(limiter, 1)
        const waiters = yield* Effect.fork(
          Effect.all([Effect.scoped(limiter.acquire()), Effect.scoped(limiter.acquire())], { concurrency: "unbounded" })
        )
        yield* settle
        const rejected = yield* Effect.flip(Effect.scoped(limiter.acquire({ priority: "batch" })))
        expect(rejected).toBeInstanceOf(ConcurrencyLimiter.QueueFull)
        expect(rejected.queued).toBe(2)
        yield* release(held)
        expect(Exit.isSuccess(yield* Fiber.await(waiters))).toBe(true)
        expect(yield* limiter.snapshot).toEqual({ limit: 1, inFlight: 0, queued: 0 })
      }))

    it.effect("serves interactive waiters before batch ones, FIFO within a lane", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeFixed(1)
        const held = yield* hold(limiter, 1)
        const order: Array<string> = []
        const arrivals: Array<[string, ConcurrencyLimiter.Priority | undefined]> = [
          ["b1", "batch"],
          ["i1", "interactive"],
          ["b2", "batch"],
          ["default", undefined],
          ["i2", "interactive"]
        ]
        const fibers = yield* Effect.forEach(arrivals, ([name, priority]) =>
          Effect.zipLeft(
            Effect.fork(ConcurrencyLimiter.withPermit(limiter, { priority })(Effect.sync(() => order.push(name)))),
            settle
          ))
        expect((yield* limiter.snapshot).queued).toBe(5)
        yield* release(held)
        yield* Fiber.joinAll(fibers)
        expect(order).toEqual(["i1", "default", "i2", "b1", "b2"])
      }))

    it.effect("serves a caller back for another attempt ahead of those of its priority not yet sent, not ahead of a higher priority", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeFixed(1)
        const held = yield* hold(limiter, 1)
        const order: Array<string> = []
        const arrivals: Array<[string, ConcurrencyLimiter.AcquireOptions]> = [
          ["b1", { priority: "batch" }],
          ["i1", {}],
          ["b-retry", { priority: "batch", returning: true }],
          ["i-retry", { returning: true }],
          ["i2", {}]
        ]
        const fibers = yield* Effect.forEach(arrivals, ([name, options]) =>
          Effect.zipLeft(Effect.fork(ConcurrencyLimiter.withPermit(limiter, options)(Effect.sync(() => order.push(name)))), settle))
        yield* release(held)
        yield* Fiber.joinAll(fibers)
        expect(order).toEqual(["i-retry", "i1", "i2", "b-retry", "b1"])
      }))

    it.effect("has its series from its making: its gauges, and its drop count at 0", () =>
      Effect.gen(function*() {
        yield* ConcurrencyLimiter.makeFixed(3, { name: "made-test" })
        // Reading a metric's value would make its series: the snapshot shows only those updated.
        const made = (yield* Metric.snapshot)
          .filter(({ metricKey }) => metricKey.tags.some((tag) => tag.key === "limiter" && tag.value === "made-test"))
          .map(({ metricKey, metricState }) => [metricKey.name, "value" in metricState ? metricState.value : "count" in metricState ? metricState.count : undefined])
        expect(Object.fromEntries(made)).toEqual({
          weatherproof_concurrency_limit: 3,
          weatherproof_concurrency_in_flight: 0,
          weatherproof_concurrency_queued: 0,
          weatherproof_concurrency_dropped: 0
        })
      }))

    it.effect("publishes snapshot values as gauges tagged with its name", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeFixed(2, { name: "gauges-test" })
        const held = yield* hold(limiter, 2)
        yield* Effect.fork(Effect.scoped(limiter.acquire()))
        yield* settle
        expect(yield* limiter.snapshot).toEqual({ limit: 2, inFlight: 2, queued: 1 })
        const gauge = (metric: Metric.Metric.Gauge<number>) =>
          Effect.map(Metric.value(Metric.tagged(metric, "limiter", "gauges-test")), (state) => state.value)
        expect(yield* gauge(ConcurrencyLimiter.limitGauge)).toBe(2)
        expect(yield* gauge(ConcurrencyLimiter.inFlightGauge)).toBe(2)
        expect(yield* gauge(ConcurrencyLimiter.queuedGauge)).toBe(1)
        yield* release(held)
        yield* settle
        expect(yield* gauge(ConcurrencyLimiter.inFlightGauge)).toBe(0)
        expect(yield* gauge(ConcurrencyLimiter.queuedGauge)).toBe(0)
      }))
  })

  describe("interruption", () => {
    it.effect("a waiter interrupted in the queue leaves it", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeFixed(1)
        const held = yield* hold(limiter, 1)
        const waiter = yield* Effect.fork(Effect.scoped(limiter.acquire()))
        yield* settle
        yield* Fiber.interrupt(waiter)
        expect(yield* limiter.snapshot).toEqual({ limit: 1, inFlight: 1, queued: 0 })
        yield* release(held)
        expect(yield* limiter.snapshot).toEqual({ limit: 1, inFlight: 0, queued: 0 })
      }))

    it.effect("a waiter interrupted just after it was granted a permit hands it back", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeFixed(1)
        const held = yield* hold(limiter, 1)
        const waiter = yield* Effect.fork(Effect.scoped(Effect.zipRight(limiter.acquire(), Effect.never)))
        yield* settle
        // The release grants the waiter's permit; the interruption arrives before it resumes.
        yield* release(held)
        yield* Fiber.interrupt(waiter)
        expect(yield* limiter.snapshot).toEqual({ limit: 1, inFlight: 0, queued: 0 })
      }))

    it.effect("abandonWhen gives a waiter's place up with an abandoned QueueFull; a granted permit is kept", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeFixed(1)
        const abandon = yield* Deferred.make<void>()
        const options = { abandonWhen: Deferred.await(abandon) }
        const holder = yield* Effect.fork(limiter.withPermit(() => Effect.never, options))
        const waiter = yield* Effect.fork(Effect.flip(limiter.withPermit(() => Effect.void, options)))
        yield* settle
        expect(yield* limiter.snapshot).toEqual({ limit: 1, inFlight: 1, queued: 1 })
        yield* Deferred.succeed(abandon, undefined)
        // It says it gave up (no `maxQueued` was set) and counts the others waiting, not itself.
        const abandoned = yield* Fiber.join(waiter)
        expect(abandoned).toMatchObject({ _tag: "QueueFull", abandoned: true, queued: 0 })
        expect(abandoned.message).toBe(
          "gave up waiting for a concurrency permit (its maxWait ran out, or its abandonWhen completed), 0 others waiting"
        )
        expect(yield* limiter.snapshot).toEqual({ limit: 1, inFlight: 1, queued: 0 })
        yield* Fiber.interrupt(holder)
        expect((yield* limiter.snapshot).inFlight).toBe(0)
      }))

    it.effect("a use that throws as it builds its effect, or a classifier that throws, still releases the permit", () =>
      Effect.gen(function*() {
        const classify = (error: unknown) => {
          if (error === "unreadable") throw new Error("the classifier's bug")
          return ApiError.classify(error)
        }
        const limiter = yield* ConcurrencyLimiter.makeFixed(1, { classify })
        const throwing = (): Effect.Effect<never> => {
          throw new Error("the caller's bug")
        }
        for (const use of [throwing, () => Effect.fail("unreadable")]) {
          const exit = yield* Effect.exit(limiter.withPermit(use))
          expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
          expect(yield* limiter.snapshot).toEqual({ limit: 1, inFlight: 0, queued: 0 })
        }
      }))

    it.effect("a caller interrupted while it holds a permit releases it", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeFixed(1)
        const caller = yield* Effect.fork(ConcurrencyLimiter.withPermit(limiter)(Effect.never))
        yield* settle
        expect((yield* limiter.snapshot).inFlight).toBe(1)
        yield* Fiber.interrupt(caller)
        expect(yield* limiter.snapshot).toEqual({ limit: 1, inFlight: 0, queued: 0 })
      }))
  })

  describe("makeAdaptive", () => {
    it.effect("with no options starts at defaults.initial, within defaults.min and defaults.max", () =>
      Effect.gen(function*() {
        const { defaults } = ConcurrencyLimiter
        expect(defaults).toMatchObject({ initial: 8, min: 1, max: 10_000, backoff: 0.9, fallBackoff: 0.25 })
        expect(yield* limitOf(yield* ConcurrencyLimiter.makeAdaptive())).toBe(defaults.initial)
        // A given max below the default initial limit clamps it.
        expect(yield* limitOf(yield* ConcurrencyLimiter.makeAdaptive({ max: 5 }))).toBe(5)
      }))

    it.effect("slow start doubles the limit every round", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 4 })
        expect(yield* rounds(limiter, 3)).toEqual([8, 16, 32])
      }))

    it.effect("a drop decreases the limit once per round and is counted", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 20, name: "drops-test" })
        const held = yield* hold(limiter, 20)
        yield* held[0]!.permit.complete(dropped)
        // In-flight 20, so 19 were accepted: the ceiling; the limit is 20 × 0.9.
        expect(yield* limitOf(limiter)).toBe(18)
        // The others were sent at the old limit: they must not decrease it again.
        yield* Effect.forEach(held.slice(1), (h) => h.permit.complete(dropped))
        expect(yield* limitOf(limiter)).toBe(18)
        yield* release(held)
        const counted = yield* Metric.value(Metric.tagged(ConcurrencyLimiter.droppedCounter, "limiter", "drops-test"))
        expect(counted.count).toBe(20)
      }))

    it.effect("a drop alongside the first lowers the ceiling to what was accepted", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 20 })
        const held = yield* hold(limiter, 20)
        yield* held[0]!.permit.complete(dropped)
        yield* release(held.slice(0, 1))
        yield* held[1]!.permit.complete(dropped) // in flight 19: 18 accepted
        yield* release(held.slice(1))
        expect(yield* rounds(limiter, 2)).toEqual([18, 18]) // back at the ceiling, holding
      }))

    it.effect("a second drop before anything succeeds at the lowered limit means the cap fell", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 20 })
        expect(yield* round(limiter, dropped)).toBe(18)
        const held = yield* hold(limiter, 18)
        yield* held[0]!.permit.complete(dropped)
        expect(yield* limitOf(limiter)).toBe(4) // 18 × 0.25
        yield* release(held)
        expect(yield* rounds(limiter, 2)).toEqual([8, 16]) // slow start again
      }))

    it.effect("a drop while holding at the ceiling means the cap fell: one 429 is enough", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 20 })
        expect(yield* round(limiter, dropped)).toBe(18) // ceiling 19
        expect(yield* rounds(limiter, 2)).toEqual([19, 19]) // recovered, then holding
        const held = yield* hold(limiter, 19)
        yield* held[0]!.permit.complete(dropped)
        expect(yield* limitOf(limiter)).toBe(4) // 19 × 0.25, not 19 × 0.9
        yield* release(held)
        expect(yield* rounds(limiter, 2)).toEqual([8, 16]) // slow start again
      }))

    it.effect("a drop in a hold's first round lowers the ceiling: that level was never held for a round", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 20 })
        expect(yield* round(limiter, dropped)).toBe(18) // ceiling 19
        expect(yield* round(limiter)).toBe(19) // back at the ceiling: holding from here
        const held = yield* hold(limiter, 19)
        yield* held[0]!.permit.complete(dropped)
        // The ceiling was one above what the upstream holds: 18 now, and 0.9 × 19 under it, not
        // the fall's 19 × 0.25.
        expect(yield* limitOf(limiter)).toBe(17)
        yield* release(held)
        expect(yield* rounds(limiter, 2)).toEqual([18, 18]) // back at the new ceiling, holding
      }))

    it.effect("after a drop: back to the ceiling, a hold there, then a slow-start probe", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 20, holdRounds: 3, holdRequests: 0 })
        expect(yield* round(limiter, dropped)).toBe(18) // ceiling 19
        expect(yield* round(limiter)).toBe(19) // recovered within a round
        // Held three rounds (counted from the success that reached the ceiling), then probing by
        // slow start: its first step is the last success of the third round.
        expect(yield* rounds(limiter, 4)).toEqual([19, 19, 20, 40])
      }))

    it.effect("with acceptances, slow start lets one request at a time go above what was accepted", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 4 })
        const held = yield* hold(limiter, 4)
        yield* TestClock.adjust("10 millis") // a round trip
        yield* Effect.forEach(held.slice(0, 3), (h) => h.permit.accepted)
        expect(yield* limitOf(limiter)).toBe(4) // below the top: nothing new is proven
        yield* held[3]!.permit.accepted
        yield* held[3]!.permit.accepted // reported twice, counted once
        expect(yield* limitOf(limiter)).toBe(5)
        const fifth = yield* hold(limiter, 1)
        yield* TestClock.adjust("10 millis")
        yield* fifth[0]!.permit.accepted
        expect(yield* limitOf(limiter)).toBe(6)
        // Responses long after their acceptances: acceptances clock growth, successes do not.
        yield* TestClock.adjust("2 seconds")
        yield* Effect.forEach([...held, ...fifth], (h) => h.permit.complete(success))
        expect(yield* limitOf(limiter)).toBe(6)
        const sixth = yield* hold(limiter, 1)
        yield* sixth[0]!.permit.complete(dropped) // the one overshoot: 5 were accepted
        expect(yield* limitOf(limiter)).toBe(5)
        yield* release([...held, ...fifth, ...sixth])
      }))

    it.effect("a limit stepped back in slow start grows again by acceptances at its top", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 8 })
        const first = yield* hold(limiter, 8)
        yield* TestClock.adjust("10 millis")
        yield* Effect.forEach(first, (h) => h.permit.accepted)
        const ninth = yield* hold(limiter, 1)
        yield* ninth[0]!.permit.accepted // 9 proved
        expect(yield* limitOf(limiter)).toBe(10)
        // Every one answers 503: overload dominates the round, and the limit steps back to 9.
        yield* Effect.forEach([...first, ...ninth], (h) => h.permit.complete({ _tag: "Dropped", signal: "overload" }))
        yield* release([...first, ...ninth])
        expect(yield* limitOf(limiter)).toBe(9)
        // 9 accepted again is the top of the limit now, though 9 was proved before.
        const again = yield* hold(limiter, 9)
        yield* TestClock.adjust("10 millis")
        yield* Effect.forEach(again, (h) => h.permit.accepted)
        expect(yield* limitOf(limiter)).toBe(10)
        yield* release(again)
      }))

    it.effect("where acceptance comes only with the response, slow start learns it and doubles every round", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 4 })
        const acceptedAsItEnds = Effect.gen(function*() {
          const held = yield* hold(limiter, yield* limitOf(limiter))
          yield* TestClock.adjust("2 seconds")
          yield* Effect.forEach(held, (h) => Effect.zipRight(h.permit.accepted, h.permit.complete(success)))
          yield* release(held)
          return yield* limitOf(limiter)
        })
        // Each acceptance proves one request held (the others ended): nothing grows by them. It
        // takes a few responses to learn that acceptances come with them, then doubles.
        expect(yield* Effect.replicateEffect(acceptedAsItEnds, 5)).toEqual([4, 6, 12, 24, 48])
      }))

    /** A round of `limiter`'s whole limit, each accepted as its response comes, then ended with `outcomeOf`. */
    const acceptedAsItEnds = (limiter: Service, outcomeOf: (index: number) => Outcome = () => success) =>
      Effect.gen(function*() {
        const held = yield* hold(limiter, yield* limitOf(limiter))
        yield* TestClock.adjust("2 seconds")
        yield* Effect.forEach(held, (h, index) => Effect.zipRight(h.permit.accepted, h.permit.complete(outcomeOf(index))))
        yield* release(held)
        return yield* limitOf(limiter)
      })

    /** Acceptances with the responses, a ceiling of 23 found, then back at it: holding at 23. */
    const holdingWithResponses = Effect.gen(function*() {
      const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 4, holdRounds: 1, holdRequests: 0 })
      expect(yield* Effect.replicateEffect(acceptedAsItEnds(limiter), 4)).toEqual([4, 6, 12, 24])
      // The last of 24 draws a 429: the ceiling is 23.
      yield* acceptedAsItEnds(limiter, (index) => index === 23 ? dropped : success)
      expect(yield* acceptedAsItEnds(limiter)).toBe(23) // back at the ceiling within a round
      return limiter
    })

    it("a state whose proved level is at its limit (merged from several processes) still grows by acceptances at its top", () => {
      const aimd = aimdIn({ initial: 8 }, { confirmed: 8 })
      for (let accepted = 1; accepted < 8; accepted++) expect(aimd.accepted(0)).toBe(false)
      expect(aimd.accepted(0)).toBe(true) // 8 held: the top of the limit
      expect(aimd.limit).toBe(9)
    })

    it("a replacement on its way counts as held: slow start grows when it and the accepted requests fill the limit", () => {
      const aimd = new Aimd(adaptiveConfig({ initial: 4 }))
      const ahead = { timing: "ahead", grew: false } as const
      for (let permit = 0; permit < 4; permit++) expect(aimd.refill()).toBe(false) // no slot was left yet
      for (let permit = 1; permit < 4; permit++) aimd.accepted(0)
      expect(aimd.accepted(0)).toBe(true) // 4 of 4 held
      expect(aimd.limit).toBe(5)
      expect(aimd.refill()).toBe(false) // the fifth: a new slot upstream
      // The first ends while a call waits for its permit: that call's request takes its slot.
      aimd.record(0, success, 5, ahead, 1000, { refill: false, refilled: true })
      expect(aimd.refill()).toBe(true)
      expect(aimd.refill()).toBe(false) // one slot, one taker
      // The fifth is accepted: 4 accepted and the replacement on its way fill the limit of 5.
      expect(aimd.accepted(0)).toBe(true)
      expect(aimd.limit).toBe(6)
      // The replacement's own acceptance proves nothing new: it was counted.
      expect(aimd.accepted(0, true)).toBe(false)
      expect(aimd.limit).toBe(6)
    })

    it("a probe's request that takes the slot a replacement was sent for steps the probe once", () => {
      const ahead = { timing: "ahead", grew: false } as const
      const unreported = { timing: "unreported", grew: false } as const
      /** Probing a request above a ceiling of 6: six held, the probe's permit on its way, then one of the six ends and its replacement goes. */
      const probing = () => {
        const aimd = aimdIn({ initial: 6 }, {
          ceiling: 6,
          value: 7,
          acceptanceClocked: true,
          acceptedOutstanding: 6
        })
        expect(aimd.refill()).toBe(false) // the probe: a new slot
        aimd.record(0, success, 7, ahead, 1000, { refill: false, refilled: true })
        expect(aimd.refill()).toBe(true)
        return aimd
      }
      // The probe's request arrives first and takes the freed slot: six held, no proof of seven.
      const unchanged = probing()
      expect(unchanged.accepted(0)).toBe(false)
      expect(unchanged.limit).toBe(7)
      // The replacement draws the 429: the cap is where it was, found with one request above it.
      unchanged.record(0, dropped, 7, unreported, 5, { refill: true, refilled: false })
      expect(unchanged.limit).toBe(6)
      // The cap rose: the replacement is accepted too, seven are held, and the probe steps.
      const risen = probing()
      risen.accepted(0)
      expect(risen.accepted(0, true)).toBe(true)
      expect(risen.limit).toBe(8)
    })

    it("a 429 after a brake lowered the limit never sets the ceiling above the level held", () => {
      const aimd = new Aimd(adaptiveConfig({ initial: 8 }))
      const withResponse = { timing: "withResponse", grew: false } as const
      const succeed = (count: number, elapsedMillis: number, inFlight: number) => {
        for (let i = 0; i < count; i++) {
          aimd.accepted(aimd.stamp)
          aimd.record(aimd.stamp, success, inFlight, withResponse, elapsedMillis)
        }
      }
      succeed(8, 10, 8) // a round at 10 ms: the baseline
      succeed(16, 100, 16) // ten times slower: the brake stops slow start far below
      const braked = aimd.limit
      expect(braked).toBeLessThan(8)
      // 30 requests granted before the brake are still in flight, far above the limit.
      aimd.record(0, dropped, 30, { timing: "unreported", grew: false }, 100)
      succeed(20, 10, braked)
      expect(aimd.limit).toBeLessThanOrEqual(braked) // it recovered towards 29 when in-flight set the ceiling
    })

    it.effect("where acceptance comes only with the response, a probe above a ceiling grows by a request a round", () =>
      Effect.gen(function*() {
        const limiter = yield* holdingWithResponses
        // After the hold, slow start above the ceiling: no acceptance ever reaches the top of the
        // limit here, so successes must grow it (it stalled at 24), by one a round.
        expect(yield* Effect.replicateEffect(acceptedAsItEnds(limiter), 6)).toEqual([24, 25, 26, 27, 28, 29])
      }))

    it.effect("where acceptance comes only with the response, a 429 while holding is an overshoot, not a fall", () =>
      Effect.gen(function*() {
        const limiter = yield* holdingWithResponses
        // Requests in flight there count their way to and from the upstream, which its cap does
        // not: a drop at the ceiling is read as an overshoot (×0.9, the ceiling one lower), not as
        // the cap falling (×0.25, to 5).
        expect(yield* acceptedAsItEnds(limiter, (index) => index === 0 ? dropped : success)).toBe(20)
      }))

    it.effect("with acceptances, a probe from the hold is one request above the ceiling", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 4, holdRounds: 1, holdRequests: 0 })
        const first = yield* hold(limiter, 4)
        yield* Effect.forEach(first, (h) => h.permit.accepted) // four held upstream: a fifth may go
        const fifth = yield* hold(limiter, 1)
        yield* fifth[0]!.permit.complete(dropped) // ceiling 4, holding there
        expect(yield* limitOf(limiter)).toBe(4)
        yield* release([...first, ...fifth])
        const acceptedRound = Effect.gen(function*() {
          const held = yield* hold(limiter, yield* limitOf(limiter))
          yield* Effect.forEach(held, (h) => Effect.zipRight(h.permit.accepted, h.permit.complete(success)))
          yield* release(held)
          return yield* limitOf(limiter)
        })
        expect(yield* acceptedRound).toBe(5) // the hold's round ends: one request above 4
      }))

    /** Acceptances ahead of responses, 20 accepted, the 21st dropped: recovering from 18 towards 20. */
    const recoveringAt18 = Effect.gen(function*() {
      const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 20 })
      const first = yield* hold(limiter, 20)
      yield* Effect.forEach(first, (h) => h.permit.accepted) // 20 held upstream: a 21st may go
      const over = yield* hold(limiter, 1)
      yield* over[0]!.permit.complete(dropped) // ceiling 20, the limit 0.9 × 21
      expect(yield* limitOf(limiter)).toBe(18)
      // The permits sent before the 429 end, seconds after their acceptance: they were granted
      // at the old limit and grow nothing.
      yield* TestClock.adjust("4 seconds")
      yield* Effect.forEach(first, (h) => h.permit.complete(success))
      yield* release([...first, ...over])
      expect(yield* limitOf(limiter)).toBe(18)
      return limiter
    })

    it.effect("with acceptances, the recovery after an overshoot is clocked by them: back at the ceiling before a response", () =>
      Effect.gen(function*() {
        const limiter = yield* recoveringAt18
        // Each permit granted since proves a level the moment it is accepted, long before its
        // response (seconds, upstream): the gap closes in a round of acceptances.
        const next = yield* hold(limiter, 18)
        yield* Effect.forEach(next, (h) => h.permit.accepted)
        expect(yield* limitOf(limiter)).toBe(20)
        yield* release(next)
      }))

    it.effect("a 429 while recovering towards the ceiling is a fall: nothing was sent above a level already accepted", () =>
      Effect.gen(function*() {
        const limiter = yield* recoveringAt18
        const next = yield* hold(limiter, 18)
        yield* Effect.forEach(next.slice(0, 5), (h) => h.permit.accepted)
        expect(yield* limitOf(limiter)).toBe(19)
        // 18 in flight, under the 20 accepted before: the cap itself fell, anywhere below, so
        // the limit falls to a quarter of the level (an overshoot would give 0.9 × 18).
        yield* next[5]!.permit.complete(dropped)
        expect(yield* limitOf(limiter)).toBe(4)
        yield* release(next)
      }))

    it.effect("a 429 while recovering above every level accepted since the last one is an overshoot: the ceiling was set above the cap", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 20 })
        const first = yield* hold(limiter, 20)
        yield* TestClock.adjust("10 millis")
        yield* Effect.forEach(first.slice(0, 16), (h) => h.permit.accepted) // the cap: 16
        // Read while the other three are still on their way to their 429s: in-flight 20 sets the
        // ceiling at 19, three above the cap.
        yield* first[16]!.permit.complete(dropped)
        expect(yield* limitOf(limiter)).toBe(18)
        yield* TestClock.adjust("4 seconds")
        yield* Effect.forEach(first.slice(0, 16), (h) => h.permit.complete(success))
        yield* release(first.slice(0, 17))
        const next = yield* hold(limiter, 15) // 18 in flight with the three
        yield* TestClock.adjust("10 millis")
        yield* Effect.forEach(next.slice(0, 14), (h) => h.permit.accepted)
        // 18 in flight, above the 16 the upstream held: the ceiling was too high, and 16 is the
        // new one, where a fall would leave a quarter of 18 (4) and a second climb.
        yield* next[14]!.permit.complete(dropped)
        expect(yield* limitOf(limiter)).toBe(16)
        yield* release([...first.slice(17), ...next])
        expect(yield* rounds(limiter, 2)).toEqual([16, 16]) // holding there
      }))

    /** A first burst of 8 over a cap of 4: 4 accepted, then 2 of the others' 429s (the ceiling 6, holding). */
    const burstOverFour = Effect.gen(function*() {
      const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 8 })
      const first = yield* hold(limiter, 8)
      yield* TestClock.adjust("10 millis")
      yield* Effect.forEach(first.slice(0, 4), (h) => h.permit.accepted)
      yield* first[4]!.permit.complete(dropped) // in flight 8: the ceiling 7, holding there
      yield* release([first[4]!])
      yield* first[5]!.permit.complete(dropped) // alongside, in flight 7: the ceiling 6
      yield* release([first[5]!])
      expect(yield* limitOf(limiter)).toBe(6)
      return { limiter, first }
    })

    it.effect("a 429 in a hold's first round above every level accepted since the last one is an overshoot, though nothing since was accepted", () =>
      Effect.gen(function*() {
        const { first, limiter } = yield* burstOverFour
        // An answer frees a slot: the call that takes it goes above the 4 the upstream holds
        // and draws a 429 before any permit granted since the last one was accepted. The
        // burst's other 429s set the ceiling above the cap; it did not fall. As a fall (a
        // quarter of 6, and holds an eighth as long after it) it cost a mixed flash/pro batch
        // 6-12 429s on pro's cap of 4, where the burst and the probes cost 6-8.
        yield* first[0]!.permit.complete(success)
        yield* release([first[0]!])
        const next = yield* hold(limiter, 1)
        yield* next[0]!.permit.complete(dropped)
        expect(yield* limitOf(limiter)).toBe(4)
        yield* release([...first.slice(1, 4), ...first.slice(6), ...next])
        expect(yield* rounds(limiter, 2)).toEqual([4, 4]) // holding there
      }))

    it.effect("a 429 in a hold's first round at a level the upstream was seen to hold since the last one is a fall", () =>
      Effect.gen(function*() {
        const { first, limiter } = yield* burstOverFour
        // The two still on their way were accepted: 6 held, and a 429 at 6 says the cap fell.
        yield* Effect.forEach(first.slice(6), (h) => h.permit.accepted)
        yield* first[0]!.permit.complete(success)
        yield* release([first[0]!])
        const next = yield* hold(limiter, 1)
        yield* next[0]!.permit.complete(dropped)
        expect(yield* limitOf(limiter)).toBe(1) // a quarter of 6
        yield* release([...first.slice(1, 4), ...first.slice(6), ...next])
      }))

    it("a 429 above every level accepted at once is an overshoot, though a replacement on its way was counted as held", () => {
      // The burst over a cap of 4 again, its third 429 read: holding at 5, 4 accepted at once;
      // a replacement was counted with them (5), and a late request of the burst took its slot.
      const aimd = aimdIn({ initial: 8 }, {
        phase: "hold",
        ceiling: 5,
        value: 5,
        epoch: 1,
        succeededSinceDecrease: false,
        acceptanceClocked: true,
        acceptedOutstanding: 4,
        acceptedPeak: 5,
        acceptedOutstandingPeak: 4
      })
      aimd.record(1, dropped, 5, { timing: "unreported", grew: false }, 5)
      expect(aimd.limit).toBe(4) // where a fall leaves 1, and holds an eighth as long
      expect(aimd.toState()).toMatchObject({ phase: "hold", ceiling: 4, holdShare: 1 })
    })

    it("a 429 while recovering where next to nothing was seen held is a fall, not a ceiling of one", () => {
      // Recovering towards 20, from a state written before `acceptedPeak` and
      // `acceptedOutstandingPeak` (a process of an older version sharing the limit through
      // Redis): the fields are absent, and read as 0.
      const config = adaptiveConfig({ initial: 20 })
      const { acceptedOutstandingPeak: _, acceptedPeak: __, ...older } = {
        ...new Aimd(config).toState(),
        phase: "recover" as const,
        ceiling: 20,
        value: 18,
        acceptanceClocked: true
      }
      const aimd = Aimd.fromState(config, older as AimdState)
      expect(aimd.toState()).toMatchObject({ acceptedPeak: 0, acceptedOutstandingPeak: 0 })
      aimd.record(0, dropped, 18, { timing: "unreported", grew: false }, 5)
      expect(aimd.limit).toBe(4) // a quarter of 18, and slow start
    })

    it.effect("a permit that ended lets the next one in only when it is released", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 2 })
        const held = yield* hold(limiter, 2)
        const waiter = yield* Effect.fork(Effect.scoped(limiter.acquire()))
        yield* settle
        yield* held[0]!.permit.complete(success) // slow start: the limit is 3 now
        yield* settle
        // Granting now would count the ended request and place the next one a level too high.
        expect(yield* limiter.snapshot).toEqual({ limit: 3, inFlight: 2, queued: 1 })
        yield* release(held.slice(0, 1))
        yield* Fiber.join(waiter)
        yield* release(held.slice(1))
      }))

    it.effect("holds for at least `holdRequests` successes at a small limit", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 5, holdRounds: 2, holdRequests: 16 })
        expect(yield* round(limiter, dropped)).toBe(4) // ceiling 4: four rounds to reach 16 successes
        expect(yield* rounds(limiter, 5)).toEqual([4, 4, 4, 4, 8])
      }))

    /** The holds (in rounds) at a cap of 2 after it fell from 4, as `probes` probes find it unchanged. */
    const holdsAfterFall = (probes: number, holdGrowth?: number) =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({
          initial: 5,
          holdRounds: 2,
          holdRequests: 32,
          ...(holdGrowth === undefined ? {} : { holdGrowth })
        })
        /** Rounds until the limit first goes above `ceiling`: the hold's length (a probe is the round's +1). */
        const roundsHeldAt = (ceiling: number) =>
          Effect.gen(function*() {
            let held = 0
            while ((yield* round(limiter)) <= ceiling) held++
            return held
          })
        /** The probe above `ceiling` draws its 429: back to the ceiling, holding again. */
        const probeFindsUnchanged = (ceiling: number) =>
          Effect.gen(function*() {
            const held = yield* hold(limiter, ceiling + 1)
            yield* held[ceiling]!.permit.complete(dropped)
            yield* release(held)
            expect(yield* limitOf(limiter)).toBe(ceiling)
          })
        expect(yield* round(limiter, dropped)).toBe(4) // ceiling 4: a full hold is 8 rounds (32 successes)
        expect(yield* roundsHeldAt(4)).toBe(8)
        yield* probeFindsUnchanged(4)
        // Holding at 4, the cap falls: × 0.25, then slow start finds it at 2.
        const atFour = yield* hold(limiter, 4)
        yield* atFour[0]!.permit.complete(dropped)
        yield* release(atFour)
        expect(yield* limitOf(limiter)).toBe(1)
        expect(yield* round(limiter)).toBe(2)
        const two = yield* hold(limiter, 2)
        yield* two[0]!.permit.complete(success) // slow start: a third may go
        const third = yield* hold(limiter, 1)
        yield* third[0]!.permit.complete(dropped) // ceiling 2
        yield* release([...two, ...third])
        expect(yield* limitOf(limiter)).toBe(2)
        const holds: Array<number> = []
        for (let probe = 0; probe < probes; probe++) {
          holds.push(yield* roundsHeldAt(2))
          yield* probeFindsUnchanged(2)
        }
        return holds
      })

    it.effect("after the cap fell, probes come sooner, and back to the full hold as they find it unchanged", () =>
      Effect.gen(function*() {
        // A full hold at 2 is 16 rounds (32 successes): an eighth of it, each next one 1.5 times
        // longer, up to all of it.
        expect(yield* holdsAfterFall(7)).toEqual([2, 3, 5, 7, 11, 16, 16])
        // `holdGrowth` 2: an eighth, a quarter, a half, all.
        expect(yield* holdsAfterFall(4, 2)).toEqual([2, 4, 8, 16])
      }))

    it.effect("refuses a `min` or `max` under one, and a `max` under `min`, rather than raising them", () =>
      Effect.gen(function*() {
        const refusal = (options: ConcurrencyLimiter.AdaptiveOptions) =>
          Effect.map(Effect.exit(ConcurrencyLimiter.makeAdaptive(options)), (exit) => Exit.isFailure(exit) && Cause.pretty(exit.cause))
        expect(yield* refusal({ min: 0 })).toContain("ConcurrencyLimiter: min must be at least 1, got 0")
        expect(yield* refusal({ max: 0.5 })).toContain("ConcurrencyLimiter: max must be at least 1, got 0.5")
        expect(yield* refusal({ min: 8, max: 4 })).toContain("ConcurrencyLimiter: max must be at least min (8), got 4")
        // Only what was given is told: `initial`, brought within them, is no problem of its own.
        for (const options of [{ max: 0 }, { min: 8, max: 4 }]) expect(yield* refusal(options)).not.toContain("initial")
        expect(yield* refusal({ initial: Number.NaN })).toContain("ConcurrencyLimiter: initial must be a number, got NaN")
        // A `min` above the default `max` raises it: only a `max` given is held to `min`.
        const high = yield* ConcurrencyLimiter.makeAdaptive({ min: 20_000, initial: 20_000 })
        expect(yield* limitOf(high)).toBe(20_000)
      }))

    it.effect("refuses a hold growth that would not grow", () =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(ConcurrencyLimiter.makeAdaptive({ holdGrowth: 1 }))
        expect(Exit.isFailure(exit) && Cause.pretty(exit.cause)).toContain("holdGrowth must be above 1, got 1")
      }))

    it.effect("does not grow a limit that is less than half used", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 10 })
        const use = (n: number) =>
          Effect.flatMap(hold(limiter, n), (held) =>
            Effect.zipRight(Effect.forEach(held, (h) => h.permit.complete(success)), release(held)))
        yield* Effect.replicateEffect(use(4), 50)
        expect(yield* limitOf(limiter)).toBe(10)
        yield* use(5) // the first success sees in-flight 5 of 10 and grows; the rest see 5 of 11
        expect(yield* limitOf(limiter)).toBe(11)
      }))

    it.effect("stays within `min` and `max`", () =>
      Effect.gen(function*() {
        const capped = yield* ConcurrencyLimiter.makeAdaptive({ initial: 4, max: 12 })
        expect(yield* rounds(capped, 3)).toEqual([8, 12, 12])
        const floored = yield* ConcurrencyLimiter.makeAdaptive({ initial: 4, min: 3 })
        expect(yield* round(floored, dropped)).toBe(3)
        expect(yield* round(floored, dropped)).toBe(3) // a fall, but not below `min`
        const clamped = yield* ConcurrencyLimiter.makeAdaptive({ initial: 500, max: 64 })
        expect(yield* limitOf(clamped)).toBe(64)
      }))

    it.effect("dies on options that cannot work", () =>
      Effect.gen(function*() {
        for (
          const options of [{ backoff: 1 }, { backoff: 0 }, { fallBackoff: 1.5 }, { queueDelayRise: 1 }, {
            queueDelayWindows: 0
          }, { initial: Number.NaN }, { min: Number.NaN }, { max: Number.NaN }]
        ) {
          const exit = yield* Effect.exit(ConcurrencyLimiter.makeAdaptive(options))
          expect(Exit.isFailure(exit) && Cause.isDie(exit.cause), String(Object.values(options))).toBe(true)
        }
        // A limit of NaN (a concurrency read from an unset variable) would grant nothing, silently.
        for (const permits of [Number.NaN, 0, 1.5]) {
          const exit = yield* Effect.exit(ConcurrencyLimiter.makeFixed(permits))
          expect(Exit.isFailure(exit) && Cause.isDie(exit.cause), String(permits)).toBe(true)
        }
        // A queue of -1 refused every waiter with QueueFull, as one of 0 does on purpose.
        for (const maxQueued of [-1, 1.5, Number.NaN]) {
          const exits = [
            yield* Effect.exit(ConcurrencyLimiter.makeFixed(1, { maxQueued })),
            yield* Effect.exit(ConcurrencyLimiter.makeAdaptive({ maxQueued }))
          ]
          for (const exit of exits) expect(Exit.isFailure(exit) && Cause.isDie(exit.cause), String(maxQueued)).toBe(true)
        }
        yield* ConcurrencyLimiter.makeFixed(1, { maxQueued: 0 })
        yield* ConcurrencyLimiter.makeFixed(1, { maxQueued: Infinity })
        // A ceiling of 0 was raised to 1: every call one at a time, where no limit (`false`) was meant.
        for (const permits of [0, -5, Number.NaN]) {
          expect(() => ConcurrencyLimiter.ceiling(permits)).toThrow(
            `ConcurrencyLimiter: ceiling must be at least 1, got ${permits} (for no limit, leave the limiter out: Policy's concurrency: false)`
          )
        }
      }))

    it.effect("a permit released unsettled (a stream its consumer stopped) no longer counts as accepted", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 4 })
        for (let i = 0; i < 20; i++) yield* Effect.scoped(Effect.flatMap(limiter.acquire(), (permit) => permit.accepted))
        // One at a time: nothing showed the upstream holds more than one.
        expect(yield* limiter.snapshot).toEqual({ limit: 4, inFlight: 0, queued: 0 })
      }))

    it.effect("a rising queue delay pauses growth, and three such windows step the limit back", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 4 })
        expect(yield* round(limiter, withQueueDelay(300))).toBe(8) // baseline 300 ms
        // Grows during the round; its window (700 ms ≥ 2 × 300 ms) is judged at its end.
        expect(yield* round(limiter, withQueueDelay(700))).toBe(16)
        expect(yield* round(limiter, withQueueDelay(700))).toBe(16)
        expect(yield* round(limiter, withQueueDelay(700))).toBe(14) // third congested window: × 0.9
        expect(yield* round(limiter, withQueueDelay(300))).toBe(14) // holding there
      }))

    it.effect("withPermit completes a permit `use` left open with the outcome of its exit", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 20 })
        const held = yield* hold(limiter, 19)
        const rateLimited = new RateLimited({ message: "busy", retryAfter: Option.none() })
        yield* Effect.flip(limiter.withPermit(() => Effect.fail(rateLimited)))
        // As `permit.complete(dropped)` with 20 in flight: 19 accepted, the limit 20 × 0.9.
        expect(yield* limitOf(limiter)).toBe(18)
        yield* release(held)
      }))

    it.effect("a queue delay recorded on a withPermit permit goes with its success", () =>
      Effect.gen(function*() {
        /** Rounds of withPermit calls, each given `delays[i]` of queue delay by `report`. */
        const limits = (report: (permit: ConcurrencyLimiter.Permit, delay: Duration.Duration) => Effect.Effect<void>) =>
          Effect.gen(function*() {
            const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 4, max: 30 })
            const seen: Array<number> = []
            for (const millis of [300, 300, 700, 700, 700, 700, 700, 700, 700, 700]) {
              const calls = Array.from({ length: yield* limitOf(limiter) }, () =>
                limiter.withPermit((permit) => Effect.zipRight(Effect.sleep(1), report(permit, Duration.millis(millis)))))
              yield* Effect.fork(Effect.all(calls, { concurrency: "unbounded" }))
              yield* settle
              yield* TestClock.adjust(1)
              seen.push(yield* limitOf(limiter))
            }
            return seen
          })
        const recorded = yield* limits((permit, delay) => permit.recordQueueDelay(delay))
        const inOutcome = yield* limits((permit, delay) => permit.complete({ _tag: "Success", queueDelay: delay }))
        const unreported = yield* limits(() => Effect.void)
        expect(recorded).toEqual(inOutcome)
        // Growth pauses once the delay has doubled, and three congested windows step it back.
        expect(recorded).toEqual([6, 9, 13, 16, 16, 16, 16, 14, 14, 14])
        expect(unreported).toEqual([6, 9, 13, 18, 25, 30, 30, 30, 30, 30])
      }))

    it.effect("queue delays under the floor are noise", () =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 4 })
        expect(yield* round(limiter, withQueueDelay(20))).toBe(8)
        expect(yield* rounds(limiter, 3, withQueueDelay(400))).toEqual([16, 32, 64]) // < 2 × 250 ms
      }))
  })

  describe("properties", () => {
    interface Caller {
      readonly arriveAt: number
      readonly holdFor: number
      readonly outcome: Outcome | undefined
      readonly priority: ConcurrencyLimiter.Priority
      readonly returning: boolean
      readonly interruptAt: number | undefined
    }
    const outcome = FastCheck.constantFrom<Outcome | undefined>(
      success,
      withQueueDelay(800),
      dropped,
      { _tag: "Ignored" },
      undefined
    )
    const caller: FastCheck.Arbitrary<Caller> = FastCheck.record({
      // Coarse times so that many callers arrive, finish and get interrupted at the same instant.
      arriveAt: FastCheck.integer({ min: 0, max: 20 }).map((n) => n * 100),
      holdFor: FastCheck.integer({ min: 0, max: 10 }).map((n) => n * 100),
      outcome,
      priority: FastCheck.constantFrom<ConcurrencyLimiter.Priority>("interactive", "batch"),
      returning: FastCheck.boolean(),
      interruptAt: FastCheck.option(FastCheck.integer({ min: 0, max: 30 }).map((n) => n * 100), { nil: undefined })
    })

    it.effect.prop(
      "no permit leaks and every caller ends, whatever the outcomes and interruptions",
      {
        adaptive: FastCheck.boolean(),
        permits: FastCheck.integer({ min: 1, max: 4 }),
        maxQueued: FastCheck.option(FastCheck.integer({ min: 0, max: 6 }), { nil: undefined }),
        callers: FastCheck.array(caller, { maxLength: 25 })
      },
      ({ adaptive, callers, maxQueued, permits }) =>
        Effect.gen(function*() {
          const limiter = yield* (adaptive
            ? ConcurrencyLimiter.makeAdaptive({ initial: permits, max: 8, maxQueued })
            : ConcurrencyLimiter.makeFixed(permits, { maxQueued }))
          const call = (c: Caller) =>
            Effect.zipRight(
              Effect.sleep(c.arriveAt),
              Effect.scoped(Effect.gen(function*() {
                const permit = yield* limiter.acquire({ priority: c.priority, returning: c.returning })
                yield* Effect.sleep(c.holdFor)
                if (c.outcome !== undefined) yield* permit.complete(c.outcome)
              }))
            )
          const fibers = yield* Effect.forEach(callers, (c) => Effect.fork(call(c)))
          yield* Effect.forEach(callers, (c, i) =>
            c.interruptAt === undefined
              ? Effect.void
              : Effect.fork(Effect.zipRight(Effect.sleep(c.interruptAt), Fiber.interrupt(fibers[i]!))))
          // Long enough for every caller to go through one permit at a time.
          yield* TestClock.adjust("1 minute")

          // (3) every caller ended: it ran, was refused by a full queue, or was interrupted.
          for (const [i, fiber] of fibers.entries()) {
            const exit = yield* fiber.poll
            expect(Option.isSome(exit), `caller ${i} never ended`).toBe(true)
            if (Option.isNone(exit) || Exit.isSuccess(exit.value)) continue
            const cause = exit.value.cause
            if (cause._tag === "Fail") {
              expect(cause.error).toBeInstanceOf(ConcurrencyLimiter.QueueFull)
              expect(maxQueued).toBeDefined()
            } else {
              expect(Exit.isInterrupted(exit.value), `caller ${i} failed: ${cause._tag}`).toBe(true)
              expect(callers[i]!.interruptAt).toBeDefined()
            }
          }
          // (1) nothing leaked: all `limit` permits can be taken at once, without waiting.
          const end = yield* limiter.snapshot
          expect(end.inFlight).toBe(0)
          expect(end.queued).toBe(0)
          const takeAll = yield* Effect.fork(
            Effect.scoped(Effect.zipRight(
              Effect.replicateEffect(limiter.acquire(), end.limit),
              limiter.snapshot
            ))
          )
          yield* settle
          const all = yield* takeAll.poll
          expect(Option.isSome(all) && Exit.isSuccess(all.value) ? all.value.value : undefined).toEqual({
            limit: end.limit,
            inFlight: end.limit,
            queued: 0
          })
        }),
      { fastCheck: { numRuns: 60 } }
    )

    type Op =
      | { readonly _tag: "Enter"; readonly priority: ConcurrencyLimiter.Priority; readonly returning: boolean }
      | { readonly _tag: "Cancel"; readonly pick: number }
      | { readonly _tag: "Release"; readonly pick: number }
      | { readonly _tag: "Resize"; readonly limit: number }
    const op: FastCheck.Arbitrary<Op> = FastCheck.oneof(
      FastCheck.record({
        _tag: FastCheck.constant("Enter" as const),
        priority: FastCheck.constantFrom<ConcurrencyLimiter.Priority>("interactive", "batch"),
        returning: FastCheck.boolean()
      }),
      FastCheck.record({ _tag: FastCheck.constant("Cancel" as const), pick: FastCheck.nat() }),
      FastCheck.record({ _tag: FastCheck.constant("Release" as const), pick: FastCheck.nat() }),
      FastCheck.record({ _tag: FastCheck.constant("Resize" as const), limit: FastCheck.integer({ min: 0, max: 6 }) })
    )

    it.prop(
      "(2) the gate grants only under the limit, interactive first, returning callers first within a lane, FIFO otherwise, and never loses count",
      {
        limit: FastCheck.integer({ min: 0, max: 4 }),
        maxQueued: FastCheck.integer({ min: 0, max: 8 }),
        ops: FastCheck.array(op, { maxLength: 80 })
      },
      ({ limit, maxQueued, ops }) => {
        let currentLimit = limit
        const gate = new Gate(limit, maxQueued, () => 0)
        let enteredSeq = 0
        // rank: the order the gate serves its queues in (interactive returning, interactive, batch returning, batch).
        const waiting: Array<{ readonly waiter: Waiter; readonly rank: number; readonly seq: number }> = []
        const grantedWaiters: Array<Waiter> = []
        let held = 0 // granted permits not yet given back, whoever holds them
        for (const o of ops) {
          switch (o._tag) {
            case "Enter": {
              const entry = gate.enter(o.priority, o.returning)
              if (entry._tag === "Granted") held++
              if (entry._tag === "Queued") {
                const rank = (o.priority === "batch" ? 2 : 0) + (o.returning ? 0 : 1)
                waiting.push({ waiter: entry.waiter, rank, seq: enteredSeq++ })
              }
              if (entry._tag === "Full") expect(gate.queued).toBe(maxQueued)
              break
            }
            case "Cancel": {
              const live = [...waiting.map((w) => w.waiter), ...grantedWaiters]
              const waiter = live[o.pick % Math.max(1, live.length)]
              if (waiter === undefined) break
              if (waiter.granted) {
                grantedWaiters.splice(grantedWaiters.indexOf(waiter), 1)
                held--
              } else waiting.splice(waiting.findIndex((w) => w.waiter === waiter), 1)
              gate.cancel(waiter)
              break
            }
            case "Release":
              if (held === 0) break
              // Give back a permit held by a granted waiter, or one granted at once.
              if (grantedWaiters.length > 0 && o.pick % 2 === 0) grantedWaiters.splice(o.pick % grantedWaiters.length, 1)
              held--
              gate.release()
              break
            case "Resize":
              currentLimit = o.limit
              gate.resize(o.limit)
              break
          }
          const granted = waiting.filter((w) => w.waiter.granted)
          for (const g of granted) {
            const still = waiting.filter((w) => !w.waiter.granted)
            // Interactive first, and returning callers first within a lane: none of an earlier queue is left behind.
            expect(still.some((w) => w.rank < g.rank)).toBe(false)
            // FIFO within a queue: no earlier waiter of the same queue is left behind.
            expect(still.some((w) => w.rank === g.rank && w.seq < g.seq)).toBe(false)
            waiting.splice(waiting.indexOf(g), 1)
            grantedWaiters.push(g.waiter)
            held++
          }
          if (granted.length > 0) expect(gate.inFlight).toBeLessThanOrEqual(currentLimit)
          expect(gate.inFlight).toBe(held)
          expect(gate.queued).toBe(waiting.length)
          expect(gate.queued).toBeLessThanOrEqual(maxQueued)
          // Work-conserving: nobody waits while a permit is free.
          if (gate.queued > 0) expect(gate.inFlight).toBeGreaterThanOrEqual(currentLimit)
        }
      },
      { fastCheck: { numRuns: 300 } }
    )
  })

  describe("where successes clock slow start, slower responses end it", () => {
    const unreported = { timing: "unreported", grew: false } as const
    /**
     * `successes` answers, each at the limit, that took `elapsed(level)` milliseconds; a 429 for a
     * level over `cap`. The limit after each.
     */
    const drive = (aimd: Aimd, successes: number, elapsed: (level: number, n: number) => number, cap = Infinity) => {
      const limits: Array<number> = []
      for (let n = 0; n < successes; n++) {
        const level = aimd.limit
        const outcome = level > cap ? { _tag: "Dropped" } as const : { _tag: "Success" } as const
        aimd.record(aimd.stamp, outcome, level, unreported, elapsed(level, n))
        limits.push(aimd.limit)
      }
      return limits
    }

    it("a climb that only makes requests wait (this process is the bottleneck) stops near where they began to", () => {
      // Each request in flight adds half a millisecond: 20 ms, four times the 5 ms floor, at 40.
      const limits = drive(new Aimd(adaptiveConfig({})), 5_000, (level) => Math.max(2, level / 2))
      expect(Math.max(...limits.slice(1_000))).toBeLessThanOrEqual(100)
      expect(Math.min(...limits.slice(1_000))).toBeGreaterThanOrEqual(15)
    })

    it("answers of seconds that vary on their own do not stop it", () => {
      let seed = 5
      const random = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32
      const limits = drive(new Aimd(adaptiveConfig({})), 4_000, () => 500 + 6_000 * random() ** 2)
      expect(limits.at(-1)).toBeGreaterThanOrEqual(2_000)
    })

    it("an upstream that became slower for good ends each probe at the measured level, never lower", () => {
      const aimd = new Aimd(adaptiveConfig({}))
      // A cap of 40 measured by a 429, then every answer ten times slower than before.
      const before = drive(aimd, 600, () => 100, 40)
      const ceiling = Math.min(...before.slice(300))
      const after = drive(aimd, 3_000, () => 1_000)
      expect(Math.min(...after)).toBeGreaterThanOrEqual(ceiling)
      // Each probe is brought back: without the brake slow start would climb for good.
      expect(Math.max(...after)).toBeLessThanOrEqual(3 * ceiling)
    })
  })

  describe("overload (503) is noise until it dominates", () => {
    /**
     * `total` requests of 100 ms against a fake account with a cap of 16 that answers a share of
     * requests 503 (`overloadedShare(n)` for the n-th request taken) and 429 over its cap. Each
     * request is retried until it is answered; the limit is sampled after every answer.
     */
    const run = (total: number, overloadedShare: (n: number) => number) =>
      Effect.gen(function*() {
        const limiter = yield* ConcurrencyLimiter.makeAdaptive()
        let seed = 11
        const random = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32
        let inFlight = 0
        let taken = 0
        const limits: Array<number> = []
        const upstream = Effect.suspend((): Effect.Effect<void, RateLimited | ServerError> => {
          if (inFlight >= 16) return Effect.fail(new RateLimited({ message: "over the cap", retryAfter: Option.none() }))
          if (random() < overloadedShare(taken++)) {
            return Effect.fail(new ServerError({ status: 503, message: "overloaded", retryAfter: Option.none() }))
          }
          inFlight++
          return Effect.ensuring(Effect.sleep("100 millis"), Effect.sync(() => inFlight--))
        })
        const request = limiter.withPermit(() => upstream).pipe(
          Effect.retry(Schedule.spaced("10 millis")),
          Effect.zipRight(Effect.flatMap(limiter.snapshot, ({ limit }) => Effect.sync(() => limits.push(limit))))
        )
        const fiber = yield* Effect.fork(Effect.all(Array.from({ length: total }, () => request), { concurrency: 64, discard: true }))
        yield* TestClock.adjust("1 hour")
        yield* Fiber.join(fiber)
        return limits
      })

    it.effect("20% random 503s do not bring the limit down from the cap the account serves", () =>
      Effect.gen(function*() {
        const limits = yield* run(1000, () => 0.2)
        const settled = limits.slice(300)
        expect(Math.min(...settled)).toBeGreaterThanOrEqual(12)
      }))

    it.effect("503s that dominate step the limit down, never below half the cap, and it climbs back after", () =>
      Effect.gen(function*() {
        // Answers 503 to nearly everything from the 300th request taken to the 1000th.
        const limits = yield* run(1200, (n) => n >= 300 && n < 1000 ? 0.9 : 0)
        expect(Math.min(...limits.slice(200))).toBeGreaterThanOrEqual(8)
        expect(Math.min(...limits.slice(200, 500))).toBeLessThan(14)
        expect(limits.at(-1)).toBeGreaterThanOrEqual(14)
      }))
  })

  describe("an upstream a round trip away", () => {
    /**
     * `total` requests of 3 s each against a cap of `cap` (or the cap at each time from the start,
     * in milliseconds), `oneWay` (100 ms) each way: a request takes its slot `oneWay` after its
     * grant, its 200 reaches the client `oneWay` later, and its end `oneWay` after the slot is
     * freed. The answers all take the same time, so from the first response on one ends about
     * every `3 s / limit`, and its replacement is on its way for two trips: some request is always
     * on its way. The upstream's highest in-flight, the 429s, the time, and when the upstream first
     * held 90 % of the cap (the last one).
     */
    const roundTripAway = (cap: number | ((millis: number) => number), total: number, oneWay = 100) =>
      Effect.gen(function*() {
        const capAt = typeof cap === "number" ? () => cap : cap
        const limiter = yield* ConcurrencyLimiter.makeAdaptive()
        const trip = Duration.millis(oneWay)
        let inFlight = 0
        let highest = 0
        let drops = 0
        /** When the upstream first held 90 % of each cap it had. */
        const nearCap = new Map<number, number>()
        const overCap = new RateLimited({ message: "over the account's concurrency", retryAfter: Option.none() })
        const upstream = (permit: ConcurrencyLimiter.Permit) =>
          Effect.zipRight(
            Effect.sleep(trip),
            Effect.flatMap(Clock.currentTimeMillis, (now) => {
              if (inFlight >= capAt(now)) {
                drops++
                return Effect.zipRight(Effect.sleep(trip), Effect.fail(overCap))
              }
              highest = Math.max(highest, ++inFlight)
              if (inFlight >= 0.9 * capAt(now) && !nearCap.has(capAt(now))) nearCap.set(capAt(now), now)
              return Effect.sleep(trip).pipe(
                Effect.zipRight(permit.accepted),
                Effect.zipRight(Effect.sleep(Duration.millis(3000 - oneWay))),
                Effect.zipRight(Effect.sync(() => inFlight--)),
                Effect.zipRight(Effect.sleep(trip))
              )
            })
          )
        const request = limiter.withPermit(upstream, { priority: "batch" }).pipe(
          Effect.retry({ while: (error) => error._tag === "RateLimited", schedule: Schedule.spaced("1 second") })
        )
        const run = yield* Effect.fork(
          Effect.all(Array.from({ length: total }, () => request), { concurrency: "unbounded", discard: true }).pipe(
            Effect.zipRight(Clock.currentTimeMillis)
          )
        )
        for (let elapsed = 0; elapsed < 600_000 && run.unsafePoll() === null; elapsed += 250) yield* TestClock.adjust("250 millis")
        const millis = yield* Fiber.join(run)
        return { highest, drops, nearCapAt: nearCap.get(capAt(millis)) ?? Infinity, millis }
      })

    it.effect("slow start reaches the cap though requests replacing ended ones are always on their way", () =>
      Effect.gen(function*() {
        // 400 requests take 12 s at a cap of 100. Counting only the requests accepted and not
        // ended, the limit stalled at 23 (one below it always on its way): 57.8 s.
        const { drops, highest, millis } = yield* roundTripAway(100, 400)
        expect(highest).toBe(100)
        expect(drops).toBeLessThanOrEqual(100 / 8)
        expect(millis).toBeLessThanOrEqual(24_000)
      }), 60_000)

    it.effect("from far away, slow start climbs a step per round trip to a large cap, with at most an eighth of it in 429s", () =>
      Effect.gen(function*() {
        // 250 ms a round trip: one request a round trip under 32, then an eighth, so 8 → 250 takes
        // about 41 round trips, 10 s; 1,000 requests take 12 s at the cap. It held 225 at 10.6 s,
        // drew 25 429s and took 23 s.
        const { drops, highest, millis, nearCapAt } = yield* roundTripAway(250, 1000, 125)
        expect(highest).toBe(250)
        expect(nearCapAt).toBeLessThanOrEqual(45 * 250)
        expect(drops).toBeLessThanOrEqual(250 / 8)
        expect(millis).toBeLessThanOrEqual(26_000)
      }), 60_000)

    it.effect("from far away, probes above the ceiling find a cap that rose", () =>
      Effect.gen(function*() {
        // A cap of 50, 100 from 20 s on. Found at 6 s, held until about 28 s, then probed: a
        // request above the ceiling, and a step each time a replacement's acceptance shows the
        // level held at the top. It held 90 at 38.9 s (33.7 s when a probe's own acceptance
        // counted the replacements on their way too: two steps at a time), with 8 429s.
        const { drops, highest, nearCapAt } = yield* roundTripAway((now) => now < 20_000 ? 50 : 100, 950)
        expect(highest).toBe(100)
        expect(nearCapAt).toBeLessThanOrEqual(45_000)
        expect(drops).toBeLessThanOrEqual(100 / 8)
      }), 60_000)
  })

  describe("simulation", () => {
    /** A deterministic stream of numbers in [0, 1). */
    const lcg = (seed: number) => () => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0
      return seed / 2 ** 32
    }

    /**
     * 600 requests against a fake account whose cap moves 24 → 6 → 32 (each for 200 accepted):
     * the share of requests drawing a 429, per phase the time-weighted in-flight over its second
     * half (by the time its requests were accepted) as a share of the cap, and the makespan as a
     * multiple of the oracle's (always at the cap, no round trips).
     */
    const simulate = (reportAcceptance: boolean) =>
      Effect.gen(function*() {
        const caps = [24, 6, 32]
        const perPhase = 200
        const total = perPhase * caps.length
        const random = lcg(7)
        const serviceMillis = Array.from({ length: total }, () => 2000 + 4000 * random())
        const limiter = yield* ConcurrencyLimiter.makeAdaptive()

        // The fake upstream: an account cap on requests in flight; over it, an immediate 429.
        let accepted = 0
        let inFlight = 0
        let drops = 0
        const capOf = (n: number) => caps[Math.min(caps.length - 1, Math.floor(n / perPhase))]!
        // Every change of in-flight, and when each request was accepted.
        const log: Array<{ readonly at: number; readonly inFlight: number }> = []
        const acceptedAt: Array<number> = []
        const change = (by: number) =>
          Effect.map(Clock.currentTimeMillis, (at) => {
            inFlight += by
            log.push({ at, inFlight })
            if (by > 0) acceptedAt.push(at)
          })
        const upstream = (permit: ConcurrencyLimiter.Permit) =>
          Effect.suspend(() => {
            if (inFlight >= capOf(accepted)) {
              drops++
              return Effect.zipRight(
                Effect.sleep("50 millis"),
                Effect.fail(new RateLimited({ message: "over the account's concurrency", retryAfter: Option.none() }))
              )
            }
            const took = serviceMillis[accepted++]!
            // The 200 and its headers reach the client a 50 ms round trip after the slot is taken.
            const work = reportAcceptance
              ? Effect.zipRight(Effect.zipRight(Effect.sleep("50 millis"), permit.accepted), Effect.sleep(took - 50))
              : Effect.sleep(took)
            return Effect.acquireUseRelease(change(1), () => work, () => change(-1))
          })
        const request = limiter.withPermit(upstream, { priority: "batch" }).pipe(
          Effect.retry({
            while: (error) => error._tag === "RateLimited",
            schedule: Schedule.spaced("1 second")
          })
        )
        const run = yield* Effect.fork(
          Effect.all(Array.from({ length: total }, () => request), { concurrency: "unbounded", discard: true })
        )
        yield* TestClock.adjust("1 hour")
        expect(Exit.isSuccess(yield* Fiber.await(run))).toBe(true)
        expect(accepted).toBe(total)

        const averageInFlight = (from: number, to: number) => {
          let area = 0
          for (const [i, e] of log.entries()) {
            const since = Math.max(e.at, from)
            const until = Math.min(log[i + 1]?.at ?? to, to)
            if (until > since) area += e.inFlight * (until - since)
          }
          return area / (to - from)
        }
        const phaseUse = caps.map((cap, phase) => {
          const start = acceptedAt[phase * perPhase]!
          const end = acceptedAt[(phase + 1) * perPhase - 1]!
          return averageInFlight((start + end) / 2, end) / cap
        })
        const oracle = (() => {
          let now = 0
          let sent = 0
          const ends: Array<number> = []
          while (sent < total || ends.length > 0) {
            while (sent < total && ends.length < capOf(sent)) ends.push(now + serviceMillis[sent++]!)
            ends.sort((a, b) => a - b)
            now = ends.shift()!
          }
          return now
        })()
        return { dropShare: drops / total, phaseUse, makespanRatio: log.at(-1)!.at / oracle }
      })

    // 12 and 10 of 600 drew a 429 as tuned, 1.17× and 1.07× the oracle; acceptances let it hold
    // nearer the cap. The last phase (about 6 rounds at 32) is shorter than a full hold at 6 (8
    // rounds), so how soon its rise is seen depends on where the last probe at 6 fell: the whole
    // run's makespan judges it, not the phase's use.
    for (
      const { maximumRatio, minimumUse, name, reportAcceptance } of [
        {
          name: "converges near an account cap that moves 24 → 6 → 32, with few 429s",
          reportAcceptance: false,
          minimumUse: 0.8,
          maximumRatio: 1.25
        },
        {
          name: "clocked by acceptances, it converges nearer, with as few 429s",
          reportAcceptance: true,
          minimumUse: 0.9,
          maximumRatio: 1.15
        }
      ]
    ) {
      it.effect(name, () =>
        Effect.gen(function*() {
          const { dropShare, makespanRatio, phaseUse } = yield* simulate(reportAcceptance)
          expect(dropShare).toBeLessThanOrEqual(0.02)
          for (const [phase, use] of phaseUse.slice(0, 2).entries()) {
            expect(use, `phase ${phase}`).toBeGreaterThanOrEqual(minimumUse)
          }
          expect(makespanRatio).toBeLessThanOrEqual(maximumRatio)
        }), 60_000)
    }
  })
})
