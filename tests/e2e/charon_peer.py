"""strongSwan's charon as an IKEv2 test peer (kernel-libipsec, its own netns, driven by swanctl), through
charon/charon-peer.sh (from the strongswan-ike kit), and a topology with ipsecd on the other side."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from ipsec_tunnel.testing.hosts import IpsecHost
from ipsec_tunnel.testing.netns import Netns, netns_available, veth_pair

HERE = Path(__file__).parent / "charon"
SCRIPT = HERE / "charon-peer.sh"
CHARON = Path("/usr/lib/ipsec/charon")
PSK = "ikd-interop-psk-for-tests-only"
PLUGINS_NEEDED = ("kernel-libipsec", "curve25519", "gcm", "openssl", "vici")


def charon_missing() -> str | None:
    """Why charon cannot run here (None: it can)."""
    reason = netns_available()
    if reason:
        return reason
    if not CHARON.exists() or shutil.which("swanctl") is None:
        return "strongSwan charon/swanctl not installed (make deps)"
    for p in PLUGINS_NEEDED:
        if not Path(f"/usr/lib/ipsec/plugins/libstrongswan-{p}.so").exists():
            return f"strongSwan plugin {p} missing (make deps)"
    return None


class Charon:
    """One charon instance in namespace `ns` (made by the caller, left to it)."""

    def __init__(self, ns: Netns, workdir: Path, peer: str, **env: str) -> None:
        self.ns = ns
        self.dir = workdir / f"charon-{peer}"
        self.env = {
            **os.environ, "PEER": peer, "PEER_NS": ns.name, "PEER_DIR": str(self.dir),
            "PEER_KEEP_LOG": "yes", **env,
        }  # fmt: skip
        self.started = False

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """charon-peer.sh ARGS."""
        proc = subprocess.run(
            ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"charon-peer.sh {' '.join(args)} -> {proc.returncode}\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def start(self) -> None:
        self.started = True
        self.run("start")

    def stop(self) -> None:
        if self.started:
            self.run("stop", check=False)
            self.started = False

    def load(self, **values: str) -> None:
        """Render the PSK template with `values` (LOCAL_ADDR ...) and load it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        text = (HERE / "psk.swanctl.conf.in").read_text()
        defaults = {"CONN": "gw", "CHILD": "net", "PROPOSALS": "aes128gcm16-prfsha256-x25519",
                    "ESP_PROPOSALS": "aes128gcm16", "DPD_DELAY": "0s", "START_ACTION": "none",
                    "PSK": PSK}  # fmt: skip
        for key, value in {**defaults, **values}.items():
            text = text.replace(f"@{key}@", value)
        assert "@" not in re.sub(r"#.*", "", text), text
        conf = self.dir / "swanctl.conf"
        conf.write_text(text)
        self.run("load", str(conf))

    def swanctl(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        return self.run("swanctl", *args, check=check, timeout=timeout).stdout

    def sas(self) -> str:
        """`swanctl --list-sas --raw`."""
        return self.swanctl("--list-sas", "--raw")

    def log(self, lines: int = 60) -> str:
        path = self.dir / "charon.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class IkePair:
    """ipsecd (namespace ikd-A) and charon (ikd-C) over a veth: 192.0.2.1 and 192.0.2.2 outside,
    10.61.1.1 and 10.61.2.1 inside (on lo), nets 10.61.1.0/24 and 10.61.2.0/24."""

    D_OUT, C_OUT = "192.0.2.1", "192.0.2.2"
    D_IN, C_IN = "10.61.1.1", "10.61.2.1"
    D_NET, C_NET = "10.61.1.0/24", "10.61.2.0/24"

    def __init__(self, **charon_env: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ikd-test-"))
        self.d = IpsecHost("A", self.tmp)
        self.d.ns = Netns("ikd")
        self.cns = Netns("ikdc")
        self.charon = Charon(self.cns, self.tmp, f"ikd{os.getpid() % 100000}", **charon_env)
        self.psk_file = self.tmp / "psk"
        self.psk_file.write_text(PSK + "\n")
        self.psk_file.chmod(0o600)

    def __enter__(self) -> Self:
        try:
            self.d.ns.create()
            self.cns.create()
            veth_pair(self.d.ns, self.cns, f"{self.D_OUT}/24", f"{self.C_OUT}/24")
            self.d.sh(f"ip addr add {self.D_IN}/32 dev lo")
            self.cns.check(["ip", "addr", "add", f"{self.C_IN}/32", "dev", "lo"])
            self.d.start()
            self.charon.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.charon.stop()
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
                "REMOTE_ID": self.D_OUT, "LOCAL_NET": self.C_NET, "REMOTE_NET": self.D_NET}  # fmt: skip
        self.charon.load(**{**base, **values})

    def ike_add(self, *extra: str, name: str = "gw") -> None:
        self.d.adm(
            "ike", "add", name, f"--local={self.D_OUT}", f"--remote={self.C_OUT}",
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
        self.d.sh(f"ping -c {count} -i 0.2 -W 2 -I {self.D_IN} {self.C_IN}")
        self.cns.check(["ping", "-c", str(count), "-i", "0.2", "-W", "2", "-I", self.C_IN, self.D_IN])
