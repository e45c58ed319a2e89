"""The ID (RFC 7296 §3.5) and AUTH (§3.8) payload bodies, one type octet and three reserved before the
data, and a peer's IKE and ESP proposal lists: what each reads, writes and refuses."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ipsec_tunnel.ike import message as m
from ipsec_tunnel.ike.config import PeerConfig, esp_specs, ike_specs
from ipsec_tunnel.ike.constants import AuthMethod, IdType, Protocol
from ipsec_tunnel.ike.proposals import ProposalError


def test_id_and_auth_round_trip() -> None:
    assert m.encode_id(IdType.FQDN, b"gw.example") == bytes([IdType.FQDN, 0, 0, 0]) + b"gw.example"
    assert m.decode_id(m.encode_id(IdType.FQDN, b"gw.example")) == (IdType.FQDN, b"gw.example")
    body = m.encode_auth(AuthMethod.SHARED_KEY_MIC, b"\x01" * 32)
    assert body[:4] == bytes([AuthMethod.SHARED_KEY_MIC, 0, 0, 0])
    assert m.decode_auth(body) == (AuthMethod.SHARED_KEY_MIC, b"\x01" * 32)


@pytest.mark.parametrize(("decode", "reason"), [(m.decode_id, "id"), (m.decode_auth, "auth")])
def test_short_bodies_are_malformed_with_their_reason(
    decode: Callable[[bytes], tuple[int, bytes]], reason: str
) -> None:
    with pytest.raises(m.Malformed) as caught:
        decode(bytes(4))
    assert caught.value.args == (reason,)


def _peer(proposals: tuple[str, ...], esp_proposals: tuple[str, ...]) -> PeerConfig:
    return PeerConfig(
        name="p", local_addr="192.0.2.1", remote_addr="192.0.2.2", psk=b"k",
        proposals=proposals, esp_proposals=esp_proposals,
    )  # fmt: skip


def test_proposal_lists_parse_per_protocol_and_none_is_refused() -> None:
    cfg = _peer(("aes128gcm16-prfsha256-x25519,aes256-sha256-modp2048",), ("aes128gcm16", "aes256-sha256"))
    assert len(ike_specs(cfg)) == 2 and len(esp_specs(cfg)) == 2
    assert all(s.protocol == Protocol.IKE for s in ike_specs(cfg))
    assert all(s.protocol == Protocol.ESP for s in esp_specs(cfg))
    with pytest.raises(ProposalError, match=r"^'': no IKE proposal$"):
        ike_specs(_peer((), ("aes128gcm16",)))
    with pytest.raises(ProposalError, match=r"^'': no ESP proposal$"):
        esp_specs(_peer(("default",), ()))
