/**
 * The timeline of one call: when it started, when its response headers and its first content
 * arrived, and which deadline applies while it waits; and the watchdog that enforces the
 * deadlines of many calls with one timer.
 *
 * A deadline applies while the call waits for the upstream (its send, or a read the consumer
 * asked for). It is enforced in one of two ways, both on Effect's `Clock` (so `TestClock` drives
 * them):
 * - `Timeline.guard`: one wait under an `Effect.timeoutFail`, for an exchange made through any
 *   `HttpClient`;
 * - `Watchdog`: calls register their timeline, and one fiber sleeps until the earliest deadline
 *   among them and aborts the exchange of each call past its own. For the transport's own undici
 *   exchanges, which an abort ends at once: no timer and no fiber per call or per read.
 *
 * Both judge a deadline only once the process has read what arrived in time (see `sleepCaughtUp`).
 */
import * as Cause from "effect/Cause"
import type * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import { DeadlineExceeded, emptyPartial, type PartialOutput } from "../ApiError.js"
import type { Deadlines } from "../Transport.js"
import { monotonicMillis } from "./monotonic.js"
import { type Entry, Registry } from "./registry.js"
import { assertValid, durationMillis, positiveDuration } from "./options.js"

/** A timer this late woke a process that did not run meanwhile: stopped (Ctrl-Z, a paused container) or blocked. */
const stoppedAfterMillis = 1_000
/** One step of the wait for the event loop to catch up; a step that wakes later than this says it has not. */
const catchUpStepMillis = 100
/** The most steps of that wait: a loop that stays behind still has its deadlines judged. */
const maxCatchUpSteps = 50

/**
 * Sleeps until `end` on `clock`. A wake long after it means the process did not run meanwhile, and
 * what the upstream sent meanwhile still waits, unread, in its sockets (a stopped process's timers
 * fire before its input is read): a deadline judged then would cut answers that came in time, and
 * their retries would be billed again. So it then sleeps in short steps until one wakes on time,
 * the event loop having read that input.
 */
const sleepCaughtUp = (clock: Clock.Clock, end: number): Effect.Effect<void> => {
  const step = (steps: number): Effect.Effect<void> =>
    Effect.suspend(() => {
      const stepEnd = monotonicMillis(clock) + catchUpStepMillis
      return Effect.flatMap(clock.sleep(Duration.millis(catchUpStepMillis)), () =>
        steps < maxCatchUpSteps && monotonicMillis(clock) - stepEnd > catchUpStepMillis ? step(steps + 1) : Effect.void)
    })
  return Effect.suspend(() => {
    const wait = end - monotonicMillis(clock)
    if (wait <= 0) return Effect.void
    return Effect.flatMap(clock.sleep(Duration.millis(wait)), () =>
      monotonicMillis(clock) - end > stoppedAfterMillis ? step(1) : Effect.void)
  })
}

/** What a deadline ends: an exchange under way. */
export interface Abortable {
  readonly abort: (reason: Error) => void
}

/** Deadlines in milliseconds (`Infinity` for none). */
export interface Limits {
  readonly firstContent: number
  readonly idle: number
  readonly total: number
}

/**
 * Merges deadline overrides, later ones winning, onto complete defaults. Throws naming `owner`
 * and each deadline not above zero (zero would cut every call at once), as it was given.
 */
export const resolveLimits = (
  owner: string,
  defaults: Deadlines,
  ...overrides: ReadonlyArray<Partial<Deadlines> | undefined>
): Limits => {
  const given = (key: keyof Deadlines) => overrides.reduce((value, override) => override?.[key] ?? value, defaults[key])
  const limits = {
    firstContent: durationMillis(given("firstContent")),
    idle: durationMillis(given("idle")),
    total: durationMillis(given("total"))
  }
  if (!(limits.firstContent > 0 && limits.idle > 0 && limits.total > 0)) {
    assertValid(owner, (["firstContent", "idle", "total"] as const).map((name) => positiveDuration(`deadlines.${name}`, given(name))))
  }
  return limits
}

