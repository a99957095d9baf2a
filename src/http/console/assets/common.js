// What every page script of the console shares: elements, the error line, and
// calls to the console's API (a change carries the page's CSRF token; a lost
// session goes back to the sign-in page).
"use strict";
window.ragway = (function () {
  function element(tag, content, className) {
    const node = document.createElement(tag);
    if (content !== undefined && content !== null) node.textContent = String(content);
    if (className) node.className = className;
    return node;
  }

  // A function that shows a message in `box` (and hides it for "").
  function errorLine(box) {
    return (message) => {
      box.textContent = message;
      box.hidden = !message;
    };
  }

  // The message of an OpenAI-shaped error answer.
  function message(answer, status) {
    return (answer && answer.error && answer.error.message) || `HTTP ${status}`;
  }

  // A JSON call to the console's API: its answer, or null after showing why
  // through `fail`.
  async function call(method, path, { csrf, body, fail } = {}) {
    const headers = {};
    if (csrf) headers["x-csrf-token"] = csrf;
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) { window.location.assign("/console/sign-in"); return null; }
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      if (fail) fail(message(answer, response.status));
      return null;
    }
    if (fail) fail("");
    return answer;
  }

  return { element, errorLine, message, call };
})();
