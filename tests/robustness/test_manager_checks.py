"""The manager's checks of issue 11 (no root): a tunnel's --local must be an address of this host,
--duplex with a counter-mode cipher over UDP is refused whole, an ambiguous --duplex is answered with a
warning, and the daemon's clock is steady against steps of the system clock."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest

from ipsec_tunnel.cli.ipsecadm import main as ipsecadm_main
from ipsec_tunnel.control.protocol import ProtocolError
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.daemon.clock import SteadyClock, steady
from ipsec_tunnel.daemon.dataplane import DataPlane
from ipsec_tunnel.daemon.manager import Manager
from ipsec_tunnel.daemon.state import Store
from tests.support.fakes import FakeDevices

from .conftest import A4, B4, NOW

GCM_KEY = bytes(range(20))
AES_KEY, SHA_KEY = bytes(range(16)), bytes(range(32))


@pytest.fixture
def manager(tmp_path: Path) -> Manager:
    return Manager(Engine(), Store(tmp_path / "state"), FakeDevices({A4}), now=lambda: NOW)


def test_tunnel_with_a_local_address_of_another_host_is_refused(manager: Manager) -> None:
    """Newcomer trial finding 13: host A given host B's line would send with the SA it receives with."""
    with pytest.raises(ProtocolError, match=rf"^--local {B4} is not an address of this host") as info:
        manager.handle("tunnel.add", {"name": "ipsec1", "local": B4, "remote": A4})
    assert info.value.errno == "EINVAL"
    assert manager.engine.tunnels.get("ipsec1") is None
    assert manager.devices.names == set()  # type: ignore[attr-defined]
    manager.handle("tunnel.add", {"name": "ipsec1", "local": A4, "remote": B4})
    with pytest.raises(ProtocolError, match="is not an address of this host"):
        manager.handle("tunnel.change", {"name": "ipsec1", "local": "192.0.2.9"})
    tunnel = manager.engine.tunnels.get("ipsec1")
    assert tunnel is not None and tunnel.local == A4


def _sa(**extra: Any) -> dict[str, Any]:
    return {"spi": 0x1000, "dst": B4, "src": A4, **extra}


def test_duplex_counter_mode_over_udp_is_refused_and_adds_nothing(manager: Manager) -> None:
    """Newcomer trial finding 1: the daemon passes --duplex to the core's check; neither direction is
    added."""
    with pytest.raises(ProtocolError, match="one SA per direction, each with its own key"):
        manager.handle(
            "sa.add", _sa(cipher="aes-gcm", cipher_key=GCM_KEY.hex(), duplex=True, encap={"sport": 4500})
        )
    assert len(manager.engine.sad) == 0
    added = manager.handle("sa.add", _sa(cipher="aes-gcm", cipher_key=GCM_KEY.hex(), duplex=True))
    assert len(added["added"]) == 2 and "warnings" not in added
    assert all(sa.config.duplex for sa in manager.engine.sad)


