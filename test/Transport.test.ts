import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as Tracer from "effect/Tracer"
import * as ApiError from "../src/ApiError.js"
import * as ChatStream from "../src/ChatStream.js"
import type * as ConcurrencyLimiter from "../src/ConcurrencyLimiter.js"
import { permitOptions } from "../src/internal/transport.js"
import type * as ChatSchema from "../src/ChatSchema.js"
import type { ChatCompletionRequest } from "../src/ChatSchema.js"
import * as Wire from "../src/internal/wire.js"
import * as KeyPool from "../src/KeyPool.js"
import * as MockUpstream from "../src/MockUpstream.js"
import * as Simulator from "../src/Simulator.js"
import * as Transport from "../src/Transport.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { contentOf, settle } from "./support/streams.js"
import { destroySocket, type Handler, type RawServer, rawServer, reply, writeByteByByte, writeSlowly } from "./support/rawServer.js"

const keys = ["sk-test-aaaa1111", "sk-test-bbbb2222"]

const request: ChatCompletionRequest = { model: "deepseek-v4-flash", messages: [{ role: "user", content: "hi" }] }

const generation: MockUpstream.Generation = {
  id: "cmpl-1",
  model: "deepseek-v4-flash",
  content: "Sunny with a chance of retries.",
  reasoningContent: "Look at the sky.",
  usage: MockUpstream.usage({ promptTokens: 12, completionTokens: 9, reasoningTokens: 4 })
}

const cutGeneration: MockUpstream.Generation = { ...generation, finishReason: "insufficient_system_resource" }

const setup = (script: MockUpstream.Script, options?: Transport.Options, keyList: ReadonlyArray<string> = keys) =>
  Transport.layer({ baseUrl: "https://upstream.test/", ...options }).pipe(
    Layer.provideMerge(Layer.merge(MockUpstream.layer(script), KeyPool.layer(keyList.map(Redacted.make))))
  )

const create = (options?: Transport.CallOptions) =>
  Effect.flatMap(Transport.Transport, (transport) => transport.create(request, options))

/** Every chunk a stream emitted, and the error it ended with. */
const drain = (options?: Transport.CallOptions) =>
  Effect.flatMap(Transport.Transport, (transport) => settle(transport.stream(request, options)))

/** No key, whole or in part, leaks into what an error shows. */
const expectNoSecret = (error: unknown) => {
  const shown = [String(error), JSON.stringify(error), (error as Error).message].join("\n")
  for (const key of keys) {
    expect(shown).not.toContain(key)
    expect(shown).not.toContain(key.slice(3))
  }
}

const failure = <A>(effect: Effect.Effect<A, ApiError.ApiError, Transport.Transport>) =>
  Effect.tap(Effect.flip(effect), expectNoSecret)

const echoKeyBody = (status: number, type: string) =>
  MockUpstream.status(status, {
    body: { error: { message: `key ${keys[0]} says no`, type, param: "messages", code: "bad_thing" } }
  })

describe("Transport.create", () => {
  it.effect("skips keep-alive blank lines before the JSON and sends a non-streaming request", () =>
    Effect.gen(function*() {
      const completion = yield* create()
      expect(completion.choices[0]?.message.content).toBe(generation.content)
      expect(completion.usage).toEqual(generation.usage)
      const [sent] = yield* Effect.flatMap(MockUpstream.MockUpstream, (m) => m.requests)
      expect(sent?.url).toBe("https://upstream.test/chat/completions")
      expect(sent?.headers["authorization"]).toBe("<redacted>")
      expect(sent?.bearer && Redacted.value(sent.bearer)).toBe(keys[0])
      expect(sent?.body).toEqual({ ...request, stream: false })
    }).pipe(Effect.provide(setup([MockUpstream.completion(generation, { leadingBlankLines: 5 })]))))

  // OpenAI answers 400 to `stream_options` beside `stream: false`; some clients send it either way.
  it.effect("sends a request's `stream_options` only with a stream: a non-streaming call goes without them", () =>
    Effect.gen(function*() {
      const transport = yield* Transport.Transport
      yield* transport.create({ ...request, stream: true, stream_options: { include_usage: true } })
      const [sent] = yield* Effect.flatMap(MockUpstream.MockUpstream, (m) => m.requests)
      expect(sent?.body).toEqual({ ...request, stream: false })
    }).pipe(Effect.provide(setup([MockUpstream.completion(generation)]))))

  it.effect("a 200 closed while queued is load shed however it ends: blank, a stream of keep-alives, a blank body to a stream", () =>
    Effect.gen(function*() {
      const blank = yield* failure(create())
      expect(blank).toMatchObject({ _tag: "MalformedResponse", reason: "blank" })
      const keepAlivesOnly = (yield* drain()).error
      expect(keepAlivesOnly).toMatchObject({ _tag: "StreamTruncated", partial: { events: 0 } })
      const blankToStream = (yield* drain()).error
      expect(blankToStream).toMatchObject({ _tag: "MalformedResponse", reason: "blank" })
      const reset = (yield* drain()).error
      expect(reset).toMatchObject({ _tag: "TransportError", reason: "body", partial: { events: 0 } })
      for (const error of [blank, keepAlivesOnly, blankToStream, reset]) {
        expect(ApiError.classify(error)).toEqual(ApiError.loadShed(Option.none(), "overload"))
      }
    }).pipe(Effect.provide(setup([
      MockUpstream.parts(["\n", "\n\r\n", "  "]),
      MockUpstream.sse([": keep-alive\n\n", ": keep-alive\n\n"]),
      MockUpstream.parts(["\n\n"], { headers: { "content-type": "application/json" } }),
      MockUpstream.sse([": keep-alive\n\n"], { cut: true })
    ]))))

  it.effect("JSON cut before its end is MalformedResponse cut", () =>
    Effect.gen(function*() {
      const error = yield* failure(create())
      expect(error).toMatchObject({ _tag: "MalformedResponse", reason: "cut" })
    }).pipe(Effect.provide(setup([MockUpstream.parts(["\n\n", "{\"id\":\"x\",\"obj"])]))))

  it.effect("JSON of the wrong shape is MalformedResponse schema, final", () =>
    Effect.gen(function*() {
      const error = yield* failure(create())
      expect(error).toMatchObject({ _tag: "MalformedResponse", reason: "schema" })
      expect(ApiError.classify(error)._tag).toBe("Caller")
    }).pipe(Effect.provide(setup([MockUpstream.json({ id: "x", choices: "none" })]))))

  // Other OpenAI-compatible servers send `usage: null`, or usage without `total_tokens`: the
  // answer was generated (and billed), so it is delivered as sent (a null usage counts unmetered).
  const answerOf = (usage: unknown) => ({
    id: "x",
    object: "chat.completion",
    created: 0,
    model: request.model,
    choices: [{ index: 0, message: { role: "assistant", content: "hello" }, finish_reason: "stop" }],
    usage
  })
  it.effect("an answer with usage null, or usage without total_tokens, is delivered: accounting metadata never fails it", () =>
    Effect.gen(function*() {
      const transport = yield* Transport.Transport
      const withoutUsage = yield* transport.create(request)
      expect(withoutUsage.choices[0]?.message.content).toBe("hello")
      expect(withoutUsage.usage).toBeNull()
      const withoutTotal = yield* transport.create(request)
      expect(withoutTotal.usage).toEqual({ prompt_tokens: 3, completion_tokens: 2 })
      const chunks = yield* Stream.runCollect(transport.stream(request))
      expect(Chunk.toReadonlyArray(chunks).at(-1)?.usage).toEqual({ prompt_tokens: 3, completion_tokens: 2 })
    }).pipe(Effect.provide(setup([
      MockUpstream.json(answerOf(null)),
      MockUpstream.json(answerOf({ prompt_tokens: 3, completion_tokens: 2 })),
      MockUpstream.sse([
        Wire.sseData({ id: "x", object: "chat.completion.chunk", created: 0, model: request.model, choices: [{ index: 0, delta: { content: "hi" }, finish_reason: "stop" }] }),
        Wire.sseData({ id: "x", object: "chat.completion.chunk", created: 0, model: request.model, choices: [], usage: { prompt_tokens: 3, completion_tokens: 2 } }),
        "data: [DONE]\n\n"
      ])
    ]))))

  // LiteLLM and KServe send every unset field as null (`tool_calls: null` in a message, `role: null`
  // in a delta, a tool call's `id` and `name` null in its later pieces); some servers leave out a
  // tool-calling message's `content`; OpenAI's legacy functions API ends with `function_call`.
  const chunkOf = (delta: unknown, finish_reason: string | null = null) =>
    Wire.sseData({ id: "x", object: "chat.completion.chunk", created: 0, model: request.model, choices: [{ index: 0, delta, finish_reason }] })
  it.effect("legal answers of other OpenAI-compatible servers (nulls for unset fields, no content beside tool calls, function_call) are delivered", () =>
    Effect.gen(function*() {
      const transport = yield* Transport.Transport
      const withNulls = yield* transport.create(request)
      expect(withNulls.choices[0]?.message).toMatchObject({ content: "hello", tool_calls: null })
      const toolsOnly = yield* transport.create(request)
      expect(toolsOnly.choices[0]?.message.tool_calls?.[0]?.function.name).toBe("f")
      const legacy = yield* transport.create(request)
      expect(legacy.choices[0]?.finish_reason).toBe("function_call")
      const folded = yield* ChatStream.fold(transport.stream(request))
      expect(folded.choices[0]?.message).toMatchObject({ content: "hi", tool_calls: [{ id: "t1", function: { name: "f", arguments: "{}" } }] })
    }).pipe(Effect.provide(setup([
      MockUpstream.json({ ...answerOf({ prompt_tokens: 3, completion_tokens: 2 }), choices: [{ index: 0, message: { role: "assistant", content: "hello", tool_calls: null, function_call: null }, finish_reason: "stop" }] }),
      MockUpstream.json({
        ...answerOf(null),
        choices: [{ index: 0, message: { role: "assistant", tool_calls: [{ id: "t", type: "function", function: { name: "f", arguments: "{}" } }] }, finish_reason: "tool_calls" }]
      }),
      MockUpstream.json({ ...answerOf(null), choices: [{ index: 0, message: { role: "assistant", content: null, function_call: { name: "f", arguments: "{}" } }, finish_reason: "function_call" }] }),
      MockUpstream.sse([
        chunkOf({ role: "assistant", content: "hi", tool_calls: null }),
        chunkOf({ role: null, tool_calls: [{ index: 0, id: "t1", type: "function", function: { name: "f", arguments: "{" } }] }),
        chunkOf({ role: null, tool_calls: [{ index: 0, id: null, type: null, function: { name: null, arguments: "}" } }] }, "tool_calls"),
        "data: [DONE]\n\n"
      ])
    ]))))

  // vLLM and Ollama may leave out a tool call's `type` or send it null, Azure AI leaves it out,
  // Novita streams `""` after a call's first piece: `function` is the only kind there is.
  it.effect("a tool call whose `type` is missing, null or empty is a function call, not a lost answer", () =>
    Effect.gen(function*() {
      const transport = yield* Transport.Transport
      for (const _ of [1, 2]) {
        const answer = yield* transport.create(request)
        expect(answer.choices[0]?.message.tool_calls).toEqual([{ id: "t", type: "function", function: { name: "f", arguments: "{}" } }])
      }
      const folded = yield* ChatStream.fold(transport.stream(request))
      expect(folded.choices[0]?.message.tool_calls).toEqual([{ id: "t1", type: "function", function: { name: "f", arguments: "{}" } }])
    }).pipe(Effect.provide(setup([
      ...[{}, { type: null }].map((type) =>
        MockUpstream.json({
          ...answerOf(null),
          choices: [{ index: 0, message: { role: "assistant", tool_calls: [{ id: "t", ...type, function: { name: "f", arguments: "{}" } }] }, finish_reason: "tool_calls" }]
        })
      ),
      MockUpstream.sse([
        chunkOf({ role: "assistant", tool_calls: [{ index: 0, id: "t1", type: "function", function: { name: "f", arguments: "{" } }] }),
        chunkOf({ tool_calls: [{ index: 0, type: "", function: { arguments: "}" } }] }, "tool_calls"),
        "data: [DONE]\n\n"
      ])
    ]))))

  // OpenRouter leaves out, for some models, the arguments of a call to a function of no parameters.
  it.effect("a tool call whose `arguments` are missing or null is a call with none (`{}`), not a lost answer", () =>
    Effect.gen(function*() {
      const transport = yield* Transport.Transport
      for (const _ of [1, 2]) {
        const answer = yield* transport.create(request)
        expect(answer.choices[0]?.message.tool_calls).toEqual([{ id: "t", type: "function", function: { name: "now", arguments: "{}" } }])
      }
    }).pipe(Effect.provide(setup(
      [{}, { arguments: null }].map((args) =>
        MockUpstream.json({
          ...answerOf(null),
          choices: [{ index: 0, message: { role: "assistant", tool_calls: [{ id: "t", type: "function", function: { name: "now", ...args } }] }, finish_reason: "tool_calls" }]
        })
      )
    ))))

  it.effect("an empty conversation is refused locally as InvalidRequest: nothing is sent", () =>
    Effect.gen(function*() {
      const history: Array<ChatSchema.Message> = []
      const transport = yield* Transport.Transport
      const error = yield* failure(transport.create({ model: "deepseek-v4-flash", messages: history }))
      expect(error).toMatchObject({ _tag: "InvalidRequest", param: "messages", code: "empty_messages" })
      const streamed = yield* Effect.flip(Stream.runDrain(transport.stream({ model: "deepseek-v4-flash", messages: history })))
      expect(streamed._tag).toBe("InvalidRequest")
      expect(yield* Effect.flatMap(MockUpstream.MockUpstream, (m) => m.requests)).toEqual([])
    }).pipe(Effect.provide(setup([]))))

  it.effect("a 200 whose JSON is an error is UpstreamError", () =>
    Effect.gen(function*() {
      const error = yield* failure(create())
      expect(error).toMatchObject({ _tag: "UpstreamError", type: "server_error", code: "42" })
      expect(error.message).toContain("says no")
    }).pipe(Effect.provide(setup([
      MockUpstream.json({ error: { message: `key ${keys[1]} says no`, type: "server_error", code: 42 } })
    ]))))

  it.effect("vLLM's error body (`object: \"error\"`, its fields at the top) is UpstreamError too", () =>
    Effect.gen(function*() {
      const error = yield* failure(create())
      expect(error).toMatchObject({ _tag: "UpstreamError", type: "BadRequestError", code: "400", message: "prompt too long" })
    }).pipe(Effect.provide(setup([
      MockUpstream.json({ object: "error", message: "prompt too long", type: "BadRequestError", param: null, code: 400 })
    ]))))

  it.effect("finish_reason insufficient_system_resource is InsufficientResource with the partial", () =>
    Effect.gen(function*() {
      const error = yield* failure(create())
      expect(error._tag).toBe("InsufficientResource")
      expect(error).toMatchObject({
        partial: {
          content: generation.content,
          reasoningContent: generation.reasoningContent,
          usage: generation.usage,
          finishReason: "insufficient_system_resource"
        }
      })
    }).pipe(Effect.provide(setup([MockUpstream.completion(cutGeneration)]))))

  it.effect("a body broken mid-way is TransportError body: an outage once its JSON began, closed while queued before", () =>
    Effect.gen(function*() {
      const midJson = yield* failure(create())
      expect(midJson).toMatchObject({ _tag: "TransportError", reason: "body", partial: { events: 1 } })
      expect(ApiError.classify(midJson)).toEqual(ApiError.outage())
      const whileQueued = yield* failure(create())
      expect(whileQueued).toMatchObject({ _tag: "TransportError", reason: "body", partial: { events: 0 } })
      expect(ApiError.classify(whileQueued)).toEqual(ApiError.loadShed(Option.none(), "overload"))
    }).pipe(Effect.provide(setup([
      MockUpstream.parts(["\n", "{\"id\":"], { cut: true }),
      MockUpstream.parts(["\n", "\n"], { cut: true })
    ]))))
})

