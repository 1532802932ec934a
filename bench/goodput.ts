/**
 * The goodput benchmark: each contender sends the scenario's 600 requests to its own freshly
 * started Simulator (same options, same seed), one contender at a time, and is measured by what
 * the Simulator saw: 429s drawn, HTTP requests received, answers delivered, and its account's
 * (t, cap, in-flight) timeline. Makespan runs from the first request the Simulator received to
 * the last answer, as the oracle's (`oracle.ts`) runs from its first send; each contender's set-up
 * before that (weatherproof's batch files and layers) is reported apart.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Batch from "../src/Batch.js"
import { limitGauge } from "../src/ConcurrencyLimiter.js"
import * as CostLedger from "../src/CostLedger.js"
import * as Resilient from "../src/Resilient.js"
import * as Router from "../src/Router.js"
import * as Simulator from "../src/Simulator.js"
import { lowerBoundMs, runOracle, type OracleRun } from "./oracle.js"
import { HttpStatusError, makeClient, type Peer, peers } from "./peers.js"
import * as Scenario from "./scenario.js"

/** A contender gives up (and is reported unfinished) after this long. */
export const timeLimitMs = 150_000

/** The limit weatherproof's own limiter grants, at a change (ms since the contender started). */
export interface ClientLimitSample {
  readonly t: number
  readonly limit: number
}

export interface ContenderResult {
  readonly name: string
  readonly policy: string
  /** From the first request the Simulator received to the last answer. */
  readonly makespanMs: number
  /** From the contender's start (its set-up: files, layers) to its first request: not in the makespan. */
  readonly startUpMs: number
  /** Chat requests the Simulator received (first sends and retries). */
  readonly requestsReceived: number
  readonly rateLimited: number
  /** Clean answers delivered in full. */
  readonly completed: number
  readonly maxInFlight: number
  /** The account's samples, `t` in ms since the contender started. */
  readonly timeline: ReadonlyArray<Simulator.Sample>
  /** Whether the Simulator drew exactly the oracle's service times. */
  readonly sameServiceTimes: boolean
  readonly finished: boolean
  /** Requests that ended in an error, by error. */
  readonly failures: Readonly<Record<string, number>>
  /** weatherproof only: its limiter's limit, read each time the Simulator read its cap. */
  readonly clientLimit: ReadonlyArray<ClientLimitSample>
}

export interface GoodputReport {
  readonly oracle: OracleRun
  readonly lowerBoundMs: number
  readonly weatherproof: ContenderResult
  readonly peers: ReadonlyArray<ContenderResult>
}

/** How a contender's run ended. */
interface RunOutcome {
  /** Within the time limit. */
  readonly finished: boolean
  readonly failures: Readonly<Record<string, number>>
}

interface Contender {
  readonly name: string
  readonly policy: string
  /** Sends the 600 requests. */
  readonly run: (baseUrl: string) => Effect.Effect<RunOutcome, unknown, Scope.Scope>
  /** Reads the client's own concurrency limit, when it has one to show. */
  readonly clientLimit?: () => number
}

// --- weatherproof through the batch path ------------------------------------------------------

const inputText = Scenario.requests.map((request) => `${request.inputLine}\n`).join("")

const weatherproof: Contender = {
  name: "weatherproof",
  policy: "Batch.run over Resilient.layerDefault (adaptive limiter, default retry, budget, breaker)",
  // The limiter publishes its limit on this gauge (untagged: layerDefault names no limiter).
  clientLimit: () => limitGauge.unsafeValue([]).value,
  run: (baseUrl) =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "weatherproof-bench-" })
      const input = `${dir}/input.jsonl`
      yield* fs.writeFileString(input, inputText)
      const client = Layer.mergeAll(
        Resilient.layerDefault({ baseUrl, keys: [Redacted.make(Simulator.defaultKey)] }).pipe(
          Layer.provideMerge(Batch.layerTelemetryCounts)
        ),
        // The requests name their model, so the router passes them through untouched.
        Router.layerDefault,
        CostLedger.layer()
      )
      const summary = yield* Batch.run({ input, output: `${dir}/output.jsonl` }).pipe(
        Effect.provide(client),
        Effect.timeoutOption(timeLimitMs)
      )
      return Option.match(summary, {
        onNone: () => ({ finished: false, failures: {} }),
        onSome: ({ failures }) => ({ finished: true, failures })
      })
    }).pipe(Effect.provide(NodeFileSystem.layer))
}

