"""ipsecd: what `modprobe ipsec` was. Creates the inactive base device ipsec0, restores stored SAs and
tunnels, serves ipsecadm on the control socket and moves packets until SIGTERM. The devices outlive it
(daemon.devices): `ipsecd --stop` stops it and removes them."""

from __future__ import annotations

import argparse
import fcntl
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from .. import __version__
from ..control.protocol import DEFAULT_SOCKET
from ..core import framing, ringaqm
from ..core.engine import Engine
from ..core.tunnel import BASE_DEVICE
from ..linux import sched
from ..linux.qdisc import DEFAULT_QDISC, KINDS, Qdisc
from .dataplane import (
    BATCH_PACKETS,
    MAX_TURN_YIELD_US,
    NAT_T_PORT,
    READ_AHEAD,
    TUN_READ_AHEAD,
    AqmOptions,
    DataPlane,
    OffloadOptions,
)
from .devices import PersistentDevices
from .ike_io import start_ike
from .ike_runner import IKE_PORT
from .kernel import SOCKET_BUFFER, LinuxKernel
from .lifecycle import Starter, daemonize, log_handler, notify
from .lifecycle import stop as stop_daemon
from .manager import Manager
from .paths import check_directory, open_private
from .server import ControlServer, answering
from .spin import MAX_SPIN_US, MAX_WARM_US, MIN_WARM_US
from .state import DEFAULT_DIR, StateError, Store

log = logging.getLogger("ipsecd")

