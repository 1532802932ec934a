/**
 * The docs' examples compile as written: every TypeScript block of README.md and docs/, every
 * example program of docs/examples/, and the `@example`s in the JSDoc of the public modules
 * (src/*.ts), is a complete module, type-checked in
 * one program inside a project set up like a user's (the packed package with its peers, plus the
 * test tools an example may import), strict, with `exactOptionalPropertyTypes`, NodeNext. A
 * failure names the markdown or source file and line.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import ts from "typescript"
import { blocksOf, type DocBlock, docBlocks, exampleBlocksOf } from "./support/docBlocks.js"
import { docsProject, repoRoot } from "./support/packedPackage.js"

const blocks = docBlocks(repoRoot)

/** What a user's project would set (no lint-like options such as `noUnusedLocals`). */
const compilerOptions = {
  target: "ES2022",
  lib: ["ES2022"],
  module: "NodeNext",
  moduleResolution: "NodeNext",
  moduleDetection: "force",
  strict: true,
  exactOptionalPropertyTypes: true,
  noUncheckedIndexedAccess: true,
  types: ["node"],
  skipLibCheck: true,
  noEmit: true
}

/** `README.md:67:5 TS2304: Cannot find name 'Layer'.`, at the position in the markdown or source file. */
const describeDiagnostic = (block: DocBlock | undefined, diagnostic: ts.Diagnostic): string => {
  const message = `TS${diagnostic.code}: ${ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n")}`
  if (diagnostic.file === undefined || diagnostic.start === undefined) return message
  const { line, character } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start)
  const where = block === undefined
    ? `${diagnostic.file.fileName}:${line + 1}:${character + 1}`
    : `${block.file}:${block.line + 1 + line}:${block.indent + character + 1}`
  return `${where} ${message}`
}

interface Checked {
  /** Each type-checked block's diagnostics. */
  readonly byBlock: ReadonlyMap<DocBlock, ReadonlyArray<string>>
  /** Diagnostics outside the blocks (options, the project's set-up). */
  readonly elsewhere: ReadonlyArray<string>
}

/** Writes each block to its own module in a fresh directory of `projectDir` and type-checks them all at once. */
const typeCheck = async (projectDir: string): Promise<Checked> => {
  const dir = await fs.mkdtemp(path.join(projectDir, "blocks-"))
  try {
    const fileOf = (block: DocBlock) => path.resolve(dir, `${block.file.replace(/\W+/g, "_")}_${block.line}.ts`)
    const files = new Map(
      blocks.filter((block) => block.notTypeChecked === undefined).map((block) => [fileOf(block), block] as const)
    )
    for (const [file, block] of files) await fs.writeFile(file, `${block.code}\n`)
    const { errors, options } = ts.convertCompilerOptionsFromJson(compilerOptions, dir)
    const program = ts.createProgram([...files.keys()], options)
    const byBlock = new Map<DocBlock, Array<string>>([...files.values()].map((block) => [block, []]))
    const elsewhere = errors.map((error) => describeDiagnostic(undefined, error))
    for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
      const block = diagnostic.file === undefined ? undefined : files.get(path.resolve(diagnostic.file.fileName))
      const described = describeDiagnostic(block, diagnostic)
      if (block === undefined) elsewhere.push(described)
      else byBlock.get(block)!.push(described)
    }
    return { byBlock, elsewhere }
  } finally {
    await fs.rm(dir, { recursive: true, force: true })
  }
}

describe("blocksOf", () => {
  it("finds ts and typescript fences with their lines, and the opt-out marker right above one", () => {
    const markdown = [
      "# Title",
      "```ts",
      "const a = 1",
      "```",
      "<!-- not-typechecked: a fragment -->",
      "",
      "````typescript",
      "```",
      "````",
      "```sh",
      "```ts inside a shell block is not a block",
      "```",
      "  ~~~TS",
      "  const b = 2",
      "  ~~~"
    ].join("\n")
    expect(blocksOf("x.md", markdown)).toEqual([
      { file: "x.md", line: 2, indent: 0, code: "const a = 1", notTypeChecked: undefined },
      { file: "x.md", line: 7, indent: 0, code: "```", notTypeChecked: "a fragment" },
      { file: "x.md", line: 13, indent: 2, code: "const b = 2", notTypeChecked: undefined }
    ])
  })
})

