/**
 * A loopback forward proxy that opens `CONNECT` tunnels, as a company's proxy does, noting each
 * tunnel asked for and the `Proxy-Authorization` it came with. With `credentials`, a tunnel asked
 * for without them gets a 407.
 */
import * as Effect from "effect/Effect"
import * as Http from "node:http"
import * as Net from "node:net"
import type { AddressInfo } from "node:net"

export interface ConnectProxy {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string
  /** The `host:port` of each tunnel asked for, in order. */
  readonly tunnels: Array<string>
  /** The `Proxy-Authorization` of each, `undefined` when none. */
  readonly authorizations: Array<string | undefined>
}

const hostAndPort = (authority: string): { readonly host: string; readonly port: number } => {
  const at = authority.lastIndexOf(":")
  return { host: authority.slice(0, at).replace(/^\[(.*)\]$/, "$1"), port: Number(authority.slice(at + 1)) }
}

/** Starts the proxy for the scope; `credentials` (`user:password`) are what it asks for, if any. */
export const connectProxy = (credentials?: string) =>
  Effect.acquireRelease(
    Effect.async<{ readonly server: Http.Server; readonly proxy: ConnectProxy; readonly sockets: Set<Net.Socket> }>((resume) => {
      const sockets = new Set<Net.Socket>()
      const tunnels: Array<string> = []
      const authorizations: Array<string | undefined> = []
      const expected = credentials === undefined ? undefined : `Basic ${Buffer.from(credentials).toString("base64")}`
      const server = Http.createServer((_, response) => response.writeHead(405).end())
      server.on("connect", (request: Http.IncomingMessage, client: Net.Socket, head: Buffer) => {
        const authority = request.url ?? ""
        tunnels.push(authority)
        authorizations.push(request.headers["proxy-authorization"])
        sockets.add(client)
        client.on("error", () => client.destroy())
        if (expected !== undefined && request.headers["proxy-authorization"] !== expected) {
          client.end("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\n\r\n")
          return
        }
        const { host, port } = hostAndPort(authority)
        const upstream = Net.connect(port, host, () => {
          client.write("HTTP/1.1 200 Connection Established\r\n\r\n")
          if (head.length > 0) upstream.write(head)
          upstream.pipe(client)
          client.pipe(upstream)
        })
        sockets.add(upstream)
        upstream.on("error", () => client.destroy())
        client.on("close", () => upstream.destroy())
      })
      server.listen(0, "127.0.0.1", () =>
        resume(Effect.succeed({
          server,
          sockets,
          proxy: { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, tunnels, authorizations }
        })))
    }),
    ({ server, sockets }) =>
      Effect.async<void>((resume) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ proxy }) => proxy))
