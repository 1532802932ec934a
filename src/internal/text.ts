/**
 * Text quoted back to someone (a result line, an error body, a log line): cut short, so a huge
 * input is never echoed whole. Text read from someone: JSON parsed without a throw. And what an
 * error says, the causes it wraps included.
 *
 * @internal
 */
import * as Either from "effect/Either"
import * as Option from "effect/Option"

/** `text` parsed, or none when it is not JSON. */
export const parseJson: (text: string) => Option.Option<unknown> = Option.liftThrowable(JSON.parse)

/** V8's words for JSON that stops at a place it names: `Expected ',' or '}' after property value in JSON at position 12`. */
const placedError = /^(.*?)(?: in JSON)? at position (\d+)/s

/** V8's words for JSON that stops at a character it names but not where: `Unexpected token 'N', "{"a":None}" is not valid JSON`. */
const unplacedError = /^(Unexpected token '.*?'), |^(Unexpected end of JSON input)$/s

/** The words of `error` when it is one `JSON.parse` throws. */
const syntaxErrorWords = (error: unknown): string | undefined => error instanceof SyntaxError ? error.message : undefined

/** Whether JSON could go on from `prefix`: it is JSON already, or it stops only where it ends. */
const mayGoOn = (prefix: string): boolean => {
  try {
    JSON.parse(prefix)
    return true
  } catch (error) {
    const words = syntaxErrorWords(error) ?? ""
    const placed = placedError.exec(words)
    return placed === null ? words === "Unexpected end of JSON input" : Number(placed[2]) >= prefix.length
  }
}

/**
 * Where `text` stops being JSON: the length of its longest prefix JSON could go on from (found by
 * halving, `JSON.parse` on each prefix: a prefix JSON cannot go on from has no longer one that can).
 */
const endOfJson = (text: string): number => {
  if (mayGoOn(text)) return text.length
  let from = 0
  let to = text.length
  while (to - from > 1) {
    const middle = (from + to) >>> 1
    if (mayGoOn(text.slice(0, middle))) from = middle
    else to = middle
  }
  return from
}

/**
 * Where `text`, which `JSON.parse` refused with `error`, stops being JSON, and what V8 says it met
 * there: `line 3, column 18: Expected double-quoted property name`, with no line when `text` is
 * one. V8's words are left out when they quote the text (it may hold a key); undefined when
 * `error` does not say (another engine's words).
 */
export const jsonErrorPlace = (error: unknown, text: string): string | undefined => {
  const words = syntaxErrorWords(error)
  if (words === undefined) return undefined
  const placed = placedError.exec(words)
  const unplaced = placed === null ? unplacedError.exec(words) : null
  if (placed === null && unplaced === null) return undefined
  const offset = placed === null ? endOfJson(text) : Number(placed[2])
  const said = placed === null ? unplaced![1] ?? unplaced![2]! : placed[1]!
  const where = placeIn(text, offset)
  return said.includes("\"") ? where : `${where}: ${said}`
}

/** Where `offset` falls in `text`: `line 3, column 18`, or `column 18` when `text` is one line. */
const placeIn = (text: string, offset: number): string => {
  const before = text.slice(0, offset)
  const column = offset - before.lastIndexOf("\n")
  return text.includes("\n") ? `line ${before.split("\n").length}, column ${column}` : `column ${column}`
}

/** The offset of the quote that ends the JSON string whose opening quote is at `start`. */
const endOfString = (text: string, start: number): number => {
  let at = start + 1
  while (text[at] !== "\"") at += text[at] === "\\" ? 2 : 1
  return at
}

/**
 * Where `text`, which `JSON.parse` reads, gives a key a second time in one object (`JSON.parse`
 * keeps the last, silently: a setting merged by hand loses its first half), and which key:
 * `line 4, column 3: "keys" is given twice in one object (…)`; undefined when no object does.
 */
export const repeatedKeyPlace = (text: string): string | undefined => {
  // The keys met so far of each object enclosing the offset (undefined: an array).
  const open: Array<Set<string> | undefined> = []
  let atKey = false
  for (let at = 0; at < text.length; at++) {
    const char = text[at]
    if (char === "\"") {
      const end = endOfString(text, at)
      const keys = open[open.length - 1]
      if (atKey && keys !== undefined) {
        const key = JSON.parse(text.slice(at, end + 1)) as string
        if (keys.has(key)) {
          const named = mayBeKey(key) ? "a key shaped like an API key (not shown)" : JSON.stringify(key)
          return `${placeIn(text, at)}: ${named} is given twice in one object (JSON keeps only the last)`
        }
        keys.add(key)
      }
      atKey = false
      at = end
    } else if (char === "{" || char === "[") {
      open.push(char === "{" ? new Set() : undefined)
      atKey = char === "{"
    } else if (char === "}" || char === "]") {
      open.pop()
    } else if (char === ",") {
      atKey = open[open.length - 1] !== undefined
    }
  }
  return undefined
}

/** `words` saying `text` is not JSON, followed by where (`jsonErrorPlace`) when it can be told. */
export const notJsonSaying = (words: string, error: unknown, text: string): string => {
  const place = jsonErrorPlace(error, text)
  return place === undefined ? words : `${words} (${place})`
}

