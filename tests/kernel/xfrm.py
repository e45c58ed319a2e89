"""The Linux kernel's side of an ipsec-tunnel SA: `ip xfrm state add` and `ip xfrm policy add` command lines
derived from the very `ipsecadm sa add` options (and key files) that configure ipsecd.

The algorithm table here is written from the kernel's and the RFCs' point of view, independently of
`ipsec_tunnel.core.algorithms`: if ipsecd's names, key layouts (salt at the end) or ICV lengths disagreed
with the kernel's, an SA built from the same key files would not pass traffic.

Also parses `ip -s xfrm state` into per-SA counters.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

# the kernel side's window when the ipsecadm line names none: xfrm's legacy replay_window is a u8 (at most
# 255; ipsecd's own default is 4096); the kernel's default is 0 (no replay protection)
DEFAULT_REPLAY_WINDOW = 128

# ipsecadm --cipher name -> (ip xfrm keyword, kernel algorithm name, ICV bits for AEAD or None)
CIPHERS: dict[str, tuple[str, str, int | None]] = {
    "aes-gcm": ("aead", "rfc4106(gcm(aes))", 128),  # RFC 4106: key || 4-byte salt
    "aes-gcm-16": ("aead", "rfc4106(gcm(aes))", 128),
    "aes-gcm-12": ("aead", "rfc4106(gcm(aes))", 96),
    "aes-gcm-8": ("aead", "rfc4106(gcm(aes))", 64),
    "chacha20-poly1305": ("aead", "rfc7539esp(chacha20,poly1305)", 128),  # RFC 7634: key || salt
    "aes-cbc": ("enc", "cbc(aes)", None),
    "aes-ctr": ("enc", "rfc3686(ctr(aes))", None),  # RFC 3686: key || 4-byte nonce
    "des_ede3-cbc": ("enc", "cbc(des3_ede)", None),
    "3des": ("enc", "cbc(des3_ede)", None),
    "null": ("enc", "ecb(cipher_null)", None),
}
# ipsecadm --digest name -> (kernel algorithm name, default truncation in bits: RFC 2404 / RFC 4868)
DIGESTS: dict[str, tuple[str, int]] = {
    "md5": ("hmac(md5)", 96),
    "sha1": ("hmac(sha1)", 96),
    "sha256": ("hmac(sha256)", 128),
    "sha384": ("hmac(sha384)", 192),
    "sha512": ("hmac(sha512)", 256),
}


class XfrmError(ValueError):
    """ipsecadm options this helper does not know how to express for the kernel."""


@dataclass(frozen=True)
class SaOptions:
    """The `ipsecadm sa add` options that matter to the kernel, as given."""

    spi: int
    src: str
    dst: str
    cipher: str | None = None
    cipher_keyfile: Path | None = None
    digest: str | None = None
    digest_keyfile: Path | None = None
    digest_bits: int | None = None
    replay_window: int = DEFAULT_REPLAY_WINDOW
    esn: bool = False
    encap: tuple[int, int] | None = None  # (sport, dport)
    duplex: bool = False

    @classmethod
    def parse(cls, argv: Sequence[str]) -> SaOptions:
        """The options of `ipsecadm sa add ARGV` (only the `--name=value` spelling)."""
        opts: dict[str, str | None] = {}
        for arg in argv:
            if not arg.startswith("--"):
                raise XfrmError(f"not an option: {arg!r}")
            name, eq, value = arg[2:].partition("=")
            opts[name] = value if eq else None
        known = {"spi", "src", "dst", "cipher", "cipher-keyfile", "digest", "digest-keyfile", "digest-hmac",
                 "replay-window", "esn", "encap", "duplex"}  # fmt: skip
        if unknown := set(opts) - known:
            raise XfrmError(f"options not supported here: {sorted(unknown)}")
        encap = None
        if "encap" in opts:
            kind, *ports = (opts["encap"] or "").split(":")
            if kind != "udp" or len(ports) not in (0, 2):
                raise XfrmError(f"--encap={opts['encap']}")
            encap = (int(ports[0]), int(ports[1])) if ports else (4500, 4500)

        def path(name: str) -> Path | None:
            value = opts.get(name)
            return Path(value) if value else None

        return cls(
            spi=int(opts["spi"] or "", 0),
            src=opts["src"] or "",
            dst=opts["dst"] or "",
            cipher=opts.get("cipher"),
            cipher_keyfile=path("cipher-keyfile"),
            digest=opts.get("digest"),
            digest_keyfile=path("digest-keyfile"),
            digest_bits=int(opts["digest-hmac"] or "") if "digest-hmac" in opts else None,
            replay_window=int(opts["replay-window"] or "")
            if "replay-window" in opts
            else DEFAULT_REPLAY_WINDOW,
            esn="esn" in opts,
            encap=encap,
            duplex="duplex" in opts,
        )

    def reversed(self) -> SaOptions:
        """The SA of the opposite direction that `--duplex` adds (same SPI, same keys)."""
        return replace(self, src=self.dst, dst=self.src, duplex=False)


def key_hex(path: Path) -> str:
    """The key as `ip xfrm` takes it: 0x and the hex of the file's bytes."""
    return "0x" + path.read_bytes().hex()


