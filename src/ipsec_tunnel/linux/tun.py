"""Kernel TUN devices: the inner side of every tunnel.

Owns opening ``/dev/net/tun``, naming the device, its queues (`TunQueue`), its offloads (TSO/USO
super-packets in, coalesced TCP out, each described by the virtio-net header before the packet,
`core.gso.VnetHeader`, packed and unpacked here only) and whether it persists: a device opened here
disappears when its last queue is closed, unless ``set_persist`` kept it (then it stays, with its
addresses and routes, until ``set_persist(False)`` or ``ip link del``).
Everything else about the device (addresses, routes, MTU, up/down) is done on it as on any other netdev,
by ``link`` or by ``ip``/``ifconfig``/``route``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from ipsec_tunnel.core.gso import NO_OFFLOAD, VNET_HDR, VNET_HDR_LEN, VnetHeader
from ipsec_tunnel.core.tunnel import IFNAMSIZ
from ipsec_tunnel.linux._closing import Closing
from ipsec_tunnel.linux.pktio import native as _io

__all__ = [
    "IFF_MULTI_QUEUE",
    "IFF_NO_PI",
    "IFF_TUN",
    "IFF_VNET_HDR",
    "IFNAMSIZ",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "TUN_F_TSO_ECN",
    "TUN_F_USO4",
    "TUN_F_USO6",
    "TunDevice",
    "TunQueue",
    "open_offload_tun",
    "open_tun",
    "tun_features",
]

TUN_PATH = "/dev/net/tun"

# ioctl numbers, linux/if_tun.h: _IOW('T', 202, int) etc.
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNSETPERSIST = 0x400454CB  # _IOW('T', 203, int)
TUNGETFEATURES = 0x800454CF  # _IOR('T', 207, unsigned int)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int)
TUNGETVNETHDRSZ = 0x800454D7  # _IOR('T', 215, int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
TUNSETQUEUE = 0x400454D9  # _IOW('T', 217, int)

# TUNSETIFF flags, linux/if_tun.h
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_VNET_HDR = 0x4000

# TUNSETOFFLOAD flags, linux/if_tun.h
TUN_F_CSUM = 0x01  # the peer (we) can handle partial checksums
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20  # Linux 6.2
TUN_F_USO6 = 0x40  # Linux 6.2

_IFREQ = struct.Struct(f"{IFNAMSIZ}sH22x")  # struct ifreq: name + ifr_flags, 40 bytes
_NO_VNET = bytes(VNET_HDR_LEN)


def _check_name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"invalid interface name: {name!r}")
    return raw


def tun_features() -> int:
    """The TUNSETIFF flags this kernel supports (TUNGETFEATURES)."""
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, TUNGETFEATURES, buf)
        (features,) = struct.unpack("=I", buf)
        return int(features)
    finally:
        os.close(fd)


class TunDevice(Closing):
    """One queue (file descriptor) of a layer-3 TUN device; packets are bare IP, no packet info.

    ``read`` returns one whole packet, or None when nothing is queued (non-blocking mode).
    With ``vnet_hdr`` every packet read or written is preceded by a virtio-net header of
    ``vnet_hdr_len`` bytes (`TunQueue` reads and writes it). Closing the last queue removes the device
    unless it persists.
    """

    def __init__(self, fd: int, name: str, flags: int, *, blocking: bool) -> None:
        self._fd = fd
        self._name = name
        self._flags = flags
        self._blocking = blocking
        self._vnet_hdr_len = VNET_HDR_LEN if flags & IFF_VNET_HDR else 0

    # -- identity -------------------------------------------------------------------------------

    @property
    def fd(self) -> int:
        """The queue's file descriptor (for selectors); -1 once closed."""
        return self._fd

    def fileno(self) -> int:
        """The queue's file descriptor."""
        if self._fd < 0:
            raise ValueError("TUN device is closed")
        return self._fd

    @property
    def name(self) -> str:
        """The kernel's name for the device."""
        return self._name

    @property
    def flags(self) -> int:
        """The TUNSETIFF flags the device was opened with."""
        return self._flags

    @property
    def vnet_hdr(self) -> bool:
        """Whether packets carry a virtio-net header."""
        return bool(self._flags & IFF_VNET_HDR)

    @property
    def vnet_hdr_len(self) -> int:
        """The virtio-net header length in bytes (0 without ``vnet_hdr``)."""
        return self._vnet_hdr_len

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._fd < 0

    # -- data -----------------------------------------------------------------------------------

    def read(self, n: int = 65536 + VNET_HDR_LEN) -> bytes | None:
        """One packet of at most ``n`` bytes (longer packets are truncated); None if none is queued."""
        try:
            return os.read(self.fileno(), n)
        except BlockingIOError:
            return None

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        """Hand one packet to the kernel as if received on the device; returns the bytes written.

        Raises OSError as the kernel reports it (EINVAL for a malformed packet, EIO when down...).
        """
        return os.write(self.fileno(), packet)

    # -- settings -------------------------------------------------------------------------------

    def set_blocking(self, blocking: bool) -> None:
        """Switch between blocking and non-blocking reads."""
        os.set_blocking(self.fileno(), blocking)
        self._blocking = blocking

    @property
    def blocking(self) -> bool:
        """Whether reads block."""
        return self._blocking

    def set_offload(self, flags: int) -> bool:
        """Ask for TUN_F_* offloads (TUNSETOFFLOAD); True if the kernel accepted all of them.

        Only meaningful with ``vnet_hdr``: the offloads are described per packet in that header.
        """
        if flags and not self.vnet_hdr:
            raise ValueError("offloads need a device opened with vnet_hdr=True")
        try:
            fcntl.ioctl(self.fileno(), TUNSETOFFLOAD, flags)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return False
            raise
        return True

    def set_vnet_hdr_len(self, size: int) -> None:
        """Set the virtio-net header length (TUNSETVNETHDRSZ; at least 10, 12 with mergeable buffers)."""
        if not self.vnet_hdr:
            raise ValueError("the device was opened without vnet_hdr")
        fcntl.ioctl(self.fileno(), TUNSETVNETHDRSZ, struct.pack("=i", size))
        self._vnet_hdr_len = size

    def get_vnet_hdr_len(self) -> int:
        """The virtio-net header length the kernel uses (TUNGETVNETHDRSZ)."""
        buf = bytearray(4)
        fcntl.ioctl(self.fileno(), TUNGETVNETHDRSZ, buf)
        (size,) = struct.unpack("=i", buf)
        return int(size)

    def set_persist(self, persist: bool) -> None:
        """Keep the device when its last queue closes (TUNSETPERSIST), or stop keeping it."""
        fcntl.ioctl(self.fileno(), TUNSETPERSIST, int(persist))

    def renamed(self, name: str) -> None:
        """Record that the kernel now calls the device ``name`` (after ``ip link set ... name``)."""
        self._name = name

    def open_queue(self) -> TunDevice:
        """Another queue of this multi-queue device, with the same flags and blocking mode."""
        if not self._flags & IFF_MULTI_QUEUE:
            raise ValueError("the device was opened without multi_queue")
        queue = _open(self._name, self._flags, blocking=self._blocking)
        queue._vnet_hdr_len = self._vnet_hdr_len
        if self.vnet_hdr and self._vnet_hdr_len != VNET_HDR_LEN:
            queue.set_vnet_hdr_len(self._vnet_hdr_len)
        return queue

    def set_queue_enabled(self, enabled: bool) -> None:
        """Attach or detach this queue of a multi-queue device (TUNSETQUEUE)."""
        flag = IFF_ATTACH_QUEUE if enabled else IFF_DETACH_QUEUE
        fcntl.ioctl(self.fileno(), TUNSETQUEUE, _IFREQ.pack(b"", flag))

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close this queue; the device goes away with its last queue. Idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    def __repr__(self) -> str:
        return f"<TunDevice {self._name!r} fd={self._fd} flags={self._flags:#x}>"


