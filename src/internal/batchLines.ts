/**
 * The line formats of a batch: OpenAI Batch API input lines in, result lines out, and the reading
 * of result lines already written by an earlier run (for resume).
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { identity } from "effect/Function"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"
import { scrubSecrets } from "../ApiError.js"
import { ChatCompletionRequest } from "../ChatSchema.js"
import type { ChatCompletion, FinishReason, ToolCall, Usage } from "../ChatSchema.js"
import type { ResilientError } from "../Resilient.js"
import { Task } from "../Router.js"
import type { Deadlines } from "../Transport.js"
import type { NumberedLine } from "./batchFiles.js"
import * as DurationTexts from "./durationText.js"
import * as ExactJson from "./exactJson.js"
import { madeAtFirstCall } from "./firstCall.js"
import { withModelLeftToRouter } from "./routedModel.js"
import * as SchemaFastPath from "./schemaFastPath.js"
import * as SchemaIssues from "./schemaIssues.js"
import { clipped, hideKeyShapes, maxJsonDepth, nestsTooDeep, notJsonSaying, parseJson } from "./text.js"

/** The longest deadline text quoted back: the text is the line's own. */
const maxQuotedDeadline = 50

/** A deadline as `30s`, `500ms`, `2m` or `1h`, above zero. */
const DeadlineText = Schema.transformOrFail(Schema.String, Schema.DurationFromSelf, {
  strict: true,
  decode: (text, _, ast) => {
    const duration = DurationTexts.parseDeadline(text)
    return duration === undefined
      ? ParseResult.fail(
        new ParseResult.Type(ast, text, `expected ${DurationTexts.expectedDeadline}, got ${JSON.stringify(clipped(text, maxQuotedDeadline))}`)
      )
      : ParseResult.succeed(duration)
  },
  encode: (duration) => ParseResult.succeed(`${Duration.toMillis(duration)}ms`)
})

/** A line's own deadlines, over the run's; a name it does not know is refused, not ignored (a typo). */
const LineDeadlines = Schema.Struct({
  firstContent: Schema.optionalWith(DeadlineText, { exact: true }),
  idle: Schema.optionalWith(DeadlineText, { exact: true }),
  total: Schema.optionalWith(DeadlineText, { exact: true })
}).annotations({ parseOptions: { onExcessProperty: "error" } })

/** The line's own fields, refused inside `body`, where they would go upstream and route nothing. */
const lineFields = ["task", "deadlines"] as const

/**
 * One input line of the OpenAI Batch API format, restricted to chat completions, with an optional
 * top-level `task` for the router and `deadlines` for its calls (kept out of `body`, so nothing
 * unknown is sent upstream). A field it does not know is refused, not ignored: a misspelt `task`
 * would send the line to the default task's model.
 */
export const InputLine = Schema.Struct({
  custom_id: Schema.NonEmptyString,
  task: Schema.optionalWith(Task, { exact: true }),
  deadlines: Schema.optionalWith(LineDeadlines, { exact: true }),
  method: Schema.Literal("POST"),
  url: Schema.Literal("/v1/chat/completions", "/chat/completions"),
  // An empty conversation is refused here, as the line's own error, rather than sent.
  body: ChatCompletionRequest.pipe(
    Schema.filter((body) => body.messages.length > 0 || { path: ["messages"], message: "must not be empty" }),
    Schema.filter((body) => {
      const misplaced = lineFields.find((field) => Object.hasOwn(body, field))
      return misplaced === undefined || { path: [misplaced], message: "belongs beside body, at the line's top level" }
    })
  )
}).annotations({ parseOptions: { onExcessProperty: "error" } })

/**
 * What an input line asks for: a request to send, or a line that cannot be sent (its
 * `customId` undefined when none can be read from it).
 */
export type InputItem =
  | {
    readonly _tag: "Request"
    readonly lineNumber: number
    readonly customId: string
    readonly task: Task | undefined
    readonly deadlines: Partial<Deadlines> | undefined
    readonly body: ChatCompletionRequest
  }
  | {
    readonly _tag: "Invalid"
    readonly lineNumber: number
    /** The line's own, which it claims; none when the line has none that can be read. */
    readonly customId: string | undefined
    readonly message: string
  }

