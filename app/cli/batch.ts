/**
 * `weatherproof batch`: an OpenAI-format batch over the accounts of a file (or one DeepSeek account
 * from the environment), with its summary, and a clean stop on SIGINT / SIGTERM.
 */
import * as ConfigError from "effect/ConfigError"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as AccountPool from "../../src/AccountPool.js"
import * as Accounts from "../../src/Accounts.js"
import { scrubSecrets } from "../../src/ApiError.js"
import * as Batch from "../../src/Batch.js"
import * as CostLedger from "../../src/CostLedger.js"
import * as Router from "../../src/Router.js"
import { withProgress } from "./batchProgress.js"
import { fail } from "./exit.js"
import { exitCodeOf, StopSignals } from "./signals.js"

/** The arguments of `weatherproof batch`, as parsed. */
export interface BatchArgs {
  readonly input: string
  readonly output: string
  readonly accounts: Option.Option<string>
  readonly summary: Option.Option<string>
  readonly concurrency: Option.Option<number>
  readonly retries: Option.Option<number>
  readonly drainTimeout: Option.Option<Duration.Duration>
  readonly maxWait: Option.Option<Duration.Duration>
  readonly firstContentTimeout: Option.Option<Duration.Duration>
  readonly idleTimeout: Option.Option<Duration.Duration>
  readonly timeout: Option.Option<Duration.Duration>
}

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

/** Retries of a batch line by default: twice an interactive call's, paced by the retry budget. */
const batchRetries = 10

const durationFlag = (flag: string, duration: Option.Option<Duration.Duration>): ReadonlyArray<string> =>
  Option.match(duration, { onNone: () => [], onSome: (d) => [flag, `${Duration.toMillis(d)}ms`] })

/**
 * The client's options for batch work, which would rather wait than fail: each line waits for an
 * account (and a retry for the retry budget's room) up to `--max-wait`, and has more retries
 * than an interactive call (the budget paces them), so a transient outage never leaves failed
 * lines to rerun. The deadline flags set each attempt's deadlines.
 */
const poolOptions = (args: BatchArgs): AccountPool.PoolOptions => ({
  maxWait: Option.getOrElse(args.maxWait, () => AccountPool.defaults.maxWait),
  budgetWait: Option.getOrElse(args.maxWait, () => AccountPool.defaults.maxWait),
  retry: { maxRetries: Option.getOrElse(args.retries, () => batchRetries) },
  deadlines: {
    ...Option.match(args.firstContentTimeout, { onNone: () => ({}), onSome: (firstContent) => ({ firstContent }) }),
    ...Option.match(args.idleTimeout, { onNone: () => ({}), onSome: (idle) => ({ idle }) }),
    ...Option.match(args.timeout, { onNone: () => ({}), onSome: (total) => ({ total }) })
  }
})

const shellWord = (word: string): string => /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`

/** The command line that runs the same batch again, which resumes it. */
export const commandLine = (args: BatchArgs): string =>
  [
    "weatherproof",
    "batch",
    args.input,
    "--output",
    args.output,
    ...Option.match(args.accounts, { onNone: () => [], onSome: (path) => ["--accounts", path] }),
    ...Option.match(args.summary, { onNone: () => [], onSome: (path) => ["--summary", path] }),
    ...Option.match(args.concurrency, { onNone: () => [], onSome: (n) => ["--concurrency", String(n)] }),
    ...Option.match(args.retries, { onNone: () => [], onSome: (n) => ["--retries", String(n)] }),
    ...durationFlag("--drain-timeout", args.drainTimeout),
    ...durationFlag("--max-wait", args.maxWait),
    ...durationFlag("--first-content-timeout", args.firstContentTimeout),
    ...durationFlag("--idle-timeout", args.idleTimeout),
    ...durationFlag("--timeout", args.timeout)
  ].map(shellWord).join(" ")

/**
 * Runs the batch with the process's signals caught: the first stops it (no new line is sent, the
 * calls in flight drain), a second stops the drain. Returns the summary and the signal, if any.
 */
const runCaught = (args: BatchArgs, accounts: ReadonlyArray<Accounts.Account>) =>
  Effect.scoped(Effect.gen(function*() {
    const signals = yield* Effect.flatMap(StopSignals, (service) => service.catch)
    const drainTimeout = Option.getOrElse(args.drainTimeout, () => Batch.defaultDrainTimeout)
    const stop = Effect.tap(signals.first, (signal) =>
      Console.error(
        `weatherproof: ${signal}: stopping; no new line is sent, the calls in flight get up to ${
          Duration.format(drainTimeout)
        } to finish (a second signal stops them at once)`
      ))
    const stopNow = Effect.tap(signals.again, () => Console.error("weatherproof: stopping now; the calls in flight are dropped"))
    const summary = yield* withProgress((onProgress) =>
      Batch.run({ input: args.input, output: args.output, onProgress, stop, stopNow, drainTimeout })
    )
    return { summary, signal: yield* signals.received }
  })).pipe(
    Effect.provide(Batch.layerAccounts(accounts, { pool: poolOptions(args), ledger: CostLedger.layerConfig, router: Router.layerConfig })),
    Effect.catchTags({
      BatchError: (error) => fail(1, `weatherproof: ${error.message}`),
      OutputLocked: (error) => fail(2, `weatherproof: ${error.message}; nothing was sent`),
      PricingError: (error) => fail(2, `weatherproof: invalid pricing table ${error.source}:\n${listIssues(error.issues)}`),
      ConfigError: (error) => fail(2, invalidConfig(error))
    })
  )

/**
 * The `batch` command. Exit codes: 0 every line succeeded, 1 a line failed or the run could not go
 * on (the input or output could not be read or written, a read-only output), 2 usage or
 * configuration (and an output locked by another run), 130 / 143 stopped by SIGINT / SIGTERM.
 */
export const batch = (args: BatchArgs) =>
  Effect.gen(function*() {
    if (Option.exists(args.concurrency, (n) => n < 1)) return yield* fail(2, "weatherproof: --concurrency must be at least 1")
    if (Option.exists(args.retries, (n) => n < 0)) return yield* fail(2, "weatherproof: --retries must be at least 0")
    const accounts = withConcurrency(yield* loadAccounts(args.accounts), args.concurrency)
    const { signal, summary } = yield* runCaught(args, accounts)
    yield* Console.log(Batch.formatSummary(summary))
    if (Option.isSome(args.summary)) {
      yield* Batch.writeSummary(args.summary.value, summary).pipe(
        Effect.catchTag("BatchError", (error) => fail(1, `weatherproof: ${error.message}`))
      )
    }
    if (summary.interrupted) {
      const written = summary.succeeded + summary.failed
      return yield* fail(
        Option.match(signal, { onNone: () => 1, onSome: exitCodeOf }),
        `weatherproof: interrupted${Option.match(signal, { onNone: () => "", onSome: (s) => ` by ${s}` })}: ${written} ${
          written === 1 ? "line" : "lines"
        } written in this run; to resume, run the same command again:\n  ${commandLine(args)}`
      )
    }
    if (summary.failed > 0) {
      return yield* fail(1, `weatherproof: ${summary.failed} of ${summary.requests} lines failed (their error is in the output); ` +
          "the same command again retries them and skips the lines already answered")
    }
  })
