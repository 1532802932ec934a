/**
 * Failed attempts already counted (`weatherproof_attempt_failures`), and already told to a
 * `Telemetry`. An account pool counts each attempt it fails over from as it happens, and tells
 * its telemetry if it has one (the policy around the pool sees only the call's end); when no
 * account is left, that attempt's error becomes the call's own, which the policy must not count
 * nor tell again.
 *
 * @internal
 */
import * as ObjectMark from "./objectMark.js"

const told = ObjectMark.make()

/** Notes that `error`'s attempt was told. */
export const markTold: (error: unknown) => void = told.mark

/** Whether `error`'s attempt was told already. */
export const wasTold: (error: unknown) => boolean = told.has

const counted = ObjectMark.make()

/** Notes that `error`'s attempt was counted. */
export const markCounted: (error: unknown) => void = counted.mark

/** Whether `error`'s attempt was counted already. */
export const wasCounted: (error: unknown) => boolean = counted.has
