// Usage and spend: /console/api/usage's sums (the admin API's), grouped by tenant,
// key, model alias or target over a period, with each group's share of the cost and
// its tokens per currency unit; the same as CSV.
"use strict";
(function () {
  const root = document.getElementById("usage");
  if (!root) return;
  const { element, errorLine, call } = window.ragway;
  const text = root.dataset;
  const form = document.getElementById("usage-search");
  const fail = errorLine(document.getElementById("usage-error"));
  const cell = (value, className) => element("td", value, className);

  function query() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (String(value).trim() !== "") params.set(name, String(value).trim());
    }
    return params.toString();
  }

  const money = (n, currency) => `${n.toFixed(4)} ${currency || ""}`.trim();
  const perUnit = (tokens, cost) => {
    if (!(cost > 0)) return "–";
    const ratio = tokens / cost;
    return ratio < 10 ? ratio.toFixed(2) : Math.round(ratio).toLocaleString();
  };

  async function load() {
    const q = query();
    document.getElementById("usage-csv").href = `/console/api/usage.csv?${q}`;
    const answer = await call("GET", `/console/api/usage?${q}`, { fail });
    if (!answer) return;
    const rows = answer.data || [];
    const total = rows.reduce((t, r) => ({
      requests: t.requests + r.requests,
      prompt: t.prompt + r.prompt_tokens,
      cached: t.cached + r.cached_tokens,
      completion: t.completion + r.completion_tokens,
      cost: t.cost + r.cost,
    }), { requests: 0, prompt: 0, cached: 0, completion: 0, cost: 0 });
    const currency = rows.length ? rows[0].currency : "";
    const body = document.querySelector("#usage-table tbody");
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell(text.none);
      td.colSpan = 8;
      tr.append(td);
      body.replaceChildren(tr);
    } else {
      body.replaceChildren(...rows.map((r) => {
        const tr = document.createElement("tr");
        const share = document.createElement("td");
        const meter = document.createElement("meter");
        meter.min = 0; meter.max = 1;
        meter.value = total.cost > 0 ? r.cost / total.cost : 0;
        share.append(meter);
        tr.append(
          cell(r.group === null ? text.unnamed : r.group), cell(r.requests), cell(r.prompt_tokens),
          cell(r.cached_tokens), cell(r.completion_tokens), cell(money(r.cost, r.currency), "cost"),
          share, cell(perUnit(r.prompt_tokens + r.completion_tokens, r.cost)),
        );
        return tr;
      }));
    }
    const foot = document.createElement("tr");
    foot.append(
      cell(text.total), cell(total.requests), cell(total.prompt), cell(total.cached),
      cell(total.completion), cell(money(total.cost, currency), "cost"), cell(""),
      cell(perUnit(total.prompt + total.completion, total.cost)),
    );
    document.querySelector("#usage-table tfoot").replaceChildren(foot);
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
  form.addEventListener("change", () => load());
  load();
})();
