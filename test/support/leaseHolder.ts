/**
 * A process that takes `<count>` permits of the Redis limiter `<name>` (fixed `<permits>`, lease
 * TTL `<ttl ms>`) on `<url>`, says `holding <count>` and holds them until it is killed: for the
 * test of a process that dies with its leases. Run by vite-node.
 */
import * as Effect from "effect/Effect"
import * as ConcurrencyLimiter from "../../src/ConcurrencyLimiter.js"
import * as Redis from "../../src/Redis.js"

const [url, name, permits, ttl, count] = process.argv.slice(2).filter((arg) => arg !== "--")

const program = Effect.scoped(Effect.gen(function*() {
  const limiter = yield* ConcurrencyLimiter.makeRedis({ name: name!, permits: Number(permits), leaseTtl: Number(ttl) })
  yield* Effect.forEach(Array.from({ length: Number(count) }), () => limiter.acquire(), { concurrency: "unbounded" })
  console.log(`holding ${count}`)
  return yield* Effect.never
})).pipe(Effect.provide(Redis.layer({ url: url! })))

Effect.runFork(program)
