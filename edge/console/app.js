// hpacs edge console: a static page over the JSON API (/api/*), no build step. The helpers (el,
// table, api, ...) and the login/nav shell are shared with the cloud console: /shared/console.js.
// Signing in sets an HttpOnly session cookie (POST /login); each role sees only the pages and
// buttons it may use, and the API refuses the rest anyway (edge/http.py's route table).
"use strict";

const PAGE_NEEDS = {
  dashboard: "operate", nodes: "operate", browser: "view", studies: "view", routing: "operate",
  rejections: "operate", users: "admin", audit: "admin",
};
const PERMISSIONS = ["echo", "store", "find", "move", "get", "commit"];
let nodeForm = null; // {prefill, editing}: the node form to open on the Nodes page

function may(principal, need) {
  return Boolean(principal && principal.needs.includes(need));
}

function openNodeForm(prefill = {}, editing = false) {
  nodeForm = { prefill, editing };
  if (location.hash === "#nodes") shell.render();
  else location.hash = "#nodes";
}

async function guarded(button, fn) {
  button.disabled = true;
  try {
    await fn();
  } catch (err) {
    if (err instanceof Unauthorized) return shell.showLogin("Your session ended: sign in again.");
    button.title = err.message;
    throw err;
  } finally {
    button.disabled = false;
  }
}

function echoText(r) {
  return r.ok
    ? `Success (${r.status}) in ${r.rtt_ms} ms`
    : `Failed: ${r.detail}${r.status ? ` (${r.status})` : ""} after ${r.rtt_ms} ms`;
}

// ---- dashboard ---------------------------------------------------------------------------
function usageCard(s) {
  const w = s.watermarks;
  const scale = w.scale_bytes || 1;
  const pct = (v) => `${Math.min(100, (100 * v) / scale).toFixed(1)}%`;
  const what = w.basis === "disk" ? "Disk used" : "Cache";
  const bar = el("div", { class: "bar", title: `${what} against the watermarks it is compared with` },
    el("div", { class: "fill", style: `width:${pct(w.compared_bytes)}` }),
    el("div", { class: "mark", style: `left:${pct(w.high.bytes)}` }),
    el("div", { class: "mark low", style: `left:${pct(w.low.bytes)}` }));
  const of = w.basis === "disk" ? ` of ${bytes(s.disk.capacity_bytes)}` : "";
  return el("div", { class: "card", id: "card-usage" }, el("h3", {}, `${what} vs watermarks`),
    el("div", { class: "big" }, bytes(w.compared_bytes), el("span", { class: "sub" }, of)),
    el("div", { class: "sub" },
      `high ${w.high.spec} = ${bytes(w.high.bytes)} · low ${w.low.spec} = ${bytes(w.low.bytes)}`),
    bar,
    el("div", { class: "sub" }, w.basis === "disk"
      ? "Percent watermarks are compared with the disk's used bytes (as eviction does)."
      : "Size watermarks are compared with the bytes of cached instances (as eviction does)."));
}

function errorAction(e) {
  if (e.action === "add_node") {
    const b = el("button", { type: "button", class: "primary" }, "Add as node");
    b.addEventListener("click", () => openNodeForm({ ae_title: e.calling_ae, host: e.peer }));
    return b;
  }
  if (e.action === "edit_node" && e.calling_ae) {
    const b = el("button", { type: "button" }, "Edit node");
    b.addEventListener("click", async () => {
      const nodes = await api("/api/nodes");
      const n = nodes.registry.find((x) => x.ae_title === e.calling_ae);
      openNodeForm(n || { ae_title: e.calling_ae, host: e.peer }, Boolean(n));
    });
    return b;
  }
  if (e.action === "retry_routes") {
    const b = el("button", { type: "button" }, "Open routing");
    b.addEventListener("click", () => { location.hash = "#routing"; });
    return b;
  }
  return null;
}

