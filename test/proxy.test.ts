/**
 * Upstreams through a forward proxy: which connections go through it (`NO_PROXY`'s rules, the
 * environment's variables) and what a call through a loopback `CONNECT` proxy does.
 */
import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type { ChatCompletionRequest } from "../src/ChatSchema.js"
import { proxyFor, proxyUrl } from "../src/internal/proxy.js"
import * as KeyPool from "../src/KeyPool.js"
import * as Simulator from "../src/Simulator.js"
import * as Transport from "../src/Transport.js"
import { connectProxy } from "./support/connectProxy.js"
import { freePort } from "./support/ports.js"
import { selfSignedServer } from "./support/selfSigned.js"

const request: ChatCompletionRequest = { model: "deepseek-v4-flash", messages: [{ role: "user", content: "hi" }] }

const proxy = new URL("http://proxy.example:3128")

describe("proxyFor: which connections go through the proxy", () => {
  const target = (protocol: string, hostname: string, port = "") => ({ protocol, hostname, port })

  it("each kind of upstream has its own proxy", () => {
    expect(proxyFor({ https: proxy, http: undefined, noProxy: [] }, target("https:", "api.deepseek.com"))).toBe(proxy)
    expect(proxyFor({ https: proxy, http: undefined, noProxy: [] }, target("http:", "api.deepseek.com"))).toBeUndefined()
    expect(proxyFor({ https: undefined, http: proxy, noProxy: [] }, target("http:", "10.0.0.7", "8000"))).toBe(proxy)
  })

  it("NO_PROXY's entries: a host and its subdomains, a leading dot or *., a port, IPv6, *", () => {
    const direct = (noProxy: ReadonlyArray<string>, hostname: string, port = "") =>
      proxyFor({ https: proxy, http: undefined, noProxy }, target("https:", hostname, port)) === undefined
    expect(direct(["deepseek.com"], "deepseek.com")).toBe(true)
    expect(direct(["deepseek.com"], "api.deepseek.com")).toBe(true)
    expect(direct(["deepseek.com"], "notdeepseek.com")).toBe(false)
    expect(direct([".deepseek.com"], "api.deepseek.com")).toBe(true)
    expect(direct(["*.deepseek.com"], "api.deepseek.com")).toBe(true)
    expect(direct([" API.DeepSeek.com "], "api.deepseek.com")).toBe(true)
    expect(direct(["api.deepseek.com:443"], "api.deepseek.com")).toBe(true) // the default port of https:
    expect(direct(["api.deepseek.com:8443"], "api.deepseek.com")).toBe(false)
    expect(direct(["api.deepseek.com:8443"], "api.deepseek.com", "8443")).toBe(true)
    expect(direct(["[::1]"], "[::1]")).toBe(true)
    expect(direct(["::1"], "[::1]", "8080")).toBe(true)
    expect(direct(["[::1]:80"], "[::1]", "8080")).toBe(false)
    expect(direct(["*"], "anything.example")).toBe(true)
    expect(direct(["", "."], "anything.example")).toBe(false)
  })

  it("a proxy's URL: http:// when it names no scheme; only http(s) proxies", () => {
    expect(proxyUrl("proxy.corp:3128")?.href).toBe("http://proxy.corp:3128/")
    expect(proxyUrl(" https://user:pa%40ss@proxy.corp ")?.origin).toBe("https://proxy.corp")
    expect(proxyUrl("socks5://proxy.corp:1080")).toBeUndefined()
    expect(proxyUrl("http://")).toBeUndefined()
  })
})

describe("Transport.proxyConfig", () => {
  const read = (variables: ReadonlyArray<readonly [string, string]>) =>
    Effect.withConfigProvider(Transport.proxyConfig, ConfigProvider.fromMap(new Map(variables)))
  const text = (secret: Redacted.Redacted<string> | undefined) => secret === undefined ? undefined : Redacted.value(secret)

  it.effect("reads the lower-case variables first, as curl does, then the upper-case ones; blank is unset", () =>
    Effect.gen(function*() {
      const proxies = yield* read([
        ["https_proxy", "http://lower:3128"],
        ["HTTPS_PROXY", "http://upper:3128"],
        ["HTTP_PROXY", "http://plain:3128"],
        ["no_proxy", " "],
        ["NO_PROXY", "internal.example, .corp"]
      ])
      expect(text(proxies.https)).toBe("http://lower:3128")
      expect(text(proxies.http)).toBe("http://plain:3128")
      // A blank `no_proxy` is unset: `NO_PROXY` is read.
      expect(proxies.noProxy).toEqual(["internal.example", ".corp", "localhost", "127.0.0.1", "[::1]"])
    }))

  it.effect("a proxy that is no http(s) URL is invalid, named by its variable, its text never quoted", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(read([["https_proxy", "socks5://user:pw@proxy.corp:1080"], ["HTTPS_PROXY", "http://ok:3128"]]))
      // The variable read (the lower-case one first), not its valid twin.
      expect(String(error)).toContain("https_proxy")
      expect(String(error)).toContain("must be an http(s) URL, as http://host:port")
      expect(String(error)).not.toContain("pw@proxy")
    }))

  it.effect("with none set, no proxy; loopback hosts are always reached directly", () =>
    Effect.gen(function*() {
      expect(yield* read([["HTTPS_PROXY", "  "]])).toEqual({
        https: undefined,
        http: undefined,
        noProxy: ["localhost", "127.0.0.1", "[::1]"]
      })
    }))
})

