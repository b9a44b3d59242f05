"""The OHIF viewer on the edge and the sign-in page it sends a browser to.

The viewer is `shared/web/viewer.py`, mounted as on the cloud API: same origin as the edge's
`/dicomweb`, COOP/COEP, its page (not its static shell) needing the console token or a session.
A browser without one goes to `GET /login?next=…`: the shared login page with a user name and
password besides the console token, posted as a form to `POST /login` (edge/http.py), which
answers a redirect to `next` (this origin only).
"""

from __future__ import annotations

import logging

from aiohttp import web

from shared.web import session as ws
from shared.web import viewer

log = logging.getLogger("hpacs.edge.http")

LOGIN_PATH = "/login"
LOGIN_HINT = (
    'An edge user (<span class="mono">hpacs-edge users add</span>), or the console '
    'token (<span class="mono">&lt;data_dir&gt;/console_token</span>; under '
    '<span class="mono">make up</span>: <span class="mono">var/edge/console_token</span>).'
)


def mount_viewer(app: web.Application, viewer_dir: str, authorized: viewer.Authorized) -> None:
    """The OHIF viewer at /viewer/ on this origin's /dicomweb; an absent build answers 503
    saying how to install it (the rest of the HTTP side serves on)."""
    try:
        dist = viewer.locate_build(viewer_dir)
    except viewer.ViewerBuildMissing as exc:
        log.warning("viewer not served error=%s", exc)
        reason = str(exc).replace("cloud.viewer_dir", "edge.viewer_dir")

        async def missing(request: web.Request) -> web.Response:
            return web.Response(status=503, text=reason)

        app.router.add_get("/viewer/{tail:.*}", missing)
        return
    viewer.mount(app, viewer.ViewerSettings(dist=dist, login_path=LOGIN_PATH), authorized)


async def login_page(request: web.Request) -> web.Response:
    """The sign-in form (static, no data); its style and script come from /shared/."""
    body = ws.login_page("/shared/", accounts=True, hint=LOGIN_HINT)
    return web.Response(body=body, content_type="text/html", headers=ws.LOGIN_HEADERS)
