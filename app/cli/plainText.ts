/**
 * @effect/cli writes its help and its usage errors with ANSI styles whatever the output is, so
 * `weatherproof --help > help.txt` or `| less` got escape codes. Text for a stream that is not a
 * terminal, or with `NO_COLOR` set (no-color.org), is written without them.
 */
import * as Console from "effect/Console"
import type * as Effect from "effect/Effect"

/** ANSI's select-graphic-rendition sequences: the only escapes @effect/cli's help writes. */
const styles = /\x1b\[[0-9;]*m/g

const plain = (args: ReadonlyArray<unknown>): ReadonlyArray<unknown> =>
  args.map((arg) => (typeof arg === "string" ? arg.replace(styles, "") : arg))

const keep = (args: ReadonlyArray<unknown>): ReadonlyArray<unknown> => args

/** Whether text written to `stream` keeps its styles: a terminal reads it, and `NO_COLOR` is unset or empty. */
export const styled = (stream: { readonly isTTY?: boolean | undefined }, env: NodeJS.ProcessEnv): boolean =>
  stream.isTTY === true && (env["NO_COLOR"] ?? "") === ""

/** `console` writing plain text to the standard streams that are not styled. */
const plainConsole = (console: Console.Console, styledOut: boolean, styledErr: boolean): Console.Console => {
  const out = styledOut ? keep : plain
  const err = styledErr ? keep : plain
  return {
    ...console,
    log: (...args) => console.log(...out(args)),
    error: (...args) => console.error(...err(args)),
    unsafe: {
      ...console.unsafe,
      log: (...args) => console.unsafe.log(...out(args)),
      error: (...args) => console.unsafe.error(...err(args))
    }
  }
}

/** Runs `effect` with a console writing plain text where this process's output is not styled. */
export const withPlainText = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Console.consoleWith((console) =>
    Console.withConsole(effect, plainConsole(console, styled(process.stdout, process.env), styled(process.stderr, process.env)))
  )
