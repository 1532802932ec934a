/**
 * A set of members that come and go at a high rate (one per call), in an array: a member leaves by
 * its entry, whose place the last member takes. Not a `Set`: V8 leaves the entries of a churned
 * `Set`'s replaced hash tables reachable until a full collection, so every member that passed
 * through one, and all it reached, outlived the young collections and was promoted to the old
 * generation.
 *
 * @internal
 */

/** A member's place in its registry, -1 once it left. */
export interface Entry<A> {
  readonly value: A
  at: number
}

export class Registry<A> {
  private readonly entries: Array<Entry<A>> = []

  get size(): number {
    return this.entries.length
  }

  add(value: A): Entry<A> {
    const entry = { value, at: this.entries.length }
    this.entries.push(entry)
    return entry
  }

  /** Takes `entry` out, if it is still in. */
  remove(entry: Entry<A>): void {
    if (entry.at < 0) return
    const last = this.entries.pop()!
    if (last !== entry) {
      this.entries[entry.at] = last
      last.at = entry.at
    }
    entry.at = -1
  }

  /** The members now, in no particular order. */
  values(): Array<A> {
    return this.entries.map((entry) => entry.value)
  }
}
