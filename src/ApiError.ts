/**
 * The error taxonomy of a call to an OpenAI-compatible chat API.
 *
 * Every error is a tagged class (so `Effect.catchTag` works) and carries what a caller acts on
 * (status, `retryAfter`, the partial output and usage received so far). Messages that come from
 * the server are scrubbed of anything that looks like an API key before they are stored here.
 *
 * ## What an error means: one classification
 *
 * `classify` is the one place that says what an error means, as a small `Verdict`:
 *
 * | verdict | errors | retry | limiter | breaker |
 * | --- | --- | --- | --- | --- |
 * | `LoadShed` | 429, 503, `insufficient_system_resource`, a request closed while queued (after its 200 and keep-alives, before any content: a blank 200, a stream ended or reset without an event) | yes, never sooner than `retryAfter` | lowers the limit | a failure (unless it leaves load to the limiter) |
 * | `Outage` | other 5xx, 408/409, other transport errors, deadlines, streams truncated after content, a cut 200, an error event, **any error it does not know** | yes | ignored | a failure |
 * | `Account` | 401, 402 (or a 429 `insufficient_quota`: out of credits), 403, a server certificate this machine does not trust, a 404 or 405 that is no API error (no chat endpoint at the base URL) | no (an account pool fails over) | ignored | a success: no outage |
 * | `Caller` | 400, 404 (an API error), 422 and other 4xx, a reply of the wrong shape, a routing refusal | no | ignored | a success |
 * | `Refused` | our own gates: a full queue, an exhausted bucket, an open circuit, a spent budget, no account | when it says so, after `retryAfter` | ignored | ignored |
 *
 * Every policy (`RetryPolicy`, `ConcurrencyLimiter`, `CircuitBreaker`, and `Policy`, which
 * composes them) reads errors only through a `Classifier` it is given, this one by default, so
 * they agree by construction. `classify` also knows `@effect/platform`'s `HttpClientError` (by
 * status and `Retry-After`). For errors of your own, `classifyWith` puts your reading first and
 * falls back to `classify`, which knows this package's errors by a mark they carry, not by their
 * tag alone: an error of yours tagged `ServerError` is one it does not know.
 *
 * @since 0.1.0
 */

import * as HttpClientError from "@effect/platform/HttpClientError"
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"
import type { FinishReason, Usage } from "./ChatSchema.js"
import type { CircuitOpen } from "./CircuitBreaker.js"
import type { QueueFull } from "./ConcurrencyLimiter.js"
import type { BudgetExceeded } from "./CostLedger.js"
import { retryAfterFromHeaders } from "./internal/retryAfter.js"
import { isSdkError, TaggedError } from "./internal/sdkError.js"
import { counted, isUntrustedCertificate } from "./internal/text.js"
import type { RoutingRefused } from "./Router.js"
import type { RateLimitExceeded } from "./TokenBucket.js"

/**
 * What a call produced before it failed: text and reasoning already received, usage if the
 * server sent it, and how many content events arrived. Truncated and timed-out calls carry it so
 * the caller can keep (and account for) what was paid for.
 *
 * @since 0.1.0
 */
export interface PartialOutput {
  readonly content: string
  readonly reasoningContent: string
  readonly usage: Usage | undefined
  readonly finishReason: FinishReason | undefined
  /** Content events that arrived: a stream's chunks; a non-streaming answer's body is one, once its JSON began. */
  readonly events: number
  /** The model the answer named, once a chunk or its body arrived: it is priced by that name. */
  readonly model?: string | undefined
}

/** A `PartialOutput` with nothing received. @since 0.1.0 */
export const emptyPartial: PartialOutput = {
  content: "",
  reasoningContent: "",
  usage: undefined,
  finishReason: undefined,
  events: 0
}

/** 400, 413 (too large for the server) or 422: the request itself is wrong; fix it, do not retry. @since 0.1.0 */
export class InvalidRequest extends TaggedError("InvalidRequest")<{
  readonly status: number
  readonly message: string
  readonly param?: string | undefined
  readonly code?: string | undefined
}> {}

