"""Every run option, declared once: its name, type, default, parsing, help, and where it appears.

``Settings`` is both the typed value a run is configured with and the table of options: each field's
metadata holds its ``Spec``. The surfaces are derived from that table by the loops below, never written
out by hand:

- ``cli``: ``replay-proxy record|replay|play --NAME`` (``add_arguments``, read back by ``from_namespace``);
- ``kwarg``: ``ReplayProxy(NAME=...)`` and ``use(NAME=...)`` (``from_kwargs``; the signature stays
  written out for mypy and readers, and a test holds it to this table);
- ``pytest``: ``pytest --replay-NAME`` and the ini key ``replay_NAME`` (``add_pytest_options``,
  ``from_pytest``: the command line wins over the ini file);
- ``addon``: mitmproxy's option ``replay_NAME`` (``declare_addon_options``, ``addon_options``,
  ``from_addon_options``; also ``mitmdump -s proxy/addon.py --set replay_NAME=...``).

A value is parsed by its field's ``Kind`` on every surface, so seconds, sizes, choices and name lists
are validated in one place, and a bad one is a ``SettingError`` naming the option as the user wrote it
(``--retry-after``, ``retry_after``, ``--replay-retry-after``, ``replay_retry_after``).

This module imports neither mitmproxy nor pytest: the pytest plugin reads it at every pytest start-up.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from proxy.errors import ConfigError

CLI = "cli"
KWARG = "kwarg"
PYTEST = "pytest"
ADDON = "addon"
SURFACES = (CLI, KWARG, PYTEST, ADDON)
INI = "ini"
"""Not a surface of its own: the pytest surface's ini keys, where help texts may differ (``help_on``)."""
VALUE = "value"
"""``Spec.helps`` key: the words for an inverted flag's value (ini key, addon option, keyword)."""
RUN_COMMANDS = ("record", "replay", "play", "serve")
"""The CLI subcommands that run a proxy (and take the run options)."""

LISTENING = "listening"
MATCHING = "matching and replay"
REDACTION = "redaction (what is saved; live traffic is untouched)"
VERDICT = "verdict (how the client behaved)"
CONTROL = "control API (/__replay-proxy/ on the proxy's own listener)"

RECORD_MODES: tuple[str, ...] = ("rewrite", "all", "new_episodes", "once", "none")
"""``router.RecordMode``'s values (a test holds them equal; the router is too heavy to import here)."""
WHEN_EXHAUSTED: tuple[str, ...] = ("repeat-last", "cycle", "error")
"""``cassette.WHEN_EXHAUSTED`` (a test holds them equal)."""
ENGINES: tuple[str, ...] = ("mitmproxy", "lean")
"""``lean.ENGINES`` (a test holds them equal)."""
DEFAULT_MATCH_ON: tuple[str, ...] = ("method", "path", "query")
"""``matching.DEFAULT_MATCH_ON`` (a test holds them equal)."""
DEFAULT_UPSTREAM_TIMEOUT = 60.0
"""``gateway.DEFAULT_UPSTREAM_TIMEOUT`` (a test holds them equal; gateway imports mitmproxy)."""
VERDICT_RULES: tuple[str, ...] = (
    "unmatched",
    "retry-after",
    "retry-after-202",
    "poll-after-terminal",
    "self-built-url",
    "unfinished",
    "scenario-error",
)
"""The verdict's checks in report order (``verdict.RULES`` is this tuple): declared here so that
``--skip-check`` can list them without importing the verdict (~9 ms) at every start-up."""
DEFAULT_MAX_BODY_SIZE = 100 * 1024 * 1024
"""``server.DEFAULT_MAX_BODY_SIZE`` ("100m") in bytes."""


class SettingError(ConfigError):
    """A bad value for one option; the message names the option as the user wrote it."""


# -- kinds: how a value is parsed and written on each surface ---------------------------------------------


class Kind:
    """How values of one type are read from text (CLI, ini, ``--set``) or Python, and written back."""

    optional = False
    addon_type: Any = str

    def ini_type(self) -> str | None:
        """pytest ``addini`` type (None: a string)."""
        return None

    def parse(self, value: Any) -> Any:
        """The typed value; ValueError(reason) when it is not one."""
        raise NotImplementedError

    def to_addon(self, value: Any) -> Any:
        """The value as mitmproxy's option of type ``addon_type`` holds it."""
        return value

    def show(self, value: Any) -> str:
        """The value as a user writes it (help texts)."""
        return "none" if value is None else str(value)

    def argparse_kwargs(self) -> dict[str, Any]:
        return {"type": _cli_type(self.parse)}

    def unset(self, value: Any) -> bool:
        """A pytest option or ini value that was not given."""
        return value is None or value == "" or value == []


