/**
 * The API keys a transport may use, rotated per call. A key the server rejects with 401 is set
 * aside for a cooldown (15 minutes by default, on Effect's `Clock`) and is usable again after it:
 * a key revoked by mistake, or rejected during an auth outage, comes back by itself, and nothing
 * is disabled forever. While every key is cooling down, calls fail fast with `NoUsableKey`
 * without touching the network.
 *
 * Keys are `Redacted` from the moment they are read: only the transport unwraps one, to set the
 * `Authorization` header. Everything else sees a `Credential`'s non-secret `id` (`key#1` …).
 *
 * @since 0.1.0
 */

import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import { NoUsableKey } from "./ApiError.js"
import * as DurationTexts from "./internal/durationText.js"
import * as internalRedis from "./internal/keyPoolRedis.js"
import { monotonicMillis } from "./internal/monotonic.js"
import { assertValid, positiveDuration } from "./internal/options.js"
import * as Redis from "./Redis.js"

/**
 * One key and its public label.
 *
 * @since 0.1.0
 */
export interface Credential {
  readonly id: string
  readonly key: Redacted.Redacted<string>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** The next usable key, round robin; fails with `NoUsableKey` while none is usable. */
  readonly acquire: Effect.Effect<Credential, NoUsableKey>
  /** Sets aside a key the server rejected (401) for the cooldown. Idempotent while it cools down. */
  readonly reject: (credential: Credential) => Effect.Effect<void>
  /** How many keys are usable now. */
  readonly available: Effect.Effect<number>
  /**
   * When the first key cooling down is usable again, in epoch millis on the `Clock`'s monotonic
   * time (`currentTimeNanos`); none when no key is.
   */
  readonly cooldownEnd: Effect.Effect<Option.Option<number>>
  /** The ids of the keys set aside now (rejected, cooling down), in the pool's order. */
  readonly resting: Effect.Effect<ReadonlyArray<string>>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class KeyPool extends Context.Tag("weatherproof/KeyPool")<KeyPool, Service>() {}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * How long a rejected key is set aside. Default 15 minutes. Keep it well above a call's
   * duration: within one call the transport rotates through the usable keys on 401s.
   */
  readonly cooldown?: Duration.DurationInput | undefined
  /**
   * Where each key came from, in order (`Accounts.Account.keySources`): a key's id then says it,
   * `key#2 from DEEPSEEK_KEY_B`. None (or an `undefined` entry) names a key by its place alone.
   */
  readonly sources?: ReadonlyArray<string | undefined> | undefined
  /**
   * Whose keys these are, as the warning logged when the upstream rejects one names them
   * (`account main: the upstream rejected its key#2 (401); …`). Default `KeyPool`.
   */
  readonly label?: string | undefined
}

/** @since 0.1.0 */
export const defaultCooldown: Duration.Duration = Duration.minutes(15)

/**
 * The pool in memory, and a way to set a key aside until a given time (epoch millis on the
 * `Clock`'s monotonic time): what a pool shared on Redis learns another process rejected.
 *
 * `acquire` runs before every call, so the state is plain mutable values in this closure, each
 * read and updated in one synchronous step with the clock read from the fiber.
 */
const inMemory = (keys: ReadonlyArray<Redacted.Redacted<string>>, options: Options | undefined) =>
  Effect.gen(function*() {
    const cooldown = options?.cooldown ?? defaultCooldown
    yield* Effect.sync(() =>
      assertValid("KeyPool", [
        // With none, every call would fail `NoUsableKey` ("0 rejected"): a key list left empty.
        keys.length === 0 ? "keys must hold at least one key" : undefined,
        positiveDuration("cooldown", cooldown)
      ])
    )
    const cooldownMillis = Duration.toMillis(cooldown)
    const credentials: ReadonlyArray<Credential> = keys.map((key, i) => {
      const source = options?.sources?.[i]
      return { id: `key#${i + 1}${source === undefined ? "" : ` from ${source}`}`, key }
    })
    /** Until when (monotonic epoch millis) each rejected key is set aside, by id. */
    const rejectedUntil = new Map<string, number>()
    let next = 0
    const isCooling = (id: string, now: number) => (rejectedUntil.get(id) ?? 0) > now
    const usableAt = (now: number) => credentials.filter((c) => !isCooling(c.id, now))
    const withNow = <A, E>(f: (now: number) => Effect.Effect<A, E>) =>
      Effect.clockWith((clock) => f(monotonicMillis(clock)))
    const restUntil = (id: string, until: number) =>
      Effect.sync(() => {
        if ((rejectedUntil.get(id) ?? 0) < until) rejectedUntil.set(id, until)
      })

    /** When the first key resting at `now` is back (monotonic epoch millis), if one rests. */
    const firstBackAt = (now: number): Option.Option<number> => {
      const ends = Array.from(rejectedUntil.values()).filter((until) => until > now)
      return ends.length === 0 ? Option.none() : Option.some(Math.min(...ends))
    }

    const service: Service = {
      acquire: withNow((now) => {
        const usable = usableAt(now)
        if (usable.length === 0) {
          const retryAfter = Option.map(firstBackAt(now), (at) => Duration.millis(at - now))
          return Effect.fail(new NoUsableKey({ rejected: credentials.length, retryAfter }))
        }
        const index = next % usable.length
        next = index + 1
        return Effect.succeed(usable[index]!)
      }),
      reject: (credential) =>
        withNow((now) => isCooling(credential.id, now) ? Effect.void : restUntil(credential.id, now + cooldownMillis)),
      available: withNow((now) => Effect.succeed(usableAt(now).length)),
      cooldownEnd: withNow((now) => Effect.succeed(firstBackAt(now))),
      resting: withNow((now) => Effect.succeed(credentials.flatMap((c) => isCooling(c.id, now) ? [c.id] : [])))
    }
    return { service, credentials, cooldownMillis, restUntil }
  })

