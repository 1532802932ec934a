/**
 * The transport's implementation: one POST to `/chat/completions`, with key rotation on 401, a
 * silent retry of a stale pooled connection, deadlines on every read, and DeepSeek's keep-alive
 * bytes (blank lines before a JSON body, `: keep-alive` comments in a stream) told apart from
 * content.
 */
import * as HttpClient from "@effect/platform/HttpClient"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { Agent } from "undici"
import * as ApiError from "../ApiError.js"
import * as ChatSchema from "../ChatSchema.js"
import * as ChatStream from "../ChatStream.js"
import { type Credential, KeyPool } from "../KeyPool.js"
import type { Permit } from "../ConcurrencyLimiter.js"
import type { CallOptions, Deadlines, Exchange, Service } from "../Transport.js"
import * as BaseUrls from "./baseUrl.js"
import * as Connector from "./connector.js"
import { resolveLimits, Timeline, Watchdog } from "./deadlines.js"
import * as ExactJson from "./exactJson.js"
import { Exchanges } from "./exchange.js"
import { madeAtFirstCall } from "./firstCall.js"
import * as ForwardProxy from "./proxy.js"
import { retryAfterFromHeaders } from "./retryAfter.js"
import * as SchemaFastPath from "./schemaFastPath.js"
import * as SchemaIssues from "./schemaIssues.js"
import * as Scrubber from "./scrubber.js"
import * as Sse from "./sse.js"
import * as StreamPull from "./streamPull.js"
import { causeChain, clipped, connectionFailure, parseJson, quotedBody } from "./text.js"
import { assertValid } from "./options.js"
import { isTraced } from "./tracing.js"
import { clientWire, inClientSpans, type Reads, type Reply, undiciOf, undiciWire, type Wire, withUndici } from "./transportWires.js"

/** What `make` needs: `Transport.Options` with defaults applied. */
export interface Settings {
  readonly baseUrl: string
  readonly defaultDeadlines: Deadlines
  readonly deadlines: Partial<Deadlines> | undefined
  readonly staleConnectionRetries: number
  readonly warmUp: number
}

// ---------------------------------------------------------------------------------------------
// Connection failures before a status arrived
// ---------------------------------------------------------------------------------------------

/** What a socket closed by the server while it sat idle in the pool looks like. */
const staleCodes = new Set<unknown>(["ECONNRESET", "EPIPE", "UND_ERR_SOCKET"])
const connectCodes = new Set<unknown>([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT",
  ForwardProxy.tunnelRefusedCode
])

const isStaleConnection = (cause: unknown): boolean =>
  causeChain(cause).some((e) =>
    staleCodes.has(e.code) || (typeof e.message === "string" && e.message.includes("other side closed"))
  )

const describe = (cause: unknown): string => ApiError.scrubSecrets(connectionFailure(cause))

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
  /** Whether the body was an API error (`{"error": …}`), not a page from something else at the URL. */
  readonly fromApi: boolean
  readonly type?: string | undefined
  readonly param?: string | undefined
  readonly code?: string | undefined
}

const decodeErrorBody = madeAtFirstCall(() => Schema.decodeUnknownOption(ChatSchema.ErrorBody))

/**
 * What quotes a reply to a request sent with `key`: scrubbed of anything shaped like a key (shown
 * `sk-***`, as always), then of that key, whole or in part and whatever its shape (other providers'
 * keys need not look like `sk-…`). The key's fragments are cut only when an error quotes the reply.
 */
const scrubberOf = (key: Redacted.Redacted<string>): Scrubber.Scrubber => (text) =>
  Scrubber.make([key])(ApiError.scrubSecrets(text))

/** A 2xx reply, with what scrubs the text an error quotes of it (`scrubberOf` the key it was sent with). */
interface Answered {
  readonly reply: Reply
  readonly scrub: Scrubber.Scrubber
}

/** How much of a body that is no API error its message shows. */
const problemLength = 500

/**
 * Reads `{"error": {...}}`; a body that is not one (an HTML page from a proxy) becomes the message,
 * `scrub`bed: a reply may echo the key its request was sent with. `notAnApi` follows the message of
 * a body that is no API error.
 */
