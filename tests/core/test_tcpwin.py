"""core.tcpwin: the window of ACKs delivered to a local TCP sender is lowered so that at most `queue`
bytes of its flow wait in the device's ring, never moving the right edge left, never stalling the flow,
the checksum kept valid (checked by scapy's own computation), and flows without a seen handshake,
data packets and other protocols left byte for byte as they were."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from ipsec_tunnel.core import tcpwin
from ipsec_tunnel.core.tcpwin import WindowBound

LOCAL, REMOTE = "10.0.1.1", "10.0.2.1"
LOCAL6, REMOTE6 = "fd00:1::1", "fd00:2::1"
MOD = 1 << 32
Q = 256 << 10


def out(seq: int, data: int = 0, flags: str = "A", ws: int | None = None, v6: bool = False) -> bytes:
    """A packet of the local sender (port 40000 -> 5201), read from the ring."""
    opts = [("WScale", ws)] if ws is not None else []
    ip = IPv6(src=LOCAL6, dst=REMOTE6) if v6 else IP(src=LOCAL, dst=REMOTE)
    return bytes(ip / TCP(sport=40000, dport=5201, seq=seq % MOD, flags=flags, options=opts) / (b"x" * data))


def back(
    ack: int,
    window: int,
    flags: str = "A",
    ws: int | None = None,
    v6: bool = False,
    data: int = 0,
    seq: int = 7,
) -> bytes:
    """A packet of the remote receiver to the local sender, delivered from the tunnel."""
    opts = [("WScale", ws)] if ws is not None else []
    ip = IPv6(src=REMOTE6, dst=LOCAL6) if v6 else IP(src=REMOTE, dst=LOCAL)
    tcp = TCP(sport=5201, dport=40000, seq=seq, ack=ack % MOD, flags=flags, window=window, options=opts)
    return bytes(ip / tcp / (b"y" * data))


def read(w: WindowBound, seq: int, size: int, v6: bool = False) -> None:
    """`size` bytes from `seq` read from the ring, as super-packets of at most 60,000 bytes."""
    while size > 0:
        n = min(size, 60_000)
        w.sent(out(seq, data=n, v6=v6))
        seq, size = seq + n, size - n


def tcp_of(packet: bytes) -> TCP:
    tcp: TCP = (IPv6(packet) if packet[0] >> 4 == 6 else IP(packet))[TCP]
    return tcp


def checksum_valid(packet: bytes) -> bool:
    layer = IPv6(packet) if packet[0] >> 4 == 6 else IP(packet)
    given_sum = layer[TCP].chksum
    del layer[TCP].chksum
    fresh = IPv6(bytes(layer)) if packet[0] >> 4 == 6 else IP(bytes(layer))
    return bool(given_sum == fresh[TCP].chksum)


def handshake(
    w: WindowBound, isn: int = 1000, local_ws: int | None = 7, remote_ws: int | None = 7, v6: bool = False
) -> None:
    w.sent(out(isn, flags="S", ws=local_ws, v6=v6))
    assert w.delivering(back(isn + 1, 65535, flags="SA", ws=remote_ws, v6=v6)) == back(
        isn + 1, 65535, flags="SA", ws=remote_ws, v6=v6
    )


def edge(packet: bytes, shift: int) -> int:
    t = tcp_of(packet)
    return int((t.ack + (t.window << shift)) % MOD)


def test_window_lowered_to_what_left_the_ring_plus_queue() -> None:
    w = WindowBound(Q)
    handshake(w)
    w.sent(out(1001, data=1000))
    first = back(2001, 0x8000)  # own edge 2001 + 4 MiB: announced as is, the start
    assert w.delivering(first) == first
    # 5 MB more read from the ring; an ACK of 1 MB more offers 8 MiB beyond it
    read(w, 2001, 5_000_000)
    ack = 1_002_001
    got = w.delivering(back(ack, 0xFFFF))
    assert checksum_valid(got)
    announced = edge(got, 7)
    assert announced >= edge(first, 7)  # never left of the last edge
    assert announced >= 5_002_001 + Q  # what left the ring plus the queue ...
    assert announced - (5_002_001 + Q) < 128  # ... rounded up to the window's unit (2^7), no more
    assert w.lowered == 1
    # the same packet otherwise: only the window and the checksum changed
    before, after = bytearray(back(ack, 0xFFFF)), bytearray(got)
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    assert diff and set(diff) <= {20 + 14, 20 + 15, 20 + 16, 20 + 17}


def test_never_left_of_the_last_announced_edge() -> None:
    w = WindowBound(Q)
    handshake(w)
    w.sent(out(1001, data=100))
    w.delivering(back(1101, 0x8000))  # start: own edge 1101 + 4 MiB
    last = 1101 + (0x8000 << 7)
    # nothing more left the ring: the edge stays where it was, though sent + Q is far left of it
    got = w.delivering(back(1101, 0xFFFF))
    assert edge(got, 7) == last


def test_an_ack_beyond_what_was_seen_never_stalls_the_flow() -> None:
    w = WindowBound(Q)
    handshake(w)
    w.sent(out(1001, data=100))
    w.delivering(back(1101, 4))  # a small own window: start
    # data passed some other way: an ACK far beyond what was noted still allows Q bytes past it
    got = w.delivering(back(50_000_000, 0xFFFF))
    assert edge(got, 7) >= 50_000_000 + Q


def test_the_flows_own_smaller_window_stands() -> None:
    w = WindowBound(Q)
    handshake(w)
    read(w, 1001, 10_000_000)
    w.delivering(back(1001, 100))
    small = back(5_000_001, 100)  # 12,800 bytes: less than Q past the ring
    assert w.delivering(small) == small


def test_without_both_scales_the_window_is_in_bytes() -> None:
    w = WindowBound(64 << 10)
    handshake(w, local_ws=None, remote_ws=7)  # RFC 7323: scaling only when both offer it
    w.sent(out(1001, data=1000))
    w.delivering(back(1001, 65535))
    w.sent(out(2001, data=1000))
    got = w.delivering(back(1501, 65535))
    # edge 2001 + 64 KiB exceeds 1501 + 65535 (the own edge): the own stands, unscaled
    assert got == back(1501, 65535)
    w2 = WindowBound(64 << 10)
    handshake(w2, local_ws=7, remote_ws=None)
    w2.sent(out(1001, data=1000))
    w2.delivering(back(1001, 65535))
    w2.sent(out(2001, data=60_000))
    # own edge 1501 + 65535 = 67036 lies left of 62001 + 65536: stands, read as bytes (shift 0)
    assert w2.delivering(back(1501, 65535)) == back(1501, 65535)


def test_remote_opened_connection_is_followed() -> None:
    w = WindowBound(Q)
    w.delivering(back(0, 65535, flags="S", ws=7, seq=5000))  # the remote's SYN
    w.sent(out(1000, flags="SA", ws=7))  # the local SYN-ACK
    w.sent(out(1001, data=100))
    w.delivering(back(1101, 0x8000))
    read(w, 1101, 5_000_000)
    got = w.delivering(back(2_000_000, 0xFFFF))
    assert w.lowered == 1 and checksum_valid(got)


def test_ipv6() -> None:
    w = WindowBound(Q)
    handshake(w, v6=True)
    w.sent(out(1001, data=1000, v6=True))
    w.delivering(back(2001, 0x8000, v6=True))
    read(w, 2001, 5_000_000, v6=True)
    got = w.delivering(back(1_002_001, 0xFFFF, v6=True))
    assert w.lowered == 1 and checksum_valid(got)
    assert edge(got, 7) - (5_002_001 + Q) in range(128)


def test_sequence_numbers_wrap() -> None:
    w = WindowBound(Q)
    isn = MOD - 2_000_000
    handshake(w, isn=isn)
    w.sent(out(isn + 1, data=1000))
    w.delivering(back(isn + 1001, 0x8000))
    read(w, isn + 1001, 5_000_000)  # across 2^32
    got = w.delivering(back(isn + 1_001_001, 0xFFFF))
    assert w.lowered == 1
    assert (edge(got, 7) - (isn + 5_001_001 + Q)) % MOD < 128


def test_left_alone() -> None:
    w = WindowBound(Q)
    # no handshake seen: an ACK of an unknown flow passes unchanged
    read(w, 1001, 3_000_000)
    assert w.delivering(back(2001, 0x8000)) == back(2001, 0x8000)
    handshake(w)
    read(w, 1001, 3_000_000)
    w.delivering(back(2001, 0x8000))
    # an ACK carrying data, a UDP packet, a long packet: unchanged
    with_data = back(1_000_001, 0x8000, data=10)
    assert w.delivering(with_data) == with_data
    udp = bytes(IP(src=REMOTE, dst=LOCAL) / UDP(sport=5201, dport=40000) / b"z")
    assert w.delivering(udp) == udp
    assert w.delivering(b"") == b"" and w.delivering(b"\x45") == b"\x45"
    # a reset forgets the flow
    w.sent(out(3_000_001, flags="R"))
    assert w.delivering(back(1_000_001, 0x8000)) == back(1_000_001, 0x8000)
    assert w.lowered == 0


def test_flows_are_bounded() -> None:
    w = WindowBound(Q, flows=4)
    for port in range(10):
        w.sent(bytes(IP(src=LOCAL, dst=REMOTE) / TCP(sport=port + 1, dport=5201, flags="S")))
    assert len(w.flows) == 4


def test_window_scale_option_parsing() -> None:
    syn = out(1, flags="S", ws=9)
    assert tcpwin.window_scale(syn, 20) == 9
    assert tcpwin.window_scale(out(1, flags="S", ws=30), 20) == 14  # RFC 7323 §2.3: at most 14
    assert tcpwin.window_scale(out(1, flags="S"), 20) is None
    nops = bytes(
        IP(src=LOCAL, dst=REMOTE) / TCP(flags="S", options=[("NOP", None), ("MSS", 1400), ("WScale", 3)])
    )
    assert tcpwin.window_scale(nops, 20) == 3


@settings(max_examples=200, deadline=None)
@given(
    isn=st.integers(0, MOD - 1),
    shift=st.integers(0, 14),
    steps=st.lists(
        st.tuples(st.integers(0, 200_000), st.integers(0, 300_000), st.integers(0, 0xFFFF), st.booleans()),
        max_size=30,
    ),
)
def test_edges_never_move_left_and_always_allow_the_queue(
    isn: int, shift: int, steps: list[tuple[int, int, int, bool]]
) -> None:
    """Whatever the sender reads and the receiver acknowledges and offers: every announced edge is at
    most the flow's own, and a lowered one is at or right of the last one announced and at least Q past
    the ACK (so the flow never stalls on the bound); only the receiver itself moves its edge left."""
    w = WindowBound(Q)
    handshake(w, isn=isn, local_ws=shift, remote_ws=shift)
    sent = acked = isn + 1
    last = None
    for more, ack_more, window, seen in steps:
        if seen:  # else it passed another way, unseen
            w.sent(out(sent, data=min(more, 60_000)))
        sent += min(more, 60_000)
        acked = min(acked + ack_more, sent)
        packet = back(acked, window)
        got = w.delivering(packet)
        assert checksum_valid(got)
        own = (acked + (window << shift)) % MOD
        announced = edge(got, shift)
        assert (own - announced) % MOD < 1 << 31  # at most the flow's own edge
        if got != packet:  # lowered: never left of the last announced, never below Q past the ACK
            assert last is not None and (announced - last) % MOD < 1 << 31
            assert (announced - acked) % MOD >= Q
        last = announced
