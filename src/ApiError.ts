/**
 * The error taxonomy of a call to an OpenAI-compatible chat API.
 *
 * Every error is a tagged class (so `Effect.catchTag` works), carries what a caller acts on
 * (status, `retryAfter`, the partial output and usage received so far) and says whether a retry
 * can help through `retryable`. Messages that come from the server are scrubbed of anything that
 * looks like an API key before they are stored here.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"
import type { FinishReason, Usage } from "./ChatSchema.js"

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
  readonly events: number
}

/** A `PartialOutput` with nothing received. @since 0.1.0 */
export const emptyPartial: PartialOutput = {
  content: "",
  reasoningContent: "",
  usage: undefined,
  finishReason: undefined,
  events: 0
}

/** 400 or 422: the request itself is wrong; fix it, do not retry. @since 0.1.0 */
export class InvalidRequest extends Data.TaggedError("InvalidRequest")<{
  readonly status: number
  readonly message: string
  readonly param?: string | undefined
  readonly code?: string | undefined
}> {
  /** @since 0.1.0 */
  readonly retryable = false
}

/** 401: the key was rejected. The key itself is never stored. @since 0.1.0 */
export class KeyRejected extends Data.TaggedError("KeyRejected")<{
  readonly message: string
  /** A non-secret label of the key, e.g. `key#2`. */
  readonly keyId: string
}> {
  /** @since 0.1.0 */
  readonly status = 401
  /** @since 0.1.0 */
  readonly retryable = false
}

/** 402: the account is out of balance; every key of the account is affected. @since 0.1.0 */
export class InsufficientBalance extends Data.TaggedError("InsufficientBalance")<{
  readonly message: string
}> {
  /** @since 0.1.0 */
  readonly status = 402
  /** @since 0.1.0 */
  readonly retryable = false
}

/** 429: over the account's concurrency limit. @since 0.1.0 */
export class RateLimited extends Data.TaggedError("RateLimited")<{
  readonly message: string
  /** From `retry-after-ms` or `Retry-After` when the server sent one. */
  readonly retryAfter: Option.Option<Duration.Duration>
}> {
  /** @since 0.1.0 */
  readonly status = 429
  /** @since 0.1.0 */
  readonly retryable = true
}

/** 500, 503 or another 5xx: the server failed or is overloaded; retry after a wait. @since 0.1.0 */
export class ServerError extends Data.TaggedError("ServerError")<{
  readonly status: number
  readonly message: string
  readonly retryAfter: Option.Option<Duration.Duration>
}> {
  /** @since 0.1.0 */
  readonly retryable = true
}

/** Any other status (404, 408, 409 …). Retryable only for 408 and 409. @since 0.1.0 */
export class UnexpectedStatus extends Data.TaggedError("UnexpectedStatus")<{
  readonly status: number
  readonly message: string
}> {
  /** @since 0.1.0 */
  get retryable(): boolean {
    return this.status === 408 || this.status === 409
  }
}

/**
 * The connection failed: refused, reset, closed while the request was in flight or while the
 * body was read. A stale pooled connection is retried silently by the transport first.
 *
 * @since 0.1.0
 */
export class TransportError extends Data.TaggedError("TransportError")<{
  readonly reason: "connect" | "request" | "body"
  readonly message: string
  readonly partial: PartialOutput
  readonly cause?: unknown
}> {
  /** @since 0.1.0 */
  readonly retryable = true
}

/**
 * A 200 whose body is not a usable completion: blank (only keep-alive whitespace), cut before
 * the JSON ended, or JSON of the wrong shape. The first two are retryable; a shape mismatch is
 * not (a retry returns the same shape).
 *
 * @since 0.1.0
 */
export class MalformedResponse extends Data.TaggedError("MalformedResponse")<{
  readonly reason: "blank" | "cut" | "schema"
  readonly message: string
}> {
  /** @since 0.1.0 */
  get retryable(): boolean {
    return this.reason !== "schema"
  }
}

/**
 * A deadline passed, measured by Effect's `Clock`:
 * - `first_content`: no content event since the request was sent (keep-alive bytes do not
 *   count; DeepSeek closes unscheduled requests after about 10 minutes);
 * - `idle`: too long between two content events (a stalled stream);
 * - `total`: the whole call took too long.
 *
 * @since 0.1.0
 */
export class DeadlineExceeded extends Data.TaggedError("DeadlineExceeded")<{
  readonly reason: "first_content" | "idle" | "total"
  readonly after: Duration.Duration
  readonly partial: PartialOutput
}> {
  /** @since 0.1.0 */
  readonly retryable = true
  /** @since 0.1.0 */
  override get message(): string {
    return `deadline ${this.reason} exceeded after ${this.after.toString()}`
  }
}

