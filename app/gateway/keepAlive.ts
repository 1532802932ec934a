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
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import type * as Http from "node:http"

const utf8 = new TextEncoder()

/** What DeepSeek sends before a non-stream JSON body while the request waits. */
export const jsonKeepAlive: Uint8Array = utf8.encode("\n")

/** What DeepSeek sends in a stream while the request waits. */
export const sseKeepAlive: Uint8Array = utf8.encode(": keep-alive\n\n")

/**
 * What a client waits for, already running: it tells each observer its result once (at once when
 * it has it), as a fiber tells its exit. A stream's first events (`Latch`) are one; a completion
 * waits in the request's own fiber, its keep-alives written by `JsonKeepAlive`.
 */
export interface Pending<A, E> {
  readonly addObserver: (observer: (exit: Exit.Exit<A, E>) => void) => void
  readonly removeObserver: (observer: (exit: Exit.Exit<A, E>) => void) => void
}

/**
 * How one request waits and answers:
 * - `ready`: the answer when the call ended within the interval, with the status that fits;
 * - `late`: the body that follows the keep-alives of a committed 200, once the call ended.
 */
export interface Waiter<A, E> {
  readonly interval: Duration.Duration
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
 * `pending`'s result if it comes within `interval`. A timer and an observer rather than
 * `Effect.timeoutOption(Fiber.await(fiber))`: that races two more fibers, which on this path (every
 * request) cost more than the rest of the wait (measured: about 0.2 ms of CPU a request). Node
 * keeps the timers of one duration in one list under one native timer, so a timer per request
 * is already one ticker per interval.
 */
const exitWithin = <A, E>(
  pending: Pending<A, E>,
  interval: Duration.Duration
): Effect.Effect<Option.Option<Exit.Exit<A, E>>> =>
  Effect.async((resume) => {
    const onExit = (exit: Exit.Exit<A, E>) => {
      clearTimeout(timer)
      resume(Effect.succeed(Option.some(exit)))
    }
    const timer = setTimeout(() => {
      pending.removeObserver(onExit)
      resume(Effect.succeed(Option.none()))
    }, Duration.toMillis(interval))
    pending.addObserver(onExit)
    return Effect.sync(() => {
      clearTimeout(timer)
      pending.removeObserver(onExit)
    })
  })

/** Waits for `pending`'s result. */
const exitOf = <A, E>(pending: Pending<A, E>): Effect.Effect<Exit.Exit<A, E>> =>
  Effect.async((resume) => {
    const onExit = (exit: Exit.Exit<A, E>) => resume(Effect.succeed(exit))
    pending.addObserver(onExit)
    return Effect.sync(() => pending.removeObserver(onExit))
  })

/**
 * Waits for `pending` (running in the request's scope: a client that disconnects closes it, which
 * interrupts the call and frees its permit) and answers as the module doc says.
 */
export const awaitFirst = <A, E>(
  pending: Pending<A, E>,
  waiter: Waiter<A, E>
): Effect.Effect<HttpServerResponse.HttpServerResponse> =>
  Effect.gen(function*() {
    const early = yield* exitWithin(pending, waiter.interval)
    if (Option.isSome(early)) return yield* waiter.ready(early.value)
    const keepAlives = Stream.repeatEffectWithSchedule(
      Effect.sync(() => {
        waiter.onKeepAlive()
        return waiter.keepAlive
      }),
      Schedule.spaced(waiter.interval)
    )
    const ended = exitOf(pending)
    const body = Stream.concat(Stream.interruptWhen(keepAlives, ended), Stream.unwrap(Effect.map(ended, waiter.late)))
    return HttpServerResponse.stream(body, { contentType: waiter.contentType, headers: waiter.headers })
  })

/** What a handler returns for an answer it ended itself: the platform leaves an ended response alone. */
const ended = HttpServerResponse.empty({ status: 200 })

/**
 * Headers of a response whose bytes must reach the client as written: keep-alives and events.
 * A proxy in front (nginx, which reads `x-accel-buffering`) would otherwise hold them back, and
 * the client's idle timeout would fire behind it.
 */
export const unbufferedHeaders = { "cache-control": "no-cache", "x-accel-buffering": "no" } as const

/**
 * Keep-alives of a JSON answer written straight to Node's `response`, by a Node timer (no fiber,
 * no observer): after `interval` without an answer its 200 and headers are committed, then a
 * blank line goes every interval until `end` writes the body.
 */
export class JsonKeepAlive {
  committed = false
  private timer: ReturnType<typeof setTimeout> | undefined

  constructor(
    private readonly response: Http.ServerResponse,
    private readonly settings: { readonly interval: Duration.Duration; readonly onKeepAlive: () => void }
  ) {
    this.timer = setTimeout(this.tick, Duration.toMillis(settings.interval))
  }

  private readonly tick = (): void => {
    const { response, settings } = this
    if (response.writableEnded || response.destroyed) return
    if (!this.committed) {
      this.committed = true
      response.writeHead(200, { "content-type": "application/json", ...unbufferedHeaders })
    }
    // Corked and uncorked, so the line leaves now rather than on the next tick.
    response.cork()
    response.write(jsonKeepAlive)
    response.uncork()
    settings.onKeepAlive()
    this.timer = setTimeout(this.tick, Duration.toMillis(settings.interval))
  }

  stop(): void {
    clearTimeout(this.timer)
  }

  /** Ends the committed answer with `body`. */
  end(body: Uint8Array): HttpServerResponse.HttpServerResponse {
    if (!this.response.writableEnded) this.response.end(body)
    return ended
  }
}

/**
 * A result told once to each observer, as a fiber tells its exit: for what is not a fiber's
 * exit (a stream's first events). Effect's `Deferred` is awaited by a fiber, not observed.
 */
export class Latch<A, E> implements Pending<A, E> {
  private result: Exit.Exit<A, E> | undefined
  private observers: Array<(exit: Exit.Exit<A, E>) => void> = []

  get isDone(): boolean {
    return this.result !== undefined
  }

  /** Sets the result and tells the observers; the first call wins. */
  done(exit: Exit.Exit<A, E>): void {
    if (this.result !== undefined) return
    this.result = exit
    const observers = this.observers
    this.observers = []
    for (const observer of observers) observer(exit)
  }

  addObserver(observer: (exit: Exit.Exit<A, E>) => void): void {
    if (this.result !== undefined) observer(this.result)
    else this.observers.push(observer)
  }

  removeObserver(observer: (exit: Exit.Exit<A, E>) => void): void {
    this.observers = this.observers.filter((o) => o !== observer)
  }
}
