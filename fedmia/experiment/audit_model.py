"""``fedmia audit MODEL_DIR``: the outsider's attacks on a model trained elsewhere.

MODEL_DIR holds the model's weights, a state dict saved with ``torch.save(model.state_dict(), path)``
(read with ``torch.load(..., weights_only=True)``: nothing else is unpickled), and ``fedmia.yaml`` (or
``fedmia.json``) saying what it is::

    weights: model.pt            # optional: the folder's only .pt / .pth file
    n_records: 1797              # optional: the dataset size the indices refer to (checked)
    records:
      members: [3, 17, ...]      # required: the records it trained on (global indices, or a .npy / .json file)
      nonmembers: [...]          # optional, as are population and test: drawn from the other records
      candidates: [...]          # optional: the order members and non-members are scored in
    seed: 0                      # the rest is a `fedmia run` config: data, model, train, audit, ...
    data: {dataset: digits}
    model: {name: mlp, params: {hidden: [64]}}   # a registered name or an import path package.module:factory
    train: {epochs: 40, lr: 0.05}                # the recipe the target trained with: the references' recipe
    audit: {references: 16, attacks: [loss, lira-online, rmia]}

The audit is ``fedmia run``'s centralized setting with two things given instead of made: the plan (the
members above; the other roles drawn from the records it did not train on, in ``data.split``'s
proportions, seeded by the config's seed) and the target (loaded, not trained). Everything else, the
references trained with fedmia's ``train()`` and the recipe, the attacks and the run directory, is the
same code as ``fedmia run``'s, so a model that fedmia's own ``train()`` made on a plan gets exactly the
scores ``fedmia run`` gives it. A file that is not what the metadata claims (a key missing, a shape
that differs, indices out of range, a record count that differs) is an ``InputError`` naming it.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from fedmia.data import Dataset, MembershipPlan
from fedmia.errors import InputError
from fedmia.experiment.config import (
    ConfigError,
    ExperimentConfig,
    _yaml,
    config_from_dict,
    dump_config,
    parse_overrides,
    with_values,
)
from fedmia.experiment.execute import Finished, PreparedRun, check_new_run_dir, execute
from fedmia.experiment.rundir import RunDir
from fedmia.experiment.runner import build_context
from fedmia.seeding import derive_seed, rng
from fedmia.training.defenses import apply_recipe
from fedmia.training.train import holdout_fractions

METADATA = ("fedmia.yaml", "fedmia.yml", "fedmia.json")
WEIGHT_SUFFIXES = (".pt", ".pth")
ROLES = ("members", "nonmembers", "population", "test")
AUDIT_KEYS = ("weights", "n_records", "records")  # the metadata's own keys; the rest is a run config


@dataclass(frozen=True)
class ModelDir:
    """A parsed MODEL_DIR: the weights file, the run config, the given record roles, the claimed size."""

    root: Path
    metadata: Path
    weights: Path
    cfg: ExperimentConfig
    records: dict[str, np.ndarray]  # role (members, ..., candidates) -> global indices, as given
    n_records: int | None


def read_model_dir(root: Path, overrides: Sequence[str] = ()) -> ModelDir:
    """Parse MODEL_DIR's metadata and config (``key=value`` overrides apply to the config part)."""
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (MODEL_DIR holds the weights and {METADATA[0]})")
    found = [root / n for n in METADATA if (root / n).is_file()]
    if not found:
        raise InputError(f"{root}: no metadata file; write {' or '.join(METADATA[::2])} beside the weights")
    if len(found) > 1:
        raise InputError(f"{root}: {', '.join(p.name for p in found)}: keep one metadata file")
    meta_path = found[0]
    try:
        tree = _yaml(meta_path.read_text())
    except Exception as exc:  # yaml's and decoding errors: the file is not YAML/JSON
        raise InputError(f"{meta_path}: not valid YAML or JSON ({exc})") from None
    if not isinstance(tree, dict):
        raise InputError(f"{meta_path}: must be a mapping (weights, records, and a run config)")
    own = {k: tree.pop(k) for k in AUDIT_KEYS if k in tree}
    settings = tree.get("settings", ["centralized"])
    if list(settings) != ["centralized"]:
        raise InputError(
            f"{meta_path}: settings {settings}: fedmia audit attacks one model trained elsewhere as the "
            "centralized outsider; leave settings out"
        )
    try:
        cfg = config_from_dict(with_values(tree, parse_overrides(list(overrides))))
    except ConfigError as exc:
        raise InputError(f"{meta_path}: {exc}") from None
    if holdout_fractions(apply_recipe(cfg.train.recipe(), cfg.defense_objects())) != (0.0, 0.0):
        raise InputError(
            f"{meta_path}: training-time defenses that hold records out (early stopping, adversarial "
            "regularization) are not supported by fedmia audit: list what the model trained on as its members"
        )
    n_records = own.get("n_records")
    if n_records is not None and (isinstance(n_records, bool) or not isinstance(n_records, int) or n_records < 1):
        raise InputError(f"{meta_path}: n_records must be a positive integer, got {n_records!r}")
    records = _records(meta_path, own.get("records"))
    return ModelDir(root, meta_path, _weights_file(root, meta_path, own.get("weights")), cfg, records, n_records)


