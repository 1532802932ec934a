/**
 * A circuit breaker: stops sending calls to an upstream that is failing, so a 429 storm or an
 * outage costs one quick local error per call instead of a slow remote one, and gives the
 * upstream room to recover.
 *
 * - **Closed**: calls pass. Their outcomes are counted over a rolling window (`buckets` buckets
 *   over `window`, advanced by Effect's `Clock`). Once the window holds at least
 *   `minimumThroughput` calls and the share of failures reaches `failureRatio`, the circuit trips.
 *   The share counts the calls still in flight as not failed (yet): a fast failure (a 503, a
 *   refused connection) settles long before a success (an answer that takes seconds), and
 *   judged on settled calls alone, the first seconds after the circuit closes would show only
 *   failures and trip it again at once, whatever the share of failures. An outage still trips
 *   it: its calls in flight fail too.
 * - **Open**: calls fail at once with `CircuitOpen`, which says when calls resume. The period is
 *   `openFor`, doubled on each consecutive trip up to `maxOpenFor`.
 * - **HalfOpen**: after the period, `canaries` calls go through. When all succeed the circuit
 *   closes (and the period shrinks back to `openFor`); when one fails it opens again for longer.
 *   Other callers wait for the verdict or are rejected, per `halfOpenPolicy`.
 * - **Isolated**: forced open by `isolate` until `reset`.
 *
 * What a call's error means is read through `classify` (default `ApiError.classify`): outages
 * (5xx, transport errors, deadlines, truncated output, and any error the classifier does not
 * know) are failures, and so is load shed (429, 503) unless `countLoadShed` says otherwise (behind
 * a concurrency limiter, which backs off on it). An account or caller problem counts as a success:
 * the upstream answered. Our own refusals, interruptions and defects are ignored.
 *
 * ## Shared on Redis
 *
 * `makeRedis` / `layerRedis` share one breaker between every service of the same `name` on the
 * same Redis prefix, in any process: a trip in one opens all, `changes` emits every transition
 * whoever made it, `isolate` and `reset` apply to all, and half-open admits `canaries` calls in
 * total. A canary's slot is a lease its process renews every second: the canary of a process that
 * died is given up 3 seconds later, and the next caller becomes the canary. It is the same state
 * machine, stored as plain data in `{prefix}:breaker:<name>` and changed by optimistic
 * concurrency (read with the server's `TIME`, apply, write if the version is unchanged, else
 * again), so open periods are timed by the Redis server's clock. Each service
 * keeps a mirror of it: a closed circuit admits and an open one refuses without a round trip, and
 * outcomes are written in batches by one fiber, off the call's path. Transitions are published on
 * `{prefix}:breaker:<name>:changes`; a service re-reads on a message and on a reconnection.
 *
 * While Redis fails, each service goes on from its last known state, alone (one warning naming
 * the server's URL), and rejoins once the connection is ready again (one note): an Open or
 * Isolated state on either side wins, of two open periods the later end.
 *
 * @since 0.1.0
 */

import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"
import * as PubSub from "effect/PubSub"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as ApiError from "./ApiError.js"
import type { Classifier } from "./ApiError.js"
import * as internal from "./internal/circuitBreaker.js"
import * as internalRedis from "./internal/circuitBreakerRedis.js"
import { monotonicMillis } from "./internal/monotonic.js"
import { assertValid, atLeast, oneOf, positiveDuration, positiveInteger, ratio } from "./internal/options.js"
import * as ScopeFinalizer from "./internal/scopeFinalizer.js"
import { TaggedError } from "./internal/sdkError.js"
import * as Redis from "./Redis.js"

/**
 * Calls pass and are counted.
 *
 * @since 0.1.0
 * @category models
 */
export interface Closed {
  readonly _tag: "Closed"
}

/**
 * Calls are rejected until `until`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Open {
  readonly _tag: "Open"
  /**
   * When the circuit tripped: epoch millis on the `Clock`'s monotonic time (`currentTimeNanos`:
   * the wall time, but for a step of the system clock since the start); on Redis, its server's.
   */
  readonly since: number
  /** When the circuit turns half-open, on the clock of `since` (a rejection's `retryAfter` is the time left). */
  readonly until: number
  /** Consecutive trips since the circuit last closed (1 on the first). */
  readonly trips: number
}

