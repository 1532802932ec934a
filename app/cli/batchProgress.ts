/**
 * A batch run's progress: a terminal progress bar (cli-progress), drawn only on a TTY that can
 * move its cursor, outside CI (cli-progress is loaded only then); elsewhere a line now and then.
 */
import * as Clock from "effect/Clock"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { Progress } from "../../src/Batch.js"

const format = "{bar} {percentage}% | {value}/{total} lines | {succeeded} ok, {failed} failed, {skipped} skipped | {duration_formatted}"

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
 * bar is drawn (`drawsProgress`: a redirected stderr stays quiet).
 */
export const progressBar = (
  stream: NodeJS.WriteStream
): Effect.Effect<((progress: Progress) => Effect.Effect<void>) | undefined, never, Scope.Scope> =>
  !drawsProgress(stream, process.env)
    ? Effect.succeed(undefined)
    : Effect.gen(function*() {
      // A CommonJS module imported from ESM is its `module.exports` under `default`; the bundle
      // (scripts/bundleCli.ts) gives nothing else.
      const cliProgress = (yield* Effect.promise(() => import("cli-progress"))).default
      // `linewrap`: the bar is cut to the terminal's width by cli-progress, rather than the
      // terminal's wrapping turned off for the run, which would cut every warning written beside it.
      const options = { stream, format, hideCursor: true, linewrap: true, barsize: barWidth(stream.columns) }
      const bar = yield* Effect.acquireRelease(
        Effect.sync(() => new cliProgress.SingleBar(options, cliProgress.Presets.shades_classic)),
        (bar) => Effect.sync(() => bar.stop())
      )
      return (progress: Progress) =>
        Effect.sync(() => {
          const done = progress.succeeded + progress.failed + progress.skipped
          const payload = { succeeded: progress.succeeded, failed: progress.failed, skipped: progress.skipped }
          if (bar.isActive) bar.update(done, payload)
          else bar.start(progress.total, done, payload)
        })
    })

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

/** `progress` as a line: `1200 of 5000 lines done (1190 ok, 10 failed, 0 skipped) in 2m 5s`. */
export const progressLine = (progress: Progress, elapsedMillis: number): string =>
  `weatherproof: ${progress.succeeded + progress.failed + progress.skipped} of ${progress.total} lines done (${progress.succeeded} ok, ${progress.failed} failed, ${progress.skipped} skipped) in ${
    wholeSeconds(elapsedMillis)
  }`

/** `2m 5s`; `0s` under a second (`Duration.format` says `0`). */
const wholeSeconds = (millis: number): string => millis < 1000 ? "0s" : Duration.format(Duration.seconds(Math.floor(millis / 1000)))

/**
 * A progress reporter that writes the latest progress to stderr (the `Console`'s) as a line every
 * `every`, until the scope closes: a run left alone (its stderr a log file, a service manager's
 * journal) is seen to be alive and how far it got, even while no line ends (every call waiting
 * for an account, or in the upstream's queue).
 */
export const progressLines = (
  every: Duration.DurationInput
): Effect.Effect<(progress: Progress) => Effect.Effect<void>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const startedAt = yield* Clock.currentTimeMillis
    let latest: Progress | undefined
    const write = Effect.flatMap(
      Clock.currentTimeMillis,
      (now) => latest === undefined ? Effect.void : Console.error(progressLine(latest, now - startedAt))
    )
    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(Effect.sleep(every), write)))
    return (progress: Progress) =>
      Effect.sync(() => {
        latest = progress
      })
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
