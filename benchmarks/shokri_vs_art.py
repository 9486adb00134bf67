"""Shokri et al. 2017 in fedmia, side by side with IBM ART, and the paper's shadow-data table.

    python benchmarks/shokri_vs_art.py --out runs/bench-shokri            # both parts
    python benchmarks/shokri_vs_art.py --only art --out runs/bench-shokri
    python benchmarks/shokri_vs_art.py --only art --seeds 12 --out runs/bench-shokri

``art``: one digits target (an MLP, 256 hidden units, trained with ``fedmia.training.train`` on the members
of a fedmia plan) and one set of shadow models (the same architecture and recipe, trained with
``train_reference_signals`` on the attacker's population records, each shadow IN on a random half).
fedmia's ``shokri`` (per-class boosting, and per-class MLPs as published) and ART's
``MembershipInferenceBlackBox`` (its default attack network, and its gradient boosting) are fitted on the
same shadow IN/OUT probability vectors (ART: ``fit(pred=IN, y=labels, test_pred=OUT, test_y=labels)``,
so ART trains one attack model over all classes with the one-hot label as a second input) and score the
same candidates. AUC and TPR at 1% FPR from ``fedmia.audit.evaluate_scores``, for each of ``--seeds`` seeds (default 6),
their mean and each fedmia row's paired difference from each ART row (mean, standard error, paired
t-test) (at 1% FPR with 449 non-members a single seed's TPR moves by about 0.01: compare means). ART's network
trains ``ART_NN_EPOCHS`` = 25 epochs instead of its default 100 (runtime; otherwise ART's defaults).

``purchase``: the paper's shadow-data comparison (its Fig./Table on Purchase) on ``purchase-like``: for each
source of shadow data (``fedmia.threats.shadow_data.shadow_records``) the shadows train on it, Shokri's
per-class MLP attack (``model="mlp"``, ``shadow_candidates=False``: shadow data only, as published) scores
the target's members and non-members; AUC, and precision and recall at the attack model's own decision
threshold (P(IN) > 0.5), as the paper reports precision; the synthesis's query count.

Sizes (about 3 and 4.5 minutes on 2 cores): digits, 449 members + 449 non-members, 719 population records,
8 shadows, 40 epochs; purchase-like 10,000 records x 600 features x 100 classes, 1,500 members + 1,500
non-members, 3,000 population records, shadow data of 3,000 records per source, 8 shadows, MLP 128
hidden, 30 epochs. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy.stats import ttest_rel

from fedmia.attacks import Knowledge
from fedmia.attacks.shokri import ShokriAttack
from fedmia.audit import evaluate_scores
from fedmia.data import load_dataset, make_plan
from fedmia.seeding import derive_seed, rng, torch_generator
from fedmia.signals import Signals
from fedmia.threats import BlackBox
from fedmia.threats.shadow_data import shadow_records
from fedmia.training import ModelSpec, Recipe, train, train_reference_signals

console = Console()
ART_NN_EPOCHS = 25
ART_ROWS = (
    "fedmia shokri (gbm, per class)",
    "fedmia shokri (mlp, per class)",
    "fedmia shokri (gbm, one model + label)",
    "ART black-box (nn)",
    "ART black-box (gb)",
)


def _target_and_shadows(
    dataset: Any, plan: Any, spec: ModelSpec, recipe: Recipe, shadow: tuple[np.ndarray, np.ndarray], k: int, seed: int
) -> tuple[Signals, Knowledge, np.ndarray, Any]:
    """Train the target on the plan's members and k shadows on ``shadow`` (each IN on a random half)."""
    target = spec.build(derive_seed(seed, "target-init"))
    train(target, dataset.x[plan.members], dataset.y[plan.members], recipe, generator=torch_generator(seed, "target"))
    box = BlackBox(target, seed=derive_seed(seed, "queries"))
    cands = plan.targets
    on_candidates = box.query((dataset.x[cands], dataset.y[cands]))
    g = rng(seed, "shadow-keep")
    n_s = len(shadow[1])
    keep = np.zeros((k, n_s), dtype=bool)
    for i in range(k):
        keep[i, g.permutation(n_s)[: n_s // 2]] = True
    (on_shadow,) = train_reference_signals(
        spec, recipe, shadow, keep, [shadow], seed=derive_seed(seed, "shadows"), batched=True
    )
    return on_candidates, Knowledge(ref_population=on_shadow, keep_population=keep), plan.is_member(cands), target


def _metrics(scores: np.ndarray, member: np.ndarray, seconds: float) -> dict[str, Any]:
    m = evaluate_scores(scores, member)
    said_in = scores > 0.5
    tp = int(np.sum(said_in & member))
    return {
        "auc": m.auc,
        "tpr_at_1pct_fpr": m.tpr_at_fpr["0.01"],
        "precision_at_0.5": tp / int(said_in.sum()) if said_in.any() else None,
        "recall_at_0.5": tp / int(member.sum()),
        "seconds": seconds,
    }


def _art_scores(
    kind: str, target: Any, shapes: tuple[tuple[int, ...], int], know: Knowledge, cands: Signals, seed: int
):
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
    from art.estimators.classification import PyTorchClassifier

    input_shape, n_classes = shapes
    est = PyTorchClassifier(target, loss=torch.nn.CrossEntropyLoss(), input_shape=input_shape, nb_classes=n_classes)
    assert know.ref_population is not None and know.keep_population is not None
    probs = np.asarray(know.ref_population.probs).reshape(-1, n_classes)
    labels = np.broadcast_to(know.ref_population.labels, know.keep_population.shape).reshape(-1)
    inside = np.asarray(know.keep_population).reshape(-1)
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, "art", kind) % 2**31)
        # ART's network trains 100 epochs by default, one python batch loop per epoch (about 2-5 minutes here
        # on 2 cores); 25 epochs keep the benchmark inside its budget (its learning rate and batch unchanged)
        attack = MembershipInferenceBlackBox(
            est, input_type="prediction", attack_model_type=kind, nn_model_epochs=ART_NN_EPOCHS
        )
        if kind == "gb":
            attack.attack_model.set_params(random_state=derive_seed(seed, "art-gb") % 2**31)
        attack.fit(pred=probs[inside], y=labels[inside], test_pred=probs[~inside], test_y=labels[~inside])
        out = attack.infer(None, cands.labels, pred=np.asarray(cands.probs), probabilities=True)
    out = np.asarray(out)
    return out[:, 1] if out.ndim == 2 and out.shape[1] == 2 else out.reshape(-1)


