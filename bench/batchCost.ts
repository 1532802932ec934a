/**
 * What a request costs the batch CLI: CPU time and peak RSS of `weatherproof batch` (as a user runs
 * it: one account from `DEEPSEEK_API_KEY`, every default) beside the plain client (`p-limit(16)` +
 * undici, `plainClient.ts`), each sending the same requests, read from the same input file and
 * written to an output file, to a fast loopback upstream.
 *
 * The upstream is the Simulator, in this process (each contender gets a fresh one, so neither
 * pays for it): an account cap of 64, no queueing, no keep-alive bytes, the answer at once. Each
 * contender is a child process measured from outside (`processes.ts`); the figures are the
 * medians of `runs` interleaved runs. CPU time per request is the process's whole CPU time (its
 * start included) over the requests.
 */
import * as Effect from "effect/Effect"
import * as NodePath from "node:path"
import * as Simulator from "../src/Simulator.js"
import * as Processes from "./processes.js"

export const settings = { requests: 5_000, cap: 64, plainConcurrency: 16, runs: 3, timeoutMs: 180_000 } as const

export interface Contender {
  readonly name: string
  readonly wallMs: number
  readonly cpuMs: number
  readonly maxRssMb: number
  /** What the upstream saw: HTTP requests, 429s, clean answers, peak in flight, connections (medians). */
  readonly received: number
  readonly rateLimited: number
  readonly completed: number
  readonly maxInFlight: number
  /** TCP connections the upstream accepted (median). */
  readonly connections: number
  /** Runs whose process failed or lost answers, with why. */
  readonly failures: ReadonlyArray<string>
}

export interface Report {
  readonly weatherproof: Contender
  readonly plain: Contender
}

interface Run {
  readonly measured: Processes.Measured
  readonly stats: Simulator.Stats
  readonly outputLines: number
}

const upstreamOptions: Simulator.Options = { limit: settings.cap, queueDelay: 0, chunkDelay: 0 }

const runOnce = (name: string, args: (output: string) => ReadonlyArray<string>, dir: string) =>
  Effect.scoped(Effect.gen(function*() {
    const simulator = yield* Simulator.make(upstreamOptions)
    const output = NodePath.join(dir, `${name}-${Date.now()}.jsonl`)
    const measured = yield* Effect.promise(() =>
      Processes.runMeasured(args(output), Processes.upstreamEnv(simulator.baseUrl, Simulator.defaultKey), settings.timeoutMs)
    )
    return { measured, stats: yield* simulator.stats, outputLines: Processes.countLines(output) } satisfies Run
  }))

const summarize = (name: string, runs: ReadonlyArray<Run>): Contender => {
  const of = (f: (run: Run) => number) => Processes.median(runs.map(f))
  return {
    name,
    wallMs: of((r) => r.measured.wallMs),
    cpuMs: of((r) => r.measured.cpuMs),
    maxRssMb: of((r) => r.measured.maxRssMb),
    received: of((r) => r.stats.requests),
    rateLimited: of((r) => r.stats.rateLimited),
    completed: of((r) => r.stats.completed),
    maxInFlight: of((r) => r.stats.accounts["default"]?.maxInFlight ?? 0),
    connections: of((r) => r.stats.connections),
    failures: runs.flatMap((r) =>
      r.measured.code === 0 && r.outputLines === settings.requests
        ? []
        : [`exit ${r.measured.code}, ${r.outputLines} lines: ${Processes.stderrGist(r.measured.stderr)}`]
    )
  }
}

/** Every contender `runs` times, interleaved. */
export const run = (log: (line: string) => void): Effect.Effect<Report> =>
  Effect.gen(function*() {
    const work = Processes.scratch()
    const input = NodePath.join(work.dir, "input.jsonl")
    Processes.writeBatchInput(input, settings.requests, (i) => `request ${i} of the cost benchmark`)
    const weatherproofRuns: Array<Run> = []
    const plainRuns: Array<Run> = []
    for (let round = 1; round <= settings.runs; round++) {
      log(`round ${round}/${settings.runs}: weatherproof batch…`)
      weatherproofRuns.push(yield* runOnce("weatherproof", (output) => [Processes.cliEntry, "batch", input, "--output", output], work.dir))
      log(`round ${round}/${settings.runs}: p-limit(${settings.plainConcurrency}) + undici…`)
      plainRuns.push(
        yield* runOnce(
          "plain",
          (output) => [Processes.plainClientEntry, input, output, "--concurrency", String(settings.plainConcurrency), "--http", "undici"],
          work.dir
        )
      )
    }
    work.done()
    return {
      weatherproof: summarize("weatherproof batch (CLI)", weatherproofRuns),
      plain: summarize(`p-limit(${settings.plainConcurrency}) + undici`, plainRuns)
    }
  })
