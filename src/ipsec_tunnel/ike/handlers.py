"""The IKEv2 exchanges as handlers of one state table (RFC 7296 §1.2-1.4, §2.1-2.23).

`TABLE[(state, exchange, is_response)]` names the handler for a message that arrives on an IKE SA in
`state`; anything not in the table is a counted drop. IKE_SA_INIT requests (no SA yet) go to
`on_init_request`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import message as m
from .auth import on_auth_request, on_auth_response
from .constants import (
    HEADER_LEN,
    Exchange,
    Notify,
    Payload,
)
from .exchange import (
    Addr,
    Payloads,
    fail,
    respond,
    send_request,
)
from .info import on_create_child_request, on_info_request, on_info_response
from .sa import (
    HALF_OPEN_TIMEOUT,
    RETRANSMIT_BASE,
    RETRANSMIT_TRIES,
    IkeSa,
    State,
)
from .sa_init import on_init_request, on_init_response

if TYPE_CHECKING:
    from .machine import Ike


# ---------------------------------------------------------------------------------------------------------
# dispatch


def dispatch(ike: Ike, hdr: m.Header, data: bytes, local: Addr, remote: Addr, now: float) -> None:
    if hdr.exchange == Exchange.IKE_SA_INIT and not hdr.is_response:
        if hdr.spi_r != 0 or hdr.mid != 0:
            ike.drops["malformed_init"] += 1
            return
        on_init_request(ike, hdr, data, local, remote, now)
        return
    if hdr.exchange not in (
        Exchange.IKE_SA_INIT, Exchange.IKE_AUTH, Exchange.INFORMATIONAL, Exchange.CREATE_CHILD_SA
    ):  # fmt: skip
        ike.drops["unsupported_exchange"] += 1
        return
    our = hdr.spi_r if hdr.from_initiator else hdr.spi_i
    sa = ike.sas.get(our)
    if sa is None or sa.spi_i != hdr.spi_i or hdr.from_initiator == sa.initiator:
        ike.drops["unknown_spi"] += 1
        return
    if hdr.exchange != Exchange.IKE_SA_INIT and sa.spi_r != hdr.spi_r:
        ike.drops["unknown_spi"] += 1
        return
    if hdr.is_response:
        if sa.pending is None or hdr.mid != sa.pending.mid:
            ike.drops["unexpected_response"] += 1
            return
    elif hdr.mid != sa.expect_mid:
        if sa.cached is not None and hdr.mid == sa.cached[0] and data == sa.cached[1]:
            ike.drops["retransmitted_request"] += 1
            ike.send(sa, sa.cached[2])  # §2.1: the same response again
        else:
            ike.drops["message_id"] += 1
        return
    handler = TABLE.get((sa.state, hdr.exchange, hdr.is_response))
    sa.request = data if not hdr.is_response else b""
    if handler is None:
        ike.drops["unexpected_exchange"] += 1
        return
    if hdr.exchange == Exchange.IKE_SA_INIT:
        chain = m.parse_chain(data, hdr.next_payload, HEADER_LEN)
        handler(ike, sa, hdr, data, Payloads(chain.payloads), local, remote, now)
        return
    chain = m.parse_chain(data, hdr.next_payload, HEADER_LEN)
    if chain.sk is None or sa.inn is None:
        ike.drops["not_encrypted"] += 1
        return
    plain = sa.inn.open(data[: chain.sk_offset + 4], chain.sk.body)
    if plain is None:
        ike.drops["icv"] += 1
        return
    try:
        inner = m.parse_chain(plain, chain.sk_next)
    except m.UnsupportedCritical as exc:
        ike.drops["unsupported_critical"] += 1
        if not hdr.is_response:  # RFC 7296 §2.5
            note = m.encode_notify(Notify.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([exc.ptype]))
            respond(ike, sa, hdr.exchange, hdr.mid, [(Payload.NOTIFY, note)])
        return
    sa.last_recv = now
    handler(ike, sa, hdr, data, Payloads(inner.payloads), local, remote, now)


Handler = Callable[["Ike", IkeSa, m.Header, bytes, Payloads, Addr, Addr, float], None]
TABLE: dict[tuple[State, int, bool], Handler] = {
    # (state of our IKE SA, exchange, is a response): handler
    (State.INIT_SENT, Exchange.IKE_SA_INIT, True): on_init_response,
    (State.AUTH_SENT, Exchange.IKE_AUTH, True): on_auth_response,
    (State.INIT_DONE, Exchange.IKE_AUTH, False): on_auth_request,
    (State.ESTABLISHED, Exchange.INFORMATIONAL, False): on_info_request,
    (State.ESTABLISHED, Exchange.INFORMATIONAL, True): on_info_response,
    (State.DELETING, Exchange.INFORMATIONAL, False): on_info_request,
    (State.DELETING, Exchange.INFORMATIONAL, True): on_info_response,
    (State.ESTABLISHED, Exchange.CREATE_CHILD_SA, False): on_create_child_request,
}


# ---------------------------------------------------------------------------------------------------------
# timers


def _deadlines(ike: Ike, sa: IkeSa) -> list[float]:
    out = []
    if sa.pending is not None:
        out.append(sa.pending.deadline)
    if sa.state is State.INIT_DONE:
        out.append(sa.created + HALF_OPEN_TIMEOUT)
    if sa.established and sa.cfg.dpd > 0 and sa.pending is None:
        out.append(sa.last_recv + sa.cfg.dpd)
    return out


def next_deadline(ike: Ike) -> float | None:
    return min((d for sa in ike.sas.values() for d in _deadlines(ike, sa)), default=None)


def timers(ike: Ike, now: float) -> None:
    for sa in list(ike.sas.values()):
        if sa.state is State.DEAD:
            continue
        if sa.state is State.INIT_DONE and now >= sa.created + HALF_OPEN_TIMEOUT:
            ike.drops["half_open_expired"] += 1
            fail(ike, sa, "half-open IKE SA expired (no IKE_AUTH)")
            continue
        pend = sa.pending
        if pend is not None and now >= pend.deadline:
            if pend.sends >= RETRANSMIT_TRIES:
                reason = f"no answer from {sa.remote[0]}:{sa.remote[1]} after {pend.sends} tries"
                if pend.kind == "delete_ike":
                    ike.forget(sa, "terminated")
                else:
                    fail(ike, sa, reason)
                continue
            pend.deadline = now + RETRANSMIT_BASE * 2**pend.sends
            pend.sends += 1
            ike.retransmits += 1
            ike.send(sa, pend.data)
            continue
        if sa.established and sa.cfg.dpd > 0 and sa.pending is None and now >= sa.last_recv + sa.cfg.dpd:
            send_request(ike, sa, "dpd", Exchange.INFORMATIONAL, [], now)
