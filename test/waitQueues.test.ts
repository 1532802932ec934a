import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import type { Priority } from "../src/ConcurrencyLimiter.js"
import { WaitQueues } from "../src/internal/waitQueues.js"

interface Waiter {
  readonly arrival: number
  readonly priority: Priority
  readonly returning: boolean
}

/** The order `WaitQueues` serves in: interactive first, a returning caller first within a priority, then arrival. */
const rank = (waiter: Waiter) => (waiter.priority === "batch" ? 2 : 0) + (waiter.returning ? 0 : 1)
const servedOrder = (waiters: ReadonlyArray<Waiter>) =>
  [...waiters].sort((a, b) => rank(a) - rank(b) || a.arrival - b.arrival)

type Op =
  | { readonly _tag: "add"; readonly priority: Priority; readonly returning: boolean }
  | { readonly _tag: "delete"; readonly pick: number }
  | { readonly _tag: "shift" }

const op: FastCheck.Arbitrary<Op> = FastCheck.oneof(
  FastCheck.record({
    _tag: FastCheck.constant("add" as const),
    priority: FastCheck.constantFrom<Priority>("interactive", "batch"),
    returning: FastCheck.boolean()
  }),
  FastCheck.record({ _tag: FastCheck.constant("delete" as const), pick: FastCheck.nat() }),
  FastCheck.record({ _tag: FastCheck.constant("shift" as const) })
)

describe("WaitQueues", () => {
  it("serves interactive before batch, a returning caller ahead of those not yet sent, arrival order otherwise; nothing lost or served twice", () => {
    FastCheck.assert(
      FastCheck.property(FastCheck.array(op, { maxLength: 60 }), (ops) => {
        const queues = new WaitQueues<Waiter>()
        let model: Array<Waiter> = []
        ops.forEach((step, arrival) => {
          if (step._tag === "add") {
            const waiter = { arrival, priority: step.priority, returning: step.returning }
            queues.add(waiter, waiter.priority, waiter.returning)
            model.push(waiter)
          } else if (step._tag === "delete") {
            const waiter = model[step.pick % Math.max(1, model.length)]
            if (waiter === undefined) return
            expect(queues.delete(waiter)).toBe(true)
            expect(queues.delete(waiter)).toBe(false)
            model = model.filter((w) => w !== waiter)
          } else {
            const expected = servedOrder(model)[0]
            expect(queues.shift()).toBe(expected)
            model = model.filter((w) => w !== expected)
          }
          expect(queues.size).toBe(model.length)
        })
        const visited: Array<Waiter> = []
        queues.forEach((waiter) => (visited.push(waiter), true))
        expect(visited).toEqual(servedOrder(model))
        const taken = queues.takeAll()
        expect(taken.map(({ waiter }) => waiter)).toEqual(servedOrder(model))
        expect(taken.every(({ priority, waiter }) => priority === waiter.priority)).toBe(true)
        expect(queues.size).toBe(0)
      })
    )
  })

  it("forEach stops when the visitor answers false, and a visitor may delete the waiter it is given", () => {
    const queues = new WaitQueues<string>()
    queues.add("batch", "batch", false)
    queues.add("first", "interactive", false)
    queues.add("retry", "interactive", true)
    const visited: Array<string> = []
    queues.forEach((waiter) => {
      visited.push(waiter)
      queues.delete(waiter)
      return waiter !== "first"
    })
    expect(visited).toEqual(["retry", "first"])
    expect(queues.takeAll()).toEqual([{ waiter: "batch", priority: "batch" }])
  })
})
