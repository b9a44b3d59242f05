"""Local console accounts of the edge: names, roles, argon2id password hashes (table `users`).

argon2-cffi is imported here only. A hash is verified on login, never on each request: the
session cookie carries the user name and the row's `epoch`, which moves on every password
change and on removal, so those end the user's sessions at once (edge/webauth.py).

Roles: `admin` (everything), `technician` (studies, routing, corrections; no user or node
administration), `viewer` (the study browser and the viewer only). Who may do what per route
is the route table's business (edge/http.py), not this module's.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from shared.errors import Conflict, InvalidField, NotFound

ROLES = ("admin", "technician", "viewer")
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (the library's default)
# Verified when the name is unknown, so a miss costs what a wrong password costs.
_DUMMY = _hasher.hash("hpacs-no-such-user")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    epoch: int
    created_at: float
    updated_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidField("name", "1-64 characters: letters, digits and . _ @ - (not first)")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidField("role", f"must be one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise InvalidField("password", f"at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidField("password", f"at most {MAX_PASSWORD_CHARS} characters")
    return password


def _row(r: sqlite3.Row) -> User:
    return User(r["name"], r["role"], r["epoch"], r["created_at"], r["updated_at"])


def add_user(conn: sqlite3.Connection, name: str, role: str, password: str) -> User:
    check_name(name)
    check_role(role)
    digest = _hasher.hash(check_password(password))
    now = time.time()
    try:
        conn.execute(
            "INSERT INTO users(name, role, password_hash, epoch, created_at, updated_at) "
            "VALUES (?,?,?,1,?,?)",
            (name, role, digest, now, now),
        )
    except sqlite3.IntegrityError as exc:
        raise Conflict(f"a user named {name!r} exists") from exc
    return User(name, role, 1, now, now)


def get_user(conn: sqlite3.Connection, name: str) -> User | None:
    r = conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
    return _row(r) if r else None


def list_users(conn: sqlite3.Connection) -> list[User]:
    return [_row(r) for r in conn.execute("SELECT * FROM users ORDER BY name")]


def remove_user(conn: sqlite3.Connection, name: str) -> None:
    if conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount != 1:
        raise NotFound(f"no user {name!r}")


def set_password(conn: sqlite3.Connection, name: str, password: str) -> None:
    """A new hash and a new epoch: every session of the user ends."""
    digest = _hasher.hash(check_password(password))
    cur = conn.execute(
        "UPDATE users SET password_hash = ?, epoch = epoch + 1, updated_at = ? WHERE name = ?",
        (digest, time.time(), name),
    )
    if cur.rowcount != 1:
        raise NotFound(f"no user {name!r}")


def set_role(conn: sqlite3.Connection, name: str, role: str) -> None:
    """A role change also moves the epoch: sessions carry no role, but a fresh start is clearer."""
    cur = conn.execute(
        "UPDATE users SET role = ?, epoch = epoch + 1, updated_at = ? WHERE name = ?",
        (check_role(role), time.time(), name),
    )
    if cur.rowcount != 1:
        raise NotFound(f"no user {name!r}")


def verify_password(conn: sqlite3.Connection, name: str, password: str) -> User | None:
    """The user when the password is right; None otherwise (unknown names cost the same)."""
    r = conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
    digest = r["password_hash"] if r else _DUMMY
    try:
        _hasher.verify(digest, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    return _row(r) if r else None


def admins(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM users WHERE role = 'admin'").fetchone()[0])
