import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import type * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import type { Account } from "../src/Accounts.js"
import * as AccountPool from "../src/AccountPool.js"
import type { ChatCompletionRequest } from "../src/ChatSchema.js"
import * as ConcurrencyLimiter from "../src/ConcurrencyLimiter.js"
import * as CostLedger from "../src/CostLedger.js"
import * as MockUpstream from "../src/MockUpstream.js"
import * as Resilient from "../src/Resilient.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as Simulator from "../src/Simulator.js"
import * as Telemetry from "../src/Telemetry.js"
import { contentOf, settle as settleStream } from "./support/streams.js"
import * as ApiError from "../src/ApiError.js"
import * as Policy from "../src/Policy.js"
import type * as RetryPolicy from "../src/RetryPolicy.js"
import { selfSignedServer } from "./support/selfSigned.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { freePort, relay } from "./support/ports.js"

// ---------------------------------------------------------------------------------------------
// An upstream per host (`a.test`, `b.test` …), each answered by a handler a test can swap.
// ---------------------------------------------------------------------------------------------

type Handler = (request: MockUpstream.RecordedRequest) => MockUpstream.Reply

const hostOf = (request: MockUpstream.RecordedRequest) => new URL(request.url).host.replace(/\.test$/, "")
const pathOf = (request: MockUpstream.RecordedRequest) => new URL(request.url).pathname
const bearerOf = (request: MockUpstream.RecordedRequest) =>
  request.bearer === undefined ? "" : Redacted.value(request.bearer)
const bodyOf = (request: MockUpstream.RecordedRequest) => request.body as ChatCompletionRequest
const isChat = (request: MockUpstream.RecordedRequest) => pathOf(request) === "/chat/completions"

const usage = MockUpstream.usage({ promptTokens: 1000, completionTokens: 500 })

const generation = (request: MockUpstream.RecordedRequest): MockUpstream.Generation => ({
  id: `cmpl-${hostOf(request)}`,
  model: bodyOf(request).model,
  content: `hello from ${hostOf(request)}`,
  usage
})

/** Answers chat like a healthy upstream (after `latency`), and the balance endpoint with 404. */
const healthy = (latency?: Duration.DurationInput): Handler => (request) =>
  !isChat(request)
    ? MockUpstream.status(404)
    : bodyOf(request).stream === true
    ? MockUpstream.streamed(generation(request))
    : MockUpstream.completion(generation(request), { delay: latency })

const errorBody = (message: string) => ({ error: { message, type: "error" } })
const status = (code: number): Handler => () => MockUpstream.status(code, { body: errorBody(`HTTP ${code}`) })
const balance = (isAvailable: boolean) =>
  MockUpstream.json({ is_available: isAvailable, balance_infos: [{ currency: "USD", total_balance: "0.00" }] })

const account = (name: string, keys: ReadonlyArray<string>, extra: Partial<Account> = {}): Account => ({
  name,
  provider: "deepseek",
  baseUrl: `https://${name}.test`,
  keys: keys.map(Redacted.make),
  fallback: false,
  models: {},
  ...extra
})

const fallbackAccount = account("alt", ["sk-alt"], {
  provider: "openai-compatible",
  fallback: true,
  models: { "deepseek-v4-flash": "other-model" }
})

const request: ChatCompletionRequest = { model: "deepseek-v4-flash", messages: [{ role: "user", content: "hi" }] }

interface Setup {
  readonly accounts: ReadonlyArray<Account>
  /** Handlers by host; a test may replace one while it runs. */
  readonly handlers: Record<string, Handler>
  readonly options?: AccountPool.Options
  readonly ledger?: CostLedger.Options
}

/** The pool, over the mock upstreams and a ledger. */
const poolLayer = (setup: Setup) =>
  AccountPool.layer(setup.accounts, setup.options).pipe(
    Layer.provideMerge(
      Layer.merge(
        MockUpstream.layer((req) => (setup.handlers[hostOf(req)] ?? status(500))(req)),
        CostLedger.layer(setup.ledger)
      )
    )
  )

/** The client around the pool, as `layerResilient` builds it, with counting telemetry. */
const stackLayer = (setup: Setup, retry: RetryPolicy.Options = {}) => {
  const { counts, telemetry } = Effect.runSync(Telemetry.makeCounters)
  const layer = Layer.scoped(
    Resilient.Resilient,
    Effect.gen(function*() {
      const policy = yield* Policy.make({
        retry: { base: "100 millis", cap: "1 second", ...retry },
        retryBudget: false,
        concurrency: false,
        breaker: false
      })
      return yield* Resilient.makeWith(policy, AccountPool.upstream(yield* AccountPool.AccountPool))
    }).pipe(Effect.provideService(Telemetry.Telemetry, telemetry))
  ).pipe(Layer.provideMerge(poolLayer(setup)))
  return { layer, counts }
}

const createWith = (body: ChatCompletionRequest, options?: AccountPool.CallOptions) =>
  Effect.flatMap(AccountPool.AccountPool, (pool) => pool.create(body, options))
const create = createWith(request)
const resilientCreate = Effect.flatMap(Resilient.Resilient, (client) => client.create(request))

/** Every chunk a stream emitted, and the error it ended with. */
const drain = Effect.flatMap(AccountPool.AccountPool, (pool) => settleStream(pool.stream({ ...request, stream: true })))

/** Chat requests per host, in arrival order. */
const chatHosts = Effect.flatMap(MockUpstream.MockUpstream, (upstream) =>
  Effect.map(upstream.requests, (requests) => requests.filter(isChat).map(hostOf)))

const countOf = (items: ReadonlyArray<string>, item: string) => items.filter((i) => i === item).length

const states = Effect.flatMap(AccountPool.AccountPool, (pool) =>
  Effect.map(pool.snapshot, (accounts) => Object.fromEntries(accounts.map((a) => [a.name, a.state]))))

const concurrently = <A, E, R>(n: number, effect: Effect.Effect<A, E, R>) =>
  Effect.all(Array.from({ length: n }, () => effect), { concurrency: "unbounded" })

/** Lets forked fibers run until each is done or waiting, without moving the clock. */
const settle = TestClock.adjust(0)

/** A call given `maxWait`, forked: its error, flipped into its success. */
const waitFor = (maxWait: Duration.DurationInput) => Effect.fork(Effect.flip(createWith(request, { maxWait })))

/** One account whose upstream answers 500, its breaker opening at the first failure for `openFor`. */
const failingAccount = (openFor: Duration.DurationInput): Setup => ({
  accounts: [account("a", ["sk-a"])],
  handlers: { a: status(500) },
  options: { preflight: false, breaker: { minimumThroughput: 1, failureRatio: 1, openFor } }
})

/** A call given 10 s waits (it is not failed at once), then gives up after all of them. */
const waitsItsTenSecondsOut = Effect.gen(function*() {
  const call = yield* waitFor("10 seconds")
  yield* settle
  expect(call.unsafePoll()).toBeNull()
  yield* TestClock.adjust("10 seconds")
  expect((yield* Fiber.join(call))._tag).toBe("NoAccountAvailable")
})