/** A stream that ended without `data: [DONE]`. Carries what arrived. @since 0.1.0 */
export class StreamTruncated extends Data.TaggedError("StreamTruncated")<{
  readonly partial: PartialOutput
}> {
  /** @since 0.1.0 */
  readonly retryable = true
  /** @since 0.1.0 */
  override get message(): string {
    return `stream ended without [DONE] after ${this.partial.events} events`
  }
}

/** `finish_reason: insufficient_system_resource`: DeepSeek cut the work short. @since 0.1.0 */
export class InsufficientResource extends Data.TaggedError("InsufficientResource")<{
  readonly partial: PartialOutput
}> {
  /** @since 0.1.0 */
  readonly retryable = true
  /** @since 0.1.0 */
  override get message(): string {
    return "inference was cut: insufficient_system_resource"
  }
}

/** An `{"error": …}` event inside a stream or a 200 body. @since 0.1.0 */
export class UpstreamError extends Data.TaggedError("UpstreamError")<{
  readonly message: string
  readonly type?: string | undefined
  readonly code?: string | undefined
  readonly partial: PartialOutput
}> {
  /** @since 0.1.0 */
  readonly retryable = true
}

/** Every key was rejected (401), so no call can be made. @since 0.1.0 */
export class NoUsableKey extends Data.TaggedError("NoUsableKey")<{
  readonly rejected: number
}> {
  /** @since 0.1.0 */
  readonly retryable = false
  /** @since 0.1.0 */
  override get message(): string {
    return `no usable API key: ${this.rejected} rejected`
  }
}

/**
 * Why one account of an `AccountPool` could not serve a call:
 * - `circuit_open`: its circuit breaker is open (or isolated);
 * - `out_of_balance`: it answered 402; it is back once a balance probe says so, or after a
 *   cooldown when it cannot be probed;
 * - `no_keys`: every key of it was rejected (401); keys are usable again after their cooldown;
 * - `busy`: it refused this call for now (its wait queue is full, or canaries are testing it).
 *
 * @since 0.1.0
 * @category models
 */
export interface AccountUnavailable {
  readonly account: string
  readonly reason: "circuit_open" | "out_of_balance" | "no_keys" | "busy"
  /** Epoch millis (Effect `Clock`) when it may serve again; `Infinity` when unknown (an isolated breaker). */
  readonly until: number
}

/**
 * No account of an `AccountPool` can serve the call. `retryAfter` is the time until the first
 * of them may serve again (none when no time is known), so a retry waits for it.
 *
 * When the pool's cost budget is spent, `budgetExceeded` holds what `CostLedger.BudgetExceeded`
 * would (the pool is a `Transport`, whose errors are `ApiError`s); then no account may serve
 * whatever the time, and the error is not retryable.
 *
 * @since 0.1.0
 */
export class NoAccountAvailable extends Data.TaggedError("NoAccountAvailable")<{
  readonly retryAfter: Option.Option<Duration.Duration>
  readonly accounts: ReadonlyArray<AccountUnavailable>
  readonly budgetExceeded?: { readonly spentUsd: number; readonly budgetUsd: number } | undefined
}> {
  /** @since 0.1.0 */
  get retryable(): boolean {
    return this.budgetExceeded === undefined
  }
  /** @since 0.1.0 */
  override get message(): string {
    if (this.budgetExceeded !== undefined) {
      const { budgetUsd, spentUsd } = this.budgetExceeded
      return `no account may serve: budget exceeded: spent $${spentUsd} of $${budgetUsd}`
    }
    const reasons = this.accounts.map((a) => `${a.account}: ${a.reason}`).join(", ")
    const wait = Option.match(this.retryAfter, {
      onNone: () => "",
      onSome: (d) => `; the first may serve again in ${Duration.format(d)}`
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
 * What the caller already received when the call failed (empty for errors before any content).
 *
 * @since 0.1.0
 */
export const partialOf = (error: ApiError): PartialOutput =>
  "partial" in error ? error.partial : emptyPartial

const secretPattern = /\b(sk|pk|key)-[A-Za-z0-9_\-*]{4,}/g

/**
 * Removes anything shaped like an API key (`sk-…`) from text that came from a server, so a key
 * echoed in an error message never reaches a log or a span.
 *
 * @since 0.1.0
 */
export const scrubSecrets = (text: string): string => text.replace(secretPattern, "$1-***")
