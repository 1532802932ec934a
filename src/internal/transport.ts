/**
 * The transport's implementation: one POST to `/chat/completions`, with key rotation on 401, a
 * silent retry of a stale pooled connection, deadlines on every read, and DeepSeek's keep-alive
 * bytes (blank lines before a JSON body, `: keep-alive` comments in a stream) told apart from
 * content.
 */
import * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as ApiError from "../ApiError.js"
import * as ChatSchema from "../ChatSchema.js"
import { type Credential, KeyPool } from "../KeyPool.js"
import type { CallOptions, Deadlines, Service } from "../Transport.js"
import { resolveLimits, Timeline } from "./deadlines.js"
import { retryAfterFromHeaders } from "./retryAfter.js"
import * as Sse from "./sse.js"

/** What `make` needs: `Transport.Options` with defaults applied. */
export interface Settings {
  readonly baseUrl: string
  readonly defaultDeadlines: Deadlines
  readonly deadlines: Partial<Deadlines> | undefined
  readonly staleConnectionRetries: number
}

type Response = HttpClientResponse.HttpClientResponse

// ---------------------------------------------------------------------------------------------
// Connection failures before a status arrived
// ---------------------------------------------------------------------------------------------

interface ErrorLike {
  readonly code?: unknown
  readonly message?: unknown
  readonly cause?: unknown
}

/** The error and the causes it wraps (fetch wraps undici's error), outermost first. */
const causeChain = (error: unknown): ReadonlyArray<ErrorLike> => {
  const chain: Array<ErrorLike> = []
  for (let e = error; typeof e === "object" && e !== null && chain.length < 4; e = (e as ErrorLike).cause) {
    chain.push(e as ErrorLike)
  }
  return chain
}

/** What a socket closed by the server while it sat idle in the pool looks like. */
const staleCodes = new Set<unknown>(["ECONNRESET", "EPIPE", "UND_ERR_SOCKET"])
const connectCodes = new Set<unknown>([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT"
])

const isStaleConnection = (cause: unknown): boolean =>
  causeChain(cause).some((e) =>
    staleCodes.has(e.code) || (typeof e.message === "string" && e.message.includes("other side closed"))
  )

const describe = (cause: unknown): string => {
  const messages = causeChain(cause).map((e) => e.message).filter((m): m is string => typeof m === "string")
  return ApiError.scrubSecrets(messages.join(": ") || String(cause))
}

const requestFailed = (cause: unknown): ApiError.TransportError =>
  new ApiError.TransportError({
    reason: causeChain(cause).some((e) => connectCodes.has(e.code)) ? "connect" : "request",
    message: `request failed before a response arrived: ${describe(cause)}`,
    partial: ApiError.emptyPartial,
    cause
  })

const bodyFailed = (cause: unknown, partial: ApiError.PartialOutput): ApiError.TransportError =>
  new ApiError.TransportError({
    reason: "body",
    message: `connection failed while reading the response body: ${describe(cause)}`,
    partial,
    cause
  })

// ---------------------------------------------------------------------------------------------
// Error statuses
// ---------------------------------------------------------------------------------------------

interface Problem {
  readonly message: string
  readonly type?: string | undefined
  readonly param?: string | undefined
  readonly code?: string | undefined
}

const parseJson = (text: string): Option.Option<unknown> => {
  try {
    return Option.some(JSON.parse(text))
  } catch {
    return Option.none()
  }
}

const decodeErrorBody = Schema.decodeUnknownOption(ChatSchema.ErrorBody)

/** Reads `{"error": {...}}`; a body that is not one (an HTML page from a proxy) becomes the message. */
const problemOf = (json: Option.Option<unknown>, text: string, fallback: string): Problem => {
  const body = Option.flatMap(json, decodeErrorBody)
  if (Option.isNone(body)) {
    return { message: ApiError.scrubSecrets(text.trim().slice(0, 500) || fallback) }
  }
  const { code, message, param, type } = body.value.error
  return {
    message: ApiError.scrubSecrets(message ?? fallback),
    type: type ?? undefined,
    param: param ?? undefined,
    code: code === undefined || code === null ? undefined : String(code)
  }
}

/** The typed error of a non-2xx status other than 401 (which rotates keys). */
const statusError = (response: Response, problem: Problem, now: number): ApiError.ApiError => {
  const { message } = problem
  const status = response.status
  if (status === 400 || status === 422) {
    return new ApiError.InvalidRequest({ status, message, param: problem.param, code: problem.code })
  }
  if (status === 402) return new ApiError.InsufficientBalance({ message })
  if (status === 429) {
    return new ApiError.RateLimited({ message, retryAfter: retryAfterFromHeaders(response.headers, now) })
  }
  if (status >= 500) {
    return new ApiError.ServerError({ status, message, retryAfter: retryAfterFromHeaders(response.headers, now) })
  }
  return new ApiError.UnexpectedStatus({ status, message })
}

