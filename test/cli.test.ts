import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import { main } from "../bin/weatherproof.js"
import * as Simulator from "../src/Simulator.js"

const badKey = "sk-cli-test-WRONG-7f3a9c1d2e"

/** Runs the CLI in-process with `env` as its environment, capturing what it prints. */
const runCli = (args: ReadonlyArray<string>, env: Record<string, string>) =>
  Effect.gen(function*() {
    const stdout: Array<string> = []
    const stderr: Array<string> = []
    const capture = (into: Array<string>) => (...args: ReadonlyArray<unknown>) =>
      Effect.sync(() => {
        into.push(args.map(String).join(" "))
      })
    const console: Console.Console = {
      ...(yield* Console.consoleWith(Effect.succeed)),
      log: capture(stdout),
      info: capture(stdout),
      error: capture(stderr),
      warn: capture(stderr)
    }
    const code = yield* main(["node", "weatherproof", ...args]).pipe(
      Effect.withConsole(console),
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))
    )
    return { code, stdout: stdout.join("\n"), stderr: stderr.join("\n") }
  })

const chatLine = (i: number) =>
  JSON.stringify({
    custom_id: `q-${i}`,
    method: "POST",
    url: "/v1/chat/completions",
    body: { model: "deepseek-v4-flash", messages: [{ role: "user", content: `question ${i}` }] }
  })

describe("weatherproof CLI", () => {
  it.live("batch with a rejected key fails fast, exits non-zero and never prints or writes the key", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const simulator = yield* Simulator.make()
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "cli-test-" })
      const input = `${dir}/in.jsonl`
      const output = `${dir}/out.jsonl`
      yield* fs.writeFileString(input, Array.from({ length: 30 }, (_, i) => `${chatLine(i)}\n`).join(""))

      const result = yield* runCli(["batch", input, "--output", output, "--concurrency", "2"], {
        DEEPSEEK_API_KEY: badKey,
        DEEPSEEK_BASE_URL: simulator.baseUrl
      })

      expect(result.code).toBe(1)
      const written = yield* fs.readFileString(output)
      const lines = written.trim().split("\n").map((l) => JSON.parse(l))
      expect(lines).toHaveLength(30)
      expect(lines.every((l) => l.error !== null)).toBe(true)
      expect(new Set(lines.map((l) => l.error.code))).toEqual(new Set(["KeyRejected", "NoUsableKey"]))
      // Fails fast: only the calls in flight before the key was dropped reached the server.
      expect((yield* simulator.stats).requests).toBeLessThanOrEqual(2)
      expect(result.stdout).toContain("30 failed")
      expect(result.stderr).toContain("30 of 30 lines failed")
      for (const text of [result.stdout, result.stderr, written]) expect(text).not.toContain(badKey)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch without a key says so and exits 2", () =>
    Effect.gen(function*() {
      const result = yield* runCli(["batch", "in.jsonl", "--output", "out.jsonl"], {})
      expect(result.code).toBe(2)
      expect(result.stderr).toContain("DEEPSEEK_API_KEY is not set")
    }).pipe(Effect.provide(NodeContext.layer)))

  it.live("batch with an unreadable input exits 1 with the reason", () =>
    Effect.gen(function*() {
      const result = yield* runCli(["batch", "/no/such/input.jsonl", "--output", "/no/such/out.jsonl"], {
        DEEPSEEK_API_KEY: badKey
      })
      expect(result.code).toBe(1)
      expect(result.stderr).toContain("cannot read input")
      expect(result.stderr).not.toContain(badKey)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.live("batch without --output, or with --concurrency 0, is a usage error", () =>
    Effect.gen(function*() {
      const result = yield* runCli(["batch", "in.jsonl"], { DEEPSEEK_API_KEY: badKey })
      expect(result.code).toBe(2)
      const zero = yield* runCli(["batch", "in.jsonl", "-o", "out.jsonl", "--concurrency", "0"], { DEEPSEEK_API_KEY: badKey })
      expect(zero.code).toBe(2)
      expect(zero.stderr).toContain("--concurrency must be at least 1")
    }).pipe(Effect.provide(NodeContext.layer)))

  it.live("demo runs a verified batch against the simulator and exits 0", () =>
    Effect.gen(function*() {
      const result = yield* runCli(["demo", "--requests", "40"], {})
      expect(result.code).toBe(0)
      expect(result.stdout).toContain("40 (40 succeeded, 0 failed, 0 skipped")
      expect(result.stdout).toContain("verified:")
      expect(result.stdout).toContain("a rerun sent 0 requests and skipped 40 lines")
    }).pipe(Effect.provide(NodeContext.layer)))
})