def bench_art(seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5), k: int = 8) -> dict[str, Any]:
    data = load_dataset("digits")
    spec = ModelSpec("mlp", data.input_shape, data.num_classes, {"hidden": [256]})
    recipe = Recipe(epochs=40, batch_size=32, lr=0.05)
    rows: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        plan = make_plan(data.n, members=0.25, nonmembers=0.25, population=0.4, test=0.1, rng=rng(seed, "plan"))
        population = (data.x[plan.population], data.y[plan.population])
        cands, know, member, target = _target_and_shadows(data, plan, spec, recipe, population, k, seed)
        shapes = (data.input_shape, data.num_classes)
        for name in ART_ROWS:
            t0 = time.perf_counter()
            if name.startswith("fedmia"):
                model = "mlp" if "mlp" in name else "gbm"
                per_class = "per class" in name
                scores = ShokriAttack(model=model, per_class=per_class, random_state=seed).score(cands, know)
            else:
                scores = _art_scores("nn" if "(nn)" in name else "gb", target, shapes, know, cands, seed)
            scores = np.asarray(scores, dtype=np.float64)
            rows.setdefault(name, {})[f"seed{seed}"] = _metrics(scores, member, time.perf_counter() - t0)
        rows.setdefault("_target", {})[f"seed{seed}"] = {
            "train_accuracy": float(cands.correct[member].mean()),
            "nonmember_accuracy": float(cands.correct[~member].mean()),
        }
    table = Table(title="digits: fedmia shokri vs ART MembershipInferenceBlackBox, same target and shadows")
    table.add_column("attack")
    table.add_column("AUC mean", justify="right")
    table.add_column("TPR@1%FPR mean", justify="right")
    for seed in seeds:
        table.add_column(f"AUC / TPR s{seed}", justify="right")
    for name, per_seed in rows.items():
        if name.startswith("_"):
            continue
        aucs = [per_seed[f"seed{seed}"]["auc"] for seed in seeds]
        tprs = [per_seed[f"seed{seed}"]["tpr_at_1pct_fpr"] for seed in seeds]
        known = [t for t in tprs if t is not None]
        cells = [f"{np.mean(aucs):.3f}", f"{np.mean(known):.3f}" if known else "n/a"]
        cells += [f"{a:.3f} / {'n/a' if t is None else f'{t:.3f}'}" for a, t in zip(aucs, tprs, strict=True)]
        table.add_row(name, *cells)
    console.print(table)
    for seed in seeds:
        t = rows["_target"][f"seed{seed}"]
        console.print(
            f"target seed {seed}: member acc {t['train_accuracy']:.3f}, non-member acc {t['nonmember_accuracy']:.3f}"
        )
    paired = paired_differences(rows, seeds)
    diff = Table(title="fedmia - ART, paired over seeds: mean difference +- standard error (paired t-test p)")
    for col in ("fedmia", "ART", "delta AUC", "delta TPR@1%FPR"):
        diff.add_column(col, justify="left" if col in ("fedmia", "ART") else "right")
    for (ours, theirs), d in paired.items():
        diff.add_row(ours, theirs, *(f"{d[m]['mean']:+.4f} +- {d[m]['se']:.4f} (p {d[m]['p']:.2f})" for m in d))
    console.print(diff)
    return {
        "figure": "digits: fedmia shokri vs ART",
        "k_shadows": k,
        "rows": rows,
        "paired": {f"{a} vs {b}": d for (a, b), d in paired.items()},
    }


