/**
 * The oracle: a simulated ideal run of the scenario. It knows the cap at every instant and every
 * request's service time, and keeps exactly the current cap in flight: whenever a slot is free
 * (in-flight below the cap) the next request, in input order, starts at once; never a 429, no
 * network or client time. When the cap falls below what is in flight nothing new starts until
 * in-flight drops under it (what the server allows; requests already running are not revoked).
 *
 * Simulated rather than analytic because the phase boundaries and the tail (the last requests
 * run with the slots half empty) matter at this size; the lower bound Σ work / cap per phase is
 * reported beside it.
 */
import type { Sample } from "../src/Simulator.js"
import { limitAfter, phases, type BenchRequest } from "./scenario.js"

export interface OracleRun {
  readonly makespanMs: number
  /** (t, cap, in-flight) at every start and finish, as the Simulator samples its account. */
  readonly timeline: ReadonlyArray<Sample>
}

/** Smallest finish time first. */
const insertSorted = (finishes: Array<number>, t: number): void => {
  const at = finishes.findIndex((f) => f > t)
  if (at === -1) finishes.push(t)
  else finishes.splice(at, 0, t)
}

export const runOracle = (requests: ReadonlyArray<BenchRequest>): OracleRun => {
  const timeline: Array<Sample> = []
  const finishes: Array<number> = []
  let now = 0
  let next = 0
  while (next < requests.length || finishes.length > 0) {
    while (next < requests.length && finishes.length < limitAfter(next)) {
      insertSorted(finishes, now + requests[next]!.serviceMs)
      next++
      timeline.push({ t: now, limit: limitAfter(next), inFlight: finishes.length })
    }
    now = finishes.shift()!
    timeline.push({ t: now, limit: limitAfter(next), inFlight: finishes.length })
  }
  return { makespanMs: now, timeline }
}

/** Σ over phases of (work of the phase's requests / its cap): no run can beat it. */
export const lowerBoundMs = (requests: ReadonlyArray<BenchRequest>): number => {
  let start = 0
  let bound = 0
  for (const phase of phases) {
    const work = requests.slice(start, start + phase.accepted).reduce((sum, r) => sum + r.serviceMs, 0)
    bound += work / phase.limit
    start += phase.accepted
  }
  return bound
}
