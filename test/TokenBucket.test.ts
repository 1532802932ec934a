import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as TestClock from "effect/TestClock"
import type { ChatCompletionRequest } from "../src/ChatSchema.js"
import * as TokenBucket from "../src/TokenBucket.js"
import { processClock } from "./support/processClock.js"
import * as ApiError from "../src/ApiError.js"

const bucket = (options: TokenBucket.Options) =>
  Effect.provide(TokenBucket.TokenBucket, TokenBucket.layer(options))

/** Forks one `take` per cost, in order; each fiber answers the clock time its take returned at. */
const forkTakes = (limiter: TokenBucket.Service, costs: ReadonlyArray<TokenBucket.Cost>) =>
  Effect.forEach(costs, (cost) => Effect.fork(Effect.zipRight(limiter.take(cost), Clock.currentTimeMillis)))

const joinAll = <A, E>(fibers: ReadonlyArray<Fiber.Fiber<A, E>>) => Effect.forEach(fibers, Fiber.join)

const failure = <A>(effect: Effect.Effect<A, TokenBucket.RateLimitExceeded>) => Effect.flip(effect)

const millisOf = (error: TokenBucket.RateLimitExceeded) => Option.map(error.retryAfter, Duration.toMillis)

describe("TokenBucket", () => {
  it.effect("spreads requests beyond the burst at the limit's rate, in arrival order", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({ requests: { limit: 2, interval: "1 second" } })
      const fibers = yield* forkTakes(limiter, [{}, {}, {}, {}, {}])
      yield* TestClock.adjust("2 seconds")
      expect(yield* joinAll(fibers)).toEqual([0, 0, 500, 1000, 1500])
    }))

  it.effect("a waiter is not let through before its turn", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({ requests: { limit: 1, interval: "1 second" } })
      yield* limiter.take()
      const fiber = yield* Effect.fork(limiter.take())
      yield* TestClock.adjust("999 millis")
      expect(fiber.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 millis")
      yield* Fiber.join(fiber)
    }))

  it.effect("charges a call's token cost", () =>
    Effect.gen(function*() {
      // 1000 tokens a minute: one token every 60 ms.
      const limiter = yield* bucket({ tokens: { limit: 1000, interval: "1 minute" } })
      const fibers = yield* forkTakes(limiter, [{ tokens: 800 }, { tokens: 400 }, { tokens: 100 }])
      yield* TestClock.adjust("1 minute")
      expect(yield* joinAll(fibers)).toEqual([0, 200 * 60, 300 * 60])
    }))

  it.effect("draws requests and tokens together: the scarcer bucket sets the wait", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({
        requests: { limit: 10, interval: "1 second" },
        tokens: { limit: 100, interval: "1 second" }
      })
      const fibers = yield* forkTakes(limiter, [{ tokens: 100 }, { tokens: 50 }, { requests: 8 }, {}])
      yield* TestClock.adjust("5 seconds")
      // The second call is 50 tokens short (10 ms each); the fourth is one request short (100 ms)
      // and, drawing no tokens, does not queue behind the token debt.
      expect(yield* joinAll(fibers)).toEqual([0, 500, 0, 100])
    }))

  it.effect("burst sets how much goes at once; the rate is unchanged", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({ requests: { limit: 1, interval: "1 second" }, burst: { requests: 3 } })
      const fibers = yield* forkTakes(limiter, [{}, {}, {}, {}, {}])
      yield* TestClock.adjust("3 seconds")
      expect(yield* joinAll(fibers)).toEqual([0, 0, 0, 1000, 2000])
    }))

  it.effect("refills no further than the burst after a quiet spell", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({
        requests: { limit: 10, interval: "1 second" },
        burst: { requests: 2 },
        onExhausted: "fail"
      })
      yield* limiter.take()
      yield* TestClock.adjust("1 minute")
      yield* limiter.take({ requests: 2 })
      const error = yield* failure(limiter.take())
      expect(millisOf(error)).toEqual(Option.some(100))
    }))

  it.effect("a clock stepped back adds nothing, and refills from its new time on", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(3_600_000)
      const limiter = yield* bucket({ requests: { limit: 2, interval: "1 second" }, onExhausted: "fail" })
      yield* limiter.take()
      yield* limiter.take()
      // The wall clock steps a minute back (an NTP correction, a restored VM).
      yield* TestClock.setTime(3_540_000)
      expect(millisOf(yield* failure(limiter.take()))).toEqual(Option.some(500))
      yield* TestClock.adjust("500 millis")
      yield* limiter.take()
      expect(millisOf(yield* failure(limiter.take()))).toEqual(Option.some(500))
    }))

  it.effect("a step of the system clock forwards adds nothing", () =>
    Effect.gen(function*() {
      const { clock, stepWall } = yield* processClock
      const limiter = yield* Effect.withClock(bucket({ requests: { limit: 2, interval: "1 second" }, onExhausted: "fail" }), clock)
      yield* Effect.withClock(Effect.zipRight(limiter.take(), limiter.take()), clock)
      stepWall(60_000)
      expect(millisOf(yield* failure(Effect.withClock(limiter.take(), clock)))).toEqual(Option.some(500))
    }))

  it.effect("fail mode refuses at once, saying when there will be room", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({ requests: { limit: 2, interval: "1 second" }, onExhausted: "fail" })
      yield* limiter.take()
      yield* limiter.take()
      const error = yield* failure(limiter.take())
      expect(error._tag).toBe("RateLimitExceeded")
      expect(error.dimension).toBe("requests")
      expect(ApiError.isRetryable(ApiError.classify(error))).toBe(true)
      expect(millisOf(error)).toEqual(Option.some(500))
      // The refusal drew nothing: after exactly retryAfter there is room for one call.
      yield* TestClock.adjust("500 millis")
      yield* limiter.take()
      expect(millisOf(yield* failure(limiter.take()))).toEqual(Option.some(500))
    }))

  it.effect("wait mode: a waiter gives up when its abandonWhen completes, with a final RateLimitExceeded, and its cost goes back", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({ requests: { limit: 1, interval: "1 second" } })
      yield* limiter.take()
      const gaveUp = yield* Effect.fork(Effect.flip(limiter.take({}, { abandonWhen: Effect.sleep("300 millis") })))
      yield* TestClock.adjust("300 millis")
      const error = yield* Fiber.join(gaveUp)
      expect(error).toMatchObject({ _tag: "RateLimitExceeded", dimension: "requests", gaveUp: true })
      expect(error.message).toBe("gave up waiting for the client-side requests rate limit (its maxWait ran out, or its abandonWhen completed)")
      expect(ApiError.isRetryable(ApiError.classify(error))).toBe(false)
      // Its draw was given back: the next caller waits what is left of the first's second, not two.
      const next = yield* Effect.fork(limiter.take())
      yield* TestClock.adjust("699 millis")
      expect(next.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 millis")
      yield* Fiber.join(next)
    }))

  it.effect("fail mode: a refill of a fraction of a millisecond (3 a second) asks for the whole millisecond that holds it", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({ requests: { limit: 3, interval: "1 second" }, burst: { requests: 1 }, onExhausted: "fail" })
      yield* limiter.take()
      const error = yield* failure(limiter.take())
      // 333.33 ms: a retry at it read the clock's 333 ms and was refused again.
      expect(millisOf(error)).toEqual(Option.some(334))
      yield* TestClock.adjust("334 millis")
      yield* limiter.take()
    }))

  it.effect("fail mode: a token refusal gives back the request it drew", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({
        requests: { limit: 1, interval: "1 second" },
        tokens: { limit: 1000, interval: "1 second" },
        onExhausted: "fail"
      })
      yield* limiter.take({ requests: 0, tokens: 900 })
      const error = yield* failure(limiter.take({ tokens: 300 }))
      expect(error.dimension).toBe("tokens")
      expect(millisOf(error)).toEqual(Option.some(200))
      yield* limiter.take({ tokens: 100 })
    }))

  it.effect("fail mode: a cost above the burst never fits, so it is not retryable", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({ tokens: { limit: 1000, interval: "1 minute" }, onExhausted: "fail" })
      const error = yield* failure(limiter.take({ tokens: 1001 }))
      expect(error.dimension).toBe("tokens")
      expect(Option.isNone(error.retryAfter)).toBe(true)
      expect(ApiError.isRetryable(ApiError.classify(error))).toBe(false)
      yield* limiter.take({ tokens: 1000 })
    }))

  it.effect("a waiter interrupted before its turn gives its units back", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({ requests: { limit: 1, interval: "1 second" } })
      yield* limiter.take()
      const abandoned = yield* Effect.fork(limiter.take())
      yield* TestClock.adjust("10 millis")
      yield* Fiber.interrupt(abandoned)
      const fibers = yield* forkTakes(limiter, [{}])
      yield* TestClock.adjust("5 seconds")
      expect(yield* joinAll(fibers)).toEqual([1000])
    }))

  it.effect("a waiter that gives up with others after it gives nothing back: they keep their turns, and a newcomer goes after them, never beside", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({ requests: { limit: 60, interval: "1 minute" }, burst: { requests: 1 } })
      yield* limiter.take()
      const [abandoned] = yield* forkTakes(limiter, [{}])
      const [kept] = yield* forkTakes(limiter, [{}])
      yield* TestClock.adjust("500 millis")
      yield* Fiber.interrupt(abandoned!)
      const [late] = yield* forkTakes(limiter, [{}])
      yield* TestClock.adjust("5 seconds")
      // Given back, the newcomer went at 2 s beside the waiter before it: two at once, a burst of one.
      expect(yield* joinAll([kept!, late!])).toEqual([2000, 3000])
    }))

  it.effect("caps the rates at utilization of a known limit", () =>
    Effect.gen(function*() {
      const limiter = yield* bucket({
        knownLimit: { requests: 100, tokens: 1_000_000, interval: "1 minute" },
        utilization: 0.5,
        onExhausted: "fail"
      })
      yield* Effect.repeatN(limiter.take(), 49)
      const error = yield* failure(limiter.take())
      expect(error.dimension).toBe("requests")
      expect(millisOf(error)).toEqual(Option.some(1200))
      yield* TestClock.adjust("1200 millis")
      const tooMany = yield* failure(limiter.take({ tokens: 500_001 }))
      expect(Option.isNone(tooMany.retryAfter)).toBe(true)
    }))

  it.effect("utilization defaults to 0.8, and a stricter explicit rate wins", () =>
    Effect.gen(function*() {
      const known = yield* bucket({ knownLimit: { requests: 10, interval: "1 second" }, onExhausted: "fail" })
      yield* Effect.repeatN(known.take(), 7)
      expect(millisOf(yield* failure(known.take()))).toEqual(Option.some(125))

      const stricter = yield* bucket({
        requests: { limit: 60, interval: "1 minute" },
        knownLimit: { requests: 10, interval: "1 second" },
        onExhausted: "fail"
      })
      yield* Effect.repeatN(stricter.take(), 59)
      expect(millisOf(yield* failure(stricter.take()))).toEqual(Option.some(1000))
    }))

  it.effect("rejects invalid options with a defect", () =>
    Effect.gen(function*() {
      const invalid = [
        { requests: { limit: 0, interval: "1 second" } },
        { tokens: { limit: 10, interval: 0 } },
        { knownLimit: { requests: 10, interval: "1 second" }, utilization: 1.5 },
        { requests: { limit: 10, interval: "1 second" }, burst: { requests: 0 } }
      ] satisfies ReadonlyArray<TokenBucket.Options>
      for (const options of invalid) {
        const exit = yield* Effect.exit(bucket(options))
        expect(exit._tag === "Failure" && exit.cause._tag).toBe("Die")
      }
    }))

  it.effect.each(["wait", "fail"] as const)("a cost that is no finite count >= 0 dies, and leaves the bucket as it was (%s)", (onExhausted) =>
    Effect.gen(function*() {
      const limiter = yield* bucket({ tokens: { limit: 100, interval: "1 second" }, onExhausted })
      for (const cost of [{ tokens: Number.NaN }, { tokens: -1e9 }, { requests: Number.POSITIVE_INFINITY }]) {
        const exit = yield* Effect.exit(limiter.take(cost))
        expect(exit._tag === "Failure" && Cause.squash(exit.cause)).toBeInstanceOf(Cause.IllegalArgumentException)
      }
      // The bucket holds its burst and no more: the second call waits its second, or is refused.
      if (onExhausted === "fail") {
        yield* limiter.take({ tokens: 100 })
        expect(millisOf(yield* failure(limiter.take({ tokens: 100 })))).toEqual(Option.some(1000))
      } else {
        const fibers = yield* forkTakes(limiter, [{ tokens: 100 }, { tokens: 100 }])
        yield* TestClock.adjust("1 second")
        expect(yield* joinAll(fibers)).toEqual([0, 1000])
      }
    }))

  it.effect("layerUnlimited never waits", () =>
    Effect.gen(function*() {
      const limiter = yield* TokenBucket.TokenBucket
      yield* Effect.repeatN(limiter.take({ requests: 1000, tokens: 1e9 }), 100)
    }).pipe(Effect.provide(TokenBucket.layerUnlimited)))

  // Powers of two keep the refill arithmetic exact: a request every 256 ms, a token every 1 ms.
  const propertyOptions = {
    requests: { limit: 4, interval: "1024 millis" },
    tokens: { limit: 1000, interval: "1 second" },
    onExhausted: "fail"
  } as const
  const step = FastCheck.oneof(
    FastCheck.record({ advance: FastCheck.integer({ min: 0, max: 1500 }) }),
    FastCheck.record({ requests: FastCheck.integer({ min: 1, max: 3 }), tokens: FastCheck.integer({ min: 0, max: 600 }) })
  )

  it.effect.prop(
    "fail mode: grants in any span stay within burst + rate · span, and retryAfter is exact",
    { steps: FastCheck.array(step, { maxLength: 40, size: "max" }) },
    ({ steps }) =>
      Effect.gen(function*() {
        const limiter = yield* bucket(propertyOptions)
        const grants: Array<{ readonly at: number; readonly requests: number; readonly tokens: number }> = []
        const grant = (cost: { readonly requests: number; readonly tokens: number }) =>
          Effect.map(Clock.currentTimeMillis, (at) => grants.push({ at, ...cost }))
        for (const next of steps) {
          if ("advance" in next) {
            yield* TestClock.adjust(next.advance)
            continue
          }
          const result = yield* Effect.either(limiter.take(next))
          if (Either.isRight(result)) {
            yield* grant(next)
            continue
          }
          // Refused: still refused 1 ms before retryAfter, granted exactly at it.
          const wait = Option.getOrThrow(millisOf(result.left))
          expect(wait).toBeGreaterThan(0)
          yield* TestClock.adjust(wait - 1)
          expect(Either.isLeft(yield* Effect.either(limiter.take(next)))).toBe(true)
          yield* TestClock.adjust(1)
          yield* limiter.take(next)
          yield* grant(next)
        }
        for (const from of grants) {
          const span = grants.filter((g) => g.at >= from.at)
          for (const to of span) {
            const inSpan = span.filter((g) => g.at <= to.at)
            const elapsed = to.at - from.at
            expect(inSpan.reduce((n, g) => n + g.requests, 0)).toBeLessThanOrEqual(4 + elapsed / 256)
            expect(inSpan.reduce((n, g) => n + g.tokens, 0)).toBeLessThanOrEqual(1000 + elapsed)
          }
        }
      }),
    { fastCheck: { numRuns: 25 } }
  )

  describe("estimateTokens", () => {
    const request = (extra: Partial<ChatCompletionRequest>): ChatCompletionRequest => ({
      model: "deepseek-v4-flash",
      messages: [{ role: "user", content: "a".repeat(400) }],
      ...extra
    })

    it("counts about 4 characters per token of message text", () => {
      expect(TokenBucket.estimateTokens(request({}))).toBe(100)
      expect(TokenBucket.estimateTokens(request({ messages: [{ role: "user", content: "abcde" }] }))).toBe(2)
    })

    it("adds max_tokens when given", () => {
      expect(TokenBucket.estimateTokens(request({ max_tokens: 50 }))).toBe(150)
      expect(TokenBucket.costOf(request({ max_tokens: 50 }))).toEqual({ requests: 1, tokens: 150 })
    })

    it("counts every message, content parts, reasoning sent back and tool calls", () => {
      const estimate = TokenBucket.estimateTokens(request({
        messages: [
          { role: "system", content: "s".repeat(40) },
          { role: "user", content: [{ type: "text", text: "u".repeat(40) }, { type: "image_url" }] },
          {
            role: "assistant",
            content: null,
            reasoning_content: "r".repeat(40),
            tool_calls: [{ id: "1", type: "function", function: { name: "n".repeat(20), arguments: "x".repeat(20) } }]
          },
          { role: "tool", content: "t".repeat(40), tool_call_id: "1" }
        ]
      }))
      expect(estimate).toBe(50)
    })

    it("counts tool definitions", () => {
      const tools = [{ type: "function" as const, function: { name: "lookup", description: "d".repeat(100) } }]
      expect(TokenBucket.estimateTokens(request({ tools }))).toBe(100 + Math.ceil(JSON.stringify(tools).length / 4))
      expect(TokenBucket.estimateTokens(request({ tools: null, max_tokens: null }))).toBe(100)
    })
  })
})