async function dashboard(render, principal) {
  const s = await api("/api/status");
  document.getElementById("ae-title").textContent = `· ${s.ae_title}`;
  const admin = may(principal, "admin");
  const errors = s.last_errors.length
    ? table(["When", "Problem", "Calling AE", "Peer", "Detail", "What to do"], s.last_errors.map((e) =>
      el("tr", { "data-kind": e.kind }, el("td", {}, when(e.at)),
        el("td", {}, e.kind.replaceAll("_", " "), e.count > 1 ? ` ×${e.count}` : ""),
        el("td", { class: "mono" }, e.calling_ae || ""), el("td", { class: "mono" }, e.peer || ""),
        el("td", { class: "wrap" }, e.detail),
        el("td", {}, el("div", { class: "advice" }, e.advice), admin || e.action === "retry_routes" ? errorAction(e) : null))))
    : el("p", { class: "empty" }, "No recent errors.");
  const perNode = Object.entries(s.associations.per_node);
  const probe = s.disk_probe;
  const probeText = probe.samples
    ? `fsync ${probe.fsync_ms_median} ms median (max ${probe.fsync_ms_max}) · write ${probe.write_mb_per_s_median} MB/s`
    : (probe.error ? `probe failed: ${probe.error}` : "no sample yet");
  return [
    el("h2", {}, "Dashboard"),
    el("div", { class: "cards" },
      usageCard(s),
      el("div", { class: "card", id: "card-cache" }, el("h3", {}, "Cache"),
        el("div", { class: "big" }, bytes(s.cache.bytes)),
        el("div", { class: "sub" }, `of instances in the cache · disk free ${bytes(s.disk.free_bytes)}`)),
      el("div", { class: "card", id: "card-backlog" }, el("h3", {}, "Sync backlog"),
        el("div", { class: "big" }, `${s.backlog.instances} instances`),
        el("div", { class: "sub" }, `${bytes(s.backlog.bytes)} · oldest ${age(s.backlog.oldest_age_s)}`)),
      el("div", { class: "card", id: "card-assoc" }, el("h3", {}, "Active associations"),
        el("div", { class: "big" }, String(s.associations.active)),
        el("div", { class: "sub" }, perNode.map(([ae, n]) => `${ae} ${n}`).join(" · ") || "none per node")),
      el("div", { class: "card", id: "card-disk" }, el("h3", {}, "Cache disk"),
        el("div", { class: "big" }, probe.samples ? `${probe.fsync_ms_last} ms` : "–"),
        el("div", { class: "sub" }, probeText)),
      el("div", { class: "card", id: "card-recall" }, el("h3", {}, "Recall queue"),
        el("div", { class: "big" }, `${s.recall.instances} recalling`),
        el("div", { class: "sub" }, `oldest ${age(s.recall.oldest_age_s)}`)),
      el("div", { class: "card", id: "card-studies" }, el("h3", {}, "Studies"),
        el("div", { class: "big" }, String(s.studies)),
        el("div", { class: "sub" }, Object.entries(s.states).map(([k, v]) => `${k} ${v.instances}`).join(" · ") || "empty"))),
    el("h2", {}, "Last errors"),
    errors,
  ];
}

// ---- nodes -------------------------------------------------------------------------------
function field(label, input) {
  return el("label", {}, label, input);
}

