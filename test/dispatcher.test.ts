import { describe, expect, it } from "@effect/vitest"
import { fixedPolicy } from "../src/internal/concurrencyLimiter.js"
import { AccountSlot, Dispatcher, Lane } from "../src/internal/dispatcher.js"

/** A dispatcher over `accounts` accounts whose lanes hold `limit` permits each. */
const dispatcherOf = (accounts: number, limit: number) => {
  const slots = Array.from({ length: accounts }, (_, index) => new AccountSlot(index, false, Infinity))
  const dispatcher: Dispatcher = new Dispatcher(
    slots,
    (account, model) => new Lane(account, model, fixedPolicy(limit), (lane) => dispatcher.dispatch(lane.model))
  )
  return dispatcher
}

const granted = (entry: ReturnType<Dispatcher["enter"]>) => {
  if (entry._tag !== "Granted") throw new Error(`expected a grant, got ${entry._tag}`)
  return entry.grant
}

describe("Dispatcher", () => {
  it("a call behind one that waits for another account (it failed over) takes the account that call left out", () => {
    const dispatcher = dispatcherOf(2, 1)
    const long = granted(dispatcher.enter("m", "interactive", new Set()))
    const failing = granted(dispatcher.enter("m", "interactive", new Set()))
    expect(failing.lane.account).not.toBe(long.lane.account)
    // It fails on its account and fails over: it waits for the other, which `long` holds.
    dispatcher.release(failing)
    const failedOver = dispatcher.enter("m", "interactive", new Set([failing.lane.account.index]))
    expect(failedOver._tag).toBe("Queued")
    const next = dispatcher.enter("m", "batch", new Set())
    expect(granted(next).lane.account).toBe(failing.lane.account)
    expect(dispatcher.queued("m")).toBe(1)
    // The waiter keeps its place: the first permit of its account is its own.
    dispatcher.release(long)
    expect(failedOver._tag === "Queued" && failedOver.waiter.grant?.lane.account).toBe(long.lane.account)
    expect(dispatcher.queued("m")).toBe(0)
  })

  it("a call behind waiters that may take the room it finds waits its turn", () => {
    const dispatcher = dispatcherOf(1, 1)
    const held = granted(dispatcher.enter("m", "interactive", new Set()))
    const first = dispatcher.enter("m", "batch", new Set())
    const second = dispatcher.enter("m", "batch", new Set())
    expect([first._tag, second._tag]).toEqual(["Queued", "Queued"])
    dispatcher.release(held)
    expect(first._tag === "Queued" && first.waiter.grant).toBeDefined()
    expect(second._tag === "Queued" && second.waiter.grant).toBeUndefined()
  })
})