describe("Transport status mapping", () => {
  const cases: ReadonlyArray<{
    readonly name: string
    readonly reply: MockUpstream.Reply
    readonly expected: Record<string, unknown>
    readonly verdict: ApiError.Verdict["_tag"]
    readonly retryAfter?: Duration.DurationInput
  }> = [
    {
      name: "400",
      reply: echoKeyBody(400, "invalid_request_error"),
      expected: { _tag: "InvalidRequest", status: 400, param: "messages", code: "bad_thing" },
      verdict: "Caller"
    },
    {
      name: "422",
      reply: echoKeyBody(422, "invalid_request_error"),
      expected: { _tag: "InvalidRequest", status: 422 },
      verdict: "Caller"
    },
    { name: "402", reply: echoKeyBody(402, "payment"), expected: { _tag: "InsufficientBalance", status: 402 }, verdict: "Account" },
    {
      name: "429 insufficient_quota (OpenAI's out of credits): out of balance, not a rate limit",
      reply: MockUpstream.status(429, {
        body: { error: { message: "You exceeded your current quota", type: "insufficient_quota", code: "insufficient_quota" } }
      }),
      expected: { _tag: "InsufficientBalance", message: "You exceeded your current quota" },
      verdict: "Account"
    },
    {
      name: "400 echoing the key in its type, param and code too (code reaches batch output): every field scrubbed",
      reply: MockUpstream.status(400, { body: { error: { message: "no", type: `t ${keys[0]}`, param: keys[0], code: `bad ${keys[0]}` } } }),
      expected: { _tag: "InvalidRequest", status: 400, code: "bad sk-***" },
      verdict: "Caller"
    },
    {
      name: "429 with an empty retry-after-ms: Retry-After counts",
      reply: MockUpstream.status(429, { headers: { "retry-after-ms": "", "retry-after": "9" } }),
      expected: { _tag: "RateLimited" },
      verdict: "LoadShed",
      retryAfter: Duration.seconds(9)
    },
    {
      name: "429 with retry-after-ms",
      reply: MockUpstream.status(429, { headers: { "retry-after-ms": "1500", "retry-after": "9" } }),
      expected: { _tag: "RateLimited" },
      verdict: "LoadShed",
      retryAfter: Duration.millis(1500)
    },
    {
      name: "429 with no Retry-After and OpenAI's rate-limit headers: the reset of the spent limit (the longer when both are)",
      reply: MockUpstream.status(429, {
        headers: {
          "x-ratelimit-remaining-requests": "0",
          "x-ratelimit-reset-requests": "1m2.5s",
          "x-ratelimit-remaining-tokens": "0",
          "x-ratelimit-reset-tokens": "20ms"
        }
      }),
      expected: { _tag: "RateLimited" },
      verdict: "LoadShed",
      retryAfter: Duration.millis(62_500)
    },
    {
      name: "429 with OpenAI's rate-limit headers, none spent: no wait is asked",
      reply: MockUpstream.status(429, {
        headers: { "x-ratelimit-remaining-requests": "12", "x-ratelimit-reset-requests": "3s", "x-ratelimit-remaining-tokens": "5000" }
      }),
      expected: { _tag: "RateLimited" },
      verdict: "LoadShed"
    },
    {
      name: "429 with Retry-After seconds",
      reply: MockUpstream.status(429, { headers: { "Retry-After": "7" } }),
      expected: { _tag: "RateLimited" },
      verdict: "LoadShed",
      retryAfter: Duration.seconds(7)
    },
    {
      name: "503 with an HTTP date (relative to the Clock, here 0)",
      reply: MockUpstream.status(503, { headers: { "retry-after": new Date(30_000).toUTCString() } }),
      expected: { _tag: "ServerError", status: 503 },
      verdict: "LoadShed",
      retryAfter: Duration.seconds(30)
    },
    {
      name: "429 with an HTTP date read against its own Date header, not the Clock (the server's clock may differ)",
      reply: MockUpstream.status(429, {
        headers: { "retry-after": new Date(1_800_000_002_000).toUTCString(), date: new Date(1_800_000_000_000).toUTCString() }
      }),
      expected: { _tag: "RateLimited" },
      verdict: "LoadShed",
      retryAfter: Duration.seconds(2)
    },
    { name: "500", reply: echoKeyBody(500, "server_error"), expected: { _tag: "ServerError", status: 500 }, verdict: "Outage" },
    {
      name: "404 with an API error (a model the server does not know): the caller's",
      reply: MockUpstream.status(404, { body: { error: { message: "no such model", code: "model_not_found" } } }),
      expected: { _tag: "UnexpectedStatus", status: 404, endpointMissing: false },
      verdict: "Caller"
    },
    {
      name: "404 that is no API error: no chat endpoint at the account's base URL",
      reply: MockUpstream.status(404),
      expected: { _tag: "UnexpectedStatus", status: 404, endpointMissing: true },
      verdict: "Account"
    },
    {
      name: "413: the request is too large for the server, the caller's to fix",
      reply: MockUpstream.status(413, { body: { error: { message: "request entity too large" } } }),
      expected: { _tag: "InvalidRequest", status: 413, message: "request entity too large" },
      verdict: "Caller"
    },
    { name: "409", reply: MockUpstream.status(409), expected: { _tag: "UnexpectedStatus", status: 409 }, verdict: "Outage" }
  ]

  for (const { expected, name, reply, retryAfter, verdict } of cases) {
    it.effect(name, () =>
      Effect.gen(function*() {
        const error = yield* failure(create())
        expect(error).toMatchObject(expected)
        expect(ApiError.classify(error)._tag).toBe(verdict)
        if ("retryAfter" in error) {
          expect(error.retryAfter).toEqual(retryAfter === undefined ? Option.none() : Option.some(Duration.decode(retryAfter)))
        }
      }).pipe(Effect.provide(setup([reply]))))
  }

  it.effect("an unparsable Retry-After is ignored", () =>
    Effect.gen(function*() {
      const error = yield* failure(create())
      expect(error).toMatchObject({ _tag: "RateLimited", retryAfter: Option.none() })
    }).pipe(Effect.provide(setup([MockUpstream.status(429, { headers: { "retry-after": "soon" } })]))))

  // `String` throws on an object whose `toString` is not a function: nothing may format it.
  it.effect("an error body with a hostile message (a toString that is not a function) becomes the message, not a defect", () =>
    Effect.gen(function*() {
      const error = yield* failure(create())
      expect(error).toMatchObject({ _tag: "InvalidRequest", status: 400 })
      expect(error.message).toContain("toString")
    }).pipe(Effect.provide(setup([MockUpstream.status(400, { body: '{"error":{"message":{"toString":0}}}' })]))))

  // Effect's formatter names an object by its `constructor.name`, which this one makes throw.
  const hostileAnswer = { id: "x", object: "o", created: 0, model: "m", choices: { constructor: { name: { toString: 0 } } } }
  it.effect("a 200 body the schema refuses, shaped so that formatting it throws, is MalformedResponse, not a defect", () =>
    Effect.gen(function*() {
      const created = yield* failure(create())
      expect(created).toMatchObject({ _tag: "MalformedResponse", reason: "schema" })
      expect(created.message).toContain("does not match the expected shape (its value cannot be shown)")
      const { error } = yield* drain()
      expect(error).toMatchObject({ _tag: "MalformedResponse", reason: "schema" })
    }).pipe(Effect.provide(setup([MockUpstream.json(hostileAnswer), MockUpstream.sse([Wire.sseData(hostileAnswer)])]))))

  it.effect("a 404 that is no API error says the base URL leads to no chat endpoint; one that is keeps the API's message", () =>
    Effect.gen(function*() {
      const hint = "(no chat completions endpoint at https://upstream.test/chat/completions: check the account's base URL)"
      const empty = yield* failure(create())
      const page = yield* failure(create())
      const api = yield* failure(create())
      expect([empty.message, page.message, api.message])
        .toEqual([`HTTP 404 ${hint}`, `<html>Not Found</html> ${hint}`, "The model `x` does not exist"])
      // The account's base URL is wrong, not the request: an account pool fails over.
      expect([empty, page, api].map(ApiError.classify)).toEqual([ApiError.account, ApiError.account, ApiError.caller])
    }).pipe(Effect.provide(setup([
      MockUpstream.status(404),
      MockUpstream.status(404, { body: "<html>Not Found</html>" }),
      MockUpstream.status(404, { body: { error: { message: "The model `x` does not exist", code: "model_not_found" } } })
    ]))))

  it.effect("a non-JSON error body becomes the message, scrubbed", () =>
    Effect.gen(function*() {
      const error = yield* failure(create())
      expect(error).toMatchObject({ _tag: "ServerError", status: 502 })
      expect(error.message).toContain("Bad gateway")
    }).pipe(Effect.provide(setup([MockUpstream.status(502, { body: `<html>Bad gateway for ${keys[0]}</html>` })]))))
})

