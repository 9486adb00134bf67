"""``fedmia fetch`` failures are bad input with a one-line message (exit 2), never a traceback: a target that
is a file, and a transfer cut in a way that is not an ``OSError`` (``http.client.IncompleteRead``, raised for a
chunked response that ends early), which must move on to the next mirror like any other failed download."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmia.data import fetch as fetching
from fedmia.data import load_dataset
from fedmia.experiment.cli import app


def fetch_cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["fetch", *args])


def flat(text: str) -> str:
    return " ".join(text.split())


def cifar100_archive(fine: list[int]) -> bytes:
    records = b"".join(bytes([0, f]) + bytes(3072) for f in fine)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("cifar-100-binary/train.bin", "cifar-100-binary/test.bin"):
            info = tarfile.TarInfo(name)
            info.size = len(records)
            tar.addfile(info, io.BytesIO(records))
    return buf.getvalue()


@pytest.mark.parametrize("dataset", ["cifar10", "purchase100"])
def test_fetch_into_an_existing_file_exits_2_and_leaves_it(tmp_path: Path, dataset: str) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    result = fetch_cli(dataset, str(target))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert f"error: {target} exists and is not a directory" in flat(result.output)
    assert target.read_text() == "keep me\n"


def test_fetch_under_a_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    result = fetch_cli("cifar10", str(tmp_path / "f" / "data"))
    assert result.exit_code == 2, result.output
    assert f"cannot create the folder {tmp_path / 'f' / 'data'}: Not a directory" in flat(result.output)


class _Mirror(http.server.BaseHTTPRequestHandler):
    """Serves ``files``; a path in ``cut`` answers with a chunked body that stops inside its first chunk."""

    protocol_version = "HTTP/1.1"
    files: ClassVar[dict[str, bytes]] = {}
    cut: ClassVar[set[str]] = set()
    requests: ClassVar[list[str]] = []

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
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(_Mirror, "files", {})
    monkeypatch.setattr(_Mirror, "cut", set())
    monkeypatch.setattr(_Mirror, "requests", [])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def two_mirrors(monkeypatch: pytest.MonkeyPatch, base: str, archive: bytes) -> None:
    src = fetching.SOURCES["cifar100"]
    urls = (f"{base}/first/cifar-100-binary.tar.gz", f"{base}/second/cifar-100-binary.tar.gz")
    entry = fetching.Source(**{**src.__dict__, "urls": urls, "md5": hashlib.md5(archive).hexdigest()})
    monkeypatch.setitem(fetching.SOURCES, "cifar100", entry)
    for u in urls:
        _Mirror.files[u[len(base) :]] = archive


def test_a_chunked_transfer_cut_short_raises_incomplete_read(tmp_path: Path, mirror: str) -> None:
    """The premise: urllib reports this cut as IncompleteRead, which is not an OSError."""
    _Mirror.files["/x"] = b"a" * 3000
    _Mirror.cut.add("/x")
    with pytest.raises(http.client.IncompleteRead):
        fetching.download(f"{mirror}/x", tmp_path / "x")
    assert not issubclass(http.client.IncompleteRead, OSError)
    assert not list(tmp_path.iterdir())  # the partial file is removed


def test_an_incomplete_read_moves_on_to_the_next_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror: str
) -> None:
    archive = cifar100_archive([3, 4])
    two_mirrors(monkeypatch, mirror, archive)
    _Mirror.cut.add("/first/cifar-100-binary.tar.gz")
    result = fetch_cli("cifar100", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    assert _Mirror.requests == ["/first/cifar-100-binary.tar.gz", "/second/cifar-100-binary.tar.gz"]
    d = load_dataset("cifar100", path=str(tmp_path / "data" / "cifar-100-binary"))
    np.testing.assert_array_equal(d.y, [3, 4, 3, 4])


def test_every_mirror_cut_short_exits_2_naming_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror: str
) -> None:
    two_mirrors(monkeypatch, mirror, cifar100_archive([1]))
    _Mirror.cut.update({"/first/cifar-100-binary.tar.gz", "/second/cifar-100-binary.tar.gz"})
    result = fetch_cli("cifar100", str(tmp_path))
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "could not download cifar100:" in text and "Traceback" not in result.output
    assert text.count("IncompleteRead(") == 2  # each mirror's reason
    assert "no network here" not in text  # the server answered
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "cifar-100-binary.tar.gz").exists()
