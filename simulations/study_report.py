"""Print a named study's headline table (Markdown) and write its figure to docs/img/study-<name>.png.

    python simulations/study_report.py classes [runs/study-classes]
    python simulations/study_report.py dp      # runs/study-dp_local and runs/study-dp_central on one ε axis

Reads the sweep's sweep.json (written by ``fedmia sweep``); nothing is re-run. The per-study x value is
named here; the table and the figure come from the package (fedmia.experiment.sweep's rows,
fedmia.audit.study_plots)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedmia.audit.study_plots import plot_study
from fedmia.experiment.sweep import summarize

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


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def load_rows(name: str, out: Path) -> list[dict[str, Any]]:
    """The sweep's rows (one per point, setting, party) with the study's x and the exposure's rho."""
    _, x_of, _ = STUDIES[name]
    if (out / "sweep.json").is_file():
        sweep = json.loads((out / "sweep.json").read_text())
    else:  # a sweep stopped before its end: its finished points (those with a metrics.json)
        plan = json.loads((out / "sweep-plan.json").read_text())
        finished = [p for p in plan["points"] if (out / p["name"] / "metrics.json").is_file()]
        rows = []
        for p in finished:
            metrics = json.loads((out / p["name"] / "metrics.json").read_text())
            rows += [{"point": p["name"], **s} for s in summarize(metrics)]
        sweep = {"points": finished, "rows": rows}
        print(f"({name}: unfinished sweep, {len(finished)} of {len(plan['points'])} points)\n")
    values = {p["name"]: p["values"] for p in sweep["points"]}
    rho = {}  # (point, setting, party) -> Spearman rho of score vs outlierness over members (metrics.json)
    for point in values:
        metrics = json.loads((out / point / "metrics.json").read_text())
        for e in metrics.get("exposure", {}).get("parties", []):
            rho[(point, e["setting"], e["party"])] = e["spearman_rho"]
    return [
        {**r, "x": x_of(values[r["point"]]), "rho": rho.get((r["point"], r["setting"], r["party"]))}
        for r in sweep["rows"]
    ]


def print_table(xlabel: str, rows: list[dict[str, Any]]) -> None:
    print(
        f"| {xlabel} | setting | party | test acc | gap | epsilon | TPR@1%FPR (best attack) | AUC (best attack) "
        "| rho(score, outlier) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        eps = "-" if r.get("epsilon") is None else f"{r['epsilon']:.2f}"
        print(
            f"| {r['x']:g} | {r['setting']} | {r['party']} | {_f(r['test_accuracy'])} | {_f(r['generalization_gap'])} "
            f"| {eps} | {_f(r['best_tpr_at_1pct'])} ({r['best_tpr_attack'] or '-'}) "
            f"| {_f(r['best_auc'])} ({r['best_auc_attack']}) | {_f(r['rho'])} |"
        )


def main(argv: list[str]) -> None:
    if argv and argv[0] == "dp":  # both DP halves on one epsilon axis
        rows = []
        for half, label in (("dp_local", "local DP"), ("dp_central", "central DP")):
            rows += [
                {**r, "setting": label, "x": round(r["epsilon"], 1)}
                for r in load_rows(half, REPO / "runs" / f"study-{half}")
            ]
        rows.sort(key=lambda r: (r["x"], r["setting"]))
        print_table("epsilon", rows)
        fig = plot_study(rows, REPO / "docs" / "img" / "study-dp.png", "local vs central DP", "epsilon", logx=True)
        print(f"\nfigure: {fig.relative_to(REPO)}")
        return
    if not argv or argv[0] not in STUDIES:
        raise SystemExit(f"usage: study_report.py STUDY [SWEEP_DIR]; studies: dp, {', '.join(STUDIES)}")
    name = argv[0]
    out = Path(argv[1]) if len(argv) > 1 else REPO / "runs" / f"study-{name}"
    xlabel, _, logx = STUDIES[name]
    rows = load_rows(name, out)
    print_table(xlabel, rows)
    fig = plot_study(rows, REPO / "docs" / "img" / f"study-{name}.png", f"study: {name}", xlabel, logx=logx)
    print(f"\nfigure: {fig.relative_to(REPO)}")


if __name__ == "__main__":
    main(sys.argv[1:])
