/**
 * A batch job over the resilient client: a JSONL file of requests in the OpenAI Batch API format
 * in, a JSONL file of results out, one result line per request line.
 *
 * - Input lines are `{"custom_id","method":"POST","url":"/v1/chat/completions","body":{…}}`
 *   (`/chat/completions` is accepted too). The file is streamed; blank lines are ignored.
 * - A line that cannot be sent (bad JSON, no `custom_id`, a bad body, another method or url, a
 *   `custom_id` already used by an earlier line) gets an error result line; it never stops the
 *   run. A line without a `custom_id` is named `line-<n>`.
 * - Results are appended as they arrive, by one writer, so a crash loses nothing already
 *   answered. A rerun with the same output resumes: the output is first compacted to its
 *   successful lines (failed lines and a line torn by a crash go), succeeded ids are skipped and
 *   everything else is sent again, so the output keeps exactly one line per request. (Successful
 *   lines of ids no longer in the input are kept.) Only the ids seen are held in memory.
 *
 * @since 0.1.0
 */
import type { PlatformError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"
import type { NoUsableKey } from "./ApiError.js"
import type { ChatCompletionRequest, Usage } from "./ChatSchema.js"
import { Resilient } from "./Resilient.js"
import type { CallOptions } from "./Resilient.js"
import * as Telemetry from "./Telemetry.js"
import { compactOutput, countLines, lines, writeText } from "./internal/batchFiles.js"
import type { ForeignLine } from "./internal/batchFiles.js"
import * as Lines from "./internal/batchLines.js"

/**
 * The run itself could not go on: the input could not be read, or the output could not be
 * written (or is not a batch output file, or is the input). A problem with one line is never a
 * `BatchError`: it becomes that line's error result.
 *
 * @since 0.1.0
 * @category errors
 */
export class BatchError extends Data.TaggedError("BatchError")<{
  readonly file: "input" | "output"
  readonly path: string
  readonly message: string
}> {}

/**
 * Token totals of the requests answered in this run.
 *
 * @since 0.1.0
 * @category models
 */
export interface Tokens {
  readonly prompt: number
  readonly completion: number
  /** Prompt tokens served from DeepSeek's context cache. */
  readonly cacheHit: number
  /** Completion tokens spent on reasoning (included in `completion`). */
  readonly reasoning: number
}

/**
 * Where a run stands; `succeeded + failed + skipped` lines are done.
 *
 * @since 0.1.0
 * @category models
 */
export interface Progress {
  /** Request lines in the input. */
  readonly total: number
  readonly succeeded: number
  readonly failed: number
  readonly skipped: number
}

/**
 * What a run did. `requests = succeeded + failed + skipped`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Summary {
  /** Request lines read from the input (blank lines are not requests). */
  readonly requests: number
  /** Lines answered in this run. */
  readonly succeeded: number
  /** Lines that got an error result in this run. */
  readonly failed: number
  /** Lines already answered by an earlier run into the same output, not sent again. */
  readonly skipped: number
  /** Failed lines by `error.code` (an error tag such as `RateLimited`, or `invalid_line` …). */
  readonly failures: Readonly<Record<string, number>>
  /** 429 answers met on the way (retried or not). */
  readonly rateLimited: number
  /** Retries the resilient client scheduled. */
  readonly retries: number
  /** Attempts that failed, retried or not. */
  readonly failedAttempts: number
  readonly tokens: Tokens
  /** Measured with Effect's `Clock`. */
  readonly elapsed: Duration.Duration
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Path of the input JSONL. */
  readonly input: string
  /** Path of the output JSONL; appended to, and resumed from when it exists. */
  readonly output: string
  /**
   * Lines handled at once. Default 256: generous on purpose, since the resilient client's
   * concurrency limiter bounds the calls actually in flight; this only bounds the read-ahead.
   */
  readonly concurrency?: number | undefined
  /** Options of every call. Default `{ priority: "batch" }`. */
  readonly callOptions?: CallOptions | undefined
  /**
   * Called once before the first line and after every line. When given, the input is read once
   * more beforehand to count its lines.
   */
  readonly onProgress?: ((progress: Progress) => Effect.Effect<void>) | undefined
}

