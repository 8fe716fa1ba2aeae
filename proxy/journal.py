"""What the client did: one entry per exchange, and the console line that shows it.

Entries carry what the verdict (proxy/verdict.py) needs to judge how a client polled: when the request
arrived (wall and monotonic), the URL as the client sent it, the delay the response advertised to the
client, the status URLs it handed out, and the state of the long-running operation it reported.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit

from proxy.dialects import RESOURCE_STATUS_PATHS
from proxy.model import Headers, Response, header_value
from proxy.rewrite import dated_retry_after, parse_retry_after
from proxy.scenario.answer import TERMINAL_STATUSES, OperationTag

MAX_ENTRIES = 100_000
"""A journal keeps the most recent entries only (older ones are dropped): memory stays bounded."""

_monotonic = time.monotonic  # the field named ``time`` hides the module in the class body


def iso_time(moment: float) -> str:
    """``moment`` (seconds since the epoch) in ISO 8601, UTC, milliseconds: ``2026-12-05T01:02:03.456Z``."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and what answered it.

    ``source`` is ``"scenario"``, ``"upstream"``, ``"cassette"``, ``"no-match"``, ``"scenario-error"`` (a
    matching scenario rule failed to render) or ``"error"``; ``detail`` says more (``"#3"``, ``"#3,
    repeated"``, ``"recorded as #7"``, the upstream error, the scenario error's ``file:line:column`` ...).
    ``url`` is mitmproxy's view (in reverse mode: on the upstream's origin); ``path`` is the path and query
    as the client sent them, ``client_url`` the whole URL as the client used it (in reverse mode: on the
    proxy).

    For the verdict: ``time`` (wall clock) and ``monotonic`` are when the request *arrived* (not when it
    was answered, so slow answers do not distort the gaps between polls); ``retry_after`` is the delay in
    seconds that the response actually sent advertised (after ``--retry-after``; HTTP-dates and the
    millisecond headers converted; the shortest when it sent several, ``proxy.rewrite.parse_retry_after``),
    None when it advertised none or no response was sent;
    ``status_urls`` are the absolute URLs the response gave for polling (Location on a 202 or on a
    non-terminal answer, Operation-Location, Azure-AsyncOperation; without those, a running JSON body's
    own: ``urls.get``, or a PUT's or PATCH's own URL for an ARM resource's running
    ``properties.provisioningState``: ``body_status_url``). ``operation``/``poll`` come from a
    scenario operation (its id, the poll number; ``poll`` is None for its start and resource requests);
    ``op_status``/``terminal`` are the operation status the response reported (scenario answers, or the
    ``status`` field / AIP-151 ``done`` / ARM ``properties.provisioningState`` of a JSON body).
    ``tag``: a scenario operation's answer as data
    (its rule, dialect, role and step: ``proxy.scenario.answer.OperationTag``), None otherwise.

    ``polls_resource``: those status URLs are the resource the running body describes (Replicate's
    ``urls.get``, an ARM resource's own URL), which a client may GET again to read the result.

    ``request_headers`` are the request's headers redacted as a cassette saves them
    (``Journal.request_headers``), ``request_body_size`` its body's length as sent;
    ``cassette``/``interaction`` say which recorded interaction answered (the cassette's path, absolute;
    the 0-based index in its ``interactions``).
    ``virtual``: for a scenario operation on the virtual clock, its clock reading when it answered
    (seconds since its start), for the reports.
    ``operation_name``: a running AIP-151 operation's ``name`` when the answer gave no status URL (its
    clients poll it under their API's base: ``operations.link_named_polls``).
    """

    method: str
    url: str
    path: str
    status: int | None
    source: str
    detail: str = ""
    time: float = field(default_factory=time.time)
    monotonic: float = field(default_factory=_monotonic)
    client_url: str = ""
    retry_after: float | None = None
    status_urls: tuple[str, ...] = ()
    polls_resource: bool = False
    operation: str | None = None
    poll: int | None = None
    op_status: str | None = None
    terminal: bool = False
    tag: OperationTag | None = None
    request_headers: Headers = ()
    request_body_size: int = 0
    cassette: str | None = None
    interaction: int | None = None
    virtual: float | None = None
    operation_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON-ready data: what ``--journal FILE`` writes per line and the control API serves.

        Request headers as a cassette holds them (name -> list of values, redacted); ``time`` is when
        the request arrived (ISO 8601, UTC, milliseconds) and ``epoch`` the same in seconds since the epoch.
        """
        headers: dict[str, list[str]] = {}
        for name, value in self.request_headers:
            headers.setdefault(name, []).append(value)
        return {
            "time": iso_time(self.time),
            "epoch": round(self.time, 6),
            "method": self.method,
            "url": self.url,
            "path": self.path,
            "client_url": self.client_url,
            "status": self.status,
            "source": self.source,
            "detail": self.detail,
            "retry_after": self.retry_after,
            "status_urls": list(self.status_urls),
            "operation": self.operation,
            "poll": self.poll,
            "operation_status": self.op_status,
            "terminal": self.terminal,
            "request_headers": headers,
            "request_body_size": self.request_body_size,
            "cassette": self.cassette,
            "interaction": self.interaction,
        }

    @property
    def query(self) -> str:
        """The query string the client sent (without ``?``), "" when none."""
        return urlsplit(self.path).query

    def line(self) -> str:
        """The console line: method, path, status, what answered."""
        status = str(self.status) if self.status is not None else "---"
        return f"{self.method} {self.path} -> {status} ({self.answered_by()})"

    def answered_by(self) -> str:
        """What answered, as the console line says it (``scenario x.yaml: operation 4f1c…, poll 2``)."""
        answered = {
            "upstream": "upstream",
            "cassette": "cassette interaction",
            "no-match": "NO MATCH",
            "scenario-error": "SCENARIO ERROR",
            "error": "upstream FAILED",
        }.get(self.source, self.source)
        separator = ": " if self.source in ("no-match", "scenario-error", "error") else " "
        detail = f"{separator}{self.detail}" if self.detail else ""
        return answered + detail


class ResponseFacts(NamedTuple):
    """What a response told the client about polling (see ``Exchange``)."""

    retry_after: float | None
    status_urls: tuple[str, ...]
    op_status: str | None
    terminal: bool
    polls_resource: bool = False
    """The status URL is the resource the running body describes (``BodyStatus.poll_at``): a later GET
    of it may read the result, not poll."""
    operation_name: str | None = None
    """A running AIP-151 operation's ``name``, when no status URL was given: the client polls a URL
    whose path ends with it (``operations.link_named_polls`` finds it)."""


STATUS_URL_HEADERS = ("operation-location", "azure-asyncoperation")
"""Headers that always carry a status URL; ``Location`` does on a 202 or on a non-terminal answer without
one of them (beside one, it is where the result is fetched: azure-core's final-state-via rule)."""


class BodyStatus(NamedTuple):
    """The operation status a JSON body reports, whether it is terminal, and where the body says the
    operation is polled (``body_status``)."""

    status: str | None
    terminal: bool
    poll_at: str | None = None
    """The status URL the body gives at ``urls.get`` (Replicate's predictions), as given; ``""`` when the
    status is a resource's own (ARM's ``properties.provisioningState``: azure-mgmt-core's
    ``BodyContentPolling`` polls the URL of the PUT or PATCH that answered it); None otherwise."""
    name: str | None = None
    """AIP-151's operation ``name`` (``operations/123``), which its clients poll under their API's base."""


NO_BODY_STATUS = BodyStatus(None, False)

OWN_URL_METHODS = ("PUT", "PATCH")
"""Requests whose answer, reporting its resource's own status, is polled at the request's URL."""


def body_status_url(status: int, body: BodyStatus, method: str, client_url: str) -> str | None:
    """The status URL a running JSON answer gives in its body (``BodyStatus.poll_at``), resolved against
    ``client_url``: for a non-terminal status in a non-error answer without a status header's URL
    (``response_facts`` and recordings, ``proxy.operations``, share this rule). Replicate's clients poll
    ``urls.get``; BodyContentPolling polls a PUT's or PATCH's own URL (``method``)."""
    if body.poll_at is None or body.status is None or body.terminal or status >= 400:
        return None
    if body.poll_at:
        return urljoin(client_url, body.poll_at) if client_url else body.poll_at
    return client_url if method.upper() in OWN_URL_METHODS and client_url else None


def response_facts(
    response: Response,
    client_url: str,
    *,
    now: float | None = None,
    body: BodyStatus | None = None,
    method: str = "",
) -> ResponseFacts:
    """Retry-After (seconds from ``now``), status URLs (absolute, resolved against ``client_url``) and the
    operation status of a JSON body: its ``status`` field (terminal: ``TERMINAL_STATUSES``,
    case-insensitive), AIP-151's ``done`` (with ``metadata.status`` when given) or an ARM resource's
    ``properties.provisioningState``. ``body``: the response's ``body_status``, when the caller has it
    already (a replayed response's, cached). Without a status header, a running body's own status URL
    counts (``body_status_url``; ``method``: the request's)."""
    retry_after = parse_retry_after(response.headers, now=now)
    if body is None:
        body = body_status(response)
    op_status, terminal = body.status, body.terminal
    urls: list[str] = []
    if not terminal:
        names = list(STATUS_URL_HEADERS)
        beside = any((header_value(response.headers, name) or "").strip() for name in names)
        running = response.status == 202 or (op_status is not None and 200 <= response.status < 300)
        if running and not beside:
            names.insert(0, "location")  # beside a status header, Location is where the result is fetched
        for name in names:
            value = header_value(response.headers, name)
            if value and value.strip():
                url = urljoin(client_url, value.strip()) if client_url else value.strip()
                if url not in urls:
                    urls.append(url)
        if not urls and body.poll_at is not None:
            in_body = body_status_url(response.status, body, method, client_url)
            if in_body:
                return ResponseFacts(retry_after, (in_body,), op_status, terminal, polls_resource=True)
        if not urls and body.name is not None and response.status < 400:
            return ResponseFacts(retry_after, (), op_status, terminal, operation_name=body.name)
    return ResponseFacts(retry_after, tuple(urls), op_status, terminal)


def fixed_facts(response: Response, body: BodyStatus) -> ResponseFacts | None:
    """``response_facts`` of ``response`` when they depend on neither the time nor the request's URL (no
    HTTP-date Retry-After, no relative status URL), else None: made once for a response served again and
    again (``body``: its ``body_status``). None for a running resource polled at its own URL too (that
    depends on the request's method and URL)."""
    if dated_retry_after(response.headers) or (body.poll_at == "" and not body.terminal):
        return None
    facts = response_facts(response, "", body=body)
    if any(not urlsplit(url).scheme for url in facts.status_urls):
        return None
    return facts


_BODY_STATUS_CACHE: dict[bytes, BodyStatus] = {}
"""``body_status`` of recent small bodies: polls are answered with the same bytes again and again."""
_BODY_CACHE_ENTRIES = 1024
_BODY_CACHE_MAX_BYTES = 8192


def body_status(response: Response) -> BodyStatus:
    """The operation status of a JSON body and whether it is terminal; (None, False) for anything else."""
    body = response.body
    if not body or body.lstrip()[:1] != b"{":
        return NO_BODY_STATUS
    if len(body) > _BODY_CACHE_MAX_BYTES or type(body) is not bytes:
        return _parse_body_status(body)
    found = _BODY_STATUS_CACHE.get(body)
    if found is None:
        if len(_BODY_STATUS_CACHE) >= _BODY_CACHE_ENTRIES:
            _BODY_STATUS_CACHE.clear()
        found = _BODY_STATUS_CACHE[body] = _parse_body_status(body)
    return found


def _parse_body_status(body: bytes) -> BodyStatus:
    import json

    try:
        doc: Any = json.loads(body)
    except (ValueError, RecursionError):
        return NO_BODY_STATUS
    if not isinstance(doc, dict):
        return NO_BODY_STATUS
    status = doc.get("status")
    if isinstance(status, str) and status:
        urls = doc.get("urls")
        url = urls.get("get") if isinstance(urls, dict) else None
        poll_at = url.strip() if isinstance(url, str) and url.strip() else None
        return BodyStatus(status, status.lower() in TERMINAL_STATUSES, poll_at)
    done = doc.get("done")
    if isinstance(done, bool):
        metadata = doc.get("metadata")
        named = metadata.get("status") if isinstance(metadata, dict) else None
        named = named if isinstance(named, str) and named else ("done" if done else "running")
        name = doc.get("name")
        name = name.strip("/") if isinstance(name, str) else None
        return BodyStatus(named, done, None, name or None)
    for path in RESOURCE_STATUS_PATHS:
        found: Any = doc
        for key in path:
            found = found.get(key) if isinstance(found, dict) else None
        if isinstance(found, str) and found:
            return BodyStatus(found, found.lower() in TERMINAL_STATUSES, "")
    return NO_BODY_STATUS


class Journal:
    """A thread-safe, append-only list of exchanges, with an optional listener per entry.

    Bounded: only the last ``max_entries`` (default ``MAX_ENTRIES``, 100,000) entries are kept, so a
    proxy that serves for days does not grow without end. ``scrub`` (the session's ``Redactor.scrub``)
    hides secrets in each entry's URLs and detail before it is kept or shown: the console, ``--report``
    and ``ReplayProxy.journal`` never hold one.
    """

    def __init__(
        self, listener: Callable[[Exchange], None] | None = None, max_entries: int = MAX_ENTRIES
    ) -> None:
        self._entries: deque[Exchange] = deque(maxlen=max_entries)
        self._lock = threading.Lock()
        self.listener = listener
        self.scrub: Callable[[str], str] | None = None
        self.redact_headers: Callable[[Headers], Headers] | None = None
        """The session's ``Redactor.headers``: request headers as a cassette would save them."""
        self._headers_cache: dict[tuple[object, Headers], Headers] = {}
        self.file: JournalFile | None = None
        """``--journal FILE``: each entry is also written there, one JSON line, as it is added."""

    def add(self, exchange: Exchange) -> None:
        """Keep ``exchange`` (its URLs scrubbed), write it to ``file``, tell ``listener``. Its request
        headers are redacted by whoever builds it, with ``request_headers`` (the addon does)."""
        if self.scrub is not None:
            exchange = scrubbed(exchange, self.scrub)
        with self._lock:
            self._entries.append(exchange)
        if self.file is not None:
            self.file.exchange(exchange)
        if self.listener is not None:
            self.listener(exchange)

    def request_headers(self, headers: Headers) -> Headers:
        """A request's ``headers`` for an entry: redacted by ``redact_headers`` and remembered (a client
        polling sends the same headers again and again, and redacting them costs tens of microseconds:
        the echo sweep), each field shared with the entries that have it."""
        redact = self.redact_headers
        key = (redact, headers)
        found = self._headers_cache.get(key)
        if found is None:
            if len(self._headers_cache) >= _HEADERS_CACHE_SIZE:
                self._headers_cache.clear()
            found = self._headers_cache[key] = _shared(redact(headers) if redact is not None else headers)
        return found

    @property
    def entries(self) -> list[Exchange]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_HEADERS_CACHE_SIZE = 1024
_PAIRS: dict[tuple[str, str], tuple[str, str]] = {}
_PAIRS_MAX = 4096


def _shared(headers: Headers) -> Headers:
    """``headers`` built from header fields already held (a poller sends the same ones every time): a
    journal of 100,000 entries keeps one copy of each field, not 100,000."""
    out = []
    for pair in headers:
        found = _PAIRS.get(pair)
        if found is None:
            if len(_PAIRS) >= _PAIRS_MAX:
                _PAIRS.clear()
            found = _PAIRS[pair] = pair
        out.append(found)
    return tuple(out)


def scrubbed(exchange: Exchange, scrub: Callable[[str], str]) -> Exchange:
    """``exchange`` with ``scrub`` applied to its URLs and detail; itself when nothing changed. An
    operation's answer (``tag``) keeps its detail: the scenario's names, a generated id, the poll number
    and a status, nothing from the request (and a new text each poll, which ``scrub`` cannot cache)."""
    url, path, client_url = scrub(exchange.url), scrub(exchange.path), scrub(exchange.client_url)
    detail = exchange.detail if exchange.tag is not None else scrub(exchange.detail)
    status_urls = tuple(scrub(u) for u in exchange.status_urls)
    if (url, path, client_url, detail, status_urls) == (
        exchange.url,
        exchange.path,
        exchange.client_url,
        exchange.detail,
        exchange.status_urls,
    ):
        return exchange
    return replace(
        exchange, url=url, path=path, client_url=client_url, detail=detail, status_urls=status_urls
    )


class JournalFile:
    """``--journal FILE``: one JSON object per line, written (one ``write`` to a file opened for appending)
    the moment each exchange is journaled, so a crashed proxy leaves every line it had written.

    Lines are ``{"event": "exchange", ...Exchange.to_json()}`` and, when a session loads a cassette,
    ``{"event": "load", "cassette": PATH, "interactions": N, "record_mode": MODE}`` (what ``prune`` needs
    to tell "loaded, never played" from "not used in this run"). The file is appended to: whoever starts a
    run decides whether it starts afresh (the command line does; ``start_fresh``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            from proxy.errors import ConfigError

            raise ConfigError(f"{self.path}: cannot write the journal there: {e.strerror or e}") from None
        self._lock = threading.Lock()
        self.error: str | None = None
        """Why a line could not be written (a full disk): said once, then lines are dropped."""

    def exchange(self, exchange: Exchange) -> None:
        self.write({"event": "exchange", **exchange.to_json()})

    def write(self, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` as one line (one system call: lines from several processes never interleave)."""
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd < 0 or self.error is not None:
                return
            try:
                os.write(self._fd, line)
            except OSError as e:
                self.error = f"{self.path}: journal line not written: {e.strerror or e}"
                import logging

                logging.getLogger("proxy").error("replay-proxy: error: %s", self.error)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def start_fresh(path: str | os.PathLike[str]) -> None:
    """Empty (or create) the journal file at ``path``: a run that owns the file starts it afresh."""
    try:
        with open(path, "wb"):
            pass
    except OSError as e:
        from proxy.errors import ConfigError

        raise ConfigError(f"{os.fspath(path)}: cannot write the journal there: {e.strerror or e}") from None


def read_journal(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The entries of a ``--journal`` file, in order; a last line cut short by a kill is left out.

    A line that is not a JSON object (other than that last one) is a ConfigError naming ``file:line``.
    """
    from proxy.errors import ConfigError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{os.fspath(path)}: cannot read the journal: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{os.fspath(path)}: not a journal (not UTF-8 text)") from None
    lines = text.split("\n")
    out: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
            if number == len(lines):  # no newline after it: torn by a kill
                continue
        if not isinstance(entry, dict):
            raise ConfigError(f"{os.fspath(path)}:{number}: not a journal line (a JSON object expected)")
        out.append(entry)
    return out
