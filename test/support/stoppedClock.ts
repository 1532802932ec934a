import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as TestClock from "effect/TestClock"

/**
 * The `TestClock`, with a process that can be stopped (Ctrl-Z, a paused container): `stop`
 * moves the time on and fires no timer, as a stopped process's timers do not fire; each fires
 * late, at the `TestClock`'s next adjustment past it. `lagEveryWake` makes every timer from then
 * on fire that much late, as in a process whose event loop stays behind.
 */
export const stoppableClock = Effect.map(TestClock.testClock(), (test) => {
  let stoppedFor = 0
  let lag = 0
  const now = () => test.unsafeCurrentTimeMillis() + stoppedFor
  const clock: Clock.Clock = {
    [Clock.ClockTypeId]: Clock.ClockTypeId,
    unsafeCurrentTimeMillis: now,
    currentTimeMillis: Effect.sync(now),
    unsafeCurrentTimeNanos: () => BigInt(now()) * 1_000_000n,
    currentTimeNanos: Effect.sync(() => BigInt(now()) * 1_000_000n),
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
    }
  }
})
