/**
 * The files of a batch: the input read as a stream of lines, and the output compacted for resume
 * then appended to by a single writer.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import type { PlatformError } from "@effect/platform/Error"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import { classifyExisting } from "./batchLines.js"

/** A non-blank line and its 1-based line number. */
export interface NumberedLine {
  readonly text: string
  readonly lineNumber: number
}

/** The non-blank lines of a file, streamed (the file is never held whole in memory). */
export const lines = (fs: FileSystem.FileSystem, path: string): Stream.Stream<NumberedLine, PlatformError> =>
  fs.stream(path).pipe(
    Stream.decodeText(),
    Stream.splitLines,
    Stream.zipWithIndex,
    Stream.filterMap(([text, index]) =>
      text.trim().length === 0 ? Option.none() : Option.some({ text, lineNumber: index + 1 })
    )
  )

/** How many non-blank lines a file has (a first pass, for a progress bar's total). */
export const countLines = (fs: FileSystem.FileSystem, path: string): Effect.Effect<number, PlatformError> =>
  Stream.runCount(lines(fs, path))

const encoder = new TextEncoder()

/** Writes text in one call; not interrupted halfway, so no line is torn by an interrupt. */
export const writeText = (file: FileSystem.File, text: string): Effect.Effect<void, PlatformError> =>
  text.length === 0 ? Effect.void : Effect.uninterruptible(file.writeAll(encoder.encode(text)))

/** An existing output file holds a line that no batch run wrote. */
export interface ForeignLine {
  readonly _tag: "ForeignLine"
  readonly lineNumber: number
}

/**
 * Rewrites an existing output file so it holds only its successful lines, one per custom id, and
 * returns those ids. Failed lines go (they are retried), and so does an unreadable last line: the
 * line a crash tore. An unreadable line before the last means the file is not batch output, and
 * it is left untouched. The rewrite goes through a temporary file renamed over the original, so a
 * crash during it loses nothing.
 */
export const compactOutput = (
  fs: FileSystem.FileSystem,
  path: string,
  temporaryPath: string
): Effect.Effect<ReadonlySet<string>, PlatformError | ForeignLine> =>
  Effect.gen(function*() {
    if (!(yield* fs.exists(path))) return new Set<string>()
    const succeeded = new Set<string>()
    const keep = ([line, next]: readonly [NumberedLine, Option.Option<NumberedLine>]) => {
      const result = classifyExisting(line.text)
      switch (result._tag) {
        case "Succeeded":
          if (succeeded.has(result.customId)) return Effect.succeed(Option.none<string>())
          succeeded.add(result.customId)
          return Effect.succeed(Option.some(`${line.text}\n`))
        case "Failed":
          return Effect.succeed(Option.none<string>())
        case "Unrecognized":
          return Option.isNone(next)
            ? Effect.succeed(Option.none<string>())
            : Effect.fail<ForeignLine>({ _tag: "ForeignLine", lineNumber: line.lineNumber })
      }
    }
    yield* Effect.scoped(
      Effect.gen(function*() {
        const file = yield* fs.open(temporaryPath, { flag: "w" })
        yield* lines(fs, path).pipe(
          Stream.zipWithNext,
          Stream.mapEffect(keep),
          Stream.filterMap((kept) => kept),
          Stream.mapChunks((texts) => Chunk.of(Chunk.join(texts, ""))),
          Stream.runForEach((text) => writeText(file, text))
        )
        yield* file.sync
      })
    ).pipe(Effect.onError(() => Effect.ignore(fs.remove(temporaryPath))))
    yield* fs.rename(temporaryPath, path)
    return succeeded
  })
