/**
 * The Simulator's server: accounts and their caps, answers derived from requests, seeded
 * faults, and the `node:http` handler that speaks DeepSeek's wire (see `Simulator.ts`).
 *
 * State is plain mutable data: handlers run as fibers on one JavaScript thread and change it
 * only in synchronous steps, so no update can interleave with another.
 */
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FiberSet from "effect/FiberSet"
import * as Hash from "effect/Hash"
import * as Random from "effect/Random"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import type { ChatCompletionChunk, Message, Usage } from "../ChatSchema.js"
import { ChatCompletionRequest, contentText } from "../ChatSchema.js"
import type * as Simulator from "../Simulator.js"
import * as SchemaIssues from "./schemaIssues.js"
import * as Wire from "./wire.js"

/** @internal */
export const allFaults: ReadonlyArray<Simulator.Fault> = [
  "serverError",
  "overloaded",
  "dropBeforeResponse",
  "dropWhileQueued",
  "cut",
  "blank",
  "insufficientResource",
  "errorEvent",
  "stall",
  // Added last, in the order they came: a seed's draws of the faults before them keep their slices.
  "reset",
  "stallWhileQueued"
]

/** @internal */
export const defaultKey = "sk-sim-default"

// --- Answers and usage ----------------------------------------------------------------------

const charsPerToken = 4

/** @internal */
export const tokens = (text: string): number => Math.ceil(text.length / charsPerToken)

const textOf = (message: Message): string => contentText(message.content)

/** What the simulator answers to a request. @internal */
export interface Answer {
  readonly marker: string
  readonly content: string
  readonly reasoning: string | undefined
  readonly promptTokens: number
  /** `length` when `max_tokens` cut the answer. */
  readonly finishReason: "stop" | "length"
}

/** @internal */
export const answerOf = (request: ChatCompletionRequest): Answer => {
  const lastUser = request.messages.filter((message) => message.role === "user").at(-1)
  const marker = lastUser === undefined ? "" : textOf(lastUser)
  const reasoning = request.thinking?.type === "enabled" ? `think:${marker}` : undefined
  const content = `echo:${marker}`
  const promptTokens = tokens(request.messages.map(textOf).join(""))
  const max = request.max_tokens
  if (max === undefined || max === null || tokens(reasoning ?? "") + tokens(content) <= max) {
    return { marker, content, reasoning, promptTokens, finishReason: "stop" }
  }
  // Reasoning comes first and counts against `max_tokens` too: the tokens it leaves go to the content.
  const keptReasoning = reasoning?.slice(0, max * charsPerToken)
  return {
    marker,
    content: content.slice(0, (max - tokens(keptReasoning ?? "")) * charsPerToken),
    reasoning: keptReasoning,
    promptTokens,
    finishReason: "length"
  }
}

/** The usage reported (and billed) for the given reasoning and content. @internal */
export const usageOf = (promptTokens: number, cacheHitRatio: number, reasoning: string, content: string): Usage =>
  Wire.usage({
    promptTokens,
    completionTokens: tokens(reasoning) + tokens(content),
    cacheHitTokens: Math.floor(promptTokens * cacheHitRatio),
    reasoningTokens: tokens(reasoning)
  })

// --- Limits, delays, faults -----------------------------------------------------------------

/**
 * A cap at `elapsedMs`. One that is no number of at least 0 (`Infinity`: no cap) is refused, not
 * read as no cap (`NaN` admits every request): a load curve indexed past its end, say.
 *
 * @internal
 */
export const limitAt = (limit: Simulator.Limit, elapsedMs: number): number => {
  const value: unknown = typeof limit === "number"
    ? limit
    : typeof limit === "function"
    ? limit(elapsedMs)
    : limit.reduce<number | undefined>(
      (current, step) => current === undefined || step.atMs <= elapsedMs ? step.limit : current,
      undefined
    ) ?? 0
  if (typeof value !== "number" || !(value >= 0)) {
    throw new TypeError(`Simulator: the limit at ${elapsedMs} ms is ${String(value)}, not a number of requests of at least 0`)
  }
  return Math.floor(value)
}

const millis = (duration: Duration.DurationInput): number => Duration.toMillis(duration)

/** @internal */
const queueDelayMs = (delay: Simulator.QueueDelay, load: Simulator.Load): number => {
  if (typeof delay === "function") return optionMillis(`the queueDelay of ${load.model}`, delay(load))
  if (typeof delay === "object" && "min" in delay) {
    const min = millis(delay.min)
    return min + (millis(delay.max) - min) * load.random
  }
  return millis(delay)
}

/** The fault whose slice of [0, 1) holds `draw`, slices laid out in `allFaults` order. @internal */
export const pickFault = (
  probabilities: Readonly<Partial<Record<Simulator.Fault, number>>>,
  draw: number
): Simulator.Fault | undefined => {
  let bound = 0
  for (const fault of allFaults) {
    bound += probabilities[fault] ?? 0
    if (draw < bound) return fault
  }
  return undefined
}

const hasText = (chunk: ChatCompletionChunk): boolean =>
  chunk.choices.some((choice) => Boolean(choice.delta.content) || Boolean(choice.delta.reasoning_content))

