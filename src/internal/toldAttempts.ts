/**
 * Failed attempts already told to `Telemetry`. An account pool tells each attempt it fails over
 * from as it happens (the policy around the pool sees only the call's end); when no account is
 * left, that attempt's error becomes the call's own, which the policy must not tell again.
 *
 * @internal
 */

const told = new WeakSet<object>()

/** Notes that `error`'s attempt was told. */
export const markTold = (error: unknown): void => {
  if (typeof error === "object" && error !== null) told.add(error)
}

/** Whether `error`'s attempt was told already. */
export const wasTold = (error: unknown): boolean => typeof error === "object" && error !== null && told.has(error)
