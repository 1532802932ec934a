/**
 * Upstreams reached through a forward proxy, as curl and most command lines reach them: a
 * connection to an upstream is a tunnel through the proxy (`CONNECT host:port`), over which TLS
 * to the upstream is made as a direct connection's would be, so the proxy sees neither keys nor
 * prompts. Which upstreams go through it: `NO_PROXY`'s rules (`proxyFor`).
 *
 * @internal
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type { Socket } from "node:net"
import type { buildConnector } from "undici"
import type { ProxyOptions } from "../Transport.js"
import { assertValid } from "./options.js"
import { unbracketed } from "./loopback.js"

/** The proxies of each kind of upstream, and the hosts reached directly. */
export interface Proxies {
  /** For `http:` upstreams. */
  readonly http: URL | undefined
  /** For `https:` upstreams. */
  readonly https: URL | undefined
  /**
   * Hosts reached directly, as `NO_PROXY` lists them: `example.com` (and its subdomains; a
   * leading `.` or `*.` means the same), with `:port` only on that port, `[::1]`, or `*` for every
   * host.
   */
  readonly noProxy: ReadonlyArray<string>
}

const defaultPorts: Readonly<Record<string, string>> = { "http:": "80", "https:": "443" }

/** `host` and its port from a `NO_PROXY` entry: `example.com:8080`, `[::1]:443`, `::1`. */
const hostAndPort = (entry: string): { readonly host: string; readonly port: string | undefined } => {
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry)
  if (bracketed !== null) return { host: bracketed[1]!, port: bracketed[2] }
  const colon = entry.indexOf(":")
  // None, or an IPv6 address without brackets: no port.
  if (colon === -1 || entry.includes(":", colon + 1)) return { host: entry, port: undefined }
  return { host: entry.slice(0, colon), port: entry.slice(colon + 1) }
}

const matches = (entry: string, hostname: string, port: string): boolean => {
  const rule = hostAndPort(entry)
  if (rule.port !== undefined && rule.port !== port) return false
  const name = rule.host.replace(/^\*?\./, "")
  return name !== "" && (hostname === name || hostname.endsWith(`.${name}`))
}

/** The port a connection to `target` is made on. */
const portOf = (target: buildConnector.Options): string =>
  target.port === "" || target.port === undefined ? defaultPorts[target.protocol] ?? "" : target.port

/** The proxy a connection to `target` goes through, or `undefined` to connect directly. */
export const proxyFor = (proxies: Proxies, target: buildConnector.Options): URL | undefined => {
  const proxy = target.protocol === "https:" ? proxies.https : proxies.http
  if (proxy === undefined) return undefined
  const hostname = unbracketed(target.hostname).toLowerCase()
  const direct = proxies.noProxy.some((entry) => {
    const rule = entry.trim().toLowerCase()
    return rule === "*" || matches(rule, hostname, portOf(target))
  })
  return direct ? undefined : proxy
}

/** The `host:port` a tunnel to `target` asks for. */
const authorityOf = (target: buildConnector.Options): string => {
  const hostname = unbracketed(target.hostname)
  const host = hostname.includes(":") ? `[${hostname}]` : hostname
  return `${host}:${portOf(target)}`
}

/**
 * How long a proxy may take to answer a `CONNECT`, once connected: the socket's own idle timer, as
 * undici's connect timeout is, not Effect's `Clock` (this runs in undici's connector, with no
 * fiber; a call's deadlines still bound the whole call on the `Clock`).
 */
const tunnelTimeoutMillis = 10_000

/** The largest head of a proxy's answer to a `CONNECT` that is read. */
const maxHeadBytes = 16 * 1024

/**
 * Node's code for a tunnel a proxy did not open (Node 24's own proxy support uses it too): a
 * connection failure, as a refused connection is.
 */
export const tunnelRefusedCode = "ERR_PROXY_TUNNEL"

