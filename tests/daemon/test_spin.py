"""The loop's bounded busy polling (`ipsecd --spin-us`) without root and without timing: the budget on an
injected clock, the loop's poll timeouts through a fake poller, the read-once rule of a woken turn, and
the option's bounds."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest

from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.gso import NO_OFFLOAD
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation, UdpEncap
from ipsec_tunnel.core.tunnel import Tunnel
from ipsec_tunnel.daemon import main
from ipsec_tunnel.daemon.dataplane import DataPlane
from ipsec_tunnel.daemon.kernel import Kernel, LinuxKernel
from ipsec_tunnel.daemon.spin import (
    MAX_SPIN_US,
    MAX_WARM_US,
    MIN_WARM_US,
    MISSED,
    SLEEP,
    WARM_WINDOW,
    Rehearsal,
    Spin,
    in_use,
    kind,
)
from ipsec_tunnel.linux.udp import UdpSocket
from tests.support.fakes import FakeKernel, FakeNetwork, FakeTun


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_runs_from_the_last_busy_turn() -> None:
    clock = Clock()
    spin = Spin(300e-6, clock)
    assert spin.timeout() == SLEEP and spin.idle  # nothing served yet: sleep
    spin.turn(1)
    assert spin.timeout() == 0.0 and not spin.idle
    clock.now += 200e-6
    spin.turn(0)  # an empty poll does not extend the budget
    assert spin.timeout() == 0.0 and spin.idle
    clock.now += 100e-6  # 300 us after the busy turn: the budget is spent
    assert spin.timeout() == SLEEP
    spin.turn(2)
    clock.now += 299e-6
    assert spin.timeout() == 0.0
    assert spin.timeout(0.1) == 0.0


def test_no_budget_never_spins() -> None:
    clock = Clock()
    spin = Spin(0.0, clock)
    spin.turn(5)
    assert spin.timeout() == SLEEP and spin.timeout(0.2) == 0.2
    assert not spin.idle


@pytest.mark.parametrize("budget", [-1e-6, MAX_SPIN_US / 1e6 + 1e-6])
def test_budget_out_of_range_is_refused(budget: float) -> None:
    with pytest.raises(ValueError, match="out of range"):
        Spin(budget)


def test_warming_wakes_within_the_period_for_a_window_after_the_last_packet() -> None:
    clock = Clock()
    spin = Spin(300e-6, clock, warm=1e-3)
    assert spin.timeout() == SLEEP and not spin.turn(0)  # no traffic yet: neither wake nor rehearse
    assert not spin.turn(1)  # a packet: no rehearsal on a busy turn
    assert spin.timeout() == 0.0 and not spin.turn(0)  # spinning: polls, no rehearsal
    clock.now += 300e-6
    assert spin.timeout() == 1e-3 and spin.turn(0)  # past the budget: sleeps 1 ms at most, rehearses
    clock.now += WARM_WINDOW - 300e-6 - 1e-6
    assert spin.timeout() == 1e-3 and spin.turn(0)  # still within the window of the last packet
    clock.now += 2e-6
    assert spin.timeout() == SLEEP and not spin.turn(0)  # a second without packets: asleep, cold
    assert spin.timeout(0.1) == 0.1


def test_warm_period_out_of_range_is_refused() -> None:
    for warm in (MIN_WARM_US / 1e6 / 2, MAX_WARM_US / 1e6 * 2):
        with pytest.raises(ValueError, match="warm period out of range"):
            Spin(0.0, warm=warm)


def test_rehearsal_opens_what_it_seals_and_renews_its_engines() -> None:
    rehearsal = Rehearsal()
    first = rehearsal.sender
    assert [rehearsal(1000.0 + i) for i in range(3)] == [1, 1, 1]
    assert rehearsal.receiver.rx_accepted == 3
    rehearsal.count = 1_000_000 - 1  # the next one renews the engines: fresh key, sequence from 1
    assert rehearsal(1010.0) == 1
    assert rehearsal.sender is not first and rehearsal.receiver.rx_accepted == 1


@pytest.mark.parametrize("cipher,udp", [("aes-gcm", True), ("aes-gcm", False), ("aes-cbc", True)])
def test_rehearsal_takes_the_short_way_of_a_lone_packet(
    cipher: str, udp: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    rehearsal = Rehearsal()
    rehearsal.follow(_config(0x1000, cipher, udp, "sha256" if cipher == "aes-cbc" else None))
    calls: list[str] = []
    for engine, name in ((rehearsal.sender, "send_batch"), (rehearsal.receiver, "receive_batch")):
        monkeypatch.setattr(engine, name, lambda *a, _n=name, **k: calls.append(_n))
    assert [rehearsal(1.0 + i) for i in range(3)] == [1, 1, 1]
    assert calls == []  # core.lone both ways, every time


def _config(
    spi: int,
    cipher: str,
    udp: bool,
    digest: str | None = None,
    src: str = "192.0.2.1",
    dst: str = "192.0.2.2",
) -> SAConfig:
    keys = {"aes-gcm": 20, "aes-cbc": 16}
    return SAConfig(
        spi, dst, src, cipher, os.urandom(keys[cipher]), digest,
        os.urandom(32) if digest else b"", encap=UdpEncap() if udp else None,
    ).validated()  # fmt: skip


def test_rehearsal_follows_the_algorithms_and_encapsulation_with_keys_of_its_own() -> None:
    rehearse = Rehearsal()
    assert rehearse.kind == kind(_config(0x1000, "aes-gcm", True)) and rehearse(1.0) == 1
    cbc = _config(0x2000, "aes-cbc", False, "sha256")
    assert rehearse.follow(cbc) and rehearse.kind == kind(cbc)
    (private,) = rehearse.sender.sad
    assert private.config.cipher == "aes-cbc" and private.config.digest == "sha256"
    assert private.config.encap is None and private.config.spi == 0x1000
    assert private.config.cipher_key != cbc.cipher_key and private.config.digest_key != cbc.digest_key
    assert rehearse(2.0) == 1 and rehearse(3.0) == 1  # sealed and opened over raw ESP
    assert not rehearse.follow(_config(0x3000, "aes-cbc", False, "sha256"))  # the same kind: kept
    assert rehearse.follow(_config(0x4000, "aes-gcm", True)) and rehearse(4.0) == 1


def test_in_use_is_the_sa_of_the_tunnel_that_moved_most_since_the_last_look() -> None:
    engine = Engine()
    gcm = _config(0x1000, "aes-gcm", True)
    cbc = _config(0x2000, "aes-cbc", False, "sha256", src="192.0.2.3", dst="192.0.2.4")
    for name, config in (("ipsec1", gcm), ("ipsec2", cbc)):
        engine.tunnels.add(Tunnel(name, config.src, config.dst, spi=config.spi))
        engine.sad.add(SecurityAssociation(config, 0.0))
    seen: dict[str, int] = {}
    assert in_use(engine, seen) is None  # nothing moved
    engine.stats_for("ipsec1").tx_packets = 5
    engine.stats_for("ipsec2").rx_packets = 3
    assert in_use(engine, seen) is engine.sa_for(engine.tunnels.get("ipsec1")).config  # type: ignore[union-attr,arg-type]
    engine.stats_for("ipsec2").rx_packets = 10  # 7 more, against none
    assert in_use(engine, seen) is engine.sa_for(engine.tunnels.get("ipsec2")).config  # type: ignore[union-attr,arg-type]
    assert in_use(engine, seen) is None


def test_loop_has_the_rehearsal_follow_the_busiest_tunnel_once_a_second(plane: DataPlane) -> None:
    followed: list[SAConfig] = []
    config = _config(0x2000, "aes-cbc", False, "sha256")

    class Stub:
        def __init__(self, wire: object) -> None:
            pass

        def __call__(self, now: float) -> int:
            return 1

        def close(self) -> None:
            pass

        def follow(self, c: SAConfig) -> bool:
            followed.append(c)
            return True

    plane._handlers[7] = lambda: None
    plane.warm = 1e-3
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ipsec_tunnel.daemon.dataplane.Rehearsal", Stub)
        mp.setattr("ipsec_tunnel.daemon.dataplane.in_use", lambda engine, seen: config)
        run_script(plane, [[(7, 1)], []], spin_us=100)
    assert followed == [config]  # the first turn's once-a-second work; the loop ran less than a second


class Poller:
    """A fake epoll: hands out the scripted event lists in turn, records each timeout, and stops the
    loop when the script ends."""

    def __init__(
        self, plane: DataPlane, script: list[list[tuple[int, int]]], clock: Clock, step: float
    ) -> None:
        self.plane, self.script, self.clock, self.step = plane, script, clock, step
        self.timeouts: list[float] = []

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        self.timeouts.append(timeout)
        self.clock.now += self.step  # each poll takes this long on the fake clock
        if not self.script:
            self.plane.running = False
            return []
        return self.script.pop(0)


class StubEngine:
    """Records the batches the data plane hands over; sends nothing."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.tunnels: list[Any] = []  # none: no SA in use for the rehearsal to follow

    def send_batch(self, name: str, packets: list[bytes], now: float, offloads: Any) -> list[Any]:
        self.batches.append(list(packets))
        return []

    def send_one(self, name: str, packet: bytes, now: float) -> bool:
        return False  # every packet through send_batch, even alone


