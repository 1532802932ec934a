/**
 * The accounts an `AccountPool` calls: which provider, where, with which keys, whether it is a
 * fallback, and how its model names and concurrency differ. Read from JSON:
 *
 * ```json
 * { "accounts": [
 *   { "name": "a", "provider": "deepseek", "baseUrl": "https://api.deepseek.com", "keys": ["env:DEEPSEEK_KEY_A"] },
 *   { "name": "b", "provider": "deepseek", "baseUrl": "https://api.deepseek.com", "keys": ["env:DEEPSEEK_KEY_B"],
 *     "concurrency": { "initial": 16 } },
 *   { "name": "alt", "provider": "openai-compatible", "baseUrl": "https://llm.example.com/v1", "keys": ["env:ALT_KEY"],
 *     "fallback": true, "models": { "deepseek-v4-flash": "other-model" } }
 * ] }
 * ```
 *
 * - `name`: unique; letters, digits, `.`, `_`, `-` (it labels metrics and the cost ledger);
 * - `provider`: `"deepseek"` or `"openai-compatible"` (the latter has no balance endpoint);
 * - `baseUrl`: an http(s) URL, `/chat/completions` is appended;
 * - `keys`: at least one; `"env:NAME"` reads the environment variable `NAME` (one key, or
 *   several separated by commas), anything else is the key itself. Keys of one account share
 *   its concurrency limit (DeepSeek limits per account), so several keys add resilience to a
 *   revoked key, not capacity; for the same reason a key is in one account only (two accounts at
 *   one origin with a key in common are an error: the pool would count the cap twice), and once
 *   (a rejected key listed twice would be sent again);
 * - `fallback` (default `false`): serves only when no other account can;
 * - `models` (default none): model names to send instead of the requested ones, for a provider
 *   whose names differ. An account with a map serves the models it names (a key may be either name
 *   of a model the price table aliases); a `deepseek` account also serves the price table's models
 *   and every name no account maps, and one of another provider without a map every name (see
 *   `AccountPool`, "Which accounts serve a model"). Models it maps to one name share one lane,
 *   and its limit. A model another provider's map names is sent
 *   without `thinking`, DeepSeek's own field (the router sets it), which such a provider refuses;
 * - `concurrency` (default: adaptive, starting at 8): the limit of each (account, model) lane,
 *   since DeepSeek caps concurrency per account and per model: a number N is a ceiling (each lane
 *   starts at N, never exceeds it, backs off only on 429s and 503s and climbs back to N as calls
 *   are accepted, instead of drawing a 429 per call while the cap is below N), or the adaptive
 *   limiter's options (`LaneOptions`: `ConcurrencyLimiter.AdaptiveOptions` without `maxQueued`,
 *   `queueDelayFloor` in milliseconds), each model's lane discovering its own cap;
 * - `accountConcurrency` (default none): a fixed cap on the calls in flight of every model
 *   together, for a provider that limits the account as a whole;
 * - `breaker` (default: the pool's): the account's circuit breaker options (`BreakerOptions`,
 *   durations in milliseconds or as text, `"30s"`), each replacing the pool's own, e.g.
 *   `{ "failureRatio": 0.5, "openFor": "1m" }`. (The pool's only account opens its breaker only
 *   when every call fails, `failureRatio` 1, unless told otherwise: it has nowhere to fail over to.)
 *
 * At least one account must not be a fallback. Unknown fields are errors (a typo would
 * otherwise be silently ignored), and so is a field given twice in one object (JSON keeps the
 * last). Every problem is reported with the path of its field, and no error ever quotes a value
 * that might be a key (a key written in the wrong field included).
 *
 * @since 0.1.0
 */

import * as FileSystem from "@effect/platform/FileSystem"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as ParseResult from "effect/ParseResult"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import type { Options as CircuitBreakerOptions } from "./CircuitBreaker.js"
import type { AdaptiveOptions, LimiterOptions } from "./ConcurrencyLimiter.js"
import * as KeyPool from "./KeyPool.js"
import * as BaseUrls from "./internal/baseUrl.js"
import * as DurationText from "./internal/durationText.js"
import { madeAtFirstCall } from "./internal/firstCall.js"
import * as SchemaIssues from "./internal/schemaIssues.js"
import { mayBeKey, parseJsonSaying } from "./internal/text.js"
import { defaultBaseUrl } from "./Transport.js"

