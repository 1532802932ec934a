import { describe, expect, it } from "@effect/vitest"
import { ratioText } from "../bench/table.js"

describe("the bench's verdict lines", () => {
  it("print a ratio to two decimals, or to as many more as tell it from its bound", () => {
    expect(ratioText(1.504, 1.5)).toBe("1.504")
    expect(ratioText(1.4951, 1.5)).toBe("1.495")
    expect(ratioText(1.50004, 1.5)).toBe("1.50004")
    expect(ratioText(1.5, 1.5)).toBe("1.50")
    expect(ratioText(0.7556, 0.8)).toBe("0.76")
    expect(ratioText(1.18, 1.2)).toBe("1.18")
  })
})
