/**
 * The files of a batch: the input read as a stream of lines, the output resolved to the file it
 * really is, locked for one run at a time, compacted for resume, then appended to by one writer.
 */
import * as NodeStream from "@effect/platform-node/NodeStream"
import { type PlatformError, SystemError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import { hostname } from "node:os"
import * as NodePath from "node:path"
import * as NodeTty from "node:tty"
import type { LockHolder } from "../Batch.js"
import { classifyExisting, maxLineBytes, mayBeTornResult, type Unreadable } from "./batchLines.js"

// ---------------------------------------------------------------------------------------------
// Lines
// ---------------------------------------------------------------------------------------------

/**
 * A non-blank line and its 1-based line number. A line that is not valid UTF-8 is never decoded
 * lossily, and one longer than the limit is never held whole: neither has a `text`.
 */
export type NumberedLine =
  | { readonly text: string; readonly lineNumber: number }
  | {
    readonly text: undefined
    readonly lineNumber: number
    readonly unreadable: Unreadable
    /** A line whose only bad bytes are a character cut at its end (a write a crash tore): the text before it. */
    readonly beforeCut?: string
  }

const newline = 0x0a

const joinBytes = (pieces: ReadonlyArray<Uint8Array>): Uint8Array => {
  if (pieces.length === 1) return pieces[0]!
  const joined = new Uint8Array(pieces.reduce((sum, piece) => sum + piece.length, 0))
  let at = 0
  for (const piece of pieces) {
    joined.set(piece, at)
    at += piece.length
  }
  return joined
}

/**
 * A line without the byte order mark it starts with: the first line's where the file has one, and
 * any line's where files that each had one were joined (`cat a.jsonl b.jsonl`). JSON has no
 * mark, so dropping it changes no line that was JSON.
 */
const withoutMark = (line: string): string => line.charCodeAt(0) === 0xfeff ? line.slice(1) : line

/**
 * Splits bytes into lines on `\n` and decodes each line with a fatal UTF-8 decoder. The complete
 * lines of a read are decoded in one call, and one by one only when that call finds a bad byte,
 * so valid input costs what a single decode of it does. The pieces of a line that spans reads are
 * joined once, at its end; past `maxBytes` they are dropped until it ends.
 */
const lineSplitter = (maxBytes: number) => {
  const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })
  // The line not ended yet: its pieces, their length, and whether it already passed `maxBytes`.
  let pending: Array<Uint8Array> = []
  let pendingBytes = 0
  let tooLong = false
  let lineNumber = 0

  const push = (out: Array<NumberedLine>, text: string | undefined, bytes?: Uint8Array): void => {
    lineNumber++
    if (text === undefined) {
      const beforeCut = bytes === undefined ? undefined : decodeBeforeCut(bytes)
      return void out.push(beforeCut === undefined ? { text, lineNumber, unreadable: "invalid-utf8" } : { text, lineNumber, unreadable: "invalid-utf8", beforeCut })
    }
    const line = withoutMark(text.endsWith("\r") ? text.slice(0, -1) : text)
    // Blank in JSON's sense only (space, tab, CR): a line of U+3000, which trim() also strips, is
    // no JSON, and gets its error line rather than vanishing.
    if (!/^[ \t\r]*$/.test(line)) out.push({ text: line, lineNumber })
  }

  const pushTooLong = (out: Array<NumberedLine>): void => {
    lineNumber++
    out.push({ text: undefined, lineNumber, unreadable: "too-long" })
  }

  const decode = (bytes: Uint8Array): string | undefined => {
    try {
      return utf8.decode(bytes)
    } catch {
      return undefined
    }
  }

  /** The text of `bytes` but a character cut at their end, which a streaming decode holds back; else `undefined`. */
  const decodeBeforeCut = (bytes: Uint8Array): string | undefined => {
    try {
      const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes, { stream: true })
      return withoutMark(text)
    } catch {
      return undefined
    }
  }

  /** The lines of `bytes`, which holds whole lines separated by `\n` (no final one). */
  const pushLines = (out: Array<NumberedLine>, bytes: Uint8Array): void => {
    // Only a read longer than the limit can hold a line too long.
    const text = bytes.length > maxBytes ? undefined : decode(bytes)
    if (text !== undefined) {
      for (const line of text.split("\n")) push(out, line)
      return
    }
    let start = 0
    for (let end = bytes.indexOf(newline); ; end = bytes.indexOf(newline, start)) {
      const line = bytes.subarray(start, end < 0 ? bytes.length : end)
      if (line.length > maxBytes) pushTooLong(out)
      else push(out, decode(line), line)
      if (end < 0) return
      start = end + 1
    }
  }

  const hold = (bytes: Uint8Array): void => {
    if (tooLong || bytes.length === 0) return
    pendingBytes += bytes.length
    if (pendingBytes <= maxBytes) return void pending.push(bytes)
    tooLong = true
    pending = []
  }

  const clearPending = (): void => {
    pending = []
    pendingBytes = 0
    tooLong = false
  }

  return {
    feed: (bytes: Uint8Array): Array<NumberedLine> => {
      const out: Array<NumberedLine> = []
      const last = bytes.lastIndexOf(newline)
      if (last < 0) {
        hold(bytes)
        return out
      }
      const first = bytes.indexOf(newline)
      if (tooLong || pendingBytes + first > maxBytes) {
        // The pending line ends at `first`, too long; the whole lines after it are read alone.
        pushTooLong(out)
        if (first < last) pushLines(out, bytes.subarray(first + 1, last))
      } else {
        const lines = bytes.subarray(0, last)
        pushLines(out, pending.length === 0 ? lines : joinBytes([...pending, lines]))
      }
      clearPending()
      // A copy, so the read is not kept alive by its tail.
      hold(bytes.slice(last + 1))
      return out
    },
    end: (): Array<NumberedLine> => {
      const out: Array<NumberedLine> = []
      if (tooLong) pushTooLong(out)
      else if (pending.length > 0) pushLines(out, joinBytes(pending))
      clearPending()
      return out
    }
  }
}

