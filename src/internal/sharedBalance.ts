/**
 * An account's balance state as the pool shares it between processes: whether the account is
 * out of balance, and one probe of its balance at a time whose verdict every process takes.
 *
 * On Redis, under the name it is given (the pool's: the account's name and a fingerprint of its keys):
 * - `{prefix}:balance:<account>`: present while the account is out, with a TTL past its next
 *   check (each unavailable verdict sets it again); `markOk` deletes it.
 * - `{prefix}:balance:<account>:lease`: the id of the process probing now, with a TTL (`leaseMillis`,
 *   past a probe's timeout): a prober that dies holds it no longer than that.
 * - `{prefix}:balance:<account>:verdict`: the last probe's verdict, kept `verdictMillis`: a process
 *   that checks meanwhile (a start, a check due at about the same time) takes it without probing.
 * - `{prefix}:balance:<account>:changes`: the channel of `out`, `ok` and `verdict` messages.
 *
 * While Redis fails, each process keeps its balance state and probes for itself.
 *
 * @internal
 */
import { randomUUID } from "node:crypto"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as PubSub from "effect/PubSub"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as Redis from "../Redis.js"
import * as Fallback from "./redisFallback.js"

/** What a balance probe found. */
export type Verdict = "available" | "unavailable" | "no_endpoint" | "failed"

/** What another process marked. */
export type Change = "out" | "ok"

export interface SharedBalance {
  /** Whether the account is marked out of balance. */
  readonly isOut: Effect.Effect<boolean>
  /** Marks the account out for every process, until at least `forMillis` from now. */
  readonly markOut: (forMillis: number) => Effect.Effect<void>
  /** Marks it back in for every process. */
  readonly markOk: Effect.Effect<void>
  /** What other processes mark. */
  readonly changes: Stream.Stream<Change>
  /** Runs `probe` if no other process is probing, or waits for that one's verdict; answers the verdict. */
  readonly check: (probe: Effect.Effect<Verdict>) => Effect.Effect<Verdict>
}

/** One process: nothing shared, every check probes. */
export const inMemory: SharedBalance = {
  isOut: Effect.succeed(false),
  markOut: () => Effect.void,
  markOk: Effect.void,
  changes: Stream.never,
  check: (probe) => probe
}

export interface Options {
  /** How long a prober holds the lease at most. Default 35 seconds (a probe's timeout and a margin). */
  readonly leaseMillis?: number | undefined
  /** How long a verdict stands for the processes that check after it. Default 10 seconds. */
  readonly verdictMillis?: number | undefined
}

export const defaults = { leaseMillis: 35_000, verdictMillis: 10_000 } as const

/** KEYS: the mark, the channel. ARGV: TTL ms, the message. Publishes only a new mark. */
const markOutScript = `
local old = redis.call("GET", KEYS[1])
redis.call("SET", KEYS[1], "out", "PX", ARGV[1])
if not old then redis.call("PUBLISH", KEYS[2], ARGV[2]) end
return 0
`

/** KEYS: the verdict, the lease. ARGV: this process's id, lease ms. */
const leaseScript = `
local verdict = redis.call("GET", KEYS[1])
if verdict then return { "verdict", verdict } end
if redis.call("SET", KEYS[2], ARGV[1], "NX", "PX", ARGV[2]) then return { "leased" } end
return { "held", redis.call("PTTL", KEYS[2]) }
`

/** KEYS: the verdict, the lease, the channel. ARGV: this process's id, the verdict, verdict ms, the message. */
const verdictScript = `
redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3])
if redis.call("GET", KEYS[2]) == ARGV[1] then redis.call("DEL", KEYS[2]) end
redis.call("PUBLISH", KEYS[3], ARGV[4])
return 0
`

/** A waiter re-asks at least this often: a lost message costs at most this much. */
const recheckMillis = 1_000

export const onRedis = (
  redis: Redis.Service,
  account: string,
  options: Options = {}
): Effect.Effect<SharedBalance, never, Scope.Scope> =>
  Effect.gen(function*() {
    const leaseMillis = Math.ceil(options.leaseMillis ?? defaults.leaseMillis)
    const verdictMillis = options.verdictMillis ?? defaults.verdictMillis
    const mark = redis.key("balance", account)
    const lease = redis.key("balance", account, "lease")
    const verdictKey = redis.key("balance", account, "verdict")
    const channel = redis.key("balance", account, "changes")
    const id = randomUUID()
    const runMarkOut = redis.script(markOutScript)
    const runLease = redis.script(leaseScript)
    const runVerdict = redis.script(verdictScript)
    const fallback = Fallback.make(redis, `AccountPool balance of "${account}"`, "keeping its balance state locally")
    const changes = yield* Effect.acquireRelease(PubSub.unbounded<Change>(), PubSub.shutdown)
    // Completed, and replaced, on each verdict message.
    let verdictAnnounced = Deferred.unsafeMake<void>(FiberId.none)

    yield* Effect.catchAll(
      redis.subscribe(channel, (message) => {
        const [kind, sender] = message.split(" ")
        if (sender === id) return
        if (kind === "verdict") {
          const announced = verdictAnnounced
          verdictAnnounced = Deferred.unsafeMake(FiberId.none)
          Deferred.unsafeDone(announced, Exit.void)
        } else if (kind === "out" || kind === "ok") changes.unsafeOffer(kind)
      }),
      fallback.fail
    )

    const isOutShared = Effect.map(redis.command("EXISTS", [mark]), (exists) => exists === 1)
    // Back on Redis: a mark another process set meanwhile is news.
    yield* fallback.watch(
      Effect.flatMap(isOutShared, (out) => Effect.zipRight(out ? changes.offer("out") : Effect.void, fallback.back)).pipe(
        Effect.catchAll(fallback.fail)
      )
    )

    const check = (probe: Effect.Effect<Verdict>): Effect.Effect<Verdict> => {
      const shared = Effect.flatMap(runLease([verdictKey, lease], [id, leaseMillis]), (reply) => {
        const [kind, value] = reply as [string, string | number | undefined]
        if (kind === "verdict") return Effect.succeed(value as Verdict)
        if (kind === "leased") {
          return Effect.flatMap(probe, (verdict) =>
            Effect.as(
              fallback.run(Effect.asVoid(runVerdict([verdictKey, lease, channel], [id, verdict, verdictMillis, `verdict ${id}`])), Effect.void),
              verdict
            ))
        }
        const wait = Math.min(Math.max(Number(value), 1), recheckMillis)
        return Effect.zipRight(Effect.race(Deferred.await(verdictAnnounced), Effect.sleep(Duration.millis(wait))), check(probe))
      })
      return fallback.run(shared, probe)
    }

    return {
      isOut: fallback.run(isOutShared, Effect.succeed(false)),
      markOut: (forMillis) =>
        fallback.run(Effect.asVoid(runMarkOut([mark, channel], [Math.max(1, Math.ceil(forMillis)) * 2, `out ${id}`])), Effect.void),
      markOk: fallback.run(
        Effect.zipRight(redis.command("DEL", [mark]), redis.publish(channel, `ok ${id}`)),
        Effect.void
      ),
      changes: Stream.fromPubSub(changes),
      check
    }
  })
