/**
 * `weatherproof batch`: an OpenAI-format batch over the accounts of a file (or one DeepSeek account
 * from the environment), with its summary, and a clean stop on SIGINT / SIGTERM / SIGHUP.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { dirname, resolve } from "node:path"
import * as AccountPool from "../../src/AccountPool.js"
import type * as Accounts from "../../src/Accounts.js"
import * as Batch from "../../src/Batch.js"
import * as CostLedger from "../../src/CostLedger.js"
import * as Redis from "../../src/Redis.js"
import * as Router from "../../src/Router.js"
import * as Files from "../../src/internal/batchFiles.js"
import * as DurationText from "../../src/internal/durationText.js"
import { type AccountArgs, type CallArgs, flagsProblem, invalidConfig, listIssues, loadAccounts, poolOptions } from "./accounts.js"
import { defaultProgressEvery, withProgress } from "./batchProgress.js"
import { ExitCode, fail } from "./exit.js"
import { exitCodeOf, StopSignals } from "./signals.js"

/** The arguments of `weatherproof batch`, as parsed. */
export interface BatchArgs extends AccountArgs, CallArgs {
  readonly input: string
  readonly output: string
  readonly summary: Option.Option<string>
  readonly drainTimeout: Option.Option<Duration.Duration>
  readonly progressEvery: Option.Option<Duration.Duration>
}

/**
 * Batch work would rather wait than fail: each line waits for an account (and a retry for the
 * retry budget's room) up to `--max-wait`, and has twice an interactive call's retries (the
 * budget paces them), so a transient outage never leaves failed lines to rerun.
 */
const batchDefaults = { retries: 10, maxWait: AccountPool.defaults.maxWait, waitForBudget: true } as const

const durationFlag = (flag: string, duration: Option.Option<Duration.Duration>): ReadonlyArray<string> =>
  Option.match(duration, { onNone: () => [], onSome: (d) => [flag, DurationText.format(d)] })

