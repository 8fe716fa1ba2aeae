"""The deferred package inits stay invisible: vcrpy and mitmproxy work in full after proxy is imported."""

import subprocess
import sys


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
