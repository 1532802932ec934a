/**
 * Alerts: a JSON POST to a webhook when something happens that people otherwise watch a status
 * page for. Found by comparing consecutive status samples, so they cost a request nothing:
 * - `breaker_opened` / `breaker_closed`: an account's circuit breaker opened, or closed again;
 * - `balance_exhausted` / `balance_restored`: an account answered 402, or its balance is back;
 * - `key_rejected`: the upstream rejected one of an account's keys (named by its id, `key#2`);
 *   told once, then at most every few hours while it is rejected again after each rest
 *   (`KeyRejections`);
 * - `account_unreachable` / `account_reachable`: a connection to an account's origin could not
 *   open, or one opened again;
 * - `budget_spent`: the cost budget is spent; new calls are refused.
 *
 * A flapping account's breaker and reachability alerts are held down (`HoldDown`). Replicas that
 * share their accounts' state through Redis each see its changes: the first to claim an account's
 * alert tells it (`claimOnRedis`).
 *
 * Alerts wait in a bounded queue (the oldest are kept when it is full) and are sent one after
 * another, each retried with jittered exponential backoff (a 4xx but 408 and 429 is not: no
 * retry changes it); one that still fails is logged and dropped. When the gateway stops, those
 * still to send get a moment (2 s), then are logged. `message` is also sent as `text` and
 * `content`, which chat webhooks (Slack, Discord, Mattermost, Teams) show. A webhook's URL is a
 * secret (Slack's and Discord's carry their token in the path): a log names only its origin, and
 * no span is made of a post; its credentials, if any, go as basic authentication (`webhookTarget`).
 */
import * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { identity } from "effect/Function"
import * as Queue from "effect/Queue"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { randomUUID } from "node:crypto"
import { hostname } from "node:os"
import type * as Redis from "../../src/Redis.js"
import type { Scrubber } from "../../src/internal/scrubber.js"
import { connectionFailure, counted } from "../../src/internal/text.js"
import type { AccountSample, Monitor, Sample } from "./status.js"

export type AlertEvent =
  | "breaker_opened"
  | "breaker_closed"
  | "balance_exhausted"
  | "balance_restored"
  | "key_rejected"
  | "account_unreachable"
  | "account_reachable"
  | "budget_spent"

/** The webhook's JSON body. */
export interface Alert {
  /**
   * This alert's own (a UUID): a post retried after the webhook took it (its answer came too late)
   * arrives twice with the same `id`.
   */
  readonly id: string
  readonly event: AlertEvent
  /** The account concerned; `null` for the budget. */
  readonly account: string | null
  /** The key concerned, by its id (`key#2`, never the key): `key_rejected`'s; `null` for the others. */
  readonly key: string | null
  readonly message: string
  /** ISO 8601, when the sample that showed it was taken. */
  readonly at: string
  readonly source: "weatherproof-gateway"
  /** The host name of the gateway that sent it: of replicas, the one that claimed it (`claimOnRedis`). */
  readonly host: string
  /** `message` again, where chat webhooks read it: Slack, Mattermost and Teams refuse a body without `text`. */
  readonly text: string
  /** `message` again: Discord refuses a body without `content`. */
  readonly content: string
}

export interface Options {
  /** The webhook, an http(s) URL (`isWebhookUrl`). */
  readonly url: Redacted.Redacted<string>
  /** First retry delay; doubles, jittered. Default 1 second. */
  readonly retryBase?: Duration.DurationInput | undefined
  /** Default 5. */
  readonly retries?: number | undefined
  /** How long an account's breaker or reachability alert holds the next one back (`HoldDown`). Default 10 minutes. */
  readonly holdDown?: Duration.DurationInput | undefined
  /** How long a change held back must last to be told before the hold-down passes (`HoldDown`). Default 1 minute. */
  readonly settle?: Duration.DurationInput | undefined
  /** How long a key's rejection told holds back the same key's next (`KeyRejections`). Default 4 hours. */
  readonly keyRepeat?: Duration.DurationInput | undefined
  /** Whether this process tells an alert (`claimOnRedis`); by default it tells every one. */
  readonly claim?: Claim | undefined
}

