"""ipsecd's IKEv2 side: one `Ike` (ipsec_tunnel.ike, sans-I/O) fed with datagrams and timers, its peers
configured and stored through the control socket (`ike.*` operations), and its negotiated CHILD SAs
installed through the manager's normal `sa.add`/`tunnel.add` paths, so every check, the persistence and
the counters of manual SAs apply to them too. Routes to the remote networks follow the CHILD SAs.

The kernel edges (sockets, routes) are injected, so all of this runs in tests without root."""

from __future__ import annotations

import collections
import functools
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..control.protocol import ProtocolError, arg
from ..core.drops import Drop
from ..core.sa import KEEPALIVE, ConfigError
from ..core.tunnel import TunnelError, check_name
from ..linux import routes as kernel_routes
from .ike_store import IkeStore

log = logging.getLogger(__name__)

IKE_PORT = 500  # RFC 7296 §2
INBOX_MAX = 512  # IKE datagrams queued for the next loop turns; more are dropped (counted)
PER_TURN = 8  # at most this many IKE datagrams per loop turn ...
TURN_BUDGET = 0.001  # ... and no more once this many seconds went into them (one MODP DH is ~2 ms):
# a flood of IKE_SA_INIT delays a data-plane packet by about one Diffie-Hellman, not by a queue of them
STARTS = ("none", "now", "on-traffic")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")

Address = tuple[str, int]
SendFn = Callable[[Address, Address, bytes], None]


class Routes:
    """What the runner needs from the kernel's routing (the real one here; tests use a fake)."""

    def host_address_in(self, cidr: str) -> str | None:
        """An address of this host inside `cidr`, if any."""
        return kernel_routes.host_address_in(cidr)

    def link_up(self, device: str) -> None:
        """Bring `device` up."""
        kernel_routes.link_up(device)

    def replace(self, cidr: str, device: str, src: str | None) -> None:
        """Route `cidr` into `device`."""
        kernel_routes.replace_route(cidr, device, src)

    def delete(self, cidr: str, device: str) -> None:
        """Remove the route to `cidr` through `device`."""
        kernel_routes.delete_route(cidr, device)


@dataclass
class Child:
    """An installed CHILD SA pair."""

    child_id: int
    spi_in: int
    spi_out: int
    local_addr: str
    remote_addr: str
    local_ts: str
    remote_ts: str
    cipher: str
    encap: tuple[int, int] | None


@dataclass
class Peer:
    """A configured peer: its stored record, the device its CHILD SAs are bound to, what is installed."""

    record: dict[str, Any]
    device: str | None = None  # the tunnel device in use (named by --tunnel or made for this peer)
    made_device: bool = False  # made by us (removed by `ike del`), not named by --tunnel
    children: dict[int, Child] = field(default_factory=dict)
    routes: set[str] = field(default_factory=set)  # remote networks routed into `device`
    status: Any = None  # the last PeerStatus
    traffic_mark: int = 0  # the device's "no SA" send drops when last looked at (start=on-traffic)

    @property
    def name(self) -> str:
        return str(self.record["name"])


def _hex(data: bytes | None) -> str:
    return data.hex() if data else ""


