"""Figures of the audit: log-log ROC curves and per-round metric curves (PNG, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import auc as trapezoid_auc  # noqa: E402

from fedmia.audit.metrics import AttackMetrics  # noqa: E402
from fedmia.audit.uncertainty import bootstrap_intervals  # noqa: E402

DPI = 150


def _curve_label(name: str, fpr: np.ndarray, tpr: np.ndarray, metrics: AttackMetrics | None) -> str:
    """Legend entry with AUC and TPR@1%FPR, taken from ``metrics`` when given, else from the curve."""
    if metrics is not None:
        auc_value: float = metrics.auc
        tpr1 = metrics.tpr_at_fpr.get(str(0.01))
    else:
        auc_value = float(trapezoid_auc(fpr, tpr))
        positive = fpr[fpr > 0]
        # the curve alone does not give n_nonmembers; call 1% unresolvable if no point lies in (0, 1%]
        tpr1 = float(np.max(tpr[fpr <= 0.01])) if positive.size and positive.min() <= 0.01 else None
    tpr1_text = "n/a" if tpr1 is None else f"{tpr1:.3f}"
    return f"{name} (AUC={auc_value:.3f}, TPR@1%FPR={tpr1_text})"


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    title: str,
    metrics: Mapping[str, AttackMetrics] | None = None,
    band: RocBand | None = None,
) -> Path:
    """Save a log-log ROC figure, one line per attack, with the chance diagonal, and ``band`` (one attack's
    pointwise 95% interval of TPR at a grid of FPRs, :func:`roc_band`) shaded around its curve.

    ``curves`` maps an attack name to ``(fpr, tpr)`` (e.g. from :func:`roc_points`). Log axes cannot
    show zeros: points with ``fpr == 0`` are dropped, and ``tpr == 0`` is drawn at the lower axis
    limit (the bottom edge), which is half the smallest positive rate over all curves (about
    ``1 / (2 * n_nonmembers)``). ``metrics`` (same keys), if given, supplies the legend's AUC and TPR@1%FPR.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: (np.asarray(f, dtype=float), np.asarray(t, dtype=float)) for name, (f, t) in curves.items()}
    positives = [a[a > 0] for f, t in arrays.values() for a in (f, t)]
    positives = [p for p in positives if p.size]
    lo = 0.5 * min(float(p.min()) for p in positives) if positives else 1e-5

    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    styles = ("-", "--", "-.", ":")  # the 10-colour cycle repeats: vary the line style past it
    try:
        for i, (name, (fpr, tpr)) in enumerate(arrays.items()):
            if fpr.shape != tpr.shape:
                raise ValueError(f"curve {name!r}: fpr and tpr differ in shape {fpr.shape} != {tpr.shape}")
            keep = fpr > 0
            label = _curve_label(name, fpr, tpr, None if metrics is None else metrics.get(name))
            style = styles[(i // 10) % len(styles)]
            ax.plot(fpr[keep], np.maximum(tpr[keep], lo), label=label, linewidth=1.3, linestyle=style)
        if band is not None:
            names = list(arrays)
            color = ax.lines[names.index(band.attack)].get_color() if band.attack in names else "tab:blue"
            ax.fill_between(
                band.fpr,
                np.maximum(band.low, lo),
                np.maximum(band.high, lo),
                color=color,
                alpha=0.2,
                linewidth=0,
                label=f"{band.attack}: 95% band",
            )
        ax.plot([lo, 1.0], [lo, 1.0], linestyle="--", color="grey", linewidth=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, 1.0)
        ax.set_ylim(lo, 1.0)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.15)
        # beside the axes: inside, it would hide the low-FPR corner the log-log plot exists to show
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


@dataclass(frozen=True)
class RocBand:
    """Pointwise 95% bootstrap interval of one attack's TPR at each FPR of a grid."""

    attack: str
    fpr: np.ndarray
    low: np.ndarray
    high: np.ndarray


def roc_band(attack: str, scores: np.ndarray, is_member: np.ndarray, points: int = 40) -> RocBand:
    """The band of :func:`plot_roc`: TPR at ``points`` log-spaced FPRs from one false positive to 1, each with
    its stratified-bootstrap percentile interval (:func:`fedmia.audit.uncertainty.bootstrap_intervals`, the
    same resamples for every FPR). Pointwise, not simultaneous: each FPR's interval holds at 95% on its own."""
    n_non = int(np.count_nonzero(~np.asarray(is_member, dtype=bool)))
    grid = np.unique(np.geomspace(1.0 / max(n_non, 1), 1.0, points))
    ci = bootstrap_intervals(scores, is_member, grid.tolist())
    keep = [str(g) for g in grid if ci.tpr_at_fpr[str(g)] is not None]
    fpr = np.array([float(k) for k in keep])
    low = np.array([ci.tpr_at_fpr[k][0] for k in keep])  # type: ignore[index]
    high = np.array([ci.tpr_at_fpr[k][1] for k in keep])  # type: ignore[index]
    return RocBand(attack, fpr, low, high)


def plot_metric_over_rounds(
    series: Mapping[str, Sequence[float | None]],
    path: str | Path,
    title: str,
    ylabel: str,
    rounds: Sequence[int] | None = None,
) -> Path:
    """Save a per-round line plot, one line per series; ``None`` values (unresolvable) are skipped.

    ``rounds`` gives the x values (default 1, 2, ...), shared by all series of equal length.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    try:
        for name, values in series.items():
            xs = list(rounds) if rounds is not None else list(range(1, len(values) + 1))
            if len(xs) != len(values):
                raise ValueError(f"series {name!r} has {len(values)} values but {len(xs)} rounds")
            points = [(x, float(v)) for x, v in zip(xs, values, strict=True) if v is not None]
            if points:
                px, py = zip(*points, strict=True)
                ax.plot(px, py, marker="o", markersize=3, linewidth=1.3, label=name)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.4)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def _err(value: object, interval: object) -> list[list[float]] | None:
    """matplotlib's asymmetric error ``[[below], [above]]`` of an interval around ``value``; None without one."""
    if not isinstance(interval, list | tuple) or len(interval) != 2 or not isinstance(value, int | float):
        return None
    return [[max(float(value) - float(interval[0]), 0.0)], [max(float(interval[1]) - float(value), 0.0)]]


def plot_privacy_utility(rows: Sequence[Mapping[str, object]], path: str | Path, title: str) -> Path:
    """The privacy-utility figure of a sweep for one party: test accuracy (x) against the best attack's
    TPR at 1% FPR (top row) and AUC (bottom row), one marker per sweep point, one column per setting
    (centralized and federated side by side, sharing axes). ``rows`` carry ``setting``, ``label``,
    ``test_accuracy``, ``best_tpr_at_1pct`` and ``best_auc``; a point without a value is not drawn.
    Chance lines: TPR = 1% and AUC = 0.5. Error bars where the rows carry intervals: ``<key>_ci`` on both
    axes (``test_accuracy_ci``: Wilson over the test records; the leakage: the verdict's bootstrap interval).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = list(dict.fromkeys(str(r["setting"]) for r in rows))
    labels = list(dict.fromkeys(str(r["label"]) for r in rows))
    markers = "osD^vP*Xhp<>"
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    fig, axes = plt.subplots(
        2, max(1, len(settings)), figsize=(4.2 * max(1, len(settings)) + 2.5, 7.0), squeeze=False, sharex=True
    )
    try:
        for col, setting in enumerate(settings):
            for row, (key, ylabel, chance) in enumerate(
                (("best_tpr_at_1pct", "best TPR at 1% FPR", 0.01), ("best_auc", "best AUC", 0.5))
            ):
                ax = axes[row][col]
                ax.axhline(chance, color="grey", linestyle="--", linewidth=0.8)
                for r in rows:
                    x, y = r.get("test_accuracy"), r.get(key)
                    if r["setting"] != setting or x is None or y is None:
                        continue
                    i = labels.index(str(r["label"]))
                    xerr, yerr = _err(x, r.get("test_accuracy_ci")), _err(y, r.get(f"{key}_ci"))
                    if xerr is not None or yerr is not None:
                        ax.errorbar(
                            [x], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor=cmap(i % cmap.N), alpha=0.6, lw=1
                        )
                    ax.scatter(
                        [x], [y], marker=markers[i % len(markers)], color=cmap(i % cmap.N), s=46, label=str(r["label"])
                    )
                ax.set_ylabel(ylabel)
                ax.grid(True, alpha=0.4)
                if row == 0:
                    ax.set_title(setting)
                else:
                    ax.set_xlabel("test accuracy")
        handles = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, h)
        if handles:
            fig.legend(
                list(handles.values()), list(handles), fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 0.95)
            )
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