function nodeFormPanel(state, onDone) {
  const p = state.prefill;
  const input = (name, attrs) => el("input", { name, id: `node-${name}`, ...attrs });
  const ae = input("ae_title", { value: p.ae_title || "", maxlength: 16, required: true, readonly: state.editing });
  const host = input("host", { value: p.host || "", required: true });
  const port = input("port", { type: "number", min: 1, max: 65535, value: p.port || 104, required: true });
  const tls = input("tls", { type: "checkbox", checked: Boolean(p.tls) });
  const maxA = input("max_associations", { type: "number", min: 0, value: p.max_associations || 0 });
  const reason = input("reason", { value: "", placeholder: "optional, kept in the audit trail" });
  const perms = new Set(p.permissions || ["echo", "store", "find", "move", "get"]);
  const boxes = PERMISSIONS.map((name) => el("input", { type: "checkbox", value: name, checked: perms.has(name) }));
  const result = el("span", { class: "result", id: "node-test-result" });
  const message = el("p", { class: "error", role: "alert" });
  const test = el("button", { type: "button" }, "Test connection");
  const save = el("button", { type: "submit", class: "primary" }, "Save");
  const cancel = el("button", { type: "button" }, "Cancel");
  const values = () => ({
    ae_title: ae.value.trim(), host: host.value.trim(), port: Number(port.value), tls: tls.checked,
    permissions: boxes.filter((b) => b.checked).map((b) => b.value),
    max_associations: Number(maxA.value || 0),
  });
  let tested = null; // the values of the last test, and whether it succeeded
  const form = el("form", { class: "panel", id: "node-form" },
    el("h3", {}, state.editing ? `Edit node ${p.ae_title}` : "Add a node"),
    field("AE title", ae), field("Host", host), field("Port", port),
    field("Max associations", maxA), el("label", { class: "check" }, tls, " DICOM TLS"),
    el("fieldset", {}, el("legend", {}, "Permissions"),
      boxes.map((b) => el("label", { class: "check" }, b, ` ${b.value}`))),
    field("Reason", reason),
    el("div", { class: "actions" }, test, save, cancel, result), message);
  function mark(err) {
    for (const i of form.querySelectorAll(".invalid")) i.classList.remove("invalid");
    message.textContent = err ? err.message : "";
    const target = err && err.field ? form.querySelector(`[name="${err.field}"]`) : null;
    if (target) { target.classList.add("invalid"); target.setAttribute("aria-invalid", "true"); }
  }
  async function runTest() {
    mark(null);
    result.className = "result";
    result.textContent = "testing…";
    const v = values();
    try {
      const r = await api("/api/nodes-test", { method: "POST", json: v });
      tested = { key: JSON.stringify(v), ok: r.ok };
      result.className = `result ${r.ok ? "ok" : "bad"}`;
      result.textContent = echoText(r);
    } catch (err) {
      result.textContent = "";
      mark(err);
      tested = null;
    }
    save.textContent = tested && !tested.ok ? "Save anyway" : "Save";
  }
  test.addEventListener("click", () => guarded(test, runTest).catch(() => {}));
  cancel.addEventListener("click", () => { nodeForm = null; onDone(); });
  form.addEventListener("input", () => { save.textContent = "Save"; });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values();
    if (!tested || tested.key !== JSON.stringify(v)) { // a C-ECHO before saving
      await guarded(save, runTest).catch(() => {});
      if (!tested || !tested.ok) return; // failed: the button now says "Save anyway"
    }
    try {
      const path = state.editing ? `/api/nodes/${encodeURIComponent(v.ae_title)}` : "/api/nodes";
      await api(path, { method: state.editing ? "PUT" : "POST", json: { ...v, reason: reason.value } });
      nodeForm = null;
      onDone();
    } catch (err) {
      if (err instanceof Unauthorized) return shell.showLogin();
      mark(err);
    }
  });
  return form;
}

