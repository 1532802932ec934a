/**
 * Client authentication: gateway keys (never the upstream's), sent as `Authorization: Bearer
 * <key>` as every OpenAI client does. Keys are compared by their SHA-256 digests in constant
 * time, so neither a key's content nor its length leaks through timing.
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { createHash, timingSafeEqual } from "node:crypto"
import { keysProblem, parseKeyList } from "../../src/KeyPool.js"
import { isLoopback } from "../../src/internal/loopback.js"
import { RefusedBrowser, Unauthorized } from "./errors.js"

/**
 * `WEATHERPROOF_GATEWAY_KEYS`: the keys clients must present, separated by commas; none when
 * unset or empty. A key no request header can carry (`KeyPool.keysProblem`: keys separated by
 * spaces, say) is refused: no client could present it.
 */
export const gatewayKeysConfig: Config.Config<ReadonlyArray<Redacted.Redacted<string>>> = Config.redacted(
  "WEATHERPROOF_GATEWAY_KEYS"
).pipe(
  Config.option,
  Config.map(Option.match({ onNone: () => [], onSome: parseKeyList })),
  Config.mapOrFail((keys) => {
    const problem = keysProblem(keys)
    return problem === undefined ? Either.right(keys) : Either.left(ConfigError.InvalidData(["WEATHERPROOF_GATEWAY_KEYS"], problem))
  })
)

const digest = (text: string): Buffer => createHash("sha256").update(text).digest()

/** The host name of a `Host` header (`127.0.0.1:8787`, `[::1]:8787`), lower case. */
const hostOfHeader = (header: string): string => /^(\[[^\]]*\]|[^:]*)/.exec(header.trim())![1]!.toLowerCase()

/** The host name of an `Origin` header (`http://localhost:3000`), or `undefined` for `null` and other opaque origins. */
const hostOfOrigin = (origin: string): string | undefined =>
  /^[a-z][a-z0-9+.-]*:\/\/(\[[^\]]*\]|[^:/]*)(?::\d*)?\/?$/i.exec(origin.trim())?.[1]?.toLowerCase()

/** A host this machine's own programs address: a loopback one, a `*.localhost` name, or the one the gateway listens on. */
const isLocalName = (host: string, listening: string): boolean =>
  isLoopback(host) || host.endsWith(".localhost") || host === listening.toLowerCase()

/**
 * A check that a keyless gateway answers only this machine's programs, never a web page: a
 * page can send a POST to `http://127.0.0.1:8787` from any site the user visits (a `text/plain`
 * body needs no CORS preflight), and through DNS rebinding read the answer too, spending the
 * accounts' balance. Without gateway keys a request is refused when its `Origin` is not a local
 * one or its `Host` is not a name of this machine (a rebound name). With keys, every request
 * passes here: the key is the check, and a page cannot know it.
 */
export const makeBrowserGuard = (keys: ReadonlyArray<Redacted.Redacted<string>>, listening: string) =>
(host: string | undefined, origin: string | undefined): RefusedBrowser | undefined => {
  if (keys.length > 0) return undefined
  if (host !== undefined && !isLocalName(hostOfHeader(host), listening)) {
    return new RefusedBrowser({ header: "host", value: host })
  }
  if (origin === undefined) return undefined
  const originHost = hostOfOrigin(origin)
  return originHost !== undefined && isLocalName(originHost, listening) ? undefined : new RefusedBrowser({ header: "origin", value: origin })
}

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
      // A header without the scheme (`Authorization: <key>`) holds a key, in a form not read.
      const what = authorization === undefined || authorization.trim() === "" ? "missing gateway key" : "no gateway key read from the Authorization header"
      return Effect.fail(new Unauthorized({ message: `${what}: send it as \`Authorization: Bearer <key>\`` }))
    }
    const candidate = digest(presented)
    // Every key is compared, so the time does not tell which one matched.
    const matched = digests.reduce((found, key) => timingSafeEqual(key, candidate) || found, false)
    return matched ? Effect.void : Effect.fail(new Unauthorized({ message: "incorrect gateway key" }))
  }
}
