"""The Linux kernel's own ESP stack as a test peer: a user-mode-linux guest behind a TAP device.

Owns one guest's whole lifetime: its private network namespace (holding the TAP device and the host-side
addresses), its temporary directory (generated init script, console log, hostfs command channel) and
its linux.uml processes. ``close()`` removes all of them, also after a failed boot.

Topology (defaults)::

    netns <netns>: TAP <tap> 192.0.2.1/24, 2001:db8::1/64  <==>  guest eth0 192.0.2.2/24, 2001:db8::2/64
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import itertools
import math
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.userns import in_user_namespace

UML_BINARY = "/usr/bin/linux.uml"
UML_MODULE_ROOT = Path("/usr/lib/uml/modules")
_CLONE_NEWNET = 0x40000000
_ETH_P_ALL = 0x0003

# Preloaded at boot; names that are built in or missing are tolerated. Autoloading is off by default:
# every new crypto template instance (e.g. "authenc(hmac(sha1),cbc(aes))") would first run modprobe.
DEFAULT_MODULES: tuple[str, ...] = (
    "xfrm_algo", "xfrm_user", "ipv6", "esp4", "esp6", "tunnel4", "xfrm4_tunnel", "tunnel6",
    "xfrm6_tunnel", "udp_tunnel", "ip6_udp_tunnel", "jitterentropy_rng", "drbg", "aes", "gcm",
    "ghash_generic", "ctr", "seqiv", "echainiv", "authenc", "authencesn", "hmac", "cbc", "ecb",
    "des_generic", "sha1_generic", "sha256_generic", "sha512_generic", "md5", "crypto_null",
    "chacha_generic", "poly1305_generic", "chacha20poly1305", "ccm", "cmac", "xcbc", "dummy",
)  # fmt: skip


def _loader() -> str:
    """The dynamic loader that runs /bin/mount on this architecture, or "" if none is found."""
    for path in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", "/lib/ld-linux.so.2"):
        if os.path.exists(path):
            return path
    return ""


_GUEST_INIT = r"""#!/bin/bash
# PID 1 of an ipsec_tunnel UmlPeer guest (generated; the host root is mounted read-only over hostfs).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/run/root LANG=C
SHARE=@SHARE@ MODDIR=@MODDIR@ MODULES=@MODULES@ AUTOLOAD=@AUTOLOAD@ ADDR4=@ADDR4@ ADDR6=@ADDR6@
LDSO=@LDSO@
# Booted from a user namespace, the host's root-owned files show as the overflow uid, so setuid-root
# mount(8) would drop the guest's root: run it through the dynamic loader, which ignores the setuid bit.
if [ -n "$LDSO" ]; then mount() { "$LDSO" /bin/mount "$@"; }; fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=755,size=32m tmpfs /run
mkdir -p /run/root /run/tmp && cd /run/root
export TMPDIR=/run/tmp
# modprobe (also the kernel's request_module) looks for the UML modules under /run/modroot
KVER=$(uname -r)
mkdir -p /run/modroot/lib/modules && ln -s "$MODDIR" "/run/modroot/lib/modules/$KVER"
printf '#!/bin/sh\nexec /sbin/modprobe -d /run/modroot "$@"\n' > /run/modprobe
chmod 755 /run/modprobe && echo /run/modprobe > /proc/sys/kernel/modprobe
if ! mount -t hostfs -o "$SHARE" none "$SHARE"; then
    echo "[guest-init] cannot mount $SHARE"; echo o > /proc/sysrq-trigger; sleep 10
fi
failed=
if ! /run/modprobe -a -q $MODULES 2>/dev/null; then
    for m in $MODULES; do /run/modprobe -q "$m" 2>/dev/null || failed="$failed $m"; done
