import { SystemError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

/** The error of a write to a full disk, as Node's file system gives it. */
export const noSpace = (method: string) =>
  new SystemError({ reason: "Unknown", module: "FileSystem", method, description: `ENOSPC: no space left on device, ${method}` })

/**
 * The file system it is given, but `paths` (and the files beside each, named `<path>.<suffix>`)
 * live on a small disk of `capacity` bytes, as a full disk does to them: a write lands what fits,
 * the next fails with ENOSPC; a whole-file write truncates the file first, as the real call does.
 */
export const layerFullDisk = (
  paths: ReadonlyArray<string>,
  capacity: number
): Layer.Layer<FileSystem.FileSystem, never, FileSystem.FileSystem> =>
  Layer.effect(
    FileSystem.FileSystem,
    Effect.map(FileSystem.FileSystem, (fs) => {
      let free = capacity
      const onDisk = (path: string) => paths.some((listed) => path === listed || path.startsWith(`${listed}.`))
      /** What of `bytes` bytes fits: its length, and whether all of it does. */
      const take = (bytes: number) => {
        const fits = Math.min(free, bytes)
        free -= fits
        return { fits, whole: fits === bytes }
      }
      const filling = (file: FileSystem.File): FileSystem.File =>
        Object.assign(Object.create(file) as FileSystem.File, {
          // As write(2) does: a short write of what fits, ENOSPC once nothing does.
          write: (buffer: Uint8Array) => {
            const { fits } = take(buffer.length)
            return fits === 0 ? Effect.fail(noSpace("write")) : file.write(buffer.subarray(0, fits))
          }
        })
      return {
        ...fs,
        open: (path, options) => onDisk(path) ? Effect.map(fs.open(path, options), filling) : fs.open(path, options),
        writeFileString: (path, text, options) => {
          if (!onDisk(path)) return fs.writeFileString(path, text, options)
          const bytes = Buffer.from(text)
          const { fits, whole } = take(bytes.length)
          const written = fs.writeFile(path, bytes.subarray(0, fits), options)
          return whole ? written : Effect.zipRight(written, Effect.fail(noSpace("write")))
        }
      }
    })
  )
