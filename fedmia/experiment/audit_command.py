"""The ``fedmia audit MODEL_DIR`` command, registered on the CLI by ``fedmia.experiment.cli`` (which hands
it its console and its exit-2 helper); the work is ``fedmia.experiment.audit_model``'s, imported when the
command runs so that ``fedmia --help`` stays fast."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def audit_command(console: Console, fail: Callable[[str], typer.Exit]) -> Callable[..., None]:
    """The command, printing to ``console``; bad input becomes ``fail(message)`` (exit 2)."""

    def audit(
        model_dir: Annotated[Path, typer.Argument(help="folder with the model's state dict (.pt) and fedmia.yaml")],
        overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides of its config")] = None,
        out: Annotated[
            Path | None, typer.Option("--out", help="run directory (default: <out_dir>/<name>-audit-<time>)")
        ] = None,
    ) -> None:
        """Audit a model trained elsewhere: the outsider's attacks on it, with references trained by fedmia.

        MODEL_DIR holds the weights (torch.save(model.state_dict(), "model.pt"), loaded with
        weights_only=True) and fedmia.yaml: the records it trained on (records.members), the model (a
        registered name or an import path), the dataset, and the recipe it was trained with (train), which
        the reference models train with. Writes the same run directory as fedmia run. A folder that is not
        what fedmia.yaml says (a missing key, a shape, an index out of range) exits 2 naming it.
        """
        from fedmia.errors import InputError
        from fedmia.experiment.audit_model import audit_model_dir
        from fedmia.experiment.report import print_summary

        try:
            prepared, done = audit_model_dir(model_dir, overrides or [], out, console)
        except InputError as exc:  # bad input, or a reference's training diverged under the recipe
            raise fail(str(exc)) from None
        print_summary(console, prepared.cfg, done.results, done.run_dir, done.seconds)

    return audit
