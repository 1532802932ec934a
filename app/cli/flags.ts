/**
 * The flags `batch` and `serve` share, declared once: where the accounts come from, their limits
 * and the Redis they share them through,
 * how long a call may wait and each attempt's deadlines, retries, the drain on a signal. Only
 * @effect/cli and the duration parser are loaded here, so declaring the commands stays cheap.
 */
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import type * as Usage from "@effect/cli/Usage"
import * as ValidationError from "@effect/cli/ValidationError"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as DurationText from "../../src/internal/durationText.js"
import { mayBeKey } from "../../src/internal/text.js"
import { commandIndex } from "./argv.js"

/**
 * A flag's value that does not parse, named with its flag (@effect/cli's own messages name
 * neither); quoted unless it may be a key, pasted in the wrong place.
 */
const invalid = (name: string, expected: string, text: string) =>
  Effect.fail(ValidationError.invalidValue(HelpDoc.p(
    `--${name}: expected ${expected}, got ${mayBeKey(text) ? "something shaped like a key (not shown)" : JSON.stringify(text)}`
  )))

/** How a duration flag reads its text: a duration, or a deadline (a duration above zero). */
const durations = {
  duration: { parse: DurationText.parse, expected: DurationText.expected },
  deadline: { parse: DurationText.parseDeadline, expected: DurationText.expectedDeadline }
} as const

/** An optional duration flag, written as `30s`, `500ms`, `2m` or `1h`. */
export const duration = (name: string, description: string, kind: keyof typeof durations = "duration") =>
  Options.text(name).pipe(
    Options.withPseudoName("duration"),
    Options.mapEffect((text): Effect.Effect<Duration.Duration, ValidationError.ValidationError> => {
      const { expected, parse } = durations[kind]
      const parsed = parse(text)
      return parsed === undefined ? invalid(name, expected, text) : Effect.succeed(parsed)
    }),
    Options.withDescription(description),
    Options.optional
  )

/** `12`, `-1`: a whole number (in JavaScript's safe range). */
const parseInteger = (name: string) => (text: string): Effect.Effect<number, ValidationError.ValidationError> =>
  /^-?\d+$/.test(text.trim()) && Number.isSafeInteger(Number(text))
    ? Effect.succeed(Number(text))
    : invalid(name, "a whole number", text)

/** An integer flag (its bounds are the command's to check). */
export const integer = (name: string, description: string) =>
  Options.text(name).pipe(
    Options.withPseudoName("integer"),
    Options.mapEffect(parseInteger(name)),
    Options.withDescription(description)
  )

/**
 * A file flag. Its path is checked by the command, which names the flag in what it says: the
 * check of @effect/cli's `Options.file` says "Expected path 'x' to be a regular file".
 */
export const file = (name: string) =>
  Options.text(name).pipe(
    Options.withPseudoName("file"),
    // An empty path is the working directory to the file system ("" unset in a script, say).
    Options.mapEffect((path) => path === "" ? invalid(name, "a path", path) : Effect.succeed(path))
  )

/**
 * A `-` given to `batch` (for standard input or output), told before @effect/cli parses the command
 * line, which reads a `-` before an option as a broken option ("Expected to find option").
 */
export const batchDashProblem = (argv: ReadonlyArray<string>): string | undefined => {
  const args = argv.slice(2)
  const command = commandIndex(args)
  if (args[command] !== "batch") return undefined
  const rest = args.slice(command + 1)
  const dash = rest.findIndex((arg) => arg === "-" || /^--?[A-Za-z-]+=-$/.test(arg))
  if (dash < 0) return undefined
  return rest[dash] === "--summary=-" || rest[dash - 1] === "--summary"
    ? "--summary takes a path for the summary's JSON, not `-`: its text goes to stdout already; nothing was sent"
    : "batch takes its input and its output by path, not `-` (standard input or output): a stopped batch resumes by reading its input again and skipping the lines its output holds; give a file, or a pipe by its path (/dev/stdin, <(…)), which a resume must give again; nothing was sent"
}

/** The short names of flags, read as their long ones. */
const aliases: Readonly<Record<string, string>> = { "-o": "--output" }

/**
 * A flag given twice after the command, told before @effect/cli parses the command line, which
 * reports the second as an unknown argument (`Received unknown argument: '--output'`).
 */
export const repeatedFlagProblem = (argv: ReadonlyArray<string>): string | undefined => {
  const args = argv.slice(2)
  const seen = new Set<string>()
  for (const arg of args.slice(commandIndex(args) + 1)) {
    if (arg === "--") break
    if (!arg.startsWith("-") || arg === "-") continue
    const written = arg.split("=")[0]!
    const name = aliases[written] ?? written
    if (seen.has(name)) return `${name} is given twice: give each flag once`
    seen.add(name)
  }
  return undefined
}

/** The levels @effect/cli's own `--log-level` takes. */
const logLevels = LogLevel.allLevels.map((level) => level._tag.toLowerCase())

/**
 * `--log-level` (@effect/cli's, before or after the command) with a level it does not take, or
 * none, told before @effect/cli parses the command line, which reports it as an invalid
 * subcommand or an unknown argument.
 */
