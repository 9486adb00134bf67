"""One run into one run directory: validate, write the config, run every setting, write the outputs.

``fedmia run`` and every point of ``fedmia sweep`` go through ``prepare_run`` then ``execute``.
Bad input raises ``InputError`` from ``prepare_run`` before the directory is made; an internal error
in ``execute`` marks the directory failed (``FAILED.json`` says how to resume) and propagates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from fedmia.errors import InputError
from fedmia.experiment.checkpoint import Checkpoints
from fedmia.experiment.config import ExperimentConfig, dump_config, load_config
from fedmia.experiment.context import Context
from fedmia.experiment.report import write_run
from fedmia.experiment.results import Results
from fedmia.experiment.rundir import RunDir
from fedmia.experiment.runner import build_context, run_settings


@dataclass
class PreparedRun:
    """A validated run: its config, its context (data loaded, plan made) and its directory."""

    cfg: ExperimentConfig
    ctx: Context
    run: RunDir
    resume_hint: str


@dataclass(frozen=True)
class Finished:
    results: Results
    run_dir: Path
    seconds: float


def check_new_run_dir(run_dir: Path) -> None:
    """A new run's directory must be absent or empty (a finished or foreign run is never overwritten)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir} is a file, not a directory; choose a directory path")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise InputError(f"run directory {run_dir} already exists and is not empty; choose another --out")


def resumable_config(run_dir: Path) -> ExperimentConfig:
    """The config of an interrupted run in ``run_dir`` (its own config.yaml)."""
    if not (run_dir / "config.yaml").is_file():
        raise InputError(f"{run_dir} is not a run directory (it has no config.yaml)")
    return load_config(run_dir / "config.yaml")


def prepare_run(
    cfg: ExperimentConfig, run_dir: Path, console: Console, *, resume: bool, resume_hint: str
) -> PreparedRun:
    """Validate the inputs (data, plan, model) and make the run directory with its config.yaml."""
    ctx = build_context(cfg, console)  # input errors surface here, before the run directory exists
    try:
        run = RunDir(run_dir)
        if not resume:
            run.write_text("config.yaml", dump_config(cfg))
    except OSError as exc:
        raise InputError(f"cannot write the run directory {run_dir}: {exc.strerror or exc}") from None
    return PreparedRun(cfg, ctx, run, resume_hint)


def execute(prepared: PreparedRun) -> Finished:
    """Run every setting (restoring finished ones from checkpoints) and write the run's outputs."""
    t0 = time.perf_counter()
    try:
        results = run_settings(prepared.ctx, Checkpoints(prepared.run))
        seconds = time.perf_counter() - t0
        final = write_run(prepared.cfg, results, prepared.run, seconds)
    except InputError:  # a checkpoint of an earlier attempt that does not fit this run
        raise
    except BaseException as exc:  # internal error or interrupt: keep the traceback, say how to resume
        prepared.run.mark_failed(exc, resume_hint=prepared.resume_hint)
        raise
    return Finished(results, final, seconds)
