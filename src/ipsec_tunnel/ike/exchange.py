"""What every exchange uses: the payloads of a message by type, encrypting and sending requests and
responses (RFC 7296 §2.1-2.3, §3.14), and giving up on an IKE SA."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import message as m
from .constants import (
    HEADER_LEN,
    DhGroup,
    Exchange,
    Flag,
    Payload,
    Protocol,
)
from .events import ChildDown
from .proposals import Spec, from_proposal, match, name
from .sa import (
    RETRANSMIT_BASE,
    IkeSa,
    Pending,
    State,
)

if TYPE_CHECKING:
    from .machine import Ike

Addr = tuple[str, int]
Inner = list[tuple[int, bytes]]


class Payloads:
    """The payloads of one (decrypted) message, by type."""

    def __init__(self, payloads: Sequence[m.RawPayload]) -> None:
        self.items = list(payloads)
        self.notifies = [m.decode_notify(p.body) for p in payloads if p.ptype == Payload.NOTIFY]

    def first(self, ptype: int) -> bytes | None:
        return next((p.body for p in self.items if p.ptype == ptype), None)

    def notify(self, ntype: int) -> m.NotifyPayload | None:
        return next((n for n in self.notifies if n.ntype == ntype), None)

    def error(self) -> m.NotifyPayload | None:
        return next((n for n in self.notifies if n.ntype <= 16383), None)

    def all_data(self, ntype: int) -> list[bytes]:
        return [n.data for n in self.notifies if n.ntype == ntype]


# ---------------------------------------------------------------------------------------------------------
# sending


def flags_of(sa: IkeSa, response: bool) -> int:
    return (Flag.INITIATOR if sa.initiator else 0) | (Flag.RESPONSE if response else 0)


def encrypt(ike: Ike, sa: IkeSa, exchange: int, mid: int, response: bool, inner: Inner) -> bytes:
    """A message whose payloads are all inside one SK payload (RFC 7296 §3.14)."""
    assert sa.out is not None
    first, chain = m.encode_chain(inner)
    sk_len = 4 + sa.out.sealed_len(len(chain))
    hdr = m.encode_header(
        sa.spi_i, sa.spi_r, Payload.SK, exchange, flags_of(sa, response), mid, HEADER_LEN + sk_len
    )
    prefix = hdr + struct.pack("!BBH", first, 0, sk_len)
    if sa.out.iv_len == 8:  # AES-GCM: a counter, never repeated under one key (RFC 5282 §3.1)
        sa.iv_counter += 1
        iv = sa.iv_counter.to_bytes(8)
    else:
        iv = ike.random(16)  # CBC needs an unpredictable IV (RFC 3602 §2.4)
    return prefix + sa.out.seal(prefix, chain, iv)


def send_request(ike: Ike, sa: IkeSa, kind: str, exchange: int, inner: Inner, now: float) -> None:
    mid = sa.next_mid
    sa.next_mid += 1
    data = encrypt(ike, sa, exchange, mid, False, inner)
    sa.pending = Pending(mid, data, kind, now + RETRANSMIT_BASE)
    ike.send(sa, data)


def respond(ike: Ike, sa: IkeSa, exchange: int, mid: int, inner: Inner) -> None:
    data = encrypt(ike, sa, exchange, mid, True, inner)
    sa.cached = (mid, sa.request, data)
    sa.expect_mid = mid + 1
    ike.send(sa, data)


def send_delete_ike(ike: Ike, sa: IkeSa, now: float) -> None:
    """INFORMATIONAL with Delete(IKE) (§1.4.1); the CHILD SA goes at once, the IKE SA on the answer."""
    if sa.child is not None:
        c = sa.child
        sa.child = None
        ike.child_spis.discard(c.spi_in)
        ike.emit(ChildDown(sa.cfg.name, c.child_id, c.spi_in, c.spi_out, "terminated"))
    sa.state = State.DELETING
    if sa.pending is not None:  # window 1: the delete goes after the outstanding request is given up
        sa.next_mid = sa.pending.mid + 1
    send_request(ike, sa, "delete_ike", Exchange.INFORMATIONAL, [(Payload.DELETE, m.encode_delete(1))], now)


def fail(ike: Ike, sa: IkeSa, reason: str) -> None:
    entry = ike.entry_of(sa)
    ike.forget(sa, reason, down_reason=reason)
    if entry is not None and entry.sa is None:
        entry.reason = reason
        ike.emit_status(entry)


def group_name(group: int) -> str:
    try:
        return name(Spec(Protocol.IKE, dh=(DhGroup(group),)))
    except ValueError:
        return f"dh{group}"


def accepted(proposals: list[m.Proposal], ours: list[Spec], protocol: int) -> Spec | None:
    """The responder's single chosen proposal if it is one of ours with one algorithm per type."""
    if len(proposals) != 1:
        return None
    their = from_proposal(proposals[0])
    if their.protocol != protocol or len(their.encr) != 1 or len(their.integ) > 1 or len(their.prf) > 1:
        return None
    if len(their.dh) > 1 or len(their.esn) > 1:
        return None
    for our in ours:
        got = match(their, our)
        if got is not None:
            return got
    return None
