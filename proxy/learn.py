"""``replay-proxy learn``: turn a recording into an editable scenario.

Every long-running operation of the recording becomes one ``operations:`` entry (its start as ``match``,
its status URL and how it was given, the progression with counts, Retry-After per step, the terminal
outcome, the status codes of each phase), with the recording's ids, dates and URLs turned into templates
so that one learned entry serves any number of concurrent operations. Everything else becomes
``routes:`` (identical repeated requests: a ``sequence`` with ``times``). Secrets are redacted
(``proxy.redact``) before anything is learned.

Recognition is ``proxy.operations.recognise``, the module the verdict reads operations with (one
recogniser for both): ``find_operations`` only turns its ``Operation`` facts into the ``LearnedOperation``
the rendering reads. Rendering writes scenario text in the language's styles (``proxy/dialects.py``:
``creator-v1``, ``creator-v2``, ``aip-151``, ``location``, ``arm``) and checks it with the scenario loader
before anything is written.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, cast, get_args
from urllib.parse import urljoin, urlsplit

import yaml

from proxy import operations
from proxy.dialects import DIALECTS
from proxy.errors import ReplayProxyError
from proxy.model import Interaction, Request, Response, json_document, origin_of
from proxy.recordings import Recorded, Recording
from proxy.redact import Redactor

Style = Literal["creator-v1", "creator-v2", "aip-151", "location", "arm"]
STYLES: tuple[str, ...] = get_args(Style)
Timing = Literal["polls", "time"]

TERMINAL = {"succeeded", "failed", "canceled", "cancelled"}
RETRIABLE = {408, 429}
INLINE_LIMIT = 1024
"""Bodies up to this many bytes are written into the scenario; longer ones go to a file beside it."""
NOISE_HEADERS = {
    "date", "content-length", "transfer-encoding", "connection", "keep-alive", "server", "content-encoding",
    "content-type", "retry-after", "retry-after-ms", "x-ms-retry-after-ms", "strict-transport-security",
    "x-content-type-options", "x-ms-request-id", "apim-request-id", "x-ms-correlation-request-id",
    "x-ms-routing-request-id", "x-envoy-upstream-service-time", "request-context", "x-ms-client-request-id",
    "x-powered-by", "x-aspnet-version", "cache-control", "pragma", "expires", "vary", "x-cache",
    "x-ms-ratelimit-remaining-subscription-reads", "x-ms-ratelimit-remaining-subscription-writes",
    "x-ms-ratelimit-remaining-subscription-deletes", "x-ms-ratelimit-remaining-tenant-reads",
    "x-ms-ratelimit-remaining-tenant-writes", "x-ms-ratelimit-remaining-tenant-deletes", "age", "via",
    "x-served-by", "x-timer", "alt-svc", "nel", "report-to", "cf-ray", "x-frame-options", "x-xss-protection",
    "x-ms-failure-cause", "x-response-time", "x-trace-id", "x-request-id",
}  # fmt: skip
"""Response headers that describe the transport or one day's server, not the API: left out of answers."""
LRO_HEADERS = ("Location", "Operation-Location", "Azure-AsyncOperation", "Resource-Location")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^[0-9a-fA-F]{16,}$")
_OPAQUE = re.compile(r"^[A-Za-z0-9_\-=.]{24,}$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$")
_SEED_DATE = re.compile(r"^\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M [+-]\d{2}:\d{2}$")
_JINJA = ("{{", "{%", "{#")


class LearnError(ReplayProxyError):
    """The recording could not be learned (nothing in it, an output that cannot be written)."""


# -- recognition: proxy/operations.py's, shared with the verdict ------------------------------------------


@dataclass(frozen=True)
class LearnedPoll:
    """One poll of an operation: which interaction, the operation status it reported, how it was told."""

    index: int
    http_status: int
    status: str | None
    """The operation status (``Running``...); None for an answer that is no status (a 503, a 429)."""
    by: Literal["status", "done", "http-status", "none"]
    """Where the status was read: the body's ``status``, AIP-151's ``done``, or the HTTP status alone (202
    while running, then 200/201/204: azure-core's LocationPolling)."""


@dataclass(frozen=True)
class LearnedOperation:
    """A long-running operation found in a recording: its start, status URL, polls and outcome."""

    start: int
    """Index of the start request in the interactions."""
    header: str | None
    """The start answer's header that gave the status URL (None: an AIP-151 body ``name``)."""
    status_url: str
    """The status URL as given (absolute or relative; for AIP-151 the operation's ``name``)."""
    status_target: str
    """The status URL made absolute against the start request."""
    operation_id: str
    polls: tuple[LearnedPoll, ...]
    terminal: int | None
    """Position in ``polls`` of the first terminal answer; None when the recording ended before it."""
    style: Style
    also_headers: tuple[str, ...] = ()
    """Other status headers of the start answer that gave the same URL."""
    after_terminal: tuple[int, ...] = ()
    """Polls after the terminal answer (the terminal step answers them again)."""
    resource_url: str | None = None
    resource_get: int | None = None
    """Index of a GET of the created resource after success."""
    final_via: Literal["resource", "start-url"] = "resource"
    """How the client found the result: a URL it was given, or (ARM after a PUT/PATCH) the start's own."""


