/**
 * The summary of a batch run: the cost ledger's figures over the run (the difference of two
 * snapshots, per account too), as data (`toJson`) and for people (`format`).
 */
import * as Duration from "effect/Duration"
import { type AccountStatus, describeState } from "../AccountPool.js"
import type { AccountSummary, Spend, Summary } from "../Batch.js"
import type { Budget, Totals } from "../CostLedger.js"
import { counted } from "./text.js"

const picoPerUsd = 1e12

/**
 * `after − before` in USD. The ledger's figures are integer pico-USD converted once, so the
 * difference is rounded back to the pico-USD it is.
 */
const usdBetween = (before: number, after: number): number => Math.round((after - before) * picoPerUsd) / picoPerUsd

const ratio = (numerator: number, denominator: number): number => denominator === 0 ? 0 : numerator / denominator

/** What was recorded between two snapshots of a group of attempts (`before` absent: nothing yet). */
export const spendBetween = (before: Totals | undefined, after: Totals): Spend => {
  const delta = (field: (totals: Totals) => number) => field(after) - (before === undefined ? 0 : field(before))
  const usd = (field: (totals: Totals) => number) => usdBetween(before === undefined ? 0 : field(before), field(after))
  const answered = delta((t) => t.requests)
  const truncated = delta((t) => t.truncated)
  const completion = delta((t) => t.completionTokens)
  const reasoning = delta((t) => t.reasoningTokens)
  return {
    attempts: delta((t) => t.attempts),
    answered,
    tokens: {
      prompt: delta((t) => t.promptTokens),
      completion,
      cacheHit: delta((t) => t.cacheHitTokens),
      cacheMiss: delta((t) => t.cacheMissTokens),
      reasoning
    },
    costUsd: usd((t) => t.costUsd),
    unpriced: delta((t) => t.unpriced),
    unmetered: delta((t) => t.unmetered),
    retryTax: {
      attempts: delta((t) => t.retryTax.attempts),
      tokens: delta((t) => t.retryTax.tokens),
      costUsd: usd((t) => t.retryTax.costUsd)
    },
    truncated,
    truncationRate: ratio(truncated, answered),
    reasoningShare: ratio(reasoning, completion)
  }
}

/** A group with nothing recorded. */
const noTotals: Totals = {
  requests: 0,
  attempts: 0,
  promptTokens: 0,
  completionTokens: 0,
  cacheHitTokens: 0,
  cacheMissTokens: 0,
  reasoningTokens: 0,
  costUsd: 0,
  unpriced: 0,
  unmetered: 0,
  retryTax: { attempts: 0, tokens: 0, costUsd: 0 },
  truncated: 0,
  truncationRate: 0,
  reasoningShare: 0
}

/**
 * Every account of the pool (in its order, with its state) and every other account the ledger
 * saw, with what each spent between the snapshots.
 */
export const accountsBetween = (
  before: Readonly<Record<string, Totals>>,
  after: Readonly<Record<string, Totals>>,
  statuses: ReadonlyArray<AccountStatus>
): Readonly<Record<string, AccountSummary>> => {
  const names = new Set([...statuses.map((status) => status.name), ...Object.keys(after)])
  return Object.fromEntries(Array.from(names, (name) => [name, {
    ...spendBetween(before[name], after[name] ?? noTotals),
    status: statuses.find((status) => status.name === name)
  }]))
}

/** The spend figures, as `toJson` writes them for the run and for each account. */
export interface SpendJson {
  readonly attempts: number
  readonly answered: number
  readonly prompt_tokens: number
  readonly completion_tokens: number
  readonly cache_hit_tokens: number
  readonly cache_miss_tokens: number
  readonly reasoning_tokens: number
  readonly cost_usd: number
  readonly unpriced_attempts: number
  /** Attempts billed for output whose usage never arrived (cut in transit, or none sent): not in the tokens and cost. */
  readonly unmetered_attempts: number
  readonly retry_tax: { readonly attempts: number; readonly tokens: number; readonly cost_usd: number }
  readonly truncated: number
  readonly truncation_rate: number
  readonly reasoning_share: number
}

