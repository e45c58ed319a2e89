"""bench/coldio: what the data plane's per-packet system calls cost on cold caches, the C calls
(`linux/_pktio.c`) against the Python path (IPSEC_TUNNEL_PURE=1's).

Each case runs alone after 50 ms asleep (as an idle ping's hop finds the process), the cases
interleaved and their order rotated from round to round; the median of the rounds, in microseconds,
cold and right after ("again"). The ESP-in-UDP socket's receive (`UdpSocket.recv_batch`) and send
(`send_one`) over loopback UDP sockets of this process; the tunnel device's read and write
(`TunQueue.read`, `write`, virtio-net headers on) over a packet socket pair standing in for the device
(the same Python and C around a read or write system call; the kernel's TUN code is not timed).
Run: `.venv/bin/python bench/coldio.py [--rounds 60]` (no root, no network). See docs/performance.md,
"Idle RTT: the hop's system calls in C".
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable

from ipsec_tunnel.core.gso import VNET_HDR_LEN
from ipsec_tunnel.linux import pktio
from ipsec_tunnel.linux.tun import TunQueue
from ipsec_tunnel.linux.udp import UdpSocket

GAP = 0.05  # seconds asleep before each case
Case = tuple[Callable[[], object], Callable[[], object]]  # (made ready before the sleep, the call timed)


def cases() -> tuple[dict[str, Case], list[object]]:
    """name: (what makes it ready, twice over, before the sleep; the call timed); what to close."""
    native = pktio.available
    if native is None:
        raise SystemExit("the C extension _pktio is not built (make venv)")
    tx = UdpSocket(4, 0, "127.0.0.1")
    rx = {way: UdpSocket(4, 0, "127.0.0.1") for way in ("C", "Python")}
    sink = UdpSocket(4, 0, "127.0.0.1", rcvbuf=1 << 20)
    rx["Python"].io = None
    esp = os.urandom(124)  # an 84-byte ping sealed with AES-GCM: SPI, sequence, IV, padding, ICV

    def queued(sock: UdpSocket) -> Callable[[], object]:
        return lambda: [tx.send("127.0.0.1", sock.port, esp) for _ in range(2)]

    def drain(sock: UdpSocket) -> Callable[[], object]:
        def empty() -> None:
            while sock.recv_batch() is not None:
                pass

        return empty

    def send(way: str) -> Case:
        def one() -> None:
            tx.io = native if way == "C" else None
            tx._one_key = ()  # the control messages and address packed for this way
            tx.send_one("127.0.0.1", sink.port, esp, 0, 64, True, None, None)

        def timed() -> None:
            tx.io = native if way == "C" else None
            tx.send_one("127.0.0.1", sink.port, esp, 0, 64, True, None, None)

        def ready() -> None:
            drain(sink)()
            one()

        return ready, timed

    pairs = {way: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for way in ("C", "Python")}
    queues = {}
    for way, (ours, _kernel) in pairs.items():
        ours.setblocking(False)
        queue = TunQueue.__new__(TunQueue)
        queue.fd, queue.vnet, queue._size = ours.fileno(), True, 65536 + VNET_HDR_LEN
        queue.io = native if way == "C" else None
        queue._buf = bytearray(queue._size)
        queues[way] = queue
    frame = bytes(VNET_HDR_LEN) + bytes([0x45, 0, 0, 84]) + os.urandom(80)
    packet = frame[VNET_HDR_LEN:]

    def written(way: str) -> Callable[[], object]:
        kernel = pairs[way][1]

        def empty() -> None:
            kernel.setblocking(False)
            try:
                while kernel.recv(70000):
                    pass
            except BlockingIOError:
                pass

        return empty

    def frames(kernel: socket.socket) -> Callable[[], object]:
        return lambda: [kernel.send(frame) for _ in range(2)]

    def writes(queue: TunQueue) -> Callable[[], object]:
        return lambda: queue.write(packet)

    table: dict[str, Case] = {}
    for way in ("C", "Python"):
        table[f"UdpSocket.recv_batch, {way}"] = (queued(rx[way]), rx[way].recv_batch)
        table[f"UdpSocket.send_one, {way}"] = send(way)
        kernel, queue = pairs[way][1], queues[way]
        table[f"TunQueue.read, {way}"] = (frames(kernel), queue.read)
        table[f"TunQueue.write, {way}"] = (written(way), writes(queue))
    closing: list[object] = [tx, sink, *rx.values(), *(s for pair in pairs.values() for s in pair)]
    return table, closing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    rounds = parser.parse_args().rounds
    table, closing = cases()
    names = list(table)
    cold: dict[str, list[float]] = {name: [] for name in names}
    warm: dict[str, list[float]] = {name: [] for name in names}
    try:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                ready, call = table[name]
                ready()
                time.sleep(GAP)
                start = time.perf_counter()
                call()
                cold[name].append((time.perf_counter() - start) * 1e6)
                start = time.perf_counter()
                call()
                warm[name].append((time.perf_counter() - start) * 1e6)
    finally:
        for thing in closing:
            thing.close()  # type: ignore[attr-defined]
    print(f"{'after 50 ms asleep, median of ' + str(rounds):48s} {'cold':>8s} {'again':>8s}")
    for name in names:
        print(f"  {name:46s} {statistics.median(cold[name]):6.1f} us {statistics.median(warm[name]):6.1f} us")


if __name__ == "__main__":
    main()
