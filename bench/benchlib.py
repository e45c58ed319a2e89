"""Shared machinery of bench/throughput and bench/scale: the two-namespace topology, the data planes
measured on it (plain veth, ipsecd, strongSwan kernel-libipsec, wireguard-go), one measurement round
(idle ping RTT, one iperf3 TCP stream, the tunnel processes' CPU time) and the summaries.

Topology, built once per data plane so that every plane keeps running while the others are measured:

    namespace A                                    namespace B
    lo 10.0.1.1/32                                 lo 10.0.2.1/32
    veth 192.0.2.1/24  <------------------------>  veth 192.0.2.2/24

Traffic always goes 10.0.1.1 (A) -> 10.0.2.1 (B); each plane decides how 10.0.2.0/24 is reached.
Nothing is sent outside the namespaces made here; everything started is stopped by its pid, and every
namespace and temporary directory is removed, on success, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import ipsec_tunnel
from ipsec_tunnel.control.protocol import decode_response, encode_request
from tests.support.hosts import IpsecHost, tool
from tests.support.netns import Netns, veth_pair

PUB_A, PUB_B = "192.0.2.1", "192.0.2.2"
IN_A, IN_B = "10.0.1.1", "10.0.2.1"
NET_A, NET_B = "10.0.1.0/24", "10.0.2.0/24"
SPI = 0x1000
HZ = os.sysconf("SC_CLK_TCK")

CHARON = "/usr/lib/ipsec/charon"
PLUGIN_DIR = "/usr/lib/ipsec/plugins"
LIBIPSEC = f"{PLUGIN_DIR}/libstrongswan-kernel-libipsec.so"

APT_HINT = "apt-get install -y --no-install-recommends"


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A data plane could not be set up or measured; the message says why."""


# -- prerequisites -------------------------------------------------------------------------------------


def _have(path_or_cmd: str) -> bool:
    return (
        os.path.exists(path_or_cmd) if path_or_cmd.startswith("/") else shutil.which(path_or_cmd) is not None
    )


# group -> (file or command, Debian package)
REQUIREMENTS: dict[str, list[tuple[str, str]]] = {
    "any": [
        ("iperf3", "iperf3"),
        ("tcpdump", "tcpdump"),
        ("ping", "iputils-ping"),
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
    ],
    "strongswan": [
        (CHARON, "strongswan-charon"),
        ("swanctl", "strongswan-swanctl"),
        (LIBIPSEC, "libcharon-extra-plugins"),
        # the openssl plugin (AES-NI, x25519): without it charon has no SHA-1 and does not start
        (f"{PLUGIN_DIR}/libstrongswan-openssl.so", "libstrongswan-standard-plugins"),
    ],
    "wireguard": [("wireguard-go", "wireguard-go"), ("wg", "wireguard-tools")],
}


def check_prerequisites(groups: set[str], prog: str) -> None:
    """Exit with a message naming what is missing: root, /dev/net/tun, or Debian packages."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces, TUN devices, raw sockets)")
    if not os.path.exists("/dev/net/tun"):
        problems.append("/dev/net/tun is missing")
    missing: list[str] = []
    for group in ("any", *sorted(groups)):
        for thing, package in REQUIREMENTS.get(group, []):
            if not _have(thing) and package not in missing:
                missing.append(package)
    if missing:
        problems.append(
            f"missing Debian packages: {' '.join(missing)}\n"
            f"  install them with:  {APT_HINT} {' '.join(missing)}\n"
            "  (keep --no-install-recommends: without it wireguard-tools pulls in a kernel image)\n"
            "  or leave a peer out, e.g. --skip strongswan,wireguard"
        )
    if problems:
        for p in problems:
            print(f"{prog}: {p}", file=sys.stderr)
        sys.exit(2)


def versions() -> dict[str, str]:
    """Versions of the programs measured, the kernel and the CPU count, for the report."""
    pkgs = [
        "iperf3",
        "strongswan-charon",
        "libcharon-extra-plugins",
        "libstrongswan-standard-plugins",
        "wireguard-go",
        "python3",
    ]
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}=${Version}\\n", *pkgs],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {
        "ipsec-tunnel": ipsec_tunnel.__version__,
        "python": sys.version.split()[0],
        **found,
        "kernel": os.uname().release,
        "cpus": str(os.cpu_count()),
    }


# -- clean-up --------------------------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived: unwind and clean up as for Ctrl-C."""


