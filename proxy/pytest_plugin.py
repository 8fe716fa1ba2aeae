"""pytest plugin (entry point ``pytest11``): test a client against scenarios and cassettes.

Installing replay-proxy is enough::

    def test_tileset(replay_proxy):
        replay_proxy.use("scenarios/azure-maps/tileset-succeeds.yaml")
        client = CreatorClient(base_url=replay_proxy.url)
        ...

    @pytest.mark.replay_proxy("cassettes/tileset.yaml")
    def test_recorded(replay_proxy): ...

    def test_hard_coded_base_url(replay_proxy_env):  # HTTP(S)_PROXY and the CA bundle variables are set
        replay_proxy_env.use("scenarios/azure-maps/tileset-fails.yaml")
        CreatorClient(base_url="https://atlas.microsoft.com").create_tileset(...)

Design: mitmproxy allows one master per process, so each pytest process (each xdist worker) runs ONE
proxy, started on first use and stopped at the end of the session. It listens twice: as a reverse proxy
on a port the kernel picks (``replay_proxy.url``, the client's base URL) and as a forward proxy
(``replay_proxy.proxy_url``, for ``HTTP(S)_PROXY``) on a second free port. Each test switches what it
serves with ``use()`` (milliseconds, no restart) and starts with fresh state: operation counters,
sequences, cassette playback and the journal. After a test that used the proxy, the verdict on how the
client behaved (proxy/verdict.py) runs and fails the test's teardown with every violation listed.

Options: each setting of proxy/settings.py that appears on the pytest surface, as ``--replay-NAME`` and
the ini key ``replay_NAME`` (the command line wins over the ini file; ``--replay-disable-check`` adds to
``replay_disable_checks``). Among them: ``--replay-record-mode`` none (default: replay only, offline) |
once | new_episodes | all | rewrite, ``--replay-upstream URL`` (where recording forwards),
``--replay-retry-after SECONDS`` (rewrite every advertised delay, e.g. 0.05 for fast polling; always valid
HTTP, see proxy.rewrite), ``--replay-no-verify`` (no automatic verdict), ``--replay-disable-check NAME``
(one check off, explicit ``verify()`` included; ``retry-after-202`` for azure-core, which polls once
immediately after the 202), ``--replay-filter-query-parameter NAME`` / ``--replay-filter-header NAME``
(vcrpy's filters, applied to requests before matching and recording), ``--replay-redact-except NAME``,
``--replay-report-html DIR`` (an HTML report per test that used the proxy; the terminal summary links
those of failed tests).
Paths given to ``use()`` and to the marker are relative to the rootdir unless absolute.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from proxy import settings
from proxy.settings import PYTEST, Settings

if TYPE_CHECKING:
    from proxy.control import OperationHandle
    from proxy.journal import Journal
    from proxy.server import ReplayProxy
    from proxy.unused import CassetteUse

RECORD_MODES = settings.RECORD_MODES
MARKER = "replay_proxy"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
CLEARED_VARIABLES = ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")
START_ATTEMPTS = 5
"""The forward listener's port is picked before mitmproxy binds it: retry if someone took it meanwhile."""


# -- options ---------------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("replay-proxy", "replay-proxy: replay cassettes and play scenarios")
    settings.add_pytest_options(group, parser)


def _read_settings(config: pytest.Config) -> Settings:
    """The session's settings: each ``--replay-NAME``, else its ini key, else its default; a bad one
    is a usage error now, not at the first test."""
    from proxy.errors import ConfigError

    try:
        read = settings.from_pytest(config)
    except ConfigError as e:
        raise pytest.UsageError(str(e)) from None
    from proxy.matching import Matcher

    try:
        Matcher(read.match_on, read.match_headers, read.filter_query_parameters, read.filter_headers)
    except ConfigError as e:
        raise pytest.UsageError(f"replay-proxy: {e}") from None
    if read.engine == "lean" and _records(read):
        raise pytest.UsageError(
            "--replay-engine lean replays and plays only: record with --replay-engine mitmproxy"
        )
    if read.report_html is not None:  # a directory relative to where pytest was started
        read = replace(read, report_html=config.invocation_params.dir / read.report_html)
    return read


def _records(read: Settings) -> bool:
    return read.record_mode not in (None, "none")


