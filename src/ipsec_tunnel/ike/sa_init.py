"""IKE_SA_INIT (RFC 7296 §1.2) with COOKIE (§2.6), INVALID_KE_PAYLOAD (§1.3) and NAT detection (§2.23)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import message as m
from .config import identity
from .constants import (
    HEADER_LEN,
    IKE_PORT,
    NAT_T_PORT,
    AuthMethod,
    Exchange,
    Flag,
    Notify,
    Payload,
    Protocol,
    notify_name,
)
from .crypto import (
    INTEG_DIGEST,
    DhKey,
    SkCipher,
    derive_ike_keys,
    equal,
    psk_auth,
    signed_octets,
)
from .events import KeysForTest, Send
from .exchange import (
    Addr,
    Inner,
    Payloads,
    accepted,
    fail,
    group_name,
    send_request,
)
from .proposals import Spec, describe, name, select
from .sa import (
    MAX_COOKIE_RETRIES,
    MAX_HALF_OPEN,
    MAX_KE_RETRIES,
    RETRANSMIT_BASE,
    IkeSa,
    Pending,
    State,
    nat_hash,
    net_of,
    ts_of,
)

if TYPE_CHECKING:
    from .machine import Ike, PeerEntry


def start_initiator(ike: Ike, entry: PeerEntry, now: float) -> None:
    cfg = entry.cfg
    sa = IkeSa(
        cfg,
        True,
        ike.new_spi(),
        0,
        (cfg.local_addr, IKE_PORT),
        (cfg.remote_addr, IKE_PORT),
        now,
        State.INIT_SENT,
    )
    sa.ni = ike.random(32)
    sa.dh = DhKey(entry.ike[0].dh[0])
    sa.last_recv = now
    ike.sas[sa.spi_i] = sa
    entry.sa = sa
    entry.reason = None
    send_init(ike, sa, now)
    ike.emit_status(entry)


def _nat_notifies(ike: Ike, sa: IkeSa, spi_r: int, local: Addr, remote: Addr) -> Inner:
    """NAT_DETECTION_SOURCE_IP and _DESTINATION_IP (§2.23); with encap_always a random source hash
    makes the peer see a NAT and encapsulate, as strongSwan's `encap = yes` does."""
    spi_i = sa.spi_i
    src = ike.random(20) if sa.cfg.encap_always else nat_hash(spi_i, spi_r, *local)
    return [
        (Payload.NOTIFY, m.encode_notify(Notify.NAT_DETECTION_SOURCE_IP, src)),
        (
            Payload.NOTIFY,
            m.encode_notify(Notify.NAT_DETECTION_DESTINATION_IP, nat_hash(spi_i, spi_r, *remote)),
        ),
    ]


def send_init(ike: Ike, sa: IkeSa, now: float) -> None:
    entry = ike.entry_of(sa)
    assert entry is not None and sa.dh is not None
    proposals = [s.to_proposal(i + 1) for i, s in enumerate(entry.ike)]
    payloads: Inner = []
    if sa.cookie:  # §2.6: the COOKIE notify comes first
        payloads.append((Payload.NOTIFY, m.encode_notify(Notify.COOKIE, sa.cookie)))
    payloads += [
        (Payload.SA, m.encode_sa(proposals)),
        (Payload.KE, m.encode_ke(sa.dh.group, sa.dh.public)),
        (Payload.NONCE, sa.ni),
    ]
    payloads += _nat_notifies(ike, sa, 0, sa.local, sa.remote)
    data = m.encode_message(sa.spi_i, 0, Exchange.IKE_SA_INIT, Flag.INITIATOR, 0, payloads)
    sa.init_request = data
    sa.next_mid = 1
    sa.pending = Pending(0, data, "init", now + RETRANSMIT_BASE)
    ike.send(sa, data)


def _find_peer(ike: Ike, local: Addr, remote: Addr) -> PeerEntry | None:
    wildcard = None
    for e in ike.peers_by_name.values():
        if e.cfg.local_addr != local[0]:
            continue
        if e.cfg.remote_addr == remote[0]:
            return e
        if e.cfg.remote_addr == "%any" and wildcard is None:
            wildcard = e
    return wildcard


def _plain_reply(ike: Ike, hdr: m.Header, local: Addr, remote: Addr, payloads: Inner) -> None:
    data = m.encode_message(hdr.spi_i, 0, Exchange.IKE_SA_INIT, Flag.RESPONSE, 0, payloads)
    ike.emit(Send(local, remote, data))


def _nat_detect(p: Payloads, spi_i: int, spi_r: int, local: Addr, remote: Addr) -> tuple[bool, bool] | None:
    """(nat_local, nat_remote) from the peer's NAT-D notifies, or None if it sent none (§2.23)."""
    src = p.all_data(Notify.NAT_DETECTION_SOURCE_IP)
    dst = p.all_data(Notify.NAT_DETECTION_DESTINATION_IP)
    if not src or not dst:
        return None
    want_src = nat_hash(spi_i, spi_r, *remote)
    want_dst = nat_hash(spi_i, spi_r, *local)
    return not any(equal(d, want_dst) for d in dst), not any(equal(s, want_src) for s in src)