/** How many chunks an early-ending stream sends: up to half of its text pieces, rounded up. @internal */
const cutPoint = (chunks: ReadonlyArray<ChatCompletionChunk>): number => {
  const withText = chunks.flatMap((chunk, index) => hasText(chunk) ? [index] : [])
  return (withText[Math.ceil(withText.length / 2) - 1] ?? 0) + 1
}

/** DeepSeek echoes a rejected key masked to its last four characters. @internal */
export const maskKey = (key: string): string => key.length > 8 ? `****${key.slice(-4)}` : "****"

// --- Caps -----------------------------------------------------------------------------------

const defaultLimit = 16

const isPerModel = (limit: Simulator.Limit | Simulator.ModelLimits): limit is Simulator.ModelLimits =>
  typeof limit === "object" && !Array.isArray(limit)

/** A record's own entry: a model named `constructor` finds no cap on `Object.prototype`. */
const entry = <A>(record: Readonly<Record<string, A>>, key: string): A | undefined =>
  Object.hasOwn(record, key) ? record[key] : undefined

/** A model's own cap under per-model limits: its entry, else the `"*"` entry, else the server's cap for it. */
const modelCapIn = (
  limits: Simulator.ModelLimits,
  model: string,
  serverLimit: Simulator.Limit | Simulator.ModelLimits
): Simulator.Limit =>
  entry(limits, model) ?? entry(limits, "*") ??
    (isPerModel(serverLimit) ? modelCapIn(serverLimit, model, defaultLimit) : serverLimit)

// --- State ----------------------------------------------------------------------------------

interface Settings {
  readonly queueDelay: Simulator.QueueDelay
  readonly keepAliveMs: number
  readonly scheduleTimeoutMs: number
  readonly chunkDelayMs: number
  readonly pieceSize: number
  readonly cacheHitRatio: number
  readonly idleTimeoutMs: number
  readonly dropAfterKeepAlives: number
  readonly retryAfterMs: number | undefined
  readonly seed: string
}

/** The counters of an account, or of one model of an account. */
interface Tally {
  requests: number
  accepted: number
  rateLimited: number
  completed: number
  inFlight: number
  maxInFlight: number
  readonly billed: { prompt: number; completion: number; cacheHit: number; reasoning: number }
  readonly timeline: Array<Simulator.Sample>
}

interface Model extends Tally {
  readonly name: string
  /** Its own cap; `undefined` under a plain account `limit`, which it shares. */
  cap: Simulator.Limit | undefined
}

interface Account extends Tally {
  readonly name: string
  readonly keys: ReadonlyArray<string>
  /** Account-wide caps, a request must be under every one: a plain `limit`, `accountLimit`. */
  caps: ReadonlyArray<Simulator.Limit>
  /** The own cap of a model met for the first time. */
  readonly capOf: (model: string) => Simulator.Limit | undefined
  readonly models: Map<string, Model>
  balance: number
}

interface State {
  readonly settings: Settings
  readonly accounts: ReadonlyMap<string, Account>
  readonly byKey: ReadonlyMap<string, Account>
  readonly aliases: Readonly<Record<string, string>>
  /** The serving names it serves; `undefined`: every name. */
  readonly models: ReadonlySet<string> | undefined
  readonly nowMs: () => number
  readonly elapsedMs: () => number
  readonly totals: {
    requests: number
    accepted: number
    rateLimited: number
    completed: number
    unscheduled: number
    clientClosed: number
    connections: number
  }
  readonly byStatus: Record<number, number>
  readonly injected: Partial<Record<Simulator.Fault, number>>
  readonly completions: Array<Simulator.Completion>
  /** Accepted attempts per request body (by hash), so the n-th attempt of a body draws the same. */
  readonly attemptsByBody: Map<number, number>
  /** The attempt a response serves, finished before its last byte so stats are current when a client reads them. */
  readonly serving: WeakMap<Http.ServerResponse, Attempt>
  /** Responses the server dropped on purpose: their close is not the client's doing. */
  readonly dropped: WeakSet<Http.ServerResponse>
  faults: Simulator.Faults
  scriptCursor: number
}

/**
 * `duration` of the option `name` in milliseconds. One that is not a duration (from JavaScript or
 * an environment variable: `"50ms"`) is refused as the server is made, named, rather than failing
 * every request it would have timed.
 */
const optionMillis = (name: string, duration: Duration.DurationInput): number => {
  const decoded = Duration.decodeUnknown(duration)
  if (decoded._tag === "None") {
    throw new TypeError(
      `Simulator: ${name} is ${JSON.stringify(duration)}, not a duration (a number of milliseconds, or a string such as "50 millis")`
    )
  }
  return Duration.toMillis(decoded.value)
}

const notValid = (name: string, value: unknown, expected: string) =>
  new TypeError(`Simulator: ${name} is ${typeof value === "number" ? value : JSON.stringify(value)}, not ${expected}`)

/** A whole number of at least `least`: a piece size of 0 would loop for good. */
const wholeOption = (name: string, value: number, least: number): number => {
  if (!Number.isInteger(value) || value < least) throw notValid(name, value, `a whole number of at least ${least}`)
  return value
}

