import { describe, expect, it } from "@effect/vitest"
import * as Arbitrary from "effect/Arbitrary"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as ChatSchema from "../src/ChatSchema.js"
import * as SchemaFastPath from "../src/internal/schemaFastPath.js"

/**
 * The fast path and Schema's own decoder give the same answer: the same value, or a failure. Where
 * Schema's decoder throws, the fast path fails.
 */
const agrees = <A, I>(schema: Schema.Schema<A, I>, options?: { readonly errors: "all" }) => {
  const fast = SchemaFastPath.decodeUnknownEither(schema, options)
  const full = Schema.decodeUnknownEither(schema, options)
  return (input: unknown) => {
    const a = fast(input)
    let b: Either.Either<A, ParseResult.ParseError>
    try {
      b = full(input)
    } catch {
      expect(a._tag).toBe("Left")
      return
    }
    expect(a._tag).toBe(b._tag)
    if (Either.isRight(a) && Either.isRight(b)) expect(a.right).toStrictEqual(b.right)
    if (Either.isLeft(a) && Either.isLeft(b)) expect(a.left.message).toBe(b.left.message)
  }
}

/** A JSON value with one property somewhere in it replaced by `replacement`. */
const mutated = (value: unknown, replacement: unknown, pick: number): unknown => {
  const paths: Array<Array<string | number>> = []
  const walk = (v: unknown, path: Array<string | number>) => {
    paths.push(path)
    if (Array.isArray(v)) v.forEach((item, i) => walk(item, [...path, i]))
    else if (typeof v === "object" && v !== null) for (const [k, item] of Object.entries(v)) walk(item, [...path, k])
  }
  walk(value, [])
  const path = paths[pick % paths.length]!
  if (path.length === 0) return replacement
  const copy = structuredClone(value) as Record<string | number, unknown>
  let target = copy
  for (const step of path.slice(0, -1)) target = target[step] as Record<string | number, unknown>
  target[path[path.length - 1]!] = replacement
  return copy
}

const jsonReplacement = FastCheck.oneof(
  FastCheck.jsonValue({ maxDepth: 2 }),
  FastCheck.constant(undefined),
  FastCheck.constant("insufficient_system_resource")
)

const schemas = {
  ChatCompletion: ChatSchema.ChatCompletion,
  ChatCompletionChunk: ChatSchema.ChatCompletionChunk,
  ChatCompletionRequest: ChatSchema.ChatCompletionRequest
} as const

describe("SchemaFastPath", () => {
  for (const [name, schema] of Object.entries(schemas)) {
    const check = agrees(schema as Schema.Schema<unknown, unknown>)
    const values = Arbitrary.make(schema as Schema.Schema<unknown, unknown>)
      .map((value) => JSON.parse(JSON.stringify(value)) as unknown)

    it(`${name}: decodes what Schema decodes, to an equal value`, () => {
      FastCheck.assert(FastCheck.property(values, check), { numRuns: 300 })
    })

    it(`${name}: fails where Schema fails, with its message`, () => {
      FastCheck.assert(
        FastCheck.property(values, jsonReplacement, FastCheck.nat(), (value, replacement, pick) =>
          check(mutated(value, replacement, pick))),
        { numRuns: 500 }
      )
    })
  }

  it("answers a valid value with the value itself, excess properties kept", () => {
    const completion = {
      id: "c",
      object: "chat.completion",
      created: 1,
      model: "m",
      choices: [{ index: 0, message: { role: "assistant", content: "hi", extra: [1] }, finish_reason: "stop" }],
      usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2, prompt_cache_hit_tokens: 0 },
      service_tier: "new"
    }
    const decoded = SchemaFastPath.decodeUnknownEither(ChatSchema.ChatCompletion)(completion)
    expect(Either.getOrThrow(decoded)).toBe(completion)
  })

  it("sends an object with an own \"__proto__\" key (as `JSON.parse` makes one) to Schema", () => {
    // Found by the property above: the decoder's copy assigns the key, setting the prototype.
    agrees(ChatSchema.ChatCompletionRequest)(
      JSON.parse(`{"model":"","messages":[],"tools":[{"type":"function","function":{"name":"","parameters":{"__proto__":{}}}}]}`)
    )
  })

  it("fails, where Schema's decoder throws, on an object whose toString is not a function", () => {
    // Found by the property above (`{"toString": 0}` for a message's role, which picks the
    // union's member): a client's bad body must be a 400, not a defect.
    const decoded = SchemaFastPath.decodeUnknownEither(ChatSchema.ChatCompletionRequest)(
      JSON.parse(`{"model":"","messages":[{"role":{"toString":0},"content":[]}]}`)
    )
    expect(Either.isLeft(decoded) && decoded.left.message).toContain("a value the decoder cannot read")
  })

  it("compiles its decoder at its first input, once: a module that declares one pays nothing as it loads", () => {
    let compiled = 0
    const counted = Schema.declare([Schema.String], {
      decode: (item) => {
        compiled++
        return (input, options) => ParseResult.decodeUnknown(item)(input, options)
      },
      encode: (item) => (input, options) => ParseResult.encodeUnknown(item)(input, options)
    })
    const decode = SchemaFastPath.decodeUnknownEither(counted)
    expect(compiled).toBe(0)
    expect(decode("a")).toStrictEqual(Either.right("a"))
    expect(Either.isLeft(decode(1))).toBe(true)
    expect(compiled).toBe(1)
  })

  it("sends a struct that drops excess properties, a transformation or a refinement's failure to Schema", () => {
    const closed = Schema.Struct({ a: Schema.Number })
    const positive = Schema.Struct({ n: Schema.Int.pipe(Schema.positive()) })
    const transformed = Schema.Struct({ n: Schema.NumberFromString })
    expect(SchemaFastPath.decodeUnknownEither(closed)({ a: 1, b: 2 })).toStrictEqual(Either.right({ a: 1 }))
    expect(Either.isLeft(SchemaFastPath.decodeUnknownEither(positive)({ n: 0 }))).toBe(true)
    expect(Either.isLeft(SchemaFastPath.decodeUnknownEither(positive)({ n: 1.5 }))).toBe(true)
    expect(SchemaFastPath.decodeUnknownEither(transformed)({ n: "2" })).toStrictEqual(Either.right({ n: 2 }))
  })
})
