/**
 * `npm run bench`: the goodput, overhead and SSE decoder benchmarks (see docs/benchmarks.md),
 * printed as tables with a verdict per target. It always exits 0 when it ran: a missed target is
 * a finding.
 *
 * Flags: `--only goodput`, `--only overhead`, `--only sse`, `--only gateway`, `--only redis`,
 * `--only batch-cost`, `--only startup`, `--only scale`, `--only shared-account`, or
 * `--only weatherproof` (the goodput runs of weatherproof's CLI path alone, for tuning);
 * `--scenario steps,fast-cap` runs only those goodput scenarios (`bench/scenarios.ts`);
 * `--write-docs` also writes each scenario's charts in docs/ and prints the tables as Markdown;
 * `--json FILE` saves the goodput reports (every timeline included) for a closer look.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import { writeFileSync } from "node:fs"
import * as Os from "node:os"
import { goodputChart, peersChart } from "./chart.js"
import * as BatchCost from "./batchCost.js"
import * as Gateway from "./gateway.js"
import * as Goodput from "./goodput.js"
import * as Overhead from "./overhead.js"
import { backoff } from "./peers.js"
import { measuredBy } from "./processes.js"
import * as RedisState from "./redis.js"
import * as Scale from "./scale.js"
import * as Scenario from "./scenario.js"
import * as Scenarios from "./scenarios.js"
import * as SharedAccount from "./sharedAccount.js"
import * as Sse from "./sse.js"
import * as Startup from "./startup.js"
import * as Table from "./table.js"

const targets = { overheadNs: 10_000, sseRatio: 1.0 } as const

const args = process.argv.slice(2)
const valueOf = (flag: string) => args.includes(flag) ? args[args.indexOf(flag) + 1] : undefined
const only = valueOf("--only")
const scenarioIds = valueOf("--scenario")?.split(",")
const scenarios = scenarioIds === undefined ? Scenarios.all : Scenarios.all.filter((scenario) => scenarioIds.includes(scenario.id))
const writeDocs = args.includes("--write-docs")
const jsonFile = valueOf("--json")

const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`
const percent = (share: number) => `${(share * 100).toFixed(1)} %`
const micros = (ns: number) => `${(ns / 1000).toFixed(2)} µs`

const loadLine = (): string => `load average ${Os.loadavg().map((load) => load.toFixed(2)).join(" ")}`

const machine = (): string => {
  const cpus = Os.cpus()
  return `${cpus.length} cores (${cpus[0]?.model.trim() ?? "unknown CPU"}), Node ${process.version}, ${Os.platform()} ${Os.arch()}, ${loadLine()}`
}

/** A warning when other work competes for the cores: client and Simulator share them, so timings suffer. */
const busyWarning = (): Effect.Effect<void> => {
  const load = Os.loadavg()[0] ?? 0
  const cores = Os.cpus().length
  return load > cores
    ? Console.log(`warning: load average ${load.toFixed(2)} on ${cores} cores: other work shares the machine, timings are unreliable`)
    : Effect.void
}

const printTable = (header: Table.Row, rows: ReadonlyArray<Table.Row>, leftColumns = 1) =>
  Effect.zipRight(
    Console.log(Table.text(header, rows, leftColumns)),
    writeDocs ? Console.log(`\n${Table.markdown(header, rows, leftColumns)}`) : Effect.void
  )

// --- goodput ------------------------------------------------------------------------------------

const requestShare = (report: Goodput.GoodputReport, count: number) => percent(count / report.scenario.requests.length)

const contenderName = (r: Goodput.ContenderResult) => r.finished ? r.name : `${r.name} (stopped at ${seconds(Goodput.timeLimitMs)})`

const goodputHeader = ["contender", "makespan", "× oracle", "429s", "429s / requests", "sent / request", "answered", "peak in flight"]

