/**
 * `@effect/ai`'s `LanguageModel` on the chat-completions API through `Resilient`: the prompt
 * and toolkit turned into a request, the completion or its chunks turned into response parts,
 * weatherproof's errors into `AiError`s. The mapping is documented in `AiLanguageModel`.
 */
import * as AiError from "@effect/ai/AiError"
import * as LanguageModel from "@effect/ai/LanguageModel"
import type * as Prompt from "@effect/ai/Prompt"
import type * as Response from "@effect/ai/Response"
import { addGenAIAnnotations } from "@effect/ai/Telemetry"
import * as Tool from "@effect/ai/Tool"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Encoding from "effect/Encoding"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import * as Stream from "effect/Stream"
import { ParentSpan, type Span } from "effect/Tracer"
import type { Config, Options } from "../AiLanguageModel.js"
import type * as Chat from "../ChatSchema.js"
import { Resilient, type ResilientError } from "../Resilient.js"
import { ATTR_GEN_AI_PROVIDER_NAME, GEN_AI_PROVIDER_NAME_VALUE_DEEPSEEK } from "./genAi.js"
import { withoutUndefined } from "./options.js"

const moduleName = "weatherproof/AiLanguageModel"

export const make = (options: Options, contextConfig: Effect.Effect<Config.Service | undefined>) =>
  Effect.gen(function*() {
    const resilient = yield* Resilient
    // The layer's fields, read once: a field set to `undefined` leaves the request's default.
    const layerConfig = withoutUndefined(options.config)

    const prepare = (provider: LanguageModel.ProviderOptions) =>
      Effect.gen(function*() {
        const { callOptions, ...fields } = {
          model: options.model,
          ...layerConfig,
          ...withoutUndefined(yield* contextConfig)
        }
        const messages = yield* toMessages(provider.prompt)
        const request: Chat.ChatCompletionRequest = {
          ...fields,
          // A cast, so this compiles whether `messages` is typed non-empty or not.
          messages: (provider.responseFormat.type === "json"
            ? withObjectInstruction(messages, provider.responseFormat)
            : messages) as Chat.ChatCompletionRequest["messages"],
          ...(yield* toolFields(provider)),
          ...(provider.responseFormat.type === "json" ? { response_format: { type: "json_object" } } : {})
        }
        annotateRequest(provider.span, request)
        return { request, callOptions }
      })

    return yield* LanguageModel.make({
      generateText: (provider) =>
        prepare(provider).pipe(
          Effect.flatMap(({ callOptions, request }) =>
            Effect.mapError(resilient.create(request, callOptions), fromResilient("generateText"))
          ),
          Effect.flatMap(completionParts),
          Effect.tap((parts) => parts.forEach((part) => annotatePart(provider.span, part)))
        ),
      // `@effect/ai` makes the span of `streamText` without making it the stream's parent (as it
      // does for `generateText`): the client's spans belong under it.
      streamText: (provider) =>
        Stream.unwrap(Effect.map(prepare(provider), ({ callOptions, request }) =>
          streamParts(Stream.mapError(resilient.stream(request, callOptions), fromResilient("streamText")))
        )).pipe(
          Stream.tap((part) => Effect.sync(() => annotatePart(provider.span, part))),
          Stream.provideService(ParentSpan, provider.span)
        )
    })
  })

// =============================================================================
// Prompt → request
// =============================================================================

type ContentPart = typeof Chat.ContentPart.Type

const malformedInput = (description: string) =>
  new AiError.MalformedInput({ module: moduleName, method: "prepareRequest", description })