const shellWord = (word: string): string => /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`

/** A Redis URL to print: one that carries credentials (or does not parse) is shown as `URL`, for the user to give again. */
const withoutPassword = (url: string): string =>
  URL.canParse(url) && new URL(url).username === "" && !Redis.carriesPassword(url) ? url : "URL"

/**
 * The command line that resumes the batch. An input read once (a pipe, a FIFO) is gone with the
 * run: the same input must be given again, which its path (a shell's `/dev/fd/63`) may not name.
 */
const resumeLine = (args: BatchArgs, inputKind: Files.InputKind): string =>
  `  ${commandLine(args)}${inputKind === "once" ? `\n  with the same input given again (${args.input} is not a file: it was read once)` : ""}`

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
    ...Option.match(args.redis, { onNone: () => [], onSome: (url) => ["--redis", withoutPassword(url)] }),
    ...Option.match(args.retries, { onNone: () => [], onSome: (n) => ["--retries", String(n)] }),
    ...durationFlag("--drain-timeout", args.drainTimeout),
    ...durationFlag("--progress-every", args.progressEvery),
    ...durationFlag("--max-wait", args.maxWait),
    ...durationFlag("--first-content-timeout", args.firstContentTimeout),
    ...durationFlag("--idle-timeout", args.idleTimeout),
    ...durationFlag("--timeout", args.timeout)
  ].map(shellWord).join(" ")

/** What to check when no account could be reached: where its base URL came from, and the network. */
const unreachableHint = (args: BatchArgs): string =>
  `Check ${Option.match(args.accounts, { onNone: () => "DEEPSEEK_BASE_URL", onSome: (file) => `the base URLs in ${file}` })} and the network`

/** Where the keys every account had rejected came from. */
const keysHint = (args: BatchArgs): string =>
  `Check ${Option.match(args.accounts, { onNone: () => "DEEPSEEK_API_KEY", onSome: (file) => `the keys in ${file}` })}`

/**
 * Runs the batch with the process's signals caught: the first stops it (no new line is sent, the
 * calls in flight drain), a second stops the drain. Returns the summary and the signal, if any.
 * The progress bar, on a terminal, is made first: the client's layers, built here, then write
 * their warnings beside it.
 */
const runCaught = (
  args: BatchArgs,
  accounts: ReadonlyArray<Accounts.Account>,
  redis: Layer.Layer<Redis.Redis, Redis.RedisUnavailable> | undefined
) =>
  withProgress(Option.getOrElse(args.progressEvery, () => defaultProgressEvery), (onProgress) =>
    Effect.scoped(Effect.gen(function*() {
      const signals = yield* Effect.flatMap(StopSignals, (service) => service.catch)
      const drainTimeout = Option.getOrElse(args.drainTimeout, () => Batch.defaultDrainTimeout)
      const stop = Effect.tap(signals.first, (signal) =>
        Console.error(
          `weatherproof: ${signal}: stopping; nothing more is sent, the requests on the wire get up to ${
            Duration.format(drainTimeout)
          } to finish (a second SIGINT or SIGTERM stops them at once)`
        ))
      const stopNow = Effect.tap(signals.again, () => Console.error("weatherproof: stopping now; the requests on the wire are dropped"))
      const summary = yield* Batch.run({ input: args.input, output: args.output, onProgress, stop, stopNow, drainTimeout })
      return { summary, signal: yield* signals.received }
    })).pipe(
      Effect.provide(Batch.layerAccounts(accounts, {
        pool: poolOptions(args, batchDefaults),
        ledger: CostLedger.layerConfig,
        router: Router.layerConfig,
        redis
      })),
      Effect.catchTags({
        BatchError: (error) => fail(1, `weatherproof: ${error.message}`),
        OutputLocked: (error) => fail(2, `weatherproof: ${error.message}; nothing was sent`),
        UpstreamUnreachable: (error) =>
          fail(2, `weatherproof: ${error.message}; nothing was sent. ${unreachableHint(args)}`),
        KeysRejected: (error) => fail(2, `weatherproof: ${error.message}; nothing was sent. ${keysHint(args)}`),
        OutOfBalance: (error) =>
          fail(2, `weatherproof: ${error.message}; nothing was sent. Top up ${error.accounts.length === 1 ? "its" : "one's"} balance, then run the same command again`),
        RedisUnavailable: (error) => fail(2, `weatherproof: ${error.message}; nothing was sent`),
        PricingError: (error) => fail(2, `weatherproof: invalid pricing table ${error.source}:\n${listIssues(error.issues)}`),
        ConfigError: invalidConfig
      })
    )
  )

/**
 * The file `target` names, links followed as the run writes through them, a dangling one too (a
 * `--summary` linked to the output not made yet is the output); the path as given (made
 * absolute) where its directory does not exist.
 */
const realPathOf = (fs: FileSystem.FileSystem, target: string) =>
  Files.resolveOutput(fs, target).pipe(Effect.orElseSucceed(() => resolve(target)))

/** What is at `path`, links followed; `undefined` when nothing is (or it cannot be told). */
const typeOf = (fs: FileSystem.FileSystem, path: string) =>
  fs.stat(path).pipe(Effect.map((info): FileSystem.File.Type | undefined => info.type), Effect.orElseSucceed(() => undefined))

/** How many names (hard links) the file at `path` has; 1 when it cannot be told. */
const namesOf = (fs: FileSystem.FileSystem, path: string) =>
  fs.stat(path).pipe(Effect.map((info) => Option.getOrElse(info.nlink, () => 1)), Effect.orElseSucceed(() => 1))

/** A file that is not a regular one, in words. */
const specialFiles: Partial<Record<FileSystem.File.Type, string>> = {
  BlockDevice: "a block device",
  CharacterDevice: "a character device",
  FIFO: "a named pipe",
  Socket: "a socket"
}

/** Whether the file system refuses this user the reading of `path` (another user's file of mode 0600). */
const deniedReading = (fs: FileSystem.FileSystem, path: string) =>
  fs.access(path, { readable: true }).pipe(Effect.match({
    onFailure: (error) => error._tag === "SystemError" && error.reason === "PermissionDenied",
    onSuccess: () => false
  }))

/**
 * The files named wrong, told before anything is sent: an input not there (or not to be looked
 * at) or in UTF-16, a directory given for a file, an output or summary that is no regular file
 * (each is replaced by a rename: a device would be replaced, a pipe would hold the run), an output
 * of several names (hard links, which the rename would part, and whose other names the lock does
 * not cover), an output with no directory to be made in or that is the input (whose lines
 * compaction would drop), and a `--summary` that could not be written when the run ends (no such
 * directory, no write permission, a file the run reads or locks), not found after the run was
 * paid for.
 */
const pathsProblem = (args: BatchArgs): Effect.Effect<string | undefined, never, FileSystem.FileSystem> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const named = [
      [args.input, `the input ${args.input}`],
      [args.output, `--output ${args.output}`],
      ...Option.toArray(Option.map(args.summary, (path) => [path, `--summary ${path}`] as const))
    ] as const
    for (const [index, [path, name]] of named.entries()) {
      const type = yield* typeOf(fs, path)
      if (type === "Directory") return `${name} is a directory, not a file`
      if (index === 0 && type === undefined) {
        const missing = yield* fs.stat(path).pipe(Effect.match({
          onFailure: (error) => error._tag === "SystemError" && error.reason === "NotFound",
          onSuccess: () => false
        }))
        return missing ? `${name} does not exist` : `${name} cannot be read`
      }
      if (index === 0 && (yield* deniedReading(fs, path))) return `${name} cannot be read by this user (permission denied)`
      if (index === 0 && type === "File" && (yield* Files.startsAsUtf16(fs, path))) return `${name} ${Files.utf16Input}`
      // The input (the first) may be a pipe or a terminal: it is read once.
      if (index > 0 && type !== undefined && type !== "File") {
        return `${name} is ${specialFiles[type] ?? "not a regular file"}, not a file: a batch replaces its files by a rename`
      }
      const names = index === 1 && type === "File" ? yield* namesOf(fs, path) : 1
      if (names > 1) {
        return `${name} has ${names} names (hard links): a batch replaces it by a rename, which would part them, and a run given ` +
          "another of its names would not see this run's lock; give a file of one name"
      }
    }
    const outputDirectory = yield* directoryProblem(fs, "--output", args.output)
    if (outputDirectory !== undefined) return outputDirectory
    const input = yield* realPathOf(fs, args.input)
    const output = yield* realPathOf(fs, args.output)
    if (output === input) return `the output file ${args.output} is the input file`
    if (Option.isNone(args.summary)) return undefined
    const path = args.summary.value
    const summary = yield* realPathOf(fs, path)
    if (summary === input) return `--summary ${path} is the input file`
    if (summary === output) return `--summary ${path} is the output file`
    if (summary === `${output}.lock`) return `--summary ${path} is the output's lock`
    if (Option.isSome(args.accounts) && summary === (yield* realPathOf(fs, args.accounts.value))) {
      return `--summary ${path} is the accounts file`
    }
    const pricing = yield* Config.option(Config.nonEmptyString("WEATHERPROOF_PRICING_FILE")).pipe(Effect.orElseSucceed(Option.none))
    if (Option.isSome(pricing) && summary === (yield* realPathOf(fs, pricing.value))) {
      return `--summary ${path} is the pricing table (WEATHERPROOF_PRICING_FILE)`
    }
    const writable = (target: string) => Effect.isSuccess(fs.access(target, { writable: true }))
    if (yield* fs.exists(path).pipe(Effect.orElseSucceed(() => false))) {
      if (!(yield* writable(path))) return `--summary ${path} cannot be written`
    } else {
      const missing = yield* directoryProblem(fs, "--summary", path)
      if (missing !== undefined) return missing
    }
    // The summary replaces its file by a rename in the file's directory (a link's target's).
    const directory = dirname(summary)
    return (yield* writable(directory)) ? undefined : `--summary ${path}: the directory ${directory} cannot be written`
  })

