/**
 * Metrics and traces in the ecosystem's convention. Every Effect `Metric` of the process (the
 * library's and the gateway's, whatever their labels) is exported through `@effect/opentelemetry`'s
 * metric producer:
 * - to `@opentelemetry/exporter-prometheus`'s `PrometheusExporter`, with its own server off, whose
 *   text the gateway serves on `GET /metrics`;
 * - over OTLP/HTTP when an endpoint is set (`otlpConfig`): the metrics every 10 s by default, and
 *   the spans (the gateway's server spans and the client's `weatherproof.*` spans).
 *
 * Except Effect's own per-fiber series (`effect_fiber_*`): the gateway runs with them off, so they
 * would show only the few fibers of the process's start, frozen.
 */
import * as Metrics from "@effect/opentelemetry/Metrics"
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import * as OtelApi from "@opentelemetry/api"
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http"
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { type MetricProducer, type MetricReader, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics"
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base"
import * as Crypto from "node:crypto"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import { currentMonotonicMillis } from "../../src/internal/monotonic.js"

export interface Service {
  /** The metrics now, in the Prometheus text format. */
  readonly scrape: Effect.Effect<string>
  /** Whether spans are exported (so the server makes them). */
  readonly traced: boolean
}

export class Telemetry extends Context.Tag("weatherproof/gateway/Telemetry")<Telemetry, Service>() {}

/** The content type of the Prometheus text format. */
export const prometheusContentType = "text/plain; version=0.0.4; charset=utf-8"

/**
 * What every export says it comes from. `@effect/opentelemetry` lets the resource given here win
 * over the environment's, so it gives only what the environment leaves out: the service's name
 * (`OTEL_SERVICE_NAME`, or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else
 * `weatherproof-gateway`) and an instance id of its own to each process, without which the
 * cumulative series of replicas sharing a name would merge in the backend.
 */
const resourceFromEnv = Effect.gen(function*() {
  const listed = yield* Config.string("OTEL_RESOURCE_ATTRIBUTES").pipe(Config.withDefault(""))
  const given = new Map(listed.split(",").map((pair) => {
    const [key = "", value = ""] = pair.split("=").map((part) => part.trim())
    return [key, value]
  }))
  const name = yield* Config.nonEmptyString("OTEL_SERVICE_NAME").pipe(Config.option)
  return {
    serviceName: Option.getOrElse(name, () => given.get("service.name") || "weatherproof-gateway"),
    serviceVersion: "0.1.0",
    attributes: given.has("service.instance.id") ? {} : { "service.instance.id": Crypto.randomUUID() }
  }
}).pipe(Effect.orDie)

/** What goes out over OTLP/HTTP. */
export interface Otlp {
  readonly traces: boolean
  readonly metrics: boolean
  readonly exportIntervalMillis: number
}

/** Whether a signal goes out: an endpoint set for it or for all, and its exporter not `none`. */
const signalConfig = (signal: "traces" | "metrics") =>
  Config.all({
    endpoint: Config.option(Config.nonEmptyString(`OTEL_EXPORTER_OTLP_${signal.toUpperCase()}_ENDPOINT`)),
    exporter: Config.literal("otlp", "none")(`OTEL_${signal.toUpperCase()}_EXPORTER`).pipe(Config.withDefault("otlp"))
  })

/**
 * What the environment asks to export, as the OpenTelemetry SDKs read it: each signal when
 * `OTEL_EXPORTER_OTLP_ENDPOINT` or its own `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT` is set
 * (the exporters send to the most specific) and `OTEL_{TRACES,METRICS}_EXPORTER` is not `none`;
 * metrics every `OTEL_METRIC_EXPORT_INTERVAL` milliseconds (default 10 s).
 */
export const otlpConfig: Config.Config<Otlp> = Config.all({
  endpoint: Config.option(Config.nonEmptyString("OTEL_EXPORTER_OTLP_ENDPOINT")),
  traces: signalConfig("traces"),
  metrics: signalConfig("metrics"),
  exportIntervalMillis: Config.integer("OTEL_METRIC_EXPORT_INTERVAL").pipe(
    Config.validate({ message: "a number of milliseconds above 0", validation: (millis) => millis > 0 }),
    Config.withDefault(10_000)
  )
}).pipe(Config.map(({ endpoint, exportIntervalMillis, metrics, traces }) => {
  const exports = (signal: Config.Config.Success<ReturnType<typeof signalConfig>>) =>
    signal.exporter === "otlp" && (Option.isSome(signal.endpoint) || Option.isSome(endpoint))
  return { traces: exports(traces), metrics: exports(metrics), exportIntervalMillis }
}))

/** Nothing over OTLP: the Prometheus text only. */
export const noOtlp: Otlp = { traces: false, metrics: false, exportIntervalMillis: 10_000 }

/** The prefix of the series Effect keeps per fiber when its `RuntimeMetrics` flag is on. */
const fiberSeriesPrefix = "effect_fiber_"

/**
 * A series' unit (UCUM, as OpenTelemetry has it) from its name: Effect's producer says "1" of every
 * one, which contradicts `_seconds` and has OTLP-to-Prometheus translators rename gauges `_ratio`.
 */
const unitOf = (name: string): string =>
  name.endsWith("_seconds") ? "s" : /_usd(_total)?$/.test(name) ? "{USD}" : /_tokens(_total)?$/.test(name) ? "{token}" : ""

/** `producer` without Effect's per-fiber series, each series with its unit. */
const exported = (producer: MetricProducer): MetricProducer => ({
  collect: (options) =>
    producer.collect(options).then(({ errors, resourceMetrics }) => ({
      errors,
      resourceMetrics: {
        ...resourceMetrics,
        scopeMetrics: resourceMetrics.scopeMetrics.map((scope) => ({
          ...scope,
          metrics: scope.metrics
            .filter((metric) => !metric.descriptor.name.startsWith(fiberSeriesPrefix))
            .map((metric) => ({ ...metric, descriptor: { ...metric.descriptor, unit: unitOf(metric.descriptor.name) } }))
        }))
      }
    }))
})

/**
 * Whether OpenTelemetry's global context manager carries a context into a callback: not the no-op
 * one the API falls back on while none is registered (the gateway registers none; an
 * auto-instrumentation loaded with `--require` does).
 */
const contextPropagates = (): boolean => {
  const key = OtelApi.createContextKey("weatherproof.gateway.probe")
  return OtelApi.context.with(OtelApi.ROOT_CONTEXT.setValue(key, true), () => OtelApi.context.active().getValue(key) === true)
}

/**
 * The SDK's tracer, without its hook on every step a fiber runs where the hook sets nothing.
 * `@effect/opentelemetry` makes the fiber's span OpenTelemetry's active context around each step,
 * for instrumentations that read it; under the no-op context manager that builds a context per
 * step for nothing: some 5 % of the gateway's CPU per answer with spans on (a profile at 64 clients).
 */
const withoutIdleContextHook: Layer.Layer<never> = Layer.unwrapEffect(Effect.map(Effect.tracer, (tracer) =>
  contextPropagates()
    ? Layer.empty
    : Layer.setTracer(Tracer.make({ span: (...args) => tracer.span(...args), context: (execute) => execute() }))))

/** An exception as the SDK reports it (its JSON), without the stack: its name, message and HTTP status (a string there). */
const exceptionText = (text: string): string => {
  try {
    const { code, message, name } = JSON.parse(text) as { readonly code?: unknown; readonly message?: unknown; readonly name?: unknown }
    if (message === undefined) return text
    const status = /^\d{3}$/.test(String(code)) ? ` (HTTP ${String(code)})` : ""
    return `${name === undefined ? "" : `${String(name)}: `}${String(message)}${status}`
  } catch {
    return text
  }
}

/** What the SDK reports, in one line. */
const diagnosticText = (args: ReadonlyArray<unknown>): string =>
  args.map((arg) => typeof arg === "string" ? exceptionText(arg) : String(arg)).join(" ")

/** How long the same diagnostic waits before it is logged again. */
const diagnosticQuiet = Duration.minutes(1)

/** Diagnostics remembered for `diagnosticQuiet`; beyond this many, the memory starts over. */
const diagnosticsKept = 256

/**
 * OpenTelemetry's own warnings and errors in the gateway's log, each message once a minute at
 * most (its numbers aside: "Dropped 12 spans" and "Dropped 40 spans" are one): an export the
 * collector refused or never got. With no diagnostic logger the SDK drops them, and a wrong
 * endpoint was silent.
 */
const layerDiagnostics: Layer.Layer<never> = Layer.scopedDiscard(Effect.gen(function*() {
  const runtime = yield* Effect.runtime<never>()
  const lastLogged = new Map<string, number>()
  const log = (...args: Array<unknown>): void => {
    const text = diagnosticText(args)
    const key = text.replace(/\d+/g, "#")
    Runtime.runSync(runtime)(Effect.flatMap(currentMonotonicMillis, (now) => {
      const last = lastLogged.get(key)
      if (last !== undefined && now - last < Duration.toMillis(diagnosticQuiet)) return Effect.void
      if (lastLogged.size >= diagnosticsKept) lastLogged.clear()
      lastLogged.set(key, now)
      return Effect.logWarning(`OpenTelemetry: ${text}`)
    }))
  }
  const ignore = (): void => undefined
  yield* Effect.acquireRelease(
    Effect.sync(() =>
      OtelApi.diag.setLogger({ error: log, warn: log, info: ignore, debug: ignore, verbose: ignore }, OtelApi.DiagLogLevel.WARN)
    ),
    () => Effect.sync(() => OtelApi.diag.disable())
  )
}))

/**
 * The last flush of the traces' and of the metrics' exporters at shutdown, after the drain, each:
 * a collector that is down must not hold a stopping process long (a healthy one takes
 * milliseconds).
 */
const lastFlushTimeout = Duration.seconds(2)

/**
 * `readers` read `producer`'s metrics until the scope closes, then make their last export within
 * `lastFlushTimeout` (`Metrics.registerProducer`, whose timeout is not an option of its public face).
 */
const feed = (producer: MetricProducer, readers: ReadonlyArray<MetricReader>): Effect.Effect<void, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => readers.forEach((reader) => reader.setMetricProducer(producer))),
    () =>
      Effect.tryPromise(() => Promise.all(readers.map((reader) => reader.shutdown()))).pipe(
        Effect.ignore,
        Effect.interruptible,
        Effect.timeoutOption(lastFlushTimeout)
      )
  )