_settings_key = pytest.StashKey[Settings]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*paths, verify=True, checks_disabled=(), **options): serve these scenario files "
        "and/or cassette in this test (replay_proxy.use(*paths, **options)); verify=False or "
        "checks_disabled=[...] turn the end-of-test verdict (or single checks) off.",
    )
    # mitmproxy's own deprecation warnings (pyOpenSSL objects on every HTTPS handshake) fire on the
    # proxy's thread during the test that made the request: not the test's business, and fatal to the
    # handshake under `filterwarnings = error`.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:mitmproxy")
    read = config.stash[_settings_key] = _read_settings(config)
    if read.journal_file is not None and not hasattr(config, "workerinput"):  # xdist workers append
        from proxy.errors import ConfigError
        from proxy.journal import start_fresh

        try:
            start_fresh(read.journal_file)
        except ConfigError as e:
            raise pytest.UsageError(f"--replay-journal: {e}") from None


def pytest_report_header(config: pytest.Config) -> str | None:
    read = config.stash.get(_settings_key, None)
    if read is None or not _records(read):
        return None
    return f"replay-proxy: record mode {read.record_mode}, upstream {read.upstream or '(none)'}"


# -- the session's proxy ---------------------------------------------------------------------------------


class _SessionProxy:
    """This process's one proxy, started on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proxy: ReplayProxy | None = None
        self.uses: list[CassetteUse] = []
        """At the end: each cassette loaded for replay and what of it was played."""

    def get(self) -> ReplayProxy:
        if self.proxy is None:
            self.proxy = self._start()
        return self.proxy

    def _start(self) -> ReplayProxy:
        from proxy.errors import StartupError
        from proxy.server import ReplayProxy, default_confdir

        _create_ca_once(default_confdir())
        given = self.settings.kwargs(PYTEST)
        given.pop("record_mode")  # each test's use() says it
        given["upstream"] = self.settings.upstream if _records(self.settings) else None
        for attempt in range(START_ATTEMPTS):
            forward_port = _free_port() if self.settings.engine == "mitmproxy" else None  # lean: no forward
            proxy = ReplayProxy(**given, forward_port=forward_port)
            try:
                return proxy.start()
            except StartupError as e:
                if "in use" not in str(e).lower() or attempt == START_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.uses = self.proxy.core.unused()
            self.proxy = None


def _create_ca_once(confdir: Path) -> None:
    """Create the CA in ``confdir`` if missing, safely when several xdist workers start at once.

    Each worker would otherwise write its own CA into the same files, leaving some workers serving
    certificates that the CA file clients trust did not sign. The CA is made in a private directory,
    then renamed into place in one step; a worker that loses the race uses the winner's.
    """
    if (confdir / "mitmproxy-ca.pem").exists():
        return
    import shutil
    import tempfile

    from proxy.server import ensure_ca

    confdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".replay-proxy-ca-", dir=confdir.parent))
    try:
        ensure_ca(staging)
        try:
            staging.rename(confdir)  # atomic; replaces only a missing or empty directory
        except OSError:
            if not (confdir / "mitmproxy-ca.pem").exists():
                ensure_ca(confdir)  # a directory with other files in it: no race to protect against
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def replay_proxy_server(pytestconfig: pytest.Config) -> Iterator[_SessionProxy]:
    """The session's proxy (started lazily, on the first test that asks for ``replay_proxy``)."""
    holder = _SessionProxy(pytestconfig.stash[_settings_key])
    try:
        yield holder
    finally:
        holder.stop()
        pytestconfig.stash[_uses_key] = holder.uses