const problemOf = (
  json: Option.Option<unknown>,
  text: string,
  fallback: string,
  scrub: Scrubber.Scrubber,
  notAnApi = ""
): Problem => {
  const body = Option.flatMap(json, decodeErrorBody)
  if (Option.isNone(body)) {
    // Scrubbed before the cut, on a window as long again: a key the cut runs through is never half shown.
    const shown = clipped(scrub(text.trim().slice(0, 2 * problemLength)), problemLength)
    return { message: (shown || fallback) + scrub(notAnApi), fromApi: false }
  }
  // Every field is scrubbed: a server may echo the key in any of them, and `code` reaches batch output.
  const { code, message, param, type } = body.value.error
  return {
    message: scrub(message ?? fallback),
    fromApi: true,
    type: type == null ? undefined : scrub(type),
    param: param == null ? undefined : scrub(param),
    code: code == null ? undefined : scrub(String(code))
  }
}

/**
 * Whether a status and its body say nothing at the URL takes chat completions: a 404 or 405 that is
 * no API error (a base URL that lacks or adds a path such as `/v1`, or names another server), not
 * a request to fix.
 */
const isMissingEndpoint = (status: number, problem: Problem): boolean => isNotFound(status) && !problem.fromApi

const isNotFound = (status: number): boolean => status === 404 || status === 405

const noEndpointAt = (url: string): string => ` (no chat completions endpoint at ${url}: check the account's base URL)`

/** OpenAI's answer to an account out of credits: a 429 like a rate limit's, which waiting does not lift. */
const isQuotaSpent = (problem: Problem): boolean => problem.code === "insufficient_quota" || problem.type === "insufficient_quota"

/** The typed error of a non-2xx status other than 401 (which rotates keys). */
const statusError = (reply: Reply, problem: Problem, now: number): ApiError.ApiError => {
  const { message } = problem
  const { headers, status } = reply
  if (status === 400 || status === 413 || status === 422) {
    return new ApiError.InvalidRequest({ status, message, param: problem.param, code: problem.code })
  }
  if (status === 402 || (status === 429 && isQuotaSpent(problem))) return new ApiError.InsufficientBalance({ message })
  if (status === 429) {
    return new ApiError.RateLimited({ message, retryAfter: retryAfterFromHeaders(headers, now) })
  }
  if (status >= 500) {
    return new ApiError.ServerError({ status, message, retryAfter: retryAfterFromHeaders(headers, now) })
  }
  return new ApiError.UnexpectedStatus({ status, message, endpointMissing: isMissingEndpoint(status, problem) })
}

// ---------------------------------------------------------------------------------------------
// 200 bodies
// ---------------------------------------------------------------------------------------------

/**
 * The server's error in a 200 body or a stream event, if it is one: OpenAI's `{"error": …}`, also
 * beside a chunk's `choices` when it is an object (OpenRouter's mid-stream error, whose choice
 * ends with `finish_reason: "error"`), or vLLM's `{"object": "error", "message": …}`, whose fields
 * are the error's own.
 */
const errorEnvelopeOf = (json: unknown): { readonly error: unknown } | undefined => {
  if (typeof json !== "object" || json === null) return undefined
  if ("error" in json && (!("choices" in json) || (typeof json.error === "object" && json.error !== null))) return json
  return "object" in json && json.object === "error" ? { error: json } : undefined
}

const upstreamError = (json: { readonly error: unknown }, partial: ApiError.PartialOutput, scrub: Scrubber.Scrubber) => {
  const problem = problemOf(
    Option.some(json),
    typeof json.error === "string" ? json.error : "",
    "the server reported an error",
    scrub
  )
  return new ApiError.UpstreamError({ message: problem.message, type: problem.type, code: problem.code, partial })
}

const schemaMismatch = (
  what: string,
  error: ParseResult.ParseError,
  scrub: Scrubber.Scrubber,
  partial?: ApiError.PartialOutput
) =>
  new ApiError.MalformedResponse({
    reason: "schema",
    message: clipped(scrub(`${what}: ${SchemaIssues.describeIssues(error).join("; ")}`), 1000),
    partial
  })

/** `request` as a non-streaming call sends it: `stream: false`, without `stream_options` (OpenAI refuses them then). */
const nonStreaming = (request: ChatSchema.ChatCompletionRequest): ChatSchema.ChatCompletionRequest => {
  if (request.stream_options === undefined) return { ...request, stream: false }
  const { stream_options: _streamOnly, ...rest } = request
  return { ...rest, stream: false }
}

const decodeCompletion = SchemaFastPath.decodeUnknownEither(ChatSchema.ChatCompletion, { errors: "all" })
const decodeUsage = SchemaFastPath.decodeUnknownEither(ChatSchema.Usage)

