/**
 * Removes the keys of the configured accounts from text that leaves the process (a log line, an
 * answer, an alert), whole or in part, and anything shaped like a key (`scrubSecrets`): an
 * upstream may echo a key in an error message, and keys of other providers need not look like
 * DeepSeek's.
 *
 * @internal
 */
import * as Redacted from "effect/Redacted"
import { scrubSecrets } from "../ApiError.js"

/** Removes text that must not leave the process from an outgoing message. */
export type Scrubber = (text: string) => string

/** A run this long of a key's characters counts as the key: the transport may have masked the rest. */
const keyFragment = 8

/**
 * A scrubber of `keys` and of anything shaped like a key. A key is found whole or in part: every
 * run of at least 8 of its characters is masked, since a message may hold a key another scrubber
 * already cut (the transport masks `key-…` and `sk-…` shapes).
 */
export const make = (keys: ReadonlyArray<Redacted.Redacted<string>>): Scrubber => {
  const fragments = new Set(keys.map(Redacted.value).filter((key) => key.length > 0).flatMap((key) =>
    key.length <= keyFragment
      ? [key]
      : Array.from({ length: key.length - keyFragment + 1 }, (_, i) => key.slice(i, i + keyFragment))
  ))
  return (text) => {
    const masked = new Array<boolean>(text.length).fill(false)
    for (const fragment of fragments) {
      for (let at = text.indexOf(fragment); at >= 0; at = text.indexOf(fragment, at + 1)) {
        masked.fill(true, at, at + fragment.length)
      }
    }
    let out = ""
    for (let i = 0; i < text.length; i++) {
      if (!masked[i]) out += text[i]
      else if (i === 0 || !masked[i - 1]) out += "***"
    }
    return scrubSecrets(out)
  }
}
