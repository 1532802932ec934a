import * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { describe, expect, it } from "@effect/vitest"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as TestClock from "effect/TestClock"
import * as ApiError from "../src/ApiError.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as ConcurrencyLimiter from "../src/ConcurrencyLimiter.js"
import * as CostLedger from "../src/CostLedger.js"
import * as Policy from "../src/Policy.js"
import type * as Resilient from "../src/Resilient.js"
import * as RetryBudget from "../src/RetryBudget.js"
import * as RetryPolicy from "../src/RetryPolicy.js"
import * as Router from "../src/Router.js"
import * as TokenBucket from "../src/TokenBucket.js"

const none = Option.none<Duration.Duration>()
const seconds = (n: number) => Option.some(Duration.seconds(n))

const request = HttpClientRequest.get("http://127.0.0.1/x")
const responseOf = (status: number, headers: Record<string, string> = {}) =>
  HttpClientResponse.fromWeb(request, new Response(null, { status, headers }))
const statusError = (status: number, headers: Record<string, string> = {}) =>
  new HttpClientError.ResponseError({ request, response: responseOf(status, headers), reason: "StatusCode" })

class UserBusy extends Data.TaggedError("UserBusy")<{}> {}
class UserRejected extends Data.TaggedError("UserRejected")<{}> {}
/** A user's own errors that share a tag with this package's, with other fields (or none). */
class UserServerError extends Data.TaggedError("ServerError")<{ readonly detail: string }> {}
class UserRateLimitExceeded extends Data.TaggedError("RateLimitExceeded")<{}> {}