/**
 * One account, validated, its keys read and `Redacted`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Account {
  readonly name: string
  readonly provider: "deepseek" | "openai-compatible"
  readonly baseUrl: string
  readonly keys: ReadonlyArray<Redacted.Redacted<string>>
  /**
   * Where each of `keys` came from, in order: the environment variable an `env:NAME` reference
   * (or `DEEPSEEK_API_KEY`) read, none for a key written in the file. A message that names a key
   * says it (`key#2 from DEEPSEEK_KEY_B`); a variable's name is no secret.
   */
  readonly keySources?: ReadonlyArray<string | undefined> | undefined
  readonly fallback: boolean
  /** Requested model name → the name this account's provider knows it by. */
  readonly models: Readonly<Record<string, string>>
  /** The limit of each of its (account, model) lanes: a ceiling that backs off on 429s, or adaptive with these options. */
  readonly concurrency?: number | LaneOptions | undefined
  /** A cap on the calls in flight of every model together. */
  readonly accountConcurrency?: number | undefined
  /** Its circuit breaker's options, each replacing the pool's (`AccountPool.Options.breaker`). */
  readonly breaker?: BreakerOptions | undefined
}

/**
 * The adaptive limiter's options of an account's lanes: all of `ConcurrencyLimiter.AdaptiveOptions`
 * but what a limiter of its own takes (`maxQueued`, `name`, `classify`): the lanes' calls wait in
 * the pool's queue (bounded by `maxWait`), its metrics name the account and model, and the pool
 * classifies errors itself (`ApiError.classify`).
 *
 * @since 0.1.0
 * @category models
 */
export type LaneOptions = Omit<AdaptiveOptions, keyof LimiterOptions>

/**
 * The circuit breaker options of one account: all of `CircuitBreaker.Options` but what the pool
 * sets itself (`name`, the account's; `classify`, `ApiError.classify`; `countLoadShed`,
 * `"overload"`, as 429s are the lanes' limiters') or has no use for (`halfOpenPolicy`: the pool
 * sends a half-open account no more calls than its canaries).
 *
 * @since 0.1.0
 * @category models
 */
export type BreakerOptions = Omit<CircuitBreakerOptions, "name" | "classify" | "countLoadShed" | "halfOpenPolicy">

/**
 * Accounts that do not validate, or could not be read. `issues` are `path: message` lines, e.g.
 * `accounts[1].keys[0]: environment variable DEEPSEEK_KEY_B is not set`.
 *
 * @since 0.1.0
 * @category errors
 */
export class AccountsError extends Data.TaggedError("AccountsError")<{
  /** Where the accounts came from: a file path, or `"input"`. */
  readonly source: string
  readonly issues: ReadonlyArray<string>
}> {
  /** @since 0.1.0 */
  override get message(): string {
    return `invalid accounts (${this.source}):\n  ${this.issues.join("\n  ")}`
  }
}

// ---------------------------------------------------------------------------------------------
// Schema. Every message describes what is expected without echoing the value, so that a key
// written in the wrong place never reaches an error.
// ---------------------------------------------------------------------------------------------

const expecting = (description: string) => ({ message: () => description })

const envPrefix = "env:"
const envName = /^[A-Za-z_][A-Za-z0-9_]*$/

// A name is shown (metrics, summaries, the status page): one shaped like a key, a key pasted in the
// wrong field, would show it.
const Name = Schema.String.annotations(expecting("expected a name")).pipe(
  Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, expecting("expected a name of letters, digits, '.', '_' or '-'")),
  Schema.filter((name) => !mayBeKey(name), expecting("expected a name, not something shaped like a key (it is shown)"))
)

const Provider = Schema.Literal("deepseek", "openai-compatible").annotations({
  // One message for the union, not one per literal.
  message: () => ({ message: `expected "deepseek" or "openai-compatible"`, override: true })
})

const BaseUrl = Schema.String.annotations(expecting("expected an http(s) URL")).pipe(
  Schema.filter((text) => BaseUrls.problemOf(text) ?? true)
)

/** A key, or `env:NAME`. */
const KeyRef = Schema.String.annotations(expecting("expected a key, or env:NAME")).pipe(
  Schema.filter((ref) => ref.trim().length > 0, expecting("expected a key, or env:NAME, not an empty string")),
  Schema.filter(
    (ref) => !ref.startsWith(envPrefix) || envName.test(ref.slice(envPrefix.length)),
    expecting("expected env:NAME with NAME an environment variable name")
  )
)

const Keys = Schema.Array(KeyRef).annotations(expecting("expected a list of keys")).pipe(
  Schema.minItems(1, expecting("expected at least one key"))
)

const ModelName = Schema.String.annotations(expecting("expected a model name")).pipe(
  Schema.nonEmptyString(expecting("expected a model name"))
)

const Models = Schema.Record({ key: Schema.String, value: ModelName }).annotations(
  expecting("expected an object of model names")
)

