"""Training-time defenses: oracle checks against their definitions, reproducibility, and measured effects."""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from fedmia.data import load_dataset
from fedmia.models import predict_logits
from fedmia.seeding import torch_generator
from fedmia.training import (
    DEFENSES,
    AdversarialRegularization,
    Defense,
    DPSpec,
    EarlyStopping,
    ModelSpec,
    Recipe,
    WeightedSmoothing,
    apply_recipe,
    model_params,
    train,
)
from fedmia.training.advreg import AdversarialGame, classifier_objective, inference_gain
from fedmia.training.batched import can_batch, train_batched
from fedmia.training.train import holdout_split
from fedmia.training.weighted_smoothing import class_standardized, modified_entropy, weighted_smoothing_loss

train_mod = importlib.import_module("fedmia.training.train")  # the module (the package exports the function)


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits")


def _spec(d, **params):  # type: ignore[no-untyped-def]
    return ModelSpec("mlp", d.input_shape, 10, {"hidden": [32], **params})


# --- label smoothing ---------------------------------------------------------------------------------


def test_label_smoothing_loss_is_the_smoothed_cross_entropy(digits) -> None:  # type: ignore[no-untyped-def]
    """lr = 0, one batch: train()'s loss is (1 - eps) CE + eps mean_c(-log p_c) at the initial weights."""
    x, y, eps = digits.x[:40], digits.y[:40], 0.3
    model = _spec(digits).build(0)
    logp = torch.log_softmax(predict_logits(model, x).double(), 1)
    yt = torch.as_tensor(y)
    want = ((1 - eps) * -logp[torch.arange(40), yt] + eps * (-logp).mean(1)).mean()
    res = train(model, x, y, Recipe(epochs=1, batch_size=40, lr=0.0, label_smoothing=eps), generator=torch_generator(0))
    assert res.loss == pytest.approx(float(want), rel=1e-5)


