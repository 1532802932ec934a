import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as TestClock from "effect/TestClock"

/**
 * The `TestClock`, as a real process sees its clocks:
 * - `stop` stops the process (Ctrl-Z, a paused container): the time moves on and no timer fires,
 *   as a stopped process's timers do not; each fires late, at the `TestClock`'s next adjustment
 *   past it. `lagEveryWake` makes every timer from then on fire that much late, as in a process
 *   whose event loop stays behind.
 * - `stepWall` steps the system clock (an NTP step, a virtual machine's clock set right after a
 *   pause) by `millis`, forwards or back: `currentTimeMillis` moves, the monotonic
 *   `currentTimeNanos` and the timers go on as before, as `process.hrtime` and Node's timers do.
 */
export const processClock = Effect.map(TestClock.testClock(), (test) => {
  let stoppedFor = 0
  let lag = 0
  let stepped = 0
  const monotonic = () => test.unsafeCurrentTimeMillis() + stoppedFor
  const wall = () => monotonic() + stepped
  const nanos = () => BigInt(Math.floor(monotonic() * 1_000_000))
  const clock: Clock.Clock = {
    [Clock.ClockTypeId]: Clock.ClockTypeId,
    unsafeCurrentTimeMillis: wall,
    currentTimeMillis: Effect.sync(wall),
    unsafeCurrentTimeNanos: nanos,
    currentTimeNanos: Effect.sync(nanos),
    sleep: (duration) =>
      Effect.zipRight(
        test.sleep(duration),
        Effect.sync(() => {
          stoppedFor += lag
        })
      )
  }
  return {
    clock,
    stop: (duration: Duration.DurationInput) => {
      stoppedFor += Duration.toMillis(duration)
    },
    lagEveryWake: (duration: Duration.DurationInput) => {
      lag = Duration.toMillis(duration)
    },
    stepWall: (millis: number) => {
      stepped += millis
    }
  }
})
