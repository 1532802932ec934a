/**
 * A scripted, in-process upstream for unit tests: an `HttpClient` that answers each request from
 * a script of replies, and a `MockUpstream` service that shows what was sent.
 *
 * Replies can hold DeepSeek's wire quirks: blank lines before a JSON body, SSE keep-alive
 * comments, bodies cut mid-way, connections dropped before any status. Every delay runs on
 * Effect's `Clock`, so a test drives the timeline with `TestClock`.
 *
 * ```ts
 * import { MockUpstream } from "weatherproof"
 *
 * const usage = MockUpstream.usage({ promptTokens: 10, completionTokens: 2 })
 * const upstream = MockUpstream.layer([
 *   MockUpstream.drop(),
 *   MockUpstream.completion({ id: "1", model: "m", content: "hi", usage })
 * ])
 * ```
 *
 * @since 0.1.0
 */

import * as Cookies from "@effect/platform/Cookies"
import type * as HttpBody from "@effect/platform/HttpBody"
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientError from "@effect/platform/HttpClientError"
import type * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import * as Headers from "@effect/platform/Headers"
import * as HttpIncomingMessage from "@effect/platform/HttpIncomingMessage"
import * as UrlParams from "@effect/platform/UrlParams"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Inspectable from "effect/Inspectable"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"
import type { Usage } from "./ChatSchema.js"
import * as Wire from "./internal/wire.js"

/**
 * A generation the upstream "produced": content, optional reasoning, finish reason and usage.
 *
 * @since 0.1.0
 * @category models
 */
export type Generation = Wire.Generation

/**
 * A usage block that adds up the way DeepSeek's does.
 *
 * @example
 * ```ts
 * import { MockUpstream } from "weatherproof"
 *
 * // prompt_cache_hit_tokens 80, prompt_cache_miss_tokens 20, total_tokens 150, reasoning_tokens 20
 * const usage = MockUpstream.usage({
 *   promptTokens: 100,
 *   cacheHitTokens: 80,
 *   completionTokens: 50,
 *   reasoningTokens: 20
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const usage: (options: {
  readonly promptTokens: number
  readonly completionTokens: number
  readonly cacheHitTokens?: number | undefined
  readonly reasoningTokens?: number | undefined
}) => Usage = Wire.usage

/**
 * A piece of a response body, sent after `delay` (on Effect's `Clock`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Part {
  readonly delay?: Duration.DurationInput | undefined
  readonly text: string
}

/**
 * A status, headers and a body sent piece by piece.
 *
 * @since 0.1.0
 * @category models
 */
export interface Respond {
  readonly _tag: "Respond"
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  /** The wait before the status and headers. */
  readonly latency: Duration.DurationInput | undefined
  readonly body: ReadonlyArray<Part>
  /** The connection breaks after the last piece instead of ending the body. */
  readonly cut: boolean
}

/**
 * The connection is reset before any status arrives, the way a pooled socket the server closed
 * while it was idle fails.
 *
 * @since 0.1.0
 * @category models
 */
export interface Drop {
  readonly _tag: "Drop"
}

/**
 * @since 0.1.0
 * @category models
 */
export type Reply = Respond | Drop

/**
 * A request as the upstream saw it. The `authorization` header is shown as `<redacted>`; the
 * bearer token itself is kept `Redacted` so a test can tell which key was used.
 *
 * @since 0.1.0
 * @category models
 */
export interface RecordedRequest {
  readonly method: string
  readonly url: string
  readonly headers: Readonly<Record<string, string>>
  readonly bearer: Redacted.Redacted<string> | undefined
  /** The JSON body parsed, a non-JSON body as text, `undefined` when there is none. */
  readonly body: unknown
}

/**
 * Replies in order, or a function choosing the reply of the `index`-th request (from 0). A
 * request past the end of an array is a defect that names the request.
 *
 * @since 0.1.0
 * @category models
 */
export type Script = ReadonlyArray<Reply> | ((request: RecordedRequest, index: number) => Reply)

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Every request received so far, in order. */
  readonly requests: Effect.Effect<ReadonlyArray<RecordedRequest>>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class MockUpstream extends Context.Tag("weatherproof/MockUpstream")<MockUpstream, Service>() {}

