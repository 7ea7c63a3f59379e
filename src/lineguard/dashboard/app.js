// The LineGuard station dashboard: one page over the station's own API (docs/dashboard.md).
//
// Safe as a page: every value from the API is put in the page with textContent or as a checked number
// in a URL, never as HTML; no inline script or style (the server's Content-Security-Policy forbids them);
// writes send the token as a Bearer header and JSON, never in a URL. The token lives in sessionStorage:
// it survives a reload of this tab, is gone when the tab closes, is not shared with other tabs and is
// never sent by the browser on its own (a cookie would be: cross-site requests could ride on it).
//
// Light on a Pi: new decisions are polled every 2 s with after_id (only the new rows travel), the
// summary and health every 6 s with If-None-Match (an unchanged summary is a bodyless 304 and nothing is
// redrawn), thumbnails are scaled down by the station and cached; polling stops while the tab is hidden.

import { bars, empty, histogram, timeline } from "./charts.js";

const TOKEN_KEY = "lineguard.token";
const POLL_MS = 2000;
const SLOW_EVERY = 3; // summary and health every 3rd poll
const LIVE_MAX = 24;
const QUEUE_MAX = 24;
const THUMB = 200;

const $ = (id) => document.getElementById(id);

const state = {
  lastId: null,
  rows: [], // newest first, at most LIVE_MAX
  filter: "all",
  summary: null,
  summaryTag: null,
  health: null,
  labelled: new Set(), // prediction ids with feedback (from the summary and this session)
  queue: [], // sampled frames waiting for a label, newest first
  reviewing: null,
  detail: null,
  ticks: 0,
  pending: null, // an action waiting for a login
};

// --- small DOM helpers (text only) -------------------------------------------------------------------

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function show(node, visible) {
  node.classList.toggle("hidden", !visible);
}

function dl(node, pairs) {
  clear(node);
  for (const [k, v] of pairs) {
    node.append(h("dt", { text: k }), h("dd", { text: v === null || v === undefined || v === "" ? "–" : String(v) }));
  }
}

function table(headers, rows) {
  const t = h("table");
  t.append(h("thead", {}, h("tr", {}, ...headers.map((x) => h("th", { text: x })))));
  const body = h("tbody");
  for (const r of rows) body.append(h("tr", {}, ...r.map((x) => h("td", { text: x === null || x === undefined ? "–" : String(x) }))));
  t.append(body);
  return t;
}