/** The non-blank lines of a stream of bytes, however it is cut into reads; a line over `maxBytes` has no text. */
export const splitLines = <E, R>(
  bytes: Stream.Stream<Uint8Array, E, R>,
  maxBytes: number = maxLineBytes
): Stream.Stream<NumberedLine, E, R> =>
  Stream.suspend(() => {
    const splitter = lineSplitter(maxBytes)
    return bytes.pipe(
      Stream.mapConcat(splitter.feed),
      Stream.concat(Stream.suspend(() => Stream.fromIterable(splitter.end())))
    )
  })

/** UTF-16's byte-order mark, little-endian (FF FE) or big-endian (FE FF). */
const isUtf16Mark = (head: Uint8Array): boolean =>
  head.length === 2 && ((head[0] === 0xff && head[1] === 0xfe) || (head[0] === 0xfe && head[1] === 0xff))

/**
 * Whether the file at `path` starts with a UTF-16 byte-order mark, as Windows PowerShell 5's `>`
 * writes: read as UTF-8, its every line would be an error line. (A pipe is not looked at: that
 * would read it.)
 */
export const startsAsUtf16 = (fs: FileSystem.FileSystem, path: string): Effect.Effect<boolean> =>
  Effect.scoped(Effect.flatMap(fs.open(path), (file) => file.readAlloc(FileSystem.Size(2)))).pipe(
    Effect.map(Option.exists(isUtf16Mark)),
    Effect.orElseSucceed(() => false)
  )

/** What is said of an input that `startsAsUtf16`, after its name. */
export const utf16Input = "is UTF-16 (its byte-order mark says so), not UTF-8: save it as UTF-8 (in PowerShell, Set-Content -Encoding utf8)"

