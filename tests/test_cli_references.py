"""Every CLI command named in a doc or a message exists.

An admin follows what the docs and the log say: a log line that pointed to `hpacs-sync recall`
(no such command) sent them nowhere. Sources scanned: code spans and code blocks of README.md,
docs/*.md and bench/README.md; backtick spans in every Python string (log and error messages,
hints, help texts, docstrings) of the packages, deploy/ and bench/; the command lines of the
Procfile, the systemd units and the Kubernetes manifests. Each `hpacs-xxx verb [subverb]` is
parsed by the real argparse parser of that entry point, built in-process.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud_api.cli import build_parser as cloud_parser
from edge.cli import build_parser as edge_parser
from sync.cli import build_parser as sync_parser

ROOT = Path(__file__).resolve().parents[1]
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "hpacs-edge": edge_parser,
    "hpacs-sync": sync_parser,
    "hpacs-cloud": cloud_parser,
}
PROGRAM = re.compile(r"^(?:\S*/)?(hpacs-(?:edge|sync|cloud))$")
WORD = re.compile(r"^[a-z][a-z-]*$")
OPTION = re.compile(r"^--[a-z][a-z-]*$")
GLOBAL_OPTIONS_WITH_VALUE = {"--config", "-c"}


def _markdown_code(text: str) -> Iterator[str]:
    """Code spans, fenced blocks and indented blocks, line by line."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            yield line
        yield from re.findall(r"`([^`]+)`", line)