const pct = (x) => (x === null || x === undefined || Number.isNaN(x) ? "–" : `${(100 * x).toFixed(1)} %`);
const num = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const interval = (iv) => (Array.isArray(iv) ? `[${pct(iv[0])}, ${pct(iv[1])}]` : "");
const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");
const stamp = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
const bytes = (n) => (n === null || n === undefined ? "–" : n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`);
const recipeName = (r) => (r === null || r === undefined || r === "" ? "(none)" : r);

function imageUrl(id, thumb) {
  const n = Number(id);
  if (!Number.isInteger(n) || n < 1) return null;
  return `/v1/predictions/${n}/image${thumb ? `?thumb=${thumb}` : ""}`;
}

// --- the API ----------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.reason = body && body.reason;
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY);

async function api(path, { method = "GET", body = undefined, etag = null, auth = false, tokenOverride = null } = {}) {
  const headers = { Accept: "application/json" };
  if (etag) headers["If-None-Match"] = etag;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const t = tokenOverride || (auth ? token() : null);
  if (t) headers.Authorization = `Bearer ${t}`;
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store", credentials: "omit", redirect: "error" });
  if (resp.status === 304) return { status: 304, etag };
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return { status: resp.status, data, etag: resp.headers.get("ETag") };
}

// A write: needs the token; without one (or with a refused one) the login opens and the write runs after it.
async function write(path, body) {
  if (!token()) return askLogin(() => write(path, body), "Log in to do this.");
  try {
    return (await api(path, { method: "POST", body, auth: true })).data;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      renderLogin();
      return askLogin(() => write(path, body), "The token was refused; log in again.");
    }
    throw err;
  }
}

// --- login ------------------------------------------------------------------------------------------

function renderLogin() {
  $("login-button").textContent = token() ? "Log out" : "Log in";
}

function askLogin(then, message = "") {
  return new Promise((resolve, reject) => {
    state.pending = { then, resolve, reject };
    $("login-status").textContent = message;
    $("login-token").value = "";
    $("login").showModal();
    $("login-token").focus();
  });
}

async function submitLogin(event) {
  event.preventDefault();
  const value = $("login-token").value.trim();
  if (value.length < 16) { $("login-status").textContent = "A token has at least 16 characters."; return; }
  $("login-status").textContent = "Checking…";
  try {
    await api("/v1/auth", { method: "POST", body: {}, tokenOverride: value });
  } catch (err) {
    $("login-status").textContent = err.status === 401 ? "This token is not the station's." : `Could not check it: ${err.message}`;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, value);
  $("login-token").value = "";
  $("login").close();
  renderLogin();
  const pending = state.pending;
  state.pending = null;
  if (pending) pending.then().then(pending.resolve, pending.reject);
}

function cancelLogin() {
  const pending = state.pending;
  state.pending = null;
  if (pending) pending.reject(new Error("not logged in"));
}

// --- live decisions -----------------------------------------------------------------------------------

function card(row, { small = false, onpick = null } = {}) {
  const rejected = row.decision === "reject";
  const li = h("li", { class: `card ${rejected ? "reject" : "accept"}`, dataset: { id: String(row.id) } });
  const button = h("button", { type: "button", class: "card-button", "aria-label": `frame ${Number(row.id)}` });
  const url = row.image ? imageUrl(row.id, small ? 120 : THUMB) : null;
  if (url) button.append(h("img", { src: url, alt: "", loading: "lazy", decoding: "async" }));
  else button.append(h("div", { class: "noimg", text: "no image kept" }));
  button.append(
    h("span", { class: `badge ${rejected ? "reject" : "accept"}`, text: rejected ? "REJECT" : "PASS" }),
    h("span", { class: "score", text: `score ${num(row.score, 3)}` }),
    h("span", { class: "recipe", text: recipeName(row.recipe) }),
    h("span", { class: "time muted", text: `${clock(row.time)} · #${Number(row.id)}` }),
  );
  if (state.labelled.has(row.id)) button.append(h("span", { class: "labelled", text: "labelled" }));
  button.addEventListener("click", () => (onpick ? onpick(row) : openDetail(row.id)));
  li.append(button);
  return li;
}

function renderLive() {
  const list = $("live-list");
  clear(list);
  const rows = state.rows.filter((r) => state.filter === "all" || r.decision === state.filter);
  for (const r of rows) list.append(card(r));
  show($("live-empty"), !rows.length);
}

function addRows(rows) {
  if (!rows.length) return;
  for (const r of rows) {
    state.lastId = Math.max(state.lastId || 0, r.id);
    if (r.image && !state.labelled.has(r.id) && !state.queue.some((q) => q.id === r.id)) state.queue.unshift(r);
  }
  state.rows = rows.slice().reverse().concat(state.rows).slice(0, LIVE_MAX);
  state.queue = state.queue.slice(0, QUEUE_MAX);
  renderLive();
  renderQueue();
}

async function pollPredictions() {
  if (state.lastId === null) return;
  const r = await api(`/v1/predictions?after_id=${state.lastId}&limit=100`);
  addRows(r.data.items || []);
}

// --- the summary --------------------------------------------------------------------------------------

function tile(label, value, note = "", cls = "") {
  return h("div", { class: `tile ${cls}` }, h("span", { class: "tile-label", text: label }),
    h("span", { class: "tile-value", text: value }), h("span", { class: "tile-note muted", text: note }));
}