/** An error whose message names the proxy by its origin only: its URL may hold credentials. */
const tunnelError = (proxy: URL, message: string, cause?: unknown): Error =>
  Object.assign(new Error(`through the proxy at ${proxy.origin}: ${message}`, cause === undefined ? {} : { cause }), {
    code: tunnelRefusedCode
  })

/** A URL's user or password as written: its %-escapes decoded, unless they are no escapes (`p%zz`). */
const unescaped = (text: string): string => {
  try {
    return decodeURIComponent(text)
  } catch {
    return text
  }
}

const connectRequest = (proxy: URL, authority: string): string => {
  const credentials = proxy.username === "" && proxy.password === ""
    ? ""
    : `Proxy-Authorization: Basic ${
      Buffer.from(`${unescaped(proxy.username)}:${unescaped(proxy.password)}`).toString("base64")
    }\r\n`
  return `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${credentials}\r\n`
}

/**
 * Reads the proxy's answer to a `CONNECT` on `socket`: `onOpen` once it is a 2xx (any bytes after
 * its head put back), `onFailed` with why not.
 */
const readAnswer = (socket: Socket, onOpen: () => void, onFailed: (message: string, cause?: unknown) => void): void => {
  let head = Buffer.alloc(0)
  const settle = () => {
    socket.removeListener("data", onData)
    socket.removeListener("error", onError)
    socket.removeListener("close", onClose)
    socket.removeListener("timeout", onTimeout)
    socket.setTimeout(0)
  }
  const fail = (message: string, cause?: unknown) => {
    settle()
    socket.destroy()
    onFailed(message, cause)
  }
  const onData = (chunk: Buffer) => {
    head = Buffer.concat([head, chunk])
    const end = head.indexOf("\r\n\r\n")
    if (end === -1) {
      if (head.length > maxHeadBytes) fail("its answer to CONNECT has no end")
      return
    }
    const statusLine = head.subarray(0, head.indexOf("\r\n")).toString("latin1")
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1]
    if (status === undefined || !status.startsWith("2")) {
      return fail(`it answered CONNECT with ${status === undefined ? "no HTTP status" : statusLine.slice(9)}`)
    }
    settle()
    // Still flowing without its listener: paused, so nothing is lost before undici or TLS reads it.
    socket.pause()
    const rest = head.subarray(end + 4)
    if (rest.length > 0) socket.unshift(rest)
    onOpen()
  }
  const onError = (error: Error) => fail("the connection failed", error)
  const onClose = () => fail("it closed the connection before answering CONNECT")
  const onTimeout = () => fail(`no answer to CONNECT within ${tunnelTimeoutMillis / 1000} s`)
  socket.on("data", onData)
  socket.on("error", onError)
  socket.on("close", onClose)
  socket.on("timeout", onTimeout)
  socket.setTimeout(tunnelTimeoutMillis)
}

/**
 * Connects to `target` through `proxy`: a connection to the proxy made by `connect` (TLS to it for
 * an `https:` proxy), a `CONNECT` to the target's `host:port`, then, for an `https:` target, TLS
 * over the tunnel, made by `connect` as a direct connection's is.
 */
export const tunnel = (
  connect: buildConnector.connector,
  proxy: URL,
  target: buildConnector.Options,
  callback: buildConnector.Callback
): void => {
  const authority = authorityOf(target)
  const endpoint = { protocol: proxy.protocol, hostname: unbracketed(proxy.hostname), host: proxy.host, port: proxy.port }
  connect(endpoint, (error, socket) => {
    if (error !== null) return callback(tunnelError(proxy, "cannot connect to it", error), null)
    socket.write(connectRequest(proxy, authority))
    readAnswer(
      socket,
      () => target.protocol === "https:" ? connect({ ...target, httpSocket: socket }, callback) : callback(null, socket),
      (message, cause) => callback(tunnelError(proxy, `${message} (to ${authority})`, cause), null)
    )
  })
}

