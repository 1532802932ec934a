import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import * as Schema from "effect/Schema"
import { ChatCompletionRequest } from "../src/ChatSchema.js"
import * as SchemaIssues from "../src/internal/schemaIssues.js"

const issuesOf = <A, I>(schema: Schema.Schema<A, I>, value: unknown, root?: string) =>
  Either.match(Schema.decodeUnknownEither(schema, { errors: "all" })(value), {
    onLeft: (error) => SchemaIssues.describeIssues(error, root),
    onRight: () => []
  })

const request = (body: Record<string, unknown>) => ({ model: "deepseek-chat", messages: [{ role: "user", content: "hi" }], ...body })

describe("SchemaIssues", () => {
  it("names each place as code would, brackets for indices and keys that are not identifiers", () => {
    expect(SchemaIssues.formatPath([])).toBe("(root)")
    expect(SchemaIssues.formatPath([], "line")).toBe("line")
    expect(SchemaIssues.formatPath(["body", "messages", 0, "content"])).toBe("body.messages[0].content")
    expect(SchemaIssues.formatPath(["models", "deepseek-v4-pro", "output"])).toBe(`models["deepseek-v4-pro"].output`)
    expect(SchemaIssues.formatPath(["meta-llama/Llama-3.1-70B-Instruct", "queueDelayFloorMillis"]))
      .toBe(`["meta-llama/Llama-3.1-70B-Instruct"].queueDelayFloorMillis`)
  })

  it("never shows a name shaped like a key (one pasted where a field's name goes)", () => {
    for (const key of ["sk-0f3a9c2b7d4e4b1a8c6d2e9f0a1b3c5d", "gsk_Zq81LmN0pQ7rS2tU4vW6xY8zA1bC3dE5", "AIzaSyD-1234567890abcdefghijklmnopqrs"]) {
      expect(SchemaIssues.formatPath(["accounts", 0, key])).toBe("accounts[0][(a name shaped like a key, not shown)]")
    }
  })

  it("says what a chat request lacks in a line, never the whole schema's type", () => {
    expect(issuesOf(ChatCompletionRequest, { model: "m" })).toEqual(["messages: is missing"])
    expect(issuesOf(ChatCompletionRequest, request({ messages: "hi" })))
      .toEqual([`messages: Expected ReadonlyArray<Message>, actual "hi"`])
    expect(issuesOf(ChatCompletionRequest, request({ messages: [{ role: "robot", content: "x" }] })))
      .toEqual([`messages[0].role: Expected "system" | "developer" | "user" | "assistant" | "tool" | "function", actual "robot"`])
    expect(issuesOf(ChatCompletionRequest, request({ tools: [{ type: "function" }] })))
      .toEqual(["tools[0].function: is missing"])
  })

  it("names the first place at fault, as an OpenAI error's param: past the null an optional field allows, none at the root", () => {
    const placeOf = (value: unknown) =>
      Either.match(Schema.decodeUnknownEither(ChatCompletionRequest, { errors: "all" })(value), {
        onLeft: SchemaIssues.firstPlace,
        onRight: () => "decoded"
      })
    expect(placeOf(request({ stream_options: { include_usage: "yes" } }))).toBe("stream_options.include_usage")
    expect(placeOf(request({ messages: [{ role: "user", content: "x" }, { role: "tool", content: "y" }] }))).toBe("messages[1].tool_call_id")
    expect(placeOf("hello")).toBeUndefined()
  })

  it("reads a union's alternatives as one complaint, without the undefined or null an optional field allows", () => {
    expect(issuesOf(ChatCompletionRequest, request({ messages: [{ role: "user", content: 5 }] })))
      .toEqual(["messages[0].content: Expected string | ReadonlyArray<ContentPart>, actual 5"])
    expect(issuesOf(ChatCompletionRequest, request({ max_tokens: null }))).toEqual([])
    expect(issuesOf(ChatCompletionRequest, request({ max_tokens: -1 })))
      .toEqual(["max_tokens: Expected a positive number, actual -1"])
    expect(issuesOf(ChatCompletionRequest, request({ stop: 3, temperature: "hot" }))).toEqual([
      "temperature: Expected number, actual \"hot\"",
      "stop: Expected string | ReadonlyArray<string>, actual 3"
    ])
  })

  it("keeps complaints apart when they are not alternatives for one value", () => {
    const Pair = Schema.Struct({ a: Schema.String, b: Schema.Number })
    expect(issuesOf(Pair, {}, "line")).toEqual(["a: is missing", "b: is missing"])
    expect(issuesOf(Pair, 1, "line")).toEqual(["line: Expected { readonly a: string; readonly b: number }, actual 1"])
  })

  it("describes the first 50 issues of a body with thousands", () => {
    const issues = issuesOf(ChatCompletionRequest, request({ messages: Array.from({ length: 20_000 }, () => ({ role: "user" })) }))
    expect(issues).toHaveLength(50)
    expect(issues[49]).toBe("messages[49].content: is missing")
  })

  it("formats only the issues it describes: a body of 100,000 bad items formats 50, not all of them", () => {
    let formatted = 0
    // Each bad item is shown in its issue's message, through its toString.
    const item = { toString: () => `item ${++formatted}` }
    const issues = issuesOf(Schema.Array(Schema.String), Array.from({ length: 100_000 }, () => item))
    expect(issues).toHaveLength(50)
    expect(issues[0]).toBe("[0]: Expected string, actual item 1")
    expect(formatted).toBe(50)
  })

  it("names a JSON value's kind", () => {
    expect([{}, [], null, "x", 1, true].map(SchemaIssues.jsonKind))
      .toEqual(["an object", "an array", "null", "a string", "a number", "a boolean"])
  })
})
