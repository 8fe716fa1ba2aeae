"""Disk trouble while recording through `replay-proxy record` (the real command, a subprocess): a cassette
directory that takes no new files, a disk that fills up. Never a silent loss: a clear error naming the file
and the cause, at start (exit status 2) or at the first write that fails (the client gets a 500 saying so,
the console says so even with -q, nothing more is forwarded, and the command exits 2).

How the trouble is made, as root too (these tests run as root here, and root ignores permission bits):

* a directory that refuses new files: ``chattr +i`` (immutable; refuses root as well) when root, else
  ``chmod 555``. The fixture checks that creating a file there really fails before the test relies on it.
  (A path whose parent is a regular file is tests/test_cli.py's ``record-parent-is-a-file`` mistake.)
* a full disk: ``RLIMIT_FSIZE`` set on the running proxy with ``resource.prlimit``: a write past the
  limit fails with EFBIG ("File too large"; Python ignores SIGXFSZ), the same path through the code as
  ENOSPC. A tiny tmpfs would need root and mount(2), and leave a mount behind a killed test.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import run_cli
from tests.reliability.traffic import Exchange, body_for, saved, sha
from tests.upstream import Upstream

TIMEOUT = 10
ROOT = os.geteuid() == 0


@pytest.fixture
def lock_dir() -> Iterator[Callable[[Path], str]]:
    """``lock(directory)`` makes it refuse new files (see the module docstring); returns the error's text."""
    locked: list[Path] = []

    def lock(directory: Path) -> str:
        if ROOT:
            subprocess.run(["chattr", "+i", str(directory)], check=True, capture_output=True, timeout=10)
        else:
            directory.chmod(0o555)
        locked.append(directory)
        try:
            (directory / ".probe").touch()
        except OSError as e:
            return str(e.strerror)
        raise AssertionError(f"{directory} still takes new files: the test would prove nothing")

    yield lock
    for directory in locked:
        if ROOT:
            subprocess.run(["chattr", "-i", str(directory)], check=True, capture_output=True, timeout=10)
        else:
            directory.chmod(0o755)


def _full_disk(proc: Any, size: int) -> str:
    """Let the running proxy write files of at most ``size`` bytes; returns the error's text."""
    resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (size, size))
    return os.strerror(27)  # EFBIG: "File too large"


def _post(s: requests.Session, url: str, ident: str) -> tuple[requests.Response, Exchange]:
    body = body_for(ident, 600)
    r = s.post(f"{url}/echo?id={ident}", data=body, timeout=TIMEOUT)
    return r, Exchange(ident, sha(body), sha(r.content))


def _refusal(r: requests.Response) -> str:
    """The message of the proxy's record-failed answer (asserting it is one)."""
    assert r.status_code == 500, r.text
    assert r.headers["X-Replay-Proxy"] == "record-failed"
    message = json.loads(r.content)["error"]["message"]
    assert isinstance(message, str)
    return message


def test_directory_refusing_files_is_an_error_at_start(
    lock_dir: Callable[[Path], str], confdir: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "cassettes"
    directory.mkdir()
    cause = lock_dir(directory)
    path = directory / "c.yaml"
    ran = run_cli(["record", "http://127.0.0.1:9", "-o", str(path), "--port", "0"], confdir)
    assert ran.returncode == 2
    assert ran.stdout == ""  # it never said it was ready
    why = f"cassette is not writable: cannot create a file in {directory}: {cause}"
    assert ran.stderr == f"replay-proxy: error: {path}: {why}\n"
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("trouble", ["disk full", "directory locked after start"])
def test_first_write_failing_is_said_to_the_client_and_the_console(
    cli: Any, upstream: Upstream, lock_dir: Callable[[Path], str], tmp_path: Path, trouble: str
) -> None:
    directory = tmp_path / "cassettes"
    directory.mkdir()
    path = directory / "c.yaml"
    proc = cli(["record", upstream.url, "-o", str(path), "--port", "0", "-q"])
    cause = _full_disk(proc, 64) if trouble == "disk full" else lock_dir(directory)
    try:
        with requests.Session() as s:
            first, _ = _post(s, proc.url, "first")
            second, _ = _post(s, proc.url, "second")
    finally:
        rc = proc.stop()
    expected = f"{path}: cannot write cassette: {cause}"
    assert expected in _refusal(first)
    assert expected in _refusal(second)
    assert len(upstream.requests) == 1  # after the failure nothing more is forwarded
    assert rc == 2
    lines = proc.stderr_lines  # -q, and still:
    assert lines[0] == f"replay-proxy: error: {expected}", proc.stderr
    assert lines[-1] == f"replay-proxy: error: not everything was saved: {expected}", proc.stderr
    assert list(directory.iterdir()) == []  # nothing half-made: no cassette, no temp file


def test_disk_filling_up_mid_session_keeps_what_was_answered(
    cli: Any, upstream: Upstream, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    proc = cli(["record", upstream.url, "-o", str(path), "--port", "0", "-q"])
    cause = _full_disk(proc, 12_000)  # room for a few exchanges of ~2.5 KB
    answers: list[requests.Response] = []
    got: dict[str, Exchange] = {}
    try:
        with requests.Session() as s:
            for n in range(12):
                r, exchange = _post(s, proc.url, f"n{n:02d}")
                answers.append(r)
                if r.status_code == 200:
                    got[exchange.id] = exchange
    finally:
        rc = proc.stop()
    statuses = [r.status_code for r in answers]
    kept = len(got)
    assert 1 <= kept < 12 and statuses == [200] * kept + [500] * (12 - kept), statuses
    expected = f"{path}: cannot append to cassette: {cause}"
    assert all(expected in _refusal(r) for r in answers[kept:])
    assert len(upstream.requests) == kept + 1  # the one that could not be saved, then nothing
    assert rc == 2
    assert proc.stderr_lines[0] == f"replay-proxy: error: {expected}", proc.stderr
    assert proc.stderr_lines[-1].startswith("replay-proxy: error: not everything was saved: "), proc.stderr
    assert saved(path) == got  # vcrpy loads it: what was answered, intact; nothing of the rest
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]
    print(
        f"\ndisk full after {kept} exchanges ({path.stat().st_size} bytes): "
        f"{12 - kept} answered 500, {len(upstream.requests)} forwarded"
    )
