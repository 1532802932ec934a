import * as AiError from "@effect/ai/AiError"
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as Prompt from "@effect/ai/Prompt"
import type * as Response from "@effect/ai/Response"
import * as Tool from "@effect/ai/Tool"
import * as Toolkit from "@effect/ai/Toolkit"
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import * as AiLanguageModel from "../src/AiLanguageModel.js"
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from "../src/ChatSchema.js"
import * as Wire from "../src/internal/wire.js"
import * as KeyPool from "../src/KeyPool.js"
import * as MockUpstream from "../src/MockUpstream.js"
import * as Policy from "../src/Policy.js"
import * as Resilient from "../src/Resilient.js"
import * as Simulator from "../src/Simulator.js"
import * as Transport from "../src/Transport.js"
import { settle } from "./support/streams.js"

const model = "deepseek-v4-flash"

/** `AiLanguageModel` over a `Resilient` client (built as in Resilient.test.ts) over a scripted upstream. */
const stack = (script: MockUpstream.Script, config?: AiLanguageModel.Options["config"]) => {
  const resilient = Resilient.layer.pipe(
    Layer.provide([
      Transport.layer({ baseUrl: "https://upstream.test/" }).pipe(Layer.provide(KeyPool.layer([Redacted.make("sk-test")]))),
      Policy.layer({ retry: { base: "100 millis", cap: "1 second" }, retryBudget: false, concurrency: 4, breaker: false })
    ])
  )
  return AiLanguageModel.layer({ model, config }).pipe(
    Layer.provide(resilient),
    Layer.provideMerge(MockUpstream.layer(script))
  )
}

/** The bodies of the requests the upstream received. */
const sentBodies = Effect.flatMap(
  MockUpstream.MockUpstream,
  (upstream) => Effect.map(upstream.requests, (requests) => requests.map((r) => r.body as ChatCompletionRequest))
)

const generation: MockUpstream.Generation = {
  id: "cmpl-1",
  model,
  content: "Rain until noon, then sun.",
  reasoningContent: "Check the pressure, then the wind.",
  usage: MockUpstream.usage({ promptTokens: 20, completionTokens: 15, cacheHitTokens: 16, reasoningTokens: 9 })
}

const GetForecast = Tool.make("GetForecast", {
  description: "The forecast for a city",
  parameters: { city: Schema.String },
  success: Schema.Struct({ sky: Schema.String })
})
const Forecasts = Toolkit.make(GetForecast)
const forecastHandlers = Forecasts.toLayer({ GetForecast: ({ city }) => Effect.succeed({ sky: `rain in ${city}` }) })

const question = Prompt.make("Do I need an umbrella in Oslo?")
const toolCall = { id: "call_1", type: "function", function: { name: "GetForecast", arguments: "{\"city\":\"Oslo\"}" } } as const
const thinking = "Rain is likely; ask the forecast."
const answer: MockUpstream.Generation = {
  id: "cmpl-2",
  model,
  content: "Take an umbrella.",
  usage: MockUpstream.usage({ promptTokens: 40, completionTokens: 5 })
}

/** What the second request must carry back: the turn that called the tool, its reasoning, the result. */
const roundTripMessages = [
  { role: "user", content: "Do I need an umbrella in Oslo?" },
  { role: "assistant", content: "", reasoning_content: thinking, tool_calls: [toolCall] },
  { role: "tool", tool_call_id: "call_1", content: "{\"sky\":\"rain in Oslo\"}" }
]

const toolCallCompletion: ChatCompletion = {
  id: "cmpl-tool",
  object: "chat.completion",
  created: 1_700_000_000,
  model,
  choices: [{
    index: 0,
    message: { role: "assistant", content: "", reasoning_content: thinking, tool_calls: [toolCall] },
    finish_reason: "tool_calls"
  }],
  usage: MockUpstream.usage({ promptTokens: 30, completionTokens: 12, reasoningTokens: 7 })
}

const chunkOf = (delta: ChatCompletionChunk["choices"][number]["delta"], finish: "tool_calls" | null = null) =>
  Wire.sseData({
    id: "cmpl-tool",
    object: "chat.completion.chunk",
    created: 0,
    model,
    choices: [{ index: 0, delta, finish_reason: finish }]
  } satisfies ChatCompletionChunk)