FALLBACK_STYLE: dict[str, Style] = {
    "Location": "creator-v1",
    "Operation-Location": "creator-v2",
    "Azure-AsyncOperation": "arm",
    "body": "aip-151",
}
"""The style of an operation whose dialect ``recognise`` could not tell, by how the status URL was given."""


def find_operations(interactions: Sequence[Interaction]) -> list[LearnedOperation]:
    """The long-running operations in ``interactions``, in the order they started, as
    ``proxy.operations.recognise`` (the recogniser the verdict uses too) finds them: those whose start
    is in the recording and that were polled at a status URL the start gave."""
    found: list[LearnedOperation] = []
    for op in operations.recognise(interactions):
        if op.start is None or op.given is None or op.given_by is None or not op.polls:
            continue
        if op.given_by == operations.START_URL:
            continue  # a resource polled at its own URL (BodyContentPolling): not written as an operation yet
        start = op.entries[0]
        header = None if op.given_by in ("body", operations.BODY_URL) else op.given_by
        first_poll = interactions[op.polls[0].index].request.url
        target = urljoin(interactions[start].request.url, op.given) if header else first_poll
        style = op.dialect if op.dialect in STYLES else FALLBACK_STYLE.get(op.given_by, "creator-v2")
        polls = tuple(_learned_poll(style, p, interactions[p.index].response) for p in op.polls)
        succeeded = op.outcome in ("succeeded", "done")
        final = op.final if succeeded and style != "aip-151" else None
        if final is not None and final.via == "start-url" and style != "arm":
            final = None  # only ARM answers GET of a PUT/PATCH's own URL from the operation
        found.append(
            LearnedOperation(
                start=start,
                header=header,
                status_url=op.given,
                status_target=target,
                operation_id=_operation_id(urlsplit(target).path),
                polls=polls,
                terminal=len(polls) - 1 if op.polls[-1].ends else None,
                style=cast(Style, style),
                also_headers=op.also_given_by,
                after_terminal=op.after_terminal,
                resource_url=op.resource_url if final is not None else None,
                resource_get=final.index if final is not None else None,
                final_via=final.via if final is not None else "resource",
            )
        )
    return found


def _learned_poll(style: str, poll: operations.PollFacts, response: Response) -> LearnedPoll:
    """How a poll recognised by ``recognise`` is written as a step: the status it reported (AIP-151: the
    ``metadata.status`` while running, then Succeeded or Failed), or what its status code says."""
    code = poll.http_status if poll.http_status is not None else response.status
    if poll.status is not None and not (code in RETRIABLE or code >= 400):
        if style == "aip-151":
            body = json_document(response.body)
            if isinstance(body, dict) and isinstance(body.get("done"), bool):
                return LearnedPoll(poll.index, code, _aip_status(body), "done")
        return LearnedPoll(poll.index, code, poll.status, "status")
    if poll.status is None and code == 202:
        return LearnedPoll(poll.index, code, "Running", "http-status")
    if poll.status is None and poll.ends:
        return LearnedPoll(poll.index, code, "Succeeded", "http-status")
    return LearnedPoll(poll.index, code, None, "none")


def _aip_status(body: dict[str, Any]) -> str:
    meta = body.get("metadata")
    if isinstance(meta, dict):
        for key in ("status", "state"):
            if isinstance(meta.get(key), str) and not body["done"]:
                return str(meta[key])
    if not body["done"]:
        return "Running"
    return "Failed" if "error" in body else "Succeeded"


def _is_terminal(poll: LearnedPoll) -> bool:
    return poll.status is not None and poll.status.lower() in TERMINAL


def _operation_id(path: str) -> str:
    """The segment of a status path that names the operation: the last id-like one, else the last."""
    segments = [s for s in path.split("/") if s]
    for segment in reversed(segments):
        if _id_like(segment):
            return segment
    return segments[-1] if segments else ""


def _id_like(segment: str) -> bool:
    if _UUID.match(segment) or _HEX.match(segment):
        return True
    if segment.isdigit() and len(segment) >= 3:
        return True
    return bool(_OPAQUE.match(segment)) and any(c.isdigit() for c in segment)


# -- rendering ------------------------------------------------------------------------------------------


@dataclass
class Learned:
    """What ``learn`` made: the scenario's text, the body files to write beside it, and counts."""

    text: str
    files: dict[str, bytes] = field(default_factory=dict)
    operations: int = 0
    routes: int = 0


