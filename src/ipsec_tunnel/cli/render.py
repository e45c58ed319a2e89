"""What ipsecadm prints: the `sa show` and `tunnel show` tables, the `stats` counters, the `algos` list, and
the -j JSON form of any result. Nothing printed here ever holds a key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..core import algorithms
from ..core.drops import RECEIVE_DROPS, SEND_DROPS, Drop
from .values import Kind, format_lifetime

_SECRET_FIELDS = frozenset({"cipher_key", "digest_key", "key", "keys", "psk"})
_LABELS = {d.value: d.label for d in Drop}
# The seed's counters first, in its order; the reasons it lacked follow; "other" stays last.
_SEED_RECEIVE = ("unknown_sa", "auth_failed", "bad_padding", "not_tunnel_mode", "no_tunnel")
_SEED_SEND = ("no_sa", "no_route", "too_big")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """`rows` under `headers` in left-aligned columns two spaces apart."""
    body = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in body) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return "\n".join(lines) + "\n"


def scrub(value: Any) -> Any:
    """`value` without any field that could hold key material (a guard for -j output)."""
    if isinstance(value, Mapping):
        return {k: scrub(v) for k, v in value.items() if k not in _SECRET_FIELDS}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """The -j form of a result."""
    return json.dumps(scrub(value), indent=2) + "\n"


def _text(value: Any, empty: str = "-") -> str:
    return empty if value is None or value == "" else str(value)


def spi_text(spi: Any) -> str:
    """An SPI as the original printed it: 0x hex."""
    return f"{spi:#x}" if isinstance(spi, int) and not isinstance(spi, bool) else _text(spi)


def _drops_text(drops: Any) -> str:
    if not isinstance(drops, Mapping) or not any(drops.values()):
        return "0"
    return ", ".join(f"{_LABELS.get(k, k)}={v}" for k, v in drops.items() if v)  # labels, as `stats`


def _is_aead(sa: Mapping[str, Any]) -> bool:
    if "aead" in sa:
        return bool(sa["aead"])
    try:
        return bool(sa.get("cipher")) and algorithms.find_cipher(str(sa["cipher"]))[0].aead
    except algorithms.AlgorithmError:
        return False


def cipher_text(sa: Mapping[str, Any]) -> str:
    """The Cipher/bits column: `des_ede3-cbc/192`, `aes-gcm/128`, `null`, or `-`."""
    cipher = sa.get("cipher")
    if not cipher:
        return "-"
    bits = sa.get("cipher_bits")
    return f"{cipher}/{bits}" if bits else str(cipher)


NO_INTEGRITY = "NO-INTEGRITY"


def has_integrity(sa: Mapping[str, Any]) -> bool:
    """Whether the SA's packets carry an ICV (a digest or an AEAD cipher)."""
    if "integrity" in sa:
        return bool(sa["integrity"])
    return bool(sa.get("digest")) or _is_aead(sa) or not sa.get("cipher") or sa.get("cipher") == "null"


def digest_text(sa: Mapping[str, Any]) -> str:
    """The Digest-HMAC/bits column: `sha1-96/160` (name-ICV bits/key bits), `icv-128` for AEAD, `-`, or
    NO-INTEGRITY for a cipher without a digest (encryption only)."""
    digest, icv = sa.get("digest"), sa.get("digest_bits")
    if digest:
        return f"{digest}-{icv}/{sa.get('digest_key_bits', '?')}" if icv else str(digest)
    if icv and _is_aead(sa):
        return f"icv-{icv}"
    return "-" if has_integrity(sa) else NO_INTEGRITY


def lifetime_text(sa: Mapping[str, Any]) -> str:
    """The lifetimes as the --lifetime-* options take them: `bytes=900M:1G,seconds=50m:1h`, or `-`."""
    soft, hard = sa.get("soft") or {}, sa.get("hard") or {}
    parts = []
    kinds: tuple[Kind, ...] = ("bytes", "packets", "seconds")
    for kind in kinds:
        text = format_lifetime(int(soft.get(kind) or 0), int(hard.get(kind) or 0), kind)
        if text:
            parts.append(f"{kind}={text}")
    return ",".join(parts) or "-"


