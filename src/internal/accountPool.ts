/**
 * The account pool's implementation: the accounts' state, the dispatcher that places each call
 * on an (account, model) lane when a permit is free, failover within an attempt, balance
 * preflight and recovery, and cost records.
 *
 * The mutable fields of a `Member` are read and written only in synchronous blocks, so each
 * change of state and what the dispatcher makes of it is atomic on the JavaScript thread.
 *
 * @internal
 */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as Arr from "effect/Array"
import * as Cause from "effect/Cause"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { Account } from "../Accounts.js"
import type { AccountStatus, CallOptions, Capacity, PoolError, Service, Unreachable } from "../AccountPool.js"
import * as ApiError from "../ApiError.js"
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Usage } from "../ChatSchema.js"
import * as CircuitBreaker from "../CircuitBreaker.js"
import type * as Limiter from "../ConcurrencyLimiter.js"
import { CostLedger, type Disposition, type Entry as CostLedgerEntry, type PricingTable } from "../CostLedger.js"
import * as KeyPool from "../KeyPool.js"
import * as Telemetry from "../Telemetry.js"
import * as Transport from "../Transport.js"
import * as Redis from "../Redis.js"
import * as AccountModels from "./accountModels.js"
import * as BaseUrl from "./baseUrl.js"
import * as LimiterInternal from "./concurrencyLimiter.js"
import { isLoopback } from "./loopback.js"
import * as AttemptRecords from "./attemptRecords.js"
import { picoOfUsd, usdOfPico } from "./costLedger.js"
import { AccountSlot, Dispatcher, Lane, type LaneGrant, type Lanes, maySoonServe, queuedOn, type Waiter } from "./dispatcher.js"
import * as GenAi from "./genAi.js"
import * as MemberState from "./memberState.js"
import { monotonicMillis } from "./monotonic.js"
import { assertValid } from "./options.js"
import * as RedisLanes from "./redisDispatcher.js"
import { attemptFailuresCounter, secondsBoundaries } from "./policy.js"
import { Signal } from "./signal.js"
import * as Scrubber from "./scrubber.js"
import * as StreamPull from "./streamPull.js"
import * as Substitutes from "./substitutes.js"
import * as ToldAttempts from "./toldAttempts.js"
import { clipped, connectionFailure, isUntrustedCertificate, parseJson, quotedBody } from "./text.js"
import type { SharedBalance, Verdict } from "./sharedBalance.js"
import * as ScopeFinalizer from "./scopeFinalizer.js"
import { whenTraced } from "./tracing.js"
import { permitOptions } from "./transport.js"
import { type Undici, undiciOf } from "./transportWires.js"

/** `AccountPool.Options` with defaults applied. */
export interface Settings {
  readonly breaker: Omit<CircuitBreaker.Options, "name"> | undefined
  readonly deadlines: Partial<Transport.Deadlines> | undefined
  readonly balanceProbeInterval: Duration.Duration
  readonly reachProbeInterval: Duration.Duration
  readonly keyCooldown: Duration.Duration
  readonly fallbackCooldown: Duration.Duration
  readonly maxWait: Duration.Duration
  readonly preflight: boolean
  readonly warmUp: number
  /** Where each member's breaker, keys and balance state live. Default in memory. */
  readonly memberState?: MemberState.MemberState | undefined
}

export const failoversCounter = Metric.counter("weatherproof_account_failovers", {
  description: "Account-level failures the account pool failed over from",
  incremental: true
})

export const keysRejectedCounter = Metric.counter("weatherproof_account_keys_rejected", {
  description: "Keys the upstream rejected (401) and the account set aside, by account: again after each rest for a key revoked for good",
  incremental: true
})

export const queuedGauge = Metric.gauge("weatherproof_account_pool_queued", {
  description: "Calls waiting at the account pool for a permit, by model"
})

export const attemptsCounter = Metric.counter("weatherproof_account_pool_attempts", {
  description: "Attempts the account pool sent, by account, model and result (ok, or the error's _tag)",
  incremental: true
})

export const retriesCounter = Metric.counter("weatherproof_account_pool_retries", {
  description: "Attempts the account pool sent that re-sent a request already sent once, by account and model",
  incremental: true
})

export const attemptDuration = Metric.histogram(
  "weatherproof_account_pool_attempt_duration_seconds",
  secondsBoundaries,
  "Duration of attempts the account pool sent, from placement to their end, by account and model"
)

/** A balance probe gets this long to answer. */
const probeTimeout = Duration.seconds(30)

// ---------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------

/**
 * Serving, out of balance until `nextCheck` (the next probe, or the return without one), or
 * not yet known: the preflight probe has not answered (it takes at most `until`).
 */
type Balance =
  | { readonly _tag: "Ok" }
  | { readonly _tag: "Out"; readonly nextCheck: number }
  | { readonly _tag: "Checking"; readonly until: number }

const balanceOk: Balance = { _tag: "Ok" }

/** Why an account cannot serve now, and until when (`busy` is a refusal of one attempt, not a state). */
type Unavailable = {
  readonly reason: Exclude<ApiError.AccountUnavailable["reason"], "busy" | "model_not_served">
  readonly until: number
}

/** How an attempt that reached its upstream ended, as the account's figures count it. */
type SentEnd =
  | { readonly _tag: "Answered" }
  | { readonly _tag: "Stopped" }
  | { readonly _tag: "Failed"; readonly verdict: ApiError.Verdict; readonly error: unknown }

const answered: SentEnd = { _tag: "Answered" }
/** A stream its caller stopped after content reached it: neither answered nor failed. */
const stoppedByCaller: SentEnd = { _tag: "Stopped" }

/** Openings of a breaker this close together are a flap, not one outage after another: told as such. */
const flapWindowMillis = 10 * 60_000

/** `2nd`, `3rd`, `11th`, `21st`. */
const ordinal = (n: number): string => {
  const tens = n % 100
  const suffix = tens >= 11 && tens <= 13 ? "th" : ["th", "st", "nd", "rd"][n % 10] ?? "th"
  return `${n}${suffix}`
}

/** One account: its parts, the dispatcher's view of it, and the pool's own counts. */
class Member {
  /** Why it cannot serve, when it cannot: kept in step with `slot.available`. */
  unavailable: Unavailable | undefined
  balance: Balance = balanceOk
  /** Whether a fiber is recovering its balance: one at a time, however often it is marked out and back. */
  recovering = false
  /** Attempts placed on the account so far. */
  calls = 0
  /** Attempts sent to the account that answered, that failed, that re-sent a request (its 429s are its lanes'). */
  succeeded = 0
  failed = 0
  retries = 0
  /** The failure of its last attempt sent, unless one answered since: said when its breaker opens. */
  lastFailure: unknown = undefined
  /** Whether its origin can be connected to (`AccountStatus.reachable`). */
  reachable = true
  /** While it cannot be: why, and when a connection is tried next (epoch millis on the monotonic clock). */
  unreachableCause: unknown = undefined
  nextReachTry = 0
  /** Whether a fiber is trying to connect to its origin again: one at a time, as for `recovering`. */
  probingReach = false
  /** When a fiber wakes to read its state again as its first resting key returns, while one will. */
  keysBackAt: number | undefined = undefined

  constructor(
    readonly account: Account,
    readonly slot: AccountSlot,
    readonly keys: KeyPool.Service,
    readonly breaker: CircuitBreaker.Service,
    readonly transport: Transport.Service,
    /** The balance state other processes using the account see. */
    readonly sharedBalance: SharedBalance,
    /** The name its `models` map gives a model (read by lane), if it names it. */
    readonly mappedName: (model: string) => string | undefined
  ) {}

  get name(): string {
    return this.account.name
  }

  get origin(): string {
    return new URL(this.account.baseUrl).origin
  }

  /** The name the account is sent `model` by. */
  modelFor(model: string): string {
    return this.mappedName(model) ?? model
  }

  /**
   * `request` as this account is sent it: the same object when its model is not mapped. A model
   * another provider's map names goes without `thinking`, DeepSeek's own field (the router sets
   * it on every request it routes), which such a provider refuses as unknown.
   */
  requestFor(request: ChatCompletionRequest): ChatCompletionRequest {
    const model = this.mappedName(request.model)
    if (model === undefined) return request
    if (this.account.provider === "deepseek" || request.thinking === undefined) {
      return model === request.model ? request : { ...request, model }
    }
    const { thinking: _deepSeekOnly, ...rest } = request
    return { ...rest, model }
  }
}

/** An attempt placed on an account: its grant and permit, and when it was placed (Clock millis). */
interface Placed {
  readonly member: Member
  readonly grant: LaneGrant
  readonly permit: Limiter.Permit
  readonly placedAt: number
}

/** An attempt's models: the one its answer named, and the one it was sent (priced when the table lacks the first). */
interface Models {
  readonly served: string
  readonly sent: string
}

/** Nothing to settle: the attempt settled itself. */
const noSettle = () => Effect.void

