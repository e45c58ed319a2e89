"""The socket plumbing both outer transports share: options, buffers, devices, errors, path MTU.

Owns one socket's life: its family, device binding, buffer sizes, DF mode, the receive loop that
skips truncated datagrams and asynchronous errors, and the collection of ICMP errors from the
error queue (IP_RECVERR/IPV6_RECVERR). The error queue is read only when asked (`poll_errors`, which
the event loop calls when epoll reports EPOLLERR: the kernel reports it while the queue holds
anything), never as a side effect of a receive that found nothing. Interface names are resolved in
the socket's own network namespace, so a transport works the same whichever thread (and namespace)
calls it.
"""

from __future__ import annotations

import collections
import errno
import socket
from collections.abc import Callable

from ipsec_tunnel.linux._closing import Closing
from ipsec_tunnel.linux._sockopt import (
    IP_MTU,
    IP_MTU_DISCOVER,
    IP_PMTUDISC_DO,
    IP_PMTUDISC_DONT,
    IP_RECVERR,
    IPV6_MTU,
    IPV6_MTU_DISCOVER,
    IPV6_PMTUDISC_DO,
    IPV6_PMTUDISC_DONT,
    IPV6_RECVERR,
    MSG_ERRQUEUE,
    MSG_TRUNC,
    NETWORK_ERRNOS,
    SO_BINDTOIFINDEX,
    Address,
    SocketError,
    bind_to_device,
    ifindex_of,
    parse_error_queue_entry,
    set_buffers,
    sockaddr,
)

DEFAULT_BUFFER = 4 << 20
MAX_DATAGRAM = 65535
_ANCILLARY = 256
_MAX_ERRORS = 256
_NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EPERM, errno.EINVAL})


def _family(family: int) -> int:
    if family in (socket.AF_INET, 4):
        return socket.AF_INET
    if family in (socket.AF_INET6, 6):
        return socket.AF_INET6
    raise ValueError(f"unsupported address family: {family}")


class Transport(Closing):
    """What both transports share: the socket, buffers, device binding, error collection."""

    _ancillary = _ANCILLARY  # bytes of room for control messages per received datagram

    def __init__(
        self,
        family: int,
        kind: int,
        proto: int,
        *,
        device: str | None,
        rcvbuf: int | None,
        sndbuf: int | None,
        recverr: bool,
    ) -> None:
        self.family = _family(family)
        self.device = device
        self._sock = socket.socket(self.family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
        self._v6 = self.family == socket.AF_INET6
        self._buf = bytearray(MAX_DATAGRAM)
        self._errors: collections.deque[SocketError] = collections.deque(maxlen=_MAX_ERRORS)
        self._recverr = recverr
        self._strip_ip = False
        self._df: bool | None = None
        # for route questions in the socket's own namespace, whichever thread asks
        self._probe = socket.socket(self.family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            set_buffers(self._sock, rcvbuf, sndbuf)
            self._device_index = 0 if device is None else ifindex_of(self._sock, device)
            if device is not None:
                bind_to_device(self._sock, device)
            if recverr:
                if self._v6:
                    self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
                else:
                    self._sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        except BaseException:
            self.close()
            raise

    @property
    def socket(self) -> socket.socket:
        """The underlying socket (for options not covered here)."""
        return self._sock

    def fileno(self) -> int:
        """The socket's file descriptor, for selectors."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket. Idempotent."""
        self._sock.close()
        self._probe.close()

    def ifindex(self, oif: str | int | None) -> int:
        """The index of an interface given by name or index (0 for None), in the socket's namespace.

        Pass indexes to ``send`` on hot paths: a name costs an ioctl per packet.
        """
        if oif is None or isinstance(oif, int):
            return oif or 0
        return ifindex_of(self._sock, oif)

    def _sockaddr(self, addr: Address, port: int = 0) -> tuple[str, int] | tuple[str, int, int, int]:
        return sockaddr(self.family, addr, port, self.ifindex)

    def path_mtu(self, dst: Address, oif: str | int | None = None) -> int | None:
        """The MTU the kernel would use towards ``dst`` from this socket (route MTU, or the path
        MTU learnt from ICMP errors); None when there is no route. Sends nothing.
        """
        index = self.ifindex(oif) or self._device_index
        try:
            self._probe.setsockopt(socket.SOL_SOCKET, SO_BINDTOIFINDEX, index)
            self._probe.connect(self._sockaddr(dst, 9))
        except OSError as exc:
            if exc.errno in _NO_ROUTE:
                return None
            raise
        if self._v6:
            return int(self._probe.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU))
        return int(self._probe.getsockopt(socket.IPPROTO_IP, IP_MTU))

    def _set_df(self, df: bool) -> None:
        """Switch the socket between never fragmenting locally (EMSGSIZE above the path MTU) and
        fragmenting (and, for IPv4, clearing DF); a syscall only when it changes.
        """
        if df == self._df:
            return
        if self._v6:
            mode = IPV6_PMTUDISC_DO if df else IPV6_PMTUDISC_DONT
            self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, mode)
        else:
            self._sock.setsockopt(
                socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if df else IP_PMTUDISC_DONT
            )
        self._df = df

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._sock.fileno() < 0

    @property
    def local_address(self) -> tuple[str, int]:
        """The bound address and port (``("0.0.0.0", 0)`` style when unbound)."""
        name = self._sock.getsockname()
        return str(name[0]), int(name[1])

    def pop_errors(self) -> list[SocketError]:
        """The asynchronous errors (ICMP errors from the path) collected since the last call.

        Errors are collected by ``poll_errors`` (called here first) and from the errors a receive or
        send returned.
        """
        self.poll_errors()
        errors = list(self._errors)
        self._errors.clear()
        return errors

    def poll_errors(self) -> int:
        """Move queued errors from the kernel into this object; returns how many were read. Call it
        when epoll reports EPOLLERR on the socket (until it is called, the kernel keeps reporting it)."""
        if not self._recverr:
            return 0
        count = 0
        for _ in range(_MAX_ERRORS):
            try:
                data, anc, _flags, addr = self._sock.recvmsg(MAX_DATAGRAM, _ANCILLARY * 4, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break
                raise
            count += 1
            entry = parse_error_queue_entry(self.family, data, anc, addr, self._strip_ip)
            if entry is not None:
                self._errors.append(entry)
        return count

    def _note(self, exc: OSError) -> bool:
        """Record an asynchronous error a read or write returned; False if it is not one."""
        if exc.errno not in NETWORK_ERRNOS:
            return False
        if not self._recverr:  # otherwise the error queue holds the details
            self._errors.append(SocketError(exc.errno))
        return True

    def _retrying(self, send: Callable[[], object]) -> bool:
        """Run one send; False if the buffer was full. An error the kernel stored from an earlier
        ICMP message fails the next send once (sock_error), so a network errno gets one retry;
        if the retry fails too, the error belongs to this packet and is raised.
        """
        try:
            send()
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in NETWORK_ERRNOS:
                raise
            try:
                send()
            except BlockingIOError:
                return False
            self._note(exc)
        return True

    def _recvmsg(self) -> tuple[int, list[tuple[int, int, bytes]], object] | None:
        """One datagram into the buffer: (length, ancillary data, source address); None when empty (one
        system call: the error queue is left to `poll_errors`)."""
        for _ in range(_MAX_ERRORS):
            try:
                n, anc, flags, addr = self._sock.recvmsg_into([self._buf], self._ancillary)
            except BlockingIOError:
                return None
            except OSError as exc:
                if self._note(exc):
                    continue
                raise
            if flags & MSG_TRUNC:
                continue
            return n, anc, addr
        return None
