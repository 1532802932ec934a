/**
 * @effect/cli writes its help and its usage errors with ANSI styles whatever the output is, so
 * `weatherproof --help > help.txt` or `| less` got escape codes. Text for a stream that is not a
 * terminal, or with `NO_COLOR` set (no-color.org), is written without them.
 *
 * Its help also opens every text flag's description with "A user-defined piece of text.", which
 * says nothing: our flags parse their own text (durations, whole numbers, files) and name its kind
 * in the usage line (`--max-wait duration`). That paragraph is left out.
 *
 * A subcommand's help gives its usage as `$ batch …`, which a shell cannot run: the program's
 * name goes first (`$ weatherproof batch …`).
 *
 * Its help opens with a title of the program's name above a line of its name and version: the
 * title is left out, so the name is said once.
 */
import * as Console from "effect/Console"
import type * as Effect from "effect/Effect"

/** ANSI's select-graphic-rendition sequences: the only escapes @effect/cli's help writes. */
const styles = /\x1b\[[0-9;]*m/g

/** The paragraph @effect/cli's help gives every text flag, with the blank line after it. */
const textFlagFiller = /^ *A user-defined piece of text\.\n\n/gm

/** A usage line that does not start with the program's name, after any styles. */
const subcommandUsage = /^((?:\x1b\[[0-9;]*m)*)\$ (?!weatherproof\b)/gm

/** The help's title, the name alone in its styles, where the line of its name and version follows. */
const doubledTitle = /^(?:\x1b\[[0-9;]*m)*weatherproof(?:\x1b\[[0-9;]*m)*\n\n(?=(?:\x1b\[[0-9;]*m)*weatherproof \d)/

const fillerless = (text: string): string =>
  text.replace(doubledTitle, "").replace(textFlagFiller, "").replace(subcommandUsage, "$1$$ weatherproof ")

const strings = (f: (text: string) => string) => (args: ReadonlyArray<unknown>): ReadonlyArray<unknown> =>
  args.map((arg) => (typeof arg === "string" ? f(arg) : arg))

const plain = strings((text) => fillerless(text.replace(styles, "")))

const keepStyles = strings(fillerless)

/** Whether text written to `stream` keeps its styles: a terminal reads it, and `NO_COLOR` is unset or empty. */
export const styled = (stream: { readonly isTTY?: boolean | undefined }, env: NodeJS.ProcessEnv): boolean =>
  stream.isTTY === true && (env["NO_COLOR"] ?? "") === ""

/** `console` writing plain text to the standard streams that are not styled. */
const plainConsole = (console: Console.Console, styledOut: boolean, styledErr: boolean): Console.Console => {
  const out = styledOut ? keepStyles : plain
  const err = styledErr ? keepStyles : plain
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
