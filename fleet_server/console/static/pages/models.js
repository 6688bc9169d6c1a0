// Models: versions and their per-profile bundles with the converter's figures.
import { badge, bytes, h, num, replace, table, time } from "../ui.js";

export async function mount(root, ctx) {
  const list = h("div");
  root.append(h("h1", {}, "Models"), list);
  const models = await ctx.api("/models");
  if (!models.length) {
    replace(list, h("p", { class: "empty" }, "No model yet: upload a bundle (edgefleet bundle / POST /api/v1/bundles)."));
    return {};
  }
  const views = await Promise.all(models.map((m) => ctx.api(`/models/${encodeURIComponent(m.name)}`)));
  for (const model of views) {
    const section = h("section", { class: "card wide", "aria-labelledby": `m-${model.name}` },
      h("h2", { id: `m-${model.name}` }, model.name), model.description ? h("p", {}, model.description) : null);
    for (const v of [...model.versions].reverse()) {
      section.append(
        h("h3", {}, `${v.version} `, badge(v.status), h("small", {}, " created ", time(v.created_at))),
        h("div", { class: "table-wrap" }, table([
          { label: "Profile", cell: (b) => b.profile },
          { label: "Runtime / format", cell: (b) => `${b.runtime} / ${b.format}` },
          { label: "Precision", cell: (b) => b.precision },
          { label: "Size", cell: (b) => bytes(b.size) },
          { label: "Latency p50 / p95", cell: (b) => b.benchmark ? `${ms(b.benchmark.latency_ms_p50)} / ${ms(b.benchmark.latency_ms_p95)} ms` : "not measured" },
          { label: "Accuracy / agreement", cell: (b) => quality(b.validation) },
          { label: "Bundle", cell: (b) => h("code", { title: b.sha256 }, b.sha256.slice(0, 12)) },
        ], v.bundles, { empty: "No bundle for this version." })),
      );
    }
    list.append(section);
  }
  return {};
}

// sub-millisecond models are common on a desktop: keep three significant digits
function ms(x) {
  return String(Number(Number(x).toPrecision(3)));
}

function quality(validation) {
  if (!validation) return "not validated";
  const parts = Object.entries(validation.metrics).map(([k, v]) => `${k.replaceAll("_", " ")} ${num(v, 4)}`);
  return [validation.passed ? badge("passed") : badge("failed"), " ", parts.join(", "), ` (${validation.samples} samples)`];
}
