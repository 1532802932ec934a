/**
 * Picks the model and thinking mode of a request from the task it declares, so cheap work goes
 * to a cheap model without thinking and only reasoning pays for thinking.
 *
 * How a task is declared:
 * - in code: `router.route(request, { task: "extraction" })`;
 * - in a batch input line: a top-level `task` field next to `custom_id`
 *   (`{"custom_id":"a","task":"classification","method":"POST","url":"/v1/chat/completions","body":{…}}`),
 *   kept out of `body` so nothing unknown is sent upstream. Decode it with the `Task` schema.
 *
 * The table fills what the request leaves unset — `model` (absent, `""` or `"auto"`),
 * `thinking`, `reasoning_effort` — and what the request sets wins, unless `override: "force"`
 * makes the table win. A request with no task that names its model passes through untouched;
 * one that names no model is routed as `defaultTask`.
 *
 * Thinking on a simple task (one whose route disables thinking: by default every task but
 * `reasoning`) is usually money spent for nothing: by policy it is allowed, warned about (a
 * `RoutingWarning` value, also logged) or refused with `RoutingRefused`.
 *
 * @since 0.1.0
 */

import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Record from "effect/Record"
import * as Schema from "effect/Schema"
import type { ChatCompletionRequest } from "./ChatSchema.js"
import { assertValid, withoutUndefined } from "./internal/options.js"
import * as SchemaIssues from "./internal/schemaIssues.js"
import { parseJsonSaying } from "./internal/text.js"
import { TaggedError } from "./internal/sdkError.js"

/**
 * What a request is for.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Task = Schema.Literal("classification", "extraction", "summarisation", "chat", "reasoning")
/**
 * @since 0.1.0
 * @category models
 */
export type Task = typeof Task.Type

/**
 * The model and thinking mode of a task; `reasoningEffort` is sent as `reasoning_effort` when
 * set.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Route = Schema.Struct({
  // "auto" is what leaves the model to the router: a route that sent it would ask the upstream for "auto".
  model: Schema.NonEmptyString.pipe(
    Schema.filter((model) => model !== "auto" || "a route names a model; \"auto\" leaves it to the router")
  ),
  thinking: Schema.Literal("enabled", "disabled"),
  reasoningEffort: Schema.optionalWith(Schema.NonEmptyString, { exact: true })
}).annotations({ identifier: "Route" })
/**
 * @since 0.1.0
 * @category models
 */
export type Route = typeof Route.Type

/**
 * A route per task.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Routes = Schema.Struct({
  classification: Route,
  extraction: Route,
  summarisation: Route,
  chat: Route,
  reasoning: Route
}).annotations({ identifier: "Routes" })
/**
 * @since 0.1.0
 * @category models
 */
export type Routes = typeof Routes.Type

const flash: Route = { model: "deepseek-v4-flash", thinking: "disabled" }

/**
 * Flash without thinking for every task but `reasoning`, which gets pro with thinking.
 *
 * @since 0.1.0
 */
export const defaultRoutes: Routes = {
  classification: flash,
  extraction: flash,
  summarisation: flash,
  chat: flash,
  reasoning: { model: "deepseek-v4-pro", thinking: "enabled" }
}

/**
 * Models that think whatever `thinking` says: the legacy `deepseek-reasoner`.
 *
 * @since 0.1.0
 */
export const defaultThinkingModels: ReadonlyArray<string> = ["deepseek-reasoner"]

/**
 * The router's options, as a schema so they can come from JSON (`layerConfig`).
 *
 * @since 0.1.0
 * @category schemas
 */
export const Options = Schema.Struct({
  /** Routes to replace, merged over `defaultRoutes`. */
  routes: Schema.optionalWith(Schema.partialWith(Routes, { exact: true }).annotations({ identifier: "Routes (partial)" }), {
    exact: true
  }),
  /** Models that always think. Default `defaultThinkingModels`. */
  thinkingModels: Schema.optionalWith(Schema.Array(Schema.NonEmptyString), { exact: true }),
  /** Policy for thinking on a simple task. Default `"warn"`. */
  thinkingOnSimpleTask: Schema.optionalWith(Schema.Literal("allow", "warn", "refuse"), { exact: true }),
  /** `"respect"` (default): what the request sets wins; `"force"`: the table wins. */
  override: Schema.optionalWith(Schema.Literal("respect", "force"), { exact: true }),
  /** The task of a request that declares none and names no model. Default `"chat"`. */
  defaultTask: Schema.optionalWith(Task, { exact: true })
}).annotations({ identifier: "RouterOptions", parseOptions: { onExcessProperty: "error" } })
/**
 * @since 0.1.0
 * @category models
 */
