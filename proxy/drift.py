"""``replay-proxy drift CASSETTE --upstream URL``: has the real API moved away from the recording?

The recorded requests are sent again, in recorded order, to the upstream (safe methods only unless
``--unsafe``): a run of identical requests (a client polling an operation) is polled as a client would,
waiting the ``Retry-After`` the live answers give (capped by ``--max-delay``) and polling on (up to
``--max-polls``) until the live operation is as finished as the recorded one was. Status URLs the live
answers hand out (``Location``, ``Operation-Location``, ``Azure-AsyncOperation``, ``resourceLocation``)
replace the recorded ones in later requests, so a re-sent start is followed by polls of the new operation.

Then each request's recorded answers are compared with its live ones, structurally (values are ignored):

- ``status``: a status code the recording never had (breaking when it is an error), or one it had that
  never came (warning);
- ``lro-header``: ``Location``, ``Operation-Location``, ``Azure-AsyncOperation`` or ``Retry-After`` vanished
  (breaking) or appeared (warning);
- ``status-vocabulary``: an operation status the recording never had (breaking: a client that knows only
  the old words misreads it), or a recorded one that never came (warning);
- ``json-field``: a JSON field removed or retyped (breaking), or added (info); ``null`` against a value is
  info.

Exit 0: no drift; 3: drift at or above ``--fail-on``; 2: bad input (cassette, URL, an upstream that cannot
be reached).
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from proxy import cassette as cassettes
from proxy import decompress
from proxy.errors import ConfigError
from proxy.journal import body_status
from proxy.model import Headers, Interaction, Request, Response, header_value, json_document
from proxy.rewrite import parse_retry_after
from proxy.unused import interaction_lines, shown_path

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LRO_HEADERS = ("Location", "Operation-Location", "Azure-AsyncOperation", "Retry-After")
URL_HEADERS = ("Location", "Operation-Location", "Azure-AsyncOperation")
URL_FIELDS = ("resourceLocation",)
SEVERITIES = ("info", "warning", "breaking")
_NOT_SENT = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding", "te"}
)
BODY_LIMIT = 100 << 20


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str
    category: str
    request: str
    """``GET /tilesets/operations/...`` as recorded."""
    where: str
    """``file:line`` of the request's first recorded interaction."""
    message: str
    order: int = 0
    """The request's place in the cassette: findings of one severity are printed in file order."""

    def text(self) -> str:
        return f"  {self.severity:<8}  {self.category:<17}  {self.request}: {self.message}  ({self.where})"


@dataclass
class Step:
    """A run of identical recorded requests (one, or a client's polls) and what came back live."""

    first: int
    recorded: list[Interaction]
    live: list[Response] = field(default_factory=list)
    skipped: str = ""


@dataclass(frozen=True)
class Options:
    upstream: str
    unsafe: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    max_delay: float = 5.0
    max_polls: int = 30
    timeout: float = 30.0
    ca: str | None = None


def steps_of(interactions: Sequence[Interaction]) -> list[Step]:
    """Consecutive interactions with the same method and URL form one step (a client polling)."""
    steps: list[Step] = []
    for i, interaction in enumerate(interactions):
        key = (interaction.request.method.upper(), interaction.request.url)
        last = steps[-1] if steps else None
        if (
            last is not None
            and (last.recorded[0].request.method.upper(), last.recorded[0].request.url) == key
        ):
            last.recorded.append(interaction)
        else:
            steps.append(Step(i, [interaction]))
    return steps


# -- sending ----------------------------------------------------------------------------------------------