/**
 * How an input is read: a regular file from any position, as often as needed (`"file"`); a pipe,
 * a FIFO or a terminal (`/dev/stdin`, a shell's `<(…)`) once, in order (`"once"`).
 */
export type InputKind = "file" | "once"

/** The `InputKind` of `path`, as its target is (symlinks followed). */
export const inputKind = (fs: FileSystem.FileSystem, path: string): Effect.Effect<InputKind, PlatformError> =>
  Effect.map(fs.stat(path), (info) => info.type === "File" ? "file" : "once")

const readError = (path: string) => (error: unknown): PlatformError =>
  new SystemError({
    module: "FileSystem",
    method: "stream",
    reason: "Unknown",
    pathOrDescriptor: path,
    description: error instanceof Error ? error.message : String(error)
  })

/**
 * Opens `path` to read. A FIFO's open waits for its writer, on the thread pool, where it would
 * hold the process at its exit until a writer came: interrupted, it is released (see
 * `releaseWaitingOpen`) and the descriptor it then gives is closed.
 */
const openToRead = (path: string): Effect.Effect<number, PlatformError> =>
  Effect.async((resume) => {
    let interrupted = false
    NodeFs.open(path, "r", (error, fd) => {
      if (!interrupted) return resume(error === null ? Effect.succeed(fd) : openedAlready(path, error))
      if (error === null) NodeFs.close(fd, ignore)
    })
    return Effect.sync(() => {
      interrupted = true
      releaseWaitingOpen(path)
    })
  })

const ignore = () => {}

/**
 * The descriptor a path of the process's own descriptors names (`/dev/stdin`, `/dev/fd/<n>`,
 * `/proc/self/fd/<n>`), when the open failed because it is a socket (ENXIO: Linux opens no socket
 * by path), as standard input is when a Node process spawns this one with a pipe. Read as it is.
 */
const openedAlready = (path: string, error: NodeJS.ErrnoException): Effect.Effect<number, PlatformError> => {
  const fd = error.code === "ENXIO" ? descriptorNamedBy(path) : undefined
  return fd === undefined ? Effect.fail(readError(path)(error)) : Effect.succeed(fd)
}

const descriptorNamedBy = (path: string): number | undefined => {
  if (path === "/dev/stdin") return 0
  const named = /^\/(?:dev|proc\/self)\/fd\/(\d+)$/.exec(path)
  return named === null ? undefined : Number(named[1])
}

/**
 * Ends the wait of an open to read `path` if it is a FIFO: an open to write that cannot wait
 * (none when no one reads) gives the reader its writer, closed at once, so the reader sees the end.
 */
const releaseWaitingOpen = (path: string): void =>
  NodeFs.stat(path, (error, info) => {
    if (error !== null || !info.isFIFO()) return
    NodeFs.open(path, NodeFs.constants.O_WRONLY | NodeFs.constants.O_NONBLOCK, (error, fd) => {
      if (error === null) NodeFs.close(fd, ignore)
    })
  })

/**
 * A pipe, a FIFO, a socket or a terminal is read on the event loop, as Node reads its stdin: read
 * on the thread pool, as `fs` streams do, it would hold the process at its exit (which waits for
 * the pool) for as long as its writer keeps it open and silent, or no one types.
 */
const readableOf = (fd: number): NodeJS.ReadableStream => {
  if (NodeTty.isatty(fd)) return new NodeTty.ReadStream(fd)
  const info = NodeFs.fstatSync(fd)
  return info.isFIFO() || info.isSocket()
    ? new NodeNet.Socket({ fd, readable: true, writable: false })
    : NodeFs.createReadStream("", { fd })
}

/** The bytes of an input read once, in order: positional reads, as `FileSystem.stream` makes, fail on a pipe. */
const readOnce = (path: string): Stream.Stream<Uint8Array, PlatformError> =>
  Stream.unwrap(Effect.map(openToRead(path), (fd) => NodeStream.fromReadable(() => readableOf(fd), readError(path))))

