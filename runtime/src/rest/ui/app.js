// weir web UI: a job list, a job page (graph, subtasks and where they run,
// checkpoints, timeline, restarts) and the Task Managers (registered and
// lost), polling the REST API once a second. No build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
};
const SVG = "http://www.w3.org/2000/svg";
const sv = (tag, attrs = {}, text) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};

const state = { view: "jobs", jobId: null, selectedVertex: 0, selectedCheckpoint: null, followLatest: true, job: null, polls: 0 };
window.weir = state; // for tests and curious users

function rate(x) {
  if (!x) return "0";
  if (x >= 1e6) return (x / 1e6).toFixed(2) + " M";
  if (x >= 1e3) return (x / 1e3).toFixed(1) + " k";
  return x.toFixed(0);
}
function bytes(n) {
  if (n == null) return "-";
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " B";
}
function dur(ms) {
  if (ms == null || ms < 0) return "-";
  if (ms < 1000) return ms.toFixed(0) + " ms";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + Math.floor(s % 60) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}
function time(ts) {
  if (!ts || ts < 0) return "-";
  const d = new Date(ts);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}
// Milliseconds for an axis: enough decimals to tell ticks apart.
function axisMs(ms) {
  if (ms === 0) return "0";
  if (ms >= 1000) return dur(ms);
  if (ms >= 10) return ms.toFixed(0) + " ms";
  if (ms >= 1) return ms.toFixed(1) + " ms";
  return ms.toFixed(2) + " ms";
}
function pct(x) { return (100 * x).toFixed(0) + "%"; }
function level(ratio) { return ratio <= 0.1 ? "ok" : ratio <= 0.5 ? "low" : "high"; }
function bar(ratio) {
  const i = el("i", { class: level(ratio) });
  i.style.width = Math.min(100, Math.max(0, 100 * ratio)).toFixed(0) + "%";
  return el("span", { class: "bar" }, i);
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, opts);
  let json = null;
  try { json = await r.json(); } catch (_) { /* empty body */ }
  if (!r.ok) {
    const msg = json && json.errors ? json.errors.join("; ") : r.status + " " + r.statusText;
    throw new Error(msg);
  }
  return json;
}

