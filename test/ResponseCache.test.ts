import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import { InsufficientResource, StreamTruncated, emptyPartial } from "../src/ApiError.js"
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, FinishReason } from "../src/ChatSchema.js"
import * as ChatStream from "../src/ChatStream.js"
import * as ResponseCache from "../src/ResponseCache.js"
import { processClock } from "./support/processClock.js"
import { capturingLogs, type Logged } from "./support/logs.js"

const ask = (question: string, extra: Partial<ChatCompletionRequest> = {}): ChatCompletionRequest => ({
  model: "deepseek-v4-flash",
  messages: [{ role: "system", content: "Be brief." }, { role: "user", content: question }],
  temperature: 0,
  ...extra
})

const completion = (content: string, finishReason: FinishReason | null = "stop"): ChatCompletion => ({
  id: `cmpl-${content}`,
  object: "chat.completion",
  created: 1,
  model: "deepseek-v4-flash",
  choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: finishReason }]
})

/**
 * An upstream double that counts its calls. Each call waits `latency` (driven by TestClock) and
 * answers the next item of `answers` (the last one repeats): a completion or an error.
 */
const upstream = <E = never>(answers: ReadonlyArray<ChatCompletion | E>, latency: "0 millis" | "1 second" = "0 millis") =>
  Effect.map(Ref.make(0), (calls) => ({
    calls: Ref.get(calls),
    call: Effect.flatMap(Ref.getAndUpdate(calls, (n) => n + 1), (n) => {
      const answer = answers[Math.min(n, answers.length - 1)] as ChatCompletion | E
      const result = isCompletion(answer) ? Effect.succeed(answer) : Effect.fail(answer)
      return Effect.zipRight(Effect.sleep(latency), result)
    })
  }))

const isCompletion = (value: unknown): value is ChatCompletion =>
  typeof value === "object" && value !== null && "choices" in value

const memoryCache = (options: ResponseCache.MemoryOptions = {}) =>
  Effect.provide(ResponseCache.ResponseCache, ResponseCache.layerMemory(options))

