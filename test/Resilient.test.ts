import { describe, expect, it } from "@effect/vitest"
import * as ConfigError from "effect/ConfigError"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as Tracer from "effect/Tracer"
import { capturingLogs, type Logged } from "./support/logs.js"
import { emptyPartial, InvalidRequest, RateLimited, ServerError, StreamTruncated } from "../src/ApiError.js"
import type { ApiError } from "../src/ApiError.js"
import type { ChatCompletionChunk, ChatCompletionRequest } from "../src/ChatSchema.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as ConcurrencyLimiter from "../src/ConcurrencyLimiter.js"
import * as wire from "../src/internal/wire.js"
import * as Policy from "../src/Policy.js"
import * as Resilient from "../src/Resilient.js"
import * as ChatStream from "../src/ChatStream.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as RetryBudget from "../src/RetryBudget.js"
import * as RetryPolicy from "../src/RetryPolicy.js"
import * as Telemetry from "../src/Telemetry.js"
import * as TokenBucket from "../src/TokenBucket.js"
import { Transport } from "../src/Transport.js"

const request: ChatCompletionRequest = { model: "deepseek-v4-flash", messages: [{ role: "user", content: "hi" }] }
const generation: wire.Generation = {
  id: "cmpl-1",
  model: "deepseek-v4-flash",
  content: "hello there",
  usage: wire.usage({ promptTokens: 3, completionTokens: 4 })
}
const rateLimited = (seconds: number) =>
  new RateLimited({ message: "busy", retryAfter: Option.some(Duration.seconds(seconds)) })

type Step = ApiError | "ok" | { readonly chunksThen: ApiError }

/** A transport that plays `steps` in order, one per call, and counts calls in `calls`. */
const scriptedTransport = (steps: ReadonlyArray<Step>, calls: Ref.Ref<number>) => {
  const next = Ref.getAndUpdate(calls, (n) => n + 1).pipe(Effect.map((n) => steps[n] ?? "ok"))
  return Layer.succeed(
    Transport,
    Transport.of({
      create: () =>
        Effect.flatMap(next, (step) =>
          step === "ok" ? Effect.succeed(wire.completion(generation)) : Effect.fail(step as ApiError)
        ),
      stream: () =>
        Stream.unwrap(Effect.map(next, (step): Stream.Stream<ChatCompletionChunk, ApiError> => {
          if (step === "ok") return Stream.fromIterable(wire.chunks(generation))
          if ("chunksThen" in step) {
            return Stream.concat(Stream.fromIterable(wire.chunks(generation).slice(0, 2)), Stream.fail(step.chunksThen))
          }
          return Stream.fail(step)
        }))
    })
  )
}

interface Overrides {
  readonly permits?: number
  readonly budget?: Layer.Layer<RetryBudget.RetryBudget>
  readonly bucket?: Layer.Layer<TokenBucket.TokenBucket>
  readonly breaker?: Layer.Layer<CircuitBreaker.CircuitBreaker>
  readonly cache?: Layer.Layer<ResponseCache.ResponseCache>
  readonly retry?: RetryPolicy.Options
  readonly limiter?: ConcurrencyLimiter.Service
  readonly transport?: Layer.Layer<Transport>
}

const pipeline = (steps: ReadonlyArray<Step>, overrides: Overrides = {}) => {
  const { telemetry, counts } = Effect.runSync(Telemetry.makeCounters)
  const limiter = overrides.limiter ?? Effect.runSync(ConcurrencyLimiter.makeFixed(overrides.permits ?? 4))
  const calls = Effect.runSync(Ref.make(0))
  const policy = Policy.layerFromContext.pipe(
    Layer.provide([
      Layer.succeed(ConcurrencyLimiter.ConcurrencyLimiter, limiter),
      RetryPolicy.layer({ base: "100 millis", cap: "1 second", ...overrides.retry }),
      Layer.succeed(Telemetry.Telemetry, telemetry),
      overrides.budget ?? RetryBudget.layerUnlimited,
      overrides.bucket ?? TokenBucket.layerUnlimited,
      overrides.breaker ?? CircuitBreaker.layerNoop
    ])
  )
  const layer = Resilient.layer.pipe(
    Layer.provide([overrides.transport ?? scriptedTransport(steps, calls), policy, overrides.cache ?? Layer.empty])
  )
  return { layer, counts, limiter, calls: Ref.get(calls) }
}