DEFAULT_PIDFILE = "/run/ipsec-tunnel/ipsecd.pid"
DEFAULT_SPIN_US = 300  # a wake-up from sleep costs more than this much polling under load
DEFAULT_WARM_LOOPBACK = True  # --warm-loopback: with the socket calls in C, idle RTT 10-30% lower
DEFAULT_WARM_US = 2000  # a ping every 50 ms: RTT 5-27% below 5000 for 1-4 points more of a core
AQM_KINDS = ("codel", "none")
DEFAULT_AQM = "none"  # CoDel costs 5-9% CPU per GB here, for a loaded RTT gain within the noise
SEND_ORDERS = ("sparse", "fifo")
DEFAULT_SEND_ORDER = "sparse"  # a ping or keystroke read among bulk super-packets is sealed first
DEFAULT_AQM_TARGET_MS = 1.0  # well below RFC 8289's 5 ms: the paths here are LAN-short (ipsecd(8), Queues)
DEFAULT_AQM_INTERVAL_MS = 20.0  # RFC 8289 §4.3 sizes it to a worst-case RTT: 100 ms on the Internet
DEFAULT_DEVICE_AQM = "off"  # --device-aqm (core/ringaqm.py): see docs/performance.md for why
DEFAULT_NICE = 0  # the scheduling priority of the daemon (setpriority(2)); below 0: ahead of applications
DEFAULT_SCHED_SLICE_US = 400  # --sched-slice: idle RTT 9-26% lower, Mbit/s unchanged (docs/performance.md)
DEFAULT_TCP_QUEUE = 0  # --tcp-queue (core/tcpwin.py): off
DEFAULT_FLOW_QUEUES = "on"  # --flow-queues (core/steer.py): loaded p99 below the peers' (docs/performance.md)
DEFAULT_TURN_YIELD_US = 120  # --turn-yield-us: no loaded ping held for a 4 ms tick (docs/performance.md)
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
    p.add_argument(
        "--ike-port", type=int, default=IKE_PORT, help="IKEv2 port to listen on (default 500; 0: no IKE)"
    )
    p.add_argument("--ike-keys-for-test", metavar="FILE", help=argparse.SUPPRESS)  # tests only: keys to FILE
    p.add_argument(
        "--log-file",
        default=None,
        help="log to this file (default: syslog; stderr with -f; beside the socket without syslog)",
    )
    p.add_argument(
        "--stop",
        action="store_true",
        help="stop the ipsecd of this --socket/--pidfile (SIGTERM) and remove the tunnel devices it left "
        "in this network namespace, then exit",
    )
    p.add_argument(
        "--remove-devices-on-exit",
        action="store_true",
        help="remove the tunnel devices when stopping (default: keep them, with their addresses and "
        "routes, for the next ipsecd)",
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
        default=OffloadOptions.tso,
        help="let tunnel devices hand over TCP/UDP super-packets (TSO/USO) and split them here "
        f"(default {'on' if OffloadOptions.tso else 'off'}; off: the kernel segments them)",
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
        default=OffloadOptions.txqueuelen,
        help="transmit queue length of the tunnel devices "
        f"(default {OffloadOptions.txqueuelen}; 0: the kernel's)",
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
    queues.add_argument(
        "--read-ahead",
        type=_read_ahead,
        default=READ_AHEAD,
        metavar="BYTES",
        help=f"bytes an outer socket is read ahead of decryption, so a small datagram behind a bulk "
        f"backlog is opened first (default {READ_AHEAD}; suffixes k, m; 0: off)",
    )
    queues.add_argument(
        "--tun-read-ahead",
        type=_read_ahead,
        default=TUN_READ_AHEAD,
        metavar="BYTES",
        help=f"bytes a tunnel device is read ahead of encryption, so a small packet behind a bulk "
        f"backlog is sealed first (default {TUN_READ_AHEAD}: off; suffixes k, m; e.g. 1m)",
    )
    queues.add_argument(
        "--send-order",
        choices=SEND_ORDERS,
        default=DEFAULT_SEND_ORDER,
        help=f"order in which a batch read from a tunnel device is sealed (default {DEFAULT_SEND_ORDER}; "
        "sparse: flows with at most 1514 bytes in the batch first, as fq_codel; fifo: as read)",
    )
    queues.add_argument(
        "--aqm",
        choices=AQM_KINDS,
        default=DEFAULT_AQM,
        help=f"active queue management of what the outer sockets received (default {DEFAULT_AQM}; codel: "
        "CoDel, RFC 8289, on the time each datagram waited there; TCP packets get ECN CE or are dropped)",
    )
    queues.add_argument(
        "--aqm-target",
        type=_milliseconds,
        default=DEFAULT_AQM_TARGET_MS,
        metavar="MS",
        help=f"CoDel's target: the standing queue delay to keep to (default {DEFAULT_AQM_TARGET_MS:g} ms)",
    )
    queues.add_argument(
        "--aqm-interval",
        type=_milliseconds,
        default=DEFAULT_AQM_INTERVAL_MS,
        metavar="MS",
        help=f"CoDel's interval: how long the delay may stay above target before a drop or mark "
        f"(default {DEFAULT_AQM_INTERVAL_MS:g} ms)",
    )
    queues.add_argument(
        "--device-aqm",
        type=_device_aqm,
        default=DEFAULT_DEVICE_AQM,
        metavar="off|codel[:TARGET_MS/INTERVAL_MS]",
        help=f"CoDel (RFC 8289) on what the tunnel devices' rings held, judged by the sojourn of the "
        "bulk TCP flow's packets (their timestamps): its packets get ECN CE or lose one segment, so the "
        f"sender's window shrinks (default {DEFAULT_DEVICE_AQM}; codel: "
        f"{ringaqm.TARGET * 1e3:g}/{ringaqm.INTERVAL * 1e3:g} ms)",
    )
    queues.add_argument(
        "--nice",
        type=_nice,
        default=DEFAULT_NICE,
        metavar="N",
        help="scheduling priority of the daemon, -20 (first) to 19 (last): below 0, packets wait less "
        f"for the CPU behind the applications they carry (default {DEFAULT_NICE}: the kernel's)",
    )
    queues.add_argument(
        "--tcp-queue",
        type=_tcp_queue,
        default=DEFAULT_TCP_QUEUE,
        metavar="BYTES",
        help="the most bytes one local TCP sender may have waiting in a tunnel device's ring: the window "
        "in the ACKs the tunnel delivers to it is lowered to that (k, m suffixes; at least 64k; "
        f"default {DEFAULT_TCP_QUEUE}: off)",
    )
    queues.add_argument(
        "--flow-queues",
        choices=("on", "off"),
        default=DEFAULT_FLOW_QUEUES,
        help="bulk flows apart: two queues on each tunnel device and a second socket on each ESP-in-UDP "
        "port for the other flows, served first and between the bulk's chunks "
        f"(default {DEFAULT_FLOW_QUEUES})",
    )
    queues.add_argument(
        "--turn-yield-us",
        type=_turn_yield_us,
        default=DEFAULT_TURN_YIELD_US,
        metavar="US",
        help="while sparse flows are live, a bulk turn gives the CPU to anything else runnable at least this "
        "often, so that a packet another process on the same CPU has to pass on does not wait for the "
        f"kernel's tick (default {DEFAULT_TURN_YIELD_US}; 0: never; at most {MAX_TURN_YIELD_US})",
    )
    queues.add_argument(
        "--sched-slice",
        type=_sched_slice,
        default=None,
        metavar="US",
        help="the CPU scheduler's slice for the daemon in microseconds "
        f"({sched.MIN_SLICE_US}-{sched.MAX_SLICE_US}; Linux 6.12 or later): shorter than the kernel's, a "
        "woken data plane goes ahead of the applications on the same CPU sooner, at the same share of "
        f"the CPU (default {DEFAULT_SCHED_SLICE_US}; 0: the kernel's)",
    )
    p.add_argument(
        "--spin-us",
        type=_spin_us,
        default=DEFAULT_SPIN_US,
        help="after each burst of packets keep polling, yielding the CPU to anything runnable, this many "
        f"microseconds before sleeping (default {DEFAULT_SPIN_US}; 0: sleep at once; at most {MAX_SPIN_US})",
    )
    p.add_argument(
        "--warm-us",
        type=_warm_us,
        default=DEFAULT_WARM_US,
        help="while traffic flows (a packet within the last second), wake at least this often and run one "
        "packet through a private SA, never sent, so that the next packet finds the data path warm "
        f"(default {DEFAULT_WARM_US}; 0: off; else {MIN_WARM_US} to {MAX_WARM_US})",
    )
    p.add_argument(
        "--warm-loopback",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_WARM_LOOPBACK,
        help="over ESP-in-UDP, the warm rehearsal sends its datagram to itself through a UDP socket of its "
        "own on 127.0.0.1, so that the socket code is warm too "
        f"(default {'on' if DEFAULT_WARM_LOOPBACK else 'off'})",
    )
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="least severe messages logged (default: info)",
    )  # fmt: skip
    p.add_argument("--version", action="version", version=f"ipsecd {__version__}")
    args = p.parse_args(argv)
    if args.aqm_target >= args.aqm_interval:
        p.error(f"--aqm-target ({args.aqm_target:g} ms) must be below --aqm-interval "
                f"({args.aqm_interval:g} ms)")  # fmt: skip
    return args


