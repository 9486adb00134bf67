"""Loaders for real datasets that users download themselves (no network access at run time).

Each parses a documented on-disk format without unpickling anything, and reports a missing,
truncated or malformed file as a ``DataFileError`` that names the file and the problem; a missing
file's message also says which path and format were expected and how to get them (``fedmia fetch``).

- ``purchase100``: ``dataset_purchase`` (CSV ``label,f1..f600``) or a ``.npz`` (``features``, ``labels``);
  197,324 records x 600 binary features, 100 classes.
- ``texas100``: ``texas/100/feats`` + ``texas/100/labels`` (CSV) or a ``.npz``; 67,330 x 6,169 binary, 100 classes.
- ``cifar10``: ``cifar-10-batches-bin/*_batch*.bin`` (1 label byte + 3,072 pixel bytes a record); 60,000 x 3x32x32.
- ``cifar100``: ``cifar-100-binary/{train,test}.bin`` (coarse byte, fine byte, 3,072 pixel bytes); 100 (20) classes.
- ``femnist``: LEAF's ``data/femnist/data/{train,test}/*.json``; ~805k x 1x28x28, 62 classes, 3,550 writers.
- ``hf-disk``: a folder written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``'s); any records.

Parsed datasets are cached on disk (``fedmia.data.cache``): the first load writes the arrays as ``.npy``
files, and later loads in any process (every Ray actor of a federation) memory-map them copy-on-write
instead of parsing again, sharing the pages. The cache lives in ``$FEDMIA_CACHE_DIR``, else
``$XDG_CACHE_HOME/fedmia/datasets`` or ``~/.cache/fedmia/datasets``; ``FEDMIA_CACHE_DIR=off`` turns it off.
An entry is keyed by the loader, its parameters and each source file's path, size and mtime, so an edited
file is parsed again; a cache that cannot be written, or a damaged entry, falls back to parsing.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedmia.data.cache import parse_cache
from fedmia.data.datasets import DATASETS, Dataset, DatasetTraits, first_nonfinite
from fedmia.errors import InputError


class DataFileError(InputError):
    """A dataset file is missing, truncated or malformed."""


# What each file-based dataset expects on disk: the message of a missing file quotes it.
EXPECTED: dict[str, str] = {
    "purchase100": (
        "the file 'dataset_purchase' unpacked from dataset_purchase.tgz (Shokri et al.'s Purchase-100: one "
        "record a line, 'label,f1,...,f600', labels 1..100), a folder holding it, or a .npz with arrays "
        "'features' (n, d) and 'labels' (n,) from 0 or one-hot (n, classes)"
    ),
    "texas100": (
        "the folder unpacked from dataset_texas.tgz (Shokri et al.'s Texas-100: 'texas/100/feats', one record a "
        "line of 6,169 comma-separated 0/1 features, and 'texas/100/labels', one label 1..100 a line), the "
        "'texas/100' folder itself, or a .npz with arrays 'features' (n, d) and 'labels' (n,) from 0 or one-hot"
    ),
    "cifar10": (
        "the folder 'cifar-10-batches-bin' unpacked from cifar-10-binary.tar.gz (data_batch_1..5.bin, "
        "test_batch.bin: each record 1 label byte and 3,072 pixel bytes), its parent, or one such .bin file"
    ),
    "cifar100": (
        "the folder 'cifar-100-binary' unpacked from cifar-100-binary.tar.gz (train.bin, test.bin: each record "
        "1 coarse-label byte, 1 fine-label byte and 3,072 pixel bytes), its parent, or one such .bin file"
    ),
    "femnist": (
        "LEAF's preprocessed FEMNIST: a folder of JSON files (its 'train/' and 'test/' subfolders are read "
        "too), or one JSON file, each {'users': [...], 'num_samples': [...], 'user_data': {user: {'x': "
        "[[784 floats]], 'y': [labels 0..61]}}}; made by LEAF's data/femnist/preprocess.sh"
    ),
}


def _missing(name: str, p: Path) -> DataFileError:
    return DataFileError(
        f"{name}: dataset file not found: {p}. Expected {EXPECTED[name]}. "
        f"`fedmia fetch {name} DIR` downloads it where a network allows (see docs/datasets.md, 'Real datasets')."
    )


def _require(path: str | Path, name: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise _missing(name, p)
    return p


def _read_error(p: Path, exc: OSError) -> DataFileError:
    return DataFileError(f"cannot read the data file {p}: {exc.strerror or exc}")


def _numeric_csv(p: Path) -> np.ndarray:
    """A comma-separated numeric file as a 2-D float32 array (one row a line).

    Parsed as small integers first (Texas' and Purchase's 0/1 features and labels), which numpy reads
    about ten times faster than floats; a file with other values is read again as floats."""
    try:
        return np.loadtxt(p, delimiter=",", dtype=np.int16, ndmin=2).astype(np.float32)
    except (ValueError, OverflowError):
        pass
    except OSError as exc:
        raise _read_error(p, exc) from None
    try:
        return np.loadtxt(p, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise DataFileError(f"{p}: not a numeric CSV ({exc})") from None
    except OSError as exc:
        raise _read_error(p, exc) from None


def _finite(a: np.ndarray, where: str, what: str = "", first_column: int = 1) -> None:
    """Refuse a NaN or infinity in ``a`` (rows are records), naming ``where``, the row and the column.

    ``first_column``: the 1-based column number of ``a``'s first column in the file (2 for purchase100's
    features, after the label). A value too large for float32 (above ~3.4e38) is read as infinity too."""
    hit = first_nonfinite(a)
    if hit is None:
        return
    row, col = hit
    value = a.reshape(len(a), -1)[row, col]
    raise DataFileError(
        f"{where}: {what}row {row + 1}, column {col + first_column} is {value}, not a finite number (a NaN or "
        "infinity would make every model output NaN and every attack a tie); fix or drop that record"
    )


def _one_based(labels: np.ndarray, p: Path) -> np.ndarray:
    """Labels 1..K (the Shokri et al. files) as int64 0..K-1."""
    if labels.size == 0:
        raise DataFileError(f"{p}: no labels")
    _finite(labels.reshape(-1, 1), str(p), "the labels' ")
    if not np.all(labels == np.round(labels)) or labels.min() < 1:
        raise DataFileError(f"{p}: labels must be integers starting at 1")
    return labels.astype(np.int64) - 1


def _npz(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (n, d), labels int64 (n,)) of a .npz holding 'features' and 'labels'.

    Labels are class ids from 0 (n,) or one-hot rows (n, classes), the latter as in the widely shared
    purchase100.npz / texas100.npz conversions of Shokri et al.'s files."""
    try:
        with p.open("rb") as fh:
            if fh.read(4) != b"PK\x03\x04":  # np.load reads a non-zip file another way
                raise DataFileError(f"{p}: not a readable .npz (not a zip archive of .npy arrays)")
        with np.load(p, allow_pickle=False) as z:
            missing = sorted({"features", "labels"} - set(z.files))
            if missing:
                raise DataFileError(
                    f"{p}: no array {' or '.join(repr(m) for m in missing)}; it holds {sorted(z.files) or 'nothing'}"
                )
            x, labels = z["features"], z["labels"]
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DataFileError(f"{p}: not a readable .npz ({exc})") from None
    except ValueError as exc:  # object arrays (refused) and malformed members
        raise DataFileError(f"{p}: not a numeric .npz ({exc})") from None
    except OSError as exc:
        raise _read_error(p, exc) from None
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise DataFileError(f"{p}: 'features' must be a numeric (n, d) array, got {x.dtype} {x.shape}")
    if np.iscomplexobj(x):
        raise DataFileError(f"{p}: 'features' must be real numbers, got {x.dtype}")
    with np.errstate(over="ignore"):  # a float64 value beyond float32's range becomes infinite: refused next
        x = x.astype(np.float32, copy=False)
    _finite(x, str(p), "'features' ")
    if labels.ndim == 2:
        if not (np.isin(labels, (0, 1)).all() and (labels.sum(axis=1) == 1).all()):
            raise DataFileError(f"{p}: 2-D 'labels' must be one-hot rows (a single 1 each)")
        labels = labels.argmax(axis=1)
    if labels.ndim != 1 or len(labels) != len(x):
        raise DataFileError(f"{p}: 'labels' {labels.shape} does not match 'features' {x.shape}")
    if len(labels) == 0:
        raise DataFileError(f"{p}: holds no records")
    if np.issubdtype(labels.dtype, np.number) and not np.iscomplexobj(labels):
        _finite(labels.reshape(-1, 1), str(p), "'labels' ")
    if (
        not np.issubdtype(labels.dtype, np.number)
        or np.iscomplexobj(labels)
        or not np.all(labels == np.round(labels))
        or labels.min() < 0
    ):
        raise DataFileError(f"{p}: 'labels' must be integer class ids from 0 (or one-hot rows)")
    return x.astype(np.float32), labels.astype(np.int64)


