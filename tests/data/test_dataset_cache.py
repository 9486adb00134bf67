"""The on-disk parse cache of the file-based datasets (``fedmia.data.cache``) on the small fixture files of
``test_real_datasets.py`` and ``test_corrupt_files.py``.

A second load maps the first's arrays instead of parsing (bit-identical, writable copy-on-write); an
edited, added or removed source file, other parameters, or a damaged entry mean a parse; a cache that
cannot be written, or ``FEDMIA_CACHE_DIR=off``, leaves the loaders as they were. Every test points
``FEDMIA_CACHE_DIR`` at its own folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from fedmia.data import cache, files, load_dataset
from fedmia.data.datasets import Dataset
from fedmia.data.files import DataFileError


def _sibling(module: str) -> ModuleType:
    """A test module of this folder, for its fixture writers (the suite imports test files by path, so they are
    not importable by name)."""
    spec = importlib.util.spec_from_file_location(f"_cache_fixtures_{module}", Path(__file__).with_name(f"{module}.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


real = _sibling("test_real_datasets")
corrupt = _sibling("test_corrupt_files")


def age(root: Path, seconds: float = 60.0) -> None:
    """Date every file at ``root`` ``seconds`` back: files modified in the last seconds are never cached."""
    t = time.time() - seconds
    for f in [root] if root.is_file() else root.rglob("*"):
        if f.is_file():
            os.utime(f, (t, t))


# ---- one fixture per loader: (dataset, params), its files written and dated ------------------------------


def make_texas(root: Path) -> tuple[str, dict[str, Any]]:
    real.write_texas(root)
    return "texas100", {"path": str(root)}


def make_texas_npz(root: Path) -> tuple[str, dict[str, Any]]:
    rng = np.random.default_rng(4)
    np.savez(root / "texas.npz", features=rng.integers(0, 2, size=(9, 5)).astype(np.uint8), labels=np.arange(9))
    return "texas100", {"path": str(root / "texas.npz")}


def make_purchase(root: Path) -> tuple[str, dict[str, Any]]:
    real.write_purchase(root / "dataset_purchase")
    return "purchase100", {"path": str(root)}


def make_cifar10(root: Path) -> tuple[str, dict[str, Any]]:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(corrupt.cifar_bytes([3, 9, 0]))
    (folder / "test_batch.bin").write_bytes(corrupt.cifar_bytes([1, 1]))
    return "cifar10", {"path": str(root)}


def make_cifar100(root: Path) -> tuple[str, dict[str, Any]]:
    folder = root / "cifar-100-binary"
    folder.mkdir()
    (folder / "train.bin").write_bytes(real.cifar100_bytes([1, 2], [10, 20], seed=8)[0])
    (folder / "test.bin").write_bytes(real.cifar100_bytes([3], [30], seed=9)[0])
    return "cifar100", {"path": str(root), "label": "coarse"}


def make_femnist(root: Path) -> tuple[str, dict[str, Any]]:
    real.write_leaf(root)
    return "femnist", {"path": str(root)}


def make_hf_disk(root: Path) -> tuple[str, dict[str, Any]]:
    real.write_hf_images(root / "hf")
    return "hf-disk", {"path": str(root / "hf"), "split": "train", "image": "image", "groups": "user"}


MAKERS: dict[str, Callable[[Path], tuple[str, dict[str, Any]]]] = {
    "texas100": make_texas,
    "texas100-npz": make_texas_npz,
    "purchase100": make_purchase,
    "cifar10": make_cifar10,
    "cifar100": make_cifar100,
    "femnist": make_femnist,
    "hf-disk": make_hf_disk,
}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's cache folder (not created: the first write makes it)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FEDMIA_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def made(maker: str, root: Path) -> tuple[str, dict[str, Any]]:
    name, params = MAKERS[maker](root)
    age(root)
    return name, params


def entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def assert_identical(a: Dataset, b: Dataset) -> None:
    """Same name, class count and arrays to the bit (dtype, shape, bytes); groups both absent or identical."""
    assert (a.name, a.num_classes, type(a.num_classes)) == (b.name, b.num_classes, type(b.num_classes))
    for field in ("x", "y", "groups"):
        u, v = getattr(a, field), getattr(b, field)
        assert (u is None) == (v is None), field
        if u is not None:
            assert (u.dtype, u.shape) == (v.dtype, v.shape), field
            assert u.tobytes() == v.tobytes(), field


def mapped_from(a: np.ndarray, entry: Path) -> bool:
    """Whether ``a`` is a view of a memory map of a file in ``entry``."""
    base = a.base
    return isinstance(base, np.memmap) and Path(base.filename).parent == entry


# ---- a hit is the miss, without a parse -------------------------------------------------------------------


@pytest.mark.parametrize("maker", sorted(MAKERS))
def test_miss_then_hit_is_identical_to_an_uncached_load(
    store: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, maker: str
) -> None:
    name, params = made(maker, data_dir)
    with monkeypatch.context() as m:
        m.setenv("FEDMIA_CACHE_DIR", "off")
        plain = load_dataset(name, **params)
    miss = load_dataset(name, **params)
    [entry] = entries(store)
    assert entry.name.startswith(name.replace("-", "_") + "-")
    hit = load_dataset(name, **params)
    assert_identical(plain, miss)
    assert_identical(plain, hit)
    # both loads return the entry's memory-mapped arrays: the pages are shared, the parse's copy is freed
    for d in (miss, hit):
        assert mapped_from(d.x, entry) and mapped_from(d.y, entry)
        assert d.groups is None or mapped_from(d.groups, entry)
    assert entries(store) == [entry]


@pytest.mark.parametrize(
    ("maker", "parser"),
    [
        ("femnist", "_leaf_file"),
        ("texas100", "_numeric_csv"),
        ("purchase100", "_numeric_csv"),
        ("cifar10", "read_cifar"),
    ],
)
def test_a_hit_does_not_parse(
    store: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, maker: str, parser: str
) -> None:
    name, params = made(maker, data_dir)
    first = load_dataset(name, **params)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed on a cache hit")

    monkeypatch.setattr(files, parser, refuse)
    assert_identical(first, load_dataset(name, **params))
    monkeypatch.setenv("FEDMIA_CACHE_DIR", "off")  # the oracle: without the cache the parser is called
    with pytest.raises(AssertionError, match="parsed on a cache hit"):
        load_dataset(name, **params)


def test_hit_arrays_are_writable_copy_on_write(store: Path, data_dir: Path) -> None:
    name, params = made("femnist", data_dir)
    load_dataset(name, **params)
    [entry] = entries(store)
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in entry.iterdir()}
    d = load_dataset(name, **params)
    assert d.x.flags.writeable and d.y.flags.writeable and d.groups is not None and d.groups.flags.writeable
    before = d.x[0, 0, 0, 0]
    d.x[0] = 7.0
    d.y[:] = 0
    d.groups[:] = 5
    assert d.x[0, 0, 0, 0] == 7.0 and d.y.max() == 0  # this process sees its writes
    again = load_dataset(name, **params)
    assert again.x[0, 0, 0, 0] == before and again.y.max() == 61 and again.groups is not None
    assert again.groups.max() == 2
    assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in entry.iterdir()} == digests


# ---- what makes a new parse -------------------------------------------------------------------------------


def test_an_edited_source_file_is_parsed_again(store: Path, data_dir: Path) -> None:
    name, params = made("texas100", data_dir)
    first = load_dataset(name, **params)
    feats = data_dir / "texas" / "100" / "feats"
    text = feats.read_text()
    flipped = text.replace("0", "2").replace("1", "0").replace("2", "1")  # same size, other values
    assert len(flipped) == len(text) and flipped != text
    feats.write_text(flipped)
    age(feats, seconds=30)  # another mtime, still old enough to cache
    second = load_dataset(name, **params)
    np.testing.assert_array_equal(second.x, 1 - first.x)
    assert len(entries(store)) == 2
    assert_identical(second, load_dataset(name, **params))


def test_an_added_or_removed_leaf_file_is_parsed_again(store: Path, data_dir: Path) -> None:
    name, params = made("femnist", data_dir)
    assert load_dataset(name, **params).n == 11
    extra = data_dir / "test" / "all_data_1_niid_0_keep_0_test_9.json"
    extra.write_text(json.dumps(real.leaf_tree({"f0004_01": [9, 9]}, 7)))
    age(extra)
    with_extra = load_dataset(name, **params)
    assert with_extra.n == 13 and with_extra.groups is not None and with_extra.groups.max() == 3
    extra.unlink()
    assert load_dataset(name, **params).n == 11  # the first entry again
    assert len(entries(store)) == 2


def test_a_missing_source_file_raises_the_loaders_error_despite_an_entry(
    store: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, params = made("texas100", data_dir)
    load_dataset(name, **params)
    (data_dir / "texas" / "100" / "labels").unlink()
    with pytest.raises(DataFileError) as cached:
        load_dataset(name, **params)
    monkeypatch.setenv("FEDMIA_CACHE_DIR", "off")
    with pytest.raises(DataFileError) as plain:
        load_dataset(name, **params)
    assert str(cached.value) == str(plain.value) and "texas/100/labels" in str(cached.value)
    with pytest.raises(DataFileError, match="no \\*.json files"):  # femnist's discovery error, unchanged
        load_dataset("femnist", path=str(data_dir))


def test_fine_and_coarse_labels_are_two_entries(store: Path, data_dir: Path) -> None:
    make_cifar100(data_dir)
    age(data_dir)
    for _ in range(3):  # the two misses, then hits: neither entry answers for the other
        fine = load_dataset("cifar100", path=str(data_dir))
        coarse = load_dataset("cifar100", path=str(data_dir), label="coarse")
        assert (fine.num_classes, fine.y.tolist()) == (100, [30, 10, 20])
        assert (coarse.num_classes, coarse.y.tolist()) == (20, [3, 1, 2])
        assert len(entries(store)) == 2
    assert_identical(fine, load_dataset("cifar100", path=str(data_dir), label="fine"))  # the default, spelled out
    assert len(entries(store)) == 2


def test_recent_files_are_parsed_but_not_stored(store: Path, data_dir: Path) -> None:
    """A file written in the last seconds could be rewritten within one tick of the mtime clock, at the same
    size: its key could not tell the two apart, so nothing is stored until it is older."""
    name, params = MAKERS["purchase100"](data_dir)
    d = load_dataset(name, **params)
    assert entries(store) == [] and d.n == 10
    age(data_dir)
    load_dataset(name, **params)
    assert len(entries(store)) == 1


def test_a_file_changed_during_the_parse_is_not_stored(
    store: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, params = made("femnist", data_dir)
    parse = files._leaf_file
    victim = data_dir / "test" / "all_data_0_niid_0_keep_0_test_9.json"

    def parse_then_touch(f: Path) -> dict[str, Any]:
        age(victim, seconds=10)  # another process rewrites a file while this one reads
        return parse(f)

    monkeypatch.setattr(files, "_leaf_file", parse_then_touch)
    assert load_dataset(name, **params).n == 11
    assert entries(store) == []


# ---- damaged entries, unwritable folders, off -------------------------------------------------------------


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:-100])


DAMAGE: dict[str, Callable[[Path], None]] = {
    "x-truncated": lambda e: _truncate(e / "x.npy"),
    "y-truncated-to-header": lambda e: (e / "y.npy").write_bytes((e / "y.npy").read_bytes()[:60]),
    "groups-empty": lambda e: (e / "groups.npy").write_bytes(b""),
    "x-padded": lambda e: (e / "x.npy").write_bytes((e / "x.npy").read_bytes() + b"\0" * 16),
    "x-header-garbage": lambda e: (e / "x.npy").write_bytes(b"\x93NUMPY\x01\x00{garbage" + b"\0" * 4000),
    "x-missing": lambda e: (e / "x.npy").unlink(),
    "meta-truncated": lambda e: (e / "meta.json").write_text((e / "meta.json").read_text()[:-5]),
    "meta-missing": lambda e: (e / "meta.json").unlink(),
    "labels-out-of-range": lambda e: np.save(e / "y.npy", np.full(11, 99, np.int64)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_entry_is_parsed_again_and_replaced(
    store: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    name, params = made("femnist", data_dir)
    first = load_dataset(name, **params)
    [entry] = entries(store)
    intact = {f.name: f.read_bytes() for f in entry.iterdir()}
    del first
    DAMAGE[damage](entry)
    assert_identical(load_dataset(name, **params), _plain(monkeypatch, name, params))
    assert [e.name for e in entries(store)] == [entry.name]  # replaced in place, nothing left beside it
    assert {f.name: f.read_bytes() for f in entry.iterdir()} == intact
    monkeypatch.setattr(files, "_leaf_file", lambda f: pytest.fail("parsed on a hit"))
    load_dataset(name, **params)  # the repaired entry is a hit


def _plain(monkeypatch: pytest.MonkeyPatch, name: str, params: dict[str, Any]) -> Dataset:
    with monkeypatch.context() as m:
        m.setenv("FEDMIA_CACHE_DIR", "off")
        return load_dataset(name, **params)


def test_an_unwritable_cache_folder_falls_back_to_the_parsed_arrays(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("FEDMIA_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # cannot be created, even as root
    name, params = made("femnist", data_dir)
    with caplog.at_level(logging.DEBUG, logger="fedmia.data.cache"):
        d = load_dataset(name, **params)
    assert_identical(d, _plain(monkeypatch, name, params))
    assert "cannot write" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "data"]


def test_a_full_disk_while_writing_falls_back_and_leaves_no_temporary_folder(
    store: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, params = made("femnist", data_dir)
    save = np.save

    def full(file: Any, arr: Any, *args: Any, **kwargs: Any) -> None:
        if str(file).endswith("groups.npy"):  # after x and y were written
            raise OSError(28, "No space left on device")
        save(file, arr, *args, **kwargs)

    monkeypatch.setattr(cache.np, "save", full)
    assert_identical(load_dataset(name, **params), _plain(monkeypatch, name, params))
    assert list(store.iterdir()) == []


def test_off_disables_the_cache(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMIA_CACHE_DIR", "OFF")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    name, params = made("texas100", data_dir)
    d = load_dataset(name, **params)
    assert d.n == 12 and not isinstance(d.x.base, np.memmap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_default_folder_follows_xdg_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDMIA_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "fedmia" / "datasets"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "fedmia" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "fedmia" / "datasets"
    monkeypatch.setenv("FEDMIA_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"


# ---- two processes at once ---------------------------------------------------------------------------------


def test_the_second_writer_uses_the_first_writers_entry(store: Path, data_dir: Path) -> None:
    """Two processes that parsed at once both write a temporary folder; the first rename wins and the second
    process maps the winner's entry, removing its own folder."""
    name, params = made("femnist", data_dir)
    parsed = files.femnist.__wrapped__(**params)  # type: ignore[attr-defined]
    key, racy = cache._fingerprint(
        "fedmia.data.files.femnist", {"path": params["path"]}, files._leaf_files(Path(params["path"]))
    )
    assert not racy
    entry = store / f"femnist-{cache._digest(key)}"
    first = cache._write(entry, key, parsed)
    [winner] = entries(store)
    assert first is not None and winner == entry
    x_inode = (entry / "x.npy").stat().st_ino
    second = cache._write(entry, key, parsed)
    assert second is not None and mapped_from(second.x, entry)
    assert entries(store) == [entry] and (entry / "x.npy").stat().st_ino == x_inode  # the winner's files, kept
    assert_identical(second, parsed)
    assert_identical(load_dataset(name, **params), parsed)  # and the loader's own key finds that same entry
    assert entries(store) == [entry]
