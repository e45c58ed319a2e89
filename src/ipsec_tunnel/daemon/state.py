"""Persistent state in SQLite: SAs, tunnels, and the sequence-number reservations that keep a restart
(clean or `kill -9`) from reusing an outbound sequence number or re-accepting an inbound one.

Outbound: a number is sent only after a reservation at or above it is committed; a restart resumes past
the reservation. Inbound: a number is accepted only below a committed reservation; a restart treats
everything up to the reservation as already received. A clean shutdown records the exact positions; a
restart turns them back into a reservation before the first packet is accepted, so the next crash loses
nothing either.

Lifetimes: packet and byte counts are reserved in blocks the same way (a crash counts the whole block as
used), the expired or dying state is recomputed from them, and the time an SA was added is kept in
wall-clock terms, so no restart extends a lifetime.

The key ledger outlives the SAs: for every key that was ever reserved numbers, a fingerprint (an HMAC of
the key under a random secret of this database, never the key) with, per IV domain, the highest
outbound reservation and inbound reservation. An SA added with a known key resumes above them (see
`Store.add_sas`), so `sa del` and `sa add` with the same key never repeat a nonce or accept a replay.

One daemon per directory: the store holds an exclusive lock on `lock` inside it while open.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.events import SAEvent
from ..core.replay import ReplayWindow
from ..core.sa import SAConfig, SecurityAssociation
from ..core.seqstore import NO_LIMIT as SA_NO_LIMIT
from ..core.seqstore import Direction
from ..core.tunnel import Tunnel
from .journal import Journal
from .paths import UntrustedPath, check_directory, open_private

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: the key ledger, lifetime counts, the wall-clock add time, the database id
DEFAULT_DIR = "/var/lib/ipsec-tunnel"
DB_NAME = "state.db"
JOURNAL_NAME = "journal"
LOCK_NAME = "lock"
VOLUME_BLOCKS = 32  # a crash costs at most 1/32 of the smallest packet or byte lifetime
STORE_ERROR_EVERY = 10.0  # seconds between two log lines about a failing store
_LEDGER_LABEL = b"ipsec-tunnel key ledger v1\0"
WHOLE_SPACE = 2  # the ledger domain of a key whose IVs carry no direction bit
OUT_BLOCK = 1 << 16  # outbound numbers reserved per commit
IN_BLOCK_MIN = 32  # inbound reservation grows from this ...
IN_BLOCK_MAX = 1 << 16  # ... to this while the SA is busy
AHEAD_SLICE = 256  # SAs `Store.reserve_ahead` looks at per call at most

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sa (
    dst TEXT NOT NULL, src TEXT NOT NULL, spi INTEGER NOT NULL,
    config TEXT NOT NULL,
    created REAL NOT NULL,
    seq_out TEXT NOT NULL,          -- reserved (or, after a clean stop, exact) last outbound number
    seq_in TEXT NOT NULL,           -- reserved (or exact) highest inbound number
    bitmap TEXT NOT NULL,           -- replay bitmap (hex) after a clean stop; '' after reservations
    clean INTEGER NOT NULL,         -- 1: positions are exact; 0: they are reservations
    position INTEGER NOT NULL,      -- order added
    PRIMARY KEY (dst, src, spi)
);
CREATE TABLE IF NOT EXISTS tunnel (name TEXT PRIMARY KEY, config TEXT NOT NULL, position INTEGER NOT NULL);
"""
_LEDGER_TABLE = """
CREATE TABLE IF NOT EXISTS ledger (
    fp TEXT NOT NULL,               -- HMAC-SHA256 of the key under meta.ledger_secret
    domain INTEGER NOT NULL,        -- the IV direction bit (0 or 1), or 2: no direction bit
    seq_out TEXT NOT NULL,          -- highest outbound number ever reserved under this key and domain
    seq_in TEXT NOT NULL,           -- highest inbound number ever reserved (accepted or treated as seen)
    PRIMARY KEY (fp, domain)
)"""
_SCHEMA += _LEDGER_TABLE + ";\n"
_SA_COLUMNS_2 = (  # added by schema 2 to schema 1's sa table
    ("packets", "TEXT NOT NULL DEFAULT '0'"),  # reserved (or, after a clean stop, exact) packet count
    ("bytes", "TEXT NOT NULL DEFAULT '0'"),  # the same for bytes
    ("dead", "TEXT NOT NULL DEFAULT ''"),  # why it stopped passing traffic, after a clean stop
    ("soft", "INTEGER NOT NULL DEFAULT 0"),  # soft lifetime reached, after a clean stop
    ("added_wall", "REAL"),  # wall-clock time it was added (NULL: `created`, schema 1)
)


