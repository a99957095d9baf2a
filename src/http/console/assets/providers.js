// Providers: every target's circuit breaker (/console/api/breakers, the admin
// API's), its attempts by outcome since start (the gateway's counters), the failed
// attempts among the audit trail's latest calls, and a reset for an open breaker.
// Refreshes every 5 s; the failed attempts (a read of 200 audit rows) every 30 s.
"use strict";
(function () {
  const root = document.getElementById("providers");
  if (!root) return;
  const { element, errorLine, call } = window.ragway;
  const text = root.dataset;
  const fail = errorLine(document.getElementById("providers-error"));
  const names = { closed: text.closed, half_open: text.halfOpen, open: text.open };
  const cell = (value, className) => element("td", value, className);

  async function reset(target) {
    const path = `/console/api/breakers/${encodeURIComponent(target)}/reset`;
    if (await call("POST", path, { csrf: text.csrf, fail })) load();
  }

  let loads = 0;
  async function load() {
    const readAudit = loads++ % 6 === 0;
    // Both reads' errors are shown; the audit read is quiet (a gateway without an
    // audit trail has no errors to list).
    const failures = [];
    const note = (message) => { if (message) failures.push(message); };
    const [breakers, overview, errors] = await Promise.all([
      call("GET", "/console/api/breakers", { fail: note }),
      call("GET", "/console/api/overview", { fail: note }),
      readAudit ? call("GET", "/console/api/audit?limit=200") : null,
    ]);
    fail(failures.join("; "));
    if (!breakers || !overview) return;
    const attempts = {};
    for (const s of overview.metrics.ragway_upstream_attempts_total || []) {
      const t = (attempts[s.labels.target] = attempts[s.labels.target] || {});
      t[s.labels.outcome] = (t[s.labels.outcome] || 0) + s.value;
    }
    document.querySelector("#provider-table tbody").replaceChildren(...breakers.breakers.map((b) => {
      const tr = document.createElement("tr");
      tr.dataset.target = b.target;
      const counts = Object.entries(attempts[b.target] || {}).map(([o, n]) => `${o} ${n}`).join(", ");
      const actions = cell("");
      if (b.state !== "closed") {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "reset";
        button.textContent = text.reset;
        button.addEventListener("click", () => reset(b.target));
        actions.append(button);
      }
      tr.append(
        cell(b.target),
        cell(names[b.state] || b.state, `state-${b.state.replace("_", "-")}`),
        cell(b.consecutive_failures),
        cell(b.retry_in_secs ? `${Math.ceil(b.retry_in_secs)} s` : ""),
        cell(counts),
        cell(b.in_flight),
        actions,
      );
      return tr;
    }));
    if (!readAudit) return;
    // Every failed attempt of the latest 200 calls, a call that failed over included.
    const failed = [];
    for (const r of (errors && errors.data) || []) {
      for (const a of r.attempts || []) {
        if (a.outcome !== "ok") failed.push({ at: r.at, request_id: r.request_id, ...a });
      }
    }
    const rows = failed.slice(0, 20);
    const body = document.querySelector("#recent-errors tbody");
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell(text.none);
      td.colSpan = 5;
      tr.append(td);
      body.replaceChildren(tr);
    } else {
      body.replaceChildren(...rows.map((a) => {
        const tr = document.createElement("tr");
        tr.append(cell(a.at), cell(a.target), cell(a.request_id), cell(a.http_status), cell(a.error || a.outcome));
        return tr;
      }));
    }
  }

  load();
  setInterval(load, 5000);
})();
