/**
 * The account pool's implementation: one inner pipeline and a little state per account,
 * selection by load, failover within an attempt, balance recovery, and cost records.
 *
 * The mutable fields of a `Member` are read and written only in synchronous blocks, so each
 * selection (read the loads, pick, count the call) and each exclusion is atomic on the
 * JavaScript thread.
 *
 * @internal
 */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as Clock from "effect/Clock"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { Account } from "../Accounts.js"
import type { AccountStatus, Service } from "../AccountPool.js"
import * as ApiError from "../ApiError.js"
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Usage } from "../ChatSchema.js"
import * as CircuitBreaker from "../CircuitBreaker.js"
import * as Limiter from "../ConcurrencyLimiter.js"
import { CostLedger, type Disposition } from "../CostLedger.js"
import * as KeyPool from "../KeyPool.js"
import * as Policy from "../Policy.js"
import * as Telemetry from "../Telemetry.js"
import type * as Resilient from "../Resilient.js"
import * as Transport from "../Transport.js"
import { assertValid, positive } from "./options.js"

/** `AccountPool.Options` with defaults applied. */
export interface Settings {
  readonly breaker: Omit<CircuitBreaker.Options, "name"> | undefined
  readonly deadlines: Partial<Transport.Deadlines> | undefined
  readonly balanceProbeInterval: Duration.Duration
  readonly keyCooldown: Duration.Duration
  readonly fallbackCooldown: Duration.Duration
}

export const failoversCounter = Metric.counter("weatherproof_account_failovers", {
  description: "Account-level failures the account pool failed over from",
  incremental: true
})

/** A balance probe gets this long to answer. */
const probeTimeout = Duration.seconds(30)

// ---------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------

/** Serving, or out of balance until `nextCheck` (the next probe, or the return without one). */
type Balance = { readonly _tag: "Ok" } | { readonly _tag: "Out"; readonly nextCheck: number }

const balanceOk: Balance = { _tag: "Ok" }

/** One account: its inner pipeline, the parts the pool reads, and the pool's own counts. */
class Member {
  /** Attempts routed here and not finished (waiting for a permit or holding one). */
  active = 0
  /** Attempts routed here so far. */
  calls = 0
  /** Attempts sent here that answered, that failed, that drew a 429, that re-sent a request. */
  succeeded = 0
  failed = 0
  rateLimited = 0
  retries = 0
  balance: Balance = balanceOk

  constructor(
    readonly index: number,
    readonly account: Account,
    readonly client: AccountClient,
    readonly limiter: Limiter.Service,
    readonly breaker: CircuitBreaker.Service,
    readonly keys: KeyPool.Service
  ) {}

  get name(): string {
    return this.account.name
  }

  modelFor(model: string): string {
    return this.account.models[model] ?? model
  }
}

const limiterFor = (account: Account): Effect.Effect<Limiter.Service> =>
  typeof account.concurrency === "number"
    ? Limiter.makeFixed(account.concurrency, { name: account.name })
    : Limiter.makeAdaptive({ ...account.concurrency, name: account.name })

/**
 * The account's transport, sending only while the account is funded: a call that waited for a
 * permit while its account ran out of balance is refused (as the account's own refusal, so it
 * fails over) instead of drawing another 402.
 */
const whileFunded = (account: string, balanceOf: () => Balance, transport: Transport.Service): Transport.Service => {
  const refusal = (): Option.Option<ApiError.NoAccountAvailable> => {
    const balance = balanceOf()
    return balance._tag === "Ok" ? Option.none() : Option.some(
      new ApiError.NoAccountAvailable({
        retryAfter: Option.none(),
        accounts: [{ account, reason: "out_of_balance", until: balance.nextCheck }]
      })
    )
  }
  return {
    create: (request, options) =>
      Effect.suspend(() =>
        Option.match(refusal(), { onNone: () => transport.create(request, options), onSome: Effect.fail })
      ),
    stream: (request, options) =>
      Stream.suspend(() =>
        Option.match(refusal(), { onNone: () => transport.stream(request, options), onSome: Stream.fail })
      )
  }
}

