/**
 * The library's streams as pulls. A stage of a streamed call (the transport, an account pool's
 * attempts, a policy's gates and retries) composes the pull of the stage below instead of wrapping
 * its `Stream` in operators: every operator is a channel, and through the dozen of a streamed call a
 * stream of five reads took 1,030 runtime steps in an account pool, where the same answer as JSON
 * took 88. A stage still shows a `Stream`, made by `fromOpening`, which remembers how it opens: the
 * next stage, and `forEachChunk`, open it directly; any other consumer runs it as any stream.
 *
 * A pull is Effect's (`Stream.toPull`): the next chunk, failing with `None` at the end and with
 * `Some` with the stream's failure.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"

/** The next chunk of a stream; fails with `None` once it ended, with `Some` with its failure. */
export type Pull<A, E, R = never> = Effect.Effect<Chunk.Chunk<A>, Option.Option<E>, R>

/** The start of a stream, whose resources live in the scope it is given: its pull, or why it could not start. */
export type Opening<A, E, R = never> = Effect.Effect<Pull<A, E, R>, E, R | Scope.Scope>

const openings = new WeakMap<Stream.Stream<unknown, unknown, unknown>, Opening<unknown, unknown, unknown>>()

/** The stream `opening` starts, which remembers it for `openingOf`. */
export const fromOpening = <A, E, R>(opening: Opening<A, E, R>): Stream.Stream<A, E, Exclude<R, Scope.Scope>> => {
  // Built when run: a stage of the library only opens it.
  const stream = Stream.suspend(() => Stream.unwrapScoped(Effect.map(opening, Stream.repeatEffectChunkOption)))
  openings.set(stream, opening)
  return stream as Stream.Stream<A, E, Exclude<R, Scope.Scope>>
}

/** How `stream` opens: as `fromOpening` made it, else through its channel (`Stream.toPull`). */
export const openingOf = <A, E, R>(stream: Stream.Stream<A, E, R>): Opening<A, E, R> =>
  (openings.get(stream) as Opening<A, E, R> | undefined) ?? Stream.toPull(stream)

/** `Some` with the failure of a pull that failed, `None` for one that ended. */
export const failureOf = <E>(cause: Cause.Cause<Option.Option<E>>): Option.Option<Cause.Cause<E>> =>
  Option.exists(Cause.failureOption(cause), Option.isNone) ? Option.none() : Option.some(Cause.map(cause, Option.getOrThrow))

/**
 * `opening` with `delivered` run once, when its stream first delivers: its first element, or its
 * end without one. Not when it opens (an opening may succeed before anything was asked of the
 * source) nor when it fails.
 */
export const onDelivery = <A, E, R>(opening: Opening<A, E, R>, delivered: Effect.Effect<void>): Opening<A, E, R> =>
  Effect.zipWith(opening, Effect.once(delivered), (pull, settled) =>
    Effect.matchEffect(pull, {
      onFailure: (end) => Effect.zipRight(Option.isNone(end) ? settled : Effect.void, Effect.fail(end)),
      onSuccess: (chunk) => Chunk.isNonEmpty(chunk) ? Effect.as(settled, chunk) : Effect.succeed(chunk)
    }))

/**
 * Opens `first`, and when an attempt fails (as it opens or at a pull) opens the one `next` gives for
 * its error instead, until one ends or `next` fails; `next` is told whether any element was
 * delivered before. Each attempt has a scope of its own, closed once the attempt failed and before
 * `next` runs, so that a retry's backoff holds nothing of the attempt before it: what
 * `Stream.catchAll` around `Stream.unwrapScoped` stages does.
 */
export const recovering = <A, E, R, E2, R2>(
  first: Opening<A, E, R>,
  next: (error: E, delivered: boolean) => Effect.Effect<Opening<A, E, R>, E2, R2>
): Opening<A, E2, R | R2> =>
  Effect.flatMap(Effect.scope, (outer) => {
    let attempt: Scope.CloseableScope
    let current: Pull<A, E, R>
    let delivered = false
    const open = (opening: Opening<A, E, R>): Effect.Effect<void, E2, R | R2> =>
      Effect.flatMap(Scope.fork(outer, ExecutionStrategy.sequential), (scope) => {
        attempt = scope
        return Effect.matchEffect(Scope.extend(opening, scope), {
          onFailure: failed,
          onSuccess: (pull) => {
            current = pull
            return Effect.void
          }
        })
      })
    const failed = (error: E): Effect.Effect<void, E2, R | R2> =>
      Effect.zipRight(Scope.close(attempt, Exit.fail(error)), Effect.flatMap(Effect.suspend(() => next(error, delivered)), open))
    const pull: Pull<A, E2, R | R2> = Effect.matchEffect(Effect.suspend(() => current), {
      onFailure: (end) =>
        Option.isNone(end) ? Effect.fail(Option.none()) : Effect.zipRight(Effect.mapError(failed(end.value), Option.some), pull),
      onSuccess: (chunk) => {
        delivered ||= Chunk.isNonEmpty(chunk)
        return Effect.succeed(chunk)
      }
    })
    return Effect.as(open(first), pull)
  })

/**
 * Hands each chunk of `stream` to `f`, in order, until the stream ends or fails (or `f` fails):
 * what `Stream.runForEachChunk` does, without the sink's channel. The stream's scope is made and
 * closed here rather than added to the fiber's context (`Effect.scoped` copies the context and sets
 * it twice, comparing each by hash); only its opening sees it.
 */
export const forEachChunk = <A, E, R, E2, R2>(
  stream: Stream.Stream<A, E, R>,
  f: (chunk: Chunk.Chunk<A>) => Effect.Effect<void, E2, R2>
): Effect.Effect<void, E | E2, R | R2> =>
  Effect.acquireUseRelease(
    Scope.make(),
    (scope) =>
      Effect.flatMap(Scope.extend(openingOf(stream), scope), (pull) => {
        const next: Effect.Effect<void, E | E2, R | R2> = Effect.matchEffect(pull, {
          onFailure: Option.match({ onNone: () => Effect.void, onSome: Effect.fail }),
          onSuccess: (chunk) => Effect.zipRight(f(chunk), next)
        })
        return next
      }),
    (scope, exit) => Scope.close(scope, exit)
  )
