"""Print a named study's headline table (Markdown) and write its figure to docs/img/study-<name>.png.

    python simulations/study_report.py classes [runs/study-classes [FIGURE.png]]
    python simulations/study_report.py dp        # runs/study-dp_local and runs/study-dp_central on one ε axis
    python simulations/study_report.py defenses  # runs/study-defenses: every defense against its `none` point

Reads what ``fedmia sweep`` wrote (sweep-plan.json and each point's directory); nothing is re-run. A point
is one of:

- a seeds directory (``fedmia sweep --seeds N``): every number is the mean over seeds with its 95%
  Student-t interval across seeds (``summary.json``, :mod:`fedmia.experiment.seeds`); a point whose seeds
  did not all finish is aggregated over the finished ones (marked ``partial``);
- one run (``metrics.json``), possibly with ``audit.targets: T``: every number is that run's, with its
  bootstrap interval (over records, or over targets and records when T > 1).

The best attack's TPR at 1% FPR is the verdict's (chosen on one half of the records or targets and read on
the other: cross-fitted, :mod:`fedmia.experiment.verdict`); the best AUC is the attack with the highest
(mean) AUC, chosen after the fact, so it is optimistic by the spread of its attacks.

Trends (``trend`` lines): the last point minus the first, per (setting, party). Across seeds a Welch t
interval on the per-seed values of the two points (independent runs: a point's config changes its data);
for one-run points a normal approximation from the two bootstrap intervals (each half-width / 1.96 as the
standard error). The defenses table compares each point with ``none`` *paired by seed* (the same seed
draws the same split, so a defense and ``none`` share their records): the t interval of the per-seed
differences. A difference whose interval covers 0 is "indistinguishable"."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from fedmia.audit.uncertainty import mean_interval  # noqa: E402
from fedmia.experiment.document import fmt_ci  # noqa: E402
from fedmia.experiment.seeds import aggregate, as_metrics  # noqa: E402
from fedmia.experiment.sweep import summarize  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# study -> (x label, x from the point's grid values, log x axis)
STUDIES: dict[str, tuple[str, Callable[[dict[str, Any]], float], bool]] = {
    "classes": ("classes", lambda v: v["data.params"]["classes"], True),
    "records_per_class": ("records per class", lambda v: v["data.params"]["n"] // v["data.params"]["classes"], True),
    "clients": ("clients", lambda v: v["federation.num_clients"], True),
    "dirichlet": ("Dirichlet alpha", lambda v: v["federation.partition.params.alpha"], True),
    "dp_local": ("noise multiplier (local DP)", lambda v: v["federation.local_dp.noise_multiplier"], True),
    "dp_central": ("noise multiplier (central DP)", lambda v: v["federation.central_dp.noise_multiplier"], True),
}


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _rho(metrics: dict[str, Any]) -> dict[tuple[str, str], float]:
    """(setting, party) -> Spearman rho of the best attack's score and outlierness over the members."""
    return {(e["setting"], e["party"]): e["spearman_rho"] for e in metrics.get("exposure", {}).get("parties", [])}


def _seed_runs(pdir: Path) -> list[tuple[str, dict[str, Any]]]:
    """The finished seeds of a seeds directory: (run name, metrics.json)."""
    return [
        (d.name, _read(d / "metrics.json")) for d in sorted(pdir.glob("p*-seed=*")) if (d / "metrics.json").is_file()
    ]


