import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import { sendJsonNow, writeResponse } from "../app/gateway/write.js"

/** What the client of one answer saw: its status, headers and whole body, or that the answer was cut (before or after its headers). */
type Seen = { readonly status: number; readonly headers: Headers; readonly body: string } | { readonly body: "cut" }

/** One request to a loopback server whose handler answers with `answer`, run to its end. */
const served = (answer: (response: Http.ServerResponse) => Effect.Effect<void>) =>
  Effect.acquireUseRelease(
    Effect.async<Http.Server>((resume) => {
      const server = Http.createServer((_, response) => void Effect.runFork(answer(response)))
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
    }),
    (server) =>
      Effect.promise(async (): Promise<Seen> => {
        try {
          const answered = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`)
          return { status: answered.status, headers: answered.headers, body: await answered.text() }
        } catch {
          return { body: "cut" }
        }
      }),
    (server) =>
      Effect.async<void>((resume) => {
        server.close(() => resume(Effect.void))
        server.closeAllConnections()
      })
  )

const utf8 = new TextEncoder()

describe("the gateway's writer of a handler's answer (the chat route without the platform)", () => {
  it.live("an answer in memory: its status, headers and body", () =>
    Effect.gen(function*() {
      const seen = yield* served((response) =>
        writeResponse(response, HttpServerResponse.unsafeJson({ error: "busy" }, { status: 429, headers: { "retry-after": "3" } }))
      )
      expect(seen).toMatchObject({ status: 429, body: "{\"error\":\"busy\"}" })
      expect("headers" in seen && seen.headers.get("retry-after")).toBe("3")
      expect("headers" in seen && seen.headers.get("content-type")).toBe("application/json")
    }))

  it.live("a JSON answer written now: 200, its headers, its length in bytes, and nothing more from the platform's writer", () =>
    Effect.gen(function*() {
      const answer = { id: "chatcmpl-1", choices: [{ message: { content: "ça coûte 5 €" } }] }
      const seen = yield* served((response) =>
        Effect.suspend(() => writeResponse(response, sendJsonNow(response, answer, HttpServerResponse.empty({ status: 200, headers: { "content-type": "application/json", "x-weatherproof-cache-status": "miss" } }))))
      )
      const body = JSON.stringify(answer)
      expect(seen).toMatchObject({ status: 200, body })
      expect("headers" in seen && seen.headers.get("content-type")).toBe("application/json")
      expect("headers" in seen && seen.headers.get("x-weatherproof-cache-status")).toBe("miss")
      expect("headers" in seen && seen.headers.get("content-length")).toBe(String(Buffer.byteLength(body)))
    }))

  it.live("a streamed answer: every piece in order, then its end", () =>
    Effect.gen(function*() {
      const pieces = Stream.make("\n", "\n", "{\"id\":1}").pipe(Stream.map((text) => utf8.encode(text)))
      const seen = yield* served((response) =>
        writeResponse(response, HttpServerResponse.stream(pieces, { contentType: "application/json" }))
      )
      expect(seen).toMatchObject({ status: 200, body: "\n\n{\"id\":1}" })
      expect("headers" in seen && seen.headers.get("content-type")).toBe("application/json")
    }))

  it.live("a streamed answer that fails after its first piece is cut, never ended as if whole", () =>
    Effect.gen(function*() {
      const failing = Stream.concat(Stream.make(utf8.encode("\n")), Stream.fail("upstream gone"))
      const seen = yield* served((response) =>
        writeResponse(response, HttpServerResponse.stream(failing, { contentType: "application/json" }))
      )
      expect(seen).toEqual({ body: "cut" })
    }))

  it.live("an answer its handler began and did not end is cut at the socket", () =>
    Effect.gen(function*() {
      const seen = yield* served((response) =>
        Effect.zipRight(
          Effect.sync(() => {
            response.writeHead(200, { "content-type": "application/json" })
            response.write("\n")
          }),
          writeResponse(response, HttpServerResponse.unsafeJson({ late: true }))
        )
      )
      expect(seen).toEqual({ body: "cut" })
    }))

  it.live("an answer its handler ended is left as it is: nothing written again, its connection kept", () =>
    Effect.gen(function*() {
      let destroyed: boolean | undefined
      const seen = yield* served((response) =>
        Effect.zipRight(
          Effect.sync(() => response.end("written")),
          Effect.tap(
            writeResponse(response, HttpServerResponse.unsafeJson({ again: true }, { status: 500 })),
            () => Effect.sync(() => (destroyed = response.destroyed))
          )
        )
      )
      expect(seen).toMatchObject({ status: 200, body: "written" })
      expect(destroyed).toBe(false)
    }))
})
