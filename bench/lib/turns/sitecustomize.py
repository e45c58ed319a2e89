"""How long ipsecd's data-plane handlers run, loaded into ipsecd by `bench/latency --turns` (this
directory first on PYTHONPATH, IPSEC_TURNS_DIR set): each call of a source's handler (`on_tun`,
`on_udp`, `on_raw`, ...) is timed by the wall clock (so time spent waiting for the CPU counts, as it
does for a packet waiting behind the turn) into power-of-two buckets, written at exit as
`IPSEC_TURNS_DIR/turns-PID.json`: {"argv": [...], "turns": {handler: {bucket_ms: count}}}."""

import atexit
import builtins
import collections
import json
import os
import sys
import time
from types import ModuleType
from typing import Any

_OUT = os.environ.get("IPSEC_TURNS_DIR")
_counts: dict[str, collections.Counter[float]] = collections.defaultdict(collections.Counter)


def _bucket(ms: float) -> float:
    edge = 0.125
    while edge < ms:
        edge *= 2
    return edge


def _install(dataplane: Any) -> None:
    dispatch = dataplane.DataPlane._dispatch

    def timed(self: Any, events: list[tuple[int, int]]) -> None:
        for event in events:
            handler = self._handlers.get(event[0])
            name = getattr(getattr(handler, "func", handler), "__name__", "?")
            start = time.perf_counter()
            dispatch(self, [event])
            _counts[name][_bucket((time.perf_counter() - start) * 1e3)] += 1

    dataplane.DataPlane._dispatch = timed


def _dump() -> None:
    if not _counts:
        return
    doc = {
        "argv": sys.argv,
        "turns": {k: {str(b): n for b, n in sorted(v.items())} for k, v in _counts.items()},
    }
    with open(os.path.join(_OUT or ".", f"turns-{os.getpid()}.json"), "w") as f:
        json.dump(doc, f)


if _OUT:
    _import = builtins.__import__

    def _watch(name: str, *args: Any, **kwargs: Any) -> ModuleType:
        module = _import(name, *args, **kwargs)
        dataplane = sys.modules.get("ipsec_tunnel.daemon.dataplane")
        if hasattr(dataplane, "DataPlane"):  # fully imported: its class is defined
            builtins.__import__ = _import
            _install(dataplane)
        return module

    builtins.__import__ = _watch
    atexit.register(_dump)