def test_label_smoothing_batched_equals_sequential(digits) -> None:  # type: ignore[no-untyped-def]
    recipe = Recipe(epochs=2, batch_size=16, lr=0.05, label_smoothing=0.1)
    assert can_batch(recipe) is None
    x, y = digits.x[:120], digits.y[:120]
    seq = _spec(digits).build(3)
    train(seq, x, y, recipe, generator=torch_generator(0, "m"))
    (bat,) = train_batched(
        [_spec(digits).build(3)], x, y, np.ones((1, 120), bool), recipe, generators=[torch_generator(0, "m")]
    )
    plain = _spec(digits).build(3)
    train(plain, x, y, dataclasses.replace(recipe, label_smoothing=0.0), generator=torch_generator(0, "m"))
    for a, b in zip(seq.parameters(), bat.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert any(not torch.allclose(a, c, atol=1e-4) for a, c in zip(seq.parameters(), plain.parameters(), strict=True))


# --- early stopping ----------------------------------------------------------------------------------

OVERFIT = Recipe(epochs=100, batch_size=32, lr=0.05, momentum=0.9)


def _overfit(d):  # type: ignore[no-untyped-def]
    idx = np.random.default_rng(0).permutation(d.n)[:150]
    return d.x[idx], d.y[idx], ModelSpec("mlp", d.input_shape, 10, {"hidden": [256]})


def test_early_stopping_stops_and_restores_the_best_epoch(digits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    x, y, spec = _overfit(digits)
    seen: list[float] = []
    real = train_mod.validation_loss

    def recording(model, xv, yv):  # type: ignore[no-untyped-def]
        seen.append(real(model, xv, yv))
        return seen[-1]

    monkeypatch.setattr(train_mod, "validation_loss", recording)
    recipe = dataclasses.replace(OVERFIT, early_stopping=EarlyStopping(validation=0.2, patience=3))
    model = spec.build(0)
    res = train(model, x, y, recipe, generator=torch_generator(0, "es"))
    assert res.stopped_early and res.epochs_run < 100 and len(seen) == res.epochs_run  # measured: 25 epochs
    assert np.argmin(seen) == res.epochs_run - 1 - 3  # patience 3: three epochs without improvement
    _, held = holdout_split(len(y), 0.2, torch_generator(0, "es"))  # the first draw from the generator
    assert real(model, torch.as_tensor(x)[held], torch.as_tensor(y)[held]) == min(seen)
    again = spec.build(0)
    res2 = train(again, x, y, recipe, generator=torch_generator(0, "es"))
    assert res2.epochs_run == res.epochs_run
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_early_stopping_never_trains_on_validation_records(digits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Flipping the labels of the held-out records changes nothing when the stopping rule is fixed."""
    counter = itertools.count()
    monkeypatch.setattr(train_mod, "validation_loss", lambda model, xv, yv: -float(next(counter)))  # always better
    x, y, spec = _overfit(digits)
    _, held = holdout_split(len(y), 0.2, torch_generator(0, "v"))
    flipped = y.copy()
    flipped[held.numpy()] = (flipped[held.numpy()] + 1) % 10
    recipe = dataclasses.replace(OVERFIT, epochs=5, early_stopping=EarlyStopping(patience=100))
    a, b = spec.build(0), spec.build(0)
    train(a, x, y, recipe, generator=torch_generator(0, "v"))
    train(b, x, flipped, recipe, generator=torch_generator(0, "v"))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    c = spec.build(0)  # while flipping one training record's label does change the model
    kept, _ = holdout_split(len(y), 0.2, torch_generator(0, "v"))
    flipped2 = y.copy()
    flipped2[int(kept[0])] = (flipped2[int(kept[0])] + 1) % 10
    train(c, x, flipped2, recipe, generator=torch_generator(0, "v"))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_holdout_split_is_a_seeded_partition() -> None:
    kept, held = holdout_split(10, 0.2, torch_generator(0, "s"))
    assert len(held) == 2 and len(kept) == 8
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(10))
    k2, h2 = holdout_split(10, 0.2, torch_generator(0, "s"))
    assert torch.equal(held, h2) and torch.equal(kept, k2)


# --- weighted smoothing ------------------------------------------------------------------------------


def test_modified_entropy_and_class_standardization_by_hand() -> None:
    p = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    y = torch.tensor([0, 0])
    # Mentr = -(1 - p_y) log p_y - sum_{c != y} p_c log(1 - p_c)
    want = [-0.2 * math.log(0.8) - 0.2 * math.log(0.8), -0.7 * math.log(0.3) - 0.7 * math.log(0.3)]
    torch.testing.assert_close(modified_entropy(p, y), torch.tensor(want, dtype=torch.float64))
    w = class_standardized(torch.tensor([1.0, 3.0, 5.0, 7.0]), torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(w, torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64))  # population std 1


def test_weighted_smoothing_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    y, w, sigma = torch.tensor([0, 2]), torch.tensor([-1.0, 0.5]), 0.3
    got = weighted_smoothing_loss(logits, y, w, sigma, torch_generator(0, "n"))
    noise = torch.randn((2, 3), generator=torch_generator(0, "n")) * sigma
    total = 0.0
    for i in range(2):
        p = torch.softmax(logits[i], 0).tolist()
        top = sorted(p, reverse=True)
        scale = (top[0] - top[1]) * (1 - float(w[i]))
        noisy = [abs(p[c] + float(noise[i, c]) * scale) for c in range(3)]
        q = min(max(noisy[int(y[i])] / sum(noisy), math.exp(-36)), 1.0)
        total += -math.log(q)
    assert float(got) == pytest.approx(total / 2, rel=1e-5)
    zero = weighted_smoothing_loss(logits, y, w, 0.0, torch_generator(0, "n"))  # sigma 0: the cross-entropy
    assert float(zero) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


# --- adversarial regularization ----------------------------------------------------------------------


def test_adversarial_objectives_by_hand() -> None:
    z_mem, z_ref = torch.tensor([0.0, math.log(3.0)]), torch.tensor([0.0, -math.log(3.0)])
    # h = sigmoid(z): members 0.5, 0.75; reference 0.5, 0.25 -> log(1 - h) = log 0.5, log 0.75
    want = (math.log(0.5) + math.log(0.75)) / 2 + (math.log(0.5) + math.log(0.75)) / 2
    assert float(inference_gain(z_mem, z_ref)) == pytest.approx(want)
    logits, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1])
    ce = float(F.cross_entropy(logits, y))
    got = classifier_objective(logits, y, z_mem, strength=2.0)
    assert float(got) == pytest.approx(ce + 2.0 * (math.log(0.5) + math.log(0.75)) / 2)


def test_inference_model_learns_and_classifier_penalty_pushes_h_down(digits) -> None:  # type: ignore[no-untyped-def]
    """h's steps raise the gain G on members vs reference of an overfit model; the classifier's penalty
    gradient lowers h on members (gradient descent on lambda log h)."""
    x, y, spec = _overfit(digits)
    model = spec.build(0)
    train(model, x[:100], y[:100], OVERFIT, generator=torch_generator(0))
    mem = (torch.as_tensor(x[:100]), torch.as_tensor(y[:100]))
    ref = (torch.as_tensor(digits.x[1000:1100]), torch.as_tensor(digits.y[1000:1100]))
    game = AdversarialGame(
        AdversarialRegularization(inference_lr=1e-3, inference_steps=300), 10, 100, torch_generator(1)
    )

    def gain() -> float:
        with torch.no_grad():
            pm, pr = torch.softmax(model(mem[0]), 1), torch.softmax(model(ref[0]), 1)
            return float(inference_gain(game.h(pm, mem[1]), game.h(pr, ref[1])))

    before = gain()
    assert before == pytest.approx(2 * math.log(0.5), abs=0.01)  # N(0, 0.01^2) weights: h ~ 1/2
    game.train_inference(model, mem, ref, torch_generator(2))
    assert gain() > before + 0.05
    logits = model(mem[0]).detach().requires_grad_(True)
    game.penalty(logits, mem[1]).backward()
    with torch.no_grad():
        stepped = logits - 10.0 * logits.grad
        assert game.h(torch.softmax(stepped, 1), mem[1]).mean() < game.h(torch.softmax(logits, 1), mem[1]).mean()


# --- dropout -----------------------------------------------------------------------------------------


def test_dropout_is_seeded_by_the_generator_and_leaves_the_global_rng(digits) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(digits, dropout=0.5)
    recipe = Recipe(epochs=2, batch_size=16, lr=0.05)
    x, y = digits.x[:80], digits.y[:80]
    state = torch.random.get_rng_state()
    a, b, c = spec.build(0), spec.build(0), spec.build(0)
    train(a, x, y, recipe, generator=torch_generator(0, "d"))
    train(b, x, y, recipe, generator=torch_generator(0, "d"))
    train(c, x, y, recipe, generator=torch_generator(1, "d"))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))
    keep = np.ones((2, 80), bool)
    out = train_batched(
        [spec.build(0), spec.build(1)], x, y, keep, recipe, generators=[torch_generator(0), torch_generator(1)]
    )
    out2 = train_batched(
        [spec.build(0), spec.build(1)], x, y, keep, recipe, generators=[torch_generator(0), torch_generator(1)]
    )
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(out[0].parameters(), out2[0].parameters(), strict=True))


def test_dropout_range(digits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="dropout"):
        _spec(digits, dropout=1.0).build(0)


# --- combinations and the registry -------------------------------------------------------------------


def test_dp_combinations(digits) -> None:  # type: ignore[no-untyped-def]
    dp = DPSpec(noise_multiplier=1.0)
    x, y = digits.x[:60], digits.y[:60]
    for ok in (
        Recipe(epochs=2, batch_size=16, dp=dp, label_smoothing=0.1),
        Recipe(epochs=3, batch_size=16, dp=dp, early_stopping=EarlyStopping(patience=1)),
    ):
        res = train(_spec(digits).build(0), x, y, ok, generator=torch_generator(0))
        assert res.epsilon is not None and res.epochs_run >= 1
    for bad in (AdversarialRegularization(), None):
        recipe = Recipe(dp=dp, adversarial=bad, weighted_smoothing=None if bad else WeightedSmoothing())
        with pytest.raises(ValueError, match="DP-SGD"):
            train(_spec(digits).build(0), x, y, recipe, generator=torch_generator(0))


def test_registry_entries_and_composition() -> None:
    assert {
        "l2",
        "dropout",
        "early-stopping",
        "label-smoothing",
        "adversarial-regularization",
        "weighted-smoothing",
    } <= set(DEFENSES)
    l2 = DEFENSES.create("l2", weight_decay=5e-3)
    drop = DEFENSES.create("dropout", p=0.3)
    assert l2.stage == drop.stage == "training"
    recipe = apply_recipe(Recipe(), [l2, DEFENSES.create("label-smoothing"), drop])
    assert recipe.weight_decay == 5e-3 and recipe.label_smoothing == 0.1
    assert model_params({"hidden": [8]}, [l2, drop]) == {"hidden": [8], "dropout": 0.3}
    with pytest.raises(ValueError, match="weight_decay"):
        apply_recipe(Recipe(), [l2, Defense(recipe={"weight_decay": 1e-4})])
    with pytest.raises(ValueError, match="patience"):
        DEFENSES.create("early-stopping", patience=0)
    with pytest.raises(ValueError, match="epsilon"):
        DEFENSES.create("label-smoothing", epsilon=1.0)
    for name in ("early-stopping", "adversarial-regularization", "weighted-smoothing"):
        assert can_batch(apply_recipe(Recipe(), [DEFENSES.create(name)])) is not None


# --- measured effects on an overfit MLP ---------------------------------------------------------------


def _gap_and_auc(d, seed: int, recipe: Recipe, **params):  # type: ignore[no-untyped-def]
    from sklearn.metrics import roc_auc_score

    from fedmia.signals import compute_signals

    perm = np.random.default_rng(seed).permutation(d.n)
    mem, non = perm[:80], perm[80:580]
    model = ModelSpec("mlp", d.input_shape, 10, {"hidden": [256], **params}).build(seed)
    train(model, d.x[mem], d.y[mem], recipe, generator=torch_generator(seed, "t"))
    sm, sn = compute_signals(model, d.x[mem], d.y[mem]), compute_signals(model, d.x[non], d.y[non])
    labels = np.r_[np.ones(80), np.zeros(500)]
    auc = roc_auc_score(labels, -np.r_[sm.loss, sn.loss])
    return float(sn.loss.mean() - sm.loss.mean()), float(auc), float(sn.correct.mean())


MEASURED = Recipe(epochs=200, batch_size=16, lr=0.1, momentum=0.9)
SEEDS = (0, 1, 2)


@pytest.mark.slow
def test_l2_lowers_the_loss_gap(digits) -> None:  # type: ignore[no-untyped-def]
    """Weight decay 5e-3 lowers the mean loss gap (80 members, 500 non-members, MLP 256, 200 epochs).

    Measured (gap without -> with; seeds 0-4): 0.483 -> 0.390, 0.431 -> 0.319, 0.455 -> 0.341, 0.495 -> 0.425,
    0.465 -> 0.378; the same to 3 decimals under ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2.
    Drops 0.093-0.114, sd 0.018, so the mean of 3 seeds has sd ~0.010: its measured 0.106 is 5 sd above the
    0.05 asserted. The LOSS attack's AUC does NOT drop in this setup (0.696 -> 0.709, 0.689 -> 0.698): not
    asserted."""
    drops = []
    for seed in SEEDS:
        gap0, _, _ = _gap_and_auc(digits, seed, MEASURED)
        gap1, _, _ = _gap_and_auc(digits, seed, dataclasses.replace(MEASURED, weight_decay=5e-3))
        drops.append(gap0 - gap1)
    assert np.mean(drops) > 0.05, drops


@pytest.mark.slow
def test_adversarial_regularization_lowers_the_loss_attack_auc_at_an_accuracy_cost(digits) -> None:  # type: ignore[no-untyped-def]
    """Nasr et al. 2018's min-max game (lambda 1, k 1) lowers the LOSS attack's AUC, and costs accuracy.

    Measured, seeds 0-4 (LOSS AUC drop / test accuracy drop), default numerics: 0.059/0.032, 0.076/0.156,
    0.073/0.060, 0.001/0.068, 0.100/0.074; under ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2:
    0.083/0.120, 0.001/0.088, 0.055/0.098, 0.038/0.068, 0.071/0.074. The game is chaotic in float
    summation order (the undefended runs agree to 3 decimals across the two; the defended ones do not),
    so single seeds are not asserted. Over the 10 runs the AUC drop has mean 0.056 and sd 0.033: the mean
    of 3 seeds (sd ~0.019) is asserted above 0, ~2.9 sd below what was measured; a defense that does
    nothing gives exactly 0 (the same seed trains the same model) and fails. The accuracy cost has mean
    0.084 and sd 0.035, so the 5 points once hoped for do not hold here; asserted: the mean cost of 3 seeds
    stays below 0.15 (~3.3 sd above what was measured), which a defense that wrecks the classifier fails.
    Loss, confidence and modified entropy rank alike here."""
    auc_drop, acc_drop = [], []
    for seed in SEEDS:
        _, auc0, acc0 = _gap_and_auc(digits, seed, MEASURED)
        adversarial = dataclasses.replace(MEASURED, adversarial=AdversarialRegularization())
        _, auc1, acc1 = _gap_and_auc(digits, seed, adversarial)
        auc_drop.append(auc0 - auc1)
        acc_drop.append(acc0 - acc1)
    assert np.mean(auc_drop) > 0.0, auc_drop
    assert np.mean(acc_drop) < 0.15, acc_drop


@pytest.fixture(scope="module")
def purchase_like():  # type: ignore[no-untyped-def]
    return load_dataset("purchase-like", n=2000, features=200, classes=20, seed=0)


@pytest.mark.slow
def test_l2_lowers_the_loss_attack_auc_at_no_accuracy_cost(purchase_like) -> None:  # type: ignore[no-untyped-def]
    """Measured (purchase-like 2000 x 200, 20 classes; 400 members vs 400 non-members; MLP 256, 40 epochs,
    batch 32, lr 0.05; this test's code): LOSS AUC 0.762 -> 0.739 (seed 0), 0.751 -> 0.728 (seed 1),
    0.733 -> 0.714 (seed 2), 0.733 -> 0.715 (seed 3) with weight decay 2e-2; test accuracy 0.950 -> 0.953,
    0.965 -> 0.955, 0.960 -> 0.958, 0.953 -> 0.950. AUC drops 0.018-0.023 (sd 0.003): the mean of seeds
    0-2 (0.022) is asserted above 0.01, ~6 sd of a 3-seed mean away; accuracy changes -0.010 to +0.003
    (sd 0.005): the mean is asserted within 2 points. Dropout 0.5 leaves the AUC within 0.005 (0.765,
    0.751, 0.735, 0.737) in the same setup: not asserted."""
    from sklearn.metrics import roc_auc_score

    from fedmia.signals import compute_signals

    d = purchase_like
    recipe = Recipe(epochs=40, batch_size=32, lr=0.05)
    auc_drop, acc_change = [], []
    for seed in SEEDS:
        perm = np.random.default_rng(seed).permutation(d.n)
        mem, non = perm[:400], perm[400:800]
        out = []
        for wd in (0.0, 2e-2):
            model = ModelSpec("mlp", d.input_shape, d.num_classes, {"hidden": [256]}).build(seed)
            train(
                model, d.x[mem], d.y[mem], dataclasses.replace(recipe, weight_decay=wd), generator=torch_generator(seed)
            )
            sm, sn = compute_signals(model, d.x[mem], d.y[mem]), compute_signals(model, d.x[non], d.y[non])
            auc = roc_auc_score(np.r_[np.ones(400), np.zeros(400)], -np.r_[sm.loss, sn.loss])
            out.append((auc, float(sn.correct.mean())))
        (auc0, acc0), (auc1, acc1) = out
        auc_drop.append(auc0 - auc1)
        acc_change.append(acc1 - acc0)
    assert np.mean(auc_drop) > 0.01, auc_drop
    assert np.mean(acc_change) > -0.02, acc_change
