/**
 * The ledger entry of a failed attempt, kept with its error. An account pool records a failed
 * attempt as the last of its call (`truncated` with output, else `failed`): the error may be the
 * call's answer. Whoever then tries again (the policy's retry, the pool's failover) discards it,
 * and it counts as retry tax; a failover whose error becomes the call's after all keeps it.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import { type Disposition, reclassifiers } from "./costLedger.js"

interface Recorded {
  readonly reclassify: (to: Disposition) => void
  readonly last: Disposition
}

const recorded = new WeakMap<object, Recorded>()

const keyOf = (error: unknown): object | undefined => {
  // Failed under a span, an error is a copy that carries the span.
  const original: unknown = Cause.originalError(error)
  return typeof original === "object" && original !== null ? original : undefined
}

/** Notes that `error`'s attempt was recorded with `entry`, as `last`. */
export const remember = (error: unknown, entry: object, last: Disposition): void => {
  const key = keyOf(error)
  const reclassify = reclassifiers.get(entry)
  if (key !== undefined && reclassify !== undefined) recorded.set(key, { reclassify, last })
}

/** `error`'s attempt is tried again: it counts as `discarded`. */
export const discard = (error: unknown): void => {
  const key = keyOf(error)
  if (key !== undefined) recorded.get(key)?.reclassify("discarded")
}

/** `error` is its call's answer after all: its attempt counts as recorded. */
export const keep = (error: unknown): void => {
  const key = keyOf(error)
  const found = key === undefined ? undefined : recorded.get(key)
  found?.reclassify(found.last)
}
