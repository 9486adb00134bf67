"""``fedmia attack RUN_DIR``: the server's, a client's and the outsider's attacks on a recorded federation.

RUN_DIR holds the rounds a federation recorded (``fedmia.flower.RecordingStrategy`` in a user's Flower app:
``.checkpoints/federated/round-NNNNN.{npz,json}``, each round's global models and every reply's model) and
``fedmia.json`` (or ``fedmia.yaml``, written by ``fedmia.flower.describe_recording`` or by hand) saying
which records each client held::

    records:
      clients: {"0": [3, 17, ...], "1": [...], ...}   # partition id -> global record indices (or a list of lists)
      nonmembers: [...]                              # optional, as are population and test (else drawn)
    n_records: 1797                                  # optional: the dataset size the indices refer to (checked)
    seed: 0                                          # the rest is a `fedmia run` config:
    data: {dataset: mypkg.data:load}                 # a dataset fedmia can load (a name or an import path)
    model: {name: mypkg.model:Net}                   # the recorded models' architecture
    federation: {local_epochs: 1, lr: 0.1}           # how the clients trained: the references train so
    audit: {references: 8, attacks: [loss, lira-online]}

The attack is ``fedmia run``'s federated setting with the federation replayed instead of run: the plan is
the clients' records as given (the other roles drawn from the remaining records as ``fedmia audit`` draws
them, ``plan_around``), the recorded views go, round by round, to the same observers the live federation
feeds (``SignalObserver``, ``GradientObserver``, ``LatestModels``), and the final aggregate is the released
model; then ``outsider_audit`` and ``federated_adversaries``, the same code as ``fedmia run``'s, attack it and
the results go to a new run directory (``--out``, default ``RUN_DIR/attack``). The client's rounds are
those the recording says it was sampled in (the user's strategy sampled them, not fedmia).

Bad input exits 2 naming it: no recording, a round missing or damaged, a partition id the metadata does
not list, a model whose keys or shapes differ from the configured model's, example counts that differ
from the clients' record counts, overlapping clients, indices out of range.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from fedmia.data import Dataset, MembershipPlan
from fedmia.errors import InputError
from fedmia.experiment.audit_model import METADATA, ROLES, ModelDir, _indices, plan_around
from fedmia.experiment.config import (
    ConfigError,
    ExperimentConfig,
    _yaml,
    config_from_dict,
    dump_config,
    parse_overrides,
    with_values,
)
from fedmia.experiment.context import Context, outsider_audit, record_utility
from fedmia.experiment.execute import Finished, PreparedRun, check_new_run_dir
from fedmia.experiment.exposed import exposure_summary
from fedmia.experiment.recording import SETTING, read_views
from fedmia.experiment.report import write_run
from fedmia.experiment.rundir import RunDir
from fedmia.experiment.runner import build_context
from fedmia.fl.views import RoundView
from fedmia.training.defenses import apply_recipe
from fedmia.training.train import holdout_fractions


@dataclass(frozen=True)
class Recording:
    """A parsed RUN_DIR: the recorded rounds, the run config, each client's records, the other given roles."""

    root: Path
    metadata: Path
    views: list[RoundView]
    cfg: ExperimentConfig
    clients: list[np.ndarray]  # partition id -> global record indices
    roles: dict[str, np.ndarray]  # nonmembers / population / test / candidates, as given
    n_records: int | None


def _metadata_file(root: Path) -> Path:
    names = (METADATA[2], *METADATA[:2])  # fedmia.json first: describe_recording writes it
    found = [root / n for n in names if (root / n).is_file()]
    if not found:
        raise InputError(
            f"{root}: no metadata file; write fedmia.json beside the recording (fedmia.flower.describe_recording) "
            "with the records each client held (records.clients), the dataset and the model"
        )
    if len(found) > 1:
        raise InputError(f"{root}: {', '.join(p.name for p in found)}: keep one metadata file")
    return found[0]


def _clients(meta: Path, given: Any) -> list[np.ndarray]:
    """records.clients: {partition id: indices} or [indices, ...], partition ids 0..C-1."""
    if isinstance(given, list):
        given = dict(enumerate(given))
    if not isinstance(given, dict) or not given:
        raise InputError(f"{meta}: records.clients is required: each client's record indices, by partition id")
    by_pid: dict[int, Any] = {}
    for key, value in given.items():
        try:
            pid = int(key)
        except (TypeError, ValueError):
            raise InputError(f"{meta}: records.clients: {key!r} is not a partition id (0, 1, ...)") from None
        by_pid[pid] = value
    if sorted(by_pid) != list(range(len(by_pid))):
        raise InputError(f"{meta}: records.clients must list partition ids 0..{len(by_pid) - 1}, got {sorted(by_pid)}")
    clients = [_indices(meta, f"records.clients.{p}", by_pid[p]) for p in range(len(by_pid))]
    for p, c in enumerate(clients):
        if len(c) == 0:
            raise InputError(f"{meta}: records.clients.{p} is empty")
    pooled = np.concatenate(clients)
    values, counts = np.unique(pooled, return_counts=True)
    if (counts > 1).any():
        twice = int(values[counts > 1][0])
        owners = [p for p, c in enumerate(clients) if twice in c]
        raise InputError(f"{meta}: record {twice} is held by clients {owners}; each record belongs to one client")
    return clients


