/**
 * Where the account pool keeps each member's state: its breaker, its key pool and its balance
 * state, in memory (one process) or on Redis (shared by every process using the account).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
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
  keys: (account, options) => KeyPool.make(account.keys, options),
  balance: () => Effect.succeed(SharedBalance.inMemory)
}

/**
 * Every member's state on `redis`, shared by account name: the breaker `CircuitBreaker.makeRedis`
 * named after the account, the key cooldowns `KeyPool.makeRedis`, the balance `SharedBalance.onRedis`.
 */
export const onRedis = (redis: Redis.Service, balance: SharedBalance.Options = {}): MemberState => ({
  breaker: (options) => Effect.provideService(CircuitBreaker.makeRedis(options), Redis.Redis, redis),
  keys: (account, options) =>
    Effect.provideService(KeyPool.makeRedis(account.keys, { ...options, account: account.name }), Redis.Redis, redis),
  balance: (account) => SharedBalance.onRedis(redis, account.name, balance)
})
