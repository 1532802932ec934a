import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schema from "effect/Schema"
import * as Router from "../src/Router.js"
import * as ApiError from "../src/ApiError.js"

const messages = [{ role: "user" as const, content: "Is this spam?" }] as const

/** Runs `effect` with a logger that collects warnings (message and annotations). */
const collectingWarnings = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const warnings: Array<{ message: unknown; annotations: Record<string, unknown> }> = []
    const logger = Logger.make(({ annotations, logLevel, message }) => {
      if (LogLevel.greaterThanEqual(logLevel, LogLevel.Warning)) {
        warnings.push({ message, annotations: Object.fromEntries(HashMap.toEntries(annotations)) })
      }
    })
    const result = yield* effect.pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
    return { result, warnings }
  })

describe("Router routing", () => {
  it.effect("defaults: flash without thinking for simple tasks, pro with thinking for reasoning", () =>
    Effect.gen(function*() {
      const router = yield* Router.make()
      for (const task of ["classification", "extraction", "summarisation", "chat"] as const) {
        const routed = yield* router.route({ messages }, { task })
        expect(routed).toEqual({
          request: { messages, model: "deepseek-v4-flash", thinking: { type: "disabled" } },
          task,
          warnings: []
        })
      }
      const reasoning = yield* router.route({ messages }, { task: "reasoning" })
      expect(reasoning.request).toEqual({ messages, model: "deepseek-v4-pro", thinking: { type: "enabled" } })
      expect(reasoning.warnings).toEqual([])
    }))

  it.effect("\"auto\" and \"\" leave the model to the table; other fields pass through", () =>
    Effect.gen(function*() {
      const router = yield* Router.make()
      for (const model of ["auto", ""]) {
        const routed = yield* router.route({ model, messages, temperature: 0, max_tokens: 5 }, { task: "extraction" })
        expect(routed.request).toEqual({
          model: "deepseek-v4-flash",
          messages,
          temperature: 0,
          max_tokens: 5,
          thinking: { type: "disabled" }
        })
      }
    }))

  it.effect("an explicit model wins unless override is \"force\"", () =>
    Effect.gen(function*() {
      const router = yield* Router.make()
      const request = { model: "deepseek-v4-pro", messages }
      const kept = yield* router.route(request, { task: "classification" })
      expect(kept.request).toMatchObject({ model: "deepseek-v4-pro", thinking: { type: "disabled" } })
      const forced = yield* router.route(request, { task: "classification", override: "force" })
      expect(forced.request.model).toBe("deepseek-v4-flash")

      const forcing = yield* Router.make({ override: "force" })
      expect((yield* forcing.route(request, { task: "chat" })).request.model).toBe("deepseek-v4-flash")
      // A per-call override beats the router's.
      expect((yield* forcing.route(request, { task: "chat", override: "respect" })).request.model).toBe("deepseek-v4-pro")
      // So does the table's reasoning effort, none included: a forced table caps what reasoning costs.
      const effortful = { ...request, reasoning_effort: "max" }
      expect((yield* forcing.route(effortful, { task: "reasoning" })).request).not.toHaveProperty("reasoning_effort")
      expect((yield* forcing.route(effortful, { task: "reasoning", override: "respect" })).request.reasoning_effort).toBe("max")
    }))

  it.effect("the table is overridable per task; unset tasks keep their defaults", () =>
    Effect.gen(function*() {
      const router = yield* Router.make({
        routes: { reasoning: { model: "deepseek-v4-flash", thinking: "enabled", reasoningEffort: "max" } }
      })
      expect(router.routes.chat).toEqual(Router.defaultRoutes.chat)
      const reasoning = yield* router.route({ messages }, { task: "reasoning" })
      expect(reasoning.request).toEqual({
        messages,
        model: "deepseek-v4-flash",
        thinking: { type: "enabled" },
        reasoning_effort: "max"
      })
      // What the request sets wins over the route.
      const ownEffort = yield* router.route({ messages, reasoning_effort: "high" }, { task: "reasoning" })
      expect(ownEffort.request.reasoning_effort).toBe("high")
      // A reasoning_effort alone asks for thinking: a route without thinking does not turn it off.
      const effortOnChat = yield* router.route({ messages, reasoning_effort: "high" }, { task: "chat" })
      expect(effortOnChat.request).toMatchObject({ thinking: { type: "enabled" }, reasoning_effort: "high" })
    }))

  it.effect("without a task, a named model passes through untouched; an unnamed one gets defaultTask", () =>
    Effect.gen(function*() {
      const router = yield* Router.make({ defaultTask: "reasoning" })
      const request = { model: "deepseek-reasoner", messages, thinking: { type: "enabled" as const } }
      expect(yield* router.route(request)).toEqual({ request, task: undefined, warnings: [] })
      const unnamed = yield* router.route({ messages })
      expect(unnamed.task).toBe("reasoning")
      expect(unnamed.request.model).toBe("deepseek-v4-pro")
      const chatByDefault = yield* Router.make()
      expect((yield* chatByDefault.route({ messages })).request.model).toBe("deepseek-v4-flash")
    }))
})

