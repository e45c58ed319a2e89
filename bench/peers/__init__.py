"""The peers bench/throughput measures ipsecd against, as data planes on bench/lib/topology.py's namespaces:
strongSwan charon with kernel-libipsec, and wireguard-go. Their configuration templates lie beside this
file (*.conf.in, string.Template syntax).

Both run with a /run of their own: strongSwan 5.9.8 ignores charon.piddir (it always writes
/run/charon.pid) and wireguard-go hard-codes its UAPI socket under /var/run/wireguard, so two instances on
one machine would collide. `ip netns exec` already runs each in a mount namespace of its own, where a
per-end directory is bind-mounted over /run; the host's /run is never touched.
"""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from string import Template

from bench.lib.planes import Plane
from bench.lib.prerequisites import CHARON, PLUGIN_DIR
from bench.lib.processes import BenchError, pid_of, stop_process, wait_for
from bench.lib.topology import IN_A, IN_B, NET_A, NET_B, PUB_A, PUB_B
from tests.support.netns import Netns

HERE = Path(__file__).parent
WG_PORT = 51820
CHARON_PLUGINS = (
    "random nonce openssl kdf pem pkcs1 x509 revocation constraints pubkey kernel-libipsec kernel-netlink "
    "socket-default vici updown"
)
SWANCTL_DIRS = "conf.d x509 x509ca x509aa x509ocsp x509crl x509ac pubkey private rsa ecdsa bliss pkcs8 pkcs12"


