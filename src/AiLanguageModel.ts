/**
 * `@effect/ai`'s `LanguageModel` on DeepSeek's chat-completions API, through the resilient
 * client: every `generateText`, `generateObject` and `streamText` goes through `Resilient` (its
 * retries, limits, breaker, failover and cost records), in the style of `@effect/ai-openai`'s
 * `OpenAiLanguageModel` (whose provider speaks OpenAI's Responses API, which DeepSeek does not
 * serve).
 *
 * `@effect/ai` is an optional peer dependency: this module is its own entry point,
 * `weatherproof/AiLanguageModel`, and nothing else in weatherproof imports it.
 *
 * ## The mapping
 *
 * - **Prompt → messages.** System, user, assistant and tool messages. A user message of one text
 *   part is sent as a string, others as content parts, images as `image_url` parts (for
 *   OpenAI-compatible models that take them; DeepSeek's do not). An assistant message's text is
 *   its `content`, its tool calls its `tool_calls`; when it made tool calls, its reasoning parts
 *   are sent back as `reasoning_content`, which DeepSeek requires in thinking mode (else 400).
 * - **Tools.** The toolkit's tools become `tools` (each tool's parameters as JSON Schema, from
 *   `Tool.getJsonSchema`), `toolChoice` becomes `tool_choice` (`{ oneOf, mode }` sends the
 *   subset with `auto` or `required`). Tool calls come back as tool-call parts whose `params` are
 *   the parsed arguments, which `@effect/ai` decodes with the tool's schema.
 * - **`generateObject`.** DeepSeek takes `response_format: { type: "json_object" }`, not
 *   `json_schema`, so the object's JSON Schema is described in the system prompt and the reply
 *   asked for as a JSON object.
 * - **Thinking.** `thinking` and `reasoning_effort` are request fields: set them in `config` or
 *   per call with `Config` / `withConfigOverride`. `reasoning_content` becomes reasoning parts,
 *   whole in `generateText`, as `reasoning-start` / `-delta` / `-end` in `streamText`.
 * - **Finish reasons.** `stop`, `length`, `content_filter` → `content-filter`, `tool_calls` →
 *   `tool-calls`; none → `unknown`. (`insufficient_system_resource` never arrives here: the
 *   transport makes it a retryable error.)
 * - **Usage.** `inputTokens` = `prompt_tokens`, `outputTokens` = `completion_tokens` (reasoning
 *   included), `totalTokens`, `reasoningTokens`, `cachedInputTokens` = the cache-hit tokens. The
 *   finish part's `metadata.deepseek` keeps the cache hit and miss counts.
 * - **Errors** are `AiError`s whose `cause` is the weatherproof error: `InvalidRequest` →
 *   `MalformedInput`, `MalformedResponse` → `MalformedOutput`, `TransportError` →
 *   `HttpRequestError` (`Transport`), every other one (rate limits, server errors, deadlines,
 *   a truncated stream with its partial output, local refusals) → `UnknownError`.
 *
 * @since 0.1.0
 */
import type * as AiError from "@effect/ai/AiError"
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as AiModel from "@effect/ai/Model"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import { dual } from "effect/Function"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type { ChatCompletionRequest } from "./ChatSchema.js"
import * as internal from "./internal/aiLanguageModel.js"
import { withoutUndefined } from "./internal/options.js"
import type { CallOptions, Resilient, ResilientError } from "./Resilient.js"

/**
 * DeepSeek's model names at the time of writing; any other name is accepted.
 *
 * @since 0.1.0
 * @category models
 */
export type Model = "deepseek-v4-flash" | "deepseek-v4-pro" | "deepseek-flash"

/**
 * Request fields for every call of a model (`config` of `layer`), or for the calls of one
 * effect (`withConfigOverride`). The context's `Config` overrides the layer's, field by field; a
 * field set to `undefined` overrides nothing.
 *
 * @since 0.1.0
 * @category context
 */
export class Config extends Context.Tag("weatherproof/AiLanguageModel/Config")<Config, Config.Service>() {}

/**
 * @since 0.1.0
 */
export declare namespace Config {
  /**
   * Any chat-completions request field except those the prompt and the toolkit decide
   * (`messages`, `tools`, `tool_choice`) and those the transport sets (`stream`,
   * `stream_options`). Notably:
   *
   * - `thinking: { type: "enabled" | "disabled" }` switches DeepSeek's thinking mode;
   * - `reasoning_effort` (`"high"`, `"max"`, …) sets how hard it thinks;
   * - `max_tokens`, `temperature`, `top_p`, `stop`, `user_id`.
   *
   * @since 0.1.0
   * @category models
   */
  export interface Service
    extends Partial<Omit<ChatCompletionRequest, "messages" | "tools" | "tool_choice" | "stream" | "stream_options">>
  {
    /** How `Resilient` runs the calls: priority lane, deadlines, response cache. Default: its defaults. */
    readonly callOptions?: CallOptions | undefined
  }
}

