/**
 * The gateway under load and waits: many clients over a small upstream limit, and calls queued
 * upstream for longer than the client's own idle timeout.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import OpenAI from "openai"
import { Agent, fetch as undiciFetch } from "undici"
import * as Simulator from "../src/Simulator.js"
import { account, attempt, collect, startGateway } from "./support/gateway.js"

const model = "deepseek-v4-flash"

/** An `openai` client whose connection gives up after `idleMillis` without a byte (headers or body). */
const impatientClient = (url: string, idleMillis: number) =>
  new OpenAI({
    apiKey: "unused",
    baseURL: `${url}/v1`,
    maxRetries: 0,
    fetch: undiciFetch as unknown as typeof fetch,
    fetchOptions: { dispatcher: new Agent({ headersTimeout: idleMillis, bodyTimeout: idleMillis }) } as never
  })

describe("weatherproof serve under load", () => {
  it.scopedLive("80 concurrent clients over an upstream limit of 8 all succeed; no 429 reaches them", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ limit: 8, queueDelay: { min: 10, max: 40 } })
      const gateway = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], {
        pool: { retry: { base: "20 millis" } }
      })
      const client = new OpenAI({ apiKey: "unused", baseURL: `${gateway.url}/v1`, maxRetries: 0 })
      const markers = Array.from({ length: 80 }, (_, i) => `client-${i}`)
      const answers = yield* Effect.forEach(markers, (marker, i) =>
        i % 2 === 0
          ? attempt(() => client.chat.completions.create({ model, messages: [{ role: "user", content: marker }] })).pipe(
            Effect.map((answer) => answer.choices[0]?.message.content)
          )
          : attempt(() => client.chat.completions.create({ model, messages: [{ role: "user", content: marker }], stream: true })).pipe(
            Effect.flatMap(collect),
            Effect.map((chunks) => chunks.map((chunk) => chunk.choices[0]?.delta.content ?? "").join(""))
          ), { concurrency: "unbounded" })
      expect(answers).toEqual(markers.map((marker) => `echo:${marker}`))
      const stats = yield* sim.stats
      expect(stats.accounts.default?.maxInFlight).toBeLessThanOrEqual(8)
      expect(stats.completed).toBe(80)
    }))

  it.scopedLive("a call queued upstream longer than the client's idle timeout survives, because keep-alives flow", () =>
    Effect.gen(function*() {
      // DeepSeek keeps the request 1.2 s in its queue; the client drops a connection idle for 400 ms.
      const sim = yield* Simulator.make({ queueDelay: 1_200, keepAliveInterval: 50 })
      const live = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { keepAliveInterval: "100 millis" })
      const client = impatientClient(live.url, 400)
      const answer = yield* attempt(() =>
        client.chat.completions.create({ model, messages: [{ role: "user", content: "patience" }] })
      )
      expect(answer.choices[0]?.message.content).toBe("echo:patience")
      const chunks = yield* attempt(() =>
        client.chat.completions.create({ model, messages: [{ role: "user", content: "streamed patience" }], stream: true })
      ).pipe(Effect.flatMap(collect))
      expect(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? "").join("")).toBe("echo:streamed patience")
      expect(live.traffic.keepAlives).toBeGreaterThanOrEqual(2 * 8)

      // The same wait behind a gateway that keeps nothing alive in time: the client gives up.
      const silent = yield* startGateway([account("a", sim.baseUrl, [Simulator.defaultKey])], { keepAliveInterval: "5 seconds" })
      const failure = yield* Effect.flip(attempt(() =>
        impatientClient(silent.url, 400).chat.completions.create({ model, messages: [{ role: "user", content: "too slow" }] })
      ))
      expect(failure).toBeInstanceOf(OpenAI.APIConnectionError)
    }))
})
