/**
 * The gateway benchmark: one loopback upstream (the Simulator) called directly, through
 * `weatherproof serve`, and through Portkey's open-source gateway, at 1, 16 and 128 concurrent
 * clients; then a table of correctness probes for both gateways.
 *
 * Every server runs in a Node process of its own, so a gateway's CPU does not slow the upstream:
 * - the upstream: this module run as `node gateway.js upstream <options>`, a Simulator whose
 *   account limit is far above the load (no 429s) and whose answers take `serviceMs` (DeepSeek's
 *   own time: queueing and generation; a stream sends its pieces 1 ms apart after that);
 * - weatherproof: `node dist/cli/weatherproof.js serve` (the package's `bin`, bundled) with
 *   `DEEPSEEK_API_KEY` and `DEEPSEEK_BASE_URL`, exactly as a user runs it, with
 *   `--concurrency 1024` (a known cap);
 * - Portkey: `@portkey-ai/gateway`'s `build/start-server.js --headless` with `NODE_ENV=production`,
 *   forced onto 127.0.0.1 by a preload (it listens on every interface); requests name the
 *   upstream with `x-portkey-provider: openai` and `x-portkey-custom-host`;
 * - a bare Node proxy (`node gateway.js proxy <upstream>`): `node:http` in, one undici request out,
 *   the body piped back untouched. No gateway does less per request, so it is the floor of what
 *   any gateway adds on this machine (two more loopback hops, an HTTP server and an HTTP client
 *   sharing the cores with the load and the upstream).
 * The load comes from this process: `clients` loops, each sending its next request when the last
 * answer ended, over one undici keep-alive `Agent` per cell, so the warm-up opens the connections
 * the measured requests use.
 *
 * Before its first cell each contender serves `jitWarmUpRequests` requests (every other one a
 * stream), `jitWarmUpClients` at a time: every server is measured in its steady state, its code
 * compiled by the JIT, not in the first few hundred requests of its life. Without it the
 * one-client cells, measured first, timed weatherproof's code still interpreted: 3.4 ms of CPU an
 * answer where a warm gateway spends 2.8 ms.
 *
 * Each cell runs `seconds` of non-stream requests (latency to the last byte; throughput: answers
 * per second; the CPU time the contender's own process spent per answer, from /proc) and
 * `streamSeconds` of streams (time from the send to the first `data:` event), after a warm-up.
 * Contenders take turns within each client count, over `rounds` rounds, and each figure is the
 * median of the rounds: a slow spell of the machine then spreads over all of them.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync, realpathSync } from "node:fs"
import * as Http from "node:http"
import { createRequire } from "node:module"
import * as Net from "node:net"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import * as Effect from "effect/Effect"
import { Agent, request } from "undici"
import * as Simulator from "../src/Simulator.js"
import * as Processes from "./processes.js"

export const settings = {
  clients: [1, 16, 128],
  seconds: 2.5,
  streamSeconds: 1.5,
  warmUpSeconds: 0.5,
  jitWarmUpRequests: 2000,
  jitWarmUpClients: 16,
  rounds: 3,
  /** The upstream's time per answer, before its first content. */
  serviceMs: 50
} as const

export const portkeyVersion: string = createRequire(import.meta.url)("@portkey-ai/gateway/package.json").version

const model = "deepseek-v4-flash"

// --- processes ----------------------------------------------------------------------------------

/** A server in a process of its own, ready once its output matched. */
interface Server {
  readonly url: string
  /** CPU time the process used so far (user + system), in ms; NaN where /proc is not there. */
  readonly cpuMs: () => number
  /** Why the process exited, if it did: its exit code and last line. */
  readonly exited: () => string | undefined
  readonly stop: () => Promise<void>
}

/** utime + stime of a process, from /proc/<pid>/stat (Linux), in ms (100 ticks a second). */
const cpuMsOf = (pid: number | undefined): number => {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return (Number(fields[11]) + Number(fields[12])) * 10
  } catch {
    return Number.NaN
  }
}

