"""Every code block of README.md and docs/*.md runs as written (tests/docs_runner.py says how).

A block is run (shell, transcripts, Python), checked (scenario YAML through ``check``), or compared
with what the commands before it printed (console and verdict samples). The few commands not run
here are named in SKIPPED with the reason, and a block no test covers fails
``test_every_block_is_covered``. Paths the prose names in backquotes must exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.scenario.loader import check_scenarios
from tests.docs_runner import (
    ROOT,
    Block,
    Session,
    blocks,
    check_output,
    script_of,
    substitute,
    transcript,
)

SKIPPED: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^uv run pytest\b"), "the test suite itself (CI runs it)"),
    (re.compile(r"^bash \.ci/run\b"), "CI itself"),
    (re.compile(r"^uv run ruff check"), "the linters (CI runs them)"),
    (re.compile(r"^apt-get install"), "installs a system package"),
    (
        re.compile(r"^uv run python benchmarks/run\.py"),
        "minutes of load (tests/test_benchmarks_smoke.py runs --quick)",
    ),
]
"""Commands the docs show that this test does not run, and why."""

SAVE_AS = re.compile(r"# ([\w.-]+\.ya?ml)\n")
ALL = blocks()
SHELL = [b for b in ALL if b.lang == "sh"]
SECTIONS = sorted({b.section for b in SHELL}, key=lambda s: next(b.line for b in ALL if b.section == s))
USED_SKIPS: set[str] = set()


def by_section(section: str) -> list[Block]:
    return [b for b in ALL if b.section == section]


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    s = Session(tmp_path)
    yield s
    s.stop()


@pytest.mark.parametrize("section", SECTIONS)
def test_shell_blocks_run_as_written(section: str, session: Session) -> None:
    """Each shell block of the section in order, transcripts compared line by line; the console
    samples that follow are what the proxy printed; every proxy started stops cleanly (exit 0)."""
    for block in by_section(section):
        saved_as = SAVE_AS.match(block.text) if block.lang == "yaml" else None
        if saved_as:  # "# name.yaml" on its first line: the reader saves the block under that name
            (session.work / saved_as[1]).write_text(block.text)
        elif block.lang == "sh" and block.is_transcript:
            for step in transcript(block):
                command = substitute(session.localize(step.command), session.bound)
                result = session.bash(command + "\n")
                assert result.returncode == 0, f"{block.id}: {command}\n{result.stdout}\n{result.stderr}"
                check_output([session.localize(e) for e in step.expected], result.stdout, session.bound)
        elif block.lang == "sh":
            result = session.bash(session.localize(script_of(block, SKIPPED, USED_SKIPS)))
            assert result.returncode == 0, f"{block.id}:\n{result.stdout}\n{result.stderr}"
        elif block.lang == "" and list(session.servers()):
            check_output(
                [session.localize(line) for line in block.text.splitlines() if line.strip() != "..."],
                session.console(),
                session.bound,
            )
    statuses = session.stop()
    assert all(rc == 0 for rc in statuses.values()), statuses


PRE_COMMIT = [b for b in ALL if b.lang == "yaml" and b.text.startswith("# .pre-commit-config.yaml\n")]
YAML = [b for b in ALL if b.lang == "yaml" and b not in PRE_COMMIT]


@pytest.mark.parametrize("block", YAML, ids=[b.id for b in YAML])
def test_scenario_blocks_pass_check(block: Block, tmp_path: Path) -> None:
    doc = yaml.safe_load(block.text)
    assert isinstance(doc, dict) and {"routes", "operations"} & set(doc), (
        f"{block.id}: a YAML block in the docs is a whole scenario (routes and/or operations)"
    )
    path = tmp_path / "scenarios" / "example.yaml"
    path.parent.mkdir()
    path.write_text(block.text)
    loaded, problems = check_scenarios([path])
    assert not problems, f"{block.id}: " + "\n".join(problems[0])
    assert loaded


@pytest.mark.parametrize("block", PRE_COMMIT, ids=[b.id for b in PRE_COMMIT])
def test_the_pre_commit_config_runs_lint_on_cassettes(block: Block, tmp_path: Path) -> None:
    """The README's `.pre-commit-config.yaml`: the hook is the shipped one (.pre-commit-hooks.yaml), and
    its entry, run as pre-commit runs it (the files its pattern takes as arguments), passes the shipped
    cassettes and fails on a cassette with a secret."""
    (hook,) = yaml.safe_load(block.text)["repos"][0]["hooks"]
    (shipped,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert (hook["id"], hook["files"]) == (shipped["id"], shipped["files"])
    assert hook["entry"] == "uv run " + shipped["entry"]
    session = Session(tmp_path)
    pattern = re.compile(hook["files"])

    def run_hook() -> subprocess.CompletedProcess[str]:
        files = [str(p.relative_to(session.work)) for p in sorted(session.work.rglob("*"))]
        taken = [f for f in files if pattern.search(f)]
        assert taken
        return session.bash(hook["entry"] + " " + " ".join(taken) + "\n")

    clean = run_hook()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    leaky = session.work / "cassettes" / "leaky.yaml"
    secret = "      Authorization:\n      - Bearer a-token-left-in-the-cassette\n"
    shipped_text = (session.work / "cassettes/azure-maps/tileset-succeeds.yaml").read_text()
    leaky.write_text(shipped_text.replace("      User-Agent:\n", secret + "      User-Agent:\n", 1))
    caught = run_hook()
    assert caught.returncode == 3, caught.stdout + caught.stderr
    assert "cassettes/leaky.yaml:" in caught.stdout and "request header Authorization" in caught.stdout


PYTHON = [b for b in ALL if b.lang == "python"]


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_blocks_run(block: Block, tmp_path: Path) -> None:
    """A block that is a test file runs under pytest; any other runs as a script. Both from the
    scratch copy of the repository, with examples/ importable as the README says."""
    session = Session(tmp_path)
    env = dict(session.env, PYTHONPATH=str(session.work / "examples"))
    if "def test_" in block.text:
        test_file = session.work / "test_from_docs.py"
        test_file.write_text(block.text)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)]
    else:
        script = session.work / "example_from_docs.py"
        script.write_text(block.text)
        cmd = [sys.executable, str(script)]
    result = subprocess.run(cmd, cwd=session.work, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{block.id}:\n{result.stdout}\n{result.stderr}"


def test_the_check_sample_is_what_check_prints(tmp_path: Path) -> None:
    """docs/scenarios.md shows one line of `check` output: a misspelt step key."""
    (sample,) = [b for b in ALL if b.lang == "" and "unknown key 'stauts'" in b.text]
    expected = sample.text.strip()
    line, column = map(int, expected.split(":")[1:3])
    scenario = [
        "name: x",
        "operations:",
        "  - start: {method: POST, path: /tilesets}",
        "    status-path: /tilesets/operations/{operationId}",
        "    steps:",
    ] + ["      - status: Running"] * (line - 6) + [" " * (column - 3) + "- stauts: Succeeded"]
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "x.yaml").write_text("\n".join(scenario) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "scenarios/x.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == expected


VERDICT_SAMPLE_SOURCE = '''
import pytest
from creator_client import NaiveCreatorClient


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-succeeds.yaml", retry_after=RETRY_AFTER)
def test_a_job_is_polled_patiently(replay_proxy):
    NaiveCreatorClient(base_url=replay_proxy.url).create_tileset("my-dataset")  # polls every 10 ms
'''


def test_the_verdict_sample_is_what_the_plugin_prints(tmp_path: Path) -> None:
    """The README's verdict sample is the teardown error of a client that ignores Retry-After."""
    (sample,) = [b for b in ALL if b.lang == "" and "replay-proxy verdict:" in b.text]
    retry_after = re.search(r"which said to wait ([0-9.]+) s", sample.text)
    assert retry_after, sample.text
    session = Session(tmp_path)
    (session.work / "test_sample.py").write_text(VERDICT_SAMPLE_SOURCE.replace("RETRY_AFTER", retry_after[1]))
    env = dict(session.env, PYTHONPATH=str(session.work / "examples"), COLUMNS="300")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sample.py"],
        cwd=session.work, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    check_output([line.strip() for line in sample.text.splitlines()],
                 "\n".join(line.strip().strip("_").strip() for line in result.stdout.splitlines()), {})


