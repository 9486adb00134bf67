"""run_settings: the settings before the first federation run on a worker thread while Ray starts."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rich.console import Console

import fedmia.experiment.runner as runner
from fedmia.experiment.config import load_config
from fedmia.models import _INFERENCE_DEVICE

REPO = Path(__file__).resolve().parents[2]


def _context(settings: list[str], address: str | None = None) -> runner.Context:
    overrides = [f"settings=[{', '.join(settings)}]"] + ([f"ray.address={address}"] if address else [])
    cfg = load_config(REPO / "configs" / "compare.yaml", overrides)
    return runner.Context(cfg, None, None, None, None, runner.Results(), Console(quiet=True))  # type: ignore[arg-type]


@dataclass
class Recorded:
    """(what, thread, Ray up, inference device) per setting run and for Ray's start."""

    events: list[tuple[str, str, bool, str | None]] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)  # a stage began
    ray_up: threading.Event = field(default_factory=threading.Event)
    body: Callable[[str, runner.Context], None] | None = None  # a setting's work; None: record it


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    rec = Recorded()

    @contextlib.contextmanager
    def fake_runtime(address: str | None = None) -> Iterator[None]:
        assert threading.current_thread() is threading.main_thread()  # ray.init needs the main thread
        if address is None:  # proof of overlap: Ray "starts" only once the first stage is running
            assert rec.started.wait(30), "no stage started while Ray was starting"
        rec.events.append(("ray", threading.current_thread().name, True, None))
        rec.ray_up.set()
        yield

    def setting(name: str) -> Callable[[runner.Context], None]:
        def run(ctx: runner.Context) -> None:
            rec.started.set()
            if rec.body is not None:
                rec.body(name, ctx)
            thread = threading.current_thread().name
            rec.events.append((name, thread, rec.ray_up.is_set(), _INFERENCE_DEVICE.get()))
            ctx.results.utility[name] = {"ran": True}

        return run

    monkeypatch.setattr(runner, "ray_runtime", fake_runtime)
    monkeypatch.setattr(runner.SETTINGS, "factory", setting)
    monkeypatch.setattr(runner, "exposure_summary", lambda *_a: {})
    monkeypatch.setattr(runner, "check_ray_address", lambda _a: None)
    return rec


def test_centralized_runs_while_ray_starts_and_federated_after(recorded: Recorded) -> None:
    total = runner.run_settings(_context(["centralized", "federated"]))
    names = [e[0] for e in recorded.events]
    assert set(names[:2]) == {"ray", "centralized"} and names[2:] == ["federated"]  # the first two overlap
    by_name = {e[0]: e for e in recorded.events}
    assert by_name["centralized"][1] == "fedmia-stage"
    assert by_name["federated"][1] == threading.main_thread().name
    assert by_name["federated"][2]  # the federation only once Ray is up
    assert by_name["centralized"][3] == "cpu"  # the stage thread sees the run's use_device
    assert list(total.utility) == ["centralized", "federated"]


def test_a_cluster_address_runs_everything_after_ray(recorded: Recorded) -> None:
    """With a cluster the references of every setting train there: nothing runs before Ray is up."""
    total = runner.run_settings(_context(["centralized", "federated"], address="127.0.0.1:1"))
    assert [e[0] for e in recorded.events] == ["ray", "centralized", "federated"]
    assert all(e[1] == threading.main_thread().name for e in recorded.events)
    assert list(total.utility) == ["centralized", "federated"]


def test_an_error_in_the_early_stage_surfaces(recorded: Recorded) -> None:
    def boom(name: str, _ctx: runner.Context) -> None:
        raise RuntimeError(f"{name} failed")

    recorded.body = boom
    with pytest.raises(RuntimeError, match="centralized failed"):
        runner.run_settings(_context(["centralized", "federated"]))
    assert [e[0] for e in recorded.events] == ["ray"]  # the federation never ran
