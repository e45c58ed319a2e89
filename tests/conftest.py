"""Options shared by the whole suite; an ordinary user's session runs as root of a user namespace."""

from __future__ import annotations

import pytest

from tests.support import userns


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--run-soak` runs the long robustness tests (`make soak`)."""
    parser.addoption("--run-soak", action="store_true", default=False, help="run the soak tests (make soak)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Without root, move the session into an unprivileged user namespace (tests/support/userns.py) so
    the real-kernel tests run; where that cannot be done they skip, saying why."""
    why_not = userns.enter_user_namespace()
    config.stash[_USERNS_KEY] = userns.entered or f"not entered: {why_not}"


_USERNS_KEY = pytest.StashKey[str]()


def pytest_report_header(config: pytest.Config) -> str:
    """Says whether the session runs in a user namespace (shown unless -q)."""
    return f"user namespace: {config.stash.get(_USERNS_KEY, 'not entered')}"