describe("AccountPool", () => {
  it.effect("spreads concurrent calls by load, in proportion to each account's limit", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 2 }), account("b", ["sk-b"], { concurrency: 6 })],
      handlers: { a: healthy("1 second"), b: healthy("1 second") }
    }
    return Effect.gen(function*() {
      const calls = yield* Effect.fork(concurrently(8, create))
      yield* settle
      const pool = yield* AccountPool.AccountPool
      const busy = yield* pool.snapshot
      expect(busy.map((a) => [a.name, a.inFlight, a.limit])).toEqual([["a", 2, 2], ["b", 6, 6]])
      yield* TestClock.adjust("1 second")
      const completions = yield* Fiber.join(calls)
      expect(countOf(completions.map((c) => c.id), "cmpl-a")).toBe(2)
      expect(countOf(yield* chatHosts, "b")).toBe(6)
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("gives each (account, model) its own limit: one model's queue never holds another model back", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 2 })],
      handlers: { a: healthy("1 second") },
      options: { preflight: false }
    }
    const pro: ChatCompletionRequest = { ...request, model: "deepseek-v4-pro" }
    return Effect.gen(function*() {
      const flash = yield* Effect.fork(concurrently(4, create))
      const pros = yield* Effect.fork(concurrently(2, createWith(pro)))
      yield* settle
      const pool = yield* AccountPool.AccountPool
      const [a] = yield* pool.snapshot
      expect(a?.models).toEqual([
        { model: "deepseek-flash", limit: 2, inFlight: 2, queued: 2, rateLimited: 0, costUsd: 0 },
        { model: "deepseek-v4-pro", limit: 2, inFlight: 2, queued: 0, rateLimited: 0, costUsd: 0 }
      ])
      expect(a).toMatchObject({ limit: 4, inFlight: 4 })
      yield* TestClock.adjust("2 seconds")
      expect((yield* Fiber.join(flash)).length + (yield* Fiber.join(pros)).length).toBe(6)
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("gives a model's aliases its lane: calls under the old names and the new share the one cap DeepSeek keeps for it", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 2 })],
      handlers: { a: healthy("1 second") },
      options: { preflight: false }
    }
    const named = (model: string): ChatCompletionRequest => ({ ...request, model })
    return Effect.gen(function*() {
      const calls = yield* Effect.fork(
        Effect.all(["deepseek-v4-flash", "deepseek-flash", "deepseek-chat"].map((model) => createWith(named(model))), {
          concurrency: "unbounded"
        })
      )
      yield* settle
      const [a] = yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot)
      expect(a?.models).toEqual([{ model: "deepseek-flash", limit: 2, inFlight: 2, queued: 1, rateLimited: 0, costUsd: 0 }])
      yield* TestClock.adjust("2 seconds")
      expect(yield* Fiber.join(calls)).toHaveLength(3)
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("gives the models an account sends as one its lane of that model: the upstream caps what it runs, not what was asked", () => {
    const setup: Setup = {
      accounts: [
        account("local", ["sk-local"], {
          provider: "openai-compatible",
          concurrency: 2,
          models: { "deepseek-v4-flash": "house-model", "deepseek-v4-pro": "house-model" }
        })
      ],
      handlers: { local: healthy("1 second") },
      options: { preflight: false }
    }
    // Each call asks its model's name: both are sent as `house-model`.
    const asking = (model: string) => createWith({ model, messages: [{ role: "user", content: model }] })
    const asked = Effect.flatMap(MockUpstream.MockUpstream, (upstream) =>
      Effect.map(upstream.requests, (requests) => requests.filter(isChat).map((r) => bodyOf(r).messages[0]?.content)))
    return Effect.gen(function*() {
      const flash = "deepseek-v4-flash"
      const pro = "deepseek-v4-pro"
      const calls = yield* Effect.fork(Effect.all([flash, flash, flash, flash, pro, pro].map(asking), { concurrency: "unbounded" }))
      yield* settle
      const [local] = yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot)
      expect(local?.models).toEqual([{ model: "house-model", limit: 2, inFlight: 2, queued: 4, rateLimited: 0, costUsd: 0 }])
      expect(yield* asked).toEqual([flash, flash])
      // The permits the lane frees go to each model's calls in turn: pro does not wait behind flash's queue.
      yield* TestClock.adjust("1 second")
      expect((yield* asked).slice(2)).toEqual([flash, pro])
      yield* TestClock.adjust("2 seconds")
      expect(yield* Fiber.join(calls)).toHaveLength(6)
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("counts each lane's 429s and spend apart: a throttled model shows on its own lane, not on the account's others", () => {
    const pro: ChatCompletionRequest = { ...request, model: "deepseek-v4-pro" }
    // An old name, answered by the model that serves it now (as DeepSeek does).
    const alias: ChatCompletionRequest = { ...request, model: "deepseek-chat" }
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 4 })],
      handlers: {
        a: (req) =>
          !isChat(req)
            ? status(404)(req)
            : bodyOf(req).model === pro.model
            ? MockUpstream.status(429, { body: errorBody("busy") })
            : MockUpstream.completion({ ...generation(req), model: "deepseek-v4-flash" })
      },
      options: { preflight: false }
    }
    return Effect.gen(function*() {
      yield* createWith(alias)
      const throttled = yield* Effect.flip(createWith(pro))
      expect(ApiError.tagOf(throttled)).toBe("RateLimited")
      yield* Effect.flip(createWith(pro))
      const [a] = yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot)
      // The old name's lane is the model it is an alias of.
      expect(a?.models.map((lane) => [lane.model, lane.rateLimited])).toEqual([["deepseek-flash", 0], ["deepseek-v4-pro", 2]])
      expect(a?.rateLimited).toBe(2)
      // The answer, priced as the model its response named, is the cost of the lane that carried it.
      const { byModel, total } = yield* Effect.flatMap(CostLedger.CostLedger, (ledger) => ledger.snapshot)
      expect(total.costUsd).toBeGreaterThan(0)
      expect(byModel["deepseek-v4-flash"]?.costUsd).toBe(total.costUsd)
      expect(a?.models.map((lane) => [lane.model, lane.costUsd])).toEqual([["deepseek-flash", total.costUsd], ["deepseek-v4-pro", 0]])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("onAnswer hands a completion over before its attempt settles: the permit still held, the cost not yet recorded", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 2 })],
      handlers: { a: healthy() },
      options: { preflight: false }
    }
    return Effect.gen(function*() {
      const pool = yield* AccountPool.AccountPool
      const ledger = yield* CostLedger.CostLedger
      const inFlightAndRecorded = Effect.zip(
        Effect.map(pool.snapshot, ([a]) => a?.inFlight),
        Effect.map(ledger.snapshot, (snapshot) => snapshot.total.requests)
      )
      const seen: Array<unknown> = []
      const completion = yield* createWith(request, {
        onAnswer: (answer) => Effect.map(inFlightAndRecorded, (state) => seen.push([answer.id, ...state]))
      })
      expect(seen).toEqual([[completion.id, 1, 0]])
      expect(yield* inFlightAndRecorded).toEqual([0, 1])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("an account-wide cap holds every model of the account together", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 2, accountConcurrency: 3 })],
      handlers: { a: healthy("1 second") },
      options: { preflight: false }
    }
    return Effect.gen(function*() {
      yield* Effect.fork(concurrently(2, create))
      yield* Effect.fork(concurrently(2, createWith({ ...request, model: "deepseek-v4-pro" })))
      yield* settle
      const [a] = yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot)
      expect(a?.inFlight).toBe(3)
      yield* TestClock.adjust("1 second")
      yield* settle
      expect(yield* chatHosts).toHaveLength(4)
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("places a waiting call on the first account to free a permit, not on the one it would have picked first", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 1 }), account("b", ["sk-b"], { concurrency: 1 })],
      handlers: { a: healthy("10 seconds"), b: healthy("1 second") },
      options: { preflight: false }
    }
    return Effect.gen(function*() {
      const calls = yield* Effect.fork(concurrently(3, create))
      yield* settle
      expect(yield* chatHosts).toEqual(["a", "b"])
      // b frees its permit after a second: the third call goes there, not behind a's ten seconds.
      yield* TestClock.adjust("2 seconds")
      expect(yield* chatHosts).toEqual(["a", "b", "b"])
      yield* TestClock.adjust("8 seconds")
      expect((yield* Fiber.join(calls)).map((c) => c.id)).toEqual(["cmpl-a", "cmpl-b", "cmpl-b"])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("preflight: an account whose balance is unavailable at start gets no call, and the fallback does not take over while a primary is being checked", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"]), { ...fallbackAccount, concurrency: 1 }],
      handlers: {
        a: (req) => isChat(req) ? healthy()(req) : balance(false),
        b: (req) => isChat(req) ? healthy()(req) : MockUpstream.json({ is_available: true }, { delay: "2 seconds" }),
        alt: healthy()
      }
    }
    return Effect.gen(function*() {
      yield* settle
      expect(yield* states).toEqual({ a: "out_of_balance", b: "checking_balance", alt: "serving" })
      // b's balance answers in 2 s: the call waits for it rather than going to the fallback.
      const call = yield* Effect.fork(create)
      yield* TestClock.adjust("1 second")
      expect(call.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(call)).id).toBe("cmpl-b")
      expect(yield* chatHosts).toEqual(["b"])
      expect(yield* states).toEqual({ a: "out_of_balance", b: "serving", alt: "serving" })
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("preflight: a rejected key passes the balance check to the next key; an account whose every key is rejected sends no call", () => {
    const revoked = new Set(["sk-a-revoked", "sk-b-revoked", "sk-b-revoked-too"])
    const keyed = (handler: Handler): Handler => (req) => revoked.has(bearerOf(req)) ? status(401)(req) : handler(req)
    const setup: Setup = {
      accounts: [account("a", ["sk-a-revoked", "sk-a"]), account("b", ["sk-b-revoked", "sk-b-revoked-too"]), fallbackAccount],
      handlers: { a: keyed((req) => isChat(req) ? healthy()(req) : balance(false)), b: keyed(healthy()), alt: healthy() }
    }
    return Effect.gen(function*() {
      yield* settle
      // a's balance was asked with its second key: a is out of balance before any call.
      expect(yield* states).toEqual({ a: "out_of_balance", b: "no_keys", alt: "serving" })
      expect((yield* create).id).toBe("cmpl-alt")
      expect(yield* chatHosts).toEqual(["alt"])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("preflight: every key of a DeepSeek account is asked the balance, so a wrong one among good ones is told at start, before a call meets it", () => {
    const keyed: Handler = (req) =>
      bearerOf(req) === "sk-a-wrong" ? status(401)(req) : isChat(req) ? healthy()(req) : balance(true)
    const setup: Setup = { accounts: [account("a", ["sk-a", "sk-a-wrong", "sk-a-too"])], handlers: { a: keyed } }
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      yield* settle
      const [a] = yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot)
      expect(a).toMatchObject({ state: "serving", usableKeys: 2, restingKeys: ["key#2"] })
      expect(logs.map((l) => l.message).filter((m) => m.includes("rejected"))).toEqual([
        expect.stringMatching(/^AccountPool: account a: the upstream rejected its key#2 \(401\)/)
      ])
      yield* Effect.replicateEffect(create, 4)
      const asked = yield* Effect.flatMap(MockUpstream.MockUpstream, (upstream) => upstream.requests)
      expect(asked.filter((r) => !isChat(r)).map(bearerOf).sort()).toEqual(["sk-a", "sk-a-too", "sk-a-wrong"])
      expect(asked.filter(isChat).map(bearerOf)).not.toContain("sk-a-wrong")
    }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
  })

  it.effect("keys back from their cooldown are asked the balance before the account serves again: still rejected, it stays out without a call", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a-revoked"])],
      handlers: { a: status(401) },
      options: { keyCooldown: "15 minutes" }
    }
    return Effect.gen(function*() {
      yield* settle
      expect(yield* states).toEqual({ a: "no_keys" })
      yield* TestClock.adjust("15 minutes")
      // Its key was asked the balance again, rejected again: never serving in between.
      expect(yield* states).toEqual({ a: "no_keys" })
      const asked = yield* Effect.flatMap(MockUpstream.MockUpstream, (upstream) => upstream.requests)
      expect(asked.map(pathOf)).toEqual(["/user/balance", "/user/balance"])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("preflight: a DeepSeek account whose balance check answers 404 is told at start (a base URL with a path too many), and serves", () => {
    const logs: Array<Logged> = []
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { baseUrl: "https://a.test/api/chat" })],
      handlers: { a: healthy() }
    }
    return Effect.gen(function*() {
      yield* settle
      expect(yield* states).toEqual({ a: "serving" })
      expect(logs.filter((log) => log.message.includes("balance check")).map((log) => [log.level, log.message])).toEqual([[
        "WARN",
        "AccountPool: account a: its balance check (GET https://a.test/api/chat/user/balance) answered 404; DeepSeek answers it at its API root, so if calls fail with 404 too, its base URL has a path too many"
      ]])
    }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
  })

  it.effect("an account reached over plain http:// on another machine is told at start: its keys cross the network in the clear", () => {
    const logs: Array<Logged> = []
    const setup: Setup = {
      accounts: [
        account("a", ["sk-a"], { baseUrl: "http://a.test/v1" }),
        account("b", ["sk-b"], { baseUrl: "http://127.0.0.1:9/" }),
        account("c", ["sk-c"], { baseUrl: "http://[::1]:9/" })
      ],
      handlers: { a: healthy(), b: healthy(), c: healthy() },
      options: { preflight: false }
    }
    return Effect.gen(function*() {
      yield* settle
      expect(logs.filter((log) => log.message.includes("http://")).map((log) => [log.level, log.message])).toEqual([[
        "WARN",
        "AccountPool: account a: its base URL is plain http:// to a.test, another machine: its keys cross the network unencrypted (https:// would keep them private)"
      ]])
    }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
  })

  it.effect("preflight: a base URL that redirects (http:// to https://, say) is told at start, with where to: no call follows a redirect", () => {
    const logs: Array<Logged> = []
    const moved: Handler = () => MockUpstream.status(301, { headers: { location: "https://a.test/user/balance" }, body: "<html>moved</html>" })
    const setup: Setup = { accounts: [account("a", ["sk-a"], { baseUrl: "http://a.test" })], handlers: { a: moved } }
    return Effect.gen(function*() {
      yield* settle
      expect(logs.filter((log) => log.message.includes("balance check")).map((log) => [log.level, log.message])).toEqual([[
        "WARN",
        "AccountPool: account a: its balance check (GET http://a.test/user/balance) answered 301, a redirect to https://a.test/user/balance: " +
        "calls follow no redirect (their key would go along), so they will fail as well; give the base URL it points to"
      ]])
    }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
  })

  it.effect("preflight: a DeepSeek base URL ending in /v1 (its OpenAI-compatible alias) has its balance asked at the API root", () => {
    const logs: Array<Logged> = []
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { baseUrl: "https://a.test/v1/" })],
      handlers: { a: (req) => isChat(req) ? healthy()(req) : pathOf(req) === "/user/balance" ? balance(false) : status(404)(req) }
    }
    return Effect.gen(function*() {
      yield* settle
      expect(yield* states).toEqual({ a: "out_of_balance" })
      expect(logs.filter((log) => log.message.includes("balance check"))).toEqual([])
    }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
  })

  it.effect("preflight: a balance check answered with a web page is told, scrubbed of keys, and the account serves", () => {
    const logs: Array<Logged> = []
    const page = "<html><body>Welcome to nginx! sk-a-configured</body></html>"
    const scrubbedPage = "<html><body>Welcome to nginx! ***</body></html>"
    const setup: Setup = {
      accounts: [account("a", ["sk-a-configured"])],
      handlers: { a: (req) => isChat(req) ? healthy()(req) : MockUpstream.parts([page], { headers: { "content-type": "text/html" } }) }
    }
    return Effect.gen(function*() {
      yield* settle
      expect(yield* states).toEqual({ a: "serving" })
      expect((yield* create).id).toBe("cmpl-a")
      expect(logs.filter((log) => log.message.includes("balance check")).map((log) => [log.level, log.message])).toEqual([[
        "WARN",
        `AccountPool: account a: its balance check (GET https://a.test/user/balance) answered 200 text/html: "${scrubbedPage}", not a balance; if its calls fail as well, its base URL reaches something other than the API`
      ]])
    }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
  })

  it.effect("records each attempt's cost under the model the response names, a cut one's too", () => {
    let calls = 0
    const setup: Setup = {
      accounts: [account("a", ["sk-a"])],
      handlers: {
        a: (req) =>
          isChat(req)
            ? MockUpstream.completion({
              ...generation(req),
              model: "deepseek-flash",
              ...(++calls === 1 ? { finishReason: "insufficient_system_resource" as const } : {})
            })
            : status(404)(req)
      },
      options: { preflight: false }
    }
    return Effect.gen(function*() {
      // The first answer is cut (billed, the call's answer): priced by the model it names, not the one asked for.
      expect((yield* Effect.flip(create))._tag).toBe("InsufficientResource")
      expect((yield* create).model).toBe("deepseek-flash")
      const { byModel } = yield* Effect.flatMap(CostLedger.CostLedger, (ledger) => ledger.snapshot)
      expect(Object.keys(byModel)).toEqual(["deepseek-flash"])
      expect(byModel["deepseek-flash"]).toMatchObject({ attempts: 2, requests: 2, truncated: 1, retryTax: { attempts: 0 } })
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("alternates idle accounts by calls so far, in configuration order on ties", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"])],
      handlers: { a: healthy(), b: healthy() }
    }
    return Effect.gen(function*() {
      yield* Effect.repeatN(create, 3)
      expect(yield* chatHosts).toEqual(["a", "b", "a", "b"])
      const pool = yield* AccountPool.AccountPool
      expect((yield* pool.snapshot).map((a) => [a.name, a.calls, a.inFlight])).toEqual([["a", 2, 0], ["b", 2, 0]])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("drops a bad key after its first 401 and uses it again only after the key cooldown", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a-bad", "sk-a-1", "sk-a-2"])],
      handlers: { a: (req) => bearerOf(req) === "sk-a-bad" ? status(401)(req) : healthy()(req) },
      // The calls meet the bad key (a preflight would set it aside before them).
      options: { keyCooldown: "10 minutes", preflight: false }
    }
    const bearers = Effect.flatMap(MockUpstream.MockUpstream, (upstream) =>
      Effect.map(upstream.requests, (requests) => requests.filter(isChat).map(bearerOf)))
    return Effect.gen(function*() {
      yield* Effect.repeatN(create, 5)
      const used = yield* bearers
      expect(countOf(used, "sk-a-bad")).toBe(1)
      expect([countOf(used, "sk-a-1"), countOf(used, "sk-a-2")]).toEqual([3, 3])
      const pool = yield* AccountPool.AccountPool
      expect((yield* pool.snapshot)[0]).toMatchObject({ state: "serving", usableKeys: 2 })

      // Nothing is disabled forever: after the cooldown the key is tried (and dropped) again.
      yield* TestClock.adjust("10 minutes")
      expect((yield* pool.snapshot)[0]?.usableKeys).toBe(3)
      yield* Effect.repeatN(create, 2)
      expect(countOf(yield* bearers, "sk-a-bad")).toBe(2)
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("a pool whose every key rests closes at once, even after an uninterruptible call: the wake-up for its keys ends with it", () =>
    Effect.gen(function*() {
      const setup: Setup = { accounts: [account("a", ["sk-a"])], handlers: { a: status(401) }, options: { preflight: false, keyCooldown: "10 minutes" } }
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(poolLayer(setup), scope)
      const error = yield* Effect.flip(Effect.uninterruptible(create).pipe(Effect.provide(context)))
      expect(error._tag).toBe("NoAccountAvailable")
      const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
      yield* TestClock.adjust("1 second")
      expect(Option.isSome(yield* Fiber.poll(closing))).toBe(true)
    }))

  it.effect("fails over within one attempt on account-level errors, without a retry", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"]), account("c", ["sk-c"])],
      handlers: { a: status(401), b: status(402), c: healthy() },
      options: { preflight: false }
    }
    const { counts, layer } = stackLayer(setup)
    return Effect.gen(function*() {
      const completion = yield* resilientCreate
      expect(completion.id).toBe("cmpl-c")
      expect(yield* chatHosts).toEqual(["a", "b", "c"])
      expect(yield* counts).toMatchObject({ failedAttempts: 0, retries: 0 })
      expect(yield* states).toEqual({ a: "no_keys", b: "out_of_balance", c: "serving" })
      // The excluded accounts are not called again.
      yield* Effect.repeatN(resilientCreate, 1)
      expect(yield* chatHosts).toEqual(["a", "b", "c", "c", "c"])
    }).pipe(Effect.provide(layer))
  })

  it.effect("an account whose base URL leads to no chat endpoint (a 404 page) fails over, a stream too", () => {
    const page = MockUpstream.status(404, { body: "<html>Not Found</html>", headers: { "content-type": "text/html" } })
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"])],
      handlers: { a: () => page, b: healthy() },
      options: { preflight: false }
    }
    const { counts, layer } = stackLayer(setup)
    return Effect.gen(function*() {
      expect((yield* resilientCreate).id).toBe("cmpl-b")
      expect((yield* drain).error).toBeUndefined()
      expect(yield* chatHosts).toEqual(["a", "b", "a", "b"])
      expect(yield* counts).toMatchObject({ failedAttempts: 0, retries: 0 })
    }).pipe(Effect.provide(layer))
  })

  it.effect("a 404 API error (a model the server does not know) is the call's answer: no failover", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"])],
      handlers: { a: status(404), b: healthy() },
      options: { preflight: false }
    }
    const { layer } = stackLayer(setup)
    return Effect.gen(function*() {
      const error = yield* Effect.flip(resilientCreate)
      expect(error).toMatchObject({ status: 404, endpointMissing: false })
      expect(yield* chatHosts).toEqual(["a"])
    }).pipe(Effect.provide(layer))
  })

  it.effect("calls through the client that share one request object are calls, not retries of each other; a call's retry is one", () => {
    let chats = 0
    const setup: Setup = {
      accounts: [account("a", ["sk-a"])],
      handlers: { a: (req) => ++chats === 4 ? status(500)(req) : healthy()(req) },
      options: { preflight: false }
    }
    const { layer } = stackLayer(setup)
    const retries = Effect.flatMap(AccountPool.AccountPool, (pool) => Effect.map(pool.snapshot, ([a]) => a!.retries))
    return Effect.gen(function*() {
      yield* Effect.repeatN(resilientCreate, 2)
      expect(yield* retries).toBe(0)
      const retried = yield* Effect.fork(resilientCreate)
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(retried)
      expect([chats, yield* retries]).toEqual([5, 1])
    }).pipe(Effect.provide(layer))
  })

  it.effect("an account-level failure of the only account left for the call is its answer, told once, not \"no account can serve\"", () => {
    const setup: Setup = { accounts: [account("a", ["sk-a"])], handlers: { a: status(403) }, options: { preflight: false } }
    const { counts, layer } = stackLayer(setup)
    return Effect.gen(function*() {
      const error = yield* Effect.flip(resilientCreate)
      expect(error).toMatchObject({ status: 403 })
      expect(ApiError.classify(error)._tag).toBe("Account")
      expect(yield* counts).toMatchObject({ failedAttempts: 1, retries: 0 })
      const streamed = yield* drain
      expect(streamed.error).toMatchObject({ status: 403 })
      expect(yield* chatHosts).toEqual(["a", "a"])
    }).pipe(Effect.provide(layer))
  })

  it.effect("counts each call once in the client's metrics, each failover under its account, each lane under account and model", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"], { concurrency: 5 })],
      handlers: { a: status(402), b: healthy() }
    }
    const { layer } = stackLayer(setup)
    const count = (metric: Metric.Metric.Counter<number>) => Effect.map(Metric.value(metric), (state) => state.count)
    const failovers = Metric.tagged(Metric.tagged(AccountPool.failoversCounter, "account", "a"), "error", "InsufficientBalance")
    // The attempt failed over from is a failed attempt, though the policy sees only the call's end.
    const failedAttempts = Metric.tagged(Policy.attemptFailuresCounter, "error", "InsufficientBalance")
    const bLimit = Metric.tagged(Metric.tagged(ConcurrencyLimiter.limitGauge, "account", "b"), "model", "deepseek-flash")
    return Effect.gen(function*() {
      const before = yield* Effect.all([count(Policy.callsCounter), count(failovers), count(failedAttempts)])
      yield* resilientCreate // a answers 402, b serves: one call, two account attempts
      yield* resilientCreate // b only
      const after = yield* Effect.all([count(Policy.callsCounter), count(failovers), count(failedAttempts)])
      expect(after.map((n, i) => n - before[i]!)).toEqual([2, 1, 1])
      expect((yield* Metric.value(bLimit)).value).toBe(5)
    }).pipe(Effect.provide(layer))
  })

  it.effect("counts a failed-over attempt once when its error becomes the call's: no account was left for it", () => {
    const { layer } = stackLayer({ accounts: [account("a", ["sk-a"])], handlers: { a: status(403) }, options: { preflight: false } })
    const forbidden = Metric.tagged(Policy.attemptFailuresCounter, "error", "UnexpectedStatus")
    const count = Effect.map(Metric.value(forbidden), (state) => state.count)
    return Effect.gen(function*() {
      const before = yield* count
      expect(yield* Effect.flip(resilientCreate)).toMatchObject({ _tag: "UnexpectedStatus", status: 403 })
      expect((yield* count) - before).toBe(1)
      // Failed over from, then the call's answer after all: not retry tax.
      const { total } = yield* Effect.flatMap(CostLedger.CostLedger, (ledger) => ledger.snapshot)
      expect(total).toMatchObject({ attempts: 1, requests: 0, retryTax: { attempts: 0 } })
      // Under a span too, where Effect fails the error as a copy that carries the span.
      expect(yield* Effect.flip(Effect.withSpan(resilientCreate, "caller"))).toMatchObject({ _tag: "UnexpectedStatus" })
      expect((yield* count) - before).toBe(2)
    }).pipe(Effect.provide(layer))
  })

  it.effect("a call its account's breaker refuses is not a failover: nothing failed there, and it moves nowhere", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"])],
      handlers: { a: status(500) },
      options: { preflight: false, breaker: { minimumThroughput: 1, failureRatio: 0.25, openFor: "1 second" } }
    }
    const count = (error: string) =>
      Effect.map(Metric.value(Metric.tagged(Metric.tagged(AccountPool.failoversCounter, "account", "a"), "error", error)), (state) => state.count)
    return Effect.gen(function*() {
      const before = yield* Effect.all([count("ServerError"), count("CircuitOpen")])
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      // Three calls wait for the open breaker; when it half-opens one is its canary, the others are refused.
      const calls = yield* Effect.fork(concurrently(3, Effect.either(createWith(request, { maxWait: "5 seconds" }))))
      for (let second = 0; second < 8; second++) yield* TestClock.adjust("1 second")
      yield* Fiber.join(calls)
      expect(countOf(yield* chatHosts, "a")).toBeGreaterThan(1)
      const after = yield* Effect.all([count("ServerError"), count("CircuitOpen")])
      expect(after.map((n, i) => n - before[i]!)).toEqual([0, 0])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("the queued gauge falls as the pool turns its waiters away (the account's last key rejected), not at the lane's next event", () => {
    const model = "queued-gauge-model"
    const setup: Setup = {
      accounts: [account("q", ["sk-q"], { provider: "openai-compatible", concurrency: 1 })],
      handlers: {
        q: (req) => bodyOf(req).model === model ? MockUpstream.completion(generation(req), { delay: "1 minute" }) : status(401)(req)
      }
    }
    const queued = Effect.map(Metric.snapshot, (pairs) =>
      pairs.find(({ metricKey }) =>
        metricKey.name === "weatherproof_account_pool_queued" && metricKey.tags.some((tag) => tag.value === model)
      )?.metricState)
    return Effect.gen(function*() {
      const calls = yield* Effect.forEach([1, 2, 3, 4], () => Effect.fork(Effect.either(createWith({ ...request, model }))))
      yield* settle
      expect(yield* queued).toMatchObject({ value: 3 })
      // Another model's call meets a 401 on the only key: no account is left for the queued calls.
      expect(yield* Effect.flip(createWith({ ...request, model: "other-model" }))).toMatchObject({ _tag: "NoAccountAvailable" })
      yield* settle
      expect((yield* Effect.forEach(calls.slice(1), Fiber.join)).map((result) => result._tag)).toEqual(["Left", "Left", "Left"])
      // While the first call still runs.
      expect(yield* queued).toMatchObject({ value: 0 })
      yield* Fiber.interrupt(calls[0]!)
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("has each lane's series from its making, on every account: for the models it serves at start, and an unlisted model's at its first call", () => {
    const setup: Setup = { accounts: [account("series-a", ["sk-a"]), account("series-b", ["sk-b"])], handlers: { "series-a": healthy() } }
    /** The state of the series `name` with exactly `tags`, if it exists (reading a metric's value would make it). */
    const series = (name: string, tags: Record<string, string>) =>
      Effect.map(Metric.snapshot, (pairs) =>
        pairs.find(({ metricKey }) =>
          metricKey.name === name && metricKey.tags.length === Object.keys(tags).length &&
          metricKey.tags.every((tag) => tags[tag.key] === tag.value)
        )?.metricState)
    /** Whether every account's lane for `model` has its series. */
    const laneSeries = (model: string) =>
      Effect.all(
        ["series-a", "series-b"].map((account) =>
          Effect.all([
            series("weatherproof_concurrency_limit", { account, model }),
            series("weatherproof_concurrency_in_flight", { account, model }),
            series("weatherproof_account_pool_retries", { account, model }),
            series("weatherproof_account_pool_attempts", { account, model, result: "RateLimited" })
          ])
        )
      ).pipe(Effect.map((all) => all.flat().every((state) => state !== undefined)))
    return Effect.gen(function*() {
      // A model of the pricing table: served from the start.
      expect(yield* laneSeries("deepseek-flash")).toBe(true)
      // An alias has none: its calls go to the lane of the model it names.
      expect(yield* laneSeries("deepseek-v4-flash")).toBe(false)
      expect(yield* laneSeries("house-model")).toBe(false)
      // Its first call makes its lane on both accounts; series-a serves it.
      yield* createWith({ ...request, model: "house-model" })
      expect(yield* laneSeries("house-model")).toBe(true)
      expect(AccountPool.servedModels(setup.accounts, CostLedger.defaultPricing)).not.toContain("house-model")
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("takes an account out on 402 and brings it back when a balance probe finds it funded", () => {
    let funded = true
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"])],
      handlers: {
        a: (req) => isChat(req) ? (funded ? healthy()(req) : status(402)(req)) : balance(funded),
        b: healthy()
      },
      options: { balanceProbeInterval: "60 seconds" }
    }
    const probes = Effect.flatMap(MockUpstream.MockUpstream, (upstream) =>
      Effect.map(upstream.requests, (requests) =>
        requests.filter((r) => pathOf(r) === "/user/balance" && hostOf(r) === "a").map((r) => [r.method, bearerOf(r)])))
    return Effect.gen(function*() {
      // Preflight: a's balance was asked once at start; it answered available.
      yield* settle
      expect(yield* probes).toEqual([["GET", "sk-a"]])
      funded = false
      expect((yield* create).id).toBe("cmpl-b")
      yield* Effect.repeatN(create, 2)
      expect(yield* chatHosts).toEqual(["a", "b", "b", "b", "b"])
      expect(yield* states).toEqual({ a: "out_of_balance", b: "serving" })

      yield* TestClock.adjust("59 seconds")
      expect((yield* probes).length).toBe(1)
      yield* TestClock.adjust("1 second")
      expect(yield* probes).toEqual([["GET", "sk-a"], ["GET", "sk-a"]])
      expect((yield* states).a).toBe("out_of_balance")

      funded = true
      yield* TestClock.adjust("60 seconds")
      expect((yield* probes).length).toBe(3)
      expect((yield* states).a).toBe("serving")
      yield* Effect.repeatN(create, 1)
      expect((yield* chatHosts).slice(5)).toContain("a")
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("does not send the calls that queued at an account while it ran out of balance", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 1 }), account("b", ["sk-b"], { concurrency: 1 })],
      handlers: {
        a: () => MockUpstream.parts([JSON.stringify(errorBody("no balance"))], { status: 402, latency: "1 second" }),
        b: healthy("1 second")
      },
      options: { preflight: false }
    }
    return Effect.gen(function*() {
      const calls = yield* Effect.fork(concurrently(4, create))
      yield* settle
      const pool = yield* AccountPool.AccountPool
      expect((yield* pool.snapshot).map((a) => a.inFlight)).toEqual([1, 1])
      yield* TestClock.adjust("5 seconds")
      const completions = yield* Fiber.join(calls)
      expect(completions.map((c) => c.id)).toEqual(["cmpl-b", "cmpl-b", "cmpl-b", "cmpl-b"])
      expect(yield* chatHosts).toEqual(["a", "b", "b", "b", "b"])
      const ledger = yield* CostLedger.CostLedger
      expect((yield* ledger.snapshot).byAccount["a"]?.attempts).toBe(1)
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("brings back an account that cannot be probed, or whose probes tell nothing, after the fallback cooldown", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"], { provider: "openai-compatible" }), account("c", ["sk-c"])],
      handlers: {
        a: (req) => isChat(req) ? status(402)(req) : status(404)(req),
        b: status(402),
        c: (req) => isChat(req) ? status(402)(req) : status(500)(req)
      },
      options: { balanceProbeInterval: "1 minute", fallbackCooldown: "5 minutes", maxWait: "1 second" }
    }
    const out = { a: "out_of_balance", b: "out_of_balance", c: "out_of_balance" }
    return Effect.gen(function*() {
      const call = yield* Effect.fork(Effect.flip(create))
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(call))._tag).toBe("NoAccountAvailable")
      expect(yield* states).toEqual(out)
      // a's balance endpoint answers 404 at the first probe: a waits out the cooldown like b; c's
      // answers 500 at each.
      yield* TestClock.adjust("4 minutes")
      expect(yield* states).toEqual(out)
      yield* TestClock.adjust("1 minute")
      expect(yield* states).toEqual({ a: "serving", b: "serving", c: "serving" })
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("uses the fallback only when no primary can serve, with its model names", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"]), fallbackAccount],
      handlers: { a: healthy(), b: healthy(), alt: healthy() },
      options: { breaker: { minimumThroughput: 1, failureRatio: 0.25, openFor: "30 seconds" } }
    }
    const models = Effect.flatMap(MockUpstream.MockUpstream, (upstream) =>
      Effect.map(upstream.requests, (requests) => requests.filter(isChat).map((r) => [hostOf(r), bodyOf(r).model])))
    return Effect.gen(function*() {
      yield* Effect.repeatN(create, 3)
      expect(countOf(yield* chatHosts, "alt")).toBe(0)

      // One 500 (an outage) opens a primary's breaker (the error goes back to the caller's retry).
      setup.handlers.a = status(500)
      setup.handlers.b = status(500)
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      expect(yield* states).toEqual({ a: "open", b: "open", alt: "serving" })

      const completion = yield* create
      expect(completion.id).toBe("cmpl-alt")
      expect(completion.model).toBe("other-model")
      expect((yield* models).slice(-1)).toEqual([["alt", "other-model"]])
      expect((yield* models).filter(([host]) => host !== "alt").every(([, model]) => model === "deepseek-v4-flash"))
        .toBe(true)

      // Back to the primaries once their breakers let a canary through.
      setup.handlers.a = healthy()
      setup.handlers.b = healthy()
      yield* TestClock.adjust("30 seconds")
      yield* Effect.repeatN(create, 1)
      expect((yield* chatHosts).slice(-2)).toEqual(["a", "b"])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("places a call only on accounts that serve its model: a fallback mapping flash gets no pro call, a model only it maps goes to it; a mapped model goes without `thinking`", () => {
    const setup: Setup = {
      accounts: [
        account("a", ["sk-a"]),
        account("small", ["sk-small"], { provider: "openai-compatible", models: { "deepseek-flash": "small-model" } }),
        account("alt", ["sk-alt"], { provider: "openai-compatible", fallback: true, models: { "gpt-4o-mini": "gpt-4o-mini" } })
      ],
      handlers: { a: healthy(), small: healthy(), alt: healthy() },
      options: { preflight: false, breaker: { minimumThroughput: 1, failureRatio: 0.25, openFor: "1 minute" } }
    }
    const sent = Effect.flatMap(MockUpstream.MockUpstream, (upstream) =>
      Effect.map(upstream.requests, (requests) => requests.filter(isChat).map((r) => `${hostOf(r)}:${bodyOf(r).model}`)))
    // As the router sends them: with DeepSeek's `thinking`, which another provider's model goes without.
    const ask = (model: string) => createWith({ ...request, model, thinking: { type: "disabled" } })
    return Effect.gen(function*() {
      // Flash (by either name: the map's key is its alias) spreads over both primaries; pro and
      // unknown names only to DeepSeek; the model only the fallback names to it, primaries up.
      yield* Effect.all([ask("deepseek-v4-flash"), ask("deepseek-flash"), ask("deepseek-v4-pro"), ask("deepseek-v5"), ask("gpt-4o-mini")])
      expect(yield* sent).toEqual([
        "a:deepseek-v4-flash",
        "small:small-model",
        "a:deepseek-v4-pro",
        "a:deepseek-v5",
        "alt:gpt-4o-mini"
      ])
      const thinkingSent = yield* Effect.flatMap(MockUpstream.MockUpstream, (upstream) =>
        Effect.map(upstream.requests, (requests) => requests.filter(isChat).map((r) => [hostOf(r), "thinking" in bodyOf(r)])))
      expect(thinkingSent).toEqual([["a", true], ["small", false], ["a", true], ["a", true], ["alt", false]])
      expect((yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot)).map(({ name, models }) => [name, models.map((m) => m.model)]))
        .toEqual([["a", ["deepseek-flash", "deepseek-v4-pro", "deepseek-v5"]], ["small", ["small-model"]], ["alt", ["gpt-4o-mini"]]])

      // DeepSeek down: pro waits for it rather than going where it is not served, and says why.
      setup.handlers.a = status(500)
      expect((yield* Effect.flip(ask("deepseek-v4-pro")))._tag).toBe("ServerError")
      expect(yield* states).toEqual({ a: "open", small: "serving", alt: "serving" })
      const waited = yield* Effect.flip(createWith({ ...request, model: "deepseek-v4-pro" }, { maxWait: "1 second" })).pipe(
        Effect.fork,
        Effect.tap(() => TestClock.adjust("1 second")),
        Effect.flatMap((fiber) => fiber.await),
        Effect.flatMap((exit) => exit)
      )
      expect(waited).toMatchObject({
        _tag: "NoAccountAvailable",
        accounts: [{ account: "a", reason: "circuit_open" }, { account: "small", reason: "model_not_served" }, {
          account: "alt",
          reason: "model_not_served"
        }]
      })
      expect(waited.message).toContain("small: model_not_served, it does not serve this model")
      expect((yield* sent).filter((line) => !line.startsWith("a:"))).toEqual(["small:small-model", "alt:gpt-4o-mini"])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("an adaptive account whose server sheds every call (503) opens its breaker and fails over; its 429s never do", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), fallbackAccount],
      handlers: { a: (req) => isChat(req) ? MockUpstream.status(429, { body: errorBody("busy") }) : status(404)(req), alt: healthy() },
      options: { preflight: false, breaker: { minimumThroughput: 2, failureRatio: 0.5, openFor: "30 seconds" } }
    }
    return Effect.gen(function*() {
      for (const _ of [1, 2, 3, 4]) expect((yield* Effect.flip(create))._tag).toBe("RateLimited")
      expect(yield* states).toEqual({ a: "serving", alt: "serving" })

      setup.handlers.a = status(503)
      for (const _ of [1, 2]) expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      expect(yield* states).toEqual({ a: "open", alt: "serving" })
      expect((yield* create).id).toBe("cmpl-alt")
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("a half-open account takes its canary, and the calls another account can serve go there rather than wait for the verdict", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 4 }), account("b", ["sk-b"], { concurrency: 4 })],
      handlers: { a: status(500), b: healthy("1 second") },
      options: { preflight: false, breaker: { minimumThroughput: 1, failureRatio: 0.25, openFor: "30 seconds" } }
    }
    return Effect.gen(function*() {
      expect((yield* Effect.flip(create))._tag).toBe("ServerError") // a's breaker opens at its first failure
      expect(yield* states).toEqual({ a: "open", b: "serving" })
      setup.handlers.a = healthy("1 minute")
      yield* TestClock.adjust("30 seconds") // a half-opens; its canary will take a minute
      const calls = yield* Effect.forEach([1, 2, 3, 4], () => Effect.fork(create))
      yield* settle
      // One call is a's canary; the three others go to b, which has room, rather than wait a minute for its verdict.
      expect(yield* chatHosts).toEqual(["a", "b", "a", "b", "b"])
      yield* TestClock.adjust("1 second")
      expect(calls.filter((call) => call.unsafePoll()?._tag === "Success").length).toBe(3)
      yield* TestClock.adjust("1 minute") // the canary answers: a serves again
      expect(calls.every((call) => call.unsafePoll()?._tag === "Success")).toBe(true)
      expect(yield* states).toEqual({ a: "serving", b: "serving" })
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("a lone half-open account sends its canary alone: the other calls wait at the pool and go once its verdict closes the breaker", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 4 })],
      handlers: { a: status(500) },
      options: { preflight: false, breaker: { minimumThroughput: 1, failureRatio: 0.25, openFor: "30 seconds" } }
    }
    return Effect.gen(function*() {
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      setup.handlers.a = healthy("10 seconds")
      yield* TestClock.adjust("30 seconds")
      const calls = yield* Effect.forEach([1, 2, 3], () => Effect.fork(create))
      yield* settle
      expect(yield* chatHosts).toEqual(["a", "a"])
      yield* TestClock.adjust("10 seconds") // the canary answers: the breaker closes, and the others are sent
      expect(yield* chatHosts).toEqual(["a", "a", "a", "a"])
      yield* TestClock.adjust("10 seconds")
      expect((yield* Effect.forEach(calls, Fiber.join)).map((completion) => completion.id)).toEqual(["cmpl-a", "cmpl-a", "cmpl-a"])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("an account's own breaker options replace the pool's one by one: its threshold, its open period and its canaries", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 4, breaker: { minimumThroughput: 3, openFor: 2000, canaries: 2 } })],
      handlers: { a: status(500) },
      options: { preflight: false, breaker: { minimumThroughput: 1, failureRatio: 0.25, openFor: "30 seconds" } }
    }
    return Effect.gen(function*() {
      for (const _ of [1, 2]) expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      expect(yield* states).toEqual({ a: "serving" }) // the pool's minimumThroughput of 1 would have opened it
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      expect(yield* states).toEqual({ a: "open" })
      setup.handlers.a = healthy("10 seconds")
      yield* TestClock.adjust("2 seconds") // its own open period, not the pool's 30 s
      const calls = yield* Effect.forEach([1, 2, 3], () => Effect.fork(create))
      yield* settle
      expect(countOf(yield* chatHosts, "a")).toBe(5) // three that failed, then its two canaries at once
      yield* TestClock.adjust("10 seconds") // both answer: the breaker closes, and the third is sent
      expect(countOf(yield* chatHosts, "a")).toBe(6)
      yield* TestClock.adjust("10 seconds")
      expect((yield* Effect.forEach(calls, Fiber.join)).map((completion) => completion.id)).toEqual(["cmpl-a", "cmpl-a", "cmpl-a"])
      expect(yield* states).toEqual({ a: "serving" })
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("a call back for its retry waits ahead of the calls that came after it, not behind them", () => {
    const contentOf = (req: MockUpstream.RecordedRequest) => String(bodyOf(req).messages[0]?.content)
    let firstSends = 0
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { provider: "openai-compatible", concurrency: 1 })],
      handlers: {
        a: (req) => contentOf(req) === "first" && firstSends++ === 0 ? status(429)(req) : healthy("1 second")(req)
      }
    }
    const { layer } = stackLayer(setup)
    const ask = (content: string) =>
      Effect.fork(Effect.flatMap(Resilient.Resilient, (client) => client.create({ ...request, messages: [{ role: "user", content }] })))
    const sentContents = Effect.flatMap(MockUpstream.MockUpstream, (upstream) =>
      Effect.map(upstream.requests, (requests) => requests.filter(isChat).map(contentOf)))
    return Effect.gen(function*() {
      const first = yield* ask("first")
      yield* settle
      // "first" met a 429 and backs off; "second" took the permit, and "third" waits for it.
      const later = [yield* ask("second"), yield* ask("third")]
      yield* settle
      for (let second = 0; second < 4; second++) yield* TestClock.adjust("1 second")
      yield* Effect.forEach([first, ...later], Fiber.join)
      expect(yield* sentContents).toEqual(["first", "second", "first", "third"])
    }).pipe(Effect.provide(layer))
  })

  it.effect("calls queued at the fallback go back to a primary as soon as it may serve again", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 1 }), { ...fallbackAccount, concurrency: 1 }],
      handlers: { a: status(500), alt: healthy("1 minute") },
      options: { breaker: { minimumThroughput: 1, failureRatio: 0.25, openFor: "30 seconds" } }
    }
    return Effect.gen(function*() {
      expect((yield* Effect.flip(create))._tag).toBe("ServerError") // a's breaker opens for 30 s
      // The first call holds the fallback's one permit for a minute; two more queue behind it.
      const calls = yield* Effect.forEach([1, 2, 3], () => Effect.fork(create))
      yield* settle
      expect(yield* chatHosts).toEqual(["a", "alt"])
      setup.handlers.a = healthy()
      yield* TestClock.adjust("30 seconds") // a's breaker half-opens: the queued calls move to it
      expect(calls.slice(1).map((call) => call.unsafePoll()?._tag)).toEqual(["Success", "Success"])
      const moved = yield* Effect.forEach(calls.slice(1), Fiber.join)
      expect(moved.map((completion) => completion.id)).toEqual(["cmpl-a", "cmpl-a"])
      expect(calls[0]!.unsafePoll()).toBeNull() // the call the fallback serves keeps its permit
      expect(yield* chatHosts).toEqual(["a", "alt", "a", "a"])
      yield* TestClock.adjust("30 seconds")
      expect((yield* Fiber.join(calls[0]!)).id).toBe("cmpl-alt")
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("a call queued at the fallback goes back to a primary whose rested key returns", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), { ...fallbackAccount, concurrency: 1 }],
      handlers: { a: status(401), alt: healthy("10 minutes") },
      options: { keyCooldown: "1 minute", preflight: false }
    }
    return Effect.gen(function*() {
      // Both calls meet a's only key rejected, and fail over to the fallback: the second waits there.
      const [served, queued] = yield* Effect.forEach([1, 2], () => Effect.fork(create))
      yield* settle
      expect(yield* states).toEqual({ a: "no_keys", alt: "serving" })
      setup.handlers.a = healthy()
      yield* TestClock.adjust("1 minute")
      expect(queued!.unsafePoll()?._tag).toBe("Success")
      expect((yield* Fiber.join(queued!)).id).toBe("cmpl-a")
      expect(served!.unsafePoll()).toBeNull()
      expect(yield* chatHosts).toEqual(["a", "a", "alt", "a"])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("an account whose only key the balance check saw rejected serves again as the key returns, accepted, with no call to ask", () => {
    // The key is rejected once (its account's owner fixed it meanwhile): accepted when asked again.
    let balanceChecks = 0
    const setup: Setup = {
      accounts: [account("a", ["sk-a"])],
      handlers: { a: (req) => isChat(req) ? healthy()(req) : ++balanceChecks === 1 ? status(401)(req) : balance(true) },
      options: { keyCooldown: "1 minute" }
    }
    return Effect.gen(function*() {
      yield* settle
      // Nothing reads the pool's state meanwhile (a snapshot would read it again).
      expect((yield* Effect.flip(create))._tag).toBe("NoAccountAvailable")
      yield* TestClock.adjust("1 minute")
      expect((yield* create).id).toBe("cmpl-a")
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("a call queued while the only primary's balance is checked goes to the fallback once the check finds it out", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), fallbackAccount],
      handlers: {
        a: (req) => isChat(req) ? healthy()(req) : MockUpstream.json({ is_available: false, balance_infos: [] }, { latency: "1 second" }),
        alt: healthy()
      }
    }
    return Effect.gen(function*() {
      const queued = yield* Effect.fork(create)
      yield* settle
      expect(queued.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 second")
      expect(queued.unsafePoll()?._tag).toBe("Success")
      expect((yield* Fiber.join(queued)).id).toBe("cmpl-alt")
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("waits through an open breaker until it half-opens, and gives up after maxWait with every reason", () => {
    const logs: Array<Logged> = []
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"])],
      handlers: { a: (req) => isChat(req) ? status(402)(req) : balance(false), b: status(500) },
      options: {
        preflight: false,
        balanceProbeInterval: "60 seconds",
        breaker: { minimumThroughput: 1, failureRatio: 1, openFor: "20 seconds" }
      }
    }
    return Effect.gen(function*() {
      // a answers 402 (out, probed in 60 s), b 500 (its breaker opens for 20 s).
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      expect(yield* states).toEqual({ a: "out_of_balance", b: "open" })

      // No account may serve for now: a call given 10 s gives up with each reason and the earliest recovery.
      const impatient = yield* Effect.fork(Effect.flip(createWith(request, { maxWait: "10 seconds" })))
      yield* TestClock.adjust("10 seconds")
      const error = yield* Fiber.join(impatient)
      if (error._tag !== "NoAccountAvailable") return expect.fail(`unexpected ${error._tag}`)
      expect(error.retryAfter).toEqual(Option.some(Duration.seconds(10)))
      expect(error.accounts.map((a) => [a.account, a.reason])).toEqual([["a", "out_of_balance"], ["b", "circuit_open"]])
      // Each with its last failure, in the upstream's words: the reader learns what to do.
      expect(error.accounts.map((a) => a.lastFailure?.split(":")[0])).toEqual(["InsufficientBalance", "ServerError"])
      expect(error.message).toContain("a: out_of_balance, out of balance (a 402, or its balance check said so), last failure InsufficientBalance: ")
      expect(ApiError.isRetryable(ApiError.classify(error))).toBe(false)

      // A call with the default maxWait waits until b half-opens, then is served there.
      setup.handlers.b = healthy()
      const patient = yield* Effect.fork(create)
      yield* TestClock.adjust("9 seconds")
      expect(patient.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(patient)).id).toBe("cmpl-b")
      yield* settle
      // What the account's breaker did is said once each: a caller otherwise sees only a wait.
      expect(logs.filter((log) => log.message.includes("circuit breaker"))).toEqual([
        {
          level: "WARN",
          message:
            "AccountPool: account b's circuit breaker opened: its calls go to another account or wait until it half-opens in 20s; its last failure: ServerError: HTTP 500"
        },
        { level: "INFO", message: "AccountPool: account b's circuit breaker closed: serving again" }
      ])
    }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
  })

  it.effect("once a call waited out its maxWait with no account able to serve, a call that would wait as long or less fails at once, until an account serves again", () => {
    const setup = failingAccount("20 minutes")
    return Effect.gen(function*() {
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      expect(yield* states).toEqual({ a: "open" })

      // The first call waits its 10 s out; one given as long or less then fails at once.
      const first = yield* waitFor("10 seconds")
      yield* TestClock.adjust("10 seconds")
      expect((yield* Fiber.join(first))._tag).toBe("NoAccountAvailable")
      const shorter = yield* waitFor("5 seconds")
      const same = yield* waitFor("10 seconds")
      yield* settle
      expect([shorter.unsafePoll(), same.unsafePoll()]).not.toContain(null)
      expect((yield* Fiber.join(shorter))._tag).toBe("NoAccountAvailable")
      expect((yield* Fiber.join(same))._tag).toBe("NoAccountAvailable")

      // A call that may wait longer than any wait that ran out still waits, and is served when the breaker half-opens.
      setup.handlers.a = healthy()
      const patient = yield* Effect.fork(create)
      yield* settle
      expect(patient.unsafePoll()).toBeNull()
      yield* TestClock.adjust("20 minutes")
      expect((yield* Fiber.join(patient)).id).toBe("cmpl-a")

      // Served again: the waits that ran out are forgotten; the next outage's calls wait again.
      setup.handlers.a = status(500)
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      expect(yield* states).toEqual({ a: "open" })
      yield* waitsItsTenSecondsOut
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("an outage goes on through a half-open breaker whose canary fails: the waits that ran out in it still hold, and calls that would wait as long fail at once", () => {
    const setup = failingAccount("20 seconds")
    return Effect.gen(function*() {
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      const first = yield* waitFor("10 seconds")
      yield* TestClock.adjust("10 seconds")
      expect((yield* Fiber.join(first))._tag).toBe("NoAccountAvailable")

      // The breaker half-opens; its canary fails, and it opens again.
      yield* TestClock.adjust("10 seconds")
      expect(yield* states).toEqual({ a: "half_open" })
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      expect(yield* states).toEqual({ a: "open" })
      const next = yield* waitFor("10 seconds")
      yield* settle
      expect(next.unsafePoll()).not.toBeNull()
      expect((yield* Fiber.join(next))._tag).toBe("NoAccountAvailable")

      // A canary that succeeds ends the outage (the second opening lasts twice the first): the
      // next one's calls wait again.
      yield* TestClock.adjust("40 seconds")
      setup.handlers.a = healthy()
      expect((yield* create).id).toBe("cmpl-a")
      setup.handlers.a = status(500)
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      yield* waitsItsTenSecondsOut
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("a call that waited for a busy lane, then saw the account go out just before its maxWait ran out, does not make the next calls fail at once", () => {
    // Two permits: the first call holds one for a minute, the second fails with a 402 after 9 s,
    // which takes the account out 1 s before the waiting call gives up.
    let chats = 0
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 2 })],
      handlers: {
        a: (req) =>
          !isChat(req)
            ? balance(false)
            : ++chats === 1
            ? MockUpstream.completion(generation(req), { latency: "1 minute" })
            : MockUpstream.status(402, { body: errorBody("Insufficient Balance"), latency: "9 seconds" })
      },
      options: { preflight: false, balanceProbeInterval: "1 hour" }
    }
    return Effect.gen(function*() {
      yield* Effect.fork(create)
      yield* Effect.fork(create)
      yield* settle
      const waiting = yield* waitFor("10 seconds")
      yield* TestClock.adjust("9 seconds")
      expect(yield* states).toEqual({ a: "out_of_balance" })
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(waiting))._tag).toBe("NoAccountAvailable")
      // Its wait was mostly for the lane, not the outage: the next call waits its own.
      yield* waitsItsTenSecondsOut
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("a breaker's opening says the failure that opened it, with the account's keys scrubbed whatever their shape; so does the account's status until an answer", () => {
    const logs: Array<Logged> = []
    const key = "Zq81xV3pLmRt4wQe"
    const echo: Handler = () => MockUpstream.status(500, { body: errorBody(`upstream broke while key ${key} was in use`) })
    const setup: Setup = {
      accounts: [account("a", [key])],
      handlers: { a: echo },
      options: { preflight: false, breaker: { minimumThroughput: 1, failureRatio: 1, openFor: "20 seconds" } }
    }
    return Effect.gen(function*() {
      expect((yield* Effect.flip(create))._tag).toBe("ServerError")
      yield* settle
      const opened = logs.filter((log) => log.message.includes("circuit breaker opened")).map((log) => log.message)
      const failure = "ServerError: upstream broke while key *** was in use"
      expect(opened).toEqual([
        // The pool's only account: its calls have nowhere else to go.
        `AccountPool: account a's circuit breaker opened: its calls wait until it half-opens in 20s; its last failure: ${failure}`
      ])
      const lastFailure = Effect.flatMap(AccountPool.AccountPool, (pool) => Effect.map(pool.snapshot, ([a]) => a?.lastFailure))
      expect(yield* lastFailure).toBe(failure)
      // An answer clears it: an opening after that, by another process sharing the breaker, says no cause of ours.
      setup.handlers.a = healthy()
      const answered = yield* Effect.fork(create)
      yield* TestClock.adjust("20 seconds")
      yield* Fiber.join(answered)
      expect(yield* lastFailure).toBeUndefined()
    }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
  })

  /** A lone account whose breaker opens at half of 4 calls failed, for a second, and its warnings of opening. */
  const loneBreaker = () => {
    const logs: Array<Logged> = []
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { breaker: { minimumThroughput: 4, failureRatio: 0.5, openFor: 1000 } })],
      handlers: { a: status(500) },
      options: { preflight: false, breaker: { window: "2 minutes" } }
    }
    const opened = () => logs.filter((log) => log.message.includes("circuit breaker opened")).map((log) => log.message)
    return { logs, opened, setup }
  }

  /** Four calls that fail: `loneBreaker`'s breaker opens. */
  const openLoneBreaker = Effect.gen(function*() {
    for (const _ of [1, 2, 3, 4]) expect((yield* Effect.flip(create))._tag).toBe("ServerError")
    yield* settle
  })

  it.effect("a lone account's breaker opening again says when its options open it: its calls have nowhere else to go", () => {
    const { logs, opened, setup } = loneBreaker()
    return Effect.gen(function*() {
      yield* openLoneBreaker
      const lastFailure = "its last failure: ServerError: HTTP 500"
      expect(opened()).toEqual([`AccountPool: account a's circuit breaker opened: its calls wait until it half-opens in 1s; ${lastFailure}`])
      const canary = yield* Effect.fork(Effect.flip(createWith(request, { maxWait: "1 minute" })))
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(canary))._tag).toBe("ServerError")
      expect(opened()[1]).toBe(
        `AccountPool: account a's circuit breaker opened (2 trips in a row): its calls wait until it half-opens in 2s; ${lastFailure}; ` +
          "it opens at 50 % failed of 4 calls or more in 2m (the account's breaker options; failureRatio 1 opens it only when every call fails)"
      )
    }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
  })

  it.effect("a lone account's breaker opens, by default, only when every call fails: it has nowhere to fail over to; beside another account it opens at a quarter", () => {
    let chats = 0
    const halfFailing: Handler = (request) => isChat(request) ? (chats++ % 2 === 0 ? status(503) : healthy())(request) : status(404)(request)
    const opened = (logs: ReadonlyArray<Logged>) => logs.filter((log) => log.message.includes("circuit breaker opened")).length
    const halfOf = (setup: Setup) => {
      const logs: Array<Logged> = []
      return Effect.gen(function*() {
        // One after another; a call an open breaker holds waits on (the clock stands still), and the next starts.
        for (let i = 0; i < 24; i++) {
          yield* Effect.fork(create)
          yield* settle
        }
        return opened(logs)
      }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
    }
    return Effect.gen(function*() {
      // Half of the calls fail (the upstream sheds them): retried, they all get through, where an
      // open breaker made every call wait out its open period (a batch of 400 lines: 18 s against over 5 minutes).
      expect(yield* halfOf({ accounts: [account("a", ["sk-a"])], handlers: { a: halfFailing }, options: { preflight: false } })).toBe(0)
      chats = 0
      const withFallback: Setup = {
        accounts: [account("a", ["sk-a"]), account("b", ["sk-b"], { fallback: true })],
        handlers: { a: halfFailing, b: healthy() },
        options: { preflight: false }
      }
      expect(yield* halfOf(withFallback)).toBe(1)
    })
  })

  it.effect("a lone account's breaker that opens again soon after it closed (flapping) says when its options open it, and what opens it only when every call fails", () => {
    const { logs, opened, setup } = loneBreaker()
    return Effect.gen(function*() {
      yield* openLoneBreaker
      // The canary answers: closed. Then the upstream fails again within minutes: not "in a row", but a flap.
      setup.handlers.a = healthy()
      const canary = yield* Effect.fork(createWith(request, { maxWait: "1 minute" }))
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(canary)
      setup.handlers.a = status(500)
      yield* TestClock.adjust("30 seconds")
      for (const _ of [1, 2, 3, 4]) yield* Effect.flip(create)
      yield* settle
      expect(opened()).toHaveLength(2)
      expect(opened()[1]).toBe(
        "AccountPool: account a's circuit breaker opened (the 2nd time in 10m): its calls wait until it half-opens in 1s; " +
          "its last failure: ServerError: HTTP 500; it opens at 50 % failed of 4 calls or more in 2m (the account's breaker options; " +
          "failureRatio 1 opens it only when every call fails)"
      )
    }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
  })

  it.effect("a fixed concurrency is a ceiling: 429s lower the lane's limit, not the breaker's state, and it climbs back to it, never above", () => {
    const throttled: Handler = (req) => isChat(req) ? MockUpstream.status(429, { body: errorBody("busy") }) : status(404)(req)
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 8 })],
      handlers: { a: throttled },
      options: { preflight: false, breaker: { minimumThroughput: 2, failureRatio: 0.5, openFor: "30 seconds" } }
    }
    const laneLimit = Effect.map(
      Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot),
      ([a]) => a?.models[0]?.limit
    )
    return Effect.gen(function*() {
      for (const _ of [1, 2, 3, 4]) expect(ApiError.tagOf(yield* Effect.flip(create))).toBe("RateLimited")
      expect(yield* states).toEqual({ a: "serving" })
      expect(yield* laneLimit).toBeLessThan(8)

      setup.handlers.a = healthy("100 millis")
      const calls = yield* Effect.fork(concurrently(300, create))
      for (let round = 0; round < 300 && calls.unsafePoll() === null; round++) yield* TestClock.adjust("100 millis")
      expect(yield* Fiber.join(calls)).toHaveLength(300)
      expect(yield* laneLimit).toBe(8)
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  /**
   * An account whose concurrency cap is `cap`: a call takes its slot as it arrives, its 200 (or
   * 429) reaches the client `latency` later, and it frees the slot `answerMillis()` after it
   * arrived. The highest number of calls it held at once and the 429s it answered.
   */
  const cappedAccount = (clock: Clock.Clock, cap: number, latency: Duration.DurationInput, answerMillis: () => number) => {
    const ends: Array<number> = []
    const seen = { highest: 0, drops: 0 }
    const handler: Handler = (req) => {
      if (!isChat(req)) return MockUpstream.status(404)
      const now = clock.unsafeCurrentTimeMillis()
      const inFlight = ends.filter((end) => end > now).length
      if (inFlight >= cap) {
        seen.drops++
        return MockUpstream.status(429, { body: errorBody("over the account's concurrency"), latency })
      }
      const answer = answerMillis()
      ends.push(now + answer)
      seen.highest = Math.max(seen.highest, inFlight + 1)
      return MockUpstream.completion(generation(req), { delay: `${answer} millis`, latency })
    }
    return { handler, seen }
  }

  /**
   * `count` calls at once through `Resilient` to one adaptive lane on a `cappedAccount`, the clock
   * moved 100 ms at a time until they end: the lane reaches the cap, draws at most an eighth of it
   * in 429s, and takes at most twice the 12 s its calls take at the cap.
   */
  const findsTheCap = (cap: number, count: number, latency: Duration.DurationInput, answerMillis: () => number) => {
    const setup: Setup = { accounts: [account("a", ["sk-a"])], handlers: {}, options: { preflight: false } }
    return Effect.gen(function*() {
      const { handler, seen } = cappedAccount(yield* Effect.clock, cap, latency, answerMillis)
      setup.handlers.a = handler
      const calls = yield* Effect.fork(concurrently(count, resilientCreate))
      let elapsed = 0
      for (; elapsed < 120_000 && calls.unsafePoll() === null; elapsed += 100) yield* TestClock.adjust("100 millis")
      expect(yield* Fiber.join(calls)).toHaveLength(count)
      expect(seen.highest).toBe(cap)
      expect(seen.drops).toBeLessThanOrEqual(cap / 8)
      expect(elapsed).toBeLessThanOrEqual(2 * 12_000)
    }).pipe(Effect.provide(stackLayer(setup).layer))
  }

  // Its 200 (or 429) reaches the client 200 ms after the call took its slot, and its end 200 ms
  // after it freed the slot, 2.9 s on. The first overshoot set the ceiling one above the cap
  // (in-flight counted an end on its way); holding there drew a 429 that read as a fall, and a
  // second climb: 11 429s, 20.9 s.
  it.effect("an adaptive lane finds the account's cap a round trip away, and holds it without reading its own overshoot as a fall", () =>
    findsTheCap(50, 200, "200 millis", () => 2900))

  // Its 200 (or 429) reaches the client 300 ms after the call took its slot. Answers take 2.5-3.5
  // s, so from the first on one ends every few tens of ms, and the call taking its place is on its
  // way until its 200 arrives: some call always is. Counting only the calls accepted and not ended
  // (the pool's `refills` always false), slow start never saw the lane full: it stalled at 44, no
  // 429, 38.9 s. Now: the cap, 8 429s, 22.8 s.
  it.effect("an adaptive lane's slow start counts a call replacing one that ended as held: it reaches the cap though one is always on its way", () => {
    let served = 0
    return findsTheCap(100, 400, "300 millis", () => 2500 + ((served++ * 389) % 1000))
  })

  for (const preflight of [false, true]) {
    it.effect(`fails at once when every key was rejected, saying so once: a wrong key is not waited for (preflight ${preflight})`, () => {
      const setup: Setup = { accounts: [account("a", ["sk-wrong"])], handlers: { a: status(401) }, options: { preflight } }
      const logs: Array<Logged> = []
      return Effect.gen(function*() {
        for (const _ of [1, 2]) {
          const error = yield* Effect.flip(create)
          expect(error).toMatchObject({ _tag: "NoAccountAvailable", accounts: [{ account: "a", reason: "no_keys" }] })
          expect(error.message).toMatch(/^no account can serve \(a: no_keys, every key rejected by the upstream \(401\)(, last failure KeyRejected: HTTP 401)?\); it may serve again in 15m$/)
        }
        // The balance preflight's 401 sets the key aside before any call is sent.
        expect(yield* chatHosts).toEqual(preflight ? [] : ["a"])
        expect(logs.filter(({ level }) => level === "WARN").map(({ message }) => message)).toEqual([
          "AccountPool: account a: the upstream rejected its key#1 (401); it rests 15m, 0 of 1 key usable"
        ])
      }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
    })
  }

  it.effect("tells the Telemetry in its context of each attempt it fails over, never of a call it placed nowhere", () => {
    const { counts, telemetry } = Effect.runSync(Telemetry.makeCounters)
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-wrong"]), account("c", ["sk-c"], { fallback: true })],
      handlers: { a: status(402), b: status(401), c: healthy() },
      options: { preflight: false }
    }
    return Effect.gen(function*() {
      // a's 402 and b's 401 fail over to c: two failed attempts the policy around the pool never sees.
      yield* create
      expect(yield* counts).toMatchObject({ failedAttempts: 2, byTag: { InsufficientBalance: 1, KeyRejected: 1 } })
      // a and b are out now: c answers, and nothing failed.
      yield* create
      expect((yield* counts).failedAttempts).toBe(2)
    }).pipe(Effect.provide(poolLayer(setup).pipe(Layer.provide(Layer.succeed(Telemetry.Telemetry, telemetry)))))
  })

  it.effect("a rejected key among good ones is told, and its calls go on with the others; rejected again after its rest, it is told so", () => {
    const rejecting: Handler = (request) =>
      !isChat(request)
        ? balance(true)
        : request.bearer !== undefined && Redacted.value(request.bearer) === "sk-revoked"
        ? status(401)(request)
        : healthy()(request)
    const setup: Setup = { accounts: [account("a", ["sk-revoked", "sk-good"])], handlers: { a: rejecting } }
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      for (const _ of [1, 2, 3]) yield* create
      yield* TestClock.adjust("15 minutes")
      for (const _ of [1, 2, 3]) yield* create
      expect(logs.filter(({ level }) => level === "WARN").map(({ message }) => message)).toEqual([
        "AccountPool: account a: the upstream rejected its key#1 (401); it rests 15m, 1 of 2 keys usable",
        "AccountPool: account a: the upstream rejected its key#1 again (401; 2 times in all); it rests 15m, 1 of 2 keys usable"
      ])
    }).pipe(Effect.provide(poolLayer(setup)), capturingLogs(logs))
  })

  it.effect("fails over a stream before its first chunk, never after", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"])],
      handlers: { a: status(402), b: healthy() },
      options: { preflight: false }
    }
    return Effect.gen(function*() {
      const first = yield* drain
      expect(first.error).toBeUndefined()
      expect(contentOf(first.chunks)).toBe("hello from b")
      expect(yield* chatHosts).toEqual(["a", "b"])

      // b cuts its stream after two chunks: the caller saw content, so the error is the answer.
      const cut: Handler = (req) =>
        MockUpstream.sse(MockUpstream.events(generation(req), { done: false }).slice(0, 2), { cut: true })
      setup.handlers.b = cut
      const second = yield* drain
      expect(second.chunks.length).toBe(2)
      expect(second.error?._tag).toBe("TransportError")
      expect(yield* chatHosts).toEqual(["a", "b", "b"])
      const ledger = yield* CostLedger.CostLedger
      expect((yield* ledger.snapshot).byAccount["b"]).toMatchObject({ attempts: 2, requests: 2, truncated: 1 })
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("records a call's last failed attempt as its answer (truncated with output, else failed), and only the attempts retried as retry tax", () => {
    let calls = 0
    const cutShort: Handler = (req) => MockUpstream.completion({ ...generation(req), finishReason: "insufficient_system_resource" })
    // A 503, then the work cut short: the 503 was retried, the cut is the answer.
    const setup: Setup = {
      accounts: [account("a", ["sk-a"])],
      handlers: { a: (req) => isChat(req) ? (++calls === 1 ? status(503)(req) : cutShort(req)) : status(404)(req) },
      options: { preflight: false }
    }
    const { layer } = stackLayer(setup, { maxRetries: 1 })
    const totals = Effect.flatMap(CostLedger.CostLedger, (ledger) => Effect.map(ledger.snapshot, (snapshot) => snapshot.total))
    return Effect.gen(function*() {
      const cut = yield* Effect.fork(Effect.flip(resilientCreate))
      yield* TestClock.adjust("1 second")
      expect(yield* Fiber.join(cut)).toMatchObject({ _tag: "InsufficientResource" })
      expect(yield* totals).toMatchObject({ attempts: 2, requests: 1, truncated: 1, retryTax: { attempts: 1, tokens: 0 } })
      // Two 503s: the first retried, the second the call's answer, failed.
      setup.handlers.a = status(503)
      const shed = yield* Effect.fork(Effect.flip(resilientCreate))
      yield* TestClock.adjust("1 second")
      expect(yield* Fiber.join(shed)).toMatchObject({ _tag: "ServerError" })
      expect(yield* totals).toMatchObject({ attempts: 4, requests: 1, truncated: 1, retryTax: { attempts: 2 } })
    }).pipe(Effect.provide(layer))
  })

  it.effect("records every attempt in the ledger per account: kept, and the retry tax of discarded ones", () => {
    const cutShort: Handler = (req) =>
      isChat(req) ? MockUpstream.completion({ ...generation(req), finishReason: "insufficient_system_resource" }) : status(404)(req)
    const setup: Setup = {
      accounts: [account("a", ["sk-a"]), account("b", ["sk-b"]), account("c", ["sk-c"])],
      handlers: { a: cutShort, b: status(402), c: healthy() }
    }
    const { layer } = stackLayer(setup)
    return Effect.gen(function*() {
      // a cuts the work short (billed, discarded, retried); the retry goes to b (402, failed over), then c.
      const call = yield* Effect.fork(resilientCreate)
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(call)).id).toBe("cmpl-c")
      expect(yield* chatHosts).toEqual(["a", "b", "c"])
      const ledger = yield* CostLedger.CostLedger
      const { byAccount, total } = yield* ledger.snapshot
      expect(byAccount["a"]).toMatchObject({
        attempts: 1,
        requests: 0,
        promptTokens: 1000,
        retryTax: { attempts: 1, tokens: 1500 }
      })
      expect(byAccount["b"]).toMatchObject({ attempts: 1, requests: 0, promptTokens: 0 })
      expect(byAccount["c"]).toMatchObject({ attempts: 1, requests: 1, promptTokens: 1000, retryTax: { attempts: 0 } })
      expect(total.costUsd).toBeGreaterThan(0)
      expect(total.requests).toBe(1)
    }).pipe(Effect.provide(layer))
  })

  it.effect("records a stream its caller stops: billed, kept when its usage had come, else truncated and unmetered", () => {
    const setup: Setup = { accounts: [account("a", ["sk-a"])], handlers: { a: healthy() }, options: { preflight: false } }
    return Effect.gen(function*() {
      const pool = yield* AccountPool.AccountPool
      const ledger = yield* CostLedger.CostLedger
      const stream = pool.stream({ ...request, stream: true })
      // Stopped at its usage, before the end of the stream: the whole answer, billed as known.
      yield* Stream.runDrain(Stream.takeUntil(stream, (chunk) => chunk.usage !== undefined && chunk.usage !== null))
      const whole = (yield* ledger.snapshot).total
      expect(whole).toMatchObject({ attempts: 1, requests: 1, promptTokens: 1000, truncated: 0, unmetered: 0 })
      expect(whole.costUsd).toBeGreaterThan(0)
      // Stopped after its first chunk: billed for what no usage tells.
      yield* Stream.runDrain(Stream.take(stream, 1))
      expect((yield* ledger.snapshot).total).toMatchObject({ attempts: 2, requests: 2, truncated: 1, unmetered: 1, costUsd: whole.costUsd })
      const [a] = yield* pool.snapshot
      // Stopped by its caller, neither answered nor failed by the account: counted as such.
      expect(a).toMatchObject({ inFlight: 0, succeeded: 0, failed: 0 })
      const stopped = yield* Metric.value(AccountPool.attemptsCounter.pipe(
        Metric.tagged("account", "a"),
        // The lane's model: the one the alias names.
        Metric.tagged("model", a!.models[0]!.model),
        Metric.tagged("result", "stopped")
      ))
      expect(stopped.count).toBe(2)
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("a stream its caller stops no longer counts as accepted on its lane: the lane's limit does not grow from it", () => {
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: { initial: 4 } })],
      handlers: { a: healthy() },
      options: { preflight: false }
    }
    return Effect.gen(function*() {
      const pool = yield* AccountPool.AccountPool
      for (let i = 0; i < 20; i++) yield* Stream.runDrain(Stream.take(pool.stream({ ...request, stream: true }), 1))
      const [a] = yield* pool.snapshot
      expect(a?.models.map(({ inFlight, limit }) => ({ inFlight, limit }))).toEqual([{ inFlight: 0, limit: 4 }])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("an answer whose usage is no finite count is returned, and its permit freed", () => {
    const answer = '{"id":"cmpl-huge","object":"chat.completion","created":0,"model":"deepseek-v4-flash",' +
      '"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],' +
      '"usage":{"prompt_tokens":1e999,"completion_tokens":1,"total_tokens":1e999}}'
    const setup: Setup = {
      accounts: [account("a", ["sk-a"], { concurrency: 1 })],
      handlers: { a: () => MockUpstream.parts([answer], { headers: { "content-type": "application/json" } }) },
      options: { preflight: false }
    }
    return Effect.gen(function*() {
      expect((yield* create).id).toBe("cmpl-huge")
      expect((yield* create).id).toBe("cmpl-huge")
      const [a] = yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot)
      expect(a).toMatchObject({ inFlight: 0 })
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.effect("a defect while an attempt is accounted for frees its permit", () => {
    const setup: Setup = { accounts: [account("a", ["sk-a"], { concurrency: 1 })], handlers: { a: healthy() }, options: { preflight: false } }
    const dying = Layer.effect(
      CostLedger.CostLedger,
      Effect.map(CostLedger.make(), (ledger) => ({ ...ledger, record: () => Effect.dieMessage("the ledger's bug") }))
    )
    const layer = AccountPool.layer(setup.accounts, setup.options).pipe(
      Layer.provideMerge(Layer.merge(MockUpstream.layer((req) => setup.handlers[hostOf(req)]!(req)), dying))
    )
    return Effect.gen(function*() {
      for (const _ of [1, 2]) {
        const exit = yield* Effect.exit(create)
        expect(exit._tag === "Failure" && Cause.isDie(exit.cause)).toBe(true)
      }
      const [a] = yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot)
      expect(a).toMatchObject({ inFlight: 0 })
    }).pipe(Effect.provide(layer))
  })

  it.effect("dies on a period or cooldown not above zero, each said as written: a negative one decodes to 0", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(Effect.scoped(AccountPool.make([account("a", ["sk-a"])], {
        keyCooldown: "-5 minutes",
        balanceProbeInterval: 0,
        reachProbeInterval: "30 seconds"
      })))
      expect(Exit.isFailure(exit) && Cause.squash(exit.cause)).toMatchObject({
        _tag: "IllegalArgumentException",
        message: "AccountPool: balanceProbeInterval must be a positive duration, got 0; " +
          'keyCooldown must be a positive duration, got "-5 minutes"'
      })
    }).pipe(Effect.provide(Layer.merge(MockUpstream.layer([]), CostLedger.layer()))))

  it.effect("stops at a spent budget with a typed, non-retryable error, sending nothing", () => {
    const setup: Setup = { accounts: [account("a", ["sk-a"])], handlers: { a: healthy() }, ledger: { budgetUsd: 0 } }
    const { counts, layer } = stackLayer(setup)
    return Effect.gen(function*() {
      const error = yield* Effect.flip(resilientCreate)
      expect(error).toMatchObject({ _tag: "BudgetExceeded", spentUsd: 0, budgetUsd: 0 })
      expect(ApiError.isRetryable(ApiError.classify(error))).toBe(false)
      expect((yield* counts).retries).toBe(0)
      expect(yield* chatHosts).toEqual([])
    }).pipe(Effect.provide(layer))
  })

  const outcomeOfCreate = Effect.map(Effect.either(create), (result) => result._tag === "Right" ? "answered" : result.left._tag)
  const outcomeOfStream = Effect.map(drain, ({ error }) => error === undefined ? "answered" : error._tag)
  const outcomes: ReadonlyArray<readonly [string, Effect.Effect<string, never, AccountPool.AccountPool | MockUpstream.MockUpstream>]> = [
    ["completions", outcomeOfCreate],
    ["streams", outcomeOfStream]
  ]
  for (const [kind, outcome] of outcomes) {
    it.effect(`asks the budget again once a call's permit is granted: ${kind} queued before it was spent are not sent`, () => {
      // One call at a time: the first spends the budget while four wait for its permit.
      const setup: Setup = {
        accounts: [account("a", ["sk-a"], { concurrency: 1 })],
        handlers: { a: healthy("1 second") },
        ledger: { budgetUsd: 1e-9 }
      }
      return Effect.gen(function*() {
        const calls = yield* Effect.fork(Effect.all(Array.from({ length: 5 }, () => outcome), { concurrency: "unbounded" }))
        yield* TestClock.adjust("5 seconds")
        // Before, each was asked once, before its wait: all five were sent and billed.
        expect(yield* Fiber.join(calls)).toEqual(["answered", ...Array(4).fill("BudgetExceeded")])
        expect(yield* chatHosts).toEqual(["a"])
        const [a] = yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot)
        expect(a).toMatchObject({ inFlight: 0, state: "serving" })
      }).pipe(Effect.provide(poolLayer(setup)))
    })
  }

  it.effect("an answer naming a model the price table lacks (a dated variant) is priced as the model sent: its cost counts, the budget trips", () => {
    // OpenAI-compatible servers answer with a dated name of the model asked for.
    const dated: Handler = (request) => {
      if (!isChat(request)) return MockUpstream.status(404)
      const answer = { ...generation(request), model: `${bodyOf(request).model}-2026-05-01` }
      return bodyOf(request).stream === true ? MockUpstream.streamed(answer) : MockUpstream.completion(answer)
    }
    const setup: Setup = { accounts: [account("a", ["sk-a"])], handlers: { a: dated }, ledger: { budgetUsd: 1e-9 } }
    return Effect.gen(function*() {
      expect(yield* outcomeOfCreate).toBe("answered")
      expect(yield* outcomeOfStream).toBe("BudgetExceeded")
      const { byModel, total } = yield* Effect.flatMap(CostLedger.CostLedger, (ledger) => ledger.snapshot)
      expect(total.costUsd).toBeGreaterThan(0)
      expect(total.unpriced).toBe(0)
      expect(Object.keys(byModel)).toEqual(["deepseek-v4-flash-2026-05-01"])
    }).pipe(Effect.provide(poolLayer(setup)))
  })

  it.scopedLive("a fallback whose base URL cannot be connected to is told at start, not in the outage it was kept for", () =>
    Effect.gen(function*() {
      const primary = yield* Simulator.make()
      const closed = yield* Effect.promise(() => freePort())
      const logs: Array<Logged> = []
      const accounts = [
        account("main", [Simulator.defaultKey], { baseUrl: primary.baseUrl }),
        account("backup", ["sk-backup-key-0123456789"], { baseUrl: `http://127.0.0.1:${closed}/v1`, fallback: true })
      ]
      const context = yield* Layer.build(AccountPool.layerResilient(accounts).pipe(Layer.provide(CostLedger.layer()))).pipe(
        capturingLogs(logs)
      )
      const reason = `connect ECONNREFUSED 127.0.0.1:${closed}`
      const unreachable = yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.unreachable).pipe(Effect.provide(context))
      expect(unreachable).toEqual([{ account: "backup", origin: `http://127.0.0.1:${closed}`, reason }])
      const warnings = () => logs.filter(({ level }) => level === "WARN").map(({ message }) => message)
      yield* Effect.sleep("100 millis")
      expect(warnings()).toEqual([
        `AccountPool: account backup: cannot connect to http://127.0.0.1:${closed} (${reason}); its calls wait for it, or go to another account, until it can be reached`
      ])
    }))

  it.scopedLive("an origin that refuses connections is unreachable, at start or after a call's connection, until a connection opens again", () =>
    Effect.gen(function*() {
      const upstream = yield* Simulator.make()
      const port = yield* Effect.promise(() => freePort())
      const logs: Array<Logged> = []
      const accounts = [account("relayed", [Simulator.defaultKey], { baseUrl: `http://127.0.0.1:${port}/v1` })]
      const context = yield* Layer.build(
        AccountPool.layerResilient(accounts, { preflight: false, reachProbeInterval: "50 millis" }).pipe(
          Layer.provide(CostLedger.layer())
        )
      ).pipe(capturingLogs(logs))
      const pool = yield* Effect.provide(AccountPool.AccountPool, context)
      const reachable = Effect.map(pool.snapshot, ([status]) => status!.reachable)
      const reachableAgain = Effect.timeout(Effect.repeat(reachable, { until: (ok) => ok, schedule: Schedule.spaced("20 millis") }), "5 seconds")
      const upstreamPort = Number(new URL(upstream.baseUrl).port)

      expect(yield* pool.unreachable).toHaveLength(1)
      expect(yield* reachable).toBe(false)
      // Nothing called it: the pool's own probe finds the origin back.
      const opened = yield* relay(port, upstreamPort)
      yield* reachableAgain
      yield* pool.create(request)

      yield* opened.close
      // The call that meets the refused connection waits for the origin, as for a breaker, rather
      // than failing one retry after another: answered once a connection opens.
      const waiting = yield* Effect.fork(pool.create(request).pipe(capturingLogs(logs)))
      yield* Effect.timeout(Effect.repeat(reachable, { until: (ok) => !ok, schedule: Schedule.spaced("20 millis") }), "5 seconds")
      expect(yield* pool.snapshot).toMatchObject([{ state: "unreachable", failed: 1 }])
      yield* relay(port, upstreamPort)
      yield* reachableAgain
      expect((yield* Effect.timeout(Fiber.join(waiting), "5 seconds")).choices[0]?.message.content).toBeTruthy()
      expect(yield* pool.snapshot).toMatchObject([{ state: "serving", reachable: true }])

      const refused = `cannot connect to http://127.0.0.1:${port} (connect ECONNREFUSED 127.0.0.1:${port}); ` +
        "its calls wait for it, or go to another account, until it can be reached"
      const again = `connected to http://127.0.0.1:${port} again`
      expect(logs.filter(({ message }) => message.startsWith("AccountPool: account relayed:")).map(({ level, message }) => `${level} ${message}`))
        .toEqual([refused, again, refused, again].map((said, i) => `${i % 2 === 0 ? "WARN" : "INFO"} AccountPool: account relayed: ${said}`))
    }))

  // The probe of an origin a call found gone was forked from the attempt's settling, which runs
  // uninterruptibly: so was the probe, and the pool's scope then waited for it for good (a
  // gateway's SIGTERM drained, closed its listener, and never exited).
  it.live("the pool's scope closes at once with the probe of an origin a call found unreachable under way", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(() => freePort())
      const options = { preflight: false, warmUp: 0, reachProbeInterval: "50 millis", retry: { maxRetries: 0 } } as const
      const scope = yield* Scope.make()
      const gone = account("gone", [Simulator.defaultKey], { baseUrl: `http://127.0.0.1:${port}/v1` })
      const context = yield* Layer.buildWithScope(
        AccountPool.layerResilient([gone], options).pipe(Layer.provide(CostLedger.layer())),
        scope
      )
      const pool = yield* Effect.provide(AccountPool.AccountPool, context)
      // The call finds it gone, and waits for it while the probe runs.
      const waiting = yield* Effect.fork(pool.create(request))
      yield* Effect.timeout(Effect.repeat(pool.snapshot, { until: ([s]) => s?.state === "unreachable", schedule: Schedule.spaced("20 millis") }), "5 seconds")
      const closed = yield* Effect.timeout(Effect.disconnect(Scope.close(scope, Exit.void)), "5 seconds").pipe(Effect.option)
      yield* Fiber.interrupt(waiting)
      expect(Option.isSome(closed)).toBe(true)
    }), 15_000)

  it.scopedLive("a breaker that refused connections opened half-opens once a connection opens again, not at the end of its open period", () =>
    Effect.gen(function*() {
      const upstream = yield* Simulator.make()
      const port = yield* Effect.promise(() => freePort())
      const accounts = [account("relayed", [Simulator.defaultKey], { baseUrl: `http://127.0.0.1:${port}/v1` })]
      // No warm-up: the calls find the origin gone, not the start.
      const options = { preflight: false, warmUp: 0, reachProbeInterval: "50 millis", breaker: { minimumThroughput: 2, openFor: "10 minutes" } } as const
      const context = yield* Layer.build(AccountPool.layerResilient(accounts, options).pipe(Layer.provide(CostLedger.layer())))
      const pool = yield* Effect.provide(AccountPool.AccountPool, context)
      const status = Effect.map(pool.snapshot, ([status]) => status!)
      const waitFor = (done: (status: AccountPool.AccountStatus) => boolean) =>
        Effect.timeout(Effect.repeat(status, { until: done, schedule: Schedule.spaced("20 millis") }), "5 seconds")
      // Sent together, both fail to connect: the breaker trips, and both wait for the account.
      const calls = yield* Effect.fork(Effect.all([pool.create({ ...request }), pool.create({ ...request })], { concurrency: "unbounded" }))
      yield* waitFor((status) => status.state === "open")
      expect(yield* status).toMatchObject({ reachable: false, failed: 2 })

      yield* relay(port, Number(new URL(upstream.baseUrl).port))
      const answers = yield* Effect.timeout(Fiber.join(calls), "5 seconds")
      expect(answers).toHaveLength(2)
      expect(yield* status).toMatchObject({ state: "serving", reachable: true, succeeded: 2 })
    }))

  it.scopedLive("a primary whose connections are refused moves each call to the fallback at once, streams too: none fails, none is retried", () =>
    Effect.gen(function*() {
      const backup = yield* Simulator.make()
      const closed = yield* Effect.promise(() => freePort())
      const accounts = [
        account("gone", ["sk-gone-key-0123456789"], { baseUrl: `http://127.0.0.1:${closed}/v1` }),
        account("backup", [Simulator.defaultKey], { baseUrl: backup.baseUrl, fallback: true })
      ]
      const context = yield* Layer.build(AccountPool.layerResilient(accounts).pipe(Layer.provide(CostLedger.layer())))
      const client = yield* Effect.provide(Resilient.Resilient, context)
      // Before, each call was retried on the primary (its breaker saw too few calls to open) and failed.
      const answers = yield* Effect.timeout(
        Effect.all([
          // Three requests of their own: the pool tells a retry by its request.
          client.create({ ...request }),
          client.create({ ...request }),
          Stream.runCollect(client.stream({ ...request }))
        ], { concurrency: "unbounded" }),
        "3 seconds"
      )
      expect(answers[0].choices[0]?.message.content).toBeTruthy()
      expect(answers[2].length).toBeGreaterThan(0)
      expect((yield* backup.stats).completed).toBe(3)
      const [gone, fallback] = yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot).pipe(Effect.provide(context))
      expect(gone).toMatchObject({ failed: 3, retries: 0 })
      // A failover within the attempt: the fallback's send is each request's first, not a retry.
      expect(fallback).toMatchObject({ succeeded: 3, retries: 0 })
    }))

  it.scopedLive("without a warm-up, nothing is found unreachable and nothing is waited for", () =>
    Effect.gen(function*() {
      const closed = yield* Effect.promise(() => freePort())
      const accounts = [account("a", ["sk-a-key-0123456789"], { baseUrl: `http://127.0.0.1:${closed}/v1` })]
      const context = yield* Layer.build(
        AccountPool.layerResilient(accounts, { warmUp: 0, preflight: false }).pipe(Layer.provide(CostLedger.layer()))
      )
      expect(yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.unreachable).pipe(Effect.provide(context))).toEqual([])
    }))

  it.scopedLive("an upstream whose certificate this machine does not trust is told at start with how to trust it, and each call fails at once, with no retry, saying so", () =>
    Effect.gen(function*() {
      const untrusted = yield* selfSignedServer
      const logs: Array<Logged> = []
      const accounts = [account("proxied", ["sk-proxied-key-0123456789"], { baseUrl: untrusted })]
      // Default retries: an outage verdict would retry, then wait for the breaker's half-open for good.
      const context = yield* Layer.build(AccountPool.layerResilient(accounts).pipe(Layer.provide(CostLedger.layer()))).pipe(
        capturingLogs(logs)
      )
      const hint = "self-signed certificate; to trust a private CA (a TLS-inspecting proxy's, say), give its certificate file in NODE_EXTRA_CA_CERTS"
      const warnings = () => logs.filter(({ level }) => level === "WARN").map(({ message }) => message)
      for (let i = 0; i < 100 && warnings().length === 0; i++) yield* Effect.sleep("20 millis")
      expect(warnings()).toEqual([`AccountPool: account proxied: cannot connect to ${untrusted} (${hint}); its calls fail at once until the certificate is trusted`])
      const error = yield* Effect.flip(Effect.flatMap(Resilient.Resilient, (client) => client.create(request)).pipe(Effect.provide(context)))
      expect(error).toMatchObject({ _tag: "TransportError", message: `request failed before a response arrived: ${hint}` })
      expect(ApiError.classify(error)._tag).toBe("Account")
      const [proxied] = yield* Effect.flatMap(AccountPool.AccountPool, (pool) => pool.snapshot).pipe(Effect.provide(context))
      expect(proxied).toMatchObject({ failed: 1, retries: 0 })
    }), { timeout: 10_000 })

  it.scopedLive("keeps each account of a loopback server within its own limit; a second server is the fallback", () =>
    Effect.gen(function*() {
      const primary = yield* Simulator.make({
        accounts: { a: { keys: ["sk-sim-a"], limit: 3 }, b: { keys: ["sk-sim-b"], limit: 3 } },
        queueDelay: "20 millis"
      })
      const secondary = yield* Simulator.make({ accounts: { alt: { keys: ["sk-sim-alt"] } } })
      const accounts = [
        account("a", ["sk-sim-a"], { baseUrl: primary.baseUrl, concurrency: 3 }),
        account("b", ["sk-sim-b"], { baseUrl: primary.baseUrl, concurrency: 3 }),
        account("alt", ["sk-sim-alt"], { baseUrl: secondary.baseUrl, fallback: true })
      ]
      const context = yield* Layer.build(
        AccountPool.layerResilient(accounts).pipe(Layer.provide(CostLedger.layer()))
      )
      const client = Effect.provide(Resilient.Resilient, context)
      const pool = Effect.provide(AccountPool.AccountPool, context)
      const ask = (i: number) =>
        Effect.flatMap(client, (c) => c.create({ ...request, messages: [{ role: "user", content: `m${i}` }] }))

      const answers = yield* Effect.forEach(Array.from({ length: 12 }, (_, i) => i), ask, { concurrency: "unbounded" })
      expect(answers.map((a) => a.choices[0]?.message.content)).toEqual(answers.map((_, i) => `echo:m${i}`))
      const stats = yield* primary.stats
      // Both accounts filled (the first six calls take three each; the rest go where a permit frees
      // first, so the split of the others follows the answers' timing), never over an account's
      // limit: the server never had to refuse one.
      expect((stats.accounts.a?.requests ?? 0) + (stats.accounts.b?.requests ?? 0)).toBe(12)
      for (const name of ["a", "b"]) {
        expect(stats.accounts[name]?.requests).toBeGreaterThanOrEqual(3)
        expect(stats.accounts[name]).toMatchObject({ rateLimited: 0 })
        expect(stats.accounts[name]?.maxInFlight).toBeLessThanOrEqual(3)
      }
      expect((yield* secondary.stats).requests).toBe(0)

      yield* primary.setBalance("a", 0)
      yield* primary.setBalance("b", 0)
      expect((yield* ask(12)).choices[0]?.message.content).toBe("echo:m12")
      expect((yield* secondary.stats).requests).toBe(1)
      const snapshot = yield* Effect.flatMap(pool, (p) => p.snapshot)
      expect(snapshot.map((s) => [s.name, s.state])).toEqual([
        ["a", "out_of_balance"],
        ["b", "out_of_balance"],
        ["alt", "serving"]
      ])
      // The pool the client runs on is the one `AccountPool` shows: 12 calls, then a and b failed over.
      expect(snapshot.map((s) => s.calls).reduce((x, y) => x + y)).toBe(15)
    }).pipe(Effect.timeout("20 seconds")))

  it.effect("layerResilientOverHttpClient runs the whole stack over the context's HttpClient: a 429's retry waits for the lane, uncharged", () =>
    Effect.gen(function*() {
      let chats = 0
      const upstream = MockUpstream.layer((req) =>
        pathOf(req) === "/user/balance" ? balance(true) : ++chats === 1 ? MockUpstream.status(429, { headers: { "retry-after": "2" } }) : healthy()(req)
      )
      const client = AccountPool.layerResilientOverHttpClient([account("a", ["sk-a"])], {
        retryBudget: { ratio: 0, minRetriesPerSecond: 0 },
        budgetWait: 0
      }).pipe(
        Layer.provideMerge(upstream),
        Layer.provide(CostLedger.layer())
      )
      yield* Effect.gen(function*() {
        const answer = yield* Effect.fork(resilientCreate)
        yield* TestClock.adjust("1999 millis")
        expect(yield* Fiber.poll(answer)).toEqual(Option.none())
        yield* TestClock.adjust("1 millis")
        expect((yield* Fiber.join(answer)).choices[0]?.message.content).toBe("hello from a")
        const mock = yield* MockUpstream.MockUpstream
        expect((yield* mock.requests).map(pathOf)).toEqual(["/user/balance", "/chat/completions", "/chat/completions"])
      }).pipe(Effect.provide(client))
    }))
})

describe("AccountPool: answers of another model than the one asked for", () => {
  it.effect("are not stored by the response cache: after the outage, the same request is the primary's again, stream or not", () => {
    const handlers: Record<string, Handler> = { a: status(500), alt: healthy() }
    const upstream = MockUpstream.layer((req) => handlers[hostOf(req)]!(req))
    const client = AccountPool.layerResilientOverHttpClient([account("a", ["sk-a"]), fallbackAccount], {
      preflight: false,
      breaker: { minimumThroughput: 1, failureRatio: 0.1, openFor: "30 seconds" },
      retry: { maxRetries: 3, base: "10 millis" }
    }).pipe(Layer.provide(ResponseCache.layerMemory()), Layer.provideMerge(upstream), Layer.provide(CostLedger.layer()))
    const deterministic = { ...request, temperature: 0 }
    const ask = Effect.flatMap(Resilient.Resilient, (resilient) =>
      Effect.zip(
        Effect.map(resilient.create(deterministic), (completion) => completion.model),
        Effect.map(Stream.runCollect(resilient.stream(deterministic)), (chunks) => Chunk.unsafeHead(chunks).model)
      ))
    return Effect.gen(function*() {
      const during = yield* Effect.fork(ask)
      yield* TestClock.adjust("1 second")
      expect(yield* Fiber.join(during)).toEqual(["other-model", "other-model"])
      handlers.a = healthy()
      yield* TestClock.adjust("31 seconds")
      expect(yield* ask).toEqual(["deepseek-v4-flash", "deepseek-v4-flash"])
      // The primary's own answer is stored: asked again, nothing is sent.
      const sent = Effect.flatMap(MockUpstream.MockUpstream, (mock) => Effect.map(mock.requests, (requests) => requests.length))
      const before = yield* sent
      expect(yield* ask).toEqual(["deepseek-v4-flash", "deepseek-v4-flash"])
      expect(yield* sent).toBe(before)
    }).pipe(Effect.provide(client))
  })
})

describe("AccountPool: 429s a lone request meets", () => {
  it.scopedLive("are charged to the retry budget: a lane at one request in flight cannot pace them", () =>
    Effect.gen(function*() {
      // An upstream that refuses every request, however few are in flight (an account-wide rate
      // limit, say): lowering the lane's limit cannot stop the 429s, so nothing but the budget paces them.
      const simulator = yield* Simulator.make({ limit: 0 })
      const context = yield* Layer.build(
        AccountPool.layerResilient([account("a", [Simulator.defaultKey], { baseUrl: simulator.baseUrl, concurrency: 1 })], {
          retry: { maxRetries: 10, base: "1 millis", cap: "2 millis" },
          // A budget that allows no retry, refused at once.
          retryBudget: { ratio: 0, minRetriesPerSecond: 0 },
          budgetWait: "0 millis"
        }).pipe(Layer.provide(CostLedger.layer()))
      )
      const client = yield* Effect.provide(Resilient.Resilient, context)
      const error = yield* Effect.flip(client.create(request))
      expect(error._tag).toBe("RateLimited")
      // One attempt, its retry refused by the budget (it made 1 + 10, 0 ms apart on average).
      expect((yield* simulator.stats).requests).toBe(1)
    }))
})
