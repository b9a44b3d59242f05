// hpacs edge console: a static page over the JSON API (/api/*), no build step. The helpers (el,
// table, api, ...) and the login/nav shell are shared with the cloud console: /shared/console.js.
"use strict";

// ---- pages -------------------------------------------------------------------------------
async function dashboard() {
  const s = await api("/api/status");
  document.getElementById("ae-title").textContent = `· ${s.ae_title}`;
  const c = s.cache;
  const cap = c.capacity_bytes || 1;
  const pct = (v) => `${Math.min(100, (100 * v) / cap).toFixed(1)}%`;
  const bar = el("div", { class: "bar", title: "cache usage against the watermarks" },
    el("div", { class: "fill", style: `width:${pct(c.used_bytes)}` }),
    c.high_watermark_bytes ? el("div", { class: "mark", style: `left:${pct(c.high_watermark_bytes)}` }) : null,
    c.low_watermark_bytes ? el("div", { class: "mark low", style: `left:${pct(c.low_watermark_bytes)}` }) : null);
  const errors = s.last_errors.length
    ? table(["When", "Kind", "Calling AE", "Detail"], s.last_errors.map((e) =>
      el("tr", {}, el("td", {}, when(e.at)), el("td", {}, e.kind), el("td", {}, e.calling_ae || ""),
        el("td", {}, e.detail))))
    : el("p", { class: "empty" }, "No recent errors.");
  return [
    el("h2", {}, "Dashboard"),
    el("div", { class: "cards" },
      el("div", { class: "card", id: "card-cache" }, el("h3", {}, "Cache"),
        el("div", { class: "big" }, bytes(c.used_bytes)),
        el("div", { class: "sub" },
          `high ${bytes(c.high_watermark_bytes)} · low ${bytes(c.low_watermark_bytes)} · disk ${bytes(c.capacity_bytes)}`),
        bar),
      el("div", { class: "card", id: "card-backlog" }, el("h3", {}, "Sync backlog"),
        el("div", { class: "big" }, `${s.backlog.instances} instances`),
        el("div", { class: "sub" }, `${bytes(s.backlog.bytes)} · oldest ${age(s.backlog.oldest_age_s)}`)),
      el("div", { class: "card", id: "card-assoc" }, el("h3", {}, "Active associations"),
        el("div", { class: "big" }, String(s.associations.active))),
      el("div", { class: "card", id: "card-studies" }, el("h3", {}, "Studies"),
        el("div", { class: "big" }, String(s.studies)),
        el("div", { class: "sub" }, Object.entries(s.states).map(([k, v]) => `${k} ${v.instances}`).join(" · ") || "empty"))),
    el("h2", {}, "Last errors"),
    errors,
  ];
}

async function nodes() {
  const list = await api("/api/nodes");
  if (!list.length) return [el("h2", {}, "Nodes"), el("p", { class: "empty" }, "No node is registered.")];
  const rows = list.map((n) => {
    const result = el("span", { class: "result", "data-ae": n.ae_title }, "");
    const button = el("button", { type: "button" }, "Test connection");
    button.addEventListener("click", async () => {
      button.disabled = true;
      result.className = "result";
      result.textContent = "testing…";
      try {
        const r = await api(`/api/nodes/${encodeURIComponent(n.ae_title)}/echo`, { method: "POST" });
        result.className = `result ${r.ok ? "ok" : "bad"}`;
        result.textContent = r.ok
          ? `Success (${r.status}) in ${r.rtt_ms} ms`
          : `Failed: ${r.detail}${r.status ? ` (${r.status})` : ""} after ${r.rtt_ms} ms`;
      } catch (err) {
        if (err instanceof Unauthorized) return shell.showLogin();
        result.className = "result bad";
        result.textContent = `Failed: ${err.message}`;
      } finally {
        button.disabled = false;
      }
    });
    return el("tr", {},
      el("td", { class: "mono" }, n.ae_title), el("td", {}, n.host), el("td", {}, String(n.port)),
      el("td", {}, n.tls ? "yes" : "no"), el("td", {}, n.permissions.join(", ")),
      el("td", {}, n.source), el("td", {}, button, " ", result));
  });
  return [el("h2", {}, "Nodes"),
    table(["AE title", "Host", "Port", "TLS", "Permissions", "Source", "Connection"], rows)];
}

