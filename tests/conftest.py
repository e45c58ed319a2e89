"""Options shared by the whole suite; an ordinary user's session runs as root of a user namespace."""

from __future__ import annotations

import signal
from types import FrameType

import pytest

from tests.support import userns


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--run-soak` runs the long robustness tests (`make soak`)."""
    parser.addoption("--run-soak", action="store_true", default=False, help="run the soak tests (make soak)")


# Without root, the session moves into an unprivileged user namespace (tests/support/userns.py) so the
# real-kernel tests run; where that cannot be done they skip, saying why. This happens on import, the
# first thing pytest does with the suite: unshare(CLONE_NEWUSER) needs a process with a single thread,
# and the conftests below (through NumPy's BLAS) may start more.
_WHY_NOT = userns.enter_user_namespace()


def pytest_report_header(config: pytest.Config) -> str:
    """Says whether the session runs in a user namespace (shown unless -q)."""
    return f"user namespace: {userns.entered or f'not entered: {_WHY_NOT}'}"


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (`timeout`, `kill`, a CI runner giving up) stops the session as Ctrl-C does, so the
    fixtures' teardown still deletes the network namespaces and stops the daemons the tests started."""
    signal.signal(signal.SIGTERM, _interrupted)
