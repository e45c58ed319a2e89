"""ipsecd facing strongSwan's charon (tests/ike/charon.py: kernel-libipsec, its own netns, driven by
swanctl) over a veth or through a NAT (tests/ike/nat.sh)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from tests.ike.charon import Charon
from tests.ike.charon import charon_missing as ike_charon_missing
from tests.support import icmp
from tests.support.hosts import IpsecHost
from tests.support.netns import Netns, netns_available, veth_pair

NAT_SH = Path(__file__).parents[1] / "ike" / "nat.sh"  # from the strongswan-ike kit
PSK = "ikd-interop-psk-for-tests-only"


def charon_missing() -> str | None:
    """Why charon cannot run here (None: it can)."""
    return netns_available() or ike_charon_missing()


class IkePair:
    """ipsecd (namespace ikd-A) and charon (ikd-C) over a veth: 192.0.2.1 and 192.0.2.2 outside,
    10.61.1.1 and 10.61.2.1 inside (on lo), nets 10.61.1.0/24 and 10.61.2.0/24."""

    D_OUT, C_OUT = "192.0.2.1", "192.0.2.2"
    D_IN, C_IN = "10.61.1.1", "10.61.2.1"
    D_NET, C_NET = "10.61.1.0/24", "10.61.2.0/24"

    def __init__(
        self, *, nat: str | None = None, daemon_args: tuple[str, ...] = (), **charon_env: str
    ) -> None:
        """`nat`: None (a veth), "ipsecd-inside" or "charon-inside" (nat.sh: inside 192.0.2.2, outside
        198.51.100.2, the NAT's outside address 198.51.100.1)."""
        self.nat = f"ikd{os.getpid() % 100000}" if nat else None
        self.nat_side = nat
        self.daemon_args = daemon_args
        self.links: tuple[str, str] = ("", "")
        self.nat_env = {"NAT_MASQ": "masquerade random"} if nat == "charon-inside" else {}
        if nat == "ipsecd-inside":
            self.D_OUT, self.C_OUT = "192.0.2.2", "198.51.100.2"
        elif nat == "charon-inside":
            self.D_OUT, self.C_OUT = "198.51.100.2", "192.0.2.2"
        self.tmp = Path(tempfile.mkdtemp(prefix="ikd-test-"))
        self.d = IpsecHost("A", self.tmp)
        self.d.ns = Netns("ikd")
        self.cns = Netns("ikdc")
        self.charon = Charon(f"ikd{os.getpid() % 100000}", self.cns.name, self.tmp, **charon_env)
        self.charon_started = False
        self.psk_file = self.tmp / "psk"
        self.psk_file.write_text(PSK + "\n")
        self.psk_file.chmod(0o600)

    def __enter__(self) -> Self:
        try:
            self.d.ns.create()
            self.cns.create()
            if self.nat_side == "ipsecd-inside":
                self._nat("up", self.d.ns.name, self.cns.name)
            elif self.nat_side == "charon-inside":
                self._nat("up", self.cns.name, self.d.ns.name)
            else:
                self.links = veth_pair(self.d.ns, self.cns, f"{self.D_OUT}/24", f"{self.C_OUT}/24")
            self.d.sh(f"ip addr add {self.D_IN}/32 dev lo")
            self.cns.check(["ip", "addr", "add", f"{self.C_IN}/32", "dev", "lo"])
            self.d.start(*self.daemon_args)
            self.charon.start()
            self.charon_started = True
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _nat(self, *args: str) -> None:
        env = {**os.environ, "NAT": self.nat or "", **self.nat_env}
        subprocess.run(["bash", str(NAT_SH), *args], env=env, check=True, capture_output=True, timeout=30)

    def close(self) -> None:
        try:
            if self.charon_started:
                self.charon.stop()
            if self.nat:
                with contextlib.suppress(subprocess.CalledProcessError):
                    self._nat("down")
        finally:
            try:
                self.d.stop()
            finally:
                self.d.ns.delete()
                self.cns.delete()
                if os.environ.get("IKD_KEEP"):
                    print("kept", self.tmp)
                else:
                    shutil.rmtree(self.tmp, ignore_errors=True)

    def load_charon(self, **values: str) -> None:
        base = {"LOCAL_ADDR": self.C_OUT, "REMOTE_ADDR": self.D_OUT, "LOCAL_ID": self.C_OUT,
                "REMOTE_ID": self.D_OUT, "LOCAL_NET": self.C_NET, "REMOTE_NET": self.D_NET,
                "PSK": PSK}  # fmt: skip
        self.charon.load(**{**base, **values})

    def ike_add(self, *extra: str, name: str = "gw", remote: str | None = None) -> None:
        self.d.adm(
            "ike", "add", name, f"--local={self.D_OUT}", f"--remote={remote or self.C_OUT}",
            f"--psk-file={self.psk_file}", f"--local-net={self.D_NET}", f"--remote-net={self.C_NET}", *extra,
        )  # fmt: skip

    def wait(self, what: str, check: Any, timeout: float = 15.0) -> Any:
        """`check()` once it is truthy; AssertionError with both logs after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}\n--- ipsecd log ---\n{self.dlog()}\n--- charon log ---\n"
                    f"{self.charon.log()}\n--- charon SAs ---\n{self.charon.sas()}"
                )
            time.sleep(0.2)

    def dlog(self, lines: int = 60) -> str:
        return "\n".join(self.d.log.read_text(errors="replace").splitlines()[-lines:])

    def charon_up(self) -> bool:
        sas = self.charon.sas()
        return "state=ESTABLISHED" in sas and "state=INSTALLED" in sas

    def ipsecd_up(self, name: str = "gw") -> bool:
        out = self.d.adm("ike", "show", name).stdout
        return " established " in out and "/0x" in out

    def ping_both(self, count: int = 3) -> None:
        """`count` pings each way, all answered (tried again only when the replying kernel failed to send
        its replies: tests/support/icmp.py); AssertionError with both ends' logs and SAs if not."""
        self._ping(self.d.ns, self.D_IN, self.C_IN, self.cns, count)
        self._ping(self.cns, self.C_IN, self.D_IN, self.d.ns, count)

    def _ping(self, src_ns: Netns, src: str, dst: str, replier: Netns, count: int) -> None:
        argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "2", "-I", src, dst]
        runs: list[subprocess.CompletedProcess[str]] = []
        if icmp.answered(lambda: _ran(runs, src_ns.run(argv)), lambda: icmp.counters(replier)):
            return
        sas = self.d.adm("sa", "show", check=False).stdout
        raise AssertionError(
            f"{src_ns.name}# {' '.join(argv)} -> {runs[-1].returncode}\n{runs[-1].stdout}{runs[-1].stderr}\n"
            f"--- the replier's ICMP counters ---\n{icmp.counters(replier)}\n"
            f"--- ipsecd log ---\n{self.dlog()}\n--- ipsecd SAs ---\n{sas}\n"
            f"--- charon log ---\n{self.charon.log()}\n--- charon SAs ---\n{self.charon.sas()}"
        )


def _ran(runs: list[subprocess.CompletedProcess[str]], proc: subprocess.CompletedProcess[str]) -> bool:
    """Keep `proc` in `runs`; whether it succeeded."""
    runs.append(proc)
    return proc.returncode == 0
