/**
 * The SSE decoder benchmark: our decoder (`src/internal/sse.ts`) against `eventsource-parser` on
 * the same bytes, in the same process.
 *
 * - **The stream**: one DeepSeek-shaped response, as its bytes arrive: `: keep-alive` comments
 *   while queued, the role chunk, reasoning_content chunks, content chunks (English and Chinese
 *   pieces, so multi-byte characters), the finish chunk with usage, `data: [DONE]`.
 * - **Reads**: the same bytes cut three ways: 16 KiB reads (a body that arrived faster than it
 *   is read), one event per read (a live stream, the server flushing each token), and irregular
 *   small reads of 61-509 bytes that cut lines and UTF-8 characters; and the stream with CRLF
 *   line ends in 16 KiB reads, which both decoders read on a slower path.
 * - **Contenders**: both take the reads as bytes and give every event's data as a string.
 *   `eventsource-parser` takes text, so its reads go through a streaming `TextDecoder` first, as
 *   its documented use does (`TextDecoderStream`, or its own `EventSourceParserStream`): the
 *   target is against that. Shown beside it: the same behind Node's `StringDecoder`, faster on
 *   small reads though not its documented use, and on text decoded beforehand, which leaves
 *   decoding out and no caller of a byte stream gets (both for reference, no target).
 *
 * A round decodes the response `responsesPerRound` times, a fresh decoder each time. After
 * warm-up rounds the contenders run interleaved `rounds` times; each reports its median MB/s
 * (bytes of the body as read, 10^6 per MB).
 */
import { createParser } from "eventsource-parser"
import { StringDecoder } from "node:string_decoder"
import * as Sse from "../src/internal/sse.js"

export const settings = { responsesPerRound: 20, warmUpRounds: 3, rounds: 15 } as const

// --- the stream ---------------------------------------------------------------------------------

const pieces = [
  "Okay", ",", " the", " user", " wants", " a", " resilient", " client", ".", " Let", " me", " think", " about",
  " retries", " and", " back", "off", "\n\n", "首先", "，", "我们", "需要", "考虑", "并发", "限制", "。", " 🌧", "`429`",
  " \"quoted\"", " path\\to"
]

/** The shape of the response. */
export const shape = { keepAlives: 8, reasoningChunks: 1200, contentChunks: 400 } as const

const chunk = (delta: object, finishReason: string | null = null, usage?: object): string =>
  JSON.stringify({
    id: "5f1c7d1e-8a8b-4c1e-9d59-3a2b1c0d9e8f",
    object: "chat.completion.chunk",
    created: 1767225600,
    model: "deepseek-v4-flash",
    system_fingerprint: "fp_8802369eaa_prod0623_fp8_kvcache",
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }],
    ...(usage === undefined ? {} : { usage })
  })

/** The data of every event, in order, as both decoders must give it. */
const events: ReadonlyArray<string> = [
  chunk({ role: "assistant", content: null, reasoning_content: "" }),
  ...Array.from({ length: shape.reasoningChunks }, (_, i) => chunk({ content: null, reasoning_content: pieces[(i * 7) % pieces.length] })),
  ...Array.from({ length: shape.contentChunks }, (_, i) => chunk({ content: pieces[(i * 11) % pieces.length], reasoning_content: null })),
  chunk({ content: "", reasoning_content: null }, "stop", {
    prompt_tokens: 812,
    completion_tokens: 1601,
    total_tokens: 2413,
    prompt_tokens_details: { cached_tokens: 768 },
    completion_tokens_details: { reasoning_tokens: 1200 },
    prompt_cache_hit_tokens: 768,
    prompt_cache_miss_tokens: 44
  }),
  "[DONE]"
]

/** The response as it is sent, one entry per server write; reads are `Buffer`s, as undici gives them. */
const writes = (lineEnd: string): ReadonlyArray<Uint8Array> =>
  [
    ...Array.from({ length: shape.keepAlives }, () => ": keep-alive"),
    ...events.map((data) => `data: ${data}`)
  ].map((line) => Buffer.from(line + lineEnd + lineEnd))

const lfWrites = writes("\n")
const body: Uint8Array = Buffer.concat(lfWrites)

const cutEvery = (sizes: ReadonlyArray<number>, bytes = body): ReadonlyArray<Uint8Array> => {
  const reads: Array<Uint8Array> = []
  for (let start = 0, i = 0; start < bytes.length; i++) {
    const end = Math.min(bytes.length, start + sizes[i % sizes.length]!)
    reads.push(bytes.subarray(start, end))
    start = end
  }
  return reads
}

interface Split {
  readonly name: string
  readonly reads: ReadonlyArray<Uint8Array>
}

