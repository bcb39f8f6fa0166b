// aquila monitor: polls the JSON API and redraws Plotly charts; controls enqueue commands.
"use strict";
// The access token travels in an HttpOnly cookie set by the page load that carried ?token=;
// this script never sees it.
const params = new URLSearchParams(location.search);
const interval = Math.max(200, Number(params.get("interval")) || 2000);
const state = { cursor: 0, rows: new Map(), sources: [], weights: {}, pending: null };
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];

function api(path, opts = {}) {
  return fetch(path.replace(/^\//, ""), Object.assign({ credentials: "same-origin" }, opts))
    .then(async (r) => {
      const body = await r.json().catch(() => ({}));
      if (r.status === 401) throw new Error("access token missing or stale: open the URL aquila monitor printed");
      if (!r.ok) throw new Error(body.error || r.statusText);
      return body;
    });
}

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text; t.style.display = "block";
  clearTimeout(toast.timer); toast.timer = setTimeout(() => (t.style.display = "none"), 4000);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    cells.forEach((c) => tr.appendChild(c instanceof Node ? wrapTd(c) : el("td", String(c))));
    return tr;
  }));
}
function wrapTd(node) { const td = el("td"); td.appendChild(node); return td; }

const layoutBase = (title, ytitle, extra = {}) => Object.assign({
  title: { text: title, font: { size: 13 } }, margin: { l: 55, r: 10, t: 30, b: 35 },
  xaxis: { title: { text: "step" } }, yaxis: { title: { text: ytitle } },
  legend: { orientation: "h", y: -0.25 }, uirevision: title,
}, extra);
const num = (v) => (typeof v === "number" ? v : null);

function drawCharts() {
  const rows = [...state.rows.values()].sort((a, b) => a.step - b.step);
  const x = rows.map((r) => r.step);
  const line = (name, key, extra = {}) => Object.assign(
    { x, y: rows.map((r) => num(r[key])), name, mode: "lines", type: "scatter" }, extra);
  const sources = [...new Set(rows.flatMap((r) => Object.keys(r.source_loss || {})))].sort();
  const loss = [line("loss", "loss", { line: { width: 3, color: "#222" } })].concat(
    sources.map((s) => ({ x, y: rows.map((r) => num((r.source_loss || {})[s])), name: s,
      mode: "lines", type: "scatter" })));
  Plotly.react("chart-loss", loss, layoutBase("Loss (overall and per source)", "nats/token"));
  Plotly.react("chart-grad", [line("grad norm", "grad_norm"),
    line("param norm", "param_norm", { yaxis: "y2" })],
    layoutBase("Gradient and parameter norm", "grad norm",
      { yaxis2: { overlaying: "y", side: "right", title: { text: "param norm" } } }));
  Plotly.react("chart-lr", [line("lr", "lr")], layoutBase("Learning rate", "lr"));
  Plotly.react("chart-throughput", [line("tokens/s", "tokens_per_s"),
    line("data wait (s)", "data_wait_s", { yaxis: "y2" })],
    layoutBase("Throughput", "tokens/s",
      { yaxis2: { overlaying: "y", side: "right", title: { text: "data wait s" } } }));
  Plotly.react("chart-mfu", [line("MFU", "mfu")],
    layoutBase("Model FLOPs utilisation", "MFU", { yaxis: { tickformat: ".1%" } }));
  document.getElementById("run-step").textContent = rows.length
    ? `step ${x[x.length - 1]} · loss ${Number(rows[rows.length - 1].loss).toFixed(4)}` : "no metrics yet";
}

// The headline metric of a task's results row: bits per byte for bpb tasks, else accuracy,
// exact match or pass@1.
const HEADLINE = ["bpb", "acc", "exact_match", "pass@1"];

