"""The ipsecadm command line: modes, commands and options as the original getopt_long grammar had them,
turned into an `Invocation`, plus the brief help texts.

Any unambiguous prefix of a mode, a command or a long option is accepted (an exact name always wins);
options take `--opt=value` or `--opt value`, and may come anywhere after the command. Global options
(-j/--json, -s/--stats, --socket=PATH, -h/--help) may come anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .values import redact

PROG = "ipsecadm"


class UsageError(Exception):
    """A command line ipsecadm cannot carry out; `topic` is the mode whose help would explain it.

    `brief` asks for the brief help to be shown before the message (unknown or ambiguous modes); `hint`
    adds a pointer to the help (grammar mistakes, not bad values).
    """

    def __init__(
        self, message: str, topic: str | None = None, *, brief: bool = False, hint: bool = True
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.brief = brief
        self.hint = hint and not brief


@dataclass(frozen=True)
class Opt:
    """A long option; `metavar` is None for a flag, and `repeat` lets it be given more than once."""

    name: str
    metavar: str | None = None
    repeat: bool = False


@dataclass(frozen=True)
class Command:
    """One `MODE [COMMAND]` with its options and how many positional arguments (a device name) it takes."""

    mode: str
    sub: str | None
    opts: tuple[Opt, ...] = ()
    positional: int = 0
    usage: str = ""

    @property
    def title(self) -> str:
        """`sa add`, `stats`, ... as messages name it."""
        return f"{self.mode} {self.sub}" if self.sub else self.mode


@dataclass
class Invocation:
    """A parsed command line."""

    command: Command | None  # None: no mode given (brief help)
    options: dict[str, str | bool | list[str]] = field(default_factory=dict)
    positional: list[str] = field(default_factory=list)
    json: bool = False
    stats: bool = False
    socket: str | None = None
    help: bool = False
    help_topic: str | None = None

    def value(self, name: str) -> str | None:
        """The value of option --`name`, or None when it was not given."""
        v = self.options.get(name)
        return v if isinstance(v, str) else None

    def flag(self, name: str) -> bool:
        """Whether flag --`name` was given."""
        return self.options.get(name) is True

    def values(self, name: str) -> list[str] | None:
        """The values of a repeatable option, or None when it was not given."""
        v = self.options.get(name)
        return v if isinstance(v, list) else None


_SA_ADD = (
    Opt("spi", "SPI"), Opt("dst", "IP"), Opt("src", "IP"),
    Opt("cipher", "NAME"), Opt("cipher-key", "HEX"), Opt("cipher-keyfile", "FILE"),
    Opt("digest", "NAME"), Opt("digest-hmac", "BITS"), Opt("digest-key", "HEX"),
    Opt("digest-keyfile", "FILE"),
    Opt("duplex"), Opt("replay-window", "N"), Opt("esn"), Opt("encap", "udp[:SPORT:DPORT]"),
    Opt("keepalive", "SECONDS"),
    Opt("lifetime-bytes", "SOFT[:HARD]"), Opt("lifetime-packets", "SOFT[:HARD]"),
    Opt("lifetime-seconds", "SOFT[:HARD]"),
)  # fmt: skip
_SA_FILTER = (Opt("dst", "IP"), Opt("src", "IP"), Opt("spi", "SPI"))
_TUNNEL = (
    Opt("local", "IP"), Opt("remote", "IP"), Opt("spi", "SPI"), Opt("nextdev", "IFNAME"),
    Opt("peer-net", "CIDR", repeat=True),
)  # fmt: skip
GLOBAL_OPTS = (Opt("json"), Opt("stats"), Opt("socket", "PATH"), Opt("help"))
_SHORT = {"j": "json", "s": "stats", "h": "help"}

_ALL: tuple[Command, ...] = (
    Command("sa", "add", _SA_ADD, 0,
            "sa add --spi=SPI --dst=IP --src=IP\n"
            "       [--cipher=NAME (--cipher-key=HEX | --cipher-keyfile=FILE)]\n"
            "       [--digest=NAME [--digest-hmac=BITS] (--digest-key=HEX | --digest-keyfile=FILE)]\n"
            "       [--duplex] [--replay-window=N] [--esn]\n"
            "       [--encap=udp[:SPORT:DPORT] [--keepalive=SECONDS]]\n"
            "       [--lifetime-bytes=SOFT[:HARD]] [--lifetime-packets=SOFT[:HARD]]\n"
            "       [--lifetime-seconds=SOFT[:HARD]]"),
    Command("sa", "del", (*_SA_FILTER, Opt("duplex"), Opt("all")), 0,
            "sa del [--dst=IP] [--src=IP] [--spi=SPI] [--duplex] | --all"),
    Command("sa", "show", _SA_FILTER, 0, "sa show [--dst=IP] [--src=IP] [--spi=SPI] [-s]"),
    Command("tunnel", "add", _TUNNEL, 1,
            "tunnel add [DEV] --local=IP --remote=IP [--spi=SPI] [--nextdev=IFNAME]\n"
            "       [--peer-net=CIDR]..."),
    Command("tunnel", "change", _TUNNEL, 1,
            "tunnel change|modify DEV [--local=IP] [--remote=IP] [--spi=SPI|any]\n"
            "       [--nextdev=IFNAME|''] [--peer-net=CIDR|'']..."),
    Command("tunnel", "del", (Opt("all"),), 1, "tunnel del DEV | --all"),
    Command("tunnel", "show", (), 1, "tunnel show [DEV] [-s]"),
    Command("stats", None, (Opt("last-drops"),), 0, "stats [--last-drops]"),
    Command("algos", None, (), 0, "algos"),
    Command("version", None, (), 0, "version"),
    Command("help", None, (), 1, "help [MODE]"),
)  # fmt: skip
COMMANDS: dict[tuple[str, str | None], Command] = {(c.mode, c.sub): c for c in _ALL}

MODES = ("sa", "tunnel", "stats", "algos", "version", "help")
# Command words per mode, each mapped to the command it names (aliases share a target).
SUBCOMMANDS: dict[str, dict[str, str]] = {
    "sa": {"add": "add", "del": "del", "delete": "del", "show": "show", "list": "show"},
    "tunnel": {
        "add": "add", "change": "change", "modify": "change", "del": "del", "delete": "del",
        "show": "show", "list": "show",
    },
}  # fmt: skip
STATS_COMMANDS = (("sa", "show"), ("tunnel", "show"))

BRIEF_HEAD = (
    f"Usage: {PROG} [-j] [--socket=PATH] MODE [COMMAND] [OPTIONS]\n"
    f"       {PROG} [-j] [--socket=PATH] -b FILE|- [-force]   (one command per line, as ip -batch)"
)
BRIEF_TAIL = """\
Global options: -j, --json  machine output (JSON on stdout)
                -s, --stats  counters in 'sa show' and 'tunnel show'
                --socket=PATH  ipsecd's control socket (default $IPSEC_TUNNEL_SOCKET or
                               /run/ipsec-tunnel/ipsecd.sock)
