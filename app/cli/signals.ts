/**
 * SIGINT and SIGTERM as a command sees them. `NodeRuntime.runMain` interrupts the whole program at
 * the first signal; a command that can stop cleanly (a batch drains its calls in flight) catches
 * the signals for as long as it runs instead, and gets them as effects.
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"

/** The signals a command may stop on. */
export type StopSignal = "SIGINT" | "SIGTERM"

const stopSignals: ReadonlyArray<StopSignal> = ["SIGINT", "SIGTERM"]

/** The shell's convention: 128 + the signal's number. */
export const exitCodeOf = (signal: StopSignal): number => signal === "SIGINT" ? 130 : 143

/** The signals caught for a scope. */
export interface Caught {
  /** Completes with the first signal. */
  readonly first: Effect.Effect<StopSignal>
  /** Completes with the second. */
  readonly again: Effect.Effect<void>
  /** The first signal, if one came. */
  readonly received: Effect.Effect<Option.Option<StopSignal>>
}

/** Catches SIGINT and SIGTERM for the scope, in place of whoever handled them before. */
export class StopSignals extends Context.Tag("weatherproof/cli/StopSignals")<StopSignals, {
  readonly catch: Effect.Effect<Caught, never, Scope.Scope>
}>() {}

const caught = (first: Deferred.Deferred<StopSignal>, again: Deferred.Deferred<void>): Caught => ({
  first: Deferred.await(first),
  again: Deferred.await(again),
  received: Effect.flatMap(
    Deferred.poll(first),
    Option.match({ onNone: () => Effect.succeedNone, onSome: Effect.asSome })
  )
})

/**
 * The process's signals. While caught, the listeners already installed (the runtime's, which
 * would interrupt the program) are set aside; they are put back when the scope closes.
 */
export const layerProcess: Layer.Layer<StopSignals> = Layer.succeed(StopSignals, {
  catch: Effect.gen(function*() {
    const first = yield* Deferred.make<StopSignal>()
    const again = yield* Deferred.make<void>()
    let received = 0
    const onSignal = (signal: StopSignal) => () => {
      received += 1
      if (received === 1) Deferred.unsafeDone(first, Effect.succeed(signal))
      else Deferred.unsafeDone(again, Effect.void)
    }
    yield* Effect.acquireRelease(
      Effect.sync(() =>
        stopSignals.map((signal) => {
          const before = process.listeners(signal)
          for (const listener of before) process.off(signal, listener)
          const listener = onSignal(signal)
          process.on(signal, listener)
          return { signal, before, listener }
        })
      ),
      (installed) =>
        Effect.sync(() => {
          for (const { before, listener, signal } of installed) {
            process.off(signal, listener)
            for (const previous of before) process.on(signal, previous)
          }
        })
    )
    return caught(first, again)
  })
})

/** Signals that never come: for running commands in-process, in tests. */
export const layerNone: Layer.Layer<StopSignals> = Layer.succeed(StopSignals, {
  catch: Effect.succeed({ first: Effect.never, again: Effect.never, received: Effect.succeedNone })
})
