"""Failed sign-ins counted per user name and per client address: a pure rule, time passed in.

Beyond `max_per_user` failures for one name, or `max_per_client` from one address, within
`window_s`, further attempts are refused without checking the password until the oldest
failure leaves the window: guessing one account's password, or many accounts' from one
address, slows to a handful per window. A success clears the name's count (not the
address's: one good password does not buy more guesses at others). At most `max_keys` names
and addresses are tracked; the oldest are forgotten first, so memory stays bounded under a
flood of random names.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque


class LoginThrottle:
    def __init__(
        self,
        *,
        max_per_user: int = 5,
        max_per_client: int = 20,
        window_s: float = 900.0,
        max_keys: int = 10_000,
    ) -> None:
        self.max_per_user = max_per_user
        self.max_per_client = max_per_client
        self.window_s = window_s
        self.max_keys = max_keys
        self._fails: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._fails.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._fails[key]
        return q

    def wait_s(self, user: str, client: str, now: float) -> float:
        """0 when an attempt may be checked; else seconds until it may."""
        waits = []
        with self._lock:
            for key, limit in (
                (("u", user), self.max_per_user),
                (("c", client), self.max_per_client),
            ):
                q = self._recent(key, now)
                if len(q) >= limit:
                    waits.append(q[len(q) - limit] + self.window_s - now)
        return max(waits, default=0.0)

    def failed(self, user: str, client: str, now: float) -> None:
        with self._lock:
            for key in (("u", user), ("c", client)):
                q = self._fails.pop(key, None) or deque()
                q.append(now)
                self._fails[key] = q  # most recent last: the oldest are forgotten first
            while len(self._fails) > self.max_keys:
                self._fails.popitem(last=False)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._fails.pop(("u", user), None)