/**
 * The general reply: `body` pieces (a string is a piece without delay), optionally ending in a
 * broken connection.
 *
 * @example
 * ```ts
 * import { MockUpstream } from "weatherproof"
 *
 * // A keep-alive line, a minute later half a JSON body, then the connection breaks.
 * const cut = MockUpstream.parts(["\n", { delay: "1 minute", text: '{"id":"1","choices":[{"mess' }], { cut: true })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const parts = (
  body: ReadonlyArray<Part | string>,
  options?: {
    readonly status?: number | undefined
    readonly headers?: Readonly<Record<string, string>> | undefined
    readonly latency?: Duration.DurationInput | undefined
    readonly cut?: boolean | undefined
  }
): Reply => ({
  _tag: "Respond",
  status: options?.status ?? 200,
  headers: options?.headers ?? {},
  latency: options?.latency,
  body: body.map((part) => typeof part === "string" ? { text: part } : part),
  cut: options?.cut ?? false
})

/**
 * A JSON body after a `delay` (the queueing time before the JSON), with `leadingBlankLines`
 * keep-alive lines spread evenly over it, as DeepSeek sends them while a request waits: each
 * after a share of the delay, the JSON after the last share (with no delay, all at once). The
 * status and headers come after `latency`.
 *
 * @example
 * ```ts
 * import { MockUpstream } from "weatherproof"
 *
 * // What `GET /user/balance` answers for an account whose balance is back.
 * const balance = MockUpstream.json({ is_available: true, balance_infos: [] })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const json = (
  body: unknown,
  options?: {
    readonly status?: number | undefined
    readonly headers?: Readonly<Record<string, string>> | undefined
    readonly leadingBlankLines?: number | undefined
    readonly delay?: Duration.DurationInput | undefined
    readonly latency?: Duration.DurationInput | undefined
  }
): Reply =>
  parts(
    queuedFor(options?.delay, options?.leadingBlankLines ?? 0, JSON.stringify(body)),
    { status: options?.status, headers: { "content-type": "application/json", ...options?.headers }, latency: options?.latency }
  )

/** `blankLines` keep-alive lines, then `text`, each after an equal share of `delay`. */
const queuedFor = (delay: Duration.DurationInput | undefined, blankLines: number, text: string): ReadonlyArray<Part> => {
  const share = delay === undefined ? undefined : Duration.unsafeDivide(Duration.decode(delay), blankLines + 1)
  return [...Array.from({ length: blankLines }, () => ({ delay: share, text: "\n" })), { delay: share, text }]
}

