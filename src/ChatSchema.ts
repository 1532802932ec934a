/**
 * Schemas of the OpenAI-compatible chat completions API as DeepSeek speaks it.
 *
 * Every struct keeps fields it does not model (`onExcessProperty: "preserve"`), so a field the
 * API adds tomorrow passes through a decode/encode round trip untouched.
 *
 * @since 0.1.0
 */

import * as Schema from "effect/Schema"

const preserve = { parseOptions: { onExcessProperty: "preserve" } } as const

/**
 * An optional field of a request that may also be `null`, at any depth, as OpenAI's API reads it
 * (unset) and clients send it (Python's `None` for an unset attribute).
 */
const nullable = <S extends Schema.Schema.Any>(schema: S) => Schema.optional(Schema.NullOr(schema))

/** A struct that keeps unknown fields; `identifier` names it in a decoding error's message. */
const open = <Fields extends Schema.Struct.Fields>(fields: Fields, identifier?: string) =>
  Schema.Struct(fields).annotations(identifier === undefined ? preserve : { ...preserve, identifier })

/**
 * Why a choice stopped. `insufficient_system_resource` means DeepSeek cut inference short:
 * the transport turns it into a retryable `InsufficientResource` error, never a success.
 * `function_call` is OpenAI's legacy functions API (a request's `functions`, passed through).
 *
 * @since 0.1.0
 */
export const FinishReason = Schema.Literal(
  "stop",
  "length",
  "content_filter",
  "tool_calls",
  "function_call",
  "insufficient_system_resource"
)
/** @since 0.1.0 */
export type FinishReason = typeof FinishReason.Type

/** A function call made by the model. @since 0.1.0 */
export const ToolCall = open({
  id: Schema.String,
  type: Schema.Literal("function"),
  function: open({ name: Schema.String, arguments: Schema.String })
}, "ToolCall")
/** @since 0.1.0 */
export type ToolCall = typeof ToolCall.Type

/**
 * `function`, the only kind of tool call there is, as an answer may give it: left out or null
 * (vLLM, Ollama, Azure AI), or empty (Novita, on a call's later stream pieces).
 */
const AnsweredKind = Schema.transform(Schema.NullOr(Schema.Literal("function", "")), Schema.Literal("function"), {
  strict: true,
  decode: () => "function" as const,
  encode: (kind) => kind
})

/**
 * A function call's `arguments` as an answer may give them: left out or null for a function of
 * no parameters (OpenRouter, for some models), which is `"{}"`, as OpenAI sends it.
 */
const AnsweredArguments = Schema.optionalWith(Schema.String, { nullable: true, default: () => "{}" })

/** A tool call of an answer: a `ToolCall` whose `type` may be left out, null or empty, and its `arguments` left out or null. */
const AnsweredToolCall = open({
  ...ToolCall.fields,
  type: Schema.optionalWith(AnsweredKind, { default: () => "function" as const }),
  function: open({ name: Schema.String, arguments: AnsweredArguments })
}, "ToolCall")

/** A part of a multi-part message (`{"type": "text", "text": …}`; other kinds keep their fields). @since 0.1.0 */
export const ContentPart = open({ type: Schema.String, text: nullable(Schema.String) }, "ContentPart")

/**
 * A message's content: a string, or parts, as OpenAI's API takes for every role (DeepSeek's
 * documents strings; an upstream that takes no parts answers for itself).
 *
 * @since 0.1.0
 */
export const MessageContent = Schema.Union(Schema.String, Schema.Array(ContentPart))
/** @since 0.1.0 */
export type MessageContent = typeof MessageContent.Type

/**
 * The text of a message's content: the string, or its text parts joined (other parts, such as
 * images, have none).
 *
 * @since 0.1.0
 * @category utils
 * @example
 * ```ts
 * import { ChatSchema } from "weatherproof"
 *
 * ChatSchema.contentText([{ type: "text", text: "Hello, " }, { type: "text", text: "world" }]) // "Hello, world"
 * ```
 */
export const contentText = (content: MessageContent | null | undefined): string =>
  content == null ? "" : typeof content === "string" ? content : content.map((part) => part.text ?? "").join("")

/** @since 0.1.0 */
export const SystemMessage = open({
  role: Schema.Literal("system"),
  content: MessageContent,
  name: nullable(Schema.String)
}, "SystemMessage")

/**
 * Instructions, under OpenAI's newer name for them, which clients written for its reasoning models
 * send; passed on as given, as every field is.
 *
 * @since 0.1.0
 */
