/**
 * The checks of an upstream's base URL, for `Accounts` (its file and `DEEPSEEK_BASE_URL`) and
 * `Transport` alike. The URL itself is never quoted: it may hold a secret.
 *
 * @internal
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Either from "effect/Either"
import { scrubSecrets } from "../ApiError.js"
import { clipped } from "./text.js"

/** What a base URL that is no http(s) URL is told. */
const notHttpUrl = "expected an http(s) URL"

/**
 * What is wrong with a base URL, if anything: a space in or around it; not http(s); credentials in
 * it (`user:pass@`: they would reach traces as `url.full`, and keys go in `keys`); a query or
 * fragment (the path `/chat/completions` is appended to it).
 */
export const problemOf = (text: string): string | undefined => {
  // URL's parser drops the spaces around a URL, but the path is appended to the text as it is.
  if (/\s/.test(text) && URL.canParse(text.trim())) {
    return "expected an http(s) URL with no space in or around it (a line of an env file may end in one)"
  }
  const url = URL.canParse(text) ? new URL(text) : undefined
  if (url === undefined || (url.protocol !== "http:" && url.protocol !== "https:")) return notHttpUrl
  if (url.username !== "" || url.password !== "") return "expected an http(s) URL without credentials (user:password@): keys are given apart from it"
  if (url.search !== "" || url.hash !== "") return "expected an http(s) URL without a ?query or #fragment: /chat/completions is appended to it"
  if (/\/chat\/completions\/*$/.test(url.pathname)) {
    return "expected the API's base URL, not its chat endpoint: /chat/completions is appended to it; leave it out"
  }
  return undefined
}

/**
 * Where DeepSeek answers `GET /user/balance` for a base URL: its API root, which is the base URL
 * less a last `/v1` (DeepSeek's OpenAI-compatible alias, documented for chat only).
 */
export const balanceUrl = (baseUrl: string): string =>
  `${baseUrl.replace(/\/+$/, "").replace(/\/v1$/, "")}/user/balance`

/** `DEEPSEEK_BASE_URL`, checked; `fallback` when unset or empty (an env file's blank entry). */
export const fromEnv = (fallback: string): Config.Config<string> =>
  Config.nonEmptyString("DEEPSEEK_BASE_URL").pipe(
    Config.mapOrFail((url) => {
      const problem = problemOf(url)
      if (problem === undefined) return Either.right(url)
      // Only a value that is no URL is shown (a key pasted into the wrong variable, scrubbed):
      // one with credentials or a query may hold a secret.
      const message = problem === notHttpUrl
        ? `expected an http(s) URL such as ${fallback}, got ${JSON.stringify(clipped(scrubSecrets(url), 100))}`
        : problem
      return Either.left(ConfigError.InvalidData([], message))
    }),
    Config.withDefault(fallback)
  )