/**
 * Canary calls are testing the upstream.
 *
 * @since 0.1.0
 * @category models
 */
export interface HalfOpen {
  readonly _tag: "HalfOpen"
  /** When the open period ended, on the clock of `Open.since`. */
  readonly since: number
  /** Consecutive trips so far; one more if a canary fails. */
  readonly trips: number
}

/**
 * Forced open by `isolate`; only `reset` closes it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Isolated {
  readonly _tag: "Isolated"
  /** When `isolate` was called, on the clock of `Open.since`. */
  readonly since: number
}

/**
 * @since 0.1.0
 * @category models
 */
export type State = Closed | Open | HalfOpen | Isolated

/**
 * What callers beyond the canaries do while the circuit is half-open:
 * - `"wait"`: wait for the canaries' verdict, then run (circuit closed) or fail with
 *   `CircuitOpen` (circuit re-opened);
 * - `"reject"`: fail at once with `CircuitOpen` (`reason: "half_open"`, zero `retryAfter`).
 *
 * @since 0.1.0
 * @category models
 */
export type HalfOpenPolicy = "wait" | "reject"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Tags the metrics (`circuit_breaker` label) and `CircuitOpen` errors. Default none. */
  readonly name?: string | undefined
  /** Span of the rolling window. Default 60 seconds. */
  readonly window?: Duration.DurationInput | undefined
  /** Buckets the window is divided into; the window rolls one bucket at a time. Default 10. */
  readonly buckets?: number | undefined
  /** Share of failed calls in the window, in (0, 1], that trips the circuit. Default 0.25. */
  readonly failureRatio?: number | undefined
  /** Calls the window must hold before the ratio is considered. Default 20. */
  readonly minimumThroughput?: number | undefined
  /** Open period after the first trip; doubles on each consecutive trip. Default 30 seconds. */
  readonly openFor?: Duration.DurationInput | undefined
  /**
   * Cap of the open period (set it to `openFor`, or below, for a fixed period of `openFor`).
   * Default 120 seconds.
   */
  readonly maxOpenFor?: Duration.DurationInput | undefined
  /** Calls admitted in half-open; all must succeed to close. Default 1. */
  readonly canaries?: number | undefined
  /** Default `"wait"`. */
  readonly halfOpenPolicy?: HalfOpenPolicy | undefined
  /** What a call's error means. Default `ApiError.classify`. */
  readonly classify?: Classifier | undefined
  /**
   * Which load shed counts as a failure. `true` (the default): all of it (429, 503,
   * `insufficient_system_resource`). `"overload"`: only the server's overload (503, work cut for
   * lack of resources), which comes at any level, leaving 429s, which say where a concurrency cap
   * is, to a limiter that backs off on them (what `Policy` and `AccountPool` use behind theirs).
   * `false`: none, for a limiter that owns both signals (it backs off on each one, and draws a few
   * on purpose when it probes for a higher cap).
   */
  readonly countLoadShed?: boolean | "overload" | undefined
}

/**
 * Counters of the breaker at one instant.
 *
 * @since 0.1.0
 * @category models
 */
export interface Snapshot {
  readonly state: State
  /** Calls counted in the rolling window (reset when the circuit closes). */
  readonly calls: number
  /** Failed calls among them. */
  readonly failures: number
  /** Trips since the breaker was made. */
  readonly trips: number
  /** Canary calls running now (0 unless half-open). */
  readonly canariesInFlight: number
  /**
   * Calls admitted while closed that have not settled, in this process (0 unless closed). The
   * failure ratio counts them as not failed: failures over the window's calls and these.
   */
  readonly inFlight: number
}

/**
 * The call was not sent because the circuit is open. `retryAfter` says when calls resume, as an
 * `Option` like the `retryAfter` of `ApiError`s (so `RetryPolicy` honours it):
 * - `reason: "open"`: at `until`, the open period's end; `retryAfter` is the time left;
 * - `reason: "half_open"`: canaries are testing the upstream (policy `"reject"`); the verdict
 *   time is unknown, `retryAfter` is none: retry with a backoff;
 * - `reason: "isolated"`: only after a manual `reset`; `retryAfter` is none, not retryable.
 *
 * @since 0.1.0
 * @category errors
 */