Any unambiguous prefix of a mode, command or option works ('ipsecadm sa a', 'ipsecadm tun sh').
Lifetimes are SOFT[:HARD]: bytes take K/M/G/T (1024), packets k/M/G (1000), seconds s/m/h/d.
See 'ipsecadm algos' for cipher and digest names, and ipsecadm(8)."""


def brief_help(topic: str | None = None) -> str:
    """The brief help: every command, or only those of mode `topic`."""
    lines = [BRIEF_HEAD, ""]
    for cmd in COMMANDS.values():
        if topic is None or cmd.mode == topic:
            lines.append(f"  {PROG} {cmd.usage}".replace("\n       ", "\n" + " " * (len(PROG) + 10)))
    return "\n".join([*lines, "", BRIEF_TAIL]) + "\n"


def resolve(word: str, choices: dict[str, str], what: str, topic: str | None = None) -> str:
    """The target of `word` in `choices` (exact name or unambiguous prefix), else UsageError."""
    if word in choices:
        return choices[word]
    hits = sorted({choices[name] for name in choices if word and name.startswith(word)})
    shown = redact(word)
    names = ", ".join(dict.fromkeys(choices))
    if not hits:
        raise UsageError(f"unknown {what} '{shown}' (one of: {names})", topic, brief=topic is None)
    if len(hits) > 1:
        matching = ", ".join(n for n in choices if n.startswith(word))
        raise UsageError(f"ambiguous {what} '{shown}': {matching}", topic, brief=topic is None)
    return hits[0]


def _match_option(name: str, opts: Iterable[Opt], where: str, topic: str | None) -> Opt:
    table = {o.name: o for o in opts}
    if name in table:
        return table[name]
    hits = [o for n, o in table.items() if name and n.startswith(name)]
    if len(hits) == 1:
        return hits[0]
    shown = redact(name)
    if not hits:
        raise UsageError(f"unknown option '--{shown}' for '{where}'", topic)
    raise UsageError(f"ambiguous option '--{shown}': " + ", ".join("--" + o.name for o in hits), topic)


def _wants_help(argv: list[str]) -> tuple[bool, str | None]:
    """Whether -h/--help is on the command line, and the mode it is about (best effort)."""
    words: list[str] = []
    wanted = False
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok == "--":
            break
        if tok == "--socket":
            skip = True
        elif tok in ("-h", "--help") or (tok.startswith("-") and not tok.startswith("--") and "h" in tok[1:]):
            wanted = True
        elif not tok.startswith("-"):
            words.append(tok)
    topic = None
    if words:
        try:
            topic = resolve(words[0], {m: m for m in MODES}, "mode")
        except UsageError:
            topic = None
    return wanted, topic if topic in SUBCOMMANDS else None


def parse_argv(argv: list[str]) -> Invocation:
    """The Invocation `argv` (without the program name) asks for; UsageError when it makes no sense."""
    wanted, topic = _wants_help(argv)
    if wanted:
        return Invocation(None, help=True, help_topic=topic)
    inv = Invocation(None)
    mode: str | None = None
    sub: str | None = None
    only_words = False
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        cmd = _current(mode, sub)
        where = cmd.title if cmd else (mode or PROG)
        if not only_words and tok == "--":
            only_words = True
        elif not only_words and tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            opt = _match_option(name, (*(cmd.opts if cmd else ()), *GLOBAL_OPTS), where, mode)
            if opt.metavar is None:
                if eq:
                    raise UsageError(f"option --{opt.name} takes no value", mode)
                _store_flag(inv, opt.name, mode)
                continue
            if not eq:
                if i >= len(argv):
                    raise UsageError(f"option --{opt.name} needs a value ({opt.metavar})", mode)
                value = argv[i]
                i += 1
            _store_value(inv, opt, value, mode)
        elif not only_words and tok.startswith("-") and tok != "-":
            for letter in tok[1:]:
                if letter not in _SHORT:
                    raise UsageError(f"unknown option '-{redact(letter)}' for '{where}'", mode)
                _store_flag(inv, _SHORT[letter], mode)
        elif mode is None:
            mode = resolve(tok, {m: m for m in MODES}, "mode")
        elif mode in SUBCOMMANDS and sub is None:
            sub = resolve(tok, SUBCOMMANDS[mode], f"{mode} command", mode)
        else:
            inv.positional.append(tok)
    if mode is None:
        if inv.options or inv.json or inv.stats or inv.socket is not None:
            raise UsageError("no mode given (one of: " + ", ".join(MODES) + ")", None, brief=True)
        return inv
    if mode in SUBCOMMANDS and sub is None:
        raise UsageError(
            f"'{mode}' needs a command: " + ", ".join(dict.fromkeys(SUBCOMMANDS[mode].values())), mode
        )
    inv.command = COMMANDS[mode, sub]
    _check_shape(inv, inv.command)
    return inv


def _current(mode: str | None, sub: str | None) -> Command | None:
    if mode is None or (mode in SUBCOMMANDS and sub is None):
        return None
    return COMMANDS[mode, sub]


def _store_flag(inv: Invocation, name: str, topic: str | None) -> None:
    if name == "json":
        inv.json = True
    elif name == "stats":
        inv.stats = True
    elif name in inv.options:
        raise UsageError(f"option --{name} given twice", topic)
    else:
        inv.options[name] = True


def _store_value(inv: Invocation, opt: Opt, value: str, topic: str | None) -> None:
    if opt.name == "socket":
        if inv.socket is not None:
            raise UsageError("option --socket given twice", topic)
        if not value:
            raise UsageError("option --socket needs a path", topic)
        inv.socket = value
    elif opt.repeat:
        current = inv.options.setdefault(opt.name, [])
        assert isinstance(current, list)
        current.append(value)
    elif opt.name in inv.options:
        raise UsageError(f"option --{opt.name} given twice", topic)
    else:
        inv.options[opt.name] = value


def _check_shape(inv: Invocation, cmd: Command) -> None:
    if len(inv.positional) > cmd.positional:
        extra = inv.positional[cmd.positional]
        what = "takes no arguments, only options" if not cmd.positional else "takes one device name"
        raise UsageError(f"'{cmd.title}' {what}: unexpected '{redact(extra)[:64]}'", cmd.mode)
    if inv.stats and (cmd.mode, cmd.sub) not in STATS_COMMANDS:
        raise UsageError("-s/--stats applies only to 'sa show' and 'tunnel show'", cmd.mode)
