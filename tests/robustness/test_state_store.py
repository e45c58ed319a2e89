"""The state store under faults: damaged databases, crashes (a dropped Store, SIGKILL mid-write), a full
disk. Nothing is silently replaced, no outbound sequence number is ever sent twice, no inbound one is
accepted twice, and a clean stop loses nothing."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import random
import signal
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.esp import NH_IPV4
from ipsec_tunnel.core.events import SAEvent
from ipsec_tunnel.core.plane import Outbound
from ipsec_tunnel.core.sa import SecurityAssociation
from ipsec_tunnel.core.seqstore import Direction
from ipsec_tunnel.core.tunnel import Tunnel
from ipsec_tunnel.daemon import state
from ipsec_tunnel.daemon.state import DB_NAME, StateError, Store

from .conftest import A4, B4, DEVICE, NOW, SUITES, Suite, can_mount, inner_packet, make_config

GCM, CBC = SUITES[0], SUITES[3]
INNER = inner_packet(b"state store test")


def _ignore(event: SAEvent) -> None:
    pass


def _seq(packet: bytes | Drop) -> int:
    assert isinstance(packet, bytes), packet
    return int.from_bytes(packet[4:8], "big")


def _enc(sa: SecurityAssociation) -> bytes:
    """The next packet `sa` sends (fails the test on a drop)."""
    packet = sa.encrypt(INNER, NH_IPV4, NOW, _ignore)
    assert isinstance(packet, bytes), packet
    return packet


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _populated(directory: Path, n: int = 30) -> Path:
    """A cleanly closed store with `n` SAs and a tunnel; returns the database path."""
    store = Store(directory)
    sas = []
    for i in range(n):
        sa = SecurityAssociation(make_config(CBC, spi=0x1000 + i), NOW)
        store.add_sa(sa)
        sas.append(sa)
    store.save_tunnel(Tunnel("tun0", A4, B4).validated())
    store.save_exact(sas)
    store.close()
    return directory / DB_NAME


def _sql(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path)
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


# -- damaged databases -------------------------------------------------------------------------------


def _truncate_half(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _truncate_header(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:100])  # the 100-byte database header alone


def _zero_length(p: Path) -> None:
    p.write_bytes(b"")


def _random_bytes(p: Path) -> None:
    p.write_bytes(os.urandom(p.stat().st_size))


def _random_page(p: Path) -> None:
    """The page holding the SA table's root, overwritten with random bytes."""
    db = sqlite3.connect(p)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name='sa'").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray(p.read_bytes())
    data[(root - 1) * size : root * size] = os.urandom(size)
    p.write_bytes(bytes(data))


def _bit_flipped_page(p: Path) -> None:
    """Every byte of the SA table's root page with one bit flipped (a bad sector, not random noise)."""
    db = sqlite3.connect(p)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name='sa'").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray(p.read_bytes())
    for i in range((root - 1) * size, root * size):
        data[i] ^= 0x10
    p.write_bytes(bytes(data))


def _not_sqlite(p: Path) -> None:
    p.write_text("# ipsec-tunnel state, but not a database\nsa 0x1000 192.0.2.1 192.0.2.2\n")


