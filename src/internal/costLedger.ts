/**
 * The cost ledger's arithmetic: a pricing table compiled to integer prices, the split of a usage
 * into billed token kinds, and the book of running totals the ledger updates in place, one
 * synchronous step per attempt.
 *
 * Money is counted in integer pico-USD (1e-12 USD). A price of P USD per 1M tokens is P × 1e6
 * pico-USD per token, an integer for any price with at most 6 decimals (DeepSeek's have at most
 * 6: $0.003625). The cost of one attempt is an integer (rounded once, only when a peak
 * multiplier makes it fractional) and totals are exact integer sums (`PicoSum`), so they do not
 * depend on the order of the records; USD figures are converted from them only when read.
 *
 * @internal
 */
import * as Metric from "effect/Metric"
import * as MetricKey from "effect/MetricKey"
import * as MetricLabel from "effect/MetricLabel"
import type { Usage } from "../ChatSchema.js"

/** Integer pico-USD per token. */
interface TokenPrices {
  readonly cacheHit: number
  readonly cacheMiss: number
  readonly output: number
}

/** USD per 1M tokens, as configured. */
export interface UsdPrices {
  readonly cacheHit: number
  readonly cacheMiss: number
  readonly output: number
}

/** One configured window (validated by the public schema). */
interface WindowInput {
  readonly start: string
  readonly end: string
  readonly days?: ReadonlyArray<number> | undefined
  readonly except?: ReadonlyArray<string> | undefined
  readonly multiplier?: number | undefined
  readonly prices?: UsdPrices | undefined
}

/** The shape of one model's configured pricing (validated by the public schema). */
export interface ModelPricingInput extends UsdPrices {
  readonly peak?: WindowInput | ReadonlyArray<WindowInput> | undefined
}

/** The shape of a configured pricing table (validated by the public schema). */
export interface PricingInput {
  readonly models: Readonly<Record<string, ModelPricingInput>>
  readonly aliases?: Readonly<Record<string, string>> | undefined
}

interface CompiledWindow {
  /** Minutes since 00:00 UTC; the window is `[start, end)` and wraps past midnight when start > end. */
  readonly start: number
  readonly end: number
  /** UTC days of the week it applies on (0 Sunday). */
  readonly days: ReadonlySet<number>
  /** UTC dates it does not apply on, `YYYY-MM-DD`. */
  readonly except: ReadonlySet<string>
  readonly prices: TokenPrices
  readonly multiplier: number
}

interface CompiledModel {
  readonly base: TokenPrices
  readonly windows: ReadonlyArray<CompiledWindow>
}

const everyDay: ReadonlySet<number> = new Set([0, 1, 2, 3, 4, 5, 6])

/** A pricing table ready for lookups. */
export interface Compiled {
  readonly models: ReadonlyMap<string, CompiledModel>
  readonly aliases: ReadonlyMap<string, string>
}

const picoPerUsd = 1e12
const picoPerTokenPerUsdPerMillion = 1e6

const tokenPrices = (prices: UsdPrices): TokenPrices => ({
  cacheHit: Math.round(prices.cacheHit * picoPerTokenPerUsdPerMillion),
  cacheMiss: Math.round(prices.cacheMiss * picoPerTokenPerUsdPerMillion),
  output: Math.round(prices.output * picoPerTokenPerUsdPerMillion)
})

/** `"HH:MM"` (already validated) to minutes since midnight. */
const minutesOfDay = (time: string): number => {
  const [hours, minutes] = time.split(":").map(Number)
  return (hours ?? 0) * 60 + (minutes ?? 0)
}

const compileModel = (pricing: ModelPricingInput): CompiledModel => {
  const base = tokenPrices(pricing)
  const peak = pricing.peak
  const windows: ReadonlyArray<WindowInput> = peak === undefined ? [] : "start" in peak ? [peak] : peak
  return {
    base,
    windows: windows.map((window) => ({
      start: minutesOfDay(window.start),
      end: minutesOfDay(window.end),
      days: window.days === undefined ? everyDay : new Set(window.days),
      except: new Set(window.except ?? []),
      prices: window.prices === undefined ? base : tokenPrices(window.prices),
      multiplier: window.multiplier ?? 1
    }))
  }
}

