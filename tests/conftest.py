"""Shared fixtures: loopback upstreams and a way to run the command line as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.creator_service import CreatorService
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture
def creator() -> Iterator[CreatorService]:
    service = CreatorService(running_polls=2, retry_after=1).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA for the whole test session (creating it costs ~0.1 s)."""
    return tmp_path_factory.getbasetemp() / "replay-proxy-conf"


class Cli:
    """`replay-proxy ...` in a subprocess: started, its URL read from the ready line, stopped by a signal."""

    def __init__(self, args: list[str], confdir: Path) -> None:
        env = dict(os.environ, REPLAY_PROXY_CONFDIR=str(confdir), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.stderr_lines: list[str] = []
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self.url = ""
        self.ready_line = ""
        timer = threading.Timer(30, self.proc.kill)
        timer.start()
        try:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        self.ready_line = line.strip()
        for word in self.ready_line.split():
            if word.startswith("http://"):
                self.url = word
                break

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._stderr_thread.join(5)
        return rc

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)


@pytest.fixture
def cli(confdir: Path) -> Iterator[type[Cli]]:
    started: list[Cli] = []

    class _Cli(Cli):
        def __init__(self, args: list[str], confdir: Path = confdir) -> None:
            super().__init__(args, confdir)
            started.append(self)

    yield _Cli
    for c in started:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(10)


def run_cli(args: list[str], confdir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command that ends by itself (errors, `ca`, `--help`)."""
    env = dict(os.environ, REPLAY_PROXY_CONFDIR=str(confdir))
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )
