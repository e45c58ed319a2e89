"""The IKE state machine as a table of exchanges: two `Ike` instances talking in memory (pair.py)."""

from __future__ import annotations

import pytest

from ipsec_tunnel.ike import ChildUp, Ike, KeysForTest, PeerStatus, Send
from ipsec_tunnel.ike import message as m
from ipsec_tunnel.ike.constants import Exchange, Flag, Notify, Payload

from .pair import PSK, Pair

PROPOSALS = [
    ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
    ("aes256-sha256-modp2048", "aes256-sha256"),
    ("aes256gcm16-prfsha384-ecp256", "aes256gcm16"),
    ("default", "default"),
]


def established(p: Pair) -> tuple[ChildUp, ChildUp]:
    p.a.initiate("tob", p.now)
    p.pump()
    assert p.status("a").state == "established", p.status("a")
    assert p.status("b").state == "established", p.status("b")
    (ua,), (ub,) = p.up("a"), p.up("b")
    return ua, ub


def check_pair(ua: ChildUp, ub: ChildUp) -> None:
    assert ua.spi_in == ub.spi_out and ua.spi_out == ub.spi_in
    assert ua.key_in == ub.key_out and ua.key_out == ub.key_in and ua.key_in != ua.key_out
    assert ua.auth_key_in == ub.auth_key_out and ua.auth_key_out == ub.auth_key_in
    assert (ua.cipher, ua.icv_bits, ua.digest) == (ub.cipher, ub.icv_bits, ub.digest)
    assert ua.local_ts == ub.remote_ts and ua.remote_ts == ub.local_ts
    assert 255 < ua.spi_in < 2**32 and 255 < ua.spi_out < 2**32


@pytest.mark.parametrize(("ike", "esp"), PROPOSALS)
def test_establish(ike: str, esp: str) -> None:
    p = Pair({"proposals": (ike,), "esp_proposals": (esp,)}, {"proposals": (ike,), "esp_proposals": (esp,)})
    ua, ub = established(p)
    check_pair(ua, ub)
    assert (ua.local_ts, ua.remote_ts) == ("10.1.0.0/16", "10.2.0.0/16")
    assert ua.encap is None and not ua.nat_local and not ua.nat_remote
    if "gcm" in esp:
        assert ua.cipher == "aes-gcm" and ua.icv_bits == 128 and ua.digest is None and ua.auth_key_in is None
        assert len(ua.key_in) == int(esp[3:6]) // 8 + 4  # key and 4-byte salt (RFC 4106 §8.1)
    else:
        assert ua.cipher == "aes-cbc" and ua.digest == "sha256" and ua.auth_key_in is not None
        assert len(ua.auth_key_in) == 32
    sa, sb = p.status("a"), p.status("b")
    assert (sa.ike_spi_i, sa.ike_spi_r) == (sb.ike_spi_i, sb.ike_spi_r) and sa.proposal == sb.proposal
    assert sa.children == (ua.child_id,) and sa.remote == ("198.51.100.2", 500)
    assert not p.a.drops and not p.b.drops
    # the keys logged for tshark are the same on both sides
    (ka,), (kb,) = p.of("a", KeysForTest), p.of("b", KeysForTest)
    assert (ka.sk_ei, ka.sk_er, ka.sk_ai, ka.sk_ar) == (kb.sk_ei, kb.sk_er, kb.sk_ai, kb.sk_ar)


def test_no_keys_for_test_unless_enabled_and_no_psk_anywhere() -> None:
    p = Pair()
    p.a = Ike()
    p.a.add_peer(p.b.peers_by_name["toa"].cfg.__class__(**{**p.b.peers_by_name["toa"].cfg.__dict__,
        "name": "tob", "local_addr": "198.51.100.1", "remote_addr": "198.51.100.2",
        "local_nets": ("10.1.0.0/16",), "remote_nets": ("10.2.0.0/16",)}))  # fmt: skip
    established(p)
    assert not p.of("a", KeysForTest) and p.of("b", KeysForTest)
    for who in "ab":
        for ev in p.events[who]:
            assert PSK.decode() not in repr(ev) and PSK not in getattr(ev, "data", b"")
            if isinstance(ev, ChildUp):
                assert ev.key_in.hex() not in repr(ev)
    assert PSK.decode() not in repr(p.a.peers_by_name["tob"].cfg)


