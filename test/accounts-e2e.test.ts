/**
 * The acceptance test of "Accounts, keys and providers": a batch over an accounts file, on real
 * HTTP to two loopback simulators, through an outage of the primary. The client is the one
 * `weatherproof batch` builds (`Batch.layerAccounts` with the ledger and router configured from
 * the environment, the summary written as JSON) with the pool's retry timings fitted to the
 * loopback: millisecond backoff, and a retry budget floor high enough that the outage's retries
 * are not paced at one a second. (With the defaults the run is as correct but its length depends
 * on the machine's speed: the budget's window forgets the batch's first calls after 10 s.)
 *
 * - Simulator "primary" (DeepSeek) holds three accounts: A (a wrong key between two good ones, set
 *   aside by the start's balance check), B (healthy) and C (out of balance: its balance endpoint
 *   says so, and every call would answer 402).
 * - Simulator "fallback" holds one OpenAI-compatible account F, a fallback in the accounts file,
 *   whose model names differ.
 * - Once the primary has answered a third of the batch, it answers every call 503 until the
 *   fallback has answered 40 lines, then it is healthy again (the accounts' breakers, open by
 *   then, keep the rest of the run on the fallback: they cool off for 30 s).
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import type * as AccountPool from "../src/AccountPool.js"
import * as Accounts from "../src/Accounts.js"
import * as Batch from "../src/Batch.js"
import * as CostLedger from "../src/CostLedger.js"
import * as Router from "../src/Router.js"
import * as Simulator from "../src/Simulator.js"
import { flatPricing } from "./support/pricing.js"

const requests = 300
/** The fixed limits in the accounts file, of A, B, C and of F; the simulators would accept far more. */
const accountLimit = 4
const fallbackLimit = 8
const serverLimit = 64

const keys = {
  a1: "sk-e2e-account-a-key-1",
  a2: "sk-e2e-account-a-key-2",
  wrong: "sk-e2e-account-a-WRONG",
  b: "sk-e2e-account-b-key",
  c: "sk-e2e-account-c-key",
  f: "sk-e2e-fallback-key"
}

/** The fallback provider's name for deepseek-v4-flash, priced by the run's pricing file. */
const fallbackModel = "other-flash"
const fallbackPrices = { cacheHit: 0.01, cacheMiss: 0.5, output: 1.5 }

const marker = (i: number) => `e2e question ${i}: what is ${i} times ${i % 7}?`

const inputLine = (i: number) =>
  JSON.stringify({
    custom_id: `e2e-${i}`,
    // Every other line leaves the model to the router (its default route is deepseek-v4-flash).
    ...(i % 2 === 0 ? { task: "classification" } : {}),
    method: "POST",
    url: "/v1/chat/completions",
    body: { model: i % 2 === 0 ? "auto" : "deepseek-v4-flash", messages: [{ role: "user", content: marker(i) }] }
  })

const poolOptions: AccountPool.PoolOptions = {
  retry: { base: "10 millis", cap: "100 millis", maxRetries: 10 },
  retryBudget: { minRetriesPerSecond: 100 }
}

/** Polls `stats` every few milliseconds of real time until `done` holds. */
const waitUntil = (stats: Effect.Effect<Simulator.Stats>, done: (stats: Simulator.Stats) => boolean) =>
  Effect.repeat(stats, { schedule: Schedule.spaced("2 millis"), until: done })

const completedOf = (stats: Simulator.Stats, ...accounts: ReadonlyArray<string>) =>
  accounts.reduce((sum, name) => sum + (stats.accounts[name]?.completed ?? 0), 0)

