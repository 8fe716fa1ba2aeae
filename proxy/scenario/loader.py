"""Scenario files -> validated models, with every problem reported as file:line:column.

Reading is safe by construction: PyYAML only *composes* the document into nodes (nothing is constructed,
no tag is ever executed), and this module turns the nodes into plain data itself, recording where every
key and value sits, refusing tags, duplicate and non-text keys, and documents that expand past a node
budget (alias bombs). The data is then validated by the pydantic models of ``schema.py``; each pydantic
error becomes one line at the position of the offending key or value, in words (``unknown key 'stauts'
in operation step; allowed: ...; did you mean 'status'?``). Checks the schema cannot express follow:
body files stay inside the scenario's folder, templates compile, durations parse, path templates are
well formed. Problems of every file are collected and raised together as one ``ScenarioError``.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import yaml
from pydantic import BaseModel, ValidationError

from proxy.errors import ScenarioError
from proxy.model import header_problem, reason_problem
from proxy.scenario.schema import (
    Condition,
    DelaySpec,
    Match,
    Operation,
    OperationError,
    PollStep,
    ResponseSpec,
    RetryAfterSpec,
    Route,
    Scenario,
    Step,
    parse_duration,
)

if TYPE_CHECKING:  # jinja2 is imported when a scenario has a template (start-up time)
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

Position = tuple[int, int]
"""1-based (line, column) in the YAML file."""

DataPath = tuple[str | int, ...]

MAX_FILE_BYTES = 5 * 1024 * 1024
"""A scenario file larger than this is refused (scenarios are hand-written; bodies go in ``file:``)."""
MAX_BODY_FILE_BYTES = 64 * 1024 * 1024
"""A ``file:`` body larger than this is refused (it is held in memory)."""
MAX_NODES = 200_000
"""Nodes a document may expand to, aliases included: stops 'billion laughs' documents."""
MAX_DEPTH = 100
"""Nesting a document may have."""


@dataclass(frozen=True)
class LoadedScenario:
    """A valid scenario file: its model, the bodies of the files it names, and where each node sits."""

    path: Path
    scenario: Scenario
    files: Mapping[str, bytes] = field(default_factory=dict)
    positions: Mapping[tuple[str | int, ...], Position] = field(default_factory=dict)
    key_positions: Mapping[tuple[str | int, ...], Position] = field(default_factory=dict)
    """Where the *key* of each mapping entry sits (``positions`` has where its value starts)."""

    def where(self, *keys: str | int) -> str:
        """``file:line:column`` of the node at ``keys`` (or of its closest ancestor that has a position)."""
        path = tuple(keys)
        while path and path not in self.positions:
            path = path[:-1]
        line, col = self.positions.get(path, (1, 1))
        return f"{self.path}:{line}:{col}"


def load_scenarios(paths: Sequence[Path]) -> list[LoadedScenario]:
    """Load and validate scenario files; raises ScenarioError listing every problem in every file."""
    loaded, problems = check_scenarios(paths)
    if problems:
        raise ScenarioError([p for file_problems in problems for p in file_problems])
    return loaded


def check_scenarios(paths: Sequence[Path]) -> tuple[list[LoadedScenario], list[list[str]]]:
    """The valid files, and for each file with problems its problem lines (sorted, without duplicates)."""
    loaded: list[LoadedScenario] = []
    problems: list[list[str]] = []
    for path in paths:
        file = _ScenarioFile(Path(path))
        result = file.load()
        if file.problems:
            problems.append(file.formatted_problems())
        elif result is not None:
            loaded.append(result)
    return loaded, problems


# -- one file -------------------------------------------------------------------------------------------


class _Abort(Exception):
    """Stop reading this file (its problem is already recorded)."""


class _ScenarioFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[tuple[Position | None, str]] = []
        self.positions: dict[DataPath, Position] = {}
        self.key_positions: dict[DataPath, Position] = {}
        self.files: dict[str, bytes] = {}

    # problems

    def problem(self, position: Position | None, message: str) -> None:
        self.problems.append((position, " ".join(message.split())))

    def formatted_problems(self) -> list[str]:
        unique = sorted(set(self.problems), key=lambda p: (p[0] or (0, 0), p[1]))
        return [
            f"{self.path}:{pos[0]}:{pos[1]}: {msg}" if pos else f"{self.path}: {msg}" for pos, msg in unique
        ]

    def value_position(self, path: DataPath) -> Position:
        while path and path not in self.positions:
            path = path[:-1]
        return self.positions.get(path, (1, 1))

    def key_position(self, path: DataPath) -> Position:
        """Where the key of ``path`` sits; for a list item (no key), where the item starts."""
        if path in self.key_positions:
            return self.key_positions[path]
        return self.value_position(path)

    # stages

    def load(self) -> LoadedScenario | None:
        text = self.read()
        if text is None:
            return None
        try:
            data = self.parse(text)
        except _Abort:
            return None
        if self.problems:
            return None
        scenario = self.validate(data)
        if scenario is None:
            return None
        _Semantics(self, data).check()
        if self.problems:
            return None
        return LoadedScenario(
            path=self.path,
            scenario=scenario,
            files=dict(self.files),
            positions=dict(self.positions),
            key_positions=dict(self.key_positions),
        )

    def read(self) -> str | None:
        try:
            if not self.path.exists():
                self.problem(None, "file not found")
                return None
            if self.path.is_dir():
                self.problem(None, "is a directory, not a scenario file")
                return None
            size = self.path.stat().st_size
            if size > MAX_FILE_BYTES:
                self.problem(None, f"file is too large ({size} bytes; the limit is {MAX_FILE_BYTES} bytes)")
                return None
            raw = self.path.read_bytes()
        except OSError as e:
            self.problem(None, f"cannot read the file: {e.strerror or e}")
            return None
        if len(raw) > MAX_FILE_BYTES:
            self.problem(None, f"file is too large (the limit is {MAX_FILE_BYTES} bytes)")
            return None
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            before = raw[: e.start]
            line = before.count(b"\n") + 1
            column = len(before) - (before.rfind(b"\n") + 1) + 1
            self.problem((line, column), "the file is not UTF-8 text (scenario files are UTF-8)")
            return None

    def parse(self, text: str) -> Any:
        if not text.strip():
            self.problem((1, 1), "empty scenario: expected a mapping with routes and/or operations")
            raise _Abort
        loader: type[yaml.SafeLoader | yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            node = yaml.compose(text, Loader=loader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            what = e.problem or e.context or "syntax error"
            context = f" ({e.context})" if e.context and e.problem else ""
            self.problem(where, f"invalid YAML: {what}{context}{_yaml_hint(text, e)}")
            raise _Abort from None
        except yaml.reader.ReaderError as e:
            # libyaml counts UTF-8 bytes, PyYAML characters
            where = _offset_position(text, e.position, in_bytes=loader is not yaml.SafeLoader)
            code = ord(e.character) if isinstance(e.character, str) and len(e.character) == 1 else e.character
            character = f" (#x{code:04x})" if isinstance(code, int) else ""
            self.problem(where, f"invalid YAML: {e.reason}{character}")
            raise _Abort from None
        except yaml.YAMLError as e:
            self.problem((1, 1), f"invalid YAML: {e}")
            raise _Abort from None
        except RecursionError:
            self.problem((1, 1), "invalid YAML: nested too deeply")
            raise _Abort from None
        if node is None:
            self.problem((1, 1), "empty scenario: expected a mapping with routes and/or operations")
            raise _Abort
        return _Converter(self).convert(node, (), 0)

    def validate(self, data: Any) -> Scenario | None:
        try:
            return Scenario.model_validate(data, by_alias=True, by_name=False)
        except ValidationError as e:
            for position, message in _explain(e, data, self):
                self.problem(position, message)
            if not self.problems:  # never swallow a failure, even one we cannot explain
                self.problem((1, 1), str(e))
            return None


def _yaml_hint(text: str, e: yaml.MarkedYAMLError) -> str:
    """What to do about a YAML syntax error that the parser's words do not explain ("" when unsure).

    Covers what people write wrong most: a ``{`` in an unquoted value of a flow mapping or list
    (``match: {path: /jobs/{id}}``), keys or list items that do not line up, and tabs. The tests pin
    the messages of both libyaml and pure PyYAML.
    """
    problem, context = e.problem or "", e.context or ""
    mark, start = e.problem_mark, e.context_mark
    lines = re.split("\r\n|[\r\n\x85\u2028\u2029]", text)  # YAML's line breaks (splitlines has more)
    line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
    at_mark = line[mark.column : mark.column + 1] if mark is not None else ""
    if "tab" in problem or "'\\t'" in problem or at_mark == "\t":
        return "; indent with spaces: YAML does not allow tabs in indentation"
    if context.startswith("while parsing a flow") and mark is not None:
        if at_mark in ("{", "["):
            key, value = _flow_value(line, mark.column)
            example = f"{key}: {_quoted(value)}" if key else _quoted(value)
            return (
                f"; a '{at_mark}' inside an unquoted value of {{...}} or [...] starts a new mapping or "
                f"list: quote the value, e.g. {example}, or write it in block style (one key per line)"
            )
        return ""
    if context in ("while parsing a block mapping", "while parsing a block collection") and mark and start:
        here, there = mark.column + 1, start.column + 1
        if "collection" in context and here == there:
            return (
                f"; line {mark.line + 1} starts in column {here} like the items of the list that begins "
                f"at line {start.line + 1}, but without '- ': start it with '- ' to make it an item, or "
                "indent it under the item it belongs to"
            )
        what = "keys of the mapping" if "mapping" in context else "items ('- ') of the list"
        return (
            f"; check the indentation: line {mark.line + 1} starts in column {here}, but the {what} that "
            f"begins at line {start.line + 1} start in column {there}: indent each line with spaces, "
            "exactly like the other keys or items of the mapping or list it belongs to"
        )
    if problem.startswith("mapping values are not allowed") and mark is not None:
        return (
            "; a ': ' starts a key here: if this line is a key of the mapping above, indent it like the "
            "other keys; if the value itself contains ': ', quote it"
        )
    return ""


def _flow_value(line: str, brace: int) -> tuple[str, str]:
    """The key and the whole unquoted value around the ``{`` at ``brace`` in a flow collection line."""
    begin = max(line.rfind(": ", 0, brace), line.rfind(", ", 0, brace), line.rfind("[", 0, brace))
    key = ""
    if begin >= 0 and line.startswith(": ", begin):
        head = line[:begin]
        key = re.split(r"[{,\[\s]", head)[-1]
    start = begin + (1 if line[begin] == "[" else 2) if begin >= 0 else 0
    depth, end = 0, len(line)
    for i in range(brace, len(line)):
        char = line[i]
        if char in "{[":
            depth += 1
        elif char in "}]":
            if depth == 0:
                end = i
                break
            depth -= 1
        elif char == "," and depth == 0:
            end = i
            break
    return key, line[start:end].strip()


def _mark(node: yaml.Node) -> Position:
    mark = node.start_mark
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _offset_position(text: str, offset: object, in_bytes: bool) -> Position:
    if not isinstance(offset, int) or offset < 0:
        return (1, 1)
    before = text.encode("utf-8")[:offset].decode("utf-8", "ignore") if in_bytes else text[:offset]
    offset = len(before)
    return (before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1)


# -- YAML nodes -> plain data ---------------------------------------------------------------------------

_Y = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_Y + t for t in ("str", "int", "float", "bool", "null", "timestamp", "merge", "value")}
_MERGE = _Y + "merge"


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_Y) :] if tag.startswith(_Y) else tag


class _Converter:
    """Nodes -> dicts, lists and scalars, recording positions; counts nodes so aliases cannot explode."""

    def __init__(self, file: _ScenarioFile) -> None:
        self.file = file
        self.count = 0
        self.open: set[int] = set()
        self.constructor = yaml.constructor.SafeConstructor()

    def convert(self, node: yaml.Node, path: DataPath, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            self.file.problem(
                _mark(node),
                f"the document is too big: more than {MAX_NODES} nodes once aliases are expanded "
                "(each use of an alias counts everything it refers to)",
            )
            raise _Abort
        if depth > MAX_DEPTH:
            self.file.problem(_mark(node), f"nested more than {MAX_DEPTH} levels deep")
            raise _Abort
        self.file.positions[path] = _mark(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if id(node) in self.open:
            self.file.problem(
                _mark(node), "an alias refers to a node that contains it (a recursive structure)"
            )
            raise _Abort
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _Y + "seq":
                    self.refuse_tag(node)
                    return None
                return [self.convert(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                if node.tag != _Y + "map":
                    self.refuse_tag(node)
                    return None
                return self.mapping(node, path, depth)
        finally:
            self.open.discard(id(node))
        self.file.problem(_mark(node), "unexpected YAML node")  # pragma: no cover - compose makes only these
        return None

    def refuse_tag(self, node: yaml.Node) -> None:
        self.file.problem(
            _mark(node),
            f"tags are not allowed ({_short_tag(node.tag)}): a scenario is plain YAML "
            "(mappings, lists, text, numbers, true/false, null)",
        )

    def scalar(self, node: yaml.ScalarNode) -> Any:
        tag = node.tag
        if tag not in _SCALAR_TAGS:
            self.refuse_tag(node)
            return None
        try:
            if tag == _Y + "int":
                return self.constructor.construct_yaml_int(node)
            if tag == _Y + "float":
                return self.constructor.construct_yaml_float(node)
            if tag == _Y + "bool":
                return self.constructor.construct_yaml_bool(node)
        except (ValueError, KeyError, TypeError, OverflowError):
            self.file.problem(_mark(node), f"{_clip(node.value)} is not a valid {_short_tag(tag)}")
            return None
        if tag == _Y + "null":
            return None
        # str, and timestamps kept as the text written (a date is text to HTTP), merge/value indicators.
        return str(node.value)

    def key(self, node: yaml.Node) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.file.problem(_mark(node), "a key must be a text, not a list or a mapping")
            return None
        value = self.scalar(node)
        if value is None and node.tag not in (_Y + "null",):
            return None  # problem already recorded
        if not isinstance(value, str):
            kind = {bool: "true/false", type(None): "null", int: "a number", float: "a number"}.get(
                type(value), "not a text"
            )
            self.file.problem(
                _mark(node),
                f"key {_clip(node.value)} is read as {kind}, not a text: "
                f"quote it, e.g. {_quoted(node.value)}:",
            )
            return None
        return value

    def mapping(self, node: yaml.MappingNode, path: DataPath, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        # Merges first: they record the merged mappings' positions under this path, and the keys written
        # here then overwrite them (explicit keys win, as in YAML's merge-key rule).
        for key_node, value_node in node.value:
            if _is_merge_key(key_node):
                for merged_key, value in self.merge(value_node, path, depth).items():
                    result.setdefault(merged_key, value)
        first: dict[str, Position] = {}
        for key_node, value_node in node.value:
            if _is_merge_key(key_node):
                continue
            key = self.key(key_node)
            if key is None:
                continue
            if key in first:
                line, column = first[key]
                self.file.problem(
                    _mark(key_node),
                    f"duplicate key {_clip(key)} (first given at line {line}, column {column})",
                )
                continue
            first[key] = _mark(key_node)
            self.file.key_positions[(*path, key)] = _mark(key_node)
            result[key] = self.convert(value_node, (*path, key), depth + 1)
        self.file.positions[path] = _mark(node)
        return result

    def merge(self, node: yaml.Node, path: DataPath, depth: int) -> dict[str, Any]:
        """``<<: *base`` or ``<<: [*a, *b]``: the keys of the mappings (earlier ones win)."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                self.file.problem(_mark(source), "'<<' merges mappings only (e.g. <<: *defaults)")
                continue
            value = self.convert(source, path, depth)
            if isinstance(value, dict):
                for k, v in value.items():
                    merged.setdefault(k, v)
        return merged


def _is_merge_key(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _MERGE and node.value == "<<"


def _quoted(text: str) -> str:
    return _cut("'" + text.replace("'", "''") + "'")


def _clip(value: object) -> str:
    """A short one-line rendering of a value the author wrote (repr: texts show quoted)."""
    return _cut(repr(value))


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- pydantic errors -> one line each -------------------------------------------------------------------

_MISMATCH = {
    "int_from_float",
    "literal_error",
    "model_attributes_type",
    "none_required",
    "is_instance_of",
    "union_tag_invalid",
}
"""Error types meaning "this value has the wrong type" (besides every ``*_type`` and ``*_parsing``)."""


def _is_mismatch(kind: str) -> bool:
    return kind.endswith("_type") or kind.endswith("_parsing") or kind in _MISMATCH


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional (a union with None and one other type)."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        branches = _branches(tp)
        if branches is not None and len(branches) == 1:
            tp = branches[0]
            continue
        return tp


def _branches(tp: Any) -> list[Any] | None:
    """The non-None members of a union, or None when ``tp`` is not a union."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return None


def _is_model(tp: Any) -> bool:
    return inspect.isclass(tp) and issubclass(tp, BaseModel)


def _aliases(model: type[BaseModel]) -> dict[str, str]:
    """Key as written in YAML -> field name."""
    return {(info.alias or name): name for name, info in model.model_fields.items()}


def _required(model: type[BaseModel]) -> list[str]:
    return [(info.alias or name) for name, info in model.model_fields.items() if info.is_required()]


def _pick(branches: list[Any], tag: str) -> Any:
    """The branch of a union that pydantic's loc tag (``str``, ``Condition``, ``list[str]``...) names."""
    for branch in branches:
        b = _unwrap(branch)
        if _is_model(b) and re.search(rf"\b{re.escape(b.__name__)}\b", tag):
            return branch
    for prefix in ("list[", "dict[", "union[", "literal["):
        if tag.startswith(prefix):
            for branch in branches:
                if _kind_of(_unwrap(branch)) == prefix:
                    return branch
    for branch in branches:
        b = _unwrap(branch)
        if inspect.isclass(b) and b.__name__ == tag:
            return branch
    return Any


def _kind_of(tp: Any) -> str:
    """The prefix of pydantic's loc tag for a list, dict, union or literal type ('' for anything else)."""
    origin = typing.get_origin(tp)
    if origin is list or tp is list:
        return "list["
    if origin is dict or tp is dict:
        return "dict["
    if _branches(tp) is not None:
        return "union["
    if origin is Literal:
        return "literal["
    return ""


@dataclass
class _Located:
    """A pydantic error placed in the data: its path without union tags, and the unions it went through."""

    error: Mapping[str, Any]
    path: DataPath
    points: list[tuple[DataPath, int]]  # (data path, how many unions already at that path)
    context: Any  # the type in which the last element of ``loc`` was looked up (the model, for keys)
    final: Any  # the type at the end of ``loc``

    @property
    def kind(self) -> str:
        return str(self.error["type"])

    def shallow_at(self, point: tuple[DataPath, int]) -> bool:
        """A wrong-type error of the union at ``point`` itself (not of something inside one branch)."""
        return point in self.points and self.path == point[0] and _is_mismatch(self.kind)


def _locate(error: Mapping[str, Any], union_types: dict[tuple[DataPath, int], Any]) -> _Located:
    tp: Any = Scenario
    path: DataPath = ()
    points: list[tuple[DataPath, int]] = []
    context: Any = None
    for element in error["loc"]:
        tp = _unwrap(tp)
        branches = _branches(tp)
        if branches is not None:
            point = (path, sum(1 for p in points if p[0] == path))
            points.append(point)
            union_types.setdefault(point, tp)
            tp = _pick(branches, str(element))
            continue
        context = tp
        if _is_model(tp):
            name = _aliases(tp).get(str(element))
            tp = tp.model_fields[name].annotation if name else Any
        elif typing.get_origin(tp) in (list, dict):
            args = typing.get_args(tp)
            tp = args[-1] if args else Any
        else:
            tp = Any
        path = (*path, element)
    return _Located(error, path, points, context, tp)


def _explain(e: ValidationError, data: Any, file: _ScenarioFile) -> list[tuple[Position, str]]:
    union_types: dict[tuple[DataPath, int], Any] = {}
    located = [_locate(err, union_types) for err in e.errors(include_url=False)]
    dropped: set[int] = set()
    for point in union_types:
        related = [i for i, loc in enumerate(located) if point in loc.points]
        # One branch got further than "wrong type" (an unknown key, a bad value inside the mapping...):
        # that branch is what the author meant; the other branches' type errors are noise.
        if any(not located[i].shallow_at(point) for i in related):
            dropped.update(i for i in related if located[i].shallow_at(point))
    out: list[tuple[Position, str]] = []
    merged: set[tuple[DataPath, int]] = set()
    for i, loc in enumerate(located):
        if i in dropped:
            continue
        shallow = [p for p in loc.points if loc.shallow_at(p)]
        if shallow:
            point = shallow[0]
            if point not in merged:
                merged.add(point)
                value = _value_at(data, loc.path)
                out.append(
                    (
                        file.value_position(loc.path),
                        f"{_subject(loc.path)}: expected {_describe(union_types[point])}; got {_got(value)}",
                    )
                )
            continue
        out.append(_message(loc, data, file))
    return out


def _value_at(data: Any, path: DataPath) -> Any:
    for element in path:
        if isinstance(data, dict) and element in data:
            data = data[element]
            continue
        if isinstance(data, list) and isinstance(element, int) and 0 <= element < len(data):
            data = data[element]
            continue
        return None
    return data


def _message(loc: _Located, data: Any, file: _ScenarioFile) -> tuple[Position, str]:
    kind = loc.kind
    path = loc.path
    err = loc.error
    ctx = err.get("ctx") or {}
    value = err.get("input")
    model = _unwrap(loc.context)
    if kind == "extra_forbidden" and path and _is_model(model):
        key = str(path[-1])
        allowed = list(_aliases(model))
        message = f"unknown key {_clip(key)} in {_where(model, path[:-1])}; allowed: {', '.join(allowed)}"
        return file.key_position(path), message + _did_you_mean(key, allowed)
    if kind == "missing" and path and _is_model(model):
        key = str(path[-1])
        required = _required(model)
        return (
            file.key_position(path[:-1]),
            f"missing key {_clip(key)} in {_where(model, path[:-1])}; required: {', '.join(required)}",
        )
    final = _unwrap(loc.final)
    if kind in ("value_error", "assertion_error"):
        text = re.sub(r"^(Value error|Assertion failed), ", "", str(err.get("msg", "")))
        if _is_model(final):
            return file.value_position(path), f"{_where(final, path)}: {text}"
        return file.value_position(path), f"{_subject(path)}: {text}; got {_got(value)}"
    if kind == "model_type" and not path:
        return (
            file.value_position(path),
            f"a scenario file is a mapping with keys such as name, routes, operations; got {_got(value)}",
        )
    if kind == "literal_error" and typing.get_origin(final) is Literal:
        choices = [str(c) for c in typing.get_args(final)]
        message = f"{_subject(path)}: expected one of {', '.join(choices)}; got {_got(value)}"
        if isinstance(value, str):
            message += _did_you_mean(value, choices)
        return file.value_position(path), message
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        message = f"{_subject(path)}: must be {words} {ctx.get(key)}; got {_got(value)}"
        return file.value_position(path), message
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return (
            file.value_position(path),
            f"{_subject(path)}: needs at least {n} item{'s' if n != 1 else ''}; got {_got(value)}",
        )
    if _is_mismatch(kind) and model is PollStep and path[-1:] == ("status",) and type(value) is int:
        return (
            file.value_position(path),
            f"status: an operation step's status is the operation's state in the body (NotStarted, "
            f"Running, Succeeded, Failed...), not an HTTP code (got {value}): for the HTTP status code of "
            f"the poll's answer write http-status: {value} next to a status such as Running",
        )
    if _is_mismatch(kind):
        message = f"{_subject(path)}: expected {_describe(loc.final)}; got {_got(value)}"
        if final is str and isinstance(value, int | float) and path in file.positions:
            message += " (quote it to make it a text)"
        return file.value_position(path), message
    return file.value_position(path), f"{_subject(path)}: {err.get('msg', kind)}"


_MODEL_LABELS: dict[type[BaseModel], str] = {
    Scenario: "the scenario",
    Route: "route",
    Operation: "operation",
    Step: "sequence step",
    PollStep: "operation step",
    Condition: "condition",
    RetryAfterSpec: "retry-after",
    DelaySpec: "delay",
    OperationError: "error",
}


def _where(model: Any, path: DataPath) -> str:
    label = _MODEL_LABELS.get(model)
    if label is not None:
        return label
    named = [p for p in path if isinstance(p, str)]
    if model in (Match, ResponseSpec) and named:
        return named[-1]
    return _subject(path)


def _subject(path: DataPath) -> str:
    if not path:
        return "the scenario"
    last = path[-1]
    if isinstance(last, int):
        parent = path[-2] if len(path) > 1 else "list"
        return f"{parent} item {last + 1}"
    return str(last)


def _got(value: Any) -> str:
    if value is None:
        return "null (nothing)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return _clip(value)


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    lowered = {c.lower().replace("_", "-"): c for c in choices}
    close = difflib.get_close_matches(word.lower().replace("_", "-"), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


def _describe(tp: Any) -> str:
    """What a type accepts, in words: 'a value, null (absent), or a mapping with present/equals/...'."""
    flat: list[Any] = []
    has_none = False

    def collect(t: Any) -> None:
        nonlocal has_none
        while typing.get_origin(t) is typing.Annotated:
            t = typing.get_args(t)[0]
        if typing.get_origin(t) in (Union, types.UnionType):
            for a in typing.get_args(t):
                collect(a)
        elif t is type(None):
            has_none = True
        else:
            flat.append(t)

    collect(tp)
    scalars = {t for t in flat if t in (str, int, float, bool)}
    words: list[str] = []
    shapes: list[str] = []  # mappings and lists come after the scalars and null
    for t in flat:
        if t in (str, int, float, bool):
            if scalars >= {str, int, float, bool}:
                word = "a value"
            elif t in (int, float) and {int, float} <= scalars:
                word = "a number"
            else:
                word = {str: "a text", int: "an integer", float: "a number", bool: "true or false"}[t]
            if word not in words:
                words.append(word)
            continue
        if _is_model(t):
            keys = list(_aliases(t))
            word = f"a mapping with {'/'.join(keys)}" if len(keys) <= 6 else "a mapping"
        elif typing.get_origin(t) is list or t is list:
            args = typing.get_args(t)
            word = "a list of texts" if args and args[0] is str else "a list"
        elif typing.get_origin(t) is dict or t is dict:
            word = "a mapping"
        elif typing.get_origin(t) is Literal:
            word = "one of " + ", ".join(str(a) for a in typing.get_args(t))
        else:
            word = "any value"
        if word not in shapes:
            shapes.append(word)
    if has_none:
        words.append("null (absent)" if Condition in flat else "null")
    words += shapes
    if not words:
        return "any value"
    if len(words) == 1:
        return words[0]
    if len(words) == 2:
        return f"{words[0]} or {words[1]}"
    return ", ".join(words[:-1]) + f", or {words[-1]}"


def _refused_in_template(tree: jinja2.nodes.Template) -> str | None:
    """What the sandbox would refuse when rendering, found before serving: other templates, private
    attributes (``''.__class__``)."""
    import jinja2.nodes

    n = jinja2.nodes
    for node in tree.find_all((n.Extends, n.Include, n.Import, n.FromImport)):
        what = "import" if isinstance(node, n.FromImport) else type(node).__name__.lower()
        return f"templates cannot use other templates ({what})"
    for getattr_node in tree.find_all(jinja2.nodes.Getattr):
        if getattr_node.attr.startswith("_"):
            return f"templates cannot read private attributes ({getattr_node.attr!r})"
    names = [getitem.arg for getitem in tree.find_all(n.Getitem)]  # request['__class__']
    names += [f.args[0] for f in tree.find_all(n.Filter) if f.name == "attr" and f.args]  # request|attr('_x')
    for name in names:
        if isinstance(name, n.Const) and isinstance(name.value, str) and name.value.startswith("_"):
            return f"templates cannot read private attributes ({name.value!r})"
    return None


# -- checks beyond the schema ---------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")


class _Semantics:
    """What the schema cannot say: files, templates, durations, path templates. Walks the raw data, whose
    keys are the aliases (validation passed, so every shape is as the schema says)."""

    def __init__(self, file: _ScenarioFile, data: dict[str, Any]) -> None:
        self.file = file
        self.data = data
        self._env: ImmutableSandboxedEnvironment | None = None
        self.folder = file.path.parent.resolve()

    def problem(self, path: DataPath, message: str) -> None:
        self.file.problem(self.file.value_position(path), message)

    def check(self) -> None:
        for i, route in enumerate(self.data.get("routes") or []):
            at: DataPath = ("routes", i)
            self.match(route["match"], (*at, "match"))
            if route.get("respond") is not None:
                self.response(route["respond"], (*at, "respond"))
            for j, step in enumerate(route.get("sequence") or []):
                self.response(step, (*at, "sequence", j))
        for i, op in enumerate(self.data.get("operations") or []):
            at = ("operations", i)
            self.match(op["start"], (*at, "start"))
            for key in ("status-path", "resource-path"):
                if isinstance(op.get(key), str):
                    self.path_template(op[key], (*at, key))
            names = op.get("header")
            for j, name in enumerate(names if isinstance(names, list) else [names]):
                if isinstance(name, str) and name.strip().lower() != "none":  # the status URL's header(s)
                    self.header_field(
                        name, "", (*at, "header", j) if isinstance(names, list) else (*at, "header")
                    )
            for key in ("accepted", "resource"):
                if op.get(key) is not None:
                    self.response(op[key], (*at, key))
            self.retry_after(op.get("retry-after"), (*at, "retry-after"))
            for j, step in enumerate(op["steps"]):
                self.poll_step(step, (*at, "steps", j))
            cancel = op.get("cancel")
            if isinstance(cancel, dict):
                if isinstance(cancel.get("path"), str):
                    self.path_template(cancel["path"], (*at, "cancel", "path"))
                if cancel.get("respond") is not None:
                    self.response(cancel["respond"], (*at, "cancel", "respond"))

    def match(self, match: dict[str, Any], at: DataPath) -> None:
        if isinstance(match.get("path"), str):
            self.path_template(match["path"], (*at, "path"))

    def poll_step(self, step: dict[str, Any], at: DataPath) -> None:
        self.header_fields(step.get("headers"), (*at, "headers"))
        self.templates(step.get("headers"), (*at, "headers"))
        self.templates(step.get("json"), (*at, "json"))
        self.duration(step.get("for"), (*at, "for"))
        self.retry_after(step.get("retry-after"), (*at, "retry-after"))
        if step.get("respond") is not None:
            self.response(step["respond"], (*at, "respond"))

    def response(self, spec: dict[str, Any], at: DataPath) -> None:
        self.header_fields(spec.get("headers"), (*at, "headers"))
        if isinstance(spec.get("content-type"), str):
            self.header_field("Content-Type", spec["content-type"], (*at, "content-type"))
        self.templates(spec.get("headers"), (*at, "headers"))
        self.templates(spec.get("json"), (*at, "json"))
        self.templates(spec.get("text"), (*at, "text"))
        if isinstance(spec.get("file"), str):
            self.body_file(spec["file"], (*at, "file"))
        delay = spec.get("delay")
        if isinstance(delay, dict):
            low = self.duration(delay.get("min", 0), (*at, "delay", "min"))
            high = self.duration(delay.get("max"), (*at, "delay", "max"))
            if low is not None and high is not None and low > high:
                self.problem((*at, "delay"), f"delay: min ({low:g}s) is more than max ({high:g}s)")
        else:
            self.duration(delay, (*at, "delay"))
        self.duration(spec.get("dribble"), (*at, "dribble"))
        self.retry_after(spec.get("retry-after"), (*at, "retry-after"))

    def duration(self, value: Any, at: DataPath) -> float | None:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except (ValueError, TypeError) as e:
            self.problem(at, f"{_subject(at)}: {e}")
            return None

    def header_fields(self, headers: Any, at: DataPath) -> None:
        """Header names that are not HTTP field names, literal values with CR/LF: refused (templates are
        checked again when rendered)."""
        if isinstance(headers, dict):
            for name, value in headers.items():
                self.header_field(name, value, (*at, name))

    def header_field(self, name: Any, value: Any, at: DataPath) -> None:
        if not isinstance(name, str):
            return
        text = value if isinstance(value, str) and "{{" not in value and "{%" not in value else ""
        problem = header_problem(name, text)
        if problem is not None:
            self.problem(at, problem)

    def retry_after(self, value: Any, at: DataPath) -> None:
        if isinstance(value, str):
            self.header_field("Retry-After", value, at)
        if isinstance(value, dict) and isinstance(value.get("raw"), str):
            self.header_field("Retry-After", value["raw"], (*at, "raw"))
        if isinstance(value, dict):
            self.duration(value.get("date"), (*at, "date"))
        elif isinstance(value, bool):
            self.problem(
                at,
                "retry-after: expected seconds (e.g. 1 or 0.5), a text, a mapping or null; "
                f"got {_got(value)}",
            )
        elif isinstance(value, int | float) and (not math.isfinite(value) or value < 0):
            self.problem(
                at,
                f"retry-after: must be zero or more seconds; got {value!r} "
                "(to send any text, use {raw: '...'})",
            )

    def templates(self, value: Any, at: DataPath) -> None:
        if isinstance(value, str):
            if "{{" in value or "{%" in value:
                self.template(value, at)
        elif isinstance(value, dict):
            for key, item in value.items():
                self.templates(item, (*at, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.templates(item, (*at, i))

    def template(self, text: str, at: DataPath) -> None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        if self._env is None:
            self._env = ImmutableSandboxedEnvironment()
        try:
            tree = self._env.parse(text)
        except jinja2.TemplateSyntaxError as e:
            line = f" (line {e.lineno} of the template)" if "\n" in text.strip() else ""
            self.problem(at, f"{_subject(at)}: template error: {e.message}{line}")
            return
        except jinja2.TemplateError as e:
            self.problem(at, f"{_subject(at)}: template error: {e}")
            return
        except RecursionError:
            self.problem(at, f"{_subject(at)}: template error: nested too deeply")
            return
        refused = _refused_in_template(tree)
        if refused:
            self.problem(at, f"{_subject(at)}: template error: {refused}")

    def path_template(self, path: str, at: DataPath) -> None:
        if reason_problem(path) is not None:  # a status URL goes into a Location header
            self.problem(at, f"{_subject(at)}: {_clip(path)} has a CR, LF or control character")
            return
        seen: set[str] = set()
        i = 0
        while i < len(path):
            char = path[i]
            if char == "}":
                self.problem(at, f"{_subject(at)}: '}}' without '{{' in {_clip(path)}")
                return
            if char != "{":
                i += 1
                continue
            end = path.find("}", i + 1)
            nested = path.find("{", i + 1)
            if end < 0 or 0 <= nested < end:
                self.problem(at, f"{_subject(at)}: '{{' without '}}' in {_clip(path)}")
                return
            name = path[i + 1 : end]
            if not _PLACEHOLDER.fullmatch(name):
                self.problem(
                    at,
                    f"{_subject(at)}: {_cut('{' + name + '}')} is not a placeholder: "
                    "use {name} for one segment or {name*} for the rest of the path",
                )
            elif name.rstrip("*") in seen:
                self.problem(at, f"{_subject(at)}: placeholder {{{name.rstrip('*')}}} appears twice")
            else:
                seen.add(name.rstrip("*"))
            if path.startswith("{", end + 1):
                self.problem(
                    at,
                    f"{_subject(at)}: placeholders {_cut('{' + name + '}')} and the next one touch, so "
                    "nothing says where one ends: put a literal between them (such as '/' or '-')",
                )
                return
            i = end + 1

    def body_file(self, name: str, at: DataPath) -> None:
        if name in self.file.files:
            return
        try:
            target = (self.folder / name).resolve()
        except (OSError, RuntimeError, ValueError) as e:  # symlink loops, NUL bytes
            self.problem(at, f"file {_clip(name)} cannot be resolved: {e}")
            return
        if not target.is_relative_to(self.folder):
            self.problem(
                at,
                f"file {_clip(name)} is outside the scenario's folder {self.folder}: "
                "put body files in that folder (or below it) and name them relative to it",
            )
            return
        try:
            if not target.exists():
                self.problem(at, f"file {_clip(name)} not found (looked for {target})")
                return
            if not target.is_file():
                self.problem(at, f"file {_clip(name)} is not a regular file ({target})")
                return
            size = target.stat().st_size
            if size > MAX_BODY_FILE_BYTES:
                self.problem(
                    at, f"file {_clip(name)} is too large ({size} bytes; the limit is {MAX_BODY_FILE_BYTES})"
                )
                return
            self.file.files[name] = target.read_bytes()
        except OSError as e:
            self.problem(at, f"file {_clip(name)} cannot be read: {e.strerror or e}")