const ratioOption = (name: string, value: number): number => {
  if (!(value >= 0 && value <= 1)) throw notValid(name, value, "a share between 0 and 1")
  return value
}

/** A duration sent on the wire (`Retry-After`), so finite. */
const finiteMillis = (name: string, duration: Duration.DurationInput): number => {
  const ms = optionMillis(name, duration)
  if (!Number.isFinite(ms)) throw notValid(name, duration, "a finite duration")
  return ms
}

/** A fixed delay or a range, in milliseconds (checked as the server is made); a function of the load as it is. */
const queueDelayOf = (delay: Simulator.QueueDelay): Simulator.QueueDelay =>
  typeof delay === "function"
    ? delay
    : typeof delay === "object" && "min" in delay
    ? { min: optionMillis("queueDelay.min", delay.min), max: optionMillis("queueDelay.max", delay.max) }
    : optionMillis("queueDelay", delay)

const settingsOf = (options: Simulator.Options): Settings => ({
  queueDelay: queueDelayOf(options.queueDelay ?? { min: 0, max: 20 }),
  keepAliveMs: optionMillis("keepAliveInterval", options.keepAliveInterval ?? 10),
  scheduleTimeoutMs: optionMillis("scheduleTimeout", options.scheduleTimeout ?? Duration.minutes(10)),
  chunkDelayMs: optionMillis("chunkDelay", options.chunkDelay ?? 1),
  pieceSize: wholeOption("pieceSize", options.pieceSize ?? 8, 1),
  cacheHitRatio: ratioOption("cacheHitRatio", options.cacheHitRatio ?? 0),
  idleTimeoutMs: optionMillis("idleTimeout", options.idleTimeout ?? Duration.seconds(5)),
  dropAfterKeepAlives: wholeOption("dropAfterKeepAlives", options.dropAfterKeepAlives ?? 2, 0),
  retryAfterMs: options.retryAfter === undefined ? undefined : finiteMillis("retryAfter", options.retryAfter),
  seed: String(options.seed ?? 0)
})

const emptyTally = (): Tally => ({
  requests: 0,
  accepted: 0,
  rateLimited: 0,
  completed: 0,
  inFlight: 0,
  maxInFlight: 0,
  billed: { prompt: 0, completion: 0, cacheHit: 0, reasoning: 0 },
  timeline: []
})

/** Refuses, as the server is made, a fixed cap or step that is no number of at least 0. */
const checkLimits = (limit: Simulator.Limit | Simulator.ModelLimits): void => {
  if (isPerModel(limit)) return Object.values(limit).forEach(checkLimits)
  if (typeof limit === "function") return
  for (const value of typeof limit === "number" ? [limit] : limit.map((step) => step.limit)) limitAt(value, 0)
}

const accountOf = (
  name: string,
  options: Simulator.AccountOptions,
  serverLimit: Simulator.Limit | Simulator.ModelLimits
): Account => {
  const limit = options.limit ?? serverLimit
  checkLimits(limit)
  if (options.accountLimit !== undefined) checkLimits(options.accountLimit)
  const shared = isPerModel(limit) ? [] : [limit]
  return {
    ...emptyTally(),
    name,
    keys: options.keys,
    caps: options.accountLimit === undefined ? shared : [...shared, options.accountLimit],
    capOf: (model) => isPerModel(limit) ? modelCapIn(limit, model, serverLimit) : undefined,
    models: new Map(),
    balance: options.balance ?? 100
  }
}

const initialState = (options: Simulator.Options, clock: Clock.Clock): State => {
  const startedAt = clock.unsafeCurrentTimeMillis()
  const accounts = new Map(
    Object.entries(options.accounts ?? { default: { keys: [defaultKey] } }).map(([name, account]) =>
      [name, accountOf(name, account, options.limit ?? defaultLimit)] as const
    )
  )
  return {
    settings: settingsOf(options),
    accounts,
    byKey: accountsByKey(accounts),
    aliases: options.aliases ?? {},
    models: servedModels(options),
    nowMs: () => clock.unsafeCurrentTimeMillis(),
    elapsedMs: () => clock.unsafeCurrentTimeMillis() - startedAt,
    totals: { requests: 0, accepted: 0, rateLimited: 0, completed: 0, unscheduled: 0, clientClosed: 0, connections: 0 },
    byStatus: {},
    injected: {},
    completions: [],
    attemptsByBody: new Map(),
    serving: new WeakMap(),
    dropped: new WeakSet(),
    faults: checkedFaults(options.faults ?? {}),
    scriptCursor: 0
  }
}

/** The account of each key; a key in two accounts is refused (its requests would all go to one). */
const accountsByKey = (accounts: ReadonlyMap<string, Account>): ReadonlyMap<string, Account> => {
  const byKey = new Map<string, Account>()
  for (const account of accounts.values()) {
    for (const key of account.keys) {
      const other = byKey.get(key)
      if (other !== undefined) {
        throw new TypeError(`Simulator: accounts ${other.name} and ${account.name} have a key in common; a key is one account's`)
      }
      byKey.set(key, account)
    }
  }
  return byKey
}