/** @internal */
export const compile = (pricing: PricingInput): Compiled => ({
  models: new Map(Object.entries(pricing.models).map(([model, prices]) => [model, compileModel(prices)])),
  aliases: new Map(Object.entries(pricing.aliases ?? {}))
})

/** The priced model a name stands for: itself, or the model an alias points to. */
export const resolve = (compiled: Compiled, model: string): string | undefined => {
  if (compiled.models.has(model)) return model
  const target = compiled.aliases.get(model)
  return target !== undefined && compiled.models.has(target) ? target : undefined
}

/** A usage's tokens by how they are billed. */
export interface TokenSplit {
  readonly prompt: number
  readonly cacheHit: number
  readonly cacheMiss: number
  /** Includes `reasoning`. */
  readonly completion: number
  readonly reasoning: number
}

/** @internal */
export const noTokens: TokenSplit = { prompt: 0, cacheHit: 0, cacheMiss: 0, completion: 0, reasoning: 0 }

const nonNegative = (n: number): number => Math.max(0, n)

/**
 * A count a usage field gives, as counted: one that is no finite number >= 0 (`1e999` parses as
 * Infinity) counts nothing, where it would make every total it joins no number.
 */
const tokenCount = <N extends number | undefined>(n: N): N => (n === undefined || (Number.isFinite(n) && n >= 0) ? n : 0) as N

/**
 * DeepSeek reports `prompt_cache_hit_tokens` / `prompt_cache_miss_tokens`; other servers report
 * `prompt_tokens_details.cached_tokens`; a server that reports neither is billed as all miss,
 * the dearer assumption.
 */
export const splitUsage = (usage: Usage): TokenSplit => {
  const prompt = tokenCount(usage.prompt_tokens)
  const hit = tokenCount(usage.prompt_cache_hit_tokens)
  const miss = tokenCount(usage.prompt_cache_miss_tokens)
  const cached = tokenCount(usage.prompt_tokens_details?.cached_tokens)
  const cacheHit = hit ?? (miss !== undefined ? nonNegative(prompt - miss) : cached ?? 0)
  const answered = tokenCount(usage.completion_tokens)
  const reasoning = tokenCount(usage.completion_tokens_details?.reasoning_tokens) ?? 0
  return {
    prompt,
    cacheHit,
    cacheMiss: miss ?? nonNegative(prompt - cacheHit),
    completion: reasoningApart(prompt, answered, reasoning, tokenCount(usage.total_tokens))
      ? answered + reasoning
      : answered,
    reasoning
  }
}

/**
 * Whether a server counted reasoning apart from `completion_tokens` (some Gemini proxies), where
 * DeepSeek and OpenAI count it within: its total adds it on top, or there is more of it than of
 * the completion it would be part of. Its tokens are billed as output all the same.
 */
const reasoningApart = (prompt: number, completion: number, reasoning: number, total: number | undefined): boolean =>
  reasoning > completion || (reasoning > 0 && total === prompt + completion + reasoning)

const inMinutes = (minute: number, start: number, end: number): boolean =>
  start < end ? minute >= start && minute < end : minute >= start || minute < end

/**
 * Whether `window` applies at `nowMillis`: its time of day, on one of its days, not an excepted
 * date. A window that wraps past midnight belongs to the day it starts on: after midnight its day
 * and date are the day before. It runs on every priced attempt, so the date is formatted only for
 * a window with excepted dates.
 */
const applies = (window: CompiledWindow, nowMillis: number): boolean => {
  const minute = minuteOfDay(nowMillis)
  if (!inMinutes(minute, window.start, window.end)) return false
  const startedAt = window.start > window.end && minute < window.end ? nowMillis - millisPerDay : nowMillis
  return window.days.has(dayOfWeek(startedAt)) &&
    (window.except.size === 0 || !window.except.has(new Date(startedAt).toISOString().slice(0, 10)))
}

const minutesPerDay = 24 * 60
const millisPerDay = minutesPerDay * 60_000

/** The UTC day of the week, 0 Sunday (1970-01-01 was a Thursday), as `Date.getUTCDay` without a `Date`. */
const dayOfWeek = (nowMillis: number): number => ((Math.floor(nowMillis / millisPerDay) + 4) % 7 + 7) % 7