/**
 * A file to be made at `path`, named by `flag`, with no directory to be made in: its own, or the
 * one of the file a link at `path` points to (a dangling link).
 */
const directoryProblem = (fs: FileSystem.FileSystem, flag: string, path: string) =>
  Effect.matchEffect(Files.resolveOutput(fs, path), {
    onSuccess: () => Effect.succeed(undefined),
    onFailure: () =>
      Effect.gen(function*() {
        const target = yield* fs.readLink(path).pipe(Effect.map((target) => resolve(dirname(path), target)), Effect.orElseSucceed(() => path))
        const directory = dirname(target)
        const type = yield* typeOf(fs, directory)
        return type === undefined || type === "Directory"
          ? `${flag} ${path}: there is no directory ${directory}`
          : `${flag} ${path}: ${directory} is ${type === "File" ? "a file" : specialFiles[type] ?? "a file of another kind"}, not a directory`
      })
  })

/**
 * The `batch` command. Exit codes: 0 every line succeeded, 1 a line failed or the run could not go
 * on (the input or output could not be read or written, a read-only output; the summary is printed
 * when the run had started), 2 usage or configuration (an output that is the input, an output
 * locked by another run, no account's upstream reachable, key accepted or balance available at start), 130 / 143
 * stopped by SIGINT / SIGTERM, 129 by SIGHUP (the process then ends by the signal: `endWith`).
 */