/** `models`, refused when a name is empty or an alias names a model it leaves out (never served). */
const servedModels = (options: Simulator.Options): ReadonlySet<string> | undefined => {
  if (options.models === undefined) return undefined
  const empty = options.models.find((name) => typeof name !== "string" || name === "")
  if (empty !== undefined) throw new TypeError(`Simulator: models holds ${JSON.stringify(empty)}, not a model name`)
  const models = new Set(options.models)
  const stray = Object.entries(options.aliases ?? {}).find(([, serving]) => !models.has(serving))
  if (stray !== undefined) {
    const [alias, serving] = stray.map((name) => JSON.stringify(name))
    throw new TypeError(`Simulator: the alias ${alias} names ${serving}, a model not in models`)
  }
  return models
}

const knownFaults: ReadonlySet<string> = new Set(allFaults)

/**
 * `faults`, refused when a name is no fault (a typo would serve a clean answer counted as a
 * fault) or the probabilities are no shares summing to at most 1.
 */
const checkedFaults = (faults: Simulator.Faults): Simulator.Faults => {
  const unknown = [...(faults.script ?? []).filter((name) => name !== "none"), ...Object.keys(faults.probabilities ?? {})]
    .find((name) => !knownFaults.has(name))
  if (unknown !== undefined) {
    throw new TypeError(
      `Simulator: ${JSON.stringify(unknown)} is no fault; the faults are ${allFaults.join(", ")} (and "none" in a script)`
    )
  }
  const shares = Object.values(faults.probabilities ?? {})
  if (shares.some((share) => !(share >= 0)) || shares.reduce((sum, share) => sum + share, 0) > 1 + 1e-9) {
    throw new TypeError(`Simulator: fault probabilities ${JSON.stringify(faults.probabilities)} are not shares summing to at most 1`)
  }
  return faults
}

/** The serving model of a requested name. */
const servingModel = (state: State, requested: string): string => entry(state.aliases, requested) ?? requested

/** The account's counters for a serving model, made when it is first asked for. */
const modelOf = (account: Account, name: string): Model => {
  const known = account.models.get(name)
  if (known !== undefined) return known
  const model: Model = { ...emptyTally(), name, cap: account.capOf(name) }
  account.models.set(name, model)
  return model
}

/** The lowest account-wide cap at `t`; `Infinity` without one. */
const accountLimitAt = (account: Account, t: number): number =>
  Math.min(...account.caps.map((cap) => limitAt(cap, t)))

/** A model's cap at `t`, given its account's: each limit function is read once per moment. */
const modelLimitAt = (model: Model, accountLimit: number, t: number): number =>
  model.cap === undefined ? accountLimit : limitAt(model.cap, t)

interface Limits {
  readonly account: number
  readonly model: number
}

const limitsAt = (account: Account, model: Model, t: number): Limits => {
  const accountLimit = accountLimitAt(account, t)
  return { account: accountLimit, model: modelLimitAt(model, accountLimit, t) }
}

const record = (tally: Tally, t: number, limit: number): void => {
  tally.timeline.push({ t, limit, inFlight: tally.inFlight })
}

const sample = (state: State, account: Account, model: Model): void => {
  const t = state.elapsedMs()
  const limits = limitsAt(account, model, t)
  record(account, t, limits.account)
  record(model, t, limits.model)
}

/** Samples the account and each of its models, after a change of caps. */
const sampleAll = (state: State, account: Account): void => {
  const t = state.elapsedMs()
  const accountLimit = accountLimitAt(account, t)
  record(account, t, accountLimit)
  for (const model of account.models.values()) record(model, t, modelLimitAt(model, accountLimit, t))
}

const occupy = (tally: Tally): void => {
  tally.accepted++
  tally.inFlight++
  tally.maxInFlight = Math.max(tally.maxInFlight, tally.inFlight)
}

/** Takes a slot of the account and of the model if both are under their caps. */
const admit = (state: State, account: Account, model: Model): boolean => {
  const t = state.elapsedMs()
  const limits = limitsAt(account, model, t)
  if (account.inFlight >= limits.account || model.inFlight >= limits.model) return false
  state.totals.accepted++
  occupy(account)
  occupy(model)
  record(account, t, limits.account)
  record(model, t, limits.model)
  return true
}

const bill = (tally: Tally, usage: Usage): void => {
  tally.billed.prompt += usage.prompt_tokens
  tally.billed.completion += usage.completion_tokens
  tally.billed.cacheHit += usage.prompt_cache_hit_tokens ?? 0
  tally.billed.reasoning += usage.completion_tokens_details?.reasoning_tokens ?? 0
}

const statsOf = (tally: Tally, limit: number): Simulator.ModelStats => ({
  requests: tally.requests,
  accepted: tally.accepted,
  rateLimited: tally.rateLimited,
  completed: tally.completed,
  limit,
  inFlight: tally.inFlight,
  maxInFlight: tally.maxInFlight,
  billed: { ...tally.billed },
  timeline: [...tally.timeline]
})

const accountStatsOf = (account: Account, t: number): Simulator.AccountStats => {
  const accountLimit = accountLimitAt(account, t)
  return {
    ...statsOf(account, accountLimit),
    byModel: Object.fromEntries(
      [...account.models.values()].map((model) => [model.name, statsOf(model, modelLimitAt(model, accountLimit, t))])
    )
  }
}

const snapshot = (state: State): Simulator.Stats => ({
  ...state.totals,
  byStatus: { ...state.byStatus },
  faults: { ...state.injected },
  accounts: Object.fromEntries(
    [...state.accounts.values()].map((account) => [account.name, accountStatsOf(account, state.elapsedMs())])
  )
})

// --- Attempts -------------------------------------------------------------------------------

/** An accepted request, holding a slot of its account and of its model until it is finished. */
interface Attempt {
  readonly id: string
  readonly createdMs: number
  readonly account: Account
  readonly model: Model
  readonly request: ChatCompletionRequest
  readonly answer: Answer
  readonly fault: Simulator.Fault | undefined
  readonly queueDelayMs: number
  /** The generated text delivered so far: the base of billing. */
  readonly sent: { reasoning: string; content: string }
  finished: boolean
}

const nextFault = (state: State, draw: number): Simulator.Fault | undefined => {
  const scripted = state.faults.script?.[state.scriptCursor++]
  if (scripted === undefined) return pickFault(state.faults.probabilities ?? {}, draw)
  return scripted === "none" ? undefined : scripted
}

const startAttempt = (
  state: State,
  account: Account,
  model: Model,
  request: ChatCompletionRequest,
  body: string
): Effect.Effect<Attempt> =>
  Effect.gen(function*() {
    const fingerprint = Hash.string(body)
    const previous = state.attemptsByBody.get(fingerprint) ?? 0
    state.attemptsByBody.set(fingerprint, previous + 1)
    const random = Random.make(`${state.settings.seed}/${previous}/${fingerprint}`)
    const faultDraw = yield* random.next
    const delayDraw = yield* random.next
    const fault = nextFault(state, faultDraw)
    if (fault !== undefined) state.injected[fault] = (state.injected[fault] ?? 0) + 1
    const elapsedMs = state.elapsedMs()
    const limits = limitsAt(account, model, elapsedMs)
    return {
      id: `chatcmpl-sim-${state.totals.accepted}`,
      createdMs: state.nowMs(),
      account,
      model,
      request,
      answer: answerOf(request),
      fault,
      queueDelayMs: queueDelayMs(state.settings.queueDelay, {
        account: account.name,
        inFlight: account.inFlight,
        limit: limits.account,
        model: model.name,
        modelInFlight: model.inFlight,
        modelLimit: limits.model,
        elapsedMs,
        random: delayDraw
      }),
      sent: { reasoning: "", content: "" },
      finished: false
    }
  })

/** Releases the slot and bills what was delivered, once. */
/** Gives back the slots `admit` took. */
const vacate = (state: State, account: Account, model: Model): void => {
  account.inFlight--
  model.inFlight--
  sample(state, account, model)
}

const finish = (state: State, attempt: Attempt): void => {
  if (attempt.finished) return
  attempt.finished = true
  const { account, answer, model, sent } = attempt
  vacate(state, account, model)
  if (sent.reasoning !== "" || sent.content !== "") {
    const usage = usageOf(answer.promptTokens, state.settings.cacheHitRatio, sent.reasoning, sent.content)
    bill(account, usage)
    bill(model, usage)
  }
}

const markSent = (attempt: Attempt, reasoning: string, content: string): void => {
  attempt.sent.reasoning += reasoning
  attempt.sent.content += content
}

const complete = (state: State, attempt: Attempt): void => {
  state.totals.completed++
  attempt.account.completed++
  attempt.model.completed++
  state.completions.push({
    id: attempt.id,
    account: attempt.account.name,
    model: attempt.model.name,
    marker: attempt.answer.marker,
    stream: attempt.request.stream === true
  })
}

const generationOf = (state: State, attempt: Attempt): Wire.Generation => {
  const { answer, fault } = attempt
  const cut = fault === "insufficientResource"
  const content = cut ? answer.content.slice(0, Math.ceil(answer.content.length / 2)) : answer.content
  return {
    id: attempt.id,
    model: attempt.model.name,
    content,
    reasoningContent: answer.reasoning,
    finishReason: cut ? "insufficient_system_resource" : answer.finishReason,
    usage: usageOf(answer.promptTokens, state.settings.cacheHitRatio, answer.reasoning ?? "", content),
    created: Math.floor(attempt.createdMs / 1000)
  }
}

// --- HTTP -----------------------------------------------------------------------------------

const writeHead = (state: State, res: Http.ServerResponse, status: number, headers: Http.OutgoingHttpHeaders) => {
  state.byStatus[status] = (state.byStatus[status] ?? 0) + 1
  res.writeHead(status, headers)
}

const write = (res: Http.ServerResponse, text: string): void => {
  if (!res.destroyed && !res.writableEnded) res.write(text)
}

const settle = (state: State, res: Http.ServerResponse): void => {
  const attempt = state.serving.get(res)
  if (attempt !== undefined) finish(state, attempt)
}

const end = (state: State, res: Http.ServerResponse, text?: string): void => {
  settle(state, res)
  if (!res.destroyed && !res.writableEnded) res.end(text)
}

