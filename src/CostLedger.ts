/**
 * What calls cost: a pricing table per model (configuration, never constants), the cost of one
 * usage, and a ledger of every attempt with totals per run, per account and per model — including
 * the retry tax (attempts billed and thrown away), the truncation rate and the share of output
 * spent on reasoning — and an optional budget that stops new calls once spent.
 *
 * Money is exact: prices become integer pico-USD (1e-12 USD) per token, each attempt's cost is an
 * integer (rounded to the nearest pico-USD only when a peak multiplier makes it fractional), and
 * totals are integer sums, converted to USD when read. Totals therefore do not drift and do not
 * depend on the order attempts were recorded in. Prices are kept to 6 decimals of USD per 1M
 * tokens.
 *
 * @since 0.1.0
 */

import * as FileSystem from "@effect/platform/FileSystem"
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import type * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import type { Usage } from "./ChatSchema.js"
import * as internal from "./internal/costLedger.js"
import { assertValid, finiteAtLeast } from "./internal/options.js"
import * as SchemaIssues from "./internal/schemaIssues.js"
import { TaggedError } from "./internal/sdkError.js"
import { parseJsonSaying } from "./internal/text.js"

// ---------------------------------------------------------------------------------------------
// Pricing table
// ---------------------------------------------------------------------------------------------

/** The lowest price but 0 a table may hold: anything below it is a price per token, mistaken. */
const lowestPriceUsd = 0.001

const UsdPerMillion = Schema.Number.pipe(
  Schema.finite({ message: () => "expected a finite price in USD per 1M tokens" }),
  Schema.nonNegative({ message: (issue) => `expected a price ≥ 0 in USD per 1M tokens, got ${String(issue.actual)}` }),
  Schema.filter((usd) => usd === 0 || usd >= lowestPriceUsd, {
    message: (issue) => {
      const usd = issue.actual as number
      return `${usd} USD per 1M tokens is below $${lowestPriceUsd}: prices are per 1M tokens ` +
        `(${usd} per token is ${Number((usd * 1e6).toPrecision(6))} per 1M)`
    }
  })
).annotations({ identifier: "UsdPerMillion" })

/**
 * USD per 1M tokens: prompt tokens served from the context cache, prompt tokens not in it, and
 * output (completion, reasoning included).
 *
 * @since 0.1.0
 * @category schemas
 */
export const Prices = Schema.Struct({
  cacheHit: UsdPerMillion,
  cacheMiss: UsdPerMillion,
  output: UsdPerMillion
}).annotations({ identifier: "Prices" })
/**
 * @since 0.1.0
 * @category models
 */
export type Prices = typeof Prices.Type

/**
 * A time of day in UTC, `"HH:MM"`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const TimeOfDay = Schema.String.pipe(
  Schema.pattern(/^([01]\d|2[0-3]):[0-5]\d$/, {
    message: (issue) => `expected a UTC time of day "HH:MM" (00:00-23:59), got ${JSON.stringify(issue.actual)}`
  })
).annotations({ identifier: "TimeOfDay" })

/**
 * A UTC date, `"YYYY-MM-DD"`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const DateOfYear = Schema.String.pipe(
  Schema.pattern(/^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$/, {
    message: (issue) => `expected a UTC date "YYYY-MM-DD", got ${JSON.stringify(issue.actual)}`
  })
).annotations({ identifier: "DateOfYear" })

const DayOfWeek = Schema.Int.pipe(
  Schema.between(0, 6, { message: (issue) => `expected a day of the week, 0 (Sunday) to 6, got ${String(issue.actual)}` })
)

/**
 * A daily UTC window `[start, end)` priced differently from the model's base prices: either its
 * own `prices`, or the base prices times `multiplier` (2 for a peak at double, 0.5 for an
 * off-peak half price). A window with `start` after `end` wraps past midnight (`"16:30"` to
 * `"00:30"`), and belongs to the day it starts on. `days` limits it to some days of the week
 * (UTC, 0 Sunday to 6 Saturday; default every day), and `except` skips dates (holidays:
 * DeepSeek's peak hours do not apply on Chinese public holidays).
 *
 * @since 0.1.0
 * @category schemas
 */