def test_ambiguous_duplex_is_answered_with_a_warning(
    manager: Manager, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Protocol review finding 1: CBC --duplex (the seed's line) stays allowed, with a warning that
    ipsecadm prints on stderr."""
    cbc = _sa(cipher="aes-cbc", cipher_key=AES_KEY.hex(), digest="sha256", digest_key=SHA_KEY.hex())
    single = manager.handle("sa.add", cbc)
    assert "warnings" not in single
    manager.handle("sa.del", {"all": True})
    result = manager.handle("sa.add", {**cbc, "duplex": True})
    (warning,) = result["warnings"]
    assert warning.startswith("warning: --duplex with aes-cbc: nothing in a packet says its direction")
    assert "one SA per direction, each with its own key" in warning
    assert AES_KEY.hex() not in warning and SHA_KEY.hex() not in warning


def test_a_64_bit_aead_icv_is_answered_with_a_warning(manager: Manager) -> None:
    """Protocol review finding 9: aes-gcm-8 stays allowed (RFC 4106), with a warning naming the unbounded
    forgery attempts; 96- and 128-bit ICVs get none."""
    for spi, cipher in ((0x1000, "aes-gcm"), (0x1001, "aes-gcm-12")):
        result = manager.handle(
            "sa.add", _sa(spi=spi, cipher=cipher, cipher_key=bytes(range(spi % 256, 20 + spi % 256)).hex())
        )
        assert "warnings" not in result, cipher
    result = manager.handle(
        "sa.add", _sa(spi=0x1002, cipher="aes-gcm-8", cipher_key=bytes(range(50, 70)).hex())
    )
    (warning,) = result["warnings"]
    assert warning.startswith("warning: aes-gcm with a 64-bit ICV: nothing limits how many forgeries")
    assert "prefer the 128-bit ICV" in warning and bytes(range(50, 70)).hex() not in warning


def test_ipsecadm_prints_the_daemons_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import threading

    from ipsec_tunnel.control.protocol import encode_result

    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            while not conn.recv(65536).endswith(b"\n"):
                pass
            conn.sendall(encode_result({"added": [], "warnings": ["warning: careful"]}))

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        rc = ipsecadm_main(
            ["--socket", path, "sa", "add", "--spi=0x1000", f"--dst={B4}", f"--src={A4}",
             "--cipher=aes-cbc", f"--cipher-key={AES_KEY.hex()}", "--digest=sha256",
             f"--digest-key={SHA_KEY.hex()}", "--duplex"]
        )  # fmt: skip
    finally:
        thread.join(5)
        listener.close()
    assert rc == 0
    assert "ipsecadm: warning: careful\n" in capsys.readouterr().err


def test_steady_clock_ignores_steps_of_the_system_clock() -> None:
    """Lifetimes and the ICMP rate limit run on the daemon's clock: a step of the wall clock after
    start-up moves it neither forward (expiring SAs) nor back (reviving them)."""
    wall, mono = [1_700_000_000.0], [50.0]
    clock = SteadyClock(lambda: wall[0], lambda: mono[0])
    assert clock() == 1_700_000_000.0  # it reads as wall-clock time, so `created` can be stored
    wall[0] += 3600.0  # date -s: an hour forward
    assert clock() == 1_700_000_000.0
    mono[0] += 2.5
    wall[0] -= 7200.0  # and two hours back
    assert clock() == 1_700_000_002.5


def test_the_daemon_runs_on_the_steady_clock(tmp_path: Path) -> None:
    manager = Manager(Engine(), Store(tmp_path / "state"), FakeDevices({A4}))
    assert manager.now is steady
    assert inspect.signature(DataPlane.__init__).parameters["clock"].default is steady


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"soft": {"bytes": 2000}, "hard": {"bytes": 1000}}, "soft limit must be below the hard limit"),
        ({"soft": {"seconds": 60}, "hard": {"seconds": 60}}, "soft limit must be below the hard limit"),
        ({"hard": {"packets": 1 << 63}}, "too large"),
        ({"cipher": "aes-gcm-12", "digest_bits": 128}, "already sets a 96-bit ICV"),
        (
            {"cipher": "aes-cbc", "cipher_key": AES_KEY.hex(), "digest_bits": 96},
            "--digest-hmac needs --digest",
        ),
    ],
)
def test_the_daemon_checks_what_ipsecadm_checks(
    manager: Manager, extra: dict[str, Any], message: str
) -> None:
    """Issue 14 item 4: the lifetimes' order and maximum and the ICV length are checked by the core's
    SAConfig, so a client of the control socket (or IKE) is refused as ipsecadm is, and nothing is added."""
    args = {**_sa(cipher="aes-gcm", cipher_key=GCM_KEY.hex()), **extra}
    with pytest.raises(ProtocolError, match=message) as info:
        manager.handle("sa.add", args)
    assert info.value.errno == "EINVAL" and len(manager.engine.sad) == 0


def test_a_stored_sa_is_restored_under_the_checks_it_was_added_with(tmp_path: Path) -> None:
    """An SA an older ipsecd stored with a soft lifetime above its hard one comes back after a restart
    (its row is not refused by the newer check), lifetimes as stored."""
    from ipsec_tunnel.core.sa import Limits, SAConfig, SecurityAssociation

    store = Store(tmp_path / "state")
    config = SAConfig(0x1000, B4, A4, cipher="aes-gcm", cipher_key=GCM_KEY).validated()
    old = dataclasses.replace(config, soft=Limits(bytes=2000), hard=Limits(bytes=1000))  # as before the check
    store.add_sa(SecurityAssociation(old, NOW))
    store.close()
    store = Store(tmp_path / "state")
    [sa] = store.load_sas(NOW)
    assert (sa.config.soft.bytes, sa.config.hard.bytes) == (2000, 1000)
    store.close()
