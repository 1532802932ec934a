/**
 * A loopback HTTP server that behaves like DeepSeek's chat API, for tests, demos and benchmarks:
 * concurrency caps per account and per model that answer 429, queueing with keep-alive bytes,
 * deterministic answers, model aliases, seeded fault injection and the accounting to check a
 * client against.
 *
 * It is a real `node:http` server on 127.0.0.1 and runs on real time (Effect's live `Clock`,
 * whatever clock the caller uses): its own delays pass under `TestClock` too. A client's do not:
 * run a test of a client against it live (`it.scopedLive`), or a retry's backoff waits on a
 * `TestClock` no one moves and the test times out. Closing its scope (or `stop`) destroys every
 * open socket: a test never hangs on it.
 *
 * **Caps**, as DeepSeek's: an account's keys share its caps, and a request over any cap that
 * applies to it is refused at once with 429 (it never queues for a slot). A request holds its slot
 * from arrival until its response ends, queue wait included.
 * - An account `limit` that is a `Limit` is one cap shared by every model (the default: the
 *   server's `limit`, 16).
 * - A `ModelLimits` record gives each model its own cap, moving on its own: a model without an
 *   entry takes the `"*"` entry, else the server's `limit` (for a `ModelLimits` there, its entry for
 *   the model, its `"*"`, else 16). Filling one model's cap never refuses another's requests.
 * - `accountLimit` adds an account-wide cap on top: a request must be under both.
 *
 * A request's model is the serving model: the `model` it names, or what `aliases` maps that name
 * to. Caps, stats and the answer's `model` are the serving model's. Stats count each account and,
 * under its `byModel`, each of its serving models.
 *
 * **Answers** are derived from the request so a client can check them:
 * - `content` is `"echo:" + marker`, where the marker is the text of the last user message
 *   (the `text` of its parts joined, for a multi-part message; `""` without a user message);
 * - with `thinking: { type: "enabled" }`, `reasoning_content` is `"think:" + marker`;
 * - `model` is the serving model (the requested name without `aliases`); `id` is
 *   `chatcmpl-sim-<n>`, n counting accepted requests from 1;
 * - with `max_tokens` below what the answer takes, reasoning then content are cut to it (4
 *   characters a token) and it finishes with `length`, a truncation to account for.
 *
 * **Usage**: a token is 4 characters, rounded up (`tokens(text) = ceil(length / 4)`):
 * `prompt_tokens` = tokens of the text of every message concatenated; `prompt_cache_hit_tokens`
 * = `floor(prompt_tokens · cacheHitRatio)`; `reasoning_tokens` = tokens(reasoning);
 * `completion_tokens` = tokens(content) + tokens(reasoning).
 *
 * **Billing**: a request is billed for the usage of what it delivered. A full response bills the
 * usage it reported (an `insufficientResource` one its cut usage); a stream that ends early (a
 * `cut`, `reset`, `errorEvent` or `stall` fault, a client that disconnects, a server stop) bills the usage
 * it would have reported for the reasoning and content pieces already sent; a non-stream body cut
 * in transit bills its full usage (generation had finished). A request that delivered no content
 * piece (an error status, a drop, a blank body, a close or a stall while queued) bills nothing.
 *
 * @since 0.1.0
 */

import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as internal from "./internal/simulator.js"

/**
 * A concurrency limit: fixed, a function of the milliseconds since the server started, or a
 * schedule of steps in ascending `atMs` (the last step at or before now applies; before the first
 * step, the first step's limit). Fractions are floored.
 *
 * @since 0.1.0
 * @category models
 */
export type Limit =
  | number
  | ((elapsedMs: number) => number)
  | ReadonlyArray<{ readonly atMs: number; readonly limit: number }>

/**
 * A cap for each model, by the model's name; the `"*"` entry is the cap of every model without
 * its own entry. Each model's cap is its own and moves on its own.
 *
 * @since 0.1.0
 * @category models
 */
export type ModelLimits = Readonly<Record<string, Limit>>

/**
 * What a queue-delay function sees when a request is accepted.
 *
 * @since 0.1.0
 * @category models
 */
export interface Load {
  readonly account: string
  /** Requests in flight on the account, this one included. */
  readonly inFlight: number
  /** The account-wide cap; `Infinity` when only per-model caps apply. */
  readonly limit: number
  /** The serving model. */
  readonly model: string
  /** Requests of the model in flight on the account, this one included. */
  readonly modelInFlight: number
  /** The model's cap on the account (the shared one under a plain `limit`). */
  readonly modelLimit: number
  readonly elapsedMs: number
  /** A uniform draw in [0, 1) from the request's seeded generator. */
  readonly random: number
}

