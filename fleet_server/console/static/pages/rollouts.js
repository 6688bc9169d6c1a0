// Rollouts: the list, and (operators) the create form with a live count of matching devices.
import { badge, errorBox, h, replace, table, time } from "../ui.js";

const GATES = [
  { key: "max_activation_failures", label: "Activation failures at most", step: "1", value: "0" },
  { key: "max_error_rate", label: "Error rate at most (0–1)", step: "0.001", value: "0.05" },
  { key: "max_p95_ms", label: "p95 latency at most (ms)", step: "0.1", value: "" },
  { key: "max_p95_ratio", label: "p95 over the old version's at most", step: "0.01", value: "" },
  { key: "max_psi", label: "Drift PSI at most", step: "0.01", value: "" },
  { key: "min_shadow_agreement", label: "Shadow agreement at least (0–1)", step: "0.001", value: "" },
];

export async function mount(root, ctx) {
  const list = h("section", { class: "card wide", "aria-labelledby": "list-h" });
  root.append(h("h1", {}, "Rollouts"));
  if (ctx.can("operator")) root.append(await createForm(ctx));
  root.append(list);

  async function refresh() {
    const rows = await ctx.api("/rollouts");
    replace(list, h("h2", { id: "list-h" }, "All rollouts"), h("div", { class: "table-wrap" }, table([
      { label: "Rollout", cell: (r) => h("a", { href: `#/rollouts/${r.id}` }, `${r.id} ${r.name}`) },
      { label: "Version", cell: (r) => `${r.model} ${r.version}` },
      { label: "Status", cell: (r) => badge(r.status) },
      { label: "Stage", cell: (r) => `${Math.min(r.stage + 1, r.stages)} of ${r.stages}` },
      { label: "Devices", cell: (r) => Object.entries(r.devices).map(([s, n]) => `${n} ${s.replaceAll("_", " ")}`).join(", ") },
      { label: "Reason", cell: (r) => r.reason },
      { label: "Updated", cell: (r) => time(r.updated_at) },
    ], rows, { empty: "No rollout yet." })));
  }
  await refresh();
  return { refresh, every_ms: 3000 };
}