/** Every error shape the policies meet, with the verdict `ApiError.classify` must give it. */
const table: ReadonlyArray<readonly [name: string, error: unknown, verdict: ApiError.Verdict]> = [
  ["429", new ApiError.RateLimited({ message: "busy", retryAfter: seconds(2) }), ApiError.loadShed(seconds(2))],
  ["503", new ApiError.ServerError({ status: 503, message: "overloaded", retryAfter: none }), ApiError.loadShed(none, "overload")],
  ["insufficient_system_resource", new ApiError.InsufficientResource({ partial: ApiError.emptyPartial }), ApiError.loadShed(none, "overload")],
  ["500", new ApiError.ServerError({ status: 500, message: "boom", retryAfter: seconds(1) }), ApiError.outage(seconds(1))],
  ["502", new ApiError.ServerError({ status: 502, message: "gateway", retryAfter: none }), ApiError.outage()],
  ["408", new ApiError.UnexpectedStatus({ status: 408, message: "timeout" }), ApiError.outage()],
  [
    "a connection that could not open: an outage the request never left for",
    new ApiError.TransportError({ reason: "connect", message: "refused", partial: ApiError.emptyPartial }),
    ApiError.unsentOutage
  ],
  ["a request that failed on the wire", new ApiError.TransportError({ reason: "request", message: "reset", partial: ApiError.emptyPartial }), ApiError.outage()],
  [
    "a server certificate this machine does not trust (fetch's error wrapping Node's)",
    new ApiError.TransportError({
      reason: "connect",
      message: "self-signed certificate",
      partial: ApiError.emptyPartial,
      cause: new Error("fetch failed", { cause: Object.assign(new Error("self-signed certificate"), { code: "DEPTH_ZERO_SELF_SIGNED_CERT" }) })
    }),
    ApiError.account
  ],
  [
    "closed while queued, before any content",
    new ApiError.TransportError({ reason: "body", message: "closed", partial: ApiError.emptyPartial }),
    ApiError.loadShed(none, "overload")
  ],
  [
    "closed after some content",
    new ApiError.TransportError({ reason: "body", message: "closed", partial: { ...ApiError.emptyPartial, events: 3 } }),
    ApiError.outage()
  ],
  ["deadline", new ApiError.DeadlineExceeded({ reason: "first_content", after: Duration.minutes(10), partial: ApiError.emptyPartial }), ApiError.outage()],
  ["truncated before any content: closed while queued", new ApiError.StreamTruncated({ partial: ApiError.emptyPartial }), ApiError.loadShed(none, "overload")],
  ["truncated after content", new ApiError.StreamTruncated({ partial: { ...ApiError.emptyPartial, events: 2 } }), ApiError.outage()],
  ["error event", new ApiError.UpstreamError({ message: "x", partial: ApiError.emptyPartial }), ApiError.outage()],
  ["blank 200: closed while queued", new ApiError.MalformedResponse({ reason: "blank", message: "blank" }), ApiError.loadShed(none, "overload")],
  ["cut 200", new ApiError.MalformedResponse({ reason: "cut", message: "cut" }), ApiError.outage()],
  ["wrong shape", new ApiError.MalformedResponse({ reason: "schema", message: "shape" }), ApiError.caller],
  ["400", new ApiError.InvalidRequest({ status: 400, message: "bad" }), ApiError.caller],
  ["422", new ApiError.InvalidRequest({ status: 422, message: "bad" }), ApiError.caller],
  ["404", new ApiError.UnexpectedStatus({ status: 404, message: "missing" }), ApiError.caller],
  ["404, no chat endpoint", new ApiError.UnexpectedStatus({ status: 404, message: "page", endpointMissing: true }), ApiError.account],
  ["routing", new Router.RoutingRefused({ task: "classification", model: "m", reason: "thinking-enabled" }), ApiError.caller],
  ["401", new ApiError.KeyRejected({ message: "no", keyId: "key#1" }), ApiError.account],
  ["no key", new ApiError.NoUsableKey({ rejected: 2, retryAfter: Option.none() }), ApiError.account],
  ["402", new ApiError.InsufficientBalance({ message: "pay" }), ApiError.account],
  ["queue full", new ConcurrencyLimiter.QueueFull({ queued: 9 }), ApiError.refused(false)],
  [
    "circuit open",
    new CircuitBreaker.CircuitOpen({ reason: "open", until: 1, retryAfter: seconds(5), trips: 1 }),
    ApiError.refused(true, seconds(5))
  ],
  ["circuit half-open", new CircuitBreaker.CircuitOpen({ reason: "half_open", until: 1, retryAfter: none, trips: 1 }), ApiError.refused(true)],
  [
    "circuit isolated",
    new CircuitBreaker.CircuitOpen({ reason: "isolated", until: Infinity, retryAfter: none, trips: 0 }),
    ApiError.refused(false)
  ],
  ["bucket, room later", new TokenBucket.RateLimitExceeded({ dimension: "tokens", retryAfter: seconds(1) }), ApiError.refused(true, seconds(1))],
  ["bucket, never fits", new TokenBucket.RateLimitExceeded({ dimension: "tokens", retryAfter: none }), ApiError.refused(false)],
  ["budget", new CostLedger.BudgetExceeded({ spentUsd: 2, budgetUsd: 1 }), ApiError.refused(false)],
  ["no account (the pool waited as long as the call allows)", new ApiError.NoAccountAvailable({ retryAfter: seconds(3), accounts: [] }), ApiError.refused(false, seconds(3))],
  ["HTTP 429 Retry-After seconds", statusError(429, { "retry-after": "7" }), ApiError.loadShed(seconds(7))],
  ["HTTP 503 retry-after-ms", statusError(503, { "retry-after-ms": "250" }), ApiError.loadShed(Option.some(Duration.millis(250)), "overload")],
  [
    "HTTP 429 Retry-After date, read against the response's Date",
    statusError(429, { "retry-after": "Thu, 01 Jan 2026 00:00:30 GMT", date: "Thu, 01 Jan 2026 00:00:00 GMT" }),
    ApiError.loadShed(seconds(30))
  ],
  ["HTTP 500", statusError(500), ApiError.outage()],
  ["HTTP 401", statusError(401), ApiError.account],
  ["HTTP 403", statusError(403), ApiError.account],
  ["HTTP 400", statusError(400), ApiError.caller],
  ["HTTP decode", new HttpClientError.ResponseError({ request, response: responseOf(200), reason: "Decode" }), ApiError.outage()],
  ["HTTP transport", new HttpClientError.RequestError({ request, reason: "Transport", cause: new Error("reset") }), ApiError.outage()],
  ["HTTP bad URL", new HttpClientError.RequestError({ request, reason: "InvalidUrl" }), ApiError.caller],
  [
    "HTTP refused by a policy",
    new HttpClientError.RequestError({ request, reason: "Transport", cause: new ConcurrencyLimiter.QueueFull({ queued: 1 }) }),
    ApiError.refused(false)
  ],
  ["a user's tagged error", new UserBusy(), ApiError.outage()],
  ["a user's error tagged as one of ours (a caller's verdict by our table)", new UserServerError({ detail: "db" }), ApiError.outage()],
  ["a user's error tagged as one of ours, without our fields", new UserRateLimitExceeded(), ApiError.outage()],
  ["a plain object tagged as one of ours", { _tag: "InvalidRequest", status: 400 }, ApiError.outage()],
  ["a plain Error", new Error("?"), ApiError.outage()],
  ["a string", "RateLimited", ApiError.outage()],
  ["a tag that is an Object method name", { _tag: "constructor" }, ApiError.outage()],
  ["null", null, ApiError.outage()]
]

