"""Non-finite data is bad input: a NaN or infinity in a dataset file exits 2 naming the file, the row and the
column; any other dataset (a user's) is refused naming the record and feature. A NaN feature makes every
model output NaN, every signal a constant and every attack a tie: the report would read AUC 0.5, a broken
run passing for a private one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmia.data import DATASETS, load_dataset
from fedmia.data.datasets import Dataset, check_finite, first_nonfinite
from fedmia.data.files import DataFileError
from fedmia.errors import InputError
from fedmia.experiment import centralized
from fedmia.experiment.cli import app

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def flat(text: str) -> str:
    return " ".join(text.split())


# ---- the locator ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 0), (3, 5), (99, 6)])
def test_first_nonfinite_finds_the_one_bad_value(value: float, where: tuple[int, int]) -> None:
    x = np.random.default_rng(0).normal(size=(100, 7)).astype(np.float32)
    x[where] = value
    assert first_nonfinite(x) == where


def test_first_nonfinite_returns_the_first_in_row_order_and_flattens_images() -> None:
    x = np.zeros((5, 2, 3, 3), dtype=np.float32)
    x[4, 0, 0, 0] = np.nan
    x[2, 1, 2, 1] = np.inf  # flat position 1*9 + 2*3 + 1 = 16
    assert first_nonfinite(x) == (2, 16)


def test_first_nonfinite_accepts_finite_data_whose_sum_overflows() -> None:
    """Finite float64 values beyond float32's range overflow the screening sum: not a false alarm."""
    x = np.full((4, 3), 1e308)
    assert first_nonfinite(x) is None
    assert first_nonfinite(np.zeros((0, 3), dtype=np.float32)) is None
    assert first_nonfinite(np.ones((3, 3), dtype=np.int64)) is None  # integers are always finite


def test_first_nonfinite_scans_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedmia.data import datasets

    monkeypatch.setattr(datasets, "_BLOCK", 8)  # a block of 2 rows of 4 values
    x = np.zeros((9, 4), dtype=np.float32)
    x[7, 3] = -np.inf
    assert first_nonfinite(x) == (7, 3)


def test_check_finite_names_the_dataset_record_and_feature() -> None:
    x = np.zeros((6, 1, 2, 2), dtype=np.float32)
    x[4, 0, 1, 0] = np.nan
    with pytest.raises(InputError, match=r"dataset 'toy': record 4 \(0-based\), feature 2 \(flattened\) is nan"):
        check_finite(Dataset("toy", x, np.zeros(6, dtype=np.int64), 1))
    check_finite(Dataset("toy", np.zeros((6, 3), dtype=np.float32), np.zeros(6, dtype=np.int64), 1))


# ---- the file loaders: file, row and column -------------------------------------------------------------


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("".join(",".join(r) + "\n" for r in rows))
    return path


GOOD_ROWS = [["1", "0", "1", "0"], ["2", "1", "0", "1"], ["3", "0", "0", "1"]]


@pytest.mark.parametrize(
    ("row", "col", "text", "shown"),
    [
        (1, 2, "nan", "nan"),
        (2, 3, "inf", "inf"),
        (0, 1, "-inf", "-inf"),
        (2, 1, "1e39", "inf"),  # finite in the file, beyond float32: infinite once read
        (1, 0, "nan", "nan"),  # the label column
        (0, 0, "inf", "inf"),
    ],
)
def test_purchase100_csv_with_a_non_finite_value_names_file_row_and_column(
    tmp_path: Path, row: int, col: int, text: str, shown: str
) -> None:
    rows = [list(r) for r in GOOD_ROWS]
    rows[row][col] = text
    path = write_csv(tmp_path / "dataset_purchase", rows)
    with pytest.raises(DataFileError) as exc:
        load_dataset("purchase100", path=str(path))
    assert f"{path}: row {row + 1}, column {col + 1} is {shown}, not a finite number" in str(exc.value)


def test_purchase100_finite_csv_still_loads(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "dataset_purchase", [["1", "0.5", "-2"], ["2", "1e30", "3"]])
    d = load_dataset("purchase100", path=str(path))
    np.testing.assert_array_equal(d.y, [0, 1])
    assert np.isfinite(d.x).all()