export const batch = (args: BatchArgs) =>
  Effect.gen(function*() {
    const problem = flagsProblem(args) ?? (yield* pathsProblem(args))
    if (problem !== undefined) return yield* fail(2, `weatherproof: ${problem}; nothing was sent`)
    const inputKind = yield* Files.inputKind(yield* FileSystem.FileSystem, args.input).pipe(
      Effect.orElseSucceed((): Files.InputKind => "file")
    )
    const [accounts, redis] = yield* loadAccounts(args)
    const { aborted, signal, summary } = yield* runCaught(args, accounts, redis).pipe(
      Effect.map((ran) => ({ ...ran, aborted: undefined })),
      Effect.catchTag("BatchAborted", (aborted) => Effect.succeed({ summary: aborted.summary, signal: Option.none(), aborted }))
    )
    yield* Console.log(Batch.formatSummary(summary))
    // A summary file that cannot be written (the disk that filled the output, say) is told, and
    // the run's own ending (how to resume) still follows.
    const summaryWritten = yield* Option.match(args.summary, {
      onNone: () => Effect.succeed(true),
      onSome: (path) =>
        Batch.writeSummary(path, summary).pipe(
          Effect.as(true),
          Effect.catchTag("BatchError", (error) => Effect.as(Console.error(`weatherproof: ${error.message}`), false))
        )
    })
    if (aborted !== undefined) {
      const fixed = aborted.error.file === "output" ? "the output can be written" : "the input can be read"
      return yield* fail(1, `weatherproof: ${aborted.message}; once ${fixed} again, run the same command again to resume:\n${resumeLine(args, inputKind)}`)
    }
    if (summary.interrupted) {
      const written = summary.succeeded + summary.failed
      const stopped = `weatherproof: interrupted${Option.match(signal, { onNone: () => "", onSome: (s) => ` by ${s}` })}: ${written} ${
        written === 1 ? "line" : "lines"
      } written in this run`
      return yield* fail(
        Option.match(signal, { onNone: () => 1, onSome: exitCodeOf }),
        !summary.complete
          ? `${stopped}; to resume, run the same command again:\n${resumeLine(args, inputKind)}`
          : `${stopped}, and every line of the input has its result in the output: nothing is left to resume` +
            (summary.failed > 0 ? `\n${failedMessage(summary)}` : "")
      )
    }
    if (summary.failed > 0) return yield* fail(1, failedMessage(summary))
    // Not a failure, but seldom what was meant: an input a script left empty, say.
    if (summary.requests === 0) yield* Console.error(`weatherproof: the input ${args.input} holds no request line: nothing was sent`)
    if (!summaryWritten) return yield* new ExitCode({ code: 1 })
  })

/**
 * What to do about failed lines: a rerun retries them, but answers a line of bad input, or one
 * refused as an invalid request, only once it is fixed. Lines held back by a spent budget are
 * said first: a rerun has a budget of its own, so following the usual advice spends as much again.
 */
const failedMessage = (summary: Batch.Summary): string => {
  const failed = `weatherproof: ${summary.failed} of ${summary.requests} lines failed (their error is in the output)`
  const overBudget = summary.failures["BudgetExceeded"] ?? 0
  if (overBudget === 0) return failedAdvice(summary, failed)
  return `${failed}; ${heldBack(summary, overBudget)}: the run spent its budget (WEATHERPROOF_BUDGET_USD). A run has a budget of its own: ` +
    `running the same command again sends them and may spend as much again`
}

/** What the budget did to the `overBudget` failed lines: kept them from being sent, or a retry of theirs when the run sent any. */
const heldBack = (summary: Batch.Summary, overBudget: number): string => {
  const all = overBudget === summary.failed
  const were = overBudget === 1 ? "was" : "were"
  if (summary.spend.attempts === 0) return all ? "none of them was sent" : `${overBudget} of them ${were} not sent`
  return all ? "each was stopped before its answer" : `${overBudget} of them ${were} stopped before ${overBudget === 1 ? "its" : "their"} answer`
}

/** Lines that ran out of a deadline: which flags give them longer (their error names the deadline, not the flag). */
const timedOutAdvice = (summary: Batch.Summary): string => {
  const timedOut = summary.failures["DeadlineExceeded"] ?? 0
  return timedOut === 0
    ? ""
    : `; ${timedOut} of them timed out (DeadlineExceeded): if they need longer, raise --first-content-timeout, --idle-timeout or --timeout`
}

const failedAdvice = (summary: Batch.Summary, failed: string): string => {
  const rerun = "run the same command again: it sends them and skips the lines already answered"
  const toFix = Batch.inputFailures(summary)
  if (toFix === summary.failed) return `${failed}; their input is invalid: fix those lines, then ${rerun}`
  const refused = Batch.refusedFailures(summary)
  if (refused === summary.failed) return `${failed}; they were refused as invalid requests: fix those lines, then ${rerun}`
  const invalidInput = `${toFix} of them ${toFix === 1 ? "has" : "have"} invalid input`
  const refusedAsInvalid = `${refused} of them ${refused === 1 ? "was refused as an invalid request" : "were refused as invalid requests"}`
  // Every one to fix: a rerun before that meets the same failures.
  if (toFix + refused === summary.failed) return `${failed}; ${invalidInput} and ${refusedAsInvalid}: fix those lines, then ${rerun}`
  const fixFirst = toFix === 0 ? "" : `; ${invalidInput}, to fix first`
  const refusedAgain = refused === 0 ? "" : `; ${refusedAsInvalid}, which a rerun meets again until ${refused === 1 ? "it is" : "they are"} fixed`
  return `${failed}${fixFirst}${refusedAgain}${timedOutAdvice(summary)}; ${rerun}`
}
