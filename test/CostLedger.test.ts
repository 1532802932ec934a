import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as Ref from "effect/Ref"
import * as TestClock from "effect/TestClock"
import type { Usage } from "../src/ChatSchema.js"
import * as CostLedger from "../src/CostLedger.js"
import * as ApiError from "../src/ApiError.js"
import * as internal from "../src/internal/costLedger.js"
import { flatPricing } from "./support/pricing.js"

const dispositions: ReadonlyArray<CostLedger.Disposition> = ["kept", "discarded", "truncated", "failed"]

/** Without the warnings of the models a property draws that have no price. */
const quiet = Logger.withMinimumLogLevel(LogLevel.None)

/** DeepSeek-style usage with the cache split and reasoning tokens. */
const usage = (hit: number, miss: number, completion: number, reasoning = 0): Usage => ({
  prompt_tokens: hit + miss,
  completion_tokens: completion,
  total_tokens: hit + miss + completion,
  prompt_cache_hit_tokens: hit,
  prompt_cache_miss_tokens: miss,
  completion_tokens_details: { reasoning_tokens: reasoning }
})

// Flash 0.0028 / 0.14 / 0.28 per 1M: 800 × 0.0028 + 200 × 0.14 + 500 × 0.28 = 170.24 µUSD.
const flashUsage = usage(800, 200, 500, 300)
const flashUsd = 0.00017024
// Pro 0.003625 / 0.435 / 0.87 per 1M: 1500 × 0.003625 + 500 × 0.435 + 1000 × 0.87 = 1092.9375 µUSD.
const proUsage = usage(1500, 500, 1000, 800)
const proUsd = 0.0010929375

const utc = (hours: number, minutes: number) => Date.UTC(2026, 4, 12, hours, minutes)

describe("CostLedger.defaultPricing: DeepSeek's published prices with peak hours", () => {
  const usage = { prompt_tokens: 1_000_000, completion_tokens: 1_000_000, total_tokens: 2_000_000, prompt_cache_hit_tokens: 0 }
  /** The cost of 1M cache-miss prompt tokens and 1M output tokens of `model` at `iso` (UTC). */
  const costAt = (model: string, iso: string) =>
    Effect.gen(function*() {
      yield* TestClock.setTime(Date.parse(iso))
      const ledger = yield* CostLedger.make()
      const cost = yield* ledger.cost(model, usage)
      return cost._tag === "Priced" ? { usd: cost.usd, peak: cost.peak, pricedAs: cost.pricedAs } : cost._tag
    })

  it.effect("off-peak is the base price, peak (01-04 and 06-10 UTC, weekdays) twice it; weekends are off-peak", () =>
    Effect.gen(function*() {
      // 2026-11-30 is a Monday, 2026-11-29 a Sunday.
      expect(yield* costAt("deepseek-flash", "2026-11-30T05:00:00Z")).toEqual({ usd: 0.75, peak: false, pricedAs: "deepseek-flash" })
      expect(yield* costAt("deepseek-flash", "2026-11-30T01:00:00Z")).toEqual({ usd: 1.5, peak: true, pricedAs: "deepseek-flash" })
      expect(yield* costAt("deepseek-flash", "2026-11-30T09:59:00Z")).toMatchObject({ peak: true })
      expect(yield* costAt("deepseek-flash", "2026-11-30T10:00:00Z")).toMatchObject({ peak: false })
      expect(yield* costAt("deepseek-flash", "2026-11-29T02:00:00Z")).toMatchObject({ peak: false })
      expect(yield* costAt("deepseek-v4-pro", "2026-11-30T07:00:00Z")).toEqual({ usd: 5.28, peak: true, pricedAs: "deepseek-v4-pro" })
    }))

  it.effect("the old flash names are billed as deepseek-flash", () =>
    Effect.gen(function*() {
      for (const model of ["deepseek-v4-flash", "deepseek-chat", "deepseek-reasoner"]) {
        expect(yield* costAt(model, "2026-11-30T05:00:00Z"), model).toEqual({ usd: 0.75, peak: false, pricedAs: "deepseek-flash" })
      }
    }))

  it.effect("a window applies only on its days, and never on its excepted dates (holidays)", () =>
    Effect.gen(function*() {
      const pricing: CostLedger.PricingTable = {
        models: {
          m: { cacheHit: 0, cacheMiss: 1, output: 0, peak: { start: "01:00", end: "04:00", days: [1], except: ["2026-12-07"], multiplier: 2 } }
        }
      }
      const costOn = (iso: string) =>
        Effect.gen(function*() {
          yield* TestClock.setTime(Date.parse(iso))
          const ledger = yield* CostLedger.make({ pricing })
          return yield* ledger.cost("m", { prompt_tokens: 1_000_000, completion_tokens: 0, total_tokens: 1_000_000 })
        })
      expect(yield* costOn("2026-11-30T02:00:00Z")).toMatchObject({ usd: 2, peak: true }) // a Monday
      expect(yield* costOn("2026-12-01T02:00:00Z")).toMatchObject({ usd: 1, peak: false }) // a Tuesday
      expect(yield* costOn("2026-12-07T02:00:00Z")).toMatchObject({ usd: 1, peak: false }) // an excepted Monday
      // A window past midnight is its start day's: Friday night's ends on Saturday morning.
      const nights = (except: ReadonlyArray<string>): CostLedger.PricingTable => ({
        models: { m: { cacheHit: 0, cacheMiss: 1, output: 0, peak: { start: "22:00", end: "06:00", days: [5], except, multiplier: 2 } } }
      })
      const costOnNight = (iso: string, except: ReadonlyArray<string> = []) =>
        Effect.gen(function*() {
          yield* TestClock.setTime(Date.parse(iso))
          const ledger = yield* CostLedger.make({ pricing: nights(except) })
          return yield* ledger.cost("m", { prompt_tokens: 1_000_000, completion_tokens: 0, total_tokens: 1_000_000 })
        })
      expect(yield* costOnNight("2026-12-04T23:00:00Z")).toMatchObject({ peak: true }) // Friday night
      expect(yield* costOnNight("2026-12-05T01:00:00Z")).toMatchObject({ peak: true }) // its Saturday morning
      expect(yield* costOnNight("2026-12-05T01:00:00Z", ["2026-12-04"])).toMatchObject({ peak: false }) // an excepted Friday's
      expect(yield* costOnNight("2026-12-04T01:00:00Z")).toMatchObject({ peak: false }) // Thursday night's Friday morning
      expect(Either.isLeft(CostLedger.decodePricing({ models: { m: { ...pricing.models.m, peak: { start: "01:00", end: "02:00", days: [7], multiplier: 2 } } } })))
        .toBe(true)
    }))
})

