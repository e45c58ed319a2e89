"""ipsecd's queue switches: --qdisc and --socket-buffer parsed, bad values refused in one line, and
handed to the data plane."""

from __future__ import annotations

import pytest

from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.daemon import main as ipsecd
from ipsec_tunnel.daemon.dataplane import SOCKET_BUFFER, DataPlane
from ipsec_tunnel.linux.qdisc import DEFAULT_QDISC, Qdisc


def test_defaults_are_fq_codel_and_the_old_buffer() -> None:
    args = ipsecd.parse_args([])
    assert args.qdisc == DEFAULT_QDISC == "fq_codel"
    assert args.socket_buffer == SOCKET_BUFFER == 4 << 20


@pytest.mark.parametrize("kind", ["fq_codel", "cake", "fq", "pfifo_fast", "none"])
def test_qdisc_kinds(kind: str) -> None:
    assert ipsecd.parse_args([f"--qdisc={kind}"]).qdisc == kind


@pytest.mark.parametrize(("text", "size"), [("65536", 65536), ("512k", 512 << 10), ("2M", 2 << 20)])
def test_socket_buffer_sizes(text: str, size: int) -> None:
    assert ipsecd.parse_args([f"--socket-buffer={text}"]).socket_buffer == size


@pytest.mark.parametrize(
    "arg", ["--qdisc=codel", "--qdisc=fq_codel limit 10", "--socket-buffer=1k", "--socket-buffer=1g",
            "--socket-buffer=-5", "--socket-buffer=lots", "--socket-buffer="],
)  # fmt: skip
def test_bad_values_are_one_line_errors(arg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ipsecd.parse_args([arg])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_the_data_plane_takes_the_qdisc_and_buffer() -> None:
    plane, default = DataPlane(Engine(), qdisc=Qdisc("cake"), socket_buffer=1 << 20), DataPlane(Engine())
    try:
        assert plane.qdisc.kind == "cake" and plane.socket_buffer == 1 << 20
        assert default.qdisc.kind == DEFAULT_QDISC and default.socket_buffer == SOCKET_BUFFER
    finally:
        plane.close()
        default.close()
