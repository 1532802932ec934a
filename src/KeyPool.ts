/**
 * The API keys a transport may use, rotated per call. A key the server rejects with 401 is
 * dropped, and once every key is gone calls fail fast with `NoUsableKey` without touching the
 * network.
 *
 * Keys are `Redacted` from the moment they are read: only the transport unwraps one, to set the
 * `Authorization` header. Everything else sees a `Credential`'s non-secret `id` (`key#1` …).
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import { NoUsableKey } from "./ApiError.js"

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
  /** The next usable key, round robin; fails with `NoUsableKey` when none is left. */
  readonly acquire: Effect.Effect<Credential, NoUsableKey>
  /** Drops a key the server rejected (401). Idempotent. */
  readonly reject: (credential: Credential) => Effect.Effect<void>
  /** How many keys are still usable. */
  readonly available: Effect.Effect<number>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class KeyPool extends Context.Tag("weatherproof/KeyPool")<KeyPool, Service>() {}

interface State {
  readonly usable: ReadonlyArray<Credential>
  readonly next: number
  readonly rejected: number
}

/**
 * A pool over the given keys, labelled `key#1`, `key#2` … in order.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (keys: ReadonlyArray<Redacted.Redacted<string>>): Effect.Effect<Service> =>
  Effect.map(
    Ref.make<State>({
      usable: keys.map((key, i) => ({ id: `key#${i + 1}`, key })),
      next: 0,
      rejected: 0
    }),
    (state): Service => ({
      acquire: Ref.modify(state, (s): readonly [Effect.Effect<Credential, NoUsableKey>, State] => {
        if (s.usable.length === 0) {
          return [Effect.fail(new NoUsableKey({ rejected: s.rejected })), s] as const
        }
        const index = s.next % s.usable.length
        return [Effect.succeed(s.usable[index]!), { ...s, next: index + 1 }] as const
      }).pipe(Effect.flatten),
      reject: (credential) =>
        Ref.update(state, (s) =>
          s.usable.some((c) => c.id === credential.id)
            ? { ...s, usable: s.usable.filter((c) => c.id !== credential.id), rejected: s.rejected + 1 }
            : s
        ),
      available: Ref.get(state).pipe(Effect.map((s) => s.usable.length))
    })
  )

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (keys: ReadonlyArray<Redacted.Redacted<string>>): Layer.Layer<KeyPool> =>
  Layer.effect(KeyPool, make(keys))

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
 * Keys from `DEEPSEEK_API_KEY`: one key, or several separated by commas.
 *
 * @since 0.1.0
 * @category config
 */
export const keysConfig: Config.Config<ReadonlyArray<Redacted.Redacted<string>>> = Config.redacted(
  "DEEPSEEK_API_KEY"
).pipe(Config.map(parseKeyList))

/**
 * A pool over the keys in `DEEPSEEK_API_KEY`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig: Layer.Layer<KeyPool, import("effect/ConfigError").ConfigError> =
  Layer.effect(KeyPool, Effect.flatMap(keysConfig, make))