describe("Router thinking on a simple task", () => {
  const thinkingRequest = { messages, thinking: { type: "enabled" as const } }

  it.effect("\"warn\" (default) returns a warning value and logs it", () =>
    Effect.gen(function*() {
      const router = yield* Router.make()
      const { result, warnings } = yield* collectingWarnings(router.route(thinkingRequest, { task: "extraction" }))
      expect(result.request).toMatchObject({ model: "deepseek-v4-flash", thinking: { type: "enabled" } })
      expect(result.warnings).toEqual([{
        _tag: "ThinkingOnSimpleTask",
        task: "extraction",
        model: "deepseek-v4-flash",
        reason: "thinking-enabled",
        message: "thinking is enabled on deepseek-v4-flash for the simple task \"extraction\""
      }])
      expect(warnings).toEqual([{
        message: ["Router: thinking is enabled on deepseek-v4-flash for the simple task \"extraction\""],
        annotations: { task: "extraction", model: "deepseek-v4-flash" }
      }])
    }))

  it.effect("a model that always thinks is flagged too", () =>
    Effect.gen(function*() {
      const router = yield* Router.make()
      const routed = yield* router.route({ model: "deepseek-reasoner", messages }, { task: "chat" })
      expect(routed.warnings).toMatchObject([{ reason: "thinking-model", model: "deepseek-reasoner", task: "chat" }])
      const custom = yield* Router.make({ thinkingModels: ["my-thinker"] })
      const flagged = yield* custom.route({ model: "my-thinker", messages }, { task: "chat" })
      expect(flagged.warnings).toMatchObject([{ reason: "thinking-model" }])
      expect((yield* custom.route({ model: "deepseek-reasoner", messages }, { task: "chat" })).warnings).toEqual([])
    }))

  it.effect("\"refuse\" fails with a typed RoutingRefused; \"allow\" lets it through silently", () =>
    Effect.gen(function*() {
      const refusing = yield* Router.make({ thinkingOnSimpleTask: "refuse" })
      const error = yield* Effect.flip(refusing.route(thinkingRequest, { task: "classification" }))
      // However thinking is asked for.
      const effortful = yield* Effect.flip(refusing.route({ messages, reasoning_effort: "high" }, { task: "classification" }))
      expect(effortful).toMatchObject({ _tag: "RoutingRefused", reason: "thinking-enabled" })
      expect(error).toBeInstanceOf(Router.RoutingRefused)
      expect(error).toMatchObject({
        _tag: "RoutingRefused",
        task: "classification",
        model: "deepseek-v4-flash",
        reason: "thinking-enabled"
      })
      expect(ApiError.classify(error)._tag).toBe("Caller")
      expect(error.message).toBe("thinking is enabled on deepseek-v4-flash for the simple task \"classification\"")

      const allowing = yield* Router.make({ thinkingOnSimpleTask: "allow" })
      const { result, warnings } = yield* collectingWarnings(allowing.route(thinkingRequest, { task: "classification" }))
      expect(result.request.thinking).toEqual({ type: "enabled" })
      expect(result.warnings).toEqual([])
      expect(warnings).toEqual([])
    }))

  it.effect("no warning for reasoning, for a task the table routes to thinking, or when force disables thinking", () =>
    Effect.gen(function*() {
      const refusing = yield* Router.make({
        thinkingOnSimpleTask: "refuse",
        routes: { summarisation: { model: "deepseek-v4-flash", thinking: "enabled" } }
      })
      expect((yield* refusing.route(thinkingRequest, { task: "reasoning" })).warnings).toEqual([])
      expect((yield* refusing.route(thinkingRequest, { task: "summarisation" })).warnings).toEqual([])
      const forced = yield* refusing.route(thinkingRequest, { task: "chat", override: "force" })
      expect(forced.request.thinking).toEqual({ type: "disabled" })
    }))
})

