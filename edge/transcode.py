"""Transfer-syntax conversion for the edge's senders: the rules live in `shared.transcode`.

They moved there so that WADO-RS (edge and cloud) and DIMSE retrieve decide alike; this module
keeps the edge's import path.
"""

from __future__ import annotations

from shared.transcode import (
    LOSSLESS_ENCODE_TARGETS,
    UNCOMPRESSED_TARGETS,
    Plan,
    can_decode,
    can_encode,
    choose,
    convert,
    is_uncompressed,
    ts_name,
)

__all__ = [
    "LOSSLESS_ENCODE_TARGETS",
    "UNCOMPRESSED_TARGETS",
    "Plan",
    "can_decode",
    "can_encode",
    "choose",
    "convert",
    "is_uncompressed",
    "ts_name",
]