const startProcess = (
  command: string,
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  ready: RegExp,
  url: (match: RegExpExecArray) => string
): Promise<Server> =>
  new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`${args.join(" ")} did not start: ${output}`))
    }, 30_000)
    const onData = (data: Buffer) => {
      output += data.toString("utf8")
      const match = ready.exec(output)
      if (match !== null) {
        clearTimeout(timer)
        child.stdout?.removeAllListeners("data")
        child.stderr?.removeAllListeners("data")
        // Keep reading its output (the last line tells why it died): a full pipe would block it.
        let last = ""
        const keepLast = (data: Buffer) => {
          last = data.toString("utf8").trim().split("\n").at(-1) ?? last
        }
        child.stdout?.on("data", keepLast)
        child.stderr?.on("data", keepLast)
        resolve({
          url: url(match),
          cpuMs: () => cpuMsOf(child.pid),
          exited: () => child.exitCode === null && child.signalCode === null ? undefined : `exit ${child.exitCode ?? child.signalCode}: ${last}`,
          stop: () =>
            new Promise((done) => {
              if (child.exitCode !== null) return done()
              child.once("exit", () => done())
              child.kill("SIGTERM")
              setTimeout(() => child.kill("SIGKILL"), 5_000).unref()
            })
        })
      }
    }
    child.stdout?.on("data", onData)
    child.stderr?.on("data", onData)
    child.once("exit", (code) => reject(new Error(`${args.join(" ")} exited (${code}): ${output}`)))
  })

const here = fileURLToPath(import.meta.url)
const nodeModule = createRequire(import.meta.url)

/** The upstream Simulator in a process of its own. */
const startUpstream = (options: Simulator.Options): Promise<Server> =>
  startProcess(process.execPath, [here, "upstream", JSON.stringify(options)], {}, /upstream (http:\/\/\S+)/, (m) => m[1]!)

/** The bare Node proxy in front of `upstream`, in a process of its own. */
const startProxy = (upstream: string): Promise<Server> =>
  startProcess(process.execPath, [here, "proxy", upstream], {}, /proxy (http:\/\/\S+)/, (m) => m[1]!)

/** `weatherproof serve` over one account at `upstream`, with `flags`. */
const startWeatherproof = (upstream: string, flags: ReadonlyArray<string> = []): Promise<Server> =>
  startProcess(
    process.execPath,
    [Processes.cliEntry, "serve", "--port", "0", ...flags],
    { DEEPSEEK_API_KEY: Simulator.defaultKey, DEEPSEEK_BASE_URL: upstream },
    /listening on (http:\/\/127\.0\.0\.1:\d+)/,
    (m) => m[1]!
  )

/** Makes every server of the process listen on 127.0.0.1 whatever host it asked for. */
const loopbackOnly = `data:text/javascript,${
  encodeURIComponent(`
import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "object" && args[0] !== null) return listen.call(this, { ...args[0], host: "127.0.0.1" }, ...args.slice(1));
  const callback = args.find((a) => typeof a === "function");
  return listen.call(this, { port: Number(args[0]), host: "127.0.0.1" }, ...(callback ? [callback] : []));
};`)
}`

const freePort = (): Promise<number> =>
  new Promise((resolve) => {
    const server = Net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address() as Net.AddressInfo
      server.close(() => resolve(port))
    })
  })

const startPortkey = async (): Promise<Server> => {
  const port = await freePort()
  return startProcess(
    process.execPath,
    ["--import", loopbackOnly, nodeModule.resolve("@portkey-ai/gateway/build/start-server.js"), `--port=${port}`, "--headless"],
    { NODE_ENV: "production" },
    /Ready for connections/,
    () => `http://127.0.0.1:${port}`
  )
}

// --- one request ----------------------------------------------------------------------------------

/** Where a contender's requests go. */
interface Target {
  readonly name: string
  readonly url: string
  readonly headers: Record<string, string>
}