def _weights_file(root: Path, meta: Path, named: Any) -> Path:
    if named is not None:
        if not isinstance(named, str) or not named:
            raise InputError(f"{meta}: weights must be a file name in {root}, got {named!r}")
        path = root / named
        if not path.is_file():
            raise InputError(f"{meta}: weights file {path} not found")
        if path.suffix == ".safetensors":
            raise InputError(f"{path}: safetensors files need the safetensors package, which is not installed")
        return path
    candidates = sorted(p for p in root.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(candidates) != 1:
        what = "no" if not candidates else f"{len(candidates)} ({', '.join(p.name for p in candidates)})"
        raise InputError(f"{root}: {what} weight files (.pt, .pth); name one with `weights:` in {meta.name}")
    return candidates[0]


def _records(meta: Path, given: Any) -> dict[str, np.ndarray]:
    """The metadata's record roles as int64 arrays (inline lists, or .npy / .json files beside it)."""
    if not isinstance(given, dict) or "members" not in given:
        raise InputError(f"{meta}: records.members is required: the indices of the records the model trained on")
    unknown = sorted(set(given) - {*ROLES, "candidates"})
    if unknown:
        raise InputError(f"{meta}: records.{unknown[0]}: unknown role; allowed: {', '.join([*ROLES, 'candidates'])}")
    out = {}
    for role, value in given.items():
        out[role] = _indices(meta, f"records.{role}", value)
    if len(out["members"]) == 0:
        raise InputError(f"{meta}: records.members is empty")
    return out


def _indices(meta: Path, field: str, value: Any) -> np.ndarray:
    if isinstance(value, str):  # a file beside the metadata
        path = meta.parent / value
        if not path.is_file():
            raise InputError(f"{meta}: {field}: file {path} not found")
        try:
            value = np.load(path, allow_pickle=False) if path.suffix == ".npy" else json.loads(path.read_text())
        except (ValueError, OSError) as exc:
            raise InputError(f"{meta}: {field}: {path} is not a .npy array or a JSON list ({exc})") from None
    arr = np.asarray(value)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{meta}: {field} must be a flat list of integer record indices")
    if arr.dtype == np.bool_:
        raise InputError(f"{meta}: {field} must list record indices, not booleans")
    values, counts = np.unique(arr, return_counts=True)
    dup = values[counts > 1]
    if dup.size:
        raise InputError(f"{meta}: {field} lists record {int(dup[0])} more than once")
    return arr.astype(np.int64)


def plan_around(model_dir: ModelDir, data: Dataset) -> MembershipPlan:
    """The plan of a model trained elsewhere: its members as given; the roles the metadata does not give
    are drawn from the records in none of the given roles, in ``data.split``'s proportions (seeded)."""
    meta, cfg, given = model_dir.metadata, model_dir.cfg, model_dir.records
    n = data.n
    if model_dir.n_records is not None and model_dir.n_records != n:
        raise InputError(
            f"{meta}: n_records is {model_dir.n_records}, but dataset {cfg.data.dataset!r} has {n} records; "
            "the indices would name other records"
        )
    for role, idx in given.items():
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.size:
            raise InputError(
                f"{meta}: records.{role}: index {int(bad[0])} is out of range; dataset {cfg.data.dataset!r} "
                f"has {n} records (0 to {n - 1})"
            )
    fixed = [r for r in ROLES if r in given]
    for i, a in enumerate(fixed):
        for b in fixed[i + 1 :]:
            both = np.intersect1d(given[a], given[b])
            if both.size:
                raise InputError(f"{meta}: record {int(both[0])} is in both records.{a} and records.{b}")
    free = np.setdiff1d(np.arange(n), np.concatenate([given[r] for r in fixed]))
    drawn = _draw_roles(free, [r for r in ROLES[1:] if r not in given], cfg, n, rng(cfg.seed, "audit", "plan"))
    roles = {r: np.sort(given[r]) if r in given else drawn[r] for r in ROLES}
    for role in ("nonmembers", "population"):
        if len(roles[role]) == 0:
            raise InputError(f"{meta}: no records left for {role}; list fewer members or give records.{role}")
    pool = np.concatenate([roles["members"], roles["nonmembers"]])
    if "candidates" in given:
        order = given["candidates"]
        if len(order) != len(pool) or not np.array_equal(np.sort(order), np.sort(pool)):
            raise InputError(f"{meta}: records.candidates must list the members and the non-members, each once")
    else:
        order = rng(cfg.seed, "audit", "candidates").permutation(pool)
    return MembershipPlan(n, roles["members"], roles["nonmembers"], roles["population"], roles["test"], order)


def _draw_roles(
    free: np.ndarray, roles: list[str], cfg: ExperimentConfig, n: int, gen: np.random.Generator
) -> dict[str, np.ndarray]:
    """``roles`` drawn from ``free`` at ``data.split``'s fractions of all ``n`` records, scaled down to fit."""
    if not roles:
        return {}
    wanted = np.array([getattr(cfg.data.split, r) * n for r in roles])
    if wanted.sum() > len(free):
        wanted *= len(free) / wanted.sum()
    sizes = np.floor(wanted).astype(int)
    perm = gen.permutation(free)
    bounds = np.cumsum([0, *sizes])
    return {r: np.sort(perm[a:b]) for r, a, b in zip(roles, bounds[:-1], bounds[1:], strict=True)}


def load_weights(path: Path, model: nn.Module) -> nn.Module:
    """``model`` with the state dict in ``path``; only tensors are read (``weights_only=True``), and every
    key and shape must be the model's."""
    try:
        with warnings.catch_warnings():  # torch warns about formats it may not read; the refusal says it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickling refusal, a file torch cannot read: not what it claims
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{path}: not a weights-only state dict ({first}); save it with torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise InputError(f"{path}: holds a {type(state).__name__}, not a state dict (parameter name -> tensor)")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise InputError(
            f"{path}: {not_tensors[0]!r} holds a {type(state[not_tensors[0]]).__name__}, not a tensor; "
            "save model.state_dict() itself, not a checkpoint dict around it"
        )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"missing key(s) {', '.join(missing[:5])}" if missing else ""]
        parts.append(f"unexpected key(s) {', '.join(unexpected[:5])}" if unexpected else "")
        raise InputError(
            f"{path}: does not fit the configured model: {'; '.join(p for p in parts if p)} "
            f"(the model has {', '.join(list(expected)[:5])}{', ...' if len(expected) > 5 else ''})"
        )
    for key, want in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            raise InputError(
                f"{path}: {key!r} has shape {tuple(got.shape)}, the configured model's is {tuple(want.shape)}"
            )
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise InputError(f"{path}: {key!r} holds NaN or infinite values")
    model.load_state_dict(state, strict=True)
    return model