/** Who is told when the headers and the first content of a success arrive. */
export interface Observers {
  /** Once, when the success status and headers arrive. */
  readonly onAccepted?: Effect.Effect<void> | undefined
  /** Once, with the time from the response headers to the first content. */
  readonly onFirstContent?: ((queueDelay: Duration.Duration) => Effect.Effect<void>) | undefined
}

/** The deadline of a wait: when it ends, and its error (with what arrived) if it passes. */
interface Due {
  readonly end: number
  readonly exceeded: () => DeadlineExceeded
}

/** What a non-streaming answer whose JSON began had received: its body is its one event. */
const startedCompletion: PartialOutput = { ...emptyPartial, events: 1 }

/**
 * Mutable, owned by one call. Keep-alive bytes never move the first-content deadline, and after
 * the first content only content moves the idle one; before it, keep-alives are watched for
 * their silence (see `keepAliveArrived`).
 */
export class Timeline {
  private headersAt: number | undefined
  private firstContentAt: number | undefined
  private firstContentReported = false
  private idleFrom = 0
  /** A keep-alive came before the first content: from then on, the upstream's silence is watched. */
  private keptAlive = false
  /** Set after a stream's last event: its rest is read until `end`, then abandoned. */
  private drain: { readonly end: number; readonly millis: number } | undefined
  /** Whether the call waits for the upstream now; the watchdog applies the deadlines only then. */
  waiting = true
  /** What a stream received so far, for the error of a deadline that passes (see `partialOutput`). */
  partial: (() => PartialOutput) | undefined = undefined
  /**
   * The exchange under way, set by the wire: the watchdog aborts it with a deadline's error, and the
   * wire as the call ends (an ended exchange ignores it). An object rather than a closure: V8
   * allocates a closure assigned to a property in the old generation, where it kept the exchange
   * and all it reached through young collections.
   */
  underWay: Abortable | undefined
  /** The deadline that passed, once one did (the watchdog's). */
  expired: DeadlineExceeded | undefined
  /** Its place in the watchdog's registry while watched. */
  watchEntry: Entry<Timeline> | undefined

  constructor(
    private readonly limits: Limits,
    private readonly startedAt: number,
    private readonly observers: Observers | undefined,
    private readonly clock: Clock.Clock,
    private readonly wholeBody: boolean
  ) {}

  /**
   * Starts the timeline of a call now. A `wholeBody` answer (not streamed) has its content only
   * once generated, at the end: once accepted, the first-content deadline would cut a generation
   * longer than it (and each retry would be cut and billed again). `total` bounds it instead, and
   * `idle` its silence once keep-alives came (see `keepAliveArrived`); a request DeepSeek never
   * schedules is closed by DeepSeek (a blank body).
   */
  static start(limits: Limits, observers: Observers | undefined, wholeBody = false): Effect.Effect<Timeline> {
    return Effect.clockWith((clock) =>
      Effect.sync(() => new Timeline(limits, monotonicMillis(clock), observers, clock, wholeBody))
    )
  }

  now(): number {
    return monotonicMillis(this.clock)
  }

  /** The success status and headers arrived. */
  readonly headersArrived: Effect.Effect<void> = Effect.suspend(() => {
    this.headersAt = this.now()
    return this.observers?.onAccepted ?? Effect.void
  })

  /** Content (not keep-alive) arrived at `now`: the first one ends the queueing phase. */
  markContent(now: number): void {
    this.idleFrom = now
    this.firstContentAt ??= now
  }

  /**
   * A read without content arrived at `now` (keep-alive blank lines or comments). DeepSeek sends
   * them until the content, through its queue (and a non-streaming answer's generation): once
   * they have come, silence for the idle deadline means the connection or the server is stuck.
   * An upstream that sends none is never cut this way: it waits for the first content (a stream)
   * or the total deadline (a non-streaming answer past its 200, its body generated meanwhile).
   * After the first content, only content counts (a stream that stalls behind keep-alives).
   */
  keepAliveArrived(now: number): void {
    if (this.firstContentAt !== undefined) return
    this.keptAlive = true
    this.idleFrom = now
  }