def _cli_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


@dataclass(frozen=True)
class Text(Kind):
    optional: bool = False

    @property
    def addon_type(self) -> Any:
        return str | None if self.optional else str

    def parse(self, value: Any) -> str | None:
        if value is None or (self.optional and value == ""):
            if self.optional:
                return None
            raise ValueError("takes a value")
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


@dataclass(frozen=True)
class Url(Text):
    """An upstream origin: http(s)://host[:port], nothing else (``check_upstream``)."""

    optional: bool = True

    def parse(self, value: Any) -> str | None:
        text = super().parse(value)
        if text is None:
            return None
        try:
            return check_upstream(text)
        except ConfigError as e:
            raise ValueError(str(e)) from None


@dataclass(frozen=True)
class FilePath(Kind):
    optional: bool = True

    @property
    def addon_type(self) -> Any:
        return str | None

    def parse(self, value: Any) -> Path | None:
        if value is None or value == "":
            if self.optional:
                return None
            raise ValueError("takes a path")
        return Path(value)

    def to_addon(self, value: Any) -> str | None:
        return None if value is None else os.fspath(value)


@dataclass(frozen=True)
class Choice(Kind):
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    optional: bool = False

    @property
    def addon_type(self) -> Any:
        return str | None if self.optional else str

    def names(self) -> tuple[str, ...]:
        return self.choices() if callable(self.choices) else self.choices

    def parse(self, value: Any) -> str | None:
        if self.optional and (value is None or value == ""):
            return None
        if value not in self.names():
            raise ValueError(f"unknown value {value!r}; choose from: {', '.join(self.names())}")
        return str(value)

    def argparse_kwargs(self) -> dict[str, Any]:
        return {"choices": self.names()}


@dataclass(frozen=True)
class Seconds(Kind):
    """Zero or more seconds, as a float (``optional``: None too)."""

    optional: bool = False
    example: str = "0.05"

    @property
    def addon_type(self) -> Any:
        return str | None if self.optional else str

    def parse(self, value: Any) -> float | None:
        if self.optional and (value is None or value == ""):
            return None
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = -1.0
        if not 0 <= seconds < math.inf:
            raise ValueError(f"takes seconds, zero or more (e.g. {self.example}), not {value!r}")
        return seconds

    def to_addon(self, value: Any) -> str | None:
        return None if value is None else repr(float(value))

    def show(self, value: Any) -> str:
        return "none" if value is None else f"{value:g}"


SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
"""The suffixes of a size, 1024-based, as mitmproxy's ``human.parse_size`` reads them."""


def parse_size(value: int | str | None) -> int | None:
    """Bytes from ``1048576``, ``"512k"``, ``"100m"`` or ``"1g"`` (1024-based, as mitmproxy's
    ``body_size_limit`` reads them: tests/test_mitm_internals.py holds the two parsers equal); ``0`` or
    None: no limit."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        size = value if isinstance(value, int) else _size_in_bytes(str(value).strip().lower())
    except ValueError:
        raise ConfigError(
            f"bad size {value!r}: expected bytes with an optional k, m or g suffix, e.g. 100m"
        ) from None
    if size < 0:
        raise ConfigError(f"bad size {value!r}: must be zero (no limit) or more bytes, e.g. 100m")
    return size or None


def _size_in_bytes(text: str) -> int:
    """mitmproxy's ``human.parse_size`` (a ValueError for what it refuses), without importing mitmproxy."""
    try:
        return int(text)
    except ValueError:
        pass
    for suffix, unit in SIZE_UNITS.items():
        if text.endswith(suffix):
            try:
                return int(text[:-1]) * unit
            except ValueError:
                break
    raise ValueError(f"invalid size {text!r}")


@dataclass(frozen=True)
class Size(Kind):
    """Bytes, from ``1048576`` or ``512k``/``100m``/``1g``; 0 or None: no limit (None)."""

    def parse(self, value: Any) -> int | None:
        try:
            return parse_size(value)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    def show(self, value: Any) -> str:
        if not value:
            return "0"
        for suffix, unit in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
            if value % unit == 0:
                return f"{value // unit}{suffix}"
        return str(value)