fi
[ "$AUTOLOAD" = 1 ] || echo > /proc/sys/kernel/modprobe
status=ok
ip link set lo up
ip link set eth0 up || status="eth0 missing"
if [ -n "$ADDR4" ]; then ip addr add "$ADDR4" dev eth0 || status="cannot add $ADDR4"; fi
if [ -n "$ADDR6" ]; then
    /run/modprobe -q ipv6; ip -6 addr add "$ADDR6" dev eth0 nodad || status="cannot add $ADDR6"
fi
{
    echo "status=$status"
    echo "kernel=$KVER"
    echo "failed=$failed"
    echo "loaded=$(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
} > "$SHARE/ready.tmp" 2>&1
mv "$SHARE/ready.tmp" "$SHARE/ready"
# Command channel: the host renames <id>.tmp to <id>.cmd (first line "#timeout=N"); the guest writes
# the output to <id>.out, then "<status>\n" to <id>.rc, which marks the job done. The host removes them.
# A job is sourced in a subshell (forking bash is far cheaper than exec in UML) in its own process
# group; a watchdog subshell kills the group after N seconds, and the status becomes 124.
run_job() {
    local f=$1 id=${1%.cmd} t=$2 pid wd rc
    ( shopt -u nullglob; exec 3>&-; unset -f run_job; unset seen; . "$f" ) > "$id.out" 2>&1 < /dev/null &
    pid=$!
    ( read -r -t "$t" -u 3 _; : > "$id.timeout"; kill -KILL -- "-$pid" ) 2>/dev/null &
    wd=$!
    wait "$pid"; rc=$?
    kill -KILL -- "-$wd" 2>/dev/null; wait "$wd" 2>/dev/null
    [ -e "$id.timeout" ] && rc=124
    echo "$rc" > "$id.rc"
}
set -m
shopt -s nullglob
declare -A seen
mkfifo /run/tick && exec 3<>/run/tick
while [ ! -e "$SHARE/halt" ]; do
    for f in "$SHARE"/cmd/*.cmd; do
        [ -n "${seen[$f]}" ] && continue
        seen[$f]=1
        IFS= read -r first < "$f"
        t=${first#\#timeout=}
        run_job "$f" "${t:-20}"
    done
    read -t 0.05 -u 3 _ 2>/dev/null
done
echo "[guest-init] halt requested"; sync
echo o > /proc/sysrq-trigger
sleep 10
"""


class UmlError(RuntimeError):
    """The UML guest could not be prepared, reached or stopped."""


class UmlBootError(UmlError):
    """The UML guest did not come up (it exited, or was not ready in time)."""


def _module_dir() -> Path | None:
    dirs = sorted(d for d in UML_MODULE_ROOT.glob("*") if (d / "modules.dep").exists())
    return dirs[-1] if dirs else None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise UmlError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _session_processes(sid: int, binary: str) -> list[int]:
    """Host pids of live (not zombie) `binary` processes in session `sid`."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z" and os.readlink(d / "exe") == binary:
                found.append(int(d.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


class UmlPeer:
    """A booted user-mode-linux guest running the kernel's XFRM/ESP stack, reachable through a TAP."""

    _counter = itertools.count()

    def __init__(
        self,
        *,
        host_addr: str = "192.0.2.1/24",
        guest_addr: str = "192.0.2.2/24",
        host_addr6: str | None = "2001:db8::1/64",
        guest_addr6: str | None = "2001:db8::2/64",
        modules: Sequence[str] = DEFAULT_MODULES,
        autoload_modules: bool = False,
        mem: str = "256M",
        boot_timeout: float = 60.0,
        uml_binary: str = UML_BINARY,
        tap: str = "utap0",
        guest_mac: str = "fe:fd:c0:00:02:02",
    ) -> None:
        self.host_addr = ipaddress.IPv4Interface(host_addr)
        self.guest_addr = ipaddress.IPv4Interface(guest_addr)
        self.host_addr6 = ipaddress.IPv6Interface(host_addr6) if host_addr6 else None
        self.guest_addr6 = ipaddress.IPv6Interface(guest_addr6) if guest_addr6 else None
        self.host_ip, self.guest_ip = str(self.host_addr.ip), str(self.guest_addr.ip)
        self.host_ip6 = str(self.host_addr6.ip) if self.host_addr6 else None
        self.guest_ip6 = str(self.guest_addr6.ip) if self.guest_addr6 else None
        self.modules = tuple(modules)
        self.autoload_modules = autoload_modules
        self.mem = mem
        self.boot_timeout = boot_timeout
        self.uml_binary = uml_binary
        self.tap = tap
        self.guest_mac = guest_mac
        self.netns = ""
        self.workdir: Path | None = None
        self.boot_seconds = 0.0
        self.kernel_release = ""
        self.modules_loaded: tuple[str, ...] = ()
        self.modules_failed: tuple[str, ...] = ()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def available(uml_binary: str = UML_BINARY) -> str | None:
        """None if a guest can be booted here, else the reason why not."""
        if not sys.platform.startswith("linux"):
            return "user-mode-linux needs a Linux host"
        if not os.access(uml_binary, os.X_OK):
            return f"{uml_binary} not found (apt-get install user-mode-linux)"
        if _module_dir() is None:
            return f"no UML kernel modules under {UML_MODULE_ROOT}"
        if os.geteuid() != 0:
            return "needs root (network namespaces, TAP devices)"
        if in_user_namespace() and not _loader():
            return "in a user namespace the guest needs the dynamic loader to run mount(8): none found"
        if not os.path.exists("/dev/net/tun"):
            return "no /dev/net/tun"
        if shutil.which("ip") is None:
            return "iproute2 'ip' not found"
        return None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> Self:
        """Create the namespace and TAP, boot the guest and wait until it runs commands."""
        if self._proc is not None or self._closed:
            raise UmlError("a UmlPeer can be started only once")
        reason = self.available(self.uml_binary)
        if reason is not None:
            raise UmlError(f"UML peer unavailable: {reason}")
        atexit.register(self.close)
        try:
            self._setup_host()
            self._boot()
        except BaseException:
            self.close()
            raise
        return self

    def _setup_host(self) -> None:
        for _ in range(100):
            name = f"itu{os.getpid()}x{next(self._counter)}"
            if (
                not Path("/run/netns", name).exists()
                and _ip("netns", "add", name, check=False).returncode == 0
            ):
                self.netns = name
                break
        else:
            raise UmlError("cannot create a network namespace")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"ipsec-uml-{self.netns}-"))
        (self.workdir / "share" / "cmd").mkdir(parents=True)
        (self.workdir / "run").mkdir()
        _ip("-n", self.netns, "link", "set", "lo", "up")
        _ip("-n", self.netns, "tuntap", "add", "dev", self.tap, "mode", "tap")
        _ip("-n", self.netns, "addr", "add", str(self.host_addr), "dev", self.tap)
        if self.host_addr6 is not None:
            _ip("-n", self.netns, "addr", "add", str(self.host_addr6), "dev", self.tap, "nodad")
        _ip("-n", self.netns, "link", "set", self.tap, "up")

    def _boot(self) -> None:
        assert self.workdir is not None
        share, run = self.workdir / "share", self.workdir / "run"
        values = {
            "@SHARE@": str(share),
            "@MODDIR@": str(_module_dir()),
            "@MODULES@": " ".join(self.modules),
            "@AUTOLOAD@": "1" if self.autoload_modules else "0",
            "@ADDR4@": str(self.guest_addr),
            "@ADDR6@": str(self.guest_addr6 or ""),
            "@LDSO@": _loader() if in_user_namespace() else "",
        }
        script = _GUEST_INIT
        for key, value in values.items():
            script = script.replace(key, shlex.quote(value))
        init = self.workdir / "guest-init.sh"
        init.write_text(script)
        init.chmod(0o755)
        argv = [
            "ip", "netns", "exec", self.netns, self.uml_binary, f"mem={self.mem}", "rootfstype=hostfs",
            "rootflags=/", "ro", f"eth0=tuntap,{self.tap},{self.guest_mac}", f"init={init}",
            "con0=null,fd:1", "con=null", "ssl=null", f"umid={self.netns}", f"uml_dir={run}",
        ]  # fmt: skip
        t0 = time.monotonic()
        with open(self.workdir / "console.log", "wb") as log:
            # A new session: the guest's processes are recognisable (and killable) as this instance's.
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "TMPDIR": str(run)}, start_new_session=True,
            )  # fmt: skip
        ready = share / "ready"
        while not ready.exists():
            if self._proc.poll() is not None:
                raise UmlBootError(f"linux.uml exited ({self._proc.returncode}) during boot\n{self._tail()}")
            if time.monotonic() - t0 > self.boot_timeout:
                raise UmlBootError(f"guest not ready after {self.boot_timeout:.0f} s\n{self._tail()}")
            time.sleep(0.02)
        self.boot_seconds = time.monotonic() - t0
        info = dict(line.split("=", 1) for line in ready.read_text().splitlines() if "=" in line)
        self.kernel_release = info.get("kernel", "")
        self.modules_failed = tuple(info.get("failed", "").split())
        self.modules_loaded = tuple(info.get("loaded", "").split())
        if info.get("status") != "ok":
            raise UmlBootError(f"guest network setup failed: {info.get('status')}\n{self._tail()}")

    def close(self) -> None:
        """Stop the guest and remove the TAP, the namespace and the temporary directory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self._stop_guest()
        finally:
            if self.netns:
                _ip("-n", self.netns, "link", "del", self.tap, check=False)
                r = _ip("netns", "del", self.netns, check=False)
                if r.returncode != 0 and Path("/run/netns", self.netns).exists():
                    warnings.warn(f"cannot delete netns {self.netns}: {r.stderr.strip()}", stacklevel=2)
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_guest(self) -> None:
        proc = self._proc
        if proc is None:
            return
        assert self.workdir is not None
        booted = (self.workdir / "share" / "ready").exists()  # else no one would answer: kill at once
        if booted and proc.poll() is None:  # PID 1 does sysrq o
            try:
                (self.workdir / "share" / "halt").touch()
                proc.wait(timeout=5.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if booted and proc.poll() is None:
            try:
                self.mconsole("halt", timeout=2.0)
                proc.wait(timeout=3.0)
            except (OSError, UmlError, subprocess.TimeoutExpired):
                pass
        deadline = time.monotonic() + 10
        while pids := _session_processes(proc.pid, os.path.realpath(self.uml_binary)):
            if time.monotonic() > deadline:
                warnings.warn(f"linux.uml processes {pids} survived SIGKILL", stacklevel=3)
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            warnings.warn(f"linux.uml pid {proc.pid} survived SIGKILL", stacklevel=3)

    # ------------------------------------------------------------------ guest access

    @property
    def pid(self) -> int | None:
        """Host pid of the main linux.uml process, while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def console_log(self) -> str:
        """The guest's console output so far."""
        try:
            return (self.workdir / "console.log").read_text(errors="replace") if self.workdir else ""
        except OSError:
            return ""

    def _tail(self, lines: int = 30) -> str:
        return "\n".join(self.console_log().splitlines()[-lines:])

    def run(self, cmd: str, timeout: float = 20) -> tuple[int, str]:
        """Run bash commands in the guest as root; return the exit status and the combined output.

        They run in a subshell of the guest's init (cwd /run/root, writable /run; the rest is read-only).

        Raises TimeoutError if it does not finish within `timeout` seconds (the guest kills it).
        """
        proc = self._proc
        if proc is None or proc.poll() is not None or self.workdir is None:
            raise UmlError("the guest is not running")
        base = self.workdir / "share" / "cmd" / f"{os.getpid()}-{uuid.uuid4().hex}"
        limit = max(1, math.ceil(timeout))
        tmp = base.with_suffix(".tmp")
        tmp.write_text(f"#timeout={limit}\n{cmd}\n")
        tmp.rename(base.with_suffix(".cmd"))
        rc_file, out_file = base.with_suffix(".rc"), base.with_suffix(".out")
        deadline = time.monotonic() + limit + 10
        while True:
            try:
                status = rc_file.read_text()
            except FileNotFoundError:
                status = ""
            if status.endswith("\n"):
                break
            if proc.poll() is not None:
                raise UmlError(f"the guest died while running {cmd!r}\n{self._tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest command did not return: {cmd!r}")
            time.sleep(0.005)
        out = out_file.read_text(errors="replace")
        rc = int(status.strip() or "126")
        for suffix in (".cmd", ".out", ".rc", ".timeout"):
            base.with_suffix(suffix).unlink(missing_ok=True)
        if rc == 124:
            raise TimeoutError(f"guest command timed out after {limit} s: {cmd!r}\n{out}")
        return rc, out

    def check(self, cmd: str, timeout: float = 20) -> str:
        """Run a command in the guest; return its output, raise UmlError if it fails."""
        rc, out = self.run(cmd, timeout)
        if rc != 0:
            raise UmlError(f"guest command failed ({rc}): {cmd}\n{out}")
        return out

    def mconsole(self, command: str, timeout: float = 5.0) -> str:
        """Send a UML management console command (``version``, ``sysrq X``, ``halt``...)."""
        if self.workdir is None:
            raise UmlError("the guest was never started")
        server = self.workdir / "run" / self.netns / "mconsole"
        me = self.workdir / f"mc-{uuid.uuid4().hex[:8]}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(me))
            try:
                s.settimeout(timeout)
                data = command.encode()
                s.sendto(struct.pack("<III", 0xCAFEBABE, 2, len(data)) + data.ljust(512, b"\0"), str(server))
                out, more = b"", 1
                while more:
                    reply = s.recv(4096)
                    err, more, length = struct.unpack("<III", reply[:12])
                    out += reply[12 : 12 + length]
                    if err:
                        raise UmlError(f"mconsole {command!r}: {out.decode(errors='replace')}")
                return out.decode(errors="replace")
            except TimeoutError:
                if command == "halt":  # the guest may be gone before it answers
                    return ""
                raise
            finally:
                me.unlink(missing_ok=True)

    def load_modules(self, *names: str) -> None:
        """modprobe kernel modules in the guest (also when autoloading is off)."""
        self.check("/run/modprobe -a " + " ".join(shlex.quote(n) for n in names))

    def add_inner_address(self, cidr: str, dev: str = "inner0") -> None:
        """Add an address (e.g. ``10.0.1.1/24``) to a dummy interface `dev` in the guest, creating it."""
        nodad = " nodad" if ipaddress.ip_interface(cidr).version == 6 else ""
        self.check(
            f"ip link show dev {dev} >/dev/null 2>&1 || ip link add {dev} type dummy\n"
            f"ip link set {dev} up\nip addr replace {shlex.quote(cidr)} dev {dev}{nodad}"
        )

    def xfrm_state_stats(self) -> str:
        """``ip -s xfrm state`` in the guest."""
        return self.check("ip -s xfrm state")

    def xfrm_stat(self) -> dict[str, int]:
        """The guest's /proc/net/xfrm_stat counters by name."""
        stats = {}
        for line in self.check('echo "$(< /proc/net/xfrm_stat)"').splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                stats[parts[0]] = int(parts[1])
        return stats

    # ------------------------------------------------------------------ host side (inside the namespace)

    def host_exec(
        self, argv: Sequence[str], timeout: float = 20, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a program in the host-side namespace, capturing its output."""
        if not self.netns:
            raise UmlError("the namespace does not exist")
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True, text=True, timeout=timeout, check=check,
        )  # fmt: skip

    def netns_socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A socket that lives in the host-side namespace (usable from any thread)."""
        if not self.netns:
            raise UmlError("the namespace does not exist")
        result: list[socket.socket | BaseException] = []

        def enter_and_open() -> None:  # setns() moves only this short-lived thread
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(Path("/run/netns", self.netns)) as ns:
                    if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {self.netns}")
                result.append(socket.socket(family, kind, proto))
            except BaseException as e:
                result.append(e)

        worker = threading.Thread(target=enter_and_open, name=f"setns-{self.netns}")
        worker.start()
        worker.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def ping(self, dst: str | None = None, count: int = 1, timeout: float = 5.0) -> int:
        """ICMP echo from the host namespace to `dst` (default: the guest's eth0); the number answered."""
        target = dst or self.guest_ip
        v6 = ipaddress.ip_address(target).version == 6
        family, proto = (
            (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
        )
        ident, answered = os.getpid() & 0xFFFF, set()
        deadline = time.monotonic() + timeout
        with self.netns_socket(family, socket.SOCK_RAW, proto) as s:
            for seq in range(1, count + 1):
                echo = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, seq) + b"ipsec-tunnel-uml"
                if not v6:  # for ICMPv6 the kernel computes it (RFC 3542 section 3.1)
                    echo = echo[:2] + struct.pack("!H", _checksum(echo)) + echo[4:]
                s.sendto(echo, (target, 0))
                end = min(deadline, time.monotonic() + max(timeout / count, 0.2))
                while seq not in answered and time.monotonic() < end:
                    s.settimeout(max(end - time.monotonic(), 0.001))
                    try:
                        reply = s.recv(2048)
                    except TimeoutError:
                        break
                    if not v6:
                        reply = reply[(reply[0] & 0xF) * 4 :]
                    if len(reply) < 8:
                        continue
                    kind, _, _, rid, rseq = struct.unpack("!BBHHH", reply[:8])
                    if kind == (129 if v6 else 0) and rid == ident:
                        answered.add(rseq)
        return len(answered)

    def capture_esp(
        self, trigger: Callable[[], object], count: int = 1, timeout: float = 5.0, *, to_guest: bool = False
    ) -> list[bytes]:
        """Outer IP packets carrying ESP (IP protocol 50, or UDP port 4500 but not IKE) that the guest
        sends on the TAP (with `to_guest`: that the host side sends to it) while `trigger()` runs; returns
        after `count` of them or `timeout` seconds."""
        packets: list[bytes] = []
        with self.netns_socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_ALL)) as s:
            s.bind((self.tap, _ETH_P_ALL))
            trigger()
            deadline = time.monotonic() + timeout
            while len(packets) < count and time.monotonic() < deadline:
                s.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    pkt, addr = s.recvfrom(65535)
                except TimeoutError:
                    break
                if (addr[2] == socket.PACKET_OUTGOING) == to_guest and _carries_esp(pkt):
                    packets.append(pkt)
        return packets


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    data += b"\0" * (len(data) % 2)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _carries_esp(pkt: bytes) -> bool:
    """True for an IPv4/IPv6 packet with ESP, directly or UDP-encapsulated (RFC 3948: non-zero SPI)."""
    if len(pkt) < 20 or pkt[0] >> 4 not in (4, 6):
        return False
    if pkt[0] >> 4 == 4:
        proto, l4 = pkt[9], pkt[(pkt[0] & 0xF) * 4 :]
    else:
        proto, l4 = pkt[6], pkt[40:]
    if proto == 50:
        return True
    return proto == 17 and len(l4) >= 12 and 4500 in struct.unpack("!HH", l4[:4]) and l4[8:12] != bytes(4)