function toast(msg, isError) {
  const t = $("#toast");
  t.hidden = false;
  t.textContent = msg;
  t.className = "toast" + (isError ? " error" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}

// ---------- job list ----------

async function renderJobs() {
  const data = await api("GET", "/jobs/overview");
  const body = $("#jobs tbody");
  body.replaceChildren();
  for (const j of data.jobs) {
    body.append(el("tr", {},
      el("td", {}, el("a", { href: "#/jobs/" + j.jid }, j.name)),
      el("td", {}, el("code", {}, j.jid)),
      el("td", {}, el("span", { class: "badge " + j.state }, j.state)),
      el("td", {}, new Date(j["start-time"]).toLocaleString()),
      el("td", {}, dur(j.duration)),
      el("td", {}, j.tasks.total)));
  }
  $("#jobs-empty").hidden = data.jobs.length > 0;
  // One running job and no choice made yet: open it.
  if (!location.hash && data.jobs.length === 1) location.hash = "#/jobs/" + data.jobs[0].jid;
}

// ---------- task managers ----------

async function renderTaskManagers() {
  const data = await api("GET", "/taskmanagers");
  const tms = data.taskmanagers;
  const body = $("#taskmanagers tbody");
  body.replaceChildren();
  let used = 0, total = 0;
  for (const t of tms) {
    used += t.slotsUsed; total += t.slotsNumber;
    const subtasks = el("div", { class: "subtasklist" });
    for (const s of t.subtasks) {
      subtasks.append(el("a", { href: "#/jobs/" + s.jid, title: s.jid }, el("code", {}, s.name)));
    }
    if (!t.subtasks.length) subtasks.append(el("span", { class: "muted" }, "none (spare)"));
    body.append(el("tr", { "data-id": t.id },
      el("td", {}, el("code", {}, t.id)),
      el("td", {}, t.dataAddress || "in this process"),
      el("td", {}, t.pid),
      el("td", {}, `${t.slotsUsed} / ${t.slotsNumber}`),
      el("td", {}, dur(t.lastHeartbeatAge) + " ago"),
      el("td", {}, time(t.registeredTime)),
      el("td", { class: "wrap" }, subtasks)));
  }
  $("#taskmanagers-empty").hidden = tms.length > 0;
  $("#tm-summary").textContent = `${tms.length} registered · ${used} of ${total} slots in use`;
  const lost = data.lost || [];
  const lb = $("#lost-taskmanagers tbody");
  lb.replaceChildren();
  for (const l of lost) {
    lb.append(el("tr", {},
      el("td", {}, time(l.timestamp)),
      el("td", {}, el("code", {}, l.id)),
      el("td", {}, l.pid == null ? "-" : l.pid),
      el("td", {}, l.dataAddress),
      el("td", {}, el("a", { href: "#/jobs/" + l.jid }, el("code", {}, l.jid))),
      el("td", { class: "wrap" }, l.cause || "-"),
      el("td", { class: "wrap" }, l.failure || "-")));
  }
  $("#lost-empty").hidden = lost.length > 0;
}

// ---------- job page ----------

function layout(job) {
  // Column of each vertex: the longest path from a source.
  const n = job.vertices.length;
  const inputs = job.plan.nodes.map((node) => node.inputs.map((i) => job.vertices.findIndex((v) => v.id === i.id)));
  const col = new Array(n).fill(0);
  for (let i = 0; i < n; i++) for (const u of inputs[i]) if (u >= 0) col[i] = Math.max(col[i], col[u] + 1);
  const rows = {};
  const pos = col.map((c) => { rows[c] = (rows[c] || 0) + 1; return [c, rows[c] - 1]; });
  return { inputs, pos, rows };
}

function renderGraph(job) {
  const svg = $("#graph");
  const W = 230, H = 92, GX = 90, GY = 26, PAD = 14;
  const { inputs, pos, rows } = layout(job);
  const cols = Math.max(...pos.map((p) => p[0])) + 1;
  const maxRows = Math.max(...Object.values(rows));
  const width = PAD * 2 + cols * W + (cols - 1) * GX;
  const height = PAD * 2 + maxRows * H + (maxRows - 1) * GY;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const defs = sv("defs");
  const marker = sv("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
  marker.append(sv("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#9aa5b8" }));
  defs.append(marker);
  svg.append(defs);
  const xy = (i) => {
    const [c, r] = pos[i];
    const colRows = rows[c];
    const offset = (maxRows - colRows) * (H + GY) / 2;
    return [PAD + c * (W + GX), PAD + offset + r * (H + GY)];
  };
  job.plan.nodes.forEach((node, i) => {
    node.inputs.forEach((inp, k) => {
      const u = inputs[i][k];
      if (u < 0) return;
      const [x1, y1] = xy(u), [x2, y2] = xy(i);
      const ax = x1 + W, ay = y1 + H / 2, bx = x2 - 2, by = y2 + H / 2;
      const mx = (ax + bx) / 2;
      svg.append(sv("path", { class: "edge", d: `M ${ax} ${ay} C ${mx} ${ay}, ${mx} ${by}, ${bx} ${by}`, "marker-end": "url(#arrow)" }));
      svg.append(sv("text", { class: "ship", x: mx, y: (ay + by) / 2 - 5, "text-anchor": "middle" }, inp.ship_strategy));
    });
  });
  job.vertices.forEach((v, i) => {
    const [x, y] = xy(i);
    const worst = Math.max(0, ...v.subtasks.map((s) => s.backPressuredTimeMsPerSecond / 1000));
    const g = sv("g", { class: "vertex" + (i === state.selectedVertex ? " selected" : ""), transform: `translate(${x},${y})`, "data-vertex": i });
    g.addEventListener("click", () => { state.selectedVertex = i; renderGraph(state.job); renderSubtasks(state.job); });
    g.append(sv("rect", { class: "box", width: W, height: H, rx: 8 }));
    const name = v.name.length > 30 ? v.name.slice(0, 29) + "…" : v.name;
    const title = sv("title", {}, v.name);
    g.append(title);
    g.append(sv("text", { class: "name", x: 12, y: 21 }, name));
    g.append(sv("text", { class: "dim", x: W - 12, y: 21, "text-anchor": "end" }, "×" + v.parallelism));
    g.append(sv("text", { x: 12, y: 42 }, `in ${rate(v.numRecordsInPerSecond)}/s · out ${rate(v.numRecordsOutPerSecond)}/s`));
    const total = v.operators.reduce((a, o) => a + o.numRecordsOut, 0);
    title.textContent = `${v.name}\nrecords out: ${total}`;
    const lvl = level(worst);
    g.append(sv("text", { class: "dim", x: 12, y: 62 }, "back pressure"));
    const colors = { ok: "#2e9d5b", low: "#e0a526", high: "#d64545" };
    g.append(sv("rect", { x: 12, y: 70, width: W - 24, height: 8, rx: 4, fill: "#edf0f5" }));
    g.append(sv("rect", { x: 12, y: 70, width: Math.max(3, (W - 24) * Math.min(1, worst)), height: 8, rx: 4, fill: colors[lvl] }));
    g.append(sv("text", { class: "dim", x: W - 12, y: 62, "text-anchor": "end" }, `${pct(worst)} · ${lvl}`));
    svg.append(g);
  });
}

function renderSubtasks(job) {
  const v = job.vertices[state.selectedVertex] || job.vertices[0];
  if (!v) return;
  $("#subtasks-title").textContent = "Subtasks of " + v.name;
  const body = $("#subtasks tbody");
  body.replaceChildren();
  const killable = !["FINISHED", "FAILED", "CANCELED"].includes(job.state);
  const op = v.operators[0] ? v.operators[0].name : v.name;
  for (const s of v.subtasks) {
    const bp = s.backPressuredTimeMsPerSecond / 1000;
    const kill = el("button", { class: "kill", "data-op": op, "data-index": s.subtask, title: "kill this subtask: the job restarts it from the latest checkpoint" }, "Kill");
    kill.disabled = !killable;
    kill.addEventListener("click", () => killSubtask(op, s.subtask));
    const host = el("a", { href: "#/taskmanagers", title: s["taskmanager-id"] ? "TaskManager " + s["taskmanager-id"] : "" }, s.host || "-");
    body.append(el("tr", {},
      el("td", {}, s.subtask),
      el("td", { class: "host" }, host),
      el("td", {}, rate(s.numRecordsInPerSecond)),
      el("td", {}, rate(s.numRecordsOutPerSecond)),
      el("td", {}, pct(s.busyTimeMsPerSecond / 1000)),
      el("td", {}, bar(bp), pct(bp)),
      el("td", {}, bar(s.outPoolUsage), pct(s.outPoolUsage)),
      el("td", {}, bar(s.inPoolUsage), pct(s.inPoolUsage)),
      el("td", {}, dur(s.checkpointAlignmentTime / 1e6)),
      el("td", {}, kill)));
  }
}

function renderHead(job) {
  $("#job-name").textContent = job.name;
  const st = $("#job-state");
  st.textContent = job.state;
  st.className = "badge " + job.state;
  $("#job-id").textContent = job.jid;
  $("#uptime").textContent = dur(job.duration);
  $("#restarts").textContent = job.numRestarts;
  const ended = ["FINISHED", "FAILED", "CANCELED"].includes(job.state);
  $("#btn-checkpoint").disabled = ended || !job.checkpointing;
  $("#btn-savepoint").disabled = ended;
  $("#btn-cancel").disabled = ended || job.state === "CANCELLING";
}

function renderCheckpoints(c) {
  $("#ckpt-completed").textContent = c.counts.completed;
  $("#ckpt-failed").textContent = c.counts.failed;
  const last = c.latest.completed;
  $("#ckpt-last").textContent = last ? `#${last.id} · ${dur(last.end_to_end_duration)} · ${bytes(last.checkpointed_size)}` : "-";
  $("#ckpt-counts").textContent = `${c.counts.total} triggered · ${c.counts.in_progress} in progress · ${c.counts.restored} restored`;
  const body = $("#checkpoints tbody");
  body.replaceChildren();
  if (state.followLatest) {
    const pick = c.history.find((h) => h.status !== "FAILED") || c.history[0];
    state.selectedCheckpoint = pick ? pick.id : null;
  }
  for (const h of c.history) {
    const tr = el("tr", { "data-id": h.id, class: h.id === state.selectedCheckpoint ? "selected" : "" },
      el("td", {}, h.id),
      el("td", {}, el("span", { class: "st " + h.status, title: h.failure_message || "" }, h.status.replace("_", " ").toLowerCase())),
      el("td", {}, h.checkpoint_type === "UNALIGNED_CHECKPOINT" ? "unaligned" : h.is_savepoint ? "savepoint" : "aligned"),
      el("td", {}, time(h.trigger_timestamp)),
      el("td", {}, dur(h.end_to_end_duration)),
      el("td", {}, bytes(h.checkpointed_size)),
      el("td", {}, bytes(h.persisted_data)),
      el("td", {}, `${h.num_acknowledged_subtasks}/${h.num_subtasks}`));
    tr.addEventListener("click", () => {
      state.selectedCheckpoint = h.id;
      state.followLatest = false;
      renderCheckpoints(c);
      refreshTimeline();
    });
    body.append(tr);
  }
  $("#checkpoints-empty").hidden = c.history.length > 0;
}

async function refreshTimeline() {
  const id = state.selectedCheckpoint;
  const svg = $("#timeline");
  if (id == null) { svg.replaceChildren(); svg.setAttribute("height", 0); return; }
  let d;
  try { d = await api("GET", `/jobs/${state.jobId}/checkpoints/details/${id}`); } catch (e) { return; }
  $("#timeline-title").textContent = `checkpoint ${d.id} · ${d.status.toLowerCase().replace("_", " ")} · ${dur(d.end_to_end_duration)}` + (d.failure_message ? " · " + d.failure_message : "");
  const rows = [];
  for (const t of Object.values(d.tasks)) for (const s of t.subtasks) rows.push({ name: `${t.name} (${s.index})`, s });
  const LABEL = 190, ROW = 22, TOP = 22, RIGHT = 80;
  const width = Math.max(420, svg.clientWidth || 600);
  const done = rows.filter((r) => r.s.durations_us);
  const span = Math.max(1, ...done.map((r) => r.s.durations_us.end_to_end / 1000), ...done.map((r) => (r.s.durations_us.start_delay + r.s.durations_us.alignment + r.s.durations_us.sync + r.s.durations_us.async) / 1000));
  const scale = (width - LABEL - RIGHT) / span;
  svg.setAttribute("height", TOP + rows.length * ROW + 6);
  svg.replaceChildren();
  for (let k = 0; k <= 4; k++) {
    const x = LABEL + (width - LABEL - RIGHT) * k / 4;
    svg.append(sv("line", { class: "grid", x1: x, x2: x, y1: TOP - 4, y2: TOP + rows.length * ROW }));
    svg.append(sv("text", { class: "dim", x, y: 12, "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle" }, axisMs(span * k / 4)));
  }
  rows.forEach((r, i) => {
    const y = TOP + i * ROW;
    svg.append(sv("text", { x: 0, y: y + 14 }, r.name.length > 30 ? r.name.slice(0, 29) + "…" : r.name));
    if (!r.s.durations_us) {
      svg.append(sv("text", { class: "dim", x: LABEL, y: y + 14 }, "pending or failed"));
      return;
    }
    let x = LABEL;
    const u = r.s.durations_us;
    for (const [cls, v, what] of [["delay", u.start_delay, "start delay"], ["align", u.alignment, "alignment"], ["sync", u.sync, "sync snapshot"], ["async", u.async, "async upload"]]) {
      const w = Math.max(cls === "delay" ? 0 : 1.5, v / 1000 * scale);
      const rect = sv("rect", { class: cls, x, y: y + 4, width: w, height: ROW - 8, rx: 2 });
      rect.append(sv("title", {}, `${what}: ${(v / 1000).toFixed(2)} ms`));
      svg.append(rect);
      x += w;
    }
    svg.append(sv("text", { class: "dim", x: x + 6, y: y + 14 }, `${bytes(r.s.state_size)}${r.s.unaligned_checkpoint ? " · unaligned" : ""}`));
  });
}

function renderExceptions(ex, regions) {
  const body = $("#exceptions tbody");
  body.replaceChildren();
  for (const e of ex.exceptionHistory.entries) {
    body.append(el("tr", {},
      el("td", {}, time(e.timestamp)),
      el("td", {}, e.taskName || "-", ...(e.taskManagerId
        ? [el("br"), el("a", { class: "muted small lost-tm", href: "#/taskmanagers", title: "TaskManager " + e.taskManagerId }, "lost TaskManager " + (e.endpoint || e.taskManagerId))]
        : [])),
      el("td", {}, e.action || "-"),
      el("td", { class: "wrap" }, e.stacktrace,
        ...(e.concurrentExceptions || []).map((c) => el("div", { class: "muted concurrent" }, c.stacktrace)))));
  }
  $("#exceptions-empty").hidden = ex.exceptionHistory.entries.length > 0;
  $("#failover").textContent = `failover strategy: ${regions["failover-strategy"]} · ${regions.numRestarts} restarts`;
  const rb = $("#regions tbody");
  rb.replaceChildren();
  for (const r of regions.regions) {
    rb.append(el("tr", {},
      el("td", {}, r.index),
      el("td", { class: "wrap" }, r.subtasks.join(", ")),
      el("td", {}, r.restarts)));
  }
}

async function renderJob() {
  const id = state.jobId;
  const [job, ckpts, ex, regions] = await Promise.all([
    api("GET", `/jobs/${id}`),
    api("GET", `/jobs/${id}/checkpoints`),
    api("GET", `/jobs/${id}/exceptions`),
    api("GET", `/jobs/${id}/regions`),
  ]);
  if (id !== state.jobId) return;
  state.job = job;
  renderHead(job);
  renderGraph(job);
  renderSubtasks(job);
  renderCheckpoints(ckpts);
  renderExceptions(ex, regions);
  await refreshTimeline();
  state.polls++;
}

async function killSubtask(op, index) {
  try {
    await api("POST", `/jobs/${state.jobId}/subtasks/${encodeURIComponent(op)}/${index}/kill`);
    toast(`Killed ${op} (${index}): the job restarts it from its latest checkpoint.`);
  } catch (e) { toast("Kill failed: " + e.message, true); }
  tick();
}

async function triggerCheckpoint() {
  try {
    const r = await api("POST", `/jobs/${state.jobId}/checkpoints`);
    state.followLatest = true;
    toast(`Checkpoint ${r["checkpoint-id"]} triggered.`);
  } catch (e) { toast("Checkpoint failed: " + e.message, true); }
  tick();
}

async function triggerSavepoint() {
  try {
    await api("POST", `/jobs/${state.jobId}/savepoints`, {});
    toast("Savepoint triggered.");
  } catch (e) { toast("Savepoint: " + e.message, true); }
}

async function cancelJob() {
  try {
    await api("PATCH", `/jobs/${state.jobId}?mode=cancel`);
    toast("Cancel requested.");
  } catch (e) { toast("Cancel failed: " + e.message, true); }
  tick();
}

function route() {
  const m = location.hash.match(/^#\/jobs\/([0-9a-f]{32})/);
  const id = m ? m[1] : null;
  state.view = id ? "job" : /^#\/taskmanagers/.test(location.hash) ? "taskmanagers" : "jobs";
  if (id !== state.jobId) {
    state.jobId = id;
    state.selectedVertex = 0;
    state.selectedCheckpoint = null;
    state.followLatest = true;
    state.polls = 0;
  }
  $("#jobs-view").hidden = state.view !== "jobs";
  $("#job-view").hidden = state.view !== "job";
  $("#tm-view").hidden = state.view !== "taskmanagers";
  $("#nav-jobs").className = state.view === "taskmanagers" ? "" : "active";
  $("#nav-taskmanagers").className = state.view === "taskmanagers" ? "active" : "";
  tick();
}

let busy = false;
async function tick() {
  if (busy) return;
  busy = true;
  try {
    if (state.view === "job") await renderJob();
    else if (state.view === "taskmanagers") await renderTaskManagers();
    else await renderJobs();
    $("#conn").className = "conn ok";
    $("#conn").textContent = "live";
  } catch (e) {
    $("#conn").className = "conn down";
    $("#conn").textContent = "offline";
    console.error(e);
  } finally {
    busy = false;
  }
}

$("#btn-checkpoint").addEventListener("click", triggerCheckpoint);
$("#btn-savepoint").addEventListener("click", triggerSavepoint);
$("#btn-cancel").addEventListener("click", cancelJob);
window.addEventListener("hashchange", route);
route();
setInterval(tick, 1000);