const toMessages = (prompt: Prompt.Prompt): Effect.Effect<Array<Chat.Message>, AiError.MalformedInput> =>
  Effect.map(
    Effect.forEach(prompt.content, (message): Effect.Effect<ReadonlyArray<Chat.Message>, AiError.MalformedInput> => {
      switch (message.role) {
        case "system":
          return Effect.succeed([{ role: "system", content: message.content }])
        case "user":
          return Effect.map(userContent(message.content), (content) => [{ role: "user", content }])
        case "assistant":
          return Effect.succeed([assistantMessage(message)])
        case "tool":
          return Effect.succeed(message.content.map((part) => ({
            role: "tool",
            tool_call_id: part.id,
            content: typeof part.result === "string" ? part.result : JSON.stringify(part.result ?? null)
          })))
      }
    }),
    (messages) => messages.flat()
  )

/** One text part as a string (what every chat API takes); anything else as content parts. */
const userContent = (
  parts: ReadonlyArray<Prompt.UserMessagePart>
): Effect.Effect<string | ReadonlyArray<ContentPart>, AiError.MalformedInput> => {
  const [first] = parts
  if (parts.length === 1 && first?.type === "text") return Effect.succeed(first.text)
  return Effect.forEach(parts, (part) =>
    part.type === "text" ? Effect.succeed<ContentPart>({ type: "text", text: part.text }) : imagePart(part))
}

const imagePart = (part: Prompt.FilePart): Effect.Effect<ContentPart, AiError.MalformedInput> => {
  if (!part.mediaType.startsWith("image/")) {
    return Effect.fail(malformedInput(`a chat message cannot carry a '${part.mediaType}' file, only images`))
  }
  const mediaType = part.mediaType === "image/*" ? "image/jpeg" : part.mediaType
  const url = part.data instanceof URL
    ? part.data.toString()
    : typeof part.data === "string"
    ? /^(https?|data):/.test(part.data) ? part.data : `data:${mediaType};base64,${part.data}`
    : `data:${mediaType};base64,${Encoding.encodeBase64(part.data)}`
  // `ContentPart` keeps the fields it does not model, such as `image_url`.
  const image = { type: "image_url", image_url: { url } }
  return Effect.succeed(image)
}

/**
 * Text as `content`, tool calls as `tool_calls`. A turn that made tool calls carries its
 * reasoning back as `reasoning_content`: DeepSeek answers 400 without it in thinking mode.
 */
const assistantMessage = (message: Prompt.AssistantMessage): Chat.Message => {
  const text: Array<string> = []
  const reasoning: Array<string> = []
  const toolCalls: Array<Chat.ToolCall> = []
  for (const part of message.content) {
    if (part.type === "text") text.push(part.text)
    if (part.type === "reasoning") reasoning.push(part.text)
    if (part.type === "tool-call" && !part.providerExecuted) {
      toolCalls.push({
        id: part.id,
        type: "function",
        function: { name: part.name, arguments: JSON.stringify(part.params ?? {}) }
      })
    }
  }
  if (toolCalls.length === 0) return { role: "assistant", content: text.join("") }
  return {
    role: "assistant",
    content: text.join(""),
    tool_calls: toolCalls,
    ...(reasoning.length > 0 ? { reasoning_content: reasoning.join("") } : {})
  }
}

const toolFields = (
  provider: LanguageModel.ProviderOptions
): Effect.Effect<Pick<Chat.ChatCompletionRequest, "tools" | "tool_choice">, AiError.MalformedInput> => {
  if (provider.tools.length === 0) return Effect.succeed({})
  return Effect.map(
    Effect.forEach(provider.tools, (tool) =>
      Tool.isUserDefined(tool)
        ? Effect.succeed({
          type: "function" as const,
          function: {
            name: tool.name,
            description: Tool.getDescription(tool as UserDefinedTool),
            parameters: { ...Tool.getJsonSchema(tool as UserDefinedTool) }
          }
        })
        : Effect.fail(malformedInput(`the chat API has no provider-defined tool '${tool.name}'`))),
    (tools) => ({ tools, tool_choice: toolChoice(provider.toolChoice) })
  )
}

/** The tool's requirements do not matter to its description and schema. */
type UserDefinedTool = Tool.Tool<string, any>