def _encap_text(encap: Any) -> str:
    if isinstance(encap, Mapping):
        return f"udp:{encap.get('sport')}:{encap.get('dport')}"
    return "-"


def _keepalive_text(encap: Any) -> str:
    """An ESP-in-UDP SA's NAT-keepalive interval ('20s', 'off'); '-' without UDP or when not said."""
    if not isinstance(encap, Mapping) or encap.get("keepalive") is None:
        return "-"
    return f"{encap['keepalive']}s" if encap["keepalive"] else "off"


def sa_table(sas: Sequence[Mapping[str, Any]], stats: bool = False) -> str:
    """The `sa show` table (the original's columns, then replay window, ESN, encapsulation, the
    NAT-keepalive interval when an SA uses UDP, state)."""
    headers = ["Destination", "Source", "SPI", "Cipher/bits", "Digest-HMAC/bits", "Replay", "ESN", "Encap"]
    udp = any(isinstance(sa.get("encap"), Mapping) for sa in sas)
    if udp:
        headers.append("Keepalive")
    headers.append("State")
    origins = any(sa.get("origin", "manual") != "manual" for sa in sas)  # IKE's SAs say whose they are
    if origins:
        headers.append("Origin")
    lifetimes = any(lifetime_text(sa) != "-" for sa in sas)
    if lifetimes:
        headers.append("Lifetime soft:hard")
    if stats:
        headers += ["Packets", "Bytes", "Seq-out", "Replay-top", "Drops"]
    rows = []
    for sa in sas:
        window = sa.get("replay_window")
        row = [
            _text(sa.get("dst")), _text(sa.get("src")), spi_text(sa.get("spi")), cipher_text(sa),
            digest_text(sa), "off" if window == 0 else _text(window), "yes" if sa.get("esn") else "no",
            _encap_text(sa.get("encap")),
        ]  # fmt: skip
        if udp:
            row.append(_keepalive_text(sa.get("encap")))
        row.append(_text(sa.get("state")))
        if origins:
            row.append(_text(sa.get("origin"), "manual"))
        if lifetimes:
            row.append(lifetime_text(sa))
        if stats:
            st = sa.get("stats") or {}
            row += [_text(st.get("packets"), "0"), _text(st.get("bytes"), "0"), _text(st.get("seq_out"), "0")]
            row += [_text(st.get("replay_top"), "0"), _drops_text(st.get("drops"))]
        rows.append(row)
    return table(headers, rows)


