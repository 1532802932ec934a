/**
 * Folds a streamed chat completion back into the completion a non-streaming call returns: the
 * chunks' deltas joined per choice (`content`, `reasoning_content`, OpenAI's `refusal`, `tool_calls`
 * whose `arguments` arrive in pieces), each choice's `logprobs` (their token lists joined), the last
 * `finish_reason` of each choice, and the usage, which DeepSeek sends on a final `choices: []` chunk
 * or on the last content chunk.
 *
 * `step` is the pure fold of one chunk; `fold` runs it over a stream; `foldPartial` keeps what
 * arrived when the stream fails, so a cut stream still shows (and accounts for) its partial output.
 * `chunksOf` goes the other way: the chunks that fold into a completion,
 * which is how a stored completion is replayed as a stream.
 *
 * @since 0.1.0
 */
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import type { ChatCompletion, ChatCompletionChunk, FinishReason, ToolCall, Usage } from "./ChatSchema.js"
import * as StreamPull from "./internal/streamPull.js"

/**
 * A tool call being assembled: `name` is set by the delta that carries it, `arguments` are joined.
 *
 * @since 0.1.0
 * @category models
 */
export interface ToolCallState {
  readonly index: number
  readonly id: string
  readonly name: string
  readonly arguments: string
}

/**
 * One choice being assembled. `content` stays `null` until a content delta arrives (a choice that
 * only calls tools has `content: null`, as in a non-streaming answer); `reasoningContent` likewise.
 *
 * @since 0.1.0
 * @category models
 */
export interface ChoiceState {
  readonly index: number
  readonly content: string | null
  readonly reasoningContent: string | null
  /** OpenAI's: the model's refusal, in place of content. */
  readonly refusal: string | null
  readonly toolCalls: ReadonlyArray<ToolCallState>
  readonly finishReason: FinishReason | null
  /**
   * The `logprobs` its chunks sent, each chunk's in order (`toCompletion` joins them); `null` when
   * they sent only `null` (not asked for), `undefined` when none sent the field.
   */
  readonly logprobs: Chunk.Chunk<unknown> | null | undefined
}

/**
 * What the chunks so far add up to. `id`, `created` and `model` come from the first chunk.
 *
 * @since 0.1.0
 * @category models
 */
export interface State {
  readonly id: string
  readonly created: number
  readonly model: string
  /** The last one sent. */
  readonly systemFingerprint: string | null | undefined
  /** In order of `index`. */
  readonly choices: ReadonlyArray<ChoiceState>
  /** The last usage any chunk carried. */
  readonly usage: Usage | undefined
  /** Chunks folded. */
  readonly chunks: number
}

/**
 * The state before any chunk.
 *
 * @example
 * ```ts
 * import { ChatSchema, ChatStream } from "weatherproof"
 *
 * declare const chunks: ReadonlyArray<ChatSchema.ChatCompletionChunk> // e.g. replayed from a log
 *
 * const completion = ChatStream.toCompletion(chunks.reduce(ChatStream.step, ChatStream.empty))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const empty: State = {
  id: "",
  created: 0,
  model: "",
  systemFingerprint: undefined,
  choices: [],
  usage: undefined,
  chunks: 0
}

const emptyChoice = (index: number): ChoiceState => ({
  index,
  content: null,
  reasoningContent: null,
  refusal: null,
  toolCalls: [],
  finishReason: null,
  logprobs: undefined
})

const join = (sofar: string | null, piece: string | null | undefined): string | null =>
  piece === undefined || piece === null ? sofar : (sofar ?? "") + piece

type Delta = ChatCompletionChunk["choices"][number]["delta"]
type DeltaToolCall = NonNullable<Delta["tool_calls"]>[number]

/** Replaces the element with `index` (or inserts a new one from `make`), keeping the order by index. */
const upsert = <A extends { readonly index: number }>(
  items: ReadonlyArray<A>,
  index: number,
  make: (index: number) => A,
  update: (item: A) => A
): ReadonlyArray<A> => {
  const at = items.findIndex((item) => item.index === index)
  if (at >= 0) return items.map((item, i) => i === at ? update(item) : item)
  return [...items, update(make(index))].sort((a, b) => a.index - b.index)
}

/** `piece` when it says something: a server that repeats an empty `id` or `name` on later pieces keeps the first. */
const unlessEmpty = (piece: string | null | undefined, sofar: string): string => piece == null || piece === "" ? sofar : piece

