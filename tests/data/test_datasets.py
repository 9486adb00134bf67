"""Dataset registry: embedded datasets have their documented shapes; file loaders parse and reject files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmia.data import DATASETS, load_dataset
from fedmia.data.files import DataFileError

CIFAR_RECORD = 1 + 3 * 32 * 32


def test_registry_lists_every_dataset() -> None:
    assert {"digits", "breast-cancer", "purchase-like", "purchase100", "cifar10"} <= set(DATASETS.available())


def test_digits_shape_and_classes() -> None:
    d = load_dataset("digits")
    assert d.x.shape == (1797, 1, 8, 8)
    assert d.input_shape == (1, 8, 8)
    assert d.x.dtype == np.float32 and d.y.dtype == np.int64
    assert d.num_classes == 10
    assert set(np.unique(d.y).tolist()) == set(range(10))
    assert d.x.min() >= 0.0 and d.x.max() <= 1.0


def test_breast_cancer_shape_and_standardized() -> None:
    d = load_dataset("breast-cancer")
    assert d.x.shape == (569, 30)
    assert d.num_classes == 2
    assert set(np.unique(d.y).tolist()) == {0, 1}
    np.testing.assert_allclose(d.x.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(d.x.std(axis=0), 1.0, atol=1e-3)


def test_purchase_like_shape_classes_and_binary() -> None:
    d = load_dataset("purchase-like", n=300, features=50, classes=20, seed=3)
    assert d.x.shape == (300, 50)
    assert d.num_classes == 20
    assert set(np.unique(d.y).tolist()) == set(range(20))  # every class present even with few records
    assert set(np.unique(d.x).tolist()) <= {0.0, 1.0}


def test_purchase_like_deterministic_per_seed_and_differs_across_seeds() -> None:
    a = load_dataset("purchase-like", n=200, features=40, classes=10, seed=1)
    b = load_dataset("purchase-like", n=200, features=40, classes=10, seed=1)
    c = load_dataset("purchase-like", n=200, features=40, classes=10, seed=2)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert not np.array_equal(a.y, c.y)


def test_purchase_like_rejects_fewer_records_than_classes() -> None:
    with pytest.raises(ValueError, match="n=5"):
        load_dataset("purchase-like", n=5, classes=10)


def test_unknown_dataset_lists_available() -> None:
    with pytest.raises(KeyError, match="digits"):
        load_dataset("no-such-dataset")


# ---- purchase100 (CSV) ---------------------------------------------------------------------------


def write_csv(path: Path, rows: list[list[float]]) -> Path:
    path.write_text("\n".join(",".join(f"{v:g}" for v in row) for row in rows) + "\n")
    return path


def test_purchase100_loads_csv_with_one_based_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.array([1, 100, 50, 2, 100, 7])
    feats = (rng.random((6, 5)) < 0.5).astype(int)
    p = write_csv(tmp_path / "purchase.csv", [[lab, *f] for lab, f in zip(labels, feats, strict=True)])
    d = load_dataset("purchase100", path=str(p))
    assert d.x.shape == (6, 5)
    assert d.x.dtype == np.float32
    np.testing.assert_array_equal(d.x, feats.astype(np.float32))
    np.testing.assert_array_equal(d.y, labels - 1)  # 1..100 -> 0..99
    assert d.num_classes == 100


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("ragged.csv", "1,0,1,1\n2,1,0\n", "truncated last row"),
        ("words.csv", "1,0,1\nlabel,a,b\n", "non-numeric"),
        ("zero.csv", "0,1,0\n1,0,1\n", "label 0"),
        ("frac.csv", "1.5,1,0\n2,0,1\n", "fractional label"),
        ("onecol.csv", "1\n2\n", "no features"),
    ],
)
def test_purchase100_malformed_raises_with_file_name(tmp_path: Path, name: str, text: str, problem: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(DataFileError, match=name.replace(".", r"\.")):
        load_dataset("purchase100", path=str(p))


def test_purchase100_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="absent.csv"):
        load_dataset("purchase100", path=str(tmp_path / "absent.csv"))


# ---- cifar10 (binary) ----------------------------------------------------------------------------


def cifar_bytes(labels: list[int], rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    pixels = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
    rec = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pixels], axis=1)
    return rec.tobytes(), pixels


def test_cifar10_single_file(tmp_path: Path) -> None:
    raw, pixels = cifar_bytes([3, 0, 9], np.random.default_rng(0))
    p = tmp_path / "test_batch.bin"
    p.write_bytes(raw)
    d = load_dataset("cifar10", path=str(p))
    assert d.x.shape == (3, 3, 32, 32)
    assert d.num_classes == 10
    np.testing.assert_array_equal(d.y, [3, 0, 9])
    # channel-major layout: the first 1024 bytes are the red plane, row by row
    np.testing.assert_allclose(d.x[1, 0, 0, :], pixels[1, :32] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(d.x[2, 2, 31, 31], pixels[2, -1] / 255.0, rtol=1e-6)
    assert d.x.min() >= 0.0 and d.x.max() <= 1.0


def test_cifar10_folder_concatenates_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "data_batch_1.bin").write_bytes(cifar_bytes([1, 2], rng)[0])
    (tmp_path / "data_batch_2.bin").write_bytes(cifar_bytes([4], rng)[0])
    (tmp_path / "readme.html").write_text("not a batch")
    d = load_dataset("cifar10", path=str(tmp_path))
    np.testing.assert_array_equal(d.y, [1, 2, 4])
    assert d.x.shape == (3, 3, 32, 32)


def test_cifar10_truncated_raises_with_file_name(tmp_path: Path) -> None:
    raw, _ = cifar_bytes([1, 2], np.random.default_rng(2))
    p = tmp_path / "data_batch_1.bin"
    p.write_bytes(raw[:-100])
    with pytest.raises(DataFileError, match=r"data_batch_1\.bin"):
        load_dataset("cifar10", path=str(p))


def test_cifar10_label_out_of_range_raises_with_file_name(tmp_path: Path) -> None:
    raw, _ = cifar_bytes([1, 12], np.random.default_rng(3))
    p = tmp_path / "bogus_batch.bin"
    p.write_bytes(raw)
    with pytest.raises(DataFileError, match=r"bogus_batch\.bin"):
        load_dataset("cifar10", path=str(p))


def test_cifar10_empty_or_missing(tmp_path: Path) -> None:
    p = tmp_path / "empty_batch.bin"
    p.write_bytes(b"")
    with pytest.raises(DataFileError, match=r"empty_batch\.bin"):
        load_dataset("cifar10", path=str(p))
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(DataFileError, match="nothing"):
        load_dataset("cifar10", path=str(empty_dir))
    with pytest.raises(DataFileError, match="gone.bin"):
        load_dataset("cifar10", path=str(tmp_path / "gone.bin"))
