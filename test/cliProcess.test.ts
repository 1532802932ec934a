/**
 * The CLI as a real process: two runs on one output, signals, lazy loading. The CLI is bundled
 * once, as `npm run build` bundles it, into a temporary directory with no `node_modules` (the
 * bundle needs none), and every child is waited for with a bound.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import { hostname, tmpdir } from "node:os"
import * as NodePath from "node:path"
import { fileURLToPath } from "node:url"
import { v8Flags } from "../app/cli/v8Tiers.js"
import { bundleCli } from "../scripts/bundleCli.js"
import * as Simulator from "../src/Simulator.js"
import { chatLine } from "./support/chatLine.js"
import { freePort } from "./support/ports.js"
import { redisServer, redisServerPresent, skipMessage } from "./support/redisServer.js"

const root = fileURLToPath(new URL("..", import.meta.url))
let build = ""
let entry = ""
/** The sources (`src/Batch.ts`, `node_modules/undici/…`) in each file of the bundle, by its path. */
let sourcesByFile = new Map<string, ReadonlyArray<string>>()

beforeAll(async () => {
  build = NodeFs.mkdtempSync(NodePath.join(tmpdir(), "weatherproof-cli-"))
  const { metafile } = await bundleCli(build)
  entry = NodePath.join(build, "weatherproof.js")
  sourcesByFile = new Map(
    Object.entries(metafile.outputs).map(([file, output]) => [NodePath.resolve(root, file), Object.keys(output.inputs)])
  )
}, 120_000)

afterAll(() => {
  if (build !== "") NodeFs.rmSync(build, { recursive: true, force: true })
})

interface Ended {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

interface Running {
  readonly child: ChildProcess
  readonly stdout: () => string
  readonly stderr: () => string
  /** The end of the process, or a failure (and the process killed) after `timeoutMs`. */
  readonly ended: (timeoutMs: number) => Effect.Effect<Ended>
}

interface StartOptions {
  /** Node's own flags, before the script. */
  readonly nodeOptions?: ReadonlyArray<string> | undefined
  /** Default: the bundle's entry. */
  readonly script?: string | undefined
  /**
   * A descriptor (standard input, or a fourth one) that is a pipe the test writes to, through
   * `child.stdio[fd]`: Node makes it a socket. Default none: standard input is /dev/null.
   */
  readonly inputFd?: 0 | 3
}

/** Starts the CLI with `args`; the environment names the simulator's account and nothing else of ours. */
const start = (
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  { inputFd, nodeOptions = [], script = entry }: StartOptions = {}
): Running => {
  const child = spawn(process.execPath, [...nodeOptions, script, ...args], {
    env: { PATH: process.env["PATH"] ?? "", ...env },
    stdio: [inputFd === 0 ? "pipe" : "ignore", "pipe", "pipe", ...(inputFd === 3 ? ["pipe" as const] : [])]
  })
  let stdout = ""
  let stderr = ""
  child.stdout!.on("data", (data: Buffer) => (stdout += data.toString()))
  child.stderr!.on("data", (data: Buffer) => (stderr += data.toString()))
  const exit = new Promise<Ended>((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }))
  )
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    ended: (timeoutMs) =>
      Effect.promise(() =>
        Promise.race([
          exit,
          new Promise<never>((_, reject) =>
            setTimeout(() => {
              child.kill("SIGKILL")
              reject(new Error(`the CLI did not end within ${timeoutMs} ms; stderr: ${stderr}`))
            }, timeoutMs).unref()
          )
        ])
      )
  }
}

/** Polls `condition` every 20 ms, failing after `timeoutMs`. */
const waitFor = (what: string, condition: Effect.Effect<boolean, unknown>, timeoutMs = 15_000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    while (!(yield* Effect.orElseSucceed(condition, () => false))) {
      if (Date.now() > deadline) return yield* Effect.die(new Error(`timed out waiting for ${what}`))
      yield* Effect.sleep("20 millis")
    }
  })

interface Line {
  readonly custom_id: string
  readonly error: unknown
}

/** The lines of an output the CLI has written whole: a read while it appends may end in part of one. */
const outputLines = (text: string): ReadonlyArray<Line> =>
  text.split("\n").slice(0, -1).map((line) => JSON.parse(line) as Line)

/** A simulator, a workspace with `count` input lines, and what the CLI needs to reach the simulator. */
const setup = (count: number, options: Simulator.Options) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const simulator = yield* Simulator.make(options)
    const dir = yield* fs.realPath(yield* fs.makeTempDirectoryScoped({ prefix: "cli-process-" }))
    const input = `${dir}/in.jsonl`
    const output = `${dir}/out.jsonl`
    yield* fs.writeFileString(input, Array.from({ length: count }, (_, i) => `${chatLine(i)}\n`).join(""))
    const readOutput = Effect.map(Effect.orElseSucceed(fs.readFileString(output), () => ""), outputLines)
    const env = { DEEPSEEK_API_KEY: Simulator.defaultKey, DEEPSEEK_BASE_URL: simulator.baseUrl }
    return { fs, simulator, dir, input, output, readOutput, env, lock: `${output}.lock` }
  })

/** A FIFO made in `dir`: an input read once, as a shell's `<(…)` is. */
const fifoIn = (dir: string): string => {
  const fifo = NodePath.join(dir, "in.fifo")
  expect(spawnSync("mkfifo", [fifo]).status).toBe(0)
  return fifo
}

/** Whether a thread of process `pid` waits in an open of a FIFO for the other end (Linux's `wait_for_partner`). */
const waitsForFifoWriter = (pid: number): boolean =>
  NodeFs.readdirSync(`/proc/${pid}/task`).some((task) => NodeFs.readFileSync(`/proc/${pid}/task/${task}/wchan`, "utf8") === "wait_for_partner")

/**
 * A workspace for a batch of `count` lines stopped mid-run, and the command line of that batch
 * (8 at a time, with a summary file). Calls are slow until `stopped()`, so the run cannot end
 * before its stop whatever the machine's load, and the drain after it is quick.
 */
const batchSlowUntilStopped = (count: number) =>
  Effect.gen(function*() {
    let stop = false
    const ws = yield* setup(count, { queueDelay: () => stop ? "10 millis" : "150 millis" })
    const summaryPath = `${ws.dir}/summary.json`
    const args = ["batch", ws.input, "--output", ws.output, "--concurrency", "8", "--summary", summaryPath]
    return { ws, summaryPath, args, stopped: () => void (stop = true) }
  })

