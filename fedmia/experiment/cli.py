"""The ``fedmia`` command line."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Membership-inference audits of centralized and federated training.",
)
# A pipe or CI log gets rich's 80 columns by default, too narrow for the result table.
console = Console(width=None if sys.stdout.isatty() else 130)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 130)


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="YAML experiment config, e.g. configs/quickstart.yaml")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run directory (default: <out_dir>/<name>-<time>)")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue an interrupted run in this run directory")
    ] = None,
) -> None:
    """Train, attack and audit as CONFIG says; print the result table and the run directory."""
    from fedmia.data.files import DataFileError
    from fedmia.experiment.checkpoint import CheckpointError, Checkpoints
    from fedmia.experiment.config import ConfigError, dump_config, load_config
    from fedmia.experiment.report import print_summary, write_run
    from fedmia.experiment.rundir import RunDir
    from fedmia.experiment.runner import build_context, run_settings
    from fedmia.fl.simulation import FederationError
    from fedmia.registry import UnknownNameError

    try:
        if resume is not None:
            if config is not None or overrides or out is not None:
                raise _fail("--resume takes only the run directory: its config.yaml is the config")
            if (resume / "metrics.json").exists():
                console.print(f"{resume} is already complete (metrics.json exists); nothing to resume")
                return
            cfg = load_config(resume / "config.yaml")
            run_dir = resume
        else:
            if config is None:
                raise _fail("give a CONFIG file (or --resume RUN_DIR)")
            cfg = load_config(config, overrides or [])
            run_dir = out or Path(cfg.out_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            if run_dir.exists() and any(run_dir.iterdir()):
                raise _fail(f"run directory {run_dir} already exists and is not empty; choose another --out")
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    t0 = time.perf_counter()
    try:
        try:
            ctx = build_context(cfg, console)  # input errors surface here, before the run directory exists
        except TypeError as exc:  # a params name or value that the dataset, model or partitioner does not take
            raise _fail(f"{exc} (check data.params, model.params and federation.partition.params)") from None
        run = RunDir(run_dir)
        if resume is None:
            run.write_text("config.yaml", dump_config(cfg))
        results = run_settings(ctx, Checkpoints(run))
    except (DataFileError, UnknownNameError, CheckpointError) as exc:
        raise _fail(str(exc)) from None
    except FederationError as exc:
        err.print(f"[red]error:[/] {exc}\nresume with: fedmia run --resume {run_dir}", highlight=False)
        raise typer.Exit(code=1) from None
    except ValueError as exc:  # impossible combinations that only the data can reveal
        raise _fail(f"{exc}") from None
    seconds = time.perf_counter() - t0
    final = write_run(cfg, results, run, seconds)
    print_summary(console, cfg, results, final, seconds)


@app.command("list")
def list_registered() -> None:
    """List the registered datasets, models and attacks."""
    from fedmia.attacks import ATTACKS
    from fedmia.data import DATASETS
    from fedmia.models import MODELS

    for reg in (DATASETS, MODELS, ATTACKS):
        console.print(f"[bold]{reg.kind}s[/]: {', '.join(reg.available())}")


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    app(prog_name="fedmia")


if __name__ == "__main__":
    main()
