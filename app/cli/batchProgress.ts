/**
 * A batch run's progress: a terminal progress bar (cli-progress), drawn only on a TTY that can
 * move its cursor, outside CI (cli-progress is loaded only then); elsewhere a line now and then.
 */
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import { AccountPool, type AccountStatus, describeState, type Service as Pool } from "../../src/AccountPool.js"
import { type Progress, TelemetryCounts } from "../../src/Batch.js"
import { currentMonotonicMillis } from "../../src/internal/monotonic.js"
import { counted } from "../../src/internal/text.js"
import type * as Telemetry from "../../src/Telemetry.js"

const counts = "{succeeded} ok, {failed} failed, {skipped} skipped | {duration_formatted}"

/** The bar's format: with no total (an input read once, a pipe), the lines done and no bar. */
const formatOf = (total: number | undefined): string =>
  total === undefined ? `{value} lines done | ${counts}` : `{bar} {percentage}% | {value}/{total} lines | ${counts}`

/**
 * The bar's width in a terminal of `columns` (80 where it tells none, as cli-progress reads it):
 * what the counts leave of it (they take some 60 columns in a run of thousands of lines), from 10
 * to cli-progress's 40; 20 in a terminal of 80.
 */
const barWidth = (columns: number): number => Math.max(10, Math.min(40, (columns > 0 ? columns : 80) - 60))

/**
 * Whether a bar is drawn on `stream`: a terminal, not `TERM=dumb` (no cursor control: each frame
 * would be a new line), and not in CI (`CI` set, as npm reads it), whose log keeps every frame of
 * a terminal it gives a job.
 */
export const drawsProgress = (stream: { readonly isTTY?: boolean | undefined }, env: NodeJS.ProcessEnv): boolean =>
  stream.isTTY === true && env["TERM"] !== "dumb" && ((env["CI"] ?? "") === "" || env["CI"] === "false")

/**
 * A progress reporter drawing on `stream`, stopped when the scope closes; `undefined` where no
 * bar is drawn (`drawsProgress` in `env`: a redirected stderr stays quiet).
 */
export const progressBar = (
  stream: NodeJS.WriteStream,
  env: NodeJS.ProcessEnv = process.env
): Effect.Effect<((progress: Progress) => Effect.Effect<void>) | undefined, never, Scope.Scope> =>
  !drawsProgress(stream, env)
    ? Effect.succeed(undefined)
    : Effect.gen(function*() {
      // A CommonJS module imported from ESM is its `module.exports` under `default`; the bundle
      // (scripts/bundleCli.ts) gives nothing else.
      const cliProgress = (yield* Effect.promise(() => import("cli-progress"))).default
      // `linewrap`: the bar is cut to the terminal's width by cli-progress, rather than the
      // terminal's wrapping turned off for the run, which would cut every warning written beside it.
      // Made at the first report, whose total (or none) sets its format.
      let bar: InstanceType<typeof cliProgress.SingleBar> | undefined
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          if (bar === undefined) return
          // cli-progress ends by putting the cursor back where the bar started, above the lines
          // written beside it since (warnings, a signal's notice), which the summary would then
          // overwrite: saved again here, on the bar's line, that is where it stays.
          stream.write(saveCursor)
          bar.stop()
        })
      )
      return (progress: Progress) =>
        Effect.sync(() => {
          const done = progress.succeeded + progress.failed + progress.skipped
          const payload = { succeeded: progress.succeeded, failed: progress.failed, skipped: progress.skipped }
          if (bar !== undefined) return bar.update(done, payload)
          const format = formatOf(progress.total)
          const options = { stream, format, hideCursor: true, linewrap: true, barsize: barWidth(stream.columns) }
          bar = new cliProgress.SingleBar(options, cliProgress.Presets.shades_classic)
          bar.start(progress.total ?? 0, done, payload)
        })
    })

/** The terminal's cursor saved, for cli-progress's restore as its bar stops (DECSC). */
const saveCursor = "\x1b7"

/** Back to the start of the terminal's line, erased. */
const eraseLine = "\r\x1b[2K"

/**
 * `console`, writing to `stream` (the bar's) from the start of a clean line: the bar's line is
 * erased first, so a warning is not glued to the bar, which draws itself again below it.
 */
