/**
 * A gateway on 127.0.0.1 (a free port) in front of loopback upstreams, for tests: the same
 * client stack `weatherproof serve` builds (`Batch.layerAccounts`), with a fresh ledger and the
 * default router, and an `openai` client pointed at it with only `baseURL` changed.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import OpenAI from "openai"
import * as Gateway from "../../app/gateway/server.js"
import * as GatewayTelemetry from "../../app/gateway/telemetry.js"
import { AccountPool, type PoolOptions } from "../../src/AccountPool.js"
import type { Account } from "../../src/Accounts.js"
import * as Batch from "../../src/Batch.js"
import * as CostLedger from "../../src/CostLedger.js"
import * as Router from "../../src/Router.js"
import * as Transport from "../../src/Transport.js"

/** One DeepSeek account at `baseUrl` with `keys`. */
export const account = (
  name: string,
  baseUrl: string,
  keys: ReadonlyArray<string>,
  extra: Partial<Account> = {}
): Account => ({
  name,
  provider: "deepseek",
  baseUrl,
  keys: keys.map((key) => Redacted.make(key)),
  fallback: false,
  models: {},
  ...extra
})

export interface TestGatewayOptions extends Omit<Gateway.Options, "accounts"> {
  readonly pool?: PoolOptions | undefined
  readonly ledger?: CostLedger.Options | undefined
}

/** What `weatherproof serve` runs, over `accounts`. */
export const upstreamLayer = (accounts: ReadonlyArray<Account>, options: TestGatewayOptions = {}) =>
  Layer.mergeAll(
    Batch.layerAccounts(accounts, {
      pool: options.pool,
      ledger: CostLedger.layer(options.ledger),
      router: Router.layerDefault
    }),
    GatewayTelemetry.layer(GatewayTelemetry.noOtlp),
    Transport.nodeHttpClient()
  )

/** Starts a gateway over `accounts`; it drains and stops with the scope. */
export const startGateway = (
  accounts: ReadonlyArray<Account>,
  options: TestGatewayOptions = {}
): Effect.Effect<Gateway.Gateway & { readonly pool: AccountPool["Type"] }, never, Scope.Scope> =>
  Effect.gen(function*() {
    const context = yield* Layer.build(upstreamLayer(accounts, options))
    const gateway = yield* Gateway.make({ port: 0, drainTimeout: "2 seconds", ...options, accounts }).pipe(
      Effect.provide(context),
      Effect.orDie
    )
    return { ...gateway, pool: yield* Effect.provide(AccountPool, context) }
  })

/** The `openai` client against the gateway, only `baseURL` (and `maxRetries`) changed. */
export const openai = (url: string, options: { readonly apiKey?: string; readonly maxRetries?: number } = {}) =>
  new OpenAI({ apiKey: options.apiKey ?? "unused", baseURL: `${url}/v1`, maxRetries: options.maxRetries ?? 0 })

/** Runs a promise-returning call, its rejection as the failure. */
export const attempt = <A>(call: () => Promise<A>) => Effect.tryPromise({ try: call, catch: (error) => error })

/** Every item of an async iterable (an `openai` stream), its error as the failure. */
export const collect = <A>(items: AsyncIterable<A>) =>
  attempt(async () => {
    const out: Array<A> = []
    for await (const item of items) out.push(item)
    return out
  })

/** POSTs `body` as JSON and answers the response's text, byte for byte. */
export const rawText = (url: string, body: unknown, headers: Record<string, string> = {}) =>
  attempt(() =>
    fetch(url, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) })
      .then((response) => response.text())
  )