def _open(name: str, flags: int, *, blocking: bool) -> TunDevice:
    raw = _check_name(name)
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = bytearray(_IFREQ.pack(raw, flags))
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        actual = bytes(ifr[:IFNAMSIZ]).split(b"\0", 1)[0].decode()
        os.set_blocking(fd, blocking)
    except BaseException:
        os.close(fd)
        raise
    return TunDevice(fd, actual, flags, blocking=blocking)


def open_tun(
    name: str,
    *,
    vnet_hdr: bool = False,
    multi_queue: bool = False,
    blocking: bool = False,
) -> TunDevice:
    """Create (or attach to) the layer-3 TUN device ``name`` (IFF_TUN | IFF_NO_PI).

    ``name`` may contain ``%d`` to let the kernel pick the number; the chosen name is ``.name``.
    A new device starts down with no address. It is not persistent unless ``set_persist`` makes it so:
    closing every queue removes it. Opening a persistent device no process holds attaches to it as it is
    (addresses, routes, MTU and up state kept); ``multi_queue`` must be what it was made with.
    Opening a TUN device another process holds fails with EBUSY unless both openings ask for ``multi_queue``;
    an existing non-TUN device of that name fails with EINVAL. Needs CAP_NET_ADMIN.
    """
    flags = IFF_TUN | IFF_NO_PI
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    return _open(name, flags, blocking=blocking)


