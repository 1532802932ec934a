/**
 * The resilient chat client: a `Transport` called through one composed `Policy` (retry with its
 * budget, token bucket, concurrency limiter, circuit breaker; see `Policy` for their order and
 * why). This is what an application calls.
 *
 * Each attempt reports to its concurrency permit what only the transport sees: the acceptance of
 * the request (success headers, one round trip after the send, long before DeepSeek ends it) and
 * its queue delay (headers to first content), which the adaptive limiter learns from. A token
 * bucket, when the policy has one, is drawn by each attempt's request and token estimate
 * (`TokenBucket.costOf`).
 *
 * When the context the client is built in holds a `ResponseCache`, `create` and `stream` ask it
 * first, outside the policy. It is read as the client is built: provide it to the client's layer
 * (`Layer.provide(ResponseCache.layerMemory())`); merged beside it, the client never sees it (its
 * first call then says so in a warning). A
 * hit costs no permit, no token and no retry budget. Only deterministic requests are cached
 * (temperature 0, or `cache: "force"`). A stream answered from the cache replays the stored
 * completion's chunks at once (`ResponseCache.Service.cachedStream`); a stream that ends whole is
 * stored as the completion it adds up to, so a stream and a completion of one request share it.
 *
 * A stream is retried only until its first chunk reaches the caller. After that, a retry would
 * show the caller the same content twice, so the error, with its partial output, is the answer.
 * The transport holds back opening chunks that carry nothing yet (a role, an empty content) until
 * one with content comes, so a cut as inference starts is retried too.
 *
 * When a tracer is installed (`Layer.setTracer`, or an OpenTelemetry layer such as
 * `@effect/opentelemetry`'s `NodeSdk`), each call runs in a span of kind client,
 * `weatherproof.Resilient.create` or `weatherproof.Resilient.stream`, the parent of its attempts'
 * spans (the transport's, or the `AccountPool`'s, one per attempt on an account). Its attributes
 * follow the OpenTelemetry GenAI semantic conventions: `gen_ai.operation.name` (`chat`),
 * `gen_ai.provider.name` (`deepseek`), `gen_ai.request.model` and the sampling fields,
 * `gen_ai.response.id` / `.model` / `.finish_reasons`, `gen_ai.usage.input_tokens` /
 * `output_tokens` (and the cache-read and reasoning tokens), `error.type`; and weatherproof's:
 * `weatherproof.attempts`, `.retries`, `.rate_limited` (429s met), and with an `AccountPool`
 * `.queue_wait` (seconds waited for an account) and `.cost_usd` (the attempts' cost as the
 * `CostLedger` recorded it). The prompt and the completion (`gen_ai.input.messages`,
 * `gen_ai.output.messages`) are recorded only with `CaptureContent` set; keys never are. With
 * Effect's built-in tracer, which sends spans nowhere, no span is made: making and parenting one
 * costs more than every policy of a call together.
 *
 * @since 0.1.0
 */

import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import type { ApiError } from "./ApiError.js"
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from "./ChatSchema.js"
import type { BudgetExceeded } from "./CostLedger.js"
import type * as Limiter from "./ConcurrencyLimiter.js"
import * as KeyPool from "./KeyPool.js"
import * as PolicyModule from "./Policy.js"
import { Policy } from "./Policy.js"
import * as ResponseCacheModule from "./ResponseCache.js"
import * as TokenBucket from "./TokenBucket.js"
import * as TransportModule from "./Transport.js"
import { type Deadlines, Transport } from "./Transport.js"
import * as BaseUrls from "./internal/baseUrl.js"
import * as GenAi from "./internal/genAi.js"
import { permitOptions } from "./internal/transport.js"
import { streamWhenTraced, whenTraced } from "./internal/tracing.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface CallOptions extends Pick<TransportModule.CallOptions, "onAnswer" | "onExchange"> {
  /**
   * Each attempt's deadlines, overriding the transport's: a retry starts them again, so `total`
   * bounds one attempt. Bound the call with its retries by timing it out (`Effect.timeout`).
   */
  readonly deadlines?: Partial<Deadlines> | undefined
  /** Interactive calls get permits before batch calls. Default `"interactive"`. */
  readonly priority?: Limiter.Priority | undefined
  /**
   * How long an attempt may wait for a permit (with an `AccountPool`: for an account that can
   * take it) before it fails (an `abandoned` `QueueFull`; with an `AccountPool`, `NoAccountAvailable`),
   * and as long for the policy's token bucket, in `"wait"` mode (a `gaveUp` `RateLimitExceeded`).
   * Default: as long as it takes (the pool's `maxWait`, 30 minutes).
   */
  readonly maxWait?: Duration.DurationInput | undefined
  /** How a `ResponseCache` in the context treats this call. Default "auto" (deterministic requests only). */
  readonly cache?: ResponseCacheModule.CacheMode | undefined
}

