/**
 * The token bucket's pure core: which buckets the options describe, and their balances as an
 * immutable value, so the service draws from every bucket at once with one `Ref.modify`.
 *
 * A balance refills continuously (one unit every `refillMillis`, fractions included) up to the
 * bucket's capacity, and may go below zero: that debt is what waiting callers have drawn ahead
 * of time, and the time to repay it is exactly how long the last of them waits.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import type { Cost, Dimension, Options, Rate } from "../TokenBucket.js"

/** A resolved bucket: holds up to `capacity` units and regains one every `refillMillis`. */
export interface Bucket {
  readonly dimension: Dimension
  readonly capacity: number
  readonly refillMillis: number
}

/** A bucket's units as of `at` (Clock millis). */
export interface Balance {
  readonly bucket: Bucket
  readonly units: number
  readonly at: number
}

/** A bucket short of a call's cost, and how long until it holds it. */
export interface Wait {
  readonly dimension: Dimension
  readonly millis: number
  /**
   * A waiting draw's place in line, on Redis (where processes share the line; in memory the last
   * draw's `Wait` itself marks it): a waiter that gives up gives its cost back only when it is
   * still the last in line. The waiters after it sleep until the times
   * their draws were given; its cost given back to the balance would let a newcomer go at the last
   * one's time, beside it (twice a burst of one at once), and before waiters that came earlier.
   */
  readonly ticket?: number | undefined
}

const dimensions: ReadonlyArray<Dimension> = ["requests", "tokens"]

const illegal = (message: string): never => {
  throw new Cause.IllegalArgumentException(`TokenBucket: ${message}`)
}

const intervalMillis = (rate: Rate): number => Duration.toMillis(rate.interval)

const validRate = (rate: Rate, name: string): Rate => {
  if (!(rate.limit > 0)) illegal(`${name} limit must be positive`)
  if (!(intervalMillis(rate) > 0)) illegal(`${name} interval must be positive`)
  return rate
}

/** `utilization` of the provider's published limit for `dimension`, if one is known. */
const knownRate = (options: Options, dimension: Dimension, utilization: number): Rate | undefined => {
  const known = options.knownLimit
  const limit = known?.[dimension]
  return known === undefined || limit === undefined
    ? undefined
    : validRate({ limit: limit * utilization, interval: known.interval }, `knownLimit.${dimension}`)
}

/** The stricter of two rates: the one that allows fewer units per millisecond. */
const stricter = (a: Rate, b: Rate): Rate => (a.limit / intervalMillis(a) <= b.limit / intervalMillis(b) ? a : b)

const bucketOf = (options: Options, dimension: Dimension, utilization: number): Bucket | undefined => {
  const explicit = options[dimension]
  const candidates = [
    explicit === undefined ? undefined : validRate(explicit, dimension),
    knownRate(options, dimension, utilization)
  ].filter((rate): rate is Rate => rate !== undefined)
  if (candidates.length === 0) return undefined
  const rate = candidates.reduce(stricter)
  const capacity = options.burst?.[dimension] ?? rate.limit
  if (!(capacity > 0)) illegal(`burst.${dimension} must be positive`)
  return { dimension, capacity, refillMillis: intervalMillis(rate) / rate.limit }
}

/**
 * The buckets the options describe, one per limited dimension. Throws
 * `IllegalArgumentException` on a non-positive limit, interval or burst, or a utilization
 * outside (0, 1].
 */
export const bucketsOf = (options: Options, defaultUtilization: number): ReadonlyArray<Bucket> => {
  const utilization = options.utilization ?? defaultUtilization
  if (!(utilization > 0 && utilization <= 1)) illegal("utilization must be in (0, 1]")
  return dimensions.flatMap((dimension) => bucketOf(options, dimension, utilization) ?? [])
}

/** Full buckets. */
export const full = (buckets: ReadonlyArray<Bucket>, now: number): ReadonlyArray<Balance> =>
  buckets.map((bucket) => ({ bucket, units: bucket.capacity, at: now }))

/**
 * Why `cost` is no cost (a count that is no finite number, or below zero), `undefined` when it is
 * one: a NaN drawn would leave its bucket NaN, which no comparison refuses again.
 */
export const invalidCost = (cost: Cost): Cause.IllegalArgumentException | undefined => {
  for (const dimension of ["requests", "tokens"] as const) {
    const units = cost[dimension]
    if (units !== undefined && !(Number.isFinite(units) && units >= 0)) {
      return new Cause.IllegalArgumentException(`TokenBucket: a cost's ${dimension} must be a finite number >= 0, got ${units}`)
    }
  }
  return undefined
}

export const unitsOf = (cost: Cost, dimension: Dimension): number =>
  dimension === "requests" ? cost.requests ?? 1 : cost.tokens ?? 0

const refill = (balance: Balance, now: number): Balance => {
  // A clock that moved backwards (the wall clock stepped) adds nothing, and refilling goes on from
  // its new time: kept at the old, the bucket would stay as it is until the clock caught up.
  const elapsed = Math.max(0, now - balance.at)
  return {
    bucket: balance.bucket,
    units: Math.min(balance.bucket.capacity, balance.units + elapsed / balance.bucket.refillMillis),
    at: now
  }
}

/** The longest wait before every bucket holds the cost, `undefined` when they all do now. */
const shortfall = (refilled: ReadonlyArray<Balance>, cost: Cost): Wait | undefined =>
  refilled.reduce<Wait | undefined>((longest, { bucket, units }) => {
    const wanted = unitsOf(cost, bucket.dimension)
    const millis = wanted > 0 ? Math.max(0, wanted - units) * bucket.refillMillis : 0
    return millis > (longest?.millis ?? 0) ? { dimension: bucket.dimension, millis } : longest
  }, undefined)

/** The first dimension whose cost exceeds its bucket's capacity: such a call never fits. */
export const oversized = (buckets: ReadonlyArray<Bucket>, cost: Cost): Dimension | undefined =>
  buckets.find((bucket) => unitsOf(cost, bucket.dimension) > bucket.capacity)?.dimension

/** One of `processes` equal shares of each bucket: its capacity and its rate divided by their number. */
export const share = (buckets: ReadonlyArray<Bucket>, processes: number): ReadonlyArray<Bucket> =>
  buckets.map((bucket) => ({
    dimension: bucket.dimension,
    capacity: bucket.capacity / processes,
    refillMillis: bucket.refillMillis * processes
  }))

/**
 * Draws the cost from every bucket, into debt if need be (`"wait"`), or only when every bucket
 * holds it (`"fail"`); answers how long the caller must wait, and the balances refilled to `now`.
 */
export const draw = (
  balances: ReadonlyArray<Balance>,
  cost: Cost,
  now: number,
  mode: "wait" | "fail"
): readonly [Wait | undefined, ReadonlyArray<Balance>] => {
  const refilled = balances.map((balance) => refill(balance, now))
  const wait = shortfall(refilled, cost)
  if (mode === "fail" && wait !== undefined) return [wait, refilled]
  return [wait, refilled.map((balance) => ({ ...balance, units: balance.units - unitsOf(cost, balance.bucket.dimension) }))]
}

/** Gives back a cost drawn by a caller that gave up waiting. */
export const refund = (balances: ReadonlyArray<Balance>, cost: Cost, now: number): ReadonlyArray<Balance> =>
  balances.map((balance) => {
    const refilled = refill(balance, now)
    return {
      ...refilled,
      units: Math.min(refilled.bucket.capacity, refilled.units + unitsOf(cost, refilled.bucket.dimension))
    }
  })
