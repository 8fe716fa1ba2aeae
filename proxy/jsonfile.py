"""vcrpy's JSON cassette format, as its ``jsonserializer`` writes it: ``json.dumps(data, indent=4)`` and a
newline, ``version`` first, then ``interactions``, then any other top-level key.

A file being recorded is kept in an append layout that is the same text whenever no other top-level key
is present: the other keys come before ``interactions``, whose items end the file, so an exchange is
added by overwriting the closing ``TAIL`` with ``,`` + the item + ``TAIL`` (``append_chunk``). JSON
writes no raw newline inside a string, so every item begins at a line ``        {`` and ends at a line
``        }``: a file cut in the middle of an append is recovered up to its last whole item.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

ITEM_INDENT = " " * 8
"""Items of ``interactions`` are at the second level of ``indent=4``."""
TAIL = "\n    ]\n}\n"
"""What closes the interactions list and the file."""


class BinaryBody(TypeError):
    """An item holds bytes that are not UTF-8 text: vcrpy's JSON format cannot hold them."""


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, indent=4)
    except TypeError:
        raise BinaryBody(
            "a JSON cassette cannot hold a body that is not UTF-8 text (vcrpy's JSON serializer "
            "refuses it too): record to a .yaml cassette"
        ) from None


def _indented(text: str, prefix: str) -> str:
    return prefix + text.replace("\n", "\n" + prefix)


def dumps(items: Sequence[Any], extra: Mapping[str, Any], version: int = 1) -> str:
    """The whole file, as ``vcr.serializers.jsonserializer.serialize`` writes it."""
    return _dumps({"version": version, "interactions": list(items), **extra}) + "\n"


def item(value: Any) -> str:
    """One item of ``interactions`` exactly as it appears inside ``dumps``' text."""
    return _indented(_dumps(value), ITEM_INDENT)


def head(extra: Mapping[str, Any], version: int = 1) -> str:
    """The append layout up to the first item: ``version``, the other keys, ``"interactions": [``."""
    lines = [f'{{\n    "version": {json.dumps(version)},\n']
    for key, value in extra.items():
        lines.append(f"    {json.dumps(key)}: {_indented(_dumps(value), '    ')[4:]},\n")
    lines.append('    "interactions": [\n')
    return "".join(lines)


def append_chunk(first: bool, item_text: str) -> str:
    """What replaces ``TAIL`` to add an item after the others (``first``: there are none yet)."""
    return ("" if first else ",\n") + item_text + TAIL


def without_torn_tail(text: str) -> Any:
    """A file in the append layout cut short inside its last item: the data of the items before it,
    or None when the text is not that."""
    marker = '    "interactions": [\n'
    start = text.find(marker)
    if not text.startswith('{\n    "version": ') or start < 0 or text.endswith(TAIL):
        return None  # not the layout, or whole: broken by hand, not by a kill
    body_start = start + len(marker)
    cut = len(text)
    for _ in range(3):
        cut = text.rfind("\n" + ITEM_INDENT + "}", body_start - 1, cut)
        if cut < 0:
            candidate = text[:body_start].rstrip().rstrip("[") + "[]\n}\n"
        else:
            candidate = text[: cut + len(ITEM_INDENT) + 2] + TAIL
        try:
            return json.loads(candidate)
        except ValueError:
            if cut < 0:
                return None
            continue
    return None
