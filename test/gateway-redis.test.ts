/**
 * Two `weatherproof serve` replicas sharing one account through Redis (`--redis`), as a user runs
 * them behind a load balancer: the account's cap is learnt and held once for both.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Simulator from "../src/Simulator.js"
import { attempt, openai } from "./support/gateway.js"
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
})