function drawEvals(evals) {
  const bpb = {}, scores = {};
  const add = (series, name, step, y) => {
    if (typeof y === "number") (series[name] = series[name] || []).push([step, y]);
  };
  for (const e of evals) {
    if (e.task === "heldout-bpb") {
      for (const [lang, r] of Object.entries(e.data.languages || {})) add(bpb, `${lang} bpb`, e.step, r.bpb);
      continue;
    }
    // Task results, of `aquila eval RUN` and of the background evaluator alike (one row per
    // task name and checkpoint); older rows held the metrics at the top level.
    const m = e.data.metrics || e.data;
    const metric = HEADLINE.find((k) => typeof m[k] === "number");
    if (!metric) continue;
    add(metric === "bpb" ? bpb : scores, `${e.task} ${metric}`, e.step, m[metric]);
  }
  const traces = (series) => Object.entries(series).map(([name, pts]) => {
    pts.sort((a, b) => a[0] - b[0]);
    return { x: pts.map((p) => p[0]), y: pts.map((p) => p[1]), name, mode: "lines+markers" };
  });
  Plotly.react("chart-evals", traces(bpb), layoutBase("Bits per byte (checkpoints)", "bits/byte"));
  Plotly.react("chart-tasks", traces(scores), layoutBase("Task scores (checkpoints)", "score"));
}

function drawTrajectory(rows, summary) {
  const labels = [...new Set(rows.map((r) => r.label))];
  const colour = (l) => PALETTE[labels.indexOf(l) % PALETTE.length];
  const types = [...new Set(rows.map((r) => r.ptype))];
  const traces = types.map((t) => {
    const pts = rows.filter((r) => r.ptype === t && r.distance !== null);
    return { x: pts.map((r) => r.tokens), y: pts.map((r) => r.distance), name: t,
      mode: "lines+markers", text: pts.map((r) => `step ${r.step} · ${r.label}`),
      hovertemplate: `${t}: %{y:.4g} per 1B tokens<br>%{x:,} tokens · %{text}<extra></extra>`,
      marker: { size: 9, color: pts.map((r) => colour(r.label)), line: { width: 1, color: "#000" } } };
  });
  // Legend entries for the phases (the marker colours and the shaded spans).
  labels.forEach((l) => traces.push({ x: [null], y: [null], name: `phase: ${l}`, mode: "markers",
    marker: { size: 10, color: colour(l) } }));
  const phases = (summary && summary.phases) || [];
  const end = rows.length ? Math.max(...rows.map((r) => r.tokens)) : 0;
  const shapes = phases.map((p, i) => ({ type: "rect", xref: "x", yref: "paper", y0: 0, y1: 1,
    x0: p.from_tokens, x1: i + 1 < phases.length ? phases[i + 1].from_tokens : end,
    fillcolor: colour(p.phase), opacity: 0.12, line: { width: 0 }, layer: "below" }));
  Plotly.react("chart-trajectory", traces, layoutBase(
    "Weight trajectory: Fréchet distance of per-layer std curves per 1B tokens (colour: data phase)",
    "distance / 1B tokens", { shapes, xaxis: { title: { text: "tokens" } },
      yaxis: { type: "log", title: { text: "distance / 1B tokens" } } }));
  const note = document.getElementById("trajectory-summary");
  note.textContent = summary && Object.keys(summary.types || {}).length
    ? `${summary.verdict} (${summary.criterion}).` : "";
}

