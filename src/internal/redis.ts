/**
 * The Redis connection behind `Redis.make`: ioredis with commands that fail instead of queueing
 * while the connection is down, scripts by SHA-1, and one subscriber connection shared by every
 * subscription.
 *
 * @internal
 */
import { createHash } from "node:crypto"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type { Redis as IORedis } from "ioredis"
import type { Options, Service } from "../Redis.js"
import { assertValid } from "./options.js"

export class RedisUnavailable extends Data.TaggedError("RedisUnavailable")<{
  readonly url: string
  readonly reason: string
}> {
  override get message(): string {
    return `Redis at ${this.url} is unavailable: ${this.reason}`
  }
}

export class RedisError extends Data.TaggedError("RedisError")<{
  readonly operation: string
  readonly reason: string
}> {
  override get message(): string {
    return `Redis ${this.operation} failed: ${this.reason}`
  }
}

export const defaults = {
  prefix: "weatherproof",
  connectTimeout: Duration.seconds(5),
  commandTimeout: Duration.seconds(2)
} as const

/** Whether a URL's path names a database (digits after its `/`) or none (database 0), and its `db`, if any, one. */
const namesDatabase = ({ pathname, searchParams }: URL): boolean =>
  /^\/?\d*$/.test(pathname) && /^\d+$/.test(searchParams.get("db") ?? "0")

/** The URL with its user and password removed (ioredis also reads `?password=`), or a placeholder when it does not parse. */
const displayUrl = (url: string): string => {
  // `redis:/:secret@host` parses, its password in the path.
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) return "(an unparsable URL)"
  try {
    const parsed = new URL(url)
    parsed.username = ""
    parsed.password = ""
    parsed.searchParams.delete("password")
    // A path or `db` that is no database number may be a password put in the wrong place.
    if (/^rediss?:$/i.test(parsed.protocol) && !namesDatabase(parsed)) {
      parsed.pathname = ""
      parsed.searchParams.delete("db")
    }
    return parsed.toString()
  } catch {
    return "(an unparsable URL)"
  }
}

/** Whether a Redis URL carries a password: in its user part, or as ioredis's `?password=`. */
export const carriesPassword = (url: string): boolean => {
  if (!URL.canParse(url)) return false
  const parsed = new URL(url)
  return parsed.password !== "" || parsed.searchParams.has("password")
}

/**
 * Whether a key prefix is usable: non-empty, without braces (it is a key's hash tag) or
 * whitespace (the lane script joins keys with spaces).
 */
export const isValidPrefix = (prefix: string): boolean => /^[^{}\s]+$/.test(prefix)

export const invalidPrefix = "a non-empty prefix without braces or whitespace"

const reasonOf = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

/** ioredis's words for a reply that is not Redis's protocol, which ask to report it as its bug. */
const notRedis = /^Protocol error, got "(.)" as reply type byte/

/** Why a connection could not be opened: a server at the port that is not Redis is said to be one. */
const connectReason = (cause: unknown): string => {
  const reason = reasonOf(cause)
  const first = notRedis.exec(reason)?.[1]
  if (first === undefined) return reason
  return `the server does not speak Redis's protocol (its reply began with ${JSON.stringify(first)}${first === "H" ? ": an HTTP server?" : ""})`
}

/**
 * Why a command of `client` failed, as an operator reads it: "the connection is down" while it is,
 * not ioredis's words for its offline queue's refusal ("Stream isn't writeable and
 * enableOfflineQueue options is false") or for its retries' limit. Its socket ends a few ticks
 * before its status says so, and a command sent meanwhile is refused with the first.
 */
export const failureReason = (client: Pick<IORedis, "status" | "stream">, cause: unknown): string =>
  client.status === "ready" && client.stream?.writable === true ? reasonOf(cause) : "the connection is down"

/** Reconnection delays: 100 ms more each time, at most 2 seconds, forever. */
const reconnectDelay = (attempt: number): number => Math.min(attempt * 100, 2000)

const clientOptions = (options: Options, autoResubscribe: boolean) => ({
  autoResubscribe,
  lazyConnect: true,
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  connectTimeout: Duration.toMillis(options.connectTimeout ?? defaults.connectTimeout),
  commandTimeout: Duration.toMillis(options.commandTimeout ?? defaults.commandTimeout),
  retryStrategy: reconnectDelay
})

const escapePart = (part: string): string => encodeURIComponent(part)

const expectedUrl = "expected a redis:// or rediss:// URL (redis://[user:password@]host:port[/db])"

