/**
 * A loopback HTTPS server whose certificate no CA signed (self-signed for `localhost` and
 * `127.0.0.1`, valid until 2126), as a private CA's or a TLS-inspecting proxy's looks to a machine
 * that does not trust it. The key is a test fixture, made for this and used nowhere else.
 */
import * as Effect from "effect/Effect"
import * as Https from "node:https"
import type { AddressInfo } from "node:net"

const key = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMk+b44YqQ8Ay2MPH
I9E0TzzkdkRxLgCvpnAsfdoXO5GhRANCAATdU6ZoNg9WS5ZPzHNYdV1NBYDCDaNv
wqP7yTZ0zhim8xTkKoqrOybrOqmnfA4DWh9HtNuR14yuhBD4iYh0o5He
-----END PRIVATE KEY-----`

const cert = `-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUdq9eEQb7rCMnyofF6DmlD5jnUpkwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMTE4NTUzNFoYDzIxMjYxMTA3
MTg1NTM0WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATdU6ZoNg9WS5ZPzHNYdV1NBYDCDaNvwqP7yTZ0zhim8xTkKoqrOybr
OqmnfA4DWh9HtNuR14yuhBD4iYh0o5Heo28wbTAdBgNVHQ4EFgQUyv5rGb/r97r2
DrDHFRfbfvVmcOYwHwYDVR0jBBgwFoAUyv5rGb/r97r2DrDHFRfbfvVmcOYwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSAAwRQIgcJRkwmEqFlAP+x5ZX1TRDboJMqwfYUBDWRy6z/JKY0ICIQDF
onyfU7NSouG7EJqbs1JqVRl+Sxof23ss4qsFPtsang==
-----END CERTIFICATE-----`

/** Starts the server for the scope; it answers every request with a 200 `{}`. Its origin, `https://127.0.0.1:<port>`. */
export const selfSignedServer = Effect.acquireRelease(
  Effect.async<Https.Server>((resume) => {
    const server = Https.createServer({ key, cert }, (_, response) => response.end("{}"))
    server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
  }),
  (server) =>
    Effect.async<void>((resume) => {
      server.close(() => resume(Effect.void))
    })
).pipe(Effect.map((server) => `https://127.0.0.1:${(server.address() as AddressInfo).port}`))
