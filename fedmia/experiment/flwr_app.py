"""The same federation as ``fedmia run``, as module-level Flower apps for ``flwr run .``.

``pyproject.toml`` names these apps in ``[tool.flwr.app.components]``; the run config
(``[tool.flwr.app.config]`` or ``flwr run . --run-config "config='configs/x.yaml'"``) names a fedmia
YAML config plus optional ``overrides`` (space-separated ``key=value``). Server and clients rebuild
the same data, partitions, model and recipe from it (all deterministic in the seed); the server runs
the rounds and writes their metrics to ``out``/rounds.json. Attacks need the observers of
``fedmia run``; this entry point trains and reports the federation only.
"""

from __future__ import annotations

import functools
import json
import shlex
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedmia.experiment.config import load_config
from fedmia.experiment.federation import federation_spec, initial_model, make_evaluate
from fedmia.experiment.runner import build_context
from fedmia.fl.apps import ClientSetup, make_client_app
from fedmia.fl.simulation import federation_apps
from fedmia.fl.spec import Driver, FederationSpec


@functools.lru_cache(maxsize=2)
def _federation(config: str, overrides: str) -> tuple[FederationSpec, Any, dict[str, Any]]:
    """(spec, evaluate, initial global model) for a config path and override string; cached per process."""
    cfg = load_config(config, shlex.split(overrides))
    ctx = build_context(cfg.model_copy(update={"settings": ("federated",)}), Console(stderr=True))
    model = initial_model(ctx)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return federation_spec(ctx), make_evaluate(ctx, model), initial


def _spec(context: Context) -> tuple[FederationSpec, Any, dict[str, Any]]:
    rc = context.run_config
    return _federation(str(rc.get("config", "configs/federated.yaml")), str(rc.get("overrides", "")))


client_app = make_client_app(lambda context: ClientSetup(_spec(context)[0]))
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    spec, evaluate, initial = _spec(context)
    wanted = spec.num_clients
    deadline = time.monotonic() + 30
    while len(list(grid.get_node_ids())) < wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    if (have := len(list(grid.get_node_ids()))) < wanted:
        raise RuntimeError(
            f"the config has {wanted} clients but this federation has {have} SuperNodes; set them with "
            f"`flwr federation simulation-config @none/default local --num-supernodes {wanted}`"
        )
    rounds: list[dict[str, Any]] = []
    inner, _client, outcome = federation_apps(spec, Driver(initial, evaluate, on_round=rounds.append))
    t0 = time.perf_counter()
    inner._main(grid, context)  # the ServerApp fedmia run uses, on the grid flwr run gives us
    if outcome.error is not None:
        raise outcome.error
    out = Path(str(context.run_config.get("out", "runs/flwr-run")))
    out.mkdir(parents=True, exist_ok=True)
    summary = {"rounds": rounds, "seconds": time.perf_counter() - t0, "server_epsilon": outcome.server_epsilon}
    (out / "rounds.json").write_text(json.dumps(summary, indent=2) + "\n")
    for row in rounds:
        print(f"round {row['round']}: test accuracy {row['test_accuracy']:.3f}, test loss {row['test_loss']:.3f}")
    print(f"per-round metrics: {out / 'rounds.json'}")
