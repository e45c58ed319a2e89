"""Fixtures shared by the core's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ipsec_tunnel.core import esp, framing
from ipsec_tunnel.core import sa as sa_module

PATHS = ["c", "pure"] if framing.available is not None else ["pure"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    """The C extension's loops, or the pure-Python ones (as IPSEC_TUNNEL_PURE=1 chooses)."""
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "pure":
            mp.setattr(esp, "_native", None)
            mp.setattr(sa_module, "_native", None)
        yield request.param