const goodputRows = (report: Goodput.GoodputReport): ReadonlyArray<Table.Row> => {
  const oracleMs = report.oracle.makespanMs
  const n = report.scenario.requests.length
  return [
    ["oracle (simulated ideal)", seconds(oracleMs), "1.00", "0", percent(0), "1.00", `${n}/${n}`, String(report.oracle.maxInFlight)],
    ...Goodput.results(report).map((r) => [
      contenderName(r),
      seconds(r.makespanMs),
      (r.makespanMs / oracleMs).toFixed(2),
      String(r.rateLimited),
      requestShare(report, r.rateLimited),
      (r.requestsReceived / n).toFixed(2),
      `${r.completed}/${n}`,
      String(r.maxInFlight)
    ])
  ]
}

const modelHeader = ["contender", "model", "cap", "peak in flight", "429s", "answered", "last answer"]

/** Per model: peak in flight against its cap, 429s, answers, and when its last answer came. */
const modelRows = (report: Goodput.GoodputReport): ReadonlyArray<Table.Row> =>
  report.scenario.models.flatMap((model) => {
    const n = Scenario.requestsOf(report.scenario, model).length
    const cap = Scenario.describeCaps(model.caps)
    const oracle = report.oracle.byModel[model.serving]!
    return [
      ["oracle (simulated ideal)", model.serving, cap, String(Math.max(...oracle.timeline.map((s) => s.inFlight))), "0", `${n}/${n}`, seconds(oracle.doneMs)],
      ...Goodput.results(report).map((r) => {
        const result = r.byModel[model.serving]!
        return [
          contenderName(r),
          model.serving,
          cap,
          String(result.maxInFlight),
          String(result.rateLimited),
          `${result.completed}/${n}`,
          seconds(result.doneMs)
        ]
      })
    ]
  })

const goodputVerdicts = (report: Goodput.GoodputReport): ReadonlyArray<string> => {
  const { targets } = report.scenario
  const n = report.scenario.requests.length
  const wp = report.weatherproof
  const ratio = wp.makespanMs / report.oracle.makespanMs
  const share = wp.rateLimited / n
  const notSlower = report.peers.filter((peer) => peer.finished && peer.makespanMs <= wp.makespanMs)
  const peersLine = (label: string) =>
    report.peers.length === 0
      ? `${label}: faster than every peer: not measured (peers not run)`
      : `${label}: faster than every peer: ${targets.beatPeers ? Table.verdict(notSlower.length === 0) : notSlower.length === 0 ? "yes" : "no"}${
        notSlower.length === 0 ? "" : ` (not faster than ${notSlower.map((p) => p.name).join(", ")})`
      }`
  const complete = wp.finished && wp.completed === n
  return [
    `target: makespan within ${targets.makespanRatio}× the oracle: ${Table.verdict(ratio <= targets.makespanRatio)} (${ratio.toFixed(3)}×)`,
    `target: at most ${percent(targets.rateLimitedShare)} of requests draw a 429: ${
      Table.verdict(share <= targets.rateLimitedShare)
    } (${percent(share)}, ${wp.rateLimited} of ${n})`,
    peersLine(targets.beatPeers ? "target" : "reference"),
    `check: weatherproof answered all ${n}: ${complete ? "yes" : `NO (${wp.completed})`}`
  ]
}

const warnings = (report: Goodput.GoodputReport): ReadonlyArray<string> =>
  Goodput.results(report).flatMap((r) => [
    ...(r.sameServiceTimes
      ? []
      : [`warning: ${r.name}'s Simulator drew other service times than the oracle's (a request accepted twice?)`]),
    ...(Object.keys(r.failures).length === 0
      ? []
      : [`warning: ${r.name} failed requests: ${Object.entries(r.failures).map(([error, n]) => `${error} ${n}`).join(", ")}`])
  ])

const capsLine = (scenario: Scenario.Scenario): string =>
  scenario.models.length === 1
    ? `account cap ${Scenario.describeCaps(scenario.models[0]!.caps)}`
    : scenario.models.map((model) =>
      `${model.serving} cap ${Scenario.describeCaps(model.caps)}${model.requested === model.serving ? "" : ` (requested as ${model.requested})`}`
    ).join(", ")