@dataclass(frozen=True)
class Port(Kind):
    def parse(self, value: Any) -> int:
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            port = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a port number") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"{port} is not a port number (0-65535; 0 picks a free one)")
        return port


@dataclass(frozen=True)
class Flag(Kind):
    """On or off; the CLI flag turns the default around (``--no-redact``, ``--quiet``)."""

    addon_type: Any = bool

    def ini_type(self) -> str | None:
        return "bool"

    def parse(self, value: Any) -> bool:
        if isinstance(value, str):
            if value.lower() in ("true", "yes", "on", "1"):
                return True
            if value.lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError(f"takes true or false, not {value!r}")
        return bool(value)

    def argparse_kwargs(self) -> dict[str, Any]:
        return {}  # the action is chosen from the default (store_true / store_false)

    def show(self, value: Any) -> str:
        return "true" if value else "false"

    def unset(self, value: Any) -> bool:
        return value is None


@dataclass(frozen=True)
class Names(Kind):
    """A list of names: the option repeats (``--match-header a --match-header b``), or with ``csv`` takes
    them comma-separated (``--match-on method,path``); ``choices`` limits them."""

    csv: bool = False
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    noun: str = "name"
    quote: bool = False
    """Quote unknown names in messages, as ``matching.Matcher`` does."""
    addon_type: Any = Sequence[str]

    def ini_type(self) -> str | None:
        return None if self.csv else "args"

    def parse(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, str | os.PathLike):
            text = os.fspath(value)
            items = [v.strip() for v in text.split(",") if v.strip()] if self.csv else [text]
            if self.csv and not items:
                raise ValueError(f"give at least one {self.noun}, e.g. {','.join(DEFAULT_MATCH_ON)}")
        else:
            items = [os.fspath(v) if isinstance(v, os.PathLike) else str(v) for v in value or ()]
        if self.choices is not None:
            known = self.choices() if callable(self.choices) else self.choices
            unknown = [repr(v) if self.quote else v for v in items if v not in known]
            if unknown:
                raise ValueError(f"unknown {self.noun} {', '.join(unknown)}; choose from: {', '.join(known)}")
        return tuple(items)

    def to_addon(self, value: Any) -> list[str]:
        return list(value)

    def show(self, value: Any) -> str:
        return ",".join(value)

    def argparse_kwargs(self) -> dict[str, Any]:
        if self.csv:
            return {"type": _cli_type(self.parse)}
        if self.choices is not None:  # argparse says which choices when one is wrong
            return {"action": "append", "choices": self.choices() if callable(self.choices) else self.choices}
        return {"action": "append"}


def _matcher_names() -> tuple[str, ...]:
    from proxy.matching import MATCHER_NAMES

    return MATCHER_NAMES


# -- the table ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """Where and how one setting appears (the field's name and default are the rest)."""

    kind: Kind
    help: str
    """What it does; ``{default}`` is replaced by the surface's default as a user writes it."""
    surfaces: frozenset[str]
    flag: str = ""
    """The option's name after ``--`` on the CLI and after ``--replay-`` in pytest (default: the field's
    name with dashes)."""
    short: str = ""
    metavar: str | None = None
    group: str | None = MATCHING
    """The CLI --help group (None: the subcommand's own options)."""
    commands: tuple[str, ...] = RUN_COMMANDS
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """A surface's (or a CLI subcommand's) own default where it differs from the field's."""
    helps: Mapping[str, str] = field(default_factory=dict)
    """A CLI subcommand's own help text."""
    merge_ini: bool = False
    """pytest: the command line adds to the ini file's list instead of replacing it."""
    metavars: Mapping[str, str] = field(default_factory=dict)
    """A surface's own metavar where it differs from ``metavar`` (``--replay-report-html DIR``)."""


def declare(default: Any, kind: Kind, help: str, surfaces: Iterable[str], **spec: Any) -> Any:
    return field(default=default, metadata={"spec": Spec(kind, help, frozenset(surfaces), **spec)})


_ALL = (CLI, KWARG, PYTEST, ADDON)
_RUN = (CLI, KWARG, PYTEST)


