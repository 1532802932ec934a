/**
 * Answers written to Node's response as soon as they are known, rather than returned to
 * `@effect/platform` to write: the client's bytes then do not wait for the handler's fiber to
 * return through the router, the middleware and the platform's writer (for a stream, a channel
 * run per read), and whatever runs after (metrics, the request's scope and its finalizers)
 * runs after the client has its answer. The platform writes nothing for a response that has
 * ended (`handleResponse` checks `writableEnded`), so the handler still returns the response it
 * wrote, for the status counter and the server's span.
 */
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"

/**
 * Writes `response` now when its body is in memory (a JSON answer or error), as the platform
 * would (status, headers, body); any other body is left to the platform. Returns `response`.
 */
export const sendNow = (
  request: HttpServerRequest.HttpServerRequest,
  response: HttpServerResponse.HttpServerResponse
): HttpServerResponse.HttpServerResponse => {
  const { body } = response
  if (body._tag !== "Uint8Array") return response
  const out = NodeHttpServerRequest.toServerResponse(request)
  if (out.writableEnded) return response
  out.writeHead(response.status, response.headers)
  out.end(body.body)
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
  request: HttpServerRequest.HttpServerRequest,
  headers: Readonly<Record<string, string>>
): EventWriter => {
  const out = NodeHttpServerRequest.toServerResponse(request)
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