const direct = (upstream: string): Target => ({
  name: "direct",
  url: `${upstream}/v1/chat/completions`,
  headers: { authorization: `Bearer ${Simulator.defaultKey}` }
})

const throughWeatherproof = (gateway: string): Target => ({
  name: "weatherproof",
  url: `${gateway}/v1/chat/completions`,
  headers: { authorization: "Bearer any-client" }
})

const throughProxy = (proxy: string): Target => ({
  name: "bare Node proxy",
  url: `${proxy}/v1/chat/completions`,
  headers: { authorization: `Bearer ${Simulator.defaultKey}` }
})

const throughPortkey = (portkey: string, upstream: string, config?: unknown): Target => ({
  name: `Portkey ${portkeyVersion}`,
  url: `${portkey}/v1/chat/completions`,
  headers: {
    authorization: `Bearer ${Simulator.defaultKey}`,
    "x-portkey-provider": "openai",
    "x-portkey-custom-host": `${upstream}/v1`,
    ...(config === undefined ? {} : { "x-portkey-config": JSON.stringify(config) })
  }
})

interface Answer {
  readonly status: number
  readonly text: string
  /** From the send to the end of the body. */
  readonly ms: number
  /**
   * From the send to the first `data:` event with content (text or reasoning), for a stream that
   * had one: what a client shows first. (An opening chunk with a role and an empty content is no
   * content: weatherproof holds it until content comes, so that a cut right after it is retried.)
   */
  readonly firstEventMs: number | undefined
}

/** A stream event's text or reasoning, not empty. */
const contentEvent = /data: ?\{.*"(?:reasoning_)?content":"[^"]/

const send = async (target: Target, body: unknown, dispatcher: Agent): Promise<Answer> => {
  const start = performance.now()
  const response = await request(target.url, {
    method: "POST",
    headers: { "content-type": "application/json", ...target.headers },
    body: JSON.stringify(body),
    dispatcher
  })
  let text = ""
  let firstEventMs: number | undefined
  for await (const part of response.body) {
    text += (part as Buffer).toString("utf8")
    if (firstEventMs === undefined && contentEvent.test(text)) firstEventMs = performance.now() - start
  }
  return { status: response.statusCode, text, ms: performance.now() - start, firstEventMs }
}

const ask = (content: string, extra: Record<string, unknown> = {}) => ({
  model,
  messages: [{ role: "user", content }],
  ...extra
})

/** A whole, correct answer: the JSON completion, or a stream to `[DONE]` with no error event. */
const answered = (answer: Answer, stream: boolean): boolean =>
  answer.status === 200 && (stream
    ? answer.text.includes("data: [DONE]") && !answer.text.includes("\"error\"")
    : answer.text.includes("\"choices\""))

// --- the cells ----------------------------------------------------------------------------------

interface Run {
  readonly latencies: ReadonlyArray<number>
  readonly firstEvents: ReadonlyArray<number>
  readonly failures: number
  readonly perSecond: number
}

/** `clients` loops sending for `seconds` over `dispatcher`. */
const load = async (target: Target, clients: number, seconds: number, stream: boolean, dispatcher: Agent): Promise<Run> => {
  const latencies: Array<number> = []
  const firstEvents: Array<number> = []
  let failures = 0
  let sent = 0
  const start = performance.now()
  const end = start + seconds * 1000
  const loop = async () => {
    while (performance.now() < end) {
      const body = ask(`bench ${sent++}`, stream ? { stream: true } : {})
      try {
        const answer = await send(target, body, dispatcher)
        if (!answered(answer, stream)) failures++
        else {
          latencies.push(answer.ms)
          if (answer.firstEventMs !== undefined) firstEvents.push(answer.firstEventMs)
        }
      } catch {
        failures++
      }
    }
  }
  await Promise.all(Array.from({ length: clients }, loop))
  const elapsed = (performance.now() - start) / 1000
  return { latencies, firstEvents, failures, perSecond: latencies.length / elapsed }
}