def _tabular(name: str, x: np.ndarray, y: np.ndarray) -> Dataset:
    return Dataset(name, x, y, int(y.max()) + 1)


def _purchase_files(path: str | Path, **_: Any) -> list[Path]:
    """The file purchase100 reads at ``path`` (a folder means its 'dataset_purchase'), not checked."""
    p = Path(path).expanduser()
    return [p / "dataset_purchase" if p.is_dir() else p]


@DATASETS.register("purchase100")
@parse_cache(_purchase_files)
def purchase100(path: str) -> Dataset:
    """Purchase-100 (Shokri et al. 2017): the CSV 'dataset_purchase' (rows 'label,f1..f600', labels 1..100),
    a folder holding it, or a .npz with 'features' and 'labels'."""
    p = _require(_purchase_files(path)[0], "purchase100")
    if p.suffix == ".npz":
        return _tabular("purchase100", *_npz(p))
    raw = _numeric_csv(p)
    if raw.shape[1] < 2:
        raise DataFileError(f"{p}: expected a label column and feature columns, got {raw.shape[1]} column(s)")
    _finite(raw, str(p))  # column 1 is the label
    return _tabular("purchase100", raw[:, 1:], _one_based(raw[:, 0], p))


def _texas_files(path: str | Path, **_: Any) -> list[Path]:
    """The files texas100 reads at ``path``, not checked: [the .npz] or [feats, labels]."""
    p = Path(path).expanduser()
    if p.suffix == ".npz":
        return [p]
    if p.is_dir():
        folder = p / "texas" / "100" if (p / "texas" / "100").is_dir() else p
        feats = folder / "feats"
    else:
        feats = p
    return [feats, feats.parent / "labels"]


