"""Fixtures shared by the whole suite."""

from __future__ import annotations

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
