"""The scenario loader: YAML -> validated models, every problem one ``file:line:column: message`` line.

Positions are asserted exactly: each YAML text below is written so that its lines and columns can be
counted by eye (line 1 is the first line of the dedented text, columns are 1-based).
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.cli import main as cli_main
from proxy.errors import ScenarioError
from proxy.scenario import schema
from proxy.scenario.check import check_main, schema_text
from proxy.scenario.loader import MAX_FILE_BYTES, MAX_NODES, LoadedScenario, load_scenarios

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_SCHEMA = ROOT / "scenarios" / "scenario.schema.json"
PROBLEM_LINE = re.compile(r"^.+:\d+:\d+: .+$")
FILE_PROBLEM_LINE = re.compile(r"^.+: .+$")


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(*paths: Path) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        load_scenarios(list(paths))
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def problems_of(tmp_path: Path, text: str, name: str = "s.yaml") -> list[str]:
    """The problems of one scenario text, with the file's path replaced by ``F``."""
    path = write(tmp_path, name, text)
    return [p.replace(str(path), "F", 1) for p in problems(path)]


# -- valid files ------------------------------------------------------------------------------------------

EVERY_CONSTRUCT = """
# yaml-language-server: $schema=scenario.schema.json
$schema: ./scenario.schema.json
name: every-construct
description: Uses every key of the scenario language once.
clock: virtual
routes:
  - name: plain
    match:
      method: [GET, HEAD]
      path: /items/{id}/{rest*}
      query: {a: x, b: 2, c: 1.5, d: true, gone: null, p: {present: true}, q: {present: false},
              e: {equals: 3}, r: {regex: "^v[0-9]+$"}, o: {one-of: [x, 2, 1.5, false]}}
      headers: {X-Tenant: {equals: acme}}
      json: {properties.name: tiles, items.0.id: {one-of: [a, b]}}
    respond:
      status: 201
      headers: {X-Id: "{{ request.path }}", X-Count: 3, X-Ratio: 0.5}
      json: {id: "{{ path.id }}", list: [1, "{% if true %}yes{% endif %}"], nested: {n: null}}
      content-type: application/vnd.example+json
      retry-after: 0.5
      delay: 250ms
      dribble: 1s
  - name: sequence
    match: {method: POST, path: /jobs}
    when-exhausted: cycle
    sequence:
      - {status: 429, retry-after: {seconds: 1.5}, text: slow down, times: 2}
      - {status: 503, retry-after: {date: 2m}, file: bodies/error.json}
      - {status: 503, retry-after: {raw: soon}, delay: {min: 0.1, max: "1s"}}
      - {status: 503, retry-after: {ms: 1500}, fault: truncate}
      - {status: 503, retry-after: {x-ms: 2500}, fault: malformed-json}
      - {retry-after: "Wed, 21 Oct 2015 07:28:00 GMT", fault: reset}
      - {fault: close}
      - {fault: hang}
      - {pass: true}
operations:
  - name: full
    start: {method: POST, path: /tilesets, query: {datasetId: {present: true}}}
    style: creator-v2
    status-path: /tilesets/operations/{operationId}?api-version=2.0
    header: [Operation-Location, Azure-AsyncOperation]
    url-form: relative
    accepted: {status: 202, headers: {X-Accepted: "yes"}, retry-after: null}
    retry-after: 2
    steps:
      - status: NotStarted
      - status: Running
        times: 2
        retry-after: {ms: 500}
        headers: {X-Progress: "{{ operation.polls }}"}
        json: {percentComplete: 50}
      - status: Running
        for: 30s
      - respond: {status: 503, retry-after: 1, json: {error: {code: Busy}}}
      - status: Failed
        http-status: 200
        error: {code: InvalidFeature, message: "{{ operation.id }} failed", target: f1,
                details: [{code: NoGeometry, message: No geometry.}]}
      - status: Succeeded
        resource: true
    resource-path: /tilesets/{resourceId}
    resource: {file: bodies/tileset.json, content-type: application/json}
    id-format: counter
  - name: minimal
    start: {path: /other}
    steps: [{status: Succeeded, resource: false}]
"""