export const DeveloperMessage = open({
  role: Schema.Literal("developer"),
  content: MessageContent,
  name: nullable(Schema.String)
}, "DeveloperMessage")

/** @since 0.1.0 */
export const UserMessage = open({
  role: Schema.Literal("user"),
  content: MessageContent,
  name: nullable(Schema.String)
}, "UserMessage")

/**
 * An assistant turn. On turns that made tool calls DeepSeek requires `reasoning_content` to be
 * sent back in thinking mode, so it is part of the model, not an extra.
 *
 * @since 0.1.0
 */
export const AssistantMessage = open({
  role: Schema.Literal("assistant"),
  content: Schema.optional(Schema.NullOr(MessageContent)),
  reasoning_content: Schema.optional(Schema.NullOr(Schema.String)),
  tool_calls: Schema.optional(Schema.NullOr(Schema.Array(ToolCall))),
  name: nullable(Schema.String),
  prefix: nullable(Schema.Boolean)
}, "AssistantMessage")

/** @since 0.1.0 */
export const ToolMessage = open({
  role: Schema.Literal("tool"),
  content: MessageContent,
  tool_call_id: Schema.String
}, "ToolMessage")

/**
 * A function's result under OpenAI's legacy functions API (a request's `functions`, an answer's
 * `function_call`, both passed through), which older clients still send.
 *
 * @since 0.1.0
 */
export const FunctionMessage = open({
  role: Schema.Literal("function"),
  name: Schema.String,
  content: Schema.NullOr(MessageContent)
}, "FunctionMessage")

/** @since 0.1.0 */
export const Message = Schema.Union(
  SystemMessage,
  DeveloperMessage,
  UserMessage,
  AssistantMessage,
  ToolMessage,
  FunctionMessage
).annotations({
  identifier: "Message"
})
/** @since 0.1.0 */
export type Message = typeof Message.Type

/** A tool the model may call. @since 0.1.0 */
export const Tool = open({
  type: Schema.Literal("function"),
  function: open({
    name: Schema.String,
    description: nullable(Schema.String),
    parameters: nullable(Schema.Record({ key: Schema.String, value: Schema.Unknown })),
    strict: nullable(Schema.Boolean)
  })
}, "Tool")

/** Thinking mode switch. @since 0.1.0 */
export const Thinking = open({ type: Schema.Literal("enabled", "disabled") }, "Thinking")

/**
 * A chat completion request. Only `model` and `messages` are required; everything else is
 * forwarded as given, `null` as unset. `stream` is set by the transport (`create` vs `stream`). `messages` is any
 * array, so chat history typed `Array<Message>` fits; the transport refuses an empty one locally
 * (`InvalidRequest`) before anything is sent.
 *
 * @since 0.1.0
 */
export const ChatCompletionRequest = open({
  model: Schema.String,
  messages: Schema.Array(Message),
  thinking: nullable(Thinking),
  reasoning_effort: nullable(Schema.String),
  // DeepSeek takes "text" and "json_object"; others also "json_schema" (structured outputs).
  response_format: nullable(open({ type: Schema.String })),
  stream: nullable(Schema.Boolean),
  stream_options: nullable(open({ include_usage: nullable(Schema.Boolean) })),
  max_tokens: nullable(Schema.Int.pipe(Schema.positive())),
  temperature: nullable(Schema.Number),
  top_p: nullable(Schema.Number),
  frequency_penalty: nullable(Schema.Number),
  presence_penalty: nullable(Schema.Number),
  stop: nullable(Schema.Union(Schema.String, Schema.Array(Schema.String))),
  tools: nullable(Schema.Array(Tool)),
  tool_choice: Schema.optional(Schema.Unknown),
  logprobs: nullable(Schema.Boolean),
  top_logprobs: nullable(Schema.Int),
  user_id: nullable(Schema.String)
}, "ChatCompletionRequest")
/** @since 0.1.0 */
export type ChatCompletionRequest = typeof ChatCompletionRequest.Type

/**
 * Token usage. `prompt_tokens = prompt_cache_hit_tokens + prompt_cache_miss_tokens`;
 * `completion_tokens` includes `completion_tokens_details.reasoning_tokens`. `total_tokens` is
 * optional: some OpenAI-compatible servers leave it out, and a billed answer is never refused
 * for its accounting.
 *
 * @since 0.1.0
 */
