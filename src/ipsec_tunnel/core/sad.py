"""The SA database: inbound lookup by (destination, source, SPI) in O(1), and the SA a tunnel sends with."""

from __future__ import annotations

from collections.abc import Iterator

from .sa import SAError, SecurityAssociation

__all__ = ["Key", "SADatabase"]

Key = tuple[bytes, bytes, int]


class SADatabase:
    """Every SA, in the order added; at most one per (destination, source, SPI)."""

    def __init__(self) -> None:
        self._by_key: dict[Key, SecurityAssociation] = {}
        self._by_pair: dict[tuple[bytes, bytes], list[SecurityAssociation]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[SecurityAssociation]:
        return iter(list(self._by_key.values()))

    def add(self, sa: SecurityAssociation) -> None:
        """Add `sa`; SAError 'SA already exists' (EEXIST) when its key is taken."""
        if sa.key in self._by_key:
            raise SAError("SA already exists", "EEXIST")
        self._by_key[sa.key] = sa
        self._by_pair.setdefault(sa.key[:2], []).append(sa)

    def remove(self, sa: SecurityAssociation) -> None:
        """Remove `sa` (no error when it is gone already)."""
        if self._by_key.pop(sa.key, None) is not None:
            pair = self._by_pair[sa.key[:2]]
            pair.remove(sa)
            if not pair:
                del self._by_pair[sa.key[:2]]

    def get(self, dst: bytes, src: bytes, spi: int) -> SecurityAssociation | None:
        """The SA for a received packet: packed outer destination and source, and its SPI."""
        return self._by_key.get((dst, src, spi))

    def for_tunnel(self, remote: bytes, local: bytes, spi: int) -> SecurityAssociation | None:
        """The SA a tunnel sends with: (remote, local, spi), or with spi 0 the first added for the pair."""
        if spi:
            return self._by_key.get((remote, local, spi))
        pair = self._by_pair.get((remote, local))
        if not pair:
            return None
        for sa in pair:
            if not sa.dead:
                return sa
        return pair[0]

    def find(
        self, dst: bytes | None = None, src: bytes | None = None, spi: int | None = None
    ) -> list[SecurityAssociation]:
        """The SAs matching every field given (omitted fields match anything), in the order added."""
        return [
            sa for sa in self._by_key.values()
            if (dst is None or sa.key[0] == dst) and (src is None or sa.key[1] == src)
            and (spi is None or sa.key[2] == spi)
        ]  # fmt: skip
