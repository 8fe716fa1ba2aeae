"""Every cassette shape vcrpy's current release loads, the proxy loads and replays as vcrpy's stubs do.

Small hand-written files, one per shape vcrpy's own stubs write (aiohttp's mapping request bodies and
``body: {}``, the old httpx format, tornado's header pairs), a response no stub can replay inside an
otherwise good file, vcrpy's JSON serializer both ways (a real vcrpy round trip), other top-level keys
kept on rewrite, and the errors for files vcrpy refuses too.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import requests
import vcr
import yaml
from vcr.cassette import Cassette
from vcr.request import Request as VcrRequest
from vcr.serialize import serialize
from vcr.serializers import yamlserializer

from proxy import cassette as cassette_module
from proxy.cassette import CassetteWriter, Playback, Played, load, read, save
from proxy.errors import CassetteError
from proxy.matching import Matcher
from proxy.model import Interaction, Request, Response
from proxy.server import ReplayProxy
from tests.conftest import run_cli
from tests.upstream import Upstream

TIMEOUT = 10


def vcrpy_loads(path: Path) -> Cassette:
    """vcrpy's own load of ``path`` (YAML or JSON by name), as ``use_cassette`` does it."""
    return Cassette.load(path=str(path), serializer=vcr_serializer(path), record_mode="none")


def vcr_serializer(path: Path) -> Any:
    from vcr.serializers import jsonserializer

    return jsonserializer if path.suffix == ".json" else yamlserializer


def write_vcrpy(path: Path, requests_: list[VcrRequest], responses: list[dict[str, Any]]) -> None:
    """A cassette written by vcrpy's own serializer from what one of its stubs hands ``Cassette.append``."""
    path.write_text(serialize({"requests": requests_, "responses": responses}, vcr_serializer(path)))


OK = {"code": 200, "message": "OK"}

# ---------------------------------------------------------------- aiohttp: values as bodies, body: {}


def aiohttp_cassette(path: Path) -> None:
    """What vcrpy's aiohttp stub records for ``session.post(url, json={...})`` (the value, not bytes; no
    Content-Type among its headers) answered without a body (``body: {}``), and a ``data=`` form."""
    write_vcrpy(
        path,
        [
            VcrRequest("POST", "http://svc.test/items", {"name": "x", "tags": [1, 2]}, {"Accept": ["*/*"]}),
            VcrRequest("POST", "http://svc.test/form", {"a": "1", "b": 2}, {}),
        ],
        [
            {"status": {"code": 204, "message": "No Content"}, "headers": {}, "body": {}},
            {"status": OK, "headers": {"Content-Type": ["text/plain"]}, "body": {"string": b"form ok"}},
        ],
    )


def test_aiohttp_value_bodies_and_empty_body_load(tmp_path: Path) -> None:
    path = tmp_path / "aiohttp.yaml"
    aiohttp_cassette(path)
    assert "name: x" in path.read_text() and "body: {}" in path.read_text()  # the shapes under test
    vcrpy_loads(path)
    first, second = load(path)
    assert json.loads(first.request.body) == {"name": "x", "tags": [1, 2]}
    assert first.response == Response(204, "No Content", (), b"")
    assert second.response.body == b"form ok"


def test_aiohttp_value_bodies_match_what_clients_send(tmp_path: Path) -> None:
    path = tmp_path / "aiohttp.yaml"
    aiohttp_cassette(path)
    with ReplayProxy(path, match_on=["method", "path", "body"], confdir=tmp_path / "conf") as proxy:
        # keys in another order than recorded, as a client that builds the dict differently sends them
        r = requests.post(f"{proxy.url}/items", json={"tags": [1, 2], "name": "x"}, timeout=TIMEOUT)
        assert (r.status_code, r.content) == (204, b"")
        r = requests.post(f"{proxy.url}/form", data={"b": "2", "a": "1"}, timeout=TIMEOUT)
        assert (r.status_code, r.text) == (200, "form ok")
        r = requests.post(f"{proxy.url}/items", json={"name": "y", "tags": [1, 2]}, timeout=TIMEOUT)
        assert r.status_code == 599 and r.headers["X-Replay-Proxy"] == "no-match"