/**
 * An answer (or chunk) with the envelope fields some OpenAI-compatible servers leave out (`id`,
 * `object`, `created`, `model`) given as OpenAI would send them empty: the schema requires them,
 * and an answer with its choices should not be thrown away, unpriced, for want of them. Anything
 * else, and fields that are there, stay as they came. Cheap for the usual answer: it has them all.
 */
const withEnvelope = (json: unknown, object: string): unknown => {
  if (typeof json !== "object" || json === null || !("choices" in json)) return json
  const { created, id, model, object: kind } = json as Record<string, unknown>
  if (id != null && kind != null && created != null && model != null) return json
  return { ...json, id: id ?? "", object: kind ?? object, created: created ?? 0, model: model ?? "" }
}

/**
 * What a 200 whose body is not a completion still tells of its cost: the usage and model it
 * names, when they read as such (an answer of a shape we do not know may have been billed).
 */
const billedOf = (json: unknown): ApiError.PartialOutput => {
  if (typeof json !== "object" || json === null) return ApiError.emptyPartial
  const { model, usage } = json as Record<string, unknown>
  const decoded = usage == null ? undefined : Either.getOrUndefined(decodeUsage(usage))
  return { ...ApiError.emptyPartial, usage: decoded, ...(typeof model === "string" ? { model } : {}) }
}

/** A 200 of keep-alive whitespace only: the server closed a request it had queued. */
const blankAnswer = () =>
  new ApiError.MalformedResponse({ reason: "blank", message: "the 200 body held only keep-alive whitespace" })

const parseCompletion = (
  text: string,
  contentType: string | undefined,
  scrub: Scrubber.Scrubber
): Effect.Effect<ChatSchema.ChatCompletion, ApiError.ApiError> => {
  const json = parseJson(text)
  if (Option.isNone(json)) {
    const start = text.trimStart()
    return Effect.fail(
      start === ""
        ? blankAnswer()
        : start.startsWith("{")
        ? new ApiError.MalformedResponse({ reason: "cut", message: "the 200 body ended before its JSON did" })
        : new ApiError.MalformedResponse({ reason: "schema", message: `the 200 body is not JSON (${quotedBody(contentType, text, scrub)})` })
    )
  }
  const envelope = errorEnvelopeOf(json.value)
  if (envelope !== undefined) return Effect.fail(upstreamError(envelope, ApiError.emptyPartial, scrub))
  const decoded = decodeCompletion(withEnvelope(json.value, "chat.completion"))
  if (Either.isLeft(decoded)) {
    return Effect.fail(schemaMismatch("the 200 body is not a chat completion", decoded.left, scrub, billedOf(json.value)))
  }
  const completion = decoded.right
  const cut = completion.choices.find((choice) => choice.finish_reason === "insufficient_system_resource")
  return cut === undefined ? Effect.succeed(completion) : Effect.fail(
    new ApiError.InsufficientResource({
      partial: {
        content: cut.message.content ?? "",
        reasoningContent: cut.message.reasoning_content ?? "",
        usage: completion.usage ?? undefined,
        finishReason: "insufficient_system_resource",
        events: 1,
        model: completion.model
      }
    })
  )
}

/** A non-streaming answer's body, read and parsed: the completion, or what it failed with. */
const completionOf = (
  reply: Reply,
  timeline: Timeline,
  scrub: Scrubber.Scrubber
): Effect.Effect<ChatSchema.ChatCompletion, ApiError.ApiError> =>
  Effect.matchEffect(reply.completionText, {
    onFailure: (error) => Effect.fail(error._tag === "BodyBroken" ? bodyFailed(error.cause, timeline.partialOutput()) : error),
    onSuccess: (text) => parseCompletion(text, reply.headers["content-type"], scrub)
  })

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/**
 * A 200 to a stream request with a body of another type (not JSON): the server's error when it
 * is one, else a final `MalformedResponse` (retrying a web page gets the same page).
 */
const notAStream = (contentType: string, text: string, scrub: Scrubber.Scrubber): ApiError.ApiError => {
  if (text.trim() === "") return blankAnswer()
  const json = parseJson(text)
  const envelope = Option.isSome(json) ? errorEnvelopeOf(json.value) : undefined
  return envelope !== undefined
    ? upstreamError(envelope, ApiError.emptyPartial, scrub)
    : new ApiError.MalformedResponse({
      reason: "schema",
      message: `the 200 answer to a stream request is not an event stream (${quotedBody(contentType, text, scrub)})`
    })
}

