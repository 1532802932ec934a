import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import { Signal } from "../src/internal/signal.js"

describe("Signal", () => {
  it.effect("wakes every waiter at the next notify, and none before", () =>
    Effect.gen(function*() {
      const signal = new Signal()
      const waiters = yield* Effect.forEach([1, 2, 3], () => Effect.fork(signal.since(signal.notified)))
      yield* Effect.yieldNow()
      expect(yield* Effect.forEach(waiters, Fiber.poll)).toStrictEqual([
        expect.objectContaining({ _tag: "None" }),
        expect.objectContaining({ _tag: "None" }),
        expect.objectContaining({ _tag: "None" })
      ])
      signal.notify()
      yield* Effect.forEach(waiters, Fiber.join)
    }))

  it.effect("answers at once a wait for a notify that came after the reading", () =>
    Effect.gen(function*() {
      const signal = new Signal()
      const seen = signal.notified
      signal.notify()
      yield* signal.since(seen)
      expect(signal.notified).toBe(1)
    }))

  it.effect("lets a waiter be interrupted, and a later notify still wakes the others", () =>
    Effect.gen(function*() {
      const signal = new Signal()
      const abandoned = yield* Effect.fork(signal.since(0))
      const kept = yield* Effect.fork(signal.since(0))
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(abandoned)
      signal.notify()
      yield* Fiber.join(kept)
      expect((yield* Fiber.await(abandoned))._tag).toBe("Failure")
    }))
})