const goodputScenario = (scenario: Scenario.Scenario, others: Goodput.Others) =>
  Effect.gen(function*() {
    const { maxMs, minMs } = scenario.serviceTime
    yield* Console.log(
      `\n== Goodput, ${scenario.id}: ${scenario.title}. ${scenario.requests.length} requests (${scenario.mix}), ${
        capsLine(scenario)
      }, ${minMs}-${maxMs} ms each ==`
    )
    const report = yield* Goodput.run(scenario, (name) => Console.log(`running ${name}…`), others)
    yield* Console.log("")
    yield* printTable(goodputHeader, goodputRows(report))
    if (scenario.models.length > 1) {
      yield* Console.log("")
      yield* printTable(modelHeader, modelRows(report), 2)
    }
    yield* Console.log("")
    if (report.lowerBoundMs !== undefined) {
      yield* Console.log(`oracle lower bound (Σ work / cap per phase): ${seconds(report.lowerBoundMs)}`)
    }
    yield* Console.log(`set-up before the first request, not in the makespans: ${
      Goodput.results(report).map((r) => `${r.name} ${seconds(r.startUpMs)}`).join(", ")
    }`)
    for (const line of [...goodputVerdicts(report), ...warnings(report)]) yield* Console.log(line)
    yield* Console.log(`after the run: ${loadLine()}`)
    yield* busyWarning()
    if (writeDocs) {
      writeFileSync(`docs/${scenario.charts.weatherproof}`, goodputChart(report))
      yield* Console.log(`wrote docs/${scenario.charts.weatherproof}`)
      if (report.peers.length > 0) {
        writeFileSync(`docs/${scenario.charts.peers}`, peersChart(report))
        yield* Console.log(`wrote docs/${scenario.charts.peers}`)
      }
    }
    return report
  })

const goodput = Effect.gen(function*() {
  const others: Goodput.Others = { library: only !== "weatherproof", peers: only !== "weatherproof" }
  yield* Console.log("\n== Goodput: the contenders ==")
  for (const contender of Goodput.contenders(others)) yield* Console.log(`${contender.name}: ${contender.policy}`)
  yield* Console.log(
    `peers: one bound of 16 in flight over every model, backoff from ${backoff.baseMs} ms doubling to ${backoff.capMs} ms, up to ${backoff.maxRetries} retries`
  )
  const reports = yield* Effect.forEach(scenarios, (scenario) => goodputScenario(scenario, others))
  if (jsonFile !== undefined) {
    // Each scenario's report with every timeline; its requests are rebuilt by bench/scenarios.ts.
    writeFileSync(jsonFile, JSON.stringify(reports.map(({ scenario, ...report }) => ({ scenario: scenario.id, ...report }))))
  }
})

// --- overhead -----------------------------------------------------------------------------------

const overhead = Effect.gen(function*() {
  const { calls, runs, warmUpRuns } = Overhead.settings
  yield* Console.log(
    `\n== Overhead: instant upstream, ${calls} sequential calls per run, median of ${runs} runs after ${warmUpRuns} warm-up ==`
  )
  const report = yield* Overhead.run
  const row = (name: string, timing: Overhead.Timing, baseline?: Overhead.Timing): Table.Row => [
    name,
    micros(timing.wall),
    baseline === undefined ? "–" : micros(timing.wall - baseline.wall),
    micros(timing.cpu),
    baseline === undefined ? "–" : micros(timing.cpu - baseline.cpu)
  ]
  yield* printTable(["loop", "wall / call", "overhead (wall)", "CPU / call", "overhead (CPU)"], [
    row("bare Transport double (Effect)", report.bareEffect),
    row("weatherproof Resilient, every policy", report.weatherproof, report.bareEffect),
    row("  the same, a tracer installed (span)", report.traced, report.bareEffect),
    row("bare async function", report.bareAsync),
    row("cockatiel retry ∘ breaker ∘ bulkhead", report.cockatiel, report.bareAsync)
  ])
  yield* busyWarning()
  const ours = report.weatherproof.wall - report.bareEffect.wall
  yield* Console.log(
    `target: under ${micros(targets.overheadNs)} overhead per call (wall): ${Table.verdict(ours < targets.overheadNs)} (${
      micros(ours)
    }; CPU ${micros(report.weatherproof.cpu - report.bareEffect.cpu)})\n`
  )
  const saved = (timing: Overhead.Timing): Table.Row => [
    micros(report.weatherproof.wall - timing.wall),
    micros(report.weatherproof.cpu - timing.cpu)
  ]
  yield* printTable(["what a call pays for (full pipeline minus it)", "wall", "CPU"], [
    ...report.without.map(({ name, timing }) => [name, ...saved(timing)]),
    ["Resilient.make itself (every policy a pass-through)", micros(report.skeleton.wall - report.bareEffect.wall), micros(report.skeleton.cpu - report.bareEffect.cpu)]
  ])
})