def _device_aqm(text: str) -> AqmOptions | None:
    """--device-aqm: None for off, else CoDel's target and interval."""
    try:
        times = ringaqm.parse_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return None if times is None else AqmOptions(target=times[0], interval=times[1])


def _milliseconds(text: str) -> float:
    """A time in milliseconds, above 0 and at most 10 s."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time in milliseconds: {text!r}") from None
    if not 0 < value <= 10_000:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text}: must be above 0 and at most 10000 ms")
    return value


def _bytes(text: str) -> int:
    """A size in bytes, with a k or m suffix (powers of 1024)."""
    scale = {"k": 1 << 10, "m": 1 << 20}.get(text[-1:].lower(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}")
    return int(digits) * scale


def _buffer_size(text: str) -> int:
    """A socket buffer size: bytes, or with a k or m suffix (powers of 1024); 64 KiB to 256 MiB."""
    size = _bytes(text)
    if not (64 << 10) <= size <= (256 << 20):
        raise argparse.ArgumentTypeError(f"{text}: must be between 64k and 256m")
    return size


def _optional_size(text: str, low: int, high: int) -> int:
    """A size in bytes (k or m suffix): 0 (off), or `low` to `high`."""
    size = _bytes(text)
    if size and not low <= size <= high:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 (off) or between {_kib(low)} and {_kib(high)}")
    return size


def _kib(size: int) -> str:
    return f"{size >> 20}m" if size >= 1 << 20 and not size % (1 << 20) else f"{size >> 10}k"


def _read_ahead(text: str) -> int:
    """A read-ahead in bytes: 0 (off), or 16 KiB to 64 MiB, with a k or m suffix (powers of 1024)."""
    return _optional_size(text, 16 << 10, 64 << 20)


def _nice(text: str) -> int:
    """A nice value, -20 to 19 (setpriority(2))."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not -20 <= value <= 19:
        raise argparse.ArgumentTypeError(f"{value} is not within -20 to 19")
    return value


