"""Persistent IKEv2 state in ipsecd's state database: the configured peers (`ipsecadm ike add`, PSK
included, stored as manual SA keys are: hex in a 0600 database) and which stored SAs IKE negotiated.

IKE-negotiated CHILD SAs are never restored after a restart (they are negotiated again): `purge_children`
removes them, keys included, before the manager restores the manual SAs."""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from .state import Store

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ike_peer (name TEXT PRIMARY KEY, config TEXT NOT NULL, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ike_child (
    dst TEXT NOT NULL, src TEXT NOT NULL, spi INTEGER NOT NULL, peer TEXT NOT NULL,
    PRIMARY KEY (dst, src, spi)
);
"""


class IkeStore:
    """The IKE tables beside the SA and tunnel tables of one `Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db
        # Deleted rows (keys) are overwritten in the file, not left in free pages.
        self.db.execute("PRAGMA secure_delete=ON")
        self.db.executescript(_SCHEMA)

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        try:
            self.db.execute(sql, params)
        except sqlite3.OperationalError as exc:  # disk full, read-only, I/O error
            raise OSError(f"state database write failed: {exc}") from None

    # -- peers ----------------------------------------------------------------------------------------

    def save_peer(self, name: str, record: dict[str, Any]) -> None:
        """Record or replace peer `name` (`record` is JSON-able; the PSK in it as hex)."""
        pos = self.db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM ike_peer").fetchone()[0]
        self._write(
            "INSERT INTO ike_peer VALUES (?,?,?) ON CONFLICT(name) DO UPDATE SET config=excluded.config",
            (name, json.dumps(record), pos),
        )

    def remove_peer(self, name: str) -> None:
        """Forget peer `name`."""
        self._write("DELETE FROM ike_peer WHERE name=?", (name,))

    def load_peers(self) -> list[dict[str, Any]]:
        """Every stored peer record, in the order added; unreadable ones are skipped with a warning."""
        out = []
        for name, text in self.db.execute("SELECT name, config FROM ike_peer ORDER BY position").fetchall():
            try:
                rec = json.loads(text)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                log.warning("state database holds an unusable IKE peer %s (%s): skipped", name, exc)
                continue
            out.append(rec)
        return out

    # -- negotiated CHILD SAs ---------------------------------------------------------------------------

    def mark_child(self, dst: str, src: str, spi: int, peer: str) -> None:
        """Record that the stored SA (dst, src, spi) was negotiated by IKE for `peer`."""
        self._write("INSERT OR REPLACE INTO ike_child VALUES (?,?,?,?)", (dst, src, spi, peer))

    def unmark_child(self, dst: str, src: str, spi: int) -> None:
        """Forget the mark of SA (dst, src, spi)."""
        self._write("DELETE FROM ike_child WHERE dst=? AND src=? AND spi=?", (dst, src, spi))

    def erase(self) -> None:
        """Move deletions out of the write-ahead log into the database file, where secure_delete has
        overwritten them: a deleted SA's keys are then in neither file."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("state database checkpoint failed: %s", exc)

    def purge_children(self) -> int:
        """Delete every IKE-negotiated SA (and its keys) from the SA table; returns how many."""
        rows = self.db.execute("SELECT dst, src, spi FROM ike_child").fetchall()
        for dst, src, spi in rows:
            self._write("DELETE FROM sa WHERE dst=? AND src=? AND spi=?", (dst, src, spi))
        self._write("DELETE FROM ike_child")
        if rows:
            self.erase()
        return len(rows)
