// hpacs cloud console: a static page over the cloud API's admin JSON (/api/*), no build step.
// Helpers (el, table, api, pill, ...) and the login/nav shell come from /console/shared/console.js.
"use strict";

const PHASE_KIND = { done: "ok", failed: "bad", pending: "" };
const RESTORE_REFRESH_MS = 2000;
let restoreSite = "";

function lag(s) {
  return s ? `${age(s)} behind` : "current";
}

async function sites() {
  const { sites: list } = await api("/api/sites");
  const out = [el("h2", {}, "Sites")];
  if (!list.length) {
    out.push(el("p", { class: "empty" }, "No site has written a catalog yet."));
    return out;
  }
  out.push(table(["Site", "Studies", "Instances", "Last catalog object", "Written", "Index lag"],
    list.map((s) => el("tr", { "data-site": s.site },
      el("td", { class: "mono" }, s.site),
      el("td", { class: "studies" }, String(s.studies)),
      el("td", { class: "instances" }, String(s.instances)),
      el("td", { class: "mono" }, s.last_catalog_key || "–"),
      el("td", {}, when(s.last_catalog_at)),
      el("td", {}, pill(lag(s.lag_s), s.lag_s > 300 ? "warn" : "ok"))))));
  return out;
}

function progress(r) {
  const parts = [];
  if (r.instances_indexed) parts.push(`${r.instances_indexed} instances indexed`);
  if (r.studies_to_prefetch) parts.push(`${r.studies_prefetched} / ${r.studies_to_prefetch} studies prefetched`);
  if (r.instances_prefetched) parts.push(`${r.instances_prefetched} instances recalled`);
  return parts.join(" · ") || "–";
}

// `cloud` is the site of STOW uploads to this API, not an edge: nothing to restore it to.
const INTERNAL_SITES = new Set(["cloud"]);

async function restores(render) {
  const list = (await api("/api/sites")).sites.filter((s) => !INTERNAL_SITES.has(s.site));
  const out = [el("h2", {}, "Restore jobs")];
  if (!list.length) {
    out.push(el("p", { class: "empty" }, "No site has written a catalog yet: nothing to restore."));
    return out;
  }
  if (!list.some((s) => s.site === restoreSite)) restoreSite = list[0].site;
  const select = el("select", { id: "restore-site", "aria-label": "Site" },
    list.map((s) => el("option", { value: s.site, selected: s.site === restoreSite }, s.site)));
  select.addEventListener("change", () => { restoreSite = select.value; render(); });
  const days = el("input", { id: "prefetch-days", type: "number", min: "0", placeholder: "default",
    "aria-label": "Prefetch days" });
  const create = el("button", { type: "button", class: "primary" }, "Request restore");
  const result = el("span", { class: "result", role: "status" });
  create.addEventListener("click", async () => {
    if (!confirm(`Restore site ${restoreSite}? Its sync agent will rebuild the edge index from the catalog.`)) return;
    create.disabled = true;
    const body = days.value === "" ? {} : { prefetch_days: Number(days.value) };
    try {
      await api(`/api/sites/${encodeURIComponent(restoreSite)}/restores`, { method: "POST", json: body });
      render();
    } catch (err) {
      create.disabled = false;
      result.className = "result bad";
      result.textContent = `Failed: ${err.message}`;
    }
  });
  out.push(el("p", { class: "toolbar" }, el("label", {}, "Site ", select), " ",
    el("label", {}, "Prefetch days ", days), " ", create, " ", result));
  const jobs = el("div", { id: "restore-jobs" }, await jobsView(restoreSite));
  out.push(jobs, el("p", { class: "hint" },
    "The site's sync agent picks a request up on its next poll and writes progress beside it; "
    + "this list follows it while a restore is running."));
  follow(jobs, restoreSite);
  return out;
}

async function jobsView(site) {
  const jobs = await api(`/api/sites/${encodeURIComponent(site)}/restores`);
  if (!jobs.length) return el("p", { class: "empty" }, `No restore has been requested for site ${site}.`);
  jobs.sort((a, b) => (a.id < b.id ? 1 : -1));  // ids sort by request time
  const view = table(["Restore", "Phase", "Progress", "Agent", "Started", "Updated", "Error"],
    jobs.map((r) => el("tr", { "data-restore": r.id },
      el("td", { class: "mono" }, r.id),
      el("td", { class: "phase" }, pill(r.phase, PHASE_KIND[r.phase] ?? "warn")),
      el("td", {}, progress(r)),
      el("td", { class: "mono" }, r.agent || "–"),
      el("td", {}, when(r.started_at)),
      el("td", {}, when(r.updated_at)),
      el("td", {}, r.error || ""))));
  view.dataset.running = String(jobs.some((r) => r.phase !== "done" && r.phase !== "failed"));
  return view;
}

