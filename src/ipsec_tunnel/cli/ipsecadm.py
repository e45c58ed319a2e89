"""ipsecadm: administer ipsecd's security associations and tunnels, with the original ipsec_tunnel
grammar (`ipsecadm sa add ...`, `ipsecadm tunnel add ...`, `ipsecadm stats`).

`ipsecadm -b FILE` runs one such command line per line of FILE (see `batch`).

Exit status: 0 on success; 1 when ipsecd cannot be reached, refuses a request, or a filtered `sa show`
matches nothing (also when run without parameters); 2 when the command line is wrong or a value (address,
key, algorithm, ...) is refused before anything is sent. A batch exits with the status of its first failed
line.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..control.client import Client, DaemonUnreachable, default_socket_path
from ..control.protocol import MAX_MESSAGE, VERSION, ProtocolError, encode_request
from . import ike as ike_cli
from . import render, requests
from .batch import Batch, numbered_lines, split_batch, words
from .grammar import MODES, PROG, SUBCOMMANDS, Invocation, UsageError, brief_help, parse_argv, resolve
from .keys import command_line_warning, exposed
from .values import redact

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

NOT_RUNNING = (
    "cannot reach ipsecd at {path}: is it running? Start it with 'ipsecd' (it replaces the original's "
    "'modprobe ipsec')"
)

_where = ""  # "FILE:LINE: " while a batch line runs
_quiet = False  # while a batch of adds is checked before it is sent: warnings wait for the second pass
_KEY_ON_COMMAND_LINE = command_line_warning("")[:40]


def _out(text: str) -> None:
    sys.stdout.write(text)


def _err(line: str) -> None:
    sys.stderr.write(f"{PROG}: {_where}{redact(line)}\n")


def _warn(line: str) -> None:
    if _quiet or (_where and line.startswith(_KEY_ON_COMMAND_LINE)):
        return  # a key in a batch file is in no process list; run_batch checks the file's mode instead
    _err(line)


class _Session:
    """One ipsecadm run: where ipsecd is and how results are printed."""

    def __init__(self, inv: Invocation, client: Client | None = None) -> None:
        self.inv = inv
        self.socket = inv.socket or default_socket_path()
        self.client = client or Client(self.socket)

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """The result of `op` from ipsecd."""
        return self.client.call(op, args)

    def show(self, result: Any, human: Callable[[Any], str | None]) -> None:
        """Print `result` as JSON with -j, else as `human` renders it (None: print nothing)."""
        if self.inv.json:
            _out(render.json_text(result))
            return
        text = human(result)
        if text:
            _out(text)


def _sa_add(s: _Session) -> int:
    result = s.call("sa.add", requests.sa_add(s.inv, _warn))
    for line in result.get("warnings", []) if isinstance(result, dict) else []:
        _warn(str(line))  # what ipsecd says about the SA it added (an ambiguous --duplex)
    s.show(result, lambda r: None)
    return EXIT_OK


def _sa_del(s: _Session) -> int:
    s.show(s.call("sa.del", requests.sa_del(s.inv)), lambda r: None)
    return EXIT_OK


def _sa_show(s: _Session) -> int:
    """No SAs at all: nothing printed (`[]` with -j), status 0. A filter matching nothing: "No such SA!"
    on stderr, status 1, as `tunnel show DEV` for an unknown DEV."""
    args = requests.sa_show(s.inv)
    result = s.call("sa.show", args)
    sas = result if isinstance(result, list) else []
    if not sas and any(k in args for k in ("dst", "src", "spi")):
        _err("No such SA!")
        return EXIT_FAIL
    s.show(sas, lambda r: render.sa_table(r, s.inv.stats) if r else None)
    return EXIT_OK


def _tunnel_add(s: _Session) -> int:
    args = requests.tunnel_add(s.inv)
    result = s.call("tunnel.add", args)

    def human(r: Any) -> str | None:  # the name matters only when ipsecd picked it
        return f"{r.get('name')}\n" if not args["name"] and isinstance(r, dict) else None

    s.show(result, human)
    return EXIT_OK


def _tunnel_change(s: _Session) -> int:
    s.show(s.call("tunnel.change", requests.tunnel_change(s.inv)), lambda r: None)
    return EXIT_OK


def _tunnel_del(s: _Session) -> int:
    s.show(s.call("tunnel.del", requests.tunnel_del(s.inv)), lambda r: None)
    return EXIT_OK


def _tunnel_show(s: _Session) -> int:
    result = s.call("tunnel.show", requests.tunnel_show(s.inv))
    tunnels = result if isinstance(result, list) else []
    s.show(tunnels, lambda r: render.tunnel_table(r, s.inv.stats) if r else None)
    return EXIT_OK


def _stats(s: _Session) -> int:
    result = s.call("stats", {"last_drops": True} if s.inv.flag("last-drops") else None)
    s.show(result, lambda r: render.stats_text(r if isinstance(r, dict) else {}))
    return EXIT_OK


def _algos(s: _Session) -> int:
    s.show(render.algorithm_list(), render.algos_text)
    return EXIT_OK


def _version(s: _Session) -> int:
    daemon: Any = None
    note = ""
    try:
        daemon = s.call("version")
    except DaemonUnreachable as exc:
        note = f"ipsecd: not reachable at {s.socket} ({exc.strerror})"
    except ProtocolError as exc:
        note = f"ipsecd: {exc.message}"
    result = {"ipsecadm": __version__, "protocol": VERSION, "ipsecd": daemon}

    def human(r: Any) -> str:
        lines = [f"ipsecadm {__version__} (control protocol {VERSION})"]
        if isinstance(daemon, dict):
            proto = daemon.get("protocol")
            mismatch = f", ipsecadm speaks {VERSION}" if proto != VERSION else ""
            lines.append(f"ipsecd {daemon.get('version')} (control protocol {proto}{mismatch})")
        elif note:
            lines.append(redact(note))
        return "\n".join(lines) + "\n"

    s.show(result, human)
    return EXIT_OK


def _help(s: _Session) -> int:
    topic = None
    if s.inv.positional:
        topic = resolve(s.inv.positional[0], {m: m for m in MODES}, "mode")
    _out(brief_help(topic if topic in SUBCOMMANDS else None))
    return EXIT_OK


_HANDLERS: dict[tuple[str, str | None], Callable[[_Session], int]] = {
    ("sa", "add"): _sa_add,
    ("sa", "del"): _sa_del,
    ("sa", "show"): _sa_show,
    ("tunnel", "add"): _tunnel_add,
    ("tunnel", "change"): _tunnel_change,
    ("tunnel", "del"): _tunnel_del,
    ("tunnel", "show"): _tunnel_show,
    ("stats", None): _stats,
    ("algos", None): _algos,
    ("version", None): _version,
    ("help", None): _help,
    **ike_cli.HANDLERS,
}


def run(argv: list[str], client: Client | None = None) -> int:
    """Carry out the command line `argv` (through `client` when given); exceptions are left to `main`."""
    inv = parse_argv(argv)
    if inv.help:
        _out(brief_help(inv.help_topic))
        return EXIT_OK
    if inv.command is None:
        sys.stderr.write(brief_help())
        return EXIT_FAIL
    return _HANDLERS[inv.command.mode, inv.command.sub](_Session(inv, client))


class _Deferred(Exception):
    """Raised by `_Recorder.call` once it has noted the request of a batch line."""


class _Recorder(Client):
    """The client of one line of a batch of adds: first it notes the request the line makes (and raises
    `_Deferred`, so nothing is printed); once the batch was carried out, it answers with `answer`."""

    def __init__(self) -> None:
        super().__init__("")
        self.request: tuple[str, dict[str, Any]] | None = None
        self.answer: Any = None

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        if self.request is None:
            self.request = (op, args or {})
            raise _Deferred
        return self.answer


def _adds_only(batch: Batch, lines: list[tuple[int, list[str]]]) -> bool:
    """Whether every line of `lines` is `sa add` or `tunnel add` (a line that does not parse counts as
    one: it is reported before anything is sent); False for an empty batch."""
    adds = 0
    for _number, argv in lines:
        try:
            command = parse_argv([*batch.options, *argv]).command
        except UsageError:
            continue
        if command is None or (command.mode, command.sub) not in (("sa", "add"), ("tunnel", "add")):
            return False
        adds += 1
    return adds > 0


def _run_adds(batch: Batch, lines: list[tuple[int, list[str]]], client: Client) -> int | None:
    """A batch of adds as one transaction (`batch`: all or none). None when it is too big for one request
    (the caller then goes line by line)."""
    global _where, _quiet
    recorders = []
    _quiet = True
    try:
        for number, argv in lines:
            _where = f"{batch.name}:{number}: "
            recorder = _Recorder()

            def note(argv: list[str] = argv, recorder: _Recorder = recorder) -> int:
                try:
                    return run([*batch.options, *argv], recorder)
                except _Deferred:
                    return EXIT_OK

            rc = _guarded(note)
            if rc != EXIT_OK:
                _where = ""
                _err(
                    f"{batch.name}: nothing applied: line {number} is wrong (a batch of adds is all or none)"
                )
                return rc
            if recorder.request is not None:  # (`sa add --help` asks ipsecd nothing)
                recorders.append((number, argv, recorder))
    finally:
        _quiet = False
        _where = ""
    requests_ = [{"op": r.request[0], "args": r.request[1]} for _n, _a, r in recorders if r.request]
    if not requests_:
        return EXIT_OK
    if len(encode_request("batch", {"requests": requests_})) > MAX_MESSAGE:
        return None
    try:
        results = client.call("batch", {"requests": requests_})
    except ProtocolError as exc:
        if exc.errno == "EOPNOTSUPP":  # an ipsecd without `batch`: line by line
            return None
        head, _, message = exc.message.partition(": ")
        index = int(head.split()[-1]) if head.startswith("request ") and head.split()[-1].isdigit() else 0
        if not 0 < index <= len(recorders):
            raise
        number = recorders[index - 1][0]
        _where = f"{batch.name}:{number}: "
        _err(message)
        _where = ""
        _err(
            f"{batch.name}: nothing applied: line {number} was refused and the {index - 1} command(s) "
            "before it were undone (a batch of adds is all or none)"
        )
        return EXIT_FAIL
    for (number, argv, recorder), result in zip(recorders, results, strict=True):
        _where = f"{batch.name}:{number}: "
        recorder.answer = result
        _guarded(lambda: run([*batch.options, *argv], recorder))  # noqa: B023 - prints what the line says
    _where = ""
    return EXIT_OK


def run_batch(batch: Batch) -> int:
    """Carry out every command line of a batch file over one connection; the status of the first failure.
    A batch of `sa add` and `tunnel add` lines only (without -force) is one transaction: all or none."""
    global _where
    try:
        stream = sys.stdin if batch.path == "-" else open(batch.path, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as exc:
        _err(f"cannot read batch file {batch.path}: {exc.strerror}")
        return EXIT_FAIL
    if batch.path != "-" and os.path.isfile(batch.path) and exposed(batch.path, os.stat(batch.path).st_mode):
        _err(f"warning: batch file {batch.path} is readable by group/others; if it holds keys, chmod 600 it")
    socket_path = parse_argv([*batch.options, "version"]).socket or default_socket_path()
    client = Client(socket_path, keep_open=True)
    status = EXIT_OK
    done = 0
    try:
        lines = list(numbered_lines(stream))  # read to the end first: a batch of adds is sent whole
        split: list[tuple[int, list[str]]] = []
        for number, line in lines:
            try:
                argv = words(line)
            except ValueError:
                split = []
                break
            if argv:
                split.append((number, argv))
        else:
            if not batch.force and _adds_only(batch, split):
                rc = _run_adds(batch, split, client)
                if rc is not None:
                    return rc
        for number, line in lines:
            _where = f"{batch.name}:{number}: "
            try:
                argv = words(line)
            except ValueError as exc:
                _err(f"cannot split the line into words: {exc}")
                rc = EXIT_USAGE
            else:
                if not argv:
                    continue
                rc = _guarded(lambda: run([*batch.options, *argv], client))  # noqa: B023
            if rc == EXIT_OK:
                done += 1
                continue
            status = status or rc
            if not batch.force:
                _where = ""
                _err(
                    f"{batch.name}: stopped at line {number}; the {done} command(s) before it were carried "
                    "out (-force goes on past errors)"
                )
                break
    except (OSError, UnicodeDecodeError) as exc:
        _where = ""
        _err(f"cannot read batch file {batch.name}: {getattr(exc, 'strerror', None) or exc}")
        status = status or EXIT_FAIL
    finally:
        _where = ""
        client.close()
        if stream is not sys.stdin:
            stream.close()
    return status


def _unreachable(exc: DaemonUnreachable) -> str:
    path = exc.filename
    if exc.permission_denied:
        return f"permission denied on ipsecd's socket {path}: run ipsecadm as root"
    message = NOT_RUNNING.format(path=path)
    if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):  # the plain "not running" case
        message = message.replace(": is it running?", f" ({exc.strerror}): is it running?")
    return message


def main(argv: list[str] | None = None) -> int:
    """The ipsecadm command; returns the exit status and never lets a traceback out."""
    args = sys.argv[1:] if argv is None else list(argv)
    found: list[Batch | None] = []

    def split() -> int:
        found.append(split_batch(args))
        return EXIT_OK

    rc = _guarded(split)
    if rc != EXIT_OK:
        return rc
    batch = found[0]
    if batch is not None:
        return _guarded(lambda: run_batch(batch))
    return _guarded(lambda: run(args))


def _guarded(action: Callable[[], int]) -> int:
    """`action`'s status, or the status and one error line for what it raised."""
    try:
        return action()
    except UsageError as exc:
        if exc.brief:
            sys.stderr.write(brief_help())
        hint = ""
        if exc.hint:
            topic = f" {exc.topic}" if exc.topic in SUBCOMMANDS else ""
            hint = f" (see '{PROG} help{topic}')"
        _err(f"{exc}{hint}")
        return EXIT_USAGE
    except DaemonUnreachable as exc:
        _err(_unreachable(exc))
        return EXIT_FAIL
    except ProtocolError as exc:
        _err(exc.message)
        return EXIT_FAIL
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        # The reader went away (`ipsecadm sa show | head`): stop quietly, and keep Python from
        # complaining when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_FAIL
    except Exception as exc:  # the promise is one line, never a traceback
        _err(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
