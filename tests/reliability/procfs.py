"""A process's memory as Linux reports it (/proc/PID/status): the proxy under test is its own process."""

from __future__ import annotations

from pathlib import Path


def memory(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak so far) of a process, in bytes; neither for a zombie."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found
