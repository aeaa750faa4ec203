"""What the fake gateways (``tests/stripe_server.py``, ``tests/adyen_server.py``) share: a
threaded HTTP server on 127.0.0.1 that hands every request to the stub's ``dispatch`` and
writes its JSON answer, and the stub's start, stop and address."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar, cast

S = TypeVar("S", bound="JsonStubServer")


@contextmanager
def running(stub: S) -> Iterator[S]:
    """``stub`` started, stopped afterwards; an exception inside the stub fails the test."""
    stub.start()
    try:
        yield stub
    finally:
        stub.stop()
    assert not stub.errors, f"the {stub.name} stub failed: {stub.errors}"


class Answer(Protocol):
    status: int
    body: Any
    headers: dict[str, str]


class JsonStubServer:
    """Subclasses set ``name`` and ``content_type``, and answer requests in ``dispatch``
    (``body`` as bytes, or as text with ``text_body``). ``errors`` collects exceptions raised
    inside the stub: a fixture asserts it is empty."""

    name = "stub"
    content_type = "application/json"
    text_body = False

    def __init__(self) -> None:
        self.errors: list[str] = []  # unexpected exceptions inside the stub
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def dispatch(
        self, method: str, path: str, headers: Mapping[str, str], body: Any
    ) -> Answer:  # pragma: no cover - every stub answers
        raise NotImplementedError

    def start(self) -> None:
        httpd = _HTTPServer(("127.0.0.1", 0), _RequestHandler)
        httpd.stub = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.name}-stub",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        """The stub's address (what a gateway's ``api_base`` is set to)."""
        if self._httpd is None:
            raise RuntimeError("the stub is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"


class _HTTPServer(ThreadingHTTPServer):
    stub: JsonStubServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) is expected; anything else is a stub bug.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            return
        self.stub.errors.append(repr(exc))
        super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def version_string(self) -> str:
        return f"{cast(_HTTPServer, self.server).stub.name}-stub/1"

    def _serve(self) -> None:
        stub = cast(_HTTPServer, self.server).stub
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        body = raw.decode() if stub.text_body else raw
        response = stub.dispatch(self.command, self.path, headers, body)
        payload = json.dumps(response.body).encode()
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", stub.content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except ConnectionError:
            pass  # the client stopped waiting; the work is done, the answer is lost

    def log_message(self, format: str, *args: Any) -> None:
        return None
