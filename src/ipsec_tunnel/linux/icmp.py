"""The raw sockets that send ICMP errors to outer senders (an unreachable ESP packet, RFC 4303 §3.4.4
leaves it to policy; the engine builds the whole message, `core.ip.icmp4_error`/`icmp6_error`)."""

from __future__ import annotations

import socket

__all__ = ["IcmpSocket"]


class IcmpSocket:
    """A raw socket sending ICMP (IPv4: whole IP packets through IPPROTO_RAW) or ICMPv6 (the message
    after the IPv6 header, which the kernel writes) errors; each goes to the destination in its header."""

    def __init__(self, family: int) -> None:
        self.v6 = family in (6, socket.AF_INET6)
        if self.v6:
            self._sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._sock.setblocking(False)

    def send(self, packet: bytes) -> None:
        """Send the IP packet `packet` (an ICMP error) to the destination in its header."""
        if self.v6:
            self._sock.sendto(packet[40:], (socket.inet_ntop(socket.AF_INET6, packet[24:40]), 0))
        else:
            self._sock.sendto(packet, (socket.inet_ntop(socket.AF_INET, packet[16:20]), 0))

    def close(self) -> None:
        """Close the socket. Idempotent."""
        self._sock.close()
