// The console's shell: log in with an API token, route between pages, refresh the page live.
import { api, ApiError, setToken, token } from "./api.js";
import { announce, errorBox, h, keepFocus, replace } from "./ui.js";
import * as overview from "./pages/overview.js";
import * as devices from "./pages/devices.js";
import * as device from "./pages/device.js";
import * as models from "./pages/models.js";
import * as rollouts from "./pages/rollouts.js";
import * as rollout from "./pages/rollout.js";
import * as drift from "./pages/drift.js";

const ROLES = ["viewer", "operator", "admin"];
const main = document.getElementById("main");
let me = null; // {name, role}
let current = null; // {timer, stop}

// [pattern, page module]; a page exports mount(root, ctx, ...params) -> {refresh, every_ms}
const ROUTES = [
  [/^\/overview$/, overview],
  [/^\/devices$/, devices],
  [/^\/devices\/(.+)$/, device],
  [/^\/models$/, models],
  [/^\/rollouts$/, rollouts],
  [/^\/rollouts\/(\d+)$/, rollout],
  [/^\/drift$/, drift],
];

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/overview";
  const [path, query = ""] = raw.split("?");
  return { path, params: new URLSearchParams(query) };
}

const ctx = {
  api,
  get me() {
    return me;
  },
  can(role) {
    return me !== null && ROLES.indexOf(me.role) >= ROLES.indexOf(role);
  },
  navigate(path) {
    location.hash = `#${path}`;
  },
  // keep the page's filters in the address, so a reload or a shared link shows the same view
  setParams(params) {
    const { path } = parseHash();
    const q = params.toString();
    history.replaceState(null, "", `#${path}${q ? `?${q}` : ""}`);
  },
};

function stopPage() {
  if (current) {
    clearTimeout(current.timer);
    current.stopped = true;
    current = null;
  }
}

// `problem`: why the last token was refused (shown as an error); `note`: anything else
function showLogin(problem, note) {
  stopPage();
  me = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    required: true,
    "aria-describedby": "token-help",
  });
  const shown = h(
    "div",
    { id: "login-problem" },
    problem ? errorBox({ message: problem }) : null,
    note ? h("p", { class: "note", role: "status" }, note) : null,
  );
  const form = h(
    "form",
    { class: "login card", onsubmit: login },
    h("h1", {}, "Log in to the fleet console"),
    h("label", { for: "token" }, "API token"),
    input,
    h(
      "p",
      { id: "token-help", class: "help" },
      "An API token of this fleet server (edgefleet fleet token --role viewer|operator|admin). ",
      "It stays in this browser tab only.",
    ),
    shown,
    h("button", { type: "submit", class: "primary" }, "Log in"),
  );
  replace(main, form);
  input.focus();

  async function login(event) {
    event.preventDefault();
    setToken(input.value.trim());
    try {
      await whoAmI();
      if (!location.hash || location.hash === "#/login") location.hash = "#/overview";
      else route();
    } catch (err) {
      setToken(null);
      replace(shown, errorBox(loginProblem(err)));
      input.focus();
    }
  }
}

function loginProblem(err) {
  if (err instanceof ApiError && err.status === 401)
    return { message: `The server refused this token: ${err.message}. Check it, or ask an admin for a new one.` };
  return err;
}

async function whoAmI() {
  me = await api("/me");
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = `${me.name} (${me.role})`;
  document.body.dataset.role = me.role;
}

async function route() {
  stopPage();
  if (!token()) return showLogin();
  if (!me) {
    try {
      await whoAmI();
    } catch (err) {
      setToken(null);
      return showLogin(loginProblem(err).message);
    }
  }
  const { path, params } = parseHash();
  const found = ROUTES.map(([re, page]) => [path.match(re), page]).find(([m]) => m);
  for (const a of document.querySelectorAll("#nav a")) {
    const here = path.startsWith(a.getAttribute("href").slice(1));
    if (here) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!found) {
    replace(main, h("h1", {}, "Not found"), h("p", {}, `No page at ${path}.`));
    return;
  }
  const [match, page] = found;
  const args = match.slice(1).map(decodeURIComponent);
  replace(main);
  const state = { stopped: false, timer: null };
  current = state;
  let mounted;
  try {
    mounted = (await page.mount(main, ctx, params, ...args)) || {};
  } catch (err) {
    return failed(err);
  }
  main.focus({ preventScroll: true });
  const h1 = main.querySelector("h1");
  if (h1) document.title = `${h1.textContent} · edgefleet console`;
  announce(`${h1 ? h1.textContent : "Page"} loaded`);
  if (!mounted.refresh) return;
  const tick = async () => {
    if (state.stopped) return;
    try {
      await keepFocus(main, mounted.refresh);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return failed(err);
      console.warn("refresh failed", err);
    }
    if (!state.stopped) state.timer = setTimeout(tick, mounted.every_ms || 2000);
  };
  await tick();
}

function failed(err) {
  if (err instanceof ApiError && err.status === 401) {
    setToken(null);
    return showLogin(loginProblem(err).message);
  }
  replace(main, h("h1", {}, "Something went wrong"), errorBox(err));
}

document.getElementById("logout").addEventListener("click", () => {
  setToken(null);
  showLogin(null, "You are logged out.");
});
window.addEventListener("hashchange", route);
route();
