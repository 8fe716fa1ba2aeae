"""The example client's test suite, written with replay-proxy's pytest plugin: one test per scenario of
scenarios/azure-maps/ and per shipped cassette, all offline.

Each test says what the proxy serves (the marker), points the client at ``replay_proxy.url``, and
checks what the client returned; the plugin then checks *how* it got there (the verdict runs at
teardown: Retry-After honoured, no poll after the end, the status URL followed, every operation
finished). ``retry_after=0.05`` rewrites the scenarios' ``Retry-After: 1`` (and the 429/503's 2) to
50 ms, sent as ``retry-after-ms: 50`` (a 429/503 keeps ``Retry-After: 1`` beside it: valid HTTP only
has whole seconds): the client still has to honour it, and the suite runs in a few seconds.

    uv run pytest examples/
"""

from __future__ import annotations

import pytest
from creator_client import CreatorClient, CreatorError

FAST = 0.05
"""Seconds every Retry-After is rewritten to (the verdict holds the client to it)."""


def client(replay_proxy, **kwargs) -> CreatorClient:
    return CreatorClient(base_url=replay_proxy.url, default_interval=FAST, **kwargs)


def answers(replay_proxy) -> list[tuple[str, int | None]]:
    """What the client got, in order: (path without query, status)."""
    return [(e.path.split("?")[0], e.status) for e in replay_proxy.journal.entries]


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-succeeds.yaml", retry_after=FAST)
def test_a_tileset_job_that_succeeds_returns_the_tileset(replay_proxy):
    tileset = client(replay_proxy).create_tileset("my-dataset")

    assert tileset["datasetId"] == "my-dataset"
    assert tileset["ontology"] == "facility-2.0"
    statuses = [e.op_status for e in replay_proxy.journal.entries if e.poll is not None]
    assert statuses == ["NotStarted", "Running", "Running", "Succeeded"]


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-succeeds.yaml", retry_after=FAST)
def test_a_request_without_dataset_id_raises_the_services_error(replay_proxy):
    with pytest.raises(CreatorError) as caught:
        client(replay_proxy).create_tileset(None)

    assert caught.value.code == "BadRequest"
    assert "datasetId" in caught.value.message


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-fails.yaml", retry_after=FAST)
def test_a_tileset_job_that_fails_raises_the_services_error(replay_proxy):
    with pytest.raises(CreatorError) as caught:
        client(replay_proxy).create_tileset("my-dataset")

    assert caught.value.code == "InvalidFeature"
    assert caught.value.details["code"] == "NoGeometry"
    assert replay_proxy.journal.entries[-1].op_status == "Failed"  # nothing fetched after the failure


@pytest.mark.replay_proxy("scenarios/azure-maps/throttled-start.yaml", retry_after=FAST)
def test_a_throttled_start_is_retried_after_waiting(replay_proxy):
    tileset = client(replay_proxy).create_tileset("my-dataset")

    assert tileset["tilesetId"]
    assert answers(replay_proxy)[:2] == [("/tilesets", 429), ("/tilesets", 202)]


@pytest.mark.replay_proxy("scenarios/azure-maps/flaky-polling.yaml", retry_after=FAST)
def test_a_503_and_a_reset_while_polling_are_retried(replay_proxy):
    tileset = client(replay_proxy).create_tileset("my-dataset")

    assert tileset["tilesetId"]
    statuses = [e.status for e in replay_proxy.journal.entries]
    assert 503 in statuses
    assert any(e.source == "scenario" and e.status is None for e in replay_proxy.journal.entries)  # the reset


@pytest.mark.replay_proxy("scenarios/azure-maps/succeeds-without-resource.yaml", retry_after=FAST)
def test_a_job_without_a_resource_returns_its_status_and_fetches_nothing(replay_proxy):
    result = client(replay_proxy).create_tileset("my-dataset")

    assert result["status"] == "Succeeded"
    assert answers(replay_proxy)[-1][1] == 200  # the last request was the final poll: no resource GET


def test_one_test_can_switch_between_scenarios(replay_proxy):
    replay_proxy.use("scenarios/azure-maps/tileset-succeeds.yaml", retry_after=FAST)
    assert client(replay_proxy).create_tileset("first")["datasetId"] == "first"

    replay_proxy.use("scenarios/azure-maps/tileset-fails.yaml", retry_after=FAST)  # fresh state, same proxy
    with pytest.raises(CreatorError):
        client(replay_proxy).create_tileset("second")


# -- the recordings of the reference service (cassettes/azure-maps/), replayed offline -----------------


@pytest.mark.replay_proxy("cassettes/azure-maps/tileset-succeeds.yaml", retry_after=FAST)
def test_recorded_success(replay_proxy):
    tileset = client(replay_proxy).create_tileset("8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d")

    assert tileset["tilesetId"]
    assert {e.source for e in replay_proxy.journal.entries} == {"cassette"}


@pytest.mark.replay_proxy("cassettes/azure-maps/tileset-fails.yaml", retry_after=FAST)
def test_recorded_failure(replay_proxy):
    with pytest.raises(CreatorError) as caught:
        client(replay_proxy).create_tileset("invalid-5f0c2d1e-3a4b-4c5d-8e9f-a0b1c2d3e4f5")

    assert caught.value.code == "InvalidFeature"


# -- a client whose base URL is hard-coded: the plugin as its HTTP(S)_PROXY -----------------------------


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-succeeds.yaml", retry_after=FAST)
def test_a_hard_coded_https_base_url_through_the_forward_proxy(replay_proxy_env):
    # replay_proxy_env set HTTPS_PROXY and REQUESTS_CA_BUNDLE for this test; the client reads them.
    real_service = CreatorClient("https://atlas.microsoft.com", default_interval=FAST, trust_env=True)

    tileset = real_service.create_tileset("my-dataset")

    assert tileset["datasetId"] == "my-dataset"
    assert replay_proxy_env.journal.entries[0].url.startswith("https://atlas.microsoft.com/tilesets")
