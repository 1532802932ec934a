/**
 * Bounds how many calls are in flight at once. DeepSeek limits concurrency per account and
 * answers 429 the moment a request is over it, so bounding fan-out on the client is the first
 * cure for 429 storms.
 *
 * A permit is held from send until the response completes (queue wait at the server included,
 * as DeepSeek counts it), and is released between retries so a call that backs off does not
 * hold capacity. Each permit reports its outcome so an adaptive implementation can move the
 * limit.
 *
 * Waiters queue in two lanes, `interactive` served before `batch`, FIFO within each, except that
 * a caller back for another attempt (`AcquireOptions.returning`: a `Policy`'s retries are) waits
 * ahead of those of its lane not yet sent; with `maxQueued` a caller that would wait beyond it
 * fails at once with `QueueFull`. Every limiter publishes `limitGauge`, `inFlightGauge`,
 * `queuedGauge` and `droppedCounter` (tagged `limiter=<name>` when given a name).
 *
 * ## The adaptive limit (`makeAdaptive`)
 *
 * DeepSeek's cap is unpublished and moves with server load, so the limiter learns it from
 * outcomes: loss-based AIMD on 429s (`Dropped`, `signal: "cap"`), the only reliable signal (latency varies
 * with output length). A *round* is `limit` successes of permits granted since the last
 * decrease, each while in-flight was at least half the limit (an unused limit proves nothing,
 * so it neither grows nor counts rounds).
 *
 * 1. **Slow start**, from `initial` (8) until the first drop. DeepSeek answers a request over the
 *    cap with an immediate 429 and takes one under it with an immediate 200 (then keep-alives),
 *    so whether a request got a slot is known one round trip after it was sent: a permit's
 *    `accepted` says so. When the transport reports acceptances, each acceptance that brings the
 *    level held upstream to the top of the limit lets more go. That level is the requests
 *    accepted and not ended, with the replacements of ended ones still on their way (those take
 *    slots the upstream already held): without them, a limit whose requests end one after another
 *    never has all of them accepted at once when the upstream is a round trip away, and slow
 *    start stalled (at 23 under a cap of 100, with 3 s answers and 100 ms each way). Probing
 *    above a measured ceiling, only a replacement's acceptance counts them: a probe's request may
 *    take the slot a replacement was sent for, and counting them then stepped twice above the
 *    cap. The step is one request while the limit is under 32, then an eighth of it until a cap
 *    was measured (1/32 from 64 on when probing above a measured one), so the limit climbs a step
 *    per round trip with few requests at a time above what was accepted. Finding a small cap costs
 *    one 429 and a large one at most an eighth of it, once; 8 → 2,500 takes about 60 round trips
 *    (one per request of difference would be 2,492); a risen cap is climbed in milliseconds on a
 *    local network, not in response times. The limiter learns whether acceptances come ahead of
 *    their responses (nearer the send than the end, over about the last ten): where they come with
 *    the response, or are not reported, successes clock it instead, +1 each, as classic slow
 *    start: the limit doubles per round and in-flight climbs one request at a time. (On an upstream
 *    that answers at once, to a client short of CPU, requests over the cap can wait in socket
 *    buffers rather than at the upstream, and no 429 comes for rounds: in the batch-cost benchmark
 *    the limit reached 393 over a cap of 64 before its first, then hundreds of 429s at once in some
 *    runs; docs/benchmarks.md, "Latest figures".) A probe above a
 *    ceiling (step 5) grows only by acceptances whenever they are reported, so an unchanged cap
 *    costs it one 429 even when they come with the response.
 * 2. **Decrease, once per round**: on a drop, the *ceiling* becomes the level held − 1
 *    (everything but the dropped request was accepted): in-flight, or the limit where that is
 *    lower (after a brake lowered the limit, requests granted above it are still in flight, and
 *    a drop among them must not raise the ceiling to where the limit braked). The limit becomes
 *    `min(ceiling, level × backoff)` (0.9: a gentle step, since the cap was just measured).
 *    Drops of permits granted before that decrease were sent at the old limit and move nothing,
 *    except that one sent alongside the first lowers the ceiling to what was accepted.
 * 3. **Fall**: a drop while holding at the ceiling or recovering towards it (nothing was sent
 *    above a level already accepted), or a drop of a permit granted after a decrease before any
 *    such permit was accepted or succeeded, means the cap itself fell below what we hold. It
 *    can be anywhere below, so the limit becomes in-flight × `fallBackoff` (0.25: a 24 → 6 fall
 *    costs one 429, and a mild fall is climbed back by slow start) and slow start resumes.
 *    Where acceptances come with the responses (an upstream that answers at once, or sends its
 *    headers only with the body), the level held counts requests on their way too, so a drop
 *    while holding there (or recovering) is an ordinary overshoot, and only a second one before
 *    a success is a fall. So is a drop in a hold's first round, before its level was held for a
 *    whole round, and a drop while recovering or in a hold's first round at a level above any
 *    the upstream was seen to hold since the decrease (requests accepted and not ended at once),
 *    even before anything sent since was accepted; the ceiling becomes the most it was seen to
 *    hold. The in-flight a ceiling is taken from counts requests still on their way, and with the
 *    upstream a round trip away (or this process slow to read its answers) it set the ceiling
 *    above the cap, where a 429 read as a fall cost a second slow start's overshoot. So did a
 *    first burst above a small cap (8 over 4), its 429s read one at a time: as a fall, with the
 *    short holds that follow one, it cost a mixed flash/pro batch 6-12 429s on pro's cap of 4,
 *    where the burst and the probes cost 6-8. A cap that really fell then costs one 429 more.
 * 4. **Recover**: back to the ceiling within a round, in equal steps (the gap at the round's
 *    start, at least one request). Where acceptances come ahead of responses they clock it, so
 *    the gap closes as the permits granted since the decrease are accepted: clocked by
 *    successes, it waited a whole response time for the first of them (seconds, upstream) while
 *    the permits sent before the decrease ended, and on a cap of 2,500 held about 2,290 for ten
 *    seconds.
 * 5. **Hold** at the ceiling for `holdRounds` (6) rounds and at least `holdRequests` (48)
 *    successes, then **probe** with slow start: above an unchanged cap the first extra request
 *    draws the one 429 a probe costs (and step 2 returns to the ceiling); a risen cap is found
 *    at full speed. Probing is the only way to see a cap rise, and each probe of a cap that did
 *    not move costs a 429, so the hold sets the trade: about one request in `6·limit` (at least
 *    48, so about 2% at a small steady cap) draws a probe's 429, and a risen cap is noticed within
 *    about seven rounds. After a fall the holds last `fallHoldShare` (an eighth) of that, each
 *    `holdGrowth` (1.5) times the last while probes find the cap where it was: a cap that moved
 *    often comes back, so it is probed for sooner (each hold about half the time since the fall,
 *    so a return is noticed within that), and a steady one costs about four probes more before
 *    the holds are full again.
 * 6. **Overload is noise until it dominates.** A 503 (or `insufficient_system_resource`) says the
 *    server as a whole is shedding load, at whatever level we run, so it neither sets the
 *    ceiling nor counts as a fall. A round in which overload drops are at least `overloadShare`
 *    (0.5) of the outcomes steps the limit back by `backoff`, never below `overloadFloor` (0.5)
 *    of the highest limit held since the cap was last measured; it grows back once overload
 *    stops dominating. So 20% random 503s leave the limit at the cap the account serves, where
 *    reading each one as a drop collapsed it to 1-2.
 * 7. **Queue-delay brake**: `Success.queueDelay` (a stream's response headers to its first event:
 *    DeepSeek's own queueing; the pool and `Resilient` report it for streams only, since a
 *    non-streaming answer's first content comes once it was generated whole, and that time varies
 *    with its length) is averaged per round. A window whose mean is `queueDelayRise` (2) times the
 *    baseline (the lowest of the last 10 window means, never under `queueDelayFloor`, 250 ms)
 *    pauses growth; `queueDelayWindows` (3) such windows in a row, the practitioners' guard
 *    against "false stability", step the limit back by `backoff` and hold there. A delay that
 *    stays high for ten windows becomes the new baseline.
 * 8. **Latency brake where successes clock slow start** (acceptances unreported, or coming with
 *    the response), after HyStart's delay exit: a round whose fastest success (grant to end, at
 *    least 8 timed) took `latencyRise` (4) times the baseline (the fastest round so far, never
 *    under 5 ms, let rise 0.1% a round) ends slow start. More requests at once only made them
 *    wait, upstream or in this process: a client whose own CPU is the bottleneck counts answers
 *    it has not yet read as in flight, so without the brake its limit climbed to ten times what
 *    the upstream held and drew hundreds of 429s. A first climb stops at the level the round's
 *    requests were granted at, scaled down to the threshold; a probe above a measured level goes
 *    back to it, never lower, so an upstream that became slower for good costs probes, not the
 *    limit.
 *
 * The limit stays within [`min`, `max`] (1, 10,000: above DeepSeek's published caps, 2,500 for
 * flash). Tuned on the benchmark's scenario (600 requests, a cap moving 24 → 6 → 32 every 200
 * accepted, 200-600 ms per request, over loopback): 1.06-1.07× the time of an oracle that always
 * holds the current cap, 7-10 requests (1.2-1.7%) drawing a 429 (docs/benchmarks.md). Under 32
 * the climb is one request per round trip; raise `initial` when the cap is known to be large.
 *
 * ## Why not `Effect.makeSemaphore`
 *
 * `Semaphore.resize` has the right semantics (shrinking below in-flight revokes nothing; new
 * takes wait until enough permits come back), but a semaphore's waiters are one set woken in
 * arrival order, with no lanes, no bound and no count, and a take does not say at which
 * in-flight level it was granted, which acceptance-clocked slow start needs. The limiter keeps its
 * own small ledger instead (synchronous, so atomic on the JavaScript thread) with the same resize
 * semantics; a waiter interrupted after it was granted a permit hands the permit back, so no
 * interruption point leaks one.
 *
 * @since 0.1.0
 */