/** The price of one attempt of a priced model at `nowMillis`. */
export interface Price {
  readonly pricedAs: string
  readonly peak: boolean
  /** An integer. */
  readonly pico: number
}

const minuteOfDay = (nowMillis: number): number =>
  ((Math.floor(nowMillis / 60_000) % minutesPerDay) + minutesPerDay) % minutesPerDay

/** Prices `tokens` of `model` at `nowMillis`; `undefined` when the table has no price for it. */
export const price = (compiled: Compiled, model: string, tokens: TokenSplit, nowMillis: number): Price | undefined => {
  const pricedAs = resolve(compiled, model)
  const pricing = pricedAs === undefined ? undefined : compiled.models.get(pricedAs)
  if (pricedAs === undefined || pricing === undefined) return undefined
  const peak = pricing.windows.find((window) => applies(window, nowMillis))
  const prices = peak?.prices ?? pricing.base
  const pico = tokens.cacheHit * prices.cacheHit + tokens.cacheMiss * prices.cacheMiss + tokens.completion * prices.output
  return { pricedAs, peak: peak !== undefined, pico: Math.round(pico * (peak?.multiplier ?? 1)) }
}

/** @internal */
export const usdOfPico = (pico: bigint | number): number => Number(pico) / picoPerUsd

/** @internal */
export const picoOfUsd = (usd: number): bigint => BigInt(Math.round(usd * picoPerUsd))

/** What happened to an attempt's result. */
export type Disposition = "kept" | "discarded" | "truncated" | "failed"

/** One recorded attempt, priced. */
export interface AttemptCost {
  readonly disposition: Disposition
  /** Whether the attempt carried usage (it was billed). */
  readonly billed: boolean
  /** Whether it delivered output but no usage: billed by the server, for what is not known here. */
  readonly unmetered: boolean
  readonly tokens: TokenSplit
  /** An integer; `undefined` when the model has no price. */
  readonly pico: number | undefined
}

/**
 * An exact sum of integer pico-USD: a number while the sum is a safe integer (the common case,
 * up to $9,007), carried into a `bigint` beyond, so adding stays cheap and never rounds.
 */
export class PicoSum {
  private small = 0
  private large = 0n

  add(pico: number): void {
    const sum = this.small + pico
    // Both are integers: a sum that is a safe integer is exact, one that is not is carried.
    if (Number.isSafeInteger(sum)) {
      this.small = sum
    } else {
      this.large += BigInt(this.small)
      this.small = pico
    }
  }

  addSum(other: PicoSum): void {
    this.large += other.large
    this.add(other.small)
  }

  get value(): bigint {
    return this.large + BigInt(this.small)
  }
}

/** Running totals of one group of attempts, updated in place. */
export class Tally {
  requests = 0
  attempts = 0
  withOutput = 0
  truncated = 0
  unpriced = 0
  unmetered = 0
  prompt = 0
  cacheHit = 0
  cacheMiss = 0
  completion = 0
  reasoning = 0
  readonly pico = new PicoSum()
  retryTaxAttempts = 0
  retryTaxTokens = 0
  readonly retryTaxPico = new PicoSum()

  /** Adds one attempt, as its `disposition`. */
  add(attempt: AttemptCost): void {
    const { tokens, pico } = attempt
    this.attempts++
    this.dispose(attempt, attempt.disposition, 1)
    // An attempt billed nothing (no usage: a 429, a refusal) has no cost left uncounted.
    if (pico === undefined) this.unpriced += attempt.billed ? 1 : 0
    else this.pico.add(pico)
    if (attempt.unmetered) this.unmetered++
    this.prompt += tokens.prompt
    this.cacheHit += tokens.cacheHit
    this.cacheMiss += tokens.cacheMiss
    this.completion += tokens.completion
    this.reasoning += tokens.reasoning
  }

  /** Counts `attempt`, added as `from`, as `to` instead. */
  reclassify(attempt: AttemptCost, from: Disposition, to: Disposition): void {
    this.dispose(attempt, from, -1)
    this.dispose(attempt, to, 1)
  }

