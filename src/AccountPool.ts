/**
 * Several accounts (and providers) behind one client. DeepSeek limits concurrency per **account
 * and per model**, whichever key is used (its rate-limit page: `deepseek-v4-pro` 500 and
 * `deepseek-flash` 2500 concurrent per account, summed over all keys), so more keys of one
 * account buy nothing; more accounts, or a second provider, add capacity and survive an outage of
 * one.
 *
 * ## Architecture, outermost first
 *
 * 1. `layerResilient`'s client: a `Policy` with the retry, its budget and the token bucket
 *    (`Resilient.makeWith`), around the pool. No limiter and no breaker there: both live in the
 *    pool, per account.
 * 2. **The pool**, its own service: each attempt waits for a permit on an (account, model) lane,
 *    runs under that account's circuit breaker on its transport (its `baseUrl`, a `KeyPool` of
 *    its keys, the shared `HttpClient`), fails over to another account on account-level errors,
 *    and records its cost in the `CostLedger`.
 *
 * ## One adaptive limit per (account, model)
 *
 * Each account has a lane per model it runs for the calls it is asked (a name the pricing table
 * makes an alias of a model, such as `deepseek-v4-flash` of `deepseek-flash`, is that model:
 * DeepSeek serves both under one cap; models its `models` map sends as one name share that
 * name's lane, as its upstream caps them together), with its own limit: adaptive (each lane
 * discovers its own moving cap from 429s and acceptances; see `ConcurrencyLimiter`), or held at
 * most at the account's `concurrency` when it is a number: a ceiling, backed off only by 429s
 * and 503s and climbing back to it. Either way the lane's limit backs off on 429s, so the
 * account's breaker counts outages and the server's overload (503s, work cut for lack of
 * resources), never 429s: an account whose upstream sheds every call fails its calls over, and
 * one over a cap that moved only slows down. For a provider that limits the account as a whole, its
 * `accountConcurrency` caps the permits of all its lanes together.
 *
 * ## Which accounts serve a model
 *
 * An account with a `models` map serves the models it names, sent by their mapped names (a name
 * the price table makes an alias of a model is that model, for the map too). A `deepseek` account
 * also serves the price table's models and every name no account maps (a model the table does not
 * know yet); an account of another provider without a map serves every name, as asked. A call is
 * placed only on accounts that serve its model, so a fallback that maps flash takes flash calls
 * during an outage and never pro ones, which wait for a DeepSeek account (`NoAccountAvailable`
 * says `model_not_served` of the others). A model no account serves so goes to any, as asked.
 *
 * ## Placement when a permit is free
 *
 * A call waits at the pool, per model in two priority lanes (interactive before batch), until an
 * account that may serve it has a free permit for its model. Within a priority, calls wait in
 * arrival order, except that a call back for another attempt (a retry after a 429, a fail-over)
 * waits ahead of those not yet sent: it keeps its place rather than going behind the calls that
 * came after it (with the lanes shared on Redis too, see `layerRedis`). It is then placed on the
 * least loaded such lane (the lowest share of its limit in use; ties to the lane used least, then
 * configuration order). An account may serve when its breaker is not open or isolated, it is not
 * out of balance, and it has a usable key; a fallback account may serve only when no primary that
 * serves the model may. While its breaker is half-open an account takes as many calls as the
 * breaker's canaries: the others go to another account with room or wait at the pool, not behind
 * the canaries at the breaker (a slow canary would hold them for its whole answer), and are
 * placed as soon as the verdict closes it. A call therefore never queues behind the account it
 * would have picked first, and the backlog of an outage returns to the primaries as soon as they
 * serve again. (With the lanes shared on Redis, the calls placed on a half-open account beyond
 * its canaries still wait at its breaker.)
 *
 * ## Waiting beats failing
 *
 * When no account may serve for now (breakers open, balances out), a call waits until one may,
 * up to its `maxWait` (`CallOptions.maxWait`, default 30 minutes), then fails with
 * `NoAccountAvailable`: each account's reason and the earliest time one may serve again. It
 * fails at once when nothing will serve without a change of configuration (every key rejected: a
 * wrong key is not transient; every breaker isolated), and when a call already waited out a
 * `maxWait` as long as its own in this outage: until an account serves again, the calls that
 * follow are not each held a whole `maxWait` in turn.
 *
 * ## Failover and recovery
 *
 * Errors that say "this account cannot serve" (the `Account` verdict, and the refusal of an
 * account's breaker) fail over within the same attempt, and do not count as a retry:
 * - `KeyRejected` / `NoUsableKey`: no key of the account is left (a 401 with other keys left is
 *   handled by the account's transport, which drops the key and uses the next). Rejected keys
 *   come back after `keyCooldown`; when they were all out, a DeepSeek account (with `preflight`)
 *   asks its balance with them first, as at start, so a key still rejected sets itself aside
 *   again without a call, and the account is not counted as serving meanwhile;
 * - `InsufficientBalance` (402): the whole account is taken out. A fiber of the pool probes
 *   `GET /user/balance` at the API root (the base URL less a last `/v1`) with one of its keys
 *   every `balanceProbeInterval` and brings the account back when `is_available` is true. An
 *   account that cannot be probed (provider `openai-compatible`, or an endpoint answering 404)
 *   comes back `fallbackCooldown` after the 402, and so does one whose probes keep telling
 *   nothing (an error, a page that is no balance);
 * - `CircuitOpen`: the account's breaker opened meanwhile;
 * - a connection that could not be opened (a `TransportError` whose verdict is an `Outage` that is
 *   `unsent`: refused, a name that does not resolve, no route): the request never left, so another
 *   account (a fallback on another origin, say) takes it at once, where a retry would meet the
 *   same origin until its breaker opened. The account stays in the pool, its breaker counting the
 *   failure; with no other account the error goes back to the client's retry.
 *
 * **Balance preflight**: at start each DeepSeek account's balance is asked, in the background,
 * with each of its keys at once, so that a wrong key among good ones is set aside (and told)
 * before a call meets it; until it answers the account takes no call, and an account whose
 * balance is unavailable gets no call until a probe says otherwise.
 *
 * Other errors (429, 5xx, transport errors, deadlines …) go back to the client's retry, whose
 * next attempt is placed again: the lane's limit has shrunk and the breaker may have opened, so
 * the load moves. A stream fails over only before its first chunk reached the caller.
 *
 * ## Models and cost
 *
 * A request's `model` is renamed through the account's `models` before it is sent. Every attempt
 * that reached an upstream is recorded in the `CostLedger` under the account's name and **the
 * model the response named** (DeepSeek serves old names with new models, priced as the new
 * ones): a success as `kept`; a failure as `discarded` with the usage it carried (the retry tax),
 * or `truncated` for a stream whose content had reached the caller. The ledger's budget is asked
 * before each attempt: once spent, calls fail with `CostLedger.BudgetExceeded`.
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
import type * as Stream from "effect/Stream"
import type { Account } from "./Accounts.js"
import type { ApiError } from "./ApiError.js"
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from "./ChatSchema.js"
import type * as CircuitBreakerModule from "./CircuitBreaker.js"
import type { BudgetExceeded, CostLedger, PricingTable } from "./CostLedger.js"
import { Redis } from "./Redis.js"
import * as internal from "./internal/accountPool.js"
import * as MemberState from "./internal/memberState.js"
import { assertValid, positiveDuration } from "./internal/options.js"
import * as RedisLanes from "./internal/redisDispatcher.js"
import * as KeyPool from "./KeyPool.js"
import * as PolicyModule from "./Policy.js"
import * as ResilientModule from "./Resilient.js"
import type { Resilient } from "./Resilient.js"
import type * as RetryBudgetModule from "./RetryBudget.js"
import type * as RetryPolicyModule from "./RetryPolicy.js"
import type * as TokenBucketModule from "./TokenBucket.js"
import * as TransportModule from "./Transport.js"
import type { Deadlines } from "./Transport.js"

/**
 * One model's lane of an account.
 *
 * @since 0.1.0
 * @category models
 */