/** The non-blank lines of an input, streamed (never held whole in memory). */
export const lines = (
  fs: FileSystem.FileSystem,
  path: string,
  kind: InputKind = "file"
): Stream.Stream<NumberedLine, PlatformError> => splitLines(kind === "file" ? fs.stream(path) : readOnce(path))

/** How many non-blank lines a file has (a first pass, for a progress bar's total). */
export const countLines = (fs: FileSystem.FileSystem, path: string): Effect.Effect<number, PlatformError> =>
  Stream.runCount(lines(fs, path))

const encoder = new TextEncoder()

/** A write that failed after `landed` of its bytes reached the file. */
interface ShortWrite {
  readonly error: PlatformError
  readonly landed: number
}

/** A write that landed nothing and did not fail: retried, it would never end (`writeAll` fails too). */
const writeZero = (file: FileSystem.File): PlatformError =>
  new SystemError({
    module: "FileSystem",
    method: "write",
    reason: "WriteZero",
    pathOrDescriptor: file.fd,
    description: "write returned 0 bytes written"
  })

/** Writes `bytes` from `from` on, in as many calls as the file takes, counting what lands. */
const writeFrom = (file: FileSystem.File, bytes: Uint8Array, from: number): Effect.Effect<void, ShortWrite> =>
  from === bytes.length ? Effect.void : Effect.matchEffect(file.write(bytes.subarray(from)), {
    onFailure: (error) => Effect.fail({ error, landed: from }),
    onSuccess: (size) =>
      Number(size) === 0
        ? Effect.fail({ error: writeZero(file), landed: from })
        : writeFrom(file, bytes, from + Number(size))
  })

/** Writes text whole (a short write goes on); not interrupted, so no line is torn by an interrupt. */
export const writeText = (file: FileSystem.File, text: string): Effect.Effect<void, PlatformError> =>
  text.length === 0
    ? Effect.void
    : Effect.uninterruptible(Effect.mapError(writeFrom(file, encoder.encode(text), 0), (short) => short.error))

/** How many of `texts`, written one after another, lie whole within the first `bytes` bytes. */
const wholeWithin = (texts: ReadonlyArray<string>, bytes: number): number => {
  let end = 0
  for (let i = 0; i < texts.length; i++) {
    end += encoder.encode(texts[i]).length
    if (end > bytes) return i
  }
  return texts.length
}

/**
 * Appends items to `file` in the order they are submitted, as many in one write as are waiting
 * (group commit): a submitter that finds no write under way writes every pending item, and those
 * submitted meanwhile, until none is left; the others return at once. `written` follows each
 * write for each of its items, in order; a write that fails partway (a full disk) is followed by
 * `written` for the items it landed whole, then fails. Nothing waits on a lock, and the writing
 * is not interrupted, so a submitted item is written even when its submitter is interrupted.
 */
export const appender = <A>(
  file: FileSystem.File,
  encode: (item: A) => string,
  written: (item: A) => Effect.Effect<void>
): (item: A) => Effect.Effect<void, PlatformError> => {
  let pending: Array<A> = []
  let writing = false
  const writePending: Effect.Effect<void, PlatformError> = Effect.suspend(() => {
    if (pending.length === 0) {
      writing = false
      return Effect.void
    }
    const items = pending
    pending = []
    const texts = items.map(encode)
    return Effect.matchEffect(writeFrom(file, encoder.encode(texts.join("")), 0), {
      onFailure: ({ error, landed }) =>
        Effect.zipRight(
          Effect.forEach(items.slice(0, wholeWithin(texts, landed)), written, { discard: true }),
          Effect.fail(error)
        ),
      onSuccess: () => Effect.zipRight(Effect.forEach(items, written, { discard: true }), writePending)
    })
  })
  return (item) =>
    Effect.suspend(() => {
      pending.push(item)
      if (writing) return Effect.void
      writing = true
      return Effect.uninterruptible(writePending)
    })
}