def _bad_magic(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[0:6] = b"SQLitf"
    p.write_bytes(bytes(data))


def _newer_schema(p: Path) -> None:
    _sql(p, f"UPDATE meta SET value='{state.SCHEMA_VERSION + 1}' WHERE key='schema'")


def _newer_schema_renamed_table(p: Path) -> None:
    """A later schema that renamed a table: opening it must not add the old table back."""
    _sql(p, "UPDATE meta SET value='7' WHERE key='schema'", "ALTER TABLE tunnel RENAME TO tunnels")


def _garbage_schema(p: Path) -> None:
    _sql(p, "UPDATE meta SET value='two' WHERE key='schema'")


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated-half": _truncate_half,
    "truncated-to-header": _truncate_header,
    "zero-length": _zero_length,
    "random-bytes": _random_bytes,
    "random-page": _random_page,
    "bit-flipped-page": _bit_flipped_page,
    "not-sqlite": _not_sqlite,
    "bad-magic": _bad_magic,
    "newer-schema": _newer_schema,
    "newer-schema-renamed-table": _newer_schema_renamed_table,
    "garbage-schema-version": _garbage_schema,
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_damaged_database_is_refused_and_left_alone(tmp_path: Path, corrupt: Callable[[Path], None]) -> None:
    directory = tmp_path / "state"
    path = _populated(directory)
    corrupt(path)
    before = _digest(path)
    with pytest.raises(StateError) as err:
        Store(directory)
    message = str(err.value)
    del err
    gc.collect()  # a connection left open writes its WAL back into the file when it is collected
    assert str(path) in message
    assert "move it away" in message or "newer" in message
    assert path.exists(), "the damaged database was removed"
    assert _digest(path) == before, "the damaged database was changed"
    # and it stays refused: nothing was repaired or replaced behind the operator's back
    with pytest.raises(StateError):
        Store(directory)


def test_newer_schema_says_to_run_the_newer_daemon(tmp_path: Path) -> None:
    path = _populated(tmp_path)
    _newer_schema(path)
    new, ours = state.SCHEMA_VERSION + 1, state.SCHEMA_VERSION
    with pytest.raises(StateError, match=rf"schema {new}, newer than .* \({ours}\)"):
        Store(tmp_path)


def _bad_row(statement: str) -> Callable[[Path], None]:
    return lambda p: _sql(p, statement)


UNUSABLE_ROWS: dict[str, Callable[[Path], None]] = {
    "config-not-json": _bad_row("UPDATE sa SET config='{not json' WHERE spi=4096"),
    "config-not-an-sa": _bad_row("UPDATE sa SET config='{\"spi\": 1}' WHERE spi=4096"),
    "config-invalid-sa": _bad_row(
        "UPDATE sa SET config=json_set(config, '$.cipher_key', 'abcd') WHERE spi=4096"
    ),
    "seq-out-not-a-number": _bad_row("UPDATE sa SET seq_out='lots' WHERE spi=4096"),
    "seq-in-not-a-number": _bad_row("UPDATE sa SET seq_in='' WHERE spi=4096"),
    "bitmap-not-hex": _bad_row("UPDATE sa SET bitmap='xyz', clean=1 WHERE spi=4096"),
    "tunnel-not-json": _bad_row("UPDATE tunnel SET config='[' WHERE name='tun0'"),
    "tunnel-invalid": _bad_row("UPDATE tunnel SET config=json_set(config, '$.remote', 'nowhere')"),
}


@pytest.mark.parametrize("damage", UNUSABLE_ROWS.values(), ids=UNUSABLE_ROWS.keys())
def test_unusable_records_give_a_state_error(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    """A database that is sound as SQLite but holds a record ipsecd cannot use is refused, with the
    reason, when it is loaded: never a bare ValueError that a restart would meet again untold."""
    path = _populated(tmp_path)
    damage(path)
    store = Store(tmp_path)
    try:
        with pytest.raises(StateError, match="unusable"):
            store.load_sas(NOW)
            store.load_tunnels()
    finally:
        store.close()


# -- modes -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_directory_0700_and_files_0600_whatever_the_umask(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "lib" / "ipsec-tunnel"
    with _umask(0):
        store = Store(directory)
        sa = SecurityAssociation(make_config(GCM), NOW)
        store.add_sa(sa)  # a write, so the WAL and its index exist
        assert _mode(directory) == 0o700
        files = sorted(p.name for p in directory.iterdir())
        assert DB_NAME in files
        for name in files:  # state.db, state.db-wal, state.db-shm all hold keys or key-derived state
            assert _mode(directory / name) == 0o600, name
        store.close()


def test_existing_directory_and_file_are_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    _populated(directory, 1)
    os.chmod(directory, 0o755)
    os.chmod(directory / DB_NAME, 0o644)
    Store(directory).close()
    assert _mode(directory) == 0o700
    assert _mode(directory / DB_NAME) == 0o600


# -- crashes and clean stops -------------------------------------------------------------------------


def _open_sa(store: Store, suite: Suite = GCM) -> tuple[SecurityAssociation, SecurityAssociation]:
    """A stored sending SA and a receiving twin (not stored) that decrypts what it sends."""
    config = make_config(suite, esn=True)
    sa = SecurityAssociation(config, NOW)
    store.add_sa(sa)
    return sa, SecurityAssociation(config, NOW)


@pytest.mark.parametrize("block", [3, 64, state.OUT_BLOCK], ids=["block-3", "block-64", "block-default"])
def test_outbound_after_crashes_never_reuses_a_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(state, "OUT_BLOCK", block)
    rng = random.Random(block)
    store = Store(tmp_path)
    sa, peer = _open_sa(store)
    sent: list[int] = []
    ivs: set[bytes] = set()
    if block == state.OUT_BLOCK:  # the real size: once across a reservation, then restarts in a row
        counts = [block + 1, 1, 0, 2]
    else:
        counts = [
            rng.choice([0, 1, 2, block - 1, block, block + 1, rng.randrange(3 * block)]) for _ in range(12)
        ]
    for count in counts:
        for _ in range(count):
            packet = sa.encrypt(INNER, NH_IPV4, NOW, _ignore)
            assert isinstance(packet, bytes), packet
            sent.append(sa.seq_out)
            ivs.add(packet[8:16])  # the counter-mode IV: a repeat would reuse a GCM nonce
            assert peer.decrypt(packet, NOW, _ignore) == (INNER, NH_IPV4)  # never a replay to the peer
        store.close()  # the crash: no save_exact, the Store and its SA are dropped
        del store, sa
        store = Store(tmp_path)
        [sa] = store.load_sas(NOW)
        assert not sent or sa.seq_out >= sent[-1]
    store.close()
    assert sent == sorted(set(sent)), "a sequence number was sent twice or out of order"
    assert len(ivs) == len(sent)
    assert peer.drops == {}


@pytest.mark.parametrize(
    "block", [(2, 4), (state.IN_BLOCK_MIN, state.IN_BLOCK_MAX)], ids=["small", "default"]
)
def test_inbound_after_a_crash_rejects_everything_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: tuple[int, int]
) -> None:
    monkeypatch.setattr(state, "IN_BLOCK_MIN", block[0])
    monkeypatch.setattr(state, "IN_BLOCK_MAX", block[1])
    rng = random.Random(block[0])
    config = make_config(CBC, window=64)
    peer = SecurityAssociation(config, NOW)  # the sender, not stored here
    packets = [_enc(peer) for _ in range(300)]
    store = Store(tmp_path)
    sa = SecurityAssociation(config, NOW)
    store.add_sa(sa)
    accepted: list[bytes] = []
    for _round in range(3):
        order = list(range(len(packets)))
        for i in range(0, len(order), 16):  # reordered within blocks of 16, some lost
            chunk = order[i : i + 16]
            rng.shuffle(chunk)
            order[i : i + 16] = chunk
        for i in order:
            if rng.random() < 0.2:
                continue
            if sa.decrypt(packets[i], NOW, _ignore) == (INNER, NH_IPV4):
                accepted.append(packets[i])
        store.close()  # crash
        store = Store(tmp_path)
        [sa] = store.load_sas(NOW)
        for packet in accepted:
            assert sa.decrypt(packet, NOW, _ignore) is Drop.REPLAYED, _seq(packet)
        packets = [_enc(peer) for _ in range(300)]
    assert len(accepted) > 200
    # everything up to the reservation counts as received; the SA takes what lies beyond it
    peer.seq_out = sa.replay.top - 1
    at, beyond = (_enc(peer) for _ in range(2))
    assert sa.decrypt(at, NOW, _ignore) is Drop.REPLAYED
    assert sa.decrypt(beyond, NOW, _ignore) == (INNER, NH_IPV4)
    store.close()


def test_clean_stop_continues_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "OUT_BLOCK", 16)
    store = Store(tmp_path)
    tx, _peer = _open_sa(store)
    config = make_config(CBC, src=B4, dst=A4, window=32)
    rx = SecurityAssociation(config, NOW)
    store.add_sa(rx)
    sender = SecurityAssociation(config, NOW)
    for _ in range(100):  # across outbound reservations
        tx.encrypt(INNER, NH_IPV4, NOW, _ignore)
    last = tx.seq_out
    inbound = [_enc(sender) for _ in range(100)]
    holes = {99, 97, 90, 80, 77}
    for i, packet in enumerate(inbound):
        if i not in holes:
            assert rx.decrypt(packet, NOW, _ignore) == (INNER, NH_IPV4)
    top, bitmap = rx.replay.top, rx.replay.bitmap
    store.save_exact([tx, rx])
    store.close()

    store = Store(tmp_path)
    tx2, rx2 = store.load_sas(NOW)
    assert (rx2.replay.top, rx2.replay.bitmap) == (top, bitmap)
    assert _seq(tx2.encrypt(INNER, NH_IPV4, NOW, _ignore)) == last + 1  # no gap, no reuse
    for i, packet in enumerate(inbound):
        result = rx2.decrypt(packet, NOW, _ignore)
        if i in holes:  # never received, inside the window: still welcome
            assert result == (INNER, NH_IPV4), i
        else:
            assert result is Drop.REPLAYED, i
    store.close()


