/**
 * The wait a server asks for in its response headers.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"

const secondsPattern = /^\d+(\.\d+)?$/

/**
 * `retry-after-ms` (milliseconds), else `Retry-After` in seconds, or as an HTTP date read against
 * the response's own `Date` header (the server's clock, whatever this machine's says), else
 * against `localNow` (epoch millis; a date is ignored when neither is a number).
 */
export const retryAfterFromHeaders = (
  headers: Readonly<Record<string, string | undefined>>,
  localNow: number
): Option.Option<Duration.Duration> => {
  const millis = Number(headers["retry-after-ms"]?.trim() || Number.NaN)
  if (Number.isFinite(millis) && millis >= 0) return Option.some(Duration.millis(millis))
  const value = headers["retry-after"]?.trim()
  if (value === undefined || value === "") return Option.none()
  if (secondsPattern.test(value)) return Option.some(Duration.seconds(Number(value)))
  const date = Date.parse(value)
  const serverNow = Date.parse(headers["date"] ?? "")
  const now = Number.isNaN(serverNow) ? localNow : serverNow
  return Number.isNaN(date) || Number.isNaN(now) ? Option.none() : Option.some(Duration.millis(Math.max(0, date - now)))
}
