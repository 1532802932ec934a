/**
 * The `weatherproof demo`: a batch run through the real resilient stack against an in-process
 * DeepSeek simulator with a small account limit and faults on, then checked line by line against
 * the simulator's answer rule, then rerun to show that a resume sends nothing.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import type * as AccountPool from "../../src/AccountPool.js"
import type { Account } from "../../src/Accounts.js"
import * as Batch from "../../src/Batch.js"
import * as CostLedger from "../../src/CostLedger.js"
import * as Router from "../../src/Router.js"
import * as Simulator from "../../src/Simulator.js"
import { counted } from "../../src/internal/text.js"
import { defaultProgressEvery, withProgress } from "./batchProgress.js"
import { ExitCode, fail } from "./exit.js"

/** The account limit of the simulated account: small and unknown to the client, whose adaptive limiter finds it. */
export const accountLimit = 10

/** The simulator of the demo: deterministic faults of most kinds, keep-alives while queued. */
export const simulatorOptions: Simulator.Options = {
  limit: accountLimit,
  queueDelay: { min: "2 millis", max: "30 millis" },
  keepAliveInterval: "5 millis",
  cacheHitRatio: 0.25,
  seed: "weatherproof-demo",
  faults: {
    probabilities: {
      overloaded: 0.03,
      serverError: 0.02,
      dropWhileQueued: 0.03,
      dropBeforeResponse: 0.01,
      blank: 0.02,
      cut: 0.02,
      insufficientResource: 0.01,
      errorEvent: 0.01,
      stall: 0.005
    }
  }
}

/** The one account of the demo, on the simulator's default account. */
export const demoAccount = (baseUrl: string): Account => ({
  name: "demo",
  provider: "deepseek",
  baseUrl,
  keys: [Redacted.make(Simulator.defaultKey)],
  fallback: false,
  models: {}
})

/**
 * Fast retries, short deadlines and a short open period, fitted to the simulator's millisecond
 * latencies, with headroom for a loaded machine: a deadline that trips because the test machine
 * is busy must not open the breaker for long.
 */
export const poolOptions: AccountPool.PoolOptions = {
  retry: { base: "20 millis", cap: "400 millis", maxRetries: 12 },
  // The simulator fails ~15% of attempts on purpose, to show every failure path; on a busy test
  // machine the short deadlines trip now and then on top, which comes close to the default 25%
  // trip ratio, where a real DeepSeek incident would rightly open the breaker. The demo is about
  // the other paths, so it trips at 50% and reopens within seconds.
  breaker: { failureRatio: 0.5, openFor: "1 second", maxOpenFor: "4 seconds" },
  deadlines: { firstContent: "3 seconds", idle: "2 seconds", total: "15 seconds" }
}

/**
 * The client of the demo, as the CLI builds it for a real run (adaptive limiter and breaker per
 * account), with the default prices and router.
 */
export const clientStack = (accounts: ReadonlyArray<Account>) =>
  Batch.layerAccounts(accounts, { pool: poolOptions, ledger: CostLedger.layer(), router: Router.layerDefault })

interface DemoRequest {
  readonly customId: string
  readonly marker: string
  readonly thinking: boolean
}

const demoRequests = (count: number): ReadonlyArray<DemoRequest> =>
  Array.from({ length: count }, (_, i) => ({
    customId: `demo-${String(i + 1).padStart(4, "0")}`,
    marker: `question ${i + 1}: what is ${i} + ${i * 7 % 13}?`,
    thinking: i % 5 === 0
  }))

const inputLine = (request: DemoRequest): string =>
  JSON.stringify({
    custom_id: request.customId,
    method: "POST",
    url: "/v1/chat/completions",
    body: {
      model: "deepseek-v4-flash",
      messages: [
        { role: "system", content: "You answer arithmetic questions." },
        { role: "user", content: request.marker }
      ],
      ...(request.thinking ? { thinking: { type: "enabled" } } : {})
    }
  })

/** The parts of a result line the verification reads. */
interface ResultLine {
  readonly custom_id: string
  readonly error: { readonly code: string; readonly message: string } | null
  readonly response: {
    readonly body?: {
      readonly choices?: ReadonlyArray<{
        readonly message?: { readonly content?: string | null; readonly reasoning_content?: string | null }
      }>
    }
  } | null
}

const parseResultLine = (text: string): ResultLine | undefined => {
  try {
    const line: unknown = JSON.parse(text)
    return typeof line === "object" && line !== null && "custom_id" in line ? line as ResultLine : undefined
  } catch {
    return undefined
  }
}

/** Checks the output against the requests: one successful line each, with the simulator's answer. */
const verify = (requests: ReadonlyArray<DemoRequest>, outputText: string): ReadonlyArray<string> => {
  const problems: Array<string> = []
  const linesById = new Map<string, Array<ResultLine>>()
  for (const text of outputText.split("\n")) {
    if (text.length === 0) continue
    const line = parseResultLine(text)
    if (line === undefined) {
      problems.push(`unreadable output line: ${text.slice(0, 80)}`)
      continue
    }
    linesById.set(line.custom_id, [...(linesById.get(line.custom_id) ?? []), line])
  }
  for (const request of requests) {
    const lines = linesById.get(request.customId) ?? []
    linesById.delete(request.customId)
    if (lines.length !== 1) {
      problems.push(`${request.customId}: ${lines.length === 0 ? "lost" : `${lines.length} lines`}`)
      continue
    }
    const line = lines[0]!
    if (line.error !== null) {
      problems.push(`${request.customId}: failed with ${line.error.code}: ${line.error.message}`)
      continue
    }
    const message = line.response?.body?.choices?.[0]?.message
    if (message?.content !== `echo:${request.marker}`) {
      problems.push(`${request.customId}: wrong answer ${JSON.stringify(message?.content)}`)
    }
    if (request.thinking && message?.reasoning_content !== `think:${request.marker}`) {
      problems.push(`${request.customId}: wrong reasoning ${JSON.stringify(message?.reasoning_content)}`)
    }
  }
  for (const customId of linesById.keys()) problems.push(`${customId}: answered but never asked`)
  return problems
}

