/**
 * What `weatherproof serve` runs: reads the accounts (as `batch` does), the gateway keys and the
 * telemetry settings, builds the client stack `batch` builds (`Batch.layerAccounts`), serves
 * until SIGTERM or SIGINT, then drains and exits 0.
 *
 * Exit codes: 1 when the server cannot start (the port is taken), 2 for a usage or configuration
 * error (a bad option, a missing key, a bad accounts file, pricing table or router setting, a
 * non-loopback host without gateway keys).
 */
import type * as FileSystem from "@effect/platform/FileSystem"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as RuntimeFlagsPatch from "effect/RuntimeFlagsPatch"
import * as Accounts from "../../src/Accounts.js"
import { scrubSecrets } from "../../src/ApiError.js"
import * as Batch from "../../src/Batch.js"
import * as CostLedger from "../../src/CostLedger.js"
import * as Router from "../../src/Router.js"
import * as Transport from "../../src/Transport.js"
import { gatewayKeysConfig } from "./auth.js"
import * as Gateway from "./server.js"
import * as Telemetry from "./telemetry.js"
import { StopSignals } from "../cli/signals.js"

/** The parsed options of the command (see `command.ts`). */
export interface ServeOptions {
  readonly port: number
  readonly host: string
  readonly accounts: Option.Option<string>
  readonly concurrency: Option.Option<number>
  /** Seconds. */
  readonly keepAliveInterval: number
  /** Seconds. */
  readonly drainTimeout: number
  readonly maxWaiting: number
  readonly alertWebhook: Option.Option<string>
}

/** Ends the program with `code`; the CLI's `main` turns it into the exit code. */
export class ExitCode extends Data.TaggedError("ExitCode")<{ readonly code: number }> {}

const fail = (code: number, message: string) => Effect.zipRight(Console.error(message), new ExitCode({ code }))

const listIssues = (issues: ReadonlyArray<string>) => issues.map((issue) => `  ${scrubSecrets(issue)}`).join("\n")

const invalidConfig = (error: ConfigError.ConfigError) =>
  fail(2, `weatherproof: invalid configuration: ${scrubSecrets(String(error))}`)

const missingKey = "weatherproof: DEEPSEEK_API_KEY is not set or empty (one key, or several separated by commas). " +
  "Set it, or pass --accounts FILE."

/** The accounts to serve: the file's, or one DeepSeek account from the environment. */
const loadAccounts = (options: ServeOptions) =>
  Option.match(options.accounts, {
    onSome: (file) =>
      Accounts.load(file).pipe(
        Effect.catchTag("AccountsError", (error) =>
          fail(2, `weatherproof: invalid accounts file ${error.source}:\n${listIssues(error.issues)}`))
      ),
    onNone: () =>
      Accounts.fromEnv.pipe(
        Effect.catchTag("ConfigError", (error) => ConfigError.isMissingDataOnly(error) ? fail(2, missingKey) : invalidConfig(error))
      )
  }).pipe(
    Effect.map((accounts) =>
      Option.match(options.concurrency, {
        onNone: () => accounts,
        onSome: (n) => accounts.map((account): Accounts.Account => ({ ...account, concurrency: n }))
      })
    )
  )

/** The first problem with the options, if any. */
const optionProblem = (options: ServeOptions): string | undefined =>
  !Number.isInteger(options.port) || options.port < 0 || options.port > 65535
    ? "--port must be between 0 and 65535"
    : !(options.keepAliveInterval > 0)
    ? "--keep-alive-interval must be more than 0 seconds"
    : !(options.drainTimeout >= 0)
    ? "--drain-timeout must be 0 seconds or more"
    : options.maxWaiting < 1
    ? "--max-waiting must be at least 1"
    : Option.exists(options.concurrency, (n) => n < 1)
    ? "--concurrency must be at least 1"
    : Option.exists(options.alertWebhook, (url) => !/^https?:\/\/\S+$/.test(url))
    ? "--alert-webhook must be an http(s) URL"
    : undefined

/**
 * Serves until SIGTERM or SIGINT, then drains (the gateway's scope closing) and returns: exit 0.
 */
export const run = (options: ServeOptions): Effect.Effect<void, ExitCode, FileSystem.FileSystem | StopSignals> =>
  Effect.gen(function*() {
    const problem = optionProblem(options)
    if (problem !== undefined) return yield* fail(2, `weatherproof: ${problem}`)
    const gatewayKeys = yield* Effect.catchTag(gatewayKeysConfig, "ConfigError", invalidConfig)
    const accounts = yield* loadAccounts(options)
    const otlp = yield* Config.option(Config.nonEmptyString("OTEL_EXPORTER_OTLP_ENDPOINT")).pipe(
      Effect.catchTag("ConfigError", invalidConfig)
    )

    const stack = Layer.mergeAll(
      Batch.layerAccounts(accounts, { ledger: CostLedger.layerConfig, router: Router.layerConfig }),
      Telemetry.layer({ otlp: Option.isSome(otlp) }),
      Transport.nodeHttpClient()
    )

    yield* Effect.scoped(Effect.gen(function*() {
      const signals = yield* Effect.flatMap(StopSignals, (service) => service.catch)
      const gateway = yield* Gateway.make({
        port: options.port,
        host: options.host,
        accounts,
        gatewayKeys,
        keepAliveInterval: Duration.seconds(options.keepAliveInterval),
        drainTimeout: Duration.seconds(options.drainTimeout),
        maxWaiting: options.maxWaiting,
        alerts: Option.match(options.alertWebhook, { onNone: () => undefined, onSome: (url) => ({ url }) })
      })
      yield* Console.log(
        `weatherproof gateway listening on ${gateway.url} (${accounts.length} account${accounts.length === 1 ? "" : "s"}` +
          `${gatewayKeys.length === 0 ? ", no gateway keys" : ""}): ` +
          `OpenAI base URL ${gateway.url}/v1, status page ${gateway.url}/, metrics ${gateway.url}/metrics`
      )
      const signal = yield* signals.first
      // The drain is the gateway's scope closing, after this.
      yield* Console.log(`weatherproof gateway: ${signal}: shutting down; ${Gateway.requests(gateway.traffic.active)} in flight`)
    })).pipe(
      Effect.provide(stack),
      // Effect's own per-fiber metrics (effect_fiber_*): a cost on every fiber of every request,
      // and series no gateway operator reads.
      Effect.withRuntimeFlagsPatch(RuntimeFlagsPatch.disable(RuntimeFlags.RuntimeMetrics)),
      Effect.catchTags({
        InsecureHost: (error) => fail(2, `weatherproof: ${error.message}`),
        ServeError: (error) => fail(1, `weatherproof: cannot listen on ${options.host}:${options.port}: ${String(error.cause)}`),
        PricingError: (error) => fail(2, `weatherproof: invalid pricing table ${error.source}:\n${listIssues(error.issues)}`),
        ConfigError: invalidConfig
      })
    )
  })
