/**
 * Several accounts (and providers) behind one client. DeepSeek limits concurrency per
 * **account**, whichever key is used, so more keys of one account buy nothing; more accounts, or
 * a second provider, add capacity and survive an outage of one.
 *
 * ## Architecture, outermost first
 *
 * 1. The outer `Resilient`: retry with its budget and the token bucket. Its concurrency limiter
 *    is `ConcurrencyLimiter.layerUnbounded` and its breaker `CircuitBreaker.layerNoop`: both live
 *    per account.
 * 2. **The pool**, a `Transport`: each attempt of the outer pipeline selects an account, fails
 *    over to another on account-level errors, and records its cost in the `CostLedger`.
 * 3. Per account, an inner `Resilient` over the account's own `Transport` (its `baseUrl`, a
 *    `KeyPool` of its keys, the shared `HttpClient`), its own limiter (adaptive, unless the
 *    account fixes its `concurrency`) and its own breaker (both named after the account, which
 *    labels their metrics), without retries, retry budget or rate limit: each inner call is
 *    exactly one gated attempt.
 *
 * ## Selection
 *
 * An account can serve when its breaker is not open or isolated (half-open is fine: the breaker
 * admits its canaries and holds the others), it is not out of balance, and it has a usable key.
 * Among the primary (non-fallback) accounts that can, the **least loaded** serves: the lowest
 * share of its limit in use (attempts routed to it and not finished, queued ones included, over
 * its limiter's current limit); ties go to the account with the fewest calls so far, then to
 * the first in configuration order. Fallback accounts serve only when no primary can, and calls
 * waiting for a fallback's permit give their place up as soon as a primary may serve again (its
 * breaker half-opens or closes, its balance is back, or a rested key returns): they are selected
 * again, among every account but that fallback (a failover counted as `QueueFull`), so the
 * backlog of an outage returns to the primaries while the calls the fallback already serves
 * finish there.
 * When no account can, the attempt fails with `NoAccountAvailable`, whose `retryAfter` is the earliest
 * time one may serve again (its breaker's `until`, its next balance probe, its keys' cooldown),
 * so the outer retry waits for it, or gives up when that is beyond its `maxRetryAfter`.
 *
 * `ExecutionPlan` (effect) was considered for primary → fallback: its steps are tried in a fixed
 * order, each on errors of the previous one, whereas here the tier is chosen by the accounts'
 * state before anything is sent (a fallback never serves while a primary can, even one that
 * has not failed yet), the account within a tier by load, and an exhausted pool must answer
 * with the earliest recovery time. A plan cannot express those, so selection is explicit.
 *
 * ## Failover and recovery
 *
 * Errors that say "this account cannot serve" fail over at once to another account, within the
 * same attempt (each account is tried at most once), and do not count as a retry:
 * - `KeyRejected` / `NoUsableKey`: no key of the account is left (a 401 with other keys left
 *   is handled by the account's transport, which drops the key and uses the next). Rejected
 *   keys come back after `keyCooldown`;
 * - `InsufficientBalance` (402): the whole account is taken out. Calls already waiting for one
 *   of its permits are not sent when they get it: they fail over too. A fiber of the pool probes
 *   `GET {baseUrl}/user/balance` with one of its keys every `balanceProbeInterval` and brings
 *   the account back when `is_available` is true. An account that cannot be probed (provider
 *   `openai-compatible`, or an endpoint answering 404) comes back `fallbackCooldown` after the
 *   402;
 * - `CircuitOpen` (the account's breaker opened meanwhile), `QueueFull` (its limiter's queue is
 *   bounded and full).
 *
 * Every exclusion has a cooldown and a way back: nothing is disabled forever. Other errors
 * (429, 5xx, transport errors, deadlines …) go back to the outer retry, whose next attempt
 * selects again: the account's limiter has shrunk and its breaker may have opened, so the load
 * moves. A stream fails over only before its first chunk reached the caller, never after.
 *
 * ## Models and cost
 *
 * A request's `model` is renamed through the account's `models` before it is sent. Every
 * attempt that reached an upstream is recorded in the `CostLedger` under the account's name and
 * the model sent: a success as `kept`; a failure as `discarded` with the usage it carried (the
 * retry tax; the pool cannot tell whether the outer pipeline retries, so a call's last failed
 * attempt is `discarded` too), or `truncated` for a stream whose content had reached the caller
 * (a stream its consumer abandons is not recorded: its usage never arrived).
 * `CostLedger.guard` runs before each attempt. A `Transport` fails with `ApiError`s only, so a
 * spent budget surfaces as `NoAccountAvailable` with `budgetExceeded` set, which is not
 * retryable.
 *
 * ## Limits of this design
 *
 * - The pool does not call `CallOptions.onFirstContent` or `onAccepted`: queue delays and
 *   acceptances feed the per-account limiters inside, and the outer policy has no limiter.
 * - The per-account policies update the `Policy` metrics labelled `account=<name>`: unlabelled,
 *   `weatherproof_calls` and `weatherproof_attempt_failures` count the pool's calls once; per
 *   account they count the attempts each served. The limiters' and breakers' labelled metrics,
 *   `failoversCounter`, `snapshot` and the ledger give the rest.
 *
 * @since 0.1.0
 */

