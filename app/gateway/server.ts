/**
 * The gateway's HTTP server: `@effect/platform`'s `HttpServer` over `NodeHttpServer`, its routes,
 * the status monitor, the alerts, and the drain. Chat requests, nearly every one, run without the
 * platform's per-request wrapper unless a trace is exported (`serveChat`).
 *
 * | route | what |
 * | --- | --- |
 * | `POST /v1/chat/completions` (and `/chat/completions`) | chat completions, stream and non-stream (`chat.ts`) |
 * | `GET /v1/models` (and `/models`) | the models the configured accounts serve |
 * | `GET /v1/models/{model}` (and `/models/{model}`) | one of them, or a 404 `model_not_found` |
 * | `GET /healthz` | 200 while the process serves; 503 once it drains |
 * | `GET /readyz` | 200 when an account can serve and its origin can be connected to; 503 otherwise (`budget_spent` once the budget is), or while draining; each account's state, and the last failure of one that cannot serve |
 * | `GET /metrics` | every metric, Prometheus text format |
 * | `GET /` | the status page; `GET /status.json` its samples; `GET /status/events` its feed (SSE) |
 * | `OPTIONS` on the chat and models routes, from a page | its CORS preflight (`cors.ts`) |
 *
 * The drain (`Gateway.drain`, and the finalizer of `make`'s scope): `/healthz` and `/readyz` answer
 * 503 and new chat requests get a 503 (`shutting_down`, `Connection: close`), so a load balancer
 * sees the gateway go down while it still answers; requests in flight (streams included) get
 * `drainTimeout` less its cut's grace to finish (or until `stopNow`), then the rest end with an
 * error (an error event, an error body, or a 503 when nothing was sent yet) within the grace;
 * then the listening socket and every connection close: the drain takes at most `drainTimeout`.
 */
import * as Headers from "@effect/platform/Headers"
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerError from "@effect/platform/HttpServerError"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import * as Cause from "effect/Cause"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import * as Scope from "effect/Scope"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import { readFileSync } from "node:fs"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import { createRequire } from "node:module"
import { AccountPool, servedModels } from "../../src/AccountPool.js"
import type { Account } from "../../src/Accounts.js"
import { CostLedger } from "../../src/CostLedger.js"
import * as DurationTexts from "../../src/internal/durationText.js"
import { currentMonotonicMillis } from "../../src/internal/monotonic.js"
import * as Scrubber from "../../src/internal/scrubber.js"
import { counted } from "../../src/internal/text.js"
import type { Resilient } from "../../src/Resilient.js"
import { Router, Task } from "../../src/Router.js"
import * as Alerts from "./alerts.js"
import { isLoopback, unbracketed } from "../../src/internal/loopback.js"
import { makeAuthorizer, makeBrowserGuard } from "./auth.js"
import * as Chat from "./chat.js"
import * as Cors from "./cors.js"
import { errorBody, errorHeaders, type GatewayError, internalError, NoSuchRoute, replyOf, UnknownModel } from "./errors.js"
import { unbufferedHeaders } from "./keepAlive.js"
import { html } from "./page.js"
import * as Status from "./status.js"
import { prometheusContentType, Telemetry } from "./telemetry.js"
import { Traffic } from "./traffic.js"
import { sendNow, writeResponse } from "./write.js"

