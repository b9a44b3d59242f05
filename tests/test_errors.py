"""Every domain error renders once per protocol, from the two tables in shared/errors.py."""

from __future__ import annotations

import errno

import pytest

from shared import errors
from shared.errors import DIMSE_STATUS, HTTP_STATUS, PacsError


def _subclasses(cls: type[PacsError]) -> set[type[PacsError]]:
    out: set[type[PacsError]] = set()
    for sub in cls.__subclasses__():
        out.add(sub)
        out |= _subclasses(sub)
    return out


def _concrete() -> list[type[PacsError]]:
    # Import the packages that may define their own PacsError subclasses.
    import importlib
    import pkgutil

    for pkg in ("shared", "edge", "sync", "cloud_api"):
        try:
            mod = importlib.import_module(pkg)
        except ImportError:
            continue
        for info in pkgutil.walk_packages(mod.__path__, f"{pkg}."):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue  # importing it runs the program
            try:
                importlib.import_module(info.name)
            except (Exception, SystemExit):  # a broken module fails its own tests
                continue
    return sorted(_subclasses(PacsError), key=lambda c: c.__qualname__)


@pytest.mark.parametrize("cls", _concrete(), ids=lambda c: c.__qualname__)
def test_every_error_class_is_in_both_tables(cls: type[PacsError]) -> None:
    assert cls in DIMSE_STATUS, f"{cls.__module__}.{cls.__qualname__} missing from DIMSE_STATUS"
    assert cls in HTTP_STATUS, f"{cls.__module__}.{cls.__qualname__} missing from HTTP_STATUS"


@pytest.mark.parametrize(
    ("err", "dimse", "http"),
    [
        (errors.InvalidUID("x"), 0xA900, 400),
        (errors.UIDMismatch("x"), 0xA900, 409),
        (errors.InvalidDataset("x"), 0xC000, 400),
        (errors.OutOfResources("x"), 0xA700, 507),
        (errors.IndexUnavailable("x"), 0xA700, 503),
        (errors.DuplicateConflict("x"), 0x0111, 409),
        (errors.NotAuthorized("x"), 0x0124, 403),
        (errors.TransientStoreError("x"), 0xC001, 503),
        (OSError(errno.ENOSPC, "No space left on device"), 0xA700, 500),
        (RuntimeError("boom"), 0xC001, 500),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else hex(v),
)
def test_status_tables(err: BaseException, dimse: int, http: int) -> None:
    assert errors.dimse_status(err) == dimse
    assert errors.http_status(err) == http


def test_dimse_status_families() -> None:
    # The families the issue names: 0xA9xx for bad identifiers, 0xCxxx for unparseable data.
    assert errors.dimse_status(errors.InvalidUID("x")) & 0xFF00 == 0xA900
    assert errors.dimse_status(errors.InvalidDataset("x")) & 0xF000 == 0xC000


def test_problem_json_never_carries_the_hint() -> None:
    err = errors.OutOfResources("disk full", hint="free space on /srv")
    body = errors.problem_json(err)
    assert body == {
        "type": "about:blank",
        "title": "OutOfResources",
        "status": 507,
        "detail": "disk full",
    }
    assert errors.problem_json(ValueError("secret"))["detail"] == "internal error"
