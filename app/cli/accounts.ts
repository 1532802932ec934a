/**
 * What `batch` and `serve` do with their shared flags (`flags.ts`): load the accounts, with a
 * usage or configuration problem as exit 2, and turn the call flags into the pool's options.
 */
import type * as FileSystem from "@effect/platform/FileSystem"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as AccountPool from "../../src/AccountPool.js"
import * as Accounts from "../../src/Accounts.js"
import { scrubSecrets } from "../../src/ApiError.js"
import * as Redis from "../../src/Redis.js"
import * as Transport from "../../src/Transport.js"
import { type ExitCode, fail } from "./exit.js"

/** The parsed `accountFlags`. */
export interface AccountArgs {
  readonly accounts: Option.Option<string>
  readonly concurrency: Option.Option<number>
  readonly redis: Option.Option<string>
}

/** The parsed `callFlags`. */
export interface CallArgs {
  readonly retries: Option.Option<number>
  readonly maxWait: Option.Option<Duration.Duration>
  readonly firstContentTimeout: Option.Option<Duration.Duration>
  readonly idleTimeout: Option.Option<Duration.Duration>
  readonly timeout: Option.Option<Duration.Duration>
}

/** Problems from a file or the environment, one per line, scrubbed of anything shaped like a key. */
export const listIssues = (issues: ReadonlyArray<string>): string => issues.map((issue) => `  ${scrubSecrets(issue)}`).join("\n")

/** Each problem of a configuration error as `NAME: message` (the error's own text nests them in parentheses). */
const configProblems = (error: ConfigError.ConfigError): ReadonlyArray<string> => {
  const problem = (_: unknown, path: Array<string>, message: string) => [path.length === 0 ? message : `${path.join("_")}: ${message}`]
  const both = (_: unknown, left: ReadonlyArray<string>, right: ReadonlyArray<string>) => [...left, ...right]
  return ConfigError.reduceWithContext(error, undefined, {
    andCase: both,
    orCase: both,
    invalidDataCase: problem,
    missingDataCase: problem,
    sourceUnavailableCase: problem,
    unsupportedCase: problem
  })
}

export const invalidConfig = (error: ConfigError.ConfigError): Effect.Effect<never, ExitCode> =>
  fail(2, `weatherproof: invalid configuration: ${scrubSecrets(configProblems(error).join("; "))}`)

const missingKey = "weatherproof: DEEPSEEK_API_KEY is not set or empty (one key, or several separated by commas). " +
  "Set it, pass --accounts FILE, or try `weatherproof demo`, which needs no key."

/** The first problem with the shared flags, if any. */
export const flagsProblem = (args: AccountArgs & CallArgs): string | undefined =>
  Option.exists(args.concurrency, (n) => n < 1)
    ? "--concurrency must be at least 1"
    : Option.exists(args.retries, (n) => n < 0)
    ? "--retries must be at least 0"
    : undefined

/**
 * The accounts of the run: the file's, or one DeepSeek account from the environment, each with
 * `--concurrency` as its ceiling when it is given. A bad file or a missing key is exit 2.
 */
const accountsOf = (
  args: AccountArgs
): Effect.Effect<ReadonlyArray<Accounts.Account>, ExitCode, FileSystem.FileSystem> =>
  Option.match(args.accounts, {
    onSome: (file) =>
      Accounts.load(file).pipe(
        Effect.catchTag("AccountsError", (error) =>
          fail(2, `weatherproof: invalid accounts file ${error.source}:\n${listIssues(error.issues)}`))
      ),
    onNone: () =>
      Accounts.fromEnv.pipe(
        Effect.catchTag("ConfigError", (error) => ConfigError.isMissingDataOnly(error) ? fail(2, missingKey) : invalidConfig(error))
      )
  }).pipe(Effect.map((accounts) =>
    Option.match(args.concurrency, {
      onNone: () => accounts,
      onSome: (n) => accounts.map((account): Accounts.Account => ({ ...account, concurrency: n }))
    })
  ))

/** A password given in `--redis` can be read by every user of the host, in `ps`. */
const warnOfPassword = (url: string) =>
  Redis.carriesPassword(url)
    ? Effect.logWarning(
      "weatherproof: the password in --redis can be read by other users of this host (ps); give the URL in WEATHERPROOF_REDIS_URL instead"
    )
    : Effect.void

/**
 * The Redis the run shares its accounts' state through: `--redis`, else `WEATHERPROOF_REDIS_URL`,
 * else none (everything stays in this process); its prefix `WEATHERPROOF_REDIS_PREFIX`'s.
 */
const redisOf = (
  args: AccountArgs
): Effect.Effect<Layer.Layer<Redis.Redis, Redis.RedisUnavailable> | undefined, ExitCode> =>
  Option.match(args.redis, {
    onSome: (url) => Effect.as(warnOfPassword(url), Option.some(Redacted.make(url))),
    onNone: () => Config.option(Redis.urlConfig)
  }).pipe(
    Effect.flatMap(Option.match({
      onNone: () => Effect.succeed(undefined),
      onSome: (url) => Effect.map(Redis.prefixConfig, (prefix) => Redis.layer({ url, prefix }))
    })),
    Effect.catchTag("ConfigError", invalidConfig)
  )

/** The run's accounts (`accountsOf`) and the Redis it shares their state through, if any (`redisOf`). */
export const loadAccounts = (args: AccountArgs) =>
  Effect.zipRight(proxiesChecked, Effect.zip(accountsOf(args), redisOf(args)))

/** The environment's proxies (`HTTPS_PROXY` and the rest), checked before anything is sent. */
const proxiesChecked: Effect.Effect<void, ExitCode> = Effect.catchAll(Effect.asVoid(Transport.proxyConfig), invalidConfig)

const given = <A, B>(option: Option.Option<A>, f: (a: A) => B): B | Record<never, never> =>
  Option.match(option, { onNone: () => ({}), onSome: f })

/**
 * The pool's options from the call flags. `waitForBudget`: a retry the retry budget refuses waits
 * for its room as long as a call may wait for an account (`--max-wait`), instead of failing.
 */
export const poolOptions = (
  args: CallArgs,
  defaults: { readonly retries: number; readonly maxWait: Duration.Duration; readonly waitForBudget: boolean }
): AccountPool.PoolOptions => {
  const maxWait = Option.getOrElse(args.maxWait, () => defaults.maxWait)
  return {
    maxWait,
    ...(defaults.waitForBudget ? { budgetWait: maxWait } : {}),
    retry: { maxRetries: Option.getOrElse(args.retries, () => defaults.retries) },
    deadlines: {
      ...given(args.firstContentTimeout, (firstContent) => ({ firstContent })),
      ...given(args.idleTimeout, (idle) => ({ idle })),
      ...given(args.timeout, (total) => ({ total }))
    }
  }
}
