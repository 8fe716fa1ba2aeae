"""The ``replay-proxy`` command line: record | replay | play | serve | mcp | check | learn | schema |
convert | ca.

Exit status: 0 after a clean stop (SIGINT or SIGTERM), 2 for a user mistake (one line on stderr, no
traceback), 1 for anything unexpected. ``--report`` prints the verdict on the client's behaviour at exit
(stdout) without changing the status; ``--strict-report`` also exits 3 when the verdict found violations.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from proxy import __version__, loading, settings
from proxy.errors import ReplayProxyError
from proxy.router import RecordMode
from proxy.server import ReplayProxy, default_confdir, ensure_ca
from proxy.session import console_journal
from proxy.settings import CLI

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_VIOLATIONS = 3
"""``--strict-report``: the proxy stopped cleanly, and the client broke a rule of the verdict."""
PROGRESS_AFTER = 3.0
"""Seconds of start-up before the console says how it is going (then every PROGRESS_EVERY)."""
PROGRESS_EVERY = 5.0
UNREPORTED_JOURNAL = 1000
"""Exchanges the journal keeps when no --report reads it (with one: journal.MAX_ENTRIES)."""

EPILOG = """\
examples:
  replay-proxy record https://atlas.microsoft.com -o cassettes/tileset.yaml
      forward to the real service on http://127.0.0.1:8080 and save every exchange
  replay-proxy replay cassettes/azure-maps/tileset-succeeds.yaml --port 0 --retry-after 0.05
      answer from the cassette, offline, on a free port, with fast polling
  replay-proxy record --mode regular -o cassettes/all-hosts.yaml
      an HTTP(S)_PROXY for clients whose base URL cannot change (trust `replay-proxy ca`)
  replay-proxy ca
      print the path of the CA certificate HTTPS clients must trust in --mode regular
"""


class _Parser(argparse.ArgumentParser):
    """argparse that exits with our usage status (2) and one line, not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"replay-proxy: error: {message} (see --help)\n")


