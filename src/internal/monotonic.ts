/**
 * The time of what is measured within this process: deadlines, open periods, windows, cooldowns,
 * latencies. It is the `Clock`'s `currentTimeNanos` in whole milliseconds, which Effect's default
 * clock keeps as the wall time at start moved on by `process.hrtime`: a step of the system clock
 * (an NTP step, a virtual machine's clock set right after a pause) moves no deadline and stretches
 * no open period, where `currentTimeMillis` (`Date.now`) steps with it. A `TestClock` drives both
 * alike. What leaves the process or meets a date (Redis, a `Retry-After` date, price windows,
 * timestamps written out) stays on `currentTimeMillis`.
 */
import type * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"

const nanosPerMilli = 1_000_000n

/** `clock`'s monotonic time in whole milliseconds (epoch milliseconds as of the process's start). */
export const monotonicMillis = (clock: Clock.Clock): number => Number(clock.unsafeCurrentTimeNanos() / nanosPerMilli)

/**
 * The fiber's clock's monotonic time (`monotonicMillis`). Not `Clock.currentTimeNanos`: the
 * `TestClock`'s makes a `BigInt` of a fractional nanosecond count, which throws, once a sleep of a
 * fraction of a millisecond moved it; its `unsafeCurrentTimeNanos` rounds.
 */
export const currentMonotonicMillis: Effect.Effect<number> = Effect.clockWith((clock) => Effect.sync(() => monotonicMillis(clock)))