describe("CostLedger.cost", () => {
  it.effect("prices cache hits, cache misses and output (reasoning included) per model", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({ pricing: flatPricing })
      expect(yield* ledger.cost("deepseek-v4-flash", flashUsage)).toEqual({
        _tag: "Priced",
        model: "deepseek-v4-flash",
        pricedAs: "deepseek-v4-flash",
        usd: flashUsd,
        peak: false,
        tokens: { prompt: 1000, cacheHit: 800, cacheMiss: 200, completion: 500, reasoning: 300 }
      })
      expect(yield* ledger.cost("deepseek-v4-pro", proUsage)).toMatchObject({ usd: proUsd })
    }))

  it.effect("bills legacy aliases as flash", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({ pricing: flatPricing })
      expect(yield* ledger.cost("deepseek-reasoner", flashUsage)).toMatchObject({
        _tag: "Priced",
        model: "deepseek-reasoner",
        pricedAs: "deepseek-v4-flash",
        usd: flashUsd
      })
    }))

  it.effect("falls back to cached_tokens, then to all prompt tokens as misses", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({ pricing: flatPricing })
      const base = { prompt_tokens: 1000, completion_tokens: 100, total_tokens: 1100 }
      // 600 × 0.0028 + 400 × 0.14 + 100 × 0.28 = 85.68 µUSD
      const cached = yield* ledger.cost("deepseek-v4-flash", { ...base, prompt_tokens_details: { cached_tokens: 600 } })
      expect(cached).toMatchObject({ usd: 0.00008568, tokens: { cacheHit: 600, cacheMiss: 400 } })
      // 1000 × 0.14 + 100 × 0.28 = 168 µUSD
      const bare = yield* ledger.cost("deepseek-v4-flash", base)
      expect(bare).toMatchObject({ usd: 0.000168, tokens: { cacheHit: 0, cacheMiss: 1000, reasoning: 0 } })
      // Only the hit count: the rest of the prompt is a miss.
      const hitOnly = yield* ledger.cost("deepseek-v4-flash", { ...base, prompt_cache_hit_tokens: 600 })
      expect(hitOnly).toMatchObject({ usd: 0.00008568 })
    }))

  it.effect("bills reasoning a server counts apart from completion_tokens (its total says so) as output on top", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({ pricing: flatPricing })
      const reasoning = { completion_tokens_details: { reasoning_tokens: 300 } }
      // 1000 × 0.14 + 400 × 0.28 = 252 µUSD: 100 answered and 300 reasoned, the total their sum.
      const apart = yield* ledger.cost("deepseek-v4-flash", { prompt_tokens: 1000, completion_tokens: 100, total_tokens: 1400, ...reasoning })
      expect(apart).toMatchObject({ usd: 0.000252, tokens: { completion: 400, reasoning: 300 } })
      // More reasoning than completion says as much when no total is sent.
      const noTotal = yield* ledger.cost("deepseek-v4-flash", { prompt_tokens: 1000, completion_tokens: 100, ...reasoning })
      expect(noTotal).toMatchObject({ usd: 0.000252, tokens: { completion: 400 } })
      // DeepSeek's and OpenAI's way, reasoning within completion_tokens: billed once.
      const within = yield* ledger.cost("deepseek-v4-flash", { prompt_tokens: 1000, completion_tokens: 400, total_tokens: 1400, ...reasoning })
      expect(within).toMatchObject({ usd: 0.000252, tokens: { completion: 400, reasoning: 300 } })
    }))

  it.effect("an unknown model is Unpriced, with its tokens still split", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({ pricing: flatPricing })
      expect(yield* ledger.cost("gpt-9", flashUsage)).toEqual({
        _tag: "Unpriced",
        model: "gpt-9",
        tokens: { prompt: 1000, cacheHit: 800, cacheMiss: 200, completion: 500, reasoning: 300 }
      })
    }))

  it.effect("applies a peak multiplier inside its UTC window, by the Clock", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({
        pricing: {
          models: {
            flash: { cacheHit: 0.003, cacheMiss: 0.15, output: 0.6, peak: { start: "01:00", end: "09:00", multiplier: 2 } }
          }
        }
      })
      // 400 × 0.003 + 600 × 0.15 + 200 × 0.6 = 211.2 µUSD off-peak, double at peak.
      const at = (millis: number) =>
        Effect.zipRight(TestClock.setTime(millis), ledger.cost("flash", usage(400, 600, 200)))
      expect(yield* at(utc(0, 59))).toMatchObject({ usd: 0.0002112, peak: false })
      expect(yield* at(utc(1, 0))).toMatchObject({ usd: 0.0004224, peak: true })
      expect(yield* at(utc(8, 59))).toMatchObject({ usd: 0.0004224, peak: true })
      expect(yield* at(utc(9, 0))).toMatchObject({ usd: 0.0002112, peak: false })
    }))

  it.effect("a window with its own prices wraps past midnight", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({
        pricing: {
          models: {
            flash: {
              cacheHit: 0.0028,
              cacheMiss: 0.14,
              output: 0.28,
              peak: { start: "16:30", end: "00:30", prices: { cacheHit: 0.0014, cacheMiss: 0.07, output: 0.14 } }
            }
          }
        }
      })
      const at = (millis: number) =>
        Effect.zipRight(TestClock.setTime(millis), ledger.record({
          account: "a",
          model: "flash",
          usage: usage(0, 1000, 100),
          disposition: "kept"
        }))
      // Discounted: 1000 × 0.07 + 100 × 0.14 = 84 µUSD; otherwise 168 µUSD.
      expect(yield* at(utc(16, 29))).toMatchObject({ usd: 0.000168, peak: false })
      expect(yield* at(utc(16, 30))).toMatchObject({ usd: 0.000084, peak: true })
      expect(yield* at(utc(23, 59))).toMatchObject({ usd: 0.000084, peak: true })
      expect(yield* at(utc(0, 29))).toMatchObject({ usd: 0.000084, peak: true })
      expect(yield* at(utc(0, 30))).toMatchObject({ usd: 0.000168, peak: false })
      expect((yield* ledger.snapshot).total.costUsd).toBe(0.000588)
    }))
})