/**
 * Every failure a resilient call can end in: the upstream's, and the refusals of the policy's
 * own gates. `BudgetExceeded` comes from an `AccountPool` under the client (its `CostLedger`'s
 * budget); a client over one `Transport` reads no ledger.
 *
 * @since 0.1.0
 * @category models
 */
export type ResilientError = ApiError | PolicyModule.Refusal | BudgetExceeded

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
 * Whether the client's spans record the prompt and the completion, as the GenAI conventions'
 * `gen_ai.input.messages` and `gen_ai.output.messages` (JSON). Default `false`: they may hold
 * personal data, and the conventions leave recording them to the user's choice. The pool's spans
 * and the transport's never record them.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { Resilient } from "weatherproof"
 *
 * // The calls of a program given this layer record their prompt and completion on their spans.
 * const client = Layer.merge(Resilient.layerConfig, Layer.succeed(Resilient.CaptureContent, true))
 * ```
 *
 * @since 0.1.0
 * @category tracing
 */
export class CaptureContent extends Context.Reference<CaptureContent>()("weatherproof/Resilient/CaptureContent", {
  defaultValue: () => false
}) {}

/**
 * What a client calls once per attempt, under the permit of its policy: a `Transport`, or an
 * `AccountPool` (whose permits are its own). Every attempt of a call gets one request object, a
 * copy of the caller's made for the call: an upstream tells a retry from another call by it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Upstream {
  readonly create: (
    request: ChatCompletionRequest,
    options: CallOptions | undefined,
    permit: Limiter.Permit
  ) => Effect.Effect<ChatCompletion, ResilientError>
  readonly stream: (
    request: ChatCompletionRequest,
    options: CallOptions | undefined,
    permit: Limiter.Permit
  ) => Stream.Stream<ChatCompletionChunk, ResilientError>
}

/**
 * A `Transport` as an upstream: it reports to the permit when the upstream accepted the request
 * and how long it queued it.
 *
 * @since 0.1.0
 * @category constructors
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Resilient, Transport } from "weatherproof"
 *
 * const upstream = Effect.map(Transport.Transport, Resilient.transportUpstream)
 * ```
 */
export const transportUpstream = (transport: TransportModule.Service): Upstream => ({
  create: (request, options, permit) => transport.create(request, permitOptions(options, permit, "create")),
  stream: (request, options, permit) => transport.stream(request, permitOptions(options, permit, "stream"))
})

/**
 * The client of `upstream` called through `policy`, answering from a `ResponseCache` when the
 * context has one.
 *
 * @since 0.1.0
 * @category constructors
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Policy, Resilient, Transport } from "weatherproof"
 *
 * const client = Effect.gen(function*() {
 *   const policy = yield* Policy.Policy
 *   const transport = yield* Transport.Transport
 *   return yield* Resilient.makeWith(policy, Resilient.transportUpstream(transport))
 * })
 * ```
 */
export const makeWith = (policy: PolicyModule.Service, upstream: Upstream): Effect.Effect<Service> =>
  Effect.map(Effect.serviceOption(ResponseCacheModule.ResponseCache), (cacheOption) => {
    const cache = Option.getOrElse(cacheOption, () => ResponseCacheModule.disabled)
    // A client built without a cache looks, at its first call, for one its calls were given instead.
    let lookedBeside = Option.isSome(cacheOption)
    const cacheBeside = Effect.suspend(() => {
      if (lookedBeside) return Effect.void
      lookedBeside = true
      return Effect.flatMap(Effect.serviceOption(ResponseCacheModule.ResponseCache), (beside) =>
        Option.isNone(beside) ? Effect.void : Effect.logWarning(cacheBesideWarning))
    })
    const applyOptions = (request: ChatCompletionRequest, options: CallOptions | undefined): PolicyModule.ApplyOptions => ({
      priority: options?.priority,
      cost: TokenBucket.costOf(request),
      abandonWhen: options?.maxWait === undefined ? undefined : Effect.sleep(options.maxWait)
    })

    /**
     * One call; `trace` wraps each attempt (and counts it, when traced). Its attempts send a copy
     * of the request of their own: calls that share one request object are not retries. A
     * stream's copy is made with the stream (a `Stream.suspend` would hide the opening the
     * gateway and the pool start it by, `StreamPull.openingOf`, for a slower pull).
     */
    const create = (request: ChatCompletionRequest, options: CallOptions | undefined, trace: GenAi.Trace) =>
      Effect.suspend(() => {
        const sent = { ...request }
        const call = cache.cached(
          request,
          policy.apply((permit) => trace.attempt(upstream.create(sent, options, permit)), applyOptions(request, options)),
          { cache: options?.cache }
        )
        return lookedBeside ? call : Effect.zipRight(cacheBeside, call)
      })
    const stream = (request: ChatCompletionRequest, options: CallOptions | undefined, trace: GenAi.Trace) => {
      const sent = { ...request }
      const call = cache.cachedStream(
        request,
        policy.applyStream((permit) => trace.attemptStream(upstream.stream(sent, options, permit)), applyOptions(request, options)),
        { cache: options?.cache }
      )
      return lookedBeside ? call : Stream.unwrap(Effect.as(cacheBeside, call))
    }

    return Resilient.of({
      create: (request, options) =>
        whenTraced(create(request, options, GenAi.untraced), () =>
          Effect.flatMap(CaptureContent, (content) =>
            GenAi.traceCreate(
              "weatherproof.Resilient.create",
              request,
              content,
              (trace) => create(request, options, trace)
            ))),
      stream: (request, options) =>
        streamWhenTraced(stream(request, options, GenAi.untraced), () =>
          Stream.unwrap(Effect.map(CaptureContent, (content) =>
            GenAi.traceStream(
              "weatherproof.Resilient.stream",
              request,
              content,
              (trace) => stream(request, options, trace)
            ))))
    })
  })