def raise_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into an exception, as Ctrl-C is, so that clean-up code runs."""

    def raise_it(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_it)


def shield_cleanup() -> None:
    """Ignore Ctrl-C, SIGTERM and SIGHUP from now on, so that a second one cannot cut the clean-up short."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM `proc` (by its pid, via Popen), then SIGKILL it if it does not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def delete_namespace(ns: Netns) -> None:
    """Stop what runs inside `ns` (only this script starts processes there), then delete it."""
    for proc in ns._procs:
        stop_process(proc)
    if ns._created:
        pids = subprocess.run(
            ["ip", "netns", "pids", ns.name], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:  # stragglers: children of what we started (ping, swanctl ...)
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    ns.delete()


# -- topology --------------------------------------------------------------------------------------------


class Pair:
    """Namespaces A and B joined by a veth (outer network), with the inner addresses on their loopbacks."""

    def __init__(self, a: Netns, b: Netns) -> None:
        self.a = a
        self.b = b
        self.veth = ("", "")

    def build(self) -> None:
        for ns, inner in ((self.a, IN_A), (self.b, IN_B)):
            ns.create()
            # no IPv6 chatter (router solicitations, MLD) on the measured link
            ns.check("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
            ns.check(["ip", "addr", "add", f"{inner}/32", "dev", "lo"])
        self.veth = veth_pair(self.a, self.b, f"{PUB_A}/24", f"{PUB_B}/24")
        for _ in range(40):
            if self.a.run(["ping", "-c1", "-W1", PUB_B]).returncode == 0:
                return
            time.sleep(0.25)
        raise BenchError(f"veth {PUB_A} <-> {PUB_B} does not pass traffic")

    def close(self) -> None:
        for ns in (self.a, self.b):
            delete_namespace(ns)


def pid_of(proc: subprocess.Popen[Any], comm: str, timeout: float = 5.0) -> int:
    """The pid of `proc` once it has exec'd into `comm` ("ip netns exec", sh and env all exec)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{proc.pid}/comm").read_text().strip() == comm[:15]:
                return proc.pid
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise BenchError(f"{comm} did not start (exit status {proc.poll()})")


def wait_for(
    what: str,
    ready: Callable[[], bool],
    proc: subprocess.Popen[Any] | None = None,
    timeout: float = 15.0,
    logfile: Path | None = None,
) -> None:
    """Poll `ready` until true; BenchError (with the tail of `logfile`) on timeout or if `proc` exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            tail = ""
            if logfile is not None and logfile.exists():
                tail = "\n    " + "\n    ".join(logfile.read_text(errors="replace").splitlines()[-10:])
            raise BenchError(f"{what}: not ready after {timeout:g} s{tail}")
        time.sleep(0.1)


# -- data planes ---------------------------------------------------------------------------------------


class Plane:
    """One data plane between A and B. Subclasses fill in `setup` (the namespaces exist and are joined)."""

    group = ""  # "veth", "ours", "strongswan", "wireguard"
    encap_filter = ""  # tcpdump filter the tunnelled traffic matches on the veth ("" = cleartext plane)

    def __init__(self, key: str, label: str, work: Path, cipher: str | None = None) -> None:
        self.key = key
        self.label = label
        self.cipher = cipher  # "gcm" or "cbc": pairs ours with the peer using the same algorithms
        self.dir = work / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pair = self.make_pair()
        self.notes: dict[str, Any] = {}
        self.error: str | None = None

    def make_pair(self) -> Pair:
        return Pair(Netns(f"bn{self.key[:6]}A"), Netns(f"bn{self.key[:6]}B"))

    @property
    def a(self) -> Netns:
        return self.pair.a

    @property
    def b(self) -> Netns:
        return self.pair.b

    def setup(self) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The tunnel processes whose CPU time counts (both ends)."""
        return []

    def stop(self) -> None:
        """Stop the tunnel processes gracefully (before the namespaces go)."""

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.pair.close()

    def open(self) -> None:
        """Build the topology, the tunnel, an iperf3 server in B; check the veth carries what it should."""
        self.pair.build()
        self.setup()
        log_path = self.dir / "iperf3-server.log"
        with open(log_path, "w") as out:
            self.b.popen(["iperf3", "-s", "-B", IN_B], stdout=out, stderr=subprocess.STDOUT)
        wait_for(
            "iperf3 server", lambda: f"{IN_B}:5201" in self.b.run(["ss", "-ltnH"]).stdout, logfile=log_path
        )
        for _ in range(20):  # the tunnel may take a moment (IKE, handshake)
            if self.a.run(["ping", "-c1", "-W1", "-I", IN_A, IN_B]).returncode == 0:
                break
            time.sleep(0.25)
        else:
            raise BenchError(f"no ping {IN_A} -> {IN_B} through {self.label}")
        self.notes["capture"] = self.capture_check()

    def capture_check(self) -> dict[str, int]:
        """Ping through the plane while capturing A's veth: the tunnel must carry every packet, in the clear
        only for the plain veth."""
        pcap = self.dir / "veth.pcap"
        capture = ["tcpdump", "--immediate-mode", "-Z", "root", "-n", "-U", "-w", str(pcap)]
        capture += ["-i", self.pair.veth[0]]
        proc = self.a.popen(capture, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            proc.stderr.readline()  # "listening on ...": the capture is running
            pinged = self.a.run(["ping", "-q", "-c", "10", "-i", "0.05", "-I", IN_A, IN_B]).stdout
            time.sleep(0.3)
        finally:
            stop_process(proc)
            self.a._procs.remove(proc)

        def count(expr: str) -> int:
            out = subprocess.run(
                ["tcpdump", "-n", "-r", str(pcap), expr], capture_output=True, text=True, check=False
            ).stdout
            return len(out.splitlines())

        counts = {"packets": count(""), "cleartext": count(f"icmp and host {IN_B}")}
        if self.encap_filter:
            # With UDP GSO one captured datagram may carry several ESP packets (the veth passes the
            # super-datagram unsegmented), so the pings' answers count, and only the encapsulation is checked.
            counts["tunnelled"] = count(self.encap_filter)
            if counts["cleartext"] or not counts["tunnelled"] or " 10 received" not in pinged:
                raise BenchError(
                    f"{self.label}: capture check failed on {self.pair.veth[0]}: {counts} "
                    f"(expected 10 answered pings, all through '{self.encap_filter}', none in the clear)"
                )
        elif counts["cleartext"] < 20:
            raise BenchError(f"{self.label}: capture check found no cleartext pings: {counts}")
        return counts


class VethPlane(Plane):
    """No tunnel: routed in the clear over the veth (kernel offloads on). The ceiling."""

    group = "veth"

    def setup(self) -> None:
        self.a.check(["ip", "route", "add", NET_B, "via", PUB_B, "src", IN_A])
        self.b.check(["ip", "route", "add", NET_A, "via", PUB_A, "src", IN_B])


@dataclass(frozen=True)
class OursConfig:
    """An ipsecd tunnel configuration: cipher args for `ipsecadm sa add` and whether ESP goes in UDP."""

    cipher: str  # "gcm" or "cbc"
    udp: bool

    def sa_args(self, keydir: Path) -> list[str]:
        """`ipsecadm sa add` options, with key files written into `keydir` (the same on both hosts)."""
        keydir.mkdir(parents=True, exist_ok=True)
        if self.cipher == "gcm":
            args = ["--cipher=aes-gcm", f"--cipher-keyfile={write_key(keydir / 'gcm.key', 20)}"]
        else:
            args = [
                "--cipher=aes-cbc",
                f"--cipher-keyfile={write_key(keydir / 'cbc.key', 16)}",
                "--digest=sha256",
                f"--digest-keyfile={write_key(keydir / 'sha256.key', 32)}",
            ]
        return [*args, *(["--encap=udp"] if self.udp else [])]

    @property
    def label(self) -> str:
        alg = "AES-128-GCM" if self.cipher == "gcm" else "AES-128-CBC+HMAC-SHA256"
        return f"ipsecd {alg}, {'ESP-in-UDP' if self.udp else 'raw ESP'}"


def write_key(path: Path, size: int) -> Path:
    """A fresh random key file of `size` bytes, mode 0600 (created once, shared by both hosts)."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(size))
    return path


class OursPlane(Plane):
    """ipsecd at both ends, started as the tests start it, configured only with `ipsecadm`."""

    group = "ours"

    def __init__(self, key: str, work: Path, config: OursConfig) -> None:
        self.config = config
        self.work = work
        self.hosts = (IpsecHost(f"{key}-A", work), IpsecHost(f"{key}-B", work))
        super().__init__(key, config.label, work, config.cipher)
        self.encap_filter = "udp port 4500" if config.udp else "ip proto 50"

    def make_pair(self) -> Pair:
        return Pair(self.hosts[0].ns, self.hosts[1].ns)

    def setup(self) -> None:
        for host in self.hosts:
            host.start("--log-level", "warning")
        self.configure()

    def configure(self) -> None:
        """`ipsecadm sa add ... --duplex` and `ipsecadm tunnel add ipsec1` on both hosts; route B's net."""
        sa_args = self.config.sa_args(self.dir / "keys")
        timings = self.notes.setdefault("ipsecadm_s", {})
        for host in self.hosts:
            t = time.monotonic()
            host.adm("sa", "add", f"--spi={SPI:#x}", f"--dst={PUB_B}", f"--src={PUB_A}", *sa_args, "--duplex")
            timings.setdefault("sa_add", []).append(round(time.monotonic() - t, 3))
        for host, local, remote, mine, theirs in (
            (self.hosts[0], PUB_A, PUB_B, IN_A, NET_B),
            (self.hosts[1], PUB_B, PUB_A, IN_B, NET_A),
        ):
            t = time.monotonic()
            host.adm("tunnel", "add", "ipsec1", f"--local={local}", f"--remote={remote}")
            timings.setdefault("tunnel_add", []).append(round(time.monotonic() - t, 3))
            host.sh(f"ip link set ipsec1 up && ip route replace {theirs} dev ipsec1 src {mine}")

    def pids(self) -> list[int]:
        return [h.daemon.pid for h in self.hosts if h.daemon is not None]

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()

    def rss_kib(self) -> list[int]:
        """Resident set size of each ipsecd, KiB."""
        out = []
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]))
        return out