export interface ModelStatus {
  /** The model the lane's calls are sent as (its `models` map's name, or the one asked, an alias resolved). */
  readonly model: string
  /** The lane's current limit. */
  readonly limit: number
  /** Permits it holds. */
  readonly inFlight: number
  /** Calls waiting at the pool for the models the lane serves (on any account). */
  readonly queued: number
  /**
   * Attempts sent on the lane that drew a 429 (DeepSeek caps each model of an account apart, so
   * one lane can be throttled while the account's others serve).
   */
  readonly rateLimited: number
  /**
   * USD of the priced attempts the lane carried, kept and discarded, whatever model name their
   * responses gave (an alias, a fallback's own name).
   */
  readonly costUsd: number
}

/**
 * One account as the pool sees it now:
 * - `state`: `serving` (breaker closed), `half_open` (serving its breaker's canaries), `open`
 *   (breaker open or isolated), `out_of_balance` (402, or an unavailable balance at preflight,
 *   waiting for its balance to return), `checking_balance` (its balance is being asked at start:
 *   no call until it answers), `no_keys` (every key rejected, cooling down), `unreachable` (its
 *   base URL refuses connections: its calls wait, or go to another account, until one opens);
 * - `limit`, `inFlight`: summed over its model lanes, each in `models`;
 * - `usableKeys`: keys not cooling down, `restingKeys` the ids of those that are (`key#2`: rejected
 *   with a 401, set aside for their cooldown); `calls`: attempts placed on it so far.
 *
 * @since 0.1.0
 * @category models
 */