/**
 * What the demo did and found.
 */
export interface DemoReport {
  readonly first: Batch.Summary
  readonly resumed: Batch.Summary
  readonly simulator: Simulator.Stats
  /** Requests the simulator received during the rerun (0 when resume works). */
  readonly requestsOnResume: number
  /** Everything that did not check out; empty on success. */
  readonly problems: ReadonlyArray<string>
}

/**
 * Runs the demo: simulator up, `requests` generated input lines written to a temporary
 * directory, `Batch.run` through `clientStack`, verification, rerun.
 */
export const run = (options: {
  readonly requests: number
  readonly onProgress?: ((progress: Batch.Progress) => Effect.Effect<void>) | undefined
}): Effect.Effect<
  DemoReport,
  Batch.RunError,
  FileSystem.FileSystem | Scope.Scope
> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const simulator = yield* Simulator.make(simulatorOptions)
    const requests = demoRequests(options.requests)
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "weatherproof-demo-" }).pipe(Effect.orDie)
    const input = `${dir}/input.jsonl`
    const output = `${dir}/results.jsonl`
    yield* fs.writeFileString(input, requests.map((r) => `${inputLine(r)}\n`).join("")).pipe(Effect.orDie)

    const stack = clientStack([demoAccount(simulator.baseUrl)])
    const batch = (onProgress: typeof options.onProgress) =>
      Batch.run({ input, output, onProgress }).pipe(Effect.provide(stack))

    const first = yield* batch(options.onProgress)
    const outputText = yield* fs.readFileString(output).pipe(Effect.orDie)
    const problems = [...verify(requests, outputText)]
    const before = yield* simulator.stats

    const resumed = yield* batch(undefined)
    const after = yield* simulator.stats
    const requestsOnResume = after.requests - before.requests
    if (requestsOnResume !== 0) problems.push(`the rerun sent ${requestsOnResume} requests`)
    if (resumed.skipped !== requests.length) problems.push(`the rerun skipped ${resumed.skipped} of ${requests.length}`)
    if ((yield* fs.readFileString(output).pipe(Effect.orDie)) !== outputText) problems.push("the rerun changed the output")

    return { first, resumed, simulator: before, requestsOnResume, problems }
  })

const listCounts = (counts: Readonly<Record<string, number | undefined>>): string =>
  Object.entries(counts)
    .filter(([, n]) => n !== undefined && n > 0)
    .map(([name, n]) => `${name} ${n}`)
    .join(", ") || "none"

const billedTokens = (stats: Simulator.Stats): number =>
  Object.values(stats.accounts).reduce((sum, account) => sum + account.billed.prompt + account.billed.completion, 0)

/** The opening line of the demo. */
export const introduction = (requests: number): string =>
  `weatherproof demo: ${requests} chat requests as an OpenAI-format batch against a local DeepSeek simulator\n` +
  `(account limit ${accountLimit}, adaptive client limit, keep-alives while queued, seeded 5xx / drops / cut bodies / stalls)`

/** The demo's findings for people. */
export const formatReport = (report: DemoReport): string => {
  const { simulator } = report
  const verdict = report.problems.length === 0
    ? [
      `verified:  every answer matches its request (echo rule), none lost, none duplicated`,
      `resume:    a rerun sent ${counted(report.requestsOnResume, "request", "requests")} and skipped ${
        counted(report.resumed.skipped, "line", "lines")
      }`
    ]
    : [`FAILED:    ${report.problems.length} problems`, ...report.problems.slice(0, 20).map((p) => `  - ${p}`)]
  return [
    Batch.formatSummary(report.first),
    `simulator: ${simulator.requests} HTTP requests, ${simulator.rateLimited} answered 429, peak in flight ${
      simulator.accounts["default"]?.maxInFlight ?? 0
    }/${accountLimit}, billed ${billedTokens(simulator)} tokens`,
    `faults:    ${listCounts(simulator.faults)}`,
    ...verdict
  ].join("\n")
}

/** The most lines a demo runs: it holds its input and the requests it checks in memory. */
const maxDemoRequests = 100_000

/** The `demo` command: the demo with a progress bar on a terminal, its report, exit 1 on any problem. */
export const main = (options: { readonly requests: number }) =>
  Effect.gen(function*() {
    if (!(options.requests >= 1 && options.requests <= maxDemoRequests)) {
      return yield* fail(2, `weatherproof: --requests must be from 1 to ${maxDemoRequests.toLocaleString("en-US")}`)
    }
    yield* Console.log(introduction(options.requests))
    const report = yield* withProgress(defaultProgressEvery, (onProgress) => run({ requests: options.requests, onProgress })).pipe(
      Effect.catchAll((error) => fail(1, `weatherproof: ${error.message}`))
    )
    yield* Console.log(formatReport(report))
    if (report.problems.length > 0) return yield* new ExitCode({ code: 1 })
  })
