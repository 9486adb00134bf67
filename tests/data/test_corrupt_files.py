"""Truncated or corrupt dataset and checkpoint files give a clear error that names the file.

Dataset loaders raise ``DataFileError``, checkpoints ``CheckpointError``; the CLI turns both into
exit code 2 with the file named, before any run directory is created. Nothing is ever unpickled:
the package's source is scanned for ``torch.load`` without ``weights_only=True``, ``pickle`` loads
and ``np.load(..., allow_pickle=True)``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmia.data import load_dataset
from fedmia.data.files import DataFileError
from fedmia.experiment.checkpoint import CHECKPOINTS, CheckpointError, Checkpoints
from fedmia.experiment.cli import app
from fedmia.experiment.config import dump_config, load_config
from fedmia.experiment.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "fedmia"
QUICKSTART = REPO / "configs" / "quickstart.yaml"
CIFAR_RECORD = 1 + 3 * 32 * 32
FEATURES = 6


def flat(text: str) -> str:
    """Output without whitespace, so a path wrapped by rich still matches."""
    return "".join(text.split())


def csv_rows(n: int = 4) -> list[str]:
    rng = np.random.default_rng(0)
    return [",".join([str(1 + i % 3), *(str(int(v)) for v in rng.integers(0, 2, FEATURES))]) for i in range(n)]


# ---- purchase100 (CSV) ------------------------------------------------------------------------------

BAD_CSV: dict[str, tuple[str, str]] = {
    # name: (file content, a word the message must contain)
    "ragged-row": ("\n".join([*csv_rows(3), "2,1,0"]) + "\n", "numeric csv"),
    "non-numeric-cell": ("\n".join([*csv_rows(2), "3,1,0,x,1,0,1", *csv_rows(1)]) + "\n", "numeric csv"),
    "header-row": ("\n".join(["label," + ",".join(f"f{i}" for i in range(FEATURES)), *csv_rows(2)]) + "\n", "numeric"),
    "empty": ("", "column"),
    "label-only": ("1\n2\n3\n", "column"),
    "label-zero": ("\n".join(["0,1,0,1,0,1,0", *csv_rows(2)]) + "\n", "label"),
    "fractional-label": ("\n".join(["1.5,1,0,1,0,1,0", *csv_rows(2)]) + "\n", "label"),
    "binary-junk": ("\x00\x01\x02garbage\xff", "numeric"),
}


def test_purchase100_good_file_loads(tmp_path: Path) -> None:
    p = tmp_path / "ok.csv"
    p.write_text("\n".join(csv_rows(5)) + "\n")
    d = load_dataset("purchase100", path=str(p))
    assert d.x.shape == (5, FEATURES) and d.y.tolist() == [0, 1, 2, 0, 1]


@pytest.mark.filterwarnings("ignore:.*input contained no data")
@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_purchase100_corrupt_csv_names_the_file(tmp_path: Path, case: str) -> None:
    content, word = BAD_CSV[case]
    p = tmp_path / f"purchase-{case}.csv"
    p.write_bytes(content.encode("latin-1"))
    with pytest.raises(DataFileError) as exc:
        load_dataset("purchase100", path=str(p))
    assert str(p) in str(exc.value)
    assert word in str(exc.value).lower()


def test_purchase100_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not found"):
        load_dataset("purchase100", path=str(tmp_path / "nowhere.csv"))


# ---- cifar10 (binary records) -----------------------------------------------------------------------


def cifar_bytes(labels: list[int]) -> bytes:
    rng = np.random.default_rng(1)
    recs = [np.concatenate([[lab], rng.integers(0, 256, CIFAR_RECORD - 1)]).astype(np.uint8) for lab in labels]
    return b"".join(r.tobytes() for r in recs)


def test_cifar10_good_file_loads(tmp_path: Path) -> None:
    p = tmp_path / "data_batch_1.bin"
    p.write_bytes(cifar_bytes([3, 9, 0]))
    d = load_dataset("cifar10", path=str(p))
    assert d.x.shape == (3, 3, 32, 32) and d.y.tolist() == [3, 9, 0]


@pytest.mark.parametrize(
    ("make", "word"),
    [
        (lambda: cifar_bytes([1, 2])[: CIFAR_RECORD + CIFAR_RECORD // 2], "truncated"),  # cut mid-record
        (lambda: cifar_bytes([1, 2])[:-1], "truncated"),  # one byte short
        (lambda: cifar_bytes([1]) + b"\x00", "truncated"),  # one byte too many
        (lambda: b"", "truncated"),
        (lambda: cifar_bytes([1, 10, 2]), "label"),  # label byte > 9
        (lambda: cifar_bytes([255]), "label"),
    ],
    ids=["mid-record", "short-by-one", "long-by-one", "empty", "label-10", "label-255"],
)
def test_cifar10_corrupt_file_names_the_file(tmp_path: Path, make: Callable[[], bytes], word: str) -> None:
    p = tmp_path / "data_batch_1.bin"
    p.write_bytes(make())
    with pytest.raises(DataFileError) as exc:
        load_dataset("cifar10", path=str(p))
    assert str(p) in str(exc.value) and word in str(exc.value)


def test_cifar10_folder_names_the_one_bad_file(tmp_path: Path) -> None:
    (tmp_path / "data_batch_1.bin").write_bytes(cifar_bytes([1, 2]))
    (tmp_path / "data_batch_2.bin").write_bytes(cifar_bytes([3, 4])[:-100])
    (tmp_path / "test_batch.bin").write_bytes(cifar_bytes([5]))
    with pytest.raises(DataFileError) as exc:
        load_dataset("cifar10", path=str(tmp_path))
    assert str(tmp_path / "data_batch_2.bin") in str(exc.value)
    assert "data_batch_1.bin" not in str(exc.value) and "test_batch.bin" not in str(exc.value)


def test_cifar10_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="no CIFAR-10"):
        load_dataset("cifar10", path=str(tmp_path))


# ---- checkpoints ------------------------------------------------------------------------------------

META = {"utility": {"centralized": {"train_accuracy": 0.5}}, "rows": [], "note": "x"}


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {"curve/0/0/fpr": rng.random(2000), "scores/0/record": np.arange(500), "flags": rng.random(300) > 0.5}


@pytest.fixture
def ckpt(tmp_path: Path) -> Checkpoints:
    c = Checkpoints(RunDir(tmp_path / "run"))
    c.save_stage("centralized", META, arrays())
    c.save_round("federated", 1, {"round": 1}, arrays())
    return c


def stage_file(c: Checkpoints, suffix: str) -> Path:
    return c.root / f"stage-centralized{suffix}"


def test_intact_checkpoints_round_trip(ckpt: Checkpoints) -> None:
    loaded = ckpt.load_stage("centralized")
    assert loaded is not None
    meta, arrs = loaded
    assert meta == META
    assert arrs.keys() == arrays().keys()
    for k, v in arrays().items():
        np.testing.assert_array_equal(arrs[k], v)
    assert ckpt.load_stage("federated") is None  # no such stage yet
    assert ckpt.finished_rounds("federated") == 1
    assert ckpt.load_round("federated", 1)[0] == {"round": 1}


def truncate(fraction: float) -> Callable[[bytes], bytes]:
    return lambda b: b[: int(len(b) * fraction)]


def flip_middle(b: bytes) -> bytes:  # corrupts array bytes: the zip member's CRC no longer matches
    i = len(b) // 3
    return b[:i] + bytes(x ^ 0xFF for x in b[i : i + 64]) + b[i + 64 :]


def as_npy(_: bytes) -> bytes:  # a bare .npy where the .npz should be (np.load returns an array, not a zip)
    import io

    buf = io.BytesIO()
    np.save(buf, np.arange(10))
    return buf.getvalue()


def with_object_array(_: bytes) -> bytes:  # an array that could only be loaded by unpickling it
    import io

    buf = io.BytesIO()
    np.savez(buf, obj=np.array([{"a": 1}, None], dtype=object))
    return buf.getvalue()


NPZ_CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "half": truncate(0.5),
    "empty": truncate(0.0),
    "first-byte": truncate(1 / 10_000_000),
    "all-but-last-byte": lambda b: b[:-1],
    "flipped-bytes": flip_middle,
    "text-garbage": lambda _: b"this is not a zip file\n" * 10,
    "bare-npy": as_npy,
    "pickled-object-array": with_object_array,
}


@pytest.mark.parametrize("case", sorted(NPZ_CORRUPTIONS))
def test_corrupt_stage_npz_names_the_file(ckpt: Checkpoints, case: str) -> None:
    npz = stage_file(ckpt, ".npz")
    npz.write_bytes(NPZ_CORRUPTIONS[case](npz.read_bytes()))
    with pytest.raises(CheckpointError) as exc:
        ckpt.load_stage("centralized")
    assert str(npz) in str(exc.value)
    assert "corrupt" in str(exc.value)


JSON_CORRUPTIONS: dict[str, bytes] = {
    "half": json.dumps(META).encode()[: len(json.dumps(META)) // 2],
    "empty": b"",
    "garbage": b"\x00\x01garbage{{{",
    "not-utf8": b'{"a": "\xff\xfe"}',
    "trailing-junk": json.dumps(META).encode() + b"}}",
}


@pytest.mark.parametrize("case", sorted(JSON_CORRUPTIONS))
def test_corrupt_stage_json_names_the_file(ckpt: Checkpoints, case: str) -> None:
    meta = stage_file(ckpt, ".json")
    meta.write_bytes(JSON_CORRUPTIONS[case])
    with pytest.raises(CheckpointError) as exc:
        ckpt.load_stage("centralized")
    assert str(meta) in str(exc.value)


def test_missing_stage_npz_beside_its_json_names_the_file(ckpt: Checkpoints) -> None:
    npz = stage_file(ckpt, ".npz")
    npz.unlink()
    with pytest.raises(CheckpointError) as exc:
        ckpt.load_stage("centralized")
    assert str(npz) in str(exc.value)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_corrupt_round_names_the_file(ckpt: Checkpoints, suffix: str) -> None:
    f = ckpt.root / "federated" / f"round-00001{suffix}"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError) as exc:
        ckpt.load_round("federated", 1)
    assert str(f) in str(exc.value)


# ---- through the CLI: exit 2, the file named, no run directory ---------------------------------------


def invoke(*args: str | Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["run", *map(str, args)])


@pytest.mark.filterwarnings("ignore:.*input contained no data")
@pytest.mark.parametrize("case", ["ragged-row", "non-numeric-cell", "empty", "binary-junk"])
def test_cli_corrupt_purchase100_exits_2_naming_the_file(tmp_path: Path, case: str) -> None:
    p = tmp_path / f"purchase-{case}.csv"
    p.write_bytes(BAD_CSV[case][0].encode("latin-1"))
    out = tmp_path / "run"
    result = invoke(QUICKSTART, "data.dataset=purchase100", f"data.params.path={p}", "--out", out)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    assert p.name in flat(result.output)
    assert not out.exists()


def test_cli_truncated_cifar10_exits_2_naming_the_file(tmp_path: Path) -> None:
    p = tmp_path / "data_batch_1.bin"
    p.write_bytes(cifar_bytes([1, 2, 3])[:-7])
    out = tmp_path / "run"
    result = invoke(
        QUICKSTART, "data.dataset=cifar10", f"data.params.path={p}", "model.name=cnn", "model.params={}", "--out", out
    )
    assert result.exit_code == 2, result.output
    assert "data_batch_1.bin" in flat(result.output) and "Traceback" not in result.output
    assert not out.exists()


STAGE_META = {"utility": {}, "rows": [], "skipped": [], "extra": {}, "curves": [], "frames": []}


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("stage-centralized.json", lambda b: b"garbage{"),
        ("stage-centralized.npz", truncate(0.5)),
        # JSON that parses but is not a stage's layout (a hand edit, another version): no KeyError traceback
        ("stage-centralized.json", lambda b: b"[1, 2]"),
        ("stage-centralized.json", lambda b: b"{}"),
        (
            "stage-centralized.json",
            lambda b: json.dumps({**STAGE_META, "curves": [["s", "p", "a", "nosuch"]]}).encode(),
        ),
    ],
    ids=["json-garbage", "npz-half", "json-list", "json-empty-object", "json-names-missing-arrays"],
)
def test_cli_resume_with_corrupt_stage_exits_2_naming_the_file(
    tmp_path: Path, name: str, corrupt: Callable[[bytes], bytes]
) -> None:
    run = RunDir(tmp_path / "interrupted")
    run.write_text("config.yaml", dump_config(load_config(QUICKSTART)))
    Checkpoints(run).save_stage("centralized", STAGE_META, arrays())
    f = run.path / CHECKPOINTS / name
    f.write_bytes(corrupt(f.read_bytes()))
    result = CliRunner().invoke(app, ["run", "--resume", str(run.path)])
    assert result.exit_code == 2, result.output
    assert name in flat(result.output) and "Traceback" not in result.output
    assert not (run.path / "metrics.json").exists()


# ---- nothing is unpickled ---------------------------------------------------------------------------


def package_sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    return files


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def test_no_unsafe_deserialization_in_the_package() -> None:
    offenders = []
    for f in package_sources():
        text = f.read_text()
        where = f.relative_to(REPO)
        # the regex sweep: catches aliases and calls an AST walk would not see as calls
        for m in re.finditer(r"\b(c?[Pp]ickle|dill|joblib|shelve|marshal)\b|read_pickle|allow_pickle\s*=\s*True", text):
            offenders.append(f"{where}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}")
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "torch"
                and any(a.name == "load" for a in node.names)
            ):
                offenders.append(f"{where}:{node.lineno}: from torch import load")
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name.endswith("torch.load") and not _keyword_true(node, "weights_only"):
                offenders.append(f"{where}:{node.lineno}: {name} without weights_only=True")
            if name.split(".")[-1] == "load" and name.split(".")[0] in {"np", "numpy"}:
                if _keyword_true(node, "allow_pickle"):
                    offenders.append(f"{where}:{node.lineno}: {name}(allow_pickle=True)")
                if not any(k.arg == "allow_pickle" for k in node.keywords):
                    offenders.append(f"{where}:{node.lineno}: {name} without an explicit allow_pickle=False")
    # the regex sweep also finds every torch.load, however it is spelled, and checks its arguments
    for f in package_sources():
        text = f.read_text()
        for m in re.finditer(r"torch\.load\s*\(", text):
            call = text[m.end() : text.find(")", m.end()) + 1]
            if not re.search(r"weights_only\s*=\s*True", call):
                offenders.append(f"{f.relative_to(REPO)}: torch.load without weights_only=True")
    assert offenders == []


def test_the_scan_catches_what_it_should() -> None:
    """The AST helpers flag the unsafe spellings and pass the safe ones."""
    calls = {
        "torch.load(p)": True,
        "torch.load(p, weights_only=False)": True,
        "torch.load(p, weights_only=True)": False,
    }
    for src, unsafe in calls.items():
        call = ast.parse(src).body[0].value  # type: ignore[attr-defined]
        assert (_dotted(call.func) == "torch.load" and not _keyword_true(call, "weights_only")) is unsafe
    call = ast.parse("np.load(p, allow_pickle=True)").body[0].value  # type: ignore[attr-defined]
    assert _keyword_true(call, "allow_pickle")