function nodeRow(n, principal, render) {
  const result = el("span", { class: "result", "data-ae": n.ae_title }, "");
  const test = el("button", { type: "button" }, "Test connection");
  test.addEventListener("click", () => guarded(test, async () => {
    result.className = "result";
    result.textContent = "testing…";
    try {
      const r = await api(`/api/nodes/${encodeURIComponent(n.ae_title)}/echo`, { method: "POST" });
      result.className = `result ${r.ok ? "ok" : "bad"}`;
      result.textContent = echoText(r);
    } catch (err) {
      if (err instanceof Unauthorized) throw err;
      result.className = "result bad";
      result.textContent = `Failed: ${err.message}`;
    }
  }).catch(() => {}));
  const actions = [test, " "];
  if (n.source === "registry" && may(principal, "admin")) {
    const edit = el("button", { type: "button" }, "Edit");
    edit.addEventListener("click", () => openNodeForm(n, true));
    const remove = el("button", { type: "button" }, "Remove");
    remove.addEventListener("click", () => guarded(remove, async () => {
      if (!confirm(`Remove node ${n.ae_title}?`)) return;
      try {
        await api(`/api/nodes/${encodeURIComponent(n.ae_title)}`, { method: "DELETE" });
      } catch (err) {
        if (err instanceof Unauthorized) throw err;
        result.className = "result bad";
        result.textContent = err.message;
        return;
      }
      render();
    }).catch(() => {}));
    actions.push(edit, " ", remove, " ");
  }
  return el("tr", { "data-source": n.source },
    el("td", { class: "mono" }, n.ae_title), el("td", {}, n.host), el("td", {}, String(n.port)),
    el("td", {}, n.tls ? "yes" : "no"), el("td", {}, n.permissions.join(", ")),
    el("td", {}, String(n.max_associations || "–")),
    el("td", {}, n.source === "registry" ? (n.shadowed ? pill("shadowed by config", "warn") : n.added_by || "registry") : "config file"),
    el("td", {}, actions, result));
}

async function nodes(render, principal) {
  const list = await api("/api/nodes");
  const admin = may(principal, "admin");
  const headers = ["AE title", "Host", "Port", "TLS", "Permissions", "Max", "Source", "Connection"];
  const out = [el("div", { class: "section" }, el("h2", {}, "Nodes"))];
  if (admin) {
    if (nodeForm) out.push(nodeFormPanel(nodeForm, render));
    else {
      const add = el("button", { type: "button", class: "primary" }, "Add node");
      add.addEventListener("click", () => openNodeForm());
      out[0].append(add);
    }
  }
  out.push(el("h3", {}, "Registry (console, CLI, restore)"),
    list.registry.length ? table(headers, list.registry.map((n) => nodeRow(n, principal, render)))
      : el("p", { class: "empty", id: "registry-empty" }, "No node was added at run time."),
    el("h3", {}, "From the config file ([[nodes]])"),
    list.config.length ? table(headers, list.config.map((n) => nodeRow(n, principal, render)))
      : el("p", { class: "empty" }, "The config file lists no node."));
  return out;
}

// ---- studies -----------------------------------------------------------------------------
const CACHE_KIND = { local: "ok", partial: "warn", evicted: "", deleted: "bad" };
const SYNC_KIND = { synced: "ok", pending: "warn", failed: "bad" };

// Delete, undelete, hold, release: each asks first (prompt/confirm), reports in the row's
// status cell, and re-renders. A delete refused for retention offers an admin the override.
function studyActions(s, principal, render) {
  const uid = encodeURIComponent(s.study_uid);
  const label = [s.study_date, s.accession_number, s.description].filter(Boolean).join(" ");
  const status = el("span", { class: "study-msg sub" });
  const post = (what, json) => api(`/api/studies/${uid}/${what}`, { method: "POST", json });
  const button = (text, cls, fn) => {
    const b = el("button", { type: "button", class: cls }, text);
    b.addEventListener("click", () => guarded(b, fn).then(render).catch((err) => {
      status.textContent = err.message;
    }));
    return b;
  };
  const out = [];
  if (!s.deleted) {
    out.push(button("Delete", "study-delete", async () => {
      const reason = prompt(`Delete study ${label || s.study_uid}? It disappears from every `
        + "query at once; its bytes stay in the bucket and it can be undeleted during the grace "
        + "period. Reason:");
      if (reason === null) throw new Error("not deleted");
      try {
        await post("delete", { reason });
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 409 || !/under retention/.test(err.message)
            || !may(principal, "admin") || !reason.trim()) throw err;
        if (!confirm(`${err.message}\n\nOverride retention with the reason "${reason}"?`)) throw err;
        await post("delete", { reason, override: true });
      }
    }));
  }
  if (s.deleted_instances) {
    out.push(button("Undelete", "study-undelete", async () => {
      if (!confirm(`Undelete study ${label || s.study_uid}?`)) throw new Error("not undeleted");
      await post("undelete", {});
    }));
  }
  if (!s.held) {
    out.push(button("Hold", "study-hold", async () => {
      const reason = prompt("Legal hold: no deletion, purge or override while it lasts. Reason:");
      if (reason === null) throw new Error("no hold placed");
      await post("hold", { reason });
    }));
  } else if (may(principal, "admin")) {
    out.push(button("Release", "study-release", async () => {
      if (!confirm("Release the legal hold on this study?")) throw new Error("not released");
      await post("release", {});
    }));
  }
  return [...out, status];
}

