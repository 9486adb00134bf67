"""Tests for fedmia.audit.plots: the figures are real PNGs that matplotlib reads back."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from fedmia.audit.metrics import evaluate_scores, roc_points
from fedmia.audit.plots import plot_metric_over_rounds, plot_roc


def _read_png(path: Path) -> np.ndarray:
    assert path.exists() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
    assert float(image[..., :3].std()) > 0  # not a blank canvas
    return image


def test_plot_roc_writes_readable_png_with_zero_tpr_at_low_fpr(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    member = np.arange(3000) < 1000
    strong = rng.normal(size=3000) + 2.0 * member
    # weak attack: the highest-scoring records are all non-members, so TPR is 0 at the lowest FPRs
    weak = rng.normal(size=3000) + 0.2 * member
    weak[~member] += np.where(np.arange((~member).sum()) < 50, 10.0, 0.0)
    curves = {"strong": roc_points(strong, member), "weak": roc_points(weak, member)}
    assert curves["weak"][1][curves["weak"][0] <= 0.02].max() == 0.0  # precondition of this test
    n_open = len(plt.get_fignums())
    path = plot_roc(curves, tmp_path / "figs" / "roc.png", "ROC", metrics={"strong": evaluate_scores(strong, member)})
    image = _read_png(path)
    assert image.shape[0] > 300 and image.shape[1] > 300  # dpi ~150 on a ~5 inch figure
    assert len(plt.get_fignums()) == n_open  # figure closed after saving


def test_plot_roc_rejects_mismatched_curve(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        plot_roc({"bad": (np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0]))}, tmp_path / "roc.png", "bad")
    assert plt.get_fignums() == []


def test_plot_metric_over_rounds_skips_none(tmp_path: Path) -> None:
    series: dict[str, list[float | None]] = {
        "server": [None, 0.02, 0.05, None, 0.11],
        "client": [0.01, None, 0.03, 0.04, 0.06],
        "unresolvable": [None, None, None, None, None],
    }
    path = plot_metric_over_rounds(series, tmp_path / "rounds.png", "TPR@1%FPR per round", "TPR@1%FPR")
    _read_png(path)
    with pytest.raises(ValueError, match="rounds"):
        plot_metric_over_rounds({"x": [0.1, 0.2]}, tmp_path / "bad.png", "t", "y", rounds=[1, 2, 3])


def test_roc_band_brackets_the_curve_at_every_fpr_of_its_grid(tmp_path: Path) -> None:
    """The band is the bootstrap interval of TPR at each grid FPR: it contains the ROC's own TPR there
    (a percentile interval of a statistic almost always contains the statistic; here every grid point does),
    starts at one false positive and stops at 1; plot_roc draws it as a shaded area labelled with the attack."""
    from fedmia.audit.plots import roc_band

    rng = np.random.default_rng(0)
    m = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    s = rng.normal(size=600) + m
    band = roc_band("a", s, m)
    assert band.fpr[0] >= 1 / 300 and band.fpr[-1] == 1.0 and (np.diff(band.fpr) > 0).all()
    point = evaluate_scores(s, m, fpr_levels=band.fpr.tolist(), intervals=False).tpr_at_fpr
    for f, lo, hi in zip(band.fpr, band.low, band.high, strict=True):
        assert lo <= point[str(f)] <= hi
    out = plot_roc({"a": roc_points(s, m)}, tmp_path / "roc.png", title="t", band=band)
    assert out.stat().st_size > 0


def test_privacy_utility_error_bars_are_the_intervals_around_each_point() -> None:
    from fedmia.audit.plots import _err

    assert _err(0.9, [0.85, 0.93]) == [[pytest.approx(0.05)], [pytest.approx(0.03)]]
    assert _err(0.9, None) is None and _err(None, [0.1, 0.2]) is None