const drop = (state: State, res: Http.ServerResponse): void => {
  settle(state, res)
  state.dropped.add(res)
  res.destroy()
}

/** Writes `text`, then drops the connection once what was written is sent: a network cut after content. */
const resetAfter = (state: State, res: Http.ServerResponse, text: string): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (res.destroyed || res.writableEnded) return resume(Effect.void)
    res.write(text, () => {
      drop(state, res)
      resume(Effect.void)
    })
  })

const respondJson = (
  state: State,
  res: Http.ServerResponse,
  status: number,
  body: string,
  headers: Http.OutgoingHttpHeaders = {}
): Effect.Effect<void> =>
  Effect.sync(() => {
    writeHead(state, res, status, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
      ...headers
    })
    end(state, res, body)
  })

const retryAfterHeaders = (settings: Settings): Http.OutgoingHttpHeaders =>
  settings.retryAfterMs === undefined ? {} : {
    "retry-after": String(Math.ceil(settings.retryAfterMs / 1000)),
    "retry-after-ms": String(settings.retryAfterMs)
  }

/** A "try again later" error (429, 503), with the configured `Retry-After` when there is one. */
const respondRetryLater = (
  state: State,
  res: Http.ServerResponse,
  status: number,
  ...error: Parameters<typeof Wire.errorBody>
): Effect.Effect<void> => respondJson(state, res, status, Wire.errorBody(...error), retryAfterHeaders(state.settings))

const upstreamError = Wire.errorBody("Simulated upstream error", "server_error", "internal_error")

const readBody = (req: Http.IncomingMessage): Effect.Effect<string> =>
  Effect.async<string>((resume) => {
    const parts: Array<Buffer> = []
    req.on("data", (part: Buffer) => parts.push(part))
    req.on("end", () => resume(Effect.succeed(Buffer.concat(parts).toString("utf8"))))
  })

const bearer = (req: Http.IncomingMessage): string | undefined =>
  /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? "")?.[1]

/** The account of the request's key, or a 401 sent and `undefined`. */
const authenticate = (state: State, req: Http.IncomingMessage, res: Http.ServerResponse) => {
  const key = bearer(req)
  const account = key === undefined ? undefined : state.byKey.get(key)
  if (account !== undefined) return Effect.succeed(account)
  const message = key === undefined
    ? "Authentication Fails, no api key provided"
    : `Authentication Fails, Your api key: ${maskKey(key)} is invalid`
  return Effect.as(
    respondJson(state, res, 401, Wire.errorBody(message, "authentication_error", "invalid_request_error")),
    undefined
  )
}

const balance = (state: State, req: Http.IncomingMessage, res: Http.ServerResponse) =>
  Effect.flatMap(authenticate(state, req, res), (account) => {
    if (account === undefined) return Effect.void
    const usd = account.balance.toFixed(2)
    return respondJson(
      state,
      res,
      200,
      JSON.stringify({
        is_available: account.balance > 0,
        balance_infos: [{ currency: "USD", total_balance: usd, granted_balance: "0.00", topped_up_balance: usd }]
      })
    )
  })

/** Keeps the connection busy with `line` every interval, as DeepSeek does while a request waits. */
const keepAlive = (state: State, res: Http.ServerResponse, line: string): Effect.Effect<void> =>
  Effect.zipRight(Effect.sleep(state.settings.keepAliveMs), Effect.sync(() => write(res, line)))

/**
 * Waits for the request to be scheduled (then `workMs` more) sending keep-alives; or drops it
 * (`dropWhileQueued`) or falls silent (`stallWhileQueued`) after a few, or closes it unanswered
 * when its delay reaches the schedule timeout.
 */
const waitInQueue = (
  state: State,
  attempt: Attempt,
  res: Http.ServerResponse,
  line: string,
  workMs: number
): Effect.Effect<boolean> => {
  const { dropAfterKeepAlives, scheduleTimeoutMs } = state.settings
  if (attempt.fault === "dropWhileQueued" || attempt.fault === "stallWhileQueued") {
    const fault = attempt.fault === "dropWhileQueued" ? Effect.sync(() => drop(state, res)) : Effect.never
    return Effect.replicateEffect(keepAlive(state, res, line), dropAfterKeepAlives, { discard: true }).pipe(
      Effect.zipRight(fault),
      Effect.as(false)
    )
  }
  const wait = attempt.queueDelayMs >= scheduleTimeoutMs
    ? Effect.sleep(scheduleTimeoutMs).pipe(
      Effect.zipRight(Effect.sync(() => {
        state.totals.unscheduled++
        end(state, res)
      })),
      Effect.as(false)
    )
    : Effect.as(Effect.sleep(attempt.queueDelayMs + workMs), true)
  return Effect.raceFirst(wait, Effect.forever(keepAlive(state, res, line)))
}

const startResponse = (state: State, res: Http.ServerResponse, contentType: string) =>
  Effect.sync(() => {
    writeHead(state, res, 200, { "content-type": contentType, "cache-control": "no-cache" })
    res.flushHeaders()
  })

