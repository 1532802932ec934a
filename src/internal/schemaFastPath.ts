/**
 * Schema decoding with a fast path for the values a hot path meets: a guard compiled once from
 * the schema's AST answers whether decoding `input` would succeed and give back a value equal to
 * it (no transformation on the way, no property it would drop); when it does, `input` itself is
 * the result. Anything else (a failure, a transformation, a node the guard does not model) goes
 * through `Schema.decodeUnknownEither`, which stays the single source of truth and of every error
 * message.
 *
 * The answer to a completion or a batch line is data `JSON.parse` just made, read once: Schema's
 * decoder rebuilds it property by property (some 10 µs and 20 KB per completion), which on a fast
 * upstream costs more than the rest of the policy.
 *
 * @internal
 */
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as AST from "effect/SchemaAST"
import { madeAtFirstCall } from "./firstCall.js"

/** Whether `input` decodes to itself. `false` says nothing: the full decoder decides then. */
type Guard = (input: unknown) => boolean

const never: Guard = () => false
const always: Guard = () => true

const guards = new WeakMap<AST.AST, Guard>()

const guardOf = (ast: AST.AST): Guard => {
  let guard = guards.get(ast)
  if (guard === undefined) {
    // Set before compiling, so a recursive schema (`Suspend`) finds its guard in the making.
    let compiled: Guard = never
    guards.set(ast, (input) => compiled(input))
    compiled = compile(ast)
    guards.set(ast, guard = compiled)
  }
  return guard
}

const compile = (ast: AST.AST): Guard => {
  switch (ast._tag) {
    case "StringKeyword":
      return (input) => typeof input === "string"
    case "NumberKeyword":
      return (input) => typeof input === "number"
    case "BooleanKeyword":
      return (input) => typeof input === "boolean"
    case "UndefinedKeyword":
      return (input) => input === undefined
    case "UnknownKeyword":
    case "AnyKeyword":
      return always
    case "Literal": {
      const literal = ast.literal
      return (input) => input === literal
    }
    case "Union":
      return unionGuard(ast.types.map(guardOf))
    case "TupleType":
      return arrayGuard(ast)
    case "TypeLiteral":
      return typeLiteralGuard(ast)
    case "Refinement":
      return refinementGuard(ast)
    case "Suspend": {
      let target: Guard | undefined
      return (input) => (target ??= guardOf(ast.f()))(input)
    }
    default:
      // Transformations and the rest: the full decoder.
      return never
  }
}

const unionGuard = (members: ReadonlyArray<Guard>): Guard => (input) => {
  for (const member of members) if (member(input)) return true
  return false
}

/** `Schema.Array`: no fixed elements, one rest type. */
const arrayGuard = (ast: AST.TupleType): Guard => {
  if (ast.elements.length > 0 || ast.rest.length !== 1) return never
  const item = guardOf(ast.rest[0]!.type)
  return (input) => {
    if (!Array.isArray(input)) return false
    for (let i = 0; i < input.length; i++) if (!item(input[i])) return false
    return true
  }
}

const refinementGuard = (ast: AST.Refinement): Guard => {
  const from = guardOf(ast.from)
  return (input) => from(input) && Option.isNone(ast.filter(input, {}, ast))
}

/**
 * A struct whose own annotation preserves excess properties (`ChatSchema`'s open structs) keeps
 * them all; any other drops them, so an excess property sends the input to the full decoder. A
 * required property that is missing does too (the decoder's answer depends on its options).
 */
const typeLiteralGuard = (ast: AST.TypeLiteral): Guard => {
  const { indexSignatures, propertySignatures } = ast
  if (propertySignatures.some((ps) => typeof ps.name !== "string")) return never
  if (indexSignatures.length > 0 && propertySignatures.length > 0) return never
  const preserves = Option.exists(AST.getParseOptionsAnnotation(ast), (options) => options.onExcessProperty === "preserve")
  const names = propertySignatures.map((ps) => ps.name as string)
  const optional = propertySignatures.map((ps) => ps.isOptional)
  const types = propertySignatures.map((ps) => guardOf(ps.type))
  const known = new Set(names)
  const index = indexGuard(indexSignatures)
  const keepsAnyExcess = preserves && index === undefined
  return (input) => {
    if (typeof input !== "object" || input === null || Array.isArray(input)) return false
    const record = input as Record<string, unknown>
    // `JSON.parse` makes `"__proto__"` an own key; the decoder's copy assigns it, which sets the
    // copy's prototype instead: not the same value.
    if (hasOwn.call(record, "__proto__")) return false
    for (let i = 0; i < names.length; i++) {
      const name = names[i]!
      if (!hasOwn.call(record, name)) {
        if (optional[i]) continue
        return false
      }
      if (!types[i]!(record[name])) return false
    }
    if (keepsAnyExcess) return true
    for (const key of Object.keys(record)) {
      if (known.has(key)) continue
      if (index !== undefined ? !index(record[key]) : !preserves) return false
    }
    return true
  }
}

const hasOwn = Object.prototype.hasOwnProperty

/** `Schema.Record({ key: Schema.String, value })`: the value's guard; other keys are the decoder's. */
const indexGuard = (signatures: ReadonlyArray<AST.IndexSignature>): Guard | undefined => {
  if (signatures.length === 0) return undefined
  const [signature] = signatures
  return signatures.length === 1 && signature!.parameter._tag === "StringKeyword" ? guardOf(signature!.type) : never
}

/**
 * `Schema.decodeUnknownEither(schema, options)`, answering with the input itself when the
 * compiled guard proves it decodes to an equal value. An input the decoder throws on (it formats
 * some values with `String`, which throws for an object whose `toString` is not a function, such
 * as `{"toString": 0}` from JSON) is a failure too: bad input is never a defect.
 */
export const decodeUnknownEither = <A, I>(
  schema: Schema.Schema<A, I, never>,
  options?: AST.ParseOptions
): Decoder<A> =>
  // Compiled at the first input: modules declare theirs as they load, and a start-up would
  // otherwise compile decoders it may never use (a batch of plain lines reads no stream chunk).
  madeAtFirstCall(() => compileDecoder(schema, options))

type Decoder<A> = (input: unknown) => Either.Either<A, ParseResult.ParseError>

const compileDecoder = <A, I>(schema: Schema.Schema<A, I, never>, options: AST.ParseOptions | undefined): Decoder<A> => {
  const decode = Schema.decodeUnknownEither(schema, options)
  const guard = guardOf(schema.ast)
  const undecodable = (defect: unknown) =>
    new ParseResult.ParseError({
      issue: new ParseResult.Type(schema.ast, null, `a value the decoder cannot read: ${String(defect)}`)
    })
  return (input) => {
    if (guard(input)) return Either.right(input as A)
    try {
      return decode(input)
    } catch (defect) {
      return Either.left(undecodable(defect))
    }
  }
}