def load_point(pdir: Path) -> tuple[list[dict[str, Any]], str] | None:
    """A finished (or, across seeds, partly finished) point's rows: summarize()'s columns plus ``rho`` and,
    across seeds, the per-seed values (``tpr_values``, ``auc_values``, ``acc_values``); and how its
    intervals were made. None if nothing of it finished."""
    if (pdir / "seeds.json").is_file():
        runs = _seed_runs(pdir)
        if not runs:
            return None
        planned = _read(pdir / "seeds.json")["seeds"]
        if (pdir / "summary.json").is_file():
            summary = _read(pdir / "summary.json")
        else:
            seeds = [int(name.split("seed=")[1]) for name, _ in runs]
            summary = aggregate(runs, seeds)
        n = summary["n_runs"]
        method = f"{n} seeds" + ("" if n == len(planned) else f" of {len(planned)} (partial)")
        rows = summarize(as_metrics(summary))
        verdicts = {(v["setting"], v["party"]): v for v in summary["verdicts"]}
        cells = {(a["setting"], a["party"], a["attack"]): a for a in summary["attacks"]}
        rhos = [_rho(m) for _, m in runs]
        for r in rows:
            key = (r["setting"], r["party"])
            r["seeds"] = [int(s) for s in summary["seeds"]]  # the order of every per-seed list below
            v = verdicts.get(key)
            r["tpr_values"] = list(v["value"]["values"]) if v and v["statistic"] != "auc" else None
            r["auc_values"] = list(cells[(*key, r["best_auc_attack"])]["auc"]["values"])
            acc = summary["utility"].get(r["setting"], {}).get("test_accuracy")
            r["acc_values"] = None if acc is None else list(acc["values"])
            got = [x[key] for x in rhos if key in x]
            r["rho"] = sum(got) / len(got) if got else None
        return rows, method
    if not (pdir / "metrics.json").is_file():
        return None
    metrics = _read(pdir / "metrics.json")
    targets = max((int(a.get("targets", 1)) for a in metrics.get("attacks", [])), default=1)
    method = "1 seed" + (f", {targets} targets pooled" if targets > 1 else "")
    rows = summarize(metrics)
    rho = _rho(metrics)
    for r in rows:
        r["rho"] = rho.get((r["setting"], r["party"]))
        r["tpr_values"] = r["auc_values"] = r["acc_values"] = r["seeds"] = None
    return rows, method


