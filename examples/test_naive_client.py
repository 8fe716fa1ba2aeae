"""What the verdict tells you about a client with classic polling bugs (NaiveCreatorClient).

Written the way a user would write them, these tests would fail at teardown with the verdict, e.g.:

    replay-proxy verdict: 1 violation
      1. retry-after: GET /tilesets/operations/8607b39a… came 0.013 s after the previous answer, which
         said to wait 1 s (and 2 more early polls of this operation); the client should wait at least the
         Retry-After (or retry-after-ms / x-ms-retry-after-ms) the answer gave before sending the next request

Here each test calls ``replay_proxy.verify()`` itself, inside ``pytest.raises``, to show the verdict's
message (a verified test is not verified again at teardown unless more requests came).
"""

from __future__ import annotations

import pytest
from creator_client import NaiveCreatorClient


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-succeeds.yaml")
def test_the_verdict_catches_a_client_that_ignores_retry_after(replay_proxy):
    tileset = NaiveCreatorClient(base_url=replay_proxy.url).create_tileset("my-dataset")
    assert tileset["datasetId"] == "my-dataset"  # the result looks right...

    with pytest.raises(AssertionError) as verdict:  # ...but the client hammered the service
        replay_proxy.verify()

    message = str(verdict.value)
    assert "retry-after" in message
    assert "which said to wait 1 s" in message
    assert "the client should wait at least the Retry-After" in message  # what to do about it


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-fails.yaml", checks_disabled=["retry-after"])
def test_the_verdict_catches_a_client_that_treats_failed_as_done(replay_proxy):
    result = NaiveCreatorClient(base_url=replay_proxy.url).create_tileset("my-dataset")
    assert result["status"] == "Failed"  # returned as if done: a correct client raises CreatorError

    with pytest.raises(AssertionError) as verdict:
        replay_proxy.verify()

    # After "Failed" it went on to fetch a tileset that was never created, at a URL it made up itself.
    message = str(verdict.value)
    assert "self-built-url" in message
    assert "/tilesets/" in message
