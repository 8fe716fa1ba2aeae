"""Safe YAML loading several times faster than ``yaml.load``, with exactly its results.

PyYAML's C loader parses in C, but composes a node per scalar (two marks, a call to the Python resolver)
and then constructs the objects from the nodes in Python: a 10,000-interaction cassette is 580,000 nodes
held at once (~250 MB) and, with the cyclic collector walking the growing heap again and again, several
seconds. ``load`` drives the same C parser and builds the objects straight from its events, one event at
a time, with the loader's own resolver and constructors for anything but plain text, and the collector
paused. What it does not build itself (merge keys, Python tags other than ``!!python/str``, mapping keys
that are not scalars, anything PyYAML would refuse) it leaves to ``yaml.load`` by raising ``Unusual``,
so results and error messages stay PyYAML's. Aliases stay shared objects, as with ``yaml.load``.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

_YAML = "tag:yaml.org,2002:"
_STR, _SEQ, _MAP = _YAML + "str", _YAML + "seq", _YAML + "map"
_SCALAR_TAGS = frozenset(
    _YAML + name
    for name in ("str", "null", "bool", "int", "float", "binary", "timestamp", "python/str", "python/unicode")
)
"""Tags of the scalars built here, each with the loader's own constructor (any other tag is ``Unusual``)."""


class Unusual(Exception):
    """The document needs PyYAML's own constructor: ``yaml.load`` it (it also says what is wrong)."""


@contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: building a million containers otherwise triggers collections
    that walk all of them again and again (about half of the time of a large load). Reference counting
    still frees everything; a cycle made meanwhile is collected later."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Scalars:
    """A loader's scalar resolution and construction. Text that no implicit resolver can claim (most of a
    cassette) never gets here: ``_fill`` takes it as it is, as ``construct_yaml_str`` does."""

    _CACHED = 4096
    """Plain scalars that a resolver claimed (``200``, ``null``, ``OK``), remembered with their values."""

    def __init__(self, loader: Any) -> None:
        constructors = loader.yaml_constructors
        if (
            loader.yaml_path_resolvers
            or None in loader.yaml_implicit_resolvers
            or constructors.get(_STR) is not SafeConstructor.construct_yaml_str
            or constructors.get(_SEQ) is not SafeConstructor.construct_yaml_seq
            or constructors.get(_MAP) is not SafeConstructor.construct_yaml_map
            or loader.resolve(SequenceNode, None, True) != _SEQ
            or loader.resolve(MappingNode, None, True) != _MAP
        ):
            raise Unusual("a loader that resolves or constructs differently")
        self.loader = loader
        self.first = frozenset(loader.yaml_implicit_resolvers)
        """First characters of the plain scalars that an implicit resolver may claim."""
        self.constructors: dict[str, Any] = {t: f for t, f in constructors.items() if t in _SCALAR_TAGS}
        self.plain: dict[str, Any] = {}

    def value(self, event: Any, anchors: dict[str, Any]) -> Any:
        """What the loader constructs for a scalar event (``Unusual`` for a tag not handled here),
        registered under its anchor."""
        tag = event.tag
        if tag is not None and tag != "!":
            value = self._construct(tag, event)
        elif not event.implicit[0]:
            value = event.value  # quoted: resolve() answers str
        else:
            value = self.plain.get(event.value, _NONE)
            if value is _NONE:  # resolve() as the composer calls it, then construct: immutable values
                value = self._construct(self.loader.resolve(ScalarNode, event.value, event.implicit), event)
                if len(self.plain) < self._CACHED:
                    self.plain[event.value] = value
        if event.anchor is not None:
            _anchor(anchors, event.anchor, value)
        return value

    def _construct(self, tag: str, event: Any) -> Any:
        if tag == _STR:
            return event.value
        construct = self.constructors.get(tag)
        if construct is None:
            raise Unusual(tag)
        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            return construct(self.loader, node)
        except Exception as e:  # e.g. bad base64: PyYAML's own load reports it, after any parse error
            raise Unusual(tag) from e


