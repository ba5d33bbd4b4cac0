// The dashboard: history from /api/history, then a snapshot a second from /events
// (server-sent events). Every text from the broker is escaped before it reaches the page.
"use strict";

const SPAN = 600; // seconds of history the charts show
const NODE_ROWS = 1000; // rows of the nodes table rendered at most (the filter finds others)
const PRIORITY_COLOURS = ["#94a3b8", "#64748b", "#0ea5e9", "#0284c7", "#22c55e",
  "#16a34a", "#eab308", "#f97316", "#ef4444", "#b91c1c"];

const $ = (id) => document.getElementById(id);
const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (n, digits = 0) => n == null ? "–" :
  Number(n).toLocaleString("en-US", { maximumFractionDigits: digits });
const when = (unix) => new Date(unix * 1000).toLocaleTimeString();
const clock = (unix) => new Date(unix * 1000).toTimeString().slice(0, 8); // HH:MM:SS

let points = [];
let latest = null;
const charts = {};

function chartOptions(series, legend = true) {
  const width = Math.max(320, Math.min(640, Math.floor((window.innerWidth - 60) / 3) - 40));
  return {
    width, height: 200, legend: { show: legend },
    scales: { x: { time: true } },
    axes: [{ space: 70, values: (u, ticks) => ticks.map(clock) }, { size: 60 }],
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 1.5, spanGaps: false }))],
  };
}

function makeCharts() {
  charts.throughput = new uPlot(chartOptions([["tasks/s", "#2563eb"]]),
    [[], []], $("chart-throughput"));
  charts.latency = new uPlot(chartOptions(
    [["p50", "#16a34a"], ["p95", "#eab308"], ["p99", "#dc2626"]]), [[], [], [], []], $("chart-latency"));
  charts.queue = new uPlot(chartOptions(
    PRIORITY_COLOURS.map((colour, p) => [`priority ${p}`, colour]), false),
    [[], ...PRIORITY_COLOURS.map(() => [])], $("chart-queue"));
}

function redrawCharts() {
  const since = Date.now() / 1000 - SPAN;
  points = points.filter((p) => p.at >= since);
  const xs = points.map((p) => p.at);
  charts.throughput.setData([xs, points.map((p) => p.throughput)]);
  charts.latency.setData([xs, points.map((p) => p.p50), points.map((p) => p.p95),
    points.map((p) => p.p99)]);
  charts.queue.setData([xs, ...PRIORITY_COLOURS.map((_, priority) =>
    points.map((p) => (p.queued_by_priority || {})[String(priority)] || 0))]);
}

// The processes of one znode register from one host as NAME.0, NAME.1, ... (or NAME when
// it runs one): one row per znode, as `zbroker status` groups them.
function znodeName(name) {
  const match = /^(.+)\.(\d+)$/.exec(name);
  return match ? match[1] : name;
}

function groups(nodes) {
  const byKey = new Map();
  for (const node of nodes) {
    const key = `${znodeName(node.name)}\u0000${node.host}`;
    if (!byKey.has(key)) byKey.set(key, []);
    byKey.get(key).push(node);
  }
  return [...byKey.values()].sort((a, b) =>
    znodeName(a[0].name).localeCompare(znodeName(b[0].name)) || a[0].host.localeCompare(b[0].host));
}

function nodeRow(processes) {
  const first = processes[0];
  const sum = (key) => processes.reduce((total, n) => total + (n[key] || 0), 0);
  const busy = sum("busy"), slots = sum("capacity");
  const share = slots ? Math.min(1, busy / slots) : 0;
  const utilisation = processes.reduce((t, n) => t + (n.utilisation || 0) * n.capacity, 0) / (slots || 1);
  const seen = Math.max(...processes.map((n) => n.last_seen));
  const functions = [...new Set(processes.flatMap((n) => n.functions))].sort();
  const state = processes.some((n) => n.state === "draining") ? "draining" : "ready";
  const name = znodeName(first.name);
  return `<tr data-node="${esc(name)}"><td>${esc(name)}</td><td>${esc(first.host)}</td>` +
    `<td class="num" title="pids ${esc(processes.map((n) => n.pid).join(", "))}">${processes.length}</td>` +
    `<td>${esc(functions.join(", "))}</td>` +
    `<td><span class="bar${share >= 1 ? " full" : ""}"><span style="width:${(share * 100).toFixed(1)}%"></span></span> ${busy}/${slots}</td>` +
    `<td class="num">${(utilisation * 100).toFixed(0)} %</td>` +
    `<td class="num">${fmt(sum("completed"))}</td><td class="num">${fmt(sum("failed"))}</td>` +
    `<td class="num">${seen.toFixed(1)} s ago</td><td>${state}</td></tr>`;
}