def paired_differences(rows: dict[str, dict[str, Any]], seeds: tuple[int, ...]) -> dict[tuple[str, str], Any]:
    """Per (fedmia row, ART row): the mean over seeds of the paired difference in AUC and in TPR at 1%
    FPR, its standard error and the two-sided paired t-test p-value (scipy.stats.ttest_rel): the same
    target and shadows per seed, so the seed's own luck cancels in the difference."""
    out: dict[tuple[str, str], Any] = {}
    for ours in (r for r in ART_ROWS if r.startswith("fedmia")):
        for theirs in (r for r in ART_ROWS if r.startswith("ART")):
            cell = {}
            for metric in ("auc", "tpr_at_1pct_fpr"):
                a = np.array([rows[ours][f"seed{s}"][metric] for s in seeds], dtype=float)
                b = np.array([rows[theirs][f"seed{s}"][metric] for s in seeds], dtype=float)
                d = a - b
                p = float(ttest_rel(a, b).pvalue) if len(d) > 1 and np.std(d) > 0 else 1.0
                cell[metric] = {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))), "p": p}
            out[ours, theirs] = cell
    return out


SOURCES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("real data (population)", "population", {}),
    ("noisy real data, 10%", "noisy", {"noise": 0.1}),
    ("noisy real data, 20%", "noisy", {"noise": 0.2}),
    ("marginal-based synthetic", "marginal", {}),
    ("model-based synthetic", "synthesis", {"k_max": 64, "k_min": 4, "conf_min": 0.2, "rej_max": 10}),
)