// --- SSE decoder --------------------------------------------------------------------------------

const megabytes = (mbPerSecond: number) => `${mbPerSecond.toFixed(0)} MB/s`

const sse = Effect.gen(function*() {
  const { rounds, responsesPerRound, warmUpRounds } = Sse.settings
  const { contentChunks, keepAlives, reasoningChunks } = Sse.shape
  yield* Console.log(
    `\n== SSE decoder: a DeepSeek-shaped stream (${keepAlives} keep-alives, role, ${reasoningChunks} reasoning, ${contentChunks} content, usage, [DONE]) decoded ${responsesPerRound}× a round, median of ${rounds} rounds after ${warmUpRounds} warm-up ==`
  )
  const report = yield* Effect.sync(Sse.run)
  yield* Console.log(`${report.bodyBytes} bytes with LF line ends, ${report.events} events`)
  yield* printTable(
    ["reads", "count", "weatherproof", "eventsource-parser", "× e-p", "e-p + StringDecoder", "× e-p + SD", "e-p on decoded text"],
    report.results.map((r) => [
      r.split,
      String(r.reads),
      megabytes(r.mbPerSecond.weatherproof),
      megabytes(r.mbPerSecond.withTextDecoder),
      Sse.ratio(r, "withTextDecoder").toFixed(2),
      megabytes(r.mbPerSecond.withStringDecoder),
      Sse.ratio(r, "withStringDecoder").toFixed(2),
      megabytes(r.mbPerSecond.onText)
    ])
  )
  yield* Console.log(
    "eventsource-parser (e-p) behind a streaming TextDecoder, as documented; the last three columns for reference, no target"
  )
  yield* busyWarning()
  const lowest = (peer: Sse.Peer) =>
    report.results.reduce((low, r) => Sse.ratio(r, peer) < Sse.ratio(low, peer) ? r : low)
  const target = lowest("withTextDecoder")
  yield* Console.log(
    `target: at least ${targets.sseRatio.toFixed(1)}× eventsource-parser's MB/s on every split: ${
      Table.verdict(Sse.ratio(target, "withTextDecoder") >= targets.sseRatio)
    } (lowest ${Sse.ratio(target, "withTextDecoder").toFixed(2)}×, ${target.split})`
  )
  const reference = lowest("withStringDecoder")
  yield* Console.log(
    `reference: against e-p + StringDecoder, lowest ${Sse.ratio(reference, "withStringDecoder").toFixed(2)}× (${reference.split})`
  )
  yield* Console.log(
    `check: every decoder gave the stream's ${report.events} events on every split: ${
      report.mismatches.length === 0 ? "yes" : `NO (${report.mismatches.join(", ")})`
    }`
  )
})

// --- gateway ------------------------------------------------------------------------------------

const gatewayTargets = { addedP50Ms: 1, addedFirstEventMs: 2, throughputRatio: 0.8 } as const

const ms = (value: number) => Number.isNaN(value) ? "–" : `${value.toFixed(2)} ms`
const signedMs = (value: number) => Number.isNaN(value) ? "–" : `${value >= 0 ? "+" : ""}${value.toFixed(2)} ms`