const Flag = Schema.Boolean.annotations(expecting("expected true or false"))

const number = (description: string, valid: (n: number) => boolean) =>
  Schema.Number.annotations(expecting(`expected ${description}`)).pipe(
    Schema.filter(valid, expecting(`expected ${description}`))
  )

const positiveInt = number("an integer ≥ 1", (n) => Number.isInteger(n) && n >= 1)
const nonNegativeInt = number("an integer ≥ 0", (n) => Number.isInteger(n) && n >= 0)
const ratio = number("a number between 0 and 1 (exclusive)", (n) => n > 0 && n < 1)
const optional = <S extends Schema.Schema.Any>(schema: S) => Schema.optionalWith(schema, { exact: true })

const Adaptive = Schema.Struct({
  initial: optional(positiveInt),
  min: optional(positiveInt),
  max: optional(positiveInt),
  backoff: optional(ratio),
  fallBackoff: optional(ratio),
  holdRounds: optional(nonNegativeInt),
  holdRequests: optional(nonNegativeInt),
  queueDelayRise: optional(number("a number > 1", (n) => n > 1)),
  queueDelayWindows: optional(positiveInt),
  fallHoldShare: optional(ratio),
  holdGrowth: optional(number("a number > 1", (n) => n > 1)),
  latencyRise: optional(number("a number > 1", (n) => n > 1)),
  overloadShare: optional(ratio),
  overloadFloor: optional(ratio),
  queueDelayFloor: optional(number("milliseconds ≥ 0", (n) => n >= 0))
}).annotations(expecting("expected adaptive limiter options")).pipe(
  Schema.filter(({ max, min }) =>
    max === undefined || min === undefined || max >= min ||
    { path: ["max"], message: `expected at least min (${min}), got ${max}` }
  )
)

const durationExpected = `expected milliseconds > 0 or ${DurationText.expected}`

/** The milliseconds a duration's text says (`30s`, `5m`), NaN when it says none. */
const millisOfText = (text: string): number => {
  const duration = DurationText.parse(text)
  return duration === undefined ? Number.NaN : Duration.toMillis(duration)
}

/**
 * A duration above 0 in milliseconds, or as text the way the flags take it (`"30s"`): 30 meant as
 * seconds can be written as such.
 */
const milliseconds = Schema.transformOrFail(
  Schema.Union(Schema.Number, Schema.String).annotations(expecting(durationExpected)),
  Schema.Number,
  {
    strict: true,
    decode: (written, _, ast) => {
      const millis = typeof written === "number" ? written : millisOfText(written)
      return millis > 0 && Number.isFinite(millis)
        ? ParseResult.succeed(millis)
        : ParseResult.fail(new ParseResult.Type(ast, written, durationExpected))
    },
    encode: ParseResult.succeed
  }
).annotations(expecting(durationExpected))

const Breaker = Schema.Struct({
  window: optional(milliseconds),
  buckets: optional(positiveInt),
  failureRatio: optional(number("a number > 0 and ≤ 1", (n) => n > 0 && n <= 1)),
  minimumThroughput: optional(positiveInt),
  openFor: optional(milliseconds),
  maxOpenFor: optional(milliseconds),
  canaries: optional(positiveInt)
}).annotations(expecting("expected circuit breaker options"))

const concurrencyExpected = "expected an integer ≥ 1 or adaptive limiter options"

/**
 * A number is a ceiling, an object the adaptive limiter's options. The form is chosen by the
 * value's type (not as a union) so an error names only what is wrong within the form meant.
 */
const Concurrency = Schema.transformOrFail(Schema.Unknown, Schema.Union(positiveInt, Adaptive), {
  strict: true,
  decode: (input, options, ast) =>
    typeof input === "number"
      ? ParseResult.decodeUnknown(positiveInt)(input, options)
      : typeof input === "object" && input !== null && !Array.isArray(input)
      ? ParseResult.decodeUnknown(Adaptive)(input, options)
      : ParseResult.fail(new ParseResult.Type(ast, input, concurrencyExpected)),
  encode: ParseResult.succeed
})

const AccountJson = Schema.Struct({
  name: Name,
  provider: Provider,
  baseUrl: BaseUrl,
  keys: Keys,
  fallback: optional(Flag),
  models: optional(Models),
  concurrency: optional(Concurrency),
  accountConcurrency: optional(positiveInt),
  breaker: optional(Breaker)
}).annotations(expecting("expected an account object"))

const AccountsJson = Schema.Struct({
  accounts: Schema.Array(AccountJson).annotations(expecting("expected a list of accounts")).pipe(
    Schema.minItems(1, expecting("expected at least one account"))
  )
}).annotations(expecting(`expected an object with an "accounts" list`))

