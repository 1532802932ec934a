/**
 * A batch job over the resilient client: a JSONL file of requests in the OpenAI Batch API format
 * in, a JSONL file of results out, one result line per request line.
 *
 * - Input lines are `{"custom_id","method":"POST","url":"/v1/chat/completions","body":{…}}`
 *   (`/chat/completions` is accepted too). The file is streamed; blank lines are ignored. The
 *   input may be a pipe or a FIFO (`/dev/stdin`, a shell's `<(…)`), or a socket named by the
 *   process's own descriptor (`/dev/stdin`, `/dev/fd/<n>`): it is then read once, in order, and
 *   its progress has no total.
 * - A line may carry its own `deadlines` next to `custom_id` (`{"firstContent": "20s", "idle":
 *   "1m", "total": "10m"}`, each optional, durations as `500ms`, `30s`, `2m`, `1h`), which
 *   override the run's for its calls: per-workload timeouts in one file.
 * - A line may declare what it is for with a top-level `task` next to `custom_id`
 *   (`"classification"`, `"extraction"`, `"summarisation"`, `"chat"`, `"reasoning"`); every body
 *   goes through the `Router` before it is sent, which fills a `model` left as `"auto"` or `""`
 *   and the thinking mode from the task (see `Router`). A request the router refuses gets an error
 *   line (`RoutingRefused`); the router's warnings are counted in the summary.
 * - A line that cannot be sent (bad JSON, no `custom_id`, a bad body or `task`, another method or
 *   url, a `custom_id` already used by an earlier line) gets an error result line; it never stops
 *   the run. Its `error.line` says which input line it is; its `custom_id` is `null` when it has
 *   none that can be read (no name made up for it could be told from a real line's).
 * - A line that is not valid UTF-8 is an error line (`invalid_line`); it is never altered and sent.
 *   So is a line longer than 64 MiB, which is never held whole (a file without line ends costs
 *   bounded memory). An input file in UTF-16 (its byte-order mark says so: Windows PowerShell 5's
 *   `>`) fails the run with a `BatchError` before anything is sent.
 * - A body with `"stream": true` is sent as a stream (so the first-content and idle deadlines see
 *   real content) and its result body is the completion folded from the chunks (`ChatStream`),
 *   as a non-streaming answer would look. A stream cut after some chunks gives an error line whose
 *   `error.partial` holds what arrived. The client's `ResponseCache` answers a repeated
 *   deterministic stream line as it answers a completion (see `Resilient`).
 * - Results are appended as they arrive, by one writer, so a crash loses nothing already
 *   answered. A rerun with the same output resumes: the output is first compacted to its
 *   successful lines (failed lines and a line torn by a crash go), succeeded ids are skipped and
 *   everything else is sent again, so the output keeps exactly one line per request. (Successful
 *   lines of ids no longer in the input are kept, and counted: `Summary.unmatched`.) A line is
 *   matched by its `custom_id` alone: one whose body changed since its answer is not sent again.
 *   Only the ids seen are held in memory.
 * - One run at a time per output: a run holds `<output>.lock` (created exclusively, naming its pid,
 *   host and start) from before compaction to its end, on the output's real path, so every
 *   spelling of one file shares the lock. Another run on it fails at once with `OutputLocked`,
 *   before anything is sent. A lock left by a dead process of this host is taken over (logged as
 *   a warning), and so is one naming this process's pid that it does not hold (a former process's:
 *   a restarted container runs with the same pid); one from another host, or from a live process,
 *   is respected.
 * - An upstream that cannot be reached at all is told at once: when the warm-up connections of an
 *   `AccountPool` reach none of its accounts' origins (a base URL with a typo, a host down, no
 *   network), the run fails with `UpstreamUnreachable` before it locks, reads or sends anything;
 *   when the accounts it reached had every key rejected by the start's balance preflight (a wrong
 *   `DEEPSEEK_API_KEY`), with `KeysRejected`; when they were out of balance (or had no key
 *   accepted), with `OutOfBalance`. An upstream lost later, or a balance spent later, is waited
 *   for (each call up to its `maxWait`).
 * - Compaction keeps the output's identity: it rewrites the real file behind a symlink (which
 *   stays a symlink), beside it, with its mode. A read-only output is refused before anything is
 *   sent (`BatchError`).
 * - `Options.stop` ends a run early and cleanly: no new line is read and nothing more is sent. The
 *   calls with a request on the wire get `drainTimeout` to finish and their answers are written;
 *   a call waiting (for a permit, a retry's backoff, an account) ends at once, one whose request
 *   fails after the stop ends there, and neither writes anything (a resume sends them). The
 *   summary says `interrupted`.
 * - A file failing the run once it has started (the output cannot be written, the input can no
 *   longer be read) stops it in the same way, at once for the output, and fails it with
 *   `BatchAborted`, which carries the summary until then.
 * - The summary's tokens and cost are what the client recorded in the `CostLedger` during the
 *   run: every attempt, retried ones included, so they are what the upstreams billed
 *   (`AccountPool.layerResilient` records every attempt; a client that records nothing leaves
 *   them at 0). `toJson` / `writeSummary` give it as data.
 *
 * @since 0.1.0
 */

