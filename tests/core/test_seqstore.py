"""The sequence store surface (core/seqstore.py): an SA reserves through it before going past a limit,
writes its journal slot with every packet, and stops writing once detached."""

from __future__ import annotations

from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.esp import NH_IPV4
from ipsec_tunnel.core.sa import Limits, SecurityAssociation
from ipsec_tunnel.core.seqstore import MemoryStore

from .test_sa import Events, cbc_config, gcm_config


def test_the_journal_holds_the_last_number_sent_and_the_highest_accepted() -> None:
    store = MemoryStore()
    tx, rx = SecurityAssociation(gcm_config(), 0.0), SecurityAssociation(gcm_config(), 0.0)
    tx.attach(store, store.slot(tx))
    sent = [tx.encrypt(b"x" * 20, NH_IPV4, 0.0, Events()) for _ in range(5)]
    assert store.journal[tx.key][1] == 5
    rx_store = MemoryStore()
    rx.attach(rx_store, rx_store.slot(rx))
    for packet in (sent[3], sent[1]):  # out of order: the top stays the highest
        assert isinstance(packet, bytes) and rx.decrypt(packet, 0.0, Events()) == (b"x" * 20, NH_IPV4)
    assert rx_store.journal[rx.key][0] == 4
    many, _ = rx.decrypt_many([p for p in sent if isinstance(p, bytes)][4:], 0.0, Events())
    assert rx_store.journal[rx.key][0] == 5 and len(many) == 1


def test_a_detached_sa_writes_no_journal_and_reserves_nothing() -> None:
    store = MemoryStore(grant=2)
    tx = SecurityAssociation(cbc_config(), 0.0)
    tx.seq_limit = 0
    tx.attach(store, store.slot(tx))
    assert isinstance(tx.encrypt(b"x", NH_IPV4, 0.0, Events()), bytes)
    assert store.calls == [("out", 1)] and tx.seq_limit == 3
    tx.attach(None)
    for _ in range(2):
        assert isinstance(tx.encrypt(b"x", NH_IPV4, 0.0, Events()), bytes)
    assert store.journal[tx.key][1] == 1  # not written since
    assert tx.encrypt(b"x", NH_IPV4, 0.0, Events()) is Drop.STORE_FAILED  # past the limit, no store
    assert tx.seq_out == 3


def test_volume_counts_are_reserved_through_the_store() -> None:
    store = MemoryStore(grant=10)
    tx = SecurityAssociation(cbc_config(hard=Limits(packets=100)), 0.0)
    tx.packets_limit = 0
    tx.attach(store)
    assert isinstance(tx.encrypt(b"x", NH_IPV4, 0.0, Events()), bytes)
    assert store.calls == [("volume", 1)] and tx.packets_limit == 11
    store.fail = True
    tx.packets_limit = tx.packets
    assert tx.encrypt(b"x", NH_IPV4, 0.0, Events()) is Drop.STORE_FAILED
    assert tx.packets == 1


def test_reserve_ahead_commits_only_within_the_margin() -> None:
    """`reserve_ahead` reserves past a limit once at most `margin` numbers remain before it (to send: from
    the limit on; to accept: from the next number), so the packets up to the new limit need no store
    call of their own."""
    store = MemoryStore(grant=100)
    tx = SecurityAssociation(gcm_config(), 0.0)
    tx.seq_limit = 10
    tx.attach(store)
    assert not tx.reserve_ahead("out", 5) and store.calls == []  # 10 remain
    for _ in range(6):
        assert isinstance(tx.encrypt(b"x" * 20, NH_IPV4, 0.0, Events()), bytes)
    assert tx.reserve_ahead("out", 5)  # 4 remain: reserved past the limit, as the 11th packet would
    assert store.calls == [("out", 11)] and tx.seq_limit == 111
    sent = [tx.encrypt(b"x" * 20, NH_IPV4, 0.0, Events()) for _ in range(105)]
    assert all(isinstance(p, bytes) for p in sent) and store.calls == [("out", 11)]

    rx_store = MemoryStore(grant=100)
    rx = SecurityAssociation(gcm_config(), 0.0)
    rx.in_limit = 10
    rx.attach(rx_store)
    for packet in sent[:6]:  # numbers 7-12: the first past the limit reserves in the packet's path
        assert isinstance(packet, bytes) and rx.decrypt(packet, 0.0, Events()) == (b"x" * 20, NH_IPV4)
    assert rx_store.calls == [("in", 11)] and rx.in_limit == 111
    assert not rx.reserve_ahead("in", 98)  # 99 remain above 12
    assert rx.reserve_ahead("in", 99) and rx_store.calls[-1] == ("in", 13) and rx.in_limit == 113


def test_reserve_ahead_reserves_nothing_it_must_not() -> None:
    """No store, a dead SA, a limit at the SA's last number, or a refusing store: nothing reserved."""
    tx = SecurityAssociation(gcm_config(), 0.0)
    tx.seq_limit = 1
    assert not tx.reserve_ahead("out", 5)  # no store
    store = MemoryStore(fail=True)
    tx.attach(store)
    assert not tx.reserve_ahead("out", 5) and tx.seq_limit == 1  # refused
    store.fail = False
    tx.dead = "hard lifetime reached"
    assert not tx.reserve_ahead("out", 5) and len(store.calls) == 1
    tx.dead = None
    tx.seq_limit = tx.config.seq_max
    assert not tx.reserve_ahead("out", 1 << 40) and len(store.calls) == 1
