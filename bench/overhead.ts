/**
 * The overhead benchmark: what our policies cost per call when the upstream costs nothing.
 *
 * - **weatherproof**: `Policy.layer()` (every policy at its default: retry schedule
 *   and budget, unlimited token bucket, adaptive limiter, circuit breaker, metrics) around an
 *   instant `Transport` double that returns a prebuilt completion synchronously, against a bare
 *   call of the same double. With Effect's built-in tracer, which sends spans nowhere, the
 *   pipeline makes none; the **traced** row installs a tracer, so every call makes its span.
 * - **cockatiel**: its `wrap(retry, breaker, bulkhead)` (the goodput peer's policy) around an
 *   instant async function, against a bare `await` of that function.
 * - **breakdown**: the same pipeline with one part at a time made a pass-through, so the cost of
 *   each part is the difference.
 *
 * Calls run one after another, `calls` per run, in one `runPromise` (or one `async` loop), so the
 * figure is the latency added to a call, not throughput. After warm-up runs, the loops run
 * interleaved `runs` times; each reports its median wall time per call, and its median CPU time
 * per call (the process's user + system time, steadier when other work shares the cores).
 */
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Stream from "effect/Stream"
import * as Tracer from "effect/Tracer"
import type { ChatCompletion, ChatCompletionRequest } from "../src/ChatSchema.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as ConcurrencyLimiter from "../src/ConcurrencyLimiter.js"
import * as Resilient from "../src/Resilient.js"
import * as RetryBudget from "../src/RetryBudget.js"
import * as RetryPolicy from "../src/RetryPolicy.js"
import * as Policy from "../src/Policy.js"
import * as TokenBucket from "../src/TokenBucket.js"
import { Transport } from "../src/Transport.js"
import { makeCockatielPolicy } from "./peers.js"

export const settings = { calls: 10_000, warmUpRuns: 1, runs: 5 } as const

const request: ChatCompletionRequest = {
  model: "deepseek-v4-flash",
  messages: [{ role: "user", content: "How much do the policies cost?" }]
}

const completion: ChatCompletion = {
  id: "chatcmpl-instant",
  object: "chat.completion",
  created: 0,
  model: "deepseek-v4-flash",
  choices: [{ index: 0, message: { role: "assistant", content: "Very little." }, finish_reason: "stop" }],
  usage: { prompt_tokens: 8, completion_tokens: 3, total_tokens: 11 }
}

/** The instant upstream: a prebuilt completion, synchronously. */
const instantTransport = Layer.succeed(
  Transport,
  Transport.of({ create: () => Effect.succeed(completion), stream: () => Stream.empty })
)

const instantAsync = async (): Promise<ChatCompletion> => completion

// --- the pipeline and its pass-through variants ---------------------------------------------------

/** A part of the policy, by default what `Policy.layer()` uses. */
interface PartLayers {
  readonly limiter: Layer.Layer<ConcurrencyLimiter.ConcurrencyLimiter>
  readonly retry: Layer.Layer<RetryPolicy.RetryPolicy>
  readonly budget: Layer.Layer<RetryBudget.RetryBudget>
  readonly breaker: Layer.Layer<CircuitBreaker.CircuitBreaker>
}

const defaultParts: PartLayers = {
  limiter: ConcurrencyLimiter.layerAdaptive(),
  retry: RetryPolicy.layer(),
  budget: RetryBudget.layer(),
  breaker: CircuitBreaker.layer()
}

/** A service of `layer` with some of its members replaced. */
const overriding = <I, S extends object>(
  tag: Context.Tag<I, S>,
  layer: Layer.Layer<I>,
  override: (service: S) => Partial<S>
): Layer.Layer<I> => Layer.effect(tag, Effect.map(tag, (service) => ({ ...service, ...override(service) }))).pipe(Layer.provide(layer))

const grantAtOnce: ConcurrencyLimiter.Permit = {
  complete: () => Effect.void,
  accepted: Effect.void,
  recordQueueDelay: () => Effect.void,
  settle: () => Effect.void
}

const passThrough: PartLayers = {
  limiter: overriding(ConcurrencyLimiter.ConcurrencyLimiter, defaultParts.limiter, () => ({
    acquire: () => Effect.succeed(grantAtOnce),
    withPermit: (use) => use(grantAtOnce)
  })),
  retry: RetryPolicy.layerNone,
  budget: RetryBudget.layerUnlimited,
  breaker: overriding(CircuitBreaker.CircuitBreaker, defaultParts.breaker, () => ({
    protect: <A, E, R>(effect: Effect.Effect<A, E, R>) => effect
  }))
}

const pipeline = (parts: Partial<PartLayers> = {}) => {
  const { breaker, budget, limiter, retry } = { ...defaultParts, ...parts }
  return Resilient.layer.pipe(
    Layer.provide([
      instantTransport,
      Policy.layerFromContext.pipe(Layer.provide([TokenBucket.layerUnlimited, limiter, retry, budget, breaker]))
    ])
  )
}

/** What each breakdown row removes from the full pipeline. */
const variants: ReadonlyArray<{ readonly name: string; readonly layer: Layer.Layer<Resilient.Resilient> }> = [
  { name: "adaptive limiter", layer: pipeline({ limiter: passThrough.limiter }) },
  { name: "circuit breaker", layer: pipeline({ breaker: passThrough.breaker }) },
  { name: "retry schedule (RetryPolicy.layerNone)", layer: pipeline({ retry: passThrough.retry }) },
  { name: "retry budget", layer: pipeline({ budget: passThrough.budget }) }
]