export const logLevelProblem = (argv: ReadonlyArray<string>): string | undefined => {
  const args = argv.slice(2)
  for (const [i, arg] of args.entries()) {
    if (arg === "--") break
    const level = arg === "--log-level" ? args[i + 1] ?? "" : arg.startsWith("--log-level=") ? arg.slice("--log-level=".length) : undefined
    if (level !== undefined && !logLevels.includes(level)) {
      const got = level === "" ? "nothing" : mayBeKey(level) ? "something shaped like a key (not shown)" : JSON.stringify(level)
      return `--log-level: expected one of ${logLevels.join(", ")}, got ${got}`
    }
  }
  return undefined
}

/** The names of the flags in a command's usage that take a value (`--timeout 30s`, `-o out.jsonl`). */
export const flagsWithValue = (usage: Usage.Usage): ReadonlyArray<string> => {
  switch (usage._tag) {
    case "Named":
      return Option.isSome(usage.acceptedValues) ? usage.names.filter((name) => name.startsWith("-")) : []
    case "Optional":
    case "Repeated":
      return flagsWithValue(usage.usage)
    case "Alternation":
    case "Concat":
      return [...flagsWithValue(usage.left), ...flagsWithValue(usage.right)]
    case "Empty":
    case "Mixed":
      return []
  }
}

/** @effect/cli's own flags, which every command takes. */
const builtInFlags: ReadonlySet<string> = new Set(["-h", "--help", "--version", "--wizard", "--log-level", "--completions"])

/**
 * A flag that takes a value given none (the last argument, or another flag next), told before
 * @effect/cli parses the command line, which reports an optional one as an unknown argument.
 * `valueFlags` names the flags of a command that take a value.
 */
export const missingValueProblem = (
  argv: ReadonlyArray<string>,
  valueFlags: (command: string) => ReadonlyArray<string>
): string | undefined => {
  const args = argv.slice(2)
  const command = commandIndex(args)
  if (command < 0) return undefined
  const takesValue = new Set(valueFlags(args[command]!))
  const isFlag = (arg: string) => {
    const name = arg.split("=")[0]!
    return takesValue.has(name) || builtInFlags.has(name)
  }
  for (let i = command + 1; i < args.length && args[i] !== "--"; i++) {
    if (!takesValue.has(args[i]!)) continue
    const value = args[i + 1]
    if (value === undefined || isFlag(value)) return `${args[i]} takes a value, and none was given after it`
    i++ // its value, whatever it looks like
  }
  return undefined
}

/**
 * `--wizard` (@effect/cli's, in every command's help) without a terminal to ask on: it would wait
 * for answers for good (under cron, CI or nohup), so it is refused.
 */
export const wizardProblem = (argv: ReadonlyArray<string>, interactive: boolean): string | undefined =>
  !interactive && argv.slice(2).includes("--wizard")
    ? "--wizard asks its questions on a terminal, and standard input is none: give the command's flags instead (see --help)"
    : undefined

/** Where the accounts come from and how many calls each may have in flight. */
export const accountFlags = {
  accounts: file("accounts").pipe(
    Options.withDescription("a JSON file of accounts (default: one DeepSeek account from DEEPSEEK_API_KEY)"),
    Options.optional
  ),
  concurrency: integer(
    "concurrency",
    "at most N calls in flight per account and model, backing off on 429s and climbing back to N (default: the accounts file's, else adaptive); with --redis, for every process on the account: give each the same"
  ).pipe(Options.optional),
  redis: Options.text("redis").pipe(
    Options.withPseudoName("url"),
    Options.withDescription(
      "a Redis or Valkey server (redis://host:port; default WEATHERPROOF_REDIS_URL): every process given the same one, and the same WEATHERPROOF_REDIS_PREFIX, shares each account's limits, breaker, key cooldowns and balance, and the response cache"
    ),
    Options.optional
  )
}

/**
 * How long a call may wait for an account, how often it is retried, and each attempt's deadlines;
 * `deadlinesNote` ends the last deadline's description (what else sets them, for the command).
 */
export const callFlags = (retriesDefault: number, deadlinesNote = "") => ({
  retries: integer(
    "retries",
    `how many times a failed attempt is retried (default ${retriesDefault}; the retry budget paces them)`
  ).pipe(Options.optional),
  maxWait: duration(
    "max-wait",
    "how long a call may wait for an account that can take it (all at their limit, breakers open, balances out) before it fails (default 30m)"
  ),
  firstContentTimeout: duration(
    "first-content-timeout",
    "per attempt, from sending to the first content (keep-alives do not count; default 10m, DeepSeek's); a non-streaming call's only until its 200, which DeepSeek sends before queueing it: its content comes whole once generated, so --timeout bounds the rest",
    "deadline"
  ),
  idleTimeout: duration("idle-timeout", "per attempt, the longest gap between two content events (default 2m); keep-alives count until the first content", "deadline"),
  timeout: duration(
    "timeout",
    `per attempt, the whole call (default 30m)${deadlinesNote}`,
    "deadline"
  )
})

/** How long the calls in flight may finish after SIGINT or SIGTERM. */
export const drainTimeout = (what: string) =>
  duration("drain-timeout", `on SIGINT or SIGTERM, how long ${what} may finish (default 30s)`)
