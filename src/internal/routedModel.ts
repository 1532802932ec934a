/**
 * A request that names no `model` (absent, or `null` as an unset field) leaves it to the router
 * (`Router` fills one that is absent, `""` or `"auto"`), but `ChatCompletionRequest` requires one:
 * such a body is decoded with `""`.
 * The gateway does this for a request's body, batch for an input line's.
 *
 * @internal
 */

/** `body` with `model: ""` when it names none; `body` itself otherwise. */
export const withModelLeftToRouter = (body: Readonly<Record<string, unknown>>): Readonly<Record<string, unknown>> =>
  body.model != null ? body : { ...body, model: "" }
