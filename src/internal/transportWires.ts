/**
 * How the transport reaches the upstream: one exchange under the call's timeline, made either
 * - over `Transport.nodeHttpClient`'s own undici dispatcher (`undiciWire`): the request is
 *   dispatched with a handler whose callbacks resume the waiting effect (`Exchange`), with no
 *   fiber, Node stream, abort controller or timer per call or per read; the deadlines are the
 *   watchdog's, which aborts the exchange of a call past its own;
 *   while a tracer is installed, each exchange in the HTTP client span the platform's client
 *   would make (`inClientSpans`);
 * - or over any `HttpClient` (`clientWire`): `@effect/platform`'s request and response, each wait
 *   under its own timeout. This is the path of a client the transport cannot see through (a test
 *   double, a client wrapped by the caller).
 *
 * @internal
 */
import * as Headers from "@effect/platform/Headers"
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import * as HttpTraceContext from "@effect/platform/HttpTraceContext"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { DeadlineExceeded } from "../ApiError.js"
import type { Timeline, Watchdog } from "./deadlines.js"
import type { Exchange, Exchanges } from "./exchange.js"
import * as ScopeFinalizer from "./scopeFinalizer.js"
import type { Connector } from "./connector.js"

/** The request failed before a status arrived; `fromRequest` when the request itself did (a stale socket may be why). */
export interface Unsent {
  readonly _tag: "Unsent"
  readonly cause: unknown
  readonly fromRequest: boolean
}

/** The body stopped arriving before its end. */
export interface BodyBroken {
  readonly _tag: "BodyBroken"
  readonly cause: unknown
}

/** The reads of a streamed body. */
export interface Reads {
  /** The reads that arrived (at least one), waiting for them; `undefined` at the body's end. */
  readonly next: Effect.Effect<ReadonlyArray<Uint8Array> | undefined, BodyBroken | DeadlineExceeded>
  /**
   * After the last event, reads the rest for a moment (`drainAfterDone`, normally just the chunked
   * terminator): a body read to its end gives its connection back to the pool, an aborted one
   * destroys it (and the next call pays a new handshake).
   */
  readonly finish: Effect.Effect<void>
}

/** A response as the transport reads it. */
export interface Reply {
  readonly status: number
  readonly headers: Readonly<Record<string, string | undefined>>
  /** The whole body of an error status; `""` when it cannot be read. */
  readonly errorText: Effect.Effect<string, DeadlineExceeded>
  /**
   * The whole body of a non-streaming answer. Reads holding more than JSON whitespace are
   * content for the timeline; the keep-alive whitespace before the first one is not kept.
   */
  readonly completionText: Effect.Effect<string, BodyBroken | DeadlineExceeded>
  /** The body as a stream's reads, for the scope. */
  readonly reads: Effect.Effect<Reads, never, Scope.Scope>
}

export interface Wire {
  /**
   * Sends a POST of `body` with `authorization` (and `traceHeaders`, where the wire takes them);
   * the reply once its status and headers arrived.
   */
  readonly send: (
    body: string,
    authorization: string,
    timeline: Timeline,
    traceHeaders?: Headers.Headers
  ) => Effect.Effect<Reply, Unsent | DeadlineExceeded>
  /** Runs `call` with `timeline`'s deadlines enforced throughout. */
  readonly within: <A, E, R>(timeline: Timeline, call: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** Enforces `timeline`'s deadlines for the scope. */
  readonly watchScoped: (timeline: Timeline) => Effect.Effect<void, never, Scope.Scope>
}

const drainAfterDone = Duration.seconds(1)

/** JSON whitespace: DeepSeek sends blank lines before the body while the request is queued. */
const hasContent = (bytes: Uint8Array): boolean => {
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]
    if (b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09) return true
  }
  return false
}

const utf8 = new TextDecoder()

/**
 * A body's reads decoded at once, a character split between two reads included: one decoder for
 * every body, where one made for each took longer than its decoding (ICU opens a converter each).
 */
const decodeWhole = (reads: ReadonlyArray<Uint8Array>): string => utf8.decode(reads.length === 1 ? reads[0] : Buffer.concat(reads))

/**
 * Collects a non-streaming body: the reads from the first one with content on, decoded at its
 * end; the time of each read goes to the timeline, as content or as a keep-alive before it.
 */