/**
 * Reads the resilient client's telemetry counts (see `Telemetry.makeCounters`), so a run can
 * report the 429s and retries it caused.
 *
 * @since 0.1.0
 * @category tags
 */
export class TelemetryCounts extends Context.Tag("weatherproof/Batch/TelemetryCounts")<
  TelemetryCounts,
  Effect.Effect<Telemetry.Counts>
>() {}

/**
 * A counting `Telemetry` for the resilient client and the `TelemetryCounts` that reads it:
 * `Resilient.layerDefault(…).pipe(Layer.provideMerge(Batch.layerTelemetryCounts))`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerTelemetryCounts: Layer.Layer<TelemetryCounts | Telemetry.Telemetry> = Layer.effectContext(
  Effect.map(Telemetry.makeCounters, ({ counts, telemetry }) =>
    Context.make(Telemetry.Telemetry, telemetry).pipe(Context.add(TelemetryCounts, counts)))
)

/** @since 0.1.0 */
export const defaultConcurrency = 256

/** What one input line asks the run to do, decided in input order. */
type Work =
  | { readonly _tag: "Skip" }
  | { readonly _tag: "Reject"; readonly customId: string; readonly error: Lines.LineError }
  | { readonly _tag: "Send"; readonly customId: string; readonly body: ChatCompletionRequest }

/** What became of one line. */
type Outcome =
  | { readonly _tag: "Skipped" }
  | { readonly _tag: "Written"; readonly line: Lines.ResultLine; readonly usage: Usage | undefined }

interface Tally {
  readonly succeeded: number
  readonly failed: number
  readonly skipped: number
  readonly failures: Readonly<Record<string, number>>
  readonly tokens: Tokens
}

const emptyTally: Tally = {
  succeeded: 0,
  failed: 0,
  skipped: 0,
  failures: {},
  tokens: { prompt: 0, completion: 0, cacheHit: 0, reasoning: 0 }
}

const addUsage = (tokens: Tokens, usage: Usage | undefined): Tokens =>
  usage === undefined ? tokens : {
    prompt: tokens.prompt + usage.prompt_tokens,
    completion: tokens.completion + usage.completion_tokens,
    cacheHit: tokens.cacheHit + (usage.prompt_cache_hit_tokens ?? usage.prompt_tokens_details?.cached_tokens ?? 0),
    reasoning: tokens.reasoning + (usage.completion_tokens_details?.reasoning_tokens ?? 0)
  }

const record = (tally: Tally, outcome: Outcome): Tally => {
  if (outcome._tag === "Skipped") return { ...tally, skipped: tally.skipped + 1 }
  const error = outcome.line.error
  return error === null
    ? { ...tally, succeeded: tally.succeeded + 1, tokens: addUsage(tally.tokens, outcome.usage) }
    : { ...tally, failed: tally.failed + 1, failures: { ...tally.failures, [error.code]: (tally.failures[error.code] ?? 0) + 1 } }
}

const written = (line: Lines.ResultLine, usage?: Usage): Outcome => ({ _tag: "Written", line, usage })

const inputError = (path: string) => (error: { readonly message: string }) =>
  new BatchError({ file: "input", path, message: `cannot read input: ${error.message}` })

const outputError = (path: string) => (error: { readonly message: string }) =>
  new BatchError({ file: "output", path, message: `cannot write output: ${error.message}` })

