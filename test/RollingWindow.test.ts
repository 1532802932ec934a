import { describe, expect, it } from "@effect/vitest"
import { RollingWindow } from "../src/internal/rollingWindow.js"

const windowOf = (buckets: number, bucketMillis: number, now: number) =>
  new RollingWindow(["calls"], buckets, bucketMillis, now)

describe("RollingWindow", () => {
  it("loads the counts of a window of its shape, and lets them expire", () => {
    const saved = windowOf(10, 1000, 60_000)
    saved.add(60_000, "calls", 3)
    const loaded = windowOf(10, 1000, 60_000)
    loaded.load(saved.save())
    expect(loaded.totals.calls).toBe(3)
    loaded.advance(70_000)
    expect(loaded.totals.calls).toBe(0)
  })

  it("starts empty from a window whose buckets are of another length, and still moves on", () => {
    // 10 buckets of 500 ms against 10 of 1 s: the same count of buckets does not tell them apart.
    const saved = windowOf(10, 500, 60_000)
    saved.add(60_000, "calls")
    const loaded = windowOf(10, 1000, 60_000)
    loaded.load(saved.save())
    expect(loaded.totals.calls).toBe(0)
    loaded.add(61_000, "calls")
    loaded.advance(120_000)
    // Its newest bucket was kept in its own lengths: a call a minute old has left the window.
    expect(loaded.totals.calls).toBe(0)
  })

  it("takes one back from the bucket a time falls in, only while that bucket is in the window", () => {
    const window = windowOf(10, 1000, 0)
    window.add(500, "calls")
    window.add(2500, "calls", 2)
    expect(window.takeBack(3000, "calls", 1999)).toBe(false)
    expect(window.takeBack(3000, "calls", 2000)).toBe(true)
    expect(window.takeBack(3000, "calls", 2999)).toBe(true)
    expect(window.takeBack(3000, "calls", 2000)).toBe(false)
    expect(window.totals.calls).toBe(1)
    // At 10 s the bucket of 0.5 s has left, and its slot holds the bucket of 10 s.
    window.add(10_000, "calls")
    expect(window.takeBack(10_000, "calls", 500)).toBe(false)
    expect(window.takeBack(10_000, "calls", 10_999)).toBe(true)
    expect(window.totals.calls).toBe(0)
  })
})