const bodyCollector = (timeline: Timeline) => {
  const reads: Array<Uint8Array> = []
  let started = false
  return {
    /** Takes a read; whether it held content. */
    add: (bytes: Uint8Array): boolean => {
      const content = hasContent(bytes)
      if (content) timeline.markContent(timeline.now())
      else timeline.keepAliveArrived(timeline.now())
      started ||= content
      if (started) reads.push(bytes)
      return content
    },
    text: (): string => decodeWhole(reads)
  }
}

// ---------------------------------------------------------------------------------------------
// Over undici
// ---------------------------------------------------------------------------------------------

/** What an abandoned exchange is aborted with. */
const abandoned = new Error("the response was abandoned before its end")

/** One header value: undici gives repeated headers as arrays. */
const headerRecord = (headers: Exchange["headers"]): Record<string, string | undefined> => {
  const record: Record<string, string | undefined> = {}
  for (const [name, value] of Object.entries(headers)) record[name] = Array.isArray(value) ? value.join(", ") : value
  return record
}

/** The error of a wait that failed: the deadline's own, or the exchange's. */
const brokenOr = (timeline: Timeline) => (cause: unknown): BodyBroken | DeadlineExceeded =>
  timeline.expiredBy(cause) ?? { _tag: "BodyBroken", cause }

/**
 * The reply of an undici exchange. A class rather than an object literal with a `headers` getter:
 * V8 allocates such a getter in the old generation, and all it reaches (the exchange, its headers
 * and body) then outlives every young collection until a full one (exchanges wrapped in such a
 * literal promoted 26 MB per 5,000 calls, 5.8 MB without the getter).
 */
class UndiciReply implements Reply {
  readonly status: number
  private headerRecord: Record<string, string | undefined> | undefined

  constructor(
    private readonly exchange: Exchange,
    private readonly timeline: Timeline,
    private readonly watchdog: Watchdog
  ) {
    this.status = exchange.status
  }

  get headers(): Record<string, string | undefined> {
    return this.headerRecord ??= headerRecord(this.exchange.headers)
  }

  get errorText(): Effect.Effect<string, DeadlineExceeded> {
    const { exchange, timeline } = this
    return Effect.suspend(() => {
      const reads: Array<Uint8Array> = []
      return exchange.readAll((bytes) => reads.push(bytes)).pipe(
        Effect.matchEffect({
          onSuccess: () => Effect.succeed(decodeWhole(reads)),
          onFailure: (cause) => {
            const expired = timeline.expiredBy(cause)
            return expired === undefined ? Effect.succeed("") : Effect.fail(expired)
          }
        })
      )
    })
  }

  /**
   * The reads up to the first with content (keep-alive blank lines before it), then the rest at
   * once under the idle deadline: the first content, or keep-alives, bring the call's deadline
   * nearer than the watchdog's next wake (the first-content deadline, or none), so it is told
   * (`waitFor`), unless the body has ended already (the common case: nothing is left to wait for,
   * and no sleeper to move).
   */
  get completionText(): Effect.Effect<string, BodyBroken | DeadlineExceeded> {
    const { exchange, timeline, watchdog } = this
    return Effect.suspend(() => {
      const body = bodyCollector(timeline)
      const rest = exchange.readAll(body.add)
      const untilContent: Effect.Effect<void, unknown> = Effect.flatMap(exchange.take, (reads) => {
        if (reads.length === 0) return Effect.void
        let content = false
        for (const bytes of reads) content = body.add(bytes) || content
        return !content
          ? watchdog.waitFor(timeline, untilContent)
          : exchange.isEnded
          ? rest
          : watchdog.waitFor(timeline, rest)
      })
      return untilContent.pipe(
        Effect.mapError(brokenOr(timeline)),
        Effect.zipRight(timeline.reportFirstContent),
        Effect.map(body.text)
      )
    })
  }

  // Built when asked for: a non-streaming answer never reads its body this way.
  get reads(): Effect.Effect<Reads> {
    return Effect.sync(() => undiciReads(this.exchange, this.timeline, this.watchdog))
  }
}

/** The reads of a stream's body; the stream's scope aborts the exchange if it ends first (`watchScoped`). */
const undiciReads = (exchange: Exchange, timeline: Timeline, watchdog: Watchdog): Reads => ({
  next: watchdog.waitFor(
    timeline,
    Effect.mapBoth(exchange.take, {
      onFailure: brokenOr(timeline),
      onSuccess: (reads) => {
        timeline.waiting = false
        return reads.length === 0 ? undefined : reads
      }
    })
  ),
  finish: Effect.suspend(() => {
    if (exchange.isEnded) return Effect.void
    timeline.drainFor(Duration.toMillis(drainAfterDone))
    return Effect.ignore(watchdog.waitFor(timeline, exchange.readAll(() => undefined)))
  })
})

