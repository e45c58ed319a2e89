"""tests.support.hosts.Topology: set up on entering, torn down on leaving, and torn down at once when
setting up fails part way (the error still raised), so a failed fixture leaves no namespace behind."""

from __future__ import annotations

import pytest

from tests.support.hosts import Topology


class Recorder(Topology):
    """A topology that records its calls and fails in `open` when told to."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def open(self) -> None:
        self.calls.append("open")
        if self.fail is not None:
            raise self.fail

    def close(self) -> None:
        self.calls.append("close")


def test_entering_opens_and_leaving_closes() -> None:
    t = Recorder()
    with t as entered:
        assert entered is t and t.calls == ["open"]
    assert t.calls == ["open", "close"]


def test_leaving_by_an_error_closes_and_the_error_goes_on() -> None:
    t = Recorder()
    with pytest.raises(KeyError), t:
        raise KeyError("in the body")
    assert t.calls == ["open", "close"]


@pytest.mark.parametrize("fail", [RuntimeError("veth refused"), KeyboardInterrupt()])
def test_a_failed_open_closes_at_once_and_raises(fail: BaseException) -> None:
    t = Recorder(fail)
    with pytest.raises(type(fail)), t:
        pytest.fail("the body must not run when setting up failed")  # pragma: no cover
    assert t.calls == ["open", "close"]  # closed once: __exit__ does not run after a failed __enter__
