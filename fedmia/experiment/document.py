"""A report as a list of blocks, rendered to Markdown (``report.md``) and to one self-contained HTML
file (``report.html``): both come from the same blocks, so they say the same thing.

The HTML needs nothing outside itself: the style is inline, there is no script, and figures are embedded
as base64 PNG ``data:`` URIs. Every string from the run (names, attack names, config values) is escaped
with :func:`html.escape`; a text's ``backticks`` become ``<code>``, as in Markdown.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def fmt_ci(value: Any, interval: Any, digits: int = 3) -> str:
    """``0.076 [0.052, 0.101]``: a value with its 95% interval; ``n/a`` for no value, the bare value where no
    interval was computed."""
    if value is None:
        return "n/a"
    if not interval:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclass(frozen=True)
class Verdicts:
    """The verdict lines (one per setting and party); the HTML gives them ``id="verdict"``."""

    lines: Sequence[str]


@dataclass(frozen=True)
class TableBlock:
    columns: Sequence[str]
    rows: Sequence[Sequence[str]]
    numeric: Sequence[str] = ()  # columns aligned right


@dataclass(frozen=True)
class Figure:
    """A PNG beside the report: linked from Markdown, embedded in HTML."""

    file: str  # relative to the report's directory
    caption: str


@dataclass(frozen=True)
class Box:
    """A boxed explanation (the HTML's ``<aside>``; a quoted section in Markdown)."""

    title: str
    paragraphs: Sequence[str]


@dataclass(frozen=True)
class Links:
    """Links to other reports (a sweep's points): (text, relative path)."""

    items: Sequence[tuple[str, str]]


VERDICT_TITLE = "Verdict: the best attack per party by TPR at 1% FPR"

Block = Heading | Paragraph | Bullets | Verdicts | TableBlock | Figure | Box | Links


# --- Markdown -------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(map(_md_cell, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _md_block(block: Block) -> list[str]:
    match block:
        case Heading(text, level):
            return ["#" * level + " " + text]
        case Paragraph(text):
            return [text]
        case Bullets(items):
            return [f"- {item}" for item in items]
        case Verdicts(items):
            return ["## " + VERDICT_TITLE, "\n".join(f"- {item}" for item in items)]
        case TableBlock(columns, rows, _):
            return [markdown_table(columns, rows)]
        case Figure(file, caption):
            return [f"![{caption}]({file})"]
        case Box(title, paragraphs):
            quoted = [f"> **{title}**"]
            for p in paragraphs:
                quoted += [">", f"> {p}"]
            return ["\n".join(quoted)]
        case Links(items):
            return [f"- [{text}]({path})" for text, path in items]
    raise TypeError(f"not a report block: {block!r}")


def to_markdown(blocks: Sequence[Block]) -> str:
    """Blocks separated by blank lines (list items stay together)."""
    parts: list[str] = []
    for block in blocks:
        lines = _md_block(block)
        parts.append("\n".join(lines) if isinstance(block, Bullets | Links) else "\n\n".join(lines))
    return "\n\n".join(p for p in parts if p) + "\n"


# --- HTML -----------------------------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; max-width: 1100px;
  margin: 1.5em auto; padding: 0 1em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: .3em; } h2 { font-size: 1.25em; margin-top: 1.6em;
  border-bottom: 1px solid #ddd; padding-bottom: .2em; }
code { font: .92em ui-monospace, SFMono-Regular, Menlo, monospace; background: #f3f3f3; padding: 0 .25em; }
#verdict { background: #fff8e6; border-left: 5px solid #c77d00; padding: .5em 1em; }
#verdict li { margin: .25em 0; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
th, td { border: 1px solid #d0d0d0; padding: .2em .55em; text-align: left; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
aside { border: 1px solid #8a8a8a; background: #f4f4f4; padding: .4em 1em; margin: 1.2em 0; max-width: 820px; }
aside h2 { border: 0; margin-top: .4em; font-size: 1.1em; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: min(100%, 760px); height: auto; border: 1px solid #e2e2e2; }
figcaption { font-size: .85em; color: #555; }
"""


def _inline(text: str) -> str:
    """Escaped text, with `code` spans as in Markdown."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _png_data_uri(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _html_block(block: Block, base: Path) -> str:
    match block:
        case Heading(text, level):
            return f"<h{level}>{_inline(text)}</h{level}>"
        case Paragraph(text):
            return f"<p>{_inline(text)}</p>"
        case Bullets(items):
            return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>"
        case Verdicts(lines):
            items = "".join(f'<li class="verdict-line">{_inline(i)}</li>' for i in lines)
            return f'<section id="verdict"><h2>{VERDICT_TITLE}</h2><ul>{items}</ul></section>'
        case TableBlock(columns, rows, numeric):
            right = {i for i, c in enumerate(columns) if c in numeric}
            head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
            body = "".join(
                "<tr>"
                + "".join(
                    f'<td class="num">{html.escape(v)}</td>' if i in right else f"<td>{html.escape(v)}</td>"
                    for i, v in enumerate(row)
                )
                + "</tr>"
                for row in rows
            )
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        case Figure(file, caption):
            uri = _png_data_uri(base / file)
            if uri is None:
                return f"<p>(figure {html.escape(file)} is missing)</p>"
            cap = html.escape(caption)
            return f'<figure><img src="{uri}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'
        case Box(title, paragraphs):
            body = "".join(f"<p>{_inline(p)}</p>" for p in paragraphs)
            return f'<aside id="how-to-read"><h2>{_inline(title)}</h2>{body}</aside>'
        case Links(items):
            lis = "".join(f'<li><a href="{html.escape(path)}">{html.escape(t)}</a></li>' for t, path in items)
            return f"<ul>{lis}</ul>"
    raise TypeError(f"not a report block: {block!r}")


def to_html(title: str, blocks: Sequence[Block], base: Path) -> str:
    """One self-contained page; figures are read from ``base`` (the report's directory) and embedded."""
    body = "\n".join(_html_block(b, base) for b in blocks)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