import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type * as Metric from "effect/Metric"
import type * as Scope from "effect/Scope"
import type { Classifier } from "./ApiError.js"
import * as internal from "./internal/concurrencyLimiter.js"
import * as internalRedis from "./internal/concurrencyLimiterRedis.js"
import * as RedisLanes from "./internal/redisDispatcher.js"
import type { Redis } from "./Redis.js"

/**
 * Interactive calls are served before batch calls when both wait.
 *
 * @since 0.1.0
 * @category models
 */
export type Priority = "interactive" | "batch"

/**
 * What the call made under a permit taught us about the upstream's capacity:
 * - `Dropped`: the upstream refused for load: over a cap (429, `signal: "cap"`, the default) or
 *   overloaded as a whole (503, `signal: "overload"`);
 * - `Success`: it answered; `queueDelay` is the time from response headers to the first
 *   content event, i.e. DeepSeek's own queueing, when it was measured;
 * - `Ignored`: nothing about capacity (a 400, an interruption, a client-side error).
 *
 * @since 0.1.0
 * @category models
 */
export type Outcome =
  | { readonly _tag: "Success"; readonly queueDelay?: Duration.Duration | undefined }
  | { readonly _tag: "Dropped"; readonly signal?: "cap" | "overload" | undefined }
  | { readonly _tag: "Ignored" }