describe("Transport scrubs the key it sent from what an error quotes of the reply", () => {
  // Other providers' keys need not look like `sk-…`: the shape-based scrub misses these.
  const shapeless = ["gsk_Zq81LmN0pQ7rS2tU4vW6xY8zA1bC3dE5", "AIzaSyD-1234567890abcdefghijklmnopqrs"]
  const echoed = (key: string) => `Incorrect API key provided: ${key}; or ${key.slice(0, 12)}****${key.slice(-12)}`
  const expectScrubbed = (error: ApiError.ApiError, key: string) => {
    const shown = [String(error), JSON.stringify(error), error.message].join("\n")
    expect(shown).toContain("Incorrect API key provided")
    expect(shown).not.toContain(key.slice(0, 12))
    expect(shown).not.toContain(key.slice(-12))
  }
  for (const key of shapeless) {
    const refusals = [400, 401, 429, 500].map((status) =>
      [`a ${status}`, MockUpstream.status(status, { body: { error: { message: echoed(key) } } })] as const
    )
    // A 200 may quote it too: an error envelope, a page that is not the API's.
    const answers = [
      ["a 200 error envelope", MockUpstream.json({ error: { message: echoed(key) } })],
      ["a 200 page", MockUpstream.parts([`<html>${echoed(key)}</html>`], { headers: { "content-type": "text/html" } })]
    ] as const
    for (const [name, reply] of [...refusals, ...answers]) {
      it.effect(`${key.slice(0, 4)}… echoed, whole or partly masked, in ${name}`, () =>
        Effect.gen(function*() {
          expectScrubbed(yield* Effect.flip(create()), key)
        }).pipe(Effect.provide(setup([reply], undefined, [key]))))
    }
    it.effect(`${key.slice(0, 4)}… echoed in a stream's error event`, () =>
      Effect.gen(function*() {
        const { error } = yield* drain()
        expectScrubbed(error!, key)
      }).pipe(Effect.provide(setup(
        [MockUpstream.sse([...MockUpstream.events(generation).slice(0, 2), Wire.sseData({ error: { message: echoed(key) } })])],
        undefined,
        [key]
      ))))
    it.effect(`${key.slice(0, 4)}… where the cut of a page quoted in the message runs through it`, () =>
      Effect.gen(function*() {
        const { message } = yield* Effect.flip(create())
        expect(message).toMatch(/^x{492} /)
        expect(message).not.toContain(key.slice(0, 7))
      }).pipe(Effect.provide(setup([MockUpstream.status(502, { body: `${"x".repeat(492)} ${key}` })], undefined, [key]))))
  }
})

describe("Transport layers and spans", () => {
  it.effect("layerConfig reads the base URL and comma-separated keys from the environment", () =>
    Effect.gen(function*() {
      yield* create()
      const sent = yield* Effect.flatMap(MockUpstream.MockUpstream, (m) => m.requests)
      expect(sent.map((r) => r.url)).toEqual(Array(2).fill("https://config.test/v1/chat/completions"))
      expect(sent.map((r) => r.bearer && Redacted.value(r.bearer))).toEqual(keys)
    }).pipe(Effect.provide(
      Transport.layerConfig.pipe(
        Layer.provideMerge(MockUpstream.layer([echoKeyBody(401, "authentication_error"), MockUpstream.completion(generation)])),
        Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map([
          ["DEEPSEEK_BASE_URL", "https://config.test/v1/"],
          ["DEEPSEEK_API_KEY", ` ${keys[0]}, ${keys[1]} `]
        ]))))
      )
    )))

  it.effect("a deadline of zero is refused, the layer's as it is made and a call's as it starts: it would cut every call at once", () =>
    Effect.gen(function*() {
      const squashed = (exit: Exit.Exit<unknown, unknown>) => Exit.isFailure(exit) && Cause.squash(exit.cause)
      const made = yield* Effect.exit(Transport.make({ baseUrl: "https://api.example.com", deadlines: { idle: "0 seconds" } }).pipe(
        Effect.provide(MockUpstream.layer([])),
        Effect.provide(KeyPool.layer([Redacted.make("sk-a")]))
      ))
      expect(squashed(made)).toMatchObject({ _tag: "IllegalArgumentException", message: 'Transport: deadlines.idle must be a positive duration, got "0 seconds"' })
      const call = yield* Effect.exit(Effect.flatMap(Transport.Transport, (transport) =>
        transport.create(request, { deadlines: { total: "0 millis", firstContent: "-1 seconds" } })).pipe(
          Effect.provide(Transport.layer({ baseUrl: "https://api.example.com" })),
          Effect.provide(MockUpstream.layer([])),
          Effect.provide(KeyPool.layer([Redacted.make("sk-a")]))
        ))
      expect(squashed(call)).toMatchObject({
        _tag: "IllegalArgumentException",
        // As given: a negative duration decodes to 0, which the caller did not write.
        message: 'Transport call: deadlines.firstContent must be a positive duration, got "-1 seconds"; ' +
          'deadlines.total must be a positive duration, got "0 millis"'
      })
    }))

  it.effect("a base URL with credentials, a query or no http(s) is refused, from options or the environment, never quoted", () =>
    Effect.gen(function*() {
      const secret = "https://user:sk-secret@api.example.com"
      // Credentials would have reached every span as url.full.
      const exit = yield* Effect.exit(Transport.make({ baseUrl: secret }).pipe(
        Effect.provide(MockUpstream.layer([])),
        Effect.provide(KeyPool.layer([Redacted.make("sk-a")]))
      ))
      expect(Exit.isFailure(exit) && Cause.squash(exit.cause)).toMatchObject({
        _tag: "IllegalArgumentException",
        message: "Transport: baseUrl: expected an http(s) URL without credentials (user:password@): keys are given apart from it"
      })
      for (const [baseUrl, message] of [
        [secret, "expected an http(s) URL without credentials (user:password@): keys are given apart from it"],
        ["https://api.example.com/?key=sk-secret", "expected an http(s) URL without a ?query or #fragment: /chat/completions is appended to it"],
        ["api.example.com", `expected an http(s) URL such as https://api.deepseek.com, got "api.example.com"`],
        // The endpoint pasted whole: every call went to /chat/completions/chat/completions, a 404.
        ["https://api.example.com/v1/chat/completions", "expected the API's base URL, not its chat endpoint: /chat/completions is appended to it; leave it out"],
        // An env file's line that ends in a space: the host became "api.example.com " in every call's URL.
        ["https://api.example.com/v1 ", "expected an http(s) URL with no space in or around it (a line of an env file may end in one)"],
        ["http://127.0.0.1:8080 ", "expected an http(s) URL with no space in or around it (a line of an env file may end in one)"]
      ] as const) {
        const error = yield* Effect.flip(Layer.build(Transport.layerConfig).pipe(
          Effect.provide(MockUpstream.layer([])),
          Effect.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["DEEPSEEK_BASE_URL", baseUrl], ["DEEPSEEK_API_KEY", "sk-a"]])))),
          Effect.scoped
        ))
        expect(String(error)).toContain(message)
        expect(String(error)).not.toContain("sk-secret")
      }
    }))

  /** A tracer that makes Effect's own spans: a tracer is installed, so the transport makes its spans. */
  const builtIn = Context.get(DefaultServices.liveServices, Tracer.Tracer)
  const installed = Tracer.make({ span: (...args) => builtIn.span(...args), context: (f) => f() })

  it.effect("with a tracer installed, a call runs in a weatherproof.Transport span that carries the model and no key", () =>
    Effect.gen(function*() {
      const seen: Array<Tracer.AnySpan> = []
      const onFirstContent = () => Effect.map(Effect.currentSpan, (span) => void seen.push(span)).pipe(Effect.orDie)
      yield* create({ onFirstContent })
      yield* drain({ onFirstContent })
      expect(seen.map((span) => span._tag === "Span" && span.name)).toEqual([
        "weatherproof.Transport.create",
        "weatherproof.Transport.stream"
      ])
      for (const span of seen) {
        const attributes = span._tag === "Span" ? Object.fromEntries(span.attributes) : {}
        expect(attributes).toEqual({ model: request.model })
      }
    }).pipe(Effect.provide(setup([MockUpstream.completion(generation), MockUpstream.streamed(generation)])), Effect.withTracer(installed)))

  it.effect("with Effect's built-in tracer, which exports nowhere, a call makes no span", () =>
    Effect.gen(function*() {
      const seen: Array<Option.Option<Tracer.AnySpan>> = []
      const onFirstContent = () => Effect.map(Effect.option(Effect.currentSpan), (span) => void seen.push(span))
      yield* create({ onFirstContent })
      yield* drain({ onFirstContent })
      expect(seen).toEqual([Option.none(), Option.none()])
    }).pipe(Effect.provide(setup([MockUpstream.completion(generation), MockUpstream.streamed(generation)]))))
})

