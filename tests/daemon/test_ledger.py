"""The key ledger: a key that carried traffic is remembered (by fingerprint) across `sa del`, `sa del
--all`, clean restarts and crashes, so re-adding it never repeats a (key, nonce) pair and never accepts a
replay, whatever SPI or addresses it comes back under; and a key another SA holds is refused, whatever
either's algorithm."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ipsec_tunnel.control.protocol import ProtocolError
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.esp import NH_IPV4
from ipsec_tunnel.core.events import SAEvent
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation
from ipsec_tunnel.daemon import state
from ipsec_tunnel.daemon.manager import Manager
from ipsec_tunnel.daemon.state import DB_NAME, Store
from tests.support.fakes import FakeDevices

from ..robustness.conftest import A4, B4, NOW, inner_packet

INNER = inner_packet(b"ledger test")
C4 = "198.51.100.7"


def _ignore(event: SAEvent) -> None:
    pass


class Host:
    """One ipsecd's control side on a state directory (no sockets)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.store = Store(directory)
        self.engine = Engine()
        self.manager = Manager(self.engine, self.store, FakeDevices(), now=lambda: NOW)
        self.manager.restore()

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        return self.manager.handle(op, args or {})

    def sa(self, src: str, dst: str, spi: int) -> SecurityAssociation:
        for sa in self.engine.sad:
            c = sa.config
            if (c.src, c.dst, c.spi) == (src, dst, spi):
                return sa
        raise AssertionError(f"no SA {spi:#x} {src} -> {dst}")

    def stop(self) -> None:
        """A clean stop (SIGTERM): exact positions recorded."""
        self.store.save_exact(list(self.engine.sad))
        self.store.close()

    def crash(self) -> None:
        """kill -9: nothing recorded beyond what was committed."""
        self.store.close()


def _gcm_args(key: bytes, spi: int = 0x1000, src: str = A4, dst: str = B4, **extra: Any) -> dict[str, Any]:
    return {"spi": spi, "src": src, "dst": dst, "cipher": "aes-gcm", "cipher_key": key.hex(), **extra}