const gatewayRows = (cells: ReadonlyArray<Gateway.Cell>): ReadonlyArray<Table.Row> =>
  cells.map((cell) => {
    const base = cells.find((c) => c.clients === cell.clients && c.contender === "direct")!
    const isBase = cell === base
    return [
      String(cell.clients),
      cell.contender,
      ms(cell.p50Ms),
      isBase ? "–" : signedMs(cell.p50Ms - base.p50Ms),
      ms(cell.p99Ms),
      isBase ? "–" : signedMs(cell.p99Ms - base.p99Ms),
      ms(cell.firstEventP50Ms),
      isBase ? "–" : signedMs(cell.firstEventP50Ms - base.firstEventP50Ms),
      cell.perSecond.toFixed(0),
      (cell.perSecond / base.perSecond).toFixed(2),
      Number.isNaN(cell.cpuMsPerAnswer) ? "–" : `${cell.cpuMsPerAnswer.toFixed(2)} ms`,
      `${cell.failures} / ${cell.streamFailures}`
    ]
  })

const gatewayVerdicts = (cells: ReadonlyArray<Gateway.Cell>): ReadonlyArray<string> =>
  Gateway.settings.clients.flatMap((clients) => {
    const at = (contender: string) => cells.find((c) => c.clients === clients && c.contender.startsWith(contender))!
    const [base, ours, theirs] = [at("direct"), at("weatherproof"), at("Portkey")]
    const added = ours.p50Ms - base.p50Ms
    const firstEvent = ours.firstEventP50Ms - base.firstEventP50Ms
    const ratio = ours.perSecond / base.perSecond
    // A figure Portkey could not produce (every stream failed) counts as one it loses.
    const behind = [
      ours.p50Ms < theirs.p50Ms ? undefined : "p50",
      ours.p99Ms < theirs.p99Ms ? undefined : "p99",
      ours.firstEventP50Ms < theirs.firstEventP50Ms || Number.isNaN(theirs.firstEventP50Ms) ? undefined : "first content",
      ours.perSecond > theirs.perSecond ? undefined : "throughput"
    ].filter((figure) => figure !== undefined)
    return [
      `${clients} client${clients === 1 ? "" : "s"}: p50 added ≤ ${gatewayTargets.addedP50Ms} ms: ${
        Table.verdict(added <= gatewayTargets.addedP50Ms)
      } (${signedMs(added)}); first stream content added ≤ ${gatewayTargets.addedFirstEventMs} ms: ${
        Table.verdict(firstEvent <= gatewayTargets.addedFirstEventMs)
      } (${signedMs(firstEvent)}); throughput ≥ ${gatewayTargets.throughputRatio}× direct: ${
        Table.verdict(ratio >= gatewayTargets.throughputRatio)
      } (${Table.ratioText(ratio, gatewayTargets.throughputRatio)}×); ahead of Portkey on every figure: ${Table.verdict(behind.length === 0)}${
        behind.length === 0 ? "" : ` (not on ${behind.join(", ")})`
      }`
    ]
  })

const gateway = Effect.gen(function*() {
  const { clients, rounds, seconds, serviceMs, streamSeconds } = Gateway.settings
  yield* Console.log(
    `\n== Gateway: direct vs weatherproof serve vs Portkey ${Gateway.portkeyVersion} vs a bare Node proxy, loopback upstream answering in ${serviceMs} ms, ` +
      `${clients.join(" / ")} clients; ${seconds} s non-stream + ${streamSeconds} s stream per cell, median of ${rounds} rounds ==`
  )
  const report = yield* Gateway.run((line) => console.log(line))
  yield* Console.log("")
  yield* printTable(
    [
      "clients",
      "contender",
      "p50",
      "added",
      "p99",
      "added",
      "first content p50",
      "added",
      "answers/s",
      "× direct",
      "CPU / answer",
      "failed (json / stream)"
    ],
    gatewayRows(report.cells)
  )
  for (const line of gatewayVerdicts(report.cells)) yield* Console.log(line)
  yield* busyWarning()
  yield* Console.log("")
  yield* printTable(
    ["probe", "weatherproof", `Portkey ${Gateway.portkeyVersion}`],
    report.probes.map((probe) => [
      probe.name,
      `${probe.weatherproof.ok ? "ok" : "FAIL"}: ${probe.weatherproof.detail}`,
      `${probe.portkey.ok ? "ok" : "FAIL"}: ${probe.portkey.detail}`
    ])
  )
})