export interface AccountStatus {
  readonly name: string
  readonly provider: Account["provider"]
  readonly fallback: boolean
  readonly state: "serving" | "open" | "half_open" | "out_of_balance" | "checking_balance" | "no_keys" | "unreachable"
  readonly limit: number
  readonly inFlight: number
  readonly models: ReadonlyArray<ModelStatus>
  readonly usableKeys: number
  readonly restingKeys: ReadonlyArray<string>
  /** Attempts placed on the account, including those refused before sending. */
  readonly calls: number
  /** Attempts sent to the account that answered (a stream its caller stopped is neither this nor `failed`). */
  readonly succeeded: number
  /** Attempts sent to the account that failed. */
  readonly failed: number
  /** Of those, the 429s. */
  readonly rateLimited: number
  /** Attempts sent to the account that re-sent a request already sent once (here or elsewhere). */
  readonly retries: number
  /**
   * The failure of its last attempt sent, unless one answered since: its tag and message, every
   * configured key scrubbed, cut short. What a breaker that opened, or an account taken out,
   * last met.
   */
  readonly lastFailure: string | undefined
  /**
   * Whether its origin can be connected to: false from a connection that could not open (the
   * start's warm-up's, or a call's) until one opens (a call's, or the one the pool then tries
   * every `reachProbeInterval`). Tracked over `Transport.nodeHttpClient`, whose connections the
   * pool opens without a request; always true over another client.
   */
  readonly reachable: boolean
}

/**
 * How many calls the pool may have in flight now, how many more it could take at once, and when
 * that may grow.
 *
 * @since 0.1.0
 * @category models
 */
export interface Capacity {
  /**
   * The sum of the limits of the model lanes of the accounts that may serve now (an account's
   * `accountConcurrency` caps its own lanes together; a fallback counts only while no primary may
   * serve). Lanes open on a model's first call.
   */
  readonly permits: number
  /**
   * Of those, the permits a new call could take at once: per model, the free ones less the calls
   * waiting for one, summed. Shared on Redis (`makeRedis`), a lane's free permits are also at
   * least what is left of this process's share of it (its limit divided by the processes using it):
   * calls queued for those take the permits the others release next, so processes that share a
   * lane split it evenly, whoever came first.
   */
  readonly free: number
  /**
   * No account may serve now, nor is one about to (its balance being checked): every call waits
   * for one to come back, up to its `maxWait` (see "Waiting beats failing").
   */
  readonly stalled: boolean
  /**
   * Calls of this process waiting for a model no account may serve now, nor is about to (the
   * accounts that serve it out, those that may serve serving other models): each waits up to its
   * `maxWait`, holding no permit.
   */
  readonly unserved: number
  /**
   * Completes when the pool may have more room than at this reading (a lane's limit rose, a lane
   * opened, an account came back, a permit was released with no call waiting for it); at once if
   * it already has.
   */
  readonly changed: Effect.Effect<void>
}