def on_init_request(ike: Ike, hdr: m.Header, data: bytes, local: Addr, remote: Addr, now: float) -> None:
    """Responder: IKE_SA_INIT request (§1.2); answers retransmissions from the half-open SA."""
    old = ike.by_init.get((remote[0], remote[1], hdr.spi_i))
    if old is not None:
        if old.init_request == data:
            ike.drops["retransmitted_request"] += 1
            ike.send(old, old.init_response)
        else:
            ike.drops["duplicate_init"] += 1
        return
    entry = _find_peer(ike, local, remote)
    if entry is None:
        ike.drops["no_peer"] += 1
        return
    if sum(1 for x in ike.by_init.values() if x.state is State.INIT_DONE) >= MAX_HALF_OPEN:
        ike.drops["half_open_limit"] += 1
        return
    try:
        chain = m.parse_chain(data, hdr.next_payload, HEADER_LEN)
    except m.UnsupportedCritical as exc:
        ike.drops["unsupported_critical"] += 1
        note = m.encode_notify(Notify.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([exc.ptype]))
        _plain_reply(ike, hdr, local, remote, [(Payload.NOTIFY, note)])
        return
    p = Payloads(chain.payloads)
    sa_body, ke_body, nonce_body = p.first(Payload.SA), p.first(Payload.KE), p.first(Payload.NONCE)
    if sa_body is None or ke_body is None or nonce_body is None:
        ike.drops["missing_payload"] += 1
        return
    proposals = m.decode_sa(sa_body)
    group, ke_data = m.decode_ke(ke_body)
    ni = m.decode_nonce(nonce_body)
    chosen = select(proposals, entry.ike, group)
    if chosen is None:
        ours = ", ".join(name(s) for s in entry.ike)
        entry.reason = f"NO_PROPOSAL_CHOSEN (ours: {ours}; theirs: {describe(proposals)})"
        _plain_reply(ike, hdr, local, remote, [(Payload.NOTIFY, m.encode_notify(Notify.NO_PROPOSAL_CHOSEN))])
        ike.emit_status(entry)
        return
    if isinstance(chosen, int):  # §1.3: ask for the group we want
        note = m.encode_notify(Notify.INVALID_KE_PAYLOAD, struct.pack("!H", chosen))
        _plain_reply(ike, hdr, local, remote, [(Payload.NOTIFY, note)])
        ike.drops["invalid_ke_sent"] += 1
        return
    dh = DhKey(group)
    shared = dh.shared(ke_data)  # DhError -> counted drop
    sa = IkeSa(entry.cfg, False, hdr.spi_i, ike.new_spi(), local, remote, now, State.INIT_DONE)
    sa.ni, sa.nr, sa.dh, sa.spec = ni, ike.random(32), dh, chosen.spec
    sa.next_mid, sa.expect_mid, sa.last_recv = 0, 1, now
    nat = _nat_detect(p, hdr.spi_i, 0, local, remote)
    if nat is not None:
        sa.nat_local, sa.nat_remote = nat
    _set_keys(ike, sa, shared)
    payloads: Inner = [
        (Payload.SA, m.encode_sa([chosen.spec.to_proposal(chosen.num)])),
        (Payload.KE, m.encode_ke(group, dh.public)),
        (Payload.NONCE, sa.nr),
    ]
    if nat is not None:
        payloads += _nat_notifies(ike, sa, sa.spi_r, local, remote)
    sa.init_request = data
    sa.init_response = m.encode_message(sa.spi_i, sa.spi_r, Exchange.IKE_SA_INIT, Flag.RESPONSE, 0, payloads)
    ike.sas[sa.spi_r] = sa
    ike.by_init[(remote[0], remote[1], sa.spi_i)] = sa
    ike.send(sa, sa.init_response)
    if entry.sa is None or entry.sa.state is State.DEAD:
        entry.sa = sa
        entry.reason = None
        ike.emit_status(entry)


def _set_keys(ike: Ike, sa: IkeSa, shared: bytes) -> None:
    assert sa.spec is not None
    keys = derive_ike_keys(sa.spec, sa.ni, sa.nr, shared, sa.spi_i, sa.spi_r)
    sa.keys = keys
    ei = SkCipher(sa.spec, keys.sk_ei, keys.sk_ai)
    er = SkCipher(sa.spec, keys.sk_er, keys.sk_ar)
    sa.out, sa.inn = (ei, er) if sa.initiator else (er, ei)
    if ike.log_keys_for_test:
        integ = sa.spec.integ[0] if sa.spec.integ else None
        encr = name(Spec(Protocol.IKE, encr=sa.spec.encr[:1]))
        ike.emit(
            KeysForTest(
                sa.cfg.name,
                sa.spi_i,
                sa.spi_r,
                encr,
                INTEG_DIGEST.get(int(integ)) if integ else None,
                keys.sk_ei,
                keys.sk_er,
                keys.sk_ai,
                keys.sk_ar,
            )
        )


