"""A `with` block that closes what it opened, for the kernel objects of linux/."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """A context manager that returns itself on entry and calls ``close`` on leaving the block."""

    def close(self) -> None:
        """Release what the object holds; each subclass says what."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
