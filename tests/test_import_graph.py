"""What the product imports: the reference service (a test double) stays out of it, and the lean engine
starts and serves without mitmproxy."""

import http.client
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli

PRODUCT_MODULES = [
    "proxy.cli",
    "proxy.addon",
    "proxy.server",
    "proxy.pytest_plugin",
    "proxy.scenario.loader",
    "proxy.scenario.machine",
]


def test_product_modules_do_not_import_the_reference_service() -> None:
    """proxy/creator_service.py is the seed's reference upstream, used by tests and the README's demo:
    the proxy, its CLI, its plugin and the scenario machine must run without it (a fresh interpreter,
    so that no other test's import hides one)."""
    code = (
        "import importlib, sys\n"
        f"for name in {PRODUCT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'proxy.creator_service' not in sys.modules, f'{name} imports proxy.creator_service'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_reference_service_uses_the_scenario_date_format() -> None:
    """One date format for the scripted operations and the reference service."""
    from proxy import creator_service
    from proxy.scenario import dates

    assert creator_service.format_created_date_time is dates.format_created_date_time


CORE_MODULES = [
    "proxy",
    "proxy.handler",
    "proxy.fault_plan",
    "proxy.router",
    "proxy.rewrite",
    "proxy.journal",
    "proxy.session",
    "proxy.lean",
    "proxy.server",
    "proxy.cli",
]


def test_the_core_imports_nothing_from_mitmproxy() -> None:
    """The decision a request gets (proxy/handler.py), its fault plan and the session (proxy/session.py)
    are engine-neutral: both the mitmproxy addon and the lean engine adapt them, so importing them, or
    the lean engine, ReplayProxy and the command line, loads no mitmproxy module (a fresh interpreter)."""
    code = (
        "import importlib, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    new = {m for m in sys.modules if m.split('.')[0] == 'mitmproxy'}\n"
        "    assert not new, f'{name} imports {sorted(new)}'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- the lean engine serves without mitmproxy (the start-up goal of issue 12) --------------------------------

START = "/tilesets?api-version=2.0&datasetId=8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d"
CASSETTE = "cassettes/azure-maps/tileset-succeeds.yaml"
SCENARIO = "scenarios/azure-maps/tileset-succeeds.yaml"


def _post(url: str, path: str, body: bytes = b"") -> int:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _imported(importtime: list[str], package: str) -> list[str]:
    """The modules of ``package`` that ``-X importtime`` lines (a process's stderr) say were imported."""
    names = [line.rsplit("|", 1)[1].strip() for line in importtime if line.startswith("import time:")]
    return [name for name in names if name.split(".")[0] == package]


@pytest.mark.parametrize(
    "args",
    [["replay", CASSETTE], ["play", SCENARIO], ["serve"]],
    ids=["replay", "play", "serve-then-use"],
)
def test_the_lean_command_line_serves_without_importing_mitmproxy(
    cli: type[Cli], monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """``replay-proxy replay|play|serve --engine lean`` start, answer and stop without importing mitmproxy
    (its import took ~0.2 s of the lean engine's ~0.3 s start-up). ``-X importtime`` (in the environment)
    lists every module the process imported, on stderr."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    proxy = cli([*args, "--engine", "lean", "--port", "0"])
    assert proxy.url, proxy.stderr
    if args[0] == "serve":  # the control API loads a scenario into the running proxy
        assert _post(proxy.url, "/__replay-proxy/use", f'{{"scenarios": ["{SCENARIO}"]}}'.encode()) == 200
    assert _post(proxy.url, START) == 202
    assert proxy.stop() == 0
    assert "proxy.lean" in _imported(proxy.stderr_lines, "proxy")  # the listing is there
    assert _imported(proxy.stderr_lines, "mitmproxy") == []


_SERVE_LEAN = """
import http.client, sys
from proxy import ReplayProxy

confdir, start, cassette, scenario = sys.argv[1:]
served = {"cassette": cassette} if cassette else {"scenarios": [scenario]}
with ReplayProxy(**served, engine="lean", confdir=confdir) as p:
    conn = http.client.HTTPConnection(p.url.removeprefix("http://"), timeout=30)
    conn.request("POST", start)
    print(conn.getresponse().status)
    p.use(cassette or scenario)
print(sorted(m for m in sys.modules if m.split(".")[0] == "mitmproxy"))
"""


@pytest.mark.parametrize(
    ("cassette", "scenario"), [(CASSETTE, ""), ("", SCENARIO)], ids=["cassette", "scenario"]
)
def test_replay_proxy_with_the_lean_engine_imports_no_mitmproxy(
    confdir: Path, cassette: str, scenario: str
) -> None:
    """``ReplayProxy(..., engine="lean")`` serves, switches (``use``) and stops without mitmproxy."""
    args = [str(confdir), START, cassette and str(ROOT / cassette), scenario and str(ROOT / scenario)]
    out = subprocess.run(
        [sys.executable, "-c", _SERVE_LEAN, *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["202", "[]"], out.stdout
