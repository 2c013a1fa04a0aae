// qdeploy dashboard: one page, client-side routes, live updates by polling the JSON API.
// Every value that came from Redis is set with textContent or as an attribute value: never as
// HTML (the server's CSP also forbids inline script). URLs are built on location.origin: a page
// opened with the user and password in its URL cannot fetch a relative URL.
"use strict";

const ORIGIN = location.origin;
const STATES = ["STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "PENDING"];
const FINAL = new Set(["SUCCESS", "FAILURE", "REVOKED"]);
const PAGES = ["tasks", "task", "workers", "queues", "charts", "schedule", "dead", "audit"];
let session = {user: null, csrf: "", actions: false, show_args: false, refresh: 2};
let route = {page: "tasks", id: null};
let timer = null;
let generation = 0;  // a route change makes the answers of older requests moot
let taskPage = {rows: 0, total: 0, page: 1, per_page: 50, exact: true};
let lastChartLoad = 0;
let poll = 0;  // the newest refresh(): only it schedules the next one
let taskSeen = {id: null, at: 0, final: false};  // a finished task's page is read again every 10 s, not every poll

// -- small helpers -------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "onclick") node.addEventListener("click", value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));  // a string becomes a text node
  }
  return node;
}

function $(id) { return document.getElementById(id); }

function pad(n, width) { return String(n).padStart(width || 2, "0"); }

