import * as HttpBody from "@effect/platform/HttpBody"
import * as HttpClient from "@effect/platform/HttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as Wire from "../src/internal/wire.js"
import * as MockUpstream from "../src/MockUpstream.js"

const url = "https://upstream.test/chat/completions"

const post = (body: unknown = { model: "m" }) =>
  HttpClient.post(url, {
    headers: { authorization: "Bearer sk-mock-secret1", "x-trace": "t1" },
    body: HttpBody.text(JSON.stringify(body), "application/json")
  })

/** Each read of the body with the Clock time it arrived at. */
const timedReads = Effect.flatMap(post(), (response) =>
  response.stream.pipe(
    Stream.decodeText(),
    Stream.mapEffect((text) => Effect.map(Clock.currentTimeMillis, (at) => [at, text] as const)),
    Stream.runCollect,
    Effect.map(Chunk.toReadonlyArray)
  ))

const generation: MockUpstream.Generation = {
  id: "g1",
  model: "m",
  content: "a forecast",
  usage: MockUpstream.usage({ promptTokens: 3, completionTokens: 2 })
}

describe("Wire.pieces", () => {
  /** Whether `text` has no lone surrogate: its UTF-8 round trip gives it back. */
  const wellFormed = (text: string) => Buffer.from(text, "utf8").toString("utf8") === text

  it.prop(
    "cuts text into pieces that join back into it, never between the halves of an emoji",
    [FastCheck.fullUnicodeString(), FastCheck.integer({ min: 1, max: 9 })],
    ([text, size]) => {
      const cut = Wire.pieces(text, size)
      expect(cut.join("")).toBe(text)
      for (const piece of cut) {
        expect(wellFormed(piece)).toBe(true)
        expect(piece.length).toBeLessThanOrEqual(Math.max(size, 2))
      }
    }
  )

  it("a stream of text with an emoji sends no piece with half of it", () => {
    expect(Wire.pieces("ab😀", 3)).toEqual(["ab", "😀"])
    expect(Wire.pieces("😀x", 1)).toEqual(["😀", "x"])
  })
})