const stepToolCall = (call: ToolCallState, delta: DeltaToolCall): ToolCallState => ({
  index: call.index,
  id: unlessEmpty(delta.id, call.id),
  name: unlessEmpty(delta.function?.name, call.name),
  arguments: call.arguments + (delta.function?.arguments ?? "")
})

const emptyToolCall = (index: number): ToolCallState => ({ index, id: "", name: "", arguments: "" })

const stepChoice = (choice: ChoiceState, chunkChoice: ChatCompletionChunk["choices"][number]): ChoiceState => {
  const { delta } = chunkChoice
  return {
    index: choice.index,
    content: join(choice.content, delta.content),
    reasoningContent: join(choice.reasoningContent, delta.reasoning_content),
    refusal: join(choice.refusal, delta.refusal),
    toolCalls: (delta.tool_calls ?? []).reduce(
      (calls, part) => upsert(calls, part.index, emptyToolCall, (call) => stepToolCall(call, part)),
      choice.toolCalls
    ),
    finishReason: chunkChoice.finish_reason ?? choice.finishReason,
    logprobs: stepLogprobs(choice.logprobs, chunkChoice.logprobs)
  }
}

const stepLogprobs = (sofar: ChoiceState["logprobs"], piece: unknown): ChoiceState["logprobs"] =>
  piece === undefined ? sofar : piece === null ? sofar ?? null : Chunk.append(sofar ?? Chunk.empty(), piece)

/**
 * A choice's logprobs from its chunks' (OpenAI's and DeepSeek's `{ content, refusal }`, each chunk's
 * lists holding its own tokens): the lists joined in order, any other field as last sent.
 */
const joinedLogprobs = (pieces: Chunk.Chunk<unknown>): Record<string, unknown> => {
  const joined: Record<string, unknown> = {}
  for (const piece of pieces) {
    if (typeof piece !== "object" || piece === null) continue
    for (const [field, value] of Object.entries(piece)) {
      const sofar = joined[field]
      // `sofar` is a list this function made: joined in place.
      if (Array.isArray(value) && Array.isArray(sofar)) for (const item of value) sofar.push(item)
      else if (Array.isArray(value)) joined[field] = [...value]
      else if (value !== null || sofar === undefined) joined[field] = value
    }
  }
  return joined
}

/**
 * Folds one chunk into the state. Pure.
 *
 * @since 0.1.0
 * @category folding
 */
export const step = (state: State, chunk: ChatCompletionChunk): State => {
  // Each from the first chunk that has it (`empty` has none): Azure-style streams open with a
  // placeholder chunk (empty id and model, created 0) for their prompt filter results.
  return {
    id: state.id === "" ? chunk.id : state.id,
    created: state.created === 0 ? chunk.created : state.created,
    model: state.model === "" ? chunk.model : state.model,
    systemFingerprint: chunk.system_fingerprint === undefined ? state.systemFingerprint : chunk.system_fingerprint,
    choices: chunk.choices.reduce(
      (choices, chunkChoice) => upsert(choices, chunkChoice.index, emptyChoice, (c) => stepChoice(c, chunkChoice)),
      state.choices
    ),
    usage: chunk.usage ?? state.usage,
    chunks: state.chunks + 1
  }
}

const toolCallOf = (call: ToolCallState): ToolCall => ({
  id: call.id,
  type: "function",
  function: { name: call.name, arguments: call.arguments }
})

/**
 * The `chat.completion` the state stands for, shaped as a non-streaming answer: `reasoning_content`
 * and `tool_calls` only when some arrived, `usage`, `system_fingerprint` and a choice's `logprobs`
 * only when sent.
 *
 * @since 0.1.0
 * @category folding
 */
export const toCompletion = (state: State): ChatCompletion => ({
  id: state.id,
  object: "chat.completion",
  created: state.created,
  model: state.model,
  choices: state.choices.map((choice) => ({
    index: choice.index,
    message: {
      role: "assistant",
      content: choice.content,
      ...(choice.reasoningContent === null ? {} : { reasoning_content: choice.reasoningContent }),
      ...(choice.refusal === null ? {} : { refusal: choice.refusal }),
      ...(choice.toolCalls.length === 0 ? {} : { tool_calls: choice.toolCalls.map(toolCallOf) })
    },
    finish_reason: choice.finishReason,
    ...(choice.logprobs === undefined ? {} : { logprobs: choice.logprobs && joinedLogprobs(choice.logprobs) })
  })),
  ...(state.usage === undefined ? {} : { usage: state.usage }),
  ...(state.systemFingerprint === undefined ? {} : { system_fingerprint: state.systemFingerprint })
})

