"""``fedmia sweep``: one config run at every point of a grid of config values, and the privacy-utility
trade-off read off all of them (``sweep.csv``, ``sweep.json``, one figure per party).

Each point is an ordinary run in its own directory (``DIR/p00-key=value...``): a finished point
(metrics.json present) is kept, an interrupted one is resumed, so running the same sweep again into
the same ``--out`` continues it. Every point's config is validated before the first one runs; all
points share one Ray runtime.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedmia.audit import plot_privacy_utility
from fedmia.errors import InputError
from fedmia.experiment import document
from fedmia.experiment.config import (
    ConfigError,
    config_from_dict,
    dump_config,
    parse_overrides,
    read_tree,
    with_values,
)
from fedmia.experiment.document import Block, Box, Figure, Heading, Links, Paragraph, TableBlock, Verdicts, fmt_ci
from fedmia.experiment.points import Point, _flow, run_one
from fedmia.experiment.rundir import RunDir
from fedmia.experiment.verdict import HOW_TO_READ_TITLE, how_to_read
from fedmia.fl.simulation import ray_runtime

PLAN = "sweep-plan.json"
TPR_KEY = "0.01"
VERDICT_STATISTIC = "tpr@0.01"  # the verdict statistic where 1% FPR is resolvable


def split_values(raw: str) -> list[str]:
    """``V1,V2,...`` split at the commas outside brackets, braces and quotes (a value may be a YAML
    list or mapping: ``defenses=[],[{name: l2}]``). Written by hand: neither shlex nor csv knows
    YAML's nesting."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"grid values {raw!r}: unbalanced {ch!r}")
        elif ch == "," and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    if depth or quote:
        raise ConfigError(f"grid values {raw!r}: unclosed bracket or quote")
    parts.append(raw[start:])
    if any(not p.strip() for p in parts):
        raise ConfigError(f"grid values {raw!r}: an empty value (two commas in a row, or a trailing comma)")
    return parts


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``KEY=V1,V2,...`` options as {key: [values]} (each value parsed as YAML, as overrides are)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not raw:
            raise ConfigError(f"--grid {item!r} must look like section.key=V1,V2,...")
        if key in grid:
            raise ConfigError(f"--grid {key} given twice; list all its values in one --grid")
        grid[key] = [v for _, v in parse_overrides([f"{key}={part}" for part in split_values(raw)])]
    return grid


def plan_points(
    config: Path, overrides: Sequence[str], grid_items: Sequence[str], seeds: int | None = None
) -> list[Point]:
    """Every point's config, validated now: a bad key or value exits 2 before any point runs. ``seeds``:
    every point runs that many seeds (seed, seed+1, ...) and reports their aggregate."""
    tree = with_values(read_tree(config), parse_overrides(list(overrides)))
    base = config_from_dict(tree)
    if seeds is not None:
        if seeds < 1:
            raise InputError(f"--seeds must be at least 1, got {seeds}")
        tree["seeds"] = [base.seed + i for i in range(seeds)]
        base = config_from_dict(tree)
    grid = {**base.sweep.grid, **parse_grid(grid_items)}
    if not grid:
        raise ConfigError("nothing to sweep: give --grid KEY=V1,V2,... or a sweep.grid section in the config")
    tree.pop("sweep", None)
    keys = list(grid)
    points = []
    for i, combo in enumerate(itertools.product(*(grid[k] for k in keys))):
        values = tuple(zip(keys, combo, strict=True))
        try:
            cfg = config_from_dict(with_values(tree, values))
        except ConfigError as exc:
            raise ConfigError(f"sweep point {', '.join(f'{k}={_flow(v)}' for k, v in values)}: {exc}") from None
        points.append(Point(i, values, cfg))
    return points


