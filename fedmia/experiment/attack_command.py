"""The ``fedmia attack RUN_DIR`` command, registered on the CLI by ``fedmia.experiment.cli`` (which hands it its
console and its exit-2 helper); the work is ``fedmia.experiment.attack_recording``'s, imported when the command
runs so that ``fedmia --help`` stays fast."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def attack_command(console: Console, fail: Callable[[str], typer.Exit]) -> Callable[..., None]:
    """The command, printing to ``console``; bad input becomes ``fail(message)`` (exit 2)."""

    def attack(
        run_dir: Annotated[Path, typer.Argument(help="folder with a recorded federation and fedmia.json")],
        overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides of its config")] = None,
        out: Annotated[Path | None, typer.Option("--out", help="run directory (default: RUN_DIR/attack)")] = None,
    ) -> None:
        """Attack a recorded federation: the server's, a client's and the outsider's attacks.

        RUN_DIR holds the rounds fedmia.flower.RecordingStrategy recorded in your Flower app (each round's
        global model and every client's update) and fedmia.json: the records each client held
        (records.clients, by partition id), the dataset, the model and how the clients trained (the
        references train that way). Writes the same run directory as fedmia run. A recording that does not
        match fedmia.json (a round missing, a partition it does not list, a shape) exits 2 naming it.
        """
        from fedmia.errors import InputError
        from fedmia.experiment.attack_recording import attack_recording
        from fedmia.experiment.report import print_summary

        try:
            prepared, done = attack_recording(run_dir, overrides or [], out, console)
        except InputError as exc:  # bad input, or a reference's training diverged under the recipe
            raise fail(str(exc)) from None
        print_summary(console, prepared.cfg, done.results, done.run_dir, done.seconds)

    return attack