/**
 * `text` parsed, or `words` and where it stops being JSON (as `notJsonSaying` puts them), or
 * where it gives a key twice in one object (`repeatedKeyPlace`): a file or setting of the user's.
 */
export const parseJsonSaying = (words: string, text: string): Either.Either<unknown, string> =>
  Either.flatMap(
    Either.try({ try: (): unknown => JSON.parse(text), catch: (error) => notJsonSaying(words, error, text) }),
    (json) => {
      const repeated = repeatedKeyPlace(text)
      return repeated === undefined ? Either.right(json) : Either.left(repeated)
    }
  )

/**
 * How deep read JSON may nest arrays and objects. Far deeper than any request (a tool's JSON
 * schema nests a few levels), far shallower than what makes `JSON.stringify` (sending it, pricing
 * it, hashing it for the cache) overflow the stack: a few thousand.
 */
export const maxJsonDepth = 256

/** Whether parsed JSON nests arrays and objects deeper than `maxJsonDepth`. Walked without recursion. */
export const nestsTooDeep = (json: unknown): boolean => {
  const values: Array<unknown> = [json]
  const depths: Array<number> = [0]
  while (values.length > 0) {
    const value = values.pop()
    const depth = depths.pop()!
    if (typeof value !== "object" || value === null) continue
    if (depth === maxJsonDepth) return true
    for (const child of Array.isArray(value) ? value : Object.values(value)) {
      values.push(child)
      depths.push(depth + 1)
    }
  }
  return false
}

/** `text`, or its first `max` characters and an ellipsis. */
export const clipped = (text: string, max: number): string => text.length <= max ? text : `${text.slice(0, max)}…`

/** How much of a body `quotedBody` shows. */
const quotedLength = 200

/**
 * A body that is not what the API sends, for a message: its content type and first characters (a
 * base URL that reaches a web server answers with a page). `scrub` runs before the cut, on a
 * window as long again (longer than any key), so a key the cut runs through is never half shown.
 */
export const quotedBody = (contentType: string | undefined, text: string, scrub: (text: string) => string): string =>
  `${contentType ?? "no content type"}: ${JSON.stringify(clipped(scrub(text.trim().slice(0, 2 * quotedLength)), quotedLength))}`

/** Runs of 20 or more letters and digits: an API key has one (`sk-…`, `gsk_…`, `AIza…`), a field or model name none with digits in it. */
const longRun = /[A-Za-z0-9]{20,}/g

/** Whether `text` may be a key: it holds a run of 20 or more letters and digits, with both in it. */
export const mayBeKey = (text: string): boolean =>
  (text.match(longRun) ?? []).some((run) => /[0-9]/.test(run) && /[A-Za-z]/.test(run))

/** A word (letters, digits, `_`, `-`) with a long run in it: a key whole, with its prefix (`gsk_`). */
const word = /[A-Za-z0-9_-]*[A-Za-z0-9]{20,}[A-Za-z0-9_-]*/g

/** `text` with every word that may be a key (`mayBeKey`) shown as `***`, whatever its provider's prefix. */
export const hideKeyShapes = (text: string): string => text.replace(word, (found) => mayBeKey(found) ? "***" : found)

/** `count` and the noun that goes with it (`1 line`, `2 lines`). */
export const counted = (count: number, one: string, many: string): string => `${count} ${count === 1 ? one : many}`

/** What an error may carry: Node's system errors have a `code`, and wrappers a `cause`. */
export interface ErrorLike {
  readonly code?: unknown
  readonly message?: unknown
  readonly cause?: unknown
}

/** The error and the causes it wraps (fetch wraps undici's error), outermost first. */
export const causeChain = (error: unknown): ReadonlyArray<ErrorLike> => {
  const chain: Array<ErrorLike> = []
  for (let e = error; typeof e === "object" && e !== null && chain.length < 4; e = (e as ErrorLike).cause) {
    chain.push(e as ErrorLike)
  }
  return chain
}

/** The messages of the error's chain, joined (`fetch failed: connect ECONNREFUSED 127.0.0.1:9`). */
const causeMessages = (error: unknown): string =>
  causeChain(error).map((e) => e.message).filter((m): m is string => typeof m === "string" && m !== "").join(": ") ||
  String(error)

/**
 * Node's codes for a certificate chain this machine does not trust: a self-signed certificate, or
 * one a private CA signed (a TLS-inspecting proxy's, in many companies). Node trusts more CAs only
 * through `NODE_EXTRA_CA_CERTS`, which no retry or message of the server's would suggest.
 */
const untrustedCertificateCodes: ReadonlySet<unknown> = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY"
])

/** Whether the error says the server's certificate is one this machine does not trust: no retry changes that. */
export const isUntrustedCertificate = (error: unknown): boolean =>
  causeChain(error).some((e) => untrustedCertificateCodes.has(e.code))

/** Why a connection failed (`causeMessages`), and how to trust a certificate this machine does not. */
export const connectionFailure = (error: unknown): string =>
  causeMessages(error) + (isUntrustedCertificate(error)
    ? "; to trust a private CA (a TLS-inspecting proxy's, say), give its certificate file in NODE_EXTRA_CA_CERTS"
    : "")