// --- Redis state --------------------------------------------------------------------------------

const redisState = Effect.gen(function*() {
  const { calls, runs, warmUpRuns } = Overhead.settings
  yield* Console.log(
    `\n== Redis state: per operation, in memory vs on a loopback redis-server, ${calls} sequential operations per run, median of ${runs} runs after ${warmUpRuns} warm-up ==`
  )
  if (RedisState.skipped !== undefined) return yield* Console.log(RedisState.skipped)
  const rows = yield* RedisState.run
  yield* printTable(
    ["operation", "in memory", "on Redis", "× memory", "added (wall)", "CPU in memory", "CPU on Redis"],
    rows.map(({ memory, operation, redis }) => [
      operation,
      memory === undefined ? "–" : micros(memory.wall),
      micros(redis.wall),
      memory === undefined ? "–" : (redis.wall / memory.wall).toFixed(1),
      memory === undefined ? "–" : micros(redis.wall - memory.wall),
      memory === undefined ? "–" : micros(memory.cpu),
      micros(redis.cpu)
    ])
  )
  yield* Console.log("no target: the figures are reported")
  yield* busyWarning()
})

// --- the batch CLI's cost per request ------------------------------------------------------------

const batchTargets = { cpuRatio: 1.5, rssRatio: 1.5, startupMs: 250, makespanRatio: 1.1, scaleRssRatio: 1.0, lagP99Ms: 100 } as const

const mb = (value: number) => `${value.toFixed(0)} MB`
const msText = (value: number) => Number.isNaN(value) ? "–" : `${value.toFixed(0)} ms`

const batchCost = Effect.gen(function*() {
  const { cap, plainConcurrency, requests, runs } = BatchCost.settings
  yield* Console.log(
    `\n== Batch cost: ${requests} requests to a fast loopback Simulator (account cap ${cap}, answers at once), ` +
      `the batch CLI beside p-limit(${plainConcurrency}) + undici, each a child process, median of ${runs} interleaved runs ==`
  )
  yield* Console.log(`CPU and peak RSS measured by ${measuredBy}`)
  const report = yield* BatchCost.run((line) => console.log(line))
  const row = (c: BatchCost.Contender): Table.Row => [
    c.name,
    seconds(c.wallMs),
    seconds(c.cpuMs),
    `${(c.cpuMs / requests).toFixed(3)} ms`,
    mb(c.maxRssMb),
    String(c.received),
    String(c.rateLimited),
    `${c.completed}/${requests}`,
    String(c.maxInFlight),
    String(c.connections)
  ]
  yield* printTable(
    ["client", "wall", "CPU", "CPU / request", "peak RSS", "sent", "429s", "answered", "peak in flight", "connections"],
    [row(report.weatherproof), row(report.plain)]
  )
  yield* busyWarning()
  const cpuRatio = report.weatherproof.cpuMs / report.plain.cpuMs
  const rssRatio = report.weatherproof.maxRssMb / report.plain.maxRssMb
  yield* Console.log(
    `target: CPU per request ≤ ${batchTargets.cpuRatio}× the plain client's: ${Table.verdict(cpuRatio <= batchTargets.cpuRatio)} (${
      Table.ratioText(cpuRatio, batchTargets.cpuRatio)
    }×)`
  )
  yield* Console.log(
    `target: peak RSS ≤ ${batchTargets.rssRatio}× the plain client's: ${Table.verdict(rssRatio <= batchTargets.rssRatio)} (${Table.ratioText(rssRatio, batchTargets.rssRatio)}×)`
  )
  for (const c of [report.weatherproof, report.plain]) {
    for (const failure of c.failures) yield* Console.log(`warning: ${c.name}: ${failure}`)
  }
})

