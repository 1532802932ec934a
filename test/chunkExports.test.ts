import { describe, expect, it } from "@effect/vitest"
import * as esbuild from "esbuild"
import { withDataExports } from "../scripts/chunkExports.js"

/** A chunk as esbuild splits one: its bindings, then one `export{…}` (and its source map comment). */
const chunk = [
  "var a=1,b;",
  "function setB(){b=2}",
  "let d=0;",
  "function inc(){d++}",
  // A local of the same name, assigned: the top-level `a` is still bound for good.
  "function shadow(){let a=3;a=4;return a}",
  "var g=1;",
  "function destructure(o){({x:g}=o)}",
  "var h={};h.x=1;",
  "var [e]=[5];",
  "var twice=1;if(h){var twice=2}",
  "class K{}",
  "export{a,b as B,setB,d as D,inc,shadow,g as G,destructure,h,e,twice,K};",
  "//# sourceMappingURL=data:application/json;base64,e30="
].join("")

/** The chunk as `scripts/bundleCli.ts` runs it: CommonJS, required once. */
const required = (text: string): Record<string, any> => {
  const { code } = esbuild.transformSync(text, { format: "cjs", platform: "node", minify: true, logLevel: "silent" })
  const module = { exports: {} as Record<string, any> }
  new Function("module", "exports", "require", code)(module, module.exports, () => {
    throw new Error("a chunk of this test requires nothing")
  })
  return module.exports
}

describe("a chunk's exports as values (scripts/chunkExports.ts)", () => {
  it("exports a binding that cannot change as a value, and one that may as a getter", () => {
    const exports = Object.getOwnPropertyDescriptors(required(withDataExports(chunk)))
    const kinds = Object.fromEntries(Object.entries(exports).map(([name, property]) => [name, "value" in property ? "value" : "getter"]))
    expect(kinds).toEqual({
      a: "value",
      setB: "value",
      inc: "value",
      shadow: "value",
      destructure: "value",
      h: "value",
      K: "value",
      // Assigned after its declaration, declared without a value, declared twice, destructured.
      B: "getter",
      D: "getter",
      G: "getter",
      twice: "getter",
      e: "getter"
    })
  })

  it("reads what an ES module would: a getter follows its binding", () => {
    const exports = required(withDataExports(chunk))
    expect([exports.a, exports.B, exports.D, exports.G, exports.twice, exports.e]).toEqual([1, undefined, 0, 1, 2, 5])
    exports.setB()
    exports.inc()
    exports.destructure({ x: 7 })
    expect([exports.B, exports.D, exports.G, exports.shadow()]).toEqual([2, 1, 7, 4])
  })

  it("keeps the source map comment and leaves a chunk without a final export{…} as it is", () => {
    expect(withDataExports(chunk)).toMatch(/module\.exports=\{.*\};\/\/# sourceMappingURL=data:application\/json;base64,e30=$/)
    const defaultExport = "var x=1;export default x;"
    expect(withDataExports(defaultExport)).toBe(defaultExport)
  })
})
