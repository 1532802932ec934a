#!/usr/bin/env node
/**
 * The `weatherproof` command line: a thin shell over `Batch.run`.
 *
 * - `weatherproof batch <input.jsonl> --output <results.jsonl> [--accounts <accounts.json>]
 *   [--summary <summary.json>] [--concurrency N]` runs an OpenAI-format batch over the accounts of
 *   the file (or one DeepSeek account from `DEEPSEEK_API_KEY` and optional `DEEPSEEK_BASE_URL`),
 *   prices it (`WEATHERPROOF_PRICING_FILE`, `WEATHERPROOF_BUDGET_USD`), routes tasks
 *   (`WEATHERPROOF_ROUTER`) and can write its summary as JSON.
 * - `weatherproof demo [--requests N]` runs the same batch path against an in-process simulator,
 *   with faults on, and verifies every answer. No key needed.
 *
 * Exit codes: 0 when every line succeeded (demo: verified), 1 when a line failed or the run could
 * not go on, 2 for a usage or configuration error (a missing key, a bad accounts file, pricing
 * table or router setting).
 *
 * @since 0.1.0
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { defaultTeardown } from "@effect/platform/Runtime"
import * as ConfigError from "effect/ConfigError"
import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import { realpathSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { serve } from "../app/gateway/command.js"
import * as Accounts from "../src/Accounts.js"
import { scrubSecrets } from "../src/ApiError.js"
import * as Batch from "../src/Batch.js"
import * as CostLedger from "../src/CostLedger.js"
import * as Demo from "../src/internal/batchDemo.js"
import { progressBar } from "../src/internal/batchProgress.js"
import * as Router from "../src/Router.js"

/**
 * Ends the program with `code` after `message` (if any) went to stderr.
 *
 * @since 0.1.0
 * @category errors
 */
export class ExitCode extends Data.TaggedError("ExitCode")<{ readonly code: number }> {}

const fail = (code: number, message: string) => Effect.zipRight(Console.error(message), new ExitCode({ code }))

/** Runs `f` with a progress bar when stderr is a terminal; `f`'s scope closes before the bar's. */
const withProgress = <A, E, R>(
  f: (onProgress: ((progress: Batch.Progress) => Effect.Effect<void>) | undefined) => Effect.Effect<A, E, R>
) => Effect.scoped(Effect.flatMap(progressBar(process.stderr), f))

const missingKey = "weatherproof: DEEPSEEK_API_KEY is not set or empty (one key, or several separated by commas). " +
  "Set it, pass --accounts FILE, or try `weatherproof demo`, which needs no key."

const invalidConfig = (error: ConfigError.ConfigError) =>
  `weatherproof: invalid configuration: ${scrubSecrets(String(error))}`

/** Problems from a file or the environment, one per line, scrubbed of anything shaped like a key. */
const listIssues = (issues: ReadonlyArray<string>) => issues.map((issue) => `  ${scrubSecrets(issue)}`).join("\n")

/**
 * The accounts of the run: the file's, or one DeepSeek account from the environment. A bad file
 * or a missing key is exit 2.
 */
const loadAccounts = (path: Option.Option<string>) =>
  Option.match(path, {
    onSome: (file) =>
      Accounts.load(file).pipe(
        Effect.catchTag("AccountsError", (error) =>
          fail(2, `weatherproof: invalid accounts file ${error.source}:\n${listIssues(error.issues)}`))
      ),
    onNone: () =>
      Accounts.fromEnv.pipe(
        Effect.catchTag("ConfigError", (error) => fail(2, ConfigError.isMissingDataOnly(error) ? missingKey : invalidConfig(error)))
      )
  })

/** `--concurrency N` fixes every account's limit at N, instead of the file's or the adaptive default. */
const withConcurrency = (accounts: ReadonlyArray<Accounts.Account>, concurrency: Option.Option<number>) =>
  Option.match(concurrency, {
    onNone: () => accounts,
    onSome: (n) => accounts.map((account): Accounts.Account => ({ ...account, concurrency: n }))
  })

