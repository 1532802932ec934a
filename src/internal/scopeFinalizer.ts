/**
 * A finalizer added to the scope as it is. `Effect.addFinalizer` also takes the fiber's refs
 * when it is added and, around the finalizer, diffs them with the closing fiber's and patches
 * them there and back (the context included): for the finalizers of plain bookkeeping a stream
 * holds (its permit, its breaker's admission, its deadlines), that cost a tenth of a streamed
 * answer's CPU in the gateway.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Scope from "effect/Scope"

/** Runs `finalizer` when the scope closes, in the fiber that closes it, with that fiber's refs. */
export const addFinalizer = (finalizer: Effect.Effect<void>): Effect.Effect<void, never, Scope.Scope> =>
  Effect.flatMap(Effect.scope, (scope) => Scope.addFinalizer(scope, finalizer))
