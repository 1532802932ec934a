import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as Tracer from "effect/Tracer"

/** Effect's built-in tracer: the one a fiber has when no other is installed. */
const builtInTracer = Context.get(DefaultServices.liveServices, Tracer.Tracer)

/**
 * `Effect.withSpan(self, name, { attributes, captureStackTrace: false })` when a tracer is
 * installed, and `self` unchanged while the fiber has Effect's built-in tracer, which sends spans
 * nowhere (as OpenTelemetry's API is a no-op until an SDK is registered). On the hot path, making
 * a span and setting it as the parent costs more than every policy together; with nothing to
 * receive the span, that is all it would be.
 */
export const withSpanWhenTraced = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  name: string,
  attributes: Record<string, unknown>
): Effect.Effect<A, E, R> =>
  Effect.withFiberRuntime((fiber) =>
    fiber.currentTracer === builtInTracer
      ? self
      : Effect.withSpan(self, name, { attributes, captureStackTrace: false })
  )

/** Whether `fiber` has a tracer of its own: not Effect's built-in one, which sends spans nowhere. */
export const isTraced = (fiber: Fiber.RuntimeFiber<unknown, unknown>): boolean => fiber.currentTracer !== builtInTracer
