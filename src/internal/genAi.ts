/**
 * Spans in the OpenTelemetry GenAI semantic conventions
 * (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/): a chat request's attributes
 * and its response's, weatherproof's own (`weatherproof.*`), and what a traced call of the client
 * learns from the attempts the account pool places for it.
 *
 * The attribute names are copied here, as `@opentelemetry/semantic-conventions` recommends for
 * its incubating conventions (that entry point may break in a minor release, and loading it costs
 * tens of milliseconds); `test/tracing.test.ts` checks each against the installed package.
 *
 * Nothing here reads a key, and the prompt and the completion are recorded only when the caller
 * opted in (`content`).
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import type * as Tracer from "effect/Tracer"
import * as ApiError from "../ApiError.js"
import { contentText } from "../ChatSchema.js"
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  Message,
  MessageContent,
  ToolCall,
  Usage
} from "../ChatSchema.js"
import * as ChatStream from "../ChatStream.js"
import type { Cost } from "../CostLedger.js"
import { splitUsage } from "./costLedger.js"
import { inSpan, inStreamSpan } from "./tracing.js"

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

// Each exported: a test checks every one against @opentelemetry/semantic-conventions.

export const ATTR_GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
export const ATTR_GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
export const ATTR_GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
export const ATTR_GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
export const ATTR_GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
export const ATTR_GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
export const ATTR_GEN_AI_REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
export const ATTR_GEN_AI_REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
export const ATTR_GEN_AI_REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
export const ATTR_GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
export const ATTR_GEN_AI_OUTPUT_TYPE = "gen_ai.output.type"
export const ATTR_GEN_AI_RESPONSE_ID = "gen_ai.response.id"
export const ATTR_GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
export const ATTR_GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
export const ATTR_GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
export const ATTR_GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
export const ATTR_GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
export const ATTR_GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
export const ATTR_GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
export const ATTR_GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
export const GEN_AI_OPERATION_NAME_VALUE_CHAT = "chat"
export const GEN_AI_PROVIDER_NAME_VALUE_DEEPSEEK = "deepseek"
export const GEN_AI_OUTPUT_TYPE_VALUE_JSON = "json"
export const GEN_AI_OUTPUT_TYPE_VALUE_TEXT = "text"
// Stable conventions, copied too: the package's main entry point costs ~13 ms to load for three names.
export const ATTR_ERROR_TYPE = "error.type"
export const ATTR_SERVER_ADDRESS = "server.address"
export const ATTR_SERVER_PORT = "server.port"
export const ERROR_TYPE_VALUE_OTHER = "_OTHER"

/** weatherproof's own attributes. Durations are in seconds, as OpenTelemetry's are. */
export const weatherproofAttributes = {
  /** Client: attempts sent (after the policy's gates); 0 when the response cache answered. */
  attempts: "weatherproof.attempts",
  /** Client: attempts after the first. */
  retries: "weatherproof.retries",
  /** Client: 429s its attempts met. */
  rateLimited: "weatherproof.rate_limited",
  /** Client: the attempts' waits for an account (with an `AccountPool`); attempt: its own. */
  queueWait: "weatherproof.queue_wait",
  /** Client: the attempts' cost in USD as the `CostLedger` recorded it (with an `AccountPool`); attempt: its own. */
  costUsd: "weatherproof.cost_usd",
  /** Attempt: the account it was placed on. */
  account: "weatherproof.account",
  /** Attempt: which of the client's attempts it belongs to (1 is the first; failovers within an attempt share it). */
  attempt: "weatherproof.attempt"
} as const

// ---------------------------------------------------------------------------------------------
// Request and response
// ---------------------------------------------------------------------------------------------

type Attributes = Record<string, unknown>

const setDefined = (attributes: Attributes, name: string, value: unknown): void => {
  if (value !== undefined && value !== null) attributes[name] = value
}

