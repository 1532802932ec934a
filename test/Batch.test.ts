import { SystemError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import { hostname } from "node:os"
import {
  emptyPartial,
  InsufficientResource,
  InvalidRequest,
  KeyRejected,
  RateLimited,
  ServerError,
  StreamTruncated,
  TransportError
} from "../src/ApiError.js"
import * as AccountPool from "../src/AccountPool.js"
import type { ApiError } from "../src/ApiError.js"
import * as Batch from "../src/Batch.js"
import type { ChatCompletionRequest } from "../src/ChatSchema.js"
import * as CostLedger from "../src/CostLedger.js"
import * as Files from "../src/internal/batchFiles.js"
import * as Demo from "../app/cli/batchDemo.js"
import type { Account } from "../src/Accounts.js"
import * as wire from "../src/internal/wire.js"
import { type CallOptions, Resilient } from "../src/Resilient.js"
import * as Router from "../src/Router.js"
import * as Simulator from "../src/Simulator.js"
import { Telemetry } from "../src/Telemetry.js"
import { layerFullDisk, noSpace } from "./support/fullDisk.js"
import { flatPricing } from "./support/pricing.js"
import { freePort } from "./support/ports.js"
import { type Handler, rawServer } from "./support/rawServer.js"
import { capturingLogs, type Logged } from "./support/logs.js"

const secret = "sk-batch-test-SECRET-0123456789"

const lastUserText = (request: ChatCompletionRequest): string => {
  const last = request.messages[request.messages.length - 1]
  return last !== undefined && typeof last.content === "string" ? last.content : ""
}

/** The double's answer to a request: it echoes the last user message, and reasons when thinking. */
const generationOf = (request: ChatCompletionRequest): wire.Generation => ({
  id: `cmpl-${lastUserText(request)}`,
  model: request.model,
  content: `echo:${lastUserText(request)}`,
  reasoningContent: request.thinking?.type === "enabled" ? `think:${lastUserText(request)}` : undefined,
  usage: wire.usage({ promptTokens: 10, completionTokens: 5, cacheHitTokens: 4, reasoningTokens: 2 })
})

const answerOf = (request: ChatCompletionRequest) => wire.completion(generationOf(request))

type Script = (request: ChatCompletionRequest) => ApiError | "ok"

/** The account of the double that serves a request: `alpha` for markers starting with "a", else `beta`. */
const accountOf = (request: ChatCompletionRequest) => lastUserText(request).startsWith("a") ? "alpha" : "beta"

/** What the double bills for an attempt it throws away (a request whose marker contains "retried"). */
const discardedUsage = wire.usage({ promptTokens: 10, completionTokens: 3 })

/**
 * A `Resilient` double scripted per request, counting calls, keeping the requests it was sent,
 * reporting each failure to the telemetry and recording every attempt in the `CostLedger` the way
 * `AccountPool` does (a success `kept`, a failure `discarded`): a request whose marker contains
 * "retried" first has an attempt billed and thrown away (a retry). `before` runs at the start of
 * every call (a test holds calls in flight with it). A stream sends the answer's chunks; one whose
 * marker contains "cut" stops after its first half with `StreamTruncated`.
 */
/**
 * Hooks of the double's calls: `queued` runs before its request goes out (a wait for a permit),
 * `before` after (the request on the wire). Each call tells `onExchange` as a transport does.
 */
interface Hooks {
  readonly queued?: ((request: ChatCompletionRequest) => Effect.Effect<void>) | undefined
  readonly before?: ((request: ChatCompletionRequest) => Effect.Effect<void>) | undefined
}

/**
 * `resilient` (a `double`'s layer) with a ledger, the default router and an `AccountPool` that
 * serves no call: the run reads only its `snapshot` and `unreachable`.
 */
const withPoolDouble = <ROut, E, RIn>(
  resilient: Layer.Layer<ROut, E, RIn>,
  pool: Pick<AccountPool.Service, "snapshot" | "unreachable">
) =>
  resilient.pipe(
    Layer.provideMerge(CostLedger.layer({ pricing: flatPricing })),
    Layer.merge(Router.layerDefault),
    Layer.merge(Layer.succeed(AccountPool.AccountPool, {
      ...pool,
      create: () => Effect.die("unused"),
      stream: () => Stream.die("unused"),
      capacity: Effect.succeed({ permits: 24, free: 24, stalled: false, unserved: 0, changed: Effect.never }),
      scrub: (text) => text
    }))
  )

const double = (script: Script, hooks: Hooks = {}) =>
  Effect.gen(function*() {
    const calls = yield* Ref.make(0)
    const sent = yield* Ref.make<ReadonlyArray<ChatCompletionRequest>>([])
    const layer = Layer.effect(
      Resilient,
      Effect.gen(function*() {
        const telemetry = yield* Telemetry
        const ledger = yield* CostLedger.CostLedger
        const boom = new ServerError({ status: 500, message: "boom", retryAfter: Option.none() })
        const retried = (request: ChatCompletionRequest) =>
          lastUserText(request).includes("retried")
            ? Effect.all([
              ledger.record({ account: accountOf(request), model: request.model, usage: discardedUsage, disposition: "discarded" }),
              telemetry.attemptFailed(boom),
              telemetry.retrying(boom, Duration.zero)
            ])
            : Effect.void
        const queued = hooks.queued ?? (() => Effect.void)
        const before = hooks.before ?? (() => Effect.void)
        return {
          create: (request: ChatCompletionRequest, options?: CallOptions) =>
            Effect.gen(function*() {
              yield* queued(request)
              options?.onExchange?.("sent")
              yield* before(request)
              yield* Ref.update(calls, (n) => n + 1)
              yield* Ref.update(sent, (all) => [...all, request])
              yield* retried(request)
              const step = script(request)
              const answer = answerOf(request)
              // As the pool does: a success is kept, a failed last attempt (with no output) failed.
              yield* ledger.record({
                account: accountOf(request),
                model: request.model,
                usage: step === "ok" ? answer.usage ?? undefined : undefined,
                disposition: step === "ok" ? "kept" : "failed"
              })
              options?.onExchange?.(step === "ok" ? "answered" : "failed")
              if (step === "ok") return answer
              yield* telemetry.attemptFailed(step)
              return yield* Effect.fail(step)
            }),
          stream: (request: ChatCompletionRequest, options?: CallOptions) =>
            Stream.unwrap(Effect.gen(function*() {
              yield* queued(request)
              options?.onExchange?.("sent")
              yield* before(request)
              yield* Ref.update(calls, (n) => n + 1)
              yield* Ref.update(sent, (all) => [...all, request])
              const step = script(request)
              if (step !== "ok") return Stream.fail(step)
              const chunks = wire.chunks(generationOf(request), 4)
              if (!lastUserText(request).includes("cut")) return Stream.fromIterable(chunks)
              const half = chunks.slice(0, Math.ceil(chunks.length / 2))
              return Stream.concat(Stream.fromIterable(half), Stream.fail(new StreamTruncated({ partial: emptyPartial })))
            }))
        }
      })
    ).pipe(Layer.provideMerge(Batch.layerTelemetryCounts))
    return { calls, sent, layer }
  })

const request = (customId: string, text = customId) =>
  JSON.stringify({
    custom_id: customId,
    method: "POST",
    url: "/v1/chat/completions",
    body: { model: "deepseek-v4-flash", messages: [{ role: "user", content: text }] }
  })

interface Parsed {
  readonly id: string
  readonly custom_id: string | null
  readonly response: {
    readonly status_code: number
    readonly request_id: string | null
    readonly body: any
  } | null
  readonly error: { readonly code: string; readonly message: string; readonly line?: number } | null
}

const workspace = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  // The real path, so that `<output>.lock` is the lock's path even where the temp dir is a symlink.
  const dir = yield* fs.realPath(yield* fs.makeTempDirectoryScoped({ prefix: "batch-test-" }))
  const input = `${dir}/input.jsonl`
  const output = `${dir}/output.jsonl`
  return {
    fs,
    input,
    output,
    writeInput: (lines: ReadonlyArray<string>) => fs.writeFileString(input, lines.map((l) => `${l}\n`).join("")),
    readOutput: Effect.map(fs.readFileString(output), (text) => {
      expect(text.endsWith("\n")).toBe(true)
      return text.split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l) as Parsed)
    })
  }
})

/** Runs a batch over the double, with the default router and a fresh ledger unless given others. */
const runWith = (
  script: Script,
  options: Omit<Batch.Options, "input" | "output"> & { input: string; output: string },
  services: {
    readonly router?: Layer.Layer<Router.Router>
    readonly ledger?: Layer.Layer<CostLedger.CostLedger>
  } & Hooks = {}
) =>
  Effect.gen(function*() {
    const { calls, layer, sent } = yield* double(script, services)
    const stack = layer.pipe(
      Layer.provideMerge(services.ledger ?? CostLedger.layer({ pricing: flatPricing })),
      Layer.merge(services.router ?? Router.layerDefault)
    )
    const summary = yield* Batch.run(options).pipe(Effect.provide(stack))
    return { summary, calls: yield* Ref.get(calls), sent: yield* Ref.get(sent) }
  })

const ok: Script = () => "ok"
/** Result lines by `custom_id`, a line without one (`null`) as "line <n>", its `error.line`. */
const byCustomId = (lines: ReadonlyArray<Parsed>) => new Map(lines.map((l) => [l.custom_id ?? `line ${l.error?.line}`, l]))
const countBy = (lines: ReadonlyArray<Parsed>) => {
  const counts = new Map<string | null, number>()
  for (const l of lines) counts.set(l.custom_id, (counts.get(l.custom_id) ?? 0) + 1)
  return counts
}

