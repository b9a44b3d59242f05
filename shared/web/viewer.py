"""The OHIF viewer built in: locate the installed build, generate its config, serve it.

Side-independent: the cloud API mounts it now, the edge mounts the same in round two. What a
side supplies is a `ViewerSettings` (where its DICOMweb is, what its QIDO supports) and an
`authorized(request)` predicate that says whether the request carries a usable credential
(bearer token or session cookie), so a browser without one is sent to the login page.

The build is `@ohif/app`'s prebuilt `dist/` installed by `make viewer` (npm ci against the
lock's integrity hash; see viewer/package.json). It is built for the origin's root: its webpack
runtime loads chunks from `"/"` and its index.html names `/…` assets. Serving it under a prefix
therefore rewrites, in memory, exactly these: the index page (asset URLs, `PUBLIC_URL`, no
service worker), `__webpack_require__.p = "/"` in the bundles that carry a webpack runtime,
and `url(/` in style sheets. Each rewrite is checked (a build that no longer matches fails
loudly at first use, not with a blank page). The package's own app-config.js is never served:
ours points the one data source at this origin's DICOMweb.

Headers: the page and every asset are sent with COOP `same-origin` and COEP `require-corp`, so
the page is cross-origin isolated and cornerstone's decoders may use SharedArrayBuffer; a
dedicated worker of an isolated page must itself carry COEP, hence on every file. Same-origin
subresources (DICOMweb, chunks, wasm) need nothing more. Hashed file names (webpack's
`[contenthash]`) are cached for a year, everything else revalidates.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import html
import json
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

# Where `make viewer` installs the build, relative to the source tree.
DEFAULT_BUILD = Path(__file__).resolve().parents[2] / "viewer/node_modules/@ohif/app/dist"
OHIF_VERSION = "3.13.2"

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".xml": "application/xml",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
PAGE_HEADERS = {
    **ISOLATION,
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "frame-ancestors 'none'",
}
NO_CACHE = "no-cache"
HTML = "text/html; charset=utf-8"
IMMUTABLE = "public, max-age=31536000, immutable"
HASHED = re.compile(r"(^|[.])[0-9a-f]{16}\.(js|wasm|css|woff2?)$")
PUBLIC_PATH = '__webpack_require__.p = "/";'
# Files the viewer never needs from us: the package's config (ours is generated) and its
# offline service worker (it would cache DICOMweb answers beyond a session).
NOT_SERVED = frozenset({"app-config.js", "sw.js", "init-service-worker.js"})
MAX_PREPARED_BYTES = 64 * 1024 * 1024


class ViewerBuildMissing(RuntimeError):
    """The build is not installed (run `make viewer`) or does not look like OHIF's dist/."""


@dataclass(frozen=True)
class ViewerSettings:
    """What one side serves: where, and which DICOMweb the viewer talks to."""

    dist: Path
    prefix: str = "/viewer/"  # must start and end with "/"
    dicomweb_path: str = "/dicomweb"  # on the page's own origin (a URL: elsewhere, e.g. a bench)
    login_path: str = "/login"
    name: str = "hpacs"
    supports_fuzzy_matching: bool = False  # QIDO fuzzymatching=true is matched literally
    supports_wildcard: bool = True
    show_study_list: bool = True
    investigational_dialog: dict[str, Any] = field(
        default_factory=lambda: {"option": "configure", "days": 30}
    )

    def __post_init__(self) -> None:
        if not (self.prefix.startswith("/") and self.prefix.endswith("/")):
            raise ValueError(f"viewer prefix must start and end with '/': {self.prefix!r}")


def locate_build(configured: str = "") -> Path:
    """The installed dist/ (a configured directory, else where `make viewer` puts it)."""
    dist = Path(configured) if configured else DEFAULT_BUILD
    if not (dist / "index.html").is_file() or not any(dist.glob("app.bundle.*.js")):
        raise ViewerBuildMissing(
            f"no OHIF build at {dist}: run `make viewer` (npm ci in viewer/) or set "
            "cloud.viewer_dir to an @ohif/app dist/ directory"
        )
    return dist