export const PeakPricing = Schema.Struct({
  start: TimeOfDay,
  end: TimeOfDay,
  days: Schema.optionalWith(Schema.Array(DayOfWeek), { exact: true }),
  except: Schema.optionalWith(Schema.Array(DateOfYear), { exact: true }),
  multiplier: Schema.optionalWith(
    Schema.Number.pipe(
      Schema.finite(),
      Schema.nonNegative({ message: (issue) => `expected a multiplier ≥ 0, got ${String(issue.actual)}` })
    ),
    { exact: true }
  ),
  prices: Schema.optionalWith(Prices, { exact: true })
}).pipe(
  Schema.filter((peak) => [
    (peak.multiplier === undefined) === (peak.prices === undefined)
      ? { path: [], message: "give exactly one of `multiplier` or `prices`" }
      : undefined,
    peak.start === peak.end ? { path: ["end"], message: "the window is empty: `end` equals `start`" } : undefined
  ]),
  Schema.annotations({ identifier: "PeakPricing" })
)
/**
 * @since 0.1.0
 * @category models
 */
export type PeakPricing = typeof PeakPricing.Type

/**
 * One window, or a list of them. The form is chosen by the value's type (not as a union), so an
 * error names only what is wrong within the form meant.
 */
const Windows = Schema.transformOrFail(
  Schema.Unknown,
  Schema.Union(PeakPricing, Schema.NonEmptyArray(PeakPricing)),
  {
    strict: true,
    decode: (input, options) =>
      Array.isArray(input)
        ? ParseResult.decodeUnknown(Schema.NonEmptyArray(PeakPricing))(input, options)
        : ParseResult.decodeUnknown(PeakPricing)(input, options),
    encode: ParseResult.succeed
  }
)

/**
 * One model's prices, with optional windows priced otherwise (one, or several: the first that
 * holds applies).
 *
 * @since 0.1.0
 * @category schemas
 */
export const ModelPricing = Schema.Struct({
  ...Prices.fields,
  peak: Schema.optionalWith(Windows, { exact: true })
}).annotations({ identifier: "ModelPricing" })
/**
 * @since 0.1.0
 * @category models
 */
export type ModelPricing = typeof ModelPricing.Type

/**
 * Prices per model name, and aliases: other names billed as a priced model (`deepseek-chat` →
 * `deepseek-flash`). An alias must point to a model of `models` and must not shadow one.
 * Model names are matched exactly. An alias names the same model: an `AccountPool` places its
 * calls on that model's lane, under the one cap the upstream keeps for it.
 *
 * @since 0.1.0
 * @category schemas
 */
export const PricingTable = Schema.Struct({
  models: Schema.Record({ key: Schema.String, value: ModelPricing }),
  aliases: Schema.optionalWith(Schema.Record({ key: Schema.String, value: Schema.String }), { exact: true })
}).pipe(
  Schema.filter((table) =>
    Object.entries(table.aliases ?? {}).map(([alias, target]) =>
      Object.hasOwn(table.models, alias)
        ? { path: ["aliases", alias], message: `alias shadows the priced model ${JSON.stringify(alias)}` }
        : Object.hasOwn(table.models, target)
        ? undefined
        : { path: ["aliases", alias], message: `alias points to ${JSON.stringify(target)}, which has no price in \`models\`` }
    )
  ),
  Schema.annotations({ identifier: "PricingTable" })
)
/**
 * @since 0.1.0
 * @category models
 */
export type PricingTable = typeof PricingTable.Type

/** DeepSeek's peak hours: 01:00-04:00 and 06:00-10:00 UTC on weekdays, at twice the off-peak price. */
const deepseekPeak: ReadonlyArray<PeakPricing> = [
  { start: "01:00", end: "04:00", days: [1, 2, 3, 4, 5], multiplier: 2 },
  { start: "06:00", end: "10:00", days: [1, 2, 3, 4, 5], multiplier: 2 }
]

/**
 * DeepSeek's published prices since 2026-08-16 (USD per 1M tokens, cache hit / miss / output,
 * off-peak; peak is twice that): `deepseek-flash` 0.003 / 0.15 / 0.60 and `deepseek-v4-pro`
 * 0.022 / 0.66 / 1.98, peak 01:00-04:00 and 06:00-10:00 UTC on weekdays. `deepseek-flash` also
 * serves the old `deepseek-v4-flash` name (and `deepseek-chat` / `deepseek-reasoner`, retired),
 * at flash rates; an `AccountPool` prices each attempt by the model the response names. DeepSeek
 * exempts Chinese public holidays from peak hours: list their dates in each window's `except`.
 * Prices change: pass your own table (`layer({ pricing })`, or a JSON file via `layerConfig`);
 * spread `defaultPricing.models` to extend this one.
 *
 * @since 0.1.0
 */
