/**
 * The transport: one HTTP call to an OpenAI-compatible `/chat/completions` endpoint, with
 * DeepSeek's keep-alive wire behaviour parsed into typed values and typed errors.
 *
 * @since 0.1.0
 */

import * as HttpClient from "@effect/platform/HttpClient"
import type * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Redacted from "effect/Redacted"
import type * as Stream from "effect/Stream"
import type { ApiError } from "./ApiError.js"
import type { Priority } from "./ConcurrencyLimiter.js"
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from "./ChatSchema.js"
import * as BaseUrls from "./internal/baseUrl.js"
import * as ForwardProxy from "./internal/proxy.js"
import * as internal from "./internal/transport.js"
import * as KeyPool from "./KeyPool.js"

/**
 * Deadlines of one call, all measured with Effect's `Clock`, on its monotonic time
 * (`currentTimeNanos`): a step of the system clock moves none. One is judged on what arrived in
 * time: after a stop of the process (Ctrl-Z, a paused container), what came meanwhile is read
 * before a deadline that passed during the stop cuts the call.
 *
 * @since 0.1.0
 * @category models
 */
export interface Deadlines {
  /**
   * From sending the request to the first content event; keep-alive bytes do not reset it. Default
   * 10 minutes. A non-streaming call's content comes whole once generated: its applies until the
   * call is accepted (a 200), then `total` bounds it (DeepSeek closes a request it never schedules).
   */
  readonly firstContent: Duration.DurationInput
  /**
   * Longest gap between two content events. Default 120 seconds. Before the first content,
   * keep-alives count (a stream's comments, a non-streaming answer's blank lines): DeepSeek sends
   * them until the content, so once they came, silence this long is a stuck connection. An
   * upstream that sends none is bounded by `firstContent` (a stream) or `total` (a non-streaming
   * answer past its 200) alone.
   */
  readonly idle: Duration.DurationInput
  /**
   * The whole call: through `Resilient`, each attempt's (a retry starts every deadline again).
   * Default 30 minutes. To bound a call and its retries together, time it out
   * (`Effect.timeout(client.create(request), "2 minutes")`), which cancels the attempt on the wire.
   */
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
 * Where a call's exchange with the upstream stands (`CallOptions.onExchange`).
 *
 * @since 0.1.0
 * @category models
 */
export type Exchange = "sent" | "answered" | "failed"

/**
 * Per-call options.
 *
 * @since 0.1.0
 * @category models
 */
export interface CallOptions {
  /** Override the layer's deadlines for this call. */
  readonly deadlines?: Partial<Deadlines> | undefined
  /**
   * Called once when the first content arrives (the first non-whitespace byte of a body, the
   * first event of a stream) with the time since the response headers: DeepSeek's own queueing
   * time, a delay signal for an adaptive concurrency limit.
   */
  readonly onFirstContent?: ((queueDelay: Duration.Duration) => Effect.Effect<void>) | undefined
  /**
   * Called once when a success status and its headers arrive, before the body: DeepSeek answers
   * a request over the account's concurrency cap with an immediate 429 and an accepted one with
   * 200 at once (then keep-alives while it queues), so this says the request holds a slot, one
   * round trip after it was sent.
   */
  readonly onAccepted?: Effect.Effect<void> | undefined
  /**
   * Called with a non-streaming call's completion as soon as it is read, before the layers over
   * the transport settle the attempt (its permit, cost and counts): it is the answer the call
   * succeeds with, known that much earlier, so a gateway writes it to its client then. A call
   * answered otherwise (from a cache, or by a transport that does not call it) is known when it
   * returns.
   */
  readonly onAnswer?: ((completion: ChatCompletion) => Effect.Effect<void>) | undefined
  /**
   * Told where the call's exchange with the upstream stands: `"sent"` as its request goes out
   * (from then on the upstream may bill it), then `"answered"` once its answer is read whole (a
   * completion parsed, a stream's `[DONE]`) or `"failed"` when it ends otherwise (an error status,
   * a cut, a deadline). An interrupted call is told nothing more. A caller that stops uses it to
   * let the calls on the wire finish and end the others at once (`Batch.run` on a stop).
   */
  readonly onExchange?: ((exchange: Exchange) => void) | undefined
  /**
   * The call's priority. A plain transport ignores it; a transport that owns concurrency limits
   * (the account pool) queues by it.
   */
  readonly priority?: Priority | undefined
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
   * A streaming completion (`stream: true` and `stream_options.include_usage` are forced, unless
   * the upstream refused `stream_options` with a 400: that stream is sent again without it, and so
   * are the later ones, their usage unreported unless the server sends it anyway). The
   * stream ends after `data: [DONE]`; one that stops before fails with `StreamTruncated`. After
   * `[DONE]` the rest of the body (normally only its terminator) is read for at most a second
   * before the stream ends, so its connection is reused: a server (or a test's `MockUpstream`
   * reply) that keeps the body open after `[DONE]` delays the end by that second. An upstream
   * that answers with a whole JSON completion instead (one that does not stream) is read as
   * `create` reads it, and given as the chunks that fold into it (`ChatStream.chunksOf`).
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
  /**
   * Default `https://api.deepseek.com`; a trailing slash is ignored. An http(s) URL without
   * credentials (`user:pass@`, which traces would show as `url.full`), query or fragment: `make`
   * dies with an `IllegalArgumentException` otherwise.
   */
  readonly baseUrl?: string | undefined
  /** Default `defaultDeadlines`; `CallOptions.deadlines` override these per call. */
  readonly deadlines?: Partial<Deadlines> | undefined
  /**
   * How many times a request that failed before any status arrived with a reset, closed or
   * broken connection (a pooled socket the server had closed while idle) is resent at once,
   * silently. Default 1.
   */
  readonly staleConnectionRetries?: number | undefined
  /**
   * Connections opened to the base URL's origin when the transport is made, so the first burst of
   * calls pays no TCP or TLS handshake. Only over `nodeHttpClient`, whose pool takes them for its
   * next connections to that origin; no request is sent to open them, and one not taken within
   * the pool's keep-alive timeout is closed, as its idle connections are. Default 4
   * (`defaultWarmUp`); 0 for none.
   */
  readonly warmUp?: number | undefined
}

/** @since 0.1.0 */
export const defaultBaseUrl = "https://api.deepseek.com"

/** @since 0.1.0 */
export const defaultWarmUp = 4

/**
 * A transport over the `HttpClient` and `KeyPool` in context.
 *
 * @example
 * ```ts
 * import { Effect, Redacted } from "effect"
 * import { KeyPool, Transport } from "weatherproof"
 *
 * const program = Effect.gen(function*() {
 *   const transport = yield* Transport.make({
 *     baseUrl: "https://llm.example.com/v1",
 *     deadlines: { idle: "30 seconds" }
 *   })
 *   return yield* transport.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "Hi" }] })
 * }).pipe(Effect.provide([Transport.nodeHttpClient(), KeyPool.layer([Redacted.make("sk-...")])]))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options?: Options): Effect.Effect<Service, never, HttpClient.HttpClient | KeyPool.KeyPool> =>
  internal.make({
    baseUrl: options?.baseUrl ?? defaultBaseUrl,
    defaultDeadlines,
    deadlines: options?.deadlines,
    staleConnectionRetries: options?.staleConnectionRetries ?? 1,
    warmUp: options?.warmUp ?? defaultWarmUp
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<Transport, never, HttpClient.HttpClient | KeyPool.KeyPool> =>
  Layer.effect(Transport, make(options))

/**
 * A transport configured from the environment: base URL from `DEEPSEEK_BASE_URL` (default
 * `https://api.deepseek.com`; an http(s) URL without credentials, query or fragment), keys from
 * `DEEPSEEK_API_KEY` (one key, or several separated by commas).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig: Layer.Layer<Transport, ConfigError.ConfigError, HttpClient.HttpClient> = Layer.unwrapEffect(
  Effect.map(
    BaseUrls.fromEnv(defaultBaseUrl),
    (baseUrl) => layer({ baseUrl })
  )
).pipe(Layer.provide(KeyPool.layerConfig))

/**
 * Options of `nodeHttpClient`.
 *
 * @since 0.1.0
 * @category models
 */
export interface NodeHttpClientOptions {
  /** Most sockets per origin. Default unlimited (bound concurrency with a limiter instead). */
  readonly connections?: number | undefined
  /**
   * How long an idle pooled socket is kept when the server gives no `Keep-Alive` hint. Default
   * 4 seconds: shorter than common server idle timeouts (5 s and up), so the client drops a
   * socket before the server does.
   */
  readonly keepAliveTimeout?: Duration.DurationInput | undefined
  /** Upper bound on a server's `Keep-Alive: timeout` hint. Default 30 seconds. */
  readonly keepAliveMaxTimeout?: Duration.DurationInput | undefined
  /**
   * The forward proxies to reach upstreams through, or `"none"` to connect directly. Default:
   * the environment's (`proxyConfig`).
   */
  readonly proxy?: ProxyOptions | "none" | undefined
}

/**
 * Forward proxies. A connection to an upstream through one is a tunnel (`CONNECT host:port`), and
 * TLS to the upstream is made over it as it would be directly: the proxy sees the upstream's host
 * and port, never a key or a prompt. A TLS-inspecting proxy re-signs the upstream's certificate:
 * give its CA's certificate in `NODE_EXTRA_CA_CERTS`. A proxy that cannot be reached, or does not
 * open the tunnel (a 407 without credentials, a 403 for that host), fails the connection, named
 * by its origin: `TransportError` with reason `"connect"`.
 *
 * @since 0.1.0
 * @category models
 */
export interface ProxyOptions {
  /**
   * The proxy of `https:` upstreams: an `http:` or `https:` URL, with `user:password@` if it asks
   * for them; `http://` when it names no scheme.
   */
  readonly https?: Redacted.Redacted<string> | undefined
  /** The proxy of `http:` upstreams. */
  readonly http?: Redacted.Redacted<string> | undefined
  /**
   * Hosts reached directly, as `NO_PROXY` lists them: `example.com` (with its subdomains; a
   * leading `.` or `*.` means the same), `example.com:8080` (on that port only), `[::1]`, or `*`
   * (every host). Addresses are matched as written: no CIDR ranges.
   */
  readonly noProxy?: ReadonlyArray<string> | undefined
}

/**
 * The environment's proxies, as curl and most command lines read them: `https_proxy` (or
 * `HTTPS_PROXY`) for `https:` upstreams, `http_proxy` (or `HTTP_PROXY`) for `http:` ones, and
 * `no_proxy` (or `NO_PROXY`), comma-separated, for the hosts reached directly. Loopback hosts
 * (`localhost`, `127.0.0.1`, `[::1]`) are always reached directly, as Go's clients do. A blank
 * variable is unset; a proxy that is no http(s) URL is `InvalidData` (`http://` is assumed when it
 * names no scheme, as curl does).
 *
 * @since 0.1.0
 * @category config
 */
export const proxyConfig: Config.Config<ProxyOptions> = ForwardProxy.proxyConfig

/**
 * An `HttpClient` on an undici `Agent` of its own, destroyed (anything still pending aborted)
 * when the layer's scope closes. Keep-alive with early idle eviction; undici's own header and
 * body timeouts are off because the transport's deadlines decide (undici's 300 s default would
 * kill a request DeepSeek legitimately keeps queued for 10 minutes).
 *
 * It is `@effect/platform-node`'s undici client, which anything may use, and a transport made
 * over it sends its own calls on the same `Agent` directly: one undici dispatch per request, its
 * body handed over by undici's callbacks, and its deadlines kept by one watchdog per transport,
 * with no fiber, Node stream or timer per call; while a tracer is installed, each in the HTTP
 * client span the client would make (its name, attributes and redacted headers, the trace
 * propagated upstream). Its connections go through the environment's forward proxy
 * (`proxyConfig`: `HTTPS_PROXY` and the rest; one that is no http(s) URL is a defect here, so read
 * `proxyConfig` first to have its `ConfigError`, as `Resilient.layerConfig` does) or
 * `options.proxy`'s. A transport over it opens
 * its connections ahead of its first calls (`Options.warmUp`), and about as many as it has calls
 * in flight: undici gives a socket back to its pool only at the end of the event loop's turn
 * after its answer, so a call sent meanwhile (a waiter taking the permit that answer freed) is
 * held until then and takes that socket instead of connecting anew.
 *
 * @since 0.1.0
 * @category layers
 */
export const nodeHttpClient = (options?: NodeHttpClientOptions): Layer.Layer<HttpClient.HttpClient> =>
  Layer.scoped(
    HttpClient.HttpClient,
    Effect.flatMap(ForwardProxy.proxiesFrom(options?.proxy), (proxies) =>
      internal.nodeHttpClient({
        keepAliveTimeout: Duration.toMillis(options?.keepAliveTimeout ?? Duration.seconds(4)),
        keepAliveMaxTimeout: Duration.toMillis(options?.keepAliveMaxTimeout ?? Duration.seconds(30)),
        connections: options?.connections,
        proxies
      }))
  )
