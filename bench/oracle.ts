/**
 * The oracle: a simulated ideal run of a scenario. It knows every model's cap at every instant and
 * every request's service time, and keeps exactly the caps in flight, per model: whenever a
 * model's in-flight is below its cap, the model's next request, in input order, starts at once;
 * never a 429, no network or client time. When a cap falls below what is in flight nothing new
 * of that model starts until its in-flight drops under it (what the server allows; requests
 * already running are not revoked). Time starts at its first send, as a contender's makespan
 * starts at its first request.
 *
 * Simulated rather than analytic because the phase boundaries and the tail (the last requests
 * run with the slots half empty) matter at these sizes; a simple lower bound is reported beside it.
 */
import type { Sample } from "../src/Simulator.js"
import { type BenchRequest, capAt, type Model, nextChangeAfter, requestsOf, type Scenario } from "./scenario.js"

/** One model in the ideal run. */
export interface OracleModel {
  /** Its last answer. */
  readonly doneMs: number
  /** (t, cap, in-flight) at every start, finish and change of cap, as the Simulator samples it. */
  readonly timeline: ReadonlyArray<Sample>
}

export interface OracleRun {
  readonly makespanMs: number
  /** Requests in flight at once, every model together. */
  readonly maxInFlight: number
  /** By serving name. */
  readonly byModel: Readonly<Record<string, OracleModel>>
}

interface Finish {
  readonly t: number
  readonly model: Model
}

/** Smallest finish time first. */
const insertSorted = (finishes: Array<Finish>, finish: Finish): void => {
  const at = finishes.findIndex((f) => f.t > finish.t)
  if (at === -1) finishes.push(finish)
  else finishes.splice(at, 0, finish)
}

/** A model's state in the run. */
interface Lane {
  readonly model: Model
  readonly queue: ReadonlyArray<BenchRequest>
  next: number
  inFlight: number
  doneMs: number
  readonly timeline: Array<Sample>
}

export const runOracle = (scenario: Scenario): OracleRun => {
  const lanes = new Map<Model, Lane>(
    scenario.models.map((model) => [model, { model, queue: requestsOf(scenario, model), next: 0, inFlight: 0, doneMs: 0, timeline: [] }])
  )
  const finishes: Array<Finish> = []
  let now = 0
  let accepted = 0
  let maxInFlight = 0
  const sample = (lane: Lane) => lane.timeline.push({ t: now, limit: capAt(lane.model.caps, now, accepted), inFlight: lane.inFlight })
  const waiting = () => [...lanes.values()].some((lane) => lane.next < lane.queue.length)
  for (;;) {
    for (const lane of lanes.values()) {
      while (lane.next < lane.queue.length && lane.inFlight < capAt(lane.model.caps, now, accepted)) {
        insertSorted(finishes, { t: now + lane.queue[lane.next]!.serviceMs, model: lane.model })
        lane.next++
        lane.inFlight++
        accepted++
        sample(lane)
      }
    }
    maxInFlight = Math.max(maxInFlight, finishes.length)
    const finish = finishes[0]
    if (finish === undefined && !waiting()) break
    const changes = waiting()
      ? scenario.models.flatMap((model) => nextChangeAfter(model.caps, now) ?? [])
      : []
    const change = Math.min(...changes)
    if (finish === undefined || change < finish.t) {
      // A cap moves before the next finish: maybe room for more.
      if (!Number.isFinite(change)) throw new Error(`oracle of ${scenario.id}: requests wait for a cap that never rises`)
      now = change
      for (const lane of lanes.values()) sample(lane)
      continue
    }
    finishes.shift()
    now = finish.t
    const lane = lanes.get(finish.model)!
    lane.inFlight--
    lane.doneMs = now
    sample(lane)
  }
  return {
    makespanMs: now,
    maxInFlight,
    byModel: Object.fromEntries([...lanes.values()].map((lane) => [lane.model.serving, { doneMs: lane.doneMs, timeline: lane.timeline }]))
  }
}

/**
 * Σ work / cap, over the phases for caps that step by accepted requests (the work of each phase's
 * requests at its cap): no run can beat the largest over the models. None for caps that move by
 * time, where the requests running when a cap falls use more than the new cap.
 */
const modelBoundMs = (model: Model, requests: ReadonlyArray<BenchRequest>): number | undefined => {
  const work = (from: number, to: number) => requests.slice(from, to).reduce((sum, r) => sum + r.serviceMs, 0)
  const caps = model.caps
  switch (caps._tag) {
    case "Fixed":
      return work(0, requests.length) / caps.limit
    case "ByAccepted": {
      let start = 0
      let bound = 0
      for (const phase of caps.phases) {
        bound += work(start, start + phase.accepted) / phase.limit
        start += phase.accepted
      }
      return bound
    }
    case "ByTime":
      return undefined
  }
}

export const lowerBoundMs = (scenario: Scenario): number | undefined => {
  const bounds = scenario.models.map((model) => modelBoundMs(model, requestsOf(scenario, model)))
  return bounds.includes(undefined) ? undefined : Math.max(...bounds as ReadonlyArray<number>)
}
