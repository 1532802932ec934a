/**
 * `GET /metrics` as Prometheus scrapes it, OTLP traces, and upstream keys: never in an answer,
 * a header, a metric, a span or a log line.
 */
import { describe, expect, it, vi } from "@effect/vitest"
import * as OtelApi from "@opentelemetry/api"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as Exit from "effect/Exit"
import * as Gateway from "../app/gateway/server.js"
import * as Telemetry from "../app/gateway/telemetry.js"
import { CostLedger, defaultPricing } from "../src/CostLedger.js"
import * as Simulator from "../src/Simulator.js"
import * as Wire from "../src/internal/wire.js"
import { account, attempt, collect, openai, rawText, startGateway, upstreamLayer } from "./support/gateway.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { rawServer, reply } from "./support/rawServer.js"
import type { Handler } from "./support/rawServer.js"

/** Sets `env` in `process.env` for the scope (the OpenTelemetry exporters read it as they are made). */
const scopedEnv = (env: Record<string, string>) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const previous = Object.fromEntries(Object.keys(env).map((name) => [name, process.env[name]]))
      Object.assign(process.env, env)
      return previous
    }),
    (previous) =>
      Effect.sync(() => {
        for (const [name, value] of Object.entries(previous)) {
          if (value === undefined) delete process.env[name]
          else process.env[name] = value
        }
      })
  )

/** A context manager that carries a context into a synchronous callback, as an instrumented process's does. */
class StackContextManager implements OtelApi.ContextManager {
  private current: OtelApi.Context = OtelApi.ROOT_CONTEXT
  active(): OtelApi.Context {
    return this.current
  }
  with<A extends Array<unknown>, F extends (...args: A) => ReturnType<F>>(
    context: OtelApi.Context,
    fn: F,
    thisArg?: ThisParameterType<F>,
    ...args: A
  ): ReturnType<F> {
    const before = this.current
    this.current = context
    try {
      return fn.call(thisArg, ...args)
    } finally {
      this.current = before
    }
  }
  bind<T>(_context: OtelApi.Context, target: T): T {
    return target
  }
  enable(): this {
    return this
  }
  disable(): this {
    this.current = OtelApi.ROOT_CONTEXT
    return this
  }
}

const model = "deepseek-v4-flash"
/** The model the default pricing table's alias `model` names. */
const laneModel = "deepseek-flash"
const ask = (content: string) => [{ role: "user" as const, content }]

/** A sample line of the Prometheus text format: a name, optional labels, a value. */
const sampleLine = /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|[+-]Inf|NaN)$/

const scrape = (url: string) =>
  attempt(async () => {
    const response = await fetch(`${url}/metrics`)
    return { contentType: response.headers.get("content-type"), text: await response.text() }
  })

/** The gateway's count of requests answered 200. */
const ok200 = "weatherproof_gateway_requests_total{status=\"200\",outcome=\"ok\"}"
/** The gateway's count of requests whose 200 was committed and that ended in an upstream's failure. */
const failedLate = "weatherproof_gateway_requests_total{status=\"200\",outcome=\"server_error\"}"
/** The gateway's count of requests whose client left before their answer. */
const clientClosed = "weatherproof_gateway_requests_total{status=\"499\",outcome=\"client_closed\"}"

