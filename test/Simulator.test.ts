import { describe, expect, it } from "@effect/vitest"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Net from "node:net"
import type { ChatCompletion, ChatCompletionChunk } from "../src/ChatSchema.js"
import * as internal from "../src/internal/simulator.js"
import * as Simulator from "../src/Simulator.js"
import { capturingLogs, type Logged } from "./support/logs.js"
import { takenPort } from "./support/ports.js"

const model = "deepseek-v4-flash"

const chatBody = (content: string, extra: Record<string, unknown> = {}): string =>
  JSON.stringify({ model, messages: [{ role: "user", content }], ...extra })

interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly text: string
}

interface Request {
  readonly body?: string
  readonly key?: string | undefined
  readonly path?: string
  readonly method?: string
}

/** Every exchange is bounded: a server bug fails the test instead of hanging it. */
const bound = "5 seconds"

const send = (sim: Simulator.Service, request: Request, signal?: AbortSignal) =>
  Effect.tryPromise(() =>
    fetch(`${sim.baseUrl}${request.path ?? "/chat/completions"}`, {
      method: request.method ?? "POST",
      headers: {
        "content-type": "application/json",
        ...(request.key === undefined ? {} : { authorization: `Bearer ${request.key}` })
      },
      ...(request.body === undefined ? {} : { body: request.body }),
      ...(signal === undefined ? {} : { signal })
    })
  ).pipe(Effect.timeout(bound))

/** Sends a request and reads its whole body. */
const call = (sim: Simulator.Service, request: Request) =>
  Effect.flatMap(send(sim, request), (response) =>
    Effect.map(
      Effect.tryPromise(() => response.text()).pipe(Effect.timeout(bound)),
      (text): Reply => ({ status: response.status, headers: response.headers, text })
    ))

const chat = (sim: Simulator.Service, content: string, extra: Record<string, unknown> = {}, key = Simulator.defaultKey) =>
  call(sim, { body: chatBody(content, extra), key })

/** Sends a request and returns once its headers arrived; the request is aborted when the scope closes. */
const open = (sim: Simulator.Service, request: Request) =>
  Effect.gen(function*() {
    const controller = new AbortController()
    yield* Effect.addFinalizer(() => Effect.sync(() => controller.abort()))
    const response = yield* send(sim, request, controller.signal)
    // Kept reachable until the scope closes: fetch cancels the body of a response collected
    // unread, which would end the request it holds open at the next garbage collection.
    yield* Effect.addFinalizer(() => Effect.sync(() => response.bodyUsed))
    return response
  })

/** Polls `check` every 10 ms (at most 2 s) until `done` holds. */
const eventually = <A>(check: Effect.Effect<A>, done: (a: A) => boolean) =>
  check.pipe(
    Effect.filterOrFail(done, () => "condition not reached"),
    Effect.retry(Schedule.spaced("10 millis").pipe(Schedule.intersect(Schedule.recurs(200))))
  )

const events = (text: string): ReadonlyArray<string> =>
  text.split("\n\n").filter((event) => event.startsWith("data: ")).map((event) => event.slice(6))

const chunksOf = (text: string): ReadonlyArray<ChatCompletionChunk> =>
  events(text).filter((data) => data !== "[DONE]").map((data) => JSON.parse(data) as ChatCompletionChunk)

const streamed = (text: string, field: "content" | "reasoning_content"): string =>
  chunksOf(text).map((chunk) => chunk.choices[0]?.delta[field] ?? "").join("")

/** Opens a raw TCP connection to the simulator: "connected" or the error code. */
const connect = (sim: Simulator.Service) =>
  Effect.async<string>((resume) => {
    const socket = Net.connect(Number(new URL(sim.baseUrl).port), "127.0.0.1", () => {
      socket.destroy()
      resume(Effect.succeed("connected"))
    })
    socket.on("error", (error: NodeJS.ErrnoException) => resume(Effect.succeed(error.code ?? "error")))
    return Effect.sync(() => socket.destroy())
  })

const accountStats = (stats: Simulator.Stats, name = "default"): Simulator.AccountStats => {
  const account = stats.accounts[name]
  if (account === undefined) throw new Error(`no stats for ${name}`)
  return account
}

const quick: Simulator.Options = { queueDelay: 0, chunkDelay: 0 }

