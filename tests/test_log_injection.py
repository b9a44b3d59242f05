"""UIDs are matched whole, and no value ever writes a raw CR, LF or NUL into a log (defect 4).

The end-to-end case runs `hpacs-edge serve` as a process with its real logging set-up and
sends it C-STOREs (pynetdicom) and an association (DCMTK echoscu) carrying CR, LF and NUL in
UIDs and AE titles; every line of its log must then be a record of ours or an indented
continuation of a traceback.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import _config

from shared.dicom import read_header
from shared.errors import (
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    BadRequest,
    InvalidUID,
)
from shared.index import connect
from shared.keys import check_site
from shared.logs import SafeFormatter, escape
from shared.restore import check_restore_id
from shared.synthetic import StudySpec, iter_study
from shared.uids import is_valid_ae_title, is_valid_uid
from tests.support.edge import (
    association,
    edge_config,
    encoded_dataset,
    part10_with_raw_dataset,
    write_toml,
)
from tests.support.edgeproc import edge_process

RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} edge (DEBUG|INFO|WARNING|ERROR) ")
FORGED = "2099-01-01 00:00:00,000 edge INFO hpacs.edge: FORGED"


@pytest.mark.parametrize("bad", ["1.2.3\n", "1.2.3\r", "1.2.3\n\n", "\n1.2.3", "1.2.3 ", "1.2\n.3"])
def test_uid_is_matched_whole(bad: str) -> None:
    assert is_valid_uid("1.2.3") and not is_valid_uid(bad)


def test_ae_site_and_restore_id_are_matched_whole() -> None:
    assert is_valid_ae_title("CT01") and not is_valid_ae_title("CT01\n")
    assert check_site("site-a") == "site-a"
    with pytest.raises(BadRequest):
        check_site("site-a\n")
    assert check_restore_id("20261206T000000Z-ab12") == "20261206T000000Z-ab12"
    with pytest.raises(BadRequest):
        check_restore_id("20261206T000000Z-ab12\n")


def _with_raw_uid(ds: pydicom.Dataset, raw: bytes) -> bytes:
    """The dataset's bytes with SOP Instance UID replaced by `raw` (pydicom would strip it)."""
    data = encoded_dataset(ds)
    value = str(ds.SOPInstanceUID).encode()
    value += b"\0" * (len(value) % 2)
    old = b"\x08\x00\x18\x00UI" + struct.pack("<H", len(value)) + value
    raw += b"\0" * (len(raw) % 2)
    assert old in data
    return data.replace(old, b"\x08\x00\x18\x00UI" + struct.pack("<H", len(raw)) + raw)


@pytest.mark.parametrize("charset", ["", "ISO 2022 IR 6"])  # fast and pydicom paths
def test_dataset_uid_with_a_trailing_newline_is_refused(tmp_path: Path, charset: str) -> None:
    ds = next(iter_study(StudySpec(instances_per_series=1, specific_character_set=charset)))
    uid = str(ds.SOPInstanceUID)
    path = part10_with_raw_dataset(tmp_path / "x.dcm", _with_raw_uid(ds, uid.encode() + b"\n"))
    with pytest.raises(InvalidUID, match=r"\\n"):
        read_header(path)


def test_safe_formatter_escapes_values_and_indents_tracebacks() -> None:
    assert escape("a\nb\rc\x00d\x1be\u2028f\tg") == "a\\nb\\rc\\x00d\\x1be\\u2028f\\tg"
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(SafeFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("test.safe")
    log.addHandler(handler)
    try:
        log.warning("uid=%s ae=%s", "1.2\n" + FORGED, "A\r\x00B")
        try:
            raise ValueError("bad value\n" + FORGED)
        except ValueError:
            log.exception("failed path=%s", "x\ny")
    finally:
        log.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[0] == "WARNING uid=1.2\\n" + FORGED + " ae=A\\r\\x00B"
    assert lines[1] == "ERROR failed path=x\\ny"
    assert all(line.startswith("  | ") for line in lines[2:]), lines
    assert "\r" not in out.getvalue() and "\0" not in out.getvalue()


def _store(port: int, path: Path) -> int:
    with association(port) as a:
        assert a.is_established
        _config.STORE_SEND_CHUNKED_DATASET = True  # bytes after the File Meta go out unparsed
        try:
            return int(a.send_c_store(path).Status)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False


def test_cstore_with_control_characters_in_uids_forges_no_log_line(tmp_path: Path) -> None:
    data = edge_config(tmp_path)
    config = write_toml(tmp_path / "hpacs.toml", data)
    log = tmp_path / "edge.log"
    port = data["edge"]["port"]
    ds = next(iter_study(StudySpec(instances_per_series=1)))
    uid, cls = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    trailing = part10_with_raw_dataset(
        tmp_path / "trailing.dcm",
        _with_raw_uid(ds, uid.encode() + b"\n"),
        sop_class_uid=cls,
        sop_instance_uid=uid,  # what the file would have been stored under
    )
    embedded = part10_with_raw_dataset(
        tmp_path / "embedded.dcm",
        _with_raw_uid(ds, b"1.2\n" + FORGED[:40].encode()),
        sop_class_uid=cls,
        sop_instance_uid="1.2\r\n" + FORGED[:40] + "\x00",  # command: CR, LF, NUL
    )
    with edge_process(config, log):
        assert _store(port, trailing) == DATASET_DOES_NOT_MATCH_SOP_CLASS
        assert _store(port, embedded) == DATASET_DOES_NOT_MATCH_SOP_CLASS
        aet = subprocess.run(
            ["echoscu", "-aet", "EVIL\n" + FORGED[:10], "-aec", "HPACS", "127.0.0.1", str(port)],
            capture_output=True,
            timeout=30,
        )
        assert aet.returncode != 0  # refused before any service
    db = connect(Path(data["edge"]["data_dir"]) / "index.sqlite")
    assert db.execute("SELECT count(*) FROM instances").fetchone()[0] == 0
    db.close()
    raw = log.read_bytes()
    assert b"\r" not in raw and b"\0" not in raw
    text = raw.decode()
    for line in text.splitlines():
        assert RECORD.match(line) or line.startswith("  | "), f"forged line: {line!r}"
    assert "store failed" in text and "1.2\\n" in text  # the value is there, escaped
    assert "EVIL\\n" in text
