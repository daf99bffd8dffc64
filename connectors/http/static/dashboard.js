// nudgeflow live dashboard: reads /dashboard/stream (server-sent events) with fetch, so that the
// API key travels in the Authorization header, and draws each JSON frame. No dependencies.
"use strict";

const KEY_STORAGE = "nudgeflow.dashboard.key";
const STREAM_URL = "/dashboard/stream";
const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
const STALE_MS = 40000; // no data nor heartbeat for this long: reconnect
const SVG = "http://www.w3.org/2000/svg";

let attempt = 0;
let controller = null;
let retryTimer = null;

const $ = (id) => document.getElementById(id);

// ---- the key: from the URL fragment (then removed from the address bar), else the session, else asked for

function takeKeyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key) {
    sessionStorage.setItem(KEY_STORAGE, key);
    params.delete("key");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
}

function currentKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function askForKey(message) {
  $("key-form").hidden = false;
  $("forget-key").hidden = true;
  $("key-message").textContent = message || "";
  $("key-input").focus();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  stop();
  setStatus("unauthorized", "no key");
  askForKey("");
}

// ---- connection state

function setStatus(state, detail) {
  const el = $("status");
  el.className = "status " + state;
  el.textContent = detail ? state + " · " + detail : state;
  el.dataset.state = state;
}

function stop() {
  clearTimeout(retryTimer);
  if (controller) controller.abort();
  controller = null;
}

function scheduleReconnect(reason) {
  const base = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
  const wait = Math.round(base / 2 + Math.random() * base / 2);
  attempt += 1;
  setStatus("reconnecting", reason + ", retry in " + Math.ceil(wait / 1000) + " s");
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, wait);
}

async function connect() {
  stop();
  const key = currentKey();
  if (!key) {
    setStatus("unauthorized", "no key");
    askForKey("");
    return;
  }
  const mine = new AbortController();
  controller = mine;
  let stale = null;
  const touch = () => {
    clearTimeout(stale);
    stale = setTimeout(() => mine.abort(), STALE_MS);
  };
  try {
    touch();
    const response = await fetch(STREAM_URL, {
      headers: { Authorization: "Bearer " + key, Accept: "text/event-stream" },
      cache: "no-store",
      signal: mine.signal,
    });
    if (response.status === 401 || response.status === 403) {
      clearTimeout(stale);
      controller = null;
      sessionStorage.removeItem(KEY_STORAGE);
      const why = response.status === 401 ? "unknown key" : "the key lacks the read scope";
      setStatus("unauthorized", why);
      askForKey("The server refused this key: " + why + ".");
      return;
    }
    if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
    $("key-form").hidden = true;
    $("forget-key").hidden = false;
    await readEvents(response.body, touch);
    throw new Error("stream ended");
  } catch (err) {
    clearTimeout(stale);
    if (controller !== mine) return; // stopped on purpose
    scheduleReconnect(err && err.name === "AbortError" ? "no data" : String(err.message || err));
  }
}

async function readEvents(body, touch) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    touch();
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) {
        attempt = 0;
        setStatus("live");
        render(JSON.parse(data));
      }
    }
  }
}

// ---- formatting

function count(n) {
  return n == null ? "–" : Math.round(n).toLocaleString("en-US");
}

function rate(n) {
  if (n == null) return "–";
  return n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(1);
}

