"""The README's first command, `sudo make demo`, plays scripts/demo.sh: it must keep working, as a new
user runs it, and leave nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

DEMO = Path(__file__).parents[2] / "scripts" / "demo.sh"


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def test_the_demo_pings_through_the_tunnel_and_cleans_up() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    env.pop("IPSEC_TUNNEL_SOCKET", None)
    proc = subprocess.Popen(
        ["bash", str(DEMO)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    # the seed's ping from A's private address to B's, every echo answered through ipsec1
    assert re.search(r"4 packets transmitted, 4 received, 0% packet loss", out), out
    sa = re.search(r"A# ipsecadm sa show -s\n(.*?)\nA# ", out, re.S)
    assert sa and "0x1000" in sa.group(1), out
    # the tunnel device counted what it carried, both ways
    device = out[out.rindex("A# ifconfig ipsec1") :]
    counts = [int(n) for n in re.findall(r"[RT]X packets (\d+)", device)]
    assert len(counts) == 2 and min(counts) >= 4, device
    assert "des_ede3-cbc" in out and "Traceback" not in out
    # cleaned up: its namespaces, its daemons and its directory are gone
    tag = f"demo{proc.pid}"
    assert tag not in _netns()
    work = re.search(r"--socket (/tmp/ipsec-tunnel-demo\.\w+)/A/ipsecd\.sock", out)
    assert work, out
    assert not Path(work.group(1)).exists()
    daemons = subprocess.run(["pgrep", "-f", work.group(1)], capture_output=True, text=True)
    assert daemons.stdout == "", daemons.stdout