// Re-read the jobs while one is running and the list is still on screen.
function follow(container, site) {
  setTimeout(async () => {
    if (!container.isConnected || container.firstChild?.dataset?.running !== "true") return;
    try {
      container.replaceChildren(await jobsView(site));
    } catch (err) {
      return;  // the next navigation shows the error
    }
    follow(container, site);
  }, RESTORE_REFRESH_MS);
}

async function tokens(render) {
  const list = await api("/api/tokens");
  const name = el("input", { id: "token-name", name: "name", required: true, maxlength: 64 });
  const role = el("select", { id: "token-role", name: "role" },
    ["reader", "agent", "admin"].map((r) => el("option", { value: r }, r)));
  const sitesIn = el("input", { id: "token-sites", name: "sites", placeholder: "north,south (admin: all)" });
  const message = el("p", { class: "error", role: "alert" });
  const secret = el("div", { id: "token-secret" });
  const form = el("form", { class: "panel", id: "token-form" }, el("h3", {}, "Create a token"),
    el("label", {}, "Name", name), el("label", {}, "Role", role), el("label", {}, "Sites", sitesIn),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Create token")),
    message, secret);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    message.textContent = "";
    try {
      const t = await api("/api/tokens", { method: "POST", json: {
        name: name.value.trim(), role: role.value,
        sites: sitesIn.value.split(",").map((x) => x.trim()).filter(Boolean) } });
      const listView = await tokenTable(await api("/api/tokens"), render);
      document.getElementById("token-list").replaceChildren(listView);
      // shown once: it is stored as a hash and no page can show it again
      secret.replaceChildren(el("p", { class: "hint" }, `Token for ${t.name} (${t.role}): copy it now, it is not shown again.`),
        el("input", { class: "mono", id: "new-token", readonly: true, value: t.token, size: 60, "aria-label": "New token" }));
      form.reset();
    } catch (err) {
      if (err instanceof Unauthorized) throw err;
      message.textContent = err.message;
    }
  });
  return [el("h2", {}, "Tokens"), form, el("div", { id: "token-list" }, await tokenTable(list, render))];
}

async function tokenTable(list, render) {
  if (!list.length) return el("p", { class: "empty" }, "No token exists.");
  return table(["Name", "Role", "Sites", "Created", "State", ""], list.map((t) => {
    let revoke = null;
    if (!t.revoked_at) {
      revoke = el("button", { type: "button" }, "Revoke");
      revoke.addEventListener("click", async () => {
        if (!confirm(`Revoke token ${t.name}? Whatever uses it is refused from now on.`)) return;
        revoke.disabled = true;
        try {
          await api(`/api/tokens/${encodeURIComponent(t.name)}`, { method: "DELETE" });
        } catch (err) {
          revoke.disabled = false;
          revoke.title = err.message;
          if (err instanceof Unauthorized) return;
        }
        render();
      });
    }
    return el("tr", { class: t.revoked_at ? "revoked" : "", "data-token": t.name },
      el("td", { class: "mono cut" }, t.name), el("td", {}, t.role),
      el("td", {}, t.role === "admin" ? "all" : (t.sites.join(", ") || "none")),
      el("td", {}, when(t.created_at)),
      el("td", {}, t.revoked_at ? pill(`revoked ${when(t.revoked_at)}`, "bad") : pill("active", "ok")),
      el("td", {}, revoke));
  }));
}

const AUDIT_PAGE = 50;
let auditFilter = { offset: 0 };

function auditQuery(f) {
  const q = new URLSearchParams({ limit: String(AUDIT_PAGE), offset: String(f.offset || 0) });
  for (const k of ["token", "action", "study", "outcome"]) if (f[k]) q.set(k, f[k]);
  if (f.from) q.set("since", String(Date.parse(f.from) / 1000));
  if (f.to) q.set("until", String(Date.parse(f.to) / 1000));
  return q.toString();
}