/**
 * The exporters: Prometheus always, OTLP of the signals `otlp` names (the exporters read their
 * endpoints and headers, `OTEL_EXPORTER_OTLP_*`, themselves).
 */
export const layer = (otlp: Otlp): Layer.Layer<Telemetry> => {
  const prometheus = new PrometheusExporter({ preventServerStart: true, withoutScopeInfo: true })
  const serializer = new PrometheusSerializer(undefined, false, undefined, false, true)
  // exporter-prometheus 0.223.0 pins its own copy of sdk-metrics (2.12.0, beside 2.12.1): the
  // same reader at run time, a different class to the type checker.
  const readers: [MetricReader, ...Array<MetricReader>] = [prometheus as unknown as MetricReader]
  if (otlp.metrics) {
    readers.push(
      new PeriodicExportingMetricReader({ exporter: new OTLPMetricExporter(), exportIntervalMillis: otlp.exportIntervalMillis })
    )
  }
  const sdk = NodeSdk.layer(Effect.map(resourceFromEnv, (resource) => ({
    resource,
    shutdownTimeout: lastFlushTimeout,
    spanProcessor: otlp.traces ? new BatchSpanProcessor(new OTLPTraceExporter()) : undefined
  })))
  const metrics = Layer.scopedDiscard(
    Effect.flatMap(Metrics.makeProducer, (producer) => feed(exported(producer), readers))
  )
  const service: Service = {
    scrape: Effect.promise(() => prometheus.collect()).pipe(
      Effect.map(({ resourceMetrics }) => serializer.serialize(resourceMetrics))
    ),
    traced: otlp.traces
  }
  const traced = otlp.traces ? Layer.provideMerge(withoutIdleContextHook, sdk) : sdk
  const diagnosed = otlp.traces || otlp.metrics ? Layer.provideMerge(traced, layerDiagnostics) : traced
  return Layer.merge(Layer.succeed(Telemetry, service), Layer.provideMerge(metrics, diagnosed))
}
