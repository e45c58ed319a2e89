"""The IKEv2 exchanges as handlers of one state table (RFC 7296 §1.2-1.4, §2.1-2.23).

`TABLE[(state, exchange, is_response)]` names the handler for a message that arrives on an IKE SA in
`state`; anything not in the table is a counted drop. IKE_SA_INIT requests (no SA yet) go to
`on_init_request`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import message as m
from .config import describe_id, identity
from .constants import (
    HEADER_LEN,
    IKE_PORT,
    NAT_T_PORT,
    AuthMethod,
    DhGroup,
    Encr,
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
    child_keys,
    derive_ike_keys,
    encr_key_len,
    equal,
    integ_key_len,
    psk_auth,
    signed_octets,
)
from .events import ChildUp, KeysForTest
from .proposals import Chosen, Spec, describe, from_proposal, match, name, select
from .sa import (
    HALF_OPEN_TIMEOUT,
    MAX_COOKIE_RETRIES,
    MAX_HALF_OPEN,
    MAX_KE_RETRIES,
    RETRANSMIT_BASE,
    RETRANSMIT_TRIES,
    Child,
    IkeSa,
    Pending,
    State,
    narrow,
    nat_hash,
    net_of,
    ts_net,
    ts_of,
)

if TYPE_CHECKING:
    from .machine import Ike, PeerEntry

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
    sa.cached = (mid, data)
    sa.expect_mid = mid + 1
    ike.send(sa, data)


def send_delete_ike(ike: Ike, sa: IkeSa, now: float) -> None:
    """INFORMATIONAL with Delete(IKE) (§1.4.1); the CHILD SA goes at once, the IKE SA on the answer."""
    if sa.child is not None:
        c = sa.child
        sa.child = None
        ike.child_spis.discard(c.spi_in)
        from .events import ChildDown

        ike.emit(ChildDown(sa.cfg.name, c.child_id, c.spi_in, c.spi_out, "terminated"))
    sa.state = State.DELETING
    if sa.pending is not None:  # window 1: the delete goes after the outstanding request is given up
        sa.next_mid = sa.pending.mid + 1
    send_request(ike, sa, "delete_ike", Exchange.INFORMATIONAL, [(Payload.DELETE, m.encode_delete(1))], now)


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
        if sa.cached is not None and hdr.mid == sa.cached[0]:
            ike.drops["retransmitted_request"] += 1
            ike.send(sa, sa.cached[1])  # §2.1: the same response again
        else:
            ike.drops["message_id"] += 1
        return
    handler = TABLE.get((sa.state, hdr.exchange, hdr.is_response))
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


# ---------------------------------------------------------------------------------------------------------
# IKE_SA_INIT (§1.2)


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
    from .events import Send

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
    old = ike.half_open.get((remote[0], remote[1], hdr.spi_i))
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
    if len(ike.half_open) >= MAX_HALF_OPEN:
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
    ike.half_open[(remote[0], remote[1], sa.spi_i)] = sa
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


def _fail(ike: Ike, sa: IkeSa, reason: str) -> None:
    entry = ike.entry_of(sa)
    ike.forget(sa, reason, down_reason=reason)
    if entry is not None and entry.sa is None:
        entry.reason = reason
        ike.emit_status(entry)


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
            _fail(ike, sa, "COOKIE: the responder kept asking for a cookie")
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
            _fail(
                ike,
                sa,
                f"INVALID_KE_PAYLOAD: the responder wants {_group(group)}; retry exhausted"
                f" (ours: {', '.join(name(s) for s in entry.ike)})",
            )
            return
        if err.ntype == Notify.NO_PROPOSAL_CHOSEN:
            _fail(
                ike,
                sa,
                f"NO_PROPOSAL_CHOSEN (ours: {', '.join(name(s) for s in entry.ike)}; theirs: unknown)",
            )
            return
        _fail(ike, sa, notify_name(err.ntype))
        return
    sa_body, ke_body, nonce_body = p.first(Payload.SA), p.first(Payload.KE), p.first(Payload.NONCE)
    if sa_body is None or ke_body is None or nonce_body is None or hdr.spi_r == 0:
        ike.drops["missing_payload"] += 1
        return
    proposals = m.decode_sa(sa_body)
    group, ke_data = m.decode_ke(ke_body)
    spec = _accepted(proposals, entry.ike, Protocol.IKE)
    if spec is None or group != sa.dh.group or spec.dh[0] != group:
        _fail(ike, sa, f"NO_PROPOSAL_CHOSEN (the responder chose {describe(proposals)}, not one of ours)")
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


def _group(group: int) -> str:
    try:
        return name(Spec(Protocol.IKE, dh=(DhGroup(group),)))
    except ValueError:
        return f"dh{group}"


def _accepted(proposals: list[m.Proposal], ours: list[Spec], protocol: int) -> Spec | None:
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


# ---------------------------------------------------------------------------------------------------------
# IKE_AUTH (§1.2, §2.15) with the first CHILD SA


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
    ike.half_open.pop((sa.remote[0], sa.remote[1], sa.spi_i), None)
    for k, v in list(ike.half_open.items()):
        if v is sa:
            del ike.half_open[k]
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


def on_auth_request(
    ike: Ike, sa: IkeSa, hdr: m.Header, data: bytes, p: Payloads, local: Addr, remote: Addr, now: float
) -> None:
    """Responder: IKE_AUTH request; checks IDi and AUTH, then negotiates the CHILD SA (§1.2, §2.9)."""
    assert sa.keys is not None and sa.spec is not None
    entry = ike.entry_of(sa)
    idi, auth_body = p.first(Payload.IDI), p.first(Payload.AUTH)
    if entry is None or idi is None or auth_body is None:
        ike.drops["missing_payload"] += 1
        return
    sa.local, sa.remote = local, remote  # the initiator may have moved to 4500 (§2.23)
    prf_alg = sa.spec.prf[0]
    id_type, id_data = m.decode_id(idi)
    sa.peer_id = (id_type, id_data)
    method, auth = m.decode_auth(auth_body)
    expected = psk_auth(
        prf_alg, sa.cfg.psk, signed_octets(prf_alg, sa.init_request, sa.nr, sa.keys.sk_pi, idi)
    )
    id_ok = sa.cfg.remote_id is None or identity(sa.cfg.remote_id, sa.cfg.remote_addr) == (id_type, id_data)
    if method != AuthMethod.SHARED_KEY_MIC or not equal(auth, expected) or not id_ok:
        respond(
            ike, sa, hdr.exchange, hdr.mid, [(Payload.NOTIFY, m.encode_notify(Notify.AUTHENTICATION_FAILED))]
        )
        why = "" if id_ok else f" (identity {describe_id(id_type, id_data)} is not {sa.cfg.remote_id})"
        _fail(ike, sa, "AUTHENTICATION_FAILED" + why)
        return
    my_type, my_data = identity(sa.cfg.local_id, sa.cfg.local_addr)
    idr = m.encode_id(my_type, my_data)
    my_auth = psk_auth(
        prf_alg, sa.cfg.psk, signed_octets(prf_alg, sa.init_response, sa.ni, sa.keys.sk_pr, idr)
    )
    inner: Inner = [(Payload.IDR, idr), (Payload.AUTH, m.encode_auth(AuthMethod.SHARED_KEY_MIC, my_auth))]
    initial_contact = p.notify(Notify.INITIAL_CONTACT) is not None
    failure = _child_responder(ike, sa, entry, p, inner)
    respond(ike, sa, hdr.exchange, hdr.mid, inner)
    _established(ike, sa, initial_contact, now)
    if failure is not None:  # the IKE SA without its CHILD SA is of no use here: delete it
        entry.reason = failure
        if entry.sa is sa:
            entry.sa = None
        send_delete_ike(ike, sa, now)
        ike.emit_status(entry)


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
        _fail(ike, sa, notify_name(err.ntype) if err is not None else "IKE_AUTH response without IDr/AUTH")
        return
    prf_alg = sa.spec.prf[0]
    id_type, id_data = m.decode_id(idr)
    sa.peer_id = (id_type, id_data)
    method, auth = m.decode_auth(auth_body)
    expected = psk_auth(
        prf_alg, sa.cfg.psk, signed_octets(prf_alg, sa.init_response, sa.ni, sa.keys.sk_pr, idr)
    )
    id_ok = sa.cfg.remote_id is None or identity(sa.cfg.remote_id, sa.cfg.remote_addr) == (id_type, id_data)
    if method != AuthMethod.SHARED_KEY_MIC or not equal(auth, expected) or not id_ok:
        why = "" if id_ok else f" (identity {describe_id(id_type, id_data)} is not {sa.cfg.remote_id})"
        reason = "AUTHENTICATION_FAILED (the responder's AUTH did not verify)" + why
        sa.state = State.ESTABLISHED  # authenticated on their side: tell them (§2.21.2)
        entry.sa = None
        entry.reason = reason
        send_delete_ike(ike, sa, now)
        ike.emit_status(entry)
        return
    initial_contact = p.notify(Notify.INITIAL_CONTACT) is not None
    failure = _child_initiator(ike, sa, entry, p, err)
    _established(ike, sa, initial_contact, now)
    if failure is not None:
        entry.reason = failure
        entry.sa = None
        send_delete_ike(ike, sa, now)
        ike.emit_status(entry)


def _child_initiator(
    ike: Ike, sa: IkeSa, entry: PeerEntry, p: Payloads, err: m.NotifyPayload | None
) -> str | None:
    if err is not None:
        ike.child_spis.discard(sa.child_spi)
        return notify_name(err.ntype)
    sa_body, tsi_body, tsr_body = p.first(Payload.SA), p.first(Payload.TSI), p.first(Payload.TSR)
    if sa_body is None or tsi_body is None or tsr_body is None:
        return "IKE_AUTH response without a CHILD SA"
    esp = _accepted(m.decode_sa(sa_body), entry.esp, Protocol.ESP)
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


# ---------------------------------------------------------------------------------------------------------
# INFORMATIONAL (§1.4)


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
            from .events import ChildDown

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
            _fail(ike, sa, "half-open IKE SA expired (no IKE_AUTH)")
            continue
        pend = sa.pending
        if pend is not None and now >= pend.deadline:
            if pend.sends >= RETRANSMIT_TRIES:
                reason = f"no answer from {sa.remote[0]}:{sa.remote[1]} after {pend.sends} tries"
                if pend.kind == "delete_ike":
                    ike.forget(sa, "terminated")
                else:
                    _fail(ike, sa, reason)
                continue
            pend.deadline = now + RETRANSMIT_BASE * 2**pend.sends
            pend.sends += 1
            ike.send(sa, pend.data)
            continue
        if sa.established and sa.cfg.dpd > 0 and sa.pending is None and now >= sa.last_recv + sa.cfg.dpd:
            send_request(ike, sa, "dpd", Exchange.INFORMATIONAL, [], now)
