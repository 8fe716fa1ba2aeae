"""The scenario runtime: rule order, matching, sequences, operations in every style, clocks, rendering.

Pure code: each test builds ``LoadedScenario`` objects from YAML text and asks the machine directly,
with a fake monotonic and wall clock (nothing sleeps) and a seeded random generator.
"""

from __future__ import annotations

import json
import random
import re
import textwrap
import threading
from collections import Counter
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml

from proxy.errors import ScenarioError, TemplateError
from proxy.model import Request
from proxy.scenario.answer import Answer, Refusal
from proxy.scenario.loader import LoadedScenario
from proxy.scenario.machine import OperationState, ScenarioMachine
from proxy.scenario.schema import Scenario

ROOT = Path(__file__).resolve().parent.parent
BASE = "http://127.0.0.1:8080"
UPSTREAM = "https://atlas.example.com"
EPOCH = 1583959513.0  # 2020-03-11 20:45:13 UTC: the seed's createdDateTime example
SEED_CREATED = "3/11/2020 8:45:13 PM +00:00"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class FakeClock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = EPOCH

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def scenario(
    text: str,
    name: str = "t.yaml",
    files: dict[str, bytes] | None = None,
    positions: dict[tuple[str | int, ...], tuple[int, int]] | None = None,
) -> LoadedScenario:
    data = yaml.safe_load(textwrap.dedent(text))
    return LoadedScenario(
        path=Path(name), scenario=Scenario.model_validate(data), files=files or {}, positions=positions or {}
    )


def machine(*texts: str | LoadedScenario, clock: str | None = None) -> tuple[ScenarioMachine, FakeClock]:
    fake = FakeClock()
    loaded = [t if isinstance(t, LoadedScenario) else scenario(t) for t in texts]
    m = ScenarioMachine(
        loaded,
        clock=clock,  # type: ignore[arg-type]
        monotonic=fake.monotonic,
        wall=fake.time,
        rng=random.Random(1234),
    )
    return m, fake


def request(
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    json_body: Any = None,
) -> Request:
    url = target if target.startswith("http") else UPSTREAM + target
    data = json.dumps(json_body).encode() if json_body is not None else (body or b"")
    return Request(method, url, tuple((headers or {}).items()), data)


def handle(m: ScenarioMachine, method: str, target: str, **kwargs: Any) -> Answer | Refusal | None:
    return m.handle(request(method, target, **kwargs), BASE)


def ask(m: ScenarioMachine, method: str, target: str, **kwargs: Any) -> Answer:
    answer = handle(m, method, target, **kwargs)
    assert isinstance(answer, Answer), f"{method} {target}: expected an answer, got {answer!r}"
    return answer


def body(answer: Answer) -> Any:
    return json.loads(answer.response.body)


def headers(answer: Answer) -> dict[str, str]:
    return dict(answer.response.headers)


def poll_until_terminal(m: ScenarioMachine, url: str, limit: int = 50) -> list[Answer]:
    answers = []
    for _ in range(limit):
        answer = ask(m, "GET", url)
        answers.append(answer)
        if answer.terminal:
            return answers
    return answers


# -- rule order ------------------------------------------------------------------------------------------

FIRST = """
routes:
  - name: first-route
    match: {method: GET, path: /things}
    respond: {text: first file route}
operations:
  - name: job
    start: {method: POST, path: /jobs}
    steps: [{status: Succeeded}]
"""
SECOND = """
routes:
  - name: second-route
    match: {path: /jobs}
    respond: {text: second file route}
  - name: catch-all
    match: {path: "/{rest*}"}
    respond: {status: 418, text: "caught {{ request.params.rest }}"}
"""


def test_files_in_order_routes_before_operations() -> None:
    m, _ = machine(scenario(FIRST, "a.yaml"), scenario(SECOND, "b.yaml"))
    assert ask(m, "GET", "/things").response.body == b"first file route"
    # The first file's operation answers POST /jobs before the second file's route.
    start = ask(m, "POST", "/jobs")
    assert start.source.startswith('a.yaml: start of operation "job" (')
    assert start.response.status == 202
    # GET /jobs is not the operation's start (POST): the second file's route answers.
    assert ask(m, "GET", "/jobs").response.body == b"second file route"
    # Nothing in a.yaml matches: the second file's catch-all does.
    caught = ask(m, "DELETE", "/x/y/z")
    assert (caught.response.status, caught.response.body) == (418, b"caught x/y/z")
    assert caught.source == 'b.yaml: route "catch-all"'


def test_a_route_before_an_operation_in_the_same_file_wins() -> None:
    m, _ = machine("""
        routes:
          - match: {method: POST, path: /jobs}
            respond: {status: 503}
        operations:
          - start: {method: POST, path: /jobs}
            steps: [{status: Succeeded}]
        """)
    answer = ask(m, "POST", "/jobs")
    assert answer.response.status == 503
    assert answer.source == "t.yaml: route 1"
    assert m.operations == []


def test_no_rule_answers_none() -> None:
    m, _ = machine(FIRST)
    assert handle(m, "GET", "/elsewhere") is None
    assert handle(m, "PUT", "/things") is None


# -- matching ------------------------------------------------------------------------------------------


def test_method_is_case_insensitive_and_may_be_a_list() -> None:
    m, _ = machine("""
        routes:
          - match: {method: [get, HEAD], path: /a}
            respond: {text: read}
          - match: {method: Post, path: /a}
            respond: {text: write}
          - match: {path: /b}
            respond: {text: any}
        """)
    assert ask(m, "GET", "/a").response.body == b"read"
    assert ask(m, "head", "/a").response.body == b"read"
    assert ask(m, "POST", "/a").response.body == b"write"
    assert handle(m, "PUT", "/a") is None
    assert ask(m, "PATCH", "/b").response.body == b"any"


def test_path_templates() -> None:
    m, _ = machine("""
        routes:
          - match: {path: "/tilesets/{id}"}
            respond: {text: "one {{ request.params.id }}"}
          - match: {path: "/files/{rest*}"}
            respond: {text: "rest [{{ request.params.rest }}]"}
          - match: {path: "/v1/projects/{project}/datasets/{dataset}:export"}
            respond: {text: "{{ request.params.project }}/{{ request.params.dataset }}"}
          - match: {path: /exact.json}
            respond: {text: exact}
        """)
    assert ask(m, "GET", "/tilesets/abc-1").response.body == b"one abc-1"
    assert handle(m, "GET", "/tilesets/a/b") is None  # {id} is one segment
    assert handle(m, "GET", "/tilesets/") is None  # and not empty
    assert ask(m, "GET", "/files/a/b/c.txt").response.body == b"rest [a/b/c.txt]"
    assert ask(m, "GET", "/files/").response.body == b"rest []"
    assert handle(m, "GET", "/files") is None
    assert ask(m, "POST", "/v1/projects/p1/datasets/d2:export").response.body == b"p1/d2"
    assert ask(m, "POST", "/v1/projects/p1/datasets/d2%3Aexport").response.body == b"p1/d2"  # percent-encoded
    assert ask(m, "GET", "/exact.json").response.body == b"exact"
    assert handle(m, "GET", "/exactXjson") is None  # the dot is literal
    assert handle(m, "GET", "/exact.json/more") is None
    # The host is ignored, the query does not disturb the path.
    assert ask(m, "GET", "http://other.host:9/exact.json?x=1").response.body == b"exact"


def test_query_conditions() -> None:
    m, _ = machine("""
        routes:
          - name: absent
            match: {path: /q, query: {datasetId: null}}
            respond: {text: absent}
          - name: scalars
            match: {path: /q, query: {datasetId: d1, n: 1, flag: true, v: 2.0}}
            respond: {text: scalars}
          - name: conditions
            match:
              path: /q
              query:
                datasetId: {regex: "^[0-9a-f]{4}$"}
                kind: {one-of: [a, b]}
                api-version: {equals: "2.0", present: true}
                debug: {present: false}
            respond: {text: conditions}
          - name: present
            match: {path: /q, query: {datasetId: {present: true}}}
            respond: {text: present}
        """)

    def which(query: str) -> str:
        return ask(m, "GET", "/q" + query).source.split('"')[1]

    assert which("") == "absent"
    assert which("?other=1") == "absent"
    assert which("?datasetId=d1&n=1&flag=true&v=2.0") == "scalars"
    assert which("?datasetId=d1&n=1&flag=True&v=2.0") == "present"  # booleans compare as true/false
    assert which("?datasetId=d1&n=01&flag=true&v=2.0") == "present"  # compared as text
    assert which("?datasetId=beef&kind=b&api-version=2.0") == "conditions"
    assert which("?datasetId=beef&kind=c&api-version=2.0") == "present"  # not one of a, b
    assert which("?datasetId=beef&kind=a&api-version=2.0&debug=") == "present"  # blank is present
    assert which("?datasetId=beef&kind=a") == "present"  # api-version required
    assert which("?datasetId=xbeefx&kind=a&api-version=2.0") == "present"  # regex anchored by the author
    assert which("?datasetId=beef&datasetId=d1&kind=a&api-version=2.0") == "conditions"  # first value counts
    assert which("?datasetId=") == "present"


@pytest.mark.timeout(30)
def test_regexes_and_path_templates_match_in_linear_time() -> None:
    """Issue 16: ``^(a+)+$`` and a path template whose segments can split many ways backtracked for
    minutes on one request, freezing the proxy; RE2 matches them in linear time, as Python's re would."""
    m, _ = machine("""
        routes:
          - match: {path: /redos, query: {v: {regex: "^(a+)+$"}}}
            respond: {text: matched}
          - match: {path: "/r/{a}-{b}-{c}-{d}/end"}
            respond: {text: "{{ request.params.a }}|{{ request.params.d }}"}
          - match: {path: "/v1/{name*}:export"}
            respond: {text: "{{ request.params.name }}"}
        """)

    def text(answer: Answer) -> str:
        return answer.response.body.decode()

    assert handle(m, "GET", "/redos?v=" + "a" * 100_000 + "!") is None
    assert text(ask(m, "GET", "/redos?v=" + "a" * 100_000)) == "matched"
    assert handle(m, "GET", "/r/" + "a-" * 20_000 + "/nope") is None
    assert text(ask(m, "GET", "/r/w-x-y-z-z/end")) == "w-x|z"  # as Python's re: leftmost greedy
    assert text(ask(m, "GET", "/v1/a/b:c:export")) == "a/b:c"
    assert text(ask(m, "GET", "/v1/\udcff\u00e9:export")) == "\ufffd\u00e9"  # bytes that are not UTF-8


