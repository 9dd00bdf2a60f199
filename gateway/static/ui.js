// Konsilium's status page: polls GET /admin/status every second and explains routes through
// POST /admin/route. Vanilla JavaScript, no dependency; every value reaches the page through
// textContent, never as HTML.
"use strict";

(() => {
  const POLL_MS = 1000;
  const KEY_ITEM = "konsilium-admin-key";
  const PALETTE = ["#1f6feb", "#8250df", "#1a7f37", "#bf3989", "#9a6700", "#0a7ea4", "#cf222e", "#57606a"];
  const $ = (id) => document.getElementById(id);
  let key = sessionStorage.getItem(KEY_ITEM) || "";

  function node(tag, text, className) {
    const element = document.createElement(tag);
    if (text !== undefined && text !== null) element.textContent = String(text);
    if (className) element.className = className;
    return element;
  }

  function badge(text, kind) {
    return node("span", text, `badge ${kind}-${text}`);
  }

  function cell(row, content, className) {
    const td = node("td", undefined, className);
    if (content instanceof Node) td.append(content);
    else td.textContent = content === null || content === undefined || content === "" ? "—" : String(content);
    row.append(td);
    return td;
  }

  function request(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (key) headers.authorization = `Bearer ${key}`;
    return fetch(path, { ...options, headers, cache: "no-store" });
  }

  function clock(seconds) {
    return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
  }

  function ago(seconds) {
    if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    return `${(seconds / 3600).toFixed(1)} h ago`;
  }

  function live(state, text) {
    const element = $("live");
    element.dataset.live = state;
    element.textContent = text;
  }

  // ---- models ------------------------------------------------------------------------------
  function renderModels(status) {
    const rows = status.models.map((m) => {
      const row = node("tr");
      row.dataset.model = m.id;
      cell(row, node("code", m.id)).title = m.revision ? `revision ${m.revision}` : "";
      cell(row, badge(m.state, "state"), "state").title = m.detail || "";
      cell(row, m.backend);
      cell(row, m.role);
      cell(row, m.load);
      cell(row, `${m.in_flight} / ${m.max_concurrency}`, "num in-flight");
      cell(row, m.queued, "num queued");
      const measured = m.measured_mb === null ? "" : ` (measured ${m.measured_mb})`;
      cell(row, m.reserved_mb ? `${m.reserved_mb}${measured}` : `est. ${m.estimated_mb ?? "?"}`, "num");
      cell(row, m.ttft_ms, "num");
      cell(row, badge(m.breaker, "breaker"), "breaker");
      cell(row, m.loads, "num");
      const used = m.last_used === null ? null : ago(status.time - Date.parse(m.last_used) / 1000);
      cell(row, used);
      return row;
    });
    $("models").tBodies[0].replaceChildren(...rows);
  }

  // ---- memory ------------------------------------------------------------------------------
  function renderBudget(status) {
    const budget = status.budget;
    const total = Math.max(budget.total_mb, 1);
    const bar = $("budget-bar");
    const legend = $("budget-legend");
    const parts = Object.entries(budget.models).map(([id, mb], i) => [id, mb, PALETTE[i % PALETTE.length]]);
    const segments = parts.map(([id, mb, colour]) => {
      const span = node("span");
      span.style.width = `${(100 * mb) / total}%`;
      span.style.background = colour;
      span.title = `${id}: ${mb} MB`;
      return span;
    });
    const items = parts.map(([id, mb, colour]) => {
      const item = node("li");
      const swatch = node("span", undefined, "swatch");
      swatch.style.background = colour;
      item.append(swatch, `${id} ${mb} MB`);
      return item;
    });
    if (budget.foreign_mb > 0) {
      const foreign = node("span", undefined, "foreign");
      foreign.style.width = `${(100 * budget.foreign_mb) / total}%`;
      foreign.title = `other processes: ${budget.foreign_mb} MB`;
      segments.push(foreign);
      items.push(node("li", `other processes ${budget.foreign_mb} MB`));
    }
    bar.replaceChildren(...segments);
    legend.replaceChildren(...items);
    const where = budget.device ? `${budget.device}, ` : "";
    $("budget-text").textContent =
      `${budget.used_mb} MB reserved of ${budget.total_mb} MB (${where}${budget.source}); ${budget.free_mb} MB free`;
  }

  // ---- recent requests ---------------------------------------------------------------------
  function renderRecent(status) {
    const table = $("recent");
    table.classList.toggle("with-content", status.record_content);
    const rows = status.recent.map((r) => {
      const row = node("tr");
      row.dataset.requestId = r.request_id;
      cell(row, clock(r.time)).title = new Date(r.time * 1000).toISOString();
      const path = cell(row, node("code", r.path), "path");
      if (r.stream) path.append(" ", node("span", "stream", "muted"));
      cell(row, r.role, "role");
      cell(row, r.model, "model");
      cell(row, r.route, "route");
      cell(row, r.fallbacks.join(", "), "fallbacks");
      cell(row, r.ttft_ms, "num ttft");
      cell(row, `${r.prompt_tokens} → ${r.completion_tokens}`, "num tokens");
      const ok = r.status < 400;
      cell(row, node("span", r.status, ok ? "status-ok" : "status-error"), "num status").title = r.error;
      cell(row, r.duration_ms, "num");
      cell(row, r.prompt ?? "", "content prompt");
      cell(row, r.answer ?? "", "content answer");
      return row;
    });
    table.tBodies[0].replaceChildren(...rows);
    $("recent-empty").hidden = rows.length > 0;
    $("recent-count").textContent = rows.length ? `(last ${rows.length})` : "";
  }

  // ---- polling -----------------------------------------------------------------------------
  function askForKey(message) {
    $("key").hidden = false;
    $("key-why").textContent = message;
  }

  async function poll() {
    try {
      const response = await request("/admin/status");
      const body = await response.json();
      if (!response.ok) {
        const message = body.error ? body.error.message : `HTTP ${response.status}`;
        if (response.status === 401 || (response.status === 403 && message.includes("admin key"))) askForKey(message);
        live("down", message);
        return;
      }
      renderModels(body);
      renderBudget(body);
      renderRecent(body);
      $("uptime").textContent = `up ${ago(body.time - body.started).replace(" ago", "")}`;
      live("ok", `live · ${clock(body.time)}`);
    } catch (error) {
      live("down", `gateway unreachable (${error.message})`);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  // ---- route explain -----------------------------------------------------------------------
  function explainBody() {
    const text = $("explain-prompt").value;
    if (text.trim().startsWith("{")) return JSON.parse(text);
    return { model: $("explain-model").value.trim() || "auto", messages: [{ role: "user", content: text }] };
  }

  function decisionRow(seat, d) {
    const row = node("tr");
    cell(row, seat);
    cell(row, d.role, "role");
    cell(row, `${d.source} (margin ${d.margin})`);
    cell(row, d.language);
    cell(row, d.matched.join(", "));
    cell(row, d.target.model ? (d.target.adapter ? `${d.target.model} + ${d.target.adapter}` : d.target.model) : "", "target");
    cell(row, d.fallbacks.join(", "));
    cell(row, d.skipped.map((s) => `${s.target}: ${s.why}`).join("; "));
    cell(row, d.reason, "reason");
    return row;
  }

  function renderDecision(answer) {
    const table = node("table", undefined, "decision");
    const head = node("tr");
    for (const name of ["seat", "role", "decided by", "language", "matched", "target", "fallbacks", "skipped", "reason"]) {
      head.append(node("th", name));
    }
    table.createTHead().append(head);
    const body = table.createTBody();
    if (answer.council) {
      for (const agent of answer.agents) body.append(decisionRow(agent.seat, agent));
      body.append(decisionRow(answer.director.seat, answer.director));
    } else {
      body.append(decisionRow("", answer));
    }
    const raw = node("details");
    raw.append(node("summary", "JSON"), node("pre", JSON.stringify(answer, null, 2)));
    return [table, raw];
  }

  async function explain(event) {
    event.preventDefault();
    const result = $("explain-result");
    const button = $("explain-button");
    let body;
    try {
      body = explainBody();
    } catch (error) {
      result.replaceChildren(node("p", `Not valid JSON: ${error.message}`, "error"));
      return;
    }
    button.disabled = true;
    try {
      const response = await request("/admin/route", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const answer = await response.json();
      if (response.ok) result.replaceChildren(...renderDecision(answer));
      else result.replaceChildren(node("p", answer.error ? answer.error.message : `HTTP ${response.status}`, "error"));
    } catch (error) {
      result.replaceChildren(node("p", `gateway unreachable (${error.message})`, "error"));
    } finally {
      button.disabled = false;
    }
  }

  function useKey(event) {
    event.preventDefault();
    key = $("key-input").value.trim();
    sessionStorage.setItem(KEY_ITEM, key);
    $("key").hidden = true;
  }

  $("explain-form").addEventListener("submit", explain);
  $("key-form").addEventListener("submit", useKey);
  poll();
})();
