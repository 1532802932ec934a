/**
 * The retry budget's rolling window: calls, retries and refusals counted in `buckets` buckets of
 * `bucketMillis` each, as an immutable value so the service updates it with one `Ref.modify`.
 *
 * @internal
 */

/** Resolved, validated options. */
export interface Settings {
  readonly bucketMillis: number
  readonly buckets: number
  readonly ratio: number
  /** Retries the window allows with no traffic at all: `minRetriesPerSecond` × the window. */
  readonly reserve: number
}

interface Bucket {
  readonly index: number
  readonly requests: number
  readonly retries: number
  readonly refused: number
}

/** Buckets with something counted in them, oldest first. */
export type Window = ReadonlyArray<Bucket>

/** Totals over the window. */
export interface Totals {
  readonly requests: number
  readonly retries: number
  readonly refused: number
}

/** @internal */
export const empty: Window = []

const indexAt = (settings: Settings, now: number): number => Math.floor(now / settings.bucketMillis)

/** The buckets still inside the window at `now`: the same array when none has expired. */
const live = (settings: Settings, window: Window, now: number): Window => {
  const oldest = indexAt(settings, now) - settings.buckets + 1
  const first = window[0]
  return first === undefined || first.index >= oldest ? window : window.filter((bucket) => bucket.index >= oldest)
}

const bump = (bucket: Bucket, field: keyof Totals): Bucket => ({
  index: bucket.index,
  requests: field === "requests" ? bucket.requests + 1 : bucket.requests,
  retries: field === "retries" ? bucket.retries + 1 : bucket.retries,
  refused: field === "refused" ? bucket.refused + 1 : bucket.refused
})

// Called on every request: one copy of the window and one bucket allocated, nothing more.
const count = (settings: Settings, window: Window, now: number, field: keyof Totals): Window => {
  const index = indexAt(settings, now)
  const current = live(settings, window, now)
  const newest = current[current.length - 1]
  // A clock that moved backwards keeps counting into the newest bucket.
  if (newest !== undefined && newest.index >= index) {
    const next = current.slice()
    next[next.length - 1] = bump(newest, field)
    return next
  }
  return [...current, bump({ index, requests: 0, retries: 0, refused: 0 }, field)]
}

/** @internal */
export const totals = (settings: Settings, window: Window, now: number): Totals =>
  live(settings, window, now).reduce(
    (sum, bucket) => ({
      requests: sum.requests + bucket.requests,
      retries: sum.retries + bucket.retries,
      refused: sum.refused + bucket.refused
    }),
    { requests: 0, retries: 0, refused: 0 }
  )

/** Retries still allowed: `ratio` of the calls plus the reserve, less the retries already made. */
export const available = (settings: Settings, sums: Totals): number =>
  Math.max(0, Math.floor(settings.ratio * sums.requests + settings.reserve) - sums.retries)

/** @internal */
export const recordRequest = (settings: Settings, window: Window, now: number): Window =>
  count(settings, window, now, "requests")

/** Withdraws one retry if the window allows it; counts a refusal otherwise. */
export const tryRetry = (settings: Settings, window: Window, now: number): readonly [boolean, Window] => {
  const allowed = available(settings, totals(settings, window, now)) >= 1
  return [allowed, count(settings, window, now, allowed ? "retries" : "refused")]
}
