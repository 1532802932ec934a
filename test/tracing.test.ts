/**
 * The spans of a traced call, as an OpenTelemetry exporter receives them (`@effect/opentelemetry`'s
 * `NodeSdk` with an in-memory exporter): the client's span, one span per attempt placed on an
 * account, the transport's under each; the GenAI semantic conventions' attributes and
 * weatherproof's; no key and no prompt or completion text unless the caller opted in.
 */
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import type * as HttpClient from "@effect/platform/HttpClient"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import { describe, expect, it } from "@effect/vitest"
import { SpanKind, SpanStatusCode } from "@opentelemetry/api"
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import * as semconv from "@opentelemetry/semantic-conventions/incubating"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import type { Account } from "../src/Accounts.js"
import * as AiLanguageModel from "../src/AiLanguageModel.js"
import * as AccountPool from "../src/AccountPool.js"
import type { ChatCompletionRequest } from "../src/ChatSchema.js"
import * as ChatStream from "../src/ChatStream.js"
import * as CostLedger from "../src/CostLedger.js"
import * as GenAi from "../src/internal/genAi.js"
import * as MockUpstream from "../src/MockUpstream.js"
import * as Policy from "../src/Policy.js"
import * as KeyPool from "../src/KeyPool.js"
import * as Resilient from "../src/Resilient.js"
import * as Simulator from "../src/Simulator.js"
import * as Transport from "../src/Transport.js"
import * as Wire from "../src/internal/wire.js"

const keys = { a: "sk-trace-account-a-0123456789abcdef", b: "sk-trace-account-b-0123456789abcdef" }

const account = (name: keyof typeof keys, extra: Partial<Account> = {}): Account => ({
  name,
  provider: "deepseek",
  baseUrl: `https://${name}.test`,
  keys: [Redacted.make(keys[name])],
  fallback: false,
  models: {},
  ...extra
})

const prompt = "Which umbrella does the lighthouse keeper of Skarvøy carry?"
const reasoning = "The keeper's umbrella is recorded in the harbour log."
const answer = "A green one with a brass handle."

const request: ChatCompletionRequest = {
  model: "deepseek-v4-flash",
  messages: [{ role: "system", content: "Answer briefly." }, { role: "user", content: prompt }],
  temperature: 0.3,
  max_tokens: 200
}

const generation: MockUpstream.Generation = {
  id: "cmpl-b",
  model: "deepseek-v4-flash",
  content: answer,
  reasoningContent: reasoning,
  usage: MockUpstream.usage({ promptTokens: 120, completionTokens: 40, cacheHitTokens: 100, reasoningTokens: 15 })
}

const hostOf = (request: MockUpstream.RecordedRequest) => new URL(request.url).host.replace(/\.test$/, "")
const errorBody = (message: string) => ({ error: { message, type: "error" } })

/** Account a is out of balance (402); account b is busy once (429, retry after 1 s), then answers. */
const upstream = () => {
  let bCalls = 0
  return MockUpstream.layer((request) => {
    const streamed = (request.body as ChatCompletionRequest).stream === true
    if (hostOf(request) === "a") return MockUpstream.status(402, { body: errorBody("Insufficient Balance") })
    return bCalls++ === 0
      ? MockUpstream.status(429, { headers: { "retry-after": "1" }, body: errorBody("Rate limit reached") })
      : streamed
      ? MockUpstream.streamed(generation)
      : MockUpstream.completion(generation)
  })
}

/** A `Resilient` over a pool of `accounts` (retry outside, failover inside), as `layerResilient` builds it. */
const stack = (accounts: ReadonlyArray<Account>, replies: Layer.Layer<MockUpstream.MockUpstream | HttpClient.HttpClient>) =>
  Layer.scoped(
    Resilient.Resilient,
    Effect.gen(function*() {
      const policy = yield* Policy.make({ retry: { base: "100 millis", cap: "1 second" }, retryBudget: false, concurrency: false, breaker: false })
      return yield* Resilient.makeWith(policy, AccountPool.upstream(yield* AccountPool.AccountPool))
    })
  ).pipe(
    Layer.provideMerge(AccountPool.layer(accounts, { preflight: false })),
    Layer.provideMerge(Layer.merge(replies, CostLedger.layer()))
  )

