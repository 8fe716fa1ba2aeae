"""`replay-proxy mcp` driven by the official mcp SDK's own stdio client, as a coding agent drives it: list
the tools, load a scenario, run a client, steer its operation, read the journal and the verdict; a
refused call is an error result that changes nothing; and the server drives a proxy started elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("mcp")

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.conftest import ROOT

TOOLS = {
    "proxy_url",
    "use",
    "reset",
    "journal",
    "verdict",
    "operations",
    "hold_operation",
    "advance_operation",
    "succeed_operation",
    "fail_operation",
    "cancel_operation",
    "release_operation",
}


def with_session(args: list[str], confdir: Path, body: Callable[[ClientSession], Awaitable[None]]) -> None:
    env = dict(os.environ, REPLAY_PROXY_CONFDIR=str(confdir))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    argv = ["-m", "proxy", "mcp", *args]
    params = StdioServerParameters(command=sys.executable, args=argv, env=env, cwd=ROOT)

    async def main() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await asyncio.wait_for(body(session), 60)

    asyncio.run(main())


def is_error(result: Any) -> bool:
    """CallToolResult.isError (mcp 1) or .is_error (mcp 2)."""
    return bool(getattr(result, "is_error", getattr(result, "isError", False)))


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not is_error(result), result.content
    text = result.content[0].text  # type: ignore[union-attr]
    data: dict[str, Any] = json.loads(text)
    return data


def test_an_agent_loads_runs_steers_and_reads_the_verdict(confdir: Path) -> None:
    async def body(session: ClientSession) -> None:
        listed = await session.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        url = (await call(session, "proxy_url"))["url"]
        loaded = await call(session, "use", scenarios=["scenarios/examples/held-job.yaml"], retry_after=0)
        assert loaded["loaded"]["scenarios"] == ["scenarios/examples/held-job.yaml"]
        async with httpx.AsyncClient(base_url=url, trust_env=False) as http:
            start = await http.post("/tilesets?api-version=2.0&datasetId=d1")
            status_url = start.headers["Location"]
            assert (await http.get(status_url)).json()["status"] == "Running"
            (op,) = (await call(session, "operations"))["operations"]
            assert op["held"] is True
            error = {"code": "NoGeometry", "message": "No geometry."}
            steered = await call(session, "fail_operation", operation_id=op["id"], error=error)
            assert steered["operation"]["ended_by"] == "fail"
            assert (await http.get(status_url)).json()["error"] == error
        entries = (await call(session, "journal"))["entries"]
        assert [e["status"] for e in entries] == [202, 200, 200]
        assert await call(session, "verdict") == {"ok": True, "violations": []}
        refused = await session.call_tool("advance_operation", {"operation_id": "nope"})
        assert is_error(refused) and "404" in refused.content[0].text  # type: ignore[union-attr]
        bad = await session.call_tool("use", {"scenarios": ["/etc/passwd"]})
        assert is_error(bad) and "outside the root" in bad.content[0].text  # type: ignore[union-attr]
        assert len((await call(session, "journal"))["entries"]) == 3  # nothing changed
        await call(session, "reset")
        assert (await call(session, "journal"))["entries"] == []

    with_session(["--port", "0"], confdir, body)


def test_it_drives_a_proxy_started_elsewhere_with_its_token(cli: Any, tmp_path: Path) -> None:
    proc = cli(["serve", "--port", "0", "-q", "--control-token", "tok"])

    async def body(session: ClientSession) -> None:
        assert (await call(session, "proxy_url"))["url"] == proc.url
        await call(session, "use", scenarios=["scenarios/azure-maps/tileset-succeeds.yaml"])
        assert (await call(session, "operations")) == {"operations": []}

    with_session(["--url", proc.url, "--control-token", "tok"], tmp_path, body)
    assert proc.stop() == 0
