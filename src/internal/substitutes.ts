/**
 * Answers of another model than the one asked for: an account pool's account whose `models` map
 * sent the request under another name (a fallback provider's model, say). The response cache does
 * not store them under the request's key, which names the model asked for: that request would get
 * the other model's answer for as long as it lives, the model asked for back or not.
 *
 * @internal
 */
import * as ObjectMark from "./objectMark.js"

const substitutes = ObjectMark.make()

/** Notes that `answer` (a completion, or a stream's chunk) came from another model than the one asked for. */
export const markSubstitute: (answer: unknown) => void = substitutes.mark

/** Whether `answer` came from another model than the one asked for. */
export const isSubstitute: (answer: unknown) => boolean = substitutes.has
