/**
 * What the gateway is doing now: requests in flight, clients waiting for their first content,
 * keep-alives sent, streams cut, and the drain. Its counters are plain fields changed in
 * synchronous steps (one JavaScript thread), mirrored to the gateway's metrics.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as Metric from "effect/Metric"
import * as MetricKey from "effect/MetricKey"
import * as MetricLabel from "effect/MetricLabel"
import type { ServerResponse } from "node:http"
import { Registry } from "../../src/internal/registry.js"
import { counted } from "../../src/internal/text.js"

/** Requests waiting for their first content: in the gateway's queue, a retry backoff, or the upstream's queue. */
export const clientsWaitingGauge = Metric.gauge("weatherproof_gateway_clients_waiting", {
  description: "Requests waiting for their first content (queued here, backing off, or queued upstream)"
})

/** Chat requests being answered. */
export const requestsInFlightGauge = Metric.gauge("weatherproof_gateway_requests_in_flight", {
  description: "Chat requests the gateway is answering"
})

/** Keep-alive writes: a blank line before a JSON body, a `: keep-alive` comment in a stream. */
export const keepAlivesCounter = Metric.counter("weatherproof_gateway_keep_alives", {
  description: "Keep-alive writes sent to waiting clients",
  incremental: true
})

/** Streams that failed after their first content reached the client (ended with an error event). */
export const streamsCutCounter = Metric.counter("weatherproof_gateway_streams_cut", {
  description: "Streams that failed after their first content reached the client",
  incremental: true
})

const requestsKey = MetricKey.counter("weatherproof_gateway_requests", {
  description:
    "Chat requests, by the HTTP status answered (499: the client left before its answer) and outcome (ok, client_error, server_error, client_closed; a committed 200 that ended in an error: that error's)",
  incremental: true
})

/**
 * Chat requests, tagged with the HTTP `status` they got and its `outcome`: `ok` (2xx),
 * `client_error` (4xx), `server_error` (5xx), or `client_closed` with `status` 499 (nginx's code
 * for it) when the client disconnected before its answer ended. An answer whose 200 was committed
 * (keep-alives, or a stream's first content) and that ended in an error (its JSON body, or a
 * stream's error event) counts under `status` 200 with the outcome of that error.
 */
export const requestsCounter = Metric.fromMetricKey(requestsKey)

/** The `status` of a request whose client disconnected before its answer: nginx's "client closed request". */
const clientClosedStatus = 499

/** The statuses counted from the start, at 0, beside `client_closed`: answered, throttled, the upstream failing or away. */
const statusesFromStart = [200, 429, 502, 503]

const outcomes = ["ok", "client_error", "server_error"] as const

/** The index in `outcomes` of an answer with `status`. */
const outcomeOf = (status: number): number => status < 400 ? 0 : status < 500 ? 1 : 2

const requestsTagged = (status: number, outcome: string): Metric.Metric.Counter<number> =>
  Metric.fromMetricKey(
    MetricKey.taggedWithLabels(requestsKey, [MetricLabel.make("status", String(status)), MetricLabel.make("outcome", outcome)])
  )

const clientClosedCounter = requestsTagged(clientClosedStatus, "client_closed")

const noLabels: ReadonlyArray<never> = []

/** The failures a report names one by one, the most frequent first; the rest are summed. */
const maxCodesShown = 5

const emptyReport = () => ({ ended: 0, clientsLeft: 0, notClients: 0, failures: new Map<string, number>() })

/**
 * A refusal of what the client sent (a bad request, a wrong gateway key, an unknown model or a
 * request too large): the client's to fix, nothing the operator need watch. Not a 429 (the upstream or
 * the gateway is full) nor a 402 (the gateway's budget is spent).
 */
const isClientsOwn = (status: number): boolean => status >= 400 && status < 500 && status !== 429 && status !== 402

export class Traffic {
  /** Chat requests being answered (until their last byte). */
  active = 0
  /** Requests waiting for their first content. */
  waiting = 0
  keepAlives = 0
  streamsCut = 0
  requests = 0
  /** Set when the drain starts: health checks fail and new requests are refused. */
  draining = false
  private idle: Deferred.Deferred<void> | undefined
  /** The calls still running (a stream's pump, a call waiting for its first content), interrupted at the drain deadline. */
  private readonly calls = new Registry<Fiber.RuntimeFiber<unknown, unknown>>()
  /** Requests ended since the last report, its clients that left first, its failures by code and status. */
  private lately = emptyReport()
  /** Requests by status and outcome, each with its own counter: tagging at every update would build its key again. */
  private readonly byStatus = new Map<number, Metric.Metric.Counter<number>>()

  constructor() {
    // Every series exists from the start, at 0, as Prometheus expects of counters.
    for (const metric of [keepAlivesCounter, streamsCutCounter, clientsWaitingGauge, requestsInFlightGauge, clientClosedCounter]) {
      metric.unsafeUpdate(0, noLabels)
    }
    for (const status of statusesFromStart) this.counterOf(status, outcomeOf(status)).unsafeUpdate(0, noLabels)
    // A committed 200 that ended in an upstream's failure: the failures a status line cannot tell.
    this.counterOf(200, outcomeOf(502)).unsafeUpdate(0, noLabels)
  }

  enter(): void {
    this.active++
    this.requests++
    requestsInFlightGauge.unsafeUpdate(this.active, noLabels)
  }