/** The port a URL's authority writes (after its host, past any user and password), as a number. */
const portOf = (url: string): number | undefined => {
  const port = /^[^:]+:\/\/(?:[^@/?#]*@)?(?:\[[^\]]*\]|[^:/?#]*):(\d+)(?:[/?#]|$)/.exec(url)?.[1]
  return port === undefined ? undefined : Number(port)
}

/**
 * Why `url` cannot name a server, before ioredis reads it: it takes a scheme it does not know
 * (`http://`, `valkey://`) or a string that is no URL (`redis:/:pw@host`, `""`) for a socket path
 * or a host name, and fails with an error that quotes it, password included; `""` is
 * localhost:6379. Never quotes the URL.
 */
const urlProblem = (url: string): string | undefined => {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(url)?.[1]
  if (scheme === undefined || !URL.canParse(url)) {
    const port = scheme === undefined ? undefined : portOf(url)
    return port !== undefined && port > 65535 ? `its port ${port} is above 65535: ${expectedUrl}` : `not a URL: ${expectedUrl}`
  }
  if (/^unix$/i.test(scheme)) return undefined
  if (!/^rediss?$/i.test(scheme)) return `${expectedUrl}, not ${scheme}://`
  const parsed = new URL(url)
  if (parsed.hostname === "") return `no host: ${expectedUrl}`
  return namesDatabase(parsed)
    ? undefined
    : `its path or \`db\` is not a database number: ${expectedUrl}`
}

/** A URL's part as written and decoded (a malformed `%` escape as written only). */
const spellings = (part: string): ReadonlyArray<string> => {
  try {
    return [part, decodeURIComponent(part)]
  } catch {
    return [part]
  }
}

/** `reason` without the URL's user and password (ioredis's `?password=` too): an error of the client may quote them. */
const withoutCredentials = (reason: string, url: string): string => {
  if (!URL.canParse(url)) return reason
  const { password, searchParams, username } = new URL(url)
  return [...spellings(password), ...spellings(username), searchParams.get("password") ?? ""]
    .filter((secret) => secret.length >= 4)
    .reduce((text, secret) => text.split(secret).join("***"), reason)
}

/**
 * Selects the URL's database again, awaited: ioredis selects it as it connects but, where the
 * server has no such database, tells only its error listener and goes on in database 0, where
 * this process would share its state with whatever else uses that one.
 */
const selectDatabase = async (client: IORedis): Promise<void> => {
  const database = client.options.db ?? 0
  if (database === 0) return
  try {
    await client.select(database)
  } catch (cause) {
    const reason = reasonOf(cause)
    throw new Error(/out of range/i.test(reason) ? `it has no database ${database} (${reason})` : `selecting database ${database}: ${reason}`)
  }
}

/** Opens a connection (see `subscriberOf` for `autoResubscribe`); the scope closes it. */
const connect = (url: string, options: Options, autoResubscribe = true): Effect.Effect<IORedis, RedisUnavailable, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const problem = urlProblem(url)
        if (problem !== undefined) throw new Error(problem)
        // Loaded here, when a connection opens, so that a program that never uses Redis never loads
        // ioredis. Imported from ESM, a CommonJS module is its `module.exports` under `default`
        // (a bundle gives nothing else), and ioredis's `module.exports.default` is the client.
        const Redis = (await import("ioredis")).default.default
        const client: IORedis = new Redis(url, clientOptions(options, autoResubscribe))
        // Errors reach callers through their commands; without a listener ioredis prints them. The
        // first says why a connection failed (ECONNREFUSED, NOAUTH, WRONGPASS): `connect` itself
        // rejects with "Connection is closed." whatever the cause.
        let firstError: unknown
        client.on("error", (error) => {
          firstError ??= error
        })
        try {
          await client.connect().catch((cause) => Promise.reject(firstError ?? cause))
          await selectDatabase(client)
          return client
        } catch (cause) {
          client.disconnect()
          throw cause
        }
      },
      catch: (cause) => new RedisUnavailable({ url: displayUrl(url), reason: withoutCredentials(connectReason(cause), url) })
    }),
    (client) => Effect.sync(() => client.disconnect())
  )

