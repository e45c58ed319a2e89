"""The data plane's event loop survives a handler that raises (a bug), counts it and keeps serving."""

from __future__ import annotations

import logging
import os

import pytest

from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.daemon.dataplane import DataPlane


def test_a_failing_handler_is_counted_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    plane = DataPlane(Engine())
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    served: list[str] = []

    def broken() -> None:
        os.read(r1, 1)
        raise OverflowError("int too big to convert")

    def fine() -> None:
        os.read(r2, 1)
        served.append("fine")
        if len(served) == 2:
            plane.running = False
        else:
            os.write(w2, b"y")

    try:
        plane.watch(r1, broken)
        plane.watch(r2, fine)
        os.write(w1, b"x")
        os.write(w2, b"y")
        with caplog.at_level(logging.ERROR, logger="ipsec_tunnel.daemon.dataplane"):
            plane.run()
        assert served == ["fine", "fine"]
        assert plane.failures == 1
        assert "data plane handler failed (1 so far)" in caplog.text
    finally:
        plane.close()
        for fd in (r1, w1, r2, w2):
            os.close(fd)
