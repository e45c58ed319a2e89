"""Keys for `ipsecadm sa add`: hex text from the command line or raw bytes from a key file, and the warnings
each earns. No message made here ever contains key material.
"""

from __future__ import annotations

import os
import stat
import string
from collections.abc import Callable

MAX_KEY_FILE = 1024  # bytes; the longest key any algorithm takes is 68 (ChaCha20-Poly1305 with salt)

Warn = Callable[[str], None]


class KeyInputError(ValueError):
    """A key that could not be read or parsed; the message names the option or file, never the key."""


def command_line_warning(option: str) -> str:
    """The warning printed when a key is given on the command line with `option` (e.g. --cipher-key)."""
    return (
        "warning: a key on the command line can be seen by other users in the process list and shell "
        f"history; use {option}file"
    )


def parse_hex(text: str, option: str) -> bytes:
    """The bytes written as hex in `text` (an optional 0x prefix is allowed)."""
    digits = text.strip()
    if digits[:2] in ("0x", "0X"):
        digits = digits[2:]
    if not digits:
        raise KeyInputError(f"Bad key: {option} is empty")
    if any(c not in string.hexdigits for c in digits):
        raise KeyInputError(f"Bad key: {option} must be hexadecimal (0-9, a-f)")
    if len(digits) % 2:
        raise KeyInputError(
            f"Bad key: {option} has an odd number of hex digits ({len(digits)}); each byte takes two"
        )
    return bytes.fromhex(digits)


def exposed(path: str, mode: int) -> bool:
    """Whether group or others can read the file `path` (of `mode`): its read bits, unless a directory
    on the way denies that class search permission (as ssh judges a key's path: `chmod 700 /etc/ipsec`
    protects every file in it)."""
    # group members outside a directory's group fall under its "others" bits
    group = bool(mode & stat.S_IRGRP)
    other = bool(mode & stat.S_IROTH)
    directory = os.path.dirname(os.path.realpath(path))
    while group or other:
        try:
            dmode = os.stat(directory).st_mode
        except OSError:
            break
        other = other and bool(dmode & stat.S_IXOTH)
        group = group and bool(dmode & (stat.S_IXGRP | stat.S_IXOTH))
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return group or other


_HEX_TEXT = frozenset(string.hexdigits.encode())


def looks_like_hex(key: bytes) -> bool:
    """Whether `key` (a key file's content) is hex text, perhaps with a final newline, not raw bytes."""
    body = key[:-1] if key.endswith(b"\n") else key
    body = body[:-1] if body.endswith(b"\r") else body
    return len(body) >= 8 and all(b in _HEX_TEXT for b in body)


def hex_hint(path: str) -> str:
    """What to say about key file `path` when it looks like hex text."""
    return (
        f"key file {path} looks like hex text, but a key file holds the raw key bytes; "
        f"convert it with: xxd -r -p {path} > {path}.bin"
    )


def read_key_file(path: str, option: str, warn: Warn) -> bytes:
    """The raw bytes of key file `path`; its size is the key length.

    The content is never interpreted as text, even when it looks like hex (see `looks_like_hex`). Calls
    `warn` when a regular file is readable by group or others through its path.
    """
    if not path:
        raise KeyInputError(f"{option} needs a file name")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise KeyInputError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise KeyInputError(f"cannot read key file {path}: Is a directory")
        if stat.S_ISREG(st.st_mode) and exposed(path, st.st_mode):
            warn(f"warning: key file {path} is readable by group/others; chmod 600 it")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_KEY_FILE:
            chunk = os.read(fd, MAX_KEY_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise KeyInputError(f"cannot read key file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_KEY_FILE:
        raise KeyInputError(
            f"Key too long: key file {path} holds more than {MAX_KEY_FILE} bytes; "
            "a key file holds the raw key bytes only"
        )
    if size == 0:
        raise KeyInputError(f"Bad key: key file {path} is empty")
    return b"".join(chunks)


def load_key(hex_text: str | None, path: str | None, option: str, warn: Warn) -> bytes | None:
    """The key given with `option` (e.g. --cipher-key) or `option`file, or None when neither was given."""
    if hex_text is not None and path is not None:
        raise KeyInputError(f"give either {option} or {option}file, not both")
    if hex_text is not None:
        warn(command_line_warning(option))
        return parse_hex(hex_text, option)
    if path is not None:
        return read_key_file(path, option + "file", warn)
    return None