describe("Router configuration", () => {
  it("the Task schema decodes the batch line's top-level task field", () => {
    const Line = Schema.Struct({ custom_id: Schema.String, task: Schema.optional(Router.Task) })
    const decode = Schema.decodeUnknownEither(Line)
    expect(decode({ custom_id: "a", task: "extraction" })).toEqual(Either.right({ custom_id: "a", task: "extraction" }))
    expect(Either.isLeft(decode({ custom_id: "a", task: "translation" }))).toBe(true)
  })

  it.effect("make dies on invalid options, naming the field", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(Router.make({ routes: { chat: { model: "", thinking: "disabled" } } }))
      expect(Exit.isFailure(exit) && String(exit.cause)).toMatch(/routes[\s\S]*chat[\s\S]*model/)
      // "auto" leaves the model to the router: a route sending it would ask the upstream for "auto".
      const auto = yield* Effect.exit(Router.make({ routes: { chat: { model: "auto", thinking: "disabled" } } }))
      expect(Exit.isFailure(auto) && String(auto.cause)).toContain(`a route names a model; "auto" leaves it to the router`)
    }))

  it.effect("make reads a field set to undefined as unset (a caller compiled without exactOptionalPropertyTypes)", () =>
    Effect.gen(function*() {
      const unset = undefined as never
      const router = yield* Router.make({ defaultTask: unset, routes: { chat: unset, reasoning: { model: "r", thinking: "enabled", reasoningEffort: unset } } })
      expect(router.routes.chat).toEqual(Router.defaultRoutes.chat)
      expect(router.routes.reasoning).toEqual({ model: "r", thinking: "enabled" })
      expect((yield* router.route({ messages })).request.model).toBe(Router.defaultRoutes.chat.model)
    }))

  const withEnv = (env: Record<string, string>) =>
    Layer.provide(Router.layerConfig, Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))))

  it.effect("layerConfig reads options as JSON from WEATHERPROOF_ROUTER", () =>
    Effect.gen(function*() {
      const router = yield* Router.Router
      expect(router.routes.reasoning).toEqual({ model: "deepseek-v4-flash", thinking: "enabled" })
      const error = yield* Effect.flip(router.route({ messages, thinking: { type: "enabled" } }, { task: "chat" }))
      expect(error._tag).toBe("RoutingRefused")
    }).pipe(Effect.provide(withEnv({
      WEATHERPROOF_ROUTER: JSON.stringify({
        routes: { reasoning: { model: "deepseek-v4-flash", thinking: "enabled" } },
        thinkingOnSimpleTask: "refuse"
      })
    }))))

  it.effect("layerConfig defaults when unset, and fails with a ConfigError naming each problem on bad options", () =>
    Effect.gen(function*() {
      const router = yield* Effect.provide(Router.Router, withEnv({}))
      expect(router.routes).toEqual(Router.defaultRoutes)
      expect((yield* Effect.provide(Router.Router, withEnv({ WEATHERPROOF_ROUTER: "" }))).routes).toEqual(Router.defaultRoutes)
      const error = yield* Effect.flip(
        Layer.build(withEnv({ WEATHERPROOF_ROUTER: JSON.stringify({ thinkingOnSimpleTask: "nag" }) })).pipe(Effect.scoped)
      )
      expect(String(error)).toContain("thinkingOnSimpleTask")
      const typo = yield* Effect.flip(
        Layer.build(withEnv({ WEATHERPROOF_ROUTER: JSON.stringify({ thinkingOnSimpleTasks: "refuse" }) })).pipe(Effect.scoped)
      )
      expect(String(typo)).toContain("WEATHERPROOF_ROUTER: \"thinkingOnSimpleTasks: is unexpected, expected: ")
      const nestedTypo = yield* Effect.flip(
        Layer.build(withEnv({
          WEATHERPROOF_ROUTER: JSON.stringify({ routes: { chat: { model: "m", thinking: "disabled", effort: "max" } } })
        })).pipe(Effect.scoped)
      )
      expect(String(nestedTypo)).toContain("\"routes.chat.effort: is unexpected, expected: ")
      // One line per problem, never the schema's tree; text that is not JSON says so.
      const wrongType = yield* Effect.flip(
        Layer.build(withEnv({ WEATHERPROOF_ROUTER: JSON.stringify({ routes: { reasoning: { model: 3 } } }) })).pipe(Effect.scoped)
      )
      expect(String(wrongType)).toContain(
        "\"routes.reasoning.model: Expected string, actual 3; routes.reasoning.thinking: is missing\""
      )
      expect(String(wrongType)).not.toContain("└─")
      const notJson = yield* Effect.flip(Layer.build(withEnv({ WEATHERPROOF_ROUTER: "{routes" })).pipe(Effect.scoped))
      expect(String(notJson)).toContain("expected a JSON object of Router options, not valid JSON (column 2: Expected property name or '}')")
    }))
})
