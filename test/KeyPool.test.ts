import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as KeyPool from "../src/KeyPool.js"

const keys = ["sk-aaaa1111", "sk-bbbb2222", "sk-cccc3333"].map(Redacted.make)

describe("KeyPool", () => {
  it.effect("rotates keys round robin", () =>
    Effect.gen(function*() {
      const pool = yield* KeyPool.make(keys)
      const ids = yield* Effect.replicateEffect(pool.acquire, 4)
      expect(ids.map((c) => c.id)).toEqual(["key#1", "key#2", "key#3", "key#1"])
    }))

  it.effect("drops a rejected key and fails fast once none is left", () =>
    Effect.gen(function*() {
      const pool = yield* KeyPool.make(keys.slice(0, 2))
      const first = yield* pool.acquire
      yield* pool.reject(first)
      yield* pool.reject(first)
      expect(yield* pool.available).toBe(1)
      const second = yield* pool.acquire
      expect(second.id).toBe("key#2")
      yield* pool.reject(second)
      const error = yield* Effect.flip(pool.acquire)
      expect(error._tag).toBe("NoUsableKey")
      expect(error.rejected).toBe(2)
    }))

  it.effect("reads comma-separated keys from DEEPSEEK_API_KEY as redacted values", () =>
    Effect.gen(function*() {
      const parsed = yield* KeyPool.keysConfig
      expect(parsed.map(Redacted.value)).toEqual(["sk-one", "sk-two"])
      expect(String(parsed[0])).not.toContain("sk-one")
    }).pipe(
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DEEPSEEK_API_KEY", " sk-one , ,sk-two "]])))
    ))
})
