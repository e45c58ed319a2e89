"""tshark, an independent decoder, reads what ipsecd and charon exchanged: the IKE messages decrypted with
the keys ipsecd writes only under the test-only `--ike-keys-for-test`, and the ESP-in-UDP that follows
decrypted and authenticated with the CHILD SA keys; nothing malformed."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsec_tunnel.ike import KeysForTest
from tests.support import tshark
from tests.support.ike_tshark import decode_ike

from .charon_peer import PSK, IkePair, charon_missing

pytestmark = pytest.mark.root


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[IkePair, Path]]:
    reason = charon_missing() or tshark.available()
    if reason:
        pytest.skip(reason)
    keys = tmp_path / "keys.jsonl"
    with IkePair(daemon_args=("--ike-keys-for-test", str(keys))) as p:
        yield p, keys


def test_tshark_decodes_ike_and_esp(keyed: tuple[IkePair, Path], tmp_path: Path) -> None:
    p, keys = keyed
    pcap = tmp_path / "wire.pcap"
    dump = p.d.popen(["tcpdump", "-n", "-U", "-i", p.links[0], "-w", str(pcap), "udp"])
    time.sleep(1.0)
    p.ike_add()
    p.load_charon()
    p.charon.swanctl("--initiate", "--child", "net", "--timeout", "15")
    p.wait("established", lambda: p.charon_up() and p.ipsecd_up())
    p.ping_both(3)
    p.d.adm("ike", "down", "gw")
    p.wait("down", lambda: "ESTABLISHED" not in p.charon.sas())
    time.sleep(2.0)  # tcpdump stops at SIGINT without reading what the kernel still holds for it
    dump.send_signal(signal.SIGINT)
    dump.wait(10)
    records = [json.loads(line) for line in keys.read_text().splitlines()]
    ike = [
        KeysForTest(r["peer"], r["spi_i"], r["spi_r"], r["encr"], r["integ"], bytes.fromhex(r["sk_ei"]),
                    bytes.fromhex(r["sk_er"]), bytes.fromhex(r["sk_ai"]), bytes.fromhex(r["sk_ar"]))
        for r in records if r["kind"] == "ike"
    ]  # fmt: skip
    assert len(ike) == 1
    out = decode_ike(pcap, ike)
    assert out.count("Decrypted Data") >= 4  # IKE_AUTH and INFORMATIONAL (DELETE), both ways
    for payload in ("Identification - Initiator", "Identification - Responder",
                    "Traffic Selector - Initiator", "Payload: Delete (42)"):  # fmt: skip
        assert payload in out, payload
    assert "Malformed" not in out
    sas = [
        tshark.EspSa(r["src"], r["dst"], r["spi"], f"aes-gcm/{r['digest_bits'] // 8}",
                     bytes.fromhex(r["cipher_key"]))
        for r in records if r["kind"] == "esp"
    ]  # fmt: skip
    assert len(sas) == 2
    rows = tshark.decode(pcap, sas, ["esp.spi", "icmp.type"], "esp && icmp")
    assert len(rows) >= 12, rows  # 3 pings each way: request and reply, decrypted
    assert {int(r[0], 16) for r in rows} == {sa.spi for sa in sas}
    assert PSK not in keys.read_text()