export const Usage = open({
  prompt_tokens: Schema.Number,
  completion_tokens: Schema.Number,
  total_tokens: Schema.optional(Schema.Number),
  prompt_cache_hit_tokens: Schema.optional(Schema.Number),
  prompt_cache_miss_tokens: Schema.optional(Schema.Number),
  prompt_tokens_details: Schema.optional(
    Schema.NullOr(open({ cached_tokens: Schema.optional(Schema.Number) }))
  ),
  completion_tokens_details: Schema.optional(
    Schema.NullOr(open({ reasoning_tokens: Schema.optional(Schema.Number) }))
  )
}, "Usage")
/** @since 0.1.0 */
export type Usage = typeof Usage.Type

/**
 * The assistant message of a non-streaming choice. `refusal` is OpenAI's: the model's refusal,
 * in place of `content`.
 *
 * @since 0.1.0
 */
export const ResponseMessage = open({
  role: Schema.Literal("assistant"),
  content: Schema.optional(Schema.NullOr(Schema.String)),
  reasoning_content: Schema.optional(Schema.NullOr(Schema.String)),
  refusal: Schema.optional(Schema.NullOr(Schema.String)),
  tool_calls: Schema.optional(Schema.NullOr(Schema.Array(AnsweredToolCall)))
}, "ResponseMessage")

/** @since 0.1.0 */
export const Choice = open({
  index: Schema.Number,
  message: ResponseMessage,
  finish_reason: Schema.NullOr(FinishReason),
  logprobs: Schema.optional(Schema.Unknown)
}, "Choice")

/**
 * A non-streaming chat completion. `usage` may be `null` (some OpenAI-compatible servers send
 * it), as in a chunk: the answer is delivered, its cost unmetered.
 *
 * @since 0.1.0
 */
export const ChatCompletion = open({
  id: Schema.String,
  object: Schema.String,
  created: Schema.Number,
  model: Schema.String,
  choices: Schema.Array(Choice),
  usage: Schema.optional(Schema.NullOr(Usage)),
  system_fingerprint: Schema.optional(Schema.NullOr(Schema.String))
}, "ChatCompletion")
/** @since 0.1.0 */
export type ChatCompletion = typeof ChatCompletion.Type

/**
 * A tool call fragment in a stream delta; `arguments` arrives in pieces, `type` may be empty on
 * later ones.
 *
 * @since 0.1.0
 */
export const DeltaToolCall = open({
  index: Schema.Number,
  id: Schema.optional(Schema.NullOr(Schema.String)),
  type: Schema.optional(Schema.NullOr(Schema.Literal("function", ""))),
  function: Schema.optional(Schema.NullOr(open({
    name: Schema.optional(Schema.NullOr(Schema.String)),
    arguments: Schema.optional(Schema.NullOr(Schema.String))
  })))
}, "DeltaToolCall")

/** @since 0.1.0 */
export const Delta = open({
  role: Schema.optional(Schema.NullOr(Schema.String)),
  content: Schema.optional(Schema.NullOr(Schema.String)),
  reasoning_content: Schema.optional(Schema.NullOr(Schema.String)),
  refusal: Schema.optional(Schema.NullOr(Schema.String)),
  tool_calls: Schema.optional(Schema.NullOr(Schema.Array(DeltaToolCall)))
}, "Delta")

/** @since 0.1.0 */
export const ChunkChoice = open({
  index: Schema.Number,
  delta: Delta,
  finish_reason: Schema.optional(Schema.NullOr(FinishReason)),
  logprobs: Schema.optional(Schema.Unknown)
}, "ChunkChoice")

/**
 * One streamed `chat.completion.chunk`. With `stream_options.include_usage` the usage arrives in
 * a final chunk with `choices: []`; DeepSeek may also put it on the last content chunk.
 *
 * @since 0.1.0
 */
export const ChatCompletionChunk = open({
  id: Schema.String,
  object: Schema.String,
  created: Schema.Number,
  model: Schema.String,
  choices: Schema.Array(ChunkChoice),
  usage: Schema.optional(Schema.NullOr(Usage)),
  system_fingerprint: Schema.optional(Schema.NullOr(Schema.String))
}, "ChatCompletionChunk")
/** @since 0.1.0 */
export type ChatCompletionChunk = typeof ChatCompletionChunk.Type

/** The error body of a failed call: `{"error":{"message","type","param","code"}}`. @since 0.1.0 */
export const ErrorBody = open({
  error: open({
    message: Schema.optional(Schema.String),
    type: Schema.optional(Schema.NullOr(Schema.String)),
    param: Schema.optional(Schema.NullOr(Schema.String)),
    code: Schema.optional(Schema.NullOr(Schema.Union(Schema.String, Schema.Number)))
  })
}, "ErrorBody")
/** @since 0.1.0 */
export type ErrorBody = typeof ErrorBody.Type
