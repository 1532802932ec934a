/**
 * undici's connector, able to open connections ahead of need. `preconnect(origin, n)` opens `n`
 * sockets (TCP, and TLS for `https:`) to the origin and holds them; the next connections undici
 * makes to that origin take them instead of connecting, so the first burst of calls pays no
 * handshake. No request is sent to open them. A held socket the server closes is dropped; one
 * not taken within `idleMillis` is closed, as the pool closes its idle connections. Held sockets
 * do not keep the process alive. With `proxies`, a connection to an origin they proxy is a tunnel
 * through its proxy (`ForwardProxy.tunnel`), the ones opened ahead of need too.
 *
 * @internal
 */
import type { Socket } from "node:net"
import { buildConnector } from "undici"
import * as ForwardProxy from "./proxy.js"

export interface Connector {
  /** What undici's `Agent` calls for each new connection. */
  readonly connect: buildConnector.connector
  /**
   * Opens `count` connections to `origin` now and holds them for undici; `onSettled` hears, once,
   * `undefined` when the first of them opens, or the last error when every one failed, so an
   * origin that cannot be reached is known before a call needs it.
   */
  readonly preconnect: (origin: string, count: number, onSettled?: (error: Error | undefined) => void) => void
  /** Closes the connections still held. */
  readonly close: () => void
}

/** What undici hands its connector for an origin. */
const optionsOf = (origin: URL): buildConnector.Options => ({
  host: origin.host,
  hostname: origin.hostname.startsWith("[") ? origin.hostname.slice(1, -1) : origin.hostname,
  protocol: origin.protocol,
  port: origin.port
})

const keyOf = (options: buildConnector.Options): string => `${options.protocol}//${options.host ?? options.hostname}`

const ignore = (): void => {}

export const make = (
  options: { readonly idleMillis: number; readonly proxies?: ForwardProxy.Proxies | undefined }
): Connector => {
  const direct = buildConnector({})
  const { proxies } = options
  const connectNow: buildConnector.connector = proxies === undefined ? direct : (connectOptions, callback) => {
    const proxy = ForwardProxy.proxyFor(proxies, connectOptions)
    return proxy === undefined ? direct(connectOptions, callback) : ForwardProxy.tunnel(direct, proxy, connectOptions, callback)
  }
  /** Held sockets by origin, each with what undoes its holding. */
  const held = new Map<string, Map<Socket, () => void>>()

  const hold = (key: string, socket: Socket): void => {
    let sockets = held.get(key)
    if (sockets === undefined) held.set(key, sockets = new Map())
    const drop = () => sockets.delete(socket)
    const close = () => socket.destroy()
    socket.on("error", ignore)
    socket.once("close", drop)
    socket.setTimeout(options.idleMillis, close)
    socket.unref()
    sockets.set(socket, () => {
      drop()
      socket.ref()
      socket.setTimeout(0)
      socket.removeListener("timeout", close)
      socket.removeListener("close", drop)
      socket.removeListener("error", ignore)
    })
  }

  const connect: buildConnector.connector = (connectOptions, callback) => {
    for (const [socket, release] of held.get(keyOf(connectOptions)) ?? []) {
      release()
      if (socket.destroyed || !socket.writable) continue
      // Handed over on a later turn, as a fresh connection would be.
      queueMicrotask(() => callback(null, socket))
      return
    }
    connectNow(connectOptions, callback)
  }

  const preconnect = (origin: string, count: number, onSettled?: (error: Error | undefined) => void): void => {
    const connectOptions = optionsOf(new URL(origin))
    const key = keyOf(connectOptions)
    let failed = 0
    let opened = false
    for (let i = 0; i < count; i++) {
      connectNow(connectOptions, (error, socket) => {
        if (error === null && socket !== null) {
          hold(key, socket)
          if (!opened) onSettled?.(undefined)
          opened = true
          return
        }
        // Told when none connected: one failure beside connections that opened is a blip.
        if (error !== null && ++failed === count) onSettled?.(error)
      })
    }
  }

  const close = (): void => {
    for (const sockets of held.values()) for (const socket of sockets.keys()) socket.destroy()
    held.clear()
  }

  return { connect, preconnect, close }
}
