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

/**
 * `argv` (`process.argv`) with every `--log-level` (and its value) moved before the subcommand:
 * @effect/cli takes its own flag there or right after the subcommand's name, and reports one after
 * a command's flags (`serve --port 0 --log-level debug`) as an unknown argument, though every
 * command's help lists it. What follows `--` is left alone.
 */
export const logLevelFirst = (argv: ReadonlyArray<string>): ReadonlyArray<string> => {
  const args = argv.slice(2)
  const end = args.includes("--") ? args.indexOf("--") : args.length
  const moved: Array<string> = []
  const rest: Array<string> = []
  for (let i = 0; i < end; i++) {
    const arg = args[i]!
    if (arg === "--log-level" && i + 1 < end) moved.push(arg, args[++i]!)
    else if (arg.startsWith("--log-level=")) moved.push(arg)
    else rest.push(arg)
  }
  return moved.length === 0 ? argv : [...argv.slice(0, 2), ...moved, ...rest, ...args.slice(end)]
}
