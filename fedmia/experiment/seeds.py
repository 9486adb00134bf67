"""Many seeds: N independent runs of one config in one parent directory, and their aggregate.

``fedmia run CONFIG --seeds N`` (or ``seeds: [0, 1, 2]`` in the config) runs the config once per seed;
each seed redraws everything random in a run (the membership split, the initializations, the client
sampling, the references), so the runs are independent repetitions of the same experiment. Each is a
normal run directory (``p00-seed=0/`` ...); the parent holds ``seeds.json`` (the plan),
``summary.json`` (the aggregate; its presence marks the whole run finished) and ``report.md`` /
``report.html``.

The aggregate, per cell (setting, party, attack): the mean over seeds of AUC and of TPR at each FPR,
with a 95% Student-t interval across seeds (:func:`fedmia.audit.uncertainty.mean_interval`) and the
per-seed values. Per (setting, party): the mean of each seed's verdict (its cross-fitted best attack,
:mod:`fedmia.experiment.verdict`) and the mean of its paired difference from the centralized outsider
*within* each seed, with a t interval over seeds: "higher", "lower" or "indistinguishable" by whether
that interval excludes zero. This interval covers what one run's bootstrap cannot: the luck of training.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedmia.audit import FPR_KEYS
from fedmia.audit.uncertainty import direction, mean_interval
from fedmia.errors import InputError
from fedmia.experiment import document
from fedmia.experiment.config import ExperimentConfig, config_from_dict, dump_config
from fedmia.experiment.document import Block, Bullets, Heading, Links, Paragraph, TableBlock, Verdicts
from fedmia.experiment.points import Point, run_one
from fedmia.experiment.rundir import RunDir
from fedmia.experiment.verdict import BASELINE_NAME
from fedmia.fl.simulation import ray_runtime

PLAN = "seeds.json"
SUMMARY = "summary.json"
SHOWN_FPR = ("0.001", "0.01")  # the report's TPR columns (summary.json keeps every level)


def seed_values(cfg: ExperimentConfig, n: int | None) -> tuple[int, ...]:
    """The seeds to run: ``cfg.seed, cfg.seed + 1, ...`` for ``--seeds N``, else the config's ``seeds``."""
    if n is not None:
        if n < 1:
            raise InputError(f"--seeds must be at least 1, got {n}")
        return tuple(cfg.seed + i for i in range(n))
    return tuple(cfg.seeds)


def seed_points(cfg: ExperimentConfig, seeds: Sequence[int]) -> list[Point]:
    """One point per seed: the config with that seed (and no seed list of its own)."""
    tree = cfg.model_dump(mode="json")
    return [
        Point(index=i, values=(("seed", s),), cfg=config_from_dict({**tree, "seed": s, "seeds": []}))
        for i, s in enumerate(seeds)
    ]


def is_seeds_dir(path: Path) -> bool:
    return (path / PLAN).is_file()


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a directory; choose a directory path")
    if resume and not is_seeds_dir(out):
        raise InputError(f"{out} holds no seeds run (no {PLAN}); nothing to resume")
    if not resume and out.is_dir() and any(out.iterdir()):
        hint = f"; continue it with fedmia run --resume {out}" if is_seeds_dir(out) else ""
        raise InputError(f"{out} already exists and is not empty; choose another --out{hint}")


