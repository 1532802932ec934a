/**
 * How a command of the `weatherproof` CLI ends with an exit code: it fails with `ExitCode`, after
 * its message went to stderr.
 */
import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"

/** Ends the program with `code`; whatever it had to say is already on stderr. */
export class ExitCode extends Data.TaggedError("ExitCode")<{ readonly code: number }> {}

/** Writes `message` to stderr, then ends the program with `code`. */
export const fail = (code: number, message: string): Effect.Effect<never, ExitCode> =>
  Effect.zipRight(Console.error(message), new ExitCode({ code }))
