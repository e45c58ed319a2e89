"""ike.proposals and ike.config: strongSwan proposal syntax, selection, configuration checks."""

from __future__ import annotations

import pytest

from ipsec_tunnel.ike import IkeConfigError, PeerConfig
from ipsec_tunnel.ike.config import identity
from ipsec_tunnel.ike.constants import DhGroup, Encr, Esn, IdType, Integ, Prf, Protocol
from ipsec_tunnel.ike.proposals import Chosen, ProposalError, name, parse, parse_one, select


def test_parse_strongswan_syntax() -> None:
    s = parse_one("aes128gcm16-prfsha256-x25519", Protocol.IKE)
    assert (s.encr, s.integ, s.prf, s.dh) == (
        ((Encr.AES_GCM_16, 128),),
        (),
        (Prf.HMAC_SHA2_256,),
        (DhGroup.CURVE25519,),
    )
    s = parse_one("aes256-sha256-modp2048", Protocol.IKE)
    assert s.integ == (Integ.HMAC_SHA2_256_128,) and s.prf == (Prf.HMAC_SHA2_256,)  # PRF from the integrity
    assert name(s) == "aes256-sha256-prfsha256-modp2048"
    s = parse_one("aes256gcm16-prfsha384-ecp256", Protocol.IKE)
    assert s.dh == (DhGroup.ECP_256,) and s.prf == (Prf.HMAC_SHA2_384,)
    esp = parse_one("aes128gcm16", Protocol.ESP)
    assert esp.esn == (Esn.NO,) and esp.aead and not esp.dh
    assert parse_one("aes256-sha256", Protocol.ESP).integ == (Integ.HMAC_SHA2_256_128,)
    assert len(parse("default", Protocol.IKE)) == 2 and len(parse("default", Protocol.ESP)) == 2
    assert parse("default", Protocol.IKE)[0].dh[0] == DhGroup.CURVE25519  # charon 5.9.8's first group


@pytest.mark.parametrize(
    ("text", "proto", "why"),
    [
        ("aes128gcm16-sha256-x25519", Protocol.IKE, "AEAD"),
        ("aes128-prfsha256-x25519", Protocol.IKE, "integrity"),
        ("aes128-sha256", Protocol.IKE, "Diffie-Hellman"),
        ("3des-sha1-modp1024", Protocol.IKE, "unknown"),
        ("aes128gcm16-esn", Protocol.ESP, "ESN"),
        ("aes128-aes128gcm16-sha256", Protocol.ESP, "mixes"),
        ("sha256", Protocol.ESP, "encryption"),
    ],
)
def test_parse_errors(text: str, proto: int, why: str) -> None:
    with pytest.raises(ProposalError, match=why):
        parse_one(text, proto)


def test_select_first_of_theirs_we_support() -> None:
    theirs = [
        parse_one("aes256-sha512-modp3072", Protocol.IKE).to_proposal(1),
        parse_one("aes128gcm16-aes256gcm16-prfsha384-prfsha256-ecp256-x25519", Protocol.IKE).to_proposal(2),
    ]
    ours = [parse_one("aes256gcm16-aes128gcm16-prfsha256-prfsha384-x25519-ecp256", Protocol.IKE)]
    got = select(theirs, ours, DhGroup.ECP_256)
    assert isinstance(got, Chosen) and got.num == 2
    assert name(got.spec) == "aes128gcm16-prfsha384-ecp256"  # their order within the proposal
    assert select(theirs, ours, DhGroup.MODP_3072) == DhGroup.CURVE25519  # INVALID_KE: our preference
    assert select(theirs, [parse_one("aes192-sha256-ecp384", Protocol.IKE)], DhGroup.ECP_256) is None


def test_select_esp_no_esn() -> None:
    ours = parse("default", Protocol.ESP)
    esn_only = parse_one("aes128gcm16", Protocol.ESP).to_proposal(1, b"1234")
    esn_only = esn_only.__class__(
        1, 3, b"1234", (*esn_only.transforms[:-1], esn_only.transforms[-1].__class__(5, 1))
    )
    assert select([esn_only], ours) is None
    got = select([parse_one("aes256-sha384", Protocol.ESP).to_proposal(3, b"abcd")], ours)
    assert isinstance(got, Chosen) and got.spi == b"abcd" and name(got.spec) == "aes256-sha384"


def cfg(**kw: object) -> PeerConfig:
    base: dict[str, object] = {
        "name": "p1",
        "local_addr": "192.0.2.1",
        "remote_addr": "192.0.2.2",
        "psk": b"k",
    }
    base.update(kw)
    return PeerConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"name": "bad name"}, "bad peer name"),
        ({"local_addr": "nope"}, "bad local address"),
        ({"remote_addr": "2001:db8::1"}, "different IP versions"),
        ({"psk": b""}, "empty pre-shared key"),
        ({"local_nets": ("10.0.0.0/33",)}, "bad local net"),
        ({"proposals": ("aes128-foo-x25519",)}, "bad proposal"),
        ({"esp_proposals": ("aes128-sha256-esn",)}, "ESN"),
        ({"dpd": -1.0}, "DPD"),
        ({"start": "later"}, "bad start"),
    ],
)
def test_config_errors_are_one_line(kw: dict[str, object], why: str) -> None:
    with pytest.raises(IkeConfigError, match=why) as exc:
        cfg(**kw).validate()
    assert "\n" not in str(exc.value)


def test_config_ok_and_psk_hidden() -> None:
    c = cfg(remote_addr="%any", proposals=("aes128gcm16-prfsha256-x25519,aes256-sha256-modp2048",))
    c.validate()
    assert "psk" not in repr(c)


def test_identities_as_strongswan_reads_them() -> None:
    assert identity(None, "192.0.2.1") == (IdType.IPV4_ADDR, bytes([192, 0, 2, 1]))
    assert identity("2001:db8::1", "x")[0] == IdType.IPV6_ADDR
    assert identity("gw.example", "x") == (IdType.FQDN, b"gw.example")
    assert identity("@gw", "x") == (IdType.FQDN, b"gw")
    assert identity("me@example.org", "x") == (IdType.RFC822_ADDR, b"me@example.org")