import type * as HttpClient from "@effect/platform/HttpClient"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Metric from "effect/Metric"
import type * as Scope from "effect/Scope"
import type { Account } from "./Accounts.js"
import * as CircuitBreakerModule from "./CircuitBreaker.js"
import type { CostLedger } from "./CostLedger.js"
import * as internal from "./internal/accountPool.js"
import * as KeyPool from "./KeyPool.js"
import * as PolicyModule from "./Policy.js"
import * as ResilientModule from "./Resilient.js"
import type { Resilient } from "./Resilient.js"
import type * as RetryBudgetModule from "./RetryBudget.js"
import type * as RetryPolicyModule from "./RetryPolicy.js"
import type * as TokenBucketModule from "./TokenBucket.js"
import * as TransportModule from "./Transport.js"
import { type Deadlines, Transport } from "./Transport.js"

/**
 * One account as the pool sees it now:
 * - `state`: `serving` (breaker closed), `half_open` (serving its breaker's canaries), `open`
 *   (breaker open or isolated), `out_of_balance` (402, waiting for its balance to return),
 *   `no_keys` (every key rejected, cooling down);
 * - `limit`, `inFlight`: its limiter's current limit and permits held;
 * - `usableKeys`: keys not cooling down; `calls`: attempts routed to it so far.
 *
 * @since 0.1.0
 * @category models
 */
export interface AccountStatus {
  readonly name: string
  readonly provider: Account["provider"]
  readonly fallback: boolean
  readonly state: "serving" | "open" | "half_open" | "out_of_balance" | "no_keys"
  readonly limit: number
  readonly inFlight: number
  readonly usableKeys: number
  /** Attempts routed to the account, including those refused before sending. */
  readonly calls: number
  /** Attempts sent to the account that answered. */
  readonly succeeded: number
  /** Attempts sent to the account that failed. */
  readonly failed: number
  /** Of those, the 429s. */
  readonly rateLimited: number
  /** Attempts sent to the account that re-sent a request already sent once (here or elsewhere). */
  readonly retries: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Every account, in configuration order. */
  readonly snapshot: Effect.Effect<ReadonlyArray<AccountStatus>>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class AccountPool extends Context.Tag("weatherproof/AccountPool")<AccountPool, Service>() {}

/**
 * Options of the pool itself (`make`, `layerTransport`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Options of every account's breaker (its `name` is the account's). Default `CircuitBreaker.defaults`. */
  readonly breaker?: Omit<CircuitBreakerModule.Options, "name"> | undefined
  /** Deadlines of every account's transport. Default `Transport.defaultDeadlines`. */
  readonly deadlines?: Partial<Deadlines> | undefined
  /** Between two balance probes of an account that answered 402. Default 60 seconds. */
  readonly balanceProbeInterval?: Duration.DurationInput | undefined
  /** How long a key rejected with 401 is set aside. Default 15 minutes. */
  readonly keyCooldown?: Duration.DurationInput | undefined
  /**
   * How long an account that answered 402 stays out when its balance cannot be probed (provider
   * `openai-compatible`, or a balance endpoint answering 404). Default 10 minutes.
   */
  readonly fallbackCooldown?: Duration.DurationInput | undefined
}