/** Spans exported in memory, as `NodeSdk` sends them to any exporter. */
const tracing = (exporter: InMemorySpanExporter) =>
  NodeSdk.layer(() => ({ resource: { serviceName: "weatherproof-test" }, spanProcessor: new SimpleSpanProcessor(exporter) }))

// ---------------------------------------------------------------------------------------------
// Reading the exported spans
// ---------------------------------------------------------------------------------------------

/** Each span with its children, in the order they started (then ended). */
const treeOf = (spans: ReadonlyArray<ReadableSpan>) => {
  const order = new Map(spans.map((span, i) => [span, i]))
  const startOf = (span: ReadableSpan) => span.startTime[0] * 1e9 + span.startTime[1]
  const children = (parent: ReadableSpan | undefined) =>
    spans
      .filter((span) => span.parentSpanContext?.spanId === parent?.spanContext().spanId)
      .sort((x, y) => startOf(x) - startOf(y) || order.get(x)! - order.get(y)!)
  return { roots: children(undefined), children }
}

/** The tree as indented lines: each span's name, and its account for the pool's. */
const render = (spans: ReadonlyArray<ReadableSpan>): Array<string> => {
  const { children, roots } = treeOf(spans)
  const lines = (span: ReadableSpan, depth: number): Array<string> => {
    const account = span.attributes[GenAi.weatherproofAttributes.account]
    const label = account === undefined ? span.name : `${span.name} [${String(account)}]`
    return [`${"  ".repeat(depth)}${label}`, ...children(span).flatMap((child) => lines(child, depth + 1))]
  }
  return roots.flatMap((root) => lines(root, 0))
}

/** An array attribute: `@effect/opentelemetry` hands arrays to OpenTelemetry as JSON text. */
const arrayOf = (value: unknown): unknown => typeof value === "string" ? JSON.parse(value) : value

/** Every string a span carries: attribute values, and its events' (an exception's message and stack). */
const textsOf = (span: ReadableSpan): Array<string> => [
  span.name,
  ...Object.values(span.attributes).map(String),
  ...span.events.flatMap((event) => [event.name, ...Object.values(event.attributes ?? {}).map(String)])
]

const leaks = (spans: ReadonlyArray<ReadableSpan>, secrets: ReadonlyArray<string>) =>
  spans.flatMap((span) => textsOf(span).filter((text) => secrets.some((secret) => text.includes(secret))).map((text) => `${span.name}: ${text}`))

const byName = (spans: ReadonlyArray<ReadableSpan>, name: string) => treeOf(spans).roots.flatMap(function all(span): Array<ReadableSpan> {
  return [span, ...treeOf(spans).children(span).flatMap(all)]
}).filter((span) => span.name === name)

// ---------------------------------------------------------------------------------------------

describe("GenAI attribute names", () => {
  it("are the OpenTelemetry semantic conventions' (checked against @opentelemetry/semantic-conventions)", () => {
    const copied = Object.entries(GenAi).filter(([name]) => /^(ATTR|GEN_AI|ERROR_TYPE)_/.test(name))
    expect(copied.length).toBeGreaterThan(20)
    for (const [name, value] of copied) expect([name, value]).toEqual([name, (semconv as Record<string, unknown>)[name]])
  })
})