export type Options = typeof Options.Type

/**
 * A request to route: a chat completion request whose `model` may be left to the router
 * (absent, `""` or `"auto"`).
 *
 * @since 0.1.0
 * @category models
 */
export type RoutableRequest = Omit<ChatCompletionRequest, "model"> & { readonly model?: string | undefined }

/**
 * @since 0.1.0
 * @category models
 */
export interface RouteOptions {
  readonly task?: Task | undefined
  /** Overrides the router's `override` for this request. */
  readonly override?: "respect" | "force" | undefined
}

/**
 * Why a request counts as thinking: it enables thinking, or its model always thinks.
 *
 * @since 0.1.0
 * @category models
 */
export type ThinkingReason = "thinking-enabled" | "thinking-model"

/**
 * Something the router let through but the caller should know.
 *
 * @since 0.1.0
 * @category models
 */
export interface RoutingWarning {
  readonly _tag: "ThinkingOnSimpleTask"
  readonly task: Task
  readonly model: string
  readonly reason: ThinkingReason
  readonly message: string
}

/**
 * A routed request.
 *
 * @since 0.1.0
 * @category models
 */
export interface Routed {
  readonly request: ChatCompletionRequest
  /** The task routed for; `undefined` when the request passed through untouched. */
  readonly task: Task | undefined
  readonly warnings: ReadonlyArray<RoutingWarning>
}

/**
 * A thinking request for a simple task, under the `"refuse"` policy. Not retryable: change the
 * request (disable thinking, pick another model) or the task.
 *
 * @since 0.1.0
 * @category errors
 */
export class RoutingRefused extends TaggedError("RoutingRefused")<{
  readonly task: Task
  readonly model: string
  readonly reason: ThinkingReason
}> {
  /** @since 0.1.0 */
  override get message(): string {
    return thinkingMessage(this.task, this.model, this.reason)
  }
}

const thinkingMessage = (task: Task, model: string, reason: ThinkingReason): string =>
  reason === "thinking-enabled"
    ? `thinking is enabled on ${model} for the simple task "${task}"`
    : `${model} always thinks, for the simple task "${task}"`

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly routes: Routes
  /** Fails only under the `"refuse"` policy; warnings are also logged with `Effect.logWarning`. */
  readonly route: (request: RoutableRequest, options?: RouteOptions) => Effect.Effect<Routed, RoutingRefused>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Router extends Context.Tag("weatherproof/Router")<Router, Service>() {}

const unsetModels: ReadonlySet<string> = new Set(["", "auto"])

const namedModel = (request: RoutableRequest): string | undefined =>
  request.model === undefined || unsetModels.has(request.model) ? undefined : request.model

interface Settings {
  readonly routes: Routes
  readonly thinkingModels: ReadonlySet<string>
  readonly policy: "allow" | "warn" | "refuse"
  readonly override: "respect" | "force"
  readonly defaultTask: Task
}

const enabled = { type: "enabled" } as const

/**
 * Applies `route`: it fills the fields the request leaves unset, or overwrites them under force
 * (where a route that sets no `reasoning_effort` leaves the request none).
 */
const applyRoute = (request: RoutableRequest, route: Route, force: boolean): ChatCompletionRequest => {
  const { reasoning_effort: requestedEffort, ...rest } = request
  const model = force ? undefined : namedModel(request)
  // A `reasoning_effort` alone asks for thinking (DeepSeek thinks on it unless thinking is
  // disabled): the request's own, which the route must not turn off.
  const thinking = force ? undefined : request.thinking ?? (requestedEffort == null ? undefined : enabled)
  const reasoningEffort = (force ? undefined : requestedEffort) ?? route.reasoningEffort
  return {
    ...rest,
    model: model ?? route.model,
    thinking: thinking ?? { type: route.thinking },
    ...(reasoningEffort === undefined ? {} : { reasoning_effort: reasoningEffort })
  }
}

const thinkingReason = (settings: Settings, request: ChatCompletionRequest): ThinkingReason | undefined =>
  request.thinking?.type === "enabled"
    ? "thinking-enabled"
    : settings.thinkingModels.has(request.model)
    ? "thinking-model"
    : undefined

const isSimple = (settings: Settings, task: Task): boolean => {
  const route = settings.routes[task]
  return route.thinking === "disabled" && !settings.thinkingModels.has(route.model)
}

