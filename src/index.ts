/**
 * weatherproof: resilient calls to DeepSeek and other OpenAI-compatible chat APIs, as Effect
 * services and Layers. Each module is re-exported as a namespace.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as AccountPool from "./AccountPool.js"
/** @since 0.1.0 */
export * as Accounts from "./Accounts.js"
/** @since 0.1.0 */
export * as ApiError from "./ApiError.js"
/** @since 0.1.0 */
export * as Batch from "./Batch.js"
/** @since 0.1.0 */
export * as ChatSchema from "./ChatSchema.js"
/** @since 0.1.0 */
export * as ChatStream from "./ChatStream.js"
/** @since 0.1.0 */
export * as CircuitBreaker from "./CircuitBreaker.js"
/** @since 0.1.0 */
export * as ConcurrencyLimiter from "./ConcurrencyLimiter.js"
/** @since 0.1.0 */
export * as CostLedger from "./CostLedger.js"
/** @since 0.1.0 */
export * as KeyPool from "./KeyPool.js"
/** @since 0.1.0 */
export * as MockUpstream from "./MockUpstream.js"
/** @since 0.1.0 */
export * as Policy from "./Policy.js"
/** @since 0.1.0 */
export * as Redis from "./Redis.js"
/** @since 0.1.0 */
export * as Resilient from "./Resilient.js"
/** @since 0.1.0 */
export * as ResponseCache from "./ResponseCache.js"
/** @since 0.1.0 */
export * as RetryBudget from "./RetryBudget.js"
/** @since 0.1.0 */
export * as RetryPolicy from "./RetryPolicy.js"
/** @since 0.1.0 */
export * as Router from "./Router.js"
/** @since 0.1.0 */
export * as ServerSentEvents from "./ServerSentEvents.js"
/** @since 0.1.0 */
export * as Simulator from "./Simulator.js"
/** @since 0.1.0 */
export * as Telemetry from "./Telemetry.js"
/** @since 0.1.0 */
export * as TokenBucket from "./TokenBucket.js"
/** @since 0.1.0 */
export * as Transport from "./Transport.js"