function fmtTime(t) {
  if (typeof t !== "number" || !isFinite(t) || t <= 0) return "-";
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:` +
    `${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function fmtDuration(s) {
  if (typeof s !== "number" || !isFinite(s) || s < 0) return "-";
  if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1000).toPrecision(3) + " ms";
  if (s < 60) return s.toPrecision(3) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
}

function show(value) {
  if (value === null || value === undefined || value === "") return "-";
  if (Array.isArray(value)) return value.map(show).join(", ") || "-";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// A time as two words (date, time of day): the cell wraps between them, never inside one.
function when(t) { return el("span", {class: "when"}, fmtTime(t)); }

function pretty(value) {
  const flat = JSON.stringify(value);
  return flat.length <= 100 ? flat : JSON.stringify(value, null, 1);
}

function taskLink(id, text) {
  return el("a", {href: "/task/" + encodeURIComponent(id), "data-nav": true, class: "mono", dataset: {key: "task:" + id}},
            text === undefined ? id : text);
}

function stateCell(state) { return el("span", {class: "state " + (STATES.includes(state) ? state : "")}, show(state)); }

function notify(text, error) {
  const box = $("notice");
  box.replaceChildren(el("p", {class: error ? "error" : "", role: error ? "alert" : null}, text));
}

// -- talking to the server -------------------------------------------------------------------
const TIMEOUT_MS = 20000;  // a request that hangs (a server gone away) must not stop the updates

async function api(path, options) {
  const stop = new AbortController();
  const timeout = setTimeout(() => stop.abort(), TIMEOUT_MS);
  let reply;
  try {
    reply = await fetch(ORIGIN + path, Object.assign({cache: "no-store", credentials: "same-origin", signal: stop.signal},
                                                      options || {}));
  } catch (e) {
    throw new Error(e.name === "AbortError" ? "no answer within " + TIMEOUT_MS / 1000 + " s" : "cannot reach the dashboard");
  } finally {
    clearTimeout(timeout);
  }
  let body = null;
  try { body = await reply.json(); } catch (e) { body = null; }
  if (!reply.ok) {
    const error = new Error((body && body.error) || reply.statusText || ("HTTP " + reply.status));
    error.status = reply.status;
    throw error;
  }
  return body;
}

async function act(name, args, label) {
  taskSeen.at = 0;
  try {
    const reply = await api("/api/action/" + name, {
      method: "POST", body: JSON.stringify(args),
      headers: {"Content-Type": "application/json", "X-CSRF-Token": session.csrf},
    });
    notify(label + ": done" + describeResult(reply.result));
  } catch (e) {
    notify(label + ": refused: " + e.message, true);
  }
  refresh();
}

function describeResult(result) {
  if (!result || typeof result !== "object") return "";
  if (Array.isArray(result.requeued)) return ` (${result.requeued.length} requeued, ${(result.skipped || []).length} skipped)`;
  if (typeof result.purged === "number") return ` (${result.purged} purged)`;
  if (result.id && result.name) return ` (sent as ${result.id})`;
  return "";
}

function canAct() { return session.actions && session.user; }

// An in-page confirmation (a <dialog>: focus moves into it, Escape cancels, no window.confirm).
function confirmThen(text, then) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  const ok = $("confirm-ok"), cancel = $("confirm-cancel");
  const opener = document.activeElement;
  const close = () => { dialog.close(); ok.onclick = null; if (opener && opener.focus) opener.focus(); };
  ok.onclick = () => { close(); then(); };
  cancel.onclick = close;
  dialog.showModal();
  cancel.focus();
}

// `key` names the button across re-renders (the focus comes back to it after an update).
function actionButton(label, onclick, kind, key) {
  return el("button", {type: "button", class: kind || "secondary", onclick, dataset: {key: key || "btn:" + label}}, label);
}

// -- tables ----------------------------------------------------------------------------------
// columns: [{key, label, cell(row) -> Node|string, cls, col}]. A table whose rows did not change
// is left alone (focus and selection stay); one that did is rebuilt, and the focused control
// (matched by its data-key) gets the focus back.
function fillTable(table, columns, rows, emptyText, signature) {
  const sig = signature !== undefined ? signature : JSON.stringify(rows);
  if (table.dataset.sig === sig && table.rows.length) return;
  table.dataset.sig = sig;
  const focused = table.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  table.replaceChildren();
  const group = el("colgroup");
  for (const c of columns) group.append(el("col", {class: c.col || null}));
  table.append(group);
  const head = el("tr");
  for (const c of columns) head.append(el("th", {scope: "col", class: c.cls || null, "aria-sort": c.sort || null}, c.header || c.label));
  table.append(el("thead", {}, head));
  const body = el("tbody");
  if (!rows.length) body.append(el("tr", {}, el("td", {colspan: columns.length, class: "empty"}, emptyText || "none")));
  for (const row of rows) {
    const tr = el("tr");
    for (const c of columns) {
      const value = c.cell ? c.cell(row) : show(row[c.key]);
      tr.append(el("td", {class: c.cls || null}, value));
    }
    body.append(tr);
  }
  table.append(body);
  if (focused) {
    for (const node of table.querySelectorAll("[data-key]")) {
      if (node.dataset.key === focused) { node.focus(); break; }
    }
  }
}

function kvTable(table, pairs) {
  table.replaceChildren();
  const body = el("tbody");
  for (const [label, value] of pairs) body.append(el("tr", {}, el("th", {scope: "row"}, label), el("td", {}, value)));
  table.append(body);
}

// -- routing ---------------------------------------------------------------------------------
function parseRoute() {
  const path = location.pathname;
  if (path === "/" || path === "") return {page: "tasks", id: null};
  if (path.startsWith("/task/")) {
    let id = path.slice(6);
    try { id = decodeURIComponent(id); } catch (e) { id = ""; }
    return {page: "task", id};
  }
  const page = path.slice(1);
  return {page: PAGES.includes(page) ? page : "missing", id: null};
}

function go(href) {
  history.pushState(null, "", href);
  enter(true);
}

function enter(moveFocus) {
  route = parseRoute();
  generation += 1;
  for (const section of document.querySelectorAll("section.page")) section.hidden = section.id !== "page-" + route.page;
  for (const a of document.querySelectorAll("#nav a")) {
    const current = a.dataset.page === route.page || (route.page === "task" && a.dataset.page === "tasks");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const titles = {tasks: "Tasks", task: "Task", workers: "Workers", queues: "Queues", charts: "Charts",
                  schedule: "Schedule", dead: "Dead letters", audit: "Audit", missing: "Not found"};
  document.title = titles[route.page] + " · qdeploy dashboard";
  if (route.page === "tasks") formFromUrl();
  lastChartLoad = 0;
  if (moveFocus) {
    const heading = document.querySelector("#page-" + route.page + " h1");
    if (heading) heading.focus();
  }
  refresh();
}

document.addEventListener("click", (event) => {
  const a = event.target.closest("a[data-nav], #nav a, #back");
  if (!a || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(a.href, ORIGIN);
  if (url.origin !== ORIGIN) return;
  event.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener("popstate", () => enter(false));

// -- polling ---------------------------------------------------------------------------------
async function refresh() {
  clearTimeout(timer);
  const mine = generation, me = ++poll;
  const status = $("updated");
  try {
    await Promise.all([loadSummary(), loaders[route.page] ? loaders[route.page](mine) : null]);
    if (mine === generation) {
      status.textContent = "updated " + new Date().toLocaleTimeString();
      status.className = "";
    }
  } catch (e) {
    status.textContent = "update failed: " + e.message;
    status.className = "down";
  }
  if (me === poll) timer = setTimeout(refresh, Math.max(500, (session.refresh || 2) * 1000));
}

async function loadSummary() {
  const s = await api("/api/overview");
  const states = s.states || {};
  const parts = [
    ["broker", s.broker + " · " + s.namespace],
    ["nodes online", (s.nodes || []).length],
    ["tasks in history", s.history],
    ["failed", states.FAILURE || 0],
    ["running", states.STARTED || 0],
    ["dead letters", s.dead],
  ];
  const box = $("summary");
  const sig = JSON.stringify(parts);
  if (box.dataset.sig === sig) return;
  box.dataset.sig = sig;
  box.replaceChildren(...parts.map(([label, value]) => el("span", {}, label + ": ", el("b", {}, show(value)))));
}

const loaders = {tasks: loadTasks, task: loadTask, workers: loadWorkers, queues: loadQueues, charts: loadCharts,
                 schedule: loadSchedule, dead: loadDead, audit: loadAudit};

// -- Tasks -----------------------------------------------------------------------------------
function localInput(t) {
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function formFromUrl() {
  const form = $("search"), params = new URLSearchParams(location.search);
  for (const name of ["q", "node", "args"]) form.elements[name].value = params.get(name) || "";
  const states = new Set((params.get("state") || "").split(",").filter(Boolean));
  for (const box of form.querySelectorAll("input[name=state]")) box.checked = states.has(box.value);
  form.elements.range.value = params.get("range") || "";
  form.elements.sort.value = params.get("sort") || "-started";
  form.elements.per_page.value = params.get("per_page") || "50";
  for (const name of ["since", "until"]) {
    const t = Number(params.get(name));
    form.elements[name].value = params.get(name) && isFinite(t) ? localInput(t) : "";
  }
  showCustomRange();
}

function showCustomRange() {
  const custom = $("search").elements.range.value === "custom";
  for (const label of document.querySelectorAll(".custom-range")) label.hidden = !custom;
}

// The page's own URL keeps the form (with "range" relative to now); the API gets since/until.
function urlFromForm(page) {
  const form = $("search"), params = new URLSearchParams();
  for (const name of ["q", "node", "args"]) {
    const value = form.elements[name].value.trim();
    if (value && (name !== "args" || session.show_args)) params.set(name, value);
  }
  const states = [...form.querySelectorAll("input[name=state]:checked")].map((b) => b.value);
  if (states.length) params.set("state", states.join(","));
  const range = form.elements.range.value;
  if (range) params.set("range", range);
  if (range === "custom") {
    for (const name of ["since", "until"]) {
      const value = form.elements[name].value;
      const t = value ? new Date(value).getTime() / 1000 : NaN;
      if (isFinite(t)) params.set(name, String(Math.floor(t)));
    }
  }
  if (form.elements.sort.value !== "-started") params.set("sort", form.elements.sort.value);
  if (form.elements.per_page.value !== "50") params.set("per_page", form.elements.per_page.value);
  if (page && page > 1) params.set("page", String(page));
  const text = params.toString();
  return "/tasks" + (text ? "?" + text : "");
}

function apiQuery() {
  const params = new URLSearchParams(location.search), out = new URLSearchParams();
  for (const name of ["q", "node", "args", "state", "sort", "page", "per_page"]) {
    if (params.get(name)) out.set(name, params.get(name));
  }
  const range = params.get("range");
  if (range === "custom") {
    for (const name of ["since", "until"]) if (params.get(name)) out.set(name, params.get(name));
  } else if (range && isFinite(Number(range))) {
    out.set("since", String(Math.floor(Date.now() / 1000 - Number(range))));
  }
  return out.toString();
}

function sortHeader(label, key) {
  const params = new URLSearchParams(location.search);
  const sort = params.get("sort") || "-started";
  const next = key === "runtime" ? "-runtime" : (sort === "-started" ? "started" : "-started");
  const active = (key === "runtime" && sort === "-runtime") || (key === "started" && sort !== "-runtime");
  const button = el("button", {type: "button", class: "sort", dataset: {key: "sort:" + key},
                               title: "sort by " + label.toLowerCase(), onclick: () => {
    $("search").elements.sort.value = next;
    go(urlFromForm(1));
  }}, label + (active ? (sort === "started" ? " ▲" : " ▼") : ""));
  return {header: button, sort: active ? (sort === "started" ? "ascending" : "descending") : null};
}

async function loadTasks(mine) {
  const data = await api("/api/tasks?" + apiQuery());
  if (mine !== generation) return;
  taskPage = data;
  const started = sortHeader("Started", "started"), runtime = sortHeader("Runtime", "runtime");
  const columns = [
    {label: "Name", col: "c-name", cell: (r) => taskLink(r.id, show(r.name))},
    {label: "Task id", col: "c-id", cell: (r) => el("span", {class: "mono"}, r.id)},
    {label: "State", col: "c-state", cell: (r) => stateCell(r.state)},
    {label: "Received", col: "c-time", cell: (r) => when(r.received)},
    {label: "Started", col: "c-time", header: started.header, sort: started.sort, cell: (r) => when(r.started)},
    {label: "Runtime", col: "c-runtime", cls: "num", header: runtime.header, sort: runtime.sort, cell: (r) => fmtDuration(r.runtime)},
    {label: "Worker", col: "c-node", cell: (r) => show(r.node)},
  ];
  if (session.show_args) columns.push({label: "Arguments", col: "c-args", cell: (r) => el("span", {class: "mono"}, show(r.call))});
  fillTable($("tasks-table"), columns, data.rows, "no task matches", JSON.stringify([data.rows, location.search, session.show_args]));
  const first = data.rows.length ? (data.page - 1) * data.per_page + 1 : 0;
  const total = data.total.toLocaleString() + (data.exact ? "" : "+");
  $("tasks-info").textContent = data.rows.length
    ? `${first}–${first + data.rows.length - 1} of ${total} tasks (${data.took_ms} ms)` + (data.partial ? " — search stopped early: narrow it" : "")
    : `no task matches (${data.took_ms} ms)`;
  $("page-no").textContent = "page " + data.page;
  $("prev").disabled = data.page <= 1;
  $("next").disabled = first + data.rows.length - 1 >= data.total || data.rows.length < data.per_page;
}

// -- Task detail -----------------------------------------------------------------------------
async function loadTask(mine) {
  const id = route.id;
  if (taskSeen.id === id && taskSeen.final && Date.now() - taskSeen.at < 10000) return;
  let data;
  try {
    data = await api("/api/task/" + encodeURIComponent(id));
  } catch (e) {
    if (e.status === 404 || e.status === 400) {
      if (mine !== generation) return;
      $("task-title").textContent = id;
      kvTable($("task-fields"), [["", e.message]]);
      for (const box of ["timeline", "task-links", "task-args", "task-result", "task-actions"]) $(box).replaceChildren();
      return;
    }
    throw e;
  }
  if (mine !== generation) return;
  taskSeen = {id, at: Date.now(), final: FINAL.has((data.record || {}).state || (data.result || {}).state)};
  const sig = JSON.stringify([data, session]);
  if ($("page-task").dataset.sig === sig) return;
  $("page-task").dataset.sig = sig;
  const rec = data.record || {}, result = data.result || {};
  $("task-title").textContent = rec.name || result.task || id;
  const pairs = [
    ["Task id", el("span", {class: "mono"}, id)],
    ["Name", show(rec.name || result.task)],
    ["State", stateCell(rec.state || result.state)],
    ["Queue", show(rec.queue)],
    ["Worker", show(rec.node || result.worker)],
    ["Child pid", show(rec.pid)],
    ["Sent", fmtTime(rec.sent)],
    ["Received", fmtTime(rec.received)],
    ["Started", fmtTime(rec.started)],
    ["Done", fmtTime(rec.done)],
    ["Runtime", fmtDuration(rec.runtime)],
    ["Retries", show(rec.retries !== undefined ? rec.retries : result.retries)],
  ];
  if (rec.eta) pairs.splice(7, 0, ["ETA", fmtTime(rec.eta)]);
  if (rec.exc) pairs.push(["Exception", el("span", {class: "mono"}, rec.exc)]);
  if (rec.killed) pairs.push(["Killed", rec.killed]);
  if (!data.record) pairs.push(["History", "not in the task history (only its result is stored)"]);
  kvTable($("task-fields"), pairs);

  const steps = data.timeline || [];
  const list = $("timeline");
  list.replaceChildren();
  if (!steps.length) list.append(el("li", {}, el("span", {}, "-"), el("span", {}, ""), el("span", {}, "no events")));
  let previous = null;
  for (const step of steps) {
    const delta = previous === null ? "" : "+" + fmtDuration(step.time - previous);
    const where = [step.node, step.pid ? "pid " + step.pid : null].filter(Boolean).join(", ");
    list.append(el("li", {},
      el("span", {}, fmtTime(step.time)),
      el("span", {class: "what"}, step.what, el("br"), el("span", {class: "delta"}, delta)),
      el("span", {}, [where, step.detail].filter(Boolean).join(" — ") || "")));
    previous = step.time;
  }

  const argsBox = $("task-args");
  argsBox.replaceChildren();
  if (!session.show_args) {
    argsBox.append(el("p", {class: "info"}, "Hidden (start the dashboard with --show-args to show them)."));
  } else if (rec.args !== undefined && rec.args !== null) {
    argsBox.append(el("p", {}, "args"), el("pre", {}, pretty(rec.args)), el("p", {}, "kwargs"), el("pre", {}, pretty(rec.kwargs)));
  } else if (rec.call_text) {
    argsBox.append(el("p", {class: "info"}, "Too large to keep whole; the start of them:"), el("pre", {}, rec.call_text));
  } else {
    argsBox.append(el("p", {class: "info"}, "Not kept (the worker's history_args setting)."));
  }

  const resultBox = $("task-result");
  resultBox.replaceChildren();
  if (!data.result) {
    resultBox.append(el("p", {class: "info"}, "No stored result (not finished, ignore_result, or expired)."));
  } else {
    const rows = [["State", stateCell(result.state)], ["Done", fmtTime(result.date_done)]];
    if (result.result !== undefined && result.result !== null) rows.push(["Value", el("pre", {}, show(result.result))]);
    if (result.exc_type) rows.push(["Exception", el("pre", {}, result.exc_type + ": " + show(result.exc))]);
    if (result.reason) rows.push(["Reason", show(result.reason)]);
    const table = el("table", {class: "kv"});
    kvTable(table, rows);
    resultBox.append(table);
    if (result.traceback) resultBox.append(el("h3", {}, "Traceback"), el("pre", {class: "traceback"}, result.traceback));
  }

  const links = $("task-links");
  links.replaceChildren();
  const kinds = [["parent", "Parent"], ["root", "Workflow root"], ["children", "Children (next steps, tasks it sent)"],
                 ["group_id", "Group"], ["group", "Group members"]];
  let any = false;
  for (const [kind, label] of kinds) {
    const items = (data.links || {})[kind] || [];
    if (!items.length) continue;
    any = true;
    const ul = el("ul");
    for (const item of items) {
      ul.append(kind === "group_id" ? el("li", {}, el("span", {class: "mono"}, item.id))
        : el("li", {}, taskLink(item.id, show(item.name || item.id)), " ", stateCell(item.state), " ",
             el("span", {class: "mono help"}, item.id)));
    }
    links.append(el("h3", {}, label), ul);
  }
  if (!any) links.append(el("p", {class: "info"}, "Not part of a chain, group or chord."));

  const box = $("task-actions");
  box.replaceChildren();
  if (canAct()) {
    const state = rec.state || result.state;
    if (!FINAL.has(state)) {
      box.append(actionButton("Revoke", () => act("revoke", {id}, "revoke " + id)));
      box.append(actionButton("Terminate", () => confirmThen(`Terminate ${id}? The child running it is killed.`,
        () => act("revoke", {id, terminate: true}, "terminate " + id)), "danger"));
    }
    if (rec.retryable) box.append(actionButton("Retry", () => act("retry", {id}, "retry " + id), "primary"));
  }
}

// -- Workers ---------------------------------------------------------------------------------
async function loadWorkers(mine) {
  const data = await api("/api/workers");
  if (mine !== generation) return;
  const box = $("workers");
  const sig = JSON.stringify([data.nodes, data.no_reply, session.actions, session.user]);
  if (box.dataset.sig === sig) return;
  box.dataset.sig = sig;
  const focused = box.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  $("workers-info").textContent = data.nodes.length + " node(s) online" +
    (data.no_reply && data.no_reply.length ? "; no reply from " + data.no_reply.join(", ") : "");
  box.replaceChildren();
  if (!data.nodes.length) box.append(el("p", {class: "info"}, "No node online."));
  for (const node of data.nodes) {
    const exits = Object.entries(node.child_exits || {});
    const summary = el("table", {class: "kv"});
    kvTable(summary, [
      ["Kind", show(node.kind)], ["Master pid", show(node.pid)], ["Pool", show(node.pool)],
      ["Processes", String((node.processes || []).length) + (node.busy !== undefined && node.busy !== null ? ` (${node.busy} busy)` : "")],
      ["Tasks done", show(node.tasks_done)], ["Tasks failed", show(node.failed)],
      ["Uptime", fmtDuration(node.uptime)], ["Last heartbeat", typeof node.last_seen === "number" ? node.last_seen.toFixed(1) + " s ago" : "-"],
      ["Queues", show(node.queues)], ["Health", show(node.health && (node.health.state || node.health.verdict || node.health))],
      ["Memory", node.memory_kib && node.memory_kib.master ? `master ${Math.round(node.memory_kib.master / 1024)} MiB, children ` +
        `${Math.round((node.memory_kib.children || 0) / 1024)} MiB` : "-"],
    ]);
    const procs = el("table", {class: "grid"});
    fillTable(procs, [
      {label: "pid", key: "pid"}, {label: "slot", key: "slot"}, {label: "state", key: "state"},
      {label: "done", key: "tasks_done", cls: "num"},
      {label: "task", cell: (p) => p.tasks && p.tasks.length ? el("span", {}, ...p.tasks.map((t) => taskLink(t))) : "-"},
    ], node.processes || [], node.answered ? "no children" : "no reply over the control channel");
    const current = el("table", {class: "grid"});
    const currentCols = [{label: "task", cell: (t) => taskLink(t.id, show(t.name))}, {label: "child", key: "child"}];
    if (session.show_args) currentCols.push({label: "arguments", cell: (t) => el("span", {class: "mono"}, show(t.args))});
    fillTable(current, currentCols, node.current || [], "idle");
    const exitTable = el("table", {class: "grid"});
    fillTable(exitTable, [{label: "reason", key: 0}, {label: "children", key: 1, cls: "num"}], exits, "none yet");
    const config = el("table", {class: "kv"});
    kvTable(config, Object.entries(node.config || {}).map(([k, v]) => [k.replace(/_/g, " "), show(v)]));
    const actions = el("div", {class: "actions"});
    if (canAct() && node.kind === "prefork") {
      const key = "node:" + node.owner + ":";
      actions.append(
        actionButton("Grow pool", () => act("pool-grow", {node: node.owner, n: 1}, "grow " + node.owner), null, key + "grow"),
        actionButton("Shrink pool", () => act("pool-shrink", {node: node.owner, n: 1}, "shrink " + node.owner), null, key + "shrink"),
        actionButton("Shut down", () => confirmThen(`Shut ${node.owner} down? It finishes its running tasks, then exits.`,
          () => act("shutdown", {node: node.owner}, "shutdown " + node.owner)), "danger", key + "shutdown"));
    }
    box.append(el("article", {class: "node", "aria-label": node.owner},
      el("h2", {}, el("span", {class: "up"}, "●"), node.owner),
      actions,
      el("div", {class: "node-grid"},
        el("div", {}, el("h3", {}, "Summary"), summary),
        el("div", {}, el("h3", {}, "Processes"), procs, el("h3", {}, "Current tasks"), current),
        el("div", {}, el("h3", {}, "Child exits by reason"), exitTable, el("h3", {}, "Configuration"), config))));
  }
  if (focused) for (const node of box.querySelectorAll("[data-key]")) if (node.dataset.key === focused) { node.focus(); break; }
}

// -- Queues and charts -----------------------------------------------------------------------
function hours(page) {
  const select = document.querySelector(`select.hours[data-for=${page}]`);
  return select ? select.value : "1";
}

function reloadImages(pairs, force) {
  const now = Date.now();
  if (!force && now - lastChartLoad < 15000) return;
  lastChartLoad = now;
  for (const [id, name, page] of pairs) $(id).src = `${ORIGIN}/chart/${name}?hours=${hours(page)}&t=${now}`;
}

const queueColumns = [
  {label: "queue", key: "queue"}, {label: "ready", key: "ready", cls: "num"}, {label: "in flight", key: "in_flight", cls: "num"},
  {label: "scheduled", key: "scheduled", cls: "num"}, {label: "dead", key: "dead", cls: "num"},
];

async function loadQueues(mine) {
  const data = await api("/api/queues?hours=" + hours("queues"));
  if (mine !== generation) return;
  fillTable($("queues-table"), queueColumns, data.now || [], "no queue");
  const rows = [];
  for (const sample of (data.samples || []).slice(-5).reverse()) {
    for (const q of sample.q || []) rows.push(Object.assign({time: fmtTime(sample.t)}, q));
  }
  fillTable($("samples-table"), [{label: "time", key: "time"}, ...queueColumns], rows.slice(0, 50), "no samples yet");
  reloadImages([["queues-chart", "queues.svg", "queues"], ["dead-chart", "dead.svg", "queues"]]);
}

async function loadCharts(mine) {
  const data = await api("/api/charts?hours=" + hours("charts"));
  if (mine !== generation) return;
  fillTable($("runtimes-table"), [
    {label: "task", key: "name"}, {label: "finished", key: "count", cls: "num"},
    {label: "p50", cls: "num", cell: (r) => fmtDuration(r.p50)}, {label: "p90", cls: "num", cell: (r) => fmtDuration(r.p90)},
    {label: "p99", cls: "num", cell: (r) => fmtDuration(r.p99)},
  ], data.runtimes || [], "no finished task in this period");
  reloadImages([["chart-throughput", "throughput.svg", "charts"], ["chart-failures", "failures.svg", "charts"],
                ["chart-queues", "queues.svg", "charts"], ["chart-runtimes", "runtimes.svg", "charts"]]);
}

for (const select of document.querySelectorAll("select.hours")) {
  select.addEventListener("change", () => { lastChartLoad = 0; refresh(); });
}

// -- Schedule --------------------------------------------------------------------------------
async function loadSchedule(mine) {
  const data = await api("/api/schedule");
  if (mine !== generation) return;
  $("schedule-info").textContent = (data.error ? data.error + ". " : "") + "Leader: " + (data.leader || "no beat running");
  const columns = [
    {label: "name", key: "name"}, {label: "task", key: "task"}, {label: "schedule", key: "schedule"},
    {label: "source", key: "source"},
    {label: "enabled", cell: (r) => r.error ? el("span", {class: "FAILURE"}, "invalid: " + r.error) : (r.enabled ? "yes" : "no")},
    {label: "next run", cell: (r) => fmtTime(r.next_run)},
    {label: "last run", cell: (r) => r.last_run ? fmtTime(r.last_run.at) + (r.last_run.skipped ? " (skipped)" : "") : "-"},
  ];
  if (session.show_args) columns.push({label: "arguments", cell: (r) => el("span", {class: "mono"}, show(r.args))});
  if (canAct()) {
    columns.push({label: "actions", cell: (r) => r.error ? "-" : el("div", {class: "row-actions"},
      r.enabled
        ? actionButton("Disable", () => act("schedule-disable", {name: r.name}, "disable " + r.name), null, "sched:" + r.name + ":toggle")
        : actionButton("Enable", () => act("schedule-enable", {name: r.name}, "enable " + r.name), null, "sched:" + r.name + ":toggle"),
      actionButton("Run now", () => act("schedule-run", {name: r.name}, "run " + r.name), null, "sched:" + r.name + ":run"))});
  }
  fillTable($("schedule-table"), columns, data.rows || [], "no periodic task", JSON.stringify([data.rows, canAct()]));
}

// -- Dead letters ----------------------------------------------------------------------------
async function loadDead(mine) {
  const data = await api("/api/dead");
  if (mine !== generation) return;
  const table = $("dead-table");
  const checked = new Set([...table.querySelectorAll("input[type=checkbox]:checked")].map((b) => b.value));
  $("dead-info").textContent = data.total + " dead letter(s)" + (data.total > data.rows.length ? `, the newest ${data.rows.length} shown` : "");
  const columns = [
    {label: "task", key: "task"}, {label: "id", cell: (r) => r.id ? el("span", {class: "mono"}, r.id) : "-"},
    {label: "queue", key: "queue"}, {label: "reason", key: "reason"}, {label: "consumer", key: "consumer"},
    {label: "time", cell: (r) => fmtTime(r.time)},
  ];
  if (canAct()) {
    columns.unshift({label: "select", col: "c-select", cell: (r) => r.id ? el("input", {type: "checkbox", value: r.id, checked: checked.has(r.id),
      "aria-label": "select " + r.id, dataset: {key: "dead:" + r.id}}) : "-"});
  }
  fillTable(table, columns, data.rows || [], "no dead letter", JSON.stringify([data.rows, canAct()]));
  const box = $("dead-actions");
  if (!canAct()) { box.replaceChildren(); return; }
  if (box.children.length) return;
  box.append(
    actionButton("Requeue selected", () => {
      const ids = [...table.querySelectorAll("input[type=checkbox]:checked")].map((b) => b.value);
      if (!ids.length) { notify("Select the dead letters to requeue first.", true); return; }
      act("dead-requeue", {ids}, `requeue ${ids.length} dead letter(s)`);
    }),
    actionButton("Requeue all", () => confirmThen("Requeue every dead letter?", () => act("dead-requeue", {all: true}, "requeue all"))),
    actionButton("Purge all", () => confirmThen("Delete every dead letter? This cannot be undone.",
      () => act("dead-purge", {confirm: true}, "purge dead letters")), "danger"));
}

// -- Audit -----------------------------------------------------------------------------------
async function loadAudit(mine) {
  const data = await api("/api/audit");
  if (mine !== generation) return;
  fillTable($("audit-table"), [
    {label: "time", cell: (r) => fmtTime(r.time)}, {label: "user", key: "user"}, {label: "from", key: "from"},
    {label: "action", key: "action"}, {label: "arguments", cell: (r) => el("span", {class: "mono"}, show(r.args))},
    {label: "outcome", key: "outcome"}, {label: "result", cell: (r) => el("span", {class: "mono"}, show(r.result))},
  ], data.rows || [], "no action taken yet");
}

// -- start -----------------------------------------------------------------------------------
$("search").addEventListener("submit", (event) => { event.preventDefault(); go(urlFromForm(1)); });
$("search").elements.range.addEventListener("change", showCustomRange);
$("clear").addEventListener("click", () => { history.pushState(null, "", "/tasks"); enter(false); $("search").elements.q.focus(); });
$("prev").addEventListener("click", () => go(urlFromForm(Math.max(1, (taskPage.page || 1) - 1))));
$("next").addEventListener("click", () => go(urlFromForm((taskPage.page || 1) + 1)));

async function start() {
  try {
    session = await api("/api/session");
  } catch (e) {
    $("updated").textContent = "cannot load the session: " + e.message;
    $("updated").className = "down";
  }
  $("who").textContent = session.user ? "signed in as " + session.user + (session.actions ? " · actions on" : " · read-only")
    : (session.actions ? "actions on" : "read-only");
  $("args-field").hidden = !session.show_args;
  try {
    const overview = await api("/api/overview");
    const list = $("node-list");
    for (const node of overview.nodes || []) list.append(el("option", {value: node.owner}));
  } catch (e) { /* the summary says so on the next update */ }
  enter(false);
}
start();
