"""vcrpy-format cassettes: load, canonical dump, atomic save, append-as-you-go writing, ordered playback.

Whatever vcrpy's current release loads loads here, YAML or JSON (``proxy/jsonfile.py``), including the
shapes its stubs write besides the usual one (aiohttp's value bodies and ``body: {}``, the old httpx
format, tornado's header pairs); a response no stub can replay is reported and answered with a
diagnostic, as vcrpy fails only when it plays it. Such items, and top-level keys besides ``version``
and ``interactions``, are written back as they were when a cassette is rewritten.

YAML goes through vcrpy's own serializer (``vcr.serialize`` + ``vcr.serializers.yamlserializer``), so a
cassette we write is byte-identical to one vcrpy writes, and vcrpy / pytest-recording load ours. Files are
written and parsed as streams and ``!!binary`` is encoded in slices, so a 50 MB body is not also held as
a 70 MB text, its bytes and a list of lines. Loading builds the same data as vcrpy's loader and
``deserialize`` without their intermediate objects (``proxy/yamlfast.py``, ``_direct``): a
10,000-interaction cassette loads in under a second instead of several.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Collection, Container, Hashable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import yaml
from vcr.request import Request as VcrRequest
from vcr.serialize import CASSETTE_FORMAT_VERSION, deserialize, serialize
from vcr.serializers import yamlserializer

from . import decompress, har, jsonfile, loading, yamlfast
from .errors import CassetteError, CassetteNotFoundError, ConfigError
from .matching import Matcher, from_vcr_request, to_vcr_request
from .model import Headers, Interaction, Request, Response, header_value, set_header, without_headers

logger = logging.getLogger("proxy")

HEADER = f"version: {CASSETTE_FORMAT_VERSION}\ninteractions:\n"
"""Top of a cassette that is being appended to: later ``- request: ...`` items extend the list."""

_REQUEST_KEYS = frozenset({"method", "uri", "body", "headers"})


# ---------------------------------------------------------------- reading


class _Parsed:
    """A vcrpy "serializer" that hands back data we already parsed and checked (no second parse)."""

    def __init__(self, data: Any) -> None:
        self._data = data

    def deserialize(self, _text: str) -> Any:
        return self._data


def _position(text: str, offset: object, in_bytes: bool) -> str:
    """``line:column`` (1-based) of a character offset into ``text`` (a byte offset of its UTF-8 when
    ``in_bytes``: libyaml counts bytes)."""
    if not isinstance(offset, int) or offset < 0:
        return "1:1"
    before = text[:offset].encode("utf-8")[:offset].decode("utf-8", "ignore") if in_bytes else text[:offset]
    line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
    return f"{line}:{column}"


def _yaml_error(path: Path, e: yaml.YAMLError, text: str = "") -> CassetteError:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        what = e.problem or e.context or "invalid YAML"
        if e.context and e.problem:
            what = f"{e.problem} ({e.context})"
        if mark is not None:
            return CassetteError(f"{path}:{mark.line + 1}:{mark.column + 1}: {what}")
        return CassetteError(f"{path}: {what}")
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML refuses (NUL, other controls)
        code = ord(e.character) if isinstance(e.character, str) and len(e.character) == 1 else e.character
        character = f" (#x{code:04x})" if isinstance(code, int) else ""
        where = _position(text, e.position, in_bytes=not isinstance(e.character, str))
        return CassetteError(f"{path}:{where}: invalid YAML: {e.reason}{character}")
    return CassetteError(f"{path}: invalid YAML: {' '.join(str(e).split())}")


def _shown(value: object) -> str:
    """A short rendering of a value from the file, for messages: never the repr of a whole list or
    mapping, which aliases can make exponentially long (``version: *bomb``), nor of a whole body."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value[:61] if isinstance(value, str | bytes) else value)
    return text if len(text) <= 60 else text[:57] + "..."


DataPath = tuple[str | int, ...]