def load(stream: IO[str] | IO[bytes] | str | bytes, loader_class: Any) -> Any:
    """``yaml.load(stream, Loader=loader_class)`` for a document this module builds itself.

    Raises ``Unusual`` (``stream`` partly read) when PyYAML's constructor must do it, and the parser's
    ``yaml.YAMLError`` as ``yaml.load`` would. Aliases share one object, as with ``yaml.load``: a
    document of nested aliases stays small here; whoever walks it must bound the expansion.
    """
    loader = loader_class(stream)
    try:
        with no_gc():
            return _build(loader, _Scalars(loader))
    finally:
        loader.dispose()


def _build(loader: Any, scalars: _Scalars) -> Any:
    get_event = loader.get_event
    if get_event().__class__ is not StreamStartEvent:
        raise Unusual("no stream start")
    event = get_event()
    if event.__class__ is StreamEndEvent:
        return None
    if event.__class__ is not DocumentStartEvent:
        raise Unusual("no document start")
    anchors: dict[str, Any] = {}
    event = get_event()
    if event.__class__ is ScalarEvent:
        root = scalars.value(event, anchors)
    elif event.__class__ is MappingStartEvent or event.__class__ is SequenceStartEvent:
        root = _collection(event, anchors)
        _fill(get_event, root, anchors, scalars)
    else:
        raise Unusual(event.__class__.__name__)  # an alias to nothing yet
    if get_event().__class__ is not DocumentEndEvent or get_event().__class__ is not StreamEndEvent:
        raise Unusual("more than one document")
    return root


def _fill(get_event: Callable[[], Any], root: Any, anchors: dict[str, Any], scalars: _Scalars) -> None:
    """Read the events of the collection ``root`` (whose start was read) into it, to its end."""
    first, scalar = scalars.first, scalars.value
    # The innermost open collection; for a mapping, the key waiting for its value (or _NO_KEY). The
    # collections around it wait on ``stack``.
    container: Any = root
    in_list = container.__class__ is list
    key: Any = _NO_KEY
    stack: list[tuple[Any, bool, Any]] = []
    value: Any
    while True:
        event = get_event()
        cls = event.__class__
        if cls is ScalarEvent:
            value = event.value
            if (
                event.tag is not None
                or event.anchor is not None
                or not ((value and value[0] not in first) or not event.implicit[0])
            ):
                value = scalar(event, anchors)
            # else text that resolve() answers str without trying a regex, constructed as itself
        elif cls is MappingEndEvent or cls is SequenceEndEvent:
            if not stack:
                return
            container, in_list, key = stack.pop()
            continue
        elif cls is MappingStartEvent or cls is SequenceStartEvent:
            value = _collection(event, anchors)
            if in_list:
                container.append(value)
            elif key is _NO_KEY:
                raise Unusual("a mapping key that is not a scalar")
            else:
                container[key] = value
            stack.append((container, in_list, _NO_KEY))
            container, in_list, key = value, cls is SequenceStartEvent, _NO_KEY
            continue
        elif cls is AliasEvent:
            value = anchors.get(event.anchor, _NO_KEY)
            if value is _NO_KEY:
                raise Unusual("undefined alias")
            if not in_list and key is _NO_KEY and (value.__class__ is dict or value.__class__ is list):
                raise Unusual("a mapping key that is not a scalar")
        else:
            raise Unusual(cls.__name__)
        if in_list:
            container.append(value)
        elif key is _NO_KEY:
            key = value
        else:
            container[key] = value
            key = _NO_KEY


def _collection(event: Any, anchors: dict[str, Any]) -> Any:
    """The empty list or dict a collection start event opens (registered under its anchor)."""
    cls, tag = event.__class__, event.tag
    if cls is MappingStartEvent and (tag is None or tag == "!" or tag == _MAP):
        value: Any = {}
    elif cls is SequenceStartEvent and (tag is None or tag == "!" or tag == _SEQ):
        value = []
    else:
        raise Unusual(f"{cls.__name__} {tag}")
    if event.anchor is not None:
        _anchor(anchors, event.anchor, value)
    return value


def _anchor(anchors: dict[str, Any], name: str, value: Any) -> None:
    if name in anchors:
        raise Unusual("duplicate anchor")  # PyYAML's composer refuses it
    anchors[name] = value


_NO_KEY: Any = object()
_NONE: Any = object()
