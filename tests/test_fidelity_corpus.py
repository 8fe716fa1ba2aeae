"""Whatever vcrpy replays, the proxy replays identically: real cassettes from public repositories.

tests/corpus/ holds cassettes committed by other projects (tests/corpus/SOURCES.md: repository, path,
commit, licence, the stub and serializer that wrote each). Each is replayed interaction by interaction
with the client whose vcrpy stub recorded it: by vcrpy in-process (record mode none) and through one
running ReplayProxy (``use()`` per file). For every interaction vcrpy can replay, the client must get the
same answer from the proxy: status, decoded body, Location-like headers, Retry-After.

No request leaves the machine: vcrpy answers the recorded (public) URLs in-process, and a guard refuses
any connection or name lookup that is not loopback. Files the proxy cannot read yet are
xfail(strict=True) with the precise defect.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import vcr
from vcr.serialize import deserialize
from vcr.serializers import jsonserializer, yamlserializer

from proxy.errors import CassetteError
from proxy.server import ReplayProxy
from tests.fidelity import CLIENTS, Essence, essence, origin_of

CORPUS = Path(__file__).parent / "corpus"


@dataclass(frozen=True)
class Case:
    path: str
    client: str
    defect: str | None = None
    vcrpy_cannot: tuple[int, ...] = ()
    """Interactions vcrpy itself cannot replay with this client (none in today's corpus)."""


CASES = [
    Case("vcrpy/gzip_requests.yaml", "requests"),
    Case("vcrpy/new_cassette.yaml", "requests"),
    Case("vcrpy/cassette_with_duplicate_requests.yaml", "requests"),
    Case("vcrpy/gzip_httpx_old_format.yaml", "httpx"),
    Case("vcrpy/test_httpx_test_test_auth_flow.yml", "httpx"),
    Case("vcrpy/DoSyncRequesttest_httpx_test_test_behind_proxy.yml", "httpx"),
    Case("azure/test_mgmt_resource.test_resource_groups.yaml", "requests"),
    Case("azure/test_mgmt_resource.test_deployments_basic.yaml", "requests"),
    Case("azure/test_copy_model.test_copy_model_successful.yaml", "requests"),
    Case("azure/test_business_card_from_url_async.test_polling_interval.yaml", "aiohttp"),
    Case("tweepy/test_client_get_tweet.yaml", "requests"),
    Case("tweepy/test_asyncclient_get_me.yaml", "aiohttp"),
    Case("tweepy/test_asyncclient_create_and_delete_tweet.yaml", "aiohttp"),
    Case("tweepy/testblocksids.json", "requests"),
    Case("replicate/run.yaml", "httpx"),
]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplayProxy]:
    confdir = tmp_path_factory.getbasetemp() / "replay-proxy-conf"
    with ReplayProxy(confdir=confdir) as p:
        yield p


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any name lookup or connection to something other than loopback fails (the corpus names public
    hosts; only vcrpy may answer them, in-process)."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in LOOPBACK and host not in (b"127.0.0.1", b"localhost"):
            raise OSError(f"test guard: no lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            raise OSError(f"test guard: no connection to {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


def _serializer(path: Path) -> str:
    return "json" if path.suffix == ".json" else "yaml"


def _recorded_requests(path: Path) -> list[Any]:
    """vcrpy's own reading of the file's requests (its loader knows every shape it can replay)."""
    module = jsonserializer if _serializer(path) == "json" else yamlserializer
    return list(deserialize(path.read_text(encoding="utf-8"), module)[0])


def _body(request: Any) -> Any:
    body = request.body
    if isinstance(body, str):
        return body.encode("utf-8")
    return body  # bytes, None, or a mapping (aiohttp json=): sent as JSON


def _path_of(uri: str) -> str:
    parts = urlsplit(uri)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def vcrpy_answers(case: Case, path: Path, requests: list[Any]) -> list[Essence | None]:
    """What vcrpy gives the client for each recorded request (None: vcrpy cannot replay it)."""
    out: list[Essence | None] = []
    client = CLIENTS[case.client]()
    try:
        with vcr.use_cassette(str(path), record_mode="none", serializer=_serializer(path)):
            for r in requests:
                try:
                    seen = client.send(r.method, r.uri, _body(r))
                except Exception:
                    out.append(None)
                else:
                    out.append(essence(seen, [origin_of(r.uri)]))
    finally:
        client.close()
    return out


def proxy_answers(proxy: ReplayProxy, case: Case, path: Path, requests: list[Any]) -> list[Essence]:
    proxy.use(cassette=path)
    origins = sorted({origin_of(r.uri) for r in requests} | {proxy.url}, key=len, reverse=True)
    client = CLIENTS[case.client]()
    try:
        return [
            essence(client.send(r.method, proxy.url + _path_of(r.uri), _body(r)), origins) for r in requests
        ]
    finally:
        client.close()


def _params() -> list[Any]:
    out = []
    for c in CASES:
        # raises: the proxy refuses the file; any other failure is not this known defect
        marks = [pytest.mark.xfail(strict=True, raises=CassetteError, reason=c.defect)] if c.defect else []
        out.append(pytest.param(c, marks=marks, id=c.path))
    return out


@pytest.mark.usefixtures("loopback_only")
@pytest.mark.parametrize("case", _params())
def test_corpus_cassette_replays_identically(proxy: ReplayProxy, case: Case) -> None:
    path = CORPUS / case.path
    requests = _recorded_requests(path)
    expected = vcrpy_answers(case, path, requests)
    replayable = [i for i, e in enumerate(expected) if e is not None]
    # A client or guard problem would show here as interactions vcrpy "cannot" replay.
    assert tuple(i for i in range(len(requests)) if i not in replayable) == case.vcrpy_cannot
    got = proxy_answers(proxy, case, path, requests)
    assert [got[i] for i in replayable] == [expected[i] for i in replayable]


def test_corpus_is_documented() -> None:
    """Every corpus file has its source and licence in SOURCES.md, and is exercised by a case (a
    repository's LICENSE kept beside its files is no cassette)."""
    sources = (CORPUS / "SOURCES.md").read_text(encoding="utf-8")
    skip = ("SOURCES.md", "LICENSE")
    files = sorted(
        str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file() and p.name not in skip
    )
    assert files == sorted(c.path for c in CASES)
    for name in files:
        assert f"`{name}`" in sources, name
