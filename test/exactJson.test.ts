import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import * as ExactJson from "../src/internal/exactJson.js"
import { parseInputLine } from "../src/internal/batchLines.js"
import { canonicalJson } from "../src/internal/responseCache.js"

/** JSON as a client writes it: integers of any size (bigints), doubles, strings (digit runs in them too). */
type Written = bigint | number | string | boolean | null | ReadonlyArray<Written> | { readonly [key: string]: Written }

const written = FastCheck.letrec<{ written: Written }>((tie) => ({
  written: FastCheck.oneof(
    { depthSize: "small" },
    FastCheck.bigInt({ min: -(10n ** 25n), max: 10n ** 25n }),
    FastCheck.double({ noNaN: true, noDefaultInfinity: true }),
    FastCheck.oneof(FastCheck.string(), FastCheck.stringMatching(/^[0-9]{14,22}$/), FastCheck.constant("__proto__")),
    FastCheck.boolean(),
    FastCheck.constant(null),
    FastCheck.array(tie("written"), { maxLength: 4 }),
    FastCheck.uniqueArray(FastCheck.tuple(FastCheck.oneof(FastCheck.string(), FastCheck.constant("__proto__")), tie("written")), {
      maxLength: 4,
      selector: ([key]) => key
    }).map((entries) => Object.fromEntries(entries))
  )
})).written

/** `value` as JSON text, each bigint in its digits and `__proto__` kept as a key. */
const write = (value: Written): string =>
  typeof value === "bigint"
    ? value.toString()
    : Array.isArray(value)
    ? `[${value.map(write).join(",")}]`
    : typeof value === "object" && value !== null
    ? `{${Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}:${write(item)}`).join(",")}}`
    : JSON.stringify(value)

/** `read` with each `ExactInteger` as the double `JSON.parse` makes of it. */
const asDoubles = (read: unknown): unknown =>
  read instanceof ExactJson.ExactInteger
    ? Number(read.digits)
    : Array.isArray(read)
    ? read.map(asDoubles)
    : typeof read === "object" && read !== null
    ? Object.fromEntries(Object.entries(read).map(([key, item]) => [key, asDoubles(item)]))
    : read

describe("ExactJson", () => {
  it("writes back every integer as it was written, and reads the rest as JSON.parse does (property)", () => {
    FastCheck.assert(
      FastCheck.property(written, (value) => {
        const text = write(value)
        const read = ExactJson.parse(text)
        expect(ExactJson.stringify(read)).toBe(text)
        expect(asDoubles(read)).toStrictEqual(JSON.parse(text))
      }),
      { numRuns: 1000 }
    )
  })

  it("keeps as numbers the integers a double holds, and leaves digits in strings, fractions and exponents alone", () => {
    const read = ExactJson.parse(
      `{"safe":9007199254740992,"round":10000000000000000000,"lossy":9007199254740993,"text":"9007199254740993",` +
        `"fraction":1.9007199254740993,"exponent":1e-9007199254740993,"escaped":"\\\\" ,"after":-12345678901234567891}`
    )
    expect(read).toStrictEqual({
      safe: 9007199254740992,
      round: 10000000000000000000,
      lossy: new ExactJson.ExactInteger("9007199254740993"),
      text: "9007199254740993",
      fraction: 1.9007199254740993,
      exponent: 0,
      escaped: "\\",
      after: new ExactJson.ExactInteger("-12345678901234567891")
    })
  })

  it("a client's string shaped like the stand-in of an exact integer stays a string", () => {
    const text = `{"seed":12345678901234567891,"content":"\\u0000weatherproof-exact-integer:42"}`
    const read = ExactJson.parse(text)
    expect(read).toStrictEqual({ seed: new ExactJson.ExactInteger("12345678901234567891"), content: "\u0000weatherproof-exact-integer:42" })
    expect(ExactJson.stringify(read)).toBe(text)
  })

  it("throws on text that is not JSON, as JSON.parse does", () => {
    expect(() => ExactJson.parse("{\"seed\": 12345678901234567891")).toThrow(SyntaxError)
  })

  it("a batch line keeps its exact integers; one in a field the request schema reads as a number is refused, quoted", () => {
    const line = (body: string) => ({ lineNumber: 1, text: `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":${body}}` })
    const kept = parseInputLine(line(`{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":12345678901234567891}`))
    expect(kept).toMatchObject({ _tag: "Request", body: { seed: new ExactJson.ExactInteger("12345678901234567891") } })
    const refused = parseInputLine(line(`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":12345678901234567891}`))
    expect(refused).toMatchObject({ _tag: "Invalid" })
    expect(refused._tag === "Invalid" && refused.message).toBe(
      "invalid batch request: body.max_tokens: Expected number, actual 12345678901234567891 (an integer beyond 2^53, kept as written rather than rounded)"
    )
  })

  it("a cache key reads an exact integer as its digits: two seeds one double holds are two keys", () => {
    const key = (seed: string) => canonicalJson(ExactJson.parse(`{"seed":${seed}}`))
    expect(key("12345678901234567891")).toBe(`{"seed":12345678901234567891}`)
    expect(key("12345678901234567891")).not.toBe(key("12345678901234567892"))
  })
})
