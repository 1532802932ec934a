import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { FastCheck } from "effect"
import * as Stream from "effect/Stream"
import * as StreamPull from "../src/internal/streamPull.js"

/** A stream of `chunks` as they are cut, ending with `failure` when there is one. */
const streamOf = (chunks: ReadonlyArray<ReadonlyArray<number>>, failure: string | null) =>
  Stream.concat(
    Stream.fromChunks(...chunks.map((chunk) => Chunk.fromIterable(chunk))),
    failure === null ? Stream.empty : Stream.fail(failure)
  )

describe("StreamPull.forEachChunk", () => {
  it.effect.prop(
    "hands over every element in order, then ends or fails as the stream does",
    [FastCheck.array(FastCheck.array(FastCheck.integer(), { maxLength: 4 }), { maxLength: 8 }), FastCheck.option(FastCheck.string())],
    ([chunks, failure]) =>
      Effect.gen(function*() {
        const seen: Array<number> = []
        const result = yield* Effect.either(
          StreamPull.forEachChunk(streamOf(chunks, failure), (chunk) => Effect.sync(() => seen.push(...chunk)))
        )
        expect(seen).toEqual(chunks.flat())
        expect(result).toEqual(failure === null ? Either.right(undefined) : Either.left(failure))
      })
  )

  it.effect("stops pulling when the callback fails, with its error, and closes the stream", () =>
    Effect.gen(function*() {
      let pulled = 0
      let closed = false
      const stream = Stream.repeatEffect(Effect.sync(() => ++pulled)).pipe(Stream.ensuring(Effect.sync(() => (closed = true))))
      const result = yield* Effect.either(
        StreamPull.forEachChunk(stream, (chunk) => Chunk.unsafeHead(chunk) === 3 ? Effect.fail("enough") : Effect.void)
      )
      expect(result).toEqual(Either.left("enough"))
      expect(pulled).toBe(3)
      expect(closed).toBe(true)
    }))
})