export const defaultPricing: PricingTable = {
  models: {
    "deepseek-flash": { cacheHit: 0.003, cacheMiss: 0.15, output: 0.6, peak: [deepseekPeak[0]!, deepseekPeak[1]!] },
    "deepseek-v4-pro": { cacheHit: 0.022, cacheMiss: 0.66, output: 1.98, peak: [deepseekPeak[0]!, deepseekPeak[1]!] }
  },
  aliases: {
    "deepseek-v4-flash": "deepseek-flash",
    "deepseek-chat": "deepseek-flash",
    "deepseek-reasoner": "deepseek-flash"
  }
}

/**
 * A pricing table that does not validate, or could not be read. `issues` are `path: message`
 * lines, e.g. `models["deepseek-v4-pro"].output: expected a price ≥ 0 in USD per 1M tokens, got -1`.
 *
 * @since 0.1.0
 * @category errors
 */
export class PricingError extends Data.TaggedError("PricingError")<{
  /** Where the table came from: a file path, or `"options"`. */
  readonly source: string
  readonly issues: ReadonlyArray<string>
}> {
  /** @since 0.1.0 */
  override get message(): string {
    return `invalid pricing table (${this.source}):\n  ${this.issues.join("\n  ")}`
  }
}

/**
 * Validates a pricing table (e.g. parsed JSON), reporting every issue with its path.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { CostLedger } from "weatherproof"
 *
 * declare const body: unknown // a pricing table from an untrusted source
 *
 * const ledger = Effect.gen(function*() {
 *   // A PricingError lists every problem with its path, e.g. `models["my-model"].output: expected a price ≥ 0 …`
 *   const pricing = yield* CostLedger.decodePricing(body, "admin request")
 *   return yield* CostLedger.make({ pricing })
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const decodePricing = (input: unknown, source = "input"): Either.Either<PricingTable, PricingError> =>
  Either.mapLeft(
    Schema.decodeUnknownEither(PricingTable, { errors: "all", onExcessProperty: "error" })(input),
    (error) => new PricingError({ source, issues: SchemaIssues.describeIssues(error) })
  )

/**
 * Reads a pricing table from a JSON file.
 *
 * @example
 * ```ts
 * import { NodeFileSystem } from "@effect/platform-node"
 * import { Effect } from "effect"
 * import { CostLedger } from "weatherproof"
 *
 * const ledger = CostLedger.loadPricing("pricing.json").pipe(
 *   Effect.flatMap((pricing) => CostLedger.make({ pricing, budgetUsd: 5 })),
 *   Effect.provide(NodeFileSystem.layer)
 * )
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const loadPricing = (path: string): Effect.Effect<PricingTable, PricingError, FileSystem.FileSystem> =>
  Effect.flatMap(FileSystem.FileSystem, (fs) => fs.readFileString(path)).pipe(
    Effect.mapError((error) => new PricingError({ source: path, issues: [`cannot read the file: ${error.message}`] })),
    Effect.flatMap((text) =>
      Either.mapLeft(parseJsonSaying("not JSON", text), (issue) => new PricingError({ source: path, issues: [issue] }))
    ),
    Effect.flatMap((json) => decodePricing(json, path))
  )

// ---------------------------------------------------------------------------------------------
// Cost of one usage
// ---------------------------------------------------------------------------------------------

/**
 * A usage's tokens by how they are billed. When the server reports no cache split
 * (`prompt_cache_hit_tokens` / `_miss_tokens`), `prompt_tokens_details.cached_tokens` counts as
 * hits; with neither, every prompt token is a miss. `completion` includes `reasoning`, added to
 * `completion_tokens` when a server counted it apart (its `total_tokens` adds it on top, or there
 * is more of it than of the completion).
 *
 * @since 0.1.0
 * @category models
 */
export type TokenSplit = internal.TokenSplit