/**
 * How long an accepted request waits to be scheduled: fixed, uniform in a range (drawn from the
 * request's seeded generator), or a function of the load.
 *
 * @since 0.1.0
 * @category models
 */
export type QueueDelay =
  | Duration.DurationInput
  | { readonly min: Duration.DurationInput; readonly max: Duration.DurationInput }
  | ((load: Load) => Duration.DurationInput)

/**
 * A fault to inject into an accepted request:
 * - `serverError`: 500; `overloaded`: 503 (both before any byte of a 200);
 * - `dropBeforeResponse`: the socket is destroyed before a status is sent;
 * - `dropWhileQueued`: 200 and headers, `dropAfterKeepAlives` keep-alives, then the socket is
 *   destroyed;
 * - `stallWhileQueued`: 200 and headers, `dropAfterKeepAlives` keep-alives, then nothing (the
 *   connection open) until the client disconnects or the server stops: a connection stuck while
 *   queued, which only a client watching its keep-alives can tell from a long queue;
 * - `cut`: a stream sends about half of its content pieces and ends without `[DONE]`; a
 *   non-stream body ends halfway through its JSON (the response ends cleanly: a server or proxy
 *   that closed it);
 * - `reset`: the same content, then the connection is reset instead (a network cut mid-body);
 * - `blank`: 200 and keep-alives, then the body ends with no content;
 * - `insufficientResource`: half of the content, `finish_reason: "insufficient_system_resource"`;
 * - `errorEvent`: a stream sends about half of its pieces then `data: {"error": …}` and ends;
 *   a non-stream answers 200 with an `{"error": …}` body;
 * - `stall`: a stream sends about half of its pieces, a non-stream its headers and queue
 *   keep-alives, then nothing until the client disconnects or the server stops.
 *
 * @since 0.1.0
 * @category models
 */
export type Fault =
  | "serverError"
  | "overloaded"
  | "dropBeforeResponse"
  | "dropWhileQueued"
  | "cut"
  | "blank"
  | "insufficientResource"
  | "errorEvent"
  | "stall"
  | "reset"
  | "stallWhileQueued"

/**
 * Every fault, in the order their probabilities are laid out on [0, 1).
 *
 * @since 0.1.0
 */
export const allFaults: ReadonlyArray<Fault> = internal.allFaults

/**
 * Which accepted requests fail, deterministically:
 * - `script`: the faults of the first accepted requests in arrival order (`"none"` for a clean
 *   one); counted from the start or the last `setFaults`;
 * - `probabilities`: after the script, each fault's chance per request (their sum at most 1).
 *   The draw comes from a generator seeded with `seed`, the raw request body and how many times
 *   that body was accepted before, so the n-th attempt of a given request meets the same fault
 *   whatever the interleaving of other requests.
 *
 * @since 0.1.0
 * @category models
 */
export interface Faults {
  readonly script?: ReadonlyArray<Fault | "none"> | undefined
  readonly probabilities?: Readonly<Partial<Record<Fault, number>>> | undefined
}

/**
 * An account: its keys share its concurrency caps and its balance.
 *
 * @since 0.1.0
 * @category models
 */
export interface AccountOptions {
  /** Bearer keys of the account; unique across accounts. */
  readonly keys: ReadonlyArray<string>
  /**
   * A `Limit`: one cap shared by every model. `ModelLimits`: a cap per model (see the module's
   * caps). Default: the server's `limit`.
   */
  readonly limit?: Limit | ModelLimits | undefined
  /** An account-wide cap on top of the per-model ones: a request must be under both. Default: none. */
  readonly accountLimit?: Limit | undefined
  /**
   * USD. At or below 0 every call answers 402 and `GET /user/balance` answers
   * `is_available: false` (from the start, so a preflight sees it before any 402). Default 100.
   * Calls do not spend it.
   */
  readonly balance?: number | undefined
}

