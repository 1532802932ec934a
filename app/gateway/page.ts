/**
 * The status page (`GET /`): one HTML document with its script inline, drawing live charts with
 * uPlot (served by the gateway from the `uplot` package, so the page works offline). It loads the
 * kept samples from `status.json`, then follows the `status/events` feed (Server-Sent Events).
 * Each account has a card: its charts over all its models, then the same charts for each of its
 * (account, model) lanes as the lane opens, since DeepSeek caps each model of an account apart.
 * URLs are relative, so the page works behind a path prefix.
 *
 * Kept as a string in a module (not a file beside it) so the compiled package carries it.
 */

const script = String.raw`
"use strict";
const MAX = 300;
// Reconnects this long after the feed or status.json failed; data is stale after STALE_MS without a sample.
const RETRY_MS = 2000;
const STALE_MS = 5000;
const state = { samples: [], cards: new Map(), gatewayChart: null, updates: 0, lastSampleAt: 0, stale: false };
window.__gateway = state;

const $ = (tag, attrs, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c);
  return el;
};
const usd = (n) => "$" + (n < 0.01 ? n.toFixed(6) : n.toFixed(4));
const chartWidth = () => Math.max(280, Math.min(420, Math.floor((window.innerWidth - 64) / 3)));

function chart(el, title, series, options) {
  const opts = options || {};
  return new uPlot({
    title, width: chartWidth(), height: 150, legend: { live: false },
    scales: Object.assign({ x: { time: true } }, opts.scales || {}),
    axes: [{}, { size: opts.valueAxis ? 92 : 56, values: opts.valueAxis }].concat(series.some((s) => s.scale === "state")
      ? [{ scale: "state", side: 1, size: 72, splits: () => [0, 1, 2], values: (u, ticks) => ticks.map((t) => ["closed", "half-open", "open"][t] || "") }]
      : []),
    series: [{}].concat(series.map((s) => Object.assign({ width: 2, points: { show: false } }, s)))
  }, [[]].concat(series.map(() => [])), el);
}

/** The three charts of an account or of one of its lanes: concurrency, 429s with the breaker, spend. */
function chartRow(prefix) {
  const row = $("div", { class: "charts" });
  const concurrency = chart($("div"), prefix + "concurrency", [
    { label: "limit", stroke: "#3366cc" },
    { label: "in flight", stroke: "#109618" },
    { label: "queued", stroke: "#ff9900" }
  ]);
  const throttle = chart($("div"), prefix + "429/s and breaker", [
    { label: "429/s", stroke: "#dc3912" },
    { label: "breaker", stroke: "#990099", scale: "state" }
  ], { scales: { state: { range: [0, 2] } } });
  const spend = chart($("div"), prefix + "spend (USD)", [{ label: "USD", stroke: "#0099c6", value: (u, v) => v == null ? "" : usd(v) }],
    { valueAxis: (u, ticks) => ticks.map(usd) });
  for (const c of [concurrency, throttle, spend]) row.append(c.root);
  return { row, charts: { concurrency, throttle, spend } };
}

/** Draws the samples of one account or lane: "of" picks its figures from a sample (undefined where absent). */
function draw(charts, xs, samples, of) {
  const series = (pick) => samples.map((s) => { const v = of(s); return v === undefined ? null : pick(v); });
  charts.concurrency.setData([xs, series((v) => v.limit), series((v) => v.inFlight), series((v) => v.queued)]);
  charts.throttle.setData([xs, series((v) => v.rateLimitedPerSecond), series((v) => v.breaker)]);
  charts.spend.setData([xs, series((v) => v.costUsd)]);
}

function accountCard(name, account) {
  const badge = $("span", { class: "badge" });
  const title = $("h2", {}, name + (account.fallback ? " (fallback)" : "") + " ", badge);
  const note = $("p", { class: "note" });
  const { row, charts } = chartRow("all models: ");
  const lanes = $("div");
  const card = $("section", { class: "card", "data-account": name }, title, note, row, lanes);
  document.getElementById("accounts").append(card);
  return { badge, note, charts, lanes, laneCharts: new Map() };
}

/** A lane's row in its account's card, made when the lane opens (on its model's first call). */
function laneRow(card, model) {
  const { row, charts } = chartRow(model + ": ");
  card.lanes.append($("div", { class: "lane", "data-lane": model }, $("h3", {}, model), row));
  return charts;
}

function gatewayCard() {
  const row = $("div", { class: "charts" });
  document.getElementById("gateway").append($("section", { class: "card" }, $("h2", {}, "gateway"), row));
  const clients = chart($("div"), "clients", [
    { label: "in flight", stroke: "#109618" },
    { label: "waiting", stroke: "#ff9900", dash: [6, 4] }
  ]);
  const keepAlives = chart($("div"), "keep-alives/s", [{ label: "keep-alives/s", stroke: "#3366cc" }]);
  row.append(clients.root, keepAlives.root);
  return { clients, keepAlives };
}

function perSecond(samples, pick) {
  return samples.map((s, i) => {
    if (i === 0) return 0;
    const dt = (s.t - samples[i - 1].t) / 1000;
    return dt > 0 ? Math.max(0, (pick(s) - pick(samples[i - 1])) / dt) : 0;
  });
}

function banner(latest) {
  const messages = [];
  if (state.stale) {
    messages.push("No data from the gateway since " + new Date(state.lastSampleAt).toLocaleTimeString() +
      ": it is down or cannot be reached; this page reconnects on its own, and what it shows is from then.");
  }
  if (latest.draining) messages.push("The gateway is shutting down: running requests finish, new ones are refused.");
  const throttled = latest.banner.throttling;
  if (throttled.length > 0) {
    messages.push("DeepSeek is throttling: requests are queued and will resume (account" + (throttled.length > 1 ? "s " : " ") +
      throttled.join(", ") + ").");
  }
  for (const name of latest.banner.outOfBalance) {
    messages.push("Account " + name + " is out of balance: its calls go to the other accounts until it is topped up.");
  }
  for (const name of latest.banner.unreachable) {
    messages.push("Account " + name + " cannot be connected to: check its base URL and the network; it is tried again every few seconds.");
  }
  for (const name of latest.banner.noKeys) {
    messages.push("Account " + name + ": the upstream rejected every key (401): replace them; its calls go to the other accounts meanwhile.");
  }
  const checking = latest.banner.checkingBalance;
  if (latest.banner.noAccountServing) {
    messages.push(checking.length > 0
      ? "No account can serve yet: the balance of account" + (checking.length > 1 ? "s " : " ") + checking.join(", ") +
        " is being checked (once, at start); requests wait for the answer."
      : "No account can serve: requests wait for one up to --max-wait, then fail with a 503.");
  }
  if (latest.banner.budgetSpent) messages.push("The budget is spent: new calls are refused.");
  const el = document.getElementById("banner");
  el.textContent = messages.join(" ");
  el.hidden = messages.length === 0;
}

function spendTable(latest) {
  const body = document.querySelector("#spend tbody");
  body.replaceChildren(...latest.models.map((m) => $("tr", {},
    $("td", {}, m.account), $("td", {}, m.model), $("td", {}, usd(m.costUsd)),
    $("td", {}, String(m.tokens.prompt_cache_hit || 0)), $("td", {}, String(m.tokens.prompt_cache_miss || 0)),
    $("td", {}, String(m.tokens.completion || 0)), $("td", {}, String(m.tokens.reasoning || 0)),
    $("td", {}, String(m.unmetered)))));
}

function lanesTable(latest) {
  const body = document.querySelector("#lanes tbody");
  body.replaceChildren(...latest.accounts.flatMap((a) => a.models.map((m) => $("tr", {},
    $("td", {}, a.name), $("td", {}, m.model), $("td", {}, String(m.limit)),
    $("td", {}, String(m.inFlight)), $("td", {}, String(m.queued))))));
}

function render() {
  const samples = state.samples;
  const latest = samples[samples.length - 1];
  if (latest === undefined) return;
  const xs = samples.map((s) => s.t / 1000);
  state.gatewayChart = state.gatewayChart || gatewayCard();
  state.gatewayChart.clients.setData([xs, samples.map((s) => s.gateway.active), samples.map((s) => s.gateway.waiting)]);
  state.gatewayChart.keepAlives.setData([xs, perSecond(samples, (s) => s.gateway.keepAlives)]);
  for (const account of latest.accounts) {
    let card = state.cards.get(account.name);
    if (card === undefined) {
      card = accountCard(account.name, account);
      state.cards.set(account.name, card);
    }
    const of = (s) => s.accounts.find((a) => a.name === account.name);
    const shown = account.reachable ? account.state : "unreachable";
    card.badge.textContent = shown.replace(/_/g, " ");
    card.badge.className = "badge " + shown;
    // Why an account does not serve, as far as its last attempt tells, and the keys to fix.
    const failure = shown === "serving" || !account.lastFailure ? [] : ["last failure: " + account.lastFailure];
    const resting = account.restingKeys.length === 0 ? [] : [account.restingKeys.join(", ") + " rejected (401), resting"];
    card.note.textContent = failure.concat(resting).join("; ");
    draw(card.charts, xs, samples, of);
    for (const lane of account.models) {
      let charts = card.laneCharts.get(lane.model);
      if (charts === undefined) {
        charts = laneRow(card, lane.model);
        card.laneCharts.set(lane.model, charts);
      }
      // The breaker guards the whole account: each lane shows its account's.
      draw(charts, xs, samples, (s) => {
        const a = of(s);
        const m = a && a.models.find((l) => l.model === lane.model);
        return m && Object.assign({ breaker: a.breaker }, m);
      });
    }
  }
  document.getElementById("summary").textContent =
    latest.gateway.requests + " requests, " + latest.gateway.waiting + " waiting, " + latest.gateway.active +
    " in flight, " + latest.gateway.streamsCut + " streams cut, spent " + usd(latest.spend.costUsd) +
    (latest.spend.budgetUsd === null ? "" : " of " + usd(latest.spend.budgetUsd));
  banner(latest);
  lanesTable(latest);
  spendTable(latest);
  state.updates++;
}

function fresh() {
  state.lastSampleAt = Date.now();
  state.stale = false;
}

// A feed whose reconnect a proxy answers with an error status is closed for good by the browser:
// the page opens it again (after status.json, for what it missed) until the gateway answers.
async function start() {
  try {
    const response = await fetch("status.json");
    if (!response.ok) throw new Error("status.json answered " + response.status);
    state.samples = (await response.json()).samples;
  } catch {
    setTimeout(start, RETRY_MS);
    return;
  }
  fresh();
  render();
  const feed = new EventSource("status/events");
  feed.onmessage = (event) => {
    state.samples.push(JSON.parse(event.data));
    if (state.samples.length > MAX) state.samples.shift();
    fresh();
    render();
  };
  feed.onerror = () => {
    if (feed.readyState === EventSource.CLOSED) setTimeout(start, RETRY_MS);
  };
}

setInterval(() => {
  if (state.stale || state.samples.length === 0 || Date.now() - state.lastSampleAt < STALE_MS) return;
  state.stale = true;
  banner(state.samples[state.samples.length - 1]);
}, 1000);
start();
`

