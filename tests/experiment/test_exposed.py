"""The run's "exposure" section: each party ranked by its best attack (the verdict's rule), the outlier
measure over the dataset's records, and the report block in Markdown and HTML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmia.audit.exposure import outlierness
from fedmia.data import Dataset
from fedmia.experiment import document
from fedmia.experiment.exposed import exposure_blocks, exposure_summary
from fedmia.experiment.results import Results
from fedmia.threats import AttackOutcome


def _dataset(n: int = 400, seed: int = 0) -> Dataset:
    g = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = (g.normal(size=(n, 3)) + 3 * y[:, None]).astype(np.float32)
    return Dataset("toy", x, y.astype(np.int64), 2)


def _results(data: Dataset) -> tuple[Results, np.ndarray, np.ndarray]:
    g = np.random.default_rng(1)
    records = np.arange(0, 400, 2) + 1  # 200 targets, all of class 1
    member = np.arange(200) < 100
    # "strong" separates members (resolvable TPR at 1% FPR with 100 non-members); "weak" is noise but has
    # one extreme score on record 399: it must not be the attack that ranks the records
    strong = member * 5.0 + g.normal(size=200)
    weak = g.normal(size=200)
    weak[-1] = 100.0
    r = Results()
    r.audit(
        "centralized",
        "outsider",
        [AttackOutcome("weak", weak, 0.0), AttackOutcome("strong", strong, 0.0)],
        records,
        member,
        data.y[records],
    )
    return r, records, strong


def test_summary_ranks_by_the_best_attack_and_measures_outliers() -> None:
    data = _dataset()
    r, records, strong = _results(data)
    ex = exposure_summary(r, data, k=4, neighbours=3)
    assert ex["neighbours"] == 3 and ex["top_k"] == 4
    (party,) = ex["parties"]
    assert party["attack"] == "strong" and party["chosen_by"] == "best TPR at 1% FPR"
    order = np.argsort(-strong, kind="stable")[:4]
    assert [e["record"] for e in party["top"]] == records[order].tolist()
    o = outlierness(data.x, data.y, records, k=3)
    assert [e["outlier"] for e in party["top"]] == pytest.approx(o[order].tolist())
    assert party["n_members"] == 100 and party["n_targets"] == 200


def test_summary_without_attacks_has_no_parties() -> None:
    assert exposure_summary(Results(), _dataset())["parties"] == []
    assert exposure_blocks({"parties": []}) == []


def test_exposure_block_renders_in_both_formats(tmp_path: Path) -> None:
    data = _dataset()
    r, records, strong = _results(data)
    blocks = exposure_blocks(exposure_summary(r, data))
    md = document.to_markdown(blocks)
    html = document.to_html("t", blocks, tmp_path)
    top = str(records[int(np.argmax(strong))])
    for text in (md, html):
        assert "Most exposed records" in text and "Spearman rho" in text
        assert f"| {top} |" in md and f">{top}<" in html
