/**
 * A mark one part of the stack sets on an error object for another to read, kept in a `WeakSet`
 * so it goes with the error and nothing holds the error alive. Values that are not objects are
 * never marked.
 *
 * @internal
 */

export interface ErrorMark {
  readonly mark: (error: unknown) => void
  readonly has: (error: unknown) => boolean
}

export const make = (): ErrorMark => {
  const marked = new WeakSet<object>()
  const isObject = (error: unknown): error is object => typeof error === "object" && error !== null
  return {
    mark: (error) => {
      if (isObject(error)) marked.add(error)
    },
    has: (error) => isObject(error) && marked.has(error)
  }
}