def test_invalid_ke_retry() -> None:
    """§1.3: the responder asks for its group; the initiator retries with it and gets in."""
    p = Pair(
        {"proposals": ("aes128gcm16-prfsha256-x25519-ecp256",)},
        {"proposals": ("aes128gcm16-prfsha256-ecp256",)},
    )
    established(p)
    inits = [s for who, s in p.wire if who == "a" and m.parse_header(s.data).exchange == Exchange.IKE_SA_INIT]
    assert len(inits) == 2
    groups = [
        m.decode_ke(m.parse_chain(s.data, m.parse_header(s.data).next_payload, 28).payloads[1].body)[0]
        for s in inits
    ]
    assert groups == [31, 19]
    assert p.b.drops["invalid_ke_sent"] == 1
    assert p.status("a").proposal == "aes128gcm16-prfsha256-ecp256"


def _stub_responder(p: Pair, reply: bytes | None) -> list[bytes]:
    """a's datagrams go nowhere; each IKE_SA_INIT request is answered with `reply` (SPIi patched in)."""
    seen: list[bytes] = []

    def filt(who: str, s: Send) -> Send | None:
        if who == "a":
            seen.append(s.data)
            if reply is not None:
                hdr = m.parse_header(s.data)
                p.a.datagram_received(hdr.spi_i.to_bytes(8) + reply[8:], s.local, s.remote, p.now)
            return None
        return s

    p.filter = filt
    return seen


def _init_reply(*notes: tuple[int, bytes]) -> bytes:
    return m.encode_message(
        0,
        0,
        Exchange.IKE_SA_INIT,
        Flag.RESPONSE,
        0,
        [(Payload.NOTIFY, m.encode_notify(t, d)) for t, d in notes],
    )


def test_invalid_ke_retry_exhausted() -> None:
    p = Pair({"proposals": ("aes128gcm16-prfsha256-x25519-ecp256",)})
    seen = _stub_responder(p, _init_reply((Notify.INVALID_KE_PAYLOAD, b"\x00\x13")))
    p.a.initiate("tob", 0.0)
    for _ in range(5):
        p.pump()
    st = p.status("a")
    assert (
        st.state == "down"
        and "INVALID_KE_PAYLOAD" in (st.reason or "")
        and "retry exhausted" in (st.reason or "")
    )
    assert len(seen) == 2  # the first try, one retry with ecp256; then ecp256 again is refused
    assert not p.a.sas


def test_cookie() -> None:
    """§2.6: the initiator repeats IKE_SA_INIT with the responder's COOKIE first."""
    p = Pair()
    state = {"n": 0}

    def filt(who: str, s: Send) -> Send | None:
        if who == "a" and state["n"] == 0:
            state["n"] = 1
            hdr = m.parse_header(s.data)
            reply = _init_reply((Notify.COOKIE, b"cookie-1234567890"))
            p.a.datagram_received(hdr.spi_i.to_bytes(8) + reply[8:], s.local, s.remote, p.now)
            return None
        return s

    p.filter = filt
    established(p)
    inits = [
        s.data for who, s in p.wire if who == "a" and m.parse_header(s.data).exchange == Exchange.IKE_SA_INIT
    ]
    assert len(inits) == 2
    first = m.parse_chain(inits[1], m.parse_header(inits[1]).next_payload, 28).payloads[0]
    assert first.ptype == Payload.NOTIFY and m.decode_notify(first.body).data == b"cookie-1234567890"
    assert m.decode_notify(first.body).ntype == Notify.COOKIE


def test_wrong_psk() -> None:
    p = Pair(b_kw={"psk": b"another-psk"})
    p.a.initiate("tob", 0.0)
    p.pump()
    for who in "ab":
        st = p.status(who)
        assert st.state == "down" and (st.reason or "").startswith("AUTHENTICATION_FAILED"), st
        assert not p.ike(who).sas and not p.up(who)