/** The streamed form of `toolCallCompletion`: reasoning, then the arguments in pieces. */
const toolCallStream = MockUpstream.sse([
  chunkOf({ role: "assistant", content: "" }),
  chunkOf({ reasoning_content: "Rain is likely; " }),
  chunkOf({ reasoning_content: "ask the forecast." }),
  chunkOf({ tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "GetForecast", arguments: "" } }] }),
  chunkOf({ tool_calls: [{ index: 0, function: { arguments: "{\"city\":" } }] }),
  chunkOf({ tool_calls: [{ index: 0, function: { arguments: "\"Oslo\"}" } }] }),
  chunkOf({}, "tool_calls"),
  Wire.sseDone
])

const typesOf = (parts: ReadonlyArray<{ readonly type: string }>) =>
  parts.map((part) => part.type).filter((type, i, all) => type !== all[i - 1])

const deltasOf = (parts: ReadonlyArray<Response.StreamPart<any>>, type: "text-delta" | "reasoning-delta") =>
  parts.flatMap((part) => part.type === type ? [part.delta] : []).join("")

describe("AiLanguageModel", () => {
  it.effect("generateText: text, reasoning and the request built from the prompt and config", () =>
    Effect.gen(function*() {
      const response = yield* LanguageModel.generateText({ prompt: "Forecast for Oslo?" }).pipe(
        AiLanguageModel.withConfigOverride({ reasoning_effort: "max" })
      )
      expect(response.text).toBe(generation.content)
      expect(response.reasoningText).toBe(generation.reasoningContent)
      expect(response.finishReason).toBe("stop")
      const [sent] = yield* sentBodies
      // The layer's config and the per-call override both reach the request.
      expect(sent).toMatchObject({
        model,
        messages: [{ role: "user", content: "Forecast for Oslo?" }],
        thinking: { type: "enabled" },
        reasoning_effort: "max",
        stream: false
      })
      expect(sent).not.toHaveProperty("tools")
    }).pipe(Effect.provide(stack([MockUpstream.completion(generation)], { thinking: { type: "enabled" } }))))

  it.effect("a Config field set to undefined (an unset optional setting) leaves the layer's value, the model included", () =>
    Effect.gen(function*() {
      // As a caller compiled without `exactOptionalPropertyTypes` may write them.
      const overrides = [{ model: undefined, reasoning_effort: "max" }, { thinking: undefined }] as Array<AiLanguageModel.Config.Service>
      yield* LanguageModel.generateText({ prompt: "Forecast?" }).pipe(
        AiLanguageModel.withConfigOverride(overrides[0]!),
        AiLanguageModel.withConfigOverride(overrides[1]!)
      )
      const [sent] = yield* sentBodies
      expect(sent).toMatchObject({ model, thinking: { type: "enabled" }, reasoning_effort: "max" })
    }).pipe(Effect.provide(stack([MockUpstream.completion(generation)], { thinking: { type: "enabled" } }))))

  it.effect("usage keeps cache-hit, cache-miss and reasoning tokens", () =>
    Effect.gen(function*() {
      const response = yield* LanguageModel.generateText({ prompt: "Forecast?" })
      expect({ ...response.usage }).toEqual({
        inputTokens: 20,
        outputTokens: 15,
        totalTokens: 35,
        reasoningTokens: 9,
        cachedInputTokens: 16
      })
      const finish = response.content.find((part) => part.type === "finish")
      expect(finish?.metadata.deepseek).toMatchObject({ cacheHitTokens: 16, cacheMissTokens: 4 })
    }).pipe(Effect.provide(stack([MockUpstream.completion(generation)]))))

  it.effect("sends system, user text and images as chat messages", () =>
    Effect.gen(function*() {
      yield* LanguageModel.generateText({
        prompt: [
          { role: "system", content: "Be brief." },
          {
            role: "user",
            content: [
              { type: "text", text: "What cloud is this?" },
              { type: "file", mediaType: "image/png", data: new Uint8Array([1, 2, 3]) },
              { type: "file", mediaType: "image/jpeg", data: new URL("https://example.test/cloud.jpg") }
            ]
          }
        ]
      })
      const [sent] = yield* sentBodies
      expect(sent?.messages).toEqual([
        { role: "system", content: "Be brief." },
        {
          role: "user",
          content: [
            { type: "text", text: "What cloud is this?" },
            { type: "image_url", image_url: { url: "data:image/png;base64,AQID" } },
            { type: "image_url", image_url: { url: "https://example.test/cloud.jpg" } }
          ]
        }
      ])
    }).pipe(Effect.provide(stack([MockUpstream.completion(generation)]))))

  it.effect("streamText: reasoning, then text, as start/delta/end parts, and a finish with usage", () =>
    Effect.gen(function*() {
      const stream = LanguageModel.streamText({ prompt: "Forecast?" }).pipe(
        Stream.provideService(AiLanguageModel.Config, { reasoning_effort: "high" })
      )
      const parts = Chunk.toReadonlyArray(yield* Stream.runCollect(stream))
      expect(typesOf(parts)).toEqual([
        "response-metadata",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-end",
        "finish"
      ])
      expect(deltasOf(parts, "reasoning-delta")).toBe(generation.reasoningContent)
      expect(deltasOf(parts, "text-delta")).toBe(generation.content)
      const finish = parts.at(-1)
      expect(finish?.type === "finish" && { reason: finish.reason, ...finish.usage }).toEqual({
        reason: "stop",
        inputTokens: 20,
        outputTokens: 15,
        totalTokens: 35,
        reasoningTokens: 9,
        cachedInputTokens: 16
      })
      const [sent] = yield* sentBodies
      expect(sent).toMatchObject({ reasoning_effort: "high", stream: true, stream_options: { include_usage: true } })
    }).pipe(Effect.provide(stack([MockUpstream.streamed(generation)]))))

  it.effect("a tool-call round trip sends the calling turn back with its reasoning_content", () =>
    Effect.gen(function*() {
      const first = yield* LanguageModel.generateText({ prompt: question, toolkit: Forecasts })
      expect(first.finishReason).toBe("tool-calls")
      expect(first.toolCalls.map((call) => call.params)).toEqual([{ city: "Oslo" }])
      expect(first.toolResults.map((result) => result.result)).toEqual([{ sky: "rain in Oslo" }])

      const second = yield* LanguageModel.generateText({
        prompt: Prompt.merge(question, Prompt.fromResponseParts(first.content)),
        toolkit: Forecasts
      })
      expect(second.text).toBe("Take an umbrella.")

      const [asked, answered] = yield* sentBodies
      expect(asked).toMatchObject({
        tools: [{
          type: "function",
          function: {
            name: "GetForecast",
            description: "The forecast for a city",
            parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
          }
        }],
        tool_choice: "auto"
      })
      expect(answered?.messages).toEqual(roundTripMessages)
    }).pipe(
      Effect.provide(forecastHandlers),
      Effect.provide(stack([MockUpstream.json(toolCallCompletion), MockUpstream.completion(answer)]))
    ))

  it.effect("a streamed tool-call round trip: argument pieces become one call, and the reasoning goes back", () =>
    Effect.gen(function*() {
      const first = Chunk.toReadonlyArray(
        yield* Stream.runCollect(LanguageModel.streamText({ prompt: question, toolkit: Forecasts }))
      )
      expect(typesOf(first)).toEqual([
        "response-metadata",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "tool-params-start",
        "tool-params-delta",
        "tool-params-end",
        "tool-call",
        "tool-result",
        "finish"
      ])
      const call = first.find((part) => part.type === "tool-call")
      expect(call?.type === "tool-call" && call.params).toEqual({ city: "Oslo" })
      expect(first.at(-1)).toMatchObject({ type: "finish", reason: "tool-calls" })

      const second = yield* Stream.runCollect(LanguageModel.streamText({
        prompt: Prompt.merge(question, Prompt.fromResponseParts(first)),
        toolkit: Forecasts
      }))
      expect(deltasOf(Chunk.toReadonlyArray(second), "text-delta")).toBe("Take an umbrella.")
      const [, answered] = yield* sentBodies
      expect(answered?.messages).toEqual(roundTripMessages)
    }).pipe(
      Effect.provide(forecastHandlers),
      Effect.provide(stack([toolCallStream, MockUpstream.streamed(answer)]))
    ))

  // Some OpenAI-compatible servers send a call's id and name in a later piece than its first.
  it.effect("a streamed tool call whose id and name come in a later piece is called by them", () =>
    Effect.gen(function*() {
      const parts = Chunk.toReadonlyArray(yield* Stream.runCollect(LanguageModel.streamText({ prompt: question, toolkit: Forecasts })))
      const call = parts.find((part) => part.type === "tool-call")
      expect(call).toMatchObject({ type: "tool-call", id: "call_1", name: "GetForecast", params: { city: "Oslo" } })
      const start = parts.find((part) => part.type === "tool-params-start")
      const end = parts.find((part) => part.type === "tool-params-end")
      expect(start?.type === "tool-params-start" && end?.type === "tool-params-end" && start.id === end.id).toBe(true)
    }).pipe(
      Effect.provide(forecastHandlers),
      Effect.provide(stack([
        MockUpstream.sse([
          chunkOf({ tool_calls: [{ index: 0, type: "function", function: { arguments: "{\"city\":" } }] }),
          chunkOf({ tool_calls: [{ index: 0, id: "call_1", function: { name: "GetForecast", arguments: "\"Oslo\"}" } }] }),
          chunkOf({}, "tool_calls"),
          Wire.sseDone
        ]),
        MockUpstream.streamed(answer)
      ]))
    ))

  it.effect("with n > 1 choices, the text is the first choice's alone", () =>
    Effect.gen(function*() {
      const parts = Chunk.toReadonlyArray(yield* Stream.runCollect(LanguageModel.streamText({ prompt: question })))
      expect(deltasOf(parts, "text-delta")).toBe("A0a0")
      expect(parts.at(-1)).toMatchObject({ type: "finish", reason: "stop" })
    }).pipe(Effect.provide(stack([
      MockUpstream.sse([
        Wire.sseData({
          id: "n2",
          object: "chat.completion.chunk",
          created: 0,
          model,
          choices: [
            { index: 1, delta: { content: "B1" }, finish_reason: null },
            { index: 0, delta: { content: "A0" }, finish_reason: null }
          ]
        }),
        Wire.sseData({ id: "n2", object: "chat.completion.chunk", created: 0, model, choices: [{ index: 1, delta: { content: "b1" }, finish_reason: "stop" }] }),
        Wire.sseData({ id: "n2", object: "chat.completion.chunk", created: 0, model, choices: [{ index: 0, delta: { content: "a0" }, finish_reason: "stop" }] }),
        Wire.sseDone
      ])
    ]))))

  it.effect("a 429 is retried after its Retry-After, and the caller sees only the answer", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(LanguageModel.generateText({ prompt: "Forecast?" }))
      yield* TestClock.adjust("1999 millis")
      expect(fiber.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 millis")
      expect((yield* Fiber.join(fiber)).text).toBe(generation.content)
      expect(yield* sentBodies).toHaveLength(2)
    }).pipe(Effect.provide(stack([
      MockUpstream.status(429, { headers: { "retry-after": "2" }, body: JSON.parse(Wire.errorBody("busy", "rate_limit")) }),
      MockUpstream.completion(generation)
    ]))))

  it.effect("a stream cut mid-way fails with an AiError whose cause holds the partial output", () =>
    Effect.gen(function*() {
      const { chunks, error } = yield* settle(LanguageModel.streamText({ prompt: "Forecast?" }))
      const streamed = deltasOf(chunks, "reasoning-delta")
      expect(streamed.length).toBeGreaterThan(0)
      expect(error?._tag).toBe("UnknownError")
      const cause = error && AiLanguageModel.resilientError(error)
      expect(cause?._tag).toBe("StreamTruncated")
      expect(cause?._tag === "StreamTruncated" && cause.partial.reasoningContent).toBe(streamed)
      expect(error?._tag === "UnknownError" && error.cause).toBe(cause)
    }).pipe(Effect.provide(stack([
      // Two reasoning pieces, then the body ends without `data: [DONE]`.
      MockUpstream.sse(MockUpstream.events(generation, { done: false }).slice(0, 3))
    ]))))

  it.scopedLive("a stream that stalls after content, over loopback, fails at the idle deadline: an UnknownError whose cause is the DeadlineExceeded", () =>
    Effect.gen(function*() {
      const simulator = yield* Simulator.make({ faults: { script: ["stall"] } })
      const client = Resilient.layerDefault({
        baseUrl: simulator.baseUrl,
        keys: [Redacted.make(Simulator.defaultKey)],
        retry: { maxRetries: 0 },
        deadlines: { idle: "300 millis" }
      })
      // Every call of @effect/ai runs in a span of its own.
      const { error } = yield* settle(LanguageModel.streamText({ prompt: "Forecast?" })).pipe(
        Effect.provide(AiLanguageModel.layer({ model }).pipe(Layer.provide(client))),
        Effect.timeout("10 seconds")
      )
      expect(error?._tag).toBe("UnknownError")
      expect(error && AiLanguageModel.resilientError(error)).toMatchObject({ _tag: "DeadlineExceeded", reason: "idle" })
    }))

  it.effect("a request the server refuses as invalid is a MalformedInput with the InvalidRequest as cause", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(LanguageModel.generateText({ prompt: "Forecast?" }))
      expect(error).toBeInstanceOf(AiError.MalformedInput)
      expect(error._tag === "MalformedInput" && error.cause).toMatchObject({ _tag: "InvalidRequest", status: 400 })
      expect(yield* sentBodies).toHaveLength(1)
    }).pipe(Effect.provide(stack([
      MockUpstream.status(400, { body: JSON.parse(Wire.errorBody("reasoning_content is missing", "invalid_request_error")) })
    ]))))

  it.effect("a connection that keeps failing, after the retries, is an HttpRequestError with the TransportError as cause", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(Effect.flip(LanguageModel.generateText({ prompt: "Forecast?" })))
      yield* TestClock.adjust("1 minute")
      const error = yield* Fiber.join(fiber)
      expect(error).toBeInstanceOf(AiError.HttpRequestError)
      expect(error._tag === "HttpRequestError" && [error.reason, error.request.url]).toEqual(["Transport", "/chat/completions"])
      expect(AiLanguageModel.resilientError(error)).toMatchObject({ _tag: "TransportError", reason: "request" })
      // Each of the 6 attempts (5 retries) was resent once at once as a stale connection.
      expect(yield* sentBodies).toHaveLength(12)
    }).pipe(Effect.provide(stack(() => MockUpstream.drop()))))

  it.effect("generateObject asks for a json_object and describes the schema in the system prompt", () => {
    const Forecast = Schema.Struct({ city: Schema.String, sky: Schema.String })
    return Effect.gen(function*() {
      const response = yield* LanguageModel.generateObject({
        prompt: [{ role: "system", content: "You are a forecaster." }, { role: "user", content: "Oslo?" }],
        schema: Forecast,
        objectName: "forecast"
      })
      expect(response.value).toEqual({ city: "Oslo", sky: "rain" })
      const [sent] = yield* sentBodies
      expect(sent?.response_format).toEqual({ type: "json_object" })
      const [system, user] = sent?.messages ?? []
      expect(system?.role).toBe("system")
      expect(system?.content).toMatch(/^You are a forecaster\.\n\nReply with a json object only: the forecast/)
      expect(system?.content).toContain(JSON.stringify(Tool.getJsonSchemaFromSchemaAst(Forecast.ast)))
      expect(user).toEqual({ role: "user", content: "Oslo?" })
    }).pipe(Effect.provide(stack([
      MockUpstream.completion({ ...generation, content: "{\"city\":\"Oslo\",\"sky\":\"rain\"}" })
    ])))
  })

  it.live("against the loopback Simulator: thinking streams reasoning, then the answer", () =>
    Effect.gen(function*() {
      const simulator = yield* Simulator.make({ queueDelay: "1 millis", chunkDelay: 0 })
      const live = AiLanguageModel.layer({ model, config: { thinking: { type: "enabled" } } }).pipe(
        Layer.provide(Resilient.layerDefault({ baseUrl: simulator.baseUrl, keys: [Redacted.make(Simulator.defaultKey)] }))
      )
      const parts = Chunk.toReadonlyArray(
        yield* Stream.runCollect(LanguageModel.streamText({ prompt: "umbrella?" })).pipe(Effect.provide(live))
      )
      expect(deltasOf(parts, "reasoning-delta")).toBe("think:umbrella?")
      expect(deltasOf(parts, "text-delta")).toBe("echo:umbrella?")
      expect(parts.at(-1)).toMatchObject({ type: "finish", reason: "stop", usage: { reasoningTokens: 4 } })
      expect((yield* simulator.stats).completed).toBe(1)
    }).pipe(Effect.scoped))

  it("is its own entry point: no other module imports it or @effect/ai", () => {
    const own = new Set(["AiLanguageModel.ts", join("internal", "aiLanguageModel.ts")])
    const src = fileURLToPath(new URL("../src", import.meta.url))
    const importers = readdirSync(src, { recursive: true, encoding: "utf8" })
      .filter((file) => file.endsWith(".ts") && !own.has(file))
      .filter((file) => /from "(@effect\/ai[/"]|\.{1,2}\/(internal\/)?[aA]iLanguageModel\.js")/.test(readFileSync(join(src, file), "utf8")))
    expect(importers).toEqual([])
  })
})
