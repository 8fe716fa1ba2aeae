"""The ``replay-proxy`` command line as a user runs it: ready line, console lines, signals, mistakes, help.

Every proxy here is a subprocess of ``python -m proxy`` (the ``cli`` and ``run_cli`` fixtures) talking to real
loopback servers; every client call and every subprocess wait has a timeout.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from vcr.cassette import Cassette

from proxy import __version__
from proxy.cassette import dumps, load, save
from proxy.cli import build_parser
from proxy.model import Interaction, Request, Response
from tests.conftest import ENGINES, ROOT, run_cli
from tests.upstream import BINARY, Upstream

TIMEOUT = 10
URL_RE = re.compile(r"http://127\.0\.0\.1:(\d+)")
ERROR_PREFIX = "replay-proxy: error:"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _first_url(ready_line: str) -> tuple[str, int]:
    """The first loopback URL on the ready line, and its port."""
    m = URL_RE.search(ready_line)
    assert m is not None, ready_line
    return m.group(0), int(m.group(1))


def _cassette(path: Path) -> Path:
    """A one-interaction cassette: GET http://api.test/hello -> 200 {"hello": "cassette"}."""
    body = b'{"hello": "cassette"}'
    save(
        path,
        [
            Interaction(
                Request("GET", "http://api.test/hello", (("Accept", "*/*"),)),
                Response(
                    200,
                    "OK",
                    (("Content-Type", "application/json"), ("Content-Length", str(len(body)))),
                    body,
                ),
            )
        ],
    )
    return path


def _vcrpy_uris(path: Path) -> list[str]:
    cassette = Cassette.load(path=str(path), record_mode="none")
    return [r.uri for r in cassette.requests]


def _exchange_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " -> " in line]


# ----------------------------------------------------------------------------- 1. the ready line


def test_ready_line_port_zero_names_the_proxy_first(cli: Any, upstream: Upstream, tmp_path: Path) -> None:
    """Recording an http upstream puts two URLs on the line: the proxy's must be the first one."""
    proc = cli(["record", upstream.url, "-o", str(tmp_path / "c.yaml"), "--port", "0"])
    try:
        url, port = _first_url(proc.ready_line)
        assert port != 0
        assert url != upstream.url, proc.ready_line
        assert proc.url == url  # what the conftest fixture (and a script) takes: the first http:// word
        assert upstream.url in proc.ready_line and str(tmp_path / "c.yaml") in proc.ready_line
        r = requests.get(f"{url}/json?a=1", timeout=TIMEOUT)
    finally:
        assert proc.stop() == 0
    assert r.status_code == 200
    assert r.json() == {"hello": "world", "query": {"a": ["1"]}}
    assert len(upstream.requests) == 1  # it went through the proxy to the upstream, once


def test_ready_line_replay_fixed_port(cli: Any, tmp_path: Path) -> None:
    path = _cassette(tmp_path / "c.yaml")
    port = _free_port()
    proc = cli(["replay", str(path), "--port", str(port)])
    try:
        url, shown = _first_url(proc.ready_line)
        r = requests.get(f"http://127.0.0.1:{port}/hello", timeout=TIMEOUT)
    finally:
        assert proc.stop() == 0
    assert shown == port
    assert url == f"http://127.0.0.1:{port}"
    assert proc.ready_line.startswith("replay-proxy "), proc.ready_line
    assert str(path) in proc.ready_line
    assert r.status_code == 200 and r.json() == {"hello": "cassette"}


# ----------------------------------------------------------------------------- 2. console lines