@dataclass(frozen=True)
class Settings:
    """The parsed value of every run option (field defaults: ``ReplayProxy``'s)."""

    # -- what is served (the CLI's positional arguments and -o/--cassette/--upstream say it per command)
    cassette: Path | None = declare(  # noqa: RUF009 (a dataclasses.field)
        None,
        FilePath(),
        "Cassette file (vcrpy YAML, or JSON for .json) to replay and record.",
        (KWARG, ADDON),
    )
    upstream: str | None = declare(
        None,
        Url(),
        "The real service (scheme://host[:port]) recording forwards to, e.g. https://atlas.microsoft.com; "
        "unused in record mode none.",
        (KWARG, PYTEST, ADDON),
        metavar="URL",
    )
    scenarios: tuple[str, ...] = declare((), Names(), "Scenario files (YAML) answered first.", (KWARG, ADDON))
    record_mode: str | None = declare(
        None,
        Choice(RECORD_MODES, optional=True),
        "none: replay and play offline; once / new_episodes / all / rewrite: record through the upstream "
        "(vcrpy's meanings; default: {default}).",
        _ALL,
        group=None,
        commands=("record", "play"),
        defaults={"record": "rewrite", PYTEST: "none", ADDON: "none"},
        helps={
            "record": "rewrite = record a fresh cassette, replacing the file at the first exchange "
            "(default); vcrpy's modes: all = record everything, keeping old exchanges that were not "
            "recorded again; new_episodes = replay what matches, record the rest; once = record only if "
            "the cassette does not exist yet, else replay; none = replay only (e.g. --record-mode "
            "new_episodes)",
            "play": "with -o: as for `record` (default rewrite)",
        },
    )
    clock: Literal["real", "virtual"] | None = declare(
        None,
        Choice(("real", "virtual"), optional=True),
        "time for 'for: 30s' steps: real, or virtual (advances by each Retry-After the operation "
        "advertised, so time-based progressions play as fast as the client polls); default: each file's "
        "own",
        _ALL,
        group=None,
        commands=("play", "serve"),
    )
    passthrough: bool = declare(
        False, Flag(), "Forward what nothing else answers (play over an upstream).", (ADDON,)
    )
    # -- listening
    host: str = declare(
        "127.0.0.1",
        Text(),
        "address to listen on (default: {default}, e.g. 0.0.0.0)",
        (CLI, KWARG),
        group=LISTENING,
    )
    port: int = declare(
        0,
        Port(),
        "port to listen on; 0 picks a free one (default: {default})",
        (CLI, KWARG),
        group=LISTENING,
        defaults={CLI: 8080},
    )
    mode: str = declare(
        "reverse",
        Choice(("reverse", "regular")),
        "reverse: clients use the proxy's URL as their base URL (default); regular: clients use it as "
        "HTTP(S)_PROXY, HTTPS intercepted with the CA of `replay-proxy ca` (e.g. {flag}regular)",
        (CLI, KWARG),
        group=LISTENING,
    )
    engine: str = declare(
        "mitmproxy",
        Choice(ENGINES),
        "mitmproxy: everything (default); lean: replay and play over plain HTTP/1.1 in reverse mode, several "
        "times faster (no recording, --upstream, --mode regular, HTTPS or HTTP/2; e.g. {flag}lean)",
        _RUN,
        group=LISTENING,
        commands=("replay", "play", "serve"),
    )
    confdir: Path | None = declare(  # noqa: RUF009 (a dataclasses.field)
        None,
        FilePath(),
        "directory of the proxy's CA (default: $REPLAY_PROXY_CONFDIR or ~/.replay-proxy)",
        (CLI, KWARG),
        group=LISTENING,
    )
    upstream_ca: Path | None = declare(  # noqa: RUF009 (a dataclasses.field)
        None,
        FilePath(),
        "also trust this CA for the upstream's TLS certificate (e.g. {flag}corp-root.pem)",
        _RUN,
        group=LISTENING,
        metavar="PEM",
    )
    max_body_size: int | None = declare(
        DEFAULT_MAX_BODY_SIZE,
        Size(),
        "refuse a request body larger than this with 413 (an upstream response body with 502) instead of "
        "buffering it; k, m, g suffixes, 0 for no limit (default: {default}; e.g. {flag}1g)",
        _RUN,
        group=LISTENING,
        metavar="SIZE",
    )
    upstream_timeout: float | None = declare(
        DEFAULT_UPSTREAM_TIMEOUT,
        Seconds(optional=True, example="30"),
        "give up on an upstream that has not answered completely after this long: the client gets 504 "
        "and nothing is recorded; 0 for no limit (default: {default}; e.g. {flag}300)",
        _ALL,
        group=LISTENING,
        metavar="SECONDS",
    )
    quiet: bool = declare(
        False,
        Flag(),
        "do not print a line per exchange nor start-up progress (errors still show)",
        (CLI,),
        group=LISTENING,
        short="-q",
    )
    # -- matching and replay
    match_on: tuple[str, ...] = declare(
        DEFAULT_MATCH_ON,
        Names(csv=True, choices=_matcher_names, noun="matcher", quote=True),
        "comma-separated vcrpy matchers (default: {default}; from: {choices}; "
        "e.g. {flag}method,path,query,body)",
        _ALL,
        metavar="NAMES",
    )
    match_headers: tuple[str, ...] = declare(
        (),
        Names(),
        "a request header that must also match (repeatable, e.g. {flag}x-ms-version)",
        _ALL,
        flag="match-header",
        metavar="NAME",
    )
    filter_query_parameters: tuple[str, ...] = declare(
        (),
        Names(),
        "vcrpy's filter_query_parameters: remove this query parameter (or set it to VALUE) in live "
        "requests before matching and in what is recorded; replays a cassette recorded with that vcrpy "
        "option (repeatable, e.g. {flag}api_key)",
        _ALL,
        flag="filter-query-parameter",
        metavar="NAME[=VALUE]",
    )
    filter_headers: tuple[str, ...] = declare(
        (),
        Names(),
        "vcrpy's filter_headers: remove this request header (or set it to VALUE) before matching and in "
        "what is recorded (repeatable, e.g. {flag}authorization)",
        _ALL,
        flag="filter-header",
        metavar="NAME[=VALUE]",
    )
    when_exhausted: str = declare(
        "repeat-last",
        Choice(WHEN_EXHAUSTED),
        "when identical requests outnumber the recorded ones: repeat the last answer (default), cycle "
        "from the first, or error (a no-match answer)",
        _ALL,
    )
    retry_after: float | None = declare(
        None,
        Seconds(optional=True),
        "rewrite advertised Retry-After, retry-after-ms and x-ms-retry-after-ms to this delay so polling "
        "replays fast (e.g. {flag}0.05, the recommended value). Always valid HTTP: whole seconds "
        "stay Retry-After; a fraction goes in retry-after-ms (beside Retry-After rounded up on 429/503 and "
        "other 400+ answers). Note azure-core treats Retry-After: 0 as 'use my 30 s default'",
        _ALL,
        metavar="SECONDS",
    )
    # -- redaction
    redact: bool = declare(
        True,
        Flag(),
        "save secrets as sent (not recommended)",
        _ALL,
        group=REDACTION,
        flag="no-redact",
        helps={VALUE: "redact secrets from what is saved (default: {default}; false saves them as sent)"},
    )
    redact_headers: tuple[str, ...] = declare(
        (),
        Names(),
        "another header to redact (repeatable, e.g. {flag}x-my-token)",
        _ALL,
        group=REDACTION,
        flag="redact-header",
        metavar="NAME",
    )
    redact_query: tuple[str, ...] = declare(
        (),
        Names(),
        "another query parameter to redact (repeatable, e.g. {flag}key)",
        _ALL,
        group=REDACTION,
        metavar="NAME",
    )
    redact_json: tuple[str, ...] = declare(
        (),
        Names(),
        "a JSON body field to redact at any depth (repeatable, e.g. {flag}password)",
        _ALL,
        group=REDACTION,
        flag="redact-json-field",
        metavar="NAME",
    )
    redact_except: tuple[str, ...] = declare(
        (),
        Names(),
        "a name the secret-name rules would redact that holds no secret: keep its values (repeatable, "
        "e.g. {flag}key for a `key=` query parameter that is a setting's name)",
        _ALL,
        group=REDACTION,
        metavar="NAME",
    )
    # -- the control API (proxy/control.py)
    control_api: bool = declare(
        True,
        Flag(),
        "Answer the control API under /__replay-proxy/ (on loopback, or beyond it with control_token).",
        (KWARG,),
        group=CONTROL,
    )
    control_token: str | None = declare(
        None,
        Text(optional=True),
        "require this token (header X-Replay-Proxy-Token: TOKEN) on control requests; needed to turn the "
        "control API on when --host is beyond loopback (e.g. {flag}$(openssl rand -hex 16))",
        (CLI, KWARG),
        group=CONTROL,
        metavar="TOKEN",
    )
    root: Path | None = declare(  # noqa: RUF009 (a dataclasses.field)
        None,
        FilePath(),
        "the directory POST /__replay-proxy/use reads files from (relative paths, and nothing outside it; "
        "default: the directory the proxy was started in)",
        (CLI, KWARG),
        group=CONTROL,
        metavar="DIR",
    )
    # -- the verdict
    report: bool = declare(
        False,
        Flag(),
        "at exit, print each operation's timeline (every poll, the gap before it, what it got) and the "
        "violations: unmatched requests, polls (and 429/503 retries) earlier than the delay sent, a first "
        "poll earlier than the 202's delay (retry-after-202), polls after a terminal status, self-built "
        "status URLs, unfinished operations, scenario errors (exit status unchanged)",
        (CLI,),
        group=VERDICT,
    )
    strict_report: bool = declare(
        False,
        Flag(),
        "as --report, and exit 3 when there are violations (for scripts and CI)",
        (CLI,),
        group=VERDICT,
    )
    skip_check: tuple[str, ...] = declare(
        (),
        Names(choices=VERDICT_RULES, noun="check"),
        "leave a check out of the report (repeatable; one of: {choices})",
        (CLI,),
        group=VERDICT,
        metavar="CHECK",
    )
    report_html: Path | None = declare(  # noqa: RUF009 (a dataclasses.field)
        None,
        FilePath(),
        "at exit, also write the report as one self-contained HTML page: a time axis per operation (each "
        "poll, the Retry-After window it was given, its status, the end) and the violations "
        "(e.g. {flag}report.html)",
        (CLI, PYTEST),
        group=VERDICT,
        metavar="FILE",
        metavars={PYTEST: "DIR"},
        helps={
            PYTEST: "Write an HTML report (proxy/report_html.py) into DIR for every test that used the "
            "proxy; the terminal summary links those of failed tests (e.g. {flag}reports/).",
            INI: "Default for --replay-report-html: a directory for an HTML report per test that used "
            "the proxy.",
        },
    )
    har: Path | None = declare(  # noqa: RUF009 (a dataclasses.field)
        None,
        FilePath(),
        "at exit, write every exchange as the client saw it (secrets redacted) as HAR 1.2, which browsers' "
        "devtools and mitmweb open and `replay-proxy replay` replays (e.g. {flag}session.har)",
        (CLI, KWARG),
        group=VERDICT,
        metavar="FILE",
    )
    journal_file: Path | None = declare(  # noqa: RUF009 (a dataclasses.field)
        None,
        FilePath(),
        "write each exchange to FILE as it happens, one JSON line (time, method, URL, status, what "
        "answered, Retry-After sent, operation, redacted request headers, the cassette interaction that "
        "answered); the command line and pytest start it afresh, e.g. {flag}journal.jsonl (a CI "
        "artefact; `replay-proxy prune` reads it)",
        _ALL,
        group=VERDICT,
        flag="journal",
        metavar="FILE",
    )
    no_verify: bool = declare(
        False, Flag(), "Do not check the client's behaviour at the end of each test.", (PYTEST,)
    )
    disable_checks: tuple[str, ...] = declare(
        (),
        Names(choices=VERDICT_RULES, noun="check"),
        "Turn one verdict check off (repeatable): {choices} (retry-after-202 is off for azure-core, which "
        "polls once immediately after the 202).",
        (PYTEST,),
        flag="disable-check",
        metavar="NAME",
        merge_ini=True,
    )

    def kwargs(self, surface: str = CLI) -> dict[str, Any]:
        """The values of the settings both ``surface`` and ``ReplayProxy`` take, as its keywords."""
        return {s.name: getattr(self, s.name) for s in on(surface, type(self)) if KWARG in s.spec.surfaces}


