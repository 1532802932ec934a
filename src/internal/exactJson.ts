/**
 * JSON read from a client and sent on upstream with every integer as it was written. `JSON.parse`
 * reads an integer beyond 2^53 as the nearest double (an int64 `seed` of 12345678901234567891
 * becomes 12345678901234567000) and the upstream, which reads integers exactly, would get another
 * value. Such an integer is kept as an `ExactInteger` holding its digits, and `stringify` writes
 * those digits back.
 *
 * @internal
 */
import { randomUUID } from "node:crypto"

/** An integer of the read text that no double holds exactly: its digits, written back as they were. */
export class ExactInteger {
  constructor(readonly digits: string) {}
  /** What `JSON.stringify` writes in its place; `stringify` turns it back into the digits. */
  toJSON(): string {
    wroteExact = true
    return `${mark}${this.digits}`
  }
  /** How a schema's complaint quotes it (a field that takes a number refuses it): why it is not one. */
  toString(): string {
    return `${this.digits} (an integer beyond 2^53, kept as written rather than rounded)`
  }
}

/**
 * Starts the string an `ExactInteger` stands in as while parsed and written. Drawn at random for
 * the process, which never shows it: no client's string can be taken for one.
 */
const mark = `\u0000exact-integer-${randomUUID()}:`

/** The mark as JSON writes it inside a string. */
const markInJson = JSON.stringify(mark).slice(1, -1)

/** Set while `stringify` runs when an `ExactInteger` was written. */
let wroteExact = false

/** Only text with a run of 16 digits can hold an integer beyond 2^53 (9007199254740992). */
const mayHoldLongInteger = /\d{16}/

/** A string (skipped whole), or an integer of 16 digits or more that is not part of a fraction or an exponent. */
const stringOrLongInteger = /"[^"\\]*(?:\\.[^"\\]*)*"|(?<![\d.eE+-])-?\d{16,}(?![\d.eE])/g

const isExact = (digits: string): boolean => String(Number(digits)) === digits

/**
 * `text` parsed as `JSON.parse` does, but for an integer no double holds exactly, which becomes an
 * `ExactInteger`. Throws as `JSON.parse` does on text that is not JSON.
 */
export const parse = (text: string): unknown => {
  const plain: unknown = JSON.parse(text)
  if (!mayHoldLongInteger.test(text)) return plain
  let marked = ""
  let from = 0
  for (const match of text.matchAll(stringOrLongInteger)) {
    const token = match[0]
    if (token.startsWith("\"") || isExact(token)) continue
    marked += `${text.slice(from, match.index)}"${markInJson}${token}"`
    from = match.index + token.length
  }
  if (from === 0) return plain
  return JSON.parse(marked + text.slice(from), (_, value: unknown) =>
    typeof value === "string" && value.startsWith(mark) ? new ExactInteger(value.slice(mark.length)) : value)
}

const writtenMarks = new RegExp(`"${markInJson.replaceAll("\\", "\\\\")}(-?\\d+)"`, "g")

/** `JSON.stringify(value)`, each `ExactInteger` written as its digits. */
export const stringify = (value: unknown): string => {
  wroteExact = false
  const text = JSON.stringify(value)
  return wroteExact ? text.replace(writtenMarks, "$1") : text
}
