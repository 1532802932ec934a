/**
 * What a goodput scenario is, and what every contender of one faces: the same requests, each
 * naming its model, against a freshly started Simulator whose caps (one per model, or one the
 * account's models share) move on a schedule the oracle knows. The scenarios themselves are in
 * `scenarios.ts`.
 *
 * - **Caps** move by accepted requests (`ByAccepted`: every contender meets the same workloads
 *   whatever its speed), by time since the first request (`ByTime`, repeating: a cap that moves
 *   fast whatever the client does), or not at all (`Fixed`).
 * - **Service time**: an accepted request holds its slot for a time drawn uniformly from the
 *   scenario's range by the Simulator's per-request seeded generator (seed, body), during which
 *   the server sends keep-alive empty lines, then the JSON body. A request therefore takes the
 *   same time in every contender's run and in the oracle.
 *
 * The Simulator's `limit` is a function of its own time only, so the counters the caps follow are
 * kept here: the `queueDelay` function runs exactly once per accepted request, and the first
 * limit check of a run is its first request (the origin of `ByTime` phases).
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Hash from "effect/Hash"
import * as Random from "effect/Random"
import * as Schema from "effect/Schema"
import { ChatCompletionRequest } from "../src/ChatSchema.js"
import type * as Simulator from "../src/Simulator.js"

/** How a cap moves. After its last `ByAccepted` phase the cap stays; `ByTime` phases repeat. */
export type Caps =
  | { readonly _tag: "Fixed"; readonly limit: number }
  | { readonly _tag: "ByAccepted"; readonly phases: ReadonlyArray<{ readonly limit: number; readonly accepted: number }> }
  | { readonly _tag: "ByTime"; readonly phases: ReadonlyArray<{ readonly limit: number; readonly ms: number }> }

const cycleMs = (phases: ReadonlyArray<{ readonly ms: number }>): number => phases.reduce((sum, phase) => sum + phase.ms, 0)

/** The cap `elapsedMs` after the first request, once `accepted` requests have been accepted. */
export const capAt = (caps: Caps, elapsedMs: number, accepted: number): number => {
  switch (caps._tag) {
    case "Fixed":
      return caps.limit
    case "ByAccepted": {
      let end = 0
      for (const phase of caps.phases) {
        end += phase.accepted
        if (accepted < end) return phase.limit
      }
      return caps.phases[caps.phases.length - 1]!.limit
    }
    case "ByTime": {
      let t = Math.max(0, elapsedMs) % cycleMs(caps.phases)
      for (const phase of caps.phases) {
        if (t < phase.ms) return phase.limit
        t -= phase.ms
      }
      return caps.phases[caps.phases.length - 1]!.limit
    }
  }
}

/** The first moment after `elapsedMs` the cap changes by time alone (`ByTime`), if any. */
export const nextChangeAfter = (caps: Caps, elapsedMs: number): number | undefined => {
  if (caps._tag !== "ByTime") return undefined
  const cycle = cycleMs(caps.phases)
  let boundary = Math.floor(elapsedMs / cycle) * cycle
  for (;;) {
    for (const phase of caps.phases) {
      boundary += phase.ms
      if (boundary > elapsedMs) return boundary
    }
  }
}

export const describeCaps = (caps: Caps): string => {
  switch (caps._tag) {
    case "Fixed":
      return String(caps.limit)
    case "ByAccepted":
      return `${caps.phases.map((phase) => phase.limit).join(" → ")} (each for ${caps.phases[0]!.accepted} accepted)`
    case "ByTime":
      return `${caps.phases.map((phase) => phase.limit).join(" → ")} (${
        (caps.phases[0]!.ms / 1000).toFixed(1)
      } s each, repeating)`
  }
}

/** A model of a scenario: the name requests give, the Simulator's serving name, its cap. */
export interface Model {
  readonly requested: string
  readonly serving: string
  readonly caps: Caps
}

/** What weatherproof's contender must achieve. */
export interface Targets {
  /** Makespan at most this many times the oracle's. */
  readonly makespanRatio: number
  /** 429 answers at most this share of the requests. */
  readonly rateLimitedShare: number
  /** Faster than every peer. */
  readonly beatPeers: boolean
}

/** One request of a scenario: its marker, its model, its batch input line and the exact bytes sent. */
export interface BenchRequest {
  readonly customId: string
  readonly marker: string
  readonly model: Model
  /** The OpenAI-batch input line (for the batch path). */
  readonly inputLine: string
  /**
   * The body as weatherproof's transport serialises it (decoded, `stream: false` forced). Peers
   * send these very bytes, because the Simulator seeds each request's draws from its raw body.
   */
  readonly wire: string
  readonly serviceMs: number
}

export interface ServiceTime {
  readonly minMs: number
  readonly maxMs: number
}

export interface Scenario {
  /** For `--scenario` and the report. */
  readonly id: string
  /** What it tests, for headings. */
  readonly title: string
  /** One cap the account's models share when there is one model; a cap per model otherwise. */
  readonly models: ReadonlyArray<Model>
  /** How many of each model, in input order (e.g. three flash, one pro). */
  readonly mix: string
  readonly serviceTime: ServiceTime
  readonly seed: string
  readonly requests: ReadonlyArray<BenchRequest>
  readonly targets: Targets
  /** The SVG files of `--write-docs`, in docs/: weatherproof's run, and every contender's. */
  readonly charts: { readonly weatherproof: string; readonly peers: string }
}

