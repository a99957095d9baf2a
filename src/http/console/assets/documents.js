// Documents: a tenant's documents per collection (the admin names the tenant),
// uploaded by dropping files or choosing them (each with its progress), listed,
// deleted; and "ask": the passages a question finds, with the scores grounding
// chooses by. Everything goes through /v1/documents' and /v1/search's own
// handlers under /console/api/.
"use strict";
(function () {
  const root = document.getElementById("documents");
  if (!root) return;
  const { element, errorLine, message, call } = window.ragway;
  const text = root.dataset;
  const admin = text.admin === "true";
  const fail = errorLine(document.getElementById("documents-error"));
  const scope = document.getElementById("documents-scope");
  let documents = [];
  // The tenant whose documents are shown (the admin's choice when it pressed Show):
  // every action acts on it, whatever the box holds since.
  let shown = null;

  function typedTenant() {
    return admin ? String(new FormData(scope).get("tenant") || "").trim() : "";
  }

  function collection() {
    return String(new FormData(scope).get("collection") || "");
  }

  // `tenant=` for the admin (who must name one), nothing for a client key.
  function tenantQuery() {
    return admin ? `tenant=${encodeURIComponent(shown)}` : "";
  }

  function ready() {
    if (admin && !shown) { fail(text.nameTenant); return false; }
    return true;
  }

  function collections() {
    const select = scope.querySelector("select[name=collection]");
    const chosen = select.value;
    const names = [...new Set(documents.map((d) => d.collection))].sort();
    const all = element("option", text.all);
    all.value = "";
    select.replaceChildren(all, ...names.map((name) => element("option", name)));
    select.value = names.includes(chosen) ? chosen : "";
  }

  function render() {
    const shown = documents.filter((d) => !collection() || d.collection === collection());
    document.getElementById("documents-count").textContent = String(shown.length);
    const body = document.querySelector("#documents-table tbody");
    if (!shown.length) {
      const row = element("tr");
      const cell = element("td", text.none);
      cell.colSpan = 6;
      row.append(cell);
      body.replaceChildren(row);
      return;
    }
    body.replaceChildren(...shown.map((doc) => {
      const row = element("tr");
      row.dataset.id = doc.id;
      const remove = element("button", text.delete, "danger");
      remove.type = "button";
      remove.addEventListener("click", () => removeDocument(doc.id));
      const actions = element("td");
      actions.append(remove);
      const at = doc.ingested_at ? new Date(doc.ingested_at * 1000).toISOString().slice(0, 19).replace("T", " ") : "";
      row.append(element("td", doc.id), element("td", doc.title), element("td", doc.collection),
        element("td", doc.chunks), element("td", at), actions);
      return row;
    }));
  }

  async function load() {
    if (!ready()) return;
    const q = tenantQuery();
    const answer = await call("GET", `/console/api/documents${q ? "?" + q : ""}`, { fail });
    if (!answer) return;
    documents = answer.data;
    collections();
    render();
  }

  async function removeDocument(id) {
    if (!window.confirm(`${text.confirmDelete}\n${id}`)) return;
    // In the query: a path would lose an id's `..` segments on the way.
    const q = tenantQuery();
    const done = await call("DELETE", `/console/api/documents?id=${encodeURIComponent(id)}${q ? "&" + q : ""}`, { csrf: text.csrf, fail });
    if (done) load();
  }

  // One file up with its progress; resolves when the gateway has answered.
  function upload(file) {
    const item = element("li");
    const name = element("span", file.name, "file");
    const progress = element("progress");
    progress.max = 1;
    progress.value = 0;
    const status = element("span", "", "status");
    item.append(name, progress, status);
    document.getElementById("uploads").prepend(item);
    const form = new FormData();
    const into = String(new FormData(document.getElementById("upload")).get("collection") || "").trim();
    if (into) form.append("collection", into);
    if (admin) form.append("tenant", shown);
    form.append("file", file, file.name);
    return new Promise((resolve) => {
      const request = new XMLHttpRequest();
      request.open("POST", "/console/api/documents");
      request.setRequestHeader("x-csrf-token", text.csrf);
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) progress.value = event.loaded / event.total;
      });
      request.addEventListener("load", () => {
        progress.value = 1;
        let answer = {};
        try { answer = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
        if (request.status === 201 || request.status === 200) {
          item.className = "done";
          status.textContent = request.status === 201 ? `${text.stored} (${answer.chunks})` : text.unchanged;
        } else {
          if (request.status === 401) { window.location.assign("/console/sign-in"); return; }
          item.className = "failed";
          status.textContent = message(answer, request.status);
        }
        resolve();
      });
      request.addEventListener("error", () => {
        item.className = "failed";
        status.textContent = "network error";
        resolve();
      });
      request.send(form);
    });
  }

  async function uploadAll(files) {
    if (!ready()) return;
    fail("");
    // One at a time: the gateway takes a few documents at once per tenant.
    for (const file of files) await upload(file);
    load();
  }

  const drop = document.getElementById("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    uploadAll([...event.dataTransfer.files]);
  });
  const chooser = document.getElementById("files");
  chooser.addEventListener("change", () => {
    uploadAll([...chooser.files]);
    chooser.value = "";
  });

  function score(label, value) {
    return value === null || value === undefined ? "" : `${label} ${Number(value).toFixed(3)}`;
  }

  document.getElementById("ask").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!ready()) return;
    const question = String(new FormData(event.target).get("question") || "");
    const body = { question, limit: 5 };
    if (collection()) body.collection = collection();
    if (admin) body.tenant = shown;
    const answer = await call("POST", "/console/api/search", { csrf: text.csrf, body, fail });
    if (!answer) return;
    const list = document.getElementById("passages");
    if (!answer.data.length) { list.replaceChildren(element("li", text.noPassages)); return; }
    list.replaceChildren(...answer.data.map((p) => {
      const item = element("li", null, p.relevant ? "relevant" : "irrelevant");
      const head = element("div", null, "passage-head");
      head.append(
        element("b", p.title || p.doc_id),
        element("span", ` ${p.doc_id} #${p.chunk} · ${p.collection}`, "hint"),
        element("span", ` ${score("score", p.score)} ${score("dense", p.dense)} ${score("keyword", p.keyword)}`, "scores"),
        element("span", p.relevant ? text.relevant : text.notRelevant, p.relevant ? "tag ok" : "tag"),
      );
      item.append(head, element("p", p.text, "passage-text"));
      return item;
    }));
  });

  scope.addEventListener("submit", (event) => {
    event.preventDefault();
    if (admin) shown = typedTenant() || null;
    load();
  });
  scope.querySelector("select[name=collection]").addEventListener("change", render);
  if (!admin) load();
})();