function renderTiles(s) {
  const t = $("tiles");
  clear(t);
  const c = s.counts;
  t.append(tile("Inspected", String(c.inspected), s.first_time ? `since ${stamp(s.first_time)}` : "nothing yet"),
    tile("Rejected", String(c.rejected), recipeName(s.recipe)),
    tile("Reject rate", pct(c.reject_rate), s.complete ? "" : `still reading the store back (${s.rows} decisions so far)`));
  const e = s.estimate;
  t.append(e.available
    ? tile("Estimated balanced accuracy", pct(e.balanced_accuracy), e.trustworthy ? interval(e.balanced_accuracy_interval) : "not trustworthy now: drift", e.trustworthy ? "" : "warn")
    : tile("Estimated balanced accuracy", "–", e.reason || ""));
  const f = s.feedback;
  t.append(f.available
    ? tile("Feedback accuracy", pct(f.measured.balanced_accuracy), `${f.n} labels`)
    : tile("Feedback accuracy", "–", f.reason || ""));
  const d = s.drift;
  t.append(d.available
    ? tile("Drift", d.in_distribution ? "in distribution" : "ALARM", `${d.alarms_total || 0} alarms`, d.in_distribution ? "" : "bad")
    : tile("Drift", "not available", "no monitor on this station"));
}

function renderQuality(s) {
  bars($("chart-recipe"), s.counts.per_recipe.map((r) => ({ label: recipeName(r.recipe), value: r.reject_rate, note: `${r.rejected}/${r.inspected}` })),
    { label: "reject rate per recipe" });
  bars($("chart-shift"), s.counts.per_shift.map((r) => ({ label: r.shift, value: r.reject_rate, note: `${r.rejected}/${r.inspected}` })),
    { label: "reject rate per shift" });
  const sc = s.scores;
  const ref = sc.reference.available ? sc.reference.counts : null;
  $("hist-note").textContent = `bars: the last ${sc.n} frames; line: the bundle's ${sc.reference.available ? sc.reference.split + " split" : "reference (not shipped)"}`;
  histogram($("chart-hist"), sc.edges, sc.counts, ref, { label: "confidence histogram against the reference" });

  const acc = $("accuracy");
  clear(acc);
  const e = s.estimate, f = s.feedback;
  const rows = [];
  const fe = f.available ? f.estimated : null, fm = f.available ? f.measured : null;
  rows.push(["balanced accuracy", e.available ? `${pct(e.balanced_accuracy)} ${interval(e.balanced_accuracy_interval)}` : "–",
    fe ? pct(fe.balanced_accuracy) : "–", fm ? `${pct(fm.balanced_accuracy)} ${interval(fm.balanced_accuracy_interval)}` : "–"]);
  rows.push(["false-reject rate", e.available ? pct(e.false_reject_rate) : "–", fe ? pct(fe.false_reject_rate) : "–", fm ? pct(fm.false_reject_rate) : "–"]);
  rows.push(["escape rate", e.available ? pct(e.escape_rate) : "–", fe ? pct(fe.escape_rate) : "–", fm ? pct(fm.escape_rate) : "–"]);
  acc.append(table(["", `estimated (last ${e.available ? e.n : 0} frames)`, "estimated (labelled frames)", `feedback (${f.n || 0} labels)`], rows));
  if (e.available && !e.trustworthy) acc.append(h("p", { class: "warn", text: e.reason }));
  if (!e.available) acc.append(h("p", { class: "muted", text: `Estimate: ${e.reason}` }));
  if (!f.available) acc.append(h("p", { class: "muted", text: `Feedback: ${f.reason}` }));
  if (f.available && f.concept_drift) {
    const cd = f.concept_drift;
    acc.append(h("p", { class: cd.flagged ? "bad" : "muted", text: cd.flagged ? `Concept drift: ${cd.reason}` : `No concept drift (${cd.reason})` }));
  }
  if (e.available && e.per_recipe && e.per_recipe.length) {
    acc.append(table(["recipe", "frames", "estimated balanced accuracy"],
      e.per_recipe.map((r) => [recipeName(r.recipe), r.n, `${pct(r.balanced_accuracy)} ${interval(r.balanced_accuracy_interval)}`])));
  }

  const k = s.kpi;
  const kpi = $("kpi");
  clear(kpi);
  const cost = k.cost || {};
  $("kpi-note").textContent = `cost per false reject ${num(cost.false_reject)}, per escape ${num(cost.missed_defect)} (the bundle's cost matrix). ${k.note || ""}`;
  if (!k.available) { empty(kpi, k.reason || "No data yet."); } else {
    const head = ["", "inspected", "rejected", "reject rate", "exp. escapes", "exp. false rejects", "exp. cost", "feedback", "counted cost"];
    const line = (name, r) => [name, r.inspected, r.rejected, pct(r.reject_rate), num(r.expected_escapes, 1),
      num(r.expected_false_rejects, 1), num(r.expected_cost, 1), r.feedback, num(r.counted_cost, 1)];
    kpi.append(h("h3", { text: "per recipe" }), table(head, k.per_recipe.map((r) => line(recipeName(r.recipe), r))));
    kpi.append(h("h3", { text: "per shift" }), table(head, k.per_shift.map((r) => line(r.shift, r))));
    kpi.append(h("h3", { text: "per bundle version" }), table(head, k.per_version.map((r) => line(r.bundle_version, r))));
  }

  const m = s.model;
  const box = $("model-box");
  clear(box);
  const mdl = h("dl");
  dl(mdl, [["name", m.name], ["version", m.version], ["digest", (m.digest || "").slice(0, 19)], ["signed by", m.signed_by || "unsigned"],
    ["swaps since start", m.generation], ["classes", (m.classes || []).join(", ")], ["default threshold", num(m.default_threshold, 3)],
    ...Object.entries(m.thresholds || {}).map(([r, t]) => [`threshold ${r}`, num(t, 3)])]);
  box.append(mdl);

  const sh = s.shadow;
  const sbox = $("shadow-box");
  clear(sbox);
  if (!sh.available) empty(sbox, sh.reason || "not available");
  else {
    const sdl = h("dl");
    const ch = sh.challenger || {};
    const flips = sh.flips || {};
    dl(sdl, [["challenger", `${ch.name || ""} ${ch.version || ""}`], ["frames compared", sh.frames_compared],
      ["agreement", pct(sh.agreement)], ["disagreements", sh.disagreements],
      ["challenger would reject (champion passed)", flips.accept_to_reject],
      ["challenger would pass (champion rejected)", flips.reject_to_accept],
      ["skipped (challenger behind)", sh.skipped]]);
    sbox.append(sdl);
  }
}