def test_header_conditions_ignore_name_case() -> None:
    m, _ = machine("""
        routes:
          - match: {path: /h, headers: {X-Ms-Version: "2.0", authorization: {regex: "^Bearer "}}}
            respond: {text: authorized}
          - match: {path: /h, headers: {Authorization: null}}
            respond: {status: 401}
        """)
    assert ask(
        m, "GET", "/h", headers={"x-ms-version": "2.0", "AUTHORIZATION": "Bearer t"}
    ).response.body == (b"authorized")
    assert ask(m, "GET", "/h").response.status == 401
    assert handle(m, "GET", "/h", headers={"x-ms-version": "1.0", "authorization": "Bearer t"}) is None
    assert handle(m, "GET", "/h", headers={"X-MS-VERSION": "2.0", "Authorization": "Basic x"}) is None


def test_form_conditions_match_url_encoded_bodies_only() -> None:
    m, _ = machine("""
        routes:
          - name: describe
            match:
              method: POST
              path: /
              form: {Action: DescribeStacks, StackName: {regex: "^my-"}, NextToken: null}
            respond: {text: "{{ request.form.StackName }} {{ request.form.Version | default('-') }}"}
          - name: empty-version
            match: {path: /, form: {Version: ""}}
            respond: {text: empty}
        """)
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    answer = ask(
        m, "POST", "/", headers=form, body=b"Action=DescribeStacks&StackName=my-stack&Version=2010-05-15"
    )
    assert (answer.source, answer.response.body) == ('t.yaml: route "describe"', b"my-stack 2010-05-15")
    # %-escapes and + are decoded; the first of repeated fields counts; the media type is case-insensitive
    upper = {"Content-Type": "Application/X-WWW-Form-URLEncoded"}
    encoded = b"Action=DescribeStacks&Action=ListStacks&StackName=my-%C3%A9+stack"
    assert ask(m, "POST", "/", headers=upper, body=encoded).response.body == "my-é stack -".encode()
    assert ask(m, "POST", "/", headers=form, body=b"Version=").source == 't.yaml: route "empty-version"'
    for headers_, data in [
        (form, b"Action=ListStacks&StackName=my-stack"),  # another action
        (form, b"Action=DescribeStacks&StackName=your-stack"),  # regex fails
        (form, b"Action=DescribeStacks&StackName=my-stack&NextToken=x"),  # must be absent
        ({}, b"Action=DescribeStacks&StackName=my-stack"),  # no Content-Type: not a form
        ({"Content-Type": "text/plain"}, b"Action=DescribeStacks&StackName=my-stack"),
        ({"Content-Type": "application/json"}, b'{"Action": "DescribeStacks", "StackName": "my-stack"}'),
    ]:
        assert handle(m, "POST", "/", headers=headers_, body=data) is None, (headers_, data)


def test_json_conditions_by_dotted_path() -> None:
    m, _ = machine("""
        routes:
          - name: full
            match:
              path: /j
              json:
                properties.kind: tileset
                items.0.id: 7
                items.1.ok: true
                meta.missing: null
                nested: {present: true}
                count: {one-of: [1, 2]}
                empty: {equals: "null"}
            respond: {text: full}
          - name: no-name
            match: {path: /j, json: {name: null}}
            respond: {text: no-name}
        """)
    good = {
        "properties": {"kind": "tileset"},
        "items": [{"id": 7}, {"ok": True}],
        "meta": {},
        "nested": {"a": [1]},
        "count": 2,
        "empty": None,
        "name": "x",
    }
    assert ask(m, "POST", "/j", json_body=good).source == 't.yaml: route "full"'
    changes: list[dict[str, Any]] = [
        {"properties": {"kind": "dataset"}},
        {"items": [{"id": "8"}, {"ok": True}]},
        {"items": [{"id": 7}, {"ok": "false"}]},
        {"items": [{"id": 7}]},  # items.1 does not exist
        {"meta": {"missing": 0}},
        {"count": 3},
    ]
    for change in changes:
        assert handle(m, "POST", "/j", json_body={**good, **change}) is None, change
    # A string "7" equals the integer 7 as text; only the dotted path's value counts.
    assert (
        ask(m, "POST", "/j", json_body={**good, "items": [{"id": "7"}, {"ok": True}]}).response.body
        == b"full"
    )
    # A body that is not JSON has no fields: only "must be absent" conditions hold.
    assert ask(m, "POST", "/j", body=b"<xml/>").source == 't.yaml: route "no-name"'
    assert ask(m, "POST", "/j", body=b"\xff\xfe binary").source == 't.yaml: route "no-name"'
    assert ask(m, "POST", "/j").source == 't.yaml: route "no-name"'
    assert ask(m, "POST", "/j", json_body=[1, 2]).source == 't.yaml: route "no-name"'


# -- routes: sequences, pass, when-exhausted ------------------------------------------------------------


def bodies(m: ScenarioMachine, n: int, target: str = "/s") -> list[str]:
    out = []
    for _ in range(n):
        answer = handle(m, "GET", target)
        out.append(answer.response.body.decode() if isinstance(answer, Answer) else repr(answer))
    return out


def sequence_scenario(policy: str) -> str:
    return f"""
        routes:
          - name: seq
            match: {{path: /s}}
            when-exhausted: {policy}
            sequence:
              - {{text: a, times: 2}}
              - {{text: b}}
              - {{text: c}}
        """


def test_sequence_times_then_repeat_last() -> None:
    m, _ = machine(sequence_scenario("repeat-last"))
    assert bodies(m, 6) == ["a", "a", "b", "c", "c", "c"]
    sources = [ask(m, "GET", "/s").source for _ in range(1)]
    assert sources == ['t.yaml: route "seq" step 3/3']


def test_sequence_cycle() -> None:
    m, _ = machine(sequence_scenario("cycle"))
    assert bodies(m, 9) == ["a", "a", "b", "c", "a", "a", "b", "c", "a"]


def test_sequence_error_refuses_when_exhausted() -> None:
    m, _ = machine(sequence_scenario("error"))
    assert bodies(m, 4) == ["a", "a", "b", "c"]
    refusal = handle(m, "GET", "/s")
    assert refusal == Refusal(
        source='t.yaml: route "seq"', reason="its sequence ran out after 4 answers (when-exhausted: error)"
    )
    assert handle(m, "GET", "/s") == refusal  # and stays refused


def test_respond_is_a_one_step_sequence() -> None:
    m, _ = machine("""
        routes:
          - {match: {path: /s}, respond: {text: once}, when-exhausted: error}
          - {match: {path: /r}, respond: {text: always}}
        """)
    assert bodies(m, 1) == ["once"]
    assert handle(m, "GET", "/s") == Refusal(
        source="t.yaml: route 1", reason="its sequence ran out after 1 answer (when-exhausted: error)"
    )
    assert bodies(m, 3, "/r") == ["always"] * 3


def test_the_counter_advances_only_on_calls_the_route_matches() -> None:
    m, _ = machine("""
        routes:
          - match: {method: GET, path: /s}
            sequence: [{text: one}, {text: two}]
          - match: {path: "/{any*}"}
            respond: {text: other}
        """)
    assert bodies(m, 1) == ["one"]
    assert bodies(m, 3, "/t") == ["other"] * 3
    assert ask(m, "POST", "/s").response.body == b"other"
    assert bodies(m, 2) == ["two", "two"]


PASS_SCENARIO = """
routes:
  - name: throttle once
    match: {method: POST, path: /tilesets}
    sequence:
      - {status: 429, retry-after: 2}
      - pass: true
  - name: fallback
    match: {method: POST, path: /tilesets, query: {fallback: "1"}}
    respond: {status: 200, text: fallback}
operations:
  - name: tileset
    start: {method: POST, path: /tilesets, query: {datasetId: {present: true}}}
    steps: [{status: Succeeded}]
"""


def test_pass_steps_fall_through_to_the_next_rules() -> None:
    m, _ = machine(PASS_SCENARIO)
    first = ask(m, "POST", "/tilesets?datasetId=d&fallback=1")
    assert (first.response.status, first.retry_after, first.source) == (
        429,
        2.0,
        't.yaml: route "throttle once" step 1/2',
    )
    # The pass step (repeated: repeat-last) lets the next matching route answer ...
    assert ask(m, "POST", "/tilesets?datasetId=d&fallback=1").response.body == b"fallback"
    # ... or the operation ...
    assert ask(m, "POST", "/tilesets?datasetId=d").response.status == 202
    # ... or nobody.
    assert handle(m, "POST", "/tilesets") is None
    assert handle(m, "POST", "/tilesets") is None
    assert len(m.operations) == 1


def test_a_pass_step_in_a_cycle() -> None:
    m, _ = machine("""
        routes:
          - match: {path: /s}
            when-exhausted: cycle
            sequence: [{text: x}, {pass: true, times: 2}]
        """)
    assert bodies(m, 7) == ["x", "None", "None", "x", "None", "None", "x"]


# -- operations: creator-v1 (the seed) -----------------------------------------------------------------

TILESET = """
name: tileset-succeeds
routes:
  - name: missing datasetId
    match: {method: POST, path: /tilesets, query: {datasetId: null}}
    respond: {status: 400, json: {error: {code: BadRequest}}}
operations:
  - name: tileset
    start: {method: POST, path: /tilesets, query: {datasetId: {present: true}}}
    status-path: /tilesets/operations/{operationId}
    resource-path: /tilesets/{resourceId}
    retry-after: 1
    steps:
      - status: NotStarted
      - status: Running
        times: 2
      - status: Succeeded
    resource:
      json: {tilesetId: "{{ operation.resource_id }}", ontology: facility-2.0}
"""