/** What a request asks for (never what it says): the operation, the provider, the model, the sampling. */
const requestAttributes = (request: ChatCompletionRequest, provider: string, stream: boolean): Attributes => {
  const attributes: Attributes = {
    [ATTR_GEN_AI_OPERATION_NAME]: GEN_AI_OPERATION_NAME_VALUE_CHAT,
    [ATTR_GEN_AI_PROVIDER_NAME]: provider,
    [ATTR_GEN_AI_REQUEST_MODEL]: request.model
  }
  if (stream) attributes[ATTR_GEN_AI_REQUEST_STREAM] = true
  // Set only when the request asks for a format, as the conventions say.
  if (request.response_format != null) {
    attributes[ATTR_GEN_AI_OUTPUT_TYPE] = request.response_format.type === "json_object"
      ? GEN_AI_OUTPUT_TYPE_VALUE_JSON
      : GEN_AI_OUTPUT_TYPE_VALUE_TEXT
  }
  setDefined(attributes, ATTR_GEN_AI_REQUEST_MAX_TOKENS, request.max_tokens)
  setDefined(attributes, ATTR_GEN_AI_REQUEST_TEMPERATURE, request.temperature)
  setDefined(attributes, ATTR_GEN_AI_REQUEST_TOP_P, request.top_p)
  setDefined(attributes, ATTR_GEN_AI_REQUEST_FREQUENCY_PENALTY, request.frequency_penalty)
  setDefined(attributes, ATTR_GEN_AI_REQUEST_PRESENCE_PENALTY, request.presence_penalty)
  setDefined(attributes, ATTR_GEN_AI_REQUEST_STOP_SEQUENCES, typeof request.stop === "string" ? [request.stop] : request.stop)
  return attributes
}

const annotateUsage = (span: Tracer.Span, usage: Usage): void => {
  const tokens = splitUsage(usage)
  span.attribute(ATTR_GEN_AI_USAGE_INPUT_TOKENS, tokens.prompt)
  span.attribute(ATTR_GEN_AI_USAGE_OUTPUT_TOKENS, tokens.completion)
  span.attribute(ATTR_GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, tokens.cacheHit)
  span.attribute(ATTR_GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, tokens.reasoning)
}

/** The finish reasons as DeepSeek names them, one per choice (`insufficient_system_resource` included). */
const finishReasons = (completion: ChatCompletion): Array<string> =>
  completion.choices.flatMap((choice) => choice.finish_reason === null ? [] : [choice.finish_reason])

const annotateCompletion = (span: Tracer.Span, completion: ChatCompletion, content: boolean): void => {
  span.attribute(ATTR_GEN_AI_RESPONSE_ID, completion.id)
  span.attribute(ATTR_GEN_AI_RESPONSE_MODEL, completion.model)
  span.attribute(ATTR_GEN_AI_RESPONSE_FINISH_REASONS, finishReasons(completion))
  if (completion.usage != null) annotateUsage(span, completion.usage)
  if (content) span.attribute(ATTR_GEN_AI_OUTPUT_MESSAGES, JSON.stringify(outputMessages(completion)))
}

/**
 * `error.type`: the error's `_tag` (`RateLimited`, `InsufficientBalance` …). The pool's
 * `FailedOver` names the account-level error it failed over from, its `cause`.
 */
const errorType = (error: unknown): string => {
  const tag = ApiError.tagOf(error)
  if (tag === "FailedOver" && typeof error === "object" && error !== null && "cause" in error) return errorType(error.cause)
  return tag ?? ERROR_TYPE_VALUE_OTHER
}

const annotateError = (span: Tracer.Span, error: unknown): void => span.attribute(ATTR_ERROR_TYPE, errorType(error))

/** `self`, its completion or its error's type read into `span`. */
const annotateResult = <E, R>(self: Effect.Effect<ChatCompletion, E, R>, span: Tracer.Span, content: boolean) =>
  Effect.tapBoth(self, {
    onSuccess: (completion) => Effect.sync(() => annotateCompletion(span, completion, content)),
    onFailure: (error) => Effect.sync(() => annotateError(span, error))
  })

