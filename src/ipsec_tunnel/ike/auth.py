"""IKE_AUTH with PSK (RFC 7296 §1.2, §2.15) and the first CHILD SA (§2.9 narrowing, §2.17 keys)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import message as m
from .config import describe_id, identity
from .constants import (
    IKE_PORT,
    NAT_T_PORT,
    AuthMethod,
    Encr,
    Notify,
    Payload,
    Protocol,
    notify_name,
)
from .crypto import (
    INTEG_DIGEST,
    child_keys,
    encr_key_len,
    equal,
    integ_key_len,
    psk_auth,
    signed_octets,
)
from .events import ChildUp
from .exchange import (
    Addr,
    Inner,
    Payloads,
    accepted,
    fail,
    respond,
    send_delete_ike,
)
from .proposals import Chosen, Spec, describe, name, select
from .sa import (
    Child,
    IkeSa,
    State,
    narrow,
    net_of,
    ts_net,
)

if TYPE_CHECKING:
    from .machine import Ike, PeerEntry


def _child_up(
    ike: Ike, sa: IkeSa, esp: Spec, spi_in: int, spi_out: int, local_ts: str, remote_ts: str
) -> None:
    assert sa.keys is not None and sa.spec is not None
    elen = encr_key_len(esp.encr[0])
    integ = esp.integ[0] if esp.integ else None
    ilen = integ_key_len(integ) if integ else 0
    ei, ai, er, ar = child_keys(sa.spec.prf[0], sa.keys.sk_d, sa.ni, sa.nr, elen, ilen)
    key_out, auth_out, key_in, auth_in = (ei, ai, er, ar) if sa.initiator else (er, ar, ei, ai)
    nat = sa.nat_local or sa.nat_remote or sa.cfg.encap_always
    encap = None
    if nat:
        lport = sa.local[1] if sa.local[1] != IKE_PORT else NAT_T_PORT
        rport = sa.remote[1] if sa.remote[1] != IKE_PORT else NAT_T_PORT
        encap = (lport, rport)
    aead = esp.encr[0][0] == Encr.AES_GCM_16
    child = Child(ike.new_child_id(), spi_in, spi_out)
    sa.child = child
    ike.emit(
        ChildUp(
            sa.cfg.name,
            child.child_id,
            spi_in,
            spi_out,
            "aes-gcm" if aead else "aes-cbc",
            128 if aead else None,
            None if aead else INTEG_DIGEST[integ] if integ else None,
            key_in,
            key_out,
            None if aead else auth_in,
            None if aead else auth_out,
            sa.local[0],
            sa.remote[0],
            encap,
            local_ts,
            remote_ts,
            sa.nat_local,
            sa.nat_remote,
        )
    )


def _established(ike: Ike, sa: IkeSa, initial_contact: bool, now: float) -> None:
    sa.state = State.ESTABLISHED
    sa.last_recv = now
    entry = ike.entry_of(sa)
    if entry is None:
        return
    for other in ike.others_of(sa):
        if initial_contact:  # §2.4: the peer lost its state; ours with it goes silently
            ike.forget(other, "replaced (INITIAL_CONTACT)")
        elif other.established:  # a newer IKE SA replaces an older one
            if entry.sa is other:
                entry.sa = None
            send_delete_ike(ike, other, now)
    entry.sa = sa
    entry.reason = None
    entry.contacted = True
    ike.emit_status(entry)


def _abandon(ike: Ike, sa: IkeSa, entry: PeerEntry, reason: str, now: float) -> None:
    """An IKE SA the peer holds as established but we cannot use (no CHILD SA, or the responder's AUTH
    failed): the peer goes down with `reason` and the IKE SA is deleted (INFORMATIONAL DELETE)."""
    sa.state = State.ESTABLISHED
    entry.contacted = True
    if entry.sa is sa or entry.sa is None:
        entry.sa = None
        entry.reason = reason
    send_delete_ike(ike, sa, now)
    ike.emit_status(entry)


def _peer_auth_failure(
    sa: IkeSa, id_body: bytes, auth_body: bytes, message: bytes, nonce: bytes, sk_p: bytes
) -> str | None:
    """Notes the peer's identity (`sa.peer_id`) from its ID payload `id_body`, then checks its PSK AUTH
    (§2.15: over its first `message`, our `nonce` and `id_body`, with its SK_p `sk_p`) and that identity
    against the configured remote ID: None when both hold, else what to add to the failure ("" for an
    AUTH that did not verify)."""
    assert sa.spec is not None
    prf_alg = sa.spec.prf[0]
    id_type, id_data = m.decode_id(id_body)
    sa.peer_id = (id_type, id_data)
    method, auth = m.decode_auth(auth_body)
    expected = psk_auth(prf_alg, sa.cfg.psk, signed_octets(prf_alg, message, nonce, sk_p, id_body))
    id_ok = sa.cfg.remote_id is None or identity(sa.cfg.remote_id, sa.cfg.remote_addr) == (id_type, id_data)
    if method != AuthMethod.SHARED_KEY_MIC or not equal(auth, expected) or not id_ok:
        return "" if id_ok else f" (identity {describe_id(id_type, id_data)} is not {sa.cfg.remote_id})"
    return None


def on_auth_request(
    ike: Ike, sa: IkeSa, hdr: m.Header, data: bytes, p: Payloads, local: Addr, remote: Addr, now: float
) -> None:
    """Responder: IKE_AUTH request; checks IDi and AUTH, then negotiates the CHILD SA (§1.2, §2.9)."""
    assert sa.keys is not None and sa.spec is not None
    entry = ike.entry_of(sa)
    idi, auth_body = p.first(Payload.IDI), p.first(Payload.AUTH)
    if entry is None:  # the peer was removed meanwhile
        ike.drops["peer_removed"] += 1
        ike.forget(sa, "peer removed")
        return
    if idi is None or auth_body is None:
        ike.drops["missing_payload"] += 1
        return
    sa.local, sa.remote = local, remote  # the initiator may have moved to 4500 (§2.23)
    why = _peer_auth_failure(sa, idi, auth_body, sa.init_request, sa.nr, sa.keys.sk_pi)
    if why is not None:
        respond(
            ike, sa, hdr.exchange, hdr.mid, [(Payload.NOTIFY, m.encode_notify(Notify.AUTHENTICATION_FAILED))]
        )
        fail(ike, sa, "AUTHENTICATION_FAILED" + why)
        return
    prf_alg = sa.spec.prf[0]
    my_type, my_data = identity(sa.cfg.local_id, sa.cfg.local_addr)
    idr = m.encode_id(my_type, my_data)
    my_auth = psk_auth(
        prf_alg, sa.cfg.psk, signed_octets(prf_alg, sa.init_response, sa.ni, sa.keys.sk_pr, idr)
    )
    inner: Inner = [(Payload.IDR, idr), (Payload.AUTH, m.encode_auth(AuthMethod.SHARED_KEY_MIC, my_auth))]
    initial_contact = p.notify(Notify.INITIAL_CONTACT) is not None
    failure = _child_responder(ike, sa, entry, p, inner)
    respond(ike, sa, hdr.exchange, hdr.mid, inner)
    if failure is None:
        _established(ike, sa, initial_contact, now)
    else:
        _abandon(ike, sa, entry, failure, now)


def _child_responder(ike: Ike, sa: IkeSa, entry: PeerEntry, p: Payloads, inner: Inner) -> str | None:
    """Appends SA, TSi, TSr (or an error notify) to `inner` and brings the child up; the error or None."""
    sa_body, tsi_body, tsr_body = p.first(Payload.SA), p.first(Payload.TSI), p.first(Payload.TSR)
    if sa_body is None or tsi_body is None or tsr_body is None:
        inner.append((Payload.NOTIFY, m.encode_notify(Notify.NO_PROPOSAL_CHOSEN)))
        return "NO_PROPOSAL_CHOSEN (no CHILD SA proposed)"
    proposals = m.decode_sa(sa_body)
    chosen = select(proposals, entry.esp)
    if not isinstance(chosen, Chosen) or len(chosen.spi) != 4:
        inner.append((Payload.NOTIFY, m.encode_notify(Notify.NO_PROPOSAL_CHOSEN)))
        ours = ", ".join(name(s) for s in entry.esp)
        return f"NO_PROPOSAL_CHOSEN (ESP ours: {ours}; theirs: {describe(proposals)})"
    if p.notify(Notify.USE_TRANSPORT_MODE) is not None:
        inner.append((Payload.NOTIFY, m.encode_notify(Notify.NO_PROPOSAL_CHOSEN)))
        return "NO_PROPOSAL_CHOSEN (transport mode requested; tunnel mode only)"
    cfg = sa.cfg
    rnet = net_of(
        cfg.remote_nets[0] if cfg.remote_nets else None,
        sa.remote[0] if cfg.remote_addr == "%any" else cfg.remote_addr,
    )
    lnet = net_of(cfg.local_nets[0] if cfg.local_nets else None, cfg.local_addr)
    tsi = narrow(m.decode_ts(tsi_body), rnet)
    tsr = narrow(m.decode_ts(tsr_body), lnet)
    if tsi is None or tsr is None:
        inner.append((Payload.NOTIFY, m.encode_notify(Notify.TS_UNACCEPTABLE)))
        return f"TS_UNACCEPTABLE (ours: {lnet} === {rnet})"
    spi_in = ike.new_child_spi()
    spi_out = struct.unpack("!I", chosen.spi)[0]
    inner.append((Payload.SA, m.encode_sa([chosen.spec.to_proposal(chosen.num, struct.pack("!I", spi_in))])))
    inner.append((Payload.TSI, m.encode_ts([tsi[0]])))
    inner.append((Payload.TSR, m.encode_ts([tsr[0]])))
    _child_up(ike, sa, chosen.spec, spi_in, spi_out, str(tsr[1]), str(tsi[1]))
    return None


def on_auth_response(
    ike: Ike, sa: IkeSa, hdr: m.Header, data: bytes, p: Payloads, local: Addr, remote: Addr, now: float
) -> None:
    """Initiator: IKE_AUTH response: the responder's AUTH, then the CHILD SA (§1.2, §2.15)."""
    assert sa.keys is not None and sa.spec is not None
    entry = ike.entry_of(sa)
    if entry is None:
        ike.forget(sa, "peer removed")
        return
    sa.pending = None
    idr, auth_body = p.first(Payload.IDR), p.first(Payload.AUTH)
    err = p.error()
    if idr is None or auth_body is None:
        fail(ike, sa, notify_name(err.ntype) if err is not None else "IKE_AUTH response without IDr/AUTH")
        return
    why = _peer_auth_failure(sa, idr, auth_body, sa.init_response, sa.ni, sa.keys.sk_pr)
    if why is not None:
        # authenticated on their side: tell them (§2.21.2)
        _abandon(ike, sa, entry, "AUTHENTICATION_FAILED (the responder's AUTH did not verify)" + why, now)
        return
    initial_contact = p.notify(Notify.INITIAL_CONTACT) is not None
    failure = _child_initiator(ike, sa, entry, p, err)
    if failure is None:
        _established(ike, sa, initial_contact, now)
    else:
        _abandon(ike, sa, entry, failure, now)


