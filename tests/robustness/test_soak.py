"""The robustness properties at soak scale (`make soak`: pytest -m soak --run-soak): many more fuzzed
scenarios, a 200,000-datagram flood under tracemalloc, a hundred SIGKILLed writers, and a coverage-guided
atheris run on the receive path when atheris is installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import SUITE_IDS, SUITES, Suite
from .test_exhaustion import garbage_flood
from .test_fuzz_receive import Scenario, device_packets, run_receive_scenario, scenarios
from .test_fuzz_receive import test_send_garbage_from_a_device as _send_case
from .test_state_store import sigkill_rounds

pytestmark = pytest.mark.soak

SOAK = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SOAK_RECEIVE = settings(SOAK, max_examples=5000)


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
@SOAK_RECEIVE
@given(sc=scenarios())
def test_soak_receive_hostile_datagrams(suite: Suite, sc: Scenario) -> None:
    run_receive_scenario(suite, sc)


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
@SOAK
@given(
    packets=st.lists(st.tuples(device_packets(), st.booleans()), min_size=1, max_size=50),
    path_mtu=st.sampled_from([None, 1280, 1500, 9000]),
)
def test_soak_send_garbage_from_a_device(
    suite: Suite, packets: list[tuple[bytes, bool]], path_mtu: int | None
) -> None:
    _send_case.hypothesis.inner_test(suite, packets, path_mtu)


def test_soak_memory_flood() -> None:
    garbage_flood(200_000, 64 * 1024)


def test_soak_sigkill_writers(tmp_path: Path) -> None:
    sigkill_rounds(tmp_path, 100)


# -- atheris ---------------------------------------------------------------------------------------------

ATHERIS_RUNS = int(os.environ.get("IPSEC_ATHERIS_RUNS", "300000"))
ATHERIS_SECONDS = int(os.environ.get("IPSEC_ATHERIS_SECONDS", "300"))

HARNESS = textwrap.dedent(
    '''
    """Coverage-guided fuzzing of Engine.receive / receive_udp: no exception, one counter per datagram,
    delivery only of unmodified genuine packets."""
    import os
    import sys

    import atheris

    with atheris.instrument_imports():
        from ipsec_tunnel.core import ip
        from ipsec_tunnel.core.drops import Drop
        from ipsec_tunnel.core.engine import Engine
        from ipsec_tunnel.core.plane import Deliver, Reject
        from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation
        from ipsec_tunnel.core.tunnel import Tunnel

    NOW = 1000.0
    A, B = "192.0.2.1", "192.0.2.2"
    SUITES = [
        ("aes-gcm", 20, None, 0),
        ("chacha20-poly1305", 36, None, 0),
        ("aes-cbc", 16, "sha256", 32),
        ("aes-ctr", 20, "sha1", 20),
        ("null", 0, "sha512", 64),
    ]
    PAIRS = []
    for i, (cipher, ck, digest, dk) in enumerate(SUITES):
        for esn in (False, True):
            config = SAConfig(
                spi=0x1000 + 2 * i + esn, dst=B, src=A, cipher=cipher, cipher_key=os.urandom(ck),
                digest=digest, digest_key=os.urandom(dk), esn=esn, replay_window=64,
            ).validated()
            tx, rx = Engine(), Engine()
            tx.tunnels.add(Tunnel("tun0", A, B))
            rx.tunnels.add(Tunnel("tun0", B, A))
            tx.sad.add(SecurityAssociation(config, NOW))
            rx.sad.add(SecurityAssociation(config, NOW))
            PAIRS.append((tx, rx, config.key[1], config.key[0], config.spi))


    def total(e):
        return e.rx_accepted + sum(e.rx_drops.values()) + e.keepalives


    def one_input(data):
        fdp = atheris.FuzzedDataProvider(data)
        tx, rx, src, dst, spi = PAIRS[fdp.ConsumeIntInRange(0, len(PAIRS) - 1)]
        mode = fdp.ConsumeIntInRange(0, 4)
        udp = fdp.ConsumeBool()
        inner = None
        if mode == 0:
            packet = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2000))
        elif mode == 1:
            packet = spi.to_bytes(4, "big") + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2000))
        else:
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
            inner = ip.build_ipv4(b"\\x0a\\0\\0\\1", b"\\x0a\\0\\1\\1", 17, len(payload)) + payload
            out = tx.send("tun0", inner, NOW)
            packet = bytearray(out.payload)
            if mode == 3:  # flip bytes
                for _ in range(fdp.ConsumeIntInRange(1, 4)):
                    packet[fdp.ConsumeIntInRange(0, len(packet) - 1)] ^= fdp.ConsumeIntInRange(0, 255)
            elif mode == 4:  # cut or extend
                cut = fdp.ConsumeIntInRange(0, len(packet))
                packet = packet[:cut] + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
            packet = bytes(packet)
            if packet != out.payload:
                inner = None
        before = total(rx)
        result = (rx.receive_udp if udp else rx.receive)(src, dst, packet, NOW)
        if total(rx) != before + 1:
            raise AssertionError(f"counters moved by {total(rx) - before} for {result!r}")
        if isinstance(result, Deliver):
            if inner is None or result.packet != inner:
                raise AssertionError(f"delivered a datagram the peer did not send: {packet.hex()}")
        elif inner is not None and mode == 2:
            raise AssertionError(f"a fresh genuine packet was not delivered: {result!r}")
        elif result is None:
            if not (udp and packet == b"\\xff"):
                raise AssertionError("absorbed something that is not a keepalive")
        elif not isinstance(result, (Drop, Reject)):
            raise AssertionError(f"unexpected result {result!r}")


    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
    '''
)


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
def test_soak_atheris_receive(tmp_path: Path) -> None:
    harness = tmp_path / "fuzz_receive.py"
    harness.write_text(HARNESS)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(harness),
            f"-runs={ATHERIS_RUNS}",
            f"-max_total_time={ATHERIS_SECONDS}",
            "-seed=1",
            "-max_len=4096",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=ATHERIS_SECONDS + 120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done" in proc.stderr, proc.stderr[-2000:]
