"""No module of the edge touches a private name of pynetdicom (STYLE.md 21): no `_x` imported
from it, no `_x` attribute read or written on it or on what it returns, no module attribute of
it reassigned (monkeypatching), no copy of its loops. What we need beyond its public API is
ours (edge/dimse/), and pyproject.toml pins the version the byte-equality tests compare with."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGE = ROOT / "edge"


def _pynetdicom_names(tree: ast.Module) -> set[str]:
    """Local names bound to pynetdicom modules or objects imported from them."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "pynetdicom":
                    names.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pynetdicom":
            names.update(a.asname or a.name for a in node.names)
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    ours = _pynetdicom_names(tree)
    rel = path.relative_to(ROOT)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pynetdicom":
            if any(_private(part) for part in (node.module or "").split(".")):
                out.append(f"{rel}:{node.lineno} imports private module {node.module}")
            out += [
                f"{rel}:{node.lineno} imports {a.name} from {node.module}"
                for a in node.names
                if _private(a.name)
            ]
        elif isinstance(node, ast.Import):
            out += [
                f"{rel}:{node.lineno} imports {a.name}"
                for a in node.names
                if a.name.startswith("pynetdicom") and any(map(_private, a.name.split(".")))
            ]
        elif isinstance(node, ast.Attribute):
            root = node.value
            while isinstance(root, ast.Attribute | ast.Call | ast.Subscript):
                root = root.value if not isinstance(root, ast.Call) else root.func
            rooted = isinstance(root, ast.Name) and root.id in ours
            if rooted and _private(node.attr):
                out.append(f"{rel}:{node.lineno} touches {ast.unparse(node)}")
            if rooted and isinstance(node.ctx, ast.Store):
                out.append(f"{rel}:{node.lineno} assigns {ast.unparse(node)} (monkeypatch)")
    return out


def test_no_module_of_the_edge_touches_a_private_pynetdicom_name() -> None:
    files = sorted(EDGE.rglob("*.py"))
    assert len(files) > 40
    violations = [v for f in files for v in _violations(f)]
    assert not violations, "\n".join(violations)


def test_the_checker_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The AST check itself can fail: each kind of access is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from pynetdicom import _config, evt\n"
        "from pynetdicom.dimse_messages import C_STORE_RQ\n"
        "import pynetdicom.dul\n"
        "_config.STORE_RECV_CHUNKED_DATASET = True\n"
        "pynetdicom.dul.DULServiceProvider._run_loop_delay = 0\n"
        "evt.EVT_C_STORE._x\n"
        "C_STORE_RQ().command_set._dict\n"
    )
    found = _violations_at(bad)
    assert {int(v.split(":")[1].split()[0]) for v in found} == {1, 4, 5, 6, 7}, found


def _violations_at(path: Path) -> list[str]:
    global ROOT
    saved, ROOT = ROOT, path.parent
    try:
        return _violations(path)
    finally:
        ROOT = saved


def test_git_grep_finds_no_private_access() -> None:
    """The issue's own check: `git grep -n "\\._[a-z]" -- edge/ | grep -i pynetdicom`."""
    r = subprocess.run(
        ["git", "grep", "-n", r"\._[a-z]", "--", "edge/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    hits = [line for line in r.stdout.splitlines() if re.search("pynetdicom", line, re.I)]
    assert not hits, hits


def test_pynetdicom_is_pinned() -> None:
    import pynetdicom

    pin = re.search(r'"pynetdicom==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin is not None, "pyproject.toml must pin pynetdicom exactly"
    assert pin.group(1) == pynetdicom.__version__
