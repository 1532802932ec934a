/**
 * A cap's 429s nothing paces: met by a request alone on its lane, where a lower limit would
 * change nothing (the upstream refuses even one, as under an account-wide rate limit), with no
 * `Retry-After` to wait. A limiter's permit marks them as it is settled (a policy's limiter, an
 * account pool's lanes); the policy charges their retries to the retry budget instead of
 * exempting them as paced (`Policy.Parts.capRetriesPaced`).
 *
 * @internal
 */
import * as ObjectMark from "./objectMark.js"

const unpaced = ObjectMark.make()

/** Notes that `error` was met by a request alone on its lane. */
export const markUnpaced: (error: unknown) => void = unpaced.mark

/** Whether `error` was met by a request alone on its lane. */
export const wasUnpaced: (error: unknown) => boolean = unpaced.has
