"""A named study's figure: each party's best attack (AUC, TPR at 1% FPR) and the target's utility against
the one value the study varies (the number of classes, of clients, Dirichlet alpha, epsilon)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

PANELS = (
    ("best_auc", "best attack AUC"),
    ("best_tpr_at_1pct", "best attack TPR at 1% FPR"),
    ("test_accuracy", "target test accuracy"),
)


def plot_study(
    rows: Sequence[Mapping[str, Any]], path: str | Path, title: str, xlabel: str, logx: bool = False
) -> Path:
    """One panel per PANELS entry, one line per (setting, party); ``rows`` carry ``x`` and the sweep's
    columns (None values, e.g. an unresolvable TPR, are left out). Utility is drawn once per setting."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    try:
        for ax, (key, label) in zip(axes, PANELS, strict=True):
            lines: dict[str, list[tuple[float, float]]] = {}
            for r in rows:
                name = r["setting"] if key == "test_accuracy" else f"{r['setting']} / {r['party']}"
                if r.get(key) is not None:
                    lines.setdefault(name, [])
                    if (r["x"], float(r[key])) not in lines[name]:
                        lines[name].append((r["x"], float(r[key])))
            for name, pts in lines.items():
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1.3, label=name)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            if logx:
                ax.set_xscale("log")
            xs = sorted({r["x"] for r in rows})
            ax.set_xticks(xs, [f"{x:g}" for x in xs])  # the study's values, not log-scale decades
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(True, alpha=0.4)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="x-small")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)
    return path