def test_creator_v1_success() -> None:
    m, _ = machine(TILESET)
    assert ask(m, "POST", "/tilesets?api-version=2.0").response.status == 400
    start = ask(m, "POST", "/tilesets?api-version=2.0&datasetId=d1")
    op_id = start.operation
    assert op_id is not None and UUID4.match(op_id)
    location = f"{BASE}/tilesets/operations/{op_id}"
    assert start.response.status == 202
    assert start.response.headers == (("Location", location),)  # no body, so no Content-Type
    assert start.response.body == b""
    assert start.retry_after is None  # the accepted answer has Retry-After only when asked for
    assert (start.poll, start.status, start.terminal) == (None, "NotStarted", False)
    assert start.source == f'tileset-succeeds.yaml: start of operation "tileset" ({op_id[:8]}…)'.replace(
        "tileset-succeeds.yaml", "t.yaml"
    )

    answers = poll_until_terminal(m, location)
    assert [a.status for a in answers] == ["NotStarted", "Running", "Running", "Succeeded"]
    assert [a.poll for a in answers] == [1, 2, 3, 4]
    assert [a.retry_after for a in answers] == [1.0, 1.0, 1.0, None]
    assert [a.terminal for a in answers] == [False, False, False, True]
    for a in answers[:3]:
        assert a.response.status == 200
        assert headers(a) == {"Content-Type": "application/json", "Retry-After": "1"}
        assert body(a) == {"operationId": op_id, "createdDateTime": SEED_CREATED, "status": a.status}
    assert answers[1].source == f"t.yaml: operation {op_id[:8]}…, poll 2 (Running)"

    done = answers[-1]
    resource_id = m.operations[0].resource_id
    resource_url = f"{BASE}/tilesets/{resource_id}"
    assert done.response.status == 201
    assert headers(done) == {"Content-Type": "application/json", "Location": resource_url}
    assert body(done) == {
        "operationId": op_id,
        "createdDateTime": SEED_CREATED,
        "status": "Succeeded",
        "resourceLocation": resource_url,
    }
    # The last stage repeats forever.
    again = ask(m, "GET", location)
    assert (again.response.status, again.poll, body(again)) == (201, 5, body(done))
    # The resource.
    resource = ask(m, "GET", resource_url)
    assert resource.response.status == 200
    assert body(resource) == {"tilesetId": resource_id, "ontology": "facility-2.0"}
    assert resource.source == f"t.yaml: resource of operation {op_id[:8]}…"


def test_creator_v1_failure_with_the_default_and_a_given_error() -> None:
    m, _ = machine("""
        operations:
          - name: default-error
            start: {method: POST, path: /a}
            steps: [{status: Failed}]
          - name: seed-error
            start: {method: POST, path: /b}
            status-path: /b/operations/{operationId}
            resource-path: /b/{resourceId}
            steps:
              - status: Running
              - status: Failed
                error:
                  code: InvalidFeature
                  message: The provided feature is invalid.
                  details: {code: NoGeometry, message: "No geometry for {{ operation.id }}."}
          - name: list-details
            start: {method: POST, path: /c}
            status-path: /c/operations/{operationId}
            steps:
              - status: failed
                error:
                  code: dwgConversionProblem
                  details:
                    - code: failed
                      details: [{code: invalidArchiveFormat, message: Not a zip.}]
        """)
    a = ask(m, "POST", "/a")
    failed = ask(m, "GET", a.response.header("Location") or "")
    assert (failed.response.status, failed.status, failed.terminal, failed.retry_after) == (
        200,
        "Failed",
        True,
        None,
    )
    assert "Retry-After" not in headers(failed)
    assert body(failed) == {
        "operationId": a.operation,
        "createdDateTime": SEED_CREATED,
        "status": "Failed",
        "error": {"code": "OperationFailed", "message": "The operation failed."},
    }

    b = ask(m, "POST", "/b")
    b_url = b.response.header("Location") or ""
    assert ask(m, "GET", b_url).status == "Running"
    failed = ask(m, "GET", b_url)
    assert body(failed)["error"] == {
        "code": "InvalidFeature",
        "message": "The provided feature is invalid.",
        "details": {"code": "NoGeometry", "message": f"No geometry for {b.operation}."},
    }
    # A failed operation has no resource.
    assert handle(m, "GET", f"/b/{m.operations[1].resource_id}") is None

    c = ask(m, "POST", "/c")
    failed = ask(m, "GET", c.response.header("Location") or "")
    assert failed.terminal and failed.status == "failed"
    assert body(failed)["error"] == {  # no message key: null fields are left out, details kept as a list
        "code": "dwgConversionProblem",
        "details": [
            {"code": "failed", "details": [{"code": "invalidArchiveFormat", "message": "Not a zip."}]}
        ],
    }


def test_creator_v1_success_without_a_resource() -> None:
    m, _ = machine("""
        operations:
          - name: no-resource-path
            start: {method: POST, path: /a}
            status-path: /a/operations/{operationId}
            steps: [{status: Succeeded}]
          - name: resource-false
            start: {method: POST, path: /b}
            status-path: /b/operations/{operationId}
            resource-path: /b/{resourceId}
            steps: [{status: Succeeded, resource: false}]
        """)
    for path in ("/a", "/b"):
        start = ask(m, "POST", path)
        done = ask(m, "GET", start.response.header("Location") or "")
        assert done.response.status == 200
        assert headers(done) == {"Content-Type": "application/json"}
        assert body(done) == {
            "operationId": start.operation,
            "createdDateTime": SEED_CREATED,
            "status": "Succeeded",
        }
    assert handle(m, "GET", f"/b/{m.operations[1].resource_id}") is None


def test_canceled_is_terminal_without_error() -> None:
    m, _ = machine("""
        operations:
          - start: {method: POST, path: /a}
            steps: [{status: Running}, {status: Canceled}]
        """)
    url = ask(m, "POST", "/a").response.header("Location") or ""
    answers = poll_until_terminal(m, url)
    assert [(a.status, a.terminal) for a in answers] == [("Running", False), ("Canceled", True)]
    assert "error" not in body(answers[-1])
    assert "Retry-After" not in headers(answers[-1])


# -- creator-v2 and AIP-151 -----------------------------------------------------------------------------


def test_creator_v2_success_and_failure() -> None:
    m, _ = machine("""
        operations:
          - name: conversion
            style: creator-v2
            start: {method: POST, path: /conversions}
            status-path: /conversions/operations/{operationId}?api-version=2.0
            resource-path: /conversions/{resourceId}
            steps: [{status: Running}, {status: Succeeded}]
          - name: broken
            style: creator-v2
            start: {method: POST, path: /broken}
            status-path: /broken/operations/{operationId}
            steps: [{status: Failed, error: {code: Conflict, message: No.}}]
        """)
    start = ask(m, "POST", "/conversions?udid=u")
    url = f"{BASE}/conversions/operations/{start.operation}?api-version=2.0"
    assert start.response.status == 202
    assert start.response.headers == (("Operation-Location", url),)
    running = ask(m, "GET", url)
    assert body(running) == {
        "operationId": start.operation,
        "created": "2020-03-11T20:45:13+00:00",
        "status": "Running",
    }
    assert headers(running)["Retry-After"] == "1"
    done = ask(m, "GET", url)
    resource_url = f"{BASE}/conversions/{m.operations[0].resource_id}"
    assert done.response.status == 200
    assert headers(done) == {"Content-Type": "application/json", "Resource-Location": resource_url}
    assert body(done) == {
        "operationId": start.operation,
        "created": "2020-03-11T20:45:13+00:00",
        "status": "Succeeded",
    }
    assert body(ask(m, "GET", resource_url)) == {
        "id": m.operations[0].resource_id,
        "operationId": start.operation,
    }

    broken = ask(m, "POST", "/broken")
    failed = ask(m, "GET", broken.response.header("Operation-Location") or "")
    assert failed.response.status == 200
    assert body(failed)["error"] == {"code": "Conflict", "message": "No."}
    assert "created" in body(failed) and "Resource-Location" not in headers(failed)


AIP = """
operations:
  - name: export
    style: aip-151
    start: {method: POST, path: "/v1/{name*}:export"}
    status-path: /v1/operations/{operationId}
    resource-path: /v1/exports/{resourceId}
    retry-after: null
    steps:
      - {status: RUNNING, times: 2}
      - status: SUCCEEDED
  - name: plain
    style: aip-151
    start: {method: POST, path: /plain}
    status-path: /v1/plain/{operationId}
    steps: [{status: SUCCEEDED}]
  - name: fails
    style: aip-151
    start: {method: POST, path: /fails}
    status-path: /v1/fails/{operationId}
    steps:
      - status: FAILED
        error: {code: 5, message: Not found., details: {"@type": type.googleapis.com/google.rpc.ErrorInfo}}
  - name: fails-default
    style: aip-151
    start: {method: POST, path: /fails-default}
    status-path: /v1/fails-default/{operationId}
    steps: [{status: FAILED}]
  - name: cancelled
    style: aip-151
    start: {method: POST, path: /cancelled}
    status-path: /v1/cancelled/{operationId}
    steps: [{status: CANCELLED}]
"""


