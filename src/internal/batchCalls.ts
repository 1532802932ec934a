/**
 * The calls of a batch under way, each with where its exchange with the upstream stands
 * (`Transport.CallOptions.onExchange`). A stop ends at once every call with no request on the wire
 * (one waiting for a permit, for a retry's backoff, for an account to come back) and lets the
 * others finish their exchange: an answer ends a call as usual, a failure ends it there, before
 * any other attempt. A call ended so writes nothing, so the next run sends its line again; nothing
 * billed is lost, and a drain lasts only as long as the requests on the wire.
 *
 * @internal
 */
import type * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import type { Exchange } from "../Transport.js"
import { type Entry, Registry } from "./registry.js"

export class Call {
  /** Where its exchange stands; `undefined` before its first request. */
  private exchange: Exchange | undefined = undefined
  /** The fiber running it, once forked. */
  fiber: Fiber.RuntimeFiber<unknown, unknown> | undefined = undefined
  /** Its place among the calls under way. */
  entry: Entry<Call> | undefined = undefined

  constructor(private readonly calls: Calls) {}

  /** Its `onExchange`. */
  told(exchange: Exchange): void {
    this.exchange = exchange
    if (exchange === "failed" && this.calls.stopped) this.end()
  }

  /** Whether a request of its own went out (an answer from the response cache sends none). */
  get sent(): boolean {
    return this.exchange !== undefined
  }

  /** Whether it waits with no request on the wire and no answer read. */
  get waiting(): boolean {
    return this.exchange === undefined || this.exchange === "failed"
  }

  /** Interrupts it as soon as it is interruptible (at once when it is waiting). */
  end(): void {
    this.fiber?.unsafeInterruptAsFork(FiberId.none)
  }
}

export class Calls {
  private readonly running = new Registry<Call>()
  /** Whether the batch stopped. */
  stopped = false

  /** A call starting now, under way until `left`. */
  start(): Call {
    const call = new Call(this)
    call.entry = this.running.add(call)
    return call
  }

  left(call: Call): void {
    if (call.entry !== undefined) this.running.remove(call.entry)
  }

  /** How many calls have a request on the wire, their answer not read yet. */
  get onTheWire(): number {
    let count = 0
    for (const call of this.running.values()) if (!call.waiting) count++
    return count
  }

  /** The batch stops: every waiting call ends now, every other one when its exchange fails. */
  stop(): void {
    this.stopped = true
    for (const call of this.running.values()) if (call.waiting) call.end()
  }
}