/** An account in the summary JSON: its spend, and the pool's state of it when there is a pool. */
export interface AccountJson extends SpendJson {
  readonly provider?: string
  readonly fallback?: boolean
  readonly state?: string
  readonly limit?: number
  readonly in_flight?: number
  readonly usable_keys?: number
  /** The keys set aside at the end, rejected by the upstream (401): their ids (`key#2`), never the keys. */
  readonly resting_keys?: ReadonlyArray<string>
  readonly calls?: number
  /** Attempts sent to the account that answered, that failed, that drew a 429, that were retries. */
  readonly succeeded?: number
  readonly failed?: number
  readonly rate_limited?: number
  readonly retries?: number
  /** What its last attempt sent failed with, unless one answered since. */
  readonly last_failure?: string | null
  /** Whether its base URL accepted connections at the end (`AccountStatus.reachable`). */
  readonly reachable?: boolean
  /** Each model's lane: DeepSeek caps each model of an account apart, so each has its own limit. */
  readonly models?: Readonly<Record<string, LaneJson>>
}

/** One (account, model) lane at the end of the run. */
export interface LaneJson {
  readonly limit: number
  readonly rate_limited: number
  readonly cost_usd: number
}

/** The summary JSON. */
export interface SummaryJson extends SpendJson {
  readonly requests: number
  readonly succeeded: number
  /** Of `succeeded`, answered from the response cache, with no request of their own. */
  readonly from_cache: number
  readonly failed: number
  readonly skipped: number
  /** Results already in the output whose `custom_id` no line of the input has, kept. */
  readonly unmatched: number
  readonly failures: Readonly<Record<string, number>>
  readonly failed_attempts: number
  readonly rate_limited: number
  readonly retries: number
  readonly routing_warnings: number
  readonly elapsed_ms: number
  /** The run was stopped. */
  readonly interrupted: boolean
  /** The file whose failure stopped the run ("input" or "output"), else null. */
  readonly aborted_by: "input" | "output" | null
  /** Every line of the input was read and has its result in the output: nothing is left to resume. */
  readonly complete: boolean
  /** Requests on the wire when the stopped run's drain ended, dropped unanswered. */
  readonly dropped: number
  /** Times the pool's shared limits went on without Redis (counted in this process alone meanwhile). */
  readonly redis_local_mode: number
  /** Whether they were still counted without Redis at the end. */
  readonly redis_away_at_end: boolean
  /** The ledger's budget at the end, else null; `over_usd`: what the calls under way when it was spent cost past it. */
  readonly budget: { readonly budget_usd: number; readonly remaining_usd: number; readonly over_usd: number } | null
  readonly accounts: Readonly<Record<string, AccountJson>>
}

const spendJson = (spend: Spend): SpendJson => ({
  attempts: spend.attempts,
  answered: spend.answered,
  prompt_tokens: spend.tokens.prompt,
  completion_tokens: spend.tokens.completion,
  cache_hit_tokens: spend.tokens.cacheHit,
  cache_miss_tokens: spend.tokens.cacheMiss,
  reasoning_tokens: spend.tokens.reasoning,
  cost_usd: spend.costUsd,
  unpriced_attempts: spend.unpriced,
  unmetered_attempts: spend.unmetered,
  retry_tax: { attempts: spend.retryTax.attempts, tokens: spend.retryTax.tokens, cost_usd: spend.retryTax.costUsd },
  truncated: spend.truncated,
  truncation_rate: spend.truncationRate,
  reasoning_share: spend.reasoningShare
})

const accountJson = (account: AccountSummary): AccountJson => {
  const { status } = account
  return {
    ...spendJson(account),
    ...(status === undefined ? {} : {
      provider: status.provider,
      fallback: status.fallback,
      state: status.state,
      limit: status.limit,
      in_flight: status.inFlight,
      usable_keys: status.usableKeys,
      resting_keys: status.restingKeys,
      calls: status.calls,
      succeeded: status.succeeded,
      failed: status.failed,
      rate_limited: status.rateLimited,
      retries: status.retries,
      last_failure: status.lastFailure ?? null,
      reachable: status.reachable,
      models: Object.fromEntries(status.models.map((lane): [string, LaneJson] => [
        lane.model,
        { limit: lane.limit, rate_limited: lane.rateLimited, cost_usd: lane.costUsd }
      ]))
    })
  }
}

