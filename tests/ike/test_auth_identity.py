"""The peer's identity and PSK AUTH check on both sides of IKE_AUTH (RFC 7296 §2.15): what each side
reports when the identity is not the configured remote ID, and that a matching one comes up."""

from __future__ import annotations

from ipsec_tunnel.ike.constants import IdType

from .pair import A, B, Pair


def test_responder_refuses_an_unexpected_initiator_identity() -> None:
    p = Pair(b_kw={"remote_id": "someone@example.org"})
    p.a.initiate("tob", 0.0)
    p.pump()
    reason = p.status("b").reason or ""
    assert reason == f"AUTHENTICATION_FAILED (identity {A} is not someone@example.org)", reason
    assert (p.status("a").reason or "").startswith("AUTHENTICATION_FAILED"), p.status("a")
    assert not p.up("a") and not p.up("b")


def test_initiator_refuses_an_unexpected_responder_identity() -> None:
    p = Pair(a_kw={"remote_id": "someone@example.org"})
    p.a.initiate("tob", 0.0)
    p.pump()
    reason = p.status("a").reason or ""
    assert reason == (
        "AUTHENTICATION_FAILED (the responder's AUTH did not verify)"
        f" (identity {B} is not someone@example.org)"
    ), reason
    assert not p.up("a")


def test_matching_identities_come_up() -> None:
    p = Pair(a_kw={"local_id": "a@example.org", "remote_id": B}, b_kw={"remote_id": "a@example.org"})
    p.a.initiate("tob", 0.0)
    p.pump()
    assert p.up("a") and p.up("b")
    sas = list(p.ike("b").sas.values())
    assert sas and all(sa.peer_id == (IdType.RFC822_ADDR, b"a@example.org") for sa in sas)