describe("exampleBlocksOf", () => {
  it("finds the blocks of @example tags in JSDoc comments, at their lines in the source, without ` * `", () => {
    const source = [
      "/**",
      " * Not an example:",
      " * ```ts",
      " * const a = 1",
      " * ```",
      " *",
      " * @example",
      " * ```ts",
      " * const b = 2",
      " *",
      " *   const c = 3",
      " * ```",
      " *",
      " * @since 0.1.0",
      " */",
      "export const x = \"/** @example\"",
      "",
      "export const y = {",
      "  /**",
      "   * @example ```ts inside the tag's line is not a block",
      "   * ```typescript",
      "   * const d = 4",
      "   * ```",
      "   * @category constructors",
      "   * ```ts",
      "   * const e = 5",
      "   * ```",
      "   */",
      "  z: 1",
      "}",
      "// /**",
      "// * @example",
      "// * ```ts",
      "// * ```"
    ].join("\n")
    expect(exampleBlocksOf("src/X.ts", source)).toEqual([
      { file: "src/X.ts", line: 8, indent: 3, code: "const b = 2\n\n  const c = 3", notTypeChecked: undefined },
      { file: "src/X.ts", line: 21, indent: 5, code: "const d = 4", notTypeChecked: undefined }
    ])
  })
})

describe("the TypeScript blocks of README.md and docs/, the programs of docs/examples/, the @examples of src/", () => {
  let checked: Checked
  beforeAll(async () => {
    checked = await typeCheck(await docsProject())
  }, 240_000)

  it("are found, and type-check in a project with no errors of its own", () => {
    expect(blocks.filter((block) => block.file.endsWith(".md")).length).toBeGreaterThan(0)
    expect(blocks.filter((block) => block.file.startsWith("docs/examples/")).length).toBeGreaterThan(0)
    expect(blocks.filter((block) => block.file.startsWith("src/")).length).toBeGreaterThan(0)
    expect(checked.elsewhere).toEqual([])
  })

  for (const block of blocks) {
    const name = `${block.file}:${block.line}`
    if (block.notTypeChecked !== undefined) {
      it.skip(`${name} (not type-checked: ${block.notTypeChecked})`, () => {})
    } else {
      it(`${name} type-checks as written`, () => {
        expect(checked.byBlock.get(block), `tsc on ${name}`).toEqual([])
      })
    }
  }
})

describe("README's CommonJS note", () => {
  it("a CommonJS module (.cts) imports the package and an entry point, type-checked with module nodenext", async () => {
    const dir = await fs.mkdtemp(path.join(await docsProject(), "commonjs-"))
    try {
      const file = path.join(dir, "program.cts")
      await fs.writeFile(
        file,
        [
          `import { Effect, Redacted } from "effect"`,
          `import { Resilient } from "weatherproof"`,
          `import * as Policy from "weatherproof/Policy"`,
          `const client = Resilient.layerDefault({ baseUrl: "http://127.0.0.1:1", keys: [Redacted.make("sk-…")] })`,
          `export const answer = Effect.flatMap(Resilient.Resilient, (resilient) =>`,
          `  resilient.create({ model: "deepseek-v4-flash", messages: [{ role: "user", content: "hi" }] })).pipe(Effect.provide(client))`,
          `export const policy = Policy.layer({ retry: { maxRetries: 3 } })`
        ].join("\n")
      )
      const { options } = ts.convertCompilerOptionsFromJson(compilerOptions, dir)
      const program = ts.createProgram([file], options)
      expect(ts.getPreEmitDiagnostics(program).map((diagnostic) => describeDiagnostic(undefined, diagnostic))).toEqual([])
    } finally {
      await fs.rm(dir, { recursive: true, force: true })
    }
  }, 240_000)
})

describe("the public modules' constructors", () => {
  it("each carry an @example (which the blocks above type-check)", async () => {
    const dir = path.join(repoRoot, "src")
    const files = (await fs.readdir(dir)).filter((file) => file.endsWith(".ts"))
    const lacking: Array<string> = []
    for (const file of files) {
      const source = ts.createSourceFile(file, await fs.readFile(path.join(dir, file), "utf8"), ts.ScriptTarget.Latest, true)
      for (const statement of source.statements) {
        const docs = ts.getJSDocCommentsAndTags(statement).filter(ts.isJSDoc)
        const tags = docs.flatMap((doc) => doc.tags ?? [])
        const isConstructor = tags.some((tag) => tag.tagName.text === "category" && String(tag.comment).trim() === "constructors")
        if (isConstructor && !tags.some((tag) => tag.tagName.text === "example")) {
          const { line } = source.getLineAndCharacterOfPosition(statement.getStart())
          lacking.push(`src/${file}:${line + 1}`)
        }
      }
    }
    expect(lacking).toEqual([])
  })
})
