"""``replay-proxy lint CASSETTE...``: secrets left in cassettes, each with ``file:line``.

Two kinds of finding:

- ``redact``: a value the proxy's redaction rules (``proxy/redact.py``, its defaults) would hide if the
  exchange were recorded now: a header, query parameter or body field named like a secret, a
  credential-shaped value (JWT, GitHub, Slack... tokens), a URL's password. The rules run as they do when
  recording, and whatever they change is reported: nothing here re-implements them.
- ``entropy``: a long, random-looking token (Shannon entropy per character close to the most its length
  allows, mixed letters and digits) in a header, the URL, or a JSON string, requests and responses alike:
  a secret under a name that says nothing. Hex strings and UUIDs (ids, hashes, ETags) and pagination
  cursors (``$skiptoken``, ``continuationToken``...) are not reported; ``--allow NAME`` leaves a header,
  parameter or JSON key out.

Exit 3 with findings, 0 when clean, 2 when a cassette cannot be read. Secrets are never printed whole:
a finding shows their first characters and length.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from proxy import cassette as cassettes
from proxy.errors import ReplayProxyError
from proxy.model import Interaction, json_document
from proxy.redact import TOKEN_NOT_SECRET, Redactor
from proxy.unused import interaction_lines, shown_path

MIN_LENGTH = 20
"""Shorter tokens are not judged by entropy (too many ordinary words and ids)."""
ENTROPY_RATIO = 0.85
"""A token is random-looking when its entropy per character is at least this share of the most its
length allows (``log2(min(length, 64))``: a base64 alphabet)."""
MAX_NON_HEX = 3
"""A token with no more letters beyond a-f than this is hex (a hash, an id, a Cloudflare ray)."""
MIN_CHANGES = 0.5
"""Share of neighbouring characters of different kinds (digit, upper, lower) a random token has: about
0.6 for base64; a written name (``PytestHTTPServer/0.1``) has fewer."""
PLACEHOLDER_WORDS = frozenset(
    {"redacted", "sanitized", "filtered", "removed", "hidden", "secret", "placeholder", "fake", "dummy"}
)
_TOKEN = re.compile(r"[A-Za-z0-9+/=_~.-]{" + str(MIN_LENGTH) + ",}")
_PLACEHOLDER = re.compile(r"<REDACTED(?:-\d+)?>")
_NAMED_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_-]*>")
"""vcrpy's ``filter_sensitive_data`` style: ``<API_KEY>``."""
_CURSOR_NAMES = frozenset({f"{w}token" for w in TOKEN_NOT_SECRET} | {"nextlink", "xmscontinuation", "etag"})


@dataclass(frozen=True, slots=True)
class Finding:
    file: str
    line: int
    where: str
    """``interaction #3 request header Authorization``, ``... response JSON $.data.key``..."""
    kind: str
    """``redact`` or ``entropy``."""
    value: str

    def text(self) -> str:
        what = (
            "a secret the redaction rules would hide"
            if self.kind == "redact"
            else "a high-entropy token (a secret under a name that says nothing?)"
        )
        return f"{self.file}:{self.line}: {self.where}: {what} ({preview(self.value)})"


def preview(value: str) -> str:
    """Enough of ``value`` to find it, never the secret: its first 4 characters and its length."""
    return f"{value[:4]!r}... {len(value)} chars"


def entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def random_looking(token: str) -> bool:
    """A token that looks generated, not written: long; digits, upper and lower case letters, mixed as
    chance mixes them (the kind of character changes often); near-maximal entropy. Not hex (ids, hashes:
    at most ``MAX_NON_HEX`` letters beyond a-f) and not a placeholder."""
    if len(token) < MIN_LENGTH or _PLACEHOLDER.search(token) or encoded_json(token):
        return False
    if sum(1 for c in token if c.isalpha() and c.lower() not in "abcdef") <= MAX_NON_HEX:
        return False
    mixed = any(c.isdigit() for c in token) and any(c.isupper() for c in token)
    if not (mixed and any(c.islower() for c in token)):
        return False
    kinds = [c.isdigit() * 1 + c.isupper() * 2 + c.islower() * 3 for c in token]
    changes = sum(1 for a, b in itertools.pairwise(kinds) if a != b)
    if changes < MIN_CHANGES * (len(token) - 1):
        return False
    return entropy(token) >= ENTROPY_RATIO * math.log2(min(len(token), 64))