  /** Whether any content (not keep-alive) arrived yet. */
  get hasContent(): boolean {
    return this.firstContentAt !== undefined
  }

  /**
   * What the call received so far: a stream's `partial`; a non-streaming answer's body counts as
   * its one event once its JSON began (the answer was generated), none while only keep-alive blank
   * lines came (it was queued).
   */
  partialOutput(): PartialOutput {
    return this.partial?.() ?? (this.hasContent ? startedCompletion : emptyPartial)
  }

  /** Tells `onFirstContent` once, after the first content arrived. */
  readonly reportFirstContent: Effect.Effect<void> = Effect.suspend(() => {
    const onFirstContent = this.observers?.onFirstContent
    if (
      this.firstContentReported || this.firstContentAt === undefined || this.headersAt === undefined ||
      onFirstContent === undefined
    ) return Effect.void
    this.firstContentReported = true
    return onFirstContent(Duration.millis(this.firstContentAt - this.headersAt))
  })

  /**
   * Content (not keep-alive) arrived now: the report of the first content to run, once; after it,
   * or with no `onFirstContent` to tell, `undefined` (a stream's every read asks, with no effect
   * to run).
   */
  contentArrived(): Effect.Effect<void> | undefined {
    this.markContent(this.now())
    return this.firstContentReported || this.observers?.onFirstContent === undefined ? undefined : this.reportFirstContent
  }

  /**
   * The consumer asks for more: idle time counts from here, so a slow consumer is not mistaken
   * for a stalled upstream.
   */
  resume(): void {
    if (this.firstContentAt !== undefined) this.idleFrom = this.now()
  }

  /** The rest of the body (after a stream's last event) is read for `millis` at most. */
  drainFor(millis: number): void {
    this.drain = { end: this.now() + millis, millis }
  }

  /** The deadline of a wait now: the earliest of the first content's, the idle one's and the total. */
  due(): Due {
    const drain = this.drain
    if (drain !== undefined) {
      return { end: drain.end, exceeded: () => new DeadlineExceeded({ reason: "idle", after: Duration.millis(drain.millis), partial: this.partialOutput() }) }
    }
    const { firstContent, idle, total } = this.limits
    const beforeContent = this.firstContentAt === undefined
    // A non-streaming answer past its headers waits for its body, not its first content (see `start`).
    const firstContentEnd = beforeContent && !(this.wholeBody && this.headersAt !== undefined)
      ? this.startedAt + firstContent
      : Infinity
    const idleEnd = beforeContent && !this.keptAlive ? Infinity : this.idleFrom + idle
    const totalEnd = this.startedAt + total
    const end = Math.min(firstContentEnd, idleEnd, totalEnd)
    return {
      end,
      exceeded: () => {
        const reason = end === firstContentEnd ? "first_content" : end === idleEnd ? "idle" : "total"
        return new DeadlineExceeded({
          reason,
          after: Duration.millis(reason === "first_content" ? firstContent : reason === "idle" ? idle : total),
          partial: this.partialOutput()
        })
      }
    }
  }

  /** Runs `effect` under the deadline of a wait that starts now. */
  guard<A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E | DeadlineExceeded> {
    return Effect.suspend(() => {
      const now = this.now()
      const { end, exceeded } = this.due()
      if (end === Infinity) return effect
      return end <= now
        ? Effect.fail(exceeded())
        // Interruptible whatever the caller's mask, as `Effect.timeout`'s timer: the winner interrupts it.
        : Effect.raceFirst(effect, Effect.interruptible(Effect.zipRight(sleepCaughtUp(this.clock, end), Effect.failSync(exceeded))))
    })
  }

  /**
   * The deadline's error, when `cause` (an exchange's failure) is it: the exchange was aborted by
   * it. Failed under a span, an error is a copy that carries the span (`Cause.originalError`).
   */
  expiredBy(cause: unknown): DeadlineExceeded | undefined {
    return this.expired !== undefined && Cause.originalError(cause) === this.expired ? this.expired : undefined
  }

  /** The deadline passed: the exchange under way ends with its error. */
  expire(): void {
    this.expired ??= this.due().exceeded()
    this.underWay?.abort(this.expired)
  }
}