/**
 * Options of the whole stack (`layerResilient`): the pool's, and the outer pipeline's.
 *
 * @since 0.1.0
 * @category models
 */
export interface PoolOptions extends Options {
  /** The outer retry. Default `RetryPolicy.defaults`. */
  readonly retry?: RetryPolicyModule.Options | undefined
  /** Default `RetryBudget.defaults`. */
  readonly retryBudget?: RetryBudgetModule.Options | undefined
  /** A client-side rate limit over all accounts. Default: none. */
  readonly rate?: TokenBucketModule.Options | undefined
}

/**
 * @since 0.1.0
 */
export const defaults = {
  balanceProbeInterval: Duration.seconds(60),
  keyCooldown: KeyPool.defaultCooldown,
  fallbackCooldown: Duration.minutes(10)
} as const

/**
 * Account-level failures the pool failed over from, tagged `account` and `error` (the error's
 * `_tag`).
 *
 * @since 0.1.0
 * @category metrics
 */
export const failoversCounter: Metric.Metric.Counter<number> = internal.failoversCounter

/**
 * The pool: a `Transport` over the accounts (what the outer `Resilient` calls) and the
 * `AccountPool` service. Its probe fibers and breakers live in the scope. Dies with
 * `IllegalArgumentException` on two accounts of one name or a duration that is not positive.
 *
 * @example
 * ```ts
 * import { NodeFileSystem } from "@effect/platform-node"
 * import { Effect } from "effect"
 * import { AccountPool, Accounts, CostLedger, Transport } from "weatherproof"
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const pool = yield* AccountPool.make(yield* Accounts.load("accounts.json"), { keyCooldown: "5 minutes" })
 *   // One attempt, on the least-loaded account that can serve; account-level errors fail over.
 *   yield* pool.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "Hi" }] })
 *   return yield* pool.snapshot
 * })).pipe(Effect.provide([Transport.nodeHttpClient(), CostLedger.layer(), NodeFileSystem.layer]))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  accounts: ReadonlyArray<Account>,
  options: Options = {}
): Effect.Effect<TransportModule.Service & Service, never, HttpClient.HttpClient | CostLedger | Scope.Scope> =>
  internal.make(accounts, {
    breaker: options.breaker,
    deadlines: options.deadlines,
    balanceProbeInterval: Duration.decode(options.balanceProbeInterval ?? defaults.balanceProbeInterval),
    keyCooldown: Duration.decode(options.keyCooldown ?? defaults.keyCooldown),
    fallbackCooldown: Duration.decode(options.fallbackCooldown ?? defaults.fallbackCooldown)
  })

/**
 * The pool as the `Transport` of a `Resilient` pipeline, and as `AccountPool`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerTransport = (
  accounts: ReadonlyArray<Account>,
  options?: Options
): Layer.Layer<Transport | AccountPool, never, HttpClient.HttpClient | CostLedger> =>
  Layer.scopedContext(
    Effect.map(make(accounts, options), (pool) => Context.make(Transport, pool).pipe(Context.add(AccountPool, pool)))
  )

/**
 * The whole stack over `Transport.nodeHttpClient()`: the outer policy (retry, retry budget,
 * optional rate limit; no limiter and no breaker, since those live per account) around the
 * pool. The cost ledger is left to the caller (`CostLedger.layer()`).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerResilient = (
  accounts: ReadonlyArray<Account>,
  options: PoolOptions = {}
): Layer.Layer<Resilient | AccountPool, never, CostLedger> => {
  // One pool, shared (layers are memoised by reference) by the pipeline and the AccountPool output.
  const pool = layerTransport(accounts, options).pipe(Layer.provide(TransportModule.nodeHttpClient()))
  const outerPolicy = PolicyModule.layer({
    retry: options.retry ?? {},
    retryBudget: options.retryBudget ?? {},
    rate: options.rate ?? false,
    concurrency: false,
    breaker: false
  })
  const pipeline = ResilientModule.layer.pipe(Layer.provide([pool, outerPolicy]))
  return Layer.merge(pipeline, Layer.effect(AccountPool, AccountPool).pipe(Layer.provide(pool)))
}
