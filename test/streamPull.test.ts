import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
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

/** An attempt: the chunks it gives, then how it ends (`null`: the end; a string: its failure); or a failure as it opens. */
type Attempt = { readonly chunks: ReadonlyArray<ReadonlyArray<number>>; readonly end: string | null } | { readonly refused: string }

const attemptArbitrary: FastCheck.Arbitrary<Attempt> = FastCheck.oneof(
  FastCheck.record({
    chunks: FastCheck.array(FastCheck.array(FastCheck.integer(), { minLength: 1, maxLength: 3 }), { maxLength: 3 }),
    end: FastCheck.option(FastCheck.string({ minLength: 1 }))
  }),
  FastCheck.record({ refused: FastCheck.string({ minLength: 1 }) })
)

describe("StreamPull.recovering", () => {
  it.effect.prop(
    "gives each attempt's elements in order, in a scope of its own closed before the next opens, says whether any was delivered, and fails as the last attempt",
    [FastCheck.array(attemptArbitrary, { minLength: 1, maxLength: 5 })],
    ([attempts]) =>
      Effect.gen(function*() {
        const log: Array<string> = []
        let opened = 0
        const opening = (attempt: Attempt, index: number): StreamPull.Opening<number, string> =>
          Effect.zipRight(
            Effect.acquireRelease(Effect.sync(() => log.push(`open ${index}`)), () => Effect.sync(() => log.push(`close ${index}`))),
            Effect.suspend(() => {
              opened++
              if ("refused" in attempt) return Effect.fail(attempt.refused)
              let next = 0
              return Effect.succeed(Effect.suspend(() =>
                next < attempt.chunks.length
                  ? Effect.succeed(Chunk.fromIterable(attempt.chunks[next++]!))
                  : Effect.fail(attempt.end === null ? Option.none() : Option.some(attempt.end))
              ))
            })
          )
        const recovered = StreamPull.recovering(opening(attempts[0]!, 0), (error, delivered) => {
          const before = attempts.slice(0, opened)
          expect(delivered).toBe(before.some((a) => !("refused" in a) && a.chunks.length > 0))
          log.push(`failed ${opened - 1}: ${error}`)
          return opened < attempts.length ? Effect.succeed(opening(attempts[opened]!, opened)) : Effect.fail(`last: ${error}`)
        })
        const seen: Array<number> = []
        const result = yield* Effect.either(
          StreamPull.forEachChunk(StreamPull.fromOpening(recovered), (chunk) => Effect.sync(() => seen.push(...chunk)))
        )

        // The attempts up to the first that ends, or all of them.
        const ran = attempts.slice(0, attempts.findIndex((a) => !("refused" in a) && a.end === null) + 1 || attempts.length)
        expect(opened).toBe(ran.length)
        expect(seen).toEqual(ran.flatMap((a) => "refused" in a ? [] : a.chunks.flat()))
        const last = ran[ran.length - 1]!
        const lastError = "refused" in last ? last.refused : last.end
        expect(result).toEqual(lastError === null ? Either.right(undefined) : Either.left(`last: ${lastError}`))
        // Each failed attempt is closed before its error is handed on, so before the next opens.
        expect(log).toEqual(ran.flatMap((a, i) => {
          const failure = "refused" in a ? a.refused : a.end
          return failure === null ? [`open ${i}`, `close ${i}`] : [`open ${i}`, `close ${i}`, `failed ${i}: ${failure}`]
        }))
      })
  )
})

describe("StreamPull.fromOpening", () => {
  it.effect("is a stream as any other, and its opening is the one it was made of", () =>
    Effect.gen(function*() {
      const opening: StreamPull.Opening<number, never> = Effect.sync(() => {
        let left = 3
        return Effect.suspend(() => left > 0 ? Effect.succeed(Chunk.of(left--)) : Effect.fail(Option.none()))
      })
      const stream = StreamPull.fromOpening(opening)
      expect(StreamPull.openingOf(stream)).toBe(opening)
      expect(Chunk.toReadonlyArray(yield* Stream.runCollect(Stream.map(stream, (n) => n * 10)))).toEqual([30, 20, 10])
      // A stream made otherwise opens through its channel.
      const other = Stream.map(stream, (n) => n + 1)
      expect(StreamPull.openingOf(other)).not.toBe(opening)
      const seen: Array<number> = []
      yield* StreamPull.forEachChunk(other, (chunk) => Effect.sync(() => seen.push(...chunk)))
      expect(seen).toEqual([4, 3, 2])
    }))
})
