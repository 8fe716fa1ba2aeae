"""A cassette being recorded, worked on where it lies: extended in place, made canonical by streaming.

The file on disk is the recording's only copy: exchanges are appended to it as they happen
(``CassetteWriter``) and the recorder keeps none of them in memory. At a clean stop ``write_canonical``
turns it into vcrpy's layout (``interactions:`` first, ``version: 1`` last) by copying it item by item,
dropping the old interactions that ``all`` mode replaced. A cassette already in vcrpy's layout is
extended in place (``appendable_end``): its ``version: 1`` line is cut, new items follow its last one,
and the stop writes that line back, so recording onto a 200,000-interaction cassette rewrites none of it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any, BinaryIO

import yaml

ITEMS_FIRST = b"interactions:\n"
"""How vcrpy's layout starts; the item list follows, then ``VERSION``."""
VERSION = b"version: 1\n"
_COLUMN_ZERO = re.compile(rb"\n[^ \n]")
"""A line that starts in column 0: in an item list, only an item's ``- `` does (its lines are indented)."""
_SCAN = 1 << 20
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def appendable_end(path: Path, header: bytes) -> int | None:
    """Where new ``- request: ...`` items can be written to extend ``path`` in place, or None.

    The file must start with ``header`` (our append layout) or ``ITEMS_FIRST`` (vcrpy's, ending with
    ``VERSION``, which the returned offset leaves out), its last line that starts in column 0 must start
    an item (``- ``), and in our layout (which a kill may have left torn) that item must be whole: it
    parses as one interaction. Anything else (another layout, a top-level key after the items, a torn
    last item) is None: it is rewritten instead.
    """
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(max(len(header), len(ITEMS_FIRST)))
            if head.startswith(ITEMS_FIRST):
                f.seek(max(0, size - len(VERSION) - 1))
                if f.read() != b"\n" + VERSION:
                    return None
                start, end = len(ITEMS_FIRST), size - len(VERSION)
            elif head.startswith(header):
                start, end = len(header), size
            else:
                return None
            last = _last_item_start(f, start, end)
            if last is None:
                return None
            f.seek(last)
            if f.read(2) != b"- ":
                return None
            f.seek(end - 1)
            if f.read(1) != b"\n":
                return None
            if start == len(ITEMS_FIRST):
                return end  # a whole file (it ends with VERSION) that loaded: its last item is whole
            f.seek(last)
            text = f.read(end - last)
    except OSError:
        return None
    try:
        item: Any = yaml.load(text, Loader=_SAFE_LOADER)
    except Exception:
        return None
    whole = isinstance(item, list) and len(item) == 1 and isinstance(item[0], dict)
    return end if whole and {"request", "response"} <= item[0].keys() else None


def _last_item_start(f: BinaryIO, start: int, end: int) -> int | None:
    """Offset of the last line in ``[start, end)`` that starts in column 0 (scanning back from ``end``)."""
    if end <= start:
        return None
    pos = end - 1  # the final newline ends the last line: not a line start
    while pos > start - 1:
        low = max(start - 1, pos - _SCAN)
        f.seek(low)
        chunk = f.read(pos - low + 1)
        found = max((m.start() for m in _COLUMN_ZERO.finditer(chunk)), default=None)
        if found is not None:
            return low + found + 1
        if low == start - 1:
            break
        pos = low + 1  # the chunks overlap by one byte: a newline at the edge is seen with what follows
    return start if start < end else None


def items(f: BinaryIO, start: int) -> Any:
    """The items of an item list from offset ``start`` on, each as a list of its lines (bytes)."""
    f.seek(start)
    item: list[bytes] = []
    for line in f:
        if item and line[:1] not in (b" ", b"\n"):
            yield item
            item = []
        item.append(line)
    if item:
        yield item


def write_canonical(
    path: Path,
    header: bytes,
    expected: int,
    drop: Collection[int],
    atomic_write: Any,
) -> bool:
    """Make the cassette at ``path`` (``header`` or ``ITEMS_FIRST`` then ``expected`` items) canonical,
    leaving out the items numbered in ``drop`` (0-based), streaming from disk; False (file untouched)
    when it is not laid out so, or (only counted when there is something to drop) does not hold
    ``expected`` items: then the caller does it another way.

    With nothing to drop, a file in vcrpy's layout only gets its ``VERSION`` line back. ``atomic_write``
    is ``cassette._atomic_write``.
    """
    with path.open("rb") as src:
        head = src.read(len(header))
        if head == header:
            start = len(header)
        elif head.startswith(ITEMS_FIRST):
            start = len(ITEMS_FIRST)
        else:
            return False
        if drop and sum(1 for _ in items(src, start)) != expected:
            return False  # the numbers in ``drop`` would not be the items they mean
        if not drop and start == len(ITEMS_FIRST):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, VERSION)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True

        def write(dst: BinaryIO) -> None:
            dst.write(ITEMS_FIRST)
            if not drop:
                src.seek(start)
                shutil.copyfileobj(src, dst, _SCAN)
            else:
                for i, lines in enumerate(items(src, start)):
                    if i not in drop:
                        dst.writelines(lines)
            dst.write(VERSION)

        atomic_write(path, write)
    return True
