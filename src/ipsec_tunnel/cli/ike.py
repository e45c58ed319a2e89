"""`ipsecadm ike ...`: IKEv2 peers added, started, stopped, removed and shown. The PSK is read here from
its file with the caller's rights and sent to ipsecd like SA keys; it is never printed."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .grammar import PROG, Invocation, UsageError
from .keys import KeyInputError, read_key_file
from .render import spi_text, table
from .values import redact

Warn = Callable[[str], None]
STARTS = ("none", "now", "on-traffic")


def _invalid(message: str) -> UsageError:
    return UsageError(message, hint=False)


def _name(inv: Invocation, required: bool = True) -> str | None:
    if not inv.positional:
        if required:
            title = inv.command.title if inv.command else "ike"
            raise UsageError(f"'{title}' needs a peer name", "ike")
        return None
    name = inv.positional[0]
    if not name or len(name) > 32 or not all(c.isalnum() or c in "_.-" for c in name) or not name.isascii():
        raise _invalid(f"Bad IKE peer name '{redact(name)[:40]}': 1-32 of A-Z a-z 0-9 _ . -")
    return name


def _address(text: str | None, option: str, *, any_ok: bool = False) -> str:
    if text is None:
        raise UsageError(f"'ike add' needs --{option}", "ike")
    if any_ok and text == "%any":
        return text
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise _invalid(f"Bad --{option} address: '{redact(text)[:64]}'") from None


def _nets(inv: Invocation, option: str) -> list[str]:
    texts = inv.values(option)
    if not texts:
        raise UsageError(f"'ike add' needs --{option}=CIDR (one or more)", "ike")
    out = []
    for text in texts:
        for part in text.split(","):
            try:
                out.append(str(ipaddress.ip_network(part.strip(), strict=False)))
            except ValueError:
                raise _invalid(f"Bad --{option}: '{redact(part)[:64]}' is not a network (CIDR)") from None
    return out


def _list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise _invalid("an empty proposal list")
    return words


def read_psk(path: str, warn: Warn) -> bytes:
    """The PSK in file `path`: its bytes, without one trailing newline."""
    try:
        data = read_key_file(path, "--psk-file", warn)
    except KeyInputError as exc:
        raise _invalid(str(exc).replace("key file", "PSK file").replace("Bad key", "Bad PSK")) from None
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise _invalid(f"Bad PSK: PSK file {path} is empty")
    return data


def add_request(inv: Invocation, warn: Warn) -> dict[str, Any]:
    """The `ike.add` request of `ipsecadm ike add ...`."""
    name = _name(inv)
    local = _address(inv.value("local"), "local")
    remote = _address(inv.value("remote"), "remote", any_ok=True)
    psk_file = inv.value("psk-file")
    if psk_file is None:
        raise UsageError("'ike add' needs --psk-file=FILE", "ike")
    start = inv.value("start") or "none"
    matches = [s for s in STARTS if s.startswith(start)]
    if len(matches) != 1:
        raise _invalid(f"Bad --start '{redact(start)[:32]}' (one of: {', '.join(STARTS)})")
    dpd_text = inv.value("dpd") or "0"
    try:
        dpd = float(dpd_text.rstrip("s"))
        if not 0 <= dpd <= 86400:
            raise ValueError
    except ValueError:
        raise _invalid(f"Bad --dpd '{redact(dpd_text)[:32]}': seconds, 0 to 86400 (0: off)") from None
    local_nets, remote_nets = _nets(inv, "local-net"), _nets(inv, "remote-net")
    args: dict[str, Any] = {
        "name": name, "local": local, "remote": remote,
        "local_id": inv.value("local-id"), "remote_id": inv.value("remote-id"),
        "local_nets": local_nets, "remote_nets": remote_nets,
        "proposals": _list(inv.value("proposals")), "esp_proposals": _list(inv.value("esp-proposals")),
        "tunnel": inv.value("tunnel"), "start": matches[0], "dpd": int(dpd) if dpd.is_integer() else dpd,
    }  # fmt: skip
    args["psk"] = read_psk(psk_file, warn).hex()  # read last: no PSK is read for a bad command line
    return {k: v for k, v in args.items() if v is not None}


def name_request(inv: Invocation) -> dict[str, Any]:
    """The request of `ike up|down|del NAME`."""
    return {"name": _name(inv)}


def show_request(inv: Invocation) -> dict[str, Any]:
    """The request of `ike show [NAME] [-s]`."""
    args: dict[str, Any] = {"stats": inv.stats}
    name = _name(inv, required=False)
    if name:
        args["name"] = name
    return args


def _spis(peer: Mapping[str, Any]) -> str:
    children = peer.get("children") or []
    return ",".join(f"{spi_text(c.get('spi_in'))}/{spi_text(c.get('spi_out'))}" for c in children) or "-"


def _nets_text(nets: Any) -> str:
    return ",".join(str(n) for n in nets) if nets else "-"


def peer_table(peers: Sequence[Mapping[str, Any]], stats: bool = False) -> str:
    """The `ike show` table: one line per peer, with why it is not up when it is not."""
    headers = ["Name", "State", "Local", "Remote", "Tunnel", "Local nets", "Remote nets", "SPI in/out"]
    if stats:
        headers += ["Packets in/out", "Bytes in/out"]
    headers.append("Reason")
    rows = []
    for p in peers:
        remote = str(p.get("remote") or "-")
        seen = p.get("remote_seen")
        if seen and not str(seen).startswith(remote + ":"):
            remote += f" ({seen})"
        row = [
            str(p.get("name")), str(p.get("state") or "down"), str(p.get("local") or "-"), remote,
            str(p.get("device") or p.get("tunnel") or "-"), _nets_text(p.get("local_nets")),
            _nets_text(p.get("remote_nets")), _spis(p),
        ]  # fmt: skip
        if stats:
            children = p.get("children") or []
            pin = sum(int(c.get("packets_in") or 0) for c in children)
            pout = sum(int(c.get("packets_out") or 0) for c in children)
            bin_ = sum(int(c.get("bytes_in") or 0) for c in children)
            bout = sum(int(c.get("bytes_out") or 0) for c in children)
            row += [f"{pin}/{pout}", f"{bin_}/{bout}"]
        row.append(str(p.get("reason") or "-") if p.get("state") != "established" else "-")
        rows.append(row)
    return table(headers, rows)


def _warn(line: str) -> None:
    sys.stderr.write(f"{PROG}: {redact(line)}\n")


def _add(s: Any) -> int:
    result = s.call("ike.add", add_request(s.inv, _warn))
    s.show(result, lambda r: None)
    return 0


def _show(s: Any) -> int:
    result = s.call("ike.show", show_request(s.inv))
    peers = result if isinstance(result, list) else []
    s.show(peers, lambda r: peer_table(r, s.inv.stats) if r else "No IKE peers.\n")
    return 0


def _named(op: str) -> Callable[[Any], int]:
    def run(s: Any) -> int:
        s.show(s.call(op, name_request(s.inv)), lambda r: None)
        return 0

    return run


HANDLERS: dict[tuple[str, str | None], Callable[[Any], int]] = {
    ("ike", "add"): _add,
    ("ike", "show"): _show,
    ("ike", "up"): _named("ike.up"),
    ("ike", "down"): _named("ike.down"),
    ("ike", "del"): _named("ike.del"),
}