def _check_out(out: Path, points: Sequence[Point]) -> None:
    """``out`` is new, empty, or holds this very sweep (then it is continued)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a directory")
    plan = out / PLAN
    if plan.is_file():
        try:
            saved = json.loads(plan.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{plan} is unreadable ({exc}); choose another --out") from None
        if saved.get("points") != _plan_json(points)["points"]:
            raise InputError(f"{out} holds a different sweep (its {PLAN} lists other points); choose another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} already exists, is not empty and holds no sweep; choose another --out")


def _plan_json(points: Sequence[Point]) -> dict[str, Any]:
    return {
        "points": [
            {"name": p.dirname, "values": {k: v for k, v in p.values}, "config": dump_config(p.cfg)} for p in points
        ]
    }


def summarize(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (setting, party): the setting's utility, the best attack by AUC, and the run's verdict
    (:mod:`fedmia.experiment.verdict`): the best attack by TPR at 1% FPR chosen on one half of the records
    and scored on the other, with its 95% interval, and its paired difference from the centralized
    outsider's with that difference's interval and direction."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in metrics.get("attacks", []):
        groups.setdefault((row["setting"], row["party"]), []).append(row)
    judged = {(v["setting"], v["party"]): v for v in metrics.get("verdicts", [])}
    for (setting, party), rows in groups.items():
        util = metrics.get("utility", {}).get(setting, {})
        by_auc = max(rows, key=lambda r: r["auc"])
        v = judged.get((setting, party))
        tpr = v is not None and v["statistic"] == VERDICT_STATISTIC
        out[(setting, party)] = {
            "setting": setting,
            "party": party,
            "test_accuracy": util.get("test_accuracy"),
            "test_accuracy_ci": util.get("test_accuracy_ci"),
            "generalization_gap": util.get("generalization_gap"),
            "epsilon": util.get("epsilon"),
            "best_auc": by_auc["auc"],
            "best_auc_attack": by_auc["attack"],
            "best_auc_ci": by_auc.get("auc_ci"),
            "best_tpr_at_1pct": v["value"] if tpr else None,
            "best_tpr_at_1pct_ci": v["interval"] if tpr else None,
            "best_tpr_attack": v["attack"] if tpr else None,
            "attacks_run": len(rows),
            "n_nonmembers": None if v is None else v["n_nonmembers"],
            "vs_centralized_outsider": None if v is None else v["difference"],
            "vs_centralized_outsider_ci": None if v is None else v["difference_interval"],
            "vs_centralized_outsider_direction": None if v is None else v["direction"],
            "verdict": "no verdict (this metrics.json predates verdicts; rerun the point)" if v is None else v["text"],
        }
    skipped: dict[tuple[str, str], list[str]] = {}
    for row in metrics.get("skipped", []):
        skipped.setdefault((row["setting"], row["party"]), []).append(row["attack"])
    for key, s in out.items():
        s["skipped"] = skipped.get(key, [])
    return list(out.values())


@contextlib.contextmanager
def _points_progress(console: Console, total: int) -> Iterator[Any]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        yield bar, bar.add_task("sweep", total=total)


def run_point(point: Point, out: Path, console: Console) -> dict[str, Any]:
    """Run (or continue, or reuse) one point; returns its metrics.json (a point with seeds: the aggregate
    over its seeds in the same shape, :func:`fedmia.experiment.seeds.run_point_seeds`)."""
    if point.cfg.seeds:
        from fedmia.experiment.seeds import run_point_seeds  # the seeds module runs its points with run_one

        return run_point_seeds(point, out, console)
    hint = f"fedmia sweep ... --out {out} (the same sweep continues), or fedmia run --resume {out / point.dirname}"
    return run_one(point, out, console, hint, what="sweep point")


def run_sweep(points: Sequence[Point], out: Path, console: Console) -> list[dict[str, Any]]:
    """Run every point into ``out`` (one Ray runtime for all); write sweep.csv, sweep.json and figures.

    Returns the sweep's rows: one per (point, setting, party)."""
    _check_out(out, points)
    created = not out.exists()
    try:
        root = RunDir(out)
        root.write_json(PLAN, _plan_json(points))
    except OSError as exc:  # before any point runs: an unwritable --out is bad input
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise InputError(f"cannot write the sweep directory {out}: {exc.strerror or exc}") from None
    console.print(f"sweep: {len(points)} points into {out}")
    uses_ray = [p.cfg for p in points if p.cfg.uses_ray()]
    runtime: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if uses_ray:
        runtime = ray_runtime(uses_ray[0].ray.address)
    rows: list[dict[str, Any]] = []
    with runtime, _points_progress(console, len(points)) as (bar, task):
        for point in points:
            bar.update(task, description=f"sweep: {point.label}")
            metrics = run_point(point, out, console)
            for s in summarize(metrics):
                rows.append({"point": point.dirname, "label": point.label, **dict(point.values), **s})
            bar.advance(task)
    write_outputs(root, points, rows)
    return rows