/** Fails unless the input is readable and is not also the output (compaction would eat it). */
const checkPaths = (fs: FileSystem.FileSystem, input: string, output: string) =>
  Effect.gen(function*() {
    yield* fs.access(input, { readable: true }).pipe(Effect.mapError(inputError(input)))
    if (!(yield* fs.exists(output).pipe(Effect.mapError(outputError(output))))) return
    const [inputReal, outputReal] = yield* Effect.all([fs.realPath(input), fs.realPath(output)]).pipe(
      Effect.mapError(outputError(output))
    )
    if (inputReal === outputReal) {
      return yield* new BatchError({ file: "output", path: output, message: `the output file ${output} is the input file` })
    }
  })

const compactionError = (output: string) => (error: PlatformError | ForeignLine): BatchError =>
  error._tag === "ForeignLine"
    ? new BatchError({
      file: "output",
      path: output,
      message: `line ${error.lineNumber} of ${output} is not a batch result; refusing to rewrite the file`
    })
    : outputError(output)(error)

/**
 * Decides, in input order, what each line asks for. The first line with a `custom_id` owns it:
 * a later one is a duplicate; an owned id answered by an earlier run is skipped.
 */
const decider = (alreadyAnswered: ReadonlySet<string>) => {
  const owners = new Map<string, number>()
  return (item: Lines.InputItem): Work => {
    if (item._tag === "Request" || item.hasOwnId) {
      const owner = owners.get(item.customId)
      if (owner !== undefined) {
        return {
          _tag: "Reject",
          customId: item.customId,
          error: { code: Lines.duplicateCode, message: `custom_id ${JSON.stringify(item.customId)} is already used by line ${owner}` }
        }
      }
      owners.set(item.customId, item.lineNumber)
      if (alreadyAnswered.has(item.customId)) return { _tag: "Skip" }
    }
    return item._tag === "Invalid"
      ? { _tag: "Reject", customId: item.customId, error: { code: Lines.invalidLineCode, message: item.message } }
      : { _tag: "Send", customId: item.customId, body: item.body }
  }
}

/**
 * Performs one line's work. After a `NoUsableKey` every later request fails with it unsent: no
 * key will come back during the run.
 */
const performer = (resilient: Resilient["Type"], callOptions: CallOptions) =>
  Effect.map(Ref.make(Option.none<NoUsableKey>()), (noUsableKey) => {
    const send = (id: string, customId: string, body: ChatCompletionRequest): Effect.Effect<Outcome> =>
      Effect.flatMap(Ref.get(noUsableKey), (latched) =>
        Option.isSome(latched)
          ? Effect.succeed(written(Lines.failed(id, customId, latched.value)))
          : resilient.create(body, callOptions).pipe(
            Effect.matchEffect({
              onSuccess: (completion) =>
                Effect.succeed(written(Lines.succeeded(id, customId, completion), completion.usage)),
              onFailure: (error) =>
                Effect.as(
                  error._tag === "NoUsableKey" ? Ref.set(noUsableKey, Option.some(error)) : Effect.void,
                  written(Lines.failed(id, customId, error))
                )
            })
          ))
    return (work: Work): Effect.Effect<Outcome> =>
      work._tag === "Skip"
        ? Effect.succeed({ _tag: "Skipped" })
        : Effect.flatMap(Lines.makeRequestId, (id) =>
          work._tag === "Reject"
            ? Effect.succeed(written(Lines.rejected(id, work.customId, work.error)))
            : send(id, work.customId, work.body))
  })

const summarize = (tally: Tally, before: Telemetry.Counts, after: Telemetry.Counts, elapsed: Duration.Duration): Summary => ({
  requests: tally.succeeded + tally.failed + tally.skipped,
  succeeded: tally.succeeded,
  failed: tally.failed,
  skipped: tally.skipped,
  failures: tally.failures,
  rateLimited: after.rateLimited - before.rateLimited,
  retries: after.retries - before.retries,
  failedAttempts: after.failedAttempts - before.failedAttempts,
  tokens: tally.tokens,
  elapsed
})

