"""Retry delays for the upload loop: capped exponential backoff with full jitter (pure).

The delay lands in the row (`next_attempt_at`), so a restart keeps each instance's schedule
(invariant 6). Full jitter spreads a backlog's retries after an outage instead of sending them
all at once when the store comes back.
"""

from __future__ import annotations

import random


def retry_delay(
    attempt: int, initial_s: float, cap_s: float, rand: random.Random | None = None
) -> float:
    """Seconds to wait after the `attempt`-th failed attempt (1-based): U(0.5, 1) x capped exp."""
    ceiling = min(cap_s, initial_s * 2 ** max(0, attempt - 1))
    r = (rand or random).random()
    return ceiling * (0.5 + 0.5 * r)