def test_console_line_per_recorded_exchange(cli: Any, upstream: Upstream, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    proc = cli(["record", upstream.url, "-o", str(path), "--port", "0"])
    try:
        a = requests.get(proc.url + "/json?x=1", timeout=TIMEOUT)
        b = requests.post(proc.url + "/echo", data=b"hi", timeout=TIMEOUT)
        c = requests.get(proc.url + "/status/503", timeout=TIMEOUT)
    finally:
        assert proc.stop() == 0
    assert (a.status_code, b.status_code, c.status_code) == (200, 200, 503)
    assert _exchange_lines(proc.stderr) == [
        "GET /json?x=1 -> 200 (upstream recorded as #1)",
        "POST /echo -> 200 (upstream recorded as #2)",
        "GET /status/503 -> 503 (upstream recorded as #3)",
    ]
    assert proc.stderr_lines[-1] == f"replay-proxy: stopped; cassette {path}"
    assert [i.request.path_and_query for i in load(path)] == ["/json?x=1", "/echo", "/status/503"]


@pytest.mark.parametrize("engine", ENGINES)
def test_console_line_per_replayed_exchange(cli: Any, tmp_path: Path, engine: str) -> None:
    path = _cassette(tmp_path / "c.yaml")
    proc = cli(["replay", str(path), "--port", "0", "--engine", engine])
    try:
        hit = requests.get(proc.url + "/hello", timeout=TIMEOUT)
        miss = requests.delete(proc.url + "/nope?z=9", timeout=TIMEOUT)
    finally:
        assert proc.stop() == 0
    assert hit.status_code == 200
    assert miss.status_code == 599
    lines = _exchange_lines(proc.stderr)
    assert len(lines) == 2, proc.stderr
    assert lines[0] == "GET /hello -> 200 (cassette interaction #1)"
    assert lines[1].startswith("DELETE /nope?z=9 -> 599 (NO MATCH: "), lines[1]
    assert "stopped" not in proc.stderr  # replay saves nothing, so it says nothing at stop


@pytest.mark.parametrize("command", ["record", "replay"])
def test_quiet_prints_no_exchange_lines(cli: Any, upstream: Upstream, tmp_path: Path, command: str) -> None:
    path = tmp_path / "c.yaml"
    if command == "record":
        args = ["record", upstream.url, "-o", str(path), "--port", "0", "-q"]
        ok = "/json"
    else:
        args = ["replay", str(_cassette(path)), "--port", "0", "-q"]
        ok = "/hello"
    proc = cli(args)
    try:
        statuses = [requests.get(proc.url + p, timeout=TIMEOUT).status_code for p in (ok, ok, "/missing")]
    finally:
        assert proc.stop() == 0
    assert statuses == ([200, 200, 404] if command == "record" else [200, 200, 599])
    assert proc.stderr == ""
    if command == "record":
        assert len(load(path)) == 3


# ----------------------------------------------------------------------------- 3. SIGINT / SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_and_saves(cli: Any, upstream: Upstream, tmp_path: Path, sig: int) -> None:
    path = tmp_path / "c.yaml"
    proc = cli(["record", upstream.url, "-o", str(path), "--port", "0"])
    paths = [f"/json?n={n}" for n in range(4)] + ["/binary"]
    try:
        for p in paths:
            assert requests.get(proc.url + p, timeout=TIMEOUT).status_code == 200
    finally:
        rc = proc.stop(sig)
    assert rc == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    ours = load(path)
    assert [i.request.path_and_query for i in ours] == paths
    assert ours[-1].response.body == BINARY
    assert _vcrpy_uris(path) == [upstream.url + p for p in paths]
    # A clean stop leaves vcrpy's canonical layout (what vcrpy itself would write).
    assert path.read_text() == dumps(ours)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_replay_leaving_cassette_untouched(cli: Any, tmp_path: Path, sig: int) -> None:
    path = _cassette(tmp_path / "c.yaml")
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    proc = cli(["replay", str(path), "--port", "0"])
    try:
        assert requests.get(proc.url + "/hello", timeout=TIMEOUT).status_code == 200
    finally:
        rc = proc.stop(sig)
    assert rc == 0, proc.stderr
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]  # no temp or journal files left behind


# ----------------------------------------------------------------------------- 4. user mistakes