describe("ApiError.classify", () => {
  it("gives every error shape its verdict", () => {
    for (const [name, error, verdict] of table) expect(ApiError.classify(error), name).toEqual(verdict)
  })

  it("classifyWith reads an error of your own first and falls back to classify", () => {
    const classify = ApiError.classifyWith((error) =>
      error instanceof UserBusy ? ApiError.loadShed() : error instanceof UserRejected ? ApiError.caller : undefined
    )
    expect(classify(new UserBusy())).toEqual(ApiError.loadShed())
    expect(classify(new UserRejected())).toEqual(ApiError.caller)
    expect(classify(statusError(429))).toEqual(ApiError.loadShed())
    expect(classify(new Error("?"))).toEqual(ApiError.outage())
  })

  it("isRetryable and retryAfterOf read the verdict", () => {
    expect(table.filter(([, , v]) => ApiError.isRetryable(v)).map(([name]) => name)).not.toContain("400")
    expect(ApiError.isRetryable(ApiError.refused(true))).toBe(true)
    expect(ApiError.retryAfterOf(ApiError.loadShed(seconds(4)))).toEqual(Duration.seconds(4))
    expect(ApiError.retryAfterOf(ApiError.caller)).toEqual(Duration.zero)
  })
})

describe("StreamTruncated", () => {
  it("says how many events came before the cut, one as one", () => {
    const after = (events: number) => new ApiError.StreamTruncated({ partial: { ...ApiError.emptyPartial, events } }).message
    expect([after(1), after(2)]).toEqual(["stream ended without [DONE] after 1 event", "stream ended without [DONE] after 2 events"])
  })
})

describe("NoAccountAvailable", () => {
  it("tells when the first account may serve again, unless it may already (one busy: `--max-wait 0s`)", () => {
    const busy = { account: "a", reason: "busy", until: 0 } as const
    const reason = "no account can serve (a: busy, at its limit, or failed already for this call)"
    // Before: "…; the first may serve again in 0".
    expect(new ApiError.NoAccountAvailable({ retryAfter: Option.some(Duration.zero), accounts: [busy] }).message).toBe(reason)
    expect(new ApiError.NoAccountAvailable({ retryAfter: Option.some(Duration.seconds(90)), accounts: [busy] }).message).toBe(
      `${reason}; it may serve again in 1m 30s`
    )
    // In whole seconds, rounded up: a rest's end read a few milliseconds into it.
    expect(new ApiError.NoAccountAvailable({ retryAfter: Option.some(Duration.millis(899_997)), accounts: [busy] }).message).toBe(
      `${reason}; it may serve again in 15m`
    )
    const other = { account: "b", reason: "no_keys", until: 0 } as const
    expect(new ApiError.NoAccountAvailable({ retryAfter: Option.some(Duration.millis(12)), accounts: [busy, other] }).message).toBe(
      "no account can serve (a: busy, at its limit, or failed already for this call; b: no_keys, every key rejected by the upstream (401)); " +
        "one of them may serve again in 1s"
    )
  })
})

/** What one failure did to each part of one composed policy. */
interface Observed {
  readonly retried: boolean
  /** Retries the budget was charged for. */
  readonly budgetRetries: number
  /** Of those, refunded because they succeeded. */
  readonly budgetRefunds: number
  readonly dropped: number
  readonly breaker: "failure" | "success" | "ignored"
}

type CountLoadShed = NonNullable<CircuitBreaker.Options["countLoadShed"]>