/**
 * Splits a usage into billed token kinds.
 *
 * @since 0.1.0
 */
export const splitUsage: (usage: Usage) => TokenSplit = internal.splitUsage

/**
 * The cost of one usage. `Unpriced` when the table has no price for the model (its tokens are
 * still counted, its cost is not).
 *
 * @since 0.1.0
 * @category models
 */
export type Cost =
  | {
    readonly _tag: "Priced"
    readonly model: string
    /**
     * The table entry used: `model` itself, or the model its alias points to; when the table has
     * no price for `model`, the entry's `sentModel` (or the model its alias points to).
     */
    readonly pricedAs: string
    readonly usd: number
    /** Whether the model's peak window applied. */
    readonly peak: boolean
    readonly tokens: TokenSplit
  }
  | {
    readonly _tag: "Unpriced"
    readonly model: string
    readonly tokens: TokenSplit
  }

const costOf = (model: string, tokens: TokenSplit, price: internal.Price | undefined): Cost =>
  price === undefined
    ? { _tag: "Unpriced", model, tokens }
    : { _tag: "Priced", model, pricedAs: price.pricedAs, usd: internal.usdOfPico(price.pico), peak: price.peak, tokens }

// ---------------------------------------------------------------------------------------------
// Ledger
// ---------------------------------------------------------------------------------------------

/**
 * What became of an attempt's result:
 * - `kept`: returned to the caller;
 * - `discarded`: thrown away because the call was retried, or moved to another account (billed
 *   usage here is retry tax);
 * - `truncated`: a generation cut short whose partial output was returned or failed to the
 *   caller (still billed);
 * - `failed`: the last attempt of a call that failed with no output: its error is the answer.
 *
 * `kept` and `truncated` close a request (an answer); `discarded` and `failed` do not. An account
 * pool records a failed attempt as the last of its call (`truncated` or `failed`) and counts it
 * as `discarded` once the call is retried or fails over.
 *
 * @since 0.1.0
 * @category models
 */
export type Disposition = internal.Disposition

/**
 * One attempt to record.
 *
 * @since 0.1.0
 * @category models
 */
export interface Entry {
  /** A non-secret account label (never a key). */
  readonly account: string
  /** The model the answer named: its tokens and cost are counted under it. */
  readonly model: string
  /**
   * The model the request named, priced in `model`'s place when the table has no price for
   * `model` (servers answer with a dated name of the model asked for, such as `gpt-4o-2024-08-06`
   * for `gpt-4o`). Without it, such an attempt is unpriced: its cost is not counted, nor spent
   * from the budget.
   */
  readonly sentModel?: string | undefined
  /** What the server billed; absent when the attempt failed before any usage arrived. */
  readonly usage?: Usage | undefined
  readonly disposition: Disposition
  /**
   * Whether output reached this client (a content event) before the attempt ended. Default false.
   * Without `usage`, such an attempt (a body or stream cut in transit) was billed for tokens this
   * ledger cannot know: it counts in `Totals.unmetered`.
   */
  readonly delivered?: boolean | undefined
}

/**
 * Totals of a group of attempts. Rates are 0 when their denominator is.
 *
 * @since 0.1.0
 * @category models
 */
export interface Totals {
  /** Attempts whose outcome reached the caller (`kept` + `truncated`). */
  readonly requests: number
  /** Every attempt recorded. */
  readonly attempts: number
  readonly promptTokens: number
  /** Includes `reasoningTokens`. */
  readonly completionTokens: number
  readonly cacheHitTokens: number
  readonly cacheMissTokens: number
  readonly reasoningTokens: number
  /** Cost of the priced attempts. */
  readonly costUsd: number
  /** Billed attempts (with usage) whose model has no price: their tokens are counted, their cost is not. */
  readonly unpriced: number
  /**
   * Attempts that delivered output but no usage (a body or stream cut in transit, or a server
   * that sends none): the server billed them, for tokens and a cost these totals do not hold. Attempts cut before any output
   * (a deadline while the server generated) may be billed too; no figure counts them.
   */
  readonly unmetered: number
  /** What `discarded` attempts cost: how many (the retries and failovers), their prompt + completion tokens, their USD. */
  readonly retryTax: { readonly attempts: number; readonly tokens: number; readonly costUsd: number }
  readonly truncated: number
  /** `truncated` / attempts that produced output (kept, truncated, or discarded or failed with usage). */
  readonly truncationRate: number
  /** `reasoningTokens` / `completionTokens`. */
  readonly reasoningShare: number
}