/** The summary as data. */
export const toJson = (summary: Summary): SummaryJson => ({
  requests: summary.requests,
  succeeded: summary.succeeded,
  from_cache: summary.fromCache,
  failed: summary.failed,
  skipped: summary.skipped,
  unmatched: summary.unmatched,
  failures: summary.failures,
  failed_attempts: summary.failedAttempts,
  rate_limited: summary.rateLimited,
  retries: summary.retries,
  ...spendJson(summary.spend),
  routing_warnings: summary.routingWarnings,
  elapsed_ms: Duration.toMillis(summary.elapsed),
  interrupted: summary.interrupted,
  aborted_by: summary.abortedBy ?? null,
  complete: summary.complete,
  dropped: summary.dropped,
  redis_local_mode: summary.redisLocalMode,
  redis_away_at_end: summary.redisAwayAtEnd,
  budget: summary.budget === undefined
    ? null
    : { budget_usd: summary.budget.budgetUsd, remaining_usd: summary.budget.remainingUsd, over_usd: summary.budget.overUsd },
  accounts: Object.fromEntries(Object.entries(summary.accounts).map(([name, account]) => [name, accountJson(account)]))
})

/** What a run that lost Redis did meanwhile. */
const redisLine = (times: number, awayAtEnd: boolean): string =>
  `${times === 1 ? "lost once" : `lost ${times} times, each time`}: this process counted the shared limits alone, at its share, ${
    awayAtEnd ? (times === 1 ? "to the end: Redis did not come back" : "the last time to the end: Redis did not come back") : "until Redis was back"
  }`

/** What stopped a run a file failed: the output stops it at once, the input after a drain. */
const abortedBecause = {
  input: "the input could no longer be read: the run stopped",
  output: "the output could not be written: the run stopped"
} as const

/** How a stopped run ended, with the requests dropped on the wire when its drain ended (or when a failed output stopped it). */
const stoppedLine = ({ abortedBy, complete, dropped }: Pick<Summary, "abortedBy" | "complete" | "dropped">): string =>
  complete
    ? "interrupted once every line of the input was read; each one's result is in the output"
    : `${abortedBy === undefined ? "interrupted" : abortedBecause[abortedBy]}; the lines not answered are not in the output (a rerun sends them)` +
      (dropped === 0 ? "" : `; ${counted(dropped, "request", "requests")} on the wire when ${
        abortedBy === "output" ? "it stopped" : "the drain ended"
      } dropped unanswered (the upstream may bill what it generated for them)`)

const usd = (amount: number) => `$${amount.toFixed(6)}`

const percent = (share: number) => `${(share * 100).toFixed(1)}%`

const costLine = (spend: Spend): string =>
  [
    usd(spend.costUsd),
    ...(spend.unpriced === 0 ? [] : [`${counted(spend.unpriced, "attempt", "attempts")} of unpriced models not counted`]),
    ...(spend.unmetered === 0 ? [] : [`${counted(spend.unmetered, "attempt", "attempts")} without usage (cut in transit, or none sent) not counted`]),
    `retry tax ${usd(spend.retryTax.costUsd)} (${counted(spend.retryTax.attempts, "attempt", "attempts")}, ${spend.retryTax.tokens} tokens)`,
    `${spend.truncated} truncated (${percent(spend.truncationRate)})`,
    `reasoning ${percent(spend.reasoningShare)} of output`
  ].join("; ")

/** The budget: what is left of it, or that it was spent, and what the calls under way then cost past it. */
const budgetLine = ({ budgetUsd, overUsd, remainingUsd }: Budget): string =>
  remainingUsd > 0
    ? `${usd(budgetUsd)}, ${usd(remainingUsd)} left`
    : `${usd(budgetUsd)}, spent: it refuses new calls${
      overUsd === 0 ? "" : `; the calls under way when it was spent went ${usd(overUsd)} past it (answered, and billed)`
    }`