/** Fires each time a primary account may serve again; `next` waits for the next time. */
class PrimaryBack {
  private signal = Deferred.unsafeMake<void>(FiberId.none)

  readonly next: Effect.Effect<void> = Effect.suspend(() => Deferred.await(this.signal))

  fire(): void {
    const fired = this.signal
    this.signal = Deferred.unsafeMake<void>(FiberId.none)
    Deferred.unsafeDone(fired, Exit.void)
  }
}

/**
 * The account's calls: one gated attempt each (its limiter, then its breaker, around its
 * transport; no retry, budget or bucket: those are the outer client's). A fallback's waiters give
 * up their place when a primary may serve again: the call fails over (a local refusal, before
 * anything is sent) and the pool selects again, so a backlog that queued at the fallback during
 * an outage returns to the primaries. A call that holds its permit keeps it. Metrics are labelled
 * `account=<name>`: the outer client counts each call once, unlabelled, and these count the
 * attempts each account served.
 */
const accountClient = (
  account: Account,
  policy: Policy.Service,
  transport: Transport.Service,
  primaryBack: PrimaryBack
): AccountClient => {
  const applyOptions = (options: Resilient.CallOptions | undefined): Policy.ApplyOptions => ({
    priority: options?.priority,
    abandonWhen: account.fallback ? primaryBack.next : undefined
  })
  const callOptions = (options: Resilient.CallOptions | undefined, permit: Limiter.Permit): Transport.CallOptions => ({
    deadlines: options?.deadlines,
    onAccepted: permit.accepted,
    onFirstContent: permit.recordQueueDelay
  })
  return {
    create: (request, options) =>
      Effect.tagMetrics(
        policy.apply((permit) => transport.create(request, callOptions(options, permit)), applyOptions(options)),
        "account",
        account.name
      ),
    stream: (request, options) =>
      Stream.unwrapScoped(
        Effect.as(
          Effect.tagMetricsScoped("account", account.name),
          policy.applyStream((permit) => transport.stream(request, callOptions(options, permit)), applyOptions(options))
        )
      )
  }
}

/** What the pool calls on one account. */
type AccountClient = Resilient.Service

/** One account's parts: its keys, limiter and breaker, composed into one policy around its transport. */
const makeMember = (
  account: Account,
  index: number,
  settings: Settings,
  primaryBack: PrimaryBack
): Effect.Effect<Member, never, HttpClient.HttpClient | Scope.Scope> =>
  Effect.gen(function*() {
    const keys = yield* KeyPool.make(account.keys, { cooldown: settings.keyCooldown })
    const limiter = yield* limiterFor(account)
    // Behind the adaptive limiter, which owns the load signal, the breaker counts outages only.
    const breaker = yield* CircuitBreaker.make({
      countLoadShed: typeof account.concurrency === "number",
      ...settings.breaker,
      name: account.name
    })
    const transport = yield* Transport.make({ baseUrl: account.baseUrl, deadlines: settings.deadlines }).pipe(
      Effect.provideService(KeyPool.KeyPool, keys)
    )
    // The outer client reports failed attempts and retries, once per call.
    const policy = yield* Policy.fromParts({ limiter, breaker, telemetry: Telemetry.noop })
    // The funding check reads the member, which exists once the client below is made.
    const funded = whileFunded(account.name, () => member.balance, transport)
    const member: Member = new Member(index, account, accountClient(account, policy, funded, primaryBack), limiter, breaker, keys)
    return member
  })

// ---------------------------------------------------------------------------------------------
// Availability and selection
// ---------------------------------------------------------------------------------------------

/** Why an account cannot serve, by its state (`busy` is a refusal of one attempt, not a state). */
type Unavailability = Exclude<ApiError.AccountUnavailable["reason"], "busy">

type Availability =
  | { readonly _tag: "Serving"; readonly halfOpen: boolean; readonly limit: number }
  | { readonly _tag: "Unavailable"; readonly reason: Unavailability; readonly until: number }

const unavailable = (reason: Unavailability, until: number): Availability => ({
  _tag: "Unavailable",
  reason,
  until
})

