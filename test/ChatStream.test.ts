import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import { StreamTruncated } from "../src/ApiError.js"
import type { ChatCompletion, ChatCompletionChunk, Usage } from "../src/ChatSchema.js"
import * as ChatStream from "../src/ChatStream.js"
import * as wire from "../src/internal/wire.js"

const usage = wire.usage({ promptTokens: 12, completionTokens: 9, cacheHitTokens: 4, reasoningTokens: 3 })

const chunk = (
  choices: ChatCompletionChunk["choices"],
  extra: { readonly usage?: Usage | null; readonly system_fingerprint?: string } = {}
): ChatCompletionChunk => ({
  id: "chatcmpl-1",
  object: "chat.completion.chunk",
  created: 1_700_000_000,
  model: "deepseek-v4-flash",
  choices,
  ...extra
})

const delta = (d: ChatCompletionChunk["choices"][number]["delta"], finish_reason: ChatCompletionChunk["choices"][number]["finish_reason"] = null) =>
  [{ index: 0, delta: d, finish_reason }]

describe("ChatStream.fold", () => {
  it.effect("assembles tool calls whose id, name and arguments arrive in pieces, content stays null", () =>
    Effect.gen(function*() {
      const chunks = [
        chunk(delta({ role: "assistant", content: null })),
        chunk(delta({ tool_calls: [{ index: 0, id: "call_a", type: "function", function: { name: "get_weather", arguments: "" } }] })),
        chunk(delta({ tool_calls: [{ index: 0, function: { arguments: "{\"city\":" } }] })),
        // A second call starts before the first one's arguments end.
        chunk(delta({ tool_calls: [{ index: 1, id: "call_b", type: "function", function: { name: "get_time", arguments: "{}" } }] })),
        chunk(delta({ tool_calls: [{ index: 0, function: { arguments: "\"Paris\"}" } }] })),
        chunk(delta({}, "tool_calls")),
        chunk([], { usage })
      ]
      const completion = yield* ChatStream.fold(Stream.fromIterable(chunks))
      expect(completion).toEqual({
        id: "chatcmpl-1",
        object: "chat.completion",
        created: 1_700_000_000,
        model: "deepseek-v4-flash",
        choices: [{
          index: 0,
          message: {
            role: "assistant",
            content: null,
            tool_calls: [
              { id: "call_a", type: "function", function: { name: "get_weather", arguments: "{\"city\":\"Paris\"}" } },
              { id: "call_b", type: "function", function: { name: "get_time", arguments: "{}" } }
            ]
          },
          finish_reason: "tool_calls"
        }],
        usage
      })
    }))

  it.effect("joins reasoning then content, with the usage of the last content chunk", () =>
    Effect.gen(function*() {
      const chunks = [
        chunk(delta({ role: "assistant", content: "", reasoning_content: "" })),
        chunk(delta({ reasoning_content: "Two and " })),
        chunk(delta({ reasoning_content: "two." })),
        chunk(delta({ content: "4" })),
        // DeepSeek may put the usage on the last content chunk, and send no `choices: []` one.
        chunk(delta({ content: "." }, "stop"), { usage, system_fingerprint: "fp_1" })
      ]
      const completion = yield* ChatStream.fold(Stream.fromIterable(chunks))
      expect(completion.choices).toEqual([
        { index: 0, message: { role: "assistant", content: "4.", reasoning_content: "Two and two." }, finish_reason: "stop" }
      ])
      expect(completion.usage).toEqual(usage)
      expect(completion.system_fingerprint).toBe("fp_1")
    }))

  it.effect("joins OpenAI's refusal pieces into the message's refusal, content staying null", () =>
    Effect.gen(function*() {
      const completion = yield* ChatStream.fold(Stream.fromIterable([
        chunk(delta({ role: "assistant", content: null, refusal: "" })),
        chunk(delta({ refusal: "I'm sorry, " })),
        chunk(delta({ refusal: "I can't help with that." }, "stop"))
      ]))
      expect(completion.choices[0]?.message).toEqual({ role: "assistant", content: null, refusal: "I'm sorry, I can't help with that." })
    }))

  it.effect("joins each chunk's logprobs into the choice's, their token lists in order", () =>
    Effect.gen(function*() {
      const token = (text: string, logprob: number) => ({ token: text, logprob, bytes: [...Buffer.from(text)], top_logprobs: [] })
      const completion = yield* ChatStream.fold(Stream.fromIterable([
        chunk([{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null }]),
        chunk([{ index: 0, delta: { content: "He" }, logprobs: { content: [token("He", -0.5)], refusal: null } }]),
        chunk([{ index: 0, delta: { content: "llo!" }, logprobs: { content: [token("llo", -0.25), token("!", -1)], refusal: null } }]),
        chunk([{ index: 0, delta: {}, finish_reason: "stop", logprobs: null }])
      ]))
      expect(completion.choices[0]?.logprobs).toEqual({
        content: [token("He", -0.5), token("llo", -0.25), token("!", -1)],
        refusal: null
      })
      expect(completion.choices[0]?.message.content).toBe("Hello!")
    }))

  it.effect("a choice whose chunks sent only null logprobs has null ones, as a non-streaming answer does; none sent, none", () =>
    Effect.gen(function*() {
      const completion = yield* ChatStream.fold(Stream.fromIterable([
        chunk([{ index: 0, delta: { content: "a" }, logprobs: null }, { index: 1, delta: { content: "b" } }]),
        chunk([{ index: 0, delta: {}, finish_reason: "stop", logprobs: null }, { index: 1, delta: {}, finish_reason: "stop" }])
      ]))
      expect(completion.choices[0]).toEqual({ index: 0, message: { role: "assistant", content: "a" }, finish_reason: "stop", logprobs: null })
      expect(completion.choices[1]).toEqual({ index: 1, message: { role: "assistant", content: "b" }, finish_reason: "stop" })
    }))

  it.effect("a null usage on a later chunk does not erase the usage already received", () =>
    Effect.gen(function*() {
      const completion = yield* ChatStream.fold(
        Stream.fromIterable([chunk(delta({ content: "a" }), { usage }), chunk(delta({}, "stop"), { usage: null })])
      )
      expect(completion.usage).toEqual(usage)
    }))

  it.effect("a later piece of a tool call with an empty id or name keeps the ones that came first", () =>
    Effect.gen(function*() {
      const completion = yield* ChatStream.fold(Stream.fromIterable([
        chunk(delta({ tool_calls: [{ index: 0, id: "call_a", type: "function", function: { name: "get_weather", arguments: "" } }] })),
        chunk(delta({ tool_calls: [{ index: 0, id: "", type: "function", function: { name: "", arguments: "{}" } }] }))
      ]))
      expect(completion.choices[0]?.message.tool_calls).toEqual([
        { id: "call_a", type: "function", function: { name: "get_weather", arguments: "{}" } }
      ])
    }))

  it.effect("id, created and model come from the first chunk that has them, not from a placeholder opening the stream", () =>
    Effect.gen(function*() {
      const placeholder: ChatCompletionChunk = { ...chunk([]), id: "", created: 0, model: "" }
      const completion = yield* ChatStream.fold(Stream.fromIterable([placeholder, chunk(delta({ content: "a" }, "stop"))]))
      expect(completion).toMatchObject({ id: "chatcmpl-1", created: 1_700_000_000, model: "deepseek-v4-flash" })
    }))

  it.effect("keeps choices apart by index, in index order", () =>
    Effect.gen(function*() {
      const completion = yield* ChatStream.fold(Stream.fromIterable([
        chunk([{ index: 1, delta: { content: "b" } }, { index: 0, delta: { content: "a" } }]),
        chunk([{ index: 0, delta: { content: "A" }, finish_reason: "stop" }, { index: 1, delta: { content: "B" }, finish_reason: "length" }])
      ]))
      expect(completion.choices.map((c) => [c.index, c.message.content, c.finish_reason])).toEqual([
        [0, "aA", "stop"],
        [1, "bB", "length"]
      ])
    }))

  it.prop(
    "folds a streamed generation into exactly the completion a non-stream call returns",
    [
      FastCheck.record({
        content: FastCheck.string({ maxLength: 60 }),
        reasoning: FastCheck.option(FastCheck.string({ minLength: 1, maxLength: 60 }), { nil: undefined }),
        pieceSize: FastCheck.integer({ min: 1, max: 16 }),
        finishReason: FastCheck.constantFrom("stop" as const, "length" as const)
      })
    ],
    ([g]) => {
      const generation: wire.Generation = {
        id: "chatcmpl-p",
        model: "deepseek-v4-pro",
        content: g.content,
        reasoningContent: g.reasoning,
        finishReason: g.finishReason,
        usage,
        created: 7
      }
      const folded = Effect.runSync(ChatStream.fold(Stream.fromIterable(wire.chunks(generation, g.pieceSize))))
      expect(folded).toEqual(wire.completion(generation))
    }
  )
})