export interface Options {
  /** Default 8787; 0 picks a free port. */
  readonly port?: number | undefined
  /** Default 127.0.0.1. Any other host than a loopback one needs `gatewayKeys`. */
  readonly host?: string | undefined
  /** The accounts behind the client: their models are listed, their keys scrubbed from every answer. */
  readonly accounts: ReadonlyArray<Account>
  /** Keys clients must present. Default none: any client on the loopback host is served. */
  readonly gatewayKeys?: ReadonlyArray<Redacted.Redacted<string>> | undefined
  /** Between keep-alives while a client waits. Default 10 seconds. */
  readonly keepAliveInterval?: Duration.DurationInput | undefined
  /**
   * How long a client's connection is kept open between requests. Default 65 seconds: above the
   * idle timeout of a load balancer in front (AWS ALB's 60 s), which would otherwise reuse a
   * connection the gateway just closed and answer its client a 502 (Node's own default is 5 s).
   */
  readonly idleConnectionTimeout?: Duration.DurationInput | undefined
  /** How long the drain may take on shutdown, the requests cut at its end included (`cutGraceOf`). Default 30 seconds. */
  readonly drainTimeout?: Duration.DurationInput | undefined
  /** Completing during the drain ends the requests still in flight at once (a second signal). Default never. */
  readonly stopNow?: Effect.Effect<void> | undefined
  /** Clients that may wait for their first content at once; one more gets a 429 (a batch one at nine tenths of it). Default 4096. */
  readonly maxWaiting?: number | undefined
  /**
   * The largest request body read, in bytes (the platform's `HttpIncomingMessage.MaxBodySize`
   * sets none by default); a larger one is a 400 and reaches no upstream. Default 10 MiB: a prompt filling a 1M-token context is some 4 MB of English, or up to 9 MB
   * of Chinese sent with every character escaped as `\uXXXX` (Python's `json.dumps` default).
   */
  readonly maxBodyBytes?: number | undefined
  /** Between two status samples. Default 1 second. */
  readonly statusInterval?: Duration.DurationInput | undefined
  /** Samples kept for the page. Default 300. */
  readonly statusSamples?: number | undefined
  /** The page's throttling banner reads 429s over the last this long. Default 10 seconds. */
  readonly throttleWindow?: Duration.DurationInput | undefined
  /**
   * The banner shows while at least this share of an account's attempts in that window drew a 429
   * (an adaptive limit's probes of a steady cap draw one in 48 or fewer). Default 0.05.
   */
  readonly throttleShare?: number | undefined
  /** Where to POST alerts; none by default. */
  readonly alerts?: Alerts.Options | undefined
  /**
   * How often the log says how many requests failed since, and with what (`Traffic.takeReport`);
   * nothing for an interval in which none did and no client left. Default 1 minute.
   */
  readonly failureReportInterval?: Duration.DurationInput | undefined
}

export const defaults = {
  port: 8787,
  host: "127.0.0.1",
  keepAliveInterval: Duration.seconds(10),
  idleConnectionTimeout: Duration.seconds(65),
  drainTimeout: Duration.seconds(30),
  maxWaiting: 4096,
  maxBodyBytes: 10 * 1024 * 1024,
  statusInterval: Duration.seconds(1),
  statusSamples: 300,
  throttleWindow: Duration.seconds(10),
  throttleShare: 0.05,
  failureReportInterval: Duration.minutes(1)
} as const

/**
 * Logs `traffic`'s report every `interval`, for the gateway's scope, and once more as it closes:
 * a shutdown soon after an incident would lose its failures. A warning when requests failed other
 * than on their clients' errors.
 */
const reportFailures = (traffic: Traffic, interval: Duration.Duration) =>
  Effect.gen(function*() {
    let since = yield* currentMonotonicMillis
    const report = (over: (now: number) => string) =>
      Effect.flatMap(currentMonotonicMillis, (now) => {
        const told = traffic.takeReport(over(now))
        since = now
        return told === undefined ? Effect.void : told.warning ? Effect.logWarning(told.line) : Effect.logInfo(told.line)
      })
    const every = DurationTexts.format(interval)
    // The first run, at once, finds nothing yet.
    yield* Effect.forkScoped(Effect.repeat(report(() => every), Schedule.spaced(interval)))
    yield* Effect.addFinalizer(() => report((now) => DurationTexts.format(Duration.seconds(Math.max(1, Math.round((now - since) / 1000))))))
  })

/** "1 request", "2 requests". */
export const requests = (n: number): string => counted(n, "request", "requests")

/**
 * The end of a drain of `drainTimeout` in which the requests still in flight are cut and send
 * their error: a quarter of it, at most a second (an error takes milliseconds to write; a client
 * that reads nothing, or still uploads its request, is closed at the end of it anyway). Within
 * the timeout, so that a drain set to a service manager's grace period ends before its SIGKILL.
 */
export const cutGraceOf = (drainTimeout: Duration.Duration): Duration.Duration =>
  Duration.min(Duration.seconds(1), Duration.unsafeDivide(drainTimeout, 4))

/** A non-loopback host without gateway keys: anyone could spend the upstream accounts. */
export class InsecureHost extends Data.TaggedError("InsecureHost")<{ readonly host: string }> {
  override get message(): string {
    return `refusing to serve on ${this.host} without gateway keys: set WEATHERPROOF_GATEWAY_KEYS, or serve on 127.0.0.1`
  }
}

