"""The control operations of ipsecd: SAs and tunnels added, changed, removed and shown, kept in step
with the engine, the state store and the kernel's tunnel devices."""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..control.protocol import VERSION, ProtocolError, arg
from ..core import algorithms
from ..core.drops import RECEIVE_DROPS, SEND_DROPS
from ..core.engine import Engine
from ..core.ip import IPV6_MIN_MTU
from ..core.plane import TunnelStats, inner_mtu
from ..core.replay import DEFAULT_WINDOW
from ..core.sa import (
    KEEPALIVE,
    ConfigError,
    Limits,
    SAConfig,
    SAError,
    SecurityAssociation,
    UdpEncap,
    parse_address,
)
from ..core.tunnel import BASE_DEVICE, Tunnel, TunnelError
from .clock import steady
from .state import Store

log = logging.getLogger(__name__)

DEFAULT_PATH_MTU = 1500  # used when the kernel has no route to the remote yet
MIN_TUNNEL_MTU = IPV6_MIN_MTU  # RFC 8200 §5: below it the kernel disables IPv6 on the device


class Devices:
    """What the manager needs from the kernel side (the daemon's `Devices` or a test fake)."""

    def create(self, name: str) -> None:
        """Create tunnel device `name` (down, no address)."""
        raise NotImplementedError

    def remove(self, name: str) -> None:
        """Remove tunnel device `name`."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        """Whether any network device `name` exists."""
        raise NotImplementedError

    def set_mtu(self, name: str, mtu: int) -> None:
        """Set the MTU of device `name`."""
        raise NotImplementedError

    def path_mtu(self, remote: str, nextdev: str | None) -> int | None:
        """The MTU of the route to `remote`, or None when there is none."""
        raise NotImplementedError

    def is_local(self, address: str) -> bool:
        """Whether `address` is an address of this host (a fake without addresses: every one is)."""
        return True


def _addr(args: dict[str, Any], name: str) -> bytes | None:
    text = arg(args, name, str)
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        raise ProtocolError("EINVAL", f"Bad {name} address: {text!r}") from None


def _limits(args: dict[str, Any], name: str) -> Limits:
    raw = arg(args, name, dict, {})
    try:
        return Limits(**{k: int(raw.get(k, 0) or 0) for k in ("bytes", "packets", "seconds")})
    except (TypeError, ValueError):
        raise ProtocolError("EINVAL", f"bad {name} lifetime") from None


def ambiguous_duplex_warning(config: SAConfig) -> str:
    """What `sa add --duplex` answers for a cipher whose packets do not say their direction."""
    return (
        f"warning: --duplex with {config.cipher or 'null'}: nothing in a packet says its direction, so a "
        "packet sent back to its sender is accepted there; prefer one SA per direction, each with its own key"
    )


def short_icv_warning(config: SAConfig) -> str | None:
    """What `sa add` answers for an AEAD SA with a 64-bit ICV (aes-gcm-8), else None: NIST SP 800-38D
    Appendix C bounds the forgery attempts such a tag may face, and nothing here counts them."""
    if config.digest is not None or config.digest_bits != 64:
        return None
    return (
        f"warning: {config.cipher} with a 64-bit ICV: nothing limits how many forgeries are tried, and "
        "one that succeeds makes the next easier (NIST SP 800-38D Appendix C); prefer the 128-bit ICV"
    )


def _twins(a: SAConfig, b: SAConfig) -> bool:
    """Whether `b` is `a`'s other direction: same SPI, algorithms and keys, addresses swapped."""
    return (
        a.spi == b.spi
        and (a.src, a.dst) == (b.dst, b.src)
        and (a.cipher, a.digest) == (b.cipher, b.digest)
        and hmac.compare_digest(a.cipher_key, b.cipher_key)
        and hmac.compare_digest(a.digest_key, b.digest_key)
    )


def _drops(counter: Any) -> dict[str, int]:
    return {reason.value: n for reason, n in counter.items() if n}


def _rekey(table: dict[str, Any], old: str, new: str) -> None:
    if old in table:
        table[new] = table.pop(old)


