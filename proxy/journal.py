"""What the client did: one entry per exchange, and the console line that shows it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and what answered it.

    ``source`` is ``"upstream"``, ``"cassette"``, ``"no-match"`` or ``"error"``; ``detail`` says more
    (``"#3"``, ``"#3, repeated"``, ``"recorded as #7"``, the upstream error ...).
    """

    method: str
    url: str
    path: str
    status: int | None
    source: str
    detail: str = ""
    time: float = field(default_factory=time.time)

    def line(self) -> str:
        """The console line: method, path, status, what answered."""
        status = str(self.status) if self.status is not None else "---"
        answered = {
            "upstream": "upstream",
            "cassette": "cassette interaction",
            "no-match": "NO MATCH",
            "error": "upstream FAILED",
        }.get(self.source, self.source)
        separator = ": " if self.source in ("no-match", "error") else " "
        detail = f"{separator}{self.detail}" if self.detail else ""
        return f"{self.method} {self.path} -> {status} ({answered}{detail})"


class Journal:
    """A thread-safe, append-only list of exchanges, with an optional listener per entry."""

    def __init__(self, listener: Callable[[Exchange], None] | None = None) -> None:
        self._entries: list[Exchange] = []
        self._lock = threading.Lock()
        self.listener = listener

    def add(self, exchange: Exchange) -> None:
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