/** The value of the series `name{labels}` exactly as written. */
const valueOf = (text: string, series: string): number | undefined => {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

describe("weatherproof serve, metrics and traces", () => {
  it.scopedLive("/metrics is Prometheus text with series per (account, model) and the gateway's own", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({
        accounts: { a: { keys: ["sk-sim-account-a"] }, b: { keys: ["sk-sim-account-b"] } },
        cacheHitRatio: 0.25
      })
      const gateway = yield* startGateway([
        account("a", sim.baseUrl, ["sk-sim-account-a"]),
        account("b", sim.baseUrl, ["sk-sim-account-b"], { models: { "deepseek-v4-flash": "deepseek-v4-pro" } })
      ])
      const client = openai(gateway.url)
      const call = (i: number): Effect.Effect<unknown, unknown> =>
        i % 3 === 0
          ? Effect.flatMap(attempt(() => client.chat.completions.create({ model, messages: ask(`q${i}`), stream: true })), collect)
          : attempt(() =>
            client.chat.completions.create({ model, messages: ask(`question number ${i}`), ...{ thinking: { type: "enabled" } } })
          )
      // The metrics are the process's: count this test's answers from a reading before them.
      const answeredBefore = valueOf((yield* scrape(gateway.url)).text, ok200) ?? 0
      yield* Effect.forEach(Array.from({ length: 12 }, (_, i) => i), call, { concurrency: 4, discard: true })

      const { contentType, text } = yield* scrape(gateway.url)
      expect(contentType).toBe("text/plain; version=0.0.4; charset=utf-8")
      for (const line of text.split("\n").filter((l) => l.length > 0 && !l.startsWith("#"))) {
        expect(line).toMatch(sampleLine)
      }
      // Per (account, model): tokens by kind and cost, under the model each account was sent.
      const lanes = { "deepseek-v4-flash": laneModel, "deepseek-v4-pro": "deepseek-v4-pro" }
      for (const [name, sent] of [["a", "deepseek-v4-flash"], ["b", "deepseek-v4-pro"]] as const) {
        for (const kind of ["prompt_cache_hit", "prompt_cache_miss", "completion", "reasoning"]) {
          expect(valueOf(text, `weatherproof_tokens_total{account="${name}",model="${sent}",kind="${kind}"}`)).toBeGreaterThan(0)
        }
        expect(valueOf(text, `weatherproof_cost_usd_total{account="${name}",model="${sent}"}`)).toBeGreaterThan(0)
        // Each account's lane for the requested model: the lane of the model it is sent, an alias
        // that of the model it names (one cap upstream). Its limit, in flight, attempts and durations.
        const lane = `account="${name}",model="${lanes[sent]}"`
        expect(valueOf(text, `weatherproof_concurrency_limit{${lane}}`)).toBeGreaterThan(0)
        expect(valueOf(text, `weatherproof_concurrency_in_flight{${lane}}`)).toBe(0)
        expect(valueOf(text, `weatherproof_account_pool_attempts_total{${lane},result="ok"}`)).toBeGreaterThan(0)
        expect(text).toMatch(new RegExp(`^weatherproof_account_pool_attempt_duration_seconds_bucket\\{${lane},le="\\+Inf"\\} \\d+$`, "m"))
        expect(valueOf(text, `weatherproof_circuit_breaker_state{circuit_breaker="${name}"}`)).toBe(0)
      }
      expect(valueOf(text, `weatherproof_account_pool_queued{model="${laneModel}"}`)).toBe(0)
      expect(text).toContain("# TYPE weatherproof_tokens_total counter")
      expect(text).toContain("# TYPE weatherproof_cost_usd_total counter")
      // Units as their names say (Effect's producer said "1" of all): none for a count.
      expect(text).toContain("# UNIT weatherproof_account_pool_attempt_duration_seconds s")
      expect(text).toContain("# UNIT weatherproof_cost_usd_total {USD}")
      expect(text).toContain("# UNIT weatherproof_tokens_total {token}")
      expect(text).not.toMatch(/^# UNIT \S+ 1$/m)
      expect(text).toMatch(/^weatherproof_call_duration_seconds_bucket\{[^}]*le="\+Inf"\} \d+$/m)
      // The gateway's own.
      // Each answer counted once, streams and completions alike.
      expect(valueOf(text, ok200)).toBe(answeredBefore + 12)
      expect(valueOf(text, "weatherproof_gateway_clients_waiting")).toBe(0)
      expect(valueOf(text, "weatherproof_gateway_requests_in_flight")).toBe(0)
      expect(valueOf(text, "weatherproof_gateway_keep_alives_total")).toBeGreaterThanOrEqual(0)
      expect(valueOf(text, "weatherproof_gateway_streams_cut_total")).toBeGreaterThanOrEqual(0)
      expect(text).not.toContain("sk-sim-account")
      // Effect's per-fiber series are off in the gateway: none is exported, frozen or not.
      expect(text).not.toMatch(/^(# TYPE )?effect_fiber_/m)
    }))

  it.scopedLive("the first scrape has every lane's gauges and the main counters, at their start values, for every model each account serves", () =>
    Effect.gen(function*() {
      // Names no other test uses: the metrics are the process's.
      const names = ["first-scrape-a", "first-scrape-b"]
      const sim = yield* Simulator.make({ accounts: Object.fromEntries(names.map((name) => [name, { keys: [`sk-sim-${name}`] }])) })
      const gateway = yield* startGateway([
        account(names[0]!, sim.baseUrl, [`sk-sim-${names[0]}`]),
        account(names[1]!, sim.baseUrl, [`sk-sim-${names[1]}`], { models: { "house-model": "deepseek-v4-pro" } })
      ])
      const { text } = yield* scrape(gateway.url)
      const listed = (yield* attempt(() => openai(gateway.url).models.list())).data.map((m) => m.id)
      expect(listed).toContain("house-model")
      // An alias's calls go to the lane of the model it names.
      const lanes = new Set(listed.map((model) => defaultPricing.aliases?.[model] ?? model))
      // The first account does not serve the model only the second one's map names; the second
      // sends it as pro, on its pro lane: no lane of that name on either.
      for (const name of names) expect(text).not.toContain(`account="${name}",model="house-model"`)
      for (const name of names) {
        for (const model of lanes) {
          if (model === "house-model") continue
          const lane = `account="${name}",model="${model}"`
          expect(valueOf(text, `weatherproof_concurrency_limit{${lane}}`), lane).toBeGreaterThan(0)
          expect(valueOf(text, `weatherproof_concurrency_in_flight{${lane}}`), lane).toBe(0)
          expect(valueOf(text, `weatherproof_concurrency_dropped_total{${lane}}`), lane).toBe(0)
          expect(valueOf(text, `weatherproof_account_pool_retries_total{${lane}}`), lane).toBe(0)
          for (const result of ["ok", "RateLimited"]) {
            expect(valueOf(text, `weatherproof_account_pool_attempts_total{${lane},result="${result}"}`), lane).toBe(0)
          }
        }
        expect(valueOf(text, `weatherproof_circuit_breaker_state{circuit_breaker="${name}"}`)).toBe(0)
        expect(valueOf(text, `weatherproof_circuit_breaker_trips_total{circuit_breaker="${name}"}`)).toBe(0)
      }
      for (const model of lanes) expect(valueOf(text, `weatherproof_account_pool_queued{model="${model}"}`), model).toBe(0)
      const totals = [
        "weatherproof_calls_total",
        "weatherproof_retries_total",
        "weatherproof_retry_budget_refused_total",
        "weatherproof_retry_budget_refunded_total"
      ]
      for (const series of [ok200, failedLate, clientClosed, ...totals]) {
        expect(valueOf(text, series), series).toBeGreaterThanOrEqual(0)
      }
      // The series came before the lanes: the status lists none until a call makes them.
      const pool = yield* gateway.pool.snapshot
      expect(pool.flatMap((status) => status.models)).toEqual([])
    }))

  it.scopedLive("each account's state, reachability and keys, and whether the gateway is ready, are gauges", () =>
    Effect.gen(function*() {
      const names = ["state-a", "state-b"]
      const sim = yield* Simulator.make({ accounts: Object.fromEntries(names.map((name) => [name, { keys: [`sk-sim-${name}`] }])) })
      // state-b's second key is one its upstream does not know: rejected by the start's balance check.
      const keysOf = (name: string) => name === "state-b" ? [`sk-sim-${name}`, "sk-sim-revoked"] : [`sk-sim-${name}`]
      const gateway = yield* startGateway(names.map((name) => account(name, sim.baseUrl, keysOf(name))), {
        statusInterval: "50 millis"
      })
      const state = (name: string, value: string) => `weatherproof_gateway_account_state{account="${name}",state="${value}"}`
      // Serving once the accounts' balance checks are in.
      const first = yield* Effect.map(scrape(gateway.url), ({ text }) => text).pipe(
        Effect.filterOrFail((text) => names.every((name) => valueOf(text, state(name, "serving")) === 1)),
        Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 100 })
      )
      for (const name of names) {
        expect(valueOf(first, state(name, "checking_balance"))).toBe(0)
        expect(valueOf(first, state(name, "serving"))).toBe(1)
        expect(valueOf(first, state(name, "out_of_balance"))).toBe(0)
        expect(valueOf(first, `weatherproof_gateway_account_reachable{account="${name}"}`)).toBe(1)
      }
      expect(valueOf(first, "weatherproof_gateway_ready")).toBe(1)
      const keys = (text: string, name: string) =>
        ["usable", "resting"].map((kind) => valueOf(text, `weatherproof_gateway_account_keys_${kind}{account="${name}"}`))
      expect(keys(first, "state-b")).toEqual([1, 1])
      yield* sim.setBalance("state-a", 0)
      const client = openai(gateway.url)
      yield* Effect.forEach([1, 2, 3, 4], (i) =>
        attempt(() => client.chat.completions.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: `q${i}` }] })))
      const text = yield* Effect.map(scrape(gateway.url), ({ text }) => text).pipe(
        Effect.filterOrFail((text) => valueOf(text, state("state-a", "out_of_balance")) === 1),
        Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 100 })
      )
      expect(valueOf(text, state("state-a", "serving"))).toBe(0)
      expect(valueOf(text, state("state-b", "serving"))).toBe(1)
      expect(valueOf(text, "weatherproof_gateway_ready")).toBe(1)
      expect(keys(text, "state-a")).toEqual([1, 0])
      expect(keys(text, "state-b")).toEqual([1, 1])
      // Counted once: no call met the key it set aside.
      expect(valueOf(text, `weatherproof_account_keys_rejected_total{account="state-b"}`)).toBe(1)
    }))

  it.scopedLive("an attempt cut in transit before its usage arrived is counted unmetered, on /metrics and the status page's feed", () =>
    Effect.gen(function*() {
      // The first accepted request's body is cut half-way; the retry answers.
      const sim = yield* Simulator.make({ accounts: { cut: { keys: ["sk-sim-account-cut"] } }, faults: { script: ["cut"] } })
      const gateway = yield* startGateway([account("cut", sim.baseUrl, ["sk-sim-account-cut"])])
      const answer = yield* attempt(() => openai(gateway.url).chat.completions.create({ model, messages: ask("cut me") }))
      expect(answer.choices[0]?.message.content).toBe("echo:cut me")
      const { text } = yield* scrape(gateway.url)
      expect(valueOf(text, `weatherproof_unmetered_attempts_total{account="cut",model="${model}"}`)).toBe(1)
      // The page's samples are taken every second: the next one has it.
      const lastSample = attempt(async () => ((await (await fetch(`${gateway.url}/status.json`)).json()).samples.at(-1)))
      const sampled = yield* lastSample.pipe(
        Effect.filterOrFail((sample) => sample?.models.some((m: { account: string }) => m.account === "cut")),
        Effect.retry(Schedule.intersect(Schedule.spaced("100 millis"), Schedule.recurs(50)))
      )
      expect(sampled.models).toContainEqual(expect.objectContaining({ account: "cut", model, unmetered: 1 }))
    }))

  it.scopedLive("a request whose client disconnected before its answer counts as client_closed, a completion's and a stream's", () =>
    Effect.gen(function*() {
      /** Holds the request until the gateway gives it up; a stream's first content goes out first. */
      const hold = (firstContent: boolean): Handler => async (_, response) => {
        if (firstContent) {
          response.writeHead(200, { "content-type": "text/event-stream" })
          response.write(Wire.sseData(Wire.chunks({ id: "x", model, content: "first words", usage: Wire.usage({ promptTokens: 1, completionTokens: 1 }) })[1]))
        }
        await new Promise((resolve) => response.on("close", resolve))
      }
      const upstream = yield* rawServer([hold(false), hold(true)])
      const gateway = yield* startGateway([account("closing", upstream.url, ["sk-closing"])], { pool: { retry: { maxRetries: 0 } } })
      const counts = Effect.map(scrape(gateway.url), ({ text }) => ({ closed: valueOf(text, clientClosed) ?? 0, ok: valueOf(text, ok200) ?? 0 }))
      const before = yield* counts
      const received = (n: number) =>
        Effect.repeat(Effect.sync(() => upstream.received().length), { until: (seen) => seen >= n, schedule: Schedule.spaced("10 millis") })
      /** Sends `body`, waits for `ready` (the upstream has it, or its first content arrived), then leaves. */
      const leave = (body: object, ready: (response: Promise<Response>) => Effect.Effect<unknown, unknown>) =>
        Effect.gen(function*() {
          const controller = new AbortController()
          const response = fetch(`${gateway.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify(body),
            signal: controller.signal
          })
          response.catch(() => {})
          yield* ready(response)
          controller.abort()
        })
      const closedBy = (n: number) =>
        Effect.repeat(Effect.zipLeft(counts, Effect.sleep("20 millis")), { until: ({ closed }) => closed >= before.closed + n }).pipe(
          Effect.timeout("5 seconds")
        )
      // A completion: the client leaves while the upstream holds it.
      yield* leave({ model, messages: ask("left") }, () => received(1))
      yield* closedBy(1)
      // A stream: the client leaves after its first content.
      yield* leave({ model, messages: ask("left mid-stream"), stream: true }, (response) =>
        attempt(() => response.then((r) => r.body!.getReader().read())))
      const after = yield* closedBy(2)
      expect(after).toEqual({ closed: before.closed + 2, ok: before.ok })
    }))

  it.scopedLive("a failure told after the 200 was committed counts as that failure, and a client that left a late stream as client_closed", () =>
    Effect.gen(function*() {
      type Reply = (response: Parameters<Handler>[1]) => Promise<void>
      /** `reply`, after the gateway's keep-alive interval: its 200 is committed by then. */
      const late = (reply: Reply): Handler => async (_, response) => {
        await new Promise((resolve) => setTimeout(resolve, 150))
        await reply(response)
      }
      const firstWords = Wire.sseData(
        // Its first content (the chunk before, a role alone, is held back until content comes).
        Wire.chunks({ id: "x", model, content: "first words", usage: Wire.usage({ promptTokens: 1, completionTokens: 1 }) })[1]
      )
      const unavailable: Reply = async (response) => {
        response.writeHead(503, { "content-type": "application/json" })
        response.end(Wire.errorBody("overloaded", "server_error"))
      }
      const cutAfterFirstWords: Reply = async (response) => {
        response.writeHead(200, { "content-type": "text/event-stream" })
        response.end(firstWords)
      }
      const heldAfterFirstWords: Reply = async (response) => {
        response.writeHead(200, { "content-type": "text/event-stream" })
        response.write(firstWords)
        await new Promise((resolve) => response.on("close", resolve))
      }
      const upstream = yield* rawServer([
        late(unavailable), // a completion that fails after its keep-alives
        late(unavailable), // a stream that fails after its keep-alives
        late(cutAfterFirstWords), // a late stream cut after its first content
        (_, response) => cutAfterFirstWords(response), // a stream cut after its first content, within the interval
        late(heldAfterFirstWords) // a late stream its client leaves
      ])
      const gateway = yield* startGateway([account("late", upstream.url, ["sk-late"])], {
        pool: { retry: { maxRetries: 0 } },
        keepAliveInterval: "50 millis"
      })
      const counts = Effect.map(scrape(gateway.url), ({ text }) => ({
        ok: valueOf(text, ok200) ?? 0,
        failedLate: valueOf(text, failedLate) ?? 0,
        closed: valueOf(text, clientClosed) ?? 0
      }))
      const before = yield* counts
      const send = (stream: boolean) =>
        attempt(() =>
          fetch(`${gateway.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ model, messages: ask("late"), stream })
          }).then(async (response) => ({ status: response.status, body: await response.text() }))
        )
      for (const stream of [false, true, true, true]) {
        const answer = yield* send(stream)
        expect(answer.status).toBe(200)
        expect(answer.body).toContain("error")
      }
      // A late stream whose client leaves after its first content.
      yield* attempt(async () => {
        const controller = new AbortController()
        const response = await fetch(`${gateway.url}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model, messages: ask("leaving"), stream: true }),
          signal: controller.signal
        })
        const reader = response.body!.getReader()
        for (let text = ""; !text.includes("data: {");) {
          const { done, value } = await reader.read()
          if (done) throw new Error(`the stream ended before its first content: ${text}`)
          text += new TextDecoder().decode(value)
        }
        controller.abort()
      })
      const after = yield* Effect.repeat(Effect.zipLeft(counts, Effect.sleep("20 millis")), {
        until: ({ closed }) => closed > before.closed
      }).pipe(Effect.timeout("3 seconds"), Effect.orElse(() => counts))
      expect(after).toEqual({ ok: before.ok, failedLate: before.failedLate + 4, closed: before.closed + 1 })
    }))

  it.scopedLive("no upstream key leaves the process: not in answers, headers, metrics, the page, its feed or logs, even when the upstream echoes it", () =>
    Effect.gen(function*() {
      const secret = "Zq81xV3pLm-key-9TrW4aaQ"
      const echo = (status: number): Handler => async (_, response) => {
        response.writeHead(status, { "content-type": "application/json", "x-upstream-echo": secret })
        response.end(Wire.errorBody(`key ${secret} is not valid here`, "invalid_request_error", secret))
      }
      const streamEcho: Handler = async (_, response) => {
        response.writeHead(200, { "content-type": "text/event-stream" })
        response.write(Wire.sseData(Wire.chunks({ id: "x", model, content: "first words", usage: Wire.usage({ promptTokens: 1, completionTokens: 1 }) })[1]))
        response.end(Wire.sseData({ error: { message: `failure for ${secret}`, type: "server_error", code: secret } }))
      }
      // The 401 comes last: it takes the only key out of service.
      const upstream = yield* rawServer([streamEcho, echo(400), echo(401)])
      const logs: Array<string> = []
      const logger = Logger.make(({ message }) => logs.push(String(message)))
      const gateway = yield* startGateway([account("a", upstream.url, [secret])], {
        pool: { retry: { maxRetries: 0 } },
        statusInterval: "50 millis"
      }).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, logger))
      )
      const seen: Array<string> = []
      const record = (url: string, body: unknown) =>
        attempt(async () => {
          const response = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
          const headers: Array<string> = []
          response.headers.forEach((value, name) => headers.push(`${name}: ${value}`))
          seen.push(headers.join("\n"), await response.text())
        })
      yield* record(`${gateway.url}/v1/chat/completions`, { model, messages: ask("c"), stream: true })
      yield* record(`${gateway.url}/v1/chat/completions`, { model, messages: ask("a") })
      yield* record(`${gateway.url}/v1/chat/completions`, { model, messages: ask("b") })
      seen.push((yield* scrape(gateway.url)).text)
      seen.push(yield* rawText(`${gateway.url}/v1/chat/completions`, { model, messages: ask("d") }))
      for (const path of ["/", "/status.json", "/readyz", "/v1/models"]) {
        seen.push(yield* attempt(() => fetch(`${gateway.url}${path}`).then((response) => response.text())))
      }
      seen.push(yield* attempt(async () => {
        const controller = new AbortController()
        const response = await fetch(`${gateway.url}/status/events`, { signal: controller.signal })
        const reader = response.body!.getReader()
        const { value } = await reader.read()
        controller.abort()
        return new TextDecoder().decode(value)
      }))
      for (const text of [...seen, ...logs]) expect(text).not.toContain(secret)
      expect(seen.join("\n")).toMatch(/key \*+ is not valid here/)
      expect(seen.join("\n")).toMatch(/failure for \*+/)
    }))

  it.scopedLive("with OTEL_EXPORTER_OTLP_ENDPOINT, spans go out over OTLP: the server's and the client's, keys redacted, under OTEL_SERVICE_NAME", () =>
    Effect.gen(function*() {
      const collector = yield* rawServer(Array.from({ length: 8 }, () => reply(200, "{}")))
      yield* scopedEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_SERVICE_NAME: "llm-gateway-eu" })
      const sim = yield* Simulator.make()
      const accounts = [account("a", sim.baseUrl, [Simulator.defaultKey])]
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Layer.merge(upstreamLayer(accounts), Telemetry.layer(yield* Telemetry.otlpConfig)),
        scope
      )
      const gateway = yield* Gateway.make({ port: 0, accounts, gatewayKeys: [Redacted.make("gw-otlp-key")] }).pipe(
        Effect.provide(context),
        Scope.extend(scope)
      )
      yield* attempt(() => openai(gateway.url, { apiKey: "gw-otlp-key" }).chat.completions.create({ model, messages: ask("traced") }))
      // A client may send a key in other headers too (Azure's SDK sends `api-key`): none is recorded.
      const otherKeys = { "api-key": "sk-azure-style", "x-goog-api-key": "sk-google-style", "proxy-authorization": "Basic c2VjcmV0" }
      yield* rawText(`${gateway.url}/v1/chat/completions`, { model, messages: ask("other headers") }, {
        authorization: "Bearer gw-otlp-key",
        ...otherKeys
      })
      // Closing the scope flushes the exporters.
      yield* Scope.close(scope, Exit.void)
      const bodies = collector.received().map((r) => r.body).join("\n")
      expect(bodies).toContain("weatherproof.Resilient.create")
      expect(bodies).toContain("weatherproof.Transport.create")
      expect(bodies).toContain("/v1/chat/completions")
      // The server's span records the answer's headers, as the platform records those of any response.
      expect(bodies).toContain("http.response.header.x-weatherproof-cache-status")
      expect(bodies).not.toContain("gw-otlp-key")
      expect(bodies).not.toContain(Simulator.defaultKey)
      for (const secret of Object.values(otherKeys)) expect(bodies).not.toContain(secret)
      // The service as the environment names it, each process its own instance (replicas' series apart).
      expect(bodies).toContain("llm-gateway-eu")
      expect(bodies).not.toContain("weatherproof-gateway")
      expect(bodies).toContain("service.instance.id")
      const ledger = yield* Effect.provide(CostLedger, context)
      expect((yield* ledger.snapshot).total.requests).toBe(2)
    }))

  it.scoped("with spans on, a fiber's steps set no OpenTelemetry context that no context manager would carry; a registered one sees each span", () =>
    Effect.gen(function*() {
      const collector = yield* rawServer(Array.from({ length: 8 }, () => reply(200, "{}")))
      yield* scopedEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.url })
      const traced = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
        Effect.scoped(Effect.provide(effect, Telemetry.layer({ traces: true, metrics: false, exportIntervalMillis: 10_000 })))
      // The span OpenTelemetry sees as active inside an Effect span, and the Effect span's own id.
      const activeInSpan = Effect.withSpan(
        Effect.zip(
          Effect.sync(() => OtelApi.trace.getActiveSpan()?.spanContext().spanId),
          Effect.map(Effect.currentSpan, (span) => span.spanId)
        ),
        "probe"
      )
      const contextSets = yield* Effect.acquireRelease(
        Effect.sync(() => vi.spyOn(OtelApi.context, "with")),
        (spy) => Effect.sync(() => spy.mockRestore())
      )

      const [unseen] = yield* traced(Effect.zipLeft(activeInSpan, Effect.yieldNow()))
      expect(unseen).toBeUndefined()
      // (The SDK's own calls, such as the exporter's, set no span.)
      expect(contextSets.mock.calls.filter(([context]) => OtelApi.trace.getSpan(context) !== undefined)).toEqual([])

      yield* Effect.acquireRelease(
        Effect.sync(() => OtelApi.context.setGlobalContextManager(new StackContextManager())),
        () => Effect.sync(() => OtelApi.context.disable())
      )
      const [seen, own] = yield* traced(activeInSpan)
      expect(seen).toBe(own)
    }))

  it.scopedLive("an export the collector refuses is a warning in the log (the SDK drops it otherwise), the same one once a minute at most", () =>
    Effect.gen(function*() {
      const collector = yield* rawServer(Array.from({ length: 8 }, () => reply(400, JSON.stringify({ error: "bad payload" }))))
      yield* scopedEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.url })
      const logs: Array<Logged> = []
      // A batch of 512 spans goes out at once; the collector refuses each.
      const batch = Effect.forEach(Array.from({ length: 512 }), () => Effect.withSpan(Effect.void, "refused"), { discard: true })
      const exported = (n: number) =>
        Effect.repeat(Effect.sync(() => collector.received().length), { until: (received) => received >= n, schedule: Schedule.spaced("10 millis") })
      yield* Effect.scoped(Effect.gen(function*() {
        yield* batch
        yield* Effect.timeout(exported(1), "5 seconds")
        yield* batch
        yield* Effect.timeout(exported(2), "5 seconds")
      }).pipe(Effect.provide(Telemetry.layer({ traces: true, metrics: false, exportIntervalMillis: 10_000 })), capturingLogs(logs)))
      const warnings = logs.filter((log) => log.level === "WARN").map((log) => log.message)
      expect(collector.received().length).toBe(2)
      expect(warnings).toEqual(["OpenTelemetry: OTLPExporterError: Bad Request (HTTP 400)"])
      expect(warnings[0]).not.toContain("\n    at ")
    }))

  it.scoped("OpenTelemetry's diagnostics: one message is logged again once a minute has passed, its numbers aside (TestClock)", () =>
    Effect.gen(function*() {
      yield* scopedEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:9" })
      const logs: Array<Logged> = []
      const warnings = () => logs.filter((log) => log.level === "WARN").map((log) => log.message)
      yield* Effect.scoped(Effect.gen(function*() {
        OtelApi.diag.warn("Dropped 12 spans")
        OtelApi.diag.warn("Dropped 40 spans")
        OtelApi.diag.error("export failed")
        expect(warnings()).toEqual(["OpenTelemetry: Dropped 12 spans", "OpenTelemetry: export failed"])
        yield* TestClock.adjust("59 seconds")
        OtelApi.diag.warn("Dropped 7 spans")
        expect(warnings()).toHaveLength(2)
        yield* TestClock.adjust("1 second")
        OtelApi.diag.warn("Dropped 7 spans")
        expect(warnings()).toEqual(["OpenTelemetry: Dropped 12 spans", "OpenTelemetry: export failed", "OpenTelemetry: Dropped 7 spans"])
      }).pipe(Effect.provide(Telemetry.layer({ traces: true, metrics: false, exportIntervalMillis: 10_000 })), capturingLogs(logs)))
      // Gone with the gateway: the SDK's diagnostics are no longer the gateway's.
      OtelApi.diag.warn("Dropped 99 spans")
      expect(warnings()).toHaveLength(3)
    }))

  it.effect("exports over OTLP each signal whose endpoint is set, its own or the generic one, unless its exporter is none", () =>
    Effect.gen(function*() {
      const read = (env: Record<string, string>) =>
        Effect.withConfigProvider(Telemetry.otlpConfig, ConfigProvider.fromMap(new Map(Object.entries(env))))
      const url = "http://127.0.0.1:4318"
      expect(yield* read({})).toEqual(Telemetry.noOtlp)
      expect(yield* read({ OTEL_EXPORTER_OTLP_ENDPOINT: url })).toEqual({ traces: true, metrics: true, exportIntervalMillis: 10_000 })
      expect(yield* read({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${url}/v1/traces` })).toMatchObject({ traces: true, metrics: false })
      expect(yield* read({ OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: `${url}/v1/metrics`, OTEL_METRIC_EXPORT_INTERVAL: "60000" }))
        .toEqual({ traces: false, metrics: true, exportIntervalMillis: 60_000 })
      expect(yield* read({ OTEL_EXPORTER_OTLP_ENDPOINT: url, OTEL_METRICS_EXPORTER: "none" })).toMatchObject({ traces: true, metrics: false })
      // A value it cannot honour is a configuration error, not silence.
      for (const env of [{ OTEL_TRACES_EXPORTER: "zipkin" }, { OTEL_METRIC_EXPORT_INTERVAL: "0" }]) {
        const error = yield* Effect.flip(read({ OTEL_EXPORTER_OTLP_ENDPOINT: url, ...env }))
        expect(error._tag).toBe("ConfigError")
        expect(String(error)).toContain(Object.keys(env)[0])
      }
    }))
})