describe("Transport keys", () => {
  it.effect("a 401 drops the key and the call goes on with the next one", () =>
    Effect.gen(function*() {
      const completion = yield* create()
      expect(completion.id).toBe(generation.id)
      const sent = yield* Effect.flatMap(MockUpstream.MockUpstream, (m) => m.requests)
      expect(sent.map((r) => r.bearer && Redacted.value(r.bearer))).toEqual(keys)
      expect(yield* Effect.flatMap(KeyPool.KeyPool, (pool) => pool.available)).toBe(1)
    }).pipe(Effect.provide(setup([echoKeyBody(401, "authentication_error"), MockUpstream.completion(generation)]))))

  it.effect("all keys rejected: KeyRejected for that call, then NoUsableKey without a request", () =>
    Effect.gen(function*() {
      const rejected = yield* failure(create())
      expect(rejected).toMatchObject({ _tag: "KeyRejected", keyId: "key#2", status: 401 })
      const none = yield* failure(create())
      expect(none).toMatchObject({ _tag: "NoUsableKey", rejected: 2 })
      const streamed = yield* drain()
      expect(streamed.error).toMatchObject({ _tag: "NoUsableKey" })
      expect((yield* Effect.flatMap(MockUpstream.MockUpstream, (m) => m.requests)).length).toBe(2)
    }).pipe(Effect.provide(setup([echoKeyBody(401, "authentication_error"), echoKeyBody(401, "authentication_error")]))))
})

describe("Transport key rotation with keys that come back", () => {
  // A pool whose rejected key is usable again at once, as after a cooldown: one call must
  // still try each key once, not loop.
  const forgivingPool = Layer.succeed(KeyPool.KeyPool, {
    acquire: Effect.succeed({ id: "key#1", key: Redacted.make(keys[0]!) }),
    reject: () => Effect.void,
    available: Effect.succeed(1),
    cooldownEnd: Effect.succeedNone,
    resting: Effect.succeed([])
  })
  const alwaysRejected: MockUpstream.Script = () => echoKeyBody(401, "authentication_error")

  it.effect("a key refused once is not tried again within the same call", () =>
    Effect.gen(function*() {
      const rejected = yield* failure(create())
      expect(rejected).toMatchObject({ _tag: "KeyRejected", keyId: "key#1" })
      expect((yield* Effect.flatMap(MockUpstream.MockUpstream, (m) => m.requests)).length).toBe(1)
    }).pipe(
      Effect.provide(
        Transport.layer({ baseUrl: "https://upstream.test/" }).pipe(
          Layer.provideMerge(Layer.merge(MockUpstream.layer(alwaysRejected), forgivingPool))
        )
      )
    ))
})

describe("Transport stale connections", () => {
  it.effect("a connection dropped before any status is retried once, silently", () =>
    Effect.gen(function*() {
      const completion = yield* create()
      expect(completion.id).toBe(generation.id)
      expect((yield* Effect.flatMap(MockUpstream.MockUpstream, (m) => m.requests)).length).toBe(2)
    }).pipe(Effect.provide(setup([MockUpstream.drop(), MockUpstream.completion(generation)]))))

  it.effect("two drops are a TransportError", () =>
    Effect.gen(function*() {
      const error = yield* failure(create())
      expect(error).toMatchObject({ _tag: "TransportError", reason: "request" })
      expect(ApiError.classify(error)._tag).toBe("Outage")
      expect(error.message).toContain("other side closed")
    }).pipe(Effect.provide(setup([MockUpstream.drop(), MockUpstream.drop(), MockUpstream.completion(generation)]))))

  it.effect("staleConnectionRetries: 0 turns off the silent retry", () =>
    Effect.gen(function*() {
      const error = yield* failure(create())
      expect(error).toMatchObject({ _tag: "TransportError", reason: "request" })
    }).pipe(Effect.provide(setup([MockUpstream.drop(), MockUpstream.completion(generation)], {
      staleConnectionRetries: 0
    }))))
})

