/**
 * Loopback ports for tests that start a server of their own, or need one nothing listens on.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Net from "node:net"

/** A loopback port free now (a server held it, then gave it up): nothing listens on it. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as Net.AddressInfo
      server.close(() => resolve(port))
    })
  })

/** A loopback port a server of this process listens on for the scope: one a server of the test's cannot take. */
export const takenPort: Effect.Effect<number, never, Scope.Scope> = Effect.map(
  Effect.acquireRelease(
    Effect.async<Net.Server>((resume) => {
      const server = Net.createServer()
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
    }),
    (server) => Effect.async<void>((resume) => void server.close(() => resume(Effect.void)))
  ),
  (server) => (server.address() as Net.AddressInfo).port
)

/** A TCP relay listening on a loopback port: `close` stops it and drops its connections. */
export interface Relay {
  readonly close: Effect.Effect<void>
}

/**
 * Relays connections to 127.0.0.1:`port` to 127.0.0.1:`target` until `close` or the scope's end:
 * an upstream that can be made to refuse connections, then to take them again on the same port.
 */
export const relay = (port: number, target: number): Effect.Effect<Relay, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<Relay>((resume) => {
      const sockets = new Set<Net.Socket>()
      const track = (socket: Net.Socket) => {
        sockets.add(socket)
        socket.on("error", () => socket.destroy())
        socket.once("close", () => sockets.delete(socket))
      }
      const server = Net.createServer((client) => {
        const upstream = Net.connect(target, "127.0.0.1")
        track(client)
        track(upstream)
        client.once("close", () => upstream.destroy())
        upstream.once("close", () => client.destroy())
        client.pipe(upstream).pipe(client)
      })
      const close = Effect.async<void>((done) => {
        server.close(() => done(Effect.void))
        for (const socket of sockets) socket.destroy()
      })
      server.listen(port, "127.0.0.1", () => resume(Effect.succeed({ close })))
    }),
    ({ close }) => close
  )