/**
 * The deadlines of many calls with one timer. A call registers its timeline (`watch`) for as
 * long as it runs; one fiber sleeps until the earliest deadline among the timelines that wait,
 * expires those past theirs, and sleeps again. The fiber starts with the first registration (on
 * the clock of the fiber that registers) and stops when none is left, so an idle process can exit.
 * A timeline that waits again asks to be looked at (`waitFor`), in case its deadline is the earliest.
 */
export class Watchdog {
  private readonly watched = new Registry<Timeline>()
  private sleeper: Fiber.RuntimeFiber<void> | undefined
  private wakeAt = Infinity
  /** Bumped with each new sleeper: a sleeper of an older generation changes nothing. */
  private generation = 0

  /** Registers `timeline` until `unwatch`. */
  watch(timeline: Timeline): Effect.Effect<void> {
    return Effect.suspend(() => {
      timeline.watchEntry ??= this.watched.add(timeline)
      return this.lookAt(timeline.due().end)
    })
  }

  unwatch(timeline: Timeline): void {
    this.remove(timeline)
    if (this.watched.size === 0) this.stop()
  }

  private remove(timeline: Timeline): void {
    if (timeline.watchEntry === undefined) return
    this.watched.remove(timeline.watchEntry)
    timeline.watchEntry = undefined
  }

  /**
   * `wait`, as `timeline` waiting for the upstream again: fails at once if its deadline passed,
   * else makes sure the watchdog wakes by then (one step before `wait`, a stream's every read).
   */
  waitFor<A, E>(timeline: Timeline, wait: Effect.Effect<A, E>): Effect.Effect<A, E | DeadlineExceeded> {
    return Effect.suspend((): Effect.Effect<A, E | DeadlineExceeded> => {
      if (timeline.expired !== undefined) return Effect.fail(timeline.expired)
      const due = timeline.due()
      if (due.end <= timeline.now()) return Effect.fail(timeline.expired = due.exceeded())
      timeline.waiting = true
      return due.end >= this.wakeAt ? wait : Effect.zipRight(this.wakeBy(due.end), wait)
    })
  }

  /** Wakes by `end` at the latest: a new sleeper when the current one would wake later. */
  private lookAt(end: number): Effect.Effect<void> {
    return end >= this.wakeAt ? Effect.void : this.wakeBy(end)
  }

  /** A new sleeper, to wake by `end`, in place of the current one. */
  private wakeBy(end: number): Effect.Effect<void> {
    this.stop()
    this.wakeAt = end
    const generation = this.generation
    // Interruptible whatever the mask of the fiber that starts it (a scope's acquisition).
    return Effect.asVoid(Effect.tap(Effect.forkDaemon(Effect.interruptible(this.sleepUntil(end, generation))), (fiber) => {
      if (generation === this.generation) this.sleeper = fiber
      else fiber.unsafeInterruptAsFork(FiberId.none)
    }))
  }

  private stop(): void {
    this.generation++
    this.sleeper?.unsafeInterruptAsFork(FiberId.none)
    this.sleeper = undefined
    this.wakeAt = Infinity
  }

  private sleepUntil(end: number, generation: number): Effect.Effect<void> {
    return Effect.clockWith((clock) =>
      Effect.zipRight(sleepCaughtUp(clock, end), Effect.suspend(() => this.sweep(monotonicMillis(clock), generation)))
    )
  }

  /** Expires every waiting timeline past its deadline, then sleeps until the next deadline. */
  private sweep(now: number, generation: number): Effect.Effect<void> {
    if (generation !== this.generation) return Effect.void
    let next = Infinity
    for (const timeline of this.watched.values()) {
      if (!timeline.waiting) continue
      const { end } = timeline.due()
      if (end > now) next = Math.min(next, end)
      else {
        this.remove(timeline)
        timeline.expire()
      }
    }
    this.wakeAt = next
    if (next === Infinity) {
      this.sleeper = undefined
      return Effect.void
    }
    return this.sleepUntil(next, generation)
  }
}