/**
 * An account whose origin none of the start's warm-up connections reached (`Service.unreachable`):
 * a base URL with a typo, a host that is down, no network.
 *
 * @since 0.1.0
 * @category models
 */
export interface Unreachable {
  readonly account: string
  /** The origin of the account's base URL. */
  readonly origin: string
  /** Why the connections failed, as the system said it (`connect ECONNREFUSED 127.0.0.1:1`). */
  readonly reason: string
}

/**
 * Options of one call.
 *
 * @since 0.1.0
 * @category models
 */
export type CallOptions = Pick<ResilientModule.CallOptions, "deadlines" | "priority" | "maxWait" | "onAnswer" | "onExchange">

/**
 * Every failure a call of the pool can end in: the upstream's (`NoAccountAvailable` when no
 * account could take it in time) and a spent budget.
 *
 * @since 0.1.0
 * @category models
 */
export type PoolError = ApiError | BudgetExceeded

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** One attempt, placed on an account, failed over on account-level errors and connections that could not open. */
  readonly create: (request: ChatCompletionRequest, options?: CallOptions) => Effect.Effect<ChatCompletion, PoolError>
  /** One streaming attempt; it fails over only before its first chunk. */
  readonly stream: (request: ChatCompletionRequest, options?: CallOptions) => Stream.Stream<ChatCompletionChunk, PoolError>
  /** Every account, in configuration order. */
  readonly snapshot: Effect.Effect<ReadonlyArray<AccountStatus>>
  /** What the pool may hold in flight now, and what it could take at once: a batch reads ahead by it (`Batch.run`). */
  readonly capacity: Effect.Effect<Capacity>
  /**
   * Waits for the start's checks, the warm-up (`Options.warmUp`) reaching each account's origin or
   * failing to and each balance preflight answering (a call waits for its account's anyway), and
   * tells the accounts the warm-up could not reach (each also logged as a warning); the snapshot
   * then shows the accounts whose every key the preflight found rejected (`no_keys`). It waits no
   * longer than the first connection to each origin takes (or its connect timeout, 10 seconds)
   * and the preflight its timeout (30 seconds); empty when there is no warm-up. A batch refuses
   * to start when no account can be reached or none has a key the upstream accepts (`Batch.run`).
   */
  readonly unreachable: Effect.Effect<ReadonlyArray<Unreachable>>
  /**
   * Masks every configured key in `text`, whole or in part, and anything shaped like a key: for
   * text an upstream may have echoed a key into that leaves the process (a batch's result lines).
   */
  readonly scrub: (text: string) => string
}

/**
 * @since 0.1.0
 * @category tags
 */
export class AccountPool extends Context.Tag("weatherproof/AccountPool")<AccountPool, Service>() {}

