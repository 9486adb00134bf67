"""A federation's recording in a run directory: each round's view, written as it ends and read back.

fedmia's federated setting checkpoints a round as every observer's ``round_delta`` in
``.checkpoints/federated/round-NNNNN.{npz,json}`` (``Checkpoints.save_round``); ``LatestModels``' delta, under
``latest/``, is the round's whole view (``fedmia.fl.recording.encode_view``). ``RoundRecorder`` writes exactly
that for a user's Flower app (``fedmia.flower.RecordingStrategy``), and ``read_views`` reads the views back
from either, for ``fedmia attack``.
"""

from __future__ import annotations

from pathlib import Path

from fedmia.experiment.checkpoint import CheckpointError, Checkpoints
from fedmia.experiment.rundir import RunDir
from fedmia.fl.observe import LatestModels
from fedmia.fl.recording import decode_view
from fedmia.fl.views import RoundView

SETTING = "federated"  # the folder of .checkpoints the rounds go to, as in fedmia run's federated setting
VIEW = "latest"  # the name of the view's arrays and metadata in a round's files (fedmia run's LatestModels)


class RoundRecorder:
    """An observer that writes each round's view into ``run_dir`` as it ends (``Checkpoints.save_round``
    of ``LatestModels.round_delta``: the files fedmia's federated setting checkpoints a round into)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._checkpoints = Checkpoints(RunDir(self.run_dir))
        if self._checkpoints.finished_rounds(SETTING):
            raise ValueError(f"{self.run_dir} already holds a recording; record into a new folder")
        self.latest = LatestModels()

    def on_round(self, view: RoundView) -> None:
        self.latest.on_round(view)
        arrays, meta = self.latest.round_delta()
        named = {f"{VIEW}/{k}": v for k, v in arrays.items()}
        self._checkpoints.save_round(SETTING, view.server_round, {VIEW: meta}, named)


def read_views(run_dir: str | Path) -> list[RoundView]:
    """The rounds recorded in ``run_dir`` (by ``RecordingStrategy`` or ``fedmia run``), in order, up to the
    first round not finished. Raises ``CheckpointError`` (exit 2) for a file that is not a round's view."""
    checkpoints = Checkpoints(RunDir(Path(run_dir)))
    views = []
    for r in range(1, checkpoints.finished_rounds(SETTING) + 1):
        meta, arrays = checkpoints.load_round(SETTING, r)
        prefix = f"{VIEW}/"
        try:
            view = decode_view({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}, meta[VIEW])
        except (KeyError, ValueError, TypeError) as exc:
            where = checkpoints.root / SETTING / f"round-{r:05d}"
            raise CheckpointError(f"{where}.npz/.json: not a recorded round ({type(exc).__name__}: {exc})") from None
        if view.server_round != r:
            raise CheckpointError(f"{checkpoints.root / SETTING}/round-{r:05d}.json says round {view.server_round}")
        views.append(view)
    return views
