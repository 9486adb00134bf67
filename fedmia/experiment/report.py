"""Human-readable outputs: the result table (terminal and Markdown), figures, the run directory."""

from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedmia.audit import plot_metric_over_rounds, plot_roc
from fedmia.audit.plots import RocBand, roc_band
from fedmia.experiment import document
from fedmia.experiment.checkpoint import CHECKPOINTS
from fedmia.experiment.config import ExperimentConfig
from fedmia.experiment.document import Block, Box, Bullets, Figure, Heading, Paragraph, TableBlock, Verdicts, fmt_ci
from fedmia.experiment.exposed import exposure_blocks
from fedmia.experiment.results import Results
from fedmia.experiment.rundir import RunDir
from fedmia.experiment.verdict import HOW_TO_READ_TITLE, best_row, how_to_read, verdict_lines

BASE_COLUMNS = ("setting", "party", "attack", "AUC", "TPR@0.1%FPR", "TPR@1%FPR", "adv")
NUMERIC = ("AUC", "TPR@0.1%FPR", "TPR@1%FPR", "adv", "test acc")


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


CONFIDENCE_SUFFIX = "_confidence"  # "<key>_confidence": the confidence of the bound in "<key>", not a column


def epsilon_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The rows' scalar ε columns (any key naming "epsilon" with a number or null, but not a
    ``<key>_confidence`` qualifier), in first-seen order: the table shows whichever ε estimate or bound
    the metrics rows carry, under its own key."""
    keys: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            scalar = v is None or (isinstance(v, int | float) and not isinstance(v, bool))
            if "epsilon" in k and scalar and not k.endswith(CONFIDENCE_SUFFIX):
                keys[k] = None
    return list(keys)


def epsilon_header(rows: list[dict[str, Any]], key: str) -> str:
    """``key``, with its confidence when the rows carry one ``<key>_confidence`` value ("epsilon_lb (95%)"), else
    with its kind when they carry one ``<key>_kind`` ("epsilon_estimate (one run, not a bound)")."""
    levels = {r.get(key + CONFIDENCE_SUFFIX) for r in rows} - {None}
    kinds = {r.get(key + "_kind") for r in rows} - {None}
    return f"{key} ({levels.pop():.0%})" if len(levels) == 1 else f"{key} ({kinds.pop()})" if len(kinds) == 1 else key


def columns(results: Results) -> tuple[str, ...]:
    eps = [epsilon_header(results.rows, k) for k in epsilon_keys(results.rows)]
    return (*BASE_COLUMNS, *eps, "test acc")


def table_rows(results: Results) -> list[tuple[str, ...]]:
    eps = epsilon_keys(results.rows)
    rows: list[tuple[str, ...]] = []
    for r in results.rows:
        util = results.utility.get(r["setting"], {})
        tpr, tpr_ci = r["tpr_at_fpr"], r.get("tpr_at_fpr_ci") or {}
        rows.append(
            (
                r["setting"],
                r["party"],
                r["attack"],
                fmt_ci(r["auc"], r.get("auc_ci")),
                fmt_ci(tpr.get("0.001"), tpr_ci.get("0.001")),
                fmt_ci(tpr.get("0.01"), tpr_ci.get("0.01")),
                _fmt(r["advantage"]),
                *(_fmt(r.get(k), 2) for k in eps),
                _fmt(util.get("test_accuracy")),
            )
        )
    return rows


def rich_table(results: Results, title: str) -> Table:
    table = Table(title=title)
    for c in columns(results):
        text = c in ("setting", "party", "attack")
        table.add_column(c, justify="left" if text else "right", no_wrap=c in ("AUC", "TPR@0.1%FPR", "TPR@1%FPR"))
    for row in table_rows(results):
        table.add_row(*row)
    return table


def metrics_table(results: Results) -> TableBlock:
    """The full table of the reports (Markdown and HTML); the terminal's is :func:`rich_table`."""
    cols = columns(results)
    return TableBlock(cols, table_rows(results), numeric=[c for c in cols if c in NUMERIC or "epsilon" in c])


def markdown_table(results: Results) -> str:
    table = metrics_table(results)
    return document.markdown_table(table.columns, table.rows)


def defense_lines(cfg: ExperimentConfig, results: Results) -> list[str]:
    """The run's defenses and what each black-box party's query interface returned (with its query count)."""
    lines = []
    training = [d.name for d, obj in zip(cfg.defenses, cfg.defense_objects(), strict=True) if obj.output is None]
    if training:
        lines.append(
            f"training-time defenses (target, every FL client, the attacker's references): {', '.join(training)}"
        )
    for who, q in results.extra.get("queries", {}).items():
        lines.append(f"{who} queried the released model through: {q['interface']} ({q['queries_to_target']} queries)")
    return lines + query_lines(results)