export interface Gateway {
  /** `http://host:port`. */
  readonly url: string
  readonly port: number
  /** Starts the drain (see the module doc) and waits for its end; idempotent. */
  readonly drain: Effect.Effect<void>
  readonly traffic: Traffic
  readonly monitor: Status.Monitor
}

/** Everything the gateway calls: the client, its router, the pool, the ledger, telemetry, HTTP for alerts. */
export type Requirements = Resilient | Router | AccountPool | CostLedger | Telemetry | HttpClient.HttpClient

/** The URL without its query. */
const pathOf = (url: string): string => {
  const query = url.indexOf("?")
  return query === -1 ? url : url.slice(0, query)
}

/**
 * The path as the router matches its routes: without the query, repeated slashes as one and no
 * trailing slash (its case is ignored by each match), so a base URL joined to a path by hand
 * (`…/v1/` + `/chat/completions`) reaches the chat route as it reaches the others.
 */
const routePathOf = (url: string): string => {
  const path = pathOf(url)
  const single = path.includes("//") ? path.replace(/\/{2,}/g, "/") : path
  return single.length > 1 && single.endsWith("/") ? single.slice(0, -1) : single
}

const chatPath = /^(?:\/v1)?\/chat\/completions$/i

/** `POST /v1/chat/completions` (or `/chat/completions`), with any query. */
const isChatPath = (url: string): boolean => chatPath.test(routePathOf(url))

