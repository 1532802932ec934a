/**
 * Counts over a rolling window: `buckets` buckets of `bucketMillis` each, advanced by the time
 * given to each call. Old buckets are cleared lazily when time moves past them, so counting is
 * O(1) amortised and allocation free. Every method is synchronous, so each update is atomic on
 * the JavaScript thread. The circuit breaker (calls, failures) and the retry budget (requests,
 * retries, refusals) count with it.
 *
 * @internal
 */

/** A bucket about to leave the window: when it leaves, and what it holds. */
export interface Expiry<Field extends string> {
  readonly at: number
  readonly counts: Readonly<Record<Field, number>>
}

/**
 * A window's counts as plain data: its buckets' length, the newest bucket's absolute index (in
 * those lengths) and each field's buckets.
 */
export interface SavedWindow<Field extends string> {
  readonly bucketMillis: number
  readonly newest: number
  readonly slots: Readonly<Record<Field, ReadonlyArray<number>>>
}

export class RollingWindow<Field extends string> {
  /** Totals over the live buckets, as of the last `advance`. */
  readonly totals: Record<Field, number>
  private readonly slots: Record<Field, Float64Array>
  /** Absolute index (time / bucketMillis) of the newest bucket. */
  private newest: number

  constructor(
    private readonly fields: ReadonlyArray<Field>,
    private readonly buckets: number,
    private readonly bucketMillis: number,
    now: number
  ) {
    this.totals = this.record(() => 0)
    this.slots = this.record(() => new Float64Array(buckets))
    this.newest = this.indexAt(now)
  }

  add(now: number, field: Field, n = 1): void {
    this.advance(now)
    this.slots[field][this.newest % this.buckets]! += n
    this.totals[field] += n
  }

  /** Drops the buckets that fell out of the window by `now`. */
  advance(now: number): void {
    const index = this.indexAt(now)
    const expired = Math.min(index - this.newest, this.buckets)
    for (let i = 1; i <= expired; i++) this.clearSlot((this.newest + i) % this.buckets)
    // A clock that moved backwards keeps counting into the newest bucket.
    this.newest = Math.max(index, this.newest)
  }

  clear(): void {
    for (let slot = 0; slot < this.buckets; slot++) this.clearSlot(slot)
  }

  save(): SavedWindow<Field> {
    return { bucketMillis: this.bucketMillis, newest: this.newest, slots: this.record((field) => Array.from(this.slots[field])) }
  }

  /**
   * Takes the counts of `saved`; a window of another shape (other buckets, or buckets of another
   * length) starts empty, at its own newest bucket: an index counted in other lengths would stop it
   * from ever moving on.
   */
  load(saved: SavedWindow<Field>): void {
    this.clear()
    const sameShape = saved.bucketMillis === this.bucketMillis &&
      this.fields.every((field) => saved.slots[field]?.length === this.buckets)
    if (!sameShape) return
    this.newest = saved.newest
    for (const field of this.fields) {
      this.slots[field].set(saved.slots[field])
      for (const n of saved.slots[field]) this.totals[field] += n
    }
  }

  /** The live buckets, oldest first, with the time each one leaves the window. */
  expiries(now: number): ReadonlyArray<Expiry<Field>> {
    this.advance(now)
    const out: Array<Expiry<Field>> = []
    for (let index = this.oldest(); index <= this.newest; index++) {
      const slot = this.slotOf(index)
      out.push({ at: (index + this.buckets) * this.bucketMillis, counts: this.record((field) => this.slots[field][slot]!) })
    }
    return out
  }

  /** Takes one of `field` back from the bucket `at` falls in; false when it left the window, or holds none. */
  takeBack(now: number, field: Field, at: number): boolean {
    this.advance(now)
    const index = this.indexAt(at)
    const slot = this.slotOf(index)
    // Written so that a time that is no number (NaN) takes nothing back either.
    if (!(index >= this.oldest() && index <= this.newest && this.slots[field][slot]! >= 1)) return false
    this.slots[field][slot]! -= 1
    this.totals[field] -= 1
    return true
  }

  /** Absolute index of the oldest live bucket. */
  private oldest(): number {
    return this.newest - this.buckets + 1
  }

  /** Where the bucket of absolute `index` lives (an index may be negative before time 0). */
  private slotOf(index: number): number {
    return ((index % this.buckets) + this.buckets) % this.buckets
  }

  private clearSlot(slot: number): void {
    for (const field of this.fields) {
      this.totals[field] -= this.slots[field][slot]!
      this.slots[field][slot] = 0
    }
  }

  private record<A>(f: (field: Field) => A): Record<Field, A> {
    const out = {} as Record<Field, A>
    for (const field of this.fields) out[field] = f(field)
    return out
  }

  /**
   * The bucket `now` falls in: the last to start, at `index × bucketMillis`, by `now`. Division
   * alone may floor to the bucket before (10,000 / (10,000 / 7) is 6.999…), and a bucket would
   * then leave the window after the time `expiries` gives.
   */
  private indexAt(now: number): number {
    const index = Math.floor(now / this.bucketMillis)
    if (index * this.bucketMillis > now) return index - 1
    return (index + 1) * this.bucketMillis <= now ? index + 1 : index
  }
}