/** Whether this process tells `alert`, rather than another that saw the same change. */
export type Claim = (alert: Alert) => Effect.Effect<boolean>

/** Each account event and the one that undoes it. */
const opposite: Partial<Record<AlertEvent, AlertEvent>> = {
  breaker_opened: "breaker_closed",
  breaker_closed: "breaker_opened",
  balance_exhausted: "balance_restored",
  balance_restored: "balance_exhausted",
  account_unreachable: "account_reachable",
  account_reachable: "account_unreachable"
}

/** How long a claim keeps other replicas from telling the same alert: well past their samples' spread. */
const claimWindow = Duration.minutes(1)

/**
 * The first replica to claim an account's alert on `redis` tells it (`SET {prefix}:alert:<event>:<account> NX`,
 * and `:<key>` after it for a key's, for `claimWindow`); claiming it drops the claim of the event that undoes it, so the next
 * such change is told again. The budget is each process's own: its alert is always told. With
 * Redis away, each replica tells its alerts: twice rather than never.
 */
export const claimOnRedis = (redis: Redis.Service, owner: string): Claim => (alert) => {
  const account = alert.account
  if (account === null) return Effect.succeed(true)
  const keyOf = (event: AlertEvent) => redis.key("alert", event, account, ...(alert.key === null ? [] : [alert.key]))
  const undone = opposite[alert.event]
  return redis.command("SET", [keyOf(alert.event), owner, "NX", "PX", Duration.toMillis(claimWindow)]).pipe(
    Effect.map((reply) => reply === "OK"),
    Effect.tap((claimed) => claimed && undone !== undefined ? redis.command("DEL", [keyOf(undone)]) : Effect.void),
    Effect.orElseSucceed(() => true)
  )
}

/** Breakers and connections flap with an unsteady upstream: their alerts are held down. */
const flapping: Partial<Record<AlertEvent, string>> = {
  breaker_opened: "breaker",
  breaker_closed: "breaker",
  account_unreachable: "reach",
  account_reachable: "reach"
}

/**
 * Holds down a flapping account's alerts: an alert of a kind (`flapping`) whose event the account
 * was told less than `holdDownMillis` ago is held back, not sent. The last held back of an
 * account's kind goes once it has lasted `settleMillis` (a breaker open again for a minute is an
 * outage, not a flap), or once the hold-down has passed since the kind was last told, saying how
 * many changes were held back: what the webhook last heard is the account's state, and that it
 * flapped. Without it, an upstream up 7 s and down 4 s sent 4 alerts per account per flap.
 */
export class HoldDown {
  /** When each (account, event), and each (account, kind), was last told. */
  private readonly toldAt = new Map<string, number>()
  /** The latest alert held back of each (account, kind), since when, and how many were. */
  private readonly held = new Map<string, { readonly alert: Alert; readonly since: number; readonly count: number }>()

  constructor(private readonly holdDownMillis: number, private readonly settleMillis: number) {}

  /** The alerts of a sample at `now` to send now. */
  pass(alerts: ReadonlyArray<Alert>, now: number): ReadonlyArray<Alert> {
    const sent: Array<Alert> = []
    for (const alert of alerts) {
      const kind = flapping[alert.event]
      if (kind === undefined || alert.account === null) {
        sent.push(alert)
        continue
      }
      const key = `${alert.account} ${kind}`
      const told = this.toldAt.get(`${alert.account} ${alert.event}`)
      const heldBack = this.held.get(key)?.count ?? 0
      if (told !== undefined && now - told < this.holdDownMillis) {
        this.held.set(key, { alert, since: now, count: heldBack + 1 })
        continue
      }
      this.held.delete(key)
      sent.push(this.tell(alert, heldBack, now))
    }
    return [...sent, ...this.due(now)]
  }