def key_xxd(path: Path) -> str:
    """The key as a shell word that reads the file when run: for documentation."""
    return f"0x$(xxd -p -c 256 {shlex.quote(str(path))})"


def algorithms(o: SaOptions, key: Callable[[Path], str] = key_hex) -> str:
    """The ALGO-LIST of `ip xfrm state add` for these options."""
    words: list[str] = []
    if o.cipher:
        try:
            kind, name, icv = CIPHERS[o.cipher]
        except KeyError:
            raise XfrmError(f"cipher {o.cipher!r} is not in this helper's table") from None
        if kind == "aead":
            if o.cipher_keyfile is None or o.digest:
                raise XfrmError("an AEAD cipher takes a key file and no digest")
            bits = o.digest_bits if o.digest_bits is not None else icv
            return f"aead {shlex.quote(name)} {key(o.cipher_keyfile)} {bits}"
        if name == "ecb(cipher_null)":
            words.append(f"enc {shlex.quote(name)} ''")
        elif o.cipher_keyfile is None:
            raise XfrmError("a cipher needs --cipher-keyfile")
        else:
            words.append(f"enc {shlex.quote(name)} {key(o.cipher_keyfile)}")
    else:  # authentication only: ESP with the NULL cipher (RFC 2410)
        words.append("enc 'ecb(cipher_null)' ''")
    if o.digest:
        if o.digest_keyfile is None:
            raise XfrmError("a digest needs --digest-keyfile")
        name, default_bits = DIGESTS[o.digest]
        bits = o.digest_bits if o.digest_bits is not None else default_bits
        # auth-trunc, never `auth`: the kernel's default truncation for hmac(sha256) is 96 bits (pre-RFC 4868)
        words.append(f"auth-trunc {shlex.quote(name)} {key(o.digest_keyfile)} {bits}")
    return " ".join(words)


def state_add(
    o: SaOptions,
    *,
    reqid: int,
    sel: tuple[str, str] | None = None,
    extra: str = "",
    key: Callable[[Path], str] = key_hex,
) -> str:
    """`ip xfrm state add` for the SA these options describe (one direction; see `state_lines`).

    `sel` (inner source net, inner destination net) is needed when the inner family differs from the outer
    one; `extra` adds words such as `replay-seq 0x...`."""
    words = [
        f"ip xfrm state add src {o.src} dst {o.dst} proto esp spi {o.spi:#x} reqid {reqid} mode tunnel",
        f"replay-window {o.replay_window}",
    ]
    if o.esn:
        words.append("flag esn")
    if o.encap:
        words.append(f"encap espinudp {o.encap[0]} {o.encap[1]} 0.0.0.0")
    if extra:
        words.append(extra)
    if sel:
        words.append(f"sel src {sel[0]} dst {sel[1]}")
    words.append(algorithms(o, key))
    return " ".join(words)