/** Each id once; returns how many. */
const expectOnceEach = (lines: ReadonlyArray<Line>) => {
  const ids = lines.map((l) => l.custom_id)
  expect(new Set(ids).size).toBe(ids.length)
  expect(lines.every((l) => l.error === null)).toBe(true)
  return ids.length
}

describe("weatherproof batch as a process", () => {
  it.live("a second run on the same output is refused at once with exit 2 and sends nothing; the first completes", () =>
    Effect.gen(function*() {
      // Each run has its own account, so the simulator tells their requests apart. The first run's
      // calls are slow until the second has ended, so the first is surely still running then.
      let secondEnded = false
      const ws = yield* setup(30, {
        accounts: { first: { keys: ["sk-sim-first"] }, second: { keys: ["sk-sim-second"] } },
        queueDelay: () => secondEnded ? "5 millis" : "1 second"
      })
      const env = (key: string) => ({ ...ws.env, DEEPSEEK_API_KEY: key })
      const first = start(["batch", ws.input, "--output", ws.output, "--concurrency", "2"], env("sk-sim-first"))
      yield* waitFor("the first run's lock", ws.fs.exists(ws.lock))
      // The second names the output through a symlink: the same file, the same lock.
      const alias = `${ws.dir}/alias.jsonl`
      yield* ws.fs.symlink(ws.output, alias)
      const second = yield* start(["batch", ws.input, "--output", alias], env("sk-sim-second")).ended(15_000)
      secondEnded = true
      expect(second.code).toBe(2)
      expect(second.stderr).toContain(`is in use by another batch run (pid ${first.child.pid} on host ${hostname()}, since `)
      expect(second.stderr).toContain("nothing was sent")
      expect(first.child.exitCode).toBeNull()

      const ended = yield* first.ended(30_000)
      expect(ended.code).toBe(0)
      expect(expectOnceEach(yield* ws.readOutput)).toBe(30)
      const stats = yield* ws.simulator.stats
      expect(stats.accounts["second"]?.requests).toBe(0)
      expect(stats.accounts["first"]?.completed).toBe(30)
      expect(yield* ws.fs.exists(ws.lock)).toBe(false)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("an upstream that cannot be connected to at start: exit 2 at once, naming it and where its URL came from, nothing written", () =>
    Effect.gen(function*() {
      const ws = yield* setup(5, {})
      const closed = yield* Effect.promise(freePort)
      const env = { ...ws.env, DEEPSEEK_BASE_URL: `http://127.0.0.1:${closed}` }
      // Before, the lines waited for the account's breaker up to --max-wait (30 minutes).
      const ended = yield* start(["batch", ws.input, "--output", ws.output], env).ended(15_000)
      expect(ended.code).toBe(2)
      expect(ended.stderr).toContain(
        `weatherproof: cannot connect to the upstream of any account: account default: http://127.0.0.1:${closed} ` +
          `(connect ECONNREFUSED 127.0.0.1:${closed}); nothing was sent. Check DEEPSEEK_BASE_URL and the network`
      )
      expect(yield* ws.fs.exists(ws.output)).toBe(false)
      expect(yield* ws.fs.exists(ws.lock)).toBe(false)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), 30_000)

  it.live("sends the balance preflight before its calls (the bundle's undici has its request API)", () =>
    Effect.gen(function*() {
      const ws = yield* setup(2, { queueDelay: "1 millis" })
      const ended = yield* start(["batch", ws.input, "-o", ws.output], ws.env).ended(20_000)
      expect(ended.code).toBe(0)
      const stats = yield* ws.simulator.stats
      // A failed preflight proves nothing and the account serves: only the count of 200s tells.
      expect({ completed: stats.completed, ok: stats.byStatus[200] }).toEqual({ completed: 2, ok: 3 })
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("reads its input from a FIFO (a shell's <(…) is a pipe too): every line answered, progress lines counting the lines done", () =>
    Effect.gen(function*() {
      const ws = yield* setup(30, { queueDelay: "20 millis" })
      const fifo = fifoIn(ws.dir)
      const text = yield* ws.fs.readFileString(ws.input)
      const args = ["batch", fifo, "--output", ws.output, "--concurrency", "4", "--progress-every", "100ms"]
      const running = start(args, ws.env)
      // Opening the FIFO to write waits for the CLI to open it to read.
      yield* Effect.promise(() => NodeFs.promises.writeFile(fifo, text))
      const ended = yield* running.ended(20_000)
      expect(ended.stderr).not.toContain("ESPIPE")
      expect(ended.code).toBe(0)
      const lines = yield* ws.readOutput
      expect(new Set(lines.map((line) => line.custom_id)).size).toBe(30)
      expect(lines.every((line) => line.error === null)).toBe(true)
      expect(ended.stderr).toMatch(/weatherproof: \d+ lines done \(\d+ ok, 0 failed, 0 skipped\) in \d+ms/)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  for (const [path, inputFd] of [["/dev/stdin", 0], ["/dev/fd/3", 3]] as const) {
    it.live(`reads ${path} when it is a socket, as a pipe a Node parent makes is (Linux opens no socket by path: ENXIO)`, () =>
      Effect.gen(function*() {
        const ws = yield* setup(20, { queueDelay: "1 millis" })
        const run = start(["batch", path, "--output", ws.output], ws.env, { inputFd })
        const input = run.child.stdio[inputFd] as NodeJS.WritableStream
        input.end(yield* ws.fs.readFileString(ws.input))
        const ended = yield* run.ended(20_000)
        expect(ended.stderr).not.toContain("ENXIO")
        expect(ended.code).toBe(0)
        expect(expectOnceEach(yield* ws.readOutput)).toBe(20)
      }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))
  }

  it.live("stopped while reading a FIFO, says that a resume must give the same input again", () =>
    Effect.gen(function*() {
      const ws = yield* setup(10, { queueDelay: "1 millis" })
      const fifo = fifoIn(ws.dir)
      const run = start(["batch", fifo, "--output", ws.output], ws.env)
      // The writer keeps the FIFO open after its lines: the run waits for more until its stop.
      const writer = NodeFs.createWriteStream(fifo)
      writer.write(yield* ws.fs.readFileString(ws.input))
      yield* waitFor("the lines written", Effect.map(ws.readOutput, (lines) => lines.length === 10))
      run.child.kill("SIGTERM")
      const ended = yield* run.ended(20_000)
      writer.destroy()
      expect(ended.code).toBe(143)
      expect(ended.stderr).toContain(
        `to resume, run the same command again:\n  weatherproof batch ${fifo} --output ${ws.output}\n` +
          `  with the same input given again (${fifo} is not a file: it was read once)`
      )
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("stopped while its FIFO has no writer yet, exits at once (its open waited on the thread pool, which held the exit until a writer came)", () =>
    Effect.gen(function*() {
      const ws = yield* setup(1, { queueDelay: "1 millis" })
      const fifo = fifoIn(ws.dir)
      const run = start(["batch", fifo, "--output", ws.output], ws.env)
      yield* waitFor("the CLI's open of its FIFO waiting for a writer", Effect.try(() => waitsForFifoWriter(run.child.pid!)))
      run.child.kill("SIGTERM")
      const ended = yield* run.ended(10_000)
      expect(ended.code).toBe(143)
      expect(ended.stderr).toContain("interrupted by SIGTERM: 0 lines written in this run")
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("takes over a stale lock of a process that is gone, saying so on stderr in a line that carries its date", () =>
    Effect.gen(function*() {
      const ws = yield* setup(3, { queueDelay: "1 millis" })
      const dead = spawnSync(process.execPath, ["-e", ""]).pid!
      yield* ws.fs.writeFileString(ws.lock, JSON.stringify({ pid: dead, host: hostname(), since: "2020-01-01T00:00:00.000Z" }))
      const ended = yield* start(["batch", ws.input, "-o", ws.output], ws.env).ended(20_000)
      expect(ended.code).toBe(0)
      expect(ended.stderr).toContain(`took over the lock ${ws.lock} left by pid ${dead}`)
      // A log kept for days (a service's, a file's) says when, not only at what time of day.
      expect(ended.stderr).toMatch(/^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] WARN \(#\d+\): Batch: took over the lock /m)
      expect(ended.stdout).not.toContain("took over")
      expect(expectOnceEach(yield* ws.readOutput)).toBe(3)
      expect(yield* ws.fs.exists(ws.lock)).toBe(false)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("SIGTERM once every line is on the wire: the drain writes them all, and the run says nothing is left to resume", () =>
    Effect.gen(function*() {
      // Answers slow enough that the stop comes before any, however loaded the machine.
      const ws = yield* setup(3, { queueDelay: "2 seconds" })
      const summaryPath = `${ws.dir}/summary.json`
      const run = start(["batch", ws.input, "--output", ws.output, "--summary", summaryPath], ws.env)
      yield* waitFor("every line on the wire", Effect.map(ws.simulator.stats, (stats) => stats.requests >= 3))
      run.child.kill("SIGTERM")
      const ended = yield* run.ended(20_000)
      expect(ended.code).toBe(143)
      expect(ended.stderr).toContain(
        "interrupted by SIGTERM: 3 lines written in this run, and every line of the input has its result in the output: nothing is left to resume"
      )
      expect(ended.stderr).not.toContain("to resume, run the same command again")
      expect(ended.stdout).toContain("stopped:   interrupted once every line of the input was read; each one's result is in the output")
      expect(JSON.parse(yield* ws.fs.readFileString(summaryPath))).toMatchObject({ interrupted: true, complete: true, succeeded: 3 })
      expect(expectOnceEach(yield* ws.readOutput)).toBe(3)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("SIGTERM drains the calls in flight, exits 143 with an interrupted summary; the same command resumes", () =>
    Effect.gen(function*() {
      // More lines than the batch reads ahead (256): the requests on the wire at the stop drain,
      // the lines read that wait in the client's limiter end at once, the rest are left for the resume.
      const count = 400
      const { args, stopped, summaryPath, ws } = yield* batchSlowUntilStopped(count)
      const run = start(args, ws.env)
      yield* waitFor("a few answers", Effect.map(ws.readOutput, (lines) => lines.length >= 4))
      run.child.kill("SIGTERM")
      stopped()
      const ended = yield* run.ended(20_000)
      expect(ended.code).toBe(143)
      expect(ended.stderr).toContain("SIGTERM: stopping; nothing more is sent")
      expect(ended.stderr).toContain(`to resume, run the same command again:\n  weatherproof batch ${ws.input} --output ${ws.output}`)
      expect(ended.stdout).toContain("stopped:   interrupted; the lines not answered are not in the output (a rerun sends them)")
      const summary = JSON.parse(yield* ws.fs.readFileString(summaryPath))
      const written = expectOnceEach(yield* ws.readOutput)
      expect(summary).toMatchObject({ interrupted: true, complete: false, succeeded: written, failed: 0 })
      expect(written).toBeLessThan(count)
      // Drained: every request sent was answered and written, none billed for nothing.
      expect((yield* ws.simulator.stats).completed).toBe(written)
      expect(yield* ws.fs.exists(ws.lock)).toBe(false)

      const resumed = yield* start(args, ws.env).ended(30_000)
      expect(resumed.code).toBe(0)
      expect(JSON.parse(yield* ws.fs.readFileString(summaryPath))).toMatchObject({
        interrupted: false,
        complete: true,
        skipped: written,
        succeeded: count - written
      })
      expect(expectOnceEach(yield* ws.readOutput)).toBe(count)
      expect((yield* ws.simulator.stats).completed).toBe(count)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("a second signal stops at once: the calls in flight are dropped, the lock removed", () =>
    Effect.gen(function*() {
      const ws = yield* setup(8, { queueDelay: "20 seconds" })
      const run = start(["batch", ws.input, "-o", ws.output, "--concurrency", "4"], ws.env)
      yield* waitFor("4 calls in flight", Effect.map(ws.simulator.stats, (s) => s.accepted >= 4))
      run.child.kill("SIGINT")
      yield* waitFor("the drain to start", Effect.sync(() => run.stderr().includes("stopping;")))
      const signalled = Date.now()
      run.child.kill("SIGINT")
      const ended = yield* run.ended(10_000)
      expect(Date.now() - signalled).toBeLessThan(5_000)
      expect(ended.code).toBe(130)
      expect(ended.stderr).toContain("stopping now")
      expect(ended.stderr).toContain("interrupted by SIGINT: 0 lines written")
      expect(yield* ws.readOutput).toEqual([])
      expect(yield* ws.fs.exists(ws.lock)).toBe(false)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("with no terminal (under nohup, say) SIGHUP is ignored, with a note: the run goes on to the end", () =>
    Effect.gen(function*() {
      const ws = yield* setup(30, { queueDelay: "100 millis" })
      const run = start(["batch", ws.input, "-o", ws.output, "--concurrency", "3"], ws.env)
      yield* waitFor("an answer", Effect.map(ws.readOutput, (lines) => lines.length >= 1))
      run.child.kill("SIGHUP")
      const ended = yield* run.ended(30_000)
      expect(ended.stderr).toContain("weatherproof: SIGHUP ignored: no terminal of this process hung up (SIGTERM or SIGINT stops it)")
      expect(ended.code).toBe(0)
      expect(expectOnceEach(yield* ws.readOutput)).toBe(30)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("SIGINT mid-run exits 130 after writing what was answered", () =>
    Effect.gen(function*() {
      let signalled = false
      const ws = yield* setup(30, { queueDelay: () => signalled ? "5 millis" : "300 millis" })
      const run = start(["batch", ws.input, "-o", ws.output, "--concurrency", "3", "--drain-timeout", "5s"], ws.env)
      yield* waitFor("an answer", Effect.map(ws.readOutput, (lines) => lines.length >= 1))
      run.child.kill("SIGINT")
      signalled = true
      const ended = yield* run.ended(20_000)
      expect(ended.code).toBe(130)
      expect(ended.stderr).toContain("get up to 5s to finish")
      expect(ended.stderr).toContain("--drain-timeout 5s")
      const written = expectOnceEach(yield* ws.readOutput)
      expect((yield* ws.simulator.stats).completed).toBe(written)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))
})

describe("weatherproof serve as a process", () => {
  it.live("serve --max-body-mib 1: a body over 1 MiB is a 400 naming the limit and reaches no upstream; one under it is answered", () =>
    Effect.gen(function*() {
      const simulator = yield* Simulator.make()
      const env = { DEEPSEEK_API_KEY: Simulator.defaultKey, DEEPSEEK_BASE_URL: simulator.baseUrl }
      const serve = start(["serve", "--port", "0", "--max-body-mib", "1"], env)
      yield* Effect.addFinalizer(() => Effect.sync(() => serve.child.kill("SIGKILL")))
      yield* waitFor("the gateway to listen", Effect.sync(() => /listening on (http:\/\/[\d.:]+)/.test(serve.stdout())))
      const url = /listening on (http:\/\/[\d.:]+)/.exec(serve.stdout())![1]!
      // The long text in the system message: the Simulator echoes the user's, a token at a time.
      const post = (system: string) =>
        Effect.promise(() =>
          fetch(`${url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
              model: "deepseek-v4-flash",
              messages: [{ role: "system", content: system }, { role: "user", content: "hi" }]
            })
          }).then(async (response) => ({ status: response.status, body: await response.json() as { error?: { message: string } } }))
        )
      const large = yield* post("x".repeat(1024 * 1024))
      expect(large.status).toBe(400)
      expect(large.body.error?.message).toBe("the request body is larger than 1 MiB")
      expect((yield* simulator.stats).requests).toBe(0)
      const within = yield* post("x".repeat(1000 * 1000))
      expect(within.status).toBe(200)
    }).pipe(Effect.scoped))
})

describe.skipIf(!redisServerPresent)(skipMessage("weatherproof batch processes sharing one account through Redis"), () => {
  const processes = 3
  const linesEach = 40
  const cap = 8

  /** `processes` runs on one account, each with its own input and output of `linesEach` lines. */
  const startRuns = (ws: Effect.Effect.Success<ReturnType<typeof setup>>, redisUrl: string) =>
    Effect.forEach(Array.from({ length: processes }, (_, p) => p), (p) =>
      Effect.gen(function*() {
        const input = `${ws.dir}/in-${p}.jsonl`
        const output = `${ws.dir}/out-${p}.jsonl`
        const lines = Array.from({ length: linesEach }, (_, i) => `${chatLine(p * linesEach + i)}\n`)
        yield* ws.fs.writeFileString(input, lines.join(""))
        const run = start(["batch", input, "--output", output, "--redis", redisUrl], ws.env)
        const readOutput = Effect.map(ws.fs.readFileString(output), outputLines)
        return { run, readOutput }
      }))

  /** Every run exits 0 with each of its lines answered once. */
  const expectAllAnswered = (runs: Effect.Effect.Success<ReturnType<typeof startRuns>>) =>
    Effect.forEach(runs, ({ readOutput, run }) =>
      Effect.gen(function*() {
        const ended = yield* run.ended(60_000)
        expect(ended.code, ended.stderr).toBe(0)
        expect(expectOnceEach(yield* readOutput)).toBe(linesEach)
        return ended
      }))

  it.live("three runs share the account's cap: every line answered once, almost no 429s", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const ws = yield* setup(0, { limit: cap, queueDelay: "100 millis" })
      yield* expectAllAnswered(yield* startRuns(ws, server.url))
      const stats = yield* ws.simulator.stats
      expect(stats.completed).toBe(processes * linesEach)
      // One adaptive limit learnt together: the cap is found once, not once per process (three
      // runs without Redis draw about 23 here).
      expect(stats.rateLimited).toBeLessThanOrEqual(2 * processes)
      expect(stats.accounts["default"]!.maxInFlight).toBe(cap)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), 90_000)

  it.live("a Redis restart mid-run loses and duplicates no line; a run that noticed warns once and rejoins", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      const ws = yield* setup(0, { limit: cap, queueDelay: "300 millis" })
      const runs = yield* startRuns(ws, server.url)
      // Every run past its start (a Redis lost while a run connects is exit 2 with nothing sent).
      yield* waitFor("an answer written by every run", Effect.map(Effect.forEach(runs, (r) => r.readOutput), (outputs) => outputs.every((lines) => lines.length > 0)))
      yield* server.restart
      const ended = yield* expectAllAnswered(runs)
      const stats = yield* ws.simulator.stats
      expect(stats.completed).toBe(processes * linesEach)
      // A run's shared services that saw Redis fail (its lanes, its breaker) said so once each
      // and rejoined; the others never noticed the gap.
      const noticed = ended.filter(({ stderr }) => stderr.includes(" failed "))
      expect(noticed.length).toBeGreaterThan(0)
      for (const { stderr } of noticed) {
        const warnings = stderr.match(/WARN .* failed /g) ?? []
        expect(warnings.length).toBeLessThanOrEqual(2)
        expect(stderr.match(/INFO .* back\b/g)).toHaveLength(warnings.length)
      }
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), 90_000)

  it.live("a Redis that cannot be reached at start: exit 2 naming it without its password (with a warning that ps shows it), nothing sent", () =>
    Effect.gen(function*() {
      const ws = yield* setup(5, {})
      // The password in the user part, or as the `?password=` ioredis reads.
      for (const url of ["redis://user:s3cret@127.0.0.1:1", "redis://127.0.0.1:1/?password=s3cret"]) {
        const ended = yield* start(["batch", ws.input, "--output", ws.output, "--redis", url], ws.env).ended(30_000)
        expect(ended.code).toBe(2)
        expect(ended.stderr).toContain("Redis at redis://127.0.0.1:1")
        expect(ended.stderr).toContain("nothing was sent")
        expect(ended.stderr).toContain("the password in --redis can be read by other users of this host (ps)")
        expect(ended.stderr).not.toContain("s3cret")
      }
      // A prefix the lanes cannot use (they join keys with spaces) is a configuration error.
      const prefixed = yield* start(["batch", ws.input, "--output", ws.output, "--redis", "redis://127.0.0.1:1"], {
        ...ws.env,
        WEATHERPROOF_REDIS_PREFIX: "my team"
      }).ended(30_000)
      expect(prefixed.code).toBe(2)
      expect(prefixed.stderr).toContain(
        "WEATHERPROOF_REDIS_PREFIX: expected a non-empty prefix without braces or whitespace"
      )
      expect((yield* ws.simulator.stats).requests).toBe(0)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)), 60_000)
})

describe("weatherproof writes plain text where no terminal reads it", () => {
  it.live("--help and a usage error, written to pipes, carry no ANSI escape", () =>
    Effect.gen(function*() {
      const help = yield* start(["batch", "--help"], {}).ended(30_000)
      expect(help.code).toBe(0)
      expect(help.stdout).toContain("USAGE")
      expect(help.stdout).toContain("--drain-timeout")
      expect(help.stdout).not.toContain("\x1b")
      // @effect/cli's filler before each text flag's description is left out; the description stays.
      expect(help.stdout).not.toContain("A user-defined piece of text.")
      expect(help.stdout).toMatch(/^--max-wait duration\n\n {2}how long a call may wait/m)
      const usage = yield* start(["batch", "--output"], {}).ended(30_000)
      expect(usage.code).toBe(2)
      expect(usage.stderr).toContain("--output")
      expect(usage.stderr).not.toContain("\x1b")
    }))
})

/** util-linux's `script`, which runs a command in a pseudo-terminal (Debian's bsdutils, essential: always there). */
const scriptPresent = spawnSync("script", ["--version"]).status === 0

/** `words` as one POSIX shell command line (`script -c` runs it with the shell). */
const shellLine = (words: ReadonlyArray<string>): string => words.map((word) => `'${word.replaceAll("'", `'\\''`)}'`).join(" ")

const inTerminalTitle = scriptPresent
  ? "weatherproof in a terminal"
  : "weatherproof in a terminal: SKIPPED, script is absent (install the package bsdutils)"

/** The CLI run with `args` in a pseudo-terminal of its own (`script`), what it shows there collected. */
/** The runs in a terminal not ended yet: a test that fails before its run ends leaves none behind. */
const inTerminal = new Set<ChildProcess>()

const startInTerminal = (args: ReadonlyArray<string>, env: Record<string, string>) => {
  const child = spawn("script", ["-qefc", `exec ${shellLine([process.execPath, entry, ...args])}`, "/dev/null"], {
    env: { PATH: process.env["PATH"] ?? "", ...env },
    stdio: ["pipe", "pipe", "pipe"]
  })
  inTerminal.add(child)
  child.on("close", () => inTerminal.delete(child))
  let screen = ""
  child.stdout.on("data", (data: Buffer) => (screen += data.toString()))
  child.stderr.on("data", (data: Buffer) => (screen += data.toString()))
  const ended = new Promise<{ readonly code: number | null; readonly screen: string }>((resolve) => {
    const bound = setTimeout(() => child.kill("SIGKILL"), 60_000)
    child.on("close", (code) => {
      clearTimeout(bound)
      resolve({ code, screen })
    })
  })
  /** Keys typed at the terminal (`\x03`: Ctrl-C). */
  const type = (keys: string) => child.stdin.write(keys)
  return { child, screen: () => screen, type, ended: Effect.promise(() => ended) }
}

describe.skipIf(!scriptPresent)(inTerminalTitle, () => {
  // Its terminal gone, the run is hung up on (SIGHUP): it stops as a closed terminal stops it.
  afterEach(() => {
    for (const child of inTerminal) child.kill("SIGKILL")
  })

  // The progress bar is drawn only on a TTY, so the pipes of every other test never load it.
  it.live("batch and demo draw their progress bar and end as they do in a pipe", () =>
    Effect.gen(function*() {
      const ws = yield* setup(20, { queueDelay: "5 millis" })
      const batch = yield* startInTerminal(["batch", ws.input, "--output", ws.output], ws.env).ended
      expect(batch.screen).toContain("20/20 lines | 20 ok, 0 failed, 0 skipped")
      expect(batch.screen).toContain("requests:  20 (20 succeeded")
      expect(batch.code).toBe(0)
      expect(expectOnceEach(yield* ws.readOutput)).toBe(20)
      const demo = yield* startInTerminal(["demo", "--requests", "20"], ws.env).ended
      expect(demo.screen).toContain("20/20 lines")
      expect(demo.code).toBe(0)
      // A CI job's terminal keeps every frame in its log: no bar there.
      const inCi = yield* startInTerminal(["batch", ws.input, "--output", `${ws.dir}/ci.jsonl`], { ...ws.env, CI: "true" }).ended
      expect(inCi.screen).toContain("requests:  20 (20 succeeded")
      expect(inCi.screen).not.toContain("lines |")
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("batch reading the terminal (/dev/stdin) answers each line typed, and Ctrl-C ends it at once", () =>
    Effect.gen(function*() {
      const ws = yield* setup(1, { queueDelay: "5 millis" })
      const run = startInTerminal(["batch", "/dev/stdin", "--output", ws.output], ws.env)
      run.type(`${yield* ws.fs.readFileString(ws.input)}`.replace("\n", "\r"))
      yield* waitFor("the typed line's answer", Effect.map(ws.readOutput, (lines) => lines.length === 1))
      run.type("\x03")
      // Read on the thread pool, the terminal held the process at its exit until a key came.
      const ended = yield* run.ended.pipe(Effect.timeout("10 seconds"))
      expect(ended.code).toBe(130)
      expect(ended.screen).toContain("with the same input given again (/dev/stdin is not a file: it was read once)")
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("warnings and Ctrl-C's message start lines of their own, not glued to the bar, and are wrapped, not cut", () =>
    Effect.gen(function*() {
      // An outage: every call fails, so the lone account's breaker opens, and the pool warns mid-run.
      const script = Array.from({ length: 500 }, () => "serverError" as const)
      const ws = yield* setup(100, { queueDelay: "20 millis", faults: { script } })
      const run = startInTerminal(["batch", ws.input, "--output", ws.output, "--concurrency", "4"], { ...ws.env, NO_COLOR: "1" })
      yield* waitFor("the breaker's warning", Effect.sync(() => run.screen().includes("circuit breaker opened")))
      run.type("\x03")
      const ended = yield* run.ended
      expect(ended.code).toBe(130)
      // The bar's line is erased first (the bar draws itself again below what was written).
      expect(ended.screen).toMatch(/lines \|[^\n]*\r\x1b\[2K\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] WARN \(#\d+\): AccountPool: account default's circuit breaker opened/)
      expect(ended.screen).toContain("\r\x1b[2Kweatherproof: SIGINT: stopping; nothing more is sent")
      // The terminal's wrapping is left on (cli-progress cuts the bar to the width), so a long
      // warning beside the bar is wrapped, not cut.
      expect(ended.screen).not.toContain("\x1b[?7l")
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("a terminal that hangs up (SIGHUP) stops a batch as SIGTERM does: the calls in flight drain, every answer and the summary are written", () =>
    Effect.gen(function*() {
      const { args, stopped, summaryPath, ws } = yield* batchSlowUntilStopped(100)
      const run = startInTerminal(args, ws.env)
      yield* waitFor("a few answers", Effect.map(ws.readOutput, (lines) => lines.length >= 4))
      // `script` gone, the terminal's master side closes: the kernel sends the CLI SIGHUP, and
      // every write to the terminal fails from then on.
      run.child.kill("SIGKILL")
      stopped()
      yield* waitFor("the run to end (its lock removed)", Effect.map(ws.fs.exists(ws.lock), (held) => !held), 20_000)
      // Written whole: the file exists a moment before its text is in it.
      const summaryWritten = Effect.map(ws.fs.readFileString(summaryPath), (text) => text.endsWith("}\n"))
      yield* waitFor("the summary", summaryWritten, 5_000)
      const written = expectOnceEach(yield* ws.readOutput)
      expect(written).toBeLessThan(100)
      expect(JSON.parse(yield* ws.fs.readFileString(summaryPath))).toMatchObject({ interrupted: true, succeeded: written })
      // Drained: every request sent was answered and written, none billed for nothing.
      expect((yield* ws.simulator.stats).completed).toBe(written)

      const resumed = yield* start(args, ws.env).ended(30_000)
      expect(resumed.code).toBe(0)
      expect(expectOnceEach(yield* ws.readOutput)).toBe(100)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("a hang-up's second SIGHUP (the shell passes one on, the kernel sends another as the shell exits) does not cut the drain short", () =>
    Effect.gen(function*() {
      // Calls of a second until the drain: both hang-ups surely come while some are in flight.
      let draining = false
      const ws = yield* setup(100, { queueDelay: () => draining ? "10 millis" : "1 second" })
      const summaryPath = `${ws.dir}/summary.json`
      const run = startInTerminal(["batch", ws.input, "--output", ws.output, "--concurrency", "8", "--summary", summaryPath], ws.env)
      yield* waitFor("a few answers", Effect.map(ws.readOutput, (lines) => lines.length >= 4))
      // The CLI runs under `script`: the lock names its pid. Both hang-ups to it, the terminal kept
      // (the messages stay readable); apart, or the kernel delivers the two as one.
      const { pid } = JSON.parse(yield* ws.fs.readFileString(ws.lock)) as { readonly pid: number }
      process.kill(pid, "SIGHUP")
      yield* waitFor("the first hang-up's message", Effect.sync(() => run.screen().includes("SIGHUP: stopping")))
      process.kill(pid, "SIGHUP")
      yield* Effect.sleep("200 millis")
      draining = true
      yield* waitFor("the run to end (its lock removed)", Effect.map(ws.fs.exists(ws.lock), (held) => !held), 20_000)
      yield* waitFor("the summary", Effect.map(ws.fs.readFileString(summaryPath), (text) => text.endsWith("}\n")), 5_000)
      const written = expectOnceEach(yield* ws.readOutput)
      const stats = yield* ws.simulator.stats
      // Drained, not dropped: no call was cut, every one accepted was answered and written.
      expect(stats.clientClosed).toBe(0)
      expect(stats.completed).toBe(written)
      expect(JSON.parse(yield* ws.fs.readFileString(summaryPath))).toMatchObject({ interrupted: true, succeeded: written })
      expect((yield* run.ended).screen).not.toContain("stopping now")
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("the gateway in a terminal that hangs up drains: a request in flight gets its whole answer, then the process ends", () =>
    Effect.gen(function*() {
      const simulator = yield* Simulator.make({ queueDelay: "1 second" })
      const env = { DEEPSEEK_API_KEY: Simulator.defaultKey, DEEPSEEK_BASE_URL: simulator.baseUrl }
      const serve = startInTerminal(["serve", "--port", "0"], env)
      yield* waitFor("the gateway to listen", Effect.sync(() => /listening on (http:\/\/[\d.:]+)/.test(serve.screen())))
      const url = /listening on (http:\/\/[\d.:]+)/.exec(serve.screen())![1]!
      const body = JSON.stringify({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "hung up" }] })
      const answer = fetch(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body })
        .then(async (response) => ({ status: response.status, body: await response.text() }))
      yield* waitFor("the call upstream", Effect.map(simulator.stats, (stats) => stats.accepted >= 1))
      serve.child.kill("SIGKILL")
      const answered = yield* Effect.promise(() => answer)
      expect(answered.status).toBe(200)
      expect(JSON.parse(answered.body.trim())).toMatchObject({ choices: [{ message: { content: "echo:hung up" } }] })
      const closed = Effect.promise(() => fetch(`${url}/healthz`).then(() => false, () => true))
      yield* waitFor("the gateway to end", closed, 10_000)
    }).pipe(Effect.scoped))
})

describe("weatherproof loads lazily", () => {
  /** A script `name` the CLI is started with (`--require`), writing what it records to `log`. */
  const recorder = (name: string, source: (log: string) => string) => {
    const preload = NodePath.join(build, `${name}.cjs`)
    const log = NodePath.join(build, `${name}-${Date.now()}.log`)
    NodeFs.writeFileSync(preload, source(JSON.stringify(log)))
    return { nodeOptions: ["--require", preload], log }
  }

  /**
   * The sources (files of this checkout, files of packages) in the bundle's files a run of the CLI
   * loaded: the launcher reads each file it runs (app/cli/compileCache.ts), and a preload logs the reads.
   */
  const loaded = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
    Effect.gen(function*() {
      const { log, nodeOptions } = recorder("record-reads", (log) =>
        `const fs = require("node:fs")\n` +
        `const readFileSync = fs.readFileSync\n` +
        `fs.readFileSync = (file, ...rest) => {\n` +
        `  if (typeof file === "string") fs.appendFileSync(${log}, file + "\\n")\n` +
        `  return readFileSync(file, ...rest)\n}\n` +
        `require("node:module").syncBuiltinESMExports()\n`)
      const ended = yield* start(args, env, { nodeOptions }).ended(20_000)
      const files = new Set(NodeFs.readFileSync(log, "utf8").split("\n"))
      return { ended, sources: [...files].flatMap((file) => sourcesByFile.get(file) ?? []).join("\n") }
    })

  /** What no command but the one that needs it loads: fast-check only a test would use. */
  const neverLoaded = ["node_modules/fast-check/", "node_modules/pure-rand/", "node_modules/ioredis/"]

  it.live("--version loads no command, no simulator, no progress bar", () =>
    Effect.gen(function*() {
      const { ended, sources } = yield* loaded(["--version"])
      expect(ended.stdout.trim()).toBe("0.1.0")
      expect(ended.code).toBe(0)
      expect(sources).toContain("bin/weatherproof.ts")
      const heavy = ["app/cli/batch.ts", "app/cli/batchDemo.ts", "src/Simulator.ts", "src/Batch.ts", "node_modules/cli-progress/", "node_modules/undici/"]
      for (const source of [...heavy, ...neverLoaded]) expect(sources, source).not.toContain(source)
    }))

  it.live("batch loads its command but not the demo, the simulator, ioredis or (stderr not a TTY) the progress bar", () =>
    Effect.gen(function*() {
      const ws = yield* setup(2, { queueDelay: "1 millis" })
      const { ended, sources } = yield* loaded(["batch", ws.input, "-o", ws.output], ws.env)
      expect(ended.code).toBe(0)
      expect(sources).toContain("app/cli/batch.ts")
      for (const source of ["app/cli/batchDemo.ts", "src/Simulator.ts", "node_modules/cli-progress/", ...neverLoaded]) {
        expect(sources, source).not.toContain(source)
      }
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))

  it.live("batch loads Node's builtins it uses before it sets V8's flags, which Node's code cache of them is made without", () =>
    Effect.gen(function*() {
      const ws = yield* setup(2, { queueDelay: "1 millis" })
      const { log, nodeOptions } = recorder("record-builtins", (log) =>
        `const v8 = require("node:v8")\n` +
        `const setFlagsFromString = v8.setFlagsFromString\n` +
        `let flags = [], from\n` +
        `v8.setFlagsFromString = (flag) => { flags.push(flag); from ??= process.moduleLoadList.length; return setFlagsFromString(flag) }\n` +
        `process.on("exit", () => require("node:fs").writeFileSync(${log}, JSON.stringify({ flags, ` +
        `after: process.moduleLoadList.slice(from).filter((m) => m.startsWith("NativeModule ") && !m.includes("internal/")) })))\n`)
      const ended = yield* start(["batch", ws.input, "-o", ws.output], ws.env, { nodeOptions }).ended(20_000)
      expect(ended.code).toBe(0)
      const { after, flags } = JSON.parse(NodeFs.readFileSync(log, "utf8"))
      expect(flags).toEqual(v8Flags(["batch"], process.versions.v8))
      expect(flags).toContain("--liftoff-only")
      expect(after).toEqual([])
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))
})

describe("weatherproof keeps its compilation between runs", () => {
  /** `weatherproof --version` with the compile cache as `env` says; its stdout. */
  const version = (env: Record<string, string>, nodeOptions: ReadonlyArray<string> = [], script?: string) =>
    Effect.map(start(["--version"], env, { nodeOptions, script }).ended(20_000), (ended) => {
      expect(ended.code).toBe(0)
      return ended.stdout.trim()
    })

  /** The cache's files, each with its inode: a file written again is a new one (renamed into place). */
  const cacheFiles = (cache: string) =>
    new Map(NodeFs.readdirSync(cache).map((name) => [name, NodeFs.statSync(NodePath.join(cache, name)).ino]))

  const scratches: Array<string> = []
  const scratch = () => {
    scratches.push(NodeFs.mkdtempSync(NodePath.join(tmpdir(), "weatherproof-cache-")))
    return scratches.at(-1)!
  }
  afterAll(() => scratches.forEach((dir) => NodeFs.rmSync(dir, { recursive: true, force: true })))

  it.live("the first run writes a cache per file it ran, private to the user; the next uses them and writes none", () =>
    Effect.gen(function*() {
      const cache = NodePath.join(scratch(), "cache")
      expect(yield* version({ WEATHERPROOF_COMPILE_CACHE: cache })).toBe("0.1.0")
      const written = cacheFiles(cache)
      // main.cjs and the chunks it requires for --version; none of a command.
      expect(written.size).toBeGreaterThanOrEqual(2)
      expect(NodeFs.statSync(cache).mode & 0o777).toBe(0o700)
      for (const name of written.keys()) {
        expect(name).toMatch(new RegExp(`^[0-9a-f]{32}-${process.version}-${process.arch}\\.cache$`))
        expect(NodeFs.statSync(NodePath.join(cache, name)).mode & 0o777).toBe(0o600)
      }
      expect(yield* version({ WEATHERPROOF_COMPILE_CACHE: cache })).toBe("0.1.0")
      expect(cacheFiles(cache)).toEqual(written)
    }))

  it.live("a copy of the CLI elsewhere has caches of its own (V8 keeps the path a cache was made at, for stack traces)", () =>
    Effect.gen(function*() {
      const cache = scratch()
      const elsewhere = NodePath.join(scratch(), "cli")
      NodeFs.cpSync(build, elsewhere, { recursive: true })
      yield* version({ WEATHERPROOF_COMPILE_CACHE: cache })
      const first = cacheFiles(cache)
      expect(yield* version({ WEATHERPROOF_COMPILE_CACHE: cache }, [], NodePath.join(elsewhere, "weatherproof.js"))).toBe("0.1.0")
      const copied = [...cacheFiles(cache).keys()].filter((name) => !first.has(name))
      expect(copied).toHaveLength(first.size)
      // Each copy then runs from its own caches, writing none.
      yield* version({ WEATHERPROOF_COMPILE_CACHE: cache })
      expect(cacheFiles(cache).size).toBe(2 * first.size)
    }))

  it.live("a file changed in place, to a source of the same length, runs as changed, from a cache of its own", () =>
    Effect.gen(function*() {
      const cache = scratch()
      const cli = NodePath.join(scratch(), "cli")
      NodeFs.cpSync(build, cli, { recursive: true })
      const script = NodePath.join(cli, "weatherproof.js")
      expect(yield* version({ WEATHERPROOF_COMPILE_CACHE: cache }, [], script)).toBe("0.1.0")
      const before = cacheFiles(cache)
      // V8 takes a cache for any source of the length it was made for: the key must see the change.
      const main = NodePath.join(cli, "main.cjs")
      const source = NodeFs.readFileSync(main, "utf8")
      expect(source.split("\"0.1.0\"")).toHaveLength(2)
      NodeFs.writeFileSync(main, source.replace("\"0.1.0\"", "\"9.8.7\""))
      expect(yield* version({ WEATHERPROOF_COMPILE_CACHE: cache }, [], script)).toBe("9.8.7")
      const after = cacheFiles(cache)
      expect([...after.keys()].filter((name) => !before.has(name))).toHaveLength(1)
      for (const [name, inode] of before) expect(after.get(name)).toBe(inode)
    }))

  it.live("a cache V8 rejects (here, garbage) is written again; the run is unaffected", () =>
    Effect.gen(function*() {
      const cache = scratch()
      yield* version({ WEATHERPROOF_COMPILE_CACHE: cache })
      const written = cacheFiles(cache)
      for (const name of written.keys()) NodeFs.writeFileSync(NodePath.join(cache, name), "not a code cache")
      expect(yield* version({ WEATHERPROOF_COMPILE_CACHE: cache })).toBe("0.1.0")
      for (const [name, inode] of cacheFiles(cache)) {
        expect(inode).not.toBe(written.get(name))
        expect(NodeFs.readFileSync(NodePath.join(cache, name)).toString("latin1")).not.toBe("not a code cache")
      }
    }))

  it.live("no cache when turned off, in a directory others can write to, or with source maps on", () =>
    Effect.gen(function*() {
      const off = scratch()
      expect(yield* version({ WEATHERPROOF_COMPILE_CACHE: "0", TMPDIR: off })).toBe("0.1.0")
      expect(yield* version({ NODE_DISABLE_COMPILE_CACHE: "1", TMPDIR: off })).toBe("0.1.0")
      expect(NodeFs.readdirSync(off)).toEqual([])
      const shared = scratch()
      NodeFs.chmodSync(shared, 0o777)
      const ended = yield* start(["--version"], { WEATHERPROOF_COMPILE_CACHE: shared }).ended(20_000)
      expect(ended.stdout.trim()).toBe("0.1.0")
      expect(ended.stderr).toContain(`WEATHERPROOF_COMPILE_CACHE=${shared} is not used`)
      expect(NodeFs.readdirSync(shared)).toEqual([])
      // A named directory is made, not its parents (a typo would make a tree; under /proc, Node's
      // recursive mkdir never returns).
      const parentless = NodePath.join(scratch(), "missing", "cache")
      const unmade = yield* start(["--version"], { WEATHERPROOF_COMPILE_CACHE: parentless }).ended(20_000)
      expect(unmade.stdout.trim()).toBe("0.1.0")
      expect(unmade.stderr).toContain(`WEATHERPROOF_COMPILE_CACHE=${parentless} is not used`)
      expect(NodeFs.existsSync(NodePath.dirname(parentless))).toBe(false)
      const proc = yield* start(["--version"], { WEATHERPROOF_COMPILE_CACHE: "/proc/weatherproof-cache" }).ended(20_000)
      expect(proc.stdout.trim()).toBe("0.1.0")
      // Node's own require runs the files then: it maps stack traces, which it does not for a vm.Script.
      const mapped = scratch()
      expect(yield* version({ WEATHERPROOF_COMPILE_CACHE: mapped }, ["--enable-source-maps"])).toBe("0.1.0")
      expect(NodeFs.readdirSync(mapped)).toEqual([])
    }))

  it.live("the directory keeps the newest 100 cache files: a run that writes removes the oldest", () =>
    Effect.gen(function*() {
      const cache = scratch()
      const old = Array.from({ length: 120 }, (_, i) => `old-${String(i).padStart(3, "0")}.cache`)
      old.forEach((name, i) => {
        NodeFs.writeFileSync(NodePath.join(cache, name), "")
        NodeFs.utimesSync(NodePath.join(cache, name), 1_000_000 + i, 1_000_000 + i)
      })
      expect(yield* version({ WEATHERPROOF_COMPILE_CACHE: cache })).toBe("0.1.0")
      const kept = [...cacheFiles(cache).keys()]
      const written = kept.filter((name) => !name.startsWith("old-"))
      expect(written.length).toBeGreaterThanOrEqual(2)
      expect(kept.sort()).toEqual([...old.slice(old.length - (100 - written.length)), ...written].sort())
    }))

  it.live("by default the cache is a directory of the user's own under the temporary directory", () =>
    Effect.gen(function*() {
      const temporary = scratch()
      yield* version({ TMPDIR: temporary })
      const [directory, ...others] = NodeFs.readdirSync(temporary)
      expect(others).toEqual([])
      expect(directory).toBe(`weatherproof-compile-cache-${process.getuid?.() ?? "user"}`)
      expect(cacheFiles(NodePath.join(temporary, directory!)).size).toBeGreaterThanOrEqual(2)
    }))
})
