"""Fuzzed input validation (issue 23.5): any config gives a validated run or bad input, never a bug's exception.

``tests/experiment/test_config_fuzz.py`` fuzzes the config parser (trees, overrides, bytes). This module fuzzes
what comes after it, where the data, the plan and the model meet the config: ``build_context`` loads the data,
splits it, partitions it among clients, applies the defenses and builds the model. On every drawn config it
must return a context or raise ``InputError`` (whose message is non-empty); any other exception is an internal
error, and since the runner no longer converts ValueError/TypeError into bad input, it would surface as a
traceback. Then the CLI on drawn configs: exit 2 with a message and no run directory, or a valid run (stopped
at the first training step by a sentinel, so no case trains), never a traceback or a half-written directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from fedmia.errors import InputError
from fedmia.experiment import execute as execute_module
from fedmia.experiment.cli import app
from fedmia.experiment.config import ConfigError, load_config
from fedmia.experiment.context import Context
from fedmia.experiment.runner import build_context

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
CONSOLE = Console(quiet=True)

BUILD = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLI = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


def flow(value: Any) -> str:
    """A YAML flow value for a ``key=value`` override."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


# ---- strategies: values near and beyond each check's edge ------------------------------------------------------

fractions = st.sampled_from([0.0, 1e-5, 0.0002, 0.001, 0.01, 0.1, 0.25, 0.3, 0.5, 0.9, 0.99]) | st.floats(0, 1)
small_ints = st.integers(-3, 40)
datasets = st.sampled_from(
    [
        {"dataset": "digits"},
        {"dataset": "breast-cancer"},
        {"dataset": "purchase-like", "params": {"n": 300, "features": 20, "classes": 10}},
    ]
) | st.builds(
    lambda n, f, c, s: {"dataset": "purchase-like", "params": {"n": n, "features": f, "classes": c, "seed": s}},
    st.integers(-2, 400),
    st.integers(-1, 30),
    st.integers(-1, 60),
    st.integers(-1, 3),
)
valid_splits = st.builds(
    lambda m, n, p, t: {"members": m, "nonmembers": n, "population": p, "test": t},
    st.sampled_from([0.0002, 0.005, 0.05, 0.3]),
    st.sampled_from([0.005, 0.3]),
    st.sampled_from([0.005, 0.3]),
    st.sampled_from([0.0, 0.1]),
)
splits = valid_splits | st.fixed_dictionaries(
    {"members": fractions, "nonmembers": fractions, "population": fractions, "test": fractions}
)
widths = st.lists(st.integers(-2, 64), max_size=3)
models = st.one_of(
    st.builds(
        lambda h, a, d: {"name": "mlp", "params": {"hidden": h, "activation": a, "dropout": d}},
        widths,
        st.sampled_from(["tanh", "relu", "sigmoid", ""]),
        st.sampled_from([0.0, 0.5, 0.99, 1.0, -0.1]),
    ),
    st.just({"name": "logreg", "params": {}}),
    st.builds(
        lambda c, g, d: {"name": "cnn", "params": {"channels": c, "groups": g, "dropout": d}},
        widths,
        st.integers(-1, 9),
        st.sampled_from([0.0, 0.3, 1.0]),
    ),
)
partitions = st.one_of(
    st.just({"name": "iid"}),
    st.builds(
        lambda a, m: {"name": "dirichlet", "params": {"alpha": a, "min_partition_size": m}},
        st.sampled_from([-1.0, 0.0, 1e-3, 0.1, 0.5, 100.0]),
        st.integers(-1, 30),
    ),
    st.builds(lambda k: {"name": "pathological", "params": {"classes_per_client": k}}, small_ints),
    st.builds(lambda k: {"name": "shard", "params": {"shards_per_client": k}}, small_ints),
    st.just({"name": "natural"}),
)
defense_lists = st.lists(
    st.one_of(
        st.builds(lambda v: {"name": "early-stopping", "params": {"validation": v}}, fractions),
        st.builds(lambda v: {"name": "adversarial-regularization", "params": {"reference_fraction": v}}, fractions),
        st.builds(lambda v: {"name": "l2", "params": {"weight_decay": v}}, st.sampled_from([-1.0, 0.0, 1e-3])),
        st.builds(lambda v: {"name": "dropout", "params": {"p": v}}, st.sampled_from([-0.5, 0.0, 0.5, 1.0])),
        st.builds(lambda v: {"name": "top-k", "params": {"k": v}}, small_ints),
        st.builds(lambda v: {"name": "rounding", "params": {"decimals": v}}, small_ints),
        st.builds(lambda v: {"name": "temperature", "params": {"t": v}}, st.sampled_from([-1.0, 0.0, 1.0])),
        st.builds(lambda v: {"name": "label-smoothing", "params": {"epsilon": v}}, fractions),
    ),
    max_size=2,
)


