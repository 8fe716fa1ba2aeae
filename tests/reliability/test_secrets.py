"""Nothing leaked: no secret a client sends or an upstream answers reaches a cassette, end to end.

Real clients (requests, httpx) through the real `replay-proxy record` command, in reverse and forward
mode, to a loopback upstream that echoes what it gets and answers with secrets of its own. The files the
proxy writes are then searched, byte by byte and value by value, for every secret in every form. The
same search runs over the whole session's tmp directory at the end (tests/conftest.py).
"""

from __future__ import annotations

import base64
import json
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import httpx
import pytest
import requests
import yaml

from tests.conftest import (
    PLACEHOLDER,
    SUITE_SECRETS,
    Canaries,
    leaks_in,
    redacted_files_with_leaks,
)
from tests.upstream import Upstream

TIMEOUT = 10
S = Canaries
CLIENT_SAS = f"sv=2022-11-02&sr=b&sp=w&sig={quote(S.CLIENT_SIG, safe='')}"
UPSTREAM_SAS = f"sv=2022-11-02&sr=b&sp=r&sig={quote(S.UPSTREAM_SIG, safe='')}"
PLACEHOLDER_RE = re.compile(r"<REDACTED-\d+>")


class SecretUpstream(Upstream):
    """tests/upstream.py's server (echo, cookies...), plus answers that carry the upstream's own secrets:
    an OAuth token response, a SAS URL in Location and in the body, a Set-Cookie."""

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        if path not in ("/oauth/token", "/blobs/start") and not path.startswith("/blobs/b1"):
            return super()._handle(h)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append(
                {"method": h.command, "path": h.path, "headers": dict(h.headers.items()), "body": body}
            )
        status, headers = 200, [("Content-Type", "application/json")]
        if path == "/oauth/token":
            doc: dict[str, Any] = {
                "token_type": "Bearer",
                "expires_in": 3599,
                "access_token": S.ACCESS_TOKEN,
                "refresh_token": S.REFRESH_TOKEN,
            }
        elif path == "/blobs/start":
            sas_url = f"{self.url}/blobs/b1?{UPSTREAM_SAS}"
            status = 202
            headers += [
                ("Location", sas_url),
                ("Set-Cookie", f"affinity={S.UPSTREAM_COOKIE}; Path=/; Secure"),
            ]
            doc = {"status": "Accepted", "resourceLocation": sas_url}
        else:  # the SAS URL followed: echoed back, relative and absolute
            doc = {"path": h.path, "url": self.url + h.path}
        out = json.dumps(doc).encode()
        h.send_response(status)
        for name, value in [*headers, ("Content-Length", str(len(out)))]:
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(out)


def send_secrets(base: str, proxies: str | None) -> dict[str, Any]:
    """Every kind of secret, sent by requests then httpx; returns what the clients got back."""
    got: dict[str, Any] = {}
    with requests.Session() as s:
        s.trust_env = False
        if proxies:
            s.proxies = {"http": proxies}
        bearer = {"Authorization": f"Bearer {S.BEARER}"}
        r1 = s.get(
            f"{base}/echo?subscription-key={S.QUERY_KEY}&region=eu",
            headers={
                **bearer,
                "Ocp-Apim-Subscription-Key": S.SUBSCRIPTION_KEY,
                "Cookie": f"session={S.CLIENT_COOKIE}",
            },
            timeout=TIMEOUT,
        )
        # the header's key now in the query, the same token again
        r2 = s.get(f"{base}/echo?subscription-key={S.SUBSCRIPTION_KEY}", headers=bearer, timeout=TIMEOUT)
        r3 = s.post(f"{base}/echo", json={"user": "bob", "password": S.PASSWORD}, timeout=TIMEOUT)
        r4 = s.put(f"{base}/echo?{CLIENT_SAS}", data=b"blob bytes", timeout=TIMEOUT)
        got["requests"] = [r.status_code for r in (r1, r2, r3, r4)]
        got["echoed"] = r1.json()["headers"]
    with httpx.Client(
        auth=(S.BASIC_USER, S.BASIC_PASSWORD), proxy=proxies, trust_env=False, timeout=TIMEOUT
    ) as c:
        token = c.post(
            f"{base}/oauth/token",
            data={"grant_type": "client_credentials", "client_id": "app", "client_secret": S.CLIENT_SECRET},
        )
        cookies = c.get(f"{base}/cookies")
        # the cookie the upstream set, sent back to it
        back = c.get(f"{base}/echo", headers={"Cookie": "session=s3cr3t-cookie"})
        start = c.post(f"{base}/blobs/start")
        blob = c.get(start.headers["Location"])
        got["httpx"] = [r.status_code for r in (token, cookies, back, start, blob)]
        got["token"] = token.json()
        got["set-cookie"] = cookies.headers.get_list("set-cookie") + start.headers.get_list("set-cookie")
        got["location"] = start.headers["Location"]
        got["blob"] = blob.json()
    return got


