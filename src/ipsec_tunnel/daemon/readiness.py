"""Telling whoever started ipsecd that it is ready, or why it is not: the parent of a daemonized ipsecd
(through a pipe) and systemd (sd_notify(3), through $NOTIFY_SOCKET)."""

from __future__ import annotations

import os
import socket
import sys

READY = b"READY\n"


def notify(state: str) -> bool:
    """Send `state` ("READY=1", "STOPPING=1", ...) to systemd if it asked ($NOTIFY_SOCKET, sd_notify(3));
    False when nobody asked or the message could not be sent."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path  # "@": an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


class Starter:
    """The daemon's side of the start-up pipe: says once that it is ready or why it failed."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def _say(self, data: bytes) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.write(fd, data)
        except OSError:  # the parent is gone: nobody to tell
            pass
        finally:
            os.close(fd)

    def ready(self) -> None:
        """Start-up succeeded: the parent exits 0."""
        self._say(READY)

    def failed(self, message: str) -> None:
        """Start-up failed with `message` (one line): the parent prints it and exits 1."""
        self._say(message.rstrip("\n").encode(errors="replace") + b"\n")


def wait_for_child(fd: int, child: int) -> int:
    """In the parent: read what the daemon says through the pipe and return the exit status for it."""
    chunks = []
    while True:
        data = os.read(fd, 4096)
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    try:
        os.waitpid(child, 0)
    except ChildProcessError:
        pass
    said = b"".join(chunks)
    if said == READY:
        return 0
    text = said.decode(errors="replace").strip() or "ipsecd: stopped during start-up (see its log)"
    print(text, file=sys.stderr)
    return 1


def daemonize() -> Starter:
    """Fork into the background (double fork, new session, stdio on /dev/null). The original process
    stays until the daemon reports through the returned `Starter`, then exits 0 or 1 with its message."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child:
        os.close(write_fd)
        os._exit(wait_for_child(read_fd, child))
    os.close(read_fd)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.chdir("/")
    return Starter(write_fd)