/**
 * A tracer installed in place of Effect's built-in one: it makes the built-in tracer's spans, so
 * the pipeline makes its span per call, with the cheapest spans a tracer can make.
 */
const installedTracer = Layer.setTracer(Tracer.make({
  span: (...args) => Context.get(DefaultServices.liveServices, Tracer.Tracer).span(...args),
  context: (f) => f()
}))

/** Every policy a pass-through: what `Resilient.make` itself costs (metrics, retry, the gates' calls). */
const skeleton = pipeline(passThrough)

// --- timing -------------------------------------------------------------------------------------

export interface Timing {
  /** Nanoseconds per call. */
  readonly wall: number
  readonly cpu: number
}

type Loop = () => Promise<Timing>

const timed = async (run: () => Promise<unknown>): Promise<Timing> => {
  const cpuBefore = process.cpuUsage()
  const start = performance.now()
  await run()
  const wallNs = (performance.now() - start) * 1e6
  const cpu = process.cpuUsage(cpuBefore)
  return { wall: wallNs / settings.calls, cpu: ((cpu.user + cpu.system) * 1e3) / settings.calls }
}

export const effectLoop = <R>(runtime: ManagedRuntime.ManagedRuntime<R, never>, call: () => Effect.Effect<unknown, unknown, R>): Loop => () =>
  timed(() =>
    runtime.runPromise(Effect.suspend(() => {
      let i = 0
      return Effect.whileLoop({ while: () => i++ < settings.calls, body: call, step: () => {} })
    }))
  )

const promiseLoop = (call: () => Promise<unknown>): Loop => () =>
  timed(async () => {
    for (let i = 0; i < settings.calls; i++) await call()
  })

const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

/** Runs the loops interleaved, warm-up first, and returns each one's median timing. */
export const measure = async (loops: Readonly<Record<string, Loop>>): Promise<Record<string, Timing>> => {
  const samples: Record<string, Array<Timing>> = Object.fromEntries(Object.keys(loops).map((name) => [name, []]))
  for (let round = 0; round < settings.warmUpRuns + settings.runs; round++) {
    for (const [name, loop] of Object.entries(loops)) {
      const timing = await loop()
      if (round >= settings.warmUpRuns) samples[name]!.push(timing)
    }
  }
  return Object.fromEntries(
    Object.entries(samples).map(([name, timings]) => [name, {
      wall: median(timings.map((t) => t.wall)),
      cpu: median(timings.map((t) => t.cpu))
    }])
  )
}

/** The runtime of each pipeline, with the bare double beside it, open while `use` runs. */
const withRuntimes = async <A>(
  layers: Readonly<Record<string, Layer.Layer<Resilient.Resilient>>>,
  use: (loops: Readonly<Record<string, { readonly resilient: Loop; readonly bare: Loop }>>) => Promise<A>
): Promise<A> => {
  const runtimes = Object.entries(layers).map(([name, layer]) => [name, ManagedRuntime.make(Layer.merge(layer, instantTransport))] as const)
  try {
    const loops = await Promise.all(runtimes.map(async ([name, runtime]) => {
      const [resilient, transport] = await runtime.runPromise(Effect.all([Resilient.Resilient, Transport]))
      return [name, {
        resilient: effectLoop(runtime, () => resilient.create(request)),
        bare: effectLoop(runtime, () => transport.create(request))
      }] as const
    }))
    return await use(Object.fromEntries(loops))
  } finally {
    await Promise.all(runtimes.map(([, runtime]) => runtime.dispose()))
  }
}

export interface OverheadReport {
  readonly bareEffect: Timing
  readonly weatherproof: Timing
  /** The same pipeline with a tracer installed: a span per call. */
  readonly traced: Timing
  readonly bareAsync: Timing
  readonly cockatiel: Timing
  /** The pipeline with every policy a pass-through. */
  readonly skeleton: Timing
  /** The pipeline without one part each (see `variants`). */
  readonly without: ReadonlyArray<{ readonly name: string; readonly timing: Timing }>
}

export const run: Effect.Effect<OverheadReport> = Effect.promise(() => {
  const policy = makeCockatielPolicy()
  const layers = {
    full: pipeline(),
    traced: Layer.merge(pipeline(), installedTracer),
    skeleton,
    ...Object.fromEntries(variants.map((variant) => [variant.name, variant.layer]))
  }
  return withRuntimes(layers, async (loops) => {
    const timings = await measure({
      bareEffect: loops["full"]!.bare,
      weatherproof: loops["full"]!.resilient,
      traced: loops["traced"]!.resilient,
      bareAsync: promiseLoop(instantAsync),
      cockatiel: promiseLoop(() => policy.execute(instantAsync)),
      skeleton: loops["skeleton"]!.resilient,
      ...Object.fromEntries(variants.map((variant) => [variant.name, loops[variant.name]!.resilient]))
    })
    return {
      bareEffect: timings["bareEffect"]!,
      weatherproof: timings["weatherproof"]!,
      traced: timings["traced"]!,
      bareAsync: timings["bareAsync"]!,
      cockatiel: timings["cockatiel"]!,
      skeleton: timings["skeleton"]!,
      without: variants.map((variant) => ({ name: variant.name, timing: timings[variant.name]! }))
    }
  })
})