  /** The alerts held back that have lasted the settling time, or whose kind was last told at least the hold-down ago. */
  private due(now: number): ReadonlyArray<Alert> {
    const due: Array<Alert> = []
    for (const [key, { alert, count, since }] of this.held) {
      const lastTold = this.toldAt.get(key) ?? 0
      if (now - since < this.settleMillis && now - lastTold < this.holdDownMillis) continue
      this.held.delete(key)
      due.push(this.tell(alert, count, now))
    }
    return due
  }

  /** `alert` as told at `now`: saying how many changes of its kind were held back before it, if any. */
  private tell(alert: Alert, heldBack: number, now: number): Alert {
    const kind = `${alert.account} ${flapping[alert.event]}`
    const lastTold = this.toldAt.get(kind) ?? 0
    this.toldAt.set(`${alert.account} ${alert.event}`, now)
    this.toldAt.set(kind, now)
    if (heldBack === 0) return alert
    return withNote(alert, ` (${counted(heldBack, "change", "changes")} held back since ${new Date(lastTold).toISOString()}: it flapped)`)
  }
}

/**
 * Tells a key's rejection once, then at most every `repeatMillis`: a key revoked for good is
 * rejected again each time its rest ends (15 minutes by default), 96 alerts a day. The one told
 * after says how many rejections came between.
 */
export class KeyRejections {
  /** When each (account, key) was last told, and how many of its rejections were held back since. */
  private readonly told = new Map<string, { readonly at: number; readonly heldBack: number }>()

  constructor(private readonly repeatMillis: number) {}

  /** The alerts of a sample at `now` to send now. */
  pass(alerts: ReadonlyArray<Alert>, now: number): ReadonlyArray<Alert> {
    return alerts.flatMap((alert) => {
      if (alert.event !== "key_rejected") return [alert]
      const id = `${alert.account} ${alert.key}`
      const last = this.told.get(id)
      if (last !== undefined && now - last.at < this.repeatMillis) {
        this.told.set(id, { at: last.at, heldBack: last.heldBack + 1 })
        return []
      }
      this.told.set(id, { at: now, heldBack: 0 })
      if (last === undefined || last.heldBack === 0) return [alert]
      const since = new Date(last.at).toISOString()
      return [withNote(alert, ` (rejected ${counted(last.heldBack, "more time", "more times")} since ${since}, each time after its rest)`)]
    })
  }
}

/** `alert` with `note` after its message, where each chat webhook reads it. */
const withNote = (alert: Alert, note: string): Alert => ({
  ...alert,
  message: alert.message + note,
  text: alert.text + note,
  content: alert.content + note
})

/** The webhook from the environment, where no other user of the host can read it (a command line is in `ps`). */
export const webhookConfig: Config.Config<Redacted.Redacted<string>> = Config.redacted("WEATHERPROOF_ALERT_WEBHOOK")

/**
 * Where a webhook's URL posts: the URL without its credentials (`https://user:pass@host/…`), which
 * a fetch would not send, and them as the `Authorization: Basic` a receiver behind basic
 * authentication expects.
 */
