"""Config validation names the key; the example config documents every key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest

from shared.config import Config, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "hpacs.example.toml"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"edge": {"port": 70000}}, "edge.port: must be 1-65535, got 70000"),
        (
            {"edge": {"tls": {"port": -1}}},
            "edge.tls.port: must be 1-65535, got -1 (or 0 to disable)",
        ),
        ({"edge": {"ae_title": "A" * 17}}, "edge.ae_title: not a valid AE title"),
        ({"edge": {"duplicates": "merge"}}, "edge.duplicates: must be one of keep, replace"),
        ({"edge": {"max_associations": 0}}, "edge.max_associations: must be > 0, got 0"),
        ({"edge": {"check_called_ae": "yes"}}, "edge.check_called_ae: must be true or false"),
        ({"edge": {"port": "11112"}}, "edge.port: must be an integer"),
        ({"edge": {"port": True}}, "edge.port: must be an integer"),
        ({"edge": {"min_free_bytes": -1}}, "edge.min_free_bytes: must be >= 0, got -1"),
        ({"sync": {"scrub_bytes_per_s": -1}}, "sync.scrub_bytes_per_s: must be >= 0, got -1"),
        ({"sync": {"scrub_bytes_per_s": 1.5}}, "sync.scrub_bytes_per_s: must be an integer"),
        ({"edge": {"log_level": "TRACE"}}, "edge.log_level: must be one of"),
        ({"edge": {"tls": "on"}}, "edge.tls: must be a table"),
        ({"edge": {"prot": 104}}, "edge.prot: unknown key"),
        ({"edge": {"tls": {"certfile": "x"}}}, "edge.tls.certfile: unknown key"),
        ({"egde": {}}, "egde: unknown key"),
        ({"nodes": [{"ae_title": "CT01", "host": "h"}]}, "nodes[0].port: required"),
        (
            {"nodes": [{"ae_title": "CT01", "host": "h", "port": 104, "colour": "red"}]},
            "nodes[0].colour: unknown key",
        ),
        (
            {"nodes": [{"ae_title": "CT01", "host": "h", "port": 104, "permissions": ["write"]}]},
            "nodes[0].permissions: unknown permission(s) ['write']",
        ),
        (
            {
                "nodes": [
                    {"ae_title": "CT01", "host": "h", "port": 104},
                    {"ae_title": "CT01", "host": "h", "port": 105},
                ]
            },
            "nodes[1].ae_title: duplicate AE title 'CT01'",
        ),
        ({"routes": [{"name": "r"}, {"name": "r"}]}, "routes[1].name: duplicate route name 'r'"),
        ({"routes": [{"name": "r", "study_description": "("}]}, "routes[0].study_description:"),
        ({"edge": {"tls": {"cert_file": "c.pem"}}}, "edge.tls: cert_file and key_file"),
        (
            {"edge": {"tls": {"require_client_cert": True}}},
            "edge.tls.require_client_cert: needs edge.tls.ca_file",
        ),
        ({"sync": {"upload_timeout_s": 0}}, "sync.upload_timeout_s: must be > 0, got 0"),
        ({"cloud": {"port": 0}}, "cloud.port: must be 1-65535, got 0"),
    ],
)
def test_invalid_config_names_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(err.value).startswith(message), str(err.value)


def test_defaults_are_valid() -> None:
    cfg = parse_config({})
    assert cfg.edge.port == 11112
    assert cfg.edge.tls.port == 2762
    assert cfg.edge.duplicates == "keep"


def test_auto_acceptors_is_one_process_without_a_dimse_port() -> None:
    """An HTTP-only edge (both DIMSE ports 0) has no port to share: "auto" must not ask for
    several acceptor processes, which would refuse to start."""
    off = parse_config({"edge": {"port": 0, "tls": {"port": 0}}})
    assert off.edge.acceptor_count == 1
    on = parse_config({"edge": {"port": 11112}})
    assert on.edge.acceptor_count >= 1
    assert parse_config({"edge": {"port": 0, "acceptors": 3}}).edge.acceptor_count == 3


def test_ints_accepted_for_floats_and_config_is_frozen() -> None:
    cfg = parse_config({"edge": {"dimse_timeout_s": 5}})
    assert cfg.edge.dimse_timeout_s == 5.0
    assert isinstance(cfg.edge.dimse_timeout_s, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.edge.port = 1  # type: ignore[misc]


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[edge\nport = 1\n")
    with pytest.raises(ConfigError, match=r"^config: .* is not valid TOML"):
        load_config(bad)
    out_of_range = tmp_path / "range.toml"
    out_of_range.write_text("[edge]\nport = 70000\n")
    with pytest.raises(ConfigError, match=r"^edge\.port: must be 1-65535, got 70000"):
        load_config(out_of_range)


def test_dev_and_example_configs_load() -> None:
    for name in ("hpacs.dev.toml", "hpacs.example.toml"):
        cfg = load_config(ROOT / "deploy" / name)
        assert cfg.source_path.endswith(name)


def _keys(prefix: str, cls: Any) -> set[str]:
    """Every dotted key of a config dataclass; list items are written `name[]`."""
    out: set[str] = set()
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source_path":
            continue
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out |= _keys(f"{key}.", tp)
        elif get_origin(tp) is list and dataclasses.is_dataclass(get_args(tp)[0]):
            out |= _keys(f"{key}[].", get_args(tp)[0])
        else:
            out.add(key)
    return out


def _present(prefix: str, data: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            out |= _present(f"{key}.", value)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                out |= _present(f"{key}[].", item)
        else:
            out.add(key)
    return out


def test_example_config_documents_every_key() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    missing = sorted(_keys("", Config) - _present("", data))
    assert not missing, f"add these keys, commented, to deploy/hpacs.example.toml: {missing}"


def test_example_config_comments_every_key() -> None:
    """Every key line carries a comment, or the entry it repeats was commented above it."""
    commented: set[str] = set()
    for line in EXAMPLE.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("["):
            continue
        key = s.split("=", 1)[0].strip()
        if "#" in s.split("=", 1)[1]:
            commented.add(key)
    leaves = {k.rsplit(".", 1)[-1] for k in _keys("", Config)}
    assert leaves <= commented, sorted(leaves - commented)
