/**
 * A split chunk's exports as one object of values, for its CommonJS form (scripts/bundleCli.ts).
 *
 * esbuild turns an ES module's `export{…}` into getters, one per binding (a live binding), read
 * through a copy of them made with a getter each (`__toCommonJS`): every call from one chunk into
 * another, which is most of a batch's calls into the Effect runtime, ran two getters and a keyed
 * lookup in an object of hundreds of properties. A binding that nothing assigns after its
 * declaration cannot change, so it is exported as a plain property of `module.exports` (an object
 * literal: V8 keeps its properties fast). A binding that may change keeps a getter, so every import
 * still reads what an ES module would: a variable declared without a value (esbuild's lazily
 * initialised modules assign theirs when first required), one assigned anywhere, declared twice,
 * or not declared at the chunk's top level. Which binding a name means is resolved by TypeScript's
 * binder, so a local of the same name elsewhere changes nothing.
 */
import ts from "typescript"

/** The chunk's final `export{local as exported,…};`, where esbuild puts a split chunk's exports. */
interface ExportStatement {
  readonly start: number
  readonly end: number
  readonly specifiers: ReadonlyArray<readonly [local: string, exported: string]>
}

const exportKeyword = "export{"

/** Only comments (a legal comment, the inline source map) may follow the export statement. */
const onlyComments = (text: string): boolean => text.replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, "").trim() === ""

const exportStatementOf = (text: string): ExportStatement | undefined => {
  const start = text.lastIndexOf(exportKeyword)
  const end = start < 0 ? -1 : text.indexOf("};", start)
  if (end < 0 || !onlyComments(text.slice(end + 2))) return undefined
  const specifiers = text.slice(start + exportKeyword.length, end).split(",").map((specifier) => {
    const [local = specifier, exported = local] = specifier.split(" as ")
    return [local, exported] as const
  })
  return { start, end: end + 2, specifiers }
}

const fileName = "/chunk.js"

/** The chunk parsed and bound: its top-level statements and each identifier's symbol. */
const bind = (text: string): { readonly source: ts.SourceFile; readonly checker: ts.TypeChecker } => {
  const source = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.JS)
  const host: ts.CompilerHost = {
    getSourceFile: (name) => name === fileName ? source : undefined,
    getDefaultLibFileName: () => "lib.d.ts",
    writeFile: () => {},
    getCurrentDirectory: () => "/",
    getCanonicalFileName: (name) => name,
    useCaseSensitiveFileNames: () => true,
    getNewLine: () => "\n",
    fileExists: (name) => name === fileName,
    readFile: () => undefined
  }
  const program = ts.createProgram({ rootNames: [fileName], options: { allowJs: true, noResolve: true, noLib: true, types: [] }, host })
  return { source, checker: program.getTypeChecker() }
}

const isAssignment = (node: ts.Node): node is ts.BinaryExpression =>
  ts.isBinaryExpression(node) &&
  node.operatorToken.kind >= ts.SyntaxKind.FirstAssignment &&
  node.operatorToken.kind <= ts.SyntaxKind.LastAssignment

const isIncrement = (node: ts.Node): node is ts.PrefixUnaryExpression | ts.PostfixUnaryExpression =>
  (ts.isPrefixUnaryExpression(node) || ts.isPostfixUnaryExpression(node)) &&
  (node.operator === ts.SyntaxKind.PlusPlusToken || node.operator === ts.SyntaxKind.MinusMinusToken)

