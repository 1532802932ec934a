#!/usr/bin/env node
/**
 * The `weatherproof` command line: a thin shell over `Batch.run`.
 *
 * - `weatherproof batch <input.jsonl> --output <results.jsonl> [--concurrency N]` runs an
 *   OpenAI-format batch against DeepSeek (`DEEPSEEK_API_KEY`, optional `DEEPSEEK_BASE_URL`).
 * - `weatherproof demo [--requests N]` runs the same batch path against an in-process simulator,
 *   with faults on, and verifies every answer. No key needed.
 *
 * Exit codes: 0 when every line succeeded (demo: verified), 1 when a line failed or the run could
 * not go on, 2 for a usage or configuration error (such as a missing key).
 *
 * @since 0.1.0
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { defaultTeardown } from "@effect/platform/Runtime"
import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { realpathSync } from "node:fs"
import { fileURLToPath } from "node:url"
import * as Batch from "../src/Batch.js"
import * as Demo from "../src/internal/batchDemo.js"
import { progressBar } from "../src/internal/batchProgress.js"
import * as Resilient from "../src/Resilient.js"

/**
 * Ends the program with `code` after `message` (if any) went to stderr.
 *
 * @since 0.1.0
 * @category errors
 */
export class ExitCode extends Data.TaggedError("ExitCode")<{ readonly code: number }> {}

const fail = (code: number, message: string) => Effect.zipRight(Console.error(message), new ExitCode({ code }))

/** Runs `f` with a progress bar when stderr is a terminal; `f`'s scope closes before the bar's. */
const withProgress = <A, E, R>(
  f: (onProgress: ((progress: Batch.Progress) => Effect.Effect<void>) | undefined) => Effect.Effect<A, E, R>
) => Effect.scoped(Effect.flatMap(progressBar(process.stderr), f))

const missingKey = "weatherproof: DEEPSEEK_API_KEY is not set or empty (one key, or several separated by commas). " +
  "Set it, or try `weatherproof demo`, which needs no key."

/** The resilient client's settings from the environment; a missing or empty key is exit 2. */
const clientConfig = (concurrency: Option.Option<number>) =>
  Resilient.config.pipe(
    Effect.catchTag("ConfigError", () => fail(2, missingKey)),
    Effect.filterOrElse((config) => config.keys.length > 0, () => fail(2, missingKey)),
    Effect.map((config): Resilient.DefaultOptions => ({ ...config, concurrency: Option.getOrUndefined(concurrency) }))
  )

const batch = Command.make(
  "batch",
  {
    input: Args.file({ name: "input.jsonl" }),
    output: Options.file("output").pipe(Options.withAlias("o"), Options.withDescription("results JSONL, resumed when it exists")),
    concurrency: Options.integer("concurrency").pipe(
      Options.withDescription("a fixed number of calls in flight (default: adaptive, found from the server's 429s)"),
      Options.optional
    )
  },
  ({ concurrency, input, output }) =>
    Effect.gen(function*() {
      if (Option.exists(concurrency, (n) => n < 1)) return yield* fail(2, "weatherproof: --concurrency must be at least 1")
      const client = yield* clientConfig(concurrency)
      const stack = Resilient.layerDefault(client).pipe(Layer.provideMerge(Batch.layerTelemetryCounts))
      const summary = yield* withProgress((onProgress) => Batch.run({ input, output, onProgress })).pipe(
        Effect.provide(stack),
        Effect.catchTag("BatchError", (error) => fail(1, `weatherproof: ${error.message}`))
      )
      yield* Console.log(Batch.formatSummary(summary))
      if (summary.failed > 0) {
        return yield* fail(1, `weatherproof: ${summary.failed} of ${summary.requests} lines failed (their error is in the output); ` +
            "the same command again retries them and skips the lines already answered")
      }
    })
).pipe(Command.withDescription("Run an OpenAI-format chat completions batch against DeepSeek"))

const demo = Command.make(
  "demo",
  {
    requests: Options.integer("requests").pipe(
      Options.withDescription("how many requests to generate"),
      Options.withDefault(300)
    )
  },
  ({ requests }) =>
    Effect.gen(function*() {
      if (requests < 1) return yield* fail(2, "weatherproof: --requests must be at least 1")
      yield* Console.log(Demo.introduction(requests))
      const report = yield* withProgress((onProgress) => Demo.run({ requests, onProgress })).pipe(
        Effect.catchTag("BatchError", (error) => fail(1, `weatherproof: ${error.message}`))
      )
      yield* Console.log(Demo.formatReport(report))
      if (report.problems.length > 0) return yield* new ExitCode({ code: 1 })
    })
).pipe(Command.withDescription("Run a batch against an in-process DeepSeek simulator with faults on, and verify it"))

const weatherproof = Command.make("weatherproof").pipe(
  Command.withDescription("Resilient batch calls to DeepSeek and other OpenAI-compatible chat APIs"),
  Command.withSubcommands([batch, demo])
)

/**
 * The command line parser and handlers; `argv` as in `process.argv` (node and script first).
 *
 * @since 0.1.0
 */
export const cli = Command.run(weatherproof, { name: "weatherproof", version: "0.1.0" })

/**
 * Runs the command line and returns its exit code; every failure is reported on stderr first.
 *
 * @since 0.1.0
 */
export const main = (argv: ReadonlyArray<string>): Effect.Effect<number, never, NodeContext.NodeContext> =>
  cli(argv).pipe(
    Effect.as(0),
    Effect.catchAll((error) =>
      error._tag === "ExitCode"
        ? Effect.succeed(error.code)
        : ValidationError.isValidationError(error)
        ? Effect.succeed(2) // @effect/cli has printed the problem and the usage
        : Effect.as(Console.error(`weatherproof: ${String(error)}`), 1)
    )
  )

const isEntryPoint = (): boolean => {
  const script = process.argv[1]
  return script !== undefined && realpathSync(script) === fileURLToPath(import.meta.url)
}

if (isEntryPoint()) {
  NodeRuntime.runMain(main(process.argv).pipe(Effect.provide(NodeContext.layer)), {
    teardown: (exit, onExit) =>
      Exit.isSuccess(exit) && typeof exit.value === "number" ? onExit(exit.value) : defaultTeardown(exit, onExit)
  })
}
