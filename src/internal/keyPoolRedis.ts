/**
 * A key pool's cooldowns shared on Redis: a rejected key rests as
 * `{prefix}:keys:<account>:<fingerprint>` with the cooldown as its TTL (set only if absent, so a
 * second rejection does not stretch it), announced on `{prefix}:keys:<account>:rejected`. Each
 * pool mirrors the resting keys of its account into its local cooldowns: on a message, on a
 * reconnection, and at the start.
 *
 * @internal
 */
import { createHash } from "node:crypto"
import * as Effect from "effect/Effect"
import * as Queue from "effect/Queue"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import type { Credential, Service } from "../KeyPool.js"
import type * as Redis from "../Redis.js"
import { currentMonotonicMillis } from "./monotonic.js"
import * as Fallback from "./redisFallback.js"

/** The first 16 hex digits of the SHA-256 of the key, in a domain of its own: never the key. */
export const fingerprint = (key: Redacted.Redacted<string>): string =>
  createHash("sha256").update(`weatherproof/KeyPool/v1\n${Redacted.value(key)}`).digest("hex").slice(0, 16)

/** KEYS: the key's cooldown, the channel. ARGV: cooldown ms, the fingerprint. */
const rejectScript = `
if redis.call("SET", KEYS[1], "1", "NX", "PX", ARGV[1]) then redis.call("PUBLISH", KEYS[2], ARGV[2]) end
return 0
`

/** KEYS: the cooldowns. Answers each one's PTTL (negative when the key is not resting). */
const restingScript = `
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call("PTTL", key) end
return out
`

/** The local pool that a shared one mirrors into. */
export interface Local {
  readonly service: Service
  readonly credentials: ReadonlyArray<Credential>
  readonly cooldownMillis: number
  readonly restUntil: (id: string, until: number) => Effect.Effect<void>
}

export const shared = (redis: Redis.Service, account: string, pool: Local): Effect.Effect<Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    const fingerprints = new Map(pool.credentials.map((credential) => [credential.id, fingerprint(credential.key)]))
    const keyOf = (id: string) => redis.key("keys", account, fingerprints.get(id)!)
    const channel = redis.key("keys", account, "rejected")
    const runReject = redis.script(rejectScript)
    const runResting = redis.script(restingScript)
    const fallback = Fallback.make(redis, `KeyPool "${account}"`, "keeping key cooldowns locally")

    const readResting = Effect.flatMap(runResting(pool.credentials.map((credential) => keyOf(credential.id)), []), (reply) =>
      Effect.flatMap(currentMonotonicMillis, (now) =>
        Effect.forEach(pool.credentials, (credential, i) => {
          const millis = Number((reply as ReadonlyArray<number>)[i])
          return millis > 0 ? pool.restUntil(credential.id, now + millis) : Effect.void
        }, { discard: true })))
    const mirror = fallback.run(readResting, Effect.void)

    const messages = yield* Queue.sliding<void>(1)
    yield* Effect.catchAll(redis.subscribe(channel, () => messages.unsafeOffer(undefined)), fallback.fail)
    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(Queue.take(messages), mirror)))
    yield* mirror
    yield* fallback.watch(Effect.zipRight(readResting, fallback.back).pipe(Effect.catchAll(fallback.fail)))

    return {
      ...pool.service,
      reject: (credential) =>
        Effect.zipRight(
          pool.service.reject(credential),
          fallback.run(Effect.asVoid(runReject([keyOf(credential.id), channel], [Math.ceil(pool.cooldownMillis), fingerprints.get(credential.id)!])), Effect.void)
        )
    }
  })
