// The dashboard page: fetch every analyst query from /api/panels and draw it
// as SVG (line, stacked bars, bars), big numbers (tiles) or a table; fetch
// again every few seconds (?refresh=SECONDS, 0 to stop).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2e6be6", "#e8772e", "#2f9e6e", "#c2399b", "#8a5cd1", "#d4a72c", "#1f9bb4", "#d2453d", "#6b7a90"];
const W = 640, H = 240, M = { left: 52, right: 14, top: 12, bottom: 30 };
const REFRESH = Number(new URLSearchParams(location.search).get("refresh") ?? 5);

function el(tag, attrs = {}, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function isTime(panel, column) {
  const type = panel.types[panel.columns.indexOf(column)] || "";
  return type.startsWith("DateTime") || type.startsWith("Nullable(DateTime") || type === "Date";
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return Math.abs(value) >= 100 ? value.toFixed(0) : Math.abs(value) >= 1 ? value.toFixed(2) : value.toFixed(3);
}

function fmtTime(ms, span) {
  const d = new Date(ms);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  return span > 36 * 3600e3 ? d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm : hm;
}

function ticks(lo, hi, count = 5) {
  if (hi === lo) { hi = lo + 1; }
  const raw = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map(f => f * mag).find(s => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function seriesOf(panel) {
  const { plot, columns, rows } = panel;
  const xi = columns.indexOf(plot.x), yi = columns.indexOf(plot.y);
  const si = plot.series ? columns.indexOf(plot.series) : -1;
  const names = [], points = [];
  for (const row of rows) {
    if (row[yi] === null || row[xi] === null) continue;
    const s = si >= 0 ? String(row[si]) : plot.y;
    if (!names.includes(s)) names.push(s);
    points.push({ x: row[xi], y: row[yi], s });
  }
  return { names, points };
}

function frame(svg, yLo, yHi) {
  const ys = ticks(yLo, yHi);
  const top = Math.max(yHi, ys[ys.length - 1]), bottom = Math.min(yLo, ys[0]);
  const y = v => M.top + (H - M.top - M.bottom) * (1 - (v - bottom) / (top - bottom || 1));
  for (const t of ys) {
    svg.append(el("svg:line", { class: "grid", x1: M.left, x2: W - M.right, y1: y(t), y2: y(t) }));
    svg.append(el("svg:text", { x: M.left - 6, y: y(t) + 4, "text-anchor": "end" }, fmt(t)));
  }
  svg.append(el("svg:line", { class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }));
  return y;
}

function legend(names, color) {
  const box = el("div", { class: "legend" });
  for (const n of names) box.append(el("span", { "data-series": n, style: `--swatch: ${color(n)}` }, n));
  return box;
}

function lineChart(panel) {
  const { names, points } = seriesOf(panel);
  const color = n => COLORS[names.indexOf(n) % COLORS.length];
  const time = isTime(panel, panel.plot.x);
  const xs = points.map(p => p.x), yv = points.map(p => p.y);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= time ? 60e3 : 1; x1 += time ? 60e3 : 1; }
  const svg = el("svg:svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "data-kind": "line" });
  const y = frame(svg, Math.min(0, ...yv), Math.max(...yv));
  const x = v => M.left + (W - M.left - M.right) * (v - x0) / (x1 - x0);
  const xTicks = time ? [0, 1, 2, 3, 4, 5].map(i => x0 + (x1 - x0) * i / 5) : ticks(x0, x1, 6).filter(t => t >= x0 && t <= x1);
  for (const t of xTicks) {
    svg.append(el("svg:text", { x: x(t), y: H - M.bottom + 16, "text-anchor": "middle" }, time ? fmtTime(t, x1 - x0) : fmt(t)));
  }
  for (const n of names) {
    const own = points.filter(p => p.s === n).sort((a, b) => a.x - b.x);
    const d = own.map((p, i) => `${i ? "L" : "M"}${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`).join("");
    svg.append(el("svg:path", { class: "series-line", d, stroke: color(n), "data-series": n }));
    for (const p of own) {
      const dot = el("svg:circle", { class: "point", cx: x(p.x), cy: y(p.y), r: 3, fill: color(n),
                                     "data-series": n, "data-x": p.x, "data-y": p.y });
      dot.append(el("svg:title", {}, `${n}: ${fmt(p.y)} at ${time ? new Date(p.x).toLocaleString() : fmt(p.x)}`));
      svg.append(dot);
    }
  }
  return [svg, legend(names, color)];
}

function barChart(panel, stacked) {
  const { names, points } = seriesOf(panel);
  const color = n => COLORS[names.indexOf(n) % COLORS.length];
  const time = isTime(panel, panel.plot.x);
  const cats = [...new Set(points.map(p => p.x))];
  if (time) cats.sort((a, b) => a - b);
  const totals = cats.map(c => points.filter(p => p.x === c).reduce((t, p) => stacked ? t + p.y : Math.max(t, p.y), 0));
  const svg = el("svg:svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "data-kind": stacked ? "stacked" : "bar" });
  const y = frame(svg, 0, Math.max(...totals, 0));
  const band = (W - M.left - M.right) / cats.length, width = Math.max(1, band * 0.75);
  const every = Math.ceil(cats.length / 10);
  cats.forEach((c, i) => {
    const left = M.left + band * i + (band - width) / 2;
    let base = 0;
    for (const p of points.filter(q => q.x === c)) {
      const lo = stacked ? base : 0, hi = lo + p.y;
      const bar = el("svg:rect", { class: "bar", x: left, width, y: y(hi), height: Math.max(0, y(lo) - y(hi)),
                                   fill: color(p.s), "data-series": p.s, "data-x": p.x, "data-y": p.y });
      bar.append(el("svg:title", {}, `${p.s}: ${fmt(p.y)}`));
      svg.append(bar);
      if (stacked) base = hi;
    }
    if (i % every === 0) {
      const label = time ? fmtTime(c, cats[cats.length - 1] - cats[0]) : String(c);
      svg.append(el("svg:text", { x: left + width / 2, y: H - M.bottom + 16, "text-anchor": "middle" }, label));
    }
  });
  return names.length > 1 || stacked ? [svg, legend(names, color)] : [svg];
}

function table(panel) {
  const wrap = el("div", { class: "table-wrap" });
  const t = el("table", { "data-panel": panel.name });
  const head = el("tr");
  panel.columns.forEach(c => head.append(el("th", {}, c)));
  t.append(head);
  for (const row of panel.rows) {
    const tr = el("tr");
    row.forEach((v, i) => tr.append(el("td", { class: typeof v === "number" ? "num" : undefined, "data-value": v === null ? "" : String(v) },
      isTime(panel, panel.columns[i]) && v !== null ? new Date(v).toLocaleString() : fmt(v))));
    t.append(tr);
  }
  wrap.append(t);
  return wrap;
}

function tiles(panel) {
  const box = el("div", { class: "tiles" });
  const row = panel.rows[0] || [];
  panel.columns.forEach((c, i) => {
    const tile = el("div", { class: "tile", "data-column": c, "data-value": row[i] === null ? "" : String(row[i]) });
    tile.append(el("div", { class: "value" }, fmt(row[i])), el("div", { class: "label" }, c.replaceAll("_", " ")));
    box.append(tile);
  });
  return box;
}

function body(panel) {
  if (panel.error) return [el("p", { class: "error" }, panel.error)];
  if (!panel.rows.length) return [el("p", { class: "empty" }, "no data yet")];
  const kind = panel.plot && panel.plot.kind;
  if (kind === "tiles") return [tiles(panel)];
  if (!kind) return [table(panel)];
  const drawn = kind === "line" ? lineChart(panel) : barChart(panel, kind === "stacked");
  const details = el("details");
  details.append(el("summary", {}, `${panel.rows.length} rows`), table(panel));
  return [...drawn, details];
}

function render(data) {
  const main = document.getElementById("panels");
  for (const panel of data.panels) {
    let section = document.getElementById("panel-" + panel.name);
    if (!section) {
      section = el("section", { id: "panel-" + panel.name, "data-panel": panel.name });
      if (!panel.plot || panel.plot.kind === "tiles") section.classList.add("wide");
      main.append(section);
    }
    const open = section.querySelector("details")?.open;
    section.replaceChildren(el("h2", {}, panel.question), ...(panel.notes ? [el("p", { class: "notes" }, panel.notes)] : []), ...body(panel));
    if (open) section.querySelector("details").open = true;
    section.dataset.rows = panel.rows.length;
  }
  const status = document.getElementById("status");
  status.classList.remove("stale");
  status.textContent = `updated ${new Date(data.generated_at).toLocaleTimeString()} · ${data.panels.length} panels in ` +
    `${data.seconds}s · ClickHouse ${data.clickhouse}` + (REFRESH > 0 ? ` · every ${REFRESH}s` : "");
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

async function refresh() {
  try {
    const response = await fetch("api/panels", { cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    render(await response.json());
  } catch (err) {
    const status = document.getElementById("status");
    status.classList.add("stale");
    status.textContent = `could not update: ${err.message}`;
  }
  if (REFRESH > 0) setTimeout(refresh, REFRESH * 1000);
}

refresh();