/**
 * An account's limit, and each model's where it has several (each model is capped apart); an
 * account has none before its first call (a lane starts with a model's first call).
 */
const limitText = (status: AccountStatus): string =>
  status.models.length === 0
    ? "not called"
    : status.models.length === 1
    ? `limit ${status.limit}`
    : `limit ${status.limit} (${status.models.map((lane) => `${lane.model} ${lane.limit}`).join(", ")})`

/** Why an account that is not serving at the end is not: what it last failed with. */
const lastFailureText = (status: AccountStatus): string =>
  status.state === "serving" || status.lastFailure === undefined ? "" : `, last failure: ${status.lastFailure}`

/** Its usable keys, and those the upstream rejected, which a user fixes in the accounts file or the environment. */
const keysText = (status: AccountStatus): string =>
  counted(status.usableKeys, "usable key", "usable keys") +
  (status.restingKeys.length === 0 ? "" : ` (${status.restingKeys.join(", ")} rejected, resting)`)

const statusText = (status: AccountStatus): string =>
  `${status.provider}${status.fallback ? " fallback" : ""}, ${describeState(status)}, ${limitText(status)}, ${keysText(status)}${
    lastFailureText(status)
  }`

/**
 * An account's line. Its answers cut short are said apart from those answered whole: a stream cut
 * mid-way is its line's failure, not an answer, whatever the ledger counts it as.
 */
const accountLine = (name: string, account: AccountSummary): string =>
  `  ${name}: ${account.status === undefined ? "" : `${statusText(account.status)}; `}${account.answered - account.truncated} answered${
    account.truncated === 0 ? "" : `, ${account.truncated} cut short`
  }, ${counted(account.attempts, "attempt", "attempts")}, ${account.tokens.prompt + account.tokens.completion} tokens, ${usd(account.costUsd)}`

/** The summary for people. */
export const format = (summary: Summary): string => {
  const failures = Object.entries(summary.failures)
    .sort(([, a], [, b]) => b - a)
    .map(([code, count]) => `${code} ${count}`)
    .join(", ")
  const { spend } = summary
  const { tokens } = spend
  const accounts = Object.entries(summary.accounts)
  return [
    `requests:  ${summary.requests} (${summary.succeeded} succeeded${
      summary.fromCache === 0 ? "" : `, ${summary.fromCache} of them from the response cache`
    }, ${summary.failed} failed, ${summary.skipped} skipped as already answered)`,
    ...(summary.unmatched === 0 ? [] : [
      `unmatched: ${counted(summary.unmatched, "result", "results")} already in the output ${
        summary.unmatched === 1 ? "has" : "have"
      } a custom_id no line of this input has (another input's?): kept`
    ]),
    ...(failures.length === 0 ? [] : [`failures:  ${failures}`]),
    `upstream:  ${counted(spend.attempts, "attempt", "attempts")}, ${summary.rateLimited} 429s met, ${
      counted(summary.retries, "retry", "retries")
    }, ${counted(summary.failedAttempts, "failed attempt", "failed attempts")}`,
    ...(summary.routingWarnings === 0
      ? []
      : [`routing:   ${counted(summary.routingWarnings, "warning", "warnings")} (thinking on a simple task)`]),
    `tokens:    ${tokens.prompt} prompt (${tokens.cacheHit} cache hit), ${tokens.completion} completion (${tokens.reasoning} reasoning)`,
    `cost:      ${costLine(spend)}`,
    ...(summary.budget === undefined ? [] : [`budget:    ${budgetLine(summary.budget)}`]),
    ...(accounts.length === 0 ? [] : ["accounts:", ...accounts.map(([name, account]) => accountLine(name, account))]),
    `elapsed:   ${Duration.isZero(summary.elapsed) ? "0ms" : Duration.format(summary.elapsed)}`,
    ...(summary.redisLocalMode === 0 ? [] : [`redis:     ${redisLine(summary.redisLocalMode, summary.redisAwayAtEnd)}`]),
    ...(summary.interrupted ? [`stopped:   ${stoppedLine(summary)}`] : [])
  ].join("\n")
}
