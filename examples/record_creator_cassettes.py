"""Re-record the shipped cassettes in cassettes/azure-maps/ against the reference Creator service.

    uv run python examples/record_creator_cassettes.py [OUTPUT_DIR]

Starts proxy.creator_service on a free loopback port, records each flow through replay-proxy in
reverse mode (record mode ``rewrite``: a fresh cassette each time), and drives it with a small
requests client that follows the Location headers it is given, as a real client of the seed's
long-running operation API would.
"""

from __future__ import annotations

import sys
from pathlib import Path

import requests

from proxy import ReplayProxy
from proxy.creator_service import CreatorService

TERMINAL = {"Succeeded", "Failed"}

FLOWS = {
    # cassette name: (datasetId or None for the invalid request, whether to fetch the created resource)
    "tileset-succeeds": ("8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d", True),
    "tileset-fails": ("invalid-5f0c2d1e-3a4b-4c5d-8e9f-a0b1c2d3e4f5", False),
    "succeeds-without-resource": ("noresource-1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", False),
    "missing-dataset-id": (None, False),
}


def drive(base: str, dataset_id: str | None, fetch_resource: bool) -> list[str]:
    """Start a tileset job through the proxy and poll it to the end; returns what it saw."""
    seen: list[str] = []
    with requests.Session() as s:
        s.trust_env = False
        query = "api-version=2.0" + (f"&datasetId={dataset_id}" if dataset_id else "")
        r = s.post(f"{base}/tilesets?{query}", timeout=10)
        seen.append(f"POST -> {r.status_code}")
        if r.status_code != 202:
            return seen
        status_url = r.headers["Location"]
        for _ in range(20):
            r = s.get(status_url, timeout=10)
            status = r.json()["status"]
            seen.append(f"GET status -> {r.status_code} {status}")
            if status in TERMINAL:
                break
        if fetch_resource and r.status_code == 201:
            r = s.get(r.headers["Location"], timeout=10)
            seen.append(f"GET resource -> {r.status_code}")
    return seen


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "cassettes" / "azure-maps"
    for name, (dataset_id, fetch) in FLOWS.items():
        cassette = out / f"{name}.yaml"
        with (
            CreatorService(running_polls=2, retry_after=1) as service,
            ReplayProxy(cassette, upstream=service.url) as proxy,  # record mode "rewrite"
        ):
            seen = drive(proxy.url, dataset_id, fetch)
        print(f"{cassette}: {', '.join(seen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
