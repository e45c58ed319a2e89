"""What the machine must have for a bench (root, /dev/net/tun, Debian packages), and what it has (the
versions measured, the load at the start) for the report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import ipsec_tunnel
from tests.support.hosts import tool

CHARON = "/usr/lib/ipsec/charon"
PLUGIN_DIR = "/usr/lib/ipsec/plugins"
LIBIPSEC = f"{PLUGIN_DIR}/libstrongswan-kernel-libipsec.so"

APT_HINT = "apt-get install -y --no-install-recommends"


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


def busy_note() -> tuple[float, str | None]:
    """The 1-minute load average now, and a warning line when the machine is not idle."""
    load = os.getloadavg()[0]
    if load < 0.5:
        return load, None
    return load, (
        f"note: the machine was not idle (load average {load:.1f} on {os.cpu_count()} CPUs at the start):\n"
        "      Mbit/s moves with other load, CPU-s/GB much less"
    )