class TunQueue:
    """A TUN queue read and written packet by packet, with or without virtio-net headers.

    `read` gives (VnetHeader, packet); with `tso` the kernel may hand over TCP (and UDP, with `uso`)
    super-packets for `core.gso.split`. `write` takes a VnetHeader from `core.gro.coalesce`.
    """

    def __init__(self, dev: TunDevice, *, tso: bool, uso: bool, first: bool = True) -> None:
        self.dev = dev
        self.fd = dev.fileno()
        self.vnet = dev.vnet_hdr
        self.tso = self.uso = False
        if not first:  # a further queue: the offloads are the device's, set through its first
            self.tso, self.uso = tso, uso
        elif self.vnet:
            flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 if tso else 0
            if tso and uso and dev.set_offload(flags | TUN_F_USO4 | TUN_F_USO6):
                self.tso = self.uso = True
            elif dev.set_offload(flags):
                self.tso = tso
            else:
                dev.set_offload(0)
        self._size = 65536 + VNET_HDR_LEN
        self.io = _io  # the C calls (`_pktio`) or None: the Python path (IPSEC_TUNNEL_PURE=1)
        self._buf = bytearray(self._size)  # the C read's, made on the Python path too: `io` may be set later

    @property
    def name(self) -> str:
        """The device's name."""
        return self.dev.name

    def fileno(self) -> int:
        """The queue's file descriptor, for the event loop."""
        return self.fd

    def set_persist(self, persist: bool) -> None:
        """Keep the device when its last queue closes, or stop keeping it (`TunDevice.set_persist`)."""
        self.dev.set_persist(persist)

    def renamed(self, name: str) -> None:
        """Record that the kernel now calls the device `name`."""
        self.dev.renamed(name)

    def close(self) -> None:
        """Close the queue (`TunDevice.close`)."""
        self.dev.close()

    def open_queue(self) -> TunQueue:
        """Another queue of this multi-queue device, with the same offloads; ValueError if the device
        was opened without multi_queue, OSError if the kernel refuses."""
        other = TunQueue(self.dev.open_queue(), tso=self.tso, uso=self.uso, first=False)
        other.io = self.io
        return other

    def read(self) -> tuple[VnetHeader | None, bytes] | None:
        """The next packet with its offload header (None without vnet headers); None when none is queued."""
        if self.io is not None:  # the same, one C call (_pktio.c): the plain packet copied out once
            got = self.io.tun_read(self.fd, self._buf, self.vnet)
            if got is None:
                return None
            if type(got) is bytes:
                return (NO_OFFLOAD if self.vnet else None), got
            if type(got) is int:  # shorter than a header
                return VnetHeader(), b""
            head, packet = got
            return VnetHeader._make(VNET_HDR.unpack_from(head)), packet
        else:
            try:
                data = os.read(self.fd, self._size)
            except BlockingIOError:
                return None
        if not self.vnet:
            return None, data
        if len(data) < VNET_HDR_LEN:
            return VnetHeader(), b""
        if data.startswith(_NO_VNET):  # the common case: a plain packet
            return NO_OFFLOAD, data[VNET_HDR_LEN:]
        hdr = VnetHeader._make(VNET_HDR.unpack_from(data))
        return hdr, data[VNET_HDR_LEN:]

    def write(self, packet: bytes, offload: VnetHeader | None = None) -> int:
        """Hand one packet (or a GSO super-packet described by `offload`) to the kernel."""
        if self.io is not None and (offload is None or not (offload.flags or offload.gso_type)):
            return int(self.io.tun_write(self.fd, packet, self.vnet))  # the same, one C call (_pktio.c)
        if not self.vnet:
            return os.write(self.fd, packet)
        head = (
            _NO_VNET
            if offload is None or not (offload.flags or offload.gso_type)
            else VNET_HDR.pack(*offload)
        )
        return os.writev(self.fd, (head, packet))


def open_offload_tun(name: str, *, vnet: bool, multi_queue: bool = False) -> TunDevice:
    """Open TUN device `name` with virtio-net headers when `vnet` and the kernel allows, else without;
    `multi_queue` or not as asked, unless the device exists the other way (made so earlier: EINVAL)."""
    tries = [(v, m) for v in dict.fromkeys((vnet, False)) for m in (multi_queue, not multi_queue)]
    for vnet_hdr, multi in tries[:-1]:
        try:
            return open_tun(name, vnet_hdr=vnet_hdr, multi_queue=multi)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
    return open_tun(name, vnet_hdr=tries[-1][0], multi_queue=tries[-1][1])
