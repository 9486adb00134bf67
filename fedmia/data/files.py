"""Loaders for real datasets that users download themselves (no network access at run time).

Each parses a documented on-disk format without unpickling anything, and reports a
truncated or malformed file as a ``DataFileError`` that names the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmia.data.datasets import DATASETS, Dataset
from fedmia.errors import InputError


class DataFileError(InputError):
    """A dataset file is missing, truncated or malformed."""


def _require(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataFileError(f"dataset file not found: {p}")
    return p


@DATASETS.register("purchase100")
def purchase100(path: str) -> Dataset:
    """Purchase-100 as distributed by Shokri et al.: CSV rows ``label,f1..f600`` (labels 1..100)."""
    p = _require(path)
    try:
        raw = np.loadtxt(p, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise DataFileError(f"{p}: not a numeric CSV ({exc})") from None
    except OSError as exc:
        raise DataFileError(f"cannot read the data file {p}: {exc.strerror or exc}") from None
    if raw.shape[1] < 2:
        raise DataFileError(f"{p}: expected a label column and feature columns, got {raw.shape[1]} column(s)")
    labels = raw[:, 0]
    if not np.all(labels == np.round(labels)) or labels.min() < 1:
        raise DataFileError(f"{p}: first column must hold integer labels starting at 1")
    y = labels.astype(np.int64) - 1
    return Dataset("purchase100", raw[:, 1:], y, int(y.max()) + 1)


_CIFAR_RECORD = 1 + 3 * 32 * 32


@DATASETS.register("cifar10")
def cifar10(path: str) -> Dataset:
    """CIFAR-10 'binary version': a folder of ``data_batch_*.bin`` / ``test_batch.bin`` files
    (or a single such file), each record one label byte followed by 3x32x32 pixel bytes."""
    p = Path(path).expanduser()
    files = sorted(p.glob("*_batch*.bin")) if p.is_dir() else [_require(p)]
    if not files:
        raise DataFileError(f"no CIFAR-10 *_batch*.bin files in {p}")
    xs, ys = [], []
    for f in files:
        try:
            buf = np.fromfile(f, dtype=np.uint8)
        except OSError as exc:
            raise DataFileError(f"cannot read the data file {f}: {exc.strerror or exc}") from None
        if buf.size == 0 or buf.size % _CIFAR_RECORD:
            raise DataFileError(
                f"{f}: {buf.size} bytes is not a whole number of {_CIFAR_RECORD}-byte CIFAR-10 records (truncated?)"
            )
        rec = buf.reshape(-1, _CIFAR_RECORD)
        if rec[:, 0].max() > 9:
            raise DataFileError(f"{f}: label byte above 9; not a CIFAR-10 binary file")
        ys.append(rec[:, 0].astype(np.int64))
        xs.append(rec[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return Dataset("cifar10", np.concatenate(xs), np.concatenate(ys), 10)