@st.composite
def overrides(draw: st.DrawFn) -> list[str]:
    """``key=value`` overrides of the quickstart config: data, split, model, defenses, maybe a federation."""
    out = [f"data={flow(draw(datasets))}", f"model={flow(draw(models))}"]
    if draw(st.booleans()):  # else the quickstart's split, so that most cases reach the partition and model
        out.append(f"data.split={flow(draw(splits))}")
    if draw(st.booleans()):
        out.append(f"defenses={flow(draw(defense_lists))}")
    if draw(st.booleans()):
        out += [
            "settings=[federated]",
            "federation.backend=inprocess",
            f"federation.num_clients={draw(st.sampled_from([1, 2, 3, 5, 10, 40]) | st.integers(1, 700))}",
            f"federation.partition={flow(draw(partitions))}",
        ]
    return out


# ---- (a) build_context: a context or InputError ---------------------------------------------------------------


def build(items: list[str]) -> Context | InputError:
    try:
        cfg = load_config(QUICKSTART, items)
    except ConfigError as exc:
        assert str(exc).strip()
        return exc
    try:
        return build_context(cfg, CONSOLE)
    except InputError as exc:  # bad input, found where it is: any other exception fails the test
        assert str(exc).strip()
        return exc


@BUILD
@given(overrides())
@example(["model={name: mlp, params: {hidden: [-1]}}"])  # torch: negative dimension
@example(["model={name: mlp, params: {hidden: [0]}}"])
@example(["model={name: cnn, params: {channels: [6], groups: 4}}"])  # GroupNorm: 6 channels in 4 groups
@example(["model={name: cnn, params: {channels: [8], groups: 0}}"])
@example(["model={name: cnn, params: {channels: [], groups: 4}}"])
@example(["data={dataset: purchase-like, params: {n: 5, classes: 10}}"])
@example(["data={dataset: purchase-like, params: {n: 10, features: 5, classes: 1}}"])
@example(["settings=[federated]", "federation.backend=inprocess", "federation.partition={name: shard}"])
@example(["settings=[federated]", "federation.backend=inprocess", "federation.num_clients=600"])
@example(
    ["settings=[federated]", "federation.backend=inprocess", "federation.num_clients=50"]
    + ["federation.partition={name: pathological, params: {classes_per_client: 40}}"]
)
@example(["defenses=[{name: top-k, params: {k: 0}}]"])
@example(["defenses=[{name: early-stopping, params: {validation: 0.99}}]"])
def test_any_config_builds_a_context_or_is_bad_input(items: list[str]) -> None:
    build(items)


# ---- (b) the CLI: exit 2 and nothing written, or a valid run (stopped before training) ---------------------


class _Valid(BaseException):
    """Raised where a valid run would start training: the case passed every input check."""


@pytest.fixture
def stop_at_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def stop(*_a: object, **_k: object) -> None:
        raise _Valid

    monkeypatch.setattr(execute_module, "run_settings", stop)


@CLI
@given(items=overrides())
def test_cli_on_any_config_exits_2_cleanly_or_runs(
    tmp_path_factory: pytest.TempPathFactory, items: list[str], stop_at_training: None
) -> None:
    out = tmp_path_factory.mktemp("fuzz") / "run"
    try:
        result = CliRunner().invoke(app, ["run", str(QUICKSTART), *items, "--out", str(out)])
    except _Valid:  # every input check passed: the run directory holds its config, as a run's does
        assert (out / "config.yaml").is_file()
        return
    assert result.exit_code == 2, (items, result.exit_code, result.output, result.exception)
    assert "error:" in result.output and "Traceback" not in result.output
    assert not out.exists(), "bad input left a run directory"