# -- measuring ---------------------------------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` (all its threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def host_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies of the whole machine, from /proc/stat."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(cpu[:8])  # guest time is already counted in user
    return total - cpu[3] - cpu[4], total, cpu[7]


@dataclass
class Run:
    """One measurement round of one plane."""

    run: int
    mbps: float | None = None  # receiver side
    bytes: int = 0
    seconds: float = 0.0
    retransmits: int | None = None
    cpu_s: float | None = None  # tunnel processes, both ends, during the iperf3 run
    cpu_s_per_gb: float | None = None
    rtts_ms: list[float] = field(default_factory=list)
    idle_cpu_pct: float | None = None  # tunnel processes during the ping (mostly idle)
    host_busy_pct: float | None = None
    host_steal_pct: float | None = None
    error: str | None = None


def ping_rtts(ns: Netns, count: int, interval: float) -> list[float]:
    """Round-trip times (ms) of `count` pings IN_A -> IN_B, `interval` s apart."""
    res = ns.run(
        ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", "-I", IN_A, IN_B],
        timeout=count * interval + 10,
    )
    rtts = []
    for line in res.stdout.splitlines():
        if "time=" in line:
            rtts.append(float(line.split("time=")[1].split()[0]))
    return rtts


def measure(plane: Plane, run: int, seconds: float, pings: int, interval: float) -> Run:
    """Idle ping RTT, then one iperf3 TCP stream A -> B for `seconds` with the tunnel's CPU time.
    A failure (a tunnel process gone, iperf3 hanging or failing) is recorded in the run, never raised."""
    r = Run(run)
    try:
        _measure(r, plane, seconds, pings, interval)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        r.error = f"{type(exc).__name__}: {exc}"
    return r


