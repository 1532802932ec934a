/**
 * The gateway's status, sampled every `interval`: each account as the pool sees it (state,
 * limit, in flight, queued, 429s and their rate, spend), the spend and tokens per (account,
 * model), the gateway's own traffic, and the banners the status page shows. The last samples are
 * kept for the page's charts (`GET /status.json`); each new one is published to the page's feed
 * and to the alerts.
 *
 * Samples read only public interfaces: `AccountPool.snapshot` (each account and its model lanes),
 * `CostLedger.snapshot` and the Effect metric registry (tokens and cost per account and model).
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import type * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"
import * as PubSub from "effect/PubSub"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { AccountPool, type AccountStatus, type ModelStatus, stateText } from "../../src/AccountPool.js"
import { CostLedger } from "../../src/CostLedger.js"
import { currentMonotonicMillis } from "../../src/internal/monotonic.js"
import type { Traffic } from "./traffic.js"

/** One (account, model) lane, as the page draws it: DeepSeek caps each model of an account apart. */
export interface LaneSample extends ModelStatus {
  /** 429s per second since the previous sample. */
  readonly rateLimitedPerSecond: number
}

/** One account, as the page draws it. */
export interface AccountSample extends Omit<AccountStatus, "models"> {
  readonly models: ReadonlyArray<LaneSample>
  /**
   * Calls waiting at the pool for a model the account serves (a model's queue is the pool's, so
   * accounts serving one model show the same calls).
   */
  readonly queued: number
  /** 429s per second since the previous sample. */
  readonly rateLimitedPerSecond: number
  /** Breaker state as a number: 0 closed, 1 half-open, 2 open (the breaker gauge's scale). */
  readonly breaker: number
  readonly costUsd: number
}

/** Tokens and cost of one (account, model). */
export interface ModelSpend {
  readonly account: string
  readonly model: string
  readonly costUsd: number
  /** By kind: `prompt_cache_hit`, `prompt_cache_miss`, `completion` (reasoning included), `reasoning`. */
  readonly tokens: Readonly<Record<string, number>>
  /** Attempts billed for output whose usage never arrived (cut in transit, or none sent): not in `costUsd` and `tokens`. */
  readonly unmetered: number
}

export interface Sample {
  /**
   * Epoch milliseconds on the process's monotonic clock (the wall time at start, moved on by the
   * time that passed): the rates and hold-downs taken between samples ignore a step of the system clock.
   */
  readonly t: number
  readonly draining: boolean
  readonly gateway: {
    readonly active: number
    readonly waiting: number
    readonly keepAlives: number
    readonly streamsCut: number
    readonly requests: number
  }
  readonly accounts: ReadonlyArray<AccountSample>
  readonly models: ReadonlyArray<ModelSpend>
  /** `overUsd`: what the calls under way when the budget was spent cost past it. */
  readonly spend: {
    readonly costUsd: number
    readonly budgetUsd: number | null
    readonly remainingUsd: number | null
    readonly overUsd: number | null
  }
  readonly banner: {
    /** The accounts throttled: see `throttled`. */
    readonly throttling: ReadonlyArray<string>
    readonly outOfBalance: ReadonlyArray<string>
    /** Accounts whose origin cannot be connected to (`AccountStatus.reachable`). */
    readonly unreachable: ReadonlyArray<string>
    /** Accounts whose every key the upstream rejected (401), resting. */
    readonly noKeys: ReadonlyArray<string>
    /** Accounts whose balance the start's check is still asking: their calls wait for its answer. */
    readonly checkingBalance: ReadonlyArray<string>
    /** No account can serve now (`canServe`): every call waits, then fails; `/readyz` answers 503. */
    readonly noAccountServing: boolean
    readonly budgetSpent: boolean
  }
}

export interface Monitor {
  readonly latest: Effect.Effect<Sample>
  /** The kept samples, oldest first. */
  readonly history: Effect.Effect<ReadonlyArray<Sample>>
  /** Subscribes now (samples are not missed between this and the stream's start): every sample from now on. */
  readonly subscribe: Effect.Effect<Stream.Stream<Sample>, never, Scope.Scope>
}

export interface Options {
  readonly interval: Duration.Duration
  /** Samples kept for the page. */
  readonly keep: number
  /** The window `throttled` reads 429s over. */
  readonly throttleWindow: Duration.Duration
  /** The share of an account's attempts in that window that drew a 429 for it to be throttled. */
  readonly throttleShare: number
}

