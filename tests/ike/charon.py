"""strongSwan charon as a test peer in a network namespace (tests/ike/charon-peer.sh, kernel-libipsec)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
SCRIPT = HERE / "charon-peer.sh"
TEMPLATE = HERE / "psk.swanctl.conf.in"
PLUGINS = [
    "random",
    "nonce",
    "openssl",
    "pem",
    "pkcs1",
    "pkcs8",
    "x509",
    "pubkey",
    "revocation",
    "constraints",
    "hmac",
    "kdf",
    "gcm",
    "aes",
    "sha1",
    "sha2",
    "curve25519",
    "chapoly",
    "vici",
    "kernel-libipsec",
    "kernel-netlink",
    "socket-default",
    "updown",
    "counters",
]


def charon_missing() -> str | None:
    """None if charon can run here, else why not."""
    if not os.path.exists("/usr/lib/ipsec/charon"):
        return "strongSwan charon not installed (apt-get install strongswan-charon)"
    if shutil.which("swanctl") is None:
        return "swanctl not installed (apt-get install strongswan-swanctl)"
    for p in PLUGINS:
        if not os.path.exists(f"/usr/lib/ipsec/plugins/libstrongswan-{p}.so"):
            return f"strongSwan plugin {p} missing (libcharon-extra-plugins, libstrongswan-*-plugins)"
    return None


class Charon:
    """One charon in namespace `ns` (made by the test), state in `workdir`."""

    def __init__(self, peer: str, ns: str, workdir: Path, **extra: str) -> None:
        self.env = dict(os.environ, PEER=peer, PEER_NS=ns, PEER_DIR=str(workdir / "charon"), **extra)
        self.workdir = workdir

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(
            [str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"charon-peer {args}: {proc.stdout} {proc.stderr} {self.log(30)}")
        return proc.stdout + proc.stderr

    def start(self) -> None:
        self.run("start")

    def load(self, **values: str) -> None:
        env = dict(self.env, **values)
        text = subprocess.run(
            [str(SCRIPT), "render", str(TEMPLATE)], env=env, capture_output=True, text=True, check=True
        ).stdout
        conf = self.workdir / "swanctl.conf"
        conf.write_text(text)
        self.run("load", str(conf))

    def swanctl(self, *args: str, check: bool = False, timeout: float = 60) -> str:
        return self.run("swanctl", *args, check=check, timeout=timeout)

    def sas(self) -> str:
        return self.swanctl("--list-sas", "--raw")

    def log(self, n: int = 50) -> str:
        path = self.workdir / "charon" / "charon.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        self.run("stop", check=False)