const decodeInputLine = SchemaFastPath.decodeUnknownEither(InputLine, { errors: "all" })

const ownCustomId = (value: unknown): string | undefined => {
  if (typeof value !== "object" || value === null || !("custom_id" in value)) return undefined
  const id = value.custom_id
  return typeof id === "string" && id.length > 0 ? id : undefined
}

/** The longest schema complaint written to a result line; a huge body is not echoed back. */
const maxMessageLength = 500

/** What a line that is JSON but not an object is, in words: the schema's own message would list every field. */
const notARequestObject = (value: unknown): string | undefined =>
  Predicate.isRecord(value) ? undefined : `line is ${SchemaIssues.jsonKind(value)}, not a JSON object (one request per line)`

/** A bad line whose own `custom_id` cannot be read. */
const invalidWithoutId = (lineNumber: number, message: string): InputItem => ({
  _tag: "Invalid",
  lineNumber,
  customId: undefined,
  message
})

/**
 * The longest input line read, in bytes: 64 MiB, far above any request DeepSeek takes (a 1M-token
 * context is a few MB of text), so a file without line ends costs bounded memory.
 */
export const maxLineBytes = 64 * 1024 * 1024

/** Why a line has no text: its bytes are not UTF-8, or there are more than the limit of them. */
export type Unreadable = "invalid-utf8" | "too-long"

/** The message of a line that cannot be read: it is not sent, altered or not. */
const unreadableMessages: Readonly<Record<Unreadable, string>> = {
  "invalid-utf8": "line is not valid UTF-8",
  "too-long": `line is longer than ${maxLineBytes / 1024 / 1024} MiB`
}

/** A line whose body names no `model`: the router picks it, from the line's `task` or its default. */
const withBodyModelLeftToRouter = (line: unknown): unknown => {
  if (!Predicate.isRecord(line) || !Predicate.isRecord(line.body)) return line
  const body = withModelLeftToRouter(line.body)
  return body === line.body ? line : { ...line, body }
}

/** A line's JSON, its integers kept exactly (sent as written), or why it is not JSON. */
const parseLine = (text: string): Either.Either<unknown, unknown> => Either.try({ try: () => ExactJson.parse(text), catch: identity })

/**
 * Why a line is not JSON: where it stops being JSON, or the plain cause of a file whose lines end
 * in CR alone (classic Mac OS), one line of requests joined by the CRs (a CR in a JSON string is escaped).
 */