/** 401: the key was rejected. The key itself is never stored. @since 0.1.0 */
export class KeyRejected extends TaggedError("KeyRejected")<{
  readonly message: string
  /** A non-secret label of the key, e.g. `key#2`. */
  readonly keyId: string
}> {
  /** @since 0.1.0 */
  readonly status = 401
}

/**
 * 402: the account is out of balance; every key of the account is affected. Also a 429 whose
 * error says the quota is spent (`insufficient_quota`, OpenAI's out of credits), which waiting does
 * not lift as it does a rate limit.
 *
 * @since 0.1.0
 */
export class InsufficientBalance extends TaggedError("InsufficientBalance")<{
  readonly message: string
}> {
  /** @since 0.1.0 */
  readonly status = 402
}

/** 429: over the account's concurrency limit. @since 0.1.0 */
export class RateLimited extends TaggedError("RateLimited")<{
  readonly message: string
  /** From `retry-after-ms` or `Retry-After` when the server sent one. */
  readonly retryAfter: Option.Option<Duration.Duration>
}> {
  /** @since 0.1.0 */
  readonly status = 429
}

/** 500, 503 or another 5xx: the server failed or is overloaded; retry after a wait. @since 0.1.0 */
export class ServerError extends TaggedError("ServerError")<{
  readonly status: number
  readonly message: string
  readonly retryAfter: Option.Option<Duration.Duration>
}> {}

/**
 * Any other status (404, 408, 409 …); `classifyStatus` says what it means, but for
 * `endpointMissing`: a 404 or 405 whose body is no API error (a web server's page), so nothing
 * at the base URL takes chat completions. That is the account's problem (its base URL), not the
 * request's: an account pool fails over.
 *
 * @since 0.1.0
 */
export class UnexpectedStatus extends TaggedError("UnexpectedStatus")<{
  readonly status: number
  readonly message: string
  readonly endpointMissing?: boolean | undefined
}> {}

/**
 * The connection failed: refused, reset, closed while the request was in flight or while the
 * body was read. A stale pooled connection is retried silently by the transport first. Closed
 * while the body was read before any content arrived (`reason: "body"`, `partial.events` 0) is
 * load shed, not an outage: DeepSeek closes a request it could not schedule in time, after its
 * 200 and keep-alives.
 *
 * @since 0.1.0
 */
export class TransportError extends TaggedError("TransportError")<{
  readonly reason: "connect" | "request" | "body"
  readonly message: string
  readonly partial: PartialOutput
  readonly cause?: unknown
}> {}

/**
 * A 200 whose body is not a usable completion: blank (only keep-alive whitespace: closed while
 * queued, load shed), cut before the JSON ended (an outage), or JSON of the wrong shape (final: a
 * retry returns the same shape). A stream event of the wrong shape carries
 * what the stream delivered before it (`partial`: its content and usage were billed).
 *
 * @since 0.1.0
 */
export class MalformedResponse extends TaggedError("MalformedResponse")<{
  readonly reason: "blank" | "cut" | "schema"
  readonly message: string
  readonly partial?: PartialOutput | undefined
}> {}

/**
 * A deadline passed, measured by Effect's `Clock`:
 * - `first_content`: no content event since the request was sent (keep-alive bytes do not
 *   count; DeepSeek closes unscheduled requests after about 10 minutes);
 * - `idle`: too long between two content events (a stalled stream), or keep-alives stopped
 *   before the first content (a stuck connection);
 * - `total`: the whole call took too long.
 *
 * @since 0.1.0
 */
export class DeadlineExceeded extends TaggedError("DeadlineExceeded")<{
  readonly reason: "first_content" | "idle" | "total"
  readonly after: Duration.Duration
  readonly partial: PartialOutput
}> {
  /** @since 0.1.0 */
  override get message(): string {
    return `deadline ${this.reason} exceeded after ${Duration.format(this.after)}`
  }
}

/**
 * A stream that ended without `data: [DONE]`. Carries what arrived. One that ended before any
 * event (only keep-alives: closed while queued) is load shed; after content, an outage.
 *
 * @since 0.1.0
 */
export class StreamTruncated extends TaggedError("StreamTruncated")<{
  readonly partial: PartialOutput
}> {
  /** @since 0.1.0 */
  override get message(): string {
    return `stream ended without [DONE] after ${counted(this.partial.events, "event", "events")}`
  }
}

