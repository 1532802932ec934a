/**
 * The goodput benchmark: for each scenario, each contender sends the scenario's requests to its
 * own freshly started Simulator (the scenario's options and seed), one contender at a time, and is
 * measured by what the Simulator saw: 429s drawn, HTTP requests received, answers delivered, and
 * each model's (t, cap, in-flight) timeline. Makespan runs from the first request the Simulator
 * received to the last answer, as the oracle's (`oracle.ts`) runs from its first send; each
 * contender's set-up before that (weatherproof's batch files, layers and balance preflight) is
 * reported apart.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import { setMaxListeners } from "node:events"
import type { Account } from "../src/Accounts.js"
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

/** The limit weatherproof's own limiter grants a model, at a change (ms since the first request). */
export interface ClientLimitSample {
  readonly t: number
  readonly limit: number
}

/** What one model of a contender's run did, as the Simulator saw it. */
export interface ModelResult {
  readonly rateLimited: number
  readonly completed: number
  readonly maxInFlight: number
  /** Its last release, ms since the first request. */
  readonly doneMs: number
  /** The model's samples, `t` in ms since the first request. */
  readonly timeline: ReadonlyArray<Simulator.Sample>
  /** weatherproof only: its limiter's limit for the model, read each time the Simulator read its cap. */
  readonly clientLimit: ReadonlyArray<ClientLimitSample>
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
  /** Of the account, every model together. */
  readonly maxInFlight: number
  /** By serving model name. */
  readonly byModel: Readonly<Record<string, ModelResult>>
  /** Whether the Simulator drew exactly the oracle's service times. */
  readonly sameServiceTimes: boolean
  readonly finished: boolean
  /** Requests that ended in an error, by error. */
  readonly failures: Readonly<Record<string, number>>
}

export interface GoodputReport {
  readonly scenario: Scenario.Scenario
  readonly oracle: OracleRun
  readonly lowerBoundMs: number | undefined
  /** The CLI's path: the one the targets are for. */
  readonly weatherproof: ContenderResult
  /** The library's default client, for comparison. */
  readonly library: ContenderResult | undefined
  readonly peers: ReadonlyArray<ContenderResult>
}

/** Every contender's result, in the order they ran. */
export const results = (report: GoodputReport): ReadonlyArray<ContenderResult> => [
  report.weatherproof,
  ...(report.library === undefined ? [] : [report.library]),
  ...report.peers
]

/** How a contender's run ended. */
interface RunOutcome {
  /** Within the time limit. */
  readonly finished: boolean
  readonly failures: Readonly<Record<string, number>>
}

interface Contender {
  readonly name: string
  readonly policy: string
  /** Sends the scenario's requests. */
  readonly run: (scenario: Scenario.Scenario, baseUrl: string) => Effect.Effect<RunOutcome, unknown, Scope.Scope>
  /** Reads the client's own concurrency limit for a requested model, when it has one to show. */
  readonly clientLimit?: (model: string) => number
}

// --- weatherproof through the batch path ------------------------------------------------------

/** What `Batch.run` needs but files. */
type BatchClient = Exclude<Batch.Requirements, FileSystem.FileSystem>

/** `Batch.run` of the scenario's lines over `client`, in a temporary directory. */
const runBatch = <E>(scenario: Scenario.Scenario, client: Layer.Layer<BatchClient, E>) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "weatherproof-bench-" })
    const input = `${dir}/input.jsonl`
    yield* fs.writeFileString(input, scenario.requests.map((request) => `${request.inputLine}\n`).join(""))
    const summary = yield* Batch.run({ input, output: `${dir}/output.jsonl` }).pipe(
      Effect.provide(client),
      Effect.timeoutOption(timeLimitMs)
    )
    return Option.match(summary, {
      onNone: (): RunOutcome => ({ finished: false, failures: {} }),
      onSome: ({ failures }): RunOutcome => ({ finished: true, failures })
    })
  }).pipe(Effect.provide(NodeFileSystem.layer))

const accountName = "bench"

/** The Simulator's default account, as an accounts file names it for the CLI. */
const benchAccount = (baseUrl: string): Account => ({
  name: accountName,
  provider: "deepseek",
  baseUrl,
  keys: [Redacted.make(Simulator.defaultKey)],
  fallback: false,
  models: {}
})

/** Each (account, model) lane publishes its limit on the limiter's gauge, tagged with both. */
const laneLimitGauges = new Map<string, Metric.Metric.Gauge<number>>()
const laneLimit = (model: string): number => {
  let gauge = laneLimitGauges.get(model)
  if (gauge === undefined) {
    gauge = Metric.tagged(Metric.tagged(limitGauge, "account", accountName), "model", model)
    laneLimitGauges.set(model, gauge)
  }
  return gauge.unsafeValue([]).value
}

/** `weatherproof batch` with no flags: the account pool, and the ledger and router of an unset environment. */
const weatherproofCli: Contender = {
  name: "weatherproof",
  policy: "the CLI's path: Batch.run over Batch.layerAccounts([one account]), all defaults: " +
    "an adaptive limit per (account, model), calls placed when a lane has a permit, default retry and budget, " +
    "a breaker per account, balance preflight",
  clientLimit: laneLimit,
  run: (scenario, baseUrl) =>
    runBatch(scenario, Batch.layerAccounts([benchAccount(baseUrl)], { ledger: CostLedger.layer(), router: Router.layerDefault }))
}

