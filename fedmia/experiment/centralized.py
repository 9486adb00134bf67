"""The centralized setting: the target trains on all members at once, with the one ``train()``."""

from __future__ import annotations

import time

from fedmia.experiment.context import Context, outsider_audit, record_utility
from fedmia.experiment.setting import SETTINGS, SettingTraits
from fedmia.seeding import derive_seed, torch_generator
from fedmia.training import train


@SETTINGS.register("centralized", traits=SettingTraits(federation=False))
def centralized(ctx: Context) -> None:
    """Train the target on all members at once; the outsider attacks it as a black box."""
    cfg, plan = ctx.cfg, ctx.plan
    if ctx.target is not None:  # fedmia audit: the model was trained elsewhere; its references train here
        record_utility(ctx, "centralized", ctx.target, 0.0, epsilon=None)
        ctx.results.extra["trained_elsewhere"] = {"centralized": "the target was loaded (fedmia audit), not trained"}
        outsider_audit(ctx, "centralized", ctx.target)
        return
    t0 = time.perf_counter()
    model = ctx.spec.build(derive_seed(cfg.seed, "centralized", "init"))
    gen = torch_generator(cfg.seed, "centralized", "train")
    # every member is trained on; the defenses' held-out records are the owner's own (plan.with_holdout)
    res = train(model, *ctx.records(plan.members), ctx.recipe, generator=gen, held_out=ctx.held_out())
    record_utility(ctx, "centralized", model, time.perf_counter() - t0, epsilon=res.epsilon)
    outsider_audit(ctx, "centralized", model)
