/**
 * The resilient client: the transport wrapped in the resilience policies. This is what an
 * application calls.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import type { ApiError } from "./ApiError.js"
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from "./ChatSchema.js"
import type { Outcome, Priority, QueueFull } from "./ConcurrencyLimiter.js"
import { ConcurrencyLimiter, layerFixed, outcomeOf } from "./ConcurrencyLimiter.js"
import * as KeyPool from "./KeyPool.js"
import * as RetryPolicyModule from "./RetryPolicy.js"
import { RetryPolicy } from "./RetryPolicy.js"
import { Telemetry } from "./Telemetry.js"
import * as TransportModule from "./Transport.js"
import type { CallOptions as TransportCallOptions, Deadlines } from "./Transport.js"
import { Transport } from "./Transport.js"

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

/**
 * Builds the client from its parts. Each attempt takes its own permit from the limiter and gives
 * it back before the retry's backoff, so a call that waits does not hold capacity; the limiter
 * learns from each attempt's outcome and from the queue delay the transport measured.
 *
 * A stream is retried only until its first chunk reaches the caller: from then on a retry would
 * show the caller the same content twice, so the error (with its partial output) is the answer.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<Service, never, Transport | ConcurrencyLimiter | RetryPolicy | Telemetry> = Effect
  .gen(function*() {
    const transport = yield* Transport
    const limiter = yield* ConcurrencyLimiter
    const { schedule } = yield* RetryPolicy
    const telemetry = yield* Telemetry
    const reported = RetryPolicyModule.tapRetries(telemetry.retrying)

    const transportOptions = (options: CallOptions | undefined, onFirstContent: TransportCallOptions["onFirstContent"]) => ({
      deadlines: options?.deadlines,
      onFirstContent
    })

    const attempt = (request: ChatCompletionRequest, options: CallOptions | undefined) =>
      Effect.scoped(
        Effect.flatMap(limiter.acquire({ priority: options?.priority }), (permit) => {
          const queueDelay = queueDelayProbe()
          return transport.create(request, transportOptions(options, queueDelay.record)).pipe(
            Effect.onExit((exit) => permit.complete(queueDelay.outcome(exit)))
          )
        })
      ).pipe(Effect.tapError(reportFailure(telemetry)))

    const streamAttempt = (request: ChatCompletionRequest, options: CallOptions | undefined) =>
      Stream.unwrapScoped(
        Effect.map(limiter.acquire({ priority: options?.priority }), (permit) => {
          const queueDelay = queueDelayProbe()
          return transport.stream(request, transportOptions(options, queueDelay.record)).pipe(
            Stream.onError((cause) => permit.complete(queueDelay.outcome(Exit.failCause(cause)))),
            Stream.onDone(() => permit.complete(queueDelay.outcome(Exit.void)))
          )
        })
      ).pipe(Stream.tapError(reportFailure(telemetry)))

    return Resilient.of({
      create: (request, options) =>
        attempt(request, options).pipe(
          Effect.retry(reported(schedule)),
          Effect.withSpan("weatherproof.Resilient.create", { attributes: { model: request.model } })
        ),
      stream: (request, options) =>
        Stream.suspend(() => {
          let delivered = false
          return streamAttempt(request, options).pipe(
            Stream.tap(() => Effect.sync(() => (delivered = true))),
            Stream.retry(reported(Schedule.whileInput(schedule, () => !delivered)))
          )
        })
    })
  })

const reportFailure = (telemetry: Telemetry["Type"]) => (error: ResilientError) =>
  error._tag === "QueueFull" ? Effect.void : telemetry.attemptFailed(error)

/** Holds the queue delay the transport reports, and turns an attempt's exit into an outcome. */
const queueDelayProbe = () => {
  let queueDelay: Duration.Duration | undefined
  return {
    record: (delay: Duration.Duration) => Effect.sync(() => (queueDelay = delay)),
    outcome: (exit: Exit.Exit<unknown, unknown>): Outcome => {
      const outcome = outcomeOf(exit)
      return outcome._tag === "Success" ? { _tag: "Success", queueDelay } : outcome
    }
  }
}

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Resilient, never, Transport | ConcurrencyLimiter | RetryPolicy | Telemetry> =
  Layer.effect(Resilient, make)

/**
 * @since 0.1.0
 * @category models
 */
export interface DefaultOptions {
  /** Default `https://api.deepseek.com`. */
  readonly baseUrl?: string | undefined
  readonly keys: ReadonlyArray<Redacted.Redacted<string>>
  /** In-flight bound. Default 8. */
  readonly concurrency?: number | undefined
  readonly retry?: RetryPolicyModule.Options | undefined
  readonly deadlines?: Partial<Deadlines> | undefined
}

/**
 * The whole pipeline over Node's HTTP client with DeepSeek-sensible defaults. Telemetry is left
 * to the caller (`Telemetry.layerNoop` when nothing listens).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDefault = (options: DefaultOptions): Layer.Layer<Resilient, never, Telemetry> =>
  layer.pipe(
    Layer.provide([
      TransportModule.layer({ baseUrl: options.baseUrl, deadlines: options.deadlines }).pipe(
        Layer.provide([TransportModule.nodeHttpClient(), KeyPool.layer(options.keys)])
      ),
      layerFixed(options.concurrency ?? 8),
      RetryPolicyModule.layer(options.retry)
    ])
  )

/**
 * `layerDefault` configured from the environment: `DEEPSEEK_API_KEY` (one key or several
 * separated by commas) and `DEEPSEEK_BASE_URL`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig: Layer.Layer<Resilient, ConfigError.ConfigError, Telemetry> = Layer.unwrapEffect(
  Effect.map(
    Config.all({
      keys: KeyPool.keysConfig,
      baseUrl: Config.string("DEEPSEEK_BASE_URL").pipe(Config.withDefault(TransportModule.defaultBaseUrl))
    }),
    layerDefault
  )
)