_uses_key = pytest.StashKey["list[CassetteUse]"]()
UNUSED_SHOWN = 10
"""Unplayed interactions listed per cassette in the terminal summary (all with -v)."""


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The cassettes' interactions that no test of the session played (pytest-xdist: per worker, not
    shown; use ``--replay-journal`` and ``replay-proxy prune --dry-run`` there)."""
    from proxy.unused import format_unused

    uses: list[CassetteUse] = config.stash.get(_uses_key, [])
    text = format_unused(uses, None if config.option.verbose > 0 else UNUSED_SHOWN)
    if text:
        terminalreporter.write_sep("-", "replay-proxy: unused recorded interactions")
        terminalreporter.write_line(text)
    _summarise_reports(terminalreporter, config)  # --replay-report-html


# -- what a test sees ------------------------------------------------------------------------------------


class ReplayProxyFixture:
    """The running proxy as one test sees it: ``url``, ``proxy_url``, ``use()``, ``journal``, ``verify()``."""

    def __init__(self, proxy: ReplayProxy, settings: Settings, rootdir: Path) -> None:
        self.proxy = proxy
        self.settings = settings
        self.rootdir = rootdir
        self.verify_at_teardown = not settings.no_verify
        self.disabled_checks: tuple[str, ...] = settings.disable_checks
        self._verified_at: int | None = None

    @property
    def url(self) -> str:
        """The reverse proxy's URL: give it to the client as its base URL."""
        return self.proxy.url

    @property
    def https_url(self) -> str:
        """The reverse proxy over TLS, same port (trust ``ca_cert``): for SDKs that refuse plain http."""
        return self.proxy.https_url

    @property
    def proxy_url(self) -> str:
        """The forward proxy's URL (``HTTP_PROXY``/``HTTPS_PROXY``); ``replay_proxy_env`` sets them."""
        return self.proxy.forward_url

    @property
    def ca_cert(self) -> Path:
        """The CA certificate a client must trust for HTTPS through the proxy."""
        return self.proxy.ca_cert

    @property
    def journal(self) -> Journal:
        """This test's exchanges, in order (``journal.entries``)."""
        return self.proxy.journal

    @property
    def operations(self) -> list[OperationHandle]:
        """The scenario operations this test started, oldest first, each steerable:
        ``replay_proxy.operations[-1].fail({"code": "InvalidFeature"})``, ``.hold()``, ``.advance(2)``,
        ``.succeed()``, ``.cancel()``, ``.release()`` (from the operation's next poll)."""
        return self.proxy.operations

    def path(self, path: str | os.PathLike[str]) -> Path:
        """``path`` relative to the rootdir unless absolute."""
        p = Path(path)
        return p if p.is_absolute() else self.rootdir / p

    def use(self, *paths: str | os.PathLike[str], **options: Any) -> ReplayProxyFixture:
        """Serve these scenario files and/or this cassette from now on, all state fresh.

        Options are ReplayProxy.use()'s (``record_mode``, ``upstream``, ``retry_after``, ``clock``,
        ``match_on``...). The record mode and upstream default to the session's
        (``--replay-record-mode``, ``--replay-upstream``).
        """
        __tracebackhide__ = True
        if "scenarios" in options:
            options["scenarios"] = [self.path(p) for p in options["scenarios"]]
        if options.get("cassette") is not None:
            options["cassette"] = self.path(options["cassette"])
        options.setdefault("record_mode", self.settings.record_mode)
        resolved = [self.path(p) for p in paths]
        if options["record_mode"] != "none" and not options.get("upstream", self.proxy.upstream):
            from proxy.errors import ConfigError
            from proxy.server import classify

            cassettes = [p for p in resolved if classify(p) == "cassette"]
            if options.get("cassette") is not None or cassettes:
                raise ConfigError(
                    f"record mode {options['record_mode']} records from the real service: "
                    "give --replay-upstream URL (or use(..., upstream=URL))"
                )
        self.proxy.use(*resolved, **options)
        self._verified_at = None
        return self

    def reset(self) -> ReplayProxyFixture:
        """Start afresh on what is served (operation counters, sequences, playback, journal)."""
        self.proxy.reset()
        self._verified_at = None
        return self

    def verify(self, *, disabled: Sequence[str] = ()) -> None:
        """Raise an AssertionError listing every violation of how the client behaved, if any."""
        __tracebackhide__ = True
        entries = self.journal.entries
        self._verified_at = len(entries)
        off = (*self.disabled_checks, *disabled)
        message = _verdict(entries, off)
        if message:
            raise AssertionError(message)

    def _teardown_verify(self) -> None:
        __tracebackhide__ = True
        if not self.verify_at_teardown:
            return
        if self._verified_at is not None and self._verified_at == len(self.journal.entries):
            return  # the test verified itself, and nothing happened since
        self.verify()


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` if each is a verdict check's name, else a ValueError that lists the names."""
    __tracebackhide__ = True
    from proxy.verdict import RULES

    if isinstance(names, str):
        names = (names,)
    unknown = [name for name in names if name not in RULES]
    if unknown:
        raise ValueError(f"unknown check {', '.join(unknown)}; choose from: {', '.join(RULES)}")
    return tuple(names)


def _verdict(entries: list[Any], disabled: Sequence[str]) -> str:
    """The verdict's report ('' when the client behaved)."""
    from proxy import verdict

    violations = verdict.check(entries, disabled=tuple(disabled))
    return verdict.format_violations(violations) if violations else ""


@pytest.fixture
def replay_proxy(
    request: pytest.FixtureRequest, replay_proxy_server: _SessionProxy
) -> Iterator[ReplayProxyFixture]:
    """The session's proxy, fresh for this test; ``@pytest.mark.replay_proxy(...)`` says what it serves."""
    __tracebackhide__ = True  # a failed verdict shows as its message alone
    settings: Settings = replay_proxy_server.settings
    handle = ReplayProxyFixture(replay_proxy_server.get(), settings, request.config.rootpath)
    marker = request.node.get_closest_marker(MARKER)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if marker is not None:
        args, kwargs = marker.args, dict(marker.kwargs)
        verify = bool(kwargs.pop("verify", True))
        handle.verify_at_teardown = not settings.no_verify and verify
        handle.disabled_checks = (*settings.disable_checks, *_check_names(kwargs.pop("checks_disabled", ())))
    handle.use(*args, **kwargs)
    try:
        yield handle
    finally:
        try:
            handle._teardown_verify()
        finally:
            try:
                if settings.report_html is not None:
                    _write_report(request, handle, settings.report_html)
            finally:
                # Serve nothing until the next test: a cassette being recorded is saved now.
                handle.proxy.use()


_reports_key = pytest.StashKey[dict[str, str]]()
"""Test id -> the line that links its HTML report (``--replay-report-html``)."""


def _write_report(request: pytest.FixtureRequest, handle: ReplayProxyFixture, directory: Path) -> None:
    """This test's HTML report, when it sent the proxy anything; its link kept for the terminal summary."""
    entries = handle.journal.entries
    if not entries:
        return
    from proxy import verdict
    from proxy.report_html import write_report

    nodeid = request.node.nodeid
    name = re.sub(r"[^\w.-]+", "_", nodeid).strip("_")
    if len(name) > 120:
        import hashlib

        name = name[:100] + "-" + hashlib.sha1(nodeid.encode()).hexdigest()[:12]
    violations = verdict.check(entries, disabled=handle.disabled_checks)
    line = write_report(
        directory / f"{name}.html", entries, violations, title=f"replay-proxy report: {nodeid}"
    )
    request.config.stash.setdefault(_reports_key, {})[nodeid] = line


def _summarise_reports(terminalreporter: Any, config: pytest.Config) -> None:
    """Where the HTML reports of failed tests are: one line each, a link a CI log shows."""
    reports = config.stash.get(_reports_key, {})
    if not reports:
        return
    failed = {r.nodeid for kind in ("failed", "error") for r in terminalreporter.stats.get(kind, [])}
    shown = [(nodeid, line) for nodeid, line in reports.items() if nodeid in failed]
    directory = config.stash[_settings_key].report_html if _settings_key in config.stash else None
    terminalreporter.section("replay-proxy reports")
    for nodeid, line in shown:
        terminalreporter.write_line(f"{nodeid}: {line.removeprefix('replay-proxy: ')}")
    terminalreporter.write_line(f"replay-proxy: {len(reports)} HTML report(s) in {directory}")


@pytest.fixture
def replay_proxy_env(replay_proxy: ReplayProxyFixture, monkeypatch: pytest.MonkeyPatch) -> ReplayProxyFixture:
    """``replay_proxy`` as this test's forward proxy: HTTP(S)_PROXY, the CA bundle variables, no NO_PROXY.

    A client with a hard-coded base URL (``https://atlas.microsoft.com``) then talks to the proxy
    unchanged: requests and httpx read these variables.
    """
    if not replay_proxy.proxy_url:
        pytest.fail("replay_proxy_env needs a forward proxy: the lean engine has none (use mitmproxy)")
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, replay_proxy.proxy_url)
    for name in CLEARED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in CA_VARIABLES:
        monkeypatch.setenv(name, str(replay_proxy.ca_cert))
    return replay_proxy