export class CircuitOpen extends TaggedError("CircuitOpen")<{
  readonly reason: "open" | "half_open" | "isolated"
  /** When calls resume, on the clock of `Open.since` (the rejection time in half-open, `Infinity` while isolated). */
  readonly until: number
  readonly retryAfter: Option.Option<Duration.Duration>
  /** Consecutive trips since the circuit last closed. */
  readonly trips: number
  /** The breaker's `name` option. */
  readonly name?: string | undefined
}> {
  /** @since 0.1.0 */
  override get message(): string {
    const breaker = this.name === undefined ? "circuit breaker" : `circuit breaker ${this.name}`
    switch (this.reason) {
      case "open":
        return `${breaker} is open (trip ${this.trips}): calls resume in ${Duration.format(Option.getOrElse(this.retryAfter, () => Duration.zero))}`
      case "half_open":
        return `${breaker} is half-open: canary calls are testing the upstream`
      case "isolated":
        return `${breaker} is isolated: calls resume after a reset`
    }
  }
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * Runs `effect` if the circuit admits it, and counts its outcome. Fails with `CircuitOpen`
   * without running it otherwise. Cheap when closed: a state check, a clock read, two counters.
   */
  readonly protect: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | CircuitOpen, R>
  /**
   * Admits one call whose outcome is known later (a stream, a response body read after the
   * response), or fails with `CircuitOpen`. Report the outcome with the returned `settle` (the
   * first report counts); a call whose scope closes first counts as interrupted (ignored).
   */
  readonly admit: Effect.Effect<(exit: Exit.Exit<unknown, unknown>) => Effect.Effect<void>, CircuitOpen, Scope.Scope>
  /**
   * Completes when a call would be admitted or refused at once: at once, unless the circuit is
   * half-open with every canary slot taken (and half-open callers `"wait"`); then when the
   * canaries' verdict comes. A caller that takes a limiter's permit waits here first, so that it
   * holds no permit while a canary runs (an LLM call: minutes). Fails with `CircuitOpen`
   * (`half_open`) when `abandonWhen` completes first (a caller's `maxWait`).
   */
  readonly awaitVerdict: (abandonWhen?: Effect.Effect<void> | undefined) => Effect.Effect<void, CircuitOpen>
  /** The state now. */
  readonly state: Effect.Effect<State>
  /** The current state, then every transition in order. Never ends. */
  readonly changes: Stream.Stream<State>
  /**
   * Ends an open period now: the circuit half-opens and its canaries test the upstream. For a
   * caller that learnt the upstream is back before the period ends (an account pool, when a
   * connection to an origin it could not reach opens). Trips are kept, so a canary that fails
   * opens it for the next, longer period. Does nothing unless the circuit is open (isolated stays).
   */
  readonly halfOpen: Effect.Effect<void>
  /** Forces the circuit open until `reset`. Calls in flight finish; their outcomes are ignored. */
  readonly isolate: Effect.Effect<void>
  /** Closes the circuit with an empty window and a fresh open period. */
  readonly reset: Effect.Effect<void>
  readonly snapshot: Effect.Effect<Snapshot>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class CircuitBreaker extends Context.Tag("weatherproof/CircuitBreaker")<CircuitBreaker, Service>() {}

/**
 * The defaults, from what DeepSeek users run in production: trip when a quarter of at least 20
 * calls in a rolling minute failed, cool off 30 s growing to 120 s, resume after one canary.
 *
 * Half-open callers `"wait"` by default: LLM calls are long, so a rejected caller would either
 * poll (a retry storm in miniature) or give up on an upstream that is probably back. A waiter
 * waits at most one canary call, and is released into a circuit that just proved healthy.
 *
 * @since 0.1.0
 */
export const defaults = {
  window: Duration.seconds(60),
  buckets: 10,
  failureRatio: 0.25,
  minimumThroughput: 20,
  openFor: Duration.seconds(30),
  maxOpenFor: Duration.seconds(120),
  canaries: 1,
  halfOpenPolicy: "wait",
  countLoadShed: true
} as const satisfies Required<Omit<Options, "name" | "classify">>

/**
 * The breaker's state: 0 closed, 1 half-open, 2 open or isolated. Labelled `circuit_breaker`
 * with the `name` option when one is given.
 *
 * @since 0.1.0
 * @category metrics
 */
export const stateGauge: Metric.Metric.Gauge<number> = Metric.gauge("weatherproof_circuit_breaker_state", {
  description: "circuit breaker state: 0 closed, 1 half-open, 2 open or isolated"
})

/**
 * Trips (transitions to open), labelled like `stateGauge`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const tripsCounter: Metric.Metric.Counter<number> = Metric.counter("weatherproof_circuit_breaker_trips", {
  description: "circuit breaker trips",
  incremental: true
})

const gaugeValue = (state: State): number => {
  switch (state._tag) {
    case "Closed":
      return 0
    case "HalfOpen":
      return 1
    case "Open":
    case "Isolated":
      return 2
  }
}

const settingsOf = (options: Options): internal.Settings => {
  const window = options.window ?? defaults.window
  const buckets = options.buckets ?? defaults.buckets
  const failureRatio = options.failureRatio ?? defaults.failureRatio
  const minimumThroughput = options.minimumThroughput ?? defaults.minimumThroughput
  const openFor = options.openFor ?? defaults.openFor
  const canaries = options.canaries ?? defaults.canaries
  assertValid("CircuitBreaker", [
    positiveDuration("window", window),
    positiveInteger("buckets", buckets),
    ratio("failureRatio", failureRatio),
    atLeast("minimumThroughput", minimumThroughput, 1),
    positiveDuration("openFor", openFor),
    positiveInteger("canaries", canaries),
    oneOf("halfOpenPolicy", options.halfOpenPolicy ?? defaults.halfOpenPolicy, ["wait", "reject"]),
    oneOf("countLoadShed", options.countLoadShed ?? defaults.countLoadShed, [true, false, "overload"])
  ])
  return {
    windowMillis: Duration.toMillis(window),
    buckets,
    failureRatio,
    minimumThroughput,
    openForMillis: Duration.toMillis(openFor),
    maxOpenForMillis: Duration.toMillis(options.maxOpenFor ?? defaults.maxOpenFor),
    canaries,
    halfOpenPolicy: options.halfOpenPolicy ?? defaults.halfOpenPolicy
  }
}

/** How a call ended, as the breaker counts it. */
const outcomeOf = (
  classify: Classifier,
  countLoadShed: boolean | "overload",
  exit: Exit.Exit<unknown, unknown>
): internal.Outcome => {
  if (Exit.isSuccess(exit)) return "success"
  const failure = Cause.failureOption(exit.cause)
  if (Option.isNone(failure)) return "ignored"
  const verdict = classify(failure.value)
  switch (verdict._tag) {
    case "Outage":
      return "failure"
    case "LoadShed":
      return countLoadShed === true || (countLoadShed === "overload" && verdict.signal === "overload") ? "failure" : "ignored"
    case "Account":
    case "Caller":
      return "success"
    case "Refused":
      return "ignored"
  }
}

/**
 * Wakes at the end of each open period to move the circuit to half-open, so `changes` and the
 * gauge show it even when no call arrives. (Admission checks the period too, so a call never
 * depends on this fiber's timing.)
 */
const halfOpenTimer = (core: internal.Core): Effect.Effect<never> =>
  Effect.suspend(() => {
    const transitioned = Deferred.await(core.machine.signal)
    const state = core.machine.state
    return state._tag === "Open"
      ? Effect.race(Effect.zipRight(Effect.sleep(Duration.millis(state.until - core.now())), core.poll), transitioned)
      : transitioned
  }).pipe(Effect.forever)

/** Where a breaker's transitions go: `changes` (replaying the latest to each new subscriber) and the metrics. */
interface Transitions {
  readonly states: PubSub.PubSub<State>
  readonly announce: (state: State) => void
  /** Counts trips this service made. */
  readonly tripped: (trips: number) => void
}

const transitionsOf = (options: Options): Effect.Effect<Transitions, never, Scope.Scope> =>
  Effect.map(Effect.acquireRelease(PubSub.unbounded<State>({ replay: 1 }), PubSub.shutdown), (states) => {
    const labels = options.name === undefined ? [] : [MetricLabel.make("circuit_breaker", options.name)]
    // From the start, at 0: a series shows only from its first update (the state's is its first announcement).
    tripsCounter.unsafeUpdate(0, labels)
    return {
      states,
      announce: (state) => {
        states.unsafeOffer(state)
        stateGauge.unsafeUpdate(gaugeValue(state), labels)
      },
      tripped: (trips) => tripsCounter.unsafeUpdate(trips, labels)
    }
  })

/**
 * The service over `core`: `protect` and `admit` admit through it and report each outcome to it,
 * and `changes` replays what `transitions` announced. Runs the half-open timer in the scope.
 */
const serve = (core: internal.Core, options: Options, transitions: Transitions): Effect.Effect<Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    const classify = options.classify ?? ApiError.classify
    const countLoadShed = options.countLoadShed ?? defaults.countLoadShed
    /**
     * Settles `ticket` with the outcome of `exit`. A classifier that throws settles it as ignored
     * (an admitted call always frees its slot: a canary's would keep the circuit half-open for
     * good), then its throw is the call's defect (returned; nothing when the classifier answered).
     */
    const settleWith = (ticket: number, exit: Exit.Exit<unknown, unknown>): Effect.Effect<never> | undefined => {
      let outcome: internal.Outcome
      try {
        outcome = outcomeOf(classify, countLoadShed, exit)
      } catch (defect) {
        core.settle(ticket, "ignored")
        return Effect.die(defect)
      }
      core.settle(ticket, outcome)
      return undefined
    }
    transitions.announce(core.machine.state)
    yield* Effect.forkScoped(halfOpenTimer(core))

    const reject = (rejection: internal.Rejection) =>
      new CircuitOpen({
        reason: rejection.reason,
        until: rejection.until,
        retryAfter: rejection.reason === "open"
          ? Option.some(Duration.millis(Math.max(0, rejection.until - core.now())))
          : Option.none(),
        trips: rejection.trips,
        name: options.name
      })

    // Run masked, with `effect` restored: an interruption of it settles too (as ignored), so a
    // call admitted while closed is in flight until it settles.
    const settleAfter = <A, E, R>(ticket: number, effect: Effect.Effect<A, E, R>) =>
      Effect.flatMap(Effect.exit(effect), (exit) => settleWith(ticket, exit) ?? exit)

    // Admission in half-open takes a canary slot, so it is uninterruptible up to the verdict:
    // an admitted canary always settles and frees or fills its slot.
    const admitGuarded = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | CircuitOpen, R> =>
      Effect.uninterruptibleMask((restore) => {
        const attempt: Effect.Effect<A, E | CircuitOpen, R> = Effect.flatMap(core.admit, (admission) => {
          if (typeof admission === "number") return settleAfter(admission, restore(effect))
          return "reason" in admission
            ? Effect.fail(reject(admission))
            : Effect.zipRight(restore(Deferred.await(admission)), attempt)
        })
        return attempt
      })

    // Closed admission is synchronous and cannot wait; masked up to `settleAfter`, so that an
    // interruption cannot leave the call pending for good.
    const protect = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | CircuitOpen, R> =>
      Effect.uninterruptibleMask((restore) => {
        const ticket = core.machine.admitClosed()
        return ticket === undefined ? restore(admitGuarded(effect)) : settleAfter(ticket, restore(effect))
      })

    // Waits out a half-open verdict like `protect`; the ticket is settled once, by the caller or
    // as interrupted when the scope closes first.
    const admit = Effect.uninterruptibleMask((restore) => {
      const enter: Effect.Effect<number, CircuitOpen> = Effect.flatMap(core.admit, (admission) => {
        if (typeof admission === "number") return Effect.succeed(admission)
        return "reason" in admission
          ? Effect.fail(reject(admission))
          : Effect.zipRight(restore(Deferred.await(admission)), enter)
      })
      return Effect.flatMap(enter, (ticket) => {
        let settled = false
        const settle = (exit: Exit.Exit<unknown, unknown>) =>
          Effect.suspend(() => {
            if (settled) return Effect.void
            settled = true
            return settleWith(ticket, exit) ?? Effect.void
          })
        return Effect.as(ScopeFinalizer.addFinalizer(settle(Exit.interrupt(FiberId.none))), settle)
      })
    })

    const verdict: Effect.Effect<void> = Effect.suspend(() => {
      const awaited = core.machine.verdictAwaited(core.now())
      return awaited === undefined ? Effect.void : Effect.zipRight(Deferred.await(awaited), verdict)
    })
    const abandoned = Effect.suspend(() => {
      const state = core.machine.state
      return Effect.fail(reject({ reason: "half_open", until: core.now(), trips: "trips" in state ? state.trips : 0 }))
    })
    const awaitVerdict = (abandonWhen?: Effect.Effect<void>) =>
      abandonWhen === undefined ? verdict : Effect.raceFirst(verdict, Effect.zipRight(abandonWhen, abandoned))

    return {
      protect,
      admit,
      awaitVerdict,
      state: core.state,
      changes: Stream.fromPubSub(transitions.states),
      halfOpen: core.halfOpen,
      isolate: core.isolate,
      reset: core.reset,
      snapshot: core.snapshot
    }
  })

