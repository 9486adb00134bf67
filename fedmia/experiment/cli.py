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
# A pipe or CI log gets rich's 80 columns by default, too narrow for the result table and its intervals.
console = Console(width=None if sys.stdout.isatty() else 180)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 130)


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


def _version(value: bool) -> None:
    if value:
        from fedmia import __version__

        console.print(f"fedmia {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Membership-inference audits of centralized and federated training."""


def _config_file(config: Path) -> Path:
    """CONFIG as a file: a path that exists, else the packaged config of that bare name (stderr says so);
    neither is bad input (exit 2) listing the packaged configs. See fedmia.experiment.configfiles."""
    from fedmia.errors import InputError
    from fedmia.experiment.configfiles import resolve_config

    try:
        source = resolve_config(config)
    except InputError as exc:
        raise _fail(str(exc)) from None
    if source.note:
        err.print(source.note, highlight=False)
    return source.path


def _make_out_dir(path: Path, what: str) -> bool:
    """Create the output folder ``path`` now, before anything trains, and check a file can be written
    in it; True if this call created it. An unwritable path is bad input (``InputError``), found before
    the work, not after it."""
    import tempfile

    from fedmia.errors import InputError

    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=path, prefix=".fedmia-write-check-").close()  # deletes itself
    except OSError as exc:
        if created:
            _drop_if_empty(path)
        raise InputError(f"cannot write the {what} {path}: {exc.strerror or exc}") from None
    return created


def _drop_if_empty(path: Path) -> None:
    """Remove ``path`` if it is an empty folder (one this command made, when it fails before writing)."""
    import contextlib

    with contextlib.suppress(OSError):
        path.rmdir()


