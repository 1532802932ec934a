import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import * as Sse from "../src/internal/sse.js"

const utf8 = new TextEncoder()

/** Feeds `reads` (strings are UTF-8 encoded) to one decoder and returns every event's data. */
const decode = (reads: ReadonlyArray<string | Uint8Array>): ReadonlyArray<string> => {
  const decoder = Sse.makeDecoder()
  return reads.flatMap((read) => decoder.feed(typeof read === "string" ? utf8.encode(read) : read))
}

/** Splits bytes at the given offsets (any byte boundary, so also inside a UTF-8 character). */
const splitAt = (bytes: Uint8Array, offsets: ReadonlyArray<number>): ReadonlyArray<Uint8Array> => {
  const cuts = [...new Set(offsets.map((o) => o % (bytes.length + 1)))].sort((a, b) => a - b)
  const pieces: Array<Uint8Array> = []
  let start = 0
  for (const cut of [...cuts, bytes.length]) {
    pieces.push(bytes.subarray(start, cut))
    start = cut
  }
  return pieces
}

type Line =
  | { readonly _tag: "data"; readonly value: string; readonly space: boolean }
  | { readonly _tag: "other"; readonly text: string }

const lineText = FastCheck.string({ unit: "binary", maxLength: 12 }).filter((s) => !/[\r\n]/.test(s))

const comment = FastCheck.oneof(
  FastCheck.constant(": keep-alive"),
  FastCheck.constant(":keep-alive"),
  lineText.map((text) => `:${text}`)
)

const otherLine = FastCheck.oneof(
  comment,
  FastCheck.constant("event: message"),
  FastCheck.nat(99).map((id) => `id: ${id}`)
).map((text): Line => ({ _tag: "other", text }))

const dataLine = FastCheck.record({ value: lineText, space: FastCheck.boolean() })
  .map(({ space, value }): Line => ({ _tag: "data", value, space }))

/** An event: data lines (at least one) with comments and other fields mixed in. */
const event = FastCheck.array(FastCheck.oneof({ arbitrary: dataLine, weight: 3 }, { arbitrary: otherLine, weight: 1 }), {
  minLength: 1,
  maxLength: 5
}).filter((lines) => lines.some((line) => line._tag === "data"))

const render = (line: Line): string => {
  if (line._tag === "other") return line.text
  // Without the optional space, a value starting with a space would lose it: write the space then.
  if (line.space || line.value.startsWith(" ")) return `data: ${line.value}`
  return line.value === "" ? "data" : `data:${line.value}`
}

/** A stream of events, each optionally preceded by a `: keep-alive` block, with mixed line ends. */
const stream = FastCheck.record({
  events: FastCheck.array(FastCheck.record({ keepAlive: FastCheck.boolean(), lines: event }), { maxLength: 6 }),
  ends: FastCheck.array(FastCheck.constantFrom("\n", "\r\n", "\r"), { minLength: 1, maxLength: 16 })
}).map(({ ends, events }) => {
  const lines: Array<string> = []
  for (const { keepAlive, lines: eventLines } of events) {
    if (keepAlive) lines.push(": keep-alive", "")
    lines.push(...eventLines.map(render), "")
  }
  let text = ""
  lines.forEach((line, i) => {
    const end = ends[i % ends.length]!
    // A CR then an empty line ended by LF would read as one CRLF: end that line with CR instead.
    text += line + (line === "" && end === "\n" && text.endsWith("\r") ? "\r" : end)
  })
  const expected = events.map(({ lines: eventLines }) =>
    eventLines.flatMap((line) => line._tag === "data" ? [line.value] : []).join("\n")
  )
  return { text, expected }
})

describe("Sse.makeDecoder", () => {
  it("decodes any chunking of a valid stream into the same events", () => {
    FastCheck.assert(
      FastCheck.property(stream, FastCheck.array(FastCheck.nat(), { maxLength: 40 }), ({ expected, text }, offsets) => {
        const bytes = utf8.encode(text)
        expect(decode(splitAt(bytes, offsets))).toEqual(expected)
        expect(decode([...bytes].map((b) => Uint8Array.of(b)))).toEqual(expected)
      }),
      { numRuns: 300 }
    )
  })

  it("keeps a multi-line event whole when CRLF is split between two reads", () => {
    expect(decode(["data: a\r", "\ndata: b\r\n\r\n"])).toEqual(["a\nb"])
  })

  it("reads CR-only line ends", () => {
    expect(decode(["data: a\rdata: b\r\r", "data: c\r\r"])).toEqual(["a\nb", "c"])
  })

  it("ignores keep-alive comments with or without a space", () => {
    expect(decode([": keep-alive\n\n:keep-alive\n\ndata: x\n:keep-alive\n\n"])).toEqual(["x"])
  })

  it("strips exactly one space after data:", () => {
    expect(decode(["data:x\n\ndata:  y\n\ndata\n\n"])).toEqual(["x", " y", ""])
  })

  it("decodes a multi-byte character cut between reads", () => {
    const bytes = utf8.encode("data: 深🌧\n\n")
    expect(decode([bytes.subarray(0, 8), bytes.subarray(8, 11), bytes.subarray(11)])).toEqual(["深🌧"])
  })

  it("passes [DONE] through as data", () => {
    expect(decode(["data: {\"a\":1}\n\ndata: [DONE]\n\n"])).toEqual(["{\"a\":1}", "[DONE]"])
  })

  it("never dispatches an event the body ended inside", () => {
    expect(decode(["data: one\n\ndata: two\n"])).toEqual(["one"])
  })

  it("drops a byte order mark at the start", () => {
    expect(decode([Uint8Array.of(0xef, 0xbb), Uint8Array.of(0xbf), "data: x\n\n"])).toEqual(["x"])
  })
})