describe("Transport.stream", () => {
  it.effect("skips keep-alive comments and forces stream options", () =>
    Effect.gen(function*() {
      const transport = yield* Transport.Transport
      const chunks = yield* Stream.runCollect(transport.stream({
        ...request,
        stream: false,
        stream_options: { include_usage: false, other: 1 } as { include_usage: boolean }
      }))
      expect(contentOf(Chunk.toReadonlyArray(chunks))).toBe(generation.content)
      expect(Chunk.toReadonlyArray(chunks).at(-1)?.usage).toEqual(generation.usage)
      const [sent] = yield* Effect.flatMap(MockUpstream.MockUpstream, (m) => m.requests)
      expect(sent?.body).toMatchObject({ stream: true, stream_options: { include_usage: true, other: 1 } })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([
        Wire.sseKeepAlive,
        ":keep-alive\r\n\r\n",
        ...MockUpstream.events(generation).flatMap((part) => [part, { text: ": keep-alive\n\n" }])
      ])
    ]))))

  it.effect("a stream without [DONE] is StreamTruncated carrying what arrived", () =>
    Effect.gen(function*() {
      const { chunks, error } = yield* drain()
      expect(contentOf(chunks)).toBe(generation.content)
      expect(error?._tag).toBe("StreamTruncated")
      expectNoSecret(error)
      expect(error).toMatchObject({
        partial: {
          content: generation.content,
          reasoningContent: generation.reasoningContent,
          usage: generation.usage,
          finishReason: "stop",
          events: Wire.chunks(generation).length
        }
      })
    }).pipe(Effect.provide(setup([MockUpstream.streamed(generation, { done: false })]))))

  it.effect("a connection broken mid-stream is TransportError body with the partial", () =>
    Effect.gen(function*() {
      const { error } = yield* drain()
      expect(error).toMatchObject({ _tag: "TransportError", reason: "body", partial: { events: 3 } })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse(MockUpstream.events(generation).slice(0, 3), { cut: true })
    ]))))

  it.effect("an in-stream error event is UpstreamError after the chunks before it", () =>
    Effect.gen(function*() {
      const { chunks, error } = yield* drain()
      expect(chunks.length).toBe(2)
      expect(error).toMatchObject({ _tag: "UpstreamError", type: "overloaded", partial: { events: 2 } })
      expectNoSecret(error)
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([
        ...MockUpstream.events(generation).slice(0, 2),
        Wire.sseData({ error: { message: `overloaded, ${keys[0]}`, type: "overloaded" } }),
        ...MockUpstream.events(generation).slice(2)
      ])
    ]))))

  it.effect("an event of the wrong shape mid-stream fails it with what was delivered before (its content was billed)", () =>
    Effect.gen(function*() {
      const { chunks, error } = yield* drain()
      expect(chunks.length).toBe(2)
      expect(error).toMatchObject({ _tag: "MalformedResponse", reason: "schema", partial: { events: 2 } })
      expect(ApiError.deliveredOutput(error!)).toBe(true)
      expect(ApiError.partialOf(error!).content).toBe(contentOf(chunks))
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([...MockUpstream.events(generation).slice(0, 2), Wire.sseData({ choices: "none" })])
    ]))))

  it.effect("OpenRouter's mid-stream error (a chunk whose choice ends with finish_reason \"error\", the error beside it) is UpstreamError with the partial", () =>
    Effect.gen(function*() {
      const { chunks, error } = yield* drain()
      expect(chunks.length).toBe(2)
      expect(error).toMatchObject({ _tag: "UpstreamError", code: "502", message: "Provider disconnected", partial: { events: 2 } })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([
        ...MockUpstream.events(generation).slice(0, 2),
        Wire.sseData({
          id: generation.id,
          object: "chat.completion.chunk",
          created: 0,
          model: generation.model,
          error: { code: 502, message: "Provider disconnected" },
          choices: [{ index: 0, delta: { content: "" }, finish_reason: "error" }]
        })
      ])
    ]))))

  const chunkOf = (choices: ChatSchema.ChatCompletionChunk["choices"], usage?: ChatSchema.Usage): ChatSchema.ChatCompletionChunk => ({
    id: generation.id,
    object: "chat.completion.chunk",
    created: 0,
    model: generation.model,
    choices,
    ...(usage === undefined ? {} : { usage })
  })
  const cutChunks = Wire.chunks(cutGeneration)
  const cutAt = cutChunks.findIndex((c) => c.choices[0]?.finish_reason === "insufficient_system_resource")
  const cutPartial = {
    content: generation.content,
    reasoningContent: generation.reasoningContent,
    finishReason: "insufficient_system_resource"
  }

  it.effect("insufficient_system_resource after delivered chunks emits its own chunk and the usage billed after it, then fails with the partial", () =>
    Effect.gen(function*() {
      const { chunks, error } = yield* drain()
      expect(chunks).toEqual(cutChunks)
      expect(error).toMatchObject({
        _tag: "InsufficientResource",
        partial: { ...cutPartial, usage: generation.usage, events: cutAt + 2 }
      })
    }).pipe(Effect.provide(setup([MockUpstream.streamed(cutGeneration)]))))

  const roleChunk = chunkOf([{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }])

  it.effect("a stream cut after its opening chunk only (a role, no content) reaches the caller with no chunk, so it can be retried", () =>
    Effect.gen(function*() {
      const cutAfterRole = yield* drain()
      expect(cutAfterRole.chunks).toEqual([])
      expect(cutAfterRole.error).toMatchObject({ _tag: "InsufficientResource", partial: { content: "", usage: generation.usage } })
      const resetAfterRole = yield* drain()
      expect(resetAfterRole.chunks).toEqual([])
      expect(resetAfterRole.error).toMatchObject({ _tag: "TransportError", reason: "body" })
      // An answer that ends with nothing but its opening chunk gets it.
      expect(yield* drain()).toEqual({ chunks: [roleChunk], error: undefined })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([
        Wire.sseData(roleChunk),
        Wire.sseData(chunkOf([{ index: 0, delta: { content: "" }, finish_reason: "insufficient_system_resource" }])),
        Wire.sseData(chunkOf([], generation.usage)),
        Wire.sseDone
      ]),
      MockUpstream.sse([Wire.sseData(roleChunk)], { cut: true }),
      MockUpstream.sse([Wire.sseData(roleChunk), Wire.sseDone])
    ]))))

  it.effect("a cut whose chunk carries content: the fold of what reached the caller agrees with the partial, usage and finish reason included", () =>
    Effect.gen(function*() {
      const transport = yield* Transport.Transport
      const { completion, error } = yield* ChatStream.foldPartial(transport.stream(request))
      expect(completion.choices[0]).toMatchObject({ message: { content: "Hello" }, finish_reason: "insufficient_system_resource" })
      expect(completion.usage).toEqual(generation.usage)
      expect(Option.getOrUndefined(error)).toMatchObject({
        _tag: "InsufficientResource",
        partial: { content: "Hello", usage: generation.usage, finishReason: "insufficient_system_resource", events: 3 }
      })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([
        Wire.sseData(chunkOf([{ index: 0, delta: { content: "Hel" }, finish_reason: null }])),
        Wire.sseData(chunkOf([{ index: 0, delta: { content: "lo" }, finish_reason: "insufficient_system_resource" }])),
        Wire.sseData(chunkOf([], generation.usage)),
        Wire.sseDone
      ].map((text) => ({ text })))
    ]))))

  it.effect("a cut before anything reached the caller is kept back, its chunk and usage too: the call can be retried as if nothing arrived", () =>
    Effect.gen(function*() {
      const { chunks, error } = yield* drain()
      expect(chunks).toEqual([])
      expect(error).toMatchObject({ _tag: "InsufficientResource", partial: { content: "Hel", usage: generation.usage } })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([
        Wire.sseData(chunkOf([{ index: 0, delta: { content: "Hel" }, finish_reason: "insufficient_system_resource" }])),
        Wire.sseData(chunkOf([], generation.usage)),
        Wire.sseDone
      ].map((text) => ({ text })))
    ]))))

  it.effect("a cut of any choice (n > 1) is InsufficientResource, as in a non-streaming answer", () =>
    Effect.gen(function*() {
      const { error } = yield* drain()
      expect(error).toMatchObject({ _tag: "InsufficientResource", partial: { content: "a", finishReason: "insufficient_system_resource" } })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([
        Wire.sseData(chunkOf([
          { index: 0, delta: { content: "a" }, finish_reason: "stop" },
          { index: 1, delta: { content: "b" }, finish_reason: "insufficient_system_resource" }
        ])),
        Wire.sseDone
      ].map((text) => ({ text })))
    ]))))

  for (
    const [name, done] of [
      ["a [DONE] whose line end never came ends the stream, not a truncation", "data: [DONE]"],
      ["a [DONE] with spaces or a tab about it ends the stream", "data:  [DONE] \t\n\n"]
    ] as const
  ) {
    it.effect(name, () =>
      Effect.gen(function*() {
        const { chunks, error } = yield* drain()
        expect(chunks).toEqual(Wire.chunks(generation))
        expect(error).toBeUndefined()
      }).pipe(Effect.provide(setup([MockUpstream.sse([...MockUpstream.events(generation, { done: false }), { text: done }])]))))
  }

  it.effect("the second a cut stream is read on for its usage starts as the consumer asks for more: a slow consumer keeps it", () =>
    Effect.gen(function*() {
      const transport = yield* Transport.Transport
      let seen = 0
      const consumed = transport.stream(request).pipe(
        // 2 s on the last chunk before the cut (a slow client behind the gateway).
        Stream.tap(() => ++seen === cutAt ? Effect.sleep("2 seconds") : Effect.void),
        Stream.runDrain,
        Effect.flip
      )
      const fiber = yield* Effect.fork(consumed)
      yield* TestClock.adjust("3 seconds")
      expect(yield* Fiber.join(fiber)).toMatchObject({ _tag: "InsufficientResource", partial: { ...cutPartial, usage: generation.usage } })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([
        // Up to the cut at once; the usage 10 ms later.
        { text: MockUpstream.events(cutGeneration, { done: false }).slice(0, cutAt + 1).map((part) => part.text).join("") },
        { delay: "10 millis", text: MockUpstream.events(cutGeneration, { done: false })[cutAt + 1]!.text },
        { text: Wire.sseDone }
      ])
    ]))))

  it.effect("insufficient_system_resource with no usage and no [DONE] after it is InsufficientResource, not a truncation", () =>
    Effect.gen(function*() {
      const { error } = yield* drain()
      expect(error).toMatchObject({ _tag: "InsufficientResource", partial: { ...cutPartial, usage: undefined, events: cutAt + 1 } })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse(MockUpstream.events(cutGeneration, { done: false }).slice(0, cutAt + 1))
    ]))))

  it.effect("insufficient_system_resource followed by silence fails a second later, not after the idle deadline", () =>
    Effect.gen(function*() {
      const drained = yield* Effect.fork(drain())
      yield* TestClock.adjust("999 millis")
      expect(drained.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 millis")
      const { error } = yield* Fiber.join(drained)
      expect(error).toMatchObject({ _tag: "InsufficientResource", partial: { ...cutPartial, events: cutAt + 1 } })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([
        ...MockUpstream.events(cutGeneration, { done: false }).slice(0, cutAt + 1),
        { delay: "10 minutes", text: Wire.sseDone }
      ])
    ]))))

  it.effect("an undecodable event is MalformedResponse schema", () =>
    Effect.gen(function*() {
      const { chunks, error } = yield* drain()
      expect(chunks.length).toBe(2)
      expect(error).toMatchObject({ _tag: "MalformedResponse", reason: "schema" })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([...MockUpstream.events(generation).slice(0, 2), Wire.sseData({ id: 1 }), Wire.sseDone])
    ]))))

  it.effect("an error status fails the stream with the mapped error", () =>
    Effect.gen(function*() {
      const { chunks, error } = yield* drain()
      expect(chunks).toEqual([])
      expect(error).toMatchObject({ _tag: "RateLimited", retryAfter: Option.some(Duration.seconds(2)) })
    }).pipe(Effect.provide(setup([MockUpstream.status(429, { headers: { "retry-after": "2" } })]))))

  it.effect("a body that lingers after [DONE] still ends the stream cleanly", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(drain())
      yield* TestClock.adjust("1 second")
      const { chunks, error } = yield* Fiber.join(fiber)
      expect(error).toBeUndefined()
      expect(contentOf(chunks)).toBe(generation.content)
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([...MockUpstream.events(generation), { delay: "1 hour", text: Wire.sseKeepAlive }])
    ]))))

  it.effect("a dropped connection is retried for streams too", () =>
    Effect.gen(function*() {
      const { chunks, error } = yield* drain()
      expect(error).toBeUndefined()
      expect(contentOf(chunks)).toBe(generation.content)
    }).pipe(Effect.provide(setup([MockUpstream.drop(), MockUpstream.streamed(generation)]))))
})

/** Keep-alive comments every 30 s for an hour: a queued request that never gets scheduled. */
const keepAlivesForAnHour = Array.from({ length: 120 }, (): MockUpstream.Part => ({ delay: "30 seconds", text: Wire.sseKeepAlive }))