def test_every_construct_of_the_language_loads(tmp_path: Path) -> None:
    write(tmp_path, "bodies/error.json", '{"error": {"code": "Busy"}}')
    write(tmp_path, "bodies/tileset.json", '{"tilesetId": "t1"}')
    path = write(tmp_path, "every.yaml", EVERY_CONSTRUCT)
    [loaded] = load_scenarios([path])
    assert isinstance(loaded, LoadedScenario)
    assert loaded.path == path
    s = loaded.scenario
    assert (s.schema_, s.name, s.clock) == ("./scenario.schema.json", "every-construct", "virtual")
    plain, seq = s.routes
    assert plain.match.method == ["GET", "HEAD"]
    assert plain.match.path == "/items/{id}/{rest*}"
    assert plain.match.query is not None
    assert plain.match.query["gone"] is None
    assert plain.match.query["o"] == schema.Condition.model_validate({"one-of": ["x", 2, 1.5, False]})
    assert plain.match.json_ == {
        "properties.name": "tiles",
        "items.0.id": schema.Condition.model_validate({"one-of": ["a", "b"]}),
    }
    assert plain.respond is not None
    assert plain.respond.headers == {"X-Id": "{{ request.path }}", "X-Count": 3, "X-Ratio": 0.5}
    assert plain.respond.json_ == {
        "id": "{{ path.id }}",
        "list": [1, "{% if true %}yes{% endif %}"],
        "nested": {"n": None},
    }
    assert (plain.respond.delay, plain.respond.dribble, plain.respond.retry_after) == ("250ms", "1s", 0.5)
    assert seq.when_exhausted == "cycle"
    assert seq.sequence is not None
    assert [step.fault for step in seq.sequence] == [
        None, None, None, "truncate", "malformed-json", "reset", "close", "hang", None,
    ]  # fmt: skip
    assert seq.sequence[0].times == 2
    assert seq.sequence[2].delay == schema.DelaySpec(min=0.1, max="1s")
    assert seq.sequence[4].retry_after == schema.RetryAfterSpec.model_validate({"x-ms": 2500})
    assert seq.sequence[8].pass_ is True
    full, minimal = s.operations
    assert full.header == ["Operation-Location", "Azure-AsyncOperation"]
    assert (full.style, full.url_form, full.id_format) == ("creator-v2", "relative", "counter")
    assert full.steps[2].for_ == "30s"
    assert full.steps[4].error is not None
    assert full.steps[4].error.model_extra == {"target": "f1"}
    assert full.steps[4].error.details == [{"code": "NoGeometry", "message": "No geometry."}]
    assert minimal.steps[0].resource is False
    # Bodies named by file: are read, keyed by the name as written.
    assert loaded.files == {
        "bodies/error.json": b'{"error": {"code": "Busy"}}',
        "bodies/tileset.json": b'{"tilesetId": "t1"}',
    }
    # Positions of values and keys, 1-based.
    assert loaded.positions[()] == (2, 1)
    assert loaded.positions[("routes", 0)] == (7, 5)
    assert loaded.key_positions[("routes", 0, "match")] == (8, 5)
    assert loaded.positions[("routes", 0, "match", "method")] == (9, 15)
    assert loaded.positions[("routes", 0, "match", "method", 1)] == (9, 21)
    assert loaded.positions[("routes", 1, "sequence", 1, "file")] == (28, 54)
    assert loaded.key_positions[("operations", 0, "steps", 1, "times")] == (48, 9)
    assert loaded.positions[("operations", 0, "steps", 1, "times")] == (48, 16)
    assert loaded.where("operations", 0, "steps", 1, "times") == f"{path}:48:16"
    assert loaded.where("operations", 0, "steps", 1, "no-such-key") == f"{path}:47:9"


def test_shipped_scenarios_are_valid() -> None:
    shipped = sorted((ROOT / "scenarios").rglob("*.yaml"))
    assert len(shipped) >= 10
    loaded = load_scenarios(shipped)
    assert [s.path for s in loaded] == shipped


def test_yaml_conveniences_anchors_merge_keys_and_explicit_str(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        """
        name: 2020-03-11
        routes:
          - match: {path: /a}
            respond: &busy {status: 503, retry-after: 2, text: !!str 123}
          - match: {path: /b}
            respond:
              <<: *busy
              status: 500
        """,
    )
    [loaded] = load_scenarios([path])
    assert loaded.scenario.name == "2020-03-11"  # a date is kept as the text written
    first, second = loaded.scenario.routes
    assert first.respond == schema.ResponseSpec.model_validate(
        {"status": 503, "retry-after": 2, "text": "123"}
    )
    assert second.respond == schema.ResponseSpec.model_validate(
        {"status": 500, "retry-after": 2, "text": "123"}
    )
    assert loaded.positions[("routes", 1, "respond", "status")] == (8, 15)  # the key written wins
    assert loaded.positions[("routes", 1, "respond", "retry-after")] == (4, 47)  # merged: where defined


# -- the JSON Schema --------------------------------------------------------------------------------------


def test_shipped_schema_is_current() -> None:
    assert SHIPPED_SCHEMA.read_text(encoding="utf-8") == schema_text(), (
        "scenarios/scenario.schema.json is out of date; regenerate it with: "
        "uv run replay-proxy schema > scenarios/scenario.schema.json"
    )


def test_schema_text_is_a_json_schema() -> None:
    document = json.loads(schema_text())
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == schema.SCHEMA_ID
    assert set(document["properties"]) == {"$schema", "name", "description", "clock", "routes", "operations"}
    assert document["additionalProperties"] is False
    try:
        import jsonschema  # type: ignore[import-untyped]  # optional: only if already installed
    except ImportError:
        return
    jsonschema.Draft202012Validator.check_schema(document)  # pragma: no cover


# -- schema errors, one line each, at the offending key or value -----------------------------------------