class Sender:
    """Sends requests to the upstream with http.client (no proxy, no redirects followed)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.context = ssl.create_default_context(cafile=options.ca) if options.ca else None

    def send(self, method: str, url: str, headers: Headers, body: bytes) -> Response:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=self.options.timeout, context=self.context or ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.options.timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.putheader("Accept-Encoding", "identity")
            if body or method.upper() in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            answer = conn.getresponse()
            raw = answer.read()
            fields = tuple(answer.getheaders())
        except (OSError, http.client.HTTPException) as e:
            raise ConfigError(f"{method} {url}: the upstream did not answer: {e}") from None
        finally:
            conn.close()
        encoding = (header_value(fields, "content-encoding") or "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate", "br", "zstd"):
            with contextlib.suppress(Exception):  # else compared as it came: its JSON shape unknown
                raw = decompress.decode(raw, encoding, BODY_LIMIT)
        return Response(answer.status, answer.reason, fields, raw)


def _request_headers(request: Request, extra: Sequence[tuple[str, str]]) -> tuple[Headers, list[str]]:
    """The recorded headers to send again (minus the wire ones and the redacted), ``extra`` last; and the
    names dropped because the cassette holds a placeholder for them."""
    override = {name.lower() for name, _ in extra}
    out: list[tuple[str, str]] = []
    dropped: list[str] = []
    for name, value in request.headers:
        lname = name.lower()
        if lname in _NOT_SENT or lname in override:
            continue
        if "<REDACTED" in value:
            if name not in dropped:
                dropped.append(name)
            continue
        out.append((name, value))
    return (*out, *extra), dropped


def _rebased(url: str, upstream: str, moved: dict[str, str]) -> str:
    """The recorded ``url`` on the upstream, or where a live answer moved it."""
    if url in moved:
        return moved[url]
    parts = urlsplit(url)
    return upstream + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _learn(
    recorded: Response, live: Response, request_url: str, live_url: str, moved: dict[str, str]
) -> None:
    """Map the status URLs ``recorded`` gave to those ``live`` gave: header by header, then the first
    status header of each (an API that moved its URL from Location to Operation-Location), then
    ``resourceLocation`` in JSON bodies."""
    pairs = [(header_value(recorded.headers, n), header_value(live.headers, n)) for n in URL_HEADERS]
    firsts = (
        next((old for old, _ in pairs if old), None),
        next((new for _, new in pairs if new), None),
    )
    for old, new in [*pairs, firsts]:
        if old and new:
            moved.setdefault(urljoin(request_url, old.strip()), urljoin(live_url, new.strip()))
    old_doc, new_doc = json_document(recorded.body), json_document(live.body)
    if isinstance(old_doc, dict) and isinstance(new_doc, dict):
        for name in URL_FIELDS:
            old_value, new_value = old_doc.get(name), new_doc.get(name)
            if isinstance(old_value, str) and isinstance(new_value, str):
                moved.setdefault(urljoin(request_url, old_value), urljoin(live_url, new_value))


def resend(
    steps: Sequence[Step], options: Options, sender: Sender, sleep: Callable[[float], None]
) -> list[str]:
    """Send each step again, filling ``step.live``; the notes to print (what was skipped or left out)."""
    moved: dict[str, str] = {}
    notes: list[str] = []
    for step in steps:
        request = step.recorded[0].request
        method = request.method.upper()
        if method not in SAFE_METHODS and not options.unsafe:
            step.skipped = f"{method} not sent (not a safe method: --unsafe sends it)"
            continue
        url = _rebased(request.url, options.upstream, moved)
        headers, dropped = _request_headers(request, options.headers)
        if dropped:
            without = ", ".join(dropped)
            notes.append(
                f"{method} {request.path_and_query}: sent without {without} (redacted in the cassette; "
                "give it with -H 'NAME: VALUE')"
            )
        recorded_terminal = any(body_status(i.response)[1] for i in step.recorded)
        polls = 0
        while True:
            live = sender.send(method, url, headers, request.body)
            step.live.append(live)
            polls += 1
            done = body_status(live)[1]
            if polls >= len(step.recorded) and (done or not recorded_terminal or _final_error(live)):
                break
            if done or polls >= max(options.max_polls, len(step.recorded)):
                break
            delay = parse_retry_after(live.headers)
            sleep(min(delay if delay is not None else 0.0, options.max_delay))
        for old, new in zip(step.recorded, step.live, strict=False):
            _learn(old.response, new, request.url, url, moved)
        _learn(step.recorded[-1].response, step.live[-1], request.url, url, moved)
    return notes


def _final_error(response: Response) -> bool:
    """An error a client does not poll on after (not 408, 429 or 5xx, which it retries)."""
    return response.status >= 400 and response.status not in (408, 429) and response.status < 500


# -- comparing ----------------------------------------------------------------------------------------------



def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def shape(node: Any, at: str = "$", out: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Each path of a JSON document (arrays' items as ``[]``) and the kinds of value found there."""
    out = {} if out is None else out
    out.setdefault(at, set()).add(_kind(node))
    if isinstance(node, dict):
        for key, value in node.items():
            shape(value, f"{at}.{key}", out)
    elif isinstance(node, list):
        for value in node:
            shape(value, f"{at}[]", out)
    return out


def _union(responses: Sequence[Response]) -> dict[str, set[str]] | None:
    found: dict[str, set[str]] | None = None
    for response in responses:
        doc = json_document(response.body)
        if doc is not None:
            found = shape(doc, "$", found)
    return found


def _codes(responses: Sequence[Response]) -> list[int]:
    return sorted({r.status for r in responses})


def _listed(values: Sequence[object]) -> str:
    return ", ".join(str(v) for v in values) or "none"


