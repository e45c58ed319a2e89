"""The queueing discipline on tunnel devices: flow isolation and AQM (fq_codel, cake) set by ipsecd
itself, whatever the host's default (net.core.default_qdisc) is, through `tc` (iproute2).

`tc qdisc replace` is idempotent: a device that outlived the daemon gets the same qdisc again. A kernel
without the asked-for qdisc (or a host without `tc`) leaves every device with the host default, with one
warning, and is not asked again."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence

__all__ = ["DEFAULT_QDISC", "KINDS", "NONE", "Qdisc", "replace_command", "root_kind", "show_command"]

log = logging.getLogger(__name__)

NONE = "none"  # leave the host default alone
DEFAULT_QDISC = "fq_codel"
# The kinds --qdisc accepts: flow isolation with AQM first, then plain FIFOs (to compare against).
KINDS = ("fq_codel", "cake", "fq_pie", "fq", "sfq", "pfifo_fast", "pfifo", NONE)

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def replace_command(device: str, kind: str) -> list[str]:
    """The `tc` command that makes `kind` the root qdisc of `device` (creating or replacing it)."""
    if kind not in KINDS or kind == NONE:
        raise ValueError(f"not a qdisc ipsecd sets: {kind!r}")
    return ["tc", "qdisc", "replace", "dev", device, "root", kind]


def show_command(device: str) -> list[str]:
    """The `tc` command that prints `device`'s qdiscs as JSON."""
    return ["tc", "-j", "qdisc", "show", "dev", device]


def root_kind(tc_json: str) -> str | None:
    """The kind of the root qdisc in `tc -j qdisc show` output, None if there is none."""
    try:
        qdiscs = json.loads(tc_json or "[]")
    except ValueError:
        return None
    for q in qdiscs if isinstance(qdiscs, list) else []:
        if isinstance(q, dict) and q.get("root"):
            kind = q.get("kind")
            return kind if isinstance(kind, str) else None
    return None


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)


class Qdisc:
    """Sets the configured qdisc on each tunnel device ipsecd creates or takes over."""

    def __init__(self, kind: str = DEFAULT_QDISC, run: Runner = _run) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown qdisc {kind!r}: one of {', '.join(KINDS)}")
        self.kind = kind
        self.run = run
        self.refused: str | None = None  # why the kernel or host cannot: set once, then nothing is tried

    def apply(self, device: str) -> bool:
        """Make the configured qdisc `device`'s root qdisc; False (logged once) when that cannot be."""
        if self.kind == NONE or self.refused is not None:
            return self.kind == NONE
        if self.run is _run and shutil.which("tc") is None:
            self._refuse("no tc command (install iproute2)")
            return False
        try:
            res = self.run(replace_command(device, self.kind))
        except (OSError, subprocess.SubprocessError) as exc:
            self._refuse(f"tc failed: {exc}")
            return False
        if res.returncode == 0:
            return True
        why = (res.stderr or res.stdout).strip().splitlines()
        message = why[-1] if why else f"tc exit status {res.returncode}"
        if "unknown" in message.lower():  # "Specified qdisc kind is unknown.": not built into this kernel
            self._refuse(f"this kernel has no {self.kind} qdisc ({message})")
        else:  # a problem with this device only
            log.warning("%s: cannot set qdisc %s: %s", device, self.kind, message)
        return False

    def _refuse(self, why: str) -> None:
        self.refused = why
        log.warning("tunnel devices keep the host's default qdisc: %s (--qdisc=%s)", why, self.kind)
