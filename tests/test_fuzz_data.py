"""The dataset file loaders, fuzzed (issue 23.5): any file gives a dataset fit to train on, or a
``DataFileError`` that names the file, never another exception.

A dataset "fit to train on" has float32 features that are all finite, int64 labels in [0, num_classes) and as
many labels as records. Each case writes a fresh file (the parse cache is off: a cached parse of an earlier
case at the same path, size and mtime must not answer for this one). Cases: Purchase-100 and Texas-100 CSVs
built from awkward fields (nan, inf, 1e39, blanks, words, ragged rows), arbitrary bytes, .npz files of
arbitrary arrays, CIFAR binary files of arbitrary length and label bytes, and LEAF JSON trees.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmia.data import load_dataset
from fedmia.data.datasets import Dataset
from fedmia.data.files import DataFileError

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.filterwarnings("ignore:loadtxt. input contained no data")  # an empty file: refused


@contextmanager
def fresh_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d, mock.patch.dict(os.environ, {"FEDMIA_CACHE_DIR": "off"}):
        yield Path(d)


def check(name: str, path: Path, shown: Path | None = None, **params: Any) -> Dataset | DataFileError:
    """Load: a sound dataset, or DataFileError naming the file (``shown``: the path the message names)."""
    try:
        d = load_dataset(name, path=str(path), **params)
    except DataFileError as exc:
        assert str(exc).strip()
        assert str(shown or path) in str(exc) or str(path.parent) in str(exc), str(exc)
        return exc
    assert d.x.dtype == np.float32 and d.y.dtype == np.int64
    assert len(d.x) == len(d.y) > 0
    assert np.isfinite(d.x).all(), "a non-finite feature passed"
    assert d.y.min() >= 0 and d.y.max() < d.num_classes
    return d


# ---- CSV (Purchase-100, Texas-100) ---------------------------------------------------------------------------

FIELDS = ["0", "1", "2", "7", "100", "-1", "0.5", "nan", "NaN", "inf", "-inf", "1e39", "-1e39", "", " ", "a", "1,"]
fields = st.sampled_from(FIELDS) | st.integers(-40000, 40000).map(str) | st.floats().map(repr)
rows = st.lists(st.lists(fields, min_size=1, max_size=5), min_size=0, max_size=6)


def csv_text(table: list[list[str]]) -> str:
    return "".join(",".join(r) + "\n" for r in table)


@FUZZ
@given(rows)
@example([["1", "0", "nan"]])
@example([["inf", "0", "1"]])
@example([["1", "1e39"]])
@example([["1", "0"], ["2", "0", "1"]])  # ragged
@example([["1.5", "0"]])
@example([["0", "1"]])  # label 0 in a 1-based file
def test_purchase100_csv(table: list[list[str]]) -> None:
    with fresh_dir() as d:
        path = d / "dataset_purchase"
        path.write_text(csv_text(table))
        check("purchase100", path)


@FUZZ
@given(st.binary(max_size=400))
def test_purchase100_arbitrary_bytes(data: bytes) -> None:
    with fresh_dir() as d:
        path = d / "dataset_purchase"
        path.write_bytes(data)
        check("purchase100", path)


@FUZZ
@given(rows, st.lists(st.lists(fields, min_size=1, max_size=2), max_size=6))
@example([["0", "1"], ["1", "0"]], [["1"], ["inf"]])
@example([["0", "nan"]], [["1"]])
def test_texas100_feats_and_labels(feats: list[list[str]], labels: list[list[str]]) -> None:
    with fresh_dir() as d:
        folder = d / "texas" / "100"
        folder.mkdir(parents=True)
        (folder / "feats").write_text(csv_text(feats))
        (folder / "labels").write_text(csv_text(labels))
        check("texas100", d, shown=folder)


# ---- .npz ------------------------------------------------------------------------------------------------------

dtypes = st.sampled_from(["float32", "float64", "int64", "int8", "uint8", "bool", "complex64", "float16", "U3"])
arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)))


@FUZZ
@given(st.dictionaries(st.sampled_from(["features", "labels", "other"]), arrays, max_size=3))
@example({"features": np.array([[1.0, np.nan]]), "labels": np.array([0])})
@example({"features": np.zeros((2, 2)), "labels": np.array([0.0, np.inf])})
@example({"features": np.array([[1e300]]), "labels": np.array([0])})
@example({"features": np.zeros((2, 2), dtype=np.complex64), "labels": np.array([0, 1])})
@example({"features": np.zeros((2, 2)), "labels": np.array([[1, 0], [0, 1]])})
def test_npz(content: dict[str, np.ndarray]) -> None:
    with fresh_dir() as d:
        path = d / "data.npz"
        np.savez(path, **content)
        check("purchase100", path)
        check("texas100", path)


# ---- CIFAR binary ------------------------------------------------------------------------------------------------

RECORD = 1 + 3 * 32 * 32


@FUZZ
@given(st.integers(0, 3), st.integers(-2, 2), st.lists(st.integers(0, 255), min_size=1, max_size=3))
def test_cifar10_binary(records: int, extra: int, labels: list[int]) -> None:
    with fresh_dir() as d:
        buf = bytearray(max(0, records * RECORD + extra))
        for i in range(records):
            if i * RECORD < len(buf):
                buf[i * RECORD] = labels[i % len(labels)]
        path = d / "data_batch_1.bin"
        path.write_bytes(bytes(buf))
        out = check("cifar10", path)
        if isinstance(out, Dataset):  # whole records, every label byte a CIFAR-10 class
            assert extra == 0 and records > 0 and max(labels[: max(1, records)]) < 10


# ---- LEAF JSON (FEMNIST) -------------------------------------------------------------------------------------------

json_leaves = st.none() | st.booleans() | st.integers(-3, 70) | st.floats() | st.text(max_size=3)
json_trees = st.recursive(
    json_leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=8
)


@st.composite
def leaf_files(draw: st.DrawFn) -> Any:
    """LEAF-shaped trees with one thing possibly wrong, or arbitrary JSON."""
    if draw(st.integers(0, 4)) == 0:
        return draw(json_trees)
    n = draw(st.integers(0, 3))
    width = draw(st.sampled_from([784, 784, 783]))
    pixel = st.sampled_from([0.0, 0.5, 1.0, float("nan"), float("inf")]) if draw(st.booleans()) else st.just(0.25)
    x = [[draw(pixel)] * width for _ in range(n)]
    y = [draw(st.integers(-1, 62)) for _ in range(n)]
    if draw(st.booleans()):
        y = [draw(st.sampled_from([0.5, "a", None]))] * n
    users = draw(st.sampled_from([["u"], ["u", "v"], []]))
    tree: dict[str, Any] = {"users": users, "num_samples": [n] * len(users), "user_data": {"u": {"x": x, "y": y}}}
    if draw(st.booleans()):
        del tree[draw(st.sampled_from(["users", "num_samples", "user_data"]))]
    return tree


@FUZZ
@given(leaf_files())
def test_femnist_json(tree: Any) -> None:
    with fresh_dir() as d:
        path = d / "all.json"
        path.write_text(json.dumps(tree))  # NaN and Infinity are written as JSON's common extension
        check("femnist", path)
