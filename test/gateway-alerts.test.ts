/**
 * Alerts: what changes between two status samples, and the webhook that hears of it, retried
 * with backoff when it fails.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { hostname } from "node:os"
import { type Alert, alertsBetween, claimOnRedis, HoldDown, KeyRejections } from "../app/gateway/alerts.js"
import type { AccountSample, Sample } from "../app/gateway/status.js"
import * as Redis from "../src/Redis.js"
import * as Simulator from "../src/Simulator.js"
import { account, attempt, openai, startGateway } from "./support/gateway.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { freePort } from "./support/ports.js"
import { redisServer, redisServerPresent, skipMessage } from "./support/redisServer.js"
import { rawServer, reply } from "./support/rawServer.js"

const accountSample = (name: string, changes: Partial<AccountSample> = {}): AccountSample => ({
  name,
  provider: "deepseek",
  fallback: false,
  state: "serving",
  limit: 8,
  inFlight: 0,
  models: [],
  usableKeys: 2,
  restingKeys: [],
  calls: 0,
  succeeded: 0,
  failed: 0,
  rateLimited: 0,
  retries: 0,
  lastFailure: undefined,
  reachable: true,
  queued: 0,
  rateLimitedPerSecond: 0,
  breaker: 0,
  costUsd: 0,
  ...changes
})

const sample = (accounts: ReadonlyArray<AccountSample>, budgetSpent = false): Sample => ({
  t: Date.UTC(2026, 0, 1),
  draining: false,
  gateway: { active: 0, waiting: 0, keepAlives: 0, streamsCut: 0, requests: 0 },
  accounts,
  models: [],
  spend: { costUsd: 1, budgetUsd: 1, remainingUsd: budgetSpent ? 0 : 1, overUsd: 0 },
  banner: { throttling: [], outOfBalance: [], unreachable: [], noKeys: [], checkingBalance: [], noAccountServing: false, budgetSpent }
})

/** A few calls: the two accounts serve in turn, so some reach a (and draw its 402 when it is out). */
const callBoth = (gatewayUrl: string) => {
  const client = openai(gatewayUrl)
  return Effect.forEach([1, 2, 3, 4], (i) =>
    attempt(() => client.chat.completions.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: `q${i}` }] })))
}

const events = (alerts: ReadonlyArray<Alert>) => alerts.map((alert) => `${alert.event}:${alert.account ?? "-"}`)