const startup = Effect.gen(function*() {
  yield* Console.log(
    `\n== Start-up: spawn to the first request at a loopback upstream, one-line batch, median of ${Startup.settings.runs} interleaved runs ==`
  )
  const report = yield* Startup.run
  yield* printTable(
    ["command", "first request", "first chat request", "exit"],
    [report.weatherproof, report.cold, report.plain, report.version].map((t) => [
      t.name,
      msText(t.firstRequestMs),
      msText(t.firstChatMs),
      msText(t.exitMs)
    ])
  )
  yield* Console.log("the CLI's first request is the balance preflight; its first chat request waits for the answer")
  yield* busyWarning()
  yield* Console.log(
    `target: the CLI's first chat request within ${batchTargets.startupMs} ms of its start: ${
      Table.verdict(report.weatherproof.firstChatMs <= batchTargets.startupMs)
    } (${msText(report.weatherproof.firstChatMs)})`
  )
})

const scale = Effect.gen(function*() {
  const { cap, keepAliveMs, requests, serviceMs } = Scale.settings
  yield* Console.log(
    `\n== Scale: ${requests} requests of ${serviceMs.min / 1000}-${serviceMs.max / 1000} s (a keep-alive line every ${
      keepAliveMs / 1000
    } s) against an account cap of ${cap}, the batch CLI beside p-limit(${cap}) + fetch ==`
  )
  yield* Console.log(`CPU and peak RSS measured by ${measuredBy}; event-loop lag beyond a 10 ms sampling interval`)
  const report = yield* Scale.run((line) => console.log(line))
  const row = (c: Scale.Contender): Table.Row => [
    c.name,
    seconds(c.makespanMs),
    (c.makespanMs / report.idealMs).toFixed(2),
    Number.isNaN(c.to90Ms) ? "never" : seconds(c.to90Ms),
    String(c.maxInFlight),
    String(c.rateLimited),
    `${c.completed}/${requests}`,
    seconds(c.measured.wallMs),
    seconds(c.measured.cpuMs),
    mb(c.measured.maxRssMb),
    `${c.measured.lag.p50.toFixed(1)} / ${c.measured.lag.p99.toFixed(1)} / ${c.measured.lag.max.toFixed(0)} ms`
  ]
  yield* printTable(
    ["client", "makespan", "× ideal", `to ${0.9 * cap} in flight`, "peak in flight", "429s", "answered", "process wall", "CPU", "peak RSS", "lag p50 / p99 / max"],
    [row(report.weatherproof), row(report.plain)]
  )
  yield* Console.log(`ideal (Σ service time / cap): ${seconds(report.idealMs)}`)
  yield* busyWarning()
  const { plain, weatherproof } = report
  // A plain run that failed is no measure: it stopped early, with less in memory.
  const against = (target: string, ratio: number, bound: number) =>
    Console.log(
      plain.failure === undefined
        ? `target: ${target}: ${Table.verdict(weatherproof.failure === undefined && ratio <= bound)} (${Table.ratioText(ratio, bound)}×)`
        : `target: ${target}: no verdict (the plain client failed: ${plain.completed} of ${Scale.settings.requests} answered)`
    )
  yield* against(
    `makespan ≤ ${batchTargets.makespanRatio}× the plain client's`,
    weatherproof.makespanMs / plain.makespanMs,
    batchTargets.makespanRatio
  )
  yield* against(
    `peak RSS ≤ ${batchTargets.scaleRssRatio}× the plain client's`,
    weatherproof.measured.maxRssMb / plain.measured.maxRssMb,
    batchTargets.scaleRssRatio
  )
  yield* Console.log(
    `target: event-loop lag p99 ≤ ${batchTargets.lagP99Ms} ms in the CLI: ${Table.verdict(weatherproof.measured.lag.p99 <= batchTargets.lagP99Ms)} (${
      weatherproof.measured.lag.p99.toFixed(1)
    } ms)`
  )
  for (const c of [weatherproof, plain]) {
    if (c.failure !== undefined) yield* Console.log(`warning: ${c.name}: ${c.failure}`)
  }
})