def query_lines(results: Results) -> list[str]:
    """One line per (setting, party): the queries to the released model each attack relies on (and the
    distinct dataset records among them), or that the party holds the weights; then the monitor's result."""
    lines = []
    for who, by_attack in results.extra.get("queries_by_attack", {}).items():
        if not by_attack:
            continue
        if all(a.get("applicable") is False for a in by_attack.values()):
            lines.append(f"queries by attack ({who}): none (holds the weights; not applicable)")
            continue
        parts = [
            f"{name} {a['queries']} ({a['records']} records"
            + (f", {a['synthetic']} synthetic" if a["synthetic"] else "")
            + (", over budget)" if a.get("skipped") and a["queries"] else ")")
            for name, a in by_attack.items()
            if a.get("applicable", True)
        ]
        lines.append(f"queries by attack ({who}): " + ", ".join(parts))
    for who, m in results.extra.get("query_monitor", {}).items():
        lines.append(
            f"query monitor ({who}): precision {_fmt(m['precision'])}, recall {_fmt(m['recall'])} over "
            f"{m['attack_chunks']} attack and {m['benign_chunks']} benign chunks of {m['chunk']} queries "
            f"(flag: {m['rule']})"
        )
    return lines


def utility_lines(results: Results) -> list[str]:
    out = []
    for setting, u in results.utility.items():
        eps = u.get("epsilon")
        out.append(
            f"{setting}: train acc {_fmt(u.get('train_accuracy'))}, "
            f"test acc {fmt_ci(u.get('test_accuracy'), u.get('test_accuracy_ci'))}, "
            f"gap {_fmt(u.get('generalization_gap'))}" + ("" if eps is None else f", epsilon {eps:.2f}")
        )
    return out


def _band(results: Results, frame: Any, setting: str, party: str) -> RocBand | None:
    """The 95% band of the party's best attack by TPR at 1% FPR (by AUC where 1% is unresolvable)."""
    rows = [r for r in results.rows if r["setting"] == setting and r["party"] == party]
    if not rows:
        return None
    best = best_row(rows) or max(rows, key=lambda r: r["auc"])
    sel = frame[(frame["setting"] == setting) & (frame["party"] == party) & (frame["attack"] == best["attack"])]
    if not len(sel):
        return None
    return roc_band(str(best["attack"]), sel["score"].to_numpy(), sel["is_member"].to_numpy().astype(bool))


def write_run(cfg: ExperimentConfig, results: Results, run: RunDir, seconds: float) -> Path:
    """Write the final outputs, each atomically: scores, figures, report.md and report.html, metrics.json
    last; then drop the checkpoints."""
    results.extra["wall_seconds"] = seconds
    run.write_with("scores.parquet", lambda p: results.scores_frame().to_parquet(p, index=False))
    if cfg.audit.query_log:
        run.write_with("queries.parquet", lambda p: results.queries_frame().to_parquet(p, index=False))
    figures: list[Figure] = []
    frame = results.scores_frame()
    for (setting, party), curves in results.curves.items():
        title = f"{cfg.name}: {setting} / {party} (log-log ROC)"
        name = f"roc-{setting}-{party}.png"
        band = _band(results, frame, setting, party)
        run.write_with(name, functools.partial(plot_roc, curves, title=title, band=band))
        shaded = "" if band is None else f", with a 95% bootstrap band around {band.attack}"
        figures.append(Figure(name, f"{setting} / {party}: log-log ROC of every attack{shaded}"))
    for setting, rows in results.extra.get("rounds", {}).items():
        series = {"test accuracy": [r.get("test_accuracy") for r in rows]}
        plot = functools.partial(
            plot_metric_over_rounds, series, title=f"{cfg.name}: {setting}", ylabel="test accuracy"
        )
        run.write_with(f"rounds-{setting}.png", plot)
        figures.append(Figure(f"rounds-{setting}.png", f"{setting}: test accuracy by round"))
    for party, series in results.extra.get("tpr_at_1pct_by_round", {}).items():
        if series:
            title = f"{cfg.name}: {party}, leakage by round"
            plot = functools.partial(plot_metric_over_rounds, series, title=title, ylabel="TPR at 1% FPR")
            run.write_with(f"leakage-by-round-{party}.png", plot)
            figures.append(Figure(f"leakage-by-round-{party}.png", f"{party}: TPR at 1% FPR by round"))
    metrics = results.metrics()
    blocks = run_blocks(cfg, results, seconds, figures, verdicts=metrics["verdicts"])
    run.write_text("report.md", document.to_markdown(blocks))
    run.write_text("report.html", document.to_html(f"fedmia run: {cfg.name}", blocks, run.path))
    run.write_json("metrics.json", metrics)  # its presence marks a finished run
    run.clear_failed()
    shutil.rmtree(run.path / CHECKPOINTS, ignore_errors=True)
    return run.path


