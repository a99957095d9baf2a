// The playground: a conversation with any alias the signed-in key may use,
// through the whole pipeline (/v1/chat/completions' own handler under
// /console/api/chat), streamed as it arrives. Under each answer: the target that
// served it, the cache's result, the attempts, its citations, and which personal
// data the gateway replaced before the provider saw it (from the call's audit row:
// the counts and the question as sent, sanitised).
"use strict";
(function () {
  const root = document.getElementById("playground");
  const settings = document.getElementById("chat-settings");
  if (!root || !settings) return;
  const { element, errorLine, message, call } = window.ragway;
  const text = root.dataset;
  const admin = text.admin === "true";
  const fail = errorLine(document.getElementById("playground-error"));
  const conversation = document.getElementById("conversation");
  const input = document.getElementById("chat-input");
  const send = document.getElementById("send");
  const stop = document.getElementById("stop");
  let messages = [];
  let running = null;
  // Counts conversations, so that an answer cut off by "new conversation" stays
  // out of the next one.
  let conversationNo = 0;

  function chosen(name) {
    return new FormData(settings).get(name);
  }

  function turn(role, content) {
    const item = element("li", null, `turn ${role}`);
    const body = element("div", content, "content");
    item.append(body);
    conversation.append(item);
    return { item, body };
  }

  // Parses server-sent events from a fetch body, calling `onEvent` with each
  // `data:` payload.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (data) onEvent(data);
      }
    }
  }

  function meta(answer, response) {
    const line = element("div", null, "meta");
    const id = response.headers.get("x-request-id") || "";
    for (const [label, value, className] of [
      [text.target, response.headers.get("x-ragway-target"), "served-by"],
      [text.cache, response.headers.get("x-ragway-cache"), "cache-result"],
      [text.attempts, response.headers.get("x-ragway-attempts"), ""],
      [text.requestId, id, "request-id"],
    ]) {
      if (!value) continue;
      const part = element("span", `${label}: `);
      part.append(element("b", value, className));
      line.append(part);
    }
    answer.item.append(line);
    return id;
  }

  function citations(answer, list) {
    if (!list || !list.length) return;
    const box = element("div", null, "citations");
    box.append(element("span", `${text.citations}: `));
    const ol = element("ol");
    for (const c of list) {
      ol.append(element("li", `${c.title || c.doc_id} (${c.doc_id} #${c.chunk}, ${Number(c.score).toFixed(2)})`));
    }
    box.append(ol);
    answer.item.append(box);
  }

  function usage(answer, used) {
    if (!used) return;
    answer.item.append(element("div", `${text.usage}: ${used.prompt_tokens} + ${used.completion_tokens}`, "usage"));
  }

  // JSON text or JSON, as an audit row holds it.
  function parsed(value) {
    if (typeof value !== "string") return value;
    try { return JSON.parse(value); } catch (_) { return value; }
  }

  // Which personal data was replaced: the call's audit row, once it is written.
  async function replaced(answer, requestId) {
    const box = element("div", "…", "pii");
    answer.item.append(box);
    for (let i = 0; i < 20; i++) {
      const found = await call("GET", `/console/api/audit?request_id=${encodeURIComponent(requestId)}&limit=1`, {});
      if (!found) { box.textContent = text.noAudit; return; }
      if (found.data.length) {
        const row = found.data[0];
        const pii = parsed(row.pii) || {};
        const counts = Array.isArray(pii) ? pii : Object.entries(pii);
        box.textContent = counts.length
          ? `${text.pii}: ${counts.map(([kind, n]) => `${kind} × ${n}`).join(", ")}`
          : text.noPii;
        const prompt = parsed(row.prompt);
        const asked = Array.isArray(prompt) ? prompt.filter((m) => m.role === "user").pop() : null;
        if (counts.length && asked && typeof asked.content === "string") {
          const sent = element("div", `${text.sentAs}: `, "sent-as");
          sent.append(element("code", asked.content));
          box.append(sent);
        }
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    box.textContent = text.noAudit;
  }

  async function ask(content) {
    const model = chosen("model");
    const stream = chosen("stream") === "on";
    const tenant = admin ? String(chosen("tenant") || "").trim() : "";
    if (admin && !tenant) { fail(text.nameTenant); return; }
    fail("");
    messages.push({ role: "user", content });
    turn("user", content);
    const answer = turn("assistant", "");
    answer.item.classList.add("pending");
    const headers = { "content-type": "application/json", "x-csrf-token": text.csrf };
    if (chosen("rag")) headers["x-ragway-rag"] = chosen("rag");
    const body = { model, messages, stream };
    const mine = conversationNo;
    const keep = (reply) => {
      if (mine !== conversationNo) return;
      if (reply === null) messages.pop(); else messages.push({ role: "assistant", content: reply });
    };
    // The cache keeps answers given at temperature 0 (or with a seed) by default.
    const temperature = String(chosen("temperature") || "").trim();
    if (temperature) body.temperature = Number(temperature);
    if (stream) body.stream_options = { include_usage: true };
    running = new AbortController();
    send.disabled = true;
    stop.hidden = false;
    let written = "";
    try {
      const response = await fetch(`/console/api/chat${admin ? "?tenant=" + encodeURIComponent(tenant) : ""}`, {
        method: "POST", credentials: "same-origin", headers, body: JSON.stringify(body), signal: running.signal,
      });
      if (response.status === 401) { window.location.assign("/console/sign-in"); return; }
      if (!response.ok) {
        const error = await response.json().catch(() => ({}));
        answer.item.classList.add("failed");
        answer.body.textContent = message(error, response.status);
        keep(null);
        return;
      }
      const requestId = meta(answer, response);
      let cited = null, used = null, cut = false;
      if (stream) {
        await readEvents(response, (data) => {
          if (data === "[DONE]") return;
          let chunk;
          try { chunk = JSON.parse(data); } catch (_) { return; }
          if (chunk.error) { cut = true; answer.item.classList.add("failed"); answer.body.textContent = written + "\n" + message(chunk, ""); return; }
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) { written += delta.content; answer.body.textContent = written; }
          if (chunk.ragway && chunk.ragway.citations) cited = chunk.ragway.citations;
          if (chunk.usage) used = chunk.usage;
        });
      } else {
        const whole = await response.json();
        written = (whole.choices && whole.choices[0] && whole.choices[0].message.content) || "";
        answer.body.textContent = written;
        cited = whole.ragway && whole.ragway.citations;
        used = whole.usage;
      }
      // A cut answer is shown but not sent back as said: the user asks again.
      keep(cut ? null : written);
      citations(answer, cited);
      usage(answer, used);
      if (!cut) answer.item.classList.add("done");
      if (requestId) replaced(answer, requestId);
    } catch (error) {
      answer.item.classList.add("failed");
      answer.body.textContent = `${written}\n${error.name === "AbortError" ? text.stopped : String(error)}`;
      keep(null);
    } finally {
      answer.item.classList.remove("pending");
      running = null;
      send.disabled = false;
      stop.hidden = true;
    }
  }

  input.addEventListener("submit", (event) => {
    event.preventDefault();
    const box = input.querySelector("textarea");
    const content = box.value.trim();
    if (!content || running) return;
    box.value = "";
    ask(content);
  });
  input.querySelector("textarea").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) input.requestSubmit();
  });
  stop.addEventListener("click", () => { if (running) running.abort(); });
  document.getElementById("new-conversation").addEventListener("click", () => {
    if (running) running.abort();
    conversationNo += 1;
    messages = [];
    conversation.replaceChildren();
  });
})();