/**
 * A breaker. It runs a fiber in the scope that turns the circuit half-open when an open period
 * ends. Dies with `IllegalArgumentException` on invalid options.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { CircuitBreaker } from "weatherproof"
 *
 * declare const search: (query: string) => Effect.Effect<ReadonlyArray<string>, Error>
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const breaker = yield* CircuitBreaker.make({ name: "search", failureRatio: 0.5, openFor: "10 seconds" })
 *   // While the circuit is open, calls fail at once with CircuitOpen, which says when they resume.
 *   return yield* breaker.protect(search("weather in Oslo"))
 * }))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    const settings = yield* Effect.sync(() => settingsOf(options))
    const clock = yield* Effect.clock
    const now = () => monotonicMillis(clock)
    const transitions = yield* transitionsOf(options)
    const machine = new internal.Machine(settings, now(), (state) => {
      transitions.announce(state)
      if (state._tag === "Open") transitions.tripped(1)
    })
    return yield* serve(internal.localCore(machine, now), options, transitions)
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<CircuitBreaker> =>
  Layer.scoped(CircuitBreaker, make(options))

/**
 * @since 0.1.0
 * @category models
 */
export interface RedisOptions extends Options {
  /** Every breaker of this name on the same Redis prefix, in any process, is one breaker. Give them the same options. */
  readonly name: string
}

