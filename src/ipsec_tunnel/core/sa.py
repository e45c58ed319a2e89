"""Security associations: the validated configuration (`SAConfig`) and the live SA with its sequence
counter, replay window, lifetimes and counters (`SecurityAssociation`)."""

from __future__ import annotations

import functools
import ipaddress
import operator
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import esp
from .algorithms import (
    AlgorithmError,
    AuthTransform,
    NullAuth,
    check_named_key_bits,
    find_auth,
    find_cipher,
    make_auth,
    make_cipher,
)
from .drops import Drop
from .esp import NH_IPV4, NH_IPV6
from .events import EventKind, SAEvent
from .framing import native as _native
from .replay import DEFAULT_WINDOW, MAX_WINDOW, SEQ32, ReplayWindow
from .seqstore import NO_LIMIT, Counters, Direction, SequenceStore, Slot

__all__ = [
    "KEEPALIVE",
    "KEEPALIVE_MAX",
    "LIFETIME_MAX",
    "NAT_T_PORT",
    "SEQ_MAX_32",
    "SEQ_MAX_64",
    "SEQ_MAX_SPLIT",
    "SPI_MAX",
    "SPI_MIN",
    "SWEET32_BYTES",
    "Address",
    "Admit",
    "ConfigError",
    "Emit",
    "Limits",
    "SAConfig",
    "SAError",
    "SecurityAssociation",
    "UdpEncap",
    "build_transforms",
    "lifetime_problem",
    "parse_address",
]

SPI_MIN = 256  # RFC 4303 §2.1: SPIs 1-255 are reserved by IANA, 0 is local use only
SPI_MAX = 0xFFFFFFFF
SEQ_MAX_32 = (1 << 32) - 1  # RFC 4303 §3.3.3: the counter must not cycle
SEQ_MAX_64 = (1 << 64) - 1  # RFC 4303 §2.2.1: with ESN
SEQ_MAX_SPLIT = (1 << 63) - 1  # counter IVs with the --duplex direction bit use 63 bits
# Sweet32 (CVE-2016-2183): with a 64-bit block, CBC ciphertext blocks collide after about 2^32 blocks
# (birthday bound), leaking the XOR of two plaintext blocks. 2^30 bytes are 2^27 blocks: a collision
# chance of about (2^27)^2 / 2^65 = 2^-11 per SA, and far below the 2^35 bytes the attack needs.
SWEET32_BYTES = 1 << 30
NAT_T_PORT = 4500  # RFC 3948 §2: UDP encapsulation port
KEEPALIVE = 20  # RFC 3948 §4: seconds between NAT-keepalives (20 s, as IKE daemons use)
KEEPALIVE_MAX = 3600
LIFETIME_MAX = (1 << 63) - 1  # lifetimes are stored as signed 64-bit integers
# core/_framing.c's seal of one AEAD packet (None without the extension, or one built before it)
_SEAL_ONE: Callable[..., bytes] | None = getattr(_native, "seal_aead16_one", None)
_SEQ_LO = struct.Struct("!I")  # RFC 4303 §2.2: the sequence number field, after the SPI
_IV_FIRST = operator.itemgetter(8)  # the first byte of the IV (RFC 4303 §2.3), after SPI and sequence
_SEQ_FIELD = operator.itemgetter(slice(4, 8))  # RFC 4303 §2.2: the sequence number field, as bytes

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _in_order(packets: list[bytes]) -> tuple[int, int]:
    """(first, last) when the ESP `packets` carry the sequence numbers first, first + 1, ..., last (low
    32 bits, RFC 4303 §2.2), else (-1, -1): one also when a packet is shorter than the ESP header. The
    fields are compared as bytes, all at once (or in C, core/_framing.c)."""
    if _native is not None:
        found = _native.in_order(packets)
        if found is not None:
            return found
    count = len(packets)
    fields = b"".join(map(_SEQ_FIELD, packets))
    if len(fields) != 4 * count:
        return -1, -1
    first = int.from_bytes(fields[:4], "big")
    last = first + count - 1
    if last >= SEQ32:  # a run through 2^32 is not one of 32-bit numbers in order
        return -1, -1
    return (first, last) if fields == struct.pack(f"!{count}I", *range(first, last + 1)) else (-1, -1)


class ConfigError(ValueError):
    """A configuration that cannot be used (`SAError`, `tunnel.TunnelError`); `errno` names the control
    protocol's error code."""

    def __init__(self, message: str, errno: str = "EINVAL") -> None:
        super().__init__(message)
        self.errno = errno


