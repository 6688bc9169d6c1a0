// Devices: a server-side filtered, sorted and paginated table (fine for 10,000 devices).
import { badge, errorBox, h, replace, time } from "../ui.js";

const PAGE = 50;
// "w<s>": seen within s seconds; "u<s>": not seen for s seconds (or never)
const SEEN = [["", "any time"], ["w300", "in the last 5 min"], ["w3600", "in the last hour"],
  ["u3600", "not for an hour"], ["u86400", "not for a day"], ["u604800", "not for a week"]];
const COLUMNS = [
  { key: "id", label: "Device", sort: "id" },
  { key: "labels", label: "Labels", sort: "label" },
  { key: "profile", label: "Profile", sort: "profile" },
  { key: "version", label: "Version", sort: "version" },
  { key: "state", label: "State", sort: "online" },
  { key: "last_seen", label: "Last seen", sort: "last_seen" },
];

export async function mount(root, ctx, params) {
  const state = {
    label: params.get("label") || "",
    profile: params.get("profile") || "",
    version: params.get("version") || "",
    online: params.get("online") || "",
    label_key: params.get("label_key") || "",
    seen: params.get("seen") || "",
    sort: params.get("sort") || "id",
    desc: params.get("desc") === "true",
    offset: Number(params.get("offset") || 0),
  };
  const field = (name, label, placeholder) =>
    h("div", { class: "field" }, h("label", { for: `f-${name}` }, label),
      h("input", { id: `f-${name}`, name, value: state[name], placeholder, autocomplete: "off" }));
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter devices" },
    field("label", "Label", "line=3"),
    field("profile", "Profile", "x86-64"),
    field("version", "Version", "2.0.0"),
    h("div", { class: "field" }, h("label", { for: "f-online" }, "State"),
      h("select", { id: "f-online", name: "online" },
        h("option", { value: "" }, "any"),
        h("option", { value: "true", selected: state.online === "true" }, "online"),
        h("option", { value: "false", selected: state.online === "false" }, "offline"))),
    h("div", { class: "field" }, h("label", { for: "f-seen" }, "Last seen"),
      h("select", { id: "f-seen", name: "seen" }, SEEN.map(([value, text]) =>
        h("option", { value, selected: state.seen === value }, text)))),
    field("label_key", "Sort labels by key", "line"),
    h("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    for (const k of ["label", "profile", "version", "online", "seen", "label_key"]) state[k] = String(data.get(k) || "").trim();
    if (state.sort === "label" && !state.label_key) state.sort = "id";
    state.offset = 0;
    refresh();
  });
  const summary = h("p", { class: "summary", "aria-live": "polite" });
  const body = h("div", { class: "table-wrap" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  root.append(h("h1", {}, "Devices"), form, summary, body, pager);

  async function refresh() {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) if (v !== "" && v !== false && !(k === "offset" && !v)) p.set(k, v);
    ctx.setParams(p);
    let page;
    try {
      page = await ctx.api("/devices", {
        params: {
          label: state.label ? state.label.split(/\s*,\s*/) : undefined,
          profile: state.profile, version: state.version, online: state.online,
          seen_within_s: state.seen.startsWith("w") ? state.seen.slice(1) : undefined,
          unseen_for_s: state.seen.startsWith("u") ? state.seen.slice(1) : undefined,
          sort: state.sort, label_key: state.label_key, desc: state.desc, limit: PAGE, offset: state.offset,
        },
      });
    } catch (err) {
      if (err.status === 401) throw err;
      replace(body, errorBox(err));
      return;
    }
    const last = Math.min(state.offset + page.items.length, page.total);
    summary.textContent = page.total
      ? `${page.total.toLocaleString("en")} devices; showing ${state.offset + 1}–${last}`
      : "No device matches these filters.";
    replace(body, h("table", { class: "devices" },
      h("thead", {}, h("tr", {}, COLUMNS.map(header))),
      h("tbody", {}, page.items.map(row))));
    replace(pager,
      h("button", { type: "button", disabled: state.offset === 0, onclick: () => move(-PAGE) }, "← Previous"),
      h("span", {}, `Page ${Math.floor(state.offset / PAGE) + 1} of ${Math.max(1, Math.ceil(page.total / PAGE))}`),
      h("button", { type: "button", disabled: last >= page.total, onclick: () => move(PAGE) }, "Next →"));
  }

  function move(delta) {
    state.offset = Math.max(0, state.offset + delta);
    refresh();
  }

  function header(c) {
    if (!c.sort || (c.sort === "label" && !state.label_key)) return h("th", { scope: "col" }, c.label);
    const sorted = state.sort === c.sort;
    const dir = sorted ? (state.desc ? "descending" : "ascending") : "none";
    return h("th", { scope: "col", "aria-sort": dir },
      h("button", { type: "button", class: "sort", onclick: () => {
        state.desc = state.sort === c.sort ? !state.desc : c.sort === "last_seen";  // read now: a quick second click sees the first
        state.sort = c.sort;
        state.offset = 0;
        refresh();
      } }, c.sort === "label" ? `Labels (${state.label_key})` : c.label, sorted ? (state.desc ? " ▼" : " ▲") : ""));
  }

  await refresh();
  return { refresh, every_ms: 5000 };
}

function row(d) {
  const bundle = d.active_bundle || {};
  return h("tr", {},
    h("td", { "data-col": "Device" }, h("a", { href: `#/devices/${encodeURIComponent(d.id)}` }, d.id)),
    h("td", { "data-col": "Labels" }, Object.entries(d.labels).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
    h("td", { "data-col": "Profile" }, d.profile),
    h("td", { "data-col": "Version" }, bundle.version ? `${bundle.model} ${bundle.version}` : "–"),
    h("td", { "data-col": "State" }, badge(d.online ? "online" : "offline"), d.health !== "unknown" && d.health !== "ok" ? badge(d.health) : null),
    h("td", { "data-col": "Last seen" }, time(d.last_seen)));
}
