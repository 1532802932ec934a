/**
 * Builders of DeepSeek-shaped wire bodies, shared by the test doubles (MockUpstream, Simulator)
 * so that both speak exactly what the transport parses.
 */
import type { ChatCompletion, ChatCompletionChunk, FinishReason, Usage } from "../ChatSchema.js"

export interface Generation {
  readonly id: string
  readonly model: string
  readonly content: string
  readonly reasoningContent?: string | undefined
  readonly finishReason?: FinishReason | undefined
  readonly usage: Usage
  readonly created?: number | undefined
}

/** A usage block that adds up the way DeepSeek's does. */
export const usage = (options: {
  readonly promptTokens: number
  readonly completionTokens: number
  readonly cacheHitTokens?: number | undefined
  readonly reasoningTokens?: number | undefined
}): Usage => {
  const hit = options.cacheHitTokens ?? 0
  return {
    prompt_tokens: options.promptTokens,
    completion_tokens: options.completionTokens,
    total_tokens: options.promptTokens + options.completionTokens,
    prompt_cache_hit_tokens: hit,
    prompt_cache_miss_tokens: options.promptTokens - hit,
    completion_tokens_details: { reasoning_tokens: options.reasoningTokens ?? 0 }
  }
}

/** The non-streaming completion of a generation. */
export const completion = (g: Generation): ChatCompletion => ({
  id: g.id,
  object: "chat.completion",
  created: g.created ?? 0,
  model: g.model,
  choices: [{
    index: 0,
    message: {
      role: "assistant",
      content: g.content,
      ...(g.reasoningContent === undefined ? {} : { reasoning_content: g.reasoningContent })
    },
    finish_reason: g.finishReason ?? "stop"
  }],
  usage: g.usage
})

const chunk = (g: Generation, choices: ChatCompletionChunk["choices"], usage?: Usage | null): ChatCompletionChunk => ({
  id: g.id,
  object: "chat.completion.chunk",
  created: g.created ?? 0,
  model: g.model,
  choices,
  ...(usage === undefined ? {} : { usage })
})

const isHighSurrogate = (code: number): boolean => code >= 0xd800 && code <= 0xdbff

/**
 * Splits text into pieces of at most `size` UTF-16 units (at least one piece), never between the
 * two halves of a character outside the BMP (an emoji): a real server's deltas are whole characters.
 */
export const pieces = (text: string, size: number): ReadonlyArray<string> => {
  // Checked here, where a size below 1 would loop for good: every caller's option reaches it.
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(`pieceSize is ${size}, not a whole number of at least 1 (UTF-16 units per delta)`)
  }
  const out: Array<string> = []
  for (let start = 0; start < text.length;) {
    let end = Math.min(start + size, text.length)
    if (end < text.length && isHighSurrogate(text.charCodeAt(end - 1))) end += end - 1 > start ? -1 : 1
    out.push(text.slice(start, end))
    start = end
  }
  return out
}

/**
 * The chunks of a streamed generation: a role chunk, reasoning pieces, content pieces, a finish
 * chunk, and a final usage chunk with `choices: []` (as with `include_usage`).
 */
export const chunks = (g: Generation, pieceSize = 8): ReadonlyArray<ChatCompletionChunk> => [
  chunk(g, [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }]),
  ...pieces(g.reasoningContent ?? "", pieceSize).filter((p) => p.length > 0).map((p) =>
    chunk(g, [{ index: 0, delta: { reasoning_content: p }, finish_reason: null }])
  ),
  ...pieces(g.content, pieceSize).filter((p) => p.length > 0).map((p) =>
    chunk(g, [{ index: 0, delta: { content: p }, finish_reason: null }])
  ),
  chunk(g, [{ index: 0, delta: { content: "" }, finish_reason: g.finishReason ?? "stop" }]),
  chunk(g, [], g.usage)
]

/** One SSE `data:` event. */
export const sseData = (data: unknown): string =>
  `data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`

/** The SSE keep-alive comment DeepSeek sends while a request waits to be scheduled. */
export const sseKeepAlive = ": keep-alive\n\n"

/** The terminator of a stream. */
export const sseDone = "data: [DONE]\n\n"

/** A full SSE body of a generation, ended by `[DONE]`. */
export const sseBody = (g: Generation, pieceSize = 8): string =>
  chunks(g, pieceSize).map(sseData).join("") + sseDone

/** An OpenAI-style error body. */
export const errorBody = (message: string, type: string, code?: string | number): string =>
  JSON.stringify({ error: { message, type, param: null, code: code ?? null } })