def saved(path: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = yaml.safe_load(path.read_text("utf-8"))["interactions"]
    return items


def header(message: dict[str, Any], name: str) -> str:
    values = [v for k, vs in message["headers"].items() if k.lower() == name.lower() for v in vs]
    assert len(values) == 1, (name, message["headers"])
    return str(values[0])


def placeholder(text: str) -> str:
    found = PLACEHOLDER_RE.findall(text)
    assert len(found) == 1, text
    return str(found[0])


def query(uri: str, name: str) -> str:
    return parse_qs(urlsplit(uri).query)[name][0]


@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_no_secret_reaches_the_cassette_end_to_end(mode: str, cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "recorded"
    cassette = out / "secrets.yaml"
    with SecretUpstream() as upstream:
        where = [upstream.url] if mode == "reverse" else ["--mode", "regular"]
        proc = cli(
            ["record", *where, "-o", str(cassette), "--port", "0", "-q", "--redact-json-field", "password"]
        )
        try:
            base = proc.url if mode == "reverse" else upstream.url
            got = send_secrets(base, proc.url if mode == "regular" else None)
            during = {p.name: leaks_in(p, SUITE_SECRETS) for p in out.iterdir()}  # appended as it happens
        finally:
            assert proc.stop() == 0, proc.stderr
        sent = upstream.requests

    # The secrets did travel, untouched, both ways: the scan below is not vacuous.
    assert got["requests"] == [200, 200, 200, 200] and got["httpx"] == [200, 200, 200, 202, 200]
    assert got["echoed"]["Authorization"] == f"Bearer {S.BEARER}"
    assert sent[0]["headers"]["Ocp-Apim-Subscription-Key"] == S.SUBSCRIPTION_KEY
    assert sent[0]["headers"]["Cookie"] == f"session={S.CLIENT_COOKIE}"
    assert query(sent[1]["path"], "subscription-key") == S.SUBSCRIPTION_KEY
    assert json.loads(sent[2]["body"])["password"] == S.PASSWORD
    assert query(sent[3]["path"], "sig") == S.CLIENT_SIG
    assert sent[4]["headers"]["Authorization"] == f"Basic {S.BASIC}"
    assert parse_qs(sent[4]["body"].decode())["client_secret"] == [S.CLIENT_SECRET]
    assert got["token"]["access_token"] == S.ACCESS_TOKEN and got["token"]["refresh_token"] == S.REFRESH_TOKEN
    assert got["set-cookie"] == [
        "session=s3cr3t-cookie; Path=/; HttpOnly",
        "b=2; Path=/",
        f"affinity={S.UPSTREAM_COOKIE}; Path=/; Secure",
    ]
    assert query(got["location"], "sig") == S.UPSTREAM_SIG
    assert got["blob"]["url"].endswith(f"/blobs/b1?{UPSTREAM_SAS}")

    # Not one secret, in any form, in any file the proxy wrote: while recording or after.
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["secrets.yaml"]
    assert during == {"secrets.yaml": []}
    assert leaks_in(cassette, SUITE_SECRETS) == []

    # The same secret has the same placeholder wherever it was; different secrets have different ones.
    items = saved(cassette)
    assert len(items) == 9  # one per exchange, nothing else
    echo1, echo2, echo_post, echo_sas, token, cookies, back, start, blob = items
    owner: dict[str, str] = {}

    def same(name: str, *texts: str) -> None:
        found = {placeholder(t) for t in texts}
        assert len(found) == 1, (name, texts)
        owner[name] = found.pop()

    same("bearer", header(echo1["request"], "Authorization"), header(echo2["request"], "Authorization"))
    same(
        "subscription key, header then query",
        header(echo1["request"], "Ocp-Apim-Subscription-Key"),
        query(echo2["request"]["uri"], "subscription-key"),
    )
    same("query key", query(echo1["request"]["uri"], "subscription-key"))
    same("client cookie", header(echo1["request"], "Cookie"))
    same("password", json.loads(echo_post["request"]["body"])["password"])
    same("client sig", query(echo_sas["request"]["uri"], "sig"))
    same(
        "basic",
        *(header(i["request"], "Authorization") for i in (token, cookies, back, start, blob)),
    )
    same("client secret", parse_qs(token["request"]["body"])["client_secret"][0])
    tokens = json.loads(token["response"]["body"]["string"])
    same("access token", tokens["access_token"])
    same("refresh token", tokens["refresh_token"])
    set_cookie = [
        v for k, vs in cookies["response"]["headers"].items() if k.lower() == "set-cookie" for v in vs
    ]
    same("upstream cookie, set then sent back", set_cookie[0], header(back["request"], "Cookie"))
    same(
        "upstream sig, in Location, body and the request that followed it",
        query(header(start["response"], "Location"), "sig"),
        query(json.loads(start["response"]["body"]["string"])["resourceLocation"], "sig"),
        query(blob["request"]["uri"], "sig"),
        query(json.loads(blob["response"]["body"]["string"])["url"], "sig"),
    )
    same("affinity cookie", header(start["response"], "Set-Cookie"))
    assert len(set(owner.values())) == len(owner) == 13, owner
    # The echoes of the request's secrets in the response body carry the request's placeholders.
    echoed = json.loads(echo1["response"]["body"]["string"])["headers"]
    assert echoed["Authorization"] == f"Bearer {owner['bearer']}"
    assert echoed["Ocp-Apim-Subscription-Key"] == owner["subscription key, header then query"]


# ----------------------------------------------------------------------------- the scan itself


def test_the_scan_finds_a_secret_in_every_form(tmp_path: Path) -> None:
    """The scan is the proof: it must find what it looks for, however the file spells it."""
    secret = "not a suite secret+scan/check="  # not in SUITE_SECRETS: the session scan stays clean
    assert secret not in SUITE_SECRETS
    files = {
        "raw.yaml": f"interactions:\n- token: {secret}\n",
        "percent.yaml": f"uri: http://h/p?sig={quote(secret, safe='')}\n",
        "plus.yaml": f"body: a=1&password={quote_plus(secret)}\n",
        "folded.yaml": yaml.safe_dump({"body": secret}, width=10),
        "binary.yaml": yaml.safe_dump({"body": b"\x00\x01" + secret.encode()}),
        "json.yaml": yaml.safe_dump({"body": json.dumps({"a": secret})}),
        "basic.yaml": f"Authorization: Basic {base64.b64encode(secret.encode()).decode()}\n",
        "clean.yaml": yaml.safe_dump({"body": "<REDACTED-1>"}),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert secret not in (tmp_path / "folded.yaml").read_text()  # YAML really split it across lines
    assert secret not in (tmp_path / "binary.yaml").read_text()  # and wrote it as base64
    found = {name: leaks_in(tmp_path / name, [secret]) for name in files}
    assert found == {name: ([] if name == "clean.yaml" else [secret]) for name in files}


def test_the_session_scan_reads_files_the_proxy_redacted_only(tmp_path: Path) -> None:
    """A file holding a placeholder and a secret is a leak; one with no placeholder at all was written by
    vcrpy, or with redaction off, on purpose (tests/conftest.py::no_secret_left_in_a_cassette)."""
    secret = "not-a-suite-secret-session-scan"
    (tmp_path / "deep" / "er").mkdir(parents=True)
    leaky = tmp_path / "deep" / "er" / "leaky.yaml"
    leaky.write_bytes(PLACEHOLDER + b"1>\nsession=" + secret.encode())
    (tmp_path / "vcrpy.yaml").write_text(f"session={secret}\n")
    (tmp_path / "clean.yaml").write_bytes(PLACEHOLDER + b"2>\n")
    assert redacted_files_with_leaks(tmp_path, [secret]) == (2, {leaky: [secret]})
