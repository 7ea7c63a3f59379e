// Tiny SVG charts for the dashboard: bars, a histogram against a reference, a line over time with a
// threshold and a reference band. Built with DOM calls only (createElementNS, textContent): no library,
// no innerHTML, no inline style attributes (the page's Content-Security-Policy forbids them).

const NS = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = String(text);
  return node;
}

function svg(width, height, label) {
  const root = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", preserveAspectRatio: "xMidYMid meet" });
  root.appendChild(el("title", {}, label));
  return root;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

export function empty(container, message) {
  clear(container);
  const p = document.createElement("p");
  p.className = "muted";
  p.textContent = message;
  container.appendChild(p);
}

const pct = (x) => `${(100 * x).toFixed(1)} %`;

// Horizontal bars, one per row: rows = [{label, value (0..1), note}]; the value is drawn as a percentage.
export function bars(container, rows, { label = "chart", format = pct } = {}) {
  clear(container);
  if (!rows.length) return empty(container, "No data yet.");
  const rowH = 34, left = 150, right = 130, width = 600;
  const height = rows.length * rowH + 10;
  const max = Math.max(1e-9, ...rows.map((r) => r.value));
  const root = svg(width, height, label);
  rows.forEach((r, i) => {
    const y = 5 + i * rowH;
    const w = ((width - left - right) * r.value) / max;
    const name = el("text", { x: left - 8, y: y + rowH / 2 + 5, "text-anchor": "end", class: "axis" }, r.label);
    root.appendChild(name);
    root.appendChild(el("rect", { x: left, y: y + 4, width: Math.max(1, w), height: rowH - 10, class: "bar" }));
    root.appendChild(el("text", { x: left + w + 6, y: y + rowH / 2 + 5, class: "value" },
      `${format(r.value)}${r.note ? "  " + r.note : ""}`));
  });
  container.appendChild(root);
}

// The live score histogram (bars) against the reference (a step line), both as shares of their totals.
export function histogram(container, edges, live, reference, { label = "histogram" } = {}) {
  clear(container);
  const nLive = live.reduce((a, b) => a + b, 0);
  const nRef = reference ? reference.reduce((a, b) => a + b, 0) : 0;
  if (!nLive && !nRef) return empty(container, "No scores yet.");
  const width = 560, height = 240, left = 56, bottom = 34, top = 10, right = 10;
  const root = svg(width, height, label);
  const liveShare = live.map((c) => (nLive ? c / nLive : 0));
  const refShare = reference ? reference.map((c) => (nRef ? c / nRef : 0)) : [];
  const max = Math.max(1e-9, ...liveShare, ...refShare);
  const x0 = edges[0], x1 = edges[edges.length - 1];
  const sx = (x) => left + ((width - left - right) * (x - x0)) / (x1 - x0 || 1);
  const sy = (v) => height - bottom - ((height - bottom - top) * v) / max;
  liveShare.forEach((v, i) => {
    const xa = sx(edges[i]), xb = sx(edges[i + 1]);
    root.appendChild(el("rect", { x: xa + 1, y: sy(v), width: Math.max(1, xb - xa - 2), height: sy(0) - sy(v), class: "bar" }));
  });
  if (refShare.length) {
    let d = `M ${sx(edges[0])} ${sy(0)}`;
    refShare.forEach((v, i) => { d += ` L ${sx(edges[i])} ${sy(v)} L ${sx(edges[i + 1])} ${sy(v)}`; });
    d += ` L ${sx(edges[edges.length - 1])} ${sy(0)}`;
    root.appendChild(el("path", { d, class: "ref" }));
  }
  root.appendChild(el("line", { x1: left, y1: sy(0), x2: width - right, y2: sy(0), class: "axisline" }));
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    const x = x0 + t * (x1 - x0);
    root.appendChild(el("text", { x: sx(x), y: height - bottom + 18, "text-anchor": "middle", class: "axis" }, x.toFixed(2)));
  }
  root.appendChild(el("text", { x: left - 6, y: sy(max) + 10, "text-anchor": "end", class: "axis" }, pct(max)));
  root.appendChild(el("text", { x: width / 2, y: height - 2, "text-anchor": "middle", class: "axis" }, "calibrated defect score"));
  container.appendChild(root);
}

// A line over time: series = [{points: [[t, v]], cls}], optional threshold (a dashed line) and band {low, high}.
export function timeline(container, series, { threshold = null, band = null, label = "signal", yLabel = "" } = {}) {
  clear(container);
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) return empty(container, "No data yet.");
  const width = 560, height = 150, left = 56, bottom = 26, top = 10, right = 10;
  const root = svg(width, height, label);
  const ts = pts.map((p) => p[0]);
  let vs = pts.map((p) => p[1]);
  if (threshold !== null) vs = vs.concat([threshold]);
  if (band) vs = vs.concat([band.low, band.high].filter((v) => v !== null && v !== undefined));
  let lo = Math.min(...vs), hi = Math.max(...vs);
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const t0 = Math.min(...ts), t1 = Math.max(...ts);
  const sx = (t) => left + ((width - left - right) * (t - t0)) / (t1 - t0 || 1);
  const sy = (v) => height - bottom - ((height - bottom - top) * (v - lo)) / (hi - lo);
  if (band && band.low !== null && band.high !== null && band.low !== undefined && band.high !== undefined) {
    root.appendChild(el("rect", { x: left, y: sy(band.high), width: width - left - right,
      height: Math.max(1, sy(band.low) - sy(band.high)), class: "band" }));
  }
  if (threshold !== null) {
    root.appendChild(el("line", { x1: left, y1: sy(threshold), x2: width - right, y2: sy(threshold), class: "threshold" }));
    root.appendChild(el("text", { x: width - right - 4, y: sy(threshold) - 4, "text-anchor": "end", class: "axis alarm" }, "alarm threshold"));
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => `${i ? "L" : "M"} ${sx(p[0]).toFixed(1)} ${sy(p[1]).toFixed(1)}`).join(" ");
    root.appendChild(el("path", { d, class: `line ${s.cls || ""}` }));
    if (s.points.length === 1) root.appendChild(el("circle", { cx: sx(s.points[0][0]), cy: sy(s.points[0][1]), r: 3, class: "dot" }));
  }
  root.appendChild(el("text", { x: left - 6, y: sy(hi) + 10, "text-anchor": "end", class: "axis" }, fmtNum(hi)));
  root.appendChild(el("text", { x: left - 6, y: sy(lo), "text-anchor": "end", class: "axis" }, fmtNum(lo)));
  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  root.appendChild(el("text", { x: left, y: height - 6, class: "axis" }, clock(t0)));
  root.appendChild(el("text", { x: width - right, y: height - 6, "text-anchor": "end", class: "axis" }, clock(t1)));
  if (yLabel) root.appendChild(el("text", { x: width / 2, y: height - 6, "text-anchor": "middle", class: "axis" }, yLabel));
  container.appendChild(root);
}

function fmtNum(v) {
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 1 ? v.toFixed(2) : v.toFixed(3);
}
