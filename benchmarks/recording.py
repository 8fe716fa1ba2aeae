"""The recorded exchanges every target serves, by size, and the requests the load sends.

One recording for everything: ``user_suite.interactions()`` (Azure Maps Creator LROs: a 202 start and 5
polls each, ``Retry-After: 1``), cut to 10, 10,000 or 100,000 interactions. Each size is written once as
a vcrpy cassette under ``benchmarks/.work/`` (deterministic, so reused), and from it a mitmproxy flow file
for ``--server-replay``; the peers' formats come from ``user_suite.to_wiremock`` / ``to_mountebank`` /
``to_talkback``.
"""

from __future__ import annotations

import os
from pathlib import Path

import user_suite  # benchmarks/ is on sys.path (run.py puts it there)

from proxy import cassette
from proxy.model import Interaction

FORMAT = "v1"
"""Bump when the recording changes, so cached files are not reused."""


def operations_for(size: int) -> int:
    return -(-size // user_suite.REQUESTS_PER_OPERATION)


def interactions(size: int) -> list[Interaction]:
    """The first ``size`` recorded interactions."""
    return user_suite.interactions(operations_for(size))[:size]


def cassette_path(workdir: Path, size: int) -> Path:
    """The cassette of ``size`` interactions, written on first use (by proxy.cassette: vcrpy's format)."""
    path = workdir / "recordings" / f"lro-{FORMAT}-{size}.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        cassette.save(path, interactions(size))
    return path


def flows_path(workdir: Path, size: int) -> Path:
    """The same interactions as a mitmproxy flow file (``mitmdump --server-replay``), written on first use."""
    path = workdir / "recordings" / f"lro-{FORMAT}-{size}.flows"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_flows(path, interactions(size))
    return path


def _write_flows(path: Path, recorded: list[Interaction]) -> None:
    from mitmproxy import connection, http, io

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        writer = io.FlowWriter(f)
        for interaction in recorded:
            req, resp = interaction.request, interaction.response
            flow = http.HTTPFlow(
                connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080)),
                connection.Server(address=(req.host, req.port)),
            )
            flow.request = http.Request.make(req.method, req.url, req.body, dict(req.headers))
            flow.response = http.Response.make(resp.status, resp.body, dict(resp.headers))
            flow.response.reason = resp.reason
            writer.add(flow)
    os.replace(tmp, path)


def polled_paths(size: int, limit: int = 64) -> list[str]:
    """Status URLs (paths) of up to ``limit`` recorded operations spread over the recording: what the load
    polls. Only operations whose five polls are all in the first ``size`` interactions (at least one)."""
    complete = max(1, size // user_suite.REQUESTS_PER_OPERATION)
    step = max(1, complete // limit)
    return [f"/tilesets/operations/{user_suite.ids(i)[1]}" for i in range(0, complete, step)][:limit]


def poll_body() -> bytes:
    """A recorded poll's JSON body: what the floor and the trivial mitmproxy addon answer."""
    return interactions(2)[1].response.body
