"""The daemon's clock: wall-clock time at start-up, advanced by the monotonic clock.

Lifetimes in seconds and the ICMP rate limit run on it, so a step of the system clock (NTP, `date -s`)
neither expires nor revives an SA while ipsecd runs. Its readings still look like wall-clock time, so
an SA's `created` can be stored and compared with the next run's clock after a restart (the one place
where the wall clock must count).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SteadyClock:
    """A callable clock: `wall()` once at creation, then only `monotonic()` moves it."""

    def __init__(
        self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._monotonic = monotonic
        self._offset = wall() - monotonic()

    def __call__(self) -> float:
        return self._offset + self._monotonic()


steady = SteadyClock()
"""The one clock of the daemon process: the manager's and the data plane's default."""