describe("Batch.run", () => {
  it.scoped("answers every request line with one result line carrying the completion", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput(["a", "b", "c"].map((id) => request(id)))
      const { calls, summary } = yield* runWith(ok, ws)
      const lines = yield* ws.readOutput
      expect(calls).toBe(3)
      expect(lines.map((l) => l.custom_id).sort()).toEqual(["a", "b", "c"])
      for (const line of lines) {
        expect(line.id).toMatch(/^batch_req_[0-9a-f]{32}$/)
        expect(line.error).toBeNull()
        expect(line.response?.status_code).toBe(200)
        expect(line.response?.request_id).toBe(`cmpl-${line.custom_id}`)
        expect(line.response?.body.choices[0].message.content).toBe(`echo:${line.custom_id}`)
      }
      expect(new Set(lines.map((l) => l.id)).size).toBe(3)
      expect(summary).toMatchObject({
        requests: 3,
        succeeded: 3,
        fromCache: 0,
        failed: 0,
        skipped: 0,
        failures: {},
        routingWarnings: 0,
        spend: {
          attempts: 3,
          answered: 3,
          tokens: { prompt: 30, completion: 15, cacheHit: 12, cacheMiss: 18, reasoning: 6 },
          // deepseek-v4-flash at the default prices: per answer 4 hit, 6 miss and 5 output tokens,
          // (4 × 0.0028 + 6 × 0.14 + 5 × 0.28) USD per 1M tokens = 2.2512e-6 USD.
          costUsd: 6.7536e-6,
          retryTax: { attempts: 0, tokens: 0, costUsd: 0 }
        }
      })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("sends a line whose optional fields are null, as OpenAI's API takes them", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const line = JSON.parse(request("nulls"))
      yield* ws.writeInput([JSON.stringify({ ...line, body: { ...line.body, temperature: null, stop: null, tools: null, stream: null } })])
      const { calls, summary } = yield* runWith(ok, ws)
      expect(calls).toBe(1)
      expect(summary).toMatchObject({ succeeded: 1, failed: 0 })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("reads a file joined from files that each began with a byte order mark (`cat a.jsonl b.jsonl`): each line after a mark is its JSON", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput(["\uFEFF" + request("a"), request("b"), "\uFEFF" + request("c"), "\uFEFF", "\uFEFF\u3000"])
      const { calls, summary } = yield* runWith(ok, ws)
      const lines = byCustomId(yield* ws.readOutput)
      expect(calls).toBe(3)
      expect(["a", "b", "c"].map((id) => lines.get(id)?.error)).toEqual([null, null, null])
      // A mark alone is a blank line; a mark before a space that is not JSON's is still no JSON.
      expect(lines.get("line 5")?.error).toEqual({ code: "invalid_line", message: "line is not valid JSON (column 1: Unexpected token '\u3000')", line: 5 })
      expect(summary).toMatchObject({ requests: 4, succeeded: 3, failed: 1 })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a file whose lines end in CR alone (classic Mac OS) is one line that is no JSON, and its error says why", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.fs.writeFileString(ws.input, `${request("a")}\r${request("b")}\r`)
      const { calls } = yield* runWith(ok, ws)
      expect(calls).toBe(0)
      expect(byCustomId(yield* ws.readOutput).get("line 1")?.error).toEqual({
        code: "invalid_line",
        message: "line is not valid JSON: it holds carriage returns (CR) where lines end, as a file with CR line ends does; convert them to LF",
        line: 1
      })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("turns every malformed line (nested too deep, blank only to trim() included) into an error line and sends the rest", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const good = request("good")
      const malformed = [
        "{not json",
        JSON.stringify({ method: "POST", url: "/v1/chat/completions", body: { model: "m", messages: [{ role: "user", content: "x" }] } }),
        JSON.stringify({ custom_id: "bad-body", method: "POST", url: "/v1/chat/completions", body: { model: "m", messages: [] } }),
        JSON.stringify({ custom_id: "bad-method", method: "GET", url: "/v1/chat/completions", body: JSON.parse(good).body }),
        JSON.stringify({ custom_id: "bad-url", method: "POST", url: "/v1/embeddings", body: JSON.parse(good).body }),
        "[1, 2, 3]",
        JSON.stringify({ custom_id: 42, method: "POST", url: "/v1/chat/completions", body: JSON.parse(good).body })
      ]
      const shortUrl = JSON.stringify({ ...JSON.parse(request("short-url")), url: "/chat/completions" })
      // A tool's schema 5,000 levels deep: sending it (JSON.stringify) overflowed the stack, a defect that ended the run.
      const depth = 5000
      const deep = request("deep").replace(
        `"messages":`,
        `"tools":[{"type":"function","function":{"name":"f","parameters":${"{\"a\":".repeat(depth)}1${"}".repeat(depth)}}}],"messages":`
      )
      yield* ws.writeInput([good, ...malformed, "", "   ", shortUrl, deep, "\uFEFF\u3000"])
      const { calls, summary } = yield* runWith(ok, ws)
      const lines = byCustomId(yield* ws.readOutput)

      expect(calls).toBe(2)
      expect(lines.size).toBe(11)
      // Blank to trim(), not to JSON: an error line, never a line that vanished.
      expect(lines.get("line 13")?.error).toEqual({ code: "invalid_line", message: "line is not valid JSON (column 1: Unexpected token '\u3000')", line: 13 })
      // A line with its own id is told by its line too: a duplicate's id is another line's.
      expect(lines.get("deep")?.error).toEqual({ code: "invalid_line", message: "line nests arrays and objects deeper than 256 levels", line: 12 })
      expect(lines.get("good")?.error).toBeNull()
      expect(lines.get("short-url")?.error).toBeNull()
      // Line numbers are the file's: the good line is line 1, so malformed lines are 2-8.
      for (const id of ["line 2", "line 3", "bad-body", "bad-method", "bad-url", "line 7", "line 8"]) {
        const line = lines.get(id)
        expect(line?.error?.code, id).toBe("invalid_line")
        expect(line?.response, id).toBeNull()
      }
      // Where the line stops being JSON: a request line is long, and its column the way to the fault.
      expect(lines.get("line 2")?.error?.message).toBe("line is not valid JSON (column 2: Expected property name or '}')")
      expect(lines.get("line 7")?.error?.message).toBe("line is an array, not a JSON object (one request per line)")
      expect(lines.get("bad-body")?.error?.message).toContain("body.messages")
      expect(lines.get("bad-method")?.error?.message).toBe(`invalid batch request: method: Expected "POST", actual "GET"`)
      expect(lines.get("bad-url")?.error?.message).toContain("url")
      expect(lines.get("line 8")?.error?.message).toBe("invalid batch request: custom_id: Expected string, actual 42")
      expect(summary).toMatchObject({ requests: 11, succeeded: 2, failed: 9, failures: { invalid_line: 9 } })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("sends a custom_id once and answers a later line reusing it with an error line", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("x", "first"), request("y"), request("x", "second")])
      const { calls, summary } = yield* runWith(ok, ws)
      const lines = yield* ws.readOutput
      expect(calls).toBe(2)
      const xs = lines.filter((l) => l.custom_id === "x")
      expect(xs).toHaveLength(2)
      const answered = xs.find((l) => l.error === null)
      expect(answered?.response?.body.choices[0].message.content).toBe("echo:first")
      const duplicate = xs.find((l) => l.error !== null)
      expect(duplicate?.error?.code).toBe("duplicate_custom_id")
      expect(duplicate?.error?.message).toBe(`custom_id "x" is already used by line 1`)
      // Its id is another line's: its own line tells it apart.
      expect(duplicate?.error?.line).toBe(3)
      expect(summary).toMatchObject({ requests: 3, succeeded: 2, failed: 1, failures: { duplicate_custom_id: 1 } })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a line without a custom_id is told by its line, with no id made up for it that a real line could have", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a"), "not json", request("line-2"), JSON.stringify({ method: "POST" })])
      const { calls, summary } = yield* runWith(ok, ws)
      const lines = yield* ws.readOutput
      expect(calls).toBe(2)
      expect(lines.filter((l) => l.custom_id === "line-2").map((l) => l.error)).toEqual([null])
      expect(lines.filter((l) => l.custom_id === null).map((l) => [l.error?.line, l.error?.code])).toEqual([[2, "invalid_line"], [4, "invalid_line"]])
      expect(summary).toMatchObject({ requests: 4, succeeded: 2, failed: 2 })
      // A rerun keeps the answers and sends the id-less lines' fixes: none of them was taken for an answer.
      yield* ws.writeInput([request("a"), request("b"), request("line-2"), request("c")])
      const rerun = yield* runWith(ok, ws)
      expect(rerun).toMatchObject({ calls: 2, summary: { succeeded: 2, skipped: 2, failed: 0 } })
      expect([...countBy(yield* ws.readOutput).keys()].sort()).toEqual(["a", "b", "c", "line-2"])
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("writes a failed call's typed error and, when it had a status, its HTTP response", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput(["limited", "broken", "invalid", "large", "fine"].map((id) => request(id)))
      const script: Script = (r) => {
        switch (lastUserText(r)) {
          case "limited":
            return new RateLimited({ message: "too many requests", retryAfter: Option.none() })
          case "broken":
            return new ServerError({ status: 503, message: "overloaded", retryAfter: Option.none() })
          case "invalid":
            return new InvalidRequest({ status: 422, message: "bad temperature", param: "temperature", code: "invalid_parameter" })
          case "large":
            return new InvalidRequest({ status: 413, message: "request entity too large" })
          default:
            return "ok"
        }
      }
      const { summary } = yield* runWith(script, ws)
      const lines = byCustomId(yield* ws.readOutput)
      expect(lines.get("limited")?.error).toEqual({ code: "RateLimited", message: "too many requests" })
      expect(lines.get("limited")?.response).toEqual({
        status_code: 429,
        request_id: null,
        body: { error: { message: "too many requests", type: "rate_limit_error", code: null } }
      })
      expect(lines.get("broken")?.response?.status_code).toBe(503)
      expect(lines.get("broken")?.response?.body.error.type).toBe("server_error")
      expect(lines.get("invalid")?.response?.body.error).toEqual({
        message: "bad temperature",
        type: "invalid_request_error",
        param: "temperature",
        code: "invalid_parameter"
      })
      expect(lines.get("large")?.response?.status_code).toBe(413)
      expect(lines.get("large")?.response?.body.error.type).toBe("invalid_request_error")
      expect(lines.get("fine")?.error).toBeNull()
      expect(summary).toMatchObject({
        succeeded: 1,
        failed: 4,
        failures: { RateLimited: 1, ServerError: 1, InvalidRequest: 2 },
        rateLimited: 1,
        failedAttempts: 4
      })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a non-streaming answer cut short on its last attempt (billed) keeps what it held in error.partial, as a cut stream does", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("cut"), request("unreasoned"), request("reset")])
      const usage = wire.usage({ promptTokens: 10, completionTokens: 5 })
      const cutShort: Script = (r) =>
        lastUserText(r) === "cut" || lastUserText(r) === "unreasoned"
          ? new InsufficientResource({
            partial: {
              content: "half an ans",
              reasoningContent: lastUserText(r) === "cut" ? "I th" : "",
              usage,
              finishReason: "insufficient_system_resource",
              events: 1
            }
          })
          // A body cut mid-JSON: no text arrived, so there is nothing to keep.
          : new TransportError({ reason: "body", message: "closed", partial: { ...emptyPartial, events: 1 } })
      yield* runWith(cutShort, ws)
      const lines = byCustomId(yield* ws.readOutput)
      expect(lines.get("cut")?.error).toEqual({
        code: "InsufficientResource",
        message: "the answer was cut (11 characters of content and 4 of reasoning arrived, kept in error.partial): inference was cut: insufficient_system_resource",
        partial: { chunks: 1, content: "half an ans", reasoning_content: "I th", finish_reason: "insufficient_system_resource", usage }
      })
      // No reasoning is null, as in a cut stream's partial.
      expect((lines.get("unreasoned")?.error as any).partial.reasoning_content).toBeNull()
      expect(lines.get("reset")?.error).toEqual({ code: "TransportError", message: "closed" })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("resumes: skips what succeeded, retries what failed, keeps one line per custom_id", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const ids = Array.from({ length: 20 }, (_, i) => `req-${i}`)
      yield* ws.writeInput(ids.map((id) => request(id)))
      const failFirstTime: Script = (r) =>
        Number(lastUserText(r).slice(4)) % 3 === 0
          ? new ServerError({ status: 500, message: "boom", retryAfter: Option.none() })
          : "ok"

      const first = yield* runWith(failFirstTime, ws)
      expect(first.summary).toMatchObject({ requests: 20, succeeded: 13, failed: 7, skipped: 0 })

      const second = yield* runWith(ok, ws)
      expect(second.calls).toBe(7)
      expect(second.summary).toMatchObject({ requests: 20, succeeded: 7, failed: 0, skipped: 13 })
      const lines = yield* ws.readOutput
      expect(lines).toHaveLength(20)
      expect([...countBy(lines).values()].every((n) => n === 1)).toBe(true)
      expect(lines.every((l) => l.error === null)).toBe(true)
      expect(new Set(lines.map((l) => l.custom_id))).toEqual(new Set(ids))

      const third = yield* runWith(ok, ws)
      expect(third.calls).toBe(0)
      expect(third.summary).toMatchObject({ requests: 20, succeeded: 0, failed: 0, skipped: 20 })
      expect(yield* ws.readOutput).toEqual(lines)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("an output that holds results of custom_ids the input lacks (another input's) keeps them and counts them: unmatched", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput(["a", "b", "c"].map((id) => request(id)))
      yield* runWith(ok, ws)
      // Another input into the same output: one id in common.
      yield* ws.writeInput(["c", "d"].map((id) => request(id)))
      const { calls, summary } = yield* runWith(ok, ws)
      expect(calls).toBe(1)
      expect(summary).toMatchObject({ requests: 2, succeeded: 1, skipped: 1, unmatched: 2 })
      expect(Batch.formatSummary(summary)).toContain(
        "unmatched: 2 results already in the output have a custom_id no line of this input has (another input's?): kept"
      )
      expect(Batch.toJson(summary)).toMatchObject({ unmatched: 2 })
      expect((yield* ws.readOutput).map((line) => line.custom_id).sort()).toEqual(["a", "b", "c", "d"])
      // The same input again: nothing unmatched but what the first input left.
      expect((yield* runWith(ok, ws)).summary).toMatchObject({ skipped: 2, unmatched: 2 })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("drops a last line torn by a crash (cut, or NULs where a machine's crash lost it) and sends its request again", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput(["a", "b", "c"].map((id) => request(id)))
      yield* runWith(ok, ws)
      const complete = yield* ws.fs.readFileString(ws.output)
      const [first, second] = complete.split("\n")
      // A crash in the middle of writing the second line.
      yield* ws.fs.writeFileString(ws.output, `${first}\n${second!.slice(0, 40)}`)
      const { calls, summary } = yield* runWith(ok, ws)
      expect(calls).toBe(2)
      expect(summary).toMatchObject({ succeeded: 2, skipped: 1 })
      const lines = yield* ws.readOutput
      expect(lines).toHaveLength(3)
      expect([...countBy(lines).keys()].sort()).toEqual(["a", "b", "c"])

      // A machine's crash: the appends' size was written, their data not (ext4, XFS fill it with NULs).
      yield* ws.fs.writeFile(ws.output, Buffer.concat([Buffer.from(`${first}\n`), Buffer.alloc(4096)]))
      expect((yield* runWith(ok, ws)).calls).toBe(2)
      expect((yield* ws.readOutput).map((line) => line.custom_id).sort()).toEqual(["a", "b", "c"])
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("drops an only line torn inside a character (a crash in a run's first write) and sends its request again; other text cut so stays refused", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a")])
      yield* runWith(ok, ws)
      const [first] = (yield* ws.fs.readFileString(ws.output)).split("\n")
      // The first two of the three bytes of "中": a write cut inside an answer in Chinese.
      const cut = new Uint8Array([0xe4, 0xb8])
      const tornAt = (text: string) => Buffer.concat([Buffer.from(text), cut])
      yield* ws.fs.writeFile(ws.output, tornAt(first!.slice(0, 40)))
      const { calls, summary } = yield* runWith(ok, ws)
      expect(calls).toBe(1)
      expect(summary).toMatchObject({ succeeded: 1 })
      expect((yield* ws.readOutput).map((line) => line.custom_id)).toEqual(["a"])

      // Other text cut so, or a cut character alone, is no result line a crash tore.
      for (const foreign of [tornAt("precious notes "), tornAt("")]) {
        yield* ws.fs.writeFile(ws.output, foreign)
        expect(yield* Effect.flip(runWith(ok, ws))).toMatchObject({ _tag: "BatchError", file: "output" })
        expect(Buffer.from(yield* ws.fs.readFile(ws.output))).toEqual(foreign)
      }
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("refuses to rewrite an output file that holds lines no batch wrote, a single whole one included", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a")])
      // A whole line (a newline after it, or JSON) is no line a crash tore: the file is not output
      // (the input and output swapped, say, with a one-line request file).
      const foreignFiles = [
        "precious data\nmore precious data\n",
        "just one line of notes\n",
        // Blanks after its newline, and a note saved with none (a torn line comes after a result).
        "precious notes\n ",
        "precious notes\r\n\r",
        "precious notes",
        '{"keep": true}',
        `${request("b")}\n`
      ]
      for (const foreign of foreignFiles) {
        yield* ws.fs.writeFileString(ws.output, foreign)
        const error = yield* Effect.flip(runWith(ok, ws))
        expect(error).toMatchObject({ _tag: "BatchError", file: "output" })
        expect(error.message).toBe(
          `line 1 of ${ws.output} is not a batch result; refusing to rewrite the file: give another output, or remove that line ` +
            "if the file is this batch's (its results are kept, and the line's request, if it was one, is sent again)"
        )
        expect(yield* ws.fs.readFileString(ws.output)).toBe(foreign)
      }
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("fails with BatchError for an unreadable input, an unwritable output, or output = input", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const missingInput = yield* Effect.flip(runWith(ok, { input: `${ws.input}.missing`, output: ws.output }))
      expect(missingInput).toMatchObject({ _tag: "BatchError", file: "input" })
      // Both paths are resolved side by side; the input's problem is the one told.
      const bothBad = yield* Effect.flip(runWith(ok, { input: `${ws.input}.missing`, output: `${ws.output}/no/such/dir.jsonl` }))
      expect(bothBad).toMatchObject({ _tag: "BatchError", file: "input" })
      yield* ws.writeInput([request("a")])
      const badOutput = yield* Effect.flip(runWith(ok, { input: ws.input, output: `${ws.output}/no/such/dir.jsonl` }))
      expect(badOutput).toMatchObject({ _tag: "BatchError", file: "output" })
      const same = yield* Effect.flip(runWith(ok, { input: ws.input, output: ws.input }))
      expect(same).toMatchObject({ _tag: "BatchError", file: "output" })
      expect(yield* ws.fs.readFileString(ws.input)).toBe(`${request("a")}\n`)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("never writes a key, even one echoed in an upstream message", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput(["rejected", "invalid"].map((id) => request(id)))
      const script: Script = (r) =>
        lastUserText(r) === "rejected"
          ? new KeyRejected({ message: `Incorrect API key provided: ${secret}`, keyId: "key#1" })
          : new InvalidRequest({ status: 400, message: `bad request for ${secret}` })
      yield* runWith(script, ws)
      const text = yield* ws.fs.readFileString(ws.output)
      expect(text).not.toContain(secret)
      expect(text).toContain("sk-***")
      const lines = byCustomId(yield* ws.readOutput)
      expect(lines.get("rejected")?.response?.status_code).toBe(401)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("never writes a key of any provider's shape that a bad line quotes back", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const groqKey = "gsk_0f3a9c2b7d4e4b1a8c6d2e9f0a1b"
      yield* ws.writeInput([JSON.stringify({ ...JSON.parse(request("pasted")), method: groqKey })])
      yield* runWith(ok, ws)
      const line = byCustomId(yield* ws.readOutput).get("pasted")
      expect(line?.error?.code).toBe("invalid_line")
      expect(line?.error?.message).toContain(`method: Expected "POST", actual "***"`)
      expect(JSON.stringify(line)).not.toContain("0f3a9c2b")
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("reports progress once the input is counted, up to the totals of the run", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a"), "oops", request("b")])
      const seen: Array<Batch.Progress> = []
      // The calls are answered only once the count is in: the first line does not wait for it.
      const counted = yield* Deferred.make<void>()
      const held: Batch.Options["onProgress"] = (p) => Effect.zipRight(Effect.sync(() => seen.push(p)), Deferred.succeed(counted, undefined))
      yield* runWith(ok, { ...ws, onProgress: held }, { before: () => Deferred.await(counted) })
      expect(seen.every((p) => p.total === 3)).toBe(true)
      expect(seen[0]!.succeeded).toBe(0)
      expect(seen[seen.length - 1]).toEqual({ total: 3, succeeded: 2, failed: 1, skipped: 0 })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a run that ends before its input is counted reports its progress, the lines it read being the total", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a"), "oops", request("b")])
      const seen: Array<Batch.Progress> = []
      const onProgress: Batch.Options["onProgress"] = (p) => Effect.sync(() => seen.push(p))
      yield* runWith(ok, { ...ws, onProgress }).pipe(Effect.provide(firstReadNeverEnds(ws.input)))
      expect(seen.length).toBeGreaterThan(0)
      expect(seen.every((p) => p.total === 3)).toBe(true)
      expect(seen[seen.length - 1]).toEqual({ total: 3, succeeded: 2, failed: 1, skipped: 0 })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("reads a pipe once, in order, and reports its progress from the start, with no total", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const fifo = `${ws.input}.fifo`
      expect(spawnSync("mkfifo", [fifo]).status).toBe(0)
      const requests = Array.from({ length: 50 }, (_, i) => request(`r${i}`))
      // The writer opens the FIFO when the run does, and writes it in pieces that split lines.
      const text = [...requests, "oops"].map((line) => `${line}\n`).join("")
      const writing = Effect.promise(() =>
        new Promise<void>((resolve, reject) => {
          const out = NodeFs.createWriteStream(fifo)
          out.on("error", reject)
          for (let at = 0; at < text.length; at += 997) out.write(text.slice(at, at + 997))
          out.end(resolve)
        })
      )
      const seen: Array<Batch.Progress> = []
      const onProgress: Batch.Options["onProgress"] = (p) => Effect.sync(() => seen.push(p))
      const [{ calls, summary }] = yield* Effect.all([runWith(ok, { ...ws, input: fifo, onProgress }), writing], {
        concurrency: 2
      })
      expect(calls).toBe(50)
      expect(summary).toMatchObject({ requests: 51, succeeded: 50, failed: 1, failures: { invalid_line: 1 } })
      const lines = yield* ws.readOutput
      expect(new Set(byCustomId(lines).keys())).toEqual(new Set([...requests.map((_, i) => `r${i}`), "line 51"]))
      // Reported from the start (while the first calls wait), then after every line.
      expect(seen).toHaveLength(52)
      expect(seen[0]).toEqual({ total: undefined, succeeded: 0, failed: 0, skipped: 0 })
      expect(seen.every((p) => p.total === undefined)).toBe(true)
      expect(seen[seen.length - 1]).toEqual({ total: undefined, succeeded: 50, failed: 1, skipped: 0 })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  // Line kinds of a generated input: a request (answered or failed by the double), a malformed
  // line, a reuse of an earlier id.
  const lineKind = FastCheck.constantFrom("ok", "fail", "malformed", "duplicate")

  it.scoped.prop(
    "writes exactly one result line per request line, across a crash and a resume",
    [FastCheck.array(lineKind, { minLength: 1, maxLength: 30 }), FastCheck.nat({ max: 40 })],
    ([kinds, keepBytes]) =>
      Effect.gen(function*() {
        const ws = yield* workspace
        const input = kinds.map((kind, i) =>
          kind === "malformed" ? `{"custom_id":"m-${i}"` : kind === "duplicate" && i > 0 ? request("r-0") : request(`r-${i}`, kind)
        )
        yield* ws.writeInput(input)
        const failing: Script = (r) =>
          lastUserText(r) === "fail" ? new ServerError({ status: 500, message: "x", retryAfter: Option.none() }) : "ok"

        yield* runWith(failing, ws)
        // Tear the file as a crash would, somewhere in its last line.
        const text = yield* ws.fs.readFileString(ws.output)
        yield* ws.fs.writeFileString(ws.output, text.slice(0, Math.max(0, text.length - 1 - keepBytes)))
        const { summary } = yield* runWith(failing, ws)

        const lines = yield* ws.readOutput
        expect(lines).toHaveLength(input.length)
        expect(summary.requests).toBe(input.length)
        expect(summary.succeeded + summary.failed + summary.skipped).toBe(input.length)
        const expected = new Map<string | null, number>()
        input.forEach((line) => {
          // A malformed line is not JSON: its result has no custom_id.
          const id = line.startsWith(`{"custom_id":"m-`) ? null : JSON.parse(line).custom_id
          expected.set(id, (expected.get(id) ?? 0) + 1)
        })
        expect(countBy(lines)).toEqual(expected)
      }).pipe(Effect.provide(NodeFileSystem.layer)),
    { fastCheck: { numRuns: 25 } }
  )
})

const routedLine = (customId: string, fields: { readonly task?: unknown; readonly body?: Record<string, unknown> }) =>
  JSON.stringify({
    custom_id: customId,
    ...(fields.task === undefined ? {} : { task: fields.task }),
    method: "POST",
    url: "/v1/chat/completions",
    body: { model: "auto", messages: [{ role: "user", content: customId }], ...fields.body }
  })

describe("Batch.run routing", () => {
  it.scoped("routes each line by its task: the table fills model (absent, empty or auto) and thinking, what the line sets wins", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([
        routedLine("classify", { task: "classification" }),
        routedLine("reason", { task: "reasoning", body: { model: "" } }),
        routedLine("named", { task: "extraction", body: { model: "my-model" } }),
        routedLine("plain", { body: { model: "deepseek-v4-flash" } }),
        // No model at all (JSON drops the undefined): routed by the task, else as the default task.
        routedLine("unnamed", { task: "reasoning", body: { model: undefined } }),
        routedLine("untasked", { body: { model: undefined } })
      ])
      const { sent, summary } = yield* runWith(ok, ws)
      const byMarker = new Map(sent.map((r) => [lastUserText(r), r]))
      expect(byMarker.get("classify")).toMatchObject({ model: "deepseek-v4-flash", thinking: { type: "disabled" } })
      expect(byMarker.get("reason")).toMatchObject({ model: "deepseek-v4-pro", thinking: { type: "enabled" } })
      expect(byMarker.get("named")).toMatchObject({ model: "my-model", thinking: { type: "disabled" } })
      // No task and a named model: sent untouched.
      expect(byMarker.get("plain")).toEqual({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "plain" }] })
      expect(byMarker.get("unnamed")).toMatchObject({ model: "deepseek-v4-pro", thinking: { type: "enabled" } })
      expect(byMarker.get("untasked")).toMatchObject({ model: "deepseek-v4-flash", thinking: { type: "disabled" } })
      // The task stays out of the body: nothing unknown is sent upstream.
      for (const request of sent) expect(request).not.toHaveProperty("task")
      const lines = byCustomId(yield* ws.readOutput)
      expect(lines.get("reason")?.response?.body.model).toBe("deepseek-v4-pro")
      expect(summary).toMatchObject({ succeeded: 6, failed: 0, routingWarnings: 0 })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("thinking on a simple task is counted as a warning, or refused as that line's error", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const thinking = { thinking: { type: "enabled" } }
      yield* ws.writeInput([routedLine("think", { task: "classification", body: thinking }), routedLine("fine", { task: "chat" })])

      const warned = yield* runWith(ok, ws)
      expect(warned.calls).toBe(2)
      expect(warned.summary).toMatchObject({ succeeded: 2, routingWarnings: 1 })

      yield* ws.fs.remove(ws.output)
      const refused = yield* runWith(ok, ws, { router: Router.layer({ thinkingOnSimpleTask: "refuse" }) })
      expect(refused.calls).toBe(1)
      expect(refused.sent.map(lastUserText)).toEqual(["fine"])
      const line = byCustomId(yield* ws.readOutput).get("think")
      expect(line?.error).toEqual({
        code: "RoutingRefused",
        message: `thinking is enabled on deepseek-v4-flash for the simple task "classification"`
      })
      expect(line?.response).toBeNull()
      expect(refused.summary).toMatchObject({ succeeded: 1, failed: 1, failures: { RoutingRefused: 1 }, routingWarnings: 0 })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a task that is not one of the router's is a malformed line, never sent", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([routedLine("poem", { task: "poetry" }), routedLine("number", { task: 7 }), routedLine("good", { task: "chat" })])
      const { calls, summary } = yield* runWith(ok, ws)
      expect(calls).toBe(1)
      const lines = byCustomId(yield* ws.readOutput)
      for (const id of ["poem", "number"]) {
        expect(lines.get(id)?.error?.code, id).toBe("invalid_line")
        expect(lines.get(id)?.error?.message, id).toContain("task")
      }
      expect(lines.get("poem")?.error?.message).toContain(`"poetry"`)
      expect(summary).toMatchObject({ succeeded: 1, failed: 2, failures: { invalid_line: 2 } })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a misspelt or misplaced task or deadlines is a malformed line naming it, not a line routed to the default task", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const misspelt = (id: string, field: string) => JSON.stringify({ ...JSON.parse(routedLine(id, {})), [field]: "reasoning" })
      yield* ws.writeInput([
        misspelt("Task", "Task"),
        misspelt("tasks", "tasks"),
        JSON.stringify({ ...JSON.parse(routedLine("deadline", {})), deadline: { total: "1 minute" } }),
        routedLine("in-body", { body: { task: "reasoning" } }),
        routedLine("deadlines-in-body", { body: { deadlines: { total: "1 minute" } } }),
        routedLine("good", { task: "reasoning" })
      ])
      const { calls, summary } = yield* runWith(ok, ws)
      expect(calls).toBe(1)
      const lines = byCustomId(yield* ws.readOutput)
      expect(lines.get("Task")?.error).toMatchObject({ code: "invalid_line", message: `invalid batch request: Task: is unexpected, expected: "custom_id" | "task" | "deadlines" | "method" | "url" | "body"` })
      for (const [id, field] of [["tasks", "tasks"], ["deadline", "deadline"]]) expect(lines.get(id!)?.error?.message, id).toMatch(new RegExp(`^invalid batch request: ${field}: is unexpected`))
      expect(lines.get("in-body")?.error?.message).toBe("invalid batch request: body.task: belongs beside body, at the line's top level")
      expect(lines.get("deadlines-in-body")?.error?.message).toBe("invalid batch request: body.deadlines: belongs beside body, at the line's top level")
      expect(summary).toMatchObject({ succeeded: 1, failed: 5, failures: { invalid_line: 5 } })
    }).pipe(Effect.provide(NodeFileSystem.layer)))
})

describe("Batch summary", () => {
  /** A run over two accounts of the double, on a ledger that already holds an earlier attempt. */
  const ledgerRun = Effect.gen(function*() {
    const ws = yield* workspace
    yield* ws.writeInput([request("a-1"), request("a-2 retried"), request("b-1"), request("b-2")])
    const ledger = yield* CostLedger.make({ pricing: flatPricing })
    yield* ledger.record({
      account: "alpha",
      model: "deepseek-v4-flash",
      usage: wire.usage({ promptTokens: 1000, completionTokens: 1000 }),
      disposition: "kept"
    })
    const limited: Script = (r) =>
      lastUserText(r) === "b-2" ? new RateLimited({ message: "too many requests", retryAfter: Option.none() }) : "ok"
    const { summary } = yield* runWith(limited, ws, { ledger: Layer.succeed(CostLedger.CostLedger, ledger) })
    return { ws, summary }
  })

  it.scoped("takes tokens and cost from the ledger over the run only, discarded attempts included, per account", () =>
    Effect.gen(function*() {
      const { summary } = yield* ledgerRun
      // Per answer 10 prompt (4 hit), 5 completion (2 reasoning): 2.2512e-6 USD; the discarded
      // attempt of "a-2 retried" billed 10 prompt (all miss) and 3 completion: 2.24e-6 USD.
      expect(summary).toMatchObject({
        requests: 4,
        succeeded: 3,
        failed: 1,
        rateLimited: 1,
        retries: 1,
        failedAttempts: 2,
        spend: {
          attempts: 5,
          answered: 3,
          tokens: { prompt: 40, completion: 18, cacheHit: 12, cacheMiss: 28, reasoning: 6 },
          costUsd: 8.9936e-6,
          // The attempt thrown away before "a-2 retried" was answered (b-2's 429 was its answer).
          retryTax: { attempts: 1, tokens: 13, costUsd: 2.24e-6 },
          truncated: 0,
          truncationRate: 0,
          reasoningShare: 6 / 18
        }
      })
      expect(Object.keys(summary.accounts).sort()).toEqual(["alpha", "beta"])
      expect(summary.accounts["alpha"]).toMatchObject({
        attempts: 3,
        answered: 2,
        tokens: { prompt: 30, completion: 13, cacheHit: 8, reasoning: 4 },
        costUsd: 6.7424e-6,
        retryTax: { attempts: 1, tokens: 13 },
        status: undefined
      })
      // b-2 got a 429: an attempt that billed nothing.
      expect(summary.accounts["beta"]).toMatchObject({
        attempts: 2,
        answered: 1,
        tokens: { prompt: 10, completion: 5, cacheHit: 4, reasoning: 2 },
        costUsd: 2.2512e-6,
        retryTax: { attempts: 0 }
      })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("writes the summary as JSON with the run's and each account's figures", () =>
    Effect.gen(function*() {
      const { summary, ws } = yield* ledgerRun
      const path = `${ws.output}.summary.json`
      yield* Batch.writeSummary(path, summary)
      const json = JSON.parse(yield* ws.fs.readFileString(path))
      expect(json).toEqual(Batch.toJson(summary))
      expect(json).toMatchObject({
        requests: 4,
        succeeded: 3,
        from_cache: 0,
        failed: 1,
        skipped: 0,
        failures: { RateLimited: 1 },
        attempts: 5,
        answered: 3,
        failed_attempts: 2,
        rate_limited: 1,
        retries: 1,
        prompt_tokens: 40,
        completion_tokens: 18,
        cache_hit_tokens: 12,
        cache_miss_tokens: 28,
        reasoning_tokens: 6,
        cost_usd: 8.9936e-6,
        unpriced_attempts: 0,
        retry_tax: { attempts: 1, tokens: 13, cost_usd: 2.24e-6 },
        truncated: 0,
        truncation_rate: 0,
        reasoning_share: 6 / 18,
        routing_warnings: 0,
        accounts: {
          alpha: { attempts: 3, answered: 2, prompt_tokens: 30, completion_tokens: 13, cost_usd: 6.7424e-6 },
          beta: { attempts: 2, answered: 1, prompt_tokens: 10, completion_tokens: 5, cost_usd: 2.2512e-6 }
        }
      })
      expect(json.elapsed_ms).toBeGreaterThanOrEqual(0)
      const unwritable = yield* Effect.flip(Batch.writeSummary(`${ws.output}/no/such/dir.json`, summary))
      expect(unwritable).toMatchObject({ _tag: "BatchError", file: "summary" })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("replaces the summary whole: a full disk leaves the previous one as it was; a link and the file's mode are kept", () =>
    Effect.gen(function*() {
      const { summary, ws } = yield* ledgerRun
      const target = `${ws.output}.summary.json`
      const link = `${ws.output}.summary-link.json`
      const previous = { ...summary, requests: 1 }
      yield* Batch.writeSummary(target, previous)
      yield* ws.fs.chmod(target, 0o640)
      yield* ws.fs.symlink(target, link)
      const written = JSON.stringify(Batch.toJson(previous), null, 2)
      const full = yield* Effect.flip(Batch.writeSummary(link, summary).pipe(Effect.provide(layerFullDisk([target], 100))))
      expect(full.message).toContain("ENOSPC")
      expect(yield* ws.fs.readFileString(target)).toBe(`${written}\n`)
      yield* Batch.writeSummary(link, summary)
      expect(JSON.parse(yield* ws.fs.readFileString(target))).toEqual(Batch.toJson(summary))
      expect(yield* ws.fs.readLink(link)).toBe(target)
      expect((yield* ws.fs.stat(target)).mode & 0o777).toBe(0o640)
      // Nothing is left beside it.
      const directory = ws.output.slice(0, ws.output.lastIndexOf("/"))
      expect((yield* ws.fs.readDirectory(directory)).filter((name) => name.includes("summary")).sort())
        .toEqual(["output.jsonl.summary-link.json", "output.jsonl.summary.json"])
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("with an AccountPool, lists every account with its state, used or not", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a-1"), request("b-1")])
      const status = (name: string, fallback: boolean, calls: number): AccountPool.AccountStatus => ({
        name,
        provider: fallback ? "openai-compatible" : "deepseek",
        fallback,
        state: name === "beta" ? "out_of_balance" : "serving",
        // An account has a lane per model it was called for, none before its first call.
        limit: calls === 0 ? 0 : 8,
        inFlight: 0,
        models: calls === 0
          ? []
          : name === "alpha"
          ? [
            { model: "deepseek-v4-flash", limit: 5, inFlight: 0, queued: 0, rateLimited: 3, costUsd: 0.002 },
            { model: "deepseek-v4-pro", limit: 3, inFlight: 0, queued: 0, rateLimited: 0, costUsd: 0.001 }
          ]
          : [{ model: "deepseek-v4-flash", limit: 8, inFlight: 0, queued: 0, rateLimited: 0, costUsd: 0 }],
        usableKeys: name === "beta" ? 1 : 2,
        restingKeys: name === "beta" ? ["key#2"] : [],
        calls,
        succeeded: calls,
        failed: 0,
        rateLimited: name === "alpha" ? 3 : 0,
        retries: name === "alpha" ? 3 : 0,
        // Said only where the account is not serving at the end.
        lastFailure: calls === 0 ? undefined : name === "beta" ? "InsufficientBalance: HTTP 402" : "RateLimited: HTTP 429",
        reachable: true
      })
      const statuses = [status("alpha", false, 1), status("beta", false, 1), { ...status("gamma", true, 0), state: "unreachable" as const, reachable: false }]
      const { calls, layer } = yield* double(ok)
      const stack = withPoolDouble(layer, { snapshot: Effect.succeed(statuses), unreachable: Effect.succeed([]) })
      const summary = yield* Batch.run(ws).pipe(Effect.provide(stack))
      expect(yield* Ref.get(calls)).toBe(2)
      expect(Object.keys(summary.accounts)).toEqual(["alpha", "beta", "gamma"])
      expect(summary.accounts["gamma"]).toMatchObject({ attempts: 0, answered: 0, costUsd: 0, status: statuses[2] })
      const json = Batch.toJson(summary)
      expect(json.accounts["beta"]).toMatchObject({
        attempts: 1,
        prompt_tokens: 10,
        provider: "deepseek",
        fallback: false,
        state: "out_of_balance",
        limit: 8,
        in_flight: 0,
        usable_keys: 1,
        resting_keys: ["key#2"],
        calls: 1,
        succeeded: 1,
        failed: 0,
        rate_limited: 0,
        retries: 0,
        last_failure: "InsufficientBalance: HTTP 402"
      })
      expect(json.accounts["alpha"]).toMatchObject({
        rate_limited: 3,
        retries: 3,
        models: {
          "deepseek-v4-flash": { limit: 5, rate_limited: 3, cost_usd: 0.002 },
          "deepseek-v4-pro": { limit: 3, rate_limited: 0, cost_usd: 0.001 }
        }
      })
      expect(json.accounts["gamma"]).toMatchObject({ attempts: 0, prompt_tokens: 0, fallback: true, calls: 0, last_failure: null, reachable: false })
      const text = Batch.formatSummary(summary)
      expect(text).toContain("  alpha: deepseek, serving, limit 8 (deepseek-v4-flash 5, deepseek-v4-pro 3), 2 usable keys; ")
      expect(text).toContain(
        "  beta: deepseek, out of balance, limit 8, 1 usable key (key#2 rejected, resting), last failure: InsufficientBalance: HTTP 402; 1 answered, 1 attempt, 15 tokens"
      )
      expect(text).not.toContain("RateLimited: HTTP 429")
      expect(text).toContain(
        "  gamma: openai-compatible fallback, cannot connect to its base URL, not called, 2 usable keys; 0 answered, 0 attempts, 0 tokens, $0.000000"
      )
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("says the ledger's budget: what is left, or what the calls under way when it was spent cost past it", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a-1"), request("a-2"), request("b-1"), request("b-2")])
      // Each answer costs 2.2512e-6 USD: the four cost 9.0048e-6, 4.0048e-6 past a budget of 5e-6.
      const run = (budgetUsd: number) =>
        runWith(ok, { input: ws.input, output: `${ws.output}.${budgetUsd}` }, { ledger: CostLedger.layer({ pricing: flatPricing, budgetUsd }) })

      const { summary: over } = yield* run(5e-6)
      expect(over.budget).toEqual({ budgetUsd: 5e-6, remainingUsd: 0, overUsd: 4.0048e-6 })
      expect(Batch.toJson(over).budget).toEqual({ budget_usd: 5e-6, remaining_usd: 0, over_usd: 4.0048e-6 })
      expect(Batch.formatSummary(over)).toContain(
        "budget:    $0.000005, spent: it refuses new calls; the calls under way when it was spent went $0.000004 past it (answered, and billed)"
      )

      const { summary: within } = yield* run(1)
      expect(Batch.formatSummary(within)).toContain("budget:    $1.000000, $0.999991 left")
      expect(Batch.toJson(within).budget).toEqual({ budget_usd: 1, remaining_usd: 0.9999909952, over_usd: 0 })

      const { summary: none } = yield* runWith(ok, { input: ws.input, output: `${ws.output}.none` })
      expect(none.budget).toBeUndefined()
      expect(Batch.toJson(none).budget).toBeNull()
      expect(Batch.formatSummary(none)).not.toContain("budget:")
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("formats a summary for people, with cost and a line per account", () =>
    Effect.gen(function*() {
      const { summary } = yield* ledgerRun
      const text = Batch.formatSummary(summary)
      expect(text).toContain("4 (3 succeeded, 1 failed, 0 skipped")
      expect(text).toContain("failures:  RateLimited 1")
      expect(text).toContain("upstream:  5 attempts, 1 429s met, 1 retry, 2 failed attempts")
      expect(text).toContain("tokens:    40 prompt (12 cache hit), 18 completion (6 reasoning)")
      expect(text).toContain("cost:      $0.000009; retry tax $0.000002 (1 attempt, 13 tokens); 0 truncated (0.0%); reasoning 33.3% of output")
      expect(text).toContain("  alpha: 2 answered, 3 attempts, 43 tokens, $0.000007")
      expect(text).toContain("  beta: 1 answered, 2 attempts, 15 tokens, $0.000002")
      expect(text).not.toContain("routing:")
      expect(text).toContain("elapsed:   0ms") // the TestClock never moved
    }).pipe(Effect.provide(NodeFileSystem.layer)))
})

// End to end: the real resilient stack over HTTP against the loopback simulator, on real time.
describe("Batch.run against the simulator", () => {
  it.live("answers a few hundred requests right through faults and 429s, and a rerun sends nothing", () =>
    Effect.gen(function*() {
      const report = yield* Demo.run({ requests: 200 })
      expect(report.problems).toEqual([])
      expect(report.first).toMatchObject({ requests: 200, succeeded: 200, failed: 0, skipped: 0 })
      expect(report.first.retries).toBeGreaterThan(0)
      expect(report.first.spend.tokens.prompt).toBeGreaterThan(0)
      expect(report.first.spend.costUsd).toBeGreaterThan(0)
      expect(Object.keys(report.first.accounts)).toEqual(["demo"])
      expect(Object.values(report.simulator.faults).reduce((a, b) => a + (b ?? 0), 0)).toBeGreaterThan(0)
      expect(report.resumed).toMatchObject({ requests: 200, succeeded: 0, failed: 0, skipped: 200 })
      expect(report.requestsOnResume).toBe(0)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("loses nothing to a crash mid-run: the rerun sends only what was not written", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const simulator = yield* Simulator.make(Demo.simulatorOptions)
      const ids = Array.from({ length: 150 }, (_, i) => `c-${i}`)
      yield* ws.writeInput(ids.map((id) => request(id, `marker ${id}`)))
      const stack = Demo.clientStack([Demo.demoAccount(simulator.baseUrl)])

      // The "crash": the run is interrupted once 60 lines are written.
      const crashed = yield* Deferred.make<void>()
      const crashing = Batch.run({
        ...ws,
        onProgress: (p) => p.succeeded + p.failed >= 60 ? Deferred.succeed(crashed, undefined) : Effect.void
      }).pipe(Effect.provide(stack))
      yield* Effect.raceFirst(Effect.asVoid(crashing), Deferred.await(crashed))
      const written = (yield* ws.readOutput).length
      expect(written).toBeGreaterThanOrEqual(60)
      expect(written).toBeLessThan(150)

      const before = yield* simulator.stats
      const resumed = yield* Batch.run(ws).pipe(Effect.provide(stack))
      expect(resumed).toMatchObject({ requests: 150, succeeded: 150 - written, failed: 0, skipped: written })
      const after = yield* simulator.stats
      expect(after.completed - before.completed).toBe(150 - written)

      const lines = yield* ws.readOutput
      expect(lines).toHaveLength(150)
      expect([...countBy(lines).values()].every((n) => n === 1)).toBe(true)
      for (const line of lines) {
        expect(line.error).toBeNull()
        expect(line.response?.body.choices[0].message.content).toBe(`echo:marker ${line.custom_id}`)
      }
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("sends identical deterministic lines once, stream lines too: the response cache answers the repeats", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const simulator = yield* Simulator.make({ queueDelay: "1 millis" })
      const line = (customId: string, temperature: number, stream = false, content = "same question") =>
        JSON.stringify({
          custom_id: customId,
          method: "POST",
          url: "/v1/chat/completions",
          body: { model: "deepseek-v4-flash", temperature, messages: [{ role: "user", content }], ...(stream ? { stream } : {}) }
        })
      // The repeat is answered by the first line's call: joined while in flight, or stored after.
      // A stream line's result is a folded completion, so it is answered the same way.
      yield* ws.writeInput([
        line("first", 0),
        line("repeat", 0),
        line("streamed-repeat", 0, true),
        line("warm", 0.7),
        line("warm-again", 0.7),
        line("stream", 0, true, "streamed question"),
        line("stream-again", 0, true, "streamed question")
      ])
      const summary = yield* Batch.run(ws).pipe(Effect.provide(Demo.clientStack([Demo.demoAccount(simulator.baseUrl)])))
      // The repeat, the streamed repeat and stream-again: answered without a request of their own.
      expect(summary).toMatchObject({ requests: 7, succeeded: 7, fromCache: 3, failed: 0 })
      expect(Batch.formatSummary(summary)).toContain("requests:  7 (7 succeeded, 3 of them from the response cache, 0 failed")
      expect(Batch.toJson(summary)).toMatchObject({ succeeded: 7, from_cache: 3 })
      const contents = new Map((yield* ws.readOutput).map((l) => [l.custom_id, l.response?.body.choices[0].message.content]))
      expect(Object.fromEntries(contents)).toEqual({
        "first": "echo:same question",
        "repeat": "echo:same question",
        "streamed-repeat": "echo:same question",
        "warm": "echo:same question",
        "warm-again": "echo:same question",
        "stream": "echo:streamed question",
        "stream-again": "echo:streamed question"
      })
      // first + warm + warm-again + stream: temperature 0.7 is not deterministic, so both warm lines went out.
      expect((yield* simulator.stats).completed).toBe(4)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))
})

describe("Batch.run input decoding", () => {
  it.scoped("a line that is not valid UTF-8 becomes an error line, never sent; the lines around it are", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const text = (line: string) => new TextEncoder().encode(`${line}\n`)
      // A lone continuation byte and a truncated two-byte sequence, inside an otherwise valid line.
      const bad = Uint8Array.from([...new TextEncoder().encode(request("bad", "caf")), 0xc3, 0x28, 0x80, 0x0a])
      const bytes = [text(request("before")), bad, text(request("after", "naïve café ✓"))]
      yield* ws.fs.writeFile(ws.input, Uint8Array.from(bytes.flatMap((b) => [...b])))
      const { calls, sent, summary } = yield* runWith(ok, ws)
      expect(calls).toBe(2)
      expect(sent.map(lastUserText).sort()).toEqual(["before", "naïve café ✓"])
      const lines = byCustomId(yield* ws.readOutput)
      expect(lines.get("line 2")?.error).toEqual({ code: "invalid_line", message: "line is not valid UTF-8", line: 2 })
      expect(lines.get("after")?.response?.body.choices[0].message.content).toBe("echo:naïve café ✓")
      expect(summary).toMatchObject({ requests: 3, succeeded: 2, failed: 1, failures: { invalid_line: 1 } })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a line longer than 64 MiB (a file without line ends) becomes an error line, never sent; the lines around it are", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const huge = request("huge", "x".repeat(64 * 1024 * 1024))
      yield* ws.writeInput([request("before"), huge, request("after")])
      const { calls, summary } = yield* runWith(ok, ws)
      expect(calls).toBe(2)
      const lines = byCustomId(yield* ws.readOutput)
      expect(lines.get("line 2")?.error).toEqual({ code: "invalid_line", message: "line is longer than 64 MiB", line: 2 })
      expect(lines.get("after")?.error).toBeNull()
      expect(summary).toMatchObject({ requests: 3, succeeded: 2, failed: 1, failures: { invalid_line: 1 } })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.effect.prop(
    "splits any chunking of the bytes into the same lines, each decoded fatally, each longer than the limit unread",
    [
      FastCheck.array(
        FastCheck.oneof(
          FastCheck.string({ unit: "grapheme", maxLength: 12 }).map((t) => new TextEncoder().encode(t)),
          FastCheck.uint8Array({ maxLength: 6 }).filter((b) => !b.includes(0x0a)),
          FastCheck.constant(Uint8Array.of(0x0d))
        ),
        { maxLength: 12 }
      ),
      FastCheck.array(FastCheck.integer({ min: 1, max: 7 }), { minLength: 1, maxLength: 8 }),
      FastCheck.integer({ min: 0, max: 40 })
    ],
    ([lineBytes, cuts, maxBytes]) =>
      Effect.gen(function*() {
        const noNewline = lineBytes.map((b) => b.filter((x) => x !== 0x0a))
        const all = Uint8Array.from(noNewline.flatMap((b) => [...b, 0x0a]))
        const reads: Array<Uint8Array> = []
        for (let at = 0, i = 0; at < all.length; i++) {
          const size = cuts[i % cuts.length]!
          reads.push(all.slice(at, at + size))
          at += size
        }
        const split = yield* Stream.runCollect(Files.splitLines(Stream.fromIterable(reads), maxBytes))
        const fatal = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })
        const expected = noNewline.flatMap((bytes, i): Array<Files.NumberedLine> => {
          const lineNumber = i + 1
          if (bytes.length > maxBytes) return [{ text: undefined, lineNumber, unreadable: "too-long" }]
          let text: string
          try {
            text = fatal.decode(bytes).replace(/\r$/, "")
            text = text.replace(/^\uFEFF/, "")
          } catch {
            // Bad only in a character cut at the end: the text before it comes along.
            try {
              const beforeCut = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes, { stream: true })
              return [{ text: undefined, lineNumber, unreadable: "invalid-utf8", beforeCut: beforeCut.replace(/^\uFEFF/, "") }]
            } catch {
              return [{ text: undefined, lineNumber, unreadable: "invalid-utf8" }]
            }
          }
          // Blank in JSON's sense (space, tab, CR), not trim()'s.
          return /^[ \t\r]*$/.test(text) ? [] : [{ text, lineNumber }]
        })
        expect([...split]).toEqual(expected)
      })
  )
})

describe("Batch.run stream lines", () => {
  const streamLine = (customId: string, body: Record<string, unknown> = {}) =>
    JSON.stringify({
      custom_id: customId,
      method: "POST",
      url: "/v1/chat/completions",
      body: { model: "deepseek-v4-flash", messages: [{ role: "user", content: customId }], stream: true, ...body }
    })

  it.scoped("sends a line with stream: true as a stream and writes the folded completion, as a non-stream answer looks", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([streamLine("s-1", { thinking: { type: "enabled" } }), request("plain")])
      const { sent, summary } = yield* runWith(ok, ws)
      const lines = byCustomId(yield* ws.readOutput)
      const streamed = sent.find((r) => lastUserText(r) === "s-1")!
      expect(lines.get("s-1")?.response).toEqual({ status_code: 200, request_id: "cmpl-s-1", body: answerOf(streamed) })
      expect(lines.get("s-1")?.response?.body.choices[0].message.reasoning_content).toBe("think:s-1")
      expect(summary).toMatchObject({ succeeded: 2, failed: 0 })
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a stream cut mid-way gives an error line saying how much arrived, with the partial output", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([streamLine("cut-short-answer")])
      const { summary } = yield* runWith(ok, ws)
      const line = byCustomId(yield* ws.readOutput).get("cut-short-answer")
      expect(line?.response).toBeNull()
      expect(line?.error?.code).toBe("StreamTruncated")
      const partial = (line?.error as any).partial
      expect(partial).toMatchObject({ finish_reason: null, usage: null, reasoning_content: null })
      expect(partial.chunks).toBeGreaterThan(1)
      expect("echo:cut-short-answer".startsWith(partial.content)).toBe(true)
      expect(partial.content.length).toBeGreaterThan(0)
      expect(line?.error?.message).toContain(`cut after ${partial.chunks} chunks (${partial.content.length} characters of content`)
      expect(summary).toMatchObject({ succeeded: 0, failed: 1, failures: { StreamTruncated: 1 } })
    }).pipe(Effect.provide(NodeFileSystem.layer)))
})

describe("Batch.run output file", () => {
  it.scoped("a second run on the same output is refused at once, naming the holder, and sends nothing", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput(["a", "b"].map((id) => request(id)))
      const release = yield* Deferred.make<void>()
      const first = yield* Effect.fork(runWith(ok, ws, { before: () => Deferred.await(release) }))
      const lockPath = `${ws.output}.lock`
      yield* waitUntil(ws.fs.exists(lockPath))
      // Another spelling of the same file: a symlink to it.
      const alias = `${ws.output}.alias`
      yield* ws.fs.symlink(ws.output, alias)
      const second = yield* Effect.flip(runWith(ok, { input: ws.input, output: alias }))
      expect(second).toMatchObject({ _tag: "OutputLocked", holder: { pid: process.pid, host: hostname() } })
      expect(second.message).toContain(`pid ${process.pid} on host ${hostname()}`)
      yield* Deferred.succeed(release, undefined)
      const done = yield* Fiber.join(first)
      expect(done.summary).toMatchObject({ succeeded: 2 })
      expect(yield* ws.fs.exists(lockPath)).toBe(false)
      expect(yield* ws.readOutput).toHaveLength(2)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("takes over the lock of a dead process of this host, respects one of another host, and removes its own", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a")])
      const lockPath = `${ws.output}.lock`
      const lock = (pid: number, host: string) => ws.fs.writeFileString(lockPath, JSON.stringify({ pid, host, since: "2020-01-01T00:00:00.000Z" }))
      yield* lock(deadPid(), hostname())
      const taken = yield* runWith(ok, ws)
      expect(taken.calls).toBe(1)
      expect(yield* ws.fs.exists(lockPath)).toBe(false)
      // One naming this process's pid that this process does not hold: a former process's, as a
      // container restarted after a crash runs with the pid it had (1, under Docker).
      yield* ws.fs.remove(ws.output)
      yield* lock(process.pid, hostname())
      const logs: Array<Logged> = []
      expect((yield* capturingLogs(logs)(runWith(ok, ws))).calls).toBe(1)
      expect(yield* ws.fs.exists(lockPath)).toBe(false)
      expect(logs.map((log) => log.message)).toContain(
        `Batch: took over the lock ${lockPath} left by a former process with this one's pid ${process.pid} on ${hostname()} (since 2020-01-01T00:00:00.000Z)`
      )

      yield* lock(process.pid, "another-host")
      const refused = yield* Effect.flip(runWith(ok, ws))
      expect(refused).toMatchObject({ _tag: "OutputLocked", lockPath, holder: { host: "another-host" } })
      yield* ws.fs.writeFileString(lockPath, "")
      const unnamed = yield* Effect.flip(runWith(ok, ws))
      expect(unnamed.message).toContain("a lock file that names no holder")
      expect(yield* ws.fs.readFileString(lockPath)).toBe("")

      // A run that fails after taking the lock leaves none.
      yield* ws.fs.remove(lockPath)
      yield* ws.fs.writeFileString(ws.output, "not a result\nnor this\n")
      yield* Effect.flip(runWith(ok, ws))
      expect(yield* ws.fs.exists(lockPath)).toBe(false)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a lock whose write fails (a full disk) is not left behind to refuse the next run", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a")])
      const lockPath = `${ws.output}.lock`
      const full = yield* Effect.flip(runWith(ok, ws).pipe(Effect.provide(layerFullDisk([lockPath], 0))))
      expect(full.message).toContain("ENOSPC")
      const directory = ws.output.slice(0, ws.output.lastIndexOf("/"))
      expect(yield* ws.fs.readDirectory(directory)).toEqual(["input.jsonl"])
      expect((yield* runWith(ok, ws)).calls).toBe(1)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a lock that cannot be created beside the output (a directory not writable, a read-only file system) says why, and sends nothing", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a")])
      const lockPath = `${ws.output}.lock`
      const directory = ws.output.slice(0, ws.output.lastIndexOf("/"))
      const refusing = (code: string, reason: "PermissionDenied" | "Unknown") =>
        Layer.effect(
          FileSystem.FileSystem,
          Effect.map(FileSystem.FileSystem, (fs) => ({
            ...fs,
            writeFileString: (path: string, text: string, options?: FileSystem.WriteFileStringOptions) =>
              path.startsWith(lockPath)
                ? Effect.fail(
                  new SystemError({ reason, module: "FileSystem", method: "writeFile", pathOrDescriptor: path, description: `${code}, open '${path}'` })
                )
                : fs.writeFileString(path, text, options)
          }))
        )
      const messageWith = (code: string, reason: "PermissionDenied" | "Unknown") =>
        Effect.map(Effect.flip(runWith(ok, ws).pipe(Effect.provide(refusing(code, reason)))), (error) => error.message)
      expect(yield* messageWith("EACCES: permission denied", "PermissionDenied")).toBe(
        `cannot take the lock ${lockPath}: this user may not create files in ${directory}; nothing was sent`
      )
      expect(yield* messageWith("EROFS: read-only file system", "Unknown")).toBe(
        `cannot take the lock ${lockPath}: ${directory} is on a read-only file system; nothing was sent`
      )
      const other = yield* messageWith("EIO: i/o error", "Unknown")
      expect(other.startsWith(`cannot take the lock ${lockPath}: EIO: i/o error, open '${lockPath}`)).toBe(true)
      expect(other.endsWith("'; nothing was sent")).toBe(true)
      expect(yield* ws.fs.exists(ws.output)).toBe(false)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("compacts through a symlink: the link stays a link to the compacted file, whose mode is kept", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput(["a", "b", "c"].map((id) => request(id)))
      const failB: Script = (r) => lastUserText(r) === "b" ? new ServerError({ status: 500, message: "x", retryAfter: Option.none() }) : "ok"
      const real = `${ws.output}.real`
      const link = `${ws.output}.link`
      yield* ws.fs.symlink(real, link) // dangling until the first run writes it
      yield* runWith(failB, { input: ws.input, output: link })
      yield* ws.fs.chmod(real, 0o640)
      const { calls } = yield* runWith(ok, { input: ws.input, output: link })
      expect(calls).toBe(1)
      expect(yield* ws.fs.readLink(link)).toBe(real)
      expect(Number((yield* ws.fs.stat(real)).mode) & 0o777).toBe(0o640)
      const lines = (yield* ws.fs.readFileString(real)).trim().split("\n").map((l) => JSON.parse(l) as Parsed)
      expect(lines.map((l) => l.custom_id).sort()).toEqual(["a", "b", "c"])
      expect(lines.every((l) => l.error === null)).toBe(true)
      expect(yield* ws.fs.exists(`${real}.lock`)).toBe(false)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("refuses a read-only output before sending anything, and leaves it as it was", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a")])
      yield* ws.fs.writeFileString(ws.output, "")
      yield* ws.fs.chmod(ws.output, 0o444)
      const result = yield* Effect.either(runWith(ok, ws))
      expect(result._tag).toBe("Left")
      const error = (result as any).left
      expect(error).toMatchObject({ _tag: "BatchError", file: "output" })
      expect(error.message).toBe(
        `refusing to write the output file ${ws.output}: it is read-only (mode 0444); make it writable or choose another output; nothing was sent`
      )
      expect(Number((yield* ws.fs.stat(ws.output)).mode) & 0o777).toBe(0o444)
      expect(yield* ws.fs.exists(`${ws.output}.lock`)).toBe(false)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("stops sending when the output cannot be written (a full disk), and a resume completes it", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const ids = Array.from({ length: 200 }, (_, i) => `line-${i}`)
      yield* ws.writeInput(ids.map((id) => request(id)))
      const result = yield* Effect.either(
        runWith(ok, { input: ws.input, output: ws.output, concurrency: 4 }).pipe(Effect.provide(layerFullDisk([ws.output], 4000)))
      )
      expect(result._tag).toBe("Left")
      const aborted = (result as any).left as Batch.BatchAborted
      expect(aborted._tag).toBe("BatchAborted")
      expect(aborted.error).toMatchObject({ _tag: "BatchError", file: "output" })
      expect(aborted.message).toContain(`cannot write output ${ws.output}: ENOSPC: no space left on device, write`)
      expect(aborted.summary).toMatchObject({ interrupted: true, abortedBy: "output", complete: false })
      // The summary says why it stopped, and that no drain ran: a full disk stops the run at once.
      const stopped = Batch.formatSummary(aborted.summary).split("\n").find((line) => line.startsWith("stopped:"))
      expect(stopped).toMatch(/^stopped: {3}the output could not be written: the run stopped; the lines not answered are not in the output \(a rerun sends them\)/)
      expect(stopped).not.toContain("drain")
      expect(Batch.toJson(aborted.summary)).toMatchObject({ interrupted: true, aborted_by: "output" })
      expect(aborted.unwritten).toBeGreaterThan(0)
      expect(aborted.message).toContain(`; ${aborted.unwritten} result`)
      // Nothing is sent once a write failed: what was in flight then, no more.
      expect(aborted.summary.spend.attempts).toBeLessThanOrEqual(aborted.summary.succeeded + aborted.unwritten + 4)
      expect(yield* ws.fs.exists(`${ws.output}.lock`)).toBe(false)

      const kept = (yield* ws.fs.readFileString(ws.output)).split("\n").filter((l) => {
        try {
          return JSON.parse(l) !== undefined
        } catch {
          return false
        }
      }).length
      // The summary counts the results in the file, a torn last one not among them.
      expect(aborted.summary.succeeded + aborted.summary.failed).toBe(kept)
      const resumed = yield* runWith(ok, ws)
      expect(resumed.calls).toBe(ids.length - kept)
      const lines = yield* ws.readOutput
      expect([...countBy(lines).values()].every((n) => n === 1)).toBe(true)
      expect(lines.map((l) => l.custom_id).sort()).toEqual([...ids].sort())
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.effect("a write that fails halfway counts the items it landed whole as written, and no other", () =>
    Effect.gen(function*() {
      const full = noSpace("write")
      const firstStarted = yield* Deferred.make<void>()
      const firstReleased = yield* Deferred.make<void>()
      let free = 10
      let writes = 0
      // A disk of 10 bytes whose first write waits until released: the items submitted meanwhile go in the next.
      const file = {
        write: (buffer: Uint8Array) =>
          Effect.zipRight(
            writes++ === 0 ? Effect.zipRight(Deferred.succeed(firstStarted, undefined), Deferred.await(firstReleased)) : Effect.void,
            Effect.suspend(() => {
              const fits = Math.min(free, buffer.length)
              free -= fits
              return fits === 0 ? Effect.fail(full) : Effect.succeed(FileSystem.Size(fits))
            })
          )
      } as unknown as FileSystem.File
      const written: Array<string> = []
      const append = Files.appender(file, (item: string) => `${item}\n`, (item) => Effect.sync(() => written.push(item)))
      const first = yield* Effect.fork(append("one"))
      yield* Deferred.await(firstStarted)
      yield* append("two")
      yield* append("three")
      yield* Deferred.succeed(firstReleased, undefined)
      expect(yield* Effect.flip(Fiber.join(first))).toBe(full)
      // "one\n" lands whole, then "two\n" whole and "th" of "three\n" in the one write that fails.
      expect(written).toEqual(["one", "two"])
    }))

  it.effect("a write that lands nothing without an error fails, rather than being retried for ever", () =>
    Effect.gen(function*() {
      let calls = 0
      const file = { fd: 7, write: () => Effect.sync(() => (calls++, FileSystem.Size(0))) } as unknown as FileSystem.File
      const error = yield* Effect.flip(Files.writeText(file, "a line\n"))
      expect(error).toMatchObject({ _tag: "SystemError", reason: "WriteZero", method: "write" })
      expect(calls).toBe(1)
    }))

  /** A workspace whose output answers a and b, and whose input asks for c too: a resume compacts the output. */
  const toResume = Effect.gen(function*() {
    const ws = yield* workspace
    yield* ws.writeInput(["a", "b"].map((id) => request(id)))
    yield* runWith(ok, ws)
    yield* ws.writeInput(["a", "b", "c"].map((id) => request(id)))
    return { ws, before: yield* ws.fs.readFileString(ws.output) }
  })

  it.scoped("an output that cannot be compacted (no room for its copy, a rename refused) says why and that nothing was sent, and is left as it was", () =>
    Effect.gen(function*() {
      const { before, ws } = yield* toResume
      const copy = `${ws.output}.compacting`
      const full = yield* Effect.flip(runWith(ok, ws).pipe(Effect.provide(layerFullDisk([copy], 10))))
      expect(full.message).toBe(
        `cannot compact output ${ws.output}: ENOSPC: no space left on device, write (its compacted copy is written beside it, ` +
          "then renamed over it: that needs about as much free space as the output takes); nothing was sent"
      )
      const renameRefused = Layer.effect(
        FileSystem.FileSystem,
        Effect.map(FileSystem.FileSystem, (fs) => ({
          ...fs,
          rename: (from: string, to: string) =>
            from === copy
              ? Effect.fail(
                new SystemError({
                  reason: "Unknown",
                  module: "FileSystem",
                  method: "rename",
                  pathOrDescriptor: from,
                  description: `EPERM: operation not permitted, rename '${from}' -> '${to}'`
                })
              )
              : fs.rename(from, to)
        }))
      )
      const sticky = yield* Effect.flip(runWith(ok, ws).pipe(Effect.provide(renameRefused)))
      expect(sticky.message).toBe(
        `cannot compact output ${ws.output}: EPERM: operation not permitted, rename '${copy}' -> '${ws.output}' (in a directory ` +
          "with the sticky bit, only the output's owner may replace it: run as its owner, or give another output); nothing was sent"
      )
      expect(yield* ws.fs.readFileString(ws.output)).toBe(before)
      expect(yield* ws.fs.exists(copy)).toBe(false)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a stop while the output is compacted ends the run at once, the output as it was and no temporary file", () =>
    Effect.gen(function*() {
      const { before, ws } = yield* toResume
      const reading = yield* Deferred.make<void>()
      const stop = yield* Deferred.make<void>()
      const run = yield* Effect.fork(
        runWith(ok, { ...ws, stop: Deferred.await(stop) }).pipe(Effect.provide(stallsAfterFirstRead(ws.output, reading)))
      )
      yield* Deferred.await(reading)
      expect(yield* ws.fs.exists(`${ws.output}.compacting`)).toBe(true)
      yield* TestClock.adjust("5 seconds")
      yield* Deferred.succeed(stop, undefined)
      const { calls, summary } = yield* Fiber.join(run)
      expect(calls).toBe(0)
      expect(summary).toMatchObject({ requests: 0, interrupted: true })
      // The run's time counts its compaction.
      expect(Batch.formatSummary(summary)).toContain("elapsed:   5s")
      expect(yield* ws.fs.readFileString(ws.output)).toBe(before)
      expect(yield* ws.fs.exists(`${ws.output}.compacting`)).toBe(false)
      expect(yield* ws.fs.exists(`${ws.output}.lock`)).toBe(false)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("compaction never writes through a symlink left at its temporary file, and the file it writes has the output's mode from the start", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput(["a", "b"].map((id) => request(id)))
      yield* runWith(ok, ws)
      yield* ws.fs.chmod(ws.output, 0o600)
      // Another user's link (or a killed run's file) where compaction writes.
      const victim = `${ws.output}.victim`
      yield* ws.fs.writeFileString(victim, "precious data")
      yield* ws.fs.symlink(victim, `${ws.output}.compacting`)
      yield* ws.writeInput(["a", "b", "c"].map((id) => request(id)))
      const [reading, resume] = [yield* Deferred.make<void>(), yield* Deferred.make<void>()]
      const run = yield* Effect.fork(runWith(ok, ws).pipe(Effect.provide(stallsAfterFirstRead(ws.output, reading, Deferred.await(resume)))))
      yield* Deferred.await(reading)
      expect(Number((yield* ws.fs.stat(`${ws.output}.compacting`)).mode) & 0o777).toBe(0o600)
      yield* Deferred.succeed(resume, undefined)
      expect((yield* Fiber.join(run)).calls).toBe(1)
      expect(yield* ws.fs.readFileString(victim)).toBe("precious data")
      expect(yield* Effect.either(ws.fs.readLink(ws.output))).toMatchObject({ _tag: "Left" })
      expect((yield* ws.readOutput).map((line) => line.custom_id).sort()).toEqual(["a", "b", "c"])
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("an input that is where the output is compacted is refused before anything is sent, and left as it was", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("a")])
      yield* runWith(ok, ws)
      const input = `${ws.output}.compacting`
      yield* ws.fs.writeFileString(input, request("b"))
      const refused = yield* Effect.flip(runWith(ok, { input, output: ws.output }))
      expect(refused).toMatchObject({ _tag: "BatchError", file: "input" })
      expect(refused.message).toBe(`the input file ${input} is where the output ${ws.output} is compacted, which a run replaces: rename it`)
      expect(yield* ws.fs.readFileString(input)).toBe(request("b"))
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("an input in UTF-16 (Windows PowerShell 5's >) is refused before anything is sent, saying how to save it", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      for (const [mark, encode] of [[[0xff, 0xfe], "utf16le"], [[0xfe, 0xff], "utf16be"]] as const) {
        const text = Buffer.from(request("a"), "utf16le")
        const bytes = encode === "utf16le" ? text : text.swap16()
        yield* ws.fs.writeFile(ws.input, new Uint8Array([...mark, ...bytes]))
        const refused = yield* Effect.flip(runWith(ok, ws))
        expect(refused).toMatchObject({ _tag: "BatchError", file: "input" })
        expect(refused.message).toBe(
          `the input file ${ws.input} is UTF-16 (its byte-order mark says so), not UTF-8: save it as UTF-8 (in PowerShell, Set-Content -Encoding utf8)`
        )
        expect(yield* ws.fs.exists(ws.output)).toBe(false)
      }
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("drains and writes the answers on the wire when the input cannot be read any more", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const ids = Array.from({ length: 50 }, (_, i) => `line-${i}`)
      yield* ws.writeInput(ids.map((id) => request(id)))
      const inFlight = yield* Deferred.make<void>()
      const result = yield* Effect.either(
        runWith(ok, { input: ws.input, output: ws.output }, { before: () => Deferred.await(inFlight) }).pipe(
          Effect.provide(unreadableAfter(ws.input, 10, Deferred.succeed(inFlight, undefined)))
        )
      )
      expect(result._tag).toBe("Left")
      const aborted = (result as any).left as Batch.BatchAborted
      expect(aborted.error).toMatchObject({ _tag: "BatchError", file: "input" })
      expect(aborted.message).toContain(`cannot read input ${ws.input}: EIO: i/o error, read`)
      expect(aborted.unwritten).toBe(0)
      // The ten lines read before the failure were on the wire: each was answered and written.
      const lines = yield* ws.readOutput
      expect(lines.map((l) => l.custom_id).sort()).toEqual(ids.slice(0, 10).sort())
      expect(aborted.summary).toMatchObject({ succeeded: 10, interrupted: true, abortedBy: "input" })
      expect(Batch.formatSummary(aborted.summary)).toContain(
        "stopped:   the input could no longer be read: the run stopped; the lines not answered are not in the output (a rerun sends them)"
      )
    }).pipe(Effect.provide(NodeFileSystem.layer)))
})

/** Reads of `path` stall after the first (`reading` told), until `resume` if given, else for good. */
const stallsAfterFirstRead = (path: string, reading: Deferred.Deferred<void>, resume: Effect.Effect<void> = Effect.never) =>
  Layer.effect(
    FileSystem.FileSystem,
    Effect.map(FileSystem.FileSystem, (fs) => ({
      ...fs,
      stream: (at, options) =>
        at !== path ? fs.stream(at, options) : Stream.take(fs.stream(at, options), 1).pipe(
          Stream.concat(Stream.drain(Stream.fromEffect(Effect.zipRight(Deferred.succeed(reading, undefined), resume)))),
          Stream.concat(Stream.drop(fs.stream(at, options), 1))
        )
    }))
  )

/**
 * A file system whose reading of `path` fails with EIO after `lines` lines (the first pass of a
 * line count aside), running `failed` then.
 */
const unreadableAfter = (path: string, lines: number, failed: Effect.Effect<unknown>) =>
  Layer.effect(
    FileSystem.FileSystem,
    Effect.map(FileSystem.FileSystem, (fs) => ({
      ...fs,
      stream: (at, options) =>
        at !== path ? fs.stream(at, options) : Stream.concat(
          Stream.fromEffect(Effect.map(fs.readFileString(at), (text) => {
            const kept = text.split("\n").slice(0, lines).map((l) => `${l}\n`).join("")
            return new TextEncoder().encode(kept)
          })),
          Stream.fromEffect(Effect.zipRight(
            failed,
            Effect.fail(new SystemError({ reason: "Unknown", module: "FileSystem", method: "read", description: "EIO: i/o error, read" }))
          ))
        )
    }))
  )

/** The first read of `path` (a run's line count: it starts before the run reads) never ends. */
const firstReadNeverEnds = (path: string) =>
  Layer.effect(
    FileSystem.FileSystem,
    Effect.map(FileSystem.FileSystem, (fs) => {
      let reads = 0
      return { ...fs, stream: (at, options) => at === path && reads++ === 0 ? Stream.never : fs.stream(at, options) }
    })
  )

/**
 * Waits, a macrotask at a time, for `condition`: the run's file work is real I/O, which the
 * TestClock does not drive. Bounded by 10 s of real time (a loaded machine can take a while);
 * `state` says, in the failure, where things stood then.
 */
const waitUntil = (
  condition: Effect.Effect<boolean, unknown>,
  withinMillis = 10_000,
  state: Effect.Effect<string> = Effect.succeed("")
) =>
  Effect.gen(function*() {
    const deadline = performance.now() + withinMillis
    while (performance.now() < deadline) {
      if (yield* Effect.orElseSucceed(condition, () => false)) return
      yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
    }
    return yield* Effect.die(new Error(`waitUntil: the condition never held ${yield* state}`))
  })

/** The pid of a process that has ended. */
const deadPid = (): number => {
  const child = spawnSync(process.execPath, ["-e", ""])
  return child.pid!
}

describe("Batch.run stop and drain", () => {
  /**
   * A run over `ids` whose calls wait for their marker's gate (`hold` lists the markers held on the
   * wire until the test opens their gate, `queue` those held before their request goes out; the
   * others answer at once), with `stop` / `stopNow` the test fires.
   */
  const stoppable = (
    ids: ReadonlyArray<string>,
    hold: ReadonlySet<string>,
    concurrency: number,
    options: { readonly queue?: ReadonlySet<string>; readonly script?: Script } = {}
  ) =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput(ids.map((id) => request(id)))
      const gates = new Map(yield* Effect.forEach(ids, (id) => Effect.map(Deferred.make<void>(), (gate) => [id, gate] as const)))
      const inFlight = yield* Ref.make(0)
      const waiting = yield* Ref.make(0)
      const written = yield* Ref.make(0)
      const stop = yield* Deferred.make<void>()
      const stopNow = yield* Deferred.make<void>()
      const heldIn = (markers: ReadonlySet<string>, count: Ref.Ref<number>) => (r: ChatCompletionRequest) =>
        markers.has(lastUserText(r))
          ? Effect.ensuring(
            Effect.zipRight(Ref.update(count, (n) => n + 1), Deferred.await(gates.get(lastUserText(r))!)),
            Ref.update(count, (n) => n - 1)
          )
          : Effect.void
      const run = yield* Effect.fork(runWith(options.script ?? ok, {
        ...ws,
        concurrency,
        stop: Deferred.await(stop),
        stopNow: Deferred.await(stopNow),
        onProgress: (p) => Ref.set(written, p.succeeded + p.failed)
      }, { before: heldIn(hold, inFlight), queued: heldIn(options.queue ?? new Set(), waiting) }))
      return { ws, gates, inFlight, waiting, written, stop, stopNow, run }
    })

  const drainSleepRegistered = waitUntil(Effect.map(TestClock.sleeps(), (sleeps) => sleeps.length > 0))

  it.scoped("stops reading at stop, lets the calls in flight finish and writes their answers", () =>
    Effect.gen(function*() {
      const ids = Array.from({ length: 10 }, (_, i) => `l-${i}`)
      const { gates, inFlight, run, stop, ws } = yield* stoppable(ids, new Set(ids), 3)
      yield* waitUntil(Effect.map(Ref.get(inFlight), (n) => n === 3))
      yield* Deferred.succeed(stop, undefined)
      yield* drainSleepRegistered
      for (const id of ["l-0", "l-1", "l-2"]) yield* Deferred.succeed(gates.get(id)!, undefined)
      const { calls, summary } = yield* Fiber.join(run)
      expect(calls).toBe(3)
      expect(summary).toMatchObject({ requests: 3, succeeded: 3, failed: 0, interrupted: true, dropped: 0 })
      expect(Batch.toJson(summary).interrupted).toBe(true)
      expect(Batch.formatSummary(summary)).toContain("stopped:   interrupted; the lines not answered are not in the output (a rerun sends them)")
      expect((yield* ws.readOutput).map((l) => l.custom_id).sort()).toEqual(["l-0", "l-1", "l-2"])
      expect(yield* ws.fs.exists(`${ws.output}.lock`)).toBe(false)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("interrupts the calls still in flight when the drain timeout passes: they write nothing", () =>
    Effect.gen(function*() {
      const ids = ["fast", "slow-1", "slow-2"]
      const { run, stop, written, ws } = yield* stoppable(ids, new Set(["slow-1", "slow-2"]), 4)
      yield* waitUntil(Effect.map(Ref.get(written), (n) => n === 1))
      yield* Deferred.succeed(stop, undefined)
      yield* drainSleepRegistered
      yield* TestClock.adjust("29 seconds")
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20)))
      expect(run.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 second")
      const { summary } = yield* Fiber.join(run)
      // The two dropped on the wire are told: no attempt of theirs ended, so no other figure has them.
      expect(summary).toMatchObject({ requests: 1, succeeded: 1, interrupted: true, dropped: 2 })
      expect(Batch.toJson(summary).dropped).toBe(2)
      expect(Batch.formatSummary(summary)).toContain(
        "stopped:   interrupted; the lines not answered are not in the output (a rerun sends them); " +
          "2 requests on the wire when the drain ended dropped unanswered (the upstream may bill what it generated for them)"
      )
      expect((yield* ws.readOutput).map((l) => l.custom_id)).toEqual(["fast"])
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a stop ends at once the calls with no request on the wire (they write nothing); the others finish", () =>
    Effect.gen(function*() {
      const ids = ["wire-1", "queued-1", "wire-2", "queued-2"]
      const { gates, inFlight, run, stop, waiting, ws } = yield* stoppable(ids, new Set(["wire-1", "wire-2"]), 4, {
        queue: new Set(["queued-1", "queued-2"])
      })
      yield* waitUntil(Effect.map(Effect.all([Ref.get(inFlight), Ref.get(waiting)]), ([wired, queued]) => wired === 2 && queued === 2))
      yield* Deferred.succeed(stop, undefined)
      yield* waitUntil(Effect.map(Ref.get(waiting), (queued) => queued === 0))
      expect(yield* Ref.get(inFlight)).toBe(2)
      for (const id of ["wire-1", "wire-2"]) yield* Deferred.succeed(gates.get(id)!, undefined)
      // No clock moves: the run ends as the calls on the wire do, not at the drain timeout.
      const { calls, summary } = yield* Fiber.join(run)
      expect(calls).toBe(2)
      expect(summary).toMatchObject({ requests: 2, succeeded: 2, failed: 0, interrupted: true })
      expect((yield* ws.readOutput).map((l) => l.custom_id).sort()).toEqual(["wire-1", "wire-2"])
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("after a stop, a call whose exchange fails ends there: it writes nothing, for the next run", () =>
    Effect.gen(function*() {
      const failing: Script = (r) =>
        lastUserText(r) === "fails" ? new ServerError({ status: 503, message: "overloaded", retryAfter: Option.none() }) : "ok"
      const { gates, inFlight, run, stop, ws } = yield* stoppable(["fails", "answers"], new Set(["fails", "answers"]), 2, {
        script: failing
      })
      yield* waitUntil(Effect.map(Ref.get(inFlight), (n) => n === 2))
      yield* Deferred.succeed(stop, undefined)
      for (const id of ["fails", "answers"]) yield* Deferred.succeed(gates.get(id)!, undefined)
      const { summary } = yield* Fiber.join(run)
      expect(summary).toMatchObject({ succeeded: 1, failed: 0, interrupted: true })
      expect((yield* ws.readOutput).map((l) => l.custom_id)).toEqual(["answers"])
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("stopNow ends a drain at once", () =>
    Effect.gen(function*() {
      const { run, stop, stopNow, written, ws } = yield* stoppable(["fast", "slow"], new Set(["slow"]), 4)
      yield* waitUntil(Effect.map(Ref.get(written), (n) => n === 1))
      yield* Deferred.succeed(stop, undefined)
      yield* Deferred.succeed(stopNow, undefined)
      const { summary } = yield* Fiber.join(run)
      expect(summary).toMatchObject({ succeeded: 1, interrupted: true, dropped: 1 })
      expect(yield* ws.readOutput).toHaveLength(1)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped.prop(
    "a run stopped anywhere, then resumed, writes every line exactly once and sends each answered line once",
    [FastCheck.integer({ min: 1, max: 25 }), FastCheck.integer({ min: 0, max: 25 }), FastCheck.integer({ min: 1, max: 6 })],
    ([count, answeredFirst, concurrency]) =>
      Effect.gen(function*() {
        const ids = Array.from({ length: count }, (_, i) => `p-${i}`)
        const answered = Math.min(answeredFirst, count)
        // Lines from `answered` on are held (in flight until the drain timeout interrupts them).
        const held = new Set(ids.slice(answered))
        const { inFlight, run, stop, written, ws } = yield* stoppable(ids, held, concurrency)
        const state = Effect.map(
          Effect.all([Ref.get(written), Ref.get(inFlight), TestClock.sleeps()]),
          ([n, holding, sleeps]) =>
            `(${count} lines, ${answered} to answer, concurrency ${concurrency}: ${n} written, ${holding} held, ` +
            `${sleeps.length} sleeps, the run ${run.unsafePoll() === null ? "running" : "ended"})`
        )
        yield* waitUntil(Effect.map(Ref.get(written), (n) => n === answered), undefined, state)
        yield* Deferred.succeed(stop, undefined)
        if (held.size > 0) {
          // A stop before the first line is read (while compacting) ends the run with no drain.
          yield* waitUntil(Effect.map(TestClock.sleeps(), (sleeps) => run.unsafePoll() !== null || sleeps.length > 0), undefined, state)
          if (run.unsafePoll() === null) yield* TestClock.adjust(Batch.defaultDrainTimeout)
        }
        const first = yield* Fiber.join(run)
        expect(first.summary.succeeded).toBe(answered)
        if (held.size > 0) expect(first.summary.interrupted).toBe(true)

        const second = yield* runWith(ok, ws)
        expect(second.calls).toBe(count - answered)
        expect(second.summary).toMatchObject({ succeeded: count - answered, skipped: answered, interrupted: false })
        const lines = yield* ws.readOutput
        expect(countBy(lines)).toEqual(new Map(ids.map((id) => [id, 1])))
      }).pipe(Effect.provide(NodeFileSystem.layer)),
    { fastCheck: { numRuns: 30 } }
  )

  it.scoped.prop(
    "a stop while calls wait or are on the wire: the waiting write nothing, the rest drain; the resume writes every line exactly once",
    [
      FastCheck.integer({ min: 1, max: 20 }),
      FastCheck.integer({ min: 0, max: 20 }),
      FastCheck.integer({ min: 1, max: 6 }),
      FastCheck.array(FastCheck.constantFrom("queued", "wire", "wire-answers"), { minLength: 20, maxLength: 20 })
    ],
    ([count, answeredFirst, concurrency, fates]) =>
      Effect.gen(function*() {
        const ids = Array.from({ length: count }, (_, i) => `q-${i}`)
        const answered = Math.min(answeredFirst, count)
        // Lines from `answered` on are held: waiting before their request, or on the wire (some
        // of those answer after the stop, the others until the drain timeout).
        const fateOf = (i: number) => fates[i]!
        const heldIds = ids.slice(answered)
        const queued = new Set(heldIds.filter((_, i) => fateOf(answered + i) === "queued"))
        const onWire = new Set(heldIds.filter((id) => !queued.has(id)))
        const { gates, run, stop, written, ws } = yield* stoppable(ids, onWire, concurrency, { queue: queued })
        yield* waitUntil(Effect.map(Ref.get(written), (n) => n === answered))
        yield* Deferred.succeed(stop, undefined)
        for (const id of heldIds) {
          if (fateOf(ids.indexOf(id)) === "wire-answers") yield* Deferred.succeed(gates.get(id)!, undefined)
        }
        const drains = heldIds.some((id) => fateOf(ids.indexOf(id)) === "wire")
        if (drains) {
          yield* waitUntil(Effect.map(TestClock.sleeps(), (sleeps) => run.unsafePoll() !== null || sleeps.length > 0))
          if (run.unsafePoll() === null) yield* TestClock.adjust(Batch.defaultDrainTimeout)
        } else {
          // Nothing is held on the wire: the run ends with no clock move.
          yield* waitUntil(Effect.sync(() => run.unsafePoll() !== null))
        }
        const first = yield* Fiber.join(run)
        // A run stopped before it began (while compacting) leaves no output behind.
        const firstOutput = (yield* ws.fs.exists(ws.output)) ? yield* ws.fs.readFileString(ws.output) : ""
        const firstIds = firstOutput.split("\n").filter((l) => l !== "").map((l) => (JSON.parse(l) as Parsed).custom_id!)
        expect(first.summary.succeeded).toBe(firstIds.length)
        expect(first.summary.succeeded).toBeGreaterThanOrEqual(answered)
        for (const id of firstIds) expect(queued.has(id)).toBe(false)

        const second = yield* runWith(ok, ws)
        expect(second.calls).toBe(count - firstIds.length)
        expect(countBy(yield* ws.readOutput)).toEqual(new Map(ids.map((id) => [id, 1])))
      }).pipe(Effect.provide(NodeFileSystem.layer)),
    { fastCheck: { numRuns: 30 } }
  )
})

describe("Batch.run stream lines against the simulator", () => {
  it.live("answers stream lines with the completion a non-stream call gets, and a cut stream with its partial output", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      // The first accepted request is cut mid-stream (the simulator sends half its pieces, no [DONE]).
      const simulator = yield* Simulator.make({ queueDelay: "1 millis", faults: { script: ["cut"] } })
      const line = (customId: string, stream: boolean) =>
        JSON.stringify({
          custom_id: customId,
          method: "POST",
          url: "/v1/chat/completions",
          body: {
            model: "deepseek-v4-flash",
            thinking: { type: "enabled" },
            messages: [{ role: "user", content: `tell me about ${customId.split("-")[1]}` }],
            ...(stream ? { stream: true } : {})
          }
        })
      yield* ws.writeInput([line("cut-first", true)])
      const stack = Demo.clientStack([Demo.demoAccount(simulator.baseUrl)])
      const first = yield* Batch.run(ws).pipe(Effect.provide(stack))
      expect(first).toMatchObject({ failed: 1, failures: { StreamTruncated: 1 } })
      const cut = (yield* ws.readOutput)[0]!
      const partial = (cut.error as any).partial
      expect(partial.reasoning_content).toBe("think:tell me about first")
      expect("echo:tell me about first".startsWith(partial.content ?? "")).toBe(true)
      expect(cut.error?.message).toMatch(/^the stream was cut after \d+ chunks \(\d+ characters of content and 25 of reasoning arrived/)
      // The account's line says its answer was cut short, not "answered": the line failed.
      expect(Batch.formatSummary(first)).toMatch(/\n {2}\S+: .*; 0 answered, 1 cut short, 1 attempt,/)

      yield* ws.writeInput([line("cut-first", true), line("s-two", true), line("n-two", false)])
      const second = yield* Batch.run(ws).pipe(Effect.provide(stack))
      expect(second).toMatchObject({ succeeded: 3, failed: 0 })
      const lines = byCustomId(yield* ws.readOutput)
      const body = (id: string) => lines.get(id)?.response?.body
      // Same request, streamed or not: the same body but for the id.
      expect({ ...body("s-two"), id: "" }).toEqual({ ...body("n-two"), id: "" })
      expect(body("s-two").choices[0].message).toEqual({
        role: "assistant",
        content: "echo:tell me about two",
        reasoning_content: "think:tell me about two"
      })
      expect(body("s-two").usage.completion_tokens).toBeGreaterThan(0)
      expect((yield* simulator.completions).map((c) => [c.marker, c.stream])).toEqual(
        expect.arrayContaining([["tell me about two", true], ["tell me about two", false], ["tell me about first", true]])
      )
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))
})

describe("Batch.run's cost of attempts cut in transit", () => {
  it.live("a body and a stream cut before their usage arrived are counted unmetered: billed upstream, not in the tokens", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      // The first two accepted requests are cut: half a JSON body, half a stream.
      const simulator = yield* Simulator.make({ queueDelay: "1 millis", faults: { script: ["cut", "cut"] } })
      const line = (customId: string, stream: boolean) =>
        JSON.stringify({
          custom_id: customId,
          method: "POST",
          url: "/v1/chat/completions",
          body: { model: "deepseek-v4-flash", messages: [{ role: "user", content: customId }], ...(stream ? { stream: true } : {}) }
        })
      yield* ws.writeInput([line("body", false), line("stream", true)])
      const summary = yield* Batch.run(ws).pipe(Effect.provide(Demo.clientStack([Demo.demoAccount(simulator.baseUrl)])))
      // The body's retry answers; the stream's content reached the caller, so its line fails.
      expect(summary).toMatchObject({ succeeded: 1, failed: 1, failures: { StreamTruncated: 1 }, spend: { attempts: 3, unmetered: 2 } })
      expect(Batch.formatSummary(summary)).toContain("; 2 attempts without usage (cut in transit, or none sent) not counted;")
      // The simulator billed the cut attempts too: more tokens than the client metered.
      const billed = (yield* simulator.stats).accounts["default"]!.billed
      expect(billed.prompt + billed.completion).toBeGreaterThan(summary.spend.tokens.prompt + summary.spend.tokens.completion)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))
})

describe("Batch.run stopped in an outage, over the account pool", () => {
  it.live("ends at once: no call is on the wire while every one waits for a retry or the account's breaker", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput(Array.from({ length: 40 }, (_, i) => request(`o-${i}`)))
      // Every request is answered 503: calls back off and the breaker opens.
      const simulator = yield* Simulator.make({ queueDelay: "1 millis", faults: { probabilities: { overloaded: 1 } } })
      const stack = Batch.layerAccounts([Demo.demoAccount(simulator.baseUrl)], {
        ledger: CostLedger.layer(),
        router: Router.layerDefault
      })
      const stop = yield* Deferred.make<void>()
      const run = yield* Effect.fork(
        Batch.run({ ...ws, stop: Deferred.await(stop), drainTimeout: "1 hour" }).pipe(Effect.provide(stack))
      )
      yield* waitUntil(Effect.map(simulator.stats, (stats) => stats.requests >= 10))
      yield* Deferred.succeed(stop, undefined)
      // Without the stop's ending of waiting calls this waits out the hour's drain (the test's timeout).
      const summary = yield* Fiber.join(run)
      expect(summary).toMatchObject({ succeeded: 0, failed: 0, interrupted: true })
      expect(yield* ws.fs.readFileString(ws.output)).toBe("")
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))
})

describe("Batch.run while no account can serve", () => {
  it.live("the lines wait for one together, and once a wait ran out the rest fail at once, not one wait per wave of lines", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      // More lines than wait side by side (256): a wave after the first waited its own maxWait.
      const lines = 600
      yield* ws.writeInput(Array.from({ length: lines }, (_, i) => request(`w-${i}`)))
      // Out of balance, found by the first calls' 402s (no preflight, which would refuse the run), and no account is left.
      const simulator = yield* Simulator.make({ accounts: { default: { keys: [Simulator.defaultKey], balance: 0 } } })
      const stack = Batch.layerAccounts([Demo.demoAccount(simulator.baseUrl)], {
        pool: { preflight: false },
        ledger: CostLedger.layer(),
        router: Router.layerDefault
      })
      const summary = yield* Effect.timeoutFail(
        Batch.run({ ...ws, callOptions: { priority: "batch", maxWait: "2 seconds" } }).pipe(Effect.provide(stack)),
        // One wait, with room for a busy machine; a wave of 256 lines per wait is 3 × 2 s.
        { duration: "4500 millis", onTimeout: () => new Error("the lines waited a wave after another (3 × 2 s)") }
      )
      expect(summary).toMatchObject({ requests: lines, failed: lines, failures: { NoAccountAvailable: lines } })
      expect((yield* simulator.stats).requests).toBeLessThan(lines / 10)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), 15_000)
})

describe("Batch.run with a model no account can serve", () => {
  const pro = (id: string) =>
    JSON.stringify({
      custom_id: id,
      method: "POST",
      url: "/v1/chat/completions",
      body: { model: "deepseek-v4-pro", messages: [{ role: "user", content: id }] }
    })

  /** Only a serves pro, and a is out of balance; b serves flash. */
  const accountsStack = Effect.map(
    Simulator.make({ accounts: { a: { keys: ["sk-test-a"], balance: 0 }, b: { keys: ["sk-test-b"] } } }),
    (simulator) => {
      const accounts: ReadonlyArray<Account> = [
        { ...Demo.demoAccount(simulator.baseUrl), name: "a", keys: [Redacted.make("sk-test-a")] },
        {
          name: "b",
          provider: "openai-compatible",
          baseUrl: simulator.baseUrl,
          keys: [Redacted.make("sk-test-b")],
          fallback: false,
          models: { "deepseek-v4-flash": "deepseek-v4-flash" }
        }
      ]
      return Batch.layerAccounts(accounts, { ledger: CostLedger.layer(), router: Router.layerDefault })
    }
  )

  it.live("its lines wait side by side, and hold back none of the lines another account serves", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      // The pro lines first.
      yield* ws.writeInput([...Array.from({ length: 10 }, (_, i) => pro(`p-${i}`)), ...Array.from({ length: 10 }, (_, i) => request(`f-${i}`))])
      const stack = yield* accountsStack
      const summary = yield* Effect.timeoutFail(
        Batch.run({ ...ws, callOptions: { maxWait: "1 second" } }).pipe(Effect.provide(stack)),
        // One wait, with room for a busy machine; the pro lines one after another are 10 × 1 s.
        { duration: "4 seconds", onTimeout: () => new Error("the lines no account can serve waited one after another") }
      )
      expect(summary).toMatchObject({ succeeded: 10, failed: 10, failures: { NoAccountAvailable: 10 } })
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), 15_000)

  it.live("more of them than wait side by side: once one waited out its maxWait, the rest fail at once, not one wait per wave", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const lines = 600
      yield* ws.writeInput(Array.from({ length: lines }, (_, i) => pro(`p-${i}`)))
      const stack = yield* accountsStack
      const summary = yield* Effect.timeoutFail(
        Batch.run({ ...ws, callOptions: { maxWait: "2 seconds" } }).pipe(Effect.provide(stack)),
        // One wait, with room for a busy machine; a wave of 256 lines per wait is 3 × 2 s.
        { duration: "4500 millis", onTimeout: () => new Error("the lines waited a wave after another (3 × 2 s)") }
      )
      expect(summary).toMatchObject({ requests: lines, failed: lines, failures: { NoAccountAvailable: lines } })
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), 15_000)
})

describe("Batch.run over an upstream that cannot be reached", () => {
  it.live("fails at once with UpstreamUnreachable when no account's origin can be connected to: nothing locked, written or sent", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("u-1"), request("u-2")])
      const closed = yield* Effect.promise(freePort)
      const stack = Batch.layerAccounts([Demo.demoAccount(`http://127.0.0.1:${closed}`)], {
        ledger: CostLedger.layer(),
        router: Router.layerDefault
      })
      // Without the check the lines wait for the account's breaker, up to their maxWait (30 minutes).
      const error = yield* Effect.flip(Effect.timeoutFail(Batch.run(ws).pipe(Effect.provide(stack)), {
        duration: "5 seconds",
        onTimeout: () => new Error("the run waited for an upstream it never reached")
      }))
      expect(error).toBeInstanceOf(Batch.UpstreamUnreachable)
      const reason = `connect ECONNREFUSED 127.0.0.1:${closed}`
      expect(error.message).toBe(`cannot connect to the upstream of any account: account demo: http://127.0.0.1:${closed} (${reason})`)
      expect(yield* ws.fs.exists(ws.output)).toBe(false)
      expect(yield* ws.fs.exists(`${ws.output}.lock`)).toBe(false)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), 15_000)

  it.live("fails at once with KeysRejected when the preflight found every key rejected on the accounts it reached", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("k-1"), request("k-2")])
      // The preflight's 401 comes after the warm-up's connections: the run waits for it.
      const upstream = yield* rawServer([], {
        balance: (response) => setTimeout(() => response.writeHead(401).end(), 300)
      })
      const closed = yield* Effect.promise(freePort)
      const stack = Batch.layerAccounts([
        Demo.demoAccount(upstream.url),
        { ...Demo.demoAccount(`http://127.0.0.1:${closed}`), name: "gone", fallback: true }
      ], { ledger: CostLedger.layer(), router: Router.layerDefault })
      const error = yield* Effect.flip(Effect.timeout(Batch.run(ws).pipe(Effect.provide(stack)), "10 seconds"))
      expect(error).toBeInstanceOf(Batch.KeysRejected)
      expect(error.message).toBe(
        `the upstream rejected every key (401) of account demo, and cannot connect to the upstream of any account: ` +
          `account gone: http://127.0.0.1:${closed} (connect ECONNREFUSED 127.0.0.1:${closed})`
      )
      expect(yield* ws.fs.exists(ws.output)).toBe(false)
      expect(upstream.received()).toEqual([])
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), 15_000)

  it.live("fails at once with OutOfBalance when the preflight found the accounts it reached out of balance, or with every key rejected", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("b-1"), request("b-2")])
      const simulator = yield* Simulator.make({
        accounts: { empty: { keys: [Simulator.defaultKey], balance: 0 }, other: { keys: ["sk-sim-other"] } }
      })
      const closed = yield* Effect.promise(freePort)
      const stack = Batch.layerAccounts([
        { ...Demo.demoAccount(simulator.baseUrl), name: "empty" },
        { ...Demo.demoAccount(simulator.baseUrl), name: "wrong", keys: [Redacted.make("sk-sim-wrong")], fallback: true },
        { ...Demo.demoAccount(`http://127.0.0.1:${closed}`), name: "gone", fallback: true }
      ], { ledger: CostLedger.layer(), router: Router.layerDefault })
      // Without the check the lines wait for a balance someone tops up, each up to its maxWait (30 minutes).
      const error = yield* Effect.flip(Effect.timeout(Batch.run(ws).pipe(Effect.provide(stack)), "10 seconds"))
      expect(error).toBeInstanceOf(Batch.OutOfBalance)
      expect(error.message).toBe(
        `account empty is out of balance (its balance is unavailable); the upstream rejected every key (401) of account wrong, and ` +
          `cannot connect to the upstream of any account: account gone: http://127.0.0.1:${closed} (connect ECONNREFUSED 127.0.0.1:${closed})`
      )
      expect(yield* ws.fs.exists(ws.output)).toBe(false)
      expect((yield* simulator.stats).requests).toBe(0)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), 15_000)

  it.scoped("an output locked by another run is refused at once, without waiting for the warm-up's answer", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("l-1")])
      yield* ws.fs.writeFileString(`${ws.output}.lock`, JSON.stringify({ pid: process.pid, host: "another-host", since: "2020-01-01T00:00:00.000Z" }))
      const { calls, layer } = yield* double(ok)
      // An origin that drops packets: no answer before the connect timeout. Before, the run
      // waited for it, then found the lock: the race below then ends with `waited`.
      const awaited = yield* Deferred.make<void>()
      const unreachable = Effect.zipRight(Deferred.succeed(awaited, undefined), Effect.never)
      const stack = withPoolDouble(layer, { snapshot: Effect.succeed([]), unreachable })
      const refused = yield* Effect.raceFirst(
        Effect.flip(Batch.run(ws).pipe(Effect.provide(stack))),
        Effect.as(Deferred.await(awaited), "waited for the warm-up before it looked at the lock" as const)
      )
      expect(refused).toMatchObject({ _tag: "OutputLocked", holder: { host: "another-host" } })
      expect(yield* Ref.get(calls)).toBe(0)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.scoped("a stop while the warm-up has not answered yet ends the run at once: nothing read or sent, the lock released", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("s-1")])
      const { calls, layer } = yield* double(ok)
      // An origin that drops packets: no answer before the connect timeout.
      const stack = withPoolDouble(layer, { snapshot: Effect.succeed([]), unreachable: Effect.never })
      // Before, the run waited for the warm-up, then started and drained at once.
      const summary = yield* Batch.run({ ...ws, stop: Effect.void }).pipe(Effect.provide(stack))
      expect(summary).toMatchObject({ requests: 0, interrupted: true })
      expect(yield* Ref.get(calls)).toBe(0)
      expect(yield* ws.fs.exists(ws.output)).toBe(false)
      expect(yield* ws.fs.exists(`${ws.output}.lock`)).toBe(false)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.live("runs when one account of several can be reached", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      yield* ws.writeInput([request("r-1"), request("r-2")])
      const simulator = yield* Simulator.make()
      const closed = yield* Effect.promise(freePort)
      const stack = Batch.layerAccounts([
        Demo.demoAccount(simulator.baseUrl),
        { ...Demo.demoAccount(`http://127.0.0.1:${closed}`), name: "gone", fallback: true }
      ], { ledger: CostLedger.layer(), router: Router.layerDefault })
      const summary = yield* Effect.timeout(Batch.run(ws).pipe(Effect.provide(stack)), "10 seconds")
      expect(summary).toMatchObject({ succeeded: 2, failed: 0 })
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), 15_000)
})

describe("Batch.run over the account pool, keys in failures", () => {
  it.scoped("masks an account's key an upstream echoes into a failure, whatever its shape, in the result lines", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const streamed = JSON.parse(request("page-stream"))
      streamed.body.stream = true
      yield* ws.writeInput([request("page"), JSON.stringify(streamed)])
      // A key not shaped like one, echoed back in a web page (a base URL that reaches the wrong server).
      const key = "Zq81xV3pLmRt4wQe"
      const echo: Handler = async (request, response) => {
        response.writeHead(200, { "content-type": "text/html" }).end(`<html>you sent ${request.headers.authorization}</html>`)
      }
      const server = yield* rawServer([echo, echo])
      const stack = Batch.layerAccounts([{ ...Demo.demoAccount(server.url), keys: [Redacted.make(key)] }], {
        ledger: CostLedger.layer(),
        router: Router.layerDefault
      })
      const summary = yield* Batch.run(ws).pipe(Effect.provide(stack))
      expect(summary).toMatchObject({ failed: 2, failures: { MalformedResponse: 2 } })
      const written = yield* ws.fs.readFileString(ws.output)
      expect(written).toContain("you sent Bearer ***")
      expect(written).not.toContain(key.slice(0, 8))
      expect(written).not.toContain(key.slice(-8))
    }).pipe(Effect.provide(NodeFileSystem.layer)))
})

describe("Batch.run over the account pool, a line's body", () => {
  it.scoped("integers beyond 2^53 reach the upstream digit for digit, streamed or not", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const exact = `"seed":12345678901234567891,"logit_bias":{"50256":-9007199254740993}`
      const line = (id: string, stream: boolean) =>
        `{"custom_id":"${id}","method":"POST","url":"/v1/chat/completions","body":{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"12345678901234567891"}],"stream":${stream},${exact}}}`
      yield* ws.writeInput([line("plain", false), line("streamed", true)])
      const answer = { id: "cmpl-x", model: "deepseek-v4-flash", content: "ok", usage: wire.usage({ promptTokens: 1, completionTokens: 1 }) }
      const reply: Handler = async (_, response, body) => {
        const streamed = body.includes("\"stream\":true")
        response.writeHead(200, { "content-type": streamed ? "text/event-stream" : "application/json" })
        response.end(streamed ? wire.chunks(answer).map(wire.sseData).join("") + wire.sseData("[DONE]") : JSON.stringify(wire.completion(answer)))
      }
      const upstream = yield* rawServer([reply, reply])
      const stack = Batch.layerAccounts([Demo.demoAccount(upstream.url)], { ledger: CostLedger.layer(), router: Router.layerDefault })
      expect(yield* Batch.run(ws).pipe(Effect.provide(stack))).toMatchObject({ succeeded: 2, failed: 0 })
      const sent = upstream.received()
      expect(sent).toHaveLength(2)
      for (const { body } of sent) {
        expect(body).toContain(exact)
        expect(JSON.parse(body).messages[0].content).toBe("12345678901234567891")
      }
    }).pipe(Effect.provide(NodeFileSystem.layer)))
})

describe("Batch.run over a cap far below its limit", () => {
  it.live("a burst of 429s from a limit far above the cap is retried at the limiter's pace, not starved by the retry budget", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      const simulator = yield* Simulator.make({ limit: 4, queueDelay: 0, chunkDelay: 0 })
      yield* ws.writeInput(Array.from({ length: 60 }, (_, i) => request(`q${i}`)))
      // A budget that allows no retry: the 429s of a cap are paced by the account's limiter instead.
      const stack = Batch.layerAccounts([{ ...Demo.demoAccount(simulator.baseUrl), concurrency: 60 }], {
        pool: { retry: { base: "10 millis", cap: "50 millis" }, retryBudget: { ratio: 0, minRetriesPerSecond: 0 }, budgetWait: "1 minute" },
        ledger: CostLedger.layer(),
        router: Router.layerDefault
      })
      const summary = yield* Effect.timeoutFail(Batch.run(ws).pipe(Effect.provide(stack)), {
        duration: "20 seconds",
        onTimeout: () => new Error("the retries waited for a budget that never refills")
      })
      expect(summary).toMatchObject({ requests: 60, succeeded: 60, failed: 0 })
      expect(summary.rateLimited).toBeGreaterThan(0)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), { timeout: 30_000 })
})

describe("Batch.run per-line deadlines", () => {
  it.live("a line's own deadlines override the run's: its first-content deadline trips while the others wait", () =>
    Effect.gen(function*() {
      const ws = yield* workspace
      // Every request is queued 300 ms (keep-alives meanwhile) before its content.
      const simulator = yield* Simulator.make({ queueDelay: "300 millis" })
      const line = (customId: string, deadlines?: Record<string, string>, stream = false) =>
        JSON.stringify({
          custom_id: customId,
          ...(deadlines === undefined ? {} : { deadlines }),
          method: "POST",
          url: "/v1/chat/completions",
          body: { model: "deepseek-v4-flash", messages: [{ role: "user", content: customId }], stream }
        })
      yield* ws.writeInput([
        line("patient"),
        // A stream's first content is its first event (a non-streaming answer's comes whole once generated).
        line("hasty", { firstContent: "50ms" }, true),
        line("bad", { idle: "soon" }),
        line("zero", { total: "0s" }),
        line("typo", { whole: "5s" })
      ])
      const stack = Batch.layerAccounts([Demo.demoAccount(simulator.baseUrl)], {
        pool: { retry: { maxRetries: 0 } },
        ledger: CostLedger.layer(),
        router: Router.layerDefault
      })
      const summary = yield* Batch.run(ws).pipe(Effect.provide(stack))
      const lines = byCustomId(yield* ws.readOutput)
      expect(lines.get("patient")?.error).toBeNull()
      expect(lines.get("hasty")?.error).toMatchObject({ code: "DeadlineExceeded" })
      expect(lines.get("hasty")?.error?.message).toContain("first_content")
      expect(lines.get("bad")?.error).toMatchObject({ code: "invalid_line" })
      expect(lines.get("bad")?.error?.message).toContain(`deadlines.idle: expected a duration above 0 such as 30s, 500ms, 2m or 1h, got "soon"`)
      // A deadline of 0 would fail every attempt and spend the line's retries for nothing.
      expect(lines.get("zero")?.error?.message).toContain(`deadlines.total: expected a duration above 0 such as 30s, 500ms, 2m or 1h, got "0s"`)
      // A deadline's name it does not know is a typo to fix, not a deadline silently dropped.
      expect(lines.get("typo")?.error?.message).toContain(`deadlines.whole: is unexpected, expected: "firstContent" | "idle" | "total"`)
      expect(summary).toMatchObject({ succeeded: 1, failed: 4 })
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))
})
