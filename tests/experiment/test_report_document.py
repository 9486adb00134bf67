"""report.md and report.html from one list of blocks: the verdict first, the same table in both, the HTML
self-contained (figures as data: URIs, no external resource, no script) and every run string escaped."""

from __future__ import annotations

import base64
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fedmia.experiment import document
from fedmia.experiment.config import load_config
from fedmia.experiment.document import Box, Bullets, Figure, Heading, Paragraph, TableBlock, Verdicts
from fedmia.experiment.report import epsilon_header, epsilon_keys, metrics_table, write_run
from fedmia.experiment.results import Results
from fedmia.experiment.rundir import RunDir
from fedmia.experiment.verdict import verdict_lines
from fedmia.threats import AttackOutcome

REPO = Path(__file__).resolve().parents[2]
EVIL = "<script>alert('x')</script>&"


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text outside tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(text: str) -> Tags:
    p = Tags()
    p.feed(text)
    return p


def _scores(k: int) -> tuple[np.ndarray, np.ndarray]:
    """200 non-members score 0..199; k of 200 members score above them all: TPR at 1% FPR = k/200."""
    scores = np.concatenate([np.arange(200.0), 1000.0 + np.arange(k), -1.0 - np.arange(200 - k)])
    return scores, np.r_[np.zeros(200, bool), np.ones(200, bool)]


@pytest.fixture
def results() -> Results:
    r = Results()
    labels = np.zeros(400, dtype=np.int64)
    records = np.arange(400)
    for setting, party, ks in (
        ("centralized", "outsider", {"loss": 4, "rmia": 8}),
        ("federated", "server", {"fedmia": 20, EVIL: 2}),
    ):
        outcomes = []
        for attack, k in ks.items():
            scores, member = _scores(k)
            outcomes.append(AttackOutcome(attack, scores, 0.1))
        r.audit(setting, party, outcomes, records, member, labels)
        r.utility[setting] = {"train_accuracy": 1.0, "test_accuracy": 0.9, "generalization_gap": 0.1}
    return r


