"""bench/latency's percentiles and its reading of ping, iperf3, tc, ss and ip output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench.latency import (
    LatRun,
    LatSummary,
    iperf_argv,
    make_planes,
    parse_iperf,
    parse_ping,
    parse_qdisc,
    parse_ss,
    parse_turns,
    percentile,
    render,
    route_device,
    turn_rows,
)
from bench.lib.planes import OursWithArgs

PING = """PING 10.0.2.1 (10.0.2.1) from 10.0.1.1 : 56(84) bytes of data.
64 bytes from 10.0.2.1: icmp_seq=1 ttl=64 time=0.712 ms
64 bytes from 10.0.2.1: icmp_seq=2 ttl=64 time=13.8 ms
64 bytes from 10.0.2.1: icmp_seq=4 ttl=64 time=1.05 ms

--- 10.0.2.1 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 151ms
rtt min/avg/max/mdev = 0.712/5.187/13.800/6.094 ms
"""


def test_percentiles_interpolate_between_ranks_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 100.0


def test_percentiles_of_unsorted_short_and_empty_lists() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([4.0, 1.0], 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_ping_output_gives_the_answered_rtts_and_the_count_sent() -> None:
    assert parse_ping(PING) == ([0.712, 13.8, 1.05], 4)
    assert parse_ping("") == ([], 0)


def test_iperf_json_gives_receiver_mbps_and_retransmits() -> None:
    doc = {
        "end": {
            "sum_received": {"bits_per_second": 2_085_123_456.0, "bytes": 1},
            "sum_sent": {"retransmits": 7},
        }
    }
    assert parse_iperf(json.dumps(doc)) == (2085.1, 7)


@pytest.mark.parametrize(
    "text",
    ['{"error": "unable to connect to server"}', "iperf3: error - unable to connect", "{}"],
)
def test_a_failed_iperf_is_a_value_error_with_its_message(text: str) -> None:
    with pytest.raises(ValueError, match="iperf3"):
        parse_iperf(text)


def test_tc_json_gives_the_root_qdisc_backlog() -> None:
    text = json.dumps(
        [
            {"kind": "fq_codel", "handle": "8001:", "root": True, "backlog": 96000, "qlen": 64, "drops": 3},
            {"kind": "ingress", "handle": "ffff:", "parent": "ffff:fff1"},
        ]
    )
    assert parse_qdisc(text) == {
        "kind": "fq_codel",
        "backlog_bytes": 96000,
        "backlog_packets": 64,
        "drops": 3,
    }
    assert parse_qdisc("") == {}


def test_ss_gives_the_largest_receive_and_send_queues() -> None:
    text = (
        "udp   UNCONN 960960 0      192.0.2.2:4500      0.0.0.0:*\n"
        "udp   UNCONN 0      4608   0.0.0.0:51820       0.0.0.0:*\n"
        "raw   UNCONN 1024   0      0.0.0.0:50          0.0.0.0:*\n"
    )
    assert parse_ss(text) == (960960, 4608)
    assert parse_ss("") == (0, 0)


def test_the_tunnel_device_comes_from_the_route() -> None:
    assert route_device("10.0.2.1 from 10.0.1.1 dev ipsec1 uid 0 \n    cache \n") == "ipsec1"
    assert route_device("RTNETLINK answers: Network is unreachable") is None


def test_the_table_puts_ratios_of_ours_over_each_peer() -> None:
    def plane(key: str, group: str, idle: float, load: float, mbps: float) -> LatSummary:
        run = LatRun(1, idle_ms=[idle] * 10, idle_sent=10, load_ms=[load] * 9, load_sent=10, mbps=mbps)
        return LatSummary(key, key, group, [run])

    ours = plane("ours-gcm-udp", "ours", 0.5, 2.0, 2000.0)
    wg = plane("wg-go", "wireguard", 0.25, 4.0, 500.0)
    assert ours.lost_pct == pytest.approx(10.0)
    args = argparse.Namespace(pings=10, runs=1, warmup=1.0)
    text = render([ours, wg], args, 3.0)
    ratio_line = next(line for line in text.splitlines() if line.startswith("ours-gcm-udp / wg-go"))
    assert ratio_line.split()[-4:] == ["2.00", "0.50", "0.50", "4.00"]


def test_variants_add_an_ipsecd_plane_each_with_their_options(tmp_path: Path) -> None:
    planes = make_planes(
        ["ours-gcm-udp", "wg-go"], tmp_path, ["--qdisc=none"], ["--socket-buffer=1m --batch=64"]
    )
    assert [p.key for p in planes] == ["ours-gcm-udp", "ours-gcm-udp-v1", "wg-go"]
    base, variant = planes[0], planes[1]
    assert isinstance(base, OursWithArgs) and isinstance(variant, OursWithArgs)
    assert base.extra == ["--qdisc=none"]
    assert variant.extra == ["--qdisc=none", "--socket-buffer=1m", "--batch=64"]
    assert variant.label.endswith("[--qdisc=none --socket-buffer=1m --batch=64]")
    assert base.a.name != variant.a.name  # namespaces of their own


def test_the_load_is_uncapped_unless_a_rate_is_given() -> None:
    assert "-b" not in iperf_argv(5.0)
    argv = iperf_argv(5.0, "200M")
    assert argv[-2:] == ["-b", "200M"] and argv[argv.index("-t") + 1] == "5"


def test_the_window_is_the_kernels_unless_given() -> None:
    assert "-w" not in iperf_argv(5.0)
    argv = iperf_argv(5.0, None, "256K")
    assert argv[argv.index("-w") + 1] == "256K" and "-b" not in argv


def test_turns_files_name_their_plane_and_side_and_count_long_calls() -> None:
    doc = {
        "argv": ["main.py", "-f", "--socket", "/tmp/w/ours-gcm-udp-v1-B/ipsecd.sock", "--log-level", "x"],
        "turns": {"on_udp": {"0.5": 10, "4.0": 3, "16.0": 2}, "on_tun": {"0.125": 7}},
    }
    got = parse_turns(doc)
    assert got is not None
    key, side, turns = got
    assert (key, side) == ("ours-gcm-udp-v1", "B") and turns["on_udp"] == {0.5: 10, 4.0: 3, 16.0: 2}
    rows = turn_rows("label", side, turns)
    assert rows[1] == ["label", "B", "on_udp", "15", "5", "2", "<= 16 ms"]
    assert rows[0][2:6] == ["on_tun", "7", "0", "0"]
    assert parse_turns({"argv": ["bench/latency.py"], "turns": {}}) is None


def test_ecn_sets_tcp_ecn_in_both_namespaces_of_every_plane() -> None:
    from bench.latency import ecn, parse_args

    class Ns:
        def __init__(self) -> None:
            self.commands: list[list[str]] = []

        def check(self, cmd: list[str]) -> str:
            self.commands.append(cmd)
            return ""

    class FakePlane:
        def __init__(self) -> None:
            self.a, self.b = Ns(), Ns()

    planes = [FakePlane(), FakePlane()]
    ecn(planes)  # type: ignore[arg-type]
    for plane in planes:
        for ns in (plane.a, plane.b):
            assert ns.commands == [["sysctl", "-qw", "net.ipv4.tcp_ecn=1"]]
    assert parse_args(["--ecn"]).ecn and not parse_args([]).ecn
