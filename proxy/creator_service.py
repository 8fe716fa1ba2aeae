"""A small loopback reference upstream that behaves like Azure Maps Creator's long-running-operation API.

Tests and demos use it as the "real service" that the proxy records. Standard library only.

The contract (``shared/seed/``, api-version 1.0 style, any ``api-version`` accepted)::

    POST /tilesets?api-version=2.0&datasetId=ID
        -> 202 Accepted, empty body, Location: {base}/tilesets/operations/{operationId}, Retry-After
        -> 400 OData error when datasetId is missing or empty
    GET /tilesets/operations/{operationId}
        poll 1                     -> 200 {"status": "NotStarted"} + Retry-After
        the next ``running_polls`` -> 200 {"status": "Running"} + Retry-After
        then, for ever (no Retry-After):
          datasetId "invalid..."    -> 200 {"status": "Failed", "error": {...InvalidFeature/NoGeometry...}}
          datasetId "noresource..." -> 200 {"status": "Succeeded"} without Location
          any other datasetId       -> 201 Created, Location and body "resourceLocation":
                                       {base}/tilesets/{tilesetId}
        unknown operation          -> 404 OData error
    GET /tilesets/{tilesetId}       -> 200 metadata JSON (404 OData error when unknown);
                                       ``?gzip=1`` sends it gzip-encoded with Content-Encoding: gzip
    anything else                   -> 404 OData error

``{base}`` is ``http://`` plus the request's ``Host`` header, so through a proxy the recorded URLs are
the service's own address. Progression is by poll count, never by time, so it is deterministic.
``?gzip=1`` works on every JSON response, not only on the tileset metadata.

Run it alone with ``python -m proxy.creator_service [--host H] [--port P] [--running-polls N]
[--retry-after S]``: it prints its URL on one line and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import signal
import socket
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from proxy.scenario.dates import format_created_date_time

__all__ = ["CreatorService", "format_created_date_time", "main"]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"

# The seed's failure example, word for word.
SEED_FAILURE_ERROR: dict[str, Any] = {
    "code": "InvalidFeature",
    "message": "The provided feature is invalid.",
    "details": {
        "code": "NoGeometry",
        "message": "No geometry was provided with the feature.",
    },
}


def _odata_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@dataclass
class _Operation:
    operation_id: str
    dataset_id: str
    description: str
    created: datetime
    polls: int = 0
    tileset_id: str | None = None


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Set by CreatorService before serving.
    service: CreatorService

    def process_request(self, request: Any, client_address: Any) -> None:
        self.service._connection_opened(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.service._connection_closed(request)
        super().shutdown_request(request)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CreatorService/1.0"
    # An idle keep-alive connection is dropped after this many seconds.
    timeout = 30
    # Headers and body leave in one buffered write, without Nagle/delayed-ACK stalls.
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.service.verbose:
            super().log_message(format, *args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        malformed = False
        try:
            self._read_body()
        except ValueError:
            malformed = True
            self.close_connection = True
        target = urlsplit(self.path)
        host = self.headers.get("Host") or target.netloc
        base = f"http://{host}" if host else self.server.service.url
        path = target.path or "/"
        path_with_query = path + (f"?{target.query}" if target.query else "")
        service = self.server.service
        service._record(self.command, path_with_query)
        query = {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True).items()}
        if malformed:
            response = _json(400, _odata_error("BadRequest", "The request body framing is malformed."))
            response.headers.append(("Connection", "close"))
        else:
            response = service._respond(self.command, path, query, base)
        if query.get("gzip") == "1" and response.body:
            response.body = gzip.compress(response.body, mtime=0)
            response.headers.append(("Content-Encoding", "gzip"))
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle


class CreatorService:
    """The reference upstream. ``start()`` binds (port 0 picks a free port) and serves in a thread.

    ``connections`` counts accepted TCP connections and ``requests`` lists ``(method, path_with_query)``
    in arrival order: tests use them to prove what did, or did not, reach the service.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        running_polls: int = 2,
        retry_after: int = 1,
        verbose: bool = False,
    ) -> None:
        if running_polls < 0:
            raise ValueError("running_polls must be >= 0")
        if retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        self.host = host
        self.port = port
        self.running_polls = running_polls
        self.retry_after = retry_after
        self.verbose = verbose
        self.url = ""
        self._lock = threading.Lock()
        self._operations: dict[str, _Operation] = {}
        self._tilesets: dict[str, _Operation] = {}
        self._requests: list[tuple[str, str]] = []
        self._connections = 0
        self._open: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------- lifecycle

    def start(self) -> CreatorService:
        if self._server is not None:
            raise RuntimeError("CreatorService is already started")
        server_class = _Server6 if ":" in self.host else _Server
        server = server_class((self.host, self.port), _Handler, bind_and_activate=False)
        server.service = self
        try:
            server.server_bind()
            server.server_activate()
        except BaseException:
            server.server_close()
            raise
        self._server = server
        self.port = server.server_address[1]
        shown = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in shown:
            shown = f"[{shown}]"
        self.url = f"http://{shown}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="creator-service", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            still_open = list(self._open)
        for sock in still_open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> CreatorService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------- inspection

    @property
    def connections(self) -> int:
        """How many TCP connections the service has accepted."""
        with self._lock:
            return self._connections

    @property
    def requests(self) -> list[tuple[str, str]]:
        """A copy of ``(method, path_with_query)`` for every request seen, in arrival order."""
        with self._lock:
            return list(self._requests)

    def polls(self, operation_id: str) -> int:
        """How many times the status of ``operation_id`` has been polled (0 when unknown)."""
        with self._lock:
            operation = self._operations.get(operation_id)
            return operation.polls if operation else 0

    # ------------------------------------------------------------------------- called by the server

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._open.add(sock)

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _record(self, method: str, path_with_query: str) -> None:
        with self._lock:
            self._requests.append((method, path_with_query))

    def _respond(self, method: str, path: str, query: dict[str, str], base: str) -> _Response:
        parts = [p for p in path.split("/") if p]
        if parts == ["tilesets"] and method == "POST":
            return self._create(query, base)
        if len(parts) == 3 and parts[:2] == ["tilesets", "operations"] and method == "GET":
            return self._poll(parts[2], base)
        if len(parts) == 2 and parts[0] == "tilesets" and parts[1] != "operations" and method == "GET":
            return self._tileset(parts[1], base)
        return _json(404, _odata_error("NotFound", f"No route for {method} {path}."))

    def _create(self, query: dict[str, str], base: str) -> _Response:
        dataset_id = query.get("datasetId", "")
        if not dataset_id:
            return _json(
                400,
                _odata_error("BadRequest", "The query parameter 'datasetId' is required."),
            )
        operation = _Operation(
            operation_id=str(uuid.uuid4()),
            dataset_id=dataset_id,
            description=query.get("description", f"Tileset created from dataset {dataset_id}"),
            created=datetime.now(UTC),
        )
        with self._lock:
            self._operations[operation.operation_id] = operation
        return _Response(
            202,
            [
                ("Location", f"{base}/tilesets/operations/{operation.operation_id}"),
                ("Retry-After", str(self.retry_after)),
            ],
        )

    def _poll(self, operation_id: str, base: str) -> _Response:
        with self._lock:
            operation = self._operations.get(operation_id)
            if operation is None:
                return _json(404, _odata_error("NotFound", f"Operation '{operation_id}' was not found."))
            operation.polls += 1
            polls = operation.polls
            terminal = polls > 1 + self.running_polls
            no_resource = operation.dataset_id.startswith(("invalid", "noresource"))
            succeeded_with_resource = terminal and not no_resource
            if succeeded_with_resource and operation.tileset_id is None:
                operation.tileset_id = str(uuid.uuid4())
                self._tilesets[operation.tileset_id] = operation
            tileset_id = operation.tileset_id
        body: dict[str, Any] = {
            "operationId": operation.operation_id,
            "createdDateTime": format_created_date_time(operation.created),
        }
        if not terminal:
            body["status"] = "NotStarted" if polls == 1 else "Running"
            return _json(200, body, [("Retry-After", str(self.retry_after))])
        if operation.dataset_id.startswith("invalid"):
            body["status"] = "Failed"
            body["error"] = json.loads(json.dumps(SEED_FAILURE_ERROR))
            return _json(200, body)
        body["status"] = "Succeeded"
        if tileset_id is None:
            return _json(200, body)
        resource = f"{base}/tilesets/{tileset_id}"
        body["resourceLocation"] = resource
        return _json(201, body, [("Location", resource)])

    def _tileset(self, tileset_id: str, base: str) -> _Response:
        with self._lock:
            operation = self._tilesets.get(tileset_id)
        if operation is None:
            return _json(404, _odata_error("NotFound", f"Tileset '{tileset_id}' was not found."))
        return _json(
            200,
            {
                "tilesetId": tileset_id,
                "datasetId": operation.dataset_id,
                "description": operation.description,
                "minZoom": 16,
                "maxZoom": 20,
                "bbox": [-122.13595, 47.636524, -122.1329, 47.637525],
                "ontology": "facility-2.0",
                "operationId": operation.operation_id,
                "created": operation.created.isoformat(),
                "url": f"{base}/tilesets/{tileset_id}",
            },
        )


