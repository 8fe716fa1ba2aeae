"""Matcher: vcrpy names, index keys, vcrpy's body/header functions, and readable differences."""

from __future__ import annotations

import io

import pytest
from vcr import matchers as vcr_matchers
from vcr.request import Request as VcrRequest

from proxy.errors import ConfigError
from proxy.matching import (
    DEFAULT_MATCH_ON,
    MATCHER_NAMES,
    Matcher,
    from_vcr_request,
    to_vcr_request,
)
from proxy.model import Request

JSON = (("Content-Type", "application/json"),)


def get(url: str, headers: tuple[tuple[str, str], ...] = ()) -> Request:
    return Request("GET", url, headers)


def test_names_and_default() -> None:
    assert DEFAULT_MATCH_ON == ("method", "path", "query")
    assert set(MATCHER_NAMES) == {
        "method",
        "uri",
        "url",
        "scheme",
        "host",
        "port",
        "path",
        "query",
        "body",
        "raw_body",
        "headers",
    }
    m = Matcher()
    assert m.match_on == DEFAULT_MATCH_ON and m.headers == ()


def test_unknown_matcher_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown matcher 'bogus'; choose from: method, uri"):
        Matcher(["method", "bogus"])
    with pytest.raises(ConfigError):
        Matcher(headers=["bad name"])


def test_default_ignores_host_and_query_order() -> None:
    m = Matcher()
    a = get("https://real.example.com/items?b=2&a=1")
    b = get("http://127.0.0.1:8080/items?a=1&b=2")
    assert m.key(a) == m.key(b)
    assert m.matches(a, b)
    assert not m.matches(a, get("http://x/items?a=1&b=3"))
    assert not m.matches(a, Request("POST", "http://x/items?a=1&b=2"))
    assert m.matches(Request("get", "http://x/items?b=2&a=1"), a)  # method case


def test_query_repeats_count_and_blank_values_do_not_as_in_vcrpy() -> None:
    m = Matcher()
    assert not m.matches(get("http://x/p?a=1&a=1"), get("http://x/p?a=1"))
    assert m.matches(get("http://x/p?a=1&flag="), get("http://x/p?a=1"))  # vcrpy: parse_qsl drops blanks
    assert m.matches(get("http://x/p?a=1&flag"), get("http://x/p?a=1"))
    assert m.matches(get("http://x/p?a=1&a=2"), get("http://x/p?a=2&a=1"))
    assert not m.matches(get("http://x/p?a="), get("http://x/p?a=0"))


QUERIES = [
    "",
    "?",
    "?a=",
    "?a",
    "?a=&b=1",
    "?b=1",
    "?b=1&a=",
    "?a=1&a=1",
    "?a=1",
    "?a=%20",
    "?a=+",
    "?a=1;b=2",
    "?a=1&&b=2",
    "?=1",
    "?a=1&b=2",
    "?b=2&a=1",
    "?a=%3D",
    "?a==",
    "?%61=1",
]


@pytest.mark.parametrize("left", QUERIES)
def test_query_matcher_agrees_with_vcrpys(left: str) -> None:
    """The query key equal exactly when vcrpy's own query matcher says the two requests match."""
    m = Matcher(["query"])
    for right in QUERIES:
        a, b = get(f"http://x/p{left}"), get(f"http://x/p{right}")
        try:
            vcr_matchers.query(to_vcr_request(a), to_vcr_request(b))
            vcrpy_says = True
        except AssertionError:
            vcrpy_says = False
        assert m.matches(a, b) is vcrpy_says, (left, right)


def test_path_matcher_agrees_with_vcrpy_on_params() -> None:
    m = Matcher(["path"])
    a, b = get("http://x/a;v=1"), get("http://x/a;v=2")
    assert m.matches(a, b)
    assert vcr_matchers.path(to_vcr_request(a), to_vcr_request(b)) is None
    assert not m.matches(get("http://x/a;v=1/b"), get("http://x/a;v=2/b"))


def test_filters_apply_vcrpys_filters_before_matching() -> None:
    m = Matcher(filter_query_parameters=["api_key"], filter_headers=["Authorization"])
    recorded = get("http://x/p?a=1")  # as vcrpy's filter_query_parameters=["api_key"] saved it
    live = get("http://x/p?api_key=s3cr3t&a=1", (("authorization", "Bearer x"), ("Accept", "*/*")))
    assert m.matches(recorded, live) and m.key(recorded) == m.key(live)
    assert not Matcher().matches(recorded, live)
    assert m.prepare(live) == get("http://x/p?a=1", (("Accept", "*/*"),))
    assert m.prepare(recorded) is recorded
    # NAME=VALUE replaces, as vcrpy's (name, replacement) pairs do; the query is re-encoded sorted
    r = Matcher(filter_query_parameters=["token=<T>"], filter_headers=["X-Key=k"])
    assert r.prepare(get("http://x/p?z=1&token=abc", (("x-key", "v"),))) == get(
        "http://x/p?token=%3CT%3E&z=1", (("x-key", "k"),)
    )
    # chosen headers compare after filtering
    h = Matcher(headers=["x-tenant"], filter_headers=["x-tenant"])
    assert h.matches(get("http://x/p"), get("http://x/p", (("X-Tenant", "t"),)))
    with pytest.raises(ConfigError, match="invalid header name"):
        Matcher(filter_headers=["bad name"])
    with pytest.raises(ConfigError, match="invalid query parameter name"):
        Matcher(filter_query_parameters=["=x"])


