"""Helpers shared by the robustness tests (peer engines, SA suites, counted receive/send), and the
`--run-soak` switch for the tests marked `soak`.

pytest reads `pytest_addoption` only from conftests it loads at start-up: this one is loaded at start-up
when `tests/robustness` (or a file in it) is named on the command line. `make soak` names no path, so the
option must also be registered nearer the root (tests/conftest.py); registering it twice is harmless here.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass

import pytest

from ipsec_tunnel.core import esp, ip
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.plane import Deliver, Outbound, Reject
from ipsec_tunnel.core.replay import ReplayWindow
from ipsec_tunnel.core.sa import Limits, SAConfig, SecurityAssociation, UdpEncap
from ipsec_tunnel.core.tunnel import Tunnel
from tests.support import esp_reference as reference
from tests.support.userns import uid_mapped

SOAK_OPTION = "--run-soak"
NOW = 1_000_000.0  # a fixed clock: the core never reads one
A4, B4 = "192.0.2.1", "192.0.2.2"  # RFC 5737 documentation addresses
A6, B6 = "2001:db8::1", "2001:db8::2"  # RFC 3849
INNER_SRC4, INNER_DST4 = bytes((10, 0, 0, 1)), bytes((10, 0, 1, 1))
INNER_SRC6, INNER_DST6 = (
    bytes.fromhex("fd000000000000000000000000000001"),
    bytes.fromhex("fd000000000000010000000000000001"),
)
DEVICE = "tun0"


def pytest_addoption(parser: pytest.Parser) -> None:
    try:
        parser.addoption(
            SOAK_OPTION, action="store_true", default=False, help="run the long soak tests (make soak)"
        )
    except ValueError:  # already registered by a conftest nearer the root
        pass


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("soak") is not None and not item.config.getoption(SOAK_OPTION, default=False):
        pytest.skip("soak test: runs only with --run-soak (make soak)")


# -- SA suites -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    """An algorithm combination with the key lengths it needs (salt included)."""

    cipher: str | None
    cipher_key_len: int
    digest: str | None = None
    digest_key_len: int = 0

    @property
    def id(self) -> str:
        """A test id."""
        return "+".join(x for x in (self.cipher, self.digest) if x)


SUITES: tuple[Suite, ...] = (
    Suite("aes-gcm", 20),  # RFC 4106, 128-bit key, 16-byte ICV
    Suite("aes-gcm-8", 36),  # 256-bit key, 8-byte ICV
    Suite("chacha20-poly1305", 36),  # RFC 7634
    Suite("aes-cbc", 16, "sha256", 32),  # RFC 3602 + RFC 4868
    Suite("aes-ctr", 28, "sha1", 20),  # RFC 3686 + RFC 2404
    Suite("des_ede3-cbc", 24, "md5", 16),  # RFC 2451 + RFC 2403
    Suite("null", 0, "sha512", 64),  # RFC 2410
    Suite(None, 0, "sha384", 48),  # integrity only
)
SUITE_IDS = [s.id for s in SUITES]


def keys(suite: Suite) -> tuple[bytes, bytes]:
    """Fresh (cipher key, digest key) for `suite`."""
    return os.urandom(suite.cipher_key_len), os.urandom(suite.digest_key_len)


def make_config(
    suite: Suite,
    *,
    spi: int = 0x1234,
    src: str = A4,
    dst: str = B4,
    esn: bool = False,
    encap: bool = False,
    window: int = 128,
    soft: Limits = Limits(),  # noqa: B008 - frozen
    hard: Limits = Limits(),  # noqa: B008 - frozen
    key: tuple[bytes, bytes] | None = None,
) -> SAConfig:
    """A validated SA configuration for `suite` from `src` to `dst`."""
    ck, dk = key or keys(suite)
    return SAConfig(
        spi=spi,
        dst=dst,
        src=src,
        cipher=suite.cipher,
        cipher_key=ck,
        digest=suite.digest,
        digest_key=dk,
        replay_window=window,
        esn=esn,
        encap=UdpEncap() if encap else None,
        soft=soft,
        hard=hard,
    ).validated()


@dataclass
class Pair:
    """Two engines sharing one SA: `tx` (host A) sends through tunnel device `DEVICE`, `rx` (host B)
    receives. `src`/`dst` are the packed outer addresses of A and B."""

    tx: Engine
    rx: Engine
    tx_sa: SecurityAssociation
    rx_sa: SecurityAssociation
    src: bytes
    dst: bytes
    udp: bool
    v6: bool

    def send(self, inner: bytes, now: float = NOW) -> Outbound:
        """Encrypt `inner` on A; fails the test unless the result is an Outbound."""
        out = self.tx.send(DEVICE, inner, now)
        assert isinstance(out, Outbound), out
        assert (out.src, out.dst) == (self.src, self.dst)
        return out

    def receive(self, data: bytes, now: float = NOW, tos: int = 0) -> Deliver | Reject | Drop | None:
        """Feed one datagram to B through the ESP-in-UDP or the raw ESP path, counted."""
        return feed(self.rx, self.src, self.dst, data, udp=self.udp, now=now, tos=tos)


def make_pair(
    suite: Suite,
    *,
    esn: bool = False,
    encap: bool = False,
    v6: bool = False,
    window: int = 128,
    start: int = 0,
    rx_tunnel: bool = True,
    soft: Limits = Limits(),  # noqa: B008 - frozen
    hard: Limits = Limits(),  # noqa: B008 - frozen
) -> Pair:
    """Engines A and B with a tunnel A -> B and an SA whose next sequence number is `start + 1`."""
    a, b = (A6, B6) if v6 else (A4, B4)
    config = make_config(suite, src=a, dst=b, esn=esn, encap=encap, window=window, soft=soft, hard=hard)
    tx = Engine()
    tx.tunnels.add(Tunnel(DEVICE, local=a, remote=b))
    tx_sa = SecurityAssociation(config, NOW, seq_out=start)
    tx.sad.add(tx_sa)
    rx = Engine()
    rx_sa = SecurityAssociation(config, NOW, replay=ReplayWindow(window, esn=esn, top=start))
    rx.sad.add(rx_sa)
    if rx_tunnel:
        rx.tunnels.add(Tunnel(DEVICE, local=b, remote=a))
    return Pair(tx, rx, tx_sa, rx_sa, tx_sa.key[1], tx_sa.key[0], encap, v6)


def inner_packet(payload: bytes, *, v6: bool = False, proto: int = ip.PROTO_UDP) -> bytes:
    """A well-formed inner IPv4 or IPv6 packet carrying `payload` (Not-ECT, so ECN leaves it alone)."""
    if v6:
        return ip.build_ipv6(INNER_SRC6, INNER_DST6, proto, len(payload)) + payload
    return ip.build_ipv4(INNER_SRC4, INNER_DST4, proto, len(payload)) + payload


def seal_raw(sa: SecurityAssociation, seq: int, plaintext: bytes) -> bytes:
    """An ESP packet for `sa` whose decrypted payload is exactly `plaintext` (inner, padding, pad length,
    next header: anything, as long as it is a multiple of the cipher's block), authenticated correctly.

    The same construction as `esp.seal` (RFC 4303 §2, RFC 4106 §5, RFC 4303 §3.3.2.1 for ESN) minus the
    padding it would add: it lets a test authenticate payloads no honest sender would build.
    """
    c = sa.config
    header = struct.pack("!II", c.spi, seq & 0xFFFFFFFF)
    cipher, auth = sa.cipher, sa.auth
    if getattr(cipher, "counter_iv", True):
        iv = reference.counter_iv(seq, c.iv_split) if cipher.iv_len else b""
    else:
        iv = os.urandom(cipher.iv_len)
    if auth is None:
        aad = struct.pack("!III", c.spi, seq >> 32, seq & 0xFFFFFFFF) if c.esn else header
        sealed: bytes = cipher.seal(iv, plaintext, aad)
        return header + iv + sealed
    ciphertext: bytes = cipher.encrypt(iv, plaintext)
    body = header + iv + ciphertext
    icv: bytes = auth.sign(body, struct.pack("!I", seq >> 32)) if c.esn else auth.sign(body)
    return body + icv


def seal_inner(sa: SecurityAssociation, seq: int, inner: bytes) -> bytes:
    """An honest ESP packet for `inner` with sequence number `seq`, whatever state `sa` is in."""
    pad = reference.padding(len(inner), max(4, sa.cipher.block))
    nh = esp.NH_IPV6 if inner[0] >> 4 == 6 else esp.NH_IPV4
    return seal_raw(sa, seq, inner + pad + bytes((len(pad), nh)))


# -- counted receive and send -----------------------------------------------------------------------


def rx_total(engine: Engine) -> int:
    """Every datagram the receive side has accounted for."""
    return engine.rx_accepted + sum(engine.rx_drops.values()) + engine.keepalives


def tx_total(engine: Engine) -> int:
    """Every packet the send side has accounted for."""
    return engine.tx_accepted + sum(engine.tx_drops.values())


def feed(
    engine: Engine, src: bytes, dst: bytes, data: bytes, *, udp: bool, now: float = NOW, tos: int = 0
) -> Deliver | Reject | Drop | None:
    """Receive one datagram and check that exactly one counter moved, by one: the one the result names."""
    accepted, keepalives, drops = engine.rx_accepted, engine.keepalives, Counter(engine.rx_drops)
    receive = engine.receive_udp if udp else engine.receive
    result = receive(src, dst, data, now, tos)
    if result is None:
        assert udp, "only the ESP-in-UDP path absorbs keepalives"
        keepalives += 1
    elif isinstance(result, Deliver):
        accepted += 1
    elif isinstance(result, Reject):
        drops[Drop.NO_TUNNEL] += 1
    else:
        assert isinstance(result, Drop), f"unexpected result {result!r}"
        drops[result] += 1
    assert (engine.rx_accepted, engine.keepalives, +engine.rx_drops) == (accepted, keepalives, +drops)
    return result


def feed_send(engine: Engine, device: str, data: bytes, now: float = NOW) -> Outbound | Deliver | Drop:
    """Send one packet read from `device` and check that exactly one send counter moved, by one."""
    accepted, drops = engine.tx_accepted, Counter(engine.tx_drops)
    result = engine.send(device, data, now)
    if isinstance(result, Outbound):
        accepted += 1
    elif isinstance(result, Deliver):  # an ICMP too-big back into the device
        drops[Drop.TOO_BIG] += 1
    else:
        assert isinstance(result, Drop), f"unexpected result {result!r}"
        drops[result] += 1
    assert (engine.tx_accepted, +engine.tx_drops) == (accepted, +drops)
    return result


def is_root() -> bool:
    """Whether the tests run as root who can act as user nobody (uid 65534): the host's root, or root of
    the session's user namespace (tests/support/userns.py maps 65534 too)."""
    return os.geteuid() == 0 and uid_mapped(65534)


def can_mount() -> bool:
    """Whether the tests may mount file systems: root, also root of the session's user namespace."""
    return os.geteuid() == 0
