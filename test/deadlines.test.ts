import { describe, expect, it } from "@effect/vitest"
import { Deferred, FastCheck, Fiber } from "effect"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as TestClock from "effect/TestClock"
import { DeadlineExceeded } from "../src/ApiError.js"
import { type Limits, Timeline, Watchdog } from "../src/internal/deadlines.js"
import { processClock } from "./support/processClock.js"

const callArbitrary = FastCheck.record({
  /** Seconds to the call's first-content deadline. */
  deadline: FastCheck.integer({ min: 1, max: 50 }),
  /** Whether the call ends (is no longer watched) before any time passes. */
  ended: FastCheck.boolean()
})

describe("Watchdog", () => {
  it.effect.prop(
    "aborts each watched call once its deadline passes, once, and no call it stopped watching",
    [FastCheck.array(callArbitrary, { maxLength: 24 }), FastCheck.integer({ min: 0, max: 60 })],
    ([calls, elapsed]) =>
      Effect.gen(function*() {
        const watchdog = new Watchdog()
        const aborted: Array<number> = []
        const timelines = yield* Effect.forEach(calls, ({ deadline }, index) =>
          Effect.gen(function*() {
            const timeline = yield* Timeline.start({ firstContent: deadline * 1000, idle: Infinity, total: Infinity }, undefined)
            timeline.underWay = { abort: () => aborted.push(index) }
            yield* watchdog.watch(timeline)
            return timeline
          }))
        calls.forEach(({ ended }, index) => {
          if (ended) watchdog.unwatch(timelines[index]!)
        })

        yield* TestClock.adjust(Duration.seconds(elapsed))
        const due = calls.flatMap(({ deadline, ended }, index) => !ended && deadline <= elapsed ? [index] : [])
        expect([...aborted].sort((a, b) => a - b)).toEqual(due)
        for (const index of due) expect(timelines[index]!.expired?.reason).toBe("first_content")

        // The calls still watched end too (an expired one was already let go); nothing more is aborted.
        for (const timeline of timelines) watchdog.unwatch(timeline)
        yield* TestClock.adjust(Duration.seconds(60))
        expect(aborted).toHaveLength(due.length)
      })
  )
})

describe("a process stopped past a deadline", () => {
  const limits: Limits = { firstContent: 5_000, idle: 5_000, total: Infinity }

  /** A watchdog on a stoppable clock, and calls it watches that record their abort in `aborted`. */
  const stoppableWatchdog = Effect.gen(function*() {
    const { clock, lagEveryWake, stop } = yield* processClock
    const watchdog = new Watchdog()
    const aborted: Array<string> = []
    const watched = (name: string) =>
      Effect.gen(function*() {
        const timeline = yield* Timeline.start(limits, undefined)
        timeline.underWay = { abort: () => aborted.push(name) }
        yield* watchdog.watch(timeline)
        return timeline
      }).pipe(Effect.withClock(clock))
    return { stop, lagEveryWake, aborted, watched }
  })

  it.effect("the watchdog judges a call once what arrived while the process was stopped is read", () =>
    Effect.gen(function*() {
      const { stop, aborted, watched } = yield* stoppableWatchdog
      const answered = yield* watched("answered")
      const silent = yield* watched("silent")
      yield* TestClock.adjust("3 seconds")
      stop("15 seconds")
      // The watchdog's timer fires 15 s late: the answer that came meanwhile is still unread.
      yield* TestClock.adjust("2 seconds")
      expect(aborted).toEqual([])
      answered.markContent(answered.now())
      yield* TestClock.adjust("1 second")
      expect(aborted).toEqual(["silent"])
      expect(silent.expired?.reason).toBe("first_content")
    }))

  it.effect("a loop that stays behind delays the watchdog's judgement boundedly", () =>
    Effect.gen(function*() {
      const { aborted, lagEveryWake, watched } = yield* stoppableWatchdog
      yield* watched("silent")
      // Every wake is two seconds late: the event loop never catches up.
      lagEveryWake("2 seconds")
      yield* TestClock.adjust("5 seconds")
      for (let step = 0; step < 100 && aborted.length === 0; step++) yield* TestClock.adjust("100 millis")
      expect(aborted).toEqual(["silent"])
    }))

  it.effect("a guarded wait is judged once what arrived while the process was stopped is read", () =>
    Effect.gen(function*() {
      const { clock, stop } = yield* processClock
      const guarded = (arrives: Deferred.Deferred<string>) =>
        Effect.flatMap(Timeline.start(limits, undefined), (timeline) => timeline.guard(Deferred.await(arrives))).pipe(
          Effect.withClock(clock),
          Effect.fork
        )
      const arrives = yield* Deferred.make<string>()
      const answered = yield* guarded(arrives)
      const silent = yield* guarded(yield* Deferred.make<string>())
      yield* TestClock.adjust("3 seconds")
      stop("15 seconds")
      yield* TestClock.adjust("2 seconds")
      yield* Deferred.succeed(arrives, "data: {}")
      yield* TestClock.adjust("1 second")
      expect(yield* Fiber.join(answered)).toBe("data: {}")
      const error = yield* Effect.flip(Fiber.join(silent))
      expect(error).toBeInstanceOf(DeadlineExceeded)
      expect(error).toMatchObject({ reason: "first_content" })
    }))
})