/**
 * The ledger's totals: over the run, per account and per model (as recorded, aliases apart).
 *
 * @since 0.1.0
 * @category models
 */
export interface LedgerSnapshot {
  readonly total: Totals
  readonly byAccount: Readonly<Record<string, Totals>>
  readonly byModel: Readonly<Record<string, Totals>>
  /** The budget, if any: what is left of it, and what was spent past it (each never below 0). */
  readonly budget: Budget | undefined
}

/**
 * A ledger's budget as it stands. `overUsd` is what the calls under way when it was spent cost
 * past it: `guard` stops new calls, and those already sent are answered and billed.
 *
 * @since 0.1.0
 * @category models
 */
export interface Budget {
  readonly budgetUsd: number
  readonly remainingUsd: number
  readonly overUsd: number
}

/**
 * The budget is spent: no new call may start. Not retryable.
 *
 * @since 0.1.0
 * @category errors
 */
export class BudgetExceeded extends TaggedError("BudgetExceeded")<{
  readonly spentUsd: number
  readonly budgetUsd: number
}> {
  /** @since 0.1.0 */
  override get message(): string {
    return `budget exceeded: spent $${this.spentUsd} of $${this.budgetUsd}`
  }
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly pricing: PricingTable
  /** The cost of `usage` on `model` now (by Effect's `Clock`, for peak windows). */
  readonly cost: (model: string, usage: Usage) => Effect.Effect<Cost>
  /**
   * Records one attempt, priced now, and answers its cost. A model without a price is logged
   * (once per model) and counted as `unpriced`. Its tokens and cost also go to `tokensCounter`
   * and `costCounter`, and an `unmetered` one to `unmeteredCounter`.
   */
  readonly record: (entry: Entry) => Effect.Effect<Cost>
  /**
   * Fails with `BudgetExceeded` once the spent total reaches the budget; always succeeds without
   * one. Call it before each call. It is a check, not a reservation: calls already in flight
   * can take the total past the budget.
   */
  readonly guard: Effect.Effect<void, BudgetExceeded>
  readonly snapshot: Effect.Effect<LedgerSnapshot>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class CostLedger extends Context.Tag("weatherproof/CostLedger")<CostLedger, Service>() {}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Default `defaultPricing`. Replaces it whole. */
  readonly pricing?: PricingTable | undefined
  /** USD; no budget when absent. */
  readonly budgetUsd?: number | undefined
}

const totalsOf = (tally: internal.Tally): Totals => ({
  requests: tally.requests,
  attempts: tally.attempts,
  promptTokens: tally.prompt,
  completionTokens: tally.completion,
  cacheHitTokens: tally.cacheHit,
  cacheMissTokens: tally.cacheMiss,
  reasoningTokens: tally.reasoning,
  costUsd: internal.usdOfPico(tally.pico.value),
  unpriced: tally.unpriced,
  unmetered: tally.unmetered,
  retryTax: {
    attempts: tally.retryTaxAttempts,
    tokens: tally.retryTaxTokens,
    costUsd: internal.usdOfPico(tally.retryTaxPico.value)
  },
  truncated: tally.truncated,
  truncationRate: internal.ratio(tally.truncated, tally.withOutput),
  reasoningShare: internal.ratio(tally.reasoning, tally.completion)
})

const groupTotals = (groups: ReadonlyMap<string, internal.Tally>): Readonly<Record<string, Totals>> =>
  Object.fromEntries(Array.from(groups, ([key, tally]) => [key, totalsOf(tally)]))

const validatedPricing = (pricing: PricingTable): PricingTable =>
  Either.getOrElse(decodePricing(pricing, "options"), (error) => {
    assertValid("CostLedger", [error.message])
    return pricing
  })

const budgetPicoOf = (budgetUsd: number | undefined): bigint | undefined => {
  if (budgetUsd === undefined) return undefined
  assertValid("CostLedger", [finiteAtLeast("budgetUsd", budgetUsd, 0)])
  return internal.picoOfUsd(budgetUsd)
}