/**
 * The server's options. They are checked as it is made, each one named in a defect when out of
 * range (a duration that is none, a piece size below 1, a share outside [0, 1], a fixed cap that
 * is no number of at least 0, a fault name that is none, a key in two accounts); what a function
 * option returns is checked as a request meets it, failing that request with the same message.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Default `{ default: { keys: ["sk-sim-default"] } }`. */
  readonly accounts?: Readonly<Record<string, AccountOptions>> | undefined
  /**
   * Limit of accounts that do not set one, and of models a `ModelLimits` of an account gives no
   * entry (not even `"*"`). Default 16.
   */
  readonly limit?: Limit | ModelLimits | undefined
  /**
   * Requested model name → the model that serves it (one step, not chained), as DeepSeek serves
   * old names with new models, e.g. `{ "deepseek-v4-flash": "deepseek-flash" }`. Default: none.
   */
  readonly aliases?: Readonly<Record<string, string>> | undefined
  /**
   * The models it serves, by serving name (what `aliases` maps a name to): a request for any
   * other is answered as DeepSeek answers a typo or a retired name, 400 "Model Not Exist", so a
   * wrong name fails in tests rather than in production. Default: every name is served.
   */
  readonly models?: ReadonlyArray<string> | undefined
  /** When set, 429 and 503 answers carry `Retry-After` (whole seconds, rounded up) and `retry-after-ms`. Default: none. */
  readonly retryAfter?: Duration.DurationInput | undefined
  /** Default uniform in 0-20 ms. */
  readonly queueDelay?: QueueDelay | undefined
  /** Between keep-alives while a request waits (`\n` for a non-stream, `: keep-alive` for a stream). Default 10 ms. */
  readonly keepAliveInterval?: Duration.DurationInput | undefined
  /** A request whose queue delay reaches this is closed after it without an answer. Default 10 minutes (DeepSeek's). */
  readonly scheduleTimeout?: Duration.DurationInput | undefined
  /** Between two stream chunks; a non-stream answer takes this per chunk it would have had. Default 1 ms. */
  readonly chunkDelay?: Duration.DurationInput | undefined
  /** Characters per streamed piece. Default 8. */
  readonly pieceSize?: number | undefined
  /** Share of prompt tokens reported as cache hits, in [0, 1]. Default 0. */
  readonly cacheHitRatio?: number | undefined
  /**
   * A connection idle this long after a response is closed by the server, unannounced (no
   * `Keep-Alive: timeout` header), so a client's pool may pick a socket being closed: a stale
   * pooled connection. Default 5 seconds.
   */
  readonly idleTimeout?: Duration.DurationInput | undefined
  /** Default: no faults. */
  readonly faults?: Faults | undefined
  /** Keep-alives a `dropWhileQueued` or `stallWhileQueued` request sends before its fault. Default 2. */
  readonly dropAfterKeepAlives?: number | undefined
  /** Seed of every random draw (faults, queue delays). Default 0. */
  readonly seed?: number | string | undefined
  /** Default 0: a free port. One in use is a defect that names it. */
  readonly port?: number | undefined
}

/**
 * Tokens billed to an account (see the module's billing rule).
 *
 * @since 0.1.0
 * @category models
 */
export interface Tokens {
  readonly prompt: number
  readonly completion: number
  readonly cacheHit: number
  readonly reasoning: number
}

/**
 * The state of an account, or of one model of an account, when something changed: `t` in
 * milliseconds since the server started, the cap then and the requests in flight.
 *
 * @since 0.1.0
 * @category models
 */
export interface Sample {
  readonly t: number
  readonly limit: number
  readonly inFlight: number
}

/**
 * What an account, or one model of an account, did with its slots.
 *
 * @since 0.1.0
 * @category models
 */
export interface SlotStats {
  /** Requests that got a slot. */
  readonly accepted: number
  /** Requests answered 429, over this cap or another one that applied to them. */
  readonly rateLimited: number
  /** Clean answers delivered in full (see `Stats.completed`). */
  readonly completed: number
  readonly inFlight: number
  readonly maxInFlight: number
  readonly billed: Tokens
}

/**
 * One model of an account, under its serving name.
 *
 * @since 0.1.0
 * @category models
 */