def encoded_json(token: str) -> bool:
    """A base64 token that decodes to a JSON object (``eyJ...``: ``{"``): data, such as the job id in an
    ARM ``operationresults/eyJqb2JJZCI6...`` status URL, not a credential (a JWT, three such parts
    joined by dots, is the redaction rules' to find)."""
    if not token.startswith("eyJ") or "." in token:
        return False
    try:
        decoded = base64.urlsafe_b64decode(
            token.replace("+", "-").replace("/", "_") + "=" * (-len(token) % 4)
        )
        return isinstance(json.loads(decoded), dict)
    except (ValueError, binascii.Error):
        return False


def is_placeholder(value: str) -> bool:
    """A value someone already replaced (``redacted``, ``Sanitized``, ``***``, ``<KEY>``): no finding."""
    if _NAMED_PLACEHOLDER.fullmatch(value.strip()):
        return True
    word = value.strip().strip("<>[]{}()\"'").lower()
    return word in PLACEHOLDER_WORDS or not word.strip("*x.-_ ")


def _allowed(name: str, allow: frozenset[str]) -> bool:
    folded = re.sub(r"[^a-z0-9]", "", name.lower())
    return name.lower() in allow or folded in allow or folded in _CURSOR_NAMES


def _tokens(value: str) -> Iterator[tuple[str, str]]:
    """(name, token) of the random-looking tokens in a text value: a URL's path segments and query
    values (named by their parameter), else the value's runs of token characters."""
    if "://" in value or (value.startswith("/") and "?" in value):
        parts = urlsplit(value.strip())
        if parts.password:
            yield "", parts.password
        for segment in parts.path.split("/"):
            for token in _TOKEN.findall(unquote(segment)):
                yield "", token
        for name, v in parse_qsl(parts.query, keep_blank_values=True):
            for token in _TOKEN.findall(v):
                yield name, token
        return
    for token in _TOKEN.findall(value):
        yield "", token


def _json_strings(node: Any, at: str = "$") -> Iterator[tuple[str, str, str]]:
    """(path, key, string) of every string in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from (
                _json_strings(value, f"{at}.{key}")
                if not isinstance(value, str)
                else [(f"{at}.{key}", str(key), value)]
            )
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, str):
                yield f"{at}[{i}]", "", value
            else:
                yield from _json_strings(value, f"{at}[{i}]")



def _changed_json(before: Any, after: Any, at: str = "$") -> Iterator[tuple[str, str]]:
    """(path, original string) where the redacted document differs from the original."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key, value in before.items():
            yield from _changed_json(value, after.get(key), f"{at}.{key}")
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            yield from _changed_json(b, a, f"{at}[{i}]")
    elif before != after:
        yield at, before if isinstance(before, str) else json.dumps(before)


