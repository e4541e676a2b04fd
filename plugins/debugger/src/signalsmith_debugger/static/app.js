// The debugger page: ask for a token once (kept in this tab's sessionStorage), then show the live
// feed with its filters, pause and resume, the chart, and one event's trace on demand.

import { Chart } from "./chart.js";
import { ApiError, events, getJson } from "./feed.js";
import { tree } from "./tree.js";

const TOKEN_KEY = "signalsmith-debugger-token";
const MAX_ROWS = 500;
const MAX_HELD = 5000;
const RECONNECT_MS = 2000;

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  controller: null,
  paused: false,
  held: [],
  heldDropped: 0,
  rows: new Map(), // row key -> {key, messageId, records, element}
  selected: null,
  unnamed: 0,
  chart: null,
  refreshTimer: null,
};

// --- the token ----------------------------------------------------------------------------

function showLogin(message = "") {
  $("main").hidden = true;
  $("login").hidden = false;
  $("forget").hidden = true;
  $("pause").disabled = true;
  $("login-error").textContent = message;
  setConnection("idle", "not connected");
  $("token").focus();
}

async function open(token) {
  let who;
  try {
    who = await getJson("whoami", token);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(error.message);
      return;
    }
    showLogin(`cannot reach the debugger: ${error.message}`);
    return;
  }
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("main").hidden = false;
  $("forget").hidden = false;
  $("pause").disabled = false;
  $("who").textContent = who.sources
    ? `${who.name} · sources ${who.sources.join(", ")}`
    : `${who.name} · every source`;
  await loadSources();
  loadStatus();
  connect();
}

async function loadSources() {
  const select = $("filter-source");
  const current = select.value;
  try {
    const sources = await getJson("sources", state.token);
    const known = new Set([...select.options].map((option) => option.value));
    for (const source of sources) {
      if (known.has(source.id)) continue;
      const option = document.createElement("option");
      option.value = source.id;
      option.textContent = source.id === "-" ? "(no source: refused)" : source.id;
      select.append(option);
    }
    select.value = current;
  } catch {
    // The list is a convenience: the feed itself says what is wrong.
  }
}

// Whether the recorders lately had to leave outcomes out (a full queue, Redis failing).
async function loadStatus() {
  try {
    const status = await getJson("status", state.token);
    const missed = Object.entries(status.unrecorded).filter(([, count]) => count > 0);
    const notice = $("unrecorded-notice");
    notice.hidden = missed.length === 0;
    notice.textContent = missed.length
      ? "Some outcomes were not recorded lately (the debugger's queue was full, or Redis " +
        `failed): ${missed.map(([role, count]) => `${count} in ${role} processes`).join(", ")}.`
      : "";
  } catch {
    // Informational only.
  }
}

// --- the feed -----------------------------------------------------------------------------

function filterQuery() {
  const query = new URLSearchParams();
  for (const [name, id] of [
    ["source", "filter-source"],
    ["type", "filter-type"],
    ["event", "filter-event"],
    ["user", "filter-user"],
    ["status", "filter-status"],
  ]) {
    const value = $(id).value.trim();
    if (value) query.set(name, value);
  }
  return query;
}

function connect() {
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  clearRows();
  state.chart.clear();
  $("skipped-notice").hidden = true;
  $("ended-notice").hidden = true;
  const query = filterQuery();
  query.set("backfill", "100");
  run(`live?${query}`, controller);
}

async function run(path, controller) {
  setConnection("connecting", "connecting…");
  try {
    for await (const message of events(path, state.token, controller.signal)) {
      handle(message);
    }
    if (controller.signal.aborted) return;
    setConnection("closed", "disconnected");
  } catch (error) {
    if (controller.signal.aborted) return;
    if (error instanceof ApiError) {
      if (error.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin(error.message);
        return;
      }
      if (error.status === 400 || error.status === 403) {
        setConnection("error", error.message);
        return;
      }
    }
    setConnection("error", `connection lost (${error.message}); reconnecting`);
  }
  if (controller.signal.aborted || state.controller !== controller) return;
  setTimeout(() => {
    if (state.controller === controller) run(path.replace(/backfill=\d+/, "backfill=0"), controller);
  }, RECONNECT_MS);
}

function handle({ event, data }) {
  switch (event) {
    case "hello":
      setConnection("live", `live · ${data.sources.length} source(s)`);
      break;
    case "records":
      if (state.paused) hold(data);
      else data.forEach(addRecord);
      updateEmpty();
      break;
    case "skipped": {
      const notice = $("skipped-notice");
      notice.hidden = false;
      notice.dataset.total = String(data.total);
      notice.textContent =
        `This page could not keep up: ${data.total} matching record(s) were skipped ` +
        `(${data.skipped} just now). Narrow the filters to see every one.`;
      break;
    }
    case "stats":
      state.chart.add(data.sources);
      break;
    case "end": {
      const notice = $("ended-notice");
      notice.hidden = false;
      notice.textContent = `The feed ended: ${data.reason}.`;
      state.controller.abort();
      setConnection("closed", "ended");
      break;
    }
    default:
      break;
  }
}

