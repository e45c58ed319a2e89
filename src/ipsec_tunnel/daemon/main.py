"""ipsecd: what `modprobe ipsec` was. Creates the inactive base device ipsec0, restores stored SAs and
tunnels, serves ipsecadm on the control socket and moves packets until SIGTERM."""

from __future__ import annotations

import argparse
import fcntl
import gc
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from .. import __version__
from ..control.protocol import DEFAULT_SOCKET
from ..core.engine import Engine
from ..core.tunnel import BASE_DEVICE
from ..linux.qdisc import DEFAULT_QDISC, KINDS, Qdisc
from .dataplane import BATCH_PACKETS, NAT_T_PORT, SOCKET_BUFFER, DataPlane, Offloads
from .manager import Manager
from .server import ControlServer
from .state import DEFAULT_DIR, StateError, Store

log = logging.getLogger("ipsecd")

DEFAULT_PIDFILE = "/run/ipsec-tunnel/ipsecd.pid"
DEFAULT_SPIN_US = 300  # a wake-up from sleep costs more than this much polling under load
GC_THRESHOLD = 50_000  # new container objects between collections of the youngest generation


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="ipsecd", description="Userspace IPsec ESP tunnel daemon (ipsec-tunnel)."
    )
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    p.add_argument(
        "--socket",
        default=os.environ.get("IPSEC_TUNNEL_SOCKET", DEFAULT_SOCKET),
        help=f"control socket path (default {DEFAULT_SOCKET})",
    )
    p.add_argument("--state-dir", default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})")
    p.add_argument(
        "--pidfile", default=None, help=f"pid file (default {DEFAULT_PIDFILE}, or beside --socket)"
    )
    p.add_argument(
        "--udp-port", type=int, default=NAT_T_PORT, help="ESP-in-UDP port to listen on (default 4500)"
    )
    off = p.add_argument_group(
        "offloads", "on by default where the kernel supports them; each falls back by itself"
    )
    off.add_argument(
        "--no-offload",
        action="store_true",
        help="no offload at all: every packet read, sent and written alone",
    )
    off.add_argument(
        "--tso",
        action=argparse.BooleanOptionalAction,
        default=Offloads.tso,
        help="let tunnel devices hand over TCP/UDP super-packets (TSO/USO) and split them here "
        f"(default {'on' if Offloads.tso else 'off'}; off: the kernel segments them)",
    )
    off.add_argument(
        "--no-gso", action="store_true", help="send ESP-in-UDP one datagram at a time, no UDP GSO"
    )
    off.add_argument(
        "--no-gro", action="store_true", help="receive ESP-in-UDP one datagram at a time, no UDP GRO"
    )
    off.add_argument(
        "--no-coalesce", action="store_true", help="write TCP segments into tunnel devices one at a time"
    )
    off.add_argument(
        "--txqueuelen",
        type=int,
        default=Offloads.txqueuelen,
        help=f"transmit queue length of the tunnel devices (default {Offloads.txqueuelen}; 0: the kernel's)",
    )
    queues = p.add_argument_group("queues", "where packets wait under load (see ipsecd(8), Queues)")
    queues.add_argument(
        "--qdisc",
        choices=KINDS,
        default=DEFAULT_QDISC,
        help=f"root qdisc set on every tunnel device, whatever the host default (default {DEFAULT_QDISC}; "
        "none: leave the host default)",
    )
    queues.add_argument(
        "--socket-buffer",
        type=_buffer_size,
        default=SOCKET_BUFFER,
        metavar="BYTES",
        help=f"receive and send buffer of the outer ESP and ESP-in-UDP sockets (default {SOCKET_BUFFER}; "
        "suffixes k, m)",
    )
    queues.add_argument(
        "--batch",
        type=_batch_size,
        default=BATCH_PACKETS,
        metavar="PACKETS",
        help=f"packets taken from one source (device or socket) before the others get a turn "
        f"(default {BATCH_PACKETS}, 1 to 4096)",
    )
    p.add_argument(
        "--spin-us",
        type=int,
        default=DEFAULT_SPIN_US,
        help="after each burst of packets keep polling, yielding the CPU to anything runnable, this many "
        f"microseconds before sleeping (default {DEFAULT_SPIN_US}; 0: sleep at once)",
    )
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="least severe messages logged (default: info)",
    )  # fmt: skip
    p.add_argument("--version", action="version", version=f"ipsecd {__version__}")
    return p.parse_args(argv)