// --- processes sharing one account ----------------------------------------------------------------

const sharedAccount = Effect.gen(function*() {
  const { processes, scenario } = SharedAccount.settings
  const { makespanRatio, rateLimitedShare } = SharedAccount.targets
  yield* Console.log(
    `\n== Processes sharing one account: ${scenario.requests.length} requests, ${scenario.title}, ${scenario.serviceTime.minMs}-${scenario.serviceTime.maxMs} ms each; 1 process, ${processes} through Redis, ${processes} naive ==`
  )
  const report = yield* SharedAccount.run((line) => console.log(line))
  const share = (c: SharedAccount.Contender) => c.rateLimited / report.requests
  yield* printTable(
    ["contender", "makespan", "× oracle", "429s", "429s / requests", "sent / request", "answered", "peak in flight"],
    [
      ["oracle (simulated ideal)", seconds(report.oracleMs), "1.00", "0", "0.0 %", "1.00", `${report.requests}/${report.requests}`, "–"],
      ...report.contenders.map((c): Table.Row => [
        c.name,
        seconds(c.makespanMs),
        (c.makespanMs / report.oracleMs).toFixed(2),
        String(c.rateLimited),
        `${(100 * share(c)).toFixed(1)} %`,
        (c.received / report.requests).toFixed(2),
        `${c.answered}/${report.requests}`,
        String(c.maxInFlight)
      ])
    ]
  )
  yield* busyWarning()
  if (report.skipped !== undefined) return yield* Console.log(report.skipped)
  const shared = report.contenders.find((c) => c.name.includes("Redis"))!
  const ratio = shared.makespanMs / report.oracleMs
  // A run that lost lines meets nothing, however fast it was.
  const ran = shared.failure === undefined
  yield* Console.log(
    `target: ${processes} processes through Redis within ${makespanRatio}× the oracle: ${Table.verdict(ran && ratio <= makespanRatio)} (${Table.ratioText(ratio, makespanRatio)}×)`
  )
  yield* Console.log(
    `target: at most ${100 * rateLimitedShare} % of their requests draw a 429: ${Table.verdict(ran && share(shared) <= rateLimitedShare)} (${
      (100 * share(shared)).toFixed(1)
    } %)`
  )
  for (const c of report.contenders) {
    if (c.failure !== undefined) yield* Console.log(`warning: ${c.name}: ${c.failure}`)
  }
})

const modes: ReadonlyArray<string | undefined> = [
  undefined,
  "goodput",
  "overhead",
  "sse",
  "gateway",
  "redis",
  "batch-cost",
  "startup",
  "scale",
  "shared-account",
  "weatherproof"
]

const main = Effect.gen(function*() {
  if (!modes.includes(only)) {
    yield* Console.error(`unknown --only ${only}: use goodput, overhead, sse, gateway, redis, batch-cost, startup, scale, shared-account or weatherproof`)
    return yield* Effect.sync(() => process.exit(2))
  }
  if (scenarios.length === 0 || (scenarioIds !== undefined && scenarios.length !== scenarioIds.length)) {
    yield* Console.error(`unknown --scenario ${scenarioIds?.join(",")}: use ${Scenarios.all.map((s) => s.id).join(", ")}, or several, comma-separated`)
    return yield* Effect.sync(() => process.exit(2))
  }
  yield* Console.log(`machine: ${machine()}`)
  if (only === undefined || only === "goodput" || only === "weatherproof") yield* goodput
  if (only === undefined || only === "overhead") yield* overhead
  if (only === undefined || only === "sse") yield* sse
  if (only === undefined || only === "gateway") yield* gateway
  if (only === undefined || only === "redis") yield* redisState
  if (only === undefined || only === "batch-cost") yield* batchCost
  if (only === undefined || only === "startup") yield* startup
  if (only === undefined || only === "scale") yield* scale
  if (only === undefined || only === "shared-account") yield* sharedAccount
})

NodeRuntime.runMain(main)
