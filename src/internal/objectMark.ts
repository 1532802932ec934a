/**
 * A mark one part of the stack sets on an object (an error, an answer) for another to read, kept
 * in a `WeakSet` so it goes with the object and nothing holds the object alive. Values that are
 * not objects are never marked. An error failed under a span is a copy that carries the span
 * (`Cause.originalError`): the mark is the original's, set and read through either.
 *
 * @internal
 */
import * as Cause from "effect/Cause"

export interface ObjectMark {
  readonly mark: (value: unknown) => void
  readonly has: (value: unknown) => boolean
}

export const make = (): ObjectMark => {
  const marked = new WeakSet<object>()
  const isObject = (value: unknown): value is object => typeof value === "object" && value !== null
  return {
    mark: (value) => {
      if (isObject(value)) marked.add(Cause.originalError(value))
    },
    has: (value) => isObject(value) && marked.has(Cause.originalError(value))
  }
}