// The correction form: the correctable attributes of one study, prefilled with its values
// (patient data, fetched for this form only), saved through POST /api/studies/{uid}/modify.
const ATTRIBUTE_LABELS = {
  PatientName: "Patient name", PatientID: "Patient ID", IssuerOfPatientID: "Issuer of patient ID",
  PatientBirthDate: "Birth date", PatientSex: "Sex", StudyDate: "Study date", StudyTime: "Study time",
  AccessionNumber: "Accession number", StudyID: "Study ID", StudyDescription: "Study description",
  ReferringPhysicianName: "Referring physician",
};
let correcting = null; // the study UID whose correction form is open

async function correctionForm(uid, render) {
  const current = await api(`/api/studies/${encodeURIComponent(uid)}/attributes`);
  const inputs = Object.entries(current.attributes).map(([k, v]) =>
    el("input", { name: k, id: `fix-${k}`, value: v, "data-was": v }));
  const reason = el("input", { name: "reason", id: "fix-reason", placeholder: "kept in the audit trail" });
  const message = el("p", { class: "error wide", role: "alert" });
  const cancel = el("button", { type: "button" }, "Cancel");
  cancel.addEventListener("click", () => { correcting = null; render(); });
  const form = el("form", { class: "panel", id: "correction-form" },
    el("h3", {}, "Correct study ", el("span", { class: "mono" }, uid)),
    current.unfinished ? el("p", { class: "error wide" }, "A correction of this study was interrupted: save again to complete it.") : "",
    el("p", { class: "wide" }, `Each of its ${current.instances} instances is rewritten with the new values; the original bytes stay in the bucket (hpacs-edge studies versions).`),
    inputs.map((i) => field(ATTRIBUTE_LABELS[i.name] || i.name, i)), field("Reason", reason),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Save correction"), cancel),
    message);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const i of form.querySelectorAll(".invalid")) i.classList.remove("invalid");
    const changes = {};
    for (const i of inputs) if (i.value !== i.dataset.was || current.unfinished) changes[i.name] = i.value;
    if (!Object.keys(changes).length) { message.textContent = "Nothing changed."; return; }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    message.textContent = "Correcting…";
    try {
      const r = await api(`/api/studies/${encodeURIComponent(uid)}/modify`, { method: "POST", json: { changes, reason: reason.value } });
      correcting = null;
      await render();
      const done = document.getElementById("correction-done");
      if (done) done.textContent = `Corrected ${r.attributes.join(", ")}: ${r.rewritten} instance(s) rewritten.`;
    } catch (err) {
      if (err instanceof Unauthorized) return shell.showLogin();
      message.textContent = err.message;
      const bad = err.message.split(/[: ]/)[0];
      const target = form.querySelector(`[name="${bad}"]`);
      if (target) target.classList.add("invalid");
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

async function studies(render, principal) {
  const list = await api("/api/studies?limit=100");
  if (!list.length) return [el("h2", {}, "Recent studies"), el("p", { class: "empty" }, "No study has been received yet.")];
  const operate = may(principal, "operate");
  const rows = list.map((s) => {
    let pin = null;
    let fix = null;
    if (operate && !s.deleted) {
      pin = el("button", { type: "button" }, s.pinned ? "Unpin" : "Pin");
      pin.addEventListener("click", () => guarded(pin, async () => {
        await api(`/api/studies/${encodeURIComponent(s.study_uid)}/${s.pinned ? "unpin" : "pin"}`, { method: "POST" });
        render();
      }).catch(() => {}));
      fix = el("button", { type: "button" }, "Correct");
      fix.addEventListener("click", () => { correcting = s.study_uid; render(); });
    }
    const cache = s.deleted ? "deleted" : s.cache_state;
    return el("tr", { "data-study": s.study_uid, class: s.deleted ? "deleted" : "" },
      el("td", {}, s.study_date || "–"), el("td", {}, s.accession_number || "–"),
      el("td", {}, s.modalities || "–"), el("td", { class: "wrap" }, s.description || "–"),
      el("td", {}, `${s.series} / ${s.instances}`),
      el("td", { class: "cache-state" }, pill(cache, CACHE_KIND[cache])),
      el("td", { class: "sync-state" }, s.deleted ? "–" : pill(s.sync_state, SYNC_KIND[s.sync_state])),
      el("td", {}, s.pinned ? pill("pinned", "ok") : "", " ", pin, " ", fix),
      el("td", { class: "study-actions" }, s.held ? pill("held", "warn") : "", " ",
        operate ? studyActions(s, principal, render) : []));
  });
  const out = [el("h2", {}, "Recent studies"), el("p", { class: "result ok", id: "correction-done", role: "status" })];
  if (operate && correcting) out.push(await correctionForm(correcting, render));
  out.push(table(["Date", "Accession", "Modality", "Description", "Series / instances", "Cache", "Sync", "Pin", "Lifecycle"], rows));
  return out;
}

// ---- routing -----------------------------------------------------------------------------
function routeForm(nodeList, render) {
  const names = [...new Set([...nodeList.config, ...nodeList.registry].map((n) => n.ae_title))].sort();
  const input = (name, attrs = {}) => el("input", { name, id: `route-${name}`, ...attrs });
  const name = input("name", { required: true });
  const modality = input("modality", { placeholder: "CT,MR (empty: any)" });
  const calling = input("calling_ae", { placeholder: "empty: any" });
  const desc = input("study_description", { placeholder: "regular expression" });
  const schedule = input("schedule", { placeholder: "Mon-Fri 08:00-18:00" });
  const reason = input("reason", { placeholder: "optional, kept in the audit trail" });
  const boxes = names.map((n) => el("input", { type: "checkbox", value: n }));
  const message = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "panel", id: "route-form" }, el("h3", {}, "Add a route"),
    field("Name", name), field("Modality", modality), field("Calling AE", calling),
    field("Study description", desc), field("Schedule", schedule), field("Reason", reason),
    el("fieldset", { "data-name": "destinations" }, el("legend", {}, "Destinations"),
      boxes.map((b) => el("label", { class: "check" }, b, ` ${b.value}`))),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Save route")),
    message);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const i of form.querySelectorAll(".invalid")) i.classList.remove("invalid");
    const body = {
      name: name.value.trim(), destinations: boxes.filter((b) => b.checked).map((b) => b.value),
      modality: modality.value.trim(), calling_ae: calling.value.trim(),
      study_description: desc.value, schedule: schedule.value.trim(), reason: reason.value,
    };
    try {
      await api("/api/routes/rules", { method: "POST", json: body });
      render();
    } catch (err) {
      if (err instanceof Unauthorized) return shell.showLogin();
      message.textContent = err.message;
      const target = err.field && (form.querySelector(`[name="${err.field}"]`) || form.querySelector(`[data-name="${err.field}"]`));
      if (target) target.classList.add("invalid");
    }
  });
  return form;
}