/**
 * Options of the pool itself (`make`, `layer`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * Options of every account's breaker (its `name` is the account's). Default
   * `CircuitBreaker.defaults` with `countLoadShed: "overload"`: 429s are left to the lanes'
   * limiters, which back off on them; for a pool of one account, also `failureRatio: 1`: with
   * nowhere to fail over to, its breaker opens only when every call fails (an upstream shedding a
   * third of the calls kept a quarter's breaker opening, every call waiting out its open period).
   * Options given here replace those defaults one by one, and an account's own
   * (`Accounts.Account["breaker"]`) replace these.
   */
  readonly breaker?: Omit<CircuitBreakerModule.Options, "name"> | undefined
  /** Deadlines of every account's transport. Default `Transport.defaultDeadlines`. */
  readonly deadlines?: Partial<Deadlines> | undefined
  /** How long an attempt waits for an account that may take it. Default 30 minutes. */
  readonly maxWait?: Duration.DurationInput | undefined
  /**
   * Ask each DeepSeek account's balance at start, with each of its keys, in the background; until
   * it answers (30 s at most) the account takes no call. Default true.
   */
  readonly preflight?: boolean | undefined
  /**
   * Connections opened to each account's origin at start, alongside the balance preflight, so the
   * first burst of calls pays no TCP or TLS handshake (see `Transport.Options.warmUp`). Default
   * `Transport.defaultWarmUp` (4); 0 for none.
   */
  readonly warmUp?: number | undefined
  /** Between two balance probes of an account that is out of balance. Default 60 seconds. */
  readonly balanceProbeInterval?: Duration.DurationInput | undefined
  /**
   * Between two connections the pool opens to the origin of an account it could not connect to,
   * until one opens (`AccountStatus.reachable`). Default 5 seconds.
   */
  readonly reachProbeInterval?: Duration.DurationInput | undefined
  /** How long a key rejected with 401 is set aside. Default 15 minutes. */
  readonly keyCooldown?: Duration.DurationInput | undefined
  /**
   * How long an account that answered 402 stays out when its balance cannot be probed (provider
   * `openai-compatible`, or a balance endpoint answering 404), or its probes tell nothing until
   * then. Default 10 minutes.
   */
  readonly fallbackCooldown?: Duration.DurationInput | undefined
}

/**
 * Options of the whole stack (`layerResilient`): the pool's, and the outer policy's.
 *
 * @since 0.1.0
 * @category models
 */
export interface PoolOptions extends Options {
  /** The outer retry. Default `RetryPolicy.defaults`. */
  readonly retry?: Omit<RetryPolicyModule.Options, "classify"> | undefined
  /** Default `RetryBudget.defaults`. */
  readonly retryBudget?: RetryBudgetModule.Options | undefined
  /** How long a retry the budget refuses waits for room (`Policy.Parts.budgetWait`). Default `retry.maxRetryAfter` (60 s). */
  readonly budgetWait?: Duration.DurationInput | undefined
  /** A client-side rate limit over all accounts. Default: none. */
  readonly rate?: TokenBucketModule.Options | undefined
}

/**
 * @since 0.1.0
 */
export const defaults = {
  maxWait: Duration.minutes(30),
  balanceProbeInterval: Duration.seconds(60),
  reachProbeInterval: Duration.seconds(5),
  keyCooldown: KeyPool.defaultCooldown,
  fallbackCooldown: Duration.minutes(10),
  leaseTtl: RedisLanes.defaultLeaseTtl
} as const

const unreachableText = "cannot connect to its base URL"

/**
 * Each `AccountStatus` state as a person reads it, in a summary or a progress line (the codes are
 * for programs).
 *
 * @since 0.1.0
 * @category models
 */
export const stateText: Readonly<Record<AccountStatus["state"], string>> = {
  serving: "serving",
  open: "breaker open after failures",
  half_open: "breaker half-open, trying a call",
  out_of_balance: "out of balance",
  checking_balance: "checking its balance",
  no_keys: "every key rejected (401)",
  unreachable: unreachableText
}

/**
 * An account's state as a person reads it (`stateText`), and, when its base URL refuses
 * connections (`AccountStatus.reachable`) while it is out for another reason, that too: `breaker
 * open after failures, cannot connect to its base URL`.
 *
 * @since 0.1.0
 * @category models
 */
export const describeState = (status: Pick<AccountStatus, "state" | "reachable">): string =>
  status.reachable || status.state === "unreachable" ? stateText[status.state] : `${stateText[status.state]}, ${unreachableText}`

/**
 * The models a pool over `accounts` is known to serve: the pricing table's models and aliases,
 * and every account's own names (`Account.models`). The pool's per-(account, model) series
 * (limit, in flight, queued, attempts, retries) exist for them from its start, before their lanes
 * are made by a first call.
 *
 * @since 0.1.0
 * @category models
 */
export const servedModels: (accounts: ReadonlyArray<Account>, pricing: PricingTable) => ReadonlySet<string> =
  internal.servedModels

/**
 * Account-level failures the pool failed over from, tagged `account` and `error` (the error's
 * `_tag`). A call the account's breaker refused (open, or half open with its canaries out) is not
 * one: nothing failed there (`CircuitBreaker.stateGauge` shows the breaker).
 *
 * @since 0.1.0
 * @category metrics
 */