def load_plan(parent: Path) -> tuple[ExperimentConfig, tuple[int, ...]]:
    """The base config and seeds of the seeds run in ``parent`` (for ``--resume``)."""
    try:
        plan = json.loads((parent / PLAN).read_text())
        cfg = config_from_dict(plan["config"])
        return cfg, tuple(int(s) for s in plan["seeds"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{parent / PLAN} is not a seeds plan fedmia wrote: {exc}") from None


def run_seeds(
    cfg: ExperimentConfig,
    seeds: Sequence[int],
    out: Path,
    console: Console,
    *,
    resume: bool = False,
    start_ray: bool = True,
) -> dict[str, Any]:
    """Run (``resume``: continue) every seed into ``out``, then write the aggregate; returns summary.json.
    A seed whose run finished is kept, an interrupted one resumed (the sweep's rules, :func:`run_point`)."""
    if len(set(seeds)) != len(seeds):
        raise InputError(f"the seeds must differ, got {list(seeds)}")
    if not seeds:
        raise InputError("no seeds to run")
    _check_out(out, resume)
    points = seed_points(cfg, seeds)
    created = not out.exists()
    try:
        root = RunDir(out)
        root.write_json(PLAN, {"seeds": list(seeds), "config": cfg.model_dump(mode="json")})
        root.write_text("config.yaml", dump_config(cfg))
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise InputError(f"cannot write the seeds directory {out}: {exc.strerror or exc}") from None
    console.print(f"{len(points)} seeds ({', '.join(map(str, seeds))}) into {out}")
    runtime: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if cfg.uses_ray() and start_ray:  # a sweep of seeds runs: the sweep holds the runtime
        runtime = ray_runtime(cfg.ray.address)
    runs: list[tuple[str, dict[str, Any]]] = []
    with runtime:
        for point in points:
            console.print(f"[bold]seed {point.cfg.seed}[/] ({point.index + 1}/{len(points)})")
            hint = f"fedmia run --resume {out} (the seeds run continues)"
            runs.append((point.dirname, run_one(point, out, console, hint, what="seed")))
    summary = aggregate(runs, list(seeds))
    write_outputs(root, cfg, summary)
    return summary


def run_point_seeds(point: Point, out: Path, console: Console) -> dict[str, Any]:
    """One sweep point run over its config's seeds (a seeds directory as the point's directory), returned
    as metrics.json-like numbers (:func:`as_metrics`) for the sweep's table and figures."""
    parent = out / point.dirname
    if (parent / SUMMARY).is_file():
        console.print(f"{point.dirname}: finished earlier, kept")
        return as_metrics(json.loads((parent / SUMMARY).read_text()))
    summary = run_seeds(point.cfg, point.cfg.seeds, parent, console, resume=is_seeds_dir(parent), start_ray=False)
    return as_metrics(summary)


def as_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The aggregate in metrics.json's shape, each number the mean over seeds and each interval the one
    across seeds: what a sweep reads from a point (utility, attacks, verdicts)."""
    utility = {
        setting: {
            **{k: c["mean"] for k, c in u.items()},
            **({"test_accuracy_ci": u["test_accuracy"]["interval"]} if "test_accuracy" in u else {}),
        }
        for setting, u in summary["utility"].items()
    }
    attacks = [
        {
            "setting": a["setting"],
            "party": a["party"],
            "attack": a["attack"],
            "auc": a["auc"]["mean"],
            "auc_ci": a["auc"]["interval"],
            "tpr_at_fpr": {k: None if c is None else c["mean"] for k, c in a["tpr_at_fpr"].items()},
            "tpr_at_fpr_ci": {k: None if c is None else c["interval"] for k, c in a["tpr_at_fpr"].items()},
        }
        for a in summary["attacks"]
    ]
    verdicts = [
        {
            "setting": v["setting"],
            "party": v["party"],
            "attack": ", ".join(v["attacks"]),
            "statistic": v["statistic"],
            "value": v["value"]["mean"],
            "interval": v["value"]["interval"],
            "n_nonmembers": v["n_nonmembers"],
            "difference": None if v["difference"] is None else v["difference"]["mean"],
            "difference_interval": None if v["difference"] is None else v["difference"]["interval"],
            "direction": v["direction"],
            "text": v["text"],
        }
        for v in summary["verdicts"]
    ]
    return {"utility": utility, "attacks": attacks, "verdicts": verdicts, "skipped": [], "seeds": summary["seeds"]}


def _cell(values: list[float]) -> dict[str, Any]:
    """A rate or an AUC over seeds: mean, t interval clipped to [0, 1], the values."""
    return mean_interval(values, bounds=(0.0, 1.0)).to_dict()


def aggregate(runs: Sequence[tuple[str, dict[str, Any]]], seeds: Sequence[int]) -> dict[str, Any]:
    """summary.json from each seed's metrics.json (see the module docstring)."""
    n = len(runs)
    utility: dict[str, dict[str, Any]] = {}
    for setting in dict.fromkeys(s for _, m in runs for s in m.get("utility", {})):
        per = [m["utility"][setting] for _, m in runs if setting in m.get("utility", {})]
        keys = dict.fromkeys(k for u in per for k, v in u.items() if isinstance(v, int | float))
        utility[setting] = {
            k: mean_interval([float(u[k]) for u in per], bounds=(0.0, 1.0) if "accuracy" in k else None).to_dict()
            for k in keys
            if all(u.get(k) is not None for u in per)
        }
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for _, m in runs:
        for row in m.get("attacks", []):
            cells.setdefault((row["setting"], row["party"], row["attack"]), []).append(row)
    attacks = []
    for (setting, party, attack), rows in cells.items():
        tpr = {}
        for key in FPR_KEYS:
            values = [r["tpr_at_fpr"].get(key) for r in rows]
            tpr[key] = _cell([float(v) for v in values]) if all(v is not None for v in values) else None
        attacks.append(
            {
                "setting": setting,
                "party": party,
                "attack": attack,
                "n_seeds": len(rows),
                "auc": _cell([float(r["auc"]) for r in rows]),
                "tpr_at_fpr": tpr,
            }
        )
    return {
        "seeds": list(seeds),
        "runs": [name for name, _ in runs],
        "interval": "95% Student-t interval of the mean over seeds",
        "utility": utility,
        "attacks": attacks,
        "verdicts": _verdicts(runs),
        "n_runs": n,
    }


def _verdicts(runs: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _, m in runs:
        for v in m.get("verdicts", []):
            groups.setdefault((v["setting"], v["party"]), []).append(v)
    out = []
    for (setting, party), vs in groups.items():
        stats = Counter(v["statistic"] for v in vs)
        statistic = "auc" if "auc" in stats else "tpr@0.01"  # one statistic for every seed: AUC if any needed it
        same = [v for v in vs if v["statistic"] == statistic]
        entry: dict[str, Any] = {
            "setting": setting,
            "party": party,
            "statistic": statistic,
            "n_seeds": len(same),
            "n_nonmembers": int(same[0]["n_nonmembers"]),  # the config fixes it: the same in every seed
            "attacks": dict(Counter(v["attack"] for v in same)),
            "value": _cell([float(v["value"]) for v in same]),
            "difference": None,
            "direction": None,
        }
        diffs = [float(v["difference"]) for v in same if v.get("difference") is not None]
        if diffs and len(diffs) == len(same):
            d = mean_interval(diffs)
            entry["difference"] = d.to_dict()
            entry["direction"] = None if d.interval is None else direction(d.interval)
        entry["baseline"] = any(v.get("direction") is None and v["comparison"].startswith("the baseline") for v in same)
        entry["text"] = verdict_text(entry)
        out.append(entry)
    return out


def _pm(cell: dict[str, Any], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    if cell["interval"] is None:
        return f.format(cell["mean"])
    lo, hi = cell["interval"]
    return f"{f.format(cell['mean'])} [{f.format(lo)}, {f.format(hi)}]"


def verdict_text(v: dict[str, Any]) -> str:
    """The aggregate verdict line of one (setting, party)."""
    n = v["n_seeds"]
    attacks = ", ".join(f"{a} ×{k}" if k > 1 else a for a, k in v["attacks"].items())
    what = "TPR at 1% FPR" if v["statistic"] != "auc" else "AUC (1% FPR not resolvable)"
    head = f"{v['setting']} / {v['party']}: best attack's {what} {_pm(v['value'])} over {n} seeds ({attacks})"
    if v["baseline"]:
        return f"{head}; the baseline"
    d = v["difference"]
    if d is None:
        return f"{head}; no comparison ({BASELINE_NAME} is not in every seed)"
    if d["interval"] is None:
        return f"{head}; difference from {BASELINE_NAME} {_pm(d, True)} on one seed (no interval across seeds)"
    phrase = {"higher": "higher than", "lower": "lower than", "indistinguishable": "indistinguishable from"}
    return f"{head}; {phrase[v['direction']]} {BASELINE_NAME} (mean paired difference {_pm(d, True)})"


def _table(summary: dict[str, Any]) -> TableBlock:
    cols = ("setting", "party", "attack", "AUC", *(f"TPR@{float(k):.1%}FPR".replace(".0%", "%") for k in SHOWN_FPR))
    rows = []
    for a in summary["attacks"]:
        tprs = [("n/a" if a["tpr_at_fpr"].get(k) is None else _pm(a["tpr_at_fpr"][k])) for k in SHOWN_FPR]
        rows.append((a["setting"], a["party"], a["attack"], _pm(a["auc"]), *tprs))
    return TableBlock(cols, rows, numeric=list(cols[3:]))


def _utility_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for setting, u in summary["utility"].items():
        parts = [f"{k.replace('_', ' ')} {_pm(c)}" for k, c in u.items() if k in ("train_accuracy", "test_accuracy")]
        lines.append(f"{setting}: " + ", ".join(parts))
    return lines


def summary_blocks(cfg: ExperimentConfig, summary: dict[str, Any]) -> list[Block]:
    n = summary["n_runs"]
    return [
        Heading(f"fedmia run: {cfg.name}, {n} seeds", 1),
        Verdicts([v["text"] for v in summary["verdicts"]] or ["no attack ran, so there is no verdict"]),
        Paragraph(
            f"Seeds {', '.join(map(str, summary['seeds']))}: each redraws the membership split, the "
            "initializations, the client sampling and the references. Every number is the mean over seeds "
            "with its 95% Student-t interval across seeds, which covers the luck of training as well as the "
            "luck of the records; each seed's own report has its bootstrap intervals. A verdict's difference is "
            f"paired within each seed (the party and {BASELINE_NAME} on the same run), then averaged."
        ),
        Heading("Utility"),
        Bullets(_utility_lines(summary)),
        Heading("Membership inference"),
        _table(summary),
        Heading("The runs"),
        Links([(name, f"{name}/report.html") for name in summary["runs"]]),
    ]


def write_outputs(root: RunDir, cfg: ExperimentConfig, summary: dict[str, Any]) -> None:
    blocks = summary_blocks(cfg, summary)
    root.write_text("report.md", document.to_markdown(blocks))
    root.write_text(
        "report.html", document.to_html(f"fedmia run: {cfg.name} ({summary['n_runs']} seeds)", blocks, root.path)
    )
    root.write_json(SUMMARY, summary)  # its presence marks the whole run finished


def print_summary(console: Console, summary: dict[str, Any], out: Path) -> None:
    for line in _utility_lines(summary):
        console.print(line, highlight=False)
    for v in summary["verdicts"]:
        console.print(f"[bold]verdict[/] {v['text']}", highlight=False)
    table = _table(summary)
    rich = Table(title=f"mean over {summary['n_runs']} seeds [95% interval]")
    for c in table.columns:
        rich.add_column(c, justify="left" if c in ("setting", "party", "attack") else "right")
    for row in table.rows:
        rich.add_row(*row)
    console.print(rich)
    console.print(f"seeds directory: {out}  (summary.json, report.html, one run directory per seed)")


__all__ = ["aggregate", "is_seeds_dir", "load_plan", "run_seeds", "seed_values"]
