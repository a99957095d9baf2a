// Keys and tenants: lists them from /console/api/keys with each budget as it
// stands; the admin creates (the key shown once, with a copy button), rotates and
// revokes keys through the admin API's own handlers under /console/api/.
"use strict";
(function () {
  const root = document.getElementById("keys");
  if (!root) return;
  const { element, errorLine, call } = window.ragway;
  const text = root.dataset;
  const admin = text.admin === "true";
  const fail = errorLine(document.getElementById("keys-error"));

  // A change through the console's API, with the page's CSRF token.
  const change = (method, path, body) => call(method, path, { csrf: text.csrf, body, fail });

  const periods = { day: text.perDay, week: text.perWeek, month: text.perMonth };

  // A budget as it stands: a meter and "spent of amount currency per period".
  function budget(standing) {
    const cell = element("td");
    if (!standing || !standing.budget) { cell.textContent = text.none; return cell; }
    const b = standing.budget;
    const meter = element("meter");
    meter.min = 0;
    meter.max = b.amount || 1;
    meter.low = 0.8 * (b.amount || 1);
    meter.high = 0.95 * (b.amount || 1);
    meter.optimum = 0;
    meter.value = Math.min(b.spent, b.amount || b.spent);
    const figures = element(
      "span",
      ` ${b.spent.toFixed(4)} ${text.spentOf} ${b.amount} ${b.currency} ${periods[b.period] || b.period}`,
    );
    cell.append(meter, figures);
    cell.dataset.spent = b.spent;
    return cell;
  }

  function showKey(key) {
    const box = document.getElementById("shown-key");
    document.getElementById("new-key-value").textContent = key;
    box.hidden = false;
  }

  function keyRow(key) {
    const row = element("tr");
    row.dataset.id = key.id;
    const scope = (name) => (key.standing || []).find((s) => s.scope === name);
    row.append(
      element("td", key.name || key.id),
      element("td", key.tenant),
      element("td", key.status, `status-${key.status}`),
      budget(scope("key")),
      budget(scope("tenant")),
    );
    if (admin) {
      const actions = element("td");
      if (key.status === "active") {
        const rotate = element("button", text.rotate);
        rotate.type = "button";
        rotate.className = "rotate";
        rotate.addEventListener("click", async () => {
          const answer = await change("POST", `/console/api/keys/${encodeURIComponent(key.id)}/rotate`);
          if (answer) { showKey(answer.key); load(); }
        });
        const revoke = element("button", text.revoke, "revoke danger");
        revoke.type = "button";
        revoke.addEventListener("click", async () => {
          if (!window.confirm(text.confirmRevoke)) return;
          if (await change("DELETE", `/console/api/keys/${encodeURIComponent(key.id)}`)) load();
        });
        actions.append(rotate, " ", revoke);
      }
      row.append(actions);
    }
    return row;
  }

  function limits(l) {
    return Object.entries(l || {}).map(([k, v]) => `${k} ${v}`).join(", ") || text.none;
  }

  async function load() {
    const answer = await call("GET", "/console/api/keys", { fail });
    if (!answer) return;
    const note = document.getElementById("keys-note");
    note.hidden = answer.managed;
    note.textContent = answer.managed ? "" : text.unmanaged;
    document.querySelector("#key-table tbody").replaceChildren(...answer.keys.map(keyRow));
    document.querySelector("#tenant-table tbody").replaceChildren(...answer.tenants.map((t) => {
      const row = element("tr");
      const b = t.budget;
      row.append(
        element("td", t.tenant),
        element("td", limits(t.limits)),
        element("td", b ? `${b.amount} ${periods[b.period] || b.period}` : text.none),
      );
      return row;
    }));
  }

  const form = document.getElementById("new-key");
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const body = { tenant: data.get("tenant").trim() };
      if (data.get("name").trim()) body.name = data.get("name").trim();
      if (data.get("budget") !== "") body.budget = { amount: Number(data.get("budget")), period: data.get("period") };
      if (data.get("rpm") !== "") body.limits = { rpm: Number(data.get("rpm")) };
      const answer = await change("POST", "/console/api/keys", body);
      if (answer) { showKey(answer.key); form.reset(); load(); }
    });
    document.getElementById("copy-key").addEventListener("click", async (event) => {
      const key = document.getElementById("new-key-value").textContent;
      try {
        await navigator.clipboard.writeText(key);
        event.target.textContent = event.target.dataset.copied;
      } catch (_) {
        // No clipboard (an insecure origin): select the key for the user to copy.
        window.getSelection().selectAllChildren(document.getElementById("new-key-value"));
      }
    });
  }
  const tenantForm = document.getElementById("tenant-settings");
  if (tenantForm) {
    tenantForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(tenantForm);
      const body = { limits: {} };
      for (const name of ["rpm", "tpm"]) {
        if (data.get(name) !== "") body.limits[name] = Number(data.get(name));
      }
      if (data.get("budget") !== "") body.budget = { amount: Number(data.get("budget")), period: data.get("period") };
      const tenant = encodeURIComponent(data.get("tenant").trim());
      if (await change("PUT", `/console/api/tenants/${tenant}`, body)) { tenantForm.reset(); load(); }
    });
  }
  load();
})();