def _ignore(event: SAEvent) -> None:
    pass


_INSERT_SA = (
    "INSERT INTO sa (dst, src, spi, config, created, seq_out, seq_in, bitmap, clean, position, packets, "
    "bytes, dead, soft, added_wall) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_DELETE_SA = "DELETE FROM sa WHERE dst=? AND src=? AND spi=?"


class StateError(Exception):
    """The state store cannot be used; the message says why and what to do."""


@dataclass
class _InState:
    block: int = IN_BLOCK_MIN
    stamp: float = 0.0


def _domain(config: SAConfig) -> int:
    """The ledger domain of an SA's key: the direction bit of its counter-mode IVs, else the whole space.
    Both ends derive it from the SA alone (never from which host they are), so it stays right behind a
    NAT, and it is exactly the part of the nonce space this SA's packets use."""
    return WHOLE_SPACE if config.iv_split is None else config.iv_split


def key_material(config: SAConfig) -> bytes:
    """The key bytes a ledger fingerprint covers: the cipher key (salt included), else the digest key."""
    return config.cipher_key or config.digest_key


class Store:
    """The state database of one ipsecd, and the `core.seqstore.SequenceStore` of every SA it holds (with
    the journal's slots)."""

    def __init__(self, directory: str | Path = DEFAULT_DIR, wall: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self.path = self.dir / DB_NAME
        self.wall = wall
        self._in: dict[tuple[bytes, bytes, int], _InState] = {}
        self._error_logged = -STORE_ERROR_EVERY
        self._atomic = False  # inside `atomic`: transactions are savepoints of its one
        self._ahead = False  # inside `reserve_ahead`: reservations are top-ups
        self._ahead_at = 0  # where the next `reserve_ahead` looks first
        self._lock = self._take_lock()
        try:
            self.db = self._open()
        except BaseException:
            os.close(self._lock)
            raise
        self.db_id = bytes.fromhex(self._meta("db_id"))
        self._secret = bytes.fromhex(self._meta("ledger_secret"))
        try:
            self.journal = Journal(self.dir / JOURNAL_NAME, self.db_id)
        except OSError as exc:
            self.db.close()
            os.close(self._lock)
            raise StateError(f"cannot open sequence journal in {self.dir}: {exc.strerror or exc}") from None

    # -- opening and checking ------------------------------------------------------------------------

    def _take_lock(self) -> int:
        """The state directory, checked, and its lock held: one ipsecd per directory."""
        try:
            for parent in reversed(self.dir.absolute().parents):  # made here: never writable by others
                if not parent.exists():
                    parent.mkdir(mode=0o755)
            self.dir.mkdir(mode=0o700, exist_ok=True)
            self.dir = check_directory(self.dir, "state directory")
            self.path = self.dir / DB_NAME
            os.chmod(self.dir, 0o700)
        except UntrustedPath as exc:
            raise StateError(f"refusing {exc}") from None
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.dir}: {exc.strerror}") from None
        try:
            fd = open_private(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise StateError(
                f"cannot open lock file in state directory {self.dir}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateError(f"state directory {self.dir} in use by pid {other}") from None
            raise StateError(f"cannot lock state directory {self.dir}: {exc.strerror}") from None
        try:
            self._write_pid(fd)
        except OSError as exc:
            os.close(fd)
            raise StateError(
                f"cannot write lock file in state directory {self.dir}: {exc.strerror or exc} (disk full?)"
            ) from None
        return fd

    @staticmethod
    def _write_pid(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def claim(self) -> None:
        """Record this process as the lock's holder (after a fork: the lock itself is inherited)."""
        self._write_pid(self._lock)

    def _open(self) -> sqlite3.Connection:
        existed = self.path.exists()
        try:
            if not existed:
                self._create()
            return self._check(self.path)
        except sqlite3.OperationalError as exc:
            if any(word in str(exc) for word in ("disk", "I/O", "readonly", "read-only")):
                if not existed:
                    raise StateError(
                        f"cannot create state database {self.path}: {exc} (disk full or failing?)"
                    ) from None
                raise StateError(
                    f"cannot use state database {self.path}: {exc} (disk full or failing?). It was left as "
                    "it is; keep it: it holds the sequence reservations that prevent nonce reuse"
                ) from None
            raise StateError(
                f"state database {self.path} is unreadable ({exc}); move it away to start afresh"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"state database {self.path} is unreadable ({exc}); move it away to start afresh"
            ) from None
        except OSError as exc:
            if not existed:
                raise StateError(
                    f"cannot create state database {self.path}: {exc.strerror or exc} (disk full?)"
                ) from None
            raise StateError(f"cannot open state database {self.path}: {exc.strerror or exc}") from None

    def _create(self) -> None:
        """A new, empty database, made beside the final name and renamed into place, so a crash never
        leaves a half-made one under that name (nor a failure a half-made one beside it)."""
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.unlink(missing_ok=True)
        try:
            fd = open_private(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            os.close(fd)
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.executescript(_SCHEMA)
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                db.execute("INSERT INTO meta VALUES ('db_id', ?)", (secrets.token_hex(16),))
                db.execute("INSERT INTO meta VALUES ('ledger_secret', ?)", (secrets.token_hex(32),))
                for name, decl in _SA_COLUMNS_2:
                    db.execute(f"ALTER TABLE sa ADD COLUMN {name} {decl}")
            finally:
                db.close()
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            for suffix in ("-journal", "-wal", "-shm"):
                tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)
            raise
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _check(self, path: Path) -> sqlite3.Connection:
        """The open database at `path` after checking it is ours, whole and not newer than us."""
        if not stat.S_ISREG(path.lstat().st_mode):
            raise StateError(f"state database {path} is not a regular file (a symlink?); refusing it")
        if path.stat().st_size == 0:
            raise StateError(f"state database {path} is empty (truncated?); move it away to start afresh")
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise StateError(
                    f"state database {path} is not an SQLite database (corrupted?); "
                    "move it away to start afresh"
                )
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise StateError(
                    f"state database {path} failed its integrity check ({check}); "
                    "move it away to start afresh"
                )
            # Checked before anything is written, so a database that is not ours is never changed.
            row = None
            if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone():
                row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                raise StateError(f"{path} is not an ipsec-tunnel state database (no schema version)")
            if not str(row[0]).isdigit():
                raise StateError(
                    f"state database {path} has an unreadable schema version {row[0]!r}; "
                    "move it away to start afresh"
                )
            if int(row[0]) > SCHEMA_VERSION:
                raise StateError(
                    f"state database {path} has schema {row[0]}, newer than this ipsecd "
                    f"understands ({SCHEMA_VERSION}); run the newer ipsecd"
                )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            if int(row[0]) < SCHEMA_VERSION:
                self._upgrade(db)
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _upgrade(db: sqlite3.Connection) -> None:
        """Schema 1 to 2, in one transaction."""
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(_LEDGER_TABLE)
            have = {r[1] for r in db.execute("PRAGMA table_info(sa)").fetchall()}
            for name, decl in _SA_COLUMNS_2:
                if name not in have:
                    db.execute(f"ALTER TABLE sa ADD COLUMN {name} {decl}")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('db_id', ?)", (secrets.token_hex(16),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('ledger_secret', ?)", (secrets.token_hex(32),))
            db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _meta(self, key: str) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        try:
            if row is None:
                raise ValueError("missing")
            bytes.fromhex(row[0])
        except (ValueError, TypeError):
            self.db.close()
            os.close(self._lock)
            raise StateError(
                f"state database {self.path} has an unusable {key}; move it away to start afresh"
            ) from None
        return str(row[0])

    def close(self) -> None:
        """Close the database and the journal, and release the directory."""
        self.db.close()
        self.journal.close()
        os.close(self._lock)

    def _attach(self, sa: SecurityAssociation) -> None:
        sa.attach(self, self.journal.attach(sa.key, sa.replay.top, sa.seq_out))

    def _failed(self, exc: Exception) -> OSError:
        """The OSError for a failed write, logged (at most once every STORE_ERROR_EVERY seconds)."""
        now = time.monotonic()
        if now - self._error_logged >= STORE_ERROR_EVERY:
            self._error_logged = now
            log.error(
                "state database %s cannot be written (%s): packets needing a new reservation are dropped "
                "(drop reason store_failed) until it can",
                self.path,
                exc,
            )
        return OSError(f"state database write failed: {exc}")

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        try:
            self.db.execute(sql, params)
        except sqlite3.OperationalError as exc:  # disk full, read-only, I/O error
            raise self._failed(exc) from None

    def _transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Run `statements` as one committed transaction, or none of them (OSError). Inside `atomic`,
        they are a savepoint of its transaction instead: all or none, committed with it."""
        begin, end, undo = (
            ("SAVEPOINT step", "RELEASE step", "ROLLBACK TO step")
            if self._atomic
            else ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
        )
        try:
            self.db.execute(begin)
            for sql, params in statements:
                self.db.execute(sql, params)
            self.db.execute(end)
        except sqlite3.OperationalError as exc:
            if self.db.in_transaction:
                self.db.execute(undo)
                if self._atomic:
                    self.db.execute(end)
            raise self._failed(exc) from None

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Every write made inside is committed together when the block ends, or none is: an exception
        in the block, or a crash (`kill -9`) before its end, leaves the database as it was before it
        (OSError when the commit itself fails)."""
        if self._atomic:
            yield
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._failed(exc) from None
        self._atomic = True
        try:
            yield
        except BaseException:
            self._atomic = False
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self._atomic = False
        try:
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise self._failed(exc) from None

    # -- the key ledger --------------------------------------------------------------------------------

    def fingerprint(self, config: SAConfig) -> str:
        """The ledger's name for an SA's key (never the key itself)."""
        return self.key_fingerprint(key_material(config))

    def key_fingerprint(self, key: bytes) -> str:
        """A name for key bytes that does not reveal them: HMAC-SHA-256 under this database's secret."""
        return hmac.new(self._secret, _LEDGER_LABEL + key, hashlib.sha256).hexdigest()

    def ledger(self, config: SAConfig) -> dict[int, tuple[int, int]]:
        """What the ledger knows of an SA's key: domain -> (outbound, inbound) reservations."""
        rows = self.db.execute(
            "SELECT domain, seq_out, seq_in FROM ledger WHERE fp=?", (self.fingerprint(config),)
        ).fetchall()
        return {int(d): (int(o), int(i)) for d, o, i in rows}

    def _ledger_sql(self, config: SAConfig, seq_out: int, seq_in: int) -> tuple[str, tuple[Any, ...]]:
        """The statement raising the ledger's numbers for an SA's key and domain to at least these."""
        # Numbers as 20-digit text: up to 2**64 - 1 (ESN), beyond SQLite's integers, and compared by MAX()
        # as text in the same order as numbers.
        return (
            "INSERT INTO ledger VALUES (?,?,?,?) ON CONFLICT(fp, domain) DO UPDATE SET "
            "seq_out=MAX(seq_out, excluded.seq_out), seq_in=MAX(seq_in, excluded.seq_in)",
            (self.fingerprint(config), _domain(config), f"{seq_out:020d}", f"{seq_in:020d}"),
        )

    def resume(self, sa: SecurityAssociation) -> None:
        """Move a new SA past everything the ledger records for its key: it sends above every number
        reserved in its domain, by this host or seen from the peer, and treats every number up to the
        highest inbound reservation of any domain as already received."""
        known = self.ledger(sa.config)
        if not known:
            return
        out, seen = known.get(_domain(sa.config), (0, 0))
        sa.seq_out = max(sa.seq_out, out, seen)
        top = max(i for _o, i in known.values())
        if top:
            sa.replay.seen_all_up_to(top)

    # -- SAs -------------------------------------------------------------------------------------------

    def _volume_limits(self, sa: SecurityAssociation, packets: int, nbytes: int) -> tuple[int, int]:
        c = sa.config
        out = []
        for kind, needed in (("packets", packets), ("bytes", nbytes)):
            limits = [x for x in (getattr(c.soft, kind), getattr(c.hard, kind)) if x]
            out.append(needed + max(1, min(limits) // VOLUME_BLOCKS) if limits else SA_NO_LIMIT)
        return out[0], out[1]

    def add_sa(self, sa: SecurityAssociation) -> None:
        """Record a new SA (see add_sas)."""
        self.add_sas([sa])

    def add_sas(self, sas: list[SecurityAssociation]) -> None:
        """Record new SAs, all or none, each resumed past what the ledger knows of its key and with its
        first outbound reservation (before it sends anything)."""
        pos = self.db.execute("SELECT COALESCE(MAX(position), 0) FROM sa").fetchone()[0]
        statements = []
        for sa in sas:
            self.resume(sa)
            c = sa.config
            sa.seq_limit = min(sa.seq_out + OUT_BLOCK, c.seq_max)
            sa.in_limit = max(sa.replay.top, 0) + IN_BLOCK_MIN
            sa.packets_limit, sa.bytes_limit = self._volume_limits(sa, sa.packets, sa.bytes)
            pos += 1
            row = (
                c.dst, c.src, c.spi, json.dumps(c.to_record()), sa.created,
                str(sa.seq_limit), str(sa.in_limit), "", 0, pos,
                str(sa.packets_limit), str(sa.bytes_limit), "", 0, self.wall(),
            )  # fmt: skip
            statements.append((_INSERT_SA, row))
            statements.append(self._ledger_sql(c, sa.seq_limit, sa.in_limit))
        self._transaction(statements)
        attached = []
        try:
            for sa in sas:
                self._attach(sa)
                attached.append(sa)
        except OSError:
            for sa in attached:
                self.journal.detach(sa.key)
                sa.attach(None)
            self._transaction([(_DELETE_SA, (s.config.dst, s.config.src, s.config.spi)) for s in sas])
            raise

    def remove_sa(self, sa: SecurityAssociation) -> None:
        """Forget an SA (its key stays in the ledger)."""
        c = sa.config
        self._transaction(
            [
                self._ledger_sql(c, sa.seq_out, sa.replay.top),
                (_DELETE_SA, (c.dst, c.src, c.spi)),
            ]
        )
        self._in.pop(sa.key, None)
        self.journal.detach(sa.key)
        sa.attach(None)  # the freed slot may go to another SA

    def reserve(self, sa: SecurityAssociation, direction: Direction, needed: int) -> int:
        """Commit a reservation covering `needed` and return its limit (`SequenceStore.reserve`)."""
        c = sa.config
        if direction == "out":
            limit = min(max(needed, sa.seq_out) + OUT_BLOCK, c.seq_max)
            self._transaction(
                [
                    (
                        "UPDATE sa SET seq_out=?, clean=0 WHERE dst=? AND src=? AND spi=?",
                        (str(limit), c.dst, c.src, c.spi),
                    ),
                    self._ledger_sql(c, limit, 0),
                ]
            )
            return limit
        st = self._in.setdefault(sa.key, _InState())
        now = time.monotonic()
        if not self._ahead:  # a top-up (`reserve_ahead`) keeps the block; the SA is busy all the same
            st.block = min(st.block * 2, IN_BLOCK_MAX) if now - st.stamp < 1.0 else IN_BLOCK_MIN
        st.stamp = now
        limit = min(max(needed, sa.replay.top) + st.block, c.seq_max)  # never below what was accepted
        self._transaction(
            [
                (
                    "UPDATE sa SET seq_in=?, clean=0, bitmap='' WHERE dst=? AND src=? AND spi=?",
                    (str(limit), c.dst, c.src, c.spi),
                ),
                self._ledger_sql(c, 0, limit),
            ]
        )
        return limit

    def reserve_ahead(self, sas: Sequence[SecurityAssociation]) -> int:
        """Commit now the next block of each SA of this store that is within half a block of a limit, to
        send or to accept, so that no packet waits on the commit (called while the data plane has nothing
        to do); how many commits. AHEAD_SLICE of `sas` at most are looked at per call, the next ones at
        the next call. A block so committed is the size `reserve` would commit, grown no further: a
        crash still costs at most one block."""
        count = len(sas)
        start = self._ahead_at % count if count else 0
        chosen = list(sas[start : start + AHEAD_SLICE])
        chosen += sas[: min(start, AHEAD_SLICE - len(chosen))]
        self._ahead_at = start + len(chosen)
        done = 0
        self._ahead = True
        try:
            for sa in chosen:
                if sa.store is not self:
                    continue
                done += sa.reserve_ahead("out", OUT_BLOCK // 2)
                st = self._in.get(sa.key)
                done += sa.reserve_ahead("in", (st.block if st else IN_BLOCK_MIN) // 2)
        finally:
            self._ahead = False
        return done

    def reserve_volume(self, sa: SecurityAssociation, packets: int, nbytes: int) -> tuple[int, int]:
        """Commit lifetime counts covering `packets` and `nbytes`; return the new limits
        (`SequenceStore.reserve_volume`)."""
        limits = self._volume_limits(sa, packets, nbytes)
        c = sa.config
        self._write(
            "UPDATE sa SET packets=?, bytes=?, clean=0 WHERE dst=? AND src=? AND spi=?",
            (str(limits[0]), str(limits[1]), c.dst, c.src, c.spi),
        )
        return limits

    def save_exact(self, sas: list[SecurityAssociation]) -> None:
        """Record exact positions and counts at a clean shutdown, so the restart loses nothing."""
        try:
            self.db.execute("BEGIN")
            for sa in sas:
                c = sa.config
                self.db.execute(
                    "UPDATE sa SET seq_out=?, seq_in=?, bitmap=?, clean=1, packets=?, bytes=?, dead=?, "
                    "soft=? WHERE dst=? AND src=? AND spi=?",
                    (
                        str(sa.seq_out), str(sa.replay.top), format(sa.replay.bitmap, "x"), str(sa.packets),
                        str(sa.bytes), sa.dead or "", int(sa.soft_fired), c.dst, c.src, c.spi,
                    ),
                )  # fmt: skip
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("could not record exact sequence positions: %s", exc)
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    def load_sas(
        self, now: float, emit: Callable[[SAEvent], None] | None = None
    ) -> list[SecurityAssociation]:
        """Every stored SA, restored so that no sequence number is reused or re-accepted and no lifetime
        is extended. A clean row becomes a reservation again before the first packet is accepted."""
        out = []
        rows = self.db.execute(
            "SELECT config, created, seq_out, seq_in, bitmap, clean, packets, bytes, dead, soft, added_wall "
            "FROM sa ORDER BY position"
        ).fetchall()
        wall = self.wall()
        for config_json, created, seq_out, seq_in, bitmap, clean, packets, nbytes, dead, soft, added in rows:
            try:
                config = SAConfig.from_record(json.loads(config_json)).validated(restoring=True)
                # converted inside the try: a garbled number is a StateError too
                seq_out, seq_in, bits = int(seq_out), int(seq_in), int(bitmap or "0", 16)
                packets, nbytes = int(packets), int(nbytes)
            except (ValueError, TypeError, KeyError) as exc:
                raise StateError(f"state database {self.path} holds an unusable SA ({exc})") from None
            replay = ReplayWindow(config.replay_window, esn=config.esn)
            if clean:
                replay.top = seq_in
                replay.bitmap = bits & ((1 << config.replay_window) - 1)
            else:
                journal = self.journal.previous.get(config.key)
                if journal is not None:  # a crash within this boot: the journal is exact ...
                    seq_in = journal[0]
                    seq_out = max(seq_out, journal[1])  # ... and a sender's jump costs nothing
                replay.seen_all_up_to(seq_in)
            # the age it had: the wall clock since it was added, never restarted at 0
            added_wall = float(created if added is None else added)
            sa = SecurityAssociation(
                config, now, created=now - max(0.0, wall - added_wall), seq_out=seq_out, replay=replay
            )
            sa.seq_limit = sa.seq_out  # the first send commits a fresh reservation
            sa.in_limit = replay.top
            # counts of a kind with a lifetime are reservations (or exact after a clean stop); the first
            # count past them commits a fresh reservation. A kind without a lifetime starts again at 0.
            for kind, count in (("packets", packets), ("bytes", nbytes)):
                limited = bool(getattr(config.soft, kind) or getattr(config.hard, kind))
                if limited or clean:
                    setattr(sa, kind, count)
                setattr(sa, kind + "_limit", count if limited else SA_NO_LIMIT)
            sa.soft_fired = bool(soft)
            sa.dead = dead or None
            sa.settle(now, emit or _ignore)
            sa.tick(now, emit or _ignore)
            if clean:  # exact positions: the first packet accepted, even below the top, turns the row
                sa.in_limit = 0  # back into a reservation before it is accepted
            self._attach(sa)
            out.append(sa)
        return out

    # -- tunnels -----------------------------------------------------------------------------------------

    def save_tunnel(self, tunnel: Tunnel) -> None:
        """Record or update a tunnel."""
        rec = {
            "name": tunnel.name,
            "local": tunnel.local,
            "remote": tunnel.remote,
            "spi": tunnel.spi,
            "nextdev": tunnel.nextdev,
            "peer_nets": list(tunnel.peer_nets),
        }
        pos = self.db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM tunnel").fetchone()[0]
        self._write(
            "INSERT INTO tunnel VALUES (?,?,?) ON CONFLICT(name) DO UPDATE SET config=excluded.config",
            (tunnel.name, json.dumps(rec), pos),
        )

    def remove_tunnel(self, name: str) -> None:
        """Forget a tunnel."""
        self._write("DELETE FROM tunnel WHERE name=?", (name,))

    def load_tunnels(self) -> list[Tunnel]:
        """Every stored tunnel, in the order added."""
        out = []
        for (config_json,) in self.db.execute("SELECT config FROM tunnel ORDER BY position").fetchall():
            try:
                rec = json.loads(config_json)
                rec["peer_nets"] = tuple(rec.get("peer_nets") or ())
                out.append(Tunnel(**rec).validated())
            except (ValueError, TypeError) as exc:
                raise StateError(f"state database {self.path} holds an unusable tunnel ({exc})") from None
        return out
