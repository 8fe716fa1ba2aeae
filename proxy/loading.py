"""A cassette being loaded: how far it got (for start-up progress on the console), and whether it fits.

Loading costs about ``MEMORY_PER_BYTE`` times the file's size in memory and ~2 s per 10,000
interactions: a 1,000,000-interaction cassette takes minutes. The command shows how far it got instead
of giving up after a fixed time, and a cassette that cannot fit in the memory left is refused at once,
saying why and what to do, instead of failing after minutes with ``MemoryError``.
"""

from __future__ import annotations

import resource
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from proxy.errors import CassetteError

MEMORY_PER_BYTE = 12
"""Peak bytes of memory per byte of cassette while loading (measured: 7 for Azure LRO recordings of
~850 bytes per interaction; small interactions cost more per byte)."""


@dataclass
class Loading:
    """One load in progress: bytes of the file parsed so far, then what is being done with them."""

    path: Path
    size: int
    read: int = 0
    stage: str = ""
    """Once the file is parsed: what is being done (``building 1,000,000 interactions``)."""

    def line(self, seconds: float) -> str:
        """What the console says about it, e.g. ``loading c.yaml (202 MB): 45 % read after 12 s``."""
        what = f"replay-proxy: loading {self.path} ({_mb(self.size)})"
        if self.stage:
            return f"{what}: {self.stage} after {seconds:.0f} s"
        share = 100 * self.read // self.size if self.size else 100
        return f"{what}: {share} % read after {seconds:.0f} s"


_lock = threading.Lock()
_current: list[Loading] = []


def current() -> Loading | None:
    """The load in progress (on any thread), the latest one started; None when none is."""
    with _lock:
        return _current[-1] if _current else None


@contextmanager
def tracking(path: Path, size: int, stage: str = "") -> Iterator[Loading]:
    """Make a load (or, with ``stage``, what is done with what it loaded) visible to ``current``."""
    state = Loading(path, size, stage=stage)
    with _lock:
        _current.append(state)
    try:
        yield state
    finally:
        with _lock:
            _current.remove(state)


class CountingReader:
    """A binary file whose reads are counted in ``state.read`` (the YAML parser pulls pieces of it)."""

    def __init__(self, f: BinaryIO, state: Loading) -> None:
        self._f = f
        self._state = state

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._state.read += len(data)
        return data


def check_fits(path: Path, size: int) -> None:
    """Refuse a cassette whose load would need more memory than is left (``MemAvailable``, and the
    address-space limit ``RLIMIT_AS`` when one is set), saying so and what to do."""
    need = size * MEMORY_PER_BYTE
    left = _memory_left()
    if left is None or need <= left:
        return
    raise CassetteError(
        f"{path}: too large to load here: a {_mb(size)} cassette needs about {_mb(need)} of memory "
        f"and {_mb(left)} is left; split it into smaller cassettes (one per test or scenario), "
        "or run where more memory is free"
    )


def _memory_left() -> int | None:
    """Bytes this process can still use, as far as it can tell; None when it cannot."""
    left: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                left.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            status = Path("/proc/self/status").read_text()
            used = next(int(x.split()[1]) * 1024 for x in status.splitlines() if x.startswith("VmSize:"))
        except (OSError, ValueError, StopIteration):
            used = 0
        left.append(max(0, soft - used))
    return min(left) if left else None


def _mb(size: int) -> str:
    if size >= 10 << 30:
        return f"{size / (1 << 30):.0f} GB"
    if size >= 1 << 30:
        return f"{size / (1 << 30):.1f} GB"
    return f"{max(1, round(size / (1 << 20)))} MB"