def test_aip_151_operations() -> None:
    m, _ = machine(AIP)
    start = ask(m, "POST", "/v1/projects/p/datasets/d:export")
    op_id = start.operation
    assert start.response.status == 200
    assert headers(start) == {"Content-Type": "application/json"}  # no status URL header by default
    assert body(start) == {"name": f"operations/{op_id}", "done": False}
    answers = poll_until_terminal(m, f"/v1/operations/{op_id}")
    assert [body(a) for a in answers[:2]] == [
        {"name": f"operations/{op_id}", "done": False, "metadata": {"status": "RUNNING"}}
    ] * 2
    assert all("Retry-After" not in headers(a) for a in answers)  # retry-after: null
    assert answers[-1].response.status == 200
    resource_url = f"{BASE}/v1/exports/{m.operations[0].resource_id}"
    assert body(answers[-1]) == {
        "name": f"operations/{op_id}",
        "done": True,
        "metadata": {"status": "SUCCEEDED"},
        "response": {"name": resource_url},
    }
    assert ask(m, "GET", resource_url).response.status == 200

    def final(path: str) -> dict[str, Any]:
        started = ask(m, "POST", path)
        result: dict[str, Any] = body(poll_until_terminal(m, f"/v1{path}/{started.operation}")[-1])
        assert result["done"] is True
        return result

    plain = final("/plain")
    assert plain["response"] == {"name": m.operations[-1].resource_id}  # no resource-path: the id
    assert final("/fails")["error"] == {
        "code": 5,
        "message": "Not found.",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo"}],
    }
    assert final("/fails-default")["error"] == {"code": 2, "message": "The operation failed."}
    cancelled = final("/cancelled")
    assert cancelled["error"] == {"code": 1, "message": "The operation was cancelled."}
    assert "response" not in cancelled


# -- status URL: headers, url-form, api-version ---------------------------------------------------------


def test_status_url_header_choices() -> None:
    m, _ = machine("""
        operations:
          - {start: {path: /a}, header: Azure-AsyncOperation, steps: [{status: Succeeded}]}
          - {start: {path: /b}, header: [Operation-Location, Location], steps: [{status: Succeeded}]}
          - {start: {path: /c}, header: none, steps: [{status: Succeeded}]}
          - {start: {path: /d}, header: null, steps: [{status: Succeeded}]}
          - {start: {path: /e}, style: aip-151, header: Location, steps: [{status: Succeeded}]}
          - start: {path: /f}
            accepted: {headers: {Location: "{{ proxy_url }}/elsewhere"}}
            steps: [{status: Succeeded}]
        """)

    def start_headers(path: str) -> tuple[str | None, dict[str, str]]:
        answer = ask(m, "POST", path)
        return answer.operation, {k: v for k, v in answer.response.headers if k != "Content-Type"}

    op, got = start_headers("/a")
    assert got == {"Azure-AsyncOperation": f"{BASE}/operations/{op}"}
    op, got = start_headers("/b")
    assert got == {"Operation-Location": f"{BASE}/operations/{op}", "Location": f"{BASE}/operations/{op}"}
    assert start_headers("/c")[1] == {}
    assert start_headers("/d")[1] == {}
    op, got = start_headers("/e")
    assert got == {"Location": f"{BASE}/operations/{op}"}
    assert start_headers("/f")[1] == {"Location": f"{BASE}/elsewhere"}  # the accepted spec's own header wins


def test_accepted_spec_keeps_the_styles_defaults_it_does_not_override() -> None:
    m, _ = machine("""
        operations:
          - start: {path: /a}
            accepted: {headers: {X-A: "1"}}
            steps: [{status: Succeeded}]
          - start: {path: /b}
            accepted: {status: 201, json: {id: "{{ operation.id }}", status: "{{ operation.status }}"}}
            steps: [{status: NotStarted}, {status: Succeeded}]
          - start: {path: /c}
            style: aip-151
            accepted: {headers: {X-C: "3"}}
            steps: [{status: Succeeded}]
          - start: {path: /d}
            style: aip-151
            accepted: {status: 202, text: accepted}
            steps: [{status: Succeeded}]
        """)
    a = ask(m, "POST", "/a")
    assert (a.response.status, a.response.body) == (202, b"")
    assert headers(a) == {"X-A": "1", "Location": f"{BASE}/operations/{a.operation}"}
    b = ask(m, "POST", "/b")
    assert b.response.status == 201
    assert body(b) == {"id": b.operation, "status": "NotStarted"}
    c = ask(m, "POST", "/c")
    assert c.response.status == 200
    assert headers(c) == {"X-C": "3", "Content-Type": "application/json"}
    assert body(c) == {"name": f"operations/{c.operation}", "done": False}
    d = ask(m, "POST", "/d")
    assert (d.response.status, d.response.body) == (202, b"accepted")


def test_relative_url_form() -> None:
    m, _ = machine("""
        operations:
          - start: {method: POST, path: /tilesets}
            url-form: relative
            status-path: /tilesets/operations/{operationId}
            resource-path: /tilesets/{resourceId}
            steps: [{status: Succeeded}]
        """)
    start = ask(m, "POST", "/tilesets")
    assert start.response.header("Location") == f"/tilesets/operations/{start.operation}"
    done = ask(m, "GET", f"/tilesets/operations/{start.operation}")
    resource = f"/tilesets/{m.operations[0].resource_id}"
    assert done.response.header("Location") == resource
    assert body(done)["resourceLocation"] == resource


def test_the_status_url_keeps_its_query_but_polls_match_on_the_path() -> None:
    m, _ = machine("""
        operations:
          - start: {method: POST, path: /tilesets}
            status-path: /tilesets/operations/{operationId}?api-version=2.0
            steps: [{status: Running, times: 3}, {status: Succeeded}]
        """)
    start = ask(m, "POST", "/tilesets?api-version=2.0")
    path = f"/tilesets/operations/{start.operation}"
    assert start.response.header("Location") == f"{BASE}{path}?api-version=2.0"
    assert m.operations[0].status_url == f"{BASE}{path}?api-version=2.0"
    assert ask(m, "GET", f"{path}?api-version=2.0").poll == 1
    assert ask(m, "GET", f"{path}?api-version=2023-03-01-preview").poll == 2
    assert ask(m, "GET", path).poll == 3
    assert ask(m, "HEAD", path).status == "Succeeded"


def test_other_placeholders_in_the_status_path_come_from_the_start_request() -> None:
    m, _ = machine("""
        operations:
          - start: {method: POST, path: "/projects/{project}/jobs"}
            status-path: /projects/{project}/operations/{operationId}
            steps: [{status: Succeeded}]
        """)
    start = ask(m, "POST", "/projects/p7/jobs")
    assert start.response.header("Location") == f"{BASE}/projects/p7/operations/{start.operation}"
    assert ask(m, "GET", f"/projects/p7/operations/{start.operation}").status == "Succeeded"


def test_unknown_operation_and_resource_ids_fall_through() -> None:
    m, _ = machine(
        TILESET,
        scenario(
            """
            routes:
              - match: {path: "/{rest*}"}
                respond: {status: 404, text: "next rule: {{ request.path }}"}
            """,
            "fallback.yaml",
        ),
    )
    start = ask(m, "POST", "/tilesets?datasetId=d")
    unknown = ask(m, "GET", "/tilesets/operations/00000000-0000-4000-8000-000000000000")
    assert (unknown.response.status, unknown.source) == (404, "fallback.yaml: route 1")
    # The resource of an operation that has not succeeded yet is not answered either.
    resource_id = m.operations[0].resource_id
    assert (
        ask(m, "GET", f"/tilesets/{resource_id}").response.body
        == f"next rule: /tilesets/{resource_id}".encode()
    )
    # Only GET and HEAD poll.
    assert ask(m, "DELETE", f"/tilesets/operations/{start.operation}").response.status == 404
    assert m.operations[0].polls == 0
    m2, _ = machine(TILESET)
    assert handle(m2, "GET", "/tilesets/operations/nope") is None


def test_two_operations_progress_independently() -> None:
    m, _ = machine(TILESET)
    first = ask(m, "POST", "/tilesets?datasetId=one")
    second = ask(m, "POST", "/tilesets?datasetId=two")
    assert first.operation != second.operation
    url1 = first.response.header("Location") or ""
    url2 = second.response.header("Location") or ""
    assert [ask(m, "GET", url1).status for _ in range(3)] == ["NotStarted", "Running", "Running"]
    assert ask(m, "GET", url2).status == "NotStarted"
    assert ask(m, "GET", url1).status == "Succeeded"
    assert [ask(m, "GET", url2).status for _ in range(3)] == ["Running", "Running", "Succeeded"]
    states = m.operations
    assert [(s.id, s.polls, s.status, s.terminal) for s in states] == [
        (first.operation, 4, "Succeeded", True),
        (second.operation, 4, "Succeeded", True),
    ]
    assert states[0].resource_id != states[1].resource_id


def test_counter_ids() -> None:
    m, _ = machine("""
        operations:
          - name: a
            id-format: counter
            start: {method: POST, path: /a}
            status-path: /a/operations/{operationId}
            resource-path: /a/items/{resourceId}
            steps: [{status: Succeeded}]
          - name: b
            id-format: counter
            start: {method: POST, path: /b}
            status-path: /b/operations/{operationId}
            steps: [{status: Succeeded}]
        """)
    assert [ask(m, "POST", "/a").operation for _ in range(2)] == ["1", "2"]
    assert ask(m, "POST", "/b").operation == "1"  # per operation rule
    assert ask(m, "GET", "/a/operations/2").response.header("Location") == f"{BASE}/a/items/2"
    assert ask(m, "GET", "/b/operations/1").status == "Succeeded"
    assert handle(m, "GET", "/b/operations/2") is None


# -- progression: times, for, respond, overrides --------------------------------------------------------


def test_a_stage_for_a_duration_on_the_real_clock() -> None:
    m, fake = machine("""
        operations:
          - start: {method: POST, path: /a}
            retry-after: 10
            steps:
              - status: NotStarted
              - {status: Running, for: 30s}
              - status: Succeeded
        """)
    url = ask(m, "POST", "/a").response.header("Location") or ""
    assert ask(m, "GET", url).status == "NotStarted"
    fake.advance(100)  # the Running stage begins with the first poll that reaches it
    statuses = []
    for step in [0, 10, 10, 9.9, 0.1]:
        fake.advance(step)
        statuses.append(ask(m, "GET", url).status)
    assert statuses == ["Running", "Running", "Running", "Running", "Succeeded"]


