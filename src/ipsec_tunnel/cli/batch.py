"""`ipsecadm -b FILE` (as `ip -batch`): one ipsecadm command line per line of FILE (or of standard input
for `-b -`), all over one connection to ipsecd.

Blank lines and comments (a word starting with `#` to the end of the line) are skipped; words are split as
a shell splits them (quotes, backslashes), without expansion. A batch of `sa add` and `tunnel add` lines
only (without `-force`) is all or none: ipsecd's `batch` request (`ipsecadm.run_batch`). Any other batch
stops at the first line that fails, the lines before it staying applied; with `-force` it carries on and
fails at the end.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from .grammar import UsageError

BATCH_OPTIONS = ("-b", "-batch", "--batch")
FORCE_OPTIONS = ("-force", "--force")
_VALUED = ("--socket",)  # global options whose value is the next word


@dataclass
class Batch:
    """What a command line with -b asks for: the file ("-": standard input), -force, and the global
    options that apply to every line."""

    path: str
    force: bool = False
    options: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The file as messages name it."""
        return "stdin" if self.path == "-" else self.path


def split_batch(argv: list[str]) -> Batch | None:
    """The Batch that `argv` asks for, or None when it names no batch file (an ordinary command line).

    Batch options are recognised before the mode word only, as `ip` takes them.
    """
    path: str | None = None
    force = False
    options: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--" or not tok.startswith("-") or tok == "-":
            options += argv[i - 1 :]
            break
        if tok in BATCH_OPTIONS or tok.startswith("--batch="):
            if path is not None:
                raise UsageError("option -b/-batch given twice")
            if tok.startswith("--batch="):
                path = tok.partition("=")[2]
            elif i < len(argv):
                path = argv[i]
                i += 1
            if not path:
                raise UsageError(f"option {tok.partition('=')[0]} needs a file name, or - for standard input")
        elif tok in FORCE_OPTIONS:
            force = True
        else:
            options.append(tok)
            if tok in _VALUED and i < len(argv):
                options.append(argv[i])
                i += 1
    if path is None:
        if force:
            raise UsageError("-force applies only with -b FILE (-batch FILE)")
        return None
    words = [
        w
        for j, w in enumerate(options)
        if not w.startswith("-") and (j == 0 or options[j - 1] not in _VALUED)
    ]
    if words:
        raise UsageError(
            f"with -b, commands come from the file: unexpected '{words[0][:64]}' "
            "(only -j, -s and --socket may be given beside it)"
        )
    return Batch(path, force, options)


def words(line: str) -> list[str]:
    """The words of batch line `line`; empty for a blank line or a comment. ValueError: unbalanced quotes."""
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    out: list[str] = []
    for word in lexer:
        if word.startswith("#"):
            break
        out.append(word)
    return out


def numbered_lines(stream: TextIO) -> Iterator[tuple[int, str]]:
    """(line number, line) for each line of `stream`, read as it comes (a pipe works)."""
    for number, line in enumerate(stream, 1):
        yield number, line.rstrip("\n")
