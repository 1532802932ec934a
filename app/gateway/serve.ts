/**
 * What `weatherproof serve` runs: reads the accounts (as `batch` does), the gateway keys and the
 * telemetry settings, builds the client stack `batch` builds (`Batch.layerAccounts`), serves
 * until SIGTERM or SIGINT, then drains and exits 0; after SIGHUP (its terminal hung up) it drains
 * and ends by the signal.
 *
 * Exit codes: 1 when the server cannot start (the port is taken), 2 for a usage or configuration
 * error (a bad option, a missing key, a bad accounts file, pricing table or router setting, a
 * non-loopback host without gateway keys).
 */
import type * as FileSystem from "@effect/platform/FileSystem"
import * as Crypto from "node:crypto"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as RuntimeFlagsPatch from "effect/RuntimeFlagsPatch"
import * as AccountPool from "../../src/AccountPool.js"
import * as Batch from "../../src/Batch.js"
import * as CostLedger from "../../src/CostLedger.js"
import * as Redis from "../../src/Redis.js"
import * as RetryPolicy from "../../src/RetryPolicy.js"
import * as Router from "../../src/Router.js"
import * as Transport from "../../src/Transport.js"
import * as Alerts from "./alerts.js"
import { gatewayKeysConfig } from "./auth.js"
import * as Gateway from "./server.js"
import * as Telemetry from "./telemetry.js"
import { type AccountArgs, type CallArgs, flagsProblem, invalidConfig, listIssues, loadAccounts, poolOptions } from "../cli/accounts.js"
import { ExitCode, fail } from "../cli/exit.js"
import { exitCodeOf, StopSignals } from "../cli/signals.js"

/** The parsed options of the command (see `command.ts`). */
export interface ServeOptions extends AccountArgs, CallArgs {
  readonly port: number
  readonly host: string
  readonly keepAliveInterval: Option.Option<Duration.Duration>
  readonly idleConnectionTimeout: Option.Option<Duration.Duration>
  readonly drainTimeout: Option.Option<Duration.Duration>
  readonly maxWaiting: number
  readonly maxBodyMib: number
  readonly alertWebhook: Option.Option<string>
}

/** An interactive client's retries and wait for an account, as `AccountPool.layerResilient`'s defaults. */
const serveDefaults = { retries: RetryPolicy.defaults.maxRetries, maxWait: AccountPool.defaults.maxWait, waitForBudget: false }

/** The first problem with the options, if any. */
const optionProblem = (options: ServeOptions): string | undefined =>
  !Number.isInteger(options.port) || options.port < 0 || options.port > 65535
    ? "--port must be between 0 and 65535"
    : Option.exists(options.keepAliveInterval, Duration.isZero)
    ? "--keep-alive-interval must be more than 0"
    : options.maxWaiting < 1
    ? "--max-waiting must be at least 1"
    : options.maxBodyMib < 1
    ? "--max-body-mib must be at least 1"
    : Option.exists(options.alertWebhook, (url) => !Alerts.isWebhookUrl(url))
    ? "--alert-webhook must be an http(s) URL"
    : flagsProblem(options)

/** The alerts' webhook: `--alert-webhook`, else `WEATHERPROOF_ALERT_WEBHOOK` (empty: none), else none. */
const alertsOf = (options: ServeOptions): Effect.Effect<Alerts.Options | undefined, ExitCode> =>
  Option.match(options.alertWebhook, {
    onSome: (url): Effect.Effect<Option.Option<Redacted.Redacted<string>>, ConfigError.ConfigError> =>
      Effect.succeed(Option.some(Redacted.make(url))),
    onNone: () => Effect.map(Config.option(Alerts.webhookConfig), Option.filter((url) => Redacted.value(url).trim() !== ""))
  }).pipe(
    Effect.catchTag("ConfigError", invalidConfig),
    Effect.flatMap(Option.match({
      onNone: () => Effect.succeed(undefined),
      onSome: (url) =>
        Alerts.isWebhookUrl(Redacted.value(url))
          ? Effect.succeed({ url })
          : fail(2, "weatherproof: WEATHERPROOF_ALERT_WEBHOOK must be an http(s) URL")
    }))
  )

