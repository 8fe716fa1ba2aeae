"""Headless Chromium, driven over the DevTools protocol on loopback: what a page shows, and a screenshot.

Debian's ``chromium`` package (``apt-get install -y chromium``; .ci/run installs it when it can). The
protocol is spoken with aiohttp's websocket client (a dev dependency already).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of a Chromium-family browser, or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Rendered:
    """What the browser showed: the visible text, values of expressions, the URLs it requested, a PNG."""

    text: str
    values: dict[str, Any]
    requested: list[str] = field(default_factory=list)
    png: bytes = b""


def render(
    page: Path,
    expressions: dict[str, str] | None = None,
    width: int = 1040,
    timeout: float = 60,
    screenshot: bool = True,
) -> Rendered:
    """Open ``page`` (a local file) in headless Chromium; return its ``document.body.innerText`` (the text
    as rendered: hidden elements excluded), the values of ``expressions``, every URL it requested, and a
    full-page screenshot (unless ``screenshot`` is False: Chromium refuses very tall pages)."""
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("no Chromium found")
    # ignore_cleanup_errors: a child process (renderer, crashpad) killed with the group may still be
    # writing its last file into the profile while the directory is removed (seen under load)
    with tempfile.TemporaryDirectory(prefix="replay-proxy-chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={width},900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: its helper processes are ended with it
        )
        try:
            ws = _devtools_url(proc, timeout)
            return asyncio.run(
                asyncio.wait_for(_drive(ws, page, expressions or {}, width, screenshot), timeout)
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group of the Chromium started above, nothing else
            proc.wait(30)
            for _ in range(50):  # its helpers are gone (at most 5 s) before the profile is removed
                try:
                    os.killpg(proc.pid, 0)
                except (ProcessLookupError, PermissionError):
                    break
                time.sleep(0.1)


def _devtools_url(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stderr is not None
    import threading

    found: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                found.append(m[1])
                done.set()
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout) or not found:
        raise RuntimeError("Chromium did not say where its DevTools listen")
    return found[0]


async def _drive(
    ws_url: str, page: Path, expressions: dict[str, str], width: int, screenshot: bool
) -> Rendered:
    import aiohttp

    ids = itertools.count(1)
    requested: list[str] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        loaded = asyncio.Event()

        async def call(method: str, session: str | None = None, **params: Any) -> Any:
            n = next(ids)
            message: dict[str, Any] = {"id": n, "method": method, "params": params}
            if session:
                message["sessionId"] = session
            await ws.send_json(message)
            while True:
                reply = await ws.receive_json()
                if reply.get("method") == "Network.requestWillBeSent":
                    requested.append(reply["params"]["request"]["url"])
                elif reply.get("method") == "Page.loadEventFired":
                    loaded.set()
                if reply.get("id") == n:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

        target = (await call("Target.createTarget", url="about:blank"))["targetId"]
        session = (await call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        await call("Page.enable", session)
        await call("Network.enable", session)
        await call("Page.navigate", session, url=page.resolve().as_uri())
        while not loaded.is_set():  # events arrive while waiting for replies: ask until the load came
            state = await call(
                "Runtime.evaluate", session, expression="document.readyState", returnByValue=True
            )
            if state["result"].get("value") == "complete":
                break
            await asyncio.sleep(0.05)

        async def value(expression: str) -> Any:
            got = await call("Runtime.evaluate", session, expression=expression, returnByValue=True)
            if "exceptionDetails" in got:
                raise RuntimeError(f"{expression}: {got['exceptionDetails']}")
            return got["result"].get("value")

        text = await value("document.body.innerText")
        values = {name: await value(expr) for name, expr in expressions.items()}
        if not screenshot:
            return Rendered(text, values, requested)
        height = await value("Math.ceil(document.documentElement.scrollHeight)")
        await call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=int(height),
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = await call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
        return Rendered(text, values, requested, base64.b64decode(shot["data"]))