def compare(step: Step) -> Iterator[tuple[str, str, str]]:
    """(severity, category, message) for each structural difference of one step."""
    recorded = [i.response for i in step.recorded]
    live = step.live
    old_codes, new_codes = _codes(recorded), _codes(live)
    new = [c for c in new_codes if c not in old_codes]
    gone = [c for c in old_codes if c not in new_codes]
    if new:
        severity = (
            "breaking" if any(c >= 400 for c in new) or not set(old_codes) & set(new_codes) else "warning"
        )
        yield severity, "status", f"status {_listed(new)} where the recording had {_listed(old_codes)}"
        if all(c >= 400 for c in new_codes) and any(c < 400 for c in old_codes):
            return  # an error instead of an answer: its headers and body are not the API's shape
    elif gone:
        yield "warning", "status", f"recorded status {_listed(gone)} never came (live: {_listed(new_codes)})"
    for name in LRO_HEADERS:
        had = any(header_value(r.headers, name) is not None for r in recorded)
        has = any(header_value(r.headers, name) is not None for r in live)
        if had and not has:
            yield "breaking", "lro-header", f"{name} vanished (the recording had it)"
        elif has and not had:
            yield "warning", "lro-header", f"{name} appeared (the recording had none)"
    old_words = {s for s in (body_status(r)[0] for r in recorded) if s is not None}
    new_words = {s for s in (body_status(r)[0] for r in live) if s is not None}
    if new_words - old_words:
        yield (
            "breaking",
            "status-vocabulary",
            f"operation status {_listed(sorted(new_words - old_words))}, which the recording never had "
            f"(it had {_listed(sorted(old_words))})",
        )
    if old_words - new_words and old_words:
        yield (
            "warning",
            "status-vocabulary",
            f"recorded operation status {_listed(sorted(old_words - new_words))} never came "
            f"(live: {_listed(sorted(new_words))})",
        )
    old_shape, new_shape = _union(recorded), _union(live)
    if old_shape is None or new_shape is None:
        if old_shape is not None and any(r.body for r in live):
            yield "breaking", "json-field", "the body is no longer JSON"
        return
    for path in sorted(old_shape.keys() - new_shape.keys()):
        if _parent(path) not in old_shape.keys() - new_shape.keys():
            yield "breaking", "json-field", f"{path} removed ({_listed(sorted(old_shape[path]))})"
    for path in sorted(new_shape.keys() - old_shape.keys()):
        if _parent(path) not in new_shape.keys() - old_shape.keys():
            yield "info", "json-field", f"{path} added ({_listed(sorted(new_shape[path]))})"
    for path in sorted(old_shape.keys() & new_shape.keys()):
        before, after = old_shape[path] - {"null"}, new_shape[path] - {"null"}
        if before and after and before != after:
            yield (
                "breaking",
                "json-field",
                f"{path} retyped: {_listed(sorted(before))} -> {_listed(sorted(after))}",
            )
        elif old_shape[path] != new_shape[path]:
            yield (
                "info",
                "json-field",
                f"{path} was {_listed(sorted(old_shape[path]))}, now {_listed(sorted(new_shape[path]))}",
            )


def _parent(path: str) -> str:
    if path.endswith("[]"):
        return path[:-2]
    return path.rsplit(".", 1)[0] if "." in path else path


def drift_main(
    path: Path, options: Options, fail_on: str, sleep: Callable[[float], None] = time.sleep
) -> int:
    """Re-send, compare, print; the exit status (0 none, 3 drift at or above ``fail_on``)."""
    from proxy.cli import EXIT_OK, EXIT_VIOLATIONS

    interactions = cassettes.load(path)
    steps = steps_of(interactions)
    notes = resend(steps, options, Sender(options), sleep)
    lines = interaction_lines(path, len(interactions))
    shown = shown_path(str(path.absolute()))
    findings: list[Finding] = []
    for step in steps:
        if step.skipped:
            continue
        request = step.recorded[0].request
        where = f"{shown}:{lines[step.first]}" if lines is not None else shown
        for severity, category, message in compare(step):
            shown_request = f"{request.method} {request.path_and_query}"
            findings.append(Finding(severity, category, shown_request, where, message, step.first))
    sent = sum(len(s.live) for s in steps)
    skipped = [s for s in steps if s.skipped]
    head = f"drift of {shown} against {options.upstream}: {sent} requests sent"
    if skipped:
        unsent = sum(len(s.recorded) for s in skipped)
        plural = "s" * (unsent != 1)
        head += (
            f"; {unsent} recorded request{plural} not sent (unsafe method{plural}: --unsafe sends "
            "them; the polls of an operation whose start was not sent ask about the recorded one)"
        )
    print(head, flush=True)
    for note in notes:
        print(f"  note: {note}", flush=True)
    findings.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.order))
    for finding in findings:
        print(finding.text(), flush=True)
    counted = {s: sum(1 for f in findings if f.severity == s) for s in reversed(SEVERITIES)}
    if not findings:
        print("no drift", flush=True)
        return EXIT_OK
    summary = ", ".join(f"{n} {s}" for s, n in counted.items() if n)
    print(
        f"replay-proxy drift: {len(findings)} finding{'s' * (len(findings) != 1)} ({summary})",
        file=sys.stderr,
    )
    failing = any(SEVERITIES.index(f.severity) >= SEVERITIES.index(fail_on) for f in findings)
    return EXIT_VIOLATIONS if failing else EXIT_OK