describe("CostLedger ledger", () => {
  it.effect("totals per run, account and model, with retry tax, truncation rate and reasoning share", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({ pricing: flatPricing })
      const flash = "deepseek-v4-flash"
      const pro = "deepseek-v4-pro"
      // Account a: a billed attempt thrown away by a retry, then the kept one.
      yield* ledger.record({ account: "a", model: flash, usage: flashUsage, disposition: "discarded" })
      yield* ledger.record({ account: "a", model: flash, usage: flashUsage, disposition: "kept" })
      // Account b: a truncated answer, a 429 (no usage) before a kept one.
      yield* ledger.record({ account: "b", model: pro, usage: proUsage, disposition: "truncated" })
      yield* ledger.record({ account: "b", model: flash, disposition: "discarded" })
      yield* ledger.record({ account: "b", model: pro, usage: proUsage, disposition: "kept" })

      const snapshot = yield* ledger.snapshot
      expect(snapshot.total).toEqual({
        requests: 3,
        attempts: 5,
        promptTokens: 6000,
        completionTokens: 3000,
        cacheHitTokens: 4600,
        cacheMissTokens: 1400,
        reasoningTokens: 2200,
        costUsd: 0.002526355, // 2 × 170.24 + 2 × 1092.9375 µUSD
        unpriced: 0,
        unmetered: 0,
        retryTax: { attempts: 2, tokens: 1500, costUsd: flashUsd },
        truncated: 1,
        truncationRate: 0.25, // 1 of 4 attempts with output (the 429 produced none)
        reasoningShare: 2200 / 3000
      })
      expect(snapshot.byAccount["a"]).toMatchObject({
        requests: 1,
        attempts: 2,
        costUsd: 0.00034048,
        retryTax: { attempts: 1, tokens: 1500, costUsd: flashUsd },
        truncationRate: 0,
        reasoningShare: 0.6
      })
      expect(snapshot.byAccount["b"]).toMatchObject({
        requests: 2,
        attempts: 3,
        costUsd: 0.002185875,
        retryTax: { attempts: 1, tokens: 0, costUsd: 0 },
        truncated: 1,
        truncationRate: 0.5,
        reasoningShare: 0.8
      })
      expect(snapshot.byModel[flash]).toMatchObject({ requests: 1, attempts: 3, truncationRate: 0 })
      expect(snapshot.byModel[pro]).toMatchObject({ requests: 2, attempts: 2, truncationRate: 0.5 })
      expect(snapshot.budget).toBeUndefined()
    }))

  it.effect("an unpriced model is counted, not costed, logged once, and does not crash", () =>
    Effect.gen(function*() {
      const warnings: Array<unknown> = []
      const logger = Logger.make(({ logLevel, message }) => {
        if (logLevel._tag === "Warning") warnings.push(message)
      })
      const ledger = yield* CostLedger.make({ pricing: flatPricing })
      const mystery = ledger.record({ account: "a", model: "mystery", usage: flashUsage, disposition: "kept" })
      // An attempt refused without usage (a 400 naming a model that does not exist) costs nothing to price: not told.
      const refused = ledger.record({ account: "a", model: "no-such-model", usage: undefined, disposition: "discarded" })
      const costs = yield* Effect.all([refused, mystery, mystery]).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, logger))
      )
      expect(costs.map((cost) => cost._tag)).toEqual(["Unpriced", "Unpriced", "Unpriced"])
      expect(warnings).toEqual([["CostLedger: no price for model \"mystery\"; its cost is not counted"]])
      // With a budget, which that cost can then not count against: said so.
      const budgeted = yield* CostLedger.make({ pricing: flatPricing, budgetUsd: 5 })
      yield* budgeted.record({ account: "a", model: "mystery", usage: flashUsage, disposition: "kept" }).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, logger))
      )
      expect(warnings[1]).toEqual([
        "CostLedger: no price for model \"mystery\"; its cost is not counted, nor held to the budget ($5): its calls go on past it"
      ])
      yield* ledger.record({ account: "a", model: "deepseek-v4-flash", usage: flashUsage, disposition: "kept" })
      // An attempt with no usage (a 429) billed nothing: no cost is left uncounted.
      yield* ledger.record({ account: "a", model: "mystery", usage: undefined, disposition: "discarded" })
      const { total, byModel } = yield* ledger.snapshot
      expect(total).toMatchObject({ attempts: 5, requests: 3, unpriced: 2, promptTokens: 3000, costUsd: flashUsd })
      expect(byModel["mystery"]).toMatchObject({ unpriced: 2, costUsd: 0 })
    }))

  it.effect("an attempt that delivered output but no usage is unmetered: counted apart, in the totals and the metric", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({ pricing: flatPricing })
      const flash = "deepseek-v4-flash"
      const unmetered = Effect.map(
        Metric.value(CostLedger.unmeteredCounter.pipe(Metric.tagged("account", "a"), Metric.tagged("model", flash))),
        (state) => state.count
      )
      const before = yield* unmetered
      // A body cut in transit, a stream cut mid-way: output arrived, its usage did not.
      yield* ledger.record({ account: "a", model: flash, disposition: "discarded", delivered: true })
      yield* ledger.record({ account: "a", model: flash, disposition: "truncated", delivered: true })
      // Output with its usage is metered; no output (a 429) billed nothing.
      yield* ledger.record({ account: "a", model: flash, usage: flashUsage, disposition: "kept", delivered: true })
      yield* ledger.record({ account: "a", model: flash, disposition: "discarded", delivered: false })
      yield* ledger.record({ account: "a", model: flash, disposition: "discarded" })
      const { byAccount, total } = yield* ledger.snapshot
      expect(total).toMatchObject({ attempts: 5, unmetered: 2, costUsd: flashUsd })
      expect(byAccount["a"]?.unmetered).toBe(2)
      expect((yield* unmetered) - before).toBe(2)
      // A metered attempt starts the series, at 0, with its tokens': `rate()` needs it before the first cut.
      yield* ledger.record({ account: "metered-only", model: flash, usage: flashUsage, disposition: "kept", delivered: true })
      const series = yield* Effect.map(Metric.snapshot, (pairs) =>
        pairs.filter((pair) =>
          pair.metricKey.name === "weatherproof_unmetered_attempts" &&
          pair.metricKey.tags.some((tag) => tag.key === "account" && tag.value === "metered-only")
        ))
      expect(series.map((pair) => pair.metricState)).toMatchObject([{ count: 0 }])
    }))

  it.effect("totals are exact: three 0.1 USD attempts make 0.3, not 0.30000000000000004", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({ pricing: { models: { m: { cacheHit: 0, cacheMiss: 0, output: 0.1 } } } })
      const attempt = ledger.record({ account: "a", model: "m", usage: usage(0, 0, 1_000_000), disposition: "kept" })
      yield* Effect.replicateEffect(attempt, 3)
      expect(0.1 + 0.1 + 0.1).not.toBe(0.3)
      expect((yield* ledger.snapshot).total.costUsd).toBe(0.3)
    }))

  it("totals do not depend on the order attempts are recorded in", () => {
    const entry = FastCheck.record({
      account: FastCheck.constantFrom("a", "b"),
      model: FastCheck.constantFrom("deepseek-v4-flash", "deepseek-v4-pro", "deepseek-chat", "unknown"),
      usage: FastCheck.tuple(
        FastCheck.nat(200_000),
        FastCheck.nat(200_000),
        FastCheck.nat(50_000),
        FastCheck.nat(50_000)
      ).map(([hit, miss, completion, reasoning]) => usage(hit, miss, completion + reasoning, reasoning)),
      disposition: FastCheck.constantFrom(...dispositions)
    })
    const entriesAndShuffle = FastCheck.array(entry, { minLength: 1, maxLength: 30 }).chain((entries) =>
      FastCheck.tuple(
        FastCheck.constant(entries),
        FastCheck.shuffledSubarray(entries, { minLength: entries.length, maxLength: entries.length })
      )
    )
    const snapshotOf = (entries: ReadonlyArray<CostLedger.Entry>) =>
      Effect.runSync(Effect.gen(function*() {
        const ledger = yield* CostLedger.make({ pricing: flatPricing })
        yield* Effect.forEach(entries, ledger.record, { discard: true })
        return yield* ledger.snapshot
      }).pipe(quiet))
    FastCheck.assert(
      FastCheck.property(entriesAndShuffle, ([entries, shuffled]) => {
        const inOrder = snapshotOf(entries)
        expect(snapshotOf(shuffled)).toEqual(inOrder)
        expect(inOrder.total.attempts).toBe(entries.length)
        expect(inOrder.total.requests).toBe(entries.filter((e) => e.disposition === "kept" || e.disposition === "truncated").length)
        // Nothing lost or counted twice: the groups add up to the run.
        for (const groups of [inOrder.byAccount, inOrder.byModel]) {
          const sum = (field: "attempts" | "requests" | "promptTokens" | "unpriced") =>
            Object.values(groups).reduce((n, totals) => n + totals[field], 0)
          expect([sum("attempts"), sum("requests"), sum("promptTokens"), sum("unpriced")]).toEqual([
            inOrder.total.attempts,
            inOrder.total.requests,
            inOrder.total.promptTokens,
            inOrder.total.unpriced
          ])
        }
      }),
      { numRuns: 50 }
    )
  })

  it("an attempt recorded as one disposition, then counted as another, totals as if recorded as that one", () => {
    const change = FastCheck.record({
      account: FastCheck.constantFrom("a", "b"),
      model: FastCheck.constantFrom("deepseek-v4-flash", "unknown"),
      usage: FastCheck.option(
        FastCheck.tuple(FastCheck.nat(200_000), FastCheck.nat(200_000), FastCheck.nat(50_000))
          .map(([hit, miss, completion]) => usage(hit, miss, completion, 0)),
        { nil: undefined }
      ),
      delivered: FastCheck.boolean(),
      from: FastCheck.constantFrom<CostLedger.Disposition>("discarded", "truncated", "failed"),
      to: FastCheck.array(FastCheck.constantFrom(...dispositions), { maxLength: 3 })
    })
    const snapshotOf = (changes: ReadonlyArray<typeof change extends FastCheck.Arbitrary<infer A> ? A : never>, reclassified: boolean) =>
      Effect.runSync(Effect.gen(function*() {
        const ledger = yield* CostLedger.make({ pricing: flatPricing })
        for (const { from, to, ...rest } of changes) {
          const last = to.at(-1) ?? from
          const entry: CostLedger.Entry = { ...rest, disposition: reclassified ? from : last }
          yield* ledger.record(entry)
          if (reclassified) for (const next of to) internal.reclassifiers.get(entry)?.(next)
        }
        return yield* ledger.snapshot
      }).pipe(quiet))
    FastCheck.assert(
      FastCheck.property(FastCheck.array(change, { maxLength: 20 }), (changes) => {
        expect(snapshotOf(changes, true)).toEqual(snapshotOf(changes, false))
      }),
      { numRuns: 100 }
    )
  })

  it("pico-USD sums are exact past the largest safe integer ($9,007), in any order and grouping", () => {
    const picos = FastCheck.array(FastCheck.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), { maxLength: 40 })
    const sumOf = (values: ReadonlyArray<number>) => {
      const sum = new internal.PicoSum()
      for (const pico of values) sum.add(pico)
      return sum
    }
    FastCheck.assert(
      FastCheck.property(picos, FastCheck.nat(40), (values, cut) => {
        const exact = values.reduce((total, pico) => total + BigInt(pico), 0n)
        expect(sumOf(values).value).toBe(exact)
        expect(sumOf([...values].reverse()).value).toBe(exact)
        const merged = sumOf(values.slice(0, cut))
        merged.addSum(sumOf(values.slice(cut)))
        expect(merged.value).toBe(exact)
      })
    )
  })

  it.effect("a snapshot is a view at its time: later records do not change it", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({ pricing: flatPricing })
      yield* ledger.record({ account: "a", model: "deepseek-v4-flash", usage: flashUsage, disposition: "kept" })
      const before = yield* ledger.snapshot
      const copy = structuredClone(before)
      yield* ledger.record({ account: "a", model: "deepseek-v4-flash", usage: flashUsage, disposition: "kept" })
      yield* ledger.record({ account: "b", model: "deepseek-v4-pro", usage: proUsage, disposition: "kept" })
      expect(before).toEqual(copy)
      expect((yield* ledger.snapshot).total.attempts).toBe(3)
    }))
})

