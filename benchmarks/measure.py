"""Load and what it costs: wrk (or a small Python load generator when wrk is missing) and /proc figures.

``load(url, paths, connections, seconds)`` drives keep-alive GETs cycling through ``paths`` and returns
requests, req/s, p50/p99 latency and errors. ``ProcessTree`` reads a target's CPU time (user + system, its
own process and its children) and peak RSS (VmHWM) from /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LUA = Path(__file__).with_name("paths.lua")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class LoadResult:
    """One bounded load run: figures over ``seconds`` of keep-alive requests at ``connections``."""

    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    generator: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def load(url: str, paths: list[str], connections: int, seconds: float, generator: str = "auto") -> LoadResult:
    """Keep-alive GETs of ``paths`` (cycled) against ``url`` for ``seconds``; generator: auto|wrk|python."""
    if generator == "auto":
        generator = "wrk" if wrk_path() else "python"
    if generator == "wrk":
        return _wrk(url, paths, connections, seconds)
    return asyncio.run(_python_load(url, paths, connections, seconds))


def _wrk(url: str, paths: list[str], connections: int, seconds: float) -> LoadResult:
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk), use --loadgen python")
    with tempfile.NamedTemporaryFile("w", suffix=".paths", delete=False) as f:
        f.write("\n".join(paths) + "\n")
    try:
        duration = max(1, round(seconds))
        proc = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(LUA), url],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            env=dict(os.environ, BENCH_PATHS=f.name),
        )
    finally:
        os.unlink(f.name)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(
            f"wrk gave no figures (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout}"
        )
    figures = json.loads(line[6:])
    elapsed = figures["duration_us"] / 1e6
    errors = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        connections,
        round(elapsed, 3),
        figures["requests"],
        round(figures["requests"] / elapsed, 1) if elapsed else 0.0,
        round(figures["p50_us"] / 1000, 3),
        round(figures["p99_us"] / 1000, 3),
        errors,
        "wrk",
    )


async def _python_load(url: str, paths: list[str], connections: int, seconds: float) -> LoadResult:
    """The fallback generator: ``connections`` asyncio keep-alive clients; slower than wrk (it shows)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    heads = [f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode() for p in paths]
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal errors
        i = offset
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < end:
                began = time.perf_counter()
                writer.write(heads[i % len(heads)])
                i += 1
                status, length, close = await _read_head(reader)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - began)
                if status >= 400:
                    errors += 1
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(connections)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return LoadResult(
        connections,
        round(elapsed, 3),
        len(latencies),
        round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        round(_percentile(latencies, 50) * 1000, 3),
        round(_percentile(latencies, 99) * 1000, 3),
        errors,
        "python",
    )


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            close = True
        elif name == "transfer-encoding":
            raise ValueError("chunked responses are not supported by the fallback load generator")
    return status, length, close


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


class ProcessTree:
    """A target's process and its descendants, read from /proc: CPU seconds so far and peak RSS."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _read(f"/proc/{entry}/stat")
                if stat:
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            stat = _read(f"/proc/{pid}/stat")
            if stat:
                fields = stat.rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / CLK_TCK

    def peak_rss_mib(self) -> float:
        total_kib = 0
        for pid in self.pids():
            for line in (_read(f"/proc/{pid}/status") or "").splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
        return round(total_kib / 1024, 1)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
