"""Echo replies a kernel failed to send, apart from echo requests a tunnel lost.

A current Linux kernel (6.18 here) sends its ICMP replies through per-CPU sockets shared by every
network namespace of the machine. While one namespace's replies wait in a queue (a qdisc before a slow
device, say), they count against that socket's send buffer; once it is full, the replies of every other
namespace on that CPU fail: the kernel counts each as its Icmp[6]OutErrors and sends nothing. Seen here:
a flood ping whose replies waited in a 100 kbit/s tbf qdisc in one namespace made 9 of 10 echo replies
fail in another that had only a loopback device. So another test's namespace can make a ping that
crossed the tunnel whole go unanswered. A test tells the two apart: a ping whose attempt saw such
failures at the replying end is tried again (`answered`), or every request and reply is accounted for
at that end (`counters`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.support.netns import Netns

__all__ = ["EchoCounters", "all_answered", "answered", "counters"]


@dataclass(frozen=True)
class EchoCounters:
    """A namespace's ICMP (or ICMPv6) counters: echo requests received, echo replies sent, and
    messages it failed to send."""

    in_echos: int
    out_echo_reps: int
    out_errors: int

    def __sub__(self, other: EchoCounters) -> EchoCounters:
        return EchoCounters(
            self.in_echos - other.in_echos,
            self.out_echo_reps - other.out_echo_reps,
            self.out_errors - other.out_errors,
        )


def parse(snmp: str, snmp6: str, family: int) -> EchoCounters:
    """The counters, from /proc/net/snmp (IPv4: an `Icmp:` line of names, then one of values) or
    /proc/net/snmp6 (IPv6: one name and value per line)."""
    if family == 6:
        words = snmp6.split()
        values = dict(zip(words[::2], words[1::2], strict=False))
        return EchoCounters(
            int(values["Icmp6InEchos"]), int(values["Icmp6OutEchoReplies"]), int(values["Icmp6OutErrors"])
        )
    names, numbers = (line.split()[1:] for line in snmp.splitlines() if line.startswith("Icmp:"))
    icmp = dict(zip(names, map(int, numbers), strict=True))
    return EchoCounters(icmp["InEchos"], icmp["OutEchoReps"], icmp["OutErrors"])


def counters(ns: Netns, family: int = 4) -> EchoCounters:
    """`ns`'s kernel's counters for `family` (4 or 6) now."""
    if family == 6:
        return parse("", ns.check(["cat", "/proc/net/snmp6"]), 6)
    return parse(ns.check(["cat", "/proc/net/snmp"]), "", 4)


def answered(
    ping: Callable[[], bool], replier: Callable[[], EchoCounters], tries: int = 5, pause: float = 0.5
) -> bool:
    """Whether `ping()` got every reply. An attempt that did not is tried again (up to `tries` in all)
    only when the replying kernel's OutErrors rose during it."""
    for attempt in range(tries):
        before = replier()
        if ping():
            return True
        if (replier() - before).out_errors == 0 or attempt == tries - 1:
            return False
        time.sleep(pause)
    return False


def all_answered(src: Netns, dst: str, replier: Netns, count: int, *options: str) -> bool:
    """Whether `count` pings from `src` to `dst` (`options` before it: -I, -s, -M ...) were all
    answered, each attempt run as `answered` runs it, with `replier` the namespace whose kernel replies."""
    family = 6 if ":" in dst else 4
    argv = ["ping", "-n", "-c", str(count), *options, dst]
    return answered(
        lambda: f" {count} received" in src.run(argv, timeout=count * 2 + 30).stdout,
        lambda: counters(replier, family),
    )