BATCH_OPS = ("sa.add", "tunnel.add")  # what a batch may hold: adds, each undone by its delete


class Manager:
    """Carries out control requests; every change is stored before it takes effect."""

    def __init__(
        self, engine: Engine, store: Store, devices: Devices, now: Callable[[], float] = steady
    ) -> None:
        self.engine = engine
        self.store = store
        self.devices = devices
        self.now = now
        self.mtu_set: dict[str, int] = {}
        self._holders: dict[str, list[SecurityAssociation]] = {}  # key fingerprint -> SAs holding it

    def handle(self, op: str, args: dict[str, Any]) -> Any:
        """The result of operation `op`; ProtocolError for a refused request."""
        handler = getattr(self, "op_" + op.replace(".", "_"))
        try:
            return handler(args)
        except ConfigError as exc:  # SAError, TunnelError
            raise ProtocolError(exc.errno, str(exc)) from None
        except OSError as exc:
            raise ProtocolError("EIO", f"{exc.strerror or exc}") from None

    # -- batches -------------------------------------------------------------------------------------

    def op_batch(self, args: dict[str, Any]) -> Any:
        """Carry out `requests` ({"op": "sa.add" or "tunnel.add", "args": {...}} each) all or none: the
        results in order, or, when one is refused, the ones before it undone and a ProtocolError whose
        message starts with "request N: " (1-based). The state database takes the batch in one
        transaction, so a crash in the middle of it leaves none of it stored."""
        reqs = arg(args, "requests", list, required=True)
        if not all(
            isinstance(r, dict) and r.get("op") in BATCH_OPS and isinstance(r.get("args"), dict) for r in reqs
        ):
            raise ProtocolError("EINVAL", f"batch takes a list of {' and '.join(BATCH_OPS)} requests")
        done: list[tuple[str, Any]] = []
        try:
            with self.store.atomic():
                for req in reqs:
                    done.append((req["op"], self.handle(req["op"], req["args"])))
        except ProtocolError as exc:
            self._undo(done)
            raise ProtocolError(exc.errno, f"request {len(done) + 1}: {exc.message}") from None
        except OSError as exc:  # the transaction could not begin or commit: nothing is stored
            self._undo(done)
            raise ProtocolError("EIO", f"{exc.strerror or exc}") from None
        except BaseException:
            self._undo(done)
            raise
        return [result for _op, result in done]

    def _undo(self, done: list[tuple[str, Any]]) -> None:
        """Remove what the requests of a refused batch added, newest first."""
        for op, result in reversed(done):
            try:
                if op == "sa.add":
                    for sa in result["added"]:
                        self.op_sa_del({"dst": sa["dst"], "src": sa["src"], "spi": sa["spi"]})
                else:
                    self.op_tunnel_del({"name": result["name"]})
            except (ProtocolError, ConfigError, OSError) as exc:
                log.error("batch rollback: could not undo %s (%s)", op, exc)

    # -- restore -------------------------------------------------------------------------------------

    def restore(self) -> None:
        """Bring back every stored SA and tunnel (their devices re-attached, or made anew when gone)."""
        for sa in self.store.load_sas(self.now()):
            self.engine.sad.add(sa)
            self._hold(sa)
        for tunnel in self.store.load_tunnels():
            self.engine.tunnels.add(tunnel)
            self.devices.create(tunnel.name)
            if not self.devices.is_local(tunnel.local):
                log.warning(
                    "tunnel %s: --local %s is not (yet) an address of this host", tunnel.name, tunnel.local
                )
        self.refresh_mtus()
        log.info("restored %d SAs and %d tunnels", len(self.engine.sad), len(self.engine.tunnels))

    # -- SAs -------------------------------------------------------------------------------------------

    def op_sa_add(self, args: dict[str, Any]) -> Any:
        encap_arg = arg(args, "encap", dict)
        encap = None
        if encap_arg is not None:
            encap = UdpEncap(
                arg(encap_arg, "sport", int, 4500),
                arg(encap_arg, "dport", int, 4500),
                arg(encap_arg, "keepalive", int, KEEPALIVE),
            )
        try:
            config = SAConfig(
                spi=arg(args, "spi", int, required=True),
                dst=arg(args, "dst", str, required=True),
                src=arg(args, "src", str, required=True),
                cipher=arg(args, "cipher", str),
                cipher_key=bytes.fromhex(arg(args, "cipher_key", str, "")),
                digest=arg(args, "digest", str),
                digest_key=bytes.fromhex(arg(args, "digest_key", str, "")),
                digest_bits=arg(args, "digest_bits", int),
                replay_window=arg(args, "replay_window", int, DEFAULT_WINDOW),
                esn=bool(arg(args, "esn", bool, False)),
                encap=encap,
                soft=_limits(args, "soft"),
                hard=_limits(args, "hard"),
                duplex=bool(arg(args, "duplex", bool, False)),
            ).validated()
        except ValueError as exc:
            if isinstance(exc, SAError):
                raise
            raise ProtocolError("EINVAL", "Bad key: not hexadecimal") from None
        configs = [config, config.reversed()] if config.duplex else [config]
        for c in configs:
            if self.engine.sad.get(*c.key) is not None:
                raise SAError("SA already exists", "EEXIST")
        self._check_key_reuse(configs)
        if not config.integrity:
            log.warning(
                "SA %#x %s -> %s has no integrity protection (no digest)", config.spi, config.src, config.dst
            )
        now = self.now()
        sas = [SecurityAssociation(c, now) for c in configs]
        self.store.add_sas(sas)  # all or none (both directions of --duplex), resumed past the key ledger
        added = []
        for sa in sas:
            c = sa.config
            self.engine.sad.add(sa)
            self._hold(sa)
            added.append(self.sa_dict(sa, False))
            log.info(
                "SA added: spi %#x %s -> %s %s/%s", c.spi, c.src, c.dst, c.cipher or "null", c.digest or "-"
            )
        self.refresh_mtus()
        warnings = [ambiguous_duplex_warning(config)] if config.ambiguous_duplex else []
        short_icv = short_icv_warning(config)
        if short_icv is not None:
            warnings.append(short_icv)
        if warnings:  # printed by ipsecadm on stderr
            return {"added": added, "warnings": warnings}
        return {"added": added}

    def _fingerprints(self, c: SAConfig) -> list[str]:
        return [self.store.key_fingerprint(k) for k in (c.cipher_key, c.digest_key) if k]

    def _hold(self, sa: SecurityAssociation) -> None:
        for fp in self._fingerprints(sa.config):
            self._holders.setdefault(fp, []).append(sa)

    def _release(self, sa: SecurityAssociation) -> None:
        for fp in self._fingerprints(sa.config):
            holders = self._holders.get(fp, [])
            if sa in holders:
                holders.remove(sa)
            if not holders:
                self._holders.pop(fp, None)

    def _check_key_reuse(self, configs: list[SAConfig]) -> None:
        """Refuse a key another live SA holds, whatever either's algorithm (an aes-ctr key with an aes-gcm
        key's bytes shares its keystream), as its cipher or its digest key: only the other direction of
        the same SA (what `--duplex` adds: same SPI and keys, addresses swapped) may share it."""
        for c in configs:
            for fp in self._fingerprints(c):
                for sa in self._holders.get(fp, []):
                    o = sa.config
                    if not _twins(c, o):
                        raise SAError(
                            f"This key is already used by SA {o.spi:#x} {o.src} -> {o.dst}; sharing it "
                            "would repeat (key, nonce) pairs or let one SA's packets pass as the other's. "
                            "Use a fresh key",
                            "EEXIST",
                        )

    def _select(self, args: dict[str, Any]) -> list[SecurityAssociation]:
        spi = arg(args, "spi", int)
        return self.engine.sad.find(_addr(args, "dst"), _addr(args, "src"), spi)

    def op_sa_del(self, args: dict[str, Any]) -> Any:
        filters = [k for k in ("dst", "src", "spi") if args.get(k) is not None]
        if not filters and not arg(args, "all", bool, False):
            raise ProtocolError("EINVAL", "sa del needs --dst, --src, --spi or --all")
        victims = self._select(args)
        if arg(args, "duplex", bool, False):
            for sa in list(victims):
                twin = self.engine.sad.get(sa.key[1], sa.key[0], sa.key[2])
                if twin is not None and twin not in victims:
                    victims.append(twin)
        if not victims:
            raise ProtocolError("ENOENT", "No such SA!")
        for sa in victims:
            self.store.remove_sa(sa)
            self.engine.sad.remove(sa)
            self._release(sa)
            self.engine.nat.forget(sa.key[0], sa.key[1])
            self.engine.nat.forget(sa.key[1], sa.key[0])
            log.info("SA removed: spi %#x %s -> %s", sa.config.spi, sa.config.src, sa.config.dst)
        self.refresh_mtus()
        return {
            "deleted": [{"dst": sa.config.dst, "src": sa.config.src, "spi": sa.config.spi} for sa in victims]
        }

    def op_sa_show(self, args: dict[str, Any]) -> Any:
        stats = bool(arg(args, "stats", bool, False))
        return [self.sa_dict(sa, stats) for sa in self._select(args)]

    @staticmethod
    def sa_dict(sa: SecurityAssociation, stats: bool) -> dict[str, Any]:
        """An SA as `sa show` reports it: never a key."""
        c = sa.config
        cipher_alg = algorithms.find_cipher(c.cipher)[0] if c.cipher else None
        aead = bool(cipher_alg and cipher_alg.aead)
        state = sa.dead or ("dying" if sa.soft_fired else "mature")
        out: dict[str, Any] = {
            "dst": c.dst, "src": c.src, "spi": c.spi,
            "cipher": c.cipher or "null",
            "cipher_bits": cipher_alg.key_bits(len(c.cipher_key)) if cipher_alg else 0,
            "aead": aead,
            "digest": c.digest,
            "digest_bits": (sa.auth.icv_len * 8 if sa.auth else (sa.cipher.icv_len * 8 if aead else 0)),
            "digest_key_bits": len(c.digest_key) * 8,
            "integrity": c.integrity,
            "replay_window": c.replay_window, "esn": c.esn,
            "encap": (
                {"sport": c.encap.sport, "dport": c.encap.dport, "keepalive": c.encap.keepalive}
                if c.encap else None
            ),
            "soft": {"bytes": c.soft.bytes, "packets": c.soft.packets, "seconds": c.soft.seconds},
            "hard": {"bytes": c.hard.bytes, "packets": c.hard.packets, "seconds": c.hard.seconds},
            "state": state, "created": sa.created,
        }  # fmt: skip
        if stats:
            out["stats"] = {
                "packets": sa.packets, "bytes": sa.bytes, "seq_out": sa.seq_out, "replay_top": sa.replay.top,
                "drops": _drops(sa.drops),
            }  # fmt: skip
        return out

    # -- tunnels ---------------------------------------------------------------------------------------

    def _tunnel_fields(self, args: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name in ("local", "remote", "nextdev"):
            if name in args:
                fields[name] = arg(args, name, str)
        if "spi" in args:
            fields["spi"] = arg(args, "spi", int, 0)
        if "peer_nets" in args:
            nets = arg(args, "peer_nets", list, [])
            if not all(isinstance(n, str) for n in nets):
                raise ProtocolError("EINVAL", "peer_nets must be a list of CIDR strings")
            fields["peer_nets"] = tuple(nets)
        return fields

    def op_tunnel_add(self, args: dict[str, Any]) -> Any:
        name = arg(args, "name", str, "") or self.engine.tunnels.free_name()
        fields = self._tunnel_fields(args)
        if "local" not in fields or "remote" not in fields:
            raise ProtocolError("EINVAL", "tunnel add needs --local and --remote")
        tunnel = Tunnel(name=name, **fields).validated()
        self._check_local(tunnel.local)
        if self.engine.tunnels.get(name) is None and self.devices.exists(name):
            raise TunnelError(f"A network device named {name} already exists", "EEXIST")
        self._check_nextdev(tunnel.nextdev)
        tunnel = self.engine.tunnels.add(tunnel)
        try:
            self.devices.create(name)
        except OSError:
            self.engine.tunnels.remove(name)
            raise
        try:
            self.store.save_tunnel(tunnel)
        except OSError:
            self.engine.tunnels.remove(name)
            self.devices.remove(name)
            raise
        self.engine.forget_tunnel(name)
        self.refresh_mtus()
        log.info("tunnel added: %s %s -> %s", name, tunnel.local, tunnel.remote)
        return self.tunnel_dict(tunnel, False)

    def _check_nextdev(self, nextdev: str | None) -> None:
        """Refuse a --nextdev that names no network device here."""
        if nextdev and not self.devices.exists(nextdev):
            raise TunnelError(f"No such device for --nextdev: {nextdev}", "ENODEV")

    def op_tunnel_change(self, args: dict[str, Any]) -> Any:
        name = arg(args, "name", str, required=True)
        fields = self._tunnel_fields(args)
        if fields.get("local"):
            self._check_local(str(parse_address(fields["local"], "local", TunnelError)))
        self._check_nextdev(fields.get("nextdev"))
        tunnel = self.engine.tunnels.change(name, **fields)
        self.store.save_tunnel(tunnel)
        self.refresh_mtus()
        return self.tunnel_dict(tunnel, False)

    def _check_local(self, local: str) -> None:
        """Refuse a tunnel whose --local is not an address of this host: it would send with the SA meant
        for receiving from its peer (issue 11 item 5)."""
        if not self.devices.is_local(local):
            raise TunnelError(
                f"--local {local} is not an address of this host (did you copy the peer's line? "
                "swap --local and --remote)"
            )

    def op_tunnel_del(self, args: dict[str, Any]) -> Any:
        name = arg(args, "name", str)
        if name:
            names = [name]
        elif arg(args, "all", bool, False):
            names = [t.name for t in self.engine.tunnels]
        else:
            raise ProtocolError("EINVAL", "tunnel del needs a device name or --all")
        for n in names:
            self.engine.tunnels.remove(n)
            self.store.remove_tunnel(n)
            self.devices.remove(n)
            self.mtu_set.pop(n, None)
            self.engine.path_mtu.pop(n, None)
            self.engine.forget_tunnel(n)
            log.info("tunnel removed: %s", n)
        return {"deleted": names}

    def device_gone(self, name: str) -> None:
        """Device `name` was deleted outside ipsecd: its tunnel is removed as by `tunnel del`; ipsec0 is
        made again."""
        if name == BASE_DEVICE:
            log.warning("%s was deleted outside ipsecd: made again", name)
            self.devices.create(name)
            return
        if self.engine.tunnels.get(name) is None:
            return
        log.warning("%s was deleted outside ipsecd: tunnel removed ('tunnel add' adds it again)", name)
        self.op_tunnel_del({"name": name})

    def device_renamed(self, old: str, new: str) -> None:
        """Device `old` was renamed `new` outside ipsecd: its tunnel takes the new name."""
        tunnel = self.engine.tunnels.get(old)
        if tunnel is None:
            if old == BASE_DEVICE:
                log.warning("%s renamed %s: packets for %s are dropped until ipsecd restarts", old, new, old)
            return
        self.engine.tunnels.remove(old)
        try:
            renamed = self.engine.tunnels.add(dataclasses.replace(tunnel, name=new))
        except TunnelError as exc:  # a name the kernel takes but `tunnel add` would not: as `tunnel del`
            log.warning("tunnel %s removed with its device: %s", old, exc)
            self.store.remove_tunnel(old)
            self.devices.remove(new)
            return
        self.store.remove_tunnel(old)
        self.store.save_tunnel(renamed)
        _rekey(self.mtu_set, old, new)
        _rekey(self.engine.path_mtu, old, new)
        _rekey(self.engine.tunnel_stats, old, new)
        log.info("tunnel %s is now %s", old, new)

    def op_tunnel_show(self, args: dict[str, Any]) -> Any:
        name = arg(args, "name", str)
        stats = bool(arg(args, "stats", bool, False))
        if name:
            tunnel = self.engine.tunnels.get(name)
            if tunnel is None:
                raise ProtocolError("ENOENT", f"No such tunnel: {name}")
            return [self.tunnel_dict(tunnel, stats)]
        return [self.tunnel_dict(t, stats) for t in self.engine.tunnels]

    def tunnel_dict(self, tunnel: Tunnel, stats: bool) -> dict[str, Any]:
        """A tunnel as `tunnel show` reports it."""
        sa = self.engine.sa_for(tunnel)
        out: dict[str, Any] = {
            "name": tunnel.name, "local": tunnel.local, "remote": tunnel.remote, "spi": tunnel.spi,
            "nextdev": tunnel.nextdev, "peer_nets": list(tunnel.peer_nets),
            "mtu": self.mtu_set.get(tunnel.name),
            "sa": sa.config.spi if sa else None,
        }  # fmt: skip
        if stats:
            s: TunnelStats = self.engine.stats_for(tunnel.name)
            out["stats"] = {
                "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes, "tx_packets": s.tx_packets,
                "tx_bytes": s.tx_bytes, "rx_drops": _drops(s.rx_drops), "tx_drops": _drops(s.tx_drops),
            }  # fmt: skip
        return out

    def refresh_mtus(self) -> None:
        """Set each tunnel device's MTU to the largest inner packet its SA fits into the path MTU, never
        below 1280 (RFC 8200 §5): inner packets between the two leave as outer fragments."""
        for tunnel in self.engine.tunnels:
            path = self.devices.path_mtu(tunnel.remote, tunnel.nextdev) or DEFAULT_PATH_MTU
            self.engine.path_mtu[tunnel.name] = path
            sa = self.engine.sa_for(tunnel)
            mtu = max(inner_mtu(sa, path) if sa else path - 100, MIN_TUNNEL_MTU)
            if self.mtu_set.get(tunnel.name) != mtu:
                try:
                    self.devices.set_mtu(tunnel.name, mtu)
                    self.mtu_set[tunnel.name] = mtu
                except OSError as exc:
                    log.warning("cannot set MTU %d on %s: %s", mtu, tunnel.name, exc.strerror)

    # -- the rest --------------------------------------------------------------------------------------

    def op_stats(self, args: dict[str, Any]) -> Any:
        e = self.engine
        receive = {"accepted": e.rx_accepted} | {d.value: e.rx_drops[d] for d in RECEIVE_DROPS}
        send = {"accepted": e.tx_accepted} | {d.value: e.tx_drops[d] for d in SEND_DROPS}
        out = {
            "receive": receive, "send": send, "keepalives": e.keepalives,
            "keepalives_sent": e.nat.keepalives_sent, "icmp_sent": e.icmp_sent, "ce_marked": e.ce_marked,
            "tx_ce_marked": e.tx_ce_marked, "tcp_windows_lowered": e.tcp_windows_lowered,
            "bulk_flows": e.bulk_flows, "sparse_held": e.sparse_held, "sparse_read": e.sparse_read,
            "turn_yields": e.turn_yields,
        }  # fmt: skip
        if arg(args, "last_drops", bool, False):
            out["last_drops"] = [r.to_dict() for r in e.drop_log.ring]
        return out

    def op_algos(self, args: dict[str, Any]) -> Any:
        return {
            "ciphers": [{"name": a.name, "kernel": a.kernel, "aliases": list(a.aliases),
                         "key_bits": [k * 8 for k in a.key_sizes], "salt_bits": a.salt_len * 8,
                         "aead": a.aead,
                         "icv_bits": [i * 8 for i in a.icv_lens], "rfc": a.rfc} for a in algorithms.CIPHERS],
            "digests": [{"name": a.name, "kernel": a.kernel, "aliases": list(a.aliases),
                         "key_bits": a.key_len * 8, "icv_bits": a.default_icv_bits, "rfc": a.rfc}
                        for a in algorithms.AUTHS],
        }  # fmt: skip

    def op_version(self, args: dict[str, Any]) -> Any:
        return {"version": __version__, "protocol": VERSION}

    def op_ping(self, args: dict[str, Any]) -> Any:
        return {"pong": True, "base_device": BASE_DEVICE}