function drawMixture(mix) {
  const cur = mix.current;
  if (cur) {
    state.weights = cur.weights;
    document.getElementById("mixture-label").textContent = `in force: ${cur.label} (since step ${cur.step})`;
    const body = document.querySelector("#mixture-table tbody");
    const names = Object.keys(cur.weights).sort();
    if (names.join() !== state.sources.join()) {
      state.sources = names;
      body.replaceChildren(...names.map((n) => {
        const tr = el("tr"); tr.appendChild(el("td", n)); tr.appendChild(el("td", "", "now"));
        const inp = el("input"); inp.type = "number"; inp.step = "any"; inp.min = "0"; inp.name = n;
        inp.dataset.source = n; inp.value = cur.weights[n].toFixed(3);
        tr.appendChild(wrapTd(inp)); return tr;
      }));
    }
    body.querySelectorAll("tr").forEach((tr, i) => {
      tr.querySelector(".now").textContent = cur.weights[names[i]].toFixed(3);
    });
  }
  fillTable("mixture-history", mix.history.map((h) => [`step ${h.step}`, h.label,
    Object.entries(h.weights).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ")]));
  fillTable("commands", mix.commands.slice().reverse().map((c) => [c.id,
    `${c.kind} ${JSON.stringify(c.args)}`, c.status + (c.reason ? `: ${c.reason}` : ""), c.applied_step ?? ""]));
}

function drawEvents(events) {
  fillTable("events", events.slice().reverse().map((e) => {
    const msg = el("span", e.message, `sev-${e.severity}`);
    return [e.step, e.kind, msg];
  }));
}

function drawSuggestions(list) {
  const ul = document.getElementById("suggestions");
  ul.replaceChildren(...list.map((s) => {
    const li = el("li", s.message);
    if (s.command) {
      const b = el("button", "Apply…");
      b.addEventListener("click", () => confirmCommand(s.command.kind, s.command.args));
      li.appendChild(el("br")); li.appendChild(b);
    }
    return li;
  }));
  if (!list.length) ul.replaceChildren(el("li", "none right now"));
}

function confirmCommand(kind, args) {
  state.pending = { kind, args };
  document.getElementById("confirm-text").textContent = `${kind} ${JSON.stringify(args, null, 1)}`;
  document.getElementById("confirm").showModal();
}

document.getElementById("confirm").addEventListener("close", async (ev) => {
  const dialog = ev.target;
  const cmd = state.pending; state.pending = null;
  if (dialog.returnValue !== "ok" || !cmd) return;
  try {
    const r = await api("/api/command", { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(cmd) });
    toast(`command #${r.id} ${r.kind} enqueued`);
    refreshSlow();
  } catch (err) { toast(`not enqueued: ${err.message}`); }
});

document.getElementById("mixture-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const phase = document.getElementById("mixture-phase").value.trim();
  if (phase) return confirmCommand("set-phase", { name: phase });
  const weights = {};
  document.querySelectorAll("#mixture-table input").forEach((i) => { weights[i.dataset.source] = Number(i.value); });
  confirmCommand("set-mixture", { weights });
});
document.getElementById("lr-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const v = document.getElementById("lr-value").value, s = document.getElementById("lr-scale").value;
  if (v) confirmCommand("set-lr", { value: Number(v) });
  else if (s) confirmCommand("set-lr", { scale: Number(s) });
  else toast("give a value or a scale");
});
document.querySelectorAll(".buttons button").forEach((b) =>
  b.addEventListener("click", () => confirmCommand(b.dataset.kind, JSON.parse(b.dataset.args || "{}"))));

async function refreshMetrics() {
  const r = await api(`/api/metrics?after=${state.cursor}`);
  state.cursor = r.cursor;
  for (const row of r.rows) state.rows.set(row.step, row);
  if (r.rows.length || !refreshMetrics.drawn) { drawCharts(); refreshMetrics.drawn = true; }
}

async function refreshSlow() {
  const [summary, mix, events, evals, traj, sugg, settle] = await Promise.all(["/api/summary",
    "/api/mixture", "/api/events", "/api/evals", "/api/trajectory", "/api/suggestions",
    "/api/trajectory-summary"].map((p) => api(p)));
  document.getElementById("run-name").textContent = summary.name;
  document.getElementById("run-status").textContent = summary.status;
  drawMixture(mix); drawEvents(events); drawEvals(evals); drawTrajectory(traj, settle); drawSuggestions(sugg);
}

let tick = 0;
async function poll() {
  try {
    await refreshMetrics();
    if (tick++ % 3 === 0) await refreshSlow();
    document.getElementById("conn").textContent = "";
    document.body.dataset.ready = "1";
  } catch (err) {
    document.getElementById("conn").textContent = `⚠ ${err.message}`;
  }
  setTimeout(poll, interval);
}
if (typeof Plotly === "undefined") {
  document.querySelector(".charts").textContent = "plotly.min.js is missing: pip install plotly";
} else {
  poll();
}
