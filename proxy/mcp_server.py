"""``replay-proxy mcp``: a Model Context Protocol server over stdio, so coding agents can drive a proxy.

Its tools are the control API's endpoints (proxy/control.py), called over HTTP: ``use``, ``reset``,
``journal``, ``verdict``, ``operations`` and the operation verbs (``hold_operation``, ``advance_operation``,
``succeed_operation``, ``fail_operation``, ``cancel_operation``, ``release_operation``), plus
``proxy_url``. It drives the proxy at ``--url`` (started elsewhere, e.g. ``replay-proxy serve``), or
starts its own with nothing loaded. Built on the official ``mcp`` SDK (the ``mcp`` extra:
``pip install 'replay-proxy[mcp]'``). Named ``mcp_server``: a module named ``mcp`` would hide the SDK.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from proxy.control import PREFIX, TOKEN_HEADER
from proxy.errors import ConfigError

INSTRUCTIONS = (
    "replay-proxy stands in for a remote HTTP service while a client is tested. Point the client at "
    "proxy_url, load what it should answer with `use` (scenario files, or a cassette), run the client, "
    "then read `journal` (what it sent, what answered) and `verdict` (how it polled long-running "
    "operations). Started operations can be held, advanced, failed, succeeded, canceled or released."
)


class ControlClient:
    """The control API of the proxy at ``url``, over HTTP; a refusal raises an error with its message."""

    def __init__(self, url: str, token: str | None = None, error: type[Exception] = RuntimeError) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.error = error
        """What a refusal raises: the SDK's ToolError, whose message the agent sees."""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + PREFIX + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header(TOKEN_HEADER, self.token)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through HTTP_PROXY
        try:
            with opener.open(request, timeout=60) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read())
            except ValueError:
                detail = {"error": e.reason}
            raise self.error(f"{e.code}: {json.dumps(detail)}") from None
        except urllib.error.URLError as e:
            raise self.error(f"cannot reach replay-proxy at {self.url}: {e.reason}") from None


def _sdk() -> tuple[Any, type[Exception]]:
    """The SDK's high-level server and its ToolError: ``MCPServer`` (mcp 2) or ``FastMCP`` (mcp 1, the
    same API). Only a ToolError's message reaches the agent (mcp 2 hides other exceptions')."""
    import importlib

    for package, name in (("mcp.server.mcpserver", "MCPServer"), ("mcp.server.fastmcp", "FastMCP")):
        try:
            server = getattr(importlib.import_module(package), name)
            error = importlib.import_module(package + ".exceptions").ToolError
            return server, error
        except (ImportError, AttributeError):
            continue
    raise ConfigError(
        "replay-proxy mcp needs the mcp package: pip install 'replay-proxy[mcp]' (or pip install mcp)"
    )


def build_server(client: ControlClient, url: str) -> Any:
    """The MCP server whose tools call ``client`` (its refusals become the SDK's ToolError)."""
    server_class, client.error = _sdk()
    server = server_class("replay-proxy", instructions=INSTRUCTIONS)

    def proxy_url() -> dict[str, Any]:
        """The URL the client under test uses as its base URL (the proxy stands in for the service)."""
        return {"url": url}

    def use(
        scenarios: list[str] | None = None,
        cassette: str | None = None,
        retry_after: float | None = None,
        clock: str | None = None,
    ) -> dict[str, Any]:
        """Serve these scenario files and/or this cassette from now on, with all state fresh. Paths are
        relative to the directory the proxy was started in. retry_after (seconds) rewrites every delay the
        client is told; clock "virtual" lets time-based steps pass as fast as the client polls. A bad file
        is refused with its file:line:column problems; the proxy keeps serving what it served."""
        body: dict[str, Any] = {"scenarios": scenarios or [], "cassette": cassette}
        if retry_after is not None:
            body["retry_after"] = retry_after
        if clock is not None:
            body["clock"] = clock
        return client.call("POST", "use", body)

    def reset() -> dict[str, Any]:
        """Start afresh on what is served: operation counters, sequences, playback and journal."""
        return client.call("POST", "reset")

    def journal() -> dict[str, Any]:
        """Every exchange since the last use/reset: time, method, url, status, what answered, the delay
        sent, the operation and its status, the request's headers (secrets redacted) and body size."""
        return client.call("GET", "journal")

    def verdict(skip: list[str] | None = None) -> dict[str, Any]:
        """How the client behaved: ok, and violations (unmatched requests, polls earlier than the
        Retry-After, polls after the end, self-built URLs, unfinished operations...). skip: check names."""
        return client.call("GET", "verdict?skip=" + ",".join(skip or []))

    def operations() -> dict[str, Any]:
        """The scenario operations started since the last use/reset: id, status, polls, step, held..."""
        return client.call("GET", "operations")

    def steer(operation_id: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        from urllib.parse import quote

        return client.call("POST", f"operations/{quote(operation_id, safe='')}/{action}", body)

    def hold_operation(operation_id: str) -> dict[str, Any]:
        """Keep the operation at its current step (its polls answer it) until released, advanced or ended."""
        return steer(operation_id, "hold")

    def advance_operation(operation_id: str, steps: int = 1) -> dict[str, Any]:
        """Move the operation this many steps on (held or not)."""
        return steer(operation_id, "advance", {"steps": steps})

    def succeed_operation(operation_id: str) -> dict[str, Any]:
        """End the operation now: its next poll answers Succeeded."""
        return steer(operation_id, "succeed")

    def fail_operation(operation_id: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
        """End the operation now: its next poll answers Failed with this error ({code, message, ...})."""
        return steer(operation_id, "fail", {"error": error} if error is not None else None)

    def cancel_operation(operation_id: str) -> dict[str, Any]:
        """End the operation now: its next poll answers Canceled."""
        return steer(operation_id, "cancel")

    def release_operation(operation_id: str) -> dict[str, Any]:
        """Back to the scripted progression, from the step it is at (undoes a hold or an end set so)."""
        return steer(operation_id, "release")

    for tool in (
        proxy_url,
        use,
        reset,
        journal,
        verdict,
        operations,
        hold_operation,
        advance_operation,
        succeed_operation,
        fail_operation,
        cancel_operation,
        release_operation,
    ):
        server.tool()(tool)
    return server


def serve_stdio(
    url: str | None,
    token: str | None,
    *,
    port: int = 0,
    root: Path | None = None,
    retry_after: float | None = None,
) -> int:
    """Run the MCP server on stdin/stdout until the client closes it; with no ``url``, a proxy of its own
    (loopback, nothing loaded) runs meanwhile. Nothing but the protocol goes to stdout."""
    proxy = None
    if url is None:
        from proxy.server import ReplayProxy

        proxy = ReplayProxy(port=port, root=root, retry_after=retry_after, control_token=token).start()
        url = proxy.url
        print(f"replay-proxy on {url} (driven through MCP on stdio)", file=sys.stderr, flush=True)
    server = build_server(ControlClient(url, token), url)
    try:
        server.run("stdio")
    finally:
        if proxy is not None:
            proxy.stop()
    return 0
