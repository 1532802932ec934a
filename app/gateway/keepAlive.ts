/**
 * The keep-alive writer: while a call waits for its first content (in the gateway's queue, in a
 * retry backoff, or in the upstream's own queue), the client's connection is kept alive the way
 * DeepSeek keeps it: blank lines before a JSON body, `: keep-alive` comments in a stream.
 *
 * A call that ends within one interval is answered with the status its outcome calls for (a 429
 * is a 429). A call that waits longer gets its 200 and headers at the end of that interval, then
 * a keep-alive every interval until it ends: from then on a failure can only be told in the
 * body (an error JSON body, or an error event).
 */
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"

const utf8 = new TextEncoder()

/** What DeepSeek sends before a non-stream JSON body while the request waits. */
export const jsonKeepAlive: Uint8Array = utf8.encode("\n")

/** What DeepSeek sends in a stream while the request waits. */
export const sseKeepAlive: Uint8Array = utf8.encode(": keep-alive\n\n")

/**
 * How one request waits and answers:
 * - `ready`: the answer when the call ended within the interval, with the status that fits;
 * - `late`: the body that follows the keep-alives of a committed 200, once the call ended.
 */
export interface Waiter<A, E> {
  readonly interval: Duration.Duration
  /** Told of the call's fiber as soon as it runs. */
  readonly track: (fiber: Fiber.RuntimeFiber<A, E>) => void
  readonly keepAlive: Uint8Array
  /** Called for each keep-alive written. */
  readonly onKeepAlive: () => void
  readonly ready: (exit: Exit.Exit<A, E>) => Effect.Effect<HttpServerResponse.HttpServerResponse>
  readonly late: (exit: Exit.Exit<A, E>) => Stream.Stream<Uint8Array>
  /** Headers of the committed 200. */
  readonly contentType: string
  readonly headers: Readonly<Record<string, string>>
}

/**
 * `fiber`'s exit if it ends within `interval`. A timer and an observer rather than
 * `Effect.timeoutOption(Fiber.await(fiber))`: that races two more fibers, which on this path (every
 * request) cost more than the rest of the wait (measured: about 0.2 ms of CPU a request).
 */
const exitWithin = <A, E>(
  fiber: Fiber.RuntimeFiber<A, E>,
  interval: Duration.Duration
): Effect.Effect<Option.Option<Exit.Exit<A, E>>> =>
  Effect.async((resume) => {
    const onExit = (exit: Exit.Exit<A, E>) => {
      clearTimeout(timer)
      resume(Effect.succeed(Option.some(exit)))
    }
    const timer = setTimeout(() => {
      fiber.removeObserver(onExit)
      resume(Effect.succeed(Option.none()))
    }, Duration.toMillis(interval))
    fiber.addObserver(onExit)
    return Effect.sync(() => {
      clearTimeout(timer)
      fiber.removeObserver(onExit)
    })
  })

/**
 * Runs `first` in the request's scope (a client that disconnects closes it, which interrupts the
 * call and frees its permit) and answers as the module doc says.
 */
export const awaitFirst = <A, E>(
  first: Effect.Effect<A, E>,
  waiter: Waiter<A, E>
): Effect.Effect<HttpServerResponse.HttpServerResponse, never, Scope.Scope> =>
  Effect.gen(function*() {
    const fiber = yield* Effect.forkScoped(first)
    waiter.track(fiber)
    const early = yield* exitWithin(fiber, waiter.interval)
    if (Option.isSome(early)) return yield* waiter.ready(early.value)
    const keepAlives = Stream.repeatEffectWithSchedule(
      Effect.sync(() => {
        waiter.onKeepAlive()
        return waiter.keepAlive
      }),
      Schedule.spaced(waiter.interval)
    )
    const body = Stream.concat(
      Stream.interruptWhen(keepAlives, Fiber.await(fiber)),
      Stream.unwrap(Effect.map(Fiber.await(fiber), waiter.late))
    )
    return HttpServerResponse.stream(body, { contentType: waiter.contentType, headers: waiter.headers })
  })
