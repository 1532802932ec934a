/**
 * Processes sharing one account: the `steps` goodput scenario (600 requests, the account cap
 * stepping 24 → 6 → 32) run by `weatherproof batch` processes as users run them, against one
 * Simulator in this process:
 *
 * - **1 process**: every line, no Redis (the reference the goodput bench tunes).
 * - **3 processes through Redis**: a third of the lines each (every third line), `--redis` on one
 *   loopback `redis-server`: one lane per (account, model) shared by all three.
 * - **3 processes, naive**: the same split, each with its own adaptive limit (no Redis): each
 *   learns a third of the truth and together they overshoot.
 *
 * Each is measured against the oracle that always holds the cap (`oracle.ts`); the makespan runs
 * from the first request the Simulator received to its last answer. Without `redis-server`, the
 * Redis contender is skipped with the package to install.
 */
import * as Effect from "effect/Effect"
import { existsSync, mkdirSync, writeFileSync } from "node:fs"
import * as NodePath from "node:path"
import * as Simulator from "../src/Simulator.js"
import { redisServer, redisServerPresent, skipMessage } from "../test/support/redisServer.js"
import { runOracle } from "./oracle.js"
import * as Processes from "./processes.js"
import * as Scenario from "./scenario.js"
import { steps } from "./scenarios.js"

export const settings = { processes: 3, timeoutMs: 300_000, scenario: steps } as const

/** Makespan within this many times the oracle's, at most this share of requests drawing a 429. */
export const targets = { makespanRatio: 1.2, rateLimitedShare: 0.02 } as const

export interface Contender {
  readonly name: string
  readonly makespanMs: number
  readonly rateLimited: number
  readonly received: number
  readonly answered: number
  readonly maxInFlight: number
  /** A process failed or lines are missing: why. */
  readonly failure: string | undefined
}

export interface Report {
  readonly oracleMs: number
  readonly requests: number
  readonly contenders: ReadonlyArray<Contender>
  /** Why the Redis contender did not run, when it did not. */
  readonly skipped: string | undefined
}

/** Writes the inputs of `count` processes, line i to process i mod count; returns their paths. */
const splitInput = (dir: string, count: number): ReadonlyArray<string> =>
  Array.from({ length: count }, (_, p) => {
    const path = NodePath.join(dir, `input-${p}.jsonl`)
    const lines = settings.scenario.requests.filter((_, i) => i % count === p).map((request) => `${request.inputLine}\n`)
    writeFileSync(path, lines.join(""))
    return path
  })

/** Runs `count` batch processes at once against a fresh Simulator, `extra` flags on each. */
const runProcesses = (name: string, count: number, extra: ReadonlyArray<string>, dir: string) =>
  Effect.scoped(Effect.gen(function*() {
    const { options } = Scenario.simulatorOptions(settings.scenario)
    const simulator = yield* Simulator.make(options)
    const work = NodePath.join(dir, name.replace(/\W+/g, "-"))
    mkdirSync(work)
    const inputs = splitInput(work, count)
    const outputs = inputs.map((input) => input.replace("input-", "output-"))
    const env = Processes.upstreamEnv(simulator.baseUrl, Simulator.defaultKey)
    const runs = yield* Effect.promise(() =>
      Promise.all(inputs.map((input, p) =>
        Processes.runMeasured([Processes.cliEntry, "batch", input, "--output", outputs[p]!, ...extra], env, settings.timeoutMs)
      ))
    )
    const stats = yield* simulator.stats
    const account = stats.accounts["default"]!
    const start = account.timeline.find((sample) => sample.inFlight > 0)?.t ?? 0
    // A process that failed at start writes no output.
    const answered = outputs.reduce((sum, output) => sum + (existsSync(output) ? Processes.countLines(output) : 0), 0)
    const failed = runs.find((run) => run.code !== 0)
    return {
      name,
      makespanMs: (account.timeline.at(-1)?.t ?? 0) - start,
      rateLimited: stats.rateLimited,
      received: stats.requests,
      answered,
      maxInFlight: account.maxInFlight,
      failure: failed !== undefined
        ? `exit ${failed.code}: ${Processes.stderrGist(failed.stderr)}`
        : answered === settings.scenario.requests.length
        ? undefined
        : `${answered} of ${settings.scenario.requests.length} lines written`
    } satisfies Contender
  }))

export const run = (log: (line: string) => void): Effect.Effect<Report> =>
  Effect.gen(function*() {
    const work = Processes.scratch()
    const { processes } = settings
    log("1 process…")
    const single = yield* runProcesses("1 process", 1, [], work.dir)
    log(`${processes} processes, naive…`)
    const naive = yield* runProcesses(`${processes} processes, naive (no Redis)`, processes, [], work.dir)
    const shared = redisServerPresent
      ? yield* Effect.scoped(Effect.flatMap(redisServer, (server) => {
        log(`${processes} processes through Redis…`)
        return runProcesses(`${processes} processes through Redis`, processes, ["--redis", server.url], work.dir)
      }))
      : undefined
    work.done()
    return {
      oracleMs: runOracle(settings.scenario).makespanMs,
      requests: settings.scenario.requests.length,
      contenders: shared === undefined ? [single, naive] : [single, shared, naive],
      skipped: redisServerPresent ? undefined : skipMessage("3 processes through Redis")
    }
  })
