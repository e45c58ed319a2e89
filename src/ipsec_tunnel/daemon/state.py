"""Persistent state in SQLite: SAs, tunnels, and the sequence-number reservations that keep a restart
(clean or `kill -9`) from reusing an outbound sequence number or re-accepting an inbound one.

Outbound: a number is sent only after a reservation at or above it is committed; a restart resumes past
the reservation. Inbound: a number is accepted only below a committed reservation; a restart treats
everything up to the reservation as already received. A clean shutdown records the exact positions.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.replay import ReplayWindow
from ..core.sa import SAConfig, SecurityAssociation
from ..core.tunnel import Tunnel
from .journal import Journal

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_DIR = "/var/lib/ipsec-tunnel"
DB_NAME = "state.db"
JOURNAL_NAME = "journal"
OUT_BLOCK = 1 << 16  # outbound numbers reserved per commit
IN_BLOCK_MIN = 32  # inbound reservation grows from this ...
IN_BLOCK_MAX = 1 << 16  # ... to this while the SA is busy

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


class StateError(Exception):
    """The state store cannot be used; the message says why and what to do."""


@dataclass
class _InState:
    block: int = IN_BLOCK_MIN
    stamp: float = 0.0


class Store:
    """The state database of one ipsecd."""

    def __init__(self, directory: str | Path = DEFAULT_DIR) -> None:
        self.dir = Path(directory)
        self.path = self.dir / DB_NAME
        self._in: dict[tuple[bytes, bytes, int], _InState] = {}
        self.db = self._open()
        try:
            self.journal = Journal(self.dir / JOURNAL_NAME)
        except OSError as exc:
            self.db.close()
            raise StateError(f"cannot open sequence journal in {self.dir}: {exc.strerror or exc}") from None

    # -- opening and checking ------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.dir, 0o700)
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.dir}: {exc.strerror}") from None
        try:
            if not self.path.exists():
                self._create()
            return self._check(self.path)
        except sqlite3.OperationalError as exc:
            if any(word in str(exc) for word in ("disk", "I/O", "readonly", "read-only")):
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
            raise StateError(f"cannot open state database {self.path}: {exc.strerror or exc}") from None

    def _create(self) -> None:
        """A new, empty database, made beside the final name and renamed into place, so a crash never
        leaves a half-made one under that name."""
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.executescript(_SCHEMA)
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        finally:
            db.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _check(self, path: Path) -> sqlite3.Connection:
        """The open database at `path` after checking it is ours, whole and not newer than us."""
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
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        """Close the database and the journal."""
        self.db.close()
        self.journal.close()

    def _attach(self, sa: SecurityAssociation) -> None:
        sa.hot, sa.hot_off = self.journal.attach(sa.key, sa.replay.top, sa.seq_out)
        sa.reserve = self.reserve

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        try:
            self.db.execute(sql, params)
        except sqlite3.OperationalError as exc:  # disk full, read-only, I/O error
            raise OSError(f"state database write failed: {exc}") from None

    # -- SAs -------------------------------------------------------------------------------------------

    def add_sa(self, sa: SecurityAssociation) -> None:
        """Record a new SA and its first outbound reservation (before it sends anything)."""
        c = sa.config
        sa.seq_limit = min(sa.seq_out + OUT_BLOCK, c.seq_max)
        sa.in_limit = max(sa.replay.top, 0) + IN_BLOCK_MIN
        pos = self.db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM sa").fetchone()[0]
        self._write(
            "INSERT INTO sa VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                c.dst,
                c.src,
                c.spi,
                json.dumps(c.to_record()),
                sa.created,
                str(sa.seq_limit),
                str(sa.in_limit),
                "",
                0,
                pos,
            ),
        )
        self._attach(sa)

    def remove_sa(self, sa: SecurityAssociation) -> None:
        """Forget an SA."""
        c = sa.config
        self._write("DELETE FROM sa WHERE dst=? AND src=? AND spi=?", (c.dst, c.src, c.spi))
        self._in.pop(sa.key, None)
        self.journal.detach(sa.key)

    def reserve(self, sa: SecurityAssociation, direction: str, needed: int) -> int:
        """Commit a reservation covering `needed` and return its limit (the SA's `reserve` hook)."""
        c = sa.config
        if direction == "out":
            limit = min(max(needed, sa.seq_out) + OUT_BLOCK, c.seq_max)
            self._write(
                "UPDATE sa SET seq_out=?, clean=0 WHERE dst=? AND src=? AND spi=?",
                (str(limit), c.dst, c.src, c.spi),
            )
            return limit
        st = self._in.setdefault(sa.key, _InState())
        now = time.monotonic()
        st.block = min(st.block * 2, IN_BLOCK_MAX) if now - st.stamp < 1.0 else IN_BLOCK_MIN
        st.stamp = now
        limit = min(needed + st.block, c.seq_max)
        self._write(
            "UPDATE sa SET seq_in=?, clean=0, bitmap='' WHERE dst=? AND src=? AND spi=?",
            (str(limit), c.dst, c.src, c.spi),
        )
        return limit

    def save_exact(self, sas: list[SecurityAssociation]) -> None:
        """Record exact positions at a clean shutdown, so the restart loses nothing."""
        try:
            self.db.execute("BEGIN")
            for sa in sas:
                c = sa.config
                self.db.execute(
                    "UPDATE sa SET seq_out=?, seq_in=?, bitmap=?, clean=1 WHERE dst=? AND src=? AND spi=?",
                    (str(sa.seq_out), str(sa.replay.top), format(sa.replay.bitmap, "x"), c.dst, c.src, c.spi),
                )
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("could not record exact sequence positions: %s", exc)
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    def load_sas(self, now: float) -> list[SecurityAssociation]:
        """Every stored SA, restored so that no sequence number is reused or re-accepted."""
        out = []
        rows = self.db.execute(
            "SELECT config, created, seq_out, seq_in, bitmap, clean FROM sa ORDER BY position"
        ).fetchall()
        for config_json, created, seq_out, seq_in, bitmap, clean in rows:
            try:
                config = SAConfig.from_record(json.loads(config_json)).validated()
                # converted inside the try: a garbled number is a StateError too
                seq_out, seq_in, bits = int(seq_out), int(seq_in), int(bitmap or "0", 16)
            except (ValueError, TypeError, KeyError) as exc:
                raise StateError(f"state database {self.path} holds an unusable SA ({exc})") from None
            replay = ReplayWindow(config.replay_window, esn=config.esn)
            if clean:
                replay.top = seq_in
                replay.bitmap = bits & ((1 << config.replay_window) - 1)
            else:
                journal = self.journal.previous.get(config.key)
                if journal is not None:  # a crash within this boot: the journal is exact
                    seq_in, seq_out = journal
                replay.seen_all_up_to(seq_in)
            sa = SecurityAssociation(config, now, created=created, seq_out=seq_out, replay=replay)
            sa.seq_limit = sa.seq_out  # the first send commits a fresh reservation
            sa.in_limit = replay.top
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
