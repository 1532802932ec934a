import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import type * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import * as StreamPull from "./streamPull.js"

/** Effect's built-in tracer: the one a fiber has when no other is installed. */
const builtInTracer = Context.get(DefaultServices.liveServices, Tracer.Tracer)

/**
 * `untraced` while the fiber has Effect's built-in tracer, which sends spans nowhere (as
 * OpenTelemetry's API is a no-op until an SDK is registered), and `traced()` when another tracer
 * is installed. On the hot path, making a span and setting it as the parent costs more than every
 * policy together; with nothing to receive the span, that is all it would be.
 */
export const whenTraced = <A, E, R>(
  untraced: Effect.Effect<A, E, R>,
  traced: () => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> =>
  Effect.withFiberRuntime((fiber) => isTraced(fiber) ? traced() : untraced)

/** `whenTraced` for a stream: the one chosen is opened directly (`StreamPull`). */
export const streamWhenTraced = <A, E, R>(
  untraced: Stream.Stream<A, E, R>,
  traced: () => Stream.Stream<A, E, R>
): Stream.Stream<A, E, Exclude<R, Scope.Scope>> =>
  StreamPull.fromOpening(whenTraced(StreamPull.openingOf(untraced), () => StreamPull.openingOf(traced())))

/** `self(span)` in a new span `name`, its parent: `Effect.withSpan` that hands the span over. */
export const inSpan = <A, E, R>(
  name: string,
  options: Tracer.SpanOptions,
  self: (span: Tracer.Span) => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> =>
  Effect.useSpan(name, { ...options, captureStackTrace: false }, (span) => Effect.withParentSpan(self(span), span))

/** `self(span)` in a new span `name` open while the stream runs: `Stream.withSpan` that hands the span over. */
export const inStreamSpan = <A, E, R>(
  name: string,
  options: Tracer.SpanOptions,
  self: (span: Tracer.Span) => Stream.Stream<A, E, R>
): Stream.Stream<A, E, R> =>
  Stream.unwrap(Effect.map(Effect.orDie(Effect.currentSpan), self)).pipe(
    Stream.withSpan(name, { ...options, captureStackTrace: false })
  )

/** Whether `fiber` has a tracer of its own: not Effect's built-in one, which sends spans nowhere. */
export const isTraced = (fiber: Fiber.RuntimeFiber<unknown, unknown>): boolean => fiber.currentTracer !== builtInTracer