describe("gateway alerts", () => {
  it("are the changes between two samples: breaker, balance, keys, reachability, budget", () => {
    const before = sample([
      accountSample("a"),
      accountSample("b", { state: "open" }),
      accountSample("c", { state: "out_of_balance" }),
      accountSample("d")
    ])
    const after = sample([
      accountSample("a", { state: "open", usableKeys: 1, restingKeys: ["key#2"], lastFailure: "ServerError: HTTP 500" }),
      accountSample("b", { state: "serving" }),
      accountSample("c"),
      accountSample("d", { reachable: false, lastFailure: "TransportError: connect ECONNREFUSED 127.0.0.1:9" })
    ], true)
    expect(alertsBetween(before, after).find((alert) => alert.event === "account_unreachable")?.message).toBe(
      "account d: cannot connect to its upstream; its calls fail to connect until it can be reached; " +
        "its last failure: TransportError: connect ECONNREFUSED 127.0.0.1:9"
    )
    expect(alertsBetween(before, after).find((alert) => alert.event === "key_rejected")).toMatchObject({
      account: "a",
      key: "key#2",
      message: "account a: the upstream rejected its key#2 (401); 1 usable key left"
    })
    expect(events(alertsBetween(before, after))).toEqual([
      "breaker_opened:a",
      "key_rejected:a",
      "breaker_closed:b",
      "balance_restored:c",
      "account_unreachable:d",
      "budget_spent:-"
    ])
    expect(events(alertsBetween(after, before))).toEqual([
      "breaker_closed:a",
      "breaker_opened:b",
      "balance_exhausted:c",
      "account_reachable:d"
    ])
    expect(alertsBetween(before, before)).toEqual([])
    // A failed canary (half open, open again) opened nothing new; the close that follows is told.
    const halfOpen = sample([accountSample("a", { state: "half_open" })])
    const reopened = sample([accountSample("a", { state: "open" })])
    expect(events(alertsBetween(halfOpen, reopened))).toEqual([])
    expect(events(alertsBetween(halfOpen, sample([accountSample("a")])))).toEqual(["breaker_closed:a"])
    // A breaker told open, then the account out of balance, then serving: its close is told too.
    const open = sample([accountSample("a", { state: "open" })])
    const outOfBalance = sample([accountSample("a", { state: "out_of_balance" })])
    const openAnnounced = new Set(["a"])
    expect(events(alertsBetween(open, outOfBalance, openAnnounced))).toEqual(["balance_exhausted:a"])
    expect(events(alertsBetween(outOfBalance, sample([accountSample("a")]), openAnnounced))).toEqual([
      "breaker_closed:a",
      "balance_restored:a"
    ])
    expect(events(alertsBetween(outOfBalance, sample([accountSample("a")])))).toEqual(["balance_restored:a"])
    const [first] = alertsBetween(before, after)
    expect(first).toEqual({
      id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      event: "breaker_opened",
      account: "a",
      message: "account a: circuit breaker opened; its calls go elsewhere or wait; its last failure: ServerError: HTTP 500",
      key: null,
      at: "2026-01-01T00:00:00.000Z",
      source: "weatherproof-gateway",
      host: hostname(),
      text: "account a: circuit breaker opened; its calls go elsewhere or wait; its last failure: ServerError: HTTP 500",
      content: "account a: circuit breaker opened; its calls go elsewhere or wait; its last failure: ServerError: HTTP 500"
    })
  })

  describe("of a flapping account", () => {
    const second = 1_000
    const [serving, open, unreachable] = [accountSample("a"), accountSample("a", { state: "open" }), accountSample("a", { reachable: false })]
    /** What `holdDown` passes of the alerts between `before` and `after`, `after` taken at `at`. */
    const toldBy = (holdDown: HoldDown) => (before: AccountSample, after: AccountSample, at: number) =>
      holdDown.pass(alertsBetween(sample([before]), sample([after])), at).map((alert) =>
        `${alert.event}${alert.message.includes("held back") ? " (held back: " + /\d+ change/.exec(alert.message)![0] + ")" : ""}`
      )

    it("are held down: the first outage told whole, the flaps after it held back, the state they end in told once it held a minute", () => {
      const told = toldBy(new HoldDown(600_000, 60_000))
      // The first outage and its end: both told, as they come.
      expect(told(serving, open, 0)).toEqual(["breaker_opened"])
      expect(told(open, serving, 7 * second)).toEqual(["breaker_closed"])
      // Another kind is held apart: a connection lost is told.
      expect(told(serving, unreachable, 8 * second)).toEqual(["account_unreachable"])
      // The flaps that follow within the hold-down are held back.
      expect(told(serving, open, 11 * second)).toEqual([])
      expect(told(open, serving, 18 * second)).toEqual([])
      expect(told(serving, open, 22 * second)).toEqual([])
      expect(told(open, open, 81 * second)).toEqual([])
      // Open a minute since: an outage again, told with the flaps before it (the webhook last heard "closed").
      expect(told(open, open, 82 * second)).toEqual(["breaker_opened (held back: 3 change)"])
      expect(told(open, open, 700 * second)).toEqual([])
    })

    it("that never holds a state a minute are told of it once the hold-down passed, with how many changes were held back", () => {
      const told = toldBy(new HoldDown(600_000, 60_000))
      expect(told(serving, open, 0)).toEqual(["breaker_opened"])
      expect(told(open, serving, 10 * second)).toEqual(["breaker_closed"])
      // Down 20 s, up 20 s, for 15 minutes.
      const toldWhileFlapping: Array<string> = []
      for (let at = 30; at <= 900; at += 20) {
        const opening = (at - 30) % 40 === 0
        toldWhileFlapping.push(...told(opening ? serving : open, opening ? open : serving, at * second).map((alert) => `${at}s ${alert}`))
      }
      // The first change ten minutes after the breaker's last alert (at 10 s), with the flaps before it;
      // then the next, whose event was last told longer ago still.
      expect(toldWhileFlapping).toEqual(["610s breaker_closed (held back: 29 change)", "630s breaker_opened"])
    })
  })

  it("of a key rejected again after each cooldown are told once, then at most every few hours, with how many came between", () => {
    const minute = 60_000
    const repeats = new KeyRejections(240 * minute)
    const resting = (...keys: ReadonlyArray<string>) => sample([accountSample("a", { usableKeys: 3 - keys.length, restingKeys: keys })])
    const start = Date.UTC(2026, 0, 1)
    const told = (before: Sample, after: Sample, at: number) =>
      repeats.pass(alertsBetween(before, after), start + at).map((alert) => `${alert.key}: ${alert.message}`)
    expect(told(resting(), resting("key#2"), 0)).toEqual(["key#2: account a: the upstream rejected its key#2 (401); 2 usable keys left"])
    // Back after its 15-minute cooldown, rejected again at its next call: not told again for hours.
    expect(told(resting("key#2"), resting(), 15 * minute)).toEqual([])
    expect(told(resting(), resting("key#2"), 16 * minute)).toEqual([])
    // Another key of the account is told at once.
    expect(told(resting("key#2"), resting("key#2", "key#3"), 20 * minute)).toEqual([
      "key#3: account a: the upstream rejected its key#3 (401); 1 usable key left"
    ])
    for (let at = 31; at + 1 < 240; at += 16) {
      expect(told(resting("key#2"), resting(), at * minute)).toEqual([])
      expect(told(resting(), resting("key#2"), (at + 1) * minute)).toEqual([])
    }
    expect(told(resting(), resting("key#2"), 241 * minute)).toEqual([
      "key#2: account a: the upstream rejected its key#2 (401); 2 usable keys left (rejected 14 more times since 2026-01-01T00:00:00.000Z, each time after its rest)"
    ])
    expect(told(resting(), resting("key#2"), 260 * minute)).toEqual([])
    expect(told(resting(), resting("key#2"), 481 * minute)).toEqual([
      "key#2: account a: the upstream rejected its key#2 (401); 2 usable keys left (rejected 1 more time since 2026-01-01T04:01:00.000Z, each time after its rest)"
    ])
  })

  it.scopedLive("go to the webhook as JSON, retried with backoff after a failure: an account out of balance and back", () =>
    Effect.gen(function*() {
      const webhook = yield* rawServer([reply(503, "busy"), reply(200, "{}"), reply(200, "{}")])
      const sim = yield* Simulator.make({ accounts: { a: { keys: ["sk-alert-a"] }, b: { keys: ["sk-alert-b"] } } })
      const gateway = yield* startGateway([account("a", sim.baseUrl, ["sk-alert-a"]), account("b", sim.baseUrl, ["sk-alert-b"])], {
        statusInterval: "50 millis",
        // Behind basic authentication: the URL's credentials become the Authorization header.
        alerts: { url: Redacted.make(`${webhook.url.replace("://", "://alerts:s3cret%20pw@")}/hooks/weatherproof`), retryBase: "20 millis" },
        pool: { balanceProbeInterval: "200 millis" }
      })
      yield* sim.setBalance("a", 0)
      yield* callBoth(gateway.url)
      yield* Effect.sleep("300 millis")
      yield* sim.setBalance("a", 100)
      yield* Effect.sleep("600 millis")

      const received = webhook.received().map((r) => JSON.parse(r.body) as Alert)
      expect(received.map((alert) => `${alert.event}:${alert.account}`)).toEqual([
        "balance_exhausted:a",
        "balance_exhausted:a",
        "balance_restored:a"
      ])
      expect(received[0]).toEqual(received[1])
      expect(received[0]?.source).toBe("weatherproof-gateway")
      // Slack, Mattermost and Teams show `text`, Discord `content`: they refuse a body without them.
      expect([received[0]?.text, received[0]?.content]).toEqual([received[0]?.message, received[0]?.message])
      expect(webhook.received().every((r) => !r.body.includes("sk-alert"))).toBe(true)
      expect(webhook.received().map((r) => r.authorization)).toEqual(
        Array.from({ length: 3 }, () => `Basic ${Buffer.from("alerts:s3cret pw").toString("base64")}`)
      )
    }))

  it.scopedLive("that cannot be delivered are logged with why, naming the webhook by its origin, never its path (its secret)", () =>
    Effect.gen(function*() {
      const notFound = yield* rawServer([reply(404, "no such hook"), reply(404, "no such hook")])
      const closed = yield* Effect.promise(freePort)
      const webhooks = [`${notFound.url}/services/T0/B0/xoxb-secret-1`, `http://127.0.0.1:${closed}/services/T0/B0/xoxb-secret-2`]
      const logs: Array<Logged> = []
      yield* Effect.forEach(webhooks, (url) =>
        Effect.gen(function*() {
          const sim = yield* Simulator.make({ accounts: { a: { keys: ["sk-alert-a"] }, b: { keys: ["sk-alert-b"] } } })
          const gateway = yield* startGateway([account("a", sim.baseUrl, ["sk-alert-a"]), account("b", sim.baseUrl, ["sk-alert-b"])], {
            statusInterval: "50 millis",
            alerts: { url: Redacted.make(url), retryBase: "10 millis", retries: 1 }
          })
          yield* sim.setBalance("a", 0)
          yield* callBoth(gateway.url)
          yield* Effect.sleep("400 millis")
        }).pipe(Effect.scoped, capturingLogs(logs)))

      const warnings = logs.filter((logged) => logged.message.includes("not delivered")).map((logged) => logged.message)
      expect(warnings).toEqual([
        `gateway: alert balance_exhausted not delivered to the webhook at ${notFound.url}: it answered 404`,
        `gateway: alert balance_exhausted not delivered to the webhook at http://127.0.0.1:${closed}: cannot reach it (connect ECONNREFUSED 127.0.0.1:${closed})`
      ])
      // A 404 is not retried: no retry changes it (a 503 is, above).
      expect(notFound.received()).toHaveLength(1)
      expect(logs.some((logged) => logged.message.includes("xoxb-secret"))).toBe(false)
    }))
  it.scopedLive("still to send when the gateway stops are given a moment, and those the webhook does not take are told", () =>
    Effect.gen(function*() {
      const hanging = yield* rawServer([() => new Promise<void>(() => undefined)])
      const logs: Array<Logged> = []
      yield* Effect.gen(function*() {
        const sim = yield* Simulator.make({ accounts: { a: { keys: ["sk-alert-a"] }, b: { keys: ["sk-alert-b"] } } })
        const gateway = yield* startGateway([account("a", sim.baseUrl, ["sk-alert-a"]), account("b", sim.baseUrl, ["sk-alert-b"])], {
          statusInterval: "50 millis",
          alerts: { url: Redacted.make(`${hanging.url}/hooks/secret-path`) }
        })
        yield* sim.setBalance("a", 0)
        yield* callBoth(gateway.url)
        yield* Effect.sleep("300 millis")
      }).pipe(Effect.scoped, capturingLogs(logs))
      expect(logs.filter((logged) => logged.message.includes("stopping with")).map((logged) => logged.message)).toEqual([
        `gateway: stopping with 1 alert not delivered to the webhook at ${hanging.url}: balance_exhausted`
      ])
    }))
})

describe.skipIf(!redisServerPresent)(skipMessage("gateway alerts claimed on Redis"), () => {
  it.scopedLive("replicas claim a key's rejection per key: two keys of one account are each told, one key once", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const redis = yield* Redis.make({ url: server.url })
      const [first, second] = [claimOnRedis(redis, "replica-1"), claimOnRedis(redis, "replica-2")]
      const rejected = (key: string) => {
        const before = sample([accountSample("a")])
        const after = sample([accountSample("a", { usableKeys: 1, restingKeys: [key] })])
        return alertsBetween(before, after)[0]!
      }
      expect(yield* first(rejected("key#1"))).toBe(true)
      expect(yield* second(rejected("key#1"))).toBe(false)
      expect(yield* second(rejected("key#2"))).toBe(true)
    }))
})