def prepare_audit(model_dir: ModelDir, run_dir: Path, console: Console) -> PreparedRun:
    """``fedmia run``'s context with the given plan and the loaded target, and the run directory."""
    cfg = model_dir.cfg
    ctx = build_context(cfg, console, plan_for=lambda data: plan_around(model_dir, data))
    model = ctx.spec.build(derive_seed(cfg.seed, "centralized", "init"))
    ctx.target = load_weights(model_dir.weights, model)
    about = {
        "model_dir": str(model_dir.root),
        "metadata": model_dir.metadata.name,
        "weights": model_dir.weights.name,
        "records": {r: int(len(v)) for r, v in zip(ROLES, _roles(ctx.plan), strict=True)},
    }
    try:
        run = RunDir(run_dir)
        run.write_text("config.yaml", dump_config(cfg))
        run.write_text("audited_model.json", json.dumps(about, indent=2))
    except OSError as exc:
        raise InputError(f"cannot write the run directory {run_dir}: {exc.strerror or exc}") from None
    return PreparedRun(cfg, ctx, run, f"run `fedmia audit {model_dir.root} --out NEW_DIR` again")


def _roles(plan: MembershipPlan) -> list[np.ndarray]:
    return [plan.members, plan.nonmembers, plan.population, plan.test]


def audit_model_dir(
    root: Path, overrides: Sequence[str], out: Path | None, console: Console
) -> tuple[PreparedRun, Finished]:
    """Parse MODEL_DIR, load the model, train the references, attack and write the run directory.
    Bad input raises ``InputError`` before the run directory is made."""
    model_dir = read_model_dir(root, overrides)
    cfg = model_dir.cfg
    run_dir = out or Path(cfg.out_dir) / f"{cfg.name}-audit-{time.strftime('%Y%m%d-%H%M%S')}"
    check_new_run_dir(run_dir)
    prepared = prepare_audit(model_dir, run_dir, console)
    return prepared, execute(prepared)