  /**
   * Counts (`sign` 1) or uncounts (-1) what `disposition` makes of `attempt`. A kept or truncated
   * attempt is an answer: it closes a request; a discarded one is retry tax; a failed one is
   * neither. An attempt produced output when it was kept or truncated, or was billed.
   */
  private dispose(attempt: AttemptCost, disposition: Disposition, sign: 1 | -1): void {
    if (disposition === "discarded") {
      this.retryTaxAttempts += sign
      this.retryTaxTokens += sign * (attempt.tokens.prompt + attempt.tokens.completion)
      if (attempt.pico !== undefined) this.retryTaxPico.add(sign * attempt.pico)
    } else if (disposition !== "failed") {
      this.requests += sign
    }
    if (disposition === "kept" || disposition === "truncated" || attempt.billed) this.withOutput += sign
    if (disposition === "truncated") this.truncated += sign
  }

  /** Adds the totals of another group. */
  addTally(other: Tally): void {
    this.requests += other.requests
    this.attempts += other.attempts
    this.withOutput += other.withOutput
    this.truncated += other.truncated
    this.unpriced += other.unpriced
    this.unmetered += other.unmetered
    this.prompt += other.prompt
    this.cacheHit += other.cacheHit
    this.cacheMiss += other.cacheMiss
    this.completion += other.completion
    this.reasoning += other.reasoning
    this.pico.addSum(other.pico)
    this.retryTaxAttempts += other.retryTaxAttempts
    this.retryTaxTokens += other.retryTaxTokens
    this.retryTaxPico.addSum(other.retryTaxPico)
  }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

const tokensKey = MetricKey.counter("weatherproof_tokens", {
  description: "Tokens billed, by account, model and kind (prompt_cache_hit, prompt_cache_miss, completion, reasoning; " +
    "completion includes reasoning, as in the API's usage)",
  incremental: true
})

const costKey = MetricKey.counter("weatherproof_cost_usd", {
  description: "Cost of the priced attempts in USD, by account and model",
  incremental: true
})

const unmeteredKey = MetricKey.counter("weatherproof_unmetered_attempts", {
  description: "Attempts billed for output whose usage never arrived (a body or stream cut in transit, or a server that sent none), by account and model: " +
    "their tokens and cost are not in weatherproof_tokens and weatherproof_cost_usd",
  incremental: true
})

/** @internal */
export const tokensCounter = Metric.fromMetricKey(tokensKey)

/** @internal */
export const costCounter = Metric.fromMetricKey(costKey)

/** @internal */
export const unmeteredCounter = Metric.fromMetricKey(unmeteredKey)

/** @internal */
export const budgetRemainingGauge = Metric.gauge("weatherproof_budget_remaining_usd", {
  description: "What is left of the ledger's budget in USD, never below 0 (no series without a budget)"
})

interface SpendCounters {
  readonly cacheHit: Metric.Metric.Counter<number>
  readonly cacheMiss: Metric.Metric.Counter<number>
  readonly completion: Metric.Metric.Counter<number>
  readonly reasoning: Metric.Metric.Counter<number>
  readonly cost: Metric.Metric.Counter<number>
  readonly unmetered: Metric.Metric.Counter<number>
}

/**
 * A counter of `key` with `labels` in its key: `Metric.tagged` would build the tagged key again
 * at every update, and a key costs more than the update.
 */
const labelled = (key: MetricKey.MetricKey.Counter<number>, labels: Readonly<Record<string, string>>) =>
  Metric.fromMetricKey(
    MetricKey.taggedWithLabels(key, Object.entries(labels).map(([name, value]) => MetricLabel.make(name, value)))
  )

const spendCounters = (account: string, model: string): SpendCounters => {
  const tokens = (kind: string) => labelled(tokensKey, { account, model, kind })
  return {
    cacheHit: tokens("prompt_cache_hit"),
    cacheMiss: tokens("prompt_cache_miss"),
    completion: tokens("completion"),
    reasoning: tokens("reasoning"),
    cost: labelled(costKey, { account, model }),
    unmetered: labelled(unmeteredKey, { account, model })
  }
}

/**
 * Adds an attempt's tokens and cost to the metrics of its (account, model); an unpriced attempt
 * adds no cost. Updated directly with the fiber's metric labels, as `Metric.incrementBy` would,
 * without its runtime steps: this runs on every attempt.
 */
const countSpend = (counters: SpendCounters, attempt: AttemptCost, labels: ReadonlyArray<MetricLabel.MetricLabel>): void => {
  const { pico, tokens } = attempt
  counters.cacheHit.unsafeUpdate(tokens.cacheHit, labels)
  counters.cacheMiss.unsafeUpdate(tokens.cacheMiss, labels)
  counters.completion.unsafeUpdate(tokens.completion, labels)
  counters.reasoning.unsafeUpdate(tokens.reasoning, labels)
  if (pico !== undefined) counters.cost.unsafeUpdate(usdOfPico(pico), labels)
  if (attempt.unmetered) counters.unmetered.unsafeUpdate(1, labels)
}

// ---------------------------------------------------------------------------------------------
// Book
// ---------------------------------------------------------------------------------------------

/** One (account, model): its totals and its spend counters, both made on its first attempt. */
interface Cell {
  readonly account: string
  readonly model: string
  readonly tally: Tally
  readonly counters: SpendCounters
}

/** The totals of every group, summed from the cells when read. */
export interface Totals {
  readonly total: Tally
  readonly byAccount: ReadonlyMap<string, Tally>
  readonly byModel: ReadonlyMap<string, Tally>
}

const addToGroup = (groups: Map<string, Tally>, key: string, tally: Tally): void => {
  let group = groups.get(key)
  if (group === undefined) {
    group = new Tally()
    groups.set(key, group)
  }
  group.addTally(tally)
}

/**
 * The ledger's running totals, one mutable cell per (account, model): recording an attempt
 * updates one cell, the run's spent total and the metrics, without copying anything; the totals
 * per run, account and model are summed from the cells when read, which is rare. Not thread-safe
 * and needs not be: each method runs in one synchronous step.
 */
export class Book {
  private readonly cells = new Map<string, Map<string, Cell>>()
  private readonly unpricedModels = new Set<string>()
  /** The run's spent total, read by the budget guard before every call. */
  readonly spent = new PicoSum()