describe("Simulator", () => {
  it.scopedLive("answers with content derived from the request and usage from lengths", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ ...quick, cacheHitRatio: 0.5 })
      const reply = yield* call(sim, {
        path: "/v1/chat/completions",
        key: Simulator.defaultKey,
        body: chatBody("hello world", { thinking: { type: "enabled" } })
      })
      expect(reply.status).toBe(200)
      const completion = JSON.parse(reply.text) as ChatCompletion
      expect(completion.model).toBe(model)
      expect(completion.choices[0]?.message.content).toBe("echo:hello world")
      expect(completion.choices[0]?.message.reasoning_content).toBe("think:hello world")
      expect(completion.usage).toEqual({
        prompt_tokens: 3,
        completion_tokens: 9,
        total_tokens: 12,
        prompt_cache_hit_tokens: 1,
        prompt_cache_miss_tokens: 2,
        completion_tokens_details: { reasoning_tokens: 5 }
      })

      const stream = yield* chat(sim, "a streamed answer", { stream: true, thinking: { type: "enabled" } })
      expect(stream.headers.get("content-type")).toContain("text/event-stream")
      expect(events(stream.text).at(-1)).toBe("[DONE]")
      expect(streamed(stream.text, "content")).toBe("echo:a streamed answer")
      expect(streamed(stream.text, "reasoning_content")).toBe("think:a streamed answer")
      const last = chunksOf(stream.text).at(-1)
      expect(last?.choices).toEqual([])
      expect(last?.usage?.completion_tokens).toBe(6 + 6)
      expect((yield* sim.completions).map((c) => [c.marker, c.stream])).toEqual([
        ["hello world", false],
        ["a streamed answer", true]
      ])
    }))

  it.scopedLive("cuts an answer longer than max_tokens to it, reasoning first, finishing with length, stream or not", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make(quick)
      // "think:hello world" is 5 tokens, "echo:hello world" 4: 7 leave the content 2 (8 characters).
      const thinking = { thinking: { type: "enabled" }, max_tokens: 7 }
      const whole = JSON.parse((yield* chat(sim, "hello world", thinking)).text) as ChatCompletion
      expect(whole.choices[0]).toMatchObject({
        finish_reason: "length",
        message: { reasoning_content: "think:hello world", content: "echo:hel" }
      })
      expect(whole.usage).toMatchObject({ completion_tokens: 7, completion_tokens_details: { reasoning_tokens: 5 } })
      const stream = yield* chat(sim, "hello world", { ...thinking, max_tokens: 3, stream: true })
      expect(streamed(stream.text, "reasoning_content")).toBe("think:hello ")
      expect(streamed(stream.text, "content")).toBe("")
      expect(chunksOf(stream.text).flatMap((chunk) => chunk.choices.map((choice) => choice.finish_reason)).at(-1)).toBe("length")
      expect(chunksOf(stream.text).at(-1)?.usage?.completion_tokens).toBe(3)
      const enough = JSON.parse((yield* chat(sim, "hello world", { max_tokens: 4 })).text) as ChatCompletion
      expect(enough.choices[0]).toMatchObject({ finish_reason: "stop", message: { content: "echo:hello world" } })
    }))

  it.scopedLive("answers 429 over the limit an account's keys share, and frees a slot when a client leaves", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({
        ...quick,
        accounts: { team: { keys: ["sk-team-one", "sk-team-two"], limit: 2 }, solo: { keys: ["sk-solo"] } },
        faults: { script: ["stall", "stall"] }
      })
      yield* Effect.scoped(Effect.gen(function*() {
        const held = [
          yield* open(sim, { body: chatBody("held 1"), key: "sk-team-one" }),
          yield* open(sim, { body: chatBody("held 2"), key: "sk-team-two" })
        ]
        expect(held.map((response) => response.status)).toEqual([200, 200])
        expect((yield* chat(sim, "over", {}, "sk-team-one")).status).toBe(429)
        expect((yield* chat(sim, "over", {}, "sk-team-two")).status).toBe(429)
        expect((yield* chat(sim, "other account", {}, "sk-solo")).status).toBe(200)
        const team = accountStats(yield* sim.stats, "team")
        expect([team.inFlight, team.maxInFlight, team.rateLimited]).toEqual([2, 2, 2])
      }))
      yield* eventually(sim.stats, (stats) => accountStats(stats, "team").inFlight === 0)
      expect((yield* chat(sim, "after", {}, "sk-team-two")).status).toBe(200)
      const stats = yield* sim.stats
      expect(stats.byStatus[429]).toBe(2)
      expect(stats.clientClosed).toBe(2)
      expect(stats.rateLimited).toBe(2)
      expect(stats.accepted).toBe(4)
    }))

  it.scopedLive("follows a limit that changes over time and records it in the timeline", () =>
    Effect.gen(function*() {
      let allowed = 1
      const sim = yield* Simulator.make({ ...quick, limit: () => allowed, faults: { script: ["stall", "stall"] } })
      yield* open(sim, { body: chatBody("first"), key: Simulator.defaultKey })
      expect((yield* chat(sim, "rejected")).status).toBe(429)
      allowed = 2
      expect((yield* open(sim, { body: chatBody("second"), key: Simulator.defaultKey })).status).toBe(200)
      expect((yield* chat(sim, "rejected again")).status).toBe(429)
      yield* sim.setLimit("default", 3)
      expect((yield* chat(sim, "third")).status).toBe(200)
      const account = accountStats(yield* sim.stats)
      expect(account.maxInFlight).toBe(3)
      expect(account.limit).toBe(3)
      expect(account.timeline.map((sample) => [sample.limit, sample.inFlight])).toEqual([
        [1, 1],
        [2, 2],
        [3, 2],
        [3, 3],
        [3, 2]
      ])
    }))

  it.scopedLive("sends empty lines before the JSON of a queued non-stream request", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ queueDelay: 80, keepAliveInterval: 10 })
      const reply = yield* chat(sim, "queued")
      expect(reply.status).toBe(200)
      const leading = reply.text.length - reply.text.trimStart().length
      expect(leading).toBeGreaterThan(0)
      expect(reply.text.slice(0, leading)).toMatch(/^\n+$/)
      expect((JSON.parse(reply.text) as ChatCompletion).choices[0]?.message.content).toBe("echo:queued")
    }))

  it.scoped("refuses an option that is not a duration as it is made, naming it, rather than failing each request", () =>
    Effect.gen(function*() {
      const made = (options: Record<string, unknown>) =>
        Effect.map(Effect.exit(Simulator.make(options as Simulator.Options)), (exit) =>
          Exit.isFailure(exit) ? String(exit.cause._tag === "Die" ? exit.cause.defect : exit.cause) : "made")
      expect(yield* made({ queueDelay: "50ms" })).toBe(
        `TypeError: Simulator: queueDelay is "50ms", not a duration (a number of milliseconds, or a string such as "50 millis")`
      )
      expect(yield* made({ queueDelay: { min: 0, max: "2 sec" } })).toContain(`queueDelay.max is "2 sec", not a duration`)
      expect(yield* made({ retryAfter: "soon" })).toContain(`retryAfter is "soon", not a duration`)
      expect(yield* made({ queueDelay: "50 millis", retryAfter: 2000 })).toBe("made")
    }))

  it.scoped("a port in use is a defect that names it, not a bare system error", () =>
    Effect.gen(function*() {
      const port = yield* takenPort
      const exit = yield* Effect.exit(Simulator.make({ port }))
      expect(Exit.isFailure(exit) && exit.cause._tag === "Die" ? String(exit.cause.defect) : "made").toBe(
        `Error: Simulator: cannot listen on 127.0.0.1:${port}: listen EADDRINUSE: address already in use 127.0.0.1:${port}`
      )
    }))

  it.scoped("refuses as it is made a piece size, share, count or cap out of range (a piece size of 0 would loop for good, a NaN cap admit all)", () =>
    Effect.gen(function*() {
      const made = (options: Record<string, unknown>) =>
        Effect.map(Effect.exit(Simulator.make(options as Simulator.Options)), (exit) =>
          Exit.isFailure(exit) ? String(exit.cause._tag === "Die" ? exit.cause.defect : exit.cause) : "made")
      expect(yield* made({ pieceSize: 0 })).toBe("TypeError: Simulator: pieceSize is 0, not a whole number of at least 1")
      expect(yield* made({ pieceSize: Number.NaN })).toContain("pieceSize is NaN")
      expect(yield* made({ cacheHitRatio: 1.5 })).toContain("cacheHitRatio is 1.5, not a share between 0 and 1")
      expect(yield* made({ dropAfterKeepAlives: -1 })).toContain("dropAfterKeepAlives is -1")
      expect(yield* made({ retryAfter: Infinity })).toContain("retryAfter is Infinity, not a finite duration")
      expect(yield* made({ limit: Number.NaN })).toContain("the limit at 0 ms is NaN, not a number of requests of at least 0")
      expect(yield* made({ limit: { "deepseek-v4-pro": [{ atMs: 0, limit: 2 }, { atMs: 10, limit: -1 }] } })).toContain("is -1")
      expect(yield* made({ accounts: { a: { keys: ["sk-a"], accountLimit: Number.NaN } } })).toContain("is NaN")
      expect(yield* made({ faults: { script: ["none", "overload"] } })).toContain(`"overload" is no fault; the faults are serverError, overloaded`)
      expect(yield* made({ faults: { probabilities: { cut: 0.6, blank: 0.5 } } })).toContain("not shares summing to at most 1")
      expect(yield* made({ accounts: { a: { keys: ["sk-1"] }, b: { keys: ["sk-2", "sk-1"] } } })).toContain(
        "accounts a and b have a key in common"
      )
      expect(yield* made({ pieceSize: 1, cacheHitRatio: 1, dropAfterKeepAlives: 0, limit: Infinity })).toBe("made")
      expect(yield* made({ faults: { probabilities: { serverError: 0.1, overloaded: 0.2, cut: 0.7 } } })).toBe("made")
      const sim = yield* Simulator.make({})
      expect(String(yield* Effect.flip(Effect.sandbox(sim.setLimit("default", Number.NaN))))).toContain("is NaN")
    }))

  it.scopedLive("with `models`, a model it does not serve gets DeepSeek's 400 Model Not Exist (an alias of one it serves is served)", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ models: [model], aliases: { "deepseek-flash": model } })
      const refused = yield* chat(sim, "a typo", { model: "deepseek-chatt" })
      expect([refused.status, JSON.parse(refused.text)]).toEqual([400, {
        error: { message: "Model Not Exist", type: "invalid_request_error", param: null, code: "invalid_request_error" }
      }])
      expect((yield* chat(sim, "streamed", { model: "deepseek-chatt", stream: true })).status).toBe(400)
      expect((yield* chat(sim, "served")).status).toBe(200)
      expect((yield* chat(sim, "by its alias", { model: "deepseek-flash" })).status).toBe(200)
      // The refused name holds no slot and makes no counters of its own.
      const stats = accountStats(yield* sim.stats)
      expect([stats.requests, stats.accepted, Object.keys(stats.byModel)]).toEqual([4, 2, [model]])
      const made = (options: Record<string, unknown>) =>
        Effect.map(Effect.exit(Simulator.make(options as Simulator.Options)), (exit) =>
          Exit.isFailure(exit) ? String(exit.cause._tag === "Die" ? exit.cause.defect : exit.cause) : "made")
      expect(yield* made({ models: [model, ""] })).toBe(`TypeError: Simulator: models holds "", not a model name`)
      expect(yield* made({ models: [model], aliases: { old: "deepseek-v4-pro" } })).toBe(
        `TypeError: Simulator: the alias "old" names "deepseek-v4-pro", a model not in models`
      )
    }))

  it.scopedLive("a queue delay function that returns no duration fails its request, says why, and keeps no slot; a cap function's NaN too", () =>
    Effect.gen(function*() {
      const logged: Array<Logged> = []
      const delays: Record<string, number> = { "deepseek-v4-pro": 1 }
      const sim = yield* capturingLogs(logged)(Simulator.make({
        limit: 1,
        queueDelay: (load) => `${delays[load.model]} millis` as Duration.DurationInput
      }))
      for (const _ of [1, 2]) expect(yield* Effect.either(chat(sim, "no delay for flash"))).toMatchObject({ _tag: "Left" })
      expect(logged.map((line) => line.cause).join("\n")).toContain(
        `Simulator: the queueDelay of ${model} is "undefined millis", not a duration`
      )
      // Its slot went back: a model with a delay is served at the cap of 1.
      expect((yield* chat(sim, "pro", { model: "deepseek-v4-pro" })).status).toBe(200)
      expect((yield* sim.stats).accounts["default"]).toMatchObject({ inFlight: 0, rateLimited: 0 })

      const curve = [2]
      const capped = yield* capturingLogs(logged)(Simulator.make({ limit: (ms) => curve[Math.floor(ms / 3_600_000) + 1] as number }))
      expect(yield* Effect.either(chat(capped, "past the curve's end"))).toMatchObject({ _tag: "Left" })
      expect(logged.at(-1)?.cause).toMatch(/the limit at \d+ ms is undefined, not a number of requests/)
    }))

  it.scoped("runs on real time even under a TestClock", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ queueDelay: 30, keepAliveInterval: 10 })
      // the TestClock never moves, so the bound is a real-time abort
      const request = { body: chatBody("real time"), key: Simulator.defaultKey }
      const reply = yield* Effect.flatMap(send(sim, request, AbortSignal.timeout(5_000)), (response) =>
        Effect.tryPromise(() => response.text()))
      expect(reply.trimStart()).toContain("echo:real time")
      expect(reply.startsWith("\n")).toBe(true)
    }))

  it.scopedLive("sends keep-alive comments before the events of a queued stream", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ queueDelay: { min: 60, max: 80 }, keepAliveInterval: 10 })
      const reply = yield* chat(sim, "queued", { stream: true })
      expect(reply.text.startsWith(": keep-alive\n\n")).toBe(true)
      const beforeData = reply.text.slice(0, reply.text.indexOf("data: "))
      expect(beforeData.replaceAll(": keep-alive\n\n", "")).toBe("")
      expect(streamed(reply.text, "content")).toBe("echo:queued")
    }))

  it.scopedLive("closes a request that is not scheduled in time, without an answer", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ queueDelay: "5 seconds", scheduleTimeout: 100, keepAliveInterval: 20 })
      const plain = yield* chat(sim, "never scheduled")
      expect(plain.status).toBe(200)
      expect(plain.text).toMatch(/^\n+$/)
      const stream = yield* chat(sim, "never scheduled", { stream: true })
      expect(stream.text).toContain(": keep-alive")
      expect(events(stream.text)).toEqual([])
      const stats = yield* sim.stats
      expect([stats.unscheduled, stats.completed]).toEqual([2, 0])
      expect(accountStats(stats).billed).toEqual({ prompt: 0, completion: 0, cacheHit: 0, reasoning: 0 })
    }))

  it.scopedLive("rejects an unknown key with 401 echoing it masked, answers 402 out of balance, reports balances", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({
        ...quick,
        accounts: { rich: { keys: ["sk-rich"], balance: 12.5 }, broke: { keys: ["sk-broke"], balance: 0 } }
      })
      const secret = "sk-not-a-real-key-9f3a"
      const unknown = yield* chat(sim, "hi", {}, secret)
      expect(unknown.status).toBe(401)
      expect(unknown.text).toContain("****9f3a")
      expect(unknown.text).not.toContain(secret)
      expect(JSON.parse(unknown.text).error.type).toBe("authentication_error")
      expect((yield* call(sim, { body: chatBody("hi") })).status).toBe(401)

      expect((yield* chat(sim, "hi", {}, "sk-broke")).status).toBe(402)
      const balanceOf = (key: string) =>
        Effect.map(call(sim, { path: "/user/balance", method: "GET", key }), (reply) => JSON.parse(reply.text))
      expect(yield* balanceOf("sk-broke")).toEqual({
        is_available: false,
        balance_infos: [{ currency: "USD", total_balance: "0.00", granted_balance: "0.00", topped_up_balance: "0.00" }]
      })
      expect((yield* balanceOf("sk-rich")).balance_infos[0].total_balance).toBe("12.50")
      yield* sim.setBalance("broke", 5)
      expect((yield* balanceOf("sk-broke")).is_available).toBe(true)
      expect((yield* chat(sim, "hi", {}, "sk-broke")).status).toBe(200)
      expect((yield* call(sim, { path: "/nowhere", key: "sk-rich", body: "{}" })).status).toBe(404)
      const invalid = yield* call(sim, { key: "sk-rich", body: "{not json" })
      // DeepSeek's 400s carry a code, as its other errors do.
      expect([invalid.status, JSON.parse(invalid.text).error.code]).toEqual([400, "invalid_request_error"])
      expect((yield* sim.stats).byStatus).toEqual({ 200: 4, 400: 1, 401: 2, 402: 1, 404: 1 })
    }))

  it.scopedLive("injects scripted faults into non-stream answers", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({
        ...quick,
        retryAfter: "1500 millis",
        keepAliveInterval: 5,
        faults: {
          script: [
            "serverError",
            "overloaded",
            "dropBeforeResponse",
            "dropWhileQueued",
            "blank",
            "cut",
            "insufficientResource",
            "errorEvent",
            "reset",
            "none"
          ]
        }
      })
      const ask = chat(sim, "faulty")
      expect((yield* ask).status).toBe(500)
      const overloaded = yield* ask
      expect([overloaded.status, overloaded.headers.get("retry-after"), overloaded.headers.get("retry-after-ms")])
        .toEqual([503, "2", "1500"])
      yield* Effect.flip(send(sim, { body: chatBody("faulty"), key: Simulator.defaultKey }))
      const dropped = yield* send(sim, { body: chatBody("faulty"), key: Simulator.defaultKey })
      expect(dropped.status).toBe(200)
      yield* Effect.flip(Effect.tryPromise(() => dropped.text()))
      const blank = yield* ask
      expect([blank.status, blank.text.trim()]).toEqual([200, ""])
      const cut = yield* ask
      expect(() => JSON.parse(cut.text)).toThrow()
      expect(cut.text.trim().startsWith("{\"id\":\"chatcmpl-sim-")).toBe(true)
      const short = JSON.parse((yield* ask).text) as ChatCompletion
      expect(short.choices[0]?.finish_reason).toBe("insufficient_system_resource")
      expect(short.choices[0]?.message.content).toBe("echo:f")
      expect(JSON.parse((yield* ask).text).error.message).toBe("Simulated upstream error")
      // A reset: the connection breaks halfway through the JSON, where a cut ends the response.
      const reset = yield* send(sim, { body: chatBody("faulty"), key: Simulator.defaultKey })
      expect(reset.status).toBe(200)
      yield* Effect.flip(Effect.tryPromise(() => reset.text()))
      expect((JSON.parse((yield* ask).text) as ChatCompletion).choices[0]?.finish_reason).toBe("stop")
      const stats = yield* sim.stats
      expect(stats.faults).toEqual(
        Object.fromEntries(Simulator.allFaults.filter((f) => f !== "stall" && f !== "stallWhileQueued").map((f) => [f, 1]))
      )
      expect([stats.completed, stats.clientClosed]).toEqual([1, 0])
    }))

  it.scopedLive("injects scripted faults into streams", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({
        ...quick,
        faults: { script: ["cut", "errorEvent", "insufficientResource", "blank", "reset"] }
      })
      const ask = chat(sim, "a stream long enough to be cut", { stream: true })
      const cut = yield* ask
      expect(events(cut.text)).not.toContain("[DONE]")
      expect("echo:a stream long enough to be cut".startsWith(streamed(cut.text, "content"))).toBe(true)
      expect(streamed(cut.text, "content").length).toBeGreaterThan(0)
      const failed = events((yield* ask).text)
      expect(JSON.parse(failed.at(-1) ?? "{}").error.type).toBe("server_error")
      expect(failed).not.toContain("[DONE]")
      const short = yield* ask
      expect(events(short.text).at(-1)).toBe("[DONE]")
      expect(chunksOf(short.text).some((c) => c.choices[0]?.finish_reason === "insufficient_system_resource")).toBe(
        true
      )
      expect(events((yield* ask).text)).toEqual([])
      // A reset: some content, then the connection breaks (no clean end without [DONE]).
      const reset = yield* send(sim, { body: chatBody("a stream long enough to be cut", { stream: true }), key: Simulator.defaultKey })
      const reader = reset.body!.getReader()
      let received = ""
      const readAll: Effect.Effect<void, unknown> = Effect.flatMap(Effect.tryPromise(() => reader.read()), (read) => {
        received += new TextDecoder().decode(read.value)
        return read.done ? Effect.void : readAll
      })
      expect(yield* Effect.flip(readAll)).toBeDefined()
      expect(streamed(received, "content").length).toBeGreaterThan(0)
      expect(events(received)).not.toContain("[DONE]")
      expect((yield* sim.stats).completed).toBe(0)
    }))

  it.live("draws faults from the seed, the request and its attempt, whatever the order and interleaving", () =>
    Effect.gen(function*() {
      const prompts = Array.from({ length: 12 }, (_, i) => `question ${i}`)
      /** Each prompt's outcomes, first attempt then second, sending the prompts in the given order. */
      const outcomes = (seed: number, order: ReadonlyArray<string>, concurrency: number) =>
        Effect.scoped(Effect.gen(function*() {
          const sim = yield* Simulator.make({
            ...quick,
            seed,
            faults: { probabilities: { serverError: 0.3, blank: 0.3 } }
          })
          const ask = (prompt: string) =>
            Effect.map(chat(sim, prompt), (reply) => [prompt, reply.text.trim() === "" ? "blank" : String(reply.status)] as const)
          // every prompt twice: a request's second attempt draws again, deterministically
          const rounds = yield* Effect.forEach([order, order], (round) => Effect.forEach(round, ask, { concurrency }))
          const byPrompt = new Map(prompts.map((prompt) => [prompt, [] as Array<string>]))
          for (const [prompt, outcome] of rounds.flat()) byPrompt.get(prompt)?.push(outcome)
          return [...byPrompt.values()]
        }))
      const sequential = yield* outcomes(7, prompts, 1)
      expect(yield* outcomes(7, [...prompts].reverse(), 12)).toEqual(sequential)
      expect(new Set(sequential.flat())).toEqual(new Set(["200", "500", "blank"]))
      expect(yield* outcomes(8, prompts, 1)).not.toEqual(sequential)
    }))

  it.scopedLive("bills what was delivered and lists every clean answer once", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ ...quick, cacheHitRatio: 0.25, faults: { script: ["none", "none", "cut"] } })
      const plain = JSON.parse((yield* chat(sim, "first question")).text) as ChatCompletion
      const thinking = chunksOf((yield* chat(sim, "second", { stream: true, thinking: { type: "enabled" } })).text)
      const cut = yield* chat(sim, "a third question, cut halfway", { stream: true, thinking: { type: "enabled" } })
      const reported = [plain.usage, thinking.at(-1)?.usage]
      const sum = (f: (u: NonNullable<ChatCompletion["usage"]>) => number) =>
        reported.reduce((total, u) => total + (u === undefined || u === null ? 0 : f(u)), 0)
      const cutPrompt = internal.tokens("a third question, cut halfway")
      const cutReasoning = internal.tokens(streamed(cut.text, "reasoning_content"))
      const cutCompletion = cutReasoning + internal.tokens(streamed(cut.text, "content"))
      expect(accountStats(yield* sim.stats).billed).toEqual({
        prompt: sum((u) => u.prompt_tokens) + cutPrompt,
        completion: sum((u) => u.completion_tokens) + cutCompletion,
        cacheHit: sum((u) => u.prompt_cache_hit_tokens ?? 0) + Math.floor(cutPrompt * 0.25),
        reasoning: sum((u) => u.completion_tokens_details?.reasoning_tokens ?? 0) + cutReasoning
      })
      expect(cutCompletion).toBeGreaterThan(0)
      expect((yield* sim.completions).map((c) => c.marker)).toEqual(["first question", "second"])
    }))

  it.scopedLive("bills a stalled stream for what it sent once its client leaves", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ ...quick, faults: { script: ["stall"] } })
      // "echo:stalls mid-way" streams as "echo:sta", "lls mid-", "way": the stall comes after two pieces
      const sentBeforeStall = "echo:stalls mid-"
      const received = yield* Effect.scoped(Effect.gen(function*() {
        const response = yield* open(sim, { body: chatBody("stalls mid-way", { stream: true }), key: Simulator.defaultKey })
        const reader = response.body!.getReader()
        let text = ""
        while (streamed(text, "content").length < sentBeforeStall.length) {
          const { done, value } = yield* Effect.promise(() => reader.read())
          if (done) break
          text += new TextDecoder().decode(value)
        }
        return text
      }))
      expect(streamed(received, "content")).toBe(sentBeforeStall)
      const stats = yield* eventually(sim.stats, (s) => accountStats(s).inFlight === 0)
      expect(stats.clientClosed).toBe(1)
      expect(accountStats(stats).billed).toEqual({
        prompt: internal.tokens("stalls mid-way"),
        completion: internal.tokens(sentBeforeStall),
        cacheHit: 0,
        reasoning: 0
      })
    }))

  it.scopedLive("stalls a queued request after its keep-alives, the connection open and silent, and bills nothing", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({
        ...quick,
        keepAliveInterval: 10,
        faults: { script: ["stallWhileQueued", "stallWhileQueued"] }
      })
      /** What arrives until 200 ms (twenty keep-alive intervals) pass in silence, or the body ends. */
      const received = (extra: Record<string, unknown>) =>
        Effect.scoped(Effect.gen(function*() {
          const response = yield* open(sim, { body: chatBody("stuck", extra), key: Simulator.defaultKey })
          const reader = response.body!.getReader()
          let text = ""
          while (true) {
            const read = yield* Effect.raceFirst(Effect.promise(() => reader.read()), Effect.as(Effect.sleep("200 millis"), undefined))
            if (read === undefined || read.done) return { status: response.status, text, ended: read !== undefined }
            text += new TextDecoder().decode(read.value)
          }
        }))
      expect(yield* received({})).toEqual({ status: 200, text: "\n\n", ended: false })
      expect(yield* received({ stream: true })).toEqual({ status: 200, text: ": keep-alive\n\n".repeat(2), ended: false })
      const stats = yield* eventually(sim.stats, (s) => accountStats(s).inFlight === 0)
      expect(stats.faults).toEqual({ stallWhileQueued: 2 })
      expect(stats.clientClosed).toBe(2)
      expect(accountStats(stats).billed).toEqual({ prompt: 0, completion: 0, cacheHit: 0, reasoning: 0 })
    }))

  it.live("destroys open sockets and stops listening when its scope closes", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const sim = yield* Scope.extend(Simulator.make({ ...quick, faults: { script: ["stall"] } }), scope)
      const response = yield* send(sim, { body: chatBody("stalled"), key: Simulator.defaultKey })
      yield* Scope.close(scope, Exit.void)
      const read = yield* Effect.either(Effect.tryPromise(() => response.text()).pipe(Effect.timeout(bound)))
      expect(read._tag === "Left" && read.left._tag).toBe("UnknownException")
      expect(yield* connect(sim)).toBe("ECONNREFUSED")
    }))

  it.scopedLive("stops on demand, idempotently, even with a request half sent", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make(quick)
      const halfSent = Net.connect(Number(new URL(sim.baseUrl).port), "127.0.0.1")
      // stop destroys the server side, which resets this socket: expected, not a failure.
      halfSent.on("error", () => {})
      yield* Effect.addFinalizer(() => Effect.sync(() => halfSent.destroy()))
      const closed = Effect.async<void>((resume) => {
        halfSent.on("close", () => resume(Effect.void))
      })
      yield* Effect.async<void>((resume) => {
        halfSent.write("POST /chat/completions HTTP/1.1\r\nHost: sim\r\n", () => resume(Effect.void))
      })
      yield* Effect.all([sim.stop, sim.stop, closed]).pipe(Effect.timeout(bound))
      expect(yield* connect(sim)).toBe("ECONNREFUSED")
    }))

  it.scopedLive("closes idle keep-alive connections after the idle timeout", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ ...quick, idleTimeout: 50 })
      const port = Number(new URL(sim.baseUrl).port)
      const received = yield* Effect.async<string>((resume) => {
        const socket = Net.connect(port, "127.0.0.1", () =>
          socket.write(`GET /user/balance HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer ${Simulator.defaultKey}\r\n\r\n`))
        let text = ""
        socket.on("data", (data) => text += data.toString())
        socket.on("close", () => resume(Effect.succeed(text)))
        return Effect.sync(() => socket.destroy())
      }).pipe(Effect.timeout("2 seconds"))
      expect(received.startsWith("HTTP/1.1 200")).toBe(true)
      expect(received).toContain("\"is_available\":true")
      expect(received.toLowerCase()).not.toContain("keep-alive: timeout")
    }))

  describe("caps per model", () => {
    const pro = "deepseek-v4-pro"
    const flash = "deepseek-flash"

    /** The status of a request for `model` that stays in flight (with a `stall` fault) until the scope closes. */
    const hold = (sim: Simulator.Service, forModel: string, key = Simulator.defaultKey) =>
      Effect.map(open(sim, { body: chatBody(`held by ${forModel}`, { model: forModel }), key }), (r) => r.status)

    const ask = (sim: Simulator.Service, forModel: string, key = Simulator.defaultKey) =>
      Effect.map(chat(sim, `for ${forModel}`, { model: forModel }, key), (reply) => reply.status)

    const modelStats = (stats: Simulator.Stats, forModel: string, account = "default"): Simulator.ModelStats => {
      const found = accountStats(stats, account).byModel[forModel]
      if (found === undefined) throw new Error(`no stats for ${forModel} on ${account}`)
      return found
    }

    it.scopedLive("gives each model its own cap: filling one never refuses another's requests", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator.make({
          ...quick,
          limit: 1,
          accounts: { team: { keys: ["sk-team-one", "sk-team-two"], limit: { [pro]: 1, [flash]: 2 } } },
          faults: { script: ["stall", "stall", "stall", "stall"] }
        })
        expect(yield* hold(sim, pro, "sk-team-one")).toBe(200)
        expect(yield* ask(sim, pro, "sk-team-two")).toBe(429)
        expect(yield* hold(sim, flash, "sk-team-one")).toBe(200)
        expect(yield* hold(sim, flash, "sk-team-two")).toBe(200)
        expect(yield* ask(sim, flash, "sk-team-one")).toBe(429)
        // a model without an entry (and no "*") takes the server's limit, a cap of its own
        expect(yield* hold(sim, "deepseek-other", "sk-team-one")).toBe(200)
        expect(yield* ask(sim, "deepseek-other", "sk-team-one")).toBe(429)
        const stats = yield* sim.stats
        const team = accountStats(stats, "team")
        expect([team.inFlight, team.maxInFlight, team.rateLimited, team.limit]).toEqual([4, 4, 3, Infinity])
        expect(
          Object.fromEntries(
            Object.entries(team.byModel).map(([name, m]) => [name, [m.requests, m.inFlight, m.limit, m.rateLimited]])
          )
        ).toEqual({ [pro]: [2, 1, 1, 1], [flash]: [3, 2, 2, 1], "deepseek-other": [2, 1, 1, 1] })
        expect(stats.rateLimited).toBe(3)
      }))

    it.scopedLive("keeps a plain limit one cap that every model shares", () =>
      Effect.gen(function*() {
        const loads: Array<Simulator.Load> = []
        const sim = yield* Simulator.make({
          ...quick,
          limit: 2,
          queueDelay: (load) => {
            loads.push(load)
            return 0
          },
          faults: { script: ["stall", "stall"] }
        })
        expect(yield* hold(sim, pro)).toBe(200)
        expect(yield* hold(sim, flash)).toBe(200)
        expect(yield* ask(sim, flash)).toBe(429)
        expect(yield* ask(sim, pro)).toBe(429)
        const stats = yield* sim.stats
        expect([modelStats(stats, pro).limit, modelStats(stats, flash).limit, accountStats(stats).limit])
          .toEqual([2, 2, 2])
        expect([modelStats(stats, pro).rateLimited, modelStats(stats, flash).rateLimited]).toEqual([1, 1])
        expect(loads.map((l) => [l.model, l.inFlight, l.limit, l.modelInFlight, l.modelLimit])).toEqual([
          [pro, 1, 2, 1, 2],
          [flash, 2, 2, 1, 2]
        ])
      }))

    it.scopedLive("puts an account-wide cap on top of the per-model ones", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator.make({
          ...quick,
          accounts: { default: { keys: [Simulator.defaultKey], limit: { [pro]: 2, [flash]: 2 }, accountLimit: 3 } },
          faults: { script: ["stall", "stall", "stall", "stall"] }
        })
        expect(yield* hold(sim, pro)).toBe(200)
        expect(yield* hold(sim, pro)).toBe(200)
        expect(yield* hold(sim, flash)).toBe(200)
        // flash is under its own cap but the account is full
        expect(yield* ask(sim, flash)).toBe(429)
        expect([accountStats(yield* sim.stats).limit, modelStats(yield* sim.stats, flash).rateLimited]).toEqual([3, 1])
        yield* sim.setLimit("default", 4)
        expect(yield* hold(sim, flash)).toBe(200)
        expect(yield* ask(sim, flash)).toBe(429)
        const account = accountStats(yield* sim.stats)
        expect([account.limit, account.inFlight, modelStats(yield* sim.stats, flash).limit]).toEqual([4, 4, 2])
      }))

    it.scopedLive("moves each model's cap on its own, by function, schedule or setLimit", () =>
      Effect.gen(function*() {
        let flashCap = 1
        const sim = yield* Simulator.make({
          ...quick,
          limit: { [flash]: () => flashCap, "*": [{ atMs: 0, limit: 1 }] },
          faults: { script: ["stall", "stall", "stall", "stall"] }
        })
        expect(yield* hold(sim, flash)).toBe(200)
        expect(yield* ask(sim, flash)).toBe(429)
        flashCap = 2
        expect(yield* hold(sim, flash)).toBe(200)
        // pro takes the "*" entry: 1, whatever flash's cap
        expect(yield* hold(sim, pro)).toBe(200)
        expect(yield* ask(sim, pro)).toBe(429)
        yield* sim.setLimit("default", 2, pro)
        expect(yield* hold(sim, pro)).toBe(200)
        expect(yield* ask(sim, flash)).toBe(429)
        const stats = yield* sim.stats
        const samples = (forModel: string) => modelStats(stats, forModel).timeline.map((s) => [s.limit, s.inFlight])
        expect(samples(flash)).toEqual([[1, 1], [2, 2]])
        expect(samples(pro)).toEqual([[1, 1], [2, 1], [2, 2]])
        expect(accountStats(stats).timeline.map((s) => [s.limit, s.inFlight])).toEqual([
          [Infinity, 1],
          [Infinity, 2],
          [Infinity, 3],
          [Infinity, 3],
          [Infinity, 4]
        ])
      }))

    it.scopedLive("serves an alias with its serving model: its cap, its stats, its name in the answer", () =>
      Effect.gen(function*() {
        const oldName = "deepseek-v4-flash"
        const sim = yield* Simulator.make({
          ...quick,
          aliases: { [oldName]: flash },
          limit: { [flash]: 1 },
          faults: { script: ["none", "none", "stall"] }
        })
        const answer = JSON.parse((yield* chat(sim, "old name", { model: oldName })).text) as ChatCompletion
        expect(answer.model).toBe(flash)
        const stream = chunksOf((yield* chat(sim, "old name, streamed", { model: oldName, stream: true })).text)
        expect(new Set(stream.map((chunk) => chunk.model))).toEqual(new Set([flash]))
        expect(yield* hold(sim, oldName)).toBe(200)
        expect(yield* ask(sim, flash)).toBe(429)
        yield* sim.setLimit("default", 2, oldName)
        expect(yield* ask(sim, oldName)).toBe(200)
        const stats = yield* sim.stats
        expect(Object.keys(accountStats(stats).byModel)).toEqual([flash])
        const served = modelStats(stats, flash)
        expect([served.requests, served.accepted, served.rateLimited, served.completed, served.limit]).toEqual([
          5,
          4,
          1,
          3,
          2
        ])
        expect(new Set((yield* sim.completions).map((c) => c.model))).toEqual(new Set([flash]))
      }))

    it.scopedLive("counts and bills each model apart, adding up to the account's figures", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator.make({ ...quick, limit: { "*": 4 }, cacheHitRatio: 0.5 })
        const usageOf = (content: string, forModel: string, extra: Record<string, unknown> = {}) =>
          Effect.map(
            chat(sim, content, { model: forModel, ...extra }),
            (reply) => (JSON.parse(reply.text) as ChatCompletion).usage!
          )
        const flashUsage = [
          yield* usageOf("a flash question", flash),
          yield* usageOf("a longer flash question, thought about", flash, { thinking: { type: "enabled" } })
        ]
        const proUsage = [yield* usageOf("a pro question", pro)]
        const billedOf = (usages: ReadonlyArray<NonNullable<ChatCompletion["usage"]>>): Simulator.Tokens => ({
          prompt: usages.reduce((sum, u) => sum + u.prompt_tokens, 0),
          completion: usages.reduce((sum, u) => sum + u.completion_tokens, 0),
          cacheHit: usages.reduce((sum, u) => sum + (u.prompt_cache_hit_tokens ?? 0), 0),
          reasoning: usages.reduce((sum, u) => sum + (u.completion_tokens_details?.reasoning_tokens ?? 0), 0)
        })
        const stats = yield* sim.stats
        expect(modelStats(stats, flash).billed).toEqual(billedOf(flashUsage))
        expect(modelStats(stats, pro).billed).toEqual(billedOf(proUsage))
        expect(accountStats(stats).billed).toEqual(billedOf([...flashUsage, ...proUsage]))
        expect([flash, pro].map((m) => [modelStats(stats, m).completed, modelStats(stats, m).maxInFlight])).toEqual([
          [2, 1],
          [1, 1]
        ])
        expect((yield* sim.completions).map((c) => c.model)).toEqual([flash, flash, pro])
      }))

    it.scopedLive("answers is_available false on /user/balance for an account out of balance from the start", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator.make({ ...quick, accounts: { broke: { keys: ["sk-broke"], balance: 0 } } })
        const reply = yield* call(sim, { path: "/user/balance", method: "GET", key: "sk-broke" })
        expect([reply.status, JSON.parse(reply.text).is_available]).toEqual([200, false])
        expect(accountStats(yield* sim.stats, "broke").requests).toBe(0)
        expect(yield* ask(sim, flash, "sk-broke")).toBe(402)
        // refused before its model is read: no model is charged with it
        expect(accountStats(yield* sim.stats, "broke").byModel).toEqual({})
      }))
  })

  describe("pure parts", () => {
    const schedule = FastCheck.array(
      FastCheck.record({ atMs: FastCheck.nat(10_000), limit: FastCheck.nat(100) }),
      { minLength: 1 }
    ).map((steps) => [...steps].sort((a, b) => a.atMs - b.atMs))

    it.prop("a schedule's limit is the last step at or before now, else the first", {
      steps: schedule,
      t: FastCheck.nat(12_000)
    }, ({ steps, t }) => {
      const reached = steps.filter((step) => step.atMs <= t)
      expect(internal.limitAt(steps, t)).toBe((reached.at(-1) ?? steps[0]!).limit)
    })

    it.prop("usage adds up the way DeepSeek's does", {
      prompt: FastCheck.nat(100_000),
      ratio: FastCheck.double({ min: 0, max: 1, noNaN: true }),
      reasoning: FastCheck.string(),
      content: FastCheck.string()
    }, ({ content, prompt, ratio, reasoning }) => {
      const usage = internal.usageOf(prompt, ratio, reasoning, content)
      expect(usage.prompt_cache_hit_tokens! + usage.prompt_cache_miss_tokens!).toBe(usage.prompt_tokens)
      expect(usage.prompt_cache_hit_tokens!).toBeLessThanOrEqual(prompt)
      expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens)
      expect(usage.completion_tokens - usage.completion_tokens_details!.reasoning_tokens!).toBe(
        internal.tokens(content)
      )
    })

    it.prop("a masked key shows at most its last four characters", { key: FastCheck.string() }, ({ key }) => {
      const masked = internal.maskKey(key)
      expect(masked.startsWith("****")).toBe(true)
      expect(masked.length).toBeLessThanOrEqual(8)
      if (key.length > 8) expect(key.endsWith(masked.slice(4))).toBe(true)
    })

    it.prop("fault probabilities partition [0, 1) in order", {
      serverError: FastCheck.double({ min: 0, max: 0.5, noNaN: true }),
      blank: FastCheck.double({ min: 0, max: 0.5, noNaN: true }),
      draw: FastCheck.double({ min: 0, max: 1, maxExcluded: true, noNaN: true })
    }, ({ blank, draw, serverError }) => {
      const expected = draw < serverError ? "serverError" : draw < serverError + blank ? "blank" : undefined
      expect(internal.pickFault({ serverError, blank }, draw)).toBe(expected)
    })
  })
})