# ---------------------------------------------------------------- httpx before vcrpy 5: status_code, content


OLD_HTTPX = """\
interactions:
- request:
    body: ''
    headers:
      host: [svc.test]
    method: GET
    uri: https://svc.test/old
  response:
    content: '{"old": "format"}'
    headers:
      content-encoding: [gzip]
      content-length: ['37']
      content-type: [application/json]
    http_version: HTTP/1.1
    status_code: 200
version: 1
"""


def test_old_httpx_format_replays_as_vcrpys_httpx_stub_does(tmp_path: Path) -> None:
    """Decoded text in ``content`` with the encoding header kept: vcrpy's stub drops the header and fixes
    the length (decode_response), and httpx takes the reason phrase from the code."""
    path = tmp_path / "old-httpx.yaml"
    path.write_text(OLD_HTTPX)
    vcrpy_loads(path)
    (got,) = load(path)
    assert got.response == Response(
        200,
        "OK",
        (("content-length", "17"), ("content-type", "application/json")),
        b'{"old": "format"}',
    )


def test_old_httpx_format_with_a_compressed_body(tmp_path: Path) -> None:
    path = tmp_path / "old-httpx-gz.yaml"
    packed = gzip.compress(b"hello")
    path.write_text(
        yaml.dump(
            {
                "interactions": [
                    {
                        "request": {"body": "", "headers": {}, "method": "GET", "uri": "http://h/"},
                        "response": {
                            "content": packed,
                            "headers": {"Content-Encoding": ["gzip"]},
                            "http_version": "HTTP/1.1",
                            "status_code": 201,
                        },
                    }
                ],
                "version": 1,
            },
            Dumper=yamlserializer._CassetteDumper,
        )
    )
    (got,) = load(path)
    assert (got.response.status, got.response.reason, got.response.body) == (201, "Created", b"hello")
    assert got.response.header("content-encoding") is None and got.response.header("content-length") == "5"


# ---------------------------------------------------------------- tornado: header pairs


def test_tornado_header_pairs(tmp_path: Path) -> None:
    """vcrpy's tornado stub saves response headers as a list of ``(name, values)`` tuples (YAML writes
    ``!!python/tuple``) and the effective ``url`` beside them."""
    path = tmp_path / "tornado.yaml"
    write_vcrpy(
        path,
        [VcrRequest("GET", "http://svc.test/t", None, {"User-Agent": ["Tornado"]})],
        [
            {
                "status": OK,
                "headers": [("Content-Type", ["text/plain"]), ("Set-Cookie", ["a=1", "b=2"])],
                "body": {"string": b"tornado"},
                "url": "http://svc.test/t",
            }
        ],
    )
    assert "!!python/tuple" in path.read_text()
    vcrpy_loads(path)
    (got,) = load(path)
    assert got.response == Response(
        200, "OK", (("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")), b"tornado"
    )


def test_scalar_header_values_and_null_message(tmp_path: Path) -> None:
    """A scalar header value is one value (aiohttp's stub, and vcrpy's request HeadersDict); a null status
    message is the code's phrase (httpx's stub)."""
    path = tmp_path / "scalars.yaml"
    path.write_text(
        "interactions:\n- request: {body: null, headers: {Accept: text/plain}, method: GET, uri: 'http://h/'}\n"
        "  response: {body: {string: hi}, headers: {Content-Type: text/plain},\n"
        "    status: {code: 404, message: null}}\n"
    )
    vcrpy_loads(path)
    (got,) = load(path)
    assert got.request.headers == (("Accept", "text/plain"),)
    assert got.response == Response(404, "Not Found", (("Content-Type", "text/plain"),), b"hi")


# ---------------------------------------------------------------- one odd interaction, not a dead file

