// The overview's live tiles: polls /console/api/overview every 2 s and computes
// rates and latency quantiles from the difference between two snapshots.
"use strict";
(function () {
  const root = document.getElementById("overview");
  if (!root) return;
  const HISTORY = 60;
  const history = {};
  let previous = null;

  const sum = (series, keep) =>
    (series || []).filter((s) => !keep || keep(s.labels)).reduce((a, s) => a + (s.value || 0), 0);
  const isApi = (labels) => (labels.route || "").startsWith("/v1/");

  // Cumulative bucket counts summed over every series of a histogram.
  function buckets(series) {
    const total = new Map();
    for (const s of series || []) {
      if (!isApi(s.labels)) continue;
      for (const [le, count] of s.buckets || []) total.set(le, (total.get(le) || 0) + count);
    }
    return [...total.entries()].sort((a, b) => a[0] - b[0]);
  }

  // The q-quantile (seconds) of the observations between two bucket snapshots.
  function quantile(before, after, q) {
    const delta = after.map(([le, count], i) => [le, count - ((before[i] || [le, 0])[1])]);
    const n = delta.length ? delta[delta.length - 1][1] : 0;
    if (n <= 0) return null;
    const rank = q * n;
    let lower = 0, below = 0;
    for (const [le, count] of delta) {
      if (count >= rank) {
        if (!isFinite(le)) return lower;
        const inside = count - below;
        return inside > 0 ? lower + (le - lower) * ((rank - below) / inside) : le;
      }
      lower = le; below = count;
    }
    return lower;
  }

  function show(metric, value, text) {
    const tile = root.querySelector(`[data-metric="${metric}"]`);
    if (!tile) return;
    tile.querySelector("output").textContent = text;
    const points = (history[metric] = (history[metric] || []).concat([value ?? 0]).slice(-HISTORY));
    const max = Math.max(...points, 1e-9);
    const line = points.map((v, i) => `${(i * 120) / (HISTORY - 1)},${30 - (v / max) * 28}`).join(" ");
    const svg = tile.querySelector("svg");
    let polyline = svg.querySelector("polyline");
    if (!polyline) {
      polyline = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      svg.appendChild(polyline);
    }
    polyline.setAttribute("points", line);
  }

  function rows(table, entries) {
    const body = table.querySelector("tbody");
    body.replaceChildren(...entries.map(([name, value, kind]) => {
      const row = document.createElement("tr");
      const a = document.createElement("td");
      a.textContent = name;
      const b = document.createElement("td");
      b.textContent = value;
      if (kind) b.className = kind;
      row.append(a, b);
      return row;
    }));
  }

  function render(now) {
    const m = now.metrics;
    const errors = {};
    for (const s of m.ragway_requests_total || []) {
      if (!isApi(s.labels)) continue;
      const status = Number(s.labels.status);
      if (status >= 400) errors[status] = (errors[status] || 0) + s.value;
    }
    rows(document.getElementById("errors"), Object.entries(errors).sort());
    const breakers = document.getElementById("breakers");
    const names = ["closed", "halfOpen", "open"];
    rows(breakers, (m.ragway_breaker_state || []).map((s) => {
      const state = names[s.value] || "open";
      return [s.labels.target, breakers.dataset[state], "state-" + state.replace("halfOpen", "half-open")];
    }));
    if (previous) {
      const seconds = Math.max((now.time - previous.time) / 1000, 0.001);
      const p = previous.metrics;
      const requests = sum(m.ragway_requests_total, isApi) - sum(p.ragway_requests_total, isApi);
      const rps = requests / seconds;
      show("rps", rps, rps.toFixed(1));
      const before = buckets(p.ragway_request_duration_seconds);
      const after = buckets(m.ragway_request_duration_seconds);
      for (const [metric, q] of [["p50", 0.5], ["p99", 0.99]]) {
        const s = quantile(before, after, q);
        show(metric, s, s === null ? "–" : `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms`);
      }
      const hit = (l) => l.result === "hit" && l.tier !== "coalesced";
      const looked = (l) => (l.result === "hit" || l.result === "miss") && l.tier !== "coalesced";
      const hits = sum(m.ragway_cache_lookups_total, hit) - sum(p.ragway_cache_lookups_total, hit);
      const lookups = sum(m.ragway_cache_lookups_total, looked) - sum(p.ragway_cache_lookups_total, looked);
      show("cache", lookups ? hits / lookups : 0, lookups ? `${Math.round((100 * hits) / lookups)} %` : "–");
      const local = new Set(now.local_targets);
      const isLocal = (l) => local.has(l.target);
      const attempts = sum(m.ragway_upstream_attempts_total) - sum(p.ragway_upstream_attempts_total);
      const localAttempts = sum(m.ragway_upstream_attempts_total, isLocal) - sum(p.ragway_upstream_attempts_total, isLocal);
      show("local", attempts ? localAttempts / attempts : 0, attempts ? `${Math.round((100 * localAttempts) / attempts)} %` : "–");
      const failovers = sum(m.ragway_failovers_total) - sum(p.ragway_failovers_total);
      show("failovers", failovers, String(sum(m.ragway_failovers_total)));
    }
    previous = now;
  }

  async function poll() {
    try {
      const response = await fetch("/console/api/overview", { credentials: "same-origin" });
      if (response.status === 401) { window.location.assign("/console/sign-in"); return; }
      if (response.ok) render(await response.json());
    } catch (_) { /* the next poll tries again */ }
    setTimeout(poll, 2000);
  }
  poll();
})();
