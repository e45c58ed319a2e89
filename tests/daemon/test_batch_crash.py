"""`ipsecadm -b`'s all-or-none batch survives a crash: the state database takes it in one transaction,
so ipsecd killed (SIGKILL) in the middle of a batch restarts with none of it, and one that finished
restarts with all of it. A real state store in a temporary directory, fake devices, no root."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from ipsec_tunnel.control.protocol import ProtocolError
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.daemon.manager import Manager
from ipsec_tunnel.daemon.state import Store
from tests.support.fakes import FakeDevices

A, B = "192.0.2.1", "192.0.2.2"
NOW = 1000.0


def _sa(spi: int) -> dict[str, Any]:
    args = {"spi": spi, "dst": B, "src": A, "cipher": "aes-gcm", "cipher_key": f"{spi:040x}", "duplex": True}
    return {"op": "sa.add", "args": args}


BATCH = [_sa(0x1000), _sa(0x2000), {"op": "tunnel.add", "args": {"name": "ipsec1", "local": A, "remote": B}}]


def _manager(state: Path) -> Manager:
    manager = Manager(Engine(), Store(state), FakeDevices(), now=lambda: NOW)
    manager.restore()
    return manager


def _stored(state: Path) -> tuple[int, list[str]]:
    store = Store(state)
    try:
        return len(store.load_sas(NOW)), [t.name for t in store.load_tunnels()]
    finally:
        store.close()


def test_a_batch_killed_in_the_middle_leaves_none_of_it_stored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pid = os.fork()
    if pid == 0:  # the daemon: it dies (SIGKILL, no cleanup) at the batch's last request
        try:
            manager = _manager(state)

            def killed(_args: dict[str, Any]) -> Any:
                os.kill(os.getpid(), signal.SIGKILL)

            manager.op_tunnel_add = killed  # type: ignore[method-assign,assignment]
            manager.handle("batch", {"requests": BATCH})
        finally:
            os._exit(3)  # not reached unless the kill failed
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert _stored(state) == (0, [])  # the two --duplex SA pairs before the kill are not stored
    manager = _manager(state)  # and the same batch goes in whole after the restart
    assert len(manager.handle("batch", {"requests": BATCH})) == 3
    manager.store.close()
    assert _stored(state) == (4, ["ipsec1"])


def test_a_refused_request_leaves_none_of_the_batch_stored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    manager = _manager(state)
    bad = {"op": "tunnel.add", "args": {"name": "ipsec1", "local": A, "remote": "not-an-address"}}
    with pytest.raises(ProtocolError, match="request 3: "):
        manager.handle("batch", {"requests": [*BATCH[:2], bad]})
    assert manager.handle("sa.show", {}) == []
    manager.store.close()
    assert _stored(state) == (0, [])


def test_a_finished_batch_is_stored_whole(tmp_path: Path) -> None:
    state = tmp_path / "state"
    manager = _manager(state)
    manager.handle("batch", {"requests": BATCH})
    manager.store.close()  # as after kill -9: nothing more is written
    assert _stored(state) == (4, ["ipsec1"])
