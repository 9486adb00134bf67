"""Checkpoints for resuming a run: finished stages and finished federated rounds.

Every file is written atomically (temp + rename) and holds only JSON or ``.npz`` arrays, read back
with ``allow_pickle=False``: nothing is unpickled. A round counts as finished once its JSON file
exists (it is written after its arrays), so a ``kill -9`` at any moment leaves a consistent prefix.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fedmia.errors import InputError
from fedmia.experiment.rundir import RunDir

CHECKPOINTS = ".checkpoints"


class CheckpointError(InputError):
    """A checkpoint file is missing, truncated or corrupt."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is unreadable or corrupt ({exc}); delete it to redo that step"
        ) from None  # noqa: E501


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy loads as an array
            raise ValueError("not an .npz archive")
        with loaded as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is unreadable or corrupt ({exc}); delete it to redo that step"
        ) from None  # noqa: E501


class Checkpoints:
    """The ``.checkpoints`` folder of one run directory."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.root = run.path / CHECKPOINTS
        self.root.mkdir(parents=True, exist_ok=True)

    # --- stages ------------------------------------------------------------------------------
    def save_stage(self, name: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.run.write_with(f"{CHECKPOINTS}/stage-{name}.npz", lambda p: _savez(p, arrays))
        self.run.write_json(f"{CHECKPOINTS}/stage-{name}.json", meta)  # last: marks the stage done

    def load_stage(self, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        meta = self.root / f"stage-{name}.json"
        if not meta.exists():
            return None
        return _read_json(meta), _read_npz(self.root / f"stage-{name}.npz")

    # --- federated rounds --------------------------------------------------------------------
    def save_round(self, setting: str, r: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.run.write_with(f"{CHECKPOINTS}/{setting}/round-{r:05d}.npz", lambda p: _savez(p, arrays))
        self.run.write_json(f"{CHECKPOINTS}/{setting}/round-{r:05d}.json", meta)

    def finished_rounds(self, setting: str) -> int:
        """The last round R such that rounds 1..R all finished."""
        r = 0
        while (self.root / setting / f"round-{r + 1:05d}.json").exists():
            r += 1
        return r

    def load_round(self, setting: str, r: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        base = self.root / setting / f"round-{r:05d}"
        return _read_json(base.with_suffix(".json")), _read_npz(base.with_suffix(".npz"))


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