def _add_common(p: argparse.ArgumentParser, command: str) -> None:
    """The run options ``command`` takes, from the table in proxy/settings.py."""
    settings.add_arguments(p, command)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="replay-proxy",
        description="A recording and replay HTTP(S) proxy for testing clients of remote services.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"replay-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    rec = sub.add_parser(
        "record",
        help="forward to UPSTREAM_URL and save every exchange to a cassette",
        description="Forward to the real service and save every exchange to a vcrpy cassette, as it happens.",
        epilog="example: replay-proxy record https://atlas.microsoft.com -o cassettes/tileset.yaml --port 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rec.add_argument(
        "upstream",
        nargs="?",
        metavar="UPSTREAM_URL",
        help="the real service, e.g. https://atlas.microsoft.com (not used with --mode regular)",
    )
    rec.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="CASSETTE",
        help="cassette file to write (vcrpy YAML; its JSON for a .json name), e.g. -o cassettes/tileset.yaml",
    )
    _add_common(rec, "record")

    rep = sub.add_parser(
        "replay",
        help="answer from a cassette, never touching the network",
        description="Answer from a vcrpy cassette, offline: an unmatched request gets a 599 diagnostic.",
        epilog="example: replay-proxy replay cassettes/azure-maps/tileset-succeeds.yaml --port 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument(
        "cassette",
        type=Path,
        metavar="CASSETTE",
        help="cassette file (vcrpy YAML or JSON), e.g. cassettes/azure-maps/tileset-succeeds.yaml",
    )
    _add_common(rep, "replay")

    play = sub.add_parser(
        "play",
        help="answer from scenario files (status progressions, delays, faults), offline",
        description="Answer from YAML scenarios, first rule that matches wins (routes, then operations, in "
        "file order). Alone it is offline: an unmatched request gets a 599 diagnostic. Over --cassette it "
        "replays what the scenarios do not answer; over --upstream it forwards it (and records it with -o).",
        epilog="examples:\n"
        "  replay-proxy play scenarios/azure-maps/tileset-succeeds.yaml\n"
        "  replay-proxy play scenarios/azure-maps/flaky-polling.yaml --clock virtual --retry-after 0.05\n"
        "  replay-proxy play inject-503.yaml --upstream https://atlas.microsoft.com -o cassettes/real.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    play.add_argument(
        "scenarios",
        nargs="+",
        type=Path,
        metavar="SCENARIO",
        help="scenario files (YAML), e.g. scenarios/azure-maps/tileset-succeeds.yaml",
    )
    layer = play.add_mutually_exclusive_group()
    layer.add_argument(
        "--cassette",
        type=Path,
        metavar="CASSETTE",
        help="replay this cassette for what the scenarios do not answer "
        "(e.g. --cassette cassettes/azure-maps/tileset-succeeds.yaml)",
    )
    layer.add_argument(
        "--upstream",
        metavar="URL",
        help="forward what the scenarios do not answer to the real service (e.g. --upstream https://atlas.microsoft.com)",
    )
    play.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="CASSETTE",
        help="with --upstream: record the forwarded exchanges to this cassette (e.g. -o cassettes/real.yaml)",
    )
    _add_common(play, "play")

    serve = sub.add_parser(
        "serve",
        help="start with nothing loaded; tests load scenarios or a cassette through the control API",
        description="Serve nothing until told: every request gets a 599 saying to load something with "
        "POST /__replay-proxy/use (see README: Control API). For suites in any language that switch "
        "scenarios per test and read the journal and the verdict over HTTP.",
        epilog="examples:\n"
        "  replay-proxy serve --port 0 --clock virtual --retry-after 0.05\n"
        "  curl -s -X POST http://127.0.0.1:8080/__replay-proxy/use "
        "-d '{\"scenarios\": [\"scenarios/azure-maps/tileset-fails.yaml\"]}'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(serve, "serve")

    mcp = sub.add_parser(
        "mcp",
        help="a Model Context Protocol server on stdio: coding agents drive a proxy with its tools",
        description="Serve the control API as Model Context Protocol tools on stdin/stdout (use, reset, "
        "journal, verdict, operations and the operation verbs), for coding agents. Drives the proxy at "
        "--url, or starts one of its own with nothing loaded. Needs the mcp package "
        "(pip install 'replay-proxy[mcp]').",
        epilog="examples:\n"
        "  replay-proxy mcp                                  # its own proxy, on a free port\n"
        "  replay-proxy mcp --url http://127.0.0.1:8080      # a running `replay-proxy serve`",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mcp.add_argument("--url", default=None, help="the proxy to drive (default: start one, loopback)")
    mcp.add_argument(
        "--control-token", default=None, metavar="TOKEN", help="the proxy's --control-token, if it has one"
    )
    mcp.add_argument("--port", type=int, default=0, help="port of its own proxy (default: a free one)")
    mcp.add_argument("--root", type=Path, default=None, metavar="DIR", help="its own proxy's --root")
    mcp.add_argument(
        "--retry-after", type=float, default=None, metavar="SECONDS", help="its own proxy's --retry-after"
    )

    check = sub.add_parser(
        "check",
        help="validate scenario files without serving",
        description="Validate scenario files: exit 0 when all are valid, 2 with one line per problem "
        "(file:line:column: what is wrong, what was expected).",
        epilog="example: replay-proxy check scenarios/azure-maps/*.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO", help="scenario files (YAML)")

    learn = sub.add_parser(
        "learn",
        help="turn a recording into an editable scenario",
        description="Learn a scenario from recordings (vcrpy cassettes, HAR files, mitmproxy flow dumps): "
        "each long-running operation becomes an operations: entry, everything else routes. The result passes "
        "`replay-proxy check`.",
        epilog="example: replay-proxy learn cassettes/azure-maps/tileset-succeeds.yaml -o learned.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    learn.add_argument("sources", nargs="+", type=Path, metavar="SOURCE", help="recordings to learn from")
    learn.add_argument(
        "-o", "--output", required=True, type=Path, metavar="SCENARIO", help="the scenario file to write"
    )
    learn.add_argument(
        "--timing",
        choices=("polls", "time"),
        default="polls",
        help="how long each step lasts: polls = the recorded number of polls (times:, default), time = the "
        "recorded duration (for:) when the recording has times",
    )

    sub.add_parser(
        "schema",
        help="print the JSON Schema of scenario files",
        description="Print the JSON Schema of scenario files, for editors (also shipped as "
        "scenarios/scenario.schema.json).",
        epilog="example: replay-proxy schema > scenario.schema.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    conv = sub.add_parser(
        "convert",
        help="convert a HAR file to a cassette, or a cassette to HAR",
        description="Write the exchanges of a HAR file (browsers' devtools, mitmproxy, --har) as a vcrpy "
        "cassette, or a cassette's as HAR 1.2, by the output's name: .har, else YAML (.json: vcrpy's JSON). "
        "Entries without a response and replay-proxy's own diagnostics (599) are left out, with a warning.",
        epilog="examples:\n"
        "  replay-proxy convert session.har -o cassettes/session.yaml\n"
        "  replay-proxy convert cassettes/azure-maps/tileset-succeeds.yaml -o tileset.har",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conv.add_argument("source", type=Path, metavar="FILE", help="a HAR file or a cassette, e.g. session.har")
    conv.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="FILE",
        help="the file to write: .har for HAR, else a cassette (e.g. -o cassettes/session.yaml)",
    )

    prune = sub.add_parser(
        "prune",
        help="drop the interactions of a cassette that no journal line played",
        description="Drop the interactions of CASSETTE that no line of the journals (--journal FILE of "
        "play/replay/record, --replay-journal of the pytest plugin) played. The rest of the file stays as "
        "it was (vcrpy's layout, YAML or JSON; another layout is rewritten in vcrpy's); vcrpy loads the "
        "result. Refuses, changing nothing, when the journals do not name the cassette or it changed since.",
        epilog="example: replay-proxy prune cassettes/tileset.yaml --journal journal.jsonl --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prune.add_argument("cassette", type=Path, metavar="CASSETTE", help="the cassette to prune")
    prune.add_argument(
        "--journal",
        action="append",
        type=Path,
        required=True,
        metavar="FILE",
        help="a journal of a run that replayed CASSETTE (repeatable: what any of them played is kept)",
    )
    prune.add_argument("--dry-run", action="store_true", help="list what would be dropped; change nothing")

    lint = sub.add_parser(
        "lint",
        help="find secrets left in cassettes (exit 3 with file:line per finding)",
        description="Scan cassettes for secrets: values the redaction rules would hide if the exchange were "
        "recorded now (secret names, credential-shaped values), and long random-looking tokens in headers, "
        "URLs and JSON bodies, requests and responses. One line per finding (file:line, where, the first "
        "characters and length, never the whole value); exit 3 with findings, 0 when clean.",
        epilog="example: replay-proxy lint cassettes/*.yaml  (a pre-commit hook: see the README)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lint.add_argument("cassettes", nargs="+", type=Path, metavar="CASSETTE", help="cassette files")
    lint.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="NAME",
        help="a header, query parameter or JSON key whose random-looking values are no secret "
        "(repeatable, e.g. --allow x-ms-correlation-request-id)",
    )

    drift = sub.add_parser(
        "drift",
        help="send a cassette's requests to the real service again and report how its API drifted",
        description="Send CASSETTE's recorded requests to UPSTREAM again, in order (safe methods only unless "
        "--unsafe; polls as a client would, following the live status URLs), and report structural drift "
        "by severity: status codes, LRO headers (Location, Operation-Location, Azure-AsyncOperation, "
        "Retry-After), the operation status vocabulary, JSON fields added, removed or retyped (values "
        "are ignored). Exit 0: no drift; 3: drift at or above --fail-on; 2: bad input.",
        epilog="example: replay-proxy drift cassettes/tileset.yaml --upstream https://atlas.microsoft.com "
        "--unsafe -H 'subscription-key: ...'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    drift.add_argument("cassette", type=Path, metavar="CASSETTE", help="the recording to check")
    drift.add_argument(
        "--upstream", required=True, metavar="URL", help="the real service, e.g. https://atlas.microsoft.com"
    )
    drift.add_argument(
        "--unsafe",
        action="store_true",
        help="also send POST, PUT, PATCH, DELETE... (they act on the real service: start operations, "
        "create and delete resources)",
    )
    drift.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        type=_header,
        metavar="'NAME: VALUE'",
        help="a header to send with every request, e.g. the credential the cassette holds redacted "
        "(repeatable; -H 'Authorization: Bearer ...')",
    )
    drift.add_argument(
        "--max-delay",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="wait at most this long between polls, whatever Retry-After says (default: %(default)g)",
    )
    drift.add_argument(
        "--max-polls",
        type=int,
        default=30,
        metavar="N",
        help="poll an operation at most N times to see it finish as the recording did (default: %(default)s)",
    )
    drift.add_argument(
        "--timeout", type=_seconds, default=30.0, metavar="SECONDS", help="per request (default: %(default)g)"
    )
    drift.add_argument("--upstream-ca", type=Path, default=None, metavar="PEM", help="also trust this CA")
    drift.add_argument(
        "--fail-on",
        choices=("info", "warning", "breaking"),
        default="info",
        help="the least severity that makes the exit status 3 (default: %(default)s, any drift)",
    )

    ca = sub.add_parser(
        "ca",
        help="print the CA certificate path (created on first use)",
        description="Print the path of the CA certificate that HTTPS clients must trust in --mode regular.",
        epilog="example: REQUESTS_CA_BUNDLE=$(replay-proxy ca) python my_client.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ca.add_argument(
        "--confdir", type=Path, default=None, help=f"directory of the CA (default: {default_confdir()})"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ca":
            print(ensure_ca(args.confdir or default_confdir()), flush=True)
            return EXIT_OK
        if args.command == "check":
            from proxy.scenario.check import check_main

            return check_main(args.scenarios)
        if args.command == "convert":
            return _convert(args.source, args.output)
        if args.command == "mcp":
            from proxy.mcp_server import serve_stdio

            return serve_stdio(
                args.url, args.control_token, port=args.port, root=args.root, retry_after=args.retry_after
            )
        if args.command == "learn":
            from proxy.learn import learn_main

            return learn_main(args.sources, args.output, timing=args.timing)
        if args.command == "prune":
            from proxy.prune import prune_main

            return prune_main(args.cassette, args.journal, args.dry_run)
        if args.command == "lint":
            from proxy.lint import lint_main

            return lint_main(args.cassettes, args.allow)
        if args.command == "drift":
            return _drift(args)
        if args.command == "schema":
            from proxy.scenario.check import schema_text

            sys.stdout.write(schema_text())
            return EXIT_OK
        return _serve(args)
    except ReplayProxyError as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"replay-proxy: error: {line}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (`replay-proxy lint ... | head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one at exit's flush
        return EXIT_INTERNAL


def _seconds(value: str) -> float:
    """``drift``'s delays: zero or more seconds."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be zero or more seconds, e.g. 0.5")
    return seconds


def _header(value: str) -> tuple[str, str]:
    name, sep, text = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is not 'NAME: VALUE'")
    return name.strip(), text.strip()


def _drift(args: argparse.Namespace) -> int:
    from proxy.drift import Options, drift_main
    from proxy.server import check_upstream

    if args.upstream_ca is not None and not args.upstream_ca.is_file():
        raise _usage(f"{args.upstream_ca}: upstream CA file not found")
    options = Options(
        check_upstream(args.upstream),
        unsafe=args.unsafe,
        headers=tuple(args.header),
        max_delay=args.max_delay,
        max_polls=max(1, args.max_polls),
        timeout=args.timeout or 30.0,
        ca=str(args.upstream_ca) if args.upstream_ca else None,
    )
    return drift_main(args.cassette, options, args.fail_on)


def _serve(args: argparse.Namespace) -> int:
    given = settings.from_namespace(args, args.command)
    if args.command == "record":
        cassette: Path | None = args.output
        upstream = args.upstream
        if args.mode == "reverse" and not upstream:
            raise _usage(
                "record needs UPSTREAM_URL in reverse mode (e.g. replay-proxy record https://host -o c.yaml)"
            )
        if args.mode == "regular" and upstream:
            raise _usage("--mode regular takes no UPSTREAM_URL: clients choose the hosts")
        record_mode = given.record_mode
        scenarios: list[Path] = []
    elif args.command == "play":
        scenarios = args.scenarios
        upstream = args.upstream
        if args.output is not None and upstream is None:
            raise _usage("-o records forwarded exchanges: it needs --upstream URL")
        if args.mode == "regular" and upstream:
            raise _usage("--mode regular takes no --upstream: clients choose the hosts")
        if args.record_mode is not None and args.output is None:
            raise _usage("--record-mode needs -o CASSETTE")
        cassette = args.output if args.output is not None else args.cassette
        record_mode = args.record_mode or (RecordMode.REWRITE.value if args.output else RecordMode.NONE.value)
    elif args.command == "serve":
        cassette, upstream, record_mode, scenarios = None, None, RecordMode.NONE.value, []
    else:
        cassette, upstream, record_mode = args.cassette, None, RecordMode.NONE.value
        scenarios = []
    for path, what in ((given.report_html, "--report-html"), (given.har, "--har")):
        if path is not None:
            _check_writable(path, what)
    _configure_logging(given.quiet)
    if given.journal_file is not None:
        from proxy.journal import start_fresh

        start_fresh(given.journal_file)
    # Without a report, nothing reads the journal: keep a few entries, not 100,000 (a long recording's RSS)
    # (serve: the control API's journal and verdict read it)
    reporting = given.report or given.strict_report or given.report_html is not None
    keep_journal = reporting or args.command == "serve"
    proxy = ReplayProxy(
        **{
            **given.kwargs(CLI),
            "cassette": cassette,
            "upstream": upstream,
            "record_mode": record_mode,
            "scenarios": scenarios,
        },
        journal=None if keep_journal else console_journal(UNREPORTED_JOURNAL),
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # a large cassette loads for minutes: say how it goes (not with -q)
        proxy.start(timeout=None, progress=None if given.quiet else _StartProgress())
        print(_ready_line(args, proxy), flush=True)
        warning = exposure_warning(args)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        while not stop.wait(0.2):
            if proxy._thread is not None and not proxy._thread.is_alive():
                print("replay-proxy: error: the proxy stopped unexpectedly", file=sys.stderr, flush=True)
                return EXIT_INTERNAL
    finally:
        proxy.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    recorded = record_mode != RecordMode.NONE.value and cassette is not None and cassette.exists()
    if recorded and not given.quiet:
        print(f"replay-proxy: stopped; cassette {cassette}", file=sys.stderr, flush=True)
    for problem in proxy.core.save_errors:  # said when it happened; said again last, where it is seen
        print(f"replay-proxy: error: not everything was saved: {problem}", file=sys.stderr, flush=True)
    if given.har is not None and not proxy.core.save_errors:
        print(
            f"replay-proxy: HAR of {proxy.har.count if proxy.har else 0} exchanges: {given.har}",
            file=sys.stderr,
        )
    if reporting:
        from proxy.verdict import check, report

        entries = proxy.journal.entries
        violations = check(entries, given.skip_check)
        if given.report or given.strict_report:
            print(report(entries, violations), flush=True)
            from proxy.unused import format_unused

            unused = format_unused(proxy.core.unused())
            if unused:
                print(unused, flush=True)
        if given.report_html is not None:
            from proxy.report_html import write_report

            print(write_report(given.report_html, entries, violations), file=sys.stderr, flush=True)
        if violations and given.strict_report and not proxy.core.save_errors:
            return EXIT_VIOLATIONS
    return EXIT_USAGE if proxy.core.save_errors else EXIT_OK


def _check_writable(path: Path, option: str) -> None:
    """Say now, not after a long session, that ``path`` cannot be written (a user mistake: exit 2)."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _usage(f"{option} {path}: cannot create {parent}: {e.strerror or e}") from None
    if path.is_dir() or not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise _usage(f"{option} {path}: cannot write there (a directory, or no permission)")


def _convert(source: Path, target: Path) -> int:
    from proxy.har import convert

    _configure_logging(quiet=False)
    n = convert(source, target)
    print(f"replay-proxy: wrote {n} exchange{'s' if n != 1 else ''} to {target}", file=sys.stderr, flush=True)
    return EXIT_OK


class _StartProgress:
    """Says on stderr how the start is going once it takes more than ``PROGRESS_AFTER`` seconds (a large
    cassette loading: how much is read, then how many interactions are built), every ``PROGRESS_EVERY``."""

    def __init__(self) -> None:
        self.next = PROGRESS_AFTER

    def __call__(self, waited: float) -> None:
        if waited < self.next:
            return
        self.next = waited + PROGRESS_EVERY
        state = loading.current()
        line = f"replay-proxy: still starting after {waited:.0f} s"
        if state is not None:
            line = state.line(waited)
        print(line, file=sys.stderr, flush=True)


def exposure_warning(args: argparse.Namespace) -> str | None:
    """The warning for a ``--host`` other machines can reach (None for loopback), naming what they can do."""
    host = args.host.strip("[]")
    try:
        loopback = host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        loopback = False
    if loopback:
        return None
    risk = "use the proxy and read what it replays or records"
    if args.command == "record" or (args.command == "play" and args.upstream):
        reach = "any host this machine can reach" if args.mode == "regular" else args.upstream
        risk += f", and reach {reach} through it"
    control = (
        "the control API requires --control-token"
        if getattr(args, "control_token", None)
        else "the control API is off (give --control-token TOKEN to turn it on)"
    )
    return (
        f"replay-proxy: warning: listening on {args.host or 'every interface'}, not only on this machine: "
        f"anyone who can reach it can {risk} (--host 127.0.0.1 keeps it local); {control}"
    )


def _ready_line(args: argparse.Namespace, proxy: ReplayProxy) -> str:
    if args.command == "record":
        what = f"recording {args.upstream or 'all hosts'} to {args.output}"
    elif args.command == "play":
        what = "playing " + ", ".join(str(s) for s in args.scenarios)
        if args.cassette:
            what += f" over {args.cassette}"
        elif args.upstream:
            what += f" over {args.upstream}" + (f", recording to {args.output}" if args.output else "")
    elif args.command == "serve":
        what = f"serving nothing yet: load scenarios with POST {proxy.url}/__replay-proxy/use"
    else:
        what = f"replaying {args.cassette}"
    # The proxy's URL comes first: it is the first URL on the line even when recording an http upstream.
    line = f"replay-proxy on {proxy.url} is {what}"
    if args.mode == "regular":
        line += f" (forward proxy; HTTPS clients must trust {proxy.ca_cert})"
    return line


def _usage(message: str) -> ReplayProxyError:
    from proxy.errors import ConfigError

    return ConfigError(message)


def _configure_logging(quiet: bool) -> None:
    """One plain line per exchange on stderr (the ready line has stdout to itself); -q keeps warnings."""
    logger = logging.getLogger("proxy")
    logger.propagate = False
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    _show_mitmproxy_errors()


class _MitmproxyErrors(logging.Filter):
    """mitmproxy's own ERROR records worth a console line: not empty, and not the listener's start and
    stop errors (the proxy reports a failed start itself, saying what to do)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "mitmproxy.addons.proxyserver" and bool(str(record.getMessage()).strip())


def _show_mitmproxy_errors() -> None:
    """mitmproxy's errors (an addon that raised, an internal error) on stderr, with their traceback.

    Without this they are lost: the root logger only has mitmproxy's own handler, which feeds an event
    log that is not loaded here, so Python's last-resort handler never prints them either.
    """
    logger = logging.getLogger("mitmproxy")
    for handler in list(logger.handlers):
        if any(isinstance(f, _MitmproxyErrors) for f in handler.filters):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.ERROR)
    handler.addFilter(_MitmproxyErrors())
    handler.setFormatter(logging.Formatter("replay-proxy: mitmproxy error: %(message)s"))
    logger.addHandler(handler)
