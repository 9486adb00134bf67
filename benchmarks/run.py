"""fedmia benchmarks: each figure measured side by side in one run, printed against its goal.

    python benchmarks/run.py                 # all five (about 20 minutes on 2 cores)
    python benchmarks/run.py --only lira     # one of: references, federation, scale, scale-1000, lira, resnets
    python benchmarks/run.py --only references --repeats 3 --epochs 40

Not a test: timings are reported, never asserted. Results go to stdout and, with --json, a file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_references(n_models: int = 64, repeats: int = 3, epochs: int = 40) -> dict[str, Any]:
    """64 reference models: batched vs sequential ``train()``, same seeds and keep-matrix.

    End to end as an audit runs it (``train_reference_signals``: training, then each model's signals on
    the held-out records). Sequential and batched runs alternate, ``repeats`` times each, and the
    figure is the median of the per-repeat ratios, so machine load hits both sides alike. Batched
    MLPs use the explicit forward/backward path; the vmap + autograd path (what every other
    architecture uses) is timed alongside for the same MLPs. Models: the quickstart MLP (256 hidden
    units), a narrow one (32), and the CNN (default channels 16, 32; a quarter of the epochs, since
    the sequential CNN is slow; batched it runs the grouped path, K models as channel groups). With a
    GPU, the batched and sequential paths on ``cuda`` are timed too. Wall-clock ratios are the
    figure; process CPU-time ratios ride along for loaded machines.
    """
    import functools
    import statistics

    import torch

    import fedmia.training.references as references
    from fedmia.data import load_dataset, reference_keep
    from fedmia.seeding import rng
    from fedmia.training import ModelSpec, Recipe, train_reference_signals
    from fedmia.training.batched import train_batched

    d = load_dataset("digits")
    pool = (d.x[:1078], d.y[:1078])
    evals = [(d.x[1078:], d.y[1078:])]
    keep = reference_keep(n_models, len(pool[1]), rng(0, "bench"), n_in=539)
    out: dict[str, Any] = {
        "figure": f"{n_models} reference models (digits, {epochs} epochs), batched vs sequential train()",
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
    }
    cases = {
        "mlp256": (ModelSpec("mlp", d.input_shape, d.num_classes, {"hidden": [256]}), epochs),
        "mlp32": (ModelSpec("mlp", d.input_shape, d.num_classes, {"hidden": [32]}), epochs),
        "cnn": (ModelSpec("cnn", d.input_shape, d.num_classes), max(1, epochs // 4)),
    }
    explicit = references.train_batched

    def run(spec: ModelSpec, recipe: Recipe, variant: str) -> Any:
        references.train_batched = (
            functools.partial(train_batched, path="vmap") if variant == "vmap" else explicit  # type: ignore[assignment]
        )
        try:
            return train_reference_signals(spec, recipe, pool, keep, evals, seed=1, batched=variant != "sequential")
        finally:
            references.train_batched = explicit

    for name, (spec, n_epochs) in cases.items():
        variants = ["sequential", "batched"] + (["vmap"] if name.startswith("mlp") else [])
        devices = {"sequential": "cpu", "batched": "cpu", "vmap": "cpu"}
        if torch.cuda.is_available():
            variants += ["batched-cuda", "sequential-cuda"]
            devices |= {"batched-cuda": "cuda", "sequential-cuda": "cuda"}
        for v in variants:  # warm-up: one-time imports, allocator growth, CUDA context
            run(spec, Recipe(epochs=1, device=devices[v]), v.removesuffix("-cuda"))
        times: dict[str, list[float]] = {v: [] for v in variants}
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        accs: dict[str, float] = {}
        for _ in range(repeats):
            for v in variants:
                r = Recipe(epochs=n_epochs, batch_size=32, lr=0.05, device=devices[v])
                if devices[v] == "cuda":
                    torch.cuda.synchronize()
                c0 = time.process_time()
                t, sig = _timed(lambda s=spec, r=r, v=v: run(s, r, v.removesuffix("-cuda")))
                times[v].append(t)
                cpu[v].append(time.process_time() - c0)
                accs[v] = float(sig[0].correct.mean())
        res: dict[str, Any] = {"epochs": n_epochs, "seconds": times, "cpu_seconds": cpu, "test_acc": accs}
        for v in variants[1:]:
            res[f"speedup_{v}"] = statistics.median(s / b for s, b in zip(times["sequential"], times[v], strict=True))
            # process CPU time (all threads): the work done, less sensitive to other processes' load
            res[f"cpu_speedup_{v}"] = statistics.median(s / b for s, b in zip(cpu["sequential"], cpu[v], strict=True))
        out[name] = res
        print(f"  {name}: " + json.dumps({k: v for k, v in res.items() if "speedup" in k}), file=sys.stderr, flush=True)
    out["load_average_at_end"] = os.getloadavg()
    out["goal"] = "speedup >= 8 (quickstart MLP, 256 hidden)"
    out["met"] = out["mlp256"]["speedup_batched"] >= 8
    return out


def _purchase_federation_inputs(num_clients: int) -> dict[str, Any]:
    from fedmia.data import load_dataset, make_plan
    from fedmia.data.partition import partition_records
    from fedmia.seeding import rng
    from fedmia.training import ModelSpec, Recipe

    d = load_dataset("purchase-like", n=20_000, features=600, classes=100)
    plan = make_plan(d.n, members=0.5, nonmembers=0.2, population=0.2, test=0.1, rng=rng(0, "plan"))
    parts = partition_records(plan.members, d.y[plan.members], num_clients, "iid", 0)
    spec = ModelSpec("mlp", d.input_shape, d.num_classes, {"hidden": [256]})
    return {"data": d, "plan": plan, "parts": parts, "spec": spec, "recipe": Recipe(epochs=1, batch_size=32, lr=0.05)}


def bench_federation(num_clients: int = 50, rounds: int = 20) -> dict[str, Any]:
    """Flower + Ray vs an in-process FedAvg loop doing the identical local training (same seeds).

    The figure is the steady-state round: the median duration of rounds 2..R (round 1 carries the
    actors' start-up), for Flower from the server's per-round callback, for the loop from its own
    clock. The loop runs before and after Flower and the faster of the two medians is the baseline,
    so a slow spell of this shared machine during one of them does not flatter Flower. The total wall
    times (Ray's start and stop included) ride along.
    """
    import statistics

    import torch

    from fedmia.fl.observe import mean_state
    from fedmia.fl.simulation import run_federation
    from fedmia.fl.spec import Driver, FederationSpec
    from fedmia.fl.strategy import client_sampler
    from fedmia.seeding import torch_generator
    from fedmia.training import train

    inp = _purchase_federation_inputs(num_clients)
    d, parts, spec, recipe = inp["data"], inp["parts"], inp["spec"], inp["recipe"]
    init = spec.build(1).state_dict()
    seed = 7
    warm = spec.build(0)  # warm-up: torch's first training step pays one-time costs
    train(warm, d.x[parts[0]], d.y[parts[0]], recipe, generator=torch_generator(0))

    def in_process(stamps: list[float]) -> dict[str, torch.Tensor]:
        state = {k: v.clone() for k, v in init.items()}
        sample = client_sampler(seed, num_clients, num_clients)
        model = spec.build(0)
        for r in range(1, rounds + 1):
            states, weights = [], []
            for pid in sample(r):
                model.load_state_dict(state)
                x, y = d.x[parts[pid]], d.y[parts[pid]]
                train(model, x, y, recipe, generator=torch_generator(seed, "client", pid, "round", r))
                states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
                weights.append(len(y))
            state = mean_state(states, weights)
            stamps.append(time.perf_counter())
        return state

    def flower(stamps: list[float]) -> dict[str, torch.Tensor]:
        fed = FederationSpec(
            dataset="purchase-like",
            dataset_params={"n": 20_000, "features": 600, "classes": 100},
            partitions=parts,
            model=spec,
            recipe=recipe,
            seed=seed,
            rounds=rounds,
            per_round=num_clients,
        )
        out = run_federation(
            fed, Driver(init, lambda _r, _s: {}, on_round=lambda _row: stamps.append(time.perf_counter()))
        )
        assert out.final_state is not None
        return out.final_state

    def steady(stamps: list[float]) -> float:
        return statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))

    loop_stamps: list[list[float]] = [[], []]
    flwr_stamps: list[float] = []
    t_loop, s_loop = _timed(lambda: in_process(loop_stamps[0]))
    t0 = time.perf_counter()
    t_flwr, s_flwr = _timed(lambda: flower(flwr_stamps))
    t_loop2, _ = _timed(lambda: in_process(loop_stamps[1]))
    loop_round = min(steady(s) for s in loop_stamps)
    flwr_round = steady(flwr_stamps)
    diff = max(float((s_loop[k] - s_flwr[k]).abs().max()) for k in s_loop)
    return {
        "figure": f"Flower+Ray vs in-process FedAvg, {num_clients} clients x {rounds} rounds, purchase-like 20k x 600",
        "in_process_s": [t_loop, t_loop2],
        "flower_ray_s": t_flwr,
        "ratio": t_flwr / min(t_loop, t_loop2),
        "flower_first_round_done_s": flwr_stamps[0] - t0,
        "flower_after_last_round_s": t0 + t_flwr - flwr_stamps[-1],
        "flower_steady_round_s": flwr_round,
        "in_process_steady_round_s": [steady(s) for s in loop_stamps],
        "steady_state_ratio": flwr_round / loop_round,
        "goal": "steady-state round <= 1.5x the in-process loop's",
        "met": flwr_round / loop_round <= 1.5,
        "max_weight_difference": diff,
    }


SCALE_CONFIG = """
name: bench-scale
seed: 0
settings: [federated]
data:
  dataset: purchase-like
  params: {n: 20000, features: 600, classes: 100}
  split: {members: 0.3, nonmembers: 0.1, population: 0.1, test: 0.05}
model: {name: mlp, params: {hidden: [128]}}
train: {epochs: 1, batch_size: 32, lr: 0.05}
federation: {num_clients: 100, rounds: 50, local_epochs: 1, fraction: 1.0}
audit:
  references: 0
  server_references: 0
  attacks: [loss, confidence]
  federated_attacks: [loss-trajectory, fedmia, grad-cosine]
"""


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants (Ray's raylet, GCS and actors included)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _tree_memory_gb(root: int) -> tuple[float, float]:
    """(RSS sum, PSS sum) of the process tree in GiB. RSS counts a shared page once per process that
    maps it (torch's libraries, ~0.3 GB, once per actor); PSS splits each shared page among its
    processes, so the PSS sum is the physical memory the tree holds."""
    rss = pss = 0
    for pid in _tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 2**20, pss / 2**20


# the 1,000-client figure: SCALE_CONFIG with these overrides (cross-device: 10 records a client, 100 a
# round; no gradient observer, whose cost grows with the sampled clients x candidates x parameters)
SCALE_1000_OVERRIDES = [
    "name=bench-scale-1000",
    "data.split.members=0.5",
    "federation.num_clients=1000",
    "federation.rounds=20",
    "federation.fraction=0.1",
    "audit.gradients=false",
    "audit.federated_attacks=[loss-trajectory, fedmia]",
]


def _measure_run(config: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``fedmia run`` of ``config`` (with ``overrides``) in a subprocess: wall time, the driver's peak RSS
    (``/usr/bin/time -v``) and the whole process tree's peak RSS and PSS (sampled every 0.5 s, so lower bounds)."""
    import threading

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "scale.yaml"
        cfg.write_text(config)
        run = [sys.executable, "-m", "fedmia", "run", str(cfg), "--out", f"{tmp}/run", *overrides]
        cmd = ["/usr/bin/time", "-v", *run]
        t0 = time.perf_counter()
        proc_handle = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        peak_tree = [0.0, 0.0, 0.0]  # RSS sum, PSS sum, seconds into the run at the PSS peak

        def sample() -> None:
            while proc_handle.poll() is None:
                rss, pss = _tree_memory_gb(proc_handle.pid)
                peak_tree[0] = max(peak_tree[0], rss)
                if pss > peak_tree[1]:
                    peak_tree[1], peak_tree[2] = pss, time.perf_counter() - t0
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout, stderr = proc_handle.communicate()
        sampler.join()
        wall = time.perf_counter() - t0
        rss_kb = [int(line.split()[-1]) for line in stderr.splitlines() if "Maximum resident set size" in line]
        metrics = {}
        if proc_handle.returncode == 0:
            metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
        return {
            "wall_s": wall,
            "federation_s": metrics.get("utility", {}).get("federated", {}).get("seconds"),
            "peak_rss_gb_driver": (rss_kb[0] / 2**20) if rss_kb else None,
            "peak_rss_gb_process_tree": peak_tree[0],
            "peak_pss_gb_process_tree": peak_tree[1],
            "pss_peak_at_s": peak_tree[2],
            "returncode": proc_handle.returncode,
            "stderr_tail": None if proc_handle.returncode == 0 else stderr[-2000:],
        }


def bench_scale() -> dict[str, Any]:
    """100 clients x 50 rounds, the server attacking every client (loss, FedMIA, gradient alignment)."""
    res = _measure_run(SCALE_CONFIG)
    ok = res["returncode"] == 0
    return {
        "figure": "100 clients x 50 rounds, server attacking every client (purchase-like)",
        **res,
        "goal": "wall <= 300 s and the process tree's peak memory (PSS) <= 3 GB",
        "met": ok and res["wall_s"] <= 300 and res["peak_pss_gb_process_tree"] <= 3,
    }


def bench_scale_1000() -> dict[str, Any]:
    """1,000 clients x 20 rounds, 100 sampled per round, the server attacking (loss, FedMIA; no gradients)."""
    res = _measure_run(SCALE_CONFIG, SCALE_1000_OVERRIDES)
    return {
        "figure": "1,000 clients x 20 rounds, fraction 0.1, server attacking (purchase-like)",
        **res,
        "goal": "runs; wall time and memory reported",
        "met": res["returncode"] == 0,
    }


def bench_lira(n_refs: int = 64, n: int = 100_000) -> dict[str, Any]:
    """LiRA scoring alone: 64 reference models over 100,000 target records."""
    from fedmia.attacks import ATTACKS, Knowledge
    from fedmia.signals import signals_from_logits, stack

    g = np.random.default_rng(0)
    labels = g.integers(0, 10, size=n)
    logits = lambda: g.normal(size=(n, 10)).astype(np.float32)  # noqa: E731
    target = signals_from_logits(logits(), labels)
    t_sig, refs = _timed(lambda: stack([signals_from_logits(logits(), labels) for _ in range(n_refs)]))
    keep = g.random((n_refs, n)) < 0.5
    knowledge = Knowledge(references=refs, keep=keep)
    times = {}
    for name in ("lira-online", "lira-offline", "lira-online-fixed", "lira-offline-fixed"):
        attack = ATTACKS.create(name)
        times[name], _ = _timed(lambda a=attack: a.score(target, knowledge))
    worst = max(times.values())
    return {
        "figure": f"LiRA scoring, {n_refs} references x {n:,} records",
        "seconds_by_variant": times,
        "signals_stack_s": t_sig,
        "goal": "< 5 s",
        "met": worst < 5,
    }


def bench_resnets(n_models: int | None = None, records: int | None = None, repeats: int = 2) -> dict[str, Any]:
    """Reference training of the research-scale nets (issue 27) on cifar-like 32x32x3 images, with crop + flip.

    For ResNet-18 (CIFAR stem) and WRN-16-4, at full width: K reference models trained by
    ``train_reference_signals`` batched (``torch.vmap`` over the stack: the residual nets are not
    ``Sequential``, so the grouped-convolution path does not apply) and one by one, one epoch, alternating
    ``repeats`` times; references per second for each, and images per second per model against a plain
    PyTorch loop of the same model, recipe and device (one model, ``torch.optim.SGD``, the same batches
    and augmentation: the floor a trainer of many models must beat per model). CPU: K = 4 models on 128
    records each (a few minutes on 2 cores); with a GPU: K = 64 on 2,500 records each, on ``cuda``.
    """
    import statistics

    import torch

    from fedmia.data import load_dataset, reference_keep
    from fedmia.seeding import rng, torch_generator
    from fedmia.training import ModelSpec, Recipe, train_reference_signals
    from fedmia.training.augment import Augmentation

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    k = n_models or (64 if cuda else 4)
    n_in = records or (2500 if cuda else 128)
    d = load_dataset("cifar-like", n=2 * n_in + 256)
    pool = (d.x[: 2 * n_in], d.y[: 2 * n_in])
    evals = [(d.x[2 * n_in :], d.y[2 * n_in :])]
    keep = reference_keep(k, 2 * n_in, rng(0, "bench-resnets"), n_in=n_in)
    recipe = Recipe(epochs=1, batch_size=64, lr=0.05, momentum=0.9, augment=("crop", "flip"), device=device)
    out: dict[str, Any] = {
        "figure": f"{k} references (cifar-like 32x32x3, {n_in} records each, 1 epoch, crop+flip) on {device}",
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
    }
    cases = {
        "resnet18": ModelSpec("resnet18", d.input_shape, d.num_classes, {}),
        "wrn-16-4": ModelSpec("wrn", d.input_shape, d.num_classes, {"depth": 16, "width": 4}),
    }

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def plain_loop(spec: ModelSpec) -> float:
        """Images per second of one model in a plain PyTorch loop (same recipe, batches, augmentation)."""
        model = spec.build(0).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
        x = torch.as_tensor(pool[0][:n_in], device=device)
        y = torch.as_tensor(pool[1][:n_in], device=device)
        gen = torch_generator(0, "bench-plain")
        aug = Augmentation.of(recipe.augment)
        assert aug is not None
        sync()
        t0 = time.perf_counter()
        perm = torch.randperm(n_in, generator=gen)
        draws = aug.draw(n_in, gen)
        for start in range(0, n_in, recipe.batch_size):
            slots = slice(start, start + recipe.batch_size)
            idx = perm[slots].to(device)
            xb = draws.take(slots).apply(x[idx])
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(xb), y[idx]).backward()
            opt.step()
        sync()
        return n_in / (time.perf_counter() - t0)

    for name, spec in cases.items():
        for batched in (True, False):  # warm-up: imports, allocator, kernels
            train_reference_signals(spec, recipe, pool, keep[:2], evals, seed=1, batched=batched)
        plain_loop(spec)
        times: dict[str, list[float]] = {"batched": [], "sequential": []}
        plain: list[float] = []
        for _ in range(repeats):
            for variant in ("batched", "sequential"):
                sync()
                t, _ = _timed(
                    lambda v=variant, sp=spec: train_reference_signals(
                        sp, recipe, pool, keep, evals, seed=1, batched=v == "batched"
                    )
                )
                times[variant].append(t)
            plain.append(plain_loop(spec))
        res: dict[str, Any] = {"seconds": times, "plain_loop_images_per_second": plain}
        for variant, ts in times.items():
            res[f"references_per_second_{variant}"] = k / statistics.median(ts)
            res[f"images_per_second_per_model_{variant}"] = k * n_in / statistics.median(ts)
        res["speedup_batched"] = statistics.median(
            s / b for s, b in zip(times["sequential"], times["batched"], strict=True)
        )
        res["batched_over_plain_loop"] = res["images_per_second_per_model_batched"] / statistics.median(plain)
        out[name] = res
        print(
            f"  {name}: " + json.dumps({k_: v for k_, v in res.items() if k_ != "seconds"}), file=sys.stderr, flush=True
        )
    out["load_average_at_end"] = os.getloadavg()
    out["goal"] = "batched >= 3x a plain loop for 64 WRN-16-4 references (on a GPU)"
    out["met"] = bool(cuda and k >= 64 and out["wrn-16-4"]["batched_over_plain_loop"] >= 3)
    return out


BENCHES = {
    "references": bench_references,
    "federation": bench_federation,
    "scale": bench_scale,
    "scale-1000": bench_scale_1000,
    "lira": bench_lira,
    "resnets": bench_resnets,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(BENCHES), action="append")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--repeats", type=int, default=3, help="references: alternating repeats per variant")
    parser.add_argument("--epochs", type=int, default=40, help="references: training epochs (the CNN gets a quarter)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    results = {}
    for name in args.only or list(BENCHES):
        print(f"== {name} ...", flush=True)
        res = BENCHES[name](repeats=args.repeats, epochs=args.epochs) if name == "references" else BENCHES[name]()
        results[name] = res
        print(json.dumps(res, indent=2, default=float), flush=True)
    print("\nsummary (goal: measured)")
    for res in results.values():
        print(f"  {'MET ' if res['met'] else 'MISS'} {res['figure']}: {res['goal']}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"  machine: {os.cpu_count()} cores, peak RSS of this process {peak:.2f} GB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