const availabilityOf = (member: Member): Effect.Effect<Availability> =>
  Effect.gen(function*() {
    if (member.balance._tag === "Out") return unavailable("out_of_balance", member.balance.nextCheck)
    if ((yield* member.keys.available) === 0) {
      return unavailable("no_keys", Option.getOrElse(yield* member.keys.cooldownEnd, () => Infinity))
    }
    const state = yield* member.breaker.state
    if (state._tag === "Open") return unavailable("circuit_open", state.until)
    if (state._tag === "Isolated") return unavailable("circuit_open", Infinity)
    const { limit } = yield* member.limiter.snapshot
    return { _tag: "Serving", halfOpen: state._tag === "HalfOpen", limit }
  })

interface View {
  readonly member: Member
  readonly availability: Availability
}

/** Lower is better: the share of the limit in use, then calls so far, then configuration order. */
const byLoad = (a: Member, aLimit: number, b: Member, bLimit: number): number =>
  a.active / aLimit - b.active / bLimit || a.calls - b.calls || a.index - b.index

/** Picks the least loaded candidate and counts the call on it, in one synchronous step. */
const pickLeastLoaded = (candidates: ReadonlyArray<{ readonly member: Member; readonly limit: number }>) =>
  Effect.sync(() => {
    const best = candidates.reduce((a, b) => byLoad(b.member, b.limit, a.member, a.limit) < 0 ? b : a).member
    best.active++
    best.calls++
    return best
  })

