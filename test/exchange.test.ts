import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import type { Dispatcher } from "undici"
import { type Exchange, Exchanges, type Request } from "../src/internal/exchange.js"

/** A dispatcher that only records what it was handed, in order. */
const recording = () => {
  const sent: Array<string> = []
  const handlers: Array<Exchange> = []
  const dispatcher = {
    dispatch: (request: Request, handler: Exchange) => {
      sent.push(request.path)
      handlers.push(handler)
      return true
    }
  } as unknown as Dispatcher
  return { sent, handlers, exchanges: new Exchanges(dispatcher) }
}

const request = (path: string, origin = "http://127.0.0.1:1"): Request => ({ origin, path, method: "POST", headers: {}, body: null })

/** An answer's end as undici tells it: after it returns, undici gives the socket back on the next check phase. */
const answerEnds = (exchange: Exchange) => exchange.onResponseEnd()

/** The end of the event loop's turn: the immediates queued so far have run. */
const turnEnd = () => new Promise<void>((resolve) => setImmediate(() => setImmediate(resolve)))
const turnEnds = Effect.promise(turnEnd)

type Step =
  | { readonly _tag: "send" }
  | { readonly _tag: "answerEnds"; readonly pick: number }
  | { readonly _tag: "abort"; readonly pick: number }
  | { readonly _tag: "turnEnds" }

const step: FastCheck.Arbitrary<Step> = FastCheck.oneof(
  FastCheck.constant({ _tag: "send" as const }),
  FastCheck.record({ _tag: FastCheck.constant("answerEnds" as const), pick: FastCheck.nat() }),
  FastCheck.record({ _tag: FastCheck.constant("abort" as const), pick: FastCheck.nat() }),
  FastCheck.constant({ _tag: "turnEnds" as const })
)

describe("Exchanges", () => {
  it.effect("a request goes at once while no answer is giving its socket back", () =>
    Effect.sync(() => {
      const { exchanges, sent } = recording()
      exchanges.send(request("/a"))
      exchanges.send(request("/b"))
      expect(sent).toEqual(["/a", "/b"])
    }))

  it.live("a request sent as an answer ends waits for that socket, one per ending answer; the rest go at once", () =>
    Effect.gen(function*() {
      const { exchanges, sent } = recording()
      const first = exchanges.send(request("/first"))
      const second = exchanges.send(request("/second"))
      answerEnds(first)
      answerEnds(second)
      exchanges.send(request("/held-1"))
      exchanges.send(request("/held-2"))
      // Two sockets are coming back: a third request needs a connection of its own anyway.
      exchanges.send(request("/beyond"))
      expect(sent).toEqual(["/first", "/second", "/beyond"])
      yield* turnEnds
      expect(sent).toEqual(["/first", "/second", "/beyond", "/held-1", "/held-2"])
      // The sockets are back: nothing is held any more.
      exchanges.send(request("/later"))
      expect(sent.at(-1)).toBe("/later")
    }))

  it.live("a held request aborted before its turn comes is never sent, and fails with the abort's reason", () =>
    Effect.gen(function*() {
      const { exchanges, sent } = recording()
      const answered = exchanges.send(request("/answered"))
      answerEnds(answered)
      const held = exchanges.send(request("/held"))
      const reason = new Error("deadline")
      held.abort(reason)
      yield* turnEnds
      expect(sent).toEqual(["/answered"])
      expect(yield* Effect.flip(held.response)).toBe(reason)
    }))

  it.effect("origins are apart: an answer ending at one holds no request to another", () =>
    Effect.sync(() => {
      const { exchanges, sent } = recording()
      answerEnds(exchanges.send(request("/a", "http://127.0.0.1:1")))
      exchanges.send(request("/b", "http://127.0.0.1:2"))
      expect(sent).toEqual(["/a", "/b"])
    }))

  it("holds a request only while as many answers are giving their sockets back; every request not aborted is sent once, none lost", async () => {
    await FastCheck.assert(
      FastCheck.asyncProperty(FastCheck.array(step, { maxLength: 40 }), async (steps) => {
        const { exchanges, handlers } = recording()
        const created: Array<Exchange> = []
        const aborted = new Set<Exchange>()
        let endingThisTurn = 0
        for (const next of steps) {
          switch (next._tag) {
            case "send":
              created.push(exchanges.send(request(`/${created.length}`)))
              break
            case "answerEnds": {
              const running = handlers.filter((exchange) => !exchange.isEnded)
              const exchange = running[next.pick % Math.max(running.length, 1)]
              if (exchange === undefined) break
              answerEnds(exchange)
              endingThisTurn++
              break
            }
            case "abort": {
              const exchange = created[next.pick % Math.max(created.length, 1)]
              if (exchange === undefined || exchange.isEnded) break
              exchange.abort(new Error("aborted"))
              aborted.add(exchange)
              break
            }
            case "turnEnds":
              await turnEnd()
              endingThisTurn = 0
          }
          const held = created.filter((exchange) => !handlers.includes(exchange) && !aborted.has(exchange))
          expect(held.length).toBeLessThanOrEqual(endingThisTurn)
        }
        await turnEnd()
        expect(new Set(handlers).size).toBe(handlers.length)
        const neverSent = created.filter((exchange) => !handlers.includes(exchange))
        expect(neverSent.every((exchange) => aborted.has(exchange))).toBe(true)
      }),
      { numRuns: 100 }
    )
  })
})