/** The results whose attempts each lane counts from 0: answered, and refused with a 429. */
const resultsFromStart = ["ok", "RateLimited"] as const

/** The models a pool over `accounts` is known to serve: the pricing table's (aliases too) and every account's own names. */
export const servedModels = (accounts: ReadonlyArray<Account>, pricing: PricingTable): ReadonlySet<string> =>
  new Set([...Object.keys(pricing.models), ...Object.keys(pricing.aliases ?? {}), ...accounts.flatMap((account) => Object.keys(account.models))])

/** A lane's adaptive options: the account's, or a number's ceiling (`ConcurrencyLimiter.ceiling`). */
const laneOptions = (concurrency: Account["concurrency"]): Limiter.AdaptiveOptions =>
  typeof concurrency === "number" ? LimiterInternal.ceilingOptions(concurrency) : concurrency ?? {}

const policyFor = (account: Account): LimiterInternal.Policy => LimiterInternal.adaptivePolicy(laneOptions(account.concurrency))

/** What a coordinator tells the pool besides its grants. */
export interface CoordinatorHooks {
  /** Starts a lane's series: a lane was made (on its model's first call). */
  readonly opened: (lane: Lane) => void
  /** Publishes a lane's gauges: when its limit or in-flight count changed other than by the pool's own grants and releases. */
  readonly changed: (lane: Lane) => void
  /** The pool may have more room than at the last reading of its capacity (a limit rose, a lane opened, permits came back). */
  readonly roomMayHaveGrown: () => void
}

/** Makes what grants the pool's permits over the accounts' slots (in configuration order). */
export type Coordinate<R> = (
  accounts: ReadonlyArray<Account>,
  slots: ReadonlyArray<AccountSlot>,
  hooks: CoordinatorHooks
) => Effect.Effect<Lanes, never, R | Scope.Scope>

/** Each lane's permits in this process only. */
const inMemory: Coordinate<never> = (accounts, slots, hooks) =>
  Effect.sync(() => {
    const dispatcher: Dispatcher = new Dispatcher(slots, (slot, key) => {
      const lane = new Lane(slot, key, policyFor(accounts[slot.index]!), (grew) => {
        dispatcher.dispatchLane(grew)
        hooks.roomMayHaveGrown()
      })
      hooks.opened(lane)
      hooks.roomMayHaveGrown()
      return lane
    })
    return dispatcher
  })

/**
 * Each lane's permits and adaptive limit shared through Redis with every process that names the
 * account alike (`redisDispatcher.ts`).
 */
export const coordinateRedis = (settings: RedisLanes.Settings): Coordinate<Redis.Redis> => (accounts, slots, hooks) =>
  Effect.flatMap(Redis.Redis, (redis) =>
    RedisLanes.make(redis, slots, (slot, model) => {
      const account = accounts[slot.index]!
      return {
        key: redis.key("pool", "lane", account.name, model),
        account: account.accountConcurrency === undefined
          ? undefined
          : { key: redis.key("pool", "account", account.name), cap: account.accountConcurrency },
        limit: LimiterInternal.adaptiveConfig(laneOptions(account.concurrency))
      }
    }, hooks, settings))

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** An account-level failure (`cause`), carried out of the account's attempt to the next placement. */
class FailedOver extends Data.TaggedError("FailedOver")<{
  readonly member: Member
  readonly cause: PoolError | CircuitBreaker.CircuitOpen
}> {
  override get message(): string {
    return `failed over from account ${this.member.name}: ${this.cause.message}`
  }
}

/** Failures that never reached an upstream: not recorded as spend. */
const wasNotSent = (verdict: ApiError.Verdict, error: unknown): boolean =>
  verdict._tag === "Refused" || ApiError.tagOf(error) === "NoUsableKey"

/** The longest failure a log line quotes. */
const maxFailureText = 300

/** An attempt's failure as a log line or a status says it: its tag and message, scrubbed, cut short. */
const describeFailure = (error: unknown, scrub: Scrubber.Scrubber): string =>
  clipped(scrub(`${ApiError.tagOf(error) ?? "unknown"}: ${error instanceof Error ? error.message : String(error)}`), maxFailureText)

// ---------------------------------------------------------------------------------------------
// Balance
// ---------------------------------------------------------------------------------------------

const BalanceBody = Schema.Struct({ is_available: Schema.Boolean })
const decodeBalance = Schema.decodeUnknownOption(BalanceBody)
const parseBalance = (text: string) => Option.flatMap(parseJson(text), decodeBalance)

type ProbeResult = Verdict

/** What one key's balance check said (`rejected`: a 401, the key set aside), and what to tell of it. */
interface KeyAnswer {
  readonly verdict: ProbeResult | "rejected"
  readonly warning?: string
}

/**
 * `GET {baseUrl}/user/balance` (less a last `/v1`) with `credential`. DeepSeek's 401 is its key's
 * (only DeepSeek accounts are probed): the key is set aside, and told. A 2xx that is not a balance
 * is to be told (a base URL that reaches a web server answers every path with a page), and proves
 * nothing.
 */
const askBalance = (
  client: HttpClient.HttpClient,
  member: Member,
  scrub: Scrubber.Scrubber,
  credential: KeyPool.Credential
): Effect.Effect<KeyAnswer, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const url = BaseUrl.balanceUrl(member.account.baseUrl)
    const response = yield* client.execute(
      HttpClientRequest.get(url).pipe(HttpClientRequest.setHeader("authorization", `Bearer ${Redacted.value(credential.key)}`))
    )
    if (response.status === 404) {
      return {
        verdict: "no_endpoint",
        warning: scrub(
          `AccountPool: account ${member.name}: its balance check (GET ${url}) answered 404; DeepSeek answers it at its ` +
            "API root, so if calls fail with 404 too, its base URL has a path too many"
        )
      }
    }
    if (response.status === 401) {
      yield* member.keys.reject(credential)
      return { verdict: "rejected" }
    }
    if (response.status >= 300 && response.status < 400) {
      return {
        verdict: "failed",
        warning: scrub(
          `AccountPool: account ${member.name}: its balance check (GET ${url}) answered ${response.status}, a redirect to ${
            clipped(response.headers["location"] ?? "(no location)", 200)
          }: calls follow no redirect (their key would go along), so they will fail as well; give the base URL it points to`
        )
      }
    }
    if (response.status < 200 || response.status >= 300) return { verdict: "failed" }
    const text = yield* response.text
    const balance = parseBalance(text)
    if (Option.isSome(balance)) return { verdict: balance.value.is_available ? "available" : "unavailable" }
    return {
      verdict: "failed",
      warning: scrub(
        `AccountPool: account ${member.name}: its balance check (GET ${url}) answered ${response.status} ${
          quotedBody(response.headers["content-type"], text, scrub)
        }, not a balance; if its calls fail as well, its base URL reaches something other than the API`
      )
    }
  })

/** A verdict, its warning told. */
const toldVerdict = (verdict: ProbeResult, warning: string | undefined): Effect.Effect<ProbeResult> =>
  warning === undefined ? Effect.succeed(verdict) : Effect.as(Effect.logWarning(warning), verdict)

/**
 * The account's balance asked with one key at a time (a recovery's probe): a rejected key passes
 * the question to the next, until one is answered or every key was rejected.
 */
const probeBalance = (client: HttpClient.HttpClient, member: Member, scrub: Scrubber.Scrubber): Effect.Effect<ProbeResult> => {
  const askWithNextKey = (tried: ReadonlySet<string>) =>
    Effect.gen(function*(): Effect.fn.Return<ProbeResult, unknown, Scope.Scope> {
      const credential = yield* member.keys.acquire
      if (tried.has(credential.id)) return "failed"
      const answer = yield* askBalance(client, member, scrub, credential)
      return answer.verdict === "rejected"
        ? yield* askWithNextKey(new Set(tried).add(credential.id))
        : yield* toldVerdict(answer.verdict, answer.warning)
    })
  return askWithNextKey(new Set()).pipe(Effect.scoped, Effect.timeout(probeTimeout), Effect.orElseSucceed((): ProbeResult => "failed"))
}

/** The verdicts of an account's keys, most telling first: they share one balance. */
const verdictOrder: ReadonlyArray<ProbeResult> = ["unavailable", "available", "no_endpoint", "failed"]

/**
 * The start's preflight: the balance asked with every usable key at once, so that a wrong key
 * among good ones is set aside and told before a call meets it. The account's verdict is the
 * most telling of its accepted keys' (a key that timed out proves nothing), its warning told once;
 * `failed` when every key was rejected.
 */