/** `{ oneOf }` arrives with the tools already narrowed to those, so only its mode is left. */
const toolChoice = (choice: LanguageModel.ToolChoice<string>): unknown =>
  typeof choice === "string"
    ? choice
    : "tool" in choice
    ? { type: "function", function: { name: choice.tool } }
    : choice.mode ?? "auto"

/**
 * DeepSeek's JSON output takes `json_object` only, and wants the word "json" and the expected
 * shape in the prompt: the object's JSON Schema goes in the system message that opens the
 * prompt, or in one of its own put first.
 */
const withObjectInstruction = (
  messages: ReadonlyArray<Chat.Message>,
  format: Extract<LanguageModel.ProviderOptions["responseFormat"], { readonly type: "json" }>
): ReadonlyArray<Chat.Message> => {
  const description = Tool.getDescriptionFromSchemaAst(format.schema.ast)
  const instruction = [
    `Reply with a json object only: the ${format.objectName}${description === undefined ? "" : ` (${description})`},`,
    `which conforms to this JSON Schema:`,
    JSON.stringify(Tool.getJsonSchemaFromSchemaAst(format.schema.ast))
  ].join("\n")
  const [first, ...rest] = messages
  return first?.role === "system" && typeof first.content === "string"
    ? [{ ...first, content: `${first.content}\n\n${instruction}` }, ...rest]
    : [{ role: "system", content: instruction }, ...messages]
}

// =============================================================================
// Completion → parts
// =============================================================================

const completionParts = (
  completion: Chat.ChatCompletion
): Effect.Effect<Array<Response.PartEncoded>, AiError.MalformedOutput> => {
  const choice = completion.choices[0]
  const message = choice?.message
  const parts: Array<Response.PartEncoded> = [responseMetadata(completion)]
  if (message?.reasoning_content) parts.push({ type: "reasoning", text: message.reasoning_content })
  if (message?.content) parts.push({ type: "text", text: message.content })
  return Effect.map(
    Effect.forEach(message?.tool_calls ?? [], (call) =>
      toolCallPart(call.id, call.function.name, call.function.arguments, "generateText")),
    (toolCalls) => [
      ...parts,
      ...toolCalls,
      finishPart(choice?.finish_reason, completion.usage, completion.system_fingerprint)
    ]
  )
}

const responseMetadata = (
  response: Pick<Chat.ChatCompletion, "id" | "model" | "created">
): Response.ResponseMetadataPartEncoded => ({
  type: "response-metadata",
  id: response.id,
  modelId: response.model,
  timestamp: DateTime.formatIso(DateTime.unsafeMake(response.created * 1000))
})

/** The arguments parsed (without prototype pollution); `@effect/ai` decodes them with the tool's schema. */
const toolCallPart = (
  id: string,
  name: string,
  args: string,
  method: string
): Effect.Effect<Response.ToolCallPartEncoded, AiError.MalformedOutput> =>
  Effect.try({
    // Some OpenAI-compatible servers send "" for a tool without parameters.
    try: (): Response.ToolCallPartEncoded => ({
      type: "tool-call",
      id,
      name,
      params: Tool.unsafeSecureJsonParse(args === "" ? "{}" : args)
    }),
    catch: (cause) =>
      new AiError.MalformedOutput({
        module: moduleName,
        method,
        description: `the arguments of the call to tool '${name}' are not JSON: ${args}`,
        cause
      })
  })

const finishReason = (reason: Chat.FinishReason | null | undefined): Response.FinishReason => {
  switch (reason) {
    case "stop":
    case "length":
      return reason
    case "content_filter":
      return "content-filter"
    case "tool_calls":
      return "tool-calls"
    case "insufficient_system_resource":
      return "error"
    case null:
    case undefined:
      return "unknown"
    default: // a reason the schema learns later
      return "other"
  }
}