describe("ResponseCache.key", () => {
  it("ignores key order at every depth, undefined members, stream and stream_options", () => {
    const request = ask("weather?", {
      tools: [{ type: "function", function: { name: "forecast", parameters: { type: "object", required: ["city"] } } }],
      max_tokens: 100
    })
    const reordered = {
      stream_options: { include_usage: true },
      tools: [{ function: { parameters: { required: ["city"], type: "object" }, name: "forecast" }, type: "function" }],
      max_tokens: 100,
      temperature: 0,
      top_p: undefined,
      messages: [{ content: "Be brief.", role: "system" }, { content: "weather?", role: "user" }],
      stream: true,
      model: "deepseek-v4-flash"
    } as ChatCompletionRequest
    expect(ResponseCache.key(reordered)).toBe(ResponseCache.key(request))
    expect(ResponseCache.key(request)).toMatch(/^[0-9a-f]{64}$/)
  })

  it("changes with every field that may change the answer", () => {
    const base = ResponseCache.key(ask("weather?"))
    const variants: ReadonlyArray<ChatCompletionRequest> = [
      ask("weather?", { temperature: 0.5 }),
      ask("weather?", { model: "deepseek-v4-pro" }),
      ask("weather tomorrow?"),
      ask("weather?", { max_tokens: 10 }),
      ask("weather?", { stop: "\n" }),
      ask("weather?", { thinking: { type: "disabled" } }),
      ask("weather?", { response_format: { type: "json_object" } }),
      ask("weather?", { user_id: "alice" }),
      { ...ask("weather?"), seed: 7 } as ChatCompletionRequest,
      // A nested `stream` is content, not the transport's flag.
      ask("weather?", { tools: [{ type: "function", function: { name: "f", parameters: { stream: true } } }] }),
      ask("weather?", { tools: [{ type: "function", function: { name: "f", parameters: { stream: false } } }] })
    ]
    const keys = new Set([base, ...variants.map(ResponseCache.key)])
    expect(keys.size).toBe(variants.length + 1)
  })

  // A model writes structured output, and reads a tool's parameters, in the order of a schema's
  // `properties`: the same schema in another order is another question.
  it("keeps the order of a JSON Schema's properties in tools and response_format, and of nothing else", () => {
    const schema = (names: ReadonlyArray<string>, property: object = { type: "string", description: "d" }) => ({
      type: "object",
      properties: Object.fromEntries(names.map((name) => [name, property]))
    })
    const tool = (parameters: Record<string, unknown>) => ask("q", { tools: [{ type: "function", function: { name: "f", parameters } }] })
    const format = (parameters: Record<string, unknown>) =>
      ask("q", { response_format: { type: "json_schema", json_schema: { name: "answer", schema: parameters } } } as Partial<ChatCompletionRequest>)
    for (const build of [tool, format]) {
      const reasoningFirst = ResponseCache.key(build(schema(["reasoning", "answer"])))
      expect(ResponseCache.key(build(schema(["answer", "reasoning"])))).not.toBe(reasoningFirst)
      // Each property's own schema, and the schema's other keys, still in any order.
      expect(ResponseCache.key(build({ properties: schema(["reasoning", "answer"], { description: "d", type: "string" }).properties, type: "object" })))
        .toBe(reasoningFirst)
    }
    const extra = (names: ReadonlyArray<string>) => ({ ...ask("q"), metadata: schema(names) }) as ChatCompletionRequest
    expect(ResponseCache.key(extra(["b", "a"]))).toBe(ResponseCache.key(extra(["a", "b"])))
  })

  /** Rebuilds every object of `value` with its keys in an order drawn from `random`. */
  const permuteDeep = (value: unknown, random: () => number): unknown => {
    if (Array.isArray(value)) return value.map((item) => permuteDeep(item, random))
    if (value === null || typeof value !== "object") return value
    const entries = Object.entries(value).map(([k, v]) => [k, permuteDeep(v, random)] as const)
    for (let i = entries.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1))
      ;[entries[i], entries[j]] = [entries[j]!, entries[i]!]
    }
    return Object.fromEntries(entries)
  }

  /** mulberry32: a tiny seeded generator, so a failing case replays from FastCheck's seed. */
  const seeded = (seed: number) => () => {
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  const message = FastCheck.record({
    role: FastCheck.constantFrom("system", "user"),
    content: FastCheck.string(),
    extra: FastCheck.dictionary(FastCheck.string(), FastCheck.jsonValue({ maxDepth: 2 }))
  }).map(({ extra, ...fields }) => ({ ...extra, ...fields }))

  const request = FastCheck.record({
    model: FastCheck.string({ minLength: 1 }),
    messages: FastCheck.array(message, { minLength: 1, maxLength: 4 }),
    temperature: FastCheck.option(FastCheck.double({ min: 0, max: 2, noNaN: true }), { nil: undefined }),
    // Not `tools` or `response_format`, whose schemas' `properties` keep their order (tested above).
    passthrough: FastCheck.dictionary(
      FastCheck.string().filter((name) => name !== "tools" && name !== "response_format"),
      FastCheck.jsonValue({ maxDepth: 3 })
    )
  }).map(({ passthrough, ...fields }) => ({ ...passthrough, ...fields }) as unknown as ChatCompletionRequest)

  it.prop(
    "is invariant under deep key permutations and the stream flags",
    [request, FastCheck.integer(), FastCheck.boolean()],
    ([original, seed, stream]) => {
      const permuted = permuteDeep({ ...original, stream, stream_options: { include_usage: stream } }, seeded(seed))
      expect(ResponseCache.key(permuted as ChatCompletionRequest)).toBe(ResponseCache.key(original))
    }
  )
})