def bench_purchase(seed: int = 0, k: int = 8, n_shadow: int = 3000) -> dict[str, Any]:
    data = load_dataset("purchase-like", n=10_000, features=600, classes=100)
    plan = make_plan(data.n, members=0.15, nonmembers=0.15, population=0.3, test=0.1, rng=rng(seed, "plan"))
    spec = ModelSpec("mlp", data.input_shape, data.num_classes, {"hidden": [128]})
    recipe = Recipe(epochs=30, batch_size=32, lr=0.05)
    population = (data.x[plan.population], data.y[plan.population])
    # one target for every source: train it once, through the first call, and reuse its box
    target = spec.build(derive_seed(seed, "target-init"))
    train(target, data.x[plan.members], data.y[plan.members], recipe, generator=torch_generator(seed, "target"))
    cands = plan.targets
    member = plan.is_member(cands)
    rows: dict[str, dict[str, Any]] = {}
    for label, source, params in SOURCES:
        box = BlackBox(target, seed=derive_seed(seed, "queries", source))
        t0 = time.perf_counter()
        shadow = shadow_records(source, population, box, rng(seed, "shadow-data", label), n=n_shadow, **params)
        t_data = time.perf_counter() - t0
        on_candidates = box.query((data.x[cands], data.y[cands]))
        g = rng(seed, "shadow-keep", label)
        n_s = len(shadow[1])
        keep = np.zeros((k, n_s), dtype=bool)
        for i in range(k):
            keep[i, g.permutation(n_s)[: n_s // 2]] = True
        (on_shadow,) = train_reference_signals(
            spec, recipe, (shadow[0], shadow[1]), keep, [(shadow[0], shadow[1])], seed=derive_seed(seed, "shadows")
        )
        know = Knowledge(ref_population=on_shadow, keep_population=keep)
        t1 = time.perf_counter()
        scores = ShokriAttack(model="mlp", shadow_candidates=False, random_state=seed).score(on_candidates, know)
        row = _metrics(scores, member, time.perf_counter() - t1)
        row |= {
            "shadow_records": n_s,
            "synthesis_queries": shadow.queries if source == "synthesis" else None,
            "synthesis_failed_records": shadow.failed if source == "synthesis" else None,
            "queries_per_record": shadow.queries / max(n_s, 1) if source == "synthesis" else None,
            "data_seconds": t_data,
            "shadow_test_accuracy_on_population": float(on_shadow.correct[~keep].mean()),
            "params": params,
        }
        rows[label] = row
    acc_in = float(on_candidates.correct[member].mean())
    acc_out = float(on_candidates.correct[~member].mean())
    table = Table(title=f"purchase-like: Shokri attack (per-class MLP) by shadow data source, {k} shadows")
    for col in ("shadow data", "records", "AUC", "precision@0.5", "recall@0.5", "queries (synthesis)"):
        table.add_column(col, justify="left" if col == "shadow data" else "right")
    for label, r in rows.items():
        prec = r["precision_at_0.5"]
        table.add_row(
            label,
            str(r["shadow_records"]),
            f"{r['auc']:.3f}",
            "n/a" if prec is None else f"{prec:.3f}",
            f"{r['recall_at_0.5']:.3f}",
            ""
            if r["synthesis_queries"] is None
            else f"{r['synthesis_queries']:,} ({r['synthesis_failed_records']} failed)",
        )
    console.print(table)
    console.print(f"target: member accuracy {acc_in:.3f}, non-member accuracy {acc_out:.3f}")
    return {
        "figure": "purchase-like: Shokri attack by shadow data source",
        "target": {"member_accuracy": acc_in, "nonmember_accuracy": acc_out},
        "k_shadows": k,
        "rows": rows,
    }


BENCHES = {"art": bench_art, "purchase": bench_purchase}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(BENCHES), action="append")
    parser.add_argument("--out", type=Path, required=True, help="directory for the JSON results")
    parser.add_argument("--seeds", type=int, default=6, help="art: seeds 0 .. N-1 (default 6)")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be >= 2 (the paired comparison needs two)")
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(BENCHES):
        t0 = time.perf_counter()
        res = bench_art(tuple(range(args.seeds))) if name == "art" else BENCHES[name]()
        res["seconds"] = time.perf_counter() - t0
        console.print(f"{name}: {res['seconds']:.0f} s")
        (args.out / f"shokri_{name}.json").write_text(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