/** `finish_reason: insufficient_system_resource`: DeepSeek cut the work short. @since 0.1.0 */
export class InsufficientResource extends TaggedError("InsufficientResource")<{
  readonly partial: PartialOutput
}> {
  /** @since 0.1.0 */
  override get message(): string {
    return "inference was cut: insufficient_system_resource"
  }
}

/** An `{"error": …}` event inside a stream or a 200 body. @since 0.1.0 */
export class UpstreamError extends TaggedError("UpstreamError")<{
  readonly message: string
  readonly type?: string | undefined
  readonly code?: string | undefined
  readonly partial: PartialOutput
}> {}

/**
 * Every key was rejected (401), so no call can be made. `retryAfter`: the time until the first of
 * them is back from its cooldown.
 *
 * @since 0.1.0
 */
export class NoUsableKey extends TaggedError("NoUsableKey")<{
  readonly rejected: number
  readonly retryAfter: Option.Option<Duration.Duration>
}> {
  /** @since 0.1.0 */
  override get message(): string {
    const back = Option.match(this.retryAfter, { onNone: () => "", onSome: (d) => `; the first is back in ${Duration.format(d)}` })
    return `no usable API key: ${this.rejected} rejected${back}`
  }
}

/**
 * Why one account of an `AccountPool` could not serve a call:
 * - `circuit_open`: its circuit breaker is open (or isolated);
 * - `out_of_balance`: it answered 402; it is back once a balance probe says so, or after a
 *   cooldown when it cannot be probed;
 * - `checking_balance`: its balance is being asked, once at start (`until` is when the probe
 *   gives up, after which it serves);
 * - `no_keys`: every key of it was rejected (401); keys are usable again after their cooldown;
 * - `unreachable`: its base URL refuses connections (a host down); it serves again once a
 *   connection opens (`until`: the next try);
 * - `busy`: it serves, but had no free permit for the call in time (or refused this call);
 * - `model_not_served`: it does not serve the call's model (another account's `models` map
 *   names it, this one's does not).
 *
 * @since 0.1.0
 * @category models
 */
export interface AccountUnavailable {
  readonly account: string
  readonly reason: "circuit_open" | "out_of_balance" | "checking_balance" | "no_keys" | "unreachable" | "busy" | "model_not_served"
  /**
   * When it may serve again, in epoch millis on the `Clock`'s monotonic time (as
   * `CircuitBreaker.Open.since`); `Infinity` when unknown (an isolated breaker).
   */
  readonly until: number
  /**
   * What its last call failed with (scrubbed), when it is out for a failure: the upstream's own
   * words (a 402's "Insufficient credits. Add more using …") for the one reading the error.
   */
  readonly lastFailure?: string | undefined
}

/** What each reason means to a reader of the message (the code alone, `no_keys`, says little). */
const unavailableMeaning: Record<AccountUnavailable["reason"], string> = {
  circuit_open: "its breaker is open after failures",
  out_of_balance: "out of balance (a 402, or its balance check said so)",
  checking_balance: "its balance is being checked",
  no_keys: "every key rejected by the upstream (401)",
  unreachable: "cannot connect to its base URL",
  busy: "at its limit, or failed already for this call",
  model_not_served: "it does not serve this model"
}

/**
 * No account of an `AccountPool` could take the call: each account's reason, and `retryAfter`,
 * the time until the first of them may serve again (none when no time is known). The pool has
 * already waited as long as the call allows (its `maxWait`), or another call waited as long in
 * the same outage, so it is final.
 *
 * @since 0.1.0
 */
export class NoAccountAvailable extends TaggedError("NoAccountAvailable")<{
  readonly retryAfter: Option.Option<Duration.Duration>
  readonly accounts: ReadonlyArray<AccountUnavailable>
}> {
  /** @since 0.1.0 */
  override get message(): string {
    const reasons = this.accounts.map((a) =>
      `${a.account}: ${a.reason}, ${unavailableMeaning[a.reason]}${a.lastFailure === undefined ? "" : `, last failure ${a.lastFailure}`}`
    ).join("; ")
    const wait = Option.match(Option.filter(this.retryAfter, (d) => !Duration.isZero(d)), {
      onNone: () => "",
      onSome: (d) =>
        `; ${this.accounts.length === 1 ? "it" : "one of them"} may serve again in ${
          Duration.format(Duration.seconds(Math.ceil(Duration.toSeconds(d))))
        }`
    })
    return `no account can serve (${reasons})${wait}`
  }
}

