import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as FastCheck from "effect/FastCheck"
import * as DurationText from "../src/internal/durationText.js"

describe("DurationText", () => {
  it("writes a duration in its largest whole unit", () => {
    expect(DurationText.format(Duration.seconds(30))).toBe("30s")
    expect(DurationText.format(Duration.minutes(2))).toBe("2m")
    expect(DurationText.format(Duration.hours(1))).toBe("1h")
    expect(DurationText.format(Duration.seconds(90))).toBe("90s")
    expect(DurationText.format(Duration.millis(1500))).toBe("1500ms")
    expect(DurationText.format(Duration.zero)).toBe("0ms")
  })

  it("reads a duration in parts, as Duration.format writes one, and refuses what is none", () => {
    for (const [text, ms] of [["1m30s", 90_000], ["1m 30s", 90_000], ["2h30m", 9_000_000], ["1.5s", 1500], [" 500ms ", 500], ["1s500ms", 1500]] as const) {
      expect(Duration.toMillis(DurationText.parse(text)!), text).toBe(ms)
    }
    for (const text of ["", "30", "1d", "1m30", "m", "1m-30s", "1m,30s", "s30"]) expect(DurationText.parse(text), text).toBeUndefined()
    expect(Duration.toMillis(DurationText.parse(Duration.format(Duration.seconds(90)))!)).toBe(90_000)
  })

  it.prop("reads back what it writes", { millis: FastCheck.integer({ min: 0, max: 10 * 86_400_000 }) }, ({ millis }) => {
    const read = DurationText.parse(DurationText.format(Duration.millis(millis)))
    expect(read === undefined ? undefined : Duration.toMillis(read)).toBe(millis)
  })
})