GOOD = "- request: {body: null, headers: {}, method: GET, uri: 'http://h/good'}\n" + (
    "  response: {body: {string: good}, headers: {}, status: {code: 200, message: OK}}\n"
)
ODD_RESPONSES = {
    "status without message": "{body: {string: x}, headers: {}, status: {code: 200}}",
    "no status": "{body: {string: x}, headers: {}}",
    "status code not a number": "{body: {string: x}, headers: {}, status: {code: abc, message: OK}}",
    "body not a mapping": "{body: text, headers: {}, status: {code: 200, message: OK}}",
    "no body": "{headers: {}, status: {code: 200, message: OK}}",
    "response not a mapping": "just text",
    "headers not a mapping": "{body: {string: x}, headers: 3, status: {code: 200, message: OK}}",
}


@pytest.mark.parametrize("name", sorted(ODD_RESPONSES))
def test_a_response_no_stub_replays_leaves_the_rest_playable(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """vcrpy loads such a file and fails only when it plays that interaction: the proxy loads it too,
    warns with file:line:col, and answers a request that matches it with a 599 saying why."""
    path = tmp_path / "odd.yaml"
    path.write_text(
        "interactions:\n"
        + GOOD
        + "- request: {body: null, headers: {}, method: GET, uri: 'http://h/odd'}\n"
        + f"  response: {ODD_RESPONSES[name]}\n"
        + GOOD.replace("/good", "/after")
        + "version: 1\n"
    )
    vcrpy_loads(path)
    with caplog.at_level(logging.WARNING, logger="proxy"):
        items = load(path)
    assert [i.request.path for i in items] == ["/good", "/odd", "/after"]
    assert items[0].response.body == items[2].response.body == b"good"
    odd = items[1].response
    assert (odd.status, odd.header("X-Replay-Proxy")) == (599, "unplayable")
    message = json.loads(odd.body)["error"]["message"]
    assert re.search(rf"{re.escape(str(path))}:[45]:\d+: interaction 1 cannot be replayed", message), message
    assert re.search(rf"{re.escape(str(path))}:[45]:\d+: interaction 1 cannot be replayed", caplog.text)


def parse(path: Path) -> Any:
    text = path.read_text()
    return (
        json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=yamlserializer._CassetteLoader)
    )


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_rewrite_keeps_odd_items_and_other_top_level_keys(tmp_path: Path, suffix: str) -> None:
    """Recording more into a cassette (record modes all, new_episodes) writes the items the proxy read in
    other shapes back as they were, and keeps top-level keys it does not know (vcrpy's ``metadata``)."""
    path = tmp_path / f"mixed{suffix}"
    aiohttp_cassette(path)
    data = parse(path)
    data["metadata"] = {"recorded_by": "someone"}
    path.write_text(json.dumps(data, indent=4) if suffix == ".json" else yaml.dump(data))
    before = parse(path)
    loaded = read(path)
    assert loaded.extra == {"metadata": {"recorded_by": "someone"}}
    new = Interaction(Request("GET", "http://svc.test/new"), Response(200, "OK", (), b"new"))
    with CassetteWriter(path, loaded.interactions, loaded.extra) as writer:
        writer.append(new)
        middle = parse(path)  # the recording layout
        assert middle["metadata"] == before["metadata"] and len(middle["interactions"]) == 3
        writer.close([*loaded.interactions, new])
    after = parse(path)
    assert after["metadata"] == before["metadata"]
    assert after["interactions"][:2] == before["interactions"]  # body mappings and body: {} as they were
    assert len(vcrpy_loads(path)) == 3


def test_the_recording_layout_with_other_keys_recovers_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "torn.yaml"
    items = [Interaction(Request("GET", f"http://h/{i}"), Response(200, "OK", (), b"x")) for i in range(3)]
    with CassetteWriter(path, items[:1], {"metadata": {"a": 1}}) as writer:
        writer.append(items[1])
        writer.append(items[2])
    text = path.read_text()
    assert text.startswith("version: 1\nmetadata:\n")
    last = text.rfind("\n- request:")
    lines = [i + 1 for i, c in enumerate(text) if c == "\n" and last < i < len(text) - 1]
    for cut in [last + 2, last + 5, *lines, *(n + 3 for n in lines)]:  # cut at and inside lines
        path.write_text(text[:cut])
        assert [i.request.path for i in load(path)] == ["/0", "/1"], cut


