/**
 * A pricing table without peak hours (DeepSeek's V4 launch prices), for tests whose figures must
 * not depend on the time of day they run at.
 */
import type * as CostLedger from "../../src/CostLedger.js"

export const flatPricing: CostLedger.PricingTable = {
  models: {
    "deepseek-v4-flash": { cacheHit: 0.0028, cacheMiss: 0.14, output: 0.28 },
    "deepseek-v4-pro": { cacheHit: 0.003625, cacheMiss: 0.435, output: 0.87 }
  },
  aliases: {
    "deepseek-chat": "deepseek-v4-flash",
    "deepseek-reasoner": "deepseek-v4-flash"
  }
}
