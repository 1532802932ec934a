/**
 * A mark set on an error is read on the error a caller catches, under a span too: Effect fails an
 * error under a span as a copy that carries it.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as ObjectMark from "../src/internal/objectMark.js"

describe("ObjectMark", () => {
  it.effect("marks an error and reads the mark on the copy a span makes of it, and the other way round", () =>
    Effect.gen(function*() {
      const marks = ObjectMark.make()
      const error = new Error("boom")
      marks.mark(error)
      const caught = yield* Effect.flip(Effect.withSpan(Effect.fail(error), "caller"))
      expect(caught).not.toBe(error)
      expect(marks.has(caught)).toBe(true)
      const other = new Error("bang")
      const copy = yield* Effect.flip(Effect.withSpan(Effect.fail(other), "caller"))
      marks.mark(copy)
      expect(marks.has(other)).toBe(true)
      expect(marks.has("not an object")).toBe(false)
    }))
})