// --- peers, as plain promises -----------------------------------------------------------------

/** Rejected requests of a peer, by HTTP status or error name. */
const countFailures = (results: ReadonlyArray<PromiseSettledResult<unknown>>): Record<string, number> => {
  const failures: Record<string, number> = {}
  for (const result of results) {
    if (result.status === "fulfilled") continue
    const error: unknown = result.reason
    const key = error instanceof HttpStatusError ? `HTTP ${error.status}` : error instanceof Error ? error.name : "unknown"
    failures[key] = (failures[key] ?? 0) + 1
  }
  return failures
}

const peerContender = (peer: Peer): Contender => ({
  name: peer.name,
  policy: peer.policy,
  run: (baseUrl) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const controller = new AbortController()
        const timer = setTimeout(() => controller.abort(), timeLimitMs)
        return { controller, timer, client: makeClient(baseUrl, controller.signal) }
      }),
      ({ client, timer }) =>
        Effect.promise(() => {
          clearTimeout(timer)
          return client.close()
        })
    ).pipe(
      Effect.flatMap(({ client, controller }) =>
        Effect.map(
          Effect.promise(() => peer.run(Scenario.requests, client.send, controller.signal)),
          (results) => ({ finished: !controller.signal.aborted, failures: countFailures(results) })
        )
      )
    )
})

// --- running them -----------------------------------------------------------------------------

const runContender = (contender: Contender, onStart: (name: string) => Effect.Effect<void>) =>
  Effect.scoped(Effect.gen(function*() {
    const clientLimit: Array<ClientLimitSample> = []
    const readClientLimit = contender.clientLimit
    // Simulator time of its first limit check, which is the first request it received.
    let firstRequestMs: number | undefined
    const { log, options } = Scenario.simulatorOptions((t) => {
      firstRequestMs ??= t
      const limit = readClientLimit?.()
      if (limit !== undefined && clientLimit.at(-1)?.limit !== limit) clientLimit.push({ t, limit })
    })
    const serverStartedAt = Date.now()
    const simulator = yield* Simulator.make(options)
    yield* onStart(contender.name)
    const startedAt = Date.now()
    const { failures, finished } = yield* contender.run(simulator.baseUrl)
    const endedMs = Date.now() - serverStartedAt
    const stats = yield* simulator.stats
    const account = stats.accounts["default"]!
    // Times count from the first request, in Simulator time, as the oracle's count from its first send.
    const origin = firstRequestMs ?? startedAt - serverStartedAt
    return {
      name: contender.name,
      policy: contender.policy,
      makespanMs: endedMs - origin,
      startUpMs: origin - (startedAt - serverStartedAt),
      requestsReceived: stats.requests,
      rateLimited: stats.rateLimited,
      completed: stats.completed,
      maxInFlight: account.maxInFlight,
      timeline: account.timeline.map((sample) => ({ ...sample, t: sample.t - origin })),
      sameServiceTimes: Scenario.drewScenarioTimes(log),
      finished,
      failures,
      clientLimit: clientLimit.map((sample) => ({ ...sample, t: sample.t - origin }))
    } satisfies ContenderResult
  }))

/** Runs weatherproof, then every peer (unless `withPeers` is false), each against a fresh Simulator. */
export const run = (
  onStart: (name: string) => Effect.Effect<void>,
  withPeers = true
): Effect.Effect<GoodputReport, unknown> =>
  Effect.gen(function*() {
    const weatherproofResult = yield* runContender(weatherproof, onStart)
    const peerResults = withPeers
      ? yield* Effect.forEach(peers, (peer) => runContender(peerContender(peer), onStart))
      : []
    return {
      oracle: runOracle(Scenario.requests),
      lowerBoundMs: lowerBoundMs(Scenario.requests),
      weatherproof: weatherproofResult,
      peers: peerResults
    }
  })
