"""Read a recording of any kind into plain interactions: a vcrpy cassette, a HAR file, a mitmproxy flow dump.

``replay-proxy learn`` reads what users already have. Cassettes go through ``proxy.cassette`` (everything
vcrpy loads); HAR files and flow dumps through mitmproxy's own readers (``mitmproxy.io.FlowReader`` for
dumps, ``mitmproxy.io.har.request_to_flow`` for each HAR entry, through ``proxy.har.read_entry`` as
``--cassette x.har`` reads it: both exist in mitmproxy 11 and 12), so no format is parsed by hand. HAR
files and flows carry when each request was sent; cassettes do not, so their times come from the
responses' ``Date`` headers (whole seconds) when every response has one. Anything else is refused with a
``RecordingError`` that names the file and, when known, the line.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from proxy.errors import ReplayProxyError
from proxy.model import Interaction, Request, Response

Kind = Literal["cassette", "har", "flows"]
_TOP_INTERACTIONS = re.compile(r"^(interactions|['\"]interactions['\"])\s*:", re.MULTILINE)
"""A YAML cassette's top-level key (checked before the cassette reader, which assumes one)."""
TimeSource = Literal["request", "date-header", "none"]


class RecordingError(ReplayProxyError):
    """A source is not a recording replay-proxy can read; the message says where and what it expected."""


EXPECTED = (
    "expected a vcrpy cassette (YAML or JSON with 'interactions'), a HAR file (JSON with 'log.entries') "
    "or a mitmproxy flow dump (mitmdump -w)"
)


@dataclass(frozen=True, slots=True)
class Recorded:
    """One recorded exchange, where it came from, and when its request was sent (when the source says)."""

    interaction: Interaction
    at: float | None
    """POSIX seconds the request was sent (HAR, flows) or its response's Date header (cassettes)."""
    where: str
    """``file#N``: the source file and the exchange's position in it (from 1)."""


@dataclass(frozen=True, slots=True)
class Recording:
    """The exchanges of one source file, in recorded order."""

    path: Path
    kind: Kind
    times: TimeSource
    exchanges: tuple[Recorded, ...]


def read_recordings(paths: Sequence[Path]) -> list[Recording]:
    """Every source in ``paths``, read; RecordingError (or CassetteError) for the first that is not one."""
    return [read_recording(Path(p)) for p in paths]


def read_recording(path: Path) -> Recording:
    """One source: a cassette, a HAR file or a flow dump, told apart by their first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise RecordingError(f"{path}: no such file") from None
    except OSError as e:
        raise RecordingError(f"{path}: cannot be read: {e.strerror or e}") from None
    if not head.strip():
        raise RecordingError(f"{path}:1:1: the file is empty; {EXPECTED}")
    stripped = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if stripped[:1].isdigit() and b":" in stripped[:12]:
        return _read_flows(path)
    if stripped.startswith(b"{"):
        data = _json(path)
        if isinstance(data, dict) and isinstance(data.get("log"), dict):
            return _read_har(path, data)
        if not (isinstance(data, dict) and "interactions" in data):
            raise RecordingError(f"{path}:1:1: JSON without 'interactions' or 'log.entries'; {EXPECTED}")
    return _read_cassette(path)


def _json(path: Path) -> Any:
    text = path.read_bytes().decode("utf-8", errors="replace").removeprefix("\ufeff")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordingError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}; {EXPECTED}") from None


def _read_cassette(path: Path) -> Recording:
    from proxy import cassette

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecordingError(f"{path}: byte {e.start}: not UTF-8 text; {EXPECTED}") from None
    if not cassette.is_json(path) and not _TOP_INTERACTIONS.search(text):
        raise RecordingError(f"{path}:1:1: no 'interactions' at the top level; {EXPECTED}")
    del text  # cassette.read parses it (fast, with its own located errors)
    interactions = cassette.read(path).interactions
    times = [_date_header(i.response) for i in interactions]
    complete = bool(times) and all(t is not None for t in times)
    exchanges = tuple(
        Recorded(i, t if complete else None, f"{path.name}#{n}")
        for n, (i, t) in enumerate(zip(interactions, times, strict=True), 1)
    )
    return Recording(path, "cassette", "date-header" if complete else "none", exchanges)


def _date_header(response: Response) -> float | None:
    value = response.header("Date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _read_har(path: Path, data: dict[str, Any]) -> Recording:
    from proxy.har import HarEntryError, read_entry

    entries = data["log"].get("entries")
    if not isinstance(entries, list):
        raise RecordingError(f"{path}: log.entries is not a list; {EXPECTED}")
    exchanges: list[Recorded] = []
    for n, entry in enumerate(entries, 1):
        try:
            read = read_entry(entry)
        except HarEntryError as e:
            raise RecordingError(
                f"{path}: log.entries[{n - 1}]: not a HAR entry mitmproxy can read ({e})"
            ) from None
        exchanges.append(_from_flow(read.flow, path, n, at=read.started, reason=read.reason))
    return Recording(path, "har", "request", tuple(exchanges))


def _read_flows(path: Path) -> Recording:
    from mitmproxy import exceptions, http
    from mitmproxy.io import FlowReader

    exchanges: list[Recorded] = []
    try:
        with open(path, "rb") as f:
            for flow in FlowReader(f).stream():
                if isinstance(flow, http.HTTPFlow) and flow.response is not None:
                    exchanges.append(_from_flow(flow, path, len(exchanges) + 1, flow.request.timestamp_start))
    except exceptions.FlowReadException as e:
        raise RecordingError(
            f"{path}: after {len(exchanges)} flows: not a mitmproxy flow dump ({e}); {EXPECTED}"
        ) from None
    return Recording(path, "flows", "request", tuple(exchanges))


def _from_flow(flow: Any, path: Path, n: int, at: float | None, reason: str | None = None) -> Recorded:
    """Our Interaction from a mitmproxy HTTPFlow, bodies decoded (as cassettes store them); ``reason``
    when the source says better than the flow (a HAR entry's statusText)."""
    req, resp = flow.request, flow.response
    request = Request(
        method=req.method,
        url=req.pretty_url if req.scheme else req.url,
        headers=tuple((k, v) for k, v in req.headers.items(multi=True)),
        body=req.get_content(strict=False) or b"",
    )
    headers = tuple(
        (k, v) for k, v in resp.headers.items(multi=True) if k.lower() not in ("content-encoding",)
    )
    response = Response(
        status=resp.status_code,
        reason=reason if reason is not None else resp.reason or "",
        headers=headers,
        body=resp.get_content(strict=False) or b"",
    )
    return Recorded(Interaction(request, response), at, f"{path.name}#{n}")
