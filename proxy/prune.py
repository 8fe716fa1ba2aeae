"""``replay-proxy prune CASSETTE --journal FILE...``: drop the interactions no journal line played.

The journals (``--journal FILE`` of ``play``/``replay``/``record``, ``--replay-journal`` of the pytest
plugin) name the cassette and the 0-based index of every interaction that answered. Whatever none of them
played is dropped; the rest of the file stays byte-identical when it is in the layout vcrpy (or the
proxy) writes, YAML or JSON, and is rewritten in vcrpy's layout otherwise. The result is checked with
vcrpy's own loader before it replaces the file (atomically). A journal that does not match the cassette
(it was re-recorded since, or the journal is of another run) makes prune refuse, changing nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy import cassette as cassettes
from proxy.errors import CassetteError, ConfigError
from proxy.journal import read_journal
from proxy.unused import block_items, interaction_lines, json_items, shown_path


@dataclass(frozen=True)
class Plays:
    """What the journals say about one cassette: the indices played, and how many interactions each
    run that loaded it found (``file:line`` of the journal line -> count)."""

    played: frozenset[int]
    loads: dict[str, int]
    methods: dict[int, tuple[str, str]]
    """index -> (method the journal line names, where that line is), to check against the file."""


def names_cassette(named: str, cassette: Path) -> bool:
    """Whether a journal's cassette path ``named`` is ``cassette``: the same file, or (a journal from
    another machine, CI's checkout) a path that ends with ``cassette`` as given here."""
    given = Path(cassette)
    if given.is_absolute():
        with contextlib.suppress(ValueError):
            given = given.resolve().relative_to(Path.cwd().resolve())
    parts = Path(named).parts
    return len(parts) >= len(given.parts) and parts[len(parts) - len(given.parts) :] == given.parts


def plays_of(cassette: Path, journals: Sequence[Path]) -> Plays:
    """Collect what ``journals`` say about ``cassette``: exact path matches if any, else suffix matches."""
    exact: list[tuple[str, dict[str, Any]]] = []
    loose: list[tuple[str, dict[str, Any]]] = []
    target = cassette.resolve()
    for journal in journals:
        for number, entry in enumerate(read_journal(journal), 1):
            named = entry.get("cassette")
            if not isinstance(named, str):
                continue
            where = f"{journal}:{number}"
            if Path(named).resolve() == target:
                exact.append((where, entry))
            elif names_cassette(named, cassette):
                loose.append((where, entry))
    played: set[int] = set()
    loads: dict[str, int] = {}
    methods: dict[int, tuple[str, str]] = {}
    for where, entry in exact or loose:
        if entry.get("event") == "load" and isinstance(entry.get("interactions"), int):
            loads[where] = entry["interactions"]
        index = entry.get("interaction")
        if entry.get("event", "exchange") == "exchange" and isinstance(index, int):
            played.add(index)
            methods.setdefault(index, (str(entry.get("method", "")), where))
    return Plays(frozenset(played), loads, methods)