def _measure(r: Run, plane: Plane, seconds: float, pings: int, interval: float) -> None:
    pids = plane.pids()
    p0, w0 = [cpu_ticks(p) for p in pids], time.monotonic()
    r.rtts_ms = ping_rtts(plane.a, pings, interval)
    if pids:
        p1, w1 = [cpu_ticks(p) for p in pids], time.monotonic()
        r.idle_cpu_pct = round((sum(p1) - sum(p0)) / HZ / (w1 - w0) * 100, 2)
    t0, h0 = [cpu_ticks(p) for p in pids], host_ticks()
    iperf = ["iperf3", "-c", IN_B, "-B", IN_A, "-t", f"{seconds:g}", "-J", "--connect-timeout", "5000"]
    res = plane.a.run(iperf, timeout=seconds + 30)
    t1, h1 = [cpu_ticks(p) for p in pids], host_ticks()
    total = h1[1] - h0[1] or 1
    r.host_busy_pct = round((h1[0] - h0[0]) / total * 100, 1)
    r.host_steal_pct = round((h1[2] - h0[2]) / total * 100, 1)
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        r.error = f"iperf3 gave no JSON (exit {res.returncode}): {res.stderr.strip()[:300]}"
        return
    if "error" in doc or "sum_received" not in doc.get("end", {}):
        r.error = f"iperf3: {doc.get('error', 'no result')}"
        return
    received = doc["end"]["sum_received"]
    r.mbps = round(received["bits_per_second"] / 1e6, 1)
    r.bytes = int(received["bytes"])
    r.seconds = float(received["seconds"])
    r.retransmits = int(doc["end"].get("sum_sent", {}).get("retransmits", 0))
    if pids and r.bytes:
        r.cpu_s = round((sum(t1) - sum(t0)) / HZ, 2)
        r.cpu_s_per_gb = round(r.cpu_s / (r.bytes / 1e9), 2)


