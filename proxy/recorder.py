"""Upstream exchange -> redaction -> cassette on disk, as it happens.

Each exchange is appended to the cassette file in one write, so a killed proxy loses only the exchanges
in flight; at a clean stop the file is rewritten once in vcrpy's canonical layout.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.cassette import CassetteWriter
from proxy.errors import CassetteError
from proxy.matching import Matcher
from proxy.model import Interaction
from proxy.redact import Redactor
from proxy.router import RecordMode


class Recorder:
    """Saves recorded interactions to one cassette, following vcrpy's record-mode rules on save."""

    def __init__(
        self,
        path: Path,
        *,
        loaded: Sequence[Interaction],
        record_mode: RecordMode,
        matcher: Matcher,
        redactor: Redactor,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.loaded = list(loaded)
        self.extra = extra or {}
        """The loaded cassette's top-level keys besides version and interactions: kept in the file."""
        self.record_mode = record_mode
        self.matcher = matcher
        self.redactor = redactor
        self.recorded: list[Interaction] = []
        self._lock = threading.Lock()
        self._writer: CassetteWriter | None = None  # opened on the first exchange: no exchange, no write
        self.failure: str | None = None
        """Why the last save failed (disk full, directory not writable); then nothing more is saved."""
        _check_writable(path)

    def record(self, interaction: Interaction) -> int:
        """Redact and save one exchange; returns its 1-based number in the cassette file.

        Raises CassetteError when it cannot be saved, and again for every later exchange: a cassette with
        a hole in the middle would replay a session that never happened.
        """
        saved = self.redactor.interaction(
            Interaction(self.matcher.prepare(interaction.request), interaction.response)
        )  # vcrpy's filters (--filter-query-parameter, --filter-header) first, as vcrpy records
        with self._lock:
            if self.failure is not None:
                raise CassetteError(self.failure)
            try:
                if self._writer is None:
                    self._writer = CassetteWriter(self.path, self.loaded, self.extra)
                self._writer.append(saved)
            except CassetteError as e:
                self.failure = str(e)
                raise
            self.recorded.append(saved)
            return len(self.loaded) + len(self.recorded)

    def final(self) -> list[Interaction]:
        """What the cassette holds at the end; in ``all`` mode new recordings replace old ones they match."""
        with self._lock:
            recorded = list(self.recorded)
        if self.record_mode is not RecordMode.ALL:
            return self.loaded + recorded
        keys = {self.matcher.key(self.redactor.for_matching(i.request)) for i in recorded}
        kept = [
            old
            for old in self.loaded
            if self.matcher.key(self.redactor.for_matching(old.request)) not in keys
            or not any(
                self.matcher.matches(
                    self.redactor.for_matching(old.request), self.redactor.for_matching(new.request)
                )
                for new in recorded
            )
        ]
        return kept + recorded

    def close(self) -> None:
        """Rewrite the cassette once, canonically (only if anything was recorded)."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close(self.final())


def _check_writable(path: Path) -> None:
    """Fail at start, not at the first exchange, when the cassette cannot be written."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a directory" if blocker is not None else (e.strerror or e)
        raise CassetteError(f"{path}: cannot create the cassette's directory: {why}") from e
    probe = parent / f".{path.name}.{secrets.token_hex(6)}.probe"
    try:  # try it rather than ask os.access: it also sees read-only mounts and immutable directories
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise CassetteError(
            f"{path}: cassette is not writable: cannot create a file in {parent}: {e.strerror or e}"
        ) from None
    if path.exists() and not os.access(path, os.W_OK):
        raise CassetteError(f"{path}: cassette is not writable: permission denied")