// ---------------------------------------------------------------------------------------------
// 200 bodies
// ---------------------------------------------------------------------------------------------

const isErrorEnvelope = (json: unknown): json is { readonly error: unknown } =>
  typeof json === "object" && json !== null && "error" in json && !("choices" in json)

const upstreamError = (json: { readonly error: unknown }, partial: ApiError.PartialOutput) => {
  const problem = problemOf(
    Option.some(json),
    typeof json.error === "string" ? json.error : "",
    "the server reported an error"
  )
  return new ApiError.UpstreamError({ message: problem.message, type: problem.type, code: problem.code, partial })
}

const schemaMismatch = (what: string, error: ParseResult.ParseError) =>
  new ApiError.MalformedResponse({
    reason: "schema",
    message: ApiError.scrubSecrets(`${what}: ${ParseResult.TreeFormatter.formatErrorSync(error)}`.slice(0, 1000))
  })

/** JSON whitespace: DeepSeek sends blank lines before the body while the request is queued. */
const hasContent = (bytes: Uint8Array): boolean => {
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]
    if (b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09) return true
  }
  return false
}

const decodeCompletion = Schema.decodeUnknownEither(ChatSchema.ChatCompletion)

const parseCompletion = (text: string): Effect.Effect<ChatSchema.ChatCompletion, ApiError.ApiError> => {
  const json = parseJson(text)
  if (Option.isNone(json)) {
    const start = text.trimStart()
    return Effect.fail(
      start === ""
        ? new ApiError.MalformedResponse({ reason: "blank", message: "the 200 body held only keep-alive whitespace" })
        : start.startsWith("{")
        ? new ApiError.MalformedResponse({ reason: "cut", message: "the 200 body ended before its JSON did" })
        : new ApiError.MalformedResponse({ reason: "schema", message: "the 200 body is not JSON" })
    )
  }
  if (isErrorEnvelope(json.value)) return Effect.fail(upstreamError(json.value, ApiError.emptyPartial))
  const decoded = decodeCompletion(json.value)
  if (Either.isLeft(decoded)) return Effect.fail(schemaMismatch("the 200 body is not a chat completion", decoded.left))
  const completion = decoded.right
  const cut = completion.choices.find((choice) => choice.finish_reason === "insufficient_system_resource")
  return cut === undefined ? Effect.succeed(completion) : Effect.fail(
    new ApiError.InsufficientResource({
      partial: {
        content: cut.message.content ?? "",
        reasoningContent: cut.message.reasoning_content ?? "",
        usage: completion.usage,
        finishReason: "insufficient_system_resource",
        events: 1
      }
    })
  )
}

/** Reads a whole non-streaming body; non-whitespace reads are content for the deadlines. */
const readCompletionBody = (
  response: Response,
  timeline: Timeline
): Effect.Effect<string, ApiError.ApiError, Scope.Scope> =>
  Effect.flatMap(Stream.toPull(response.stream), (pull) => {
    const utf8 = new TextDecoder()
    let text = ""
    const read: Effect.Effect<string, ApiError.ApiError> = timeline.guard(pull, noPartial).pipe(
      Effect.matchEffect({
        onFailure: (error): Effect.Effect<string, ApiError.ApiError> => {
          switch (error._tag) {
            case "None":
              return Effect.succeed(text + utf8.decode())
            case "Some":
              return Effect.fail(bodyFailed(error.value.cause, ApiError.emptyPartial))
            default:
              return Effect.fail(error)
          }
        },
        onSuccess: (reads): Effect.Effect<string, ApiError.ApiError> => {
          let content = false
          for (const bytes of reads) {
            content ||= hasContent(bytes)
            text += utf8.decode(bytes, { stream: true })
          }
          return content ? Effect.zipRight(timeline.contentArrived, read) : read
        }
      })
    )
    return read
  })

const noPartial = () => ApiError.emptyPartial

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

const decodeChunk = Schema.decodeUnknownEither(ChatSchema.ChatCompletionChunk)

const drainAfterDone = Duration.seconds(1)

/**
 * Pulls the chunks of an SSE body, one batch per consumer pull. Every data event is content for
 * the deadlines; comments are not. A failure met after some chunks of a read is held back until
 * those chunks are emitted.
 */