/** A response's attributes as its chunks arrive: each is set once known, so the span has them however it ends. */
class StreamResponse {
  private started = false
  private readonly reasons: Array<string> = []
  private folded: ChatStream.State = ChatStream.empty

  constructor(private readonly span: Tracer.Span, private readonly content: boolean) {}

  readonly chunk = (chunk: ChatCompletionChunk): void => {
    if (!this.started) {
      this.started = true
      this.span.attribute(ATTR_GEN_AI_RESPONSE_ID, chunk.id)
      this.span.attribute(ATTR_GEN_AI_RESPONSE_MODEL, chunk.model)
    }
    for (const choice of chunk.choices) {
      if (choice.finish_reason !== undefined && choice.finish_reason !== null) {
        this.reasons[choice.index] = choice.finish_reason
        this.span.attribute(ATTR_GEN_AI_RESPONSE_FINISH_REASONS, this.reasons.filter((reason) => reason !== undefined))
      }
    }
    if (chunk.usage !== undefined && chunk.usage !== null) annotateUsage(this.span, chunk.usage)
    if (this.content) this.folded = ChatStream.step(this.folded, chunk)
  }

  /** The output, folded once as the stream ends (before its span does). */
  readonly end = (): void => {
    if (this.content && this.started) {
      this.span.attribute(ATTR_GEN_AI_OUTPUT_MESSAGES, JSON.stringify(outputMessages(ChatStream.toCompletion(this.folded))))
    }
  }
}

/** `self`'s chunks read into `span`, and its error's type. */
const annotateStream = <E, R>(self: Stream.Stream<ChatCompletionChunk, E, R>, span: Tracer.Span, content: boolean) => {
  const response = new StreamResponse(span, content)
  return self.pipe(
    Stream.tap((chunk) => Effect.sync(() => response.chunk(chunk))),
    Stream.tapError((error) => Effect.sync(() => annotateError(span, error))),
    Stream.ensuring(Effect.sync(response.end))
  )
}

// ---------------------------------------------------------------------------------------------
// Content, when the caller opted in: `gen_ai.input.messages` and `gen_ai.output.messages`
// ---------------------------------------------------------------------------------------------

/** A message part as the conventions' JSON schemas shape it: `text`, `reasoning`, `tool_call`, `tool_call_response`. */
type Part = { readonly type: string; readonly [field: string]: string }

const text = (content: string): Part => ({ type: "text", content })

/** A content's parts: its text as one part, or each part (a text, or a part of another kind by its type). */
const contentParts = (content: MessageContent): Array<Part> =>
  typeof content === "string"
    ? [text(content)]
    : content.map((part) => part.text == null ? { type: part.type } : text(part.text))

const assistantParts = (message: {
  readonly content?: MessageContent | null | undefined
  readonly reasoning_content?: string | null | undefined
  readonly tool_calls?: ReadonlyArray<ToolCall> | null | undefined
}): Array<Part> => [
  ...(message.reasoning_content ? [{ type: "reasoning", content: message.reasoning_content }] : []),
  ...(message.content ? contentParts(message.content) : []),
  ...(message.tool_calls ?? []).map((call): Part => ({
    type: "tool_call",
    id: call.id,
    name: call.function.name,
    arguments: call.function.arguments
  }))
]

const inputMessage = (message: Message): { readonly role: string; readonly parts: ReadonlyArray<Part> } => {
  switch (message.role) {
    case "system":
    case "developer":
    case "user":
      return { role: message.role, parts: contentParts(message.content) }
    case "assistant":
      return { role: "assistant", parts: assistantParts(message) }
    case "tool":
      return {
        role: "tool",
        parts: [{ type: "tool_call_response", id: message.tool_call_id, response: contentText(message.content) }]
      }
    case "function": // the legacy functions API's result, which has no call id
      return { role: "tool", parts: [{ type: "tool_call_response", response: contentText(message.content) }] }
  }
}