type AccountJson = typeof AccountJson.Type

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

const decodeJson = madeAtFirstCall(() => Schema.decodeUnknownEither(AccountsJson, { errors: "all", onExcessProperty: "error" }))

/** Problems the schema cannot see: names used twice, no account that is not a fallback. */
const crossChecks = (accounts: ReadonlyArray<AccountJson>): ReadonlyArray<string> => {
  const firstIndex = new Map<string, number>()
  const issues: Array<string> = []
  accounts.forEach((account, i) => {
    const first = firstIndex.get(account.name)
    if (first === undefined) firstIndex.set(account.name, i)
    else issues.push(`accounts[${i}].name: duplicate name "${account.name}" (also accounts[${first}])`)
  })
  if (accounts.every((account) => account.fallback === true)) {
    issues.push("accounts: expected at least one account that is not a fallback")
  }
  return issues
}

/**
 * Accounts at one origin that hold a key in common: one upstream account, whose cap the pool
 * would count once per entry; and an account that lists a key twice (itself, and through an
 * `env:` reference, say), which would send it again after it was rejected. Told by path, never by
 * the key.
 */
const sharedKeys = (accounts: ReadonlyArray<Account>): ReadonlyArray<string> => {
  const holders = new Map<string, number>()
  const issues: Array<string> = []
  accounts.forEach((account, i) => {
    const origin = new URL(account.baseUrl).origin
    const told = new Set<number>()
    for (const key of account.keys) {
      const held = `${origin} ${Redacted.value(key)}`
      const first = holders.get(held)
      if (first === undefined) holders.set(held, i)
      else if (first === i && !told.has(i)) {
        told.add(i)
        issues.push(`accounts[${i}].keys: holds one key twice (directly or through an env: reference)`)
      } else if (first !== i && !told.has(first)) {
        told.add(first)
        issues.push(
          `accounts[${i}].keys: a key accounts[${first}] ("${accounts[first]!.name}") holds too, at the same origin: ` +
            "an account's keys share its cap, so a key belongs in one account only"
        )
      }
    }
  })
  return issues
}

/** A key and the environment variable it was read from, if any. */
interface SourcedKey {
  readonly key: Redacted.Redacted<string>
  readonly source: string | undefined
}

/** The keys a reference stands for: itself, or what its environment variable holds. */
const resolveKey = (ref: string, path: string): Effect.Effect<ReadonlyArray<SourcedKey>, string> => {
  if (!ref.startsWith(envPrefix)) {
    const key = Redacted.make(ref.trim())
    return KeyPool.keysProblem([key]) === undefined
      ? Effect.succeed([{ key, source: undefined }])
      : Effect.fail(`${path}: holds a space, a line break or another character a request header cannot carry`)
  }
  const name = ref.slice(envPrefix.length)
  return Config.redacted(name).pipe(
    Effect.mapError((error) =>
      ConfigError.isMissingDataOnly(error)
        ? `${path}: environment variable ${name} is not set`
        : `${path}: environment variable ${name} could not be read`
    ),
    Effect.map(KeyPool.parseKeyList),
    Effect.filterOrFail((keys) => keys.length > 0, () => `${path}: environment variable ${name} is empty`),
    Effect.flatMap((keys) => {
      const problem = KeyPool.keysProblem(keys)
      return problem === undefined
        ? Effect.succeed(keys.map((key) => ({ key, source: name })))
        : Effect.fail(`${path}: environment variable ${name}: ${problem}`)
    })
  )
}

const resolveAccount = (account: AccountJson, index: number): Effect.Effect<Account, ReadonlyArray<string>> =>
  Effect.partition(account.keys, (ref, k) => resolveKey(ref, `accounts[${index}].keys[${k}]`)).pipe(
    Effect.flatMap(([failures, keys]) =>
      failures.length > 0
        ? Effect.fail(failures)
        : Effect.succeed({
          ...account,
          keys: keys.flat().map(({ key }) => key),
          keySources: keys.flat().map(({ source }) => source),
          fallback: account.fallback ?? false,
          models: account.models ?? {}
        })
    )
  )

