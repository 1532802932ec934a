/**
 * `weatherproof serve` with the real `openai` client, only `baseURL` changed, against loopback
 * upstreams: the Simulator, or `rawServer` for byte-exact upstream behaviour.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import OpenAI, { APIError, AuthenticationError, RateLimitError } from "openai"
import * as CostLedger from "../src/CostLedger.js"
import * as Simulator from "../src/Simulator.js"
import * as Wire from "../src/internal/wire.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { account, attempt, collect, openai, rawText, startGateway } from "./support/gateway.js"
import { destroySocket, rawServer, reply, writeByteByByte, writeSlowly } from "./support/rawServer.js"
import { freePort, relay } from "./support/ports.js"
import type { Handler } from "./support/rawServer.js"
import * as Http from "node:http"
import * as Net from "node:net"
import * as NodeZlib from "node:zlib"
import { isLoopback } from "../src/internal/loopback.js"
import { gatewayKeysConfig } from "../app/gateway/auth.js"
import * as ConfigProvider from "effect/ConfigProvider"
import { waitingCaps } from "../app/gateway/chat.js"
import { Traffic } from "../app/gateway/traffic.js"

/** Whether this machine can listen on ::1 (a container may have no IPv6). */
const ipv6Loopback = await new Promise<boolean>((resolve) => {
  const probe = Net.createServer().once("error", () => resolve(false))
  probe.listen(0, "::1", () => probe.close(() => resolve(true)))
})

const model = "deepseek-v4-flash"
const ask = (content: string) => [{ role: "user" as const, content }]

/** POSTs `body` to the chat route with `headers` as given (`Host` included, which `fetch` sets itself). */
const post = (url: string, body: string, headers: Record<string, string>) =>
  Effect.async<{ readonly status: number; readonly text: string }, Error>((resume) => {
    const request = Http.request(`${url}/v1/chat/completions`, { method: "POST", headers }, (response) => {
      let text = ""
      response.setEncoding("utf8")
      response.on("data", (chunk: string) => (text += chunk))
      response.on("end", () => resume(Effect.succeed({ status: response.statusCode ?? 0, text })))
    })
    request.on("error", (error) => resume(Effect.fail(error)))
    request.end(body)
  })
