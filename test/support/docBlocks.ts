/**
 * The TypeScript blocks of the docs (```ts / ```typescript fences in README.md and docs/**.md, and
 * in the `@example`s of the JSDoc comments of the public modules, src/*.ts), each with where it is
 * in its file, and the example programs of docs/examples/*.ts, each whole. A block is a complete
 * module unless the line right above its fence says why not: `<!-- not-typechecked: <reason> -->`.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import ts from "typescript"

export interface DocBlock {
  /** The markdown or source file, relative to the repository root, with `/` separators. */
  readonly file: string
  /** The 1-based line of the opening fence; 0 for a whole file (its code starts on line 1). */
  readonly line: number
  /** Characters cut from the start of each line of `code`: the fence's indentation, a JSDoc comment's ` * `. */
  readonly indent: number
  readonly code: string
  /** Why the block is not type-checked, when its marker says so. */
  readonly notTypeChecked: string | undefined
}

const optOutMarker = /^\s*<!--\s*not-typechecked:\s*(\S.*?)\s*-->\s*$/
const typeScriptInfo = new Set(["ts", "typescript"])

/** The blocks of one markdown text (fences of ``` or ~~~, indented up to three spaces). */
export const blocksOf = (file: string, markdown: string): ReadonlyArray<DocBlock> => {
  const lines = markdown.split(/\r?\n/)
  const blocks: Array<DocBlock> = []
  for (let i = 0; i < lines.length; i++) {
    const open = /^( {0,3})(`{3,}|~{3,})\s*([^\s`]*)/.exec(lines[i]!)
    if (open === null) continue
    const [, indent = "", fence = "", info = ""] = open
    const closing = new RegExp(`^ {0,3}${fence[0] === "`" ? "`" : "~"}{${fence.length},}\\s*$`)
    let end = i + 1
    while (end < lines.length && !closing.test(lines[end]!)) end++
    if (typeScriptInfo.has(info.toLowerCase())) {
      const above = lines.slice(0, i).reverse().find((line) => line.trim() !== "")
      blocks.push({
        file,
        line: i + 1,
        indent: indent.length,
        code: lines.slice(i + 1, end).map((line) => line.startsWith(indent) ? line.slice(indent.length) : line)
          .join("\n"),
        notTypeChecked: above === undefined ? undefined : optOutMarker.exec(above)?.[1]
      })
    }
    i = end
  }
  return blocks
}

/** The JSDoc comments (`/** … *\/`) of a source file, each with the 1-based line it starts on. */
const jsDocComments = (file: string, source: string): ReadonlyArray<{ readonly line: number; readonly text: string }> => {
  const sourceFile = ts.createSourceFile(file, source, ts.ScriptTarget.Latest)
  // Every comment is leading trivia of some node; the same one may lead several nested nodes.
  const endByStart = new Map<number, number>()
  const visit = (node: ts.Node): void => {
    for (const range of ts.getLeadingCommentRanges(source, node.pos) ?? []) {
      if (source.startsWith("/**", range.pos)) endByStart.set(range.pos, range.end)
    }
    ts.forEachChild(node, visit)
  }
  visit(sourceFile)
  return [...endByStart].sort(([a], [b]) => a - b).map(([start, end]) => ({
    line: sourceFile.getLineAndCharacterOfPosition(start).line + 1,
    text: source.slice(start, end)
  }))
}

/** A comment's lines without their ` * ` prefix (the first line is what follows `/**`), and each prefix's width. */
const commentLines = (comment: string) =>
  comment.slice("/**".length, -"*/".length).split(/\r?\n/).map((line, i) => {
    const prefix = i === 0 ? "" : /^\s*\*? ?/.exec(line)![0]
    return { text: line.slice(prefix.length), prefixWidth: prefix.length }
  })

/**
 * The blocks inside the `@example` tags of a source file's JSDoc comments. A tag runs to the
 * next line that starts with a tag.
 */
export const exampleBlocksOf = (file: string, source: string): ReadonlyArray<DocBlock> =>
  jsDocComments(file, source).flatMap((comment) => {
    const lines = commentLines(comment.text)
    const tags = [...lines.keys()].filter((i) => /^@\w/.test(lines[i]!.text))
    return tags.flatMap((tag, t) => {
      if (!/^@example\b/.test(lines[tag]!.text)) return []
      const start = tag + 1
      const section = lines.slice(start, tags[t + 1] ?? lines.length)
      return blocksOf(file, section.map((line) => line.text).join("\n")).map((block) => ({
        ...block,
        line: comment.line + start + block.line - 1,
        indent: block.indent + section[block.line - 1]!.prefixWidth
      }))
    })
  })

/** The markdown files of the docs: README.md and every `.md` under docs/, sorted. */
const docFiles = (root: string): ReadonlyArray<string> => [
  "README.md",
  ...fs.readdirSync(path.join(root, "docs"), { recursive: true, encoding: "utf8" })
    .filter((file) => file.endsWith(".md"))
    .map((file) => `docs/${file.split(path.sep).join("/")}`)
    .sort()
]

/** The public modules' source files: src/*.ts, sorted. */
const sourceFiles = (root: string): ReadonlyArray<string> =>
  fs.readdirSync(path.join(root, "src"))
    .filter((file) => file.endsWith(".ts") && !file.endsWith(".d.ts"))
    .map((file) => `src/${file}`)
    .sort()

/** The example programs: docs/examples/*.ts, sorted. */
const exampleFiles = (root: string): ReadonlyArray<string> =>
  fs.readdirSync(path.join(root, "docs", "examples"))
    .filter((file) => file.endsWith(".ts"))
    .map((file) => `docs/examples/${file}`)
    .sort()

const read = (root: string, file: string) => fs.readFileSync(path.join(root, file), "utf8")

/** An example program as one block: the whole file. */
const wholeFile = (file: string, code: string): DocBlock => ({ file, line: 0, indent: 0, code, notTypeChecked: undefined })

/**
 * Every TypeScript block of the docs under `root`, then the example programs, then the blocks of
 * the `@example`s of its public modules.
 */
export const docBlocks = (root: string): ReadonlyArray<DocBlock> => [
  ...docFiles(root).flatMap((file) => blocksOf(file, read(root, file))),
  ...exampleFiles(root).map((file) => wholeFile(file, read(root, file))),
  ...sourceFiles(root).flatMap((file) => exampleBlocksOf(file, read(root, file)))
]