def run_blocks(
    cfg: ExperimentConfig,
    results: Results,
    seconds: float,
    figures: list[Figure],
    verdicts: list[dict[str, Any]] | None = None,
) -> list[Block]:
    """The run's report, verdict first: the one source of report.md and report.html. ``verdicts``: metrics.json's
    (computed from the results when not given)."""
    verdicts = verdicts if verdicts is not None else [v.to_dict() for v in results.verdicts()]
    blocks: list[Block] = [
        Heading(f"fedmia run: {cfg.name}", 1),
        Verdicts(verdict_lines(verdicts)),
        Paragraph(
            f"Finished {time.strftime('%Y-%m-%d %H:%M:%S')} in {seconds:.1f} s. Dataset `{cfg.data.dataset}`, "
            f"model `{cfg.model.name}`, {cfg.audit.references} reference models, seed {cfg.seed}."
        ),
        Heading("Utility"),
        Bullets(utility_lines(results) + defense_lines(cfg, results)),
        Heading("Membership inference"),
        Paragraph(
            "Higher AUC / TPR at low FPR = more leakage. `n/a`: too few non-members to resolve that FPR. "
            "[low, high]: 95% bootstrap interval over the attacked records."
        ),
        metrics_table(results),
        Bullets(extra_lines(results) + [f"skipped {line}" for line in skipped_lines(results)]),
        Box(HOW_TO_READ_TITLE, how_to_read(r["n_nonmembers"] for r in results.rows if "n_nonmembers" in r)),
        *exposure_blocks(results.extra.get("exposure")),
    ]
    if figures:
        blocks += [Heading("Figures"), *figures]
    return blocks


def rounds_table(setting: str, rows: list[dict[str, Any]]) -> Table:
    """Per-round global test accuracy/loss, mean client train loss, failures and epsilon."""
    table = Table(title=f"{setting}: per round")
    for c in ("round", "test acc", "test loss", "client train loss (mean)", "failures", "epsilon"):
        table.add_column(c, justify="right")
    for r in rows:
        losses = [v for v in (r.get("client_train_loss") or {}).values() if v is not None]
        eps = r.get("server_epsilon", r.get("max_client_epsilon"))
        table.add_row(
            str(r["round"]),
            _fmt(r.get("test_accuracy")),
            _fmt(r.get("test_loss")),
            _fmt(sum(losses) / len(losses) if losses else None),
            str(r.get("failures", 0)),
            _fmt(eps, 2),
        )
    return table


def extra_lines(results: Results) -> list[str]:
    lines = []
    si = results.extra.get("source_inference")
    if si:
        lines.append(
            f"source inference (server): accuracy {si['accuracy']:.3f} vs chance {si['chance']:.3f} "
            f"(the largest client's share) over {si['n_records']} member records"
        )
    for who, d in results.extra.get("reference_design", {}).items():
        if d.get("references"):
            lines.append(
                f"references of {who}: K={d['references']}, IN per candidate min {d['in_min']} / median "
                f"{d['in_median']:g}, OUT min {d['out_min']} / median {d['out_median']:g}; "
                f"trained: {d.get('recipe', '?')}"
                + (f", by {d['training_function']}" if d.get("training_function") else "")
            )
    return lines


def skipped_lines(results: Results) -> list[str]:
    """One line per (setting, party): the attacks it could not run, grouped by reason."""
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for s in results.skipped:
        reason = s["why"].split(" needs ", 1)[-1]
        grouped.setdefault((s["setting"], s["party"], reason), []).append(s["attack"])
    return [f"{', '.join(a)} ({st}/{pa}): needs {why}" for (st, pa, why), a in grouped.items()]


def print_summary(console: Console, cfg: ExperimentConfig, results: Results, run_dir: Path, seconds: float) -> None:
    for setting, rows in results.extra.get("rounds", {}).items():
        console.print(rounds_table(setting, rows))
    for line in utility_lines(results) + defense_lines(cfg, results):
        console.print(line, highlight=False)
    verdicts = json.loads((run_dir / "metrics.json").read_text())["verdicts"]  # as write_run computed them
    for line in verdict_lines(verdicts):
        console.print(f"[bold]verdict[/] {escape(line)}", highlight=False)
    console.print(rich_table(results, f"{cfg.name}: membership inference"))
    for line in extra_lines(results):
        console.print(line)
    for line in skipped_lines(results):
        console.print(f"[yellow]skipped[/] {line}", highlight=False)
    console.print(f"run directory: {run_dir}  ({seconds:.1f} s)")