/**
 * Tokens of every recorded attempt, tagged `account`, `model` and `kind`: `prompt_cache_hit`,
 * `prompt_cache_miss`, `completion` and `reasoning` (`completion` includes `reasoning`, as in the
 * API's usage). Exported to Prometheus as `weatherproof_tokens_total`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const tokensCounter: Metric.Metric.Counter<number> = internal.tokensCounter

/**
 * Cost in USD of every recorded attempt whose model has a price, tagged `account` and `model`.
 * Exported to Prometheus as `weatherproof_cost_usd_total`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const costCounter: Metric.Metric.Counter<number> = internal.costCounter

/**
 * Attempts billed for output whose usage never arrived (a body or stream cut in transit, or none sent: see
 * `Totals.unmetered`), tagged `account` and `model`: their tokens and cost are missing from
 * `tokensCounter` and `costCounter`. Exported to Prometheus as
 * `weatherproof_unmetered_attempts_total`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const unmeteredCounter: Metric.Metric.Counter<number> = internal.unmeteredCounter

/**
 * What is left of a ledger's budget in USD, never below 0: set when the ledger is made and after
 * every recorded attempt; no series for a ledger without a budget. Exported to Prometheus as
 * `weatherproof_budget_remaining_usd`, for an alert before the budget stops the calls.
 *
 * @since 0.1.0
 * @category metrics
 */
export const budgetRemainingGauge: Metric.Metric.Gauge<number> = internal.budgetRemainingGauge

/** Said once, by the attempt that spent the budget: from then on `guard` refuses every call. */
/** The first billed attempt of a model without a price: with a budget, its calls are not held to it. */
const unpricedMessage = (model: string, budgetPico: bigint | undefined): string =>
  `CostLedger: no price for model ${JSON.stringify(model)}; its cost is not counted${
    budgetPico === undefined ? "" : `, nor held to the budget ($${internal.usdOfPico(budgetPico)}): its calls go on past it`
  }`

const budgetSpentMessage = (spentPico: bigint, budgetPico: bigint): string =>
  `CostLedger: the budget of $${internal.usdOfPico(budgetPico)} is spent ($${internal.usdOfPico(spentPico)}); new calls are refused`