/** `requests` requests, every other one a stream, `clients` at a time, whatever their answers. */
const warmUp = async (target: Target, requests: number, clients: number): Promise<void> => {
  const dispatcher = new Agent({ keepAliveTimeout: 30_000, connections: clients })
  let sent = 0
  const loop = async () => {
    while (sent < requests) {
      const n = sent++
      await send(target, ask(`warm-up ${n}`, n % 2 === 0 ? {} : { stream: true }), dispatcher).catch(() => undefined)
    }
  }
  try {
    await Promise.all(Array.from({ length: clients }, loop))
  } finally {
    await dispatcher.close()
  }
}

const percentile = (values: ReadonlyArray<number>, p: number): number => {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(p * (sorted.length - 1)))]!
}

const median = (values: ReadonlyArray<number>): number => percentile(values, 0.5)

/** One contender at one client count: medians over the rounds. */
export interface Cell {
  readonly contender: string
  readonly clients: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly perSecond: number
  /** CPU time the contender's own process spent per non-stream answer (the upstream's, for direct). */
  readonly cpuMsPerAnswer: number
  readonly firstEventP50Ms: number
  readonly firstEventP99Ms: number
  /** Requests that did not end in a whole answer (over every round), non-stream and stream. */
  readonly failures: number
  readonly streamFailures: number
  readonly answers: number
}

interface Round {
  readonly json: Run
  readonly stream: Run
  readonly cpuMsPerAnswer: number
}

/** `server` is the process whose CPU the round reports: the gateway's, or the upstream's for direct. */
const measureRound = async (target: Target, server: Server, clients: number): Promise<Round> => {
  // One pool for the cell: the warm-up opens the connections the measured requests then reuse.
  const dispatcher = new Agent({ keepAliveTimeout: 30_000, connections: clients })
  try {
    await load(target, clients, settings.warmUpSeconds, false, dispatcher)
    const cpuBefore = server.cpuMs()
    const json = await load(target, clients, settings.seconds, false, dispatcher)
    const cpuMsPerAnswer = (server.cpuMs() - cpuBefore) / json.latencies.length
    const stream = await load(target, clients, settings.streamSeconds, true, dispatcher)
    return { json, stream, cpuMsPerAnswer }
  } finally {
    await dispatcher.close()
  }
}

const cellOf = (runs: ReadonlyArray<Round>): Omit<Cell, "contender" | "clients"> => {
  const of = (f: (run: Round) => number) => median(runs.map(f))
  return {
    p50Ms: of((r) => percentile(r.json.latencies, 0.5)),
    p99Ms: of((r) => percentile(r.json.latencies, 0.99)),
    perSecond: of((r) => r.json.perSecond),
    cpuMsPerAnswer: of((r) => r.cpuMsPerAnswer),
    firstEventP50Ms: of((r) => percentile(r.stream.firstEvents, 0.5)),
    firstEventP99Ms: of((r) => percentile(r.stream.firstEvents, 0.99)),
    failures: runs.reduce((n, r) => n + r.json.failures, 0),
    streamFailures: runs.reduce((n, r) => n + r.stream.failures, 0),
    answers: runs.reduce((n, r) => n + r.json.latencies.length + r.stream.latencies.length, 0)
  }
}

/**
 * Every cell, contenders alternating within a client count so that a slow spell of the machine
 * does not fall on one of them only.
 */