def prioritize(nice: int) -> str | None:
    """Run this process's thread at `nice` (setpriority(2); 0 leaves the priority alone); why not, in
    one line, or None."""
    if not nice:
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        return f"cannot set the scheduling priority to {nice}: {exc.strerror}"
    return None


def _tcp_queue(text: str) -> int:
    """A bound in bytes: 0 (off), or 64 KiB to 1 GiB, with a k or m suffix (powers of 1024)."""
    return _optional_size(text, 64 << 10, 1 << 30)


def _sched_slice(text: str) -> int:
    """A scheduler slice in microseconds: 0 (the kernel's) or MIN_SLICE_US to MAX_SLICE_US."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number of microseconds: {text!r}")
    value = int(text)
    if value and not sched.MIN_SLICE_US <= value <= sched.MAX_SLICE_US:
        raise argparse.ArgumentTypeError(
            f"{value} is not 0 (the kernel's) or within {sched.MIN_SLICE_US} to {sched.MAX_SLICE_US}"
        )
    return value


def _us_up_to(limit: int) -> Callable[[str], int]:
    """A parser of a number of microseconds from 0 to `limit`."""

    def parse(text: str) -> int:
        if not text.isdigit() or not 0 <= int(text) <= limit:
            raise argparse.ArgumentTypeError(f"not a number of microseconds from 0 to {limit}: {text!r}")
        return int(text)

    return parse


_spin_us = _us_up_to(MAX_SPIN_US)  # a busy-polling budget
_turn_yield_us = _us_up_to(MAX_TURN_YIELD_US)  # a yield period (0: never)


def _warm_us(text: str) -> int:
    """A warm period in microseconds: 0 (off), or MIN_WARM_US to MAX_WARM_US."""
    if not text.isdigit() or not (int(text) == 0 or MIN_WARM_US <= int(text) <= MAX_WARM_US):
        raise argparse.ArgumentTypeError(
            f"not 0 or a number of microseconds from {MIN_WARM_US} to {MAX_WARM_US}: {text!r}"
        )
    return int(text)


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
        check_directory(path.parent, "pid file directory")
        self.fd = open_private(path, os.O_RDWR | os.O_CREAT, 0o644)
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


def main(argv: list[str] | None = None) -> int:
    """Run ipsecd; returns the exit status."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("ipsecd: must run as root (it creates network devices and raw sockets)", file=sys.stderr)
        return 1
    try:
        handler = log_handler(args.log_file, args.foreground or args.stop, Path(args.socket))
    except OSError as exc:
        print(f"ipsecd: cannot log: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=args.log_level.upper(),
        handlers=[handler],
        format=("%(asctime)s " if isinstance(handler, logging.FileHandler) else "")
        + "ipsecd[%(process)d]: %(levelname)s %(message)s",
    )
    pid_path = (
        Path(args.pidfile)
        if args.pidfile
        else (
            Path(DEFAULT_PIDFILE) if args.socket == DEFAULT_SOCKET else Path(args.socket).with_suffix(".pid")
        )
    )
    if args.stop:
        return stop_daemon(pid_path)
    if answering(args.socket):  # never take over (or later remove) another daemon's socket
        print(f"ipsecd: another ipsecd answers on {args.socket}", file=sys.stderr)
        return 1
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
    starter = Starter(None)
    if not args.foreground:
        starter = daemonize()  # the caller waits until the daemon says it is ready, or why not
        pidfile.write()  # flock survives fork: the lock is on the open file
        store.claim()
    else:
        pidfile.write()
    try:
        return _serve(args, store, starter)
    except Exception as exc:
        log.error("%s", exc)
        print(f"ipsecd: {exc}", file=sys.stderr)
        starter.failed(f"ipsecd: {exc}")
        return 1
    finally:
        store.close()
        pidfile.release()