@dataclass(frozen=True)
class Setting:
    """One row of the table: a ``Settings`` field's name and default, and its ``Spec``."""

    name: str
    default: Any
    spec: Spec

    @property
    def kind(self) -> Kind:
        return self.spec.kind

    @property
    def flag(self) -> str:
        """``--retry-after`` (the CLI's spelling)."""
        return "--" + (self.spec.flag or self.name.replace("_", "-"))

    @property
    def pytest_flag(self) -> str:
        return "--replay-" + (self.spec.flag or self.name.replace("_", "-"))

    @property
    def option(self) -> str:
        """``replay_retry_after``: mitmproxy's option and the pytest ini key."""
        return "replay_" + self.name

    def default_on(self, surface: str) -> Any:
        """The default on ``surface`` (or a CLI subcommand's)."""
        defaults = self.spec.defaults
        if surface in RUN_COMMANDS and surface in defaults:
            return defaults[surface]
        return defaults.get(CLI if surface in RUN_COMMANDS else surface, self.default)

    def spelled(self, surface: str) -> str:
        """How a value is given on ``surface``, for examples: ``--retry-after 0.05``,
        ``--replay-retry-after=0.05``, ``replay_retry_after = 0.05`` (ini), ``retry_after=0.05``."""
        if surface == PYTEST:
            return self.pytest_flag + "="
        if surface == INI:
            return self.option + " = "
        if surface == ADDON:
            return self.option + "="
        if surface == KWARG:
            return self.name + "="
        return self.flag + " "

    def help_on(self, surface: str) -> str:
        """The help text on ``surface`` (a CLI subcommand, or ``ini``: pytest's ini key), its default,
        choices and examples filled in. An inverted flag (``--no-redact``) has its own words for the value
        (``replay_redact``), under ``helps["value"]``."""
        helps = self.spec.helps
        text = helps.get(surface) or (helps.get(VALUE) if surface in (INI, ADDON, KWARG) else None)
        choices = getattr(self.kind, "choices", None)
        names = choices() if callable(choices) else choices or ()
        default = self.kind.show(self.default_on(PYTEST if surface == INI else surface))
        return (text or self.spec.help).format(
            default=default, choices=", ".join(names), flag=self.spelled(surface)
        )