/** Each account's state as Prometheus writes an enumeration: 1 for the state it is in, 0 for the others. */
export const accountStateGauge = Metric.gauge("weatherproof_gateway_account_state", {
  description: "Each account's state (serving, open, half_open, out_of_balance, checking_balance, no_keys, unreachable): 1 for the one it is in"
})

/** 1 while an account's origin can be connected to, 0 from a connection that could not open until one does. */
export const accountReachableGauge = Metric.gauge("weatherproof_gateway_account_reachable", {
  description: "Whether the account's base URL accepts connections (1) or not (0)"
})

/** An account's keys not set aside, and those set aside (rejected with a 401, resting): the second is the one to alert on. */
export const accountKeysUsableGauge = Metric.gauge("weatherproof_gateway_account_keys_usable", {
  description: "The account's keys usable now"
})

export const accountKeysRestingGauge = Metric.gauge("weatherproof_gateway_account_keys_resting", {
  description: "The account's keys the upstream rejected (401), set aside for their rest"
})

/** 1 when `/readyz` would answer 200: an account can serve, the budget is not spent, no drain. */
export const readyGauge = Metric.gauge("weatherproof_gateway_ready", {
  description: "Whether the gateway can serve a call now (what /readyz answers 200 for)"
})

const accountStates = Object.keys(stateText) as ReadonlyArray<AccountStatus["state"]>

/** `sample`'s states, on their gauges. */
const publishStates = (sample: Sample): void => {
  for (const account of sample.accounts) {
    const tagged = MetricLabel.make("account", account.name)
    for (const state of accountStates) {
      accountStateGauge.unsafeUpdate(account.state === state ? 1 : 0, [tagged, MetricLabel.make("state", state)])
    }
    accountReachableGauge.unsafeUpdate(account.reachable ? 1 : 0, [tagged])
    accountKeysUsableGauge.unsafeUpdate(account.usableKeys, [tagged])
    accountKeysRestingGauge.unsafeUpdate(account.restingKeys.length, [tagged])
  }
  const { banner, draining } = sample
  readyGauge.unsafeUpdate(draining || banner.budgetSpent || banner.noAccountServing ? 0 : 1, [])
}

/** Whether an account can serve a call now: its origin reachable, and serving or trying canaries. */
export const canServe = ({ reachable, state }: Pick<AccountStatus, "reachable" | "state">): boolean =>
  reachable && (state === "serving" || state === "half_open")

/** What `throttled` reads of an account: the attempts sent to it, and those of them that drew a 429. */
export type AttemptCounts = Pick<AccountStatus, "name" | "succeeded" | "failed" | "rateLimited">

/**
 * The accounts the upstream throttles: at least `share` of the attempts sent to each since
 * `before` drew a 429. An adaptive limit probes above a cap it holds at and draws a 429 for it
 * every few rounds (about one attempt in `6 × limit`, at least 48; `ConcurrencyLimiter`): that is
 * the limit at work, not throttling, and a banner on every 429 stood up for good on a gateway that
 * served at its cap. An account missing from `before` counts from zero.
 */
export const throttled = (
  before: ReadonlyArray<AttemptCounts>,
  now: ReadonlyArray<AttemptCounts>,
  share: number
): ReadonlyArray<string> =>
  now.flatMap((account) => {
    const then = before.find((b) => b.name === account.name)
    const rateLimited = account.rateLimited - (then?.rateLimited ?? 0)
    const sent = account.succeeded + account.failed - (then === undefined ? 0 : then.succeeded + then.failed)
    return rateLimited > 0 && rateLimited >= share * sent ? [account.name] : []
  })

/** The sample a window ending at `t` starts from: the newest at least `windowMs` old, else the oldest kept. */
export const windowStart = <S extends { readonly t: number }>(
  samples: ReadonlyArray<S>,
  t: number,
  windowMs: number
): S | undefined => {
  for (let i = samples.length - 1; i >= 0; i--) {
    if (t - samples[i]!.t >= windowMs) return samples[i]
  }
  return samples[0]
}

const breakerLevel = (state: AccountStatus["state"]): number =>
  state === "open" ? 2 : state === "half_open" ? 1 : 0

const tagOf = (pair: MetricPair.MetricPair.Untyped, key: string): string | undefined =>
  pair.metricKey.tags.find((tag) => tag.key === key)?.value

const valueOf = (pair: MetricPair.MetricPair.Untyped): number => {
  const state = pair.metricState
  return MetricState.isGaugeState(state) ? Number(state.value) : MetricState.isCounterState(state) ? Number(state.count) : 0
}

