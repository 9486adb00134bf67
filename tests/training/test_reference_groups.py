"""Reference groups: the unit that trains together locally and that a Ray task trains on a cluster.

The cluster path (``fedmia.fl.cluster``) relies on two facts checked here without Ray: a group trained on
its own (``train_reference_group``, what a task runs) gives exactly that group's slice of the whole local
run, and both paths cut the references into the same groups.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedmia.data import load_dataset, reference_keep
from fedmia.fl.inprocess import reference_federation_groups
from fedmia.seeding import rng
from fedmia.signals.release import OutputNoise, QueryInterface
from fedmia.training import ModelSpec, Recipe, train_reference_signals
from fedmia.training.references import reference_groups, train_reference_group


def test_groups_cover_the_references_in_order() -> None:
    assert reference_groups(7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert reference_groups(4, 64) == [range(0, 4)]
    assert reference_groups(0, 2) == []
    # federations: as many as fit `group` sampled clients per round, at least one
    assert reference_federation_groups(5, 3, 6) == [range(0, 2), range(2, 4), range(4, 5)]
    assert reference_federation_groups(3, 10, 4) == [range(0, 1), range(1, 2), range(2, 3)]
    with pytest.raises(ValueError, match="at least 1"):
        reference_groups(3, 0)


@pytest.mark.parametrize("batched", [True, False])
def test_a_group_alone_gives_its_slice_of_the_whole_run(batched: bool) -> None:
    """What a Ray task computes (one group, seeds from (seed, k)) == the local run's rows for that group."""
    d = load_dataset("digits")
    spec = ModelSpec("mlp", d.input_shape, d.num_classes, {"hidden": [8]})
    recipe = Recipe(epochs=1, batch_size=32, lr=0.05)
    pool = (d.x[:200], d.y[:200])
    sets = [(d.x[150:300], d.y[150:300])]
    views = [QueryInterface(layers=(OutputNoise(scale=0.05),))]
    keep = reference_keep(6, 200, rng(0, "groups"))
    whole = train_reference_signals(spec, recipe, pool, keep, sets, seed=5, batched=batched, interface=views, group=2)
    done: list[int] = []
    part = train_reference_group(
        spec, recipe, pool, keep, range(2, 4), sets, seed=5, batched=batched, interface=views, on_model_done=done.append
    )
    assert done == [2, 3] and len(part[0]) == 2
    for i, k in enumerate((2, 3)):
        np.testing.assert_array_equal(part[0][i].probs, whole[0].probs[k])
        np.testing.assert_array_equal(part[0][i].loss, whole[0].loss[k])
    assert np.abs(whole[0].loss[2] - whole[0].loss[3]).max() > 1e-4  # two distinct references
