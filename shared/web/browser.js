// hpacs study browser, shared by the edge console and the cloud console (no build step).
// Needs console.js (el, table, api, pill, Unauthorized, Forbidden, ApiError, authHeaders) and
// upload.js (the STOW-RS upload panel).
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
  const SEND_POLL_MS = 1000;
  const NO_PIXELS = new Set(["SR", "KO", "PR", "DOC", "RTSTRUCT", "RTPLAN", "REG", "FID", "AU", "ECG"]);
  const actions = [];
  let lastSearch = "#browser";
  let lastObserver = null;

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
    if (lastObserver) lastObserver.disconnect();  // the previous view's images are gone
    const observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (!e.isIntersecting) continue;
        observer.unobserve(e.target);
        waiting.push(e.target);
      }
      pump();
    }, { rootMargin: "100px" });
    lastObserver = observer;
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
      el("a", { href: zipUrl(studyUrl(study.uid)), download: true, class: "button" }, "Download"),
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
    if (ctx.canUpload) out.push(HpacsUpload.panel(refresh));
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
      el("a", { href: zipUrl(seriesUrl(uid, seriesUid)), download: true, class: "button" }, "Download series"));
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