def test_a_first_stage_for_a_duration_begins_at_the_start() -> None:
    m, fake = machine("""
        operations:
          - start: {method: POST, path: /a}
            steps: [{status: Running, for: 2m}, {status: Running2, for: 10s}, {status: Succeeded}]
        """)
    url = ask(m, "POST", "/a").response.header("Location") or ""
    fake.advance(119.9)
    assert ask(m, "GET", url).status == "Running"
    fake.advance(5)  # 124.9 s
    assert ask(m, "GET", url).status == "Running2"
    # A stage after a time-based stage begins when that one's time ran out (120 s), not at the poll
    # that first saw it (124.9 s): Running2 is over at 130 s.
    fake.advance(5.1)
    assert ask(m, "GET", url).status == "Succeeded"


VIRTUAL = """
clock: {clock}
operations:
  - name: slow
    start: {{method: POST, path: /slow}}
    retry-after: 10
    accepted: {accepted}
    steps:
      - {{status: Running, for: 300s}}
      - status: Succeeded
"""


def running_polls(m: ScenarioMachine) -> int:
    url = ask(m, "POST", "/slow").response.header("Location") or ""
    answers = poll_until_terminal(m, url, limit=100)
    assert answers[-1].status == "Succeeded"
    assert all(a.status == "Running" and a.retry_after == 10.0 for a in answers[:-1])
    return len(answers) - 1


def test_virtual_clock_runs_a_300_second_stage_in_30_polls_of_10_seconds() -> None:
    m, fake = machine(VIRTUAL.format(clock="virtual", accepted="null"))
    before = fake.monotonic(), fake.time()
    # The 202 advertised no Retry-After (1 s), each poll 10 s: the polls at 1, 11, ... 291 s are
    # Running, the one at 301 s is Succeeded. No real time passed.
    assert running_polls(m) == 30
    assert (fake.monotonic(), fake.time()) == before


def test_virtual_clock_counts_the_accepted_retry_after() -> None:
    m, _ = machine(VIRTUAL.format(clock="virtual", accepted="{retry-after: 10}"))
    assert running_polls(m) == 29  # polls at 10, 20, ... 290 s; the one at 300 s is Succeeded


def test_the_machine_clock_overrides_each_files_clock() -> None:
    m, _ = machine(VIRTUAL.format(clock="real", accepted="null"), clock="virtual")
    assert running_polls(m) == 30
    m, fake = machine(VIRTUAL.format(clock="virtual", accepted="null"), clock="real")
    url = ask(m, "POST", "/slow").response.header("Location") or ""
    assert [ask(m, "GET", url).status for _ in range(40)] == ["Running"] * 40  # real time stands still
    fake.advance(300)
    assert ask(m, "GET", url).status == "Succeeded"


def test_virtual_clock_counts_one_second_for_answers_without_retry_after() -> None:
    m, _ = machine("""
        clock: virtual
        operations:
          - start: {method: POST, path: /a}
            retry-after: null
            steps:
              - {status: Running, for: 5s}
              - respond: {status: 503, retry-after: 3}
              - {status: Running, for: 4}
              - status: Succeeded
        """)
    url = ask(m, "POST", "/a").response.header("Location") or ""  # t=1 after the 202
    got = [(a.status, a.response.status) for a in poll_until_terminal(m, url)]
    assert got == [
        ("Running", 200),  # 1
        ("Running", 200),  # 2
        ("Running", 200),  # 3
        ("Running", 200),  # 4
        ("Running", 503),  # 5: the 503 (advertises 3 s)
        ("Running", 200),  # 8: the 4 s stage began at 8
        ("Running", 200),  # 9
        ("Running", 200),  # 10
        ("Running", 200),  # 11
        ("Succeeded", 200),  # 12
    ]


def test_respond_steps_answer_instead_of_the_status() -> None:
    m, _ = machine("""
        operations:
          - name: tileset
            start: {method: POST, path: /tilesets}
            status-path: /tilesets/operations/{operationId}
            steps:
              - status: Running
              - respond:
                  status: 503
                  retry-after: 2
                  json: {error: {code: ServiceUnavailable, message: "poll {{ operation.poll }}"}}
              - respond: {fault: reset}
                times: 2
              - status: Succeeded
                resource: false
        """)
    start = ask(m, "POST", "/tilesets")
    url = start.response.header("Location") or ""
    short = f"{(start.operation or '')[:8]}…"
    answers = poll_until_terminal(m, url)
    assert [(a.response.status, a.fault, a.status, a.poll, a.terminal) for a in answers] == [
        (200, None, "Running", 1, False),
        (503, None, "Running", 2, False),
        (200, "reset", "Running", 3, False),
        (200, "reset", "Running", 4, False),
        (200, None, "Succeeded", 5, True),
    ]
    assert body(answers[1]) == {"error": {"code": "ServiceUnavailable", "message": "poll 2"}}
    assert headers(answers[1])["Retry-After"] == "2"
    assert answers[1].retry_after == 2.0
    assert answers[1].source == f"t.yaml: operation {short}, poll 2 (503 instead of Running)"
    assert answers[2].source == f"t.yaml: operation {short}, poll 3 (fault reset instead of Running)"
    assert answers[4].source == f"t.yaml: operation {short}, poll 5 (Succeeded)"


def test_step_overrides() -> None:
    m, _ = machine("""
        operations:
          - name: job
            start: {method: POST, path: /jobs}
            status-path: /jobs/operations/{operationId}
            retry-after: 5
            steps:
              - status: Running
                retry-after: 0.5
                headers: {Location: "{{ proxy_url }}/jobs/operations/{{ operation.id }}?attempt=2", X-Poll: 1}
              - status: Running
                retry-after: null
                http-status: 202
                json: {createdDateTime: null, percentComplete: "{{ operation.poll * 25 }}", extra: {a: [1]}}
              - status: Running
                headers: {Retry-After: soon}
              - status: Succeeded
                retry-after: {ms: 1500}
                json: {status: Completed}
        """)
    start = ask(m, "POST", "/jobs")
    op_id = start.operation
    url = start.response.header("Location") or ""
    first = ask(m, "GET", url)
    assert headers(first) == {  # a fraction of a second travels as valid HTTP: in milliseconds
        "Content-Type": "application/json",
        "retry-after-ms": "500",
        "Location": f"{BASE}/jobs/operations/{op_id}?attempt=2",
        "X-Poll": "1",
    }
    assert first.retry_after == 0.5
    second = ask(m, "GET", f"{BASE}/jobs/operations/{op_id}?attempt=2")
    assert second.response.status == 202
    assert "Retry-After" not in headers(second) and second.retry_after is None
    assert body(second) == {
        "operationId": op_id,
        "status": "Running",
        "percentComplete": "50",
        "extra": {"a": [1]},
    }
    third = ask(m, "GET", url)
    assert headers(third)["Retry-After"] == "soon"  # the step's header replaces the operation's
    assert third.retry_after is None  # junk: a client cannot parse it
    done = ask(m, "GET", url)
    assert (done.terminal, done.status) == (True, "Succeeded")  # the status as the step says
    assert body(done)["status"] == "Completed"  # the body as the json override says
    assert headers(done)["retry-after-ms"] == "1500"  # a terminal step may advertise one explicitly
    assert done.retry_after == 1.5


def test_head_polls_get_the_headers_without_a_body() -> None:
    m, _ = machine(TILESET)
    url = ask(m, "POST", "/tilesets?datasetId=d").response.header("Location") or ""
    head = ask(m, "HEAD", url)
    assert (head.response.status, head.status, head.poll, head.response.body) == (200, "NotStarted", 1, b"")
    assert headers(head) == {"Content-Type": "application/json", "Retry-After": "1"}
    assert ask(m, "GET", url).status == "Running"


def test_a_non_terminal_last_stage_runs_forever() -> None:
    m, _ = machine("""
        operations:
          - start: {method: POST, path: /a}
            steps: [{status: NotStarted}, {status: Running}]
        """)
    url = ask(m, "POST", "/a").response.header("Location") or ""
    answers = [ask(m, "GET", url) for _ in range(25)]
    assert [a.status for a in answers] == ["NotStarted"] + ["Running"] * 24
    assert not any(a.terminal for a in answers)
    assert all(a.retry_after == 1.0 for a in answers)


# -- responses -------------------------------------------------------------------------------------------


def retry_after_of(spec: str) -> Answer:
    m, _ = machine(f"""
        routes:
          - match: {{path: /r}}
            respond: {{status: 429, retry-after: {spec}}}
        """)
    return ask(m, "GET", "/r")


@pytest.mark.parametrize(
    ("spec", "header", "advertised"),
    [
        ("1", ("Retry-After", "1"), 1.0),
        ("2.0", ("Retry-After", "2"), 2.0),
        # on this 429 a fraction keeps Retry-After (rounded up: retrying clients need it) beside the ms
        ("0.5", (("Retry-After", "1"), ("retry-after-ms", "500")), 0.5),
        ("0", ("Retry-After", "0"), 0.0),
        ("soon", ("Retry-After", "soon"), None),
        ('"5"', ("Retry-After", "5"), 5.0),
        ('"Wed, 21 Oct 2015 07:28:00 GMT"', ("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"), 0.0),
        ("{seconds: 2.5}", (("Retry-After", "3"), ("retry-after-ms", "2500")), 2.5),
        ("{raw: '0.5'}", ("Retry-After", "0.5"), 0.5),  # invalid on purpose: verbatim
        ("{seconds: 3}", ("Retry-After", "3"), 3.0),
        ("{date: 30s}", ("Retry-After", formatdate(EPOCH + 30, usegmt=True)), 30.0),
        ("{date: 2m}", ("Retry-After", formatdate(EPOCH + 120, usegmt=True)), 120.0),
        ("{raw: soon}", ("Retry-After", "soon"), None),
        ("{raw: '7'}", ("Retry-After", "7"), 7.0),
        ("{ms: 1500}", ("retry-after-ms", "1500"), 1.5),
        ("{x-ms: 250}", ("x-ms-retry-after-ms", "250"), 0.25),
    ],
)
def test_retry_after_forms(
    spec: str, header: tuple[str, str] | tuple[tuple[str, str], ...], advertised: float | None
) -> None:
    answer = retry_after_of(spec)
    assert answer.response.headers == (header if isinstance(header[0], tuple) else (header,))
    assert answer.retry_after == advertised