const besideTheBar = (console: Console.Console, stream: NodeJS.WriteStream): Console.Console => {
  const error = (...args: ReadonlyArray<unknown>) => {
    stream.write(eraseLine)
    console.unsafe.error(...args)
  }
  return { ...console, error: (...args) => Effect.sync(() => error(...args)), unsafe: { ...console.unsafe, error } }
}

/** How often a run with no bar says how far it got (`--progress-every`). */
export const defaultProgressEvery: Duration.Duration = Duration.minutes(1)

/**
 * `progress` as a line: `1200 of 5000 lines done (1190 ok, 10 failed, 0 skipped) in 2m 5s`; with
 * no total (an input read once, a pipe), `1200 lines done (…)`.
 */
export const progressLine = (progress: Progress, elapsedMillis: number): string =>
  `weatherproof: ${progress.succeeded + progress.failed + progress.skipped}${
    progress.total === undefined ? "" : ` of ${progress.total}`
  } lines done (${progress.succeeded} ok, ${progress.failed} failed, ${progress.skipped} skipped) in ${elapsedText(elapsedMillis)}`

/** `2m 5s` in whole seconds; `500ms` under a second (`--progress-every 500ms`). */
const elapsedText = (millis: number): string =>
  millis < 1000 ? `${Math.round(millis)}ms` : Duration.format(Duration.seconds(Math.floor(millis / 1000)))

/**
 * What a failed attempt met, by its error's tag, as it reads after a count or after "all" (the
 * upstream's errors: our own gates' refusals are not counted); another tag is shown as it is.
 */
const failureLabels: Readonly<Record<string, string>> = {
  RateLimited: "rate limited (429)",
  InsufficientBalance: "out of balance (402)",
  KeyRejected: "with the key rejected (401)",
  InvalidRequest: "refused as invalid (400/422)",
  ServerError: "answered 5xx",
  UnexpectedStatus: "answered an unexpected status",
  TransportError: "could not connect or lost the connection",
  DeadlineExceeded: "timed out",
  StreamTruncated: "cut off mid-stream",
  InsufficientResource: "cut short by the server (insufficient_system_resource)",
  MalformedResponse: "got a malformed response",
  UpstreamError: "got an error event"
}

const failureLabel = (tag: string): string => failureLabels[tag] ?? tag

/** How many error tags a note names, the most frequent; the attempts of the others are summed as `other`. */
const shownTags = 3

/**
 * What the attempts failed with between two readings of the client's counts, said after a
 * progress line, `over` the time between them: while no line completes (every call meets a 429,
 * say), it is why. Empty when none failed.
 */
const failedAttemptsNote = (before: Telemetry.Counts, after: Telemetry.Counts, overMillis: number): string => {
  const failed = after.failedAttempts - before.failedAttempts
  if (failed <= 0) return ""
  const byTag = Object.entries(after.byTag)
    .map(([tag, count]) => [tag, count - (before.byTag[tag] ?? 0)] as const)
    .filter(([, count]) => count > 0)
    .sort(([, a], [, b]) => b - a)
  const attempts = `over the last ${elapsedText(overMillis)}, ${failed} ${failed === 1 ? "attempt" : "attempts"} failed`
  const [top] = byTag
  if (top !== undefined && top[1] === failed) return `; ${attempts}, ${failed === 1 ? "" : "all "}${failureLabel(top[0])}`
  const shown = byTag.slice(0, shownTags)
  const other = failed - shown.reduce((sum, [, count]) => sum + count, 0)
  const parts = [...shown.map(([tag, count]) => `${count} ${failureLabel(tag)}`), ...(other > 0 ? [`${other} other`] : [])]
  return `; ${attempts}: ${parts.join(", ")}`
}

/** The states in which an account cannot serve; in another it serves, or is about to. */
const outOfService: ReadonlySet<AccountStatus["state"]> = new Set(["open", "out_of_balance", "no_keys", "unreachable"])

/** What a progress line says of the pool: `; 40 requests in flight`, and `; no account can serve: …`. */
interface PoolNotes {
  readonly inFlight: string
  readonly stalled: string
}

