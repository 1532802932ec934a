/**
 * Hosts only this machine can reach: a gateway may serve on them without keys, and an upstream
 * on one may be reached over plain `http://` without its keys crossing a network.
 *
 * @internal
 */
import { BlockList, isIP } from "node:net"

/** An IPv6 address without the brackets a URL or a `Host` header puts around it (`[::1]` is `::1`). */
export const unbracketed = (host: string): string => host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host

/** 127.0.0.0/8 and ::1; an IPv4-mapped address (`::ffff:127.0.0.1`) is checked as the IPv4 one. */
const loopbackAddresses = new BlockList()
loopbackAddresses.addSubnet("127.0.0.0", 8, "ipv4")
loopbackAddresses.addAddress("::1", "ipv6")

/**
 * `localhost`, or a loopback address however it is written (`0:0:0:0:0:0:0:1` is `::1`), an
 * IPv6 one also in brackets as a URL or a `Host` header gives it.
 */
export const isLoopback = (host: string): boolean => {
  const address = unbracketed(host)
  // The usual spellings first: `BlockList.check` builds a `SocketAddress`, some 7 µs a request.
  if (address === "127.0.0.1" || address === "::1") return true
  const family = isIP(address)
  return host === "localhost" || (family !== 0 && loopbackAddresses.check(address, family === 6 ? "ipv6" : "ipv4"))
}