  /**
   * Adds one attempt of `model` on `account`, counting its spend with the fiber's metric
   * `labels`. Answers whether it is the first billed attempt of a model without a price (one
   * without usage, a 400 naming a model that does not exist, has nothing to price).
   */
  record(account: string, model: string, attempt: AttemptCost, labels: ReadonlyArray<MetricLabel.MetricLabel>): boolean {
    const cell = this.cellOf(account, model)
    // Its unmetered series starts with its tokens', at 0: `rate()` needs it before the first cut.
    if (cell.tally.attempts === 0) cell.counters.unmetered.unsafeUpdate(0, labels)
    cell.tally.add(attempt)
    countSpend(cell.counters, attempt, labels)
    if (attempt.pico !== undefined) {
      this.spent.add(attempt.pico)
      return false
    }
    if (!attempt.billed || this.unpricedModels.has(model)) return false
    this.unpricedModels.add(model)
    return true
  }

  /** Counts an attempt of `model` on `account`, recorded as `from`, as `to` instead. */
  reclassify(account: string, model: string, attempt: AttemptCost, from: Disposition, to: Disposition): void {
    this.cellOf(account, model).tally.reclassify(attempt, from, to)
  }

  totals(): Totals {
    const total = new Tally()
    const byAccount = new Map<string, Tally>()
    const byModel = new Map<string, Tally>()
    for (const models of this.cells.values()) {
      for (const cell of models.values()) {
        total.addTally(cell.tally)
        addToGroup(byAccount, cell.account, cell.tally)
        addToGroup(byModel, cell.model, cell.tally)
      }
    }
    return { total, byAccount, byModel }
  }

  private cellOf(account: string, model: string): Cell {
    let models = this.cells.get(account)
    if (models === undefined) {
      models = new Map()
      this.cells.set(account, models)
    }
    let cell = models.get(model)
    if (cell === undefined) {
      cell = { account, model, tally: new Tally(), counters: spendCounters(account, model) }
      models.set(model, cell)
    }
    return cell
  }
}

/** `numerator / denominator`, 0 when there is nothing to divide. */
export const ratio = (numerator: number, denominator: number): number =>
  denominator === 0 ? 0 : numerator / denominator


/**
 * How to count a recorded attempt as another disposition, by the entry it was recorded with: a
 * failed attempt recorded as its call's last becomes `discarded` when the call is retried or
 * fails over instead (the pool records an attempt as it ends, before anyone decides).
 */
export const reclassifiers = new WeakMap<object, (to: Disposition) => void>()