# -- SIGKILL in the middle of writes -----------------------------------------------------------------

_KILL_ROUNDS = 20


def _writer(directory: Path, log: Path) -> None:
    """The child: send as fast as possible with tiny reservations, reporting each commit and send."""
    state.OUT_BLOCK = 3
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    store = Store(directory)
    [sa] = store.load_sas(NOW)
    commit = store.reserve

    def reserve(sa: SecurityAssociation, direction: Direction, needed: int) -> int:
        limit = commit(sa, direction, needed)
        os.write(fd, f"R {limit}\n".encode())  # after the commit returned
        return limit

    store.reserve = reserve  # type: ignore[method-assign]
    os.write(fd, b"READY\n")
    while True:
        packet = sa.encrypt(INNER, NH_IPV4, NOW, _ignore)
        if not isinstance(packet, bytes):
            os.write(fd, f"DROP {packet}\n".encode())
            return
        os.write(fd, f"S {sa.seq_out}\n".encode())


def test_sigkill_while_writing_never_loses_a_reservation(tmp_path: Path) -> None:
    sigkill_rounds(tmp_path, _KILL_ROUNDS)


def sigkill_rounds(tmp_path: Path, rounds: int) -> None:
    """Start a writer `rounds` times and SIGKILL it at a random moment; check the store after each."""
    directory = tmp_path / "state"
    store = Store(directory)
    _open_sa(store)
    store.close()
    rng = random.Random(rounds)
    highest_sent = 0
    commits = 0
    for round_ in range(rounds):
        log = tmp_path / f"child-{round_}.log"
        log.write_bytes(b"")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                _writer(directory, log)
            finally:
                os._exit(0)
        try:
            deadline = time.monotonic() + 10
            while b"READY" not in log.read_bytes():
                assert time.monotonic() < deadline, "writer did not start"
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.03))
        finally:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the writer stopped early"
        lines = log.read_text().splitlines()
        reserved = [int(x.split()[1]) for x in lines if x.startswith("R ")]
        sent = [int(x.split()[1]) for x in lines if x.startswith("S ")]
        assert not any(x.startswith("DROP") for x in lines)
        commits += len(reserved)
        # no number sent by this writer was sent by an earlier one
        assert not sent or sent[0] > highest_sent
        highest_sent = max([highest_sent, *sent])
        store = Store(directory)  # always opens: the WAL is rolled forward or back, never torn
        [sa] = store.load_sas(NOW)
        # every reservation the writer saw committed is in the database ...
        db = sqlite3.connect(f"file:{directory / DB_NAME}?mode=ro", uri=True)
        try:
            [(stored,)] = db.execute("SELECT seq_out FROM sa").fetchall()
        finally:
            db.close()
        assert int(stored) >= max(reserved, default=0), "a committed reservation was lost"
        # ... and the restored SA resumes past every number sent (exactly, where the journal allows)
        assert sa.seq_out >= highest_sent
        store.close()
    assert highest_sent > 0 and commits > rounds  # the writers did write


