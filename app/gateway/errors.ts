/**
 * What the gateway answers when a call fails: the OpenAI error shape
 * `{"error":{"message","type","param","code"}}`, with the status an OpenAI client maps to its own
 * error classes (400 `BadRequestError`, 401 `AuthenticationError`, 429 `RateLimitError`, 5xx
 * `InternalServerError`), and `Retry-After` where a wait is known.
 *
 * Every message passes through a scrubber that removes the upstream keys (and anything shaped
 * like a key) before it leaves the process.
 */
import type { Scrubber } from "../../src/internal/scrubber.js"
import { clipped } from "../../src/internal/text.js"
import type { RoutingRefused } from "../../src/Router.js"
import type { ResilientError } from "../../src/Resilient.js"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"

/** The client sent no gateway key, or a wrong one. */
export class Unauthorized extends Data.TaggedError("Unauthorized")<{ readonly message: string }> {}

/** The request body is not a chat completion request. */
export class BadRequest extends Data.TaggedError("BadRequest")<{
  readonly message: string
  readonly param?: string | undefined
}> {}

/** The longest model name quoted back: the name is the client's own text. */
const maxQuotedModel = 100

/**
 * The request asks for a model the gateway does not serve (after routing). Refused before any
 * call: each model served has a lane, metric series and prices of its own, so the models are
 * the operator's to list, not any client's to invent.
 */
export class UnknownModel extends Data.TaggedError("UnknownModel")<{ readonly model: string }> {
  override get message(): string {
    return `the model ${JSON.stringify(clipped(this.model, maxQuotedModel))} is not served here; GET /v1/models lists the models this gateway serves`
  }
}

/** The longest path quoted back in a 404. */
const maxQuotedPath = 200

/** No route has this method and path. */
export class NoSuchRoute extends Data.TaggedError("NoSuchRoute")<{ readonly method: string; readonly path: string }> {
  override get message(): string {
    return `no such route: ${this.method} ${clipped(this.path, maxQuotedPath)}; this gateway serves POST /v1/chat/completions, GET /v1/models and GET /v1/models/{model}`
  }
}

/**
 * A keyless gateway refused a request that may come from a web page: an `Origin` that is not
 * local, or a `Host` that is not a name of this machine (DNS rebinding).
 */
export class RefusedBrowser extends Data.TaggedError("RefusedBrowser")<{
  readonly header: "origin" | "host"
  readonly value: string
}> {
  override get message(): string {
    const quoted = JSON.stringify(clipped(this.value, maxQuotedPath))
    const what = this.header === "origin" ? `from a web page (Origin: ${quoted})` : `addressed to ${quoted}`
    return `a request ${what} is refused: without gateway keys this gateway answers only programs on this machine, addressing it as localhost, 127.0.0.1 or [::1]; set WEATHERPROOF_GATEWAY_KEYS to serve others`
  }
}

/** Too many clients wait already: the gateway's queue is full. */
export class GatewayBusy extends Data.TaggedError("GatewayBusy")<{ readonly waiting: number }> {
  override get message(): string {
    return `the gateway's queue is full (${this.waiting} requests waiting); try again shortly`
  }
}

/** The gateway is shutting down: it takes no new request, and cut the calls still running at the drain deadline. */
export class ShuttingDown extends Data.TaggedError("ShuttingDown")<{}> {
  override get message(): string {
    return "the gateway is shutting down"
  }
}

/**
 * Every failure a chat request can end in.
 */
export type GatewayError =
  | ResilientError
  | RoutingRefused
  | Unauthorized
  | BadRequest
  | UnknownModel
  | NoSuchRoute
  | RefusedBrowser
  | GatewayBusy
  | ShuttingDown

/** An error as the client sees it. */
export interface ErrorReply {
  readonly status: number
  readonly type: string
  readonly code: string
  readonly message: string
  readonly param?: string | undefined
  /** Sent as `Retry-After` (whole seconds, rounded up). */
  readonly retryAfter?: Duration.Duration | undefined
}

/** `RateLimited` → `rate_limited`: the error's tag, as OpenAI-style codes are written. */
const codeOf = (tag: string): string => tag.replace(/(?<=[a-z])([A-Z])/g, "_$1").toLowerCase()

/** When a queue is full and nothing better is known, come back in a second. */
const busyRetryAfter = Duration.seconds(1)