def load_rows(name: str, out: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every finished point's rows with the study's ``x`` (and ``values``: the point's grid values), and the
    distinct ways their intervals were made."""
    x_of = STUDIES[name][1] if name in STUDIES else (lambda v: 0.0)
    plan = _read(out / "sweep-plan.json")
    rows: list[dict[str, Any]] = []
    methods: list[str] = []
    done = 0
    for p in plan["points"]:
        got = load_point(out / p["name"])
        if got is None:
            continue
        done += 1
        prow, method = got
        methods.append(method)
        rows += [
            {**r, "point": p["name"], "values": p["values"], "x": x_of(p["values"]), "method": method} for r in prow
        ]
    if done < len(plan["points"]):
        print(f"({name}: unfinished sweep, {done} of {len(plan['points'])} points)\n")
    return rows, list(dict.fromkeys(methods))


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _versus(r: dict[str, Any]) -> str:
    d, ci, word = (
        r.get("vs_centralized_outsider"),
        r.get("vs_centralized_outsider_ci"),
        r.get("vs_centralized_outsider_direction"),
    )
    if d is None:
        return "-"
    if not ci:
        return f"{d:+.3f}"
    return f"{d:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] {word}"


def table_lines(xlabel: str, rows: Sequence[dict[str, Any]], versus: bool = True) -> list[str]:
    head = (
        f"| {xlabel} | setting | party | test acc | gap | epsilon | TPR@1%FPR (best attack) | AUC (best attack) "
        + ("| TPR@1%FPR − centralized outsider " if versus else "")
        + "| rho(score, outlier) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        eps = "-" if r.get("epsilon") is None else f"{r['epsilon']:.2f}"
        tpr = fmt_ci(r["best_tpr_at_1pct"], r.get("best_tpr_at_1pct_ci"))
        auc = fmt_ci(r["best_auc"], r.get("best_auc_ci"))
        lines.append(
            f"| {r['x']:g} | {r['setting']} | {r['party']} | {fmt_ci(r['test_accuracy'], r.get('test_accuracy_ci'))} "
            f"| {_f(r['generalization_gap'])} | {eps} | {tpr} ({r['best_tpr_attack'] or '-'}) "
            f"| {auc} ({r['best_auc_attack']}) " + (f"| {_versus(r)} " if versus else "") + f"| {_f(r['rho'])} |"
        )
    return lines


def _se(ci: Sequence[float] | None) -> float | None:
    return None if not ci else (ci[1] - ci[0]) / (2 * 1.96)


def difference(
    a_value: float | None,
    a_ci: Sequence[float] | None,
    a_values: Sequence[float] | None,
    b_value: float | None,
    b_ci: Sequence[float] | None,
    b_values: Sequence[float] | None,
) -> tuple[float, tuple[float, float] | None] | None:
    """b − a of two independent points with a 95% interval: Welch's t across seeds when both have per-seed
    values (at least 2 each), else the normal approximation from their bootstrap intervals; no interval
    when neither is available."""
    if a_value is None or b_value is None:
        return None
    d = b_value - a_value
    if a_values and b_values and len(a_values) > 1 and len(b_values) > 1:
        from scipy import stats

        va = float(stats.tvar(a_values)) / len(a_values)
        vb = float(stats.tvar(b_values)) / len(b_values)
        if va + vb == 0.0:
            return d, (d, d)
        df = (va + vb) ** 2 / (va**2 / (len(a_values) - 1) + vb**2 / (len(b_values) - 1))
        h = float(stats.t.ppf(0.975, df)) * math.sqrt(va + vb)
        return d, (d - h, d + h)
    sa, sb = _se(a_ci), _se(b_ci)
    if sa is None or sb is None:
        return d, None
    h = 1.96 * math.sqrt(sa**2 + sb**2)
    return d, (d - h, d + h)


def word(ci: Sequence[float] | None) -> str:
    if ci is None:
        return "no interval"
    if ci[0] > 0:
        return "higher"
    if ci[1] < 0:
        return "lower"
    return "indistinguishable"


def _interval(got: tuple[float, tuple[float, float] | None] | None, *, table: bool) -> str:
    """A difference and its interval: ``+0.014 [-0.035, +0.006] indistinguishable`` in prose; in a table
    ``-0.014 [-0.035, +0.006]``, in bold when the interval excludes 0; ``n/a`` without a value."""
    if got is None:
        return "n/a"
    d, ci = got
    if ci is None:
        return f"{d:+.3f}" if table else f"{d:+.3f} (no interval)"
    text = f"{d:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
    if not table:
        return f"{text} {word(ci)}"
    return f"**{text}**" if word(ci) in ("higher", "lower") else text


def _dstr(got: tuple[float, tuple[float, float] | None] | None) -> str:
    return _interval(got, table=False)


def _short(got: tuple[float, tuple[float, float] | None] | None) -> str:
    return _interval(got, table=True)


def trend_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per (setting, party): last x minus first x, for the best TPR at 1% FPR, the best AUC, test accuracy."""
    out = []
    for key in dict.fromkeys((r["setting"], r["party"]) for r in rows):
        mine = sorted((r for r in rows if (r["setting"], r["party"]) == key), key=lambda r: r["x"])
        if len(mine) < 2:
            continue
        a, b = mine[0], mine[-1]
        parts = []
        for label, v, ci, vals in (
            ("TPR@1%", "best_tpr_at_1pct", "best_tpr_at_1pct_ci", "tpr_values"),
            ("AUC", "best_auc", "best_auc_ci", "auc_values"),
            ("test acc", "test_accuracy", "test_accuracy_ci", "acc_values"),
        ):
            got = difference(a[v], a.get(ci), a.get(vals), b[v], b.get(ci), b.get(vals))
            parts.append(f"{label} {_dstr(got)}")
        out.append(f"- trend {key[0]} / {key[1]}, x {a['x']:g} -> {b['x']:g}: " + "; ".join(parts))
    return out


PANELS = (
    ("best_auc", "best_auc_ci", "best attack AUC"),
    ("best_tpr_at_1pct", "best_tpr_at_1pct_ci", "best attack TPR at 1% FPR (cross-fitted)"),
    ("test_accuracy", "test_accuracy_ci", "target test accuracy"),
)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str, xlabel: str, logx: bool) -> Path:
    """fedmia.audit.study_plots.plot_study's three panels, with each point's 95% interval as an error bar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.4 * len(PANELS), 3.8))
    try:
        for ax, (key, ci_key, label) in zip(axes, PANELS, strict=True):
            lines: dict[str, dict[float, tuple[float, Any]]] = {}
            for r in rows:
                name = r["setting"] if key == "test_accuracy" else f"{r['setting']} / {r['party']}"
                if r.get(key) is not None:
                    lines.setdefault(name, {}).setdefault(r["x"], (float(r[key]), r.get(ci_key)))
            for i, (name, pts) in enumerate(lines.items()):
                xs = sorted(pts)
                ys = [pts[x][0] for x in xs]
                lo = [y - pts[x][1][0] if pts[x][1] else 0.0 for x, y in zip(xs, ys, strict=True)]
                hi = [pts[x][1][1] - y if pts[x][1] else 0.0 for x, y in zip(xs, ys, strict=True)]
                shift = [x * (1 + 0.025 * (i - (len(lines) - 1) / 2)) if logx else x for x in xs]  # side by side
                ax.errorbar(shift, ys, yerr=[lo, hi], marker="o", markersize=3, linewidth=1.2, capsize=2, label=name)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label, fontsize="small")
            if logx:
                ax.set_xscale("log")
            xs_all = sorted({r["x"] for r in rows})
            ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(True, alpha=0.4)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="x-small")
        fig.suptitle(title + " (error bars: 95% intervals)")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)
    return path


# ---- the defenses study: one column per (setting, party), every point against `none`, paired by seed ----


def _label(values: dict[str, Any]) -> str:
    ds = values.get("defenses") or []
    if not ds:
        return "none"
    parts = []
    for d in ds:
        if isinstance(d, str):
            parts.append(d)
        else:
            params = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in d["params"].items())
            parts.append(f"{d['name']} {params}")
    return " + ".join(parts)


def paired(
    base: Sequence[float] | None,
    other: Sequence[float] | None,
    base_seeds: Sequence[int] | None = None,
    other_seeds: Sequence[int] | None = None,
) -> tuple[float, tuple[float, float] | None] | None:
    """Mean of the per-seed differences other − base (each seed with the same seed; over the seeds both
    finished when their seeds are given) and its t interval (none from one seed)."""
    if not base or not other:
        return None
    if base_seeds is not None and other_seeds is not None:
        if len(base) != len(base_seeds) or len(other) != len(other_seeds):
            return None
        o_of = dict(zip(other_seeds, other, strict=True))
        shared = [(b, o_of[s]) for s, b in zip(base_seeds, base, strict=True) if s in o_of]
        base, other = [b for b, _ in shared], [o for _, o in shared]
    if not base or len(base) != len(other):
        return None
    d = mean_interval([o - b for b, o in zip(base, other, strict=True)])
    return d.mean, d.interval


def defenses_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    parties = list(dict.fromkeys((r["setting"], r["party"]) for r in rows))
    points = list(dict.fromkeys(r["point"] for r in rows))
    by = {(r["point"], r["setting"], r["party"]): r for r in rows}
    base_point = next((p for p in points if not (by[(p, *parties[0])]["values"].get("defenses"))), None)
    cols = " | ".join(f"{s} {p}: TPR@1% / AUC" for s, p in parties)
    out = [
        "Every cell: mean over seeds [95% t interval]; test accuracy per setting.",
        "",
        f"| defense | centralized test acc | federated test acc | {cols} |",
        "|---|---|---|" + "---|" * len(parties),
    ]
    for p in points:
        first = {s: by.get((p, s, q)) for s, q in parties}
        acc = {s: fmt_ci(r["test_accuracy"], r.get("test_accuracy_ci")) for s, r in first.items() if r}
        cells = []
        for s, q in parties:
            r = by.get((p, s, q))
            cells.append(
                "-"
                if r is None
                else f"{fmt_ci(r['best_tpr_at_1pct'], r.get('best_tpr_at_1pct_ci'))} / "
                f"{fmt_ci(r['best_auc'], r.get('best_auc_ci'))}"
            )
        label = _label(next(r for r in first.values() if r)["values"])
        out.append(
            f"| {label} | {acc.get('centralized', '-')} | {acc.get('federated', '-')} | " + " | ".join(cells) + " |"
        )
    if base_point is None:
        return out
    out += [
        "",
        "Against `none`, paired by seed: mean difference [95% t interval], **bold** where the interval excludes 0.",
        "",
        "| defense | Δ test acc (centralized / federated) | "
        + " | ".join(f"{s} {q}: ΔTPR@1% / ΔAUC" for s, q in parties)
        + " |",
        "|---|---|" + "---|" * len(parties),
    ]
    for p in points:
        if p == base_point:
            continue
        cells, accs = [], {}
        for s, q in parties:
            r, b = by.get((p, s, q)), by.get((base_point, s, q))
            if r is None or b is None:
                cells.append("-")
                continue
            accs.setdefault(s, _short(paired(b["acc_values"], r["acc_values"], b["seeds"], r["seeds"])))
            tpr = _short(paired(b["tpr_values"], r["tpr_values"], b["seeds"], r["seeds"]))
            auc = _short(paired(b["auc_values"], r["auc_values"], b["seeds"], r["seeds"]))
            cells.append(f"{tpr} / {auc}")
        acc = " / ".join(accs.get(s, "-") for s in ("centralized", "federated"))
        out.append(f"| {_label(by[(p, *parties[0])]['values'])} | {acc} | " + " | ".join(cells) + " |")
    return out


def party_gap_lines(
    rows: Sequence[dict[str, Any]],
    a: tuple[str, str] = ("federated", "outsider"),
    b: tuple[str, str] = ("federated", "server"),
) -> list[str]:
    """Per point: party ``b`` minus party ``a`` on the same runs, paired by seed (both attack the same
    federation of each seed), for the best TPR at 1% FPR and the best AUC."""
    by = {(r["point"], r["setting"], r["party"]): r for r in rows}
    out = [
        f"{b[0]} {b[1]} minus {a[0]} {a[1]}, paired by seed (mean difference [95% t interval]):",
        "",
        "| point | ΔTPR@1% | ΔAUC |",
        "|---|---|---|",
    ]
    for p in dict.fromkeys(r["point"] for r in rows):
        ra, rb = by.get((p, *a)), by.get((p, *b))
        if ra is None or rb is None:
            continue
        tpr = _short(paired(ra["tpr_values"], rb["tpr_values"], ra["seeds"], rb["seeds"]))
        auc = _short(paired(ra["auc_values"], rb["auc_values"], ra["seeds"], rb["seeds"]))
        label = _label(ra["values"]) if "defenses" in ra["values"] else f"{ra['x']:g}"
        out.append(f"| {label} | {tpr} | {auc} |")
    return out


def main(argv: list[str]) -> None:
    if argv and argv[0] == "defenses":
        out = Path(argv[1]) if len(argv) > 1 else REPO / "runs" / "study-defenses"
        rows, methods = load_rows("defenses", out)
        print(f"intervals: {', '.join(methods)}\n")
        print("\n".join(defenses_lines(rows)))
        print()
        print("\n".join(party_gap_lines(rows)))
        return
    if argv and argv[0] == "dp":  # both DP halves on one epsilon axis
        rows, methods = [], []
        for half, label in (("dp_local", "local DP"), ("dp_central", "central DP")):
            got, m = load_rows(half, REPO / "runs" / f"study-{half}")
            rows += [{**r, "setting": label, "x": round(r["epsilon"], 1)} for r in got]
            methods += m
        rows.sort(key=lambda r: (r["x"], r["setting"]))
        print(f"intervals: {', '.join(dict.fromkeys(methods))}\n")
        print("\n".join(table_lines("epsilon", rows, versus=False)))
        print()
        print("\n".join(trend_lines(rows)))
        fig = plot(rows, REPO / "docs" / "img" / "study-dp.png", "local vs central DP", "epsilon", logx=True)
        print(f"\nfigure: {fig.relative_to(REPO)}")
        return
    if not argv or argv[0] not in STUDIES:
        raise SystemExit(f"usage: study_report.py STUDY [SWEEP_DIR]; studies: dp, defenses, {', '.join(STUDIES)}")
    name = argv[0]
    out = Path(argv[1]) if len(argv) > 1 else REPO / "runs" / f"study-{name}"
    xlabel, _, logx = STUDIES[name]
    rows, methods = load_rows(name, out)
    versus = any(r.get("vs_centralized_outsider") is not None for r in rows)
    print(f"intervals: {', '.join(methods)}\n")
    print("\n".join(table_lines(xlabel, rows, versus=versus)))
    print()
    print("\n".join(trend_lines(rows)))
    fig_path = Path(argv[2]) if len(argv) > 2 else REPO / "docs" / "img" / f"study-{name}.png"
    fig = plot(rows, fig_path, f"study: {name}", xlabel, logx=logx)
    print(f"\nfigure: {fig}")


if __name__ == "__main__":
    main(sys.argv[1:])
