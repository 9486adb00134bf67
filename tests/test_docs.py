"""The README is the front page: short, and every relative link in it points at a file of the repository
(the documentation site, `make docs`, checks its own links with `mkdocs build --strict`). No network."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# [text](target) and ![alt](target), with an optional "title"; reference definitions [id]: target
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)


def relative_links(markdown: str) -> list[str]:
    """Every link target that is not a URL or an anchor of the same page, without its #fragment."""
    code_free = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)  # links inside code blocks are text
    targets = _INLINE.findall(code_free) + _REFERENCE.findall(code_free)
    out = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # https:, mailto:, ... or an anchor on the same page
        out.append(target.split("#", 1)[0])
    return out


def test_relative_links_finds_links_and_skips_urls_anchors_and_code() -> None:
    text = (
        '[a](docs/a.md) ![img](docs/img/x.png "t") [b](docs/b.md#part) [u](https://x.org/y.md) [c](#here)\n'
        "```\n[not](a/link.md)\n```\n[ref]: docs/ref.md\n"
    )
    assert relative_links(text) == ["docs/a.md", "docs/img/x.png", "docs/b.md", "docs/ref.md"]


def test_the_readme_is_a_front_page_of_at_most_160_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; move sections into docs/ (the site)"


def test_every_relative_link_in_the_readme_resolves_to_a_file() -> None:
    links = relative_links(README.read_text(encoding="utf-8"))
    assert links, "the README links into the documentation"
    missing = [link for link in links if not (README.parent / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def _nav_files(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def test_the_site_navigation_names_every_page_and_only_pages_that_exist() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_files(config["nav"])
    docs = REPO / config.get("docs_dir", "docs")
    assert not [p for p in nav if not (docs / p).is_file()], "mkdocs.yml's nav names pages that do not exist"
    pages = {p.relative_to(docs).as_posix() for p in docs.rglob("*.md")}
    assert sorted(pages - set(nav)) == [], "pages in docs/ that the site's navigation leaves out"


def test_the_docs_extra_is_pinned_in_the_constraints_within_its_ranges() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    pinned = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[canonicalize_name(name)] = version
    for spec in pyproject["project"]["optional-dependencies"]["docs"]:
        req = Requirement(spec)
        assert pinned.get(canonicalize_name(req.name)) in req.specifier, f"{spec!r} vs constraints.txt"
        for extra in req.extras:  # mkdocstrings[python] -> mkdocstrings-python
            assert canonicalize_name(f"{req.name}-{extra}") in pinned, f"{spec!r}: the extra's package is not pinned"
