// hpacs upload panel of the study browser (shared/web/browser.js), shared by both consoles:
// DICOM files or folders, dropped or chosen, sent by STOW-RS to this origin's /dicomweb.
// Needs console.js (el, table, pill, bytes, Unauthorized, authHeaders).
"use strict";

const HpacsUpload = (() => {
  const BATCH_FILES = 25;
  const BATCH_BYTES = 32 * 1024 * 1024;
  const DICOMDIR_CLASS = "1.2.840.10008.1.3.10";
  const FAILURES = {  // STOW FailureReason (0008,1197), PS3.18 Table I.2-1 / PS3.4 Annex B
    0x0110: "processing failure", 0x0111: "a different object with this UID exists",
    0x0117: "invalid object instance", 0x0122: "SOP class not supported",
    0x0124: "not authorised", 0xA700: "out of resources", 0xA900: "data set does not match SOP class",
    0xC000: "cannot understand the data set", 0xC122: "transfer syntax not supported",
  };

  // The first value of a DICOM JSON attribute, as text.
  function value(ds, tag) {
    const v = ds && ds[tag] && ds[tag].Value;
    return v && v.length ? String(v[0]) : "";
  }

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

  return { panel: uploadPanel };
})();