/** The symbols of every binding the chunk assigns after declaring it. */
const assignedSymbols = (source: ts.SourceFile, checker: ts.TypeChecker): ReadonlySet<ts.Symbol> => {
  const assigned = new Set<ts.Symbol>()
  /** The bindings an assignment's left side names: itself, or those of a destructuring pattern. */
  const mark = (symbol: ts.Symbol | undefined) => {
    if (symbol !== undefined) assigned.add(symbol)
  }
  const markTarget = (target: ts.Node): void => {
    if (ts.isIdentifier(target)) {
      mark(checker.getSymbolAtLocation(target))
    } else if (ts.isParenthesizedExpression(target) || ts.isSpreadElement(target) || ts.isSpreadAssignment(target)) {
      markTarget(target.expression)
    } else if (ts.isArrayLiteralExpression(target)) {
      target.elements.forEach(markTarget)
    } else if (ts.isObjectLiteralExpression(target)) {
      target.properties.forEach(markTarget)
    } else if (ts.isPropertyAssignment(target)) {
      markTarget(target.initializer)
    } else if (ts.isShorthandPropertyAssignment(target)) {
      mark(checker.getShorthandAssignmentValueSymbol(target))
    } else if (isAssignment(target)) {
      markTarget(target.left) // a pattern's default: `[a = 1] = xs`
    } // a property or an element (`a.b = c`) is no binding
  }
  const visit = (node: ts.Node): void => {
    if (isAssignment(node)) markTarget(node.left)
    else if (isIncrement(node)) markTarget(node.operand)
    else if ((ts.isForInStatement(node) || ts.isForOfStatement(node)) && !ts.isVariableDeclarationList(node.initializer)) {
      markTarget(node.initializer)
    }
    node.forEachChild(visit)
  }
  visit(source)
  return assigned
}

/** The symbols of the chunk's top-level functions, classes and variables declared with a value. */
const declaredWithValue = (source: ts.SourceFile, checker: ts.TypeChecker): ReadonlyMap<string, ts.Symbol> => {
  const declared = new Map<string, ts.Symbol>()
  const add = (name: ts.Identifier) => {
    const symbol = checker.getSymbolAtLocation(name)
    if (symbol !== undefined) declared.set(name.text, symbol)
  }
  for (const statement of source.statements) {
    if ((ts.isFunctionDeclaration(statement) || ts.isClassDeclaration(statement)) && statement.name !== undefined) {
      add(statement.name)
    } else if (ts.isVariableStatement(statement)) {
      for (const declaration of statement.declarationList.declarations) {
        if (ts.isIdentifier(declaration.name) && declaration.initializer !== undefined) add(declaration.name)
      }
    }
  }
  return declared
}

/**
 * How many times a binding is declared: in a JavaScript file TypeScript also counts a property
 * assigned to it (`h.x = 1`, an expando) among its declarations, which changes no binding.
 */
const bindingDeclarations = (symbol: ts.Symbol): number =>
  (symbol.declarations ?? []).filter((declaration) =>
    ts.isVariableDeclaration(declaration) || ts.isFunctionDeclaration(declaration) || ts.isClassDeclaration(declaration)
  ).length

/** Whether each local name of the chunk is bound for good once its top level has run. */
const constantBindings = (text: string): (local: string) => boolean => {
  const { checker, source } = bind(text)
  const assigned = assignedSymbols(source, checker)
  const declared = declaredWithValue(source, checker)
  return (local) => {
    const symbol = declared.get(local)
    return symbol !== undefined && !assigned.has(symbol) && bindingDeclarations(symbol) === 1
  }
}

/**
 * `text`, an ES module chunk of esbuild's split build, with its final `export{…}` replaced by an
 * assignment of `module.exports` at the end of its top level: a property per binding that cannot
 * change, a getter per one that may. A chunk without such a statement (`export default`) is
 * returned as it is. The statement's offsets are kept for the code before it, so a source map
 * still holds.
 */
export const withDataExports = (text: string): string => {
  const statement = exportStatementOf(text)
  if (statement === undefined) return text
  const isConstant = constantBindings(text)
  const properties = statement.specifiers.map(([local, exported]) =>
    isConstant(local) ? `${JSON.stringify(exported)}:${local}` : `get ${JSON.stringify(exported)}(){return ${local}}`
  )
  return `${text.slice(0, statement.start)}module.exports={${properties.join(",")}};${text.slice(statement.end)}`
}