const notJson = (text: string, error: unknown): string =>
  /\r[ \t]*\{/.test(text)
    ? "line is not valid JSON: it holds carriage returns (CR) where lines end, as a file with CR line ends does; convert them to LF"
    : notJsonSaying("line is not valid JSON", error, text)

/** Parses one non-blank input line. Never fails: a bad line is `Invalid`. */
export const parseInputLine = (line: NumberedLine): InputItem => {
  const { lineNumber, text } = line
  if (text === undefined) return invalidWithoutId(lineNumber, unreadableMessages[line.unreadable])
  const parsed = parseLine(text)
  if (Either.isLeft(parsed)) return invalidWithoutId(lineNumber, notJson(text, parsed.left))
  const json = parsed.right
  const notAnObject = notARequestObject(json)
  if (notAnObject !== undefined) return invalidWithoutId(lineNumber, notAnObject)
  const ownId = ownCustomId(json)
  const invalid = (message: string): InputItem => ({ _tag: "Invalid", lineNumber, customId: ownId, message })
  if (nestsTooDeep(json)) return invalid(`line nests arrays and objects deeper than ${maxJsonDepth} levels`)
  const decoded = decodeInputLine(withBodyModelLeftToRouter(json))
  if (Either.isRight(decoded)) {
    const { body, custom_id, deadlines, task } = decoded.right
    return { _tag: "Request", lineNumber, customId: custom_id, task, deadlines, body }
  }
  return invalid(clipped(`invalid batch request: ${SchemaIssues.describeIssues(decoded.left, "line").join("; ")}`, maxMessageLength))
}

/** The `error.code` of a result line that was never sent. */
export const invalidLineCode = "invalid_line"
/** The `error.code` of a later line that reuses an earlier line's `custom_id`. */
export const duplicateCode = "duplicate_custom_id"

/** What a stream delivered before it was cut (or an answer cut short held), as a result line's `error.partial` shows it. */
export interface PartialJson {
  /** A stream's chunks; a non-streaming answer's body is one. */
  readonly chunks: number
  readonly content: string | null
  readonly reasoning_content: string | null
  readonly tool_calls?: ReadonlyArray<ToolCall>
  readonly finish_reason: FinishReason | null
  readonly usage: Usage | null
}

/** The `error` of a failed result line. */
export interface LineError {
  readonly code: string
  readonly message: string
  /**
   * The input line (from 1) of a line that was not sent (`invalid_line`, `duplicate_custom_id`):
   * its `custom_id` is `null` when it had none to read, and a duplicate's is another line's.
   */
  readonly line?: number
  /** A stream cut after some chunks arrived: what they held. */
  readonly partial?: PartialJson
}

/** A result line, as written. */
export interface ResultLine {
  readonly id: string
  /** `null` for an input line without one that could be read (its `error.line` says which). */
  readonly custom_id: string | null
  readonly response: {
    readonly status_code: number
    readonly request_id: string | null
    readonly body: unknown
  } | null
  readonly error: LineError | null
}

const hexWord = (word: number): string => word.toString(16).padStart(8, "0")

/**
 * A run's request ids, as the OpenAI Batch API shapes them: `batch_req_` and 32 hex digits, the
 * first 24 drawn once for the run from Effect's `Random` and the last 8 counting its lines, so
 * every id of a run is its own without a draw per line.
 */
export const makeRequestIds: Effect.Effect<() => string> = Effect.randomWith((random) =>
  Effect.map(Effect.all([1, 2, 3].map(() => random.nextIntBetween(0, 0x1_0000_0000))), (words) => {
    const prefix = `batch_req_${words.map(hexWord).join("")}`
    let line = 0
    return () => prefix + hexWord(line++ % 0x1_0000_0000)
  })
)

/** The result line of an answered request. */
export const succeeded = (id: string, customId: string, completion: ChatCompletion): ResultLine => ({
  id,
  custom_id: customId,
  response: { status_code: 200, request_id: completion.id, body: completion },
  error: null
})

/** The result line of a line that was not sent (invalid, duplicate or refused by the router). */
export const rejected = (id: string, customId: string | null, error: LineError): ResultLine => ({
  id,
  custom_id: customId,
  response: null,
  // The line's own text may hold a key of any provider's shape (quoted where a field was expected).
  error: {
    code: error.code,
    message: hideKeyShapes(scrubSecrets(error.message)),
    ...(error.line === undefined ? {} : { line: error.line })
  }
})

const statusOf = (error: ResilientError): number | undefined =>
  "status" in error && typeof error.status === "number" ? error.status : undefined

const errorTypeOf = (status: number): string =>
  status === 400 || status === 413 || status === 422
    ? "invalid_request_error"
    : status === 401
    ? "authentication_error"
    : status === 402
    ? "insufficient_balance_error"
    : status === 429
    ? "rate_limit_error"
    : status >= 500
    ? "server_error"
    : "api_error"

/**
 * Masks keys in text an upstream may have echoed them into: the pool's every configured key, or
 * what is shaped like one (`scrubSecrets`).
 */
export type Scrub = (text: string) => string

/**
 * The result line of a request whose call failed. The message is the typed error's own (already
 * scrubbed of key shapes by the transport, scrubbed again here with `scrub`); the HTTP response
 * is described only when the failure had a status.
 */
export const failed = (id: string, customId: string, error: ResilientError, scrub: Scrub): ResultLine => {
  const message = scrub(error.message)
  const status = statusOf(error)
  const code = "code" in error && error.code !== undefined ? error.code : null
  // The field at fault, as the upstream named it (OpenAI's errors carry it).
  const param = "param" in error && error.param !== undefined ? { param: error.param } : {}
  return {
    id,
    custom_id: customId,
    response: status === undefined ? null : {
      status_code: status,
      request_id: null,
      body: { error: { message, type: errorTypeOf(status), ...param, code } }
    },
    error: { code: error._tag, message }
  }
}

const charactersOf = (text: string | null | undefined): number => text?.length ?? 0

/** A failure's result line with what arrived in `error.partial`, counted in the message after `how` it was cut. */
const withPartial = (id: string, customId: string, error: ResilientError, partial: PartialJson, how: string, scrub: Scrub): ResultLine => {
  const arrived = `${charactersOf(partial.content)} characters of content and ${charactersOf(partial.reasoning_content)} of reasoning`
  return {
    ...failed(id, customId, error, scrub),
    error: { code: error._tag, message: `${how} (${arrived} arrived, kept in error.partial): ${scrub(error.message)}`, partial }
  }
}

/**
 * The result line of a streamed request cut after some chunks arrived: the call's failure, with
 * what arrived in `error.partial` and counted in the message.
 */
export const cut = (
  id: string,
  customId: string,
  error: ResilientError,
  folded: { readonly completion: ChatCompletion; readonly chunks: number },
  scrub: Scrub
): ResultLine => {
  const choice = folded.completion.choices[0]
  const message = choice?.message
  return withPartial(id, customId, error, {
    chunks: folded.chunks,
    content: message?.content ?? null,
    reasoning_content: message?.reasoning_content ?? null,
    ...(message?.tool_calls == null ? {} : { tool_calls: message.tool_calls }),
    finish_reason: choice?.finish_reason ?? null,
    usage: folded.completion.usage ?? null
  }, `the stream was cut after ${folded.chunks} chunks`, scrub)
}

/**
 * The result line of a failed non-streaming request: with what its answer held in
 * `error.partial` when text arrived (one cut short, `insufficient_system_resource`, on its last
 * attempt: billed), as a cut stream's line has; else `failed`'s.
 */
export const failedAnswer = (id: string, customId: string, error: ResilientError, scrub: Scrub): ResultLine => {
  const partial = "partial" in error ? error.partial : undefined
  if (partial === undefined || (partial.content === "" && partial.reasoningContent === "")) return failed(id, customId, error, scrub)
  return withPartial(id, customId, error, {
    chunks: partial.events,
    // None is null, as a cut stream's fold gives it.
    content: partial.content === "" ? null : partial.content,
    reasoning_content: partial.reasoningContent === "" ? null : partial.reasoningContent,
    finish_reason: partial.finishReason ?? null,
    usage: partial.usage ?? null
  }, "the answer was cut", scrub)
}

/** Serialises a result line, newline included. */
export const encodeResultLine = (line: ResultLine): string => `${JSON.stringify(line)}\n`

/** How every result line starts: its `id` first, made by `makeRequestIds`. */
const resultLineStart = '{"id":"batch_req_'

/** Whether `text` may be a result line a crash cut short: a start of one. */
export const mayBeTornResult = (text: string): boolean =>
  text.startsWith(resultLineStart) || resultLineStart.startsWith(text)

const ExistingLine = Schema.Struct({
  custom_id: Schema.NullOr(Schema.String),
  response: Schema.NullOr(Schema.Struct({ status_code: Schema.Number })),
  error: Schema.NullOr(Schema.Unknown)
})
const isExistingLine = madeAtFirstCall(() => Schema.is(ExistingLine))

/** A line of an output file written earlier: kept on resume only when it `Succeeded`. */
export type ExistingResult =
  | { readonly _tag: "Succeeded"; readonly customId: string }
  | { readonly _tag: "Failed" }
  | { readonly _tag: "Unrecognized" }

/** Classifies a line of an existing output file. */
export const classifyExisting = (text: string): ExistingResult => {
  const line = Option.getOrUndefined(parseJson(text))
  if (!isExistingLine(line)) return { _tag: "Unrecognized" }
  return line.error === null && line.response?.status_code === 200 && line.custom_id !== null
    ? { _tag: "Succeeded", customId: line.custom_id }
    : { _tag: "Failed" }
}