@DATASETS.register("texas100")
@parse_cache(_texas_files)
def texas100(path: str) -> Dataset:
    """Texas-100 (Shokri et al. 2017; hospital discharge records): 'texas/100/feats' (6,169 comma-separated
    0/1 features a line) with 'texas/100/labels' (one label 1..100 a line), or a .npz with 'features' and
    'labels'. ``path``: the unpacked folder, its 'texas/100' folder, the 'feats' file, or the .npz."""
    files = _texas_files(path)
    if len(files) == 1:
        return _tabular("texas100", *_npz(_require(files[0], "texas100")))
    feats, labels_file = files
    x = _numeric_csv(_require(feats, "texas100"))
    _finite(x, str(feats))
    raw = _numeric_csv(_require(labels_file, "texas100"))
    if raw.shape[1] != 1:
        raise DataFileError(f"{labels_file}: expected one label a line, got {raw.shape[1]} columns")
    if len(raw) != len(x):
        raise DataFileError(f"{feats} has {len(x)} records but {labels_file} has {len(raw)} labels")
    return _tabular("texas100", x, _one_based(raw[:, 0], labels_file))


# ---- CIFAR binary versions: one reader, the record layout a parameter ---------------------------------

_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """A CIFAR 'binary version' record: ``len(classes)`` label bytes, then 3x32x32 pixel bytes
    (channel-major, rows in order). ``label`` picks which label byte is the record's class."""

    name: str
    title: str
    folder: str  # the folder the archive unpacks to
    pattern: str  # the batch files inside it
    classes: tuple[int, ...]  # number of classes of each label byte, in record order
    label: int = 0

    @property
    def record(self) -> int:
        return len(self.classes) + _PIXELS


CIFAR10 = CifarLayout("cifar10", "CIFAR-10", "cifar-10-batches-bin", "*_batch*.bin", (10,))
CIFAR100_FINE = CifarLayout("cifar100", "CIFAR-100", "cifar-100-binary", "*.bin", (20, 100), label=1)
CIFAR100_COARSE = CifarLayout("cifar100", "CIFAR-100", "cifar-100-binary", "*.bin", (20, 100), label=0)