describe("ChatStream.foldPartial", () => {
  it.effect("keeps what arrived before a failure, and the failure", () =>
    Effect.gen(function*() {
      const partialUsage = wire.usage({ promptTokens: 12, completionTokens: 2 })
      const cut = new StreamTruncated({
        partial: { content: "Hel", reasoningContent: "", usage: undefined, finishReason: undefined, events: 2 }
      })
      const chunks = Stream.fromIterable([chunk(delta({ content: "He" })), chunk(delta({ content: "l" }), { usage: partialUsage })]).pipe(
        Stream.concat(Stream.fail(cut))
      )
      const folded = yield* ChatStream.foldPartial(chunks)
      expect(folded.chunks).toBe(2)
      expect(folded.error).toEqual(Option.some(cut))
      expect(folded.completion.choices[0]?.message.content).toBe("Hel")
      expect(folded.completion.choices[0]?.finish_reason).toBeNull()
      expect(folded.completion.usage).toEqual(partialUsage)

      const whole = yield* ChatStream.foldPartial(Stream.fromIterable([chunk(delta({ content: "ok" }, "stop"))]))
      expect(whole.error).toEqual(Option.none())
      expect(whole.completion.choices[0]?.message.content).toBe("ok")
      expect(yield* Effect.flip(ChatStream.fold(chunks))).toBe(cut)
    }))
})

