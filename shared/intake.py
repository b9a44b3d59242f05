"""What every door does with an object before storing it: the acceptance rule and the indexed
header, from one pass over its bytes.

Why: the acceptance scan (shared/acceptance.py) already walks every element header of the
object; the header the index needs (~25 top-level elements) is taken on the same walk instead
of a second one (shared/headerwalk.py) or pydicom. The elements are decoded by the same
function as the header walk's (`shared.dicom.header_from_raw`), which answers only when the
result is certain to equal pydicom's; anything else (big endian, deflated, a transfer syntax
pydicom does not know, tags out of order, non-ASCII values or character sets) is read by
pydicom from the file, as before. tests/test_intake.py compares with pydicom on pydicom's own
test files and on synthetic objects in every syntax.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.uid import AllTransferSyntaxes

from shared.acceptance import DEFLATED_LE, EXPLICIT_BE, Accepted, check_buffer
from shared.dicom import WANTED_TAGS, Header, header_from_raw, pydicom_header
from shared.mapped import buffer, buffer_fd

# Syntaxes whose dataset is little endian, read in place (explicit VR LE for every
# encapsulated one): the raw values are what pydicom decodes.
RAW_HEADER_SYNTAXES = frozenset(
    str(ts) for ts in AllTransferSyntaxes if ts not in (EXPLICIT_BE, DEFLATED_LE)
)


def accept(source: str | os.PathLike[str], fd: int | None = None) -> Accepted:
    """The acceptance rule over a file (read through `fd` when the caller holds it open),
    with the header's elements collected on the same pass; raises `InvalidDataset`."""
    if fd is not None:
        with buffer_fd(fd) as (buf, size):
            return _check(buf, size)
    with buffer(source) as (buf, size):
        return _check(buf, size)


def _check(buf: object, size: int) -> Accepted:
    return check_buffer(buf, size, WANTED_TAGS)


def header(accepted: Accepted, path: str | Path) -> Header:
    """The indexed header of an accepted object: from its collected elements when certain,
    else pydicom reads the (Part-10) file at `path`; raises InvalidDataset / InvalidUID."""
    raw = accepted.elements
    if raw is not None and accepted.transfer_syntax in RAW_HEADER_SYNTAXES:
        got = header_from_raw(accepted.transfer_syntax, raw)
        if got is not None:
            return got
    return pydicom_header(path)


__all__ = ["RAW_HEADER_SYNTAXES", "accept", "header"]