/**
 * A call on the wire ended, however: its deadlines are no longer watched, and its exchange, if
 * still under way (the call was interrupted or abandoned its body), is aborted. The one exit
 * handler of a call: its waits carry none.
 */
const callEnded = (watchdog: Watchdog, timeline: Timeline) =>
  Effect.sync(() => {
    watchdog.unwatch(timeline)
    timeline.underWay?.abort(abandoned)
  })

/**
 * The transport's path over an undici dispatcher: POSTs to `url`, the deadlines enforced by
 * `watchdog`.
 */
export const undiciWire = (exchanges: Exchanges, url: string, watchdog: Watchdog): Wire => {
  const { origin, pathname, search } = new URL(url)
  const path = pathname + search
  return {
    send: (body, authorization, timeline, traceHeaders) =>
      Effect.suspend(() => {
        if (timeline.expired !== undefined) return Effect.fail(timeline.expired)
        const headers = { authorization, "content-type": "application/json" }
        const exchange = exchanges.send({
          origin,
          path,
          method: "POST",
          headers: traceHeaders === undefined ? headers : { ...traceHeaders, ...headers },
          body
        })
        timeline.underWay = exchange
        return Effect.mapBoth(exchange.response, {
          onFailure: (cause): Unsent | DeadlineExceeded => timeline.expiredBy(cause) ?? { _tag: "Unsent", cause, fromRequest: true },
          onSuccess: () => new UndiciReply(exchange, timeline, watchdog)
        })
      }),
    within: (timeline, call) => Effect.onExit(Effect.zipRight(watchdog.watch(timeline), call), () => callEnded(watchdog, timeline)),
    watchScoped: (timeline) =>
      Effect.uninterruptible(Effect.zipRight(watchdog.watch(timeline), ScopeFinalizer.addFinalizer(callEnded(watchdog, timeline))))
  }
}

/** The request a wire's `send` makes, as `@effect/platform`'s client has it. */
const postOf = (endpoint: HttpClientRequest.HttpClientRequest, body: string, authorization: string) =>
  HttpClientRequest.setHeader(HttpClientRequest.bodyText(endpoint, body, "application/json"), "authorization", authorization)

/**
 * `wire` (the undici path, to `url`), each send in the HTTP client span `@effect/platform`'s
 * client makes: its name (`HttpClient.SpanNameGenerator`), kind and attributes, the headers
 * redacted alike (`Headers.currentRedactedNames`), the trace propagated in the request's headers
 * unless `HttpClient.currentTracerPropagation` is off, and none where the client would make none
 * (`HttpClient.currentTracerDisabledWhen`, the tracer disabled). So a traced call keeps the undici
 * path: over the platform's client, a gateway exporting spans spent 4.0-4.2 ms of CPU an answer at
 * 64 clients (270-280 answers a second), and 2.0 ms over this one (470).
 */
export const inClientSpans = (wire: Wire, url: string): Wire => {
  const { href, origin, pathname, port, protocol, search } = new URL(url)
  const endpoint = HttpClientRequest.post(url)
  const query = search.slice(1)
  return {
    ...wire,
    send: (body, authorization, timeline) =>
      Effect.withFiberRuntime((fiber) => {
        const request = postOf(endpoint, body, authorization)
        if (!fiber.getFiberRef(FiberRef.currentTracerEnabled) || fiber.getFiberRef(HttpClient.currentTracerDisabledWhen)(request)) {
          return wire.send(body, authorization, timeline)
        }
        const redactedNames = fiber.getFiberRef(Headers.currentRedactedNames)
        const name = Context.get(fiber.currentContext, HttpClient.SpanNameGenerator)(request)
        return Effect.useSpan(name, { kind: "client", captureStackTrace: false }, (span) => {
          span.attribute("http.request.method", "POST")
          span.attribute("server.address", origin)
          if (port !== "") span.attribute("server.port", Number(port))
          span.attribute("url.full", href)
          span.attribute("url.path", pathname)
          span.attribute("url.scheme", protocol.slice(0, -1))
          if (query !== "") span.attribute("url.query", query)
          for (const [header, value] of Object.entries(Headers.redact(request.headers, redactedNames))) {
            span.attribute(`http.request.header.${header}`, String(value))
          }
          const traceHeaders = fiber.getFiberRef(HttpClient.currentTracerPropagation) ? HttpTraceContext.toHeaders(span) : undefined
          return Effect.tap(wire.send(body, authorization, timeline, traceHeaders), (reply) => {
            span.attribute("http.response.status_code", reply.status)
            const headers = Headers.fromInput(reply.headers)
            for (const [header, value] of Object.entries(Headers.redact(headers, redactedNames))) {
              span.attribute(`http.response.header.${header}`, String(value))
            }
          })
        })
      })
  }
}