/**
 * A ledger in memory. Dies with `IllegalArgumentException` on an invalid pricing table or budget
 * (use `decodePricing` to validate untrusted input with typed errors first).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ChatSchema, CostLedger } from "weatherproof"
 *
 * declare const usage: ChatSchema.Usage // what a completion reported
 *
 * const program = Effect.gen(function*() {
 *   const ledger = yield* CostLedger.make({ budgetUsd: 20 })
 *   yield* ledger.guard // fails with BudgetExceeded once $20 are spent
 *   yield* ledger.record({ account: "main", model: "deepseek-v4-flash", usage, disposition: "kept" })
 *   const { total } = yield* ledger.snapshot
 *   return total.costUsd
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service> =>
  Effect.gen(function*() {
    const pricing = yield* Effect.sync(() => validatedPricing(options.pricing ?? defaultPricing))
    const budgetPico = yield* Effect.sync(() => budgetPicoOf(options.budgetUsd))
    const compiled = internal.compile(pricing)
    const book = yield* Effect.sync(() => new internal.Book())

    const remainingPico = (spent: bigint): bigint => budgetPico === undefined || budgetPico <= spent ? 0n : budgetPico - spent
    const publishRemaining = (): void => {
      if (budgetPico !== undefined) budgetRemainingGauge.unsafeUpdate(internal.usdOfPico(remainingPico(book.spent.value)), [])
    }
    publishRemaining()

    const priceNow = (model: string, tokens: TokenSplit) =>
      Effect.map(Clock.currentTimeMillis, (now) => internal.price(compiled, model, tokens, now))

    // One synchronous step on every attempt: the clock and the metric labels are read from the
    // fiber, and only the first attempt of a model without a price goes on to log.
    const record = (entry: Entry) =>
      Effect.withFiberRuntime<Cost>((fiber) => {
        const tokens = entry.usage === undefined ? internal.noTokens : internal.splitUsage(entry.usage)
        const now = Context.get(fiber.currentDefaultServices, Clock.Clock).unsafeCurrentTimeMillis()
        const price = internal.price(compiled, entry.model, tokens, now) ??
          (entry.sentModel === undefined ? undefined : internal.price(compiled, entry.sentModel, tokens, now))
        const attempt: internal.AttemptCost = {
          disposition: entry.disposition,
          billed: entry.usage !== undefined,
          unmetered: entry.usage === undefined && entry.delivered === true,
          tokens,
          pico: price?.pico
        }
        const spentBefore = book.spent.value
        const firstUnpriced = book.record(
          entry.account,
          entry.model,
          attempt,
          fiber.getFiberRef(FiberRef.currentMetricLabels)
        )
        if (entry.disposition !== "kept") {
          let counted: Disposition = entry.disposition
          internal.reclassifiers.set(entry, (to) => {
            book.reclassify(entry.account, entry.model, attempt, counted, to)
            counted = to
          })
        }
        publishRemaining()
        const cost = costOf(entry.model, tokens, price)
        const spentBudget = budgetPico !== undefined && spentBefore < budgetPico && book.spent.value >= budgetPico
        if (!firstUnpriced && !spentBudget) return Effect.succeed(cost)
        return Effect.as(
          Effect.all([
            firstUnpriced
              ? Effect.logWarning(unpricedMessage(entry.model, budgetPico))
              : Effect.void,
            spentBudget ? Effect.logWarning(budgetSpentMessage(book.spent.value, budgetPico)) : Effect.void
          ]),
          cost
        )
      })

    return CostLedger.of({
      pricing,
      cost: (model, usage) => {
        const tokens = internal.splitUsage(usage)
        return Effect.map(priceNow(model, tokens), (price) => costOf(model, tokens, price))
      },
      record,
      guard: budgetPico === undefined ? Effect.void : Effect.suspend(() => {
        const spent = book.spent.value
        return spent >= budgetPico
          ? Effect.fail(
            new BudgetExceeded({ spentUsd: internal.usdOfPico(spent), budgetUsd: internal.usdOfPico(budgetPico) })
          )
          : Effect.void
      }),
      snapshot: Effect.sync(() => {
        const { byAccount, byModel, total } = book.totals()
        const spent = total.pico.value
        return {
          total: totalsOf(total),
          byAccount: groupTotals(byAccount),
          byModel: groupTotals(byModel),
          budget: budgetPico === undefined ? undefined : {
            budgetUsd: internal.usdOfPico(budgetPico),
            remainingUsd: internal.usdOfPico(remainingPico(spent)),
            overUsd: internal.usdOfPico(spent > budgetPico ? spent - budgetPico : 0n)
          }
        }
      })
    })
  })

/**
 * A ledger with the given table and budget; with a fixed table it is also the test double.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<CostLedger> => Layer.effect(CostLedger, make(options))

/**
 * A ledger configured from the environment:
 * - `WEATHERPROOF_PRICING_FILE`: path of a JSON pricing table (see `PricingTable`), which
 *   replaces `defaultPricing` whole (a model it does not list is unpriced); default `defaultPricing`;
 * - `WEATHERPROOF_BUDGET_USD`: a budget in USD, a decimal number (`25`, `12.50`); default none
 *   (an empty value is none).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig: Layer.Layer<CostLedger, ConfigError.ConfigError | PricingError, FileSystem.FileSystem> =
  Layer.effect(
    CostLedger,
    Effect.gen(function*() {
      const file = yield* Config.option(Config.nonEmptyString("WEATHERPROOF_PRICING_FILE"))
      // Written as a person writes an amount: `Number` would read "" as 0 (every call refused), and
      // take "Infinity" or "0x10".
      const budgetUsd = yield* Config.option(
        Config.string("WEATHERPROOF_BUDGET_USD").pipe(Config.mapOrFail((written) => {
          const text = written.trim()
          if (text === "") return Either.left(ConfigError.MissingData([], "expected a budget in USD"))
          return /^\d+(\.\d+)?$/.test(text)
            ? Either.right(Number(text))
            : Either.left(ConfigError.InvalidData([], "expected a budget ≥ 0 in USD, a decimal number (as 25 or 12.50)"))
        }))
      )
      const pricing = Option.isSome(file) ? yield* loadPricing(file.value) : defaultPricing
      return yield* make({ pricing, budgetUsd: Option.getOrUndefined(budgetUsd) })
    })
  )