@pytest.fixture
def plane() -> Iterator[DataPlane]:
    dp = DataPlane(cast(Engine, StubEngine()), kernel=cast(Kernel, object()))
    dp.periodic = lambda: None  # type: ignore[method-assign]
    epoll = dp._epoll
    yield dp
    epoll.close()


def run_script(
    dp: DataPlane, script: list[list[tuple[int, int]]], spin_us: int, step: float = 100e-6
) -> Poller:
    clock = Clock()
    dp.spin = spin_us / 1e6
    dp.monotonic = clock
    poller = Poller(dp, script, clock, step)
    dp._epoll = cast(Any, poller)  # run() polls through it
    dp.run()
    return poller


def test_loop_polls_without_sleeping_within_the_budget(plane: DataPlane) -> None:
    served: list[bool] = []
    plane._handlers[7] = lambda: served.append(plane.woken)
    ready = [(7, 1)]
    # busy, then empty polls 100 us apart: 300 us of spinning, then sleep; busy again after the sleep
    poller = run_script(plane, [ready, [], [], [], [], ready, []], spin_us=300)
    assert poller.timeouts == [SLEEP, 0.0, 0.0, 0.0, SLEEP, SLEEP, 0.0, 0.0]
    assert served == [True, True]  # both after empty turns: each is a woken turn


