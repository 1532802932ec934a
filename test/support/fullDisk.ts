import { SystemError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

const noSpace = (method: string) =>
  new SystemError({ reason: "Unknown", module: "FileSystem", method, description: `ENOSPC: no space left on device, ${method}` })

/**
 * The file system it is given, but `paths` live on a small disk of `capacity` bytes, as a full
 * disk does to them: an append writes what fits, then fails with ENOSPC (the failed write lands
 * in part); a whole-file write that does not fit fails and writes nothing.
 */
export const layerFullDisk = (
  paths: ReadonlyArray<string>,
  capacity: number
): Layer.Layer<FileSystem.FileSystem, never, FileSystem.FileSystem> =>
  Layer.effect(
    FileSystem.FileSystem,
    Effect.map(FileSystem.FileSystem, (fs) => {
      let free = capacity
      const onDisk = (path: string) => paths.includes(path)
      const filling = (file: FileSystem.File): FileSystem.File =>
        Object.assign(Object.create(file) as FileSystem.File, {
          writeAll: (buffer: Uint8Array) => {
            const fits = Math.min(free, buffer.length)
            free -= fits
            const written = file.writeAll(buffer.subarray(0, fits))
            return fits === buffer.length ? written : Effect.zipRight(written, Effect.fail(noSpace("write")))
          }
        })
      return {
        ...fs,
        open: (path, options) => onDisk(path) ? Effect.map(fs.open(path, options), filling) : fs.open(path, options),
        writeFileString: (path, text, options) => {
          if (!onDisk(path)) return fs.writeFileString(path, text, options)
          const bytes = Buffer.byteLength(text)
          if (bytes > free) return Effect.fail(noSpace("write"))
          free -= bytes
          return fs.writeFileString(path, text, options)
        }
      }
    })
  )
