"""The state store's safety beyond sequence reservations: lifetimes that no restart extends, one daemon
per state directory, a journal that a kill while attaching (or another database's journal) cannot roll
back, clean rows that become reservations again, refused untrusted paths, and a full disk that is named
as such."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import pytest

from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.esp import NH_IPV4
from ipsec_tunnel.core.events import SAEvent
from ipsec_tunnel.core.sa import Limits, SecurityAssociation
from ipsec_tunnel.daemon import journal as journal_module
from ipsec_tunnel.daemon import state
from ipsec_tunnel.daemon.state import DB_NAME, JOURNAL_NAME, StateError, Store

from ..robustness.conftest import A4, B4, NOW, SUITES, inner_packet, is_root, make_config

GCM, CBC = SUITES[0], SUITES[3]
INNER = inner_packet(b"state safety")


def _ignore(event: SAEvent) -> None:
    pass


def _send(sa: SecurityAssociation, n: int, now: float = NOW) -> list[bytes | Drop]:
    return [sa.encrypt(INNER, NH_IPV4, now, _ignore) for _ in range(n)]


def _packets(results: list[bytes | Drop]) -> list[bytes]:
    return [r for r in results if isinstance(r, bytes)]


# -- lifetimes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["clean", "kill-9"])
def test_hard_packet_limit_holds_across_restarts(tmp_path: Path, ending: str) -> None:
    """Issue 11 item 3: a sender with a hard limit of 10 packets never sends more than 10 in all, however
    often it restarts, and a hard-expired SA stays expired."""
    config = make_config(GCM, soft=Limits(packets=5), hard=Limits(packets=10))
    store = Store(tmp_path)
    sa = SecurityAssociation(config, NOW)
    store.add_sa(sa)
    sent = _packets(_send(sa, 7))
    for _ in range(3):
        if ending == "clean":
            store.save_exact([sa])
        store.close()
        store = Store(tmp_path)
        [sa] = store.load_sas(NOW)
        assert sa.soft_fired or sa.dead, "a dying SA came back mature"
        sent += _packets(_send(sa, 7))
    assert len(sent) <= 10
    assert sa.dead is not None and "hard" in sa.dead
    assert _send(sa, 1) == [Drop.EXPIRED]
    store.save_exact([sa])
    store.close()
    store = Store(tmp_path)
    [sa] = store.load_sas(NOW)
    assert sa.dead is not None and "hard" in sa.dead
    assert _send(sa, 1) == [Drop.EXPIRED]
    store.close()


def test_hard_byte_limit_holds_across_crashes(tmp_path: Path) -> None:
    limit = 20 * len(INNER)
    config = make_config(GCM, hard=Limits(bytes=limit))
    store = Store(tmp_path)
    sa = SecurityAssociation(config, NOW)
    store.add_sa(sa)
    nbytes = len(INNER) * len(_packets(_send(sa, 15)))
    for _ in range(4):
        store.close()  # kill -9
        store = Store(tmp_path)
        [sa] = store.load_sas(NOW)
        nbytes += len(INNER) * len(_packets(_send(sa, 15)))
    assert nbytes <= limit + len(INNER)  # the packet reaching the limit is the last one
    store.close()


def test_inbound_packet_limit_holds_across_crashes(tmp_path: Path) -> None:
    config = make_config(CBC, hard=Limits(packets=10))
    peer = SecurityAssociation(make_config(CBC, key=(config.cipher_key, config.digest_key)), NOW)
    store = Store(tmp_path)
    rx = SecurityAssociation(config, NOW)
    store.add_sa(rx)
    accepted = 0
    for _ in range(3):
        for packet in _packets(_send(peer, 6)):
            accepted += rx.decrypt(packet, NOW, _ignore) == (INNER, NH_IPV4)
        store.close()
        store = Store(tmp_path)
        [rx] = store.load_sas(NOW)
    assert accepted <= 10
    assert rx.dead is not None
    store.close()


def test_lifetime_seconds_count_from_the_wall_clock_add_time(tmp_path: Path) -> None:
    """The age survives a restart even when the daemon's clock starts again (a monotonic clock after a
    reboot): 60 s after the add on the wall clock, an SA with a 50 s hard lifetime is expired."""
    wall = [1_700_000_000.0]
    config = make_config(GCM, soft=Limits(seconds=20), hard=Limits(seconds=50))
    store = Store(tmp_path, wall=lambda: wall[0])
    sa = SecurityAssociation(config, 100.0)  # the daemon's clock read 100 at the add
    store.add_sa(sa)
    store.save_exact([sa])
    store.close()
    wall[0] += 30
    store = Store(tmp_path, wall=lambda: wall[0])
    [sa] = store.load_sas(5.0)  # a clock that restarted near 0
    assert sa.soft_fired and sa.dead is None
    store.close()
    wall[0] += 30
    store = Store(tmp_path, wall=lambda: wall[0])
    [sa] = store.load_sas(7.0)
    assert sa.dead is not None and "seconds" in sa.dead
    store.close()


# -- one daemon per directory --------------------------------------------------------------------------


def test_second_store_on_a_directory_is_refused(tmp_path: Path) -> None:
    first = Store(tmp_path)
    try:
        with pytest.raises(StateError, match=rf"state directory {tmp_path} in use by pid {os.getpid()}"):
            Store(tmp_path)
    finally:
        first.close()
    Store(tmp_path).close()  # released with the store


def test_lock_names_the_pid_after_a_fork(tmp_path: Path) -> None:
    store = Store(tmp_path)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: what a daemonized ipsecd does
        try:
            store.claim()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    try:
        with pytest.raises(StateError, match=f"in use by pid {pid}"):
            Store(tmp_path)
    finally:
        store.close()


# -- the journal ---------------------------------------------------------------------------------------


def _attach_killed_at(directory: Path, line: int) -> bool:
    """In a child process: open the store and load its SAs, dying (os._exit) at the `line`-th line
    executed inside Journal.attach. True when the child got that far (it was killed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        count = 0

        def trace(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
            nonlocal count
            if frame.f_code is journal_module.Journal.attach.__code__:
                if event == "line":
                    count += 1
                    if count == line:
                        os._exit(9)
                return trace
            return None

        try:
            store = Store(directory)
            sys.settrace(trace)
            store.load_sas(NOW)
            sys.settrace(None)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) == 9


@pytest.mark.skipif(not Path(journal_module.BOOT_ID).exists(), reason="no boot id: the journal is unused")
def test_kill_while_attaching_never_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 8: a process killed at any point of a journal slot's attach leaves a journal that
    restores neither sequence number 0 nor a replay window below what was accepted."""
    monkeypatch.setattr(state, "OUT_BLOCK", 1 << 20)  # only the journal knows the exact positions
    config = make_config(GCM, esn=True)
    store = Store(tmp_path)
    tx = SecurityAssociation(config, NOW)
    store.add_sa(tx)
    rx_config = make_config(CBC, src=B4, dst=A4)
    rx = SecurityAssociation(rx_config, NOW)
    store.add_sa(rx)
    peer = SecurityAssociation(rx_config, NOW)
    captured = _packets(_send(peer, 300))
    for packet in captured:
        assert rx.decrypt(packet, NOW, _ignore) == (INNER, NH_IPV4)
    highest = max(int.from_bytes(p[4:8], "big") for p in _packets(_send(tx, 1000)))
    store.close()  # kill -9 after 1000 sent and 300 received
    line = 1
    while _attach_killed_at(tmp_path, line):
        store = Store(tmp_path)
        tx2, rx2 = store.load_sas(NOW)
        assert tx2.seq_out >= highest, f"killed at line {line} of attach: resumes at {tx2.seq_out}"
        for packet in captured:
            assert rx2.decrypt(packet, NOW, _ignore) is Drop.REPLAYED, line
        store.close()
        line += 1
    assert line > 3  # the child was killed inside attach a few times


@pytest.mark.skipif(not Path(journal_module.BOOT_ID).exists(), reason="no boot id: the journal is unused")
def test_journal_of_another_database_is_ignored(tmp_path: Path) -> None:
    """A journal is trusted only by the database that wrote it: another directory's journal (copied
    over, or a database moved away and back) never lowers what the database reserved."""
    config = make_config(CBC)
    peer = SecurityAssociation(config, NOW)
    packets = _packets(_send(peer, 100))
    one, two = tmp_path / "one", tmp_path / "two"
    for directory, count in ((one, 100), (two, 3)):
        store = Store(directory)
        rx = SecurityAssociation(config, NOW)
        store.add_sa(rx)
        for packet in packets[:count]:
            assert rx.decrypt(packet, NOW, _ignore) == (INNER, NH_IPV4)
        store.close()  # kill -9
    shutil.copyfile(two / JOURNAL_NAME, one / JOURNAL_NAME)
    store = Store(one)
    [rx] = store.load_sas(NOW)
    for packet in packets:
        assert rx.decrypt(packet, NOW, _ignore) is Drop.REPLAYED
    store.close()


# -- clean rows ----------------------------------------------------------------------------------------


def test_packet_accepted_after_a_clean_restart_is_not_forgotten_by_a_crash(tmp_path: Path) -> None:
    """Issue 11 item 9: receive 1..10 without 5, stop cleanly; restart, accept 5, crash; restart: 5 is a
    replay."""
    config = make_config(CBC)
    peer = SecurityAssociation(config, NOW)
    packets = _packets(_send(peer, 10))
    store = Store(tmp_path)
    rx = SecurityAssociation(config, NOW)
    store.add_sa(rx)
    for i, packet in enumerate(packets):
        if i != 4:
            assert rx.decrypt(packet, NOW, _ignore) == (INNER, NH_IPV4)
    store.save_exact([rx])
    store.close()
    store = Store(tmp_path)
    [rx] = store.load_sas(NOW)
    assert rx.decrypt(packets[4], NOW, _ignore) == (INNER, NH_IPV4)
    store.close()  # kill -9
    store = Store(tmp_path)
    [rx] = store.load_sas(NOW)
    for packet in packets:
        assert rx.decrypt(packet, NOW, _ignore) is Drop.REPLAYED
    store.close()


# -- paths ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not is_root(), reason="giving a directory to another user needs root")
def test_state_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    try:
        with pytest.raises(StateError, match="owned by uid 65534"):
            Store(directory)
        assert list(directory.iterdir()) == []
    finally:  # back to us: in a user namespace, uid 65534 is an id the host's user could not remove
        os.chown(directory, os.geteuid(), os.getegid())


@pytest.mark.skipif(not is_root(), reason="giving a directory to another user needs root")
def test_state_directory_under_another_users_directory_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "t"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    try:
        with pytest.raises(StateError, match="owned by uid 65534"):
            Store(theirs / "state")
    finally:  # back to us: in a user namespace, uid 65534 is an id the host's user could not remove
        os.chown(theirs, os.geteuid(), os.getegid())


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_state_directory_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    os.chmod(directory, mode)
    with pytest.raises(StateError, match="writable by group or others"):
        Store(directory)


def test_parent_writable_by_others_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)
    with pytest.raises(StateError, match="writable by group or others"):
        Store(tmp_path / "state")
    os.chmod(tmp_path, 0o1777)  # like /tmp: fine
    Store(tmp_path / "state").close()
    os.chmod(tmp_path, 0o700)


@pytest.mark.parametrize("name", [JOURNAL_NAME, "lock", DB_NAME])
def test_symlinks_in_the_state_directory_are_not_followed(tmp_path: Path, name: str) -> None:
    directory = tmp_path / "state"
    Store(directory).close()
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    (directory / name).unlink()
    (directory / name).symlink_to(target)
    with pytest.raises(StateError):
        Store(directory)
    assert target.read_bytes() == b"precious"


# -- a full disk -------------------------------------------------------------------------------------


def test_full_disk_at_creation_leaves_nothing_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 item 12 (and issue 12): a new state database that cannot be made leaves no partial
    state.db.new, and the message does not speak of a database that never existed."""
    real = sqlite3.connect

    def full(path: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        db: sqlite3.Connection = real(path, *args, **kwargs)
        if str(path).endswith(".new"):
            db.close()
            raise sqlite3.OperationalError("database or disk is full")
        return db

    monkeypatch.setattr(sqlite3, "connect", full)
    directory = tmp_path / "state"
    with pytest.raises(StateError) as err:
        Store(directory)
    message = str(err.value)
    assert "disk full" in message and "keep it" not in message
    assert not (directory / (DB_NAME + ".new")).exists()
    assert not (directory / DB_NAME).exists()


def test_failed_reservations_are_logged_once_in_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(state, "OUT_BLOCK", 2)
    store = Store(tmp_path)
    sa = SecurityAssociation(make_config(GCM), NOW)
    store.add_sa(sa)
    _send(sa, 2)
    store.db.execute("PRAGMA query_only=ON")
    with caplog.at_level(logging.ERROR):
        assert _send(sa, 50) == [Drop.STORE_FAILED] * 50
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "store_failed" in errors[0].getMessage()
    store.db.execute("PRAGMA query_only=OFF")
    assert isinstance(_send(sa, 1)[0], bytes)
    store.close()


def test_full_disk_at_the_lock_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state directory made on a full disk: the lock file's pid cannot be written; a StateError (one
    line from ipsecd), not an OSError's traceback."""

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(StateError, match=r"cannot write lock file .*No space left on device .*disk full"):
        Store(tmp_path / "state")