const cacheBesideWarning = "Resilient: a ResponseCache is in the context of its calls but not in the client's own, so it is not used: " +
  "provide it to the client's layer (Layer.provide(ResponseCache.layerMemory())), not beside it"

/**
 * Builds the client from the `Policy` and the `Transport` in the context.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Policy, Resilient } from "weatherproof"
 *
 * const withPolicy = (options: Policy.Options) =>
 *   Effect.flatMap(Policy.make(options), (policy) => Effect.provideService(Resilient.make, Policy.Policy, policy))
 *
 * // Two clients over the `Transport` in context (its connections and keys), each with its own policy.
 * const clients = Effect.all({
 *   interactive: withPolicy({ retry: { maxRetries: 4 } }),
 *   batch: withPolicy({ retry: { maxRetries: 1 }, concurrency: 4 })
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<Service, never, Transport | Policy> = Effect.gen(function*() {
  return yield* makeWith(yield* Policy, transportUpstream(yield* Transport))
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Resilient, never, Transport | Policy> = Layer.effect(Resilient, make)

/**
 * @since 0.1.0
 * @category models
 */
export interface DefaultOptions extends PolicyModule.Options {
  /** Default `https://api.deepseek.com`. */
  readonly baseUrl?: string | undefined
  /** The account's keys, used in turn (`KeyPool`). */
  readonly keys: ReadonlyArray<Redacted.Redacted<string>>
  /** Each call's deadlines; a field left out keeps `Transport.defaultDeadlines`'s. */
  readonly deadlines?: Partial<Deadlines> | undefined
  /** The forward proxies, or `"none"`. Default: the environment's (`Transport.proxyConfig`). */
  readonly proxy?: TransportModule.ProxyOptions | "none" | undefined
}

/**
 * The whole client over Node's HTTP client: the policy with DeepSeek-sensible defaults (adaptive
 * limiter, retry with budget, breaker for outages; see `Policy.Options`) around a transport to
 * `baseUrl` with `keys`.
 *
 * @example
 * ```ts
 * import { Redacted } from "effect"
 * import { Resilient } from "weatherproof"
 *
 * const client = Resilient.layerDefault({ keys: [Redacted.make("sk-...")], retry: { maxRetries: 3 } })
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDefault = (options: DefaultOptions): Layer.Layer<Resilient> =>
  layer.pipe(
    Layer.provide([
      PolicyModule.layer(options),
      TransportModule.layer({ baseUrl: options.baseUrl, deadlines: options.deadlines }).pipe(
        Layer.provide([TransportModule.nodeHttpClient({ proxy: options.proxy }), KeyPool.layer(options.keys)])
      )
    ])
  )

/**
 * The settings `layerConfig` reads: `DEEPSEEK_API_KEY` (one key or several separated by commas),
 * `DEEPSEEK_BASE_URL` (default `https://api.deepseek.com`) and the forward proxies
 * (`Transport.proxyConfig`: `HTTPS_PROXY` and the rest), so a mistyped one is a `ConfigError`.
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<DefaultOptions> = Config.all({
  keys: KeyPool.keysConfig,
  baseUrl: BaseUrls.fromEnv(TransportModule.defaultBaseUrl),
  proxy: TransportModule.proxyConfig
})

/**
 * `layerDefault` configured from the environment (see `config`).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig: Layer.Layer<Resilient, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.map(config, layerDefault)
)