describe("CostLedger budget", () => {
  it.effect("once spent, guard stops new calls with a typed BudgetExceeded", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({ pricing: flatPricing, budgetUsd: 0.0003 })
      const calls = yield* Ref.make(0)
      const guardedCall = Effect.zipRight(ledger.guard, Ref.update(calls, (n) => n + 1))

      yield* guardedCall
      yield* ledger.record({ account: "a", model: "deepseek-v4-flash", usage: flashUsage, disposition: "kept" })
      yield* guardedCall
      // A discarded attempt spends money too: 2 × 170.24 µUSD ≥ 300 µUSD.
      yield* ledger.record({ account: "a", model: "deepseek-v4-flash", usage: flashUsage, disposition: "discarded" })
      const error = yield* Effect.flip(guardedCall)

      expect(error).toBeInstanceOf(CostLedger.BudgetExceeded)
      expect(error).toMatchObject({ _tag: "BudgetExceeded", spentUsd: 0.00034048, budgetUsd: 0.0003 })
      expect(ApiError.isRetryable(ApiError.classify(error))).toBe(false)
      expect(error.message).toBe("budget exceeded: spent $0.00034048 of $0.0003")
      expect(yield* Ref.get(calls)).toBe(2)
      expect((yield* ledger.snapshot).budget).toEqual({ budgetUsd: 0.0003, remainingUsd: 0, overUsd: 0.00004048 })
    }))

  it.effect("says once, as a warning, that the attempt which spent the budget spent it", () =>
    Effect.gen(function*() {
      const warnings: Array<unknown> = []
      const logger = Logger.make(({ logLevel, message }) => {
        if (logLevel._tag === "Warning") warnings.push(message)
      })
      const ledger = yield* CostLedger.make({ pricing: flatPricing, budgetUsd: 0.0003 })
      const attempt = ledger.record({ account: "a", model: "deepseek-v4-flash", usage: flashUsage, disposition: "kept" })
      yield* attempt.pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
      expect(warnings).toEqual([])
      yield* Effect.replicateEffect(attempt, 2).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
      expect(warnings).toEqual([["CostLedger: the budget of $0.0003 is spent ($0.00034048); new calls are refused"]])
    }))

  it.effect("reports what is left, and a zero budget allows no call", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.make({ pricing: flatPricing, budgetUsd: 0.001 })
      yield* ledger.record({ account: "a", model: "deepseek-v4-flash", usage: flashUsage, disposition: "kept" })
      expect((yield* ledger.snapshot).budget).toEqual({ budgetUsd: 0.001, remainingUsd: 0.00082976, overUsd: 0 })
      const broke = yield* CostLedger.make({ pricing: flatPricing, budgetUsd: 0 })
      expect((yield* Effect.flip(broke.guard))._tag).toBe("BudgetExceeded")
      const unlimited = yield* CostLedger.make({ pricing: flatPricing })
      yield* unlimited.guard
    }))

  it.effect("publishes what is left as a gauge, from its making and after every attempt, never below 0", () =>
    Effect.gen(function*() {
      const remaining = Effect.map(Metric.value(CostLedger.budgetRemainingGauge), (state) => state.value)
      const ledger = yield* CostLedger.make({ pricing: flatPricing, budgetUsd: 0.001 })
      expect(yield* remaining).toBe(0.001)
      const record = ledger.record({ account: "a", model: "deepseek-v4-flash", usage: flashUsage, disposition: "kept" })
      yield* record
      expect(yield* remaining).toBe(0.00082976)
      yield* Effect.repeatN(record, 5)
      expect(yield* remaining).toBe(0)
    }))
})

