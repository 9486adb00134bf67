"""The real datasets' loaders on small fixture files written here in their exact on-disk formats.

Texas-100 and Purchase-100 (Shokri et al.'s CSV files and the shared .npz conversions), CIFAR-100's
binary records, FEMNIST's LEAF JSON (with the writer of each record), any ``save_to_disk`` dataset
(hf-disk), the natural per-writer partition, ``fedmia fetch`` (its table, its argument checks and its
failures, with the download mocked, and over real HTTP from a server on loopback: tests never touch
the internet), every config in ``configs/`` and one
short ``fedmia run`` on a Texas-like fixture.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import urllib.error
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmia.data import fetch as fetching
from fedmia.data import load_dataset
from fedmia.data.datasets import Dataset
from fedmia.data.files import DataFileError
from fedmia.data.partition import client_of_group, partition_records
from fedmia.experiment.cli import app
from fedmia.experiment.config import ConfigError, load_config
from fedmia.experiment.runner import prepare
from fedmia.models import build_model

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
C100_RECORD = 2 + 3 * 32 * 32

if TYPE_CHECKING:
    from conftest import LoopbackMirror  # tests/data/conftest.py: the http_mirror fixture


def flat(text: str) -> str:
    """Output without whitespace, so a path wrapped by rich still matches."""
    return "".join(text.split())


# ---- fixture writers: the exact on-disk formats ----------------------------------------------------------


def write_texas(root: Path, n: int = 12, d: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``root/texas/100/feats`` (comma-separated 0/1, one record a line) and ``labels`` (1..100 a line)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, size=(n, d))
    labels = rng.integers(1, 101, size=n)
    labels[0] = 100
    folder = root / "texas" / "100"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "feats").write_text("\n".join(",".join(map(str, row)) for row in x) + "\n")
    (folder / "labels").write_text("\n".join(map(str, labels)) + "\n")
    return x, labels


def write_purchase(path: Path, n: int = 10, d: int = 6, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """'dataset_purchase': CSV rows 'label,f1..fd', labels 1..100."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, size=(n, d))
    labels = rng.integers(1, 101, size=n)
    path.write_text("\n".join(",".join(map(str, [lab, *row])) for lab, row in zip(labels, x, strict=True)) + "\n")
    return x, labels


def cifar100_bytes(coarse: list[int], fine: list[int], seed: int = 2) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
    rec = np.concatenate([np.array(coarse, np.uint8)[:, None], np.array(fine, np.uint8)[:, None], pixels], axis=1)
    return rec.tobytes(), pixels


def leaf_tree(users: dict[str, list[int]], seed: int = 3) -> dict[str, Any]:
    """A LEAF JSON tree: each user's labels as given, pixels random floats."""
    rng = np.random.default_rng(seed)
    data = {u: {"x": rng.random((len(ys), 784)).round(3).tolist(), "y": ys} for u, ys in users.items()}
    return {"users": list(users), "num_samples": [len(v) for v in users.values()], "user_data": data}


def write_leaf(root: Path) -> dict[str, Any]:
    """LEAF's output folder: train/ and test/ JSON; writer f0001 has records in both."""
    trees = {
        "train/all_data_0_niid_0_keep_0_train_9.json": leaf_tree({"f0001_07": [0, 5, 61], "f0002_13": [10, 10]}, 4),
        "train/all_data_1_niid_0_keep_0_train_9.json": leaf_tree({"f0003_40": [1, 2, 3, 4]}, 5),
        "test/all_data_0_niid_0_keep_0_test_9.json": leaf_tree({"f0001_07": [7], "f0002_13": [8]}, 6),
    }
    for name, tree in trees.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(tree))
    return trees