// ---------------------------------------------------------------------------------------------
// The output's identity
// ---------------------------------------------------------------------------------------------

const isNotFound = (error: PlatformError): boolean => error._tag === "SystemError" && error.reason === "NotFound"

/** Symlinks followed before giving up, as the kernel does (ELOOP). */
const maxSymlinks = 40

/**
 * The real path of the file written through `path`: symlinks are followed, even to a target that
 * does not exist yet, so every spelling of one file resolves alike. The file need not exist; its
 * directory must.
 */
export const resolveOutput = (fs: FileSystem.FileSystem, path: string): Effect.Effect<string, PlatformError> => {
  const resolve = (at: string, hops: number): Effect.Effect<string, PlatformError> =>
    fs.realPath(at).pipe(
      Effect.catchIf(isNotFound, (notFound) =>
        fs.readLink(at).pipe(
          Effect.matchEffect({
            // A dangling symlink: resolve what it points to.
            onSuccess: (target) =>
              hops >= maxSymlinks ? Effect.fail(notFound) : resolve(NodePath.resolve(NodePath.dirname(at), target), hops + 1),
            // Not there at all: the real directory and the name.
            onFailure: () =>
              Effect.map(fs.realPath(NodePath.dirname(at)), (directory) => NodePath.join(directory, NodePath.basename(at)))
          })
        ))
    )
  return resolve(NodePath.resolve(path), 0)
}

/** Why an existing output cannot be rewritten in place of itself, if it cannot. */
export const readOnlyReason = (fs: FileSystem.FileSystem, path: string): Effect.Effect<Option.Option<string>, PlatformError> =>
  Effect.gen(function*() {
    if (!(yield* fs.exists(path))) return Option.none()
    const { mode } = yield* fs.stat(path)
    // No write bit at all means "keep this" even to root, whom `access` would let through.
    if ((mode & 0o222) === 0) return Option.some(`it is read-only (mode ${modeText(mode)})`)
    const writable = yield* Effect.isSuccess(fs.access(path, { writable: true }))
    return writable ? Option.none() : Option.some(`it is not writable by this user (mode ${modeText(mode)})`)
  })

const modeText = (mode: number): string => `0${(mode & 0o7777).toString(8).padStart(3, "0")}`

// ---------------------------------------------------------------------------------------------
// The lock
// ---------------------------------------------------------------------------------------------

/** Another run holds the lock; `holder` is `undefined` when the lock file names none. */
export interface Locked {
  readonly _tag: "Locked"
  readonly holder: LockHolder | undefined
}

const parseHolder = (text: string): LockHolder | undefined => {
  try {
    const value: unknown = JSON.parse(text)
    if (typeof value !== "object" || value === null) return undefined
    const { host, pid, since } = value as Record<string, unknown>
    return typeof pid === "number" && typeof host === "string" && typeof since === "string" ? { pid, host, since } : undefined
  } catch {
    return undefined
  }
}

/** Whether a process of this host is alive; one of another user (EPERM) is. */
const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as { readonly code?: unknown }).code === "EPERM"
  }
}

/** The lock files a run of this process holds or is taking. */
const heldHere = new Set<string>()

/**
 * Whether the lock of `holder` was left by a process of this host that is gone. One naming this
 * process's own pid is another run's of this process only while one holds or takes it
 * (`heldByAnotherRun`): a container restarted after a crash runs with the pid its former process
 * had (1, under Docker), which no signal tells apart.
 */
const isStale = (holder: LockHolder | undefined, host: string, heldByAnotherRun: boolean): holder is LockHolder =>
  holder !== undefined && holder.host === host &&
  (holder.pid === process.pid ? !heldByAnotherRun : !isAlive(holder.pid))

/** Attempts at the lock before giving up, when stale locks keep being replaced under us. */
const lockAttempts = 3