function renderDrift(s) {
  const d = s.drift;
  const status = $("drift-status");
  status.className = "status";
  if (!d.available) status.textContent = `Drift detection: not available. ${d.reason || ""}`;
  else if (d.in_distribution) { status.textContent = `In distribution: no active alarm (${d.frames} frames watched, false alarms promised at most 1 per ${Math.round(d.arl0 || 0).toLocaleString()} frames).`; status.classList.add("good"); }
  else { status.textContent = "Input drift alarmed: check the camera, lens and lighting (docs/monitoring.md)."; status.classList.add("bad"); }

  const list = $("alarm-list");
  clear(list);
  const alarms = d.alarms || [];
  show($("alarms-empty"), !alarms.length);
  for (const a of alarms) {
    const li = h("li", { class: `alarm ${a.active ? "active" : ""}` });
    const button = h("button", { type: "button", class: "card-button alarm-button" });
    const url = a.prediction_id ? imageUrl(a.prediction_id, 120) : null;
    if (url) button.append(h("img", { src: url, alt: "", loading: "lazy" }));
    else button.append(h("div", { class: "noimg", text: "no frame kept" }));
    const text = h("span", { class: "alarm-text" },
      h("span", { class: "alarm-signal", text: `${a.signal} ${a.direction}${a.active ? " · ACTIVE" : ""}` }),
      h("span", { class: "alarm-msg", text: a.message || "" }),
      h("span", { class: "muted", text: `fired ${a.firings || 1}× since ${clock(a.first_time)} · last ${stamp(a.time)} · recipe ${recipeName(a.recipe)}` }));
    button.append(text);
    if (a.prediction_id) button.addEventListener("click", () => openDetail(a.prediction_id));
    else button.disabled = true;
    li.append(button);
    list.append(li);
  }

  const box = $("signals");
  clear(box);
  if (!d.signals.length) return empty(box, "No signal values recorded yet.");
  for (const sig of d.signals) {
    const panel = h("div", { class: "panel" }, h("h3", { text: sig.name }));
    const values = h("div", { class: "chart" });
    panel.append(h("p", { class: "muted small", text: sig.reference ? "mean per minute; band: the training data's 1–99 % range" : "mean per minute (no reference in the bundle)" }), values);
    const band = sig.reference ? { low: sig.reference.low, high: sig.reference.high } : null;
    timeline(values, [{ points: sig.values, cls: "value" }], { band, label: `${sig.name} over time` });
    if (d.available) {
      const levels = h("div", { class: "chart" });
      panel.append(h("p", { class: "muted small", text: `CUSUM level (1 = alarm threshold${sig.h ? `, h = ${num(sig.h)}` : ""}); now ${num(sig.level)}` }), levels);
      timeline(levels, [{ points: sig.levels || [], cls: "level" }], { threshold: 1, label: `${sig.name} CUSUM level` });
    }
    box.append(panel);
  }
}

