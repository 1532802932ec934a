/**
 * Where the subcommand is on a command line, read before @effect/cli parses it: by the launcher,
 * which tunes V8 for the command, and by the check of what @effect/cli would misreport. Nothing is
 * imported here, so the launcher loads nothing more for it.
 */

/** @effect/cli's built-in options that take a value as the next argument, before the subcommand. */
const optionsWithValue: ReadonlySet<string> = new Set(["--log-level", "--completions"])

/**
 * The subcommand's index in `args` (`process.argv` without node and the script): the first
 * argument that is neither an option nor the value of one; -1 when there is none.
 */
export const commandIndex = (args: ReadonlyArray<string>): number =>
  args.findIndex((arg, i) => !arg.startsWith("-") && !(i > 0 && optionsWithValue.has(args[i - 1]!)))