def table(cls: type[Settings] | None = None) -> tuple[Setting, ...]:
    """The settings ``cls`` declares (default: ``Settings``, looked up at each call), in their order."""
    rows = []
    for f in fields(cls or Settings):
        spec = f.metadata.get("spec")
        if isinstance(spec, Spec):
            rows.append(Setting(f.name, f.default, spec))
    return tuple(rows)


def on(surface: str, cls: type[Settings] | None = None, command: str | None = None) -> tuple[Setting, ...]:
    """The settings that appear on ``surface`` (for the CLI: on ``command`` when given)."""
    rows = [s for s in table(cls) if surface in s.spec.surfaces]
    if command is not None:
        rows = [s for s in rows if command in s.spec.commands]
    return tuple(rows)


def _error(where: str, reason: str) -> SettingError:
    return SettingError(f"{where} {reason}" if reason.startswith("takes ") else f"{where}: {reason}")


def _parse(setting: Setting, value: Any, where: str) -> Any:
    try:
        return setting.kind.parse(value)
    except ValueError as e:
        raise _error(where, str(e)) from None


# -- the CLI --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, command: str, cls: type[Settings] | None = None) -> None:
    """Add the run options of ``command`` to its parser, in their --help groups."""
    groups: dict[str | None, Any] = {None: parser}
    for s in on(CLI, cls, command):
        group = groups.get(s.spec.group)
        if group is None:
            group = groups[s.spec.group] = parser.add_argument_group(s.spec.group)
        default = s.default_on(command)
        kwargs: dict[str, Any] = {
            "dest": s.name,
            "help": s.help_on(command).replace("%", "%%"),
            **s.kind.argparse_kwargs(),
        }
        if isinstance(s.kind, Flag):
            kwargs["action"] = "store_false" if default else "store_true"
        elif s.spec.metavar:
            kwargs["metavar"] = s.spec.metavars.get(CLI, s.spec.metavar)
        kwargs["default"] = list(default) if isinstance(default, tuple) else default
        group.add_argument(*([s.spec.short] if s.spec.short else []), s.flag, **kwargs)