/**
 * Every failure a call to the upstream can end in.
 *
 * @since 0.1.0
 */
export type ApiError =
  | InvalidRequest
  | KeyRejected
  | InsufficientBalance
  | RateLimited
  | ServerError
  | UnexpectedStatus
  | TransportError
  | MalformedResponse
  | DeadlineExceeded
  | StreamTruncated
  | InsufficientResource
  | UpstreamError
  | NoUsableKey
  | NoAccountAvailable

/**
 * What the caller already received when the call failed (empty for errors before any content),
 * for any error a call fails with: an `ApiError`, or a refusal (`Resilient.ResilientError`), which
 * carries none.
 *
 * @since 0.1.0
 */
export const partialOf = (error: ApiError | { readonly _tag: string }): PartialOutput =>
  ("partial" in error ? (error as { readonly partial?: PartialOutput | undefined }).partial : undefined) ?? emptyPartial

/**
 * Whether output had reached the caller when the call failed: content events, or a 200 body cut
 * before its JSON ended. The server billed such an attempt, though its usage may never arrive.
 *
 * @since 0.1.0
 */
export const deliveredOutput = (error: ApiError | { readonly _tag: string }): boolean =>
  partialOf(error).events > 0 || (error._tag === "MalformedResponse" && "reason" in error && error.reason === "cut")

const secretPattern = /\b(sk|pk|key)-[A-Za-z0-9_\-*]{4,}/g

/**
 * Removes anything shaped like an API key (`sk-…`) from text that came from a server, so a key
 * echoed in an error message never reaches a log or a span.
 *
 * @since 0.1.0
 */
export const scrubSecrets = (text: string): string => text.replace(secretPattern, "$1-***")

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/**
 * The upstream is shedding load: over a concurrency cap (429), overloaded (503), or it cut the
 * work for lack of resources. Retried no sooner than `retryAfter`; an adaptive limiter lowers its
 * limit.
 *
 * @since 0.1.0
 * @category verdicts
 */
export interface LoadShed {
  readonly _tag: "LoadShed"
  readonly retryAfter: Option.Option<Duration.Duration>
  /**
   * `cap`: over a concurrency cap (429): a precise signal of where the cap is. `overload`: the
   * server as a whole is overloaded (503, cut for lack of resources): it may come at any level,
   * so an adaptive limit steps down only when it dominates (`AdaptiveOptions.overloadShare`).
   */
  readonly signal: "cap" | "overload"
}

/**
 * The upstream (or the way to it) is failing: retried, and counted by a circuit breaker.
 *
 * @since 0.1.0
 * @category verdicts
 */
export interface Outage {
  readonly _tag: "Outage"
  readonly retryAfter: Option.Option<Duration.Duration>
  /**
   * The request never left: no connection to the upstream could be opened (refused, a name that
   * does not resolve, no route). An account pool moves the attempt to another account at once.
   */
  readonly unsent?: true
}

/**
 * The account cannot serve (a rejected key, no balance, no permission): not retried; an account
 * pool fails over to another account.
 *
 * @since 0.1.0
 * @category verdicts
 */
export interface Account {
  readonly _tag: "Account"
}

/**
 * The request itself is wrong (or the reply has a shape no retry will change): final.
 *
 * @since 0.1.0
 * @category verdicts
 */
export interface Caller {
  readonly _tag: "Caller"
}

/**
 * One of our own gates refused before anything was sent. Retried only when `retryable`, no
 * sooner than `retryAfter`; never counted as the upstream's doing.
 *
 * @since 0.1.0
 * @category verdicts
 */
export interface Refused {
  readonly _tag: "Refused"
  readonly retryable: boolean
  readonly retryAfter: Option.Option<Duration.Duration>
}

