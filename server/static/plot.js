// A small line plot drawn as inline SVG: axes with round ticks, one polyline per series
// (or dots), and a legend. No library: the page loads nothing from outside kvserve.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 720;
const HEIGHT = 300;
const MARGIN = { left: 48, right: 16, top: 28, bottom: 32 };

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

// About `count` round tick values covering [lo, hi].
function ticks(lo, hi, count) {
  const span = hi - lo || 1;
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}

// series: [{label, points: [[x, y], ...], cls, dots?: bool}]
export function drawPlot(svg, series, { xLabel = "t (step)", yLabel = "value" } = {}) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) return;
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  const pad = (y1 - y0 || 1) * 0.08;
  [y0, y1] = [y0 - pad, y1 + pad];
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y) => MARGIN.top + (1 - (y - y0) / (y1 - y0)) * plotH;

  const axes = el("g", { class: "axes" });
  for (const v of ticks(y0, y1, 5)) {
    axes.append(el("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(v), y2: sy(v), class: "grid" }));
    axes.append(el("text", { x: MARGIN.left - 6, y: sy(v) + 4, "text-anchor": "end" }, +v.toFixed(3)));
  }
  for (const v of ticks(x0, x1, 8)) {
    axes.append(el("line", { x1: sx(v), x2: sx(v), y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom, class: "grid" }));
    axes.append(el("text", { x: sx(v), y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, +v.toFixed(3)));
  }
  axes.append(el("rect", { x: MARGIN.left, y: MARGIN.top, width: plotW, height: plotH, class: "frame" }));
  axes.append(el("text", { x: WIDTH - MARGIN.right, y: HEIGHT - 4, "text-anchor": "end" }, xLabel));
  axes.append(el("text", { x: 4, y: MARGIN.top - 10 }, yLabel));
  svg.append(axes);

  let legendX = MARGIN.left + 60;
  for (const s of series) {
    if (s.points.length === 0) continue;
    const g = el("g", { class: `series ${s.cls}`, "data-label": s.label });
    if (s.dots) {
      for (const [x, y] of s.points) g.append(el("circle", { cx: sx(x), cy: sy(y), r: 2.2 }));
    } else {
      const points = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
      g.append(el("polyline", { points, fill: "none" }));
    }
    svg.append(g);
    const key = el("g", { class: `legend ${s.cls}` });
    key.append(el("line", { x1: legendX, x2: legendX + 18, y1: 12, y2: 12 }));
    key.append(el("text", { x: legendX + 22, y: 16 }, s.label));
    svg.append(key);
    legendX += 30 + s.label.length * 7;
  }
}