function ruleRow(r, render) {
  const match = ["calling_ae", "modality", "sop_class_uid", "body_part", "study_description", "series_description", "schedule"]
    .filter((k) => r[k]).map((k) => `${k}=${r[k]}`).join(" ") || "everything";
  let remove = null;
  if (r.source === "console") {
    remove = el("button", { type: "button" }, "Remove");
    remove.addEventListener("click", () => guarded(remove, async () => {
      if (!confirm(`Remove route ${r.name}?`)) return;
      await api(`/api/routes/rules/${encodeURIComponent(r.name)}`, { method: "DELETE" });
      render();
    }).catch(() => {}));
  }
  return el("tr", { "data-route": r.name },
    el("td", {}, r.name), el("td", { class: "mono" }, r.destinations.join(", "),
      r.unknown.length ? pill(`unregistered: ${r.unknown.join(", ")}`, "bad") : ""),
    el("td", { class: "wrap" }, match), el("td", {}, r.source === "console" ? `console (${r.updated_by})` : "config file"),
    el("td", {}, remove));
}

async function routing(render) {
  const [q, rules, nodeList] = await Promise.all([api("/api/routes"), api("/api/routes/rules"), api("/api/nodes")]);
  const out = [el("h2", {}, "Routes"), routeForm(nodeList, render)];
  out.push(rules.length ? table(["Route", "Destinations", "Matches", "Source", ""], rules.map((r) => ruleRow(r, render)))
    : el("p", { class: "empty" }, "No route: nothing is forwarded."));
  out.push(el("h2", { style: "margin-top:24px" }, "Routing queue"));
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
    retryAll.addEventListener("click", () => guarded(retryAll, async () => {
      await api("/api/routes/retry", { method: "POST" });
      render();
    }).catch(() => {}));
    out.push(el("h2", { style: "margin-top:24px" }, "Dead letters"), el("p", {}, retryAll),
      table(["Route", "Destination", "Attempts", "Last error", "Updated"], dead.map((j) =>
        el("tr", {}, el("td", {}, j.route), el("td", { class: "mono" }, j.destination),
          el("td", {}, String(j.attempts)), el("td", { class: "wrap" }, j.last_error),
          el("td", {}, when(j.updated_at))))));
  }
  return out;
}