/**
 * Validates accounts (e.g. parsed JSON) and reads the keys they reference from the environment
 * through `Config.redacted`, so `ConfigProvider` decides where they come from. Every issue is
 * reported with its path: all those of the JSON's shape at once, or, once the shape is right,
 * every key that cannot be read and every name used twice, or, once the keys are read, every
 * account that holds a key another account at its origin holds.
 *
 * @example
 * ```ts
 * import { Console, Effect } from "effect"
 * import { Accounts } from "weatherproof"
 *
 * declare const settings: { readonly accounts: unknown } // your app's configuration, parsed
 *
 * const accounts = Accounts.decode({ accounts: settings.accounts }, "settings.json").pipe(
 *   // Every problem with its path, e.g. "accounts[1].keys[0]: environment variable ALT_KEY is not set"
 *   Effect.tapError((error) => Console.error(error.message))
 * )
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const decode = (input: unknown, source = "input"): Effect.Effect<ReadonlyArray<Account>, AccountsError> =>
  Effect.gen(function*() {
    const fail = (issues: ReadonlyArray<string>) => Effect.fail(new AccountsError({ source, issues }))
    const decoded = decodeJson(input)
    if (Either.isLeft(decoded)) return yield* fail(SchemaIssues.describeIssues(decoded.left))
    const accounts = decoded.right.accounts
    const [unresolved, resolved] = yield* Effect.partition(accounts, resolveAccount)
    const issues = [...crossChecks(accounts), ...unresolved.flat()]
    if (issues.length > 0) return yield* fail(issues)
    const shared = sharedKeys(resolved)
    return shared.length > 0 ? yield* fail(shared) : resolved
  })

/**
 * An account written in code, the file's defaults filled in: DeepSeek's provider and base URL
 * (`Transport.defaultBaseUrl`), not a fallback, no model names of its own.
 *
 * @example
 * ```ts
 * import { Redacted } from "effect"
 * import { AccountPool, Accounts } from "weatherproof"
 *
 * const client = AccountPool.layerResilient([
 *   Accounts.make({ name: "main", keys: [Redacted.make("sk-...")] }),
 *   Accounts.make({ name: "alt", provider: "openai-compatible", baseUrl: "https://llm.example.com/v1", keys: [Redacted.make("sk-alt")], fallback: true })
 * ])
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  account: Pick<Account, "name" | "keys"> & Partial<Omit<Account, "name" | "keys">>
): Account => ({ provider: "deepseek", baseUrl: defaultBaseUrl, fallback: false, models: {}, ...account })

/**
 * Reads accounts from a JSON file. An unreadable file or invalid JSON is an `AccountsError` too.
 *
 * @example
 * ```ts
 * import { NodeFileSystem } from "@effect/platform-node"
 * import { Effect, Layer } from "effect"
 * import { AccountPool, Accounts, CostLedger } from "weatherproof"
 *
 * const client = Accounts.load("accounts.json").pipe(
 *   Effect.map((accounts) => AccountPool.layerResilient(accounts)),
 *   Layer.unwrapEffect,
 *   Layer.provide([CostLedger.layer(), NodeFileSystem.layer])
 * )
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const load = (path: string): Effect.Effect<ReadonlyArray<Account>, AccountsError, FileSystem.FileSystem> =>
  Effect.flatMap(FileSystem.FileSystem, (fs) => fs.readFileString(path)).pipe(
    Effect.mapError((error) => new AccountsError({ source: path, issues: [`cannot read the file: ${error.message}`] })),
    Effect.flatMap((text) =>
      Either.mapLeft(parseJsonSaying("not valid JSON", text), (issue) => new AccountsError({ source: path, issues: [issue] }))
    ),
    Effect.flatMap((json) => decode(json, path))
  )

/**
 * One DeepSeek account named `default` from the environment: keys from `DEEPSEEK_API_KEY` (one
 * key, or several separated by commas), base URL from `DEEPSEEK_BASE_URL` (default
 * `https://api.deepseek.com`).
 *
 * @example
 * ```ts
 * import { Effect, Layer } from "effect"
 * import { AccountPool, Accounts, CostLedger } from "weatherproof"
 *
 * // The account pool, over the single account DEEPSEEK_API_KEY and DEEPSEEK_BASE_URL describe.
 * const client = Accounts.fromEnv.pipe(
 *   Effect.map((accounts) => AccountPool.layerResilient(accounts)),
 *   Layer.unwrapEffect,
 *   Layer.provide(CostLedger.layer())
 * )
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromEnv: Effect.Effect<ReadonlyArray<Account>, ConfigError.ConfigError> = Effect.map(
  Config.all({
    keys: KeyPool.keysConfig,
    baseUrl: BaseUrls.fromEnv(defaultBaseUrl)
  }),
  ({ baseUrl, keys }): ReadonlyArray<Account> => [
    { name: "default", provider: "deepseek", baseUrl, keys, keySources: keys.map(() => "DEEPSEEK_API_KEY"), fallback: false, models: {} }
  ]
)
