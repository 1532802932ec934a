/**
 * The TypeScript blocks of the docs (```ts / ```typescript fences in README.md and docs/**.md),
 * each with where it is in its markdown file. A block is a complete module unless the line right
 * above its fence says why not: `<!-- not-typechecked: <reason> -->`.
 */
import * as fs from "node:fs"
import * as path from "node:path"

export interface DocBlock {
  /** The markdown file, relative to the repository root, with `/` separators. */
  readonly file: string
  /** The 1-based line of the opening fence. */
  readonly line: number
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
        code: lines.slice(i + 1, end).map((line) => line.startsWith(indent) ? line.slice(indent.length) : line)
          .join("\n"),
        notTypeChecked: above === undefined ? undefined : optOutMarker.exec(above)?.[1]
      })
    }
    i = end
  }
  return blocks
}

/** The markdown files of the docs: README.md and every `.md` under docs/, sorted. */
const docFiles = (root: string): ReadonlyArray<string> => [
  "README.md",
  ...fs.readdirSync(path.join(root, "docs"), { recursive: true, encoding: "utf8" })
    .filter((file) => file.endsWith(".md"))
    .map((file) => `docs/${file.split(path.sep).join("/")}`)
    .sort()
]

/** Every TypeScript block of the docs under `root`. */
export const docBlocks = (root: string): ReadonlyArray<DocBlock> =>
  docFiles(root).flatMap((file) => blocksOf(file, fs.readFileSync(path.join(root, file), "utf8")))
