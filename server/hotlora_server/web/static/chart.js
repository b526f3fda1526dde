// Loss curves drawn as SVG from the numbers themselves (a job's metrics events, an adapter's training
// log): no plotting library, nothing fetched.

const SVG = "http://www.w3.org/2000/svg";
const SIZE = { width: 560, height: 240, left: 52, right: 16, top: 14, bottom: 34 };

function node(tag, attributes = {}, text = null) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  if (text !== null) element.textContent = text;
  return element;
}

function label(value) {
  return Math.abs(value) >= 100 || Number.isInteger(value) ? String(Math.round(value)) : value.toPrecision(3);
}

// `series`: [{ name, points: [[step, loss], ...], className }]. An SVG with axes (first, middle and last
// ticks), a line (and dots) per series and a legend; a note instead when there is nothing to draw.
export function lossChart(series, { title = "loss" } = {}) {
  const { width, height, left, right, top, bottom } = SIZE;
  const svg = node("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  const drawn = series.filter((s) => s.points.length > 0);
  if (!drawn.length) {
    svg.append(node("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "note" }, "no loss logged yet"));
    return svg;
  }
  const xs = drawn.flatMap((s) => s.points.map((p) => p[0]));
  const ys = drawn.flatMap((s) => s.points.map((p) => p[1]));
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) [x0, x1] = [x0 - 1, x1 + 1];
  if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const pad = (y1 - y0) * 0.05;
  [y0, y1] = [y0 - pad, y1 + pad];
  const px = (x) => left + ((x - x0) / (x1 - x0)) * (width - left - right);
  const py = (y) => top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom);

  svg.append(node("rect", { x: left, y: top, width: width - left - right, height: height - top - bottom, class: "frame" }));
  for (const y of [y0 + pad, (y0 + y1) / 2, y1 - pad]) {
    svg.append(node("line", { x1: left, x2: width - right, y1: py(y), y2: py(y), class: "grid" }));
    svg.append(node("text", { x: left - 6, y: py(y) + 4, "text-anchor": "end", class: "tick" }, label(y)));
  }
  for (const x of new Set([x0, Math.round((x0 + x1) / 2), x1])) {
    if (x < x0 || x > x1) continue;
    svg.append(node("text", { x: px(x), y: height - bottom + 16, "text-anchor": "middle", class: "tick" }, label(x)));
  }
  svg.append(node("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle", class: "axis" }, "step"));

  drawn.forEach((s, i) => {
    const points = [...s.points].sort((a, b) => a[0] - b[0]);
    const className = s.className ?? `series-${i}`;
    svg.append(node("polyline", { points: points.map(([x, y]) => `${px(x)},${py(y)}`).join(" "), class: `line ${className}` }));
    for (const [x, y] of points) {
      const dot = node("circle", { cx: px(x), cy: py(y), r: 2.5, class: `dot ${className}` });
      dot.append(node("title", {}, `${s.name} at step ${x}: ${y}`));
      svg.append(dot);
    }
    svg.append(node("text", { x: width - right - 6, y: top + 14 + 14 * i, "text-anchor": "end", class: `legend ${className}` }, s.name));
  });
  return svg;
}

// The train and eval series of TRL's `log_history` (an adapter's training log).
export function historySeries(history) {
  const pick = (key) => history.filter((h) => key in h && "step" in h).map((h) => [h.step, h[key]]);
  return [
    { name: "train loss", points: pick("loss"), className: "train" },
    { name: "eval loss", points: pick("eval_loss"), className: "eval" },
  ];
}
