// hpacs study browser, shared by the edge console and the cloud console (no build step).
// Needs console.js (el, table, api, pill, bytes, Unauthorized, Forbidden, ApiError, TOKEN_KEY).
//
// Everything goes through standard DICOMweb on this page's own origin: QIDO-RS to search
// (server-side filters, limit/offset paging), WADO-RS thumbnails, WADO-RS with
// `accept=application/zip` to download, STOW-RS to upload. A console mounts it as a page:
//   pages.browser = HpacsBrowser.page({ canUpload, send, prepare })
// and other pages' buttons plug into each study with HpacsBrowser.addStudyAction(fn):
//   fn(study, { where: "row" | "study", principal, refresh }) -> a Node or null
// where `study` has uid, patientName, patientId, date, accession, modalities, description,
// and `json` (the QIDO result). Patient names are shown as text only, never logged.
"use strict";

const HpacsBrowser = (() => {
  const PAGE = 25;
  const INSTANCE_PAGE = 100;
  const THUMB_CONCURRENCY = 4;
  const BATCH_FILES = 25;
  const BATCH_BYTES = 32 * 1024 * 1024;
  const SEND_POLL_MS = 1000;
  const NO_PIXELS = new Set(["SR", "KO", "PR", "DOC", "RTSTRUCT", "RTPLAN", "REG", "FID", "AU", "ECG"]);
  const DICOMDIR_CLASS = "1.2.840.10008.1.3.10";
  const FAILURES = {  // STOW FailureReason (0008,1197), PS3.18 Table I.2-1 / PS3.4 Annex B
    0x0110: "processing failure", 0x0111: "a different object with this UID exists",
    0x0117: "invalid object instance", 0x0122: "SOP class not supported",
    0x0124: "not authorised", 0xA700: "out of resources", 0xA900: "data set does not match SOP class",
    0xC000: "cannot understand the data set", 0xC122: "transfer syntax not supported",
  };
  const actions = [];
  let lastSearch = "#browser";

  // ---- DICOM JSON and formatting ---------------------------------------------------------
  function value(ds, tag) {
    const v = ds && ds[tag] && ds[tag].Value;
    if (!v || !v.length) return "";
    const first = v[0];
    return first && typeof first === "object" ? (first.Alphabetic || "") : String(first);
  }
  function values(ds, tag) {
    const v = ds && ds[tag] && ds[tag].Value;
    return v ? v.map(String) : [];
  }
  const personName = (pn) => (pn ? pn.split("^").filter(Boolean).join(", ") : "(no name)");
  const dicomDate = (d) => (/^\d{8}$/.test(d) ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : d || "–");

  function studyOf(ds) {
    return {
      uid: value(ds, "0020000D"), patientName: value(ds, "00100010"), patientId: value(ds, "00100020"),
      birthDate: value(ds, "00100030"), sex: value(ds, "00100040"), date: value(ds, "00080020"),
      accession: value(ds, "00080050"), description: value(ds, "00081030"),
      modalities: values(ds, "00080061").join(", "), series: value(ds, "00201206"),
      instances: value(ds, "00201208"), json: ds,
    };
  }

  // ---- HTTP ---------------------------------------------------------------------------------
  function authHeaders(extra = {}) {
    const token = sessionStorage.getItem(TOKEN_KEY) || "";
    return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
  }

  async function failure(resp) {
    const body = await resp.json().catch(() => ({}));
    const text = body.detail || (resp.status === 404 ? "HTTP 404: this server has no DICOMweb at /dicomweb" : `HTTP ${resp.status}`);
    if (resp.status === 401) return new Unauthorized(text);
    if (resp.status === 403) return new Forbidden(text);
    return new ApiError(text, resp.status, body.field);
  }

  // QIDO-RS: {rows, more}; asks one row more than `limit` to know whether a next page exists.
  async function qido(path, params = {}, limit = 0, offset = 0) {
    const q = new URLSearchParams(params);
    if (limit) { q.set("limit", String(limit + 1)); q.set("offset", String(offset)); }
    const resp = await fetch(`/dicomweb${path}${q.toString() ? `?${q}` : ""}`, {
      headers: authHeaders({ Accept: "application/dicom+json" }), credentials: "same-origin" });
    if (resp.status === 204) return { rows: [], more: false };
    if (!resp.ok) throw await failure(resp);
    const rows = await resp.json();
    const more = limit ? rows.length > limit : /additional results/i.test(resp.headers.get("Warning") || "");
    return { rows: limit ? rows.slice(0, limit) : rows, more };
  }

  const enc = encodeURIComponent;
  const studyUrl = (s) => `/dicomweb/studies/${enc(s)}`;
  const seriesUrl = (s, se) => `${studyUrl(s)}/series/${enc(se)}`;
  const viewerUrl = (s) => `/viewer/viewer?StudyInstanceUIDs=${enc(s)}`;
  const zipUrl = (url) => `${url}?accept=${enc("application/zip")}`;

  // ---- thumbnails: loaded as they scroll into view, a few at a time ------------------------
  function thumbLoader(limit = THUMB_CONCURRENCY) {
    let active = 0;
    const waiting = [];
    function pump() {
      while (active < limit && waiting.length) {
        const img = waiting.shift();
        if (!img.isConnected) continue;
        active++;
        const done = (ok) => {
          active--;
          img.classList.add(ok ? "loaded" : "failed");
          if (!ok) img.alt = "no preview";
          pump();
        };
        img.addEventListener("load", () => done(true), { once: true });
        img.addEventListener("error", () => done(false), { once: true });
        img.src = img.dataset.src;
      }
    }
    const observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (!e.isIntersecting) continue;
        observer.unobserve(e.target);
        waiting.push(e.target);
      }
      pump();
    }, { rootMargin: "100px" });
    return (src, label) => {
      const img = el("img", { class: "thumb", alt: label, width: "128", height: "128", "data-src": src });
      observer.observe(img);
      return img;
    };
  }

  function noPreview(text) {
    return el("div", { class: "thumb none" }, text);
  }

  // ---- search -------------------------------------------------------------------------------
  function hashParams() {
    const i = location.hash.indexOf("?");
    return new URLSearchParams(i < 0 ? "" : location.hash.slice(i + 1));
  }

  function go(params) {
    const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null));
    const target = `#browser${q.toString() ? `?${q}` : ""}`;
    if (location.hash === target) window.dispatchEvent(new HashChangeEvent("hashchange"));  // search again
    else location.hash = target;
  }

  // The QIDO filters of a search: a name without wildcards matches as a prefix (the catalog
  // matches names case-insensitively: "smi" finds SMITH); dates are a DICOM range.
  function filters(q) {
    const p = {};
    const name = (q.get("name") || "").trim();
    if (name) p.PatientName = /[*?]/.test(name) ? name : `${name}*`;
    if (q.get("id")) p.PatientID = q.get("id").trim();
    if (q.get("accession")) p.AccessionNumber = q.get("accession").trim();
    const from = (q.get("from") || "").replaceAll("-", "");
    const to = (q.get("to") || "").replaceAll("-", "");
    if (from || to) p.StudyDate = from === to ? from : `${from}-${to}`;
    if (q.get("modality")) p.ModalitiesInStudy = q.get("modality").trim().toUpperCase();
    p.includefield = "00081030,00080061,00201206,00201208,00100030,00100040";
    return p;
  }

  function searchForm(q) {
    const input = (name, label, attrs = {}) => el("label", {}, label,
      el("input", { name, id: `browser-${name}`, value: q.get(name) || "", ...attrs }));
    const form = el("form", { class: "panel", id: "browser-search", role: "search" },
      input("name", "Patient name", { placeholder: "e.g. smi", autocomplete: "off" }),
      input("id", "Patient ID", { autocomplete: "off" }),
      input("accession", "Accession", { autocomplete: "off" }),
      input("from", "Study date from", { type: "date" }), input("to", "Study date to", { type: "date" }),
      input("modality", "Modality", { placeholder: "CT, MR, US…", maxlength: "16" }),
      el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Search"),
        el("button", { type: "reset" }, "Clear")));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const data = Object.fromEntries(new FormData(form).entries());
      go({ ...data, offset: "" });
    });
    form.addEventListener("reset", () => go({}));
    return form;
  }

  function links(study) {
    return [
      el("a", { href: `#browser?study=${enc(study.uid)}`, class: "button" }, "Open"),
      el("a", { href: viewerUrl(study.uid), target: "_blank", rel: "noopener", class: "button viewer" }, "Viewer"),
      el("a", { href: zipUrl(studyUrl(study.uid)), download: `${study.uid}.zip`, class: "button" }, "Download"),
    ];
  }

  function hooks(study, ctx) {
    const out = [];
    for (const fn of actions) {
      try {
        const node = fn(study, ctx);
        if (node) out.push(node);
      } catch (err) {
        console.error("study action failed", err);
      }
    }
    return out;
  }

  function patientRow(group) {
    const s = group[0];
    const who = [s.patientId && `ID ${s.patientId}`, s.birthDate && `born ${dicomDate(s.birthDate)}`, s.sex]
      .filter(Boolean).join(" · ");
    const all = el("a", { href: `#browser?id=${enc(s.patientId)}`, class: "all-studies" }, "All studies of this patient");
    return el("tr", { class: "patient", "data-patient-id": s.patientId },
      el("td", { colspan: "6" }, el("strong", { class: "patient-name" }, personName(s.patientName)), " ",
        el("span", { class: "hint" }, who), " ", s.patientId ? all : null));
  }

  function studyRow(s, ctx) {
    return el("tr", { "data-study": s.uid },
      el("td", {}, el("a", { href: `#browser?study=${enc(s.uid)}` }, dicomDate(s.date))),
      el("td", {}, s.accession || "–"), el("td", {}, s.modalities || "–"),
      el("td", { class: "wrap" }, s.description || "–"),
      el("td", {}, `${s.series || "?"} / ${s.instances || "?"}`),
      el("td", { class: "study-actions" }, links(s), hooks(s, { ...ctx, where: "row" })));
  }

  function grouped(studies) {
    const groups = new Map();
    for (const s of studies) {
      const key = `${s.patientId}\u0000${s.patientName}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(s);
    }
    return [...groups.values()];
  }

  async function results(q, ctx) {
    const offset = Math.max(0, Number(q.get("offset")) || 0);
    const { rows, more } = await qido("/studies", filters(q), PAGE, offset);
    if (!rows.length) return [el("p", { class: "empty", id: "browser-empty" }, offset ? "No more studies." : "No study matches.")];
    const studies = rows.map(studyOf);
    const body = grouped(studies).flatMap((g) => [patientRow(g), ...g.map((s) => studyRow(s, ctx))]);
    const prev = el("button", { type: "button", disabled: !offset }, "Previous");
    const next = el("button", { type: "button", disabled: !more }, "Next");
    const page = (o) => go({ ...Object.fromEntries(q.entries()), offset: o ? String(o) : "" });
    prev.addEventListener("click", () => page(Math.max(0, offset - PAGE)));
    next.addEventListener("click", () => page(offset + PAGE));
    return [el("div", { class: "pager", id: "browser-pager" }, prev, next,
      el("span", {}, `studies ${offset + 1}–${offset + rows.length}${more ? " (more)" : ""}`)),
    table(["Date", "Accession", "Modality", "Description", "Series / images", ""], body)];
  }

  // A failed search leaves the form (and the upload) usable; a lost session still signs out.
  async function resultsOrError(q, ctx) {
    try {
      return await results(q, ctx);
    } catch (err) {
      if (err instanceof Unauthorized) throw err;
      return [el("p", { class: "error", role: "alert", id: "browser-error" }, `Could not search: ${err.message}`)];
    }
  }

  async function searchView(ctx) {
    const q = hashParams();
    lastSearch = location.hash || "#browser";
    const list = el("div", { id: "browser-results" }, await resultsOrError(q, ctx));
    const refresh = async () => list.replaceChildren(...await resultsOrError(hashParams(), ctx));
    const out = [el("h2", {}, "Studies"), searchForm(q)];
    if (ctx.canUpload) out.push(uploadPanel(refresh));
    out.push(list);
    return out;
  }

  // ---- a study: its series ------------------------------------------------------------------
  async function studyHeader(uid) {
    const { rows } = await qido("/studies", { StudyInstanceUID: uid, includefield: filters(new URLSearchParams()).includefield });
    if (!rows.length) throw new ApiError("no such study (or not in your scope)", 404);
    return studyOf(rows[0]);
  }

  function crumbs(study, series) {
    const parts = [el("a", { href: lastSearch }, "Studies"), " › ",
      el("a", { href: `#browser?id=${enc(study.patientId)}` }, personName(study.patientName)), " › ",
      el("a", { href: `#browser?study=${enc(study.uid)}` }, `${dicomDate(study.date)} ${study.description || ""}`.trim())];
    if (series) parts.push(" › ", el("span", {}, series));
    return el("p", { class: "crumbs" }, parts);
  }

  function studyFacts(s) {
    return el("p", { class: "hint", id: "study-facts" },
      [s.patientId && `Patient ID ${s.patientId}`, s.birthDate && `born ${dicomDate(s.birthDate)}`, s.sex,
        s.accession && `accession ${s.accession}`, s.modalities, `${s.series || "?"} series, ${s.instances || "?"} images`]
        .filter(Boolean).join(" · "),
      el("br"), el("span", { class: "mono" }, s.uid));
  }

  function seriesOf(ds) {
    return { uid: value(ds, "0020000E"), number: value(ds, "00200011"), modality: value(ds, "00080060"),
      description: value(ds, "0008103E"), count: value(ds, "00201209") };
  }

  async function studyView(ctx, uid) {
    const study = await studyHeader(uid);
    const { rows } = await qido(`/studies/${enc(uid)}/series`);
    const series = rows.map(seriesOf).sort((a, b) => Number(a.number || 0) - Number(b.number || 0));
    const thumb = thumbLoader();
    const tiles = series.map((se) => el("a", { class: "tile", href: `#browser?study=${enc(uid)}&series=${enc(se.uid)}`, "data-series": se.uid },
      NO_PIXELS.has(se.modality) ? noPreview(se.modality) : thumb(`${seriesUrl(uid, se.uid)}/thumbnail`, `series ${se.number}`),
      el("span", { class: "caption" }, `#${se.number || "?"} ${se.modality} ${se.description}`.trim()),
      el("span", { class: "hint" }, `${se.count || "?"} images`)));
    const bar = el("div", { class: "toolbar study-toolbar" }, links(study).slice(1),
      ctx.send ? sendControl(uid, ctx.send) : null, hooks(study, { ...ctx, where: "study" }));
    return [crumbs(study), el("h2", { class: "patient-name" }, personName(study.patientName)), studyFacts(study),
      bar, el("h3", {}, `Series (${series.length})`), el("div", { class: "tiles", id: "series-tiles" }, tiles)];
  }

  // ---- a series: its instances, a page at a time ------------------------------------------
  async function seriesView(ctx, uid, seriesUid) {
    const study = await studyHeader(uid);
    const thumb = thumbLoader();
    const grid = el("div", { class: "tiles", id: "instance-tiles" });
    const more = el("button", { type: "button", id: "instances-more" }, "Load more");
    let offset = 0;
    async function load() {
      const { rows, more: left } = await qido(`/studies/${enc(uid)}/series/${enc(seriesUid)}/instances`, {}, INSTANCE_PAGE, offset);
      offset += rows.length;
      for (const ds of rows) {
        const sop = value(ds, "00080018");
        const n = value(ds, "00200013");
        const image = value(ds, "00280010") !== "";
        grid.append(el("figure", { class: "tile", "data-instance": sop },
          image ? thumb(`${seriesUrl(uid, seriesUid)}/instances/${enc(sop)}/thumbnail`, `image ${n}`) : noPreview("no image"),
          el("figcaption", { class: "caption" }, `#${n || "?"}`)));
      }
      more.hidden = !left;
    }
    more.addEventListener("click", () => load().catch((err) => { more.title = err.message; }));
    await load();
    const bar = el("div", { class: "toolbar" },
      el("a", { href: viewerUrl(uid), target: "_blank", rel: "noopener", class: "button viewer" }, "Open study in viewer"),
      el("a", { href: zipUrl(seriesUrl(uid, seriesUid)), download: `${seriesUid}.zip`, class: "button" }, "Download series"));
    return [crumbs(study, `series ${seriesUid}`), el("h2", { class: "patient-name" }, personName(study.patientName)),
      bar, grid, more];
  }

  // ---- send to a registered node (edge) -----------------------------------------------------
  function sendControl(uid, send) {
    const select = el("select", { id: "send-node", "aria-label": "Node" }, el("option", { value: "" }, "Send to…"));
    const button = el("button", { type: "button", id: "send-button" }, "Send");
    const status = el("span", { class: "result", id: "send-status", role: "status" });
    send.nodes().then((names) => select.append(...names.map((n) => el("option", { value: n }, n))))
      .catch((err) => { status.textContent = `nodes: ${err.message}`; });
    const show = (p) => {
      const d = p.destinations[select.value] || Object.values(p.destinations)[0];
      if (!d) return false;
      const dead = d.dead ? ` · ${d.dead} failed: ${d.error}` : "";
      status.className = `result ${d.dead ? "bad" : d.pending + d.sending ? "" : "ok"}`;
      status.textContent = `${d.sent} sent · ${d.pending + d.sending} waiting${dead}`;
      return d.pending + d.sending > 0;
    };
    const follow = () => setTimeout(async () => {
      if (!status.isConnected) return;
      try { if (show(await send.progress(uid))) follow(); } catch (err) { status.textContent = err.message; }
    }, SEND_POLL_MS);
    button.addEventListener("click", async () => {
      if (!select.value) { status.textContent = "Pick a node first."; return; }
      button.disabled = true;
      try {
        if (show(await send.queue(uid, select.value))) follow();
      } catch (err) {
        status.className = "result bad";
        status.textContent = `Failed: ${err.message}`;
      } finally {
        button.disabled = false;
      }
    });
    return el("span", { class: "send" }, select, " ", button, " ", status);
  }

  // ---- upload (STOW-RS) by drag and drop, files or folders ---------------------------------
  // The Part-10 file meta (always Explicit VR Little Endian) names the SOP class and instance:
  // that is how the STOW answer is matched back to files. Null when the file has none.
  async function partTenMeta(file) {
    const buf = new Uint8Array(await file.slice(0, 64 * 1024).arrayBuffer());
    if (buf.length < 144 || String.fromCharCode(...buf.slice(128, 132)) !== "DICM") return null;
    const dv = new DataView(buf.buffer);
    const long = new Set(["OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UT", "UN", "UC", "UR", "SV", "UV"]);
    const meta = {};
    let pos = 132;
    while (pos + 8 <= buf.length && dv.getUint16(pos, true) === 2) {
      const elem = dv.getUint16(pos + 2, true);
      const vr = String.fromCharCode(buf[pos + 4], buf[pos + 5]);
      const head = long.has(vr) ? 12 : 8;
      const len = head === 12 ? dv.getUint32(pos + 8, true) : dv.getUint16(pos + 6, true);
      const text = () => new TextDecoder().decode(buf.slice(pos + head, pos + head + len)).replace(/[\0 ]+$/, "");
      if (elem === 2) meta.sopClass = text();
      if (elem === 3) meta.sopInstance = text();
      pos += head + len;
    }
    return meta.sopInstance ? meta : null;
  }

  async function walk(entry, prefix, out) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {  // readEntries answers in chunks (100 in Chromium) until an empty one
        const chunk = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!chunk.length) break;
        for (const child of chunk) await walk(child, `${prefix}${entry.name}/`, out);
      }
    }
  }

  // Entries must be taken during the drop event itself; the folders are walked afterwards.
  function dropped(dataTransfer) {
    const entries = [];
    const loose = [];
    for (const item of dataTransfer.items || []) {
      if (item.kind !== "file") continue;
      const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      if (entry) entries.push(entry);
      else if (item.getAsFile()) loose.push({ file: item.getAsFile(), path: item.getAsFile().name });
    }
    if (!entries.length && !loose.length) {
      for (const file of dataTransfer.files || []) loose.push({ file, path: file.name });
    }
    return async () => {
      const out = [...loose];
      for (const e of entries) await walk(e, "", out);
      return out;
    };
  }

  function batches(files) {
    const out = [];
    let cur = [];
    let size = 0;
    for (const f of files) {
      if (!f.meta) { out.push([f]); continue; }  // its answer can only be matched alone
      if (cur.length && (cur.length >= BATCH_FILES || size + f.file.size > BATCH_BYTES)) { out.push(cur); cur = []; size = 0; }
      cur.push(f);
      size += f.file.size;
    }
    if (cur.length) out.push(cur);
    return out;
  }

  function multipartBody(files, boundary) {
    const parts = [];
    for (const f of files) parts.push(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`, f.file, "\r\n");
    parts.push(`--${boundary}--\r\n`);
    return new Blob(parts);
  }

  // One STOW-RS request with upload progress (fetch has none): resolves {status, json}.
  function stow(files, onProgress) {
    return new Promise((resolve, reject) => {
      const boundary = `hpacs-${crypto.getRandomValues(new Uint32Array(4)).join("")}`;
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/dicomweb/studies");
      for (const [k, v] of Object.entries(authHeaders({ Accept: "application/dicom+json" }))) xhr.setRequestHeader(k, v);
      xhr.setRequestHeader("Content-Type", `multipart/related; type="application/dicom"; boundary=${boundary}`);
      xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded));
      xhr.addEventListener("load", () => {
        let json = {};
        try { json = JSON.parse(xhr.responseText || "{}"); } catch (err) { json = {}; }
        resolve({ status: xhr.status, json });
      });
      xhr.addEventListener("error", () => reject(new Error("the upload was interrupted")));
      xhr.send(multipartBody(files, boundary));
    });
  }

  // Per file of a batch: stored, or failed with the reason the server gave.
  function outcomes(batch, answer) {
    const ok = new Map();
    const failed = new Map();
    for (const item of (answer.json["00081199"] || {}).Value || []) {
      ok.set(value(item, "00081155"), value(item, "00081190"));
    }
    for (const item of (answer.json["00081198"] || {}).Value || []) {
      const code = Number(value(item, "00081197"));
      failed.set(value(item, "00081155"), `${FAILURES[code] || "failed"} (0x${code.toString(16).toUpperCase().padStart(4, "0")})`);
    }
    const whole = answer.status >= 400 && !failed.size ? (answer.json.detail || `HTTP ${answer.status}`) : "";
    return batch.map((f) => {
      const uid = f.meta ? f.meta.sopInstance : "";
      if (!f.meta && batch.length === 1 && (ok.size || failed.size)) {
        return ok.size ? { f, ok: true, url: [...ok.values()][0] } : { f, ok: false, why: [...failed.values()][0] };
      }
      if (ok.has(uid)) return { f, ok: true, url: ok.get(uid) };
      return { f, ok: false, why: failed.get(uid) || whole || "no answer for this file" };
    });
  }

  function uploadPanel(refresh) {
    const files = el("input", { type: "file", multiple: true, id: "upload-files", "aria-label": "Choose files" });
    const folder = el("input", { type: "file", webkitdirectory: true, id: "upload-folder", "aria-label": "Choose a folder" });
    const zone = el("div", { class: "dropzone", id: "upload-drop", tabindex: "0" },
      el("strong", {}, "Upload: drop DICOM files or a folder here"), el("br"),
      el("label", {}, "or choose files ", files), " ", el("label", {}, "or a folder ", folder));
    const bar = el("progress", { id: "upload-progress", max: "1", value: "0", hidden: true });
    const status = el("p", { id: "upload-status", role: "status" });
    const report = el("div", { id: "upload-report", class: "upload-report" });
    const run = (collect) => upload(collect, { bar, status, report, refresh }).catch((err) => {
      status.className = "error";
      status.textContent = `Upload failed: ${err.message}`;
    });
    zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      zone.classList.remove("over");
      run(dropped(ev.dataTransfer));
    });
    for (const input of [files, folder]) {
      input.addEventListener("change", () => {
        const picked = [...input.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
        input.value = "";
        run(async () => picked);
      });
    }
    return el("section", { class: "upload", id: "upload" }, zone, bar, status, report);
  }

  async function upload(collect, { bar, status, report, refresh }) {
    status.className = "";
    status.textContent = "Reading the files…";
    report.replaceChildren();
    const all = await collect();
    const skipped = [];
    const todo = [];
    for (const f of all) {
      f.meta = await partTenMeta(f.file);
      if (f.meta && f.meta.sopClass === DICOMDIR_CLASS) skipped.push({ f, ok: false, why: "a DICOMDIR (an index of the folder): not uploaded" });
      else todo.push(f);
    }
    const total = todo.reduce((n, f) => n + f.file.size, 0) || 1;
    bar.hidden = false;
    bar.max = total;
    let done = 0;
    const results = [...skipped];
    for (const batch of batches(todo)) {
      const size = batch.reduce((n, f) => n + f.file.size, 0);
      status.textContent = `Uploading ${results.length - skipped.length + batch.length} of ${todo.length} files (${bytes(done)} of ${bytes(total)})…`;
      const answer = await stow(batch, (sent) => { bar.value = done + Math.min(sent, size); });
      if (answer.status === 401) throw new Unauthorized("the session ended");
      done += size;
      bar.value = done;
      results.push(...outcomes(batch, answer));
    }
    const stored = results.filter((r) => r.ok).length;
    status.className = stored === results.length ? "result ok" : "result bad";
    status.textContent = `${stored} of ${results.length} files stored${results.length - stored ? `, ${results.length - stored} not stored` : ""}.`;
    results.sort((a, b) => Number(a.ok) - Number(b.ok));  // what was not stored first
    report.replaceChildren(uploadReport(results));
    await refresh();
  }

  function studyLink(url) {
    const m = /\/studies\/([0-9.]+)\//.exec(url || "");
    return m ? el("a", { href: `#browser?study=${m[1]}` }, "open study") : "";
  }

  function uploadReport(results) {
    return table(["File", "Result", ""], results.map((r) => el("tr", { class: r.ok ? "" : "denied", "data-file": r.f.path },
      el("td", { class: "mono wrap" }, r.f.path),
      el("td", {}, r.ok ? pill("stored", "ok") : pill(r.why, "bad")),
      el("td", {}, r.ok ? studyLink(r.url) : ""))));
  }

  // ---- the page -----------------------------------------------------------------------------
  // options: canUpload(principal) -> bool; send(principal) -> {nodes, queue, progress} | null;
  // prepare() -> Promise (before any image loads: e.g. a session cookie for <img> requests).
  function page(options = {}) {
    return async (render, principal) => {
      if (options.prepare) await options.prepare();
      const ctx = {
        principal, refresh: render,
        canUpload: Boolean(options.canUpload && options.canUpload(principal)),
        send: options.send ? options.send(principal) : null,
      };
      const q = hashParams();
      if (q.get("study") && q.get("series")) return seriesView(ctx, q.get("study"), q.get("series"));
      if (q.get("study")) return studyView(ctx, q.get("study"));
      return searchView(ctx);
    };
  }

  return { page, addStudyAction: (fn) => actions.push(fn), personName, dicomDate };
})();