describe("Transport deadlines (TestClock)", () => {
  it.effect("first content: fires at 10 minutes while keep-alives flow", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(drain())
      yield* TestClock.adjust("599 seconds")
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
      yield* TestClock.adjust("1 second")
      const { error } = yield* Fiber.join(fiber)
      expect(error).toMatchObject({ _tag: "DeadlineExceeded", reason: "first_content", partial: { events: 0 } })
      expect(error && "after" in error && Duration.toMinutes(error.after)).toBe(10)
    }).pipe(Effect.provide(setup([MockUpstream.sse(keepAlivesForAnHour)]))))

  it.effect("idle: a stream whose keep-alive comments stop before its first content is stuck: it fails 120 s after the last one", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(drain())
      yield* TestClock.adjust("149 seconds")
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
      yield* TestClock.adjust("1 second")
      expect(Option.isSome(yield* Fiber.poll(fiber))).toBe(true)
      const { error } = yield* Fiber.join(fiber)
      expect(error).toMatchObject({ _tag: "DeadlineExceeded", reason: "idle", partial: { events: 0 } })
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([{ delay: "30 seconds", text: Wire.sseKeepAlive }, ...MockUpstream.events(generation, { delay: "1 hour" })])
    ]))))

  // A non-streaming answer's content comes whole once generated: 12 minutes of blank lines, then its JSON.
  const generatedFor12Minutes = MockUpstream.parts([
    ...Array.from({ length: 24 }, (): MockUpstream.Part => ({ delay: "30 seconds", text: "\n" })),
    JSON.stringify(Wire.completion(generation))
  ])

  it.effect("first content: a non-streaming answer, once accepted, is not cut by it (its content comes at the end): total bounds it", () =>
    Effect.gen(function*() {
      const answered = yield* Effect.fork(create())
      yield* TestClock.adjust("12 minutes")
      expect((yield* Fiber.join(answered)).choices[0]?.message.content).toBe(generation.content)
    }).pipe(Effect.provide(setup([generatedFor12Minutes]))))

  it.effect("idle: a non-streaming answer whose keep-alive blank lines stop is stuck: it fails 120 s after the last one", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(Effect.flip(create()))
      yield* TestClock.adjust("149 seconds")
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
      yield* TestClock.adjust("1 second")
      expect(Option.isSome(yield* Fiber.poll(fiber))).toBe(true)
      const error = yield* Fiber.join(fiber)
      expect(error).toMatchObject({ _tag: "DeadlineExceeded", reason: "idle", partial: { events: 0 } })
      expect(error._tag === "DeadlineExceeded" && Duration.toSeconds(error.after)).toBe(120)
    }).pipe(Effect.provide(setup([
      MockUpstream.parts([{ delay: "30 seconds", text: "\n" }, { delay: "1 hour", text: JSON.stringify(Wire.completion(generation)) }])
    ]))))

  it.effect("idle: a non-streaming answer that sends no keep-alive after its headers (not DeepSeek's way) is not cut by it", () =>
    Effect.gen(function*() {
      const answered = yield* Effect.fork(create())
      yield* TestClock.adjust("5 minutes")
      expect((yield* Fiber.join(answered)).choices[0]?.message.content).toBe(generation.content)
    }).pipe(Effect.provide(setup([MockUpstream.completion(generation, { delay: "5 minutes" })]))))

  it.effect("total: cuts a non-streaming answer that blank lines keep alive", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(Effect.flip(create({ deadlines: { total: "5 minutes" } })))
      yield* TestClock.adjust("5 minutes")
      expect(yield* Fiber.join(fiber)).toMatchObject({ _tag: "DeadlineExceeded", reason: "total" })
    }).pipe(Effect.provide(setup([generatedFor12Minutes]))))

  it.effect("first content: counts a non-streaming call's wait for the response headers", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(Effect.flip(create()))
      yield* TestClock.adjust("10 minutes")
      expect(yield* Fiber.join(fiber)).toMatchObject({ _tag: "DeadlineExceeded", reason: "first_content" })
    }).pipe(Effect.provide(setup([MockUpstream.json(Wire.completion(generation), { latency: "11 minutes" })]))))

  it.effect("first content: counts the wait for the response headers", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(drain())
      yield* TestClock.adjust("10 minutes")
      const { error } = yield* Fiber.join(fiber)
      expect(error).toMatchObject({ _tag: "DeadlineExceeded", reason: "first_content" })
    }).pipe(Effect.provide(setup([MockUpstream.sse(MockUpstream.events(generation), { latency: "11 minutes" })]))))

  it.effect("idle: fires when content stops for 120 s, carrying what arrived", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(drain())
      yield* TestClock.adjust("119 seconds")
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
      yield* TestClock.adjust("1 second")
      const { chunks, error } = yield* Fiber.join(fiber)
      expect(chunks.length).toBe(3)
      expect(error).toMatchObject({ _tag: "DeadlineExceeded", reason: "idle", partial: { events: 3 } })
      expect(error && "after" in error && Duration.toSeconds(error.after)).toBe(120)
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([
        ...MockUpstream.events(generation).slice(0, 3),
        ...keepAlivesForAnHour.slice(0, 10),
        ...MockUpstream.events(generation).slice(3)
      ])
    ]))))

  it.effect("idle: a slow consumer is not mistaken for a stalled upstream", () =>
    Effect.gen(function*() {
      const transport = yield* Transport.Transport
      const fiber = yield* transport.stream(request).pipe(
        Stream.tap(() => Effect.sleep("150 seconds")),
        Stream.runCollect,
        Effect.fork
      )
      yield* TestClock.adjust("1 hour")
      const chunks = yield* Fiber.join(fiber)
      expect(contentOf(Chunk.toReadonlyArray(chunks))).toBe(generation.content)
    }).pipe(Effect.provide(setup([MockUpstream.streamed(generation)], { deadlines: { total: "2 hours" } }))))

  it.effect("idle: a per-call deadline overrides the layer's", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(drain({ deadlines: { idle: "30 seconds" } }))
      yield* TestClock.adjust("70 seconds")
      const { error } = yield* Fiber.join(fiber)
      expect(error).toMatchObject({ _tag: "DeadlineExceeded", reason: "idle" })
    }).pipe(Effect.provide(setup(
      [MockUpstream.sse(MockUpstream.events(generation, { delay: "40 seconds" }))],
      { deadlines: { idle: "50 seconds" } }
    ))))

  it.effect("total: fires even while content keeps flowing", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(drain())
      yield* TestClock.adjust("5 minutes")
      const { chunks, error } = yield* Fiber.join(fiber)
      expect(chunks.length).toBe(4)
      expect(error).toMatchObject({ _tag: "DeadlineExceeded", reason: "total", partial: { events: 4 } })
      expect(error && "after" in error && Duration.toMinutes(error.after)).toBe(5)
    }).pipe(Effect.provide(setup(
      [MockUpstream.sse(MockUpstream.events({ ...generation, content: "x".repeat(100) }, { delay: "70 seconds" }))],
      { deadlines: { total: "5 minutes" } }
    ))))

  it.effect("total: bounds a non-streaming call", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(Effect.flip(create({ deadlines: { total: "1 minute" } })))
      yield* TestClock.adjust("1 minute")
      expect(yield* Fiber.join(fiber)).toMatchObject({ _tag: "DeadlineExceeded", reason: "total" })
    }).pipe(Effect.provide(setup([MockUpstream.completion(generation, { delay: "2 minutes" })]))))
})

/** Headers after 5 s, a keep-alive line, then the body 45 s later. */
const queuedFor45Seconds = MockUpstream.parts(
  ["\n", { delay: "45 seconds", text: JSON.stringify(Wire.completion(generation)) }],
  { latency: "5 seconds" }
)

describe("Transport onFirstContent", () => {
  const recorder = Effect.map(Ref.make<ReadonlyArray<Duration.Duration>>([]), (ref) => ({
    delays: Ref.get(ref),
    options: { onFirstContent: (delay: Duration.Duration) => Ref.update(ref, (all) => [...all, delay]) }
  }))

  it.effect("create: reports the time from headers to the first non-whitespace byte", () =>
    Effect.gen(function*() {
      const { delays, options } = yield* recorder
      const fiber = yield* Effect.fork(create(options))
      yield* TestClock.adjust("2 minutes")
      yield* Fiber.join(fiber)
      expect(yield* delays).toEqual([Duration.seconds(45)])
    }).pipe(Effect.provide(setup([queuedFor45Seconds]))))

  it.effect("stream: reports the queueing time once, keep-alives excluded", () =>
    Effect.gen(function*() {
      const { delays, options } = yield* recorder
      const fiber = yield* Effect.fork(drain(options))
      yield* TestClock.adjust("5 minutes")
      const { error } = yield* Fiber.join(fiber)
      expect(error).toBeUndefined()
      expect(yield* delays).toEqual([Duration.seconds(90)])
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([
        ...keepAlivesForAnHour.slice(0, 3),
        ...MockUpstream.events(generation)
      ], { latency: "1 minute" })
    ]))))
})

describe("an attempt's options under a concurrency permit (permitOptions)", () => {
  /** A permit whose queue delays are kept, and what it was told. */
  const recordingPermit = Effect.map(Ref.make<ReadonlyArray<Duration.Duration>>([]), (ref) => ({
    delays: Ref.get(ref),
    permit: {
      accepted: Effect.void,
      recordQueueDelay: (delay: Duration.Duration) => Ref.update(ref, (all) => [...all, delay]),
      complete: () => Effect.void,
      settle: () => Effect.void
    } satisfies ConcurrencyLimiter.Permit
  }))

  it.effect("report a stream's queueing time to the permit", () =>
    Effect.gen(function*() {
      const { delays, permit } = yield* recordingPermit
      const fiber = yield* Effect.fork(drain(permitOptions(undefined, permit, "stream")))
      yield* TestClock.adjust("5 minutes")
      yield* Fiber.join(fiber)
      expect(yield* delays).toEqual([Duration.seconds(90)])
    }).pipe(Effect.provide(setup([
      MockUpstream.sse([...keepAlivesForAnHour.slice(0, 3), ...MockUpstream.events(generation)], { latency: "1 minute" })
    ]))))

  it.effect("report no time of a non-streaming answer: its first content comes once it was generated whole", () =>
    Effect.gen(function*() {
      const { delays, permit } = yield* recordingPermit
      const fiber = yield* Effect.fork(create(permitOptions(undefined, permit, "create")))
      yield* TestClock.adjust("2 minutes")
      yield* Fiber.join(fiber)
      expect(yield* delays).toEqual([])
    }).pipe(Effect.provide(setup([queuedFor45Seconds]))))
})

describe("Transport onAccepted", () => {
  const counter = Effect.map(Ref.make(0), (ref) => ({ count: Ref.get(ref), options: { onAccepted: Ref.update(ref, (n) => n + 1) } }))

  it.effect("is reported once when the success headers arrive, long before the body", () =>
    Effect.gen(function*() {
      const { count, options } = yield* counter
      const fiber = yield* Effect.fork(create(options))
      yield* TestClock.adjust("6 seconds")
      expect(fiber.unsafePoll()).toBeNull()
      expect(yield* count).toBe(1)
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(fiber)
      expect(yield* count).toBe(1)
    }).pipe(Effect.provide(setup([queuedFor45Seconds]))))

  it.effect("is not reported for a 429", () =>
    Effect.gen(function*() {
      const { count, options } = yield* counter
      const error = yield* Effect.flip(create(options))
      expect(error._tag).toBe("RateLimited")
      expect(yield* count).toBe(0)
    }).pipe(Effect.provide(setup([MockUpstream.status(429, { body: "{}" })]))))
})