const serveCompletion = (state: State, attempt: Attempt, res: Http.ServerResponse) =>
  Effect.gen(function*() {
    const generation = generationOf(state, attempt)
    const body = JSON.stringify(Wire.completion(generation))
    const workMs = Wire.chunks(generation, state.settings.pieceSize).length * state.settings.chunkDelayMs
    yield* startResponse(state, res, "application/json")
    if (!(yield* waitInQueue(state, attempt, res, "\n", workMs))) return
    switch (attempt.fault) {
      case "blank":
        return end(state, res)
      case "stall":
        return yield* Effect.never
      case "errorEvent":
        return end(state, res, upstreamError)
      case "cut":
      case "reset": {
        markSent(attempt, generation.reasoningContent ?? "", generation.content)
        const half = body.slice(0, Math.floor(body.length / 2))
        return attempt.fault === "cut" ? end(state, res, half) : yield* resetAfter(state, res, half)
      }
      default:
        markSent(attempt, generation.reasoningContent ?? "", generation.content)
        if (attempt.fault === undefined) complete(state, attempt)
        end(state, res, body)
    }
  })

const sendChunk = (attempt: Attempt, res: Http.ServerResponse, chunk: ChatCompletionChunk): void => {
  write(res, Wire.sseData(chunk))
  const delta = chunk.choices[0]?.delta
  markSent(attempt, delta?.reasoning_content ?? "", delta?.content ?? "")
}

const endsEarly = (fault: Simulator.Fault | undefined): boolean =>
  fault === "cut" || fault === "reset" || fault === "errorEvent" || fault === "stall"

const serveStream = (state: State, attempt: Attempt, res: Http.ServerResponse) =>
  Effect.gen(function*() {
    yield* startResponse(state, res, "text/event-stream; charset=utf-8")
    if (!(yield* waitInQueue(state, attempt, res, Wire.sseKeepAlive, 0))) return
    if (attempt.fault === "blank") return end(state, res)
    const chunks = Wire.chunks(generationOf(state, attempt), state.settings.pieceSize)
    yield* Effect.forEach(
      endsEarly(attempt.fault) ? chunks.slice(0, cutPoint(chunks)) : chunks,
      (chunk, index) =>
        Effect.zipRight(
          index === 0 ? Effect.void : Effect.sleep(state.settings.chunkDelayMs),
          Effect.sync(() => sendChunk(attempt, res, chunk))
        ),
      { discard: true }
    )
    switch (attempt.fault) {
      case "cut":
        return end(state, res)
      case "reset":
        return yield* resetAfter(state, res, "")
      case "errorEvent":
        return end(state, res, Wire.sseData(upstreamError))
      case "stall":
        return yield* Effect.never
      default:
        if (attempt.fault === undefined) complete(state, attempt)
        end(state, res, Wire.sseDone)
    }
  })

const serve = (state: State, attempt: Attempt, res: Http.ServerResponse): Effect.Effect<void> => {
  switch (attempt.fault) {
    case "serverError":
      return respondJson(state, res, 500, Wire.errorBody("Internal Server Error", "server_error", "internal_error"))
    case "overloaded":
      return respondRetryLater(
        state,
        res,
        503,
        "Server overloaded, please try again later",
        "server_error",
        "server_overloaded"
      )
    case "dropBeforeResponse":
      return Effect.sync(() => drop(state, res))
    default:
      return attempt.request.stream === true ? serveStream(state, attempt, res) : serveCompletion(state, attempt, res)
  }
}

const rateLimited = (state: State, account: Account, model: Model, res: Http.ServerResponse) =>
  Effect.suspend(() => {
    state.totals.rateLimited++
    account.rateLimited++
    model.rateLimited++
    return respondRetryLater(state, res, 429, "Rate Limit Reached", "rate_limit_error", "rate_limit_exceeded")
  })

/** DeepSeek's answer to a model name it does not serve. */
const modelNotExist = Wire.errorBody("Model Not Exist", "invalid_request_error", "invalid_request_error")

const decodeRequest = Schema.decodeUnknownEither(Schema.parseJson(ChatCompletionRequest))

const chat = (state: State, req: Http.IncomingMessage, res: Http.ServerResponse, body: string) =>
  Effect.gen(function*() {
    state.totals.requests++
    const account = yield* authenticate(state, req, res)
    if (account === undefined) return
    account.requests++
    if (account.balance <= 0) {
      return yield* respondJson(
        state,
        res,
        402,
        Wire.errorBody("Insufficient Balance", "unknown_error", "invalid_request_error")
      )
    }
    const request = decodeRequest(body)
    if (Either.isLeft(request)) {
      const reason = SchemaIssues.describeIssues(request.left).join("; ")
      return yield* respondJson(
        state,
        res,
        400,
        Wire.errorBody(`Invalid request: ${reason}`, "invalid_request_error", "invalid_request_error")
      )
    }
    const serving = servingModel(state, request.right.model)
    if (state.models !== undefined && !state.models.has(serving)) {
      return yield* respondJson(state, res, 400, modelNotExist)
    }
    const model = modelOf(account, serving)
    model.requests++
    yield* Effect.acquireUseRelease(
      Effect.suspend(() =>
        admit(state, account, model)
          ? startAttempt(state, account, model, request.right, body).pipe(
            Effect.tap((attempt) => state.serving.set(res, attempt)),
            // A queue delay function that failed must not keep the slots it was admitted to.
            Effect.onError(() => Effect.sync(() => vacate(state, account, model)))
          )
          : Effect.succeed(undefined)
      ),
      (attempt) => attempt === undefined ? rateLimited(state, account, model, res) : serve(state, attempt, res),
      (attempt) => attempt === undefined ? Effect.void : Effect.sync(() => finish(state, attempt))
    )
  })

