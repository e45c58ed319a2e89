"""Starting and stopping ipsecd: telling whoever started it that it is ready, or why it is not (the
parent of a daemonized ipsecd through a pipe, systemd through sd_notify(3)); where the log goes; and
`ipsecd --stop`."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from . import devices

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


SYSLOG = "/dev/log"


def _syslog_listens() -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(SYSLOG)
    except OSError:
        return False
    return True


def log_handler(log_file: str | None, foreground: bool, socket_path: Path) -> logging.Handler:
    """Where the log goes: --log-file, else stderr with -f, else syslog, else ipsecd.log beside the
    control socket."""
    from logging.handlers import SysLogHandler

    if log_file:
        Path(log_file).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        return logging.FileHandler(log_file)
    if foreground:
        return logging.StreamHandler(sys.stderr)
    if _syslog_listens():
        return SysLogHandler(address=SYSLOG)
    fallback = socket_path.with_name("ipsecd.log")
    fallback.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    print(f"ipsecd: no syslog at {SYSLOG}: logging to {fallback}", file=sys.stderr)
    return logging.FileHandler(fallback)


def stop(pid_path: Path, timeout: float = 15.0) -> int:
    """`ipsecd --stop`: SIGTERM to the ipsecd holding `pid_path`, wait for it, remove its devices."""
    try:
        fd = os.open(pid_path, os.O_RDONLY)
    except FileNotFoundError:
        fd = -1
    if fd >= 0:
        try:
            pid = int(os.read(fd, 32).decode(errors="replace").strip() or 0)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: a daemon runs
                if pid > 0:
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            print(f"ipsecd: pid {pid} did not stop within {timeout:.0f} s", file=sys.stderr)
                            return 1
                        time.sleep(0.05)
        except (OSError, ValueError) as exc:
            print(f"ipsecd: cannot stop the daemon of {pid_path}: {exc}", file=sys.stderr)
            return 1
        finally:
            os.close(fd)
    for name in devices.remove_leftover(devices.leftover()):
        print(f"ipsecd: removed {name}", file=sys.stderr)
    return 0