def test_loop_rehearses_when_it_wakes_to_nothing_while_warming(plane: DataPlane) -> None:
    rehearsals: list[float] = []
    plane._handlers[7] = lambda: None
    plane.warm = 1e-3
    plane.clock = lambda: 5.0

    class Stub:
        def __init__(self, wire: object) -> None:
            assert wire is None  # no --warm-loopback

        def __call__(self, now: float) -> int:
            rehearsals.append(now)
            return 1

        def close(self) -> None:
            rehearsals.append(-1.0)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ipsec_tunnel.daemon.dataplane.Rehearsal", Stub)
        poller = run_script(plane, [[(7, 1)], [], [], [(7, 1)], []], spin_us=100)
    # busy; the empty poll that ends the 100 us budget, then sleeps of at most 1 ms: a rehearsal after
    # each empty poll from then on (two), none after the busy one; then again (the budget, one sleep)
    assert poller.timeouts == [SLEEP, 0.0, 1e-3, 1e-3, 0.0, 1e-3]
    assert rehearsals == [5.0] * 4 + [-1.0]  # closed when the loop ends


def test_loop_without_budget_always_sleeps(plane: DataPlane) -> None:
    plane._handlers[7] = lambda: None
    poller = run_script(plane, [[(7, 1)], [(7, 1)], []], spin_us=0)
    assert poller.timeouts == [SLEEP] * 4


def test_back_to_back_turns_are_not_woken(plane: DataPlane) -> None:
    served: list[bool] = []
    plane._handlers[7] = lambda: served.append(plane.woken)
    run_script(plane, [[(7, 1)], [(7, 1)], [], [(7, 1)]], spin_us=300, step=10e-6)
    assert served == [True, False, True]
    assert not plane.woken  # outside a turn


def test_a_poll_that_slept_wakes_without_spinning(plane: DataPlane) -> None:
    served: list[bool] = []
    plane._handlers[7] = lambda: served.append(plane.woken)
    run_script(plane, [[(7, 1)], [(7, 1)]], spin_us=0, step=1e-3)  # each poll blocked 1 ms
    plane.running = True
    run_script(plane, [[(7, 1)], [(7, 1)]], spin_us=0, step=10e-6)  # ready at once: under load
    assert served == [True, True, True, False]


def test_woken_turn_reads_one_packet_and_the_next_turn_the_rest(plane: DataPlane) -> None:
    queue = FakeTun("ipsec1", vnet=True)
    try:
        for i in range(3):
            queue.route(bytes([0x45, i]) + bytes(18), NO_OFFLOAD)
        engine = cast(StubEngine, plane.engine)
        plane.woken = True
        plane.on_tun(cast(Any, queue))
        plane.woken = False
        plane.on_tun(cast(Any, queue))
        assert [[p[1] for p in batch] for batch in engine.batches] == [[0], [1, 2]]
    finally:
        queue.close()


@pytest.mark.parametrize("value,spin", [("0", 0), ("300", 300), (str(MAX_SPIN_US), MAX_SPIN_US)])
def test_spin_option(value: str, spin: int) -> None:
    assert main.parse_args([f"--spin-us={value}"]).spin_us == spin


@pytest.mark.parametrize("value,warm", [("0", 0), (str(MIN_WARM_US), MIN_WARM_US), ("100000", 100000)])
def test_warm_option(value: str, warm: int) -> None:
    assert main.parse_args([f"--warm-us={value}"]).warm_us == warm
    assert main.parse_args([]).warm_us == main.DEFAULT_WARM_US == 2000


