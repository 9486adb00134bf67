"""A loopback HTTP mirror for the download tests (``fedmia fetch``): no network leaves the machine."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest


class LoopbackMirror(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` by path. A path in ``truncate`` announces its full length and sends half of it; a
    path in ``cut`` answers with a chunked body that stops inside its first chunk (urllib's
    ``IncompleteRead``, not an ``OSError``). ``requests``: the paths asked for, in order; ``base``: the URL."""

    protocol_version = "HTTP/1.1"
    files: ClassVar[dict[str, bytes]] = {}
    truncate: ClassVar[set[str]] = set()
    cut: ClassVar[set[str]] = set()
    requests: ClassVar[list[str]] = []
    base: ClassVar[str] = ""

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        self.requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.path in self.cut:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(f"{len(body):x}\r\n".encode() + body[: len(body) // 3])  # no chunk end, no 0-chunk
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in self.truncate else body)
        if self.path in self.truncate:
            self.close_connection = True

    def log_message(self, *_: Any) -> None:  # keep the test output clean
        pass


@pytest.fixture
def http_mirror() -> Iterator[type[LoopbackMirror]]:
    """A local HTTP server with its own empty ``files``, ``truncate``, ``cut`` and ``requests``; yields its
    handler class, whose ``base`` is the server's URL."""
    state = {"files": {}, "truncate": set(), "cut": set(), "requests": []}
    handler: type[LoopbackMirror] = type("Mirror", (LoopbackMirror,), state)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()
