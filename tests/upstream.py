"""A small loopback HTTP server for tests: JSON, compressed, binary, cookies, echo, and a polled operation."""

from __future__ import annotations

import functools
import hashlib
import json
import random
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mitmproxy.net import encoding  # gzip, br and zstd on both mitmproxy 11 and 12

BINARY = bytes(range(256)) * 4


@functools.lru_cache(maxsize=2)
def payload(size: int) -> bytes:
    """``size`` bytes of incompressible, not-UTF-8 data, the same for the same size (``/bytes/SIZE``)."""
    return random.Random(size).randbytes(size)


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    """The request body, by Content-Length or chunked (trailers skipped)."""
    if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
        parts = []
        while True:
            size = int(h.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(h.rfile.read(size))
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""


class _QuietServer(ThreadingHTTPServer):
    """Prints no traceback for a client that went away (a killed proxy resets its connections)."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class Upstream:
    """Serves fixed answers on 127.0.0.1; counts connections and keeps the requests it saw."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.polls: dict[str, int] = {}
        self.api = 1
        """The version of ``/api/...`` served (``_api``): a test changes it between record and drift."""
        self.jobs = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner.connections += 1

            def do_GET(self) -> None:
                owner._handle(self)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> Upstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _api(self, method: str, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """A small LRO API in two versions. Version 2 changed it: the status URL comes in
        Operation-Location (no Location), no Retry-After, "InProgress" for "Running" and a new
        ``percentComplete``; an item's ``size`` became a string, ``name`` went, ``tags`` came; ``/api/legacy``
        answers 410."""
        v2 = self.api == 2
        json_type = [("Content-Type", "application/json")]
        if method == "POST" and path == "/api/jobs":
            with self._lock:
                self.jobs += 1
                job = f"job{self.jobs}"
            status_url = f"{self.url}/api/jobs/operations/{job}"
            if v2:
                return 202, [("Operation-Location", status_url)], b""
            return 202, [("Location", status_url), ("Retry-After", "0")], b""
        if path.startswith("/api/jobs/operations/"):
            job = path.rsplit("/", 1)[1]
            if not job.startswith("job") or not 0 < int(job[3:] or 0) <= self.jobs:
                return 404, json_type, b'{"error": {"code": "NotFound", "message": "no such job"}}'
            with self._lock:
                n = self.polls[job] = self.polls.get(job, 0) + 1
            running = "InProgress" if v2 else "Running"
            doc: dict[str, Any] = {"id": job, "status": running if n < 3 else "Succeeded"}
            if v2:
                doc["percentComplete"] = min(100, n * 40)
            headers = list(json_type)
            if n < 3 and not v2:
                headers.append(("Retry-After", "0"))
            if n >= 3:
                doc["resourceLocation"] = f"{self.url}/api/items/{job}"
            return 200, headers, json.dumps(doc).encode()
        if path.startswith("/api/items/"):
            item = path.rsplit("/", 1)[1]
            doc = {"id": item, "size": "42", "tags": ["new"]} if v2 else {"id": item, "name": "x", "size": 42}
            return 200, json_type, json.dumps(doc).encode()
        if path == "/api/legacy":
            return (410, json_type, b'{"error": "gone"}') if v2 else (200, json_type, b'{"ok": true}')
        return 404, json_type, b'{"error": "not found"}'

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        parts = urlsplit(h.path)
        query = parse_qs(parts.query)
        with self._lock:
            self.requests.append(
                {"method": h.command, "path": h.path, "headers": dict(h.headers.items()), "body": body}
            )
        path = parts.path
        headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
        status = 200
        if path.startswith("/api/"):
            status, headers, out = self._api(h.command, path)
        elif path == "/json":
            out = json.dumps({"hello": "world", "query": query}).encode()
        elif path in ("/gzip", "/br", "/zstd"):
            raw = json.dumps({"compressed": path[1:], "pad": "x" * 200}).encode()
            out = encoding.encode(raw, path[1:])
            headers.append(("Content-Encoding", path[1:]))
        elif path == "/binary":
            out = BINARY
            headers = [("Content-Type", "application/octet-stream")]
        elif path.startswith("/bytes/"):
            out = payload(int(path.rsplit("/", 1)[1]))
            headers = [("Content-Type", "application/octet-stream")]
        elif path == "/digest":
            out = json.dumps({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode()
        elif path == "/cookies":
            out = b"{}"
            headers += [
                ("Set-Cookie", "session=s3cr3t-cookie; Path=/; HttpOnly"),
                ("Set-Cookie", "b=2; Path=/"),
            ]
        elif path == "/echo":
            out = json.dumps(
                {
                    "method": h.command,
                    "body": body.decode("utf-8", "replace"),
                    "headers": dict(h.headers.items()),
                }
            ).encode()
        elif path.startswith("/operations/"):
            op = path.rsplit("/", 1)[1]
            with self._lock:
                n = self.polls[op] = self.polls.get(op, 0) + 1
            state = "Running" if n < 3 else "Succeeded"
            out = json.dumps({"id": op, "status": state, "poll": n}).encode()
            if state == "Running":
                headers.append(("Retry-After", "1"))
        elif path == "/start":
            status = 202
            out = b""
            headers = [
                ("Location", f"{self.url}/operations/op1"),
                ("Operation-Location", f"{self.url}/operations/op1"),
            ]
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            out = json.dumps({"status": status}).encode()
        else:
            status = 404
            out = json.dumps({"error": {"code": "NotFound", "message": path}}).encode()
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(out)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(out)