def test_run_report_opens_with_the_verdict_in_markdown_and_html(results: Results, tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    run = RunDir(tmp_path / "run")
    write_run(cfg, results, run, seconds=1.0)
    md = (run.path / "report.md").read_text()
    page = (run.path / "report.html").read_text()
    lines = verdict_lines(results.verdicts())
    # k members above every non-member, the rest below them all: the cross-fitted TPR at 1% FPR is k/200
    # whatever the split (tests/experiment/test_verdict.py works it out), and the server's 20 > 8 is real
    assert len(lines) == 2
    assert lines[0].startswith("centralized / outsider: rmia finds TPR 0.040 [")
    assert lines[0].endswith("at 1% FPR; the baseline for the other parties")
    assert lines[1].startswith("federated / server: fedmia finds TPR 0.100 [")
    assert "; higher than the centralized outsider (difference +0.060 [" in lines[1]
    assert json.loads((run.path / "metrics.json").read_text())["verdicts"][1]["text"] == lines[1]
    # Markdown: title, then the verdict, before everything else
    assert md.startswith("# fedmia run: quickstart\n\n## Verdict")
    assert md.index(lines[1]) < md.index("## Utility") < md.index("| setting | party | attack |")
    # HTML: the same lines, in the verdict section, before the table
    section = re.search(r'<section id="verdict">(.*?)</section>', page, re.S)
    assert section is not None
    assert [html.unescape(x) for x in re.findall(r'<li class="verdict-line">(.*?)</li>', section.group(1))] == lines
    assert page.index('id="verdict"') < page.index("<table>")
    assert "How to read TPR at low FPR" in page and "Carlini et al." in page
    assert not [p.name for p in run.path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_html_is_self_contained_and_escapes_run_strings(results: Results, tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    run = RunDir(tmp_path / "run")
    write_run(cfg, results, run, seconds=1.0)
    page = (run.path / "report.html").read_text()
    parsed = parse(page)
    tags = [t for t, _ in parsed.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert not re.search(r"url\(|@import|https?://", page.split("</style>")[0])  # the style loads nothing
    images = [a for t, a in parsed.tags if t == "img"]
    assert len(images) == len(results.curves) == 2
    for (setting, party), img in zip(results.curves, images, strict=True):
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (run.path / f"roc-{setting}-{party}.png").read_bytes()
    # the attack name with markup is text in the table, never a tag
    assert EVIL in "".join(parsed.text)
    assert html.escape(EVIL) in page
    md = (run.path / "report.md").read_text()
    assert f"| federated | server | {EVIL} |" in md


def test_markdown_and_html_tables_hold_the_same_cells() -> None:
    table = TableBlock(("name", "AUC"), [("a|b", "0.500"), ("<i>", "n/a")], numeric=("AUC",))
    md = document.to_markdown([table])
    assert md.splitlines() == ["| name | AUC |", "|---|---|", "| a\\|b | 0.500 |", "| <i> | n/a |"]
    page = document.to_html("t", [table], Path("."))
    cells = re.findall(r"<td[^>]*>(.*?)</td>", page)
    assert [html.unescape(c) for c in cells] == ["a|b", "0.500", "<i>", "n/a"]
    assert '<td class="num">0.500</td>' in page


def test_every_block_renders_in_both_formats(tmp_path: Path) -> None:
    png = tmp_path / "f.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    blocks = [
        Heading("Title `x`", 1),
        Verdicts(["c / p: a finds TPR 0.100"]),
        Paragraph("text with `code` & <b>"),
        Bullets(["one", "two"]),
        Box("Box", ["first.", "second."]),
        Figure("f.png", "a figure"),
        Figure("missing.png", "gone"),
        document.Links([("point 0", "p00/report.html")]),
    ]
    md = document.to_markdown(blocks)
    assert md.split("\n\n")[:3] == ["# Title `x`", "## " + document.VERDICT_TITLE, "- c / p: a finds TPR 0.100"]
    assert "- one\n- two" in md and "> **Box**\n>\n> first." in md and "![a figure](f.png)" in md
    assert "- [point 0](p00/report.html)" in md
    page = document.to_html("T", blocks, tmp_path)
    assert "<h1>Title <code>x</code></h1>" in page
    assert "<p>text with <code>code</code> &amp; &lt;b&gt;</p>" in page
    assert 'src="data:image/png;base64,' + base64.b64encode(png.read_bytes()).decode() + '"' in page
    assert "(figure missing.png is missing)" in page
    assert '<a href="p00/report.html">point 0</a>' in page


def test_the_table_shows_whatever_epsilon_columns_the_rows_carry() -> None:
    rows = [{"auc": 0.5, "empirical_epsilon": 0.7, "tpr_at_fpr": {}}, {"epsilon_lb": None, "epsilon_note": "x"}]
    assert epsilon_keys(rows) == ["empirical_epsilon", "epsilon_lb"]  # scalar ones only, first-seen order
    # a bound with its confidence: one column, the confidence in its header
    bound = [{"epsilon_lb": 1.25, "epsilon_lb_confidence": 0.95}, {"epsilon_lb": 0.5, "epsilon_lb_confidence": 0.95}]
    assert epsilon_keys(bound) == ["epsilon_lb"]
    assert epsilon_header(bound, "epsilon_lb") == "epsilon_lb (95%)"
    assert epsilon_header(rows, "empirical_epsilon") == "empirical_epsilon"
    # an estimate with its kind: the kind in its header, never a confidence (the kind is not a column)
    est = [{"epsilon_estimate": 0.5, "epsilon_estimate_kind": "one run, not a bound"}]
    assert epsilon_keys(est) == ["epsilon_estimate"]
    assert epsilon_header(est, "epsilon_estimate") == "epsilon_estimate (one run, not a bound)"


def test_epsilon_estimate_column_in_the_report_table(results: Results) -> None:
    for i, r in enumerate(results.rows):
        r.pop("empirical_epsilon", None)
        r["epsilon_estimate"], r["epsilon_estimate_kind"] = 0.25 * i, "one run, not a bound"
    table = metrics_table(results)
    header = "epsilon_estimate (one run, not a bound)"
    assert table.columns[7] == header and header in table.numeric and len(table.columns) == 9
    assert [row[7] for row in table.rows] == ["0.00", "0.25", "0.50", "0.75"]
