"""When the data plane's loop may sleep: bounded busy polling (`ipsecd --spin-us`) and keeping the data
path warm between sparse packets (`--warm-us`).

After a loop turn that served something, the loop keeps polling without sleeping for a budget of
microseconds: what arrives within it is taken without a wake-up. Past the budget the loop sleeps in
`epoll_wait` again. A turn after the loop found nothing to do, or slept, is a *woken* turn: the sources
read once and leave the rest (level-triggered epoll reports it in the next turn), which spares an idle
packet the read that would only have said "nothing more".

On a virtual machine the caches go cold within a few milliseconds of idleness, and a packet then takes
several times as long through the daemon as one right after another. With a warm period, for
WARM_WINDOW seconds after the last packet the loop sleeps at most that period, and each time it wakes to
nothing it runs a rehearsal (`Rehearsal`): one packet sealed and opened through a private engine, never
sent, so the next real packet finds the code and the cipher warm. The private SAs use the algorithms
and the encapsulation of the SA that carried the most traffic in the last second (`in_use`,
`Rehearsal.follow`): AES-GCM over UDP until then. Over UDP, with a loopback socket of its own (`wire`),
the sealed datagram goes out and back in through it (`send_one`, `recv_batch`), so the socket code a
real datagram runs, the daemon's and the kernel's, is warm too; it never leaves the host.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

from ..core.engine import Engine, packed
from ..core.plane import Burst
from ..core.sa import NAT_T_PORT, Limits, SAConfig, SecurityAssociation, UdpEncap
from ..core.tunnel import Tunnel
from .kernel import UdpEdge

MAX_SPIN_US = 100_000  # --spin-us upper bound: a tenth of a second of polling per burst at most
MIN_WARM_US, MAX_WARM_US = 100, 100_000  # --warm-us bounds (0 is off)
SLEEP = 0.5  # longest sleep in epoll_wait (seconds): the once-a-second work is never later than this
SLEPT = 50e-6  # a poll that took this long slept: one with something ready returns in a few us
WARM_WINDOW = 1.0  # seconds after the last packet during which the data path is kept warm
REHEARSALS = 1_000_000  # rehearsals before the private engines are made afresh (new key, sequence 1)
STALE = 8  # datagrams read at most from the loopback socket per rehearsal, looking for its own
MISSED = 64  # rehearsals in a row whose datagram did not come back before the loopback socket is let go
LOOPBACK = bytes((127, 0, 0, 1))  # where the wire socket sends to: itself (RFC 1122 §3.2.1.3)


class Spin:
    """When the loop may sleep: `timeout` before each poll, `turn` after it (`clock` is monotonic)."""

    def __init__(
        self, budget: float, clock: Callable[[], float] = time.monotonic, *, warm: float = 0.0
    ) -> None:
        if not 0 <= budget <= MAX_SPIN_US / 1e6:
            raise ValueError(f"spin budget out of range: {budget!r} s")
        if warm and not MIN_WARM_US / 1e6 <= warm <= MAX_WARM_US / 1e6:
            raise ValueError(f"warm period out of range: {warm!r} s")
        self.budget = budget
        self.warm = warm
        self.clock = clock
        self.until = 0.0  # polling without sleep goes on until this reading of `clock`
        self.last = -WARM_WINDOW  # the last busy turn
        self.idle = True  # the last poll found nothing ready: the next ready source wakes the loop
        self.asked = 0.0  # when `timeout` was last asked (before a poll)

    def spinning(self) -> bool:
        """Whether the budget of the last busy turn still runs."""
        return self.budget > 0 and self.clock() < self.until

    def quiet(self, seconds: float) -> bool:
        """Whether no poll found anything for `seconds`."""
        return self.clock() - self.last >= seconds

    def warming(self) -> bool:
        """Whether the data path is kept warm now (a warm period, a packet within WARM_WINDOW)."""
        return self.warm > 0 and self.clock() < self.last + WARM_WINDOW

    def timeout(self, longest: float = SLEEP) -> float:
        """How long the next poll may wait: 0 while spinning, at most the warm period while warming,
        else `longest`."""
        now = self.asked = self.clock()
        if self.budget > 0 and now < self.until:
            return 0.0
        return min(self.warm, longest) if self.warm > 0 and now < self.last + WARM_WINDOW else longest

    def woken(self) -> bool:
        """Whether the poll since `timeout` woke the loop: the poll before it found nothing, or this one
        took SLEPT or longer (it slept, with nothing ready when it began)."""
        return self.idle or self.clock() - self.asked >= SLEPT

    def turn(self, served: int) -> bool:
        """Note a poll's outcome (`served` ready sources restart the budget); whether to rehearse now:
        the poll found nothing, while warming and past the spin budget."""
        self.idle = not served
        if served:
            self.last = self.clock()
            self.until = self.last + self.budget
            return False
        return self.warming() and not self.spinning()


Kind = tuple[str | None, int, str | None, int, int | None, bool, bool]  # what `kind` tells apart
GCM_UDP: Kind = ("aes-gcm", 20, None, 0, None, True, False)  # AES-128 key and salt (RFC 4106 §8.1)


def kind(config: SAConfig) -> Kind:
    """What a rehearsal copies of an SA: cipher and key length, digest and key length, ICV bits, whether
    ESP goes in UDP, ESN. Never the keys."""
    return (config.cipher, len(config.cipher_key), config.digest, len(config.digest_key),
            config.digest_bits, config.encap is not None, config.esn)  # fmt: skip


class Rehearsal:
    """One packet through a private pair of engines (AES-128-GCM over ESP-in-UDP, or what `follow` says):
    sealed by one, opened by the other, never sent, the short way a packet read alone takes
    (`core.lone`; the batch pipelines only where it declines). Its keys are random and its own; its
    SAs are in no SAD of the daemon. `wire`: a loopback UDP socket of its own (`Kernel.open_loopback`)
    through which an ESP-in-UDP rehearsal sends its datagram to itself and reads it back (closed and
    let go at its first failure; without it, or for raw ESP, the datagram is handed over in memory)."""

    PACKET = bytes([0x45, 0, 0, 84, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]) + bytes(64)

    def __init__(self, wire: UdpEdge | None = None) -> None:
        self.count = 0
        self.wire = wire
        self.looped = 0  # datagrams that went through `wire` and came back as sent
        self.missed = 0  # rehearsals in a row whose datagram did not come back
        self.kind = GCM_UDP
        self._build()

    def follow(self, config: SAConfig) -> bool:
        """Rehearse with the algorithms and encapsulation of `config` from now on (fresh keys of the same
        lengths); whether that changed anything. One the private engines refuse is not followed."""
        wanted = kind(config)
        if wanted == self.kind:
            return False
        previous = self.kind
        self.kind = wanted
        try:
            self._build()
        except ValueError:  # an SAError: kept as it was (the daemon's SA passed the same checks)
            self.kind = previous
            self._build()
            return False
        return True

    def _build(self) -> None:
        cipher, cipher_len, digest, digest_len, bits, udp, esn = self.kind
        config = SAConfig(
            0x1000, "192.0.2.2", "192.0.2.1", cipher, os.urandom(cipher_len), digest, os.urandom(digest_len),
            bits, esn=esn, encap=UdpEncap() if udp else None, soft=Limits(), hard=Limits(),
        ).validated()  # fmt: skip
        self.kind = kind(config)  # as validated (the ICV bits filled in)
        self.udp = udp
        self.sender = _engine(config, "192.0.2.1", "192.0.2.2")
        self.receiver = _engine(config, "192.0.2.2", "192.0.2.1")
        # The sender's port, as NAT traversal learns it from a daemon's own outbound SA (the receiver has
        # none): every datagram takes the short way (core.lone), as a ping's does.
        self.receiver.nat.ports[(packed("192.0.2.1"), packed("192.0.2.2"))] = NAT_T_PORT

    def __call__(self, now: float) -> int:
        """Run one packet through; how many the receiver accepted (1)."""
        self.count += 1
        if self.count % REHEARSALS == 0:
            self._build()
        accepted = self.receiver.rx_accepted
        sender, receiver, sport = self.sender, self.receiver, NAT_T_PORT if self.udp else None
        sent = sender.send_one("t0", self.PACKET, now)  # the lone packet's short way, as a ping takes it
        for out in sender.send_batch("t0", [self.PACKET], now) if sent is False else [sent]:
            if not isinstance(out, Burst):
                continue
            payloads = out.payloads
            if self.udp and self.wire is not None and len(payloads) == 1:
                payloads = self._loop(payloads)
            if receiver.receive_one(out.src, out.dst, payloads[0], now, 0, sport) is False:
                receiver.receive_batch(out.src, out.dst, payloads, now, 0, udp=self.udp, sport=sport)
        return self.receiver.rx_accepted - accepted

    def _loop(self, payloads: list[bytes]) -> list[bytes]:
        """The one datagram of `payloads` sent to the wire socket's own port and read back, as the
        daemon sends (`send_one`, DF set) and receives (`recv_batch`) one; `payloads` itself when it
        did not come back within STALE reads (the socket closed and let go when sending or reading
        failed, or after MISSED such rehearsals in a row)."""
        wire = self.wire
        assert wire is not None
        try:
            error = wire.send_one(LOOPBACK, wire.port, payloads[0], 0, 64, True, None, None)
            if error is not None:
                raise error
            for _ in range(STALE):  # anything else read first is dropped unopened (a stranger's, a late one)
                got = wire.recv_batch()
                if got is None:
                    break
                if got[1] == payloads:
                    self.looped += 1
                    self.missed = 0
                    return got[1]
        except OSError:
            self.close()
            return payloads
        self.missed += 1
        if self.missed >= MISSED:  # a firewall that drops it, say: not worth its system calls
            self.close()
        return payloads

    def close(self) -> None:
        """Close the wire socket, if any (the rehearsal goes on in memory)."""
        if self.wire is not None:
            self.wire.close()
            self.wire = None


def in_use(engine: Engine, seen: dict[str, int]) -> SAConfig | None:
    """The configuration of the SA the busiest tunnel sends with: the most packets either way since the
    last call (`seen` keeps each tunnel's count between calls); None when none moved any."""
    best, most = None, 0
    for tunnel in engine.tunnels:
        stats = engine.stats_for(tunnel.name)
        total = stats.tx_packets + stats.rx_packets
        moved = total - seen.get(tunnel.name, 0)
        seen[tunnel.name] = total
        if moved > most:
            best, most = tunnel, moved
    sa = engine.sa_for(best) if best is not None else None
    return sa.config if sa is not None else None


def _engine(config: SAConfig, local: str, remote: str) -> Engine:
    """An engine with tunnel t0 local -> remote and the one SA 192.0.2.1 -> 192.0.2.2 of `config`
    (outbound for the sender, inbound for the receiver), all its own."""
    engine = Engine()
    engine.tunnels.add(Tunnel("t0", local, remote))
    engine.sad.add(SecurityAssociation(dataclasses.replace(config), 0.0))
    return engine
