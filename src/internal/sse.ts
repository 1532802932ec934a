/**
 * A streaming Server-Sent Events decoder: response bytes in, the `data` of each event out.
 *
 * Written here rather than taken from `@effect/experimental/Sse`: its parser (0.61) forgets a CR
 * that ends one read, so a CRLF split between two reads turns the LF into an empty line and cuts
 * one multi-line event in two; and its `makeChannel` sleeps on `retry:` fields, which a
 * completion stream never wants. This decoder keeps that state across reads, and follows the
 * WHATWG rules the transport needs: LF, CRLF or CR line ends, `data:` with or without one space,
 * multi-line data, comment lines (`: keep-alive`) ignored, a leading byte order mark dropped, an
 * unfinished event at the end of the body never dispatched (`unfinished` tells what it held).
 *
 * It works on the bytes. Line ends are ASCII, never part of a multi-byte UTF-8 character, so
 * lines are found with `Buffer#indexOf` (memchr), and only the value of a `data` line is decoded.
 * That is the same as decoding the whole body: an invalid sequence never swallows the ASCII byte
 * after it. No read is decoded or copied whole; only a line a read cut is copied, to be completed
 * by the next read.
 */
import { Buffer } from "node:buffer"

const LF = 10
const CR = 13
const COLON = 58
const SPACE = 32

const noEvents: ReadonlyArray<string> = []

/** Decodes one event stream; feed it the body's reads in order. */
export interface Decoder {
  /** The data of every event the read completed, in order (often none). */
  readonly feed: (bytes: Uint8Array) => ReadonlyArray<string>
  /**
   * The data of the event the body ended in (its last line or blank line never came), or
   * `undefined` when none was begun. Never dispatched; the transport reads it for a `[DONE]`.
   */
  readonly unfinished: () => string | undefined
}

/** The same bytes as a `Buffer` (a view, no copy): undici's reads already are. */
const asBuffer = (bytes: Uint8Array): Buffer =>
  Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)

/** Where the value of the `data` line `buffer[start, end)` starts (`end` if empty), or -1 for another line. */
const dataValueStart = (buffer: Buffer, start: number, end: number): number => {
  // `d`, `a`, `t`, `a`; the field name is all before the first colon, so `data` only if one follows.
  if (end - start < 4 || buffer[start] !== 100 || buffer[start + 1] !== 97 || buffer[start + 2] !== 116 || buffer[start + 3] !== 97) {
    return -1
  }
  if (end === start + 4) return end
  if (buffer[start + 4] !== COLON) return -1
  return start + 5 < end && buffer[start + 5] === SPACE ? start + 6 : start + 5
}

/** Decodes `buffer[start, end)` as UTF-8 (`toString` without an encoding goes straight there). */
const utf8 = (buffer: Buffer, start: number, end: number): string => buffer.toString(undefined, start, end)

const hasByteOrderMark = (buffer: Buffer, start: number, end: number): boolean =>
  end - start >= 3 && buffer[start] === 0xef && buffer[start + 1] === 0xbb && buffer[start + 2] === 0xbf

/** A decoder for one response body. */
export const makeDecoder = (): Decoder => {
  /** The start of a line a read cut, `pendingLength` bytes; the next line end completes it. */
  let pending = Buffer.allocUnsafe(0)
  let pendingLength = 0
  let atStreamStart = true
  let crEndedLastRead = false
  let data = ""
  let hasData = false
  let events: Array<string> = []

  /** Handles the line `buffer[start, end)`, without its line end. */
  const line = (buffer: Buffer, start: number, end: number): void => {
    if (start === end) {
      if (hasData) events.push(data)
      data = ""
      hasData = false
      return
    }
    const valueStart = dataValueStart(buffer, start, end)
    if (valueStart === -1) return
    const value = utf8(buffer, valueStart, end)
    data = hasData ? `${data}\n${value}` : value
    hasData = true
  }

  const appendPending = (buffer: Buffer, start: number, end: number): void => {
    const length = pendingLength + end - start
    if (length > pending.length) {
      const grown = Buffer.allocUnsafe(Math.max(length, 2 * pending.length, 256))
      grown.set(pending.subarray(0, pendingLength))
      pending = grown
    }
    pending.set(buffer.subarray(start, end), pendingLength)
    pendingLength = length
  }

  /** Handles the line that starts with what is pending and ends at `buffer[end]`; drops a leading BOM. */
  const completeLine = (buffer: Buffer, start: number, end: number): void => {
    let lineBuffer = buffer
    if (pendingLength > 0) {
      appendPending(buffer, start, end)
      lineBuffer = pending
      start = 0
      end = pendingLength
      pendingLength = 0
    }
    if (atStreamStart) {
      atStreamStart = false
      if (hasByteOrderMark(lineBuffer, start, end)) start += 3
    }
    line(lineBuffer, start, end)
  }

  const feed = (bytes: Uint8Array): ReadonlyArray<string> => {
    const buffer = asBuffer(bytes)
    const length = buffer.length
    let start = 0
    if (crEndedLastRead && length > 0) {
      crEndedLastRead = false
      if (buffer[0] === LF) start = 1
    }
    // In a CR-free read (DeepSeek's), `cr` stays -1 after one memchr: one more per line.
    let cr = buffer.indexOf(CR, start)
    let lf = buffer.indexOf(LF, start)
    while (start < length) {
      if (lf !== -1 && lf < start) lf = buffer.indexOf(LF, start)
      if (cr !== -1 && cr < start) cr = buffer.indexOf(CR, start)
      const end = cr === -1 ? lf : lf === -1 ? cr : Math.min(cr, lf)
      if (end === -1) {
        appendPending(buffer, start, length)
        break
      }
      if (pendingLength > 0 || atStreamStart) {
        completeLine(buffer, start, end)
      } else if (!hasData && end === lf && buffer[end + 1] === LF) {
        // The usual event, `data: {json}\n\n`, in one read: dispatched without the blank line's round.
        const valueStart = dataValueStart(buffer, start, end)
        if (valueStart !== -1) events.push(utf8(buffer, valueStart, end))
        start = end + 2
        continue
      } else {
        line(buffer, start, end)
      }
      if (end === lf) {
        start = end + 1
      } else if (end + 1 === length) {
        // Half of a CRLF perhaps: an LF that starts the next read belongs to this line end.
        crEndedLastRead = true
        start = length
      } else {
        start = buffer[end + 1] === LF ? end + 2 : end + 1
      }
    }
    if (events.length === 0) return noEvents
    const completed = events
    events = []
    return completed
  }

  const unfinished = (): string | undefined => {
    const start = atStreamStart && hasByteOrderMark(pending, 0, pendingLength) ? 3 : 0
    const valueStart = pendingLength > start ? dataValueStart(pending, start, pendingLength) : -1
    if (valueStart === -1) return hasData ? data : undefined
    const value = utf8(pending, valueStart, pendingLength)
    return hasData ? `${data}\n${value}` : value
  }

  return { feed, unfinished }
}