def test_unrecorded_names_only_what_filters_drop() -> None:
    m = Matcher(headers=["x-tenant"])
    recorded = get("http://x/p?a=1", (("X-Other", "1"),))
    live = get("http://x/p?a=1&api_key=k&sig=s", (("X-Tenant", "t"),))
    assert m.unrecorded(recorded, live) == (("query", "api_key"), ("query", "sig"), ("header", "x-tenant"))
    assert m.unrecorded(recorded, get("http://x/p?a=2&api_key=k")) == ()  # a value differs too
    assert m.unrecorded(recorded, get("http://x/q?a=1&api_key=k")) == ()  # the path differs too
    assert m.unrecorded(get("http://x/p?a=1&api_key=old"), get("http://x/p?a=1&api_key=k")) == ()
    assert m.unrecorded(recorded, get("http://x/p?a=1&api_key=k", (("X-Tenant", "t"),))) == (
        ("query", "api_key"),
        ("header", "x-tenant"),
    )
    assert Matcher(filter_query_parameters=["api_key", "sig"]).unrecorded(recorded, live) == ()  # matches


def test_body_recorded_as_a_value_matches_what_the_client_sends() -> None:
    """vcrpy's aiohttp stub records json= / data= values, not bytes: they match the bytes sent for them."""
    m = Matcher(["method", "path", "body"])
    recorded = VcrRequest("POST", "http://x/q", {"b": [1, 2], "a": "x"}, {})
    sent = m.vcr_request(Request("POST", "http://x/q", JSON, b'{"a": "x", "b": [1, 2]}'))
    assert m.confirm(recorded, sent)
    form = m.vcr_request(Request("POST", "http://x/q", (), b"a=x&b=2"))
    assert m.confirm(VcrRequest("POST", "http://x/q", {"a": "x", "b": 2}, {}), form)
    assert not m.confirm(recorded, m.vcr_request(Request("POST", "http://x/q", JSON, b'{"a": "y"}')))
    assert not m.confirm(VcrRequest("POST", "http://x/q", [1, 2], {}), form)


def test_uri_is_exact_like_vcrpy_except_bare_host() -> None:
    m = Matcher(["uri"])
    assert m.matches(get("https://h.example"), get("https://h.example/"))
    assert not m.matches(get("https://h.example/p?a=1&b=2"), get("https://h.example/p?b=2&a=1"))
    assert Matcher(["url"]).matches(get("https://h/p"), get("https://h/p"))


def test_scheme_host_port() -> None:
    m = Matcher(["scheme", "host", "port"])
    assert m.matches(get("https://H.example.com/a"), get("https://h.example.com:443/b"))
    assert not m.matches(get("https://h/a"), get("http://h/a"))
    assert not m.matches(get("http://h:8080/a"), get("http://h/a"))
    assert m.differences(get("http://h:8080/a"), get("http://h/a")) == ["port: 80 != 8080"]


def test_chosen_headers_case_insensitive_names() -> None:
    m = Matcher(headers=["X-Tenant"])
    a = get("http://x/p", (("x-tenant", "a"), ("User-Agent", "one")))
    assert m.matches(a, get("http://x/p", (("X-TENANT", "a"), ("User-Agent", "two"))))
    assert not m.matches(a, get("http://x/p", (("X-Tenant", "b"),)))
    assert not m.matches(a, get("http://x/p"))
    assert m.differences(a, get("http://x/p")) == ["header x-tenant: (absent) != 'a'"]
    assert m.differences(a, get("http://x/p", (("X-Tenant", "b"),))) == ["header x-tenant: 'b' != 'a'"]


def test_body_matcher_is_vcrpy_content_aware() -> None:
    m = Matcher(["method", "path", "body"])
    assert m.needs_confirmation
    rec = Request("POST", "http://x/q", JSON, b'{"a": 1, "b": [1, 2]}')
    same = Request("POST", "http://x/q", JSON, b'{"b":[1,2],"a":1}')
    other = Request("POST", "http://x/q", JSON, b'{"a": 2, "b": [1, 2]}')
    assert m.key(rec) == m.key(other)  # body is not part of the key
    assert m.matches(rec, same)
    assert not m.matches(rec, other)
    diffs = m.differences(rec, other)
    assert len(diffs) == 1 and diffs[0].startswith("body: ") and "\n" not in diffs[0]
    assert '"a": 2' in diffs[0] and '"a": 1' in diffs[0]
    # raw_body compares bytes
    raw = Matcher(["method", "path", "raw_body"])
    assert not raw.matches(rec, same)
    assert raw.matches(rec, rec)