@pytest.mark.parametrize("value", ["-1", "99", "100001", "x", ""])
def test_warm_option_refuses_bad_values(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main.parse_args([f"--warm-us={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "not 0 or a number of microseconds from 100 to 100000" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["-1", "100001", "abc", "1.5", ""])
def test_spin_option_refuses_bad_values(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main.parse_args([f"--spin-us={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "not a number of microseconds from 0 to 100000" in err
    assert "Traceback" not in err


@pytest.fixture
def loopback() -> Iterator[UdpSocket]:
    """A loopback UDP socket as ipsecd opens it for the rehearsal (no root needed)."""
    sock = LinuxKernel().open_loopback(gro=True)
    try:
        yield sock
    finally:
        sock.close()


def test_rehearsal_through_the_loopback_opens_what_came_back(loopback: UdpSocket) -> None:
    rehearsal = Rehearsal(loopback)
    sent: list[bytes] = []
    send_one = loopback.send_one

    def spy(dst: bytes, dport: int, payload: bytes, *rest: Any) -> OSError | None:
        sent.append(payload)
        assert (dst, dport) == (bytes((127, 0, 0, 1)), loopback.port)  # to itself, never elsewhere
        return send_one(dst, dport, payload, *rest)

    loopback.send_one = spy  # type: ignore[method-assign,assignment]
    opened: list[bytes] = []
    receive_one = rehearsal.receiver.receive_one

    def spy_open(src: bytes, dst: bytes, esp: bytes, *rest: Any) -> Any:
        opened.append(esp)
        return receive_one(src, dst, esp, *rest)

    rehearsal.receiver.receive_one = spy_open  # type: ignore[method-assign,assignment]
    assert [rehearsal(1.0 + i) for i in range(3)] == [1, 1, 1]
    assert rehearsal.looped == 3 and rehearsal.wire is loopback
    assert opened == sent and len({p[4:8] for p in sent}) == 3  # what came back, sequence 1, 2, 3
    assert loopback.recv_batch() is None  # nothing left behind


def test_rehearsal_ignores_a_stranger_on_the_loopback_port(loopback: UdpSocket) -> None:
    rehearsal = Rehearsal(loopback)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(b"not ours", ("127.0.0.1", loopback.port))
        assert rehearsal(1.0) == 1  # the stranger's datagram is read and dropped, then ours
    assert rehearsal.looped == 1 and rehearsal.wire is loopback
    assert rehearsal(2.0) == 1 and rehearsal.looped == 2
    assert loopback.recv_batch() is None


class BrokenWire:
    """A loopback socket whose sends fail (the loopback down)."""

    port = 9
    closed = False

    def send_one(self, *args: Any) -> OSError | None:
        return OSError(101, "Network is unreachable")

    def recv_batch(self) -> None:
        raise AssertionError("read after a failed send")

    def close(self) -> None:
        self.closed = True


def test_rehearsal_lets_a_failing_loopback_go_and_goes_on_in_memory() -> None:
    wire = BrokenWire()
    rehearsal = Rehearsal(cast(Any, wire))
    assert rehearsal(1.0) == 1 and rehearsal(2.0) == 1
    assert wire.closed and rehearsal.wire is None and rehearsal.looped == 0


def test_rehearsal_over_raw_esp_never_uses_the_loopback(loopback: UdpSocket) -> None:
    rehearsal = Rehearsal(loopback)
    rehearsal.follow(_config(0x1000, "aes-gcm", False))
    assert rehearsal(1.0) == 1 and rehearsal.looped == 0


def test_loopback_only_when_asked_and_none_without_one(plane: DataPlane) -> None:
    assert plane._loopback() is None  # --no-warm-loopback: the kernel is not even asked
    plane.warm_loopback = True
    plane.kernel = FakeKernel(FakeNetwork(), ["192.0.2.1"])  # it has no loopback: OSError
    assert plane._loopback() is None


def test_warm_loopback_option() -> None:
    assert main.parse_args([]).warm_loopback is main.DEFAULT_WARM_LOOPBACK
    assert main.parse_args(["--warm-loopback"]).warm_loopback is True
    assert main.parse_args(["--no-warm-loopback"]).warm_loopback is False


def test_rehearsal_lets_go_of_a_loopback_that_never_answers() -> None:
    class Mute(BrokenWire):
        def send_one(self, *args: Any) -> OSError | None:
            return None  # sent, never comes back (a firewall dropping it)

        def recv_batch(self) -> None:
            return None

    wire = Mute()
    rehearsal = Rehearsal(cast(Any, wire))
    for i in range(MISSED - 1):
        assert rehearsal(1.0 + i) == 1
    assert not wire.closed and rehearsal.missed == MISSED - 1
    assert rehearsal(100.0) == 1 and wire.closed and rehearsal.wire is None
