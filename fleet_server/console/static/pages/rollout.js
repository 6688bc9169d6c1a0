// One rollout, live: progress per stage, each gate against its threshold (and why it holds),
// the devices, and for operators pause / resume / abort / roll back, each confirmed first.
import { announce, badge, confirmAction, errorBox, h, num, replace, table, time } from "../ui.js";

const DEVICE_STATES = ["pending", "downloading", "active", "failed", "rolled_back", "offline_pending"];
const ACTIONS = [
  { action: "pause", label: "Pause", when: ["pending", "running"], text: "Devices already updated keep the new version; no more are sent it until you resume." },
  { action: "resume", label: "Resume", when: ["paused"], text: "The current stage is judged afresh from now: its soak time and telemetry gates start over." },
  { action: "abort", label: "Abort", when: ["pending", "running", "paused"], text: "No more devices are sent the new version; devices that have it keep it (roll back for that)." },
  { action: "rollback", label: "Roll back", when: ["pending", "running", "paused", "completed", "aborted"], text: "Every updated device is ordered back to its previous version." },
];

export async function mount(root, ctx, params, id) {
  const summary = h("section", { class: "card wide", "aria-labelledby": "sum-h" });
  const actions = h("div", { class: "actions", role: "group", "aria-label": "Rollout actions" });
  const problem = h("div");
  const progress = h("section", { class: "card wide", "aria-labelledby": "prog-h" });
  const gates = h("section", { class: "card wide", "aria-labelledby": "gates-h" });
  const devices = h("section", { class: "card wide", "aria-labelledby": "dev-h" });
  const title = h("h1", {}, `Rollout ${id}`);
  root.append(h("p", {}, h("a", { href: "#/rollouts" }, "← Rollouts")), title, summary, progress, gates, devices);
  let last = null;

  async function act(a) {
    const reason = await confirmAction(`${a.label} rollout ${id}?`, a.text);
    if (reason === null) return;
    try {
      last = await ctx.api(`/rollouts/${id}/${a.action}`, { method: "POST", body: { reason } });
      replace(problem);
      announce(`Rollout ${id}: ${a.label.toLowerCase()} done; now ${last.status}`);
      draw(last);
      // the pressed button may be gone (Pause becomes Resume): keep the keyboard among the actions
      (actions.querySelector("button") || document.getElementById("main")).focus();
    } catch (err) {
      replace(problem, errorBox(err));
    }
  }

  function draw(r) {
    title.textContent = `Rollout ${r.id}: ${r.name}`;
    if (ctx.can("operator")) {
      replace(actions, ACTIONS.filter((a) => a.when.includes(r.status)).map((a) =>
        h("button", { type: "button", class: a.action === "pause" || a.action === "resume" ? "" : "danger", "data-action": a.action, onclick: () => act(a) }, a.label)));
    }
    replace(summary,
      h("h2", { id: "sum-h" }, `${r.model} ${r.version} `, badge(r.status)),
      h("p", { class: `reason ${r.reason.startsWith("gate breached") ? "error" : ""}`, id: "rollout-reason" }, r.reason || "No reason recorded yet."),
      h("dl", { class: "facts" },
        h("dt", {}, "Stage"), h("dd", {}, `${Math.min(r.stage + 1, r.stages)} of ${r.stages}`),
        h("dt", {}, "Selector"), h("dd", {}, h("code", {}, JSON.stringify(r.selector))),
        h("dt", {}, "On a breach"), h("dd", {}, r.plan.on_breach),
        h("dt", {}, "Created"), h("dd", {}, time(r.created_at), ` by ${r.created_by}`),
        h("dt", {}, "Updated"), h("dd", {}, time(r.updated_at))),
      ctx.can("operator") ? actions : null, problem);
    replace(progress, h("h2", { id: "prog-h" }, "Progress per stage"), h("div", { class: "table-wrap" }, table([
      { label: "Stage", cell: (s) => `${s.index + 1}` },
      { label: "State", cell: (s) => badge(s.state) },
      { label: "Devices (cumulative)", cell: (s) => num(s.target, 0) },
      { label: "Soak", cell: (s) => `${num(s.soak_s, 0)} s` },
      ...DEVICE_STATES.map((st) => ({ label: st.replaceAll("_", " "), cell: (s) => num(s.devices[st] || 0, 0) })),
      { label: "Bar", cell: (s) => bar(s) },
    ], r.progress)));
    const limits = r.gates || {};
    const rows = Object.entries(limits).filter(([, g]) => g && typeof g === "object");
    replace(gates, h("h2", { id: "gates-h" }, "Gates", limits.stage !== undefined ? ` (stage ${limits.stage + 1}, judged ` : "", limits.evaluated_at ? time(limits.evaluated_at) : "", limits.stage !== undefined ? ")" : ""),
      h("div", { class: "table-wrap" }, table([
        { label: "Gate", cell: ([k]) => k.replaceAll("_", " ") },
        { label: "Status", cell: ([, g]) => badge(g.status) },
        { label: "Value", cell: ([, g]) => fmt(g.value) },
        { label: "Threshold", cell: ([, g]) => fmt(g.threshold) },
        { label: "Why", cell: ([, g]) => g.reason },
      ], rows, { empty: "Not judged yet: the engine judges the current stage once it starts." })));
    replace(devices, h("h2", { id: "dev-h" }, "Devices"), h("div", { class: "table-wrap" }, table([
      { label: "Device", cell: (d) => h("a", { href: `#/devices/${encodeURIComponent(d.device_id)}` }, d.device_id) },
      { label: "Stage", cell: (d) => (d.stage === null ? "–" : d.stage + 1) },
      { label: "Status", cell: (d) => badge(d.status) },
      { label: "Detail", cell: (d) => d.detail },
    ], r.devices)));
  }

  async function refresh() {
    last = await ctx.api(`/rollouts/${id}`);
    draw(last);
  }
  await refresh();
  return { refresh, every_ms: 1500 };
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  return typeof v === "number" ? num(v, 4) : String(v);
}

function bar(stage) {
  const total = Math.max(1, Object.values(stage.devices).reduce((a, b) => a + b, 0));
  const done = (stage.devices.active || 0) / total;
  return h("progress", { max: "1", value: String(done), "aria-label": `stage ${stage.index + 1}: ${Math.round(done * 100)} % active` });
}
