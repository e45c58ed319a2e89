"""Options shared by the whole suite."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--run-soak` runs the long robustness tests (`make soak`)."""
    parser.addoption("--run-soak", action="store_true", default=False, help="run the soak tests (make soak)")