// ---- rejections, users, audit ----------------------------------------------------------------
async function rejections(render, principal) {
  const list = await api("/api/events?kind=association_rejected&limit=200");
  if (!list.length) return [el("h2", {}, "Rejected associations"), el("p", { class: "empty" }, "No association has been rejected.")];
  const admin = may(principal, "admin");
  return [el("h2", {}, "Rejected associations"),
    table(["When", "Calling AE", "Peer", "Reason", ""], list.map((e) => {
      let add = null;
      if (admin && e.detail.startsWith("unknown calling AE")) {
        add = el("button", { type: "button" }, "Add as node");
        add.addEventListener("click", () => openNodeForm({ ae_title: e.calling_ae, host: e.peer }));
      }
      return el("tr", {}, el("td", {}, when(e.at)), el("td", { class: "mono" }, e.calling_ae),
        el("td", { class: "mono" }, e.peer), el("td", {}, e.detail), el("td", {}, add));
    }))];
}

async function users(render) {
  const list = await api("/api/users");
  const input = (name, attrs = {}) => el("input", { name, id: `user-${name}`, ...attrs });
  const name = input("name", { required: true, autocomplete: "off" });
  const password = input("password", { type: "password", required: true, autocomplete: "new-password" });
  const role = el("select", { name: "role", id: "user-role" },
    ["viewer", "technician", "admin"].map((r) => el("option", { value: r }, r)));
  const message = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "panel", id: "user-form" }, el("h3", {}, "Add a user"),
    field("User name", name), field("Role", role), field("Password", password),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Add user")), message);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("/api/users", { method: "POST", json: { name: name.value.trim(), role: role.value, password: password.value } });
      render();
    } catch (err) {
      if (err instanceof Unauthorized) return shell.showLogin();
      message.textContent = err.message;
    }
  });
  const rows = list.map((u) => {
    const remove = el("button", { type: "button" }, "Remove");
    remove.addEventListener("click", () => guarded(remove, async () => {
      if (!confirm(`Remove user ${u.name}? Their sessions end.`)) return;
      await api(`/api/users/${encodeURIComponent(u.name)}`, { method: "DELETE" });
      render();
    }).catch(() => {}));
    return el("tr", { "data-user": u.name }, el("td", {}, u.name), el("td", {}, u.role),
      el("td", {}, when(u.created_at)), el("td", {}, remove));
  });
  return [el("h2", {}, "Users"), form,
    rows.length ? table(["User", "Role", "Created", ""], rows) : el("p", { class: "empty" }, "No user yet.")];
}