function hold(records) {
  for (const record of records) {
    if (state.held.length < MAX_HELD) state.held.push(record);
    else state.heldDropped += 1;
  }
  const notice = $("paused-notice");
  notice.hidden = false;
  notice.textContent =
    `Paused: ${state.held.length} new record(s) held` +
    (state.heldDropped ? `, ${state.heldDropped} more not kept` : "") +
    ". Resume to show them.";
}

function togglePause() {
  state.paused = !state.paused;
  const button = $("pause");
  button.textContent = state.paused ? "Resume" : "Pause";
  button.setAttribute("aria-pressed", String(state.paused));
  document.body.classList.toggle("paused", state.paused);
  if (state.paused) {
    hold([]);
    return;
  }
  const held = state.held;
  state.held = [];
  state.heldDropped = 0;
  held.forEach(addRecord);
  $("paused-notice").hidden = true;
  updateEmpty();
}

// --- the list -----------------------------------------------------------------------------

function clearRows() {
  state.rows.clear();
  state.held = [];
  state.heldDropped = 0;
  $("paused-notice").hidden = true;
  document.querySelector("#events tbody").replaceChildren();
  updateEmpty();
}

function updateEmpty() {
  $("empty").hidden = state.rows.size > 0;
}

function addRecord(record) {
  const key = record.messageId ?? `unnamed-${++state.unnamed}`;
  let row = state.rows.get(key);
  if (!row) {
    row = { key, messageId: record.messageId ?? null, records: [], element: newRow(key) };
    state.rows.set(key, row);
    const body = document.querySelector("#events tbody");
    body.prepend(row.element);
    if (state.rows.size > MAX_ROWS) {
      const [oldestKey, oldest] = state.rows.entries().next().value;
      oldest.element.remove();
      state.rows.delete(oldestKey);
    }
  }
  row.records.push(record);
  render(row);
  if (state.selected === key) scheduleDetailRefresh();
}

function newRow(key) {
  const tr = document.createElement("tr");
  tr.dataset.key = key;
  tr.tabIndex = 0;
  for (const name of ["time", "source", "type", "event", "user", "status"]) {
    const td = document.createElement("td");
    td.className = name;
    tr.append(td);
  }
  tr.addEventListener("click", () => select(key));
  tr.addEventListener("keydown", (event) => {
    if (event.key === "Enter") select(key);
  });
  return tr;
}

// The row's overall status: the worst thing that happened to it, then each sink's word.
function outcome(records) {
  const statuses = new Set(records.map((r) => r.status));
  const sinks = new Map();
  for (const record of records) {
    if (record.stage !== "deliver" || !record.sink) continue;
    const fate = sinks.get(record.sink) || { kind: record.sinkKind, status: "", failed: 0 };
    if (record.status === "retried") {
      fate.failed += 1;
      fate.status = "retrying";
    } else fate.status = record.status;
    sinks.set(record.sink, fate);
  }
  let main = "received";
  if (statuses.has("buffered")) main = "buffered";
  if (statuses.has("duplicate") && !statuses.has("buffered")) main = "duplicate";
  if ([...sinks.values()].some((fate) => fate.status === "delivered")) main = "delivered";
  if (statuses.has("violation")) main = "violated";
  if (statuses.has("dropped")) main = "dropped";
  if ([...sinks.values()].some((fate) => fate.status === "retrying")) main = "retrying";
  if (statuses.has("dead_lettered")) main = "dead_lettered";
  if (statuses.has("rejected") && !statuses.has("buffered")) main = "rejected";
  return { main, sinks };
}

function render(row) {
  const first = row.records.find((r) => r.type) || row.records[0];
  const cells = row.element.children;
  row.element.dataset.messageId = row.messageId ?? "";
  row.element.dataset.source = first.sourceId;
  cells[0].textContent = new Date(row.records[0].at).toLocaleTimeString();
  cells[1].textContent = first.sourceId;
  cells[2].textContent = first.type ?? "?";
  cells[3].textContent = first.event ?? "";
  cells[4].textContent = first.userId ?? first.anonymousId ?? "";
  const { main, sinks } = outcome(row.records);
  row.element.dataset.status = main;
  const status = cells[5];
  status.replaceChildren();
  status.append(badge(main, main.replace("_", " ")));
  for (const [name, fate] of sinks) {
    const text =
      fate.status === "retrying" ? `${name} ⟳${fate.failed}` :
      fate.status === "delivered" ? `${name} ✓` :
      fate.status === "dead_lettered" ? `${name} ✗` :
      `${name} –`;
    const sinkBadge = badge(`sink ${fate.status}`, text);
    sinkBadge.dataset.sink = name;
    sinkBadge.dataset.sinkStatus = fate.status;
    status.append(sinkBadge);
  }
}