/** A raw keep-alive connection to the gateway: `ask` GETs a path on it and answers the response's head. */
const connect = (port: number) =>
  Effect.async<{ readonly ask: (path: string) => Effect.Effect<string>; readonly closed: Effect.Effect<void>; readonly destroy: () => void }>((resume) => {
    const socket = Net.connect(port, "127.0.0.1", () => {
      const closed = Effect.async<void>((done) => {
        if (socket.readableEnded || socket.destroyed) return done(Effect.void)
        socket.once("close", () => done(Effect.void))
      })
      const ask = (path: string) =>
        Effect.async<string>((answer) => {
          socket.once("data", (data) => answer(Effect.succeed(data.toString("latin1"))))
          socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`)
        })
      resume(Effect.succeed({ ask, closed, destroy: () => socket.destroy() }))
    })
  })
const upstreamKey = "Zq81xV3pLmRt4wQe"
const noRetries = { retry: { maxRetries: 0 } } as const

const generation = (content: string, extra: Partial<Wire.Generation> = {}): Wire.Generation => ({
  id: "chatcmpl-raw",
  model,
  content,
  usage: Wire.usage({ promptTokens: 10, completionTokens: 6, cacheHitTokens: 4, reasoningTokens: 2 }),
  ...extra
})

const sseHead = (response: Parameters<Handler>[1]) =>
  response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" })

/** A stream handler: the SSE of `g`, transformed by `shape`, written by `write`. */
const sseHandler = (
  g: Wire.Generation,
  shape: (body: string) => string = (body) => body,
  write: (response: Parameters<Handler>[1], text: string) => Promise<void> = async (response, text) => {
    response.write(text)
  }
): Handler =>
async (_, response) => {
  sseHead(response)
  await write(response, shape(Wire.sseBody(g)))
  response.end()
}

describe("weatherproof serve, with the openai client", () => {
  it.scopedLive("non-stream: reasoning_content and the full usage (cache hits and misses, reasoning tokens) reach the client", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ cacheHitRatio: 0.5 })
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])])
      const answer = yield* attempt(() =>
        openai(gateway.url).chat.completions.create({
          model,
          messages: ask("a question worth thinking about"),
          // DeepSeek's own field, unknown to the openai types: passed through as given.
          ...{ thinking: { type: "enabled" } }
        })
      )
      const message = answer.choices[0]?.message as OpenAI.ChatCompletionMessage & { readonly reasoning_content?: string }
      expect(message.content).toBe("echo:a question worth thinking about")
      expect(message.reasoning_content).toBe("think:a question worth thinking about")
      const usage = answer.usage as OpenAI.CompletionUsage & Record<string, unknown>
      expect(usage.prompt_cache_hit_tokens).toBeGreaterThan(0)
      expect(usage.prompt_cache_miss_tokens).toBeGreaterThan(0)
      expect(usage.completion_tokens_details?.reasoning_tokens).toBeGreaterThan(0)
      expect(usage.prompt_tokens).toBe(Number(usage.prompt_cache_hit_tokens) + Number(usage.prompt_cache_miss_tokens))
    }))

  it.scopedLive("stream: reasoning_content deltas, content deltas and the usage chunk", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ cacheHitRatio: 0.5 })
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])])
      const stream = yield* attempt(() =>
        openai(gateway.url).chat.completions.create({
          model,
          messages: ask("stream me a long enough answer"),
          stream: true,
          stream_options: { include_usage: true },
          ...{ thinking: { type: "enabled" } }
        })
      )
      const chunks = yield* collect(stream)
      const deltas = chunks.flatMap((chunk) => chunk.choices.map((choice) => choice.delta as Record<string, unknown>))
      expect(deltas.map((delta) => delta.reasoning_content ?? "").join("")).toBe("think:stream me a long enough answer")
      expect(deltas.map((delta) => delta.content ?? "").join("")).toBe("echo:stream me a long enough answer")
      const last = chunks.at(-1)
      expect(last?.choices).toEqual([])
      const usage = last?.usage as OpenAI.CompletionUsage & Record<string, unknown>
      expect(usage.prompt_cache_hit_tokens).toBeGreaterThan(0)
      expect(usage.completion_tokens_details?.reasoning_tokens).toBeGreaterThan(0)
    }))

  it.scopedLive("a stream that did not ask for usage gets no usage chunk (the gateway asks upstream for its ledger)", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])])
      const chunks = yield* collect(
        yield* attempt(() => openai(gateway.url).chat.completions.create({ model, messages: ask("hi"), stream: true }))
      )
      expect(chunks.length).toBeGreaterThan(0)
      expect(chunks.every((chunk) => chunk.choices.length > 0)).toBe(true)
    }))

  it.scopedLive("unknown fields and tool calls pass through untouched, both ways", () =>
    Effect.gen(function*() {
      const toolCall = { id: "call_1", type: "function", function: { name: "lookup", arguments: "{\"q\":\"x\"}" } }
      const body = {
        ...Wire.completion(generation("")),
        choices: [{ index: 0, message: { role: "assistant", content: null, tool_calls: [toolCall], x_note: "kept" }, finish_reason: "tool_calls" }],
        x_provider: { region: "eu", served_by: [1, 2] }
      }
      const upstream = yield* rawServer([reply(200, JSON.stringify(body))])
      const gateway = yield* startGateway([account("a", upstream.url, [upstreamKey])])
      const answer = yield* attempt(() =>
        openai(gateway.url).chat.completions.create({
          model,
          messages: ask("use the tool"),
          tools: [{ type: "function", function: { name: "lookup", parameters: { type: "object" } } }],
          ...{ user_id: "u-42", x_client_field: { nested: true } }
        })
      )
      expect(answer.choices[0]?.message.tool_calls).toEqual([toolCall])
      expect((answer.choices[0]?.message as unknown as Record<string, unknown>).x_note).toBe("kept")
      expect((answer as unknown as Record<string, unknown>).x_provider).toEqual({ region: "eu", served_by: [1, 2] })
      const sent = JSON.parse(upstream.received()[0]!.body)
      expect(sent.user_id).toBe("u-42")
      expect(sent.x_client_field).toEqual({ nested: true })
      expect(sent.tools[0].function.name).toBe("lookup")
      expect(upstream.received()[0]!.authorization).toBe(`Bearer ${upstreamKey}`)
    }))

  it.scopedLive("every message shape OpenAI's API takes passes through untouched: developer, content parts, json_schema, legacy functions", () =>
    Effect.gen(function*() {
      const upstream = yield* rawServer([reply(200, JSON.stringify(Wire.completion(generation("ok"))))])
      const gateway = yield* startGateway([account("a", upstream.url, [upstreamKey])])
      const parts = (text: string) => [{ type: "text" as const, text }]
      const messages = [
        { role: "developer" as const, content: "be brief" },
        { role: "system" as const, content: parts("answer in JSON") },
        { role: "user" as const, content: parts("look it up") },
        { role: "assistant" as const, content: parts("calling"), tool_calls: [{ id: "c1", type: "function" as const, function: { name: "f", arguments: "{}" } }] },
        { role: "tool" as const, tool_call_id: "c1", content: parts("found") },
        // OpenAI's legacy functions API: the call an answer made, and its result under the `function` role.
        { role: "assistant" as const, content: null, function_call: { name: "f", arguments: "{}" } },
        { role: "function" as const, name: "f", content: "found again" }
      ]
      const responseFormat = { type: "json_schema" as const, json_schema: { name: "answer", schema: { type: "object" }, strict: true } }
      const answer = yield* attempt(() =>
        openai(gateway.url).chat.completions.create({ model, messages, response_format: responseFormat })
      )
      expect(answer.choices[0]?.message.content).toBe("ok")
      const sent = JSON.parse(upstream.received()[0]!.body)
      expect(sent.messages).toEqual(messages)
      expect(sent.response_format).toEqual(responseFormat)
    }))

  it.scopedLive("integers beyond 2^53 reach the upstream digit for digit (an int64 seed, a logit bias)", () =>
    Effect.gen(function*() {
      const upstream = yield* rawServer([
        reply(200, JSON.stringify(Wire.completion(generation("ok")))),
        sseHandler(generation("ok"))
      ])
      const gateway = yield* startGateway([account("a", upstream.url, [upstreamKey])])
      const exact = `"seed":12345678901234567891,"logit_bias":{"50256":-9007199254740993},"x_ids":[9007199254740993,1.5]`
      const body = (stream: boolean) =>
        `{"model":"${model}","messages":[{"role":"user","content":"12345678901234567891"}],"stream":${stream},${exact}}`
      for (const stream of [false, true]) {
        expect((yield* post(gateway.url, body(stream), { "content-type": "application/json" })).status).toBe(200)
      }
      expect(upstream.received()).toHaveLength(2)
      for (const sent of upstream.received()) {
        expect(sent.body).toContain(exact)
        expect(JSON.parse(sent.body).messages[0].content).toBe("12345678901234567891")
      }
    }))

  it.scopedLive("CRLF, no-space and byte-split SSE from upstream arrive whole", () =>
    Effect.gen(function*() {
      const g = generation("the whole answer, intact", { reasoningContent: "a thought" })
      const crlf = (body: string) => body.replace(/\n/g, "\r\n")
      const noSpace = (body: string) => body.replace(/^data: /gm, "data:")
      const upstream = yield* rawServer([
        sseHandler(g, crlf),
        sseHandler(g, noSpace),
        sseHandler(g, (body) => crlf(noSpace(body)), writeByteByByte)
      ])
      const gateway = yield* startGateway([account("a", upstream.url, [upstreamKey])])
      for (let i = 0; i < 3; i++) {
        const chunks = yield* collect(
          yield* attempt(() => openai(gateway.url).chat.completions.create({ model, messages: ask("x"), stream: true }))
        )
        const deltas = chunks.flatMap((chunk) => chunk.choices.map((choice) => choice.delta as Record<string, unknown>))
        expect(deltas.map((delta) => delta.content ?? "").join("")).toBe("the whole answer, intact")
        expect(deltas.map((delta) => delta.reasoning_content ?? "").join("")).toBe("a thought")
      }
    }))

  it.scopedLive("a stream cut upstream after its first bytes ends in an error the client raises, never in [DONE], and in no unhandled error", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const g = generation("this answer will be cut in the middle of its text")
      const cut: Handler = async (request, response) => {
        sseHead(response)
        const events = Wire.chunks(g).map(Wire.sseData)
        await writeSlowly(response, events.slice(0, 3))
        request.socket.destroy()
      }
      const upstream = yield* rawServer([cut, cut])
      const gateway = yield* startGateway([account("a", upstream.url, [upstreamKey])])
      const client = openai(gateway.url)

      const seen: Array<string> = []
      const failure = yield* Effect.flip(Effect.flatMap(
        attempt(() => client.chat.completions.create({ model, messages: ask("x"), stream: true })),
        (stream) =>
          attempt(async () => {
            for await (const chunk of stream) seen.push(chunk.choices[0]?.delta.content ?? "")
          })
      ))
      expect(failure).toBeInstanceOf(OpenAI.APIError)
      expect(seen.join("")).toBe("this answer will")
      expect((failure as APIError).code).toBe("transport_error")

      // On the wire: the chunks, then one error event, and no [DONE].
      const text = yield* rawText(`${gateway.url}/v1/chat/completions`, { model, messages: ask("x"), stream: true })
      const events = text.split("\n\n").filter((event) => event.length > 0)
      expect(events.at(-1)).toMatch(/^data: \{"error":\{"message":"[^"]+","type":"upstream_error","param":null,"code":"transport_error"\}\}$/)
      expect(text).not.toContain("[DONE]")
      // The pump's failure is answered to the client: the runtime logged it too, with a stack, at debug level.
      expect(logs.filter((log) => log.message.includes("unhandled error"))).toEqual([])
    }).pipe(capturingLogs(logs), Logger.withMinimumLogLevel(LogLevel.Debug))
  })

  it.scopedLive("an upstream {\"error\": …} event is forwarded as an error the client raises, not dropped", () =>
    Effect.gen(function*() {
      const g = generation("partial text before the upstream fails")
      const inBandError: Handler = async (_, response) => {
        sseHead(response)
        response.write(Wire.chunks(g).slice(0, 2).map(Wire.sseData).join(""))
        response.end(Wire.sseData({ error: { message: "model overloaded mid-stream", type: "server_error", code: "overloaded" } }))
      }
      const upstream = yield* rawServer([inBandError])
      const gateway = yield* startGateway([account("a", upstream.url, [upstreamKey])])
      const failure = yield* Effect.flip(Effect.flatMap(
        attempt(() => openai(gateway.url).chat.completions.create({ model, messages: ask("x"), stream: true })),
        collect
      ))
      expect(failure).toBeInstanceOf(OpenAI.APIError)
      expect((failure as APIError).message).toContain("model overloaded mid-stream")
      expect((failure as APIError).code).toBe("overloaded")
      expect((failure as APIError).type).toBe("server_error")
    }))

  it.scopedLive("a missing or wrong gateway key gets an OpenAI-shaped 401: AuthenticationError", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], {
        gatewayKeys: [Redacted.make("gw-key-one"), Redacted.make("gw-key-two")]
      })
      const wrong = yield* Effect.flip(
        attempt(() => openai(gateway.url, { apiKey: "gw-key-wrong" }).chat.completions.create({ model, messages: ask("x") }))
      )
      expect(wrong).toBeInstanceOf(OpenAI.AuthenticationError)
      expect((wrong as AuthenticationError).code).toBe("invalid_api_key")
      const models = yield* Effect.flip(attempt(() => openai(gateway.url, { apiKey: "nope" }).models.list()))
      expect(models).toBeInstanceOf(OpenAI.AuthenticationError)
      const retrieved = yield* Effect.flip(attempt(() => openai(gateway.url, { apiKey: "nope" }).models.retrieve("deepseek-v4-flash")))
      expect(retrieved).toBeInstanceOf(OpenAI.AuthenticationError)

      const answer = yield* attempt(() =>
        openai(gateway.url, { apiKey: "gw-key-two" }).chat.completions.create({ model, messages: ask("right key") })
      )
      expect(answer.choices[0]?.message.content).toBe("echo:right key")
      const stats = yield* sim.stats
      expect(stats.requests).toBe(1)

      // The key without its scheme: said as such, not as missing.
      const unread = yield* attempt(() =>
        fetch(`${gateway.url}/v1/models`, { headers: { authorization: "gw-key-two" } }).then(async (r) => [r.status, (await r.json()).error.message])
      )
      expect(unread).toEqual([401, "no gateway key read from the Authorization header: send it as `Authorization: Bearer <key>`"])
      const missing = yield* attempt(() => fetch(`${gateway.url}/v1/models`).then(async (r) => (await r.json()).error.message))
      expect(missing).toBe("missing gateway key: send it as `Authorization: Bearer <key>`")
    }))

  it.scopedLive("upstream failures surface as the client's classes: a 400 as BadRequestError, a 413 as a 413, a 500 as InternalServerError, a 503 with its Retry-After", () =>
    Effect.gen(function*() {
      const upstream = yield* rawServer([
        reply(400, Wire.errorBody("messages: content must not be empty", "invalid_request_error", "invalid_messages")),
        reply(413, Wire.errorBody("request entity too large", "invalid_request_error")),
        reply(500, Wire.errorBody("internal failure", "server_error")),
        reply(503, Wire.errorBody("overloaded", "server_error"), { "retry-after": "7" })
      ])
      const gateway = yield* startGateway([account("a", upstream.url, [upstreamKey])], { pool: noRetries })
      const client = openai(gateway.url)
      const invalid = yield* Effect.flip(attempt(() => client.chat.completions.create({ model, messages: ask("") })))
      expect(invalid).toBeInstanceOf(OpenAI.BadRequestError)
      expect((invalid as APIError).code).toBe("invalid_messages")
      expect((invalid as APIError).message).toContain("content must not be empty")
      // The request is too large for the upstream: the client's to fix, not the upstream failing.
      const tooLarge = yield* Effect.flip(attempt(() => client.chat.completions.create({ model, messages: ask("large") })))
      expect((tooLarge as APIError).status).toBe(413)
      expect((tooLarge as APIError).message).toContain("request entity too large")
      const failed = yield* Effect.flip(attempt(() => client.chat.completions.create({ model, messages: ask("x") })))
      expect(failed).toBeInstanceOf(OpenAI.InternalServerError)
      expect((failed as APIError).status).toBe(502)
      expect((failed as APIError).code).toBe("server_error")
      // The upstream's wait reaches the client, as a 429's does: it was dropped.
      const overloaded = yield* Effect.flip(attempt(() => client.chat.completions.create({ model, messages: ask("y") }, { maxRetries: 0 })))
      expect((overloaded as APIError).status).toBe(503)
      expect((overloaded as APIError).headers?.get("retry-after")).toBe("7")
    }))

  it("a report names the five most frequent failures, sums the rest, tells an error after a 200 apart, and the clients that left", () => {
    const traffic = new Traffic()
    for (const [n, code, status] of [[6, "a", 503], [5, "b", 502], [4, "c", 504], [3, "d", 429], [2, "e", 400], [1, "f", 401], [1, "g", 404]] as const) {
      for (let i = 0; i < n; i++) traffic.answered(status, status, code)
    }
    traffic.answered(200, 502, "transport_error")
    traffic.answered(200)
    traffic.clientClosed()
    expect(traffic.takeReport("1m")).toEqual({
      warning: true,
      line: "gateway: over the last 1m, 23 of 25 requests failed: 6 a (503), 5 b (502), 4 c (504), 3 d (429), 2 e (400), 3 other; 1 client left before its answer"
    })
    // The next report starts afresh: nothing failed, nothing to say; clients that left alone are told, as information.
    expect(traffic.takeReport("1m")).toBeUndefined()
    traffic.clientClosed()
    traffic.clientClosed()
    traffic.answered(200)
    expect(traffic.takeReport("1m")).toEqual({ warning: false, line: "gateway: over the last 1m, 2 clients left before their answer, of 3 requests" })
    // Refusals of what clients sent are theirs to fix: told, but no warning.
    traffic.answered(401, 401, "invalid_api_key")
    traffic.answered(400, 400, "invalid_request")
    traffic.answered(404, 404, "model_not_found")
    traffic.answered(413, 413, "invalid_request_error")
    expect(traffic.takeReport("1m")).toEqual({
      warning: false,
      line: "gateway: over the last 1m, 4 of 4 requests failed, each on a client's error: " +
        "1 invalid_api_key (401), 1 invalid_request (400), 1 model_not_found (404), 1 invalid_request_error (413)"
    })
    // A 429 (full) and a 402 (the budget spent) are the operator's to see.
    for (const [status, code] of [[429, "rate_limited"], [402, "budget_exceeded"]] as const) {
      traffic.answered(400, 400, "invalid_request")
      traffic.answered(status, status, code)
      expect(traffic.takeReport("1m")?.warning).toBe(true)
    }
  })

  it.scopedLive("says in its log, once a report interval, how many requests failed and with what, and how many clients left: none told per request", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const upstream = yield* rawServer([
        reply(503, Wire.errorBody("overloaded", "server_error")),
        reply(503, Wire.errorBody("overloaded", "server_error")),
        reply(400, Wire.errorBody("messages: content must not be empty", "invalid_request_error", "invalid_messages")),
        reply(200, JSON.stringify(Wire.completion(generation("fine"))), { "content-type": "application/json" })
      ])
      const gateway = yield* startGateway([account("a", upstream.url, [upstreamKey])], { pool: noRetries, failureReportInterval: "1 second" })
      const client = openai(gateway.url)
      for (const text of ["a", "b", "c"]) yield* Effect.flip(attempt(() => client.chat.completions.create({ model, messages: ask(text) })))
      yield* attempt(() => client.chat.completions.create({ model, messages: ask("d") }))
      const reported = () => logs.filter((log) => log.message.includes("requests failed"))
      yield* Effect.sleep("1500 millis")
      expect(reported().map(({ level, message }) => `${level} ${message}`)).toEqual([
        "WARN gateway: over the last 1s, 3 of 4 requests failed: 2 server_error (503), 1 invalid_messages (400)"
      ])
      // A quiet interval says nothing.
      yield* Effect.sleep("1 second")
      expect(reported()).toHaveLength(1)
    }).pipe(capturingLogs(logs))
  })

  it.scopedLive("a gateway stopped before its next report says then what failed since the last one", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const upstream = yield* rawServer([reply(503, Wire.errorBody("overloaded", "server_error"))])
      yield* Effect.scoped(Effect.gen(function*() {
        const gateway = yield* startGateway([account("a", upstream.url, [upstreamKey])], { pool: noRetries, failureReportInterval: "1 hour" })
        yield* Effect.flip(attempt(() => openai(gateway.url).chat.completions.create({ model, messages: ask("a") }, { maxRetries: 0 })))
      }))
      const reported = logs.filter((log) => log.message.includes("requests failed") || log.message.includes("request failed"))
      expect(reported.map(({ level }) => level)).toEqual(["WARN"])
      // Over the time since the gateway's start, in whole seconds: at least one, more on a slow machine.
      expect(reported[0]?.message).toMatch(/^gateway: over the last \d+s, 1 of 1 request failed: 1 server_error \(503\)$/)
    }).pipe(capturingLogs(logs))
  })

  it.scopedLive("when more clients wait than the queue holds, the next gets a 429 with Retry-After: RateLimitError", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ queueDelay: 600 })
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { maxWaiting: 1 })
      const client = openai(gateway.url)
      const first = yield* Effect.fork(attempt(() => client.chat.completions.create({ model, messages: ask("first") })))
      yield* Effect.sleep("150 millis")
      const refused = yield* Effect.flip(attempt(() => client.chat.completions.create({ model, messages: ask("second") })))
      expect(refused).toBeInstanceOf(OpenAI.RateLimitError)
      expect((refused as RateLimitError).headers.get("retry-after")).toBe("1")
      expect((refused as RateLimitError).code).toBe("gateway_busy")
      const answer = yield* first.await.pipe(Effect.flatten)
      expect(answer.choices[0]?.message.content).toBe("echo:first")
    }))

  it.scopedLive("batch requests leave the last tenth of the wait queue to interactive ones", () =>
    Effect.gen(function*() {
      expect(waitingCaps(4096)).toEqual({ interactive: 4096, batch: 3686 })
      expect(waitingCaps(1)).toEqual({ interactive: 1, batch: 1 })
      const sim = yield* Simulator.make({ queueDelay: 600 })
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { maxWaiting: 2 })
      const client = openai(gateway.url)
      const send = (content: string, priority: "interactive" | "batch") =>
        attempt(() => client.chat.completions.create({ model, messages: ask(content) }, { headers: { "x-weatherproof-priority": priority } }))
      const first = yield* Effect.fork(send("first", "batch"))
      yield* Effect.sleep("150 millis")
      const refused = yield* Effect.flip(send("second", "batch"))
      expect((refused as RateLimitError).code).toBe("gateway_busy")
      const interactive = yield* Effect.fork(send("interactive", "interactive"))
      yield* Effect.sleep("150 millis")
      const full = yield* Effect.flip(send("another", "interactive"))
      expect((full as RateLimitError).code).toBe("gateway_busy")
      const answers = yield* Effect.all([first.await, interactive.await].map(Effect.flatten))
      expect(answers.map((answer) => answer.choices[0]?.message.content)).toEqual(["echo:first", "echo:interactive"])
    }))

  it.scopedLive("a failure after the 200 was committed: blank lines then an OpenAI error body; a stream's error event and no [DONE]", () =>
    Effect.gen(function*() {
      const late = (status: number): Handler => async (_, response) => {
        await new Promise((resolve) => setTimeout(resolve, 300))
        response.writeHead(status, { "content-type": "application/json" })
        response.end(Wire.errorBody("refused after a wait", "invalid_request_error", "late_refusal"))
      }
      const upstream = yield* rawServer([late(400), late(400)])
      const gateway = yield* startGateway([account("a", upstream.url, [upstreamKey])], {
        pool: noRetries,
        keepAliveInterval: "100 millis"
      })
      const committed = yield* attempt(() =>
        fetch(`${gateway.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model, messages: ask("x") }) })
      )
      // So that a proxy in front (nginx) passes the blank lines on as they come.
      expect(committed.headers.get("x-accel-buffering")).toBe("no")
      expect(committed.headers.get("cache-control")).toBe("no-cache")
      const body = yield* attempt(() => committed.text())
      expect(body).toMatch(/^\n+\{"error":\{"message":"refused after a wait","type":"invalid_request_error","param":null,"code":"late_refusal"\}\}$/)
      const stream = yield* rawText(`${gateway.url}/v1/chat/completions`, { model, messages: ask("x"), stream: true })
      expect(stream).toMatch(/^(: keep-alive\n\n)+data: \{"error":\{[^\n]*"code":"late_refusal"\}\}\n\n$/)
    }))

  it.scopedLive.each([true, false])("a client that disconnects cancels its upstream call and frees its permit (stream: %s)", (stream) =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ queueDelay: 2_000, keepAliveInterval: 20 })
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { keepAliveInterval: "50 millis" })
      const controller = new AbortController()
      const client = openai(gateway.url)
      const call = yield* Effect.fork(Effect.either<unknown, unknown, never>(
        stream
          ? Effect.flatMap(
            attempt(() => client.chat.completions.create({ model, messages: ask("x"), stream: true }, { signal: controller.signal })),
            collect
          )
          : attempt(() => client.chat.completions.create({ model, messages: ask("x") }, { signal: controller.signal }))
      ))
      yield* Effect.sleep("300 millis")
      expect((yield* gateway.pool.snapshot)[0]?.inFlight).toBe(1)
      controller.abort()
      yield* call.await
      yield* Effect.sleep("200 millis")
      expect((yield* gateway.pool.snapshot)[0]?.inFlight).toBe(0)
      expect((yield* sim.stats).clientClosed).toBe(1)
      expect(gateway.traffic.waiting).toBe(0)
      expect(gateway.traffic.active).toBe(0)
    }))

  it.scopedLive("a client that disconnects mid-stream, after its first content, cancels the upstream stream and frees its permit", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ queueDelay: 0, chunkDelay: 300 })
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])])
      const controller = new AbortController()
      const first = yield* attempt(async () => {
        const chunks = await openai(gateway.url).chat.completions.create(
          { model, messages: ask("a long answer"), stream: true },
          { signal: controller.signal }
        )
        for await (const chunk of chunks) return chunk
      })
      expect(first?.object).toBe("chat.completion.chunk")
      expect((yield* gateway.pool.snapshot)[0]?.inFlight).toBe(1)
      controller.abort()
      yield* Effect.sleep("200 millis")
      expect((yield* gateway.pool.snapshot)[0]?.inFlight).toBe(0)
      expect((yield* sim.stats).clientClosed).toBe(1)
      expect(gateway.traffic.active).toBe(0)
    }))

  it.scopedLive("GET /v1/models lists the models the accounts serve; /healthz and /readyz", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([
        account("a", sim.baseUrl, [Simulator.defaultKey], { models: { "house-model": "deepseek-v4-pro" } })
      ])
      const models = yield* attempt(() => openai(gateway.url).models.list())
      const ids = models.data.map((m) => m.id)
      expect(ids).toEqual(expect.arrayContaining(["deepseek-v4-flash", "deepseek-v4-pro", "house-model"]))
      const health = yield* attempt(() => fetch(`${gateway.url}/healthz`))
      expect(health.status).toBe(200)
      // Uptime monitors may probe with HEAD: every GET route answers it.
      for (const path of ["/healthz", "/readyz", "/", "/v1/models", "/metrics", "/status.json"]) {
        const head = yield* attempt(() => fetch(`${gateway.url}${path}`, { method: "HEAD" }))
        expect(head.status).toBe(200)
        expect(yield* attempt(() => head.text())).toBe("")
      }
      // The page's feed, as a stream's events, passes a proxy in front (nginx) unbuffered.
      const feed = yield* attempt(() => fetch(`${gateway.url}/status/events`, { method: "HEAD" }))
      expect(feed.headers.get("x-accel-buffering")).toBe("no")
      const ready = yield* attempt(() => fetch(`${gateway.url}/readyz`).then((r) => r.json()))
      expect(ready).toEqual({ status: "ready", accounts: [{ name: "a", state: "serving", reachable: true }] })
      const missing = yield* attempt(() => fetch(`${gateway.url}/v1/embeddings`, { method: "POST" }))
      expect(missing.status).toBe(404)
      expect(yield* attempt(() => missing.json())).toEqual({
        error: {
          message:
            "no such route: POST /v1/embeddings; this gateway serves POST /v1/chat/completions, GET /v1/models and GET /v1/models/{model}",
          type: "invalid_request_error",
          param: null,
          code: "not_found"
        }
      })
      // A path whose escapes do not decode matches no route: the same OpenAI-shaped 404.
      const undecodable = yield* attempt(() => fetch(`${gateway.url}/v1/models/%zz`))
      expect(undecodable.status).toBe(404)
      expect(yield* attempt(() => undecodable.json())).toMatchObject({ error: { code: "not_found" } })
    }))

  it.effect("WEATHERPROOF_GATEWAY_KEYS with keys separated by spaces is refused, never quoted: it was taken as one key", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(gatewayKeysConfig)
      expect(String(error)).toContain("key#1 holds a space, a line break or another character a request header cannot carry (keys are separated by commas)")
      expect(String(error)).not.toContain("gw-key-1")
    }).pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["WEATHERPROOF_GATEWAY_KEYS", "gw-key-1 gw-key-2"]])))))

  it("a loopback host is one however it is written; every other address or name is not", () => {
    const loopback = ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "0:0:0:0:0:0:0:1", "[0::1]", "::ffff:127.0.0.1", "::ffff:7f00:1"]
    const other = ["0.0.0.0", "::", "[::]", "10.0.0.1", "128.0.0.1", "fe80::1", "::ffff:10.0.0.1", "127.999.0.1", "127.0.0.1.evil.example", "example.localhost", ""]
    expect(loopback.filter((host) => !isLoopback(host))).toEqual([])
    expect(other.filter(isLoopback)).toEqual([])
  })

  it.scopedLive.skipIf(!ipv6Loopback)("a host written in brackets, as in a URL (`--host [::1]`), is listened on as its address (skipped where this machine has no IPv6 loopback)", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { host: "[::1]" })
      expect(gateway.url).toBe(`http://[::1]:${gateway.port}`)
      const answer = yield* post(gateway.url, JSON.stringify({ model, messages: ask("over IPv6") }), {})
      expect(answer.status).toBe(200)
    }))

  it.scopedLive("without gateway keys, a request from a web page (a foreign Origin, a rebound Host) is a 403 and reaches no upstream; with keys the key decides", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const keyless = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])])
      const port = new URL(keyless.url).port
      const body = JSON.stringify({ model, messages: ask("spend my balance") })
      // What a page on any site can send without a CORS preflight: a text/plain POST.
      const fromPage = yield* post(keyless.url, body, { "content-type": "text/plain", origin: "https://evil.example" })
      expect(fromPage.status).toBe(403)
      expect(JSON.parse(fromPage.text)).toMatchObject({ error: { code: "forbidden", type: "invalid_request_error" } })
      expect(JSON.parse(fromPage.text).error.message).toContain(`a request from a web page (Origin: "https://evil.example") is refused`)
      const rebound = yield* post(keyless.url, body, { host: `evil.example:${port}` })
      expect(rebound.status).toBe(403)
      expect(JSON.parse(rebound.text).error.message).toContain(`a request addressed to "evil.example:${port}" is refused`)
      expect((yield* post(keyless.url, body, { origin: "null" })).status).toBe(403)
      expect((yield* sim.stats).requests).toBe(0)

      expect((yield* post(keyless.url, body, { origin: "http://localhost:3000", host: `localhost:${port}` })).status).toBe(200)
      expect((yield* post(keyless.url, body, { host: `[::1]:${port}` })).status).toBe(200)

      const keyed = yield* startGateway([account("b", sim.baseUrl, [Simulator.defaultKey])], {
        gatewayKeys: [Redacted.make("gw-key")]
      })
      const withKey = yield* post(keyed.url, body, { origin: "https://app.example", authorization: "Bearer gw-key" })
      expect(withKey.status).toBe(200)
    }))

  it.scopedLive("a page's chat client may call the API (CORS): with keys any page, without them this machine's own; the status routes stay same-origin", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const keyed = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], {
        gatewayKeys: [Redacted.make("gw-key")]
      })
      const page = "https://chat.example"
      const preflight = (url: string, origin: string) =>
        attempt(() =>
          fetch(url, {
            method: "OPTIONS",
            headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type, x-stainless-os" }
          })
        )
      const allowed = yield* preflight(`${keyed.url}/v1/chat/completions`, page)
      expect(allowed.status).toBe(204)
      expect(allowed.headers.get("access-control-allow-origin")).toBe("*")
      expect(allowed.headers.get("access-control-allow-methods")).toContain("POST")
      expect(allowed.headers.get("access-control-allow-headers")).toBe("authorization, content-type, x-stainless-os")
      expect((yield* preflight(`${keyed.url}/v1/models`, page)).status).toBe(204)

      const ask0 = (stream: boolean) =>
        attempt(() =>
          fetch(`${keyed.url}/v1/chat/completions`, {
            method: "POST",
            headers: { origin: page, authorization: "Bearer gw-key", "content-type": "application/json" },
            body: JSON.stringify({ model, messages: ask("from a page"), stream })
          }).then(async (response) => ({ response, text: await response.text() }))
        )
      for (const stream of [false, true]) {
        const { response, text } = yield* ask0(stream)
        expect(response.status).toBe(200)
        expect(response.headers.get("access-control-allow-origin")).toBe("*")
        expect(text).toContain(stream ? "data: [DONE]" : "echo:from a page")
      }
      const unauthorized = yield* attempt(() => fetch(`${keyed.url}/v1/models`, { headers: { origin: page } }))
      expect(unauthorized.status).toBe(401)
      expect(unauthorized.headers.get("access-control-allow-origin")).toBe("*")
      for (const path of ["/status.json", "/metrics"]) {
        const status = yield* attempt(() => fetch(`${keyed.url}${path}`, { headers: { origin: page } }))
        expect(status.headers.get("access-control-allow-origin"), path).toBeNull()
        expect((yield* preflight(`${keyed.url}${path}`, page)).headers.get("access-control-allow-origin"), path).toBeNull()
      }

      const keyless = yield* startGateway([account("b", sim.baseUrl, [Simulator.defaultKey])])
      expect((yield* preflight(`${keyless.url}/v1/chat/completions`, "http://localhost:3000")).status).toBe(204)
      const foreign = yield* preflight(`${keyless.url}/v1/chat/completions`, page)
      expect(foreign.status).toBe(403)
      expect(foreign.headers.get("access-control-allow-origin")).toBeNull()
      expect((yield* sim.stats).requests).toBe(2)
    }))

  it.scopedLive("a client's idle connection is kept 65s by default (above a load balancer's 60s), as Keep-Alive says; a short timeout closes it once idle", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const accounts = [account("a", sim.baseUrl, [Simulator.defaultKey])]
      const byDefault = yield* startGateway(accounts)
      const first = yield* Effect.acquireRelease(connect(byDefault.port), (socket) => Effect.sync(() => socket.destroy()))
      expect(yield* first.ask("/healthz")).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*\r\nKeep-Alive: timeout=65\r\n/)

      const short = yield* startGateway(accounts, { idleConnectionTimeout: "1 second" })
      const socket = yield* Effect.acquireRelease(connect(short.port), (socket) => Effect.sync(() => socket.destroy()))
      expect(yield* socket.ask("/healthz")).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*\r\nKeep-Alive: timeout=1\r\n/)
      yield* Effect.sleep("100 millis")
      expect(yield* socket.ask("/readyz")).toMatch(/^HTTP\/1\.1 200 OK/)
      yield* socket.closed.pipe(Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => new Error("still open") }))
    }))

  it.scopedLive("GET /v1/models/{model} answers a model served, its name slashes and all; another is a 404 NotFoundError", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([
        account("a", sim.baseUrl, [Simulator.defaultKey], { models: { "house/model-1": "deepseek-v4-pro" } })
      ])
      const client = openai(gateway.url)
      expect(yield* attempt(() => client.models.retrieve("deepseek-v4-flash"))).toEqual({
        id: "deepseek-v4-flash",
        object: "model",
        created: 0,
        owned_by: "weatherproof"
      })
      expect((yield* attempt(() => client.models.retrieve("house/model-1"))).id).toBe("house/model-1")
      const raw = yield* attempt(() => fetch(`${gateway.url}/models/house/model-1`).then((r) => r.json()))
      expect(raw).toMatchObject({ id: "house/model-1" })
      const unknown = yield* Effect.flip(attempt(() => client.models.retrieve("gpt-4o")))
      expect(unknown).toBeInstanceOf(OpenAI.NotFoundError)
      expect((unknown as APIError).code).toBe("model_not_found")
    }))

  it.scopedLive("every route is matched as the router matches a path: its case, a trailing slash and repeated slashes aside (a base URL joined to a path by hand)", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([
        account("a", sim.baseUrl, [Simulator.defaultKey], { models: { "House/Model-1": "deepseek-v4-pro" } })
      ], { gatewayKeys: [Redacted.make("gw-key")] })
      const authorization = { authorization: "Bearer gw-key" }
      const chatPaths = ["/v1/chat/completions/", "//v1//chat/completions", "/V1/Chat/Completions", "/chat/completions/?x=1"]
      for (const path of chatPaths) {
        const answer = yield* attempt(() =>
          fetch(`${gateway.url}${path}`, { method: "POST", headers: authorization, body: JSON.stringify({ model, messages: ask(path) }) })
        )
        expect(answer.status, path).toBe(200)
      }
      // A model's name keeps its case; the path's prefix does not matter.
      for (const path of ["/V1/MODELS/House/Model-1", "//v1/models/House/Model-1/"]) {
        const found = yield* attempt(() => fetch(`${gateway.url}${path}`, { headers: authorization }).then((r) => r.json()))
        expect(found, path).toMatchObject({ id: "House/Model-1" })
      }
      // A page's preflight and its answer, at the same paths.
      for (const path of [...chatPaths, "/V1/MODELS/"]) {
        const preflight = yield* attempt(() =>
          fetch(`${gateway.url}${path}`, {
            method: "OPTIONS",
            headers: { origin: "https://chat.example", "access-control-request-method": "POST" }
          })
        )
        expect(preflight.status, path).toBe(204)
      }
      const listed = yield* attempt(() => fetch(`${gateway.url}/V1/MODELS`, { headers: { ...authorization, origin: "https://chat.example" } }))
      expect(listed.headers.get("access-control-allow-origin")).toBe("*")
      expect((yield* sim.stats).requests).toBe(chatPaths.length)
    }))

  it.scopedLive("a model the gateway does not serve is a 404 NotFoundError, model_not_found, and opens no lane, no series, no call", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const logs: Array<string> = []
      const logger = Logger.make(({ message }) => logs.push(String(message)))
      const gateway = yield* startGateway([
        account("a", sim.baseUrl, [Simulator.defaultKey], { models: { "house-model": "deepseek-v4-pro" } })
      ]).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
      const client = openai(gateway.url)
      const unknown = yield* Effect.flip(attempt(() => client.chat.completions.create({ model: "made-up-model", messages: ask("x") })))
      expect(unknown).toBeInstanceOf(OpenAI.NotFoundError)
      expect((unknown as APIError).code).toBe("model_not_found")
      expect((unknown as APIError).param).toBe("model")
      expect((unknown as APIError).message).toContain("\"made-up-model\" is not served here; GET /v1/models lists")
      const streamed = yield* Effect.flip(
        attempt(() => client.chat.completions.create({ model: "made-up-model", messages: ask("x"), stream: true }))
      )
      expect(streamed).toBeInstanceOf(OpenAI.NotFoundError)
      // A long name is not echoed whole.
      const long = yield* Effect.flip(attempt(() => client.chat.completions.create({ model: "m".repeat(5000), messages: ask("x") })))
      expect((long as APIError).message.length).toBeLessThan(300)
      expect((yield* sim.stats).requests).toBe(0)
      // The operator is told once per model what would serve it.
      expect(logs.filter((line) => line.includes("which no account serves"))).toEqual([
        "gateway: a client asked for the model \"made-up-model\", which no account serves (a 404): " +
          "to serve it, list it in WEATHERPROOF_PRICING_FILE (with its price) or in an account's models (--accounts)",
        expect.stringMatching(/^gateway: a client asked for the model "m{1,100}…", which no account serves/)
      ])
      const metrics = yield* attempt(() => fetch(`${gateway.url}/metrics`).then((r) => r.text()))
      expect(metrics).not.toContain("made-up-model")
      // The account's own name for a model is served.
      const own = yield* attempt(() => client.chat.completions.create({ model: "house-model", messages: ask("mine") }))
      expect(own.choices[0]?.message.content).toBe("echo:mine")
    }))

  it.scopedLive("/readyz is 503 budget_spent once the budget is spent: every call would be refused", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { ledger: { budgetUsd: 0.000001 } })
      const readiness = attempt(() => fetch(`${gateway.url}/readyz`).then(async (r) => [r.status, await r.json()] as const))
      // Ready once the account's balance check is in.
      const ready = yield* Effect.filterOrFail(readiness, ([status]) => status === 200).pipe(
        Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 100 })
      )
      expect(ready).toEqual([200, { status: "ready", accounts: [{ name: "a", state: "serving", reachable: true }] }])
      yield* attempt(() => openai(gateway.url).chat.completions.create({ model, messages: ask("spend it") }))
      expect(yield* readiness).toEqual([503, { status: "budget_spent", accounts: [{ name: "a", state: "serving", reachable: true }] }])
      // The status says by how much the call under way when it was spent went past it.
      const spend = yield* attempt(async () => (await (await fetch(`${gateway.url}/status.json`)).json()).samples.at(-1).spend).pipe(
        Effect.filterOrFail((spend) => spend.remainingUsd === 0),
        Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 100 })
      )
      expect(spend).toMatchObject({ budgetUsd: 0.000001, remainingUsd: 0 })
      expect(spend.overUsd).toBeGreaterThan(0)
      expect(spend.overUsd).toBeCloseTo(spend.costUsd - 0.000001, 12)
    }))

  it.scopedLive("/readyz says what an account that cannot serve last met", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ accounts: { a: { keys: ["sk-ready-a"] }, b: { keys: ["sk-ready-b"] } } })
      const gateway = yield* startGateway([account("a", sim.baseUrl, ["sk-ready-a"]), account("b", sim.baseUrl, ["sk-ready-b"])])
      const readiness = attempt(() => fetch(`${gateway.url}/readyz`).then(async (r) => [r.status, await r.json()] as const))
      yield* Effect.filterOrFail(readiness, ([status]) => status === 200).pipe(
        Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 100 })
      )
      yield* sim.setBalance("a", 0)
      // Calls until one reaches a and draws its 402 (the other goes to b).
      const client = openai(gateway.url)
      yield* Effect.forEach([1, 2, 3, 4], (i) => attempt(() => client.chat.completions.create({ model, messages: ask(`q${i}`) })))
      const [status, body] = yield* readiness
      expect(status).toBe(200)
      expect(body.accounts).toEqual([
        { name: "a", state: "out_of_balance", reachable: true, lastFailure: expect.stringMatching(/^InsufficientBalance: /) },
        { name: "b", state: "serving", reachable: true }
      ])
    }))

  it.scopedLive("while the start's balance check is unanswered, the banner says so rather than that no account can serve", () =>
    Effect.gen(function*() {
      const upstream = yield* rawServer([], { balance: () => {} })
      const gateway = yield* startGateway([account("a", upstream.url, [Simulator.defaultKey])], { statusInterval: "50 millis" })
      const banner = yield* attempt(async () => (await (await fetch(`${gateway.url}/status.json`)).json()).samples.at(-1)?.banner).pipe(
        Effect.filterOrFail((banner) => banner !== undefined),
        Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 100 })
      )
      expect(banner).toMatchObject({ checkingBalance: ["a"], noAccountServing: true })
    }))

  it.scopedLive("/readyz is 503 while no account's base URL accepts connections, and 200 once one does, with no call made; the page's banner says so", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const port = yield* Effect.promise(() => freePort())
      const gateway = yield* startGateway([account("a", `http://127.0.0.1:${port}/v1`, [Simulator.defaultKey])], {
        pool: { reachProbeInterval: "50 millis" },
        statusInterval: "50 millis"
      })
      const readiness = attempt(() => fetch(`${gateway.url}/readyz`).then(async (r) => [r.status, await r.json()] as const))
      const noAccountServing = (shown: boolean) =>
        attempt(async () => (await (await fetch(`${gateway.url}/status.json`)).json()).samples.at(-1).banner.noAccountServing).pipe(
          Effect.filterOrFail((flag) => flag === shown),
          Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 100 })
        )
      yield* gateway.pool.unreachable
      expect(yield* readiness).toEqual([503, { status: "unavailable", accounts: [{ name: "a", state: "unreachable", reachable: false }] }])
      expect(yield* noAccountServing(true)).toBe(true)
      yield* relay(port, Number(new URL(sim.baseUrl).port))
      const ready = yield* Effect.filterOrFail(readiness, ([status]) => status === 200).pipe(
        Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 100 })
      )
      expect(ready).toEqual([200, { status: "ready", accounts: [{ name: "a", state: "serving", reachable: true }] }])
      expect(yield* noAccountServing(false)).toBe(false)
      expect(yield* sim.stats).toMatchObject({ completed: 0 })
    }))

  it.scopedLive("a task the router sends to a model not served is warned of at start, and its requests are refused", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const logs: Array<string> = []
      const logger = Logger.make(({ message }) => logs.push(String(message)))
      // A table without deepseek-v4-pro, where the default router sends `reasoning`.
      const flashOnly = { models: { "deepseek-v4-flash": CostLedger.defaultPricing.models["deepseek-flash"]! } }
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { ledger: { pricing: flashOnly } })
        .pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
      expect(logs.filter((line) => line.includes("not served"))).toEqual([
        "gateway: the router sends reasoning requests to deepseek-v4-pro, which is not served (not in the pricing table or an account's models): " +
          "a request naming that task (x-weatherproof-task) will be refused"
      ])
      const client = openai(gateway.url)
      const refused = yield* Effect.flip(attempt(() =>
        client.chat.completions.create({ model: "", messages: ask("think") }, { headers: { "x-weatherproof-task": "reasoning" } })
      ))
      expect(refused).toBeInstanceOf(OpenAI.NotFoundError)
      const answered = yield* attempt(() =>
        client.chat.completions.create({ model: "", messages: ask("sort") }, { headers: { "x-weatherproof-task": "classification" } })
      )
      expect(answered.model).toBe("deepseek-v4-flash")
    }))

  it.scopedLive("the tasks the router sends to one model not served are warned of in one line (another provider's table)", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const logs: Array<string> = []
      const logger = Logger.make(({ message }) => logs.push(String(message)))
      const otherProvider = { models: { "gpt-4o": { cacheHit: 1.25, cacheMiss: 2.5, output: 10 } } }
      yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { ledger: { pricing: otherProvider } })
        .pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
      expect(logs.filter((line) => line.includes("not served"))).toEqual([
        "gateway: the router sends classification, extraction, summarisation, chat requests to deepseek-v4-flash, which is not served " +
          "(not in the pricing table or an account's models): a request naming one of those tasks (x-weatherproof-task), or naming no model, will be refused",
        "gateway: the router sends reasoning requests to deepseek-v4-pro, which is not served (not in the pricing table or an account's models): " +
          "a request naming that task (x-weatherproof-task) will be refused"
      ])
    }))

  it.scopedLive("identical deterministic requests are answered from the cache unless x-weatherproof-cache: bypass, as x-weatherproof-cache-status tells; a bad header is a 400", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])])
      const client = openai(gateway.url)
      const ask0 = (headers: Record<string, string> = {}) =>
        attempt(() => client.chat.completions.create({ model, messages: ask("same"), temperature: 0 }, { headers }))
      const askWithStatus = (headers: Record<string, string> = {}) =>
        attempt(() => client.chat.completions.create({ model, messages: ask("same"), temperature: 0 }, { headers }).withResponse())
          .pipe(Effect.map(({ data, response }) => ({ id: data.id, status: response.headers.get("x-weatherproof-cache-status") })))
      const first = yield* askWithStatus()
      const second = yield* askWithStatus()
      expect(second.id).toBe(first.id)
      expect([first.status, second.status]).toEqual(["miss", "hit"])
      expect((yield* sim.stats).requests).toBe(1)
      const bypassed = yield* askWithStatus({ "x-weatherproof-cache": "bypass", "x-weatherproof-priority": "batch" })
      expect(bypassed.status).toBe("miss")
      expect((yield* sim.stats).requests).toBe(2)
      // A header's value in any case, as HTTP's tokens are.
      const shouted = yield* askWithStatus({ "x-weatherproof-cache": "BYPASS", "x-weatherproof-priority": "Batch", "x-weatherproof-task": "Chat" })
      expect(shouted.status).toBe("miss")
      expect((yield* sim.stats).requests).toBe(3)
      const bad = yield* Effect.flip(ask0({ "x-weatherproof-cache": "sometimes" }))
      expect(bad).toBeInstanceOf(OpenAI.BadRequestError)
      expect((bad as APIError).message).toContain("x-weatherproof-cache must be one of auto, force, bypass")
      // Checked in order: the body, then the task, priority and cache headers.
      const twoBad = yield* Effect.flip(ask0({ "x-weatherproof-priority": "soon", "x-weatherproof-cache": "sometimes" }))
      expect((twoBad as APIError).message).toContain("x-weatherproof-priority must be one of interactive, batch")
      const badBody = yield* Effect.flip(attempt(() =>
        client.chat.completions.create({ model, messages: "hello" as never }, { headers: { "x-weatherproof-cache": "sometimes" } })
      ))
      expect((badBody as APIError).message)
        .toBe(`400 invalid chat completion request: messages: Expected ReadonlyArray<Message>, actual "hello"`)
      expect((badBody as APIError).param).toBe("messages")
    }))

  it.scopedLive("a deterministic stream is answered from the cache too: the stored answer's chunks, its usage when asked, then [DONE]", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])])
      const client = openai(gateway.url)
      const statuses: Array<string | null> = []
      const streamed = (includeUsage: boolean) =>
        attempt(() =>
          client.chat.completions.create({
            model,
            messages: ask("same stream"),
            temperature: 0,
            stream: true,
            ...(includeUsage ? { stream_options: { include_usage: true } } : {})
          }).withResponse()
        ).pipe(
          Effect.tap(({ response }) => statuses.push(response.headers.get("x-weatherproof-cache-status"))),
          Effect.flatMap(({ data }) => collect(data))
        )
      const text = (chunks: ReadonlyArray<OpenAI.ChatCompletionChunk>) =>
        chunks.flatMap((chunk) => chunk.choices.map((choice) => choice.delta.content ?? "")).join("")
      const live = yield* streamed(true)
      const replayed = yield* streamed(true)
      expect(text(replayed)).toBe(text(live))
      expect(text(replayed)).toBe("echo:same stream")
      expect(replayed.at(-1)?.usage).toEqual(live.at(-1)?.usage)
      expect(replayed.flatMap((chunk) => chunk.choices.map((choice) => choice.finish_reason)).at(-1)).toBe("stop")
      // The same request without a stream shares the entry; a stream that asked for no usage gets none.
      const answered = yield* attempt(() => client.chat.completions.create({ model, messages: ask("same stream"), temperature: 0 }))
      expect(answered.choices[0]?.message.content).toBe("echo:same stream")
      const unasked = yield* streamed(false)
      expect(unasked.every((chunk) => chunk.usage === undefined || chunk.usage === null)).toBe(true)
      expect(text(unasked)).toBe("echo:same stream")
      expect(statuses).toEqual(["miss", "hit", "hit"])
      expect((yield* sim.stats).requests).toBe(1)
    }))

  it.scopedLive("optional fields sent as null (as many clients send unset ones), nested ones too, are unset: the request is answered", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])])
      const nulls = Object.fromEntries(
        ["thinking", "reasoning_effort", "response_format", "stream", "stream_options", "max_tokens", "temperature", "top_p",
          "frequency_penalty", "presence_penalty", "stop", "tools", "tool_choice", "logprobs", "top_logprobs", "user_id"]
          .map((field) => [field, null])
      )
      const messages = [...ask("x"), { role: "assistant", content: "y", tool_calls: null }, ...ask("z")]
      const post = (body: object) =>
        attempt(async () => {
          const response = await fetch(`${gateway.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify(body)
          })
          return { status: response.status, body: await response.json() as { choices: ReadonlyArray<{ message: { content: string } }> } }
        })
      const answer = yield* post({ model, messages, ...nulls })
      expect(answer.status).toBe(200)
      expect(answer.body.choices[0]?.message.content).toBe("echo:z")
      // Nested ones too (a tool built from a definition with no description, a message's name left
      // unset, a part's text), and a null `model` is left to the router as an absent one.
      const nested = yield* post({
        model: null,
        messages: [
          { role: "system", content: "s", name: null },
          { role: "developer", content: "d", name: null },
          { role: "assistant", content: "y", name: null, prefix: null, reasoning_content: null },
          { role: "user", content: [{ type: "text", text: null }, { type: "text", text: "z" }], name: null }
        ],
        tools: [{ type: "function", function: { name: "f", description: null, parameters: null, strict: null } }]
      })
      expect(nested.status).toBe(200)
      expect(nested.body.choices[0]?.message.content).toBe("echo:z")
      expect((yield* sim.stats).requests).toBe(2)
    }))

  it.scopedLive("a client that asks before sending its body (Expect: 100-continue) is told to go on only past the key and the size checks", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], {
        gatewayKeys: [Redacted.make("gw-key")],
        maxBodyBytes: 64 * 1000
      })
      const body = JSON.stringify({ model, messages: ask("asked first") })
      // Sends the head, waits for the first answer; sends the body only on a 100, as curl does.
      const ask100 = (key: string, length = Buffer.byteLength(body)) =>
        Effect.async<string>((resume) => {
          const socket = Net.connect(gateway.port, "127.0.0.1", () =>
            socket.write(
              `POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${key}\r\n` +
                `Content-Type: application/json\r\nContent-Length: ${length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`
            ))
          let received = ""
          let sent = false
          socket.on("data", (data) => {
            received += data.toString("latin1")
            if (!sent && received.startsWith("HTTP/1.1 100")) {
              sent = true
              socket.write(body)
            }
          })
          socket.on("close", () => resume(Effect.succeed(received)))
          return Effect.sync(() => socket.destroy())
        }).pipe(Effect.timeout("10 seconds"))
      const refused = yield* ask100("wrong")
      expect(refused).toMatch(/^HTTP\/1\.1 401 /)
      const tooLarge = yield* ask100("gw-key", 1_000_000)
      expect(tooLarge).toMatch(/^HTTP\/1\.1 400 /)
      expect(tooLarge).toContain("the request body is larger than 64000 bytes")
      const answered = yield* ask100("gw-key")
      expect(answered).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /)
      expect(answered).toContain("echo:asked first")
      expect((yield* sim.stats).requests).toBe(1)
    }))

  it.scopedLive("a gateway given a smaller body limit refuses a body over it, naming it, and answers one within it", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { maxBodyBytes: 64 * 1000 })
      // The long text in the system message: the Simulator echoes the user's, a token at a time.
      const post = (system: string) =>
        attempt(async () => {
          const response = await fetch(`${gateway.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ model, messages: [{ role: "system", content: system }, ...ask("hi")] })
          })
          return { status: response.status, body: await response.json() as { error?: { message: string } } }
        })
      const large = yield* post("x".repeat(64 * 1000))
      expect(large.status).toBe(400)
      expect(large.body.error?.message).toBe("the request body is larger than 64000 bytes")
      expect((yield* sim.stats).requests).toBe(0)
      expect((yield* post("x".repeat(60 * 1000))).status).toBe(200)
    }))

  it.scopedLive("a body that is not JSON, not an object, empty, not UTF-8, compressed, larger than 10 MiB or nested too deep, is a 400 and reaches no upstream", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])])
      const post = (body: BodyInit, headers: Record<string, string> = {}) =>
        attempt(async () => {
          const response = await fetch(`${gateway.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json", ...headers },
            body
          })
          return { status: response.status, body: await response.json() as { error: { code: string; message: string; param: string | null } } }
        })
      const notJson = yield* post("{\"model\": ")
      expect(notJson.status).toBe(400)
      expect(notJson.body.error).toMatchObject({ code: "invalid_request", message: "the request body is not JSON (column 11: Unexpected end of JSON input)" })
      const array = yield* post("[]")
      expect(array.status).toBe(400)
      expect(array.body.error.message).toBe("the request body is an array, not a JSON object")
      const gzipped = yield* post(new Uint8Array(NodeZlib.gzipSync(JSON.stringify({ model, messages: ask("x") }))), { "content-encoding": "gzip" })
      expect(gzipped.status).toBe(400)
      expect(gzipped.body.error.message).toBe("the request body is encoded (content-encoding: gzip): send it as plain JSON")
      const large = yield* post(JSON.stringify({ model, messages: ask("x".repeat(10 * 1024 * 1024)) }))
      expect(large.status).toBe(400)
      expect(large.body.error.message).toBe("the request body is larger than 10 MiB")
      // Bytes that are not UTF-8 are refused, never sent upstream with U+FFFD in their place.
      const latin1 = new Uint8Array(Buffer.concat([
        Buffer.from(`{"model":"${model}","messages":[{"role":"user","content":"caf`),
        Buffer.from([0xe9]),
        Buffer.from(`"}]}`)
      ]))
      const notUtf8 = yield* post(latin1)
      expect(notUtf8.status).toBe(400)
      expect(notUtf8.body.error.message).toBe("the request body is not valid UTF-8")
      const empty = yield* post("")
      expect(empty.status).toBe(400)
      expect(empty.body.error.message).toBe("the request body is empty: expected a JSON object, a chat completion request")
      // Nested past what sending it can serialise (a tool's schema 5,000 levels deep): a 400, and
      // the gateway still takes requests (such a body once kept a waiting slot for good).
      const depth = 5000
      const deepTool = `{"type":"function","function":{"name":"f","parameters":${"{\"a\":".repeat(depth)}1${"}".repeat(depth)}}}`
      for (const stream of [false, true]) {
        const deep = yield* post(`{"model":"${model}","stream":${stream},"messages":[{"role":"user","content":"x"}],"tools":[${deepTool}]}`)
        expect(deep.status).toBe(400)
        expect(deep.body.error.message).toBe("the request body nests arrays and objects deeper than 256 levels")
      }
      // A body of many invalid messages is refused at its first problem: checking all 200,000
      // held the event loop, and every other client, for about a second.
      const invalidMany = yield* post(JSON.stringify({ model, messages: Array.from({ length: 200_000 }, (_, i) => ({ role: "user", content: i })) }))
      expect(invalidMany.status).toBe(400)
      expect(invalidMany.body.error.message).toMatch(/^invalid chat completion request: messages\[0\]\.content: [^;]*$/)
      expect(invalidMany.body.error.param).toBe("messages[0].content")
      expect((yield* sim.stats).requests).toBe(0)
      // A leading byte order mark is dropped, as JSON's RFC lets a parser do.
      const withBom = yield* post(`\uFEFF${JSON.stringify({ model, messages: ask("bom") })}`)
      expect(withBom.status).toBe(200)
    }))

  it.scopedLive("an upstream that drops the connection before answering is retried before the client sees anything", () =>
    Effect.gen(function*() {
      const upstream = yield* rawServer([destroySocket, reply(200, JSON.stringify(Wire.completion(generation("second try"))))])
      const gateway = yield* startGateway([account("a", upstream.url, [upstreamKey])], {
        pool: { retry: { base: "10 millis" } }
      })
      const answer = yield* attempt(() => openai(gateway.url).chat.completions.create({ model, messages: ask("x") }))
      expect(answer.choices[0]?.message.content).toBe("second try")
    }))
})
