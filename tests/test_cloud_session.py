"""Sessions, CSRF, share links and the viewer's static files over a real cloud API port.

One server per module over a file:// bucket: site `a` (two studies), site `b` (one study).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from cloud_api import cli
from shared.store.base import ObjectStore, open_store
from shared.synthetic import StudySpec
from shared.web.session import COOKIE, SessionSigner
from tests.support.cloud import CloudServer, cloud_config, make_token, running_cloud, seed_site

S1, S2, S3 = (f"1.2.826.0.1.3680043.10.1255.95{i}" for i in (1, 2, 3))


@dataclass
class World:
    server: CloudServer
    store: ObjectStore
    tokens: dict[str, str]

    def url(self, path: str) -> str:
        return self.server.url + path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, module_catalog_url: str) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("session")
    cfg = cloud_config(tmp, session_ttl_s=600.0, catalog=module_catalog_url)
    store = open_store(cfg.store_url)
    seed_site(store, "a", StudySpec(patient_id="PA1", study_uid=S1, instances_per_series=2))
    seed_site(store, "a", StudySpec(patient_id="PA2", study_uid=S2, instances_per_series=1))
    seed_site(store, "b", StudySpec(patient_id="PB1", study_uid=S3, instances_per_series=1))
    tokens = {
        "admin": make_token(cfg, "root", "admin", []),
        "reader_a": make_token(cfg, "rad-a", "reader", ["a"]),
        "reader_b": make_token(cfg, "rad-b", "reader", ["b"]),
        "agent": make_token(cfg, "uploader", "agent", ["cloud"]),
        "doomed": make_token(cfg, "doomed", "reader", ["a"]),
    }
    with running_cloud(cfg, store) as server:
        yield World(server, store, tokens)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(w: World, who: str, **headers: str) -> requests.Session:
    """A browser-like client that signed in through the login form."""
    s = requests.Session()
    r = s.post(
        w.url("/login"),
        data={"token": w.tokens[who], "next": "/viewer/"},
        headers={"Origin": w.server.url, **headers},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 303, r.text
    assert r.headers["Location"] == "/viewer/"
    return s


def audit_tail(w: World, n: int) -> list[dict[str, Any]]:
    lines = w.server.services.audit.path.read_text().splitlines()
    return [json.loads(x) for x in lines[-n:]]


# ---- login, cookie, CSRF ----------------------------------------------------------------------


def test_login_sets_an_httponly_strict_cookie_that_dicomweb_accepts(world: World) -> None:
    s = login(world, "reader_a")
    raw = s.cookies.get(COOKIE)
    assert raw
    r = requests.post(
        world.url("/login"),
        data={"token": world.tokens["reader_a"]},
        headers={"Origin": world.server.url},
        allow_redirects=False,
        timeout=30,
    )
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; under TLS the flag is set
    assert "Max-Age=600" in cookie  # cloud.session_ttl_s
    assert s.get(world.url(f"/dicomweb/studies/{S1}/metadata"), timeout=30).status_code == 200
    assert s.get(world.url(f"/dicomweb/studies/{S3}/metadata"), timeout=30).status_code == 404
    who = s.get(world.url("/api/session"), timeout=30).json()
    assert who == {
        "name": "rad-a",
        "role": "reader",
        "sites": ["a"],
        "study": None,
        "authenticated_by": "session",
    }
    assert audit_tail(world, 1)[0]["token"] == "rad-a"


@pytest.mark.parametrize(
    "token, reason",
    [("hpacs_wrong", "unknown or revoked token"), ("agent", "agent token cannot sign in")],
)
def test_login_refused_goes_back_to_the_form_and_is_audited(
    world: World, token: str, reason: str
) -> None:
    value = world.tokens.get(token, token)
    r = requests.post(
        world.url("/login"),
        data={"token": value, "next": "/viewer/x"},
        headers={"Origin": world.server.url},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 303 and COOKIE not in r.cookies
    assert r.headers["Location"].startswith("/login?error=")
    assert r.headers["Location"].endswith("next=/viewer/x")
    rec = audit_tail(world, 1)[0]
    assert (rec["action"], rec["outcome"], rec["status"]) == ("login", "denied", 401)
    assert reason in rec["detail"]


def test_login_from_another_origin_is_refused(world: World) -> None:
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {}):
        r = requests.post(
            world.url("/login"),
            data={"token": world.tokens["reader_a"]},
            headers=headers,
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 401 and COOKIE not in r.cookies, headers


def test_login_next_stays_on_this_origin(world: World) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        r = requests.post(
            world.url("/login"),
            data={"token": world.tokens["reader_a"], "next": target},
            headers={"Origin": world.server.url},
            allow_redirects=False,
            timeout=30,
        )
        assert r.headers["Location"] == "/viewer/", target


def test_cookie_cannot_make_a_cross_origin_state_change(world: World) -> None:
    """CSRF: a share creation riding on the cookie needs Sec-Fetch-Site same-origin (or, from
    browsers that do not send it, an Origin equal to this host)."""
    s = login(world, "reader_a")
    body = {"study_uid": S1, "hours": 1}
    for headers, status in (
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 401),
        ({"Sec-Fetch-Site": "same-site"}, 401),
        ({"Origin": "https://evil.example"}, 401),
        ({}, 401),  # no Origin, no Sec-Fetch-Site on a POST: not a browser we can trust
        ({"Origin": world.server.url}, 201),
        ({"Sec-Fetch-Site": "same-origin"}, 201),
    ):
        r = s.post(world.url("/api/shares"), json=body, headers=headers, timeout=30)
        assert r.status_code == status, (headers, r.text)
    # a bearer token needs no such check: a browser never sends it on its own
    r = requests.post(
        world.url("/api/shares"), json=body, headers=bearer(world.tokens["reader_a"]), timeout=30
    )
    assert r.status_code == 201


def test_forged_tampered_and_expired_cookies_are_refused(world: World, tmp_path: Any) -> None:
    s = login(world, "reader_a")
    good = s.cookies.get(COOKIE)
    body, mac = good.split(".")
    forged_claims = SessionSigner(b"k" * 32).sign({"kind": "token", "sub": "x"}, 60)
    expired = world.server.services.sessions.signer.sign(
        {"kind": "token", "sub": json.loads(_claims(good))["sub"]}, 60, now=time.time() - 120
    )
    for value in (forged_claims, body + "." + mac[:-2] + "AA", expired, "garbage"):
        r = requests.get(
            world.url(f"/dicomweb/studies/{S1}/metadata"), cookies={COOKIE: value}, timeout=30
        )
        assert r.status_code == 401, value


def _claims(value: str) -> str:
    import base64

    body = value.split(".")[0]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


def test_revoking_the_token_ends_its_sessions(world: World) -> None:
    s = login(world, "doomed")
    assert s.get(world.url(f"/dicomweb/studies/{S1}/series"), timeout=30).status_code == 200
    world.server.services.tokens.revoke("doomed")
    assert s.get(world.url(f"/dicomweb/studies/{S1}/series"), timeout=30).status_code == 401


def test_bearer_turns_into_a_session_for_the_console(world: World) -> None:
    s = requests.Session()
    r = s.post(world.url("/api/session"), headers=bearer(world.tokens["reader_b"]), timeout=30)
    assert r.status_code == 201 and r.json()["role"] == "reader"
    assert s.get(world.url(f"/dicomweb/studies/{S3}/metadata"), timeout=30).status_code == 200


def test_logout_clears_the_cookie(world: World) -> None:
    s = login(world, "reader_a")
    r = s.post(world.url("/logout"), headers={"Origin": world.server.url}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/login"
    assert COOKIE not in s.cookies
    assert s.get(world.url("/api/session"), timeout=30).status_code == 401


# ---- the viewer's files ------------------------------------------------------------------------


def test_viewer_page_needs_a_credential_and_redirects_to_login(world: World) -> None:
    path = f"/viewer/viewer?StudyInstanceUIDs={S1}"
    r = requests.get(world.url(path), allow_redirects=False, timeout=30)
    assert r.status_code == 303
    assert r.headers["Location"].startswith("/login?next=")
    # arriving from another site (a mailed link): the SameSite cookie was withheld, so the
    # page navigates once more from this origin instead of asking to sign in
    r = requests.get(
        world.url(path), headers={"Sec-Fetch-Site": "cross-site"}, allow_redirects=False
    )
    assert (
        r.status_code == 200 and 'http-equiv="refresh"' in r.text and "Cache-Control" in r.headers
    )
    for creds in (bearer(world.tokens["reader_a"]), {}):
        client = login(world, "reader_a") if not creds else requests.Session()
        r = client.get(world.url(path), headers=creds, allow_redirects=False, timeout=30)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert 'window.PUBLIC_URL="/viewer/"' in r.text and 'src="/viewer/app-config.js"' in r.text
        assert "init-service-worker" not in r.text
        assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert r.headers["Cache-Control"] == "no-cache"


def test_viewer_config_is_ours(world: World) -> None:
    r = requests.get(world.url("/viewer/app-config.js"), timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/javascript")
    text = r.text
    config = json.loads(re.search(r"var config = (\{.*?\});\n", text, re.S).group(1))
    (source,) = config["dataSources"]
    c = source["configuration"]
    assert (c["qidoRoot"], c["wadoRoot"]) == ("/dicomweb", "/dicomweb")
    assert "c[k] = window.location.origin + c[k]" in text  # made absolute on the page's origin
    assert c["supportsFuzzyMatching"] is False and config["routerBasename"] == "/viewer"
    assert "cloudfront" not in text


def test_viewer_assets_types_caching_and_rewrites(world: World) -> None:
    from shared.web.viewer import locate_build

    dist = locate_build()
    bundle = next(dist.glob("app.bundle.*.js")).name
    wasm = next(dist.glob("*.wasm")).name
    r = requests.get(world.url(f"/viewer/{bundle}"), timeout=60)
    assert r.headers["Content-Type"].startswith("text/javascript")
    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert r.headers["Content-Encoding"] == "gzip"
    assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert '__webpack_require__.p = "/viewer/";' in r.text
    assert '__webpack_require__.p = "/";' not in r.text
    etag = r.headers["ETag"]
    again = requests.get(world.url(f"/viewer/{bundle}"), headers={"If-None-Match": etag})
    assert again.status_code == 304
    r = requests.get(world.url(f"/viewer/{wasm}"), timeout=30)
    assert r.headers["Content-Type"] == "application/wasm"
    css = requests.get(world.url("/viewer/app.bundle.css"), timeout=30)
    assert css.headers["Cache-Control"] == "no-cache" and "url(/viewer/" in css.text
    for missing in ("nope.js", "app-config.js.map", "sw.js", ".x/y.js", "%2e%2e/pyproject.toml"):
        assert requests.get(world.url(f"/viewer/{missing}"), timeout=30).status_code == 404
    r = requests.get(world.url("/viewer?x=1"), allow_redirects=False, timeout=30)
    assert r.status_code == 301 and r.headers["Location"] == "/viewer/?x=1"


# ---- share links -------------------------------------------------------------------------------


def create_share(w: World, who: str, study: str, hours: float = 1.0) -> requests.Response:
    return requests.post(
        w.url("/api/shares"),
        json={"study_uid": study, "hours": hours},
        headers=bearer(w.tokens[who]),
        timeout=30,
    )


def open_link(w: World, path: str, **kw: Any) -> requests.Response:
    return requests.get(w.url(path), allow_redirects=False, timeout=30, **kw)


def test_share_of_a_study_outside_the_readers_sites_is_404(world: World) -> None:
    assert create_share(world, "reader_a", S3).status_code == 404
    assert create_share(world, "reader_a", "1.2.3.999").status_code == 404
    assert create_share(world, "reader_a", "not-a-uid").status_code == 400
    assert create_share(world, "reader_a", S1, hours=0).status_code == 400
    assert create_share(world, "agent", S1).status_code == 403


def test_share_link_reads_its_study_only(world: World) -> None:
    r = create_share(world, "reader_a", S1)
    assert r.status_code == 201
    link = r.json()
    assert link["state"] == "active" and "secret_sha256" not in link
    opened = open_link(world, link["path"])
    assert opened.status_code == 200 and f"StudyInstanceUIDs={S1}" in opened.text
    assert opened.headers["Referrer-Policy"] == "no-referrer"
    s = requests.Session()
    s.cookies.set(COOKIE, opened.cookies[COOKIE])
    ok = [
        f"/dicomweb/studies/{S1}/metadata",
        f"/dicomweb/studies/{S1}/series",
        f"/dicomweb/studies?StudyInstanceUID={S1}",
        f"/dicomweb/series?0020000D={S1}",
    ]
    for path in ok:
        assert s.get(world.url(path), timeout=30).status_code == 200, path
    assert s.get(world.url("/viewer/viewer"), allow_redirects=False).status_code == 200
    outside = {
        f"/dicomweb/studies/{S2}/metadata": 404,  # same site, other study
        f"/dicomweb/studies/{S3}": 404,
        "/dicomweb/studies": 204,  # the study list: nothing
        "/dicomweb/studies?PatientID=PA2": 204,
        f"/dicomweb/studies?StudyInstanceUID={S1}&StudyInstanceUID={S2}": 204,
        f"/dicomweb/studies?StudyInstanceUID={S1}&0020000D={S2}": 204,
        f"/dicomweb/studies?StudyInstanceUID={S1}%5C{S2}": 204,  # a UID list
        "/api/shares": 403,
        "/api/sites": 403,
    }
    for path, status in outside.items():
        assert s.get(world.url(path), timeout=30).status_code == status, path
    assert s.post(world.url("/api/shares"), json={"study_uid": S1}).status_code == 401  # no Origin
    r = s.post(
        world.url("/api/shares"), json={"study_uid": S1}, headers={"Origin": world.server.url}
    )
    assert r.status_code == 403  # a share session cannot create links


def test_share_link_expired_and_revoked_answer_410_and_are_audited(world: World) -> None:
    link = create_share(world, "reader_a", S2, hours=1).json()
    opened = open_link(world, link["path"])
    assert opened.status_code == 200
    cookie = {COOKIE: opened.cookies[COOKIE]}
    # revoke (the reader who made it), then the link and its session are over
    r = requests.delete(
        world.url(f"/api/shares/{link['id']}"), headers=bearer(world.tokens["reader_a"])
    )
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    gone = open_link(world, link["path"])
    assert gone.status_code == 410 and gone.headers["Content-Type"].startswith(
        "application/problem+json"
    )
    html = open_link(world, link["path"], headers={"Accept": "text/html"})
    assert html.status_code == 410 and "no longer valid" in html.text
    meta = requests.get(world.url(f"/dicomweb/studies/{S2}/metadata"), cookies=cookie, timeout=30)
    assert meta.status_code == 401
    # expiry: a record whose time has passed (written as the API would, a minute ago)
    store = world.server.services.shares
    rec, token = store.create(S2, ["a"], "rad-a", hours=1)
    rec.expires_at = time.time() - 60
    store._write(rec, create=False)
    assert open_link(world, f"/share/{token}").status_code == 410
    # unknown link and wrong secret: 404, told apart from nothing
    assert open_link(world, f"/share/{rec.id}.wrongsecret").status_code == 404
    assert open_link(world, "/share/nonsense").status_code == 404
    recs = [r for r in audit_tail(world, 8) if r["action"] == "share-open"][-5:]
    opens = [(r["token"], r["outcome"], r["status"]) for r in recs]
    assert opens == [
        (f"share:{link['id']}", "denied", 410),
        (f"share:{link['id']}", "denied", 410),
        (f"share:{rec.id}", "denied", 410),
        (f"share:{rec.id}", "denied", 404),
        ("share:nonsense", "denied", 404),
    ]
    assert all(r["study_uid"] == S2 for r in recs if r["status"] == 410)


def test_share_list_and_revoke_respect_the_creator(world: World) -> None:
    mine = create_share(world, "reader_b", S3).json()
    listed = requests.get(world.url("/api/shares"), headers=bearer(world.tokens["reader_b"]))
    assert {x["id"] for x in listed.json()} == {mine["id"]}
    everyone = requests.get(world.url("/api/shares"), headers=bearer(world.tokens["admin"]))
    assert mine["id"] in {x["id"] for x in everyone.json()} and len(everyone.json()) > 1
    r = requests.delete(
        world.url(f"/api/shares/{mine['id']}"), headers=bearer(world.tokens["reader_a"])
    )
    assert r.status_code == 404  # another reader's link: not even its existence
    r = requests.delete(
        world.url(f"/api/shares/{mine['id']}"), headers=bearer(world.tokens["admin"])
    )
    assert r.status_code == 200 and r.json()["revoked_by"] == "root"


def test_share_cli_create_list_revoke(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = world.server.cfg  # the CLI works on the same bucket through a config file
    toml = f"{cfg.data_dir}/cli.toml"
    with open(toml, "w") as fh:
        fh.write(f'[cloud]\nstore_url = "{cfg.store_url}"\ndata_dir = "{cfg.data_dir}"\n')
    argv = ["--config", toml, "share", "create", S1, "--hours", "2", "--base-url", world.url("")]
    assert cli.main(argv) == 0
    share_id, _, url = capsys.readouterr().out.strip().split("\t")
    assert url.startswith(world.url("/share/"))
    assert open_link(world, url[len(world.server.url) :]).status_code == 200
    assert cli.main(["--config", toml, "share", "list"]) == 0
    assert share_id in capsys.readouterr().out
    assert cli.main(["--config", toml, "share", "revoke", share_id]) == 0
    assert world.server.services.shares.get(share_id, fresh=True).state() == "revoked"
    assert open_link(world, url[len(world.server.url) :]).status_code == 410
    capsys.readouterr()
    assert cli.main(["--config", toml, "share", "list"]) == 0
    assert share_id not in capsys.readouterr().out  # only active links without --all
    assert cli.main(["--config", toml, "share", "create", "1.2.3.999"]) == 1  # no such study
