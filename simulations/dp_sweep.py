"""Leakage versus privacy budget: the comparison study at several local-DP noise multipliers.

``python simulations/dp_sweep.py [--noise 0.5 1.0 2.0] [key=value ...]`` runs configs/compare.yaml
once per noise multiplier (each its own run directory) and prints epsilon and the best attack's
AUC per setting/party, so the privacy-utility-leakage trade-off reads off one table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedmia.experiment.cli import app

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "compare.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--out", type=Path, default=Path("runs") / f"dp-sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    table = Table(title="local DP sweep (federated)")
    for col in ("noise", "epsilon", "test acc", "party", "best attack", "AUC"):
        table.add_column(col)
    for noise in args.noise:
        run_dir = args.out / f"noise-{noise:g}"
        overrides = [f"federation.local_dp={{noise_multiplier: {noise}}}", "settings=[federated]", *args.overrides]
        try:
            app(["run", str(CONFIG), *overrides, "--out", str(run_dir)], prog_name="fedmia", standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
        metrics = json.loads((run_dir / "metrics.json").read_text())
        util = metrics["utility"]["federated"]
        best: dict[str, dict] = {}
        for row in metrics["attacks"]:
            if row["party"] not in best or row["auc"] > best[row["party"]]["auc"]:
                best[row["party"]] = row
        for party, row in best.items():
            eps = util.get("epsilon")
            table.add_row(
                f"{noise:g}",
                "n/a" if eps is None else f"{eps:.2f}",
                f"{util['test_accuracy']:.3f}",
                party,
                row["attack"],
                f"{row['auc']:.3f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
