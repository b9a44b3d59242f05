"""Every config key, `/api` route and metric a doc names exists in the code.

The admin guide, the conformance statement, the README and the example config are read by an
admin who types what they say: a key that is not in `shared/config.py` stops the service at
start, a route that no app serves answers 404, an alert on a metric nobody exports never fires.
(CLI commands and their options: tests/test_cli_references.py.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from cloud_api.app import ROUTES as CLOUD_ROUTES
from shared.config import Config
from tests.test_config import _keys

ROOT = Path(__file__).resolve().parents[1]
# The docs an admin reads (ARCHITECTURE.md names Python modules, `edge.ingest`, the same way).
DOCS = [ROOT / "README.md", ROOT / "docs" / "admin-guide.md", ROOT / "docs" / "conformance.md"]
EXAMPLE = ROOT / "deploy" / "hpacs.example.toml"
SECTIONS = "edge|sync|cloud|retention|restore"
DOTTED = re.compile(rf"(?<![\w./-])((?:{SECTIONS})\.[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)?)\b")
FILE_LIKE = (".py", ".toml", ".md", ".service", ".crt", ".key", ".json", ".yaml")
API_PATH = re.compile(r"(/api/[A-Za-z0-9_./{}<>-]*[A-Za-z0-9_}>])")
METRIC = re.compile(r"\b(hpacs_[a-z0-9_]*[a-z0-9])\b(?!_)")


def _lines(paths: list[Path]) -> Iterator[tuple[str, int, str]]:
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            yield str(path.relative_to(ROOT)), n, line


def config_keys() -> set[str]:
    """Every dotted key, list sections without their `[]` (routes.name, retention.rules.years)."""
    return {k.replace("[]", "") for k in _keys("", Config)}


def unknown_keys(lines: Iterator[tuple[str, int, str]]) -> list[str]:
    keys = config_keys()
    prefixes = {k.rsplit(".", 1)[0] for k in keys}
    out = []
    for where, n, line in lines:
        for m in DOTTED.finditer(line):
            ref = m.group(1)
            if ref in keys or ref in prefixes or ref.endswith(FILE_LIKE):
                continue
            if line[m.end() : m.end() + 1] in ("/", "-"):  # a file or unit name (edge.service)
                continue
            out.append(f"{where}:{n}: {ref}")
    return out


def _shape(path: str) -> str:
    """`/api/nodes/{ae}`, `/api/nodes/<ae>` -> `/api/nodes/*` (query strings cut)."""
    path = path.split("?", 1)[0].rstrip(".")
    return re.sub(r"\{[^}]*\}|<[^>]*>", "*", path)


def served_api_paths() -> set[str]:
    """The `/api` paths of the edge's and the cloud's route tables."""
    edge_src = (ROOT / "edge" / "http.py").read_text()
    edge = set(re.findall(r'"(/api/[^"]*)"', edge_src))
    cloud = {p for _, p, *_ in CLOUD_ROUTES if p.startswith("/api/")}
    return {_shape(p) for p in edge | cloud}


def exported_metrics() -> str:
    """The source text that names metrics (a counter family `x` is exported as `x_total`)."""
    texts = [
        p.read_text()
        for pkg in ("shared", "edge", "sync", "cloud_api")
        for p in (ROOT / pkg).rglob("*.py")
    ]
    return "\n".join(texts)


def test_every_config_key_a_doc_names_exists() -> None:
    assert unknown_keys(_lines([*DOCS, EXAMPLE])) == []


def test_an_unknown_key_is_caught() -> None:
    text = "set `edge.port` and `edge.tls.port`, `sync.site`; not `edge.no_such_key` (edge.service)"
    assert unknown_keys(iter([("x.md", 1, text)])) == ["x.md:1: edge.no_such_key"]


def test_every_api_route_a_doc_names_is_served() -> None:
    served = served_api_paths()
    assert "/api/nodes/*" in served and "/api/sites/*/restores/*" in served
    missing = [
        f"{where}:{n}: {m.group(1)}"
        for where, n, line in _lines(DOCS)
        for m in API_PATH.finditer(line)
        if _shape(m.group(1)) not in served
    ]
    assert missing == []


def test_every_metric_a_doc_names_is_exported() -> None:
    source = exported_metrics()
    missing = []
    for where, n, line in _lines(DOCS):
        for name in METRIC.findall(line):
            base = name.removesuffix("_total")
            if f'"{name}"' not in source and f'"{base}"' not in source:
                missing.append(f"{where}:{n}: {name}")
    assert missing == []


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, re.MULTILINE))


MAKE = re.compile(r"\bmake ([a-z][a-z0-9-]*)")  # in code spans and indented blocks only


def test_every_make_target_a_doc_names_exists() -> None:
    targets = make_targets()
    assert {"up", "test"} <= targets
    missing = [
        f"{where}:{n}: make {t}"
        for where, n, line in _lines(DOCS)
        for code in [*re.findall(r"`([^`]+)`", line), line if line.startswith("    ") else ""]
        for t in MAKE.findall(code)
        if t not in targets
    ]
    assert missing == []
