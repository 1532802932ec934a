/**
 * Loopback ports for tests that start a server of their own, or need one nothing listens on.
 */
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
