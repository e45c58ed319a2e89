"""INFORMATIONAL (RFC 7296 §1.4: DELETE, liveness) and the refusal of CREATE_CHILD_SA in this part."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import message as m
from .constants import (
    Notify,
    Payload,
    Protocol,
)
from .events import ChildDown
from .exchange import (
    Addr,
    Inner,
    Payloads,
    respond,
)
from .sa import (
    IkeSa,
)

if TYPE_CHECKING:
    from .machine import Ike


def on_info_request(
    ike: Ike, sa: IkeSa, hdr: m.Header, data: bytes, p: Payloads, local: Addr, remote: Addr, now: float
) -> None:
    """DELETE of the IKE SA or the CHILD SA, or an empty liveness check: answered (§1.4.1, §2.4)."""
    deletes = [m.decode_delete(x.body) for x in p.items if x.ptype == Payload.DELETE]
    if any(proto == Protocol.IKE for proto, _ in deletes):
        respond(ike, sa, hdr.exchange, hdr.mid, [])
        ike.forget(sa, "deleted by peer", down_reason="deleted by peer")
        return
    inner: Inner = []
    for proto, spis in deletes:
        if proto != Protocol.ESP or sa.child is None:
            continue
        c = sa.child
        if any(len(s) == 4 and struct.unpack("!I", s)[0] == c.spi_out for s in spis):
            inner.append((Payload.DELETE, m.encode_delete(Protocol.ESP, [struct.pack("!I", c.spi_in)])))
            sa.child = None
            ike.child_spis.discard(c.spi_in)
            ike.emit(ChildDown(sa.cfg.name, c.child_id, c.spi_in, c.spi_out, "deleted by peer"))
    respond(ike, sa, hdr.exchange, hdr.mid, inner)
    entry = ike.entry_of(sa)
    if entry is not None and entry.sa is sa:
        ike.emit_status(entry)


def on_info_response(
    ike: Ike, sa: IkeSa, hdr: m.Header, data: bytes, p: Payloads, local: Addr, remote: Addr, now: float
) -> None:
    pending = sa.pending
    sa.pending = None
    if pending is not None and pending.kind == "delete_ike":
        ike.forget(sa, "terminated")


def on_create_child_request(
    ike: Ike, sa: IkeSa, hdr: m.Header, data: bytes, p: Payloads, local: Addr, remote: Addr, now: float
) -> None:
    """CREATE_CHILD_SA (rekeying, more CHILD SAs) is not in this part: answered with NO_ADDITIONAL_SAS
    (RFC 7296 §1.3) so that the peer keeps the IKE SA rather than giving up on an unanswered request."""
    ike.drops["create_child_refused"] += 1
    respond(ike, sa, hdr.exchange, hdr.mid, [(Payload.NOTIFY, m.encode_notify(Notify.NO_ADDITIONAL_SAS))])
