/**
 * The transport: one HTTP call to an OpenAI-compatible `/chat/completions` endpoint, with
 * DeepSeek's keep-alive wire behaviour parsed into typed values and typed errors.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import type * as Stream from "effect/Stream"
import type { ApiError } from "./ApiError.js"
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from "./ChatSchema.js"

/**
 * Deadlines of one call, all measured with Effect's `Clock`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Deadlines {
  /** From sending the request to the first content event; keep-alive bytes do not reset it. Default 10 minutes. */
  readonly firstContent: Duration.DurationInput
  /** Longest gap between two content events. Default 120 seconds. */
  readonly idle: Duration.DurationInput
  /** The whole call. Default 30 minutes. */
  readonly total: Duration.DurationInput
}

/**
 * DeepSeek closes a request that was not scheduled within about 10 minutes, so waiting longer
 * for the first content is pointless; 120 s of silence mid-stream is a stall (clients in the
 * wild settled on 120-300 s watchdogs).
 *
 * @since 0.1.0
 */
export const defaultDeadlines: Deadlines = {
  firstContent: Duration.minutes(10),
  idle: Duration.seconds(120),
  total: Duration.minutes(30)
}

/**
 * Per-call options.
 *
 * @since 0.1.0
 * @category models
 */
export interface CallOptions {
  readonly deadlines?: Partial<Deadlines> | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** One non-streaming completion (`stream: false` is forced). */
  readonly create: (
    request: ChatCompletionRequest,
    options?: CallOptions
  ) => Effect.Effect<ChatCompletion, ApiError>
  /**
   * A streaming completion (`stream: true` and `stream_options.include_usage` are forced). The
   * stream ends after `data: [DONE]`; one that stops before fails with `StreamTruncated`.
   */
  readonly stream: (
    request: ChatCompletionRequest,
    options?: CallOptions
  ) => Stream.Stream<ChatCompletionChunk, ApiError>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Transport extends Context.Tag("weatherproof/Transport")<Transport, Service>() {}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Default `https://api.deepseek.com`. */
  readonly baseUrl?: string | undefined
  readonly deadlines?: Partial<Deadlines> | undefined
}

/** @since 0.1.0 */
export const defaultBaseUrl = "https://api.deepseek.com"