def findings_in(
    interaction: Interaction, number: int, allow: frozenset[str]
) -> Iterator[tuple[str, str, str]]:
    """(where, kind, value) of each finding in one interaction (``number``: 1-based, for messages)."""
    redacted = Redactor().interaction(interaction)
    hidden: set[str] = set()
    for side, original, changed in (
        ("request", interaction.request, redacted.request),
        ("response", interaction.response, redacted.response),
    ):
        prefix = f"interaction #{number} {side}"
        # what the redaction rules change
        if side == "request" and original.url != changed.url:  # type: ignore[union-attr]
            before, after = original.url, changed.url  # type: ignore[union-attr]
            pairs = dict(parse_qsl(urlsplit(after).query, keep_blank_values=True))
            for name, value in parse_qsl(urlsplit(before).query, keep_blank_values=True):
                if pairs.get(name, value) != value and not is_placeholder(value):
                    hidden.add(value)
                    yield f"{prefix} URL query parameter {name}", "redact", value
            old, new_url = urlsplit(before), urlsplit(after)
            if old.netloc != new_url.netloc and old.password:
                yield f"{prefix} URL password", "redact", old.password
            for segment, redacted_segment in zip(old.path.split("/"), new_url.path.split("/"), strict=False):
                if segment != redacted_segment:
                    yield f"{prefix} URL path", "redact", unquote(segment)
        for (name, value), (_, new) in zip(original.headers, changed.headers, strict=False):
            if value != new and not is_placeholder(value.split(None, 1)[-1] if value.strip() else value):
                hidden.add(value)
                yield f"{prefix} header {name}", "redact", value
        if original.body != changed.body:
            doc, new_doc = json_document(original.body), json_document(changed.body)
            if doc is not None and new_doc is not None:
                for path, value in _changed_json(doc, new_doc):
                    if is_placeholder(value):
                        continue
                    hidden.add(value)
                    yield f"{prefix} JSON {path}", "redact", value
            else:
                yield f"{prefix} body", "redact", original.body.decode("utf-8", "replace")[:64]
        # random-looking tokens the rules do not know
        if side == "request":
            for name, token in _tokens(original.url):  # type: ignore[union-attr]
                if random_looking(token) and not _allowed(name, allow) and token not in hidden:
                    yield f"{prefix} URL" + (f" query parameter {name}" if name else ""), "entropy", token
        for name, value in original.headers:
            if _allowed(name, allow) or value in hidden:
                continue
            for _, token in _tokens(value):
                if random_looking(token) and token not in hidden:
                    yield f"{prefix} header {name}", "entropy", token
        doc = json_document(original.body)
        if doc is not None:
            for path, key, value in _json_strings(doc):
                if _allowed(key, allow) or value in hidden:
                    continue
                for name, token in _tokens(value):
                    if random_looking(token) and token not in hidden and not _allowed(name, allow):
                        yield f"{prefix} JSON {path}", "entropy", token


def lint_file(path: Path, allow: frozenset[str]) -> list[Finding]:
    """The findings of one cassette, in file order."""
    interactions = cassettes.load(path)
    starts = interaction_lines(path, len(interactions))
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    shown = shown_path(str(path.absolute()))
    out: list[Finding] = []
    for i, interaction in enumerate(interactions):
        first = starts[i] if starts is not None else 1
        last = starts[i + 1] - 1 if starts is not None and i + 1 < len(starts) else len(lines)
        seen: set[tuple[str, str]] = set()
        for where, kind, value in findings_in(interaction, i + 1, allow):
            if (where, value) in seen:
                continue
            seen.add((where, value))
            out.append(Finding(shown, _line_of(value, lines, first, last), where, kind, value))
    out.sort(key=lambda f: f.line)  # stable: what one line holds stays in the order found
    return out


def _line_of(value: str, lines: Sequence[str], first: int, last: int) -> int:
    """The first line in ``[first, last]`` (1-based) that shows ``value`` (or its start), else ``first``."""
    for needle in (value, value[:16]):
        if len(needle) < 4:
            continue
        for n in range(first, min(last, len(lines)) + 1):
            if needle in lines[n - 1]:
                return n
    return first


def lint_main(paths: Sequence[Path], allow: Sequence[str]) -> int:
    """Lint each cassette; print one line per finding; exit 3 with findings, 2 for an unreadable file."""
    from proxy.cli import EXIT_OK, EXIT_USAGE, EXIT_VIOLATIONS

    folded = (re.sub(r"[^a-z0-9]", "", a.lower()) for a in allow)
    allowed = frozenset(a.lower() for a in allow) | frozenset(folded)
    found = 0
    bad = False
    for path in paths:
        try:
            findings = lint_file(path, allowed)
        except ReplayProxyError as e:
            print(f"replay-proxy: error: {e}", file=sys.stderr, flush=True)
            bad = True
            continue
        for finding in findings:
            print(finding.text(), flush=True)
        found += len(findings)
    if bad:
        return EXIT_USAGE
    if found:
        print(
            f"replay-proxy lint: {found} finding{'s' * (found != 1)} in {len(paths)} cassette"
            f"{'s' * (len(paths) != 1)}: remove them (re-record: secrets are redacted at save time), or "
            "--allow NAME for a name whose values are no secret",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_VIOLATIONS
    return EXIT_OK
