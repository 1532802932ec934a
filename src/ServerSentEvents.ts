/**
 * Server-Sent Events decoded as the bytes of a body arrive, by the decoder `Transport` reads
 * DeepSeek's streams with: for a body read with an HTTP client of your own, or a recorded one.
 *
 * It follows the WHATWG rules a chat stream needs: LF, CRLF or CR line ends (a CRLF split between
 * two reads included), `data:` with or without one space, multi-line data joined by LF, comment
 * lines (DeepSeek's `: keep-alive` while a request waits in its queue) and other fields skipped,
 * a leading byte order mark dropped. An event the body ended in before its blank line is never
 * dispatched. `[DONE]`, which ends an OpenAI-compatible chat stream, is an event like another: a
 * body that ends without it was cut (`Transport` then fails with `ApiError.StreamTruncated`).
 *
 * @since 0.1.0
 */
import * as Stream from "effect/Stream"
import * as Sse from "./internal/sse.js"

/**
 * The `data` of each event of `body`, as its reads complete them.
 *
 * @example
 * ```ts
 * import { HttpClient } from "@effect/platform"
 * import { Effect, Stream } from "effect"
 * import { ServerSentEvents } from "weatherproof"
 *
 * // A `weatherproof serve` gateway's status feed: one JSON sample an event, its keep-alives skipped.
 * const samples = Effect.gen(function*() {
 *   const response = yield* HttpClient.get("http://127.0.0.1:8787/status/events")
 *   return ServerSentEvents.decode(response.stream).pipe(Stream.map((data): unknown => JSON.parse(data)), Stream.take(3))
 * })
 * ```
 *
 * @since 0.1.0
 * @category decoding
 */
export const decode = <E, R>(body: Stream.Stream<Uint8Array, E, R>): Stream.Stream<string, E, R> =>
  Stream.suspend(() => {
    const decoder = Sse.makeDecoder()
    return Stream.mapConcat(body, decoder.feed)
  })
