/**
 * A schema's complaint in words a user reads, the same wherever one is met (a batch line, a gateway
 * request, an accounts or pricing file, an upstream answer): one `place: message` per place, as
 * `messages[0].content: Expected string | ReadonlyArray<ContentPart>, actual 5`.
 */
import * as ParseResult from "effect/ParseResult"
import { mayBeKey } from "./text.js"

const identifier = /^[A-Za-z_$][A-Za-z0-9_$]*$/

/**
 * `accounts[1].keys[0]`, `models["deepseek-v4-flash"]`; `root` names the value itself. A name that
 * may be a key (`mayBeKey`: one pasted where a field's name goes) is not shown.
 */
export const formatPath = (path: ReadonlyArray<PropertyKey>, root = "(root)"): string =>
  path.length === 0 ? root : path.map((segment, i) =>
    typeof segment === "number"
      ? `[${segment}]`
      : typeof segment === "string" && mayBeKey(segment)
      ? "[(a name shaped like a key, not shown)]"
      : typeof segment === "string" && identifier.test(segment)
      ? `${i === 0 ? "" : "."}${segment}`
      : `[${JSON.stringify(String(segment))}]`
  ).join("")

/** A JSON value's kind, in words: "an object", "an array", "null", "a string"… */
export const jsonKind = (value: unknown): string =>
  Array.isArray(value) ? "an array" : value === null ? "null" : typeof value === "object" ? "an object" : `a ${typeof value}`

const expectation = /^Expected (.+), actual (.+)$/s

/** The alternatives an optional (or nullable) field allows: noise beside the complaint about the value it holds. */
const optionalAlternative = /^Expected (undefined|null), actual /

/** `inner` is `outer` or a place inside it. */
const within = (inner: string, outer: string): boolean =>
  inner === outer || (inner.startsWith(outer) && (inner[outer.length] === "." || inner[outer.length] === "["))

/**
 * One place's complaints. A union reports each alternative ("Expected string, actual 5", "Expected
 * ReadonlyArray<ContentPart>, actual 5"): they read as one, "Expected string |
 * ReadonlyArray<ContentPart>, actual 5".
 */
const mergeAlternatives = (messages: ReadonlyArray<string>): ReadonlyArray<string> => {
  const parsed = messages.map((message) => expectation.exec(message))
  const actual = parsed[0]?.[2]
  if (messages.length < 2 || parsed.some((match) => match === null || match[2] !== actual)) return messages
  return [`Expected ${[...new Set(parsed.map((match) => match![1]!))].join(" | ")}, actual ${actual}`]
}

/** The most issues described: a message is read by a person, and a body with thousands of bad items is not echoed whole. */
const maxIssues = 50

/**
 * `issue` with at most `budget` of its leaves (each a formatted issue), and how many it kept. The
 * formatter formats every leaf before any is dropped: a gateway body of 700,000 bad messages took
 * it six seconds, the event loop stalled for every client meanwhile.
 */
const pruned = (issue: ParseResult.ParseIssue, budget: number): readonly [ParseResult.ParseIssue, number] => {
  switch (issue._tag) {
    case "Composite": {
      const children = Array.isArray(issue.issues) ? issue.issues : [issue.issues]
      const kept: Array<ParseResult.ParseIssue> = []
      let used = 0
      for (const child of children) {
        if (used >= budget) break
        const [inner, leaves] = pruned(child, budget - used)
        kept.push(inner)
        used += leaves
      }
      return [new ParseResult.Composite(issue.ast, issue.actual, kept as [ParseResult.ParseIssue], issue.output), used]
    }
    case "Pointer":
    case "Refinement":
    case "Transformation": {
      const [inner, used] = pruned(issue.issue, budget)
      const rebuilt = issue._tag === "Pointer"
        ? new ParseResult.Pointer(issue.path, issue.actual, inner)
        : issue._tag === "Refinement"
        ? new ParseResult.Refinement(issue.ast, issue.actual, issue.kind, inner)
        : new ParseResult.Transformation(issue.ast, issue.actual, issue.kind, inner)
      return [rebuilt, used]
    }
    default:
      return [issue, 1]
  }
}

/**
 * Effect's first `maxIssues` issues of `error`. Formatting one shows its value, which a hostile one
 * (`constructor.name` whose `toString` is no function) makes throw: then one issue at the root says only that.
 */
const formattedIssues = (error: ParseResult.ParseError): ReadonlyArray<ParseResult.ArrayFormatterIssue> => {
  try {
    return ParseResult.ArrayFormatter.formatIssueSync(pruned(error.issue, maxIssues)[0])
  } catch {
    return [{ _tag: "Type", path: [], message: "does not match the expected shape (its value cannot be shown)" }]
  }
}

/** The first issues of `error` by place, the places in the order the schema met them. */
const issuesByPlace = (error: ParseResult.ParseError, root?: string): ReadonlyMap<string, ReadonlyArray<string>> => {
  const all = formattedIssues(error).slice(0, maxIssues).map((issue) => ({
    place: formatPath(issue.path, root),
    message: issue.message
  }))
  const byPlace = new Map<string, Array<string>>()
  all.forEach((issue, i) => {
    const noise = optionalAlternative.test(issue.message) &&
      all.some((other, j) => j !== i && within(other.place, issue.place) && !optionalAlternative.test(other.message))
    if (noise) return
    const messages = byPlace.get(issue.place)
    if (messages === undefined) byPlace.set(issue.place, [issue.message])
    else messages.push(issue.message)
  })
  return byPlace
}

/** The first issues of `error`, `place: message`, the places in the order the schema met them. */
export const describeIssues = (error: ParseResult.ParseError, root?: string): ReadonlyArray<string> =>
  [...issuesByPlace(error, root)].flatMap(([place, messages]) => mergeAlternatives(messages).map((message) => `${place}: ${message}`))

/**
 * Where `error`'s first issue is (`messages[0].content`), as an OpenAI error's `param` names the
 * field at fault; none when it is the value itself.
 */
export const firstPlace = (error: ParseResult.ParseError): string | undefined => {
  const [place] = issuesByPlace(error, "").keys()
  return place === "" ? undefined : place
}
