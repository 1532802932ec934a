/**
 * A real `redis-server` for the tests, on a free loopback port, without automatic persistence,
 * stopped with the scope. `restart` kills it and starts another on the same port: empty (as after
 * a crash without persistence), or, if a test sent `SAVE`, holding that snapshot (as after a
 * crash that came back from an older one). Where the binary is absent the Redis tests are skipped
 * with `skipMessage`; CI installs it (.ci/run).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { freePort } from "./ports.js"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as Redis from "../../src/Redis.js"

const binary = "redis-server"

/** Whether `redis-server` is on the PATH. */
export const redisServerPresent: boolean = (() => {
  try {
    execFileSync(binary, ["--version"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})()

export const skipMessage = (title: string): string =>
  redisServerPresent ? title : `${title}: SKIPPED, redis-server is absent (install the package redis-server)`

export interface RedisServer {
  readonly port: number
  readonly url: string
  /** Stops the server (SIGKILL: no shutdown save) and starts one on the same port, from the last `SAVE` if any. */
  readonly restart: Effect.Effect<void>
  /** Stops the server until `start`. */
  readonly stop: Effect.Effect<void>
  readonly start: Effect.Effect<void>
}

/** Resolves once the port accepts a connection and answers PING with PONG; bounded to 5 seconds. */
const awaitPong = async (port: number): Promise<void> => {
  for (let attempt = 0; attempt < 250; attempt++) {
    const pong = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1")
      socket.once("error", () => resolve(false))
      socket.once("connect", () => socket.write("PING\r\n"))
      socket.once("data", (data) => {
        socket.destroy()
        resolve(data.toString().startsWith("+PONG"))
      })
    })
    if (pong) return
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error(`redis-server did not answer on port ${port} within 5 seconds`)
}

const launch = async (port: number, dir: string): Promise<ChildProcess> => {
  const child = spawn(binary, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], {
    stdio: "ignore"
  })
  await awaitPong(port)
  return child
}

const kill = (child: ChildProcess): Promise<void> =>
  new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGKILL")
  })

/** A server for the scope. */
export const redisServer: Effect.Effect<RedisServer, never, Scope.Scope> = Effect.gen(function*() {
  const port = yield* Effect.promise(freePort)
  const dir = yield* Effect.acquireRelease(
    Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "weatherproof-redis-"))),
    (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
  )
  let child: ChildProcess | undefined = yield* Effect.promise(() => launch(port, dir))
  const stop = Effect.promise(async () => {
    if (child !== undefined) await kill(child)
    child = undefined
  })
  const start = Effect.promise(async () => {
    child ??= await launch(port, dir)
  })
  yield* Effect.addFinalizer(() => stop)
  return { port, url: `redis://127.0.0.1:${port}`, stop, start, restart: Effect.zipRight(stop, start) }
})

/** Waits (bounded, 5 s) until the connection's `isReady` is `value`. */
export const awaitReady = (redis: Redis.Service, value: boolean) =>
  redis.readiness.pipe(Stream.filter((ready) => ready === value), Stream.take(1), Stream.runDrain, Effect.timeout("5 seconds"))

/** Every key on the server with its PTTL (-1: no expiry), listed by SCAN. */
export const keysWithTtl = (redis: Redis.Service) =>
  Effect.gen(function*() {
    const keys: Array<{ readonly key: string; readonly ttl: number }> = []
    let cursor = "0"
    do {
      const [next, batch] = (yield* redis.command("SCAN", [cursor, "COUNT", 100])) as [string, ReadonlyArray<string>]
      for (const key of batch) keys.push({ key, ttl: (yield* redis.command("PTTL", [key])) as number })
      cursor = next
    } while (cursor !== "0")
    return keys
  })

/**
 * `effect` repeated until `done` holds of its result, every 10 ms for at most 5 s: for state that
 * another process changes. Failing, it says the last result it read.
 */
export const until = <A, E>(effect: Effect.Effect<A, E>, done: (a: A) => boolean) => {
  let last: { readonly value: A } | undefined
  return effect.pipe(
    Effect.tap((value) => (last = { value })),
    Effect.filterOrFail(done),
    Effect.retry(Schedule.spaced("10 millis")),
    Effect.timeoutFail({
      duration: "5 seconds",
      onTimeout: () => new Error(`not done within 5 s; last read ${last === undefined ? "nothing" : JSON.stringify(last.value)}`)
    })
  )
}