/**
 * Runs a stream of chunks to the completion they add up to.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ChatStream, Resilient } from "weatherproof"
 *
 * const completion = Effect.flatMap(Resilient.Resilient, (client) =>
 *   ChatStream.fold(client.stream({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "Hi" }] }))
 * )
 * ```
 *
 * @since 0.1.0
 * @category folding
 */
export const fold = <E, R>(chunks: Stream.Stream<ChatCompletionChunk, E, R>): Effect.Effect<ChatCompletion, E, R> =>
  Effect.flatMap(foldPartial(chunks), ({ completion, error }) => Option.isSome(error) ? Effect.fail(error.value) : Effect.succeed(completion))

/**
 * What a stream delivered: the completion of every chunk that arrived, how many chunks that was,
 * and the failure that ended the stream early, if one did.
 *
 * @since 0.1.0
 * @category models
 */
export interface Folded<E> {
  readonly completion: ChatCompletion
  readonly chunks: number
  readonly error: Option.Option<E>
}

/**
 * Like `fold`, but a failure does not lose what arrived before it: the result holds both.
 *
 * @example
 * ```ts
 * import { Effect, Option } from "effect"
 * import { ChatSchema, ChatStream, Resilient } from "weatherproof"
 *
 * declare const request: ChatSchema.ChatCompletionRequest
 *
 * const program = Effect.gen(function*() {
 *   const client = yield* Resilient.Resilient
 *   const folded = yield* ChatStream.foldPartial(client.stream(request))
 *   if (Option.isSome(folded.error)) {
 *     console.log(`cut after ${folded.chunks} chunks:`, folded.completion.choices[0]?.message.content)
 *   }
 * })
 * ```
 *
 * @since 0.1.0
 * @category folding
 */
export const foldPartial = <E, R>(chunks: Stream.Stream<ChatCompletionChunk, E, R>): Effect.Effect<Folded<E>, never, R> =>
  Effect.suspend(() => {
    let state = empty
    const folded = StreamPull.forEachChunk(chunks, (chunk) =>
      Effect.sync(() => {
        for (const item of chunk) state = step(state, item)
      }))
    return Effect.map(Effect.either(folded), (result) => ({
      completion: toCompletion(state),
      chunks: state.chunks,
      error: Either.getLeft(result)
    }))
  })

const deltaOf = (message: ChatCompletion["choices"][number]["message"]): Delta => ({
  role: "assistant",
  content: message.content,
  ...(message.reasoning_content == null ? {} : { reasoning_content: message.reasoning_content }),
  ...(message.refusal == null ? {} : { refusal: message.refusal }),
  ...(message.tool_calls == null || message.tool_calls.length === 0 ? {} : {
    tool_calls: message.tool_calls.map((call, index) => ({
      index,
      id: call.id,
      type: "function",
      function: { name: call.function.name, arguments: call.function.arguments }
    }))
  })
})

/**
 * The chunks a stream of `completion` sends, as OpenAI's API sends them: one per choice, its whole
 * message as the delta, its `finish_reason` and `logprobs`, then the usage (when the completion has
 * one) on a last chunk with `choices: []`. Folding them (`step`, `toCompletion`) gives the
 * completion back, but for fields of the completion this SDK does not model. Pure.
 *
 * @example
 * ```ts
 * import { Stream } from "effect"
 * import { ChatSchema, ChatStream } from "weatherproof"
 *
 * declare const stored: ChatSchema.ChatCompletion // e.g. from a cache
 *
 * const replayed = Stream.fromIterable(ChatStream.chunksOf(stored))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const chunksOf = (completion: ChatCompletion): ReadonlyArray<ChatCompletionChunk> => {
  const head = {
    id: completion.id,
    object: "chat.completion.chunk",
    created: completion.created,
    model: completion.model,
    ...(completion.system_fingerprint === undefined ? {} : { system_fingerprint: completion.system_fingerprint })
  }
  const choices = completion.choices.map((choice): ChatCompletionChunk => ({
    ...head,
    choices: [{
      index: choice.index,
      delta: deltaOf(choice.message),
      finish_reason: choice.finish_reason,
      ...(choice.logprobs === undefined ? {} : { logprobs: choice.logprobs })
    }]
  }))
  return completion.usage == null ? choices : [...choices, { ...head, choices: [], usage: completion.usage }]
}
