"""Upstream exchange -> redaction -> cassette on disk, as it happens.

Each exchange is appended to the cassette file in one write, so a killed proxy loses only the exchanges
in flight; the file is the only copy (memory stays bounded), and at a clean stop it is made canonical
(vcrpy's layout) by streaming it from disk (proxy/cassette_stream.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from proxy.cassette import CassetteWriter, load, recording_marker, save
from proxy.errors import CassetteError
from proxy.matching import Matcher
from proxy.model import Interaction
from proxy.redact import Redactor
from proxy.router import RecordMode


class Recorder:
    """Saves recorded interactions to one cassette, following vcrpy's record-mode rules on save.

    The cassette file is the only copy of what was recorded: memory stays bounded however long the
    recording. In ``all`` mode the old interactions that new ones replace are noted as they are recorded
    (their numbers, at most one per old interaction) and left out when the file is made canonical.
    """

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
        self.count = 0
        """How many exchanges were saved."""
        self.replaced: set[int] = set()
        """``all`` mode: the (0-based) old interactions that a new one matches, left out at the stop."""
        self._old_keys: dict[Hashable, list[int]] = {}
        """``all`` mode: the old interactions by matcher key, built now (seconds for 100,000: not at the
        first exchange, while clients wait)."""
        if record_mode is RecordMode.ALL:
            for i, old in enumerate(self.loaded):
                key = matcher.key(redactor.for_matching(old.request))
                self._old_keys.setdefault(key, []).append(i)
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
                    self._writer = CassetteWriter.extending(self.path, self.loaded, self.extra)
                self._writer.append(saved)
            except CassetteError as e:
                self.failure = str(e)
                raise
            self.count += 1
            if self.record_mode is RecordMode.ALL and self.loaded:
                self._note_replaced(saved)
            return len(self.loaded) + self.count

    def _note_replaced(self, saved: Interaction) -> None:
        """``all`` mode: an old interaction that ``saved`` matches is replaced by it (vcrpy's rule)."""
        new = self.redactor.for_matching(saved.request)
        for i in self._old_keys.get(self.matcher.key(new), ()):
            if i not in self.replaced and self.matcher.matches(
                self.redactor.for_matching(self.loaded[i].request), new
            ):
                self.replaced.add(i)

    def close(self) -> None:
        """Make the cassette canonical (only if anything was recorded), streaming it from disk."""
        with self._lock:
            writer, self._writer = self._writer, None
            replaced = set(self.replaced)
        if writer is None:
            return
        if not writer.finish(replaced):  # not a layout it streams (JSON, other top-level keys), or changed
            kept = [x for i, x in enumerate(load(self.path)) if i not in replaced]
            save(self.path, kept, self.extra)
            with contextlib.suppress(FileNotFoundError):
                recording_marker(self.path).unlink()


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