function badge(kind, text) {
  const span = document.createElement("span");
  span.className = `badge ${kind}`;
  span.textContent = text;
  return span;
}

// --- the detail pane ----------------------------------------------------------------------

async function select(key) {
  state.selected = key;
  for (const element of document.querySelectorAll("#events tr.selected")) {
    element.classList.remove("selected");
  }
  const row = state.rows.get(key);
  if (!row) return;
  row.element.classList.add("selected");
  $("detail").hidden = false;
  await showDetail(row);
}

function scheduleDetailRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => {
    const row = state.rows.get(state.selected);
    if (row) showDetail(row);
  }, 300);
}

async function showDetail(row) {
  const pane = $("detail");
  pane.dataset.messageId = row.messageId ?? "";
  $("detail-title").textContent = row.messageId ? `messageId ${row.messageId}` : "a message without a messageId";
  let trace = null;
  if (row.messageId) {
    try {
      trace = await getJson(`trace/${encodeURIComponent(row.messageId)}`, state.token);
    } catch (error) {
      $("detail-summary").textContent = `No trace: ${error.message}`;
    }
  }
  if (state.selected !== row.key) return;
  const steps = trace ? trace.steps : row.records;
  $("detail-summary").textContent = trace ? trace.summary : "Refused before it had a messageId.";
  const sinks = $("detail-sinks");
  sinks.replaceChildren();
  for (const fate of trace ? trace.sinks : []) {
    const item = document.createElement("li");
    item.dataset.sink = fate.sink;
    item.dataset.status = fate.status;
    item.textContent =
      `${fate.kind} ${fate.sink}: ${fate.status.replace("_", " ")}` +
      (fate.failedAttempts ? ` (${fate.failedAttempts} failed attempt(s))` : "") +
      (fate.reason ? ` — ${fate.reason}` : "");
    sinks.append(item);
  }
  const timeline = $("detail-timeline");
  timeline.replaceChildren();
  for (const step of steps) {
    const item = document.createElement("li");
    item.dataset.stage = step.stage;
    item.dataset.status = step.status;
    const when = document.createElement("time");
    when.textContent = new Date(step.at).toISOString().slice(11, 23);
    const what = document.createElement("strong");
    what.textContent = `${step.stage} · ${step.status.replace("_", " ")}`;
    item.append(when, " ", what);
    if (step.sink) item.append(` · ${step.sinkKind || "destination"} ${step.sink}`);
    const why = [step.reason, step.detail].filter(Boolean).join(" — ");
    if (why) {
      const reason = document.createElement("div");
      reason.className = "why";
      reason.textContent = why;
      item.append(reason);
    }
    const process = document.createElement("span");
    process.className = "process";
    process.textContent = step.role;
    item.append(" ", process);
    timeline.append(item);
  }
  const payloads = $("detail-payloads");
  payloads.replaceChildren();
  for (const step of steps.filter((s) => s.payload !== undefined && s.payload !== null)) {
    const section = document.createElement("section");
    section.className = "payload";
    section.dataset.stage = step.stage;
    const title = document.createElement("h4");
    title.textContent =
      step.stage === "normalise" ? "As received (normalised)" :
      step.status === "rejected" ? `As sent (refused at ${step.stage})` :
      `After ${step.stage}`;
    if (step.payloadTruncated) title.textContent += ` — shortened from ${step.payloadSize} bytes`;
    section.append(title, tree(step.payload));
    payloads.append(section);
  }
}

// --- the connection indicator -------------------------------------------------------------

function setConnection(kind, text) {
  const element = $("connection");
  element.dataset.state = kind;
  element.textContent = text;
}

// --- wiring -------------------------------------------------------------------------------

function start() {
  state.chart = new Chart($("chart-sources"));
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (token) open(token);
  });
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    connect();
  });
  for (const id of ["filter-source", "filter-type", "filter-status"]) {
    $(id).addEventListener("change", () => connect());
  }
  $("clear").addEventListener("click", () => {
    for (const id of ["filter-source", "filter-type", "filter-event", "filter-user", "filter-status"]) {
      $(id).value = "";
    }
    connect();
  });
  $("pause").addEventListener("click", togglePause);
  $("forget").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showLogin();
  });
  $("detail-close").addEventListener("click", () => {
    state.selected = null;
    $("detail").hidden = true;
    for (const element of document.querySelectorAll("#events tr.selected")) {
      element.classList.remove("selected");
    }
  });
  setInterval(() => {
    if (state.token && !$("main").hidden) {
      loadSources();
      loadStatus();
    }
  }, 10000);
  if (state.token) open(state.token);
  else showLogin();
}

start();