describe("a step of the system clock", () => {
  const limits: Limits = { firstContent: 10_000, idle: Infinity, total: Infinity }

  it.effect("forwards, it cuts no call early: a wait that starts after it is judged by the time that passed", () =>
    Effect.gen(function*() {
      const { clock, stepWall } = yield* processClock
      const timeline = yield* Effect.withClock(Timeline.start(limits, undefined), clock)
      const keptAlive = yield* Deferred.make<string>()
      const content = yield* Deferred.make<string>()
      const waits = yield* Effect.fork(Effect.withClock(
        Effect.zip(timeline.guard(Deferred.await(keptAlive)), timeline.guard(Deferred.await(content))),
        clock
      ))
      yield* TestClock.adjust("3 seconds")
      stepWall(3_600_000)
      yield* Deferred.succeed(keptAlive, ": keep-alive")
      yield* TestClock.adjust("3 seconds")
      yield* Deferred.succeed(content, "data: {}")
      expect(yield* Fiber.join(waits)).toEqual([": keep-alive", "data: {}"])
    }))

  it.effect("back, it delays no deadline: a silent call is cut when its time has passed", () =>
    Effect.gen(function*() {
      const { clock, stepWall } = yield* processClock
      const silent = yield* Effect.fork(Effect.withClock(
        Effect.flatMap(Timeline.start(limits, undefined), (timeline) => timeline.guard(Effect.never)),
        clock
      ))
      yield* TestClock.adjust("3 seconds")
      stepWall(-3_600_000)
      yield* TestClock.adjust("7 seconds")
      const error = yield* Effect.flip(Fiber.join(silent))
      expect(error).toBeInstanceOf(DeadlineExceeded)
      expect(error).toMatchObject({ reason: "first_content" })
    }))

  /** A watchdog on a clock whose wall time steps, and calls it watches that record their abort in `aborted`. */
  const steppedWatchdog = Effect.gen(function*() {
    const { clock, stepWall } = yield* processClock
    const watchdog = new Watchdog()
    const aborted: Array<string> = []
    const watched = (name: string, firstContent: number) =>
      Effect.gen(function*() {
        const timeline = yield* Timeline.start({ firstContent, idle: Infinity, total: Infinity }, undefined)
        timeline.underWay = { abort: () => aborted.push(name) }
        yield* watchdog.watch(timeline)
      }).pipe(Effect.withClock(clock))
    return { stepWall, aborted, watched }
  })

  it.effect("back, the watchdog cuts a call when its time has passed", () =>
    Effect.gen(function*() {
      const { aborted, stepWall, watched } = yield* steppedWatchdog
      yield* watched("silent", 10_000)
      yield* TestClock.adjust("3 seconds")
      stepWall(-3_600_000)
      yield* TestClock.adjust("7 seconds")
      expect(aborted).toEqual(["silent"])
    }))

  it.effect("forwards, the watchdog cuts only the calls whose deadline passed", () =>
    Effect.gen(function*() {
      const { aborted, stepWall, watched } = yield* steppedWatchdog
      yield* watched("soon", 5_000)
      yield* watched("later", 60_000)
      yield* TestClock.adjust("2 seconds")
      stepWall(3_600_000)
      yield* TestClock.adjust("4 seconds")
      expect(aborted).toEqual(["soon"])
      yield* TestClock.adjust("54 seconds")
      expect(aborted).toEqual(["soon", "later"])
    }))
})