function renderBanner(s) {
  const active = (s.drift.alarms || []).filter((a) => a.active);
  const banner = $("alarm-banner");
  if (!active.length) { show(banner, false); return; }
  const a = active[0];
  $("alarm-text").textContent = `Drift alarm: ${a.message || a.signal}${active.length > 1 ? ` (and ${active.length - 1} more signal${active.length > 2 ? "s" : ""})` : ""}`;
  const button = $("alarm-frame-button");
  button.disabled = !a.prediction_id;
  button.dataset.id = a.prediction_id ? String(Number(a.prediction_id)) : "";
  show(banner, true);
}

function renderHeader(s) {
  $("station-name").textContent = s.station;
  $("recipe-name").textContent = recipeName(s.recipe);
  $("model-line").textContent = `model ${s.model.name} ${s.model.version}`;
  document.title = `LineGuard · ${s.station}`;
  $("detail-good").textContent = `Good (${s.model.negative_class || "good"})`;
  $("detail-bad").textContent = `Defect (${s.model.positive_class})`;
  $("fb-good").textContent = `Good (${s.model.negative_class || "good"})`;
  $("fb-bad").textContent = `Defect (${s.model.positive_class})`;
}

async function pollSummary() {
  const r = await api("/v1/summary", { etag: state.summaryTag });
  if (r.status === 304) return;
  state.summary = r.data;
  state.summaryTag = r.etag;
  for (const id of r.data.feedback.labelled || []) state.labelled.add(id);
  state.queue = state.queue.filter((q) => !state.labelled.has(q.id));
  const s = r.data;
  renderHeader(s);
  renderTiles(s);
  renderQuality(s);
  renderDrift(s);
  renderBanner(s);
  renderQueue();
}

// --- health -------------------------------------------------------------------------------------------

async function pollHealth() {
  const r = await api("/v1/health");
  const hl = r.data;
  state.health = hl;
  const pill = $("health-pill");
  pill.textContent = hl.status === "ok" ? "healthy" : hl.status;
  pill.className = `pill ${hl.status === "ok" ? "good" : "bad"}`;
  const st = $("health-status");
  st.textContent = hl.status === "ok" ? "Everything is working." : `Station is ${hl.status}.`;
  st.className = `status ${hl.status === "ok" ? "good" : "bad"}`;
  const reasons = $("health-reasons");
  clear(reasons);
  for (const reason of hl.reasons || []) reasons.append(h("li", { text: reason }));
  const src = (hl.runtime && hl.runtime.source) || {};
  dl($("h-source"), [["kind", src.kind], ["connected", src.connected === undefined ? "–" : src.connected ? "yes" : "NO"],
    ["state", src.state], ["reconnects", src.reconnects], ["frames read", src.frames_read], ["frames dropped", src.frames_dropped ?? hl.runtime.dropped],
    ["frames decided", hl.runtime.frames], ["queue depth", hl.runtime.queue_depth], ["last error", src.last_error || hl.runtime.last_error]]);
  const store = hl.store || {};
  const outbox = Object.entries(store.outbox_backlog || {});
  dl($("h-outbox"), outbox.length ? outbox.map(([k, v]) => [`${k} pending`, v]) : [["sinks", "none configured"]]);
  const sync = store.sync_backlog;
  dl($("h-sync"), sync ? Object.entries(sync).map(([k, v]) => [`${k} not uploaded`, v]) : [["sync", "off"]]);
  dl($("h-disk"), [["status", store.status], ["disk free", bytes(store.disk_free_bytes)], ["floor", bytes(store.min_free_bytes)],
    ["database", bytes(store.db_bytes)], ["size limit", bytes(store.max_bytes)], ["image sampling", store.sampling]]);
  const m = hl.model || {};
  dl($("h-model"), [["name", m.name], ["version", m.version], ["digest", (m.digest || "").slice(0, 19)], ["signed by", m.signed_by || "unsigned"],
    ["swaps", Object.entries(m.swaps || {}).map(([k, v]) => `${k} ${v}`).join(", ")], ["last swap error", m.last_error]]);
  dl($("h-api"), [["uploads in flight", hl.api.inflight], ["taking frames", hl.api.accepting ? "yes" : "no (draining)"], ["checked", clock(hl.time)]]);
}