/**
 * A successful non-streaming completion of `generation`.
 *
 * @example
 * ```ts
 * import { Layer, Redacted } from "effect"
 * import { KeyPool, MockUpstream, Transport } from "weatherproof"
 *
 * const generation = {
 *   id: "chatcmpl-1",
 *   model: "deepseek-v4-flash",
 *   content: "Hello!",
 *   usage: MockUpstream.usage({ promptTokens: 12, completionTokens: 3 })
 * }
 *
 * // The first call meets a 429; the second is answered after three keep-alive lines.
 * const transport = Transport.layer().pipe(Layer.provide([
 *   MockUpstream.layer([MockUpstream.status(429), MockUpstream.completion(generation, { leadingBlankLines: 3 })]),
 *   KeyPool.layer([Redacted.make("sk-test")])
 * ]))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const completion = (
  generation: Generation,
  options?: Omit<NonNullable<Parameters<typeof json>[1]>, "status">
): Reply => json(Wire.completion(generation), options)

/**
 * An event-stream body of raw SSE pieces.
 *
 * @example
 * ```ts
 * import { MockUpstream } from "weatherproof"
 *
 * // Keep-alive comments while queued, then an error event inside the 200.
 * const failing = MockUpstream.sse([
 *   ": keep-alive\n\n",
 *   { delay: "30 seconds", text: ": keep-alive\n\n" },
 *   'data: {"error":{"message":"Service is too busy","type":"server_error"}}\n\n'
 * ])
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const sse = (
  body: ReadonlyArray<Part | string>,
  options?: {
    readonly headers?: Readonly<Record<string, string>> | undefined
    readonly latency?: Duration.DurationInput | undefined
    readonly cut?: boolean | undefined
  }
): Reply => parts(body, { ...options, headers: { "content-type": "text/event-stream", ...options?.headers } })

/**
 * The SSE pieces of a streamed `generation`, one event per piece, each after `delay`, ended by
 * `data: [DONE]` (unless `done: false`).
 *
 * @example
 * ```ts
 * import { MockUpstream } from "weatherproof"
 *
 * declare const generation: MockUpstream.Generation
 *
 * // Queued behind a keep-alive comment, then the generation 4 characters an event, 50 ms apart.
 * const slow = MockUpstream.sse([
 *   ": keep-alive\n\n",
 *   ...MockUpstream.events(generation, { pieceSize: 4, delay: "50 millis" })
 * ])
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const events = (
  generation: Generation,
  options?: {
    readonly pieceSize?: number | undefined
    readonly delay?: Duration.DurationInput | undefined
    readonly done?: boolean | undefined
  }
): ReadonlyArray<Part> => [
  ...Wire.chunks(generation, options?.pieceSize).map((chunk) => ({ delay: options?.delay, text: Wire.sseData(chunk) })),
  ...(options?.done === false ? [] : [{ delay: options?.delay, text: Wire.sseDone }])
]

/**
 * A streamed completion of `generation`; its status and headers after `latency`.
 *
 * @example
 * ```ts
 * import { MockUpstream } from "weatherproof"
 *
 * declare const generation: MockUpstream.Generation
 *
 * // Ends without `data: [DONE]`: the transport fails with StreamTruncated, carrying what arrived.
 * const truncated = MockUpstream.streamed(generation, { done: false })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const streamed = (
  generation: Generation,
  options?: Parameters<typeof events>[1] & { readonly latency?: Duration.DurationInput | undefined }
): Reply => sse(events(generation, options), { latency: options?.latency })

/**
 * An error status, after `latency`; an object `body` is sent as JSON (e.g. `{"error": {...}}`).
 *
 * @example
 * ```ts
 * import { MockUpstream } from "weatherproof"
 *
 * const rateLimited = MockUpstream.status(429, { headers: { "retry-after": "2" }, latency: "80 millis" })
 * const outOfBalance = MockUpstream.status(402, {
 *   body: { error: { message: "Insufficient Balance", type: "unknown_error" } }
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const status = (
  code: number,
  options?: {
    readonly body?: unknown
    readonly headers?: Readonly<Record<string, string>> | undefined
    readonly latency?: Duration.DurationInput | undefined
  }
): Reply => {
  const body = options?.body ?? ""
  return parts([typeof body === "string" ? body : JSON.stringify(body)], { status: code, headers: options?.headers, latency: options?.latency })
}

/**
 * The connection is reset before any status: what a stale pooled socket looks like.
 *
 * @example
 * ```ts
 * import { MockUpstream } from "weatherproof"
 *
 * declare const generation: MockUpstream.Generation
 *
 * // A stale pooled socket, then the answer: the transport resends once, silently.
 * const upstream = MockUpstream.layer([MockUpstream.drop(), MockUpstream.completion(generation)])
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const drop = (): Reply => ({ _tag: "Drop" })

/** Shaped like undici's `SocketError`, which the transport recognises as a closed connection. */
const connectionClosed = (): Error => Object.assign(new Error("other side closed"), { code: "UND_ERR_SOCKET" })

const utf8 = new TextEncoder()

const delayed = <A>(delay: Duration.DurationInput | undefined, value: A): Effect.Effect<A> =>
  delay === undefined ? Effect.succeed(value) : Effect.as(Effect.sleep(delay), value)

class MockResponse extends Inspectable.Class implements HttpClientResponse.HttpClientResponse {
  readonly [HttpIncomingMessage.TypeId]: HttpIncomingMessage.TypeId = HttpIncomingMessage.TypeId
  readonly [HttpClientResponse.TypeId]: HttpClientResponse.TypeId = HttpClientResponse.TypeId
  readonly cookies = Cookies.empty
  readonly remoteAddress = Option.none<string>()
  readonly headers: Headers.Headers

  constructor(readonly request: HttpClientRequest.HttpClientRequest, private readonly reply: Respond) {
    super()
    this.headers = Headers.fromInput(reply.headers)
  }

  get status(): number {
    return this.reply.status
  }

  private fail(cause: unknown, description?: string) {
    return new HttpClientError.ResponseError({
      request: this.request,
      response: this,
      reason: "Decode",
      cause,
      ...(description === undefined ? {} : { description })
    })
  }

