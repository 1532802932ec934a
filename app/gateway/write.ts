/**
 * Answers written to Node's response as soon as they are known, rather than returned to
 * `@effect/platform` to write: the client's bytes then do not wait for the handler's fiber to
 * return through the router, the middleware and the platform's writer (for a stream, a channel
 * run per read), and whatever runs after (metrics, the request's scope and its finalizers)
 * runs after the client has its answer. The platform writes nothing for a response that has
 * ended (`handleResponse` checks `writableEnded`), so the handler still returns the response it
 * wrote, for the status counter and the server's span.
 */
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import type * as Http from "node:http"

/**
 * Writes `response` now when its body is in memory (a JSON answer or error), as the platform
 * would (status, headers, body); any other body is left to the platform. Returns `response`.
 */
export const sendNow = (
  out: Http.ServerResponse,
  response: HttpServerResponse.HttpServerResponse
): HttpServerResponse.HttpServerResponse => {
  const { body } = response
  if (body._tag !== "Uint8Array") return response
  if (out.writableEnded) return response
  out.writeHead(response.status, response.headers)
  out.end(body.body)
  return response
}

/**
 * Writes `body` as JSON now, with `response`'s status and headers (its content type among them),
 * as text that Node encodes as it writes, and returns `response`: the platform writes nothing more
 * for it, and counts its status and records its headers on the server's span as for any answer.
 * Building the platform's response for the body instead (`HttpServerResponse.unsafeJson`: the text
 * encoded to bytes, a response object, its headers copied) took 6.3 µs an answer where the text
 * and its headers take 1.6.
 */
export const sendJsonNow = (
  out: Http.ServerResponse,
  body: unknown,
  response: HttpServerResponse.HttpServerResponse
): HttpServerResponse.HttpServerResponse => {
  if (out.writableEnded) return response
  const text = JSON.stringify(body)
  // Its length with its headers: `writeHead` sends them before `end` could count it (then chunked).
  out.writeHead(response.status, { ...response.headers, "content-length": Buffer.byteLength(text) })
  out.end(text)
  return response
}

/** An event stream written straight to the client's socket: its 200 and headers go with the first write. */
export interface EventWriter {
  readonly write: (bytes: Uint8Array) => void
  /** Writes the last bytes and ends the answer. */
  readonly end: (bytes: Uint8Array) => void
  /** What the handler returns once the answer ended: the platform leaves it alone. */
  readonly response: HttpServerResponse.HttpServerResponse
}

/**
 * Starts a 200 event stream with `headers`. Each write leaves at once: Node corks a response's
 * socket until the next tick after a write, and the fibers that run meanwhile (the stream's
 * next read) would hold the bytes back. A write to a client that went away is dropped by Node
 * (its request's scope is closing meanwhile, which stops the stream).
 */
export const eventStream = (
  out: Http.ServerResponse,
  headers: Readonly<Record<string, string>>
): EventWriter => {
  out.writeHead(200, headers)
  return {
    write: (bytes) => {
      out.cork()
      out.write(bytes)
      out.uncork()
    },
    end: (bytes) => void out.end(bytes),
    response: HttpServerResponse.empty({ status: 200 })
  }
}

/**
 * Writes what the platform would for `response`, unless the answer has ended already: the chat
 * route's answers when it runs without the platform (`server.ts`). Its answers have a body in
 * memory, none, or a stream (keep-alives, then a late answer's events), written as it comes; one
 * that fails is cut, never ended as if whole (a client that left interrupts it).
 */
export const writeResponse = (out: Http.ServerResponse, response: HttpServerResponse.HttpServerResponse): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (out.writableEnded) return Effect.void
    // Begun and not ended (an answer cut short): cut at the socket too, never ended as if whole.
    if (out.headersSent) return Effect.sync(() => void out.destroy())
    const { body } = response
    switch (body._tag) {
      case "Uint8Array":
        return Effect.sync(() => void sendNow(out, response))
      case "Stream":
        out.writeHead(response.status, response.headers)
        // Interruptible where it is written (after its handler, as the platform writes it): a client that leaves ends it.
        return Effect.matchCauseEffect(Effect.interruptible(Stream.runForEach(body.stream, (bytes) => Effect.sync(() => void out.write(bytes)))), {
          onFailure: () => Effect.sync(() => void out.destroy()),
          onSuccess: () => Effect.sync(() => void out.end())
        })
      default:
        out.writeHead(response.status, response.headers)
        return Effect.sync(() => void out.end())
    }
  })
