/**
 * This package's errors are marked as its own, so the classifier reads a user's error that happens
 * to share a tag (a `ServerError` of their own) as foreign, not by our table.
 *
 * @internal
 */
import * as Data from "effect/Data"

/** Global (`Symbol.for`): errors of another copy of this package are recognised too. */
const SdkErrorTypeId: unique symbol = Symbol.for("weatherproof/SdkError")

/** `Data.TaggedError`, its instances marked as this package's. */
export const TaggedError: typeof Data.TaggedError = (tag) => {
  const Base = Data.TaggedError(tag)
  Object.defineProperty(Base.prototype, SdkErrorTypeId, { value: true })
  return Base
}

/** Whether `error` is one of this package's errors. */
export const isSdkError = (error: unknown): boolean =>
  typeof error === "object" && error !== null && SdkErrorTypeId in error