# -- a full disk ---------------------------------------------------------------------------------------


def _engine_with(sa: SecurityAssociation) -> Engine:
    engine = Engine()
    engine.tunnels.add(Tunnel(DEVICE, A4, B4))
    engine.sad.add(sa)
    return engine


def _check_refuses_until_writable(
    store: Store, make_unwritable: Callable[[], object], make_writable: Callable[[], object]
) -> None:
    """With the store unwritable, sends needing a reservation are counted drops (never a packet with an
    unreserved number) and inbound packets needing one are dropped without moving the window; once
    writable, traffic resumes past everything sent."""
    config = make_config(GCM)
    sa = SecurityAssociation(config, NOW)
    store.add_sa(sa)
    engine = _engine_with(sa)
    rx_config = make_config(CBC, src=B4, dst=A4)
    rx = SecurityAssociation(rx_config, NOW)
    store.add_sa(rx)
    peer = SecurityAssociation(rx_config, NOW)
    sent: list[int] = []
    while sa.seq_out < sa.seq_limit:  # use up the first reservation
        out = engine.send(DEVICE, INNER, NOW)
        assert isinstance(out, Outbound)
        sent.append(_seq(out.payload))
    inbound = [_enc(peer) for _ in range(rx.in_limit + 1)]
    for packet in inbound[:-1]:
        assert rx.decrypt(packet, NOW, _ignore) == (INNER, NH_IPV4)

    make_unwritable()
    with pytest.raises(OSError):
        store.reserve(sa, "out", sa.seq_out + 1)
    limit = sa.seq_limit
    for _ in range(5):  # a reason of its own, never the generic "other"
        assert engine.send(DEVICE, INNER, NOW) is Drop.STORE_FAILED
    assert (sa.seq_out, sa.seq_limit) == (limit, limit)
    assert engine.tx_drops[Drop.STORE_FAILED] == 5 and sa.drops[Drop.STORE_FAILED] == 5
    assert engine.tx_accepted == len(sent)
    top = rx.replay.top
    assert rx.decrypt(inbound[-1], NOW, _ignore) is Drop.STORE_FAILED  # beyond the inbound reservation
    assert rx.replay.top == top  # not taken as received

    make_writable()
    out = engine.send(DEVICE, INNER, NOW)
    assert isinstance(out, Outbound)
    assert _seq(out.payload) == sent[-1] + 1
    assert rx.decrypt(inbound[-1], NOW, _ignore) == (INNER, NH_IPV4)


def test_read_only_store_refuses_to_send_unreserved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "OUT_BLOCK", 8)
    store = Store(tmp_path)
    _check_refuses_until_writable(
        store,
        lambda: store.db.execute("PRAGMA query_only=ON"),
        lambda: store.db.execute("PRAGMA query_only=OFF"),
    )
    store.close()


@pytest.mark.skipif(not can_mount(), reason="mounting a tiny tmpfs to fill needs root")
def test_full_disk_refuses_to_send_unreserved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "OUT_BLOCK", 8)
    mount = Path(tempfile.mkdtemp(prefix="ipsec-robust-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)], check=True)
    store: Store | None = None
    try:
        store = Store(mount / "state")
        filler = mount / "filler"

        def fill() -> None:
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(4096))
            os.close(fd)
            # SQLite may still have room inside its WAL: grow it until a commit fails for want of space
            assert store is not None
            probe = SecurityAssociation(make_config(CBC, spi=0xFFFF), NOW)
            with contextlib.suppress(OSError):
                store.add_sa(probe)
                for _ in range(10_000):
                    store.reserve(probe, "out", probe.seq_out + 1)

        _check_refuses_until_writable(store, fill, filler.unlink)
    finally:
        if store is not None:
            store.close()
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()
