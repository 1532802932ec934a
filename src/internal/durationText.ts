/**
 * Durations as people write them on a command line or in a batch line: `30s`, `500ms`, `2m`,
 * `1h`. Shared by the CLI's flags and the batch lines' `deadlines`, so both read the same text.
 *
 * @internal
 */
import * as Duration from "effect/Duration"

const part = /(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*/gy
const unitMillis = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 } as const

/** What a valid text looks like, for error messages. */
export const expected = "a duration such as 30s, 500ms, 2m or 1h"

/**
 * The duration `text` says, or `undefined` when it is not one: parts of a number and a unit, one
 * (`90s`) or several (`1m30s`, `1m 30s`: as `Duration.format` writes one), added up.
 */
export const parse = (text: string): Duration.Duration | undefined => {
  const trimmed = text.trim()
  let millis = 0
  part.lastIndex = 0
  while (part.lastIndex < trimmed.length) {
    const match = part.exec(trimmed)
    if (match === null) return undefined
    millis += Number(match[1]) * unitMillis[match[2] as keyof typeof unitMillis]
  }
  return trimmed === "" ? undefined : Duration.millis(millis)
}

/** Units from the largest, for `format`. */
const unitsDescending = [["h", 3_600_000], ["m", 60_000], ["s", 1_000]] as const

/** `duration` as `parse` reads it, in its largest whole unit: `30s`, `2m`, `1h`, `1500ms`. */
export const format = (duration: Duration.Duration): string => {
  const millis = Duration.toMillis(duration)
  const unit = unitsDescending.find(([, size]) => millis > 0 && millis % size === 0)
  return unit === undefined ? `${millis}ms` : `${millis / unit[1]}${unit[0]}`
}

/** What a valid deadline looks like, for error messages. */
export const expectedDeadline = "a duration above 0 such as 30s, 500ms, 2m or 1h"

/** The deadline `text` says, or `undefined` when it is not a duration above zero (a deadline of 0 fails every attempt). */
export const parseDeadline = (text: string): Duration.Duration | undefined => {
  const duration = parse(text)
  return duration === undefined || Duration.isZero(duration) ? undefined : duration
}
