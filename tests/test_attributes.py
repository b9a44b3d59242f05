"""The attribute registry is the one definition: the header, the edge schema, C-FIND, QIDO and
both catalog schemas agree with it."""

from __future__ import annotations

import sqlite3
from dataclasses import fields
from pathlib import Path

from cloud_api.catalog import schema
from cloud_api.catalog.search import MATCHABLE
from edge import query
from shared import attributes
from shared.dicom import Header
from shared.index import NORMALISED, Database


def test_header_fields_are_the_registry_columns() -> None:
    stored = {a.column for a in attributes.STORED}
    assert {f.name for f in fields(Header)} == stored | {"transfer_syntax"}


def test_every_attribute_has_its_dictionary_tag_and_vr() -> None:
    for a in attributes.REGISTRY:
        assert a.kind in attributes.KINDS and a.level in attributes.LEVELS
        assert a.tag > 0 and len(a.vr) == 2, a.keyword
        assert attributes.BY_TAG[a.tag] is a


def test_edge_schema_has_every_stored_column(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    try:
        conn = db.reader()
        for table in ("studies", "series", "instances"):
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            assert set(attributes.columns(table)) <= have, table
        norms = {a.norm_column for a in attributes.STORED if a.keyword in NORMALISED}
        assert norms <= {r[1] for r in conn.execute("PRAGMA table_info(studies)")}
    finally:
        db.close()


def test_cfind_and_qido_answer_every_registry_attribute() -> None:
    assert set(query.ATTRS) == {a.keyword for a in attributes.REGISTRY} - {"SpecificCharacterSet"}
    matchable = {a.keyword for a in attributes.REGISTRY if a.match and a.stored}
    assert matchable <= MATCHABLE["INSTANCE"]


def test_cloud_schema_is_generated_from_the_registry() -> None:
    conn = sqlite3.connect(":memory:")
    for stmt in schema.ddl("sqlite"):
        conn.execute(stmt)
    for table in ("studies", "series", "instances"):
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        assert set(schema.attr_columns(table)) <= have, table
    indexed = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    for a in attributes.STORED:
        if a.index and a.column != "study_date":
            assert f"{a.table}_{a.norm_column if a.ci else a.column}" in indexed