def offloads(args: argparse.Namespace) -> OffloadOptions:
    """The offloads the command line asks for."""
    if args.no_offload:
        return OffloadOptions.none()
    return OffloadOptions(
        tso=args.tso,
        coalesce=not args.no_coalesce,
        gso=not args.no_gso,
        gro=not args.no_gro,
        txqueuelen=max(0, args.txqueuelen),
    )


def aqm(args: argparse.Namespace) -> AqmOptions | None:
    """The AQM the command line asks for (None: none)."""
    if args.aqm == "none":
        return None
    return AqmOptions(target=args.aqm_target / 1e3, interval=args.aqm_interval / 1e3)


def _serve(args: argparse.Namespace, store: Store, starter: Starter) -> int:
    if (why := prioritize(args.nice)) is not None:
        log.warning("%s (--nice)", why)
    slice_us = DEFAULT_SCHED_SLICE_US if args.sched_slice is None else args.sched_slice
    if slice_us and (why := sched.set_slice(slice_us)) is not None:
        # asked for: a warning; the default on an older kernel: a note
        log.log(logging.INFO if args.sched_slice is None else logging.WARNING, "%s (--sched-slice)", why)
    engine = Engine()
    plane = DataPlane(
        engine,
        kernel=LinuxKernel(qdisc=Qdisc(args.qdisc), socket_buffer=args.socket_buffer),
        udp_port=args.udp_port,
        offloads=offloads(args),
        spin=args.spin_us / 1e6,
        warm=args.warm_us / 1e6,
        warm_loopback=args.warm_loopback,
        batch_packets=args.batch,
        aqm=aqm(args),
        sparse_first=args.send_order == "sparse",
        read_ahead=args.read_ahead,
        tun_read_ahead=args.tun_read_ahead,
        tcp_queue=args.tcp_queue,
        flow_queues=args.flow_queues == "on",
        turn_yield=args.turn_yield_us / 1e6,
        device_aqm=args.device_aqm,
    )
    plane.devices = devices = PersistentDevices(plane, remove_on_exit=args.remove_devices_on_exit)
    server = None
    ike = None
    try:
        plane.open_transports()
        plane.devices.create(BASE_DEVICE)
        manager = Manager(engine, store, plane.devices)
        ike = start_ike(
            plane, manager, store, args.ike_port, args.ike_keys_for_test
        )  # IKE's own SAs go before the restore
        manager.restore()
        handle: Callable[[str, dict[str, Any]], Any] = manager.handle
        if ike is not None:
            ike.runner.restore()
            handle = ike.handler(manager.handle)
        server = ControlServer(args.socket, handle, plane.watch, plane.unwatch, plane.writable)

        def stop(signum: int, frame: FrameType | None) -> None:
            plane.running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        devices.prune(t.name for t in engine.tunnels)  # devices of tunnels no longer stored
        devices.on_gone, devices.on_renamed = manager.device_gone, manager.device_renamed
        devices.follow_links()
        log.info(
            "ipsecd %s ready: %s created, control socket %s, framing in %s",
            __version__, BASE_DEVICE, args.socket, framing.NAME,
        )  # fmt: skip
        starter.ready()
        notify("READY=1")
        # The data plane makes no reference cycles of its own: what is loaded by now is kept out of the
        # cycle collector, which runs less often (every GC_THRESHOLD new containers rather than 700).
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 20)

        def every() -> None:
            server.expire_idle() if server else None
            manager.refresh_mtus()
            if ike is not None:
                ike.runner.every_second()

        plane.run(every, idle=lambda: store.reserve_ahead(list(engine.sad)))  # commits off packets' path
        if ike is not None:
            ike.runner.shutdown()
        notify("STOPPING=1")
        kept = "removing" if args.remove_devices_on_exit else "keeping"
        log.info("stopping: recording sequence positions, %s the devices", kept)
        store.save_exact(list(engine.sad))
        return 0
    finally:
        if server is not None:
            server.close()
        if ike is not None:
            ike.close()
        plane.close()


if __name__ == "__main__":
    sys.exit(main())