SCHEMA_ERRORS: list[tuple[str, str, list[str]]] = [
    (
        "typo in a step key names the allowed keys and suggests one",
        """
        operations:
          - start: {path: /x}
            steps:
              - status: Running
              - stauts: Succeeded
        """,
        [
            "F:5:9: unknown key 'stauts' in operation step; allowed: status, times, for, retry-after, "
            "http-status, resource, error, headers, json, respond; did you mean 'status'?"
        ],
    ),
    (
        "typo in a response key",
        """
        routes:
          - match: {path: /x}
            respond: {stauts: 404}
        """,
        [
            "F:3:15: unknown key 'stauts' in respond; allowed: status, headers, json, text, file, "
            "content-type, retry-after, delay, dribble, fault; did you mean 'status'?"
        ],
    ),
    (
        "snake_case field names are not keys (the JSON Schema would reject them too)",
        """
        operations:
          - start: {path: /x}
            status_path: /ops/{operationId}
            steps: [{status: Running}]
        """,
        [
            "F:3:5: unknown key 'status_path' in operation; allowed: name, start, style, status-path, "
            "header, url-form, accepted, retry-after, steps, resource-path, resource, id-format, cancel, "
            "hold; did you mean 'status-path'?"
        ],
    ),
    (
        "unknown top-level key without a close match",
        """
        name: x
        zzz: 1
        """,
        [
            "F:2:1: unknown key 'zzz' in the scenario; allowed: $schema, name, description, clock, "
            "routes, operations"
        ],
    ),
    (
        "missing key in an operation",
        """
        operations:
          - name: op
            start: {path: /x}
        """,
        ["F:2:5: missing key 'steps' in operation; required: start, steps"],
    ),
    (
        "missing key in a nested mapping points at that mapping's key",
        """
        routes:
          - match: {path: /x}
            respond:
              delay: {min: 1}
        """,
        ["F:4:7: missing key 'max' in delay; required: max"],
    ),
    (
        "model validator: a route needs exactly one of respond and sequence",
        """
        routes:
          - match: {path: /x}
          - match: {path: /y}
            respond: {}
            sequence: [{status: 200}]
        """,
        [
            "F:2:5: route: give exactly one of: respond, sequence",
            "F:3:5: route: give exactly one of: respond, sequence",
        ],
    ),
    (
        "model validators of responses, steps and operations",
        """
        routes:
          - match: {path: /x}
            respond: {json: {}, text: hi}
        operations:
          - start: {path: /x}
            status-path: /ops/{id}
            steps: [{status: Running}]
        """,
        [
            "F:3:14: respond: give at most one body: json, text or file",
            "F:5:5: operation: status-path must contain {operationId}, e.g. /operations/{operationId}",
        ],
    ),
    (
        "poll step validators",
        """
        operations:
          - start: {path: /x}
            steps:
              - {times: 2}
              - {status: Running, times: 2, for: 1s}
        """,
        [
            "F:4:9: operation step: a step needs a status (e.g. Running) "
            "or a respond (e.g. a 503 or a fault)",
            "F:5:9: operation step: give times or for, not both",
        ],
    ),
    (
        "query condition of the wrong type: one message for every branch of the union",
        """
        routes:
          - match:
              query: {datasetId: [1, 2]}
            respond: {}
        """,
        [
            "F:3:26: datasetId: expected a value, null (absent), or a mapping with "
            "present/equals/regex/one-of; got a list"
        ],
    ),
    (
        "a typo inside a condition: the mapping branch is what was meant",
        """
        routes:
          - match:
              headers: {X-A: {presnt: true}}
            respond: {}
        """,
        [
            "F:3:23: unknown key 'presnt' in condition; allowed: present, equals, regex, one-of; "
            "did you mean 'present'?"
        ],
    ),
    (
        "nested unions: an item of one-of",
        """
        routes:
          - match:
              json: {a: {one-of: [x, [1]]}}
            respond: {}
        """,
        ["F:3:30: one-of item 2: expected a value; got a list"],
    ),
    (
        "retry-after: the mapping's own rule, and a wrong type",
        """
        routes:
          - match: {path: /x}
            respond: {retry-after: {seconds: 1, ms: 5}}
          - match: {path: /y}
            respond: {retry-after: [1]}
        """,
        [
            "F:3:28: retry-after: give exactly one of: seconds, date, raw, ms, x-ms",
            "F:5:28: retry-after: expected a number, a text, null, or a mapping with "
            "seconds/date/raw/ms/x-ms; got a list",
        ],
    ),
    (
        "scalars: literal with a suggestion, bounds, integers, texts, lists",
        """
        name: 42
        routes:
          - match: {path: x, method: 5}
            respond: {status: abc, fault: rest, headers: {X-A: [1]}}
          - match: {path: /x, query: {a: {regex: "("}}}
            sequence: []
        operations:
          - start: {path: /x}
            steps: [{status: Running, times: 0}]
            style: creator-v3
        """,
        [
            "F:1:7: name: expected a text or null; got 42 (quote it to make it a text)",
            "F:3:19: path: a path starts with '/', e.g. /tilesets; got 'x'",
            "F:3:30: method: expected a text, null, or a list of texts; got 5",
            "F:4:23: status: expected an integer; got 'abc'",
            "F:4:35: fault: expected one of reset, close, hang, truncate, malformed-json; got 'rest'; "
            "did you mean 'reset'?",
            "F:4:56: X-A: expected a text or a number; got a list",
            "F:5:42: regex: invalid regular expression: missing ), unterminated subpattern at position 0; "
            "got '('",
            "F:6:15: sequence: needs at least 1 item; got an empty list",
            "F:9:38: times: must be at least 1; got 0",
            "F:10:12: style: expected one of creator-v1, creator-v2, aip-151, location, arm; "
            "got 'creator-v3'; did you mean 'creator-v2'?",
        ],
    ),
    (
        "the document is not a mapping",
        """
        - routes: []
        """,
        ["F:1:1: a scenario file is a mapping with keys such as name, routes, operations; got a list"],
    ),
    (
        "a regular expression too large to compile is a problem, not a crash",
        """
        routes:
          - match: {query: {a: {regex: "a{4294967296}"}}}
            respond: {}
        """,
        [
            "F:2:32: regex: invalid regular expression: the repetition number is too large; "
            "got 'a{4294967296}'"
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in SCHEMA_ERRORS], ids=[c[0] for c in SCHEMA_ERRORS]
)
def test_schema_error_is_one_line_at_its_position(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert problems_of(tmp_path, text) == expected


# -- YAML-level problems ----------------------------------------------------------------------------------


def test_python_tag_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"""
    name: x
    routes: !!python/object/apply:os.system ["touch {marker}"]
    operations: !include other.yaml
    """
    assert problems_of(tmp_path, text) == [
        "F:2:9: tags are not allowed (!!python/object/apply:os.system): a scenario is plain YAML "
        "(mappings, lists, text, numbers, true/false, null)",
        "F:3:13: tags are not allowed (!include): a scenario is plain YAML "
        "(mappings, lists, text, numbers, true/false, null)",
    ]
    assert not marker.exists()


def test_duplicate_and_non_text_keys(tmp_path: Path) -> None:
    text = """
    name: x
    routes: []
    name: y
    on: 1
    200: x
    ~: z
    [a]: 1
    """
    assert problems_of(tmp_path, text) == [
        "F:3:1: duplicate key 'name' (first given at line 1, column 1)",
        "F:4:1: key 'on' is read as true/false, not a text: quote it, e.g. 'on':",
        "F:5:1: key '200' is read as a number, not a text: quote it, e.g. '200':",
        "F:6:1: key '~' is read as null, not a text: quote it, e.g. '~':",
        "F:7:1: a key must be a text, not a list or a mapping",
    ]


@pytest.mark.timeout(20)
def test_alias_bomb_stops_at_the_node_budget(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10**10 nodes
    lines.append("name: *a9")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:1:")
    assert problem.endswith(
        f": the document is too big: more than {MAX_NODES} nodes once aliases are expanded "
        "(each use of an alias counts everything it refers to)"
    )


def test_recursive_alias_and_deep_nesting(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "a: &a [1, *a]\n") == [
        "F:1:4: an alias refers to a node that contains it (a recursive structure)"
    ]
    assert problems_of(tmp_path, "name: " + "[" * 150 + "]" * 150 + "\n") == [
        "F:1:107: nested more than 100 levels deep"
    ]
    [beyond_libyaml] = problems_of(tmp_path, "name: " + "[" * 5000 + "]" * 5000 + "\n")
    assert re.fullmatch(r"F:1:\d+: invalid YAML: .*", beyond_libyaml)


EMPTY = "F:1:1: empty scenario: expected a mapping with routes and/or operations"
YAML_SYNTAX = {
    "empty": ("", EMPTY),
    "comment-only": ("# nothing but a comment\n\n", EMPTY),
    "unclosed-flow": (
        "name: [x\n",
        "F:2:1: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence)",
    ),
    "two-documents": (
        "name: x\n---\nname: y\n",
        "F:2:1: invalid YAML: but found another document (expected a single document in the stream)",
    ),
    "tab": (
        "name: x\n\tdescription: y\n",
        "F:2:1: invalid YAML: found a tab character that violates indentation "
        "(while scanning a plain scalar); indent with spaces: YAML does not allow tabs in indentation",
    ),
    "nul": ("name: a\x00b\n", "F:1:8: invalid YAML: control characters are not allowed (#x0000)"),
    "nul-after-non-ascii": (
        "name: \u00e9\u00e9\x00b\n",
        "F:1:9: invalid YAML: control characters are not allowed (#x0000)",
    ),
}


@pytest.mark.parametrize(("text", "expected"), list(YAML_SYNTAX.values()), ids=list(YAML_SYNTAX))
def test_yaml_syntax_problems(tmp_path: Path, text: str, expected: str) -> None:
    assert problems_of(tmp_path, text) == [expected]


FLOW_HINT = (
    "a '{{' inside an unquoted value of {{...}} or [...] starts a new mapping or list: quote the value, "
    "e.g. {example}, or write it in block style (one key per line)"
)
YAML_HINTS = {
    "flow-mapping-placeholder": (
        "routes:\n  - match: {path: /jobs/{id}}\n    respond: {status: 200}\n",
        "F:2:25: invalid YAML: did not find expected ',' or '}' (while parsing a flow mapping); "
        + FLOW_HINT.format(example="path: '/jobs/{id}'"),
        "F:2:25: invalid YAML: expected ',' or '}', but got '{' (while parsing a flow mapping); "
        + FLOW_HINT.format(example="path: '/jobs/{id}'"),
    ),
    "flow-mapping-placeholder-mid-value": (
        "routes:\n  - match: {method: GET, path: /jobs/{id}/x, query: {a: b}}\n    respond: {status: 200}\n",
        "F:2:38: invalid YAML: did not find expected ',' or '}' (while parsing a flow mapping); "
        + FLOW_HINT.format(example="path: '/jobs/{id}/x'"),
        "F:2:38: invalid YAML: expected ',' or '}', but got '{' (while parsing a flow mapping); "
        + FLOW_HINT.format(example="path: '/jobs/{id}/x'"),
    ),
    "key-indented-between-two-mappings": (
        "routes:\n  - match:\n      path: /jobs\n     method: GET\n    respond: {status: 200}\n",
        "F:4:6: invalid YAML: did not find expected key (while parsing a block mapping); check the "
        "indentation: line 4 starts in column 6, but the keys of the mapping that begins at line 2 start in "
        "column 5: indent each line with spaces, exactly like the other keys or items of the mapping or list "
        "it belongs to",
        "F:4:6: invalid YAML: expected <block end>, but found '<block mapping start>' (while parsing a block "
        "mapping); check the indentation: line 4 starts in column 6, but the keys of the mapping that begins "
        "at line 2 start in column 5: indent each line with spaces, exactly like the other keys or items of "
        "the mapping or list it belongs to",
    ),
    "list-item-indented-too-far": (
        "routes:\n  - match: {path: /a}\n    respond: {status: 200}\n   - match: {path: /b}\n",
        "F:4:4: invalid YAML: did not find expected '-' indicator (while parsing a block collection); check "
        "the indentation: line 4 starts in column 4, but the items ('- ') of the list that begins at line 2 "
        "start in column 3: indent each line with spaces, exactly like the other keys or items of the "
        "mapping or list it belongs to",
        "F:4:4: invalid YAML: expected <block end>, but found '<block sequence start>' (while parsing a "
        "block collection); check the indentation: line 4 starts in column 4, but the items ('- ') of the "
        "list that begins at line 2 start in column 3: indent each line with spaces, exactly like the other "
        "keys or items of the mapping or list it belongs to",
    ),
    "key-in-a-list-without-dash": (
        "routes:\n  - match: {path: /a}\n    respond: {status: 200}\n  name: x\n",
        "F:4:3: invalid YAML: did not find expected '-' indicator (while parsing a block collection); line 4 "
        "starts in column 3 like the items of the list that begins at line 2, but without '- ': start it "
        "with '- ' to make it an item, or indent it under the item it belongs to",
        "F:4:3: invalid YAML: expected <block end>, but found '?' (while parsing a block collection); line 4 "
        "starts in column 3 like the items of the list that begins at line 2, but without '- ': start it "
        "with '- ' to make it an item, or indent it under the item it belongs to",
    ),
    "key-indented-into-a-value": (
        "routes:\n  - match:\n      path: /x\n        method: GET\n    respond: {status: 200}\n",
        "F:4:15: invalid YAML: mapping values are not allowed in this context; a ': ' starts a key here: if "
        "this line is a key of the mapping above, indent it like the other keys; if the value itself "
        "contains ': ', quote it",
        "F:4:15: invalid YAML: mapping values are not allowed here; a ': ' starts a key here: if this line "
        "is a key of the mapping above, indent it like the other keys; if the value itself contains ': ', "
        "quote it",
    ),
}


@pytest.mark.parametrize("libyaml", [True, False], ids=["libyaml", "pure-pyyaml"])
@pytest.mark.parametrize(("text", "with_libyaml", "pure"), list(YAML_HINTS.values()), ids=list(YAML_HINTS))
def test_yaml_syntax_problems_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, with_libyaml: str, pure: str, libyaml: bool
) -> None:
    if not libyaml:
        monkeypatch.delattr(yaml, "CSafeLoader")
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml")
    assert problems_of(tmp_path, text) == [with_libyaml if libyaml else pure]


def test_a_step_status_that_is_a_number_points_at_http_status(tmp_path: Path) -> None:
    text = """
    operations:
      - start: {method: POST, path: /jobs}
        steps:
          - status: 202
          - status: Succeeded
    """
    assert problems_of(tmp_path, text) == [
        "F:4:17: status: an operation step's status is the operation's state in the body (NotStarted, "
        "Running, Succeeded, Failed...), not an HTTP code (got 202): for the HTTP status code of the poll's "
        "answer write http-status: 202 next to a status such as Running"
    ]


def test_file_level_problems(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes(b"name: ok\ndescription: caf\xe9\n")
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: never read
    assert problems(missing, folder, binary, huge) == [
        f"{missing}: file not found",
        f"{folder}: is a directory, not a scenario file",
        f"{binary}:2:17: the file is not UTF-8 text (scenario files are UTF-8)",
        f"{huge}: file is too large ({MAX_FILE_BYTES + 1} bytes; the limit is {MAX_FILE_BYTES} bytes)",
    ]


# -- checks beyond the schema -----------------------------------------------------------------------------


def test_body_files_must_stay_inside_the_scenario_folder(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("secret", encoding="utf-8")
    folder = tmp_path / "scenarios"
    write(folder, "ok.json", "{}")
    write(folder, "sub/inner.txt", "inner")
    (folder / "out-link").symlink_to(tmp_path / "secret.txt")
    (folder / "in-link").symlink_to(folder / "sub" / "inner.txt")
    (folder / "dir").mkdir()
    path = write(
        folder,
        "s.yaml",
        """
        routes:
          - match: {path: /a}
            respond: {file: ../secret.txt}
          - match: {path: /b}
            respond: {file: /etc/hostname}
          - match: {path: /c}
            respond: {file: out-link}
          - match: {path: /d}
            respond: {file: sub/../../secret.txt}
          - match: {path: /e}
            respond: {file: nothere.json}
          - match: {path: /f}
            respond: {file: dir}
        """,
    )
    outside = (
        f"is outside the scenario's folder {folder.resolve()}: "
        "put body files in that folder (or below it) and name them relative to it"
    )
    assert problems(path) == [
        f"{path}:3:21: file '../secret.txt' {outside}",
        f"{path}:5:21: file '/etc/hostname' {outside}",
        f"{path}:7:21: file 'out-link' {outside}",
        f"{path}:9:21: file 'sub/../../secret.txt' {outside}",
        f"{path}:11:21: file 'nothere.json' not found (looked for {folder.resolve() / 'nothere.json'})",
        f"{path}:13:21: file 'dir' is not a regular file ({folder.resolve() / 'dir'})",
    ]
    good = write(
        folder,
        "good.yaml",
        """
        routes:
          - match: {path: /a}
            sequence: [{file: ok.json}, {file: in-link}, {file: sub/../ok.json}, {file: ok.json}]
        """,
    )
    [loaded] = load_scenarios([good])
    assert loaded.files == {"ok.json": b"{}", "in-link": b"inner", "sub/../ok.json": b"{}"}


def test_templates_must_compile(tmp_path: Path) -> None:
    text = """
    routes:
      - match: {path: /a}
        respond:
          headers: {X-A: "{{ request.path }", X-B: "plain {not a template}"}
          json: {list: [ok, "{% if x %}never closed"], fine: "{{ operation.id }}"}
      - match: {path: /b}
        respond:
          text: |
            line one
            {{ x |
    operations:
      - start: {path: /x}
        steps:
          - status: Failed
            error: {code: E, message: "{{ not a template: error fields are sent as written }"}
            headers: {Location: "{{ proxy_url }}/x", X-Bad: "{{ 1 + }}"}
    """
    assert problems_of(tmp_path, text) == [
        "F:4:22: X-A: template error: unexpected '}'",
        "F:5:25: list item 2: template error: Unexpected end of template. Jinja was looking for the "
        "following tags: 'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'.",
        "F:8:13: text: template error: unexpected end of template, expected 'name'. (line 2 of the template)",
        "F:16:57: X-Bad: template error: unexpected 'end of print statement'",
    ]


def test_templates_cannot_escape_the_sandbox(tmp_path: Path) -> None:
    text = """
    routes:
      - match: {path: /a}
        respond:
          headers:
            X-A: "{{ ''.__class__ }}"
            X-B: "{{ request['__init__'] }}"
            X-C: "{% include 'other.txt' %}"
            X-D: "{% from 'macros' import m %}"
            X-E: "{% extends 'base' %}"
            X-F: "{{ request.headers['x-a'] }} {{ now('%Y') }} {{ uuid() }}"
    """
    assert problems_of(tmp_path, text) == [
        "F:5:14: X-A: template error: templates cannot read private attributes ('__class__')",
        "F:6:14: X-B: template error: templates cannot read private attributes ('__init__')",
        "F:7:14: X-C: template error: templates cannot use other templates (include)",
        "F:8:14: X-D: template error: templates cannot use other templates (import)",
        "F:9:14: X-E: template error: templates cannot use other templates (extends)",
    ]


def test_regexes_that_need_backtracking_are_refused(tmp_path: Path) -> None:
    """Issue 16: route regexes run with RE2 (linear time): what only a backtracking engine can do is
    refused at load, located. The regexes scenarios use (anchors, classes, counts) are accepted."""
    text = r"""
    routes:
      - match: {path: /a, query: {a: {regex: "(a)\\1"}}}
        respond: {}
      - match: {path: /b, headers: {x: {regex: "^(?!x)"}}}
        respond: {}
      - match: {path: /c, query: {v: {regex: "^(a+)+$"}}, json: {n: {regex: "^[0-9a-f-]{36}$"}}}
        respond: {}
    """
    rest = "Regexes run with RE2 (linear time, so a request cannot freeze the proxy): no "
    rest += "backreferences, look-around or \\Z (use \\z); see https://github.com/google/re2/wiki/Syntax"
    assert problems_of(tmp_path, text) == [
        f"F:2:42: regex: regular expression not supported: invalid escape sequence: \\1. {rest}; "
        "got '(a)\\\\1'",
        f"F:4:44: regex: regular expression not supported: invalid perl operator: (?!. {rest}; got '^(?!x)'",
    ]


def test_path_placeholders_that_touch_are_refused(tmp_path: Path) -> None:
    """Issue 16: ``{a}{b}`` says nothing of where ``a`` ends (and backtracked under Python's re)."""
    text = """
    routes:
      - match: {path: "/r/{a}{b}/end"}
        respond: {}
      - match: {path: "/v1/{name*}:export"}
        respond: {}
    operations:
      - start: {path: "/s/{x*}{y}"}
        steps: [{status: Succeeded}]
    """
    assert problems_of(tmp_path, text) == [
        "F:2:19: path: placeholders {a} and the next one touch, so nothing says where one ends: "
        "put a literal between them (such as '/' or '-')",
        "F:7:19: path: placeholders {x*} and the next one touch, so nothing says where one ends: "
        "put a literal between them (such as '/' or '-')",
    ]


def test_headers_that_would_write_other_headers_are_refused(tmp_path: Path) -> None:
    """Issue 16: CR/LF in a header value (or anything that becomes one) and names that are no HTTP field
    names are refused at load, where they are written; templates are checked again when rendered."""
    text = r"""
    routes:
      - match: {path: /a}
        respond: {headers: {"X A": b, X-Ok: "{{ request.query.v }}"}, content-type: "text/plain\r\nX: y"}
      - match: {path: /b}
        respond: {retry-after: {raw: "1\nSet-Cookie: a=b"}}
    operations:
      - start: {method: POST, path: /c}
        status-path: "/ops/{operationId}\r\nSet-Cookie: a=b"
        steps:
          - {status: Running, headers: {"X\u202eY": z}, retry-after: "2\r\n"}
      - start: {method: POST, path: /d}
        header: [Location, "Operation Location"]
        steps: [{status: Running}]
    """
    name = "is not a valid HTTP field name (letters, digits, !#$%&'*+-.^_`|~)"
    assert problems_of(tmp_path, text) == [
        f"F:3:32: header name 'X A' {name}",
        "F:3:81: header 'Content-Type' has a CR in its value ('text/plain\\r\\nX: y'): "
        "it would write other headers",
        "F:5:34: header 'Retry-After' has an LF in its value ('1\\nSet-Cookie: a=b'): "
        "it would write other headers",
        "F:8:18: status-path: '/ops/{operationId}\\r\\nSet-Cookie: a=b' has a CR, LF or control character",
        f"F:10:49: header name 'X\\u202eY' {name}",
        "F:10:66: header 'Retry-After' has a CR in its value ('2\\r\\n'): it would write other headers",
        f"F:12:24: header name 'Operation Location' {name}",
    ]


def test_durations_retry_after_and_path_templates(tmp_path: Path) -> None:
    text = """
    routes:
      - match: {path: "/a/{id}/{id}"}
        respond: {delay: {min: 2, max: 1s}, dribble: fast, retry-after: -1}
      - match: {path: "/b/{1x}/{ok*}"}
        respond: {delay: -3, retry-after: {date: soon}}
      - match: {path: "/c/{open"}
        respond: {}
      - match: {path: "/d/close}"}
        respond: {}
    operations:
      - start: {path: "/e/{id}/{rest*}"}
        status-path: "/ops/{operationId}/{"
        retry-after: true
        steps:
          - {status: Running, for: 1 week}
    """
    assert problems_of(tmp_path, text) == [
        "F:2:19: path: placeholder {id} appears twice",
        "F:3:22: delay: min (2s) is more than max (1s)",
        "F:3:50: dribble: 'fast' is not a duration: use seconds (1.5) or '500ms', '30s', '2m', '1h'",
        "F:3:69: retry-after: must be zero or more seconds; got -1 (to send any text, use {raw: '...'})",
        "F:4:19: path: {1x} is not a placeholder: "
        "use {name} for one segment or {name*} for the rest of the path",
        "F:5:22: delay: -3 is not a duration: it must be zero or more seconds",
        "F:5:46: date: 'soon' is not a duration: use seconds (1.5) or '500ms', '30s', '2m', '1h'",
        "F:6:19: path: '{' without '}' in '/c/{open'",
        "F:8:19: path: '}' without '{' in '/d/close}'",
        "F:12:18: status-path: '{' without '}' in '/ops/{operationId}/{'",
        "F:13:18: retry-after: expected seconds (e.g. 1 or 0.5), a text, a mapping or null; got true",
        "F:15:32: for: '1 week' is not a duration: use seconds (1.5) or '500ms', '30s', '2m', '1h'",
    ]


# -- many files -------------------------------------------------------------------------------------------


def test_every_problem_of_every_file_is_reported_once(tmp_path: Path) -> None:
    b = write(tmp_path, "b.yaml", "name: x\nnmae: y\n")
    good = write(tmp_path, "good.yaml", "routes: [{match: {path: /x}, respond: {}}]\n")
    a = write(tmp_path, "a.yaml", "operations:\n  - start: {}\n    steps: []\nroutes: 5\n")
    missing = tmp_path / "missing.yaml"
    assert problems(b, good, a, missing) == [
        f"{b}:2:1: unknown key 'nmae' in the scenario; allowed: $schema, name, description, clock, routes, "
        "operations; did you mean 'name'?",
        f"{a}:3:12: steps: needs at least 1 item; got an empty list",
        f"{a}:4:9: routes: expected a list; got 5",
        f"{missing}: file not found",
    ]


# -- check and schema commands ----------------------------------------------------------------------------


def test_check_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.yaml", "routes: [{match: {path: /x}, respond: {}}]\n")
    assert check_main([good, good]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("ok: 2 scenario files valid\n", "")

    # A field's error hides the route's own rule (pydantic checks a model only once its fields are valid).
    bad = write(tmp_path, "bad.yaml", "routes: [{match: {path: x}}, {match: {path: /y}}]\n")
    missing = tmp_path / "missing.yaml"
    assert check_main([good, bad, missing]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"{bad}:1:25: path: a path starts with '/', e.g. /tilesets; got 'x'",
        f"{bad}:1:30: route: give exactly one of: respond, sequence",
        f"{missing}: file not found",
    ]
    assert out == "invalid: 3 problems in 2 of 3 scenario files\n"


def test_check_and_schema_commands_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "bad.yaml", "operations:\n  - start: {path: /x}\n    steps: [{stauts: Running}]\n")
    assert cli_main(["check", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"{bad}:3:14: unknown key 'stauts' in operation step; allowed: status, times, for, retry-after, "
        "http-status, resource, error, headers, json, respond; did you mean 'status'?"
    ]
    assert out == "invalid: 1 problem in 1 of 1 scenario file\n"
    shipped = sorted((ROOT / "scenarios" / "azure-maps").glob("*.yaml"))
    assert cli_main(["check", *map(str, shipped)]) == 0
    assert capsys.readouterr() == (f"ok: {len(shipped)} scenario files valid\n", "")
    assert cli_main(["schema"]) == 0
    assert capsys.readouterr() == (schema_text(), "")


def test_check_says_what_to_do_about_a_placeholder_in_flow_style_and_a_numeric_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = write(
        tmp_path, "flow.yaml", "routes:\n  - match: {path: /jobs/{id}}\n    respond: {status: 200}\n"
    )
    numeric = write(
        tmp_path,
        "numeric.yaml",
        "operations:\n  - start: {path: /jobs}\n    steps: [{status: 202}, {status: Done}]\n",
    )
    assert cli_main(["check", str(flow), str(numeric)]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"{flow}:2:25: invalid YAML: did not find expected ',' or '}}' (while parsing a flow mapping); "
        "a '{' inside an unquoted value of {...} or [...] starts a new mapping or list: quote the value, "
        "e.g. path: '/jobs/{id}', or write it in block style (one key per line)",
        f"{numeric}:3:22: status: an operation step's status is the operation's state in the body "
        "(NotStarted, Running, Succeeded, Failed...), not an HTTP code (got 202): for the HTTP status code "
        "of the poll's answer write http-status: 202 next to a status such as Running",
    ]
    assert out == "invalid: 2 problems in 2 of 2 scenario files\n"
    # the fix the hint gives is valid
    flow.write_text("routes:\n  - match: {path: '/jobs/{id}'}\n    respond: {status: 200}\n")
    assert cli_main(["check", str(flow)]) == 0


# -- property: any input gives models or located problems, never another exception --------------------

VALID = yaml.safe_load(
    textwrap.dedent(
        """
        name: valid
        routes:
          - match: {method: POST, path: /tilesets, query: {datasetId: null, x: {present: true}}}
            respond: {status: 400, json: {error: {code: BadRequest}}, retry-after: {seconds: 1}}
          - match: {path: "/jobs/{id}"}
            sequence: [{status: 429, delay: {min: 0, max: 1ms}}, {file: body.json}, {pass: true}]
        operations:
          - start: {method: POST, path: /tilesets}
            status-path: /tilesets/operations/{operationId}
            resource-path: /tilesets/{resourceId}
            steps:
              - {status: Running, times: 2, retry-after: 1}
              - {respond: {status: 503, fault: reset}}
              - {status: Failed, error: {code: E, message: "{{ operation.id }}"}}
            resource: {json: {id: "{{ operation.resource_id }}"}}
        """
    )
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["/x/{id}", "{{ x }", "{% if %}", "../secret", "1s", "-1", "Running", "reset"]),
)
keys = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        ["routes", "operations", "match", "respond", "sequence", "steps", "status", "stauts", "start",
         "file", "json", "text", "headers", "retry-after", "delay", "path", "query", "regex", "one-of"]
    ),
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_scenarios(draw: st.DrawFn) -> Any:
    data = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        where = draw(st.sampled_from(_paths(data)))
        if not where:
            data = draw(documents)
            continue
        parent = data
        for k in where[:-1]:
            parent = parent[k]
        last = where[-1]
        action = draw(st.sampled_from(["drop", "replace", "typo", "wrap"]))
        if action == "drop":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(documents)
        elif action == "wrap":
            parent[last] = [parent[last]]
        elif isinstance(last, str) and isinstance(parent, dict) and last:
            i = draw(st.integers(min_value=0, max_value=len(last) - 1))
            typo = last[:i] + last[i + 1 :] if len(last) > 1 else last + "x"
            parent[typo] = parent.pop(last)
    return data


def _check_any_input(folder: Path, text: str) -> None:
    path = folder / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        loaded = load_scenarios([path])
    except ScenarioError as e:
        assert e.problems
        for line in e.problems:
            assert line.startswith(f"{path}:")
            assert PROBLEM_LINE.match(line) or FILE_PROBLEM_LINE.match(line), line
            assert "\n" not in line
    else:
        assert len(loaded) == 1


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "body.json").write_text("{}", encoding="utf-8")
    return folder


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(documents, mutated_scenarios()))
def test_property_random_documents(fuzz_dir: Path, data: Any) -> None:
    _check_any_input(fuzz_dir, yaml.safe_dump(data, allow_unicode=True))


@settings(max_examples=120, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.text(alphabet=st.sampled_from(list("{}[]:-&*!|>'\"#%@`,?\n \t<aZ09.~")), max_size=120),
    )
)
def test_property_random_text(fuzz_dir: Path, text: str) -> None:
    _check_any_input(fuzz_dir, text)  # lone surrogates are written as bytes that are not UTF-8


def test_property_inputs_cover_valid_scenarios(fuzz_dir: Path) -> None:
    """The mutation strategy starts from a scenario that is valid (or it would test nothing valid)."""
    _check_any_input(fuzz_dir, yaml.safe_dump(VALID))
    [loaded] = load_scenarios([fuzz_dir / "fuzz.yaml"])
    assert (loaded.scenario.name, loaded.files) == ("valid", {"body.json": b"{}"})


def test_a_cancel_path_names_the_operation_by_id_or_by_the_start_paths_values(tmp_path: Path) -> None:
    text = """
    operations:
      - style: arm
        start: {method: PUT, path: "/things/{name}"}
        status-path: /ops/{operationId}
        cancel: {path: "/other/{thing}"}
        steps: [{status: InProgress}]
    """
    [problem] = problems_of(tmp_path, text)
    assert problem.startswith("F:2:5: ") and "{thing} is not in the start path" in problem
    assert "{operationId} or {resourceId}" in problem
    assert load_scenarios([write(tmp_path, "ok.yaml", text.replace("/other/{thing}", "/things/{name}"))])