/**
 * What the finish part of a response carries under `metadata.deepseek`.
 *
 * @since 0.1.0
 * @category models
 */
export type FinishMetadata = {
  /** `prompt_cache_hit_tokens` (also `usage.cachedInputTokens`). */
  readonly cacheHitTokens?: number | undefined
  /** `prompt_cache_miss_tokens`. */
  readonly cacheMissTokens?: number | undefined
  readonly systemFingerprint?: string | undefined
}

declare module "@effect/ai/Response" {
  export interface FinishPartMetadata extends ProviderMetadata {
    readonly deepseek?: FinishMetadata | undefined
  }
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly model: (string & {}) | Model
  /** Request fields for every call; the context's `Config` overrides them. */
  readonly config?: Omit<Config.Service, "model"> | undefined
}

/**
 * A `LanguageModel` over the `Resilient` client in the context.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as AiLanguageModel from "weatherproof/AiLanguageModel"
 *
 * const program = Effect.gen(function*() {
 *   const model = yield* AiLanguageModel.make({ model: "deepseek-v4-flash" })
 *   const response = yield* model.generateText({ prompt: "Say hi" })
 *   return response.text
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options): Effect.Effect<LanguageModel.Service, never, Resilient> =>
  internal.make(options, Effect.map(Effect.serviceOption(Config), Option.getOrUndefined))

/**
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { Resilient, Telemetry } from "weatherproof"
 * import * as AiLanguageModel from "weatherproof/AiLanguageModel"
 *
 * const live = AiLanguageModel.layer({ model: "deepseek-v4-pro", config: { thinking: { type: "enabled" } } }).pipe(
 *   Layer.provide(Resilient.layerConfig),
 *   Layer.provide(Telemetry.layerNoop)
 * )
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<LanguageModel.LanguageModel, never, Resilient> =>
  Layer.effect(LanguageModel.LanguageModel, make(options))

/**
 * `layer` as an `@effect/ai` `Model` of provider `"deepseek"`: a Layer that also provides the
 * provider name, or an Effect that lifts the `Resilient` requirement into the caller.
 *
 * @example
 * ```ts
 * import { LanguageModel } from "@effect/ai"
 * import { Effect } from "effect"
 * import { Resilient } from "weatherproof"
 * import * as AiLanguageModel from "weatherproof/AiLanguageModel"
 *
 * const program = LanguageModel.generateText({ prompt: "Say hi" })
 * const flash = AiLanguageModel.model("deepseek-v4-flash", { thinking: { type: "disabled" } })
 * const runnable = program.pipe(Effect.provide(flash), Effect.provide(Resilient.layerConfig))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const model = (
  model: (string & {}) | Model,
  config?: Omit<Config.Service, "model">
): AiModel.Model<"deepseek", LanguageModel.LanguageModel, Resilient> =>
  AiModel.make("deepseek", layer({ model, config }))

/**
 * Runs `self` with `overrides` on top of the `Config` already in the context. For a stream,
 * provide `Config` to it (`Stream.provideService`).
 *
 * @example
 * ```ts
 * import { LanguageModel } from "@effect/ai"
 * import * as AiLanguageModel from "weatherproof/AiLanguageModel"
 *
 * const proof = LanguageModel.generateText({ prompt: "Prove that the square root of 2 is irrational." }).pipe(
 *   AiLanguageModel.withConfigOverride({ thinking: { type: "enabled" }, reasoning_effort: "max" })
 * )
 * ```
 *
 * @since 0.1.0
 * @category configuration
 */
export const withConfigOverride: {
  (overrides: Config.Service): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, overrides: Config.Service): Effect.Effect<A, E, R>
} = dual(
  2,
  <A, E, R>(self: Effect.Effect<A, E, R>, overrides: Config.Service): Effect.Effect<A, E, R> =>
    Effect.flatMap(
      Effect.serviceOption(Config),
      (current) =>
        Effect.provideService(self, Config, { ...Option.getOrUndefined(current), ...withoutUndefined(overrides) })
    )
)

/**
 * The weatherproof error behind an `AiError` this module raised, if any: every `AiError` made
 * from a failed call keeps it as its `cause`.
 *
 * @example
 * ```ts
 * import type { AiError } from "@effect/ai"
 * import { Effect } from "effect"
 * import * as AiLanguageModel from "weatherproof/AiLanguageModel"
 *
 * declare const call: Effect.Effect<string, AiError.AiError>
 *
 * const atLeastPartial = Effect.catchAll(call, (error) => {
 *   const cause = AiLanguageModel.resilientError(error)
 *   return cause?._tag === "StreamTruncated" ? Effect.succeed(cause.partial.content) : Effect.fail(error)
 * })
 * ```
 *
 * @since 0.1.0
 * @category errors
 */
export const resilientError: (error: AiError.AiError) => ResilientError | undefined = internal.resilientError
