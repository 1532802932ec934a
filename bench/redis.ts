/**
 * The Redis state benchmark: what sharing a token bucket or a response cache through Redis costs
 * per operation, beside the in-memory version, on a `redis-server` the bench starts on a free
 * loopback port (the tests' launcher; without the binary the section is skipped).
 *
 * - **token bucket**: `take` of one request and 500 tokens on `TokenBucket.make` and on
 *   `TokenBucket.makeRedis` (one script round trip), at rates so high that no call waits.
 * - **cache store**: `get` (a hit) and `set` of a ~1 KB completion on the memory store and on the
 *   Redis store (one `GET` or `SET … PX` round trip, plus the JSON and its decoding).
 * - **PING**: one bare round trip on the same connection, the floor under every Redis row.
 *
 * Operations run one after another, as the overhead benchmark's loops do (`Overhead.settings`:
 * calls per run, median of the interleaved runs after warm-up), so each figure is the latency an
 * operation adds, not throughput.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import type { ChatCompletion } from "../src/ChatSchema.js"
import * as Redis from "../src/Redis.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as TokenBucket from "../src/TokenBucket.js"
import { redisServer, redisServerPresent, skipMessage } from "../test/support/redisServer.js"
import { effectLoop, measure, type Timing } from "./overhead.js"

/** Rates no call waits at. */
const rates: TokenBucket.Options = {
  requests: { limit: 1e9, interval: "1 second" },
  tokens: { limit: 1e12, interval: "1 second" }
}

const cost: TokenBucket.Cost = { requests: 1, tokens: 500 }

const completion: ChatCompletion = {
  id: "chatcmpl-bench",
  object: "chat.completion",
  created: 0,
  model: "deepseek-v4-flash",
  choices: [{ index: 0, message: { role: "assistant", content: "A fairly long answer. ".repeat(40) }, finish_reason: "stop" }],
  usage: { prompt_tokens: 120, completion_tokens: 200, total_tokens: 320 }
}

const cacheKey = ResponseCache.key({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "bench" }], temperature: 0 })

export interface Row {
  readonly operation: string
  readonly memory: Timing | undefined
  readonly redis: Timing
}

/** What the section prints when redis-server is absent. */
export const skipped: string | undefined = redisServerPresent ? undefined : skipMessage("Redis state")

export const run: Effect.Effect<ReadonlyArray<Row>> = Effect.scoped(Effect.gen(function*() {
  const server = yield* redisServer
  const runtime = ManagedRuntime.make(Layer.orDie(Redis.layer({ url: server.url })))
  yield* Effect.addFinalizer(() => Effect.promise(() => runtime.dispose()))
  return yield* Effect.promise(async () => {
    const [redis, memoryBucket, redisBucket, memoryStore, redisStore] = await runtime.runPromise(Effect.all([
      Redis.Redis,
      TokenBucket.make(rates),
      TokenBucket.makeRedis(rates),
      ResponseCache.makeMemoryStore(),
      ResponseCache.makeRedisStore
    ]))
    const timeToLive = ResponseCache.defaults.timeToLive
    await runtime.runPromise(Effect.all([memoryStore.set(cacheKey, completion, timeToLive), redisStore.set(cacheKey, completion, timeToLive)]))
    const timings = await measure({
      bucketMemory: effectLoop(runtime, () => memoryBucket.take(cost)),
      bucketRedis: effectLoop(runtime, () => redisBucket.take(cost)),
      getMemory: effectLoop(runtime, () => memoryStore.get(cacheKey)),
      getRedis: effectLoop(runtime, () => redisStore.get(cacheKey)),
      setMemory: effectLoop(runtime, () => memoryStore.set(cacheKey, completion, timeToLive)),
      setRedis: effectLoop(runtime, () => redisStore.set(cacheKey, completion, timeToLive)),
      ping: effectLoop(runtime, () => redis.command("PING", []))
    })
    return [
      { operation: "TokenBucket take (1 request, 500 tokens)", memory: timings["bucketMemory"], redis: timings["bucketRedis"]! },
      { operation: "CacheStore get (a hit, ~1 KB)", memory: timings["getMemory"], redis: timings["getRedis"]! },
      { operation: "CacheStore set (~1 KB)", memory: timings["setMemory"], redis: timings["setRedis"]! },
      { operation: "PING (one round trip, the floor)", memory: undefined, redis: timings["ping"]! }
    ]
  })
}))