@app.command()
def run(
    config: Annotated[
        Path | None,
        typer.Argument(help="YAML experiment config (a path, or a packaged config's name: quickstart, compare, ...)"),
    ] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run directory (default: <out_dir>/<name>-<time>)")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue an interrupted run in this run directory")
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            help="run N seeds (seed, seed+1, ...) into one parent directory and aggregate them with intervals",
        ),
    ] = None,
) -> None:
    """Train, attack and audit as CONFIG says; print the result table and the run directory.

    With ``--seeds N`` (or ``seeds: [...]`` in CONFIG), N independent runs go into one parent directory,
    each a normal run directory, with summary.json and a report of the mean and 95% interval across seeds;
    ``--resume PARENT`` continues it.

    Bad input (config, parameters, data files, output directory, checkpoints) exits 2 with a message,
    before anything trains. Anything else is an internal error: exit 1 with its traceback, and the run
    directory says it failed and how to resume.
    """
    from fedmia.errors import InputError, TrainingDivergedError
    from fedmia.experiment.config import load_config
    from fedmia.experiment.execute import check_new_run_dir, execute, prepare_run, resumable_config
    from fedmia.experiment.report import print_summary

    if config is not None and resume is None:
        config = _config_file(config)
    if seeds is not None or (resume is not None and _is_seeds_dir(resume)) or _config_has_seeds(config, overrides):
        _run_seeds(config, overrides, out, resume, seeds)
        return
    try:
        if resume is not None:
            if config is not None or overrides or out is not None:
                raise _fail("--resume takes only the run directory: its config.yaml is the config")
            if (resume / "metrics.json").exists():
                console.print(f"{resume} is already complete (metrics.json exists); nothing to resume")
                return
            cfg = resumable_config(resume)
            run_dir = resume
        else:
            if config is None:
                raise _fail("give a CONFIG file (or --resume RUN_DIR)")
            cfg = load_config(config, overrides or [])
            if cfg.sweep.grid:
                console.print(
                    f"note: {config} has a sweep.grid; `fedmia run` runs its base config once, `fedmia sweep` the grid"
                )
            run_dir = out or Path(cfg.out_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            check_new_run_dir(run_dir)
        hint = f"fedmia run --resume {run_dir}"
        prepared = prepare_run(cfg, run_dir, console, resume=resume is not None, resume_hint=hint)
    except InputError as exc:
        raise _fail(str(exc)) from None
    try:
        done = execute(prepared)
    except TrainingDivergedError as exc:  # the settings are at fault: exit 2, and the directory says why
        prepared.run.mark_failed(exc, resume_hint="none: resuming repeats the divergence; change the settings")
        raise _fail(f"{exc}\n(run directory {run_dir} is marked failed; finished settings are checkpointed)") from None
    except InputError as exc:  # a checkpoint of an earlier attempt that does not fit this run
        raise _fail(str(exc)) from None
    except BaseException:
        err.print(f"[red]the run failed[/]; finished steps are saved. Resume with: fedmia run --resume {run_dir}")
        raise
    print_summary(console, cfg, done.results, done.run_dir, done.seconds)


def _is_seeds_dir(path: Path) -> bool:
    from fedmia.experiment.seeds import is_seeds_dir

    return is_seeds_dir(path)


def _config_has_seeds(config: Path | None, overrides: list[str] | None) -> bool:
    """Whether CONFIG (with overrides) lists seeds; a config that does not load is left to ``run``'s errors."""
    from fedmia.errors import InputError
    from fedmia.experiment.config import load_config

    if config is None:
        return False
    try:
        return bool(load_config(config, overrides or []).seeds)
    except InputError:
        return False


def _run_seeds(
    config: Path | None, overrides: list[str] | None, out: Path | None, resume: Path | None, n: int | None
) -> None:
    """``fedmia run`` over several seeds: see :mod:`fedmia.experiment.seeds`."""
    from fedmia.errors import InputError
    from fedmia.experiment.config import load_config
    from fedmia.experiment.seeds import load_plan, print_summary, run_seeds, seed_values

    try:
        if resume is not None:
            if config is not None or overrides or out is not None or n is not None:
                raise _fail("--resume takes only the seeds directory: its seeds.json is the plan")
            cfg, values = load_plan(resume)
            parent = resume
        else:
            if config is None:
                raise _fail("give a CONFIG file (or --resume SEEDS_DIR)")
            cfg = load_config(config, overrides or [])
            values = seed_values(cfg, n)
            parent = out or Path(cfg.out_dir) / f"{cfg.name}-seeds-{time.strftime('%Y%m%d-%H%M%S')}"
        summary = run_seeds(cfg, values, parent, console, resume=resume is not None)
    except InputError as exc:
        raise _fail(str(exc)) from None
    print_summary(console, summary, parent)


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="YAML experiment config (its sweep.grid section adds keys)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides of every point")] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", help="KEY=V1,V2,... (repeatable; values are YAML, commas inside [] or {} kept)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="sweep directory (default: <out_dir>/<name>-sweep-<time>)")
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option("--seeds", help="run every point over N seeds and report the mean and interval across them"),
    ] = None,
) -> None:
    """Run CONFIG at every combination of the grid's values, each point its own run directory (with
    ``--seeds N`` or ``seeds: [...]`` in CONFIG, each point a seeds directory and its aggregate).

    Writes sweep.csv, sweep.json and one privacy-utility figure per party (test accuracy against the
    best attack's TPR at 1% FPR and AUC, centralized and federated side by side). Every point is
    validated first: a bad key or value exits 2 before anything runs. Run the same command with the
    same --out to continue an interrupted sweep: finished points are kept, an interrupted one resumes.
    """
    from fedmia.errors import InputError
    from fedmia.experiment.sweep import plan_points, run_sweep, sweep_table

    config = _config_file(config)
    try:
        points = plan_points(config, overrides or [], grid or [], seeds)
        sweep_dir = out or Path(points[0].cfg.out_dir) / f"{points[0].cfg.name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        rows = run_sweep(points, sweep_dir, console)
    except InputError as exc:
        raise _fail(str(exc)) from None
    console.print(sweep_table(rows))
    console.print(f"sweep directory: {sweep_dir}  (sweep.csv, sweep.json, privacy-utility-<party>.png)")