Call = tuple[str, str, dict[str, Any]]


def _console_of(tmp_path: Path, name: str, scenario: str, calls: list[Call]) -> str:
    """What `replay-proxy play NAME` prints on its console while answering ``calls``, from ``tmp_path``."""
    (tmp_path / name).write_text(scenario)
    env = dict(os.environ, PYTHONUNBUFFERED="1", REPLAY_PROXY_CONFDIR=str(tmp_path / "conf"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "play", name, "--port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[2]
        with httpx.Client(trust_env=False, timeout=10) as http:
            for method, path, kwargs in calls:
                http.request(method, url + path, **kwargs)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def test_the_no_match_and_scenario_error_samples_are_what_play_prints(tmp_path: Path) -> None:
    """docs/scenarios.md shows console lines of a no-match (jobs.yaml) and a scenario error (broken.yaml)."""
    from tests.test_play import NO_MATCH, TEMPLATE_ERROR

    markers = ("(NO MATCH: no scenario rule", "(SCENARIO ERROR")
    samples = [b for b in ALL if b.lang == "" and any(m in b.text for m in markers)]
    assert len(samples) == 2
    no_match = _console_of(
        tmp_path, "jobs.yaml", NO_MATCH,
        [("POST", "/jobs", {"json": {"kind": "test"}}), ("GET", "/jobs/operations/nope", {})],
    )
    check_output(samples[0].text.splitlines(), no_match, {})
    broken = _console_of(tmp_path, "broken.yaml", TEMPLATE_ERROR, [("POST", "/echo", {"json": {"a": 1}})])
    check_output(samples[1].text.splitlines(), broken, {})


def test_the_yaml_hint_sample_is_what_check_prints(tmp_path: Path) -> None:
    """docs/scenarios.md shows the hint for an unquoted {placeholder} in a flow mapping."""
    (sample,) = [b for b in ALL if b.lang == "" and "invalid YAML: did not find expected" in b.text]
    (tmp_path / "x.yaml").write_text("routes:\n  - match: {path: /jobs/{id}}\n    respond: {status: 200}\n")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "x.yaml"], cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == sample.text.strip()


COVERED_ELSEWHERE = {
    "(NO MATCH: no scenario rule": "test_the_no_match_and_scenario_error_samples_are_what_play_prints",
    "(SCENARIO ERROR": "test_the_no_match_and_scenario_error_samples_are_what_play_prints",
    "invalid YAML: did not find expected": "test_the_yaml_hint_sample_is_what_check_prints",
    "replay-proxy verdict:": "test_the_verdict_sample_is_what_the_plugin_prints",
    "unknown key 'stauts'": "test_the_check_sample_is_what_check_prints",
}


def test_every_block_is_covered() -> None:
    """Each block is run by a test above; a new kind of block needs a test before it lands."""
    uncovered = []
    for block in ALL:
        if block.lang in ("sh", "yaml", "python"):
            continue
        if block.lang == "" and any(s.section == block.section for s in SHELL):
            continue  # a console sample, compared with the section's proxy
        if any(key in block.text for key in COVERED_ELSEWHERE):
            continue
        uncovered.append(f"{block.id} ({block.lang or 'no language'})")
    assert not uncovered, "blocks no test runs: " + ", ".join(uncovered)


def test_every_skip_is_still_in_the_docs() -> None:
    used: set[str] = set()
    for block in SHELL:
        script_of(block, SKIPPED, used)
    assert used == {p.pattern for p, _ in SKIPPED}


PATH_IN_PROSE = re.compile(r"`((?:scenarios|cassettes|examples|docs|benchmarks|tests|proxy)/[^`\s*:]+)")
OUTPUTS = {"cassettes/tileset.yaml", "benchmarks/.work/"}
"""Paths the docs name as what a command writes, not as files the repository holds."""


def test_files_the_docs_name_exist() -> None:
    missing = []
    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        text = doc.read_text()
        for m in PATH_IN_PROSE.finditer(text):
            path = m.group(1).rstrip(".,:;)")
            if path not in OUTPUTS and not (ROOT / path).exists():
                missing.append(f"{doc.name}:{text[: m.start()].count(chr(10)) + 1}: {path}")
    assert not missing, missing
