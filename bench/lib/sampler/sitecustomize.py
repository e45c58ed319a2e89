"""A CPU-time sampling profiler loaded into ipsecd by bench/profile (this directory first on PYTHONPATH,
IPSEC_PROFILE_DIR set): SIGUSR1 starts sampling the Python stack every tick of CPU time the process
uses (ITIMER_PROF: user and system time, never time asleep), SIGUSR2 stops and writes
`IPSEC_PROFILE_DIR/prof-PID.txt`, one "frame;frame;...;leaf@line count" per line (collapsed stacks)."""

import collections
import os
import signal
from types import FrameType

_counts: collections.Counter[str] = collections.Counter()


def _sample(_signum: int, frame: FrameType | None) -> None:
    names = []
    line = frame.f_lineno if frame is not None else 0
    while frame is not None:
        code = frame.f_code
        names.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_qualname}")
        frame = frame.f_back
    if names:
        names[0] += f"@{line}"
    _counts[";".join(reversed(names))] += 1


def _start(_signum: int, _frame: FrameType | None) -> None:
    _counts.clear()
    signal.signal(signal.SIGPROF, _sample)
    signal.setitimer(signal.ITIMER_PROF, 0.0005, 0.0005)  # as often as the kernel's tick allows


def _dump(_signum: int, _frame: FrameType | None) -> None:
    signal.setitimer(signal.ITIMER_PROF, 0, 0)
    path = os.path.join(os.environ["IPSEC_PROFILE_DIR"], f"prof-{os.getpid()}.txt")
    with open(path + ".tmp", "w") as out:
        out.writelines(f"{stack} {count}\n" for stack, count in _counts.items())
    os.replace(path + ".tmp", path)


if os.environ.get("IPSEC_PROFILE_DIR"):
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _dump)
