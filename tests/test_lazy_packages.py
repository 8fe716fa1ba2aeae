"""The deferred package inits stay invisible: vcrpy and mitmproxy work in full after proxy is imported."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_vcr_and_mitmproxy_addons_complete_on_first_use() -> None:
    code = """
import sys
import proxy.server
assert "__getattr__" in vars(sys.modules["vcr"]), "vcr's __init__ ran at import"
import vcr, mitmproxy.addons
from vcr import VCR
assert callable(vcr.use_cassette) and VCR
assert len(mitmproxy.addons.default_addons()) > 20
from mitmproxy.tools.dump import DumpMaster
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


_SERVE_AND_LIST_IMPORTS = """
import http.client, sys
import proxy.cli  # what `python -m proxy` imports
from proxy.server import ReplayProxy

confdir, cassette, scenarios = sys.argv[1], sys.argv[2] or None, sys.argv[3:]
with ReplayProxy(cassette, scenarios=scenarios, confdir=confdir) as p:
    conn = http.client.HTTPConnection(p.url.removeprefix("http://"), timeout=30)
    conn.request("POST", "/tilesets?api-version=2.0&datasetId=8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d")
    print(conn.getresponse().status)
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("pydantic", "jinja2", "vcr", "proxy"))))
"""


def _modules_when_serving(confdir: Path, cassette: str, *scenarios: str) -> set[str]:
    """The modules of pydantic, jinja2, vcr and proxy imported by a proxy that answered a start request."""
    args = [sys.executable, "-c", _SERVE_AND_LIST_IMPORTS, str(confdir), cassette, *scenarios]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    status, modules = out.stdout.split("\n", 1)
    assert status == "202", out.stdout
    return set(modules.split())


def test_replay_imports_no_scenario_machinery(tmp_path: Path, confdir: Path) -> None:
    """`replay` loads no scenario: pydantic, jinja2, the scenario loader and vcrpy's matchers stay out of
    its start-up (they cost ~0.3 s), and the cassette still answers."""
    cassette = tmp_path / "c.yaml"
    shutil.copy(ROOT / "cassettes" / "azure-maps" / "tileset-succeeds.yaml", cassette)
    modules = _modules_when_serving(confdir, str(cassette))
    assert "proxy.cassette" in modules
    unwanted = {"pydantic", "jinja2", "proxy.scenario.schema", "proxy.scenario.loader", "vcr.matchers"}
    assert not unwanted & modules


def test_play_imports_jinja2_only_for_templates(tmp_path: Path, confdir: Path) -> None:
    """`play` imports jinja2 only when a scenario has a template."""
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        "operations:\n"
        "  - start: {method: POST, path: /tilesets}\n"
        "    status-path: /tilesets/operations/{operationId}\n"
        "    steps: [{status: Succeeded}]\n"
    )
    modules = _modules_when_serving(confdir, "", str(plain))
    assert "proxy.scenario.machine" in modules and "pydantic" in modules
    assert "jinja2" not in modules
    templated = ROOT / "scenarios" / "azure-maps" / "tileset-succeeds.yaml"
    assert "jinja2" in _modules_when_serving(confdir, "", str(templated))