def read_recording(root: Path, overrides: Sequence[str] = ()) -> Recording:
    """Parse RUN_DIR: metadata, config (``key=value`` overrides apply to it) and the recorded rounds."""
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (RUN_DIR holds a federation's recorded rounds and fedmia.json)")
    meta_path = _metadata_file(root)
    try:
        tree = _yaml(meta_path.read_text())
    except Exception as exc:  # yaml's and decoding errors: the file is not YAML/JSON
        raise InputError(f"{meta_path}: not valid YAML or JSON ({exc})") from None
    if not isinstance(tree, dict):
        raise InputError(f"{meta_path}: must be a mapping (records, and a run config)")
    records = tree.pop("records", None)
    n_records = tree.pop("n_records", None)
    if n_records is not None and (isinstance(n_records, bool) or not isinstance(n_records, int) or n_records < 1):
        raise InputError(f"{meta_path}: n_records must be a positive integer, got {n_records!r}")
    if not isinstance(records, dict):
        raise InputError(f"{meta_path}: records.clients is required: each client's record indices, by partition id")
    unknown = sorted(set(records) - {"clients", *ROLES[1:], "candidates"})
    if unknown:
        raise InputError(f"{meta_path}: records.{unknown[0]}: unknown; allowed: clients, nonmembers, population, test")
    clients = _clients(meta_path, records.get("clients"))
    roles = {r: _indices(meta_path, f"records.{r}", v) for r, v in records.items() if r != "clients"}
    if list(tree.get("settings", [SETTING])) != [SETTING]:
        raise InputError(f"{meta_path}: settings: fedmia attack replays one recorded federation; leave settings out")

    if not (root / ".checkpoints" / SETTING / "round-00001.json").is_file():
        raise InputError(
            f"{root}: no recorded rounds (.checkpoints/{SETTING}/round-00001.json); record them with "
            "fedmia.flower.RecordingStrategy around your strategy"
        )
    views = read_views(root)
    where = root / ".checkpoints" / SETTING
    for view in views:
        for u in view.updates:
            if not 0 <= u.partition_id < len(clients):
                raise InputError(
                    f"{where}/round-{view.server_round:05d}: an update from partition {u.partition_id}, but "
                    f"{meta_path.name} lists clients 0..{len(clients) - 1} only (records.clients)"
                )
    fed = dict(tree.get("federation") or {})
    for key, value, what in [
        ("num_clients", len(clients), "clients in records.clients"),
        ("rounds", len(views), "recorded rounds"),
    ]:
        if key in fed and fed[key] != value:
            raise InputError(f"{meta_path}: federation.{key} is {fed[key]!r}, but RUN_DIR has {value} {what}")
        fed[key] = value
    secure = bool(views) and all(v.secure_aggregation for v in views)  # recorded behind secure aggregation
    if fed.get("secure_aggregation", secure) != secure:
        raise InputError(
            f"{meta_path}: federation.secure_aggregation is {fed['secure_aggregation']!r}, but the recorded rounds "
            f"were {'' if secure else 'not '}behind secure aggregation"
        )
    fed["secure_aggregation"] = secure
    tree["federation"] = {"backend": "inprocess", **fed}
    tree["settings"] = [SETTING]
    try:
        cfg = config_from_dict(with_values(tree, parse_overrides(list(overrides))))
    except ConfigError as exc:
        raise InputError(f"{meta_path}: {exc}") from None
    for key, value, what in [
        ("num_clients", len(clients), "clients in records.clients"),
        ("rounds", len(views), "recorded rounds"),
    ]:  # again, after the overrides
        if getattr(cfg.federation, key) != value:
            raise InputError(f"federation.{key}={getattr(cfg.federation, key)}, but RUN_DIR has {value} {what}")
    if holdout_fractions(apply_recipe(cfg.train.recipe(), cfg.defense_objects())) != (0.0, 0.0):
        raise InputError(
            f"{meta_path}: training-time defenses that hold records out are not supported by fedmia attack: "
            "list what each client trained on as its records"
        )
    return Recording(root, meta_path, views, cfg, clients, roles, n_records)


def plan_of(rec: Recording, data: Dataset) -> MembershipPlan:
    """The members are the clients' records; the other roles as ``fedmia audit`` makes them (``plan_around``)."""
    given = {"members": np.concatenate(rec.clients), **rec.roles}
    plan = plan_around(ModelDir(rec.root, rec.metadata, Path(), rec.cfg, given, rec.n_records), data)
    return plan.with_clients(list(rec.clients))  # each client's records in the given order (its training order)


def check_views(rec: Recording, ctx: Context) -> None:
    """Every recorded model fits the configured model (keys, shapes, finite); every partition id is a client
    of the metadata; each client's reported example count is its number of records."""
    expected = {k: tuple(v.shape) for k, v in ctx.spec.build(0).state_dict().items()}
    where = rec.root / ".checkpoints" / SETTING
    for view in rec.views:
        models = [("the global model it started from", view.global_before)]
        models += [("the aggregate", view.global_after)] if view.global_after is not None else []
        for u in view.updates:
            name = f"partition {u.partition_id}'s update"
            if u.num_examples and u.num_examples != len(rec.clients[u.partition_id]):
                raise InputError(
                    f"{where}/round-{view.server_round:05d}: partition {u.partition_id} reported {u.num_examples} "
                    f"examples, but {rec.metadata.name} gives it {len(rec.clients[u.partition_id])} records"
                )
            models.append((name, u.state))
        for name, state in models:
            got = {k: tuple(v.shape) for k, v in state.items()}
            if got != expected:
                missing = sorted(set(expected) - set(got))[:3]
                extra = sorted(set(got) - set(expected))[:3]
                shapes = [k for k in expected if k in got and got[k] != expected[k]][:3]
                detail = "; ".join(
                    p
                    for p in [
                        f"missing {missing}" if missing else "",
                        f"unexpected {extra}" if extra else "",
                        ", ".join(f"{k!r} has shape {got[k]}, the model's is {expected[k]}" for k in shapes),
                    ]
                    if p
                )
                raise InputError(
                    f"{where}/round-{view.server_round:05d}: {name} does not fit model {ctx.cfg.model.name!r}: {detail}"
                )
            if not all(v.isfinite().all() for v in state.values() if v.is_floating_point()):
                raise InputError(f"{where}/round-{view.server_round:05d}: {name} holds NaN or infinite values")


def replay_federated(ctx: Context, views: Sequence[RoundView]) -> None:
    """``fedmia run``'s federated setting with the recorded views in place of a live federation."""
    from fedmia.experiment.adversaries import federated_adversaries
    from fedmia.experiment.federated import _round_fields
    from fedmia.experiment.federation import REFERENCE_RECIPES, federation_spec
    from fedmia.fl.observe import GradientObserver, LatestModels, SignalObserver

    cfg, fed = ctx.cfg, ctx.cfg.federation
    t0 = time.perf_counter()
    records, _, _ = ctx.audit_targets()
    signals = SignalObserver(ctx.spec, ctx.records(records), fed.num_clients, rounds=fed.rounds)
    latest = LatestModels()
    observers: list[Any] = [signals, latest]
    gradients = None
    if cfg.audit.gradients and not any(v.secure_aggregation for v in views):
        difference = "grad_difference" in _round_fields(cfg.audit.federated_attacks)
        gradients = GradientObserver(
            ctx.spec, ctx.records(records), fed.num_clients, rounds=fed.rounds, difference=difference
        )
        observers.append(gradients)
    for view in views:
        for obs in observers:
            obs.on_round(view)
    final = views[-1].global_after or views[-1].global_before
    model = ctx.spec.build(0)
    model.load_state_dict(dict(final))
    record_utility(ctx, SETTING, model, time.perf_counter() - t0, epsilon=None, recorded_rounds=len(views))
    spec = federation_spec(ctx)
    recipe = cfg.audit.reference_recipe
    make = REFERENCE_RECIPES[recipe]
    _, holder = outsider_audit(ctx, SETTING, model, trainer=lambda copy: make(ctx, spec, copy), recipe_name=recipe)
    sampled = {v.server_round: set(v.sampled) for v in views}
    federated_adversaries(
        ctx, model, signals.trajectory, gradients, latest, spec, holder, sampled=lambda r: sorted(sampled[r])
    )


def attack_recording(
    root: Path, overrides: Sequence[str], out: Path | None, console: Console
) -> tuple[PreparedRun, Finished]:
    """Parse RUN_DIR, replay its rounds to the parties, attack, and write a new run directory. Bad input
    raises ``InputError`` before the run directory is made."""
    rec = read_recording(root, overrides)
    run_dir = out or root / "attack"
    check_new_run_dir(run_dir)
    ctx = build_context(rec.cfg, console, plan_for=lambda data: plan_of(rec, data))
    check_views(rec, ctx)
    try:
        run = RunDir(run_dir)
        run.write_text("config.yaml", dump_config(rec.cfg))
    except OSError as exc:
        raise InputError(f"cannot write the run directory {run_dir}: {exc.strerror or exc}") from None
    prepared = PreparedRun(rec.cfg, ctx, run, f"run `fedmia attack {root} --out NEW_DIR` again")
    t0 = time.perf_counter()
    try:
        replay_federated(ctx, rec.views)
        results = ctx.results
        results.extra["exposure"] = exposure_summary(results, ctx.data)
        results.extra["recording"] = {"run_dir": str(root), "rounds": len(rec.views), "clients": len(rec.clients)}
        seconds = time.perf_counter() - t0
        final = write_run(rec.cfg, results, run, seconds)
    except InputError:
        raise
    except BaseException as exc:
        run.mark_failed(exc, resume_hint=prepared.resume_hint)
        raise
    return prepared, Finished(results, final, seconds)
