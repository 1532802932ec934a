/**
 * `weatherproof <args>` in a process of its own, run from the TypeScript sources (by vite-node)
 * for the tests that send it signals. The same `main` and exit-code teardown as bin/weatherproof.ts.
 */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { defaultTeardown } from "@effect/platform/Runtime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { layerProcess } from "../../app/cli/signals.js"
import { main } from "../../bin/weatherproof.js"

NodeRuntime.runMain(main(["node", "weatherproof", ...process.argv.slice(2)]).pipe(Effect.provide([NodeContext.layer, layerProcess])), {
  teardown: (exit, onExit) =>
    Exit.isSuccess(exit) && typeof exit.value === "number" ? onExit(exit.value) : defaultTeardown(exit, onExit)
})
