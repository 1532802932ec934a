import { describe, expect, it } from "@effect/vitest"
import { madeAtFirstCall } from "../src/internal/firstCall.js"

describe("madeAtFirstCall", () => {
  it("makes its function at the first call, once, and passes each call's argument to it", () => {
    const made: Array<number> = []
    const double = madeAtFirstCall(() => {
      made.push(made.length)
      return (n: number) => n * 2
    })
    expect(made).toEqual([])
    expect(double(2)).toBe(4)
    expect(double(5)).toBe(10)
    expect(made).toEqual([0])
  })

  it("passes every argument on: a decoder's options are not dropped", () => {
    const scaled = madeAtFirstCall(() => (n: number, by = 1) => n * by)
    expect(scaled(3)).toBe(3)
    expect(scaled(3, 4)).toBe(12)
  })

  it("keeps a type guard a guard", () => {
    const isText = madeAtFirstCall(() => (u: unknown): u is string => typeof u === "string")
    const value: unknown = "a"
    expect(isText(value)).toBe(true)
    // Read as a string only where the guard narrows it: `tsc` fails here if the guard is lost.
    if (isText(value)) expect(value.length).toBe(1)
    expect(isText(1)).toBe(false)
  })
})
