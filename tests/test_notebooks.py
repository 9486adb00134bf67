"""The course notebooks in ``notebooks/``: stored without outputs, each ending with exercises, and each
executed top to bottom in a fresh ``python3`` kernel (nbclient) by ``make test``, so CI catches a notebook
that an API change broke. The wall time of each execution is printed in the test log (never asserted)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 300  # per cell; a whole notebook is meant to run in under 2 minutes


def test_notebooks_exist() -> None:
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_loss_lira_rmia", "02_every_party", "03_defenses_dp", "04_auditing_dp"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_clean_and_has_exercises(path: Path) -> None:
    """Valid nbformat 4, no stored outputs or execution counts, a python3 kernel, exercises with hints."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: stored outputs in {cell.id}"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    exercises = text.split("## Exercises", 1)
    assert len(exercises) == 2, f"{path.name} has no '## Exercises' section"
    assert exercises[1].count("*Hint:*") >= 2, f"{path.name}: exercises need hints"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Run every cell in a fresh kernel from the notebook's own folder; any cell error fails the test."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for key in ("RAY_USAGE_STATS_ENABLED", "FLWR_TELEMETRY_ENABLED"):
        monkeypatch.setenv(key, "0")  # the kernel inherits this process's environment
    # this interpreter's kernelspec (ipykernel installs it under sys.prefix) before any user-level "python3"
    monkeypatch.setenv("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))
    client = NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name="python3",  # jupyter_client starts "python" as this interpreter (sys.executable)
        resources={"metadata": {"path": str(path.parent)}},
    )
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    executed = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in executed), "a cell did not run"
    errors = [o for c in executed for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    with capsys.disabled():  # shown in the CI log even when the test passes
        print(f"\nnotebook {path.name}: executed in {seconds:.1f} s")
