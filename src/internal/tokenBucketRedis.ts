/**
 * The token bucket's shared state on Redis: one Lua script that refills, draws (or refunds) every
 * bucket of a call at once, timed by the server's `TIME`, and keeps a record of the processes
 * drawing from it.
 *
 * State, under the bucket's name:
 * - `{prefix}:bucket:<name>`: a hash, per dimension its units (`<dimension>`, fractional, below
 *   zero while waiters are in debt) and the server time they were counted at (`<dimension>:at`,
 *   ms), and `draws`, the waiting draws counted (the last one's is the only refund taken). It expires when it would be full again (plus a margin): a bucket that nobody drew from
 *   for that long is full, and a missing one reads as full.
 * - `{prefix}:bucket:<name>:processes`: a sorted set of the drawing services' ids, scored by the
 *   server time at which each is no longer counted (`presenceMillis` after its last draw).
 *   Expired ids are dropped on every draw, and the set itself expires with the last of them.
 *
 * @internal
 */
import { randomUUID } from "node:crypto"
import * as Effect from "effect/Effect"
import type { Service } from "../Redis.js"
import type { Cost } from "../TokenBucket.js"
import { RedisError } from "./redis.js"
import type { Bucket, Wait } from "./tokenBucket.js"
import { unitsOf } from "./tokenBucket.js"

/**
 * KEYS: the balances, the processes. ARGV: the operation (`wait` draws into debt, `fail` draws
 * only when every bucket holds its cost, `refund` gives a cost back), the service's id,
 * presence ms, expiry margin ms, the ticket of the draw a refund gives back, then for each
 * bucket its dimension, capacity, ms per unit, cost. Answers `{wait ms (a string: Lua numbers
 * come back as integers), the short bucket's index (1-based, 0 when none), the processes
 * counted, a waiting draw's ticket (0 for none)}`.
 */
export const script = `
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local operation, id = ARGV[1], ARGV[2]
local presence, margin, ticket = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local buckets, fields = {}, {}
for i = 6, #ARGV, 4 do
  buckets[#buckets + 1] = {
    dimension = ARGV[i], capacity = tonumber(ARGV[i + 1]), refill = tonumber(ARGV[i + 2]), cost = tonumber(ARGV[i + 3])
  }
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i] .. ":at"
end
local stored = redis.call("HMGET", KEYS[1], unpack(fields))
local wait, short = 0, 0
for i, bucket in ipairs(buckets) do
  local units = tonumber(stored[2 * i - 1]) or bucket.capacity
  local at = tonumber(stored[2 * i]) or now
  -- A clock that moved backwards (a failover to a server whose clock is behind) adds nothing,
  -- and refilling goes on from its time.
  bucket.units = math.min(bucket.capacity, units + math.max(0, now - at) / bucket.refill)
  bucket.at = now
  if bucket.cost > 0 then
    local millis = math.max(0, bucket.cost - bucket.units) * bucket.refill
    if millis > wait then wait, short = millis, i end
  end
end
if operation == "refund" then wait, short = 0, 0 end
-- A waiter that gave up gives its cost back only while it is the last in line: the waiters after
-- it sleep until the times their draws were given.
local credited = operation == "refund" and redis.call("HGET", KEYS[1], "draws") == ticket
-- A refusal draws nothing; the refill is kept all the same, counted from now.
local refused = operation == "fail" and short > 0
local refilled = 0
for _, bucket in ipairs(buckets) do
  if credited then
    bucket.units = math.min(bucket.capacity, bucket.units + bucket.cost)
  elseif operation ~= "refund" and not refused then
    bucket.units = bucket.units - bucket.cost
  end
  redis.call("HSET", KEYS[1], bucket.dimension, bucket.units, bucket.dimension .. ":at", bucket.at)
  refilled = math.max(refilled, (bucket.capacity - bucket.units) * bucket.refill)
end
redis.call("PEXPIRE", KEYS[1], math.ceil(refilled) + margin)
redis.call("ZADD", KEYS[2], now + presence, id)
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", now)
redis.call("PEXPIRE", KEYS[2], presence)
local drawn = 0
if operation == "wait" and short > 0 then drawn = redis.call("HINCRBY", KEYS[1], "draws", 1) end
return { tostring(wait), short, redis.call("ZCARD", KEYS[2]), drawn }
`

export type Operation = "wait" | "fail" | "refund"

/** How long a service counts among the processes sharing a bucket after its last draw. */
const presenceMillis = 60_000

/** How long a bucket's state outlives the time it takes to refill fully. */
const expiryMarginMillis = 1_000

/** What a draw learnt: how long its caller must wait (if at all), and how many processes share the bucket. */
export interface Reply {
  readonly wait: Wait | undefined
  readonly processes: number
}

const replyOf = (buckets: ReadonlyArray<Bucket>, reply: unknown): Effect.Effect<Reply, RedisError> => {
  if (!Array.isArray(reply) || reply.length !== 4) {
    return Effect.fail(new RedisError({ operation: "EVALSHA", reason: "the token bucket script answered an unexpected reply" }))
  }
  const [millis, short, processes, ticket] = reply as [string, number, number, number]
  const bucket = buckets[short - 1]
  return Effect.succeed({
    wait: bucket === undefined ? undefined : { dimension: bucket.dimension, millis: Number(millis), ...(ticket > 0 ? { ticket } : {}) },
    processes
  })
}

/**
 * The buckets named `name` on `redis`, for one service (one id among the processes): runs an
 * operation for a cost and answers what it learnt.
 */
export const shared = (redis: Service, name: string, buckets: ReadonlyArray<Bucket>) => {
  const run = redis.script(script)
  const keys = [redis.key("bucket", name), redis.key("bucket", name, "processes")]
  const id = randomUUID()
  return (operation: Operation, cost: Cost, ticket = 0): Effect.Effect<Reply, RedisError> =>
    Effect.flatMap(
      run(keys, [
        operation,
        id,
        presenceMillis,
        expiryMarginMillis,
        ticket,
        ...buckets.flatMap((bucket) => [bucket.dimension, bucket.capacity, bucket.refillMillis, unitsOf(cost, bucket.dimension)])
      ]),
      (reply) => replyOf(buckets, reply)
    )
}