// ---------------------------------------------------------------------------------------------
// Over any HttpClient
// ---------------------------------------------------------------------------------------------

type Response = HttpClientResponse.HttpClientResponse

const broken = (error: { readonly cause?: unknown }): BodyBroken => ({ _tag: "BodyBroken", cause: error.cause })

/** Reads a whole non-streaming body, each read under the deadline. */
const readCompletionBody = (response: Response, timeline: Timeline): Effect.Effect<string, BodyBroken | DeadlineExceeded> =>
  Effect.scoped(Effect.flatMap(Stream.toPull(response.stream), (pull) => {
    const body = bodyCollector(timeline)
    const read: Effect.Effect<string, BodyBroken | DeadlineExceeded> = timeline.guard(pull).pipe(
      Effect.matchEffect({
        onFailure: (error): Effect.Effect<string, BodyBroken | DeadlineExceeded> => {
          switch (error._tag) {
            case "None":
              return Effect.succeed(body.text())
            case "Some":
              return Effect.fail(broken(error.value))
            default:
              return Effect.fail(error)
          }
        },
        onSuccess: (reads): Effect.Effect<string, BodyBroken | DeadlineExceeded> => {
          let content = false
          for (const bytes of reads) content = body.add(bytes) || content
          return content ? Effect.zipRight(timeline.reportFirstContent, read) : read
        }
      })
    )
    return read
  }))

const clientReply = (response: Response, timeline: Timeline): Reply => ({
  status: response.status,
  headers: response.headers,
  errorText: timeline.guard(response.text).pipe(Effect.catchTag("ResponseError", () => Effect.succeed(""))),
  completionText: readCompletionBody(response, timeline),
  reads: Effect.map(Stream.toPull(response.stream), (pull): Reads => ({
    next: timeline.guard(pull).pipe(
      Effect.matchEffect({
        onSuccess: (reads) => Effect.succeed(Chunk.toReadonlyArray(reads)),
        onFailure: (error): Effect.Effect<undefined, BodyBroken | DeadlineExceeded> => {
          switch (error._tag) {
            case "None":
              return Effect.succeed(undefined)
            case "Some":
              return Effect.fail(broken(error.value))
            default:
              return Effect.fail(error)
          }
        }
      })
    ),
    finish: pull.pipe(Effect.forever, Effect.timeout(drainAfterDone), Effect.ignore)
  }))
})

/** The transport's path over `client`: POSTs to `url`, each wait under its own timeout. */
export const clientWire = (client: HttpClient.HttpClient, url: string): Wire => {
  const endpoint = HttpClientRequest.post(url)
  return {
    send: (body, authorization, timeline) =>
      timeline.guard(client.execute(postOf(endpoint, body, authorization))).pipe(
        Effect.mapBoth({
          onFailure: (error): Unsent | DeadlineExceeded =>
            error._tag === "DeadlineExceeded" ? error : { _tag: "Unsent", cause: error.cause, fromRequest: error._tag === "RequestError" },
          onSuccess: (response) => clientReply(response, timeline)
        })
      ),
    within: (_, call) => call,
    watchScoped: () => Effect.void
  }
}

/** What a transport needs of an `HttpClient` over undici to make its exchanges itself. */
export interface Undici {
  readonly exchanges: Exchanges
  /** Opens connections to an origin ahead of need. */
  readonly preconnect: Connector["preconnect"]
}

const undiciKey = Symbol.for("weatherproof/Transport/undici")

/** Marks an `HttpClient` as one over `undici`, so a transport over it makes its exchanges there itself. */
export const withUndici = (client: HttpClient.HttpClient, undici: Undici): HttpClient.HttpClient =>
  Object.assign(client, { [undiciKey]: undici })

/** What an `HttpClient` was marked with (`withUndici`), if anything. */
export const undiciOf = (client: HttpClient.HttpClient): Option.Option<Undici> =>
  Option.fromNullable((client as { readonly [undiciKey]?: Undici })[undiciKey])
