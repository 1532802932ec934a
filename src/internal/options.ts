/**
 * The one way options are validated: each check names its option and says what is wrong, and
 * `assertValid` throws every problem at once as an `IllegalArgumentException` naming its owner.
 * Called inside `Effect.sync` (or a Layer's construction), an invalid option is a defect: a
 * programming error, not a failure a caller could handle.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"

/** What is wrong with one option; `undefined` when nothing is. */
export type Problem = string | undefined

export const positiveInteger = (name: string, value: number): Problem =>
  Number.isInteger(value) && value >= 1 ? undefined : `${name} must be a positive integer, got ${value}`

export const atLeast = (name: string, value: number, min: number): Problem =>
  value >= min ? undefined : `${name} must be at least ${min}, got ${value}`

export const above = (name: string, value: number, min: number): Problem =>
  value > min ? undefined : `${name} must be above ${min}, got ${value}`

export const finiteAtLeast = (name: string, value: number, min: number): Problem =>
  Number.isFinite(value) && value >= min ? undefined : `${name} must be a finite number ≥ ${min}, got ${value}`

/** `input` in milliseconds, `NaN` when it is no duration (from JavaScript: "5 secs"), 0 when negative (as `Duration.decode` reads one). */
export const durationMillis = (input: unknown): number =>
  Option.match(Duration.decodeUnknown(input), { onNone: () => NaN, onSome: Duration.toMillis })

/** A duration as its caller wrote it: "-1 seconds" is said so, not as the 0 it decodes to. */
const shownDuration = (input: unknown): string =>
  typeof input === "string" || Array.isArray(input)
    ? JSON.stringify(input)
    : Duration.isDuration(input)
    ? Duration.format(input)
    : typeof input === "bigint"
    ? `${input}n`
    : String(input)

/** A duration above zero, said as given when it is not. */
export const positiveDuration = (name: string, input: unknown): Problem =>
  durationMillis(input) > 0 ? undefined : `${name} must be a positive duration, got ${shownDuration(input)}`

/** One of `allowed` (what TypeScript checks; JavaScript and JSON do not). */
export const oneOf = (name: string, value: unknown, allowed: ReadonlyArray<unknown>): Problem =>
  allowed.includes(value) ? undefined : `${name} must be one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}, got ${JSON.stringify(value)}`

/** A ratio in (0, 1], or in (0, 1) when `below1`. */
export const ratio = (name: string, value: number, below1 = false): Problem =>
  value > 0 && (below1 ? value < 1 : value <= 1) ? undefined : `${name} must be in (0, 1${below1 ? ")" : "]"}, got ${value}`

/** Throws `IllegalArgumentException` naming `owner` and every problem found. */
export const assertValid = (owner: string, problems: ReadonlyArray<Problem>): void => {
  const found = problems.filter((problem): problem is string => problem !== undefined)
  if (found.length > 0) throw new Cause.IllegalArgumentException(`${owner}: ${found.join("; ")}`)
}

/**
 * `value` without the fields set to `undefined`, at every depth: a caller that does not compile
 * with `exactOptionalPropertyTypes` may write `{ defaultTask: config.task }` for a field it
 * leaves unset, which must not override a default or a layer's value with nothing.
 */
export const withoutUndefined = <A>(value: A): A =>
  (Predicate.isRecord(value)
    ? Object.fromEntries(
      Object.entries(value).flatMap(([key, field]) => field === undefined ? [] : [[key, withoutUndefined(field)]])
    )
    : value) as A