def test_retry_after_null_sends_none() -> None:
    answer = retry_after_of("null")
    assert answer.response.headers == ()
    assert answer.retry_after is None


def test_retry_after_on_the_accepted_answer() -> None:
    m, _ = machine("""
        operations:
          - start: {method: POST, path: /a}
            accepted: {retry-after: {date: 5s}, headers: {x-request: "{{ request.headers['x-id'] }}"}}
            steps: [{status: Succeeded}]
        """)
    start = ask(m, "POST", "/a", headers={"X-Id": "r1"})
    assert start.response.status == 202
    assert headers(start) == {
        "x-request": "r1",
        "Retry-After": formatdate(EPOCH + 5, usegmt=True),
        "Location": f"{BASE}/operations/{start.operation}",
    }
    assert start.retry_after == 5.0


def test_bodies_content_types_and_headers() -> None:
    files = {
        "tile.png": b"\x89PNG\r\n{{ not a template }}",
        "blob.unknownext": b"\x00\x01",
        "doc.json": b"{}",
    }
    loaded = scenario(
        """
        routes:
          - match: {path: /json}
            respond:
              status: 201
              headers: {X-Count: 3, X-Ratio: 0.5, X-Op: "{{ request.method }}"}
              json: {a: "{{ request.query.q }}", list: ["{{ 1 + 1 }}", 3, null, true], nested: {b: "é"}}
          - match: {path: /text}
            respond: {text: "hello {{ request.params | length }}"}
          - match: {path: /png}
            respond: {file: tile.png}
          - match: {path: /blob}
            respond: {file: blob.unknownext}
          - match: {path: /typed}
            respond: {file: doc.json, content-type: application/vnd.custom+json}
          - match: {path: /own-type}
            respond: {text: x, headers: {content-type: text/csv}}
          - match: {path: /empty}
            respond: {status: 204}
          - match: {path: /empty-typed}
            respond: {status: 200, content-type: application/json}
          - match: {path: /scalar}
            respond: {json: "{{ request.path }}"}
        """,
        files=files,
    )
    m, _ = machine(loaded)
    answer = ask(m, "GET", "/json?q=Q")
    assert answer.response.status == 201
    assert headers(answer) == {
        "X-Count": "3",
        "X-Ratio": "0.5",
        "X-Op": "GET",
        "Content-Type": "application/json",
    }
    assert body(answer) == {"a": "Q", "list": ["2", 3, None, True], "nested": {"b": "é"}}
    assert answer.response.body.decode("utf-8") == (
        '{"a": "Q", "list": ["2", 3, null, true], "nested": {"b": "é"}}'
    )
    text = ask(m, "GET", "/text")
    assert (text.response.body, headers(text)) == (b"hello 0", {"Content-Type": "text/plain; charset=utf-8"})
    png = ask(m, "GET", "/png")
    assert (png.response.body, headers(png)) == (files["tile.png"], {"Content-Type": "image/png"})
    blob = ask(m, "GET", "/blob")
    assert headers(blob) == {"Content-Type": "application/octet-stream"}
    typed = ask(m, "GET", "/typed")
    assert (typed.response.body, headers(typed)) == (b"{}", {"Content-Type": "application/vnd.custom+json"})
    assert headers(ask(m, "GET", "/own-type")) == {"content-type": "text/csv"}
    empty = ask(m, "GET", "/empty")
    assert (empty.response.status, empty.response.headers, empty.response.body) == (204, (), b"")
    assert ask(m, "GET", "/empty-typed").response.headers == (("Content-Type", "application/json"),)
    assert body(ask(m, "GET", "/scalar")) == "/scalar"


def test_a_file_the_loader_did_not_read_is_a_scenario_error() -> None:
    m, _ = machine("""
        routes:
          - match: {path: /f}
            respond: {file: missing.bin}
        """)
    with pytest.raises(ScenarioError, match=r"^t.yaml:1:1: file 'missing.bin' was not loaded$"):
        handle(m, "GET", "/f")


def test_delay_dribble_and_faults() -> None:
    m, _ = machine("""
        routes:
          - match: {path: /d}
            sequence:
              - {delay: 1.5}
              - {delay: "250ms", dribble: 2s}
              - {delay: {min: 0.1, max: 0.2}, times: 20}
              - {fault: hang}
        """)
    assert ask(m, "GET", "/d").delay == 1.5
    second = ask(m, "GET", "/d")
    assert (second.delay, second.dribble, second.fault) == (0.25, 2.0, None)
    delays = [ask(m, "GET", "/d").delay for _ in range(20)]
    assert all(0.1 <= d <= 0.2 for d in delays)
    assert len(set(delays)) == 20  # drawn each time
    m2, _ = machine("""
        routes:
          - match: {path: /d}
            respond: {delay: {min: 0.1, max: 0.2}}
        """)
    assert [ask(m2, "GET", "/d").delay for _ in range(5)] == delays[:5]  # the seeded generator
    hang = ask(m, "GET", "/d")
    assert (hang.fault, hang.delay, hang.dribble) == ("hang", 0.0, None)