/**
 * A JSON answer to a stream request (an upstream that does not stream, or answers a cached
 * completion whole): read as a non-streaming answer is, its errors included, then given as the
 * chunks that fold into it. The answer was generated and billed: failing it would throw it away.
 */
const wholeAnswer = (
  reply: Reply,
  timeline: Timeline,
  scrub: Scrubber.Scrubber
): StreamPull.Opening<ChatSchema.ChatCompletionChunk, ApiError.ApiError> =>
  Effect.flatMap(
    completionOf(reply, timeline, scrub),
    (completion) => StreamPull.openingOf(Stream.fromIterable(ChatStream.chunksOf(completion)))
  )

const decodeChunk = SchemaFastPath.decodeUnknownEither(ChatSchema.ChatCompletionChunk, { errors: "all" })

/** A delta's field that holds nothing yet: a role, or an empty text or list. */
const holdsNothing = ([field, value]: readonly [string, unknown]): boolean =>
  field === "role" || value === "" || value == null || (Array.isArray(value) && value.length === 0)

/** A chunk with nothing for the caller yet: no text, reasoning, tool call, finish or usage in it. */
const carriesNothing = (chunk: ChatSchema.ChatCompletionChunk): boolean =>
  chunk.usage == null &&
  chunk.choices.every((choice) => choice.finish_reason == null && Object.entries(choice.delta).every(holdsNothing))

/** How long a stream cut by the upstream is read on for the usage of the work it did. */
const drainAfterCut = Duration.seconds(1)

/**
 * Pulls the chunks of an SSE body, one batch per consumer pull. Every data event is content for
 * the deadlines; comments are not. A failure met after some chunks of a read is held back until
 * those chunks are emitted.
 */