class IkeRunner:
    """Runs one `Ike` for ipsecd: control operations, events, timers and the datagram inbox."""

    def __init__(
        self,
        ike: Any,
        peer_config: Callable[..., Any],
        manager: Any,
        store: IkeStore | None,
        *,
        send: SendFn | None = None,
        routes: Routes | None = None,
        clock: Callable[[], float] = time.monotonic,
        key_log: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.ike = ike
        self.key_log = key_log  # test only (ipsecd --ike-keys-for-test): IKE and CHILD SA keys for tshark
        self.peer_config = peer_config
        self.manager = manager
        self.store = store
        self.send: SendFn = send or (lambda local, remote, data: None)
        self.routes = routes or Routes()
        self.clock = clock
        self.peers: dict[str, Peer] = {}
        self.inbox: collections.deque[tuple[bytes, Address, Address]] = collections.deque()
        self.drops: collections.Counter[str] = collections.Counter()  # the daemon side's own drops
        self.received = 0
        self.deadline: float | None = None
        self.failures = 0

    # -- input -----------------------------------------------------------------------------------------

    def datagram(self, data: bytes, local: Address, remote: Address) -> None:
        """Queue an IKE message (the non-ESP marker already stripped) for the next loop turn; counted
        as received at once (and as dropped, `queue_full`, when the queue is full)."""
        self.received += 1
        if len(self.inbox) >= INBOX_MAX:
            self.drops["queue_full"] += 1
            return
        self.inbox.append((data, local, remote))

    def unsent(self, reason: str) -> None:
        """An IKE message `send` could not hand to the kernel: counted as dropped for `reason`."""
        self.drops[reason] += 1

    def tick(self, now: float) -> float | None:
        """Handle queued datagrams (up to PER_TURN, within TURN_BUDGET) and any due timer; the next
        deadline (`now` while datagrams wait). Never raises: a bug is counted and logged."""
        try:
            worked = False
            started = self.clock()
            for _ in range(min(PER_TURN, len(self.inbox))):
                if worked and self.clock() - started >= TURN_BUDGET:
                    break
                data, local, remote = self.inbox.popleft()
                self.ike.datagram_received(data, local, remote, now)
                worked = True
            if self.deadline is not None and now >= self.deadline:
                self.ike.handle_timer(now)
                worked = True
            if worked:
                self.flush()
        except Exception:
            self.failures += 1
            log.exception("IKE handling failed (%d so far)", self.failures)
            self.deadline = now + 1.0
        return now if self.inbox else self.deadline

    def every_second(self) -> None:
        """Start `on-traffic` peers whose device has had packets to send but no SA."""
        engine = self.manager.engine
        for peer in self.peers.values():
            if peer.record.get("start") != "on-traffic" or peer.children or peer.device is None:
                continue
            drops = engine.stats_for(peer.device).tx_drops[Drop.NO_SA]
            if drops != peer.traffic_mark:
                peer.traffic_mark = drops
                state = getattr(peer.status, "state", "down")
                if state == "down":
                    log.info("IKE peer %s: traffic for %s, initiating", peer.name, peer.device)
                    self._call(functools.partial(self.ike.initiate, peer.name, self.clock()))

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the Ike, then act on the events it raised."""
        try:
            return fn()
        finally:
            self.flush()

    # -- events ----------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Act on every queued event of the Ike, in order; refresh the timer deadline."""
        for event in self.ike.events():
            handler = getattr(self, "_on_" + type(event).__name__, None)
            if handler is not None:
                try:
                    handler(event)
                except Exception:
                    self.failures += 1
                    log.exception("IKE event %s failed", type(event).__name__)
        self.deadline = self.ike.next_timer()

    def _on_Send(self, ev: Any) -> None:
        self.send(tuple(ev.local), tuple(ev.remote), ev.data)

    def _on_KeysForTest(self, ev: Any) -> None:
        if self.key_log is not None:
            self.key_log({
                "kind": "ike", "peer": ev.peer, "spi_i": ev.spi_i, "spi_r": ev.spi_r, "encr": ev.encr,
                "integ": ev.integ, "sk_ei": ev.sk_ei.hex(), "sk_er": ev.sk_er.hex(), "sk_ai": ev.sk_ai.hex(),
                "sk_ar": ev.sk_ar.hex(),
            })  # fmt: skip

    def _on_PeerStatus(self, ev: Any) -> None:
        peer = self.peers.get(ev.peer)
        if peer is None:
            return
        old = getattr(peer.status, "state", None)
        peer.status = ev
        if old != ev.state:
            why = f": {ev.reason}" if ev.reason else ""
            level = logging.WARNING if ev.state == "down" and ev.reason else logging.INFO
            log.log(level, "IKE peer %s: %s%s", ev.peer, ev.state, why)

    def _on_ChildUp(self, ev: Any) -> None:
        peer = self.peers.get(ev.peer)
        if peer is None:
            log.warning("IKE: CHILD SA for unknown peer %s ignored", ev.peer)
            return
        aead = ev.digest is None
        encap = None
        if ev.encap is not None:  # NAT-keepalives (the engine's) only from behind a NAT, RFC 3948 §4
            keepalive = KEEPALIVE if ev.nat_local else 0
            encap = {"sport": int(ev.encap[0]), "dport": int(ev.encap[1]), "keepalive": keepalive}
        common: dict[str, Any] = {"cipher": ev.cipher, "digest": ev.digest}
        if aead:
            common["digest_bits"] = ev.icv_bits
        inbound = {
            **common, "spi": ev.spi_in, "dst": ev.local_addr, "src": ev.remote_addr,
            "cipher_key": _hex(ev.key_in), "digest_key": _hex(ev.auth_key_in),
            "encap": {"sport": encap["dport"], "dport": encap["sport"], "keepalive": 0} if encap else None,
        }  # fmt: skip
        outbound = {
            **common, "spi": ev.spi_out, "dst": ev.remote_addr, "src": ev.local_addr,
            "cipher_key": _hex(ev.key_out), "digest_key": _hex(ev.auth_key_out), "encap": encap,
        }  # fmt: skip
        if self.key_log is not None:
            for sa in (inbound, outbound):
                self.key_log({"kind": "esp", "peer": peer.name, **sa})
        added: list[dict[str, Any]] = []
        try:
            for sa in (inbound, outbound):
                if self.store is not None:  # marked first: a crash in between leaves no unmarked IKE SA
                    self.store.mark_child(sa["dst"], sa["src"], sa["spi"], peer.name)
                self.manager.handle("sa.add", sa)
                added.append(sa)
        except ProtocolError as exc:
            log.error("IKE peer %s: CHILD SA not installed: %s", peer.name, exc.message)
            for sa in added:
                self._del_sa(sa["dst"], sa["src"], sa["spi"])
            for sa in (inbound, outbound):
                if self.store is not None:
                    self.store.unmark_child(sa["dst"], sa["src"], sa["spi"])
            self._call(lambda: self.ike.terminate(peer.name, self.clock()))
            return
        child = Child(
            ev.child_id, ev.spi_in, ev.spi_out, ev.local_addr, ev.remote_addr, ev.local_ts, ev.remote_ts,
            ev.cipher, tuple(ev.encap) if ev.encap else None,
        )  # fmt: skip
        peer.children[ev.child_id] = child
        self._bind(peer, child)
        log.info(
            "IKE peer %s: CHILD SA up, spi in %#x out %#x, %s === %s on %s%s",
            peer.name, ev.spi_in, ev.spi_out, ev.local_ts, ev.remote_ts, peer.device,
            f", UDP {ev.encap[0]}->{ev.encap[1]}" if ev.encap else "",
        )  # fmt: skip

    def _on_ChildDown(self, ev: Any) -> None:
        peer = self.peers.get(ev.peer)
        child = peer.children.pop(ev.child_id, None) if peer is not None else None
        local = child.local_addr if child else None
        remote = child.remote_addr if child else None
        if child is None or local is None or remote is None:
            return
        self._del_sa(local, remote, child.spi_in)
        self._del_sa(remote, local, child.spi_out)
        assert peer is not None
        if self.store is not None:
            self.store.erase()
        log.info(
            "IKE peer %s: CHILD SA down (%s), spi in %#x out %#x", peer.name, ev.reason, ev.spi_in, ev.spi_out
        )
        if not peer.children and peer.record.get("start") != "on-traffic":
            self._unroute(peer)

    def _del_sa(self, dst: str, src: str, spi: int) -> None:
        try:
            self.manager.handle("sa.del", {"dst": dst, "src": src, "spi": spi})
        except ProtocolError as exc:
            if exc.errno != "ENOENT":
                log.warning("cannot remove IKE SA %#x %s -> %s: %s", spi, src, dst, exc.message)
        if self.store is not None:
            self.store.unmark_child(dst, src, spi)

    # -- devices and routes ------------------------------------------------------------------------------

    def _device_for(self, peer: Peer, local: str, remote: str, spi: int, nets: list[str]) -> str:
        """The peer's tunnel device, bound to (local, remote, spi); made when missing."""
        tunnels = self.manager.engine.tunnels
        name = peer.device or peer.record.get("tunnel")
        fields = {"local": local, "remote": remote, "spi": spi, "peer_nets": nets}
        if name and tunnels.get(name) is not None:
            self.manager.handle("tunnel.change", {"name": name, **fields})
        else:
            made = self.manager.handle("tunnel.add", {"name": name or "", **fields})
            name = str(made["name"])
            if not peer.record.get("tunnel"):
                peer.made_device = True
                peer.record["device"] = name
                if self.store is not None:
                    self.store.save_peer(peer.name, peer.record)
        peer.device = name
        return name

    def _bind(self, peer: Peer, child: Child) -> None:
        """Bind the peer's device to `child`'s outbound SA and route its remote network into it."""
        try:
            device = self._device_for(
                peer, child.local_addr, child.remote_addr, child.spi_out, [child.remote_ts]
            )
        except ProtocolError as exc:
            log.error("IKE peer %s: no tunnel device: %s", peer.name, exc.message)
            return
        self._route(peer, device, [child.remote_ts], child.local_ts)

    def _route(self, peer: Peer, device: str, remote_nets: list[str], local_net: str | None) -> None:
        src = self.routes.host_address_in(local_net) if local_net else None
        try:
            self.routes.link_up(device)
            for net in remote_nets:
                self.routes.replace(net, device, src)
                peer.routes.add(net)
        except OSError as exc:
            log.warning("IKE peer %s: route into %s: %s", peer.name, device, exc)

    def _unroute(self, peer: Peer) -> None:
        if peer.device is None:
            return
        for net in sorted(peer.routes):
            try:
                self.routes.delete(net, peer.device)
            except OSError as exc:
                log.warning("IKE peer %s: removing route %s: %s", peer.name, net, exc)
        peer.routes.clear()

    def _trap(self, peer: Peer) -> None:
        """start=on-traffic: the device and routes exist before any SA, so traffic can start IKE."""
        rec = peer.record
        if rec["remote"] == "%any":
            return
        try:
            device = self._device_for(peer, rec["local"], rec["remote"], 0, list(rec["remote_nets"]))
        except ProtocolError as exc:
            log.error("IKE peer %s: no tunnel device: %s", peer.name, exc.message)
            return
        local_net = rec["local_nets"][0] if rec["local_nets"] else None
        self._route(peer, device, list(rec["remote_nets"]), local_net)
        peer.traffic_mark = self.manager.engine.stats_for(device).tx_drops[Drop.NO_SA]

    # -- peers -------------------------------------------------------------------------------------------

    def _config(self, rec: dict[str, Any]) -> Any:
        cfg = self.peer_config(
            name=rec["name"], local_addr=rec["local"], remote_addr=rec["remote"],
            psk=bytes.fromhex(rec["psk"]), local_id=rec.get("local_id"), remote_id=rec.get("remote_id"),
            local_nets=tuple(rec["local_nets"]), remote_nets=tuple(rec["remote_nets"]),
            proposals=tuple(rec["proposals"]), esp_proposals=tuple(rec["esp_proposals"]),
            dpd=float(rec["dpd"]), start=rec["start"],
        )  # fmt: skip
        cfg.validate()
        return cfg

    def _add(self, rec: dict[str, Any]) -> Peer:
        self.ike.add_peer(self._config(rec))
        peer = Peer(rec)
        if rec.get("device"):
            peer.device = str(rec["device"])
            peer.made_device = True
        elif rec.get("tunnel"):
            peer.device = str(rec["tunnel"])
        self.peers[peer.name] = peer
        return peer

    def _start(self, peer: Peer) -> None:
        start = peer.record.get("start")
        if start == "now":
            self._call(lambda: self.ike.initiate(peer.name, self.clock()))
        elif start == "on-traffic":
            self._trap(peer)

    def restore(self) -> None:
        """Bring back the stored peers and start those with start=now (or trap on-traffic ones)."""
        if self.store is None:
            return
        for rec in self.store.load_peers():
            try:
                peer = self._add(rec)
            except Exception as exc:  # a stored peer this version cannot use: say so, keep the others
                log.error("stored IKE peer %s not restored: %s", rec.get("name"), exc)
                continue
            self._start(peer)
        if self.peers:
            log.info("restored %d IKE peers", len(self.peers))

    def shutdown(self) -> None:
        """At a clean stop: tell every peer that is up that its IKE SA goes (INFORMATIONAL DELETE)."""
        for peer in self.peers.values():
            if getattr(self._statuses().get(peer.name), "state", "down") != "down":
                self._call(functools.partial(self.ike.terminate, peer.name, self.clock()))

    # -- control operations ------------------------------------------------------------------------------

    def handle(self, op: str, args: dict[str, Any], fallback: Callable[[str, dict[str, Any]], Any]) -> Any:
        """Carry out `op`: the `ike.*` operations here, the rest by `fallback` (the manager), with the
        IKE view added to `sa.show` (origin) and `stats` (IKE counters)."""
        if op.startswith("ike."):
            handler = getattr(self, "op_" + op.replace(".", "_"))
            try:
                return handler(args)
            except ConfigError as exc:
                raise ProtocolError(exc.errno, str(exc)) from None
        result = fallback(op, args)
        if op == "sa.show" and isinstance(result, list):
            origins = self._origins()
            for sa in result:
                sa["origin"] = origins.get((sa.get("dst"), sa.get("src"), sa.get("spi")), "manual")
        elif op == "stats" and isinstance(result, dict):
            result["ike"] = self.stats()
        return result

    def _origins(self) -> dict[tuple[Any, Any, Any], str]:
        out = {}
        for peer in self.peers.values():
            for c in peer.children.values():
                out[c.local_addr, c.remote_addr, c.spi_in] = f"ike:{peer.name}"
                out[c.remote_addr, c.local_addr, c.spi_out] = f"ike:{peer.name}"
        return out

    def stats(self) -> dict[str, Any]:
        """IKE counters for `stats`: datagrams received (on 500, and with the non-ESP marker on 4500) and
        those dropped, by reason."""
        drops = dict(self.drops)
        for reason, n in getattr(self.ike, "drops", {}).items():
            drops[reason] = drops.get(reason, 0) + n
        return {"received": self.received, "drops": {k: v for k, v in sorted(drops.items()) if v}}

    def _peer(self, args: dict[str, Any]) -> Peer:
        name = arg(args, "name", str, required=True)
        peer = self.peers.get(name)
        if peer is None:
            raise ProtocolError("ENOENT", f"No such IKE peer: {name}")
        return peer

    def op_ike_add(self, args: dict[str, Any]) -> Any:
        rec = peer_record(args)
        if rec["name"] in self.peers:
            raise ProtocolError("EEXIST", f"IKE peer {rec['name']} already exists")
        if rec["tunnel"] and any(p.device == rec["tunnel"] for p in self.peers.values()):
            raise ProtocolError("EEXIST", f"tunnel {rec['tunnel']} already belongs to another IKE peer")
        try:
            self._config(rec)
        except Exception as exc:  # IkeConfigError: a one-line message
            raise ProtocolError("EINVAL", str(exc)) from None
        if self.store is not None:
            self.store.save_peer(rec["name"], rec)
        try:
            peer = self._add(rec)
        except Exception as exc:
            if self.store is not None:
                self.store.remove_peer(rec["name"])
            raise ProtocolError("EINVAL", str(exc)) from None
        log.info(
            "IKE peer added: %s %s -> %s (start=%s)", peer.name, rec["local"], rec["remote"], rec["start"]
        )
        self._start(peer)
        return self.peer_dict(peer, False)

    def op_ike_del(self, args: dict[str, Any]) -> Any:
        peer = self._peer(args)
        self._call(lambda: self.ike.remove_peer(peer.name, self.clock()))
        for child in list(peer.children.values()):  # whatever the Ike did not report down
            self._del_sa(child.local_addr, child.remote_addr, child.spi_in)
            self._del_sa(child.remote_addr, child.local_addr, child.spi_out)
        peer.children.clear()
        if self.store is not None:
            self.store.erase()
        self._unroute(peer)
        if peer.made_device and peer.device and self.manager.engine.tunnels.get(peer.device) is not None:
            try:
                self.manager.handle("tunnel.del", {"name": peer.device})
            except ProtocolError as exc:
                log.warning("IKE peer %s: removing %s: %s", peer.name, peer.device, exc.message)
        del self.peers[peer.name]
        if self.store is not None:
            self.store.remove_peer(peer.name)
        log.info("IKE peer removed: %s", peer.name)
        return {"deleted": peer.name}

    def op_ike_up(self, args: dict[str, Any]) -> Any:
        peer = self._peer(args)
        if peer.record["remote"] == "%any":
            raise ProtocolError(
                "EINVAL", f"IKE peer {peer.name} has no remote address (%any): it can only respond"
            )
        self._call(lambda: self.ike.initiate(peer.name, self.clock()))
        return self.peer_dict(peer, False)

    def op_ike_down(self, args: dict[str, Any]) -> Any:
        peer = self._peer(args)
        self._call(lambda: self.ike.terminate(peer.name, self.clock()))
        return self.peer_dict(peer, False)

    def op_ike_show(self, args: dict[str, Any]) -> Any:
        stats = bool(arg(args, "stats", bool, False))
        if arg(args, "name", str):
            return [self.peer_dict(self._peer(args), stats)]
        return [self.peer_dict(p, stats) for p in self.peers.values()]

    def _statuses(self) -> dict[str, Any]:
        try:
            return {s.peer: s for s in self.ike.peers()}
        except Exception:
            return {}

    def peer_dict(self, peer: Peer, stats: bool) -> dict[str, Any]:
        """A peer as `ike show` reports it: never the PSK."""
        rec = peer.record
        st = self._statuses().get(peer.name) or peer.status
        out: dict[str, Any] = {k: rec.get(k) for k in PUBLIC_FIELDS}
        out["device"] = peer.device
        out["state"] = getattr(st, "state", "down")
        out["reason"] = getattr(st, "reason", None)
        remote = getattr(st, "remote", None)
        out["remote_seen"] = f"{remote[0]}:{remote[1]}" if remote else None
        out["proposal"] = getattr(st, "proposal", None)
        out["ike_spi_i"] = getattr(st, "ike_spi_i", None)
        out["ike_spi_r"] = getattr(st, "ike_spi_r", None)
        children = []
        sad = self.manager.engine.sad
        for c in peer.children.values():
            child: dict[str, Any] = {
                "spi_in": c.spi_in, "spi_out": c.spi_out, "local_ts": c.local_ts, "remote_ts": c.remote_ts,
                "cipher": c.cipher, "encap": list(c.encap) if c.encap else None,
            }  # fmt: skip
            if stats:
                for key, spi, a, b in (("in", c.spi_in, c.local_addr, c.remote_addr),
                                       ("out", c.spi_out, c.remote_addr, c.local_addr)):  # fmt: skip
                    sa = sad.get(ipaddress.ip_address(a).packed, ipaddress.ip_address(b).packed, spi)
                    child[f"packets_{key}"] = sa.packets if sa else 0
                    child[f"bytes_{key}"] = sa.bytes if sa else 0
            children.append(child)
        out["children"] = children
        return out


PUBLIC_FIELDS = (
    "name", "local", "remote", "local_id", "remote_id", "local_nets", "remote_nets", "proposals",
    "esp_proposals", "tunnel", "start", "dpd",
)  # fmt: skip


def _address(text: Any, what: str, *, any_ok: bool = False) -> str:
    if any_ok and text == "%any":
        return "%any"
    try:
        return str(ipaddress.ip_address(str(text)))
    except ValueError:
        raise ProtocolError("EINVAL", f"Bad {what} address: {text!r}") from None


def _nets(args: dict[str, Any], name: str) -> list[str]:
    nets = arg(args, name, list, [])
    if not nets or not all(isinstance(n, str) for n in nets):
        raise ProtocolError("EINVAL", f"ike add needs at least one --{name.replace('_', '-')[:-1]}=CIDR")
    out = []
    for n in nets:
        try:
            out.append(str(ipaddress.ip_network(n, strict=False)))
        except ValueError:
            raise ProtocolError("EINVAL", f"Bad network: {n!r}") from None
    return out


def _words(args: dict[str, Any], name: str) -> list[str]:
    words = arg(args, name, list, ["default"]) or ["default"]
    if not all(isinstance(w, str) and w for w in words):
        raise ProtocolError("EINVAL", f"{name} must be a list of proposal strings")
    return list(words)


def peer_record(args: dict[str, Any]) -> dict[str, Any]:
    """The stored form of an `ike.add` request, checked; ProtocolError EINVAL on bad values."""
    name = arg(args, "name", str, required=True)
    if not _NAME.fullmatch(name):
        raise ProtocolError("EINVAL", f"Bad IKE peer name {name!r}: 1-32 of A-Z a-z 0-9 _ . -")
    psk = arg(args, "psk", str, required=True)
    try:
        if not bytes.fromhex(psk):
            raise ValueError
    except ValueError:
        raise ProtocolError("EINVAL", "Bad PSK: empty or not hexadecimal") from None
    start = arg(args, "start", str, "none")
    if start not in STARTS:
        raise ProtocolError("EINVAL", f"Bad start {start!r} (one of: {', '.join(STARTS)})")
    dpd = arg(args, "dpd", (int, float), 0)
    if isinstance(dpd, bool) or not 0 <= dpd <= 86400:
        raise ProtocolError("EINVAL", "Bad dpd: 0 to 86400 seconds")
    tunnel = arg(args, "tunnel", str)
    if tunnel:
        try:
            check_name(tunnel)
        except TunnelError as exc:
            raise ProtocolError("EINVAL", str(exc)) from None
    local = _address(arg(args, "local", str, required=True), "local")
    remote = _address(arg(args, "remote", str, required=True), "remote", any_ok=True)
    if start != "none" and remote == "%any":
        raise ProtocolError("EINVAL", "a peer with --remote=%any can only respond: use --start=none")
    return {
        "name": name, "local": local, "remote": remote, "psk": psk,
        "local_id": arg(args, "local_id", str), "remote_id": arg(args, "remote_id", str),
        "local_nets": _nets(args, "local_nets"), "remote_nets": _nets(args, "remote_nets"),
        "proposals": _words(args, "proposals"), "esp_proposals": _words(args, "esp_proposals"),
        "tunnel": tunnel or None, "start": start, "dpd": dpd,
    }  # fmt: skip