/**
 * A held permit. `complete` reports how the call went (the first report counts); a permit
 * released without one counts as `Ignored`, or, under `withPermit`, as `outcomeOf` its exit.
 *
 * @since 0.1.0
 * @category models
 */
export interface Permit {
  readonly complete: (outcome: Outcome) => Effect.Effect<void>
  /**
   * Reports that the upstream accepted the request (a success status arrived): it holds a slot
   * now, long before it ends. The adaptive limiter clocks slow start by these.
   */
  readonly accepted: Effect.Effect<void>
  /**
   * Records the queue delay the transport measured (a stream's headers to its first event). A
   * `Success` reported without a `queueDelay` carries this one.
   */
  readonly recordQueueDelay: (delay: Duration.Duration) => Effect.Effect<void>
  /** Completes the permit with `outcomeOf` the call's exit, read through the limiter's classifier. */
  readonly settle: (exit: Exit.Exit<unknown, unknown>) => Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Snapshot {
  /** Permits granted at most (in-flight may exceed it for a while just after a decrease). */
  readonly limit: number
  /** Permits held. */
  readonly inFlight: number
  /** Callers waiting, both lanes. */
  readonly queued: number
}

/**
 * The wait queue is full: the call was rejected without waiting. Or, with `abandoned`, the call
 * gave its place in the queue up when its `abandonWhen` completed (a `maxWait` that ran out);
 * `queued` counts the callers still waiting.
 *
 * @since 0.1.0
 * @category errors
 */
export const QueueFull: typeof internal.QueueFull = internal.QueueFull

/**
 * @since 0.1.0
 * @category errors
 */
export type QueueFull = internal.QueueFull

/**
 * @since 0.1.0
 * @category models
 */
export interface AcquireOptions {
  /** Default `interactive`. */
  readonly priority?: Priority | undefined
  /**
   * The caller is back for another attempt (a retry): it waits ahead of the callers of its
   * priority not yet sent, keeping its place instead of going behind those that came after it.
   * Default false.
   */
  readonly returning?: boolean | undefined
  /**
   * While the caller waits in the queue, completing this gives its place up: it fails with an
   * `abandoned` `QueueFull` at once. A permit already granted is kept. Default: never.
   */
  readonly abandonWhen?: Effect.Effect<void> | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Waits for a permit that is released when the scope closes. */
  readonly acquire: (options?: AcquireOptions) => Effect.Effect<Permit, QueueFull, Scope.Scope>
  /**
   * Runs `use` under a permit released when it ends: `acquire` without a `Scope`, for the hot
   * path (a scope per call costs more than the limiter itself). A permit `use` did not complete
   * is completed with `outcomeOf` its exit.
   */
  readonly withPermit: <A, E, R>(
    use: (permit: Permit) => Effect.Effect<A, E, R>,
    options?: AcquireOptions
  ) => Effect.Effect<A, E | QueueFull, R>
  readonly snapshot: Effect.Effect<Snapshot>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class ConcurrencyLimiter extends Context.Tag("weatherproof/ConcurrencyLimiter")<
  ConcurrencyLimiter,
  Service
>() {}

/**
 * What a call's exit teaches the limiter, read through `classify` (default `ApiError.classify`):
 * a load-shed verdict (429, 503, `insufficient_system_resource`) is a drop, a success a success,
 * anything else (outages included: they are the breaker's and the retry's business) says
 * nothing about capacity.
 *
 * @since 0.1.0
 */
export const outcomeOf: (exit: Exit.Exit<unknown, unknown>, classify?: Classifier) => Outcome = internal.outcomeOf

/**
 * Runs `effect` under a permit of `limiter`, reporting its outcome.
 *
 * @since 0.1.0
 */
export const withPermit = (limiter: Service, options?: AcquireOptions) =>
<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | QueueFull, R> =>
  limiter.withPermit(() => effect, options)

/**
 * Options every limiter takes.
 *
 * @since 0.1.0
 * @category models
 */
export interface LimiterOptions {
  /**
   * How many callers may wait for a permit before `acquire` fails with `QueueFull` (0: none waits):
   * a whole number ≥ 0, or Infinity. Default: unbounded.
   */
  readonly maxQueued?: number | undefined
  /** Tags the limiter's metrics with `limiter=<name>` so several limiters can be told apart. Default: untagged. */
  readonly name?: string | undefined
  /** What a failed call means for capacity (`outcomeOf`). Default `ApiError.classify`. */
  readonly classify?: Classifier | undefined
}

/**
 * Options of the adaptive limiter; see the module doc for what each constant does and why.
 *
 * @since 0.1.0
 * @category models
 */
export interface AdaptiveOptions extends LimiterOptions {
  /** The limit before anything is learned, brought within [`min`, `max`]. Default 8. */
  readonly initial?: number | undefined
  /** The limit never goes below this (at least 1). Default 1. */
  readonly min?: number | undefined
  /**
   * The limit never goes above this (at least 1 and `min`). Default 10,000 (above DeepSeek's
   * published caps), or `min` when that is higher.
   */
  readonly max?: number | undefined
  /** On an ordinary drop the limit becomes in-flight × `backoff`. Default 0.9. */
  readonly backoff?: number | undefined
  /** When the cap falls (see the module doc), in-flight × this. Default 0.25. */
  readonly fallBackoff?: number | undefined
  /** Rounds to hold at the last accepted level before probing above it. Default 6. */
  readonly holdRounds?: number | undefined
  /** Successes to hold there at least (bounds the probes' 429s at small limits). Default 48. */
  readonly holdRequests?: number | undefined
  /**
   * After the cap fell, holds last this share of their length, growing `holdGrowth` times with
   * each probe that finds the cap unchanged (back to full after six at the defaults): a cap that
   * moved is probed sooner for its return. Default 0.125.
   */
  readonly fallHoldShare?: number | undefined
  /**
   * How much longer each hold after a fall is than the one before it, when its probe found the cap
   * unchanged (above 1). Larger: fewer 429s at a cap that fell and stays; smaller: a cap that
   * comes back soon is found sooner. Default 1.5.
   */
  readonly holdGrowth?: number | undefined
  /** A window whose mean queue delay is this many times the baseline is congested. Default 2. */
  readonly queueDelayRise?: number | undefined
  /** Consecutive congested windows that make the limit step back by `backoff`. Default 3. */
  readonly queueDelayWindows?: number | undefined
  /**
   * Where successes clock slow start: a round whose fastest success (from grant to end) took this
   * many times the baseline ends slow start (above 1). Default 4.
   */
  readonly latencyRise?: number | undefined
  /**
   * Share of a round's outcomes that must be overload drops (503) for the limit to step back by
   * `backoff`: below it they are noise (a server shedding load at random, whatever our level).
   * Default 0.5.
   */
  readonly overloadShare?: number | undefined
  /**
   * Overload never takes the limit below this share of the highest limit held since the cap was
   * last measured (a 429): random 503s cannot collapse a limit the account actually serves.
   * Default 0.5.
   */
  readonly overloadFloor?: number | undefined
  /** Queue delays below this are noise: the baseline is never taken lower. Default 250 millis. */
  readonly queueDelayFloor?: Duration.DurationInput | undefined
}

/**
 * The adaptive limiter's options when left out (see `AdaptiveOptions`): start at 8, between 1 and
 * 10,000, back off to 0.9 of what is in flight (0.25 when the cap falls), hold six rounds and 48
 * successes before probing above the last accepted level.
 *
 * @since 0.1.0
 * @category defaults
 */
export const defaults: {
  readonly [K in Exclude<keyof AdaptiveOptions, keyof LimiterOptions | "queueDelayFloor">]-?: number
} & { readonly queueDelayFloor: Duration.Duration } = internal.adaptiveDefaults

/**
 * The current limit (permits), as the limiters publish it.
 *
 * @since 0.1.0
 * @category metrics
 */
export const limitGauge: Metric.Metric.Gauge<number> = internal.limitGauge

/**
 * Permits held right now.
 *
 * @since 0.1.0
 * @category metrics
 */
export const inFlightGauge: Metric.Metric.Gauge<number> = internal.inFlightGauge

/**
 * Callers waiting for a permit.
 *
 * @since 0.1.0
 * @category metrics
 */
export const queuedGauge: Metric.Metric.Gauge<number> = internal.queuedGauge

/**
 * Permits that completed `Dropped` (the upstream refused for load).
 *
 * @since 0.1.0
 * @category metrics
 */
export const droppedCounter: Metric.Metric.Counter<number> = internal.droppedCounter

/**
 * A fixed bound of `permits` calls in flight. Dies with `IllegalArgumentException` unless `permits`
 * is a whole number, at least 1, and `maxQueued` (when given) a whole number ≥ 0 or Infinity.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ConcurrencyLimiter } from "weatherproof"
 *
 * declare const pages: ReadonlyArray<string>
 * declare const summarise: (page: string) => Effect.Effect<string, Error>
 *
 * const summaries = Effect.gen(function*() {
 *   // At most 4 in flight; a call that would be the 101st waiting fails at once with QueueFull.
 *   const limiter = yield* ConcurrencyLimiter.makeFixed(4, { maxQueued: 100, name: "summaries" })
 *   return yield* Effect.forEach(pages, (page) => summarise(page).pipe(ConcurrencyLimiter.withPermit(limiter)), {
 *     concurrency: "unbounded"
 *   })
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeFixed = (permits: number, options?: LimiterOptions): Effect.Effect<Service> =>
  internal.makeFixed(permits, options)

/**
 * @since 0.1.0
 * @category layers
 */
export const layerFixed = (permits: number, options?: LimiterOptions): Layer.Layer<ConcurrencyLimiter> =>
  Layer.effect(ConcurrencyLimiter, makeFixed(permits, options))

/**
 * A limit that follows the upstream's moving cap; see the module doc for the algorithm. Dies on
 * options that cannot work (a backoff outside (0, 1), a queue-delay rise not above 1, fewer than
 * one queue-delay window, a `min` or `max` under 1, a `max` under `min`); `initial` is brought
 * within [`min`, `max`] instead.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ChatSchema, ConcurrencyLimiter, Transport } from "weatherproof"
 *
 * declare const request: ChatSchema.ChatCompletionRequest
 *
 * const program = Effect.gen(function*() {
 *   const transport = yield* Transport.Transport
 *   const limiter = yield* ConcurrencyLimiter.makeAdaptive({ initial: 16, max: 64 })
 *   // 429s lower the limit; acceptances, reported through the permit, steer its growth (a stream
 *   // reports its queue delay too: `onFirstContent: permit.recordQueueDelay`).
 *   return yield* limiter.withPermit((permit) => transport.create(request, { onAccepted: permit.accepted }))
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeAdaptive = (options?: AdaptiveOptions): Effect.Effect<Service> => internal.makeAdaptive(options)

/**
 * @since 0.1.0
 * @category layers
 */
export const layerAdaptive = (options?: AdaptiveOptions): Layer.Layer<ConcurrencyLimiter> =>
  Layer.effect(ConcurrencyLimiter, makeAdaptive(options))

/**
 * The adaptive options of a ceiling of `permits`: a limit that starts there and never exceeds it,
 * backs off only when the upstream refuses calls (429, 503; not on latency or queue delay), and
 * climbs back as calls are accepted. What a number usually means against DeepSeek, whose caps
 * move with its load: a fixed limit over a cap that moved below it draws a 429 for every call
 * above the cap, for as long as the cap stays there. `Policy` and `AccountPool` read a number as
 * this; `makeFixed` is the limit that never moves.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ConcurrencyLimiter } from "weatherproof"
 *
 * // Never more than 32 in flight; fewer while the upstream answers 429.
 * const limiter = Effect.runSync(ConcurrencyLimiter.makeAdaptive(ConcurrencyLimiter.ceiling(32)))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const ceiling = (permits: number): AdaptiveOptions => internal.ceilingOptions(permits)

/**
 * A pass-through limiter: `acquire` never waits and never fails. Permits are still counted, so
 * `snapshot` and the gauges show the calls in flight (its `limit` is `Infinity`). For a pipeline
 * whose limits live elsewhere, e.g. per account in `AccountPool`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ConcurrencyLimiter } from "weatherproof"
 *
 * declare const calls: ReadonlyArray<Effect.Effect<string, Error>>
 *
 * // No call ever waits, but `snapshot` and the gauges count the calls in flight.
 * const program = Effect.flatMap(ConcurrencyLimiter.makeUnbounded, (limiter) =>
 *   Effect.all(calls.map(ConcurrencyLimiter.withPermit(limiter)), { concurrency: "unbounded" }))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeUnbounded: Effect.Effect<Service> = internal.make(internal.fixedPolicy(Infinity))

/**
 * @since 0.1.0
 * @category layers
 */
export const layerUnbounded: Layer.Layer<ConcurrencyLimiter> = Layer.effect(ConcurrencyLimiter, makeUnbounded)

/**
 * Options of a limiter shared through Redis (`makeRedis`): the adaptive limiter's, or a fixed
 * number of `permits`.
 *
 * @since 0.1.0
 * @category models
 */
export interface RedisOptions extends AdaptiveOptions {
  /** The shared limit's name: every limiter of this name on the same `Redis` prefix shares it. */
  readonly name: string
  /** A fixed limit instead of the adaptive one. Default: adaptive. */
  readonly permits?: number | undefined
  /**
   * How long a permit's lease outlives its holder's last heartbeat (one every third of it, or of
   * 5 seconds when it is longer): a process that dies without releasing its permits frees them
   * after this long. Default 30 seconds.
   */
  readonly leaseTtl?: Duration.DurationInput | undefined
}

/**
 * One limit shared by every process that names it alike: its permits are leases on Redis (a
 * crashed process's expire after `leaseTtl`), callers wait across processes in the order one
 * process's limiter serves them (interactive first, a `returning` caller ahead of those not yet
 * sent, arrival order otherwise), and the adaptive limit is learnt by all of them together from
 * their outcomes. Every `acquire` waits for the server's answer (a round trip, granted by the
 * script that queues the caller when there is room). For the account pool's own lanes, see
 * `AccountPool.makeRedis`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ConcurrencyLimiter, Redis } from "weatherproof"
 *
 * declare const crawl: (url: string) => Effect.Effect<string, Error>
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   // At most 8 crawls in flight across every process sharing "crawler".
 *   const limiter = yield* ConcurrencyLimiter.makeRedis({ name: "crawler", permits: 8 })
 *   return yield* crawl("https://example.com").pipe(ConcurrencyLimiter.withPermit(limiter))
 * })).pipe(Effect.provide(Redis.layer({ url: "redis://127.0.0.1:6379" })))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeRedis = (options: RedisOptions): Effect.Effect<Service, never, Redis | Scope.Scope> =>
  internalRedis.makeRedis(options, Duration.decode(options.leaseTtl ?? RedisLanes.defaultLeaseTtl))

/**
 * @since 0.1.0
 * @category layers
 */
export const layerRedis = (options: RedisOptions): Layer.Layer<ConcurrencyLimiter, never, Redis> =>
  Layer.scoped(ConcurrencyLimiter, makeRedis(options))