const overloaded = new ServerError({ status: 503, message: "overloaded", retryAfter: Option.none() })

describe("Resilient", () => {
  it.effect("retries a 429 after its Retry-After and returns the completion", () => {
    const { layer, counts, limiter } = pipeline([rateLimited(2)])
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const fiber = yield* Effect.fork(client.create(request))
      yield* TestClock.adjust("1999 millis")
      expect(fiber.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 millis")
      const completion = yield* Fiber.join(fiber)
      expect(completion.choices[0]?.message.content).toBe("hello there")
      const c = yield* counts
      expect([c.failedAttempts, c.rateLimited, c.retries]).toEqual([1, 1, 1])
      expect((yield* limiter.snapshot).inFlight).toBe(0)
    }).pipe(Effect.provide(layer))
  })

  it.effect("does not retry a request the server refused as invalid", () => {
    const { layer, counts } = pipeline([new InvalidRequest({ status: 400, message: "bad" })])
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const error = yield* Effect.flip(client.create(request))
      expect(error._tag).toBe("InvalidRequest")
      expect((yield* counts).retries).toBe(0)
    }).pipe(Effect.provide(layer))
  })

  it.effect("gives the permit back while a call backs off", () => {
    const { layer, limiter } = pipeline([rateLimited(10)], { permits: 1 })
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const first = yield* Effect.fork(client.create(request))
      yield* TestClock.adjust("1 millis")
      // The first call waits 10 s for its retry; the second must not wait behind it.
      const second = yield* client.create(request)
      expect(second.id).toBe("cmpl-1")
      expect(first.unsafePoll()).toBeNull()
      yield* TestClock.adjust("10 seconds")
      yield* Fiber.join(first)
      expect((yield* limiter.snapshot).inFlight).toBe(0)
    }).pipe(Effect.provide(layer))
  })

  it.effect("retries a stream that failed before its first chunk", () => {
    const { layer, counts } = pipeline([rateLimited(1)])
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const fiber = yield* Effect.fork(Stream.runCollect(client.stream(request)))
      yield* TestClock.adjust("1 second")
      const chunks = yield* Fiber.join(fiber)
      const text = Array.from(chunks).map((c) => c.choices[0]?.delta.content ?? "").join("")
      expect(text).toBe("hello there")
      expect((yield* counts).retries).toBe(1)
    }).pipe(Effect.provide(layer))
  })

  it.effect("never retries a stream once content reached the caller", () => {
    const truncated = new StreamTruncated({ partial: { ...emptyPartial, content: "hello th", events: 2 } })
    const { layer, counts, limiter } = pipeline([{ chunksThen: truncated }])
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const received = yield* Ref.make(0)
      const error = yield* client.stream(request).pipe(
        Stream.runForEach(() => Ref.update(received, (n) => n + 1)),
        Effect.flip
      )
      expect(error._tag).toBe("StreamTruncated")
      expect(error._tag === "StreamTruncated" && error.partial.content).toBe("hello th")
      expect(yield* Ref.get(received)).toBe(2)
      expect((yield* counts).retries).toBe(0)
      expect((yield* limiter.snapshot).inFlight).toBe(0)
    }).pipe(Effect.provide(layer))
  })

  it.effect("an open breaker holds calls back without calling the upstream, then lets them through", () => {
    const breaker = CircuitBreaker.layer({ minimumThroughput: 2, failureRatio: 0.5, openFor: "30 seconds" })
    const { layer, calls, counts } = pipeline([overloaded, overloaded], { breaker })
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const first = yield* Effect.fork(client.create(request))
      const second = yield* Effect.fork(client.create(request))
      yield* TestClock.adjust("1 millis")
      expect(yield* calls).toBe(2)
      // Both retries, and a new stream, meet the open breaker: CircuitOpen says wait ~30 s.
      yield* TestClock.adjust("5 seconds")
      const streamed = yield* Effect.fork(Stream.runCollect(client.stream(request)))
      yield* TestClock.adjust("1 millis")
      expect(yield* calls).toBe(2)
      yield* TestClock.adjust("30 seconds")
      yield* Fiber.join(first)
      yield* Fiber.join(second)
      expect((yield* Fiber.join(streamed)).length).toBe(wire.chunks(generation).length)
      expect(yield* calls).toBe(5)
      // CircuitOpen is a local refusal: only the two 503s count as upstream failures.
      expect((yield* counts).failedAttempts).toBe(2)
    }).pipe(Effect.provide(layer))
  })

  it.effect("a spent retry budget holds a retry back for the policy's maxRetryAfter, then surfaces the error", () => {
    const budget = RetryBudget.layer({ ratio: 0, minRetriesPerSecond: 0 })
    const { layer, calls, counts } = pipeline([rateLimited(1)], { budget, retry: { maxRetryAfter: "20 seconds" } })
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const fiber = yield* Effect.fork(Effect.flip(client.create(request)))
      yield* TestClock.adjust("19 seconds")
      expect(fiber.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(fiber))._tag).toBe("RateLimited")
      expect(yield* calls).toBe(1)
      expect((yield* counts).retries).toBe(0)
    }).pipe(Effect.provide(layer))
  })

  it.effect("an exhausted token bucket in fail mode refuses locally, and the retry waits for capacity", () => {
    const bucket = TokenBucket.layer({ requests: { limit: 1, interval: "1 minute" }, onExhausted: "fail" })
    const { layer, calls, counts } = pipeline([], { bucket })
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      yield* client.create(request)
      const second = yield* Effect.fork(client.create(request))
      yield* TestClock.adjust("59 seconds")
      expect(yield* calls).toBe(1)
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(second)
      expect(yield* calls).toBe(2)
      expect((yield* counts).failedAttempts).toBe(0)
    }).pipe(Effect.provide(layer))
  })

  it.scoped("behind the adaptive limiter a burst of 429s does not open the breaker; 503s (overload) and 500s do", () => {
    const steps = (error: ApiError): ReadonlyArray<Step> => Array.from({ length: 6 }, () => error)
    const run = (error: ApiError) =>
      Effect.gen(function*() {
        const calls = yield* Ref.make(0)
        const { telemetry } = yield* Telemetry.makeCounters
        const policy = Policy.layer({
          breaker: { minimumThroughput: 4, failureRatio: 0.5 },
          retry: { base: "1 millis", cap: "1 millis", maxRetries: 10 }
        }).pipe(Layer.provide(Layer.succeed(Telemetry.Telemetry, telemetry)))
        const layer = Resilient.layer.pipe(Layer.provide([scriptedTransport(steps(error), calls), policy]))
        const client = yield* Effect.provide(Resilient.Resilient, layer)
        const fiber = yield* Effect.fork(client.create(request))
        yield* TestClock.adjust("1 second")
        return { done: fiber.unsafePoll() !== null, calls: yield* Ref.get(calls) }
      })
    return Effect.gen(function*() {
      const afterRateLimits = yield* run(rateLimited(0))
      expect(afterRateLimits).toEqual({ done: true, calls: 7 })
      // Six 503s or six 500s trip it at the fourth: the call now waits out the open period.
      for (const error of [overloaded, new ServerError({ status: 500, message: "down", retryAfter: Option.none() })]) {
        expect(yield* run(error)).toEqual({ done: false, calls: 4 })
      }
    })
  })

  it.effect("with a ResponseCache in the context, a repeated deterministic request is answered without a call", () => {
    const { layer, calls } = pipeline([], { cache: ResponseCache.layerMemory() })
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const deterministic = { ...request, temperature: 0 }
      yield* client.create(deterministic)
      yield* client.create(deterministic)
      expect(yield* calls).toBe(1)
      yield* client.create(deterministic, { cache: "bypass" })
      yield* client.create({ ...request, temperature: 0.7 })
      yield* client.create({ ...request, temperature: 0.7 })
      expect(yield* calls).toBe(4)
    }).pipe(Effect.provide(layer))
  })

  it.effect("a ResponseCache merged beside the client, which it never sees, is said once at its first call, not each", () => {
    const { layer, calls } = pipeline([])
    const logs: Array<Logged> = []
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const deterministic = { ...request, temperature: 0 }
      yield* client.create(deterministic)
      yield* client.create(deterministic)
      yield* Stream.runDrain(client.stream(deterministic))
      expect(yield* calls).toBe(3)
      expect(logs.filter((log) => log.level === "WARN").map((log) => log.message)).toEqual([
        "Resilient: a ResponseCache is in the context of its calls but not in the client's own, so it is not used: " +
          "provide it to the client's layer (Layer.provide(ResponseCache.layerMemory())), not beside it"
      ])
    }).pipe(Effect.provide(Layer.merge(layer, ResponseCache.layerMemory())), capturingLogs(logs))
  })

  it.effect("with a ResponseCache in the context, a deterministic stream is answered from it: replayed without a call, and stored only whole", () => {
    const { layer, calls, limiter } = pipeline(["ok", { chunksThen: overloaded }, "ok"], { cache: ResponseCache.layerMemory() })
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const deterministic = { ...request, temperature: 0, stream: true }
      const streamed = yield* ChatStream.fold(client.stream(deterministic))
      expect(yield* ChatStream.fold(client.stream(deterministic))).toEqual(streamed)
      expect(yield* client.create({ ...deterministic, stream: false })).toEqual(streamed)
      expect(yield* calls).toBe(1)
      // A cut stream is the caller's error, with its partial output, and is not stored.
      const other = { ...deterministic, max_tokens: 50 }
      const cut = yield* ChatStream.foldPartial(client.stream(other))
      expect(Option.map(cut.error, (e) => e._tag)).toEqual(Option.some("ServerError"))
      expect(yield* ChatStream.fold(client.stream(other))).toEqual(streamed)
      expect(yield* calls).toBe(3)
      expect((yield* limiter.snapshot).inFlight).toBe(0)
    }).pipe(Effect.provide(layer))
  })

  it.effect("reports each acceptance to the limiter: slow start climbs before any response", () => {
    const limiter = Effect.runSync(ConcurrencyLimiter.makeAdaptive({ initial: 2 }))
    // A transport that is accepted at once and answers a second later.
    const transport = Layer.succeed(Transport, Transport.of({
      create: (_, options) =>
        Effect.zipRight(options?.onAccepted ?? Effect.void, Effect.as(Effect.sleep("1 second"), wire.completion(generation))),
      stream: () => Stream.empty
    }))
    const { layer } = pipeline([], { limiter, transport })
    return Effect.gen(function*() {
      const client = yield* Resilient.Resilient
      const calls = yield* Effect.fork(Effect.all(Array.from({ length: 4 }, () => client.create(request)), { concurrency: "unbounded" }))
      yield* TestClock.adjust(0)
      // Each acceptance of the top request let one more go: all four are in flight at once.
      expect(yield* limiter.snapshot).toEqual({ limit: 5, inFlight: 4, queued: 0 })
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(calls)
    }).pipe(Effect.provide(layer))
  })

  describe("spans", () => {
    /** A pipeline whose transport reports the span it runs in. */
    const spanPipeline = (seen: Array<Tracer.AnySpan | undefined>) =>
      Resilient.layer.pipe(
        Layer.provide([
          Policy.layer(),
          Layer.succeed(Transport, Transport.of({
            create: () =>
              Effect.map(Effect.option(Effect.currentSpan), (span) => {
                seen.push(Option.getOrUndefined(span))
                return wire.completion(generation)
              }),
            stream: () => Stream.empty
          }))
        ])
      )
    const nameOf = (span: Tracer.AnySpan | undefined) => span?._tag === "Span" ? span.name : undefined

    it.effect("with a tracer installed, a call runs in a span with the model, parent of the transport's", () => {
      const seen: Array<Tracer.AnySpan | undefined> = []
      const made: Array<Tracer.Span> = []
      const builtIn = Context.get(DefaultServices.liveServices, Tracer.Tracer)
      const recording = Tracer.make({
        span: (...args) => {
          const span = builtIn.span(...args)
          made.push(span)
          return span
        },
        context: (f) => f()
      })
      return Effect.gen(function*() {
        const client = yield* Resilient.Resilient
        yield* client.create(request).pipe(Effect.withSpan("app"))
        expect(made.map((span) => span.name)).toEqual(["app", "weatherproof.Resilient.create"])
        const [app, call] = made
        expect(seen).toEqual([call])
        expect(Object.fromEntries(call!.attributes)).toMatchObject({
          "gen_ai.operation.name": "chat",
          "gen_ai.provider.name": "deepseek",
          "gen_ai.request.model": request.model,
          "gen_ai.response.model": generation.model
        })
        expect(call!.parent).toEqual(Option.some(app))
        expect(call!.status._tag).toBe("Ended")
      }).pipe(Effect.provide(spanPipeline(seen)), Effect.withTracer(recording))
    })

    it.effect("with Effect's built-in tracer, which exports nowhere, no span is made per call", () => {
      const seen: Array<Tracer.AnySpan | undefined> = []
      return Effect.gen(function*() {
        const client = yield* Resilient.Resilient
        yield* client.create(request).pipe(Effect.withSpan("app"))
        expect(seen.map(nameOf)).toEqual(["app"])
      }).pipe(Effect.provide(spanPipeline(seen)))
    })
  })
})