async function audit(render) {
  const [log, chain] = await Promise.all([api(`/api/audit?${auditQuery(auditFilter)}`), api("/api/audit/verify")]);
  const verdict = chain.ok
    ? el("div", { class: "big", id: "chain-state" }, pill("intact", "ok"),
      ` ${chain.records} records, ${chain.checkpoints} checkpoints`)
    : el("div", { class: "big", id: "chain-state" }, pill("broken", "bad"), ` ${chain.problems_total} problem(s)`);
  const problems = chain.problems.map((p) => el("div", { class: "sub" },
    `${p.where}${p.seq === null ? "" : ` seq ${p.seq}`}: ${p.reason}`));
  const refresh = el("button", { type: "button" }, "Verify again");
  refresh.addEventListener("click", () => render());
  const input = (key, attrs) => el("input", { id: `audit-${key}`, value: auditFilter[key] || "", ...attrs });
  const from = input("from", { type: "datetime-local", "aria-label": "From" });
  const to = input("to", { type: "datetime-local", "aria-label": "To" });
  const token = input("token", { placeholder: "token name", "aria-label": "Token" });
  const action = input("action", { placeholder: "e.g. wado, restore, denied", "aria-label": "Action" });
  const study = input("study", { placeholder: "study UID (prefix)", "aria-label": "Study UID" });
  const outcome = el("select", { id: "audit-outcome", "aria-label": "Outcome" },
    ["", "ok", "denied", "error", "aborted"].map((o) => el("option", { value: o, selected: o === (auditFilter.outcome || "") }, o || "any outcome")));
  const apply = el("button", { type: "submit", class: "primary" }, "Filter");
  const clear = el("button", { type: "button" }, "Clear");
  const filters = el("form", { class: "toolbar", id: "audit-filters" }, from, to, token, action, study, outcome, apply, clear);
  filters.addEventListener("submit", (ev) => {
    ev.preventDefault();
    auditFilter = { offset: 0, from: from.value, to: to.value, token: token.value.trim(),
      action: action.value.trim(), study: study.value.trim(), outcome: outcome.value };
    render();
  });
  clear.addEventListener("click", () => { auditFilter = { offset: 0 }; render(); });
  const prev = el("button", { type: "button", disabled: !log.offset }, "Newer");
  const next = el("button", { type: "button", disabled: !log.more }, "Older");
  prev.addEventListener("click", () => { auditFilter.offset = Math.max(0, log.offset - AUDIT_PAGE); render(); });
  next.addEventListener("click", () => { auditFilter.offset = log.offset + AUDIT_PAGE; render(); });
  const first = log.events.length ? log.offset + 1 : 0;
  const pager = el("div", { class: "pager", id: "audit-pager" }, prev, next,
    el("span", {}, `records ${first}–${log.offset + log.events.length}${log.more ? " (more older)" : ""}`));
  const out = [el("h2", {}, "Audit trail"),
    el("div", { class: "cards" }, el("div", { class: "card", id: "card-chain" },
      el("h3", {}, `Audit chain · replica ${chain.replica}`), verdict, problems,
      el("div", { class: "sub" }, "Checked with the audit key against every checkpoint in the bucket; "
        + "each record against its shipped copy: ",
        el("span", { class: "mono" }, "hpacs-cloud audit verify --bucket")), el("p", {}, refresh))),
    filters, pager];
  if (!log.events.length) {
    out.push(el("p", { class: "empty" }, "No audit event matches."));
    return out;
  }
  out.push(table(["#", "When", "Token", "Role", "Client", "Action", "Study UID", "Outcome", "Detail"],
    log.events.map((e) => el("tr", { class: e.outcome === "denied" ? "denied" : "" },
      el("td", {}, String(e.seq)), el("td", {}, when(e.time)),
      el("td", { class: "mono cut", title: e.token || "" }, e.token || "(none)"), el("td", {}, e.role || "–"),
      el("td", { class: "mono" }, e.client), el("td", {}, e.action),
      el("td", { class: "mono cut", title: e.study_uid || "" }, e.study_uid || ""),
      el("td", {}, pill(`${e.outcome} ${e.status}${e.count ? ` ×${e.count}` : ""}`,
        e.outcome === "ok" ? "ok" : e.outcome === "denied" ? "bad" : "warn")),
      el("td", { class: "mono wrap" }, e.detail)))));
  return out;
}

// Who signed in (GET /api/session): a reader gets the study browser and the viewer page, never
// admin pages it would be refused.
let me = null;

async function whoami() {
  if (!me) me = await api("/api/session");
  return me;
}