/** Why each account cannot serve: its state, or `busy` for one that refused this attempt. */
const noAccount = (views: ReadonlyArray<View>, now: number): ApiError.NoAccountAvailable => {
  const accounts = views.map(({ availability, member }): ApiError.AccountUnavailable =>
    availability._tag === "Unavailable"
      ? { account: member.name, reason: availability.reason, until: availability.until }
      : { account: member.name, reason: "busy", until: now }
  )
  const first = Math.min(...accounts.map((a) => a.until))
  return new ApiError.NoAccountAvailable({
    retryAfter: Number.isFinite(first) ? Option.some(Duration.millis(Math.max(0, first - now))) : Option.none(),
    accounts
  })
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** Refusals of the account's own gates (breaker, limiter): they come before anything is sent. */
type LocalRefusal = Exclude<Resilient.ResilientError, ApiError.ApiError>

/** Errors that say this account cannot serve now: the attempt moves to another account. */
type AccountLevel =
  | LocalRefusal
  | Extract<
    ApiError.ApiError,
    { readonly _tag: "KeyRejected" | "NoUsableKey" | "InsufficientBalance" | "NoAccountAvailable" }
  >

const localRefusalTags = ["CircuitOpen", "QueueFull", "RateLimitExceeded"] as const satisfies ReadonlyArray<
  LocalRefusal["_tag"]
>
const accountLevelTags: ReadonlySet<string> = new Set<AccountLevel["_tag"]>([
  ...localRefusalTags,
  "KeyRejected",
  "NoUsableKey",
  "InsufficientBalance",
  "NoAccountAvailable"
])

const isLocalRefusal = (error: Resilient.ResilientError): error is LocalRefusal =>
  (localRefusalTags as ReadonlyArray<string>).includes(error._tag)

const isAccountLevel = (error: Resilient.ResilientError): error is AccountLevel => accountLevelTags.has(error._tag)

/** Failures that never reached an upstream (a gate refused, no key to send with, out of balance): not recorded. */
const wasNotSent = (
  error: Resilient.ResilientError
): error is LocalRefusal | ApiError.NoUsableKey | ApiError.NoAccountAvailable =>
  error._tag === "NoUsableKey" || error._tag === "NoAccountAvailable" || isLocalRefusal(error)

/** An account-level failure, carried out of the account's scope to the next selection. */
class FailedOver extends Data.TaggedError("FailedOver")<{ readonly member: Member; readonly yielded: boolean }> {
  /**
   * The accounts the attempt's next selection leaves out: every one tried so far, or only this
   * fallback when its waiter yielded to a primary that may serve again (even one tried before).
   */
  exclusions(excluded: ReadonlySet<Member>): ReadonlySet<Member> {
    return this.yielded ? new Set([this.member]) : new Set(excluded).add(this.member)
  }
}

// ---------------------------------------------------------------------------------------------
// Balance recovery
// ---------------------------------------------------------------------------------------------

const BalanceBody = Schema.Struct({ is_available: Schema.Boolean })
const decodeBalance = Schema.decodeUnknown(BalanceBody)

type ProbeResult = "available" | "unavailable" | "no_endpoint" | "failed"

/** `GET {baseUrl}/user/balance` with one of the account's keys. */
const probeBalance = (client: HttpClient.HttpClient, member: Member): Effect.Effect<ProbeResult> =>
  Effect.gen(function*() {
    const credential = yield* member.keys.acquire
    const response = yield* client.execute(
      HttpClientRequest.get(`${member.account.baseUrl.replace(/\/+$/, "")}/user/balance`).pipe(
        HttpClientRequest.setHeader("authorization", `Bearer ${Redacted.value(credential.key)}`)
      )
    )
    if (response.status === 404) return "no_endpoint"
    if (response.status < 200 || response.status >= 300) return "failed"
    const body = yield* Effect.flatMap(response.json, decodeBalance)
    return body.is_available ? "available" : "unavailable"
  }).pipe(Effect.scoped, Effect.timeout(probeTimeout), Effect.orElseSucceed((): ProbeResult => "failed"))

// ---------------------------------------------------------------------------------------------
// The pool
// ---------------------------------------------------------------------------------------------

const validate = (accounts: ReadonlyArray<Account>, settings: Settings): void =>
  assertValid("AccountPool", [
    new Set(accounts.map((account) => account.name)).size === accounts.length ? undefined : "account names must be unique",
    positive("balanceProbeInterval", Duration.toMillis(settings.balanceProbeInterval)),
    positive("keyCooldown", Duration.toMillis(settings.keyCooldown)),
    positive("fallbackCooldown", Duration.toMillis(settings.fallbackCooldown))
  ])

const stateOf = (availability: Availability): AccountStatus["state"] =>
  availability._tag === "Serving"
    ? availability.halfOpen ? "half_open" : "serving"
    : availability.reason === "circuit_open"
    ? "open"
    : availability.reason

export const make = (
  accounts: ReadonlyArray<Account>,
  settings: Settings
): Effect.Effect<Transport.Service & Service, never, HttpClient.HttpClient | CostLedger | Scope.Scope> =>
  Effect.gen(function*() {
    yield* Effect.sync(() => validate(accounts, settings))
    const client = yield* HttpClient.HttpClient
    const ledger = yield* CostLedger
    const scope = yield* Effect.scope
    const primaryBack = new PrimaryBack()
    const members = yield* Effect.forEach(accounts, (account, i) => makeMember(account, i, settings, primaryBack))
    const primaries = members.filter((member) => !member.account.fallback)
    // A primary's breaker letting calls through again (half-open or closed) may end an outage.
    yield* Effect.forEach(primaries, (member) =>
      member.breaker.changes.pipe(
        Stream.runForEach((state) =>
          Effect.sync(() => {
            if (state._tag === "Closed" || state._tag === "HalfOpen") primaryBack.fire()
          })
        ),
        Effect.forkScoped
      ), { discard: true })

    // -- recovery from 402 ------------------------------------------------------------------

    const probeInterval = Duration.toMillis(settings.balanceProbeInterval)
    const cooldown = Duration.toMillis(settings.fallbackCooldown)

    /** The next probe, or the return (`fallbackCooldown` after the 402) of an account that cannot be probed. */
    const nextCheck = (probing: boolean, now: number, outSince: number) =>
      probing ? now + probeInterval : Math.max(now, outSince + cooldown)

    /** Waits for each check, probes when it can, until the balance is back; then the account serves again. */
    const recover = (member: Member, outSince: number): Effect.Effect<void> =>
      Effect.gen(function*() {
        let probing = member.account.provider === "deepseek"
        while (member.balance._tag === "Out") {
          const now = yield* Clock.currentTimeMillis
          yield* Effect.sleep(Duration.millis(Math.max(0, member.balance.nextCheck - now)))
          const result: ProbeResult = probing ? yield* probeBalance(client, member) : "available"
          probing &&= result !== "no_endpoint"
          member.balance = result === "available"
            ? balanceOk
            : { _tag: "Out", nextCheck: nextCheck(probing, yield* Clock.currentTimeMillis, outSince) }
        }
        if (!member.account.fallback) primaryBack.fire()
        yield* Effect.logInfo(`AccountPool: account ${member.name} is serving again`)
      })

    // Uninterruptible: an account marked out always gets its recovery fiber.
    const takeOutOfBalance = (member: Member) =>
      Effect.uninterruptible(Effect.flatMap(Clock.currentTimeMillis, (now) => {
        if (member.balance._tag === "Out") return Effect.void
        const probing = member.account.provider === "deepseek"
        member.balance = { _tag: "Out", nextCheck: nextCheck(probing, now, now) }
        const comeback = probing
          ? `probing its balance every ${Duration.format(settings.balanceProbeInterval)}`
          : `back in ${Duration.format(settings.fallbackCooldown)}`
        return Effect.logWarning(`AccountPool: account ${member.name} is out of balance (402); ${comeback}`).pipe(
          // A fiber forked here would inherit the mask: the pool's scope must be able to end it.
          Effect.zipRight(Effect.forkIn(Effect.interruptible(recover(member, now)), scope))
        )
      }))

    /** When a primary's keys all rest, its first key back may end an outage: a time, not an event. */
    const signalWhenKeysReturn = (member: Member) =>
      member.account.fallback ? Effect.void : Effect.gen(function*() {
        if ((yield* member.keys.available) > 0) return
        const back = yield* member.keys.cooldownEnd
        if (Option.isNone(back)) return
        const wait = Duration.millis(Math.max(0, back.value - (yield* Clock.currentTimeMillis)))
        yield* Effect.forkIn(Effect.zipRight(Effect.sleep(wait), Effect.sync(() => primaryBack.fire())), scope)
      })

    const failOver = (member: Member, error: AccountLevel) =>
      Effect.zipRight(
        Metric.increment(Metric.tagged(Metric.tagged(failoversCounter, "account", member.name), "error", error._tag)),
        error._tag === "InsufficientBalance"
          ? takeOutOfBalance(member)
          : error._tag === "KeyRejected" || error._tag === "NoUsableKey"
          ? signalWhenKeysReturn(member)
          : Effect.void
      ).pipe(Effect.zipRight(
        Effect.fail(new FailedOver({ member, yielded: member.account.fallback && error._tag === "QueueFull" }))
      ))

    // -- selection ----------------------------------------------------------------------------

    const budgetGuard = Effect.mapError(ledger.guard, ({ budgetUsd, spentUsd }) =>
      new ApiError.NoAccountAvailable({
        retryAfter: Option.none(),
        accounts: [],
        budgetExceeded: { spentUsd, budgetUsd }
      }))

    const select = (excluded: ReadonlySet<Member>): Effect.Effect<Member, ApiError.NoAccountAvailable> =>
      Effect.gen(function*() {
        yield* budgetGuard
        const views = yield* Effect.forEach(members, (member) =>
          Effect.map(availabilityOf(member), (availability): View => ({ member, availability })))
        const serving = views.flatMap(({ availability, member }) =>
          availability._tag === "Serving" && !excluded.has(member) ? [{ member, limit: availability.limit }] : []
        )
        const primaries = serving.filter(({ member }) => !member.account.fallback)
        const candidates = primaries.length > 0 ? primaries : serving
        return candidates.length > 0
          ? yield* pickLeastLoaded(candidates)
          : yield* Effect.fail(noAccount(views, yield* Clock.currentTimeMillis))
      })

    const release = (member: Member) => Effect.sync(() => member.active--)

    // -- cost ---------------------------------------------------------------------------------

    const record = (
      member: Member,
      model: string,
      usage: Usage | undefined,
      disposition: Disposition
    ): Effect.Effect<void> => Effect.asVoid(ledger.record({ account: member.name, model, usage, disposition }))

    const recordFailure = (
      member: Member,
      request: ChatCompletionRequest,
      model: string,
      error: Resilient.ResilientError,
      delivered: boolean
    ) =>
      wasNotSent(error) ? Effect.void : Effect.zipRight(
        countSent(member, request, error),
        record(member, model, ApiError.partialOf(error).usage, delivered ? "truncated" : "discarded")
      )

    /**
     * Counts an attempt that reached `member`'s upstream. The outer client hands every attempt of
     * a call the same request object, so one sent before makes this a retry; an account-level
     * failure fails over within the attempt, so the next account's send is not a retry.
     */
    const sent = new WeakSet<ChatCompletionRequest>()
    const countSent = (member: Member, request: ChatCompletionRequest, error?: Resilient.ResilientError) =>
      Effect.sync(() => {
        if (sent.has(request)) member.retries++
        else if (error === undefined || !isAccountLevel(error)) sent.add(request)
        if (error === undefined) member.succeeded++
        else {
          member.failed++
          if (error._tag === "RateLimited") member.rateLimited++
        }
      })

    // -- calls: each account is tried at most once per attempt ---------------------------------

    const create: Transport.Service["create"] = (request, options) => {
      const on = (member: Member) => {
        const model = member.modelFor(request.model)
        return member.client.create({ ...request, model }, { deadlines: options?.deadlines, priority: options?.priority }).pipe(
          Effect.tapBoth({
            onSuccess: (completion) =>
              Effect.zipRight(countSent(member, request), record(member, model, completion.usage, "kept")),
            onFailure: (error) => recordFailure(member, request, model, error, false)
          }),
          Effect.catchIf(isAccountLevel, (error) => failOver(member, error))
        )
      }
      const attempt = (excluded: ReadonlySet<Member>): Effect.Effect<ChatCompletion, ApiError.ApiError> =>
        Effect.acquireUseRelease(select(excluded), on, release).pipe(
          Effect.catchTag("FailedOver", (failedOver) => attempt(failedOver.exclusions(excluded)))
        )
      return attempt(new Set())
    }

    /**
     * Local refusals come before anything is sent; other account-level errors fail over only
     * while the caller has seen nothing.
     */
    const streamFailure = (
      member: Member,
      error: Resilient.ResilientError,
      delivered: boolean
    ): Effect.Effect<never, ApiError.ApiError | FailedOver> =>
      isLocalRefusal(error) || (!delivered && isAccountLevel(error)) ? failOver(member, error) : Effect.fail(error)

    const streamOn = (member: Member, request: ChatCompletionRequest, options: Transport.CallOptions | undefined) => {
      const model = member.modelFor(request.model)
      let delivered = false
      let usage: Usage | undefined
      return member.client.stream({ ...request, model }, { deadlines: options?.deadlines, priority: options?.priority }).pipe(
        Stream.tap((chunk) =>
          Effect.sync(() => {
            delivered = true
            usage = chunk.usage ?? usage
          })
        ),
        Stream.onDone(() => Effect.zipRight(countSent(member, request), record(member, model, usage, "kept"))),
        Stream.catchAll((error) =>
          Stream.fromEffect(
            Effect.zipRight(recordFailure(member, request, model, error, delivered), streamFailure(member, error, delivered))
          )
        )
      )
    }

    const stream: Transport.Service["stream"] = (request, options) => {
      const attempt = (excluded: ReadonlySet<Member>): Stream.Stream<ChatCompletionChunk, ApiError.ApiError> =>
        Stream.unwrapScoped(
          Effect.map(Effect.acquireRelease(select(excluded), release), (member) => streamOn(member, request, options))
        ).pipe(Stream.catchTag("FailedOver", (failedOver) => attempt(failedOver.exclusions(excluded))))
      return attempt(new Set())
    }

    const snapshot = Effect.forEach(members, (member) =>
      Effect.gen(function*() {
        const availability = yield* availabilityOf(member)
        const { inFlight, limit } = yield* member.limiter.snapshot
        return {
          name: member.name,
          provider: member.account.provider,
          fallback: member.account.fallback,
          state: stateOf(availability),
          limit,
          inFlight,
          usableKeys: yield* member.keys.available,
          calls: member.calls,
          succeeded: member.succeeded,
          failed: member.failed,
          rateLimited: member.rateLimited,
          retries: member.retries
        } satisfies AccountStatus
      }))

    return { create, stream, snapshot }
  })