/** Why the server could not listen, and what to do, for the errors a user meets; else the error itself. */
const listenProblem = (cause: unknown): string => {
  switch ((cause as { readonly code?: unknown } | undefined)?.code) {
    case "EADDRINUSE":
      return "another process listens on it; stop it, or give another --port"
    case "EACCES":
      return "this user may not listen on it (a port below 1024 takes privileges); give another --port"
    case "EADDRNOTAVAIL":
      return "the address is none of this machine's; give --host one of them (0.0.0.0: all)"
    default:
      return String(cause)
  }
}

/**
 * Serves until SIGTERM or SIGINT, then drains (the gateway's scope closing) and returns: exit 0;
 * the same after SIGHUP (its terminal hung up), which then ends the process.
 */
export const run = (options: ServeOptions): Effect.Effect<void, ExitCode, FileSystem.FileSystem | StopSignals> =>
  Effect.gen(function*() {
    const problem = optionProblem(options)
    if (problem !== undefined) return yield* fail(2, `weatherproof: ${problem}`)
    const gatewayKeys = yield* Effect.catchTag(gatewayKeysConfig, "ConfigError", invalidConfig)
    const alerts = yield* alertsOf(options)
    const [accounts, redis] = yield* loadAccounts(options)
    const otlp = yield* Effect.catchTag(Telemetry.otlpConfig, "ConfigError", invalidConfig)

    const stack = Layer.mergeAll(
      Batch.layerAccounts(accounts, {
        pool: poolOptions(options, serveDefaults),
        ledger: CostLedger.layerConfig,
        router: Router.layerConfig,
        redis
      }),
      Telemetry.layer(otlp),
      Transport.nodeHttpClient(),
      // The same layer the pool shares its state through: one connection (layers are built once).
      redis ?? Layer.empty
    )

    const signal = yield* Effect.scoped(Effect.gen(function*() {
      const signals = yield* Effect.flatMap(StopSignals, (service) => service.catch)
      const claim = Option.map(yield* Effect.serviceOption(Redis.Redis), (redis) => Alerts.claimOnRedis(redis, Crypto.randomUUID()))
      const gateway = yield* Gateway.make({
        port: options.port,
        host: options.host,
        accounts,
        gatewayKeys,
        keepAliveInterval: Option.getOrUndefined(options.keepAliveInterval),
        idleConnectionTimeout: Option.getOrUndefined(options.idleConnectionTimeout),
        drainTimeout: Option.getOrUndefined(options.drainTimeout),
        stopNow: Effect.tap(signals.again, () => Effect.logInfo("gateway: stopping now; the requests in flight end with an error")),
        maxWaiting: options.maxWaiting,
        maxBodyBytes: options.maxBodyMib * 1024 * 1024,
        alerts: alerts === undefined ? undefined : { ...alerts, claim: Option.getOrUndefined(claim) }
      })
      yield* Console.log(
        `weatherproof gateway listening on ${gateway.url} (${accounts.length} account${accounts.length === 1 ? "" : "s"}` +
          `${gatewayKeys.length === 0 ? ", no gateway keys" : ""}): ` +
          `OpenAI base URL ${gateway.url}/v1, status page ${gateway.url}/, metrics ${gateway.url}/metrics`
      )
      const signal = yield* signals.first
      // The drain is the gateway's scope closing, after this; logged as its lines are (stderr, timed).
      yield* Effect.logInfo(`gateway: ${signal}: shutting down; ${Gateway.requests(gateway.traffic.active)} in flight`)
      return signal
    })).pipe(
      Effect.provide(stack),
      // Effect's own per-fiber metrics (effect_fiber_*): a cost on every fiber of every request,
      // and series no gateway operator reads.
      Effect.withRuntimeFlagsPatch(RuntimeFlagsPatch.disable(RuntimeFlags.RuntimeMetrics)),
      Effect.catchTags({
        InsecureHost: (error) => fail(2, `weatherproof: ${error.message}`),
        ServeError: (error) => fail(1, `weatherproof: cannot listen on ${options.host}:${options.port}: ${listenProblem(error.cause)}`),
        RedisUnavailable: (error) => fail(2, `weatherproof: ${error.message}`),
        PricingError: (error) => fail(2, `weatherproof: invalid pricing table ${error.source}:\n${listIssues(error.issues)}`),
        ConfigError: invalidConfig
      })
    )
    // Drained after its terminal hung up: the process ends by the signal (`endWith`).
    if (signal === "SIGHUP") return yield* new ExitCode({ code: exitCodeOf(signal) })
  })
