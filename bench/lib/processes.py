"""Processes, namespaces and the work directory of a bench run: progress lines, waiting for what was
started, stopping it by its pid, and clean-up that Ctrl-C, SIGTERM or SIGHUP cannot cut short."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from tests.support.netns import Netns


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A data plane could not be set up or measured; the message says why."""


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived: unwind and clean up as for Ctrl-C."""


def raise_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into an exception, as Ctrl-C is, so that clean-up code runs."""

    def raise_it(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_it)


def shield_cleanup() -> None:
    """Ignore Ctrl-C, SIGTERM and SIGHUP from now on, so that a second one cannot cut the clean-up short."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM `proc` (by its pid, via Popen), then SIGKILL it if it does not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def delete_namespace(ns: Netns) -> None:
    """Stop what runs inside `ns` (only this script starts processes there), then delete it."""
    for proc in ns._procs:
        stop_process(proc)
    if ns._created:
        pids = subprocess.run(
            ["ip", "netns", "pids", ns.name], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:  # stragglers: children of what we started (ping, swanctl ...)
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    ns.delete()


def pid_of(proc: subprocess.Popen[Any], comm: str, timeout: float = 5.0) -> int:
    """The pid of `proc` once it has exec'd into `comm` ("ip netns exec", sh and env all exec)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{proc.pid}/comm").read_text().strip() == comm[:15]:
                return proc.pid
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise BenchError(f"{comm} did not start (exit status {proc.poll()})")


def wait_for(
    what: str,
    ready: Callable[[], bool],
    proc: subprocess.Popen[Any] | None = None,
    timeout: float = 15.0,
    logfile: Path | None = None,
) -> None:
    """Poll `ready` until true; BenchError (with the tail of `logfile`) on timeout or if `proc` exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            tail = ""
            if logfile is not None and logfile.exists():
                tail = "\n    " + "\n    ".join(logfile.read_text(errors="replace").splitlines()[-10:])
            raise BenchError(f"{what}: not ready after {timeout:g} s{tail}")
        time.sleep(0.1)


@contextlib.contextmanager
def workdir(keep: bool, prefix: str) -> Iterator[Path]:
    """A temporary directory (logs, keys, configs), removed afterwards unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o700)
    try:
        yield path
    finally:
        if keep:
            log(f"kept logs and configs in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
