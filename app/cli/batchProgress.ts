/**
 * A terminal progress bar for a batch run (cli-progress), drawn only on a TTY: cli-progress is
 * loaded only then.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { Progress } from "../../src/Batch.js"

const format = "{bar} {percentage}% | {value}/{total} lines | {succeeded} ok, {failed} failed, {skipped} skipped | {duration_formatted}"

/**
 * A progress reporter drawing on `stream`, stopped when the scope closes; `undefined` when
 * `stream` is not a TTY (a redirected stderr stays quiet).
 */
export const progressBar = (
  stream: NodeJS.WriteStream
): Effect.Effect<((progress: Progress) => Effect.Effect<void>) | undefined, never, Scope.Scope> =>
  stream.isTTY !== true
    ? Effect.succeed(undefined)
    : Effect.gen(function*() {
      // A CommonJS module imported from ESM is its `module.exports` under `default`; the bundle
      // (scripts/bundleCli.ts) gives nothing else.
      const cliProgress = (yield* Effect.promise(() => import("cli-progress"))).default
      const bar = yield* Effect.acquireRelease(
        Effect.sync(() => new cliProgress.SingleBar({ stream, format, hideCursor: true }, cliProgress.Presets.shades_classic)),
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

/** Runs `f` with a progress bar on stderr when it is a terminal; `f`'s scope closes before the bar's. */
export const withProgress = <A, E, R>(
  f: (onProgress: ((progress: Progress) => Effect.Effect<void>) | undefined) => Effect.Effect<A, E, R>
): Effect.Effect<A, E, Exclude<R, Scope.Scope>> => Effect.scoped(Effect.flatMap(progressBar(process.stderr), f))