const chatPaths: ReadonlySet<string> = new Set(["/chat/completions", "/v1/chat/completions"])

const route = (state: State, req: Http.IncomingMessage, res: Http.ServerResponse) =>
  Effect.flatMap(readBody(req), (body) => {
    const path = new URL(req.url ?? "/", "http://127.0.0.1").pathname
    if (req.method === "POST" && chatPaths.has(path)) return chat(state, req, res, body)
    if (req.method === "GET" && path === "/user/balance") return balance(state, req, res)
    return respondJson(state, res, 404, Wire.errorBody(`No route ${req.method} ${path}`, "invalid_request_error"))
  })

/** Completes when the client closes the connection before the response ended. */
const clientGone = (state: State, res: Http.ServerResponse): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    const onClose = () => {
      if (!res.writableFinished && !state.dropped.has(res)) resume(Effect.void)
    }
    res.on("close", onClose)
    return Effect.sync(() => res.off("close", onClose))
  }).pipe(Effect.zipRight(Effect.sync(() => state.totals.clientClosed++)))

const handle = (state: State, req: Http.IncomingMessage, res: Http.ServerResponse): Effect.Effect<void> =>
  route(state, req, res).pipe(
    Effect.raceFirst(clientGone(state, res)),
    Effect.catchAllDefect((defect) => Effect.logError("Simulator: request handler failed", Cause.die(defect))),
    Effect.ensuring(Effect.sync(() => {
      if (!res.writableEnded) res.destroy()
    }))
  )

/**
 * Closes the connection once it has been idle `idleMs` after a response. Node's own keep-alive
 * timeout adds a second and advertises itself in a `Keep-Alive` header a client's pool honours;
 * an unannounced close is what leaves stale sockets in a pool.
 */
const closeWhenIdle = (req: Http.IncomingMessage, res: Http.ServerResponse, idleMs: number): void => {
  const socket = req.socket
  socket.setTimeout(0)
  res.once("finish", () => socket.setTimeout(idleMs))
}

const listen = (server: Http.Server, port: number): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    // A port in use is not an option out of range, but as much the caller's to fix: said as plainly.
    server.once("error", (error) => resume(Effect.die(new Error(`Simulator: cannot listen on 127.0.0.1:${port}: ${error.message}`))))
    server.listen(port, "127.0.0.1", () => resume(Effect.void))
  })

/** Stops listening and destroys every connection, idle or busy. */
const close = (server: Http.Server): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (!server.listening) return resume(Effect.void)
    server.close(() => resume(Effect.void))
    server.closeAllConnections()
  })

const accountNamed = (state: State, name: string): Effect.Effect<Account> => {
  const account = state.accounts.get(name)
  return account === undefined ? Effect.dieMessage(`Simulator: no account named "${name}"`) : Effect.succeed(account)
}

/** @internal */
export const make = (options: Simulator.Options): Effect.Effect<Simulator.Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    // A real server runs on real time, even when the caller's clock is a TestClock.
    const clock = Clock.make()
    const state = initialState(options, clock)
    const fibers = yield* FiberSet.make<void, never>()
    const run = yield* FiberSet.runtime(fibers)<never>()
    const server = Http.createServer({ noDelay: true }, (req, res) => {
      closeWhenIdle(req, res, state.settings.idleTimeoutMs)
      run(Effect.withClock(handle(state, req, res), clock))
    })
    server.on("connection", () => state.totals.connections++)
    // Idle connections are closed by `closeWhenIdle`, unannounced, instead of Node's own timer.
    server.keepAliveTimeout = 0
    yield* listen(server, options.port ?? 0)
    const stop = Effect.zipRight(FiberSet.clear(fibers), close(server))
    yield* Effect.addFinalizer(() => stop)
    const { port } = server.address() as AddressInfo
    return {
      baseUrl: `http://127.0.0.1:${port}`,
      accounts: [...state.accounts.values()].map(({ keys, name }) => ({ name, keys })),
      stats: Effect.sync(() => snapshot(state)),
      completions: Effect.sync(() => [...state.completions]),
      setLimit: (name, limit, modelName) =>
        Effect.map(accountNamed(state, name), (account) => {
          checkLimits(limit)
          if (modelName === undefined) {
            account.caps = [limit]
            return sampleAll(state, account)
          }
          const model = modelOf(account, servingModel(state, modelName))
          model.cap = limit
          sample(state, account, model)
        }),
      setBalance: (name, usd) =>
        Effect.map(accountNamed(state, name), (account) => {
          account.balance = usd
        }),
      setFaults: (faults) =>
        Effect.sync(() => {
          state.faults = checkedFaults(faults)
          state.scriptCursor = 0
        }),
      stop
    }
  })