class SAError(ConfigError):
    """An SA configuration that cannot be used, or an SA the SAD refuses."""


@dataclass(frozen=True, slots=True)
class Limits:
    """A lifetime: any of bytes, packets, seconds; 0 means no limit."""

    bytes: int = 0
    packets: int = 0
    seconds: int = 0

    def __bool__(self) -> bool:
        return bool(self.bytes or self.packets or self.seconds)


def lifetime_problem(soft: int, hard: int) -> str | None:
    """What is wrong with one kind's soft and hard lifetime (0: none), or None: each at most
    LIFETIME_MAX, and the soft limit below the hard one."""
    if max(soft, hard) > LIFETIME_MAX:
        return f"{max(soft, hard)} is too large (at most {LIFETIME_MAX})"
    if soft and hard and soft >= hard:
        return "the soft limit must be below the hard limit"
    return None


@dataclass(frozen=True, slots=True)
class UdpEncap:
    """ESP-in-UDP encapsulation (RFC 3948) with the ports used on the wire, and the NAT-keepalive
    interval in seconds (RFC 3948 §2.3; 0: none)."""

    sport: int = NAT_T_PORT
    dport: int = NAT_T_PORT
    keepalive: int = KEEPALIVE


def parse_address(text: str, what: str, error: type[ConfigError] = SAError) -> Address:
    """A unicast, specified IP address from `text`, or `error` naming `what`."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise error(f"Bad {what} address: {text!r}") from None
    if addr.is_unspecified or addr.is_multicast or (addr.version == 4 and str(addr) == "255.255.255.255"):
        raise error(f"Wildcard or multicast {what} address not allowed: {text}")
    return addr


@dataclass(frozen=True)
class SAConfig:
    """What `ipsecadm sa add` says about one direction; keys never appear in repr()."""

    spi: int
    dst: str
    src: str
    cipher: str | None = None
    cipher_key: bytes = field(default=b"", repr=False)
    digest: str | None = None
    digest_key: bytes = field(default=b"", repr=False)
    digest_bits: int | None = None  # --digest-hmac: ICV bits for HMAC; ICV bits of an AEAD cipher
    replay_window: int = DEFAULT_WINDOW
    esn: bool = False
    encap: UdpEncap | None = None
    soft: Limits = Limits()
    hard: Limits = Limits()
    # Counter-mode ciphers (GCM, ChaCha20-Poly1305, CTR): the IV's top bit says the direction (0 when the
    # source sorts below the destination), so the two directions of a shared --duplex key never share a
    # nonce. Derived by validated().
    iv_split: int | None = None
    duplex: bool = False  # this SA and its reversed() twin share SPI and keys (`sa add --duplex`)

    def validated(self, *, restoring: bool = False) -> SAConfig:
        """This configuration with canonical names and addresses, or SAError saying what is wrong.
        `restoring`: a configuration the state store kept, checked as when it was added (an SA stored by
        an older ipsecd is not refused for a check that came later: the lifetimes' order and maximum)."""
        if not SPI_MIN <= self.spi <= SPI_MAX:
            raise SAError(f"SPI {self.spi:#x} is reserved or out of range (valid: 0x100 to 0xffffffff)")
        dst = parse_address(self.dst, "destination")
        src = parse_address(self.src, "source")
        if dst.version != src.version:
            raise SAError("Source and destination must both be IPv4 or both IPv6")
        if dst == src:
            raise SAError("Source and destination must differ")
        if not self.cipher and not self.digest:
            raise SAError("An SA needs a cipher, a digest, or both")
        if not 0 <= self.replay_window <= MAX_WINDOW:
            raise SAError(f"Replay window must be 0 (off) to {MAX_WINDOW} packets")
        if self.encap and not (0 < self.encap.sport < 65536 and 0 < self.encap.dport < 65536):
            raise SAError("UDP encapsulation ports must be 1 to 65535")
        if self.encap and not 0 <= self.encap.keepalive <= KEEPALIVE_MAX:
            raise SAError(f"--keepalive must be 0 (none) to {KEEPALIVE_MAX} seconds")
        for name, limit in (("soft", self.soft), ("hard", self.hard)):
            if min(limit.bytes, limit.packets, limit.seconds) < 0:
                raise SAError(f"{name} lifetimes must not be negative")
        for kind in ("bytes", "packets", "seconds"):
            problem = (
                None if restoring else lifetime_problem(getattr(self.soft, kind), getattr(self.hard, kind))
            )
            if problem:
                raise SAError(f"Bad --lifetime-{kind}: {problem}")
        cipher = digest = None
        digest_bits = self.digest_bits
        try:
            if self.cipher:
                alg, icv = find_cipher(self.cipher)
                cipher = alg.name
                named = 0 if icv is None or icv == alg.icv_lens[0] or restoring else icv
                if alg.aead and named and self.digest_bits is not None and self.digest_bits != named * 8:
                    raise SAError(
                        f"--cipher={self.cipher} already sets a {named * 8}-bit ICV; drop --digest-hmac "
                        f"or use --cipher={alg.name} --digest-hmac={self.digest_bits}"
                    )
                if alg.aead and self.digest:
                    raise SAError(f"{alg.name} authenticates by itself (AEAD): drop --digest")
                if not alg.aead and not self.digest and not alg.iv_len:
                    raise SAError(
                        f"{alg.name} without a digest protects nothing: add --digest=NAME with a key"
                    )
                if alg.aead and icv is not None and self.digest_bits is None:
                    digest_bits = icv * 8
                if alg.aead and digest_bits is not None and digest_bits not in [i * 8 for i in alg.icv_lens]:
                    allowed = ", ".join(str(i * 8) for i in alg.icv_lens)
                    raise SAError(f"{alg.name} allows an ICV of {allowed} bits, not {digest_bits}")
            if self.digest:
                digest = find_auth(self.digest).name
            elif self.digest_bits is not None and not restoring and not (self.cipher and alg.aead):
                raise SAError(
                    "--digest-hmac needs --digest=NAME (or an AEAD cipher, where it sets the ICV length)"
                )
        except AlgorithmError as exc:
            raise SAError(str(exc)) from None
        split = None
        if cipher and find_cipher(cipher)[0].iv_len and (find_cipher(cipher)[0].aead or cipher == "aes-ctr"):
            split = 0 if src.packed < dst.packed else 1
        if self.duplex and split is not None and self.encap:
            # The direction bit comes from each host's own view of the addresses; behind a NAT the two
            # views differ and both hosts may pick the same bit: (key, nonce) pairs repeat.
            raise SAError(
                f"--duplex with {cipher} and --encap=udp is refused: behind a NAT both hosts can send the "
                "same (key, IV) pairs. Use one SA per direction, each with its own key, without --duplex"
            )
        hard = self.hard
        if cipher and find_cipher(cipher)[0].block == 8 and not 0 < hard.bytes <= SWEET32_BYTES:
            hard = replace(hard, bytes=SWEET32_BYTES)  # a 64-bit block cipher: the Sweet32 limit
        checked = replace(
            self,
            cipher=cipher,
            digest=digest,
            digest_bits=digest_bits,
            dst=str(dst),
            src=str(src),
            iv_split=split,
            hard=hard,
        )._checked_keys()
        if self.cipher:
            try:
                check_named_key_bits(self.cipher, len(self.cipher_key))
            except AlgorithmError as exc:
                raise SAError(str(exc)) from None
        return checked

    def _checked_keys(self) -> SAConfig:
        try:
            build_transforms(self)
        except AlgorithmError as exc:
            raise SAError(str(exc), "EINVAL") from None
        return self

    @property
    def key(self) -> tuple[bytes, bytes, int]:
        """The SA database key: (packed destination, packed source, SPI)."""
        return ipaddress.ip_address(self.dst).packed, ipaddress.ip_address(self.src).packed, self.spi

    @functools.cached_property
    def family(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.dst).version

    @property
    def ambiguous_duplex(self) -> bool:
        """Whether this is a --duplex SA whose IVs do not say the direction (CBC, NULL): a packet of
        one direction sent back to its sender authenticates there (protocol review finding 1)."""
        return self.duplex and self.iv_split is None

    @property
    def integrity(self) -> bool:
        """Whether packets carry an ICV: a digest or AEAD (False: encryption only, RFC 4303 §3.2)."""
        return bool(self.digest) or bool(self.cipher and find_cipher(self.cipher)[0].aead)

    @property
    def seq_max(self) -> int:
        """The last sequence number this SA may send."""
        if self.iv_split is not None and self.esn:  # the IV's top bit is the direction
            return SEQ_MAX_SPLIT
        return SEQ_MAX_64 if self.esn else SEQ_MAX_32

    def reversed(self) -> SAConfig:
        """The same SA for the opposite direction (what `--duplex` adds)."""
        split = None if self.iv_split is None else 1 - self.iv_split
        return replace(self, dst=self.src, src=self.dst, iv_split=split)

    def to_record(self) -> dict[str, Any]:
        """Everything needed to rebuild this configuration, keys included (for the state store only)."""
        rec = asdict(self)
        rec["cipher_key"] = self.cipher_key.hex()
        rec["digest_key"] = self.digest_key.hex()
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> SAConfig:
        """The configuration `to_record` wrote."""
        data = dict(rec)
        data["cipher_key"] = bytes.fromhex(data.get("cipher_key", ""))
        data["digest_key"] = bytes.fromhex(data.get("digest_key", ""))
        data["encap"] = UdpEncap(**data["encap"]) if data.get("encap") else None
        data["soft"] = Limits(**data.get("soft") or {})
        data["hard"] = Limits(**data.get("hard") or {})
        return cls(**data)


def build_transforms(config: SAConfig) -> tuple[Any, Any]:
    """(cipher transform, auth transform or None) for a configuration; raises AlgorithmError."""
    if config.cipher:
        alg, _icv = find_cipher(config.cipher)
        icv_len = (config.digest_bits // 8) if (alg.aead and config.digest_bits) else None
        cipher = make_cipher(alg, config.cipher_key, icv_len)
    else:
        alg, _icv = find_cipher("null")
        cipher = make_cipher(alg, b"")
    auth: Any = None
    if config.digest:
        auth = make_auth(find_auth(config.digest), config.digest_key, config.digest_bits)
    elif not alg.aead:  # encryption only (RFC 4303 §3.2): an empty ICV, no integrity
        auth = NullAuth()
    return cipher, auth


Emit = Callable[[SAEvent], None]

Admit = Callable[[bytes, int], Drop | None]
"""The checks a decrypted (inner packet, next header) must pass before the replay window moves (the
tunnel's inner policy): None when it may, else the reason to drop it."""


class SecurityAssociation:
    """A live SA: sends with a never-repeating sequence number, receives through the replay window."""

    def __init__(
        self,
        config: SAConfig,
        now: float,
        *,
        created: float | None = None,
        seq_out: int = 0,
        replay: ReplayWindow | None = None,
    ) -> None:
        self.config = config
        self.cipher, self.auth = build_transforms(config)
        self.key = config.key
        self.created = now if created is None else created
        self.seq_out = seq_out  # last sequence number sent
        self.seq_limit = config.seq_max  # highest number the store allows to send
        self.in_limit = config.seq_max  # highest number the store allows to accept
        self.replay = replay or ReplayWindow(config.replay_window, esn=config.esn)
        # Where reservations past seq_limit, in_limit and the count limits are committed (see
        # core/seqstore.py); None: nothing may go past them.
        self.store: SequenceStore | None = None
        # Counts a lifetime may reach before the store must record more; a restart resumes from the
        # recorded counts, so it never extends a lifetime.
        self.packets_limit = self.bytes_limit = NO_LIMIT
        # The journal (`Slot`): the last number sent and the highest accepted, written with every packet
        # so that a process crash loses neither. None: no journal.
        self._journal: Counters | None = None
        self._sent_at = self._accepted_at = 0
        self.packets = 0
        self.bytes = 0
        self.drops: Counter[Drop] = Counter()
        self.soft_fired = False
        self.dead: str | None = None  # why the SA no longer passes traffic
        self.used: float | None = None
        self._deadline_soft = self.created + config.soft.seconds if config.soft.seconds else None
        self._deadline_hard = self.created + config.hard.seconds if config.hard.seconds else None
        # Per-packet constants, read once here rather than derived on every packet (bench/core.py).
        self._timed = self._deadline_soft is not None or self._deadline_hard is not None
        self._volume = bool(
            config.soft.packets or config.soft.bytes or config.hard.packets or config.hard.bytes
        )
        self._seq_max = config.seq_max
        self._spi, self._esn, self._iv_split = config.spi, config.esn, config.iv_split
        # A --duplex counter-mode SA receives what its twin sends under the same key and SPI: a packet
        # whose IV is one this host sends (the twin's direction bit, the sequence number below it) is one
        # of ours sent back (`_own` that bit, -1: no check). A peer's IVs carry the other bit (ipsecd) or
        # a counter XORed with a salt (Linux's seqiv), never ours. `_peer_top`: the first IV byte of an
        # ipsecd peer's packets below sequence number 2^56 (the batch check).
        self._own = 1 - config.iv_split if config.duplex and config.iv_split is not None else -1
        self._peer_top = 0 if self._own == 1 else 0x80
        # AEAD with a 16-byte ICV, 8-byte IV and no ESN (AES-GCM, ChaCha20-Poly1305): the fast framing
        # of esp.seal_aead16 / esp.open_aead16 (the same bytes, checks and order as esp.seal / open_packet).
        aead_encrypt = getattr(self.cipher, "full_icv_encrypt", None)
        aead_decrypt = getattr(self.cipher, "full_icv_decrypt", None)
        aead16 = self.auth is None and self.cipher.iv_len == 8 and self.cipher.block == 4
        plain = aead16 and not config.esn
        self._aead_encrypt: Callable[[bytes, bytes, bytes], bytes] | None = aead_encrypt if plain else None
        self._aead_decrypt: Callable[[bytes, bytes, bytes], bytes] | None = aead_decrypt if plain else None
        self._salt: bytes = getattr(self.cipher, "salt", b"")
        # the same two writing into a buffer (cryptography >= 45), for the loops in C (core/_framing.c)
        self._aead_encrypt_into: Callable[[bytes, Any, Any, Any], int] | None = (
            getattr(self.cipher, "full_icv_encrypt_into", None) if plain else None
        )
        self._aead_decrypt_into: Callable[[bytes, Any, Any, Any], int] | None = (
            getattr(self.cipher, "full_icv_decrypt_into", None) if plain else None
        )
        # The same AEAD with or without ESN sealing rows (esp.seal_rows, `encrypt_rows`)
        self._rows_encrypt: Callable[[bytes, bytes, bytes], bytes] | None = aead_encrypt if aead16 else None
        self._rows_encrypt_into: Callable[[bytes, Any, Any, Any], int] | None = (
            getattr(self.cipher, "full_icv_encrypt_into", None) if aead16 else None
        )
        # the same AEAD with ESN: esp.seal_aead16_esn
        self._esn_aead_encrypt = aead_encrypt if aead16 and config.esn else None
        # a lone packet's seal in one C call (esp.seal_aead16 or seal_aead16_esn otherwise)
        self._seal_one = (
            _SEAL_ONE if self._aead_encrypt is not None or self._esn_aead_encrypt is not None else None
        )
        self._split = bool(self._iv_split)
        # A CBC cipher (a random IV of one block, RFC 3602 §2) with an HMAC: esp.seal_cbc and
        # esp.open_cbc_many and esp.seal_rows_cbc, with or without ESN.
        cipher = self.cipher
        self._cbc_hmac = (
            isinstance(self.auth, AuthTransform)
            and not cipher.counter_iv
            and cipher.iv_len > 0
            and cipher.iv_len == cipher.block
        )

    def __repr__(self) -> str:
        c = self.config
        return f"<SA spi={c.spi:#x} {c.src}->{c.dst} {c.cipher}/{c.digest}>"

    def attach(self, store: SequenceStore | None, slot: Slot | None = None) -> None:
        """Commit reservations to `store` and write the journal `slot` with every packet (None: no store,
        no journal)."""
        self.store = store
        self._journal = None if slot is None else slot.counters
        self._sent_at = 0 if slot is None else slot.sent
        self._accepted_at = 0 if slot is None else slot.accepted

    # -- lifetimes -----------------------------------------------------------------------------------------

    def tick(self, now: float, emit: Emit) -> None:
        """Fire time-based soft and hard expiry due at `now`."""
        if self.dead:
            return
        if self._deadline_hard is not None and now >= self._deadline_hard:
            self._expire(EventKind.HARD_EXPIRE, "seconds", now, emit)
        elif self._deadline_soft is not None and now >= self._deadline_soft and not self.soft_fired:
            self.soft_fired = True
            emit(self._event(EventKind.SOFT_EXPIRE, "seconds", now))

    def _event(self, kind: EventKind, limit: str, now: float) -> SAEvent:
        c = self.config
        return SAEvent(kind, c.dst, c.src, c.spi, limit, now)

    def _expire(self, kind: EventKind, limit: str, now: float, emit: Emit) -> None:
        self.dead = f"{kind.value} ({limit})"
        emit(self._event(kind, limit, now))

    def _account(self, size: int, now: float, emit: Emit) -> None:
        self.packets += 1
        self.bytes += size
        self.used = now
        self.settle(now, emit)

    def settle(self, now: float, emit: Emit) -> None:
        """Fire the packet and byte lifetimes the counts have reached (also after counts are restored)."""
        if not self._volume or self.dead:  # no byte or packet lifetime: nothing to check
            return
        soft, hard = self.config.soft, self.config.hard
        if hard and (
            (hard.packets and self.packets >= hard.packets) or (hard.bytes and self.bytes >= hard.bytes)
        ):
            self._expire(
                EventKind.HARD_EXPIRE,
                "packets" if hard.packets and self.packets >= hard.packets else "bytes",
                now,
                emit,
            )
        elif (
            soft
            and not self.soft_fired
            and ((soft.packets and self.packets >= soft.packets) or (soft.bytes and self.bytes >= soft.bytes))
        ):
            self.soft_fired = True
            emit(
                self._event(
                    EventKind.SOFT_EXPIRE,
                    "packets" if soft.packets and self.packets >= soft.packets else "bytes",
                    now,
                )
            )

    def _volume_reserved(self, size: int) -> bool:
        """Whether the store allows counting one more packet of `size` bytes (a lifetime with a packet
        or byte limit only)."""
        packets, nbytes = self.packets + 1, self.bytes + size
        if packets <= self.packets_limit and nbytes <= self.bytes_limit:
            return True
        if self.store is None:
            return False
        try:
            self.packets_limit, self.bytes_limit = self.store.reserve_volume(self, packets, nbytes)
        except OSError:
            return False
        return packets <= self.packets_limit and nbytes <= self.bytes_limit

    def _drop(self, reason: Drop) -> Drop:
        self.drops[reason] += 1
        return reason

    # -- data path -----------------------------------------------------------------------------------------

    def encrypt(self, inner: bytes, next_header: int, now: float, emit: Emit) -> bytes | Drop:
        """The ESP packet for `inner` with the next sequence number, or why it cannot be sent."""
        if self._timed:
            self.tick(now, emit)
        if self.dead:
            # An SA whose sequence numbers ran out keeps counting its refusals as exhausted (one event).
            exhausted = self.seq_out >= self._seq_max
            return self._drop(Drop.SEQ_EXHAUSTED if exhausted else Drop.EXPIRED)
        seq = self.seq_out + 1
        if seq > self._seq_max:
            self.dead = "sequence numbers exhausted"
            emit(self._event(EventKind.SEQ_EXHAUSTED, "sequence", now))
            return self._drop(Drop.SEQ_EXHAUSTED)
        if seq > self.seq_limit and not self._reserved("out", seq):
            return self._drop(Drop.STORE_FAILED)
        if self._volume and not self._volume_reserved(len(inner)):
            return self._drop(Drop.STORE_FAILED)
        self.seq_out = seq
        if self._journal is not None:
            self._journal[self._sent_at] = seq
        aead_encrypt = self._aead_encrypt
        if aead_encrypt is not None:
            seal_one = self._seal_one
            if seal_one is not None and type(inner) is bytes:
                packet = seal_one(aead_encrypt, self._spi, seq, self._split, self._salt, inner, next_header)
            else:
                packet = esp.seal_aead16(
                    self._spi, seq, self._iv_split, aead_encrypt, self._salt, inner, next_header
                )
        elif self._cbc_hmac:
            packet = esp.seal_cbc(self._spi, seq, self.cipher, self.auth, inner, next_header, self._esn)
        elif self._esn_aead_encrypt is not None:
            seal_one = self._seal_one
            if seal_one is not None and type(inner) is bytes:
                packet = seal_one(
                    self._esn_aead_encrypt, self._spi, seq, self._split, self._salt, inner, next_header, True
                )
            else:
                packet = esp.seal_aead16_esn(
                    self._spi, seq, self._iv_split, self._esn_aead_encrypt, self._salt, inner, next_header
                )
        else:
            packet = esp.seal(
                self._spi, seq, self._esn, self.cipher, self.auth, inner, next_header, iv_split=self._iv_split
            )
        if self._volume:
            self._account(len(inner), now, emit)
        else:  # _account() inlined for the common case of no volume lifetime (bench/core.py)
            self.packets += 1
            self.bytes += len(inner)
            self.used = now
        return packet

    @property
    def seals_rows(self) -> bool:
        """Whether `encrypt_rows` can take this SA's packets (AEAD with a 16-byte ICV, or CBC with an
        HMAC, with or without ESN; no volume lifetime)."""
        return (self._rows_encrypt is not None or self._cbc_hmac) and not self._volume

    def encrypt_rows(self, groups: list[tuple[Any, int]], now: float, emit: Emit) -> list[bytes] | None:
        """`encrypt` for inner packets laid out as rows, each followed by its `esp.block_trailer` (for
        AEAD, `esp.aead16_trailer`): per (array, inner length) group, in order. None, with nothing used
        up, where `encrypt` must decide packet by packet (an SA that is not `seals_rows`, dead, or at
        the end of its sequence numbers or reservation)."""
        encrypt = self._rows_encrypt
        if not self.seals_rows:
            return None
        if self._timed:
            self.tick(now, emit)
        if self.dead:
            return None
        count = sum(len(rows) for rows, _ in groups)
        first, last = self.seq_out + 1, self.seq_out + count
        if last > self._seq_max:
            return None
        if last > self.seq_limit and not self._reserved("out", last):
            return None
        self.seq_out = last  # before anything is sealed (and the journal, before anything is sent)
        if self._journal is not None:
            self._journal[self._sent_at] = last
        out: list[bytes] = []
        for rows, inner_len in groups:
            if encrypt is not None:
                out += esp.seal_rows(
                    self._spi,
                    first,
                    self._iv_split,
                    encrypt,
                    self._salt,
                    rows,
                    self._rows_encrypt_into,
                    self._esn,
                )
            else:
                out += esp.seal_rows_cbc(self._spi, first, self.cipher, self.auth, rows, self._esn)
            first += len(rows)
            self.bytes += len(rows) * inner_len
        self.packets += count
        self.used = now
        return out

    def decrypt_many(
        self, packets: list[bytes], now: float, emit: Emit, admit: Admit | None = None
    ) -> tuple[list[bytes | tuple[bytes, int] | Drop], int]:
        """`decrypt` of each packet, in order, with the same checks, drops and counters, except that a
        whole inner IP packet may come as its bytes alone (as `esp.open_aead16_many` gives them); and
        how many results are not such bytes. A batch of new sequence numbers in order, as nearly always
        (also below the top, when a later packet read ahead was opened first: `ReplayWindow.check_run`),
        has its window checked before the ICVs and moved after them, and the journal written, once for
        all: AEAD with a 16-byte ICV, no ESN (`esp.open_aead16_many`), or CBC with an HMAC, with or
        without ESN (`esp.open_cbc_many`). With ESN, each packet's high 32 bits are inferred from the
        window before the batch (RFC 4303 §A2.1); a batch whose first and last infer different ones goes
        one by one."""
        decrypt, replay = self._aead_decrypt, self.replay
        cbc = decrypt is None and self._cbc_hmac
        first = last = -1  # the batch's sequence numbers when they are first, first + 1, ..., last
        if (decrypt is not None or cbc) and packets and not (self._volume or self._timed or self.dead):
            first, last = _in_order(packets)
            if self._esn and first >= 0:  # the full numbers, all with the same high 32 bits, or none:
                # across a run of low bits in order the inferred high bits change once at most (RFC 4303
                # §A2.1), so ends that agree mean every number between them agrees
                first, last = replay.infer(first), replay.infer(last)
                if last >> 32 != first >> 32:
                    first = last = -1
        if not (
            first >= 0
            and replay.check_run(first, last)
            and last <= self.in_limit
            and (
                self._own < 0
                or set(map(_IV_FIRST, packets)) == {self._peer_top}
                or not any(map(self._is_own, packets))
            )
        ):
            one_by_one: list[bytes | tuple[bytes, int] | Drop] = [
                self.decrypt(packet, now, emit, admit) for packet in packets
            ]
            return one_by_one, len(one_by_one)
        if decrypt is not None:
            opened, others = esp.open_aead16_many(packets, decrypt, self._salt, self._aead_decrypt_into)
        else:
            opened, others = esp.open_cbc_many(
                packets, self.cipher, self.auth, first >> 32 if self._esn else None
            )
        if not others and admit is None:
            replay.accept_run(first, last)
            whole: list[bytes] = opened  # type: ignore[assignment]  # all of them bare inner packets (no cast call)
            self._received(len(whole), sum(map(len, whole)), now)
            return opened, 0
        accepted = nbytes = 0
        for i, result in enumerate(opened):  # a forged or damaged one
            if isinstance(result, Drop):  # among them, or a policy to check: one by one
                self._drop(result)
                continue
            if admit is not None:
                refused = (
                    admit(result, NH_IPV4 if result[0] >> 4 == 4 else NH_IPV6)
                    if isinstance(result, bytes)
                    else admit(*result)
                )
                if refused is not None:
                    opened[i] = refused
                    others += isinstance(result, bytes)
                    continue
            replay.accept(first + i)
            accepted += 1
            nbytes += len(result) if isinstance(result, bytes) else len(result[0])
        if accepted:
            self._received(accepted, nbytes, now)
        return opened, others

    def _is_own(self, packet: bytes) -> bool:
        """Whether `packet`'s IV is one this host's twin SA sends: its direction bit, and the low 32 bits
        the sequence number in the header (RFC 4106 §3.1: the IV is the counter)."""
        return len(packet) >= 16 and packet[8] >> 7 == self._own and packet[12:16] == packet[4:8]

    def reserve_ahead(self, direction: Direction, margin: int) -> bool:
        """Have the store reserve past the limit of `direction` ("out": to send, "in": to accept) now,
        while no packet waits on its commit, when at most `margin` numbers remain before that limit;
        whether it did. To send, the reservation starts past the limit, where the next packet's would
        (as many commits as in the packets' path); to accept, from the next number, as `reserve` counts
        a block (a crash treats as seen at most what a reservation in a packet's path would). A dead SA,
        one without a store, or one whose limit is its last number reserves nothing."""
        if self.store is None or self.dead:
            return False
        if direction == "out":
            position, limit = self.seq_out, self.seq_limit
        else:
            position, limit = self.replay.top, self.in_limit
        if limit >= self.config.seq_max or limit - position > margin:
            return False
        return self._reserved(direction, (limit if direction == "out" else position) + 1)

    def _reserved(self, direction: Direction, seq: int) -> bool:
        """Whether the store reserved sequence numbers up to `seq` ("out": to send, "in": to accept);
        the new limit is kept. False without a store answer (no store, a refusal, a failed write)."""
        if self.store is None:
            return False
        try:
            limit = self.store.reserve(self, direction, seq)
        except OSError:
            return False
        if direction == "out":
            self.seq_limit = limit
        else:
            self.in_limit = limit
        return seq <= limit

    def _received(self, count: int, nbytes: int, now: float) -> None:
        """Count `count` packets of `nbytes` accepted, and journal the window's top."""
        if self._journal is not None:
            self._journal[self._accepted_at] = self.replay.top
        self.packets += count
        self.bytes += nbytes
        self.used = now

    def decrypt(
        self, packet: bytes, now: float, emit: Emit, admit: Admit | None = None
    ) -> tuple[bytes, int] | Drop:
        """(inner packet, next header) from an ESP packet for this SA, or why it was dropped. `admit`:
        what the inner packet must pass, after the ICV and before the window moves (its Drop is
        returned, not counted here)."""
        if self._timed:
            self.tick(now, emit)
        if self.dead:
            return self._drop(Drop.EXPIRED)
        if len(packet) < esp.HEADER_LEN:
            return self._drop(Drop.MALFORMED)
        if self._own >= 0 and self._is_own(packet):
            return self._drop(Drop.WRONG_DIRECTION)  # one of ours sent back: before the ICV
        replay = self.replay
        seq = _SEQ_LO.unpack_from(packet, 4)[0]
        if self._esn:
            seq = replay.infer(seq)
        if not replay.check(seq):  # RFC 4303 §3.4.3: before the ICV ...
            return self._drop(Drop.REPLAYED)
        aead_decrypt = self._aead_decrypt
        if aead_decrypt is None:
            result = esp.open_packet(packet, seq, self._esn, self.cipher, self.auth)
        else:
            result = esp.open_aead16(packet, aead_decrypt, self._salt)
        if isinstance(result, Drop):
            return self._drop(result)
        if admit is not None:
            refused = admit(*result)
            if refused is not None:
                return refused
        if seq > self.in_limit and not self._reserved("in", seq):
            return self._drop(Drop.STORE_FAILED)
        if self._volume and not self._volume_reserved(len(result[0])):
            return self._drop(Drop.STORE_FAILED)
        self.replay.accept(seq)  # ... and the window moves only after it passed every check
        if self._journal is not None:
            self._journal[self._accepted_at] = self.replay.top
        if self._volume:
            self._account(len(result[0]), now, emit)
        else:  # _account() inlined, as in encrypt()
            self.packets += 1
            self.bytes += len(result[0])
            self.used = now
        return result