async function audit() {
  const body = await api("/api/audit?limit=200");
  if (!body.events.length) return [el("h2", {}, "Audit trail"), el("p", { class: "empty" }, "No event yet.")];
  return [el("h2", {}, "Audit trail"),
    table(["When", "Who", "Role", "Action", "Target", "Outcome", "Reason / detail"], body.events.map((e) =>
      el("tr", { class: e.outcome === "ok" ? "" : "denied" }, el("td", {}, when(e.time)),
        el("td", { class: "cut" }, e.actor), el("td", {}, e.role || ""), el("td", {}, e.action),
        el("td", { class: "mono cut" }, e.target || e.study_uid || ""), el("td", {}, e.outcome),
        el("td", { class: "wrap" }, [e.reason, e.detail].filter(Boolean).join(" · ")))))];
}

// ---- study browser (shared/web/browser.js): search, drill-down, viewer, download ----------
const browser = HpacsBrowser.page({
  canUpload: (p) => may(p, "operate"),  // STOW: technician and admin; a viewer browses
  send: (p) => (may(p, "operate") ? {
    nodes: async () => {
      const n = await api("/api/nodes");
      return [...new Set([...n.config, ...n.registry].map((x) => x.ae_title))].sort();
    },
    queue: (uid, ae) => api(`/api/studies/${encodeURIComponent(uid)}/send`, { method: "POST", json: { destination: ae } }),
    progress: (uid) => api(`/api/studies/${encodeURIComponent(uid)}/send`),
  } : null),
});

// ---- shell -------------------------------------------------------------------------------
async function postSession(path, body) {
  const resp = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body || {}),
  });
  const answer = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(answer.detail || `HTTP ${resp.status}`);
  return answer;
}

const aeTitle = document.getElementById("ae-title");
const whoami = document.getElementById("whoami");
const shell = startConsole({
  pages: { dashboard, nodes, browser, studies, routing, rejections, users, audit },
  home: "dashboard",
  session: {
    whoami: () => api("/api/session"),
    signIn(form) {
      const token = form.querySelector("#token").value.trim();
      return postSession("/login", token ? { token }
        : { user: form.querySelector("#user").value, password: form.querySelector("#password").value });
    },
    signOut: () => postSession("/logout"),
    allowed: (p) => Object.keys(PAGE_NEEDS).filter((page) => may(p, PAGE_NEEDS[page])),
  },
  onRender(principal) {
    whoami.textContent = principal ? `${principal.name} (${principal.role})` : "";
    if (!aeTitle.textContent && may(principal, "operate")) {
      api("/api/status").then((s) => { aeTitle.textContent = `· ${s.ae_title}`; }).catch(() => {});
    }
  },
  onSignOut() { aeTitle.textContent = ""; whoami.textContent = ""; nodeForm = null; },
});