function renderNodes(nodes) {
  const filter = $("node-filter").value.trim().toLowerCase();
  let rows = groups(nodes);
  if (filter) {
    rows = rows.filter((ps) => ps.some((n) =>
      n.name.toLowerCase().includes(filter) || n.host.toLowerCase().includes(filter) ||
      n.functions.some((f) => f.toLowerCase().includes(filter))));
  }
  const shown = rows.slice(0, NODE_ROWS);
  $("nodes").tBodies[0].innerHTML = shown.map((ps) => nodeRow(ps)).join("");
  $("nodes-more").textContent = rows.length > shown.length ?
    `${rows.length - shown.length} more znodes: narrow the filter to see them` :
    (rows.length ? "" : (nodes.length ? "no node matches the filter" : "no node registered"));
}

function renderFailures(failures) {
  $("failures").tBodies[0].innerHTML = failures.map((f) =>
    `<tr><td>${when(f.at)}</td><td>${esc(f.task_id)}</td><td>${esc(f.function)}</td>` +
    `<td class="num">${f.exit_code}</td><td class="num">${f.attempts}</td>` +
    `<td class="error">${esc(f.error)}</td></tr>`).join("") ||
    `<tr><td colspan="6" class="note">none</td></tr>`;
}

function renderDeadLetters(entries, total) {
  $("dead-count").textContent = fmt(total);
  $("dead-letters").tBodies[0].innerHTML = entries.map((e) => {
    const error = e.error ? `${e.error.type}: ${e.error.message}` : "";
    return `<tr><td>${when(e.failed_at)}</td><td>${esc(e.task_id)}</td><td>${esc(e.function)}</td>` +
      `<td class="num">${e.exit_code}</td><td class="num">${e.attempts}</td>` +
      `<td class="error">${esc(error)}</td><td>` +
      `<button type="button" data-act="replay" data-task="${esc(e.task_id)}">Replay</button> ` +
      `<button type="button" class="danger" data-act="purge" data-task="${esc(e.task_id)}">Purge</button></td></tr>`;
  }).join("") || `<tr><td colspan="7" class="note">empty</td></tr>`;
}

function render(snapshot) {
  latest = snapshot;
  $("broker-url").textContent = snapshot.broker;
  const state = $("broker-state");
  state.textContent = snapshot.error ? "not answering" : "up";
  state.className = "state " + (snapshot.error ? "down" : "up");
  state.title = snapshot.error || "";
  const status = snapshot.status;
  if (!status) return;
  const metrics = status.metrics || {};
  const point = snapshot.point || {};
  $("throughput").textContent = fmt(metrics.throughput_last_second, 1);
  $("throughput-minute").textContent = fmt(metrics.throughput_last_minute, 1);
  $("latency").textContent = `${fmt(point.p50, 1)} / ${fmt(point.p99, 1)}`;
  $("queued").textContent = fmt(status.queued);
  $("running").textContent = fmt(status.running);
  $("node-count").textContent = fmt(status.nodes.length);
  $("slots").textContent = `${fmt(point.busy_slots)}/${fmt(point.slots)}`;
  $("uptime").textContent = metrics.uptime == null ? "–" : `${fmt(metrics.uptime / 60, 1)} min`;
  renderNodes(status.nodes);
  renderFailures(metrics.recent_failures || []);
  renderDeadLetters(snapshot.dead_letters || [], snapshot.dead_letters_total || 0);
}

async function act(action, taskId) {
  const what = taskId ? `task ${taskId}` : "every dead letter";
  if (action === "purge" && !confirm(`Purge ${what}? It cannot be undone.`)) return;
  const response = await fetch(`/api/dlq/${action}`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(taskId ? { task_id: taskId } : {}),
  });
  const body = await response.json();
  $("dlq-message").textContent = !response.ok ? `error: ${body.error}` :
    action === "replay" ? `replayed ${body.replayed.length}` +
      (body.missing.length ? `, not found: ${body.missing.join(", ")}` : "") :
    `purged ${body.purged}`;
}

function listen() {
  const events = new EventSource("/events");
  events.addEventListener("snapshot", (event) => {
    const snapshot = JSON.parse(event.data);
    render(snapshot);
    if (snapshot.point && (!points.length || snapshot.point.at > points[points.length - 1].at)) {
      points.push(snapshot.point);
      redrawCharts();
    }
  });
  events.onerror = () => {
    const state = $("broker-state");
    state.textContent = "monitor unreachable";
    state.className = "state down";
  };
}

async function main() {
  makeCharts();
  $("node-filter").addEventListener("input", () => latest && latest.status && renderNodes(latest.status.nodes));
  $("replay-all").addEventListener("click", () => act("replay", null));
  $("purge-all").addEventListener("click", () => act("purge", null));
  $("dead-letters").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-act]");
    if (button) act(button.dataset.act, button.dataset.task);
  });
  try {
    points = await (await fetch(`/api/history?seconds=${SPAN}`)).json();
    redrawCharts();
  } catch (error) {
    points = [];
  }
  listen();
}

main();