def write_hf_images(path: Path, n: int = 12) -> np.ndarray:
    """A DatasetDict (train/test) with an Image column 'image' (8x8 grey), a ClassLabel 'label' and 'user'."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=["a", "b", "c"]),
            "user": datasets.Value("string"),
        }
    )
    train = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(p) for p in pixels],
            "label": [i % 3 for i in range(n)],
            "user": [f"u{i % 4}" for i in range(n)],
        },
        features=features,
    )
    datasets.DatasetDict({"train": train, "test": train.select(range(2))}).save_to_disk(str(path))
    return pixels


# ---- Texas-100 --------------------------------------------------------------------------------------------


def test_texas100_reads_feats_and_labels_from_each_accepted_path(tmp_path: Path) -> None:
    x, labels = write_texas(tmp_path)
    for path in (tmp_path, tmp_path / "texas" / "100", tmp_path / "texas" / "100" / "feats"):
        d = load_dataset("texas100", path=str(path))
        np.testing.assert_array_equal(d.x, x.astype(np.float32))
        np.testing.assert_array_equal(d.y, labels - 1)  # 1..100 -> 0..99
        assert d.x.dtype == np.float32 and d.num_classes == 100 and d.groups is None


@pytest.mark.parametrize("one_hot", [False, True])
def test_texas100_and_purchase100_read_the_npz_conversion(tmp_path: Path, one_hot: bool) -> None:
    rng = np.random.default_rng(4)
    x = rng.integers(0, 2, size=(9, 5)).astype(np.uint8)
    y = np.array([0, 3, 99, 4, 4, 1, 0, 2, 7])
    labels = np.eye(100, dtype=np.uint8)[y] if one_hot else y
    np.savez(tmp_path / "data.npz", features=x, labels=labels)
    for name in ("texas100", "purchase100"):
        d = load_dataset(name, path=str(tmp_path / "data.npz"))
        np.testing.assert_array_equal(d.x, x.astype(np.float32))
        np.testing.assert_array_equal(d.y, y)
        assert d.num_classes == 100


def test_texas100_missing_names_the_expected_path_and_format(tmp_path: Path) -> None:
    with pytest.raises(DataFileError) as exc:
        load_dataset("texas100", path=str(tmp_path / "nowhere"))
    msg = str(exc.value)
    assert str(tmp_path / "nowhere") in msg
    assert "texas/100/feats" in msg and "texas/100/labels" in msg and "6,169" in msg
    assert "fedmia fetch texas100" in msg


@pytest.mark.parametrize(
    ("feats", "labels", "bad", "word"),
    [
        ("1,0,1\n0,1,1\n", "3\n", "labels", "2 records but"),
        ("1,0,1\n0,1,1\n", "3,4\n5,6\n", "labels", "one label a line"),
        ("1,0,1\n0,1,1\n", "0\n4\n", "labels", "starting at 1"),
        ("1,0,1\n0,1\n", "3\n4\n", "feats", "numeric csv"),
        ("1,0,1\n0,x,1\n", "3\n4\n", "feats", "numeric csv"),
    ],
    ids=["fewer-labels", "two-columns", "label-zero", "ragged-feats", "word-in-feats"],
)
def test_texas100_corrupt_files_name_the_file_and_problem(
    tmp_path: Path, feats: str, labels: str, bad: str, word: str
) -> None:
    folder = tmp_path / "texas" / "100"
    folder.mkdir(parents=True)
    (folder / "feats").write_text(feats)
    (folder / "labels").write_text(labels)
    with pytest.raises(DataFileError) as exc:
        load_dataset("texas100", path=str(tmp_path))
    assert str(folder / bad) in str(exc.value) and word in str(exc.value).lower()


def test_texas100_labels_file_missing_names_it(tmp_path: Path) -> None:
    write_texas(tmp_path)
    (tmp_path / "texas" / "100" / "labels").unlink()
    with pytest.raises(DataFileError, match=r"texas/100/labels"):
        load_dataset("texas100", path=str(tmp_path))


# ---- Purchase-100 variants --------------------------------------------------------------------------------


def test_purchase100_reads_the_unpacked_folder_and_the_file(tmp_path: Path) -> None:
    x, labels = write_purchase(tmp_path / "dataset_purchase")
    for path in (tmp_path, tmp_path / "dataset_purchase"):
        d = load_dataset("purchase100", path=str(path))
        np.testing.assert_array_equal(d.x, x.astype(np.float32))
        np.testing.assert_array_equal(d.y, labels - 1)


def test_purchase100_missing_names_the_expected_file_and_format(tmp_path: Path) -> None:
    with pytest.raises(DataFileError) as exc:
        load_dataset("purchase100", path=str(tmp_path))  # a folder without dataset_purchase
    msg = str(exc.value)
    assert str(tmp_path / "dataset_purchase") in msg and "label,f1,...,f600" in msg and ".npz" in msg


def _npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "word"),
    [
        (lambda: _npz_bytes(features=np.zeros((3, 2)), y=np.zeros(3)), "no array 'labels'"),
        (lambda: _npz_bytes(x=np.zeros((3, 2)), labels=np.zeros(3)), "no array 'features'"),
        (lambda: _npz_bytes(features=np.zeros((3, 2)), labels=np.zeros(4)), "does not match"),
        (lambda: _npz_bytes(features=np.zeros((2, 2)), labels=np.array([[1, 1, 0], [0, 1, 0]])), "one-hot"),
        (lambda: _npz_bytes(features=np.zeros((2, 2)), labels=np.array([0.5, 1.0])), "integer class ids"),
        (lambda: _npz_bytes(features=np.zeros((2, 2)), labels=np.array([-1, 1])), "integer class ids"),
        (lambda: _npz_bytes(features=np.zeros(4), labels=np.zeros(4)), "(n, d)"),
        (lambda: _npz_bytes(features=np.zeros((0, 3)), labels=np.zeros(0)), "no records"),
        (lambda: _npz_bytes(features=np.array([{"a": 1}, {"b": 2}], dtype=object), labels=np.zeros(2)), "numeric"),
        (lambda: _npz_bytes(features=np.zeros((3, 2)), labels=np.zeros(3))[:60], "readable"),
        (lambda: b"not a zip at all", "readable"),
    ],
    ids=[
        "no-labels",
        "no-features",
        "length",
        "not-one-hot",
        "fractional",
        "negative",
        "1-d",
        "empty",
        "pickled",
        "cut",
        "junk",
    ],
)
def test_npz_problems_are_named(tmp_path: Path, content: Any, word: str) -> None:
    p = tmp_path / "purchase100.npz"
    p.write_bytes(content())
    with pytest.raises(DataFileError) as exc:
        load_dataset("purchase100", path=str(p))
    assert str(p) in str(exc.value) and word in str(exc.value)


# ---- CIFAR-100 binary ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "classes"), [("fine", 100), ("coarse", 20)])
def test_cifar100_reads_fine_or_coarse_labels_and_channel_major_pixels(
    tmp_path: Path, label: str, classes: int
) -> None:
    coarse, fine = [3, 19, 0], [42, 99, 7]
    raw, pixels = cifar100_bytes(coarse, fine)
    (tmp_path / "train.bin").write_bytes(raw)
    d = load_dataset("cifar100", path=str(tmp_path / "train.bin"), label=label)
    assert d.x.shape == (3, 3, 32, 32) and d.num_classes == classes
    np.testing.assert_array_equal(d.y, fine if label == "fine" else coarse)
    np.testing.assert_allclose(d.x[0, 0, 0, :], pixels[0, :32] / 255.0, rtol=1e-6)  # red plane, first row
    np.testing.assert_allclose(d.x[1, 1, 0, 0], pixels[1, 1024] / 255.0, rtol=1e-6)  # green plane starts at 1024
    np.testing.assert_allclose(d.x[2, 2, 31, 31], pixels[2, -1] / 255.0, rtol=1e-6)


def test_cifar100_reads_the_unpacked_folder_or_its_parent(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    (folder / "train.bin").write_bytes(cifar100_bytes([1, 2], [10, 20], seed=8)[0])
    (folder / "test.bin").write_bytes(cifar100_bytes([3], [30], seed=9)[0])
    (folder / "fine_label_names.txt").write_text("apple\n")
    for path in (folder, tmp_path):
        d = load_dataset("cifar100", path=str(path))
        np.testing.assert_array_equal(d.y, [30, 10, 20])  # test.bin sorts before train.bin
        assert d.name == "cifar100"


@pytest.mark.parametrize(
    ("make", "word"),
    [
        (lambda: cifar100_bytes([1, 2], [3, 4])[0][:-1], "truncated"),
        # a CIFAR-10 file (3,073-byte records) is not a whole number of 3,074-byte records
        (lambda: bytes(3 * 3073), "truncated"),
        (lambda: cifar100_bytes([1, 2], [3, 100])[0], "label byte 2 above 99"),
        (lambda: cifar100_bytes([20, 2], [3, 4])[0], "label byte 1 above 19"),
    ],
    ids=["short", "cifar10-record-size", "fine-100", "coarse-20"],
)
def test_cifar100_corrupt_file_names_the_file_and_problem(tmp_path: Path, make: Any, word: str) -> None:
    p = tmp_path / "train.bin"
    p.write_bytes(make())
    with pytest.raises(DataFileError) as exc:
        load_dataset("cifar100", path=str(p))
    assert str(p) in str(exc.value) and word in str(exc.value)


def test_cifar100_label_param_is_validated() -> None:
    from fedmia.data import DATASETS
    from fedmia.registry import ParamsError

    with pytest.raises(ParamsError, match="label"):
        DATASETS.validate("cifar100", {"path": "x", "label": "medium"})


def test_cifar100_missing_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DataFileError) as exc:
        load_dataset("cifar100", path=str(tmp_path))
    assert "cifar-100-binary" in str(exc.value) and "fine-label byte" in str(exc.value)


# ---- FEMNIST (LEAF JSON) ----------------------------------------------------------------------------------


def test_femnist_reads_leaf_json_and_keeps_each_writer(tmp_path: Path) -> None:
    trees = write_leaf(tmp_path)
    d = load_dataset("femnist", path=str(tmp_path))
    assert d.x.shape == (11, 1, 28, 28) and d.num_classes == 62 and d.groups is not None
    # files in order: the train files (sorted), then the test file
    np.testing.assert_array_equal(d.y, [0, 5, 61, 10, 10, 1, 2, 3, 4, 7, 8])
    writers = ["f0001_07"] * 3 + ["f0002_13"] * 2 + ["f0003_40"] * 4 + ["f0001_07", "f0002_13"]
    names = sorted(set(writers))  # a writer in train and test is one group
    np.testing.assert_array_equal(d.groups, [names.index(w) for w in writers])
    second = trees["train/all_data_0_niid_0_keep_0_train_9.json"]["user_data"]["f0001_07"]["x"][1]
    np.testing.assert_allclose(d.x[1].ravel(), second, rtol=1e-6)  # pixels row-major, as LEAF wrote them
    one = load_dataset("femnist", path=str(tmp_path / "test" / "all_data_0_niid_0_keep_0_test_9.json"))
    np.testing.assert_array_equal(one.y, [7, 8])


def _user(tree: dict[str, Any]) -> dict[str, Any]:
    return tree["user_data"]["u1"]


FEMNIST_CORRUPTIONS: dict[str, tuple[Any, str]] = {
    # name: (edit of a good tree -> file bytes, a phrase the message must contain)
    "bad-json": (lambda t: json.dumps(t).encode()[:-10], "not valid JSON"),
    "not-utf8": (lambda t: b'{"users": ["\xff"]}', "not valid JSON"),
    "a-list": (lambda t: b"[1, 2]", "not a LEAF file"),
    "no-user-data": (lambda t: json.dumps({"users": t["users"]}).encode(), "not a LEAF file"),
    "short-rows": (lambda t: ([r.pop() for r in _user(t)["x"]], json.dumps(t).encode())[1], "784 pixels"),
    "ragged-rows": (lambda t: (_user(t)["x"][1].append(0.5), json.dumps(t).encode())[1], "numeric rows"),
    "text-pixel": (lambda t: (_user(t)["x"][0].__setitem__(3, "a"), json.dumps(t).encode())[1], "numeric rows"),
    "label-62": (lambda t: (_user(t)["y"].__setitem__(0, 62), json.dumps(t).encode())[1], "0..61"),
    "float-label": (lambda t: (_user(t)["y"].__setitem__(0, 1.5), json.dumps(t).encode())[1], "integer labels"),
    "y-length": (lambda t: (_user(t)["y"].append(3), json.dumps(t).encode())[1], "integer labels"),
    "num-samples": (lambda t: (t["num_samples"].__setitem__(0, 5), json.dumps(t).encode())[1], "num_samples"),
    "unlisted-user": (
        lambda t: (t["users"].append("u9"), t["num_samples"].append(1), json.dumps(t).encode())[2],
        "no 'user_data'",
    ),
}


@pytest.mark.parametrize("case", sorted(FEMNIST_CORRUPTIONS))
def test_femnist_corrupt_json_names_the_file_and_problem(tmp_path: Path, case: str) -> None:
    edit, phrase = FEMNIST_CORRUPTIONS[case]
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "good.json").write_text(json.dumps(leaf_tree({"u0": [1, 2]})))
    bad = tmp_path / "train" / "z_bad.json"
    bad.write_bytes(edit(leaf_tree({"u1": [3, 4]}, seed=9)))
    with pytest.raises(DataFileError) as exc:
        load_dataset("femnist", path=str(tmp_path))
    assert str(bad) in str(exc.value) and phrase in str(exc.value)
    assert "good.json" not in str(exc.value)


def test_femnist_missing_names_leaf_and_the_format(tmp_path: Path) -> None:
    for path in (tmp_path / "absent", tmp_path):  # a path that is not there; a folder without JSON
        with pytest.raises(DataFileError) as exc:
            load_dataset("femnist", path=str(path))
        assert str(path) in str(exc.value) and "LEAF" in str(exc.value) and "user_data" in str(exc.value)


# ---- the natural (per-writer) partition -------------------------------------------------------------------


def writers_dataset(sizes: list[int]) -> Dataset:
    groups = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(5)
    return Dataset("toy", rng.random((len(groups), 3)).astype(np.float32), groups % 4, 4, groups=groups)


def test_natural_partition_one_writer_per_client() -> None:
    d = writers_dataset([5, 3, 8, 1, 4, 6])
    records = np.arange(d.n) + 1000  # global indices need not be positions
    parts = partition_records(records, d.y, 6, "natural", seed=3, groups=d.groups)
    writer_of = {r: g for r, g in zip(records, d.groups, strict=True)}
    seen = [sorted({writer_of[r] for r in p}) for p in parts]
    assert all(len(s) == 1 for s in seen)  # each client holds one writer ...
    assert sorted(s[0] for s in seen) == list(range(6))  # ... and each writer is one client
    for p in parts:  # ... with all of that writer's records
        assert len(p) == int((d.groups == writer_of[p[0]]).sum())


@pytest.mark.parametrize("clients", [1, 2, 4, 5])
def test_natural_partition_groups_whole_writers_when_fewer_clients(clients: int) -> None:
    d = writers_dataset([5, 3, 8, 1, 4, 6, 2, 2, 7])
    parts = partition_records(np.arange(d.n), d.y, clients, "natural", seed=11, groups=d.groups)
    assert sorted(np.concatenate(parts).tolist()) == list(range(d.n))  # every record, once
    owners: dict[int, int] = {}
    for c, p in enumerate(parts):
        for g in set(d.groups[p].tolist()):
            assert owners.setdefault(g, c) == c  # a writer never spans two clients
    per_client = [len(set(d.groups[p].tolist())) for p in parts]
    assert sorted(set(per_client)) <= [9 // clients, -(-9 // clients)]  # ⌊G/C⌋ or ⌈G/C⌉ writers each


def test_natural_partition_is_seeded() -> None:
    d = writers_dataset([3] * 10)
    a = partition_records(np.arange(d.n), d.y, 3, "natural", seed=1, groups=d.groups)
    b = partition_records(np.arange(d.n), d.y, 3, "natural", seed=1, groups=d.groups)
    c = partition_records(np.arange(d.n), d.y, 3, "natural", seed=2, groups=d.groups)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(np.sort(x), np.sort(y)) for x, y in zip(a, c, strict=True))


def test_client_of_group_oracle() -> None:
    # 5 groups, 2 clients: the seeded order of the distinct ids is cut into runs of 3 and 2
    groups = np.array([40, 10, 40, 30, 20, 50, 10])
    client = client_of_group(groups, 2, seed=0)
    order = np.random.default_rng(0).permutation(5)
    distinct = np.array([10, 20, 30, 40, 50])
    expected = {int(g): (0 if i < 3 else 1) for i, g in enumerate(distinct[order])}
    assert client.tolist() == [expected[int(g)] for g in groups]


def test_natural_partition_needs_writers_and_enough_of_them() -> None:
    d = writers_dataset([2, 2, 2])
    with pytest.raises(ValueError, match="3 natural groups"):
        partition_records(np.arange(d.n), d.y, 4, "natural", seed=0, groups=d.groups)
    with pytest.raises(ValueError, match="femnist"):
        partition_records(np.arange(d.n), d.y, 2, "natural", seed=0)


def test_femnist_federation_plan_puts_each_writer_in_one_client(tmp_path: Path) -> None:
    write_leaf(tmp_path)
    cfg = load_config(
        None,
        [
            "settings=[federated]",
            "data.dataset=femnist",
            f"data.params.path={tmp_path}",
            "data.split={members: 0.7, nonmembers: 0.1, population: 0.1, test: 0.1}",
            "federation.num_clients=2",
            "federation.partition=natural",
            "audit.references=0",
        ],
    )
    assert cfg.model.name == "cnn"  # image dataset, no model named
    data, plan = prepare(cfg)
    assert data.groups is not None and len(plan.clients) == 2
    client_writers = [set(data.groups[c].tolist()) for c in plan.clients]
    assert not client_writers[0] & client_writers[1]
    assert sorted(np.concatenate(plan.clients).tolist()) == sorted(plan.members.tolist())


def test_natural_partition_without_writers_is_bad_input(tmp_path: Path) -> None:
    write_texas(tmp_path, n=200)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(REPO / "configs" / "texas100.yaml"),
            f"data.params.path={tmp_path}",
            "federation.partition=natural",
            "federation.num_clients=2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "natural" in result.output and "femnist" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_natural_references_need_real_population_records() -> None:
    with pytest.raises(ConfigError, match="shadow_data.source"):
        load_config(
            None,
            [
                "settings=[federated]",
                "federation.partition=natural",
                "audit.references=2",
                "audit.shadow_data.source=noisy",
            ],
        )


# ---- hf-disk ----------------------------------------------------------------------------------------------


def test_hf_disk_image_column_round_trip(tmp_path: Path) -> None:
    pixels = write_hf_images(tmp_path / "hf")
    d = load_dataset("hf-disk", path=str(tmp_path / "hf"), split="train", image="image", label="label", groups="user")
    assert d.x.shape == (12, 1, 8, 8) and d.x.dtype == np.float32
    np.testing.assert_allclose(d.x[:, 0], pixels / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y, np.arange(12) % 3)
    assert d.num_classes == 3  # from the ClassLabel
    np.testing.assert_array_equal(d.groups, np.arange(12) % 4)  # 'u0'..'u3' numbered in sorted order
    test = load_dataset("hf-disk", path=str(tmp_path / "hf"), split="test", image="image")
    assert test.n == 2


def test_hf_disk_feature_columns_round_trip(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict(
        {"age": [30, 41, 25, 60], "vec": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], "y": ["b", "a", "c", "a"]}
    )
    ds.save_to_disk(str(tmp_path / "tab"))
    d = load_dataset("hf-disk", path=str(tmp_path / "tab"), features=["age", "vec"], label="y")
    np.testing.assert_array_equal(d.x, [[30, 1, 2], [41, 3, 4], [25, 5, 6], [60, 7, 8]])
    np.testing.assert_array_equal(d.y, [1, 0, 2, 0])  # 'a' 'b' 'c' numbered in sorted order
    assert d.num_classes == 3 and d.groups is None


@pytest.mark.parametrize(
    ("params", "phrase"),
    [
        ({"split": "train", "image": "picture"}, "no column 'picture' (the image); its columns: image, label, user"),
        ({"split": "train", "image": "image", "label": "class"}, "no column 'class' (the label)"),
        ({"split": "train", "features": ["label", "height"]}, "no column 'height'"),
        ({"split": "train", "features": ["user"]}, "not numeric"),
        ({"image": "image"}, "split must name one of its splits: train, test"),
        ({"split": "validation", "image": "image"}, "train, test"),
        ({"split": "train"}, "exactly one of"),
        ({"split": "train", "image": "image", "features": ["label"]}, "exactly one of"),
        ({"split": "train", "image": "image", "groups": "writer"}, "no column 'writer' (the groups)"),
    ],
)
def test_hf_disk_bad_columns_name_what_exists(tmp_path: Path, params: dict[str, Any], phrase: str) -> None:
    write_hf_images(tmp_path / "hf")
    with pytest.raises(DataFileError) as exc:
        load_dataset("hf-disk", path=str(tmp_path / "hf"), **params)
    assert phrase in str(exc.value)


def test_hf_disk_boolean_labels_and_unusable_labels(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"f": [1.0, 2.0, 3.0], "ok": [True, False, True], "bad": [[1], [2], [3]]}).save_to_disk(
        str(tmp_path / "b")
    )
    d = load_dataset("hf-disk", path=str(tmp_path / "b"), features=["f"], label="ok")
    np.testing.assert_array_equal(d.y, [1, 0, 1])
    with pytest.raises(DataFileError, match="integer ids or strings"):
        load_dataset("hf-disk", path=str(tmp_path / "b"), features=["f"], label="bad")


def test_hf_disk_not_a_saved_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="save_to_disk"):
        load_dataset("hf-disk", path=str(tmp_path / "absent"), image="image")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.json").write_text("{")
    with pytest.raises(DataFileError, match="save_to_disk"):
        load_dataset("hf-disk", path=str(tmp_path / "junk"), image="image")


# ---- the default model of image datasets ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "params", "model"),
    [
        ("cifar10", {"path": "x"}, "cnn"),
        ("cifar100", {"path": "x"}, "cnn"),
        ("femnist", {"path": "x"}, "cnn"),
        ("hf-disk", {"path": "x", "image": "img"}, "cnn"),
        ("hf-disk", {"path": "x", "features": ["a"]}, "mlp"),
        ("texas100", {"path": "x"}, "mlp"),
        ("purchase100", {"path": "x"}, "mlp"),
        ("digits", {}, "mlp"),
    ],
)
def test_image_datasets_default_to_the_groupnorm_cnn(dataset: str, params: dict[str, Any], model: str) -> None:
    tree_params = "{" + ", ".join(f"{k}: {v}" for k, v in params.items()) + "}"
    cfg = load_config(None, [f"data.dataset={dataset}", f"data.params={tree_params}"])
    assert cfg.model.name == model
    # a named model is kept; model params without a name go to the default
    assert (
        load_config(None, [f"data.dataset={dataset}", f"data.params={tree_params}", "model.name=logreg"]).model.name
        == "logreg"
    )
    if model == "cnn":
        cnn = build_model("cnn", (3, 32, 32), 10, seed=0)
        assert any(type(m).__name__ == "GroupNorm" for m in cnn.modules())
        assert not any("BatchNorm" in type(m).__name__ for m in cnn.modules())
        with_params = load_config(
            None, [f"data.dataset={dataset}", f"data.params={tree_params}", "model.params.channels=[8]"]
        )
        assert with_params.model.name == "cnn"


# ---- fedmia fetch (the download mocked: no network in tests) ----------------------------------------------


def test_fetch_table_names_official_sources_and_loader_paths() -> None:
    downloadable = {n: s for n, s in fetching.SOURCES.items() if s.manual is None}
    assert set(downloadable) == {"texas100", "purchase100", "cifar10", "cifar100"}
    for src in downloadable.values():
        assert src.urls and all(u.startswith("https://") for u in src.urls)
        assert len({u.rsplit("/", 1)[-1] for u in src.urls}) == 1  # mirrors of one archive
        assert src.produces and not src.produces.startswith("/")
        assert src.md5 is None or re.fullmatch(r"[0-9a-f]{32}", src.md5), src.md5
    # the MD5s published beside the archives on Krizhevsky's page (https://www.cs.toronto.edu/~kriz/cifar.html);
    # Shokri et al.'s archives have none: their unpacked first line is checked instead
    assert fetching.SOURCES["cifar10"].md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert fetching.SOURCES["cifar100"].md5 == "03b5dce01913d631647c71ecec9e9cb8"
    for name in ("texas100", "purchase100"):
        assert fetching.SOURCES[name].md5 is None and fetching.SOURCES[name].first_line is not None
    assert fetching.SOURCES["cifar100"].urls == ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",)
    assert fetching.SOURCES["cifar100"].produces == "cifar-100-binary"
    assert fetching.SOURCES["texas100"].produces == "texas/100"
    assert fetching.SOURCES["purchase100"].archive == "dataset_purchase.tgz"
    assert "preprocess.sh" in (fetching.SOURCES["femnist"].manual or "")


def fetch_cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["fetch", *args])


def test_fetch_unknown_dataset_exits_2_listing_the_known(tmp_path: Path) -> None:
    result = fetch_cli("mnist", str(tmp_path / "d"))
    assert result.exit_code == 2
    assert "unknown dataset 'mnist'" in result.output
    for name in ("cifar10", "cifar100", "femnist", "purchase100", "texas100"):
        assert name in result.output
    assert not (tmp_path / "d").exists()


def test_fetch_without_network_exits_2_saying_where_to_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[str] = []

    def offline(url: str, dest: Path, progress: Any = None) -> None:
        tried.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(fetching, "download", offline)
    result = fetch_cli("texas100", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert tried == list(fetching.SOURCES["texas100"].urls)  # every mirror, in order
    text = flat(result.output)
    assert "byhand" in text
    assert "dataset_texas.tgz" in text and flat(str(tmp_path / "texas" / "100")) in text
    assert "Traceback" not in result.output


def test_fetch_femnist_prints_the_leaf_steps_and_exits_2(tmp_path: Path) -> None:
    result = fetch_cli("femnist", str(tmp_path))
    assert result.exit_code == 2
    assert "preprocess.sh" in result.output and "TalwalkarLab/leaf" in flat(result.output)


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_fetch_verifies_unpacks_and_prints_a_config_that_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, _ = cifar100_bytes([1, 2], [11, 22])
    archive = _tgz({"cifar-100-binary/train.bin": raw, "cifar-100-binary/test.bin": raw})
    src = fetching.SOURCES["cifar100"]
    monkeypatch.setitem(
        fetching.SOURCES, "cifar100", fetching.Source(**{**src.__dict__, "md5": hashlib.md5(archive).hexdigest()})
    )
    monkeypatch.setattr(fetching, "download", lambda url, dest, progress=None: dest.write_bytes(archive))
    result = fetch_cli("cifar100", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    assert "dataset: cifar100" in result.output
    path = tmp_path / "data" / "cifar-100-binary"
    assert f"path:{path}" in flat(result.output)
    d = load_dataset("cifar100", path=str(path))  # the printed path is what the loader reads
    np.testing.assert_array_equal(d.y, [11, 22, 11, 22])


def test_fetch_checksum_mismatch_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _tgz({"cifar-100-binary/train.bin": cifar100_bytes([1], [2])[0]})
    monkeypatch.setattr(fetching, "download", lambda url, dest, progress=None: dest.write_bytes(archive))
    result = fetch_cli("cifar100", str(tmp_path))
    assert result.exit_code == 2
    assert "03b5dce01913d631647c71ecec9e9cb8" in result.output and "MD5" in result.output
    assert not (tmp_path / "cifar-100-binary.tar.gz").exists()  # moved aside, so a re-run downloads again
    assert not (tmp_path / "cifar-100-binary").exists()


@pytest.mark.parametrize(("fields", "code"), [(6169, 0), (7, 2)])
def test_fetch_texas_checks_the_record_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: int, code: int
) -> None:
    archive = _tgz({"texas/100/feats": (",".join(["0"] * fields) + "\n").encode(), "texas/100/labels": b"3\n"})
    monkeypatch.setattr(fetching, "download", lambda url, dest, progress=None: dest.write_bytes(archive))
    result = fetch_cli("texas100", str(tmp_path))
    assert result.exit_code == code, result.output
    if code == 0:
        assert load_dataset("texas100", path=str(tmp_path / "texas" / "100")).x.shape == (1, 6169)
    else:
        assert "7 fields, not 6169" in " ".join(result.output.split())  # rich wraps long paths


def test_fetch_refuses_an_archive_escaping_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _tgz({"../escape.txt": b"x", "texas/100/feats": b"1,0\n"})
    monkeypatch.setattr(fetching, "download", lambda url, dest, progress=None: dest.write_bytes(archive))
    result = fetch_cli("texas100", str(tmp_path / "d"))
    assert result.exit_code == 2 and "cannot unpack" in result.output
    assert not (tmp_path / "escape.txt").exists()


# ---- every config in configs/ validates, and its data params read a fixture -------------------------------


def fixture_for(dataset: str, root: Path) -> dict[str, Any]:
    """data.params that point the dataset at a fixture written under ``root``."""
    if dataset == "texas100":
        write_texas(root, n=30)
        return {"path": str(root)}
    if dataset == "purchase100":
        write_purchase(root / "dataset_purchase", n=30)
        return {"path": str(root)}
    if dataset == "cifar100":
        (root / "cifar-100-binary").mkdir()
        (root / "cifar-100-binary" / "train.bin").write_bytes(cifar100_bytes([1, 2, 3], [4, 5, 6])[0])
        return {"path": str(root)}
    if dataset == "femnist":
        write_leaf(root)
        return {"path": str(root)}
    if dataset == "hf-disk":
        write_hf_images(root / "hf")
        return {"path": str(root / "hf")}
    return {}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_validates_and_its_data_loads(tmp_path: Path, config: Path) -> None:
    cfg = load_config(config)
    params = fixture_for(cfg.data.dataset, tmp_path)
    if params:  # a real dataset: its documented default path, and the model fits the fixture's records
        assert str(cfg.data.params["path"]).startswith("data/")
        cfg = load_config(config, [f"data.params.path={params['path']}"])
        d = load_dataset(cfg.data.dataset, **cfg.data.params)
        build_model(cfg.model.name, d.input_shape, d.num_classes, seed=0, **cfg.model.params)


def test_the_real_dataset_configs_exist() -> None:
    names = {c.stem for c in CONFIGS}
    assert {"texas100", "purchase100", "cifar100", "femnist", "hf_disk"} <= names


# ---- end to end: a short `fedmia run` on a Texas-like fixture ---------------------------------------------


def test_fedmia_run_on_a_texas_fixture_exits_0(tmp_path: Path) -> None:
    write_texas(tmp_path / "texas100", n=200, d=10)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(REPO / "configs" / "texas100.yaml"),
            f"data.params.path={tmp_path / 'texas100'}",
            "settings=[centralized]",
            "model.params={hidden: [16]}",
            "train.epochs=1",
            "audit.references=2",
            "audit.attacks=[loss, lira-offline-fixed]",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["attacks"]
    assert {r["attack"] for r in rows} == {"loss", "lira-offline-fixed"}
    assert all(r["n_members"] == 30 and r["n_nonmembers"] == 30 for r in rows)  # 15% of 200 each


def test_reference_pool_writers_follow_the_pool_order() -> None:
    """The outsider's pool is its candidates then its population (reference_knowledge): their writers."""
    from types import SimpleNamespace

    from fedmia.errors import InputError
    from fedmia.experiment.federation import pool_groups

    groups = np.array([7, 7, 8, 9, 9, 9, 5, 6])
    ctx: Any = SimpleNamespace(
        plan=SimpleNamespace(targets=np.array([5, 0, 2]), population=np.array([7, 3])),
        data=SimpleNamespace(groups=groups),
        cfg=SimpleNamespace(audit=SimpleNamespace(shadow_data=SimpleNamespace(source="population"))),
    )
    np.testing.assert_array_equal(pool_groups(ctx, 5), [9, 7, 8, 6, 9])
    with pytest.raises(InputError, match="writers"):
        pool_groups(ctx, 6)  # a pool that is not candidates + population
    ctx.cfg.audit.shadow_data.source = "noisy"
    with pytest.raises(InputError, match="writers"):
        pool_groups(ctx, 5)


