"""Whatever vcrpy replays, the proxy replays identically: cassettes vcrpy records during the run.

Each of six clients (requests, urllib3, httpx sync and async, aiohttp, tornado) runs a long-running
operation flow against a loopback service while vcrpy records it in-process, once per serializer (YAML,
JSON). The service is then stopped and the cassette replayed twice with the same client: by vcrpy
in-process (record mode none) and through one running ReplayProxy (``use()`` per cassette). Both must
give the client the same answers: status, decoded body, Location-like headers, Retry-After.

Shapes the proxy does not read yet are marked xfail(strict=True) with the precise defect, so the
marker fails (and must be removed) the moment the proxy is fixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vcr

from proxy.errors import CassetteError
from proxy.server import ReplayProxy
from tests.fidelity import CLIENTS, Essence, LroUpstream, Seen, essence, lro_flow

SERIALIZERS = ("yaml", "json")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplayProxy]:
    """One proxy for the module; each test points it at its cassette with ``use()``."""
    confdir = tmp_path_factory.getbasetemp() / "replay-proxy-conf"
    with ReplayProxy(confdir=confdir) as p:
        yield p


def record(
    client_name: str, serializer: str, directory: Path, **vcr_options: Any
) -> tuple[Path, str, list[Seen]]:
    """vcrpy records ``lro_flow`` by ``client_name`` against a fresh service, then the service stops.

    JSON cannot hold binary bodies (vcrpy's JSON serializer raises), so a JSON recording leaves out the
    download and stores compressed bodies decoded, as a vcrpy user must configure it.
    """
    path = directory / f"{client_name}.{serializer}"
    binary = serializer == "yaml"
    if serializer == "json":
        vcr_options.setdefault("decode_compressed_response", True)
    with LroUpstream() as up:
        client = CLIENTS[client_name]()
        try:
            with vcr.use_cassette(str(path), record_mode="all", serializer=serializer, **vcr_options):
                live = lro_flow(client, up.url, binary=binary)
        finally:
            client.close()
    assert path.is_file()
    return path, up.url, live


def vcrpy_replay(
    client_name: str, path: Path, serializer: str, origin: str, **vcr_options: Any
) -> list[Essence]:
    client = CLIENTS[client_name]()
    try:
        with vcr.use_cassette(str(path), record_mode="none", serializer=serializer, **vcr_options) as cass:
            seen = lro_flow(client, origin, binary=serializer == "yaml")
            assert cass.all_played
    finally:
        client.close()
    return [essence(s, [origin]) for s in seen]


def proxy_replay(
    proxy: ReplayProxy, client_name: str, path: Path, serializer: str, origin: str
) -> list[Essence]:
    proxy.use(cassette=path)
    client = CLIENTS[client_name]()
    try:
        seen = lro_flow(client, proxy.url, binary=serializer == "yaml")
    finally:
        client.close()
    return [essence(s, [proxy.url, origin]) for s in seen]


KNOWN_DEFECTS: dict[tuple[str, str], str] = {}
"""What fails today, and why (each names the shape, what vcrpy does, what the proxy does): nothing now."""


def _cases() -> list[Any]:
    out = []
    for serializer in SERIALIZERS:
        for name in CLIENTS:
            reason = KNOWN_DEFECTS.get((name, serializer))
            # raises: the proxy refuses the cassette; any other failure is not this known defect
            marks = [pytest.mark.xfail(strict=True, raises=CassetteError, reason=reason)] if reason else []
            out.append(pytest.param(name, serializer, marks=marks, id=f"{name}-{serializer}"))
    return out


@pytest.mark.parametrize(("client_name", "serializer"), _cases())
def test_recorded_cassette_replays_identically(
    proxy: ReplayProxy, tmp_path: Path, client_name: str, serializer: str
) -> None:
    path, origin, live = record(client_name, serializer, tmp_path)
    # vcrpy's own replay reproduces what the client saw live (else the comparison below proves nothing)
    expected = vcrpy_replay(client_name, path, serializer, origin)
    assert expected == [essence(s, [origin]) for s in live]
    assert [e.status for e in expected][:4] == [202, 200, 200, 200]
    assert any(e.retry_after for e in expected) and any(e.locations for e in expected)
    assert proxy_replay(proxy, client_name, path, serializer, origin) == expected


# ----------------------------------------------------------------------------- how requests match


def _record_requests(path: Path, calls: list[tuple[str, dict[str, str]]], **vcr_options: Any) -> str:
    """vcrpy records ``calls`` (url path+query, headers) made by requests; returns the dead origin."""
    with LroUpstream() as up:
        client = CLIENTS["requests"]()
        try:
            with vcr.use_cassette(str(path), record_mode="all", **vcr_options):
                for target, headers in calls:
                    assert client.send("GET", up.url + target, headers=headers).status == 200
        finally:
            client.close()
    return up.url


def _both(
    proxy: ReplayProxy, path: Path, origin: str, calls: list[tuple[str, dict[str, str]]], **vcr_options: Any
) -> tuple[list[Essence], list[Essence]]:
    """(vcrpy's answers, the proxy's) to ``calls`` replayed from ``path`` with the same client; vcrpy's
    filter options go to the proxy too (it has them under the same names)."""
    client = CLIENTS["requests"]()
    try:
        with vcr.use_cassette(str(path), record_mode="none", **vcr_options):
            expected = [essence(client.send("GET", origin + t, headers=h), [origin]) for t, h in calls]
        filters = ("filter_query_parameters", "filter_headers")
        proxy.use(cassette=path, **{k: v for k, v in vcr_options.items() if k in filters})
        got = [essence(client.send("GET", proxy.url + t, headers=h), [proxy.url, origin]) for t, h in calls]
    finally:
        client.close()
    return expected, got


@pytest.mark.parametrize(
    ("recorded", "replayed"),
    [
        pytest.param("/json?a=&b=1", "/json?b=1", id="recorded-blank"),
        pytest.param("/json?b=1", "/json?a=&b=1", id="replayed-blank"),
    ],
)
def test_blank_query_value_matches_as_in_vcrpy(
    proxy: ReplayProxy, tmp_path: Path, recorded: str, replayed: str
) -> None:
    path = tmp_path / "blank.yaml"
    origin = _record_requests(path, [(recorded, {})])
    expected, got = _both(proxy, path, origin, [(replayed, {})])
    assert expected[0].status == 200
    assert got == expected


FILTERED = [("/results/r1?api_key=k-live-123&x=1&empty=", {"Authorization": "Bearer live-token-456"})]


def test_recording_made_with_vcrpy_filters_replays(proxy: ReplayProxy, tmp_path: Path) -> None:
    path = tmp_path / "filtered.yaml"
    options: dict[str, Any] = {"filter_query_parameters": ["api_key"], "filter_headers": ["authorization"]}
    origin = _record_requests(path, FILTERED, **options)
    text = path.read_text(encoding="utf-8")
    assert "k-live-123" not in text and "live-token-456" not in text and "?x=1" in text
    expected, got = _both(proxy, path, origin, FILTERED, **options)
    assert expected[0].status == 200
    assert got == expected


# ----------------------------------------------------------------------------- a redirect aiohttp follows


def _aiohttp_follow(url: str) -> tuple[list[int], Seen]:
    """aiohttp GETs ``url`` following redirects: (statuses of the hops it followed, the final answer)."""
    import asyncio

    import aiohttp

    async def go() -> tuple[list[int], Seen]:
        async with aiohttp.ClientSession() as session, session.get(url) as r:
            body = await r.read()
            fields = tuple((k.lower(), v) for k, v in r.headers.items())
            return [h.status for h in r.history], Seen(r.status, fields, body)

    return asyncio.run(asyncio.wait_for(go(), 10))


def test_aiohttp_followed_redirect_replays(proxy: ReplayProxy, tmp_path: Path) -> None:
    path = tmp_path / "redirect.yaml"
    with LroUpstream() as up, vcr.use_cassette(str(path), record_mode="all"):
        live = _aiohttp_follow(up.url + "/see-other")
    assert live[0] == [303] and live[1].status == 200
    assert "body: {}" in path.read_text(encoding="utf-8")  # the shape under test is really on disk
    with vcr.use_cassette(str(path), record_mode="none"):
        hops, seen = _aiohttp_follow(up.url + "/see-other")
    expected = (hops, essence(seen, [up.url]))
    assert expected == (live[0], essence(live[1], [up.url]))
    proxy.use(cassette=path)
    hops, seen = _aiohttp_follow(proxy.url + "/see-other")
    assert (hops, essence(seen, [proxy.url, up.url])) == expected
