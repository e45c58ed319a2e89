"""Tunnel devices that outlive ipsecd: persistent TUN devices, re-attached on start, removed only by
`tunnel del`, `ipsecd --stop` or a start that finds their tunnel gone from the state.

A restart (SIGTERM, a crash, `kill -9`) leaves every device in place with its addresses, routes, MTU and
up state; the next ipsecd attaches to them and traffic resumes. Devices made by ipsecd carry the alias
`MARK` (shown by `ip link`), so a leftover one is told from anyone else's. Link events (netlink) tell
when a device is deleted (`ip link del`: the tunnel is removed, as by `tunnel del`) or renamed (`ip link
set NAME name NEW`: the tunnel takes the new name)."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Iterable

from ..linux import link, netlink, tun
from .dataplane import DataPlane, KernelDevices

log = logging.getLogger(__name__)

MARK = "ipsec-tunnel"  # the alias of every device ipsecd made


def _ours(device: netlink.LinkEvent) -> bool:
    return device.kind == "tun" and device.alias == MARK


def is_ours(name: str) -> bool:
    """Whether device `name` is a TUN device ipsecd made (its alias is MARK)."""
    return any(d.name == name and _ours(d) for d in netlink.links())


def leftover() -> list[str]:
    """ipsecd's devices in this network namespace (held by a daemon or not)."""
    return [d.name for d in netlink.links() if _ours(d)]


def remove_leftover(names: Iterable[str]) -> list[str]:
    """Remove the named persistent TUN devices no process holds; returns those removed."""
    removed = []
    for name in names:
        try:
            try:
                dev = tun.open_tun(name)
            except OSError as exc:  # EINVAL: made multi-queue
                if exc.errno != errno.EINVAL:
                    raise
                dev = tun.open_tun(name, multi_queue=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", name, exc.strerror)
            continue
        with dev:
            dev.set_persist(False)
        removed.append(name)
    return removed


class PersistentDevices(KernelDevices):
    """`KernelDevices` whose devices persist across restarts and are followed through link events."""

    def __init__(self, loop: DataPlane, *, remove_on_exit: bool = False) -> None:
        super().__init__(loop)
        self.remove_on_exit = remove_on_exit
        self.index: dict[int, str] = {}  # kernel interface index -> our name for the device
        self.on_gone: Callable[[str], None] = lambda name: None
        self.on_renamed: Callable[[str, str], None] = lambda old, new: None
        self.monitor: netlink.LinkMonitor | None = None

    def create(self, name: str) -> None:
        if name in self.tun:
            return
        reattach = link.exists(name)
        if reattach and not is_ours(name):
            raise OSError(errno.EEXIST, f"{name} already exists and is not a device ipsecd left")
        try:
            super().create(name)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise OSError(
                    errno.EBUSY, f"{name} already exists (another ipsecd in this network namespace?)"
                ) from None
            raise
        queue = self.tun[name]
        try:
            queue.set_persist(True)
            index = link.ifindex(name)
            netlink.set_alias(index, MARK)
            self.index[index] = name
        except BaseException:
            self.remove(name)
            raise
        if reattach:
            log.info("%s: attached to the device left by the previous ipsecd", name)

    def remove(self, name: str) -> None:
        queue = self.tun.get(name)
        if queue is not None:
            try:
                queue.set_persist(False)
            except OSError:  # deleted already
                pass
        self._forget(name)
        super().remove(name)

    def _forget(self, name: str) -> None:
        for index, known in list(self.index.items()):
            if known == name:
                del self.index[index]

    def close_all(self) -> None:
        """Stop following link events and close every queue: the devices stay, unless `remove_on_exit`."""
        self.close()
        if self.remove_on_exit:
            super().close_all()
            return
        for name in list(self.tun):
            self._forget(name)
            super().remove(name)

    def prune(self, keep: Iterable[str]) -> None:
        """Remove ipsecd's devices other than `keep` that no process holds (tunnels no longer stored)."""
        wanted = set(keep) | set(self.tun)
        for name in remove_leftover(n for n in leftover() if n not in wanted):
            log.info("removed device %s: its tunnel is no longer in the state", name)

    # -- link events -------------------------------------------------------------------------------------

    def follow_links(self) -> None:
        """Watch link events from now on."""
        self.monitor = netlink.LinkMonitor()
        self.loop.watch(self.monitor.fileno(), self.on_link_events)

    def gone(self, name: str) -> None:
        """Device `name` no longer exists: stop reading it and tell the owner, once."""
        if name not in self.tun:
            return
        self._forget(name)
        super().remove(name)
        self.on_gone(name)

    def on_link_events(self) -> None:
        """Read link events: our devices deleted or renamed."""
        if self.monitor is None:
            return
        events = self.monitor.read()
        if events is None:  # some were lost: look at every device
            self.rescan()
            return
        for event in events:
            name = self.index.get(event.index)
            if name is None:
                continue
            if event.deleted:
                self.gone(name)
            elif event.name and event.name != name:
                self.rename(name, event.name)

    def rescan(self) -> None:
        """Find out what happened to each device by asking the kernel (after lost events)."""
        for index, name in list(self.index.items()):
            try:
                now = socket.if_indextoname(index)
            except OSError:
                self.gone(name)
                continue
            if now != name:
                self.rename(name, now)

    def rename(self, old: str, new: str) -> None:
        """Device `old` is now called `new`: the tunnel follows it."""
        queue = self.tun.pop(old, None)
        if queue is None:
            return
        queue.renamed(new)
        self.tun[new] = queue
        sparse = self.sparse.pop(old, None)
        if sparse is not None:
            sparse.renamed(new)
            self.sparse[new] = sparse
        for index, known in list(self.index.items()):
            if known == old:
                self.index[index] = new
        log.warning("%s was renamed to %s outside ipsecd: the tunnel is now %s", old, new, new)
        self.on_renamed(old, new)

    def close(self) -> None:
        """Stop following link events."""
        if self.monitor is not None:
            self.loop.unwatch(self.monitor.fileno())
            self.monitor.close()
            self.monitor = None