describe("ChatStream.chunksOf", () => {
  const toolCall = FastCheck.record({
    id: FastCheck.string({ maxLength: 8 }),
    type: FastCheck.constant("function" as const),
    function: FastCheck.record({ name: FastCheck.string({ maxLength: 8 }), arguments: FastCheck.string({ maxLength: 20 }) })
  })
  const message = FastCheck.record({
    content: FastCheck.option(FastCheck.string({ maxLength: 40 }), { nil: null }),
    reasoning: FastCheck.option(FastCheck.string({ maxLength: 40 }), { nil: undefined }),
    refusal: FastCheck.option(FastCheck.string({ maxLength: 40 }), { nil: undefined }),
    toolCalls: FastCheck.option(FastCheck.array(toolCall, { minLength: 1, maxLength: 3 }), { nil: undefined }),
    finishReason: FastCheck.constantFrom("stop" as const, "length" as const, "tool_calls" as const, null),
    logprobs: FastCheck.option(
      FastCheck.option(
        FastCheck.record({
          content: FastCheck.array(FastCheck.record({ token: FastCheck.string({ maxLength: 4 }), logprob: FastCheck.double({ max: 0, noNaN: true }) }), { maxLength: 4 }),
          refusal: FastCheck.constant(null)
        }),
        { nil: null }
      ),
      { nil: undefined }
    )
  })
  const completion = FastCheck.record({
    messages: FastCheck.array(message, { minLength: 1, maxLength: 3 }),
    withUsage: FastCheck.boolean(),
    fingerprint: FastCheck.option(FastCheck.option(FastCheck.string({ maxLength: 8 }), { nil: null }), { nil: undefined })
  }).map(({ fingerprint, messages, withUsage }): ChatCompletion => ({
    id: "chatcmpl-r",
    object: "chat.completion",
    created: 3,
    model: "deepseek-v4-flash",
    choices: messages.map((m, index) => ({
      index,
      message: {
        role: "assistant",
        content: m.content,
        ...(m.reasoning === undefined ? {} : { reasoning_content: m.reasoning }),
        ...(m.refusal === undefined ? {} : { refusal: m.refusal }),
        ...(m.toolCalls === undefined ? {} : { tool_calls: m.toolCalls })
      },
      finish_reason: m.finishReason,
      ...(m.logprobs === undefined ? {} : { logprobs: m.logprobs })
    })),
    ...(withUsage ? { usage } : {}),
    ...(fingerprint === undefined ? {} : { system_fingerprint: fingerprint })
  }))

  it.prop("gives the chunks that fold back into the completion", [completion], ([c]) => {
    expect(ChatStream.toCompletion(ChatStream.chunksOf(c).reduce(ChatStream.step, ChatStream.empty))).toEqual(c)
  })

  it("sends one chunk per choice, then the usage on a chunk with no choices, as OpenAI's API does", () => {
    const chunks = ChatStream.chunksOf({
      id: "chatcmpl-s",
      object: "chat.completion",
      created: 5,
      model: "deepseek-v4-flash",
      choices: [{ index: 0, message: { role: "assistant", content: "Hi", reasoning_content: "think" }, finish_reason: "stop" }],
      usage
    })
    expect(chunks).toEqual([
      chunk([{ index: 0, delta: { role: "assistant", content: "Hi", reasoning_content: "think" }, finish_reason: "stop" }]),
      chunk([], { usage })
    ].map((c) => ({ ...c, id: "chatcmpl-s", created: 5 })))
  })
})