const finishPart = (
  reason: Chat.FinishReason | null | undefined,
  usage: Chat.Usage | null | undefined,
  systemFingerprint: string | null | undefined
): Response.FinishPartEncoded => ({
  type: "finish",
  reason: finishReason(reason),
  usage: {
    inputTokens: usage?.prompt_tokens,
    outputTokens: usage?.completion_tokens,
    totalTokens: usage?.total_tokens,
    reasoningTokens: usage?.completion_tokens_details?.reasoning_tokens,
    cachedInputTokens: usage?.prompt_cache_hit_tokens ?? usage?.prompt_tokens_details?.cached_tokens
  },
  metadata: {
    deepseek: {
      cacheHitTokens: usage?.prompt_cache_hit_tokens,
      cacheMissTokens: usage?.prompt_cache_miss_tokens,
      systemFingerprint: systemFingerprint ?? undefined
    }
  }
})

// =============================================================================
// Chunks → stream parts
// =============================================================================

type StreamParts = Effect.Effect<ReadonlyArray<Response.StreamPartEncoded>, AiError.MalformedOutput>

/** A reasoning or text block: its `-start` part comes before its first delta, its `-end` when it closes. */
const makeBlock = (kind: "reasoning" | "text", nextId: () => number) => {
  let id: string | undefined
  return {
    delta: (parts: Array<Response.StreamPartEncoded>, delta: string) => {
      if (id === undefined) {
        id = `${kind}-${nextId()}`
        parts.push({ type: `${kind}-start`, id })
      }
      parts.push({ type: `${kind}-delta`, id, delta })
    },
    end: (parts: Array<Response.StreamPartEncoded>) => {
      if (id !== undefined) parts.push({ type: `${kind}-end`, id })
      id = undefined
    }
  }
}

/**
 * A reasoning or text delta closes the other block; tool-call argument pieces are gathered per
 * `index` and parsed when the choice finishes. The finish part comes after the last chunk, since
 * the usage arrives in a chunk of its own.
 */
const streamParts = <E>(
  chunks: Stream.Stream<Chat.ChatCompletionChunk, E>
): Stream.Stream<Response.StreamPartEncoded, E | AiError.MalformedOutput> =>
  Stream.suspend(() => {
    let started = false
    let blocks = 0
    const reasoning = makeBlock("reasoning", () => blocks++)
    const text = makeBlock("text", () => blocks++)
    /**
     * Tool calls by `index`. Their parts go under the id of their first piece (`partsId`); the call
     * takes the id and name of the last piece that had one (some servers send them after the
     * first), as `ChatStream` folds them.
     */
    const toolCalls = new Map<number, { readonly partsId: string; id: string; name: string; args: string }>()
    let reason: Chat.FinishReason | null | undefined
    let usage: Chat.Usage | null | undefined
    let fingerprint: string | null | undefined

    const flush: StreamParts = Effect.suspend(() => {
      const parts: Array<Response.StreamPartEncoded> = []
      reasoning.end(parts)
      text.end(parts)
      const calls = [...toolCalls.values()]
      toolCalls.clear()
      return Effect.map(
        Effect.forEach(calls, (call) => toolCallPart(call.id, call.name, call.args, "streamText")),
        (done) => [...parts, ...calls.map((call) => ({ type: "tool-params-end" as const, id: call.partsId })), ...done]
      )
    })

    const onChunk = (chunk: Chat.ChatCompletionChunk): StreamParts => {
      const parts: Array<Response.StreamPartEncoded> = []
      if (!started) parts.push(responseMetadata(chunk))
      started = true
      usage = chunk.usage ?? usage
      fingerprint = chunk.system_fingerprint ?? fingerprint
      // The first choice's (a request with `n` > 1 streams the others beside it).
      const choice = chunk.choices.find((c) => c.index === 0)
      if (choice === undefined) return Effect.succeed(parts)
      const delta = choice.delta
      if (delta.reasoning_content) {
        text.end(parts)
        reasoning.delta(parts, delta.reasoning_content)
      }
      if (delta.content) {
        reasoning.end(parts)
        text.delta(parts, delta.content)
      }
      for (const piece of delta.tool_calls ?? []) {
        reasoning.end(parts)
        text.end(parts)
        let call = toolCalls.get(piece.index)
        if (call === undefined) {
          const id = piece.id || `call-${piece.index}`
          call = { partsId: id, id, name: piece.function?.name ?? "", args: "" }
          toolCalls.set(piece.index, call)
          parts.push({ type: "tool-params-start", id, name: call.name })
        } else {
          if (piece.id) call.id = piece.id
          if (piece.function?.name) call.name = piece.function.name
        }
        const args = piece.function?.arguments
        if (args) {
          call.args += args
          parts.push({ type: "tool-params-delta", id: call.partsId, delta: args })
        }
      }
      if (choice.finish_reason == null) return Effect.succeed(parts)
      reason = choice.finish_reason
      return Effect.map(flush, (rest) => [...parts, ...rest])
    }

    const onEnd: StreamParts = Effect.map(flush, (rest) => [...rest, finishPart(reason, usage, fingerprint)])

    return Stream.concat(Stream.mapConcatEffect(chunks, onChunk), Stream.fromIterableEffect(onEnd))
  })

