// Time-series charts with the vendored uPlot (see vendor/VENDORED.md).
import uPlot from "./vendor/uPlot.esm.js";

const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df"];

// A line chart of `series` ([{label, values}]) over `times` (unix seconds), sized to `el`.
export function lineChart(el, { title, times, series, unit = "" }) {
  const width = Math.max(280, el.clientWidth || 600);
  const opts = {
    title,
    width,
    height: 220,
    scales: { x: { time: true } },
    axes: [{}, { label: unit, size: 60 }],
    series: [
      {},
      ...series.map((s, i) => ({
        label: s.label,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        spanGaps: true,
        value: (u, v) => (v === null || v === undefined ? "–" : `${v.toFixed(2)} ${unit}`),
      })),
    ],
  };
  const data = [times, ...series.map((s) => s.values)];
  el.replaceChildren();
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", `${title} chart`);
  return new uPlot(opts, data, el);
}