def test_malformed_json_cuts_the_body_in_half() -> None:
    m, _ = machine("""
        routes:
          - match: {path: /m}
            respond: {json: {status: Succeeded, id: "{{ request.query.id }}"}, fault: malformed-json}
          - match: {path: /n}
            respond: {json: 12, fault: malformed-json}
        """)
    answer = ask(m, "GET", "/m?id=abc")
    whole = json.dumps({"status": "Succeeded", "id": "abc"}).encode()
    assert answer.response.body == whole[: len(whole) // 2]
    assert answer.fault == "malformed-json"  # kept for the journal; delivered like any response
    assert headers(answer) == {"Content-Type": "application/json"}
    with pytest.raises(ValueError):
        json.loads(answer.response.body)
    # "12" halves to "1", which would parse: it is cut further.
    assert ask(m, "GET", "/n").response.body == b""


# -- templates -------------------------------------------------------------------------------------------


def test_template_context() -> None:
    loaded = scenario(
        """
        name: context-demo
        operations:
          - name: job
            start: {method: POST, path: "/jobs/{kind}"}
            status-path: /jobs/operations/{operationId}
            resource-path: /jobs/results/{resourceId}
            accepted:
              json:
                request:
                  method: "{{ request.method }}"
                  url: "{{ request.url }}"
                  path: "{{ request.path }}"
                  query: "{{ request.query.a }}"
                  header: "{{ request.headers['x-client'] }}"
                  json: "{{ request.json['items'][1] }}"
                  params: "{{ request.params.kind }}"
                operation: "{{ operation.id }}|{{ operation.name }}"
                progress: "{{ operation.status }}|{{ operation.poll }}"
                created: "{{ operation.created }}|{{ operation.created_iso }}"
                urls: "{{ operation.status_url }}|{{ operation.resource_url }}|{{ operation.resource_id }}"
                proxy: "{{ proxy_url }}"
                scenario: "{{ scenario.name }}|{{ scenario.file }}"
                now: "{{ now() }}|{{ now('%Y') }}"
                uuid: "{{ uuid() }}"
            steps:
              - status: NotStarted
                json: {seen: "{{ operation.status }} {{ operation.poll }} {{ request.method }}"}
              - status: Succeeded
            resource:
              text: "{{ operation.status }} {{ operation.poll }} {{ request.path }}"
        routes:
          - match: {path: /outside}
            respond: {text: "{{ operation is none }}"}
        """,
        "ctx.yaml",
    )
    m, _ = machine(loaded)
    start = ask(
        m, "POST", "/jobs/export?a=1&a=2", headers={"X-Client": "c"}, json_body={"items": [0, "second"]}
    )
    op = m.operations[0]
    assert body(start) == {
        "request": {
            "method": "POST",
            "url": f"{UPSTREAM}/jobs/export?a=1&a=2",
            "path": "/jobs/export",
            "query": "1",
            "header": "c",
            "json": "second",
            "params": "export",
        },
        "operation": f"{op.id}|job",
        "progress": "NotStarted|0",
        "created": f"{SEED_CREATED}|2020-03-11T20:45:13+00:00",
        "urls": f"{op.status_url}|{BASE}/jobs/results/{op.resource_id}|{op.resource_id}",
        "proxy": BASE,
        "scenario": "context-demo|ctx.yaml",
        "now": "2020-03-11T20:45:13+00:00|2020",
        "uuid": body(start)["uuid"],
    }
    assert UUID4.match(body(start)["uuid"]) and body(start)["uuid"] not in (op.id, op.resource_id)
    assert body(ask(m, "GET", op.status_url))["seen"] == "NotStarted 1 GET"
    assert ask(m, "GET", op.status_url).status == "Succeeded"
    resource = ask(m, "GET", f"/jobs/results/{op.resource_id}")
    assert resource.response.body == f"Succeeded 2 /jobs/results/{op.resource_id}".encode()
    assert ask(m, "GET", "/outside").response.body == b"True"


def test_template_errors_name_the_position_of_the_template() -> None:
    loaded = scenario(
        """
        routes:
          - match: {path: /r}
            respond:
              json: {outer: {inner: ["ok", "{{ nope }}"]}}
        operations:
          - start: {method: POST, path: /a}
            steps:
              - status: Running
                headers: {X-Bad: "{{ ''.__class__ }}"}
        """,
        positions={
            ("routes", 0, "respond", "json", "outer", "inner", 1): (5, 40),
            ("operations", 0, "steps", 0): (9, 17),
        },
    )
    m, _ = machine(loaded)
    with pytest.raises(TemplateError) as caught:
        handle(m, "GET", "/r")
    assert str(caught.value) == "t.yaml:5:40: template error: 'nope' is undefined"
    url = ask(m, "POST", "/a").response.header("Location") or ""
    with pytest.raises(TemplateError) as caught:
        handle(m, "GET", url)
    # The closest ancestor with a position names the template.
    assert str(caught.value) == (
        "t.yaml:9:17: template error: access to attribute '__class__' of 'str' object is unsafe."
    )


def test_a_header_rendered_with_cr_or_lf_is_refused_where_it_is_written() -> None:
    """Issue 16: a header template echoing request data wrote the client's CR/LF onto the wire."""
    loaded = scenario(
        """
        routes:
          - match: {path: /echo}
            respond: {headers: {X-Echo: "{{ request.query.v }}"}, text: ok}
        operations:
          - start: {method: POST, path: /a}
            steps:
              - status: Running
                headers: {X-Step: "{{ request.query.v }}"}
        """,
        positions={
            ("routes", 0, "respond", "headers", "X-Echo"): (3, 38),
            ("operations", 0, "steps", 0, "headers", "X-Step"): (9, 27),
        },
    )
    m, _ = machine(loaded)
    assert ask(m, "GET", "/echo?v=fine").response.header("X-Echo") == "fine"
    with pytest.raises(TemplateError) as caught:
        handle(m, "GET", "/echo?v=a%0D%0ASet-Cookie:%20pwned=1")
    assert str(caught.value) == (
        "t.yaml:3:38: header 'X-Echo' has a CR in its value ('a\\r\\nSet-Cookie: pwned=1'): "
        "it would write other headers"
    )
    url = ask(m, "POST", "/a").response.header("Location") or ""
    with pytest.raises(TemplateError) as caught:
        handle(m, "GET", url + "?v=%0Ax")
    assert str(caught.value).startswith("t.yaml:9:27: header 'X-Step' has an LF in its value")


# -- state: reset, snapshots, threads --------------------------------------------------------------------


def test_reset_forgets_counters_and_operations() -> None:
    m, _ = machine(PASS_SCENARIO, sequence_scenario("error").replace("/s", "/seq"))
    assert ask(m, "POST", "/tilesets?datasetId=d").response.status == 429
    start = ask(m, "POST", "/tilesets?datasetId=d")
    url = start.response.header("Location") or ""
    assert ask(m, "GET", url).status == "Succeeded"
    assert bodies(m, 5, "/seq")[-1].startswith("Refusal(")
    m.reset()
    assert m.operations == []
    assert handle(m, "GET", url) is None  # the operation is forgotten
    assert ask(m, "POST", "/tilesets?datasetId=d").response.status == 429  # the route starts over
    assert bodies(m, 1, "/seq") == ["a"]


def test_operations_snapshot() -> None:
    m, fake = machine(TILESET)
    first = ask(m, "POST", "/tilesets?datasetId=d")
    fake.advance(60)
    second = ask(m, "POST", "/tilesets?datasetId=e")
    ask(m, "GET", first.response.header("Location") or "")
    states = m.operations
    assert states == [
        OperationState(
            id=first.operation or "",
            rule="tileset",
            file="t.yaml",
            status="NotStarted",
            polls=1,
            terminal=False,
            created=EPOCH,
            status_url=f"{BASE}/tilesets/operations/{first.operation}",
            resource_id=states[0].resource_id,
        ),
        OperationState(
            id=second.operation or "",
            rule="tileset",
            file="t.yaml",
            status="NotStarted",
            polls=0,
            terminal=False,
            created=EPOCH + 60,
            status_url=f"{BASE}/tilesets/operations/{second.operation}",
            resource_id=states[1].resource_id,
        ),
    ]
    assert UUID4.match(states[0].resource_id)
    ask(m, "GET", first.response.header("Location") or "")
    assert states[0].polls == 1  # a snapshot does not change afterwards
    assert m.operations[0].polls == 2


def test_concurrent_clients_each_get_one_step() -> None:
    m, _ = machine("""
        routes:
          - match: {path: /s}
            when-exhausted: error
            sequence: [{text: a, times: 100}, {text: b, times: 100}]
        operations:
          - start: {method: POST, path: /jobs}
            steps: [{status: Running, times: 50}, {status: Succeeded}]
        """)
    got: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        for _ in range(25):
            answer = handle(m, "GET", "/s")
            with lock:
                got[answer.response.body.decode() if isinstance(answer, Answer) else "refused"] += 1

    threads = [threading.Thread(target=client) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert got == {"a": 100, "b": 100, "refused": 50}
    url = ask(m, "POST", "/jobs").response.header("Location") or ""
    polls: list[int] = []

    def poller() -> None:
        for _ in range(10):
            answer = ask(m, "GET", url)
            with lock:
                polls.append(answer.poll or 0)

    threads = [threading.Thread(target=poller) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(polls) == list(range(1, 61))
    assert m.operations[0].status == "Succeeded"


# -- the shipped scenarios -------------------------------------------------------------------------------

SHIPPED = sorted((ROOT / "scenarios").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "scenarios")))
def test_shipped_operations_play_through(path: Path) -> None:
    """Every shipped operation starts, polls to its end (or runs forever), and serves its resource."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    loaded = LoadedScenario(path=path, scenario=Scenario.model_validate(data))
    m, _ = machine(loaded, clock="virtual")
    for operation in loaded.scenario.operations:
        start_path = (operation.start.path or "/").replace("{project}", "p").replace("{dataset}", "d")
        query = "?" + "&".join(f"{k}=x" for k in (operation.start.query or {}))
        for _attempt in range(3):  # a throttled start answers 429 first
            method = operation.start.method if isinstance(operation.start.method, str) else "POST"
            start = ask(m, method, start_path + query)
            if start.operation is not None:
                break
        assert start.operation is not None, start.source
        state = m.operations[-1]
        if operation.hold:  # held until a test releases it
            m.steer(state.id, "release")
        if operation.cancel is not None:  # running until canceled
            cancel = operation.cancel
            target = cancel.path or operation.status_path.partition("?")[0]
            target = target.replace("{operationId}", state.id).replace("{resourceId}", state.resource_id)
            methods = [cancel.method] if isinstance(cancel.method, str) else cancel.method
            ask(m, methods[0], target)
        answers = [
            a for a in (handle(m, "GET", state.status_url) for _ in range(40)) if isinstance(a, Answer)
        ]
        assert len(answers) == 40
        last = answers[-1]
        if path.stem in ("running-forever", "status-unknown"):  # never terminal, by design
            assert not last.terminal and last.status in ("Running", "Completed")
            continue
        assert last.terminal, f"{path.name}: {last.source}"
        if operation.resource_path is not None and last.status == "Succeeded":
            resource = handle(m, "GET", operation.resource_path.replace("{resourceId}", state.resource_id))
            assert isinstance(resource, Answer) and resource.response.status == 200


# -- the rules closest to answering (the no-match diagnostic) ----------------------------------------------

NEAREST = """\
routes:
  - name: describe
    match:
      method: POST
      path: /
      query: {Version: "2010-05-15"}
      headers: {x-amz-target: {regex: "^CloudFormation"}}
      form: {Action: DescribeStacks, StackName: {present: true}}
    respond: {text: ok}
  - name: create
    match: {method: PUT, path: "/jobs/{id}", json: {spec.kind: {one-of: [a, b]}, dry: null}}
    respond: {status: 201}
  - name: passes
    match: {path: /pass}
    sequence: [{pass: true}]
  - name: authorized
    match: {path: /pass, headers: {authorization: Bearer good}}
    respond: {text: ok}
operations:
  - name: job
    start: {method: POST, path: /jobs}
    status-path: /jobs/operations/{operationId}
    resource-path: /jobs/done/{resourceId}
    steps: [{status: Succeeded}]
"""


def test_nearest_rules_say_where_and_what_differed(tmp_path: Path) -> None:
    from proxy.scenario.loader import load_scenarios

    path = tmp_path / "near.yaml"
    path.write_text(NEAREST)
    m = ScenarioMachine(load_scenarios([path]))

    def nearest(method: str, target: str, **kwargs: Any) -> list[tuple[str, str, tuple[str, ...]]]:
        r = request(method, target, **kwargs)
        assert m.handle(r, BASE) is None
        return [(n.rule, n.where.replace(str(path), "F"), n.differences) for n in m.nearest(r)]

    json_form = {"Content-Type": "application/json"}
    assert nearest("POST", "/?Version=2", headers=json_form, body=b'{"Action": "DescribeStacks"}') == [
        (
            'route "describe"',
            "F:2:5",
            (
                "query Version: '2', expected '2010-05-15'",
                "header x-amz-target: absent, expected matching regex '^CloudFormation'",
                "form field Action: absent (the body is not application/x-www-form-urlencoded), "
                "expected 'DescribeStacks'",
                "form field StackName: absent (the body is not application/x-www-form-urlencoded), "
                "expected present",
            ),
        ),
        ('route "passes"', "F:13:5", ("path: '/' does not fit /pass",)),
        ('operation "job" (start)', "F:21:12", ("path: '/' does not fit /jobs",)),
    ]
    form = {"Content-Type": "application/x-www-form-urlencoded", "X-Amz-Target": "CloudFormation.X"}
    [first, *_] = nearest("POST", "/?Version=2010-05-15", headers=form, body=b"Action=ListStacks")
    assert first == (
        'route "describe"',
        "F:2:5",
        (
            "form field Action: 'ListStacks', expected 'DescribeStacks'",
            "form field StackName: absent, expected present",
        ),
    )
    [first, *_] = nearest("PUT", "/jobs/7", json_body={"spec": {"kind": "c"}, "dry": True})
    assert first == (
        'route "create"',
        "F:10:5",
        ("json field spec.kind: 'c', expected one of 'a', 'b'", "json field dry: 'true', expected absent"),
    )
    rules = nearest("GET", "/pass", headers={"Authorization": "Bearer secret-token"})
    assert rules[:2] == [
        (
            'route "passes"',
            "F:13:5",
            ("it matches, but its current step has pass: true (the next rules answer)",),
        ),
        (
            'route "authorized"',
            "F:16:5",
            ("header authorization: '<not shown: a secret>', expected 'Bearer good'",),
        ),
    ]
    [first, *_] = nearest("GET", "/jobs/operations/nope")
    assert first == (
        'operation "job" (status)',
        "F:22:18",
        ("no operation 'nope' was started by this rule since the last reset",),
    )
    [first, *_] = nearest("DELETE", "/jobs/done/nope")
    assert first == (
        'operation "job" (resource)',
        "F:23:20",
        (
            "method: DELETE, expected GET",
            "no operation of this rule created a resource 'nope' since the last reset",
        ),
    )


# -- steering and cancel (the control API's verbs) --------------------------------------------------------

TIMED = """
clock: virtual
operations:
  - start: {method: POST, path: /jobs}
    status-path: /jobs/{operationId}
    retry-after: 10
    steps:
      - status: Running
        for: 30s
      - status: Succeeded
"""


def test_time_held_does_not_count_toward_a_timed_step() -> None:
    """Virtual clock: the start advances 1 s (no Retry-After), each poll 10 s; 30 s of Running. Held after
    one poll (11 s), ten polls later it is still Running; released, it answers as it would have without
    the hold: Running at 11 s and 21 s, then Succeeded."""
    m, _ = machine(TIMED)
    url = ask(m, "POST", "/jobs").response.header("Location")
    assert url is not None
    (op,) = m.operations
    assert body(ask(m, "GET", url))["status"] == "Running"
    assert m.steer(op.id, "hold").held
    assert [body(ask(m, "GET", url))["status"] for _ in range(10)] == ["Running"] * 10
    assert not m.steer(op.id, "release").held
    assert [body(ask(m, "GET", url))["status"] for _ in range(3)] == ["Running", "Running", "Succeeded"]


def test_a_steered_error_is_sent_as_given_not_rendered_as_a_template() -> None:
    """A test failing an operation gives the error it wants the client to see: ``{{`` in it is text."""
    m, _ = machine(TIMED)
    url = ask(m, "POST", "/jobs").response.header("Location")
    assert url is not None
    (op,) = m.operations
    error = {"code": "Bad{{Template", "message": "{{ request.path }} is not rendered"}
    m.steer(op.id, "fail", error=error)
    got = body(ask(m, "GET", url))
    assert got["status"] == "Failed"
    assert got["error"]["code"] == "Bad{{Template"
    assert got["error"]["message"] == "{{ request.path }} is not rendered"


def test_steer_refuses_unknown_ids_and_actions_and_bad_arguments() -> None:
    from proxy.scenario.machine import UnknownOperation

    m, _ = machine(TIMED)
    ask(m, "POST", "/jobs")
    (op,) = m.operations
    with pytest.raises(UnknownOperation):
        m.steer("nope", "hold")
    with pytest.raises(ValueError, match="unknown action 'pause'"):
        m.steer(op.id, "pause")
    with pytest.raises(ValueError, match="steps must be"):
        m.steer(op.id, "advance", steps=0)
    with pytest.raises(ValueError, match="error must be an OData error"):
        m.steer(op.id, "fail", error={"message": "no code"})
    with pytest.raises(ValueError, match="cancel takes no error"):
        m.steer(op.id, "cancel", error={"code": "X"})
    assert m.operations == [op]  # nothing changed


def test_a_cancel_path_named_by_the_start_path_cancels_the_latest_operation_started_there() -> None:
    """arm's usual cancel: DELETE on the URL it PUT to (no {operationId} in it); other URLs are left."""
    m, _ = machine(
        """
        operations:
          - style: arm
            start: {method: PUT, path: "/things/{name}"}
            status-path: /ops/{operationId}
            cancel: {method: DELETE, path: "/things/{name}"}
            steps: [{status: InProgress}]
          - style: arm
            header: none
            start: {method: PUT, path: "/nets/{name}"}
            status-path: /unused/{operationId}
            cancel: {method: POST, path: "/nets/{name}/cancel"}
            steps: [{status: Updating}]
        """
    )
    first, second, other = (ask(m, "PUT", f"/things/{n}") for n in ("a", "a", "b"))
    assert handle(m, "DELETE", "/things/c") is None  # nothing was started there
    cancel = ask(m, "DELETE", "/things/a")
    assert (cancel.operation, cancel.response.status, body(cancel)["status"]) == (
        second.operation,
        200,
        "Canceled",
    )
    states = {o.id: (o.status, o.ended_by) for o in m.operations}
    assert states[second.operation or ""] == ("Canceled", "cancel")
    assert states[first.operation or ""] == states[other.operation or ""] == ("InProgress", None)
    ask(m, "PUT", "/nets/n1")
    canceled = ask(m, "POST", "/nets/n1/cancel")  # no monitor: the resource answers, provisioningState
    assert body(canceled)["properties"] == {"provisioningState": "Canceled"}
    assert body(ask(m, "GET", "/nets/n1"))["properties"] == {"provisioningState": "Canceled"}


def test_a_released_arm_operation_ends_again_with_a_new_end_time() -> None:
    m, clock = machine(
        """
        operations:
          - style: arm
            start: {method: PUT, path: "/things/{name}"}
            status-path: /ops/{operationId}
            steps: [{status: InProgress, times: 2}, {status: Succeeded}]
        """
    )
    url = ask(m, "PUT", "/things/a").response.header("Azure-AsyncOperation") or ""
    (op,) = m.operations
    m.steer(op.id, "cancel")
    canceled = body(ask(m, "GET", url))
    assert canceled["status"] == "Canceled"
    clock.advance(60)
    m.steer(op.id, "release")
    assert "endTime" not in body(ask(m, "GET", url))  # InProgress again
    done = body(ask(m, "GET", url))
    assert done["status"] == "Succeeded" and done["endTime"] > canceled["endTime"]


def test_location_cancel_answers_204_and_its_polls_an_error_status() -> None:
    m, _ = machine(
        """
        operations:
          - style: location
            start: {method: POST, path: /batches}
            status-path: /results/{operationId}
            cancel: {method: DELETE}
            steps: [{status: Running}]
        """
    )
    url = ask(m, "POST", "/batches").response.header("Location") or ""
    assert ask(m, "GET", url).response.status == 202
    cancel = ask(m, "DELETE", url)
    assert (cancel.response.status, cancel.response.body) == (204, b"")
    done = ask(m, "GET", url)
    assert (done.response.status, done.terminal, done.status) == (400, True, "Canceled")
    assert body(done) == {"error": {"code": "Canceled", "message": "The operation was canceled."}}


def test_a_cancel_rule_answers_only_for_its_own_operations_and_after_the_end_changes_nothing() -> None:
    m, _ = machine(
        """
        operations:
          - start: {method: POST, path: /jobs}
            status-path: /jobs/{operationId}
            resource-path: /things/{resourceId}
            cancel: {method: [DELETE, POST], path: "/things/{resourceId}"}
            steps: [{status: Running}, {status: Succeeded}]
        """
    )
    url = ask(m, "POST", "/jobs").response.header("Location")
    assert url is not None
    (op,) = m.operations
    assert handle(m, "DELETE", "/things/someone-else") is None
    cancel = ask(m, "DELETE", f"/things/{op.resource_id}")
    assert cancel.response.status == 200 and body(cancel)["status"] == "Canceled"
    assert cancel.source == f"t.yaml: cancel of operation {op.id[:8]}… (Canceled)"
    assert body(ask(m, "GET", url))["status"] == "Canceled"
    assert body(ask(m, "POST", f"/things/{op.resource_id}"))["status"] == "Canceled"  # already ended
    assert m.operations[0].ended_by == "cancel"


# -- path templates: the segment matcher agrees with the RE2 one -------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from proxy.scenario.machine import _PathPattern  # noqa: E402

_SEGMENT = st.sampled_from(["a", "jobs", "{id}", "{op}", "", "x.y", "%2F", "v1"])
_PATH_PART = st.sampled_from(["a", "jobs", "7", "", "x.y", "%2F", "v1", "a b", "é", "\n"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_SEGMENT, min_size=1, max_size=5), st.lists(_PATH_PART, min_size=1, max_size=6))
def test_segment_matching_agrees_with_the_regex(template_parts: list[str], path_parts: list[str]) -> None:
    """Templates whose placeholders are whole segments are matched by splitting the path (no RE2 call:
    ~10 us saved per poll); the answer must be the regex's for every path, matching or not."""
    template = "/" + "/".join(template_parts)
    pattern = _PathPattern(template)
    assert pattern.segments is not None
    path = "/" + "/".join(path_parts)
    by_regex = pattern.regex.fullmatch(path)
    expected = dict(zip(pattern.names, by_regex.groups(), strict=True)) if by_regex else None
    assert pattern._match(path) == expected, (template, path)


def test_templates_the_segment_matcher_leaves_to_the_regex() -> None:
    assert _PathPattern("/files/{rest*}").segments is None
    assert _PathPattern("/v{n}.json").segments is None
    assert _PathPattern("/jobs/{id}").segments == [("", None), ("jobs", None), ("", "id")]
    assert _PathPattern("/files/{rest*}")._match("/files/a/b") == {"rest": "a/b"}
    assert _PathPattern("/v{n}.json")._match("/v2.json") == {"n": "2"}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_SEGMENT.filter(lambda s: "{" not in s), max_size=4),
    st.lists(_PATH_PART, min_size=1, max_size=6),
)
def test_a_last_segment_placeholder_agrees_with_the_regex(literals: list[str], path_parts: list[str]) -> None:
    """``/jobs/{id}`` (a status path's usual form) is matched by its prefix alone, in ``match``: what the
    regex gives for the path as sent, or else for it percent-decoded (``match``'s fallback)."""
    template = "/" + "/".join([*literals, "{id}"])
    pattern = _PathPattern(template)
    assert pattern._last_only == "id"
    for path in ("/" + "/".join(path_parts), template.replace("{id}", "/".join(path_parts))):
        by_regex = pattern.regex.fullmatch(path)
        if by_regex is None and unquote(path) != path:
            by_regex = pattern.regex.fullmatch(unquote(path))
        assert pattern.match(path) == ({"id": by_regex.group(1)} if by_regex else None), (template, path)