/** The status page. */
export const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>weatherproof gateway</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="assets/uPlot.min.css">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; background: #fafafa; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  h3 { font-size: 13px; margin: 10px 0 6px; color: #444; }
  #summary { color: #555; margin-bottom: 12px; }
  #banner { background: #fff3cd; border: 1px solid #e0b100; padding: 10px 14px; margin: 0 0 14px; border-radius: 6px; font-weight: 600; }
  .card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 12px; margin-bottom: 14px; }
  .charts { display: flex; flex-wrap: wrap; gap: 12px; }
  .badge { font-size: 12px; font-weight: 600; padding: 2px 8px; border-radius: 10px; background: #ddd; }
  .badge.serving { background: #d4edda; } .badge.half_open { background: #fff3cd; }
  .badge.open, .badge.out_of_balance, .badge.no_keys, .badge.unreachable { background: #f8d7da; }
  .note { margin: -4px 0 8px; color: #721c24; font-size: 13px; } .note:empty { display: none; }
  table { border-collapse: collapse; background: #fff; }
  th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
  th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
</style>
</head>
<body>
<h1>weatherproof gateway</h1>
<div id="summary">loading…</div>
<div id="banner" role="status" hidden></div>
<div id="gateway"></div>
<div id="accounts"></div>
<section class="card">
<h2>lanes by account and model</h2>
<table id="lanes">
<thead><tr><th>account</th><th>model</th><th>limit</th><th>in flight</th><th>queued (the model's)</th></tr></thead>
<tbody></tbody>
</table>
</section>
<section class="card">
<h2>spend by account and model</h2>
<table id="spend">
<thead><tr><th>account</th><th>model</th><th>USD</th><th>cache hit</th><th>cache miss</th><th>completion</th><th>reasoning</th><th title="attempts billed for output whose usage never arrived (cut in transit, or none sent): not in the USD and tokens">usage unknown</th></tr></thead>
<tbody></tbody>
</table>
</section>
<script src="assets/uPlot.iife.min.js"></script>
<script>${script}</script>
</body>
</html>
`
