/**
 * Where the account pool keeps each member's state: its breaker, its key pool and its balance
 * state, in memory (one process) or on Redis (shared by every process using the account).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import { createHash } from "node:crypto"
import type * as Scope from "effect/Scope"
import type { Account } from "../Accounts.js"
import * as CircuitBreaker from "../CircuitBreaker.js"
import * as KeyPool from "../KeyPool.js"
import * as Redis from "../Redis.js"
import * as SharedBalance from "./sharedBalance.js"

export interface MemberState {
  /** The account's breaker; `options.name` is the account's name. */
  readonly breaker: (options: CircuitBreaker.RedisOptions) => Effect.Effect<CircuitBreaker.Service, never, Scope.Scope>
  readonly keys: (account: Account, options: KeyPool.Options) => Effect.Effect<KeyPool.Service, never, Scope.Scope>
  readonly balance: (account: Account) => Effect.Effect<SharedBalance.SharedBalance, never, Scope.Scope>
}

/** Every member's state in this process. */
export const inMemory: MemberState = {
  breaker: CircuitBreaker.make,
  keys: (account, options) => KeyPool.make(account.keys, { ...options, sources: account.keySources }),
  balance: () => Effect.succeed(SharedBalance.inMemory)
}

/**
 * What an account's balance is shared under: its name and a fingerprint of its keys (never a
 * key). Two accounts given one name (`default`, every `DEEPSEEK_API_KEY`'s) with other keys are
 * two balances: one out of balance took the other out. (Processes of one account given other keys
 * each probe its balance.)
 */
const balanceName = (account: Account): string => {
  const keys = [...new Set(account.keys.map(KeyPool.fingerprintOf))].sort().join(" ")
  return `${account.name}:${createHash("sha256").update(keys).digest("hex").slice(0, 16)}`
}

/**
 * Every member's state on `redis`, shared by account name: the breaker `CircuitBreaker.makeRedis`
 * named after the account, the key cooldowns `KeyPool.makeRedis`, the balance `SharedBalance.onRedis`
 * (under the name and the keys: `balanceName`).
 */
export const onRedis = (redis: Redis.Service, balance: SharedBalance.Options = {}): MemberState => ({
  breaker: (options) => Effect.provideService(CircuitBreaker.makeRedis(options), Redis.Redis, redis),
  keys: (account, options) =>
    Effect.provideService(
      KeyPool.makeRedis(account.keys, { ...options, sources: account.keySources, account: account.name }),
      Redis.Redis,
      redis
    ),
  balance: (account) => SharedBalance.onRedis(redis, balanceName(account), balance)
})