const chunkReader = (
  reads: Reads,
  timeline: Timeline,
  scrub: Scrubber.Scrubber
): Effect.Effect<Chunk.Chunk<ChatSchema.ChatCompletionChunk>, Option.Option<ApiError.ApiError>> => {
  const sse = Sse.makeDecoder()
  let content = ""
  let reasoningContent = ""
  let usage: ChatSchema.Usage | undefined
  let finishReason: ChatSchema.FinishReason | undefined
  let events = 0
  let model: string | undefined
  /** `None` once `[DONE]` arrived, `Some` with the failure to report next. */
  let ended: Option.Option<ApiError.ApiError> | undefined
  /**
   * Whether the upstream cut the work (`insufficient_system_resource`). The stream then fails, once
   * the rest of the body is read for a moment: the usage billed for the cut work follows the
   * finish chunk (`include_usage`'s chunk with no choices).
   */
  let cut = false

  /**
   * Whether a chunk reached the caller. Once one has (the stream can no longer be retried), the
   * cut's own chunk and the usage after it follow it; before, they are kept back, so that the
   * cut is retried as if nothing arrived.
   */
  let delivered = false

  /**
   * The opening chunks that carry nothing yet (DeepSeek's first: a role and an empty content),
   * held until one that does arrives: a failure right after them (a cut as inference starts) is
   * then one before any content, which the caller may retry.
   */
  let opening: Array<ChatSchema.ChatCompletionChunk> = []
  const flushOpening = (): Array<ChatSchema.ChatCompletionChunk> => {
    const held = opening
    opening = []
    return held
  }

  const partial = (): ApiError.PartialOutput => ({ content, reasoningContent, usage, finishReason, events, model })
  timeline.partial = partial
  const cutShort = () =>
    new ApiError.InsufficientResource({ partial: { ...partial(), finishReason: "insufficient_system_resource" } })

  /** Notes a chunk's choice 0 in the partial output; says whether any of its choices was cut. */
  const record = (chunk: ChatSchema.ChatCompletionChunk): boolean => {
    events++
    model ??= chunk.model
    if (chunk.usage) usage = chunk.usage
    let cutHere = false
    for (const choice of chunk.choices) {
      if (choice.finish_reason === "insufficient_system_resource") cutHere = true
      if (choice.index !== 0) continue
      content += choice.delta.content ?? ""
      reasoningContent += choice.delta.reasoning_content ?? ""
      finishReason = choice.finish_reason ?? finishReason
    }
    return cutHere
  }

  /** The chunk of one data event, or the failure it ends the stream with. */
  const decodeEvent = (data: string): Either.Either<ChatSchema.ChatCompletionChunk, ApiError.ApiError> => {
    const json = parseJson(data)
    if (Option.isNone(json)) {
      return Either.left(new ApiError.MalformedResponse({ reason: "schema", message: "a stream event is not JSON", partial: partial() }))
    }
    const envelope = errorEnvelopeOf(json.value)
    if (envelope !== undefined) return Either.left(upstreamError(envelope, partial(), scrub))
    const decoded = decodeChunk(withEnvelope(json.value, "chat.completion.chunk"))
    if (Either.isLeft(decoded)) {
      return Either.left(schemaMismatch("a stream event is not a completion chunk", decoded.left, scrub, partial()))
    }
    if (cut) {
      // After the cut only the usage billed for it is read.
      events++
      usage = decoded.right.usage ?? usage
      return Either.right(decoded.right)
    }
    cut = record(decoded.right)
    return Either.right(decoded.right)
  }

  /** Whether a decoded chunk goes to the caller: all before the cut; after, only once one has. */
  const reachesCaller = (chunk: ChatSchema.ChatCompletionChunk, cutBefore: boolean): boolean =>
    !cut || (delivered && (!cutBefore || chunk.choices.length === 0))

  /**
   * Whether the read after a cut has its window: it starts as the consumer asks for more, so the
   * time it spends on the chunks before the cut does not count.
   */
  let drainingAfterCut = false
  const readNext = () => {
    if (cut && !drainingAfterCut) {
      drainingAfterCut = true
      timeline.drainFor(Duration.toMillis(drainAfterCut))
    }
    return read
  }

  /** Decodes a read into chunks; says whether any event (not just comments) arrived. */
  const take = (batch: ReadonlyArray<Uint8Array>, out: Array<ChatSchema.ChatCompletionChunk>): boolean => {
    let arrived = false
    for (const bytes of batch) {
      for (const data of sse.feed(bytes)) {
        arrived = true
        if (data.trim() === "[DONE]") {
          ended = cut ? Option.some(cutShort()) : Option.none()
          if (!cut) out.push(...flushOpening())
          return arrived
        }
        const cutBefore = cut
        const event = decodeEvent(data)
        if (Either.isLeft(event)) {
          ended = Option.some(cut ? cutShort() : event.left)
          return arrived
        }
        if (!reachesCaller(event.right, cutBefore)) continue
        if (!delivered) {
          if (carriesNothing(event.right)) {
            opening.push(event.right)
            continue
          }
          out.push(...flushOpening())
          delivered = true
        }
        out.push(event.right)
      }
    }
    return arrived
  }

  const read: Effect.Effect<Chunk.Chunk<ChatSchema.ChatCompletionChunk>, Option.Option<ApiError.ApiError>> = reads.next.pipe(
    Effect.matchEffect({
      onFailure: (error) =>
        Effect.fail(Option.some(cut ? cutShort() : error._tag === "BodyBroken" ? bodyFailed(error.cause, partial()) : error)),
      onSuccess: (batch) => {
        if (batch === undefined) {
          if (cut) return Effect.fail(Option.some<ApiError.ApiError>(cutShort()))
          // A `[DONE]` whose line end never came (a proxy that trims the body) ended the answer all the same.
          if (sse.unfinished() === "[DONE]") {
            ended = Option.none()
            return emit(flushOpening())
          }
          return Effect.fail(Option.some<ApiError.ApiError>(new ApiError.StreamTruncated({ partial: partial() })))
        }
        const out: Array<ChatSchema.ChatCompletionChunk> = []
        if (!take(batch, out)) {
          timeline.keepAliveArrived(timeline.now())
          return emit(out)
        }
        const report = timeline.contentArrived()
        return report === undefined ? emit(out) : Effect.zipRight(report, emit(out))
      }
    })
  )

  const emit = (
    out: Array<ChatSchema.ChatCompletionChunk>
  ): Effect.Effect<Chunk.Chunk<ChatSchema.ChatCompletionChunk>, Option.Option<ApiError.ApiError>> =>
    out.length > 0 ? Effect.succeed(Chunk.unsafeFromArray(out)) : ended === undefined ? readNext() : close(ended)

  /** After `[DONE]` the rest of the body is read for a moment (`Reads.finish`), then the stream ends. */
  const close = (
    end: Option.Option<ApiError.ApiError>
  ): Effect.Effect<never, Option.Option<ApiError.ApiError>> =>
    Option.isSome(end) ? Effect.fail(end) : Effect.zipRight(reads.finish, Effect.fail(end))

  return Effect.suspend(() => {
    if (ended !== undefined) return close(ended)
    timeline.resume()
    return readNext()
  })
}

// ---------------------------------------------------------------------------------------------
// Telling the exchange (`CallOptions.onExchange`)
// ---------------------------------------------------------------------------------------------