const probeBalanceWithEveryKey = (
  client: HttpClient.HttpClient,
  member: Member,
  scrub: Scrubber.Scrubber
): Effect.Effect<ProbeResult> =>
  Effect.gen(function*() {
    const credentials = yield* Effect.replicateEffect(member.keys.acquire, yield* member.keys.available)
    const answers = yield* Effect.forEach(credentials, (credential) =>
      askBalance(client, member, scrub, credential).pipe(
        Effect.scoped,
        Effect.timeout(probeTimeout),
        Effect.orElseSucceed((): KeyAnswer => ({ verdict: "failed" }))
      ), { concurrency: "unbounded" })
    for (const verdict of verdictOrder) {
      const answer = answers.find((answer) => answer.verdict === verdict)
      if (answer !== undefined) return yield* toldVerdict(verdict, answer.warning)
    }
    return "failed"
  }).pipe(Effect.orElseSucceed((): ProbeResult => "failed"))

/** `keys`, counting each key the upstream sets aside (`keysRejectedCounter`); the pool warns of it (`KeyPool.Options.label`). */
const countingRejections = (account: Account, keys: KeyPool.Service): KeyPool.Service => ({
  ...keys,
  reject: (credential) =>
    Effect.gen(function*() {
      const before = yield* keys.available
      yield* keys.reject(credential)
      if ((yield* keys.available) < before) yield* Metric.increment(Metric.tagged(keysRejectedCounter, "account", account.name))
    })
})

/**
 * A reading of the pool's capacity. Its wait is made only when asked for: a batch takes a reading
 * for every line it reads and waits on few of them.
 */
class CapacityReading implements Capacity {
  constructor(
    readonly permits: number,
    readonly free: number,
    readonly stalled: boolean,
    readonly unserved: number,
    private readonly changes: Signal,
    private readonly seen: number
  ) {}

  get changed(): Effect.Effect<void> {
    return this.changes.since(this.seen)
  }
}

/** Warns of an account reached over plain `http://` on another machine: its keys would cross a network unencrypted. */
const warnIfInTheClear = (member: Member): Effect.Effect<void> => {
  const { hostname, protocol } = new URL(member.account.baseUrl)
  return protocol !== "http:" || isLoopback(hostname) ? Effect.void : Effect.logWarning(
    `AccountPool: account ${member.name}: its base URL is plain http:// to ${hostname}, another machine: ` +
      "its keys cross the network unencrypted (https:// would keep them private)"
  )
}

/** Opens connections to an origin ahead of need: an undici client's (`Connector.preconnect`). */
type Preconnect = Undici["preconnect"]

/**
 * Opens `connections` to `member`'s origin (see `Transport.Options.warmUp`): none when the first
 * opened, or why the origin cannot be reached once every one failed.
 */
const connectTo = (preconnect: Preconnect, member: Member, connections: number): Effect.Effect<Option.Option<unknown>> =>
  Effect.async((resume) => preconnect(member.origin, connections, (error) => resume(Effect.succeed(Option.fromNullable(error)))))

const unreachableOf = (member: Member, error: unknown, scrub: Scrubber.Scrubber): Unreachable => ({
  account: member.name,
  origin: scrub(member.origin),
  reason: scrub(connectionFailure(error))
})

/** A failure of a connection that could not open: the request never left. */
const connectionNotOpened = (error: unknown): error is ApiError.TransportError =>
  ApiError.tagOf(error) === "TransportError" && (error as ApiError.TransportError).reason === "connect"

/**
 * What an attempt's end tells of its account's origin: reached when the upstream answered
 * (`error` undefined, or an error it sent), not when no connection opened, nothing when a
 * connection broke or a deadline passed.
 */
const reachedBy = (error: unknown): boolean | undefined => {
  switch (ApiError.tagOf(error)) {
    case "TransportError":
      return connectionNotOpened(error) ? false : undefined
    case "DeadlineExceeded":
      return undefined
    default:
      return true
  }
}

// ---------------------------------------------------------------------------------------------
// The pool
// ---------------------------------------------------------------------------------------------

const validate = (accounts: ReadonlyArray<Account>): void =>
  assertValid("AccountPool", [
    new Set(accounts.map((account) => account.name)).size === accounts.length ? undefined : "account names must be unique"
  ])

const stateOf = (member: Member, breakerState: CircuitBreaker.State): AccountStatus["state"] =>
  member.unavailable === undefined
    ? breakerState._tag === "HalfOpen" ? "half_open" : "serving"
    : member.unavailable.reason === "circuit_open"
    ? "open"
    : member.unavailable.reason

export const make = (
  accounts: ReadonlyArray<Account>,
  settings: Settings
): Effect.Effect<Service, never, HttpClient.HttpClient | CostLedger | Scope.Scope> => makeWith(accounts, settings, inMemory)

