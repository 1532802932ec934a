/**
 * The batch CLI's start-up: the time from spawning the bundled CLI as installed,
 * `node dist/cli/weatherproof.js batch` (a one-line input, one account from the environment), to
 * its first request at the upstream, beside the plain client (`plainClient.ts`: Node, p-limit and
 * undici, nothing else) doing the same, and `weatherproof --version` to its exit. The upstream is
 * a minimal `node:http` server in this process that notes when each request arrives: it answers
 * the pool's balance preflight (`GET /user/balance`) and every chat request at once. The CLI's
 * first request is that preflight; its first chat request follows the preflight's answer.
 * Contenders run interleaved, `runs` times; each figure is the median.
 *
 * The CLI keeps V8's compilation of its files between runs (app/cli/compileCache.ts), in a
 * directory of this run made before the first timed run by one that is not timed. The CLI also
 * runs without it: what a first run after an install or an upgrade takes.
 */
import * as Effect from "effect/Effect"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as NodePath from "node:path"
import { performance } from "node:perf_hooks"
import { spawn } from "node:child_process"
import * as Processes from "./processes.js"

export const settings = { runs: 9, timeoutMs: 30_000 } as const

export interface Timing {
  readonly name: string
  /** Spawn to the first request of any kind (median); NaN for a command that sends none. */
  readonly firstRequestMs: number
  /** Spawn to the first chat request (median); NaN for a command that sends none. */
  readonly firstChatMs: number
  /** Spawn to exit (median). */
  readonly exitMs: number
}

export interface Report {
  readonly weatherproof: Timing
  /** The CLI with no compile cache. */
  readonly cold: Timing
  readonly plain: Timing
  readonly version: Timing
}

const completion = JSON.stringify({
  id: "chatcmpl-startup",
  object: "chat.completion",
  created: 0,
  model: "deepseek-v4-flash",
  choices: [{ index: 0, message: { role: "assistant", content: "hi" }, finish_reason: "stop" }],
  usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }
})

/** The upstream: arrival times of the current run's first request and first chat request. */
const makeUpstream = () => {
  let first: number | undefined
  let firstChat: number | undefined
  const server = Http.createServer((req, res) => {
    const at = performance.now()
    first ??= at
    const chat = req.url?.endsWith("/chat/completions") === true
    if (chat) firstChat ??= at
    req.resume()
    req.once("end", () => {
      res.writeHead(200, { "content-type": "application/json" })
      res.end(chat ? completion : JSON.stringify({ is_available: true, balance_infos: [] }))
    })
  })
  return {
    listen: () =>
      new Promise<string>((resolve) =>
        server.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`))
      ),
    reset: () => {
      first = undefined
      firstChat = undefined
    },
    arrivals: () => ({ first, firstChat }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      })
  }
}

type Upstream = ReturnType<typeof makeUpstream>

interface Sample {
  readonly firstRequestMs: number
  readonly firstChatMs: number
  readonly exitMs: number
}

/** Spawns `node <args>` (not measured: no preload, no `time`), waits for its exit. */
const timeOnce = (upstream: Upstream, args: ReadonlyArray<string>, env: Record<string, string>): Promise<Sample> =>
  new Promise((resolve, reject) => {
    upstream.reset()
    const startedAt = performance.now()
    const child = spawn(process.execPath, args, { env: { PATH: process.env["PATH"] ?? "", ...env }, stdio: "ignore" })
    const timer = setTimeout(() => child.kill("SIGKILL"), settings.timeoutMs)
    child.once("error", reject)
    child.once("close", (code) => {
      clearTimeout(timer)
      const exitMs = performance.now() - startedAt
      if (code !== 0) return reject(new Error(`${args.join(" ")} exited ${code}`))
      const { first, firstChat } = upstream.arrivals()
      resolve({
        firstRequestMs: first === undefined ? Number.NaN : first - startedAt,
        firstChatMs: firstChat === undefined ? Number.NaN : firstChat - startedAt,
        exitMs
      })
    })
  })

const medianTiming = (name: string, samples: ReadonlyArray<Sample>): Timing => ({
  name,
  firstRequestMs: Processes.median(samples.map((s) => s.firstRequestMs)),
  firstChatMs: Processes.median(samples.map((s) => s.firstChatMs)),
  exitMs: Processes.median(samples.map((s) => s.exitMs))
})

export const run: Effect.Effect<Report> = Effect.promise(async () => {
  const upstream = makeUpstream()
  const baseUrl = await upstream.listen()
  const work = Processes.scratch()
  const input = NodePath.join(work.dir, "input.jsonl")
  Processes.writeBatchInput(input, 1, () => "hello")
  const plainEnv = Processes.upstreamEnv(baseUrl, "sk-startup")
  const env = { ...plainEnv, WEATHERPROOF_COMPILE_CACHE: NodePath.join(work.dir, "compile-cache") }
  const batch = (output: string) => [Processes.cliEntry, "batch", input, "--output", output]
  const samples = {
    weatherproof: [] as Array<Sample>,
    cold: [] as Array<Sample>,
    plain: [] as Array<Sample>,
    version: [] as Array<Sample>
  }
  try {
    await timeOnce(upstream, batch(NodePath.join(work.dir, "output-warm-up.jsonl")), env)
    for (let round = 0; round < settings.runs; round++) {
      const output = NodePath.join(work.dir, `output-${round}`)
      samples.weatherproof.push(await timeOnce(upstream, batch(`${output}-wp.jsonl`), env))
      samples.cold.push(await timeOnce(upstream, batch(`${output}-cold.jsonl`), { ...env, WEATHERPROOF_COMPILE_CACHE: "0" }))
      samples.plain.push(await timeOnce(upstream, [Processes.plainClientEntry, input, `${output}-plain.jsonl`], plainEnv))
      samples.version.push(await timeOnce(upstream, [Processes.cliEntry, "--version"], env))
    }
  } finally {
    work.done()
    await upstream.close()
  }
  return {
    weatherproof: medianTiming("weatherproof batch (CLI)", samples.weatherproof),
    cold: medianTiming("the same, no compile cache (first run)", samples.cold),
    plain: medianTiming("p-limit + undici (plain client)", samples.plain),
    version: medianTiming("weatherproof --version", samples.version)
  }
})