def _python_spans(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield from re.findall(r"`([^`]+)`", node.value)


def _deploy_lines(path: Path) -> Iterator[str]:
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("ExecStart="):
            yield line.removeprefix("ExecStart=")
        elif line.startswith("command:") and "[" in line:  # a YAML flow list of arguments
            items = re.findall(r'"([^"]*)"', line)
            yield " ".join(shlex.quote(i) for i in items)
        elif path.name == "Procfile" and ":" in line and not line.startswith("#"):
            yield line.split(":", 1)[1]


def sources() -> Iterator[tuple[str, str]]:
    """(where, text) of every place a command may be named."""
    for md in [ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")]:
        for text in _markdown_code(md.read_text()):
            yield str(md.relative_to(ROOT)), text
    for package in ("edge", "shared", "sync", "cloud_api", "deploy", "bench"):
        for py in sorted((ROOT / package).rglob("*.py")):
            for text in _python_spans(py):
                yield str(py.relative_to(ROOT)), text
    deploy = ROOT / "deploy"
    for f in [deploy / "Procfile", *deploy.glob("systemd/*"), *deploy.glob("k8s/*.yaml")]:
        for text in _deploy_lines(f):
            yield str(f.relative_to(ROOT)), text


def commands(text: str) -> Iterator[tuple[str, list[str]]]:
    """(program, [verb, subverb?]) for each command at a command position in `text`."""
    for program, words, _ in invocations(text):
        if words:
            yield program, words


def invocations(text: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """(program, [verb, subverb?], [--options]) for each command in `text`."""
    for segment in re.split(r"&&|\|\||;|\s\|\s", text):  # a|b (alternatives) stays whole
        try:
            tokens = shlex.split(segment, comments=True)
        except ValueError:
            tokens = segment.split()
        while tokens and (tokens[0] in ("sudo", "exec", "$") or "=" in tokens[0]):
            if tokens.pop(0) == "sudo":  # and its options: sudo -u hpacs ...
                while tokens and tokens[0].startswith("-"):
                    if tokens.pop(0) in ("-u", "-g") and tokens:
                        tokens.pop(0)
        m = PROGRAM.match(tokens[0]) if tokens else None
        if m is None:
            continue
        words: list[str] = []
        rest = iter(tokens[1:])
        for tok in rest:
            if tok in GLOBAL_OPTIONS_WITH_VALUE and not words:
                next(rest, None)
                continue
            if tok.startswith("-"):
                continue
            if not all(WORD.match(alt) for alt in tok.split("|")) or len(words) == 2:
                break  # a placeholder (PATH, <uid>, ...) or an argument
            words.append(tok)
        options = [t.split("=", 1)[0] for t in tokens[1:] if OPTION.match(t.split("=", 1)[0])]
        yield m.group(1), words, options


def _invalid_choice(program: str, words: list[str]) -> str:
    """argparse's complaint about a verb or subverb, "" when both are known."""
    parser = PARSERS[program]()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        parser.parse_known_args(["--config", "x.toml", *words])
    return err.getvalue() if "invalid choice" in err.getvalue() else ""


def _known_options(program: str, words: list[str]) -> set[str]:
    """The option strings of the program and of each (sub)command named by `words`."""
    parser = PARSERS[program]()
    known: set[str] = set()
    for word in [*words, None]:
        subparsers = None
        for action in parser._actions:
            known.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                subparsers = action
        if word is None or subparsers is None or word not in subparsers.choices:
            break
        parser = subparsers.choices[word]
    return known


def _expanded(words: list[str]) -> Iterator[list[str]]:
    """`nodes add|remove` -> `nodes add`, `nodes remove`."""
    heads = words[0].split("|")
    tails = words[1].split("|") if len(words) > 1 else [None]
    for h in heads:
        for t in tails:
            yield [h] if t is None else [h, t]


def test_the_scan_finds_commands_in_every_kind_of_source() -> None:
    """The scan itself must see commands (docs, messages, deploy files), or it proves nothing."""
    found = {(where, prog, " ".join(w)) for where, text in sources() for prog, w in commands(text)}
    wheres = {where for where, _, _ in found}
    assert any(w.startswith("docs/") for w in wheres)
    assert "README.md" in wheres
    assert "shared/errors.py" in wheres  # hints: `hpacs-edge nodes add ...`
    assert "deploy/Procfile" in wheres
    assert any(w.startswith("deploy/systemd/") for w in wheres)
    assert ("deploy/k8s/deployment.yaml", "hpacs-cloud", "serve") in found
    assert len(found) > 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hpacs-edge --config /etc/hpacs/hpacs.toml nodes add CT01 10.0.0.1 104", ["nodes", "add"]),
        (".venv/bin/hpacs-sync --config {config} run", ["run"]),
        ("hpacs-edge import PATH", ["import"]),
        ("sudo -u hpacs hpacs-sync status", ["status"]),
        ("systemctl enable --now hpacs-edge hpacs-sync", []),
        ("hpacs-cloud token create|revoke", ["token", "create|revoke"]),
    ],
)
def test_command_extraction(text: str, expected: list[str]) -> None:
    got = [w for _, w in commands(text)]
    assert got == ([expected] if expected else [])


def test_an_unknown_verb_or_subverb_is_caught() -> None:
    assert _invalid_choice("hpacs-sync", ["recall"])
    assert _invalid_choice("hpacs-edge", ["nodes", "purge"])
    assert not _invalid_choice("hpacs-edge", ["nodes", "add"])
    assert not _invalid_choice("hpacs-edge", ["import"])


def test_every_cli_command_named_in_a_doc_or_message_exists() -> None:
    unknown = []
    for where, text in sources():
        for program, words in commands(text):
            for variant in _expanded(words):
                err = _invalid_choice(program, variant)
                if err:
                    unknown.append(f"{where}: {program} {' '.join(variant)}")
    assert unknown == []


def test_every_option_named_in_a_doc_or_message_exists() -> None:
    """`--reason`, `--override`, `--dry-run`...: each option in a documented command line is
    one its (sub)command's parser knows (an admin copying a line must not get 'unrecognized')."""
    unknown = []
    for where, text in sources():
        for program, words, options in invocations(text):
            for variant in _expanded(words) if words else [[]]:
                known = _known_options(program, variant)
                unknown += [
                    f"{where}: {program} {' '.join(variant)} {o}" for o in options if o not in known
                ]
    assert unknown == []


def test_an_unknown_option_is_caught() -> None:
    assert "--reason" in _known_options("hpacs-edge", ["studies", "delete"])
    assert "--config" in _known_options("hpacs-edge", ["studies", "delete"])
    assert "--no-such-flag" not in _known_options("hpacs-edge", ["studies", "delete"])