  /**
   * A request's handler is done: it leaves once its answer's last byte went to the socket (Node
   * buffers what a client reads slower than it is written), or its connection closed. Until
   * then it is in flight, and a drain waits for it rather than closing a connection whose answer
   * is still being sent.
   */
  leaveWhenSent(out: ServerResponse): void {
    if (out.writableFinished || out.destroyed || !out.writableEnded) return this.leave()
    let left = false
    const leave = () => {
      if (left) return
      left = true
      this.leave()
    }
    out.once("finish", leave)
    out.once("close", leave)
  }

  leave(): void {
    this.active--
    requestsInFlightGauge.unsafeUpdate(this.active, noLabels)
    if (this.active === 0 && this.idle !== undefined) {
      Deferred.unsafeDone(this.idle, Exit.void)
      this.idle = undefined
    }
  }

  startWaiting(): void {
    this.waiting++
    clientsWaitingGauge.unsafeUpdate(this.waiting, noLabels)
  }

  stopWaiting(): void {
    this.waiting--
    clientsWaitingGauge.unsafeUpdate(this.waiting, noLabels)
  }

  /**
   * Counts an answer sent with `status`, its outcome that of `told` (the status of the error a
   * committed 200 ended in), and a failure's `code` for the next report (`takeReport`).
   */
  answered(status: number, told = status, code?: string): void {
    this.counterOf(status, outcomeOf(told)).unsafeUpdate(1, noLabels)
    this.lately.ended++
    if (told < 400 || code === undefined) return
    const key = status === told ? `${code} (${told})` : `${code} (after its 200)`
    this.lately.failures.set(key, (this.lately.failures.get(key) ?? 0) + 1)
    if (status !== told || !isClientsOwn(told)) this.lately.notClients++
  }

  /** Counts a request whose client disconnected before its answer. */
  clientClosed(): void {
    clientClosedCounter.unsafeUpdate(1, noLabels)
    this.lately.ended++
    this.lately.clientsLeft++
  }

  /**
   * What the requests ended since the last report did, as a log line, and starts the next; none
   * when none failed and no client left. One line an interval rather than one a failure: an
   * outage fails thousands a minute. A `warning` when a failure was not the client's own.
   */
  takeReport(over: string): { readonly warning: boolean; readonly line: string } | undefined {
    const { clientsLeft, ended, failures, notClients } = this.lately
    this.lately = emptyReport()
    const failed = Array.from(failures.values()).reduce((sum, n) => sum + n, 0)
    if (failed === 0 && clientsLeft === 0) return undefined
    const byCount = Array.from(failures).sort(([, a], [, b]) => b - a)
    const shown = byCount.slice(0, maxCodesShown).map(([key, n]) => `${n} ${key}`)
    const others = byCount.slice(maxCodesShown).reduce((sum, [, n]) => sum + n, 0)
    const what = failed === 0 ? "" : `: ${[...shown, ...(others === 0 ? [] : [`${others} other`])].join(", ")}`
    const left = clientsLeft === 0 ? "" : `${failed === 0 ? "" : "; "}${counted(clientsLeft, "client", "clients")} left before ${
      clientsLeft === 1 ? "its" : "their"
    } answer`
    const head = `gateway: over the last ${over}, `
    const whose = notClients === 0 ? ", each on a client's error" : ""
    return {
      warning: notClients > 0,
      line: failed === 0
        ? `${head}${left}, of ${counted(ended, "request", "requests")}`
        : `${head}${failed} of ${counted(ended, "request", "requests")} failed${whose}${what}${left}`
    }
  }

  private counterOf(status: number, outcome: number): Metric.Metric.Counter<number> {
    // A number, not a string built per request: this runs for every answer.
    const key = status * outcomes.length + outcome
    let counter = this.byStatus.get(key)
    if (counter === undefined) this.byStatus.set(key, counter = requestsTagged(status, outcomes[outcome]!))
    return counter
  }

  /** Tracks a call until it ends, so the drain deadline can cut it. */
  track(fiber: Fiber.RuntimeFiber<unknown, unknown>): void {
    const entry = this.calls.add(fiber)
    fiber.addObserver(() => this.calls.remove(entry))
  }

  keptAlive(): void {
    this.keepAlives++
    keepAlivesCounter.unsafeUpdate(1, noLabels)
  }

  streamCut(): void {
    this.streamsCut++
    streamsCutCounter.unsafeUpdate(1, noLabels)
  }

  /** Waits until no chat request is being answered. */
  readonly awaitIdle: Effect.Effect<void> = Effect.suspend(() => {
    if (this.active === 0) return Effect.void
    this.idle ??= Deferred.unsafeMake(FiberId.none)
    return Effect.zipRight(Deferred.await(this.idle), this.awaitIdle)
  })

  /**
   * Ends the requests still running by interrupting their calls: a stream gets its error event, a
   * call still waiting an error body, or a 503 when nothing was sent yet.
   */
  readonly cutRemaining: Effect.Effect<void> = Effect.suspend(() => Fiber.interruptAll(this.calls.values()))
}

/**
 * One chat request's count in `weatherproof_gateway_requests_total`, taken once: by its answer as
 * it ends, or as `client_closed` when the request ends without one (its client left, before its
 * answer or in the middle of it).
 */
export class Tally {
  private counted = false

  constructor(private readonly traffic: Traffic) {}

  /** Counts the answer: see `Traffic.answered`. */
  answered(status: number, told = status, code?: string): void {
    if (this.counted) return
    this.counted = true
    this.traffic.answered(status, told, code)
  }

  /** The request ended: unless its answer was counted, its client left. */
  ended(): void {
    if (this.counted) return
    this.counted = true
    this.traffic.clientClosed()
  }
}
