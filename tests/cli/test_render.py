"""The tables and texts ipsecadm prints."""

from __future__ import annotations

from ipsec_tunnel.cli import render
from ipsec_tunnel.core.drops import RECEIVE_DROPS, SEND_DROPS

from .conftest import SAMPLE_SA, SAMPLE_STATS, SAMPLE_TUNNEL

GCM_SA = {
    **SAMPLE_SA, "spi": 0x2000, "cipher": "aes-gcm", "cipher_bits": 128, "aead": True, "digest": None,
    "digest_bits": 96, "digest_key_bits": 0, "replay_window": 0, "esn": True,
    "encap": {"sport": 4500, "dport": 4500, "keepalive": 20},
    "soft": {"bytes": 900 << 20, "packets": 0, "seconds": 3000},
    "hard": {"bytes": 1 << 30, "packets": 0, "seconds": 3600}, "state": "dying",
}  # fmt: skip


def _rows(text: str) -> list[list[str]]:
    return [line.split("  ") for line in text.splitlines()]


def _cells(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("  ") if c.strip()] for line in text.splitlines()]


def test_table_aligns_columns() -> None:
    text = render.table(["A", "Long header"], [["wide cell", "x"], ["y", "z"]])
    assert text == "A          Long header\nwide cell  x\ny          z\n"


def test_sa_table_original_columns() -> None:
    header, row = _cells(render.sa_table([SAMPLE_SA]))
    assert header == ["Destination", "Source", "SPI", "Cipher/bits", "Digest-HMAC/bits", "Replay", "ESN",
                      "Encap", "State"]  # fmt: skip
    assert row == ["5.6.7.8", "1.2.3.4", "0x1000", "des_ede3-cbc/192", "sha1-96/160", "128", "no", "-",
                   "mature"]  # fmt: skip


def test_sa_table_aead_lifetimes_encap() -> None:
    header, first, second = _cells(render.sa_table([SAMPLE_SA, GCM_SA]))
    assert header[-1] == "Lifetime soft:hard"
    assert first[-1] == "-"
    assert header[8] == "Keepalive" and first[8] == "-"
    assert second == ["5.6.7.8", "1.2.3.4", "0x2000", "aes-gcm/128", "icv-96", "off", "yes", "udp:4500:4500",
                      "20s", "dying", "bytes=900M:1G,seconds=50m:1h"]  # fmt: skip


def test_sa_table_keepalive_column() -> None:
    """Issue 12: an ESP-in-UDP SA shows its NAT-keepalive interval (off: 0); without UDP SAs no column."""
    off = {**GCM_SA, "encap": {"sport": 4500, "dport": 4500, "keepalive": 0}}
    header, row = _cells(render.sa_table([off]))
    assert (header[8], row[8]) == ("Keepalive", "off")
    assert "Keepalive" not in render.sa_table([SAMPLE_SA])


def test_sa_table_without_aead_flag_asks_the_registry() -> None:
    sa = {k: v for k, v in GCM_SA.items() if k != "aead"}
    assert render.digest_text(sa) == "icv-96"


def test_auth_only_and_null_cipher() -> None:
    auth_only = {**SAMPLE_SA, "cipher": None, "cipher_bits": 0}
    assert render.cipher_text(auth_only) == "-"
    assert render.cipher_text({**SAMPLE_SA, "cipher": "null", "cipher_bits": 0}) == "null"
    assert render.digest_text({**SAMPLE_SA, "cipher": None, "digest": None, "digest_bits": 0}) == "-"


def test_an_sa_without_integrity_is_marked() -> None:
    """The seed's SA (3DES, no digest): the digest column says so, whether ipsecd says it or not."""
    enc_only = {**SAMPLE_SA, "digest": None, "digest_bits": 0, "digest_key_bits": 0, "integrity": False}
    assert render.digest_text(enc_only) == "NO-INTEGRITY"
    del enc_only["integrity"]
    assert render.digest_text(enc_only) == "NO-INTEGRITY"
    _header, row = _cells(render.sa_table([enc_only]))
    assert "NO-INTEGRITY" in row
    assert "NO-INTEGRITY" not in render.sa_table([SAMPLE_SA])


