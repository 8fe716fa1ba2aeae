"""The ``replay-proxy`` command line: record | replay | ca.

Exit status: 0 after a clean stop (SIGINT or SIGTERM), 2 for a user mistake (one line on stderr, no
traceback), 1 for anything unexpected. ``--report`` prints the verdict on the client's behaviour at exit
(stdout) without changing the status; ``--strict-report`` also exits 3 when the verdict found violations.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from proxy import __version__, loading
from proxy.addon import console_journal
from proxy.cassette import WHEN_EXHAUSTED
from proxy.errors import ReplayProxyError
from proxy.gateway import DEFAULT_UPSTREAM_TIMEOUT
from proxy.lean import DEFAULT_ENGINE, ENGINES
from proxy.matching import DEFAULT_MATCH_ON, MATCHER_NAMES
from proxy.router import RecordMode
from proxy.server import DEFAULT_MAX_BODY_SIZE, MODES, ReplayProxy, default_confdir, ensure_ca, parse_size

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


def _csv(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one matcher name, e.g. method,path,query")
    return names


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535; 0 picks a free one)")
    return port


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be zero or more seconds, e.g. 0.01")
    return seconds


def _size(value: str) -> int:
    try:
        return parse_size(value) or 0
    except ReplayProxyError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=DEFAULT_ENGINE,
        help="mitmproxy: everything (default); lean: replay and play over plain HTTP/1.1 in reverse mode, "
        "several times faster (no recording, --upstream, --mode regular, HTTPS or HTTP/2)",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("listening")
    g.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, e.g. 0.0.0.0)"
    )
    g.add_argument(
        "--port",
        type=_port,
        default=8080,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )
    g.add_argument(
        "--mode",
        choices=MODES,
        default="reverse",
        help="reverse: clients use the proxy's URL as their base URL (default); regular: clients use it as "
        "HTTP(S)_PROXY, HTTPS intercepted with the CA of `replay-proxy ca` (e.g. --mode regular)",
    )
    g.add_argument(
        "--confdir",
        type=Path,
        default=None,
        help=f"directory of the proxy's CA (default: $REPLAY_PROXY_CONFDIR or {default_confdir()})",
    )
    g.add_argument(
        "--upstream-ca",
        type=Path,
        default=None,
        metavar="PEM",
        help="also trust this CA for the upstream's TLS certificate (e.g. --upstream-ca corp-root.pem)",
    )
    g.add_argument(
        "--max-body-size",
        type=_size,
        default=DEFAULT_MAX_BODY_SIZE,
        metavar="SIZE",
        help="refuse a request body larger than this with 413 (an upstream response body with 502) "
        "instead of buffering it; k, m, g suffixes, 0 for no limit "
        f"(default: {DEFAULT_MAX_BODY_SIZE}; e.g. --max-body-size 1g)",
    )
    g.add_argument(
        "--upstream-timeout",
        type=_seconds,
        default=DEFAULT_UPSTREAM_TIMEOUT,
        metavar="SECONDS",
        help="give up on an upstream that has not answered completely after this long: the client gets "
        "504 and nothing is recorded; 0 for no limit (default: %(default)g; e.g. --upstream-timeout 300)",
    )
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="do not print a line per exchange nor start-up progress (errors still show)",
    )

    m = p.add_argument_group("matching and replay")
    m.add_argument(
        "--match-on",
        type=_csv,
        default=list(DEFAULT_MATCH_ON),
        metavar="NAMES",
        help=f"comma-separated vcrpy matchers (default: {','.join(DEFAULT_MATCH_ON)}; "
        f"from: {', '.join(MATCHER_NAMES)}; e.g. --match-on method,path,query,body)",
    )
    m.add_argument(
        "--match-header",
        action="append",
        default=[],
        metavar="NAME",
        help="a request header that must also match (repeatable, e.g. --match-header x-ms-version)",
    )
    m.add_argument(
        "--filter-query-parameter",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="vcrpy's filter_query_parameters: remove this query parameter (or set it to VALUE) in live "
        "requests before matching and in what is recorded; replays a cassette recorded with that vcrpy "
        "option (repeatable, e.g. --filter-query-parameter api_key)",
    )
    m.add_argument(
        "--filter-header",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="vcrpy's filter_headers: remove this request header (or set it to VALUE) before matching "
        "and in what is recorded (repeatable, e.g. --filter-header authorization)",
    )
    m.add_argument(
        "--when-exhausted",
        choices=WHEN_EXHAUSTED,
        default="repeat-last",
        help="when identical requests outnumber the recorded ones: repeat the last answer (default), "
        "cycle from the first, or error (a no-match answer)",
    )
    m.add_argument(
        "--retry-after",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="rewrite advertised Retry-After, retry-after-ms and x-ms-retry-after-ms to this delay so "
        "polling replays fast (e.g. --retry-after 0.05, the recommended value). Always valid HTTP: whole "
        "seconds stay Retry-After; a fraction goes in retry-after-ms (beside Retry-After rounded up on "
        "429/503 and other 400+ answers). Note azure-core treats Retry-After: 0 as 'use my 30 s default'",
    )

    r = p.add_argument_group("redaction (what is saved; live traffic is untouched)")
    r.add_argument("--no-redact", action="store_true", help="save secrets as sent (not recommended)")
    r.add_argument(
        "--redact-header",
        action="append",
        default=[],
        metavar="NAME",
        help="another header to redact (repeatable, e.g. --redact-header x-my-token)",
    )
    r.add_argument(
        "--redact-query",
        action="append",
        default=[],
        metavar="NAME",
        help="another query parameter to redact (repeatable, e.g. --redact-query key)",
    )
    r.add_argument(
        "--redact-json-field",
        action="append",
        default=[],
        metavar="NAME",
        help="a JSON body field to redact at any depth (repeatable, e.g. --redact-json-field password)",
    )
    r.add_argument(
        "--redact-except",
        action="append",
        default=[],
        metavar="NAME",
        help="a name the secret-name rules would redact that holds no secret: keep its values (repeatable, "
        "e.g. --redact-except key for a `key=` query parameter that is a setting's name)",
    )

    from proxy.verdict import RULES

    v = p.add_argument_group("verdict (how the client behaved)")
    v.add_argument(
        "--report",
        action="store_true",
        help="at exit, print each operation's timeline (every poll, the gap before it, what it got) and "
        "the violations: unmatched requests, polls (and 429/503 retries) earlier than the delay sent, a "
        "first poll earlier than the 202's delay (retry-after-202), polls after a terminal status, "
        "self-built status URLs, unfinished operations, "
        "scenario errors (exit status unchanged)",
    )
    v.add_argument(
        "--strict-report",
        action="store_true",
        help=f"as --report, and exit {EXIT_VIOLATIONS} when there are violations (for scripts and CI)",
    )
    v.add_argument(
        "--skip-check",
        action="append",
        default=[],
        choices=RULES,
        metavar="CHECK",
        help=f"leave a check out of the report (repeatable; one of: {', '.join(RULES)})",
    )


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
    rec.add_argument(
        "--record-mode",
        choices=[m.value for m in RecordMode],
        default=RecordMode.REWRITE.value,
        help="rewrite = record a fresh cassette, replacing the file at the first exchange (default); "
        "vcrpy's modes: all = record everything, keeping old exchanges that were not recorded again; "
        "new_episodes = replay what matches, record the rest; once = record only if the "
        "cassette does not exist yet, else replay; none = replay only (e.g. --record-mode new_episodes)",
    )
    _add_common(rec)

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
    _add_common(rep)
    _add_engine(rep)

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
    play.add_argument(
        "--record-mode",
        choices=[m.value for m in RecordMode],
        default=None,
        help="with -o: as for `record` (default rewrite)",
    )
    play.add_argument(
        "--clock",
        choices=("real", "virtual"),
        default=None,
        help="time for 'for: 30s' steps: real, or virtual (advances by each Retry-After the operation "
        "advertised, so time-based progressions play as fast as the client polls); default: each file's own",
    )
    _add_common(play)
    _add_engine(play)

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
        if args.command == "learn":
            from proxy.learn import learn_main

            return learn_main(args.sources, args.output, timing=args.timing)
        if args.command == "schema":
            from proxy.scenario.check import schema_text

            sys.stdout.write(schema_text())
            return EXIT_OK
        return _serve(args)
    except ReplayProxyError as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"replay-proxy: error: {line}", file=sys.stderr, flush=True)
        return EXIT_USAGE


def _serve(args: argparse.Namespace) -> int:
    if args.command == "record":
        cassette: Path = args.output
        upstream = args.upstream
        if args.mode == "reverse" and not upstream:
            raise _usage(
                "record needs UPSTREAM_URL in reverse mode (e.g. replay-proxy record https://host -o c.yaml)"
            )
        if args.mode == "regular" and upstream:
            raise _usage("--mode regular takes no UPSTREAM_URL: clients choose the hosts")
        record_mode = args.record_mode
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
    else:
        cassette, upstream, record_mode = args.cassette, None, RecordMode.NONE.value
        scenarios = []
    _configure_logging(args.quiet)
    # Without a report, nothing reads the journal: keep a few entries, not 100,000 (a long recording's RSS)
    reporting = args.report or args.strict_report
    proxy = ReplayProxy(
        cassette,
        upstream,
        record_mode=record_mode,
        mode=args.mode,
        host=args.host,
        port=args.port,
        confdir=args.confdir,
        match_on=args.match_on,
        match_headers=args.match_header,
        filter_query_parameters=args.filter_query_parameter,
        filter_headers=args.filter_header,
        when_exhausted=args.when_exhausted,
        retry_after=args.retry_after,
        redact=not args.no_redact,
        redact_headers=args.redact_header,
        redact_query=args.redact_query,
        redact_json=args.redact_json_field,
        redact_except=args.redact_except,
        scenarios=scenarios,
        clock=getattr(args, "clock", None),
        engine=getattr(args, "engine", DEFAULT_ENGINE),
        upstream_ca=args.upstream_ca,
        max_body_size=args.max_body_size,
        upstream_timeout=args.upstream_timeout,
        journal=None if reporting else console_journal(UNREPORTED_JOURNAL),
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # a large cassette loads for minutes: say how it goes (not with -q)
        proxy.start(timeout=None, progress=None if args.quiet else _StartProgress())
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
    if record_mode != RecordMode.NONE.value and not args.quiet and cassette is not None and cassette.exists():
        print(f"replay-proxy: stopped; cassette {cassette}", file=sys.stderr, flush=True)
    for problem in proxy.addon.save_errors:  # said when it happened; said again last, where it is seen
        print(f"replay-proxy: error: not everything was saved: {problem}", file=sys.stderr, flush=True)
    if args.report or args.strict_report:
        from proxy.verdict import check, report

        entries = proxy.journal.entries
        violations = check(entries, args.skip_check)
        print(report(entries, violations), flush=True)
        if violations and args.strict_report and not proxy.addon.save_errors:
            return EXIT_VIOLATIONS
    return EXIT_USAGE if proxy.addon.save_errors else EXIT_OK


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
    return (
        f"replay-proxy: warning: listening on {args.host or 'every interface'}, not only on this machine: "
        f"anyone who can reach it can {risk} (--host 127.0.0.1 keeps it local)"
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
