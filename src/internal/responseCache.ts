/**
 * The response cache's pure parts: the canonical JSON a request key hashes, the in-memory LRU
 * with per-entry expiry behind the memory store, and the Redis store's script.
 *
 * @internal
 */

import { ExactInteger } from "./exactJson.js"

const noNames: ReadonlySet<string> = new Set()

/**
 * JSON with the keys of every object sorted (by UTF-16 code units, `Array.prototype.sort`'s
 * order), at every depth, but for the members of a JSON Schema's `properties`: under the
 * top-level keys in `schemas` (a request's `tools` and `response_format`), an object under a key
 * named `properties` keeps its order, which a model follows. Arrays keep their order; properties
 * whose value is `undefined` are left out, and `undefined` in an array becomes `null`, exactly as
 * `JSON.stringify` does, so `{ a: undefined }` and `{}` serialise alike. Strings and numbers are
 * written by `JSON.stringify` (lone surrogates escaped, `-0` as `0`), an `ExactInteger` as its digits.
 */
export const canonicalJson = (value: unknown, schemas: ReadonlySet<string> = noNames): string =>
  canonical(value, schemas, false, false)

const canonical = (value: unknown, schemas: ReadonlySet<string>, inSchema: boolean, keepOrder: boolean): string => {
  if (Array.isArray(value)) {
    return `[${value.map((item) => (item === undefined ? "null" : canonical(item, noNames, inSchema, false))).join(",")}]`
  }
  if (value instanceof ExactInteger) return value.digits
  if (value !== null && typeof value === "object") {
    const record = value as Readonly<Record<string, unknown>>
    const names = Object.keys(record).filter((name) => record[name] !== undefined)
    if (!keepOrder) names.sort()
    const members = names.map((name) => {
      const schema = inSchema || schemas.has(name)
      return `${JSON.stringify(name)}:${canonical(record[name], noNames, schema, schema && name === "properties")}`
    })
    return `{${members.join(",")}}`
  }
  return JSON.stringify(value)
}

interface Entry<A> {
  readonly value: A
  readonly expiresAt: number
}

/**
 * A least-recently-used map with expiry, on `Map`'s insertion order: a read or write moves the
 * entry to the end, so the first entry is always the least recently used. Synchronous, so each
 * operation is atomic on the JavaScript thread. Times are the caller's clock readings (ms).
 */
export class Lru<A> {
  private readonly entries = new Map<string, Entry<A>>()

  constructor(private readonly capacity: number) {}

  /** The live value under `key`, now the most recently used; an expired one is dropped. */
  get(key: string, now: number): A | undefined {
    const entry = this.entries.get(key)
    if (entry === undefined) return undefined
    this.entries.delete(key)
    if (entry.expiresAt <= now) return undefined
    this.entries.set(key, entry)
    return entry.value
  }

  /**
   * Stores `value` until `expiresAt` as the most recently used entry, then drops least recently
   * used entries beyond capacity. Answers how many live entries were evicted (an expired entry
   * dropped to make room was gone already and does not count).
   */
  set(key: string, value: A, expiresAt: number, now: number): number {
    this.entries.delete(key)
    this.entries.set(key, { value, expiresAt })
    let evicted = 0
    for (const [oldest, entry] of this.entries) {
      if (this.entries.size <= this.capacity) break
      this.entries.delete(oldest)
      if (entry.expiresAt > now) evicted++
    }
    return evicted
  }
}

/**
 * Deletes `KEYS[1]` only while it still holds `ARGV[1]` (a value that failed to decode), so a
 * good value another process wrote meanwhile stays; answers 1 when it deleted.
 */
export const deleteIfUnchanged = `
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
`