class _Invalid(CassetteError):
    """Valid YAML that is not a valid cassette; ``at`` is where, as keys and list indices, for a line."""

    def __init__(self, path: Path, at: DataPath, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.at, self.message = path, at, message


_ITEM_COST = 64
"""What one interaction counts in ``_Budget`` besides its texts: less than any interaction's YAML text."""


class _Budget:
    """The texts of a cassette, counted as they would be with every alias written out, must stay within
    twice the file's size (plus 1 MiB): a small file whose aliases repeat a large body or header list in
    thousands of interactions would otherwise be copied that many times in memory."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.left = 2 * size + (1 << 20)

    def spend(self, at: DataPath, amount: int) -> None:
        self.left -= amount
        if self.left < 0:
            raise _Invalid(
                self.path,
                at,
                f"interaction {at[1]}: the cassette is too big once its aliases are expanded (more than "
                "twice the file's size): write the data out instead of repeating large aliases (*name)",
            )


def _size(value: object) -> int:
    return len(value) + 2 if isinstance(value, str | bytes) else 8


def _headers_cost(headers: dict[Any, Any], allow_empty: bool) -> int:
    """What valid ``headers`` spend of the budget, as ``_check_headers`` counts it, or -1 when any of them
    may be invalid: then ``_check_headers`` goes through them one by one, to say what and where."""
    total = 0
    for name, values in headers.items():
        if name.__class__ is not str or values.__class__ is not list or not (values or allow_empty):
            return -1
        total += len(name) + 2
        for v in values:
            if v.__class__ is str or v.__class__ is bytes:
                total += len(v) + 2
            elif v.__class__ is int:
                total += 8
            else:
                return -1
    return total


def _check_headers(
    path: Path, at: DataPath, label: str, headers: Any, allow_empty: bool, budget: _Budget
) -> None:
    """Request headers as vcrpy's ``HeadersDict`` takes them: a mapping (or null) of name to a list of
    values (it keeps the first; an empty list is an error) or to one value."""
    if headers.__class__ is dict:  # the common case at once: valid, within the budget
        cost = _headers_cost(headers, allow_empty)
        if 0 <= cost <= budget.left:
            budget.left -= cost
            return
    if headers is None:
        return
    where = f"interaction {at[1]}: {label}"
    if not isinstance(headers, dict):
        raise _Invalid(path, at, f"{where}: headers must be a mapping of name to list of values")
    for name, values in headers.items():
        here = (*at, name)
        if not isinstance(name, str):
            raise _Invalid(path, at, f"{where}: header name {_shown(name)} is not a string")
        if not isinstance(values, list):
            values = [values]  # one value, as HeadersDict keeps it
        if not values and not allow_empty:
            raise _Invalid(path, here, f"{where}: header {_shown(name)} has no value")
        budget.spend(here, _size(name))
        for i, v in enumerate(values):
            if not _is_header_value(v):
                raise _Invalid(
                    path, (*here, i), f"{where}: header {_shown(name)} has a non-text value {_shown(v)}"
                )
            budget.spend(here, _size(v))


def _is_header_value(v: object) -> bool:
    return isinstance(v, str | bytes) or (isinstance(v, int) and not isinstance(v, bool))


_STRUCTURED = (dict, list, int, float, bool)
"""Request body types vcrpy's aiohttp stub stores as they were given (``json=``, ``data=``): YAML
writes them as a mapping, list or number."""


def _canonical_response(resp: Any, budget: _Budget, at: DataPath) -> bool:
    """Whether ``resp`` has the shape the proxy writes (``status: {code, message}``, headers a mapping
    of name to list of values, ``body: {string}``); then its texts are spent from ``budget`` (which
    raises, at the header that overdraws it, when they are too many)."""
    if resp.__class__ is not dict:
        return False
    status, headers, body = resp.get("status"), resp.get("headers"), resp.get("body")
    if status.__class__ is not dict or headers.__class__ is not dict or body.__class__ is not dict:
        return False
    code, message = status.get("code"), status.get("message")
    if code.__class__ is not int or not 100 <= code <= 999 or message.__class__ is not str:
        return False
    string = body.get("string", _MISSING)
    if not (string is None or string.__class__ is str or string.__class__ is bytes):
        return False
    cost = _headers_cost(headers, True)
    if cost < 0:
        return False
    if cost > budget.left:
        _check_headers(budget.path, (*at, "response", "headers"), "response", headers, True, budget)
    budget.left -= cost + _size(message) + _size(string)
    return True


_MISSING: Any = object()


def _check_wire(path: Path, at: DataPath, resp: dict[str, Any]) -> None:
    """What replay would send that the recording does not hold: a CR/LF in a header value or the reason
    phrase would write other headers (response splitting); a header name that is not a token is no
    header. A real upstream's answer never has them, so the file was edited: refused, located."""
    from .model import fields_are_safe, header_problem, reason_problem

    headers = resp["headers"]
    values = [v for vs in headers.values() for v in vs if v.__class__ is str]
    if len(values) == sum(len(vs) for vs in headers.values()) and fields_are_safe(
        headers, [resp["status"]["message"], *values]
    ):
        return
    problem = reason_problem(resp["status"]["message"])
    if problem is not None:
        raise _Invalid(path, (*at, "response", "status", "message"), f"interaction {at[1]}: {problem}")
    for name, values in resp["headers"].items():
        for i, value in enumerate(values):
            problem = header_problem(name, value if isinstance(value, str | bytes) else "")
            if problem is not None:
                raise _Invalid(path, (*at, "response", "headers", name, i), f"interaction {at[1]}: {problem}")


def _check(path: Path, data: Any, size: int) -> list[int]:
    """Reject what vcrpy refuses to load, naming the file and interaction; ``size`` is the file's, for the
    budget of alias expansion. Returns the indices of interactions whose shape is not the one the proxy
    writes (``_read_odd`` reads them): vcrpy loads any response; only its stubs look at it, when played."""
    if isinstance(data, list):
        raise _Invalid(path, (), "old pre-1.0 vcrpy cassette format (a list); re-record it")
    if not isinstance(data, dict):
        raise _Invalid(path, (), "not a vcrpy cassette (top level must be a mapping)")
    if "interactions" not in data:
        raise _Invalid(path, (), "no 'interactions' key")
    items = data["interactions"]
    if not isinstance(items, list):
        raise _Invalid(path, ("interactions",), "'interactions' must be a list")
    budget = _Budget(path, size)
    odd: list[int] = []
    for i, item in enumerate(items):
        at: DataPath = ("interactions", i)
        where = f"interaction {i}"
        budget.spend(at, _ITEM_COST)
        if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
            raise _Invalid(path, at, f"{where}: needs a 'request' mapping")
        if "response" not in item:
            raise _Invalid(path, at, f"{where}: needs a 'response' mapping")
        req = item["request"]
        if missing := sorted(_REQUEST_KEYS - req.keys()):
            raise _Invalid(path, (*at, "request"), f"{where}: request is missing {', '.join(missing)}")
        if extra := sorted(str(k) for k in req.keys() - _REQUEST_KEYS):
            raise _Invalid(
                path, (*at, "request", extra[0]), f"{where}: request has unknown keys {', '.join(extra)}"
            )
        if not isinstance(req["method"], str) or not isinstance(req["uri"], str):
            bad = "method" if not isinstance(req["method"], str) else "uri"
            raise _Invalid(path, (*at, "request", bad), f"{where}: request method and uri must be strings")
        body = req["body"]
        if isinstance(body, _STRUCTURED):
            odd.append(i)
            body = _structured_body(body)
        budget.spend(at, _size(req["method"]) + _size(req["uri"]) + _size(body))
        _check_headers(path, (*at, "request", "headers"), "request", req["headers"], False, budget)
        if _canonical_response(item["response"], budget, at):
            _check_wire(path, at, item["response"])
        elif not odd or odd[-1] != i:
            odd.append(i)
        if budget.left < 0:
            budget.spend(at, 0)
    return odd


def _structured_body(value: Any) -> bytes:
    """A request body stored as a mapping, list or number, as aiohttp sends ``json=``: ``json.dumps``."""
    return json.dumps(value, default=str).encode("utf-8")


class _Unplayable(Exception):
    """A recorded response no vcrpy stub can replay (vcrpy loads the file, and fails when playing it)."""

    def __init__(self, at: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.at, self.message = at, message


def _header_pairs(headers: Any, budget: _Budget, at: DataPath) -> Headers:
    """Response headers in any shape a vcrpy stub replays: a mapping of name to list of values, with a
    single value for a list (aiohttp's stub), or tornado's list of ``(name, values)`` pairs."""
    if isinstance(headers, dict):
        items: Any = headers.items()
    elif isinstance(headers, list | tuple) and all(
        isinstance(p, list | tuple) and len(p) == 2 for p in headers
    ):
        items = headers
    else:
        raise _Unplayable(("headers",), "response headers must be a mapping of name to list of values")
    out: list[tuple[str, str]] = []
    for name, values in items:
        if not isinstance(name, str):
            raise _Unplayable(("headers",), f"response header name {_shown(name)} is not a string")
        for v in values if isinstance(values, list | tuple) else [values]:
            if not _is_header_value(v):
                raise _Unplayable(("headers", name), f"response header {_shown(name)} has a non-text value")
            budget.spend(at, _size(name) + _size(v))
            out.append((name, _text(v)))
    return tuple(out)


def _reason_for(code: int) -> str:
    """The standard reason phrase: what httpx shows for a recorded response without one."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


def _odd_response(resp: Any, budget: _Budget, at: DataPath, limit: int | None) -> Response:
    """A recorded response in another shape some vcrpy stub replays, as that stub replays it; raises
    ``_Unplayable`` (with where and why) for one no stub can (a status without code or message, no body)."""
    if not isinstance(resp, dict):
        raise _Unplayable((), "response must be a mapping")
    if "status_code" in resp and "status" not in resp:
        # vcrpy's httpx stub before 5.x: status_code, http_version, headers, content (the decoded text).
        # vcrpy's httpx stub replays it through decode_response (encoding header dropped, length fixed).
        code, content = resp["status_code"], resp.get("content")
        if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 999:
            raise _Unplayable(("status_code",), f"response status code {_shown(code)} is not an HTTP status")
        if not isinstance(content, str | bytes):
            raise _Unplayable(("content",), "response content must be text or !!binary")
        headers = _header_pairs(resp.get("headers"), budget, at)
        budget.spend(at, _size(content))
        named: dict[str, list[str]] = {}
        for name, value in headers:
            named.setdefault(name, []).append(value)
        from vcr.filters import decode_response

        body = content.encode("utf-8") if isinstance(content, str) else content
        done = decode_response({"status": {"code": code}, "headers": named, "body": {"string": body}})
        pairs = tuple((str(k), _text(v)) for k, vs in done["headers"].items() for v in vs)
        return Response(code, _reason_for(code), pairs, done["body"]["string"])
    status = resp.get("status")
    if not isinstance(status, dict) or "code" not in status:
        raise _Unplayable(("status",), "response needs status: {code, message}")
    code = status["code"]
    if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 999:
        raise _Unplayable(("status", "code"), f"response status code {_shown(code)} is not an HTTP status")
    if "message" not in status:
        raise _Unplayable(("status",), "response status has no message (vcrpy's stubs need one)")
    message = status["message"]
    if message is None or message == "":
        message = _reason_for(code)  # httpx's stub: the phrase of the code
    elif not isinstance(message, str):
        raise _Unplayable(("status", "message"), "response status message must be text")
    headers = _header_pairs(resp.get("headers"), budget, at)
    stored = resp.get("body")
    if not isinstance(stored, dict):
        raise _Unplayable(("body",), "response body must be a mapping with 'string'")
    string = stored.get("string")  # aiohttp's stub writes body: {} for no body, and replays it empty
    if not isinstance(string, str | bytes | None):
        raise _Unplayable(("body", "string"), "response body string must be text or !!binary")
    budget.spend(at, _size(message) + _size(string))
    raw = b"" if string is None else string.encode("utf-8") if isinstance(string, str) else string
    try:
        headers, raw = _decoded(headers, raw, limit)
    except (decompress.TooLarge, decompress.Invalid) as e:
        encoding = (header_value(headers, "content-encoding") or "").strip()
        raise _BodyError(resp, _body_problem(e, encoding, limit)) from None
    return Response(status=code, reason=message, headers=headers, body=raw)


def _located(error: _Invalid, text: str) -> CassetteError:
    """``error`` at the line and column of the node it is about (found by composing ``text`` into nodes:
    nothing is constructed), or as it is when the document cannot be composed."""
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception:  # it parsed once already; anything odd here only costs the line number
        return error
    if node is None:
        return error
    for key in error.at:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next(
                (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)), None
            )
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            child = node.value[key]
        if child is None:
            break
        node = child
    mark = node.start_mark
    return CassetteError(f"{error.path}:{mark.line + 1}:{mark.column + 1}: {error.message}")


def _text(value: object) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


DECODED_BODY_LIMIT = 100 << 20
"""Bytes a cassette's compressed body may decode to unless told otherwise (the default --max-body-size)."""

_MAGIC = {"gzip": b"\x1f\x8b", "x-gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}
"""How a body in these encodings starts: one that does and still fails to decode is corrupt."""


class _BodyError(Exception):
    """A response body that cannot be decoded from its Content-Encoding; ``response`` is its dict in the
    file's data (to find which interaction, and its line)."""

    def __init__(self, response: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.response, self.message = response, message
        self.index: int | None = None


def _decoded(headers: Headers, body: bytes, limit: int | None) -> tuple[Headers, bytes]:
    """The body decoded when it is still in its Content-Encoding, header dropped and length fixed.

    vcrpy's httpx stub saves the raw compressed bytes with ``Content-Encoding`` (unless
    ``decode_compressed_response``); urllib3 (requests) saves them decoded but keeps the header. The proxy
    serves bodies decoded, so the first shape must be decoded here; the second fails to decode and stays.
    Decoding stops past ``limit`` bytes (a decompression bomb): ``decompress.TooLarge``; a body that has
    the encoding's signature but does not decode raises ``decompress.Invalid``.
    """
    encoding = (header_value(headers, "content-encoding") or "").strip().lower()
    if not body or encoding not in decompress.ENCODINGS:
        return headers, body
    try:
        decoded = decompress.decode(body, encoding, limit)
    except decompress.Invalid:
        magic = _MAGIC.get(encoding)
        if magic is not None and body.startswith(magic):
            raise
        return headers, body  # already decoded
    headers = without_headers(headers, ["content-encoding"])
    if header_value(headers, "content-length") is not None:
        headers = set_header(headers, "Content-Length", str(len(decoded)))
    return headers, decoded


def _body_problem(error: ValueError, encoding: str, limit: int | None) -> str:
    if isinstance(error, decompress.TooLarge) and limit is None:
        return f"response body (Content-Encoding: {encoding}) is too large to decode: {error}"
    if isinstance(error, decompress.TooLarge):
        return (
            f"response body (Content-Encoding: {encoding}) decodes to more than {limit:,} bytes "
            "(--max-body-size): a decompression bomb, or raise --max-body-size"
        )
    return f"response body says Content-Encoding: {encoding} but does not decode: {error}"


def _response_from_dict(d: dict[str, Any], limit: int | None = DECODED_BODY_LIMIT) -> Response:
    headers: Headers = tuple(
        (name, v) if name.__class__ is str and v.__class__ is str else (str(name), _text(v))
        for name, values in d["headers"].items()
        for v in values
    )
    body = d["body"]["string"]
    if isinstance(body, str):
        body = body.encode("utf-8")
    try:
        headers, body = _decoded(headers, body or b"", limit)
    except (decompress.TooLarge, decompress.Invalid) as e:
        encoding = (header_value(headers, "content-encoding") or "").strip()
        raise _BodyError(d, _body_problem(e, encoding, limit)) from None
    return Response(
        status=int(d["status"]["code"]),
        reason=str(d["status"]["message"]),
        headers=headers,
        body=body,
    )


def recording_marker(path: Path) -> Path:
    """The file beside a cassette in vcrpy's layout while new exchanges are appended to it in place:
    if the proxy is killed, it says the file's last item may be torn (see ``_without_torn_tail``)."""
    return path.parent / f".{path.name}.recording"


def _without_torn_tail(text: str, path: Path) -> Any:
    """A cassette in the append layout whose last item was cut by a kill: the items before it, or None.

    Each exchange is appended in one write, but a write can in principle stop part-way when the
    process is killed; such a tail is dropped instead of making the whole recording unreadable.
    """
    if text.startswith(HEADER[: HEADER.index("\n") + 1]):  # ours (other keys may come before the list)
        start = text.find("\ninteractions:\n") + len("\ninteractions:\n")
        if start < len("\ninteractions:\n"):
            return None
    elif text.startswith("interactions:\n") and recording_marker(path).exists():
        start = len("interactions:\n")  # vcrpy's, that a killed proxy was extending in place
    else:
        return None
    cut = len(text)
    for _ in range(2):  # the torn item starts at the last line that begins with "-" (maybe cut itself)
        cut = text.rfind("\n-", 0, cut)
        if cut < start - 1:
            return None
        try:
            return _deserialize(text[: cut + 1])
        except yaml.YAMLError:
            continue
    return None


_VCR_LOADER: Any = getattr(yamlserializer, "_CassetteLoader", None) or getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)  # vcrpy >= 8.2.1 has its safe _CassetteLoader; never an unsafe one


def _deserialize(text: str) -> Any:
    """vcrpy's ``yamlserializer.deserialize(text)``: the same data or error, built by yamlfast if it can."""
    try:
        return yamlfast.load(text, _VCR_LOADER)
    except yamlfast.Unusual:
        return yamlserializer.deserialize(text)


class _Loader(_VCR_LOADER):  # type: ignore[misc]
    """vcrpy's safe YAML loader, decoding ``!!binary`` from the text itself (not from an ASCII copy)."""


def _construct_binary(loader: Any, node: Any) -> bytes:
    # Bad base64 raises here; _parse_streamed then lets vcrpy's loader say where.
    return binascii.a2b_base64(loader.construct_scalar(node))


_Loader.add_constructor("tag:yaml.org,2002:binary", _construct_binary)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise CassetteNotFoundError(f"{path}: cassette not found") from None
    except OSError as e:
        raise CassetteError(f"{path}: cannot read cassette: {e.strerror or e}") from None


def _parse_streamed(path: Path, progress: loading.Loading) -> tuple[Any, list[int], int] | None:
    """The cassette's data parsed straight from the file (no copy of its text: large bodies), the
    indices ``_check`` found odd and the file's size; or None.

    None when it does not parse or is not a cassette: ``load`` then reads the text with vcrpy's own
    loader, to say why or to recover a torn tail.
    """
    try:
        with path.open("rb") as f:
            try:
                counted = cast(BinaryIO, loading.CountingReader(f, progress))
                data = yamlfast.load(counted, _Loader)  # reads the file in pieces
            except yamlfast.Unusual:  # merge keys, old Python tags, ...: PyYAML's own constructor
                f.seek(0)
                data = yaml.load(f, Loader=_Loader)
            size = os.fstat(f.fileno()).st_size
        odd = _check(path, data, size)
    except FileNotFoundError:
        raise CassetteNotFoundError(f"{path}: cassette not found") from None
    except OSError as e:
        raise CassetteError(f"{path}: cannot read cassette: {e.strerror or e}") from None
    except Exception:
        return None
    return data, odd, size


@dataclass(frozen=True, slots=True)
class Loaded:
    """A cassette as read: its interactions, and its top-level keys other than ``version`` and
    ``interactions`` (vcrpy's ``metadata``, anyone's own), which a rewrite of the file keeps."""

    interactions: list[Interaction]
    extra: dict[str, Any]


def is_json(path: Path) -> bool:
    """Whether ``path`` is a cassette in vcrpy's JSON format: by its name (``.json``) when it exists or
    is to be written, else by its first character (``{``)."""
    if Path(path).suffix.lower() == ".json":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return False
    return head.startswith(b"{")


def load(path: Path, max_body_size: int | None = DECODED_BODY_LIMIT) -> list[Interaction]:
    """The interactions of a vcrpy cassette; CassetteNotFoundError when missing or empty."""
    return read(path, max_body_size).interactions


def read(path: Path, max_body_size: int | None = DECODED_BODY_LIMIT) -> Loaded:
    """A vcrpy cassette, YAML or JSON (``is_json``); CassetteNotFoundError when missing or empty.

    Whatever vcrpy loads loads here. A response in a shape no vcrpy stub replays does not make the file
    unreadable (vcrpy loads it too, and fails only when it plays it): it is warned about, with its
    line, and a request it matches is answered with a diagnostic.

    A compressed body may decode to ``max_body_size`` bytes at most (None: no limit); past that, or when
    it does not decode, a CassetteError says which interaction and where.
    """
    path = Path(path)
    if har.is_har(path):  # a HAR file (browsers' devtools, mitmproxy, `--har`) replays like a cassette
        return Loaded(har.read(path), {})
    loading.check_fits(path, _size_of(path))
    with yamlfast.no_gc(), loading.tracking(path, _size_of(path)) as progress:  # no_gc: a million objects
        parsed = _parse_json(path) if is_json(path) else None
        if parsed is None:
            parsed = _parse_streamed(path, progress)
        if parsed is None:
            parsed = _parse_text(path)
        data, odd, size = parsed
        items = data["interactions"]
        progress.stage = f"building {len(items):,} interactions"
        raws = {i: copy.deepcopy(items[i]) for i in odd}  # before vcrpy's deserialize changes them
        try:
            try:
                out = _direct(items, raws, max_body_size)
            except _BodyError:
                raise
            except Exception:  # an unusual body, or something vcrpy refuses: its own way says what
                out = _through_vcrpy(path, data, raws, max_body_size)
            torn = bool(raws) and _read_odd(path, out, raws, size, max_body_size)
        except _BodyError as e:
            index = e.index
            if index is None:
                index = next((i for i, item in enumerate(items) if item["response"] is e.response), 0)
            error = _Invalid(path, ("interactions", index, "response", "body"), f"interaction {index}: {e}")
            del data, items, parsed
            text = _composable(path)
            raise (_located(error, text) if text is not None else error) from None
        if torn:
            out.pop()
            logger.warning("%s: ignored an incomplete last exchange (the recording proxy was killed)", path)
        extra = {k: v for k, v in data.items() if k not in ("version", "interactions")}
        del data, items, parsed  # before the collector resumes: it would walk all of it once more
    return Loaded(out, extra)


def _read_odd(path: Path, out: list[Interaction], raws: dict[int, Any], size: int, limit: int | None) -> bool:
    """Give each interaction in ``raws`` (index: the item as the file held it) its response as a vcrpy
    stub replays it, or a diagnostic answer when none can, and keep the item for rewriting.

    True when the last interaction has an odd response in a file in the recording layout (``version: 1``
    first, which vcrpy never writes; the proxy writes odd shapes only before new exchanges): an exchange
    cut short by a kill, for the caller to drop.
    """
    from .model import headers_problem, reason_problem

    last = len(out) - 1
    if (
        last in raws
        and not _canonical_response(raws[last]["response"], _Budget(path, size), ("interactions", last))
        and _in_append_layout(path)
    ):
        del raws[last]
        torn = True
    else:
        torn = False
    budget = _Budget(path, size)
    problems: list[tuple[int, DataPath, str]] = []
    for i, raw in raws.items():
        at: DataPath = ("interactions", i)
        try:
            if _canonical_response(raw["response"], _Budget(path, size), at):
                response = _response_from_dict(raw["response"], limit)
            else:
                response = _odd_response(raw["response"], budget, at, limit)
                unsafe = headers_problem(response.headers) or reason_problem(response.reason)
                if unsafe is not None:  # what a canonical response is refused for at load (_check_wire)
                    raise _Unplayable((), unsafe)
        except _Unplayable as u:
            problems.append((i, (*at, "response", *u.at), u.message))
            response = _PENDING
        except _BodyError as e:
            e.index = i
            raise
        out[i] = Interaction(out[i].request, response, raw)
    text = _composable(path) if problems else None
    for i, at, message in problems:
        error = _Invalid(path, at, f"interaction {i} cannot be replayed (vcrpy could not either): {message}")
        where = str(_located(error, text) if text is not None else error)
        logger.warning("%s; a request it matches is answered with status 599", where)
        out[i] = Interaction(out[i].request, _unplayable(where), out[i].raw)
    return torn


def _in_append_layout(path: Path) -> bool:
    """Whether ``path`` is in the recording layout (``version: 1`` first, which vcrpy never writes, or
    vcrpy's that a proxy was extending in place: ``recording_marker``) and its last item is in the block
    style the proxy writes (``- request:`` alone on its line)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(HEADER))
            ours = head.startswith(HEADER[: HEADER.index("\n") + 1].encode())
            if not ours and not (head.startswith(b"interactions:\n") and recording_marker(path).exists()):
                return False
            end = f.seek(0, os.SEEK_END)
            chunk = 1 << 16
            tail = b""
            while end > 0:  # back to the start of the last item, a chunk at a time
                start = max(0, end - chunk)
                f.seek(start)
                tail = f.read(end - start) + tail[:16]
                at = tail.rfind(b"\n- ")
                if at >= 0:
                    return tail[at:].startswith(b"\n- request:\n")
                end = start
    except OSError:
        pass
    return False


def is_unplayable(response: Response) -> bool:
    """Whether ``response`` is the diagnostic standing in for a recorded one no vcrpy stub replays."""
    return response.status == 599 and response.header("X-Replay-Proxy") == "unplayable"


def _unplayable(why: str) -> Response:
    from proxy.diagnostic import unplayable_response  # diagnostic imports router, which imports us

    return unplayable_response(why)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _composable(path: Path) -> str | None:
    """The file's text as YAML can compose it, to find lines: JSON's surrogate escapes (``\\ud83d``,
    which YAML refuses) replaced by escapes of the same length."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return _SURROGATE_ESCAPE.sub(r"\\u0020", text) if "\\u" in text else text


def _request_from_dict(d: dict[str, Any]) -> Request:
    """What vcrpy's ``Request._from_dict`` then ``from_vcr_request`` make of a checked request, for a body
    that is null, text, bytes or a ``_STRUCTURED`` value (others raise ``TypeError``: they go through
    vcrpy).

    vcrpy's ``HeadersDict`` keeps the first value of each header's list (or a single value), one entry
    per name ignoring case: the first spelling, the last value. vcrpy parses the URI: one it refuses
    raises here too.
    """
    body = d["body"]
    if body is None:
        body = b""
    elif body.__class__ is str:
        body = body.encode("utf-8")
    elif isinstance(body, _STRUCTURED):
        body = _structured_body(body)
    elif body.__class__ is not bytes:
        raise TypeError("request body for vcrpy")
    uri = d["uri"]
    urlsplit(uri)
    named = d["headers"] or {}
    pairs: Any = [(name, v[0] if v.__class__ is list else v) for name, v in named.items()]
    if len({name.lower() for name in named}) < len(pairs):  # the same name in two spellings
        merged: dict[str, tuple[str, Any]] = {}
        for name, value in pairs:
            old = merged.get(name.lower())
            merged[name.lower()] = (name if old is None else old[0], value)
        pairs = merged.values()
    headers = tuple(p if p[1].__class__ is str else (p[0], _text(p[1])) for p in pairs)
    return Request(method=d["method"], url=uri, headers=headers, body=body)


_PENDING = Response(0)
"""The response of an odd interaction until ``_read_odd`` gives it its own."""


def _direct(items: list[Any], odd: Container[int], limit: int | None) -> list[Interaction]:
    """Checked items as ``_through_vcrpy`` makes them, without building vcrpy's objects on the way (a
    third of a large load); anything it would refuse or treat specially raises, to be done that way."""
    requests = [_request_from_dict(item["request"]) for item in items]  # vcrpy makes them all first
    if not odd:
        return [
            Interaction(r, _response_from_dict(item["response"], limit))
            for r, item in zip(requests, items, strict=True)
        ]
    return [
        Interaction(r, _PENDING if i in odd else _response_from_dict(item["response"], limit))
        for i, (r, item) in enumerate(zip(requests, items, strict=True))
    ]


def _through_vcrpy(path: Path, data: Any, raws: dict[int, Any], limit: int | None) -> list[Interaction]:
    """The interactions of checked cassette data through vcrpy's ``deserialize`` and its ``Request``
    (``raws``: the odd items, as they were before it)."""
    try:
        requests, responses = deserialize("", _Parsed(data))[:2]
    except Exception as e:
        raise CassetteError(f"{path}: not a valid vcrpy cassette: {type(e).__name__}: {e}") from None
    out: list[Interaction] = []
    for i, (vreq, vresp) in enumerate(zip(requests, responses, strict=True)):
        try:
            raw = raws.get(i)
            if raw is not None and isinstance(raw["request"]["body"], _STRUCTURED):
                vreq.body = None
                request = from_vcr_request(vreq).replace(body=_structured_body(raw["request"]["body"]))
            else:
                request = from_vcr_request(vreq)
            out.append(
                Interaction(request, _PENDING if raw is not None else _response_from_dict(vresp, limit))
            )
        except _BodyError as e:
            e.index = i
            raise
        except Exception as e:
            raise CassetteError(f"{path}: interaction {i}: {type(e).__name__}: {e}") from None
    return out


def _read_bytes(path: Path) -> tuple[bytes, str]:
    """The file's bytes and text; the errors, with a location for bad UTF-8, when it cannot be read."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CassetteNotFoundError(f"{path}: cassette not found") from None
    except OSError as e:
        raise CassetteError(f"{path}: cannot read cassette: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        line, column = before.count(b"\n") + 1, e.start - before.rfind(b"\n")
        raise CassetteError(
            f"{path}:{line}:{column}: not UTF-8 text (bad byte at offset {e.start}): "
            "a cassette is UTF-8 YAML or JSON, binary bodies are written as !!binary (YAML only)"
        ) from None
    if not text.strip():
        raise CassetteNotFoundError(f"{path}: cassette not found (the file is empty)")
    return raw, text


def _parse_json(path: Path) -> tuple[Any, list[int], int] | None:
    """A cassette in vcrpy's JSON format: data, odd indices, size; None when a file not named ``.json``
    turns out not to be JSON (then it is YAML: a flow mapping)."""
    raw, text = _read_bytes(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        data = jsonfile.without_torn_tail(text)
        if data is None:
            if path.suffix.lower() != ".json":
                return None
            raise CassetteError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        logger.warning("%s: ignored an incomplete last exchange (the recording proxy was killed)", path)
    except RecursionError:
        raise CassetteError(f"{path}: cannot parse cassette: nested too deeply") from None
    try:
        odd = _check(path, data, len(raw))
    except _Invalid as e:
        text_for_lines = _composable(path)
        raise (_located(e, text_for_lines) if text_for_lines is not None else e) from None
    return data, odd, len(raw)


def _parse_text(path: Path) -> tuple[Any, list[int], int]:
    """The cassette's data from its text: the error, with a location, when it is not a cassette."""
    raw, text = _read_bytes(path)
    try:
        data = _deserialize(text)
        odd = _check(path, data, len(raw))
    except (yaml.YAMLError, CassetteError) as e:
        original = _yaml_error(path, e, text) if isinstance(e, yaml.YAMLError) else e
        data = _without_torn_tail(text, path)
        if data is None:
            raise (_located(original, text) if isinstance(original, _Invalid) else original) from None
        try:
            odd = _check(path, data, len(raw))
        except CassetteError:
            raise (_located(original, text) if isinstance(original, _Invalid) else original) from None
        logger.warning("%s: ignored an incomplete last exchange (the recording proxy was killed)", path)
    except Exception as e:  # e.g. RecursionError on absurd nesting: still one line, no traceback
        raise CassetteError(f"{path}: cannot parse cassette: {type(e).__name__}: {e}") from None
    return data, odd, len(raw)


# ---------------------------------------------------------------- writing


def _response_dict(r: Response) -> dict[str, Any]:
    """vcrpy's response dict: header names keep their (first-seen) case, repeated names share one list."""
    headers: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for name, value in r.headers:
        key = names.setdefault(name.lower(), name)
        headers.setdefault(key, []).append(value)
    return {
        "status": {"code": r.status, "message": r.reason},
        "headers": headers,
        "body": {"string": r.body},
    }


def _vcr_dict(interactions: Sequence[Interaction]) -> dict[str, Any]:
    return {
        "requests": [to_vcr_request(i.request) for i in interactions],
        "responses": [_response_dict(i.response) for i in interactions],
    }


_VCR_DUMPER: Any = getattr(yamlserializer, "_CassetteDumper", None) or yamlserializer.Dumper
_B64_SLICE = 57 * 16384
"""Bytes base64-encoded at a time: whole lines of 57 bytes (76 characters), as PyYAML writes them."""
_WRITE_BUFFER = 1 << 20
"""Bytes buffered before a write: an item up to this size goes to the file in one ``os.write``."""


class _Dumper(_VCR_DUMPER):  # type: ignore[misc]
    """vcrpy's YAML dumper, writing ``!!binary`` bodies a slice at a time (the same text).

    PyYAML builds one object per 76-character line, about two bodies' worth of memory for a large one.
    """


def _represent_binary(dumper: Any, data: bytes) -> Any:
    view = memoryview(data)
    text = "".join(
        base64.encodebytes(view[i : i + _B64_SLICE]).decode("ascii") for i in range(0, len(view), _B64_SLICE)
    )
    return dumper.represent_scalar("tag:yaml.org,2002:binary", text, style="|")


_Dumper.add_representer(bytes, _represent_binary)


class _Capture:
    """A vcrpy "serializer" that keeps the data ``vcr.serialize.serialize`` hands it."""

    data: dict[str, Any]

    def serialize(self, data: dict[str, Any]) -> str:
        self.data = data
        return ""


def _item_dicts(interactions: Sequence[Interaction]) -> list[Any]:
    """The ``interactions`` items as vcrpy's ``serialize`` makes them; an interaction read in another
    shape (``Interaction.raw``) as the file held it."""
    plain = [i for i in interactions if i.raw is None]
    capture = _Capture()
    serialize(_vcr_dict(plain), capture)
    made = iter(capture.data["interactions"])
    return [i.raw if i.raw is not None else next(made) for i in interactions]


def _dump_yaml(value: Any, stream: BinaryIO | None = None) -> str:
    """``value`` in vcrpy's YAML; written (UTF-8) to ``stream`` as it is produced when given, so a large
    cassette is not held as text, then as bytes."""
    try:
        if stream is None:
            return str(yaml.dump(value, Dumper=_Dumper))
        yaml.dump(value, stream, Dumper=_Dumper, encoding="utf-8")
        return ""
    except yaml.YAMLError as e:
        raise CassetteError(f"cannot serialize interactions: {e}") from None


def dumps(interactions: Sequence[Interaction], extra: dict[str, Any] | None = None) -> str:
    """The canonical vcrpy YAML for ``interactions`` (what vcrpy itself writes), with the other top-level
    keys ``extra`` (never ``metadata`` of our own)."""
    data = {"version": CASSETTE_FORMAT_VERSION, "interactions": _item_dicts(interactions), **(extra or {})}
    return _dump_yaml(data)


def dump_items(interactions: Sequence[Interaction]) -> str:
    """The ``- request: ...`` items alone, exactly as they appear under ``interactions:`` in ``dumps``."""
    if not interactions:
        return ""
    return _dump_yaml(_item_dicts(interactions))


def _write_items(stream: BinaryIO, interactions: Sequence[Interaction]) -> None:
    """``dump_items(interactions)`` in UTF-8, written to ``stream`` as it is produced."""
    if interactions:
        _dump_yaml(_item_dicts(interactions), stream)


def _json_items(path: Path, interactions: Sequence[Interaction]) -> list[str]:
    """Each interaction as an item of a vcrpy JSON cassette (``jsonfile.item``)."""
    out = []
    for interaction, item in zip(interactions, _item_dicts(interactions), strict=True):
        try:
            out.append(jsonfile.item(item))
        except jsonfile.BinaryBody as e:
            request = interaction.request
            raise CassetteError(f"{path}: {request.method} {request.url}: {e}") from None
    return out


def writes_json(path: Path) -> bool:
    """Whether a cassette written to ``path`` is in vcrpy's JSON format: a ``.json`` name."""
    return Path(path).suffix.lower() == ".json"


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a temp file beside ``path`` with ``write(file)``, fsync, rename it over ``path``."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o666
        with contextlib.suppress(OSError):
            mode = stat.S_IMODE(path.stat().st_mode)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with open(fd, "wb", buffering=_WRITE_BUFFER, closefd=False) as f:
                write(f)
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode != 0o666:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise CassetteError(f"{path}: cannot write cassette: {_reason(e)}") from None
        raise
    _fsync_dir(path.parent)


def save(path: Path, interactions: Sequence[Interaction], extra: dict[str, Any] | None = None) -> None:
    """Write ``interactions`` (and the other top-level keys ``extra``) to ``path`` atomically in canonical
    form, vcrpy's JSON for a ``.json`` path and its YAML otherwise (parents created).

    The YAML is the same text as ``dumps``, written one item at a time: PyYAML builds a whole document in
    memory before writing it, which for a cassette of large bodies means all of them again at once.
    """
    path = Path(path)
    extra = extra or {}
    if writes_json(path):
        try:
            text = jsonfile.dumps(_item_dicts(interactions), extra)
        except jsonfile.BinaryBody as e:
            _json_items(path, interactions)  # names the exchange
            raise CassetteError(f"{path}: {e}") from None  # in the other top-level keys
        _atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return

    def write(f: BinaryIO) -> None:
        for key in sorted(["interactions", "version", *extra], key=str):  # PyYAML sorts the keys
            if key == "version":
                f.write(f"version: {CASSETTE_FORMAT_VERSION}\n".encode())
            elif key != "interactions":
                _dump_yaml({key: extra[key]}, f)
            elif not interactions:
                f.write(b"interactions: []\n")
            else:
                f.write(b"interactions:\n")
                for interaction in interactions:
                    _write_items(f, [interaction])

    _atomic_write(path, write)


class CassetteWriter:
    """Saves exchanges as they happen without rewriting the whole file per exchange.

    The file is laid out as ``version: 1``, the other top-level keys (``extra``), then ``interactions:``;
    PyYAML does not indent a block sequence under a mapping key, so each appended ``- request: ...`` item
    (one ``os.write`` on an ``O_APPEND`` fd, then fsync) leaves a complete cassette that vcrpy loads. An
    item larger than ``_WRITE_BUFFER`` (a large body) is written as it is serialized, in several writes: a
    kill in between leaves a torn last item, which ``load`` drops. A ``.json`` path is vcrpy's JSON
    instead, appended to as ``proxy/jsonfile.py`` describes. ``close(final)`` rewrites the file in vcrpy's
    canonical order. Nothing is created until there is something to write.
    """

    def __init__(
        self, path: Path, initial: Sequence[Interaction] = (), extra: dict[str, Any] | None = None
    ) -> None:
        self.path = Path(path)
        self.extra = dict(extra or {})
        """Top-level keys besides ``version`` and ``interactions``, written before ``interactions``."""
        self._json = writes_json(self.path)
        self._fd: int | None = None
        self._count = 0
        self._closed = False
        self._lock = threading.Lock()
        if initial:
            self._rewrite(initial)
        else:
            self._check_writable()

    @classmethod
    def extending(
        cls, path: Path, initial: Sequence[Interaction], extra: dict[str, Any] | None = None
    ) -> CassetteWriter:
        """A writer for the cassette ``path`` that holds ``initial`` (as loaded from it, with its other
        top-level keys ``extra``), which new exchanges follow: in place when its layout allows
        (``cassette_stream.appendable_end``: vcrpy's YAML or ours, last item whole), so none of it is
        rewritten; otherwise (JSON, other keys) rewritten once in our layout."""
        from . import cassette_stream

        writer = cls(path, (), extra)
        if not initial:
            return writer  # the first append writes the file
        end = cassette_stream.appendable_end(writer.path, HEADER.encode())
        if end is None:
            writer._rewrite(initial)
            return writer
        try:
            fd = os.open(writer.path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise CassetteError(f"{path}: cannot open cassette for appending: {_reason(e)}") from None
        try:
            if os.fstat(fd).st_size > end:
                os.ftruncate(fd, end)  # vcrpy's closing ``version: 1``: written back by finish()
                os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise CassetteError(f"{path}: cannot append to cassette: {_reason(e)}") from None
        writer._fd, writer._count = fd, len(initial)
        try:
            recording_marker(writer.path).touch()
        except OSError as e:
            writer._close_fd()
            raise CassetteError(f"{path}: cannot write beside the cassette: {_reason(e)}") from None
        return writer

    def finish(self, drop: Collection[int] = ()) -> bool:
        """Flush, close and make the file canonical by streaming it from disk, without the items numbered
        in ``drop``; False when the file is not as this writer left it (nothing done: see ``close``)."""
        from . import cassette_stream

        with self._lock:
            if self._closed:
                return True
            self._closed = True
            wrote = self._fd is not None
            self._close_fd()
            if not wrote:
                return True
            try:
                done = cassette_stream.write_canonical(
                    self.path, HEADER.encode(), self._count, drop, _atomic_write
                )
            except OSError as e:
                raise CassetteError(f"{self.path}: cannot rewrite cassette: {_reason(e)}") from None
            if done:
                with contextlib.suppress(FileNotFoundError):
                    recording_marker(self.path).unlink()
            return done

    def _check_writable(self) -> None:
        """Fail now, not at the first exchange, when the cassette's directory cannot take a file."""
        directory = self.path.parent
        probe = directory / f".{self.path.name}.{secrets.token_hex(6)}.probe"
        try:
            if self.path.is_dir():
                raise IsADirectoryError(21, "is a directory")
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise CassetteError(f"{self.path}: cannot write cassette: {_reason(e)}") from None

    def _rewrite(self, interactions: Sequence[Interaction]) -> None:
        """Replace the file atomically with ``interactions`` (append layout) and reopen it for appending."""
        self._close_fd()

        if self._json:
            items = _json_items(self.path, interactions)
            text = jsonfile.head(self.extra) + ",\n".join(items) + jsonfile.TAIL
            _atomic_write(self.path, lambda f: f.write(text.encode("utf-8")))
        else:

            def write(f: BinaryIO) -> None:
                f.write(HEADER[: HEADER.index("\n") + 1].encode())
                if self.extra:
                    _dump_yaml(self.extra, f)
                f.write(b"interactions:\n")
                _write_items(f, interactions)

            _atomic_write(self.path, write)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | (0 if self._json else os.O_APPEND))
        except OSError as e:
            raise CassetteError(f"{self.path}: cannot open cassette for appending: {_reason(e)}") from None
        self._count = len(interactions)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            except OSError as e:
                raise CassetteError(f"{self.path}: cannot flush cassette: {_reason(e)}") from None
            finally:
                os.close(fd)

    @property
    def count(self) -> int:
        """How many interactions the file holds."""
        return self._count

    def append(self, interaction: Interaction) -> None:
        """Add one interaction to the file; a small one in a single write, so it is never half an item."""
        with self._lock:
            if self._closed:
                raise CassetteError(f"{self.path}: cassette writer is closed")
            if self._fd is None:
                self._rewrite([interaction])
                return
            fd = self._fd
            try:
                size = os.fstat(fd).st_size
            except OSError as e:
                raise CassetteError(f"{self.path}: cannot append to cassette: {_reason(e)}") from None
            if self._json:
                self._append_json(fd, size, interaction)
                self._count += 1
                return
            try:
                with open(fd, "wb", buffering=_WRITE_BUFFER, closefd=False) as f:
                    _write_items(f, [interaction])
                os.fsync(fd)
            except (OSError, CassetteError) as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # never leave a partial item behind
                if isinstance(e, CassetteError):
                    raise
                raise CassetteError(f"{self.path}: cannot append to cassette: {_reason(e)}") from None
            self._count += 1

    def _append_json(self, fd: int, size: int, interaction: Interaction) -> None:
        """Overwrite the closing ``jsonfile.TAIL`` with the item and the tail (a complete file again); on
        a failed write, put the tail back where it was."""
        (item,) = _json_items(self.path, [interaction])
        chunk = jsonfile.append_chunk(self._count == 0, item).encode("utf-8")
        offset = size - len(jsonfile.TAIL)
        try:
            written = 0
            while written < len(chunk):
                written += os.pwrite(fd, chunk[written:], offset + written)
            os.fsync(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, offset)
                os.pwrite(fd, jsonfile.TAIL.encode(), offset)
            raise CassetteError(f"{self.path}: cannot append to cassette: {_reason(e)}") from None

    def close(self, final: Sequence[Interaction] | None = None) -> None:
        """Flush and close; with ``final``, rewrite the file atomically in canonical ``dumps`` form.

        An empty ``final`` on a writer that never wrote leaves the disk untouched.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            wrote = self._fd is not None
            self._close_fd()
            if final is not None and (final or wrote):
                save(self.path, final, self.extra)
                self._count = len(final)

    def __enter__(self) -> CassetteWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------- playback


@dataclass(frozen=True, slots=True)
class Played:
    """A recorded answer; ``extra`` means the recorded sequence was used up and the policy supplied it."""

    index: int
    interaction: Interaction
    extra: bool = False


@dataclass(frozen=True, slots=True)
class Exhausted:
    """Every matching interaction has been played and the policy is "error"."""

    indices: tuple[int, ...]


WHEN_EXHAUSTED: tuple[str, ...] = ("repeat-last", "cycle", "error")

_NEAREST_KEYS = 150  # distinct request keys examined by nearest()
_NEAREST_PER_KEY = 10  # members per key examined when body/header matchers are configured


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] or "/"


class Playback:
    """Answers requests from recorded interactions, identical requests in recorded order.

    Interactions are indexed by ``Matcher.key``; each key keeps a cursor to its first unplayed
    interaction, so a play is O(1) amortized (plus vcrpy's body/header checks on same-key candidates).
    """

    def __init__(
        self, interactions: Sequence[Interaction], matcher: Matcher, when_exhausted: str = "repeat-last"
    ) -> None:
        if when_exhausted not in WHEN_EXHAUSTED:
            raise ConfigError(
                f"unknown when-exhausted policy {when_exhausted!r}; choose from: {', '.join(WHEN_EXHAUSTED)}"
            )
        self.matcher = matcher
        self.when_exhausted = when_exhausted
        self._lock = threading.Lock()
        self._items: list[Interaction] = []
        self._keys: list[Hashable] = []
        self._counts: list[int] = []
        self._vcr: list[VcrRequest | None] = []
        self._buckets: dict[Hashable, list[int]] = {}
        self._cursor: dict[Hashable, int] = {}
        self._cycle: dict[Hashable, int] = {}
        self._by_path: dict[str, list[Hashable]] = {}
        self._by_parent: dict[str, list[str]] = {}
        self._by_method: dict[str, list[Hashable]] = {}
        for interaction in interactions:
            self._index(interaction)

    def _index(self, interaction: Interaction) -> int:
        idx = len(self._items)
        key = self.matcher.key(interaction.request)
        self._items.append(interaction)
        self._keys.append(key)
        self._counts.append(0)
        self._vcr.append(None)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [idx]
            path = interaction.request.path
            if path not in self._by_path:
                self._by_path[path] = []
                self._by_parent.setdefault(_parent(path), []).append(path)
            self._by_path[path].append(key)
            self._by_method.setdefault(interaction.request.method.upper(), []).append(key)
        else:
            bucket.append(idx)
        return idx

    def _vcr_request(self, idx: int) -> VcrRequest:
        cached = self._vcr[idx]
        if cached is None:
            item = self._items[idx]
            cached = self._vcr[idx] = self.matcher.vcr_request(item.request)
            if item.raw is not None and isinstance(item.raw["request"]["body"], _STRUCTURED):
                cached.body = item.raw["request"]["body"]  # as vcrpy loads it: the body matcher sees a value
        return cached

    @property
    def interactions(self) -> Sequence[Interaction]:
        return tuple(self._items)

    @property
    def play_counts(self) -> tuple[int, ...]:
        """How often each interaction has been played (by index)."""
        return tuple(self._counts)

    def __len__(self) -> int:
        return len(self._items)

    def unplayed(self) -> list[int]:
        """Indices of interactions not played yet, in file order."""
        with self._lock:
            return [i for i, c in enumerate(self._counts) if c == 0]

    def _answer(self, idx: int, extra: bool) -> Played:
        self._counts[idx] += 1
        return Played(idx, self._items[idx], extra)

    def play(self, request: Request) -> Played | Exhausted | None:
        """The next recorded answer to ``request``; None when nothing recorded matches it."""
        key = self.matcher.key(request)
        with self._lock:
            bucket = self._buckets.get(key)
            if not bucket:
                return None
            counts = self._counts
            if not self.matcher.needs_confirmation:
                pos = self._cursor.get(key, 0)
                while pos < len(bucket) and counts[bucket[pos]]:
                    pos += 1
                self._cursor[key] = pos
                if pos < len(bucket):
                    return self._answer(bucket[pos], extra=False)
                matches: Sequence[int] = bucket
                state: Hashable = key
            else:
                incoming = self.matcher.vcr_request(request)
                for idx in bucket:
                    if not counts[idx] and self.matcher.confirm(self._vcr_request(idx), incoming):
                        return self._answer(idx, extra=False)
                matches = [i for i in bucket if self.matcher.confirm(self._vcr_request(i), incoming)]
                if not matches:
                    return None
                state = (key, tuple(matches))
            if self.when_exhausted == "error":
                return Exhausted(tuple(matches))
            if self.when_exhausted == "cycle":
                n = self._cycle.get(state, 0)
                self._cycle[state] = n + 1
                return self._answer(matches[n % len(matches)], extra=True)
            return self._answer(matches[-1], extra=True)

    def add(self, interaction: Interaction, played: bool = True) -> int:
        """Append a newly recorded interaction and return its index; ``played`` counts it as played."""
        with self._lock:
            idx = self._index(interaction)
            if played:
                self._counts[idx] = 1
            return idx

    def reset(self) -> None:
        """Forget play counts: the next requests start from the first recorded answers again."""
        with self._lock:
            self._counts = [0] * len(self._items)
            self._cursor.clear()
            self._cycle.clear()

    def _candidate_keys(self, request: Request) -> list[tuple[int, Hashable]]:
        """Distinct keys worth comparing, best tier first: same path, sibling paths, same method, any."""
        seen: set[Hashable] = set()
        out: list[tuple[int, Hashable]] = []

        def take(tier: int, keys: Sequence[Hashable]) -> bool:
            for k in keys:
                if len(out) >= _NEAREST_KEYS:
                    return False
                if k not in seen:
                    seen.add(k)
                    out.append((tier, k))
            return len(out) < _NEAREST_KEYS

        path = request.path
        if not take(0, self._by_path.get(path, ())):
            return out
        for sibling in self._by_parent.get(_parent(path), ())[:_NEAREST_KEYS]:
            if sibling != path and not take(1, self._by_path[sibling]):
                return out
        if not take(2, self._by_method.get(request.method.upper(), ())[: _NEAREST_KEYS * 2]):
            return out
        for k in self._buckets:
            if not take(3, (k,)):
                break
        return out

    def nearest(self, request: Request, limit: int = 3) -> list[tuple[int, Interaction, list[str]]]:
        """The recorded interactions closest to ``request`` and how each differs (for "no match" reports)."""
        with self._lock:
            per_key = _NEAREST_PER_KEY if self.matcher.needs_confirmation else 1
            method, path = request.method.upper(), request.path
            scored: list[tuple[tuple[int, int, int, int, int], int, list[str]]] = []
            for tier, key in self._candidate_keys(request):
                for idx in self._buckets[key][:per_key]:
                    recorded = self._items[idx].request
                    diffs = self.matcher.differences(recorded, request)
                    # Same path first: a request for the right resource with the wrong method or query
                    # is what a user means by "closest", more than another resource of the same method.
                    rank = (
                        recorded.path != path,
                        len(diffs),
                        recorded.method.upper() != method,
                        tier,
                        idx,
                    )
                    scored.append((rank, idx, diffs))
            scored.sort(key=lambda s: s[0])
            return [(idx, self._items[idx], diffs) for _, idx, diffs in scored[:limit]]