def write_outputs(root: RunDir, points: Sequence[Point], rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for p in points for k, _ in p.values))
    columns = [
        "point",
        *keys,
        "setting",
        "party",
        "test_accuracy",
        "generalization_gap",
        "epsilon",
        "best_tpr_at_1pct",
        "best_tpr_attack",
        "best_auc",
        "best_auc_attack",
        "attacks_run",
        "skipped",
        "vs_centralized_outsider",
        "vs_centralized_outsider_direction",
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {k: (_flow(v) if isinstance(v, list | dict) else v) for k, v in row.items()}
        flat["skipped"] = ";".join(row["skipped"])
        writer.writerow(flat)
    root.write_text("sweep.csv", buf.getvalue())
    root.write_json("sweep.json", {"grid_keys": keys, **_plan_json(points), "rows": rows})
    figures = []
    for party in dict.fromkeys(r["party"] for r in rows):
        mine = [r for r in rows if r["party"] == party]
        title = f"privacy-utility trade-off: {party}"
        root.write_with(f"privacy-utility-{party}.png", functools.partial(plot_privacy_utility, mine, title=title))
        figures.append(Figure(f"privacy-utility-{party}.png", f"{party}: test accuracy against leakage, every point"))
    name = points[0].cfg.name if points else "sweep"
    blocks = sweep_blocks(name, points, rows, figures, root.path)
    root.write_text("report.md", document.to_markdown(blocks))
    root.write_text("report.html", document.to_html(f"fedmia sweep: {name}", blocks, root.path))


SWEEP_COLUMNS = (
    "point",
    "setting",
    "party",
    "test acc",
    "TPR@1%FPR",
    "(attack)",
    "vs centralized outsider",
    "AUC",
    "(attack)",
    "skipped",
)
SWEEP_NUMERIC = ("test acc", "TPR@1%FPR", "AUC", "vs centralized outsider")


def _versus(r: dict[str, Any]) -> str:
    """The paired difference from the centralized outsider, its interval and what it says."""
    diff, ci, word = (
        r.get("vs_centralized_outsider"),
        r.get("vs_centralized_outsider_ci"),
        r.get("vs_centralized_outsider_direction"),
    )
    if diff is None or not ci:
        return "-"
    return f"{diff:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] {word}"


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def sweep_table_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The sweep's summary table (terminal, report.md and report.html): one row per point, setting, party."""
    return [
        (
            r["label"],
            r["setting"],
            r["party"],
            _fmt(r["test_accuracy"]),
            fmt_ci(r["best_tpr_at_1pct"], r.get("best_tpr_at_1pct_ci")),
            r["best_tpr_attack"] or "-",
            _versus(r),
            fmt_ci(r["best_auc"], r.get("best_auc_ci")),
            r["best_auc_attack"] or "-",
            str(len(r["skipped"])) if r["skipped"] else "",
        )
        for r in rows
    ]


def sweep_blocks(
    name: str, points: Sequence[Point], rows: Sequence[dict[str, Any]], figures: list[Figure], out: Path
) -> list[Block]:
    """The sweep's report, verdict first (a line per point, setting and party): the one source of its
    report.md and report.html."""
    keys = list(dict.fromkeys(k for p in points for k, _ in p.values))
    lines = [f"{r['label']} — {r['verdict']}" for r in rows] or ["no attack ran, so there is no verdict"]
    links = []
    for p in points:
        report = next((f for f in ("report.html", "report.md") if (out / p.dirname / f).is_file()), None)
        if report is not None:
            links.append((f"{p.dirname}: {p.label}", f"{p.dirname}/{report}"))
    blocks: list[Block] = [
        Heading(f"fedmia sweep: {name}", 1),
        Verdicts(lines),
        Paragraph(
            f"{len(points)} points over {', '.join(f'`{k}`' for k in keys) or 'no key'}; each point is an ordinary "
            "run in its own directory, with its own report. The table gives each party's best attack by TPR at "
            "1% FPR and by AUC."
        ),
        Heading("Best attack per party"),
        TableBlock(SWEEP_COLUMNS, sweep_table_rows(rows), numeric=SWEEP_NUMERIC),
        Box(HOW_TO_READ_TITLE, how_to_read(r["n_nonmembers"] for r in rows)),
    ]
    if figures:
        blocks += [Heading("Privacy-utility trade-off"), *figures]
    if links:
        blocks += [Heading("Points"), Links(links)]
    return blocks


def sweep_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="sweep: best attack per party")
    for c in SWEEP_COLUMNS:
        table.add_column(c, justify="right" if c in SWEEP_NUMERIC else "left")
    for row in sweep_table_rows(rows):
        table.add_row(*row)
    return table