@dataclass
class _Templater:
    """Turns a recording's values into templates: its origins, an operation's ids, URLs and dates."""

    origins: tuple[str, ...]
    op_id: str | None = None
    status_url: str | None = None
    resource_url: str | None = None
    resource_id: str | None = None
    start_values: dict[str, str] = field(default_factory=dict)
    """Recorded values of the start request (query, path ids) → the template that reads them."""

    def text(self, value: str, key: str = "") -> str:
        if self.status_url and value == self.status_url:
            return "{{ operation.status_url }}"
        if self.resource_url and value == self.resource_url:
            return "{{ operation.resource_url }}"
        if self.op_id is not None:
            if _ISO.match(value):
                if "creat" in key.lower():
                    return "{{ operation.created_iso[:19] }}" + _iso_tail(value)
                return "{{ now('%Y-%m-%dT%H:%M:%S') }}" + _iso_tail(value)
            if _SEED_DATE.match(value):
                return "{{ operation.created }}"
        out = _escaped(value)
        for origin in self.origins:
            if value.lower().startswith(origin.lower()):
                out = "{{ proxy_url }}" + _escaped(value[len(origin) :])
                break
        for recorded, template in self.start_values.items():
            if recorded in out:
                out = out.replace(recorded, template)
        if self.op_id and self.op_id in out:
            out = out.replace(self.op_id, "{{ operation.id }}")
        if self.resource_id and self.resource_id in out:
            out = out.replace(self.resource_id, "{{ operation.resource_id }}")
        return out

    def data(self, value: Any, key: str = "") -> Any:
        if isinstance(value, str):
            return self.text(value, key)
        if isinstance(value, dict):
            return {k: self.data(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(v, key) for v in value]
        return value


def _query_template(name: str) -> str:
    """The template that reads the start request's query parameter ``name``."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return "{{ operation.start.query." + name + " }}"
    return "{{ operation.start.query[" + json.dumps(name) + "] }}"


def _iso_tail(value: str) -> str:
    """The zone of an ISO date as recorded (``Z``, ``+00:00``), so templates render the same shape."""
    m = re.search(r"(Z|[+-]\d{2}:\d{2})$", value)
    return m.group(1) if m else ""


def _escaped(value: str) -> str:
    """``value`` as a template that renders to itself."""
    if any(marker in value for marker in _JINJA) and "{% endraw %}" not in value:
        return "{% raw %}" + value + "{% endraw %}"
    return value


def learn(
    recordings: Sequence[Recording],
    output: Path,
    *,
    timing: Timing = "polls",
    schema: str | None = None,
) -> Learned:
    """The scenario learned from ``recordings``, for writing to ``output`` (files go beside it)."""
    redactor = Redactor()
    exchanges: list[Recorded] = []
    for recording in recordings:
        for ex in recording.exchanges:
            exchanges.append(Recorded(redactor.interaction(ex.interaction), ex.at, ex.where))
    if not exchanges:
        names = ", ".join(str(r.path) for r in recordings)
        raise LearnError(f"{names}: the recording holds no exchanges: nothing to learn")
    interactions = [ex.interaction for ex in exchanges]
    operations = find_operations(interactions)
    writer = _Writer(exchanges, operations, output, timing)
    return writer.render(recordings, schema if schema is not None else _schema_path(output))


def _schema_path(output: Path) -> str:
    """Where editors find the JSON Schema, relative to the scenario: the nearest ``scenario.schema.json``
    (or ``scenarios/scenario.schema.json``) up from the output's folder, else the one shipped in this
    checkout, else a name to write with ``replay-proxy schema > scenario.schema.json``."""
    folder = output.resolve().parent
    for parent in (folder, *folder.parents):
        for candidate in (parent / "scenario.schema.json", parent / "scenarios" / "scenario.schema.json"):
            if candidate.is_file():
                return os.path.relpath(candidate, folder)
    shipped = Path(__file__).resolve().parent.parent / "scenarios" / "scenario.schema.json"
    if shipped.is_file():
        return os.path.relpath(shipped, folder)
    return "scenario.schema.json"


def _dump(value: Any) -> str:
    """One YAML value on one line (flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True, width=1 << 30)
    return text.strip().removesuffix("...").strip()


def _block(value: Any, indent: int) -> list[str]:
    """A YAML mapping or list in block style, indented."""
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=False, allow_unicode=True, width=1 << 16)
    pad = " " * indent
    return [pad + line for line in text.rstrip("\n").split("\n")]


def _small(value: Any) -> bool:
    return len(_dump(value)) <= 90


def _retry_after(response: Response) -> Any:
    """The scenario form of a recorded delay header (None: none)."""
    value = response.header("Retry-After")
    if value is not None:
        value = value.strip()
        if value.isdigit():
            return int(value)
        try:
            return float(value) if re.fullmatch(r"\d+\.\d+", value) else _date_delay(value, response)
        except ValueError:
            return {"raw": value}
    for name, key in (("retry-after-ms", "ms"), ("x-ms-retry-after-ms", "x-ms")):
        ms = response.header(name)
        if ms is not None and ms.strip().isdigit():
            return {key: int(ms.strip())}
    return None


def _date_delay(value: str, response: Response) -> Any:
    """An HTTP-date Retry-After as a delay from the answer's own Date (the recording's day is gone)."""
    when = parsedate_to_datetime(value)
    date = response.header("Date")
    if date:
        delta = (when - parsedate_to_datetime(date)).total_seconds()
        if delta >= 0:
            return {"date": f"{delta:g}s"}
    return {"raw": value}