# ---------------------------------------------------------------- JSON


def test_vcrpy_json_cassette_with_emoji_replays(tmp_path: Path, upstream: Upstream) -> None:
    """vcrpy's JSON serializer writes any emoji as surrogate escapes (``\\ud83d\\ude00``), which YAML
    refuses: a ``.json`` cassette is read as JSON."""
    path = tmp_path / "vcrpy.json"
    with vcr.use_cassette(str(path), serializer="json"):
        assert requests.post(f"{upstream.url}/echo", data="😀 ok".encode(), timeout=TIMEOUT).ok
        assert requests.get(f"{upstream.url}/json?e=1", timeout=TIMEOUT).ok
    assert "\\ud83d\\ude00" in path.read_text()
    seen = len(upstream.requests)
    with ReplayProxy(path, match_on=["method", "path", "query", "body"], confdir=tmp_path / "conf") as proxy:
        r = requests.post(f"{proxy.url}/echo", data="😀 ok".encode(), timeout=TIMEOUT)
        assert r.status_code == 200 and r.json()["body"] == "😀 ok"
        assert requests.get(f"{proxy.url}/json?e=1", timeout=TIMEOUT).json()["query"] == {"e": ["1"]}
    assert len(upstream.requests) == seen  # offline


def test_recording_to_a_json_path_writes_vcrpys_json(tmp_path: Path, upstream: Upstream) -> None:
    """Recorded through the proxy to ``.json``: vcrpy's JSON serializer loads it and vcrpy replays it
    in-process; the file stays valid JSON after every exchange (the append-as-you-go layout)."""
    path = tmp_path / "recorded.json"
    with ReplayProxy(path, upstream.url, confdir=tmp_path / "conf") as proxy:
        assert requests.get(f"{proxy.url}/json?a=1", timeout=TIMEOUT).ok
        assert json.loads(path.read_text())["version"] == 1
        r = requests.post(f"{proxy.url}/echo", data="héllo 😀".encode(), timeout=TIMEOUT)
        assert r.ok
        assert len(json.loads(path.read_text())["interactions"]) == 2
    data = json.loads(path.read_text())
    assert list(data) == ["version", "interactions"] and len(data["interactions"]) == 2
    assert path.read_text().endswith("\n    ]\n}\n")
    seen = len(upstream.requests)
    with vcr.use_cassette(str(path), serializer="json", record_mode="none", match_on=["method", "path"]):
        assert requests.get(f"{upstream.url}/json?a=1", timeout=TIMEOUT).json()["query"] == {"a": ["1"]}
        assert requests.post(f"{upstream.url}/echo", data=b"x", timeout=TIMEOUT).json()["body"] == "héllo 😀"
    assert len(upstream.requests) == seen


def test_json_save_is_what_vcrpys_serializer_writes(tmp_path: Path) -> None:
    items = [
        Interaction(
            Request(
                "POST", "http://h/p?a=1", (("Content-Type", "application/json"),), '{"e": "😀"}'.encode()
            ),
            Response(201, "Created", (("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")), "ünï".encode()),
        ),
        Interaction(Request("GET", "http://h/q"), Response(204, "No Content")),
    ]
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    save(ours, items)
    cassette = Cassette(str(theirs), serializer=vcr_serializer(theirs), record_mode="all")
    for i in items:
        cassette.append(
            VcrRequest(i.request.method, i.request.url, i.request.body or None, dict(i.request.headers)),
            cassette_module._response_dict(i.response),
        )
    cassette._save()
    assert ours.read_text() == theirs.read_text()
    assert load(ours) == items


def test_json_writer_keeps_a_valid_file_and_recovers_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    items = [Interaction(Request("GET", f"http://h/{i}"), Response(200, "OK", (), b"{}")) for i in range(3)]
    with CassetteWriter(path) as writer:
        for n, item in enumerate(items, 1):
            writer.append(item)
            assert load(path) == items[:n]
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=4) + "\n"
    last, end = text.rfind("\n        {"), text.rfind("\n        }") + 10
    for cut in range(last + 1, len(text) - 1):
        path.write_text(text[:cut])
        assert [i.request.path for i in load(path)] == ["/0", "/1", "/2"][: 2 if cut < end else 3], cut


