"""mitmproxy's floor: an addon answering every request in its ``request`` hook with the same JSON body.

Loaded by stock mitmdump (``mitmdump -s benchmarks/trivial_addon.py``) and by ``minimal_master.py``; the
body is the file named by $BENCH_BODY_FILE (a recorded poll's body), else a small JSON object.
"""

from __future__ import annotations

import os
from pathlib import Path

from mitmproxy import http

_BODY_FILE = os.environ.get("BENCH_BODY_FILE")
BODY = Path(_BODY_FILE).read_bytes() if _BODY_FILE else b'{"operationId": "0", "status": "Running"}'
HEADERS = {"Content-Type": "application/json; charset=utf-8"}


class Trivial:
    def request(self, flow: http.HTTPFlow) -> None:
        flow.response = http.Response.make(200, BODY, HEADERS)


addons = [Trivial()]
