/**
 * SIGINT, SIGTERM and SIGHUP as a command sees them. `NodeRuntime.runMain` interrupts the whole
 * program at SIGINT or SIGTERM; a command that can stop cleanly (a batch drains its calls in
 * flight, the gateway its requests) catches the signals for as long as it runs instead, and gets
 * them as effects.
 *
 * SIGHUP says a terminal hung up (an ssh session that dropped, a closed window): a stop signal
 * while one of the process's standard streams is a terminal. Without one (under `nohup`, a service
 * manager, output redirected in the background) no terminal of ours hung up, and the SIGHUP a
 * closing shell sends its jobs is ignored (`ignoreHangUpWithoutTerminal`): `nohup` cannot ignore it
 * for us, as Node resets an inherited SIG_IGN to the default at start.
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import { constants } from "node:os"

/** The signals a command may stop on. */
export type StopSignal = "SIGINT" | "SIGTERM" | "SIGHUP"

/** The shell's convention: 128 + the signal's number. */
export const exitCodeOf = (signal: StopSignal): number => 128 + constants.signals[signal]

/** Whether one of the process's standard streams is a terminal, which a SIGHUP would say hung up. */
const terminalAttached = (): boolean => [process.stdin, process.stdout, process.stderr].some((stream) => stream.isTTY === true)

/** The signals a command catches: SIGHUP only with a terminal attached (see above). */
const stopSignals = (): ReadonlyArray<StopSignal> => terminalAttached() ? ["SIGINT", "SIGTERM", "SIGHUP"] : ["SIGINT", "SIGTERM"]

/** With no terminal attached, SIGHUP is ignored for the process's life, with a note on stderr each time. */
export const ignoreHangUpWithoutTerminal = (): void => {
  if (terminalAttached()) return
  process.on("SIGHUP", () => {
    process.stderr.write("weatherproof: SIGHUP ignored: no terminal of this process hung up (SIGTERM or SIGINT stops it)\n")
  })
}

/**
 * Ends the process with `code` once the command is done, whatever it left running: an OTLP
 * exporter retrying a collector that is down would keep it 10 s and more after its drain (its
 * last flush had its bounded wait in the command's scope). A command stopped by SIGHUP ends by
 * that signal (its exit code, 129, to a shell): its terminal is gone, and Node's own exit would
 * abort as it restores the terminal's settings (Node 20 asserts that they can be set, and a
 * terminal that hung up refuses).
 */
export const endWith = (code: number, onExit: (code: number) => void): void => {
  // No SIGHUP listener is left once the command's signals are released: the default action ends
  // the process before `kill` returns; `onExit` is for a listener someone else installed.
  if (code === exitCodeOf("SIGHUP")) process.kill(process.pid, "SIGHUP")
  onExit(code)
  process.exit(code)
}

/** The signals caught for a scope. */
export interface Caught {
  /** Completes with the first signal. */
  readonly first: Effect.Effect<StopSignal>
  /** Completes with the second (a SIGINT or SIGTERM: a hang-up is never impatience). */
  readonly again: Effect.Effect<void>
  /** The first signal, if one came. */
  readonly received: Effect.Effect<Option.Option<StopSignal>>
}

/** Catches the stop signals for the scope, in place of whoever handled them before. */
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
      // A hang-up comes twice (the shell passes its SIGHUP on to its jobs, then the kernel sends
      // the terminal's foreground jobs one as the shell exits), and no one is there to be impatient.
      else if (signal !== "SIGHUP") Deferred.unsafeDone(again, Effect.void)
    }
    yield* Effect.acquireRelease(
      Effect.sync(() =>
        stopSignals().map((signal) => {
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