// =============================================================================
// Errors
// =============================================================================

/**
 * The weatherproof errors made into `AiError`s here, keyed by themselves. The `cause` is looked
 * up rather than the `AiError`: Effect hands a failure raised inside a span on as a proxy.
 */
const wrapped = new WeakMap<object, ResilientError>()

export const resilientError = (error: AiError.AiError): ResilientError | undefined => {
  const cause = "cause" in error ? error.cause : undefined
  return Predicate.isObject(cause) ? wrapped.get(cause) : undefined
}

/** The request of an `HttpRequestError`: the path only, since the account pool picks the host. */
const chatRequest = {
  method: "POST",
  url: "/chat/completions",
  urlParams: [],
  hash: Option.none(),
  headers: {}
} as const

const fromResilient = (method: string) => (error: ResilientError): AiError.AiError => {
  const fields = { module: moduleName, method, description: `${error._tag}: ${error.message}`, cause: error }
  wrapped.set(error, error)
  return error._tag === "InvalidRequest"
    ? new AiError.MalformedInput(fields)
    : error._tag === "MalformedResponse"
    ? new AiError.MalformedOutput(fields)
    : error._tag === "TransportError"
    ? new AiError.HttpRequestError({ ...fields, reason: "Transport", request: chatRequest })
    : new AiError.UnknownError(fields)
}

// =============================================================================
// Telemetry
// =============================================================================

/**
 * `@effect/ai`'s annotations, which name the provider `gen_ai.system` (the conventions' older
 * name), and `gen_ai.provider.name`, which replaced it.
 */
const annotateRequest = (span: Span, request: Chat.ChatCompletionRequest): void => {
  span.attribute(ATTR_GEN_AI_PROVIDER_NAME, GEN_AI_PROVIDER_NAME_VALUE_DEEPSEEK)
  addGenAIAnnotations(span, {
    system: "deepseek",
    operation: { name: "chat" },
    request: {
      model: request.model,
      temperature: request.temperature,
      topP: request.top_p,
      maxTokens: request.max_tokens,
      frequencyPenalty: request.frequency_penalty,
      presencePenalty: request.presence_penalty,
      stopSequences: typeof request.stop === "string" ? [request.stop] : request.stop
    }
  })
}

const annotatePart = (span: Span, part: Response.StreamPartEncoded | Response.PartEncoded): void => {
  if (part.type === "response-metadata") {
    addGenAIAnnotations(span, { response: { id: part.id, model: part.modelId } })
  }
  if (part.type === "finish") {
    addGenAIAnnotations(span, {
      response: { finishReasons: [part.reason] },
      usage: { inputTokens: part.usage.inputTokens, outputTokens: part.usage.outputTokens }
    })
  }
}
