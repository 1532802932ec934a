/**
 * A tiny scripted HTTP server on 127.0.0.1 for loopback tests: the n-th request is answered by
 * the n-th handler, which writes whatever bytes it likes (or kills the socket); `/user/balance`
 * (an account pool's balance preflight) answers 404 outside the script. Real timers are
 * fine here: this is a real server, kept short and bounded.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Http from "node:http"
import type { AddressInfo, Socket } from "node:net"

/** Answers one request; `body` is the request body as text. */
export type Handler = (request: Http.IncomingMessage, response: Http.ServerResponse, body: string) => Promise<void>

export interface Received {
  readonly body: string
  readonly authorization: string | undefined
  /** Which connection (1, 2, …) carried the request. */
  readonly connection: number
}

export interface RawServer {
  readonly url: string
  readonly received: () => ReadonlyArray<Received>
}

const readBody = (request: Http.IncomingMessage): Promise<string> =>
  new Promise((resolve, reject) => {
    const parts: Array<Buffer> = []
    request.on("data", (part: Buffer) => parts.push(part))
    request.on("end", () => resolve(Buffer.concat(parts).toString("utf8")))
    request.on("error", reject)
  })

/**
 * Starts a server answering from `script`; it and its sockets close with the scope. `balance`
 * answers `/user/balance` instead of the 404.
 */
export const rawServer = (
  script: ReadonlyArray<Handler>,
  options: { readonly balance?: (response: Http.ServerResponse) => void } = {}
): Effect.Effect<RawServer, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<{ readonly server: Http.Server; readonly info: RawServer }>((resume) => {
      const received: Array<Received> = []
      const connections = new WeakMap<Socket, number>()
      let opened = 0
      const server = Http.createServer((request, response) => {
        // An account pool asks a DeepSeek account's balance at start: this server has no such
        // endpoint, and the question takes no turn of the script.
        if (request.url?.endsWith("/user/balance")) {
          if (options.balance === undefined) response.writeHead(404).end()
          else options.balance(response)
          return
        }
        void readBody(request).then((body) => {
          received.push({
            body,
            authorization: request.headers.authorization,
            connection: connections.get(request.socket) ?? 0
          })
          const handler = script[received.length - 1]
          if (handler === undefined) {
            response.writeHead(599).end("rawServer: script exhausted")
            return
          }
          return handler(request, response, body)
        }).catch(() => request.socket.destroy())
      })
      server.on("connection", (socket) => connections.set(socket, ++opened))
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as AddressInfo
        resume(Effect.succeed({ server, info: { url: `http://127.0.0.1:${port}`, received: () => received } }))
      })
    }),
    ({ server }) =>
      Effect.async<void>((resume) => {
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ info }) => info))

const tick = () => new Promise<void>((resolve) => setImmediate(resolve))

/** Writes `text` one byte per write, yielding between writes so reads split anywhere. */
export const writeByteByByte = async (response: Http.ServerResponse, text: string): Promise<void> => {
  response.socket?.setNoDelay(true)
  for (const byte of Buffer.from(text, "utf8")) {
    response.write(Uint8Array.of(byte))
    await tick()
  }
}

/** Writes `pieces` with a short real pause between them. */
export const writeSlowly = async (
  response: Http.ServerResponse,
  pieces: ReadonlyArray<string>,
  pauseMillis = 5
): Promise<void> => {
  for (const piece of pieces) {
    response.write(piece)
    await new Promise((resolve) => setTimeout(resolve, pauseMillis))
  }
}

/** Answers with a status, headers and a body, all at once. */
export const reply = (status: number, body: string, headers: Http.OutgoingHttpHeaders = {}): Handler => async (_, response) => {
  response.writeHead(status, { "content-type": "application/json", ...headers }).end(body)
}

/** Kills the connection the request came on without answering. */
export const destroySocket: Handler = async (request) => {
  request.socket.destroy()
}
