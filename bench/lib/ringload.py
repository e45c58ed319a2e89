"""bench/ring's load, run inside namespace A (`sink` inside B): one TCP stream 10.0.1.1 -> 10.0.2.1 as
fast as it goes, and every EVERY seconds a sample line on stdout: time, the sender's TCP_INFO
(bytes_sent, bytes_retrans, bytes_acked) and the tunnel device's counters of packets ipsecd read
(/proc/net/dev tx_bytes, tx_packets, tx_drop), one after the other within microseconds.

    python ringload.py send DEVICE SECONDS EVERY      (in A)
    python ringload.py sink                            (in B)
"""

import socket
import struct
import sys
import threading
import time

PORT = 5299


def dev_counters(device: str) -> tuple[int, int, int]:
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == device:
                cols = rest.split()
                return int(cols[8]), int(cols[9]), int(cols[11])
    raise SystemExit(f"no device {device}")


def send(device: str, seconds: float, every: float) -> None:
    s = socket.socket()
    s.bind(("10.0.1.1", 0))
    s.connect(("10.0.2.1", PORT))
    chunk = b"\0" * (256 * 1024)
    stop = time.monotonic() + seconds
    base = dev_counters(device)
    print(f"base {base[0]} {base[1]} {base[2]}", flush=True)

    def pump() -> None:
        while time.monotonic() < stop:
            s.sendall(chunk)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    while t.is_alive():
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        tx = dev_counters(device)
        (acked,) = struct.unpack_from("Q", info, 120)
        sent, retrans = struct.unpack_from("QQ", info, 200)
        print(f"{time.monotonic():.6f} {sent} {retrans} {acked} {tx[0]} {tx[1]} {tx[2]}", flush=True)
        time.sleep(every)
    s.close()


def sink() -> None:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("10.0.2.1", PORT))
    ls.listen()
    buf = bytearray(1 << 20)
    while True:
        c, _ = ls.accept()
        while c.recv_into(buf):
            pass
        c.close()


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    else:
        sink()