def _cifar_files(path: str | Path, layout: CifarLayout) -> list[Path]:
    """The batch files at ``path`` (a file, the unpacked folder or its parent), in reading order."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return [_require(p, layout.name)]
    folder = p / layout.folder if not any(p.glob(layout.pattern)) and (p / layout.folder).is_dir() else p
    files = sorted(folder.glob(layout.pattern))
    if not files:
        raise DataFileError(f"no {layout.title} {layout.pattern} files in {folder}. Expected {EXPECTED[layout.name]}")
    return files


def read_cifar(path: str | Path, layout: CifarLayout) -> Dataset:
    """All records of the batch files at ``path`` (a file, the unpacked folder or its parent), read with
    numpy as fixed-size records: never unpickled."""
    files = _cifar_files(path, layout)
    xs, ys = [], []
    n_labels = len(layout.classes)
    for f in files:
        try:
            buf = np.fromfile(f, dtype=np.uint8)
        except OSError as exc:
            raise _read_error(f, exc) from None
        if buf.size == 0 or buf.size % layout.record:
            raise DataFileError(
                f"{f}: {buf.size} bytes is not a whole number of {layout.record}-byte {layout.title} records "
                "(truncated?)"
            )
        rec = buf.reshape(-1, layout.record)
        for i, k in enumerate(layout.classes):
            if rec[:, i].max() >= k:
                which = f"label byte {i + 1}" if n_labels > 1 else "label byte"
                raise DataFileError(f"{f}: {which} above {k - 1}; not a {layout.title} binary file")
        ys.append(rec[:, layout.label].astype(np.int64))
        xs.append(rec[:, n_labels:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return Dataset(layout.name, np.concatenate(xs), np.concatenate(ys), layout.classes[layout.label])


@DATASETS.register("cifar10", traits=DatasetTraits(image=True))
@parse_cache(lambda path: _cifar_files(path, CIFAR10))
def cifar10(path: str) -> Dataset:
    """CIFAR-10 'binary version': a folder of ``data_batch_*.bin`` / ``test_batch.bin`` files
    (or a single such file), each record one label byte followed by 3x32x32 pixel bytes."""
    return read_cifar(path, CIFAR10)


@DATASETS.register("cifar100", traits=DatasetTraits(image=True))
@parse_cache(lambda path, label: _cifar_files(path, CIFAR100_FINE))  # fine and coarse read the same files
def cifar100(path: str, label: Literal["fine", "coarse"] = "fine") -> Dataset:
    """CIFAR-100 'binary version': ``train.bin`` / ``test.bin``, each record a coarse-label byte (20 classes),
    a fine-label byte (100 classes) and 3x32x32 pixel bytes; ``label`` picks the fine or coarse class."""
    return read_cifar(path, CIFAR100_FINE if label == "fine" else CIFAR100_COARSE)


# ---- FEMNIST (LEAF JSON) --------------------------------------------------------------------------------

FEMNIST_PIXELS = 28 * 28
FEMNIST_CLASSES = 62


def _leaf_files(p: Path) -> list[Path]:
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise _missing("femnist", p)
    files = [f for d in (p, p / "train", p / "test") if d.is_dir() for f in sorted(d.glob("*.json"))]
    if not files:
        raise DataFileError(
            f"femnist: no *.json files in {p} (nor in its train/ or test/). Expected {EXPECTED['femnist']}"
        )
    return files


def _leaf_file(f: Path) -> dict[str, Any]:
    try:
        with f.open("rb") as fh:
            tree = json.load(fh)
    except OSError as exc:
        raise _read_error(f, exc) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFileError(f"{f}: not valid JSON ({exc})") from None
    if not isinstance(tree, dict) or not {"users", "user_data"} <= tree.keys():
        keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise DataFileError(f"{f}: not a LEAF file: expected keys 'users', 'num_samples', 'user_data'; got {keys}")
    return tree


@DATASETS.register("femnist", traits=DatasetTraits(image=True))
@parse_cache(lambda path: _leaf_files(Path(path).expanduser()))
def femnist(path: str) -> Dataset:
    """FEMNIST (Caldas et al. 2018, LEAF): handwritten digits and letters (62 classes) as 1x28x28 images,
    each record keeping its writer as its group (``Dataset.groups``) for the 'natural' partitioner.

    ``path``: LEAF's output folder ``data/femnist/data`` (its ``train/`` and ``test/`` JSON files are read
    and merged: fedmia makes its own membership split), a folder of JSON files, or one JSON file. A writer
    in several files is one group. Pixel values are kept as LEAF wrote them."""
    p = Path(path).expanduser()
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    writers: list[str] = []
    for f in _leaf_files(p):
        tree = _leaf_file(f)
        users, data = tree["users"], tree["user_data"]
        counts = tree.get("num_samples")
        if not isinstance(users, list) or not isinstance(data, dict):
            raise DataFileError(f"{f}: 'users' must be a list and 'user_data' a mapping")
        if counts is not None and (not isinstance(counts, list) or len(counts) != len(users)):
            raise DataFileError(f"{f}: 'num_samples' must list one count per user ({len(users)} users)")
        for i, user in enumerate(users):
            if user not in data:
                raise DataFileError(f"{f}: user {user!r} is listed in 'users' but has no 'user_data'")
            rec = data[user]
            if not isinstance(rec, dict) or "x" not in rec or "y" not in rec:
                raise DataFileError(f"{f}: user_data[{user!r}] must hold 'x' and 'y'")
            try:
                x = np.asarray(rec["x"], dtype=np.float32)
                y = np.asarray(rec["y"])
            except (ValueError, TypeError) as exc:
                raise DataFileError(f"{f}: user {user!r}: 'x' is not a list of numeric rows ({exc})") from None
            if x.ndim != 2 or x.shape[1] != FEMNIST_PIXELS:
                raise DataFileError(
                    f"{f}: user {user!r}: each 'x' row must hold {FEMNIST_PIXELS} pixels (28x28), got shape {x.shape}"
                )
            _finite(x, str(f), f"user {user!r}: 'x' ")
            if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
                raise DataFileError(f"{f}: user {user!r}: 'y' must be {len(x)} integer labels, got {y.dtype} {y.shape}")
            if len(y) and (y.min() < 0 or y.max() >= FEMNIST_CLASSES):
                raise DataFileError(f"{f}: user {user!r}: labels must lie in 0..{FEMNIST_CLASSES - 1}")
            if counts is not None and counts[i] != len(y):
                raise DataFileError(f"{f}: user {user!r}: num_samples says {counts[i]} but 'y' holds {len(y)}")
            xs.append(x)
            ys.append(y.astype(np.int64))
            writers += [str(user)] * len(y)
    if not writers:
        raise DataFileError(f"femnist: the LEAF files at {p} hold no records")
    _, groups = np.unique(np.asarray(writers), return_inverse=True)  # writer ids 0.. in sorted name order
    x = np.concatenate(xs).reshape(-1, 1, 28, 28)
    return Dataset("femnist", x, np.concatenate(ys), FEMNIST_CLASSES, groups=groups.astype(np.int64))


# ---- any Hugging Face dataset saved with save_to_disk ---------------------------------------------------


def _column(ds: Any, name: str, role: str, where: Path) -> Any:
    if name not in ds.column_names:
        raise DataFileError(f"{where}: no column {name!r} (the {role}); its columns: {', '.join(ds.column_names)}")
    return ds[name]


def _image_array(values: Any, col: str, where: Path) -> np.ndarray:
    """Images (PIL or arrays) as float32 (n, C, H, W); 8-bit pixels scaled to [0, 1]."""
    try:
        arrays = [np.asarray(v) for v in values]
    except (TypeError, ValueError, OSError) as exc:
        raise DataFileError(f"{where}: column {col!r} does not hold images ({exc})") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataFileError(f"{where}: images of column {col!r} differ in shape ({sorted(shapes)[:3]}); resize them")
    x = np.stack(arrays) if arrays else np.zeros((0, 1, 1, 1))
    if x.ndim == 3:  # (n, H, W): one channel
        x = x[:, None]
    elif x.ndim == 4:  # (n, H, W, C): channels last, as PIL gives them
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataFileError(f"{where}: column {col!r}: images must be (H, W) or (H, W, C), got {x.shape[1:]}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise DataFileError(f"{where}: column {col!r} does not hold numeric images ({x.dtype})")
    x = (x / 255.0 if x.dtype == np.uint8 else x).astype(np.float32)
    _finite(x, str(where), f"column {col!r}: image ", first_column=1)
    return x


def _feature_array(ds: Any, cols: Sequence[str], where: Path) -> np.ndarray:
    parts = []
    for col in cols:
        _column(ds, col, "features", where)
        try:
            a = np.asarray(ds.with_format("numpy")[col][:], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DataFileError(f"{where}: column {col!r} is not numeric ({exc})") from None
        a = a.reshape(len(a), -1)
        _finite(a, str(where), f"column {col!r}: ")
        parts.append(a)
    return np.concatenate(parts, axis=1)


def _saved_files(path: str | Path, **_: Any) -> list[Path]:
    """Every file under a ``save_to_disk`` folder (each split's .arrow files and JSON), in name order."""
    where = Path(path).expanduser()
    return sorted(f for f in where.rglob("*") if f.is_file()) if where.is_dir() else []


# Cached too: the .arrow files are memory-mapped by ``datasets``, but what the loader returns is a converted
# float32 copy (decoded images, concatenated columns) that each process would otherwise build and hold itself.
@DATASETS.register("hf-disk", traits=DatasetTraits(image_param="image"))
@parse_cache(_saved_files)
def hf_disk(
    path: str,
    label: str = "label",
    features: list[str] | None = None,
    image: str | None = None,
    split: str | None = None,
    groups: str | None = None,
) -> Dataset:
    """Any Hugging Face dataset written by ``save_to_disk``, read with ``datasets.load_from_disk``.

    Records are the ``image`` column (images -> float32 (C, H, W), 8-bit pixels / 255) or the ``features``
    columns (numbers or fixed-length lists, concatenated into one vector); ``label``: a ClassLabel, integer
    ids from 0, or strings (numbered in sorted order); ``split``: which split of a saved DatasetDict;
    ``groups``: an optional column of natural ids (a user, a writer) for the 'natural' partitioner."""
    import datasets

    where = Path(path).expanduser()
    if (features is None) == (image is None):
        raise DataFileError("hf-disk: give exactly one of data.params.features (column names) or data.params.image")
    if not where.is_dir():
        raise DataFileError(
            f"hf-disk: dataset folder not found: {where}. Expected a folder written by datasets' "
            "Dataset.save_to_disk or DatasetDict.save_to_disk (state.json / dataset_dict.json and .arrow files)"
        )
    try:
        loaded = datasets.load_from_disk(str(where))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataFileError(f"{where}: not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) == 1:
            split = next(iter(loaded))
        if split not in loaded:
            raise DataFileError(f"{where}: data.params.split must name one of its splits: {', '.join(loaded)}")
        ds = loaded[split]
    else:
        if split is not None:
            raise DataFileError(f"{where}: holds a single Dataset, not a DatasetDict; drop data.params.split")
        ds = loaded
    x = (
        _image_array(_column(ds, image, "image", where), image, where)
        if image is not None
        else _feature_array(ds, features or [], where)
    )
    feature = ds.features.get(label)
    values = np.asarray(_column(ds, label, "label", where)[:])
    if values.ndim != 1:
        raise DataFileError(f"{where}: label column {label!r} must hold integer ids or strings, one a record")
    if isinstance(feature, datasets.ClassLabel):
        y, k = values.astype(np.int64), feature.num_classes
    elif values.dtype.kind in "biu":  # integers (booleans as 0/1)
        if len(values) and values.min() < 0:
            raise DataFileError(f"{where}: label column {label!r} holds negative ids")
        y = values.astype(np.int64)
        k = int(y.max()) + 1 if len(y) else 0
    elif values.dtype.kind == "U" or (values.dtype.kind == "O" and all(isinstance(v, str) for v in values)):
        names, y = np.unique(values.astype(str), return_inverse=True)
        k = len(names)
    else:
        raise DataFileError(f"{where}: label column {label!r} must hold integer ids or strings, got {values.dtype}")
    g = None
    if groups is not None:
        ids = np.asarray(_column(ds, groups, "groups", where)[:])
        g = np.unique(ids.astype(str), return_inverse=True)[1].astype(np.int64)
    return Dataset("hf-disk", x, y.astype(np.int64), max(k, 1), groups=g)