const chunkReader = (
  pull: Effect.Effect<Chunk.Chunk<Uint8Array>, Option.Option<HttpClientError.ResponseError>>,
  timeline: Timeline
): Effect.Effect<Chunk.Chunk<ChatSchema.ChatCompletionChunk>, Option.Option<ApiError.ApiError>> => {
  const sse = Sse.makeDecoder()
  let content = ""
  let reasoningContent = ""
  let usage: ChatSchema.Usage | undefined
  let finishReason: ChatSchema.FinishReason | undefined
  let events = 0
  /** `None` once `[DONE]` arrived, `Some` with the failure to report next. */
  let ended: Option.Option<ApiError.ApiError> | undefined

  const partial = (): ApiError.PartialOutput => ({ content, reasoningContent, usage, finishReason, events })

  const record = (chunk: ChatSchema.ChatCompletionChunk): void => {
    events++
    if (chunk.usage) usage = chunk.usage
    for (const choice of chunk.choices) {
      if (choice.index !== 0) continue
      content += choice.delta.content ?? ""
      reasoningContent += choice.delta.reasoning_content ?? ""
      finishReason = choice.finish_reason ?? finishReason
    }
  }

  /** The chunk of one data event, or the failure it ends the stream with. */
  const decodeEvent = (data: string): Either.Either<ChatSchema.ChatCompletionChunk, ApiError.ApiError> => {
    const json = parseJson(data)
    if (Option.isNone(json)) {
      return Either.left(new ApiError.MalformedResponse({ reason: "schema", message: "a stream event is not JSON" }))
    }
    if (isErrorEnvelope(json.value)) return Either.left(upstreamError(json.value, partial()))
    const decoded = decodeChunk(json.value)
    if (Either.isLeft(decoded)) return Either.left(schemaMismatch("a stream event is not a completion chunk", decoded.left))
    record(decoded.right)
    return finishReason === "insufficient_system_resource"
      ? Either.left(new ApiError.InsufficientResource({ partial: partial() }))
      : Either.right(decoded.right)
  }

  /** Decodes a read into chunks; says whether any event (not just comments) arrived. */
  const take = (reads: Chunk.Chunk<Uint8Array>, out: Array<ChatSchema.ChatCompletionChunk>): boolean => {
    let arrived = false
    for (const bytes of reads) {
      for (const data of sse.feed(bytes)) {
        arrived = true
        if (data === "[DONE]") {
          ended = Option.none()
          return arrived
        }
        const event = decodeEvent(data)
        if (Either.isLeft(event)) {
          ended = Option.some(event.left)
          return arrived
        }
        out.push(event.right)
      }
    }
    return arrived
  }

  const read: Effect.Effect<Chunk.Chunk<ChatSchema.ChatCompletionChunk>, Option.Option<ApiError.ApiError>> = timeline
    .guard(pull, partial)
    .pipe(
      Effect.matchEffect({
        onFailure: (error) => {
          switch (error._tag) {
            case "None":
              return Effect.fail(Option.some<ApiError.ApiError>(new ApiError.StreamTruncated({ partial: partial() })))
            case "Some":
              return Effect.fail(Option.some(bodyFailed(error.value.cause, partial())))
            default:
              return Effect.fail(Option.some(error))
          }
        },
        onSuccess: (reads) => {
          const out: Array<ChatSchema.ChatCompletionChunk> = []
          return take(reads, out) ? Effect.zipRight(timeline.contentArrived, emit(out)) : emit(out)
        }
      })
    )

  const emit = (
    out: Array<ChatSchema.ChatCompletionChunk>
  ): Effect.Effect<Chunk.Chunk<ChatSchema.ChatCompletionChunk>, Option.Option<ApiError.ApiError>> =>
    out.length > 0 ? Effect.succeed(Chunk.unsafeFromArray(out)) : ended === undefined ? read : close(ended)

  /**
   * After `[DONE]` the rest of the body (normally just the chunked-encoding terminator) is read
   * for a moment: a body read to its end returns the connection to the pool, an aborted one
   * destroys it (and the next call pays a new TLS handshake).
   */
  const close = (
    end: Option.Option<ApiError.ApiError>
  ): Effect.Effect<never, Option.Option<ApiError.ApiError>> =>
    Option.isSome(end)
      ? Effect.fail(end)
      : pull.pipe(Effect.forever, Effect.timeout(drainAfterDone), Effect.ignore, Effect.zipRight(Effect.fail(end)))

  return Effect.suspend(() => ended === undefined ? Effect.zipRight(timeline.resumed, read) : close(ended))
}

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

/** Refused locally: every provider answers 400 to an empty conversation. */
const noMessages = new ApiError.InvalidRequest({
  status: 400,
  message: "messages must not be empty",
  param: "messages",
  code: "empty_messages"
})

