import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import * as Stream from "effect/Stream"
import * as Sse from "../src/internal/sse.js"
import * as ServerSentEvents from "../src/ServerSentEvents.js"

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

/**
 * The WHATWG algorithm on the whole body at once, the way the standard states it: decode the
 * bytes (one leading BOM dropped), split the lines, process every line a line end finished.
 */
const reference = (bytes: Uint8Array): ReadonlyArray<string> => {
  const lines = new TextDecoder().decode(bytes).split(/\r\n|\r|\n/)
  lines.pop() // what follows the last line end is an unfinished line
  const events: Array<string> = []
  let data: Array<string> = []
  for (const line of lines) {
    if (line === "") {
      if (data.length > 0) events.push(data.join("\n"))
      data = []
      continue
    }
    const colon = line.indexOf(":")
    if (colon === 0) continue
    const [field, value] = colon < 0 ? [line, ""] : [line.slice(0, colon), line.slice(colon + 1).replace(/^ /, "")]
    if (field === "data") data.push(value)
  }
  return events
}

/** Pieces of SSE text and bytes that meet at the edges a byte-level decoder must get right. */
const fragment = FastCheck.oneof(
  FastCheck.constantFrom("data", ":", " ", "data:", "data: ", "dat", "datax:", ": keep-alive", "event: e", "id: 1", "x", "{\"a\":1}"),
  FastCheck.constantFrom("\n", "\r", "\r\n", "\n\n", "\r\r", "\r\n\r\n"),
  FastCheck.constantFrom("深", "🌧", "é", "\uFEFF"),
  lineText
).map((text) => utf8.encode(text))

/** Arbitrary bytes that look like SSE: fragments, invalid UTF-8 bytes, sometimes a leading BOM. */
const sseLikeBytes = FastCheck.record({
  bom: FastCheck.boolean(),
  pieces: FastCheck.array(
    FastCheck.oneof({ arbitrary: fragment, weight: 9 }, { arbitrary: FastCheck.constantFrom(0x80, 0xe6, 0xef, 0xff).map((b) => Uint8Array.of(b)), weight: 1 }),
    { maxLength: 60 }
  )
}).map(({ bom, pieces }) => Buffer.concat([bom ? Uint8Array.of(0xef, 0xbb, 0xbf) : new Uint8Array(0), ...pieces]))

describe("Sse.makeDecoder", () => {
  it("decodes any SSE-like bytes, cut anywhere, as the whole-body reference does", () => {
    FastCheck.assert(
      FastCheck.property(sseLikeBytes, FastCheck.array(FastCheck.nat(), { maxLength: 40 }), (bytes, offsets) => {
        const expected = reference(bytes)
        expect(decode(splitAt(bytes, offsets))).toEqual(expected)
        expect(decode([...bytes].map((b) => Uint8Array.of(b)))).toEqual(expected)
      }),
      { numRuns: 1000 }
    )
  })

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

  it("tells what the event the body ended inside held, without dispatching it", () => {
    const unfinishedAfter = (reads: ReadonlyArray<string | Uint8Array>) => {
      const decoder = Sse.makeDecoder()
      for (const read of reads) decoder.feed(typeof read === "string" ? utf8.encode(read) : read)
      return decoder.unfinished()
    }
    expect(unfinishedAfter(["data: one\n\ndata: [DONE]"])).toBe("[DONE]")
    expect(unfinishedAfter(["data: one\n\ndata: [DO", "NE]\n"])).toBe("[DONE]")
    expect(unfinishedAfter(["data: a\ndata: b\r"])).toBe("a\nb")
    expect(unfinishedAfter(["data: a\nda"])).toBe("a")
    expect(unfinishedAfter([Uint8Array.of(0xef, 0xbb, 0xbf), "data:[DONE]"])).toBe("[DONE]")
    expect(unfinishedAfter(["data: one\n\n"])).toBeUndefined()
    expect(unfinishedAfter(["data: one\n\n: keep-alive"])).toBeUndefined()
    expect(unfinishedAfter([])).toBeUndefined()
  })

  it("drops a byte order mark at the start", () => {
    expect(decode([Uint8Array.of(0xef, 0xbb), Uint8Array.of(0xbf), "data: x\n\n"])).toEqual(["x"])
  })

  it("keeps a byte order mark anywhere else", () => {
    expect(decode(["\uFEFF\uFEFFdata: x\n\ndata: \uFEFFy\n\n"])).toEqual(["\uFEFFy"])
  })

  it("reads a short line after a longer cut one as itself", () => {
    // The bytes of the longer line stay behind the short one in the decoder's line buffer.
    expect(decode(["data: xy", "z\n\nd", "\n\nda", "ta\n\n"])).toEqual(["xyz", ""])
  })

  it("decodes a long line cut into many small reads", () => {
    const value = "深🌧 retry-after ".repeat(4000)
    const bytes = utf8.encode(`: keep-alive\n\ndata: ${value}\ndata: ${value}\r\n\r\n`)
    const expected = [`${value}\n${value}`]
    expect(decode([bytes])).toEqual(expected)
    expect(decode(splitAt(bytes, Array.from({ length: bytes.length / 7 }, (_, i) => i * 7)))).toEqual(expected)
  })

  it("reads a Buffer or any view of a larger buffer", () => {
    const event = utf8.encode("data: 深\n\n")
    const backing = Buffer.concat([utf8.encode("data: no\n\n"), event, utf8.encode("data: no\n\n")])
    const view = new Uint8Array(backing.buffer, backing.byteOffset + 10, event.length)
    expect(decode([view])).toEqual(["深"])
    expect(decode([Buffer.from(view)])).toEqual(["深"])
  })
})

describe("ServerSentEvents.decode", () => {
  const body = utf8.encode(": keep-alive\n\n: keep-alive\r\ndata: {\"a\":1}\r\n\r\ndata: one\ndata: two\n\nevent: x\ndata: [DONE]\n\ndata: cut")

  it.prop(
    "gives the data of each event however the body's reads are cut, keep-alives skipped, the unfinished last event not dispatched",
    [FastCheck.array(FastCheck.nat(), { maxLength: 8 })],
    ([offsets]) =>
      Effect.gen(function*() {
        const decoded = yield* ServerSentEvents.decode(Stream.fromIterable(splitAt(body, offsets))).pipe(Stream.runCollect)
        expect(Chunk.toReadonlyArray(decoded)).toEqual(["{\"a\":1}", "one\ntwo", "[DONE]"])
      }).pipe(Effect.runSync)
  )

  it.effect("each run of the stream decodes afresh: a run after a cut one does not inherit its half line", () =>
    Effect.gen(function*() {
      const events = ServerSentEvents.decode(Stream.make(utf8.encode("data: a\n\ndata: half")))
      expect(Chunk.toReadonlyArray(yield* Stream.runCollect(events))).toEqual(["a"])
      expect(Chunk.toReadonlyArray(yield* Stream.runCollect(events))).toEqual(["a"])
    }))
})
