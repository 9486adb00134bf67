"""No code leaves global RNG state behind; every seed derives from the run seed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedmia.seeding import derive_seed, numpy_global_seed

PACKAGE = Path(__file__).resolve().parents[1] / "fedmia"


def test_numpy_global_seed_is_scoped() -> None:
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    with numpy_global_seed(7):
        inside = np.random.random(2)
    assert np.array_equal(np.random.random(3), expected)  # the outside stream did not move
    with numpy_global_seed(7):
        assert np.array_equal(np.random.random(2), inside)  # and the inside one repeats


def test_no_unscoped_global_seeding_in_the_package() -> None:
    """np.random.seed only inside numpy_global_seed; torch.manual_seed only under torch.random.fork_rng."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"(np\.random\.seed|numpy\.random\.seed|random\.seed|torch\.manual_seed)\(", text):
            line = text[: m.start()].count("\n") + 1
            context = "\n".join(text.splitlines()[max(0, line - 4) : line])
            scoped = (path.name == "seeding.py" and "np.random.get_state()" in context) or "fork_rng" in context
            if not scoped:
                offenders.append(f"{path.relative_to(PACKAGE)}:{line}")
    assert not offenders, offenders


def test_derived_seeds_depend_on_root_and_path() -> None:
    assert derive_seed(0, "attack", "rmia") == derive_seed(0, "attack", "rmia")
    assert derive_seed(0, "attack", "rmia") != derive_seed(1, "attack", "rmia")
    assert derive_seed(0, "attack", "rmia") != derive_seed(0, "attack", "shokri")