describe("the span tree of a retried, failed-over call", () => {
  const accounts = [account("a"), account("b")]
  const secrets = [keys.a, keys.b, prompt, reasoning, answer, "Answer briefly."]

  const calls = {
    create: Effect.flatMap(Resilient.Resilient, (client) => client.create(request)),
    stream: Effect.flatMap(Resilient.Resilient, (client) => ChatStream.fold(client.stream(request)))
  }

  for (const [method, call] of Object.entries(calls)) {
    it.effect(`${method}: the client's span, a span per attempt on an account, the transport's under each`, () => {
      const exporter = new InMemorySpanExporter()
      return Effect.gen(function*() {
        const fiber = yield* Effect.fork(call)
        yield* TestClock.adjust("5 seconds")
        const completion = yield* Fiber.join(fiber)
        expect(completion.choices[0]?.message.content).toBe(answer)
        const spentUsd = (yield* Effect.flatMap(CostLedger.CostLedger, (ledger) => ledger.snapshot)).total.costUsd
        expect(spentUsd).toBeGreaterThan(0)

        const spans = exporter.getFinishedSpans()
        const Method = method === "create" ? "create" : "stream"
        expect(render(spans)).toEqual([
          `weatherproof.Resilient.${Method}`,
          `  weatherproof.AccountPool.${Method} [a]`,
          `    weatherproof.Transport.${Method}`,
          "      http.client POST",
          `  weatherproof.AccountPool.${Method} [b]`,
          `    weatherproof.Transport.${Method}`,
          "      http.client POST",
          `  weatherproof.AccountPool.${Method} [b]`,
          `    weatherproof.Transport.${Method}`,
          "      http.client POST"
        ])

        const [client] = byName(spans, `weatherproof.Resilient.${Method}`)
        expect(client!.kind).toBe(SpanKind.CLIENT)
        expect(client!.status.code).toBe(SpanStatusCode.OK)
        expect({ ...client!.attributes, [semconv.ATTR_GEN_AI_RESPONSE_FINISH_REASONS]: undefined }).toEqual({
          [semconv.ATTR_GEN_AI_OPERATION_NAME]: "chat",
          [semconv.ATTR_GEN_AI_PROVIDER_NAME]: "deepseek",
          [semconv.ATTR_GEN_AI_REQUEST_MODEL]: "deepseek-v4-flash",
          [semconv.ATTR_GEN_AI_REQUEST_TEMPERATURE]: 0.3,
          [semconv.ATTR_GEN_AI_REQUEST_MAX_TOKENS]: 200,
          ...(method === "stream" ? { [semconv.ATTR_GEN_AI_REQUEST_STREAM]: true } : {}),
          [semconv.ATTR_GEN_AI_RESPONSE_ID]: "cmpl-b",
          [semconv.ATTR_GEN_AI_RESPONSE_MODEL]: "deepseek-v4-flash",
          [semconv.ATTR_GEN_AI_RESPONSE_FINISH_REASONS]: undefined,
          [semconv.ATTR_GEN_AI_USAGE_INPUT_TOKENS]: 120,
          [semconv.ATTR_GEN_AI_USAGE_OUTPUT_TOKENS]: 40,
          [semconv.ATTR_GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS]: 100,
          [semconv.ATTR_GEN_AI_USAGE_REASONING_OUTPUT_TOKENS]: 15,
          "weatherproof.attempts": 2,
          "weatherproof.retries": 1,
          "weatherproof.rate_limited": 1,
          "weatherproof.queue_wait": 0,
          "weatherproof.cost_usd": spentUsd
        })
        expect(arrayOf(client!.attributes[semconv.ATTR_GEN_AI_RESPONSE_FINISH_REASONS])).toEqual(["stop"])

        const attempts = byName(spans, `weatherproof.AccountPool.${Method}`)
        expect(attempts.map((span) => [
          span.attributes["weatherproof.account"],
          span.attributes["weatherproof.attempt"],
          span.attributes[semconv.ATTR_ERROR_TYPE],
          span.status.code
        ])).toEqual([
          ["a", 1, "InsufficientBalance", SpanStatusCode.ERROR],
          ["b", 1, "RateLimited", SpanStatusCode.ERROR],
          ["b", 2, undefined, SpanStatusCode.OK]
        ])
        for (const span of attempts) {
          expect(span.kind).toBe(SpanKind.INTERNAL)
          expect(span.attributes).toMatchObject({
            [semconv.ATTR_GEN_AI_OPERATION_NAME]: "chat",
            [semconv.ATTR_GEN_AI_PROVIDER_NAME]: "deepseek",
            [semconv.ATTR_GEN_AI_REQUEST_MODEL]: "deepseek-v4-flash",
            [semconv.ATTR_SERVER_ADDRESS]: `${String(span.attributes["weatherproof.account"])}.test`,
            [semconv.ATTR_SERVER_PORT]: 443,
            "weatherproof.queue_wait": 0
          })
        }
        const answered = attempts[2]!
        expect(answered.attributes).toMatchObject({
          [semconv.ATTR_GEN_AI_RESPONSE_MODEL]: "deepseek-v4-flash",
          [semconv.ATTR_GEN_AI_USAGE_INPUT_TOKENS]: 120,
          [semconv.ATTR_GEN_AI_USAGE_OUTPUT_TOKENS]: 40,
          "weatherproof.cost_usd": spentUsd
        })
        expect(arrayOf(answered.attributes[semconv.ATTR_GEN_AI_RESPONSE_FINISH_REASONS])).toEqual(["stop"])
        expect(attempts.slice(0, 2).map((span) => span.attributes["weatherproof.cost_usd"])).toEqual([0, 0])

        expect(leaks(spans, secrets)).toEqual([])
      }).pipe(Effect.provide(Layer.merge(stack(accounts, upstream()), tracing(exporter))))
    })
  }

  /** The spans of `call` with `CaptureContent` set, its 429's wait run on the `TestClock`. */
  const capturing = <A, E, R>(call: Effect.Effect<A, E, R>) => {
    const exporter = new InMemorySpanExporter()
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(call.pipe(Effect.provideService(Resilient.CaptureContent, true)))
      yield* TestClock.adjust("5 seconds")
      yield* Fiber.join(fiber)
      return exporter.getFinishedSpans()
    }).pipe(Effect.provide(Layer.merge(stack(accounts, upstream()), tracing(exporter))))
  }
  const outputMessages = [
    { role: "assistant", parts: [{ type: "reasoning", content: reasoning }, { type: "text", content: answer }], finish_reason: "stop" }
  ]

  it.effect("records the prompt and the completion on the client's span only with CaptureContent", () =>
    Effect.gen(function*() {
      const spans = yield* capturing(calls.create)
      const [client] = byName(spans, "weatherproof.Resilient.create")
      expect(JSON.parse(String(client!.attributes[semconv.ATTR_GEN_AI_INPUT_MESSAGES]))).toEqual([
        { role: "system", parts: [{ type: "text", content: "Answer briefly." }] },
        { role: "user", parts: [{ type: "text", content: prompt }] }
      ])
      expect(JSON.parse(String(client!.attributes[semconv.ATTR_GEN_AI_OUTPUT_MESSAGES]))).toEqual(outputMessages)
      expect(leaks(spans.filter((span) => span !== client), [...Object.values(keys), prompt, answer])).toEqual([])
      expect(leaks([client!], Object.values(keys))).toEqual([])
    }))

  it.effect("a stream's completion is recorded too, folded from its chunks", () =>
    Effect.gen(function*() {
      const [client] = byName(yield* capturing(calls.stream), "weatherproof.Resilient.stream")
      expect(JSON.parse(String(client!.attributes[semconv.ATTR_GEN_AI_OUTPUT_MESSAGES]))).toEqual(outputMessages)
    }))
})