describe("Transport through a loopback CONNECT proxy", () => {
  const through = (baseUrl: string, proxyOptions: Transport.ProxyOptions, warmUp = 0) =>
    Transport.layer({ baseUrl, warmUp }).pipe(
      Layer.provide(Layer.merge(
        Transport.nodeHttpClient({ proxy: proxyOptions }),
        KeyPool.layer([Redacted.make(Simulator.defaultKey)])
      ))
    )
  const create = Effect.flatMap(Transport.Transport, (transport) => transport.create(request))

  it.scopedLive("an http upstream: each connection a tunnel (those opened ahead of need too), every answer whole", () =>
    Effect.gen(function*() {
      const simulator = yield* Simulator.make({ limit: 100, queueDelay: 0 })
      const tunnelProxy = yield* connectProxy()
      const transport = through(simulator.baseUrl, { http: Redacted.make(tunnelProxy.url) }, 2)
      const answers = yield* Effect.provide(Effect.all(Array.from({ length: 6 }, () => create), { concurrency: 3 }), transport)
      expect(answers.map((answer) => answer.choices[0]?.message.content)).toEqual(Array(6).fill("echo:hi"))
      const { connections } = yield* simulator.stats
      expect(tunnelProxy.tunnels).toHaveLength(connections)
      expect(new Set(tunnelProxy.tunnels)).toEqual(new Set([new URL(simulator.baseUrl).host]))
      expect(tunnelProxy.authorizations).toEqual(Array(connections).fill(undefined))
    }))

  it.scopedLive("a proxy that asks for credentials: without them a connect failure naming it and its 407, never the credentials; with them in its URL, through", () =>
    Effect.gen(function*() {
      const simulator = yield* Simulator.make({ limit: 100, queueDelay: 0 })
      const tunnelProxy = yield* connectProxy("proxy-user:s3cr@t")
      const host = new URL(simulator.baseUrl).host
      const refused = yield* Effect.flip(Effect.provide(create, through(simulator.baseUrl, { http: Redacted.make(tunnelProxy.url) })))
      expect(refused).toMatchObject({
        _tag: "TransportError",
        reason: "connect",
        message:
          `request failed before a response arrived: through the proxy at ${tunnelProxy.url}: it answered CONNECT with 407 Proxy Authentication Required (to ${host})`
      })
      const withCredentials = tunnelProxy.url.replace("http://", "http://proxy-user:s3cr%40t@")
      const failedAgain = yield* Effect.flip(
        Effect.provide(create, through(simulator.baseUrl, { http: Redacted.make(withCredentials.replace("s3cr", "wrong")) }))
      )
      expect(failedAgain.message).toContain("407")
      expect(failedAgain.message).not.toContain("wrong")
      expect(failedAgain.message).not.toContain("proxy-user")
      const answer = yield* Effect.provide(create, through(simulator.baseUrl, { http: Redacted.make(withCredentials) }))
      expect(answer.choices[0]?.message.content).toBe("echo:hi")
      expect(tunnelProxy.authorizations.at(-1)).toBe(`Basic ${Buffer.from("proxy-user:s3cr@t").toString("base64")}`)
      // A % that escapes nothing is sent as written, not thrown on.
      const unescaped = yield* Effect.flip(
        Effect.provide(create, through(simulator.baseUrl, { http: Redacted.make(tunnelProxy.url.replace("http://", "http://proxy-user:100%zz@")) }))
      )
      expect(unescaped.message).toContain("407")
      expect(tunnelProxy.authorizations.at(-1)).toBe(`Basic ${Buffer.from("proxy-user:100%zz").toString("base64")}`)
    }))

  it.scopedLive("an https upstream: TLS with the upstream itself, over the tunnel", () =>
    Effect.gen(function*() {
      const upstream = yield* selfSignedServer
      const tunnelProxy = yield* connectProxy()
      const error = yield* Effect.flip(Effect.provide(create, through(upstream, { https: Redacted.make(tunnelProxy.url) })))
      // The upstream's own certificate, met through the tunnel: one this machine does not trust.
      expect(error.message).toContain("self-signed certificate")
      expect(tunnelProxy.tunnels).toEqual([new URL(upstream).host])
    }))

  it.scopedLive("hosts NO_PROXY names are reached directly", () =>
    Effect.gen(function*() {
      const simulator = yield* Simulator.make({ limit: 100, queueDelay: 0 })
      const tunnelProxy = yield* connectProxy()
      const transport = through(simulator.baseUrl, { http: Redacted.make(tunnelProxy.url), noProxy: ["127.0.0.1"] })
      expect((yield* Effect.provide(create, transport)).choices[0]?.message.content).toBe("echo:hi")
      expect(tunnelProxy.tunnels).toEqual([])
    }))

  it.scopedLive("a proxy that cannot be reached fails the connection, naming it", () =>
    Effect.gen(function*() {
      const simulator = yield* Simulator.make({ limit: 100, queueDelay: 0 })
      const closed = `http://127.0.0.1:${yield* Effect.promise(() => freePort())}`
      const error = yield* Effect.flip(Effect.provide(create, through(simulator.baseUrl, { http: Redacted.make(closed) })))
      expect(error).toMatchObject({ _tag: "TransportError", reason: "connect" })
      expect(error.message).toContain(`through the proxy at ${closed}: cannot connect to it: connect ECONNREFUSED`)
    }))

  it.effect("a proxy that is no http(s) URL is a defect naming the option, not its text", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(Layer.build(Transport.nodeHttpClient({ proxy: { https: Redacted.make("socks5://u:pw@host:1080") } })).pipe(Effect.scoped))
      expect(Exit.isFailure(exit) && String(exit.cause)).toContain("proxy.https must be an http(s) URL")
      expect(String(exit)).not.toContain("pw@host")
    }))
})
