"""The real azure-core and azure-mgmt-core pollers pointed at the proxy, as test_sdk_polling and
test_dialects drive them: a data-plane pipeline with an ``LROPoller``, a management client over TLS, and
the verdict's text for what they sent."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from azure.core import PipelineClient
from azure.core.credentials import AccessToken
from azure.core.pipeline.policies import HeadersPolicy, RequestIdPolicy, RetryPolicy
from azure.core.polling import LROPoller
from azure.core.polling.base_polling import LROBasePolling
from azure.core.rest import HttpRequest
from azure.mgmt.resource.resources import ResourceManagementClient

from proxy.journal import Exchange
from proxy.server import ReplayProxy
from proxy.verdict import check, format_violations, report

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
AZURE_CORE_INTERVAL = 30
"""azure-core's default polling interval: what it sleeps when it reads no usable delay (a test that
finishes in seconds read the proxy's delays)."""
CLEAN = "replay-proxy verdict: no violations"


def verdict(entries: Sequence[Exchange], *disabled: str) -> str:
    """The verdict's text, with the report when there are violations (a failing assert shows both)."""
    violations = check(entries, disabled)
    return format_violations(violations) if not violations else report(entries, violations)


def azure_core_client(base: str) -> PipelineClient[Any, Any]:
    """A pipeline as generated data-plane clients build it: request id, headers, the standard retries."""
    return PipelineClient(base_url=base, policies=[RequestIdPolicy(), HeadersPolicy(), RetryPolicy()])


def begin(
    client: PipelineClient[Any, Any], method: str, url: str, polling: LROBasePolling | None = None
) -> LROPoller[Any]:
    """An LRO started as generated clients do: the initial call, then ``polling`` (azure-core's
    ``LROBasePolling`` at its default interval unless given) from its answer; the result is the body."""
    initial = client.send_request(HttpRequest(method, url), _return_pipeline_response=True)  # type: ignore[call-arg]
    return LROPoller(
        client,
        initial,
        lambda pipeline_response: pipeline_response.http_response.text(),
        polling or LROBasePolling(timeout=AZURE_CORE_INTERVAL),
    )


class FakeCredential:
    """A TokenCredential: the bearer policy gets a token (it is sent only over https, to the proxy)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-token", int(time.time()) + 3600)


def arm_client(proxy: ReplayProxy) -> ResourceManagementClient:
    """The real client, unchanged base URL (https://management.azure.com): the proxy is its HTTPS proxy."""
    return ResourceManagementClient(
        FakeCredential(),  # type: ignore[arg-type]
        SUBSCRIPTION,
        proxies={"https": proxy.url},
        connection_verify=str(proxy.ca_cert),
    )
