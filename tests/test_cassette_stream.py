"""A cassette being recorded, on disk (proxy/cassette_stream.py via the Recorder): extended in place,
made canonical by streaming, the old interactions ``all`` mode replaces left out, a torn tail dropped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import vcr
import yaml

from proxy import cassette
from proxy.cassette import CassetteWriter, dumps, load, recording_marker, save
from proxy.matching import Matcher
from proxy.model import Interaction, Request, Response
from proxy.recorder import Recorder
from proxy.redact import Redactor
from proxy.router import RecordMode


def _item(path: str, body: bytes = b"{}") -> Interaction:
    return Interaction(
        Request("GET", f"http://h{path}", (("Accept", "*/*"),), b""),
        Response(200, "OK", (("Content-Type", "application/json"),), body),
    )


OLD = [_item(f"/old/{i}", b'{"old": %d}' % i) for i in range(5)]


def _recorder(path: Path, mode: RecordMode) -> Recorder:
    loaded = load(path) if path.exists() else []
    return Recorder(path, loaded=loaded, record_mode=mode, matcher=Matcher(), redactor=Redactor())


def test_new_episodes_appends_in_place_and_the_stop_writes_the_canonical_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    save(path, OLD)
    inode = path.stat().st_ino
    recorder = _recorder(path, RecordMode.NEW_EPISODES)
    assert recorder.record(_item("/new/0")) == 6
    assert recorder.record(_item("/new/1")) == 7
    assert path.stat().st_ino == inode
    assert recording_marker(path).exists()
    assert load(path) == [*OLD, _item("/new/0"), _item("/new/1")]  # loadable while recording
    recorder.close()
    assert path.stat().st_ino == inode  # only the version line written back
    assert path.read_text() == dumps([*OLD, _item("/new/0"), _item("/new/1")])
    assert not recording_marker(path).exists()
    with vcr.use_cassette(str(path), record_mode="none") as c:  # vcrpy reads it
        assert len(c.data) == 7


def test_all_mode_leaves_out_the_old_interactions_new_ones_replace(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    save(path, OLD)
    recorder = _recorder(path, RecordMode.ALL)
    recorder.record(_item("/old/1", b'{"new": 1}'))
    recorder.record(_item("/new/0"))
    recorder.record(_item("/old/3", b'{"new": 3}'))
    assert recorder.replaced == {1, 3}
    recorder.close()
    expected = [OLD[0], OLD[2], OLD[4], _item("/old/1", b'{"new": 1}'), _item("/new/0")]
    expected.append(_item("/old/3", b'{"new": 3}'))
    assert path.read_text() == dumps(expected)


def test_a_fresh_recording_is_streamed_into_the_canonical_layout(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    recorder = _recorder(path, RecordMode.REWRITE)
    for i in range(3):
        recorder.record(_item(f"/r/{i}", bytes(range(256)) * 10))  # !!binary bodies
    assert path.read_text().startswith(cassette.HEADER)
    recorder.close()
    assert path.read_text() == dumps([_item(f"/r/{i}", bytes(range(256)) * 10) for i in range(3)])


def test_a_torn_last_item_of_a_cassette_extended_in_place_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kill while a large item was being appended: the marker says the tail may be torn."""
    path = tmp_path / "c.yaml"
    save(path, OLD)
    writer = CassetteWriter.extending(path, OLD)
    writer.append(_item("/new/0"))
    item = cassette.dump_items([_item("/new/1", b"x" * 5000)]).encode()
    with path.open("ab") as f:
        f.write(item[: len(item) // 2])
    with caplog.at_level(logging.WARNING, "proxy"):
        assert load(path) == [*OLD, _item("/new/0")]
    assert "incomplete last exchange" in caplog.text
    recording_marker(path).unlink()  # without it, a file in vcrpy's layout is taken as it is, as vcrpy
    loaded = load(path)  # takes it: the cut item loads, and answers a diagnostic 599 if played
    assert loaded[:-1] == [*OLD, _item("/new/0")]
    assert cassette.is_unplayable(loaded[-1].response)


@pytest.mark.parametrize(
    "layout",
    ["flow style", "indented sequence", "key after the items", "torn append layout", "append layout"],
)
def test_other_layouts_are_rewritten_or_extended_and_end_canonical(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "c.yaml"
    canonical = dumps(OLD)
    items = cassette.dump_items(OLD)
    extra = cassette.dump_items([_item("/torn", b"x" * 5000)])
    text = {
        "flow style": yaml.safe_dump(yaml.safe_load(canonical), default_flow_style=True),
        "indented sequence": "interactions:\n"
        + "".join(f"  {line}\n" for line in items.splitlines())
        + "version: 1\n",
        "key after the items": "interactions:\n" + items + "metadata: {}\nversion: 1\n",
        "torn append layout": cassette.HEADER + items + extra[: len(extra) // 2],
        "append layout": cassette.HEADER + items,
    }[layout]
    path.write_text(text)
    loaded = load(path)
    assert loaded[:5] == OLD
    recorder = _recorder(path, RecordMode.NEW_EPISODES)
    recorder.record(_item("/new/0"))
    recorder.close()
    assert load(path) == [*OLD, _item("/new/0")]
    assert path.read_text() == dumps([*OLD, _item("/new/0")])
