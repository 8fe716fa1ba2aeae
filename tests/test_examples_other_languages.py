"""The control API's Node and Java examples (examples/node/, examples/java/) run as a user runs them:
each starts `replay-proxy serve`, switches scenarios per test through the control API, runs a small
client of the seed API and fails on the verdict. Skipped, with the reason, when node or java is absent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

NODE = shutil.which("node")
JAVA = shutil.which("java")


def run(argv: list[str], confdir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, REPLAY_PROXY=f"{sys.executable} -m proxy", REPLAY_PROXY_CONFDIR=str(confdir))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NODE_OPTIONS"):
        env.pop(name, None)
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(NODE is None, reason="node (Node.js >= 18, for node:test and fetch) is not installed")
def test_the_node_example_suite_passes(confdir: Path) -> None:
    assert NODE is not None
    result = run([NODE, "--test", "examples/node/"], confdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# pass 5" in result.stdout and "# fail 0" in result.stdout


@pytest.mark.skipif(JAVA is None, reason="java (JDK >= 11, for single-file programs and java.net.http)")
def test_the_java_example_test_passes(confdir: Path) -> None:
    assert JAVA is not None
    result = run([JAVA, "examples/java/CreatorTest.java"], confdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok: ") == 4 and "all tests passed" in result.stdout