const outputMessages = (completion: ChatCompletion) =>
  completion.choices.map((choice) => ({
    role: "assistant",
    parts: assistantParts(choice.message),
    finish_reason: choice.finish_reason ?? undefined
  }))

// ---------------------------------------------------------------------------------------------
// The client's span: one per call, over its attempts
// ---------------------------------------------------------------------------------------------

/** Adds `amount` to the number attribute `name` of `span`. */
const add = (span: Tracer.Span, name: string, amount: number): void =>
  span.attribute(name, ((span.attributes.get(name) as number | undefined) ?? 0) + amount)

/**
 * The client's span of a call, parent of `span`. The call's totals are its span's own attributes
 * (`callAttributes` starts them): its attempts add to them, the pool's attempt spans (its
 * children) too. No registry of spans: a `WeakMap` entry per call cost ~6 µs a call in the
 * garbage collector.
 */
const callSpanOf = (span: Tracer.Span): Tracer.Span | undefined => {
  const parent = Option.getOrUndefined(span.parent)
  return parent?._tag === "Span" && parent.attributes.has(weatherproofAttributes.attempts) ? parent : undefined
}

/** What a call of the client wraps each attempt in: nothing untraced; a count of it, traced. */
export interface Trace {
  readonly attempt: <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  readonly attemptStream: <A, E, R>(self: Stream.Stream<A, E, R>) => Stream.Stream<A, E, R>
}

export const untraced: Trace = { attempt: (self) => self, attemptStream: (self) => self }

/** Counts each attempt of the call of `span`, and the 429s they meet. */
const callTrace = (span: Tracer.Span): Trace => {
  const started = () => {
    add(span, weatherproofAttributes.attempts, 1)
    span.attribute(weatherproofAttributes.retries, (span.attributes.get(weatherproofAttributes.attempts) as number) - 1)
  }
  const failed = (error: unknown) =>
    Effect.sync(() => {
      if (ApiError.tagOf(error) === "RateLimited") add(span, weatherproofAttributes.rateLimited, 1)
    })
  return {
    attempt: (self) =>
      Effect.suspend(() => {
        started()
        return Effect.tapError(self, failed)
      }),
    attemptStream: (self) =>
      Stream.suspend(() => {
        started()
        return Stream.tapError(self, failed)
      })
  }
}

const callAttributes = (request: ChatCompletionRequest, content: boolean, stream: boolean): Attributes => {
  const attributes = requestAttributes(request, GEN_AI_PROVIDER_NAME_VALUE_DEEPSEEK, stream)
  attributes[weatherproofAttributes.attempts] = 0
  attributes[weatherproofAttributes.rateLimited] = 0
  if (content) attributes[ATTR_GEN_AI_INPUT_MESSAGES] = JSON.stringify(request.messages.map(inputMessage))
  return attributes
}

/** A client's `create` in its span `name` (kind client): `call` gets the trace to wrap each attempt in. */
export const traceCreate = <E, R>(
  name: string,
  request: ChatCompletionRequest,
  content: boolean,
  call: (trace: Trace) => Effect.Effect<ChatCompletion, E, R>
): Effect.Effect<ChatCompletion, E, R> =>
  inSpan(
    name,
    { kind: "client", attributes: callAttributes(request, content, false) },
    (span) => annotateResult(call(callTrace(span)), span, content)
  )

/** A client's `stream` in its span `name` (kind client), as `traceCreate`. */
export const traceStream = <E, R>(
  name: string,
  request: ChatCompletionRequest,
  content: boolean,
  call: (trace: Trace) => Stream.Stream<ChatCompletionChunk, E, R>
): Stream.Stream<ChatCompletionChunk, E, R> =>
  inStreamSpan(
    name,
    { kind: "client", attributes: callAttributes(request, content, true) },
    (span) => annotateStream(call(callTrace(span)), span, content)
  )

