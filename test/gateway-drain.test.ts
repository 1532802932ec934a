/**
 * Graceful shutdown: the drain at library level, and `weatherproof serve` in a process of its own
 * receiving SIGTERM (or a SIGHUP it ignores).
 */
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Http from "node:http"
import * as Net from "node:net"
import OpenAI, { APIError } from "openai"
import * as Simulator from "../src/Simulator.js"
import * as Wire from "../src/internal/wire.js"
import { account, attempt, openai, rawText, startGateway } from "./support/gateway.js"
import { rawServer } from "./support/rawServer.js"
import { serveProcess } from "./support/serveChild.js"
import type { Handler } from "./support/rawServer.js"

const model = "deepseek-v4-flash"
const longText = "a long answer that streams slowly, piece after piece, so that it is still running when the drain starts"

/** Reads an `openai` stream, resolving `started` at its first content; the text and the error it ended with. */
const consume = (stream: AsyncIterable<OpenAI.ChatCompletionChunk>, started: Deferred.Deferred<void>) =>
  Effect.promise(async () => {
    let text = ""
    try {
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta.content ?? ""
        if (text.length > 0) Effect.runSync(Deferred.succeed(started, undefined))
      }
      return { text, error: undefined }
    } catch (error) {
      return { text, error }
    }
  })

/** A loopback port nothing listens on: taken, then given back. */
const closedPort = () =>
  new Promise<number>((resolve) => {
    const server = Net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address() as Net.AddressInfo
      server.close(() => resolve(port))
    })
  })

const statusOf = (url: string, method = "GET") => attempt(() => fetch(url, { method }).then((response) => response.status))

