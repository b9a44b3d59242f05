"""The pure parts of sessions and share scope, from tables (shared/web/session.py,
cloud_api/shares.py, shared/web/viewer.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cloud_api.shares import scope_verdict
from shared.errors import Unauthenticated
from shared.web import viewer
from shared.web.session import (
    Credentials,
    SessionSigner,
    load_or_create_key,
    safe_next,
    same_origin,
)

STUDY = "1.2.3.4"


@pytest.mark.parametrize(
    "method, origin, fetch_site, ok",
    [
        ("GET", None, "cross-site", True),  # safe methods change nothing
        ("HEAD", "https://evil.example", None, True),
        ("POST", None, "same-origin", True),
        ("POST", "https://evil.example", "same-origin", True),  # the browser's header decides
        ("POST", "http://pacs.example:8081", "cross-site", False),
        ("POST", None, "same-site", False),
        ("POST", None, "none", False),
        ("DELETE", "http://pacs.example:8081", None, True),
        ("DELETE", "http://PACS.example:8081", None, True),
        ("POST", "http://pacs.example:8082", None, False),
        ("POST", "https://evil.example", None, False),
        ("POST", "null", None, False),
        ("POST", None, None, False),
    ],
)
def test_same_origin_rule(
    method: str, origin: str | None, fetch_site: str | None, ok: bool
) -> None:
    assert same_origin(method, origin, fetch_site, "pacs.example:8081") is ok


@pytest.mark.parametrize(
    "target, result",
    [
        ("/viewer/viewer?StudyInstanceUIDs=1.2", "/viewer/viewer?StudyInstanceUIDs=1.2"),
        ("/console#sites", "/console#sites"),
        ("", "/viewer/"),
        (None, "/viewer/"),
        ("viewer", "/viewer/"),
        ("//evil.example/x", "/viewer/"),
        ("/\\evil.example", "/viewer/"),
        ("https://evil.example/", "/viewer/"),
        ("javascript:alert(1)", "/viewer/"),
    ],
)
def test_safe_next(target: str | None, result: str) -> None:
    assert safe_next(target) == result


@pytest.mark.parametrize(
    "path, path_study, query, verdict",
    [
        (f"/dicomweb/studies/{STUDY}/metadata", STUDY, [], "allow"),
        ("/dicomweb/studies/9.9/metadata", "9.9", [], "absent"),
        ("/dicomweb/studies", None, [("StudyInstanceUID", STUDY)], "allow"),
        ("/dicomweb/series", None, [("0020000D", STUDY), ("limit", "5")], "allow"),
        ("/dicomweb/studies", None, [("studyinstanceuid", STUDY)], "allow"),
        ("/dicomweb/studies", None, [], "empty"),
        ("/dicomweb/studies", None, [("PatientID", "P1")], "empty"),
        ("/dicomweb/studies", None, [("StudyInstanceUID", f"{STUDY}\\9.9")], "empty"),
        ("/dicomweb/studies", None, [("StudyInstanceUID", STUDY), ("0020000D", "9.9")], "empty"),
        ("/dicomweb/studies", None, [("StudyInstanceUID", "1.2.3.*")], "empty"),
        ("/api/session", None, [], "allow"),  # not DICOMweb: the route's need decides
    ],
)
def test_share_scope(
    path: str, path_study: str | None, query: list[tuple[str, str]], verdict: str
) -> None:
    assert scope_verdict(STUDY, path, path_study, query) == verdict


def test_signed_claims_round_trip_and_refuse_tampering_and_age() -> None:
    signer = SessionSigner(b"k" * 32)
    value = signer.sign({"kind": "token", "sub": "abc"}, 60, now=1000.0)
    claims = signer.verify(value, now=1030.0)
    assert claims is not None and claims["sub"] == "abc" and claims["exp"] == 1060
    assert signer.verify(value, now=1061.0) is None  # expired
    assert SessionSigner(b"j" * 32).verify(value, now=1030.0) is None  # another key
    body, mac = value.split(".")
    assert signer.verify(body[:-1] + ("A" if body[-1] != "A" else "B") + "." + mac, 1030) is None
    assert signer.verify("", 1030) is None and signer.verify("x.y", 1030) is None


def test_claims_of_a_request_keep_the_csrf_rule() -> None:
    """Both sides take a cookie's claims through SessionSigner.claims_of (cloud_api/session.py,
    edge/webauth.py): a forged or expired cookie, or a cross-origin change, is refused."""
    signer = SessionSigner(b"k" * 32)
    value = signer.sign({"kind": "user", "sub": "ann"}, 60)

    def creds(
        cookie: str | None, method: str = "POST", fetch_site: str | None = None
    ) -> Credentials:
        return Credentials(None, cookie, method, None, fetch_site, "pacs.example")

    assert signer.claims_of(creds(value, fetch_site="same-origin"))["sub"] == "ann"
    assert signer.claims_of(creds(value, method="GET"))["sub"] == "ann"  # reads: no Origin
    for bad, why in [
        (creds(value, fetch_site="cross-site"), "cross-origin"),
        (creds(value), "cross-origin"),  # a change that says nothing of its origin
        (creds(SessionSigner(b"j" * 32).sign({"sub": "ann"}, 60), "GET"), "expired or is not"),
        (creds(signer.sign({"sub": "ann"}, -1), "GET"), "expired or is not"),
        (creds(None, "GET"), "expired or is not"),
    ]:
        with pytest.raises(Unauthenticated, match=why):
            signer.claims_of(bad)


def test_session_key_is_created_once_private(tmp_path: Path) -> None:
    path = tmp_path / "k" / "session.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and load_or_create_key(path) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_viewer_settings_and_cache_rules() -> None:
    with pytest.raises(ValueError):
        viewer.ViewerSettings(dist=Path("."), prefix="/viewer")
    assert viewer.cache_control("app.bundle.0f6159c501addfe9.js") == viewer.IMMUTABLE
    assert viewer.cache_control("0ddf166f7a343eda.wasm") == viewer.IMMUTABLE
    assert viewer.cache_control("app.bundle.css") == "no-cache"
    assert viewer.cache_control("assets/favicon.ico") == "no-cache"
    with pytest.raises(viewer.ViewerBuildMissing):
        viewer.locate_build(str(Path(__file__).parent))
