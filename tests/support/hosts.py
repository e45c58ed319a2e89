"""Test hosts: a network namespace running its own ipsecd, driven with the real `ipsecadm` command, and
the seed's two-host topology (A and B over a veth) built from them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from . import pythonpath
from .netns import Netns, veth_pair

BIN = Path(sys.executable).parent


KEYFILE_OPTIONS = ("--cipher-keyfile=", "--digest-keyfile=")


def over_udp(sa_args: tuple[str, ...] | list[str]) -> bool:
    """Whether `ipsecadm sa add` options ask for ESP-in-UDP (where ipsecd refuses --duplex with a
    counter-mode cipher: behind a NAT both directions could use the same IVs)."""
    return any(a == "--encap=udp" or a.startswith("--encap=udp:") for a in sa_args)


def reverse_keys(sa_args: tuple[str, ...] | list[str]) -> list[str]:
    """`sa_args` with each key file replaced by one of its own for the opposite direction: KEYFILE.rev,
    random bytes of the same length, mode 0600, made once (so both hosts read the same)."""
    out = []
    for a in sa_args:
        option = next((o for o in KEYFILE_OPTIONS if a.startswith(o)), None)
        if option is None:
            out.append(a)
            continue
        path = Path(a[len(option) :])
        rev = path.with_name(path.name + ".rev")
        if not rev.exists():
            fd = os.open(rev, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(path.stat().st_size))
        out.append(f"{option}{rev}")
    return out


def tool(name: str) -> str:
    """The path of console script `name` beside this Python (the venv's), else from PATH."""
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


class IpsecHost:
    """A namespace with an ipsecd of its own (own socket, state directory and pid file)."""

    def __init__(self, label: str, workdir: Path) -> None:
        self.label = label
        self.ns = Netns(f"it{label}")
        self.dir = workdir / label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "ipsecd.sock"
        self.state = self.dir / "state"
        self.log = self.dir / "ipsecd.log"
        self.daemon: subprocess.Popen[Any] | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for commands on this host (`python -m tests.support.NAME` works from any cwd)."""
        return {**os.environ, "IPSEC_TUNNEL_SOCKET": str(self.socket), "PYTHONPATH": pythonpath()}

    def start(self, *extra: str, wait: bool = True) -> None:
        """Start ipsecd in the foreground (logging to `log`) and wait for its control socket."""
        if self.socket.exists():
            self.socket.unlink()
        log = open(self.log, "a")  # noqa: SIM115 - owned by the process
        cmd = [sys.executable, "-m", "ipsec_tunnel.daemon.main", "-f", "--socket", str(self.socket),
               "--state-dir", str(self.state), "--log-level", "debug", *extra]  # fmt: skip
        self.daemon = self.ns.popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        if wait:
            deadline = time.monotonic() + 10
            while not self.socket.exists():
                if self.daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ipsecd on {self.label} did not start:\n{self.log.read_text()}")
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop ipsecd with `sig` and return its exit status."""
        if self.daemon is None:
            return None
        if self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        code = self.daemon.returncode
        self.daemon = None
        return code

    def sh(
        self, cmd: str | list[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on this host."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
        proc = subprocess.run(["ip", "netns", "exec", self.ns.name, *argv], capture_output=True, text=True,
                              timeout=timeout, env=self.env)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.label}# {cmd} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def adm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `ipsecadm ARGS` on this host."""
        return self.sh([tool("ipsecadm"), *args], check=check)

    def popen(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process on this host."""
        return self.ns.popen(cmd, env=self.env, **kwargs)


def stop_hosts(*hosts: IpsecHost) -> None:
    """Stop each host's ipsecd and delete its namespace, the namespace even when the stop fails."""
    for host in hosts:
        try:
            host.stop()
        finally:
            host.ns.delete()


class Topology:
    """Namespaces and daemons set up on entering (`open`) and torn down (`close`) on leaving, or at once
    when setting up fails part way."""

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class TwoHosts(Topology):
    """The seed's hosts A and B, each running ipsecd, joined by a veth on the outer network."""

    def __init__(self, *, outer6: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ipsec-tunnel-test-"))
        self.a = IpsecHost("A", self.tmp)
        self.b = IpsecHost("B", self.tmp)
        self.outer6 = outer6
        self.a_pub, self.b_pub = ("2001:db8::1", "2001:db8::2") if outer6 else ("192.0.2.1", "192.0.2.2")
        self.plen = 64 if outer6 else 24
        self.links: tuple[str, str] = ("", "")

    def open(self) -> None:
        """Create both namespaces and the veth between them, start both daemons."""
        self.a.ns.create()
        self.b.ns.create()
        self.links = veth_pair(self.a.ns, self.b.ns, f"{self.a_pub}/{self.plen}", f"{self.b_pub}/{self.plen}")
        self.a.start()
        self.b.start()

    def close(self) -> None:
        """Stop both daemons, delete the namespaces and the work directory."""
        stop_hosts(self.a, self.b)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def key(self, name: str, size: int) -> Path:
        """A fresh random key file of `size` bytes, mode 0600 (as the seed's dd makes one)."""
        path = self.tmp / name
        path.write_bytes(os.urandom(size))
        path.chmod(0o600)
        return path

    def sa_pair(self, *sa_args: str) -> None:
        """`ipsecadm sa add --spi=0x1000 --dst=B --src=A ... --duplex` on both hosts; with --encap=udp one
        SA per direction instead (as ipsecd(8) says for NAT traversal): 0x1000 A to B with the key files
        given, 0x1001 B to A with keys of its own (`reverse_keys`)."""
        for host in (self.a, self.b):
            sa = ("sa", "add", "--spi=0x1000", f"--dst={self.b_pub}", f"--src={self.a_pub}", *sa_args)
            if over_udp(sa_args):
                host.adm(*sa)
                host.adm(
                    "sa", "add", "--spi=0x1001", f"--dst={self.a_pub}", f"--src={self.b_pub}",
                    *reverse_keys(sa_args),
                )  # fmt: skip
            else:
                host.adm(*sa, "--duplex")

    def tunnels(self, *, inner6: bool = False, inner_on_lo: bool = False) -> tuple[str, str]:
        """ipsec1 on both hosts with the seed's private addresses and routes; returns (A's, B's) inner one."""
        a_in, b_in = ("2001:db8:1::1", "2001:db8:2::1") if inner6 else ("10.0.1.1", "10.0.2.1")
        for host, local, remote, mine, theirs in (
            (self.a, self.a_pub, self.b_pub, a_in, b_in),
            (self.b, self.b_pub, self.a_pub, b_in, a_in),
        ):
            host.adm("tunnel", "add", "ipsec1", f"--local={local}", f"--remote={remote}")
            self.inner_up(host, mine, theirs, inner6=inner6, on_lo=inner_on_lo)
        return a_in, b_in

    @staticmethod
    def inner_up(
        host: IpsecHost, mine: str, theirs: str, *, inner6: bool = False, on_lo: bool = False
    ) -> None:
        """Address ipsec1 (or lo) with `mine` and route `theirs`' network through ipsec1."""
        if inner6:
            net = theirs.rsplit(":", 2)[0] + "::/64"
            dev = "lo" if on_lo else "ipsec1"
            host.sh(f"ip addr add {mine}/{128 if on_lo else 64} dev {dev} nodad && ip link set ipsec1 up && "
                    f"ip route replace {net} dev ipsec1 src {mine}")  # fmt: skip
        elif on_lo:
            net = theirs.rsplit(".", 1)[0] + ".0/24"
            host.sh(f"ip addr add {mine}/32 dev lo && ip link set ipsec1 up && "
                    f"ip route replace {net} dev ipsec1 src {mine}")  # fmt: skip
        else:
            net = theirs.rsplit(".", 1)[0] + ".0/24"
            host.sh(f"ifconfig ipsec1 {mine} up && route add -net {net} dev ipsec1")