/**
 * What an error means to the policies.
 *
 * @since 0.1.0
 * @category verdicts
 */
export type Verdict = LoadShed | Outage | Account | Caller | Refused

/**
 * Reads an error as a `Verdict`. It must be total: an error it does not know still gets a
 * verdict (the safe one is `outage()`).
 *
 * @since 0.1.0
 * @category verdicts
 */
export type Classifier = (error: unknown) => Verdict

/**
 * @since 0.1.0
 * @category verdicts
 */
export const loadShed = (
  retryAfter: Option.Option<Duration.Duration> = Option.none(),
  signal: LoadShed["signal"] = "cap"
): Verdict => ({ _tag: "LoadShed", retryAfter, signal })

/**
 * @since 0.1.0
 * @category verdicts
 */
export const outage = (retryAfter: Option.Option<Duration.Duration> = Option.none()): Verdict => ({
  _tag: "Outage",
  retryAfter
})

/**
 * @since 0.1.0
 * @category verdicts
 */
export const unsentOutage: Verdict = { _tag: "Outage", retryAfter: Option.none(), unsent: true }

/**
 * @since 0.1.0
 * @category verdicts
 */
export const account: Verdict = { _tag: "Account" }

/**
 * @since 0.1.0
 * @category verdicts
 */
export const caller: Verdict = { _tag: "Caller" }

/**
 * @since 0.1.0
 * @category verdicts
 */
export const refused = (
  retryable: boolean,
  retryAfter: Option.Option<Duration.Duration> = Option.none()
): Verdict => ({ _tag: "Refused", retryable, retryAfter })

/**
 * Whether a retry may help: load shed and outages, and refusals that say so.
 *
 * @since 0.1.0
 * @category verdicts
 */
export const isRetryable = (verdict: Verdict): boolean => {
  switch (verdict._tag) {
    case "LoadShed":
    case "Outage":
      return true
    case "Refused":
      return verdict.retryable
    case "Account":
    case "Caller":
      return false
  }
}

/**
 * The wait the verdict asks for before a retry (zero when none).
 *
 * @since 0.1.0
 * @category verdicts
 */
export const retryAfterOf = (verdict: Verdict): Duration.Duration =>
  "retryAfter" in verdict ? Option.getOrElse(verdict.retryAfter, () => Duration.zero) : Duration.zero

/**
 * The verdict of an HTTP status: 429 (over a cap) and 503 (overloaded) are load shed, other 5xx, 408 and 409 outages,
 * 401-403 account problems, any other status the caller's.
 *
 * @since 0.1.0
 * @category verdicts
 */
export const classifyStatus = (
  status: number,
  retryAfter: Option.Option<Duration.Duration> = Option.none()
): Verdict =>
  status === 429
    ? loadShed(retryAfter, "cap")
    : status === 503
    ? loadShed(retryAfter, "overload")
    : status >= 500 || status === 408 || status === 409
    ? outage(retryAfter)
    : status >= 401 && status <= 403
    ? account
    : caller

/**
 * Every error this package defines, by tag: each one's verdict. Typed as a total record, so an
 * error added to the package without a reading here does not compile.
 */
const closedWhileQueued = loadShed(Option.none(), "overload")

const sdkVerdicts: { readonly [Tag in SdkError["_tag"]]: (error: Extract<SdkError, { _tag: Tag }>) => Verdict } = {
  InvalidRequest: () => caller,
  KeyRejected: () => account,
  InsufficientBalance: () => account,
  NoUsableKey: () => account,
  RateLimited: (error) => loadShed(error.retryAfter),
  InsufficientResource: () => loadShed(Option.none(), "overload"),
  ServerError: (error) => classifyStatus(error.status, error.retryAfter),
  UnexpectedStatus: (error) => error.endpointMissing === true ? account : classifyStatus(error.status),
  // An untrusted certificate (a TLS-inspecting proxy's, say) is this machine's setting, not an
  // outage: waiting for the server to come back would wait for good. Closed after the 200 and its
  // keep-alives, before any content, cleanly or by a reset: DeepSeek closes a request it could not
  // schedule in time. The server is shedding load, not failing.
  TransportError: (error) =>
    isUntrustedCertificate(error.cause)
      ? account
      : error.reason === "connect"
      ? unsentOutage
      : error.reason === "body" && error.partial.events === 0
      ? closedWhileQueued
      : outage(),
  DeadlineExceeded: () => outage(),
  StreamTruncated: (error) => error.partial.events === 0 ? closedWhileQueued : outage(),
  UpstreamError: () => outage(),
  MalformedResponse: (error) =>
    error.reason === "schema" ? caller : error.reason === "blank" ? closedWhileQueued : outage(),
  NoAccountAvailable: (error) => refused(false, error.retryAfter),
  QueueFull: () => refused(false),
  CircuitOpen: (error) => refused(error.reason !== "isolated", error.retryAfter),
  RateLimitExceeded: (error) => refused(Option.isSome(error.retryAfter), error.retryAfter),
  BudgetExceeded: () => refused(false),
  RoutingRefused: () => caller
}

