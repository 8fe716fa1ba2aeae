"""What the client did: one entry per exchange, and the console line that shows it.

Entries carry what the verdict (proxy/verdict.py) needs to judge how a client polled: when the request
arrived (wall and monotonic), the URL as the client sent it, the delay the response advertised to the
client, the status URLs it handed out, and the state of the long-running operation it reported.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit

from proxy.model import Response, header_value
from proxy.rewrite import parse_retry_after
from proxy.scenario.answer import TERMINAL_STATUSES, OperationTag

MAX_ENTRIES = 100_000
"""A journal keeps the most recent entries only (older ones are dropped): memory stays bounded."""

_monotonic = time.monotonic  # the field named ``time`` hides the module in the class body


class SealedHeaders:
    """A request's header fields as received, sealed: they come out only through a redactor (``shown``),
    and ``repr`` says how many there are, never what. Kept raw because decoding and redacting them on every
    request would cost the request path ~50 us; the control API redacts them when it shows them."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self._fields = tuple(fields)

    def __repr__(self) -> str:
        return f"<{len(self._fields)} request header fields, shown redacted>"

    def __len__(self) -> int:
        return len(self._fields)

    def shown(
        self, redact: Callable[[tuple[tuple[str, str], ...]], Sequence[tuple[str, str]]]
    ) -> tuple[tuple[str, str], ...]:
        """The fields as text (what is not UTF-8 as U+FFFD), through ``redact`` (a session's
        ``Redactor`` as cassettes are written, or the identity when redaction is off)."""
        decoded = tuple((k.decode("utf-8", "replace"), v.decode("utf-8", "replace")) for k, v in self._fields)
        return tuple(redact(decoded)) if decoded else ()


NO_HEADERS = SealedHeaders()


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
    non-terminal answer, Operation-Location, Azure-AsyncOperation). ``operation``/``poll`` come from a
    scenario operation (its id, the poll number; ``poll`` is None for its start and resource requests);
    ``op_status``/``terminal`` are the operation status the response reported (scenario answers, or the
    ``status`` field / AIP-151 ``done`` of a JSON body). ``tag``: a scenario operation's answer as data
    (its rule, dialect, role and step: ``proxy.scenario.answer.OperationTag``), None otherwise.
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
    operation: str | None = None
    poll: int | None = None
    op_status: str | None = None
    terminal: bool = False
    tag: OperationTag | None = None
    request_headers: SealedHeaders = field(default_factory=lambda: NO_HEADERS)
    """The request's header fields, sealed: read only through a redactor (``SealedHeaders.shown``)."""
    body_size: int | None = None
    """The request body's size in bytes."""

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


STATUS_URL_HEADERS = ("operation-location", "azure-asyncoperation")
"""Headers that always carry a status URL; ``Location`` does on a 202 or on a non-terminal answer without
one of them (beside one, it is where the result is fetched: azure-core's final-state-via rule)."""


BodyStatus = tuple[str | None, bool]
"""The operation status a JSON body reports, and whether it is terminal (``body_status``)."""


def response_facts(
    response: Response, client_url: str, *, now: float | None = None, body: BodyStatus | None = None
) -> ResponseFacts:
    """Retry-After (seconds from ``now``), status URLs (absolute, resolved against ``client_url``) and the
    operation status of a JSON body: its ``status`` field (terminal: ``TERMINAL_STATUSES``,
    case-insensitive) or AIP-151's ``done`` (with ``metadata.status`` when given). ``body``: the response's
    ``body_status``, when the caller has it already (a replayed response's, cached)."""
    retry_after = parse_retry_after(response.headers, now=now)
    op_status, terminal = body if body is not None else body_status(response)
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
    return ResponseFacts(retry_after, tuple(urls), op_status, terminal)


_BODY_STATUS_CACHE: dict[bytes, BodyStatus] = {}
"""``body_status`` of recent small bodies: polls are answered with the same bytes again and again."""
_BODY_CACHE_ENTRIES = 1024
_BODY_CACHE_MAX_BYTES = 8192


def body_status(response: Response) -> BodyStatus:
    """The operation status of a JSON body and whether it is terminal; (None, False) for anything else."""
    body = response.body
    if not body or body.lstrip()[:1] != b"{":
        return None, False
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
        return None, False
    if not isinstance(doc, dict):
        return None, False
    status = doc.get("status")
    if isinstance(status, str) and status:
        return status, status.lower() in TERMINAL_STATUSES
    done = doc.get("done")
    if isinstance(done, bool):
        metadata = doc.get("metadata")
        named = metadata.get("status") if isinstance(metadata, dict) else None
        return (named if isinstance(named, str) and named else ("done" if done else "running")), done
    return None, False


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

    def add(self, exchange: Exchange) -> None:
        if self.scrub is not None:
            exchange = scrubbed(exchange, self.scrub)
        with self._lock:
            self._entries.append(exchange)
        if self.listener is not None:
            self.listener(exchange)

    @property
    def entries(self) -> list[Exchange]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def scrubbed(exchange: Exchange, scrub: Callable[[str], str]) -> Exchange:
    """``exchange`` with ``scrub`` applied to its URLs and detail; itself when nothing changed."""
    url, path, client_url, detail = (
        scrub(exchange.url),
        scrub(exchange.path),
        scrub(exchange.client_url),
        scrub(exchange.detail),
    )
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