def test_sa_table_stats() -> None:
    sa = {**SAMPLE_SA, "stats": {"packets": 3, "bytes": 300, "seq_out": 3, "replay_top": 9,
                                 "drops": {"replayed": 2, "auth_failed": 1}}}  # fmt: skip
    header, row = _cells(render.sa_table([sa], stats=True))
    assert header[-5:] == ["Packets", "Bytes", "Seq-out", "Replay-top", "Drops"]
    assert row[-5:] == ["3", "300", "3", "9", "replayed=2, authentication failed=1"]  # the labels of `stats`


def test_tunnel_table() -> None:
    t2 = {**SAMPLE_TUNNEL, "name": "ipsec2", "spi": 0x3000, "nextdev": "eth1", "peer_nets": ["10.0.2.0/24",
          "10.0.3.0/24"], "mtu": None, "sa": None}  # fmt: skip
    header, one, two = _cells(render.tunnel_table([SAMPLE_TUNNEL, t2]))
    assert header == ["Name", "Local", "Remote", "SPI", "Next device", "MTU", "SA", "Peer nets"]
    assert one == ["ipsec1", "1.2.3.4", "5.6.7.8", "any", "-", "1419", "0x1000", "any"]
    assert two == ["ipsec2", "1.2.3.4", "5.6.7.8", "0x3000", "eth1", "-", "-", "10.0.2.0/24,10.0.3.0/24"]


def test_stats_text_has_the_seed_counters_in_order_then_the_new_ones() -> None:
    text = render.stats_text(SAMPLE_STATS)
    labels = [line.rsplit(None, 1)[0].strip() for line in text.splitlines() if line.startswith("  ")]
    receive = labels[: labels.index("accepted", 1)]
    assert receive[:6] == ["accepted", "dropped, unknown SA", "dropped, authentication failed",
                           "dropped, bad padding", "dropped, not tunnel mode",
                           "dropped, no matching tunnel"]  # fmt: skip
    assert receive[-1] == "dropped, other"
    assert {"dropped, replayed", "dropped, expired", "dropped, malformed"} <= set(receive)
    assert len(receive) == 1 + len(RECEIVE_DROPS)
    send = labels[labels.index("accepted", 1) :]
    assert send[:4] == ["accepted", "dropped, unknown SA", "dropped, no route", "dropped, packet too big"]
    assert send[-1] == "dropped, other"
    assert len(send) == 1 + len(SEND_DROPS)
    assert len({len(line) for line in text.splitlines() if line[-1].isdigit()}) == 1  # values right-aligned
    lines = text.splitlines()
    assert lines[-3].startswith("NAT keepalives received") and lines[-3].split()[-1] == "5"
    assert lines[-2].startswith("NAT keepalives sent") and lines[-1].split()[-1] == "6"


def test_stats_text_shows_unknown_reasons_from_a_newer_daemon() -> None:
    text = render.stats_text({"receive": {"accepted": 1, "quantum_noise": 4}, "send": {}})
    assert "dropped, quantum noise" in text


def test_json_text_scrubs_keys_at_any_depth() -> None:
    data = {"added": [{"spi": 1, "cipher_key": "00ff", "nested": {"digest_key": "aa"}}]}
    assert render.json_text(data).replace(" ", "").replace("\n", "") == '{"added":[{"spi":1,"nested":{}}]}'


def test_algorithm_list_covers_the_registry() -> None:
    from ipsec_tunnel.core import algorithms

    data = render.algorithm_list()
    assert [c["name"] for c in data["ciphers"]] == [a.name for a in algorithms.CIPHERS]
    assert [d["name"] for d in data["digests"]] == [a.name for a in algorithms.AUTHS]
    sha1 = next(d for d in data["digests"] if d["name"] == "sha1")
    assert (sha1["key_bits"], sha1["icv_bits"], sha1["icv_bits_allowed"]) == (160, 96, [96, 128, 160])
    text = render.algos_text(data)
    assert "128-448" in text  # blowfish's key range (no key below 128 bits)
    assert "128/192/256 +32 salt" in text