/** The model a `GET /v1/models/{model}` names: the rest of the path, slashes included (`org/name`), decoded. */
const modelOfPath = (url: string): string => {
  const rest = routePathOf(url).replace(/^\/(?:v1\/)?models\//i, "")
  return Option.getOrElse(Option.liftThrowable(decodeURIComponent)(rest), () => rest)
}

const requireAsset = createRequire(import.meta.url)
const asset = (path: string, contentType: string) => {
  const bytes = readFileSync(requireAsset.resolve(path))
  return HttpServerResponse.uint8Array(bytes, { contentType, headers: { "cache-control": "public, max-age=3600" } })
}

const utf8 = new TextEncoder()

/**
 * Warns, once per model, of the tasks the router sends to a model not served: a request naming
 * one of them (`x-weatherproof-task`) would be refused. A warning, not a refusal to start: a
 * setup whose clients never name those tasks is valid (one serving another provider's models).
 */
const warnUnservedRoutes = (router: Router["Type"], served: ReadonlySet<string>) =>
  Effect.gen(function*() {
    const routedTo = (options?: { readonly task: Task; readonly override: "force" }) =>
      router.route({ messages: [] }, options).pipe(
        Effect.map(({ request: { model } }): string | undefined => model),
        // Never: the table's own thinking is never refused (a task whose route thinks is not simple).
        Effect.catchTag("RoutingRefused", () => Effect.succeed(undefined))
      )
    const unserved = new Map<string, Array<string>>()
    for (const task of Task.literals) {
      const model = yield* routedTo({ task, override: "force" })
      if (model !== undefined && !served.has(model)) unserved.set(model, [...(unserved.get(model) ?? []), task])
    }
    // Where a request that names no model goes (the router's default task).
    const modelless = yield* routedTo()
    yield* Effect.forEach(unserved, ([model, tasks]) =>
      Effect.logWarning(
        `gateway: the router sends ${tasks.join(", ")} requests to ${model}, which is not served (not in the pricing table or an account's models): ` +
          `a request naming ${tasks.length === 1 ? "that task" : "one of those tasks"} (x-weatherproof-task)` +
          `${model === modelless ? ", or naming no model," : ""} will be refused`
      ), { discard: true })
  })

/** A model as `GET /v1/models` lists it and `GET /v1/models/{model}` answers it. */
const modelObject = (id: string) => ({ id, object: "model", created: 0, owned_by: "weatherproof" })

/** `GET /v1/models`'s answer. */
const modelList = (models: ReadonlySet<string>) => ({
  object: "list",
  data: Array.from(models).sort().map(modelObject)
})

/**
 * Request headers whose values spans show redacted: beside `authorization`, whatever a client may
 * put a key or a session in (`api-key` from Azure's SDK, `x-goog-api-key`, `proxy-authorization`,
 * cookies, tokens).
 */
const redactedHeaders: ReadonlyArray<RegExp> = [/auth|cookie|key|token|secret|password|session/i]

/** Starts the gateway; it drains and stops when the scope closes. */
export const make = (
  options: Options
): Effect.Effect<Gateway, HttpServerError.ServeError | InsecureHost, Scope.Scope | Requirements> =>
  Effect.gen(function*() {
    // `--host [::1]` as a URL writes it; listening takes the bare address.
    const host = unbracketed(options.host ?? defaults.host)
    const gatewayKeys = options.gatewayKeys ?? []
    if (gatewayKeys.length === 0 && !isLoopback(host)) return yield* new InsecureHost({ host })

    const pool = yield* AccountPool
    const ledger = yield* CostLedger
    const telemetry = yield* Telemetry
    const traffic = new Traffic()
    const scrub = Scrubber.make(options.accounts.flatMap((account) => account.keys))
    const authorize = makeAuthorizer(gatewayKeys)
    const guard = makeBrowserGuard(gatewayKeys, host)
    const drainTimeout = Duration.decode(options.drainTimeout ?? defaults.drainTimeout)
    const stopNow = options.stopNow ?? Effect.never

    yield* reportFailures(traffic, Duration.decode(options.failureReportInterval ?? defaults.failureReportInterval))
    const monitor = yield* Status.make(traffic, {
      interval: Duration.decode(options.statusInterval ?? defaults.statusInterval),
      keep: options.statusSamples ?? defaults.statusSamples,
      throttleWindow: Duration.decode(options.throttleWindow ?? defaults.throttleWindow),
      throttleShare: options.throttleShare ?? defaults.throttleShare
    })
    if (options.alerts !== undefined) yield* Alerts.run(monitor, options.alerts, scrub)

    // The models clients may ask for: the pricing table's (DeepSeek's by default) and every account's own names.
    const served = servedModels(options.accounts, ledger.pricing)
    yield* warnUnservedRoutes(yield* Router, served)
    const chat = yield* Chat.make({
      keepAliveInterval: Duration.decode(options.keepAliveInterval ?? defaults.keepAliveInterval),
      maxWaiting: options.maxWaiting ?? defaults.maxWaiting,
      maxBodyBytes: options.maxBodyBytes ?? defaults.maxBodyBytes,
      models: served,
      authorize,
      scrub
    }, traffic)

    const replyWith = (error: GatewayError) => {
      const reply = replyOf(error)
      return HttpServerResponse.unsafeJson(errorBody(reply, scrub), { status: reply.status, headers: errorHeaders(reply) })
    }
    /** Answers a request with a valid gateway key; others get the 401 a chat request would. */
    const authorized = (answer: (request: HttpServerRequest.HttpServerRequest) => HttpServerResponse.HttpServerResponse) =>
      Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
        authorize(request.headers.authorization).pipe(
          Effect.as(answer(request)),
          Effect.catchAll((error) => Effect.succeed(replyWith(error)))
        ))
    const models = HttpServerResponse.unsafeJson(modelList(served))
    const listModels = authorized(() => models)
    const retrieveModel = authorized((request) => {
      const model = modelOfPath(request.url)
      return served.has(model) ? HttpServerResponse.unsafeJson(modelObject(model)) : replyWith(new UnknownModel({ model }))
    })

    const draining = HttpServerResponse.unsafeJson({ status: "draining" }, { status: 503 })
    const health = Effect.sync(() => traffic.draining ? draining : HttpServerResponse.unsafeJson({ status: "ok" }))
    const readiness = Effect.gen(function*() {
      if (traffic.draining) return draining
      const accounts = (yield* pool.snapshot).map(({ lastFailure, name, reachable, state }) => ({
        name,
        state,
        reachable,
        // Why one cannot serve, as far as its last attempt tells (keys scrubbed).
        ...(Status.canServe({ reachable, state }) || lastFailure === undefined ? {} : { lastFailure })
      }))
      // A spent budget refuses every call, whatever the accounts' state.
      const funded = yield* Effect.isSuccess(ledger.guard)
      const ready = funded && accounts.some(Status.canServe)
      const status = ready ? "ready" : funded ? "unavailable" : "budget_spent"
      return HttpServerResponse.unsafeJson({ status, accounts }, { status: ready ? 200 : 503 })
    })

    const feed = Stream.unwrapScoped(monitor.subscribe).pipe(
      Stream.map((sample) => utf8.encode(`data: ${JSON.stringify(sample)}\n\n`))
    )

    const routes = HttpRouter.empty.pipe(
      HttpRouter.get("/v1/models", listModels),
      HttpRouter.get("/models", listModels),
      HttpRouter.get("/v1/models/*", retrieveModel),
      HttpRouter.get("/models/*", retrieveModel),
      HttpRouter.get("/healthz", health),
      HttpRouter.get("/readyz", readiness),
      HttpRouter.get(
        "/metrics",
        Effect.map(telemetry.scrape, (text) => HttpServerResponse.text(text, { contentType: prometheusContentType }))
      ),
      HttpRouter.get("/", Effect.succeed(HttpServerResponse.html(html))),
      HttpRouter.get(
        "/status.json",
        Effect.map(monitor.history, (samples) => HttpServerResponse.unsafeJson({ samples }))
      ),
      HttpRouter.get(
        "/status/events",
        Effect.succeed(
          HttpServerResponse.stream(feed, { contentType: "text/event-stream", headers: unbufferedHeaders })
        )
      ),
      HttpRouter.get("/assets/uPlot.iife.min.js", Effect.sync(() => asset("uplot/dist/uPlot.iife.min.js", "text/javascript"))),
      HttpRouter.get("/assets/uPlot.min.css", Effect.sync(() => asset("uplot/dist/uPlot.min.css", "text/css")))
    ).pipe(
      // Not a catch-all route: the router answers a HEAD (uptime monitors send them) with its GET
      // route only when no route matched it; and a path whose escapes do not decode (`/%zz`)
      // matches no route either.
      Effect.catchTag("RouteNotFound", ({ request }) =>
        Effect.succeed(replyWith(new NoSuchRoute({ method: request.method, path: pathOf(request.url) }))))
    )

    /**
     * What every request meets before its route: the browser guard's refusal, or a page's CORS
     * preflight; else nothing, the page allowed to read the answer (told on Node's response).
     */
    const screen = (incoming: Http.IncomingMessage, response: Http.ServerResponse) => {
      const { host, origin } = incoming.headers
      const refused = guard(host, origin)
      if (refused !== undefined) return replyWith(refused)
      if (origin !== undefined && Cors.isApiPath(routePathOf(incoming.url ?? "/"))) {
        if (incoming.method === "OPTIONS") return Cors.preflight(incoming)
        Cors.allowPageToRead(response)
      }
      return undefined
    }

    // The chat route, nearly every request, is matched before the router, which copies the
    // request's context for each request it routes. Interruptible as the router makes its routes:
    // the server runs the app uninterruptibly, and a call's waits end by interruption.
    const chatRoute = (incoming: Http.IncomingMessage, response: Http.ServerResponse) =>
      Effect.interruptible(Effect.flatMap(Effect.scope, (scope) => chat({ incoming, response, scope })))
    const app = Effect.flatMap(HttpServerRequest.HttpServerRequest, (request): Effect.Effect<
      HttpServerResponse.HttpServerResponse,
      never,
      HttpServerRequest.HttpServerRequest | Scope.Scope
    > => {
      const incoming = NodeHttpServerRequest.toIncomingMessage(request)
      const response = NodeHttpServerRequest.toServerResponse(request)
      const screened = screen(incoming, response)
      if (screened !== undefined) return Effect.succeed(screened)
      return request.method === "POST" && isChatPath(request.url) ? chatRoute(incoming, response) : routes
    })

    /**
     * A chat request without the platform, when no trace is exported (the platform's server span
     * roots a trace). The platform's wrapper (a request object, a copy of the context to hold it
     * and another to hold the request's scope, the middleware) took some 0.04 of the 0.14 ms of CPU
     * a bare server spent on a request through it. Run as the platform runs it: uninterruptible
     * but for the handler, interrupted when the client leaves, its answer written (unless the
     * handler wrote it) before its scope closes.
     */
    const serveChat = (runFork: ReturnType<typeof Runtime.runFork<never>>) =>
    (incoming: Http.IncomingMessage, response: Http.ServerResponse): void => {
      const screened = screen(incoming, response)
      if (screened !== undefined) return void sendNow(response, screened)
      const fiber = runFork(Effect.uninterruptible(Effect.flatMap(Scope.make(), (scope) =>
        Effect.onExit(
          Effect.interruptible(chat({ incoming, response, scope })),
          (exit) => Effect.zipRight(answer(response, exit), Scope.close(scope, exit))
        ))))
      response.on("close", () => {
        if (!response.writableEnded) fiber.unsafeInterruptAsFork(HttpServerError.clientAbortFiberId)
      })
    }
    /** The handler's answer written, or a 500 for a defect (a client that left needs none). */
    const answer = (response: Http.ServerResponse, exit: Exit.Exit<HttpServerResponse.HttpServerResponse>) =>
      Exit.match(exit, {
        onSuccess: (reply) => writeResponse(response, reply),
        onFailure: (cause) =>
          Cause.isInterruptedOnly(cause) ? Effect.void : writeResponse(response, failure)
      })
    const failure = HttpServerResponse.unsafeJson(errorBody(internalError, scrub), { status: internalError.status })

    /** The platform's server for every route, the chat route's requests apart when no trace is exported. */
    const serving = Effect.gen(function*() {
      const platform = yield* NodeHttpServer.makeHandler(app)
      const lean = serveChat(Runtime.runFork(yield* Effect.runtime<never>()))
      const onRequest = (incoming: Http.IncomingMessage, response: Http.ServerResponse) =>
        incoming.method === "POST" && isChatPath(incoming.url ?? "/") && !telemetry.traced
          ? lean(incoming, response)
          : platform(incoming, response)
      // Node answers `Expect: 100-continue` itself before the request unless told otherwise: the
      // chat route tells the client to go on once its key is checked (`readJson`), the others at once.
      const onCheckContinue = (incoming: Http.IncomingMessage, response: Http.ServerResponse) => {
        if (!(incoming.method === "POST" && isChatPath(incoming.url ?? "/"))) response.writeContinue()
        onRequest(incoming, response)
      }
      server.on("request", onRequest)
      server.on("checkContinue", onCheckContinue)
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          server.off("request", onRequest)
          server.off("checkContinue", onCheckContinue)
        })
      )
    })

    const server = Http.createServer()
    server.keepAliveTimeout = Duration.toMillis(options.idleConnectionTimeout ?? defaults.idleConnectionTimeout)
    // So that no header deadline ends an idle connection before its keep-alive does.
    server.headersTimeout = Math.max(server.headersTimeout, server.keepAliveTimeout + 1_000)
    yield* NodeHttpServer.make(() => server, { port: options.port ?? defaults.port, host }).pipe(
      Effect.zipRight(serving),
      // Without a span exporter, spans (the server's and the HTTP client's) cost time for nothing.
      HttpMiddleware.withTracerDisabledWhenEffect(() => !telemetry.traced),
      Effect.locally(Headers.currentRedactedNames, redactedHeaders),
      Effect.locally(HttpClient.currentTracerDisabledWhen, () => !telemetry.traced),
      Effect.locally(HttpClient.currentTracerPropagation, telemetry.traced)
    )
    const { port } = server.address() as AddressInfo

    const drain = yield* Effect.cached(Effect.gen(function*() {
      traffic.draining = true
      const drained = traffic.active > 0
      const startedAt = yield* currentMonotonicMillis
      if (drained) {
        yield* Effect.logInfo(`gateway: draining ${requests(traffic.active)} (at most ${Duration.format(drainTimeout)})`)
      }
      // The drain runs as a finalizer, uninterruptible: the waits must be interruptible for their timeouts to cut them.
      const cutGrace = cutGraceOf(drainTimeout)
      const finished = yield* Effect.timeoutOption(
        Effect.interruptible(Effect.raceFirst(Effect.as(traffic.awaitIdle, "idle" as const), Effect.as(stopNow, "stopped" as const))),
        Duration.subtract(drainTimeout, cutGrace)
      )
      const cut = Option.isNone(finished) || finished.value === "stopped"
      if (cut) {
        const why = Option.isNone(finished) ? "drain timeout" : "stopped"
        yield* Effect.logWarning(`gateway: ${why}: ending ${requests(traffic.active)} with an error`)
        yield* traffic.cutRemaining
        yield* Effect.timeoutOption(Effect.interruptible(traffic.awaitIdle), cutGrace)
      }
      // The drain's outcome, so that an operator reading the log knows the process ended on purpose.
      if (drained) {
        const took = Duration.format(Duration.millis((yield* currentMonotonicMillis) - startedAt))
        yield* Effect.logInfo(`gateway: drained in ${took}${cut ? ", the rest cut" : ": every request finished"}; stopped`)
      }
      server.close(() => undefined)
      server.closeAllConnections()
    }))
    yield* Effect.addFinalizer(() => drain)

    const shownHost = host.includes(":") ? `[${host}]` : host
    return { url: `http://${shownHost}:${port}`, port, drain, traffic, monitor }
  })