function seconds(s) {
  if (s == null) return "–";
  return s < 1 ? (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms" : s.toFixed(2) + " s";
}

function percent(p, signed) {
  if (p == null) return "–";
  const text = (p * 100).toFixed(1) + " %";
  return signed && p > 0 ? "+" + text : text;
}

function setText(id, text) {
  $(id).textContent = text;
}

// ---- drawing (inline SVG)

function svg(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function sparkline(values, width, height) {
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "sparkline" });
  if (!values || values.length < 2) return root;
  const max = Math.max(...values, 1e-9);
  const min = Math.min(...values, 0);
  const span = max - min || 1;
  const step = width / (values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 1 - ((v - min) / span) * (height - 2)).toFixed(1)}`);
  root.appendChild(svg("polyline", { points: points.join(" "), fill: "none" }));
  return root;
}

function reliabilityChart(rows) {
  const width = 300, height = 120, pad = 4;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", class: "bars" });
  const slot = (width - 2 * pad) / rows.length;
  rows.forEach((row, i) => {
    const x = pad + i * slot;
    const expected = row.predicted * (height - 2 * pad);
    root.appendChild(svg("rect", { x: x + 2, y: height - pad - expected, width: slot - 4, height: expected, class: "expected" }));
    if (row.observed != null) {
      const observed = row.observed * (height - 2 * pad);
      const bar = svg("rect", { x: x + slot / 4, y: height - pad - observed, width: slot / 2, height: observed, class: "observed" });
      const title = svg("title", {});
      title.textContent = `decile ${row.decile}: ${percent(row.observed)} of ${count(row.outcomes)} (expected ~${percent(row.predicted)})`;
      bar.appendChild(title);
      root.appendChild(bar);
    }
  });
  return root;
}

function fillTable(id, rows, cells, testid) {
  const body = $(id).querySelector("tbody");
  const fresh = document.createElement("tbody");
  for (const row of rows) {
    const tr = document.createElement("tr");
    if (testid) tr.dataset.testid = testid;
    for (const cell of cells(row)) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.appendChild(cell);
      else td.textContent = cell;
      tr.appendChild(td);
    }
    fresh.appendChild(tr);
  }
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = $(id).querySelectorAll("th").length;
    td.className = "muted";
    td.textContent = "none yet";
    tr.appendChild(td);
    fresh.appendChild(tr);
  }
  body.replaceWith(fresh);
}

function replaceChart(id, node) {
  $(id).replaceChildren(node);
}

// ---- one frame

function render(frame) {
  const error = $("error");
  error.hidden = !frame.error;
  error.textContent = frame.error ? "metrics unavailable: " + frame.error : "";
  if (frame.error) return;

  setText("uptime", "sampling for " + Math.round(frame.uptime_s) + " s");
  setText("events-rate", rate(frame.events.rate));
  setText("events-total", count(frame.events.total));
  setText("customers", count(frame.engine.customers));
  $("lag-part").hidden = frame.engine.kafka_lag == null;
  setText("kafka-lag", count(frame.engine.kafka_lag));
  setText("decisions-rate", rate(frame.decisions.rate));
  setText("decisions-total", count(frame.decisions.total));
  replaceChart("events-spark", sparkline(frame.series.events, 160, 32));
  replaceChart("decisions-spark", sparkline(frame.series.decisions, 160, 32));
  setText("latency-p50", seconds(frame.latency.p50));
  setText("latency-p95", seconds(frame.latency.p95));
  setText("latency-p99", seconds(frame.latency.p99));
  setText("latency-count", count(frame.latency.count));
  setText("dead-letters-total", count(frame.dead_letters.total));
  setText("dead-letters-rate", rate(frame.dead_letters.rate));
  const api = Object.fromEntries(frame.api_events.map((r) => [r.result, r]));
  setText("api-accepted-rate", rate(api.accepted ? api.accepted.rate : 0));
  setText("api-accepted", count(api.accepted ? api.accepted.total : 0));
  setText("api-rejected", count(api.rejected ? api.rejected.total : 0));
  setText("api-failed", count(api.failed ? api.failed.total : 0));
  setText("model-auc", frame.model.roc_auc == null ? "–" : frame.model.roc_auc.toFixed(3));
  setText("model-outcomes", count(frame.model.outcomes));

  fillTable("channels-table", frame.decisions.by_channel, (r) => [r.channel, rate(r.rate), count(r.total)], "channel-row");
  fillTable(
    "audiences-table",
    frame.audiences,
    (r) => [r.id, count(r.size), count(r.entered), count(r.exited), sparkline(r.history, 90, 20)],
    "audience-row",
  );
  fillTable("dead-letters-table", frame.dead_letters.by_reason, (r) => [r.reason, rate(r.rate), count(r.total)], "dead-letter-row");
  fillTable("suppressions-table", frame.suppressions.by_reason, (r) => [r.reason, count(r.total)], "suppression-row");
  fillTable(
    "experiments-table",
    frame.experiments,
    (r) => [r.experiment, r.arm, count(r.exposed), count(r.conversions), percent(r.rate), percent(r.lift, true)],
    "experiment-row",
  );
  replaceChart("reliability", reliabilityChart(frame.model.reliability));

  $("webhooks-panel").hidden = !frame.webhooks.length;
  fillTable(
    "webhooks-table",
    frame.webhooks,
    (r) => [r.destination, count(r.delivered), rate(r.rate), count(r.dead_lettered), count(r.failed_attempts), count(r.pending)],
    "webhook-row",
  );

  const sources = $("sources");
  sources.hidden = !frame.sources.length;
  sources.textContent = frame.sources.length
    ? "engines: " + frame.sources.map((s) => (s.up ? "✓ " : "✗ ") + s.source + (s.error ? " (" + s.error + ")" : "")).join(" · ")
    : "";
  sources.classList.toggle("error", frame.sources.some((s) => !s.up));
}

// ---- start

document.addEventListener("DOMContentLoaded", () => {
  takeKeyFromFragment();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("key-input").value = "";
    attempt = 0;
    setStatus("connecting");
    connect();
  });
  $("forget-key").addEventListener("click", forgetKey);
  window.addEventListener("hashchange", () => {
    const before = currentKey();
    takeKeyFromFragment();
    if (currentKey() !== before) connect();
  });
  connect();
});