def _child_initiator(
    ike: Ike, sa: IkeSa, entry: PeerEntry, p: Payloads, err: m.NotifyPayload | None
) -> str | None:
    if err is not None:
        ike.child_spis.discard(sa.child_spi)
        return notify_name(err.ntype)
    sa_body, tsi_body, tsr_body = p.first(Payload.SA), p.first(Payload.TSI), p.first(Payload.TSR)
    if sa_body is None or tsi_body is None or tsr_body is None:
        return "IKE_AUTH response without a CHILD SA"
    esp = accepted(m.decode_sa(sa_body), entry.esp, Protocol.ESP)
    proposals = m.decode_sa(sa_body)
    if esp is None or len(proposals[0].spi) != 4:
        return f"NO_PROPOSAL_CHOSEN (the responder chose ESP {describe(proposals)}, not one of ours)"
    lnet = net_of(sa.cfg.local_nets[0] if sa.cfg.local_nets else None, sa.cfg.local_addr)
    rnet = net_of(sa.cfg.remote_nets[0] if sa.cfg.remote_nets else None, sa.cfg.remote_addr)
    tsi = m.decode_ts(tsi_body)
    tsr = m.decode_ts(tsr_body)
    li = ts_net(tsi[0]) if tsi else None
    ri = ts_net(tsr[0]) if tsr else None
    if li is None or ri is None or li.version != lnet.version or ri.version != rnet.version:
        return "TS_UNACCEPTABLE (the responder's selectors are not one CIDR each)"
    if not (li.subnet_of(lnet) and ri.subnet_of(rnet)):  # type: ignore[arg-type]
        return f"TS_UNACCEPTABLE (the responder chose {li} === {ri}, outside {lnet} === {rnet})"
    spi_out = struct.unpack("!I", proposals[0].spi)[0]
    _child_up(ike, sa, esp, sa.child_spi, spi_out, str(li), str(ri))
    return None
