/**
 * The resilient client: the transport wrapped in the resilience policies. This is what an
 * application calls.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import type * as Stream from "effect/Stream"
import type { ApiError } from "./ApiError.js"
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from "./ChatSchema.js"
import type { Priority, QueueFull } from "./ConcurrencyLimiter.js"
import type { CallOptions as TransportCallOptions } from "./Transport.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface CallOptions extends TransportCallOptions {
  readonly priority?: Priority | undefined
}

/**
 * Every failure a resilient call can end in.
 *
 * @since 0.1.0
 * @category models
 */
export type ResilientError = ApiError | QueueFull

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly create: (
    request: ChatCompletionRequest,
    options?: CallOptions
  ) => Effect.Effect<ChatCompletion, ResilientError>
  readonly stream: (
    request: ChatCompletionRequest,
    options?: CallOptions
  ) => Stream.Stream<ChatCompletionChunk, ResilientError>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Resilient extends Context.Tag("weatherproof/Resilient")<Resilient, Service>() {}