export const failoversCounter: Metric.Metric.Counter<number> = internal.failoversCounter

/**
 * Calls waiting at the pool for a permit, tagged `model`. Each lane publishes the limiter's
 * gauges (`ConcurrencyLimiter.limitGauge`, `inFlightGauge`) and drop counter, tagged `account`
 * and `model`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const queuedGauge: Metric.Metric.Gauge<number> = internal.queuedGauge

/**
 * Attempts sent, tagged `account`, `model` (the lane's: the model requested) and `result`
 * (`ok`, `stopped` for a stream its caller stopped after its content began, or the error's
 * `_tag`): the 429s of an (account, model) are `result="RateLimited"`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const attemptsCounter: Metric.Metric.Counter<number> = internal.attemptsCounter

/**
 * Attempts that re-sent a request already sent once (here or on another account), tagged
 * `account` and `model`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const retriesCounter: Metric.Metric.Counter<number> = internal.retriesCounter

/**
 * Times the lanes of a pool or a limiter on Redis (`makeRedis`) went to local mode because a Redis
 * script failed (see docs/redis.md): each is also one warning in the log. The shared breakers, key
 * cooldowns and balances fall back on their own, with a warning each, and are not counted here.
 *
 * @since 0.1.0
 * @category metrics
 */
export const redisLocalModeCounter: Metric.Metric.Counter<number> = RedisLanes.localModeCounter

/**
 * The pools and limiters on Redis (`makeRedis`) of this process that count their shared limits
 * alone now, Redis away: 0 while every one shares them. Exported to Prometheus as
 * `weatherproof_redis_lanes_local`, for an alert while replicas run uncoordinated.
 *
 * @since 0.1.0
 * @category metrics
 */
export const redisLocalGauge: Metric.Metric.Gauge<number> = RedisLanes.localGauge

/**
 * Seconds from an attempt's placement to its end, tagged `account` and `model`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const attemptDuration: Metric.Metric.Histogram<number> = internal.attemptDuration

/**
 * The pool. Its probe fibers and breakers live in the scope. Dies with `IllegalArgumentException` on two accounts of one name or a duration
 * that is not positive.
 *
 * @example
 * ```ts
 * import { NodeFileSystem } from "@effect/platform-node"
 * import { Effect } from "effect"
 * import { AccountPool, Accounts, CostLedger, Transport } from "weatherproof"
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const pool = yield* AccountPool.make(yield* Accounts.load("accounts.json"), { keyCooldown: "5 minutes" })
 *   // One attempt, on the least loaded account that can take the model; account-level errors fail over.
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
): Effect.Effect<Service, never, HttpClient.HttpClient | CostLedger | Scope.Scope> =>
  Effect.suspend(() => internal.make(accounts, settingsOf(options)))

/** The options with their defaults; throws (a defect where it runs in an effect) on a period or cooldown not above zero. */
const settingsOf = (options: Options): internal.Settings => {
  const periods = {
    balanceProbeInterval: options.balanceProbeInterval ?? defaults.balanceProbeInterval,
    reachProbeInterval: options.reachProbeInterval ?? defaults.reachProbeInterval,
    keyCooldown: options.keyCooldown ?? defaults.keyCooldown,
    fallbackCooldown: options.fallbackCooldown ?? defaults.fallbackCooldown
  }
  assertValid("AccountPool", Object.entries(periods).map(([name, input]) => positiveDuration(name, input)))
  return {
    breaker: options.breaker,
    deadlines: options.deadlines,
    maxWait: Duration.decode(options.maxWait ?? defaults.maxWait),
    preflight: options.preflight ?? true,
    warmUp: options.warmUp ?? TransportModule.defaultWarmUp,
    balanceProbeInterval: Duration.decode(periods.balanceProbeInterval),
    reachProbeInterval: Duration.decode(periods.reachProbeInterval),
    keyCooldown: Duration.decode(periods.keyCooldown),
    fallbackCooldown: Duration.decode(periods.fallbackCooldown)
  }
}

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  accounts: ReadonlyArray<Account>,
  options?: Options
): Layer.Layer<AccountPool, never, HttpClient.HttpClient | CostLedger> => Layer.scoped(AccountPool, make(accounts, options))

