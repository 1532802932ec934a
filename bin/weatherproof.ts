#!/usr/bin/env node
/**
 * The `weatherproof` command line. This entry holds only the command definitions: each handler
 * loads what it needs (`app/cli/`) when it runs, so `--version`, `--help` and a usage error load
 * none of the library. One subcommand is one entry of `subcommands`.
 *
 * - `weatherproof batch <input.jsonl> --output <results.jsonl> [--accounts <accounts.json>]
 *   [--summary <summary.json>] [--concurrency N] [--retries 10] [--drain-timeout 30s]
 *   [--max-wait 30m] [--first-content-timeout 10m] [--idle-timeout 2m] [--timeout 30m]` runs an OpenAI-format
 *   batch over the accounts of the file (or one DeepSeek account from `DEEPSEEK_API_KEY` and
 *   optional `DEEPSEEK_BASE_URL`), prices it (`WEATHERPROOF_PRICING_FILE`,
 *   `WEATHERPROOF_BUDGET_USD`), routes tasks (`WEATHERPROOF_ROUTER`) and can write its summary as
 *   JSON. SIGINT, SIGTERM or its terminal hanging up stops it cleanly (see `app/cli/batch.ts`).
 * - `weatherproof demo [--requests N]` runs the same batch path against an in-process simulator,
 *   with faults on, and verifies every answer. No key needed.
 *
 * Exit codes: 0 when every line succeeded (demo: verified), 1 when a line failed or the run could
 * not go on, 2 for a usage or configuration error (a missing key, a bad accounts file, pricing
 * table or router setting, an output another run holds), 130 / 143 when SIGINT / SIGTERM stopped
 * it; a batch stopped by SIGHUP (its terminal hung up) ends by that signal.
 *
 * @since 0.1.0
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Descriptor from "@effect/cli/CommandDescriptor"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import type * as CliApp from "@effect/cli/CliApp"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as NodePath from "@effect/platform-node/NodePath"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeTerminal from "@effect/platform-node/NodeTerminal"
import { defaultTeardown } from "@effect/platform/Runtime"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as HashSet from "effect/HashSet"
import * as Logger from "effect/Logger"
import { realpathSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { withPlainText } from "../app/cli/plainText.js"
import {
  endWith,
  exitCodeOf,
  ignoreHangUpWithoutTerminal,
  layerProcess,
  type StopSignal,
  type StopSignals
} from "../app/cli/signals.js"
import { serve } from "../app/gateway/command.js"
import { fail } from "../app/cli/exit.js"
import * as Flags from "../app/cli/flags.js"
import { commandIndex, logLevelFirst } from "../app/cli/argv.js"

const batch = Command.make(
  "batch",
  {
    input: Args.text({ name: "input.jsonl" }).pipe(
      Args.withDescription("the requests, one JSON line each, as OpenAI's batch input (custom_id, method, url, body)")
    ),
    output: Flags.file("output").pipe(Options.withAlias("o"), Options.withDescription("results JSONL, resumed when it exists")),
    summary: Flags.file("summary").pipe(
      Options.withDescription("also write the run's summary (counts, tokens, cost, per account) as JSON to this file"),
      Options.optional
    ),
    ...Flags.accountFlags,
    ...Flags.callFlags(10, "; a batch line's own `deadlines` override these three"),
    drainTimeout: Flags.drainTimeout("the requests on the wire"),
    progressEvery: Flags.duration(
      "progress-every",
      "where no progress bar is drawn (stderr not a terminal, CI, TERM=dumb), a progress line this often (default 1m)",
      "deadline"
    )
  },
  (args) => Effect.flatMap(Effect.promise(() => import("../app/cli/batch.js")), (cli) => cli.batch(args))
).pipe(Command.withDescription("Run an OpenAI-format chat completions batch over DeepSeek (and fallback) accounts"))

const demo = Command.make(
  "demo",
  {
    requests: Flags.integer("requests", "how many requests to generate (default 300)").pipe(Options.withDefault(300))
  },
  (args) => Effect.flatMap(Effect.promise(() => import("../app/cli/batchDemo.js")), (cli) => cli.main(args))
).pipe(Command.withDescription("Run a batch against an in-process DeepSeek simulator with faults on, and verify it"))

const subcommands = [
  batch,
  demo,
  serve
] as const

/** The command that prints the usage of the subcommand `argv` names, or of the whole command line. */
const helpOf = (argv: ReadonlyArray<string>): string => {
  const args = argv.slice(2)
  const named = args[commandIndex(args)]
  return subcommands.some((command) => HashSet.has(Descriptor.getNames<unknown>(command.descriptor), named ?? ""))
    ? `weatherproof ${named} --help`
    : "weatherproof --help"
}