describe("MockUpstream", () => {
  it.effect("records requests with the authorization redacted and the body parsed", () =>
    Effect.gen(function*() {
      yield* post({ model: "m", n: 1 })
      const [sent] = yield* Effect.flatMap(MockUpstream.MockUpstream, (m) => m.requests)
      expect(sent).toMatchObject({ method: "POST", url, body: { model: "m", n: 1 } })
      expect(sent?.headers).toMatchObject({ authorization: "<redacted>", "x-trace": "t1" })
      expect(JSON.stringify(sent)).not.toContain("sk-mock-secret1")
      expect(sent?.bearer && Redacted.value(sent.bearer)).toBe("sk-mock-secret1")
    }).pipe(Effect.provide(MockUpstream.layer([MockUpstream.status(204)]))))

  it.effect("sends each piece as its own read after its delay on the Clock", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(timedReads)
      yield* TestClock.adjust("3 seconds")
      expect(yield* Fiber.join(fiber)).toEqual([[0, "a"], [0, "b"], [1000, "c"], [3000, "d"]])
    }).pipe(Effect.provide(MockUpstream.layer([
      MockUpstream.parts(["a", "b", { delay: "1 second", text: "c" }, { delay: "2 seconds", text: "d" }])
    ]))))

  it.effect("a queued answer's keep-alive lines are spread over its delay, as DeepSeek sends them: no gap as long as the delay", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(timedReads)
      yield* TestClock.adjust("30 seconds")
      const reads = yield* Fiber.join(fiber)
      expect(reads.map(([at]) => at)).toEqual([5000, 10000, 15000, 20000, 25000, 30000])
      expect(reads.slice(0, 5).map(([, text]) => text)).toEqual(["\n", "\n", "\n", "\n", "\n"])
      expect(JSON.parse(reads[5]![1])).toMatchObject({ choices: [{ message: { content: "a forecast" } }] })
    }).pipe(Effect.provide(MockUpstream.layer([MockUpstream.completion(generation, { leadingBlankLines: 5, delay: "30 seconds" })]))))

  it.effect("waits `latency` before the status", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(post())
      yield* TestClock.adjust("4 seconds")
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(fiber)).status).toBe(418)
    }).pipe(Effect.provide(MockUpstream.layer([MockUpstream.parts([], { status: 418, latency: "5 seconds" })]))))

  it.effect("status, json, completion and streamed wait their `latency` before the status too", () =>
    Effect.gen(function*() {
      const statuses = yield* Effect.fork(
        Effect.all([post(), post(), post(), post()].map((request) => Effect.map(request, (r) => r.status)), { concurrency: "unbounded" })
      )
      yield* TestClock.adjust("1999 millis")
      expect(Option.isNone(yield* Fiber.poll(statuses))).toBe(true)
      yield* TestClock.adjust("1 milli")
      expect(yield* Fiber.join(statuses)).toEqual([429, 201, 200, 200])
    }).pipe(Effect.provide(MockUpstream.layer([
      MockUpstream.status(429, { latency: "2 seconds" }),
      MockUpstream.json({ ok: true }, { status: 201, latency: "2 seconds" }),
      MockUpstream.completion(generation, { latency: "2 seconds" }),
      MockUpstream.streamed(generation, { latency: "2 seconds" })
    ]))))

  it.effect("a cut body fails after the pieces before it", () =>
    Effect.gen(function*() {
      const response = yield* post()
      const reads: Array<string> = []
      const error = yield* response.stream.pipe(
        Stream.decodeText(),
        Stream.runForEach((text) => Effect.sync(() => reads.push(text))),
        Effect.flip
      )
      expect(reads).toEqual(["{\"par"])
      expect(error).toMatchObject({ _tag: "ResponseError", cause: { code: "UND_ERR_SOCKET" } })
    }).pipe(Effect.provide(MockUpstream.layer([MockUpstream.parts(["{\"par"], { cut: true })]))))

  it.effect("drop fails the request like a socket the server closed", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(post())
      expect(error).toMatchObject({
        _tag: "RequestError",
        reason: "Transport",
        cause: { code: "UND_ERR_SOCKET", message: "other side closed" }
      })
    }).pipe(Effect.provide(MockUpstream.layer([MockUpstream.drop()]))))

  it.effect("an exhausted script is a defect naming the request", () =>
    Effect.gen(function*() {
      yield* post()
      const exit = yield* Effect.exit(post())
      expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
      expect(Exit.isFailure(exit) && Cause.pretty(exit.cause)).toContain("script exhausted: request #2 (POST")
      expect(Exit.isFailure(exit) && Cause.pretty(exit.cause)).toContain("the script holds only 1 replies")
    }).pipe(Effect.provide(MockUpstream.layer([MockUpstream.status(500)]))))

  it.effect("a script function that returns no reply is a defect naming the request, not a count of replies", () =>
    Effect.gen(function*() {
      yield* post()
      const exit = yield* Effect.exit(post())
      expect(Exit.isFailure(exit) && Cause.pretty(exit.cause)).toContain(
        "script exhausted: request #2 (POST https://upstream.test/chat/completions) arrived but the script function returned no reply for it"
      )
    }).pipe(Effect.provide(MockUpstream.layer((_, index) => [MockUpstream.status(500)][index]!))))

  it.effect("a script function sees each request and its index", () =>
    Effect.gen(function*() {
      const statuses = yield* Effect.forEach([1, 2, 3], (n) => Effect.map(post({ n }), (r) => r.status))
      expect(statuses).toEqual([200, 201, 202])
    }).pipe(Effect.provide(MockUpstream.layer((request, index) =>
      MockUpstream.status(200 + index, { body: JSON.stringify(request.body) })
    ))))

  it.effect("json, status and completion bodies read back as sent", () =>
    Effect.gen(function*() {
      const blankFirst = yield* post()
      expect(blankFirst.headers["content-type"]).toBe("application/json")
      expect(yield* blankFirst.text).toBe("\n\n{\"ok\":true}")
      const error = yield* post()
      expect(error.status).toBe(429)
      expect(error.headers["retry-after"]).toBe("3")
      expect(yield* error.json).toEqual({ error: { message: "slow down" } })
      expect(yield* Effect.flatMap(post(), (r) => r.json)).toEqual(Wire.completion(generation))
    }).pipe(Effect.provide(MockUpstream.layer([
      MockUpstream.json({ ok: true }, { leadingBlankLines: 2 }),
      MockUpstream.status(429, { body: { error: { message: "slow down" } }, headers: { "Retry-After": "3" } }),
      MockUpstream.completion(generation)
    ]))))

  it.effect("streamed sends a generation's SSE events one read each", () =>
    Effect.gen(function*() {
      const response = yield* post()
      expect(response.headers["content-type"]).toBe("text/event-stream")
      const reads = yield* response.stream.pipe(Stream.decodeText(), Stream.runCollect)
      expect(reads.length).toBe(Wire.chunks(generation).length + 1)
      expect(Chunk.join(reads, "")).toBe(Wire.sseBody(generation))
    }).pipe(Effect.provide(MockUpstream.layer([MockUpstream.streamed(generation)]))))
})