def _send(sa: SecurityAssociation, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        packet = sa.encrypt(INNER, NH_IPV4, NOW, _ignore)
        assert isinstance(packet, bytes), packet
        out.append(packet)
    return out


def _seq(packet: bytes) -> int:
    return int.from_bytes(packet[4:8], "big")


def _iv(packet: bytes) -> bytes:
    return packet[8:16]


ENDINGS = ["sa-del", "sa-del-all", "clean-restart", "kill-9"]


@pytest.mark.parametrize("ending", ENDINGS)
def test_readded_gcm_key_never_repeats_an_iv_nor_accepts_a_replay(tmp_path: Path, ending: str) -> None:
    """Issue 11 item 1: an AES-GCM --duplex pair carries traffic, is deleted (or the daemon restarts or
    dies with the SA deleted), and is added again with the same key: no IV goes out twice under the key,
    and a packet captured before the delete is rejected as replayed."""
    key = os.urandom(20)
    a = Host(tmp_path / "a")
    a.call("sa.add", _gcm_args(key, duplex=True))
    before = _send(a.sa(A4, B4, 0x1000), 3)
    inbound = a.sa(B4, A4, 0x1000)
    peer = SecurityAssociation(SAConfig(0x1000, A4, B4, "aes-gcm", key).validated(), NOW)  # B -> A (dst, src)
    captured = _send(peer, 5)
    for packet in captured:
        assert inbound.decrypt(packet, NOW, _ignore) == (INNER, NH_IPV4)
    if ending == "sa-del":
        a.call("sa.del", {"spi": 0x1000, "dst": B4, "duplex": True})
    elif ending == "sa-del-all":
        a.call("sa.del", {"all": True})
    else:
        a.call("sa.del", {"all": True})
        a.stop() if ending == "clean-restart" else a.crash()
        a = Host(tmp_path / "a")
    a.call("sa.add", _gcm_args(key, duplex=True))
    after = _send(a.sa(A4, B4, 0x1000), 3)
    assert {_iv(p) for p in before}.isdisjoint(_iv(p) for p in after)
    assert min(map(_seq, after)) > max(map(_seq, before))
    inbound = a.sa(B4, A4, 0x1000)
    for packet in captured:
        assert inbound.decrypt(packet, NOW, _ignore) is Drop.REPLAYED
    a.crash()


@pytest.mark.parametrize("where", ["other-spi", "other-addresses"])
def test_known_key_rejects_replays_under_another_spi_or_address_pair(tmp_path: Path, where: str) -> None:
    """A CBC+HMAC key (no counter mode) received up to 20 under one SA, deleted and added under another
    SPI or address pair: a sender restarting its numbers under the key is rejected up to the top."""
    ck, dk = os.urandom(16), os.urandom(32)
    h = Host(tmp_path / "h")
    first: dict[str, Any] = {"spi": 0x2000, "src": B4, "dst": A4, "cipher": "aes-cbc", "cipher_key": ck.hex(),
             "digest": "sha256", "digest_key": dk.hex()}  # fmt: skip
    h.call("sa.add", first)
    rx = h.sa(B4, A4, 0x2000)
    old_peer = SecurityAssociation(SAConfig(0x2000, A4, B4, "aes-cbc", ck, "sha256", dk).validated(), NOW)
    for packet in _send(old_peer, 20):
        assert rx.decrypt(packet, NOW, _ignore) == (INNER, NH_IPV4)
    h.call("sa.del", {"all": True})
    second = dict(first, spi=0x2001) if where == "other-spi" else dict(first, src=C4)
    h.call("sa.add", second)
    src, spi = str(second["src"]), int(second["spi"])
    rx = h.sa(src, A4, spi)
    peer = SecurityAssociation(SAConfig(spi, A4, src, "aes-cbc", ck, "sha256", dk).validated(), NOW)
    for packet in _send(peer, 20):  # numbers 1..20 again, under the known key
        assert rx.decrypt(packet, NOW, _ignore) is Drop.REPLAYED
    h.crash()


def test_ledger_holds_no_key(tmp_path: Path) -> None:
    key = os.urandom(20)
    h = Host(tmp_path / "h")
    h.call("sa.add", _gcm_args(key, duplex=True))
    _send(h.sa(A4, B4, 0x1000), 2)
    h.call("sa.del", {"all": True})
    h.stop()
    db = sqlite3.connect(tmp_path / "h" / DB_NAME)
    try:
        rows = db.execute("SELECT * FROM ledger").fetchall()
        assert rows, "the ledger forgot the key"
        dump = "\n".join(db.iterdump()).lower()
    finally:
        db.close()
    assert key.hex() not in dump and key[:16].hex() not in dump


def test_ctr_sa_with_a_gcm_sas_key_is_refused(tmp_path: Path) -> None:
    """Issue 11 item 10: aes-ctr with an aes-gcm SA's key and salt shares GCM's keystream (tag mask
    included): refused, like any key another live SA holds."""
    key = os.urandom(20)  # AES-128 key + 4-byte salt (GCM) or nonce (CTR)
    h = Host(tmp_path / "h")
    h.call("sa.add", _gcm_args(key))
    ctr = {"spi": 0x1001, "src": A4, "dst": B4, "cipher": "aes-ctr", "cipher_key": key.hex(),
           "digest": "sha1", "digest_key": os.urandom(20).hex()}  # fmt: skip
    with pytest.raises(ProtocolError) as err:
        h.call("sa.add", ctr)
    assert err.value.errno == "EEXIST" and "already used by SA 0x1000" in err.value.message
    assert key.hex() not in err.value.message
    # the same key as a digest key of another SA, or a second GCM SA the other way round: refused too
    with pytest.raises(ProtocolError):
        h.call("sa.add", {**ctr, "cipher_key": os.urandom(20).hex(), "digest_key": key.hex()})
    with pytest.raises(ProtocolError):
        h.call("sa.add", _gcm_args(key, spi=0x1002, src=B4, dst=A4))
    # the other direction of the same SA (what --duplex adds) may share it
    h.call("sa.add", _gcm_args(key, src=B4, dst=A4))
    assert len(h.engine.sad) == 2
    h.crash()


def test_duplex_add_is_all_or_nothing(tmp_path: Path) -> None:
    h = Host(tmp_path / "h")
    h.store.journal.free = h.store.journal.free[-1:]  # room for one SA only: the second fails
    with pytest.raises(ProtocolError):
        h.call("sa.add", _gcm_args(os.urandom(20), duplex=True))
    assert list(h.engine.sad) == []
    h.crash()
    h = Host(tmp_path / "h")
    assert list(h.engine.sad) == []
    h.crash()


def test_duplex_directions_keep_separate_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both directions of a --duplex key are in the ledger apart (by the IV's direction bit): the busy
    direction's numbers do not push the quiet one, and each resumes above its own."""
    monkeypatch.setattr(state, "OUT_BLOCK", 4)
    key = os.urandom(20)
    h = Host(tmp_path / "h")
    h.call("sa.add", _gcm_args(key, duplex=True))
    ab, ba = h.sa(A4, B4, 0x1000), h.sa(B4, A4, 0x1000)
    sent_ab = _send(ab, 50)
    sent_ba = _send(ba, 2)  # what this host would send the other way, were it B
    h.call("sa.del", {"all": True})
    h.call("sa.add", _gcm_args(key, duplex=True))
    ab2, ba2 = h.sa(A4, B4, 0x1000), h.sa(B4, A4, 0x1000)
    assert _seq(_send(ab2, 1)[0]) > max(map(_seq, sent_ab))
    first_ba = _seq(_send(ba2, 1)[0])
    assert max(map(_seq, sent_ba)) < first_ba < max(map(_seq, sent_ab))
    assert ab2.config.iv_split != ba2.config.iv_split
    h.crash()


def test_ledger_keeps_the_largest_number_up_to_64_bits(tmp_path: Path) -> None:
    """ESN numbers beyond SQLite's signed integers, and smaller ones after larger: the ledger keeps the
    largest of each."""
    store = Store(tmp_path)
    config = SAConfig(0x1000, B4, A4, "aes-gcm", os.urandom(20), esn=True).validated()
    big = (1 << 64) - 1
    for out, seen in ((9, 10), (big, 5), (100, big - 1), (7, 7)):
        store._transaction([store._ledger_sql(config, out, seen)])
    assert store.ledger(config) == {config.iv_split: (big, big - 1)}
    store.close()
