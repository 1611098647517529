"""The regularizer around AdamW (the ViT recipes' base optimizer) against AdamW written out in float64, for
every variant, under the official learning-rate warm-up from 0 (AdamW's state through a checkpoint:
test_optim's round trip, run for both base optimizers)."""

import math

import pytest
import torch
from test_optim import batch, closure_for, float64, mlp, reference_gradient  # noqa: F401 (float64: a fixture)

from gnp.config import TrainConfig
from gnp.loop import base_optimizer, lr_lambda
from gnp.optim import GNP

LR, BETAS, EPS = 0.01, (0.9, 0.999), 1e-8
VARIANTS = [("standard", 0.0), ("gnp", 0.8), ("sam", 1.0), ("fgr", 0.5), ("bgr", 0.5), ("db", 0.4),
            ("asam", 1.0), ("gnp", 1.5)]


def adamw_reference(model, variant, alpha, r, wd, mode, factors, batches):
    """θ after AdamW steps on g (the variant's formula at each θ), with decoupled (base) or L2 decay."""
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    m = {k: torch.zeros_like(v) for k, v in theta.items()}
    v = {k: torch.zeros_like(t) for k, t in theta.items()}
    for t, (factor, (x, y)) in enumerate(zip(factors, batches, strict=True), start=1):
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(theta[k])
        formula = "gnp" if variant == "standard" else variant  # standard: α = 0, g = g1
        g = reference_gradient(model, x, y, formula, alpha, r, l2=wd if mode == "l2" else 0.0)
        lr = LR * factor
        for k in theta:
            m[k] = BETAS[0] * m[k] + (1 - BETAS[0]) * g[k]
            v[k] = BETAS[1] * v[k] + (1 - BETAS[1]) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - BETAS[0] ** t), v[k] / (1 - BETAS[1] ** t)
            decayed = theta[k] * (1 - lr * wd) if mode == "base" else theta[k]
            theta[k] = decayed - lr * m_hat / (v_hat.sqrt() + EPS)
    return theta


@pytest.mark.parametrize("mode", ["base", "l2"])
@pytest.mark.parametrize("variant,alpha", VARIANTS)
def test_every_variant_around_adamw_with_warmup_matches_the_formulas(variant, alpha, mode):
    wd, r, steps = 0.3, 0.05, 5
    cfg = TrainConfig(epochs=2, warmup_epochs=1, optimizer="adamw", momentum=0.0, nesterov=False, lr=LR)
    factors = [lr_lambda(cfg, steps_per_epoch=3)(s) for s in range(steps)]
    assert factors[0] == 0 and factors[1] == pytest.approx(1 / 3) and factors[3] == 1  # from 0, then cosine
    batches = [batch(seed=20 + s) for s in range(steps)]
    expected = adamw_reference(mlp(), variant, alpha, r, wd, mode, factors, batches)

    model = mlp()
    base, settings = base_optimizer(cfg)
    assert base is torch.optim.AdamW and settings == dict(lr=LR, betas=BETAS, eps=EPS)
    opt = GNP(model, base, alpha=alpha, r=r, variant=variant, weight_decay=wd, weight_decay_mode=mode, **settings)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt.base_optimizer, lr_lambda(cfg, 3))
    for x, y in batches:
        opt.step(closure_for(model, x, y))
        schedule.step()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=0, atol=1e-12)


def test_the_first_warmup_step_moves_nothing_but_fills_adamws_moments():
    """lr 0 on the first step (optax's schedule at count 0): θ is unchanged, yet the moments count it."""
    cfg = TrainConfig(epochs=2, warmup_epochs=1)
    model = mlp()
    theta = [p.detach().clone() for p in model.parameters()]
    opt = GNP(model, torch.optim.AdamW, alpha=0.8, r=0.05, weight_decay=0.3, weight_decay_mode="base", lr=LR)
    torch.optim.lr_scheduler.LambdaLR(opt.base_optimizer, lr_lambda(cfg, 4))
    opt.step(closure_for(model, *batch()))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), theta, strict=True))
    state = opt.state_dict()["state"][0]
    assert state["step"] == 1 and state["exp_avg"].abs().sum() > 0


def test_the_cosine_after_the_warmup_ends_at_zero():
    cfg = TrainConfig(epochs=4, warmup_epochs=1)
    factor = lr_lambda(cfg, steps_per_epoch=10)
    assert factor(10) == 1 and factor(25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert factor(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
