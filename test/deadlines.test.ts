import { describe, expect, it } from "@effect/vitest"
import { FastCheck } from "effect"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as TestClock from "effect/TestClock"
import { Timeline, Watchdog } from "../src/internal/deadlines.js"

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