@dataclass
class Mistake:
    args: list[str]
    says: list[str]  # substrings of the one error line
    check: Callable[[], None] | None = None


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


BAD_YAML = """\
version: 1
interactions:
- request:
    method: GET
    uri: [http://x/
  response: {}
"""


def _mistakes(d: Path) -> dict[str, Mistake]:
    (d / "bad.yaml").write_text(BAD_YAML)
    marker = d / "PWNED"
    (d / "evil.yaml").write_text(
        f"version: 1\ninteractions: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    (d / "evil-body.yaml").write_text(
        "interactions:\n- request: {method: GET, uri: 'http://x/', body: null, headers: {}}\n"
        "  response:\n    status: {code: 200, message: OK}\n    headers: {}\n"
        f"    body: {{string: !!python/object/apply:os.system ['touch {marker}']}}\nversion: 1\n"
    )
    _cassette(d / "ok.yaml")
    (d / "a-file").write_text("not a directory\n")

    def nothing_ran() -> None:
        assert not marker.exists(), "the cassette's python tag ran a command"

    def nothing_created() -> None:
        assert (d / "a-file").read_text() == "not a directory\n"

    up = "http://127.0.0.1:9"
    out = str(d / "out.yaml")
    return {
        "replay-missing": Mistake(
            ["replay", str(d / "missing.yaml")], [str(d / "missing.yaml"), "not found"]
        ),
        "replay-malformed": Mistake(["replay", str(d / "bad.yaml")], [f"{d / 'bad.yaml'}:6:"]),
        "replay-python-tag": Mistake(
            ["replay", str(d / "evil.yaml")], [f"{d / 'evil.yaml'}:2:", "python/object/apply"], nothing_ran
        ),
        "replay-python-tag-in-body": Mistake(
            ["replay", str(d / "evil-body.yaml")],
            [str(d / "evil-body.yaml"), "python/object/apply"],
            nothing_ran,
        ),
        "record-ftp-url": Mistake(["record", "ftp://x", "-o", out], ["bad upstream URL 'ftp://x'"]),
        "record-not-a-url": Mistake(["record", "notaurl", "-o", out], ["bad upstream URL 'notaurl'"]),
        "record-no-host": Mistake(["record", "http://", "-o", out], ["bad upstream URL 'http://'"]),
        "record-without-o": Mistake(["record", up], ["-o/--output"]),
        "record-mode-unknown": Mistake(
            ["record", up, "-o", out, "--record-mode", "sometimes"], ["--record-mode", "'sometimes'"]
        ),
        "match-on-unknown": Mistake(
            ["replay", str(d / "ok.yaml"), "--match-on", "method,colour"], ["unknown matcher 'colour'"]
        ),
        "record-match-on-unknown": Mistake(
            ["record", up, "-o", out, "--match-on", "path,colour"], ["unknown matcher 'colour'"]
        ),
        "regular-mode-with-url": Mistake(
            ["record", up, "-o", out, "--mode", "regular"], ["--mode regular", "UPSTREAM_URL"]
        ),
        "record-parent-is-a-file": Mistake(
            ["record", up, "-o", str(d / "a-file" / "c.yaml")],
            [str(d / "a-file" / "c.yaml"), f"{d / 'a-file'} is a file, not a directory"],
            nothing_created,
        ),
    }


@dataclass
class MistakeRuns:
    cases: dict[str, Mistake]
    results: dict[str, Ran]
    port: int