/**
 * The errors of this package: the upstream's (`ApiError`) and the refusals of its own gates.
 *
 * @since 0.1.0
 */
export type SdkError = ApiError | QueueFull | CircuitOpen | RateLimitExceeded | BudgetExceeded | RoutingRefused

/**
 * An error's `_tag`, when it has one.
 *
 * @since 0.1.0
 */
export const tagOf = (error: unknown): string | undefined =>
  typeof error === "object" && error !== null && "_tag" in error && typeof error._tag === "string"
    ? error._tag
    : undefined

/**
 * The verdict of an `@effect/platform` `HttpClientError`: a response's status (with its
 * `retry-after-ms` or `Retry-After`, a date read against the response's own `Date` header) as
 * `classifyStatus` reads it; a request that never got a response, or a body that failed
 * mid-read, is an outage; a request that could not be built is the caller's.
 *
 * @since 0.1.0
 * @category verdicts
 */
export const classifyHttpClientError = (error: HttpClientError.HttpClientError): Verdict => {
  if (error._tag === "RequestError") {
    // A `Policy` wrapping an `HttpClient` reports its own refusals as transport errors.
    return error.reason === "Transport" ? sdkVerdictOf(error.cause) ?? outage() : caller
  }
  if (error.reason !== "StatusCode") return outage()
  // No clock here: a date without the response's own `Date` is ignored.
  return classifyStatus(error.response.status, retryAfterFromHeaders(error.response.headers, Number.NaN))
}

/**
 * The verdict of one of this package's errors; `undefined` for any other value, a user's own
 * error of the same tag included (its fields need not be ours).
 */
const sdkVerdictOf = (error: unknown): Verdict | undefined => {
  const tag = isSdkError(error) ? tagOf(error) : undefined
  return tag !== undefined && Object.hasOwn(sdkVerdicts, tag)
    ? (sdkVerdicts as Record<string, (error: unknown) => Verdict>)[tag]!(error)
    : undefined
}

/**
 * The default classifier: this package's errors by the table in the module doc,
 * `HttpClientError`s by `classifyHttpClientError`, and any other error as an outage (retried and
 * counted by a breaker, never read as a success or as load).
 *
 * @since 0.1.0
 * @category verdicts
 */
export const classify: Classifier = (error) =>
  HttpClientError.isHttpClientError(error) ? classifyHttpClientError(error) : sdkVerdictOf(error) ?? outage()

/**
 * A classifier that reads errors with `custom` first and falls back to `classify` where it
 * answers `undefined`: the way to teach the policies an error type of your own.
 *
 * @example
 * ```ts
 * import { Data } from "effect"
 * import { ApiError } from "weatherproof"
 *
 * class DbBusy extends Data.TaggedError("DbBusy")<{}> {}
 * class DbRejected extends Data.TaggedError("DbRejected")<{}> {}
 *
 * const classify = ApiError.classifyWith((error) =>
 *   error instanceof DbBusy ? ApiError.loadShed() : error instanceof DbRejected ? ApiError.caller : undefined
 * )
 * ```
 *
 * @since 0.1.0
 * @category verdicts
 */
export const classifyWith = (custom: (error: unknown) => Verdict | undefined): Classifier => (error) =>
  custom(error) ?? classify(error)