# -- reservations committed ahead ------------------------------------------------------------------------


def _reservations(directory: Path) -> dict[int, tuple[int, int]]:
    """Each SA's stored (seq_out, seq_in) reservations by SPI, as another process would read them."""
    db = sqlite3.connect(directory / DB_NAME)
    try:
        rows = db.execute("SELECT spi, seq_out, seq_in FROM sa").fetchall()
    finally:
        db.close()
    return {spi: (int(seq_out), int(seq_in)) for spi, seq_out, seq_in in rows}


def test_reserve_ahead_commits_the_next_block_before_it_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within half a block of a limit, `Store.reserve_ahead` commits the next block (durable before the
    call returns): to send, past the limit, as the next packet would have; to accept, from the next
    number, a block of the size `reserve` would give, not grown, so a crash still costs at most one
    block. A restart after it sends no number again."""
    monkeypatch.setattr(state, "OUT_BLOCK", 64)
    back = make_config(GCM, spi=0x2000, src=B4, dst=A4)
    peer = SecurityAssociation(back, NOW)
    store = Store(tmp_path)
    tx = SecurityAssociation(make_config(GCM), NOW)
    rx = SecurityAssociation(make_config(GCM, spi=0x2000, src=B4, dst=A4, key=(back.cipher_key, b"")), NOW)
    store.add_sa(tx)
    store.add_sa(rx)
    assert (tx.seq_limit, rx.in_limit) == (64, state.IN_BLOCK_MIN)
    sent = _packets(_send(tx, 31))
    assert store.reserve_ahead([tx, rx]) == 0  # 33 numbers left to send, all 32 to accept
    sent += _packets(_send(tx, 1))
    block = state.IN_BLOCK_MIN
    for packet in _packets(_send(peer, block + 1 + block // 2)):  # one reservation in the path, at 33
        assert rx.decrypt(packet, NOW, _ignore) == (INNER, NH_IPV4)
    assert rx.in_limit == 2 * block + 1
    assert store.reserve_ahead([tx, rx]) == 2  # 32 and 16 left: half a block each
    in_limit = block + 1 + block // 2 + 1 + block  # from the next number, a block not grown (it would
    # double, a second reservation within a second, were it one in a packet's path)
    assert (tx.seq_limit, rx.in_limit) == (64 + 1 + 64, in_limit)  # to send: past the limit
    stored = _reservations(tmp_path)
    assert stored[tx.config.spi][0] == 129 and stored[0x2000][1] == in_limit
    sent += _packets(_send(tx, 90))  # up to 122: no reservation in any packet's path
    assert tx.seq_limit == 129
    store.close()  # kill -9
    store = Store(tmp_path)
    restored = {sa.config.spi: sa for sa in store.load_sas(NOW)}
    again = _packets(_send(restored[tx.config.spi], 3))
    seqs = [int.from_bytes(p[4:8], "big") for p in sent + again]
    assert len(set(seqs)) == len(seqs) == 125  # no number sent twice across the crash
    store.close()


def test_reserve_ahead_looks_at_a_slice_of_the_sas_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AHEAD_SLICE SAs per call, the next ones at the next call, round the list."""
    monkeypatch.setattr(state, "OUT_BLOCK", 4)
    monkeypatch.setattr(state, "AHEAD_SLICE", 2)
    store = Store(tmp_path)
    sas = [SecurityAssociation(make_config(GCM, spi=0x3000 + i), NOW) for i in range(3)]
    for sa in sas:
        store.add_sa(sa)
        _send(sa, 3)  # 1 left before the limit of 4
    assert store.reserve_ahead(sas) == 2 * 1  # SAs 0 and 1 (their inbound limits are far)
    assert [sa.seq_limit for sa in sas] == [9, 9, 4]
    assert store.reserve_ahead(sas) == 1  # SA 2, then SA 0 (6 left: nothing)
    assert store.reserve_ahead(sas) == 0  # SAs 1 and 2
    assert [sa.seq_limit for sa in sas] == [9, 9, 9]
    store.close()


