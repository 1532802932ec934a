/**
 * `weatherproof serve` (or any command) in a child process run from the sources
 * (`serveProcess.ts`), for the tests that send it signals or run several: its URL once it
 * listens, its exit code, what it printed.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import { type ChildProcess, spawn } from "node:child_process"

/** `weatherproof <args>` from the sources in a child process; killed with the scope. */
export const serveProcess = (args: ReadonlyArray<string>, env: Record<string, string>) =>
  Effect.gen(function*() {
    const process_: ChildProcess = yield* Effect.acquireRelease(
      Effect.sync(() =>
        spawn(
          "node_modules/.bin/vite-node",
          ["test/support/serveProcess.ts", "--", ...args],
          { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] }
        )
      ),
      (child) => Effect.sync(() => child.exitCode === null && child.kill("SIGKILL"))
    )
    let output = ""
    let errorOutput = ""
    const listening = yield* Deferred.make<string>()
    const exited = yield* Deferred.make<number | null>()
    const onData = (data: Buffer) => {
      output += data.toString("utf8")
      const match = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(output)
      if (match?.[1] !== undefined) Effect.runSync(Deferred.succeed(listening, match[1]))
    }
    process_.stdout?.on("data", onData)
    process_.stderr?.on("data", (data: Buffer) => {
      errorOutput += data.toString("utf8")
      onData(data)
    })
    process_.on("exit", (code) => Effect.runSync(Deferred.succeed(exited, code)))
    return {
      process: process_,
      url: Deferred.await(listening).pipe(Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error(output) })),
      exitCode: Deferred.await(exited).pipe(Effect.timeoutFail({ duration: "20 seconds", onTimeout: () => new Error(output) })),
      output: () => output,
      /** What it wrote on stderr, where its log goes. */
      errorOutput: () => errorOutput
    }
  })