/**
 * Options of a pool whose lanes are shared through Redis (`makeRedis`).
 *
 * @since 0.1.0
 * @category models
 */
export interface RedisOptions extends Options {
  /**
   * How long a permit's lease outlives its holder's last heartbeat (one every third of it, or of
   * 5 seconds when it is longer): a process that dies without releasing its permits frees them
   * after this long. Default 30 seconds.
   */
  readonly leaseTtl?: Duration.DurationInput | undefined
}

/**
 * The pool, shared with every process whose pool uses the same `Redis` prefix and names the
 * account alike (the account's `name`, never its keys): its lanes (one count of permits per
 * (account, model), queued calls served across processes in the order one process serves them,
 * a retry ahead of the calls not yet sent; one adaptive limit learnt by all) and its accounts'
 * breakers, key cooldowns and balance state (see docs/redis.md). A permit is a lease that
 * expires `leaseTtl` after its holder's last heartbeat, so a crashed process's permits come back
 * by themselves. Placement (which accounts may serve, failover, fallbacks) stays in each process,
 * as in `make`. Give every process the same accounts configuration: each process applies its own
 * `concurrency` to the limit they learn together.
 *
 * @example
 * ```ts
 * import { NodeFileSystem } from "@effect/platform-node"
 * import { Effect, Layer } from "effect"
 * import { AccountPool, Accounts, CostLedger, Redis, Transport } from "weatherproof"
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const pool = yield* AccountPool.makeRedis(yield* Accounts.load("accounts.json"), { leaseTtl: "30 seconds" })
 *   yield* pool.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "Hi" }] })
 * })).pipe(Effect.provide(Layer.mergeAll(
 *   Transport.nodeHttpClient(),
 *   CostLedger.layer(),
 *   NodeFileSystem.layer,
 *   Redis.layer({ url: "redis://127.0.0.1:6379" })
 * )))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeRedis = (
  accounts: ReadonlyArray<Account>,
  options: RedisOptions = {}
): Effect.Effect<Service, never, HttpClient.HttpClient | CostLedger | Redis | Scope.Scope> =>
  Effect.flatMap(Redis, (redis) =>
    internal.makeWith(
      accounts,
      { ...settingsOf(options), memberState: MemberState.onRedis(redis) },
      internal.coordinateRedis({ leaseTtl: Duration.decode(options.leaseTtl ?? defaults.leaseTtl) })
    ))

/**
 * @since 0.1.0
 * @category layers
 */
export const layerRedis = (
  accounts: ReadonlyArray<Account>,
  options?: RedisOptions
): Layer.Layer<AccountPool, never, HttpClient.HttpClient | CostLedger | Redis> =>
  Layer.scoped(AccountPool, makeRedis(accounts, options))

/**
 * The pool as the upstream of a `Resilient` client: its attempts are the pool's, whose permits
 * are its own (the client's policy has no limiter).
 *
 * @since 0.1.0
 * @category constructors
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { AccountPool, Policy, Resilient } from "weatherproof"
 *
 * const client = Effect.gen(function*() {
 *   const pool = yield* AccountPool.AccountPool
 *   // Each attempt waits for a permit of its account's limiter, which backs off on 429s: a
 *   // retry of one is paced there, not charged to the retry budget (as `layerResilient` does).
 *   const policy = yield* Policy.make({ retry: { maxRetries: 3 }, concurrency: false, breaker: false, capRetriesPaced: true })
 *   return yield* Resilient.makeWith(policy, AccountPool.upstream(pool))
 * })
 * ```
 */
export const upstream = (pool: Service): ResilientModule.Upstream => ({
  create: (request, options) => pool.create(request, options),
  stream: (request, options) => pool.stream(request, options)
})