/**
 * `keys`, warning when the upstream sets one aside: a key pasted wrong or revoked otherwise shows
 * only as calls that rotate past it, or, the last key gone, fail with `NoUsableKey`. A key revoked
 * for good is rejected again after each rest: said as such, with how many times.
 */
const warningOnReject = (keys: Service, total: number, options: Options | undefined): Service => {
  const cooldown = Duration.decode(options?.cooldown ?? defaultCooldown)
  const rejections = new Map<string, number>()
  return {
    ...keys,
    reject: (credential) =>
      Effect.gen(function*() {
        const before = yield* keys.available
        yield* keys.reject(credential)
        const after = yield* keys.available
        if (after >= before) return
        const times = (rejections.get(credential.id) ?? 0) + 1
        rejections.set(credential.id, times)
        yield* Effect.logWarning(
          `${options?.label ?? "KeyPool"}: the upstream rejected its ${credential.id}${
            times === 1 ? " (401)" : ` again (401; ${times} times in all)`
          }; it rests ${DurationTexts.format(cooldown)}, ${after} of ${total} ${total === 1 ? "key" : "keys"} usable`
        )
      })
  }
}

/**
 * A pool over the given keys, labelled `key#1`, `key#2` … in order (`key#2 from NAME` where
 * `sources` names where one came from). Dies with `IllegalArgumentException` on no keys or a
 * cooldown that is not positive.
 *
 * @example
 * ```ts
 * import { Effect, Redacted } from "effect"
 * import { KeyPool } from "weatherproof"
 *
 * declare const keys: ReadonlyArray<Redacted.Redacted<string>> // e.g. from your secret store
 *
 * const program = Effect.gen(function*() {
 *   const pool = yield* KeyPool.make(keys, { cooldown: "5 minutes" })
 *   const credential = yield* pool.acquire // key#1, then key#2, …; a rejected key sits out 5 minutes
 *   return credential.id
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  keys: ReadonlyArray<Redacted.Redacted<string>>,
  options?: Options
): Effect.Effect<Service> => Effect.map(inMemory(keys, options), (pool) => warningOnReject(pool.service, keys.length, options))

/**
 * The fingerprint that stands for `key` on Redis (see `makeRedis`): 16 hex digits, never the key.
 *
 * @since 0.1.0
 */
export const fingerprintOf: (key: Redacted.Redacted<string>) => string = internalRedis.fingerprint

/**
 * @since 0.1.0
 * @category models
 */
export interface RedisOptions extends Options {
  /** The account the keys belong to: the pools of one account, in every process, share their cooldowns. */
  readonly account: string
}