def test_no_proposal_chosen() -> None:
    p = Pair({"proposals": ("aes128gcm16-prfsha256-x25519",)}, {"proposals": ("aes256-sha256-modp2048",)})
    p.a.initiate("tob", 0.0)
    p.pump()
    ra, rb = p.status("a").reason or "", p.status("b").reason or ""
    assert ra.startswith("NO_PROPOSAL_CHOSEN (ours: aes128gcm16-prfsha256-x25519")
    assert (
        rb
        == "NO_PROPOSAL_CHOSEN (ours: aes256-sha256-prfsha256-modp2048; theirs: aes128gcm16-prfsha256-x25519)"
    )
    assert p.status("a").state == "down" and not p.a.sas and not p.b.sas


def test_esp_no_proposal_chosen() -> None:
    p = Pair({"esp_proposals": ("aes128gcm16",)}, {"esp_proposals": ("aes256-sha256",)})
    p.a.initiate("tob", 0.0)
    p.pump()
    assert (p.status("a").reason or "").startswith("NO_PROPOSAL_CHOSEN")
    assert (p.status("b").reason or "").startswith(
        "NO_PROPOSAL_CHOSEN (ESP ours: aes256-sha256; theirs: aes128gcm16"
    )
    assert not p.up("a") and not p.up("b") and not p.a.sas and not p.b.sas


def test_ts_narrowing() -> None:
    p = Pair(b_kw={"local_nets": ("10.2.1.0/24",)})
    ua, ub = established(p)
    assert (ua.local_ts, ua.remote_ts) == ("10.1.0.0/16", "10.2.1.0/24")
    assert (ub.local_ts, ub.remote_ts) == ("10.2.1.0/24", "10.1.0.0/16")


def test_ts_unacceptable() -> None:
    p = Pair(b_kw={"local_nets": ("10.9.0.0/16",)})
    p.a.initiate("tob", 0.0)
    p.pump()
    for who in "ab":  # never shown as established on the way down
        assert [s.state for s in p.of(who, PeerStatus)] == ["connecting", "down"], p.of(who, PeerStatus)
    assert (p.status("a").reason or "").startswith("TS_UNACCEPTABLE")
    assert (p.status("b").reason or "").startswith("TS_UNACCEPTABLE")
    assert not p.up("a") and not p.up("b") and not p.a.sas and not p.b.sas


def test_retransmission_after_loss() -> None:
    p = Pair()
    dropped: list[bytes] = []

    def filt(who: str, s: Send) -> Send | None:
        if who == "a" and not dropped:
            dropped.append(s.data)
            return None
        return s

    p.filter = filt
    p.a.initiate("tob", 0.0)
    p.pump()
    assert p.status("a").state == "connecting" and p.a.next_timer() == 1.0
    p.advance(1.0)
    assert p.status("a").state == "established"
    sent = [s.data for who, s in p.wire if who == "a"]
    assert sent[0] == sent[1] == dropped[0]
    assert (p.a.retransmits, p.b.retransmits) == (1, 0)


def test_no_answer() -> None:
    p = Pair()
    p.filter = lambda who, s: None if who == "a" else s
    p.a.initiate("tob", 0.0)
    p.pump()
    p.advance(30.9)
    assert p.status("a").state == "connecting"
    p.advance(0.2)
    st = p.status("a")
    assert st.state == "down" and st.reason == "no answer from 198.51.100.2:500 after 5 tries"
    assert len(p.wire) == 5 and len({s.data for _, s in p.wire}) == 1 and p.a.retransmits == 4
    assert p.a.next_timer() is None and not p.a.sas