def _buffer_size(text: str) -> int:
    """A socket buffer size: bytes, or with a k or m suffix (powers of 1024); 64 KiB to 256 MiB."""
    scale = {"k": 1 << 10, "m": 1 << 20}.get(text[-1:].lower(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}")
    size = int(digits) * scale
    if not (64 << 10) <= size <= (256 << 20):
        raise argparse.ArgumentTypeError(f"{text}: must be between 64k and 256m")
    return size


def _batch_size(text: str) -> int:
    """A batch size in packets, 1 to 4096."""
    if not text.isdigit() or not 1 <= int(text) <= 4096:
        raise argparse.ArgumentTypeError(f"not a number of packets from 1 to 4096: {text!r}")
    return int(text)


class PidFile:
    """An exclusively locked pid file: a second ipsecd finds it locked and refuses to start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(self.fd, 32).decode(errors="replace").strip()
            os.close(self.fd)
            raise RuntimeError(f"ipsecd is already running (pid {other or '?'}, lock {path})") from None

    def write(self) -> None:
        """Record this process's pid."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Remove the pid file."""
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)


def _daemonize() -> None:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.chdir("/")


def main(argv: list[str] | None = None) -> int:
    """Run ipsecd; returns the exit status."""
    args = parse_args(argv)
    handlers: list[logging.Handler] = []
    if args.foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    else:
        try:
            from logging.handlers import SysLogHandler

            handlers.append(SysLogHandler(address="/dev/log"))
        except OSError:
            handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=args.log_level.upper(),
        handlers=handlers,
        format="ipsecd[%(process)d]: %(levelname)s %(message)s",
    )
    if os.geteuid() != 0:
        print("ipsecd: must run as root (it creates network devices and raw sockets)", file=sys.stderr)
        return 1
    pid_path = (
        Path(args.pidfile)
        if args.pidfile
        else (
            Path(DEFAULT_PIDFILE) if args.socket == DEFAULT_SOCKET else Path(args.socket).with_suffix(".pid")
        )
    )
    try:
        pidfile = PidFile(pid_path)
    except (RuntimeError, OSError) as exc:
        print(f"ipsecd: {exc}", file=sys.stderr)
        return 1
    try:
        store = Store(args.state_dir)
    except StateError as exc:
        print(f"ipsecd: {exc}", file=sys.stderr)
        pidfile.release()
        return 1
    if not args.foreground:
        _daemonize()
        pidfile.write()  # flock survives fork: the lock is on the open file
    else:
        pidfile.write()
    try:
        return _serve(args, store)
    except Exception as exc:
        log.error("%s", exc)
        print(f"ipsecd: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
        pidfile.release()


def offloads(args: argparse.Namespace) -> Offloads:
    """The offloads the command line asks for."""
    if args.no_offload:
        return Offloads.none()
    return Offloads(
        tso=args.tso,
        coalesce=not args.no_coalesce,
        gso=not args.no_gso,
        gro=not args.no_gro,
        txqueuelen=max(0, args.txqueuelen),
    )


def _serve(args: argparse.Namespace, store: Store) -> int:
    engine = Engine()
    plane = DataPlane(
        engine,
        udp_port=args.udp_port,
        offloads=offloads(args),
        spin=max(0, args.spin_us) / 1e6,
        qdisc=Qdisc(args.qdisc),
        socket_buffer=args.socket_buffer,
        batch_packets=args.batch,
    )
    server = None
    try:
        plane.open_transports()
        plane.devices.create(BASE_DEVICE)
        manager = Manager(engine, store, plane.devices)
        manager.restore()
        server = ControlServer(args.socket, manager.handle, plane.watch, plane.unwatch, plane.writable)

        def stop(signum: int, frame: FrameType | None) -> None:
            plane.running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        log.info("ipsecd %s ready: %s created, control socket %s", __version__, BASE_DEVICE, args.socket)
        # The data plane makes no reference cycles of its own: what is loaded by now is kept out of the
        # cycle collector, which runs less often (every GC_THRESHOLD new containers rather than 700).
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 20)

        def every() -> None:
            server.expire_idle() if server else None
            manager.refresh_mtus()

        plane.run(every)
        log.info("stopping: recording sequence positions and removing devices")
        store.save_exact(list(engine.sad))
        return 0
    finally:
        if server is not None:
            server.close()
        plane.close()


if __name__ == "__main__":
    sys.exit(main())