describe("content, when captured", () => {
  it.effect("a tool round trip's turns as the conventions' parts: instructions, reasoning, text, tool calls, tool and function results", () => {
    const exporter = new InMemorySpanExporter()
    const roundTrip: ChatCompletionRequest = {
      model: "deepseek-v4-flash",
      messages: [
        { role: "developer", content: [{ type: "text", text: "Be brief." }] },
        { role: "user", content: [{ type: "text", text: prompt }, { type: "image_url" }] },
        {
          role: "assistant",
          content: null,
          reasoning_content: reasoning,
          tool_calls: [{ id: "call-1", type: "function", function: { name: "GetForecast", arguments: "{\"city\":\"Oslo\"}" } }]
        },
        { role: "tool", tool_call_id: "call-1", content: [{ type: "text", text: "{\"sky\":" }, { type: "text", text: "\"rain\"}" }] },
        // The legacy functions API's result: no call id to name.
        { role: "function", name: "GetForecast", content: "{\"wind\":3}" }
      ]
    }
    return Effect.gen(function*() {
      yield* Effect.flatMap(Resilient.Resilient, (client) => client.create(roundTrip)).pipe(
        Effect.provideService(Resilient.CaptureContent, true)
      )
      const [client] = byName(exporter.getFinishedSpans(), "weatherproof.Resilient.create")
      expect(JSON.parse(String(client!.attributes[semconv.ATTR_GEN_AI_INPUT_MESSAGES]))).toEqual([
        { role: "developer", parts: [{ type: "text", content: "Be brief." }] },
        { role: "user", parts: [{ type: "text", content: prompt }, { type: "image_url" }] },
        {
          role: "assistant",
          parts: [
            { type: "reasoning", content: reasoning },
            { type: "tool_call", id: "call-1", name: "GetForecast", arguments: "{\"city\":\"Oslo\"}" }
          ]
        },
        { role: "tool", parts: [{ type: "tool_call_response", id: "call-1", response: "{\"sky\":\"rain\"}" }] },
        { role: "tool", parts: [{ type: "tool_call_response", response: "{\"wind\":3}" }] }
      ])
    }).pipe(Effect.provide(Layer.merge(stack([account("b")], MockUpstream.layer([MockUpstream.completion(generation)])), tracing(exporter))))
  })
})