const splits: ReadonlyArray<Split> = [
  { name: "16 KiB reads", reads: cutEvery([16 * 1024]) },
  { name: "one event per read", reads: lfWrites },
  { name: "irregular 61-509 B reads", reads: cutEvery([61, 509, 127, 257, 89, 383, 197, 449, 73, 311]) },
  { name: "16 KiB reads, CRLF line ends", reads: cutEvery([16 * 1024], Buffer.concat(writes("\r\n"))) }
]

// --- the contenders -----------------------------------------------------------------------------

/** Decodes one response's reads with a fresh decoder, into the data of its events. */
type Contender = (reads: ReadonlyArray<Uint8Array>) => Array<string>

const weatherproof: Contender = (reads) => {
  const decoder = Sse.makeDecoder()
  const out: Array<string> = []
  for (const read of reads) {
    for (const data of decoder.feed(read)) out.push(data)
  }
  return out
}

/** eventsource-parser fed each read as `text` makes it. */
const eventsourceParser = <Read>(reads: ReadonlyArray<Read>, text: (read: Read) => string): Array<string> => {
  const out: Array<string> = []
  const parser = createParser({ onEvent: (event) => out.push(event.data) })
  for (const read of reads) parser.feed(text(read))
  return out
}

const withTextDecoder: Contender = (reads) => {
  const decoder = new TextDecoder()
  return eventsourceParser(reads, (read) => decoder.decode(read, { stream: true }))
}

const withStringDecoder: Contender = (reads) => {
  const decoder = new StringDecoder("utf8")
  return eventsourceParser(reads, (read) => decoder.write(read))
}

/** eventsource-parser on text decoded beforehand: its parsing alone. */
const onText = (texts: ReadonlyArray<string>): Array<string> => eventsourceParser(texts, (text) => text)

const decodedText = (reads: ReadonlyArray<Uint8Array>): ReadonlyArray<string> => {
  const text = new TextDecoder()
  return reads.map((read) => text.decode(read, { stream: true }))
}

// --- timing -------------------------------------------------------------------------------------

const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]!
}

/** MB/s of one round: the response, `bytes` long, decoded `responsesPerRound` times. */
const round = (decode: () => Array<string>, bytes: number): number => {
  let events = 0
  const start = performance.now()
  for (let i = 0; i < settings.responsesPerRound; i++) events += decode().length
  const seconds = (performance.now() - start) / 1000
  if (events === 0) throw new Error("no events decoded")
  return (bytes * settings.responsesPerRound) / seconds / 1e6
}

const contenders = ["weatherproof", "withTextDecoder", "withStringDecoder", "onText"] as const

export interface SplitResult {
  readonly split: string
  readonly reads: number
  /** Median MB/s of each contender: ours, eventsource-parser behind each decoder, and on decoded text. */
  readonly mbPerSecond: Readonly<Record<(typeof contenders)[number], number>>
}

export interface SseReport {
  /** With LF line ends. */
  readonly bodyBytes: number
  readonly events: number
  readonly results: ReadonlyArray<SplitResult>
  /** The splits on which a contender's events differ from the stream's. */
  readonly mismatches: ReadonlyArray<string>
}

const measureSplit = ({ name, reads }: Split): SplitResult => {
  const texts = decodedText(reads)
  const bytes = reads.reduce((sum, read) => sum + read.length, 0)
  const decode = {
    weatherproof: () => weatherproof(reads),
    withTextDecoder: () => withTextDecoder(reads),
    withStringDecoder: () => withStringDecoder(reads),
    onText: () => onText(texts)
  }
  const samples = contenders.map(() => new Array<number>())
  for (let i = 0; i < settings.warmUpRounds + settings.rounds; i++) {
    contenders.forEach((contender, c) => {
      const mbPerSecond = round(decode[contender], bytes)
      if (i >= settings.warmUpRounds) samples[c]!.push(mbPerSecond)
    })
  }
  const medians = samples.map(median)
  return {
    split: name,
    reads: reads.length,
    mbPerSecond: { weatherproof: medians[0]!, withTextDecoder: medians[1]!, withStringDecoder: medians[2]!, onText: medians[3]! }
  }
}

/** eventsource-parser behind one decoder or the other. */
export type Peer = "withTextDecoder" | "withStringDecoder"

/** Ours against eventsource-parser behind one decoder: above 1 when ours is faster. */
export const ratio = ({ mbPerSecond }: SplitResult, peer: Peer): number =>
  mbPerSecond.weatherproof / mbPerSecond[peer]

const sameEvents = (decoded: ReadonlyArray<string>): boolean =>
  decoded.length === events.length && decoded.every((data, i) => data === events[i])

/** Runs every split; synchronous, so call it where blocking the thread is fine. */
export const run = (): SseReport => ({
  bodyBytes: body.length,
  events: events.length,
  mismatches: splits
    .filter(({ reads }) => ![weatherproof, withTextDecoder, withStringDecoder].every((contender) => sameEvents(contender(reads))))
    .map((split) => split.name),
  results: splits.map(measureSplit)
})