/**
 * Numbers this process's lock drafts, so that two runs of it never write the same one (a draft a
 * former process of the same pid left is overwritten, then removed).
 */
let lockDrafts = 0

/**
 * Creates the lock file `lockPath` holding `text`, failing with `AlreadyExists` when it exists.
 * The text is written to a draft beside it, then linked into place: a lock never exists without
 * its holder, so neither a failed write (a full disk) nor a crash between create and write leaves
 * one naming no holder, which no run could tell stale. Where the file system has no hard links,
 * the lock is created exclusively and then written.
 */
const createLock = (fs: FileSystem.FileSystem, lockPath: string, text: string) => {
  const draft = `${lockPath}.${process.pid}-${++lockDrafts}.new`
  return Effect.ensuring(
    Effect.zipRight(
      fs.writeFileString(draft, text),
      Effect.catchIf(
        fs.link(draft, lockPath),
        (error) => !(error._tag === "SystemError" && error.reason === "AlreadyExists"),
        () => fs.writeFileString(lockPath, text, { flag: "wx" })
      )
    ),
    Effect.ignore(fs.remove(draft))
  )
}

/**
 * Why the lock file `lockPath` could not be created, where its directory is the cause: the
 * system's own words name the draft written beside it (`createLock`), a file the user never named.
 */
export const lockDirectoryProblem = (error: PlatformError, lockPath: string): string | undefined => {
  if (error._tag !== "SystemError" || (error.method !== "writeFile" && error.method !== "link")) return undefined
  const directory = NodePath.dirname(lockPath)
  if (error.reason === "PermissionDenied") return `this user may not create files in ${directory}`
  return error.description?.startsWith("EROFS") === true ? `${directory} is on a read-only file system` : undefined
}

/**
 * Takes the lock file `lockPath` for this process, created exclusively (`createLock`), until the
 * scope closes (then it is removed if it is still ours). A lock whose holder is a dead process of
 * this host is taken over (its holder is returned); any other lock fails with `Locked`.
 *
 * A stale lock is renamed aside, not removed: only the run whose rename moved that very file goes
 * on, so two runs that find the same stale lock cannot both take it.
 */
export const acquireLock = (
  fs: FileSystem.FileSystem,
  lockPath: string
): Effect.Effect<Option.Option<LockHolder>, PlatformError | Locked, Scope.Scope> =>
  Effect.gen(function*() {
    const host = hostname()
    const since = new Date(yield* Clock.currentTimeMillis).toISOString()
    const ours = `${JSON.stringify({ pid: process.pid, host, since })}\n`
    const aside = `${lockPath}.stale-${process.pid}`

    // Marked before the lock is written, not after: another run of this process that read the lock
    // in between would take it for a former process's. Unmarked only by the run that marked it (one
    // refused while another run here holds the lock leaves the mark alone).
    let marked = false
    const unmark = Effect.sync(() => marked && heldHere.delete(lockPath))

    const readHolder = (path: string) => Effect.map(fs.readFileString(path), (text) => ({ text, holder: parseHolder(text) }))

    /** Moves the stale lock whose text is `stale` out of the way; fails if the lock changed meanwhile. */
    const takeOver = (stale: string) =>
      Effect.gen(function*() {
        yield* fs.rename(lockPath, aside)
        const moved = yield* readHolder(aside)
        if (moved.text !== stale) {
          // Another run took the lock over between our read and our rename: give it back.
          yield* Effect.ignore(fs.link(aside, lockPath))
          yield* Effect.ignore(fs.remove(aside))
          return yield* Effect.fail<Locked>({ _tag: "Locked", holder: moved.holder })
        }
        yield* fs.remove(aside)
      })

    const attempt = (left: number, tookOver: Option.Option<LockHolder>): Effect.Effect<
      Option.Option<LockHolder>,
      PlatformError | Locked
    > =>
      createLock(fs, lockPath, ours).pipe(
        Effect.as(tookOver),
        Effect.catchIf(
          (error) => error._tag === "SystemError" && error.reason === "AlreadyExists" && left > 1,
          () =>
            readHolder(lockPath).pipe(
              Effect.flatMap(({ holder, text }) =>
                isStale(holder, host, !marked)
                  ? Effect.zipRight(takeOver(text), attempt(left - 1, Option.some(holder)))
                  : Effect.fail<Locked>({ _tag: "Locked", holder })
              ),
              // Released between our create and our read: try again.
              Effect.catchIf(
                (error) => error._tag !== "Locked" && isNotFound(error),
                () => attempt(left - 1, tookOver)
              )
            )
        )
      )

    const release = fs.readFileString(lockPath).pipe(
      Effect.flatMap((text) => text === ours ? fs.remove(lockPath) : Effect.void),
      Effect.ignore,
      Effect.ensuring(unmark)
    )
    const take = Effect.suspend(() => {
      marked = !heldHere.has(lockPath)
      if (marked) heldHere.add(lockPath)
      return Effect.onError(attempt(lockAttempts, Option.none()), () => unmark)
    })
    return yield* Effect.acquireRelease(take, () => release)
  })

