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

async function restores(render) {
  const { sites: list } = await api("/api/sites");
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

async function tokens() {
  const list = await api("/api/tokens");
  const out = [el("h2", {}, "Tokens"),
    el("p", { class: "hint", id: "tokens-cli" }, "Tokens are created and revoked with the CLI only (",
      el("span", { class: "mono" }, "hpacs-cloud token create --role admin|reader|agent --sites A,B --name NAME"),
      ", ", el("span", { class: "mono" }, "hpacs-cloud token revoke NAME"),
      "): a token is shown once, at creation, and never by this console.")];
  if (!list.length) {
    out.push(el("p", { class: "empty" }, "No token exists."));
    return out;
  }
  out.push(table(["Name", "Role", "Sites", "Created", "State"], list.map((t) =>
    el("tr", { class: t.revoked_at ? "revoked" : "" },
      el("td", { class: "mono" }, t.name), el("td", {}, t.role),
      el("td", {}, t.role === "admin" ? "all" : (t.sites.join(", ") || "none")),
      el("td", {}, when(t.created_at)),
      el("td", {}, t.revoked_at ? pill(`revoked ${when(t.revoked_at)}`, "bad") : pill("active", "ok"))))));
  return out;
}

async function audit(render) {
  const [log, chain] = await Promise.all([api("/api/audit?limit=200"), api("/api/audit/verify")]);
  const verdict = chain.ok
    ? el("div", { class: "big", id: "chain-state" }, pill("intact", "ok"),
      ` ${chain.records} records, ${chain.checkpoints} checkpoints`)
    : el("div", { class: "big", id: "chain-state" }, pill("broken", "bad"), ` ${chain.problems_total} problem(s)`);
  const problems = chain.problems.map((p) => el("div", { class: "sub" },
    `${p.where}${p.seq === null ? "" : ` seq ${p.seq}`}: ${p.reason}`));
  const refresh = el("button", { type: "button" }, "Verify again");
  refresh.addEventListener("click", () => render());
  const out = [el("h2", {}, "Audit trail"),
    el("div", { class: "cards" }, el("div", { class: "card", id: "card-chain" },
      el("h3", {}, `Audit chain · replica ${chain.replica}`), verdict, problems,
      el("div", { class: "sub" }, "Checked with the audit key against every checkpoint in the bucket; "
        + "each record against its shipped copy: ",
        el("span", { class: "mono" }, "hpacs-cloud audit verify --bucket")), el("p", {}, refresh)))];
  if (!log.events.length) {
    out.push(el("p", { class: "empty" }, "No audit event yet."));
    return out;
  }
  out.push(table(["#", "When", "Token", "Role", "Client", "Action", "Study UID", "Outcome", "Detail"],
    log.events.map((e) => el("tr", { class: e.outcome === "denied" ? "denied" : "" },
      el("td", {}, String(e.seq)), el("td", {}, when(e.time)),
      el("td", { class: "mono" }, e.token || "(none)"), el("td", {}, e.role || "–"),
      el("td", { class: "mono" }, e.client), el("td", {}, e.action),
      el("td", { class: "mono" }, e.study_uid || ""),
      el("td", {}, pill(`${e.outcome} ${e.status}${e.count ? ` ×${e.count}` : ""}`,
        e.outcome === "ok" ? "ok" : e.outcome === "denied" ? "bad" : "warn")),
      el("td", { class: "mono" }, e.detail)))));
  return out;
}

// Who signed in (GET /api/session): a reader gets the viewer page, never admin pages it would be
// refused.
let me = null;

async function whoami() {
  if (!me) me = await api("/api/session");
  return me;
}

function adminOnly(page) {
  return async (render) => {
    const who = await whoami();
    if (who.role === "admin") return page(render);
    history.replaceState(null, "", "#viewer");
    showAdminLinks();
    return viewer(render);
  };
}

function showAdminLinks() {
  for (const a of document.querySelectorAll("#nav a.admin-only")) a.hidden = !me || me.role !== "admin";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === location.hash);
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

startConsole({
  pages: { viewer, sites: adminOnly(sites), restores: adminOnly(restores), tokens: adminOnly(tokens),
    audit: adminOnly(audit) },
  home: "sites",
  onRender: showAdminLinks,
  onSignOut: () => { me = null; },
});