def write_writers(root: Path, writers: int = 20, per_writer: int = 15) -> None:
    rng = np.random.default_rng(0)
    users = {f"f{w:04d}_00": rng.integers(0, 62, per_writer).tolist() for w in range(writers)}
    (root / "train").mkdir(parents=True)
    (root / "train" / "a.json").write_text(json.dumps(leaf_tree(users)))


@pytest.mark.slow
def test_femnist_natural_federation_with_matched_reference_federations_runs(tmp_path: Path) -> None:
    """The whole path on a LEAF fixture: the target federation and the outsider's reference federations
    partitioned by writer. In process: the federation's views equal the Ray run's (tests/fl/test_inprocess.py),
    and this test is about the data path, not the engine."""
    write_writers(tmp_path / "femnist")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(REPO / "configs" / "femnist.yaml"),
            f"data.params.path={tmp_path / 'femnist'}",
            "settings=[federated]",
            "federation.num_clients=4",
            "federation.rounds=2",
            "federation.local_epochs=1",
            "federation.fraction=1.0",
            "federation.backend=inprocess",
            "model.params={channels: [4], groups: 2}",
            "audit.references=2",
            "audit.server_references=0",
            "audit.attacks=[loss, lira-offline-fixed]",
            "audit.federated_attacks=[loss-trajectory]",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "metrics.json").read_text())["attacks"]
    assert {(r["party"], r["attack"]) for r in rows} >= {("outsider", "lira-offline-fixed"), ("server", "loss")}