/** A transport over the `HttpClient` and `KeyPool` in context. */
export const make = (settings: Settings): Effect.Effect<Service, never, HttpClient.HttpClient | KeyPool> =>
  Effect.gen(function*() {
    const client = yield* HttpClient.HttpClient
    const keyPool = yield* KeyPool
    const endpoint = HttpClientRequest.post(`${settings.baseUrl.replace(/\/+$/, "")}/chat/completions`)
    const layerLimits = resolveLimits(settings.defaultDeadlines, settings.deadlines)

    const startTimeline = (options: CallOptions | undefined) =>
      Timeline.start(
        options?.deadlines === undefined
          ? layerLimits
          : resolveLimits(settings.defaultDeadlines, settings.deadlines, options.deadlines),
        options
      )

    const post = (body: unknown) => HttpClientRequest.bodyText(endpoint, JSON.stringify(body), "application/json")

    /**
     * Sends with `credential`, retrying a stale connection and rotating keys on 401. `rejected`
     * holds the keys this call already saw refused: a key back from its cooldown is not tried
     * twice in one call.
     */
    const attempt = (
      request: HttpClientRequest.HttpClientRequest,
      timeline: Timeline,
      credential: Credential,
      staleRetries: number,
      rejected: ReadonlySet<string> = new Set()
    ): Effect.Effect<Response, ApiError.ApiError> =>
      timeline.guard(
        client.execute(
          HttpClientRequest.setHeader(request, "authorization", `Bearer ${Redacted.value(credential.key)}`)
        ),
        noPartial
      ).pipe(
        Effect.catchTags({
          RequestError: (error) =>
            staleRetries > 0 && isStaleConnection(error.cause)
              ? attempt(request, timeline, credential, staleRetries - 1, rejected)
              : Effect.fail(requestFailed(error.cause)),
          ResponseError: (error) => Effect.fail(requestFailed(error.cause))
        }),
        Effect.flatMap((response) =>
          response.status >= 200 && response.status < 300
            ? Effect.as(timeline.headersArrived, response)
            : refused(request, timeline, credential, staleRetries, rejected, response)
        )
      )

    const refused = (
      request: HttpClientRequest.HttpClientRequest,
      timeline: Timeline,
      credential: Credential,
      staleRetries: number,
      rejected: ReadonlySet<string>,
      response: Response
    ): Effect.Effect<Response, ApiError.ApiError> =>
      timeline.guard(response.text, noPartial).pipe(
        Effect.catchTag("ResponseError", () => Effect.succeed("")),
        Effect.flatMap((text) => {
          const problem = problemOf(parseJson(text), text, `HTTP ${response.status}`)
          if (response.status !== 401) {
            return Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.fail(statusError(response, problem, now)))
          }
          // Each 401 drops the key and tries another this call has not seen refused, so this
          // ends after at most as many tries as keys.
          const keyRejected = new ApiError.KeyRejected({ message: problem.message, keyId: credential.id })
          const seen = new Set(rejected).add(credential.id)
          return keyPool.reject(credential).pipe(
            Effect.zipRight(keyPool.acquire),
            Effect.matchEffect({
              onFailure: () => Effect.fail(keyRejected),
              onSuccess: (next) =>
                seen.has(next.id) ? Effect.fail(keyRejected) : attempt(request, timeline, next, staleRetries, seen)
            })
          )
        })
      )

    const send = (request: HttpClientRequest.HttpClientRequest, timeline: Timeline) =>
      Effect.flatMap(
        keyPool.acquire,
        (credential) => attempt(request, timeline, credential, settings.staleConnectionRetries)
      )

    const create: Service["create"] = (request, options) =>
      request.messages.length === 0 ? Effect.fail(noMessages) : Effect.scoped(
        Effect.flatMap(startTimeline(options), (timeline) =>
          send(post({ ...request, stream: false }), timeline).pipe(
            Effect.flatMap((response) => readCompletionBody(response, timeline)),
            Effect.flatMap(parseCompletion)
          ))
      ).pipe(Effect.withSpan("weatherproof.Transport.create", { attributes: { model: request.model } }))

    const stream: Service["stream"] = (request, options) =>
      request.messages.length === 0 ? Stream.fail(noMessages) : Stream.unwrapScoped(
        Effect.flatMap(startTimeline(options), (timeline) =>
          send(
            post({ ...request, stream: true, stream_options: { ...request.stream_options, include_usage: true } }),
            timeline
          ).pipe(
            Effect.flatMap((response) => Stream.toPull(response.stream)),
            Effect.map((pull) => Stream.repeatEffectChunkOption(chunkReader(pull, timeline)))
          ))
      ).pipe(Stream.withSpan("weatherproof.Transport.stream", { attributes: { model: request.model } }))

    return { create, stream }
  })
