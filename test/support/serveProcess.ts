/**
 * `weatherproof <args>` in a process of its own, run from the TypeScript sources (by vite-node)
 * for the tests that send it signals: bin/weatherproof.ts's `run`, as the built CLI runs it.
 */
import { run } from "../../bin/weatherproof.js"

run(["node", "weatherproof", ...process.argv.slice(2)])