def _json(status: int, payload: dict[str, Any], headers: list[tuple[str, str]] | None = None) -> _Response:
    body = json.dumps(payload, indent=2).encode("utf-8")
    return _Response(status, [*(headers or []), ("Content-Type", JSON_CONTENT_TYPE)], body)


def main(argv: list[str] | None = None) -> int:
    """``python -m proxy.creator_service``: print the URL, serve until SIGINT/SIGTERM, return 0."""
    parser = argparse.ArgumentParser(
        prog="python -m proxy.creator_service",
        description="A loopback service that behaves like Azure Maps Creator's long-running-operation API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port (default 8081)")
    parser.add_argument("--running-polls", type=int, default=2, help="polls answered Running (default 2)")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds (default 1)")
    parser.add_argument("--verbose", action="store_true", help="log every request on stderr")
    args = parser.parse_args(argv)
    if args.running_polls < 0 or args.retry_after < 0:
        parser.error("--running-polls and --retry-after must be >= 0")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    except ValueError:  # not the main thread: rely on KeyboardInterrupt / the caller
        pass
    try:
        service = CreatorService(
            args.host,
            args.port,
            running_polls=args.running_polls,
            retry_after=args.retry_after,
            verbose=args.verbose,
        )
        try:
            service.start()
        except OSError as exc:
            print(f"creator-service: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 2
        try:
            print(service.url, flush=True)
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            service.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
