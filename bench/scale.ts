/**
 * Scale to a published cap: 10,000 requests of about 4 s each against an account cap of 2,500
 * (DeepSeek's published figure for flash), `weatherproof batch` as a user runs it (one account from
 * the environment, every default: the adaptive limit finds the cap) beside the plain client
 * (`plainClient.ts`: `p-limit(2500)` + Node's `fetch`, told the cap).
 *
 * The upstream is the Simulator in this process, a fresh one per contender: the n-th request it
 * accepts holds its slot for the n-th time of a fixed sequence spread evenly over 3.8-4.2 s (so
 * both contenders meet the same service times, whatever their bodies), sending a keep-alive empty
 * line every second meanwhile, then the JSON answer. Over the cap, an immediate 429. Each
 * contender is a child process measured from outside (`processes.ts`), its event-loop lag by the
 * preload. The makespan runs from the first request the upstream accepted to the last answer.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as NodePath from "node:path"
import * as Simulator from "../src/Simulator.js"
import * as Processes from "./processes.js"

export const settings = {
  requests: 10_000,
  cap: 2_500,
  serviceMs: { min: 3_800, max: 4_200 },
  keepAliveMs: 1_000,
  timeoutMs: 400_000
} as const

export interface Contender {
  readonly name: string
  /** First acceptance to last answer, at the upstream. */
  readonly makespanMs: number
  /** First acceptance to the first time in-flight reached 90 % of the cap (NaN if never). */
  readonly to90Ms: number
  readonly maxInFlight: number
  readonly received: number
  readonly rateLimited: number
  readonly completed: number
  readonly measured: Processes.Measured
  /** The run's process failed or lost answers: why. */
  readonly failure: string | undefined
}

export interface Report {
  readonly weatherproof: Contender
  readonly plain: Contender
  /** Σ service times / cap: no client can do better. */
  readonly idealMs: number
}

const golden = (Math.sqrt(5) - 1) / 2

/** The n-th acceptance's service time: evenly spread over the range, the same for every contender. */
const serviceMsAt = (n: number): number =>
  settings.serviceMs.min + (settings.serviceMs.max - settings.serviceMs.min) * ((n * golden) % 1)

const upstreamOptions = (): Simulator.Options => {
  let accepted = 0
  return {
    limit: settings.cap,
    queueDelay: () => Duration.millis(serviceMsAt(accepted++)),
    keepAliveInterval: Duration.millis(settings.keepAliveMs),
    chunkDelay: 0
  }
}

const runOnce = (name: string, args: (output: string) => ReadonlyArray<string>, dir: string) =>
  Effect.scoped(Effect.gen(function*() {
    const simulator = yield* Simulator.make(upstreamOptions())
    const output = NodePath.join(dir, `${name.replace(/\W+/g, "-")}.jsonl`)
    const measured = yield* Effect.promise(() =>
      Processes.runMeasured(args(output), Processes.upstreamEnv(simulator.baseUrl, Simulator.defaultKey), settings.timeoutMs)
    )
    const stats = yield* simulator.stats
    const account = stats.accounts["default"]!
    const busy = account.timeline.filter((sample) => sample.inFlight > 0)
    const start = busy[0]?.t ?? 0
    const end = account.timeline.at(-1)?.t ?? 0
    const reached = account.timeline.find((sample) => sample.inFlight >= 0.9 * settings.cap)
    const lines = Processes.countLines(output)
    return {
      name,
      makespanMs: end - start,
      to90Ms: reached === undefined ? Number.NaN : reached.t - start,
      maxInFlight: account.maxInFlight,
      received: stats.requests,
      rateLimited: stats.rateLimited,
      completed: stats.completed,
      measured,
      failure: measured.code === 0 && lines === settings.requests
        ? undefined
        : `exit ${measured.code}, ${lines} lines: ${Processes.stderrGist(measured.stderr)}`
    } satisfies Contender
  }))

export const run = (log: (line: string) => void): Effect.Effect<Report> =>
  Effect.gen(function*() {
    const work = Processes.scratch()
    const input = NodePath.join(work.dir, "input.jsonl")
    Processes.writeBatchInput(input, settings.requests, (i) => `request ${i} of the scale benchmark`)
    log(`p-limit(${settings.cap}) + fetch…`)
    const plain = yield* runOnce(
      `p-limit(${settings.cap}) + fetch`,
      (output) => [Processes.plainClientEntry, input, output, "--concurrency", String(settings.cap), "--http", "fetch"],
      work.dir
    )
    log("weatherproof batch…")
    const weatherproof = yield* runOnce(
      "weatherproof batch (CLI)",
      (output) => [Processes.cliEntry, "batch", input, "--output", output],
      work.dir
    )
    work.done()
    let total = 0
    for (let n = 0; n < settings.requests; n++) total += serviceMsAt(n)
    return { weatherproof, plain, idealMs: total / settings.cap }
  })