export interface ModelStats extends SlotStats {
  /** Chat requests for the model that reached its caps (authenticated, in balance, well formed). */
  readonly requests: number
  /** The model's cap now: its own, or the account's shared one under a plain `limit`. */
  readonly limit: number
  /** One sample per admission and release of the model's requests, and per `setLimit` of the model or its account. */
  readonly timeline: ReadonlyArray<Sample>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface AccountStats extends SlotStats {
  /** Chat requests authenticated with one of the account's keys. */
  readonly requests: number
  /** The account-wide cap now: a plain `limit` or `accountLimit`, the lower of both; `Infinity` without one. */
  readonly limit: number
  /** One sample per admission, release and `setLimit` on the account, whatever the model. */
  readonly timeline: ReadonlyArray<Sample>
  /** Every model the account was asked for, or given a cap with `setLimit`, by serving name. */
  readonly byModel: Readonly<Record<string, ModelStats>>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Stats {
  /** Chat requests received, whatever became of them. */
  readonly requests: number
  readonly accepted: number
  readonly rateLimited: number
  /** Answers with `finish_reason: "stop"` (or `"length"`, cut by `max_tokens`) delivered in full (a stream up to `[DONE]`), no fault. */
  readonly completed: number
  /** Requests closed because their queue delay reached `scheduleTimeout`. */
  readonly unscheduled: number
  /** Requests whose client disconnected before the response ended (the server's own drops excluded). */
  readonly clientClosed: number
  /** TCP connections the server accepted: a client that reuses its sockets opens about as many as it has calls in flight. */
  readonly connections: number
  /** Every status sent, on any route. */
  readonly byStatus: Readonly<Record<number, number>>
  /** Faults injected. */
  readonly faults: Readonly<Partial<Record<Fault, number>>>
  readonly accounts: Readonly<Record<string, AccountStats>>
}

/**
 * A clean answer delivered in full: a test checks "none lost, none duplicated" on markers.
 *
 * @since 0.1.0
 * @category models
 */
export interface Completion {
  readonly id: string
  readonly account: string
  /** The serving model. */
  readonly model: string
  /** The text of the request's last user message. */
  readonly marker: string
  readonly stream: boolean
}

/**
 * @since 0.1.0
 * @category models
 */
export interface AccountInfo {
  readonly name: string
  readonly keys: ReadonlyArray<string>
}

/**
 * A running simulator. Naming an account that does not exist is a defect.
 *
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** `http://127.0.0.1:<port>`; chat at `/chat/completions` or `/v1/chat/completions`, balance at `/user/balance`. */
  readonly baseUrl: string
  readonly accounts: ReadonlyArray<AccountInfo>
  readonly stats: Effect.Effect<Stats>
  /** Clean answers delivered in full, in completion order. */
  readonly completions: Effect.Effect<ReadonlyArray<Completion>>
  /**
   * Fixes a cap from now on (replacing its function or schedule). Without `model`, the
   * account-wide cap: it replaces a plain `limit` and `accountLimit` (and gives an account with
   * per-model caps only an account-wide one). With `model` (a requested name resolves through
   * `aliases`), that model's own cap on the account: under a plain `limit`, a cap on top of the
   * shared one.
   */
  readonly setLimit: (account: string, limit: number, model?: string) => Effect.Effect<void>
  readonly setBalance: (account: string, balance: number) => Effect.Effect<void>
  /** Replaces the faults and restarts the script. */
  readonly setFaults: (faults: Faults) => Effect.Effect<void>
  /** Stops listening and destroys every open socket. Idempotent; also run when the scope closes. */
  readonly stop: Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Simulator extends Context.Tag("weatherproof/Simulator")<Simulator, Service>() {}

/**
 * The key of the default account `default`.
 *
 * @since 0.1.0
 */
export const defaultKey: string = internal.defaultKey

/**
 * Starts a simulator on 127.0.0.1; it stops when the scope closes.
 *
 * @example
 * ```ts
 * import { Effect, Redacted } from "effect"
 * import { Resilient, Simulator } from "weatherproof"
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const simulator = yield* Simulator.make({ limit: 4, faults: { probabilities: { overloaded: 0.05 } } })
 *   const keys = [Redacted.make(Simulator.defaultKey)]
 *   const client = Resilient.layerDefault({ baseUrl: simulator.baseUrl, keys })
 *   const ask = Effect.flatMap(Resilient.Resilient, (resilient) =>
 *     resilient.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "ping" }] }))
 *   const asks = Array.from({ length: 20 }, () => ask)
 *   yield* Effect.all(asks, { concurrency: "unbounded" }).pipe(Effect.provide(client))
 *   return yield* simulator.stats // requests, 429s, faults, billed tokens, per account and model
 * }))
 *
 * // One account with a cap per model, as DeepSeek's, the old flash name served by the new model.
 * const deepseekLike = Simulator.make({
 *   limit: { "deepseek-v4-pro": 6, "deepseek-flash": 12 },
 *   aliases: { "deepseek-v4-flash": "deepseek-flash" }
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service, never, Scope.Scope> => internal.make(options)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Simulator> => Layer.scoped(Simulator, make(options))
