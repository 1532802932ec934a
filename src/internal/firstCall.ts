/**
 * Functions made at their first call rather than where a module declares them. A schema's
 * decoder compiles its parser when it is made: one a module declares at its top level is compiled
 * as the module loads, on every start, whether the run ever decodes with it or not.
 *
 * @internal
 */

/** `make()`'s function, made (once) at the first call, which every call reaches with all its arguments. */
export const madeAtFirstCall = <F extends (...args: Array<never>) => unknown>(make: () => F): F => {
  let made: F | undefined
  return ((...args: Parameters<F>) => (made ??= make())(...args)) as F
}
