"""``fedmia audit MODEL_DIR``: a model trained elsewhere gets the outsider's attacks, through the same code
as ``fedmia run``; a folder that is not what its metadata says exits 2 naming what is wrong.

The oracle: a short script trains a model with fedmia's own ``train()`` on the plan ``fedmia run`` makes
for the same config and seed, and saves its state dict and metadata; ``fedmia audit`` on that folder
must give exactly ``fedmia run``'s per-record scores (same references, same attacks, same target).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from fedmia.experiment.cli import app
from fedmia.experiment.config import config_from_dict
from fedmia.experiment.runner import prepare
from fedmia.models import build_model
from fedmia.seeding import derive_seed, torch_generator
from fedmia.training import train

CONFIG: dict[str, Any] = {
    "name": "tiny",
    "seed": 3,
    "data": {"dataset": "breast-cancer", "split": {"members": 0.2, "nonmembers": 0.2, "population": 0.3, "test": 0.1}},
    "model": {"name": "mlp", "params": {"hidden": [8]}},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.1, "optimizer": "sgd"},
    "audit": {"references": 2, "attacks": ["loss", "lira-online"]},
}


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)


def flat(text: str) -> str:
    return " ".join(text.split())


def save_model_dir(root: Path, config: dict[str, Any], *, train_it: bool = True, **meta: Any) -> dict[str, Any]:
    """What a user's script does: train a model on the records of a plan, save its state dict and the
    metadata beside it. The plan is the one ``fedmia run`` makes for ``config``; ``meta`` overrides keys."""
    cfg = config_from_dict(config)
    data, plan = prepare(cfg)
    model = build_model(
        cfg.model.name,
        data.input_shape,
        data.num_classes,
        derive_seed(cfg.seed, "centralized", "init"),
        **cfg.model.params,
    )
    if train_it:  # fedmia's own train(), the recipe and generator fedmia run's centralized setting uses
        train(
            model,
            data.x[plan.members],
            data.y[plan.members],
            cfg.train.recipe(),
            generator=torch_generator(cfg.seed, "centralized", "train"),
        )
    root.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), root / "model.pt")
    records = {r: getattr(plan, r).tolist() for r in ("members", "nonmembers", "population", "test")}
    tree = {"n_records": data.n, "records": {**records, "candidates": plan.targets.tolist()}, **config, **meta}
    (root / "fedmia.yaml").write_text(yaml.safe_dump(tree))
    return tree


@pytest.mark.slow  # two whole runs (fedmia run, then fedmia audit): ~6 s on 2 loaded cores
def test_audit_of_a_model_trained_by_a_script_gives_fedmia_runs_scores(tmp_path: Path) -> None:
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    result = invoke("run", config_file, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output

    save_model_dir(tmp_path / "model", CONFIG)
    result = invoke("audit", tmp_path / "model", "--out", tmp_path / "audit")
    assert result.exit_code == 0, result.output

    run, audit = tmp_path / "run", tmp_path / "audit"
    assert {p.name for p in run.iterdir()} | {"audited_model.json"} == {p.name for p in audit.iterdir()}
    keys = ["attack", "record"]
    ran = pd.read_parquet(run / "scores.parquet").sort_values(keys).reset_index(drop=True)
    audited = pd.read_parquet(audit / "scores.parquet").sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(ran, audited, check_exact=False, rtol=0, atol=1e-6)
    rows = {r["attack"]: r["auc"] for r in json.loads((run / "metrics.json").read_text())["attacks"]}
    audited_metrics = json.loads((audit / "metrics.json").read_text())
    assert {r["attack"]: r["auc"] for r in audited_metrics["attacks"]} == pytest.approx(rows, abs=1e-9)
    assert audited_metrics["trained_elsewhere"] == {"centralized": "the target was loaded (fedmia audit), not trained"}
    about = json.loads((audit / "audited_model.json").read_text())
    assert about["weights"] == "model.pt" and about["records"]["members"] == len(ran[ran.is_member]) // 2


def test_an_untrained_model_is_not_mistaken_for_the_trained_one(tmp_path: Path) -> None:
    """The audit reads the weights: the same folder with the initial weights scores differently (a
    loader that ignored the file would pass the equality test above only by rebuilding the init)."""
    save_model_dir(tmp_path / "model", CONFIG, train_it=False)
    from fedmia.experiment.audit_model import load_weights, read_model_dir

    md = read_model_dir(tmp_path / "model")
    trained = build_model("mlp", (30,), 2, seed=0, hidden=[8])
    before = [p.detach().clone() for p in trained.parameters()]
    load_weights(md.weights, trained)
    saved = torch.load(md.weights, weights_only=True)
    assert all(torch.equal(p, saved[k]) for k, p in trained.state_dict().items())
    assert not all(torch.equal(a, b) for a, b in zip(before, trained.parameters(), strict=True))


def test_roles_the_metadata_leaves_out_are_drawn_from_the_other_records(tmp_path: Path) -> None:
    from fedmia.data import load_dataset
    from fedmia.experiment.audit_model import plan_around, read_model_dir

    members = list(range(0, 100))
    tree = {**CONFIG, "records": {"members": members}}
    (tmp_path / "m").mkdir()
    torch.save(build_model("mlp", (30,), 2, seed=0, hidden=[8]).state_dict(), tmp_path / "m" / "model.pt")
    (tmp_path / "m" / "fedmia.json").write_text(json.dumps(tree))
    md = read_model_dir(tmp_path / "m")
    plan = plan_around(md, load_dataset("breast-cancer"))  # 569 records: 0.2 / 0.3 / 0.1 of them, floored
    assert plan.members.tolist() == members
    assert (len(plan.nonmembers), len(plan.population), len(plan.test)) == (113, 170, 56)
    rest = np.concatenate([plan.nonmembers, plan.population, plan.test])
    assert rest.min() >= 100 and len(np.unique(rest)) == len(rest)
    assert sorted(plan.targets.tolist()) == sorted(members + plan.nonmembers.tolist())
    again = plan_around(read_model_dir(tmp_path / "m"), load_dataset("breast-cancer"))
    assert np.array_equal(again.targets, plan.targets)  # seeded by the config's seed


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    save_model_dir(root, CONFIG, train_it=False)
    return root


def edit_meta(root: Path, **changes: Any) -> None:
    tree = yaml.safe_load((root / "fedmia.yaml").read_text())
    for key, value in changes.items():
        node = tree
        *path, last = key.split("__")
        for k in path:
            node = node[k]
        node[last] = value
    (root / "fedmia.yaml").write_text(yaml.safe_dump(tree))


class Pickled:
    """An arbitrary object: torch.load(weights_only=True) must refuse to rebuild it."""


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (
            lambda r: edit_meta(r, model={"name": "mlp", "params": {"hidden": [16]}}),
            "'1.weight' has shape (8, 30), the configured model's is (16, 30)",
        ),
        (
            lambda r: torch.save(
                {k: v for k, v in torch.load(r / "model.pt").items() if k != "3.bias"}, r / "model.pt"
            ),
            "missing key(s) 3.bias",
        ),
        (
            lambda r: torch.save({**torch.load(r / "model.pt"), "extra.weight": torch.zeros(1)}, r / "model.pt"),
            "unexpected key(s) extra.weight",
        ),
        (lambda r: edit_meta(r, n_records=1797), "n_records is 1797, but dataset 'breast-cancer' has 569 records"),
        (
            lambda r: edit_meta(r, records__members=[0, 1, 569]),
            "records.members: index 569 is out of range; dataset 'breast-cancer' has 569 records (0 to 568)",
        ),
        (lambda r: edit_meta(r, records__members=[0, 1, 1]), "records.members lists record 1 more than once"),
        (lambda r: edit_meta(r, records__nonmembers=[0, 600]), "records.nonmembers: index 600 is out of range"),
        (lambda r: (r / "model.pt").write_bytes(pickle.dumps(Pickled())), "not a weights-only state dict"),
        (
            lambda r: torch.save({"state_dict": torch.load(r / "model.pt")}, r / "model.pt"),
            "'state_dict' holds a OrderedDict, not a tensor",
        ),
        (lambda r: (r / "model.pt").unlink(), "no weight files (.pt, .pth)"),
        (lambda r: (r / "fedmia.yaml").unlink(), "no metadata file"),
        (lambda r: edit_meta(r, records={"nonmembers": [1]}), "records.members is required"),
        (lambda r: edit_meta(r, settings=["federated"]), "fedmia audit attacks one model trained elsewhere"),
        (lambda r: edit_meta(r, train__epoch=3), "train.epoch: unknown field"),
        (
            lambda r: edit_meta(r, records__candidates=[0, 1]),
            "records.candidates must list the members and the non-members",
        ),
    ],
)
def test_a_model_dir_that_is_not_what_it_claims_exits_2_naming_it(
    tmp_path: Path, model_dir: Path, damage: Any, needle: str
) -> None:
    damage(model_dir)
    out = tmp_path / "audit"
    result = invoke("audit", model_dir, "--out", out)
    assert result.exit_code == 2, result.output
    assert needle in flat(result.output)
    assert not out.exists()  # nothing trained, nothing written


def test_a_full_pickled_model_is_refused_without_running_its_code(tmp_path: Path, model_dir: Path) -> None:
    """torch.save(model) pickles the module: weights_only refuses it instead of importing and running it."""
    torch.save(build_model("mlp", (30,), 2, seed=0, hidden=[8]), model_dir / "model.pt")
    result = invoke("audit", model_dir, "--out", tmp_path / "audit")
    assert result.exit_code == 2
    assert "not a weights-only state dict" in flat(result.output) and "model.state_dict()" in flat(result.output)


def test_overrides_apply_to_the_config_part(tmp_path: Path, model_dir: Path) -> None:
    from fedmia.experiment.audit_model import read_model_dir

    md = read_model_dir(model_dir, ["audit.references=4", "name=renamed"])
    assert md.cfg.audit.references == 4 and md.cfg.name == "renamed"
    assert len(md.records["members"]) == 114