describe("CostLedger pricing table", () => {
  const issuesOf = (input: unknown) =>
    Either.match(CostLedger.decodePricing(input, "pricing.json"), {
      onLeft: (error) => error.issues,
      onRight: () => []
    })

  it("reports every bad field with its path", () => {
    const issues = issuesOf({
      models: {
        "deepseek-v4-pro": { cacheHit: 0.003625, cacheMiss: "0.435", output: -1 },
        "flash": {
          cacheHit: 0.0028,
          cacheMiss: 0.14,
          output: 0.28,
          peak: { start: "25:00", end: "09:00", multiplier: 2, prices: { cacheHit: 0, cacheMiss: 0, output: 0 } }
        }
      },
      aliases: { "deepseek-chat": "deepseek-v3" }
    })
    expect(issues).toEqual(expect.arrayContaining([
      `models["deepseek-v4-pro"].cacheMiss: Expected number, actual "0.435"`,
      `models["deepseek-v4-pro"].output: expected a price ≥ 0 in USD per 1M tokens, got -1`,
      "models.flash.peak.start: expected a UTC time of day \"HH:MM\" (00:00-23:59), got \"25:00\""
    ]))
  })

  it("refuses a price that reads as USD per token, which would count about nothing", () => {
    expect(issuesOf({ models: { flash: { cacheHit: 0, cacheMiss: 1.4e-7, output: 0.28 } } })).toEqual([
      "models.flash.cacheMiss: 1.4e-7 USD per 1M tokens is below $0.001: prices are per 1M tokens (1.4e-7 per token is 0.14 per 1M)"
    ])
  })

  it("checks the peak window and aliases once the fields are valid", () => {
    const flash = { cacheHit: 0.0028, cacheMiss: 0.14, output: 0.28 }
    expect(issuesOf({
      models: { flash: { ...flash, peak: { start: "09:00", end: "09:00", multiplier: 2, prices: flash } } }
    })).toEqual([
      "models.flash.peak: give exactly one of `multiplier` or `prices`",
      "models.flash.peak.end: the window is empty: `end` equals `start`"
    ])
    expect(issuesOf({ models: { flash }, aliases: { "deepseek-chat": "deepseek-v3", flash: "flash" } })).toEqual([
      "aliases[\"deepseek-chat\"]: alias points to \"deepseek-v3\", which has no price in `models`",
      "aliases.flash: alias shadows the priced model \"flash\""
    ])
  })

  it("rejects a misspelt field instead of ignoring it", () => {
    expect(issuesOf({ models: { flash: { cache_hit: 0.0028, cacheHit: 0.0028, cacheMiss: 0.14, output: 0.28 } } }))
      .toEqual(["models.flash.cache_hit: is unexpected, expected: \"cacheHit\" | \"cacheMiss\" | \"output\" | \"peak\""])
  })

  it("the default table validates and the error message names its source", () => {
    expect(Either.isRight(CostLedger.decodePricing(CostLedger.defaultPricing))).toBe(true)
    const error = Either.getLeft(CostLedger.decodePricing({ models: [] }, "pricing.json"))
    expect(error.pipe(Either.fromOption(() => "none"), Either.map((e) => e.message))).toEqual(
      Either.right("invalid pricing table (pricing.json):\n  models: Expected { readonly [x: string]: ModelPricing }, actual []")
    )
  })

  it.effect("make dies on an invalid table or budget", () =>
    Effect.gen(function*() {
      const badTable = yield* Effect.exit(
        CostLedger.make({ pricing: { models: { m: { cacheHit: -1, cacheMiss: 0, output: 0 } } } })
      )
      expect(Exit.isFailure(badTable) && String(badTable.cause)).toContain("models.m.cacheHit")
      const badBudget = yield* Effect.exit(CostLedger.make({ pricing: flatPricing, budgetUsd: -1 }))
      expect(Exit.isFailure(badBudget) && String(badBudget.cause)).toContain("budgetUsd")
    }))
})

