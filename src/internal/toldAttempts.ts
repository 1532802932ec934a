/**
 * Failed attempts already told to `Telemetry`. An account pool tells each attempt it fails over
 * from as it happens (the policy around the pool sees only the call's end); when no account is
 * left, that attempt's error becomes the call's own, which the policy must not tell again.
 *
 * @internal
 */
import * as ObjectMark from "./objectMark.js"

const told = ObjectMark.make()

/** Notes that `error`'s attempt was told. */
export const markTold: (error: unknown) => void = told.mark

/** Whether `error`'s attempt was told already. */
export const wasTold: (error: unknown) => boolean = told.has
