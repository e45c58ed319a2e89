"""The sequence journal: a memory-mapped file holding, for every SA, the last sequence number sent and the
highest one accepted, written with every packet.

The kernel keeps a shared file mapping's pages when the process dies, so after a crash (`kill -9`) the
journal is exact and a restart resumes precisely where the dead process stopped: no number is sent twice
and no accepted packet is accepted again, without the gap a reservation leaves. It is trusted only within
the boot that wrote it (the kernel's boot id is recorded) and only by the database that wrote it (its
random id is recorded too); after a reboot the SQLite reservations, which are on disk before they are
used, take over. A slot's counters are written before the byte that marks it used, so a process killed
while it attaches a slot leaves an unused slot, never a used one reading (0, 0).
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from pathlib import Path

from ..core.seqstore import Slot
from .paths import open_private

# 2: the database id in the header, counters written before the key. The counters are in the host's byte
# order (the SAs write them as memoryview items; the journal is only read by the boot that wrote it); the
# magic names the order, so a journal of the other order is never read.
MAGIC = b"IPSTJNL2" if sys.byteorder == "little" else b"IPSTJNB2"
HEADER = struct.Struct("<8s16sI16s")  # magic, boot id, slot count, database id
HEADER_SIZE = 64
SLOT_SIZE = 64  # key: dst(16) src(16) spi(4) used(1), pad; in_top u64 at 40; out_seq u64 at 48 (aligned)
KEY = struct.Struct("<16s16sIB")
IN_OFF = 40
U64 = struct.Struct("=Q")
SLOTS = 1 << 17  # room for this many SAs; the file is sparse, so unused slots cost no disk
BOOT_ID = "/proc/sys/kernel/random/boot_id"

Key = tuple[bytes, bytes, int]


def boot_id() -> bytes:
    """This boot's id (16 bytes), or zeros when the kernel does not say."""
    try:
        text = Path(BOOT_ID).read_text().strip().replace("-", "")
        return bytes.fromhex(text)[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return bytes(16)


def _pack_key(key: Key) -> bytes:
    dst, src, spi = key
    return KEY.pack(dst.ljust(16, b"\0"), src.ljust(16, b"\0"), spi, 1 + (len(dst) == 16))


class Journal:
    """The journal file of one state directory."""

    def __init__(self, path: Path, db_id: bytes) -> None:
        self.path = path
        self.db_id = db_id
        self.boot = boot_id()
        self.previous: dict[Key, tuple[int, int]] = {}  # what the last process of this boot left
        self.slots: dict[Key, int] = {}
        self.fd = open_private(path, os.O_RDWR | os.O_CREAT)
        self._read_previous()
        self.count = SLOTS
        size = HEADER_SIZE + self.count * SLOT_SIZE
        os.ftruncate(self.fd, 0)  # every slot reads as zero (unused) again
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.view = memoryview(self.map)
        self.words = self.view.cast("Q")  # the counters, as the SAs write them
        self.free = list(range(self.count - 1, -1, -1))
        HEADER.pack_into(self.map, 0, MAGIC, self.boot, self.count, self.db_id)

    def _read_previous(self) -> None:
        data = os.pread(self.fd, HEADER_SIZE + SLOTS * SLOT_SIZE, 0)
        if len(data) < HEADER_SIZE:
            return
        magic, boot, count, db_id = HEADER.unpack_from(data)
        if magic != MAGIC or boot != self.boot or boot == bytes(16) or db_id != self.db_id:
            return  # another boot (or no boot id), another database: only the on-disk reservations count
        for i in range(min(count, (len(data) - HEADER_SIZE) // SLOT_SIZE)):
            off = HEADER_SIZE + i * SLOT_SIZE
            dst, src, spi, used = KEY.unpack_from(data, off)
            if not used:
                continue
            width = 16 if used == 2 else 4
            key = (dst[:width], src[:width], spi)
            top, out = U64.unpack_from(data, off + IN_OFF)[0], U64.unpack_from(data, off + IN_OFF + 8)[0]
            old = self.previous.get(key, (0, 0))
            self.previous[key] = (max(old[0], top), max(old[1], out))

    def attach(self, key: Key, in_top: int, out_seq: int) -> Slot:
        """A slot for SA `key` starting at (in_top, out_seq), as the SA's journal (`core.seqstore.Slot`)."""
        if key in self.slots:
            off = self.slots[key]
        else:
            if not self.free:
                raise OSError(f"sequence journal full ({self.count} SAs)")
            off = HEADER_SIZE + self.free.pop() * SLOT_SIZE
            self.slots[key] = off
        self.map[off : off + SLOT_SIZE] = bytes(SLOT_SIZE)  # unused first ...
        U64.pack_into(self.map, off + IN_OFF, in_top)  # ... then the counters ...
        U64.pack_into(self.map, off + IN_OFF + 8, out_seq)
        packed = _pack_key(key)
        self.map[off : off + KEY.size - 1] = packed[:-1]  # ... then the key ...
        self.map[off + KEY.size - 1] = packed[-1]  # ... and only then the byte that marks the slot used
        return Slot(self.words, sent=(off + IN_OFF) // U64.size + 1, accepted=(off + IN_OFF) // U64.size)

    def detach(self, key: Key) -> None:
        """Free SA `key`'s slot."""
        off = self.slots.pop(key, None)
        if off is not None:
            self.map[off : off + SLOT_SIZE] = bytes(SLOT_SIZE)
            self.free.append((off - HEADER_SIZE) // SLOT_SIZE)

    def close(self) -> None:
        """Unmap and close (the slots keep their last values on disk)."""
        self.words.release()
        self.view.release()
        self.map.close()
        os.close(self.fd)