def render(template: str, dest: Path, **values: object) -> None:
    """Write template `template` (beside this file) filled with `values` to `dest`, mode 0600."""
    text = Template((HERE / template).read_text()).substitute({k: str(v) for k, v in values.items()})
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def in_private_run(run_dir: Path, argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """A command for `ip netns exec` that runs `argv` (with `env`) with `run_dir` bind-mounted over /run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    script = f"mount --bind {shlex.quote(str(run_dir))} /run && exec env {assigns} {shlex.join(argv)}"
    return ["sh", "-c", script]


class PeerPlane(Plane):
    """A peer whose tunnel processes (one per end) are started with `ns.popen` and found by pid."""

    def __init__(self, key: str, label: str, work: Path, cipher: str | None = None) -> None:
        super().__init__(key, label, work, cipher)
        self.procs: list[int] = []

    def pids(self) -> list[int]:
        return list(self.procs)

    def stop(self) -> None:
        for ns in (self.a, self.b):
            for proc in ns._procs:
                stop_process(proc)


class StrongSwanPlane(PeerPlane):
    """strongSwan charon with kernel-libipsec (userspace ESP on a TUN device), IKEv2 with a PSK, one
    tunnel-mode CHILD_SA; `esp` is its ESP proposal. 5.9.8 has no raw ESP option: ESP-in-UDP on 4500."""

    group = "strongswan"
    encap_filter = "udp port 4500 and udp[8:4] != 0"  # ESP in UDP; a zero non-ESP marker would be IKE

    def __init__(self, key: str, work: Path, esp: str, cipher: str) -> None:
        super().__init__(key, f"strongSwan kernel-libipsec {esp}", work, cipher)
        self.esp = esp

    def setup(self) -> None:
        plugins = CHARON_PLUGINS
        if not os.path.exists(f"{PLUGIN_DIR}/libstrongswan-kdf.so"):  # a separate plugin in Debian's 5.9.8
            plugins = plugins.replace(" kdf", "")
        psk = "0s" + base64.b64encode(os.urandom(32)).decode()
        ends = (("A", self.a, PUB_A, PUB_B, NET_A, NET_B), ("B", self.b, PUB_B, PUB_A, NET_B, NET_A))
        for side, _ns, local, remote, local_ts, remote_ts in ends:
            d = self.dir / side
            for sub in SWANCTL_DIRS.split():
                (d / "swanctl" / sub).mkdir(parents=True, exist_ok=True)
            render("strongswan.conf.in", d / "strongswan.conf", plugins=plugins, dir=d)
            ids = {"local_id": f"{side.lower()}.bench", "remote_id": "b.bench" if side == "A" else "a.bench"}
            nets = {"local_ts": local_ts, "remote_ts": remote_ts}
            conf = d / "swanctl" / "swanctl.conf"
            render("swanctl.conf.in", conf, local=local, remote=remote, esp=self.esp, psk=psk, **ids, **nets)
        for side, ns, *_ in ends:
            self.start_charon(ns, self.dir / side)
        res = self.swanctl(self.dir / "A", "--initiate", "--child", "net", "--timeout", "15", timeout=30)
        if res.returncode != 0:
            raise BenchError(f"swanctl --initiate failed: {res.stdout[-800:]}{res.stderr[-400:]}")
        sas = self.swanctl(self.dir / "A", "--list-sas").stdout
        (self.dir / "sas.txt").write_text(sas)
        self.notes["child_sa"] = [line.strip() for line in sas.splitlines() if "ESP" in line][:2]

    def start_charon(self, ns: Netns, d: Path) -> None:
        with open(d / "charon.stdout", "w") as out:
            env = {"STRONGSWAN_CONF": str(d / "strongswan.conf")}
            proc = ns.popen(in_private_run(d / "run", [CHARON], env), stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(pid_of(proc, "charon"))
        log = d / "charon.log"
        wait_for(f"charon in {ns.name}", (d / "charon.vici").exists, proc, logfile=log)

        # the socket file appears before charon listens on it: retry the load until it answers
        def loaded() -> bool:
            return self.swanctl(d, "--load-all", "--noprompt").returncode == 0

        wait_for(f"swanctl --load-all in {ns.name}", loaded, proc, logfile=log)

    @staticmethod
    def swanctl(d: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """`swanctl ARGS` against the charon whose configuration is in `d`."""
        env = {**os.environ, "STRONGSWAN_CONF": str(d / "strongswan.conf"), "SWANCTL_DIR": str(d / "swanctl")}
        argv = ["swanctl", *args, "--uri", f"unix://{d}/charon.vici"]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)


class WireGuardPlane(PeerPlane):
    """wireguard-go at both ends (userspace WireGuard on a TUN device), configured with `wg`."""

    group = "wireguard"
    encap_filter = f"udp port {WG_PORT}"

    def __init__(self, key: str, work: Path) -> None:
        super().__init__(key, "wireguard-go", work)

    def setup(self) -> None:
        public = []
        for side in "AB":
            (self.dir / side).mkdir(parents=True, exist_ok=True)
            private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
            fd = os.open(self.dir / side / "private.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(private)
            res = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True)
            public.append(res.stdout.strip())
        # WG_PROCESS_FOREGROUND: no daemonising, so the pid stays the one started here
        env = {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        for side, ns in (("A", self.a), ("B", self.b)):
            d = self.dir / side
            with open(d / "wireguard-go.log", "w") as out:
                argv = in_private_run(d / "run", ["wireguard-go", "wg0"], env)
                proc = ns.popen(argv, stdout=out, stderr=subprocess.STDOUT)
            self.procs.append(pid_of(proc, "wireguard-go"))
            sock = d / "run" / "wireguard" / "wg0.sock"
            wait_for(f"wireguard-go in {ns.name}", sock.exists, proc, logfile=d / "wireguard-go.log")
        ends = ((self.a, IN_A, PUB_B, NET_B), (self.b, IN_B, PUB_A, NET_A))
        for i, (ns, mine, peer, theirs) in enumerate(ends):
            # wg finds the UAPI socket under /var/run: run it in wireguard-go's mount and net namespaces
            wg = ["nsenter", "-t", str(self.procs[i]), "-m", "-n", "wg", "set", "wg0"]
            wg += ["private-key", str(self.dir / "AB"[i] / "private.key"), "listen-port", str(WG_PORT)]
            wg += ["peer", public[1 - i], "endpoint", f"{peer}:{WG_PORT}", "allowed-ips", theirs]
            res = subprocess.run(wg, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise BenchError(f"wg set in {ns.name} failed: {res.stderr.strip()}")
            ns.check(["ip", "link", "set", "wg0", "up"])
            ns.check(["ip", "route", "add", theirs, "dev", "wg0", "src", mine])