const upstream = (error: { readonly _tag: string; readonly message: string }, status = 502): ErrorReply => ({
  status,
  type: "upstream_error",
  code: codeOf(error._tag),
  message: error.message
})

/** The status, type and code of each failure; see docs/gateway.md for the table. */
export const replyOf = (error: GatewayError): ErrorReply => {
  switch (error._tag) {
    case "Unauthorized":
      return { status: 401, type: "invalid_request_error", code: "invalid_api_key", message: error.message }
    case "BadRequest":
      return { status: 400, type: "invalid_request_error", code: "invalid_request", message: error.message, param: error.param }
    case "RoutingRefused":
      return { status: 400, type: "invalid_request_error", code: "routing_refused", message: error.message }
    case "UnknownModel":
      return { status: 404, type: "invalid_request_error", code: "model_not_found", message: error.message, param: "model" }
    case "RefusedBrowser":
      return { status: 403, type: "invalid_request_error", code: "forbidden", message: error.message }
    case "NoSuchRoute":
      return { status: 404, type: "invalid_request_error", code: "not_found", message: error.message }
    case "InvalidRequest":
      return {
        status: error.status,
        type: "invalid_request_error",
        code: error.code ?? codeOf(error._tag),
        message: error.message,
        param: error.param
      }
    case "GatewayBusy":
    case "QueueFull":
      return { status: 429, type: "rate_limit_error", code: codeOf(error._tag), message: error.message, retryAfter: busyRetryAfter }
    case "RateLimited":
    case "RateLimitExceeded":
      return {
        status: 429,
        type: "rate_limit_error",
        code: codeOf(error._tag),
        message: error.message,
        retryAfter: Option.getOrElse(error.retryAfter, () => busyRetryAfter)
      }
    case "NoAccountAvailable":
      return {
        status: 503,
        type: "service_unavailable",
        code: "no_account_available",
        message: error.message,
        retryAfter: Option.getOrUndefined(error.retryAfter)
      }
    case "BudgetExceeded":
      return { status: 402, type: "insufficient_quota", code: "budget_exceeded", message: error.message }
    case "CircuitOpen":
      return {
        status: 503,
        type: "service_unavailable",
        code: "circuit_open",
        message: error.message,
        retryAfter: Option.getOrUndefined(error.retryAfter)
      }
    case "ShuttingDown":
      // Another replica, or this one restarted, may serve it.
      return { status: 503, type: "service_unavailable", code: "shutting_down", message: error.message, retryAfter: busyRetryAfter }
    case "DeadlineExceeded":
      return { ...upstream(error, 504), type: "timeout" }
    case "ServerError":
      // An overloaded upstream's wait (its Retry-After) is the client's too.
      return error.status === 503
        ? { ...upstream(error, 503), retryAfter: Option.getOrUndefined(error.retryAfter) }
        : upstream(error, 502)
    case "UpstreamError":
      // An `{"error": …}` event or body: the upstream's own type and code reach the client.
      return { status: 502, type: error.type ?? "upstream_error", code: error.code ?? "upstream_error", message: error.message }
    case "KeyRejected":
    case "NoUsableKey":
    case "InsufficientBalance":
    case "UnexpectedStatus":
    case "TransportError":
    case "MalformedResponse":
    case "StreamTruncated":
    case "InsufficientResource":
      return upstream(error)
  }
}

/** A defect (a bug): the client learns only that the gateway failed. */
export const internalError: ErrorReply = {
  status: 500,
  type: "server_error",
  code: "internal_error",
  message: "the gateway failed to handle the request"
}

/** The OpenAI error body of a reply, every text scrubbed (some come from the upstream). */
export const errorBody = (reply: ErrorReply, scrub: Scrubber) => ({
  error: {
    message: scrub(reply.message),
    type: scrub(reply.type),
    param: reply.param === undefined ? null : scrub(reply.param),
    code: scrub(reply.code)
  }
})

/**
 * Headers of an error answer: `Retry-After` in whole seconds when a wait is known, and
 * `Connection: close` from a gateway shutting down (its client's next request goes elsewhere).
 */
export const errorHeaders = (reply: ErrorReply): Record<string, string> => ({
  ...(reply.retryAfter === undefined ? {} : { "retry-after": String(Math.max(1, Math.ceil(Duration.toSeconds(reply.retryAfter)))) }),
  ...(reply.code === "shutting_down" ? { connection: "close" } : {})
})