def from_namespace(args: argparse.Namespace, command: str, cls: type[Settings] | None = None) -> Settings:
    """The settings ``replay-proxy COMMAND`` was given (defaults for what it does not take)."""
    values = {}
    for s in on(CLI, cls, command):
        values[s.name] = _parse(s, getattr(args, s.name), s.flag)
    return (cls or Settings)(**values)


# -- ReplayProxy's keywords -----------------------------------------------------------------------------


def from_kwargs(
    kwargs: Mapping[str, Any], base: Settings | None = None, cls: type[Settings] | None = None
) -> Settings:
    """``base`` (default: the defaults) with ``kwargs`` (ReplayProxy's keywords) parsed in."""
    known = {s.name: s for s in on(KWARG, cls)}
    values = {}
    for name, value in kwargs.items():
        if name not in known:
            raise TypeError(f"unexpected keyword argument {name!r}")
        values[name] = _parse(known[name], value, name)
    return replace(base, **values) if base is not None else (cls or Settings)(**values)


# -- mitmproxy's options --------------------------------------------------------------------------------


def declare_addon_options(loader: Any, cls: type[Settings] | None = None) -> None:
    """``loader.add_option`` for each ``replay_*`` option (the addon's ``load`` hook)."""
    for s in on(ADDON, cls):
        default = s.kind.to_addon(s.default_on(ADDON))
        loader.add_option(s.option, s.kind.addon_type, default, s.help_on(ADDON))