const performance_ = async (log: (line: string) => void): Promise<ReadonlyArray<Cell>> => {
  const upstream = await startUpstream({
    limit: 100_000,
    queueDelay: settings.serviceMs,
    // Longer than any wait: no keep-alive bytes, so every contender gets the same bytes.
    keepAliveInterval: 60_000,
    chunkDelay: 1,
    cacheHitRatio: 0.5
  })
  // A known cap far above the load: the adaptive limiter's search is not what is measured here.
  const weatherproof = await startWeatherproof(upstream.url, ["--concurrency", "1024"])
  const portkey = await startPortkey()
  const proxy = await startProxy(upstream.url)
  try {
    const contenders: ReadonlyArray<readonly [Target, Server]> = [
      [direct(upstream.url), upstream],
      [throughWeatherproof(weatherproof.url), weatherproof],
      [throughPortkey(portkey.url, upstream.url), portkey],
      [throughProxy(proxy.url), proxy]
    ]
    const { jitWarmUpClients, jitWarmUpRequests } = settings
    log(`  warming each contender up: ${jitWarmUpRequests} requests, ${jitWarmUpClients} at a time…`)
    for (const [target] of contenders) await warmUp(target, jitWarmUpRequests, jitWarmUpClients)
    const cells: Array<Cell> = []
    for (const clients of settings.clients) {
      log(`  ${clients} client${clients === 1 ? "" : "s"}: ${settings.rounds} rounds of ${contenders.map(([t]) => t.name).join(", ")}…`)
      const rounds = contenders.map((): Array<Round> => [])
      for (let round = 0; round < settings.rounds; round++) {
        for (const [i, [target, server]] of contenders.entries()) rounds[i]!.push(await measureRound(target, server, clients))
      }
      contenders.forEach(([target], i) => cells.push({ contender: target.name, clients, ...cellOf(rounds[i]!) }))
    }
    return cells
  } finally {
    await Promise.all([weatherproof.stop(), portkey.stop(), proxy.stop(), upstream.stop()])
  }
}

// --- correctness probes -------------------------------------------------------------------------

/** One probe's outcome for one gateway: whether it behaved, and what the client saw. */
export interface Verdict {
  readonly ok: boolean
  readonly detail: string
}

export interface Probe {
  readonly name: string
  readonly weatherproof: Verdict
  readonly portkey: Verdict
}

const verdict = (ok: boolean, detail: string): Verdict => ({ ok, detail })

const describeFailure = (answer: Answer): string =>
  answer.status !== 200
    ? `HTTP ${answer.status}: ${answer.text.replace(/\s+/g, " ").slice(0, 80)}`
    : answer.text.trim() === ""
    ? "an empty 200"
    : `200: ${answer.text.replace(/\s+/g, " ").slice(0, 80)}`

/** A server for the length of a scope. */
const started = (start: () => Promise<Server>) =>
  Effect.acquireRelease(Effect.promise(start), (server) => Effect.promise(() => server.stop()))

/** A probe: an upstream's behaviour, and what a client of a gateway in front of it should see. */
interface ProbeSpec {
  readonly name: string
  readonly simulator: Simulator.Options
  readonly probe: (target: Target) => Promise<Verdict>
  readonly weatherproofFlags?: ReadonlyArray<string>
  readonly portkeyConfig?: unknown
}

/**
 * Runs a probe against both gateways, each freshly started (a probe may crash one), in front of a
 * fresh in-process Simulator.
 */
const probeBoth = (spec: ProbeSpec): Promise<Probe> =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const sim = yield* Simulator.make(spec.simulator)
    const attempt = (target: Target, server: Server) =>
      Effect.promise(async () => {
        const outcome = await spec.probe(target).catch((error: unknown) => verdict(false, `client error: ${String(error)}`))
        const exited = server.exited()
        return exited === undefined ? outcome : verdict(false, `${outcome.detail}; the gateway process died (${exited})`)
      })
    const weatherproof = yield* started(() => startWeatherproof(sim.baseUrl, spec.weatherproofFlags))
    const ours = yield* attempt(throughWeatherproof(weatherproof.url), weatherproof)
    yield* sim.setFaults(spec.simulator.faults ?? {})
    const portkey = yield* started(startPortkey)
    const theirs = yield* attempt(throughPortkey(portkey.url, sim.baseUrl, spec.portkeyConfig), portkey)
    return { name: spec.name, weatherproof: ours, portkey: theirs }
  })))

