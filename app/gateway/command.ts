/**
 * `weatherproof serve`: an OpenAI-compatible gateway in front of the resilient client (see
 * docs/gateway.md). This module only declares the command: its handler loads the gateway
 * (`./serve.js`) when it runs, so `weatherproof --version` and `batch` never load it.
 *
 * @since 0.1.0
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as Effect from "effect/Effect"
import * as Flags from "../cli/flags.js"

/**
 * @since 0.1.0
 * @category commands
 */
export const serve = Command.make(
  "serve",
  {
    port: Flags.integer("port", "port to listen on (0: any free port; default 8787)").pipe(Options.withDefault(8787)),
    host: Options.text("host").pipe(
      Options.withPseudoName("address"),
      Options.withDescription("address to listen on; any but a loopback one needs WEATHERPROOF_GATEWAY_KEYS (default 127.0.0.1)"),
      Options.withDefault("127.0.0.1")
    ),
    ...Flags.accountFlags,
    ...Flags.callFlags(5),
    keepAliveInterval: Flags.duration("keep-alive-interval", "between keep-alives while a client waits (default 10s)"),
    idleConnectionTimeout: Flags.duration(
      "idle-connection-timeout",
      "how long a client's connection stays open between requests: above the idle timeout of a load balancer in front (default 65s)",
      "deadline"
    ),
    drainTimeout: Flags.drainTimeout("the requests in flight"),
    maxWaiting: Flags.integer("max-waiting", "clients that may wait for their first content at once; one more gets a 429, a batch one at nine tenths of it (default 4096)").pipe(
      Options.withDefault(4096)
    ),
    maxBodyMib: Flags.integer("max-body-mib", "the largest request body read, in MiB; a larger one is a 400 (default 10)").pipe(
      Options.withDefault(10)
    ),
    alertWebhook: Options.text("alert-webhook").pipe(
      Options.withPseudoName("url"),
      Options.withDescription(
        "a URL to POST alerts to (breaker, balance, rejected key, budget); default WEATHERPROOF_ALERT_WEBHOOK, which other users of the host cannot read in ps"
      ),
      Options.optional
    )
  },
  (options) => Effect.flatMap(Effect.promise(() => import("./serve.js")), (gateway) => gateway.run(options))
).pipe(Command.withDescription("Serve an OpenAI-compatible gateway over DeepSeek (and fallback) accounts, with a status page and metrics"))
