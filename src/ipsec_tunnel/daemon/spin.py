"""The data plane's bounded busy polling (`ipsecd --spin-us`) and what it tells the handlers.

After a loop turn that served something, the loop keeps polling without sleeping for a budget of
microseconds: what arrives within it is taken without a wake-up. Past the budget the loop sleeps in
`epoll_wait` again. The first turn after the loop found nothing to do is a *woken* turn: the sources
read once and leave the rest (level-triggered epoll reports it in the next turn), which spares an idle
packet the read that would only have said "nothing more".
"""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_SPIN_US = 100_000  # --spin-us upper bound: a tenth of a second of polling per burst at most
SLEEP = 0.5  # longest sleep in epoll_wait (seconds): the once-a-second work is never later than this


class Spin:
    """When the loop may sleep: `timeout` before each poll, `turn` after it (`clock` is monotonic)."""

    def __init__(self, budget: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= budget <= MAX_SPIN_US / 1e6:
            raise ValueError(f"spin budget out of range: {budget!r} s")
        self.budget = budget
        self.clock = clock
        self.until = 0.0  # polling without sleep goes on until this reading of `clock`
        self.idle = True  # the last poll found nothing ready: the next ready source wakes the loop

    def spinning(self) -> bool:
        """Whether the budget of the last busy turn still runs."""
        return self.budget > 0 and self.clock() < self.until

    def timeout(self, longest: float = SLEEP) -> float:
        """How long the next poll may wait: 0 while spinning, else `longest`."""
        return 0.0 if self.spinning() else longest

    def turn(self, served: int) -> None:
        """Note a poll's outcome: `served` ready sources restart the budget."""
        if served:
            self.until = self.clock() + self.budget
        self.idle = not served
