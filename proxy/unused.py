"""Recorded interactions loaded for replay but never played: which, and where they are in their files.

The addon counts, per cassette, which interactions a session played (``Usage``); a cassette used by
several sessions (the pytest plugin switches per test) counts every play of any of them. ``--report``
and the pytest plugin's terminal summary print ``format_unused``; ``replay-proxy prune`` drops them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

COMPOSE_LIMIT = 32 << 20
"""Bytes up to which a cassette in an unusual layout is composed (slowly) to find its items' lines."""


@dataclass(frozen=True, slots=True)
class CassetteUse:
    """One cassette loaded for replay: its absolute path, each interaction's ``METHOD URI``, what was
    played (0-based indices)."""

    path: str
    requests: tuple[str, ...]
    played: frozenset[int]

    @property
    def unplayed(self) -> list[int]:
        return [i for i in range(len(self.requests)) if i not in self.played]


class Usage:
    """Which interactions of each cassette loaded for replay were played, over any number of sessions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, tuple[str, ...]] = {}
        self._played: dict[str, set[int]] = {}

    def add(
        self, path: str, count: int, requests: Callable[[], Sequence[str]], played: Iterable[int]
    ) -> None:
        """Count a session of cassette ``path``: ``count`` interactions loaded (``requests()`` gives each
        one's ``METHOD URI``, asked for only when the cassette is new here), the indices it played."""
        with self._lock:
            known = self._requests.get(path)
            if known is None or len(known) != count:  # first seen, or changed on disk since
                self._requests[path] = tuple(requests())
                self._played[path] = set()
            self._played[path].update(i for i in played if i < count)

    def uses(self) -> list[CassetteUse]:
        with self._lock:
            return [CassetteUse(p, r, frozenset(self._played[p])) for p, r in self._requests.items()]


def shown_path(path: str) -> str:
    """``path`` relative to the working directory when under it (as a user typed it), else as it is."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else path
    except (OSError, ValueError):
        return path


def format_unused(uses: Sequence[CassetteUse], limit: int | None = None) -> str:
    """The listing: per cassette with unplayed interactions, how many, then each as ``file:line: #N
    METHOD URI`` (``limit`` per cassette, None: all); "" when every loaded interaction was played."""
    out: list[str] = []
    for use in uses:
        unplayed = use.unplayed
        if not unplayed:
            continue
        path = shown_path(use.path)
        total = len(use.requests)
        if len(unplayed) == total:
            out.append(f"  {path}: none of its {total} interactions played (the cassette is unused)")
        else:
            out.append(f"  {path}: {len(unplayed)} of {total} interactions never played")
        lines = interaction_lines(Path(use.path), total)
        shown = unplayed if limit is None else unplayed[:limit]
        for i in shown:
            where = f"{path}:{lines[i]}" if lines is not None else f"{path} interaction"
            out.append(f"    {where}: #{i + 1} {use.requests[i]}")
        if len(shown) < len(unplayed):
            out.append(f"    (and {len(unplayed) - len(shown)} more)")
    if not out:
        return ""
    return "Recorded interactions loaded but never played (`replay-proxy prune` drops them):\n" + "\n".join(
        out
    )


# -- where each interaction is in its file -----------------------------------------------------------------


def block_items(lines: Sequence[str]) -> tuple[list[int], int] | None:
    """In a YAML cassette whose ``interactions`` is a block list (what vcrpy and the proxy write): the
    0-based index of each item's first line and of the line after the last item; None for another layout.

    Items are the lines that start with the list's ``- `` at its indentation; the list ends at the first
    line (not blank, not a comment) indented less than its items' contents.
    """
    try:
        top = next(i for i, line in enumerate(lines) if line.rstrip() == "interactions:")
    except StopIteration:
        return None
    starts: list[int] = []
    indent: str | None = None
    end = len(lines)
    for i in range(top + 1, len(lines)):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if indent is None:
            if not line.lstrip().startswith("- ") and line.strip() != "-":
                return None
            indent = line[: len(line) - len(line.lstrip())]
        if line.startswith(indent + "- ") or line.rstrip() == indent + "-":
            starts.append(i)
        elif line.startswith(indent + " "):
            continue
        else:
            end = i
            break
    return (starts, end) if starts else None


def json_items(lines: Sequence[str]) -> tuple[list[int], int] | None:
    """The same for vcrpy's JSON layout (``json.dumps(indent=4)``): items open with a line ``        {``."""
    try:
        top = next(i for i, line in enumerate(lines) if line.rstrip() == '    "interactions": [')
    except StopIteration:
        return None
    starts = []
    for i in range(top + 1, len(lines)):
        line = lines[i].rstrip()
        if line == "        {":
            starts.append(i)
        elif line in ("    ]", "    ],"):
            return (starts, i) if starts else None
    return None


def interaction_lines(path: Path, expected: int) -> list[int] | None:
    """The 1-based line of each of the cassette's ``expected`` interactions; None when it cannot be told
    (the file changed since it was loaded, or it cannot be read)."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    lines = text.splitlines()
    found = json_items(lines) if text.lstrip().startswith("{") else block_items(lines)
    if found is not None and len(found[0]) == expected:
        return [i + 1 for i in found[0]]
    if len(text) > COMPOSE_LIMIT:
        return None
    from proxy.cassette import _composable

    try:
        root = yaml.compose(_composable(path) or text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception:
        return None
    if not isinstance(root, yaml.MappingNode):
        return None
    items = next((v for k, v in root.value if getattr(k, "value", None) == "interactions"), None)
    if not isinstance(items, yaml.SequenceNode) or len(items.value) != expected:
        return None
    return [node.start_mark.line + 1 for node in items.value]
