"""fedmia as a package (issue 28): one version, supported ranges in pyproject.toml whose lower bounds are the
tested pins of constraints.txt, the Dockerfile's torch at that pin, and a changelog entry for the version.
(.ci/wheel.sh builds and installs the wheel itself; this module only reads files.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import fedmia

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def pins() -> dict[str, Version]:
    out: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt: not a name==version pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in out, f"constraints.txt pins {name} twice"
        out[name] = Version(match[2])
    return out


def test_the_version_has_one_source() -> None:
    """pyproject.toml's static [project] version (`flwr run .` requires it there) is what fedmia reports."""
    project = PYPROJECT["project"]
    assert "version" not in project.get("dynamic", [])
    assert fedmia.__version__ == project["version"]  # through the installed metadata
    assert str(Version(fedmia.__version__)) == fedmia.__version__  # PEP 440, normalised


def test_every_dependency_is_a_range_whose_lower_bound_is_the_tested_pin() -> None:
    """Runtime dependencies: a range (never ==), pinned in constraints.txt at a version inside the range, and
    the lower bound is that tested release (to the lower bound's precision: >=2.13 for 2.13.0)."""
    pinned = pins()
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} has no pin in constraints.txt"
        assert pinned[name] in req.specifier, f"constraints.txt's {name}=={pinned[name]} is outside {spec!r}"
        ops = {s.operator for s in req.specifier}
        assert "==" not in ops and ">=" in ops, f"{spec!r}: give a range with a tested lower bound"
        (lower,) = [Version(s.version) for s in req.specifier if s.operator == ">="]
        tested = pinned[name].release[: len(lower.release)]
        assert lower.release == tested, f"{spec!r}: the lower bound should be the tested {pinned[name]}"


def test_the_extras_are_pinned_too() -> None:
    pinned = pins()
    for spec in PYPROJECT["project"]["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        assert pinned.get(canonicalize_name(req.name)) in req.specifier, f"{spec!r} vs constraints.txt"


def test_the_container_installs_the_pinned_torch_and_applies_the_constraints() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    (torch,) = re.findall(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, flags=re.M)
    assert Version(torch) == pins()["torch"]
    assert "-c /src/constraints.txt" in dockerfile
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()


def test_the_changelog_has_an_unreleased_section_and_one_for_this_version() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert headings[0] == "Unreleased", headings
    assert fedmia.__version__ in headings, f"no '## [{fedmia.__version__}]' section in CHANGELOG.md"