/** What each part must do with an error of `verdict`, by the module docs. */
const expected = (verdict: ApiError.Verdict, countLoadShed: CountLoadShed): Observed => {
  const retried = ApiError.isRetryable(verdict)
  const countsLoadShed = verdict._tag === "LoadShed" &&
    (countLoadShed === true || (countLoadShed === "overload" && verdict.signal === "overload"))
  const breaker = verdict._tag === "Outage" || countsLoadShed
    ? "failure"
    : verdict._tag === "Refused" || verdict._tag === "LoadShed"
    ? "ignored"
    : "success"
  // A cap's 429 is paced by the limiter, not charged to the budget (`Policy.Parts.capRetriesPaced`),
  // nor a refusal of the policy's own gates, which reached no upstream.
  const charged = retried && verdict._tag !== "Refused" && !(verdict._tag === "LoadShed" && verdict.signal === "cap")
  // The retry succeeds: what it was charged is refunded.
  const budgetRetries = charged ? 1 : 0
  return { retried, budgetRetries, budgetRefunds: budgetRetries, dropped: verdict._tag === "LoadShed" ? 1 : 0, breaker }
}

let limiterNames = 0

/**
 * Runs one call that fails once with `error`, then succeeds, through one policy whose parts are
 * all observable, and reads what each part did.
 */
const observe = (error: unknown, countLoadShed: CountLoadShed) =>
  Effect.scoped(Effect.gen(function*() {
    const name = `agree-${++limiterNames}`
    const budget = yield* RetryBudget.make({ minRetriesPerSecond: 10, window: "1 day" })
    const limiter = yield* ConcurrencyLimiter.makeAdaptive({ name })
    // Windows longer than the test and a huge minimum: the parts only count, the breaker never trips.
    const breaker = yield* CircuitBreaker.make({ countLoadShed, minimumThroughput: 1_000, window: "1 day" })
    const policy = yield* Policy.fromParts({
      retry: RetryPolicy.make({ base: "1 millis", cap: "1 millis", maxRetries: 1, maxRetryAfter: "1 hour" }),
      budget,
      limiter,
      breaker,
      // The adaptive limiter backs off on a cap's 429s: their retries it paces, not the budget.
      capRetriesPaced: true
    })
    const attempts = yield* Ref.make(0)
    const call = Effect.flatMap(Ref.getAndUpdate(attempts, (n) => n + 1), (n) => n === 0 ? Effect.fail(error) : Effect.void)
    const fiber = yield* Effect.fork(Effect.either(policy.apply(call)))
    yield* TestClock.adjust("2 hours")
    yield* Fiber.join(fiber)
    const { calls, failures } = yield* breaker.snapshot
    const attemptsMade = yield* Ref.get(attempts)
    const { refunded, retries } = yield* budget.snapshot
    // The second attempt, when there is one, succeeded and counts as a breaker success too.
    const firstCounted = calls - (attemptsMade - 1)
    return {
      retried: attemptsMade === 2,
      budgetRetries: retries + refunded,
      budgetRefunds: refunded,
      dropped: (yield* Metric.value(Metric.tagged(ConcurrencyLimiter.droppedCounter, "limiter", name))).count,
      breaker: failures > 0 ? "failure" : firstCounted === 1 ? "success" : "ignored"
    } satisfies Observed
  }))

describe("one classification, every policy", () => {
  const anyError = FastCheck.constantFrom(...table.map(([, error]) => error))
  it.effect.prop(
    "retry, budget, limiter and breaker agree on every error shape through the shared classifier",
    { error: anyError, countLoadShed: FastCheck.constantFrom<CountLoadShed>(true, false, "overload") },
    ({ countLoadShed, error }) =>
      Effect.gen(function*() {
        const observed = yield* observe(error, countLoadShed)
        expect(observed, String(error)).toEqual(expected(ApiError.classify(error), countLoadShed))
      }),
    { fastCheck: { numRuns: 120 } }
  )
})

describe("partialOf and deliveredOutput", () => {
  it("read any error a resilient call fails with: a refusal carries no output", () => {
    const partial = { ...ApiError.emptyPartial, content: "Hel", events: 2 }
    const errors: ReadonlyArray<Resilient.ResilientError> = [
      new ApiError.StreamTruncated({ partial }),
      new ConcurrencyLimiter.QueueFull({ queued: 3 }),
      new CostLedger.BudgetExceeded({ spentUsd: 2, budgetUsd: 1 })
    ]
    expect(errors.map(ApiError.partialOf)).toEqual([partial, ApiError.emptyPartial, ApiError.emptyPartial])
    expect(errors.map(ApiError.deliveredOutput)).toEqual([true, false, false])
  })
})