def tunnel_table(tunnels: Sequence[Mapping[str, Any]], stats: bool = False) -> str:
    """The `tunnel show` table (the original's columns, then MTU, the SA in use and the peer networks)."""
    headers = ["Name", "Local", "Remote", "SPI", "Next device", "MTU", "SA", "Peer nets"]
    if stats:
        headers += ["RX packets", "RX bytes", "TX packets", "TX bytes", "RX drops", "TX drops"]
    rows = []
    for t in tunnels:
        spi = t.get("spi")
        nets = t.get("peer_nets") or []
        row = [
            _text(t.get("name")), _text(t.get("local")), _text(t.get("remote")),
            "any" if not spi else spi_text(spi), _text(t.get("nextdev")), _text(t.get("mtu")),
            spi_text(t["sa"]) if t.get("sa") is not None else "-", ",".join(map(str, nets)) or "any",
        ]  # fmt: skip
        if stats:
            st = t.get("stats") or {}
            row += [_text(st.get(k), "0") for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")]
            row += [_drops_text(st.get("rx_drops")), _drops_text(st.get("tx_drops"))]
        rows.append(row)
    return table(headers, rows)


def _ordered(counts: Mapping[str, Any], seed: tuple[str, ...], known: tuple[Drop, ...]) -> list[str]:
    order = [*seed, *(d.value for d in known if d.value not in seed and d is not Drop.OTHER)]
    order += [k for k in counts if k not in order and k not in ("accepted", "other")]
    return [*order, "other"]


def stats_text(result: Mapping[str, Any]) -> str:
    """The `stats` counters: accepted and dropped packets by reason, receive then send."""
    lines: list[tuple[str, Any]] = []
    for title, key, seed, known in (
        ("Receive", "receive", _SEED_RECEIVE, RECEIVE_DROPS),
        ("Send", "send", _SEED_SEND, SEND_DROPS),
    ):
        counts = result.get(key) or {}
        lines.append((f"{title}:", None))
        lines.append(("  accepted", counts.get("accepted", 0)))
        for reason in _ordered(counts, seed, known):
            lines.append(
                (f"  dropped, {_LABELS.get(reason, reason.replace('_', ' '))}", counts.get(reason, 0))
            )
    lines.append(("NAT keepalives received", result.get("keepalives", 0)))
    lines.append(("NAT keepalives sent", result.get("keepalives_sent", 0)))
    lines.append(("ICMP errors sent", result.get("icmp_sent", 0)))
    if "ce_marked" in result:  # ipsecd with AQM (older daemons do not say)
        lines.append(("ECN CE marked (AQM)", result["ce_marked"]))
    if "tx_ce_marked" in result:  # ipsecd with --device-aqm (older daemons do not say)
        lines.append(("ECN CE marked (device AQM)", result["tx_ce_marked"]))
    if "tcp_windows_lowered" in result:  # ipsecd with --tcp-queue (older daemons do not say)
        lines.append(("TCP windows lowered (tcp queue)", result["tcp_windows_lowered"]))
    if "bulk_flows" in result:  # ipsecd with --flow-queues (older daemons do not say)
        lines.append(("bulk flows moved apart (flow queues)", result["bulk_flows"]))
        lines.append(("read from the small-datagram sockets (flow queues)", result.get("sparse_read", 0)))
        lines.append(("kept behind the bulk (flow queues)", result.get("sparse_held", 0)))
    if "turn_yields" in result:  # ipsecd with --turn-yield-us (older daemons do not say)
        lines.append(("CPU given up by bulk turns (turn yield)", result["turn_yields"]))
    ike = result.get("ike")
    if isinstance(ike, Mapping):  # ipsecd with IKEv2: messages handled and dropped, by reason
        lines.append(("IKE:", None))
        lines.append(("  messages received", ike.get("received", 0)))
        for reason, n in sorted((ike.get("drops") or {}).items()):
            lines.append((f"  dropped, {str(reason).replace('_', ' ')}", n))
    width = max(len(label) for label, _ in lines) + 2
    out = [label if value is None else f"{label.ljust(width)}{value:>12}" for label, value in lines]
    drops = result.get("last_drops")
    if isinstance(drops, list):
        out.append(f"Last drops ({len(drops)}):")
        out += [f"  {_drop_line(d)}" for d in drops if isinstance(d, Mapping)]
    return "\n".join(out) + "\n"


def _drop_line(d: Mapping[str, Any]) -> str:
    """'unknown SA: SPI 0x1000 from 203.0.113.254:4500 to 192.0.2.2' (or, for a drop on the way out,
    '... to 192.0.2.2, sending on ipsec1'; for a decrypted packet its device did not take, '... to
    192.0.2.1, into ipsec1'), as ipsecd logs it."""
    src = _text(d.get("src"), "?")
    if d.get("sport") is not None:
        src = f"[{src}]:{d['sport']}" if ":" in src else f"{src}:{d['sport']}"
    spi = f"SPI {spi_text(d['spi'])} " if d.get("spi") is not None else ""
    reason = str(d.get("reason"))
    where = f"{spi}from {src} to {_text(d.get('dst'), '?')}"
    if d.get("into") is not None:
        return f"{_LABELS.get(reason, reason)}: {where}, into {d['into']}"
    if d.get("device") is None:
        return f"{_LABELS.get(reason, reason)}: {where}"
    where = f"{where}, " if d.get("src") is not None else spi
    return f"{_LABELS.get(reason, reason)}: {where}sending on {d['device']}"


# -- algorithms ------------------------------------------------------------------------------------------


def _icv_names() -> dict[str, int]:
    names: dict[str, int] = algorithms.GCM_ICV_NAMES
    return dict(names)


def algorithm_list() -> dict[str, Any]:
    """Every cipher and digest ipsecadm and ipsecd know, with names, key and ICV sizes and RFC."""
    ciphers = [
        {
            "name": a.name, "kernel": a.kernel, "aliases": list(a.aliases),
            "key_bits": [k * 8 for k in a.key_sizes], "salt_bits": a.salt_len * 8, "aead": a.aead,
            "icv_bits": [i * 8 for i in a.icv_lens], "rfc": a.rfc,
        }
        for a in algorithms.CIPHERS
    ]  # fmt: skip
    digests = [
        {
            "name": a.name, "kernel": a.kernel, "aliases": list(a.aliases), "key_bits": a.key_len * 8,
            "icv_bits": a.default_icv_bits, "icv_bits_allowed": list(range(96, a.digest_bits + 1, 32)),
            "rfc": a.rfc,
        }
        for a in algorithms.AUTHS
    ]  # fmt: skip
    icv_names = {
        name: {"cipher": algorithms.find_cipher(name)[0].name, "icv_bits": icv * 8}
        for name, icv in _icv_names().items()
    }
    return {"ciphers": ciphers, "digests": digests, "icv_names": icv_names}


def _key_bits_text(bits: list[int], salt: int) -> str:
    text = f"{bits[0]}-{bits[-1]}" if len(bits) > 4 else "/".join(map(str, bits))
    return f"{text} +{salt} salt" if salt else text


def algos_text(data: Mapping[str, Any]) -> str:
    """The `algos` listing."""
    crows = []
    for c in data["ciphers"]:
        icv = "/".join(map(str, c["icv_bits"])) if c["aead"] else "-"
        crows.append([
            c["name"], c["kernel"], ", ".join(c["aliases"]) or "-",
            _key_bits_text(c["key_bits"], c["salt_bits"]), icv, c["rfc"],
        ])  # fmt: skip
    drows = [
        [
            d["name"], d["kernel"], ", ".join(d["aliases"]) or "-", str(d["key_bits"]),
            f"{d['icv_bits']} ({d['icv_bits_allowed'][0]}-{d['icv_bits_allowed'][-1]})", d["rfc"],
        ]
        for d in data["digests"]
    ]  # fmt: skip
    out = ["Ciphers (--cipher):"]
    out.append(table(["Name", "Kernel name", "Aliases", "Key bits", "ICV bits", "RFC"], crows).rstrip("\n"))
    out.append("")
    out.append("Digests (--digest; --digest-hmac=BITS: a multiple of 32 in the range shown):")
    out.append(table(["Name", "Kernel name", "Aliases", "Key bits", "ICV bits", "RFC"], drows).rstrip("\n"))
    out.append("")
    out.append(
        "Key files hold the raw key bytes; a salt (AES-CTR, AES-GCM, ChaCha20-Poly1305) follows the key."
    )
    by_bits: dict[int, list[str]] = {}
    for name, v in data["icv_names"].items():
        by_bits.setdefault(v["icv_bits"], []).append(name)
    if by_bits:
        named = "; ".join(f"{' or '.join(names)} for {bits} bits" for bits, names in by_bits.items())
        out.append(f"AEAD ciphers take no --digest. Their ICV is set by name ({named}) or by --digest-hmac.")
    return "\n".join(out) + "\n"
