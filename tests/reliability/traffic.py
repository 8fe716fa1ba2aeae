"""Checksummed exchanges through a recording proxy, and the check of what its cassette kept.

Each request is ``POST /echo?id=ID`` with a JSON body carrying the id, a payload and the payload's SHA-256;
``tests.upstream.Upstream`` echoes the body back. The client keeps the SHA-256 of what it sent and of what
it got. ``saved`` then reads the cassette with vcrpy (``vcr.VCR().use_cassette``) and with
``proxy.cassette.load`` and checks, exchange by exchange, that each id is there at most once, that both
bodies are byte-identical to the client's, and that the answer saved with a request is that request's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests
import vcr

from proxy.cassette import load


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Exchange:
    """One exchange as the client saw it, or as the cassette holds it."""

    id: str
    request_sha: str
    response_sha: str


def body_for(ident: str, size: int) -> bytes:
    """A request body of about ``size`` bytes that names its id and carries its own checksum."""
    payload = (ident + ":" + "0123456789abcdef" * (size // 16 + 1))[:size]
    return json.dumps({"id": ident, "payload": payload, "sha256": sha(payload.encode())}).encode()


def send(session: requests.Session, base_url: str, ident: str, size: int, timeout: float = 30) -> Exchange:
    """POST one checksummed body; raises on a transport error or an answer that is not the echo of it."""
    body = body_for(ident, size)
    r = session.post(f"{base_url}/echo?id={ident}", data=body, timeout=timeout)
    if r.status_code != 200:
        raise AssertionError(f"{ident}: {r.status_code} {r.text[:300]}")
    if json.loads(r.content)["body"] != body.decode():
        raise AssertionError(f"{ident}: the answer is not the echo of the request")
    return Exchange(ident, sha(body), sha(r.content))


def _id_of(uri: str) -> str:
    return parse_qs(urlsplit(uri).query)["id"][0]


def saved(path: Path) -> dict[str, Exchange]:
    """The cassette's exchanges by id, after checking that vcrpy and our loader read the same ones, each
    id once, every request body intact (its checksum holds) and answered by the echo of itself."""
    with vcr.VCR().use_cassette(str(path), record_mode="none") as cassette:
        vcr_view = [
            (_id_of(req.uri), sha(req.body or b""), _bytes(res["body"]["string"]))
            for req, res in zip(cassette.requests, cassette.responses, strict=True)
        ]
    ours = load(path)
    assert [(i.request.url, i.request.body) for i in ours] == [
        (req.uri, req.body or b"") for req in cassette.requests
    ], "vcrpy and proxy.cassette read different requests"
    out: dict[str, Exchange] = {}
    for (ident, request_sha, response), interaction in zip(vcr_view, ours, strict=True):
        assert ident not in out, f"{ident} saved twice"
        assert response == interaction.response.body, f"{ident}: vcrpy and proxy.cassette differ"
        sent = json.loads(interaction.request.body)
        assert sent["id"] == ident and sha(sent["payload"].encode()) == sent["sha256"], f"{ident}: torn body"
        assert json.loads(response)["body"] == interaction.request.body.decode(), f"{ident}: answers mixed"
        out[ident] = Exchange(ident, request_sha, sha(response))
    return out


def _bytes(body: str | bytes) -> bytes:
    return body.encode() if isinstance(body, str) else body
