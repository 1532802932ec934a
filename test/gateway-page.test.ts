/**
 * The status page in headless Chromium (Debian's `chromium`, driven by playwright-core): it loads
 * without console errors, its charts render and follow a burst live (each account's, and each of
 * its (account, model) lanes'), and the throttling banner shows during a 429 storm. `GATEWAY_SCREENSHOT=docs/gateway-status.png` also saves a screenshot,
 * taken once a longer storm has been answered, so the charts show it whole.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import { existsSync } from "node:fs"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import { chromium, type Page } from "playwright-core"
import * as Simulator from "../src/Simulator.js"
import { account, attempt, collect, openai, startGateway } from "./support/gateway.js"
import { rawServer } from "./support/rawServer.js"

const executablePath = "/usr/bin/chromium"
const present = existsSync(executablePath)
const title = present
  ? "the status page in headless Chromium"
  : "the status page in headless Chromium: SKIPPED, /usr/bin/chromium is absent (install the Debian package chromium)"

const browser = Effect.acquireRelease(
  Effect.promise(() =>
    chromium.launch({
      executablePath,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync"
      ]
    })
  ),
  (b) => Effect.promise(() => b.close())
)

/** Waits until `predicate` holds in the page (polled), failing with `what` after `timeout` ms. */
const waitFor = (page: Page, what: string, predicate: string, timeout = 10_000) =>
  attempt(() => page.waitForFunction(predicate, undefined, { timeout, polling: 100 })).pipe(
    Effect.mapError((error) => new Error(`${what}: ${String(error)}`))
  )

