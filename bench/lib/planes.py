"""The data planes measured between A and B: plain veth (the ceiling) and ipsecd configured with
ipsecadm; bench/peers adds strongSwan and wireguard-go. Opening checks on a capture that the veth carries
only what the plane should (tunnelled, or in the clear for veth)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipsec_tunnel.control.protocol import ProtocolError
from tests.support.hosts import IpsecHost, over_udp, reverse_keys
from tests.support.netns import Netns

from .processes import BenchError, log, stop_process, wait_for
from .topology import IN_A, IN_B, NET_A, NET_B, PUB_A, PUB_B, SPI, Pair


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
        """`ipsecadm sa add ... --duplex` (over UDP: one SA per direction, each with its own key, as
        ipsecd refuses --duplex there) and `ipsecadm tunnel add ipsec1` on both hosts; route B's net."""
        sa_args = self.config.sa_args(self.dir / "keys")
        timings = self.notes.setdefault("ipsecadm_s", {})
        for host in self.hosts:
            t = time.monotonic()
            if over_udp(sa_args):
                host.adm("sa", "add", f"--spi={SPI:#x}", f"--dst={PUB_B}", f"--src={PUB_A}", *sa_args)
                host.adm("sa", "add", f"--spi={SPI + 1:#x}", f"--dst={PUB_A}", f"--src={PUB_B}",
                         *reverse_keys(sa_args))  # fmt: skip
            else:
                host.adm(
                    "sa", "add", f"--spi={SPI:#x}", f"--dst={PUB_B}", f"--src={PUB_A}", *sa_args, "--duplex"
                )
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


class OursWithArgs(OursPlane):
    """ipsecd started with extra daemon options (--ipsecd-args, --variant); a NAME=VALUE among them is set
    in ipsecd's environment instead (e.g. --variant=IPSEC_TUNNEL_PURE=1: the pure-Python framing)."""

    def __init__(self, key: str, work: Path, config: OursConfig, extra: Sequence[str]) -> None:
        super().__init__(key, work, config)
        self.extra = list(extra)
        if self.extra:
            self.label += f" [{' '.join(self.extra)}]"

    def setup(self) -> None:
        env = dict(a.split("=", 1) for a in self.extra if "=" in a and not a.startswith("-"))
        options = [a for a in self.extra if "=" not in a or a.startswith("-")]
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)  # IpsecHost.start passes os.environ on to ipsecd
        try:
            for host in self.hosts:
                host.start("--log-level", "warning", *options)
        finally:
            for name, value in saved.items():
                if value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = value
        self.configure()


def ours_variants(
    key: str, work: Path, config: OursConfig, extra: Sequence[str], variants: Sequence[str]
) -> list[Plane]:
    """ipsecd plane `key` started with `extra`, and once more per variant with its options added (keys
    KEY-v1, KEY-v2 ...), to be measured in the same interleaved rounds."""
    planes: list[Plane] = [OursWithArgs(key, work, config, extra)]
    for i, variant in enumerate(variants, 1):
        planes.append(OursWithArgs(f"{key}-v{i}", work, config, [*extra, *shlex.split(variant)]))
    return planes


def open_planes(planes: Sequence[Plane]) -> list[Plane]:
    """Open every plane; the ones that fail are logged, closed and left out (their error kept)."""
    ready = []
    for plane in planes:
        log(f"setting up {plane.label} ...")
        t = time.monotonic()
        try:
            plane.open()
        except (
            BenchError,
            ProtocolError,
            OSError,
            subprocess.SubprocessError,
            AssertionError,
            RuntimeError,
        ) as exc:
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
