"""The registry's typed parameters: annotations resolve for the user parameters only, and strict typing
never turns itself off.

The defect this guards against: ``signature_params`` resolved every annotation of a factory at once and
caught any exception, falling back to ``Any`` for all parameters. The optimizers take ``recipe: Recipe``
with ``Recipe`` imported for type checking only, so the resolution failed for them and every one of
their parameters would have been read as ``Any`` (a user parameter added to them would accept "3" for 3).
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Annotated, Any

import pytest
from pydantic import Field

from fedmia.registry import ParamsError, Registry

if TYPE_CHECKING:  # bound for the type checker only, exactly as fedmia/training/optim.py imports Recipe
    from fedmia.training.train import Recipe


def make(caller_supplied_annotation_resolves: bool) -> Registry[Any]:
    reg: Registry[Any] = Registry("toy", exclude=("recipe",))

    if caller_supplied_annotation_resolves:

        @reg.register("toy")
        def toy(recipe: object, n: int = 1, rate: Annotated[float, Field(gt=0)] = 0.5) -> tuple[int, float]:
            return n, rate

    else:

        @reg.register("toy")
        def toy(recipe: Recipe, n: int = 1, rate: Annotated[float, Field(gt=0)] = 0.5) -> tuple[int, float]:
            return n, rate

    return reg


@pytest.mark.parametrize("resolves", [True, False])
def test_user_parameters_stay_strict_when_a_caller_supplied_annotation_does_not_resolve(resolves: bool) -> None:
    reg = make(resolves)
    assert {p.name: p.annotation for p in reg.params("toy")} == {"n": "int", "rate": "float > 0"}
    assert reg.validate("toy", {"n": 3, "rate": 2.0}) == {"n": 3, "rate": 2.0}
    with pytest.raises(ParamsError, match="n: Input should be a valid integer"):
        reg.validate("toy", {"n": "3"})  # a string is not an int: strict, even beside ``recipe: Recipe``
    with pytest.raises(ParamsError, match="rate: Input should be greater than 0"):
        reg.validate("toy", {"rate": -1.0})  # the Annotated range is kept
    assert reg.create("toy", recipe=None, n=2) == (2, 0.5)


def test_an_unresolvable_user_parameter_annotation_is_an_error_naming_the_entry() -> None:
    reg: Registry[Any] = Registry("toy")

    @reg.register("broken")
    def broken(n: NoSuchType = 1) -> int:  # type: ignore[name-defined]  # noqa: F821
        return n

    with pytest.raises(TypeError, match=r"'broken'.*\['n'\].*does not resolve.*NoSuchType"):
        reg.validate("broken", {"n": 1})


def test_every_registered_entry_resolves_its_user_parameters() -> None:
    """Every built-in entry's user parameters resolve to real annotations, the optimizers included (their
    ``recipe`` is the caller's and is never resolved)."""
    import fedmia.experiment.cli  # noqa: F401  (imports every registering module)
    from fedmia.attacks import ATTACKS, GENERATIVE_ATTACKS
    from fedmia.data import DATASETS
    from fedmia.data.partition import PARTITIONERS
    from fedmia.experiment.settings import SETTINGS
    from fedmia.fl.strategy import CLIPPING, STRATEGIES
    from fedmia.models import MODELS
    from fedmia.training.defenses import DEFENSES
    from fedmia.training.optim import OPTIMIZERS

    registries = (SETTINGS, DATASETS, MODELS, OPTIMIZERS, ATTACKS, GENERATIVE_ATTACKS, STRATEGIES)
    registries += (PARTITIONERS, CLIPPING, DEFENSES)
    checked = 0
    for reg in registries:
        for name in reg.available():
            for p, hint in reg.entry(name).signature_params():
                assert hint is not typing.Any, f"{reg.kind} {name}: parameter {p.name} resolved to Any"
                checked += 1
            reg.params_model(name)
    assert checked > 50
    assert set(OPTIMIZERS.available()) >= {"sgd", "adam"}
    for name in ("sgd", "adam"):
        assert OPTIMIZERS.params(name) == []  # lr, momentum, weight decay come from the recipe
        with pytest.raises(ParamsError, match="unknown parameter"):
            OPTIMIZERS.validate(name, {"lr": 0.1})