export const make = (options: Options): Effect.Effect<Service, RedisUnavailable, Scope.Scope> =>
  Effect.gen(function*() {
    const prefix = options.prefix ?? defaults.prefix
    assertValid("Redis", [isValidPrefix(prefix) ? undefined : `prefix: expected ${invalidPrefix}, got "${prefix}"`])
    const url = Redacted.isRedacted(options.url) ? Redacted.value(options.url) : options.url
    const client = yield* connect(url, options)
    const subscriptions = yield* subscriberOf(url, options)
    const ready = yield* SubscriptionRef.make(true)
    const setReady = (value: boolean) => () => Effect.runSync(SubscriptionRef.set(ready, value))
    client.on("ready", setReady(true))
    client.on("close", setReady(false))
    yield* warnOfRefusedCredentials(client, url)

    const run = <A>(operation: string, send: () => Promise<A>): Effect.Effect<A, RedisError> =>
      Effect.tryPromise({
        try: send,
        catch: (cause) => new RedisError({ operation, reason: failureReason(client, cause) })
      })

    const script = (lua: string) => {
      const sha = createHash("sha1").update(lua).digest("hex")
      return (keys: ReadonlyArray<string>, args: ReadonlyArray<string | number>) =>
        run("EVALSHA", async () => {
          try {
            return await client.evalsha(sha, keys.length, ...keys, ...args)
          } catch (cause) {
            if (!reasonOf(cause).startsWith("NOSCRIPT")) throw cause
            return await client.eval(lua, keys.length, ...keys, ...args)
          }
        })
    }

    return {
      url: displayUrl(url),
      key: (...parts) => `{${prefix}}:${parts.map(escapePart).join(":")}`,
      script,
      command: (name, args) => run(name, () => client.call(name, ...args)),
      publish: (channel, message) => Effect.asVoid(run("PUBLISH", () => client.publish(channel, message))),
      subscribe: subscriptions.add,
      isReady: SubscriptionRef.get(ready),
      readiness: ready.changes
    } satisfies Service
  })

/** ioredis's words for credentials a server refuses. */
const refusedCredentials = /^(?:NOAUTH|WRONGPASS|NOPERM)\b/

/**
 * Warns, once until the connection is back, when the server refuses the credentials `client`
 * reconnects with: a password rotated under a running process. Its commands would only say the
 * connection is down.
 */
const warnOfRefusedCredentials = (client: IORedis, url: string): Effect.Effect<void> =>
  Effect.map(Effect.runtime<never>(), (runtime) => {
    let warned = false
    client.on("ready", () => {
      warned = false
    })
    client.on("error", (error: unknown) => {
      const reason = reasonOf(error)
      if (warned || !refusedCredentials.test(reason)) return
      warned = true
      Runtime.runFork(runtime)(Effect.logWarning(
        `Redis at ${displayUrl(url)} refuses this process's credentials as it reconnects (${withoutCredentials(reason, url)}): ` +
          "is its password or user changed? Calls go on without Redis meanwhile"
      ))
    })
  })

/**
 * The subscriber connection (a connection in pub/sub mode takes no other command) and its handlers
 * by channel: one SUBSCRIBE per channel, however many handlers.
 */
const subscriberOf = (url: string, options: Options) =>
  Effect.gen(function*() {
    const connection = yield* connect(url, options, false)
    const handlers = new Map<string, Set<(message: string) => void>>()
    connection.on("message", (channel: string, message: string) => {
      for (const handler of handlers.get(channel) ?? []) handler(message)
    })
    // Resubscribed here after each reconnection rather than by ioredis, which drops the promise of
    // its own: with no offline queue, a connection that closes again at once (a Redis restarting)
    // rejected it unhandled. A failure here waits for the next reconnection.
    connection.on("ready", () => {
      if (handlers.size > 0) connection.subscribe(...handlers.keys()).catch(() => {})
    })
    const remove = (channel: string, onMessage: (message: string) => void) => {
      const set = handlers.get(channel)
      set?.delete(onMessage)
      if (set?.size !== 0) return
      handlers.delete(channel)
      connection.unsubscribe(channel).catch(() => {})
    }
    /** Whether `channel` is new here: a SUBSCRIBE is owed. */
    const register = (channel: string, onMessage: (message: string) => void): boolean => {
      const set = handlers.get(channel)
      if (set === undefined) handlers.set(channel, new Set([onMessage]))
      else set.add(onMessage)
      return set === undefined
    }
    // Registered for the scope even when the SUBSCRIBE fails (Redis down as a limiter is built):
    // the next reconnection renews it, as it renews every channel. Its caller learns of the
    // failure, and goes on without messages until then.
    const add = (channel: string, onMessage: (message: string) => void) =>
      Effect.acquireRelease(
        Effect.sync(() => register(channel, onMessage)),
        () => Effect.sync(() => remove(channel, onMessage))
      ).pipe(Effect.flatMap((owed) =>
        owed ? Effect.tryPromise({
          try: () => connection.subscribe(channel),
          catch: (cause) => new RedisError({ operation: "SUBSCRIBE", reason: failureReason(connection, cause) })
        }) : Effect.void
      ), Effect.asVoid)
    return { add }
  })
