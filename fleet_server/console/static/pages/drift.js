// Drift: a heatmap of PSI by feature and cohort or device, and one feature's history.
import { lineChart } from "../charts.js";
import { errorBox, h, num, replace } from "../ui.js";

const MAX_ROWS = 50;

export async function mount(root, ctx, params) {
  const models = await ctx.api("/models");
  const views = await Promise.all(models.map((m) => ctx.api(`/models/${encodeURIComponent(m.name)}`)));
  const bundles = views.flatMap((m) => m.versions.flatMap((v) => v.bundles.map((b) => ({ ...b, label: `${m.name} ${v.version} · ${b.profile}` }))));
  const bundle = h("select", { id: "d-bundle" }, bundles.reverse().map((b) => h("option", { value: b.sha256, selected: params.get("bundle") === b.sha256 }, b.label)));
  const cohort = h("input", { id: "d-cohort", value: params.get("cohort") || "", placeholder: "label key, e.g. line", autocomplete: "off" });
  const minutes = h("select", { id: "d-minutes" }, [[60, "last hour"], [360, "last 6 hours"], [1440, "last day"], [10080, "last week"]]
    .map(([v, l]) => h("option", { value: v, selected: String(v) === (params.get("minutes") || "60") }, l)));
  const form = h("form", { class: "filters", "aria-label": "Drift view" },
    h("div", { class: "field" }, h("label", { for: "d-bundle" }, "Bundle"), bundle),
    h("div", { class: "field" }, h("label", { for: "d-cohort" }, "Cohorts by label (empty: per device)"), cohort),
    h("div", { class: "field" }, h("label", { for: "d-minutes" }, "Window"), minutes),
    h("button", { type: "submit" }, "Show"));
  const heat = h("section", { class: "card wide", "aria-labelledby": "heat-h" });
  const history = h("section", { class: "card wide", "aria-labelledby": "hist-h" });
  const chart = h("div", { class: "chart" });
  root.append(h("h1", {}, "Drift"), form, heat, history);
  let key = params.get("key");
  form.addEventListener("submit", (e) => { e.preventDefault(); refresh(); });

  async function refresh() {
    if (!bundle.value) return replace(heat, h("p", { class: "empty" }, "No bundle yet."));
    ctx.setParams(new URLSearchParams({ bundle: bundle.value, cohort: cohort.value, minutes: minutes.value, ...(key ? { key } : {}) }));
    let report;
    try {
      const by = cohort.value.trim();
      report = await ctx.api("/drift", { params: { bundle: bundle.value, cohort: by ? `label:${by}` : "", minutes: minutes.value } });
    } catch (err) {
      if (err.status === 401) throw err;
      return replace(heat, errorBox(err));
    }
    // the most drifted first; a fleet of thousands shows its worst rows, not a wall
    const all = [...(report.cohort_by ? report.cohorts : report.devices)].sort((a, b) => (b.max_psi ?? -1) - (a.max_psi ?? -1));
    const groups = all.slice(0, MAX_ROWS);
    const by = report.cohort_by ? report.cohort_by.replace(/^label:/, "") : "device";
    const t = report.thresholds;
    replace(heat, h("h2", { id: "heat-h" }, `PSI by feature and ${by}`),
      h("p", { class: "help" }, `warn at ${t.warn}, alert at ${t.alert}; cells with fewer than ${t.min_samples} values are shown as no data. Choose a feature for its history.`,
        all.length > groups.length ? ` Showing the ${groups.length} most drifted of ${all.length} ${report.cohort_by ? "cohorts" : "devices"}.` : ""),
      report.has_reference ? null : h("p", { class: "error" }, "This bundle carries no reference statistics: drift cannot be measured."),
      h("div", { class: "table-wrap" }, h("table", { class: "heatmap" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, by),
          report.keys.map((k) => h("th", { scope: "col" }, h("button", { type: "button", class: "link", "aria-pressed": String(k === key), onclick: () => { key = k; drawHistory(); } }, k))))),
        h("tbody", {}, [{ ...report.fleet, name: "whole fleet" }, ...groups].map((g) => h("tr", {},
          h("th", { scope: "row" }, g.name === null ? "(no label)" : g.name),
          report.keys.map((k) => cell(g.keys[k], t))))))));
    if (!key && report.keys.length) key = report.keys[0];
    await drawHistory();
  }

  async function drawHistory() {
    replace(history, h("h2", { id: "hist-h" }, key ? `History of ${key} (fleet, hourly)` : "History"), chart);
    if (!key) return;
    try {
      const hist = await ctx.api("/drift/history", { params: { bundle: bundle.value, key, minutes: Math.max(Number(minutes.value), 1440), bucket_minutes: 60 } });
      const points = hist.points;
      lineChart(chart, { title: `PSI of ${key}`, unit: "PSI", times: points.map((p) => Date.parse(p.start) / 1000), series: [
        { label: "PSI", values: points.map((p) => p.psi) },
        { label: "JS", values: points.map((p) => p.js) },
      ] });
    } catch (err) {
      replace(chart, errorBox(err));
    }
  }

  await refresh();
  return { refresh, every_ms: 15000 };
}

function cell(k, t) {
  if (!k || k.psi === null || k.samples < t.min_samples) return h("td", { class: "heat nodata" }, "no data");
  const level = k.psi >= t.alert ? "alert" : k.psi >= t.warn ? "warn" : "ok";
  const strength = Math.min(1, k.psi / (t.alert * 1.5));
  return h("td", { class: `heat ${level}`, style: undefined, "data-strength": strength.toFixed(1), title: `PSI ${num(k.psi, 3)}, JS ${num(k.js, 3)}, ${k.samples} values` }, num(k.psi, 3));
}
