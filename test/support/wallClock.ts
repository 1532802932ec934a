import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as TestClock from "effect/TestClock"

/**
 * The `TestClock`, with a system clock that can be stepped (an NTP step, a virtual machine's clock
 * set right after a pause): `stepWall` moves `currentTimeMillis` by `millis`, forwards or back;
 * the monotonic `currentTimeNanos` and the timers go on as before, as `process.hrtime` and
 * Node's timers do.
 */
export const wallSteppableClock = Effect.map(TestClock.testClock(), (test) => {
  let stepped = 0
  const wall = () => test.unsafeCurrentTimeMillis() + stepped
  const clock: Clock.Clock = {
    [Clock.ClockTypeId]: Clock.ClockTypeId,
    unsafeCurrentTimeMillis: wall,
    currentTimeMillis: Effect.sync(wall),
    unsafeCurrentTimeNanos: () => test.unsafeCurrentTimeNanos(),
    currentTimeNanos: Effect.sync(() => test.unsafeCurrentTimeNanos()),
    sleep: (duration) => test.sleep(duration)
  }
  return {
    clock,
    stepWall: (millis: number) => {
      stepped += millis
    }
  }
})