describe("an attempt's queue wait", () => {
  it.effect("is the time it waited for a permit on an account, on its span and summed on the client's", () => {
    const exporter = new InMemorySpanExporter()
    const slow = MockUpstream.layer(() => MockUpstream.completion(generation, { delay: "3 seconds" }))
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const both = yield* Effect.fork(Effect.all([client.create(request), client.create(request)], { concurrency: 2 }))
      yield* TestClock.adjust("10 seconds")
      yield* Fiber.join(both)
      const spans = exporter.getFinishedSpans()
      const waits = (name: string) => byName(spans, name).map((span) => span.attributes["weatherproof.queue_wait"]).sort()
      expect(waits("weatherproof.AccountPool.create")).toEqual([0, 3])
      expect(waits("weatherproof.Resilient.create")).toEqual([0, 3])
    }).pipe(Effect.provide(Layer.merge(stack([account("b", { concurrency: 1 })], slow), tracing(exporter))))
  })
})

describe("under @effect/ai", () => {
  const modelCalls = {
    generateText: { method: "create", reply: MockUpstream.completion(generation), run: LanguageModel.generateText({ prompt }) },
    streamText: { method: "stream", reply: MockUpstream.streamed(generation), run: Stream.runDrain(LanguageModel.streamText({ prompt })) }
  }

  for (const [name, { method, reply, run }] of Object.entries(modelCalls)) {
    it.effect(`LanguageModel.${name}'s span names the provider as the conventions now do, and is the client's parent`, () => {
      const exporter = new InMemorySpanExporter()
      const model = AiLanguageModel.layer({ model: "deepseek-v4-flash" }).pipe(
        Layer.provideMerge(stack([account("b")], MockUpstream.layer([reply])))
      )
      return Effect.gen(function*() {
        yield* run
        const spans = exporter.getFinishedSpans()
        expect(render(spans)).toEqual([
          `LanguageModel.${name}`,
          `  weatherproof.Resilient.${method}`,
          `    weatherproof.AccountPool.${method} [b]`,
          `      weatherproof.Transport.${method}`,
          "        http.client POST"
        ])
        expect(byName(spans, `LanguageModel.${name}`)[0]!.attributes).toMatchObject({
          [semconv.ATTR_GEN_AI_PROVIDER_NAME]: "deepseek",
          [semconv.ATTR_GEN_AI_OPERATION_NAME]: "chat",
          [semconv.ATTR_GEN_AI_REQUEST_MODEL]: "deepseek-v4-flash",
          [semconv.ATTR_GEN_AI_USAGE_INPUT_TOKENS]: 120
        })
        expect(leaks(spans, [keys.b, prompt, answer])).toEqual([])
      }).pipe(Effect.provide(Layer.merge(model, tracing(exporter))))
    })
  }
})