  get stream(): Stream.Stream<Uint8Array, HttpClientError.ResponseError> {
    const pieces = Stream.fromIterable(this.reply.body).pipe(
      Stream.rechunk(1),
      Stream.mapEffect((part) => delayed(part.delay, utf8.encode(part.text)))
    )
    return this.reply.cut ? Stream.concat(pieces, Stream.fail(this.fail(connectionClosed()))) : pieces
  }

  get text(): Effect.Effect<string, HttpClientError.ResponseError> {
    return this.stream.pipe(Stream.decodeText(), Stream.mkString)
  }

  get json(): Effect.Effect<unknown, HttpClientError.ResponseError> {
    return Effect.flatMap(this.text, (text) =>
      Effect.try({ try: () => text === "" ? null : JSON.parse(text) as unknown, catch: (cause) => this.fail(cause) }))
  }

  get arrayBuffer(): Effect.Effect<ArrayBuffer, HttpClientError.ResponseError> {
    return Effect.map(Stream.runCollect(this.stream), (reads) => {
      const bytes = new Uint8Array(Chunk.reduce(reads, 0, (size, read) => size + read.length))
      Chunk.reduce(reads, 0, (offset, read) => {
        bytes.set(read, offset)
        return offset + read.length
      })
      return bytes.buffer
    })
  }

  get urlParamsBody(): Effect.Effect<UrlParams.UrlParams, HttpClientError.ResponseError> {
    return Effect.map(this.text, (text) => UrlParams.fromInput(new URLSearchParams(text)))
  }

  get formData(): Effect.Effect<FormData, HttpClientError.ResponseError> {
    return Effect.fail(this.fail(undefined, "MockUpstream does not produce form data"))
  }

  toJSON(): unknown {
    return { _id: "weatherproof/MockUpstream/Response", status: this.status, headers: this.reply.headers }
  }
}

const utf8Decoder = new TextDecoder()

const bodyOf = (body: HttpBody.HttpBody): unknown => {
  const text = body._tag === "Uint8Array"
    ? utf8Decoder.decode(body.body)
    : body._tag === "Raw" && typeof body.body === "string"
    ? body.body
    : undefined
  if (text === undefined) return undefined
  try {
    return JSON.parse(text) as unknown
  } catch {
    return text
  }
}

const record = (request: HttpClientRequest.HttpClientRequest, url: URL): RecordedRequest => {
  const authorization = request.headers["authorization"]
  return {
    method: request.method,
    url: url.toString(),
    headers: { ...request.headers, ...(authorization === undefined ? {} : { authorization: "<redacted>" }) },
    bearer: authorization?.startsWith("Bearer ") ? Redacted.make(authorization.slice("Bearer ".length)) : undefined,
    body: bodyOf(request.body)
  }
}

const exhausted = (script: Script, request: RecordedRequest, index: number) =>
  new Error(
    `MockUpstream: script exhausted: request #${index + 1} (${request.method} ${request.url}) arrived ` +
      (typeof script === "function"
        ? "but the script function returned no reply for it"
        : `but the script holds only ${script.length} replies`)
  )

/**
 * An `HttpClient` answering from `script`, and the `MockUpstream` that recorded its requests.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (script: Script): Layer.Layer<HttpClient.HttpClient | MockUpstream> =>
  Layer.effectContext(Effect.map(Ref.make<ReadonlyArray<RecordedRequest>>([]), (log) => {
    const answer = (request: HttpClientRequest.HttpClientRequest, reply: Reply) =>
      reply._tag === "Drop"
        ? Effect.fail(new HttpClientError.RequestError({ request, reason: "Transport", cause: connectionClosed() }))
        : delayed(reply.latency, new MockResponse(request, reply))
    const client = HttpClient.make((request, url) => {
      const recorded = record(request, url)
      return Ref.modify(log, (requests) => [requests.length, [...requests, recorded]] as const).pipe(
        Effect.flatMap((index) => {
          const reply = typeof script === "function" ? script(recorded, index) : script[index]
          return reply === undefined
            ? Effect.die(exhausted(script, recorded, index))
            : answer(request, reply)
        })
      )
    })
    return Context.make(HttpClient.HttpClient, client).pipe(Context.add(MockUpstream, { requests: Ref.get(log) }))
  }))