/** A proxy's URL from its text (`http://` when it names no scheme, as curl reads it); `undefined` when it is no http(s) URL. */
export const proxyUrl = (text: string): URL | undefined => {
  const trimmed = text.trim()
  const withScheme = /^[a-z][a-z\d+.-]*:\/\//i.test(trimmed) ? trimmed : `http://${trimmed}`
  if (!URL.canParse(withScheme)) return undefined
  const url = new URL(withScheme)
  return (url.protocol === "http:" || url.protocol === "https:") && url.hostname !== "" ? url : undefined
}

/**
 * `Transport.ProxyOptions` as the connector reads them; `undefined` when they name no proxy. Dies
 * with `IllegalArgumentException` on a proxy that is no http(s) URL (its text is not quoted: it
 * may hold credentials).
 */
const proxiesOf = (options: ProxyOptions): Proxies | undefined => {
  const urlOf = (kind: "http" | "https") => {
    const text = options[kind]
    return text === undefined ? undefined : proxyUrl(Redacted.value(text))
  }
  const http = urlOf("http")
  const https = urlOf("https")
  assertValid("Transport.nodeHttpClient", [
    options.http !== undefined && http === undefined ? "proxy.http must be an http(s) URL" : undefined,
    options.https !== undefined && https === undefined ? "proxy.https must be an http(s) URL" : undefined
  ])
  return http === undefined && https === undefined ? undefined : { http, https, noProxy: options.noProxy ?? [] }
}

/** The variable `name`, missing when blank, with the name it was read from. */
const nonBlank = (name: string): Config.Config<readonly [string, string]> =>
  Config.mapOrFail(Config.string(name), (value) =>
    value.trim() === "" ? Either.left(ConfigError.MissingData([], `${name} is blank`)) : Either.right([name, value] as const))

/** The variable `name`, else its upper-case twin (curl reads the lower-case one first); blank is unset. */
const variable = (name: string): Config.Config<Option.Option<readonly [string, string]>> =>
  Config.option(Config.orElse(nonBlank(name), () => nonBlank(name.toUpperCase())))

/** A proxy's variable: an http(s) URL, its text never quoted (it may hold credentials). */
const proxyVariable = (name: string): Config.Config<Redacted.Redacted<string> | undefined> =>
  Config.mapOrFail(variable(name), (read) => {
    if (Option.isNone(read)) return Either.right(undefined)
    const [readFrom, value] = read.value
    return proxyUrl(value) === undefined
      ? Either.left(ConfigError.InvalidData([readFrom], "must be an http(s) URL, as http://host:port"))
      : Either.right(Redacted.make(value))
  })

/** Hosts the environment's proxies never take: a local simulator or gateway is not sent to a proxy. */
const loopbackHosts: ReadonlyArray<string> = ["localhost", "127.0.0.1", "[::1]"]

/** `Transport.proxyConfig`. */
export const proxyConfig: Config.Config<ProxyOptions> = Config.map(
  Config.all({ https: proxyVariable("https_proxy"), http: proxyVariable("http_proxy"), noProxy: variable("no_proxy") }),
  ({ http, https, noProxy }) => ({
    https,
    http,
    noProxy: [
      ...Option.match(noProxy, { onNone: () => [], onSome: ([, list]) => list.split(",").map((entry) => entry.trim()) }),
      ...loopbackHosts
    ].filter((entry) => entry !== "")
  })
)

/** The proxies of `Transport.NodeHttpClientOptions.proxy`: the environment's when it is not given. */
export const proxiesFrom = (proxy: ProxyOptions | "none" | undefined): Effect.Effect<Proxies | undefined> =>
  proxy === "none"
    ? Effect.succeed(undefined)
    : Effect.flatMap(proxy === undefined ? Effect.orDie(proxyConfig) : Effect.succeed(proxy), (options) =>
      Effect.sync(() => proxiesOf(options)))