/** A library user's default client: one adaptive limit for every model. */
const weatherproofLibrary: Contender = {
  name: "weatherproof library",
  policy: "Batch.run over Resilient.layerDefault: one adaptive limiter for every model, default retry, budget, breaker",
  // Its limiter publishes its limit on this gauge (untagged: layerDefault names no limiter).
  clientLimit: () => limitGauge.unsafeValue([]).value,
  run: (scenario, baseUrl) =>
    runBatch(
      scenario,
      Layer.mergeAll(
        Resilient.layerDefault({ baseUrl, keys: [Redacted.make(Simulator.defaultKey)] }).pipe(
          Layer.provideMerge(Batch.layerTelemetryCounts)
        ),
        // The requests name their model, so the router passes them through untouched.
        Router.layerDefault,
        CostLedger.layer()
      )
    )
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
  run: (scenario, baseUrl) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const controller = new AbortController()
        // p-retry listens on the signal once per call in flight.
        setMaxListeners(Infinity, controller.signal)
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
          Effect.promise(() => peer.run(scenario.requests, client.send, controller.signal)),
          (results) => ({ finished: !controller.signal.aborted, failures: countFailures(results) })
        )
      )
    )
})

// --- running them -----------------------------------------------------------------------------

const runContender = (scenario: Scenario.Scenario, contender: Contender, onStart: (name: string) => Effect.Effect<void>) =>
  Effect.scoped(Effect.gen(function*() {
    const clientLimits = new Map<Scenario.Model, Array<ClientLimitSample>>(scenario.models.map((model) => [model, []]))
    const readClientLimit = contender.clientLimit
    const { log, options } = Scenario.simulatorOptions(scenario, (model, t) => {
      const limit = readClientLimit?.(model.requested)
      const samples = clientLimits.get(model)!
      if (limit !== undefined && samples.at(-1)?.limit !== limit) samples.push({ t, limit })
    })
    const serverStartedAt = Date.now()
    const simulator = yield* Simulator.make(options)
    yield* onStart(contender.name)
    const startedAt = Date.now()
    const { failures, finished } = yield* contender.run(scenario, simulator.baseUrl)
    const endedMs = Date.now() - serverStartedAt
    const stats = yield* simulator.stats
    const account = stats.accounts["default"]!
    // Times count from the first request, in Simulator time, as the oracle's count from its first send.
    const origin = log.firstRequestMs() ?? startedAt - serverStartedAt
    const fromOrigin = <A extends { readonly t: number }>(samples: ReadonlyArray<A>): ReadonlyArray<A> =>
      samples.map((sample) => ({ ...sample, t: sample.t - origin }))
    const byModel = Object.fromEntries(scenario.models.map((model) => {
      const stat = account.byModel[model.serving]
      const timeline = fromOrigin(stat?.timeline ?? [])
      return [model.serving, {
        rateLimited: stat?.rateLimited ?? 0,
        completed: stat?.completed ?? 0,
        maxInFlight: stat?.maxInFlight ?? 0,
        doneMs: timeline.at(-1)?.t ?? 0,
        timeline,
        clientLimit: fromOrigin(clientLimits.get(model)!)
      } satisfies ModelResult]
    }))
    return {
      name: contender.name,
      policy: contender.policy,
      makespanMs: endedMs - origin,
      startUpMs: origin - (startedAt - serverStartedAt),
      requestsReceived: stats.requests,
      rateLimited: stats.rateLimited,
      completed: stats.completed,
      maxInFlight: account.maxInFlight,
      byModel,
      sameServiceTimes: Scenario.drewScenarioTimes(scenario, log),
      finished,
      failures
    } satisfies ContenderResult
  }))

/** Who runs besides weatherproof's CLI path: its library client, the peers. */
export interface Others {
  readonly library: boolean
  readonly peers: boolean
}

/** The contenders a run with `others` has, in the order they run. */
export const contenders = (others: Others): ReadonlyArray<Pick<Contender, "name" | "policy">> => [
  weatherproofCli,
  ...(others.library ? [weatherproofLibrary] : []),
  ...(others.peers ? peers : [])
]

/** Runs weatherproof's CLI path, then the `others` asked for, on `scenario`, each against a fresh Simulator. */
export const run = (
  scenario: Scenario.Scenario,
  onStart: (name: string) => Effect.Effect<void>,
  others: Others
): Effect.Effect<GoodputReport, unknown> =>
  Effect.gen(function*() {
    const weatherproof = yield* runContender(scenario, weatherproofCli, onStart)
    const library = others.library ? yield* runContender(scenario, weatherproofLibrary, onStart) : undefined
    const peerResults = others.peers
      ? yield* Effect.forEach(peers, (peer) => runContender(scenario, peerContender(peer), onStart))
      : []
    return {
      scenario,
      oracle: runOracle(scenario),
      lowerBoundMs: lowerBoundMs(scenario),
      weatherproof,
      library,
      peers: peerResults
    }
  })