/** The flags of a subcommand that take a value, read from its usage. */
const valueFlagsOf = (name: string): ReadonlyArray<string> => {
  const command = subcommands.find(({ descriptor }) => HashSet.has(Descriptor.getNames<unknown>(descriptor), name))
  return command === undefined ? [] : Flags.flagsWithValue(Descriptor.getUsage<unknown>(command.descriptor))
}

const weatherproof = Command.make("weatherproof").pipe(
  Command.withDescription("Resilient batch calls to DeepSeek and other OpenAI-compatible chat APIs"),
  Command.withSubcommands(subcommands)
)

/**
 * The command line parser and handlers; `argv` as in `process.argv` (node and script first).
 *
 * @since 0.1.0
 */
export const cli = Command.run(weatherproof, { name: "weatherproof", version: "0.1.0" })

/**
 * Logs (the library's warnings) go to stderr: stdout is the summary's. Each line carries its date
 * and time in UTC (ISO 8601), not only the time of day: a gateway's log, or a long batch's, is read
 * days later.
 */
const logToStderr = Logger.replace(
  Logger.defaultLogger,
  Logger.prettyLogger({ stderr: true, formatDate: (date) => date.toISOString() })
)

/**
 * Runs the command line and returns its exit code; every failure is reported on stderr first.
 *
 * @since 0.1.0
 */
export const main = (argv: ReadonlyArray<string>): Effect.Effect<number, never, CliApp.CliApp.Environment | StopSignals> =>
  Effect.suspend(() => {
    const problem = Flags.batchDashProblem(argv) ?? Flags.repeatedFlagProblem(argv) ?? Flags.logLevelProblem(argv) ??
      Flags.missingValueProblem(argv, valueFlagsOf) ?? Flags.wizardProblem(argv, process.stdin.isTTY === true)
    return problem === undefined ? cli(logLevelFirst(argv)) : fail(2, `weatherproof: ${problem}`)
  }).pipe(
    Effect.as(0),
    Effect.catchAll((error) =>
      error._tag === "ExitCode"
        ? Effect.succeed(error.code)
        : ValidationError.isValidationError(error)
        ? Effect.as(Console.error(`weatherproof: see \`${helpOf(argv)}\` for its usage`), 2) // after @effect/cli's message
        : Effect.as(Console.error(`weatherproof: ${String(error)}`), 1)
    ),
    Effect.provide(logToStderr),
    withPlainText
  )

const isEntryPoint = (): boolean => {
  const script = process.argv[1]
  return script !== undefined && realpathSync(script) === fileURLToPath(import.meta.url)
}

/**
 * Runs the command line on `argv` (this process's arguments) and exits with its code: when this
 * file is the script node runs, or from the bundle's launcher (`dist/cli/weatherproof.js`, see
 * scripts/bundleCli.ts), which runs this file's bundle (`dist/cli/main.cjs`).
 *
 * @since 0.1.0
 */
export const run = (argv: ReadonlyArray<string> = process.argv): void => {
  // A signal that interrupts the program outside a batch (which catches its own) exits as 128 + n.
  let signal: StopSignal | undefined
  for (const name of ["SIGINT", "SIGTERM"] as const) process.on(name, () => (signal ??= name))
  ignoreHangUpWithoutTerminal()
  // A terminal that hung up (or a pipe's reader that went away) fails every write to it: what was
  // to be said there is lost, not the run, which goes on to write its files.
  for (const stream of [process.stdout, process.stderr]) stream.on("error", () => undefined)
  // Only the services the commands use: all of NodeContext takes longer to load.
  const services = [NodeFileSystem.layer, NodePath.layer, NodeTerminal.layer, layerProcess] as const
  NodeRuntime.runMain(main(argv).pipe(Effect.provide(services)), {
    disablePrettyLogger: true,
    teardown: (exit, onExit) =>
      Exit.isSuccess(exit) && typeof exit.value === "number"
        ? endWith(exit.value, onExit)
        : signal !== undefined && Exit.isInterrupted(exit)
        ? onExit(exitCodeOf(signal))
        : defaultTeardown(exit, onExit)
  })
}

if (isEntryPoint()) run()
