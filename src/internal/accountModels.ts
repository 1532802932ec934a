/**
 * Which accounts of a pool serve a model, and the name each is sent it by. A model is read by its
 * lane: a name the pricing table makes an alias of a model is that model (DeepSeek serves both
 * under one cap), so an account's `models` map applies to either name.
 *
 * An account serves the models its `models` map names. One without a map that is not a `deepseek`
 * account serves every model, sent as asked (a provider's own names). A `deepseek` account also
 * serves the price table's models, and any model no account's map names (a DeepSeek model the
 * table does not know yet). A model no account serves so is left to every account, sent as asked:
 * the upstream's answer says what is wrong with it.
 *
 * @internal
 */
import type { Account } from "../Accounts.js"
import type { PricingTable } from "../CostLedger.js"

export interface AccountModels {
  /** The lane of calls to `model`: the pricing table's model when it is an alias. */
  readonly laneOf: (model: string) => string
  /** Whether the account at `index` serves the calls of `lane`. */
  readonly serves: (index: number, lane: string) => boolean
  /** The accounts that do not serve `lane`: left out of its calls from their start. */
  readonly notServing: (lane: string) => ReadonlySet<number>
  /** The name the `models` map of the account at `index` gives `model`, if it names it. */
  readonly mappedName: (index: number, model: string) => string | undefined
  /**
   * The name of the lane of the account at `index` that serves the calls of `lane`: the lane of
   * the model it sends them as. Lanes its map sends as one model are one lane there.
   */
  readonly laneKey: (index: number, lane: string) => string
}

const none: ReadonlySet<number> = new Set()

export const make = (accounts: ReadonlyArray<Account>, pricing: PricingTable): AccountModels => {
  const aliases = new Map(Object.entries(pricing.aliases ?? {}))
  const laneOf = (model: string): string => aliases.get(model) ?? model
  const asNamed = accounts.map((account) => new Map(Object.entries(account.models)))
  // Each account's map by lane: a map keyed by either name of a model applies to both.
  const byLane = asNamed.map((names) => new Map(Array.from(names, ([asked, sent]) => [laneOf(asked), sent] as const)))
  const namedByAny = new Set(byLane.flatMap((names) => Array.from(names.keys())))
  const servesByItself = (index: number, lane: string): boolean => {
    const account = accounts[index]!
    if (byLane[index]!.has(lane)) return true
    return account.provider === "deepseek"
      ? Object.hasOwn(pricing.models, lane) || !namedByAny.has(lane)
      : byLane[index]!.size === 0
  }
  // Per lane, once: a few models, asked on every call.
  const leftOut = new Map<string, ReadonlySet<number>>()
  const notServing = (lane: string): ReadonlySet<number> => {
    let out = leftOut.get(lane)
    if (out === undefined) {
      const others = accounts.flatMap((_, index) => servesByItself(index, lane) ? [] : [index])
      out = others.length === accounts.length || others.length === 0 ? none : new Set(others)
      leftOut.set(lane, out)
    }
    return out
  }
  return {
    laneOf,
    serves: (index, lane) => !notServing(lane).has(index),
    notServing,
    mappedName: (index, model) => asNamed[index]!.get(model) ?? byLane[index]!.get(laneOf(model)),
    laneKey: (index, lane) => {
      const sent = byLane[index]!.get(lane)
      return sent === undefined ? lane : laneOf(sent)
    }
  }
}