async function createForm(ctx) {
  const models = await ctx.api("/models");
  if (!models.length) {
    return h("section", { class: "card wide" }, h("h2", {}, "New rollout"),
      h("p", { class: "empty" }, "No model yet: upload a bundle first (POST /api/v1/bundles), then roll it out from here."));
  }
  const versions = {};
  for (const m of models) versions[m.name] = (await ctx.api(`/models/${encodeURIComponent(m.name)}`)).versions;
  const input = (id, label, attrs = {}) => h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, name: id, autocomplete: "off", ...attrs }));
  const model = h("select", { id: "r-model", name: "model", required: true }, models.map((m) => h("option", { value: m.name }, m.name)));
  const version = h("select", { id: "r-version", name: "version", required: true });
  const fillVersions = () => replace(version, (versions[model.value] || []).filter((v) => v.status !== "archived").reverse()
    .map((v) => h("option", { value: v.version }, `${v.version} (${v.status}, ${v.bundles.map((b) => b.profile).join(", ") || "no bundle"})`)));
  model.addEventListener("change", () => { fillVersions(); preview(); });
  fillVersions();
  const stages = h("ol", { class: "stages" });
  // labels and ids follow a stage's place, so they stay right after one is removed
  const renumber = () => [...stages.children].forEach((li, i) => {
    const n = i + 1;
    const [size, soak, min] = ["size", "soak", "min"].map((k) => li.querySelector(`[name=${k}]`));
    const [lSize, lSoak, lMin] = li.querySelectorAll("label");
    size.id = `s${n}-size`; soak.id = `s${n}-soak`; min.id = `s${n}-min`;
    lSize.htmlFor = size.id; lSoak.htmlFor = soak.id; lMin.htmlFor = min.id;
    lSize.textContent = `Stage ${n} size`;
    li.querySelector("[name=unit]").setAttribute("aria-label", `Stage ${n} unit`);
    li.querySelector("button").textContent = `Remove stage ${n}`;
  });
  const addStage = (size, unit, soak, min) => {
    const li = h("li", { class: "stage" },
      h("label", {}),
      h("input", { name: "size", type: "number", min: "1", step: "any", value: size, required: true }),
      h("select", { name: "unit" }, h("option", { value: "count", selected: unit === "count" }, "devices"), h("option", { value: "percent", selected: unit === "percent" }, "% of devices")),
      h("label", {}, "soak (s)"),
      h("input", { name: "soak", type: "number", min: "0", step: "any", value: soak }),
      h("label", {}, "min reporting"),
      h("input", { name: "min", type: "number", min: "0", step: "1", value: min }),
      h("button", { type: "button", class: "link", onclick: () => { li.remove(); renumber(); preview(); } }),
    );
    stages.append(li);
    renumber();
  };
  addStage(1, "count", 60, 1);
  addStage(100, "percent", 60, 1);
  const gates = h("fieldset", { class: "gates" }, h("legend", {}, "Gates (leave empty to skip)"),
    GATES.map((g) => input(`g-${g.key}`, g.label, { type: "number", min: "0", step: g.step, value: g.value })));
  const onBreach = h("fieldset", { class: "inline" }, h("legend", {}, "On a breach"),
    h("label", {}, h("input", { type: "radio", name: "on_breach", value: "rollback", checked: true }), " roll back automatically"),
    h("label", {}, h("input", { type: "radio", name: "on_breach", value: "pause" }), " pause"));
  const count = h("output", { id: "r-preview", class: "preview", "aria-live": "polite", for: "r-labels r-profile r-ids" }, "–");
  const problem = h("div");
  const form = h("form", { class: "card wide create", "aria-labelledby": "create-h", novalidate: true },
    h("h2", { id: "create-h" }, "New rollout"),
    h("div", { class: "row" }, input("r-name", "Name", { required: true, maxlength: "128", placeholder: "tiny 2.0.0 to line 3" }),
      h("div", { class: "field" }, h("label", { for: "r-model" }, "Model"), model),
      h("div", { class: "field" }, h("label", { for: "r-version" }, "Version"), version)),
    h("fieldset", {}, h("legend", {}, "Devices"),
      h("div", { class: "row" }, input("r-labels", "Labels (key=value, comma-separated)", { placeholder: "line=3" }),
        input("r-profile", "Profile", { placeholder: "any" }),
        input("r-ids", "Device ids (comma-separated)", { placeholder: "any" })),
      count),
    h("fieldset", {}, h("legend", {}, "Stages (cumulative; the last is 100 %)"), stages,
      h("button", { type: "button", onclick: () => { addStage(100, "percent", 60, 1); preview(); } }, "Add stage")),
    gates, onBreach, problem,
    h("button", { type: "submit", class: "primary", id: "r-create" }, "Create rollout"));

  function request() {
    const val = (id) => form.querySelector(`#${id}`).value.trim();
    const labels = {};
    for (const pair of val("r-labels").split(",").map((s) => s.trim()).filter(Boolean)) {
      const [k, ...rest] = pair.split("=");
      labels[k.trim()] = rest.join("=").trim();
    }
    const selector = { labels };
    if (val("r-profile")) selector.profile = val("r-profile");
    const ids = val("r-ids").split(",").map((s) => s.trim()).filter(Boolean);
    if (ids.length) selector.device_ids = ids;
    const gateValues = {};
    for (const g of GATES) {
      const v = val(`g-${g.key}`);
      gateValues[g.key] = v === "" ? null : Number(v);
    }
    return {
      name: val("r-name") || "preview",
      model: model.value,
      version: version.value,
      selector,
      plan: {
        strategy: "staged",
        stages: [...stages.children].map((li) => {
          const size = Number(li.querySelector("[name=size]").value);
          const unit = li.querySelector("[name=unit]").value;
          return { [unit]: size, soak_s: Number(li.querySelector("[name=soak]").value || 0), min_reporting: Number(li.querySelector("[name=min]").value || 0) };
        }),
        gates: gateValues,
        on_breach: form.querySelector("[name=on_breach]:checked").value,
      },
    };
  }

  let pending = null;
  async function preview() {
    clearTimeout(pending);
    pending = setTimeout(async () => {
      try {
        const p = await ctx.api("/rollouts/preview", { method: "POST", body: request() });
        const none = p.incompatible_profiles.length ? ` (no bundle for ${p.incompatible_profiles.join(", ")})` : "";
        const parts = [`${p.matching} matching`, `${p.compatible} compatible`, `${p.incompatible} incompatible${none}`];
        count.textContent = `${parts.join(", ")}; stage sizes ${p.stages.join(" → ")}` +
          (p.conflicts.length ? `; ${p.conflicts.map((c) => `${c.devices.length} already in rollout ${c.rollout_id}`).join(", ")}` : "");
        count.className = "preview";
      } catch (err) {
        count.textContent = err.message;
        count.className = "preview error";
      }
    }, 250);
  }
  form.addEventListener("input", preview);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!form.querySelector("#r-name").value.trim()) {
      replace(problem, errorBox({ message: "Give the rollout a name." }));
      form.querySelector("#r-name").focus();
      return;
    }
    try {
      const created = await ctx.api("/rollouts", { method: "POST", body: request() });
      ctx.navigate(`/rollouts/${created.id}`);
    } catch (err) {
      replace(problem, errorBox(err));
    }
  });
  preview();
  return form;
}