def test_retransmitted_requests_answered_from_cache() -> None:
    p = Pair()
    lost: list[bytes] = []

    def filt(who: str, s: Send) -> Send | None:  # b's first IKE_SA_INIT response is lost
        if who == "b" and not lost:
            lost.append(s.data)
            return None
        return s

    p.filter = filt
    p.a.initiate("tob", 0.0)
    p.pump()
    p.advance(1.0)
    assert p.status("a").state == "established"
    b_sent = [s.data for who, s in p.wire if who == "b"]
    assert b_sent[0] == b_sent[1]  # the same IKE_SA_INIT response again
    assert p.b.drops["retransmitted_request"] == 1
    # a repeated IKE_AUTH request: the cached response, byte for byte, and no second CHILD SA
    auth_req = next(
        s for who, s in p.wire if who == "a" and m.parse_header(s.data).exchange == Exchange.IKE_AUTH
    )
    auth_resp = next(
        s for who, s in p.wire if who == "b" and m.parse_header(s.data).exchange == Exchange.IKE_AUTH
    )
    p.b.datagram_received(auth_req.data, auth_req.remote, auth_req.local, p.now)
    (again,) = [e for e in p.b.events() if isinstance(e, Send)]
    assert again.data == auth_resp.data and p.b.drops["retransmitted_request"] == 2
    assert len(p.up("b")) == 1
    # the same message ID with other bytes is not a retransmission: no answer
    forged = auth_req.data[:-1] + bytes([auth_req.data[-1] ^ 1])
    p.b.datagram_received(forged, auth_req.remote, auth_req.local, p.now)
    assert not [e for e in p.b.events() if isinstance(e, Send)] and p.b.drops["message_id"] == 1
    # a late copy of the IKE_SA_INIT request after establishment: the same response, no new SA
    init_req = next(s for who, s in p.wire if who == "a")
    p.b.datagram_received(init_req.data, init_req.remote, init_req.local, p.now)
    (again,) = [e for e in p.b.events() if isinstance(e, Send)]
    assert again.data == b_sent[0] and len(p.b.sas) == 1 and p.b.drops["retransmitted_request"] == 3


def test_delete() -> None:
    p = Pair()
    ua, ub = established(p)
    p.a.terminate("tob", p.now)
    p.pump()
    (da,), (db,) = p.down("a"), p.down("b")
    assert (da.spi_in, da.child_id) == (ua.spi_in, ua.child_id) and db.spi_in == ub.spi_in
    assert db.reason == "deleted by peer"
    assert p.status("a").state == p.status("b").state == "down"
    assert p.status("b").reason == "deleted by peer"
    assert not p.a.sas and not p.b.sas


def test_dpd_answered_then_no_answer() -> None:
    p = Pair({"dpd": 10.0})
    established(p)
    p.advance(10.5)
    infos = [who for who, s in p.wire if m.parse_header(s.data).exchange == Exchange.INFORMATIONAL]
    assert infos == ["a", "b"]  # an empty request, answered
    assert p.status("a").state == "established"
    p.filter = lambda who, s: None if who == "b" else s
    p.advance(60)
    st = p.status("a")
    assert st.state == "down" and (st.reason or "").startswith("no answer from 198.51.100.2:500")
    assert len(p.down("a")) == 1


def test_half_open_expiry() -> None:
    p = Pair()
    p.filter = lambda who, s: s if m.parse_header(s.data).exchange == Exchange.IKE_SA_INIT else None
    p.a.initiate("tob", 0.0)
    p.pump()
    assert len(p.b.sas) == 1
    p.advance(31)
    assert p.b.drops["half_open_expired"] == 1 and not p.b.sas


def test_initial_contact_clears_stale_sas() -> None:
    p = Pair()
    established(p)
    old = p.a
    p.a = Ike()  # a restarts and has forgotten everything
    p.a.add_peer(old.peers_by_name["tob"].cfg)
    established_again = p.a
    established_again.initiate("tob", p.now)
    p.pump()
    assert p.status("a").state == "established"
    assert len(p.b.sas) == 1
    (gone,) = p.down("b")
    assert gone.reason == "replaced (INITIAL_CONTACT)"
    assert p.status("b").state == "established"


def test_nat_detected_moves_to_4500() -> None:
    """§2.23: a is behind a NAT (203.0.113.5); IKE_AUTH goes to 4500 and the CHILD SA is UDP-encapsulated."""
    p = Pair(b_kw={"remote_addr": "%any"})
    nat_ip = "203.0.113.5"

    def deliver(who: str, s: Send) -> Send | None:
        if who == "a":
            return Send((nat_ip, 40000 + s.local[1]), s.remote, s.data)
        return Send(s.local, ("198.51.100.1", s.remote[1] - 40000), s.data)

    p.filter = deliver
    ua, ub = established(p)
    assert ua.nat_local and not ua.nat_remote and ub.nat_remote and not ub.nat_local
    assert ua.encap == (4500, 4500) and ub.encap == (4500, 44500) and ub.remote_addr == nat_ip
    auth = [s for who, s in p.wire if who == "a" and m.parse_header(s.data).exchange == Exchange.IKE_AUTH]
    assert auth[0].local[1] == 4500 and auth[0].remote[1] == 4500


