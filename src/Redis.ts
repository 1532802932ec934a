/**
 * A connection to a Redis (or Valkey) server, for the state that several processes share: the
 * account pool's leases and limits, breakers, cooldowns, the response cache. The services that
 * coordinate through it (`AccountPool.layerRedis`, `ResponseCache.layerRedis`, …) take this one
 * service, so a program opens one connection (and one more for pub/sub) whatever it shares.
 *
 * ## Keys
 *
 * Every key is `{<prefix>}:<part>:<part>…`: the prefix (default `weatherproof`) namespaces them,
 * and its braces make it a hash tag, so all the keys of a prefix live in one slot. Parts name
 * accounts and models, never a key or a prompt; callers pass names through `key`, which escapes them.
 *
 * The connection is to one server: it does not follow a Redis Cluster's `MOVED` redirects.
 * Pointed at a cluster node that does not own the prefix's slot, every command fails and the
 * coordinating services stay in their local mode, saying so.
 *
 * ## Failures
 *
 * A server that cannot be reached at start fails the layer with `RedisUnavailable`, naming the
 * URL without its credentials. Once connected, commands never queue while the connection is down:
 * they fail at once with `RedisError`, so each coordinating service can fall back to its local
 * behaviour (each documents its own) instead of waiting on a dead server. The connection itself
 * reconnects in the background (`isReady` and `readiness` say when it is back), and every
 * subscription is renewed when it does.
 *
 * Scripts are sent by their SHA-1 (`EVALSHA`) and again in full when the server does not know
 * them (a restarted server has forgotten every script).
 *
 * @since 0.1.0
 */

import type * as ConfigError from "effect/ConfigError"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import * as internal from "./internal/redis.js"

/**
 * The server could not be reached when the connection was opened. `url` has no credentials.
 *
 * @since 0.1.0
 * @category errors
 */
export const RedisUnavailable: typeof internal.RedisUnavailable = internal.RedisUnavailable

/**
 * @since 0.1.0
 * @category errors
 */
export type RedisUnavailable = internal.RedisUnavailable

/**
 * A command failed: the connection is down, the server did not answer within `commandTimeout`,
 * or it answered with an error.
 *
 * @since 0.1.0
 * @category errors
 */
export const RedisError: typeof internal.RedisError = internal.RedisError

/**
 * @since 0.1.0
 * @category errors
 */
export type RedisError = internal.RedisError

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS. Credentials never leave it. A database the server does not have fails the connection. */
  readonly url: string | Redacted.Redacted<string>
  /** The namespace of every key (a hash tag). Default `weatherproof`. */
  readonly prefix?: string | undefined
  /** How long opening the connection may take. Default 5 seconds. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** How long a command may wait for its answer before it fails. Default 2 seconds. */
  readonly commandTimeout?: Duration.DurationInput | undefined
}

/**
 * @since 0.1.0
 */
export const defaults: {
  readonly prefix: string
  readonly connectTimeout: Duration.Duration
  readonly commandTimeout: Duration.Duration
} = internal.defaults

/**
 * A Lua script bound to the connection: run it with its keys and arguments. Redis answers with
 * integers, strings, `null` and arrays of them.
 *
 * @since 0.1.0
 * @category models
 */
export type Script = (
  keys: ReadonlyArray<string>,
  args: ReadonlyArray<string | number>
) => Effect.Effect<unknown, RedisError>

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** The server's URL without credentials: safe to log. */
  readonly url: string
  /** The key of `parts` under the prefix: `{prefix}:part:part`, each part escaped. */
  readonly key: (...parts: ReadonlyArray<string>) => string
  /** A script to run by its SHA-1, sent in full when the server does not know it yet. */
  readonly script: (lua: string) => Script
  /** Runs one command. */
  readonly command: (name: string, args: ReadonlyArray<string | number>) => Effect.Effect<unknown, RedisError>
  /** Publishes `message` on `channel` (a key from `key`). */
  readonly publish: (channel: string, message: string) => Effect.Effect<void, RedisError>
  /**
   * Calls `onMessage` for each message on `channel` until the scope closes. It runs on the
   * JavaScript thread as the message arrives, so it must not block; it is renewed after a
   * reconnection (messages published while the connection was down are lost: pub/sub is a
   * wake-up, never the only way state is learnt).
   */
  readonly subscribe: (
    channel: string,
    onMessage: (message: string) => void
  ) => Effect.Effect<void, RedisError, Scope.Scope>
  /** Whether the connection is up now. */
  readonly isReady: Effect.Effect<boolean>
  /** Each change of `isReady`, starting with the current one. */
  readonly readiness: Stream.Stream<boolean>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Redis extends Context.Tag("weatherproof/Redis")<Redis, Service>() {}

/**
 * Opens the connection and a second one for pub/sub (a connection in pub/sub mode takes no other
 * command), and closes both with the scope. Fails with `RedisUnavailable` when the server cannot
 * be reached within `connectTimeout`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Redis } from "weatherproof"
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const redis = yield* Redis.make({ url: "redis://127.0.0.1:6379" })
 *   yield* redis.command("SET", [redis.key("hello"), "world"])
 * }))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (options: Options) => Effect.Effect<Service, RedisUnavailable, Scope.Scope> = internal.make

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<Redis, RedisUnavailable> => Layer.scoped(Redis, make(options))

/**
 * `WEATHERPROOF_REDIS_URL`, redacted: it may carry a password. An empty value (an env file's blank
 * entry) is none, as unset is. Read as a string, then redacted: `Config.redacted` would redact its
 * errors too, and an unset variable would say only `"<redacted>"`.
 *
 * @since 0.1.0
 * @category config
 */
export const urlConfig: Config.Config<Redacted.Redacted<string>> = Config.map(
  Config.nonEmptyString("WEATHERPROOF_REDIS_URL"),
  Redacted.make
)

/**
 * `WEATHERPROOF_REDIS_PREFIX`, default `defaults.prefix`: non-empty, without braces or whitespace.
 *
 * @since 0.1.0
 * @category config
 */
export const prefixConfig: Config.Config<string> = Config.string("WEATHERPROOF_REDIS_PREFIX").pipe(
  Config.validate({ message: `expected ${internal.invalidPrefix}`, validation: internal.isValidPrefix }),
  Config.withDefault(defaults.prefix)
)

/**
 * Whether a Redis URL carries a password, in its user part (`redis://:secret@host`) or as the
 * `?password=` ioredis reads: such a URL is never shown whole.
 *
 * @example
 * ```ts
 * import { Redis } from "weatherproof"
 *
 * Redis.carriesPassword("redis://127.0.0.1:6379/?password=secret") // true
 * ```
 *
 * @since 0.1.0
 * @category utils
 */
export const carriesPassword: (url: string) => boolean = internal.carriesPassword

/**
 * `WEATHERPROOF_REDIS_URL` (`urlConfig`) and `WEATHERPROOF_REDIS_PREFIX` (`prefixConfig`).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig: Layer.Layer<Redis, RedisUnavailable | ConfigError.ConfigError> = Layer.unwrapEffect(
  Config.map(Config.all({ url: urlConfig, prefix: prefixConfig }), layer)
)
