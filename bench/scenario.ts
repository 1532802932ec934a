/**
 * The goodput scenario every contender faces: the same 600 requests against a freshly started
 * Simulator whose account cap moves 24 → 6 → 32 in flight.
 *
 * - **Phases by accepted requests**: the cap is 24 until the server has accepted 200 requests,
 *   6 until it has accepted 400, then 32. Counting accepted requests (not seconds) gives every
 *   contender the same three workloads whatever its speed, so each phase is substantial for all
 *   of them, and the oracle faces exactly the same schedule. (It is also the scenario the
 *   adaptive limiter's doc names.)
 * - **Service time**: an accepted request holds its slot for 200-600 ms (uniform), during which
 *   the server sends keep-alive empty lines, then the JSON body. The draw comes from the
 *   Simulator's per-request seeded generator (seed, body), so a request takes the same time in
 *   every contender's run and in the oracle.
 *
 * The Simulator's `limit` is a function of time only, so the phase counter is kept here: the
 * `queueDelay` function runs exactly once per accepted request, and the `limit` function reads
 * the count.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Hash from "effect/Hash"
import * as Random from "effect/Random"
import * as Schema from "effect/Schema"
import { ChatCompletionRequest } from "../src/ChatSchema.js"
import type * as Simulator from "../src/Simulator.js"

/** A stretch of the run with one account cap. */
export interface Phase {
  readonly limit: number
  /** Requests accepted while this cap holds. */
  readonly accepted: number
}

export const phases: ReadonlyArray<Phase> = [
  { limit: 24, accepted: 200 },
  { limit: 6, accepted: 200 },
  { limit: 32, accepted: 200 }
]

export const requestCount = phases.reduce((sum, phase) => sum + phase.accepted, 0)

export const serviceTime = { minMs: 200, maxMs: 600 } as const

export const simulatorSeed = "weatherproof-goodput"

/** The cap once `accepted` requests have been accepted. */
export const limitAfter = (accepted: number): number => {
  let end = 0
  for (const phase of phases) {
    end += phase.accepted
    if (accepted < end) return phase.limit
  }
  return phases[phases.length - 1]!.limit
}

export const serviceMsOf = (draw: number): number => serviceTime.minMs + (serviceTime.maxMs - serviceTime.minMs) * draw

/** One request of the scenario: its marker, its batch input line and the exact bytes sent. */
export interface BenchRequest {
  readonly customId: string
  readonly marker: string
  /** The OpenAI-batch input line (for the batch path). */
  readonly inputLine: string
  /**
   * The body as weatherproof's transport serialises it (decoded, `stream: false` forced). Peers
   * send these very bytes, because the Simulator seeds each request's draws from its raw body.
   */
  readonly wire: string
  readonly serviceMs: number
}

const decodeRequest = Schema.decodeUnknownSync(ChatCompletionRequest)

/**
 * The service time the Simulator will draw for a body's first acceptance: its generator is seeded
 * with `seed/attempt/hash(body)` and draws the fault before the queue delay. Checked at run time
 * against the draws the Simulator actually made (see `ServiceLog`).
 */
const firstServiceMs = (wire: string): number =>
  Effect.runSync(Effect.gen(function*() {
    const random = Random.make(`${simulatorSeed}/0/${Hash.string(wire)}`)
    yield* random.next
    return serviceMsOf(yield* random.next)
  }))

const makeRequest = (index: number): BenchRequest => {
  const customId = `bench-${String(index + 1).padStart(4, "0")}`
  const marker = `request ${index + 1} of the goodput benchmark`
  const body = { model: "deepseek-v4-flash", messages: [{ role: "user", content: marker }] }
  const wire = JSON.stringify({ ...decodeRequest(body), stream: false })
  return {
    customId,
    marker,
    inputLine: JSON.stringify({ custom_id: customId, method: "POST", url: "/v1/chat/completions", body }),
    wire,
    serviceMs: firstServiceMs(wire)
  }
}

export const requests: ReadonlyArray<BenchRequest> = Array.from({ length: requestCount }, (_, i) => makeRequest(i))

/** The service times one Simulator drew, in acceptance order. */
export interface ServiceLog {
  readonly drawnMs: ReadonlyArray<number>
}

/**
 * Options of a fresh Simulator for one contender, and the log of its draws. The phase counter
 * lives in the closures, so each call starts from phase one. `onLimitCheck` is called whenever
 * the Simulator reads the cap (each request it receives, each sample), with the time since it
 * started: a moment to observe the client.
 */
export const simulatorOptions = (
  onLimitCheck?: (elapsedMs: number) => void
): { readonly options: Simulator.Options; readonly log: ServiceLog } => {
  const drawnMs: Array<number> = []
  const options: Simulator.Options = {
    limit: (elapsedMs) => {
      onLimitCheck?.(elapsedMs)
      return limitAfter(drawnMs.length)
    },
    queueDelay: (load) => {
      const ms = serviceMsOf(load.random)
      drawnMs.push(ms)
      return Duration.millis(ms)
    },
    keepAliveInterval: "50 millis",
    chunkDelay: 0,
    seed: simulatorSeed
  }
  return { options, log: { drawnMs } }
}

/**
 * Whether a run drew exactly the service times the oracle assumed (as multisets): true when
 * every request was accepted once and the bodies were the ones the oracle hashed.
 */
export const drewScenarioTimes = (log: ServiceLog): boolean => {
  const sorted = (values: ReadonlyArray<number>) => [...values].sort((a, b) => a - b)
  const expected = sorted(requests.map((request) => request.serviceMs))
  const drawn = sorted(log.drawnMs)
  return drawn.length === expected.length && drawn.every((ms, i) => Math.abs(ms - expected[i]!) < 1e-6)
}
