/**
 * Text quoted back to someone (a result line, an error body, a log line): cut short, so a huge
 * input is never echoed whole.
 *
 * @internal
 */

/** `text`, or its first `max` characters and an ellipsis. */
export const clipped = (text: string, max: number): string => text.length <= max ? text : `${text.slice(0, max)}…`

/**
 * A body that is not what the API sends, for a message: its content type and first characters (a
 * base URL that reaches a web server answers with a page). Unscrubbed: the caller scrubs.
 */
export const quotedBody = (contentType: string | undefined, text: string): string =>
  `${contentType ?? "no content type"}: ${JSON.stringify(clipped(text.trim(), 200))}`
