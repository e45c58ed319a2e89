"""Proposals: strongSwan's proposal syntax to and from transforms (RFC 7296 §3.3), and their selection.

`parse("aes128gcm16-prfsha256-x25519", Protocol.IKE)` gives a `Spec`: per transform type the algorithms
in order. `select` is the responder's choice (RFC 7296 §2.7): the first of the initiator's proposals that
one of ours supports, each transform type's first algorithm in the initiator's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .constants import DhGroup, Encr, Esn, Integ, Prf, Protocol, TransformType
from .message import Proposal, Transform


class ProposalError(ValueError):
    """A proposal string that does not parse, or names an unsupported algorithm."""


Algo = tuple[int, int | None]  # (transform ID, key length in bits or None)

_ENCR: dict[str, Algo] = {
    "aes128": (Encr.AES_CBC, 128),
    "aes192": (Encr.AES_CBC, 192),
    "aes256": (Encr.AES_CBC, 256),
    "aes": (Encr.AES_CBC, 128),
    "aes128gcm16": (Encr.AES_GCM_16, 128),
    "aes192gcm16": (Encr.AES_GCM_16, 192),
    "aes256gcm16": (Encr.AES_GCM_16, 256),
    "aes128gcm128": (Encr.AES_GCM_16, 128),
    "aes192gcm128": (Encr.AES_GCM_16, 192),
    "aes256gcm128": (Encr.AES_GCM_16, 256),
}
_INTEG: dict[str, int] = {
    "sha256": Integ.HMAC_SHA2_256_128,
    "sha2_256": Integ.HMAC_SHA2_256_128,
    "sha384": Integ.HMAC_SHA2_384_192,
    "sha2_384": Integ.HMAC_SHA2_384_192,
    "sha512": Integ.HMAC_SHA2_512_256,
    "sha2_512": Integ.HMAC_SHA2_512_256,
}
_PRF: dict[str, int] = {
    "prfsha256": Prf.HMAC_SHA2_256,
    "prfsha384": Prf.HMAC_SHA2_384,
    "prfsha512": Prf.HMAC_SHA2_512,
}
_DH: dict[str, int] = {
    "modp2048": DhGroup.MODP_2048,
    "modp3072": DhGroup.MODP_3072,
    "ecp256": DhGroup.ECP_256,
    "ecp384": DhGroup.ECP_384,
    "x25519": DhGroup.CURVE25519,
    "curve25519": DhGroup.CURVE25519,
}
_ESN: dict[str, int] = {"noesn": Esn.NO}  # libipsec and ipsecd's data plane: no ESN (RFC 4303 §2.2.1)
# integrity algorithm -> the PRF strongSwan derives from it when none is given (IKE only)
_PRF_OF_INTEG = {
    Integ.HMAC_SHA2_256_128: Prf.HMAC_SHA2_256,
    Integ.HMAC_SHA2_384_192: Prf.HMAC_SHA2_384,
    Integ.HMAC_SHA2_512_256: Prf.HMAC_SHA2_512,
}

# The supported part of strongSwan 5.9.8's `default` (proposal_create_default, then _aead, in
# libstrongswan/crypto/proposal/proposal.c), in charon's order as its log shows it ("configured
# proposals", Debian 12 with the openssl plugin): AES-CBC with HMAC-SHA2 first, then AES-GCM-16; groups
# Curve25519, ECP, then MODP 3072 before 2048. charon also offers AES-CTR, Camellia, 3DES, AES-CCM,
# ChaCha20-Poly1305, GCM-8/12, SHA-1, AES-XCBC, curve448, ecp521, Brainpool and MODP 4096-8192: left out.
_GROUPS = "x25519-ecp256-ecp384-modp3072-modp2048"
DEFAULT_IKE = (
    f"aes128-aes192-aes256-sha256-sha384-sha512-prfsha256-prfsha384-prfsha512-{_GROUPS}",
    f"aes128gcm16-aes192gcm16-aes256gcm16-prfsha256-prfsha384-prfsha512-{_GROUPS}",
)
DEFAULT_ESP = ("aes128-aes192-aes256-sha256-sha384-sha512", "aes128gcm16-aes192gcm16-aes256gcm16")


@dataclass(frozen=True)
class Spec:
    """One proposal: per transform type the algorithms in preference order."""

    protocol: int
    encr: tuple[Algo, ...] = ()
    integ: tuple[int, ...] = ()
    prf: tuple[int, ...] = ()
    dh: tuple[int, ...] = ()
    esn: tuple[int, ...] = ()
    unknown: tuple[tuple[int, int], ...] = ()  # (type, id) we do not implement (for messages)

    @property
    def aead(self) -> bool:
        return bool(self.encr) and all(e[0] == Encr.AES_GCM_16 for e in self.encr)

    def transforms(self) -> tuple[Transform, ...]:
        out = [Transform(TransformType.ENCR, e, k) for e, k in self.encr]
        out += [Transform(TransformType.PRF, p) for p in self.prf]
        out += [Transform(TransformType.INTEG, i) for i in self.integ]
        out += [Transform(TransformType.DH, d) for d in self.dh]
        out += [Transform(TransformType.ESN, e) for e in self.esn]
        return tuple(out)

    def to_proposal(self, num: int, spi: bytes = b"") -> Proposal:
        return Proposal(num, self.protocol, spi, self.transforms())

    def __str__(self) -> str:
        return name(self)


def _token_of(table: Mapping[str, object], value: object, fallback: str) -> str:
    for k, v in table.items():
        if v == value:
            return k
    return fallback


def name(spec: Spec) -> str:
    """strongSwan syntax for `spec`; algorithms we do not know appear as e.g. `encr23` or `dh21`."""
    parts = [_token_of(_ENCR, e, f"encr{e[0]}" + (f"_{e[1]}" if e[1] else "")) for e in spec.encr]
    parts += [_token_of(_INTEG, i, f"integ{i}") for i in spec.integ if i != Integ.NONE]
    parts += [_token_of(_PRF, p, f"prf{p}") for p in spec.prf]
    parts += [_token_of(_DH, d, f"dh{d}") for d in spec.dh]
    parts += [_token_of({"noesn": 0, "esn": 1}, e, f"esn{e}") for e in spec.esn if spec.esn != (0,)]
    parts += [f"t{t}id{i}" for t, i in spec.unknown]
    return "-".join(parts) or "(empty)"


def parse(text: str, protocol: int) -> list[Spec]:
    """The proposals of one configured string (`default` may stand for several)."""
    text = text.strip().lower()
    if text == "default":
        return [parse_one(t, protocol) for t in (DEFAULT_IKE if protocol == Protocol.IKE else DEFAULT_ESP)]
    return [parse_one(text, protocol)]


def parse_one(text: str, protocol: int) -> Spec:
    """One proposal in strongSwan syntax (`aes256-sha256-modp2048`); raises ProposalError."""
    encr: list[Algo] = []
    integ: list[int] = []
    prf: list[int] = []
    dh: list[int] = []
    esn: list[int] = []
    for tok in text.split("-"):
        if tok in _ENCR:
            encr.append(_ENCR[tok])
        elif tok in _INTEG:
            integ.append(_INTEG[tok])
        elif tok in _PRF:
            prf.append(_PRF[tok])
        elif tok in _DH:
            dh.append(_DH[tok])
        elif tok in _ESN:
            esn.append(_ESN[tok])
        elif tok == "esn":
            raise ProposalError(f"'{text}': ESN is not supported (use noesn)")
        else:
            raise ProposalError(f"'{text}': unknown or unsupported algorithm '{tok}'")
    if not encr:
        raise ProposalError(f"'{text}': no encryption algorithm")
    kinds = {e[0] == Encr.AES_GCM_16 for e in encr}
    if len(kinds) > 1:
        raise ProposalError(f"'{text}': mixes AEAD and non-AEAD encryption")
    aead = kinds == {True}
    if aead and integ:
        raise ProposalError(f"'{text}': an AEAD cipher takes no integrity algorithm")
    if not aead and not integ:
        raise ProposalError(f"'{text}': no integrity algorithm")
    if protocol == Protocol.IKE:
        if esn:
            raise ProposalError(f"'{text}': ESN is for ESP proposals")
        if not prf:
            prf = [_PRF_OF_INTEG[Integ(i)] for i in integ] if integ else [Prf.HMAC_SHA2_256]
        if not dh:
            raise ProposalError(f"'{text}': no Diffie-Hellman group")
        return Spec(protocol, tuple(encr), tuple(integ), tuple(dict.fromkeys(prf)), tuple(dh))
    if prf:
        raise ProposalError(f"'{text}': a PRF is for IKE proposals")
    # DH groups in an ESP proposal are for PFS in CREATE_CHILD_SA (not in this part): dropped here, as the
    # first CHILD SA of IKE_AUTH never carries them (RFC 7296 §1.2)
    return Spec(protocol, tuple(encr), tuple(integ), (), (), (Esn.NO,))


def from_proposal(p: Proposal) -> Spec:
    """A received proposal as a Spec (transforms with unknown attributes count as unknown)."""
    encr: list[Algo] = []
    integ: list[int] = []
    prf: list[int] = []
    dh: list[int] = []
    esn: list[int] = []
    unknown: list[tuple[int, int]] = []
    for t in p.transforms:
        if t.bad_attr:
            unknown.append((t.ttype, t.tid))
        elif t.ttype == TransformType.ENCR:
            encr.append((t.tid, t.key_len))
        elif t.ttype == TransformType.INTEG:
            integ.append(t.tid)
        elif t.ttype == TransformType.PRF:
            prf.append(t.tid)
        elif t.ttype == TransformType.DH:
            dh.append(t.tid)
        elif t.ttype == TransformType.ESN:
            esn.append(t.tid)
        else:
            unknown.append((t.ttype, t.tid))
    return Spec(p.protocol, tuple(encr), tuple(integ), tuple(prf), tuple(dh), tuple(esn), tuple(unknown))


@dataclass(frozen=True)
class Chosen:
    """The outcome of a selection: one algorithm per type, and which of the peer's proposals it was."""

    spec: Spec
    num: int
    spi: bytes