def app_config(s: ViewerSettings) -> dict[str, Any]:
    """OHIF's `window.config`, as data (the DICOMweb roots are completed in the page)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "hpacs",
        "configuration": {
            "friendlyName": s.name,
            "name": s.name,
            "qidoRoot": s.dicomweb_path,
            "wadoRoot": s.dicomweb_path,
            "wadoUriRoot": s.dicomweb_path,
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": s.supports_fuzzy_matching,
            "supportsWildcard": s.supports_wildcard,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    return {
        "name": "hpacs",
        "routerBasename": s.prefix.rstrip("/") or "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": s.show_study_list,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": s.investigational_dialog,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "production",
        "defaultDataSourceName": "hpacs",
        "dataSources": [source],
    }


def app_config_js(s: ViewerSettings) -> bytes:
    """The generated app-config.js: absolute DICOMweb URLs on the page's own origin."""
    data = json.dumps(app_config(s), indent=1, sort_keys=True)
    return (
        "// Generated by hpacs (shared/web/viewer.py); the package's app-config.js is not used.\n"
        "(function () {\n"
        f"  var config = {data};\n"
        "  var c = config.dataSources[0].configuration;\n"
        "  ['qidoRoot', 'wadoRoot', 'wadoUriRoot'].forEach(function (k) {\n"
        "    if (c[k].charAt(0) === '/') c[k] = window.location.origin + c[k];\n"
        "  });\n"
        "  window.config = config;\n"
        "})();\n"
    ).encode()


def _replace_checked(text: str, old: str, new: str, at_least: int, what: str) -> str:
    n = text.count(old)
    if n < at_least:
        raise ViewerBuildMissing(f"the OHIF build changed: {what} ({old!r} found {n} times)")
    return text.replace(old, new)


def index_html(s: ViewerSettings) -> bytes:
    """The package's index.html, re-rooted under the prefix, without the service worker."""
    text = (s.dist / "index.html").read_text(encoding="utf-8")
    text = re.sub(r'<script[^>]*src="/init-service-worker\.js"[^>]*></script>', "", text)
    text = _replace_checked(
        text, 'window.PUBLIC_URL="/"', f"window.PUBLIC_URL={json.dumps(s.prefix)}", 1, "PUBLIC_URL"
    )
    text = _replace_checked(text, 'href="/', f'href="{s.prefix}', 2, "asset links")
    text = _replace_checked(text, 'src="/', f'src="{s.prefix}', 2, "script sources")
    return text.encode()


@dataclass(frozen=True)
class Prepared:
    """A compressible file as served: body (prefix written in where needed), gzip, ETag."""

    body: bytes
    gz: bytes
    etag: str


COMPRESSIBLE = frozenset({".js", ".mjs", ".css", ".json", ".svg", ".wasm", ".map", ".html"})


class ViewerFiles:
    """The served files of one build under one prefix; compressible ones kept in memory."""

    def __init__(self, settings: ViewerSettings) -> None:
        self.s = settings
        self.root = settings.dist.resolve()
        self._lock = threading.Lock()
        self._prepared: dict[str, Prepared | None] = {}
        self.index = index_html(settings)
        self.config_js = app_config_js(settings)

    def resolve(self, rel: str) -> Path | None:
        """The file for a URL tail, or None (missing, hidden, outside the build, not served)."""
        if not rel or rel in NOT_SERVED or any(p.startswith(".") for p in rel.split("/")):
            return None
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def prepared(self, rel: str, path: Path) -> Prepared | None:
        """The in-memory form of a compressible file (None: send it from disk as it is).

        Read, rewritten and compressed once per replica: a browser loading the viewer asks for
        tens of megabytes of scripts, and compressing them per request would cost more CPU
        than serving every image of a study."""
        with self._lock:
            if rel in self._prepared:
                return self._prepared[rel]
        out: Prepared | None = None
        if path.suffix in COMPRESSIBLE and path.stat().st_size <= MAX_PREPARED_BYTES:
            body = self._rewrite(path, path.read_bytes())
            etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
            out = Prepared(body, gzip.compress(body, 6), etag)
        with self._lock:
            self._prepared[rel] = out
        return out

    def _rewrite(self, path: Path, raw: bytes) -> bytes:
        if path.suffix == ".js" and PUBLIC_PATH.encode() in raw:
            new = PUBLIC_PATH.replace('"/"', json.dumps(self.s.prefix))
            return raw.replace(PUBLIC_PATH.encode(), new.encode())
        if path.suffix == ".css":
            return raw.replace(b"url(/", b"url(" + self.s.prefix.encode())
        return raw


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


