"""A small, realistic client of the Azure Maps Creator long-running operation API (the seed).

`create_tileset` starts a tileset job, polls the status URL it is given (honouring Retry-After,
retrying throttling, 5xx and dropped connections), and returns the created tileset's metadata or
raises the service's error. `NaiveCreatorClient` is the same client with two classic bugs: it polls
on a fixed short interval, ignoring Retry-After, and treats any final status as success.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import requests

TERMINAL = {"succeeded", "failed", "canceled", "cancelled"}
RETRYABLE = {408, 429, 500, 502, 503, 504}


class CreatorError(Exception):
    """The service reported a failure: ``code`` and ``message`` from its OData error."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"({code}) {message}")
        self.code, self.message, self.details = code, message, details


class OperationTimeout(Exception):
    """The operation did not finish within the client's overall deadline."""


def retry_after_seconds(headers: Any, default: float) -> float:
    """Seconds to wait: Retry-After (seconds or HTTP-date), retry-after-ms, x-ms-retry-after-ms."""
    value = headers.get("Retry-After")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if "," in value else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        if headers.get(name) is not None:
            try:
                return max(0.0, float(headers[name]) / 1000)
            except ValueError:
                pass
    return default


@dataclass
class CreatorClient:
    """Creates tilesets; ``base_url`` is the service (or the proxy standing in for it)."""

    base_url: str
    subscription_key: str = "dummy-key"
    default_interval: float = 1.0
    deadline: float = 60.0
    max_retries: int = 5
    trust_env: bool = False
    """Read HTTP(S)_PROXY and REQUESTS_CA_BUNDLE from the environment (for a forward proxy)."""
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.trust_env = self.trust_env

    def _send(self, method: str, url: str) -> requests.Response:
        """One request, retried on throttling, 5xx and dropped connections (honouring Retry-After)."""
        for attempt in range(self.max_retries + 1):
            try:
                r = self.session.request(
                    method, url, headers={"Ocp-Apim-Subscription-Key": self.subscription_key}, timeout=10
                )
            except requests.ConnectionError:
                if attempt == self.max_retries:
                    raise
                time.sleep(self.default_interval)
                continue
            if r.status_code in RETRYABLE and attempt < self.max_retries:
                time.sleep(retry_after_seconds(r.headers, self.default_interval))
                continue
            return r
        raise AssertionError("unreachable")

    def create_tileset(self, dataset_id: str | None) -> dict[str, Any]:
        """Start a tileset job and wait for it; the tileset's metadata, or CreatorError."""
        url = f"{self.base_url}/tilesets?api-version=2.0"
        if dataset_id is not None:
            url += f"&datasetId={dataset_id}"
        r = self._send("POST", url)
        if r.status_code != 202:
            error = r.json().get("error", {})
            raise CreatorError(error.get("code", str(r.status_code)), error.get("message", r.text))
        status_url = urljoin(r.url, r.headers["Location"])
        time.sleep(retry_after_seconds(r.headers, 0.0))  # a Retry-After on the 202 counts too
        give_up = time.monotonic() + self.deadline
        while True:
            r = self._send("GET", status_url)
            r.raise_for_status()
            body = r.json()
            status = str(body.get("status", "")).lower()
            if status in TERMINAL:
                break
            if time.monotonic() > give_up:
                raise OperationTimeout(f"still {body.get('status')} after {self.deadline:g} s")
            if "Location" in r.headers:  # the service may move the status monitor
                status_url = urljoin(r.url, r.headers["Location"])
            time.sleep(retry_after_seconds(r.headers, self.default_interval))
        if status != "succeeded":
            error = body.get("error") or {}
            raise CreatorError(error.get("code", status), error.get("message", ""), error.get("details"))
        resource = body.get("resourceLocation") or r.headers.get("Location")
        if not resource:
            return {"status": body["status"], "operationId": body.get("operationId")}
        return dict(self._send("GET", urljoin(r.url, resource)).json())


@dataclass
class NaiveCreatorClient(CreatorClient):
    """The same client with two classic bugs: fixed 10 ms polling, and any final status is success."""

    poll_interval: float = 0.01

    def create_tileset(self, dataset_id: str | None) -> dict[str, Any]:
        r = self.session.post(f"{self.base_url}/tilesets?api-version=2.0&datasetId={dataset_id}", timeout=10)
        status_url = r.headers["Location"]
        while True:
            time.sleep(self.poll_interval)  # bug: ignores Retry-After
            body = self.session.get(status_url, timeout=10).json()
            if body["status"] in ("Succeeded", "Failed"):  # bug: Failed is "done" like Succeeded
                break
        # ...and fetches "the tileset", building its URL from the operation id when none was given.
        resource = body.get("resourceLocation") or f"{self.base_url}/tilesets/{body['operationId']}"
        r = self.session.get(resource, timeout=10)
        return dict(r.json()) if r.ok else dict(body)