class _Writer:
    def __init__(
        self, exchanges: list[Recorded], operations: list[LearnedOperation], output: Path, timing: Timing
    ) -> None:
        self.exchanges = exchanges
        self.interactions = [e.interaction for e in exchanges]
        self.operations = operations
        self.output = output
        self.timing = timing
        self.files: dict[str, bytes] = {}
        self.origins = tuple(
            dict.fromkeys(
                origin_of(i.request.url) for i in self.interactions if urlsplit(i.request.url).netloc
            )
        )
        self.lines: list[str] = []
        self.query_names: dict[tuple[str, str], dict[str, None]] = {}
        """Query parameter names seen per (method, path), in order."""
        for ia in self.interactions:
            names = self.query_names.setdefault((ia.request.method, ia.request.path), {})
            names.update((name, None) for name, _ in ia.request.query)

    # -- whole file

    def render(self, recordings: Sequence[Recording], schema: str) -> Learned:
        sources = ", ".join(r.path.name for r in recordings)
        op_used: set[int] = set()
        for op in self.operations:
            op_used.add(op.start)
            op_used.update(p.index for p in op.polls)
            op_used.update(op.after_terminal)
            if op.resource_get is not None:
                op_used.update(self._resource_gets(op))
        entries = self._operation_entries()
        route_groups = self._route_groups(op_used)
        L = self.lines
        L.append(f"# yaml-language-server: $schema={schema}")
        L.append(f"# Learned by `replay-proxy learn` from {sources}: {len(self.interactions)} exchanges,")
        L.append(f"# {len(entries)} operation{'s' if len(entries) != 1 else ''} and "
                 f"{len(route_groups)} route{'s' if len(route_groups) != 1 else ''}. Edit freely: "
                 "docs/scenarios.md describes every key.")  # fmt: skip
        L.append(f"name: {_dump(self.output.stem)}")
        L.append(f"description: {_dump('Learned from ' + sources + '.')}")
        if route_groups:
            L.append("")
            L.append(
                "# What the recording answered outside its long-running operations, first rule that matches"
            )
            L.append("# answers (routes come before operations).")
            L.append("routes:")
            for group in route_groups:
                self._route(group)
        if entries:
            L.append("")
            L.append(
                "# Each start request below creates a new operation with its own id: many clients can run"
            )
            L.append("# at once. The steps are the progression the recording saw.")
            L.append("operations:")
            used_names: set[str] = set()
            for entry in entries:
                self._operation(entry, used_names)
        text = "\n".join(L) + "\n"
        return Learned(text, self.files, len(entries), len(route_groups))

    def _resource_gets(self, op: LearnedOperation) -> list[int]:
        """Every GET of the created resource from the first one on (the resource route answers them)."""
        assert op.resource_url is not None and op.resource_get is not None
        first = op.start + 1 if op.final_via == "start-url" else op.resource_get
        parts = urlsplit(op.resource_url)
        origin = origin_of(op.resource_url) if parts.netloc else None
        return [
            j
            for j in range(first, len(self.interactions))
            if self.interactions[j].request.method == "GET"
            and self.interactions[j].request.path == (parts.path or "/")
            and (origin is None or origin_of(self.interactions[j].request.url) == origin)
        ]

    # -- routes

    def _route_groups(self, used: set[int]) -> list[list[int]]:
        groups: dict[tuple[Any, ...], list[int]] = {}
        for j, ia in enumerate(self.interactions):
            if j in used:
                continue
            req = ia.request
            key = (req.method, origin_of(req.url), req.path, tuple(sorted(req.query)))
            groups.setdefault(key, []).append(j)
        return list(groups.values())

    def _route(self, group: list[int]) -> None:
        L = self.lines
        first = self.interactions[group[0]].request
        match: dict[str, Any] = {"method": first.method, "path": first.path}
        query = self._query_conditions(first, group)
        if query:
            match["query"] = query
        responses = [self._response(self.interactions[j], _Templater(self.origins)) for j in group]
        steps: list[dict[str, Any]] = []
        for r in responses:
            if steps and {k: v for k, v in steps[-1].items() if k != "times"} == r:
                steps[-1]["times"] = steps[-1].get("times", 1) + 1
            else:
                steps.append(dict(r))
        where = ", ".join(self.exchanges[j].where for j in group[:3]) + (" ..." if len(group) > 3 else "")
        L.append(f"  - name: {_dump(first.method + ' ' + first.path)}   # {where}")
        L.append(f"    match: {_dump(match)}" if _small(match) else "    match:")
        if not _small(match):
            L.extend(_block(match, 6))
        if len(steps) == 1:
            step = steps[0]
            step.pop("times", None)
            self._response_lines("respond", step, 4)
        else:
            n = len(group)
            L.append(
                f"    # {n} requests alike (method, path, query): answered in recorded order as replay does; "
                "the last answer repeats"
            )
            L.append("    sequence:")
            for step in steps:
                self._list_item(step, 6)

    def _query_conditions(self, req: Request, group: list[int]) -> dict[str, Any]:
        """Each recorded parameter exactly (a redacted one: present), and ``null`` for names other
        requests to the same method and path carry, so this route does not answer them."""
        out: dict[str, Any] = {}
        for name, value in req.query:
            out.setdefault(name, {"present": True} if value.startswith("<REDACTED") else value)
        for name in self.query_names.get((req.method, req.path), ()):
            out.setdefault(name, None)
        return out

    def _response(self, ia: Interaction, t: _Templater, *, keep_status: bool = True) -> dict[str, Any]:
        """A recorded response as a scenario response: status, headers, body, retry-after."""
        resp = ia.response
        out: dict[str, Any] = {}
        if keep_status or resp.status != 200:
            out["status"] = resp.status
        headers = {k: t.text(v, k) for k, v in resp.headers if k.lower() not in NOISE_HEADERS}
        if headers:
            out["headers"] = headers
        retry = _retry_after(resp)
        if retry is not None:
            out["retry-after"] = retry
        out.update(self._body(ia, t))
        return out

    def _body(self, ia: Interaction, t: _Templater) -> dict[str, Any]:
        resp = ia.response
        body = resp.body
        if not body or ia.request.method == "HEAD":
            return {}
        ctype = resp.header("Content-Type") or ""
        out: dict[str, Any] = {}
        data = json_document(body)
        if data is not None and len(body) <= INLINE_LIMIT:
            out["json"] = t.data(data)
            if (ctype and ctype.split(";")[0].strip().lower() != "application/json") or ";" in ctype:
                out["content-type"] = ctype
            return out
        try:
            text = body.decode("utf-8")
            textual = text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text)
        except UnicodeDecodeError:
            textual = False
        if textual and len(body) <= INLINE_LIMIT and data is None:
            out["text"] = t.text(body.decode("utf-8"))
            out["content-type"] = ctype or "text/plain; charset=utf-8"
            return out
        name = self._file_name(ia, ctype)
        self.files[name] = body
        out["file"] = name
        if ctype:
            out["content-type"] = ctype
        return out

    def _file_name(self, ia: Interaction, ctype: str) -> str:
        last = [s for s in ia.request.path.split("/") if s][-1:] or ["root"]
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", last[0])[:40] or "body"
        ext = ".json" if "json" in ctype else ".txt" if ctype.startswith("text/") else ".bin"
        if stem.endswith(ext):
            ext = ""
        folder = f"{self.output.stem}.files"
        n = len(self.files) + 1
        return f"{folder}/{n:03d}-{ia.request.method.lower()}-{stem}{ext}"

    def _response_lines(self, key: str, response: dict[str, Any], indent: int) -> None:
        pad = " " * indent
        if _small(response):
            self.lines.append(f"{pad}{key}: {_dump(response)}")
        else:
            self.lines.append(f"{pad}{key}:")
            self.lines.extend(_block(response, indent + 2))

    def _list_item(self, item: dict[str, Any], indent: int, comment: str = "") -> None:
        pad = " " * indent
        tail = f"   # {comment}" if comment else ""
        if _small(item):
            self.lines.append(f"{pad}- {_dump(item)}{tail}")
            return
        block = _block(item, indent + 2)
        block[0] = pad + "- " + block[0][indent + 2 :]
        if tail:
            block[0] += tail
        self.lines.extend(block)

    # -- operations

    def _operation_entries(self) -> list[list[LearnedOperation]]:
        """Operations with the same start, status URL shape and progression, as one entry each."""
        entries: dict[tuple[Any, ...], list[LearnedOperation]] = {}
        for op in self.operations:
            start = self.interactions[op.start].request
            key = (
                start.method,
                self._generalized(start.path)[0],
                op.style,
                op.header,
                self._status_path(op),
                tuple(self._signature(op)),
            )
            entries.setdefault(key, []).append(op)
        return list(entries.values())

    def _signature(self, op: LearnedOperation) -> list[tuple[Any, ...]]:
        return [(p.http_status, p.status) for p in op.polls]

    def _generalized(self, path: str) -> tuple[str, dict[str, str]]:
        """``path`` with id-like segments as ``{nameId}`` placeholders, and their recorded values."""
        segments = path.split("/")
        values: dict[str, str] = {}
        out = []
        for n, segment in enumerate(segments):
            if segment and _id_like(segment):
                before = segments[n - 1] if n else "id"
                base = re.sub(r"[^A-Za-z0-9_]", "", before.rstrip("s")) or "id"
                name = base + "Id" if not base.endswith("Id") else base
                while name in values or name in ("operationId", "resourceId"):
                    name += "_"
                values[name] = segment
                out.append("{" + name + "}")
            else:
                out.append(segment)
        return "/".join(out), values

    def _with_params(self, path: str, params: dict[str, str], own: str, own_name: str) -> str:
        segments = path.split("/")
        out = []
        for segment in segments:
            if segment == own:
                out.append("{" + own_name + "}")
                continue
            name = next((k for k, v in params.items() if v == segment), None)
            out.append("{" + name + "}" if name else segment)
        return "/".join(out)

    def _status_path(self, op: LearnedOperation) -> str:
        start = self.interactions[op.start].request
        _, params = self._generalized(start.path)
        parts = urlsplit(op.status_target)
        path = self._with_params(parts.path or "/", params, op.operation_id, "operationId")
        return path + (f"?{parts.query}" if parts.query else "")

    def _resource_path(self, op: LearnedOperation) -> tuple[str, str] | None:
        if op.resource_url is None:
            return None
        start = self.interactions[op.start].request
        _, params = self._generalized(start.path)
        path = urlsplit(op.resource_url).path or "/"
        resource_id = _operation_id(path)
        return self._with_params(path, params, resource_id, "resourceId"), resource_id

    def _operation(self, group: list[LearnedOperation], used_names: set[str]) -> None:
        L = self.lines
        op = group[0]
        start_ia = self.interactions[op.start]
        start = start_ia.request
        path, params = self._generalized(start.path)
        name = next((s for s in reversed(path.split("/")) if s and "{" not in s), "operation")
        if name in used_names:
            name = f"{start.method.lower()}-{name}"
        base = name
        k = 2
        while name in used_names:
            name, k = f"{base}-{k}", k + 1
        used_names.add(name)
        resource = self._resource_path(op)
        t = _Templater(
            self.origins,
            op_id=op.operation_id,
            status_url=op.status_url if "://" in op.status_url else None,
            resource_url=op.resource_url,
            resource_id=resource[1] if resource else None,
            start_values={
                **{v: _query_template(k) for k, v in start.query if len(v) >= 8 and not v.startswith("<")},
                **{v: f"{{{{ operation.start.params.{k} }}}}" for k, v in params.items()},
            },
        )
        where = ", ".join(self.exchanges[o.start].where for o in group[:3])
        many = f"; {len(group)} recorded operations of this shape" if len(group) > 1 else ""
        L.append(f"  - name: {_dump(name)}   # started at {where}{many}")
        L.append(f"    style: {op.style}")
        match = self._start_match(op, group, path)
        L.append(f"    start: {_dump(match)}")
        header = [op.header, *op.also_headers] if op.header else "none"
        how = (
            f"in {op.header}"
            if op.header
            else "in the body's urls.get"
            if op.style != "aip-151"
            else "as the body's name (AIP-151: the client builds the URL)"
        )
        form = "absolute" if "://" in op.status_url else "relative"
        L.append(f"    header: {_dump(header if isinstance(header, str) or len(header) > 1 else header[0])}"
                 f"   # the recording gave the status URL {how}, {form}")  # fmt: skip
        if op.header is not None:
            L.append(f"    url-form: {form}")
        L.append(f"    status-path: {_dump(self._status_path(op))}")
        if "://" in op.status_url and origin_of(op.status_target) != origin_of(start.url):
            L.append(
                f"    # the recording polled another host ({origin_of(op.status_target)}); "
                "play serves it on its own"
            )
        accepted = self._accepted(op, t)
        if accepted:
            self._response_lines("accepted", accepted, 4)
        steps, default_retry = self._steps(op, t)
        L.append(
            f"    retry-after: {_dump(default_retry)}   # on every non-terminal answer unless a step says"
        )
        L.append("    # Edit the story: a step `- respond: {status: 503, retry-after: 1}` answers one poll")
        L.append("    # with a fault; `for: 10m` instead of `times` makes a stage last that long (with")
        L.append("    # `clock: virtual` it plays as fast as the client polls).")
        L.append("    steps:")
        for step, comment in steps:
            self._list_item(step, 6, comment)
        if op.terminal is None:
            L.append("    # The recording ended before the operation did: as learned it never finishes.")
            L.append("    # Add a terminal step (status: Succeeded, or Failed with an error:) to end it.")
        if op.style == "location" and op.terminal is not None and self._result_at_status_url(op):
            last = self.interactions[op.polls[op.terminal].index]
            self._response_lines("resource", self._response(last, t, keep_status=False), 4)
            L.append("    # the result, served at the status URL when the operation succeeds (200)")
        elif op.final_via == "start-url" and op.resource_get is not None:
            answer = self._response(self.interactions[op.resource_get], t, keep_status=False)
            self._response_lines("resource", answer, 4)
            L.append("    # the answer to GET of the start's own URL after success (ARM's final GET)")
        elif resource is not None:
            L.append(f"    resource-path: {_dump(resource[0])}")
            if op.resource_get is not None:
                answer = self._response(self.interactions[op.resource_get], t, keep_status=False)
                self._response_lines("resource", answer, 4)
            else:
                L.append(
                    "    # the recording never fetched the created resource: play answers {id, operationId}"
                )
        if len(group) > 1:
            ids = ", ".join(o.operation_id[:12] for o in group[:4])
            L.append(f"    # learned from the first; the others ({ids}) went the same way")

    def _result_at_status_url(self, op: LearnedOperation) -> bool:
        """``location``: the success answered 200 with a body (the result), not 204 (a DELETE's)."""
        if op.terminal is None:
            return False
        last = self.interactions[op.polls[op.terminal].index]
        start = self.interactions[op.start].request
        return (
            bool(op.polls[op.terminal].status == "Succeeded")
            and start.method != "DELETE"
            and last.response.status == 200
            and bool(last.response.body)
        )

    def _start_match(self, op: LearnedOperation, group: list[LearnedOperation], path: str) -> dict[str, Any]:
        start = self.interactions[op.start].request
        match: dict[str, Any] = {"method": start.method, "path": path}
        starts = [self.interactions[o.start].request for o in group]
        mine = {o.start for o in group}
        others = [
            self.interactions[o.start].request
            for o in self.operations
            if o.start not in mine
            and self.interactions[o.start].request.method == start.method
            and self._generalized(self.interactions[o.start].request.path)[0] == path
        ]
        query: dict[str, Any] = {}
        for name, value in start.query:
            values = {dict(s.query).get(name) for s in starts}
            other_values = {dict(s.query).get(name) for s in others}
            if value.startswith("<REDACTED") or (_id_like(value) and not (other_values - {None})):
                query[name] = {"present": True}
            elif len(values) == 1:
                query[name] = value
            else:
                query[name] = {"present": True}
        if query:
            match["query"] = query
        return match

    def _accepted(self, op: LearnedOperation, t: _Templater) -> dict[str, Any]:
        ia = self.interactions[op.start]
        resp = ia.response
        out: dict[str, Any] = {}
        default = DIALECTS[op.style].start_code(ia.request.method)
        if resp.status != default:
            out["status"] = resp.status
        retry = _retry_after(resp)
        if retry is not None:
            out["retry-after"] = retry
        skip = {h.lower() for h in (op.header, *op.also_headers) if h}
        headers = {
            k: self._result_location(op, ia, k, v) or t.text(v, k)
            for k, v in resp.headers
            if k.lower() not in NOISE_HEADERS and k.lower() not in skip
        }
        if headers:
            out["headers"] = headers
        body = self._body(ia, t)
        if op.style == "aip-151" and body.get("json") == {
            "name": f"operations/{op.operation_id}",
            "done": False,
        }:
            body = {}
        if op.style == "aip-151" and "json" in body and isinstance(body["json"], dict):
            body["json"]["name"] = t.text(op.status_url)
        out.update(body)
        return out

    def _result_location(self, op: LearnedOperation, ia: Interaction, name: str, value: str) -> str | None:
        """A start's Location (beside its status header) where the result is fetched: the operation's
        resource URL, so each operation gives its own."""
        if name.lower() != "location" or op.resource_url is None or op.final_via != "resource":
            return None
        if urljoin(ia.request.url, value.strip()) != op.resource_url:
            return None
        return "{{ operation.resource_url }}"

    def _steps(self, op: LearnedOperation, t: _Templater) -> tuple[list[tuple[dict[str, Any], str]], Any]:
        """The progression as steps (runs of equal answers as ``times``), and the operation's retry-after."""
        runs: list[list[LearnedPoll]] = []
        for poll in op.polls:
            resp = self.interactions[poll.index].response
            if runs and self._same_run(runs[-1][0], poll, resp):
                runs[-1].append(poll)
            else:
                runs.append([poll])
        running = [
            _dump(_retry_after(self.interactions[r[0].index].response))
            for r in runs
            if r[0].status is not None and not _is_terminal(r[0])
        ]
        common = Counter(running).most_common(1)
        default = yaml.safe_load(common[0][0]) if common else None
        steps: list[tuple[dict[str, Any], str]] = []
        times = [self.exchanges[op.start].at, *(self.exchanges[p.index].at for p in op.polls)]
        for n, run in enumerate(runs):
            step = self._step(op, run, t, default)
            comment = ""
            first = run[0]
            if first.status is None:
                comment = "the recording's answer to this poll (the status did not change)"
            elif _is_terminal(first):
                comment = self._terminal_comment(first)
            seconds = self._duration(op, run, runs[n + 1] if n + 1 < len(runs) else None, times)
            if seconds is not None and not _is_terminal(first) and first.status is not None:
                if self.timing == "time":
                    step.pop("times", None)
                    step["for"] = f"{seconds:g}s"
                    comment = f"{len(run)} poll{'s' if len(run) > 1 else ''} in the recording"
                elif seconds > 0:
                    comment = f"{seconds:g} s in the recording"
            steps.append((step, comment))
        return steps, default

    def _duration(
        self,
        op: LearnedOperation,
        run: list[LearnedPoll],
        following: list[LearnedPoll] | None,
        times: list[float | None],
    ) -> float | None:
        if following is None:
            return None
        began = (
            self.exchanges[op.start].at
            if run is not None and run[0] is op.polls[0]
            else self.exchanges[run[0].index].at
        )
        ended = self.exchanges[following[0].index].at
        if began is None or ended is None:
            return None
        return round(max(0.0, ended - began), 1)

    def _terminal_comment(self, poll: LearnedPoll) -> str:
        status = (poll.status or "").lower()
        if status == "succeeded":
            return "the terminal step: change to Failed (with an error:) to test the error path"
        if status.startswith("fail"):
            return (
                "the terminal step: the service's error as recorded; change to Succeeded for the happy path"
            )
        return "the terminal step: change to Succeeded or Failed to test another outcome"

    def _same_run(self, first: LearnedPoll, poll: LearnedPoll, resp: Response) -> bool:
        a = self.interactions[first.index].response
        return (
            first.status == poll.status
            and first.http_status == poll.http_status
            and _retry_after(a) == _retry_after(resp)
            and (first.status is not None or a.body == resp.body)
        )

    def _step(
        self, op: LearnedOperation, run: list[LearnedPoll], t: _Templater, default: Any
    ) -> dict[str, Any]:
        first = run[0]
        ia = self.interactions[first.index]
        resp = ia.response
        step: dict[str, Any] = {}
        if first.status is None:  # a 503, a 429: answered as recorded, the status unchanged
            step["respond"] = self._response(ia, t)
            if len(run) > 1:
                step["times"] = len(run)
            return step
        step["status"] = first.status
        if len(run) > 1:
            step["times"] = len(run)
        retry = _retry_after(resp)
        terminal = _is_terminal(first)
        if (terminal and retry is not None) or (not terminal and retry != default):
            step["retry-after"] = retry
        success = first.status.lower() == "succeeded"
        failure = first.status.lower().startswith("fail")
        with_resource = success and op.resource_url is not None
        native_code = 201 if with_resource and op.style == "creator-v1" else 200
        body = json_document(resp.body)
        if op.style == "location":
            native_code, body = self._location_native(op, first, terminal, body)
        if resp.status != native_code:
            step["http-status"] = resp.status
        extra, error = self._extra_fields(op, first, body, with_resource, failure, t)
        if error is not None:
            step["error"] = error
        if extra:
            step["json"] = extra
        headers = {
            k: t.text(v, k)
            for k, v in resp.headers
            if k in LRO_HEADERS or k.lower() in {h.lower() for h in LRO_HEADERS}
        }
        native = {"location"} if with_resource and op.style == "creator-v1" else set()
        if with_resource and op.style == "creator-v2":
            native.add("resource-location")
        headers = {k: v for k, v in headers.items() if k.lower() not in native}
        if headers:
            step["headers"] = headers
        return step

    def _location_native(
        self, op: LearnedOperation, poll: LearnedPoll, terminal: bool, body: Any
    ) -> tuple[int, Any]:
        """``location``: the code the style answers this poll with, and the recorded body the step must
        add (None: the style's answer is the recording's: no body while running, the operation's
        ``resource`` answer or 204 at the end)."""
        if not terminal:
            return 202, body
        if poll.status == "Succeeded" and self._result_at_status_url(op):
            return 200, None
        if poll.status == "Succeeded":
            return 204, body
        return DIALECTS["location"].failure_code, body

    def _extra_fields(
        self,
        op: LearnedOperation,
        poll: LearnedPoll,
        body: Any,
        with_resource: bool,
        failure: bool,
        t: _Templater,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The body fields the style does not write as recorded (null: the style's field the recording
        lacked), and the error for the step's ``error``."""
        style = op.style
        if style == "location":  # no status body: the recorded one, if any, as it was
            recorded_body = body if isinstance(body, dict) else {}
            return {k: t.data(v, k) for k, v in recorded_body.items()}, None
        if style == "aip-151":
            native: dict[str, Any] = {"name": f"operations/{op.operation_id}", "done": _is_terminal(poll),
                                      "metadata": {"status": poll.status}}  # fmt: skip
        elif style == "creator-v1":
            native = {"operationId": op.operation_id, "createdDateTime": _SEED_DATE, "status": poll.status}
            if with_resource:
                native["resourceLocation"] = op.resource_url
        elif style == "arm":
            native = {"id": urlsplit(op.status_target).path, "name": op.operation_id, "status": poll.status,
                      "startTime": _ISO}  # fmt: skip
            if _is_terminal(poll):
                native["endTime"] = _ISO
        else:
            native = {"operationId": op.operation_id, "created": _ISO, "status": poll.status}
        recorded = body if isinstance(body, dict) else {}
        extra: dict[str, Any] = {}
        error: dict[str, Any] | None = None
        for key, want in native.items():
            if key not in recorded:
                extra[key] = None
            elif isinstance(want, re.Pattern):
                if not (isinstance(recorded[key], str) and want.match(recorded[key])):
                    extra[key] = t.data(recorded[key], key)
            elif key == "resourceLocation":
                if urljoin(self.interactions[poll.index].request.url, str(recorded[key])) != want:
                    extra[key] = t.data(recorded[key], key)
            elif recorded[key] != want:
                extra[key] = t.data(recorded[key], key)
        for key, value in recorded.items():
            if key in native:
                continue
            if key == "error" and isinstance(value, dict) and "code" in value and style != "aip-151":
                error = t.data(value)
                continue
            extra[key] = t.data(value, key)
        if style == "aip-151" and "error" in recorded and isinstance(recorded["error"], dict):
            extra["error"] = t.data(recorded["error"])
        if failure and error is None and "error" not in recorded and style != "aip-151":
            extra["error"] = None
        if (
            style == "aip-151"
            and poll.status
            and poll.status.lower() == "succeeded"
            and "response" not in recorded
        ):
            extra["response"] = None
        return extra, error


def write(learned: Learned, output: Path) -> None:
    """Write the scenario and its body files; LearnError when they cannot be written."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        for name, data in learned.files.items():
            target = output.parent / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        output.write_text(learned.text, encoding="utf-8")
    except OSError as e:
        raise LearnError(f"{output}: cannot write the scenario: {e.strerror or e}") from None


def learn_main(sources: Sequence[Path], output: Path, *, timing: Timing = "polls") -> int:
    """``replay-proxy learn``: read, learn, check, write; prints what it learned. 0, or 2 (raised)."""
    import sys
    import tempfile

    from proxy.recordings import read_recordings
    from proxy.scenario.loader import check_scenarios

    recordings = read_recordings(sources)
    learned = learn(recordings, output, timing=timing)
    with tempfile.TemporaryDirectory() as tmp:  # check before writing: a learned file always loads
        probe = Path(tmp) / output.name
        write(learned, probe)
        _, problems = check_scenarios([probe])
    if problems:
        lines = [p.replace(str(probe), str(output)) for file in problems for p in file]
        raise LearnError("the learned scenario does not pass check (a bug in learn):\n" + "\n".join(lines))
    write(learned, output)
    extra = f" and {len(learned.files)} body file(s) in {output.stem}.files/" if learned.files else ""
    print(
        f"learned {output}: {learned.operations} operation(s), {learned.routes} route(s){extra}",
        file=sys.stdout,
        flush=True,
    )
    return 0


__all__ = ["Learned", "LearnedOperation", "LearnedPoll", "find_operations", "learn", "learn_main", "write"]