def test_form_body_and_empty_body() -> None:
    m = Matcher(["body"])
    form = (("Content-Type", "application/x-www-form-urlencoded"),)
    a = Request("POST", "http://x/", form, b"a=1&b=2")
    assert m.matches(a, a.replace(body=b"b=2&a=1"))
    assert m.matches(get("http://x/"), get("http://x/"))


def test_all_headers_matcher_uses_vcrpy() -> None:
    m = Matcher(["path", "headers"])
    a = get("http://x/p", (("Accept", "a"),))
    assert m.matches(a, get("http://x/p", (("accept", "a"),)))
    assert not m.matches(a, get("http://x/p", (("Accept", "a"), ("User-Agent", "u"))))
    assert m.differences(a, get("http://x/p"))[0].startswith("headers: ")


def test_differences_lines() -> None:
    m = Matcher()
    rec = get("https://atlas.example/tilesets/operations/1?datasetId=abc&api-version=2")
    inc = get("http://127.0.0.1/tilesets/operations/2?api-version=2&foo=1")
    assert m.differences(rec, inc) == [
        "path: /tilesets/operations/2 != /tilesets/operations/1",
        "query: missing datasetId=abc; unexpected foo=1",
    ]
    assert m.differences(rec, rec) == []
    assert Matcher(["method"]).differences(rec, Request("POST", rec.url)) == ["method: POST != GET"]


def test_to_vcr_request() -> None:
    r = Request(
        "POST",
        "http://x/p?a=1",
        (("Accept", "a"), ("X-Multi", "one"), ("x-multi", "two"), ("Cookie", "a=1"), ("Cookie", "b=2")),
        b"",
    )
    v = to_vcr_request(r)
    assert v.body is None  # like vcrpy's requests stub for an empty body
    assert v.method == "POST" and v.uri == "http://x/p?a=1"
    assert v.headers["x-multi"] == "one, two"
    assert v.headers["cookie"] == "a=1; b=2"
    assert list(v.headers) == ["Accept", "X-Multi", "Cookie"]
    assert to_vcr_request(r.replace(body=b"\x00\xff")).body == b"\x00\xff"


def test_from_vcr_request_body_kinds() -> None:
    base = {"method": "PUT", "uri": "http://x/p", "headers": {"A": ["1", "2"], "b": "x"}}
    assert from_vcr_request(VcrRequest(body=None, **base)).body == b""
    assert from_vcr_request(VcrRequest(body="héllo", **base)).body == "héllo".encode()
    assert from_vcr_request(VcrRequest(body=b"\xff", **base)).body == b"\xff"
    assert from_vcr_request(VcrRequest(body=io.BytesIO(b"file"), **base)).body == b"file"
    assert from_vcr_request(VcrRequest(body=iter([b"a", b"b"]), **base)).body == b"ab"
    r = from_vcr_request(VcrRequest(body=None, **base))
    assert r.headers == (("A", "1"), ("b", "x"))  # HeadersDict keeps one value per name
    assert r.method == "PUT" and r.url == "http://x/p"


def test_vcr_matchers_agree_on_simple_cases() -> None:
    """Our key-based matching says what vcrpy's own matcher functions say."""
    pairs = [
        ("http://x/p?a=1&b=2", "http://x/p?b=2&a=1"),
        ("http://x/p?a=1", "http://x/p?a=2"),
        ("http://x/p", "http://x/q"),
        ("http://x", "http://x/"),
    ]
    fns = {"path": vcr_matchers.path, "query": vcr_matchers.query, "uri": vcr_matchers.uri}
    for a, b in pairs:
        for name, fn in fns.items():
            ours = Matcher([name]).matches(get(a), get(b))
            theirs = vcr_matchers.requests_match(to_vcr_request(get(b)), to_vcr_request(get(a)), [fn])
            assert ours == theirs, (name, a, b)


def test_keys_remembered_by_method_and_url_are_each_requests_own() -> None:
    """``key`` is remembered by method and URL when nothing else goes into it; with headers matched or
    parameters filtered it is made each time (they are not part of what it is remembered by)."""
    m = Matcher()
    a = Request("GET", "https://h/ops/1?x=1")
    assert m.key(a) == m.key(Request("GET", "https://h/ops/1?x=1"))
    assert m.key(a) != m.key(Request("GET", "https://h/ops/2?x=1"))
    assert m.key(a) != m.key(Request("DELETE", "https://h/ops/1?x=1"))
    by_header = Matcher(headers=("x-tenant",))
    one = Request("GET", "https://h/ops/1", headers=(("X-Tenant", "one"),))
    two = Request("GET", "https://h/ops/1", headers=(("X-Tenant", "two"),))
    assert by_header.key(one) != by_header.key(two)
    filtered = Matcher(filter_query_parameters=("sig",))
    assert filtered.key(Request("GET", "https://h/a?sig=1")) == filtered.key(Request("GET", "https://h/a?sig=2"))
