// The audit page: searches /console/api/audit (the admin API's search; a client
// key's session sees its own tenant), shows a row whole on a click (attempts,
// citations, personal-data counts: text only as stored, sanitised), exports the
// same search as CSV, and, for the admin, verifies the hash chains.
"use strict";
(function () {
  const root = document.getElementById("audit");
  if (!root) return;
  const { element, errorLine, call } = window.ragway;
  const text = root.dataset;
  const fail = errorLine(document.getElementById("audit-error"));
  const search = document.getElementById("audit-search");
  const cell = (value) => element("td", value);

  // The search form's fields that are filled, as a query string.
  function query() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(search)) {
      if (String(value).trim() !== "") params.set(name, String(value).trim());
    }
    return params.toString();
  }

  function show(row) {
    document.getElementById("audit-row-id").textContent = row.request_id;
    document.getElementById("audit-row-body").textContent = JSON.stringify(row, null, 2);
    document.getElementById("audit-row").hidden = false;
  }

  async function load() {
    const q = query();
    document.getElementById("audit-csv").href = `/console/api/audit.csv${q ? "?" + q : ""}`;
    const answer = await call("GET", `/console/api/audit${q ? "?" + q : ""}`, { fail });
    if (!answer) return;
    const body = document.querySelector("#audit-table tbody");
    if (!answer.data.length) {
      const empty = document.createElement("tr");
      const td = cell(text.none);
      td.colSpan = 10;
      empty.append(td);
      body.replaceChildren(empty);
      return;
    }
    body.replaceChildren(...answer.data.map((row) => {
      const tr = document.createElement("tr");
      tr.className = "clickable";
      tr.dataset.requestId = row.request_id;
      const tokens = (row.prompt_tokens || 0) + (row.completion_tokens || 0);
      tr.append(
        cell(row.at), cell(row.request_id), cell(row.tenant), cell(row.client_key),
        cell(row.route), cell(row.alias), cell(row.outcome), cell(row.status),
        cell(tokens || ""), cell(row.latency_us ? `${Math.round(row.latency_us / 1000)} ms` : ""),
      );
      tr.addEventListener("click", () => show(row));
      return tr;
    }));
  }

  search.addEventListener("submit", (event) => { event.preventDefault(); load(); });

  const verify = document.getElementById("audit-verify");
  if (verify) {
    verify.addEventListener("submit", async (event) => {
      event.preventDefault();
      const output = document.getElementById("verify-result");
      output.textContent = "…";
      const since = new FormData(verify).get("since").trim();
      const answer = await call("POST", "/console/api/audit/verify", { csrf: text.csrf, body: since ? { since } : {}, fail });
      if (!answer) { output.textContent = ""; return; }
      output.className = answer.ok ? "state-closed" : "state-open";
      output.textContent = `${answer.ok ? text.chainOk : text.chainBad} ` +
        answer.chains.map((c) => c.report).join("; ");
    });
  }
  load();
})();
