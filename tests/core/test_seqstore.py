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
