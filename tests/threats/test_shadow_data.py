"""Oracle tests for the shadow-data sources: Algorithm 1's accept/reject rule and step schedule on hand-built
models, the noisy source's exact fraction of changed features, the marginal source's marginals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.threats import BlackBox
from fedmia.threats.shadow_data import FeatureModel, SynthesisTrace, shadow_records, synthesize

D, C = 24, 3


def linear_target() -> nn.Linear:
    """Class c's logit is 1.5 x (number of ones among features 8c .. 8c+7): p_c rises with those bits."""
    lin = nn.Linear(D, C)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        for c in range(C):
            lin.weight[c, 8 * c : 8 * (c + 1)] = 1.5
    return lin


def binary_population(seed: int = 0, m: int = 300) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return (g.random((m, D)) < 0.3).astype(np.float32), g.integers(0, C, m)


class Worsening(nn.Module):
    """p_0 falls with every call (logit of class 0 = -calls), whatever the input; it records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.inputs: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().numpy().copy())
        logits = torch.zeros(len(x), C)
        logits[:, 0] = -float(self.calls)
        self.calls += 1
        return logits


def test_synthesized_records_pass_the_acceptance_test_and_queries_are_the_boxs() -> None:
    target = linear_target()
    box = BlackBox(target)
    box.query(binary_population(1, 5))  # queries before synthesis are not the synthesis's
    before = box.queries
    trace = SynthesisTrace([], [])
    out = synthesize(
        box,
        FeatureModel.of(binary_population()[0]),
        C,
        np.random.default_rng(0),
        n=31,
        input_shape=(D,),
        k_max=8,
        k_min=1,
        conf_min=0.6,
        rej_max=3,
        iter_max=150,
        trace=trace,
    )
    x, y = out
    assert out.failed == 0 and len(y) == 31
    np.testing.assert_array_equal(np.bincount(y, minlength=C), [11, 10, 10])  # n split evenly, remainder first
    assert set(np.unique(x)) <= {0.0, 1.0}
    with torch.no_grad():
        p = torch.softmax(target(torch.as_tensor(x)), dim=1).numpy()
    assert np.all(p[np.arange(len(y)), y] > 0.6)
    np.testing.assert_array_equal(p.argmax(axis=1), y)
    # every step queries each live chain once: the box's count, the report and the trace agree
    assert out.queries == box.queries - before == sum(len(k) for k in trace.k_history) == trace.queries


def test_k_halves_after_rej_max_consecutive_rejections_down_to_k_min() -> None:
    model = Worsening()
    box = BlackBox(model)
    trace = SynthesisTrace([], [])
    k_max, k_min, rej_max, iters = 5, 1, 3, 22
    out = synthesize(
        box,
        FeatureModel.of(binary_population()[0]),
        C,
        np.random.default_rng(3),
        n=1,  # one record, of class 0: every proposal after the first lowers p_0, so all are rejected
        input_shape=(D,),
        k_max=k_max,
        k_min=k_min,
        conf_min=0.99,
        rej_max=rej_max,
        iter_max=iters,
        max_tries=1,
        trace=trace,
    )
    assert len(out[1]) == 0 and out.failed == 1 and out.queries == iters == box.queries
    # query 0 is accepted (p_0 >= y*_0 = 0); queries 1.. are rejected; the (rej_max+1)-th rejection in a row
    # halves k (rounding up): 5 -> 3 -> 2 -> 1 and stays at k_min
    ks = [int(k[0]) for k in trace.k_history]
    expected = [5] + [max(k_min, [5, 3, 2, 1][min(3, (t - 1) // (rej_max + 1))]) for t in range(1, iters)]
    assert ks == expected
    # every proposal re-draws (flips) exactly k features of the one accepted record x*
    first = model.inputs[0][0]
    changed = [int(np.sum(inp[0] != first)) for inp in model.inputs[1:]]
    assert changed == ks[1:]


def test_failed_chains_restart_and_are_bounded() -> None:
    box = BlackBox(Worsening())
    out = synthesize(
        box,
        FeatureModel.of(binary_population()[0]),
        C,
        np.random.default_rng(4),
        n=3,
        input_shape=(D,),
        k_max=4,
        conf_min=0.99,  # p_c <= 1/3 + ... never exceeds it
        iter_max=7,
        max_tries=2,
    )
    assert len(out[1]) == 0 and out.failed == 3
    assert out.queries == box.queries == 3 * 2 * 7


def test_synthesis_through_a_label_only_interface_is_an_error() -> None:
    from fedmia.signals.release import LabelOnly, QueryInterface

    box = BlackBox(linear_target(), QueryInterface((LabelOnly(),)))
    with pytest.raises(ValueError, match="probability outputs"):
        shadow_records("synthesis", binary_population(), box, np.random.default_rng(0), n=3)


def test_noisy_changes_exactly_the_fraction_of_binary_features_and_keeps_labels() -> None:
    pop = binary_population(5, 400)
    out = shadow_records("noisy", pop, None, np.random.default_rng(6), n=200, noise=0.25)
    x, y = out
    # which population record each came from: shadow_records draws them with rng.permutation first
    pick = np.random.default_rng(6).permutation(400)[:200]
    np.testing.assert_array_equal(y, pop[1][pick])
    changed = (x != pop[0][pick]).sum(axis=1)
    np.testing.assert_array_equal(changed, np.full(200, round(0.25 * D)))
    assert out.queries == 0 and out.source == "noisy"


def test_noisy_real_valued_features_are_redrawn_from_their_marginal() -> None:
    g = np.random.default_rng(7)
    x = np.stack([g.choice([0.25, 0.5, 2.0], 500), g.normal(size=500)], axis=1).astype(np.float32)
    y = g.integers(0, 2, 500)
    noisy, _ = shadow_records("noisy", (x, y), None, np.random.default_rng(8), noise=0.5)
    assert set(np.unique(noisy[:, 0])) <= {0.25, 0.5, 2.0}
    assert np.isin(noisy[:, 1], x[:, 1]).all()  # every value of feature 1 is a population value


def test_marginal_by_class_matches_class_marginals_and_breaks_correlations() -> None:
    g = np.random.default_rng(9)
    y = g.integers(0, 2, 4000)
    f0 = (g.random(4000) < np.where(y == 1, 0.8, 0.2)).astype(np.float32)
    x = np.stack([f0, f0, (g.random(4000) < 0.5).astype(np.float32)], axis=1)  # feature 1 copies feature 0
    out = shadow_records("marginal", (x, y), None, np.random.default_rng(10), n=20_000)
    xs, ys = out
    assert abs(np.mean(ys) - np.mean(y)) < 0.02
    for c in (0, 1):
        np.testing.assert_allclose(xs[ys == c].mean(axis=0), x[y == c].mean(axis=0), atol=0.02)
    # within a class the features are drawn independently: feature 1 agrees with feature 0 only by chance
    p = x[y == 1, 0].mean()
    agree = np.mean(xs[ys == 1, 0] == xs[ys == 1, 1])
    assert abs(agree - (p**2 + (1 - p) ** 2)) < 0.03


def test_marginal_labelled_by_the_target_asks_the_box() -> None:
    target = linear_target()
    box = BlackBox(target)
    out = shadow_records("marginal", binary_population(), box, np.random.default_rng(11), n=50, label_by="target")
    x, y = out
    with torch.no_grad():
        np.testing.assert_array_equal(y, target(torch.as_tensor(x)).argmax(dim=1).numpy())
    assert out.queries == box.queries == 50


def test_population_source_is_the_population_records() -> None:
    pop = binary_population()
    x, y = shadow_records("population", pop, None, np.random.default_rng(0))
    assert sorted(map(bytes, x)) == sorted(map(bytes, pop[0]))
    assert sorted(y) == sorted(pop[1])


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"source": "gan"}, "source"),
        ({"source": "noisy", "noise": 1.5}, "noise"),
        ({"source": "noisy", "n": 10_000}, "n="),
        ({"source": "marginal", "label_by": "oracle"}, "label_by"),
        ({"source": "synthesis", "k_min": 5, "k_max": 3}, "k_min"),
        ({"source": "synthesis", "conf_min": 1.0}, "conf_min"),
        ({"source": "synthesis", "rej_max": -1}, "rej_max"),
        ({"source": "synthesis", "box": None}, "box"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict, bad: str) -> None:
    args = {"box": BlackBox(linear_target()), "n": 5, **kwargs}
    source = args.pop("source")
    box = args.pop("box")
    with pytest.raises(ValueError, match=bad):
        shadow_records(source, binary_population(), box, np.random.default_rng(0), **args)