const batch = Command.make(
  "batch",
  {
    input: Args.file({ name: "input.jsonl" }),
    output: Options.file("output").pipe(Options.withAlias("o"), Options.withDescription("results JSONL, resumed when it exists")),
    accounts: Options.file("accounts").pipe(
      Options.withDescription("a JSON file of accounts (default: one DeepSeek account from DEEPSEEK_API_KEY)"),
      Options.optional
    ),
    summary: Options.file("summary").pipe(
      Options.withDescription("also write the run's summary (counts, tokens, cost, per account) as JSON to this file"),
      Options.optional
    ),
    concurrency: Options.integer("concurrency").pipe(
      Options.withDescription("a fixed number of calls in flight per account (default: the accounts file's, else adaptive)"),
      Options.optional
    )
  },
  ({ accounts, concurrency, input, output, summary: summaryPath }) =>
    Effect.gen(function*() {
      if (Option.exists(concurrency, (n) => n < 1)) return yield* fail(2, "weatherproof: --concurrency must be at least 1")
      const pool = withConcurrency(yield* loadAccounts(accounts), concurrency)
      const summary = yield* withProgress((onProgress) => Batch.run({ input, output, onProgress })).pipe(
        Effect.provide(Batch.layerAccounts(pool, { ledger: CostLedger.layerConfig, router: Router.layerConfig })),
        Effect.catchTags({
          BatchError: (error) => fail(1, `weatherproof: ${error.message}`),
          PricingError: (error) => fail(2, `weatherproof: invalid pricing table ${error.source}:\n${listIssues(error.issues)}`),
          ConfigError: (error) => fail(2, invalidConfig(error))
        })
      )
      yield* Console.log(Batch.formatSummary(summary))
      if (Option.isSome(summaryPath)) {
        yield* Batch.writeSummary(summaryPath.value, summary).pipe(
          Effect.catchTag("BatchError", (error) => fail(1, `weatherproof: ${error.message}`))
        )
      }
      if (summary.failed > 0) {
        return yield* fail(1, `weatherproof: ${summary.failed} of ${summary.requests} lines failed (their error is in the output); ` +
            "the same command again retries them and skips the lines already answered")
      }
    })
).pipe(Command.withDescription("Run an OpenAI-format chat completions batch over DeepSeek (and fallback) accounts"))

const demo = Command.make(
  "demo",
  {
    requests: Options.integer("requests").pipe(
      Options.withDescription("how many requests to generate"),
      Options.withDefault(300)
    )
  },
  ({ requests }) =>
    Effect.gen(function*() {
      if (requests < 1) return yield* fail(2, "weatherproof: --requests must be at least 1")
      yield* Console.log(Demo.introduction(requests))
      const report = yield* withProgress((onProgress) => Demo.run({ requests, onProgress })).pipe(
        Effect.catchTag("BatchError", (error) => fail(1, `weatherproof: ${error.message}`))
      )
      yield* Console.log(Demo.formatReport(report))
      if (report.problems.length > 0) return yield* new ExitCode({ code: 1 })
    })
).pipe(Command.withDescription("Run a batch against an in-process DeepSeek simulator with faults on, and verify it"))

const weatherproof = Command.make("weatherproof").pipe(
  Command.withDescription("Resilient batch calls to DeepSeek and other OpenAI-compatible chat APIs"),
  Command.withSubcommands([batch, demo, serve])
)

/**
 * The command line parser and handlers; `argv` as in `process.argv` (node and script first).
 *
 * @since 0.1.0
 */
export const cli = Command.run(weatherproof, { name: "weatherproof", version: "0.1.0" })

/**
 * Runs the command line and returns its exit code; every failure is reported on stderr first.
 *
 * @since 0.1.0
 */
export const main = (argv: ReadonlyArray<string>): Effect.Effect<number, never, NodeContext.NodeContext> =>
  cli(argv).pipe(
    Effect.as(0),
    Effect.catchAll((error) =>
      error._tag === "ExitCode"
        ? Effect.succeed(error.code)
        : ValidationError.isValidationError(error)
        ? Effect.succeed(2) // @effect/cli has printed the problem and the usage
        : Effect.as(Console.error(`weatherproof: ${String(error)}`), 1)
    )
  )

const isEntryPoint = (): boolean => {
  const script = process.argv[1]
  return script !== undefined && realpathSync(script) === fileURLToPath(import.meta.url)
}

if (isEntryPoint()) {
  NodeRuntime.runMain(main(process.argv).pipe(Effect.provide(NodeContext.layer)), {
    teardown: (exit, onExit) =>
      Exit.isSuccess(exit) && typeof exit.value === "number" ? onExit(exit.value) : defaultTeardown(exit, onExit)
  })
}