describe("Resilient.layerConfig", () => {
  it.effect("a DEEPSEEK_BASE_URL that is no URL, or carries credentials, is a ConfigError, not a defect", () =>
    Effect.gen(function*() {
      for (const baseUrl of ["notaurl", "https://user:secret@api.deepseek.com"]) {
        const error = yield* Effect.flip(Layer.build(Resilient.layerConfig).pipe(
          Effect.scoped,
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DEEPSEEK_BASE_URL", baseUrl], ["DEEPSEEK_API_KEY", "sk-a"]])))
        ))
        expect(ConfigError.isConfigError(error)).toBe(true)
        expect(String(error)).toContain("DEEPSEEK_BASE_URL")
        expect(String(error)).not.toContain("secret")
      }
    }))

  it.effect("a proxy in the environment that is no http(s) URL is a ConfigError too, not a defect; a proxy given in the options is not read from it", () =>
    Effect.gen(function*() {
      const environment = ConfigProvider.fromMap(
        new Map([["DEEPSEEK_API_KEY", "sk-a"], ["HTTPS_PROXY", "socks5://user:secret@proxy.corp:1080"]])
      )
      const error = yield* Effect.flip(
        Layer.build(Resilient.layerConfig).pipe(Effect.scoped, Effect.withConfigProvider(environment))
      )
      expect(ConfigError.isConfigError(error)).toBe(true)
      expect(String(error)).toContain("HTTPS_PROXY")
      expect(String(error)).not.toContain("secret")
      yield* Layer.build(Resilient.layerDefault({ keys: [Redacted.make("sk-a")], proxy: "none" })).pipe(
        Effect.scoped,
        Effect.withConfigProvider(environment)
      )
    }))
})