describe.skipIf(!present)(title, () => {
  it.scopedLive("renders live charts without console errors, follows a burst, and shows the banner in a 429 storm", () =>
    Effect.gen(function*() {
      // Account a's upstream cap is 3 under a ceiling of 12: it starts at 12, a 429 storm until it
      // backs off. Account b adapts.
      const sim = yield* Simulator.make({
        accounts: { a: { keys: ["sk-page-a"], limit: 3 }, b: { keys: ["sk-page-b"], limit: 6 } },
        queueDelay: { min: 150, max: 400 },
        cacheHitRatio: 0.3
      })
      const gateway = yield* startGateway([
        account("a", sim.baseUrl, ["sk-page-a"], { concurrency: 12 }),
        account("b", sim.baseUrl, ["sk-page-b"])
      ], {
        statusInterval: "200 millis",
        keepAliveInterval: "300 millis",
        throttleWindow: "3 seconds",
        pool: { retry: { base: "100 millis", maxRetries: 10 } },
        drainTimeout: "500 millis"
      })

      const page = yield* Effect.flatMap(browser, (b) => Effect.promise(() => b.newPage({ viewport: { width: 1400, height: 1100 } })))
      const problems: Array<string> = []
      page.on("console", (message) => {
        if (message.type() === "error") problems.push(message.text())
      })
      page.on("pageerror", (error) => problems.push(String(error)))

      yield* attempt(() => page.goto(`${gateway.url}/`))
      yield* waitFor(page, "charts drawn", "window.__gateway.updates > 0 && document.querySelectorAll('.uplot canvas').length >= 8")
      const updates = attempt(() => page.evaluate(() => (window as unknown as { __gateway: { updates: number } }).__gateway.updates))
      const before = yield* updates
      expect(yield* attempt(() => page.locator("#banner").isHidden())).toBe(true)

      const client = openai(gateway.url)
      const screenshot = process.env.GATEWAY_SCREENSHOT
      const messages = (i: number) => [
        { role: "system" as const, content: "You answer questions about the weather, briefly and precisely." },
        { role: "user" as const, content: `burst request ${i}: will it rain tomorrow?` }
      ]
      // Two models, so each account opens two lanes.
      const model = (i: number) => i % 2 === 0 ? "deepseek-v4-flash" : "deepseek-v4-pro"
      const call = (i: number): Effect.Effect<unknown, unknown> =>
        i % 4 === 0
          ? Effect.flatMap(attempt(() => client.chat.completions.create({ model: model(i), messages: messages(i), stream: true })), collect)
          : attempt(() =>
            client.chat.completions.create({ model: model(i), messages: messages(i), ...(i % 3 === 0 ? { thinking: { type: "enabled" } } : {}) })
          )
      // Clients arrive over a while, a few at a time.
      const burst = yield* Effect.fork(Effect.forEach(
        Array.from({ length: screenshot === undefined ? 48 : 400 }, (_, i) => i),
        (i) => Effect.zipRight(Effect.sleep(`${(i % 200) * (screenshot === undefined ? 5 : 40)} millis`), Effect.either(call(i))),
        { concurrency: "unbounded" }
      ))

      yield* waitFor(page, "throttling banner", "document.getElementById('banner').textContent.includes('DeepSeek is throttling')")
      expect(yield* attempt(() => page.locator("#banner").isVisible())).toBe(true)
      // It names the accounts throttled.
      expect(yield* attempt(() => page.locator("#banner").textContent())).toMatch(
        /DeepSeek is throttling: requests are queued and will resume \(accounts? [ab](, [ab])?\)\./
      )
      yield* waitFor(page, "in-flight chart follows the burst", "window.__gateway.samples.some((s) => s.gateway.active > 0)")
      // More calls than both accounts' permits: the queue charts and the lanes table show them.
      yield* waitFor(page, "queued calls shown", "window.__gateway.samples.some((s) => s.accounts.some((a) => a.queued > 0))")
      yield* waitFor(page, "a lane per account and model", "document.querySelectorAll('#lanes tbody tr').length === 4")
      // Each (account, model) lane is charted in its account's card, and follows its own traffic.
      yield* waitFor(page, "a chart row per lane", "document.querySelectorAll('.card[data-account] [data-lane] .uplot').length === 12")
      yield* waitFor(
        page,
        "each lane's in-flight chart follows its calls",
        "[...window.__gateway.cards.values()].every((card) => card.laneCharts.size === 2 && [...card.laneCharts.values()].every((c) => c.concurrency.data[2].some((v) => v > 0)))"
      )
      yield* waitFor(
        page,
        "the serving account's spend charted on each of its lanes",
        "[...window.__gateway.cards.get('b').laneCharts.values()].every((c) => c.spend.data[1].some((v) => v > 0))"
      )
      yield* waitFor(
        page,
        "the throttled account's 429s charted on its lanes",
        "[...window.__gateway.cards.get('a').laneCharts.values()].some((c) => c.throttle.data[1].some((v) => v > 0))"
      )
      const after = yield* updates
      expect(after).toBeGreaterThan(before)
      if (screenshot !== undefined) {
        // The whole storm, until every client is answered and the page has drawn an update since.
        yield* Fiber.join(burst)
        const answered = yield* updates
        yield* waitFor(page, "an update after the storm", `window.__gateway.updates > ${answered}`)
        yield* attempt(() => page.screenshot({ path: screenshot, fullPage: true }))
      }
      const badges = yield* attempt(() => page.locator(".card[data-account] .badge").allTextContents())
      expect(badges.length).toBe(2)
      expect(problems).toEqual([])
      yield* Fiber.interrupt(burst)
    }), { timeout: 120_000 })
  it.scopedLive("shows under an account that cannot serve what it last met, and under any account the keys the upstream rejected", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ accounts: { a: { keys: ["sk-page-a"] }, b: { keys: ["sk-page-b"] } } })
      const bKeys = ["sk-page-b", "sk-page-revoked"]
      // c's only key is one the upstream does not know: rejected by its balance check at start.
      const accounts = [account("a", sim.baseUrl, ["sk-page-a"]), account("b", sim.baseUrl, bKeys), account("c", sim.baseUrl, ["sk-page-gone"])]
      const gateway = yield* startGateway(accounts, {
        statusInterval: "100 millis"
      })
      const page = yield* Effect.flatMap(browser, (b) => Effect.promise(() => b.newPage()))
      yield* attempt(() => page.goto(`${gateway.url}/`))
      yield* waitFor(page, "a first update", "window.__gateway.updates > 1")
      const note = (name: string) => attempt(() => page.locator(`.card[data-account="${name}"] .note`).textContent())
      expect(yield* note("a")).toBe("")
      yield* sim.setBalance("a", 0)
      const client = openai(gateway.url)
      yield* Effect.forEach([1, 2, 3, 4], (i) =>
        attempt(() => client.chat.completions.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: `q${i}` }] })))
      yield* waitFor(page, "a's last failure", `document.querySelector('.card[data-account="a"] .note').textContent.includes('InsufficientBalance')`)
      expect(yield* note("a")).toMatch(/^last failure: InsufficientBalance: /)
      // Serving on its first key: the second, refused at start, is named (never shown itself).
      expect(yield* note("b")).toBe("key#2 rejected (401), resting")
      expect(yield* note("c")).toBe("key#1 rejected (401), resting")
      expect(yield* attempt(() => page.locator("#banner").textContent())).toContain(
        "Account c: the upstream rejected every key (401): replace them; its calls go to the other accounts meanwhile."
      )
    }), { timeout: 60_000 })
  it.scopedLive("says the balance check is under way while it is, not only that no account can serve", () =>
    Effect.gen(function*() {
      const upstream = yield* rawServer([], { balance: () => {} })
      const gateway = yield* startGateway([account("a", upstream.url, ["sk-page-a"])], { statusInterval: "100 millis" })
      const page = yield* Effect.flatMap(browser, (b) => Effect.promise(() => b.newPage()))
      yield* attempt(() => page.goto(`${gateway.url}/`))
      yield* waitFor(page, "a first update", "window.__gateway.updates > 1")
      expect(yield* attempt(() => page.locator("#banner").textContent())).toBe(
        "No account can serve yet: the balance of account a is being checked (once, at start); requests wait for the answer."
      )
    }), { timeout: 60_000 })
  it.scopedLive("says when its data is stale, and follows the gateway again after a proxy answered its reconnect with a 502", () =>
    Effect.gen(function*() {
      const sim = yield* Simulator.make({ accounts: { a: { keys: ["sk-page-a"] } } })
      const gateway = yield* startGateway([account("a", sim.baseUrl, ["sk-page-a"])], { statusInterval: "200 millis" })
      const proxy = yield* switchableProxy(gateway.url)
      const page = yield* Effect.flatMap(browser, (b) => Effect.promise(() => b.newPage()))
      yield* attempt(() => page.goto(`${proxy.url}/`))
      yield* waitFor(page, "a first update", "window.__gateway.updates > 1")
      // A redeploy behind a proxy: the feed is cut and its reconnect answered 502.
      proxy.down()
      yield* waitFor(page, "the stale banner", "document.getElementById('banner').textContent.includes('No data from the gateway since')")
      proxy.up()
      const resumed = "window.__gateway.updates"
      const before = yield* attempt(() => page.evaluate(resumed))
      yield* waitFor(page, "updates again", `${resumed} > ${before} + 2 && document.getElementById('banner').hidden`, 20_000)
    }), { timeout: 60_000 })
})

/**
 * A proxy to `target` that can be turned down: it then cuts the connections it carries and
 * answers 502, as nginx does while the gateway behind it restarts.
 */
const switchableProxy = (target: string) =>
  Effect.acquireRelease(
    Effect.async<{ url: string; down: () => void; up: () => void; server: Http.Server }>((resume) => {
      let isDown = false
      const open = new Set<Http.ServerResponse>()
      const server = Http.createServer((request, response) => {
        if (isDown) return void response.writeHead(502).end("bad gateway")
        const upstream = Http.request(`${target}${request.url}`, { method: request.method, headers: request.headers }, (answer) => {
          response.writeHead(answer.statusCode ?? 502, answer.headers)
          answer.pipe(response)
        })
        upstream.on("error", () => response.destroy())
        open.add(response)
        response.on("close", () => {
          open.delete(response)
          upstream.destroy()
        })
        request.pipe(upstream)
      })
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as AddressInfo
        resume(Effect.succeed({
          url: `http://127.0.0.1:${port}`,
          down: () => {
            isDown = true
            for (const response of open) response.destroy()
          },
          up: () => (isDown = false),
          server
        }))
      })
    }),
    ({ server }) => Effect.sync(() => server.close())
  )
