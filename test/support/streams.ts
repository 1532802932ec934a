import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Stream from "effect/Stream"
import type { ChatCompletionChunk } from "../../src/ChatSchema.js"

/** Every element a stream emitted, and the error it ended with (if any). */
export const settle = <A, E, R>(stream: Stream.Stream<A, E, R>) =>
  Effect.map(Stream.runCollect(Stream.either(stream)), (items) => {
    const all = Chunk.toReadonlyArray(items)
    return {
      chunks: all.flatMap((item) => Either.isRight(item) ? [item.right] : []),
      error: all.flatMap((item) => Either.isLeft(item) ? [item.left] : [])[0]
    }
  })

/** The text streamed in `chunks`. */
export const contentOf = (chunks: ReadonlyArray<ChatCompletionChunk>) =>
  chunks.map((chunk) => chunk.choices[0]?.delta.content ?? "").join("")
