import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type { Account } from "../src/Accounts.js"
import type { ChatCompletionRequest } from "../src/ChatSchema.js"
import * as CostLedger from "../src/CostLedger.js"
import * as internal from "../src/internal/accountPool.js"
import * as MemberState from "../src/internal/memberState.js"
import * as MockUpstream from "../src/MockUpstream.js"
import * as Redis from "../src/Redis.js"
import { redisServer, redisServerPresent, skipMessage, until } from "./support/redisServer.js"

const account = (name: string): Account => ({
  name,
  provider: "deepseek",
  baseUrl: `https://${name}.test`,
  keys: [Redacted.make(`sk-${name}-0123456789abcdef`)],
  fallback: false,
  models: {}
})

const request: ChatCompletionRequest = { model: "deepseek-v4-flash", messages: [{ role: "user", content: "hi" }] }

describe.skipIf(!redisServerPresent)(skipMessage("AccountPool members on Redis"), () => {
  it.scopedLive("two pools: one preflight probe for both; a 402 in one takes the account out in the other", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      let balanceProbes = 0
      const upstream = MockUpstream.layer((req) => {
        const url = new URL(req.url)
        if (url.pathname === "/user/balance") {
          balanceProbes++
          return MockUpstream.json({ is_available: true, balance_infos: [] }, { delay: "100 millis" })
        }
        return url.host === "a.test"
          ? MockUpstream.status(402, { body: { error: { message: "Insufficient Balance", type: "error" } } })
          : MockUpstream.completion({ id: "cmpl", model: "deepseek-v4-flash", content: "hi", usage: MockUpstream.usage({ promptTokens: 1, completionTokens: 1 }) })
      })
      const poolOn = (redis: Redis.Service) =>
        internal.make([account("a"), account("b")], {
          breaker: undefined,
          deadlines: undefined,
          balanceProbeInterval: Duration.minutes(1),
          reachProbeInterval: Duration.seconds(5),
          keyCooldown: Duration.minutes(15),
          fallbackCooldown: Duration.minutes(5),
          maxWait: Duration.seconds(2),
          preflight: true,
          warmUp: 0,
          memberState: MemberState.onRedis(redis)
        }).pipe(Effect.provide([upstream, CostLedger.layer()]))
      const [one, two] = yield* Effect.all([
        Effect.flatMap(Redis.make({ url: server.url }), poolOn),
        Effect.flatMap(Redis.make({ url: server.url }), poolOn)
      ], { concurrency: 2 })
      const stateOfA = (pool: typeof one) => Effect.map(pool.snapshot, (accounts) => accounts.find((s) => s.name === "a")!.state)
      yield* until(stateOfA(two), (state) => state === "serving")
      yield* until(stateOfA(one), (state) => state === "serving")
      // One probe per account for both pools.
      expect(balanceProbes).toBe(2)

      // Until a's 402, the pool spreads calls over a and b.
      yield* until(Effect.zipRight(Effect.ignore(one.create(request)), stateOfA(one)), (state) => state === "out_of_balance")
      yield* until(stateOfA(two), (state) => state === "out_of_balance")
    }))
})