def test_texas100_feats_and_labels_name_their_file(tmp_path: Path) -> None:
    folder = tmp_path / "texas" / "100"
    folder.mkdir(parents=True)
    write_csv(folder / "feats", [["0", "1", "0"], ["1", "nan", "1"]])
    write_csv(folder / "labels", [["1"], ["2"]])
    with pytest.raises(DataFileError, match=r"feats: row 2, column 2 is nan"):
        load_dataset("texas100", path=str(tmp_path))
    write_csv(folder / "feats", [["0", "1", "0"], ["1", "0", "1"]])
    write_csv(folder / "labels", [["1"], ["inf"]])
    with pytest.raises(DataFileError, match=r"labels: the labels' row 2, column 1 is inf"):
        load_dataset("texas100", path=str(tmp_path))


@pytest.mark.parametrize("bad", ["features", "labels"])
def test_npz_with_a_non_finite_value_names_the_array(tmp_path: Path, bad: str) -> None:
    features = np.zeros((4, 3))
    labels = np.array([0.0, 1.0, 2.0, 1.0])
    if bad == "features":
        features[2, 1] = np.inf
    else:
        labels[3] = np.inf  # inf == round(inf): the integer check alone would pass it
    path = tmp_path / "p.npz"
    np.savez(path, features=features, labels=labels)
    with pytest.raises(DataFileError) as exc:
        load_dataset("purchase100", path=str(path))
    where = "'features' row 3, column 2" if bad == "features" else "'labels' row 4, column 1"
    assert f"{path}: {where} is inf" in str(exc.value)


def test_npz_float64_features_beyond_float32_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    features = np.zeros((2, 2))
    features[1, 0] = 1e300
    np.savez(path, features=features, labels=np.array([0, 1]))
    with pytest.raises(DataFileError, match=r"'features' row 2, column 1 is inf"):
        load_dataset("texas100", path=str(path))


def test_femnist_names_file_user_and_pixel(tmp_path: Path) -> None:
    x = np.zeros((2, 784)).tolist()
    x[1][300] = float("nan")
    tree = {"users": ["w1"], "num_samples": [2], "user_data": {"w1": {"x": x, "y": [0, 1]}}}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(tree))  # json writes NaN, and reads it back
    with pytest.raises(DataFileError, match=r"a.json: user 'w1': 'x' row 2, column 301 is nan"):
        load_dataset("femnist", path=str(path))


def test_hf_disk_feature_and_image_columns_name_the_column(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"a": [1.0, 2.0, 3.0], "b": [0.0, float("inf"), 1.0], "y": [0, 1, 0]}).save_to_disk(
        str(tmp_path / "tab")
    )
    with pytest.raises(DataFileError, match=r"column 'b': row 2, column 1 is inf"):
        load_dataset("hf-disk", path=str(tmp_path / "tab"), features=["a", "b"], label="y")
    image = np.zeros((3, 2, 2), dtype=np.float32)
    image[2, 1, 1] = np.nan
    datasets.Dataset.from_dict({"img": list(image), "y": [0, 1, 0]}).save_to_disk(str(tmp_path / "img"))
    with pytest.raises(DataFileError, match=r"column 'img': image row 3, column 4 is nan"):
        load_dataset("hf-disk", path=str(tmp_path / "img"), image="img", label="y")


# ---- the CLI: exit 2, nothing trained, nothing written ------------------------------------------------------


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("training started on bad input")

    monkeypatch.setattr(centralized, "train", refuse)


def test_fedmia_run_on_a_purchase_csv_with_nan_exits_2_naming_row_and_column(tmp_path: Path, no_training: None) -> None:
    rng = np.random.default_rng(0)
    rows = [[str(1 + i % 3)] + [str(int(v)) for v in rng.integers(0, 2, 5)] for i in range(40)]
    rows[17][4] = "nan"
    path = write_csv(tmp_path / "dataset_purchase", rows)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", str(QUICKSTART), "data.dataset=purchase100", f"data.params={{path: {path}}}", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"{path}: row 18, column 5 is nan" in flat(result.output)
    assert not out.exists()


def test_a_users_dataset_with_nan_is_refused_before_training(tmp_path: Path, no_training: None) -> None:
    """The backstop for datasets that no file loader checked (a user's registered dataset)."""

    @DATASETS.register("nan-toy")
    def nan_toy() -> Dataset:
        x = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
        x[123, 2] = np.nan
        return Dataset("nan-toy", x, np.arange(200, dtype=np.int64) % 2, 2)

    try:
        out = tmp_path / "run"
        result = CliRunner().invoke(app, ["run", str(QUICKSTART), "data.dataset=nan-toy", "--out", str(out)])
    finally:
        DATASETS.unregister("nan-toy")
    assert result.exit_code == 2, result.output
    assert "dataset 'nan-toy': record 123 (0-based), feature 2 (flattened) is nan" in flat(result.output)
    assert not out.exists()
