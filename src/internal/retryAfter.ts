/**
 * The wait a server asks for in its response headers.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"

const secondsPattern = /^\d+(\.\d+)?$/

/** A duration as OpenAI's rate-limit headers write it: `20ms`, `1s`, `6m0s`, `1h2m3.5s`. */
const resetPattern = /^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$/

const resetMillis = (value: string | undefined): number | undefined => {
  const parts = value === undefined || value.trim() === "" ? null : resetPattern.exec(value.trim())
  if (parts === null) return undefined
  const [hours, minutes, seconds, millis] = parts.slice(1).map((part) => Number(part ?? 0)) as [number, number, number, number]
  return ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis
}

/**
 * OpenAI's `x-ratelimit-reset-requests` / `-tokens` of each limit whose `x-ratelimit-remaining-…`
 * is spent: the wait until it refills (the longer of the two when both are).
 */
const spentLimitReset = (headers: Readonly<Record<string, string | undefined>>): Option.Option<Duration.Duration> => {
  const waits = ["requests", "tokens"].flatMap((limit) =>
    headers[`x-ratelimit-remaining-${limit}`]?.trim() === "0" ? [resetMillis(headers[`x-ratelimit-reset-${limit}`])] : []
  ).filter((millis): millis is number => millis !== undefined)
  return waits.length === 0 ? Option.none() : Option.some(Duration.millis(Math.max(...waits)))
}

/**
 * `retry-after-ms` (milliseconds), else `Retry-After` in seconds, or as an HTTP date read against
 * the response's own `Date` header (the server's clock, whatever this machine's says), else
 * against `localNow` (epoch millis; a date is ignored when neither is a number), else the reset
 * of an OpenAI rate limit the response says is spent (`x-ratelimit-remaining-requests: 0` and
 * its `x-ratelimit-reset-requests: 6s`, the same for tokens).
 */
export const retryAfterFromHeaders = (
  headers: Readonly<Record<string, string | undefined>>,
  localNow: number
): Option.Option<Duration.Duration> => {
  const millis = Number(headers["retry-after-ms"]?.trim() || Number.NaN)
  if (Number.isFinite(millis) && millis >= 0) return Option.some(Duration.millis(millis))
  const value = headers["retry-after"]?.trim()
  if (value === undefined || value === "") return spentLimitReset(headers)
  if (secondsPattern.test(value)) return Option.some(Duration.seconds(Number(value)))
  const date = Date.parse(value)
  const serverNow = Date.parse(headers["date"] ?? "")
  const now = Number.isNaN(serverNow) ? localNow : serverNow
  return Number.isNaN(date) || Number.isNaN(now) ? Option.none() : Option.some(Duration.millis(Math.max(0, date - now)))
}
