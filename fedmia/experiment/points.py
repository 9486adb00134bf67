"""One point of a sweep or of a seeds run: a validated config, its directory name, and running it once
(or continuing it, or reusing it when it finished) into that directory."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from fedmia.errors import InputError, TrainingDivergedError
from fedmia.experiment.config import ExperimentConfig
from fedmia.experiment.execute import execute, prepare_run


@dataclass(frozen=True)
class Point:
    """One combination of grid values and its validated config."""

    index: int
    values: tuple[tuple[str, Any], ...]
    cfg: ExperimentConfig

    @property
    def label(self) -> str:
        """Human-readable: ``key=value, ...`` with values in YAML flow style."""
        return ", ".join(f"{k}={_compact(v)}" for k, v in self.values) or "(base config)"

    @property
    def dirname(self) -> str:
        text = "-".join(f"{k.split('.')[-1]}={_compact(v)}" for k, v in self.values)
        slug = re.sub(r"[^A-Za-z0-9_.=+,-]+", "_", re.sub(r"[][{}'\"]", "", text)).strip("_")[:80]
        return f"p{self.index:02d}-{slug}" if slug else f"p{self.index:02d}"


def _compact(value: Any) -> str:
    """A short rendering for labels and directory names: a ``{name, params}`` entry as
    ``name(k=v)``, a list as its items joined by ``+`` (``none`` when empty), anything else as YAML."""
    if isinstance(value, dict) and "name" in value and set(value) <= {"name", "params"}:
        params = value.get("params") or {}
        inner = ",".join(f"{k}={_compact(v)}" for k, v in params.items())
        return f"{value['name']}({inner})" if inner else str(value["name"])
    if isinstance(value, list):
        return "+".join(_compact(v) for v in value) or "none"
    return _flow(value)


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def run_one(point: Point, out: Path, console: Console, hint: str, what: str) -> dict[str, Any]:
    """Run (or continue, or reuse) ``point`` in ``out / point.dirname``; returns its metrics.json. ``hint``:
    how to continue after a failure; ``what``: the point's kind, named when its training diverges."""
    run_dir = out / point.dirname
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        console.print(f"{point.dirname}: finished earlier, kept")
        return json.loads(metrics_file.read_text())
    resume = (run_dir / "config.yaml").is_file()
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise InputError(f"{run_dir} is not empty but holds no run; move it away to rerun this point")
    prepared = prepare_run(point.cfg, run_dir, console, resume=resume, resume_hint=hint)
    if resume:
        console.print(f"{point.dirname}: resuming")
    try:
        execute(prepared)
    except TrainingDivergedError as exc:  # this point's settings are at fault: say which point, mark it
        prepared.run.mark_failed(exc, resume_hint="none: resuming repeats the divergence; change the settings")
        raise exc.within(f"{what} {point.dirname}") from None
    return json.loads(metrics_file.read_text())