/**
 * A pool whose cooldowns are shared on Redis by every pool of the same `account` and prefix: a
 * key one process saw rejected rests in all. `acquire` stays local (a mirror of the resting keys,
 * re-read when another process rejects one and on a reconnection).
 *
 * On Redis a key is known by its fingerprint only: the first 16 hex digits of the SHA-256 of
 * `"weatherproof/KeyPool/v1\n" + key`, in `{prefix}:keys:<account>:<fingerprint>`, set with the
 * cooldown as its TTL. An API key is a long random string, so its hash tells nothing of it and
 * cannot be reversed or guessed from it; the domain prefix keeps the hash from matching one
 * computed for any other purpose. While Redis fails the cooldowns are local (one warning naming
 * the server's URL, one note when it is back).
 *
 * @example
 * ```ts
 * import { Effect, Redacted } from "effect"
 * import { KeyPool, Redis } from "weatherproof"
 *
 * declare const keys: ReadonlyArray<Redacted.Redacted<string>>
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const pool = yield* KeyPool.makeRedis(keys, { account: "main", cooldown: "5 minutes" })
 *   return (yield* pool.acquire).id
 * })).pipe(Effect.provide(Redis.layer({ url: "redis://127.0.0.1:6379" })))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeRedis = (
  keys: ReadonlyArray<Redacted.Redacted<string>>,
  options: RedisOptions
): Effect.Effect<Service, never, Redis.Redis | Scope.Scope> =>
  Effect.gen(function*() {
    const pool = yield* inMemory(keys, options)
    return warningOnReject(yield* internalRedis.shared(yield* Redis.Redis, options.account, pool), keys.length, options)
  })

/**
 * `makeRedis` as a layer: every process's layer with the same `account` and prefix shares the
 * keys' cooldowns.
 *
 * @example
 * ```ts
 * import { Layer, Redacted } from "effect"
 * import { KeyPool, Redis } from "weatherproof"
 *
 * const keys = KeyPool.layerRedis([Redacted.make("sk-...")], { account: "main" }).pipe(
 *   Layer.provide(Redis.layerConfig)
 * )
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRedis = (
  keys: ReadonlyArray<Redacted.Redacted<string>>,
  options: RedisOptions
): Layer.Layer<KeyPool, never, Redis.Redis> => Layer.scoped(KeyPool, makeRedis(keys, options))

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (keys: ReadonlyArray<Redacted.Redacted<string>>, options?: Options): Layer.Layer<KeyPool> =>
  Layer.effect(KeyPool, make(keys, options))

/**
 * Parses a comma-separated list of keys, ignoring blanks around commas.
 *
 * @since 0.1.0
 */
export const parseKeyList = (keys: Redacted.Redacted<string>): ReadonlyArray<Redacted.Redacted<string>> =>
  Redacted.value(keys)
    .split(",")
    .map((key) => key.trim())
    .filter((key) => key.length > 0)
    .map(Redacted.make)

/**
 * What is wrong with `keys`, if anything: a key is visible ASCII, and one holding a space, a line
 * break or another character a request header cannot carry (a key file pasted whole, one key a
 * line) would fail every call as if the upstream were down. Names the first such key by its
 * label (`key#n`), never by its text.
 *
 * @since 0.1.0
 * @category config
 */
export const keysProblem = (keys: ReadonlyArray<Redacted.Redacted<string>>): string | undefined => {
  const index = keys.findIndex((key) => /[^\x21-\x7e]/.test(Redacted.value(key)))
  return index < 0
    ? undefined
    : `key#${index + 1} holds a space, a line break or another character a request header cannot carry (keys are separated by commas)`
}

/**
 * Keys from `DEEPSEEK_API_KEY`: one key, or several separated by commas. None (unset, empty or
 * only commas) is missing data; a key that no request header can carry (`keysProblem`), or one
 * listed twice, is invalid.
 *
 * @since 0.1.0
 * @category config
 */
export const keysConfig: Config.Config<ReadonlyArray<Redacted.Redacted<string>>> = Config.string(
  "DEEPSEEK_API_KEY"
).pipe(Config.mapOrFail((value) => {
  // Read as the string it is (so that its problems name the variable), redacted at once.
  const keys = parseKeyList(Redacted.make(value))
  if (keys.length === 0) return Either.left(ConfigError.MissingData([], "expected at least one key"))
  const problem = keysProblem(keys) ?? repeatedKey(keys)
  return problem === undefined ? Either.right(keys) : Either.left(ConfigError.InvalidData([], problem))
}))

/** A key listed twice, by its places: a key the upstream rejects would be sent again under its second label. */
const repeatedKey = (keys: ReadonlyArray<Redacted.Redacted<string>>): string | undefined => {
  const values = keys.map(Redacted.value)
  const again = values.findIndex((key, index) => values.indexOf(key) < index)
  return again < 0 ? undefined : `key#${again + 1} is key#${values.indexOf(values[again]!) + 1} again: list each key once`
}

/**
 * A pool over the keys in `DEEPSEEK_API_KEY`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig: Layer.Layer<KeyPool, ConfigError.ConfigError> =
  Layer.effect(KeyPool, Effect.flatMap(keysConfig, make))
