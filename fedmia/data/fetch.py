"""``fedmia fetch DATASET DIR``: download a real dataset's official files, check and unpack them.

Runs only where a network allows; nothing else in fedmia touches the network (the loaders in
``fedmia.data.files`` read what this, or the user, put on disk). Each source lists its mirrors in
the order tried, the archive's MD5 where its publisher gives one, and the path the loader reads
after unpacking, which becomes ``data.params.path`` in the printed config lines.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmia.errors import InputError

Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


class FetchError(InputError):
    """A dataset could not be fetched: unknown, not downloadable as files, unreachable or corrupt."""


@dataclass(frozen=True)
class Source:
    """Where a dataset's files come from and what unpacking them gives."""

    dataset: str
    urls: tuple[str, ...] = ()  # mirrors, tried in order
    md5: str | None = None  # the publisher's checksum of the archive, when it gives one
    produces: str = ""  # the path, relative to DIR, that data.params.path names after unpacking
    params: dict[str, Any] = field(default_factory=dict)  # further data.params of the printed snippet
    note: str = ""
    manual: str | None = None  # the steps, for a dataset that cannot be fetched as files
    # no published checksum: the unpacked CSV's first line must hold this many comma-separated fields
    first_line: tuple[str, int] | None = None

    @property
    def archive(self) -> str:
        return self.urls[0].rsplit("/", 1)[-1] if self.urls else ""


_SHOKRI = "Shokri et al. 2017's preprocessed file, as hosted by the privacytrustlab (ML Privacy Meter) group"