export interface ScenarioOptions extends Omit<Scenario, "requests" | "mix"> {
  /** Names the requests' markers: `request 12 of the <marker> benchmark`. */
  readonly marker: string
  /** The models of requests 1, 2, … in turn, repeated. Default: `models`. */
  readonly pattern?: ReadonlyArray<Model>
  readonly count: number
}

const serviceMsOf = (serviceTime: ServiceTime, draw: number): number =>
  serviceTime.minMs + (serviceTime.maxMs - serviceTime.minMs) * draw

const decodeRequest = Schema.decodeUnknownSync(ChatCompletionRequest)

/**
 * The service time the Simulator will draw for a body's first acceptance: its generator is seeded
 * with `seed/attempt/hash(body)` and draws the fault before the queue delay. Checked at run time
 * against the draws the Simulator actually made (see `ServiceLog`).
 */
const firstServiceMs = (options: ScenarioOptions, wire: string): number =>
  Effect.runSync(Effect.gen(function*() {
    const random = Random.make(`${options.seed}/0/${Hash.string(wire)}`)
    yield* random.next
    return serviceMsOf(options.serviceTime, yield* random.next)
  }))

const makeRequest = (options: ScenarioOptions, index: number): BenchRequest => {
  const customId = `bench-${String(index + 1).padStart(4, "0")}`
  const marker = `request ${index + 1} of the ${options.marker} benchmark`
  const pattern = options.pattern ?? options.models
  const model = pattern[index % pattern.length]!
  const body = { model: model.requested, messages: [{ role: "user", content: marker }] }
  const wire = JSON.stringify({ ...decodeRequest(body), stream: false })
  return {
    customId,
    marker,
    model,
    inputLine: JSON.stringify({ custom_id: customId, method: "POST", url: "/v1/chat/completions", body }),
    wire,
    serviceMs: firstServiceMs(options, wire)
  }
}

/** `deepseek-v4-flash`, or `deepseek-v4-flash and deepseek-v4-pro, 3:1`. */
const describeMix = (pattern: ReadonlyArray<Model>): string => {
  const counts = new Map<string, number>()
  for (const model of pattern) counts.set(model.requested, (counts.get(model.requested) ?? 0) + 1)
  return counts.size === 1
    ? [...counts.keys()].join("")
    : `${[...counts.keys()].join(" and ")}, ${[...counts.values()].join(":")}`
}

export const make = (options: ScenarioOptions): Scenario => {
  const { count, marker, pattern, ...scenario } = options
  return {
    ...scenario,
    mix: describeMix(pattern ?? scenario.models),
    requests: Array.from({ length: count }, (_, i) => makeRequest(options, i))
  }
}

/** The requests of one model, in input order. */
export const requestsOf = (scenario: Scenario, model: Model): ReadonlyArray<BenchRequest> =>
  scenario.requests.filter((request) => request.model === model)

/** What one Simulator did that the scenario follows: the service times it drew, in acceptance order, and when its first request came. */
export interface ServiceLog {
  readonly drawnMs: ReadonlyArray<number>
  /** Simulator time of its first limit check, which is the first request it received. */
  readonly firstRequestMs: () => number | undefined
}

/**
 * Options of a fresh Simulator for one contender, and the log of its draws. The counters live in
 * the closures, so each call starts from the first phase. `onLimitCheck` is called whenever the
 * Simulator reads a model's cap (each request of it received, each sample), with the model and
 * the time since the Simulator started: a moment to observe the client.
 */
export const simulatorOptions = (
  scenario: Scenario,
  onLimitCheck?: (model: Model, elapsedMs: number) => void
): { readonly options: Simulator.Options; readonly log: ServiceLog } => {
  const drawnMs: Array<number> = []
  let firstRequestMs: number | undefined
  const limitOf = (model: Model): Simulator.Limit => (elapsedMs) => {
    firstRequestMs ??= elapsedMs
    onLimitCheck?.(model, elapsedMs)
    return capAt(model.caps, elapsedMs - firstRequestMs, drawnMs.length)
  }
  const aliases = scenario.models.filter((model) => model.requested !== model.serving)
  const options: Simulator.Options = {
    limit: scenario.models.length === 1
      ? limitOf(scenario.models[0]!)
      : Object.fromEntries(scenario.models.map((model) => [model.serving, limitOf(model)])),
    aliases: Object.fromEntries(aliases.map((model) => [model.requested, model.serving])),
    queueDelay: (load) => {
      const ms = serviceMsOf(scenario.serviceTime, load.random)
      drawnMs.push(ms)
      return Duration.millis(ms)
    },
    keepAliveInterval: "50 millis",
    chunkDelay: 0,
    seed: scenario.seed
  }
  return { options, log: { drawnMs, firstRequestMs: () => firstRequestMs } }
}

/**
 * Whether a run drew exactly the service times the oracle assumed (as multisets): true when
 * every request was accepted once and the bodies were the ones the oracle hashed.
 */
export const drewScenarioTimes = (scenario: Scenario, log: ServiceLog): boolean => {
  const sorted = (values: ReadonlyArray<number>) => [...values].sort((a, b) => a - b)
  const expected = sorted(scenario.requests.map((request) => request.serviceMs))
  const drawn = sorted(log.drawnMs)
  return drawn.length === expected.length && drawn.every((ms, i) => Math.abs(ms - expected[i]!) < 1e-6)
}