function adminOnly(page) {
  return async (render) => {
    const who = await whoami();
    if (who.role === "admin") return page(render);
    history.replaceState(null, "", "#browser");
    return browser(render);
  };
}

function showAdminLinks() {
  for (const a of document.querySelectorAll("#nav a.admin-only")) a.hidden = !me || me.role !== "admin";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === location.hash.split("?")[0]);
  }
}

async function viewer(render) {
  const who = await whoami();
  showAdminLinks();
  const open = el("button", { type: "button", class: "primary", id: "open-viewer" }, "Open the viewer");
  open.addEventListener("click", async () => {
    await api("/api/session", { method: "POST" });  // a session cookie for this token
    location.assign("/viewer/");
  });
  const study = el("input", { id: "share-study", size: "56", placeholder: "Study Instance UID",
    "aria-label": "Study Instance UID" });
  const hours = el("input", { id: "share-hours", type: "number", min: "1", value: "72", "aria-label": "Hours" });
  const make = el("button", { type: "button", id: "share-create" }, "Create share link");
  const result = el("p", { id: "share-result", class: "mono", role: "status" });
  make.addEventListener("click", async () => {
    try {
      const s = await api("/api/shares", { method: "POST",
        json: { study_uid: study.value.trim(), hours: Number(hours.value) } });
      result.textContent = `${s.url}  (shown once; expires ${when(s.expires_at)})`;
    } catch (err) {
      result.textContent = `Failed: ${err.message}`;
    }
  });
  const links = await api("/api/shares");
  const out = [el("h2", {}, "Viewer"),
    el("p", {}, `Signed in as ${who.name} (${who.role}; sites: ${who.role === "admin" ? "all" : who.sites.join(", ")}).`),
    el("p", {}, open),
    el("h3", {}, "Share a study"),
    el("p", { class: "toolbar" }, study, " ", el("label", {}, "Hours ", hours), " ", make), result,
    el("p", { class: "hint" }, "A share link opens the viewer on that one study, without an account, "
      + "until it expires or is revoked; every use is audited.")];
  if (!links.length) {
    out.push(el("p", { class: "empty" }, "No share link yet."));
    return out;
  }
  out.push(table(["Link", "Study UID", "Created by", "Expires", "State", ""], links.map((l) => {
    const revoke = el("button", { type: "button" }, "Revoke");
    revoke.disabled = l.state !== "active";
    revoke.addEventListener("click", async () => {
      await api(`/api/shares/${encodeURIComponent(l.id)}`, { method: "DELETE" });
      render();
    });
    return el("tr", { "data-share": l.id }, el("td", { class: "mono" }, l.id),
      el("td", { class: "mono" }, l.study_uid), el("td", {}, l.created_by), el("td", {}, when(l.expires_at)),
      el("td", {}, pill(l.state, l.state === "active" ? "ok" : "bad")), el("td", {}, revoke));
  })));
  return out;
}

// The study browser (shared/web/browser.js): thumbnails, downloads and the viewer are plain
// links and images, which carry the session cookie, not the tab's token: make one first.
let cookie = null;
const studyBrowser = HpacsBrowser.page({
  prepare: () => (cookie ||= api("/api/session", { method: "POST" }).catch((err) => { cookie = null; throw err; })),
  canUpload: (who) => who.role === "admin",  // STOW needs the write right: admins, not readers
});

async function browser(render) {
  const who = await whoami();
  showAdminLinks();
  return studyBrowser(render, who);
}

HpacsBrowser.addStudyAction((study, ctx) => {
  if (ctx.where !== "study") return null;
  const button = el("button", { type: "button", id: "study-share" }, "Share link (72 h)");
  const out = el("span", { class: "mono", id: "study-share-url", role: "status" });
  button.addEventListener("click", async () => {
    try {
      const s = await api("/api/shares", { method: "POST", json: { study_uid: study.uid, hours: 72 } });
      out.textContent = ` ${s.url} (shown once)`;
    } catch (err) {
      out.textContent = ` Failed: ${err.message}`;
    }
  });
  return el("span", {}, button, out);
});

startConsole({
  pages: { browser, viewer, sites: adminOnly(sites), restores: adminOnly(restores), tokens: adminOnly(tokens),
    audit: adminOnly(audit) },
  home: "sites",
  onRender: showAdminLinks,
  onSignOut: () => {
    me = null;
    if (cookie) fetch("/logout", { method: "POST", credentials: "same-origin" }).catch(() => {});  // the browser's cookie too
    cookie = null;
  },
});
