"""Response rewrites at serve time: keep clients on the proxy, and make recorded polling fast.

``rewrite_origins`` points absolute upstream URLs (``Location``, ``Operation-Location``, ``resourceLocation``,
``nextLink``...) at the proxy, so a client that follows them stays on it. ``rewrite_retry_after`` shrinks
advertised polling delays so a long recorded operation replays in moments.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from datetime import UTC
from email.utils import parsedate_to_datetime

from proxy.errors import ConfigError
from proxy.model import Headers, Response, header_value, origin_of

URL_HEADERS: tuple[str, ...] = (
    "location",
    "operation-location",
    "azure-asyncoperation",
    "content-location",
    "resource-location",
)
"""Response headers whose value is a URL a client may follow."""

MS_HEADERS: tuple[str, ...] = ("retry-after-ms", "x-ms-retry-after-ms")
"""Delay headers in milliseconds (Azure)."""

# scheme, "//" or JSON-escaped "\/\/", authority; then the boundary is checked by hand.
_BODY_URL_RE = re.compile(rb"(?i)(https?):(//|\\/\\/)([^/\\?#\"\s]+)")
_HEADER_URL_RE = re.compile(r"(?i)\s*(https?)://([^/?#\s]+)")
_JSON_START = re.compile(rb"\s*[\[{]")
_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*")


def _origins(origins: Iterable[str]) -> frozenset[str]:
    out = set()
    for origin in origins:
        try:
            out.add(origin_of(origin.strip()))
        except ValueError:  # a bad port: cannot be matched anyway
            continue
    return frozenset(out)


def _same_origin(scheme: str, authority: str, origins: frozenset[str]) -> bool:
    try:
        return origin_of(f"{scheme}://{authority}") in origins
    except ValueError:
        return False


def rewrite_origins(response: Response, origins: Iterable[str], proxy_origin: str) -> Response:
    """``response`` with absolute URLs on one of ``origins`` moved to ``proxy_origin``.

    Covers the ``URL_HEADERS`` and, in JSON bodies, every URL in a string (escaped ``\\/`` too). Only the
    origin changes, the rest of the body stays byte-identical; ``https://example.com.evil`` is not
    ``https://example.com``. The same object is returned when nothing changed.
    """
    wanted = _origins(origins)
    target = proxy_origin.strip().rstrip("/")
    if not wanted:
        return response
    headers = _rewrite_header_urls(response.headers, wanted, target)
    body = _rewrite_body_urls(response, wanted, target)
    if headers is response.headers and body is response.body:
        return response
    return response.replace(headers=headers, body=body)


def _rewrite_header_urls(headers: Headers, origins: frozenset[str], target: str) -> Headers:
    changed = False
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if name.lower() in URL_HEADERS:
            m = _HEADER_URL_RE.match(value)
            if m and _same_origin(m[1], m[2], origins):
                value = value[: m.start(1)] + target + value[m.end(2) :]
                changed = True
        out.append((name, value))
    return tuple(out) if changed else headers


def _rewrite_body_urls(response: Response, origins: frozenset[str], target: str) -> bytes:
    body = response.body
    if not body or (b"://" not in body and b":\\/\\/" not in body):
        return body
    ctype = (response.header("content-type") or "").lower()
    if "json" not in ctype and not _JSON_START.match(body):
        return body
    plain = target.encode("utf-8")
    escaped = plain.replace(b"/", b"\\/")
    changed = False

    def sub(m: re.Match[bytes]) -> bytes:
        nonlocal changed
        after = body[m.end() : m.end() + 2]
        if after and not (after[:1] in (b"/", b"?", b"#", b'"') or after in (b"\\/", b'\\"')):
            return m[0]
        try:
            scheme, authority = m[1].decode("ascii"), m[3].decode("utf-8")
        except UnicodeDecodeError:
            return m[0]
        if not _same_origin(scheme, authority, origins):
            return m[0]
        changed = True
        return escaped if m[2] != b"//" else plain

    new = _BODY_URL_RE.sub(sub, body)
    return new if changed else body


def _format_seconds(seconds: float) -> str:
    """``0`` -> "0", ``2.0`` -> "2", ``0.05`` -> "0.05": no trailing zeros."""
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def rewrite_retry_after(response: Response, seconds: float) -> Response:
    """``response`` with its advertised delays (Retry-After, retry-after-ms, x-ms-retry-after-ms) set to
    ``seconds``; only headers already present change, and the same object comes back when none did."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"retry-after must be a finite number of seconds >= 0, not {seconds!r}")
    as_seconds = _format_seconds(seconds)
    as_ms = str(round(seconds * 1000))
    changed = False
    out: list[tuple[str, str]] = []
    for name, value in response.headers:
        lname = name.lower()
        new = value
        if lname == "retry-after":
            new = as_seconds
        elif lname in MS_HEADERS:
            new = as_ms
        changed = changed or new != value
        out.append((name, new))
    return response.replace(headers=tuple(out)) if changed else response


def parse_retry_after(headers: Headers, now: float | None = None) -> float | None:
    """Seconds the response asks the client to wait, or None when it does not say (or says junk).

    ``Retry-After`` as seconds or an HTTP-date (time left from ``now``, never negative), else
    ``retry-after-ms`` / ``x-ms-retry-after-ms`` in milliseconds.
    """
    value = header_value(headers, "retry-after")
    if value is not None:
        m = _NUMBER.fullmatch(value)
        if m:
            return float(m[1])
        when = _http_date(value)
        if when is not None:
            return max(0.0, when - (time.time() if now is None else now))
    for name in MS_HEADERS:
        ms = header_value(headers, name)
        if ms is not None:
            m = _NUMBER.fullmatch(ms)
            if m:
                return float(m[1]) / 1000
    return None


def _http_date(value: str) -> float | None:
    """An HTTP-date as a POSIX timestamp, or None."""
    if not any(c.isalpha() for c in value):
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    try:
        if parsed.tzinfo is None:  # "-0000": UTC by RFC 5322
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
