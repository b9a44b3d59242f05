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

// A JSON call with the session's token; `json` (optional) is sent as the request body.
async function api(path, { method = "GET", json } = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  const init = { method, headers };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) throw new Unauthorized("token refused");
  const body = await resp.json().catch(() => ({}));
  if (resp.status === 403) throw new Forbidden(body.detail || "not allowed");
  if (!resp.ok) throw new Error(body.detail || `HTTP ${resp.status}`);
  return body;
}

// The shell: login form (template #login-tpl), nav (#nav, links "#<page>"), sign-out (#logout),
// and <main id="main"> filled by the current page's function (async, returns nodes).
function startConsole({ pages, home, onRender = () => {}, onSignOut = () => {} }) {
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  const logout = document.getElementById("logout");

  function currentPage() {
    const name = location.hash.replace(/^#/, "");
    return pages[name] ? name : home;
  }

  async function render() {
    if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin();
    const name = currentPage();
    nav.hidden = false;
    logout.hidden = false;
    for (const a of nav.querySelectorAll("a")) {
      a.classList.toggle("active", a.getAttribute("href") === `#${name}`);
    }
    onRender();
    try {
      const content = await pages[name](render);
      main.replaceChildren(...content);
      main.dataset.page = name;
    } catch (err) {
      if (err instanceof Unauthorized) return showLogin("The token was refused.");
      const text = err instanceof Forbidden ? `Refused: ${err.message}` : `Could not load: ${err.message}`;
      main.replaceChildren(el("p", { class: "error", role: "alert" }, text));
      main.dataset.page = name;
    }
  }

  function showLogin(message = "") {
    sessionStorage.removeItem(TOKEN_KEY);
    onSignOut();
    nav.hidden = true;
    logout.hidden = true;
    main.dataset.page = "login";
    main.replaceChildren(document.getElementById("login-tpl").content.cloneNode(true));
    document.getElementById("login-error").textContent = message;
    document.getElementById("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
      render();
    });
    document.getElementById("token").focus();
  }

  logout.addEventListener("click", () => showLogin());
  window.addEventListener("hashchange", render);
  render();
  return { render, showLogin };
}