describe("ResponseCache.isDeterministic", () => {
  it("holds at temperature 0 outside thinking mode only", () => {
    expect(ResponseCache.isDeterministic(ask("q"))).toBe(true)
    expect(ResponseCache.isDeterministic(ask("q", { thinking: { type: "disabled" } }))).toBe(true)
    expect(ResponseCache.isDeterministic(ask("q", { reasoning_effort: "high", thinking: { type: "disabled" } })))
      .toBe(true)
    expect(ResponseCache.isDeterministic(ask("q", { temperature: 0.7 }))).toBe(false)
    expect(ResponseCache.isDeterministic(ask("q", { temperature: undefined }))).toBe(false)
    expect(ResponseCache.isDeterministic(ask("q", { thinking: { type: "enabled" } }))).toBe(false)
    expect(ResponseCache.isDeterministic(ask("q", { reasoning_effort: "high" }))).toBe(false)
    // `null` is unset, as OpenAI's API reads it.
    expect(ResponseCache.isDeterministic(ask("q", { reasoning_effort: null, thinking: null }))).toBe(true)
  })
})

describe("ResponseCache", () => {
  it.effect("its counters are there from the start, at 0: a series shows only from its first update", () =>
    Effect.gen(function*() {
      const names = ["hits", "misses", "coalesced"].map((name) => `weatherproof_response_cache_${name}`)
      const series = Effect.map(Metric.snapshot, (pairs) => pairs.map((pair) => pair.metricKey.name).filter((name) => names.includes(name)))
      expect(yield* series).toEqual([])
      yield* memoryCache()
      expect((yield* series).sort()).toEqual([...names].sort())
    }))

  it.effect("answers a repeated deterministic request from the cache", () =>
    Effect.gen(function*() {
      const cache = yield* memoryCache()
      const { call, calls } = yield* upstream([completion("sunny")])
      const first = yield* cache.cached(ask("weather?"), call)
      // Same request, keys in another order and streamed: the same entry.
      const again = yield* cache.cached({ ...ask("weather?"), stream: true }, call)
      expect(again).toEqual(first)
      expect(first.choices[0]?.message.content).toBe("sunny")
      expect(yield* calls).toBe(1)
      expect(yield* cache.stats).toEqual({ hits: 1, misses: 1, coalesced: 0, stores: 1, evictions: 0 })
    }))

  it.effect("does not cache a non-deterministic request unless forced", () =>
    Effect.gen(function*() {
      const cache = yield* memoryCache()
      const { call, calls } = yield* upstream([completion("a"), completion("b"), completion("c"), completion("d")])
      const creative = ask("poem", { temperature: 0.9 })
      const thinking = ask("proof", { thinking: { type: "enabled" } })
      const answers = [
        yield* cache.cached(creative, call),
        yield* cache.cached(creative, call),
        yield* cache.cached(thinking, call),
        yield* cache.cached(thinking, call)
      ]
      expect(answers.map((a) => a.id)).toEqual(["cmpl-a", "cmpl-b", "cmpl-c", "cmpl-d"])
      expect(yield* cache.stats).toEqual({ hits: 0, misses: 0, coalesced: 0, stores: 0, evictions: 0 })

      const forced = yield* cache.cached(creative, call, { cache: "force" })
      expect((yield* cache.cached(creative, call, { cache: "force" })).id).toBe(forced.id)
      expect(yield* calls).toBe(5)
    }))

  it.effect("bypass neither reads nor writes the cache", () =>
    Effect.gen(function*() {
      const cache = yield* memoryCache()
      const { call, calls } = yield* upstream([completion("a"), completion("b"), completion("c")])
      expect((yield* cache.cached(ask("q"), call)).id).toBe("cmpl-a")
      expect((yield* cache.cached(ask("q"), call, { cache: "bypass" })).id).toBe("cmpl-b")
      expect((yield* cache.cached(ask("other"), call, { cache: "bypass" })).id).toBe("cmpl-c")
      expect((yield* cache.cached(ask("q"), call)).id).toBe("cmpl-a")
      expect(yield* cache.cached(ask("other"), call)).toMatchObject({ id: "cmpl-c" })
      expect(yield* calls).toBe(4)
      expect(yield* cache.stats).toMatchObject({ hits: 1, misses: 2, stores: 2 })
    }))

  it.effect("expires an entry after its time to live, by the Clock", () =>
    Effect.gen(function*() {
      const cache = yield* memoryCache({ timeToLive: "1 hour" })
      const { call, calls } = yield* upstream([completion("a"), completion("b"), completion("c")])
      yield* cache.cached(ask("q"), call)
      yield* cache.cached(ask("short"), call, { timeToLive: "1 minute" })
      yield* TestClock.adjust("59 minutes")
      expect((yield* cache.cached(ask("q"), call)).id).toBe("cmpl-a")
      expect(yield* calls).toBe(2)
      // The per-call time to live ran out long ago: "short" is called again.
      expect((yield* cache.cached(ask("short"), call)).id).toBe("cmpl-c")
      yield* TestClock.adjust("59999 millis")
      expect((yield* cache.cached(ask("q"), call)).id).toBe("cmpl-a")
      yield* TestClock.adjust("1 millis")
      expect((yield* cache.cached(ask("q"), call)).id).toBe("cmpl-c")
      expect(yield* calls).toBe(4)
      expect(yield* cache.stats).toEqual({ hits: 2, misses: 4, coalesced: 0, stores: 4, evictions: 0 })
    }))

  it.effect("a step of the system clock back does not lengthen a time to live", () =>
    Effect.gen(function*() {
      const { clock, stepWall } = yield* processClock
      const cache = yield* memoryCache({ timeToLive: "1 minute" })
      const { call, calls } = yield* upstream([completion("a"), completion("b")])
      yield* Effect.withClock(cache.cached(ask("q"), call), clock)
      stepWall(-3_600_000)
      yield* TestClock.adjust("1 minute")
      expect((yield* Effect.withClock(cache.cached(ask("q"), call), clock)).id).toBe("cmpl-b")
      expect(yield* calls).toBe(2)
    }))

  it.effect("a zero time to live stores nothing", () =>
    Effect.gen(function*() {
      const cache = yield* memoryCache({ timeToLive: 0 })
      const { call, calls } = yield* upstream([completion("a")])
      yield* cache.cached(ask("q"), call)
      yield* cache.cached(ask("q"), call)
      expect(yield* calls).toBe(2)
      expect((yield* cache.stats).stores).toBe(0)
    }))

  it.effect("evicts the least recently used entry beyond capacity", () =>
    Effect.gen(function*() {
      const cache = yield* memoryCache({ capacity: 2 })
      const { call, calls } = yield* upstream([completion("x")])
      yield* cache.cached(ask("a"), call)
      yield* cache.cached(ask("b"), call)
      yield* cache.cached(ask("a"), call) // a is now more recent than b
      yield* cache.cached(ask("c"), call) // evicts b
      expect(yield* calls).toBe(3)
      yield* cache.cached(ask("a"), call)
      yield* cache.cached(ask("c"), call)
      expect(yield* calls).toBe(3)
      yield* cache.cached(ask("b"), call) // evicted: called again, evicts a
      expect(yield* calls).toBe(4)
      yield* cache.cached(ask("c"), call)
      expect(yield* calls).toBe(4)
      yield* cache.cached(ask("a"), call)
      expect(yield* calls).toBe(5)
      expect(yield* cache.stats).toEqual({ hits: 4, misses: 5, coalesced: 0, stores: 5, evictions: 3 })
    }))

  it.effect("an expired entry pushed out for room is not counted as an eviction", () =>
    Effect.gen(function*() {
      const cache = yield* memoryCache({ capacity: 1 })
      const { call } = yield* upstream([completion("x")])
      yield* cache.cached(ask("a"), call, { timeToLive: "1 second" })
      yield* TestClock.adjust("2 seconds")
      yield* cache.cached(ask("b"), call)
      yield* cache.cached(ask("c"), call)
      expect((yield* cache.stats).evictions).toBe(1)
    }))

  it.effect("stores only complete answers and never a failure", () =>
    Effect.gen(function*() {
      const cache = yield* memoryCache()
      const cut = new InsufficientResource({ partial: { ...emptyPartial, content: "par" } })
      const emptyChoices: ChatCompletion = { ...completion("none"), choices: [] }
      const { call, calls } = yield* upstream<InsufficientResource>([
        cut,
        completion("filtered", "content_filter"),
        completion("unfinished", null),
        emptyChoices,
        completion("tools", "tool_calls"),
        completion("late")
      ])
      const error = yield* Effect.flip(cache.cached(ask("q"), call))
      expect(error).toBe(cut)
      for (const id of ["cmpl-filtered", "cmpl-unfinished", "cmpl-none", "cmpl-tools", "cmpl-tools"]) {
        expect((yield* cache.cached(ask("q"), call)).id).toBe(id)
      }
      expect(yield* calls).toBe(5)
      expect(yield* cache.stats).toEqual({ hits: 1, misses: 5, coalesced: 0, stores: 1, evictions: 0 })
      expect(ResponseCache.isStorable(completion("cut", "insufficient_system_resource"))).toBe(false)
      expect(ResponseCache.isStorable(completion("long", "length"))).toBe(true)
    }))

  it.effect("coalesces identical concurrent misses into one upstream call", () =>
    Effect.gen(function*() {
      const cache = yield* memoryCache()
      const { call, calls } = yield* upstream([completion("once")], "1 second")
      const fiber = yield* Effect.fork(
        Effect.all([
          Effect.all(Array.from({ length: 10 }, () => cache.cached(ask("q"), call)), { concurrency: "unbounded" }),
          cache.cached(ask("other"), call)
        ], { concurrency: "unbounded" })
      )
      yield* TestClock.adjust("1 second")
      const [answers, other] = yield* Fiber.join(fiber)
      expect(answers.map((a) => a.id)).toEqual(Array(10).fill("cmpl-once"))
      expect(other.id).toBe("cmpl-once")
      expect(yield* calls).toBe(2)
      expect(yield* cache.stats).toEqual({ hits: 0, misses: 2, coalesced: 9, stores: 2, evictions: 0 })
    }))

  it.effect("waiters call themselves when the call they waited for fails", () =>
    Effect.gen(function*() {
      const cache = yield* memoryCache()
      const cut = new InsufficientResource({ partial: emptyPartial })
      const { call, calls } = yield* upstream<InsufficientResource>([cut, completion("a"), completion("b")], "1 second")
      const fiber = yield* Effect.fork(
        Effect.all(Array.from({ length: 3 }, () => Effect.exit(cache.cached(ask("q"), call))), {
          concurrency: "unbounded"
        })
      )
      yield* TestClock.adjust("2 seconds")
      const [leader, ...waiters] = yield* Fiber.join(fiber)
      expect(leader).toEqual(Exit.fail(cut))
      expect(waiters.map((exit) => Exit.isSuccess(exit) ? exit.value.id : "failed").sort()).toEqual(["cmpl-a", "cmpl-b"])
      expect(yield* calls).toBe(3)
      expect(yield* cache.stats).toMatchObject({ misses: 3, coalesced: 0, stores: 2 })
    }))

  it.effect("an interrupted leader neither strands its waiters nor leaves its key in flight: one of them leads, the others wait for it", () =>
    Effect.gen(function*() {
      const cache = yield* memoryCache()
      const { call, calls } = yield* upstream([completion("a"), completion("b"), completion("c")], "1 second")
      const leader = yield* Effect.fork(cache.cached(ask("q"), call))
      yield* TestClock.adjust("10 millis")
      const waiters = yield* Effect.fork(Effect.all(Array.from({ length: 3 }, () => cache.cached(ask("q"), call)), { concurrency: "unbounded" }))
      yield* TestClock.adjust("10 millis")
      yield* Fiber.interrupt(leader)
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(waiters)).map((answer) => answer.id)).toEqual(Array(3).fill("cmpl-b"))
      expect((yield* cache.cached(ask("q"), call)).id).toBe("cmpl-b")
      expect(yield* calls).toBe(2)
      expect(yield* cache.stats).toMatchObject({ misses: 2, coalesced: 2, stores: 1 })
    }))

  it.effect("a failing store degrades to calling upstream, logging its outage once and its return", () => {
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const memory = yield* ResponseCache.makeMemoryStore()
      const down = yield* Ref.make(true)
      const broken = (operation: "get" | "set") =>
        Effect.fail(new ResponseCache.CacheStoreError({ operation, message: "Connection is closed." }))
      const cache = yield* Effect.provide(
        ResponseCache.make(),
        Layer.succeed(ResponseCache.CacheStore, {
          get: (key) => Effect.flatMap(Ref.get(down), (isDown) => isDown ? broken("get") : memory.get(key)),
          set: (key, value, timeToLive) =>
            Effect.flatMap(Ref.get(down), (isDown) => isDown ? broken("set") : memory.set(key, value, timeToLive)),
          evictions: Effect.succeed(0)
        })
      )
      const { call, calls } = yield* upstream([completion("a")])
      for (let i = 0; i < 3; i++) expect((yield* cache.cached(ask("q"), call)).id).toBe("cmpl-a")
      expect(yield* calls).toBe(3)
      expect(yield* cache.stats).toMatchObject({ hits: 0, misses: 3, stores: 0 })
      yield* Ref.set(down, false)
      yield* cache.cached(ask("q"), call)
      yield* cache.cached(ask("q"), call)
      expect(yield* calls).toBe(4)
      expect(logs).toEqual([
        {
          level: "WARN",
          message: "response cache: its store failed to get (Connection is closed.); calls go upstream and nothing is stored until it answers"
        },
        { level: "INFO", message: "response cache: its store answers again" }
      ])
    }).pipe(capturingLogs(logs))
  })

  it.effect("counts hits and misses in metrics", () =>
    Effect.gen(function*() {
      const read = Effect.all([Metric.value(ResponseCache.hitsCounter), Metric.value(ResponseCache.missesCounter)])
      const [hitsBefore, missesBefore] = yield* read
      const cache = yield* memoryCache()
      const { call } = yield* upstream([completion("a")])
      yield* Effect.replicateEffect(cache.cached(ask("metrics"), call), 3)
      const [hits, misses] = yield* read
      expect(hits.count - hitsBefore.count).toBe(2)
      expect(misses.count - missesBefore.count).toBe(1)
    }))

  describe("cachedStream", () => {
    /**
     * A streaming upstream double that counts its calls: each waits `latency`, then streams the
     * chunks of `answer` (`ChatStream.chunksOf`), failing after the first one when `cutWith` is set.
     */
    const streamingUpstream = (answer: ChatCompletion, options: { readonly cutWith?: StreamTruncated } = {}) =>
      Effect.map(Ref.make(0), (calls) => {
        const chunks = ChatStream.chunksOf(answer)
        const live = options.cutWith === undefined
          ? Stream.fromIterable(chunks)
          : Stream.concat(Stream.fromIterable(chunks.slice(0, 1)), Stream.fail(options.cutWith))
        return {
          calls: Ref.get(calls),
          stream: Stream.unwrap(Effect.as(Effect.zipRight(Ref.update(calls, (n) => n + 1), Effect.sleep("1 second")), live))
        }
      })
    const withUsage = (content: string): ChatCompletion => ({
      ...completion(content),
      usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }
    })
    const foldOf = <E>(chunks: Stream.Stream<ChatCompletionChunk, E>) => ChatStream.fold(chunks)

    it.effect("stores a stream that ended whole, then replays it, and answers a completion of the same request", () =>
      Effect.gen(function*() {
        const cache = yield* memoryCache()
        const answer = withUsage("streamed")
        const { calls, stream } = yield* streamingUpstream(answer)
        const first = yield* Effect.fork(foldOf(cache.cachedStream(ask("q", { stream: true }), stream)))
        yield* TestClock.adjust("1 second")
        expect(yield* Fiber.join(first)).toEqual(answer)
        const replayed = yield* Stream.runCollect(cache.cachedStream(ask("q", { stream: true }), stream))
        expect([...replayed]).toEqual(ChatStream.chunksOf(answer))
        const { call } = yield* upstream([completion("never sent")])
        expect(yield* cache.cached(ask("q"), call)).toEqual(answer)
        expect(yield* calls).toBe(1)
        expect(yield* cache.stats).toEqual({ hits: 2, misses: 1, coalesced: 0, stores: 1, evictions: 0 })
      }))

    it.effect("a completion stored by a call answers a stream of the same request", () =>
      Effect.gen(function*() {
        const cache = yield* memoryCache()
        const answer = withUsage("called")
        const { call } = yield* upstream([answer])
        yield* cache.cached(ask("q"), call)
        const { calls, stream } = yield* streamingUpstream(withUsage("never streamed"))
        expect(yield* foldOf(cache.cachedStream(ask("q", { stream: true }), stream))).toEqual(answer)
        expect(yield* calls).toBe(0)
      }))

    it.effect("stores nothing of a stream that was cut or left before its upstream ended, and passes a cut through", () =>
      Effect.gen(function*() {
        const cache = yield* memoryCache()
        const cut = new StreamTruncated({ partial: emptyPartial })
        const broken = yield* streamingUpstream(withUsage("partial answer"), { cutWith: cut })
        const failed = yield* Effect.fork(Effect.exit(Stream.runCollect(cache.cachedStream(ask("q"), broken.stream))))
        yield* TestClock.adjust("1 second")
        const exit = yield* Fiber.join(failed)
        expect(exit).toEqual(Exit.fail(cut))
        const whole = yield* streamingUpstream(withUsage("whole"))
        // Its reader leaves after the first chunk, while the upstream still generates.
        const [head, ...tail] = ChatStream.chunksOf(withUsage("slow"))
        const slow = Stream.concat(Stream.make(head!), Stream.fromIterable(tail).pipe(Stream.tap(() => Effect.sleep("1 second"))))
        const unread = yield* Effect.fork(Stream.runCollect(Stream.take(cache.cachedStream(ask("q"), slow), 1)))
        yield* TestClock.adjust("1 second")
        expect((yield* Fiber.join(unread)).length).toBe(1)
        expect(yield* cache.stats).toMatchObject({ hits: 0, misses: 2, stores: 0 })
        // Neither left its key in flight: the next call leads, and calls.
        const next = yield* Effect.fork(foldOf(cache.cachedStream(ask("q"), whole.stream)))
        yield* TestClock.adjust("1 second")
        expect((yield* Fiber.join(next)).choices[0]?.message.content).toBe("whole")
        expect(yield* whole.calls).toBe(1)
      }))

    it.effect("a stream that finds an identical call in flight replays its completion; a call that finds a stream in flight takes what it adds up to", () =>
      Effect.gen(function*() {
        const cache = yield* memoryCache()
        const { call, calls } = yield* upstream([withUsage("led by a call")], "1 second")
        const streaming = yield* streamingUpstream(withUsage("never streamed"))
        const leader = yield* Effect.fork(cache.cached(ask("a"), call))
        yield* TestClock.adjust("10 millis")
        const waiter = yield* Effect.fork(foldOf(cache.cachedStream(ask("a", { stream: true }), streaming.stream)))
        yield* TestClock.adjust("1 second")
        expect(yield* Fiber.join(waiter)).toEqual(yield* Fiber.join(leader))
        expect([yield* calls, yield* streaming.calls]).toEqual([1, 0])

        const streamed = withUsage("led by a stream")
        const streamLeader = yield* streamingUpstream(streamed)
        const led = yield* Effect.fork(foldOf(cache.cachedStream(ask("b"), streamLeader.stream)))
        yield* TestClock.adjust("10 millis")
        const follower = yield* Effect.fork(cache.cached(ask("b"), call))
        yield* TestClock.adjust("1 second")
        expect(yield* Fiber.join(led)).toEqual(streamed)
        expect(yield* Fiber.join(follower)).toEqual(streamed)
        expect(yield* calls).toBe(1)
        expect(yield* cache.stats).toEqual({ hits: 0, misses: 2, coalesced: 2, stores: 2, evictions: 0 })
      }))

    // A stream's reader sets its pace (a gateway's slow client, a `Stream.zip`): the identical
    // calls waiting for it must not wait on the reader, only on the upstream.
    it.scoped("a stream whose reader pauses still answers the identical calls waiting for it once its upstream ends", () =>
      Effect.gen(function*() {
        const cache = yield* memoryCache()
        const streamed = withUsage("read slowly")
        const { calls, stream } = yield* streamingUpstream(streamed)
        const pull = yield* Stream.toPull(cache.cachedStream(ask("slow"), stream))
        const first = yield* Effect.fork(pull)
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(first)
        // The reader took its first chunks and reads no more; an identical call comes.
        const waiter = yield* Effect.fork(cache.cached(ask("slow"), Effect.die("never called")))
        yield* TestClock.adjust("10 millis")
        expect(yield* Fiber.join(waiter)).toEqual(streamed)
        expect(yield* calls).toBe(1)
        const zipped = yield* Effect.fork(Stream.runCollect(Stream.zip(cache.cachedStream(ask("zip"), stream), cache.cachedStream(ask("zip"), stream))))
        yield* TestClock.adjust("1 second")
        expect((yield* Fiber.join(zipped)).length).toBe(ChatStream.chunksOf(streamed).length)
        expect(yield* calls).toBe(2)
      }))

    it.effect("passes a stream it does not cache through (not deterministic, bypassed), counted nowhere", () =>
      Effect.gen(function*() {
        const cache = yield* memoryCache()
        const { calls, stream } = yield* streamingUpstream(withUsage("varied"))
        const twice = Effect.all([
          foldOf(cache.cachedStream(ask("q", { temperature: 1 }), stream)),
          foldOf(cache.cachedStream(ask("q"), stream, { cache: "bypass" }))
        ])
        const fiber = yield* Effect.fork(twice)
        yield* TestClock.adjust("2 seconds")
        yield* Fiber.join(fiber)
        expect(yield* calls).toBe(2)
        expect(yield* cache.stats).toEqual({ hits: 0, misses: 0, coalesced: 0, stores: 0, evictions: 0 })
      }))

    it.effect("stores a stream's logprobs with its answer and replays them, to a stream or a call", () =>
      Effect.gen(function*() {
        const cache = yield* memoryCache()
        const token = (text: string) => ({ token: text, logprob: -0.5, bytes: [...Buffer.from(text)], top_logprobs: [] })
        const answer: ChatCompletion = {
          ...withUsage("Hi!"),
          choices: [{
            index: 0,
            message: { role: "assistant", content: "Hi!" },
            finish_reason: "stop",
            logprobs: { content: [token("Hi"), token("!")], refusal: null }
          }]
        }
        const { calls, stream } = yield* streamingUpstream(answer)
        const request = ask("q", { logprobs: true, stream: true })
        const first = yield* Effect.fork(foldOf(cache.cachedStream(request, stream)))
        yield* TestClock.adjust("1 second")
        expect(yield* Fiber.join(first)).toEqual(answer)
        expect(yield* foldOf(cache.cachedStream(request, stream))).toEqual(answer)
        const { call } = yield* upstream([completion("never sent")])
        expect(yield* cache.cached(ask("q", { logprobs: true }), call)).toEqual(answer)
        expect(yield* calls).toBe(1)
        expect(yield* cache.stats).toMatchObject({ hits: 2, misses: 1, stores: 1 })
      }))
  })

  it.effect("layerDisabled calls upstream every time", () =>
    Effect.gen(function*() {
      const cache = yield* Effect.provide(ResponseCache.ResponseCache, ResponseCache.layerDisabled)
      const { call, calls } = yield* upstream([completion("a")])
      yield* cache.cached(ask("q"), call, { cache: "force" })
      yield* cache.cached(ask("q"), call, { cache: "force" })
      expect(yield* calls).toBe(2)
      const live = Stream.make(...ChatStream.chunksOf(completion("a")))
      expect(cache.cachedStream(ask("q"), live, { cache: "force" })).toBe(live)
      expect((yield* cache.stats).hits).toBe(0)
    }))

  it.effect("rejects a capacity that is not a positive integer", () =>
    Effect.gen(function*() {
      for (const capacity of [0, -1, 1.5, Number.NaN]) {
        const exit = yield* Effect.exit(ResponseCache.makeMemoryStore(capacity))
        expect(Exit.isFailure(exit) && Cause.pretty(exit.cause)).toContain("capacity must be a positive integer")
      }
      expect(Option.isNone(yield* (yield* ResponseCache.makeMemoryStore(1)).get("missing"))).toBe(true)
    }))
})
