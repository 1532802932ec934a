import { SystemError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import { spawnSync } from "node:child_process"
import { Writable } from "node:stream"
import { logLevelFirst } from "../app/cli/argv.js"
import { drawsProgress, progressBar, progressLines } from "../app/cli/batchProgress.js"
import { styled } from "../app/cli/plainText.js"
import { v8Flags } from "../app/cli/v8Tiers.js"
import { layerNone } from "../app/cli/signals.js"
import { main } from "../bin/weatherproof.js"
import * as AccountPool from "../src/AccountPool.js"
import * as ApiError from "../src/ApiError.js"
import * as Batch from "../src/Batch.js"
import * as Simulator from "../src/Simulator.js"
import * as Telemetry from "../src/Telemetry.js"
import { chatLine } from "./support/chatLine.js"
import { layerFullDisk } from "./support/fullDisk.js"
import { rawServer, reply } from "./support/rawServer.js"
import { takenPort } from "./support/ports.js"
import { processClock } from "./support/processClock.js"

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
      Effect.provide(layerNone),
      Effect.withConsole(console),
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))
    )
    return { code, stdout: stdout.join("\n"), stderr: stderr.join("\n") }
  })

/** A simulator and a temporary directory (its real path) to hold a run's input and output. */
const runFiles = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const simulator = yield* Simulator.make({ queueDelay: 0 })
  const dir = yield* fs.realPath(yield* fs.makeTempDirectoryScoped({ prefix: "cli-test-" }))
  return { dir, fs, input: `${dir}/in.jsonl`, output: `${dir}/out.jsonl`, simulator }
})

