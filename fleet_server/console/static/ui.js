// Small DOM helpers: build elements, format times and numbers, confirm an action.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

export function time(iso) {
  if (!iso) return "never";
  const d = new Date(iso);
  return h("time", { datetime: iso, title: d.toISOString() }, ago(d));
}

export function ago(date) {
  const s = Math.round((Date.now() - date.getTime()) / 1000);
  if (s < 5) return "just now";
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 86400 * 2) return `${Math.round(s / 3600)} h ago`;
  return date.toISOString().slice(0, 10);
}

export function num(x, digits = 2) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number(x).toLocaleString("en", { maximumFractionDigits: digits });
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${num(n, i ? 1 : 0)} ${units[i]}`;
}

export function badge(state) {
  const s = String(state ?? "unknown");
  return h("span", { class: `badge s-${s.replace(/[^a-z_]/g, "")}` }, s.replaceAll("_", " "));
}

export function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err.message || String(err));
}

export function announce(text) {
  const status = document.getElementById("status");
  status.textContent = text;
}

// Ask before a mutating action; resolves to the reason typed, or null when cancelled.
export function confirmAction(title, text) {
  const dialog = document.getElementById("confirm");
  dialog.querySelector("#confirm-title").textContent = title;
  dialog.querySelector("#confirm-text").textContent = text;
  const reason = dialog.querySelector("#confirm-reason");
  reason.value = "";
  // Enter in the reason confirms (a form's implicit submit would pick its first button: Cancel)
  reason.onkeydown = (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      dialog.close("ok");
    }
  };
  // the dialog gives the focus back to what opened it; a live refresh may have replaced
  // that control meanwhile, so then the focus goes to its successor (same action or text)
  const opener = document.activeElement;
  const key = opener ? { tag: opener.tagName, action: opener.getAttribute("data-action"), text: opener.textContent } : null;
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        if (key && !opener.isConnected) {
          const same = [...document.querySelectorAll(key.tag)].find((c) =>
            key.action ? c.getAttribute("data-action") === key.action : c.textContent === key.text);
          if (same) same.focus({ preventScroll: true });
        }
        resolve(dialog.returnValue === "ok" ? reason.value : null);
      },
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
    reason.focus();
  });
}

export function table(columns, rows, { caption, empty = "Nothing here yet." } = {}) {
  return h(
    "table",
    {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.label)))),
    h(
      "tbody",
      {},
      rows.length
        ? rows.map((r) => h("tr", {}, columns.map((c) => h("td", { "data-col": c.label }, c.cell(r)))))
        : h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty)),
    ),
  );
}

// Run `redraw` (which replaces parts of `root`) and give the focus back to the same control,
// so a live refresh never throws a keyboard user out of the page.
export async function keepFocus(root, redraw) {
  const el = document.activeElement;
  const inside = el && el !== root && root.contains(el);
  const key = inside ? { tag: el.tagName, id: el.id, href: el.getAttribute("href"), text: el.textContent } : null;
  await redraw();
  if (!key || document.activeElement === el && root.contains(el)) return;
  const same = key.id
    ? document.getElementById(key.id)
    : [...root.querySelectorAll(key.tag)].find((c) => c.getAttribute("href") === key.href && c.textContent === key.text);
  if (same) same.focus({ preventScroll: true });
}
