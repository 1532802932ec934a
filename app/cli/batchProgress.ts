/**
 * A terminal progress bar for a batch run (cli-progress), drawn only on a TTY.
 */
import * as cliProgress from "cli-progress"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { Progress } from "../Batch.js"

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
    : Effect.map(
      Effect.acquireRelease(
        Effect.sync(() => new cliProgress.SingleBar({ stream, format, hideCursor: true }, cliProgress.Presets.shades_classic)),
        (bar) => Effect.sync(() => bar.stop())
      ),
      (bar) => (progress: Progress) =>
        Effect.sync(() => {
          const done = progress.succeeded + progress.failed + progress.skipped
          const payload = { succeeded: progress.succeeded, failed: progress.failed, skipped: progress.skipped }
          if (bar.isActive) bar.update(done, payload)
          else bar.start(progress.total, done, payload)
        })
    )