/**
 * Runs a batch: reads `input`, sends every new request through `Resilient` and appends one result
 * line per request line to `output`, resuming from what `output` already holds.
 *
 * Result lines: `{"id":"batch_req_…","custom_id",…,"response":{"status_code":200,"request_id",
 * "body":<completion>},"error":null}` for an answer; for a failure `error` is
 * `{"code":<error tag or invalid_line / duplicate_custom_id>,"message"}` and `response` is
 * `{"status_code","request_id":null,"body":{"error":{"message","type","code"}}}` when the
 * failure had an HTTP status, else `null`. Once a call fails with `NoUsableKey`, the remaining
 * requests fail with it without being sent.
 *
 * @since 0.1.0
 * @category constructors
 */
export const run = (
  options: Options
): Effect.Effect<Summary, BatchError, Resilient | TelemetryCounts | FileSystem.FileSystem> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const readCounts = yield* TelemetryCounts
    const { input, output } = options

    yield* checkPaths(fs, input, output)
    const total = options.onProgress === undefined
      ? 0
      : yield* countLines(fs, input).pipe(Effect.mapError(inputError(input)))
    const alreadyAnswered = yield* compactOutput(fs, output, `${output}.compacting`).pipe(
      Effect.mapError(compactionError(output))
    )

    const countsBefore = yield* readCounts
    const startedAt = yield* Clock.currentTimeMillis
    const decide = decider(alreadyAnswered)
    const perform = yield* performer(yield* Resilient, options.callOptions ?? { priority: "batch" })
    const tally = yield* Ref.make(emptyTally)
    const report = (t: Tally) =>
      options.onProgress?.({ total, succeeded: t.succeeded, failed: t.failed, skipped: t.skipped }) ?? Effect.void

    yield* report(emptyTally)
    yield* Effect.scoped(
      Effect.gen(function*() {
        const file = yield* fs.open(output, { flag: "a" }).pipe(Effect.mapError(outputError(output)))
        const writeOutcome = (outcome: Outcome) =>
          Effect.gen(function*() {
            if (outcome._tag === "Written") {
              yield* writeText(file, Lines.encodeResultLine(outcome.line)).pipe(Effect.mapError(outputError(output)))
            }
            yield* report(yield* Ref.updateAndGet(tally, (t) => record(t, outcome)))
          })
        yield* lines(fs, input).pipe(
          Stream.mapError(inputError(input)),
          Stream.map(({ lineNumber, text }) => decide(Lines.parseInputLine(text, lineNumber))),
          Stream.mapEffect(perform, { concurrency: options.concurrency ?? defaultConcurrency, unordered: true }),
          Stream.runForEach(writeOutcome)
        )
      })
    )

    const finishedAt = yield* Clock.currentTimeMillis
    return summarize(yield* Ref.get(tally), countsBefore, yield* readCounts, Duration.millis(finishedAt - startedAt))
  })

const counted = (count: number, one: string, many: string) => `${count} ${count === 1 ? one : many}`

/**
 * A summary as a few human-readable lines.
 *
 * @since 0.1.0
 */
export const formatSummary = (summary: Summary): string => {
  const failures = Object.entries(summary.failures)
    .sort(([, a], [, b]) => b - a)
    .map(([code, count]) => `${code} ${count}`)
    .join(", ")
  const { tokens } = summary
  return [
    `requests:  ${summary.requests} (${summary.succeeded} succeeded, ${summary.failed} failed, ${summary.skipped} skipped as already answered)`,
    ...(failures.length === 0 ? [] : [`failures:  ${failures}`]),
    `upstream:  ${summary.rateLimited} 429s met, ${counted(summary.retries, "retry", "retries")}, ${
      counted(summary.failedAttempts, "failed attempt", "failed attempts")
    }`,
    `tokens:    ${tokens.prompt} prompt (${tokens.cacheHit} cache hit), ${tokens.completion} completion (${tokens.reasoning} reasoning)`,
    `elapsed:   ${Duration.format(summary.elapsed)}`
  ].join("\n")
}