// --- the frame detail ---------------------------------------------------------------------------------

async function openDetail(id) {
  const n = Number(id);
  if (!Number.isInteger(n) || n < 1) return;
  const r = await api(`/v1/predictions/${n}`);
  const row = r.data;
  state.detail = row;
  $("detail-title").textContent = `Frame #${n} · ${row.decision === "reject" ? "REJECT" : "PASS"}`;
  const img = $("detail-img");
  if (row.image) { img.src = imageUrl(n, 1024); show(img, true); show($("detail-noimg"), false); }
  else { img.removeAttribute("src"); show(img, false); show($("detail-noimg"), true); }
  dl($("detail-fields"), [["time", stamp(row.time)], ["decision", row.decision], ["score", num(row.score, 4)], ["threshold", num(row.threshold, 3)],
    ["predicted label", row.label], ["recipe", recipeName(row.recipe)], ["source", row.source], ["model", `${row.bundle_name || ""} ${row.bundle_version || ""}`],
    ["latency", row.latency_ms === undefined ? "–" : `${num(row.latency_ms, 1)} ms`], ["frame id", row.frame_id],
    ["feedback", state.labelled.has(n) ? "labelled" : "none yet"]]);
  $("detail-status").textContent = "";
  const d = $("detail");
  if (!d.open) d.showModal();
}

async function giveFeedback(row, defect, statusNode) {
  const m = state.summary && state.summary.model;
  if (!m) return false;
  const label = defect ? m.positive_class : (m.negative_class || "good");
  statusNode.textContent = "Saving…";
  try {
    await write("/v1/feedback", { prediction_id: Number(row.id), label, source: "operator" });
  } catch (err) {
    statusNode.textContent = `Not saved: ${err.message}`;
    return false;
  }
  state.labelled.add(row.id);
  state.queue = state.queue.filter((q) => q.id !== row.id);
  statusNode.textContent = `Saved: frame #${Number(row.id)} is ${label}.`;
  renderQueue();
  return true;
}

// --- the feedback screen ------------------------------------------------------------------------------

function renderQueue() {
  const list = $("fb-queue");
  clear(list);
  for (const r of state.queue) list.append(card(r, { small: true, onpick: review }));
  show($("fb-empty"), !state.queue.length && !state.reviewing);
  if (!state.reviewing && state.queue.length) review(state.queue[0]);
  if (state.reviewing && !state.queue.some((q) => q.id === state.reviewing.id) && state.queue.length) review(state.queue[0]);
}

function review(row) {
  state.reviewing = row;
  show($("review"), true);
  $("review-img").src = imageUrl(row.id, 1024);
  $("review-caption").textContent = `#${Number(row.id)} · ${row.decision === "reject" ? "rejected" : "passed"} · score ${num(row.score, 3)} · ${recipeName(row.recipe)} · ${clock(row.time)}`;
}

async function answerReview(defect) {
  const row = state.reviewing;
  if (!row) return;
  if (await giveFeedback(row, defect, $("fb-status"))) nextReview(row);
}

function nextReview(done) {
  const rest = state.queue.filter((q) => q.id !== done.id);
  if (rest.length) review(rest[0]);
  else { state.reviewing = null; show($("review"), false); show($("fb-empty"), true); }
}