export const webhookTarget = (webhook: string): { readonly url: string; readonly authorization: string | undefined } => {
  const url = new URL(webhook)
  if (url.username === "" && url.password === "") return { url: webhook, authorization: undefined }
  const credentials = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`
  url.username = ""
  url.password = ""
  return { url: url.href, authorization: `Basic ${Buffer.from(credentials, "utf8").toString("base64")}` }
}

/** An http(s) URL: the only kind a webhook is posted to. */
export const isWebhookUrl = (url: string): boolean => /^https?:\/\/\S+$/.test(url) && URL.canParse(url)

/**
 * Whether a post that failed may succeed when sent again: not one the webhook refused (a 4xx: a
 * hook revoked, a body it does not take), but a timeout (408) or a rate limit (429).
 */
const worthRetrying = (error: HttpClientError.HttpClientError | Cause.TimeoutException): boolean =>
  error._tag !== "ResponseError" || error.response.status >= 500 || error.response.status === 408 ||
  error.response.status === 429

const tellEvery: Claim = () => Effect.succeed(true)

/** How long the alerts still to send may take once the gateway stops. */
const stopGrace = Duration.seconds(2)

/** How long a post may take. */
const postTimeout = Duration.seconds(10)

/** Why a post failed, for the log: the webhook's answer, or what the connection said (never the URL). */
const whyNotDelivered = (error: HttpClientError.HttpClientError | Cause.TimeoutException): string =>
  error._tag === "ResponseError"
    ? `it answered ${error.response.status}`
    : error._tag === "RequestError"
    ? `cannot reach it (${connectionFailure(error.cause)})`
    : `no answer within ${Duration.format(postTimeout)}`

const alert = (sample: Sample, event: AlertEvent, account: string | null, message: string, key: string | null = null): Alert => ({
  id: randomUUID(),
  event,
  account,
  key,
  message,
  at: new Date(sample.t).toISOString(),
  source: "weatherproof-gateway",
  host: hostname(),
  text: message,
  content: message
})

const breakerOpen = (account: AccountSample): boolean => account.state === "open" || account.state === "half_open"

/**
 * `openTold`: whether this account's breaker was told open and not closed since. A sample shows
 * one state per account, so a breaker that closed while its account was out of balance (open,
 * out of balance, serving) shows no closing of its own.
 */
const accountAlerts = (sample: Sample, before: AccountSample, after: AccountSample, openTold: boolean): ReadonlyArray<Alert> => {
  const name = after.name
  const alerts: Array<Alert> = []
  const cause = after.lastFailure === undefined ? "" : `; its last failure: ${after.lastFailure}`
  // A canary that failed (half open, then open again) is the same outage: one alert, until it closes.
  if (!openTold && after.state === "open") {
    alerts.push(alert(sample, "breaker_opened", name, `account ${name}: circuit breaker opened; its calls go elsewhere or wait${cause}`))
  }
  if (openTold && after.state === "serving") {
    alerts.push(alert(sample, "breaker_closed", name, `account ${name}: circuit breaker closed; serving again`))
  }
  if (before.state !== "out_of_balance" && after.state === "out_of_balance") {
    alerts.push(alert(sample, "balance_exhausted", name, `account ${name} is out of balance (402); top it up`))
  }
  if (before.state === "out_of_balance" && after.state !== "out_of_balance") {
    alerts.push(alert(sample, "balance_restored", name, `account ${name}: balance is back; serving again`))
  }
  if (before.reachable && !after.reachable) {
    alerts.push(
      alert(
        sample,
        "account_unreachable",
        name,
        `account ${name}: cannot connect to its upstream; its calls fail to connect until it can be reached${cause}`
      )
    )
  }
  if (!before.reachable && after.reachable) {
    alerts.push(alert(sample, "account_reachable", name, `account ${name}: connected to its upstream again`))
  }
  for (const key of after.restingKeys) {
    if (before.restingKeys.includes(key)) continue
    const left = counted(after.usableKeys, "usable key", "usable keys")
    alerts.push(alert(sample, "key_rejected", name, `account ${name}: the upstream rejected its ${key} (401); ${left} left`, key))
  }
  return alerts
}

/** The accounts whose breaker `sample` shows open (or half open). */
const breakersOpenIn = (sample: Sample): ReadonlySet<string> =>
  new Set(sample.accounts.filter(breakerOpen).map((account) => account.name))

/**
 * What changed from one sample to the next, as alerts. `openTold`: the accounts whose breaker
 * the alerts told open and not closed yet (by default, those `before` shows open).
 */
export const alertsBetween = (
  before: Sample,
  after: Sample,
  openTold: ReadonlySet<string> = breakersOpenIn(before)
): ReadonlyArray<Alert> => [
  ...after.accounts.flatMap((account) => {
    const previous = before.accounts.find((a) => a.name === account.name)
    return previous === undefined ? [] : accountAlerts(after, previous, account, openTold.has(account.name))
  }),
  ...(!before.banner.budgetSpent && after.banner.budgetSpent
    ? [alert(after, "budget_spent", null, `the budget of $${after.spend.budgetUsd} is spent; new calls are refused`)]
    : [])
]

/** `openTold` once `alerts` were told. */
const openToldAfter = (openTold: ReadonlySet<string>, alerts: ReadonlyArray<Alert>): ReadonlySet<string> => {
  const told = new Set(openTold)
  for (const { account, event } of alerts) {
    if (account === null) continue
    if (event === "breaker_opened") told.add(account)
    if (event === "breaker_closed") told.delete(account)
  }
  return told
}

/** Watches the monitor's samples and posts their alerts to the webhook, until the scope closes. */
export const run = (
  monitor: Monitor,
  options: Options,
  scrub: Scrubber
): Effect.Effect<void, never, HttpClient.HttpClient | Scope.Scope> =>
  Effect.gen(function*() {
    const samples = yield* monitor.subscribe
    const first = yield* monitor.latest
    const client = (yield* HttpClient.HttpClient).pipe(
      HttpClient.filterStatusOk,
      HttpClient.withTracerDisabledWhen(() => true)
    )
    const { url, authorization } = webhookTarget(Redacted.value(options.url))
    const origin = new URL(url).origin
    const queue = yield* Queue.dropping<Alert>(256)
    /** Queued, or being posted. */
    const undelivered = new Set<Alert>()
    const holdDown = new HoldDown(
      Duration.toMillis(options.holdDown ?? Duration.minutes(10)),
      Duration.toMillis(options.settle ?? Duration.minutes(1))
    )
    const keyRejections = new KeyRejections(Duration.toMillis(options.keyRepeat ?? Duration.hours(4)))
    const claim = options.claim ?? tellEvery
    const retry = Schedule.exponential(options.retryBase ?? Duration.seconds(1)).pipe(
      Schedule.jittered,
      Schedule.intersect(Schedule.recurs(options.retries ?? 5))
    )
    const post = (body: Alert) =>
      HttpClientRequest.post(url).pipe(
        authorization === undefined ? identity : HttpClientRequest.setHeader("authorization", authorization),
        HttpClientRequest.bodyUnsafeJson(body),
        client.execute,
        Effect.scoped,
        Effect.timeout(postTimeout),
        Effect.retry({ schedule: retry, while: worthRetrying }),
        Effect.catchAll((error) =>
          Effect.logWarning(`gateway: alert ${body.event} not delivered to the webhook at ${origin}: ${scrub(whyNotDelivered(error))}`)
        )
      )
    yield* samples.pipe(
      Stream.mapAccum({ before: first, openTold: breakersOpenIn(first) }, ({ before, openTold }, after) => {
        const alerts = alertsBetween(before, after, openTold)
        const told = keyRejections.pass(holdDown.pass(alerts, after.t), after.t)
        return [{ before: after, openTold: openToldAfter(openTold, alerts) }, told] as const
      }),
      Stream.runForEach((alerts) =>
        Effect.forEach(alerts, (alert) =>
          Effect.flatMap(claim(alert), (told) =>
            told ? Effect.tap(Queue.offer(queue, alert), (queued) => queued && undelivered.add(alert)) : Effect.void))
      ),
      Effect.forkScoped
    )
    yield* Effect.forkScoped(Effect.forever(Effect.flatMap(
      Queue.take(queue),
      (alert) => Effect.tap(post(alert), () => undelivered.delete(alert))
    )))
    // Runs before the fibers above are interrupted: the alerts of an outage that stops the gateway
    // get a moment to go, and those that cannot are told rather than lost unsaid.
    yield* Effect.addFinalizer(() =>
      Effect.interruptible(Effect.repeat(Effect.sync(() => undelivered.size), {
        until: (left) => left === 0,
        schedule: Schedule.spaced("50 millis")
      })).pipe(
        Effect.timeoutOption(stopGrace),
        Effect.zipRight(Effect.suspend(() =>
          undelivered.size === 0 ? Effect.void : Effect.logWarning(
            `gateway: stopping with ${counted(undelivered.size, "alert", "alerts")} not delivered to the webhook at ${origin}: ${
              Array.from(undelivered, (alert) => alert.event).join(", ")
            }`
          )
        ))
      )
    )
  })