/** A client that gives up on a connection silent for `idleMs` (headers or body). */
const impatient = (idleMs: number) => new Agent({ headersTimeout: idleMs, bodyTimeout: idleMs })

const probes: ReadonlyArray<ProbeSpec> = [
  {
    name: "keep-alive: a call queued 1.5 s upstream, the client's idle timeout 0.5 s (non-stream)",
    simulator: { queueDelay: 1_500, keepAliveInterval: 50 },
    weatherproofFlags: ["--keep-alive-interval", "200ms"],
    probe: async (target) => {
      const answer = await send(target, ask("patience"), impatient(500))
      return answered(answer, false) ? verdict(true, "answered, kept alive meanwhile") : verdict(false, describeFailure(answer))
    }
  },
  {
    name: "keep-alive: the same, streamed",
    simulator: { queueDelay: 1_500, keepAliveInterval: 50 },
    weatherproofFlags: ["--keep-alive-interval", "200ms"],
    probe: async (target) => {
      const answer = await send(target, ask("patience", { stream: true }), impatient(500))
      return answered(answer, true) ? verdict(true, "whole stream, kept alive meanwhile") : verdict(false, describeFailure(answer))
    }
  },
  {
    name: "cut stream: the upstream cuts a stream after its first content",
    simulator: { faults: { script: ["cut"] }, chunkDelay: 5 },
    probe: async (target) => {
      const answer = await send(target, ask("a stream that will be cut", { stream: true }), new Agent())
      const content = answer.text.includes("echo:")
      if (answer.status !== 200) return verdict(false, describeFailure(answer))
      if (answer.text.includes("data: [DONE]")) return verdict(false, "ended with [DONE]: looks complete, but is cut")
      return answer.text.includes("\"error\"")
        ? verdict(true, `${content ? "partial content, then" : ""} an error event, no [DONE]`)
        : verdict(false, "ended without [DONE] and without an error: a silent truncation")
    }
  },
  {
    name: "cut body: the upstream cuts a non-stream JSON body halfway",
    simulator: { faults: { script: ["cut"] } },
    probe: async (target) => {
      const answer = await send(target, ask("a body that will be cut"), new Agent())
      if (answered(answer, false)) return verdict(true, "retried: a whole answer")
      return answer.status === 200 ? verdict(false, describeFailure(answer)) : verdict(true, `an error status (${answer.status})`)
    }
  },
  {
    name: "reasoning: `thinking` sent, `reasoning_content` returned (non-stream)",
    simulator: {},
    probe: async (target) => {
      const answer = await send(target, ask("think first", { thinking: { type: "enabled" } }), new Agent())
      if (!answered(answer, false)) return verdict(false, describeFailure(answer))
      return answer.text.includes("\"reasoning_content\":\"think:think first\"")
        ? verdict(true, "reasoning_content intact")
        : verdict(false, "no reasoning_content (the `thinking` field was not sent on)")
    }
  },
  {
    name: "reasoning: the same, streamed",
    simulator: {},
    probe: async (target) => {
      const answer = await send(target, ask("think first", { thinking: { type: "enabled" }, stream: true }), new Agent())
      if (!answered(answer, true)) return verdict(false, describeFailure(answer))
      return answer.text.includes("\"reasoning_content\"")
        ? verdict(true, "reasoning_content deltas intact")
        : verdict(false, "no reasoning_content deltas")
    }
  },
  {
    name: "cache usage: `prompt_cache_hit_tokens` / `_miss_tokens`, `reasoning_tokens`",
    simulator: { cacheHitRatio: 0.5 },
    probe: async (target) => {
      const answer = await send(target, ask("a prompt long enough to be cached in part"), new Agent())
      if (!answered(answer, false)) return verdict(false, describeFailure(answer))
      const usage = (JSON.parse(answer.text) as { usage?: Record<string, unknown> }).usage ?? {}
      const missing = ["prompt_cache_hit_tokens", "prompt_cache_miss_tokens", "completion_tokens_details"].filter((field) => !(field in usage))
      return missing.length === 0 ? verdict(true, "every usage field intact") : verdict(false, `usage without ${missing.join(", ")}`)
    }
  },
  ...[undefined, { retry: { attempts: 5, on_status_codes: [429] } }].map((portkeyConfig): ProbeSpec => ({
    name: `burst: 80 clients over an upstream limit of 8${portkeyConfig === undefined ? "" : " (Portkey with its retry config, 5 attempts on 429)"}`,
    simulator: { limit: 8, queueDelay: 200 },
    portkeyConfig,
    probe: async (target) => {
      const dispatcher = new Agent({ connections: 80 })
      const start = performance.now()
      const answers = await Promise.all(Array.from({ length: 80 }, (_, i) => send(target, ask(`burst ${i}`), dispatcher)))
      const seconds = ((performance.now() - start) / 1000).toFixed(1)
      const failed = answers.filter((answer) => !answered(answer, false))
      const statuses = [...new Set(failed.map((answer) => answer.status))].join(", ")
      return failed.length === 0
        ? verdict(true, `80/80 answered in ${seconds} s`)
        : verdict(false, `${failed.length} of 80 failed (HTTP ${statuses}) in ${seconds} s`)
    }
  }))
]

