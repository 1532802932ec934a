/**
 * What a permit costs on a lane shared through Redis, beside the in-memory limiter: `withPermit`
 * around nothing, uncontended (acquire: one script round trip that queues the caller and grants it
 * at once; release: one more, sent without waiting), on a `redis-server` started on a free
 * loopback port, with a PING round trip as the floor. Fixed and adaptive limits (an adaptive
 * permit's success is also applied to the shared state by the lane's flush, off the call's path).
 *
 * Not wired into `bench/run.ts` (the Redis rows there are another change's): run it alone with
 * `npx vite-node bench/redisLeases.ts`. Same loops and medians as the overhead benchmark.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as ConcurrencyLimiter from "../src/ConcurrencyLimiter.js"
import * as Redis from "../src/Redis.js"
import { redisServer, redisServerPresent, skipMessage } from "../test/support/redisServer.js"
import { effectLoop, measure } from "./overhead.js"

const success: ConcurrencyLimiter.Outcome = { _tag: "Success" }

const program = Effect.scoped(Effect.gen(function*() {
  const server = yield* redisServer
  const redis = yield* Redis.make({ url: server.url })
  const shared = (options: ConcurrencyLimiter.RedisOptions) =>
    Effect.provideService(ConcurrencyLimiter.makeRedis(options), Redis.Redis, redis)
  const fixed = yield* ConcurrencyLimiter.makeFixed(1000)
  const fixedRedis = yield* shared({ name: "bench-fixed", permits: 1000 })
  const adaptive = yield* ConcurrencyLimiter.makeAdaptive()
  const adaptiveRedis = yield* shared({ name: "bench-adaptive" })
  const runtime = ManagedRuntime.make(Layer.empty)
  yield* Effect.addFinalizer(() => Effect.promise(() => runtime.dispose()))
  const once = (limiter: ConcurrencyLimiter.Service) => () => limiter.withPermit((permit) => permit.complete(success))
  return yield* Effect.promise(() =>
    measure({
      "fixed, in memory": effectLoop(runtime, once(fixed)),
      "fixed, Redis lane": effectLoop(runtime, once(fixedRedis)),
      "adaptive, in memory": effectLoop(runtime, once(adaptive)),
      "adaptive, Redis lane": effectLoop(runtime, once(adaptiveRedis)),
      "PING (the floor)": effectLoop(runtime, () => redis.command("PING", []))
    })
  )
}))

if (!redisServerPresent) console.log(skipMessage("Redis leases"))
else {
  Effect.runPromise(program).then((timings) => {
    for (const [name, timing] of Object.entries(timings)) {
      console.log(`${name.padEnd(24)} ${(timing.wall / 1000).toFixed(1).padStart(8)} µs wall ${(timing.cpu / 1000).toFixed(1).padStart(8)} µs CPU per permit`)
    }
    process.exit(0)
  })
}
