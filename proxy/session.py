"""What a proxy serves, whichever engine: the session built from the ``replay_*`` options, and the state
around it (journal, handler, control API, cassette use, save errors) in one ``Core``.

The mitmproxy addon (proxy/addon.py) and the lean engine (proxy/lean.py) are adapters over a ``Core``:
they hand its handler requests and install the sessions it builds. No mitmproxy here: the lean engine
starts without it (tests/test_import_graph.py checks it).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from proxy import cassette, loading, settings
from proxy.cassette import Playback
from proxy.errors import CassetteNotFoundError, ConfigError, ReplayProxyError
from proxy.handler import Handler
from proxy.journal import Exchange, Journal, JournalFile, iso_time
from proxy.matching import Matcher
from proxy.model import Interaction, origin_of
from proxy.reasons import REASONS
from proxy.recorder import Recorder
from proxy.redact import DEFAULT_HEADERS, DEFAULT_JSON_FIELDS, DEFAULT_QUERY, Redactor
from proxy.router import RecordMode, Router
from proxy.unused import CassetteUse, Usage

if TYPE_CHECKING:
    from proxy.control import ControlAPI

logger = logging.getLogger("proxy")

JOURNAL_OPTION = "replay_journal_file"
"""``--journal FILE`` (proxy/settings.py's ``journal_file``): the file, not the session, changes with it."""

FREEZE_AT = 1000
"""Interactions from which a session's cassette is moved out of the garbage collector's sight (gc.freeze)."""


class Session(NamedTuple):
    """Everything one session needs; rebuilt whenever a ``replay_*`` option changes (``use``)."""

    cassette: Path | None
    router: Router
    recorder: Recorder | None
    redactor: Redactor
    origins: frozenset[str]
    primary_origin: str | None
    retry_after: float | None
    served: str
    """What answers, for diagnostics: "cassette c.yaml", "scenarios a.yaml, b.yaml", ..."""
    upstream_timeout: float | None = None
    """Seconds to wait for a forwarded exchange's complete answer (then 504); None: no limit."""
    loaded: int = 0
    """How many interactions the cassette held when the session began (more are appended when recording)."""
    cassette_path: str | None = None
    """The cassette's absolute path, as the journal names it."""


class Core:
    """One proxy's engine-neutral state: the session being served, the handler that answers with it, the
    journal, the control API, which cassette interactions were played, and what could not be saved."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else Journal(listener=log_exchange)
        self.session: Session | None = None
        self.control: ControlAPI | None = None
        """Answers requests under ``/__replay-proxy/`` addressed to the proxy (set by ReplayProxy)."""
        self.handler = Handler(REASONS, lambda headers: self.journal.request_headers(headers))
        """Each request's outcome (proxy/handler.py)."""
        self.usage = Usage()
        """Which interactions of each cassette loaded for replay were played (``unused()``)."""
        self.save_errors: list[str] = []
        """Why exchanges could not be saved (the cassette's disk or directory); the CLI exits 2 on any."""
        self.stopping = False
        """The proxy is stopping: nothing is forwarded any more (it could not be saved)."""

    def begin(self, session: Session) -> None:
        """Serve ``session`` from now on: the previous one is closed (what it recorded saved), the journal
        redacts with the new one's redactor and notes the cassette it loaded."""
        self.close_session()
        self.session = session
        self.journal.scrub = session.redactor.scrub if session.redactor.enabled else None
        self.journal.redact_headers = session.redactor.headers if session.redactor.enabled else None
        playback = session.router.playback
        if self.journal.file is not None and session.cassette is not None and playback is not None:
            self.journal.file.write(
                {
                    "event": "load",
                    "time": iso_time(now := time.time()),
                    "epoch": round(now, 6),
                    "cassette": session.cassette_path,
                    "interactions": len(playback),
                    "record_mode": session.router.record_mode.value,
                }
            )
        if playback is not None and len(playback) >= FREEZE_AT:
            # What a large cassette loaded lives as long as the session: keep it out of the cyclic garbage
            # collector's full passes, which otherwise walk all of it (100k interactions: 300 ms pauses).
            gc.collect()
            gc.freeze()

    def close_session(self) -> None:
        """Stop serving the session: count what it played, save what it recorded."""
        session = self.session
        if session is not None:
            self._count_plays(session)
        if session is not None and session.recorder is not None:
            try:
                session.recorder.close()
            except ReplayProxyError as e:  # the exchanges appended so far stay in the file, valid
                self.save_failed(f"{e} (the exchanges saved before stay in the file)")
        self.session = None

    def open_journal_file(self, path: str | os.PathLike[str] | None) -> None:
        """Write the journal to ``path`` from now on (appended to), or to no file (None)."""
        current = self.journal.file
        path = os.fspath(path) if path else None
        if current is not None and path == current.path:
            return
        self.journal.file = JournalFile(path) if path else None
        if current is not None:
            current.close()

    def save_failed(self, message: str) -> None:
        """Say it now, on the console even with -q; the CLI repeats it and exits 2 at the end."""
        if message not in self.save_errors:
            self.save_errors.append(message)
            logger.error("replay-proxy: error: %s", message)

    def unused(self) -> list[CassetteUse]:
        """Each cassette loaded for replay so far (this session included) and what of it was played."""
        if self.session is not None:
            self._count_plays(self.session)
        return self.usage.uses()

    def _count_plays(self, session: Session) -> None:
        playback = session.router.playback
        replays = session.router.record_mode in (RecordMode.NONE, RecordMode.ONCE, RecordMode.NEW_EPISODES)
        if session.cassette_path is None or playback is None or not session.loaded or not replays:
            return
        counts = playback.play_counts[: session.loaded]
        self.usage.add(
            session.cassette_path,
            session.loaded,
            lambda: [f"{i.request.method} {i.request.url}" for i in playback.interactions[: session.loaded]],
            (n for n, count in enumerate(counts) if count),
        )


def build_session(options: Any) -> Session:
    """Parse the ``replay_*`` options into a ready session (loads the cassette, opens the recorder).

    ``options`` has an attribute per option (mitmproxy's options, or a namespace); ``body_size_limit``
    (mitmproxy's ``--max-body-size``, e.g. ``"100m"``) caps what a cassette's compressed body may decode to.
    """
    given = settings.from_addon_options(options)  # each replay_* option parsed and checked
    record_mode = RecordMode(given.record_mode or RecordMode.NONE.value)
    retry_after = given.retry_after
    upstream_timeout = given.upstream_timeout or None
    matcher = Matcher(
        given.match_on, given.match_headers, given.filter_query_parameters, given.filter_headers
    )
    redactor = Redactor(
        headers=(*DEFAULT_HEADERS, *given.redact_headers),
        query=(*DEFAULT_QUERY, *given.redact_query),
        json_fields=(*DEFAULT_JSON_FIELDS, *given.redact_json),
        enabled=given.redact,
        keep=given.redact_except,
    )
    path = given.cassette
    loaded: list[Interaction] = []
    extra: dict[str, Any] = {}
    if path is not None and record_mode is not RecordMode.REWRITE:
        try:
            read = cassette.read(path, _body_limit(options))
            loaded, extra = read.interactions, read.extra
        except CassetteNotFoundError:
            if record_mode is RecordMode.NONE:
                raise
    playback = (
        _indexed(path, loaded, matcher, redactor, given.when_exhausted)
        if loaded or (path is not None and record_mode is RecordMode.NEW_EPISODES)
        else None
    )
    scenarios = None
    if given.scenarios:
        from proxy.scenario.loader import load_scenarios
        from proxy.scenario.machine import ScenarioMachine

        scenarios = ScenarioMachine(load_scenarios([Path(p) for p in given.scenarios]), clock=given.clock)
    router = Router(
        playback,
        record_mode,
        cassette_existed=bool(loaded),
        redactor=redactor,
        scenarios=scenarios,
        passthrough=given.passthrough,
    )
    records = record_mode is not RecordMode.NONE and not (record_mode is RecordMode.ONCE and loaded)
    if records and path is not None and path.suffix.lower() == ".har":
        raise ConfigError(
            f"{path}: a HAR file is replayed, not recorded to: record a .yaml cassette "
            "(--har FILE also writes HAR)"
        )
    recorder = (
        Recorder(
            path, loaded=loaded, record_mode=record_mode, matcher=matcher, redactor=redactor, extra=extra
        )
        if records and path is not None
        else None
    )
    origins = {origin_of(i.request.url) for i in loaded}
    upstream = given.upstream
    if upstream:
        origins.add(origin_of(upstream))
    primary = origin_of(upstream) if upstream else (origin_of(loaded[0].request.url) if loaded else None)
    parts = []
    if given.scenarios:
        parts.append("scenarios " + ", ".join(given.scenarios))
    if path is not None and loaded:
        parts.append(f"cassette {path}")
    served = "; ".join(parts) or "nothing"
    return Session(
        path,
        router,
        recorder,
        redactor,
        frozenset(origins),
        primary,
        retry_after,
        served or "nothing",
        upstream_timeout,
        len(loaded),
        os.path.abspath(path) if path is not None else None,
    )


def _indexed(
    path: Path | None, loaded: list[Interaction], matcher: Matcher, redactor: Redactor, when_exhausted: str
) -> Playback:
    """The loaded interactions indexed for matching (seconds for 100,000: shown as start-up progress)."""
    size = path.stat().st_size if path is not None and path.exists() else 0
    with loading.tracking(path or Path(), size, f"indexing {len(loaded):,} interactions"):
        return Playback(
            [Interaction(redactor.for_matching(i.request), i.response, i.raw) for i in loaded],
            matcher,
            when_exhausted,
        )


def _body_limit(options: Any) -> int | None:
    """What a cassette's compressed body may decode to: ``body_size_limit`` (``--max-body-size``), else
    ``cassette.DECODED_BODY_LIMIT``; ``0``: no limit."""
    value = getattr(options, "body_size_limit", None)
    if value is None:
        return cassette.DECODED_BODY_LIMIT
    return settings.parse_size(value)


def log_exchange(exchange: Exchange) -> None:
    """The exchange's console line (at INFO: not even built with -q)."""
    if logger.isEnabledFor(logging.INFO):
        logger.info(exchange.line())


def console_journal(max_entries: int) -> Journal:
    """A journal that prints each exchange's console line and keeps only the last ``max_entries``."""
    return Journal(listener=log_exchange, max_entries=max_entries)