const CACHE_KIND = { local: "ok", partial: "warn", evicted: "" };
const SYNC_KIND = { synced: "ok", pending: "warn", failed: "bad" };

async function studies() {
  const list = await api("/api/studies?limit=100");
  if (!list.length) return [el("h2", {}, "Recent studies"), el("p", { class: "empty" }, "No study has been received yet.")];
  const rows = list.map((s) => {
    const pin = el("button", { type: "button" }, s.pinned ? "Unpin" : "Pin");
    pin.addEventListener("click", async () => {
      pin.disabled = true;
      try {
        await api(`/api/studies/${encodeURIComponent(s.study_uid)}/${s.pinned ? "unpin" : "pin"}`, { method: "POST" });
        shell.render();
      } catch (err) {
        if (err instanceof Unauthorized) return shell.showLogin();
        pin.disabled = false;
        pin.title = err.message;
      }
    });
    return el("tr", { "data-study": s.study_uid },
      el("td", {}, s.study_date || "–"), el("td", {}, s.accession_number || "–"),
      el("td", {}, s.modalities || "–"), el("td", {}, s.description || "–"),
      el("td", {}, `${s.series} / ${s.instances}`),
      el("td", { class: "cache-state" }, pill(s.cache_state, CACHE_KIND[s.cache_state])),
      el("td", { class: "sync-state" }, pill(s.sync_state, SYNC_KIND[s.sync_state])),
      el("td", {}, s.pinned ? pill("pinned", "ok") : "", " ", pin));
  });
  return [el("h2", {}, "Recent studies"),
    table(["Date", "Accession", "Modality", "Description", "Series / instances", "Cache", "Sync", "Pin"], rows)];
}

async function routing() {
  const q = await api("/api/routes");
  const out = [el("h2", {}, "Routing queue")];
  if (!q.summary.length) {
    out.push(el("p", { class: "empty" }, "The routing queue is empty."));
    return out;
  }
  out.push(table(["Route", "Destination", "State", "Jobs", "Oldest"], q.summary.map((r) =>
    el("tr", {}, el("td", {}, r.route), el("td", { class: "mono" }, r.destination),
      el("td", {}, pill(r.state, r.state === "dead" ? "bad" : r.state === "sent" ? "ok" : "warn")),
      el("td", {}, String(r.jobs)), el("td", {}, when(r.oldest))))));
  const dead = q.dead;
  if (dead.length) {
    const retryAll = el("button", { type: "button", class: "primary" }, `Retry ${dead.length} dead job(s)`);
    retryAll.addEventListener("click", async () => {
      retryAll.disabled = true;
      try {
        await api("/api/routes/retry", { method: "POST" });
      } catch (err) {
        if (err instanceof Unauthorized) return shell.showLogin();
      }
      shell.render();
    });
    out.push(el("h2", { style: "margin-top:24px" }, "Dead letters"), el("p", {}, retryAll),
      table(["Route", "Destination", "Attempts", "Last error", "Updated"], dead.map((j) =>
        el("tr", {}, el("td", {}, j.route), el("td", { class: "mono" }, j.destination),
          el("td", {}, String(j.attempts)), el("td", {}, j.last_error),
          el("td", {}, when(j.updated_at))))));
  }
  return out;
}

async function audit() {
  const list = await api("/api/events?kind=association_rejected&limit=200");
  if (!list.length) return [el("h2", {}, "Rejected associations"), el("p", { class: "empty" }, "No association has been rejected.")];
  return [el("h2", {}, "Rejected associations"),
    table(["When", "Calling AE", "Peer", "Reason"], list.map((e) =>
      el("tr", {}, el("td", {}, when(e.at)), el("td", { class: "mono" }, e.calling_ae),
        el("td", { class: "mono" }, e.peer), el("td", {}, e.detail))))];
}

// ---- shell -------------------------------------------------------------------------------
const aeTitle = document.getElementById("ae-title");
const shell = startConsole({
  pages: { dashboard, nodes, studies, routing, audit },
  home: "dashboard",
  onRender() {
    if (!aeTitle.textContent) {
      api("/api/status").then((s) => { aeTitle.textContent = `· ${s.ae_title}`; }).catch(() => {});
    }
  },
  onSignOut() { aeTitle.textContent = ""; },
});
