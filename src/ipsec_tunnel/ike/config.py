"""Peer configuration: what one IKEv2 peer is (addresses, PSK, identities, nets, proposals)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .constants import IdType, Protocol
from .proposals import ProposalError, Spec, parse

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
STARTS = ("none", "now", "on-traffic")


class IkeConfigError(ValueError):
    """A bad peer configuration; the message is one line for the user."""


@dataclass(frozen=True)
class PeerConfig:
    """One IKEv2 peer. The PSK is never in repr or str."""

    name: str
    local_addr: str
    remote_addr: str
    psk: bytes = field(repr=False)
    local_id: str | None = None
    remote_id: str | None = None
    local_nets: tuple[str, ...] = ()
    remote_nets: tuple[str, ...] = ()
    proposals: tuple[str, ...] = ("default",)
    esp_proposals: tuple[str, ...] = ("default",)
    dpd: float = 0.0
    start: str = "none"
    encap_always: bool = False

    def validate(self) -> None:
        """Raises IkeConfigError with a one-line message on a bad value."""
        if not _NAME.fullmatch(self.name):
            raise IkeConfigError(f"bad peer name '{self.name}' (1-32 of A-Z a-z 0-9 _ . -)")
        try:
            local = ipaddress.ip_address(self.local_addr)
        except ValueError:
            raise IkeConfigError(f"bad local address '{self.local_addr}'") from None
        if self.remote_addr != "%any":
            try:
                remote = ipaddress.ip_address(self.remote_addr)
            except ValueError:
                raise IkeConfigError(f"bad remote address '{self.remote_addr}'") from None
            if remote.version != local.version:
                raise IkeConfigError("local and remote addresses are of different IP versions")
        if not self.psk:
            raise IkeConfigError("empty pre-shared key")
        for label, nets in (("local", self.local_nets), ("remote", self.remote_nets)):
            for net in nets:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise IkeConfigError(f"bad {label} net '{net}'") from None
        for ident in (self.local_id, self.remote_id):
            if ident is not None and not 0 < len(ident) <= 255:
                raise IkeConfigError(f"bad identity '{ident}'")
        try:
            ike_specs(self)
            esp_specs(self)
        except ProposalError as exc:
            raise IkeConfigError(f"bad proposal {exc}") from None
        if not 0 <= self.dpd <= 86400:
            raise IkeConfigError(f"bad DPD interval {self.dpd} (0 to 86400 seconds)")
        if self.start not in STARTS:
            raise IkeConfigError(f"bad start '{self.start}' (none, now or on-traffic)")


def ike_specs(cfg: PeerConfig) -> list[Spec]:
    """The IKE SA proposals of `cfg`, parsed; ProposalError on a bad one or none."""
    return _specs(cfg.proposals, Protocol.IKE)


def esp_specs(cfg: PeerConfig) -> list[Spec]:
    """The CHILD SA (ESP) proposals of `cfg`, parsed; ProposalError on a bad one or none."""
    return _specs(cfg.esp_proposals, Protocol.ESP)


def _specs(proposals: tuple[str, ...], protocol: Protocol) -> list[Spec]:
    """`proposals` (each maybe a comma-separated list) parsed for `protocol`; ProposalError when none."""
    out: list[Spec] = []
    for p in proposals:
        for part in p.split(","):
            out += parse(part, protocol)
    if not out:
        raise ProposalError(f"'': no {protocol.name} proposal")
    return out


def identity(text: str | None, addr: str) -> tuple[int, bytes]:
    """(ID type, data) for an identity as strongSwan reads it (RFC 7296 §3.5): None -> the address;
    an IP literal -> ID_IPV4/6_ADDR; `user@host` -> ID_RFC822_ADDR; `@name` or any other -> ID_FQDN."""
    if text is None:
        text = addr
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return (IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR), ip.packed
    if text.startswith("@@"):
        return IdType.RFC822_ADDR, text[2:].encode()
    if text.startswith("@"):
        return IdType.FQDN, text[1:].encode()
    if "@" in text:
        return IdType.RFC822_ADDR, text.encode()
    return IdType.FQDN, text.encode()


def describe_id(id_type: int, data: bytes) -> str:
    """A received identity, printable."""
    if id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR) and len(data) in (4, 16):
        return str(ipaddress.ip_address(data))
    text = data.decode("ascii", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)[:64]