describe("Transport onExchange", () => {
  const recorder = Effect.sync(() => {
    const told: Array<Transport.Exchange> = []
    return { told, options: { onExchange: (exchange: Transport.Exchange) => void told.push(exchange) } }
  })

  it.effect("create: sent, then answered once the completion is read", () =>
    Effect.gen(function*() {
      const { options, told } = yield* recorder
      const fiber = yield* Effect.fork(create(options))
      yield* TestClock.adjust("30 seconds")
      expect(told).toEqual(["sent"])
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(fiber)
      expect(told).toEqual(["sent", "answered"])
    }).pipe(Effect.provide(setup([queuedFor45Seconds]))))

  it.effect("create: sent, then failed on an error status, and once more for a body cut mid-way", () =>
    Effect.gen(function*() {
      const { options, told } = yield* recorder
      yield* Effect.flip(create(options))
      expect(told).toEqual(["sent", "failed"])
      yield* Effect.flip(create(options))
      expect(told).toEqual(["sent", "failed", "sent", "failed"])
    }).pipe(Effect.provide(setup([
      MockUpstream.status(503),
      MockUpstream.parts(["{\"id\":"], { cut: true })
    ]))))

  it.effect("stream: sent, then answered at [DONE]", () =>
    Effect.gen(function*() {
      const { options, told } = yield* recorder
      const { error } = yield* drain(options)
      expect(error).toBeUndefined()
      expect(told).toEqual(["sent", "answered"])
    }).pipe(Effect.provide(setup([MockUpstream.streamed(generation)]))))

  it.effect("stream: failed when cut after its first chunks, and when its status is an error", () =>
    Effect.gen(function*() {
      const { options, told } = yield* recorder
      const cut = yield* drain(options)
      expect(cut.chunks.length).toBe(3)
      expect(told).toEqual(["sent", "failed"])
      const refused = yield* drain(options)
      expect(refused.error?._tag).toBe("RateLimited")
      expect(told).toEqual(["sent", "failed", "sent", "failed"])
    }).pipe(Effect.provide(setup([
      MockUpstream.sse(MockUpstream.events(generation).slice(0, 3), { cut: true }),
      MockUpstream.status(429)
    ]))))
})

