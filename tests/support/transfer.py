"""A TCP transfer for tests: `recv PORT` and `send HOST PORT NBYTES`, each printing bytes and SHA-256."""

from __future__ import annotations

import hashlib
import os
import socket
import sys

CHUNK = 1 << 16


def receive(port: int, bind: str = "0.0.0.0") -> tuple[int, str]:
    """Accept one connection on `port`, read to EOF; (bytes, sha256 hex)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((bind, port))
        srv.listen(1)
        print("listening", flush=True)
        conn, _ = srv.accept()
        digest = hashlib.sha256()
        total = 0
        with conn:
            while data := conn.recv(CHUNK):
                digest.update(data)
                total += len(data)
    return total, digest.hexdigest()


def send(host: str, port: int, nbytes: int) -> tuple[int, str]:
    """Send `nbytes` of random data to host:port; (bytes, sha256 hex)."""
    digest = hashlib.sha256()
    block = os.urandom(CHUNK)
    sent = 0
    with socket.create_connection((host, port), timeout=120) as conn:
        while sent < nbytes:
            chunk = block[: min(CHUNK, nbytes - sent)]
            block = hashlib.sha512(block[:64]).digest() + block[64:]  # vary the data cheaply
            conn.sendall(chunk)
            digest.update(chunk)
            sent += len(chunk)
    return sent, digest.hexdigest()


def main(argv: list[str]) -> int:
    """Command line entry."""
    if argv[:1] == ["recv"]:
        total, hexdigest = receive(int(argv[1]), *(argv[2:3]))
    elif argv[:1] == ["send"]:
        total, hexdigest = send(argv[1], int(argv[2]), int(argv[3]))
    else:
        print("usage: transfer recv PORT [BIND] | send HOST PORT NBYTES", file=sys.stderr)
        return 2
    print(f"{total} {hexdigest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
