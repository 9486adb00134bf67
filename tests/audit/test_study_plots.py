"""The study figure: one panel per metric (AUC, TPR at 1% FPR, test accuracy), written as a PNG."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from fedmia.audit.study_plots import PANELS, plot_study


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_plot_study_writes_one_panel_per_metric(tmp_path: Path) -> None:
    rows = [
        {
            "x": x,
            "setting": "centralized",
            "party": "outsider",
            "best_auc": 0.5 + x / 100,
            "best_tpr_at_1pct": None,
            "test_accuracy": 0.9,
        }
        for x in (2, 10, 100)
    ]
    out = plot_study(rows, tmp_path / "sub" / "s.png", "t", "classes", logx=True)
    w, h = _png_size(out)
    assert (w, h) == (round(4.2 * len(PANELS) * 80), round(3.6 * 80))


def test_plot_study_needs_x(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        plot_study([{"setting": "s", "party": "p", "best_auc": 0.5}], tmp_path / "s.png", "t", "x")