const correctness = async (log: (line: string) => void): Promise<ReadonlyArray<Probe>> => {
  const results: Array<Probe> = []
  for (const probe of probes) {
    const result = await probeBoth(probe)
    log(`  ${result.name}`)
    results.push(result)
  }
  return results
}

// --- the report ---------------------------------------------------------------------------------

export interface GatewayReport {
  readonly cells: ReadonlyArray<Cell>
  readonly probes: ReadonlyArray<Probe>
}

/** Runs the benchmark; `log` hears of each step. */
export const run = (log: (line: string) => void): Effect.Effect<GatewayReport> =>
  Effect.promise(async () => {
    log("performance:")
    const cells = await performance_(log)
    log("correctness probes:")
    const probesRun = await correctness(log)
    return { cells, probes: probesRun }
  })

// --- `node gateway.js upstream <options>` and `node gateway.js proxy <upstream>`: their processes ------

/** The bare proxy: each request sent on to `upstream` as it came, its answer piped back untouched. */
const serveProxy = (upstream: string): void => {
  const dispatcher = new Agent({ keepAliveTimeout: 30_000 })
  const server = Http.createServer((incoming, outgoing) => {
    const { connection: _, host: __, ...headers } = incoming.headers
    request(`${upstream}${incoming.url ?? "/"}`, { method: incoming.method as "POST", headers, body: incoming, dispatcher }).then(
      (answer) => {
        outgoing.writeHead(answer.statusCode, answer.headers as Http.OutgoingHttpHeaders)
        answer.body.pipe(outgoing)
      },
      () => outgoing.writeHead(502).end()
    )
  })
  server.listen(0, "127.0.0.1", () => console.log(`proxy http://127.0.0.1:${(server.address() as Net.AddressInfo).port}`))
}

const isEntryPoint = (): boolean => {
  const script = process.argv[1]
  return script !== undefined && realpathSync(script) === realpathSync(here)
}

if (isEntryPoint() && process.argv[2] === "upstream") {
  const options = JSON.parse(process.argv[3] ?? "{}") as Simulator.Options
  Effect.runFork(Effect.scoped(Effect.gen(function*() {
    const sim = yield* Simulator.make(options)
    console.log(`upstream ${sim.baseUrl}`)
    yield* Effect.never
  })))
  process.once("SIGTERM", () => process.exit(0))
}

if (isEntryPoint() && process.argv[2] === "proxy") {
  serveProxy(process.argv[3]!)
  process.once("SIGTERM", () => process.exit(0))
}
