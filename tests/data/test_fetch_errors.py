"""``fedmia fetch`` failures are bad input with a one-line message (exit 2), never a traceback: a target that
is a file, and a transfer cut in a way that is not an ``OSError`` (``http.client.IncompleteRead``, raised for a
chunked response that ends early), which must move on to the next mirror like any other failed download."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import io
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmia.data import fetch as fetching
from fedmia.data import load_dataset
from fedmia.experiment.cli import app

if TYPE_CHECKING:
    from conftest import LoopbackMirror  # tests/data/conftest.py: the http_mirror fixture


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


def two_mirrors(monkeypatch: pytest.MonkeyPatch, mirror: type[LoopbackMirror], archive: bytes) -> None:
    base = mirror.base
    src = fetching.SOURCES["cifar100"]
    urls = (f"{base}/first/cifar-100-binary.tar.gz", f"{base}/second/cifar-100-binary.tar.gz")
    entry = fetching.Source(**{**src.__dict__, "urls": urls, "md5": hashlib.md5(archive).hexdigest()})
    monkeypatch.setitem(fetching.SOURCES, "cifar100", entry)
    for u in urls:
        mirror.files[u[len(base) :]] = archive


def test_a_chunked_transfer_cut_short_raises_incomplete_read(tmp_path: Path, http_mirror: type[LoopbackMirror]) -> None:
    """The premise: urllib reports this cut as IncompleteRead, which is not an OSError."""
    http_mirror.files["/x"] = b"a" * 3000
    http_mirror.cut.add("/x")
    with pytest.raises(http.client.IncompleteRead):
        fetching.download(f"{http_mirror.base}/x", tmp_path / "x")
    assert not issubclass(http.client.IncompleteRead, OSError)
    assert not list(tmp_path.iterdir())  # the partial file is removed


def test_an_incomplete_read_moves_on_to_the_next_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_mirror: type[LoopbackMirror]
) -> None:
    archive = cifar100_archive([3, 4])
    two_mirrors(monkeypatch, http_mirror, archive)
    http_mirror.cut.add("/first/cifar-100-binary.tar.gz")
    result = fetch_cli("cifar100", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    assert http_mirror.requests == ["/first/cifar-100-binary.tar.gz", "/second/cifar-100-binary.tar.gz"]
    d = load_dataset("cifar100", path=str(tmp_path / "data" / "cifar-100-binary"))
    np.testing.assert_array_equal(d.y, [3, 4, 3, 4])


def test_every_mirror_cut_short_exits_2_naming_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_mirror: type[LoopbackMirror]
) -> None:
    two_mirrors(monkeypatch, http_mirror, cifar100_archive([1]))
    http_mirror.cut.update({"/first/cifar-100-binary.tar.gz", "/second/cifar-100-binary.tar.gz"})
    result = fetch_cli("cifar100", str(tmp_path))
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "could not download cifar100:" in text and "Traceback" not in result.output
    assert text.count("IncompleteRead(") == 2  # each mirror's reason
    assert "no network here" not in text  # the server answered
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "cifar-100-binary.tar.gz").exists()