describe("weatherproof serve, shutting down", () => {
  it.scopedLive("drain: health checks and new requests get 503 while a running stream finishes whole", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ chunkDelay: 25, pieceSize: 4 })
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { drainTimeout: "10 seconds" })
      const client = openai(gateway.url)
      const started = yield* Deferred.make<void>()
      const stream = yield* attempt(() => client.chat.completions.create({ model, messages: [{ role: "user", content: longText }], stream: true }))
      const reading = yield* Effect.fork(consume(stream, started))
      yield* Deferred.await(started)

      const draining = yield* Effect.fork(gateway.drain)
      yield* Effect.sleep("50 millis")
      expect(yield* statusOf(`${gateway.url}/healthz`)).toBe(503)
      expect(yield* statusOf(`${gateway.url}/readyz`)).toBe(503)
      expect(yield* statusOf(`${gateway.url}/healthz`, "HEAD")).toBe(503)
      expect(yield* statusOf(`${gateway.url}/readyz`, "HEAD")).toBe(503)
      const refused = yield* Effect.flip(attempt(() => client.chat.completions.create({ model, messages: [{ role: "user", content: "late" }] })))
      expect(refused).toBeInstanceOf(OpenAI.InternalServerError)
      expect((refused as APIError).status).toBe(503)
      expect((refused as APIError).code).toBe("shutting_down")
      // Another replica, or this one restarted, may serve it: a client that honours Retry-After comes back.
      expect((refused as APIError).headers?.get("retry-after")).toBe("1")

      const { error, text } = yield* Fiber.join(reading)
      expect(error).toBeUndefined()
      expect(text).toBe(`echo:${longText}`)
      yield* Fiber.join(draining)
      const closed = yield* Effect.either(statusOf(`${gateway.url}/healthz`))
      expect(closed._tag).toBe("Left")
    }))

  it.scopedLive("past the drain timeout, a running stream ends with an error event and a waiting request gets a 503", () =>
    Effect.gen(function*() {
      const g: Wire.Generation = { id: "chatcmpl-slow", model, content: longText, usage: Wire.usage({ promptTokens: 5, completionTokens: 30 }) }
      const slowStream: Handler = async (request, response) => {
        response.writeHead(200, { "content-type": "text/event-stream" })
        for (const event of Wire.chunks(g, 4).map(Wire.sseData)) {
          if (request.socket.destroyed) return
          response.write(event)
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
        response.end(Wire.sseDone)
      }
      const neverAnswers: Handler = () => new Promise(() => {})
      const upstream = yield* rawServer([slowStream, neverAnswers])
      const gateway = yield* startGateway([account("a", upstream.url, ["upstream-key"])], {
        drainTimeout: "300 millis",
        keepAliveInterval: "30 seconds"
      })
      const client = openai(gateway.url)
      const started = yield* Deferred.make<void>()
      const stream = yield* attempt(() => client.chat.completions.create({ model, messages: [{ role: "user", content: "x" }], stream: true }))
      const reading = yield* Effect.fork(consume(stream, started))
      yield* Deferred.await(started)
      const waiting = yield* Effect.fork(Effect.flip(attempt(() => client.chat.completions.create({ model, messages: [{ role: "user", content: "y" }] }))))
      yield* Effect.sleep("100 millis")
      expect(gateway.traffic.active).toBe(2)

      yield* gateway.drain
      const { error, text } = yield* Fiber.join(reading)
      expect(error).toBeInstanceOf(APIError)
      expect((error as APIError).code).toBe("shutting_down")
      expect(text.length).toBeGreaterThan(0)
      expect(text.length).toBeLessThan(longText.length)
      const refused = yield* Fiber.join(waiting)
      expect((refused as APIError).status).toBe(503)
      // Cut while it waited, as one refused while draining: its client's next request goes elsewhere.
      expect((refused as APIError).headers?.get("connection")).toBe("close")
      expect(gateway.traffic.active).toBe(0)
      expect(gateway.traffic.streamsCut).toBe(1)
    }))

  it.scopedLive("past the drain timeout, a JSON answer already committed by keep-alives ends with an OpenAI error body", () =>
    Effect.gen(function*() {
      const neverAnswers: Handler = () => new Promise(() => {})
      const upstream = yield* rawServer([neverAnswers])
      const gateway = yield* startGateway([account("a", upstream.url, ["upstream-key"])], {
        drainTimeout: "300 millis",
        keepAliveInterval: "50 millis"
      })
      const waiting = yield* Effect.fork(rawText(`${gateway.url}/v1/chat/completions`, { model, messages: [{ role: "user", content: "y" }] }))
      yield* Effect.sleep("200 millis")
      expect(gateway.traffic.keepAlives).toBeGreaterThan(0)
      yield* gateway.drain
      expect(yield* Fiber.join(waiting)).toMatch(/^\n+\{"error":\{[^\n]*"code":"shutting_down"\}\}$/)
      expect(gateway.traffic.active).toBe(0)
    }))

  it.scopedLive("closing the gateway's scope drains it the same way, the drain timeout included", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ chunkDelay: 100, pieceSize: 2 })
      const scope = yield* Scope.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { drainTimeout: "300 millis" }).pipe(
        Scope.extend(scope)
      )
      const started = yield* Deferred.make<void>()
      const stream = yield* attempt(() =>
        openai(gateway.url).chat.completions.create({ model, messages: [{ role: "user", content: longText }], stream: true })
      )
      const reading = yield* Effect.fork(consume(stream, started))
      yield* Deferred.await(started)
      const closing = yield* Effect.timed(Scope.close(scope, Exit.void))
      expect(Duration.toMillis(closing[0])).toBeLessThan(2_000)
      const { error } = yield* Fiber.join(reading)
      expect((error as APIError).code).toBe("shutting_down")
    }))

  it.scopedLive("the drain takes at most its timeout, the requests it cuts included: one still uploading its body is closed by then", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make()
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { drainTimeout: "400 millis" })
      const { port } = new URL(gateway.url)
      // A client on a slow uplink: its request's headers, then a part of its body.
      const socket = yield* Effect.acquireRelease(
        Effect.async<Net.Socket>((resume) => {
          const client = Net.connect(Number(port), "127.0.0.1", () => resume(Effect.succeed(client)))
        }),
        (client) => Effect.sync(() => client.destroy())
      )
      const closed = yield* Deferred.make<void>()
      socket.on("close", () => Effect.runSync(Deferred.succeed(closed, undefined)))
      socket.write(
        `POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"model":`
      )
      yield* Effect.sleep("100 millis")
      const [took] = yield* Effect.timed(gateway.drain)
      expect(Duration.toMillis(took)).toBeLessThan(600)
      yield* Deferred.await(closed).pipe(Effect.timeout("1 second"))
    }))

  /** `weatherproof serve` with `drainTimeout` in a process of its own, and a stream through it, started. */
  const serveStreaming = (simulator: Simulator.Options, drainTimeout: string) =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make(simulator)
      const child = yield* serveProcess(["serve", "--port", "0", "--drain-timeout", drainTimeout], {
        DEEPSEEK_API_KEY: Simulator.defaultKey,
        DEEPSEEK_BASE_URL: sim.baseUrl
      })
      const url = yield* child.url
      const started = yield* Deferred.make<void>()
      const stream = yield* attempt(() =>
        openai(url).chat.completions.create({ model, messages: [{ role: "user", content: longText }], stream: true })
      )
      const reading = yield* Effect.fork(consume(stream, started))
      yield* Deferred.await(started)
      return { child, url, reading }
    })

  it.scopedLive("SIGTERM: `weatherproof serve` drains a running stream, answers 503 to health checks meanwhile, says it drained, and exits 0", () =>
    Effect.gen(function*() {
      const { child, reading, url } = yield* serveStreaming({ chunkDelay: 25, pieceSize: 4 }, "10s")
      child.process.kill("SIGTERM")
      yield* Effect.sleep("100 millis")
      expect(yield* statusOf(`${url}/healthz`)).toBe(503)
      const { error, text } = yield* Fiber.join(reading)
      expect(error).toBeUndefined()
      expect(text).toBe(`echo:${longText}`)
      expect(yield* child.exitCode).toBe(0)
      // On stderr, with the drain's other lines and their timestamps.
      expect(child.errorOutput()).toContain("gateway: SIGTERM: shutting down; 1 request in flight")
      expect(child.output()).toMatch(/gateway: drained in [^:\n]+: every request finished; stopped/)
    }), { timeout: 60_000 })

  it.scopedLive("SIGTERM: an answer the upstream finished while its client reads slowly is sent whole, not cut as the process exits", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ pieceSize: 2_000, chunkDelay: 0, queueDelay: 0 })
      const child = yield* serveProcess(["serve", "--port", "0", "--drain-timeout", "30s"], {
        DEEPSEEK_API_KEY: Simulator.defaultKey,
        DEEPSEEK_BASE_URL: sim.baseUrl
      })
      const url = yield* child.url
      // A prompt of 9 MB (the gateway takes up to 10 MiB) echoed in 2,000-character events: an
      // answer of about 9.5 MB, more than the sockets buffer (a few MB on loopback): the rest waits
      // in the gateway's process.
      const prompt = "x".repeat(9_000_000)
      const response = yield* Effect.async<Http.IncomingMessage>((resume) => {
        const request = Http.request(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" } }, (res) => {
          res.pause()
          resume(Effect.succeed(res))
        })
        request.end(JSON.stringify({ model, stream: true, messages: [{ role: "user", content: prompt }] }))
      })
      // The client reads nothing while the gateway gets the whole answer; the drain begins, then it reads.
      yield* Effect.repeat(Effect.map(sim.stats, (stats) => stats.completed), {
        until: (completed) => completed === 1,
        schedule: Schedule.spaced("50 millis")
      }).pipe(Effect.timeout("30 seconds"))
      yield* Effect.sleep("500 millis")
      child.process.kill("SIGTERM")
      yield* Effect.sleep("1 second")
      const received = yield* Effect.async<string>((resume) => {
        let text = ""
        response.setEncoding("utf8")
        response.on("data", (piece: string) => text += piece)
        response.on("end", () => resume(Effect.succeed(text)))
        response.on("error", () => resume(Effect.succeed(text)))
        response.resume()
      })
      expect(received.endsWith("data: [DONE]\n\n")).toBe(true)
      expect(received.length).toBeGreaterThan(prompt.length)
      expect(yield* child.exitCode).toBe(0)
    }), { timeout: 60_000 })

  it.scopedLive("a second signal during the drain ends the requests in flight at once: the stream gets its error event, the process exits 0", () =>
    Effect.gen(function*() {
      const { child, reading } = yield* serveStreaming({ chunkDelay: 200, pieceSize: 2 }, "5m")
      child.process.kill("SIGTERM")
      // The second signal once the first is taken: the drain has begun.
      yield* Effect.repeat(Effect.sync(() => child.output().includes("shutting down")), {
        until: (said) => said,
        schedule: Schedule.spaced("20 millis")
      }).pipe(Effect.timeout("20 seconds"))
      child.process.kill("SIGINT")
      const { error, text } = yield* Fiber.join(reading)
      expect((error as APIError).code).toBe("shutting_down")
      expect(text.length).toBeLessThan(`echo:${longText}`.length)
      expect(yield* child.exitCode).toBe(0)
      expect(child.errorOutput()).toContain("gateway: stopping now; the requests in flight end with an error")
      expect(child.output()).toMatch(/gateway: drained in [^,\n]+, the rest cut; stopped/)
    }), { timeout: 60_000 })

  it.scopedLive("SIGTERM with an OTLP collector that refuses connections: `weatherproof serve` exits once drained, not when the exporters' retries give up", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({})
      const refusing = yield* Effect.promise(() => closedPort())
      const child = yield* serveProcess(["serve", "--port", "0"], {
        DEEPSEEK_API_KEY: Simulator.defaultKey,
        DEEPSEEK_BASE_URL: sim.baseUrl,
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${refusing}`
      })
      const url = yield* child.url
      yield* attempt(() => openai(url).chat.completions.create({ model, messages: [{ role: "user", content: "traced" }] }))
      const stoppedAt = Date.now()
      child.process.kill("SIGTERM")
      expect(yield* child.exitCode).toBe(0)
      // The exporters' last flushes are given 2 s each; their retries (10 s and more) are not waited for.
      expect(Date.now() - stoppedAt).toBeLessThan(8_000)
    }), { timeout: 60_000 })

  it.scopedLive("with no terminal (under nohup or a service manager) `weatherproof serve` ignores SIGHUP, with a note, and goes on serving", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({})
      const child = yield* serveProcess(["serve", "--port", "0"], { DEEPSEEK_API_KEY: Simulator.defaultKey, DEEPSEEK_BASE_URL: sim.baseUrl })
      const url = yield* child.url
      child.process.kill("SIGHUP")
      yield* Effect.sleep("100 millis")
      expect(yield* statusOf(`${url}/healthz`)).toBe(200)
      const answer = yield* attempt(() => openai(url).chat.completions.create({ model, messages: [{ role: "user", content: "still there?" }] }))
      expect(answer.choices[0]?.message.content).toBe("echo:still there?")
      expect(child.output()).toContain("weatherproof: SIGHUP ignored: no terminal of this process hung up")
    }), { timeout: 60_000 })
})