describe("Transport over loopback (undici, 127.0.0.1)", () => {
  const wireGeneration: MockUpstream.Generation = { ...generation, content: "Rain ☔ then sun ☀, 晴れ — done." }

  // The scripted server answers requests in order: no warm-up request may take a step.
  const loopback = (server: RawServer, client?: Transport.NodeHttpClientOptions) =>
    Transport.layer({ baseUrl: `${server.url}/`, warmUp: 0 }).pipe(
      Layer.provide(Layer.merge(Transport.nodeHttpClient(client), KeyPool.layer([Redacted.make(keys[0]!)])))
    )

  const completionJson = JSON.stringify(Wire.completion(wireGeneration))

  it.scopedLive("parses a CRLF stream written byte by byte, keep-alives included", () =>
    Effect.gen(function*() {
      const server = yield* rawServer([async (_, response) => {
        response.writeHead(200, { "content-type": "text/event-stream" })
        await writeByteByByte(response, (Wire.sseKeepAlive + Wire.sseBody(wireGeneration)).replace(/\n/g, "\r\n"))
        response.end()
      }])
      const { chunks, error } = yield* Effect.provide(drain(), loopback(server))
      expect(error).toBeUndefined()
      expect(contentOf(chunks)).toBe(wireGeneration.content)
      const [received] = server.received()
      expect(received?.authorization).toBe(`Bearer ${keys[0]}`)
      expect(JSON.parse(received?.body ?? "")).toMatchObject({ stream: true, stream_options: { include_usage: true } })
    }))

  it.scopedLive("skips blank keep-alive lines before a JSON body and reports the first content once", () =>
    Effect.gen(function*() {
      const server = yield* rawServer([async (_, response) => {
        response.writeHead(200, { "content-type": "application/json" })
        await writeSlowly(response, ["\n", "\n", "\r\n"])
        response.end(completionJson)
      }])
      let reports = 0
      const completion = yield* Effect.provide(create({ onFirstContent: () => Effect.sync(() => reports++) }), loopback(server))
      expect(completion.choices[0]?.message.content).toBe(wireGeneration.content)
      expect(reports).toBe(1)
    }))

  it.scopedLive("a JSON body read in pieces that split its characters is decoded whole", () =>
    Effect.gen(function*() {
      const bytes = Buffer.from(completionJson, "utf8")
      const umbrella = bytes.indexOf(Buffer.from("☔", "utf8"))
      // Cut inside the three bytes of "☔" and inside the first of "晴れ", each piece read apart.
      const cuts = [umbrella + 1, bytes.indexOf(Buffer.from("晴", "utf8")) + 2]
      const server = yield* rawServer([async (_, response) => {
        response.writeHead(200, { "content-type": "application/json" })
        response.socket?.setNoDelay(true)
        await writeSlowly(response, ["\n", "\n"])
        for (const [from, to] of [[0, cuts[0]], [cuts[0], cuts[1]], [cuts[1], bytes.length]]) {
          response.write(bytes.subarray(from, to))
          await new Promise((resolve) => setTimeout(resolve, 5))
        }
        response.end()
      }])
      const completion = yield* Effect.provide(create(), loopback(server))
      expect(completion.choices[0]?.message.content).toBe(wireGeneration.content)
    }))

  /** A server that answers 200 with `text`, then says nothing until the client closes. */
  const silentAfter = (contentType: string, text: string) =>
    rawServer([async (_, response) => {
      response.writeHead(200, { "content-type": contentType })
      response.write(text)
      await new Promise((resolve) => response.once("close", resolve))
    }])
  // Bounded by `Effect.timeout` below: without the idle deadline, each call would end only at the
  // first-content one (a stream, a body that began) or the total one (a body of blank lines).
  const stalling: Transport.CallOptions = { deadlines: { firstContent: "1 minute", idle: "200 millis" } }

  it.scopedLive("a JSON body that stalls once it began fails at the idle deadline, not the first-content one, carrying that it began", () =>
    Effect.gen(function*() {
      const server = yield* silentAfter("application/json", `\n${completionJson.slice(0, 20)}`)
      const error = yield* Effect.flip(Effect.provide(create(stalling), loopback(server))).pipe(Effect.timeout("10 seconds"))
      expect(error).toMatchObject({ _tag: "DeadlineExceeded", reason: "idle", partial: { events: 1 } })
      expect(ApiError.deliveredOutput(error)).toBe(true)
    }))

  it.scopedLive("a non-streaming answer whose keep-alive blank lines stop fails at the idle deadline, carrying that nothing began", () =>
    Effect.gen(function*() {
      const server = yield* silentAfter("application/json", "\n")
      const error = yield* Effect.flip(Effect.provide(create(stalling), loopback(server))).pipe(Effect.timeout("10 seconds"))
      expect(error).toMatchObject({ _tag: "DeadlineExceeded", reason: "idle", partial: { events: 0 } })
      expect(ApiError.deliveredOutput(error)).toBe(false)
    }))

  it.scopedLive("a deadline is a DeadlineExceeded under a span too (Effect fails an error with the span attached: a copy of it)", () =>
    Effect.gen(function*() {
      const server = yield* silentAfter("application/json", "\n")
      const error = yield* Effect.flip(Effect.provide(create(stalling), loopback(server))).pipe(
        Effect.withSpan("caller"),
        Effect.timeout("10 seconds")
      )
      expect(error).toMatchObject({ _tag: "DeadlineExceeded", reason: "idle" })
      const streaming = yield* silentAfter("text/event-stream", Wire.sseKeepAlive)
      const { error: streamed } = yield* Effect.provide(drain(stalling), loopback(streaming)).pipe(
        Effect.withSpan("caller"),
        Effect.timeout("10 seconds")
      )
      expect(streamed).toMatchObject({ _tag: "DeadlineExceeded", reason: "idle" })
    }))

  it.scopedLive("a stream whose keep-alive comments stop before its first content fails at the idle deadline", () =>
    Effect.gen(function*() {
      const server = yield* silentAfter("text/event-stream", Wire.sseKeepAlive)
      const { error } = yield* Effect.provide(drain(stalling), loopback(server)).pipe(Effect.timeout("10 seconds"))
      expect(error).toMatchObject({ _tag: "DeadlineExceeded", reason: "idle", partial: { events: 0 } })
    }))

  it.scopedLive("a 200 web page (a base URL that reaches a web server) is a final MalformedResponse quoting it, stream or not", () =>
    Effect.gen(function*() {
      const page = `<html><body>Welcome to nginx! ${keys[0]}</body></html>`
      const html = reply(200, page, { "content-type": "text/html" })
      const server = yield* rawServer([html, html, reply(200, JSON.stringify({ error: { message: "model overloaded" } }))])
      const created = yield* Effect.flip(Effect.provide(create(), loopback(server)))
      expect(created).toMatchObject({ _tag: "MalformedResponse", reason: "schema" })
      expect(created.message).toMatch(/^the 200 body is not JSON \(text\/html: "<html><body>Welcome to nginx! sk-/)
      const streamed = yield* Effect.provide(drain(), loopback(server))
      expect(streamed.chunks).toEqual([])
      expect(streamed.error).toMatchObject({ _tag: "MalformedResponse", reason: "schema" })
      expect((streamed.error as Error).message).toContain(
        "the 200 answer to a stream request is not an event stream (text/html: \"<html><body>Welcome to nginx!"
      )
      // A JSON error where a stream was asked for is the server's error.
      const refused = yield* Effect.provide(drain(), loopback(server))
      expect(refused.error).toMatchObject({ _tag: "UpstreamError", message: "model overloaded" })
      for (const error of [created, streamed.error]) expectNoSecret(error)
    }))

  it.scopedLive("a stream request answered with a whole JSON completion (an upstream that does not stream) gives the chunks that fold into it; a blank one is closed while queued", () =>
    Effect.gen(function*() {
      const server = yield* rawServer([reply(200, `\n\n${completionJson}`), reply(200, "\n\n")])
      const { chunks, error } = yield* Effect.provide(drain(), loopback(server))
      expect(error).toBeUndefined()
      expect(chunks.map((chunk) => chunk.object)).toEqual(["chat.completion.chunk", "chat.completion.chunk"])
      expect(contentOf(chunks)).toBe(wireGeneration.content)
      expect(chunks[0]?.choices[0]).toMatchObject({ delta: { reasoning_content: wireGeneration.reasoningContent }, finish_reason: "stop" })
      expect(chunks[1]).toMatchObject({ choices: [], usage: wireGeneration.usage })
      const blank = yield* Effect.provide(drain(), loopback(server))
      expect(blank.error).toMatchObject({ _tag: "MalformedResponse", reason: "blank" })
      expect(ApiError.classify(blank.error)).toMatchObject({ _tag: "LoadShed" })
    }))

  it.scopedLive("an answer or chunks without `id`, `object`, `created` or `model` (servers that leave them out) are read, not thrown away", () =>
    Effect.gen(function*() {
      const bare = { choices: [{ index: 0, message: { role: "assistant", content: "bare" }, finish_reason: "stop" }], usage: wireGeneration.usage }
      const chunks = [
        { choices: [{ index: 0, delta: { role: "assistant", content: "ba" } }] },
        { choices: [{ index: 0, delta: { content: "re" }, finish_reason: "stop" }] },
        { choices: [], usage: wireGeneration.usage }
      ]
      const server = yield* rawServer([
        reply(200, JSON.stringify(bare)),
        reply(200, [...chunks.map((c) => `data:${JSON.stringify(c)}\n\n`), "data: [DONE]\n\n"].join(""), { "content-type": "text/event-stream" })
      ])
      const completion = yield* Effect.provide(create(), loopback(server))
      expect(completion).toMatchObject({ id: "", object: "chat.completion", created: 0, model: "", usage: wireGeneration.usage })
      expect(completion.choices[0]?.message.content).toBe("bare")
      const streamed = yield* Effect.provide(drain(), loopback(server))
      expect(streamed.error).toBeUndefined()
      expect(contentOf(streamed.chunks)).toBe("bare")
      expect(streamed.chunks[0]).toMatchObject({ id: "", object: "chat.completion.chunk", created: 0, model: "" })
    }))

  it.scopedLive("an upstream that refuses stream_options gets the stream again without it, and the later streams without it", () =>
    Effect.gen(function*() {
      const refusal = { error: { message: "Unrecognized request argument supplied: stream_options", type: "invalid_request_error", param: null, code: null } }
      const stream = reply(200, Wire.sseBody(wireGeneration), { "content-type": "text/event-stream" })
      const server = yield* rawServer([reply(400, JSON.stringify(refusal)), stream, stream])
      const logs: Array<Logged> = []
      // One after the other, on one transport: it remembers the refusal.
      const results = yield* Effect.provide(Effect.all([drain(), drain()]), loopback(server)).pipe(capturingLogs(logs))
      for (const { chunks, error } of results) {
        expect(error).toBeUndefined()
        expect(contentOf(chunks)).toBe(wireGeneration.content)
      }
      expect(server.received().map((r) => JSON.parse(r.body).stream_options)).toEqual([{ include_usage: true }, undefined, undefined])
      expect(logs.filter((l) => l.level === "WARN").map((l) => l.message)).toEqual([
        `Transport: ${server.url}/chat/completions refused stream_options: streams go without it from now on, and their usage, which the server then does not send, is not counted`
      ])
    }))

  it.scopedLive("streams sent together with stream_options and refused together are each sent again without it; the refusal is told once", () =>
    Effect.gen(function*() {
      const refusal = { error: { message: "Unrecognized request argument supplied: stream_options", type: "invalid_request_error", param: null, code: null } }
      const stream = reply(200, Wire.sseBody(wireGeneration), { "content-type": "text/event-stream" })
      const server = yield* rawServer([reply(400, JSON.stringify(refusal)), reply(400, JSON.stringify(refusal)), stream, stream])
      const logs: Array<Logged> = []
      const results = yield* Effect.provide(Effect.all([drain(), drain()], { concurrency: "unbounded" }), loopback(server)).pipe(
        capturingLogs(logs)
      )
      for (const { chunks, error } of results) {
        expect(error).toBeUndefined()
        expect(contentOf(chunks)).toBe(wireGeneration.content)
      }
      expect(server.received().map((r) => JSON.parse(r.body).stream_options)).toEqual([
        { include_usage: true },
        { include_usage: true },
        undefined,
        undefined
      ])
      expect(logs.filter((l) => l.level === "WARN")).toHaveLength(1)
    }))

  it.scopedLive("a 200 that is no completion still carries the usage and model it names, for its cost", () =>
    Effect.gen(function*() {
      const server = yield* rawServer([reply(200, JSON.stringify({ model: "odd-model", result: "??", usage: wireGeneration.usage }))])
      const error = yield* Effect.flip(Effect.provide(create(), loopback(server)))
      expect(error).toMatchObject({ _tag: "MalformedResponse", reason: "schema", partial: { usage: wireGeneration.usage, model: "odd-model" } })
      expect(error.message).toContain("the 200 body is not a chat completion")
    }))

  it.scopedLive("a page quoted in a MalformedResponse is scrubbed before it is cut: a key the cut runs through shows no part", () =>
    Effect.gen(function*() {
      // The quote keeps 200 characters: the key starts at 195, so the cut leaves `sk-te` of it.
      const page = `${"x".repeat(194)} ${keys[0]} and more`
      const server = yield* rawServer([reply(200, page, { "content-type": "text/html" })])
      const error = yield* Effect.flip(Effect.provide(create(), loopback(server)))
      expect(error).toMatchObject({ _tag: "MalformedResponse", reason: "schema" })
      // The mask is cut instead: the old order cut the key, then found nothing shaped like one in `sk-te`.
      expect(error.message).toContain(`${"x".repeat(194)} sk-**…`)
      expect(error.message).not.toContain("sk-te")
    }))

  it.scopedLive("a call sent as another's answer ends takes that answer's socket: calls in a row open about as many connections as run at once", () =>
    Effect.gen(function*() {
      const simulator = yield* Simulator.make({ limit: 1_000, queueDelay: 0, chunkDelay: 0 })
      const key = Redacted.make(simulator.accounts[0]!.keys[0]!)
      const transport = Transport.layer({ baseUrl: simulator.baseUrl, warmUp: 0 }).pipe(
        Layer.provide(Layer.merge(Transport.nodeHttpClient(), KeyPool.layer([key])))
      )
      const inFlight = 16
      // Each of 16 workers sends its next call as its last answer ends, before undici gives that socket back.
      yield* Effect.provide(Effect.forEach(Array.from({ length: 400 }), () => create(), { concurrency: inFlight, discard: true }), transport)
      const { completed, connections } = yield* simulator.stats
      expect(completed).toBe(400)
      expect(connections).toBeLessThanOrEqual(inFlight + 2)
    }))

  it.scopedLive("a socket destroyed mid-stream is TransportError body with the partial", () =>
    Effect.gen(function*() {
      const sent = MockUpstream.events(wireGeneration).slice(0, 3)
      const server = yield* rawServer([async (request, response) => {
        response.writeHead(200, { "content-type": "text/event-stream" })
        await writeSlowly(response, sent.map((part) => part.text))
        request.socket.destroy()
      }])
      const { chunks, error } = yield* Effect.provide(drain(), loopback(server))
      expect(chunks.length).toBe(3)
      expect(error).toMatchObject({ _tag: "TransportError", reason: "body", partial: { events: 3 } })
      expectNoSecret(error)
    }))

  it.scopedLive("a pooled socket the server closes on the next request costs a silent retry", () =>
    Effect.gen(function*() {
      const server = yield* rawServer([reply(200, completionJson), destroySocket, reply(200, completionJson)])
      // One connection per origin, so the second call surely goes out on the pooled socket.
      const ids = yield* Effect.provide(Effect.zip(create(), create()), loopback(server, { connections: 1 }))
      expect(ids.map((c) => c.id)).toEqual([wireGeneration.id, wireGeneration.id])
      expect(server.received().map((r) => r.connection)).toEqual([1, 1, 2])
    }))

  it.scopedLive("a stream read to [DONE] gives its connection back to the pool", () =>
    Effect.gen(function*() {
      // The chunked terminator comes a little after [DONE], as it may behind a proxy.
      const lateEnd: Handler = async (_, response) => {
        response.writeHead(200, { "content-type": "text/event-stream" })
        await writeSlowly(response, [Wire.sseBody(wireGeneration)], 20)
        response.end()
      }
      const server = yield* rawServer([lateEnd, lateEnd, lateEnd])
      yield* Effect.provide(Effect.repeatN(drain(), 2), loopback(server, { connections: 1 }))
      expect(server.received().map((r) => r.connection)).toEqual([1, 1, 1])
    }))

  // The waits carry no interruption handler: the call's one exit handler aborts its exchange.
  it.scopedLive.each(["headers", "body"] as const)(
    "an interrupted call, waiting for its %s, aborts its exchange: the upstream sees the connection close",
    (waitingFor) =>
      Effect.gen(function*() {
        const closed = yield* Deferred.make<void>()
        const answered = yield* Deferred.make<void>()
        const server = yield* rawServer([async (request, response) => {
          request.socket.once("close", () => Deferred.unsafeDone(closed, Exit.void))
          if (waitingFor === "body") {
            response.writeHead(200, { "content-type": "application/json" })
            response.write("\n")
          }
          Deferred.unsafeDone(answered, Exit.void)
        }])
        // Reported when the 200's headers reach the call: from then on it waits for the body.
        const accepted = yield* Deferred.make<void>()
        // The transport outlives the call: only the abort can close the connection.
        yield* Effect.gen(function*() {
          const call = yield* Effect.fork(create({ onAccepted: Deferred.complete(accepted, Effect.void) }))
          yield* Deferred.await(waitingFor === "body" ? accepted : answered)
          yield* Fiber.interrupt(call)
          yield* Deferred.await(closed).pipe(Effect.timeoutFail({ duration: "2 seconds", onTimeout: () => "the connection stayed open" }))
        }).pipe(Effect.provide(loopback(server)))
      })
  )

  it.scopedLive("a refused connection is TransportError connect", () =>
    Effect.gen(function*() {
      const closed = yield* Effect.scoped(rawServer([]))
      const error = yield* Effect.provide(failure(create()), loopback(closed))
      expect(error).toMatchObject({ _tag: "TransportError", reason: "connect" })
    }))

  it.scopedLive("a 429 over the wire keeps Retry-After and never shows the key", () =>
    Effect.gen(function*() {
      const server = yield* rawServer([
        reply(429, Wire.errorBody(`Rate limited for ${keys[0]}`, "rate_limit"), { "retry-after": "3" })
      ])
      const error = yield* Effect.provide(failure(create()), loopback(server))
      expect(error).toMatchObject({ _tag: "RateLimited", retryAfter: Option.some(Duration.seconds(3)) })
    }))
})