/**
 * A breaker shared on Redis by every service of the same `name` (see "Shared on Redis" above):
 * same options and semantics as `make`. Dies with `IllegalArgumentException` on invalid options.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { CircuitBreaker, Redis } from "weatherproof"
 *
 * declare const search: (query: string) => Effect.Effect<ReadonlyArray<string>, Error>
 *
 * // Every replica's calls count toward one breaker; when it trips, all of them stop.
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const breaker = yield* CircuitBreaker.makeRedis({ name: "search", openFor: "10 seconds" })
 *   return yield* breaker.protect(search("weather in Oslo"))
 * })).pipe(Effect.provide(Redis.layer({ url: "redis://127.0.0.1:6379" })))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeRedis = (options: RedisOptions): Effect.Effect<Service, never, Redis.Redis | Scope.Scope> =>
  Effect.gen(function*() {
    const settings = yield* Effect.sync(() => settingsOf(options))
    const redis = yield* Redis.Redis
    const transitions = yield* transitionsOf(options)
    const core = yield* internalRedis.core(redis, options.name, settings, transitions.announce, transitions.tripped)
    return yield* serve(core, options, transitions)
  })

/**
 * `makeRedis` as a layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRedis = (options: RedisOptions): Layer.Layer<CircuitBreaker, never, Redis.Redis> =>
  Layer.scoped(CircuitBreaker, makeRedis(options))

/**
 * A breaker that never opens: `protect` runs every call unchanged, `halfOpen`, `isolate` and
 * `reset` do nothing. For tests and for apps that opt out.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerNoop: Layer.Layer<CircuitBreaker> = Layer.succeed(CircuitBreaker, {
  protect: (effect) => effect,
  admit: Effect.succeed(() => Effect.void),
  awaitVerdict: () => Effect.void,
  state: Effect.succeed(internal.closed),
  changes: Stream.concat(Stream.succeed(internal.closed), Stream.never),
  halfOpen: Effect.void,
  isolate: Effect.void,
  reset: Effect.void,
  snapshot: Effect.succeed({ state: internal.closed, calls: 0, failures: 0, trips: 0, canariesInFlight: 0, inFlight: 0 })
})
