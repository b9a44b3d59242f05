// hpacs console helpers and shell, shared by the edge console and the cloud API console (no build
// step). Every value from a server is inserted as text (never as HTML): descriptions, token names
// and request paths come from outside and must not be able to inject markup.
"use strict";

const TOKEN_KEY = "hpacs-console-token";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "–";
}

function age(s) {
  if (!s) return "none";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function pill(text, kind) {
  return el("span", { class: `pill ${kind || ""}` }, text);
}

class Unauthorized extends Error {}
class Forbidden extends Error {}

// An error answer: `field` names the input a problem+json body blames (400), `status` the code.
class ApiError extends Error {
  constructor(message, status, field) { super(message); this.status = status; this.field = field; }
}

// Request headers with the token kept in sessionStorage as a bearer token when there is one;
// without one the browser's session cookie (same origin) authenticates.
function authHeaders(extra = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

// A JSON call (authHeaders); `json` (optional) is sent as the request body.
async function api(path, { method = "GET", json } = {}) {
  const headers = authHeaders({ Accept: "application/json" });
  const init = { method, headers, credentials: "same-origin" };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const resp = await fetch(path, init);
  const body = await resp.json().catch(() => ({}));
  if (resp.status === 401) throw new Unauthorized(body.detail || "token refused");
  if (resp.status === 403) throw new Forbidden(body.detail || "not allowed");
  if (!resp.ok) throw new ApiError(body.detail || `HTTP ${resp.status}`, resp.status, body.field);
  return body;
}

// The shell: login form (template #login-tpl), nav (#nav, links "#<page>"), sign-out (#logout),
// and <main id="main"> filled by the current page's function (async, returns nodes).
// Without `session`, the login form's #token goes to sessionStorage (a bearer token). With
// `session` ({ whoami, signIn(form), signOut, allowed(principal) -> page names }), the server
// keeps an HttpOnly cookie: whoami() says who is signed in, and the nav shows only the pages
// `allowed` returns (the API refuses the others anyway).
function startConsole({ pages, home, onRender = () => {}, onSignOut = () => {}, session = null }) {
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  const logout = document.getElementById("logout");
  let principal = null;

  function allowedPages() {
    return session ? session.allowed(principal).filter((p) => pages[p]) : Object.keys(pages);
  }

  function currentPage() {
    const name = location.hash.replace(/^#/, "").split("?")[0];
    const allowed = allowedPages();
    if (allowed.includes(name)) return name;
    return allowed.includes(home) ? home : allowed[0];
  }

  async function render() {
    if (session) {
      if (!principal) {
        try {
          principal = await session.whoami();
        } catch (err) {
          return showLogin();
        }
      }
    } else if (!sessionStorage.getItem(TOKEN_KEY)) {
      return showLogin();
    }
    const name = currentPage();
    nav.hidden = false;
    logout.hidden = false;
    const allowed = allowedPages();
    for (const a of nav.querySelectorAll("a")) {
      const page = a.getAttribute("href").replace(/^#/, "");
      a.hidden = !allowed.includes(page);
      a.classList.toggle("active", page === name);
    }
    onRender(principal);
    try {
      const content = await pages[name](render, principal);
      main.replaceChildren(...content);
      main.dataset.page = name;
    } catch (err) {
      if (err instanceof Unauthorized) {
        return showLogin(session ? "Your session ended: sign in again." : "The token was refused.");
      }
      const text = err instanceof Forbidden ? `Refused: ${err.message}` : `Could not load: ${err.message}`;
      main.replaceChildren(el("p", { class: "error", role: "alert" }, text));
      main.dataset.page = name;
    }
  }

  function showLogin(message = "") {
    if (!session) sessionStorage.removeItem(TOKEN_KEY);
    principal = null;
    onSignOut();
    nav.hidden = true;
    logout.hidden = true;
    main.dataset.page = "login";
    main.replaceChildren(document.getElementById("login-tpl").content.cloneNode(true));
    const error = document.getElementById("login-error");
    error.textContent = message;
    const form = document.getElementById("login-form");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (!session) {
        sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
        return render();
      }
      try {
        principal = await session.signIn(form);
      } catch (err) {
        error.textContent = err.message;
        return;
      }
      render();
    });
    const first = form.querySelector("input");
    if (first) first.focus();
  }

  logout.addEventListener("click", async () => {
    if (session) await session.signOut().catch(() => {});
    showLogin();
  });
  window.addEventListener("hashchange", render);
  render();
  return { render, showLogin, principal: () => principal };
}