describe("CostLedger.layerConfig", () => {
  const withEnv = (env: Record<string, string>) =>
    Layer.provide(CostLedger.layerConfig, [
      NodeFileSystem.layer,
      Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))
    ])

  const tempFile = (content: string) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weatherproof-pricing-"))
    const file = path.join(dir, "pricing.json")
    fs.writeFileSync(file, content)
    return file
  }

  it.effect("reads the table from WEATHERPROOF_PRICING_FILE and the budget from WEATHERPROOF_BUDGET_USD", () => {
    const file = tempFile(JSON.stringify({ models: { m: { cacheHit: 0, cacheMiss: 1, output: 2 } } }))
    return Effect.gen(function*() {
      const ledger = yield* CostLedger.CostLedger
      // 1000 × 1 + 500 × 2 per 1M = 0.002 USD
      expect(yield* ledger.cost("m", usage(0, 1000, 500))).toMatchObject({ usd: 0.002 })
      expect(ledger.pricing.models["deepseek-v4-flash"]).toBeUndefined()
      expect((yield* ledger.snapshot).budget).toEqual({ budgetUsd: 5, remainingUsd: 5, overUsd: 0 })
    }).pipe(Effect.provide(withEnv({ WEATHERPROOF_PRICING_FILE: file, WEATHERPROOF_BUDGET_USD: "5" })))
  })

  it.effect("defaults to the default table and no budget", () =>
    Effect.gen(function*() {
      const ledger = yield* CostLedger.CostLedger
      expect(ledger.pricing).toEqual(CostLedger.defaultPricing)
      expect((yield* ledger.snapshot).budget).toBeUndefined()
    }).pipe(Effect.provide(withEnv({}))))

  it.effect("fails with a PricingError naming the file and the field", () => {
    const file = tempFile(JSON.stringify({ models: { m: { cacheHit: 0, cacheMiss: 1 } } }))
    return Effect.gen(function*() {
      const error = yield* Effect.flip(Layer.build(withEnv({ WEATHERPROOF_PRICING_FILE: file })).pipe(Effect.scoped))
      expect(error).toMatchObject({ _tag: "PricingError", source: file, issues: ["models.m.output: is missing"] })
      const notJson = yield* Effect.flip(
        Layer.build(withEnv({ WEATHERPROOF_PRICING_FILE: tempFile("{models:") })).pipe(Effect.scoped)
      )
      expect(notJson).toMatchObject({ _tag: "PricingError", issues: ["not JSON (column 2: Expected property name or '}')"] })
      const missing = yield* Effect.flip(
        Layer.build(withEnv({ WEATHERPROOF_PRICING_FILE: "/nonexistent/pricing.json" })).pipe(Effect.scoped)
      )
      expect(missing).toMatchObject({ _tag: "PricingError", issues: [expect.stringContaining("cannot read")] })
    })
  })

  it.effect("a budget that is no decimal amount ≥ 0 is a ConfigError; an empty one is none", () =>
    Effect.gen(function*() {
      for (const written of ["-2", "Infinity", "1e999", "0x10", "five"]) {
        const error = yield* Effect.flip(Layer.build(withEnv({ WEATHERPROOF_BUDGET_USD: written })).pipe(Effect.scoped))
        expect(error._tag, written).not.toBe("PricingError")
        expect(String(error), written).toContain("WEATHERPROOF_BUDGET_USD")
        expect(String(error), written).toContain("expected a budget ≥ 0 in USD, a decimal number (as 25 or 12.50)")
      }
      const budgetOf = (written: string) =>
        Effect.flatMap(CostLedger.CostLedger, (ledger) => ledger.snapshot).pipe(
          Effect.map((snapshot) => snapshot.budget?.budgetUsd),
          Effect.provide(withEnv({ WEATHERPROOF_BUDGET_USD: written }))
        )
      expect(yield* budgetOf("")).toBeUndefined()
      expect(yield* budgetOf(" 12.50 ")).toBe(12.5)
    }))
})