describe("weatherproof batch over accounts (acceptance)", () => {
  it.live("answers every line right across three DeepSeek accounts and a fallback, through an outage", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "accounts-e2e-" })
      const timing = { queueDelay: { min: "2 millis", max: "8 millis" }, keepAliveInterval: "2 millis" } as const
      const primary = yield* Simulator.make({
        ...timing,
        limit: serverLimit,
        accounts: {
          A: { keys: [keys.a1, keys.a2] },
          B: { keys: [keys.b] },
          C: { keys: [keys.c], balance: 0 }
        },
        seed: "e2e-primary"
      })
      const fallback = yield* Simulator.make({
        ...timing,
        limit: serverLimit,
        accounts: { F: { keys: [keys.f] } },
        seed: "e2e-fallback"
      })

      const deepseek = (name: string, accountKeys: ReadonlyArray<string>) => ({
        name,
        provider: "deepseek",
        baseUrl: primary.baseUrl,
        keys: accountKeys,
        concurrency: accountLimit
      })
      const accountsFile = `${dir}/accounts.json`
      yield* fs.writeFileString(
        accountsFile,
        JSON.stringify({
          accounts: [
            deepseek("A", [keys.a1, keys.wrong, keys.a2]),
            deepseek("B", [keys.b]),
            deepseek("C", [keys.c]),
            {
              name: "F",
              provider: "openai-compatible",
              baseUrl: fallback.baseUrl,
              keys: ["env:E2E_FALLBACK_KEY"],
              fallback: true,
              models: { "deepseek-v4-flash": fallbackModel },
              concurrency: fallbackLimit
            }
          ]
        })
      )
      const pricingFile = `${dir}/pricing.json`
      const pricing: CostLedger.PricingTable = {
        ...flatPricing,
        models: { ...flatPricing.models, [fallbackModel]: fallbackPrices }
      }
      yield* fs.writeFileString(pricingFile, JSON.stringify(pricing))
      const input = `${dir}/input.jsonl`
      const output = `${dir}/output.jsonl`
      const summaryFile = `${dir}/summary.json`
      yield* fs.writeFileString(input, Array.from({ length: requests }, (_, i) => `${inputLine(i)}\n`).join(""))

      // The outage: once the primary has answered a third of the batch, every call to it is a
      // 503 until the fallback has answered 40; then it is healthy again.
      const outage = Effect.gen(function*() {
        yield* waitUntil(primary.stats, (s) => completedOf(s, "A", "B") >= requests / 3)
        yield* primary.setFaults({ probabilities: { overloaded: 1 } })
        const fallbackAtStart = yield* fallback.stats
        const primaryAtStart = yield* primary.stats
        yield* waitUntil(fallback.stats, (s) => completedOf(s, "F") >= 40)
        yield* primary.setFaults({})
        return { fallbackAtStart, primaryAtStart }
      })
      const outageFiber = yield* Effect.fork(outage)

      const environment = ConfigProvider.fromMap(
        new Map([["E2E_FALLBACK_KEY", keys.f], ["WEATHERPROOF_PRICING_FILE", pricingFile]])
      )
      const accounts = yield* Accounts.load(accountsFile).pipe(Effect.withConfigProvider(environment))
      const client = Batch.layerAccounts(accounts, {
        pool: poolOptions,
        ledger: CostLedger.layerConfig,
        router: Router.layerConfig
      })
      const run = yield* Batch.run({ input, output }).pipe(Effect.provide(client), Effect.withConfigProvider(environment))
      yield* Batch.writeSummary(summaryFile, run)
      // The outage ran its course while the batch ran (a timeout here: it never began or ended).
      const { fallbackAtStart, primaryAtStart } = yield* Fiber.join(outageFiber).pipe(Effect.timeout("1 second"))
      const primaryStats = yield* primary.stats
      const fallbackStats = yield* fallback.stats
      const summary = JSON.parse(yield* fs.readFileString(summaryFile))
      const lines = (yield* fs.readFileString(output)).trim().split("\n").map((l) => JSON.parse(l))

      // Every answer right, none lost, none duplicated: one successful line per request with the
      // simulators' echo of its marker, and each marker completed exactly once upstream.
      expect(lines).toHaveLength(requests)
      const byId = new Map(lines.map((line) => [line.custom_id, line]))
      expect(byId.size).toBe(requests)
      for (let i = 0; i < requests; i++) {
        const line = byId.get(`e2e-${i}`)
        expect(line?.error, `e2e-${i}`).toBeNull()
        expect(line?.response?.body.choices[0].message.content, `e2e-${i}`).toBe(`echo:${marker(i)}`)
      }
      const completions = [...(yield* primary.completions), ...(yield* fallback.completions)]
      expect(completions.map((c) => c.marker).sort()).toEqual(Array.from({ length: requests }, (_, i) => marker(i)).sort())
      // Routed lines went out as deepseek-v4-flash, renamed for the fallback's provider.
      const models = lines.map((line) => line.response.body.model)
      expect(models.filter((m) => m === fallbackModel)).toHaveLength(completedOf(fallbackStats, "F"))
      expect(models.filter((m) => m === "deepseek-v4-flash")).toHaveLength(completedOf(primaryStats, "A", "B"))

      // Load spread over both healthy primaries, and C (out of balance) answered nothing.
      const a = completedOf(primaryStats, "A")
      const b = completedOf(primaryStats, "B")
      expect(a).toBeGreaterThanOrEqual(0.3 * (a + b))
      expect(b).toBeGreaterThanOrEqual(0.3 * (a + b))
      expect(primaryStats.accounts["C"]).toMatchObject({ accepted: 0, completed: 0, billed: { prompt: 0, completion: 0 } })
      // C's balance was asked at start: it was sent no chat call at all, so it never drew a 402.
      expect(primaryStats.accounts["C"]?.requests).toBe(0)
      expect(primaryStats.byStatus[402]).toBeUndefined()
      expect(summary.accounts["C"].state).toBe("out_of_balance")

      // No account over its limit: the servers would have taken 64 at once. A primary's lane may
      // end below it: it backed off on the outage's 503s and climbs back as calls are accepted;
      // C (no call) and the fallback (no refusal) end at theirs.
      const limits = [[primaryStats, "A", accountLimit], [primaryStats, "B", accountLimit], [primaryStats, "C", accountLimit], [
        fallbackStats,
        "F",
        fallbackLimit
      ]] as const
      for (const [stats, name, limit] of limits) {
        expect(stats.accounts[name]!.maxInFlight, name).toBeLessThanOrEqual(limit)
        expect(summary.accounts[name].limit, name).toBeLessThanOrEqual(limit)
      }
      expect([summary.accounts["C"].limit, summary.accounts["F"].limit]).toEqual([accountLimit, fallbackLimit])
      expect(primaryStats.rateLimited + fallbackStats.rateLimited).toBe(0)

      // The wrong key is set aside at start: the preflight asks A's balance with each of its keys,
      // and that 401 is the only one; no chat request carries the key.
      expect(primaryAtStart.byStatus[401]).toBe(1)
      expect(primaryStats.byStatus[401]).toBe(1)
      expect(summary.accounts["A"].usable_keys).toBe(2)

      // The fallback served during the outage, and not before it.
      expect(fallbackAtStart.requests).toBe(0)
      expect(completedOf(fallbackStats, "F")).toBeGreaterThan(0)
      expect(summary.accounts["F"]).toMatchObject({ provider: "openai-compatible", fallback: true })
      // The outage was met and retried past: each 503 a failed attempt, each retried.
      expect(primaryStats.byStatus[503]).toBeGreaterThan(0)
      expect(summary).toMatchObject({
        requests,
        succeeded: requests,
        failed: 0,
        failed_attempts: primaryStats.byStatus[503],
        retries: primaryStats.byStatus[503],
        rate_limited: 0,
        routing_warnings: 0
      })

      // The summary's tokens are what the upstreams billed, in total and per account.
      const billed = {
        A: primaryStats.accounts["A"]!.billed,
        B: primaryStats.accounts["B"]!.billed,
        C: primaryStats.accounts["C"]!.billed,
        F: fallbackStats.accounts["F"]!.billed
      }
      const sum = (field: keyof Simulator.Tokens) => Object.values(billed).reduce((total, tokens) => total + tokens[field], 0)
      expect(summary).toMatchObject({
        prompt_tokens: sum("prompt"),
        completion_tokens: sum("completion"),
        cache_hit_tokens: sum("cacheHit"),
        reasoning_tokens: sum("reasoning")
      })
      expect(summary.prompt_tokens).toBeGreaterThan(0)
      for (const [name, tokens] of Object.entries(billed)) {
        expect(summary.accounts[name], name).toMatchObject({
          prompt_tokens: tokens.prompt,
          completion_tokens: tokens.completion,
          cache_hit_tokens: tokens.cacheHit,
          reasoning_tokens: tokens.reasoning
        })
      }
      // Attempts: the chat requests the upstreams saw.
      expect(summary.attempts).toBe(primaryStats.requests + fallbackStats.requests)
      for (const name of ["A", "B", "C"]) expect(summary.accounts[name].attempts, name).toBe(primaryStats.accounts[name]!.requests)
      expect(summary.accounts["F"].attempts).toBe(fallbackStats.requests)
      // Per account, the same outcome counts as the whole: answers, 503s met, retries, no 429s.
      const perAccount = (field: "succeeded" | "failed" | "retries" | "rate_limited") =>
        ["A", "B", "C", "F"].reduce((total, name) => total + (summary.accounts[name][field] ?? 0), 0)
      expect(perAccount("succeeded")).toBe(requests)
      expect(perAccount("rate_limited")).toBe(0)
      expect(perAccount("retries")).toBe(summary.retries)
      // C's 402s fail over within their attempt: the outer client never saw them fail.
      expect(summary.accounts["C"].failed).toBe(primaryStats.accounts["C"]!.requests)
      expect(["A", "B", "F"].reduce((total, name) => total + (summary.accounts[name].failed ?? 0), 0))
        .toBe(summary.failed_attempts)
      // And the cost is those tokens at the run's prices (no cache hits in this run).
      const usdOf = (tokens: Simulator.Tokens, prices: CostLedger.Prices) =>
        (tokens.prompt * prices.cacheMiss + tokens.completion * prices.output) / 1e6
      const flash = flatPricing.models["deepseek-v4-flash"]!
      expect(summary.accounts["F"].cost_usd).toBeCloseTo(usdOf(billed.F, fallbackPrices), 12)
      expect(summary.cost_usd).toBeCloseTo(usdOf(billed.A, flash) + usdOf(billed.B, flash) + usdOf(billed.F, fallbackPrices), 12)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)), 60_000) // ~3 s of CPU: seconds, unless the machine is shared
})