describe("weatherproof CLI", () => {
  it.live("batch with a rejected key exits 2 at start, before anything is written or sent, and never prints or writes the key", () =>
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

      // The start's balance preflight found the only key rejected: a wrong key is not transient,
      // so the run stops there, not one failed line per input line (exit 1, "run it again").
      expect(result.code).toBe(2)
      expect(result.stderr).toContain(
        "weatherproof: the upstream rejected every key (401) of account default; nothing was sent. Check DEEPSEEK_API_KEY"
      )
      expect(yield* fs.exists(output)).toBe(false)
      expect((yield* simulator.stats).requests).toBe(0)
      expect(result.stdout).toBe("")
      for (const text of [result.stdout, result.stderr]) expect(text).not.toContain(badKey)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch over an input with no request in it (empty, or blank lines only) says so, and exits 0", () =>
    Effect.gen(function*() {
      const { input, output, simulator } = yield* runFiles
      const fs = yield* FileSystem.FileSystem
      yield* fs.writeFileString(input, "\n  \n")
      const result = yield* runCli(["batch", input, "--output", output], {
        DEEPSEEK_API_KEY: Simulator.defaultKey,
        DEEPSEEK_BASE_URL: simulator.baseUrl
      })
      expect(result.code).toBe(0)
      expect(result.stdout).toContain("requests:  0 (0 succeeded, 0 failed")
      expect(result.stderr).toBe(`weatherproof: the input ${input} holds no request line: nothing was sent`)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch with a rejected key among good ones in DEEPSEEK_API_KEY answers every line, and its summary names the key by its place and variable, never itself", () =>
    Effect.gen(function*() {
      const { input, output, simulator } = yield* runFiles
      const fs = yield* FileSystem.FileSystem
      yield* fs.writeFileString(input, Array.from({ length: 4 }, (_, i) => `${chatLine(i)}\n`).join(""))
      const result = yield* runCli(["batch", input, "--output", output], {
        DEEPSEEK_API_KEY: `${Simulator.defaultKey},${badKey}`,
        DEEPSEEK_BASE_URL: simulator.baseUrl
      })
      expect(result.code).toBe(0)
      expect(result.stdout).toContain("  default: deepseek, serving, limit 8, 1 usable key (key#2 from DEEPSEEK_API_KEY rejected, resting); 4 answered")
      for (const text of [result.stdout, result.stderr, yield* fs.readFileString(output)]) expect(text).not.toContain(badKey)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch whose failed lines are all invalid input says to fix them before a rerun", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const simulator = yield* Simulator.make()
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "cli-test-" })
      const input = `${dir}/in.jsonl`
      yield* fs.writeFileString(input, [chatLine(0), "{not json", "[1, 2]", chatLine(0), ""].join("\n"))

      const result = yield* runCli(["batch", input, "--output", `${dir}/out.jsonl`], {
        DEEPSEEK_API_KEY: Simulator.defaultKey,
        DEEPSEEK_BASE_URL: simulator.baseUrl
      })

      expect(result.code).toBe(1)
      expect(result.stderr).toContain("3 of 4 lines failed (their error is in the output); their input is invalid: fix those lines")
      expect((yield* simulator.stats).requests).toBe(1)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch whose lines the upstream refuses as invalid (400) says a rerun meets the refusal again", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const notExist = reply(400, JSON.stringify({ error: { message: "Model Not Exist", type: "invalid_request_error" } }))
      const server = yield* rawServer([notExist, notExist])
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "cli-test-" })
      const input = `${dir}/in.jsonl`
      yield* fs.writeFileString(input, [chatLine(0), chatLine(1), "{not json"].join("\n"))

      const result = yield* runCli(["batch", input, "--output", `${dir}/out.jsonl`], {
        DEEPSEEK_API_KEY: "sk-cli-test-refused",
        DEEPSEEK_BASE_URL: server.url
      })

      expect(result.code).toBe(1)
      // Every failure is one to fix: a rerun before that meets them all again.
      expect(result.stderr).toContain(
        "3 of 3 lines failed (their error is in the output); 1 of them has invalid input and 2 of them were refused as invalid requests: " +
          "fix those lines, then run the same command again"
      )
      expect(server.received()).toHaveLength(2)

      // Every line refused: fix them, then rerun.
      yield* fs.writeFileString(input, chatLine(0))
      const refused = yield* rawServer([notExist])
      const again = yield* runCli(["batch", input, "--output", `${dir}/again.jsonl`], {
        DEEPSEEK_API_KEY: "sk-cli-test-refused",
        DEEPSEEK_BASE_URL: refused.url
      })
      expect(again.stderr).toContain(
        "1 of 1 lines failed (their error is in the output); they were refused as invalid requests: fix those lines, then run the same command again"
      )

      // One refused, one failing on the upstream's side: a rerun is worth it for the other.
      yield* fs.writeFileString(input, [chatLine(0), chatLine(1)].join("\n"))
      const mixed = yield* rawServer([notExist, reply(500, JSON.stringify({ error: { message: "boom", type: "server_error" } }))])
      const third = yield* runCli(["batch", input, "--output", `${dir}/third.jsonl`, "--retries", "0"], {
        DEEPSEEK_API_KEY: "sk-cli-test-refused",
        DEEPSEEK_BASE_URL: mixed.url
      })
      expect(third.stderr).toContain(
        "2 of 2 lines failed (their error is in the output); 1 of them was refused as an invalid request, which a rerun meets again until it is fixed; " +
          "run the same command again"
      )
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch whose budget ran out says the lines were not sent and that a rerun spends a budget as large again", () =>
    Effect.gen(function*() {
      const { fs, input, output, simulator } = yield* runFiles
      yield* fs.writeFileString(input, [chatLine(0), chatLine(1), chatLine(2)].join("\n"))

      const result = yield* runCli(["batch", input, "--output", output, "--concurrency", "1"], {
        DEEPSEEK_API_KEY: Simulator.defaultKey,
        DEEPSEEK_BASE_URL: simulator.baseUrl,
        WEATHERPROOF_BUDGET_USD: "0"
      })

      expect(result.code).toBe(1)
      expect(result.stderr).toContain(
        "3 of 3 lines failed (their error is in the output); none of them was sent: the run spent its budget (WEATHERPROOF_BUDGET_USD). " +
          "A run has a budget of its own: running the same command again sends them and may spend as much again"
      )
      expect(result.stderr).not.toContain("skips the lines already answered")
      expect((yield* simulator.stats).requests).toBe(0)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch whose budget ran out before a retry does not say the line was not sent: its first attempt was, and billed", () =>
    Effect.gen(function*() {
      const { fs, input, output } = yield* runFiles
      const simulator = yield* Simulator.make({ queueDelay: 0, faults: { script: ["insufficientResource"] } })
      yield* fs.writeFileString(input, chatLine(0))

      const result = yield* runCli(["batch", input, "--output", output], {
        DEEPSEEK_API_KEY: Simulator.defaultKey,
        DEEPSEEK_BASE_URL: simulator.baseUrl,
        WEATHERPROOF_BUDGET_USD: "0.0000001"
      })

      expect(result.code).toBe(1)
      expect((yield* simulator.stats).requests).toBe(1)
      expect(result.stderr).toContain(
        "1 of 1 lines failed (their error is in the output); each was stopped before its answer: the run spent its budget (WEATHERPROOF_BUDGET_USD)"
      )
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("serve on a port another process listens on says so and how to go on (exit 1), not node's EADDRINUSE", () =>
    Effect.gen(function*() {
      const { simulator } = yield* runFiles
      const port = yield* takenPort

      const result = yield* runCli(["serve", "--port", String(port)], {
        DEEPSEEK_API_KEY: Simulator.defaultKey,
        DEEPSEEK_BASE_URL: simulator.baseUrl
      })

      expect(result.code).toBe(1)
      expect(result.stderr).toBe(
        `weatherproof: cannot listen on 127.0.0.1:${port}: another process listens on it; stop it, or give another --port`
      )
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("--version is the package's version (written in the command line, where reading package.json would cost start-up)", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { version } = JSON.parse(yield* fs.readFileString(new URL("../package.json", import.meta.url).pathname)) as { version: string }
      const result = yield* runCli(["--version"], {})
      expect(result.stdout.trim()).toBe(version)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("each command's help speaks of what it has: batch lines' deadlines in batch's only", () =>
    Effect.gen(function*() {
      const batchHelp = yield* runCli(["batch", "--help"], {})
      // The name once, with the version (@effect/cli wrote a title of the name alone above it).
      expect(batchHelp.stdout.startsWith("weatherproof 0.1.0\n\nUSAGE\n")).toBe(true)
      expect(batchHelp.stdout).toContain("a batch line's own `deadlines` override these three")
      // A usage line a shell can run: the program's name first (@effect/cli gave `$ batch …`).
      expect(batchHelp.stdout).toContain("\n$ weatherproof batch (-o, --output file) [--summary file]")
      const serveHelp = yield* runCli(["serve", "--help"], {})
      expect(serveHelp.stdout).toContain("\n$ weatherproof serve ")
      expect(serveHelp.stdout).toContain("per attempt, the whole call (default 30m)")
      expect(serveHelp.stdout).not.toContain("batch line")
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("a flag given twice is said as such (exit 2), not as an unknown argument", () =>
    Effect.gen(function*() {
      const cases: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
        [["batch", "in.jsonl", "-o", "a.jsonl", "-o", "b.jsonl"], "--output is given twice"],
        [["batch", "in.jsonl", "--output", "a.jsonl", "--output=b.jsonl"], "--output is given twice"],
        [["batch", "in.jsonl", "-o", "a.jsonl", "--concurrency", "2", "--concurrency", "3"], "--concurrency is given twice"],
        [["--log-level", "debug", "serve", "--port", "1", "--port", "2"], "--port is given twice"]
      ]
      for (const [args, message] of cases) {
        const result = yield* runCli(args, {})
        expect(result.code, args.join(" ")).toBe(2)
        expect(result.stderr, args.join(" ")).toBe(`weatherproof: ${message}: give each flag once`)
      }
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("--log-level with a level @effect/cli does not know, or none, says so (exit 2), not as an unknown argument or subcommand", () =>
    Effect.gen(function*() {
      const levels = "all, trace, debug, info, warning, error, fatal, none"
      const cases: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
        [["--log-level", "verbose", "batch", "in.jsonl", "-o", "a.jsonl"], `--log-level: expected one of ${levels}, got "verbose"`],
        [["batch", "in.jsonl", "-o", "a.jsonl", "--log-level=WARN"], `--log-level: expected one of ${levels}, got "WARN"`],
        [["serve", "--log-level"], `--log-level: expected one of ${levels}, got nothing`],
        // A key pasted in the wrong place is not echoed.
        [["batch", "--log-level", "sk-0123456789abcdef0123456789abcdef"], `--log-level: expected one of ${levels}, got something shaped like a key (not shown)`]
      ]
      for (const [args, message] of cases) {
        const result = yield* runCli(args, {})
        expect(result.code, args.join(" ")).toBe(2)
        expect(result.stderr, args.join(" ")).toBe(`weatherproof: ${message}`)
      }
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it("moves --log-level before the command, where @effect/cli takes it, leaving what follows -- alone", () => {
    const node = ["node", "weatherproof"]
    expect(logLevelFirst([...node, "serve", "--port", "0", "--log-level", "debug"])).toEqual([...node, "--log-level", "debug", "serve", "--port", "0"])
    expect(logLevelFirst([...node, "serve", "--log-level=debug", "--port", "0"])).toEqual([...node, "--log-level=debug", "serve", "--port", "0"])
    const untouched = [...node, "batch", "in.jsonl", "--", "--log-level", "debug"]
    expect(logLevelFirst(untouched)).toBe(untouched)
  })

  it.live("serve takes --log-level after its own flags, as its help lists it (it was an unknown argument there)", () =>
    Effect.gen(function*() {
      const result = yield* runCli(["serve", "--port", "0", "--accounts", "/nonexistent/accounts.json", "--log-level", "debug"], {})
      expect(result.stderr).not.toContain("unknown argument")
      expect(result.stderr).toContain("/nonexistent/accounts.json")
      expect(result.code).toBe(2)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("a flag given no value says so (exit 2), not as an unknown argument", () =>
    Effect.gen(function*() {
      const cases: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
        [["batch", "in.jsonl", "-o", "a.jsonl", "--timeout"], "--timeout"],
        [["batch", "in.jsonl", "-o", "a.jsonl", "--timeout", "--retries", "3"], "--timeout"],
        [["batch", "in.jsonl", "--accounts", "-o", "a.jsonl"], "--accounts"],
        [["batch", "in.jsonl", "-o"], "-o"],
        [["batch", "in.jsonl", "-o", "a.jsonl", "--concurrency", "--help"], "--concurrency"],
        [["--log-level", "debug", "serve", "--host"], "--host"],
        [["serve", "--port", "--drain-timeout=5s"], "--port"]
      ]
      for (const [args, flag] of cases) {
        const result = yield* runCli(args, {})
        expect(result.code, args.join(" ")).toBe(2)
        expect(result.stderr, args.join(" ")).toBe(`weatherproof: ${flag} takes a value, and none was given after it`)
      }
      // A value that merely starts with a dash is a value (`--retries -1` is refused by the command itself).
      const negative = yield* runCli(["batch", "in.jsonl", "-o", "a.jsonl", "--retries", "-1"], {})
      expect(negative.stderr).toBe("weatherproof: --retries must be at least 0; nothing was sent")
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("--wizard without a terminal (cron, CI, nohup) is refused, where it would wait for answers for good", () =>
    Effect.gen(function*() {
      for (const args of [["--wizard"], ["batch", "--wizard"], ["serve", "--wizard"]]) {
        const result = yield* runCli(args, {}).pipe(Effect.timeout("10 seconds"))
        expect(result.code, args.join(" ")).toBe(2)
        expect(result.stderr, args.join(" ")).toContain("weatherproof: --wizard asks its questions on a terminal, and standard input is none")
      }
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch without a key says so and exits 2", () =>
    Effect.gen(function*() {
      const { fs, input, output } = yield* runFiles
      yield* fs.writeFileString(input, `${chatLine(1)}\n`)
      const result = yield* runCli(["batch", input, "--output", output], {})
      expect(result.code).toBe(2)
      expect(result.stderr).toContain("DEEPSEEK_API_KEY is not set")
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch with a base URL that is not an http(s) URL says which variable, what it holds, and exits 2", () =>
    Effect.gen(function*() {
      const { fs, input, output } = yield* runFiles
      yield* fs.writeFileString(input, `${chatLine(1)}\n`)
      const result = yield* runCli(["batch", input, "--output", output], {
        DEEPSEEK_API_KEY: badKey,
        DEEPSEEK_BASE_URL: "api.deepseek.com"
      })
      expect(result.code).toBe(2)
      expect(result.stderr).toBe(
        `weatherproof: invalid configuration: DEEPSEEK_BASE_URL: expected an http(s) URL such as https://api.deepseek.com, got "api.deepseek.com"`
      )
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch with a proxy that is no http(s) URL names the variable, never its text, and exits 2 before anything is sent", () =>
    Effect.gen(function*() {
      const { fs, input, output, simulator } = yield* runFiles
      yield* fs.writeFileString(input, `${chatLine(1)}\n`)
      const result = yield* runCli(["batch", input, "--output", output], {
        DEEPSEEK_API_KEY: badKey,
        DEEPSEEK_BASE_URL: simulator.baseUrl,
        HTTP_PROXY: "socks5://proxy-user:pr0xy-pw@127.0.0.1:1080"
      })
      expect(result.code).toBe(2)
      expect(result.stderr).toBe("weatherproof: invalid configuration: HTTP_PROXY: must be an http(s) URL, as http://host:port")
      expect((yield* simulator.stats).requests).toBe(0)
      expect(yield* fs.exists(output)).toBe(false)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch with an input that is not there exits 2 before anything is sent", () =>
    Effect.gen(function*() {
      const { dir, simulator } = yield* runFiles
      // Before, the run warmed its connections and asked the balance, then exited 1 ("cannot read input").
      const result = yield* runCli(["batch", "/no/such/input.jsonl", "--output", `${dir}/out.jsonl`], {
        DEEPSEEK_API_KEY: badKey,
        DEEPSEEK_BASE_URL: simulator.baseUrl
      })
      expect(result.code).toBe(2)
      expect(result.stderr).toBe("weatherproof: the input /no/such/input.jsonl does not exist; nothing was sent")
      expect((yield* simulator.stats).requests).toBe(0)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch with an input this user may not read exits 2 before anything is sent, as one that is not there does", () =>
    Effect.gen(function*() {
      const { input, output, simulator } = yield* runFiles
      const fs = yield* FileSystem.FileSystem
      yield* fs.writeFileString(input, `${chatLine(1)}\n`)
      // Another user's file of mode 0600 (root reads every file: the refusal is the file system's).
      const denied = Layer.succeed(FileSystem.FileSystem, {
        ...fs,
        access: (path, options) =>
          path === input
            ? Effect.fail(
              new SystemError({ reason: "PermissionDenied", module: "FileSystem", method: "access", pathOrDescriptor: path, description: `EACCES: permission denied, access '${path}'` })
            )
            : fs.access(path, options)
      })
      const result = yield* runCli(["batch", input, "--output", output], {
        DEEPSEEK_API_KEY: badKey,
        DEEPSEEK_BASE_URL: simulator.baseUrl
      }).pipe(Effect.provide(denied))
      expect(result.code).toBe(2)
      expect(result.stderr).toBe(`weatherproof: the input ${input} cannot be read by this user (permission denied); nothing was sent`)
      expect((yield* simulator.stats).requests).toBe(0)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch on a full disk stops sending, prints the summary and how to resume, even when the summary cannot be written", () =>
    Effect.gen(function*() {
      const { dir, fs, input, output, simulator } = yield* runFiles
      const summary = `${dir}/summary.json`
      yield* fs.writeFileString(input, Array.from({ length: 300 }, (_, i) => `${chatLine(i)}\n`).join(""))

      const args = ["batch", input, "--output", output, "--summary", summary, "--concurrency", "4"]
      const result = yield* runCli(args, { DEEPSEEK_API_KEY: "sk-sim-default", DEEPSEEK_BASE_URL: simulator.baseUrl }).pipe(
        Effect.provide(layerFullDisk([output, summary], 4000))
      )

      expect(result.code).toBe(1)
      expect(result.stdout).toContain("stopped:   the output could not be written: the run stopped; the lines not answered are not in the output (a rerun sends them)")
      expect(result.stderr).toContain(`cannot write output ${output}: ENOSPC: no space left on device, write`)
      // The summary counts the answers in the output, a torn last line not among them.
      const whole = (yield* fs.readFileString(output)).split("\n").slice(0, -1).length
      expect(result.stdout).toContain(`(${whole} succeeded, 0 failed`)
      expect(result.stderr).toMatch(/; \d+ results? received in this run (was|were) not written/)
      expect(result.stderr).toContain(`cannot write the summary ${summary}: ENOSPC`)
      expect(result.stderr).toContain(
        `once the output can be written again, run the same command again to resume:\n  weatherproof batch ${input} --output ${output}`
      )
      // Nothing is sent after the failed write but the few calls then in flight.
      expect((yield* simulator.stats).requests).toBeLessThan(100)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch with a --summary it could not write at the end (no such directory, the input or the output), an output that is the input, a directory for a file, or `-`, exits 2 before sending anything", () =>
    Effect.gen(function*() {
      const { dir, fs, input, output, simulator } = yield* runFiles
      yield* fs.writeFileString(input, `${chatLine(1)}\n`)
      const env = { DEEPSEEK_API_KEY: "sk-sim-default", DEEPSEEK_BASE_URL: simulator.baseUrl }
      const refused = {
        [`${dir}/missing/summary.json`]: `--summary ${dir}/missing/summary.json: there is no directory ${dir}/missing; nothing was sent`,
        [input]: `--summary ${input} is the input file; nothing was sent`,
        [output]: `--summary ${output} is the output file; nothing was sent`,
        [`${output}.lock`]: `--summary ${output}.lock is the output's lock; nothing was sent`
      }
      for (const [summary, message] of Object.entries(refused)) {
        const result = yield* runCli(["batch", input, "--output", output, "--summary", summary], env)
        expect(result.code).toBe(2)
        expect(result.stderr).toBe(`weatherproof: ${message}`)
      }
      // Nor the accounts file the run reads (its keys would be gone).
      const accounts = `${dir}/accounts.json`
      yield* fs.writeFileString(accounts, "{}")
      const overAccounts = yield* runCli(["batch", input, "--output", output, "--accounts", accounts, "--summary", accounts], env)
      expect(overAccounts.code).toBe(2)
      expect(overAccounts.stderr).toBe(`weatherproof: --summary ${accounts} is the accounts file; nothing was sent`)
      // Nor the pricing table the run prices with, which would be gone at the next run.
      const pricing = `${dir}/pricing.json`
      yield* fs.writeFileString(pricing, JSON.stringify({ models: { "deepseek-v4-flash": { cacheHit: 0.03, cacheMiss: 0.3, output: 1 } } }))
      const overPricing = yield* runCli(["batch", input, "--output", output, "--summary", pricing], { ...env, WEATHERPROOF_PRICING_FILE: pricing })
      expect(overPricing.code).toBe(2)
      expect(overPricing.stderr).toBe(`weatherproof: --summary ${pricing} is the pricing table (WEATHERPROOF_PRICING_FILE); nothing was sent`)
      // A link to a file in no directory, told now, not once the run was paid for.
      yield* fs.symlink(`${dir}/missing/summary.json`, `${dir}/dangling.json`)
      const dangling = yield* runCli(["batch", input, "--output", output, "--summary", `${dir}/dangling.json`], env)
      expect(dangling.code).toBe(2)
      expect(dangling.stderr).toBe(`weatherproof: --summary ${dir}/dangling.json: there is no directory ${dir}/missing; nothing was sent`)
      // An empty path (a variable unset in a script) is the working directory: refused for what it is.
      for (const flag of ["--output", "--summary"]) {
        const empty = yield* runCli(["batch", input, "--output", flag === "--output" ? "" : output, ...(flag === "--summary" ? [flag, ""] : [])], env)
        expect(empty.code, flag).toBe(2)
        expect(empty.stderr, flag).toContain(`${flag}: expected a path, got ""`)
      }
      // A summary linked to the output not made yet would have replaced the results with itself.
      yield* fs.symlink(output, `${dir}/summary-link.json`)
      const linked = yield* runCli(["batch", input, "--output", output, "--summary", `${dir}/summary-link.json`], env)
      expect(linked.code).toBe(2)
      expect(linked.stderr).toBe(`weatherproof: --summary ${dir}/summary-link.json is the output file; nothing was sent`)
      // The output naming the input (through a link too) is a usage error of the same kind.
      yield* fs.symlink(input, `${dir}/link.jsonl`)
      for (const same of [input, `${dir}/link.jsonl`]) {
        const result = yield* runCli(["batch", input, "--output", same], env)
        expect(result.code).toBe(2)
        expect(result.stderr).toBe(`weatherproof: the output file ${same} is the input file; nothing was sent`)
      }
      const fifo = `${dir}/fifo`
      expect(spawnSync("mkfifo", [fifo]).status).toBe(0)
      const device = `${dir}/null`
      const madeDevice = spawnSync("mknod", [device, "c", "1", "3"]).status === 0
      // An output of two names (a hard link): the rename would part them, the lock covers one.
      const twoNames = `${dir}/two-names.jsonl`
      yield* fs.writeFileString(twoNames, "")
      yield* fs.link(twoNames, `${dir}/two-names-too.jsonl`)
      // What Windows PowerShell 5's `>` writes: UTF-16, a byte-order mark first.
      const utf16 = `${dir}/utf16.jsonl`
      yield* fs.writeFile(utf16, Buffer.from(`\uFEFF${chatLine(1)}\n`, "utf16le"))
      // A directory given for a file, or an output with no directory, named with its flag (the input is the argument).
      const directories: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
        [[dir, "--output", output], `the input ${dir} is a directory, not a file`],
        [[input, "--output", dir], `--output ${dir} is a directory, not a file`],
        [[input, "--output", output, "--summary", dir], `--summary ${dir} is a directory, not a file`],
        [[input, "--output", `${dir}/missing/out.jsonl`], `--output ${dir}/missing/out.jsonl: there is no directory ${dir}/missing`],
        [[input, "--output", `${input}/out.jsonl`], `--output ${input}/out.jsonl: ${input} is a file, not a directory`],
        [[input, "--output", twoNames], `--output ${twoNames} has 2 names (hard links): a batch replaces it by a rename, which would part them, and a run given another of its names would not see this run's lock; give a file of one name`],
        [[utf16, "--output", output], `the input ${utf16} is UTF-16 (its byte-order mark says so), not UTF-8: save it as UTF-8 (in PowerShell, Set-Content -Encoding utf8)`],
        // A pipe would hold the run; a device would be replaced by the rename (as root, /dev/null:
        // a device of its own here, made where the test may make one).
        [[input, "--output", fifo], `--output ${fifo} is a named pipe, not a file: a batch replaces its files by a rename`],
        ...(madeDevice
          ? [
            [[input, "--output", device], `--output ${device} is a character device, not a file: a batch replaces its files by a rename`],
            [[input, "--output", output, "--summary", device], `--summary ${device} is a character device, not a file: a batch replaces its files by a rename`]
          ] as const
          : [])
      ]
      for (const [args, message] of directories) {
        const result = yield* runCli(["batch", ...args], env)
        expect(result.code).toBe(2)
        expect(result.stderr).toBe(`weatherproof: ${message}; nothing was sent`)
      }
      // `-` for standard input or output, before an option (which @effect/cli misreads) or after,
      // also after a global option that takes a value (its value is not the command).
      const dashes = [
        ["batch", "-", "--output", output],
        ["batch", "--output", output, "-"],
        ["batch", input, "-o", "-"],
        ["--log-level", "debug", "batch", input, "-o", "-"],
        ["--log-level", "debug", "batch", "-", "-o", output],
        ["batch", input, "--output=-"]
      ]
      for (const args of dashes) {
        const result = yield* runCli(args, env)
        expect(result.code).toBe(2)
        expect(result.stderr).toContain("weatherproof: batch takes its input and its output by path, not `-`")
      }
      // The summary's own: its text is on stdout already.
      for (const summaryDash of [["--summary", "-"], ["--summary=-"]]) {
        const result = yield* runCli(["batch", input, "-o", output, ...summaryDash], env)
        expect(result.code).toBe(2)
        expect(result.stderr).toBe(
          "weatherproof: --summary takes a path for the summary's JSON, not `-`: its text goes to stdout already; nothing was sent"
        )
      }
      expect((yield* simulator.stats).requests).toBe(0)
      expect(yield* fs.exists(output)).toBe(false)
      expect(yield* fs.readFileString(input)).toBe(`${chatLine(1)}\n`)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("serve with an alert webhook that is not an http(s) URL, from the flag or WEATHERPROOF_ALERT_WEBHOOK, an idle connection timeout of 0s or a body limit of 0 MiB, exits 2 before listening", () =>
    Effect.gen(function*() {
      const env = { DEEPSEEK_API_KEY: badKey }
      const cases: ReadonlyArray<readonly [ReadonlyArray<string>, Record<string, string>, string]> = [
        [["--alert-webhook", "ftp://hooks.example/T0/secret"], env, "weatherproof: --alert-webhook must be an http(s) URL"],
        [[], { ...env, WEATHERPROOF_ALERT_WEBHOOK: "hooks.example/T0/secret" }, "weatherproof: WEATHERPROOF_ALERT_WEBHOOK must be an http(s) URL"],
        [["--idle-connection-timeout", "0s"], env, `--idle-connection-timeout: expected a duration above 0 such as 30s, 500ms, 2m or 1h, got "0s"`],
        [["--max-body-mib", "0"], env, "weatherproof: --max-body-mib must be at least 1"]
      ]
      for (const [flags, environment, message] of cases) {
        const result = yield* runCli(["serve", "--port", "0", ...flags], environment)
        expect(result.code).toBe(2)
        expect(result.stderr).toContain(message)
        expect(result.stderr).not.toContain("secret")
        expect(result.stdout).not.toContain("listening")
      }
    }).pipe(Effect.provide(NodeContext.layer)))

  it.live("batch without --output, or with --concurrency 0, is a usage error", () =>
    Effect.gen(function*() {
      const result = yield* runCli(["batch", "in.jsonl"], { DEEPSEEK_API_KEY: badKey })
      expect(result.code).toBe(2)
      const zero = yield* runCli(["batch", "in.jsonl", "-o", "out.jsonl", "--concurrency", "0"], { DEEPSEEK_API_KEY: badKey })
      expect(zero.code).toBe(2)
      expect(zero.stderr).toContain("--concurrency must be at least 1")
    }).pipe(Effect.provide(NodeContext.layer)))

  it.live("batch with a bad accounts file exits 2 naming the file and every bad field, never a key", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "cli-test-" })
      const accounts = `${dir}/accounts.json`
      yield* fs.writeFileString(
        accounts,
        JSON.stringify({
          accounts: [
            { name: "a", provider: "deepsick", baseUrl: badKey, keys: [badKey] },
            { name: "b", provider: "deepseek", baseUrl: "http://127.0.0.1:1", keys: [badKey], extra: badKey, fallback: "yes" }
          ]
        })
      )
      yield* fs.writeFileString(`${dir}/in.jsonl`, `${chatLine(1)}\n`)
      const result = yield* runCli(["batch", `${dir}/in.jsonl`, "-o", `${dir}/out.jsonl`, "--accounts", accounts], {
        DEEPSEEK_API_KEY: badKey
      })
      expect(result.code).toBe(2)
      expect(result.stderr).toContain(`invalid accounts file ${accounts}`)
      for (const field of ["accounts[0].provider", "accounts[0].baseUrl", "accounts[1].extra", "accounts[1].fallback"]) {
        expect(result.stderr).toContain(field)
      }
      expect(result.stderr).not.toContain(badKey)
      expect(result.stdout).not.toContain(badKey)

      // Not JSON at all, with a key in the text: the position, not the text.
      yield* fs.writeFileString(accounts, `{"accounts": [{"keys": ["${badKey}"`)
      const broken = yield* runCli(["batch", `${dir}/in.jsonl`, "-o", `${dir}/out.jsonl`, "--accounts", accounts], {})
      expect(broken.code).toBe(2)
      expect(broken.stderr).toContain("not valid JSON")
      expect(broken.stderr).not.toContain(badKey)
      expect((yield* fs.exists(`${dir}/out.jsonl`))).toBe(false)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch over an accounts file writes the summary JSON: billed tokens, cost, per account; --concurrency fixes each limit", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const simulator = yield* Simulator.make({
        accounts: { one: { keys: ["sk-sim-one"] }, two: { keys: ["sk-sim-two"] } },
        limit: 50,
        queueDelay: { min: "2 millis", max: "10 millis" },
        cacheHitRatio: 0.5
      })
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "cli-test-" })
      const input = `${dir}/in.jsonl`
      const summaryPath = `${dir}/summary.json`
      yield* fs.writeFileString(input, Array.from({ length: 60 }, (_, i) => `${chatLine(i)}\n`).join(""))
      const account = (name: string) => ({ name, provider: "deepseek", baseUrl: simulator.baseUrl, keys: [`sk-sim-${name}`] })
      yield* fs.writeFileString(`${dir}/accounts.json`, JSON.stringify({ accounts: [account("one"), account("two")] }))

      const result = yield* runCli(
        ["batch", input, "-o", `${dir}/out.jsonl`, "--accounts", `${dir}/accounts.json`, "--summary", summaryPath, "--concurrency", "2"],
        {}
      )
      expect(result.code).toBe(0)
      const stats = yield* simulator.stats
      const summary = JSON.parse(yield* fs.readFileString(summaryPath))
      const billed = (name: string) => stats.accounts[name]!.billed
      expect(summary).toMatchObject({
        requests: 60,
        succeeded: 60,
        failed: 0,
        attempts: stats.requests,
        rate_limited: 0,
        prompt_tokens: billed("one").prompt + billed("two").prompt,
        completion_tokens: billed("one").completion + billed("two").completion,
        cache_hit_tokens: billed("one").cacheHit + billed("two").cacheHit,
        reasoning_tokens: 0
      })
      expect(summary.prompt_tokens).toBeGreaterThan(0)
      expect(summary.cache_hit_tokens).toBeGreaterThan(0)
      expect(summary.cost_usd).toBeGreaterThan(0)
      for (const name of ["one", "two"]) {
        expect(summary.accounts[name]).toMatchObject({
          provider: "deepseek",
          fallback: false,
          limit: 2,
          attempts: stats.accounts[name]!.requests,
          prompt_tokens: billed(name).prompt,
          completion_tokens: billed(name).completion
        })
        // --concurrency 2 held: the server (limit 50) never saw more than 2 at once per account.
        expect(stats.accounts[name]!.maxInFlight).toBeLessThanOrEqual(2)
        expect(stats.accounts[name]!.completed).toBeGreaterThan(0)
      }
      expect(result.stdout).toContain("cost:      $")
      expect(result.stdout).toMatch(/ {2}one: deepseek, serving, limit 2, 1 usable key; \d+ answered/)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch keeps in flight what the upstream admits: a cap of several hundred is reached and held, not 256", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const cap = 400
      // Enough calls for the climb to reach the cap while other work shares the cores: with 1,600
      // and both cores busy beside it, the peak was 347-358.
      const lines = 2_400
      // Long calls keep the CPU per second low: the simulator shares this process.
      const simulator = yield* Simulator.make({ limit: cap, queueDelay: "3 seconds" })
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "cli-scale-" })
      const input = `${dir}/in.jsonl`
      yield* fs.writeFileString(input, Array.from({ length: lines }, (_, i) => `${chatLine(i)}\n`).join(""))

      const result = yield* runCli(["batch", input, "--output", `${dir}/out.jsonl`], {
        DEEPSEEK_API_KEY: "sk-sim-default",
        DEEPSEEK_BASE_URL: simulator.baseUrl
      })

      expect(result.code).toBe(0)
      const stats = yield* simulator.stats
      expect(stats.completed).toBe(lines)
      // The adaptive limit climbs past the old fixed 256 to the cap and the read-ahead follows it.
      expect(stats.accounts.default!.maxInFlight).toBeGreaterThanOrEqual(cap * 0.9)
      // Finding a cap this size costs at most an eighth of it in 429s, once. Starved in a full
      // test run, the CLI reads the overshoot's 429s late, so its ceiling can sit above the cap
      // (423 for 400): a 429 recovering there is no fall, or a second climb doubled the count.
      expect(stats.rateLimited).toBeLessThanOrEqual(cap / 8)
      const written = (yield* fs.readFileString(`${dir}/out.jsonl`)).trim().split("\n")
      expect(new Set(written.map((l) => JSON.parse(l).custom_id)).size).toBe(lines)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)), { timeout: 60_000 })

  it.live("demo runs a verified batch against the simulator and exits 0", () =>
    Effect.gen(function*() {
      const result = yield* runCli(["demo", "--requests", "40"], {})
      expect(result.code).toBe(0)
      expect(result.stdout).toContain("40 (40 succeeded, 0 failed, 0 skipped")
      expect(result.stdout).toContain("verified:")
      expect(result.stdout).toContain("a rerun sent 0 requests and skipped 40 lines")
      // Its input is held in memory: a count beyond its bound is a usage error, not a crash.
      for (const requests of ["0", "4294967296"]) {
        const refused = yield* runCli(["demo", "--requests", requests], {})
        expect(refused.code).toBe(2)
        expect(refused.stderr).toBe("weatherproof: --requests must be from 1 to 100,000")
      }
    }).pipe(Effect.provide(NodeContext.layer)))
})

describe("weatherproof's progress bar", () => {
  it("is drawn on a terminal that moves its cursor, outside CI (CI set to anything but empty or false)", () => {
    const terminal = { isTTY: true }
    expect(drawsProgress(terminal, {})).toBe(true)
    expect(drawsProgress(terminal, { TERM: "xterm-256color", CI: "" })).toBe(true)
    expect(drawsProgress(terminal, { CI: "false" })).toBe(true)
    expect(drawsProgress(terminal, { CI: "true" })).toBe(false)
    expect(drawsProgress(terminal, { CI: "1" })).toBe(false)
    expect(drawsProgress(terminal, { TERM: "dumb" })).toBe(false)
    expect(drawsProgress({ isTTY: false }, {})).toBe(false)
  })
})

describe("weatherproof's progress bar on a terminal", () => {
  /** A terminal of 80 columns that keeps what is written to it. */
  const terminal = () => {
    const written: Array<string> = []
    const stream = Object.assign(
      new Writable({
        write: (chunk: Buffer, _encoding, done) => {
          written.push(chunk.toString())
          done()
        }
      }),
      { isTTY: true, columns: 80 }
    )
    return { stream: stream as unknown as NodeJS.WriteStream, written }
  }

  it.scoped("ends on the line below the lines written beside it: the cursor is never put back above them", () =>
    Effect.gen(function*() {
      const { stream, written } = terminal()
      yield* Effect.scoped(Effect.gen(function*() {
        const onProgress = yield* progressBar(stream, {})
        expect(onProgress).toBeDefined()
        yield* onProgress!({ total: 3, succeeded: 1, failed: 0, skipped: 0 })
        // A warning written beside the bar, as the run's console writes it.
        stream.write("\r\x1b[2KWARN: a breaker opened\n")
        yield* onProgress!({ total: 3, succeeded: 3, failed: 0, skipped: 0 })
      }))
      const output = written.join("")
      expect(output).toContain("WARN: a breaker opened\n")
      // Each restore of the cursor (ESC 8) goes back to a save (ESC 7) made on the same line.
      for (const restore of output.matchAll(/\x1b8/g)) {
        const before = output.slice(0, restore.index)
        expect(before.slice(before.lastIndexOf("\x1b7")).includes("\n")).toBe(false)
      }
    }))
})

describe("weatherproof's progress lines", () => {
  /** `progressLines(every)` writing to `lines`. */
  const progressLinesInto = (lines: Array<string>, every: Duration.DurationInput) =>
    Effect.flatMap(Console.consoleWith(Effect.succeed), (console) =>
      Effect.withConsole(progressLines(every), {
        ...console,
        error: (...args) =>
          Effect.sync(() => {
            lines.push(args.join(" "))
          })
      }))

  it.scoped("where no bar is drawn, say every interval how far the run got and for how long, once there is progress", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const report = yield* progressLinesInto(lines, "1 minute")
      yield* TestClock.adjust("1 minute")
      expect(lines).toEqual([])
      yield* report({ total: 10, succeeded: 0, failed: 0, skipped: 0 })
      yield* TestClock.adjust("1 minute")
      expect(lines).toEqual(["weatherproof: 0 of 10 lines done (0 ok, 0 failed, 0 skipped) in 2m"])
      yield* report({ total: 10, succeeded: 3, failed: 1, skipped: 2 })
      yield* TestClock.adjust("59 seconds")
      expect(lines).toHaveLength(1)
      yield* TestClock.adjust("1 second")
      expect(lines[1]).toBe("weatherproof: 6 of 10 lines done (3 ok, 1 failed, 2 skipped) in 3m")
    }))

  it.scoped("say how long the run took whatever step the system clock made", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const { clock, stepWall } = yield* processClock
      const report = yield* Effect.withClock(progressLinesInto(lines, "1 minute"), clock)
      yield* Effect.withClock(report({ total: 10, succeeded: 1, failed: 0, skipped: 0 }), clock)
      stepWall(-3_600_000)
      yield* TestClock.adjust("1 minute")
      expect(lines).toEqual(["weatherproof: 1 of 10 lines done (1 ok, 0 failed, 0 skipped) in 1m"])
    }))

  it.scoped("with no total (an input read once, a pipe), say how many lines are done", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const report = yield* progressLinesInto(lines, "1 minute")
      yield* report({ total: undefined, succeeded: 5, failed: 1, skipped: 0 })
      yield* TestClock.adjust("1 minute")
      expect(lines).toEqual(["weatherproof: 6 lines done (5 ok, 1 failed, 0 skipped) in 1m"])
    }))

  it.scoped("at an interval under a second, say it in milliseconds", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const { counts, telemetry } = yield* Telemetry.makeCounters
      const report = yield* progressLinesInto(lines, "500 millis")
      yield* report({ total: 10, succeeded: 0, failed: 0, skipped: 0 }).pipe(Effect.provideService(Batch.TelemetryCounts, counts))
      yield* telemetry.attemptFailed(new ApiError.RateLimited({ message: "busy", retryAfter: Option.none() }))
      yield* TestClock.adjust("500 millis")
      yield* TestClock.adjust("500 millis")
      expect(lines).toEqual([
        "weatherproof: 0 of 10 lines done (0 ok, 0 failed, 0 skipped) in 500ms; over the last 500ms, 1 attempt failed, rate limited (429)",
        "weatherproof: 0 of 10 lines done (0 ok, 0 failed, 0 skipped) in 1s"
      ])
    }))

  it.scoped("say what the run's attempts failed with since the line before, read at each line, while no line completes", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const { counts, telemetry } = yield* Telemetry.makeCounters
      const failAttempts = (n: number, error: unknown) => Effect.repeatN(telemetry.attemptFailed(error), n - 1)
      const rateLimited = new ApiError.RateLimited({ message: "busy", retryAfter: Option.none() })
      const timedOut = new ApiError.DeadlineExceeded({ reason: "total", after: Duration.minutes(1), partial: ApiError.emptyPartial })
      const serverError = new ApiError.ServerError({ status: 500, message: "oops", retryAfter: Option.none() })
      const connectFailed = new ApiError.TransportError({ reason: "connect", message: "refused", partial: ApiError.emptyPartial })
      const report = yield* progressLinesInto(lines, "1 minute")
      yield* report({ total: 300, succeeded: 0, failed: 0, skipped: 0 }).pipe(Effect.provideService(Batch.TelemetryCounts, counts))
      yield* failAttempts(3120, rateLimited)
      yield* TestClock.adjust("1 minute")
      yield* failAttempts(1, rateLimited)
      yield* TestClock.adjust("1 minute")
      yield* TestClock.adjust("1 minute")
      yield* failAttempts(2900, rateLimited)
      yield* failAttempts(220, timedOut)
      yield* failAttempts(15, serverError)
      yield* failAttempts(5, connectFailed)
      yield* TestClock.adjust("1 minute")
      expect(lines).toEqual([
        "weatherproof: 0 of 300 lines done (0 ok, 0 failed, 0 skipped) in 1m; over the last 1m, 3120 attempts failed, all rate limited (429)",
        "weatherproof: 0 of 300 lines done (0 ok, 0 failed, 0 skipped) in 2m; over the last 1m, 1 attempt failed, rate limited (429)",
        "weatherproof: 0 of 300 lines done (0 ok, 0 failed, 0 skipped) in 3m",
        "weatherproof: 0 of 300 lines done (0 ok, 0 failed, 0 skipped) in 4m; over the last 1m, 3140 attempts failed: 2900 rate limited (429), 220 timed out, 15 answered 5xx, 5 other"
      ])
    }))

  /** An account of a pool that made no call yet, in `state`. */
  const idleAccount = (name: string, state: AccountPool.AccountStatus["state"]): AccountPool.AccountStatus => ({
    name,
    provider: "deepseek",
    fallback: false,
    state,
    limit: 0,
    inFlight: 0,
    models: [],
    usableKeys: 1,
    restingKeys: [],
    calls: 0,
    succeeded: 0,
    failed: 0,
    rateLimited: 0,
    retries: 0,
    lastFailure: undefined,
    reachable: true
  })

  it.scoped("say, while no account of the run's pool can serve, why each cannot", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const states = new Map<string, AccountPool.AccountStatus["state"]>([["main", "out_of_balance"], ["backup", "no_keys"]])
      const pool: AccountPool.Service = {
        create: () => Effect.die("unused"),
        stream: () => Stream.die("unused"),
        snapshot: Effect.sync(() =>
          Array.from(states, ([name, state]) => ({ ...idleAccount(name, state), reachable: name !== "backup" || (state !== "open" && state !== "unreachable") }))
        ),
        capacity: Effect.die("unused"),
        unreachable: Effect.die("unused"),
        scrub: (text) => text
      }
      const report = yield* progressLinesInto(lines, "1 minute")
      yield* report({ total: 300, succeeded: 0, failed: 0, skipped: 0 }).pipe(Effect.provideService(AccountPool.AccountPool, pool))
      yield* TestClock.adjust("1 minute")
      states.set("backup", "open")
      yield* TestClock.adjust("1 minute")
      states.set("backup", "checking_balance")
      yield* TestClock.adjust("1 minute")
      states.set("backup", "serving")
      yield* TestClock.adjust("1 minute")
      // Its breaker closed, its base URL still refusing connections.
      states.set("backup", "unreachable")
      yield* TestClock.adjust("1 minute")
      expect(lines).toEqual([
        "weatherproof: 0 of 300 lines done (0 ok, 0 failed, 0 skipped) in 1m; no account can serve: main out of balance, backup every key rejected (401)",
        "weatherproof: 0 of 300 lines done (0 ok, 0 failed, 0 skipped) in 2m; no account can serve: main out of balance, backup breaker open after failures, cannot connect to its base URL",
        "weatherproof: 0 of 300 lines done (0 ok, 0 failed, 0 skipped) in 3m",
        "weatherproof: 0 of 300 lines done (0 ok, 0 failed, 0 skipped) in 4m",
        "weatherproof: 0 of 300 lines done (0 ok, 0 failed, 0 skipped) in 5m; no account can serve: main out of balance, backup cannot connect to its base URL"
      ])
    }))

  /** `weatherproof batch` over `lines` against a simulator made with `options`, a progress line every 300 ms. */
  const batchAgainst = (lines: ReadonlyArray<string>, options: Simulator.Options, flags: ReadonlyArray<string> = []) =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped()
      const input = `${dir}/in.jsonl`
      yield* fs.writeFileString(input, lines.map((line) => `${line}\n`).join(""))
      const simulator = yield* Simulator.make(options)
      return yield* runCli(["batch", input, "--output", `${dir}/out.jsonl`, "--progress-every", "300ms", ...flags], {
        DEEPSEEK_API_KEY: Simulator.defaultKey,
        DEEPSEEK_BASE_URL: simulator.baseUrl
      })
    })

  it.live("batch writes them while its calls wait in the upstream's queue, at --progress-every, with the requests in flight and the attempts that failed", () =>
    Effect.gen(function*() {
      const result = yield* batchAgainst([chatLine(1), chatLine(2)], { queueDelay: "900 millis", faults: { script: ["serverError"] } })
      expect(result.code).toBe(0)
      // The requests waiting in the upstream's queue are told: work is under way though no line ends.
      expect(result.stderr).toMatch(/weatherproof: 0 of 2 lines done \(0 ok, 0 failed, 0 skipped\) in \d+m?s; [12] requests? in flight/)
      expect(result.stderr).toMatch(/in \d+m?s(; [12] requests? in flight)?; over the last \d+m?s, 1 attempt failed, answered 5xx$/m)
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.live("batch whose only account is out of balance at start exits 2 at once, saying so: nothing was sent", () =>
    Effect.gen(function*() {
      const outOfBalance = { accounts: { default: { keys: [Simulator.defaultKey], balance: 0 } } }
      // Before, the line waited for a balance someone would top up: up to --max-wait, 30 minutes.
      const result = yield* batchAgainst([chatLine(1)], outOfBalance)
      expect(result.code).toBe(2)
      expect(result.stderr).toContain(
        "weatherproof: account default is out of balance (its balance is unavailable); nothing was sent. Top up its balance, then run the same command again"
      )
      expect(result.stdout).toBe("")
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))
})

describe("weatherproof's styled text", () => {
  it("keeps its styles only for a terminal, and never with NO_COLOR set (no-color.org: any value but empty)", () => {
    const terminal = { isTTY: true }
    const pipe = { isTTY: false }
    expect(styled(terminal, {})).toBe(true)
    expect(styled(terminal, { NO_COLOR: "" })).toBe(true)
    expect(styled(terminal, { NO_COLOR: "1" })).toBe(false)
    expect(styled(pipe, {})).toBe(false)
    expect(styled({}, {})).toBe(false)
  })
})

describe("weatherproof's usage errors", () => {
  it.effect("say after @effect/cli's message where the usage is: the command's --help", () =>
    Effect.gen(function*() {
      const bare = yield* runCli(["batch"], {})
      expect(bare.code).toBe(2)
      expect(bare.stderr).toContain("Expected to find option: '--output'")
      expect(bare.stderr.trimEnd().split("\n").at(-1)).toBe("weatherproof: see `weatherproof batch --help` for its usage")
      const unknown = yield* runCli(["serve", "--prot", "8080"], {})
      expect(unknown.code).toBe(2)
      expect(unknown.stderr.trimEnd().split("\n").at(-1)).toBe("weatherproof: see `weatherproof serve --help` for its usage")
      const noCommand = yield* runCli(["bach"], {})
      expect(noCommand.code).toBe(2)
      expect(noCommand.stderr.trimEnd().split("\n").at(-1)).toBe("weatherproof: see `weatherproof --help` for its usage")
    }).pipe(Effect.provide(NodeContext.layer)))
})

describe("weatherproof batch deadlines", () => {
  it.scopedLive("--first-content-timeout cuts every attempt's wait for a stream's content, --retries bounds them; bad values are usage errors", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const simulator = yield* Simulator.make({ queueDelay: "400 millis" })
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "cli-deadlines-" })
      const input = `${dir}/in.jsonl`
      yield* fs.writeFileString(input, `${chatLine(1)}\n`)
      const env = { DEEPSEEK_API_KEY: Simulator.defaultKey, DEEPSEEK_BASE_URL: simulator.baseUrl }

      const badWait = yield* runCli(["batch", input, "--output", `${dir}/bad.jsonl`, "--max-wait", "soon"], env)
      expect(badWait.code).toBe(2)
      expect(badWait.stderr).toContain("--max-wait: expected a duration such as 30s")
      // A deadline of 0 fails every attempt: refused, where a wait of 0 (fail when no account can take it) is not.
      const zeroTimeout = yield* runCli(["batch", input, "--output", `${dir}/bad.jsonl`, "--timeout", "0s"], env)
      expect(zeroTimeout.code).toBe(2)
      expect(zeroTimeout.stderr).toContain(`--timeout: expected a duration above 0 such as 30s, 500ms, 2m or 1h, got "0s"`)
      const badConcurrency = yield* runCli(["batch", input, "--output", `${dir}/bad.jsonl`, "--concurrency", "abc"], env)
      expect(badConcurrency.code).toBe(2)
      expect(badConcurrency.stderr).toContain(`--concurrency: expected a whole number, got "abc"`)
      // A key pasted as a flag's value is not quoted back.
      const pasted = yield* runCli(["batch", input, "--output", `${dir}/bad.jsonl`, "--concurrency", "sk-abcdefghijklmnopqrstuvwxyz0123456789"], env)
      expect(pasted.code).toBe(2)
      expect(pasted.stderr).toContain("--concurrency: expected a whole number, got something shaped like a key (not shown)")
      expect(pasted.stderr).not.toContain("abcdefghij")
      const badRetries = yield* runCli(["batch", input, "--output", `${dir}/bad.jsonl`, "--retries", "-1"], env)
      expect(badRetries.code).toBe(2)
      expect(badRetries.stderr).toContain("--retries must be at least 0")

      // A streamed line: its first content is its first event (a non-streaming answer's comes whole, once generated).
      const streamed = `${dir}/streamed.jsonl`
      const request = JSON.parse(chatLine(1))
      yield* fs.writeFileString(streamed, `${JSON.stringify({ ...request, body: { ...request.body, stream: true } })}\n`)
      const cut = yield* runCli(
        ["batch", streamed, "--output", `${dir}/out.jsonl`, "--first-content-timeout", "50ms", "--retries", "2"],
        env
      )
      expect(cut.code).toBe(1)
      const [line] = (yield* fs.readFileString(`${dir}/out.jsonl`)).trim().split("\n").map((l) => JSON.parse(l))
      expect(line.error).toEqual({ code: "DeadlineExceeded", message: "deadline first_content exceeded after 50ms" })
      // The error names the deadline; the advice, the flags.
      expect(cut.stderr).toContain(
        "1 of 1 lines failed (their error is in the output); 1 of them timed out (DeadlineExceeded): " +
          "if they need longer, raise --first-content-timeout, --idle-timeout or --timeout; run the same command again"
      )
      // Three attempts, each given up by the client before the simulator's 400 ms queue let it answer.
      const stats = yield* simulator.stats
      expect(stats.requests).toBe(3)
      expect(stats.clientClosed).toBe(3)
      expect(stats.completed).toBe(0)
    }).pipe(Effect.provide(NodeContext.layer)))
})

describe("weatherproof's V8 tiers", () => {
  const node20 = "11.3.244.8-node.33"
  const tuned = ["--liftoff-only", "--interrupt-budget=16896"]

  it("are WebAssembly's baseline and JavaScript optimised sooner for a command that ends, V8's defaults for serve", () => {
    expect(v8Flags(["batch", "in.jsonl", "-o", "out.jsonl"], node20)).toEqual(tuned)
    expect(v8Flags(["demo"], node20)).toEqual(tuned)
    expect(v8Flags(["--version"], node20)).toEqual(tuned)
    expect(v8Flags(["serve", "--port", "8787"], node20)).toEqual([])
    expect(v8Flags(["serve", "--help"], node20)).toEqual([])
  })

  it("know the command after a built-in option and its value", () => {
    expect(v8Flags(["--log-level", "debug", "serve", "--port", "8787"], node20)).toEqual([])
    expect(v8Flags(["--log-level=debug", "serve"], node20)).toEqual([])
    expect(v8Flags(["--log-level", "debug", "batch", "in.jsonl", "-o", "out.jsonl"], node20)).toEqual(tuned)
  })

  it("keep the interrupt budget of a V8 other than the one it was measured on", () => {
    expect(v8Flags(["batch", "in.jsonl", "-o", "out.jsonl"], "12.4.254.21-node.33")).toEqual(["--liftoff-only"])
    expect(v8Flags(["serve"], "12.4.254.21-node.33")).toEqual([])
  })
})
