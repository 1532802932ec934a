/**
 * Text quoted back to someone (a result line, an error body, a log line): cut short, so a huge
 * input is never echoed whole.
 *
 * @internal
 */

/** `text`, or its first `max` characters and an ellipsis. */
export const clipped = (text: string, max: number): string => text.length <= max ? text : `${text.slice(0, max)}…`
