"""Reference federations: 16 of them (batched, in process) against one target federation.

    PYTHONPATH=. python benchmarks/reference_federations.py            # also times the Flower + Ray target
    PYTHONPATH=. python benchmarks/reference_federations.py --no-flower

The setup is the comparison study's federation (digits, 10 IID clients, 10 rounds, 4 local epochs,
MLP 256 hidden, batch 64, SGD lr 0.1 momentum 0.9, every client every round) over 539 records, and
each reference federation the same over its own 539 records (half of the 1,078 records outside the
target's). Goal (the issue's): the 16 references take at most 3x the Flower + Ray target's wall time.
Not a test: timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_reference_federations(n_refs: int = 16, flower: bool = True, sequential: bool = True) -> dict[str, Any]:
    """Wall time of ``n_refs`` reference federations (batched; and one by one through the ClientApp
    with ``sequential``) vs the target federation in process and, with ``flower``, on Flower + Ray."""
    import torch

    from fedmia.data import load_dataset
    from fedmia.data.partition import partition_records
    from fedmia.fl.inprocess import run_inprocess, train_reference_federations
    from fedmia.fl.spec import FederationSpec
    from fedmia.seeding import rng
    from fedmia.training import ModelSpec, Recipe

    d = load_dataset("digits")
    perm = rng(0, "bench-reference-federations").permutation(d.n)
    members, outside = perm[:539], perm[539:1617]
    clients = 10
    model = ModelSpec("mlp", d.input_shape, d.num_classes, {"hidden": [256]})
    recipe = Recipe(epochs=4, batch_size=64, lr=0.1, momentum=0.9)
    spec = FederationSpec(
        dataset="digits",
        partitions=tuple(partition_records(members, d.y[members], clients, "iid", 0)),
        model=model,
        recipe=recipe,
        seed=0,
        rounds=10,
        per_round=clients,
    )
    init = {k: v.detach().clone() for k, v in model.build(1).state_dict().items()}
    sets, inits = [], []
    for k in range(n_refs):
        mine = rng(0, "reference-records", k).choice(outside, size=539, replace=False)
        sets.append(tuple(partition_records(mine, d.y[mine], clients, "iid", k)))
        inits.append({n: v.detach().clone() for n, v in model.build(1000 + k).state_dict().items()})

    # warm-up: torch's first steps and Flower's first messages pay one-time costs on either side
    run_inprocess(spec.replace(rounds=1), d.x, d.y, initial_state=init)
    train_reference_federations(spec.replace(rounds=1), d.x, d.y, sets[:2], initial_states=inits[:2], seed=0)

    t_target, target = _timed(lambda: run_inprocess(spec, d.x, d.y, initial_state=init))
    t_refs, refs = _timed(
        lambda: train_reference_federations(spec, d.x, d.y, sets, initial_states=inits, seed=1, batched=True)
    )
    out: dict[str, Any] = {
        "figure": f"{n_refs} reference federations (digits, {clients} clients x 10 rounds x 4 epochs, MLP 256)",
        "target_inprocess_s": t_target,
        "references_batched_s": t_refs,
        "references_batched_per_federation_s": t_refs / n_refs,
        "references_over_target_inprocess": t_refs / t_target,
    }
    if sequential:
        t_seq, seq = _timed(
            lambda: train_reference_federations(spec, d.x, d.y, sets, initial_states=inits, seed=1, batched=False)
        )
        out["references_sequential_s"] = t_seq
        out["batched_speedup"] = t_seq / t_refs
        out["batched_vs_sequential_max_weight_difference"] = max(
            float((a[n] - b[n]).abs().max()) for a, b in zip(refs, seq, strict=True) for n in a
        )
    acc = []
    for state in [target.final_state, *refs]:
        net = model.build(0)
        net.load_state_dict(state)
        test = perm[1617:]
        with torch.no_grad():
            acc.append(float((net(torch.as_tensor(d.x[test])).argmax(1).numpy() == d.y[test]).mean()))
    out["test_accuracy_target"] = acc[0]
    out["test_accuracy_references_mean"] = float(np.mean(acc[1:]))
    if flower:
        from fedmia.fl.simulation import run_federation
        from fedmia.fl.spec import Driver

        t_flower, flwr_out = _timed(lambda: run_federation(spec, Driver(init, lambda _r, _s: {})))
        out["target_flower_ray_s"] = t_flower
        out["references_over_target_flower"] = t_refs / t_flower
        out["target_inprocess_vs_flower_max_weight_difference"] = max(
            float((target.final_state[n] - flwr_out.final_state[n]).abs().max()) for n in init
        )
        out["goal"] = "references_over_target_flower <= 3"
        out["met"] = t_refs / t_flower <= 3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refs", type=int, default=16)
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower + Ray target (~10-15 s)")
    parser.add_argument("--no-sequential", action="store_true", help="skip the one-by-one references")
    args = parser.parse_args()
    res = bench_reference_federations(args.refs, flower=not args.no_flower, sequential=not args.no_sequential)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