const route = (settings: Settings) => (request: RoutableRequest, options?: RouteOptions): Effect.Effect<Routed, RoutingRefused> =>
  Effect.suspend((): Effect.Effect<Routed, RoutingRefused> => {
    const declared = options?.task
    const model = namedModel(request)
    if (declared === undefined && model !== undefined) {
      return Effect.succeed({ request: { ...request, model }, task: undefined, warnings: [] })
    }
    const task = declared ?? settings.defaultTask
    const routed = applyRoute(request, settings.routes[task], (options?.override ?? settings.override) === "force")
    const reason = isSimple(settings, task) ? thinkingReason(settings, routed) : undefined
    if (reason === undefined || settings.policy === "allow") {
      return Effect.succeed({ request: routed, task, warnings: [] })
    }
    if (settings.policy === "refuse") {
      return Effect.fail(new RoutingRefused({ task, model: routed.model, reason }))
    }
    const warning: RoutingWarning = {
      _tag: "ThinkingOnSimpleTask",
      task,
      model: routed.model,
      reason,
      message: thinkingMessage(task, routed.model, reason)
    }
    return Effect.logWarning(`Router: ${warning.message}`).pipe(
      Effect.annotateLogs({ task, model: routed.model }),
      Effect.as({ request: routed, task, warnings: [warning] })
    )
  })

const mergeRoutes = (overrides: { readonly [T in Task]?: Route }): Routes =>
  Record.map(defaultRoutes, (route, task) => overrides[task] ?? route)

const decodeOptions = Schema.decodeUnknownEither(Options, { errors: "all" })

const settingsOf = (options: Options): Settings => {
  const valid = Either.getOrElse(decodeOptions(withoutUndefined(options)), (error) => {
    assertValid("Router", SchemaIssues.describeIssues(error))
    return options
  })
  return {
    routes: mergeRoutes(valid.routes ?? {}),
    thinkingModels: new Set(valid.thinkingModels ?? defaultThinkingModels),
    policy: valid.thinkingOnSimpleTask ?? "warn",
    override: valid.override ?? "respect",
    defaultTask: valid.defaultTask ?? "chat"
  }
}

/**
 * A router over `defaultRoutes` with `options` applied. Dies with `IllegalArgumentException` on
 * invalid options.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Resilient, Router } from "weatherproof"
 *
 * const program = Effect.gen(function*() {
 *   // Thinking on a simple task fails with RoutingRefused instead of a warning.
 *   const router = yield* Router.make({ thinkingOnSimpleTask: "refuse" })
 *   // No model named: the table picks deepseek-v4-flash, without thinking, for an extraction.
 *   const { request } = yield* router.route(
 *     { messages: [{ role: "user", content: "Extract the dates: …" }] },
 *     { task: "extraction" }
 *   )
 *   const client = yield* Resilient.Resilient
 *   return yield* client.create(request)
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service> =>
  Effect.map(Effect.sync(() => settingsOf(options)), (settings) =>
    Router.of({ routes: settings.routes, route: route(settings) }))

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<Router> => Layer.effect(Router, make(options))

/**
 * The default table and the `"warn"` policy.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDefault: Layer.Layer<Router> = layer()

/** Options written as JSON, or what is wrong with them, one line per problem (never a schema's tree). */
const optionsFromText = (text: string): Either.Either<Options, ConfigError.ConfigError> =>
  parseJsonSaying("expected a JSON object of Router options, not valid JSON", text).pipe(Either.match({
    onLeft: (issue) => Either.left(ConfigError.InvalidData([], issue)),
    onRight: (json) =>
      Either.mapLeft(decodeOptions(json), (error) => ConfigError.InvalidData([], SchemaIssues.describeIssues(error).join("; ")))
  }))

/**
 * Options from `WEATHERPROOF_ROUTER`, a JSON object of `Options` (e.g.
 * `{"routes":{"reasoning":{"model":"deepseek-v4-flash","thinking":"enabled"}},"thinkingOnSimpleTask":"refuse"}`);
 * the defaults when unset or empty.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig: Layer.Layer<Router, ConfigError.ConfigError> = Layer.effect(
  Router,
  Effect.flatMap(
    Config.option(Config.nonEmptyString("WEATHERPROOF_ROUTER").pipe(Config.mapOrFail(optionsFromText))),
    (options) => make(Option.getOrElse(options, () => ({})))
  )
)
