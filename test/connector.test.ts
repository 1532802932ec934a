import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Net from "node:net"
import * as Connector from "../src/internal/connector.js"

/** A loopback server counting the connections it accepted; `close` stops it. */
const listening = () =>
  new Promise<{ readonly port: number; readonly accepted: () => number; readonly close: () => Promise<void> }>((resolve) => {
    let accepted = 0
    const sockets = new Set<Net.Socket>()
    const server = Net.createServer((socket) => {
      accepted++
      sockets.add(socket)
    }).listen(0, "127.0.0.1", () =>
      resolve({
        port: (server.address() as Net.AddressInfo).port,
        accepted: () => accepted,
        close: () =>
          new Promise((done) => {
            for (const socket of sockets) socket.destroy()
            server.close(() => done())
          })
      }))
  })

/** Waits, live and bounded, until `done` holds. */
const until = (done: () => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 100 && !done(); i++) yield* Effect.sleep("10 millis")
  })

describe("Connector.preconnect", () => {
  it.live("settles once: at the first connection that opens, or with the last error when every one failed", () =>
    Effect.gen(function*() {
      const connector = Connector.make({ idleMillis: 1_000 })
      const server = yield* Effect.promise(listening)
      const settled: Array<Error | undefined> = []
      connector.preconnect(`http://127.0.0.1:${server.port}`, 3, (error) => settled.push(error))
      yield* until(() => server.accepted() === 3)
      yield* Effect.sleep("50 millis")
      expect(server.accepted()).toBe(3)
      expect(settled).toEqual([undefined])
      yield* Effect.promise(() => server.close())

      // The same port, nothing listening now: three refusals, one report.
      settled.length = 0
      connector.preconnect(`http://127.0.0.1:${server.port}`, 3, (error) => settled.push(error))
      yield* until(() => settled.length > 0)
      yield* Effect.sleep("50 millis")
      expect(settled.map((error) => (error as NodeJS.ErrnoException).code)).toEqual(["ECONNREFUSED"])
      connector.close()
    }))
})
