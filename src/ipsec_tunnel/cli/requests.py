"""The control requests ipsecadm's commands send, built from an `Invocation` and validated locally with the
same core code ipsecd uses, so a bad command line is refused before anything reaches the daemon.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..core.algorithms import AlgorithmError, CipherAlg, find_cipher
from ..core.replay import DEFAULT_WINDOW
from ..core.sa import SPI_MAX, SPI_MIN, ConfigError, Limits, SAConfig, SAError, UdpEncap, parse_address
from ..core.tunnel import BASE_DEVICE, Tunnel, TunnelError, check_name, parse_networks
from .grammar import Invocation, UsageError
from .keys import KeyInputError, hex_hint, load_key, looks_like_hex
from .values import Kind, ValueInputError, parse_encap, parse_lifetime, parse_number

Warn = Callable[[str], None]


def invalid(message: str) -> UsageError:
    """A UsageError for a value that cannot be used (no pointer to the help)."""
    return UsageError(message, hint=False)


def _number(text: str, option: str) -> int:
    try:
        return parse_number(text, option)
    except ValueInputError as exc:
        raise invalid(str(exc)) from None


def _spi_filter(inv: Invocation) -> int | None:
    text = inv.value("spi")
    if text is None:
        return None
    spi = _number(text, "--spi")
    if not SPI_MIN <= spi <= SPI_MAX:
        raise invalid(f"SPI {spi:#x} is reserved or out of range (valid: 0x100 to 0xffffffff)")
    return spi


def _address(inv: Invocation, option: str, what: str) -> str | None:
    text = inv.value(option)
    if text is None:
        return None
    try:
        return str(parse_address(text, what))
    except ConfigError as exc:
        raise invalid(str(exc)) from None


def _required(inv: Invocation, *names: str) -> None:
    title = inv.command.title if inv.command else ""
    for name in names:
        if inv.value(name) is None:
            raise UsageError(f"'{title}' needs --{name}", inv.command.mode if inv.command else None)


# -- sa --------------------------------------------------------------------------------------------------


def _cipher(name: str) -> tuple[CipherAlg, int | None]:
    try:
        return find_cipher(name)
    except AlgorithmError as exc:
        raise invalid(str(exc)) from None


def _aead_icv_bits(alg: CipherAlg, name: str, named_icv: int | None, bits: int | None) -> int:
    """The ICV bits of an AEAD SA: from the name (aes-gcm-12) or --digest-hmac, which must agree."""
    default = alg.icv_lens[0]
    if bits is None:
        return (named_icv or default) * 8
    if named_icv is not None and named_icv != default and bits != named_icv * 8:
        raise invalid(
            f"--cipher={name} already sets a {named_icv * 8}-bit ICV; drop --digest-hmac or use "
            f"--cipher={alg.name} --digest-hmac={bits}"
        )
    allowed = [i * 8 for i in alg.icv_lens]
    if bits not in allowed:
        raise invalid(
            f"--digest-hmac with {alg.name} sets its ICV length, which may be "
            + " or ".join(map(str, allowed))
            + f" bits; got {bits}"
        )
    return bits


def _lifetimes(inv: Invocation) -> tuple[Limits, Limits]:
    soft: dict[str, int] = {}
    hard: dict[str, int] = {}
    kinds: tuple[Kind, ...] = ("bytes", "packets", "seconds")
    for kind in kinds:
        text = inv.value(f"lifetime-{kind}")
        if text is not None:
            try:
                soft[kind], hard[kind] = parse_lifetime(text, kind, f"--lifetime-{kind}")
            except ValueInputError as exc:
                raise invalid(str(exc)) from None
    return Limits(**soft), Limits(**hard)


def sa_add(inv: Invocation, warn: Warn) -> dict[str, Any]:
    """The `sa.add` arguments for `sa add`, keys as hex; the SA is validated as ipsecd will."""
    _required(inv, "spi", "dst", "src")
    spi = _number(inv.value("spi") or "", "--spi")
    try:
        cipher_key = load_key(inv.value("cipher-key"), inv.value("cipher-keyfile"), "--cipher-key", warn)
        digest_key = load_key(inv.value("digest-key"), inv.value("digest-keyfile"), "--digest-key", warn)
    except KeyInputError as exc:
        raise invalid(str(exc)) from None
    cipher, digest = inv.value("cipher"), inv.value("digest")
    if cipher is None and cipher_key is not None:
        raise invalid("--cipher-key and --cipher-keyfile need --cipher=NAME")
    if digest is None and digest_key is not None:
        raise invalid("--digest-key and --digest-keyfile need --digest=NAME")
    hmac_text = inv.value("digest-hmac")
    bits = None if hmac_text is None else _number(hmac_text, "--digest-hmac")
    alg: CipherAlg | None = None
    if cipher is not None:
        alg, named_icv = _cipher(cipher)
        if cipher_key is None:
            if alg.key_sizes != (0,) or alg.salt_len:
                raise invalid(f"--cipher={cipher} needs --cipher-key=HEX or --cipher-keyfile=FILE")
            cipher_key = b""
        if alg.aead:
            bits = _aead_icv_bits(alg, cipher, named_icv, bits)
    if bits is not None and digest is None and not (alg and alg.aead):
        raise invalid("--digest-hmac needs --digest=NAME (or an AEAD cipher, where it sets the ICV length)")
    if digest is not None and digest_key is None:
        raise invalid(f"--digest={digest} needs --digest-key=HEX or --digest-keyfile=FILE")
    window_text = inv.value("replay-window")
    window = DEFAULT_WINDOW if window_text is None else _number(window_text, "--replay-window")
    encap = None
    encap_text = inv.value("encap")
    if encap_text is not None:
        try:
            encap = UdpEncap(*parse_encap(encap_text))
        except ValueInputError as exc:
            raise invalid(str(exc)) from None
    keepalive = inv.value("keepalive")
    if keepalive is not None:
        if encap is None:
            raise invalid("--keepalive needs --encap=udp (NAT-keepalives are UDP)")
        encap = replace(encap, keepalive=_number(keepalive.removesuffix("s"), "--keepalive"))
    soft, hard = _lifetimes(inv)
    hex_files = [
        path
        for path, key in (
            (inv.value("cipher-keyfile"), cipher_key),
            (inv.value("digest-keyfile"), digest_key),
        )
        if path is not None and key is not None and looks_like_hex(key)
    ]
    try:
        config = SAConfig(
            spi=spi, dst=inv.value("dst") or "", src=inv.value("src") or "", cipher=cipher,
            cipher_key=cipher_key or b"", digest=digest, digest_key=digest_key or b"", digest_bits=bits,
            replay_window=window, esn=inv.flag("esn"), encap=encap, soft=soft, hard=hard,
        ).validated()  # fmt: skip
    except SAError as exc:
        hints = "".join(f"; {hex_hint(p)}" for p in hex_files) if "bytes" in str(exc) else ""
        raise invalid(f"{exc}{hints}") from None
    for path in hex_files:
        warn(f"warning: {hex_hint(path)}")
    if cipher_key and digest_key and hmac.compare_digest(cipher_key, digest_key):
        warn("warning: the cipher key and the digest key are the same bytes; use two independent keys")
    if not config.integrity:
        warn(
            f"warning: this SA has no integrity protection: {config.cipher} without a digest cannot detect "
            "forged or altered packets (RFC 8221 §5). Add --digest=sha1 --digest-keyfile=FILE (or sha256), "
            "or use an AEAD cipher such as aes-gcm"
        )
    return {
        "spi": config.spi, "dst": config.dst, "src": config.src,
        "cipher": config.cipher, "cipher_key": config.cipher_key.hex() if config.cipher else "",
        "digest": config.digest, "digest_key": config.digest_key.hex() if config.digest else "",
        "digest_bits": config.digest_bits, "duplex": inv.flag("duplex"),
        "replay_window": config.replay_window, "esn": config.esn,
        "encap": encap and {"sport": encap.sport, "dport": encap.dport, "keepalive": encap.keepalive},
        "soft": {"bytes": soft.bytes, "packets": soft.packets, "seconds": soft.seconds},
        "hard": {"bytes": hard.bytes, "packets": hard.packets, "seconds": hard.seconds},
    }  # fmt: skip


def sa_filter(inv: Invocation) -> dict[str, Any]:
    """The --dst/--src/--spi filter of `sa del` and `sa show`; omitted fields are wildcards."""
    args: dict[str, Any] = {}
    for option, what in (("dst", "destination"), ("src", "source")):
        addr = _address(inv, option, what)
        if addr is not None:
            args[option] = addr
    spi = _spi_filter(inv)
    if spi is not None:
        args["spi"] = spi
    return args


def sa_del(inv: Invocation) -> dict[str, Any]:
    """The `sa.del` arguments for `sa del`."""
    args = sa_filter(inv)
    everything = inv.flag("all")
    if everything and args:
        raise UsageError("--all cannot be combined with --dst, --src or --spi", "sa")
    if everything and inv.flag("duplex"):
        raise UsageError("--all already deletes both directions; drop --duplex", "sa")
    if not everything and not args:
        raise UsageError("'sa del' needs --dst, --src or --spi (omitted ones match any), or --all", "sa")
    return {**args, "duplex": inv.flag("duplex"), "all": everything}


def sa_show(inv: Invocation) -> dict[str, Any]:
    """The `sa.show` arguments for `sa show`."""
    return {**sa_filter(inv), "stats": inv.stats}


# -- tunnel ----------------------------------------------------------------------------------------------


_BASE_REFUSALS = {  # the original's rules for ipsec0, in core/tunnel.py's words
    "add": f"{BASE_DEVICE} is the base device and cannot be a tunnel",
    "change": f"{BASE_DEVICE} cannot be changed",
    "del": f"{BASE_DEVICE} cannot be removed",
}


def _device(inv: Invocation, *, required: bool, verb: str) -> str | None:
    name = inv.positional[0] if inv.positional else None
    if name is None:
        if required:
            raise UsageError(f"'tunnel {verb}' needs a device name", "tunnel")
        return None
    try:
        check_name(name)
    except TunnelError as exc:
        raise invalid(str(exc)) from None
    if name == BASE_DEVICE and verb in _BASE_REFUSALS:
        raise invalid(_BASE_REFUSALS[verb])
    return name


def _tunnel_spi(text: str) -> int:
    if text.strip().lower() == "any":
        return 0
    spi = _number(text, "--spi")
    if spi and not SPI_MIN <= spi <= SPI_MAX:
        raise invalid(f"SPI {spi:#x} is reserved or out of range (valid: 0x100 to 0xffffffff, or any)")
    return spi


def _nextdev(text: str, *, clear: bool) -> str | None:
    if text == "":
        if clear:
            return None
        raise invalid("--nextdev needs an interface name")
    try:
        return check_name(text)
    except TunnelError as exc:
        raise invalid(str(exc).replace("Tunnel name", "--nextdev")) from None


def _peer_nets(texts: list[str], *, clear: bool) -> list[str]:
    if clear and texts == [""]:
        return []
    if "" in texts:
        raise invalid("--peer-net needs a network (CIDR)" + (", or '' alone to clear" if clear else ""))
    try:
        return [str(n) for n in parse_networks(texts)]
    except TunnelError as exc:
        raise invalid(str(exc)) from None


def tunnel_add(inv: Invocation) -> dict[str, Any]:
    """The `tunnel.add` arguments for `tunnel add`; an empty name lets ipsecd pick ipsec1..ipsec99."""
    name = inv.positional[0] if inv.positional else ""
    if name:
        _device(inv, required=True, verb="add")
    _required(inv, "local", "remote")
    spi_text, nextdev_text = inv.value("spi"), inv.value("nextdev")
    spi = 0 if spi_text is None else _tunnel_spi(spi_text)
    nextdev = None if nextdev_text is None else _nextdev(nextdev_text, clear=False)
    nets = _peer_nets(inv.values("peer-net") or [], clear=False)
    try:
        tunnel = Tunnel(
            name or "ipsec1", inv.value("local") or "", inv.value("remote") or "", spi, nextdev, tuple(nets)
        ).validated()
    except TunnelError as exc:
        raise invalid(str(exc)) from None
    return {
        "name": name, "local": tunnel.local, "remote": tunnel.remote, "spi": spi, "nextdev": nextdev,
        "peer_nets": list(tunnel.peer_nets),
    }  # fmt: skip


def tunnel_change(inv: Invocation) -> dict[str, Any]:
    """The `tunnel.change` arguments: the name and only the fields given (nextdev None clears it)."""
    name = _device(inv, required=True, verb="change")
    args: dict[str, Any] = {"name": name}
    local, remote = _address(inv, "local", "local"), _address(inv, "remote", "remote")
    if local is not None and remote is not None:
        try:
            Tunnel(name or "", local, remote).validated()
        except TunnelError as exc:
            raise invalid(str(exc)) from None
    for key, value in (("local", local), ("remote", remote)):
        if value is not None:
            args[key] = value
    if inv.value("spi") is not None:
        args["spi"] = _tunnel_spi(inv.value("spi") or "")
    if inv.value("nextdev") is not None:
        args["nextdev"] = _nextdev(inv.value("nextdev") or "", clear=True)
    if inv.values("peer-net") is not None:
        args["peer_nets"] = _peer_nets(inv.values("peer-net") or [], clear=True)
    if len(args) == 1:
        raise UsageError(
            "'tunnel change' needs at least one of --local, --remote, --spi, --nextdev, --peer-net", "tunnel"
        )
    return args


def tunnel_del(inv: Invocation) -> dict[str, Any]:
    """The `tunnel.del` arguments: a device name or --all."""
    name = _device(inv, required=False, verb="del")
    if name is not None and inv.flag("all"):
        raise UsageError("give a device name or --all, not both", "tunnel")
    if name is None and not inv.flag("all"):
        raise UsageError("'tunnel del' needs a device name or --all", "tunnel")
    return {"name": name, "all": False} if name is not None else {"all": True}


def tunnel_show(inv: Invocation) -> dict[str, Any]:
    """The `tunnel.show` arguments."""
    name = _device(inv, required=False, verb="show")
    return {"name": name, "stats": inv.stats} if name is not None else {"stats": inv.stats}
