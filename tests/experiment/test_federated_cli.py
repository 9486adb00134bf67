"""`fedmia run` for the federated setting: impossible configs exit 2 before any federation, and one real run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from fedmia.experiment.cli import app

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "federated.yaml")
INPROCESS = ["federation.backend=inprocess"]  # the subject is the CLI, not Ray: Flower's apps in this process


def flat(text: str) -> str:
    """Rich wraps long lines; compare messages with whitespace collapsed."""
    return " ".join(text.split())


@pytest.fixture
def no_federation(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Any attempt to start a federation (on either backend) is recorded and fails with an AssertionError,
    which no input-error handler turns into exit 2 (a TypeError or ValueError would be: build_context)."""
    import fedmia.experiment.federated as federated
    import fedmia.experiment.generative as generative
    import fedmia.fl.simulation as simulation

    started: list[tuple[Any, ...]] = []

    def refuse(*args: object, **kwargs: object) -> None:  # run_federation(spec, driver, *, ...)
        started.append((args, kwargs))
        raise AssertionError("a federation was started for a config that cannot run")

    for module in (federated, generative, simulation):
        monkeypatch.setattr(module, "run_federation", refuse)
    return started


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["federation.num_clients=100000"], ["num_clients=100000", "exceeds the", "member records"]),
        (["federation.partition={name: dirichlet, params: {alpha: 0}}"], ["federation.partition", "alpha", "> 0"]),
        (["federation.partition={name: dirichlet, params: {alpha: -1.5}}"], ["federation.partition", "alpha", "> 0"]),
        (["federation.fraction=0"], ["federation.fraction", "greater than 0"]),
        (["federation.fraction=1.5"], ["federation.fraction", "less than or equal to 1"]),
        (["federation.strategy=fedfoo"], ["federation.strategy", "unknown strategy 'fedfoo'", "fedavg"]),
        (["federation.partition=nosuch"], ["federation.partition", "unknown partitioner 'nosuch'", "iid"]),
        (
            ["federation.local_dp={noise_multiplier: 1.0}", "federation.central_dp={noise_multiplier: 1.0}"],
            ["federation", "local_dp or central_dp, not both"],
        ),
        (
            ["federation.secure_aggregation=true", "federation.central_dp={clipping: server-fixed}"],
            ["federation", "secure aggregation"],
        ),
        (["federation.num_clients=0"], ["federation.num_clients", "greater than or equal to 1"]),
        (["federation.rounds=0"], ["federation.rounds", "greater than or equal to 1"]),
        (["federation.rouns=3"], ["federation.rouns", "unknown field"]),
        (
            ["federation.partition={name: shard, params: {classes_per_client: 2}}"],
            ["federation.partition", "partitioner 'shard': classes_per_client: unknown parameter", "shards_per_client"],
        ),
        (
            ["federation.partition={name: shard, params: {shards_per_client: 1000}}"],
            ["federation.partition", "'shard' cannot split", "too few records"],
        ),
        (
            ["federation.partition={name: pathological, params: {classes_per_client: 0}}"],
            ["federation.partition", "classes_per_client must be >= 1"],
        ),
    ],
)
def test_impossible_federation_exits_2_naming_the_problem(
    overrides: list[str],
    expected: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_federation: list[tuple[Any, ...]],
) -> None:
    monkeypatch.chdir(tmp_path)  # the default out_dir ("runs") would land here too
    args = ["run", CONFIG, "settings=[federated]", *INPROCESS, *overrides, "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, args)
    assert no_federation == [], f"a federation was started: {result.output}"
    assert not isinstance(result.exception, AssertionError), result.output
    assert result.exit_code == 2, result.output
    message = flat(result.output)
    assert "error:" in message
    for part in expected:
        assert part in message, (part, message)
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no run directory, not even a partial one


@pytest.mark.slow
def test_federated_run_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's per-round evaluation, the utility and the outsider's loss scores are recomputed with plain
    torch on scikit-learn's digits from the global model of each round (the states the server evaluates)."""
    import torch.nn.functional as F  # noqa: N812
    from sklearn.datasets import load_digits

    import fedmia.experiment.federated as federated

    seen: dict[str, Any] = {"states": {}}
    real_evaluate = federated.make_evaluate

    def spy(ctx: Any, model: torch.nn.Module) -> Any:
        seen["ctx"], inner = ctx, real_evaluate(ctx, model)

        def evaluate(server_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
            seen["states"][server_round] = {k: v.detach().clone() for k, v in state.items()}
            return inner(server_round, state)

        return evaluate

    monkeypatch.setattr(federated, "make_evaluate", spy)
    out = tmp_path / "run"
    args = [
        "run",
        CONFIG,
        "settings=[federated]",
        *INPROCESS,
        "federation.rounds=2",
        "federation.num_clients=4",
        "audit.references=0",
        "audit.query_log=true",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    digits = load_digits()
    x, y = torch.as_tensor(digits.images / 16.0, dtype=torch.float32)[:, None], torch.as_tensor(digits.target)
    ctx = seen["ctx"]
    model = ctx.spec.build(0).eval()

    def outputs(state: dict[str, torch.Tensor], records: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        model.load_state_dict(state)
        with torch.no_grad():
            logits = model(x[records])
        return logits, y[records]

    test = ctx.plan.test
    assert len(test) == round(0.1 * len(digits.target))
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["rounds"]["federated"]
    assert [r["round"] for r in rows] == [1, 2] and sorted(seen["states"]) == [1, 2]
    for r in rows:  # the server's evaluation of that round's global model
        logits, labels = outputs(seen["states"][r["round"]], test)
        assert r["test_accuracy"] == pytest.approx(float((logits.argmax(1) == labels).double().mean()), abs=1e-6)
        assert r["test_loss"] == pytest.approx(float(F.cross_entropy(logits.double(), labels)), rel=1e-5)
        losses = r["client_train_loss"]
        assert sorted(losses) == ["0", "1", "2", "3"]  # fraction 1.0: every client, keyed by partition id
        assert all(v is not None and np.isfinite(v) for v in losses.values())
        assert r["failures"] == 0
    # the released model is round 2's global model: its utility, and the outsider's loss scores (-loss)
    final = seen["states"][2]
    util = metrics["utility"]["federated"]
    for key, records in (("test_accuracy", test), ("train_accuracy", ctx.plan.members)):
        logits, labels = outputs(final, records)
        assert util[key] == pytest.approx(float((logits.argmax(1) == labels).double().mean()), abs=1e-12), key
    scores = pd.read_parquet(out / "scores.parquet")
    loss = scores[(scores["attack"] == "loss") & (scores["party"] == "outsider")]
    assert len(loss) == len(ctx.plan.targets)
    logits, labels = outputs(final, loss["record"].to_numpy())
    want = -F.cross_entropy(logits.double(), labels, reduction="none").numpy()
    np.testing.assert_allclose(loss["score"].to_numpy(), want, rtol=1e-4, atol=1e-6)
    # the last round's server-side evaluation is the final model's test accuracy
    assert rows[-1]["test_accuracy"] == pytest.approx(util["test_accuracy"], abs=1e-6)  # float32 vs float64
    # the outsider attacked the federated model; its rows are federated ones
    assert {a["setting"] for a in metrics["attacks"]} == {"federated"}
    # query accounting of a federated run: only the outsider queries (the log's rows are its calls, their
    # totals the metrics'); the server and the client hold weights: accounted as not applicable
    log = pd.read_parquet(out / "queries.parquet")
    assert set(log["party"]) == {"outsider"} and set(log["setting"]) == {"federated"}
    q = metrics["queries"]["federated/outsider"]
    assert int(log["queries"].sum()) == q["queries_to_target"]
    assert log.groupby("purpose", observed=True)["queries"].sum().to_dict() == q["by_purpose"]
    accounting = metrics["queries_by_attack"]
    n_candidates = int((log["purpose"] == "candidates").sum())  # one base query per candidate, no probes
    assert n_candidates > 0
    assert accounting["federated/outsider"]["loss"]["queries"] == n_candidates
    weight_holders = [who for who in accounting if who != "federated/outsider"]
    assert weight_holders and all(
        row["queries"] == 0 and row["applicable"] is False for who in weight_holders for row in accounting[who].values()
    )

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["settings"] == ["federated"]
    assert (saved["federation"]["rounds"], saved["federation"]["num_clients"]) == (2, 4)

    text = flat(result.output)
    assert "federated: per round" in text
    assert "test acc" in text and "client train loss" in text
    assert f"{rows[-1]['test_accuracy']:.3f}" in text
    assert str(out) in text


def test_adaptive_central_dp_noise_beyond_flowers_limit_is_refused_up_front() -> None:
    from fedmia.experiment.config import ConfigError, load_config

    base = Path(__file__).resolve().parents[2] / "configs" / "federated.yaml"
    with pytest.raises(ConfigError, match="adaptive clipping"):
        load_config(base, ["federation.central_dp={clipping: server-adaptive, noise_multiplier: 1.0}"])
    cfg = load_config(base, ["federation.central_dp={clipping: server-adaptive, noise_multiplier: 0.5}"])
    assert cfg.federation.central_dp is not None