@dataclass
class Summary:
    """The medians of one plane over its runs."""

    key: str
    label: str
    group: str
    cipher: str | None
    runs: list[Run]
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)  # throughput over each peer's

    def _good(self) -> list[Run]:
        return [r for r in self.runs if r.mbps is not None]

    @staticmethod
    def _median(values: Sequence[float | int | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return float(statistics.median(vals)) if vals else None

    @property
    def mbps(self) -> float | None:
        return self._median([r.mbps for r in self._good()])

    @property
    def mbps_range(self) -> tuple[float, float] | None:
        vals = [r.mbps for r in self._good() if r.mbps is not None]
        return (min(vals), max(vals)) if vals else None

    @property
    def cpu_s_per_gb(self) -> float | None:
        return self._median([r.cpu_s_per_gb for r in self._good()])

    @property
    def rtt_ms(self) -> float | None:
        return self._median([t for r in self.runs for t in r.rtts_ms])

    @property
    def retransmits(self) -> float | None:
        return self._median([r.retransmits for r in self._good()])

    @property
    def idle_cpu_pct(self) -> float | None:
        return self._median([r.idle_cpu_pct for r in self.runs])

    def to_json(self) -> dict[str, Any]:
        runs = []
        for r in self.runs:
            d = asdict(r)
            d["rtt_ms_median"] = self._median(r.rtts_ms)
            runs.append(d)
        return {
            "key": self.key,
            "label": self.label,
            "group": self.group,
            "cipher": self.cipher,
            "error": self.error,
            "notes": self.notes,
            "median": {
                "mbps": _round(self.mbps, 1),
                "mbps_range": self.mbps_range,
                "cpu_s_per_gb": _round(self.cpu_s_per_gb, 2),
                "rtt_ms": _round(self.rtt_ms, 3),
                "retransmits": self.retransmits,
                "idle_cpu_pct": _round(self.idle_cpu_pct, 2),
            },
            "ratios": {k: _round(v, 3) for k, v in self.ratios.items()},
            "runs": runs,
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def busy_note() -> tuple[float, str | None]:
    """The 1-minute load average now, and a warning line when the machine is not idle."""
    load = os.getloadavg()[0]
    if load < 0.5:
        return load, None
    return load, (
        f"note: the machine was not idle (load average {load:.1f} on {os.cpu_count()} CPUs at the start):\n"
        "      Mbit/s moves with other load, CPU-s/GB much less"
    )


def run_rounds(
    planes: Sequence[Plane],
    runs: int,
    seconds: float,
    pings: int,
    interval: float,
    results: dict[str, list[Run]],
) -> None:
    """`runs` rounds; each round measures every plane once, the starting plane rotating from round to round
    so that slow drifts of the machine (other load, CPU steal, thermal) fall on all planes alike."""
    for i in range(runs):
        order = list(planes[i % len(planes) :]) + list(planes[: i % len(planes)])
        for plane in order:
            r = measure(plane, i + 1, seconds, pings, interval)
            results[plane.key].append(r)
            rtt = f"{statistics.median(r.rtts_ms):.3f} ms" if r.rtts_ms else "no reply"
            if r.error:
                log(f"run {i + 1}/{runs} {plane.label}: FAILED: {r.error}")
            else:
                cpu = f", tunnel CPU {r.cpu_s} s = {r.cpu_s_per_gb} s/GB" if r.cpu_s is not None else ""
                log(
                    f"run {i + 1}/{runs} {plane.label}: {r.mbps} Mbit/s, {r.retransmits} retr, RTT {rtt}{cpu}"
                    f" (host busy {r.host_busy_pct}%, steal {r.host_steal_pct}%)"
                )


@contextlib.contextmanager
def workdir(keep: bool, prefix: str) -> Iterator[Path]:
    """A temporary directory (logs, keys, configs), removed afterwards unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o700)
    try:
        yield path
    finally:
        if keep:
            log(f"kept logs and configs in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def open_planes(planes: Sequence[Plane]) -> list[Plane]:
    """Open every plane; the ones that fail are logged, closed and left out (their error kept)."""
    ready = []
    for plane in planes:
        log(f"setting up {plane.label} ...")
        t = time.monotonic()
        try:
            plane.open()
        except (BenchError, OSError, subprocess.SubprocessError, AssertionError, RuntimeError) as exc:
            plane.error = f"{type(exc).__name__}: {exc}".strip()
            log(f"{plane.label}: setup FAILED: {plane.error}")
            plane.close()
            continue
        plane.notes["setup_s"] = round(time.monotonic() - t, 2)
        log(f"{plane.label}: ready in {plane.notes['setup_s']} s, veth capture {plane.notes.get('capture')}")
        ready.append(plane)
    return ready


def close_planes(planes: Sequence[Plane]) -> None:
    for plane in planes:
        try:
            plane.close()
        except Exception as exc:
            log(f"clean-up of {plane.label}: {exc}")


# -- output ----------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align_left: int = 1) -> str:
    """A plain-text table: the first `align_left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < align_left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def emit(report: dict[str, Any], text: str, json_to: str | None) -> None:
    """The table on stdout, or with `--json -` the JSON on stdout and the table on stderr."""
    if json_to == "-":
        print(text, file=sys.stderr)
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    print(text)
    if json_to:
        Path(json_to).write_text(json.dumps(report, indent=2) + "\n")
        log(f"JSON written to {json_to}")


# -- the control socket (bench/scale's bulk loading) -------------------------------------------------------


class ControlConnection:
    """One long-lived connection to an ipsecd control socket, one request at a time."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file: IO[bytes] = self.sock.makefile("rb")

    def call(self, op: str, args: dict[str, Any]) -> Any:
        self.sock.sendall(encode_request(op, args))
        line = self.file.readline()
        if not line:
            raise BenchError("ipsecd closed the control connection")
        return decode_response(line.rstrip(b"\n"))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def ipsecadm_works() -> str | None:
    """None when `ipsecadm` runs, else why not."""
    res = subprocess.run(
        [tool("ipsecadm"), "version"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "IPSEC_TUNNEL_SOCKET": "/nonexistent/ipsecd.sock"},
    )
    if "Traceback" in res.stderr or res.returncode in (126, 127):
        return (res.stderr.strip().splitlines() or ["cannot run"])[-1]
    return None


def common_args(p: argparse.ArgumentParser) -> None:
    """The options every bench takes: --seconds, --runs, --pings, --json, --keep."""
    p.add_argument("--seconds", type=float, default=10.0, help="length of each iperf3 run (default 10)")
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3); medians are reported")
    p.add_argument("--pings", type=int, default=20, help="idle pings per round (default 20, 0.05 s apart)")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write the results as JSON to FILE; without FILE, JSON on stdout and the table on stderr",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, captures)")


def check_common(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the common options' impossible values."""
    if args.runs < 1 or args.seconds < 1 or args.pings < 1:
        p.error("--runs, --seconds and --pings must be at least 1")


def run_bench(
    name: str,
    args: argparse.Namespace,
    make_planes: Callable[[Path], list[Plane]],
    render: Callable[[list[Summary], list[Plane]], str],
    *,
    keys: Sequence[str],
    extra: dict[str, Any] | None = None,
    after: Callable[[list[Plane], list[Summary]], None] | None = None,
) -> int:
    """Set up the planes, measure them in interleaved rounds, clean up and print the table (and JSON);
    the exit status: 0 when every plane gave a result, 1 when one failed, 130 when interrupted."""
    raise_on_termination()
    started = time.time()
    load, busy = busy_note()
    if busy:
        log(busy)
    planes: list[Plane] = []
    results: dict[str, list[Any]] = {k: [] for k in keys}
    interrupted = False
    try:
        with workdir(args.keep, f"ipsec-bench-{name}-") as work:
            try:
                planes = make_planes(work)
                ready = open_planes(planes)
                if ready:
                    log(f"measuring {len(ready)} data planes: {args.runs} rounds of {args.seconds:g} s each")
                    run_rounds(ready, args.runs, args.seconds, args.pings, 0.05, results)
                for p in ready:
                    if isinstance(p, OursPlane):
                        p.notes["rss_kib"] = p.rss_kib()
            except (KeyboardInterrupt, Interrupted):
                interrupted = True
                log("interrupted: cleaning up")
            finally:
                shield_cleanup()
                close_planes(planes)
    except BenchError as exc:
        print(f"bench/{name}: {exc}", file=sys.stderr)
        return 1
    summaries = [Summary(p.key, p.label, p.group, p.cipher, results[p.key], p.error, p.notes) for p in planes]
    if after is not None:
        after(planes, summaries)
    report = {
        "bench": name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "seconds": args.seconds,
        "runs": args.runs,
        "pings": args.pings,
        "interrupted": interrupted,
        **(extra or {}),
        "loadavg_at_start": round(load, 2),
        "versions": versions(),
        "planes": [s.to_json() for s in summaries],
    }
    text = render(summaries, planes)
    if busy:
        text += "\n" + busy
    if interrupted:
        text = "INTERRUPTED: partial results\n" + text
    emit(report, text, args.json)
    if interrupted:
        return 130
    return 0 if all(s.mbps is not None for s in summaries) else 1


def failures(summaries: Sequence[Summary]) -> list[str]:
    """A line for every plane and every run that failed."""
    lines = []
    for s in summaries:
        if s.error:
            lines.append(f"FAILED {s.label}: {s.error}")
        lines += [f"run {r.run} of {s.label} failed: {r.error}" for r in s.runs if r.error]
    return lines
