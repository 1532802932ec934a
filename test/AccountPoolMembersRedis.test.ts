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

const account = (name: string, key = `sk-${name}-0123456789abcdef`): Account => ({
  name,
  provider: "deepseek",
  baseUrl: `https://${name}.test`,
  keys: [Redacted.make(key)],
  fallback: false,
  models: {}
})

const settings = (memberState: MemberState.MemberState) => ({
  breaker: undefined,
  deadlines: undefined,
  balanceProbeInterval: Duration.minutes(1),
  reachProbeInterval: Duration.seconds(5),
  keyCooldown: Duration.minutes(15),
  fallbackCooldown: Duration.minutes(5),
  maxWait: Duration.seconds(2),
  preflight: true,
  warmUp: 0,
  memberState
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
        internal.make([account("a"), account("b")], settings(MemberState.onRedis(redis))).pipe(Effect.provide([upstream, CostLedger.layer()]))
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

  it.scopedLive("two accounts given one name (default, for every DEEPSEEK_API_KEY) and other keys share no balance: one out is not the other", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const brokeKey = "sk-broke-0123456789abcdef"
      const upstream = MockUpstream.layer((req) => {
        const broke = req.bearer !== undefined && Redacted.value(req.bearer) === brokeKey
        return new URL(req.url).pathname === "/user/balance"
          ? MockUpstream.json({ is_available: !broke, balance_infos: [] })
          : broke
          ? MockUpstream.status(402, { body: { error: { message: "Insufficient Balance", type: "error" } } })
          : MockUpstream.completion({ id: "cmpl", model: "deepseek-v4-flash", content: "hi", usage: MockUpstream.usage({ promptTokens: 1, completionTokens: 1 }) })
      })
      const poolOf = (key: string) =>
        Effect.flatMap(Redis.make({ url: server.url }), (redis) =>
          internal.make([account("default", key)], settings(MemberState.onRedis(redis))).pipe(Effect.provide([upstream, CostLedger.layer()])))
      const broke = yield* poolOf(brokeKey)
      const stateOf = (pool: typeof broke) => Effect.map(pool.snapshot, (accounts) => accounts[0]!.state)
      yield* until(stateOf(broke), (state) => state === "out_of_balance")
      const funded = yield* poolOf("sk-funded-0123456789abcdef")
      expect((yield* funded.create(request)).id).toBe("cmpl")
      expect(yield* stateOf(funded)).toBe("serving")
      expect(yield* stateOf(broke)).toBe("out_of_balance")
    }))
})
