"""Trust checks for the files ipsecd writes as root (state directory, journal, pid file, lock): a
directory another user owns or may write to could swap a file for a symlink and make root truncate or
write whatever it points at, so such a directory is refused, and files are opened without following
symlinks."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


class UntrustedPath(OSError):
    """A directory ipsecd will not use; the message says why."""


def check_directory(path: Path, what: str) -> Path:
    """The resolved `path` after checking that it is a directory owned by this user, that neither group
    nor others may write to it, and that every directory above it (as given and as resolved) belongs to
    root or this user and is writable by others only with the sticky bit."""
    real = Path(os.path.realpath(path))
    if not real.is_dir():
        raise UntrustedPath(f"{what} {path} is not a directory")
    st = os.stat(real)
    euid = os.geteuid()
    if st.st_uid != euid:
        raise UntrustedPath(f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {euid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedPath(f"{what} {path} is writable by group or others (chmod go-w it)")
    for chain in (real.parents, Path(os.path.realpath(path.absolute().parent)).parents):
        for parent in chain:
            _check_parent(parent, what, path)
    _check_parent(Path(os.path.realpath(path.absolute().parent)), what, path)
    return real


def _check_parent(parent: Path, what: str, path: Path) -> None:
    st = os.stat(parent)
    if st.st_uid not in (0, os.geteuid()):
        raise UntrustedPath(f"{what} {path}: directory {parent} above it is owned by uid {st.st_uid}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UntrustedPath(f"{what} {path}: directory {parent} above it is writable by group or others")


def open_private(path: Path, flags: int, mode: int = 0o600) -> int:
    """A descriptor for `path` opened without following a symlink, close-on-exec, with `mode` set on the
    descriptor itself (never on whatever a path might point to by then)."""
    try:
        fd = os.open(path, flags | OPEN_FLAGS, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink: say so, not "too many levels"
            raise UntrustedPath(
                f"{path} is a symbolic link: refused (ipsecd never follows one here)"
            ) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UntrustedPath(f"{path} is not a regular file")
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd
