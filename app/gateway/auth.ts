/**
 * Client authentication: gateway keys (never the upstream's), sent as `Authorization: Bearer
 * <key>` as every OpenAI client does. Keys are compared by their SHA-256 digests in constant
 * time, so neither a key's content nor its length leaks through timing.
 */
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { createHash, timingSafeEqual } from "node:crypto"
import { parseKeyList } from "../../src/KeyPool.js"
import { Unauthorized } from "./errors.js"

/**
 * `WEATHERPROOF_GATEWAY_KEYS`: the keys clients must present, separated by commas; none when
 * unset or empty.
 */
export const gatewayKeysConfig: Config.Config<ReadonlyArray<Redacted.Redacted<string>>> = Config.redacted(
  "WEATHERPROOF_GATEWAY_KEYS"
).pipe(Config.option, Config.map(Option.match({ onNone: () => [], onSome: parseKeyList })))

const digest = (text: string): Buffer => createHash("sha256").update(text).digest()

/** Hosts that only this machine can reach: serving on them without gateway keys is allowed. */
export const isLoopback = (host: string): boolean =>
  host === "localhost" || host === "::1" || host === "[::1]" || /^127(\.\d{1,3}){3}$/.test(host)

/**
 * A check of the `Authorization` header against the gateway keys. With no keys every request
 * passes (allowed only on a loopback host).
 */
export const makeAuthorizer = (keys: ReadonlyArray<Redacted.Redacted<string>>) => {
  const digests = keys.map((key) => digest(Redacted.value(key)))
  return (authorization: string | undefined): Effect.Effect<void, Unauthorized> => {
    if (digests.length === 0) return Effect.void
    const presented = /^Bearer\s+(.+)$/i.exec(authorization?.trim() ?? "")?.[1]
    if (presented === undefined) {
      return Effect.fail(new Unauthorized({ message: "missing gateway key: send it as `Authorization: Bearer <key>`" }))
    }
    const candidate = digest(presented)
    // Every key is compared, so the time does not tell which one matched.
    const matched = digests.reduce((found, key) => timingSafeEqual(key, candidate) || found, false)
    return matched ? Effect.void : Effect.fail(new Unauthorized({ message: "incorrect gateway key" }))
  }
}
