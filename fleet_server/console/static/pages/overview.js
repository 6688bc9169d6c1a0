// Overview: devices online/offline, versions running per model, active rollouts, recent alerts.
import { badge, h, num, replace, table, time } from "../ui.js";

const KINDS = {
  gate_breach: "Gate breach",
  failed_activation: "Failed activation",
  drift: "Drift",
  device_error: "Device error",
  telemetry_loss: "Telemetry loss",
};

export async function mount(root, ctx) {
  const counts = h("section", { class: "tiles", "aria-label": "Devices" });
  const versions = h("section", { class: "card", "aria-labelledby": "versions-h" });
  const active = h("section", { class: "card", "aria-labelledby": "active-h" });
  const alerts = h("section", { class: "card wide", "aria-labelledby": "alerts-h" });
  root.append(h("h1", {}, "Overview"), counts, h("div", { class: "grid" }, versions, active), alerts);

  async function refresh() {
    const o = await ctx.api("/overview");
    replace(
      counts,
      tile("Devices", o.devices.total, "#/devices"),
      tile("Online", o.devices.online, "#/devices?online=true", "ok"),
      tile("Offline", o.devices.offline, "#/devices?online=false", o.devices.offline ? "warn" : ""),
      tile("Active rollouts", o.rollouts.length, "#/rollouts"),
    );
    replace(
      versions,
      h("h2", { id: "versions-h" }, "Versions running"),
      table(
        [
          { label: "Model", cell: (r) => r.model },
          { label: "Version", cell: (r) => h("a", { href: `#/devices?version=${encodeURIComponent(r.version)}` }, r.version) },
          { label: "Devices", cell: (r) => num(r.devices, 0) },
        ],
        o.models.flatMap((m) => m.versions.map((v) => ({ model: m.model, ...v }))),
        { empty: "No device reports a bundle yet." },
      ),
    );
    replace(
      active,
      h("h2", { id: "active-h" }, "Active rollouts"),
      table(
        [
          { label: "Rollout", cell: (r) => h("a", { href: `#/rollouts/${r.id}` }, `${r.id} ${r.name}`) },
          { label: "Version", cell: (r) => `${r.model} ${r.version}` },
          { label: "Status", cell: (r) => badge(r.status) },
          { label: "Stage", cell: (r) => `${r.stage + 1} of ${r.stages}` },
        ],
        o.rollouts,
        { empty: "No rollout is running." },
      ),
    );
    replace(
      alerts,
      h("h2", { id: "alerts-h" }, "Recent alerts"),
      table(
        [
          { label: "When", cell: (a) => time(a.ts) },
          { label: "Kind", cell: (a) => h("span", { class: `kind k-${a.kind}` }, KINDS[a.kind] || a.kind) },
          { label: "About", cell: (a) => subjectLink(a.subject) },
          { label: "What", cell: (a) => a.message },
        ],
        o.alerts,
        { empty: "No alerts." },
      ),
    );
  }
  await refresh();
  return { refresh, every_ms: 3000 };
}

function tile(label, value, href, tone = "") {
  return h("a", { class: `tile ${tone}`, href }, h("span", { class: "value" }, num(value, 0)), h("span", {}, label));
}

function subjectLink(subject) {
  const [kind, id] = subject.split(" ");
  if (kind === "device") return h("a", { href: `#/devices/${encodeURIComponent(id)}` }, subject);
  if (kind === "rollout") return h("a", { href: `#/rollouts/${id}` }, subject);
  return subject;
}