describe("a traced call over Transport.nodeHttpClient", () => {
  /** A loopback upstream answering each chat request at once, recording the `traceparent` each carried. */
  const recordingUpstream = Effect.acquireRelease(
    Effect.async<{ readonly server: Http.Server; readonly url: string; readonly traceparents: Array<string> }>((resume) => {
      const traceparents: Array<string> = []
      const server = Http.createServer((req, res) => {
        let body = ""
        req.on("data", (bytes) => (body += bytes))
        req.on("end", () => {
          traceparents.push(String(req.headers.traceparent))
          // No Date header: the two clients' spans record the response's headers, which must not differ by the clock.
          res.sendDate = false
          if ((JSON.parse(body) as ChatCompletionRequest).stream === true) {
            res.writeHead(200, { "content-type": "text/event-stream" }).end(Wire.sseBody(generation))
          } else {
            res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(Wire.completion(generation)))
          }
        })
      })
      server.listen(0, "127.0.0.1", () =>
        resume(Effect.succeed({ server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, traceparents })))
    }),
    ({ server }) =>
      Effect.async<void>((resume) => {
        server.close(() => resume(Effect.void))
      })
  )

  const calls = {
    create: Effect.flatMap(Transport.Transport, (transport) => transport.create(request)),
    stream: Effect.flatMap(Transport.Transport, (transport) => ChatStream.fold(transport.stream(request)))
  }

  /** The spans of `call` over a transport on `client` to `url`. */
  const spansOf = (url: string, client: Layer.Layer<HttpClient.HttpClient>, call: Effect.Effect<unknown, unknown, Transport.Transport>) => {
    const exporter = new InMemorySpanExporter()
    const transport = Transport.layer({ baseUrl: url, warmUp: 0 }).pipe(
      Layer.provide(Layer.merge(client, KeyPool.layer([Redacted.make(keys.a)])))
    )
    return Effect.as(Effect.provide(call, Layer.merge(transport, tracing(exporter))), exporter.getFinishedSpans())
  }

  for (const [method, call] of Object.entries(calls)) {
    it.scopedLive(`${method}: the exchange in the HTTP client span the platform's client makes, its trace sent upstream`, () =>
      Effect.gen(function*() {
        const upstream = yield* recordingUpstream
        const ours = yield* spansOf(upstream.url, Transport.nodeHttpClient(), call)
        const platforms = yield* spansOf(upstream.url, NodeHttpClient.layerUndici, call)
        const Method = method === "create" ? "create" : "stream"
        expect(render(ours)).toEqual([`weatherproof.Transport.${Method}`, "  http.client POST"])
        expect(render(platforms)).toEqual(render(ours))
        const [http] = byName(ours, "http.client POST")
        const [platformHttp] = byName(platforms, "http.client POST")
        expect(http!.kind).toBe(SpanKind.CLIENT)
        expect(http!.attributes).toEqual(platformHttp!.attributes)
        expect(http!.attributes["http.request.header.authorization"]).toBe("<redacted>")
        const { spanId, traceId } = http!.spanContext()
        expect(upstream.traceparents[0]).toBe(`00-${traceId}-${spanId}-01`)
        expect(leaks(ours, [keys.a])).toEqual([])
      }))
  }

  it.scopedLive("opens about as many connections as calls run at once, as an untraced one does", () =>
    Effect.gen(function*() {
      const simulator = yield* Simulator.make({ limit: 1_000, queueDelay: 0, chunkDelay: 0, accounts: { a: { keys: [keys.a] } } })
      const inFlight = 16
      // Each of 16 workers sends its next call as its last answer ends, before undici gives that socket back.
      const spans = yield* spansOf(
        simulator.baseUrl,
        Transport.nodeHttpClient(),
        Effect.forEach(Array.from({ length: 400 }), () => calls.create, { concurrency: inFlight, discard: true })
      )
      expect(byName(spans, "http.client POST")).toHaveLength(400)
      const { completed, connections } = yield* simulator.stats
      expect(completed).toBe(400)
      expect(connections).toBeLessThanOrEqual(inFlight + 2)
    }))
})