def test_a_top_up_keeps_a_busy_sas_inbound_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An inbound block grows while reservations in the packets' path come less than a second apart and
    starts small again after a quiet second. A top-up counts as activity: the reservation in a packet's
    path after it grows the block rather than shrinking it to the smallest (a run of small commits)."""
    clock = [100.0]
    monkeypatch.setattr(state, "time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    back = make_config(GCM, spi=0x2000, src=B4, dst=A4)
    peer = SecurityAssociation(back, NOW)
    rx = SecurityAssociation(make_config(GCM, spi=0x2000, src=B4, dst=A4, key=(back.cipher_key, b"")), NOW)
    store = Store(tmp_path)
    store.add_sa(rx)
    block = state.IN_BLOCK_MIN

    def accept(n: int) -> None:
        for packet in _packets(_send(peer, n)):
            assert rx.decrypt(packet, NOW, _ignore) == (INNER, NH_IPV4)

    accept(block + 1)  # past the first limit: reserved in the path, the smallest block
    assert rx.in_limit == block + 1 + block
    clock[0] += 0.9
    accept(block // 2)
    assert store.reserve_ahead([rx]) == 1 and rx.in_limit == rx.replay.top + 1 + block
    clock[0] += 0.6  # 1.5 s after the reservation in the path, 0.6 s after the top-up
    accept(rx.in_limit - rx.replay.top + 1)
    assert rx.in_limit == rx.replay.top + 2 * block  # grown, not back to the smallest
    store.close()