/** Tokens, cost and unmetered attempts by (account, model), from the registry. */
const spendOf = (pairs: ReadonlyArray<MetricPair.MetricPair.Untyped>): ReadonlyArray<ModelSpend> => {
  const spend = new Map<
    string,
    { account: string; model: string; costUsd: number; tokens: Record<string, number>; unmetered: number }
  >()
  const entryOf = (pair: MetricPair.MetricPair.Untyped) => {
    const account = tagOf(pair, "account") ?? ""
    const model = tagOf(pair, "model") ?? ""
    const key = `${account}\u0000${model}`
    let entry = spend.get(key)
    if (entry === undefined) {
      entry = { account, model, costUsd: 0, tokens: {}, unmetered: 0 }
      spend.set(key, entry)
    }
    return entry
  }
  for (const pair of pairs) {
    switch (pair.metricKey.name) {
      case "weatherproof_tokens": {
        const kind = tagOf(pair, "kind")
        if (kind !== undefined) entryOf(pair).tokens[kind] = valueOf(pair)
        break
      }
      case "weatherproof_cost_usd":
        entryOf(pair).costUsd = valueOf(pair)
        break
      case "weatherproof_unmetered_attempts":
        entryOf(pair).unmetered = valueOf(pair)
        break
    }
  }
  return Array.from(spend.values())
}

export const make = (traffic: Traffic, options: Options): Effect.Effect<Monitor, never, AccountPool | CostLedger | Scope.Scope> =>
  Effect.gen(function*() {
    const pool = yield* AccountPool
    const ledger = yield* CostLedger
    const changes = yield* PubSub.sliding<Sample>(64)
    const throttleWindowMs = Duration.toMillis(options.throttleWindow)
    const history: Array<Sample> = []

    const take = Effect.gen(function*() {
      const t = yield* currentMonotonicMillis
      const statuses = yield* pool.snapshot
      const totals = yield* ledger.snapshot
      const models = spendOf(yield* Metric.snapshot)
      const previous = history.at(-1)
      const seconds = previous === undefined ? 1 : Math.max((t - previous.t) / 1000, 0.001)
      const accounts = statuses.map((status): AccountSample => {
        const before = previous?.accounts.find((a) => a.name === status.name)
        const new429s = before === undefined ? 0 : status.rateLimited - before.rateLimited
        const lanes = status.models.map((lane): LaneSample => {
          // A lane that opened since the previous sample drew all its 429s since then.
          const laneBefore = before?.models.find((m) => m.model === lane.model)
          return {
            ...lane,
            rateLimitedPerSecond: before === undefined ? 0 : (lane.rateLimited - (laneBefore?.rateLimited ?? 0)) / seconds
          }
        })
        return {
          ...status,
          models: lanes,
          queued: status.models.reduce((sum, lane) => sum + lane.queued, 0),
          rateLimitedPerSecond: new429s / seconds,
          breaker: breakerLevel(status.state),
          costUsd: totals.byAccount[status.name]?.costUsd ?? 0
        }
      })
      const sample: Sample = {
        t,
        draining: traffic.draining,
        gateway: {
          active: traffic.active,
          waiting: traffic.waiting,
          keepAlives: traffic.keepAlives,
          streamsCut: traffic.streamsCut,
          requests: traffic.requests
        },
        accounts,
        models,
        spend: {
          costUsd: totals.total.costUsd,
          budgetUsd: totals.budget?.budgetUsd ?? null,
          remainingUsd: totals.budget?.remainingUsd ?? null,
          overUsd: totals.budget?.overUsd ?? null
        },
        banner: {
          throttling: throttled(windowStart(history, t, throttleWindowMs)?.accounts ?? [], statuses, options.throttleShare),
          outOfBalance: statuses.filter((s) => s.state === "out_of_balance").map((s) => s.name),
          unreachable: statuses.filter((s) => !s.reachable).map((s) => s.name),
          noKeys: statuses.filter((s) => s.state === "no_keys").map((s) => s.name),
          checkingBalance: statuses.filter((s) => s.state === "checking_balance").map((s) => s.name),
          noAccountServing: !statuses.some(canServe),
          budgetSpent: totals.budget !== undefined && totals.budget.remainingUsd <= 0
        }
      }
      publishStates(sample)
      history.push(sample)
      if (history.length > options.keep) history.shift()
      yield* PubSub.publish(changes, sample)
      return sample
    })

    const first = yield* take
    yield* Effect.forkScoped(Effect.repeat(take, Schedule.spaced(options.interval)))
    return {
      latest: Effect.sync(() => history.at(-1) ?? first),
      history: Effect.sync(() => history.slice()),
      subscribe: Effect.map(PubSub.subscribe(changes), Stream.fromQueue)
    }
  })