@pytest.fixture(scope="module")
def mistake_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MistakeRuns]:
    """Every mistake at once, in parallel subprocesses (each costs ~1 s of imports); the port is held busy."""
    d = tmp_path_factory.mktemp("mistakes")
    confdir = tmp_path_factory.getbasetemp() / "replay-proxy-conf"
    cases = _mistakes(d)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases["replay-port-in-use"] = Mistake(
        ["replay", str(d / "ok.yaml"), "--port", str(port)], [f"127.0.0.1:{port}", "port is already in use"]
    )
    cases["record-port-in-use"] = Mistake(
        ["record", "http://127.0.0.1:9", "-o", str(d / "out.yaml"), "--port", str(port)],
        ["port is already in use"],
    )
    assert sorted(cases) == sorted(MISTAKES)
    env = dict(os.environ, REPLAY_PROXY_CONFDIR=str(confdir))
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "proxy", *case.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for name, case in cases.items()
    }
    results: dict[str, Ran] = {}
    try:
        for name, p in procs.items():
            try:
                out, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate(timeout=10)
                err += "\n(still running after 60 s: killed)"
            results[name] = Ran(p.returncode, out, err)
    finally:
        busy.close()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
    yield MistakeRuns(cases, results, port)


MISTAKES = [
    "replay-missing",
    "replay-malformed",
    "replay-python-tag",
    "replay-python-tag-in-body",
    "record-ftp-url",
    "record-not-a-url",
    "record-no-host",
    "record-without-o",
    "record-mode-unknown",
    "match-on-unknown",
    "record-match-on-unknown",
    "regular-mode-with-url",
    "record-parent-is-a-file",
    "replay-port-in-use",
    "record-port-in-use",
]


@pytest.mark.parametrize("name", MISTAKES)
def test_user_mistake_is_one_line_and_status_2(mistake_runs: MistakeRuns, name: str) -> None:
    case, ran = mistake_runs.cases[name], mistake_runs.results[name]
    assert "Traceback" not in ran.stdout + ran.stderr, ran.stderr
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    for expected in case.says:
        assert expected in lines[0], lines[0]
    assert ran.stdout == ""  # never got as far as the ready line
    assert ran.returncode == 2
    if case.check is not None:
        case.check()


def test_malformed_cassette_names_file_and_line(mistake_runs: MistakeRuns) -> None:
    """The line number is the YAML error's: line 6 is where the unclosed flow sequence breaks."""
    line = mistake_runs.results["replay-malformed"].stderr.strip()
    m = re.search(r"bad\.yaml:(\d+):(\d+): ", line)
    assert m is not None, line
    assert int(m.group(1)) == 6


def test_record_into_missing_directories_creates_them(cli: Any, upstream: Upstream, tmp_path: Path) -> None:
    """The counterpart of the parent-is-a-file mistake: missing parents are not a mistake."""
    path = tmp_path / "new" / "deeper" / "c.yaml"
    proc = cli(["record", upstream.url, "-o", str(path), "--port", "0", "-q"])
    try:
        assert requests.get(proc.url + "/json", timeout=TIMEOUT).status_code == 200
    finally:
        assert proc.stop() == 0
    assert len(load(path)) == 1


# ----------------------------------------------------------------------------- 5. help and version


def _option_strings(command: str | None) -> list[str]:
    parser = build_parser()
    if command is not None:
        sub = next(a for a in parser._actions if a.dest == "command")
        parser = sub.choices[command]  # type: ignore[index]
    return [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]


EXPECTED_OPTIONS: dict[str | None, list[str]] = {
    None: ["--version"],
    "record": [
        "-o",
        "--output",
        "--record-mode",
        "--host",
        "--port",
        "--mode",
        "--confdir",
        "-q",
        "--quiet",
        "--match-on",
        "--match-header",
        "--when-exhausted",
        "--retry-after",
        "--no-redact",
        "--redact-header",
        "--redact-query",
        "--redact-json-field",
    ],
    "replay": ["--host", "--port", "--mode", "--confdir", "-q", "--match-on", "--retry-after", "--no-redact"],
    "ca": ["--confdir"],
}