/**
 * The whole stack over `Transport.nodeHttpClient()`: a `Resilient` client whose policy has the
 * retry, its budget and an optional rate limit (no limiter and no breaker: those live in the pool,
 * per account) around the pool, and the pool itself. The cost ledger is left to the caller
 * (`CostLedger.layer()`).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerResilient = (
  accounts: ReadonlyArray<Account>,
  options: PoolOptions = {}
): Layer.Layer<Resilient | AccountPool, never, CostLedger> => resilientOver(layer(accounts, options), options)

/**
 * `layerResilient` over the context's `HttpClient` rather than `Transport.nodeHttpClient()`: a
 * `MockUpstream` in tests, a `Simulator`'s client, or a client of your own. With a DeepSeek
 * account the pool first asks `GET /user/balance` (its preflight): a script answers it too, or
 * the options say `preflight: false`.
 *
 * @since 0.1.0
 * @category layers
 * @example
 * ```ts
 * import { Effect, Layer, Redacted } from "effect"
 * import { AccountPool, CostLedger, MockUpstream, Resilient } from "weatherproof"
 *
 * const generation = { id: "chatcmpl-1", model: "deepseek-v4-flash", content: "Hello!", usage: MockUpstream.usage({ promptTokens: 12, completionTokens: 3 }) }
 * const upstream = MockUpstream.layer((request) =>
 *   request.url.endsWith("/user/balance")
 *     ? MockUpstream.json({ is_available: true, balance_infos: [] })
 *     : MockUpstream.completion(generation)
 * )
 * const account = {
 *   name: "main",
 *   provider: "deepseek" as const,
 *   baseUrl: "https://api.deepseek.com",
 *   keys: [Redacted.make("sk-test")],
 *   fallback: false,
 *   models: {}
 * }
 * const client = AccountPool.layerResilientOverHttpClient([account]).pipe(
 *   Layer.provide([upstream, CostLedger.layer()])
 * )
 * const answer = Effect.flatMap(Resilient.Resilient, (resilient) =>
 *   resilient.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "Hi" }] })
 * ).pipe(Effect.provide(client))
 * ```
 */
export const layerResilientOverHttpClient = (
  accounts: ReadonlyArray<Account>,
  options: PoolOptions = {}
): Layer.Layer<Resilient | AccountPool, never, CostLedger | HttpClient.HttpClient> => clientOver(layer(accounts, options), options)

/**
 * `layerResilient` with the pool's lanes shared through Redis (`makeRedis`): the retry, its budget
 * and the rate limit stay per process, the permits and adaptive limits are shared.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerResilientRedis = (
  accounts: ReadonlyArray<Account>,
  options: PoolOptions & RedisOptions = {}
): Layer.Layer<Resilient | AccountPool, never, CostLedger | Redis> => resilientOver(layerRedis(accounts, options), options)

/** A `Resilient` client over `pool` on `Transport.nodeHttpClient()`, with the pool's output beside it. */
const resilientOver = <R>(
  pool: Layer.Layer<AccountPool, never, HttpClient.HttpClient | R>,
  options: PoolOptions
): Layer.Layer<Resilient | AccountPool, never, Exclude<R, HttpClient.HttpClient>> =>
  clientOver(pool.pipe(Layer.provide(TransportModule.nodeHttpClient())), options)

/** A `Resilient` client over `pool`, with the pool's output beside it. */
const clientOver = <R>(
  pool: Layer.Layer<AccountPool, never, R>,
  options: PoolOptions
): Layer.Layer<Resilient | AccountPool, never, R> => {
  // One pool, shared (layers are memoised by reference) by the client and the AccountPool output.
  const client = Layer.effect(
    ResilientModule.Resilient,
    Effect.gen(function*() {
      const outer = yield* PolicyModule.Policy
      return yield* ResilientModule.makeWith(outer, upstream(yield* AccountPool))
    })
  ).pipe(
    Layer.provide(PolicyModule.layer({
      retry: options.retry ?? {},
      retryBudget: options.retryBudget ?? {},
      rate: options.rate ?? false,
      concurrency: false,
      breaker: false,
      budgetWait: options.budgetWait,
      // Each attempt waits for a permit of its account and model's limiter.
      capRetriesPaced: true
    }))
  )
  return Layer.provideMerge(client, pool)
}