def test_encap_always() -> None:
    p = Pair({"encap_always": True})
    ua, ub = established(p)
    assert ua.encap == (4500, 4500) and ub.encap == (4500, 4500)
    assert ub.nat_remote  # the faked NAT-D hash: b sees a NAT and encapsulates too
    auth = [s for who, s in p.wire if m.parse_header(s.data).exchange == Exchange.IKE_AUTH]
    assert [(s.local[1], s.remote[1]) for s in auth] == [(4500, 4500), (4500, 4500)]


def test_ipv6() -> None:
    p = Pair(addrs=("2001:db8::1", "2001:db8::2"), nets=("fd00:1::/64", "fd00:2::/64"))
    ua, ub = established(p)
    check_pair(ua, ub)
    assert (ua.local_addr, ua.remote_addr, ua.local_ts, ua.remote_ts) == (
        "2001:db8::1", "2001:db8::2", "fd00:1::/64", "fd00:2::/64"
    )  # fmt: skip


def test_garbage_into_an_established_sa_is_a_counted_drop() -> None:
    p = Pair()
    established(p)
    st = p.status("b")
    assert st.ike_spi_i is not None and st.ike_spi_r is not None
    bad = m.encode_header(
        st.ike_spi_i, st.ike_spi_r, Payload.SK, Exchange.INFORMATIONAL, Flag.INITIATOR, 2, 28 + 40
    )
    bad += bytes([0, 0, 0, 40]) + bytes(36)
    p.b.datagram_received(bad, ("198.51.100.2", 500), ("198.51.100.1", 500), p.now)
    assert p.b.drops["icv"] == 1 and not [e for e in p.b.events() if not isinstance(e, PeerStatus)]
    assert p.status("b").state == "established"


def test_create_child_sa_refused_with_no_additional_sas() -> None:
    """Rekeying is part 2: a CREATE_CHILD_SA request is answered (NO_ADDITIONAL_SAS), the SA stays up."""
    from ipsec_tunnel.ike import exchange

    p = Pair()
    established(p)
    (sa,) = p.a.sas.values()
    exchange.send_request(p.a, sa, "rekey", Exchange.CREATE_CHILD_SA, [(Payload.NONCE, b"n" * 32)], p.now)
    (req,) = [e for e in p.a.events() if isinstance(e, Send)]
    p.b.datagram_received(req.data, req.remote, req.local, p.now)
    (resp,) = [e for e in p.b.events() if isinstance(e, Send)]
    hdr = m.parse_header(resp.data)
    assert hdr.is_response and hdr.exchange == Exchange.CREATE_CHILD_SA and hdr.mid == 2
    assert sa.inn is not None
    chain = m.parse_chain(resp.data, hdr.next_payload, 28)
    assert chain.sk is not None
    plain = sa.inn.open(resp.data[: chain.sk_offset + 4], chain.sk.body)
    assert plain is not None
    (note,) = m.parse_chain(plain, chain.sk_next).payloads
    assert m.decode_notify(note.body).ntype == Notify.NO_ADDITIONAL_SAS
    assert p.b.drops == {"create_child_refused": 1} and p.status("b").state == "established"


def test_half_open_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_HALF_OPEN responder SAs waiting for IKE_AUTH, IKE_SA_INIT requests are dropped."""
    from ipsec_tunnel.ike import sa_init

    monkeypatch.setattr(sa_init, "MAX_HALF_OPEN", 2)
    p = Pair()
    inits = []
    for _ in range(3):
        p.a.initiate("tob", 0.0)
        inits += [e for e in p.a.events() if isinstance(e, Send)]
        p.a.terminate("tob", 0.0)
        p.a.events()
    for s in inits:
        p.b.datagram_received(s.data, s.remote, s.local, 0.0)
    assert len(p.b.sas) == 2 and p.b.drops["half_open_limit"] == 1
    p.b.handle_timer(31.0)
    assert not p.b.sas and p.b.drops["half_open_expired"] == 2
