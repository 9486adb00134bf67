"""Every generative attack against a VAE and a GAN trained on few digits, without and with DP-SGD.

    PYTHONPATH=. python benchmarks/generative_attacks.py [--seed 0] [--members 100] [--epochs 300] [--models vae gan]

Needs the generators of ``fedmia.models.generative`` (the ``vae`` and ``gan`` model entries) and their
``train()`` objectives. Digits scaled to [0, 1], shape (1, 8, 8); ``--members`` training records, as many
non-member candidates; the party's population is 800 other records, of which it trains a reference
generator (same recipe) on ``--members`` for the calibrated attacks. Each generator releases 2,000 samples.
Prints one AUC per (model, DP, attack). Not a test: nothing is asserted.

    PYTHONPATH=. python benchmarks/generative_attacks.py --timing

times the array attacks on 1,000 targets x 10,000 synthetic (and population) records x 64 features, one
thread (no generator needed).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from fedmia.attacks import GENERATIVE_ATTACKS, GenerativeKnowledge, MissingKnowledgeError
from fedmia.models import build_model
from fedmia.training import DPSpec, Recipe, train

MODELS = {
    "vae": ({"latent_dim": 8, "hidden": [128], "likelihood": "gaussian", "sigma": 0.2}, 1e-3),
    "gan": ({"latent_dim": 16, "hidden": [128], "discriminator_hidden": [128], "output": "sigmoid"}, 2e-4),
}
WB = {"steps": 100, "n_starts": 2}  # the white-box reconstruction: fewer steps than the default on a CPU


def fit(name: str, x: np.ndarray, seed: int, epochs: int, dp: DPSpec | None) -> torch.nn.Module:
    params, lr = MODELS[name]
    model = build_model(name, (1, 8, 8), 10, seed=seed, **params)
    recipe = Recipe(epochs=epochs, batch_size=32, lr=lr, optimizer="adam", momentum=0.0, dp=dp)
    train(model, x, np.zeros(len(x), dtype=np.int64), recipe, generator=torch.Generator().manual_seed(seed))
    return model.eval()


def timing() -> None:
    import fedmia.attacks.generative as gen

    rng = np.random.default_rng(0)
    t, s, p = (rng.normal(size=(n, 64)).astype(np.float32) for n in (1000, 10_000, 10_000))
    runs = {
        "dcr": lambda: gen.dcr(t, s),
        "dcr-diff": lambda: gen.dcr(t, s, p),
        "gan-leaks-cal": lambda: gen.gan_leaks_black_box(t, s, p),
        "monte-carlo (median)": lambda: gen.monte_carlo(t, s),
        "monte-carlo (percentile)": lambda: gen.monte_carlo(t, s, heuristic="percentile"),
        "monte-carlo (log)": lambda: gen.monte_carlo(t, s, weighting="log"),
        "domias (max_dim 8)": lambda: gen.domias(t, s, p),
    }
    for name, run in runs.items():
        t0 = time.perf_counter()
        run()
        print(json.dumps({"attack": name, "seconds": round(time.perf_counter() - t0, 2)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--epsilon", type=float, default=1.0, help="DP-SGD target epsilon (delta 1e-5)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--no-dp", action="store_true", help="only the generators trained without DP")
    ap.add_argument("--timing", action="store_true", help="only time the array attacks at 1,000 x 10,000 x 64")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.timing:
        timing()
        return
    rng = np.random.default_rng(args.seed)
    x = (load_digits().data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x = x[rng.permutation(len(x))]
    m = args.members
    members, nonmembers, population = x[:m], x[m : 2 * m], x[2 * m : 2 * m + 800]
    targets, member = np.concatenate([members, nonmembers]), np.r_[np.ones(m), np.zeros(m)]
    rows = []
    for name in args.models:
        for dp in (None,) if args.no_dp else (None, DPSpec(target_epsilon=args.epsilon, max_grad_norm=1.0)):
            t0 = time.perf_counter()
            model = fit(name, members, args.seed, args.epochs, dp)
            reference = fit(name, population[:m], args.seed + 1, args.epochs, dp)
            knowledge = GenerativeKnowledge(
                synthetic=model.sample(2000, seed=1).numpy(),
                population=population,
                generator=model,
                discriminator=getattr(model, "discriminate", None),
                reference_synthetic=reference.sample(2000, seed=2).numpy(),
                reference_generator=reference,
            )
            trained = time.perf_counter() - t0
            for attack in GENERATIVE_ATTACKS:
                params = WB if attack.startswith("gan-leaks-wb") else {}
                try:
                    t1 = time.perf_counter()
                    scores = GENERATIVE_ATTACKS.create(attack, run_seed=args.seed, **params).score(targets, knowledge)
                except MissingKnowledgeError:
                    continue
                auc = float(roc_auc_score(member, scores))
                row = {"model": name, "dp_epsilon": None if dp is None else args.epsilon, "attack": attack}
                rows.append(row | {"auc": round(auc, 3), "seconds": round(time.perf_counter() - t1, 2)})
                print(json.dumps(rows[-1] | {"train_seconds": round(trained, 1)}), flush=True)


if __name__ == "__main__":
    main()