@pytest.fixture(scope="module")
def helps(tmp_path_factory: pytest.TempPathFactory) -> dict[str | None, subprocess.CompletedProcess[str]]:
    confdir = tmp_path_factory.getbasetemp() / "replay-proxy-conf"
    env = dict(os.environ, REPLAY_PROXY_CONFDIR=str(confdir), COLUMNS="100")
    procs = {
        cmd: subprocess.Popen(
            [sys.executable, "-m", "proxy", *([cmd] if cmd else []), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for cmd in EXPECTED_OPTIONS
    }
    out: dict[str | None, subprocess.CompletedProcess[str]] = {}
    for cmd, p in procs.items():
        stdout, stderr = p.communicate(timeout=60)
        out[cmd] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("command", list(EXPECTED_OPTIONS), ids=lambda c: c or "top-level")
def test_help_documents_every_option_with_an_example(
    helps: dict[str | None, subprocess.CompletedProcess[str]], command: str | None
) -> None:
    result = helps[command]
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    text = result.stdout
    for option in {*EXPECTED_OPTIONS[command], *_option_strings(command)}:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
            f"{option} not in {command} --help"
        )
    assert "example" in text.lower()
    assert "replay-proxy" in text


def test_top_level_help_lists_the_commands(helps: dict[str | None, subprocess.CompletedProcess[str]]) -> None:
    text = helps[None].stdout
    for command in ("record", "replay", "ca"):
        assert re.search(rf"^\s+{command}\s+\S", text, re.M), f"{command} not listed:\n{text}"
    assert "replay-proxy record https://" in text and "replay-proxy replay " in text


def test_record_and_replay_options_each_carry_an_example(
    helps: dict[str | None, subprocess.CompletedProcess[str]],
) -> None:
    """Options that take a value show one (``e.g.``, a default) or list their choices."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("record", "replay"):
        for action in sub.choices[command]._actions:  # type: ignore[index]
            if not action.option_strings or action.nargs == 0 or "--help" in action.option_strings:
                continue
            text = action.help or ""
            documented = action.choices is not None or "e.g." in text or "default: " in text
            assert documented, f"{command} {action.option_strings}: no example in {action.help!r}"


def test_version(confdir: Path) -> None:
    result = run_cli(["--version"], confdir)
    assert result.returncode == 0
    assert result.stdout.strip() == f"replay-proxy {__version__}"


# ----------------------------------------------------------------------------- 6. the console script


def test_console_script_runs(tmp_path: Path, confdir: Path) -> None:
    script = Path(sys.executable).parent / "replay-proxy"
    assert script.is_file(), f"{script}: console script not installed"
    env = dict(os.environ, REPLAY_PROXY_CONFDIR=str(confdir))
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: replay-proxy ")
    missing = subprocess.run(
        [str(script), "replay", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert missing.returncode == 2
    assert missing.stderr == f"{ERROR_PREFIX} {tmp_path / 'none.yaml'}: cassette not found\n"


def test_ca_prints_an_existing_pem(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    result = run_cli(["ca"], confdir)
    assert result.returncode == 0, result.stderr
    printed = Path(result.stdout.strip())
    assert printed == confdir / "mitmproxy-ca-cert.pem"
    assert printed.read_text().startswith("-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize(
    "args",
    [
        ["play", "scenarios/azure-maps/tileset-succeeds.yaml", "--upstream", "http://127.0.0.1:9"],
        ["replay", "cassettes/azure-maps/tileset-succeeds.yaml", "--mode", "regular"],
        ["play", "scenarios/azure-maps/tileset-succeeds.yaml", "--engine", "turbo"],
    ],
)
def test_the_lean_engine_refuses_what_it_cannot_do_with_status_2(args: list[str], confdir: Path) -> None:
    """Forwarding and forward-proxy mode are mitmproxy's: said at start, naming the engine that does it."""
    if "--engine" not in args:
        args = [*args, "--engine", "lean"]
    proc = run_cli([*args, "--port", "0"], confdir)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    if "turbo" not in args:
        assert "--engine mitmproxy" in proc.stderr, proc.stderr