import type { PlatformError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as AccountPoolModule from "./AccountPool.js"
import type * as Redis from "./Redis.js"
import * as ResponseCache from "./ResponseCache.js"
import { AccountPool } from "./AccountPool.js"
import type { AccountStatus } from "./AccountPool.js"
import type { Account } from "./Accounts.js"
import { scrubSecrets } from "./ApiError.js"
import type { ChatCompletionRequest } from "./ChatSchema.js"
import * as ChatStream from "./ChatStream.js"
import { CostLedger } from "./CostLedger.js"
import type * as CostLedgerModule from "./CostLedger.js"
import { Resilient } from "./Resilient.js"
import type { CallOptions } from "./Resilient.js"
import type { Deadlines, Exchange } from "./Transport.js"
import { Router } from "./Router.js"
import type { Task } from "./Router.js"
import * as Telemetry from "./Telemetry.js"
import { type Call, Calls } from "./internal/batchCalls.js"
import * as Files from "./internal/batchFiles.js"
import * as Lines from "./internal/batchLines.js"
import * as ReadAhead from "./internal/batchReadAhead.js"
import * as SummaryInternal from "./internal/batchSummary.js"
import { currentMonotonicMillis } from "./internal/monotonic.js"

/**
 * The run itself could not go on: the input could not be read, or the output could not be
 * written (or is not a batch output file, or is the input), or the summary file could not be
 * written. A problem with one line is never a `BatchError`: it becomes that line's error result.
 *
 * @since 0.1.0
 * @category errors
 */
export class BatchError extends Data.TaggedError("BatchError")<{
  readonly file: "input" | "output" | "summary"
  readonly path: string
  readonly message: string
}> {}

/**
 * The run had started sending when its files failed it: the output could not be written (a full
 * disk, a lost mount) or the input could no longer be read. Nothing more was sent after the
 * failure. An output failure stops the run at once (the calls on the wire are dropped: their
 * answers could not be written); an input failure drains it as `Options.stop` does, so the
 * answers on the wire are written. `summary` is the run until then (`interrupted`), its counts
 * those of the results in the file; `unwritten` counts the results of this run not in the file
 * whole (one of them may lie torn at its end, where the resume drops it). Every line without a
 * whole result in the file is processed again when the run resumes, once the file can be written
 * (or read) again.
 *
 * @since 0.1.0
 * @category errors
 */
export class BatchAborted extends Data.TaggedError("BatchAborted")<{
  readonly error: BatchError
  readonly summary: Summary
  readonly unwritten: number
}> {
  /** @since 0.1.0 */
  override get message(): string {
    const unwritten = this.unwritten === 0
      ? ""
      : `; ${this.unwritten} ${this.unwritten === 1 ? "result" : "results"} received in this run ${
        this.unwritten === 1 ? "was" : "were"
      } not written`
    return `${this.error.message}; the run stopped, nothing more was sent${unwritten}`
  }
}

/**
 * Who holds an output's lock: a process (`pid`) on a `host`, since an ISO time.
 *
 * @since 0.1.0
 * @category models
 */
export interface LockHolder {
  readonly pid: number
  readonly host: string
  readonly since: string
}

/**
 * Another run holds the output's lock (`<output>.lock`): nothing was read, written or sent.
 * `holder` is `undefined` when the lock file names none.
 *
 * @since 0.1.0
 * @category errors
 */
export class OutputLocked extends Data.TaggedError("OutputLocked")<{
  /** The output as given. */
  readonly path: string
  readonly lockPath: string
  readonly holder: LockHolder | undefined
}> {
  /** @since 0.1.0 */
  override get message(): string {
    const holder = this.holder === undefined
      ? `a lock file that names no holder`
      : `pid ${this.holder.pid} on host ${this.holder.host}, since ${this.holder.since}`
    return `the output ${this.path} is in use by another batch run (${holder}); ` +
      `wait for that run to end, or remove ${this.lockPath} if it is gone`
  }
}

/**
 * The warm-up reached none of the pool's accounts (`AccountPool.Service.unreachable`): nothing was
 * read, written or sent. Run again once the upstream can be reached.
 *
 * @since 0.1.0
 * @category errors
 */
export class UpstreamUnreachable extends Data.TaggedError("UpstreamUnreachable")<{
  readonly accounts: ReadonlyArray<AccountPoolModule.Unreachable>
}> {
  /** @since 0.1.0 */
  override get message(): string {
    const each = this.accounts.map(({ account, origin, reason }) => `account ${account}: ${origin} (${reason})`)
    return `cannot connect to the upstream of any account: ${each.join("; ")}`
  }
}

/**
 * The start's balance preflight found every key rejected (401) on each account the warm-up reached
 * (`AccountPool.Service.unreachable`, then `AccountStatus.state` `no_keys`): nothing was read,
 * written or sent. A wrong key is not transient: fix the keys, then run again.
 *
 * @since 0.1.0
 * @category errors
 */
export class KeysRejected extends Data.TaggedError("KeysRejected")<{
  /** The accounts whose every key was rejected. */
  readonly accounts: ReadonlyArray<string>
  /** The others: none of them could be reached. */
  readonly unreachable: ReadonlyArray<AccountPoolModule.Unreachable>
}> {
  /** @since 0.1.0 */
  override get message(): string {
    return withUnreachable(everyKeyRejected(this.accounts), this.unreachable)
  }
}

/**
 * The start's balance preflight found the accounts the warm-up reached out of balance (their
 * balance unavailable, `AccountStatus.state` `out_of_balance`), or with every key rejected:
 * nothing was read, written or sent. Without this the lines would wait for a balance someone
 * tops up, each up to its `maxWait` (30 minutes). Top one up, then run again.
 *
 * @since 0.1.0
 * @category errors
 */
export class OutOfBalance extends Data.TaggedError("OutOfBalance")<{
  /** The accounts out of balance. */
  readonly accounts: ReadonlyArray<string>
  /** The accounts whose every key was rejected. */
  readonly rejected: ReadonlyArray<string>
  /** The others: none of them could be reached. */
  readonly unreachable: ReadonlyArray<AccountPoolModule.Unreachable>
}> {
  /** @since 0.1.0 */
  override get message(): string {
    const [one] = this.accounts
    const out = this.accounts.length === 1
      ? `account ${one} is out of balance (its balance is unavailable)`
      : `accounts ${this.accounts.join(", ")} are out of balance (their balance is unavailable)`
    return withUnreachable(this.rejected.length === 0 ? out : `${out}; ${everyKeyRejected(this.rejected)}`, this.unreachable)
  }
}

/**
 * How a run fails: before it sends anything (its files, its lock, an upstream that serves no call),
 * or aborted by its files once started.
 *
 * @since 0.1.0
 * @category errors
 */
export type RunError = BatchError | OutputLocked | UpstreamUnreachable | KeysRejected | OutOfBalance | BatchAborted

const everyKeyRejected = (accounts: ReadonlyArray<string>): string =>
  `the upstream rejected every key (401) of ${accounts.map((name) => `account ${name}`).join(", ")}`

const withUnreachable = (said: string, unreachable: ReadonlyArray<AccountPoolModule.Unreachable>): string =>
  unreachable.length === 0 ? said : `${said}, and ${new UpstreamUnreachable({ accounts: unreachable }).message}`

/**
 * Token totals.
 *
 * @since 0.1.0
 * @category models
 */
export interface Tokens {
  readonly prompt: number
  readonly completion: number
  /** Prompt tokens served from DeepSeek's context cache. */
  readonly cacheHit: number
  /** Prompt tokens not served from the cache. */
  readonly cacheMiss: number
  /** Completion tokens spent on reasoning (included in `completion`). */
  readonly reasoning: number
}

/**
 * What the attempts of a run cost, as the client recorded them in the `CostLedger`: every
 * attempt, kept or thrown away, so the tokens are what the upstreams billed, but for the
 * `unmetered` attempts (cut in transit before their usage arrived).
 *
 * @since 0.1.0
 * @category models
 */
export interface Spend extends
  Pick<CostLedgerModule.Totals, "attempts" | "costUsd" | "unpriced" | "unmetered" | "retryTax" | "truncated" | "reasoningShare">
{
  /**
   * Attempts recorded `kept` or `truncated`: with `AccountPool`, which records a call's last
   * failed attempt as `discarded`, the calls answered, whole or cut short after their content
   * began (a stream cut mid-way: `truncated`, its line failed).
   */
  readonly answered: number
  readonly tokens: Tokens
  /** `truncated / answered`: the share of answers that came back cut short. */
  readonly truncationRate: number
}

/**
 * One account's part of a run.
 *
 * @since 0.1.0
 * @category models
 */
export interface AccountSummary extends Spend {
  /** The pool's view of the account at the end of the run; absent when the client is not an `AccountPool`. */
  readonly status: AccountStatus | undefined
}

/**
 * Where a run stands; `succeeded + failed + skipped` lines are done.
 *
 * @since 0.1.0
 * @category models
 */
export interface Progress {
  /** Request lines in the input; `undefined` for an input read once (a pipe), never counted. */
  readonly total: number | undefined
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
  /**
   * Of `succeeded`, the lines answered without a request of their own: from the response cache,
   * by an identical deterministic line answered before or at the same time. Told by the client's
   * `onExchange` (a line whose call reported no request): a `Resilient` of your own that never
   * calls it has every answer counted here.
   */
  readonly fromCache: number
  /** Lines that got an error result in this run. */
  readonly failed: number
  /** Lines already answered by an earlier run into the same output, not sent again. */
  readonly skipped: number
  /**
   * Results the output already held whose `custom_id` no line of this input has (another
   * input's, or lines since removed from this one): kept as they are. 0 when the run stopped
   * before the end of its input.
   */
  readonly unmatched: number
  /**
   * Failed lines by `error.code` (an error tag such as `RateLimited` or `RoutingRefused`, or
   * `invalid_line` …).
   */
  readonly failures: Readonly<Record<string, number>>
  /** 429 answers met on the way (retried or not). */
  readonly rateLimited: number
  /** Retries the resilient client scheduled. */
  readonly retries: number
  /** Attempts that failed, retried or not. */
  readonly failedAttempts: number
  /** Warnings the router gave (thinking on a simple task, under its `"warn"` policy). */
  readonly routingWarnings: number
  /** The whole run's spend, over every account. */
  readonly spend: Spend
  /** Per account: every account the client has (when it is an `AccountPool`) and every account the ledger saw. */
  readonly accounts: Readonly<Record<string, AccountSummary>>
  /** From the run's start, a resumed output's compaction included; measured with Effect's `Clock`. */
  readonly elapsed: Duration.Duration
  /**
   * The run was stopped (`Options.stop`, or a file failing it: `abortedBy`): the lines it did not
   * answer are absent from the output, and a rerun sends them. `complete` says whether there are any.
   */
  readonly interrupted: boolean
  /**
   * The file whose failure stopped the run (`BatchAborted`): the output that could not be written
   * (the run stopped at once, no drain), or the input that could no longer be read (drained).
   */
  readonly abortedBy: "input" | "output" | undefined
  /**
   * Every line of the input was read, and its result (an answer or an error) is in the output, or
   * was there before (`skipped`): a stop that came once the last answers were on their way cost
   * nothing. False for a run stopped with lines left, and for an aborted one.
   */
  readonly complete: boolean
  /**
   * Of a stopped run, the calls whose request was still on the wire when its drain ended
   * (`drainTimeout` ran out, or `stopNow`): their answers were not read and their lines not
   * written (a rerun sends them again), though the upstream may bill what it generated. They are
   * in no other figure: their attempts never ended.
   */
  readonly dropped: number
  /**
   * How many times the account pool's shared limits went on without Redis during the run (its
   * server unreachable, or failing): each time this process counted them alone, at its share,
   * until Redis was back (`AccountPool.redisLocalModeCounter`, read for the process: a program
   * that runs several pools at once counts all of theirs). 0 without Redis.
   */
  readonly redisLocalMode: number
  /** Whether the shared limits were still counted without Redis at the end (it never came back). */
  readonly redisAwayAtEnd: boolean
  /**
   * The `CostLedger`'s budget at the end, when it has one (the ledger's: what it spent before the
   * run counts too). Its `overUsd` is what the calls under way when it was spent cost past it.
   */
  readonly budget: CostLedgerModule.Budget | undefined
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
   * Lines read ahead of their answers (in flight, waiting for a permit, or backing off), so
   * memory stays bounded whatever the input's size; the client's limits bound the calls actually
   * in flight. Default: with an `AccountPool` in the context, as many as the pool has free
   * permits, following its limits as they grow (so the read-ahead never caps what the upstream
   * admits), at most its capacity (the sum of its lanes' limits) plus `defaultConcurrency`;
   * without one, `defaultConcurrency` (raise it to the upstream's cap when that is higher).
   */
  readonly concurrency?: number | undefined
  /** Options of every call. Default `{ priority: "batch" }`. */
  readonly callOptions?: CallOptions | undefined
  /**
   * Called once the input's lines are counted (read once more, beside the run: the first line
   * does not wait for it; a run that reads the input whole first counts the lines it read), then
   * after every line; for an input read once (a pipe), after every line, with no total.
   */
  readonly onProgress?: ((progress: Progress) => Effect.Effect<void>) | undefined
  /**
   * When it completes, the run stops: no new line is read and nothing more is sent. A call with
   * a request on the wire (as its transport tells `CallOptions.onExchange`) gets `drainTimeout`
   * to finish and its answer is written; a call waiting for a permit, a backoff or an account is
   * interrupted at once, one whose request fails after the stop when it fails, and the calls
   * still on the wire at the drain timeout then; none of them writes anything. The run then
   * returns its summary, `interrupted`. A stop while the output is compacted ends that at once
   * and leaves the output as it was. Default: never.
   */
  readonly stop?: Effect.Effect<void> | undefined
  /** How long the requests on the wire may finish after `stop`. Default 30 seconds (`defaultDrainTimeout`). */
  readonly drainTimeout?: Duration.DurationInput | undefined
  /**
   * When it completes, the run stops as with `stop`, but every call is interrupted at once, the
   * ones on the wire too (a drain under way ends now). Default: never.
   */
  readonly stopNow?: Effect.Effect<void> | undefined
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
 * `AccountPool.layerResilient(…).pipe(Layer.provideMerge(Batch.layerTelemetryCounts))`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerTelemetryCounts: Layer.Layer<TelemetryCounts | Telemetry.Telemetry> = Layer.effectContext(
  Effect.map(Telemetry.makeCounters, ({ counts, telemetry }) =>
    Context.make(Telemetry.Telemetry, telemetry).pipe(Context.add(TelemetryCounts, counts)))
)

/**
 * The read-ahead of a run without an `AccountPool`, and the lines a run with one keeps waiting
 * beyond the pool's capacity.
 *
 * @since 0.1.0
 */
export const defaultConcurrency = 256

/**
 * How many of a run's failed lines failed on their input (`invalid_line`, `duplicate_custom_id`):
 * a rerun answers them only once the input is fixed.
 *
 * @since 0.1.0
 * @category utils
 */
export const inputFailures = (summary: Pick<Summary, "failures">): number =>
  (summary.failures[Lines.invalidLineCode] ?? 0) + (summary.failures[Lines.duplicateCode] ?? 0)

/**
 * How many of a run's failed lines were refused as invalid requests, by the upstream
 * (`InvalidRequest`: HTTP 400, 413 or 422, a model name it does not know, say) or by the router
 * (`RoutingRefused`): a rerun sends them unchanged and meets the same refusal.
 *
 * @since 0.1.0
 * @category utils
 */
export const refusedFailures = (summary: Pick<Summary, "failures">): number =>
  (summary.failures["InvalidRequest"] ?? 0) + (summary.failures["RoutingRefused"] ?? 0)

/** @since 0.1.0 */
export const defaultDrainTimeout: Duration.Duration = Duration.seconds(30)

/**
 * What a run needs: the client, the router its requests go through, the ledger the client
 * records its attempts in, the telemetry counts, and files. An `AccountPool`, when there is one,
 * adds each account's state to the summary.
 *
 * @since 0.1.0
 * @category models
 */
export type Requirements = Resilient | Router | CostLedger | TelemetryCounts | FileSystem.FileSystem

/**
 * The client of a batch over accounts, as `weatherproof batch` builds it:
 * `AccountPool.layerResilient(accounts, pool)` recording every attempt in `ledger`, the telemetry
 * counts, and `router`. Everything `run` needs but files. With `redis`, the pool's lanes, breakers,
 * key cooldowns and balance (`AccountPool.layerResilientRedis`) and the response cache
 * (`ResponseCache.layerRedis`) are shared with every process on that Redis and prefix, over one
 * connection.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerAccounts = <E1, R1, E2, R2, E3 = never, R3 = never>(
  accounts: ReadonlyArray<Account>,
  options: {
    readonly pool?: AccountPoolModule.PoolOptions | undefined
    readonly ledger: Layer.Layer<CostLedger, E1, R1>
    readonly router: Layer.Layer<Router, E2, R2>
    readonly redis?: Layer.Layer<Redis.Redis, E3, R3> | undefined
  }
): Layer.Layer<Exclude<Requirements, FileSystem.FileSystem> | AccountPool | Telemetry.Telemetry, E1 | E2 | E3, R1 | R2 | R3> =>
  clientOf(accounts, options.pool, options.redis).pipe(
    Layer.provideMerge(Layer.merge(options.ledger, layerTelemetryCounts)),
    Layer.merge(options.router)
  )

/** The pool and its client, in memory or shared through `redis`. */
const clientOf = <E, R>(
  accounts: ReadonlyArray<Account>,
  pool: AccountPoolModule.PoolOptions | undefined,
  redis: Layer.Layer<Redis.Redis, E, R> | undefined
): Layer.Layer<Resilient | AccountPool, E, CostLedger | R> =>
  redis === undefined
    // Identical deterministic lines (temperature 0) are sent once and billed once, stream lines too.
    ? AccountPoolModule.layerResilient(accounts, pool).pipe(Layer.provide(ResponseCache.layerMemory()))
    : AccountPoolModule.layerResilientRedis(accounts, pool).pipe(Layer.provide(ResponseCache.layerRedis()), Layer.provide(redis))

/** A line to send. */
interface Send {
  readonly _tag: "Send"
  readonly customId: string
  readonly task: Task | undefined
  readonly deadlines: Partial<Deadlines> | undefined
  readonly body: ChatCompletionRequest
}

/** What one input line asks the run to do, decided in input order. */
type Work =
  | { readonly _tag: "Skip" }
  | { readonly _tag: "Reject"; readonly customId: string | null; readonly error: Lines.LineError }
  | Send

/**
 * The result line of a line not skipped, to write, how many warnings the router gave for it, and
 * whether it was answered without a request of its own.
 */
interface Outcome {
  readonly line: Lines.ResultLine
  readonly routingWarnings: number
  readonly fromCache: boolean
}

interface Tally {
  readonly succeeded: number
  readonly fromCache: number
  readonly failed: number
  readonly skipped: number
  readonly failures: Readonly<Record<string, number>>
  readonly routingWarnings: number
}

const emptyTally: Tally = { succeeded: 0, fromCache: 0, failed: 0, skipped: 0, failures: {}, routingWarnings: 0 }

const record = (tally: Tally, outcome: Outcome): Tally => {
  const error = outcome.line.error
  const routingWarnings = tally.routingWarnings + outcome.routingWarnings
  return error === null
    ? { ...tally, succeeded: tally.succeeded + 1, fromCache: tally.fromCache + (outcome.fromCache ? 1 : 0), routingWarnings }
    : {
      ...tally,
      failed: tally.failed + 1,
      failures: { ...tally.failures, [error.code]: (tally.failures[error.code] ?? 0) + 1 },
      routingWarnings
    }
}

const recordSkipped = (tally: Tally): Tally => ({ ...tally, skipped: tally.skipped + 1 })

const written = (line: Lines.ResultLine, routingWarnings = 0, fromCache = false): Outcome => ({ line, routingWarnings, fromCache })

const encodeOutcome = (outcome: Outcome): string => Lines.encodeResultLine(outcome.line)

/** What went wrong, in the system's own words when it has them (`ENOSPC: no space left on device, write`). */
const describe = (error: PlatformError | { readonly message: string }): string =>
  "_tag" in error && error._tag === "SystemError" && error.description !== undefined ? error.description : error.message

const inputError = (path: string) => (error: PlatformError | { readonly message: string }) =>
  new BatchError({ file: "input", path, message: `cannot read input ${path}: ${describe(error)}` })

const outputError = (path: string) => (error: PlatformError | { readonly message: string }) =>
  new BatchError({ file: "output", path, message: `cannot write output ${path}: ${describe(error)}` })

/**
 * The real path of the output (see `Files.resolveOutput`) and how the input is read, once the
 * input is known readable and not the output itself (compaction would eat it).
 */
const resolvePaths = (fs: FileSystem.FileSystem, input: string, output: string) =>
  Effect.gen(function*() {
    // Side by side (each resolution is a file-system call per path component, on the thread
    // pool); a problem with the input is told first.
    const [inputResolved, outputResolved] = yield* Effect.all([
      Effect.zipRight(fs.access(input, { readable: true }), Effect.all([fs.realPath(input), Files.inputKind(fs, input)]))
        .pipe(Effect.mapError(inputError(input))),
      Files.resolveOutput(fs, output).pipe(Effect.mapError(outputError(output)))
    ], { concurrency: 2, mode: "either" })
    const [inputReal, inputKind] = yield* inputResolved
    const outputReal = yield* outputResolved
    if (inputReal === outputReal) {
      return yield* new BatchError({ file: "output", path: output, message: `the output file ${output} is the input file` })
    }
    if (inputReal === Files.compactingPathOf(outputReal)) {
      return yield* new BatchError({
        file: "input",
        path: input,
        message: `the input file ${input} is where the output ${output} is compacted, which a run replaces: rename it`
      })
    }
    if (inputKind === "file" && (yield* Files.startsAsUtf16(fs, input))) {
      return yield* new BatchError({ file: "input", path: input, message: `the input file ${input} ${Files.utf16Input}` })
    }
    return { output: outputReal, inputKind }
  })

/**
 * Fails when the pool in context, if any, can serve no call without a change at start: it reached
 * none of its accounts, or the ones it reached have no key the upstream accepts or no balance.
 */
const refuseUnservable: Effect.Effect<void, UpstreamUnreachable | KeysRejected | OutOfBalance> = Effect.flatMap(
  Effect.serviceOption(AccountPool),
  Option.match({
    onNone: () => Effect.void,
    onSome: (pool) => Effect.flatMap(Effect.zip(pool.unreachable, pool.snapshot), ([unreachable, accounts]) => unservable(unreachable, accounts))
  })
)

/** Why accounts in these states serve no call, if they do not. */
const unservable = (
  unreachable: ReadonlyArray<AccountPoolModule.Unreachable>,
  accounts: ReadonlyArray<AccountPoolModule.AccountStatus>
): Effect.Effect<void, UpstreamUnreachable | KeysRejected | OutOfBalance> => {
  if (unreachable.length > 0 && unreachable.length === accounts.length) return new UpstreamUnreachable({ accounts: unreachable })
  const unreached = new Set(unreachable.map(({ account }) => account))
  const reached = accounts.filter(({ name }) => !unreached.has(name))
  const inState = (state: AccountPoolModule.AccountStatus["state"]) => reached.filter((account) => account.state === state).map(({ name }) => name)
  const rejected = inState("no_keys")
  const outOfBalance = inState("out_of_balance")
  if (reached.length === 0 || rejected.length + outOfBalance.length < reached.length) return Effect.void
  return outOfBalance.length === 0
    ? new KeysRejected({ accounts: rejected, unreachable })
    : new OutOfBalance({ accounts: outOfBalance, rejected, unreachable })
}

/** Takes `<real output>.lock` for the run's scope; another run's lock fails with `OutputLocked`. */
const lockOutput = (fs: FileSystem.FileSystem, output: string, real: string) => {
  const lockPath = `${real}.lock`
  return Files.acquireLock(fs, lockPath).pipe(
    Effect.catchAll((error): Effect.Effect<never, OutputLocked | BatchError> =>
      error._tag === "Locked"
        ? new OutputLocked({ path: output, lockPath, holder: error.holder })
        : new BatchError({
          file: "output",
          path: output,
          message: `cannot take the lock ${lockPath}: ${Files.lockDirectoryProblem(error, lockPath) ?? describe(error)}; nothing was sent`
        })
    ),
    Effect.tap(Option.match({
      onNone: () => Effect.void,
      onSome: (stale) => Effect.logWarning(`Batch: took over the lock ${lockPath} left by ${staleHolder(stale)}`)
    }))
  )
}

/**
 * Who left a stale lock: a process no longer running, or a former one with this process's pid (a
 * container restarted after a crash runs with the pid it had: 1, under Docker).
 */
const staleHolder = (stale: LockHolder): string =>
  stale.pid === process.pid
    ? `a former process with this one's pid ${stale.pid} on ${stale.host} (since ${stale.since})`
    : `pid ${stale.pid} on ${stale.host} (since ${stale.since}), which is no longer running`

/** Refuses an output that compaction would have to replace against its mode. */
const refuseReadOnly = (fs: FileSystem.FileSystem, output: string, real: string) =>
  Files.readOnlyReason(fs, real).pipe(
    Effect.mapError(outputError(output)),
    Effect.flatMap(Option.match({
      onNone: () => Effect.void,
      onSome: (reason) =>
        new BatchError({
          file: "output",
          path: output,
          message: `refusing to write the output file ${output}: ${reason}; make it writable or choose another output; nothing was sent`
        })
    }))
  )

const compactionError = (output: string) => (error: PlatformError | Files.ForeignLine): BatchError =>
  error._tag === "ForeignLine"
    ? new BatchError({
      file: "output",
      path: output,
      message: `line ${error.lineNumber} of ${output} is not a batch result; refusing to rewrite the file: ` +
        "give another output, or remove that line if the file is this batch's (its results are kept, and the " +
        "line's request, if it was one, is sent again)"
    })
    : new BatchError({
      file: "output",
      path: output,
      message: `cannot compact output ${output}: ${describe(error)}${compactionHint(error)}; nothing was sent`
    })

/** What the system's words about a compaction that failed leave out, where the cause is a common one. */
const compactionHint = (error: PlatformError): string => {
  const words = describe(error)
  if (words.startsWith("ENOSPC")) {
    return " (its compacted copy is written beside it, then renamed over it: that needs about as much free space as the output takes)"
  }
  return error._tag === "SystemError" && error.method === "rename" && words.startsWith("EPERM")
    ? " (in a directory with the sticky bit, only the output's owner may replace it: run as its owner, or give another output)"
    : ""
}

/**
 * Decides, in input order, what each line asks for. The first line with a `custom_id` owns it:
 * a later one is a duplicate; an owned id answered by an earlier run is skipped.
 */
const decider = (alreadyAnswered: ReadonlySet<string>) => {
  const owners = new Map<string, number>()
  return (item: Lines.InputItem): Work => {
    if (item.customId !== undefined) {
      const owner = owners.get(item.customId)
      if (owner !== undefined) {
        return {
          _tag: "Reject",
          customId: item.customId,
          error: {
            code: Lines.duplicateCode,
            message: `custom_id ${JSON.stringify(item.customId)} is already used by line ${owner}`,
            line: item.lineNumber
          }
        }
      }
      owners.set(item.customId, item.lineNumber)
      if (alreadyAnswered.has(item.customId)) return { _tag: "Skip" }
    }
    return item._tag === "Invalid"
      ? { _tag: "Reject", customId: item.customId ?? null, error: { code: Lines.invalidLineCode, message: item.message, line: item.lineNumber } }
      : { _tag: "Send", customId: item.customId, task: item.task, deadlines: item.deadlines, body: item.body }
  }
}

/** A line's `onExchange`: its call's, then the run's own when it has one. */
const toldTo = (call: Call, own: CallOptions["onExchange"]) => (exchange: Exchange): void => {
  call.told(exchange)
  own?.(exchange)
}

/** Sends a line: routes its body, then sends it (as a stream when it asks for one). */
const sender = (
  resilient: Resilient["Type"],
  router: Router["Type"],
  runOptions: CallOptions,
  nextId: () => string,
  scrub: Lines.Scrub
) => {
  /** The run's options, with the line's own deadlines over the run's and its call told of its exchange. */
  const optionsOf = (work: Send, call: Call): CallOptions => ({
    ...runOptions,
    ...(work.deadlines === undefined ? {} : { deadlines: { ...runOptions.deadlines, ...work.deadlines } }),
    onExchange: toldTo(call, runOptions.onExchange)
  })
  const create = (id: string, customId: string, body: ChatCompletionRequest, callOptions: CallOptions) =>
    resilient.create(body, callOptions).pipe(
      Effect.match({
        onSuccess: (completion) => Lines.succeeded(id, customId, completion),
        onFailure: (error) => Lines.failedAnswer(id, customId, error, scrub)
      })
    )
  const stream = (id: string, customId: string, body: ChatCompletionRequest, callOptions: CallOptions) =>
    Effect.map(ChatStream.foldPartial(resilient.stream(body, callOptions)), (folded) =>
      Option.match(folded.error, {
        onNone: () => Lines.succeeded(id, customId, folded.completion),
        onSome: (error) =>
          folded.chunks === 0 ? Lines.failed(id, customId, error, scrub) : Lines.cut(id, customId, error, folded, scrub)
      }))
  return (work: Send, call: Call): Effect.Effect<Outcome> =>
    Effect.suspend(() => {
      const id = nextId()
      return router.route(work.body, { task: work.task }).pipe(
        Effect.matchEffect({
          onFailure: (refused) =>
            Effect.succeed(written(Lines.rejected(id, work.customId, { code: refused._tag, message: refused.message }))),
          onSuccess: (routed) =>
            Effect.map(
              (routed.request.stream === true ? stream : create)(id, work.customId, routed.request, optionsOf(work, call)),
              (line) => written(line, routed.warnings.length, !call.sent)
            )
        })
      )
    })
}

/**
 * The run's read-ahead: `concurrency` lines when given; without an `AccountPool`,
 * `defaultConcurrency`. With one, a line starts while the pool has a free permit for it (or none
 * is running), up to the pool's capacity plus `defaultConcurrency`, looked at again whenever the
 * pool may have more room (a fiber of the scope watches it): lines wait for permits only when the
 * pool's limits drop, never as a standing queue, whose every call would pay the pool's wait. While
 * no account may serve (`Capacity.stalled`), up to `defaultConcurrency` lines wait for one side by
 * side, each up to its `maxWait`, rather than each after the one before; so do lines of a model no
 * account may serve (`Capacity.unserved`), and the lines after them start as if they were not there.
 */
const readAheadOf = (concurrency: number | undefined): Effect.Effect<ReadAhead.ReadAhead, never, Scope.Scope> =>
  Effect.flatMap(Effect.serviceOption(AccountPool), (pool) => {
    if (concurrency !== undefined || Option.isNone(pool)) {
      const fixed = concurrency ?? defaultConcurrency
      return Effect.succeed(ReadAhead.make((running) => Effect.succeed(running < fixed)))
    }
    const { capacity } = pool.value
    const readAhead = ReadAhead.make((running) =>
      Effect.map(capacity, ({ free, permits, stalled, unserved }) => {
        const bound = running < permits + defaultConcurrency
        // Lines waiting for a model no account may serve hold no permit: the others go on.
        const holding = running - Math.min(unserved, defaultConcurrency)
        return holding <= 0 ? running === 0 || bound : (free > 0 || stalled) && bound
      })
    )
    // The next reading is taken before the signal, so a change in between is never missed.
    const watch = (changed: Effect.Effect<void>): Effect.Effect<never> =>
      Effect.zipRight(
        changed,
        Effect.flatMap(capacity, (next) => {
          readAhead.signal()
          return watch(next.changed)
        })
      )
    return Effect.as(Effect.forkScoped(Effect.flatMap(capacity, ({ changed }) => watch(changed))), readAhead)
  })

/** What the run's counters say at one moment; the summary is the difference of two readings. */
const readings = Effect.gen(function*() {
  const counts = yield* Effect.flatten(TelemetryCounts)
  const ledger = yield* Effect.flatMap(CostLedger, (ledger) => ledger.snapshot)
  const millis = yield* currentMonotonicMillis
  const redisLocalMode = (yield* Metric.value(AccountPoolModule.redisLocalModeCounter)).count
  const redisAway = (yield* Metric.value(AccountPoolModule.redisLocalGauge)).value > 0
  return { counts, ledger, millis, redisLocalMode, redisAway }
})

type Reading = Effect.Effect.Success<typeof readings>

/** The state of the pool's accounts, when the client is an `AccountPool`. */
const poolStatuses: Effect.Effect<ReadonlyArray<AccountStatus>> = Effect.flatMap(
  Effect.serviceOption(AccountPool),
  Option.match({ onNone: () => Effect.succeed([]), onSome: (pool) => pool.snapshot })
)

const summarize = (
  tally: Tally,
  before: Reading,
  after: Reading,
  statuses: ReadonlyArray<AccountStatus>,
  interrupted: boolean,
  complete: boolean,
  dropped = 0,
  unmatched = 0,
  abortedBy?: "input" | "output"
): Summary => ({
  requests: tally.succeeded + tally.failed + tally.skipped,
  succeeded: tally.succeeded,
  fromCache: tally.fromCache,
  failed: tally.failed,
  skipped: tally.skipped,
  unmatched,
  failures: tally.failures,
  rateLimited: after.counts.rateLimited - before.counts.rateLimited,
  retries: after.counts.retries - before.counts.retries,
  failedAttempts: after.counts.failedAttempts - before.counts.failedAttempts,
  routingWarnings: tally.routingWarnings,
  spend: SummaryInternal.spendBetween(before.ledger.total, after.ledger.total),
  accounts: SummaryInternal.accountsBetween(before.ledger.byAccount, after.ledger.byAccount, statuses),
  elapsed: Duration.millis(after.millis - before.millis),
  interrupted,
  abortedBy,
  complete,
  dropped,
  redisLocalMode: after.redisLocalMode - before.redisLocalMode,
  redisAwayAtEnd: after.redisAway,
  budget: after.ledger.budget
})

/**
 * Runs a batch: reads `input`, routes every new request through `Router`, sends it through
 * `Resilient` and appends one result line per request line to `output`, resuming from what
 * `output` already holds.
 *
 * Result lines: `{"id":"batch_req_…","custom_id",…,"response":{"status_code":200,"request_id",
 * "body":<completion>},"error":null}` for an answer; for a failure `error` is
 * `{"code":<error tag or invalid_line / duplicate_custom_id>,"message"}` (plus `"line"`, its line
 * in the input, for a line not sent: invalid or a duplicate; plus `"partial"` for a
 * stream cut after some chunks, or an answer cut short on its last attempt) and `response` is
 * `{"status_code","request_id":null,"body":{"error":{"message","type","code"}}}` when the
 * failure had an HTTP status, else `null`. (A client whose keys or accounts are all out fails
 * each call at once, without the network, so a run over dead credentials ends fast.)
 *
 * Before anything is read or sent, the run takes the output's lock (another run holding it fails
 * the run at once with `OutputLocked`) and refuses a read-only output (`BatchError`); then, while
 * it compacts the output, it fails with `UpstreamUnreachable` when its `AccountPool` could reach
 * none of its accounts, with `KeysRejected` when the accounts it reached had every key rejected by
 * the start's preflight, and with `OutOfBalance` when they had no balance (or no key accepted)
 * but one at least was out of balance.
 * When `options.stop` completes, the run drains (see `Options.stop`) and its summary is
 * `interrupted`.
 *
 * The summary counts what happened between the start and the end of the run (the ledger and the
 * telemetry counts may have seen earlier work).
 *
 * @example
 * ```ts
 * import { Deferred, Effect } from "effect"
 * import { Batch } from "weatherproof"
 *
 * const program = Effect.gen(function*() {
 *   const stop = yield* Deferred.make<void>()
 *   // Complete `stop` (a signal, a deadline…) to end the run cleanly.
 *   return yield* Batch.run({ input: "requests.jsonl", output: "results.jsonl", stop: Deferred.await(stop) })
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const run = (options: Options): Effect.Effect<Summary, RunError, Requirements> =>
  Effect.scoped(Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const { input } = options

    const { inputKind, output } = yield* resolvePaths(fs, input, options.output)
    // Before the pool's verdict on its start: another run on this output is refused at once.
    yield* lockOutput(fs, options.output, output)
    yield* refuseReadOnly(fs, options.output, output)
    const before = yield* readings
    const calls = new Calls()
    const stops = yield* watchStops(options, calls)
    const { stopped } = stops
    // The output is compacted (seconds for a large one) while the pool's start answers (its
    // warm-up can take a connect timeout). A stop meanwhile, or a pool that can serve nothing,
    // ends the run before it sends anything, the output as it was or compacted (compaction
    // replaces it only whole).
    const compacted = yield* Effect.raceFirst(
      Effect.asSome(Effect.zipRight(
        refuseUnservable,
        Files.compactOutput(fs, output).pipe(Effect.mapError(compactionError(options.output))),
        { concurrent: true }
      )),
      Effect.as(Deferred.await(stopped), Option.none())
    )
    if (Option.isNone(compacted)) return summarize(emptyTally, before, yield* readings, yield* poolStatuses, true, false)
    const alreadyAnswered = compacted.value

    const decide = decider(alreadyAnswered)
    const nextId = yield* Lines.makeRequestIds
    // An upstream may echo a key into a failure a result line quotes: the pool knows every key.
    const scrub = Option.match(yield* Effect.serviceOption(AccountPool), { onNone: () => scrubSecrets, onSome: (pool) => pool.scrub })
    const send = sender(yield* Resilient, yield* Router, options.callOptions ?? { priority: "batch" }, nextId, scrub)
    let tally = emptyTally
    // A file is counted beside the run, not before its first line (a large one takes seconds):
    // progress is reported once the count is known (or the run has read the file whole, the lines
    // read being the count, should the run be ahead), then after every line. An input read once
    // cannot be counted: its progress, with no total, is reported from the start.
    let total: number | undefined
    const uncounted = () => inputKind === "file" && total === undefined
    const report = (t: Tally) =>
      uncounted() || options.onProgress === undefined
        ? Effect.void
        : options.onProgress({ total, succeeded: t.succeeded, failed: t.failed, skipped: t.skipped })
    const counted = (lines: number) =>
      Effect.suspend(() => {
        if (!uncounted()) return Effect.void
        total = lines
        return report(tally)
      })
    // Reported at once too: while every call of the run waits, its progress still shows.
    yield* report(tally)
    if (options.onProgress !== undefined && inputKind === "file") {
      yield* Effect.forkScoped(Effect.flatMap(Effect.option(Files.countLines(fs, input)), Option.match({
        onNone: () => Effect.void,
        onSome: counted
      })))
    }

    const file = yield* fs.open(output, { flag: "a" }).pipe(Effect.mapError(outputError(options.output)))
    let handed = 0
    // The lines read, and whether the reader reached the input's end before any stop.
    let read = 0
    let readToEnd = false
    const append = Files.appender(file, encodeOutcome, (outcome: Outcome) => {
      tally = record(tally, outcome)
      return report(tally)
    })

    // The first failure of the run's files; it stops the run (see `BatchAborted`): at once for the
    // output (the answers on the wire could not be written), after a drain for the input.
    const failure = yield* Deferred.make<{ readonly file: "input" | "output"; readonly error: BatchError }>()
    const abort = (file: "input" | "output", error: BatchError) =>
      Effect.zipRight(Deferred.succeed(failure, { file, error }), file === "output" ? stops.stopNow : stops.stop)
    const settle = (outcome: Outcome): Effect.Effect<void> => {
      handed++
      return Effect.catchAll(append(outcome), (error) => abort("output", outputError(options.output)(error)))
    }
    const readAhead = yield* readAheadOf(options.concurrency)
    // A line starts only while the run is not stopped; once its answer is in, it is written
    // whatever happens, so an interrupt never loses an answer nor tears a line.
    const handle = (work: Send, call: Call) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(
          Deferred.isDone(stopped),
          (isStopped) => isStopped ? Effect.void : Effect.flatMap(restore(send(work, call)), settle)
        )
      )
    // Lines sent run in fibers of their own, at most the read-ahead at once; the others are
    // settled by the reader.
    const processing = Effect.scoped(Effect.gen(function*() {
      const sending = yield* FiberSet.make<void, never>()
      const take = (work: Work): Effect.Effect<void> => {
        switch (work._tag) {
          case "Skip":
            // Nothing to write: counted at once, without the writer (a resume skips millions).
            return Effect.suspend(() => report(tally = recordSkipped(tally)))
          case "Reject":
            return Effect.suspend(() => settle(written(Lines.rejected(nextId(), work.customId, work.error))))
          case "Send":
            // Its fiber leaves the read-ahead and the calls under way however it ends.
            return Effect.zipRight(
              readAhead.enter,
              Effect.suspend(() => {
                const call = calls.start()
                return Effect.map(FiberSet.run(sending, handle(work, call)), (fiber) => {
                  call.fiber = fiber
                  fiber.addObserver(() => {
                    calls.left(call)
                    readAhead.leave()
                  })
                })
              })
            )
        }
      }
      yield* Files.lines(fs, input, inputKind).pipe(
        Stream.interruptWhen(Deferred.await(stopped)),
        Stream.runForEach((line) => {
          read++
          return take(decide(Lines.parseInputLine(line)))
        }),
        Effect.zipRight(Effect.unlessEffect(
          Effect.suspend(() => {
            readToEnd = true
            return counted(read)
          }),
          Deferred.isDone(stopped)
        )),
        Effect.catchAll((error) => abort("input", inputError(input)(error)))
      )
      yield* Effect.raceFirst(readAhead.idle, FiberSet.join(sending))
    }))
    // As the drain ends, the calls still on the wire are counted, then dropped with the processing.
    const drainEnds = Effect.zipRight(
      Deferred.await(stopped),
      Effect.raceFirst(Effect.sleep(options.drainTimeout ?? defaultDrainTimeout), Deferred.await(stops.stoppedNow))
    ).pipe(Effect.zipRight(Effect.sync(() => calls.onTheWire)))
    const dropped = yield* Effect.raceFirst(Effect.as(processing, 0), drainEnds)

    const interrupted = yield* Deferred.isDone(stopped)
    // Each answered id a line of the input has is skipped once (a later line with it is a duplicate).
    const unmatched = interrupted ? 0 : alreadyAnswered.size - tally.skipped
    const complete = readToEnd && read === tally.succeeded + tally.failed + tally.skipped
    const polled = yield* Deferred.poll(failure)
    const failed = Option.isSome(polled) ? yield* polled.value : undefined
    const summary = summarize(tally, before, yield* readings, yield* poolStatuses, interrupted, complete, dropped, unmatched, failed?.file)
    if (failed === undefined) return summary
    return yield* new BatchAborted({
      error: failed.error,
      summary,
      unwritten: handed - tally.succeeded - tally.failed
    })
  }))

/**
 * `stopped` completes with `stop` or `stopNow` (the options' or the run's own), and then `calls`
 * stop; `stoppedNow` completes with `stopNow`. The options' are watched for the scope.
 */
const watchStops = (options: Pick<Options, "stop" | "stopNow">, calls: Calls) =>
  Effect.gen(function*() {
    const stopped = yield* Deferred.make<void>()
    const stoppedNow = yield* Deferred.make<void>()
    const stop = Effect.zipRight(Deferred.succeed(stopped, undefined), Effect.sync(() => calls.stop()))
    const stopNow = Effect.zipRight(stop, Deferred.succeed(stoppedNow, undefined))
    if (options.stop !== undefined) yield* Effect.forkScoped(Effect.zipRight(options.stop, stop))
    if (options.stopNow !== undefined) yield* Effect.forkScoped(Effect.zipRight(options.stopNow, stopNow))
    return { stopped, stoppedNow, stop: Effect.asVoid(stop), stopNow: Effect.asVoid(stopNow) }
  })

/**
 * The summary as data, the shape `writeSummary` writes: snake_case figures of the whole run at
 * the top level, and the same spend figures (with the pool's state of the account, when there is
 * a pool) under `accounts.<name>`.
 *
 * @since 0.1.0
 * @category models
 */
export type SummaryJson = SummaryInternal.SummaryJson

/**
 * @since 0.1.0
 */
export const toJson: (summary: Summary) => SummaryJson = SummaryInternal.toJson

/**
 * Writes `toJson(summary)` to `path` as indented JSON, replacing the file whole: a reader (a
 * script watching for it) sees the previous summary or this one, never an empty or partial file.
 * A symlink at `path` stays one, to the new summary; the file's mode is kept. It is written
 * beside the file (`<path>.<pid>.writing`, which a crash meanwhile leaves behind) and renamed over
 * it, so the file's directory must be writable; the new file is its writer's, and a hard link to
 * the old one keeps the old.
 *
 * @since 0.1.0
 */
export const writeSummary = (path: string, summary: Summary): Effect.Effect<void, BatchError, FileSystem.FileSystem> =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    Effect.flatMap(Files.resolveOutput(fs, path), (real) =>
      Files.replaceFile(
        fs,
        real,
        `${real}.${process.pid}.writing`,
        (file) => Files.writeText(file, `${JSON.stringify(toJson(summary), null, 2)}\n`)
      ))).pipe(
      Effect.mapError((error) => new BatchError({ file: "summary", path, message: `cannot write the summary ${path}: ${describe(error)}` }))
    )

/**
 * A summary as a few human-readable lines, one per account among them.
 *
 * @since 0.1.0
 */
export const formatSummary: (summary: Summary) => string = SummaryInternal.format
