"""tests/support/icmp.py: the counters parsed from /proc/net/snmp and snmp6, and when a ping is tried
again."""

from __future__ import annotations

import pytest

from tests.support.icmp import EchoCounters, answered, parse

SNMP = """\
Ip: Forwarding DefaultTTL
Ip: 1 64
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs InTimeExcds InParmProbs InSrcQuenchs InRedirects InEchos \
InEchoReps InTimestamps InTimestampReps InAddrMasks InAddrMaskReps OutMsgs OutErrors OutRateLimitGlobal \
OutRateLimitHost OutDestUnreachs OutTimeExcds OutParmProbs OutSrcQuenchs OutRedirects OutEchos OutEchoReps \
OutTimestamps OutTimestampReps OutAddrMasks OutAddrMaskReps
Icmp: 15 0 0 5 0 0 0 0 10 0 0 0 0 0 6 9 0 0 5 0 0 0 0 0 1 0 0 0 0
IcmpMsg: InType3 OutType3
IcmpMsg: 5 5
"""

SNMP6 = """\
Icmp6InMsgs                     	12
Icmp6OutErrors                  	2
Icmp6InEchos                    	7
Icmp6OutEchoReplies             	5
"""


def test_parse_ipv4_and_ipv6() -> None:
    assert parse(SNMP, "", 4) == EchoCounters(in_echos=10, out_echo_reps=1, out_errors=9)
    assert parse("", SNMP6, 6) == EchoCounters(in_echos=7, out_echo_reps=5, out_errors=2)
    assert EchoCounters(10, 4, 6) - EchoCounters(3, 2, 1) == EchoCounters(7, 2, 5)


@pytest.mark.parametrize(
    ("results", "errors", "expected", "pings"),
    [
        ([True], [0, 0], True, 1),  # answered at once
        ([False, True], [0, 2, 2, 2], True, 2),  # the replier failed to send: tried again
        ([False, True], [0, 0], False, 1),  # lost, and not by the replier: not tried again
        ([False, False, False], [0, 1, 1, 2, 2, 3], False, 3),  # the replier failing every time: `tries`
    ],
)
def test_answered_tries_again_only_when_the_replier_failed(
    results: list[bool], errors: list[int], expected: bool, pings: int
) -> None:
    calls = iter(results)
    reads = iter(errors)
    done: list[bool] = []

    def ping() -> bool:
        done.append(next(calls))
        return done[-1]

    assert answered(ping, lambda: EchoCounters(0, 0, next(reads)), tries=3, pause=0) is expected
    assert len(done) == pings