// ---------------------------------------------------------------------------------------------
// Compaction
// ---------------------------------------------------------------------------------------------

/** An existing output file holds a line that no batch run wrote. */
export interface ForeignLine {
  readonly _tag: "ForeignLine"
  readonly lineNumber: number
}

/** The most of a file's end read to find whether its last line ended: blanks after it are rare. */
const tailBytes = 64 * 1024

/** Blanks other than a newline that may follow a file's last line (`splitLines` skips blank lines). */
const blank = new Set([0x20, 0x09, 0x0d])

/**
 * Whether the file's last non-blank line has a newline after it: it was written whole. A line a
 * crash tore has none. A tail of blanks longer than `tailBytes` counts as whole.
 */
const lastLineEnded = (fs: FileSystem.FileSystem, path: string, size: FileSystem.Size) =>
  Effect.scoped(Effect.gen(function*() {
    const length = size < FileSystem.Size(tailBytes) ? Number(size) : tailBytes
    const file = yield* fs.open(path, { flag: "r" })
    yield* file.seek(size - FileSystem.Size(length), "start")
    const tail = Option.getOrElse(yield* file.readAlloc(length), () => new Uint8Array())
    let at = tail.length - 1
    while (at >= 0 && blank.has(tail[at]!)) at--
    return at < 0 || tail[at] === newline
  }))

/** Where the output at `path` (a real path) is rewritten before it replaces it. */
export const compactingPathOf = (path: string): string => `${path}.compacting`

/**
 * Rewrites an existing output file so it holds only its successful lines, one per custom id, and
 * returns those ids. Failed lines go (they are retried), and so does the line a crash tore: the
 * start of a result line, last, with no newline after it. Any other unreadable line means the
 * file is not batch output (a file named as the output by mistake), and it is left untouched. The
 * rewrite goes to `<path>.compacting` beside it, given the file's mode, then renamed over it, so a
 * crash during it loses nothing. `path` must be the real path (see `resolveOutput`), so a symlink
 * to the output stays a symlink to the compacted file.
 */
export const compactOutput = (
  fs: FileSystem.FileSystem,
  path: string
): Effect.Effect<ReadonlySet<string>, PlatformError | ForeignLine> =>
  Effect.gen(function*() {
    if (!(yield* fs.exists(path))) return new Set<string>()
    const { size } = yield* fs.stat(path)
    const keep = keeper(!(yield* lastLineEnded(fs, path, size)))
    yield* replaceFile(fs, path, compactingPathOf(path), (file) =>
      Stream.runForEachChunk(lines(fs, path), (read) => Effect.flatMap(keep.lines(read), (text) => writeText(file, text))))
    return keep.succeeded
  })

