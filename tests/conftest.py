"""Fixtures shared by the whole suite."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The parsed-dataset cache (``FEDMIA_CACHE_DIR``) in a folder of this session, never the user's home;
    set in the environment, so subprocesses (the CLI, Ray actors) use it too. Tests of the cache set their own."""
    folder = tmp_path_factory.mktemp("dataset-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDMIA_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for the module: tiny models gain nothing from a second one, which only
    contends for the 2 shared cores with Ray actors and other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class SharedRay:
    """One local Ray runtime for the modules that run federations in this process.

    Ray's start and stop cost ~4 s here (``ray.init`` ~3 s, ``ray.shutdown`` ~1.4 s), paid by every
    federation that starts its own. The first module that asks starts it (``fedmia.fl.simulation.ray_runtime``,
    the experiment's own runtime: Flower's per-simulation shutdown is skipped while it is held); later ones
    join it. A module that needs a runtime of its own (a cluster joined by address, injected hangs whose
    actors outlive their federation) calls ``down()`` first and the next module that asks starts a new one.
    """

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None

    def up(self) -> None:
        import ray

        if self._stack is None and not ray.is_initialized():
            from fedmia.fl.simulation import ray_runtime

            stack = contextlib.ExitStack()
            stack.enter_context(ray_runtime())
            self._stack = stack

    def down(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[SharedRay]:
    shared = SharedRay()
    try:
        yield shared
    finally:
        shared.down()


@pytest.fixture(scope="module")
def shared_ray(ray_session: SharedRay) -> None:
    """Join the session's Ray runtime (started on first use); mark a module with
    ``pytestmark = pytest.mark.usefixtures("shared_ray")``."""
    ray_session.up()


@pytest.fixture(scope="module")
def own_ray(ray_session: SharedRay) -> None:
    """Stop the session's Ray runtime, if up: this module starts (or joins) its own."""
    ray_session.down()
