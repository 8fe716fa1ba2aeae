"""``replay-proxy prune``: what no journal line played goes, the rest of the file stays as it was.

One end-to-end run (a real proxy writes the journal), the rest with journals written here in the
format tests/test_journal_file.py checks.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from vcr.serialize import deserialize
from vcr.serializers import jsonserializer, yamlserializer

from proxy import cassette
from proxy.prune import names_cassette
from tests.conftest import ROOT, Cli

SHIPPED = ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"
DATASET_ID = "8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d"
START = f"/tilesets?api-version=2.0&datasetId={DATASET_ID}"


def prune(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "prune", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def journal(path: Path, cassette_path: str, played: list[int], loaded: int = 6, method: str = "GET") -> Path:
    lines: list[dict[str, Any]] = [{"event": "load", "cassette": cassette_path, "interactions": loaded}]
    lines += [
        {
            "event": "exchange",
            "method": method if i else "POST",
            "cassette": cassette_path,
            "interaction": i,
            "source": "cassette",
        }
        for i in played
    ]
    lines.append({"event": "exchange", "method": "GET", "cassette": None, "interaction": None})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def vcrpy_uris(path: Path) -> list[str]:
    serializer = jsonserializer if path.suffix == ".json" else yamlserializer
    return [r.uri for r in deserialize(path.read_text(), serializer)[0]]


def items_text(path: Path) -> list[str]:
    """The YAML file's item blocks (each ``- request:`` line to the next)."""
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("- ")]
    end = next(i for i in range(starts[-1], len(lines)) if lines[i].startswith("version:"))
    bounds = [*starts, end]
    return ["".join(lines[a:b]) for a, b in itertools.pairwise(bounds)]


def test_a_real_runs_journal_prunes_what_the_client_never_asked_for(cli: type[Cli], tmp_path: Path) -> None:
    c = tmp_path / "tileset.yaml"
    shutil.copy(SHIPPED, c)
    original = c.read_text()
    log = tmp_path / "journal.jsonl"
    proxy = cli(["replay", str(c), "--port", "0", "--retry-after", "0", "--journal", str(log)])
    http = requests.Session()
    http.trust_env = False
    start = http.post(proxy.url + START, timeout=10)
    http.get(start.headers["Location"], timeout=10)
    assert proxy.stop() == 0

    dry = prune(tmp_path, "tileset.yaml", "--journal", "journal.jsonl", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0].startswith(
        "tileset.yaml:69: #3 GET http://127.0.0.1:44099/tilesets/operations/"
    )
    assert dry.stdout.splitlines()[-1] == "tileset.yaml: would drop 4 of 6 interactions, keeping 2 (dry run)"
    assert c.read_text() == original

    done = prune(tmp_path, "tileset.yaml", "--journal", "journal.jsonl")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "tileset.yaml: dropped 4 of 6 interactions, keeping 2 (the rest of the file unchanged)"
    )
    assert c.read_text() == "interactions:\n" + "".join(items_text(SHIPPED)[:2]) + "version: 1\n"
    assert vcrpy_uris(c) == [i.request.url for i in cassette.load(SHIPPED)[:2]]

    replay = cli(["replay", str(c), "--port", "0", "--retry-after", "0"])  # the proxy replays what is left
    again = http.post(replay.url + START, timeout=10)
    assert again.status_code == 202
    assert http.get(again.headers["Location"], timeout=10).json()["status"] == "NotStarted"
    assert replay.stop() == 0


def test_the_middle_goes_and_every_other_byte_stays(tmp_path: Path) -> None:
    c = tmp_path / "c.yaml"
    shutil.copy(SHIPPED, c)
    items = items_text(SHIPPED)
    log = journal(tmp_path / "j.jsonl", str(c), [0, 1, 5])
    assert prune(tmp_path, "c.yaml", "--journal", str(log)).returncode == 0
    assert c.read_text() == "interactions:\n" + items[0] + items[1] + items[5] + "version: 1\n"


def test_json_cassettes_stay_in_vcrpys_json_layout(tmp_path: Path) -> None:
    c = tmp_path / "c.json"
    cassette.save(c, cassette.load(SHIPPED))
    data = json.loads(c.read_text())
    log = journal(tmp_path / "j.jsonl", str(c), [0, 2])
    result = prune(tmp_path, "c.json", "--journal", str(log))
    assert result.returncode == 0, result.stderr
    assert "(the rest of the file unchanged)" in result.stdout
    data["interactions"] = [data["interactions"][0], data["interactions"][2]]
    assert c.read_text() == json.dumps(data, indent=4) + "\n"
    assert len(vcrpy_uris(c)) == 2