type OnExchange = (exchange: Exchange) => void

/** Tells `onExchange` that the exchange failed, and fails with `error`. */
const toldFailed = <E>(onExchange: OnExchange, error: E): Effect.Effect<never, E> => {
  onExchange("failed")
  return Effect.fail(error)
}

/** `self`, told `"sent"` as it starts, then `"answered"` or `"failed"` as it ends. */
const toldWhole = <A, E, R>(self: Effect.Effect<A, E, R>, onExchange: OnExchange): Effect.Effect<A, E, R> =>
  Effect.suspend(() => {
    onExchange("sent")
    return Effect.matchEffect(self, {
      onFailure: (error) => toldFailed(onExchange, error),
      onSuccess: (value) => {
        onExchange("answered")
        return Effect.succeed(value)
      }
    })
  })

/**
 * A stream's opening, told `"sent"` as it starts and `"failed"` if it fails; its pull is told
 * `"answered"` at the stream's end and `"failed"` at its failure.
 */
const toldStream = <A, E, R>(
  opening: StreamPull.Opening<A, E, R>,
  onExchange: OnExchange
): StreamPull.Opening<A, E, R> =>
  Effect.suspend(() => {
    onExchange("sent")
    return Effect.matchEffect(opening, {
      onFailure: (error) => toldFailed(onExchange, error),
      onSuccess: (pull) =>
        Effect.succeed(Effect.tapError(pull, (end) => Effect.sync(() => onExchange(Option.isNone(end) ? "answered" : "failed"))))
    })
  })

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

/**
 * A call's transport options for an attempt holding `permit`: the caller's deadlines and answer
 * hook, with acceptance reported to the permit and, for a stream, DeepSeek's queueing time (its
 * headers to its first event). Not a non-streaming answer's: its first content is its JSON,
 * written once the whole answer was generated, so that time is the generation's too, which varies
 * with the answer's length; on a lane carrying both, windows of streams and of answers took turns
 * and read as queueing that came and went, and the brake took the limit down to 1.
 */
export const permitOptions = (
  options: Pick<CallOptions, "deadlines" | "onAnswer" | "onExchange"> | undefined,
  permit: Permit,
  kind: "create" | "stream"
): CallOptions => ({
  deadlines: options?.deadlines,
  onAnswer: options?.onAnswer,
  onExchange: options?.onExchange,
  onAccepted: permit.accepted,
  onFirstContent: kind === "stream" ? permit.recordQueueDelay : undefined
})

/** The keys a call saw refused before its first 401: shared, as most calls never meet one. */
const noneRejected: ReadonlySet<string> = new Set()

/** Refused locally: every provider answers 400 to an empty conversation. */
const noMessages = new ApiError.InvalidRequest({
  status: 400,
  message: "messages must not be empty",
  param: "messages",
  code: "empty_messages"
})

/** `Transport.NodeHttpClientOptions` in milliseconds. */
export interface NodeHttpClientSettings {
  readonly keepAliveTimeout: number
  readonly keepAliveMaxTimeout: number
  readonly connections: number | undefined
  readonly proxies: ForwardProxy.Proxies | undefined
}

/**
 * `@effect/platform-node`'s undici client on an `Agent` of its own (destroyed with the scope),
 * marked so that a transport over it sends its own calls on that `Agent` directly and opens its
 * connections ahead of need.
 */
export const nodeHttpClient = (settings: NodeHttpClientSettings): Effect.Effect<HttpClient.HttpClient, never, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(
      Effect.sync(() => {
        const connector = Connector.make({ idleMillis: settings.keepAliveTimeout, proxies: settings.proxies })
        const agent = new Agent({
          keepAliveTimeout: settings.keepAliveTimeout,
          keepAliveMaxTimeout: settings.keepAliveMaxTimeout,
          headersTimeout: 0,
          bodyTimeout: 0,
          connect: connector.connect,
          ...(settings.connections === undefined ? {} : { connections: settings.connections })
        })
        return { agent, connector }
      }),
      ({ agent, connector }) =>
        Effect.promise(() => {
          connector.close()
          return agent.destroy()
        })
    ),
    ({ agent, connector }) =>
      withUndici(NodeHttpClient.makeUndici(agent), { exchanges: new Exchanges(agent), preconnect: connector.preconnect })
  )

