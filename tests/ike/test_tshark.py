"""tshark decodes and decrypts what `Ike` sends, with the keys of KeysForTest (an independent oracle for
the SK payload, RFC 7296 §3.14, RFC 5282, and for the key derivation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw
from scapy.utils import wrpcap

from ipsec_tunnel.ike import KeysForTest
from tests.support import tshark
from tests.support.ike_tshark import decode_ike

from .pair import Pair


@pytest.mark.parametrize(
    "proposal", ["aes128gcm16-prfsha256-x25519", "aes256-sha256-modp2048", "aes256gcm16-prfsha384-ecp256"]
)
def test_tshark_decrypts_the_exchanges(tmp_path: Path, proposal: str) -> None:
    why = tshark.available()
    if why is not None:
        pytest.skip(why)
    p = Pair({"proposals": (proposal,), "encap_always": True}, {"proposals": (proposal,)})
    p.a.initiate("tob", 0.0)
    p.pump()
    p.a.terminate("tob", 0.0)
    p.pump()
    packets = []
    for _who, s in p.wire:
        data = b"\0\0\0\0" + s.data if 4500 in (s.local[1], s.remote[1]) else s.data  # RFC 3948 §2.2
        packets.append(
            IP(src=s.local[0], dst=s.remote[0]) / UDP(sport=s.local[1], dport=s.remote[1]) / Raw(data)
        )
    pcap = tmp_path / "ike.pcap"
    wrpcap(str(pcap), packets)
    keys: list[KeysForTest] = p.of("a", KeysForTest)
    out = decode_ike(pcap, keys)
    encrypted = len(p.wire) - 2  # all but the IKE_SA_INIT pair
    assert out.count("Decrypted Data") == encrypted == 4
    for payload in ("Identification - Initiator", "Identification - Responder", "Authentication (39)",
                    "INITIAL_CONTACT", "Traffic Selector - Initiator", "Payload: Delete (42)"):  # fmt: skip
        assert payload in out, payload
    if "gcm" not in proposal:
        assert out.count("[correct]") == encrypted and "[incorrect]" not in out
    assert "Malformed" not in out
    # without the keys, nothing is decrypted
    assert "Decrypted Data" not in decode_ike(pcap, [])