// ---------------------------------------------------------------------------------------------
// The pool's spans: one per attempt placed on an account
// ---------------------------------------------------------------------------------------------

/** An attempt placed on an account: the account, the model sent, how long it waited for the placement. */
export interface Placement {
  /** The pool's own record of the placement: the costs recorded for it (`noteCost`) go to its span. */
  readonly placed: object
  readonly account: { readonly name: string; readonly provider: string; readonly baseUrl: string }
  readonly model: string
  readonly queueWaitMillis: number
}

const parseUrl = (url: string): URL | undefined => {
  try {
    return new URL(url)
  } catch {
    return undefined
  }
}

const serverAttributes = (baseUrl: string): Attributes => {
  const url = parseUrl(baseUrl)
  if (url === undefined) return {}
  const port = url.port === "" ? (url.protocol === "http:" ? 80 : 443) : Number(url.port)
  return { [ATTR_SERVER_ADDRESS]: url.hostname, [ATTR_SERVER_PORT]: port }
}

const placementAttributes = (request: ChatCompletionRequest, placement: Placement, stream: boolean): Attributes => ({
  ...requestAttributes({ ...request, model: placement.model }, placement.account.provider, stream),
  ...serverAttributes(placement.account.baseUrl),
  [weatherproofAttributes.account]: placement.account.name,
  [weatherproofAttributes.queueWait]: placement.queueWaitMillis / 1000
})

/**
 * The spans of the attempts in flight, by placement, for the costs recorded for them: the pool
 * records a stream's in a finalizer, which runs without the stream's context (so not by the
 * current span). Each entry is removed as its attempt ends.
 */
const attempts = new Map<object, Tracer.Span>()

/** Numbers the attempt as its call's current one, and adds its wait to the call's. */
const startAttempt = (span: Tracer.Span, placement: Placement): void => {
  const call = callSpanOf(span)
  if (call !== undefined) {
    span.attribute(weatherproofAttributes.attempt, call.attributes.get(weatherproofAttributes.attempts))
    add(call, weatherproofAttributes.queueWait, placement.queueWaitMillis / 1000)
  }
  attempts.set(placement.placed, span)
}

const endAttempt = (placement: Placement) => Effect.sync(() => attempts.delete(placement.placed))

/** One attempt of the pool's `create` on its account, in its span `name`. */
export const attemptSpan = <E, R>(
  name: string,
  request: ChatCompletionRequest,
  placement: Placement,
  self: Effect.Effect<ChatCompletion, E, R>
): Effect.Effect<ChatCompletion, E, R> =>
  inSpan(name, { attributes: placementAttributes(request, placement, false) }, (span) => {
    startAttempt(span, placement)
    return Effect.ensuring(annotateResult(self, span, false), endAttempt(placement))
  })

/** One attempt of the pool's `stream` on its account, in its span `name`. */
export const attemptStreamSpan = <E, R>(
  name: string,
  request: ChatCompletionRequest,
  placement: Placement,
  self: Stream.Stream<ChatCompletionChunk, E, R>
): Stream.Stream<ChatCompletionChunk, E, R> =>
  inStreamSpan(name, { attributes: placementAttributes(request, placement, true) }, (span) => {
    startAttempt(span, placement)
    return Stream.ensuring(annotateStream(self, span, false), endAttempt(placement))
  })

/** Adds the cost the ledger recorded for an attempt to its span and its call's; nothing for an attempt not traced. */
export const noteCost = (placed: object, cost: Cost): Effect.Effect<void> =>
  cost._tag === "Unpriced" ? Effect.void : Effect.sync(() => {
    const span = attempts.get(placed)
    if (span === undefined) return
    add(span, weatherproofAttributes.costUsd, cost.usd)
    const call = callSpanOf(span)
    if (call !== undefined) add(call, weatherproofAttributes.costUsd, cost.usd)
  })