/** A transport over the `HttpClient` and `KeyPool` in context. */
export const make = (settings: Settings): Effect.Effect<Service, never, HttpClient.HttpClient | KeyPool> =>
  Effect.gen(function*() {
    // The URL itself is not told: it may hold a secret.
    const baseUrlProblem = BaseUrls.problemOf(settings.baseUrl)
    yield* Effect.sync(() => assertValid("Transport", [baseUrlProblem && `baseUrl: ${baseUrlProblem}`]))
    const client = yield* HttpClient.HttpClient
    const keyPool = yield* KeyPool
    const url = `${settings.baseUrl.replace(/\/+$/, "")}/chat/completions`
    const layerLimits = yield* Effect.sync(() => resolveLimits("Transport", settings.defaultDeadlines, settings.deadlines))
    const overClient = clientWire(client, url)
    const undici = undiciOf(client)
    const overUndici = Option.map(undici, ({ exchanges }) => undiciWire(exchanges, url, new Watchdog()))
    const traced = Option.getOrElse(Option.map(overUndici, (wire) => inClientSpans(wire, url)), () => overClient)
    if (Option.isSome(undici) && settings.warmUp > 0) undici.value.preconnect(new URL(url).origin, settings.warmUp)

    /**
     * A call's wire: its own undici exchanges when the client is `nodeHttpClient`'s, else the
     * client's requests (with the client's spans off when untraced, as they would go nowhere);
     * `undefined` when traced: then `traced`, the exchanges in the client's HTTP spans, in a span
     * of the transport's.
     */
    const wireOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>) =>
      isTraced(fiber) ? undefined : Option.getOrElse(overUndici, () => overClient)

    const attributesOf = (request: ChatSchema.ChatCompletionRequest) => ({ attributes: { model: request.model }, captureStackTrace: false })

    /** A call's timeline; deadlines of its own that are no deadlines (zero) are a defect of the call. */
    const startTimeline = (options: CallOptions | undefined, wholeBody: boolean) =>
      options?.deadlines === undefined ? Timeline.start(layerLimits, options, wholeBody) : Effect.suspend(() =>
        Timeline.start(
          resolveLimits("Transport call", settings.defaultDeadlines, settings.deadlines, options.deadlines),
          options,
          wholeBody
        )
      )

    /**
     * Sends with `credential`, retrying a stale connection and rotating keys on 401. `rejected`
     * holds the keys this call already saw refused: a key back from its cooldown is not tried
     * twice in one call.
     */
    const attempt = (
      wire: Wire,
      body: string,
      timeline: Timeline,
      credential: Credential,
      staleRetries: number,
      rejected: ReadonlySet<string> = noneRejected
    ): Effect.Effect<Answered, ApiError.ApiError> =>
      Effect.matchEffect(wire.send(body, `Bearer ${Redacted.value(credential.key)}`, timeline), {
        onFailure: (failure) =>
          failure._tag === "DeadlineExceeded"
            ? Effect.fail(failure)
            : failure.fromRequest && staleRetries > 0 && isStaleConnection(failure.cause)
            ? attempt(wire, body, timeline, credential, staleRetries - 1, rejected)
            : Effect.fail(requestFailed(failure.cause)),
        onSuccess: (reply) =>
          reply.status >= 200 && reply.status < 300
            ? Effect.as(timeline.headersArrived, { reply, scrub: scrubberOf(credential.key) })
            : refused(wire, body, timeline, credential, staleRetries, rejected, reply)
      })

    const refused = (
      wire: Wire,
      body: string,
      timeline: Timeline,
      credential: Credential,
      staleRetries: number,
      rejected: ReadonlySet<string>,
      reply: Reply
    ): Effect.Effect<Answered, ApiError.ApiError> =>
      Effect.flatMap(reply.errorText, (text) => {
        const problem = problemOf(
          parseJson(text),
          text,
          `HTTP ${reply.status}`,
          scrubberOf(credential.key),
          isNotFound(reply.status) ? noEndpointAt(url) : ""
        )
        if (reply.status !== 401) {
          return Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.fail(statusError(reply, problem, now)))
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
              seen.has(next.id) ? Effect.fail(keyRejected) : attempt(wire, body, timeline, next, staleRetries, seen)
          })
        )
      })

    const send = (wire: Wire, body: unknown, timeline: Timeline) =>
      Effect.flatMap(
        keyPool.acquire,
        (credential) => attempt(wire, ExactJson.stringify(body), timeline, credential, settings.staleConnectionRetries)
      )

    const createOn = (wire: Wire, request: ChatSchema.ChatCompletionRequest, options: CallOptions | undefined) =>
      Effect.flatMap(startTimeline(options, true), (timeline) =>
        wire.within(
          timeline,
          Effect.flatMap(send(wire, nonStreaming(request), timeline), ({ reply, scrub }) => {
            const completion = completionOf(reply, timeline, scrub)
            const onAnswer = options?.onAnswer
            return onAnswer === undefined ? completion : Effect.tap(completion, onAnswer)
          })
        ))

    const createTold = (wire: Wire, request: ChatSchema.ChatCompletionRequest, options: CallOptions | undefined) => {
      const onExchange = options?.onExchange
      return onExchange === undefined ? createOn(wire, request, options) : toldWhole(createOn(wire, request, options), onExchange)
    }

    const create: Service["create"] = (request, options) =>
      request.messages.length === 0 ? Effect.fail(noMessages) : Effect.withFiberRuntime((fiber) => {
        const wire = wireOf(fiber)
        if (wire === undefined) {
          return Effect.withSpan(createTold(traced, request, options), "weatherproof.Transport.create", attributesOf(request))
        }
        // Only the client's requests make spans: the undici exchanges need no tracer turned off.
        return wire === overClient
          ? Effect.withTracerEnabled(createTold(wire, request, options), false)
          : createTold(wire, request, options)
      })

    /**
     * Whether this upstream takes `stream_options`: asked for every stream (its usage), until one
     * refuses the field (a server that refuses fields it does not know, as older Azure API
     * versions do). A refusal costs nothing (nothing was generated): the stream is sent again
     * without it, and so are the streams after it, their usage then unreported.
     */
    let streamOptionsTaken = true
    const streamBody = (request: ChatSchema.ChatCompletionRequest) =>
      streamOptionsTaken || request.stream_options != null
        ? { ...request, stream: true, stream_options: { ...request.stream_options, include_usage: true } }
        : { ...request, stream: true }
    /** Whether `error` refuses the `stream_options` this transport added to `body` (the caller gave none). */
    const refusesAdded = (request: ChatSchema.ChatCompletionRequest, body: { readonly stream_options?: unknown }) =>
    (error: ApiError.ApiError) =>
      request.stream_options == null && body.stream_options !== undefined && error._tag === "InvalidRequest" &&
      (error.param === "stream_options" || error.message.includes("stream_options"))
    // Said once: the streams sent beside the first refused one are refused too.
    const withoutStreamOptions = Effect.suspend(() => {
      if (!streamOptionsTaken) return Effect.void
      streamOptionsTaken = false
      return Effect.logWarning(
        `Transport: ${url} refused stream_options: streams go without it from now on, and their usage, which the server then does not send, is not counted`
      )
    })

    /** The scoped start of a stream on `wire`: its chunks, pulled as the consumer asks. */
    const streamOn = (
      wire: Wire,
      request: ChatSchema.ChatCompletionRequest,
      options: CallOptions | undefined
    ): StreamPull.Opening<ChatSchema.ChatCompletionChunk, ApiError.ApiError> => {
      const opening = Effect.gen(function*() {
        const timeline = yield* startTimeline(options, false)
        yield* wire.watchScoped(timeline)
        const body = streamBody(request)
        const { reply, scrub } = yield* send(wire, body, timeline).pipe(
          Effect.catchIf(refusesAdded(request, body), () =>
            Effect.zipRight(withoutStreamOptions, Effect.suspend(() => send(wire, streamBody(request), timeline))))
        )
        const contentType = reply.headers["content-type"]
        if (contentType === undefined || contentType.includes("event-stream")) return chunkReader(yield* reply.reads, timeline, scrub)
        if (contentType.includes("json")) return yield* wholeAnswer(reply, timeline, scrub)
        return yield* Effect.flatMap(reply.errorText, (text) => Effect.fail(notAStream(contentType, text, scrub)))
      })
      const onExchange = options?.onExchange
      return onExchange === undefined ? opening : toldStream(opening, onExchange)
    }

    // The wire chosen as the stream opens; traced, the stream in a span of its own.
    const stream: Service["stream"] = (request, options) =>
      StreamPull.fromOpening(
        request.messages.length === 0 ? Effect.fail(noMessages) : Effect.withFiberRuntime((fiber) => {
          const wire = wireOf(fiber)
          return wire === undefined
            ? StreamPull.openingOf(Stream.withSpan(
              StreamPull.fromOpening(streamOn(traced, request, options)),
              "weatherproof.Transport.stream",
              attributesOf(request)
            ))
            : streamOn(wire, request, options)
        })
      )

    return { create, stream }
  })