// --- recipe switch -----------------------------------------------------------------------------------

async function openRecipes() {
  const r = await api("/v1/recipe");
  const box = $("recipe-buttons");
  clear(box);
  for (const name of [...(r.data.known || []), null]) {
    const b = h("button", { type: "button", class: `big recipe-choice ${name === r.data.recipe ? "current" : ""}`, text: name === null ? "(no recipe)" : name });
    b.addEventListener("click", async () => {
      $("recipe-status").textContent = "Switching…";
      try {
        const out = await write("/v1/recipe", { recipe: name });
        $("recipe-status").textContent = `Now deciding for ${recipeName(out.recipe)}.`;
        $("recipe-name").textContent = recipeName(out.recipe);
        for (const other of box.children) other.classList.toggle("current", other === b);
      } catch (err) {
        $("recipe-status").textContent = `Not switched: ${err.message}`;
      }
    });
    box.append(b);
  }
  $("recipe-status").textContent = "";
  $("recipes").showModal();
}

// --- wiring -------------------------------------------------------------------------------------------

function selectTab(name) {
  for (const b of document.querySelectorAll("[data-tab]")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const s of document.querySelectorAll(".tab")) show(s, s.id === `tab-${name}`);
}

function setConn(ok, message = "") {
  $("conn").textContent = ok ? "" : `station unreachable: ${message}`;
  $("updated").textContent = ok ? `updated ${new Date().toLocaleTimeString()}` : $("updated").textContent;
}

async function tick() {
  if (!document.hidden) {
    try {
      await pollPredictions();
      if (state.ticks % SLOW_EVERY === 0) await Promise.all([pollSummary(), pollHealth()]);
      state.ticks += 1;
      setConn(true);
    } catch (err) {
      setConn(false, err.message);
    }
  }
  setTimeout(tick, POLL_MS);
}

async function start() {
  renderLogin();
  for (const b of document.querySelectorAll("[data-tab]")) b.addEventListener("click", () => selectTab(b.dataset.tab));
  for (const b of document.querySelectorAll("[data-filter]")) {
    b.addEventListener("click", () => {
      state.filter = b.dataset.filter;
      for (const o of document.querySelectorAll("[data-filter]")) o.setAttribute("aria-pressed", String(o === b));
      renderLive();
    });
  }
  for (const b of document.querySelectorAll("[data-close]")) b.addEventListener("click", () => b.closest("dialog").close());
  $("login").addEventListener("close", cancelLogin);
  $("login-form").addEventListener("submit", submitLogin);
  $("login-button").addEventListener("click", () => {
    if (token()) { sessionStorage.removeItem(TOKEN_KEY); renderLogin(); } else askLogin(async () => {}).catch(() => {});
  });
  $("recipe-button").addEventListener("click", () => openRecipes().catch((e) => setConn(false, e.message)));
  $("alarm-frame-button").addEventListener("click", (e) => openDetail(e.currentTarget.dataset.id));
  $("detail-good").addEventListener("click", () => state.detail && giveFeedback(state.detail, false, $("detail-status")).catch(() => {}));
  $("detail-bad").addEventListener("click", () => state.detail && giveFeedback(state.detail, true, $("detail-status")).catch(() => {}));
  $("fb-good").addEventListener("click", () => answerReview(false).catch(() => {}));
  $("fb-bad").addEventListener("click", () => answerReview(true).catch(() => {}));
  $("fb-skip").addEventListener("click", () => state.reviewing && nextReview(state.reviewing));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) state.ticks = 0; });
  try {
    await Promise.all([pollSummary(), pollHealth()]);
    const last = state.summary ? state.summary.last_id : 0;
    const first = await api(`/v1/predictions?after_id=${Math.max(0, last - 200)}&limit=200`);
    state.lastId = Math.max(0, last - 200);
    addRows(first.data.items || []);
    state.lastId = Math.max(state.lastId, last);
    setConn(true);
  } catch (err) {
    state.lastId = state.lastId || 0;
    setConn(false, err.message);
  }
  state.ticks = 1;
  setTimeout(tick, POLL_MS);
}

start();