def addon_options(settings: Settings) -> dict[str, Any]:
    """The ``replay_*`` options that carry ``settings`` to the addon (``options.update(**...)``)."""
    return {s.option: s.kind.to_addon(getattr(settings, s.name)) for s in on(ADDON, type(settings))}


def from_addon_options(options: Any, cls: type[Settings] | None = None) -> Settings:
    """The settings mitmproxy's ``replay_*`` options hold (``--set replay_retry_after=0.05`` included)."""
    values = {}
    for s in on(ADDON, cls):
        values[s.name] = _parse(s, getattr(options, s.option), s.option)
    return (cls or Settings)(**values)


# -- pytest ---------------------------------------------------------------------------------------------


def add_pytest_options(group: Any, parser: Any, cls: type[Settings] | None = None) -> None:
    """``--replay-NAME`` options on ``group`` and ``replay_NAME`` ini keys on ``parser``."""
    for s in on(PYTEST, cls):
        help = s.help_on(PYTEST)
        kwargs: dict[str, Any] = {"dest": s.option, "default": None, "help": help.replace("%", "%%")}
        kind = s.kind
        if isinstance(kind, Flag):
            kwargs["action"] = "store_false" if s.default_on(PYTEST) else "store_true"
        elif isinstance(kind, Names) and not kind.csv:
            kwargs["action"] = "append"
        elif isinstance(kind, Choice):
            kwargs["choices"] = kind.names()
        if s.spec.metavar and not isinstance(kind, Flag | Choice):
            kwargs["metavar"] = s.spec.metavars.get(PYTEST, s.spec.metavar)
        group.addoption(s.pytest_flag, **kwargs)
        ini_default: Any = s.default_on(PYTEST)
        if kind.ini_type() == "args":
            ini_default = list(ini_default)
        elif kind.ini_type() is None:
            ini_default = "" if ini_default is None else kind.show(ini_default)
        parser.addini(s.option, s.help_on(INI), type=kind.ini_type(), default=ini_default)


def from_pytest(config: Any, cls: type[Settings] | None = None) -> Settings:
    """The settings of a pytest run: each ``--replay-NAME`` given, else its ini key, else its default."""
    values = {}
    for s in on(PYTEST, cls):
        given = config.getoption(s.option)
        ini = config.getini(s.option)
        where = s.pytest_flag
        if s.spec.merge_ini:
            value: Any = (*ini, *(given or ()))
        elif not s.kind.unset(given):
            value = given
        elif not s.kind.unset(ini):
            value, where = ini, s.option
        else:
            value = s.default_on(PYTEST)
        values[s.name] = _parse(s, value, where)
    return (cls or Settings)(**values)


# -- upstream URLs --------------------------------------------------------------------------------------


def check_upstream(url: str) -> str:
    """An absolute http(s) URL with a host, or a ConfigError saying what is wrong."""
    from urllib.parse import urlsplit

    from proxy.redact import shown_url

    shown = shown_url(url)  # never a password or key in a message: it ends up in CI logs
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"bad upstream URL {shown!r}: expected http(s)://host[:port], e.g. https://atlas.microsoft.com"
        )
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"bad upstream URL {shown!r}: invalid port") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"bad upstream URL {shown!r}: credentials in the URL are not supported; give the origin only "
            "(scheme://host[:port]) and let the client send its own Authorization header"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"bad upstream URL {shown!r}: give the origin only (scheme://host[:port]); "
            "clients send their paths through the proxy unchanged"
        )
    return url.rstrip("/")