def _pick(theirs: tuple[int, ...] | tuple[Algo, ...], ours: tuple[object, ...]) -> list[object]:
    return [t for t in theirs if t in ours]


def match(their: Spec, our: Spec) -> Spec | None:
    """The intersection of one received and one configured proposal, or None (RFC 7296 §2.7)."""
    if their.protocol != our.protocol or any(t not in range(1, 6) for t, _ in their.unknown):
        return None
    encr = _pick(their.encr, our.encr)
    integ_theirs = tuple(i for i in their.integ if i != Integ.NONE)
    integ = _pick(integ_theirs, our.integ)
    prf = _pick(their.prf, our.prf)
    dh = _pick(their.dh, our.dh)
    esn = _pick(their.esn or (Esn.NO,), our.esn)
    if not encr:
        return None
    if our.aead != (not integ_theirs) or (not our.aead and not integ):
        return None
    if our.protocol == Protocol.IKE:
        if not prf or not dh:
            return None
    elif not esn or any(d != 0 for d in their.dh):  # DH none (0) is allowed
        return None
    return Spec(
        our.protocol,
        tuple(encr),  # type: ignore[arg-type]
        tuple(integ),  # type: ignore[arg-type]
        tuple(prf),  # type: ignore[arg-type]
        tuple(dh),  # type: ignore[arg-type]
        tuple(esn),  # type: ignore[arg-type]
    )


def select(theirs: list[Proposal], ours: list[Spec], ke_group: int | None = None) -> Chosen | int | None:
    """The responder's choice: a single-algorithm Chosen; for IKE with a KE group none of the matches
    allows, the group to ask for (INVALID_KE_PAYLOAD, §1.3); None if nothing matches."""
    first_group: int | None = None
    for p in theirs:
        their = from_proposal(p)
        for our in ours:
            m = match(their, our)
            if m is None:
                continue
            if ke_group is not None:
                if ke_group not in m.dh:
                    if first_group is None:
                        first_group = next(d for d in our.dh if d in m.dh)
                    continue
                return Chosen(_single(m, ke_group), p.num, p.spi)
            return Chosen(_single(m, None), p.num, p.spi)
    return first_group


def _single(m: Spec, group: int | None) -> Spec:
    return Spec(
        m.protocol,
        m.encr[:1],
        m.integ[:1],
        m.prf[:1],
        (group,) if group is not None else m.dh[:1],
        m.esn[:1],
    )


def describe(proposals: list[Proposal]) -> str:
    """The peer's proposals in strongSwan syntax, comma-separated."""
    return ", ".join(name(from_proposal(p)) for p in proposals) or "(none)"