/** The pool, its permits granted by what `coordinate` makes. */
export const makeWith = <R>(
  accounts: ReadonlyArray<Account>,
  settings: Settings,
  coordinate: Coordinate<R>
): Effect.Effect<Service, never, HttpClient.HttpClient | CostLedger | Scope.Scope | R> =>
  Effect.gen(function*() {
    yield* Effect.sync(() => validate(accounts))
    const client = yield* HttpClient.HttpClient
    const ledger = yield* CostLedger
    const scope = yield* Effect.scope
    /**
     * Forks `effect` in the pool's scope, interruptible: the ends of calls that fork such fibers
     * run uninterruptibly, and a fiber forked there would be too (the scope would wait for it).
     */
    const forkInPool = (effect: Effect.Effect<void>) => Effect.forkIn(Effect.interruptible(effect), scope)
    const clock = yield* Effect.clock
    const now = () => monotonicMillis(clock)
    // An upstream may echo a key in the failure a log line or a status quotes.
    const scrub = Scrubber.make(accounts.flatMap((account) => account.keys))
    const lastFailureOf = (member: Member): string | undefined =>
      member.lastFailure === undefined ? undefined : describeFailure(member.lastFailure, scrub)

    // -- the accounts and their lanes ---------------------------------------------------------

    // One labels array per set of labels: a metric caches its series by the array it is given,
    // where `Metric.tagged` builds and hashes the series' key again on every update.
    const labelSets = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()
    const labels = (...pairs: ReadonlyArray<readonly [string, string]>): ReadonlyArray<MetricLabel.MetricLabel> => {
      const key = pairs.map(([name, value]) => `${name}=${value}`).join("\n")
      let set = labelSets.get(key)
      if (set === undefined) labelSets.set(key, set = pairs.map(([name, value]) => MetricLabel.make(name, value)))
      return set
    }

    const telemetry = yield* Effect.serviceOption(Telemetry.Telemetry)
    const accountModels = AccountModels.make(accounts, ledger.pricing)
    const memberState = settings.memberState ?? MemberState.inMemory
    // The lanes' limits back off on 429s; a server overloaded at any level is the breaker's, so
    // calls fail over from an account whose upstream sheds them all. A lone account has nowhere to
    // fail over to: its breaker opens only when every call fails, where an upstream shedding a
    // third of them kept it opening and each call waited out the open period its retry would not.
    const loneFailureRatio = accounts.length === 1 ? { failureRatio: 1 } : {}
    const breakerOptionsOf = (account: Account) =>
      ({ countLoadShed: "overload", ...loneFailureRatio, ...settings.breaker, ...account.breaker, name: account.name }) as const
    const members: ReadonlyArray<Member> = yield* Effect.forEach(accounts, (account, index) =>
      Effect.gen(function*() {
        const keys = yield* memberState.keys(account, { cooldown: settings.keyCooldown, label: `AccountPool: account ${account.name}` })
        const breakerOptions = breakerOptionsOf(account)
        const breaker = yield* memberState.breaker(breakerOptions)
        // The pool opens the transport's connections itself, after its balance preflight is sent.
        const told = countingRejections(account, keys)
        const transport = yield* Transport.make({ baseUrl: account.baseUrl, deadlines: settings.deadlines, warmUp: 0 }).pipe(
          Effect.provideService(KeyPool.KeyPool, told)
        )
        const slot = new AccountSlot(
          index,
          account.fallback,
          account.accountConcurrency ?? Infinity,
          (lane) => accountModels.serves(index, lane),
          (lane) => accountModels.laneKey(index, lane)
        )
        slot.canaries = breakerOptions.canaries ?? CircuitBreaker.defaults.canaries
        const sharedBalance = yield* memberState.balance(account)
        return new Member(account, slot, told, breaker, transport, sharedBalance, (model) => accountModels.mappedName(index, model))
      }))

    /** What the pool keeps of a lane: its metrics' labels, gauges and drop counter, and its status's counts. */
    interface LaneFigures {
      readonly tags: ReadonlyArray<MetricLabel.MetricLabel>
      /** The labels of an attempt on the lane that ended with `result`. */
      readonly resultTags: (result: string) => ReadonlyArray<MetricLabel.MetricLabel>
      readonly publish: () => void
      readonly dropped: () => void
      /** Attempts that drew a 429. */
      rateLimited: number
      /** Pico-USD of the priced attempts the lane carried, an integer as the ledger counts them. */
      costPico: bigint
    }
    const laneFigures = new Map<Lane, LaneFigures>()
    const laneTags = (account: Account, model: string) => labels(["account", account.name], ["model", model])
    const attemptTags = (account: Account, model: string, result: string) =>
      labels(["account", account.name], ["model", model], ["result", result])
    /** The figures of `lane`, made on its first use: they are used on every attempt. */
    const figuresOf = (lane: Lane): LaneFigures => {
      let figures = laneFigures.get(lane)
      if (figures !== undefined) return figures
      const account = members[lane.account.index]!.account
      const tags = laneTags(account, lane.model)
      const byResult = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()
      figures = {
        tags,
        resultTags: (result) => {
          let resultTags = byResult.get(result)
          if (resultTags === undefined) byResult.set(result, resultTags = attemptTags(account, lane.model, result))
          return resultTags
        },
        publish: () => {
          LimiterInternal.limitGauge.unsafeUpdate(lane.limit, tags)
          LimiterInternal.inFlightGauge.unsafeUpdate(lane.inFlight, tags)
        },
        dropped: () => LimiterInternal.droppedCounter.unsafeUpdate(1, tags),
        rateLimited: 0,
        costPico: 0n
      }
      laneFigures.set(lane, figures)
      return figures
    }

    // Notified whenever the pool may have more room; a capacity reading's wait sees a change
    // that came after the reading.
    const roomChanges = new Signal()
    const roomMayHaveGrown = () => roomChanges.notify()

    const queuedTags = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()
    const publishQueued = (model: string) => {
      let tags = queuedTags.get(model)
      if (tags === undefined) queuedTags.set(model, tags = labels(["model", model]))
      queuedGauge.unsafeUpdate(dispatcher.queued(model), tags)
    }
    const publishLane = (lane: Lane) => {
      figuresOf(lane).publish()
      for (const model of lane.models) publishQueued(model)
    }
    const queued = (model: string) => dispatcher.queued(model)
    /**
     * Starts the series of `account`'s lane named `key` at what a lane holds when made: `limit`,
     * none in flight, its counters at 0. A series shows only from its first update, and
     * Prometheus' `rate()` and `absent()` need it from the start.
     */
    const startSeries = (account: Account, key: string, limit: number) => {
      const tags = laneTags(account, key)
      LimiterInternal.limitGauge.unsafeUpdate(limit, tags)
      LimiterInternal.inFlightGauge.unsafeUpdate(0, tags)
      LimiterInternal.droppedCounter.unsafeUpdate(0, tags)
      retriesCounter.unsafeUpdate(0, tags)
      for (const result of resultsFromStart) attemptsCounter.unsafeUpdate(0, attemptTags(account, key, result))
    }
    const laneModel = accountModels.laneOf
    const slots = members.map((member) => member.slot)
    const dispatcher: Lanes = yield* coordinate(accounts, slots, {
      opened: (lane) => startSeries(members[lane.account.index]!.account, lane.model, lane.limit),
      changed: publishLane,
      roomMayHaveGrown
    })
    // Lanes are made on their model's first call: the models the pool is known to serve have
    // their series before, at the limit their lanes start with.
    for (const model of new Set(Array.from(servedModels(accounts, ledger.pricing), laneModel))) {
      publishQueued(model)
      for (const { account, slot } of members) {
        if (slot.serves(model)) startSeries(account, slot.laneKey(model), policyFor(account).limit)
      }
    }

    // -- availability -------------------------------------------------------------------------

    /**
     * Since when no account serves (undefined while one does; a balance being checked at start, or
     * a breaker half-open, trying a call, is not serving yet), and the longest `maxWait` a call
     * waited out in that time, all of its wait:
     * a call that would wait as long or less fails at once, unless an account is about to serve (a
     * batch's lines during an outage longer than their wait fail in one wait, not one wait per wave
     * of lines). A call that waited for a busy lane, then saw an account go out, marks nothing.
     */
    let outageSince: number | undefined
    let waitedOutMillis = 0

    /**
     * The same for a model no account may serve while others serve other models (the accounts
     * that serve it out of balance, say), by lane: since when, and the longest wait that ran out.
     * Cleared when an account that serves the model serves again.
     */
    const modelOutages = new Map<string, { readonly since: number; waitedOut: number }>()

    /** Whether an account may serve `lane` now, or is about to (the dispatcher's reading of it). */
    const laneMayBeServedSoon = (lane: string): boolean => maySoonServe(slots, lane)

    /** Whether an account `excluded` leaves may serve now, or is about to (its balance being checked). */
    const someMayServeSoon = (excluded: ReadonlySet<number>): boolean =>
      members.some(({ slot }) => !excluded.has(slot.index) && (slot.available || slot.pending))

    /**
     * Why `member` cannot serve now, if it cannot: out of balance, every key resting, breaker open
     * (its breaker in `state`).
     */
    const unavailability = (member: Member, state: CircuitBreaker.State): Effect.Effect<Unavailable | undefined> =>
      Effect.gen(function*() {
        if (member.balance._tag === "Out") return { reason: "out_of_balance", until: member.balance.nextCheck }
        if (member.balance._tag === "Checking") return { reason: "checking_balance", until: member.balance.until }
        if ((yield* member.keys.available) === 0) {
          return { reason: "no_keys", until: Option.getOrElse(yield* member.keys.cooldownEnd, () => Infinity) }
        }
        if (state._tag === "Open") return { reason: "circuit_open", until: state.until }
        if (state._tag === "Isolated") return { reason: "circuit_open", until: Infinity }
        // Its calls would only fail to connect, one retry after another: they wait for it, as for a
        // breaker. Not for a certificate this machine does not trust, which no wait mends: each
        // call fails at once, saying how to trust it.
        if (!member.reachable && !isUntrustedCertificate(member.unreachableCause)) {
          return { reason: "unreachable", until: member.nextReachTry }
        }
        return undefined
      })

    /**
     * Reads `member`'s state into the dispatcher: the calls nothing will ever take are refused if
     * it went out, and the queues are served on any change (an account going out, or its balance
     * check ending, may let a fallback serve them). With every key resting, it is read again as
     * the first one returns.
     */
    const refresh = (member: Member): Effect.Effect<void> =>
      Effect.gen(function*() {
        const breaker = yield* member.breaker.state
        const unavailable = yield* unavailability(member, breaker)
        const pending = unavailable?.reason === "checking_balance"
        const probing = breaker._tag === "HalfOpen"
        const changed = member.slot.available !== (unavailable === undefined) || member.slot.pending !== pending ||
          member.slot.probing !== probing
        member.unavailable = unavailable
        member.slot.available = unavailable === undefined
        member.slot.pending = pending
        member.slot.setProbing(probing)
        // An account going out may let a fallback count, so any change may grow the capacity.
        if (changed) roomMayHaveGrown()
        // A half-open breaker takes a canary, and an outage that fails it goes on: the waits that
        // ran out in it still hold (else each reopening would have a batch's lines wait again).
        if (unavailable === undefined && breaker._tag !== "HalfOpen") {
          outageSince = undefined
          waitedOutMillis = 0
          for (const lane of modelOutages.keys()) if (member.slot.serves(lane)) modelOutages.delete(lane)
        } else if (unavailable !== undefined && outageSince === undefined && !members.some(({ slot }) => slot.available)) {
          outageSince = now()
        }
        if (unavailable !== undefined) dispatcher.refuse((waiter) => !mayBePlaced(waiter.excluded))
        if (changed) dispatcher.dispatchAll()
        if (unavailable?.reason === "no_keys") yield* wakeAsKeysReturn(member, unavailable.until)
      })

    /**
     * When every key of `member` rests, the first one back is a time, not an event: a fiber wakes
     * then and reads its state again (none of its calls, all refused, would). A key back from its
     * cooldown is not proven: a DeepSeek account asks its balance with it first, as at start (a
     * 401 sets it aside again), so it neither serves nor counts as serving on a key still rejected.
     */
    const wakeAsKeysReturn = (member: Member, back: number): Effect.Effect<void> => {
      if (!Number.isFinite(back) || (member.keysBackAt !== undefined && member.keysBackAt <= back)) return Effect.void
      member.keysBackAt = back
      const wake = Effect.suspend(() => {
        member.keysBackAt = undefined
        return probesKeys(member) ? Effect.zipRight(preflight(member), refresh(member)) : refresh(member)
      })
      return Effect.asVoid(forkInPool(Effect.zipRight(Effect.sleep(Duration.millis(Math.max(0, back - now()))), wake)))
    }

    // -- reachability: connections that cannot open --------------------------------------------

    // Only over undici's client can the pool open a connection without sending a request.
    const preconnect = Option.map(undiciOf(client), (undici) => undici.preconnect)

    /** `member` out of service until its next connection try, a `reachProbeInterval` from now. */
    const outUntilNextReachTry = (member: Member) =>
      Effect.suspend(() => {
        member.nextReachTry = now() + Duration.toMillis(settings.reachProbeInterval)
        return refresh(member)
      })

    /** Tries a connection to `member`'s origin every `reachProbeInterval` until it is reached (by one, or by a call). */
    const probeReach = (member: Member, preconnect: Preconnect) =>
      Effect.gen(function*() {
        while (!member.reachable) {
          yield* Effect.sleep(settings.reachProbeInterval)
          if (member.reachable) break
          if (Option.isNone(yield* connectTo(preconnect, member, 1))) yield* regainedReach(member)
          else yield* outUntilNextReachTry(member)
        }
      }).pipe(Effect.ensuring(Effect.sync(() => {
        member.probingReach = false
      })))

    /**
     * Marks `member`'s origin unreachable (a readiness check then says so, `AccountStatus.reachable`),
     * says so once, and probes it until a connection opens: until then it serves no call (its calls
     * wait, or go to another account). Over another client than undici's nothing could probe it,
     * so nothing is marked.
     */
    const lostReach = (member: Member, cause: unknown): Effect.Effect<void> =>
      Option.match(preconnect, {
        onNone: () => Effect.void,
        onSome: (preconnect) =>
          Effect.suspend(() => {
            if (!member.reachable) return Effect.void
            member.reachable = false
            member.unreachableCause = cause
            const { account, origin, reason } = unreachableOf(member, cause, scrub)
            const meanwhile = isUntrustedCertificate(cause)
              ? "its calls fail at once until the certificate is trusted"
              : "its calls wait for it, or go to another account, until it can be reached"
            return Effect.logWarning(`AccountPool: account ${account}: cannot connect to ${origin} (${reason}); ${meanwhile}`).pipe(
              Effect.zipRight(outUntilNextReachTry(member)),
              Effect.zipRight(Effect.suspend(() => {
                if (member.probingReach) return Effect.void
                member.probingReach = true
                return forkInPool(probeReach(member, preconnect))
              }))
            )
          })
      })

    /**
     * Marks `member`'s origin reachable again. A breaker the outage opened need not wait out its
     * open period (up to `maxOpenFor` after trips in a row): it half-opens, and its canaries test
     * the upstream now.
     */
    const regainedReach = (member: Member): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (member.reachable) return Effect.void
        member.reachable = true
        return Effect.logInfo(`AccountPool: account ${member.name}: connected to ${scrub(member.origin)} again`).pipe(
          Effect.zipRight(member.breaker.halfOpen),
          Effect.zipRight(refresh(member))
        )
      })

    /** What the end of an attempt sent to `member` tells of its origin (`reachedBy`). */
    const noteReach = (member: Member, error: unknown): Effect.Effect<void> => {
      const reached = reachedBy(error)
      if (reached === undefined || reached === member.reachable) return Effect.void
      return reached ? regainedReach(member) : lostReach(member, (error as ApiError.TransportError).cause)
    }

    // -- balance: preflight and recovery ------------------------------------------------------

    const probeInterval = Duration.toMillis(settings.balanceProbeInterval)
    const cooldown = Duration.toMillis(settings.fallbackCooldown)

    /** The next probe, or the return (`fallbackCooldown` after the 402) of an account that cannot be probed. */
    const nextCheck = (probing: boolean, at: number, outSince: number) =>
      probing ? at + probeInterval : Math.max(at, outSince + cooldown)

    /** Waits for each check, probes when it can, until the balance is back; then the account serves again. */
    const recover = (member: Member, outSince: number): Effect.Effect<void> =>
      Effect.gen(function*() {
        let probing = member.account.provider === "deepseek"
        while (member.balance._tag === "Out") {
          yield* Effect.sleep(Duration.millis(Math.max(0, member.balance.nextCheck - now())))
          // Another process's probe may have brought it back meanwhile.
          if (member.balance._tag !== "Out") break
          const result: ProbeResult = probing ? yield* member.sharedBalance.check(probeBalance(client, member, scrub)) : "available"
          probing &&= result !== "no_endpoint"
          // Probes that tell nothing (a 500, a page, a timeout) keep it out no longer than if it could not be probed.
          const back = result === "available" || (result === "failed" && now() >= outSince + cooldown)
          member.balance = back ? balanceOk : { _tag: "Out", nextCheck: nextCheck(probing, now(), outSince) }
          yield* member.balance._tag === "Out" ? member.sharedBalance.markOut(member.balance.nextCheck - now()) : member.sharedBalance.markOk
          yield* refresh(member)
        }
        yield* Effect.logInfo(`AccountPool: account ${member.name} is serving again`)
      }).pipe(Effect.ensuring(Effect.sync(() => {
        member.recovering = false
      })))

    // Uninterruptible: an account marked out always gets its recovery fiber.
    const takeOutOfBalance = (member: Member, why: string) =>
      Effect.uninterruptible(Effect.suspend(() => {
        if (member.balance._tag === "Out") return Effect.void
        const at = now()
        const probing = member.account.provider === "deepseek"
        member.balance = { _tag: "Out", nextCheck: nextCheck(probing, at, at) }
        const marked = member.sharedBalance.markOut(member.balance.nextCheck - at)
        const comeback = probing
          ? `probing its balance every ${Duration.format(settings.balanceProbeInterval)}`
          : `back in ${Duration.format(settings.fallbackCooldown)}`
        return Effect.logWarning(`AccountPool: account ${member.name} is out of balance (${why}); ${comeback}`).pipe(
          Effect.zipRight(marked),
          Effect.zipRight(refresh(member)),
          // A recovery still asleep (the account was marked back, then out again, meanwhile) goes on.
          Effect.zipRight(Effect.suspend(() => {
            if (member.recovering) return Effect.void
            member.recovering = true
            return forkInPool(recover(member, at))
          }))
        )
      }))

    /** Whether `member`'s balance is asked (`preflight`), which proves its keys: DeepSeek's, with `preflight` on, while in balance. */
    const probesKeys = (member: Member): boolean =>
      settings.preflight && member.account.provider === "deepseek" && member.balance._tag === "Ok"

    /**
     * Asks `member`'s balance once, in the background: until it answers, the account takes no call
     * (calls wait, or go to another account); an unavailable balance takes it out until a probe
     * says otherwise. A probe that fails proves nothing: the account serves.
     */
    const preflight = (member: Member) =>
      Effect.gen(function*() {
        member.balance = { _tag: "Checking", until: now() + Duration.toMillis(probeTimeout) }
        return yield* Effect.forkIn(
          Effect.flatMap(member.sharedBalance.check(probeBalanceWithEveryKey(client, member, scrub)), (result) => {
            // Another process marked it out meanwhile: its recovery decides.
            if (member.balance._tag !== "Checking") return Effect.void
            if (result === "unavailable") {
              member.balance = balanceOk
              return takeOutOfBalance(member, "its balance is unavailable")
            }
            member.balance = balanceOk
            return refresh(member)
          }),
          scope
        )
      })


    // -- placing a call ------------------------------------------------------------------------

    /** Why each account cannot serve a call to `lane` that leaves out `excluded`, and the earliest time one may. */
    const noAccount = (lane: string, excluded: ReadonlySet<number>): ApiError.NoAccountAvailable => {
      const at = now()
      const reasons = members.map((member): ApiError.AccountUnavailable =>
        !member.slot.serves(lane)
          ? { account: member.name, reason: "model_not_served", until: Infinity }
          : member.unavailable !== undefined
          ? {
            account: member.name,
            reason: member.unavailable.reason,
            until: member.unavailable.until,
            ...(member.lastFailure === undefined ? {} : { lastFailure: lastFailureOf(member) })
          }
          : { account: member.name, reason: "busy", until: excluded.has(member.slot.index) ? Infinity : at }
      )
      const first = Math.min(...reasons.map((reason) => reason.until))
      return new ApiError.NoAccountAvailable({
        retryAfter: Number.isFinite(first) ? Option.some(Duration.millis(Math.max(0, first - at))) : Option.none(),
        accounts: reasons
      })
    }

    /**
     * Whether a call leaving out `excluded` may ever be placed: some account it may use is
     * available (busy or not), or will be at a known time. Keys rejected by 401 are not waited
     * for: a wrong key is not transient, and its cooldown is a safety valve, not a forecast.
     */
    const mayBePlaced = (excluded: ReadonlySet<number>): boolean =>
      members.some((member) =>
        !excluded.has(member.slot.index) &&
        (member.unavailable === undefined ||
          (member.unavailable.reason !== "no_keys" && Number.isFinite(member.unavailable.until)))
      )

    /** A grant's permit, reporting to its lane and releasing it with the scope. */
    const permitOf = (grant: LaneGrant) => {
      const lane = grant.lane
      return LimiterInternal.makePermit(lane.policy, lane, grant, clock, {
        classify: undefined,
        refills: () => queuedOn(lane, queued) > 0 && lane.inFlight <= lane.limit,
        changed: () => publishLane(lane),
        dropped: figuresOf(lane).dropped
      })
    }

    const release = (grant: LaneGrant) =>
      Effect.sync(() => {
        dispatcher.release(grant)
        publishLane(grant.lane)
        if (grant.lane.hasRoom && queuedOn(grant.lane, queued) === 0) roomMayHaveGrown()
      })

    type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

    /**
     * Whether `request` comes back for another attempt: sent before (the client's retry), or
     * failing over from an account it left out. It then waits ahead of the calls not yet sent.
     */
    const isReturning = (request: ChatCompletionRequest, lane: string, excluded: ReadonlySet<number>): boolean =>
      sent.has(request) || excluded.size > accountModels.notServing(lane).size

    /**
     * Waits (at most `maxWait`, interruptible by `restore`) for a permit of `request`'s model on an
     * account that may serve it, then answers it with its member. Runs uninterruptible: the caller
     * owns the grant from here and releases it (`release`).
     */
    const place = (
      request: ChatCompletionRequest,
      options: CallOptions | undefined,
      excluded: ReadonlySet<number>,
      restore: Restore
    ): Effect.Effect<Placed, ApiError.NoAccountAvailable> => {
      const lane = laneModel(request.model)
      if (!mayBePlaced(excluded) || (waitedOutMillis > 0 && maxWaitOf(options) <= waitedOutMillis && !someMayServeSoon(excluded))) {
        return Effect.fail(noAccount(lane, excluded))
      }
      const modelOutage = modelOutages.size === 0 ? undefined : modelOutages.get(lane)
      if (
        modelOutage !== undefined && modelOutage.waitedOut > 0 && maxWaitOf(options) <= modelOutage.waitedOut &&
        !laneMayBeServedSoon(lane)
      ) {
        return Effect.fail(noAccount(lane, excluded))
      }
      const entry = dispatcher.enter(lane, options?.priority ?? "interactive", excluded, isReturning(request, lane, excluded))
      publishQueued(lane)
      if (entry._tag === "Granted") return Effect.sync(() => placedOn(entry.grant))
      if (!laneMayBeServedSoon(lane)) {
        if (modelOutage === undefined) modelOutages.set(lane, { since: now(), waitedOut: 0 })
        // A call no account may serve waits without a permit: a batch reading ahead may start others.
        roomMayHaveGrown()
      }
      return Effect.map(awaitGrant(entry.waiter, restore, options, excluded), placedOn)
    }

    const placedOn = (grant: LaneGrant): Placed => {
      publishLane(grant.lane)
      const member = members[grant.lane.account.index]!
      member.calls++
      return { member, grant, permit: permitOf(grant).permit, placedAt: now() }
    }

    /**
     * `use` of a placed attempt in one exit handler, with no scope per attempt: `settle` sees how
     * it ended (an interruption too), a failure becomes what `failed` makes of it (interruptibly),
     * then the permit is released.
     */
    const placedAttempt = <A, E, E2>(
      request: ChatCompletionRequest,
      options: CallOptions | undefined,
      excluded: ReadonlySet<number>,
      use: (placed: Placed) => Effect.Effect<A, E>,
      settle: (placed: Placed, exit: Exit.Exit<A, E>) => Effect.Effect<void>,
      failed: (placed: Placed, cause: Cause.Cause<E>) => Effect.Effect<never, E2>
    ): Effect.Effect<A, E2 | ApiError.NoAccountAvailable> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(place(request, options, excluded, restore), (placed) =>
          Effect.flatMap(Effect.exit(restore(LimiterInternal.effectOf(use, placed))), (exit) =>
            // Released however the rest ends: a defect in settling (its accounting) included.
            Effect.ensuring(
              Effect.zipRight(
                settle(placed, exit),
                Exit.isSuccess(exit) ? Effect.succeed(exit.value) : restore(failed(placed, exit.cause))
              ),
              release(placed.grant)
            )))
      )

    /** A placed attempt whose permit is released when the scope closes (a stream's). */
    const placeScoped = (
      request: ChatCompletionRequest,
      options: CallOptions | undefined,
      excluded: ReadonlySet<number>
    ): Effect.Effect<Placed, ApiError.NoAccountAvailable, Scope.Scope> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.tap(place(request, options, excluded, restore), (placed) => ScopeFinalizer.addFinalizer(release(placed.grant)))
      )

    const maxWaitOf = (options: CallOptions | undefined): number =>
      Duration.toMillis(options?.maxWait === undefined ? settings.maxWait : Duration.decode(options.maxWait))

    const awaitGrant = (
      waiter: Waiter,
      restore: Restore,
      options: CallOptions | undefined,
      excluded: ReadonlySet<number>
    ): Effect.Effect<LaneGrant, ApiError.NoAccountAvailable> => {
      const maxWait = maxWaitOf(options)
      const enteredAt = now()
      const gaveUp = Effect.zipRight(
        Effect.sleep(Duration.millis(maxWait)),
        Effect.suspend(() => {
          if (outageSince !== undefined && outageSince <= enteredAt) waitedOutMillis = Math.max(waitedOutMillis, maxWait)
          const modelOutage = modelOutages.get(waiter.model)
          if (modelOutage !== undefined && modelOutage.since <= enteredAt && !laneMayBeServedSoon(waiter.model)) {
            modelOutage.waitedOut = Math.max(modelOutage.waitedOut, maxWait)
          }
          return Effect.fail(noAccount(waiter.model, excluded))
        })
      )
      return restore(Effect.raceFirst(Deferred.await(waiter.wake), gaveUp)).pipe(
        // Interrupted or out of time: leave the queue, or hand back a permit granted meanwhile.
        // Turned away (woken without a grant): it left the queue, which the gauge must say now.
        Effect.onExit((exit) =>
          Exit.isSuccess(exit) && waiter.grant !== undefined ? Effect.void : Effect.sync(() => {
            dispatcher.cancel(waiter)
            publishQueued(waiter.model)
          })
        ),
        Effect.flatMap(() => waiter.grant === undefined ? Effect.fail(noAccount(waiter.model, excluded)) : Effect.succeed(waiter.grant))
      )
    }

    // -- failover -----------------------------------------------------------------------------

    /**
     * Accounts a failed-over attempt leaves out: only the member if its state still lets it serve
     * (an error that changed nothing the pool tracks, such as a 403, must not be met twice). An
     * account out of balance, keyless or with its breaker open is out by its state, and comes back
     * with it.
     */
    const failOver = (member: Member, error: PoolError | CircuitBreaker.CircuitOpen) =>
      Effect.gen(function*() {
        const tag = ApiError.tagOf(error) ?? "unknown"
        // A breaker's refusal is no failure of the account's: its state is the breaker's series.
        if (tag !== "CircuitOpen") {
          yield* Metric.increment(Metric.tagged(Metric.tagged(failoversCounter, "account", member.name), "error", tag))
        }
        // The policy around the pool sees only the call's end: an attempt failed over is counted and told here.
        if (!wasNotSent(ApiError.classify(error), error)) {
          ToldAttempts.markCounted(error)
          yield* Metric.increment(Metric.tagged(attemptFailuresCounter, "error", tag))
          if (Option.isSome(telemetry)) {
            ToldAttempts.markTold(error)
            yield* telemetry.value.attemptFailed(error)
          }
        }
        if (tag === "InsufficientBalance") yield* takeOutOfBalance(member, "402")
        yield* refresh(member)
        AttemptRecords.discard(error)
        return yield* Effect.fail(new FailedOver({ member, cause: error }))
      })

    /** The next exclusions after failing over from `member`. */
    const excludeAfter = (excluded: ReadonlySet<number>, member: Member): ReadonlySet<number> =>
      member.slot.available ? new Set(excluded).add(member.slot.index) : excluded

    /**
     * The call's failure after it failed over: when no account is left for it and the account it
     * failed over from is left out by this call alone (a 403, a certificate this machine does not
     * trust), that account's error says why, where "no account can serve" would not. An account
     * out by its state (no usable key, out of balance, its breaker open) keeps the pool's answer,
     * which says so and when it may serve again.
     */
    const explained = ({ cause, member }: FailedOver) => (error: PoolError): PoolError => {
      if (error._tag !== "NoAccountAvailable" || cause._tag === "CircuitOpen" || !member.slot.available) return error
      AttemptRecords.keep(cause)
      return cause
    }

    /**
     * What moves an attempt to another account (as does the refusal of its breaker): an account
     * problem, or a connection that could not be opened (the request never left; another account,
     * a fallback on another origin say, may answer it now, where a retry here would wait for this
     * one's breaker).
     */
    const movesOn = (verdict: ApiError.Verdict): boolean =>
      verdict._tag === "Account" || (verdict._tag === "Outage" && verdict.unsent === true)

    const failsOver = (error: PoolError): boolean => movesOn(ApiError.classify(error))

    // -- cost ---------------------------------------------------------------------------------

    /**
     * `delivered`: output reached this client (with no usage, it was billed for what is not
     * known). `failure`: the error of a failed attempt, which keeps its entry (`AttemptRecords`).
     */
    const record = (
      placed: Placed,
      models: Models,
      usage: Usage | undefined,
      disposition: Disposition,
      delivered: boolean,
      failure?: unknown
    ) => {
      const entry: CostLedgerEntry = { account: placed.member.name, model: models.served, sentModel: models.sent, usage, disposition, delivered }
      return Effect.flatMap(ledger.record(entry), (cost) => {
        if (failure !== undefined) AttemptRecords.remember(failure, entry, disposition)
        if (cost._tag === "Priced") figuresOf(placed.grant.lane).costPico += picoOfUsd(cost.usd)
        return GenAi.noteCost(placed, cost)
      })
    }

    /**
     * Counts an attempt that reached its account's upstream, in the account's figures and the
     * metrics of its (account, model): answered, failed, or a stream its caller stopped (a client
     * that left, a batch's drain), which is neither. The outer client hands every attempt of a call the same
     * request object (`Resilient` a copy made for the call), so one sent before makes this a retry; a failure that moves the attempt on
     * (`movesOn`) fails over within the attempt, so the next account's send is not a retry.
     */
    const sent = new WeakSet<ChatCompletionRequest>()
    const countSent = (placed: Placed, request: ChatCompletionRequest, end: SentEnd) =>
      Effect.suspend(() => {
        const { member } = placed
        const figures = figuresOf(placed.grant.lane)
        const { tags } = figures
        const retry = sent.has(request)
        if (retry) {
          member.retries++
          retriesCounter.unsafeUpdate(1, tags)
        } else if (end._tag !== "Failed" || !movesOn(end.verdict)) sent.add(request)
        const result = end._tag === "Answered" ? "ok" : end._tag === "Stopped" ? "stopped" : ApiError.tagOf(end.error) ?? "unknown"
        if (end._tag === "Answered") {
          member.succeeded++
          member.lastFailure = undefined
        } else if (end._tag === "Failed") {
          member.failed++
          member.lastFailure = end.error
          if (result === "RateLimited") figures.rateLimited++
        }
        attemptsCounter.unsafeUpdate(1, figures.resultTags(result))
        attemptDuration.unsafeUpdate((now() - placed.placedAt) / 1000, tags)
        return noteReach(member, end._tag === "Failed" ? end.error : undefined)
      })

    /**
     * Records an attempt that failed after it reached the upstream, priced by the model the
     * response named when one arrived, as the last of its call: `truncated` when output had
     * reached the caller (a stream's content, a body cut short), else `failed`. Retried or failed
     * over from, it counts as `discarded` (`AttemptRecords`): what it carried is retry tax.
     */
    const recordFailure = (
      placed: Placed,
      request: ChatCompletionRequest,
      models: Models,
      error: unknown,
      delivered: boolean
    ) => {
      const verdict = ApiError.classify(error)
      if (wasNotSent(verdict, error)) return Effect.void
      const apiError = error as ApiError.ApiError
      const partial = ApiError.partialOf(apiError)
      const output = ApiError.deliveredOutput(apiError)
      return Effect.zipRight(
        countSent(placed, request, { _tag: "Failed", verdict, error }),
        record(
          placed,
          // Priced by the model the answer named, when one arrived (a non-streaming answer cut short).
          { ...models, served: partial.model ?? models.served },
          partial.usage,
          delivered || output ? "truncated" : "failed",
          output,
          error
        )
      )
    }

    const budget = ledger.guard

    // -- spans, when traced: one per attempt placed on an account -----------------------------

    /** What the span of an attempt placed on an account says of it, queued since `enteredAt`. */
    const placementOf = (placed: Placed, request: ChatCompletionRequest, enteredAt: number): GenAi.Placement => ({
      placed,
      account: placed.member.account,
      model: placed.member.modelFor(request.model),
      queueWaitMillis: placed.placedAt - enteredAt
    })

    // -- calls --------------------------------------------------------------------------------

    const create: Service["create"] = (request, options) => {
      // The budget again as the request goes: the call may have waited for its permit while others spent it.
      const call = ({ member, permit }: Placed) =>
        Effect.zipRight(
          budget,
          member.breaker.protect(member.transport.create(member.requestFor(request), permitOptions(options, permit, "create")))
        )
      // The permit told how the attempt ended, then its cost and counts.
      const settled = (placed: Placed, exit: Exit.Exit<ChatCompletion, PoolError | CircuitBreaker.CircuitOpen>) => {
        const sent = placed.member.modelFor(request.model)
        if (sent !== request.model && Exit.isSuccess(exit)) Substitutes.markSubstitute(exit.value)
        return Effect.zipRight(
          placed.permit.settle(exit),
          Exit.isSuccess(exit)
            ? Effect.zipRight(
              countSent(placed, request, answered),
              record(placed, { served: exit.value.model, sent }, exit.value.usage ?? undefined, "kept", true)
            )
            : Option.match(Cause.failureOption(exit.cause), {
              onNone: () => Effect.void,
              onSome: (error) => recordFailure(placed, request, { served: sent, sent }, error, false)
            })
        )
      }
      const failed = ({ member }: Placed, cause: Cause.Cause<PoolError | CircuitBreaker.CircuitOpen>) =>
        Effect.catchAll(Effect.failCause(cause), (error): Effect.Effect<never, PoolError | FailedOver> =>
          error._tag === "CircuitOpen" || failsOver(error) ? failOver(member, error) : Effect.fail(error)
        )
      const attempt = (excluded: ReadonlySet<number>): Effect.Effect<ChatCompletion, PoolError> =>
        whenTraced(placedAttempt(request, options, excluded, call, settled, failed), () => {
          const enteredAt = now()
          // Settled inside the attempt's span, which carries its cost.
          return placedAttempt(request, options, excluded, (placed) =>
            GenAi.attemptSpan(
              "weatherproof.AccountPool.create",
              request,
              placementOf(placed, request, enteredAt),
              Effect.onExit(call(placed), (exit) => settled(placed, exit))
            ), noSettle, failed)
        }).pipe(Effect.catchTag("FailedOver", (failedOver) =>
          Effect.mapError(attempt(excludeAfter(excluded, failedOver.member)), explained(failedOver))))
      return Effect.zipRight(budget, attempt(accountModels.notServing(laneModel(request.model))))
    }

    /** Before any chunk reached the caller an account-level failure fails over; after, it is the answer. */
    const answerOrFailOver = (member: Member, error: PoolError, delivered: boolean): Effect.Effect<never, PoolError | FailedOver> =>
      !delivered && failsOver(error) ? failOver(member, error) : Effect.fail(error)

    /** The breaker's admission of a stream; an open breaker fails the attempt over. */
    const admitted = (member: Member, permit: Limiter.Permit) =>
      Effect.catchAll(member.breaker.admit, (open) => Effect.zipRight(permit.settle(Exit.fail(open)), failOver(member, open)))

    /**
     * A stream on `member`, opened in the attempt's scope: its breaker's admission and the permit
     * for as long as it runs. As it ends, the permit and the breaker are told, and its cost
     * recorded; as it fails (opening or later), the same, then the failure fails the attempt over
     * or is the answer (`answerOrFailOver`). One its caller stops (or interrupts) is told to the
     * permit and the breaker as its scope closes, and recorded once output reached the caller:
     * billed, as kept when its usage had come, else as truncated (unmetered).
     */
    const streamOn = (
      placed: Placed,
      request: ChatCompletionRequest,
      options: CallOptions | undefined
    ): StreamPull.Opening<ChatCompletionChunk, PoolError | FailedOver> =>
      Effect.flatMap(admitted(placed.member, placed.permit), (settleBreaker) => {
        const { member, permit } = placed
        const model = member.modelFor(request.model)
        let delivered = false
        let usage: Usage | undefined
        let servedModel = model
        let settled = false
        const settle = (exit: Exit.Exit<unknown, unknown>) => {
          settled = true
          return Effect.zipRight(permit.settle(exit), settleBreaker(exit))
        }
        const counted = (end: SentEnd, disposition: Disposition) =>
          Effect.zipRight(countSent(placed, request, end), record(placed, { served: servedModel, sent: model }, usage, disposition, true))
        const ended = () => Effect.zipRight(settle(Exit.void), counted(answered, "kept"))
        const failed = (error: PoolError) =>
          settle(Exit.fail(error)).pipe(
            Effect.zipRight(recordFailure(placed, request, { served: servedModel, sent: model }, error, delivered)),
            Effect.zipRight(answerOrFailOver(member, error, delivered))
          )
        // Its permit and breaker told it ended (ignored), so that its lane no longer counts it accepted.
        const stopped = Effect.suspend(() => {
          if (settled) return Effect.void
          const told = settle(LimiterInternal.interrupted)
          return delivered ? Effect.zipRight(told, counted(stoppedByCaller, usage === undefined ? "truncated" : "kept")) : told
        })
        const opening = Effect.zipRight(
          budget,
          StreamPull.openingOf(member.transport.stream(member.requestFor(request), permitOptions(options, permit, "stream")))
        )
        return Effect.zipRight(ScopeFinalizer.addFinalizer(stopped), Effect.matchEffect(opening, {
          onFailure: failed,
          onSuccess: (pull) =>
            Effect.succeed(Effect.matchEffect(pull, {
              onFailure: Option.match({
                onNone: () => Effect.zipRight(ended(), Effect.fail(Option.none())),
                onSome: (error) => Effect.mapError(failed(error), Option.some)
              }),
              // Noted once per batch of chunks, not by an effect per chunk.
              onSuccess: (chunks) => {
                for (const chunk of chunks) {
                  delivered = true
                  usage = chunk.usage ?? usage
                  servedModel = chunk.model
                  if (model !== request.model) Substitutes.markSubstitute(chunk)
                }
                return Effect.succeed(chunks)
              }
            }))
        }))
      })

    const stream: Service["stream"] = (request, options) => {
      const attempt = (excluded: ReadonlySet<number>): StreamPull.Opening<ChatCompletionChunk, PoolError | FailedOver> => {
        const placement = placeScoped(request, options, excluded)
        const run = (placed: Placed) => streamOn(placed, request, options)
        return whenTraced(Effect.flatMap(placement, run), () => {
          const enteredAt = now()
          return Effect.flatMap(placement, (placed) =>
            StreamPull.openingOf(GenAi.attemptStreamSpan(
              "weatherproof.AccountPool.stream",
              request,
              placementOf(placed, request, enteredAt),
              StreamPull.fromOpening(run(placed))
            )))
        })
      }
      // Each attempt in a scope of its own, closed (its permit released) before the next is placed.
      return StreamPull.fromOpening(Effect.suspend(() => {
        let excluded = accountModels.notServing(laneModel(request.model))
        let last: FailedOver | undefined
        const failedOver = (error: PoolError | FailedOver) => {
          if (error._tag !== "FailedOver") return Effect.fail(last === undefined ? error : explained(last)(error))
          excluded = excludeAfter(excluded, error.member)
          last = error
          return Effect.succeed(attempt(excluded))
        }
        return Effect.zipRight(budget, StreamPull.recovering(attempt(excluded), failedOver))
      }))
    }

    // -- state --------------------------------------------------------------------------------

    const snapshot = Effect.forEach(members, (member) =>
      Effect.gen(function*() {
        yield* refresh(member)
        const breakerState = yield* member.breaker.state
        const models = Array.from(member.slot.lanes.values(), (lane) => ({
          model: lane.model,
          limit: lane.limit,
          inFlight: lane.inFlight,
          queued: queuedOn(lane, queued),
          rateLimited: laneFigures.get(lane)?.rateLimited ?? 0,
          costUsd: usdOfPico(laneFigures.get(lane)?.costPico ?? 0n)
        }))
        return {
          name: member.name,
          provider: member.account.provider,
          fallback: member.account.fallback,
          state: stateOf(member, breakerState),
          limit: models.reduce((sum, lane) => sum + lane.limit, 0),
          inFlight: member.slot.inFlight,
          models,
          usableKeys: yield* member.keys.available,
          restingKeys: yield* member.keys.resting,
          calls: member.calls,
          succeeded: member.succeeded,
          failed: member.failed,
          rateLimited: models.reduce((sum, lane) => sum + lane.rateLimited, 0),
          retries: member.retries,
          lastFailure: lastFailureOf(member),
          reachable: member.reachable
        } satisfies AccountStatus
      }))

    // Where an open account's calls go meanwhile: a pool of one has nowhere else.
    const elsewhere = members.length > 1 ? "go to another account or " : ""
    const openingRule = (account: Account) => {
      const options = breakerOptionsOf(account)
      const ratio = options.failureRatio ?? CircuitBreaker.defaults.failureRatio
      const calls = options.minimumThroughput ?? CircuitBreaker.defaults.minimumThroughput
      const window = Duration.format(options.window ?? CircuitBreaker.defaults.window)
      const share = Number((ratio * 100).toFixed(1))
      return `it opens at ${share} % failed of ${calls} call${calls === 1 ? "" : "s"} or more in ${window} ` +
        `(the account's breaker options${ratio < 1 ? "; failureRatio 1 opens it only when every call fails" : ""})`
    }
    /** When each account's breaker opened within `flapWindowMillis`: openings after a close that soon are a flap. */
    const recentOpenings = new Map<Member, Array<number>>()
    const openingsLately = (member: Member, since: number): number => {
      const kept = (recentOpenings.get(member) ?? []).filter((at) => since - at < flapWindowMillis)
      kept.push(since)
      recentOpenings.set(member, kept)
      return kept.length
    }
    /**
     * Says when an account's breaker opens, is isolated, or closes again: its calls wait or go
     * elsewhere meanwhile, which a caller otherwise sees only as slow answers.
     */
    const logBreaker = (member: Member, before: Option.Option<CircuitBreaker.State>, state: CircuitBreaker.State) => {
      const prefix = `AccountPool: account ${member.name}'s circuit breaker`
      switch (state._tag) {
        case "Open": {
          const openings = openingsLately(member, state.since)
          const again = state.trips > 1
            ? ` (${state.trips} trips in a row)`
            : openings > 1
            ? ` (the ${ordinal(openings)} time in ${Duration.format(Duration.millis(flapWindowMillis))})`
            : ""
          // Another process sharing the breaker may have opened it: then no failure of ours is said.
          const lastFailure = lastFailureOf(member)
          const cause = lastFailure === undefined ? "" : `; its last failure: ${lastFailure}`
          // A lone account's calls wait out each opening: when it opens again, its options may be what to change.
          const rule = members.length === 1 && again !== "" ? `; ${openingRule(member.account)}` : ""
          return Effect.logWarning(
            `${prefix} opened${again}: its calls ${elsewhere}wait until it half-opens in ${
              Duration.format(Duration.millis(state.until - state.since))
            }${cause}${rule}`
          )
        }
        case "Isolated":
          return Effect.logWarning(`${prefix} is isolated: it takes no call until it is reset`)
        case "Closed":
          return Option.exists(before, (b) => b._tag !== "Closed") ? Effect.logInfo(`${prefix} closed: serving again`) : Effect.void
        case "HalfOpen":
          return Effect.void
      }
    }

    // A breaker's transitions (open, half-open, closed) change what its account may take.
    yield* Effect.forEach(members, (member) =>
      member.breaker.changes.pipe(
        Stream.zipWithPrevious,
        Stream.runForEach(([before, state]) => Effect.zipRight(logBreaker(member, before, state), refresh(member))),
        Effect.forkScoped
      ), { discard: true })
    // What other processes found of an account's balance holds here too.
    yield* Effect.forEach(members, (member) =>
      member.sharedBalance.changes.pipe(
        Stream.runForEach((change) =>
          change === "out" ? takeOutOfBalance(member, "another process found it out") : Effect.suspend(() => {
            if (member.balance._tag !== "Out") return Effect.void
            member.balance = balanceOk
            return refresh(member)
          })
        ),
        Effect.forkScoped
      ), { discard: true })
    yield* Effect.forEach(members, warnIfInTheClear, { discard: true })
    const markedOut = yield* Effect.filter(members, (member) => member.sharedBalance.isOut)
    yield* Effect.forEach(markedOut, (member) => takeOutOfBalance(member, "another process found it out"), { discard: true })
    const toProbe = members.filter((member) => probesKeys(member) && !markedOut.includes(member))
    const preflights = yield* Effect.forEach(toProbe, preflight)
    yield* Effect.forEach(members, refresh, { discard: true })
    // Each account's connections open alongside its preflight, once that request is on its way.
    // A base URL with a typo, or a fallback provider that is down, is told at start, not when the
    // calls needing it fail (for a fallback, in the outage it was kept for).
    const warmUp = Option.match(Option.filter(preconnect, () => settings.warmUp > 0), {
      onNone: () => Effect.succeed<ReadonlyArray<Unreachable>>([]),
      onSome: (preconnect) =>
        Effect.map(
          Effect.forEach(members, (member) =>
            Effect.flatMap(
              connectTo(preconnect, member, settings.warmUp),
              Option.match({
                onNone: () => Effect.succeedNone,
                onSome: (cause) => Effect.as(lostReach(member, cause), Option.some(unreachableOf(member, cause, scrub)))
              })
            ), { concurrency: "unbounded" }),
          Arr.getSomes
        )
    })
    const warmedUp = yield* Effect.forkIn(Effect.zipRight(Effect.yieldNow(), warmUp), scope)
    // Told once the start's checks are done: a key the preflight found rejected is in the snapshot then.
    const unreachable = Effect.zipLeft(Fiber.join(warmedUp), Fiber.awaitAll(preflights))
    const capacity = Effect.sync((): Capacity => {
      const { free, permits, stalled, unserved } = dispatcher.capacity()
      return new CapacityReading(permits, free, stalled, unserved, roomChanges, roomChanges.notified)
    })

    return { create, stream, snapshot, capacity, unreachable, scrub }
  })