const noPoolNotes: PoolNotes = { inFlight: "", stalled: "" }

/**
 * `pool`'s notes: its requests in flight (sent and not answered yet, or holding a permit to be),
 * so a run whose calls all wait in the upstream's queue is seen to have work under way; and while
 * no account can serve, each account's reason (every call waits for one to come back, and no
 * attempt is made, so none fails). Each empty when there is nothing to say.
 */
const poolNotes = (pool: Pool): Effect.Effect<PoolNotes> =>
  Effect.map(pool.snapshot, (accounts) => {
    const inFlight = accounts.reduce((sum, account) => sum + account.inFlight, 0)
    const stalled = accounts.length > 0 && accounts.every((account) => outOfService.has(account.state))
    return {
      inFlight: inFlight === 0 ? "" : `; ${counted(inFlight, "request", "requests")} in flight`,
      stalled: stalled ? `; no account can serve: ${accounts.map((account) => `${account.name} ${describeState(account)}`).join(", ")}` : ""
    }
  })

/** The counts of a client that has not failed yet. */
const noFailures: Telemetry.Counts = { failedAttempts: 0, rateLimited: 0, retries: 0, byTag: {} }

/**
 * A progress reporter that writes the latest progress to stderr (the `Console`'s) as a line every
 * `every`, until the scope closes: a run left alone (its stderr a log file, a service manager's
 * journal) is seen to be alive and how far it got, even while no line ends (every call waiting
 * for an account, or in the upstream's queue), how many requests its pool has in flight, what its
 * attempts failed with meanwhile, and whether no account of its pool can serve.
 *
 * The reporter is made before the run's client (see `withProgress`): it takes the client's
 * `Batch.TelemetryCounts` and `AccountPool` from the run's first report, and reads them at each
 * line, since no report may come for minutes. The counts start at zero with the client, which a
 * run builds for itself.
 */
export const progressLines = (
  every: Duration.DurationInput
): Effect.Effect<(progress: Progress) => Effect.Effect<void>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const startedAt = yield* currentMonotonicMillis
    let latest: Progress | undefined
    let readCounts = Effect.succeed(noFailures)
    let readPool = Effect.succeed(noPoolNotes)
    // The run's services are the same at every report: read once, not per line.
    let runRead = false
    const readRun = Effect.map(
      Effect.all([Effect.serviceOption(TelemetryCounts), Effect.serviceOption(AccountPool)]),
      ([counts, pool]) => {
        runRead = true
        readCounts = Option.getOrElse(counts, () => readCounts)
        readPool = Option.match(pool, { onNone: () => readPool, onSome: poolNotes })
      }
    )
    let previous = { at: startedAt, counts: noFailures }
    const write = Effect.gen(function*() {
      if (latest === undefined) return
      const now = yield* currentMonotonicMillis
      const current = yield* readCounts
      const failed = failedAttemptsNote(previous.counts, current, now - previous.at)
      const notes = yield* readPool
      yield* Console.error(progressLine(latest, now - startedAt) + notes.inFlight + failed + notes.stalled)
      previous = { at: now, counts: current }
    })
    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(Effect.sleep(every), write)))
    const report = (progress: Progress) =>
      Effect.sync(() => {
        latest = progress
      })
    return (progress: Progress) => runRead ? report(progress) : Effect.zipRight(readRun, report(progress))
  })

/**
 * Runs `f` with a progress bar on stderr when it is a terminal, and what `f` writes to stderr (its
 * logs included) on lines of its own; elsewhere with a progress line every `every`. `f`'s scope
 * closes before the bar's.
 */
export const withProgress = <A, E, R>(
  every: Duration.DurationInput,
  f: (onProgress: ((progress: Progress) => Effect.Effect<void>) | undefined) => Effect.Effect<A, E, R>
): Effect.Effect<A, E, Exclude<R, Scope.Scope>> =>
  Effect.scoped(Effect.flatMap(progressBar(process.stderr), (onProgress) =>
    onProgress === undefined
      ? Effect.flatMap(progressLines(every), f)
      : Console.consoleWith((console) => Console.withConsole(f(onProgress), besideTheBar(console, process.stderr)))))