SOURCES: dict[str, Source] = {
    s.dataset: s
    for s in (
        Source(
            "purchase100",
            urls=(
                "https://github.com/privacytrustlab/datasets/raw/master/dataset_purchase.tgz",
                "https://www.comp.nus.edu.sg/~reza/files/dataset_purchase.tgz",
            ),
            produces="dataset_purchase",
            note=_SHOKRI,
            first_line=("dataset_purchase", 1 + 600),
        ),
        Source(
            "texas100",
            urls=(
                "https://github.com/privacytrustlab/datasets/raw/master/dataset_texas.tgz",
                "https://www.comp.nus.edu.sg/~reza/files/dataset_texas.tgz",
            ),
            produces="texas/100",
            note=_SHOKRI,
            first_line=("texas/100/feats", 6169),
        ),
        Source(
            "cifar10",
            urls=("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
            md5="c32a1d4ab5d03f1284b67883e8d87530",
            produces="cifar-10-batches-bin",
            note="CIFAR-10 binary version, from Alex Krizhevsky's page (MD5 as published there)",
        ),
        Source(
            "cifar100",
            urls=("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",),
            md5="03b5dce01913d631647c71ecec9e9cb8",
            produces="cifar-100-binary",
            params={"label": "fine"},
            note="CIFAR-100 binary version, from Alex Krizhevsky's page (MD5 as published there)",
        ),
        Source(
            "femnist",
            produces="leaf/data/femnist/data",
            manual=(
                "FEMNIST exists as files only after LEAF's preprocessing (Caldas et al. 2018), which downloads "
                "NIST Special Database 19 (by_class.zip, by_write.zip, ~1 GB) and writes JSON per writer:\n"
                "  cd DIR && git clone https://github.com/TalwalkarLab/leaf && cd leaf/data/femnist\n"
                "  ./preprocess.sh -s niid --sf 1.0 -k 0 -t sample   # all writers; --sf 0.05 for a 5% sample\n"
                "then point data.params.path at DIR/leaf/data/femnist/data (its train/ and test/ JSON are merged)"
            ),
        ),
        Source(
            "hf-disk",
            manual=(
                "hf-disk reads any Hugging Face dataset saved to disk; save one where a network allows:\n"
                "  python -c \"import datasets; datasets.load_dataset('NAME').save_to_disk('DIR/NAME')\"\n"
                "then set data.params: {path: DIR/NAME, split: train, label: COLUMN, image: COLUMN} "
                "(or features: [COLUMNS] instead of image)"
            ),
        ),
    )
}


def source(name: str) -> Source:
    if name not in SOURCES:
        raise FetchError(f"unknown dataset {name!r} for fetch; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def download(url: str, dest: Path, progress: Progress | None = None, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``dest`` (written as ``dest.part`` first, renamed when complete).

    A connection that closes before the announced Content-Length raises ``ContentTooShortError`` (a
    ``URLError``): ``read`` just returns what came, so without the check a cut transfer would be renamed
    into place as if whole. On any failure the partial file is removed.
    """
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as out:  # noqa: S310  (https table)
            total = response.headers.get("Content-Length")
            size = int(total) if total and total.isdigit() else None
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, size)
        if size is not None and done != size:
            raise urllib.error.ContentTooShortError(
                f"the connection closed after {done:,} of {size:,} bytes", (b"", None)
            )
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)


def md5sum(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def by_hand(src: Source, directory: Path) -> str:
    """What to do when the download fails: fetch the archive elsewhere and unpack it into ``directory``."""
    return (
        f"download {src.archive} by hand from {' or '.join(src.urls)}, then unpack it with "
        f"`tar xzf {src.archive} -C {directory}` so that {directory / src.produces} exists"
    )


def config_snippet(src: Source, directory: Path) -> str:
    """The ``data:`` lines of a config that reads the fetched files."""
    params = {"path": str(directory / src.produces), **src.params}
    inner = ", ".join(f"{k}: {v}" for k, v in params.items())
    return f"data:\n  dataset: {src.dataset}\n  params: {{{inner}}}"


def fetch(
    name: str,
    directory: Path,
    progress: Callable[[str], Progress | None] | None = None,
    downloader: Callable[[str, Path, Progress | None], None] | None = None,
) -> str:
    """Download ``name``'s archive into ``directory`` (mirrors in order), check its MD5 where published,
    unpack it (tar's 'data' filter: no absolute paths, links out of the folder or devices) and check the
    loader's path exists. Returns the config snippet. Raises FetchError with what to do by hand."""
    src = source(name)
    if src.manual is not None:
        raise FetchError(f"{name} cannot be fetched as files.\n{src.manual.replace('DIR', str(directory))}")
    get = downloader or download
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FetchError(f"{directory} exists and is not a directory; give a folder to download into") from None
    except OSError as exc:  # a parent that is a file, no permission, a read-only file system
        raise FetchError(f"cannot create the folder {directory}: {exc.strerror or exc}") from None
    archive = directory / src.archive
    if not archive.is_file():
        failures, reached = [], False
        for url in src.urls:
            try:
                get(url, archive, progress(url) if progress else None)
                break
            # http.client.HTTPException is not an OSError: IncompleteRead (a chunked transfer cut short),
            # BadStatusLine and the like come from a server that answered badly; try the next mirror
            except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", None) or exc
                failures.append(f"{url}: {reason}")
                # an HTTP status or a cut transfer: the server answered, so the network is not the problem
                reached |= isinstance(
                    exc, (urllib.error.HTTPError, urllib.error.ContentTooShortError, http.client.HTTPException)
                )
        else:
            hint = "" if reached else " (no network here?)"
            raise FetchError(
                f"could not download {name}{hint}: {'; '.join(failures)}. Instead, " + by_hand(src, directory)
            )
    if src.md5 is not None and (got := md5sum(archive)) != src.md5:
        bad = archive.with_name(archive.name + ".bad")
        shutil.move(archive, bad)
        raise FetchError(
            f"{archive}: MD5 {got} is not the published {src.md5} (a truncated or altered download; kept as "
            f"{bad.name}); run fetch again, or " + by_hand(src, directory)
        )
    if not hasattr(tarfile, "data_filter"):  # added in Python 3.11.4
        raise FetchError(f"unpacking safely needs Python >= 3.11.4; unpack {archive} by hand into {directory}")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(directory, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FetchError(f"{archive}: cannot unpack ({exc}); delete it and run fetch again") from None
    if not (directory / src.produces).exists():
        raise FetchError(f"{archive} unpacked, but {directory / src.produces} is missing: not the expected archive")
    if src.first_line is not None:
        csv, fields = src.first_line
        with (directory / csv).open("rb") as f:
            got = len(f.readline().split(b","))
        if got != fields:
            raise FetchError(
                f"{directory / csv}: its first record has {got} fields, not {fields}: not the expected file"
            )
    return config_snippet(src, directory)