@app.command("fetch")
def fetch_dataset(
    dataset: Annotated[str, typer.Argument(help="texas100, purchase100, cifar10, cifar100 (femnist, hf-disk: steps)")],
    directory: Annotated[Path, typer.Argument(help="folder to download and unpack into, e.g. data/cifar100")],
) -> None:
    """Download DATASET's official files into DIRECTORY, check and unpack them, and print the config lines.

    Needs a network; fedmia never downloads anything else. Where there is none (or for FEMNIST, which
    needs LEAF's preprocessing), exits 2 saying what to download by hand and where to put it.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from fedmia.data import fetch as fetching
    from fedmia.errors import InputError

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()) as bar:

        def progress(url: str) -> fetching.Progress:
            task = bar.add_task(url.rsplit("/", 1)[-1], total=None)
            return lambda done, total: bar.update(task, completed=done, total=total)

        try:
            snippet = fetching.fetch(dataset, directory, progress=progress)
        except InputError as exc:
            raise _fail(str(exc)) from None
    console.print(f"{dataset}: ready in {directory}. Use it in a config with:\n{snippet}", highlight=False)


@app.command("audit-dp")
def audit_dp(
    config: Annotated[
        Path, typer.Argument(help="YAML experiment config with train.dp, federation.local_dp or central_dp")
    ],
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides")] = None,
    canaries: Annotated[int, typer.Option("--canaries", help="canary records per run (population records)")] = 200,
    central_canaries: Annotated[
        int,
        typer.Option(
            "--central-canaries",
            help="canary clients for central DP, and as many never inserted (Andrew et al.: the fitted spread "
            "needs many; too many for the model's size cross-talk)",
        ),
    ] = 1000,
    seeds: Annotated[int, typer.Option("--seeds", help="independent training runs per setting")] = 5,
    out: Annotated[
        Path | None, typer.Option("--out", help="output directory (default: <out_dir>/<name>-dp-audit-<time>)")
    ] = None,
    white_box: Annotated[
        bool, typer.Option("--white-box", help="Dirac gradient canaries in DP-SGD (--canaries of them)")
    ] = False,
    noise_grid: Annotated[
        str | None, typer.Option("--noise-grid", help="white-box calibration: noise multipliers, e.g. 0.5,1,2,4")
    ] = None,
    broken: Annotated[
        str, typer.Option("--broken", help="white-box negative control: honest, no_noise or no_clipping")
    ] = "honest",
    canary_norm: Annotated[
        float | None, typer.Option("--canary-norm", help="white-box canary norm (default: the clipping norm)")
    ] = None,
) -> None:
    """One-run DP audits of every DP setting in CONFIG: empirical epsilon lower bounds beside the accountant's.

    Centralized DP-SGD and a local-DP client: Steinke, Nasr & Jagielski 2023 (mislabeled canaries, each in
    the training data with probability 1/2). Federated central DP: Andrew et al. 2024 (canary clients).
    Writes dp_audit.json and dp_audit.md. Bad input exits 2 before anything trains.
    --white-box: Dirac gradient canaries in DP-SGD (Nasr et al. 2023; fedmia.audit.canaries), the GDP estimate
    and the one-run bounds, over --noise-grid (a calibration curve, also dp_audit.png); --broken runs a
    negative control that claims the config's noise but adds none (no_noise) or does not clip (no_clipping).
    """
    from fedmia.errors import InputError
    from fedmia.experiment.config import load_config
    from fedmia.experiment.dp_audit import markdown_table, run_dp_audit, write_dp_audit
    from fedmia.experiment.execute import check_new_run_dir

    config = _config_file(config)
    try:
        cfg = load_config(config, overrides or [])
        out_dir = out or Path(cfg.out_dir) / f"{cfg.name}-dp-audit-{time.strftime('%Y%m%d-%H%M%S')}"
        check_new_run_dir(out_dir)
        created = _make_out_dir(out_dir, "output directory")  # before any seed trains
    except InputError as exc:
        raise _fail(str(exc)) from None
    if white_box:
        from fedmia.experiment.dp_audit import parse_noise_grid, run_white_box_audit, white_box_table, write_white_box

        try:
            rows = run_white_box_audit(
                cfg, canaries=canaries, seeds=seeds, console=console, mode=broken, norm=canary_norm,
                noise_grid=parse_noise_grid(noise_grid), central_canaries=central_canaries,
                on_seed=lambda s, i: console.print(f"{s}: seed {i + 1}/{seeds} done"),
            )  # fmt: skip
        except InputError as exc:
            if created:
                _drop_if_empty(out_dir)
            raise _fail(str(exc)) from None
        extra = {"canaries": canaries, "seeds": seeds, "broken": broken, "noise_grid": noise_grid}
        write_white_box(rows, out_dir, cfg, extra)
        console.print(white_box_table(rows))
        console.print(f"written: {out_dir / 'dp_audit.json'}, {out_dir / 'dp_audit.md'}, {out_dir / 'dp_audit.png'}")
        return
    try:
        audits = run_dp_audit(
            cfg,
            canaries=canaries,
            central_canaries=central_canaries,
            seeds=seeds,
            console=console,
            on_seed=lambda s, i: console.print(f"{s}: seed {i + 1}/{seeds} done"),
        )
    except InputError as exc:
        if created:
            _drop_if_empty(out_dir)  # bad input writes nothing
        raise _fail(str(exc)) from None
    write_dp_audit(audits, out_dir, cfg, {"canaries": canaries, "central_canaries": central_canaries, "seeds": seeds})
    console.print(markdown_table(audits))
    console.print(f"written: {out_dir / 'dp_audit.json'}, {out_dir / 'dp_audit.md'}")


@app.command("list")
def list_registered(
    plugins: Annotated[
        bool, typer.Option("--plugins", help="only the installed plugins (entry points), with where they come from")
    ] = False,
) -> None:
    """List every registry's entries with their parameters, defaults and a one-line description.

    Besides these names, every registry takes an import path ``package.module:factory``; installed packages
    add entries through entry points in the group ``fedmia.<registry>`` (``--plugins`` lists them)."""
    from rich.table import Table

    from fedmia.attacks import ATTACKS, GENERATIVE_ATTACKS
    from fedmia.data import DATASETS
    from fedmia.data.partition import PARTITIONERS
    from fedmia.errors import InputError
    from fedmia.experiment.settings import SETTINGS
    from fedmia.fl.strategy import CLIPPING, STRATEGIES
    from fedmia.models import MODELS
    from fedmia.training.defenses import DEFENSES
    from fedmia.training.optim import OPTIMIZERS
    from fedmia.training.user import TRAINING_FUNCTIONS

    shown = 0
    for reg, where in (
        (SETTINGS, "settings"),
        (DATASETS, "data.dataset, data.params"),
        (MODELS, "model.name, model.params"),
        (OPTIMIZERS, "train.optimizer (parameters: train.lr, train.momentum, train.weight_decay)"),
        (ATTACKS, "audit.attacks / audit.federated_attacks: {name, params}"),
        (GENERATIVE_ATTACKS, "attacks on generators: {name, params}; each says what the party needs"),
        (STRATEGIES, "federation.strategy: {name, params}"),
        (PARTITIONERS, "federation.partition: {name, params}"),
        (CLIPPING, "federation.central_dp.clipping"),
        (DEFENSES, "defenses: [{name, params}] (training-time: every trainer; query-time: the released model)"),
        (TRAINING_FUNCTIONS, "train.function: fit(model, x, y, recipe, generator), or an import path"),
    ):
        try:
            names = reg.plugins() if plugins else reg.available()
        except InputError as exc:  # a plugin's name taken twice
            raise _fail(str(exc)) from None
        if not names:  # (the training functions have no built-in entry)
            continue
        shown += 1
        table = Table(title=f"{reg.plural}  [dim]({where})[/]", title_justify="left", show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("parameters (type = default)")
        table.add_column("description")
        if plugins:
            table.add_column("from")
        for name in names:
            try:  # a plugin that does not load is bad input
                entry, declared = reg.entry(name), reg.params(name)
            except InputError as exc:
                raise _fail(str(exc)) from None
            params = ", ".join(
                f"{p.name}: {p.annotation}" + (" (required)" if p.required else f" = {p.default!r}") for p in declared
            )
            table.add_row(name, params or "-", entry.description, *([entry.origin] if plugins else []))
        console.print(table)
    if plugins and not shown:
        console.print("no plugins installed (entry-point groups: fedmia.models, fedmia.datasets, fedmia.attacks, ...)")


@app.command("configs")
def list_configs() -> None:
    """List the configs shipped with fedmia: run one by name (`fedmia run compare`), copy one out with init."""
    from rich.table import Table

    from fedmia.experiment.configfiles import PACKAGED, first_comment, packaged_configs

    table = Table(title=f"packaged configs  [dim]({PACKAGED})[/]", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("description (its first comment line)")
    for name, path in packaged_configs().items():
        table.add_row(name, first_comment(path))
    console.print(table)


@app.command("init")
def init_config(
    name: Annotated[str, typer.Argument(help="a packaged config's name (see `fedmia configs`)")],
    directory: Annotated[Path, typer.Argument(help="folder to copy it into")] = Path("."),
) -> None:
    """Copy the packaged config NAME into DIRECTORY as NAME.yaml, for editing; never overwrites a file."""
    from fedmia.errors import InputError
    from fedmia.experiment.configfiles import copy_out

    try:
        target = copy_out(name, directory)
    except InputError as exc:
        raise _fail(str(exc)) from None
    console.print(f"wrote {target}; edit it, then: fedmia run {target}", highlight=False)


from fedmia.experiment.audit_command import audit_command  # noqa: E402  (its work is imported when it runs)

app.command("audit")(audit_command(console, _fail))

from fedmia.experiment.attack_command import attack_command  # noqa: E402  (its work is imported when it runs)

app.command("attack")(attack_command(console, _fail))


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    app(prog_name="fedmia")


if __name__ == "__main__":
    main()