/**
 * Replaces the file at `path` (a real path, see `resolveOutput`) with what `write` writes: into
 * `temporaryPath` beside it, synced, given the file's mode when there is one, then renamed over
 * it, so a reader or a crash sees the old file or the new one whole, never a part of either.
 * Interrupted or failed, it leaves the file as it was and no temporary file.
 */
export const replaceFile = <E>(
  fs: FileSystem.FileSystem,
  path: string,
  temporaryPath: string,
  write: (file: FileSystem.File) => Effect.Effect<void, E>
): Effect.Effect<void, E | PlatformError> =>
  Effect.flatMap(
    fs.stat(path).pipe(
      Effect.map((info) => Option.some(info.mode & 0o7777)),
      Effect.catchIf(isNotFound, () => Effect.succeed(Option.none<number>()))
    ),
    (mode) =>
      Effect.scoped(
        Effect.gen(function*() {
          // One a killed run left is removed, never opened: opening follows a symlink planted
          // there, writing through it to any file and renaming the link over `path`. Created
          // exclusively, with the file's mode from the start: what a 0600 file holds is never
          // readable by others meanwhile (the chmod after it undoes the umask).
          yield* fs.remove(temporaryPath).pipe(Effect.catchIf(isNotFound, () => Effect.void))
          const file = yield* fs.open(temporaryPath, { flag: "wx", mode: Option.getOrElse(mode, () => 0o666) & 0o777 })
          yield* write(file)
          yield* file.sync
          if (Option.isSome(mode)) yield* fs.chmod(temporaryPath, mode.value)
        })
      ).pipe(Effect.zipRight(fs.rename(temporaryPath, path)), Effect.onError(() => Effect.ignore(fs.remove(temporaryPath))))
  )

/**
 * Whether an unreadable line may be the start of a result line cut inside a character: some text
 * before the cut (a result line starts with ASCII, so its first character is never the one cut).
 */
const mayBeTornBytes = (line: Extract<NumberedLine, { readonly text: undefined }>): boolean =>
  line.beforeCut !== undefined && line.beforeCut.length > 0 && mayBeTornResult(line.beforeCut)

/**
 * Whether a line is only NUL bytes: what ext4 or XFS may leave of appends a machine's crash cut
 * (the file's size written, its data not).
 */
const isZeroFill = (text: string): boolean => /^\0+$/.test(text)

/**
 * What compaction keeps of an output's lines, a read at a time (no effect per line: an output can
 * hold millions): the text of the first successful line of each id. A line that is not a batch
 * result is `ForeignLine`, unless it may be one a crash tore: the last, with no newline after it
 * (`torn`), the start of a result line or NUL bytes (bytes that are not UTF-8: after a result, or
 * the start of a result line cut inside a character).
 */
const keeper = (torn: boolean) => {
  const succeeded = new Set<string>()
  let sawResult = false
  let unrecognized: number | undefined
  const lines = (read: Chunk.Chunk<NumberedLine>): Effect.Effect<string, ForeignLine> => {
    let kept = ""
    for (const line of read) {
      if (unrecognized !== undefined) return Effect.fail({ _tag: "ForeignLine", lineNumber: unrecognized })
      const result = line.text === undefined ? undefined : classifyExisting(line.text)
      if (result === undefined || result._tag === "Unrecognized") {
        const tearable = torn &&
          (line.text === undefined ? sawResult || mayBeTornBytes(line) : mayBeTornResult(line.text) || isZeroFill(line.text))
        if (!tearable) return Effect.fail({ _tag: "ForeignLine", lineNumber: line.lineNumber })
        unrecognized = line.lineNumber
        continue
      }
      sawResult = true
      if (result._tag === "Succeeded" && !succeeded.has(result.customId)) {
        succeeded.add(result.customId)
        kept += `${line.text}\n`
      }
    }
    return Effect.succeed(kept)
  }
  return { succeeded, lines }
}
