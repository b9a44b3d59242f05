"""deploy/: systemd units verified by systemd-analyze, compose and Kubernetes manifests parsed
and checked for the fields a site depends on (kubeconform is not available offline)."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = ["hpacs-edge.service", "hpacs-sync.service"]
INSTALL_BIN = "/opt/hpacs/venv/bin/"


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: `make deps` installs Debian's systemd")
    return tool


def unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(DEPLOY / "systemd" / name)
    return cp


@pytest.fixture
def installed_units(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this checkout's venv (verify checks it exists)."""
    out = []
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        assert INSTALL_BIN in text
        p = tmp_path / name
        p.write_text(text.replace(INSTALL_BIN, str(ROOT / ".venv" / "bin") + "/"))
        out.append(p)
    return out


def test_systemd_units_verify_clean(installed_units: list[Path]) -> None:
    r = subprocess.run(
        [systemd_analyze(), "verify", *map(str, installed_units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


@pytest.mark.parametrize("name", UNITS)
def test_systemd_units_are_hardened(name: str, installed_units: list[Path]) -> None:
    s = unit(name)["Service"]
    assert s["User"] == "hpacs" and s["Group"] == "hpacs"
    assert s["ProtectSystem"] == "strict"
    assert s["ReadWritePaths"] == "/var/lib/hpacs"  # data only
    assert s["Restart"] == "on-failure"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert s[key] == "yes", key
    r = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", str(installed_units[UNITS.index(name)])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    level = float(r.stdout.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
    assert level <= 2.0, r.stdout[-400:]


def test_sysusers_declares_the_service_user() -> None:
    line = (DEPLOY / "systemd" / "hpacs.sysusers.conf").read_text().splitlines()[-1].split()
    assert line[:2] == ["u", "hpacs"]


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s() -> dict[str, dict[str, Any]]:
    """Manifests by kind (Secrets, of which there are two, by `Secret/<name>`)."""
    docs = {}
    for p in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for d in load_yaml(p):
            if "kind" in d and "metadata" in d:
                assert d.get("apiVersion"), p
                key = d["kind"]
                if key == "Secret":
                    key = f"Secret/{d['metadata']['name']}"
                assert key not in docs, key
                docs[key] = d
    return docs


def test_k8s_deployment_replicas_probes_config_and_secret() -> None:
    docs = k8s()
    dep = docs["Deployment"]
    assert dep["apiVersion"] == "apps/v1"
    spec = dep["spec"]
    assert spec["replicas"] >= 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["command"][0] == "hpacs-cloud" and c["command"][-1] == "serve"
    port = c["ports"][0]
    assert port["containerPort"] == 8081
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert set(mounts) <= set(volumes)
    cm = docs["ConfigMap"]
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    secret = docs["Secret/hpacs-cloud-tokens"]
    assert volumes["tokens"]["secret"]["secretName"] == secret["metadata"]["name"]
    # the config in the ConfigMap is a valid hpacs.toml whose tokens file is the Secret's
    cfg = parse_config(tomllib.loads(cm["data"]["hpacs.toml"]))
    assert cfg.cloud.port == 8081 and cfg.cloud.host == "0.0.0.0"
    # N replicas on one PostgreSQL catalog, reached through the Cloud SQL Auth Proxy sidecar
    assert spec["replicas"] >= 3 and cfg.cloud.catalog.startswith("postgresql://")
    (proxy,) = pod["initContainers"]
    assert proxy["restartPolicy"] == "Always" and "cloud-sql-proxy" in proxy["image"]
    assert "--port=5432" in proxy["args"] and "@127.0.0.1:5432/" in cfg.cloud.catalog
    tokens = Path(cfg.cloud.tokens_file)
    assert str(tokens.parent) == mounts["tokens"]["mountPath"]
    assert tokens.name in secret["stringData"]
    svc = docs["Service"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == port["name"]
    for d in docs.values():
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "hpacs", d["kind"]


def test_kustomization_lists_existing_files_but_not_the_secret_template() -> None:
    (kust,) = load_yaml(DEPLOY / "k8s" / "kustomization.yaml")
    for res in kust["resources"]:
        assert (DEPLOY / "k8s" / res).is_file(), res
    assert "secret.yaml" not in kust["resources"]
    assert "session-secret.yaml" not in kust["resources"]


def test_k8s_replicas_share_one_session_key_and_serve_the_viewer() -> None:
    """Every replica signs cookies with the key of one Secret (a cookie from one replica is
    valid on the others), and the viewer build is where the image puts it."""
    docs = k8s()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    cfg = parse_config(tomllib.loads(docs["ConfigMap"]["data"]["hpacs.toml"]))
    key = Path(cfg.cloud.session_key_file)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    mount = mounts[str(key.parent)]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = docs[f"Secret/{volumes[mount['name']]['secret']['secretName']}"]
    assert key.name in secret["stringData"]
    with pytest.raises(ValueError):  # the template's value is refused, never used as a key
        bytes.fromhex(secret["stringData"][key.name])
    assert cfg.cloud.viewer_dir == VIEWER_IN_IMAGE


VIEWER_IN_IMAGE = "/opt/hpacs/viewer"


def test_dockerfile_builds_the_viewer_from_the_lock() -> None:
    """A node stage installs @ohif/app from viewer/package*.json with `npm ci` (the lock's
    integrity hash, no install scripts); its dist/ is copied where the configs point."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    stages = {ln.split()[-1]: i for i, ln in enumerate(lines) if ln.startswith("FROM ")}
    assert "viewer" in stages and lines[stages["viewer"]].split()[1].startswith("node:")
    body = lines[stages["viewer"] : min(i for i in stages.values() if i > stages["viewer"])]
    assert "COPY viewer/package.json viewer/package-lock.json ./" in body
    (npm,) = [ln for ln in body if ln.startswith("RUN ")]
    assert "npm ci" in npm and "--ignore-scripts" in npm
    (copy,) = [ln for ln in lines if ln.startswith("COPY --from=viewer")]
    src, dst = copy.split()[-2:]
    assert src.endswith("node_modules/@ohif/app/dist") and dst == VIEWER_IN_IMAGE
    assert lines.index(copy) > max(stages.values())  # into the final stage
    compose = tomllib.loads((DEPLOY / "compose" / "hpacs.toml").read_text())
    assert compose["edge"]["viewer_dir"] == VIEWER_IN_IMAGE
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "viewer/node_modules" in ignored  # the host's install never enters the context


def test_compose_site_edge_sync_and_gcs_emulator() -> None:
    (compose,) = load_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert set(services) == {"edge", "sync", "gcs"}
    assert services["edge"]["command"][0] == "hpacs-edge"
    assert services["sync"]["command"][0] == "hpacs-sync"
    assert services["edge"]["build"]["dockerfile"] == "deploy/Dockerfile"
    # both share the data volume (the sync agent works on the edge's index and cache)
    assert services["edge"]["volumes"] == services["sync"]["volumes"]
    cfg_mount = next(v for v in services["edge"]["volumes"] if v.endswith("hpacs.toml:ro"))
    cfg = parse_config(tomllib.loads((DEPLOY / cfg_mount.split(":")[0]).read_text()))
    assert cfg.sync.emulator_host.startswith("http://gcs:")
    bucket = cfg.sync.store_url.removeprefix("gs://")
    assert (DEPLOY / "compose" / "gcs-preload" / bucket).is_dir()
    assert cfg.edge.data_dir.startswith("/var/lib/hpacs")


def test_dockerfile_runs_as_non_root_and_copies_what_exists() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and not users[-1].startswith("root")
    for ln in lines:
        if ln.startswith("COPY ") and "--from=" not in ln:
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), src


def test_devup_starts_a_postgresql_catalog_for_make_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`CLOUD_CATALOG=postgresql make up`: a cluster under var/, its URL in
    var/cloud-catalog.url and on the cloud API's command line."""
    import psycopg

    from deploy import devup

    # a directory the postgres user can reach (pytest's tmp_path is private to root)
    var = Path(tempfile.mkdtemp(prefix="var-", dir=os.environ.get("TMPDIR") or "/tmp"))
    os.chmod(var, 0o755)
    monkeypatch.setattr(devup, "URL_FILE", var / "cloud-catalog.url")
    monkeypatch.setenv("HPACS_DEV_PGPORT", "0")
    procs = devup.read_procfile(DEPLOY / "Procfile", "deploy/hpacs.dev.toml")
    cluster = devup.start_catalog("postgresql", procs)
    try:
        url = (var / "cloud-catalog.url").read_text().strip()
        assert url.startswith("postgresql://") and url.endswith("/hpacs")
        cloud = dict(procs)["cloud"]
        assert cloud[-2:] == ["--catalog", url] and "serve" in cloud
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        cluster.remove()
    assert devup.start_catalog("", procs) is None
    assert not (var / "cloud-catalog.url").exists()  # a SQLite run leaves no stale URL
    shutil.rmtree(var)
