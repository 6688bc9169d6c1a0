// One device: desired vs reported, its timeline, latency and throughput charts, drift per feature.
import { lineChart } from "../charts.js";
import { badge, errorBox, h, num, replace, table, time } from "../ui.js";

export async function mount(root, ctx, params, id) {
  const head = h("section", { class: "card", "aria-labelledby": "state-h" });
  const latency = h("div", { class: "chart" });
  const throughput = h("div", { class: "chart" });
  const drift = h("section", { class: "card", "aria-labelledby": "drift-h" });
  const events = h("section", { class: "card wide", "aria-labelledby": "timeline-h" });
  root.append(
    h("p", {}, h("a", { href: "#/devices" }, "← Devices")),
    h("h1", {}, `Device ${id}`),
    head,
    h("section", { class: "card wide", "aria-labelledby": "perf-h" },
      h("h2", { id: "perf-h" }, "Latency and throughput"), h("div", { class: "charts" }, latency, throughput)),
    drift,
    events,
  );
  const path = `/devices/${encodeURIComponent(id)}`;

  async function refresh() {
    const [d, timeline, perf] = await Promise.all([
      ctx.api(path),
      ctx.api(`${path}/timeline`, { params: { limit: 50 } }),
      ctx.api(`${path}/performance`, { params: { limit: 300 } }),
    ]);
    const reported = d.active_bundle;
    const desired = d.desired?.bundle;
    const converged = d.desired_revision === 0 || (d.reported_revision ?? -1) >= d.desired_revision;
    replace(head,
      h("h2", { id: "state-h" }, "Desired and reported"),
      h("dl", { class: "facts" },
        fact("State", [badge(d.online ? "online" : "offline"), " ", badge(d.health)]),
        fact("Last seen", time(d.last_seen)),
        fact("Profile", d.profile),
        fact("Labels", Object.entries(d.labels).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
        fact("Desired", desired ? `${desired.model} ${desired.version} (revision ${d.desired_revision})` : `nothing yet (revision ${d.desired_revision})`),
        fact("Reported", reported ? `${reported.model} ${reported.version} (revision ${d.reported_revision ?? "–"})` : "no bundle"),
        fact("Converged", converged ? badge("yes") : badge("pending")),
        fact("Agent", d.agent_version || "–"),
        fact("Telemetry", `${num(d.windows_received, 0)} windows received, ${num(d.windows_lost, 0)} lost, ${num(d.dropped_on_device, 0)} dropped on the device`),
      ));
    const times = perf.map((p) => p.t);
    if (perf.length) {
      lineChart(latency, { title: "Latency", unit: "ms", times, series: [
        { label: "p50", values: perf.map((p) => p.p50_ms) },
        { label: "p95", values: perf.map((p) => p.p95_ms) },
      ] });
      lineChart(throughput, { title: "Throughput", unit: "req/s", times, series: [
        { label: "requests/s", values: perf.map((p) => p.throughput_rps) },
        { label: "errors", values: perf.map((p) => p.errors) },
      ] });
    } else {
      replace(latency, h("p", { class: "empty" }, "No telemetry yet."));
      replace(throughput);
    }
    await refreshDrift(reported);
    replace(events,
      h("h2", { id: "timeline-h" }, "Timeline"),
      table([
        { label: "When", cell: (e) => time(e.ts) },
        { label: "From", cell: (e) => e.source },
        { label: "Event", cell: (e) => h("code", {}, e.type) },
        { label: "Severity", cell: (e) => badge(e.severity) },
        { label: "Message", cell: (e) => e.message },
      ], timeline, { empty: "No events yet." }));
  }

  async function refreshDrift(reported) {
    const title = h("h2", { id: "drift-h" }, "Drift per feature (last hour)");
    if (!reported) return replace(drift, title, h("p", { class: "empty" }, "No bundle, no drift."));
    let report;
    try {
      report = await ctx.api("/drift", { params: { bundle: reported.sha256, device: id, minutes: 60 } });
    } catch (err) {
      return replace(drift, title, errorBox(err));
    }
    const mine = report.devices.find((g) => g.name === id);
    const rows = report.keys.map((k) => ({ key: k, ...(mine?.keys[k] || {}) }));
    replace(drift, title, table([
      { label: "Feature", cell: (r) => r.key },
      { label: "PSI", cell: (r) => num(r.psi, 3) },
      { label: "JS", cell: (r) => num(r.js, 3) },
      { label: "Samples", cell: (r) => num(r.samples, 0) },
      { label: "Level", cell: (r) => badge(r.level || "no_data") },
    ], rows, { empty: report.has_reference ? "No telemetry in the last hour." : "This bundle carries no reference statistics." }));
  }

  function fact(label, value) {
    return [h("dt", {}, label), h("dd", {}, value)];
  }

  await refresh();
  return { refresh, every_ms: 5000 };
}