def test_json_cannot_hold_a_binary_body(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    item = Interaction(Request("GET", "http://h/bin"), Response(200, "OK", (), b"\xff\x00"))
    with pytest.raises(CassetteError, match=r"b\.json: GET http://h/bin: a JSON cassette cannot hold"):
        CassetteWriter(path).append(item)
    with pytest.raises(CassetteError, match=r"record to a \.yaml cassette"):
        save(path, [item])


def test_a_json_cassette_not_named_json_is_read_as_json(tmp_path: Path) -> None:
    path = tmp_path / "named.yaml"
    save(
        tmp_path / "c.json",
        [Interaction(Request("GET", "http://h/"), Response(200, "OK", (), "😀".encode()))],
    )
    path.write_text((tmp_path / "c.json").read_text())
    assert load(path)[0].response.body == "😀".encode()


def test_json_errors_are_located(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n    "version": 1,\n    "interactions": [\n        {"request": }\n    ]\n}\n')
    with pytest.raises(CassetteError, match=rf"^{re.escape(str(path))}:4:21: invalid JSON: Expecting value"):
        load(path)
    path.write_text(
        '{\n    "interactions": [\n        {\n            "request": {"method": "GET", "uri": "http://h/",'
        ' "body": null},\n            "response": {}\n        }\n    ]\n}\n'
    )
    with pytest.raises(
        CassetteError, match=rf"^{re.escape(str(path))}:4:24: interaction 0: request is missing"
    ):
        load(path)


# ---------------------------------------------------------------- what vcrpy refuses: located, exit 2


@pytest.mark.parametrize(
    "name, text",
    [
        (
            "no-headers.yaml",
            "interactions:\n- request: {body: null, method: GET, uri: 'http://h/'}\n  response: {}\n",
        ),
        ("bad.json", '{"interactions": [}\n'),
    ],
)
def test_a_file_vcrpy_cannot_load_exits_2_with_its_location(
    tmp_path: Path, confdir: Path, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(Exception):  # noqa: B017 - vcrpy refuses it too, each in its own way
        vcrpy_loads(path)
    done = run_cli(["replay", str(path), "--port", "0"], confdir)
    assert done.returncode == 2, done.stderr
    assert re.search(rf"{re.escape(str(path))}:\d+:\d+: ", done.stderr), done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- vcrpy's filters


def filtered_cassette(path: Path) -> None:
    """What vcrpy writes with ``filter_query_parameters=["api_key"]``: the parameter is gone."""
    write_vcrpy(
        path,
        [VcrRequest("GET", "http://svc.test/items?page=2", None, {})],
        [{"status": OK, "headers": {}, "body": {"string": b"page two"}}],
    )


def test_the_599_names_the_filter_when_a_filtered_out_parameter_is_the_only_difference(
    tmp_path: Path,
) -> None:
    path = tmp_path / "filtered.yaml"
    filtered_cassette(path)
    with ReplayProxy(path, confdir=tmp_path / "conf") as proxy:
        r = requests.get(f"{proxy.url}/items?page=2&api_key=k", timeout=TIMEOUT)
        assert r.status_code == 599
        error = r.json()["error"]
        assert "--filter-query-parameter api_key" in error["message"]
        assert "filter_query_parameters" in error["hint"]
        r = requests.get(f"{proxy.url}/items?page=3&api_key=k", timeout=TIMEOUT)  # a real difference too
        assert r.status_code == 599 and "--filter-query-parameter" not in r.json()["error"]["message"]
    with ReplayProxy(path, filter_query_parameters=["api_key"], confdir=tmp_path / "conf") as proxy:
        r = requests.get(f"{proxy.url}/items?api_key=k&page=2", timeout=TIMEOUT)
        assert (r.status_code, r.text) == (200, "page two")


def test_recording_with_filters_saves_what_vcrpy_saves(tmp_path: Path, upstream: Upstream) -> None:
    path = tmp_path / "rec.yaml"
    with ReplayProxy(
        path,
        upstream.url,
        filter_query_parameters=["api_key"],
        filter_headers=["X-Client"],
        match_headers=["x-client"],
        confdir=tmp_path / "conf",
    ) as proxy:
        assert requests.get(f"{proxy.url}/json?b=1&api_key=k", headers={"X-Client": "c"}, timeout=TIMEOUT).ok
    (saved,) = load(path)
    assert saved.request.url == f"{upstream.url}/json?b=1"
    assert saved.request.header("X-Client") is None
    assert upstream.requests[-1]["path"] == "/json?b=1&api_key=k"  # the live request is untouched


def test_playback_filters_recorded_and_live_alike() -> None:
    recorded = Interaction(Request("GET", "http://h/p?a=1"), Response(200, "OK", (), b"x"))
    playback = Playback([recorded], Matcher(filter_query_parameters=["sig"]))
    assert isinstance(playback.play(Request("GET", "http://h/p?sig=s&a=1")), Played)


def test_recording_a_binary_body_to_json_fails_that_exchange_loudly(
    tmp_path: Path, upstream: Upstream
) -> None:
    path = tmp_path / "bin.json"
    with ReplayProxy(path, upstream.url, confdir=tmp_path / "conf") as proxy:
        assert requests.get(f"{proxy.url}/json", timeout=TIMEOUT).ok
        r = requests.get(f"{proxy.url}/binary", timeout=TIMEOUT)
        assert (r.status_code, r.headers["X-Replay-Proxy"]) == (500, "record-failed")
        assert "record to a .yaml cassette" in r.json()["error"]["message"]
    assert [i.request.path for i in load(path)] == ["/json"]  # what was saved before stays valid


def test_an_unplayable_interaction_answers_599_and_counts_as_unmatched(tmp_path: Path) -> None:
    from proxy.verdict import check

    path = tmp_path / "odd.yaml"
    path.write_text(
        "interactions:\n" + GOOD + "- request: {body: null, headers: {}, method: GET, uri: 'http://h/odd'}\n"
        "  response: {body: {string: x}, headers: {}, status: {code: 200}}\n"
    )
    with ReplayProxy(path, confdir=tmp_path / "conf") as proxy:
        assert requests.get(f"{proxy.url}/good", timeout=TIMEOUT).text == "good"
        r = requests.get(f"{proxy.url}/odd", timeout=TIMEOUT)
        assert (r.status_code, r.headers["X-Replay-Proxy"]) == (599, "unplayable")
        assert "response status has no message" in r.json()["error"]["message"]
        violations = check(proxy.journal.entries)
    assert [(v.rule, "#2: the recorded interaction cannot be replayed" in v.message) for v in violations] == [
        ("unmatched", True)
    ]


def test_recording_new_episodes_keeps_what_the_proxy_does_not_write_itself(
    tmp_path: Path, upstream: Upstream
) -> None:
    """Through the proxy (record mode new_episodes): tornado's header pairs and vcrpy's ``metadata`` of a
    loaded cassette are in the file it rewrites at stop, beside the new exchange."""
    path = tmp_path / "tornado.yaml"
    write_vcrpy(
        path,
        [VcrRequest("GET", f"{upstream.url}/recorded", None, {})],
        [{"status": OK, "headers": [("X-A", ["1"])], "body": {"string": b"old"}, "url": "u"}],
    )
    path.write_text(path.read_text() + "metadata:\n  kept: true\n")
    before = parse(path)
    with ReplayProxy(path, upstream.url, record_mode="new_episodes", confdir=tmp_path / "conf") as proxy:
        assert requests.get(f"{proxy.url}/recorded", timeout=TIMEOUT).text == "old"
        assert requests.get(f"{proxy.url}/json", timeout=TIMEOUT).ok
    after = parse(path)
    assert after["metadata"] == {"kept": True}
    assert after["interactions"][0] == before["interactions"][0]
    assert [i.request.path for i in load(path)] == ["/recorded", "/json"]
