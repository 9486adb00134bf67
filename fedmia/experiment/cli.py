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
    config: Annotated[Path, typer.Argument(help="YAML experiment config, e.g. configs/quickstart.yaml")],
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run directory (default: <out_dir>/<name>-<time>)")] = None,
) -> None:
    """Train, attack and audit as CONFIG says; print the result table and the run directory."""
    from fedmia.data.files import DataFileError
    from fedmia.experiment.config import ConfigError, load_config
    from fedmia.experiment.report import print_summary, write_run
    from fedmia.experiment.runner import run_experiment
    from fedmia.registry import UnknownNameError

    try:
        cfg = load_config(config, overrides or [])
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    run_dir = out or Path(cfg.out_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise _fail(f"run directory {run_dir} already exists and is not empty; choose another --out")
    t0 = time.perf_counter()
    try:
        results = run_experiment(cfg, console)
    except (DataFileError, UnknownNameError) as exc:
        raise _fail(str(exc)) from None
    except ValueError as exc:  # impossible combinations that only the data can reveal
        raise _fail(f"{exc}") from None
    seconds = time.perf_counter() - t0
    final = write_run(cfg, results, run_dir, seconds)
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
    sys.exit(main())