# ---- fedmia fetch over real HTTP: a server on loopback, fetch's own urllib download (no mock) ---------------


def _serve_cifar100(monkeypatch: pytest.MonkeyPatch, mirror: type[LoopbackMirror], archive: bytes) -> None:
    """cifar100's table entry with two loopback mirrors: the first answers 404, the second has the archive."""
    src = fetching.SOURCES["cifar100"]
    urls = (f"{mirror.base}/gone/cifar-100-binary.tar.gz", f"{mirror.base}/kriz/cifar-100-binary.tar.gz")
    entry = fetching.Source(**{**src.__dict__, "urls": urls, "md5": hashlib.md5(archive).hexdigest()})
    monkeypatch.setitem(fetching.SOURCES, "cifar100", entry)
    mirror.files["/kriz/cifar-100-binary.tar.gz"] = archive


def test_fetch_downloads_over_http_from_the_next_mirror_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_mirror: type[LoopbackMirror]
) -> None:
    raw, _ = cifar100_bytes([4, 5, 6], [7, 8, 9])
    archive = _tgz({"cifar-100-binary/train.bin": raw, "cifar-100-binary/test.bin": raw})
    _serve_cifar100(monkeypatch, http_mirror, archive)
    result = fetch_cli("cifar100", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    assert http_mirror.requests == ["/gone/cifar-100-binary.tar.gz", "/kriz/cifar-100-binary.tar.gz"]
    assert (tmp_path / "data" / "cifar-100-binary.tar.gz").read_bytes() == archive  # streamed whole, renamed
    assert not list((tmp_path / "data").glob("*.part"))
    d = load_dataset("cifar100", path=str(tmp_path / "data" / "cifar-100-binary"))
    np.testing.assert_array_equal(d.y, [7, 8, 9, 7, 8, 9])
    again = fetch_cli("cifar100", str(tmp_path / "data"))  # the archive is there: no second download
    assert again.exit_code == 0 and len(http_mirror.requests) == 2


def test_fetch_over_http_with_a_connection_cut_short_exits_2_and_keeps_no_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_mirror: type[LoopbackMirror]
) -> None:
    """The server promises the archive's length and closes after half: a clear error, nothing unpacked, and
    no archive left behind that the next run would take as complete."""
    archive = _tgz({"cifar-100-binary/train.bin": cifar100_bytes([1], [2])[0] * 50})
    _serve_cifar100(monkeypatch, http_mirror, archive)
    http_mirror.truncate.add("/kriz/cifar-100-binary.tar.gz")
    result = fetch_cli("cifar100", str(tmp_path))
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert flat("could not download cifar100:") in text and "Traceback" not in result.output
    assert flat("NotFound") in text and flat("closed after") in text  # each mirror's reason, in order
    assert "nonetworkhere" not in text  # the server answered: the network is not the problem
    assert "MD5" not in result.output and not list(tmp_path.glob("*.part"))
    assert not (tmp_path / "cifar-100-binary.tar.gz").exists()
    assert not (tmp_path / "cifar-100-binary").exists()