def state_lines(
    argv: Sequence[str],
    *,
    reqid: int,
    sel: tuple[str, str] | None = None,
    extra: str = "",
    key: Callable[[Path], str] = key_hex,
) -> list[str]:
    """The kernel states for `ipsecadm sa add ARGV`: one, or both directions with `--duplex`."""
    o = SaOptions.parse(argv)
    sas = [o, o.reversed()] if o.duplex else [o]
    return [state_add(sa, reqid=reqid, sel=sel, extra=extra, key=key) for sa in sas]


def policy_add(src_net: str, dst_net: str, direction: str, tmpl_src: str, tmpl_dst: str, reqid: int) -> str:
    """`ip xfrm policy add` sending (`out`) or admitting (`in`, `fwd`) src_net -> dst_net through a tunnel."""
    return (
        f"ip xfrm policy add src {src_net} dst {dst_net} dir {direction}"
        f" tmpl src {tmpl_src} dst {tmpl_dst} proto esp reqid {reqid} mode tunnel"
    )


@dataclass(frozen=True)
class StateStats:
    """One SA's counters from `ip -s xfrm state`."""

    src: str
    dst: str
    spi: int
    packets: int
    bytes: int
    replay_window: int  # packets outside the window
    replay: int  # packets replayed
    integrity_failed: int
    seq: int  # highest received (64-bit with ESN: seq-hi << 32 | seq)
    oseq: int  # last sent


_STATE_HEAD = re.compile(r"^src (\S+) dst (\S+)$", re.M)


def parse_state_stats(text: str) -> dict[tuple[str, str, int], StateStats]:
    """`ip -s xfrm state` output by (source, destination, SPI)."""
    out: dict[tuple[str, str, int], StateStats] = {}
    heads = list(_STATE_HEAD.finditer(text))
    for i, head in enumerate(heads):
        block = text[head.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]

        def num(pattern: str, default: int | None = None, block: str = block) -> int:
            m = re.search(pattern, block)
            if m is None:
                if default is None:
                    raise ValueError(f"no {pattern!r} in:\n{block}")
                return default
            return int(m.group(1), 0)

        spi = num(r"spi (0x[0-9a-f]+)")
        esn = re.search(
            r"seq-hi (0x[0-9a-f]+), seq (0x[0-9a-f]+), oseq-hi (0x[0-9a-f]+), oseq (0x[0-9a-f]+)", block
        )
        if esn:
            hi, lo, ohi, olo = (int(g, 16) for g in esn.groups())
            seq, oseq = hi << 32 | lo, ohi << 32 | olo
        else:  # the 32-bit replay state (window up to 32, no ESN)
            seq, oseq = num(r"anti-replay context: seq (0x[0-9a-f]+)", 0), num(r", oseq (0x[0-9a-f]+)", 0)
        current = re.search(r"lifetime current:\s*\n\s*(\d+)\(bytes\), (\d+)\(packets\)", block)
        stats = re.search(r"stats:\s*\n\s*replay-window (\d+) replay (\d+) failed (\d+)", block)
        if current is None or stats is None:
            raise ValueError(f"not `ip -s xfrm state` output:\n{block}")
        out[head.group(1), head.group(2), spi] = StateStats(
            src=head.group(1),
            dst=head.group(2),
            spi=spi,
            bytes=int(current.group(1)),
            packets=int(current.group(2)),
            replay_window=int(stats.group(1)),
            replay=int(stats.group(2)),
            integrity_failed=int(stats.group(3)),
            seq=seq,
            oseq=oseq,
        )
    return out