def prune_main(cassette: Path, journals: Sequence[Path], dry_run: bool) -> int:
    """Drop (or with ``dry_run`` list) the interactions of ``cassette`` that no journal line played."""
    from proxy.cli import EXIT_OK

    if cassettes.recording_marker(cassette).exists():
        raise ConfigError(f"{cassette}: a proxy is recording into it (or was killed doing so): not pruned")
    interactions = cassettes.load(cassette)
    total = len(interactions)
    plays = plays_of(cassette, journals)
    if not plays.loads and not plays.played:
        raise ConfigError(
            f"{cassette}: no line of {', '.join(map(str, journals))} names this cassette, so nothing says "
            "what was played: nothing pruned (give the journal of a run that replayed it)"
        )
    for where, count in plays.loads.items():
        if count != total:
            raise ConfigError(
                f"{cassette}: it has {total} interactions, but the run of {where} loaded {count}: the "
                "cassette changed since; nothing pruned (prune with a journal of a run on this version)"
            )
    for index, (method, where) in sorted(plays.methods.items()):
        if index >= total or interactions[index].request.method.upper() != method.upper():
            raise ConfigError(
                f"{cassette}: {where} played interaction #{index + 1} with {method}, which the file "
                "does not hold: the cassette changed since; nothing pruned"
            )
    drop = [i for i in range(total) if i not in plays.played]
    path = shown_path(os.path.abspath(cassette))
    if not drop:
        print(f"{path}: all {total} interactions were played: nothing to prune", flush=True)
        return EXIT_OK
    lines = interaction_lines(cassette, total)
    for i in drop:
        where = f"{path}:{lines[i]}" if lines is not None else path
        request = interactions[i].request
        print(f"{where}: #{i + 1} {request.method} {request.url}: never played", flush=True)
    verb = "would drop" if dry_run else "dropped"
    kept = total - len(drop)
    if dry_run:
        print(f"{path}: {verb} {len(drop)} of {total} interactions, keeping {kept} (dry run)", flush=True)
        return EXIT_OK
    layout = _write_without(cassette, set(drop), interactions)
    print(f"{path}: {verb} {len(drop)} of {total} interactions, keeping {kept}{layout}", flush=True)
    return EXIT_OK


def _write_without(cassette: Path, drop: set[int], interactions: Sequence[Any]) -> str:
    """Replace ``cassette`` by itself without the items numbered in ``drop``; what became of its layout."""
    text = cassette.read_text("utf-8")
    lines = text.splitlines(keepends=True)
    json_format = cassettes.is_json(cassette)
    found = json_items([line.rstrip("\n") for line in lines]) if json_format else block_items(lines)
    new: str | None = None
    note = " (the rest of the file unchanged)"
    if json_format:
        data = json.loads(text)
        data["interactions"] = [item for i, item in enumerate(data["interactions"]) if i not in drop]
        new = json.dumps(data, indent=4) + "\n"
        if found is None or json.dumps(json.loads(text), indent=4) + "\n" != text:
            note = " (rewritten in vcrpy's JSON layout)"
    elif found is not None and len(found[0]) == len(interactions):
        starts, end = found
        bounds = [*starts, end]
        kept = ["".join(lines[bounds[i] : bounds[i + 1]]) for i in range(len(starts)) if i not in drop]
        head, tail = "".join(lines[: starts[0]]), "".join(lines[end:])
        if kept:
            new = head + "".join(kept) + tail
        else:  # an empty block list is no list: vcrpy's layout says []
            new = head.rstrip().removesuffix("interactions:") + "interactions: []\n" + tail
    if new is None:
        from vcr.serializers import yamlserializer

        data = yamlserializer.deserialize(text)
        data["interactions"] = [item for i, item in enumerate(data["interactions"]) if i not in drop]
        new = yamlserializer.serialize(data)
        note = " (rewritten in vcrpy's YAML layout)"
    _check_vcrpy_loads(cassette, new, json_format, [it for i, it in enumerate(interactions) if i not in drop])
    encoded = new.encode("utf-8")
    cassettes._atomic_write(cassette, lambda f: f.write(encoded))
    return note


def _check_vcrpy_loads(cassette: Path, text: str, json_format: bool, kept: Sequence[Any]) -> None:
    """vcrpy loads ``text`` and finds exactly the ``kept`` requests in it; else nothing is written."""
    from vcr.serialize import deserialize
    from vcr.serializers import jsonserializer, yamlserializer

    try:
        requests = deserialize(text, jsonserializer if json_format else yamlserializer)[0]
    except Exception as e:
        raise CassetteError(f"{cassette}: not pruned: vcrpy would not load the result ({e})") from None
    got = [(r.method, r.uri) for r in requests]
    want = [(k.request.method, k.request.url) for k in kept]
    if got != want:
        raise CassetteError(f"{cassette}: not pruned: the result does not hold the interactions kept")
