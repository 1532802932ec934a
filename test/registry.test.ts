import { describe, expect, it } from "@effect/vitest"
import { FastCheck } from "effect"
import { type Entry, Registry } from "../src/internal/registry.js"

/** An operation: add a new member, or remove the n-th entry handed out (again, if it left already). */
const operation = FastCheck.oneof(
  FastCheck.constant({ _tag: "Add" } as const),
  FastCheck.record({ _tag: FastCheck.constant("Remove" as const), nth: FastCheck.nat(40) })
)

describe("Registry", () => {
  it.prop(
    "holds exactly the members added and not removed, whatever the order, and a second removal changes nothing",
    [FastCheck.array(operation, { maxLength: 60 })],
    ([operations]) => {
      const registry = new Registry<number>()
      const entries: Array<Entry<number>> = []
      const model = new Set<number>()
      for (const op of operations) {
        if (op._tag === "Add") {
          entries.push(registry.add(entries.length))
          model.add(entries.length - 1)
        } else if (entries.length > 0) {
          const entry = entries[op.nth % entries.length]!
          registry.remove(entry)
          model.delete(entry.value)
        }
        expect(registry.size).toBe(model.size)
        expect(registry.values().sort((a, b) => a - b)).toEqual([...model].sort((a, b) => a - b))
      }
    }
  )
})
