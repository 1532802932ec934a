/**
 * The timeline of one call: when it started, when its response headers and its first content
 * arrived, and which deadline applies to the next read. Every wait is an `Effect.timeoutFail`
 * on Effect's `Clock`, so `TestClock` drives it.
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { DeadlineExceeded, type PartialOutput } from "../ApiError.js"
import type { Deadlines } from "../Transport.js"

/** Deadlines in milliseconds (`Infinity` for none). */
export interface Limits {
  readonly firstContent: number
  readonly idle: number
  readonly total: number
}

/** Merges deadline overrides, later ones winning, onto complete defaults. */
export const resolveLimits = (
  defaults: Deadlines,
  ...overrides: ReadonlyArray<Partial<Deadlines> | undefined>
): Limits => {
  const millis = (key: keyof Deadlines): number =>
    Duration.toMillis(overrides.reduce((value, override) => override?.[key] ?? value, defaults[key]))
  return { firstContent: millis("firstContent"), idle: millis("idle"), total: millis("total") }
}

/** Who is told when the headers and the first content of a success arrive. */
export interface Observers {
  /** Once, when the success status and headers arrive. */
  readonly onAccepted?: Effect.Effect<void> | undefined
  /** Once, with the time from the response headers to the first content. */
  readonly onFirstContent?: ((queueDelay: Duration.Duration) => Effect.Effect<void>) | undefined
}

/**
 * Mutable, owned by one call's fiber. Keep-alive bytes never touch it: only `contentArrived`
 * moves the first-content and idle anchors.
 */
export class Timeline {
  private headersAt: number | undefined
  private firstContentAt: number | undefined
  private idleFrom = 0

  constructor(
    private readonly limits: Limits,
    private readonly startedAt: number,
    private readonly observers: Observers | undefined
  ) {}

  /** Starts the timeline of a call now. */
  static start(limits: Limits, observers: Observers | undefined): Effect.Effect<Timeline> {
    return Effect.map(Clock.currentTimeMillis, (now) => new Timeline(limits, now, observers))
  }

  /** The success status and headers arrived. */
  readonly headersArrived: Effect.Effect<void> = Effect.flatMap(Clock.currentTimeMillis, (now) => {
    this.headersAt = now
    return this.observers?.onAccepted ?? Effect.void
  })

  /** Content (not keep-alive) arrived: the first one ends the queueing phase. */
  readonly contentArrived: Effect.Effect<void> = Effect.flatMap(Clock.currentTimeMillis, (now) => {
    this.idleFrom = now
    if (this.firstContentAt !== undefined) return Effect.void
    this.firstContentAt = now
    const onFirstContent = this.observers?.onFirstContent
    return onFirstContent === undefined || this.headersAt === undefined
      ? Effect.void
      : onFirstContent(Duration.millis(now - this.headersAt))
  })

  /**
   * The consumer asks for more: idle time counts from here, so a slow consumer is not mistaken
   * for a stalled upstream.
   */
  readonly resumed: Effect.Effect<void> = Effect.map(Clock.currentTimeMillis, (now) => {
    if (this.firstContentAt !== undefined) this.idleFrom = now
  })

  /**
   * Runs `effect` under whichever deadline comes first: the phase's (first content, or idle
   * once content flows) or the total. `partial` is read only if the deadline passes.
   */
  guard<A, E>(
    effect: Effect.Effect<A, E>,
    partial: () => PartialOutput
  ): Effect.Effect<A, E | DeadlineExceeded> {
    return Effect.flatMap(Clock.currentTimeMillis, (now) => {
      const waiting = this.firstContentAt === undefined
      const phaseLimit = waiting ? this.limits.firstContent : this.limits.idle
      const phaseEnd = (waiting ? this.startedAt : this.idleFrom) + phaseLimit
      const totalEnd = this.startedAt + this.limits.total
      const end = Math.min(phaseEnd, totalEnd)
      if (end === Infinity) return effect
      const exceeded = () =>
        new DeadlineExceeded({
          reason: phaseEnd <= totalEnd ? (waiting ? "first_content" : "idle") : "total",
          after: Duration.millis(phaseEnd <= totalEnd ? phaseLimit : this.limits.total),
          partial: partial()
        })
      return end <= now
        ? Effect.fail(exceeded())
        : Effect.timeoutFail(effect, { duration: Duration.millis(end - now), onTimeout: exceeded })
    })
  }
}
