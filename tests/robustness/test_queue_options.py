"""ipsecd's queue switches: --qdisc and --socket-buffer parsed, bad values refused in one line, and
handed to the data plane."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ipsec_tunnel.core.engine import Engine, packed
from ipsec_tunnel.daemon import main as ipsecd
from ipsec_tunnel.daemon.dataplane import BATCH, DataPlane
from ipsec_tunnel.daemon.kernel import SOCKET_BUFFER, LinuxKernel
from ipsec_tunnel.linux.qdisc import DEFAULT_QDISC, Qdisc

from .conftest import A4, B4, NOW


def test_defaults_are_fq_codel_and_the_old_buffer() -> None:
    args = ipsecd.parse_args([])
    assert args.qdisc == DEFAULT_QDISC == "fq_codel"
    assert args.socket_buffer == SOCKET_BUFFER == 4 << 20


@pytest.mark.parametrize("kind", ["fq_codel", "cake", "fq", "pfifo_fast", "none"])
def test_qdisc_kinds(kind: str) -> None:
    assert ipsecd.parse_args([f"--qdisc={kind}"]).qdisc == kind


@pytest.mark.parametrize(("text", "batch"), [("1", 1), ("256", 256), ("4096", 4096)])
def test_batch_sizes(text: str, batch: int) -> None:
    assert ipsecd.parse_args([f"--batch={text}"]).batch == batch


@pytest.mark.parametrize(("text", "size"), [("65536", 65536), ("512k", 512 << 10), ("2M", 2 << 20)])
def test_socket_buffer_sizes(text: str, size: int) -> None:
    assert ipsecd.parse_args([f"--socket-buffer={text}"]).socket_buffer == size


@pytest.mark.parametrize(
    "arg", ["--qdisc=codel", "--qdisc=fq_codel limit 10", "--socket-buffer=1k", "--socket-buffer=1g",
            "--socket-buffer=-5", "--socket-buffer=lots", "--socket-buffer=",
            "--batch=0", "--batch=5000", "--batch=x"],
)  # fmt: skip
def test_bad_values_are_one_line_errors(arg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ipsecd.parse_args([arg])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_the_kernel_takes_the_qdisc_and_buffer() -> None:
    kernel, default = LinuxKernel(qdisc=Qdisc("cake"), socket_buffer=1 << 20), LinuxKernel()
    assert kernel.qdisc.kind == "cake" and kernel.socket_buffer == 1 << 20
    assert default.qdisc.kind == DEFAULT_QDISC and default.socket_buffer == SOCKET_BUFFER
    plane = DataPlane(Engine(), kernel=kernel)
    try:
        assert plane.kernel is kernel
    finally:
        plane.close()


class _Flood:
    """An ESP-in-UDP socket that always has another GRO batch of `per_read` (undecryptable) datagrams."""

    def __init__(self, per_read: int) -> None:
        self.per_read = per_read
        self.reads = 0

    def recv_batch(self) -> tuple[SimpleNamespace, list[bytes]]:
        self.reads += 1
        d = SimpleNamespace(src=packed(B4), dst=packed(A4), tos=0, sport=4500)
        return d, [bytes(100)] * self.per_read


@pytest.mark.parametrize(("batch", "reads"), [(256, 4), (1, 1), (100, 2), (4096, BATCH)])
def test_one_udp_event_takes_at_most_a_batch_of_packets(batch: int, reads: int) -> None:
    engine = Engine()
    plane = DataPlane(engine, clock=lambda: NOW, batch_packets=batch)
    flood = _Flood(64)
    try:
        plane.on_udp(flood)  # type: ignore[arg-type]
        assert flood.reads == reads  # the rest waits for the next turn, after the other sources
        assert sum(engine.rx_drops.values()) == 64 * reads  # what was read went through the engine
    finally:
        plane.close()
