"""The last guard before the wire (issue 16): whatever built an answer, the proxy never sends a header the
answer does not hold. The loaders and the scenario machine refuse such answers first (tested with them);
this checks the guard itself, which replaces the answer by a 500 saying why."""

from __future__ import annotations

import json

import pytest

from proxy.addon import _flow_response
from proxy.model import Response


@pytest.mark.parametrize(
    ("headers", "reason", "why"),
    [
        ((("X-Echo", "a\r\nSet-Cookie: pwned=1"),), "OK", "header 'X-Echo' has a CR in its value"),
        ((("Location", "/next\nSet-Cookie: pwned=1"),), "Found", "header 'Location' has an LF in its value"),
        ((("X Bad", "v"),), "OK", "header name 'X Bad' is not a valid HTTP field name"),
        ((("X\u202eA", "v"),), "OK", "header name 'X\\u202eA' is not a valid HTTP field name"),
        ((), "OK\r\nSet-Cookie: pwned=1", "the reason phrase 'OK\\r\\nSet-Cookie: pwned=1' has a CR"),
    ],
)
def test_an_answer_with_a_header_it_does_not_hold_is_never_sent(
    headers: tuple[tuple[str, str], ...], reason: str, why: str
) -> None:
    sent = _flow_response(Response(200, reason, headers, b"hello"))
    assert sent.status_code == 500
    assert sent.reason == "Unsafe Answer (replay-proxy)"
    fields = [(k.lower(), v) for k, v in sent.headers.fields]
    assert (b"x-replay-proxy", b"unsafe-answer") in fields
    assert all(b"\r" not in v and b"\n" not in v for _, v in fields)
    assert b"set-cookie" not in {k for k, _ in fields}
    message = json.loads(sent.content or b"")["error"]["message"]
    assert message.startswith("replay-proxy: refused to send this answer: ") and why in message, message


def test_ordinary_answers_pass_the_guard_unchanged() -> None:
    sent = _flow_response(Response(201, "Created", (("Location", "/x/\u00e9"), ("X-Tab", "a\tb")), b"ok"))
    assert (sent.status_code, sent.reason, sent.content) == (201, "Created", b"ok")
    assert sent.headers["X-Tab"] == "a\tb" and sent.headers["Location"] == "/x/\u00e9"
