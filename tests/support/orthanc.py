"""Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) as a real DICOMweb peer in tests.

A fresh Orthanc per use: free HTTP and DICOM ports on 127.0.0.1, storage and index in a temp
directory, the DICOMweb plugin loaded and its `DicomWeb.Servers` pointing at whatever the test
names (with HTTP headers, e.g. a bearer token). Started with readiness polled on its REST API,
stopped (SIGTERM, then kill) when the context ends.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.net import free_port, wait_for

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class DicomwebServer:
    """An entry of Orthanc's `DicomWeb.Servers`."""

    url: str  # ends with /
    headers: dict[str, str]


@dataclass
class Orthanc:
    url: str  # http://127.0.0.1:PORT
    workdir: Path
    proc: subprocess.Popen[bytes]

    def rest(self, method: str, path: str, **kw: Any) -> requests.Response:
        r = requests.request(method, self.url + path, timeout=120, **kw)
        assert r.status_code < 400, (method, path, r.status_code, r.text[:500])
        return r

    def upload(self, data: bytes) -> dict[str, Any]:
        return dict(self.rest("POST", "/instances", data=data).json())

    def file(self, instance_id: str) -> bytes:
        return self.rest("GET", f"/instances/{instance_id}/file").content

    def log(self) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def require_orthanc() -> None:
    if shutil.which("Orthanc") is None or not DICOMWEB_PLUGIN.exists():
        pytest.fail("Orthanc with its DICOMweb plugin is missing: `make deps` installs them")


@contextmanager
def running_orthanc(workdir: Path, servers: dict[str, DicomwebServer]) -> Iterator[Orthanc]:
    require_orthanc()
    workdir.mkdir(parents=True, exist_ok=True)
    http = free_port()
    cfg = {
        "Name": "hpacs-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "StorageCompression": False,
        "HttpPort": http,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": {
                name: {"Url": s.url, "HttpHeaders": s.headers} for name, s in servers.items()
            },
        },
    }
    (workdir / "orthanc.json").write_text(json.dumps(cfg, indent=1))
    with (workdir / "orthanc.log").open("wb") as log:
        proc = subprocess.Popen(
            ["Orthanc", "--verbose", str(workdir / "orthanc.json")],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    orthanc = Orthanc(f"http://127.0.0.1:{http}", workdir, proc)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {proc.returncode}: {orthanc.log()}")
            try:
                return requests.get(orthanc.url + "/system", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, timeout_s=60, what="Orthanc's REST API")
        yield orthanc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
