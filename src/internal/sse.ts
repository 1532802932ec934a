/**
 * A streaming Server-Sent Events decoder: response bytes in, the `data` of each event out.
 *
 * Written here rather than taken from `@effect/experimental/Sse`: its parser (0.61) forgets a CR
 * that ends one read, so a CRLF split between two reads turns the LF into an empty line and cuts
 * one multi-line event in two; and its `makeChannel` sleeps on `retry:` fields, which a
 * completion stream never wants. This decoder keeps that state across reads, decodes UTF-8 across
 * read boundaries, and follows the WHATWG rules the transport needs: LF, CRLF or CR line ends,
 * `data:` with or without one space, multi-line data, comment lines (`: keep-alive`) ignored, an
 * unfinished event at the end of the body never dispatched.
 */

const LF = 10
const CR = 13
const COLON = 58
const SPACE = 32

/** Decodes one event stream; feed it the body's reads in order. */
export interface Decoder {
  /** The data of every event the read completed, in order (often none). */
  readonly feed: (bytes: Uint8Array) => ReadonlyArray<string>
}

/** A decoder for one response body. */
export const makeDecoder = (): Decoder => {
  // `stream: true` holds back a multi-byte character cut by a read; a leading BOM is dropped.
  const utf8 = new TextDecoder()
  let pending = ""
  let crEndedLastRead = false
  let data = ""
  let hasData = false
  let events: Array<string> = []

  const line = (text: string): void => {
    if (text.length === 0) {
      if (hasData) events.push(data)
      data = ""
      hasData = false
      return
    }
    if (text.charCodeAt(0) === COLON) return
    const colon = text.indexOf(":")
    if ((colon < 0 ? text : text.slice(0, colon)) !== "data") return
    const value = colon < 0 ? "" : text.slice(colon + (text.charCodeAt(colon + 1) === SPACE ? 2 : 1))
    data = hasData ? `${data}\n${value}` : value
    hasData = true
  }

  const feed = (bytes: Uint8Array): ReadonlyArray<string> => {
    let chunk = utf8.decode(bytes, { stream: true })
    if (chunk.length === 0) return []
    if (crEndedLastRead) {
      crEndedLastRead = false
      if (chunk.charCodeAt(0) === LF) chunk = chunk.slice(1)
    }
    // `pending` holds no line end, so the scan starts where the new text begins.
    const buffer = pending + chunk
    let lineStart = 0
    for (let i = pending.length; i < buffer.length; i++) {
      const c = buffer.charCodeAt(i)
      if (c !== LF && c !== CR) continue
      line(buffer.slice(lineStart, i))
      if (c === CR) {
        if (i + 1 === buffer.length) crEndedLastRead = true
        else if (buffer.charCodeAt(i + 1) === LF) i++
      }
      lineStart = i + 1
    }
    pending = buffer.slice(lineStart)
    const completed = events
    events = []
    return completed
  }

  return { feed }
}