def test_another_layout_is_rewritten_in_vcrpys(tmp_path: Path) -> None:
    c = tmp_path / "flow.yaml"
    data = yaml.safe_load(SHIPPED.read_text())
    c.write_text("version: 1\ninteractions: " + json.dumps(data["interactions"]) + "\n")
    result = prune(tmp_path, "flow.yaml", "--journal", str(journal(tmp_path / "j.jsonl", str(c), [0, 1])))
    assert result.returncode == 0, result.stderr
    assert "(rewritten in vcrpy's YAML layout)" in result.stdout
    assert vcrpy_uris(c) == [i.request.url for i in cassette.load(SHIPPED)[:2]]


def test_nothing_played_leaves_an_empty_cassette_vcrpy_loads(tmp_path: Path) -> None:
    c = tmp_path / "c.yaml"
    shutil.copy(SHIPPED, c)
    log = journal(tmp_path / "j.jsonl", str(c), [])
    assert prune(tmp_path, "c.yaml", "--journal", str(log)).returncode == 0
    assert c.read_text() == "interactions: []\nversion: 1\n"
    assert vcrpy_uris(c) == []


def test_all_played_changes_nothing(tmp_path: Path) -> None:
    c = tmp_path / "c.yaml"
    shutil.copy(SHIPPED, c)
    log = journal(tmp_path / "j.jsonl", str(c), list(range(6)))
    result = prune(tmp_path, "c.yaml", "--journal", str(log))
    assert result.returncode == 0
    assert result.stdout == "c.yaml: all 6 interactions were played: nothing to prune\n"
    assert c.read_text() == SHIPPED.read_text()


def test_a_ci_journal_names_the_cassette_by_its_path_in_another_checkout(tmp_path: Path) -> None:
    (tmp_path / "cassettes").mkdir()
    c = tmp_path / "cassettes" / "c.yaml"
    shutil.copy(SHIPPED, c)
    log = journal(tmp_path / "j.jsonl", "/home/runner/work/app/app/cassettes/c.yaml", [0, 1, 2, 3, 4])
    result = prune(tmp_path, "cassettes/c.yaml", "--journal", str(log))
    assert result.returncode == 0, result.stderr
    assert len(vcrpy_uris(c)) == 5
    assert names_cassette("/x/cassettes/c.yaml", Path("cassettes/c.yaml"))
    assert not names_cassette("/x/other/c.yaml", Path("cassettes/c.yaml"))


@pytest.mark.parametrize(
    ("played", "loaded", "method", "message"),
    [
        ([0, 1], 7, "GET", "has 6 interactions, but the run of j.jsonl:1 loaded 7: the cassette changed"),
        ([0, 9], 6, "GET", "played interaction #10 with GET, which the file does not hold"),
        ([0, 1], 6, "DELETE", "played interaction #2 with DELETE, which the file does not hold"),
    ],
)
def test_a_journal_that_does_not_fit_the_cassette_changes_nothing(
    tmp_path: Path, played: list[int], loaded: int, method: str, message: str
) -> None:
    c = tmp_path / "c.yaml"
    shutil.copy(SHIPPED, c)
    journal(tmp_path / "j.jsonl", str(c), played, loaded, method)
    result = prune(tmp_path, "c.yaml", "--journal", "j.jsonl")
    assert result.returncode == 2
    assert message in result.stderr and "nothing pruned" in result.stderr
    assert c.read_text() == SHIPPED.read_text()


def test_a_journal_that_never_names_the_cassette_changes_nothing(tmp_path: Path) -> None:
    c = tmp_path / "c.yaml"
    shutil.copy(SHIPPED, c)
    journal(tmp_path / "j.jsonl", str(tmp_path / "other.yaml"), [0])
    result = prune(tmp_path, "c.yaml", "--journal", "j.jsonl")
    assert result.returncode == 2
    assert "replay-proxy: error: c.yaml: no line of j.jsonl names this cassette" in result.stderr
    assert c.read_text() == SHIPPED.read_text()
    missing = prune(tmp_path, "c.yaml", "--journal", "nope.jsonl")
    assert missing.returncode == 2 and "nope.jsonl: cannot read the journal" in missing.stderr
