import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import { jsonErrorPlace, repeatedKeyPlace } from "../src/internal/text.js"

/** Where `JSON.parse` refuses `text`, as `jsonErrorPlace` says it. */
const placeOf = (text: string): string | undefined => {
  try {
    JSON.parse(text)
  } catch (error) {
    return jsonErrorPlace(error, text)
  }
  throw new Error(`${text} is JSON`)
}

/** JSON with no escapes in it (strings of letters and digits), so every character of its text is one of the value's. */
const plainJson = FastCheck.jsonValue({ maxDepth: 3 }).map((value) =>
  JSON.stringify(value, (_, inner: unknown) => typeof inner === "string" ? inner.replace(/[^A-Za-z0-9 ]/g, "x") : inner)
)

/** The column `placeOf` names, from its `column N` (one-line text). */
const columnOf = (place: string | undefined): number => Number(/^column (\d+)/.exec(place ?? "")?.[1])

describe("jsonErrorPlace", () => {
  it("names the column where a line stops being JSON, and what V8 says it met there", () => {
    expect(placeOf(`{"a":1,}`)).toBe("column 8: Expected double-quoted property name")
    expect(placeOf(`{custom_id: "a"}`)).toBe("column 2: Expected property name or '}'")
    expect(placeOf(`{"a":1 "b":2}`)).toBe("column 8: Expected ',' or '}' after property value")
  })

  it("finds the place itself where V8 names only the character it met (a trailing comma in an array, Python's None)", () => {
    expect(placeOf(`{"messages":[{"role":"user","content":"hi"},]}`)).toBe("column 45: Unexpected token ']'")
    expect(placeOf(`{"a":None}`)).toBe("column 6: Unexpected token 'N'")
    const long = `{"content":"${"x".repeat(500)}","seed":tru}`
    expect(placeOf(long)).toBe(`column ${long.indexOf("tru}") + 4}: Unexpected token '}'`)
  })

  it("says a cut line ends before its JSON does, at its end", () => {
    expect(placeOf(`{"a":[1,2`)).toBe("column 10: Expected ',' or ']' after array element")
    expect(placeOf(`{"a":"unfinished`)).toBe("column 17: Unterminated string")
    expect(placeOf(`{"a":[`)).toBe("column 7: Unexpected end of JSON input")
  })

  it("names the line too in text of several lines", () => {
    expect(placeOf(`{\n  "accounts": [\n    {"name": "a",}\n  ]\n}`)).toBe("line 3, column 18: Expected double-quoted property name")
    expect(placeOf(`{"accounts": []}\n{}`)).toBe("line 2, column 1: Unexpected non-whitespace character after JSON")
    expect(placeOf(`{\n"keys": [sk-misplaced-dddd]}`)).toBe("line 2, column 10: Unexpected token 's'")
  })

  it("never quotes the text: V8's words that quote it are left out", () => {
    const place = placeOf(`{"keys": [sk-misplaced-0123456789abcdef]}`)
    expect(place).toBe("column 11: Unexpected token 's'")
    expect(jsonErrorPlace(new SyntaxError(`Unexpected string "sk-secret" in JSON at position 3`), `{"a" "sk-secret"}`)).toBe("column 4")
  })

  it("says nothing of a place it cannot find (another engine's words, not a SyntaxError)", () => {
    expect(jsonErrorPlace(new SyntaxError("JSON.parse: bad"), `{"a":x}`)).toBeUndefined()
    expect(jsonErrorPlace("oops", `{"a":x}`)).toBeUndefined()
  })

  it.prop("a character no JSON holds, put anywhere in JSON, is found where it was put", { text: plainJson, at: FastCheck.nat() }, ({ at, text }) => {
    const offset = at % (text.length + 1)
    expect(columnOf(placeOf(`${text.slice(0, offset)}\u0001${text.slice(offset)}`))).toBe(offset + 1)
  })

  it.prop("JSON cut short stops being JSON where it was cut", { text: plainJson, at: FastCheck.nat() }, ({ at, text }) => {
    const cut = text.slice(0, at % text.length)
    let refused = true
    try {
      JSON.parse(cut)
      refused = false
    } catch {
      // refused, as most cuts are
    }
    if (refused) expect(columnOf(placeOf(cut))).toBe(cut.length + 1)
  })
})

describe("repeatedKeyPlace", () => {
  it("says where an object gives a key a second time, which JSON.parse would drop silently for the last", () => {
    expect(repeatedKeyPlace(`{"a":1,"b":2,"a":3}`)).toBe(`column 14: "a" is given twice in one object (JSON keeps only the last)`)
    expect(repeatedKeyPlace(`{\n  "x": {"keys": [1],\n    "keys": [2]}\n}`)).toBe(
      `line 3, column 5: "keys" is given twice in one object (JSON keeps only the last)`
    )
    // The same key however it is escaped; one in each of two objects is no repeat.
    expect(repeatedKeyPlace(`{"a":1,"\\u0061":2}`)).toBe(`column 8: "a" is given twice in one object (JSON keeps only the last)`)
    expect(repeatedKeyPlace(`[{"a":1},{"a":2}]`)).toBeUndefined()
    expect(repeatedKeyPlace(`{"a":{"a":{"a":1}}}`)).toBeUndefined()
    // Braces, quotes and commas inside strings are text.
    expect(repeatedKeyPlace(`{"s":"{\\"a\\":1,\\"a\\":2}","t":["a","a"]}`)).toBeUndefined()
    // A key shaped like an API key is not quoted: messages may be logged.
    expect(repeatedKeyPlace(`{"sk-0123456789abcdef0123456789":1,"sk-0123456789abcdef0123456789":2}`)).toBe(
      "column 36: a key shaped like an API key (not shown) is given twice in one object (JSON keeps only the last)"
    )
  })

  it("finds none in any JSON that JSON.stringify writes, and the one added to an object of it", () =>
    FastCheck.assert(
      FastCheck.property(
        FastCheck.dictionary(FastCheck.string(), FastCheck.jsonValue({ maxDepth: 3 }), { minKeys: 1 }),
        FastCheck.boolean(),
        (object, indented) => {
          const text = JSON.stringify(object, null, indented ? 2 : undefined)
          expect(repeatedKeyPlace(text)).toBeUndefined()
          const [key] = Object.keys(object)
          const repeated = `${text.slice(0, -1)},${JSON.stringify(key)}:null}`
          expect(repeatedKeyPlace(repeated)).toMatch(/is given twice in one object/)
        }
      )
    ))
})
