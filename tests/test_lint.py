"""``replay-proxy lint``: secrets left in cassettes, found with file:line, never printed whole."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from proxy import cassette
from proxy.lint import random_looking
from proxy.model import Interaction, Request, Response
from proxy.server import ReplayProxy
from tests.conftest import ROOT
from tests.upstream import Upstream

GITHUB = "ghp_" + "Zq8Xv2Lm4Np6Rs1Tu3Wy5Ab7Cd9Ef0Gh2Ij"
RANDOM_HEADER = "Qm9vbGVhbjEyMzQ1Njc4OTBhYmNkZWZnaGlqa2xtbm9w"
RANDOM_PATH = "x7Kq2LmN9pQrS4tUvW8yZa3B"
RANDOM_JSON = "tR5uV7wX9yZ1aB3cD5eF7gH9iJ"
BEARER = "s3cr3t-bearer-for-lint-0a1b"


def lint(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "lint", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def leaky(path: Path) -> Path:
    request = Request(
        "GET",
        f"https://api.example.test/v1/items/{RANDOM_PATH}?api-version=1&api-key=k3y-in-the-url-77",
        (
            ("Authorization", f"Bearer {BEARER}"),
            ("x-ms-client-request-id", "0b4a3f2e-7c1d-4e5f-9a8b-1c2d3e4f5a6b"),
        ),
    )
    body = {
        "id": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "operationId": "976e968d-07f9-4aa8-8de9-c9c3f1f21fb9",
        "nested": {"password": "hunter2-for-lint", "note": f"token is {GITHUB}"},
        "value": RANDOM_JSON,
        "accessToken": "redacted",
        "continuationToken": "eyZ3Qm9vbGVhbjEyMzQ1Njc4OTBhYmNkZWZnaGlq",
        "title": "A perfectly ordinary sentence with Words123 in it",
    }
    response = Response(
        200,
        "OK",
        (("Content-Type", "application/json"), ("X-Thing", RANDOM_HEADER), ("ETag", '"0x8DC2B4F5E6A7B8C"')),
        json.dumps(body, indent=1).encode(),
    )
    cassette.save(path, [Interaction(request, response)])
    return path


def line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_each_kind_of_secret_is_found_where_it_is(tmp_path: Path) -> None:
    path = leaky(tmp_path / "leaky.yaml")
    result = lint("leaky.yaml", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    expected = [
        (line_of(path, "Bearer"), "interaction #1 request header Authorization: a secret the redaction"),
        (line_of(path, "k3y-in-the-url"), "interaction #1 request URL query parameter api-key: a secret the"),
        (line_of(path, RANDOM_PATH), "interaction #1 request URL: a high-entropy token"),
        (line_of(path, "hunter2"), "interaction #1 response JSON $.nested.password: a secret the redaction"),
        (line_of(path, GITHUB), "interaction #1 response JSON $.nested.note: a secret the redaction rules"),
        (line_of(path, RANDOM_HEADER), "interaction #1 response header X-Thing: a high-entropy token"),
        (line_of(path, RANDOM_JSON), "interaction #1 response JSON $.value: a high-entropy token"),
    ]
    for line, text in expected:
        assert any(found.startswith(f"leaky.yaml:{line}: {text}") for found in lines), (line, text, lines)
    assert len(lines) == len(expected), lines
    for secret in (GITHUB, RANDOM_HEADER, RANDOM_PATH, RANDOM_JSON, BEARER, "hunter2-for-lint"):
        assert secret not in result.stdout + result.stderr  # never printed whole
    assert "replay-proxy lint: 7 findings in 1 cassette" in result.stderr


def test_allow_leaves_a_name_out(tmp_path: Path) -> None:
    leaky(tmp_path / "leaky.yaml")
    result = lint("leaky.yaml", "--allow", "x-thing", "--allow", "value", cwd=tmp_path)
    assert "X-Thing" not in result.stdout and "$.value" not in result.stdout
    assert result.returncode == 3  # the rest is still there


def test_the_shipped_cassettes_are_clean() -> None:
    result = lint(*(str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("cassettes/**/*.yaml"))))
    assert (result.returncode, result.stdout) == (0, "")


KNOWN_CORPUS_FINDINGS = {
    # real values from the public repositories the corpus comes from (tests/corpus/SOURCES.md), harmless:
    # Twitter's guest_id / personalization_id / lang cookies (the redaction rules hide every cookie value)
    ("tweepy", "response header set-cookie"),
    # a Cloudflare network-error-logging report URL signed with ?s=... in httpbin's Report-To header
    ("vcrpy", "response header Report-To"),
    # Replicate's Cloudflare/Heroku error-report endpoints (Report-To, reporting-endpoints) and the public
    # URL of the prediction's output image on replicate.delivery
    ("replicate", "response header Report-To"),
    ("replicate", "response header report-to"),
    ("replicate", "response header reporting-endpoints"),
    ("replicate", "response JSON $.output[0]"),
}


def test_the_corpus_findings_are_the_known_real_ones() -> None:
    files = sorted(p for p in ROOT.glob("tests/corpus/*/*") if p.suffix in (".yaml", ".yml", ".json"))
    result = lint(*(str(p.relative_to(ROOT)) for p in files))
    assert result.returncode == 3
    found = set()
    for line in result.stdout.splitlines():
        m = re.match(r"tests/corpus/(\w+)/[^:]+:\d+: interaction #\d+ ([^:]+): ", line)
        assert m, line
        found.add((m[1], m[2]))
    assert found == KNOWN_CORPUS_FINDINGS


def test_a_cassette_the_proxy_records_with_secrets_is_clean(tmp_path: Path) -> None:
    """What the redaction rules hide at save time, lint finds nothing of: the two agree."""
    path = tmp_path / "recorded.yaml"
    with Upstream() as up, ReplayProxy(path, upstream=up.url) as p:
        http = requests.Session()
        http.trust_env = False
        auth = {"Authorization": f"Bearer {GITHUB}"}
        http.get(p.url + "/echo?sig=" + RANDOM_JSON, headers=auth, timeout=10)
        http.get(p.url + "/cookies", timeout=10)
    assert GITHUB not in path.read_text()
    result = lint(str(path))
    assert (result.returncode, result.stdout) == (0, ""), result.stdout


def test_an_unreadable_cassette_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("interactions: [\n")
    result = lint("bad.yaml", "missing.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "replay-proxy: error: bad.yaml:" in result.stderr
    assert "replay-proxy: error: missing.yaml: cassette not found" in result.stderr


@pytest.mark.parametrize(
    ("token", "random"),
    [
        (RANDOM_HEADER, True),
        # Azurite's well-known storage account key
        ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==", True),
        ("976e968d-07f9-4aa8-8de9-c9c3f1f21fb9", False),  # a UUID
        ("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b", False),  # a hash
        ("PytestHTTPServer/0.1.0", False),  # written by a person
        ("python-requests/2.34.2", False),
        ("<REDACTED-1>ABCDEFGHIJKLMNOPQRSTUV12", False),
        # an ARM status URL's job id: base64 of {"jobId": "...", "jobLocation": "westus"}
        ("eyJqb2JJZCI6IlJFU09VUkNFR1JPVVBERUxFVElPTkpPQi1URVNUMSIsImpvYkxvY2F0aW9uIjoid2VzdHVzIn0", False),
    ],
)
def test_what_looks_random(token: str, random: bool) -> None:
    assert random_looking(token) is random


def test_the_pre_commit_hook_runs_lint_on_cassettes(tmp_path: Path) -> None:
    """.pre-commit-hooks.yaml: its entry is this command, its files pattern takes cassettes only."""
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "replay-proxy-lint" and hook["entry"] == "replay-proxy lint"
    files = re.compile(hook["files"])
    assert files.search("cassettes/azure-maps/tileset-succeeds.yaml")
    assert files.search("tests/cassettes/test_x/one.json")
    assert not files.search("scenarios/azure-maps/tileset-succeeds.yaml")
    (tmp_path / "cassettes").mkdir()
    leaky(tmp_path / "cassettes" / "leaky.yaml")
    result = lint("cassettes/leaky.yaml", cwd=tmp_path)
    assert result.returncode == 3  # what fails the commit
