/**
 * The goodput scenarios, every contender faces each (see docs/benchmarks.md):
 *
 * - `steps`: one model, the account cap 24 → 6 → 32, a step every 200 accepted requests (the
 *   scenario the adaptive limiter's doc names; unchanged, so its figures stay comparable);
 * - `mixed-1to1`, `mixed-3to1`: one account, DeepSeek-like caps per model (flash 12, pro 6) with
 *   flash requested under its old name, as DeepSeek serves it; half-and-half, then three flash
 *   for each pro;
 * - `fast-cap`: one model whose cap moves fast, 16 → 4 → 40 every 1.5 s, with short requests.
 */
import * as Scenario from "./scenario.js"

const flashSteps: Scenario.Model = {
  requested: "deepseek-v4-flash",
  serving: "deepseek-v4-flash",
  caps: {
    _tag: "ByAccepted",
    phases: [{ limit: 24, accepted: 200 }, { limit: 6, accepted: 200 }, { limit: 32, accepted: 200 }]
  }
}

export const steps: Scenario.Scenario = Scenario.make({
  id: "steps",
  title: "the account cap steps 24 → 6 → 32",
  marker: "goodput",
  seed: "weatherproof-goodput",
  models: [flashSteps],
  count: 600,
  serviceTime: { minMs: 200, maxMs: 600 },
  targets: { makespanRatio: 1.15, rateLimitedShare: 0.02, beatPeers: true },
  charts: { weatherproof: "goodput.svg", peers: "goodput-peers.svg" }
})

/** DeepSeek serves the old flash name with its new model, capped under the new name. */
const flash: Scenario.Model = { requested: "deepseek-v4-flash", serving: "deepseek-flash", caps: { _tag: "Fixed", limit: 12 } }
const pro: Scenario.Model = { requested: "deepseek-v4-pro", serving: "deepseek-v4-pro", caps: { _tag: "Fixed", limit: 6 } }

const mixed = {
  models: [flash, pro],
  serviceTime: { minMs: 200, maxMs: 600 },
  targets: { makespanRatio: 1.2, rateLimitedShare: 0.02, beatPeers: false }
} as const

export const mixedEven: Scenario.Scenario = Scenario.make({
  ...mixed,
  id: "mixed-1to1",
  title: "one account, flash and pro capped apart, half and half",
  marker: "mixed 1:1",
  seed: "weatherproof-mixed-1to1",
  pattern: [flash, pro],
  count: 300,
  charts: { weatherproof: "goodput-mixed-1to1.svg", peers: "goodput-mixed-1to1-peers.svg" }
})

export const mixedMostlyFlash: Scenario.Scenario = Scenario.make({
  ...mixed,
  id: "mixed-3to1",
  title: "one account, flash and pro capped apart, three flash for each pro",
  marker: "mixed 3:1",
  seed: "weatherproof-mixed-3to1",
  pattern: [flash, flash, flash, pro],
  count: 400,
  charts: { weatherproof: "goodput-mixed-3to1.svg", peers: "goodput-mixed-3to1-peers.svg" }
})

const flashFast: Scenario.Model = {
  requested: "deepseek-v4-flash",
  serving: "deepseek-v4-flash",
  caps: { _tag: "ByTime", phases: [{ limit: 16, ms: 1500 }, { limit: 4, ms: 1500 }, { limit: 40, ms: 1500 }] }
}

export const fastCap: Scenario.Scenario = Scenario.make({
  id: "fast-cap",
  title: "the account cap moves fast, 16 → 4 → 40 every 1.5 s",
  marker: "fast cap",
  seed: "weatherproof-fast-cap",
  models: [flashFast],
  count: 1300,
  serviceTime: { minMs: 60, maxMs: 150 },
  targets: { makespanRatio: 1.25, rateLimitedShare: 0.03, beatPeers: false },
  charts: { weatherproof: "goodput-fast-cap.svg", peers: "goodput-fast-cap-peers.svg" }
})

export const all: ReadonlyArray<Scenario.Scenario> = [steps, mixedEven, mixedMostlyFlash, fastCap]