def on_init_response(
    ike: Ike, sa: IkeSa, hdr: m.Header, data: bytes, p: Payloads, local: Addr, remote: Addr, now: float
) -> None:
    """Initiator: IKE_SA_INIT response: COOKIE, INVALID_KE_PAYLOAD, errors, or the SA (§1.2, §1.3, §2.6)."""
    entry = ike.entry_of(sa)
    assert sa.dh is not None
    if entry is None:
        ike.forget(sa, "peer removed")
        return
    cookie = p.notify(Notify.COOKIE)
    if cookie is not None:
        if sa.cookie_tries >= MAX_COOKIE_RETRIES or not 1 <= len(cookie.data) <= 64:
            fail(ike, sa, "COOKIE: the responder kept asking for a cookie")
            return
        sa.cookie_tries += 1
        sa.cookie = cookie.data
        send_init(ike, sa, now)
        return
    err = p.error()
    if err is not None:
        if err.ntype == Notify.INVALID_KE_PAYLOAD and len(err.data) == 2:
            group = struct.unpack("!H", err.data)[0]
            ours = [d for s in entry.ike for d in s.dh]
            if group in ours and group != sa.dh.group and sa.ke_tries < MAX_KE_RETRIES:
                sa.ke_tries += 1
                sa.dh = DhKey(group)
                send_init(ike, sa, now)
                return
            fail(
                ike,
                sa,
                f"INVALID_KE_PAYLOAD: the responder wants {group_name(group)}; retry exhausted"
                f" (ours: {', '.join(name(s) for s in entry.ike)})",
            )
            return
        if err.ntype == Notify.NO_PROPOSAL_CHOSEN:
            fail(
                ike,
                sa,
                f"NO_PROPOSAL_CHOSEN (ours: {', '.join(name(s) for s in entry.ike)}; theirs: unknown)",
            )
            return
        fail(ike, sa, notify_name(err.ntype))
        return
    sa_body, ke_body, nonce_body = p.first(Payload.SA), p.first(Payload.KE), p.first(Payload.NONCE)
    if sa_body is None or ke_body is None or nonce_body is None or hdr.spi_r == 0:
        ike.drops["missing_payload"] += 1
        return
    proposals = m.decode_sa(sa_body)
    group, ke_data = m.decode_ke(ke_body)
    spec = accepted(proposals, entry.ike, Protocol.IKE)
    if spec is None or group != sa.dh.group or spec.dh[0] != group:
        fail(ike, sa, f"NO_PROPOSAL_CHOSEN (the responder chose {describe(proposals)}, not one of ours)")
        return
    sa.nr = m.decode_nonce(nonce_body)
    shared = sa.dh.shared(ke_data)
    sa.spi_r, sa.spec, sa.init_response = hdr.spi_r, spec, data
    _set_keys(ike, sa, shared)
    nat = _nat_detect(p, sa.spi_i, sa.spi_r, local, remote)
    if nat is not None:
        sa.nat_local, sa.nat_remote = nat
    if (nat is not None and any(nat)) or sa.cfg.encap_always:  # §2.23: move to 4500
        sa.local, sa.remote = (sa.local[0], NAT_T_PORT), (sa.remote[0], NAT_T_PORT)
    sa.pending = None
    sa.state = State.AUTH_SENT
    sa.child_spi = ike.new_child_spi()
    id_type, id_data = identity(sa.cfg.local_id, sa.cfg.local_addr)
    idi = m.encode_id(id_type, id_data)
    assert sa.keys is not None
    auth = psk_auth(
        spec.prf[0], sa.cfg.psk, signed_octets(spec.prf[0], sa.init_request, sa.nr, sa.keys.sk_pi, idi)
    )
    inner: Inner = [(Payload.IDI, idi)]
    if not entry.contacted:  # §2.4: the first IKE SA with this peer since we started
        inner.append((Payload.NOTIFY, m.encode_notify(Notify.INITIAL_CONTACT)))
    if sa.cfg.remote_id is not None:
        inner.append((Payload.IDR, m.encode_id(*identity(sa.cfg.remote_id, sa.cfg.remote_addr))))
    inner.append((Payload.AUTH, m.encode_auth(AuthMethod.SHARED_KEY_MIC, auth)))
    spi = struct.pack("!I", sa.child_spi)
    inner.append((Payload.SA, m.encode_sa([s.to_proposal(i + 1, spi) for i, s in enumerate(entry.esp)])))
    lnet = net_of(sa.cfg.local_nets[0] if sa.cfg.local_nets else None, sa.cfg.local_addr)
    rnet = net_of(sa.cfg.remote_nets[0] if sa.cfg.remote_nets else None, sa.cfg.remote_addr)
    inner.append((Payload.TSI, m.encode_ts([ts_of(lnet)])))
    inner.append((Payload.TSR, m.encode_ts([ts_of(rnet)])))
    send_request(ike, sa, "auth", Exchange.IKE_AUTH, inner, now)
