"""`Ike`: all IKE SAs of one daemon, sans I/O (RFC 7296). Datagrams, addresses and `now` in; `Send`,
`ChildUp`, `ChildDown`, `PeerStatus` (and, for tests only, `KeysForTest`) events out.

The exchanges: IKE_SA_INIT (§1.2, with COOKIE §2.6, INVALID_KE_PAYLOAD §1.3 and NAT detection §2.23),
IKE_AUTH with PSK (§2.15) and the first CHILD SA (§1.2, §2.9 narrowing, §2.17 keys), INFORMATIONAL
(§1.4: DELETE, liveness). Message IDs with a window of 1, retransmission and cached responses (§2.1-2.3).
Every malformed or unexpected datagram is a counted drop in `drops`, never an exception.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import handlers
from .config import IkeConfigError, PeerConfig, esp_specs, ike_specs
from .crypto import DhError
from .events import ChildDown, Event, PeerStatus, Send
from .exchange import send_delete_ike
from .message import Malformed, UnsupportedCritical, parse_header
from .proposals import Spec, name
from .sa import IkeSa, State
from .sa_init import start_initiator


@dataclass
class PeerEntry:
    """A configured peer, its current IKE SA and why it is not up."""

    cfg: PeerConfig
    ike: list[Spec]
    esp: list[Spec]
    sa: IkeSa | None = None
    reason: str | None = None
    contacted: bool = False  # an IKE SA was established since add_peer (else INITIAL_CONTACT)
    last: PeerStatus | None = None


class Ike:
    """All IKE SAs of one daemon. Bytes, addresses and `now` (monotonic seconds) in; events out."""

    def __init__(
        self, *, random: Callable[[int], bytes] | None = None, log_keys_for_test: bool = False
    ) -> None:
        self.random: Callable[[int], bytes] = random or secrets.token_bytes
        self.log_keys_for_test = log_keys_for_test
        self.drops: Counter[str] = Counter()
        self.retransmits = 0  # requests of ours sent again after no answer (§2.4)
        self.peers_by_name: dict[str, PeerEntry] = {}
        self.sas: dict[int, IkeSa] = {}  # by our SPI
        # responder IKE SAs by their IKE_SA_INIT's (remote ip, port, SPIi), kept while the SA lives so
        # that a retransmitted IKE_SA_INIT gets the same response (§2.1)
        self.by_init: dict[tuple[str, int, int], IkeSa] = {}
        self.child_spis: set[int] = set()
        self._next_child = 1
        self._events: list[Event] = []

    # ---- public API ------------------------------------------------------------------------------------

    def add_peer(self, cfg: PeerConfig) -> None:
        """Adds a peer; raises IkeConfigError on a duplicate name or a bad value."""
        cfg.validate()
        if cfg.name in self.peers_by_name:
            raise IkeConfigError(f"peer '{cfg.name}' exists")
        self.peers_by_name[cfg.name] = PeerEntry(cfg, ike_specs(cfg), esp_specs(cfg))

    def remove_peer(self, name: str, now: float) -> None:
        """Deletes a peer (sending DELETE if its IKE SA is up)."""
        if name in self.peers_by_name:
            self.terminate(name, now)
            del self.peers_by_name[name]

    def peers(self) -> list[PeerStatus]:
        return [self.status(e) for e in self.peers_by_name.values()]

    def initiate(self, name: str, now: float) -> None:
        """Starts IKE_SA_INIT to the peer; no-op if it is up or connecting."""
        entry = self.peers_by_name.get(name)
        if entry is None or entry.cfg.remote_addr == "%any":
            return
        if entry.sa is not None and entry.sa.state not in (State.DEAD, State.DELETING):
            return
        start_initiator(self, entry, now)

    def terminate(self, name: str, now: float) -> None:
        """Deletes the peer's IKE SA (INFORMATIONAL DELETE when established)."""
        entry = self.peers_by_name.get(name)
        if entry is None or entry.sa is None:
            return
        sa = entry.sa
        entry.sa = None
        entry.reason = "terminated"
        if sa.established:
            send_delete_ike(self, sa, now)
        else:
            self.forget(sa, "terminated")
        self.emit_status(entry)

    def datagram_received(
        self, data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float
    ) -> None:
        """One IKE message (without a non-ESP marker); bad input is counted in `drops`."""
        try:
            hdr = parse_header(data)
            handlers.dispatch(self, hdr, data, local, remote, now)
        except Malformed as exc:
            self.drops[f"malformed_{exc.args[0]}" if exc.args else "malformed"] += 1
        except UnsupportedCritical:
            self.drops["unsupported_critical"] += 1
        except DhError:
            self.drops["bad_ke"] += 1
        except (ValueError, struct.error, IndexError, KeyError, ipaddress.AddressValueError):
            self.drops["malformed"] += 1
        except Exception:  # a bug of ours must not take the daemon down; tests assert this stays 0
            self.drops["internal_error"] += 1

    def handle_timer(self, now: float) -> None:
        """Retransmissions, DPD probes and half-open expiry due at `now`."""
        try:
            handlers.timers(self, now)
        except Exception:  # as in datagram_received; tests assert this stays 0
            self.drops["internal_error"] += 1

    def next_timer(self) -> float | None:
        """The absolute `now` of the next deadline, or None."""
        return handlers.next_deadline(self)

    def events(self) -> list[Event]:
        """Drains the event queue, in order."""
        out, self._events = self._events, []
        return out

    # ---- used by handlers ------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def send(self, sa: IkeSa, data: bytes) -> None:
        self.emit(Send(sa.local, sa.remote, data))

    def new_spi(self) -> int:
        while True:
            spi = int.from_bytes(self.random(8))
            if spi and spi not in self.sas:
                return spi

    def new_child_spi(self) -> int:
        """4 random bytes, never 0-255 (reserved, RFC 4303 §2.1) nor one in use."""
        while True:
            spi = int.from_bytes(self.random(4))
            if spi > 255 and spi not in self.child_spis:
                self.child_spis.add(spi)
                return spi

    def new_child_id(self) -> int:
        cid = self._next_child
        self._next_child += 1
        return cid

    def entry_of(self, sa: IkeSa) -> PeerEntry | None:
        e = self.peers_by_name.get(sa.cfg.name)
        return e if e is not None and e.cfg is sa.cfg else None

    def status(self, entry: PeerEntry) -> PeerStatus:
        sa = entry.sa
        if sa is None or sa.state in (State.DEAD, State.DELETING):
            return PeerStatus(entry.cfg.name, "down", entry.reason)
        state = "established" if sa.established else "connecting"
        return PeerStatus(
            entry.cfg.name,
            state,
            None if sa.established else entry.reason,
            sa.spi_i,
            sa.spi_r or None,
            sa.remote,
            name(sa.spec) if sa.spec is not None else None,
            (sa.child.child_id,) if sa.child is not None else (),
        )

    def emit_status(self, entry: PeerEntry) -> None:
        st = self.status(entry)
        if st != entry.last:
            entry.last = st
            self.emit(st)

    def forget(self, sa: IkeSa, reason: str, *, down_reason: str | None = None) -> None:
        """Removes an IKE SA and its child (ChildDown with `reason`); the peer goes down if it was its SA."""
        if sa.state is State.DEAD:
            return
        sa.state = State.DEAD
        sa.pending = None
        self.sas.pop(sa.our_spi, None)
        for k, v in list(self.by_init.items()):
            if v is sa:
                del self.by_init[k]
        if sa.child is not None:
            c = sa.child
            sa.child = None
            self.child_spis.discard(c.spi_in)
            self.emit(ChildDown(sa.cfg.name, c.child_id, c.spi_in, c.spi_out, reason))
        elif sa.child_spi:
            self.child_spis.discard(sa.child_spi)
        entry = self.entry_of(sa)
        if entry is not None and entry.sa is sa:
            entry.sa = None
            entry.reason = down_reason or reason
            self.emit_status(entry)

    def others_of(self, sa: IkeSa) -> Sequence[IkeSa]:
        """The other IKE SAs of the same peer configuration with the same authenticated peer identity."""
        return [o for o in self.sas.values() if o is not sa and o.cfg is sa.cfg and o.peer_id == sa.peer_id]
