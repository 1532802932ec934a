/**
 * Two `weatherproof serve` replicas sharing one account through Redis (`--redis`), as a user runs
 * them behind a load balancer: the account's cap is learnt and held once for both.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import * as Simulator from "../src/Simulator.js"
import type { Alert } from "../app/gateway/alerts.js"
import { attempt, openai } from "./support/gateway.js"
import { rawServer, reply } from "./support/rawServer.js"
import { redisServer, redisServerPresent, skipMessage } from "./support/redisServer.js"
import { serveProcess } from "./support/serveChild.js"

const cap = 8

describe.skipIf(!redisServerPresent)(skipMessage("weatherproof serve replicas sharing one account through Redis"), () => {
  it.scopedLive("60 clients over two replicas and a cap of 8: every one answered, the cap held, almost no 429 upstream", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const sim = yield* Simulator.make({ limit: cap, queueDelay: "300 millis" })
      const env = { DEEPSEEK_API_KEY: Simulator.defaultKey, DEEPSEEK_BASE_URL: sim.baseUrl }
      const replicas = yield* Effect.all([1, 2].map(() => serveProcess(["serve", "--port", "0", "--redis", server.url], env)))
      const urls = yield* Effect.all(replicas.map((replica) => replica.url))
      const answers = yield* Effect.all(
        Array.from({ length: 60 }, (_, i) =>
          attempt(() =>
            openai(urls[i % 2]!).chat.completions.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: `q ${i}` }] })
          )),
        { concurrency: "unbounded" }
      )
      expect(answers.map((answer) => answer.choices[0]?.message.content)).toEqual(Array.from({ length: 60 }, (_, i) => `echo:q ${i}`))
      const stats = yield* sim.stats
      expect(stats.completed).toBe(60)
      expect(stats.accounts["default"]!.maxInFlight).toBe(cap)
      // One limit learnt for both (two replicas each learning alone overshoot the cap together).
      expect(stats.rateLimited).toBeLessThanOrEqual(4)
    }), { timeout: 90_000 })

  it.scopedLive("an account's alert is posted once by the replicas, not once by each: the first to claim it tells it", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const webhook = yield* rawServer(Array.from({ length: 20 }, () => reply(200, "{}")))
      const sim = yield* Simulator.make()
      const env = {
        DEEPSEEK_API_KEY: Simulator.defaultKey,
        DEEPSEEK_BASE_URL: sim.baseUrl,
        WEATHERPROOF_ALERT_WEBHOOK: `${webhook.url}/hooks/replicas`
      }
      const replicas = yield* Effect.all([1, 2].map(() => serveProcess(["serve", "--port", "0", "--redis", server.url], env)))
      const [first, second] = yield* Effect.all(replicas.map((replica) => replica.url))
      yield* sim.setBalance("default", 0)
      // Only the first replica's call meets the 402 (it then waits for an account in balance); the
      // other learns the balance through Redis.
      yield* Effect.fork(attempt(() =>
        openai(first!, { maxRetries: 0 }).chat.completions.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "q" }] })
      ))
      const events = () => webhook.received().map((r) => (JSON.parse(r.body) as Alert).event)
      yield* Effect.repeat(Effect.sync(events), { until: (told) => told.length > 0, schedule: Schedule.spaced("100 millis").pipe(Schedule.upTo("20 seconds")) })
      // Both replicas sample every second: long enough for the second to have seen it too.
      yield* Effect.sleep("3 seconds")
      expect(events()).toEqual(["balance_exhausted"])
      const seenBySecond = yield* attempt(async () => (await (await fetch(`${second}/status.json`)).json()).samples.at(-1).accounts[0].state)
      expect(seenBySecond).toBe("out_of_balance")
    }), { timeout: 90_000 })
})