def cache_control(rel: str) -> str:
    return IMMUTABLE if HASHED.search(rel.rsplit("/", 1)[-1]) else "no-cache"


Authorized = Callable[[web.Request], Awaitable[bool]]

AGAIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>hpacs viewer</title>
<meta http-equiv="refresh" content="0;url={url}"></head>
<body><p><a href="{url}">Open the viewer</a></p></body></html>
"""


def again(path_qs: str) -> web.Response:
    """The same URL once more, navigated from this origin. A link followed from another site
    (a mail, a worklist) arrives without the SameSite=Strict session cookie; the navigation
    this page starts is same-origin and carries it. Without a session it then goes to login."""
    return web.Response(
        text=AGAIN.format(url=html.escape(path_qs)),
        headers={**PAGE_HEADERS, "Content-Type": HTML, "Cache-Control": "no-store"},
    )


def mount(app: web.Application, settings: ViewerSettings, authorized: Authorized) -> frozenset[Any]:
    """Add the viewer's routes; returns their resources (static shell: no patient data).

    - `<prefix>app-config.js`: the generated config;
    - `<prefix><file>`: a file of the build (404 if the name has a dot and no such file);
    - any other `<prefix><route>` (`viewer?StudyInstanceUIDs=…`, the study list, …): the
      SPA page, or a redirect to the login page when `authorized` says no credential came.
    """
    files = ViewerFiles(settings)
    prefix = settings.prefix

    async def page(request: web.Request) -> web.StreamResponse:
        if await authorized(request):
            return web.Response(body=files.index, headers={**PAGE_HEADERS, "Content-Type": HTML})
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            return again(request.path_qs)  # the session cookie may exist: it was withheld
        target = quote(request.path_qs, safe="")
        raise web.HTTPSeeOther(f"{settings.login_path}?next={target}")

    async def config(request: web.Request) -> web.Response:
        return web.Response(
            body=files.config_js,
            headers={**ISOLATION, "Content-Type": CONTENT_TYPES[".js"], "Cache-Control": NO_CACHE},
        )

    async def serve(request: web.Request) -> web.StreamResponse:
        rel = request.match_info["tail"]
        last = rel.rsplit("/", 1)[-1]
        if "." not in last:
            return await page(request)  # a client-side route
        path = files.resolve(rel)
        if path is None:
            raise web.HTTPNotFound(headers=ISOLATION)
        headers = {
            **ISOLATION,
            "Content-Type": content_type(path),
            "Cache-Control": cache_control(rel),
        }
        prepared = await asyncio.to_thread(files.prepared, rel, path)
        if prepared is None:
            return web.FileResponse(path, headers=headers)
        headers["ETag"] = prepared.etag
        headers["Vary"] = "Accept-Encoding"
        if request.headers.get("If-None-Match") == prepared.etag:
            return web.Response(status=304, headers=headers)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=prepared.gz, headers=headers)
        return web.Response(body=prepared.body, headers=headers)

    async def bare(request: web.Request) -> web.Response:
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPMovedPermanently(prefix + query)

    r = app.router
    return frozenset(
        {
            r.add_get(prefix.rstrip("/"), bare, allow_head=False).resource,
            r.add_get(prefix + "app-config.js", config).resource,
            r.add_get(prefix + "{tail:.*}", serve).resource,
        }
    )
